//! A short swarm in the test suite: 20 seeds of 2,000 operations, each with
//! its own mix of faults. The long one is a documented command:
//! `cargo run --release -p berth-sim -- --swarm --seeds 50 --ops 10000`.

use berth_sim::{replay_command, run_catching, SimConfig};

/// The first seed of the suite's swarm; fixed, so a failure here is a
/// regression, not bad luck.
const START_SEED: u64 = 1_000;
const SEED_COUNT: u64 = 20;
const OP_COUNT: u64 = 2_000;

#[test]
fn a_short_swarm_passes_every_check() {
    let mut failures = Vec::new();
    let mut crash_count = 0;
    let mut host_loss_count = 0;
    for seed in START_SEED..START_SEED + SEED_COUNT {
        match run_catching(SimConfig { seed, op_count: OP_COUNT }) {
            Ok(summary) => {
                crash_count += summary.crash_count;
                host_loss_count += summary.host_loss_count;
                assert!(summary.accepted_count > OP_COUNT / 5, "seed {seed} accepted only {} operations", summary.accepted_count);
            }
            Err(failure) => failures.push(format!("seed {seed}: {failure}\n  replay: {}", replay_command(seed, OP_COUNT))),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The swarm must actually exercise the faults it claims to.
    assert!(crash_count > 0 && host_loss_count > 0, "crashes {crash_count}, host losses {host_loss_count}");
}
