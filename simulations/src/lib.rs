//! berth-sim: deterministic simulation of berth's control plane.
//!
//! The production command bus, domain model, Docker views and reconciler run
//! against a simulated event log ([`log::SimLog`]: durable only at sync
//! points, torn by crashes) and a simulated infrastructure
//! ([`infra::SimInfra`]: failed tasks, latency, lost replies, host loss, a
//! full datastore, partitions), on one thread, with a virtual clock and one
//! seeded PRNG ([`world`]). A workload of simulated clients issues Docker-like
//! operations ([`workload`]); an auditor predicts every reply with a reference
//! model ([`reference`]) and checks the invariants listed in [`simulator`].
//! The same seed replays the same run byte for byte: the trace hash says so.

pub mod history_bench;
pub mod infra;
pub mod log;
pub mod reference;
pub mod simulator;
pub mod workload;
pub mod world;

pub use simulator::{run, FaultPlan, RunSummary, SimConfig, SimFailure};

/// The command that replays one seed, printed with every failure.
pub fn replay_command(seed: u64, op_count: u64) -> String {
    format!("cargo run --release -p berth-sim -- --seed {seed} --ops {op_count}")
}

/// Runs one seed, turning a panic in the code under test into a failure
/// that names the seed like any other.
pub fn run_catching(config: SimConfig) -> Result<RunSummary, String> {
    match std::panic::catch_unwind(|| run(config)) {
        Ok(Ok(summary)) => Ok(summary),
        Ok(Err(failure)) => Err(failure.to_string()),
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|text| text.to_string()))
                .unwrap_or_else(|| "a panic without a message".into());
            Err(format!("panicked: {message}"))
        }
    }
}
