//! berth: the composition root. Parses the command line, wires the adapters
//! to the engine and the API, and runs the chosen subcommand.

mod cli;
mod system;

fn main() -> std::process::ExitCode {
    cli::main()
}
