//! `docker exec`: a further process in a running container via `runc exec`, attached.

use crate::error::RuntimeError;
use crate::sys;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Child, ChildStderr, ChildStdin, ChildStdout};

/// The terminal of a tty exec: read its output, write its input. Reading ends (returns 0)
/// when the process and everything holding its terminal are gone.
pub struct TerminalStream {
    master: File,
}

impl TerminalStream {
    pub(crate) fn new(master: File) -> TerminalStream {
        TerminalStream { master }
    }

    pub fn try_clone(&self) -> std::io::Result<TerminalStream> {
        Ok(TerminalStream { master: self.master.try_clone()? })
    }
}

impl Read for TerminalStream {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        match self.master.read(buffer) {
            // A pty master reads EIO once no slave is open: that is its end of file.
            Err(error) if error.raw_os_error() == Some(libc::EIO) => Ok(0),
            other => other,
        }
    }
}

impl Write for TerminalStream {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.master.write(bytes)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.master.flush()
    }
}

/// A running exec; take its streams, then `wait` for its exit code.
pub struct ExecProcess {
    /// `None` only while being dropped.
    pub(crate) child: Option<Child>,
    pub(crate) pid: i32,
    pub(crate) stdin: Option<ChildStdin>,
    pub(crate) stdout: Option<ChildStdout>,
    pub(crate) stderr: Option<ChildStderr>,
    pub(crate) terminal: Option<TerminalStream>,
    /// Kept for resizes after the caller took the terminal stream.
    pub(crate) terminal_control: Option<File>,
    pub(crate) exit_code: Option<i64>,
    /// runc's own JSON log for this exec: why the process could not be started, if it was not.
    pub(crate) runc_log: PathBuf,
    pub(crate) leftover_files: Vec<PathBuf>,
}

/// runc's exit status when it failed itself rather than the process.
const RUNC_FAILURE_STATUS: i64 = 255;
/// Docker's exit code when the command does not exist.
pub const COMMAND_NOT_FOUND_EXIT_CODE: i64 = 127;
/// Docker's exit code when the command exists but cannot be executed.
pub const COMMAND_NOT_EXECUTABLE_EXIT_CODE: i64 = 126;

impl ExecProcess {
    /// The process's pid on the host (0 if it ended before runc reported it).
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Its stdin, when the exec asked for `attach_stdin` without a terminal.
    pub fn take_stdin(&mut self) -> Option<ChildStdin> {
        self.stdin.take()
    }

    pub fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.stdout.take()
    }

    pub fn take_stderr(&mut self) -> Option<ChildStderr> {
        self.stderr.take()
    }

    /// The terminal (input and output in one stream), for tty execs.
    pub fn take_terminal(&mut self) -> Option<TerminalStream> {
        self.terminal.take()
    }

    /// Resizes the exec's terminal: ours first, then runc copies the size to the container's.
    pub fn resize(&self, width: u16, height: u16) -> Result<(), RuntimeError> {
        let Some(control) = &self.terminal_control else {
            return Ok(());
        };
        sys::set_window_size(control.as_raw_fd(), width, height)?;
        // runc resizes the container's terminal from its own on SIGWINCH.
        if let Some(child) = &self.child {
            let _ = sys::send_signal(child.id() as i32, libc::SIGWINCH);
        }
        Ok(())
    }

    /// Waits for the process; its exit code follows Docker (128 + signal when killed).
    pub fn wait(&mut self) -> Result<i64, RuntimeError> {
        if let Some(code) = self.exit_code {
            return Ok(code);
        }
        // Our stdin copy must close, or a process reading stdin would never finish.
        self.stdin.take();
        let child = self.child.as_mut().ok_or_else(|| RuntimeError::invalid("exec", "the process handle is gone"))?;
        let status = child.wait().map_err(RuntimeError::io("waiting for runc exec"))?;
        let code = self.docker_exit_code(exit_code_of(status));
        self.exit_code = Some(code);
        self.cleanup_files();
        Ok(code)
    }

    /// The exit code if the process has finished, without blocking.
    pub fn try_wait(&mut self) -> Result<Option<i64>, RuntimeError> {
        if let Some(code) = self.exit_code {
            return Ok(Some(code));
        }
        let child = self.child.as_mut().ok_or_else(|| RuntimeError::invalid("exec", "the process handle is gone"))?;
        match child.try_wait().map_err(RuntimeError::io("checking runc exec"))? {
            Some(status) => {
                let code = self.docker_exit_code(exit_code_of(status));
                self.exit_code = Some(code);
                self.cleanup_files();
                Ok(Some(code))
            }
            None => Ok(None),
        }
    }

    /// Why runc could not start the process, when that is what happened.
    pub fn start_failure(&self) -> Option<String> {
        let text = std::fs::read_to_string(&self.runc_log).ok()?;
        let messages: Vec<String> = text
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|entry| entry["level"] == "error" || entry["level"] == "fatal")
            .filter_map(|entry| entry["msg"].as_str().map(str::to_string))
            .collect();
        (!messages.is_empty()).then(|| messages.join("; "))
    }

    /// Docker reports a command that could not be run as 127 (missing) or 126 (not executable).
    fn docker_exit_code(&self, code: i64) -> i64 {
        if code != RUNC_FAILURE_STATUS {
            return code;
        }
        match self.start_failure().map(|message| message.to_ascii_lowercase()) {
            Some(message) if message.contains("no such file or directory") || message.contains("executable file not found") => {
                COMMAND_NOT_FOUND_EXIT_CODE
            }
            Some(message) if message.contains("permission denied") => COMMAND_NOT_EXECUTABLE_EXIT_CODE,
            _ => code,
        }
    }

    fn cleanup_files(&mut self) {
        for path in self.leftover_files.drain(..) {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl Drop for ExecProcess {
    fn drop(&mut self) {
        if self.exit_code.is_none() {
            if let Some(mut child) = self.child.take() {
                // Dropped while running (a detached exec): reap it when it ends, not as a zombie.
                let files: Vec<PathBuf> = self.leftover_files.drain(..).collect();
                std::thread::spawn(move || {
                    let _ = child.wait();
                    for path in files {
                        let _ = std::fs::remove_file(path);
                    }
                });
            }
        }
        self.cleanup_files();
    }
}

fn exit_code_of(status: std::process::ExitStatus) -> i64 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => i64::from(code),
        (None, Some(signal)) => 128 + i64::from(signal),
        (None, None) => 255,
    }
}
