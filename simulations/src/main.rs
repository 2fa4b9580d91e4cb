//! The simulator's command line: one seed, a swarm of seeds, or a benchmark.
//!
//! ```text
//! berth-sim --seed N --ops M                 one run: trace hash and summary
//! berth-sim --swarm --seeds K [--start S]    K runs from seed S (default: from the clock)
//! berth-sim --bench [--seeds K] [--ops M]    a swarm that reports operations per second
//! berth-sim --bench-history [--events N]     replaying N events into the Docker views
//! ```
//! Any failure prints its seed and the command that replays it, and the
//! process exits with status 1.

use berth_sim::{replay_command, run_catching, RunSummary, SimConfig};
use std::process::ExitCode;
use std::time::Instant;

/// Operations per run when `--ops` is not given.
const DEFAULT_OP_COUNT: u64 = 10_000;
/// Runs in a swarm when `--seeds` is not given.
const DEFAULT_SEED_COUNT: u64 = 50;
/// Events in the history benchmark's log when `--events` is not given.
const DEFAULT_HISTORY_EVENT_COUNT: u64 = 1_000_000;
/// Rounds of the history benchmark; the best one is reported.
const HISTORY_ROUND_COUNT: u32 = 3;

struct Arguments {
    seed: Option<u64>,
    op_count: u64,
    swarm: bool,
    bench: bool,
    bench_history: bool,
    event_count: u64,
    seed_count: u64,
    start: Option<u64>,
}

fn parse(mut words: impl Iterator<Item = String>) -> Result<Arguments, String> {
    let mut arguments = Arguments {
        seed: None,
        op_count: DEFAULT_OP_COUNT,
        swarm: false,
        bench: false,
        bench_history: false,
        event_count: DEFAULT_HISTORY_EVENT_COUNT,
        seed_count: DEFAULT_SEED_COUNT,
        start: None,
    };
    let number = |flag: &str, value: Option<String>| -> Result<u64, String> {
        let value = value.ok_or_else(|| format!("{flag} needs a number"))?;
        value.parse().map_err(|_| format!("{flag}: {value:?} is not a number"))
    };
    while let Some(word) = words.next() {
        match word.as_str() {
            "--seed" => arguments.seed = Some(number("--seed", words.next())?),
            "--ops" => arguments.op_count = number("--ops", words.next())?,
            "--seeds" => arguments.seed_count = number("--seeds", words.next())?,
            "--start" => arguments.start = Some(number("--start", words.next())?),
            "--swarm" => arguments.swarm = true,
            "--bench" => arguments.bench = true,
            "--bench-history" => arguments.bench_history = true,
            "--events" => arguments.event_count = number("--events", words.next())?,
            "--help" | "-h" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(arguments)
}

/// The CPU time this (single-threaded) process has used, from Linux's
/// scheduler statistics; `None` elsewhere.
fn thread_cpu_seconds() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/self/schedstat").ok()?;
    let cpu_ns: u64 = text.split_whitespace().next()?.parse().ok()?;
    Some(cpu_ns as f64 / 1e9)
}

fn print_summary(summary: &RunSummary) {
    println!(
        "seed {} ops {}: trace hash {:016x}; {} accepted, {} refused, {} unanswered (crashes: {}), {} events, {} syncs, {} host losses, {} ticks, converged in {} liveness ticks, {} infrastructure calls, {} ms virtual",
        summary.seed,
        summary.op_count,
        summary.trace_hash,
        summary.accepted_count,
        summary.rejected_count,
        summary.unanswered_count,
        summary.crash_count,
        summary.event_count,
        summary.sync_count,
        summary.host_loss_count,
        summary.tick_count,
        summary.liveness_tick_count,
        summary.infra_call_count,
        summary.virtual_time_ms,
    );
}

fn main() -> ExitCode {
    let arguments = match parse(std::env::args().skip(1)) {
        Ok(arguments) => arguments,
        Err(message) => {
            if !message.is_empty() {
                eprintln!("{message}");
            }
            eprintln!("usage: berth-sim --seed N [--ops M] | --swarm [--seeds K] [--start S] [--ops M] | --bench [--seeds K] [--ops M] | --bench-history [--events N]");
            return ExitCode::from(2);
        }
    };
    if arguments.bench_history {
        return match berth_sim::history_bench::run(arguments.event_count, HISTORY_ROUND_COUNT) {
            Ok(report) => {
                println!(
                    "{} events: raw read {:.0} events/s, replay into the Docker views {:.0} events/s ({:.0}% of the raw read), {} containers at the end",
                    report.event_count,
                    report.raw_read_events_per_s,
                    report.replay_events_per_s,
                    100.0 * report.replay_events_per_s / report.raw_read_events_per_s,
                    report.container_count
                );
                ExitCode::SUCCESS
            }
            Err(error) => {
                println!("reading the benchmark log failed: {error}");
                ExitCode::FAILURE
            }
        };
    }
    if let (Some(seed), false, false) = (arguments.seed, arguments.swarm, arguments.bench) {
        let started = Instant::now();
        return match run_catching(SimConfig { seed, op_count: arguments.op_count }) {
            Ok(summary) => {
                print_summary(&summary);
                println!("{:.0} operations per second", summary.op_count as f64 / started.elapsed().as_secs_f64());
                ExitCode::SUCCESS
            }
            Err(failure) => {
                println!("FAILED seed {seed}: {failure}");
                println!("replay: {}", replay_command(seed, arguments.op_count));
                ExitCode::FAILURE
            }
        };
    }
    // A swarm without --start explores new seeds each time; the seed of any
    // failure is printed, so the run stays replayable.
    let start = arguments
        .start
        .or(arguments.seed)
        .unwrap_or_else(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0));
    let started = Instant::now();
    let mut failures = Vec::new();
    let mut op_total = 0;
    for seed in start..start.saturating_add(arguments.seed_count) {
        match run_catching(SimConfig { seed, op_count: arguments.op_count }) {
            Ok(summary) => {
                op_total += summary.op_count;
                if !arguments.bench {
                    print_summary(&summary);
                }
            }
            Err(failure) => {
                println!("FAILED seed {seed}: {failure}");
                println!("replay: {}", replay_command(seed, arguments.op_count));
                failures.push(seed);
            }
        }
    }
    let elapsed_s = started.elapsed().as_secs_f64();
    println!(
        "{} seeds from {start}, {} failed; {op_total} operations in {elapsed_s:.2} s of wall time: {:.0} simulated operations per second on one thread",
        arguments.seed_count,
        failures.len(),
        op_total as f64 / elapsed_s
    );
    if let Some(cpu_s) = thread_cpu_seconds() {
        println!(
            "{cpu_s:.2} s of CPU time: {:.0} simulated operations per CPU-second (per core, unaffected by other load)",
            op_total as f64 / cpu_s
        );
    }
    if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        println!("failing seeds: {failures:?}");
        ExitCode::FAILURE
    }
}
