//! The per-container supervisor (`berth runtime-shim --state-dir D --id ID --runc PATH`).
//!
//! It detaches into its own session (so it outlives berth, even a SIGKILLed one), becomes the
//! child subreaper, creates the container with `runc create` holding its stdio (pipes, or the
//! pty master runc hands over a console socket), binds the published ports and the attach
//! socket, reports `created` on stdout, waits for berth's `start` line on stdin, runs
//! `runc start`, reports `started`, and then: copies output to the json-file log and to
//! attached clients, feeds stdin, proxies ports, reaps the init process and finally records
//! the exit code atomically in exit.json before exiting.

use crate::layout::{self, ContainerFiles, ExitRecord, Layout, ShimRecord};
use crate::logfile::{LogWriter, OutputStream};
use crate::protocol::{self, ProtocolError};
use crate::proxy::{self, PortProxy};
use crate::runc::Runc;
use crate::spec::{ContainerRunSpec, NetworkMode, PublishedPort};
use crate::sys;
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long runc may take to hand over the container's terminal after `runc create`.
pub const CONSOLE_HANDOVER_TIMEOUT: Duration = Duration::from_secs(10);
/// An attached client that cannot take output for this long is dropped, not waited for.
pub const CLIENT_WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// After the init exits, how long output still in the pipes may take to drain.
pub const OUTPUT_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// The line berth writes on the shim's stdin to let the created container run.
pub(crate) const START_LINE: &str = "start";

/// What the shim tells berth on its stdout, one JSON object per line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub(crate) enum ShimReport {
    Created { pid: i32, published_ports: Vec<PublishedPort> },
    Started,
    Failed { message: String },
}

/// Why the shim could not supervise its container.
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    #[error("usage: runtime-shim --state-dir DIR --id ID --runc PATH ({0})")]
    Usage(String),
    #[error("{context}: {message}")]
    Setup { context: String, message: String },
    #[error("berth went away before starting the container")]
    Abandoned,
}

fn setup_error(context: &str) -> impl FnOnce(String) -> ShimError + '_ {
    move |message| ShimError::Setup { context: context.to_string(), message }
}

/// The shim's command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ShimArgs {
    pub state_dir: PathBuf,
    pub id: String,
    pub runc: PathBuf,
}

impl ShimArgs {
    pub fn to_args(&self) -> Vec<String> {
        vec![
            "--state-dir".into(),
            self.state_dir.display().to_string(),
            "--id".into(),
            self.id.clone(),
            "--runc".into(),
            self.runc.display().to_string(),
        ]
    }

    pub fn parse(args: &[String]) -> Result<ShimArgs, ShimError> {
        let (mut state_dir, mut id, mut runc) = (None, None, None);
        let mut iter = args.iter();
        while let Some(flag) = iter.next() {
            let value = iter.next().ok_or_else(|| ShimError::Usage(format!("{flag} needs a value")))?;
            match flag.as_str() {
                "--state-dir" => state_dir = Some(PathBuf::from(value)),
                "--id" => id = Some(value.clone()),
                "--runc" => runc = Some(PathBuf::from(value)),
                other => return Err(ShimError::Usage(format!("unknown argument {other}"))),
            }
        }
        let id = id.ok_or_else(|| ShimError::Usage("--id is required".into()))?;
        layout::validate_id("container id", &id).map_err(|error| ShimError::Usage(error.to_string()))?;
        Ok(ShimArgs {
            state_dir: state_dir.ok_or_else(|| ShimError::Usage("--state-dir is required".into()))?,
            id,
            runc: runc.ok_or_else(|| ShimError::Usage("--runc is required".into()))?,
        })
    }
}

/// Entry point of `berth runtime-shim` (the arguments after the subcommand).
pub fn main(args: Vec<String>) -> ExitCode {
    let args = match ShimArgs::parse(&args) {
        Ok(args) => args,
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::FAILURE;
        }
    };
    // Detach first, while this process still has a single thread.
    if let Err(error) = sys::detach_into_new_session() {
        report(&ShimReport::Failed { message: error.to_string() });
        return ExitCode::FAILURE;
    }
    let files = Layout { state_dir: args.state_dir.clone() }.container(&args.id);
    if let Ok(shim_log) = OpenOptions::new().create(true).append(true).open(files.shim_log()) {
        // berth's stderr may be gone any moment; the shim's own diagnostics belong on disk.
        let _ = sys::redirect(&shim_log, 2);
    }
    match supervise(&args, &files) {
        Ok(exit_code) => {
            eprintln!("container {} exited with {exit_code}", args.id);
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("container {}: {error}", args.id);
            report(&ShimReport::Failed { message: error.to_string() });
            ExitCode::FAILURE
        }
    }
}

/// Writes one report line to berth (ignored once berth stopped listening).
fn report(report: &ShimReport) {
    if let Ok(line) = serde_json::to_string(report) {
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "{line}");
        let _ = stdout.flush();
    }
}

/// The container's stdio as the shim holds it.
enum ContainerIo {
    Pipes { stdin: Option<File>, stdout: File, stderr: File },
    Terminal { master: File },
}

fn supervise(args: &ShimArgs, files: &ContainerFiles) -> Result<i64, ShimError> {
    let spec: ContainerRunSpec = layout::read_json(&files.spec())
        .map_err(|error| ShimError::Setup { context: "reading spec.json".into(), message: error.to_string() })?
        .ok_or_else(|| ShimError::Setup { context: "reading spec.json".into(), message: "missing".into() })?;
    sys::become_subreaper().map_err(|error| setup_error("becoming subreaper")(error.to_string()))?;
    let runc = Runc { program: args.runc.clone(), root: Layout { state_dir: args.state_dir.clone() }.runc_root() };
    let _ = runc.delete_force(&spec.id);
    for stale in [files.init_pid(), files.console_socket(), files.attach_socket(), files.runc_log()] {
        let _ = layout::remove_if_exists(&stale);
    }
    let log = Arc::new(LogWriter::open(&files.log()).map_err(|error| setup_error("opening the log")(error.to_string()))?);

    let io = create_container(&runc, &spec, files)?;
    let pid: i32 = std::fs::read_to_string(files.init_pid())
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .ok_or_else(|| setup_error("reading init.pid")("runc wrote no pid".into()))?;

    // The hub owns the only stdin write end, so closing it there is the container's EOF.
    let (stdin, terminal, outputs) = match io {
        ContainerIo::Pipes { stdin, stdout, stderr } => (stdin, None, vec![(stdout, OutputStream::Stdout), (stderr, OutputStream::Stderr)]),
        ContainerIo::Terminal { master } => {
            let stdin = if spec.open_stdin { master.try_clone().ok() } else { None };
            let terminal = master.try_clone().ok();
            (stdin, terminal, vec![(master, OutputStream::Stdout)])
        }
    };
    let hub = Arc::new(Hub::new(stdin, terminal));

    let prepared = (|| {
        let proxies = match &spec.network_mode {
            NetworkMode::Bridge(attachments) => match attachments.first() {
                Some(first) => {
                    proxy::bind_all(&spec.port_bindings, first.ip).map_err(|error| setup_error("publishing ports")(error.to_string()))?
                }
                None => Vec::new(),
            },
            // Docker ignores published ports without a bridge network.
            NetworkMode::Host | NetworkMode::None => Vec::new(),
        };
        let published_ports: Vec<PublishedPort> = proxies.iter().map(PortProxy::published).collect();
        let (attach_path, _attach_dir) =
            sys::socket_path(&files.attach_socket()).map_err(|error| setup_error("attach socket path")(error.to_string()))?;
        let attach_listener =
            UnixListener::bind(&attach_path).map_err(|error| setup_error("binding the attach socket")(error.to_string()))?;
        // Clients may attach between `created` and `start`: they must be served before the start.
        {
            let hub = hub.clone();
            std::thread::spawn(move || accept_clients(attach_listener, hub));
        }
        let shim_pid = std::process::id() as i32;
        let record = ShimRecord {
            shim_pid,
            shim_start_ticks: sys::process_start_ticks(shim_pid).unwrap_or(0),
            pid,
            published_ports: published_ports.clone(),
            started_at_unix_ms: layout::now_unix_ms(),
        };
        layout::write_json_atomic(&files.shim_record(), &record).map_err(|error| setup_error("writing shim.json")(error.to_string()))?;
        report(&ShimReport::Created { pid, published_ports });
        wait_for_start_line()?;
        Ok(proxies)
    })();
    let proxies = match prepared {
        Ok(proxies) => proxies,
        Err(error) => {
            let _ = runc.delete_force(&spec.id);
            let _ = layout::remove_if_exists(&files.shim_record());
            let _ = layout::remove_if_exists(&files.attach_socket());
            return Err(error);
        }
    };

    if let Err(error) = runc.call("start", &[&spec.id]) {
        let _ = runc.delete_force(&spec.id);
        let _ = layout::remove_if_exists(&files.shim_record());
        let _ = layout::remove_if_exists(&files.attach_socket());
        return Err(setup_error("runc start")(error.to_string()));
    }
    report(&ShimReport::Started);
    if let Ok(null) = OpenOptions::new().read(true).write(true).open("/dev/null") {
        // berth reads our stdout until EOF; closing it ends that conversation.
        let _ = sys::redirect(&null, 0);
        let _ = sys::redirect(&null, 1);
    }
    proxies.into_iter().for_each(PortProxy::spawn);

    let (done_sender, done_receiver) = mpsc::channel::<()>();
    let pumps = outputs.len();
    for (source, stream) in outputs {
        spawn_pump(source, stream, log.clone(), hub.clone(), done_sender.clone());
    }
    drop(done_sender);

    let exit_code = reap_until_exit(pid);
    let deadline = Instant::now() + OUTPUT_DRAIN_TIMEOUT;
    for _ in 0..pumps {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if done_receiver.recv_timeout(remaining).is_err() {
            eprintln!("output did not drain within {OUTPUT_DRAIN_TIMEOUT:?}");
            break;
        }
    }
    if let Err(error) = log.finish() {
        eprintln!("finishing the log: {error}");
    }
    // Remove runc's record before announcing the exit, so a restart can create it afresh.
    if let Err(error) = runc.delete_force(&spec.id) {
        eprintln!("runc delete: {error}");
    }
    let exit = ExitRecord { exit_code, finished_at_unix_ms: layout::now_unix_ms() };
    if let Err(error) = layout::write_json_atomic(&files.exit_record(), &exit) {
        eprintln!("writing exit.json: {error}");
    }
    let _ = layout::remove_if_exists(&files.attach_socket());
    let _ = layout::remove_if_exists(&files.console_socket());
    hub.finish(exit_code);
    Ok(exit_code)
}

/// `runc create` with the container's stdio; returns what the shim keeps of it.
fn create_container(runc: &Runc, spec: &ContainerRunSpec, files: &ContainerFiles) -> Result<ContainerIo, ShimError> {
    let pipe = || sys::pipe().map_err(|error| setup_error("creating pipes")(error.to_string()));
    let mut args = runc.base_args();
    args.extend([
        "--log".to_string(),
        files.runc_log().display().to_string(),
        "--log-format".to_string(),
        "json".to_string(),
        "create".to_string(),
        "--bundle".to_string(),
        files.bundle().display().to_string(),
        "--pid-file".to_string(),
        files.init_pid().display().to_string(),
    ]);
    let mut command = Command::new(&runc.program);
    let pending = if spec.tty {
        let (console_path, console_dir) =
            sys::socket_path_for_others(&files.console_socket()).map_err(|error| setup_error("console socket path")(error.to_string()))?;
        let (bind_path, _bind_dir) =
            sys::socket_path(&files.console_socket()).map_err(|error| setup_error("console socket path")(error.to_string()))?;
        let listener = UnixListener::bind(&bind_path).map_err(|error| setup_error("binding the console socket")(error.to_string()))?;
        args.extend(["--console-socket".to_string(), console_path.display().to_string()]);
        command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        PendingIo::AwaitingConsole { listener, _directory: console_dir }
    } else {
        let (stdout_reader, stdout_writer) = pipe()?;
        let (stderr_reader, stderr_writer) = pipe()?;
        let stdin_writer = if spec.open_stdin {
            let (stdin_reader, stdin_writer) = pipe()?;
            command.stdin(Stdio::from(stdin_reader));
            Some(stdin_writer)
        } else {
            command.stdin(Stdio::null());
            None
        };
        command.stdout(Stdio::from(stdout_writer)).stderr(Stdio::from(stderr_writer));
        PendingIo::Ready(ContainerIo::Pipes { stdin: stdin_writer, stdout: stdout_reader, stderr: stderr_reader })
    };
    args.push(spec.id.clone());
    command.args(&args);
    let status = command.status().map_err(|error| setup_error("running runc create")(error.to_string()))?;
    // Dropping the command closes our copies of the container's pipe ends, so EOF means exit.
    drop(command);
    if !status.success() {
        let _ = runc.delete_force(&spec.id);
        return Err(setup_error("runc create")(runc_log_errors(files)));
    }
    match pending {
        PendingIo::Ready(io) => Ok(io),
        PendingIo::AwaitingConsole { listener, .. } => {
            let master = receive_console(&listener).inspect_err(|_| {
                let _ = runc.delete_force(&spec.id);
            })?;
            Ok(ContainerIo::Terminal { master })
        }
    }
}

/// The container's stdio while `runc create` runs: ready pipes, or a console socket that
/// runc will send the terminal's master through.
enum PendingIo {
    Ready(ContainerIo),
    AwaitingConsole {
        listener: UnixListener,
        /// Keeps `/proc/<shim>/fd/<n>/console.sock` valid for runc when the path is long.
        _directory: Option<File>,
    },
}

/// The error lines of runc's JSON log (why `runc create` failed).
fn runc_log_errors(files: &ContainerFiles) -> String {
    let text = std::fs::read_to_string(files.runc_log()).unwrap_or_default();
    let messages: Vec<String> = text
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|entry| entry["level"] == "error" || entry["level"] == "fatal")
        .filter_map(|entry| entry["msg"].as_str().map(str::to_string))
        .collect();
    if messages.is_empty() {
        format!("runc failed without an error message (see {})", files.runc_log().display())
    } else {
        messages.join("; ")
    }
}

fn receive_console(listener: &UnixListener) -> Result<File, ShimError> {
    listener.set_nonblocking(true).map_err(|error| setup_error("console socket")(error.to_string()))?;
    let deadline = Instant::now() + CONSOLE_HANDOVER_TIMEOUT;
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false).map_err(|error| setup_error("console socket")(error.to_string()))?;
                let fd = sys::receive_fd(&stream).map_err(|error| setup_error("receiving the terminal")(error.to_string()))?;
                return Ok(File::from(fd));
            }
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(error) => return Err(setup_error("waiting for the terminal")(error.to_string())),
        }
    }
}

fn wait_for_start_line() -> Result<(), ShimError> {
    let mut line = String::new();
    let stdin = std::io::stdin();
    let mut reader = BufReader::new(stdin.lock());
    match reader.read_line(&mut line) {
        Ok(_) if line.trim() == START_LINE => Ok(()),
        _ => Err(ShimError::Abandoned),
    }
}

/// Reaps children until the container's init exits; returns Docker's exit code for it.
fn reap_until_exit(init_pid: i32) -> i64 {
    loop {
        match sys::wait_any_child() {
            Ok(Some((pid, status))) if pid == init_pid => return sys::docker_exit_code(status),
            Ok(Some(_)) => continue,
            Ok(None) | Err(_) => {
                // The init is not our child (no subreaper adoption): poll until it is gone.
                // SAFETY: kill with signal 0 only checks for existence.
                while unsafe { libc::kill(init_pid, 0) } == 0 {
                    std::thread::sleep(Duration::from_millis(50));
                }
                return 255;
            }
        }
    }
}

fn spawn_pump(mut source: File, stream: OutputStream, log: Arc<LogWriter>, hub: Arc<Hub>, done: mpsc::Sender<()>) {
    std::thread::spawn(move || {
        let kind = match stream {
            OutputStream::Stdout => protocol::KIND_STDOUT,
            OutputStream::Stderr => protocol::KIND_STDERR,
        };
        let mut buffer = vec![0u8; 32 * 1024];
        loop {
            match source.read(&mut buffer) {
                Ok(0) => break,
                Ok(read) => {
                    hub.broadcast(kind, &buffer[..read]);
                    if let Err(error) = log.write(stream, &buffer[..read]) {
                        eprintln!("{error}");
                    }
                }
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
                // A pty master reads EIO once the last slave holder is gone: that is its EOF.
                Err(_) => break,
            }
        }
        let _ = done.send(());
    });
}

/// Attached clients, the container's stdin and its terminal.
struct Hub {
    clients: Mutex<Vec<(u64, UnixStream)>>,
    next_client_id: AtomicU64,
    stdin: Mutex<Option<File>>,
    terminal: Option<File>,
}

impl Hub {
    fn new(stdin: Option<File>, terminal: Option<File>) -> Hub {
        Hub { clients: Mutex::new(Vec::new()), next_client_id: AtomicU64::new(1), stdin: Mutex::new(stdin), terminal }
    }

    fn clients(&self) -> std::sync::MutexGuard<'_, Vec<(u64, UnixStream)>> {
        self.clients.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers a client and greets it under the same lock, so no output precedes HELLO.
    fn add(&self, stream: &UnixStream) -> Option<u64> {
        let writer = stream.try_clone().ok()?;
        writer.set_write_timeout(Some(CLIENT_WRITE_TIMEOUT)).ok()?;
        let id = self.next_client_id.fetch_add(1, Ordering::Relaxed);
        let mut clients = self.clients();
        protocol::write_frame(&mut &writer, protocol::KIND_HELLO, &[]).ok()?;
        clients.push((id, writer));
        Some(id)
    }

    fn remove(&self, id: u64) {
        self.clients().retain(|(client_id, _)| *client_id != id);
    }

    fn broadcast(&self, kind: u8, bytes: &[u8]) {
        let frame = protocol::encode_frame(kind, bytes);
        self.clients().retain(|(_, stream)| (&*stream).write_all(&frame).is_ok());
    }

    fn write_stdin(&self, bytes: &[u8]) {
        let mut stdin = self.stdin.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(file) = stdin.as_mut() {
            if file.write_all(bytes).is_err() {
                *stdin = None;
            }
        }
    }

    fn close_stdin(&self) {
        if self.terminal.is_none() {
            // Dropping our write end is how a pipe reader sees EOF; a terminal has no such thing.
            *self.stdin.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = None;
        }
    }

    fn resize(&self, width: u16, height: u16) {
        if let Some(terminal) = &self.terminal {
            let _ = sys::set_window_size(terminal.as_raw_fd(), width, height);
        }
    }

    fn finish(&self, exit_code: i64) {
        self.broadcast(protocol::KIND_EXIT, &exit_code.to_be_bytes());
        for (_, stream) in self.clients().drain(..) {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }
}

fn accept_clients(listener: UnixListener, hub: Arc<Hub>) {
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let hub = hub.clone();
        std::thread::spawn(move || {
            let Some(client_id) = hub.add(&stream) else { return };
            let mut reader = stream;
            loop {
                match protocol::read_frame(&mut reader) {
                    Ok(Some((protocol::KIND_STDIN, bytes))) => hub.write_stdin(&bytes),
                    Ok(Some((protocol::KIND_CLOSE_STDIN, _))) => hub.close_stdin(),
                    Ok(Some((protocol::KIND_RESIZE, payload))) => {
                        if let Some((width, height)) = protocol::decode_resize(&payload) {
                            hub.resize(width, height);
                        }
                    }
                    Ok(Some(_)) => continue,
                    Ok(None) | Err(ProtocolError::Io(_)) | Err(ProtocolError::FrameTooLarge { .. }) => break,
                }
            }
            hub.remove(client_id);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_round_trip_and_bad_ones_are_usage_errors() {
        let args = ShimArgs { state_dir: "/s".into(), id: "c1".into(), runc: "/usr/sbin/runc".into() };
        assert_eq!(ShimArgs::parse(&args.to_args()).unwrap(), args);
        assert!(ShimArgs::parse(&["--id".into()]).is_err());
        assert!(ShimArgs::parse(&["--bogus".into(), "x".into()]).is_err());
        assert!(ShimArgs::parse(&["--id".into(), "../x".into(), "--state-dir".into(), "/s".into(), "--runc".into(), "r".into()]).is_err());
    }

    #[test]
    fn reports_are_one_json_object_each() {
        let report = ShimReport::Created { pid: 7, published_ports: vec![] };
        let line = serde_json::to_string(&report).unwrap();
        assert!(line.contains("\"event\":\"created\""));
        assert_eq!(serde_json::from_str::<ShimReport>(&line).unwrap(), report);
    }
}
