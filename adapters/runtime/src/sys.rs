//! Thin, checked wrappers over the few Linux syscalls std does not offer.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

/// Longest unix socket path the kernel accepts (sun_path is 108 bytes with its NUL).
pub const MAX_SOCKET_PATH_LEN: usize = 107;

/// Errors of the syscall wrappers.
#[derive(Debug, thiserror::Error)]
pub enum SysError {
    #[error("{call}: {source}")]
    Call { call: &'static str, source: io::Error },
    #[error("no file descriptor arrived on the console socket")]
    NoDescriptor,
}

impl From<SysError> for crate::error::RuntimeError {
    fn from(error: SysError) -> Self {
        match error {
            SysError::Call { call, source } => crate::error::RuntimeError::Io { context: call.to_string(), source },
            SysError::NoDescriptor => crate::error::RuntimeError::Corrupt {
                context: "receiving the container's terminal".to_string(),
                message: error.to_string(),
            },
        }
    }
}

fn check(call: &'static str, result: libc::c_int) -> Result<libc::c_int, SysError> {
    if result < 0 {
        Err(SysError::Call { call, source: io::Error::last_os_error() })
    } else {
        Ok(result)
    }
}

/// A close-on-exec pipe: (read end, write end).
pub fn pipe() -> Result<(File, File), SysError> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: fds points at two writable ints, as pipe2 requires.
    check("pipe2", unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: pipe2 succeeded, so both descriptors are open and owned by nobody else.
    Ok(unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) })
}

/// A new pseudo terminal: (master, slave), both close-on-exec.
pub fn open_pty() -> Result<(File, File), SysError> {
    let mut master: RawFd = -1;
    let mut slave: RawFd = -1;
    // SAFETY: out-pointers are valid; name, termios and winsize may be null.
    check("openpty", unsafe { libc::openpty(&mut master, &mut slave, std::ptr::null_mut(), std::ptr::null(), std::ptr::null()) })?;
    // SAFETY: openpty succeeded, so both descriptors are open and ours.
    let (master, slave) = unsafe { (File::from_raw_fd(master), File::from_raw_fd(slave)) };
    set_cloexec(master.as_raw_fd())?;
    set_cloexec(slave.as_raw_fd())?;
    Ok((master, slave))
}

fn set_cloexec(fd: RawFd) -> Result<(), SysError> {
    // SAFETY: fcntl on a descriptor we own; F_SETFD takes an int flag.
    check("fcntl(FD_CLOEXEC)", unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) })?;
    Ok(())
}

/// Sets a terminal's size (the kernel then signals SIGWINCH to its foreground group).
pub fn set_window_size(fd: RawFd, width: u16, height: u16) -> Result<(), SysError> {
    let size = libc::winsize { ws_row: height, ws_col: width, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCSWINSZ reads one winsize from the pointer, which is valid for the call.
    check("ioctl(TIOCSWINSZ)", unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &size) })?;
    Ok(())
}

/// Receives one file descriptor sent with SCM_RIGHTS (runc's --console-socket protocol).
pub fn receive_fd(stream: &UnixStream) -> Result<OwnedFd, SysError> {
    let mut data = [0u8; 4096];
    let mut iov = libc::iovec { iov_base: data.as_mut_ptr().cast(), iov_len: data.len() };
    // Room for a few descriptors, in case a sender attaches more than one.
    let mut control = [0u8; 256];
    // SAFETY: msghdr is plain data; zeroed is a valid empty header.
    let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
    header.msg_iov = &mut iov;
    header.msg_iovlen = 1;
    header.msg_control = control.as_mut_ptr().cast();
    header.msg_controllen = control.len();
    loop {
        // SAFETY: header points at live buffers for the duration of the call.
        let received = unsafe { libc::recvmsg(stream.as_raw_fd(), &mut header, libc::MSG_CMSG_CLOEXEC) };
        if received < 0 {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(SysError::Call { call: "recvmsg", source: error });
        }
        break;
    }
    let mut received_fd = None;
    // SAFETY: the CMSG macros walk the control buffer recvmsg filled, bounded by msg_controllen.
    unsafe {
        let mut message = libc::CMSG_FIRSTHDR(&header);
        while !message.is_null() {
            if (*message).cmsg_level == libc::SOL_SOCKET && (*message).cmsg_type == libc::SCM_RIGHTS {
                let payload = libc::CMSG_DATA(message) as *const RawFd;
                let count = ((*message).cmsg_len as usize - libc::CMSG_LEN(0) as usize) / std::mem::size_of::<RawFd>();
                for index in 0..count {
                    let fd = std::ptr::read_unaligned(payload.add(index));
                    if received_fd.is_none() {
                        received_fd = Some(OwnedFd::from_raw_fd(fd));
                    } else {
                        libc::close(fd);
                    }
                }
            }
            message = libc::CMSG_NXTHDR(&header, message);
        }
    }
    received_fd.ok_or(SysError::NoDescriptor)
}

/// The start time of a process (clock ticks since boot), field 22 of /proc/<pid>/stat.
pub fn process_start_ticks(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat_fields_after_command(&stat).get(19)?.parse().ok()
}

/// The fields of /proc/<pid>/stat after the `(command)` one, which may itself hold spaces.
pub fn stat_fields_after_command(stat: &str) -> Vec<&str> {
    match stat.rfind(')') {
        Some(end) => stat[end + 1..].split_whitespace().collect(),
        None => Vec::new(),
    }
}

/// Whether the process `pid` that started at `start_ticks` is still alive (and not a zombie).
pub fn process_alive(pid: i32, start_ticks: u64) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let fields = stat_fields_after_command(&stat);
    let state_is_zombie = fields.first().is_some_and(|state| *state == "Z" || *state == "X");
    let same_process = fields.get(19).and_then(|ticks| ticks.parse::<u64>().ok()) == Some(start_ticks);
    same_process && !state_is_zombie
}

/// Sends a signal to a process.
pub fn send_signal(pid: i32, signal: i32) -> Result<(), SysError> {
    // SAFETY: kill has no memory preconditions.
    check("kill", unsafe { libc::kill(pid, signal) })?;
    Ok(())
}

/// Makes this process adopt orphaned descendants, so the container's init is reaped here.
pub fn become_subreaper() -> Result<(), SysError> {
    // SAFETY: PR_SET_CHILD_SUBREAPER takes one integer argument.
    check("prctl(PR_SET_CHILD_SUBREAPER)", unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) })?;
    Ok(())
}

/// Forks; the parent exits at once and the child continues in a new session, detached from
/// whoever started it. Call only while the process is single-threaded.
pub fn detach_into_new_session() -> Result<(), SysError> {
    // SAFETY: the caller guarantees a single thread, so the child inherits a consistent state.
    let pid = check("fork", unsafe { libc::fork() })?;
    if pid > 0 {
        // SAFETY: _exit skips atexit handlers and buffered stdio, which belong to the child now.
        unsafe { libc::_exit(0) };
    }
    // SAFETY: setsid has no memory preconditions.
    check("setsid", unsafe { libc::setsid() })?;
    Ok(())
}

/// Points one of this process's descriptors (0, 1, 2) at `file`.
pub fn redirect(file: &File, target_fd: RawFd) -> Result<(), SysError> {
    // SAFETY: both descriptors are valid; dup2 atomically replaces target_fd.
    check("dup2", unsafe { libc::dup2(file.as_raw_fd(), target_fd) })?;
    Ok(())
}

/// Waits for any child; `None` when there are no children left.
pub fn wait_any_child() -> Result<Option<(i32, i32)>, SysError> {
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: status is a valid out-pointer.
        let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
        if pid >= 0 {
            return Ok(Some((pid, status)));
        }
        let error = io::Error::last_os_error();
        match error.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::ECHILD) => return Ok(None),
            _ => return Err(SysError::Call { call: "waitpid", source: error }),
        }
    }
}

/// Docker's exit code for a wait status: the exit status, or 128 + the signal that killed it.
pub fn docker_exit_code(status: i32) -> i64 {
    if libc::WIFEXITED(status) {
        i64::from(libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        128 + i64::from(libc::WTERMSIG(status))
    } else {
        255
    }
}

/// Whether the effective user is root.
pub fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// A path that reaches a unix socket even when its real path exceeds sun_path: through
/// `/proc/self/fd/<dir fd>/<name>`. Hold the returned directory handle while using the path.
pub fn socket_path(path: &Path) -> io::Result<(PathBuf, Option<File>)> {
    if path.as_os_str().len() <= MAX_SOCKET_PATH_LEN {
        return Ok((path.to_path_buf(), None));
    }
    let parent = path.parent().unwrap_or(Path::new("/"));
    let name = path.file_name().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "socket path has no file name"))?;
    let directory = File::open(parent)?;
    let short = PathBuf::from(format!("/proc/self/fd/{}", directory.as_raw_fd())).join(name);
    Ok((short, Some(directory)))
}

/// Like [`socket_path`], but usable by another process (through `/proc/<our pid>/fd/...`)
/// while this one holds the returned directory handle.
pub fn socket_path_for_others(path: &Path) -> io::Result<(PathBuf, Option<File>)> {
    if path.as_os_str().len() <= MAX_SOCKET_PATH_LEN {
        return Ok((path.to_path_buf(), None));
    }
    let parent = path.parent().unwrap_or(Path::new("/"));
    let name = path.file_name().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "socket path has no file name"))?;
    let directory = File::open(parent)?;
    let short = PathBuf::from(format!("/proc/{}/fd/{}", std::process::id(), directory.as_raw_fd())).join(name);
    Ok((short, Some(directory)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_docker() {
        assert_eq!(docker_exit_code(3 << 8), 3);
        assert_eq!(docker_exit_code(libc::SIGKILL), 137);
        assert_eq!(docker_exit_code(libc::SIGTERM), 143);
    }

    #[test]
    fn stat_fields_survive_spaces_in_the_command() {
        let stat = "42 (my (odd) cmd) S 1 42 42 0 -1 4194560 0 0 0 0 1 2 0 0 20 0 1 0 777 0 0";
        let fields = stat_fields_after_command(stat);
        assert_eq!(fields[0], "S");
        assert_eq!(fields[1], "1");
        assert_eq!(fields[19], "777");
    }

    #[test]
    fn this_process_is_alive_and_a_bogus_start_time_is_not() {
        let pid = std::process::id() as i32;
        let ticks = process_start_ticks(pid).unwrap();
        assert!(process_alive(pid, ticks));
        assert!(!process_alive(pid, ticks + 1));
    }

    #[test]
    fn long_socket_paths_are_shortened_through_proc() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("d".repeat(120));
        std::fs::create_dir(&deep).unwrap();
        let socket = deep.join("s.sock");
        let (short, handle) = socket_path(&socket).unwrap();
        assert!(short.as_os_str().len() <= MAX_SOCKET_PATH_LEN);
        let listener = std::os::unix::net::UnixListener::bind(&short).unwrap();
        drop(handle);
        assert!(socket.exists());
        drop(listener);
    }
}
