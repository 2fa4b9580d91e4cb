//! Seeds that once failed, each with the bug it found. They run in the
//! suite so that the bug stays fixed.

use berth_sim::{replay_command, run_catching, SimConfig};

/// (seed, operations, what it found).
const REGRESSIONS: &[(u64, u64, &str)] = &[(
    33,
    10_000,
    "a VCH reconfigure whose reply was lost, then a reconfigure back: the reconciler remembered the old spec as ensured and never corrected the infrastructure",
)];

#[test]
fn every_regression_seed_passes() {
    for (seed, op_count, found) in REGRESSIONS {
        if let Err(failure) = run_catching(SimConfig { seed: *seed, op_count: *op_count }) {
            panic!("seed {seed} (which found: {found}) fails again: {failure}\nreplay: {}", replay_command(*seed, *op_count));
        }
    }
}
