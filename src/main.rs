//! berth: the composition root. Parses the command line, wires the adapters
//! to the engine and the API, and runs the chosen subcommand.

mod cli;
mod local;
mod local_effects;
mod system;
mod tls;
mod vch_admin;

fn main() -> std::process::ExitCode {
    cli::main()
}
