//! The command line: `berth serve`, `berth log ...`, `berth bench ...`.

mod bench;
mod bench_docker;
mod bench_http;
mod bench_nats;
mod bench_replay;
mod bench_vsphere;
mod events;
mod follow;
mod history;
mod log;
mod serve;
mod vch;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "berth", version, about = "An event-sourced virtual container host: the Docker API on one durable log")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run berth: open the log, run the projections and serve the Docker API.
    Serve(serve::ServeArgs),
    /// Inspect the event log.
    #[command(subcommand)]
    Log(log::LogCommand),
    /// Rebuild the Docker views as they were at a position or time.
    Replay(history::ReplayArgs),
    /// Who did what to which object, and when.
    Audit(history::AuditArgs),
    /// Measure berth against its yardsticks.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Serve the Docker API's read side from the NATS stream a leader's relay publishes.
    Follow(follow::FollowArgs),
    /// Print the events the portal streams (`--follow` to keep printing new ones).
    Events(events::EventsArgs),
    /// Create, list, inspect, configure, upgrade and delete virtual container hosts (vic-machine's successor).
    Vch(vch::VchCommand),
    /// The per-container supervisor the local runtime starts (not for people).
    #[command(hide = true)]
    RuntimeShim {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

/// The data directory: `--data-dir`, `BERTH_DATA_DIR`, or a per-user default.
pub fn default_data_dir() -> PathBuf {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/var/lib/berth");
    }
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("berth")
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BERTH_LOG").unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let result = match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Log(command) => log::run(command),
        Command::Replay(args) => history::replay(args),
        Command::Audit(args) => history::run_audit(args),
        Command::Bench(command) => bench::run(command),
        Command::Follow(args) => follow::run(args),
        Command::Events(args) => events::run(args),
        Command::Vch(command) => vch::run(command),
        Command::RuntimeShim { args } => return berth_runtime::shim::main(args),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("berth: {error:#}");
            ExitCode::FAILURE
        }
    }
}
