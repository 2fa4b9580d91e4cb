//! The host programs the runtime drives (runc, ip, iptables): finding them and running them.

use crate::error::RuntimeError;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// Directories searched besides PATH: daemons often run with a PATH lacking the sbin ones.
const EXTRA_TOOL_DIRS: &[&str] = &["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"];

/// Finds an executable by name in PATH and the usual system directories.
pub fn find_tool(name: &'static str) -> Result<PathBuf, RuntimeError> {
    let path_dirs: Vec<PathBuf> = std::env::var_os("PATH").map(|path| std::env::split_paths(&path).collect()).unwrap_or_default();
    let candidates: Vec<PathBuf> = path_dirs.into_iter().chain(EXTRA_TOOL_DIRS.iter().map(PathBuf::from)).collect();
    for dir in &candidates {
        let candidate = dir.join(name);
        if is_executable(&candidate) {
            return Ok(candidate);
        }
    }
    Err(RuntimeError::ToolMissing {
        tool: name,
        searched: candidates.iter().map(|dir| dir.display().to_string()).collect::<Vec<_>>().join(":"),
    })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|metadata| metadata.is_file() && metadata.permissions().mode() & 0o111 != 0)
}

/// Runs a program to completion with its output captured.
pub fn run(program: &Path, args: &[&str]) -> Result<Output, RuntimeError> {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .map_err(RuntimeError::io(format!("running {}", program.display())))
}

/// Runs a program and fails with its stderr when it exits non-zero.
pub fn run_checked(program: &Path, args: &[&str]) -> Result<String, RuntimeError> {
    let output = run(program, args)?;
    if output.status.success() {
        return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
    }
    Err(RuntimeError::Command {
        action: format!("{} {}", program.file_name().map(|name| name.to_string_lossy()).unwrap_or_default(), args.join(" ")),
        message: failure_message(&output),
    })
}

/// The most useful text of a failed command: its stderr (or stdout), and its status.
pub fn failure_message(output: &Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
    let stdout = String::from_utf8_lossy(&output.stdout).trim().to_string();
    let text = if stderr.is_empty() { stdout } else { stderr };
    if text.is_empty() {
        format!("exited with {}", output.status)
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_sh_and_reports_missing_tools_by_name() {
        assert!(find_tool("sh").is_ok());
        let error = find_tool("berth-no-such-tool").unwrap_err().to_string();
        assert!(error.contains("berth-no-such-tool is not installed"), "{error}");
    }

    #[test]
    fn failed_commands_carry_their_stderr() {
        let sh = find_tool("sh").unwrap();
        assert_eq!(run_checked(&sh, &["-c", "echo out"]).unwrap(), "out\n");
        let error = run_checked(&sh, &["-c", "echo broken >&2; exit 2"]).unwrap_err().to_string();
        assert!(error.contains("broken"), "{error}");
    }
}
