//! A stand-in for `berth runtime-shim`, so the crate's tests can run shims without the berth
//! binary: `berth-runtime-test-shim runtime-shim <shim args>`.

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.split_first() {
        Some((subcommand, rest)) if subcommand == "runtime-shim" => berth_runtime::shim::main(rest.to_vec()),
        _ => {
            eprintln!("usage: berth-runtime-test-shim runtime-shim --state-dir DIR --id ID --runc PATH");
            std::process::ExitCode::FAILURE
        }
    }
}
