//! `LocalRuntime`: the operations berth calls, over runc, the shims and the host network.

use crate::attach::Attachment;
use crate::error::RuntimeError;
use crate::exec::{ExecProcess, TerminalStream};
use crate::layout::{self, ContainerFiles, ExitRecord, Layout, ShimRecord};
use crate::network::{self, NetworkTools};
use crate::oci;
use crate::runc::Runc;
use crate::shim::{ShimArgs, ShimReport, START_LINE};
use crate::spec::{
    ContainerRunSpec, ExecSpec, NetworkAttachment, NetworkMode, NetworkSpec, ProcessInfo, PublishedPort, ResourceStats, Resources,
    RuntimeState, StartedContainer,
};
use crate::sys;
use crate::tools;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a shim may take to create or start its container before `start` gives up.
pub const SHIM_REPORT_TIMEOUT: Duration = Duration::from_secs(60);
/// After SIGKILL, how long `stop` and `delete` wait for the exit to be recorded.
pub const KILL_WAIT_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest pause between checks while waiting for an exit.
pub const EXIT_POLL_INTERVAL_MAX: Duration = Duration::from_millis(50);
/// How long `exec` waits for runc to report the new process's pid.
pub const EXEC_START_TIMEOUT: Duration = Duration::from_secs(30);
/// Exit code recorded for a container whose shim died without recording one.
pub const LOST_EXIT_CODE: i64 = 255;
/// Highest signal number Linux knows (real-time signals included).
pub const MAX_SIGNAL: i32 = 64;

/// The local container runtime over one state directory.
pub struct LocalRuntime {
    layout: Layout,
    shim_program: PathBuf,
    runc: Runc,
    net: NetworkTools,
    swap_accounting: bool,
    container_locks: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    /// Serialises host network changes (bridges, rules), which are check-then-act.
    network_lock: Mutex<()>,
    exec_counter: AtomicU64,
}

impl LocalRuntime {
    /// Opens (creating) the state directory; checks root, runc, ip, iptables and namespaces.
    pub fn open(state_dir: &Path, shim_program: &Path) -> Result<LocalRuntime, RuntimeError> {
        let uid = sys::effective_uid();
        if uid != 0 {
            return Err(RuntimeError::NotRoot { uid });
        }
        let runc_program = tools::find_tool("runc")?;
        let net = NetworkTools::find()?;
        if !shim_program.is_file() {
            return Err(RuntimeError::invalid("shim program", format!("{} does not exist", shim_program.display())));
        }
        probe_namespaces(&runc_program)?;
        let layout = Layout { state_dir: absolute(state_dir)? };
        for dir in [layout.runc_root(), layout.containers_dir(), layout.networks_dir()] {
            std::fs::create_dir_all(&dir).map_err(RuntimeError::io(format!("creating {}", dir.display())))?;
        }
        // Logs, sockets and specs are root's business only (Docker keeps its state 0710/0700).
        std::fs::set_permissions(&layout.state_dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .map_err(RuntimeError::io(format!("restricting {}", layout.state_dir.display())))?;
        Ok(LocalRuntime {
            runc: Runc { program: runc_program, root: layout.runc_root() },
            layout,
            shim_program: absolute(shim_program)?,
            net,
            swap_accounting: Path::new("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes").exists(),
            container_locks: Mutex::new(HashMap::new()),
            network_lock: Mutex::new(()),
            exec_counter: AtomicU64::new(0),
        })
    }

    fn lock_container(&self, id: &str) -> Arc<Mutex<()>> {
        let mut locks = self.container_locks.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        locks.entry(id.to_string()).or_default().clone()
    }

    fn files(&self, id: &str) -> Result<ContainerFiles, RuntimeError> {
        layout::validate_id("container id", id)?;
        let files = self.layout.container(id);
        if !files.spec().exists() {
            return Err(RuntimeError::ContainerNotFound { id: id.to_string() });
        }
        Ok(files)
    }

    fn load_spec(&self, files: &ContainerFiles, id: &str) -> Result<ContainerRunSpec, RuntimeError> {
        layout::read_json(&files.spec())?.ok_or_else(|| RuntimeError::ContainerNotFound { id: id.to_string() })
    }

    /// Records a new container: its spec and OCI bundle. Does not start it.
    pub fn create(&self, spec: &ContainerRunSpec) -> Result<(), RuntimeError> {
        layout::validate_id("container id", &spec.id)?;
        validate_spec(spec)?;
        let lock = self.lock_container(&spec.id);
        let _guard = lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let files = self.layout.container(&spec.id);
        if files.dir.exists() {
            return Err(RuntimeError::ContainerExists { id: spec.id.clone() });
        }
        let result = (|| {
            for dir in [files.dir.clone(), files.bundle(), files.etc_dir()] {
                std::fs::create_dir_all(&dir).map_err(RuntimeError::io(format!("creating {}", dir.display())))?;
            }
            layout::write_json_atomic(&files.spec(), spec)?;
            self.write_bundle(spec, &files)
        })();
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&files.dir);
        }
        result
    }

    /// Writes config.json and the /etc files from the spec (again before every start).
    fn write_bundle(&self, spec: &ContainerRunSpec, files: &ContainerFiles) -> Result<(), RuntimeError> {
        let user = oci::resolve_user(&spec.rootfs, &spec.user)?;
        let netns = match spec.network_mode {
            NetworkMode::Bridge(_) => Some(network::netns_path(&spec.id)),
            NetworkMode::Host | NetworkMode::None => None,
        };
        let config = oci::config_json(spec, files, netns.as_deref(), user, self.swap_accounting);
        let bytes = serde_json::to_vec_pretty(&config)
            .map_err(|error| RuntimeError::Corrupt { context: "encoding config.json".into(), message: error.to_string() })?;
        layout::write_atomic(&files.config(), &bytes)?;
        let shares_host_network = matches!(spec.network_mode, NetworkMode::Host);
        let hostname = if shares_host_network {
            std::fs::read_to_string("/etc/hostname").unwrap_or_default().trim().to_string()
        } else {
            spec.hostname.clone()
        };
        write_in_place(&files.hostname(), format!("{hostname}\n").as_bytes())?;
        let host_resolv_conf = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        write_in_place(&files.resolv_conf(), oci::resolv_conf(&host_resolv_conf, shares_host_network).as_bytes())?;
        self.write_hosts(spec, files)
    }

    /// Rewrites /etc/hosts in place: the bind mount in a running container follows the inode.
    fn write_hosts(&self, spec: &ContainerRunSpec, files: &ContainerFiles) -> Result<(), RuntimeError> {
        let extra: Vec<(String, Vec<String>)> = layout::read_json(&files.extra_hosts())?.unwrap_or_default();
        let text = match &spec.network_mode {
            NetworkMode::Host => {
                let mut text = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
                text.push_str(&oci::hosts_file("", &[], &extra).lines().skip(6).map(|line| format!("{line}\n")).collect::<String>());
                text
            }
            NetworkMode::Bridge(attachments) => {
                let own: Vec<_> = attachments.iter().map(|attachment| attachment.ip).collect();
                oci::hosts_file(&spec.hostname, &own, &extra)
            }
            NetworkMode::None => oci::hosts_file(&spec.hostname, &[], &extra),
        };
        write_in_place(&files.hosts(), text.as_bytes())
    }

    /// Starts the container in a new shim. Starting a running container is an error; an exited
    /// one runs again (same rootfs, log appended).
    pub fn start(&self, id: &str) -> Result<StartedContainer, RuntimeError> {
        self.start_inner(id, false).map(|(started, _)| started)
    }

    /// Like `start`, but attaches before the process runs, so not a byte of output is missed.
    pub fn start_attached(&self, id: &str) -> Result<(StartedContainer, Attachment), RuntimeError> {
        let (started, attachment) = self.start_inner(id, true)?;
        let attachment = attachment.ok_or_else(|| RuntimeError::Shim { id: id.to_string(), message: "attach was lost".into() })?;
        Ok((started, attachment))
    }

    fn start_inner(&self, id: &str, attach: bool) -> Result<(StartedContainer, Option<Attachment>), RuntimeError> {
        let files = self.files(id)?;
        let lock = self.lock_container(id);
        let _guard = lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let spec = self.load_spec(&files, id)?;
        if !spec.rootfs.is_dir() {
            return Err(RuntimeError::RootfsMissing { path: spec.rootfs.clone() });
        }
        match self.state(id)? {
            RuntimeState::Running { .. } | RuntimeState::Paused { .. } => return Err(RuntimeError::AlreadyRunning { id: id.to_string() }),
            RuntimeState::Created | RuntimeState::Exited { .. } => {}
        }
        self.runc.delete_force(id)?;
        // The shim record goes first: `state` (which other threads call without
        // this lock) must never see the old, dead shim without its exit record,
        // or it would declare the container lost while the new run starts.
        layout::remove_if_exists(&files.shim_record())?;
        layout::remove_if_exists(&files.exit_record())?;
        self.setup_network(&spec)?;
        let result = self.write_bundle(&spec, &files).and_then(|()| self.run_shim(&spec, &files, attach));
        if result.is_err() {
            let _ = self.teardown_network(&spec);
        }
        result
    }

    fn run_shim(
        &self,
        spec: &ContainerRunSpec,
        files: &ContainerFiles,
        attach: bool,
    ) -> Result<(StartedContainer, Option<Attachment>), RuntimeError> {
        let shim_error = |message: String| RuntimeError::Shim { id: spec.id.clone(), message };
        let shim_log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(files.shim_log())
            .map_err(RuntimeError::io(format!("opening {}", files.shim_log().display())))?;
        let args = ShimArgs { state_dir: self.layout.state_dir.clone(), id: spec.id.clone(), runc: self.runc.program.clone() };
        let mut child = Command::new(&self.shim_program)
            .arg("runtime-shim")
            .args(args.to_args())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(shim_log))
            .spawn()
            .map_err(RuntimeError::io(format!("spawning the shim {}", self.shim_program.display())))?;
        let mut stdin = child.stdin.take().ok_or_else(|| shim_error("no stdin pipe".into()))?;
        let stdout = child.stdout.take().ok_or_else(|| shim_error("no stdout pipe".into()))?;
        // The shim forks into the background at once; this reaps the parent half.
        let status = child.wait().map_err(RuntimeError::io("waiting for the shim to detach"))?;
        if !status.success() {
            return Err(shim_error(format!("the shim exited with {status} (see {})", files.shim_log().display())));
        }
        let (sender, reports) = mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let next_report = || -> Result<ShimReport, RuntimeError> {
            let line = reports.recv_timeout(SHIM_REPORT_TIMEOUT).map_err(|error| match error {
                mpsc::RecvTimeoutError::Timeout => shim_error(format!("no answer within {SHIM_REPORT_TIMEOUT:?}")),
                mpsc::RecvTimeoutError::Disconnected => {
                    shim_error(format!("the shim ended without an answer (see {})", files.shim_log().display()))
                }
            })?;
            let report: ShimReport = serde_json::from_str(&line).map_err(|error| shim_error(format!("bad report {line:?}: {error}")))?;
            match report {
                ShimReport::Failed { message } => Err(classify_start_failure(&spec.id, message)),
                other => Ok(other),
            }
        };
        let (pid, published_ports) = match next_report()? {
            ShimReport::Created { pid, published_ports } => (pid, published_ports),
            other => return Err(shim_error(format!("expected created, got {other:?}"))),
        };
        let attachment = if attach { Some(Attachment::connect(&files.attach_socket(), &spec.id)?) } else { None };
        writeln!(stdin, "{START_LINE}").map_err(|error| shim_error(format!("telling the shim to start: {error}")))?;
        match next_report()? {
            ShimReport::Started => {}
            other => return Err(shim_error(format!("expected started, got {other:?}"))),
        }
        Ok((StartedContainer { pid, published_ports }, attachment))
    }

    fn setup_network(&self, spec: &ContainerRunSpec) -> Result<(), RuntimeError> {
        let NetworkMode::Bridge(attachments) = &spec.network_mode else {
            return Ok(());
        };
        let _guard = self.network_lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let result = (|| {
            self.net.create_netns(&spec.id)?;
            let mut default_route_set = false;
            for (index, attachment) in attachments.iter().enumerate() {
                let network = self.network(&attachment.network_id)?;
                self.net.attach(&spec.id, attachment, &format!("eth{index}"))?;
                if !default_route_set && !network.internal {
                    self.net.set_default_route(&spec.id, attachment.gateway)?;
                    default_route_set = true;
                }
            }
            Ok(())
        })();
        if result.is_err() {
            let _ = self.teardown_network_locked(spec);
        }
        result
    }

    fn teardown_network(&self, spec: &ContainerRunSpec) -> Result<(), RuntimeError> {
        let _guard = self.network_lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        self.teardown_network_locked(spec)
    }

    fn teardown_network_locked(&self, spec: &ContainerRunSpec) -> Result<(), RuntimeError> {
        if let NetworkMode::Bridge(attachments) = &spec.network_mode {
            for attachment in attachments {
                self.net.detach(&spec.id, &attachment.network_id)?;
            }
        }
        self.net.delete_netns(&spec.id)
    }

    fn network(&self, network_id: &str) -> Result<NetworkSpec, RuntimeError> {
        layout::validate_id("network id", network_id)?;
        layout::read_json(&self.layout.network_file(network_id))?
            .ok_or_else(|| RuntimeError::NetworkNotFound { id: network_id.to_string() })
    }

    /// The container's live state. A container whose shim died without recording an exit is
    /// reported (and from then on recorded) as exited with code 255.
    pub fn state(&self, id: &str) -> Result<RuntimeState, RuntimeError> {
        let files = self.files(id)?;
        if let Some(exit) = layout::read_json::<ExitRecord>(&files.exit_record())? {
            return Ok(exited(&exit));
        }
        let Some(shim) = layout::read_json::<ShimRecord>(&files.shim_record())? else {
            return Ok(RuntimeState::Created);
        };
        if !sys::process_alive(shim.shim_pid, shim.shim_start_ticks) {
            // The shim may have finished between our two reads.
            if let Some(exit) = layout::read_json::<ExitRecord>(&files.exit_record())? {
                return Ok(exited(&exit));
            }
            return self.record_lost_container(id, &files);
        }
        match self.runc.state(id)? {
            Some(state) if state.status == "paused" => Ok(RuntimeState::Paused { pid: shim.pid }),
            Some(state) if state.status == "created" => Ok(RuntimeState::Created),
            _ => Ok(RuntimeState::Running { pid: shim.pid }),
        }
    }

    fn record_lost_container(&self, id: &str, files: &ContainerFiles) -> Result<RuntimeState, RuntimeError> {
        let _ = self.runc.delete_force(id);
        let exit = ExitRecord { exit_code: LOST_EXIT_CODE, finished_at_unix_ms: layout::now_unix_ms() };
        layout::write_json_atomic(&files.exit_record(), &exit)?;
        let _ = layout::remove_if_exists(&files.attach_socket());
        Ok(exited(&exit))
    }

    /// The host ports of the current run's published ports (empty when not running).
    pub fn published_ports(&self, id: &str) -> Result<Vec<PublishedPort>, RuntimeError> {
        let files = self.files(id)?;
        match self.state(id)? {
            RuntimeState::Running { .. } | RuntimeState::Paused { .. } => {
                Ok(layout::read_json::<ShimRecord>(&files.shim_record())?.map(|record| record.published_ports).unwrap_or_default())
            }
            RuntimeState::Created | RuntimeState::Exited { .. } => Ok(Vec::new()),
        }
    }

    /// Blocks until the current run exits (`Some(exit code)`), or `None` after `timeout`.
    /// An already exited container answers at once; one never started is NotRunning.
    pub fn wait_exit(&self, id: &str, timeout: Option<Duration>) -> Result<Option<i64>, RuntimeError> {
        let files = self.files(id)?;
        let deadline = timeout.map(|timeout| Instant::now() + timeout);
        let mut interval = Duration::from_millis(2);
        loop {
            if let Some(exit) = layout::read_json::<ExitRecord>(&files.exit_record())? {
                return Ok(Some(exit.exit_code));
            }
            match layout::read_json::<ShimRecord>(&files.shim_record())? {
                None => return Err(RuntimeError::NotRunning { id: id.to_string() }),
                Some(shim) if !sys::process_alive(shim.shim_pid, shim.shim_start_ticks) => {
                    if let RuntimeState::Exited { exit_code, .. } = self.state(id)? {
                        return Ok(Some(exit_code));
                    }
                }
                Some(_) => {}
            }
            if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                return Ok(None);
            }
            let sleep = deadline.map_or(interval, |deadline| interval.min(deadline.saturating_duration_since(Instant::now())));
            std::thread::sleep(sleep);
            interval = (interval * 2).min(EXIT_POLL_INTERVAL_MAX);
        }
    }

    fn require_live(&self, id: &str) -> Result<RuntimeState, RuntimeError> {
        match self.state(id)? {
            state @ (RuntimeState::Running { .. } | RuntimeState::Paused { .. }) => Ok(state),
            RuntimeState::Created | RuntimeState::Exited { .. } => Err(RuntimeError::NotRunning { id: id.to_string() }),
        }
    }

    /// Sends a signal (by number) to the container's init process.
    pub fn kill(&self, id: &str, signal: i32) -> Result<(), RuntimeError> {
        validate_signal(signal)?;
        self.require_live(id)?;
        self.runc.kill(id, signal)
    }

    /// Sends the stop signal (0 = the container's, else SIGTERM), waits `timeout`, then SIGKILLs.
    /// Returns the exit code; an already exited container returns its recorded one.
    pub fn stop(&self, id: &str, signal: i32, timeout: Duration) -> Result<i64, RuntimeError> {
        let files = self.files(id)?;
        let spec = self.load_spec(&files, id)?;
        let signal = match (signal, spec.stop_signal) {
            (0, 0) => libc::SIGTERM,
            (0, configured) => configured,
            (given, _) => given,
        };
        validate_signal(signal)?;
        let paused = match self.state(id)? {
            RuntimeState::Exited { exit_code, .. } => return Ok(exit_code),
            RuntimeState::Created => return Err(RuntimeError::NotRunning { id: id.to_string() }),
            RuntimeState::Paused { .. } => true,
            RuntimeState::Running { .. } => false,
        };
        // The container may exit on its own meanwhile; waiting below tells the outcome.
        let _ = self.runc.kill(id, signal);
        if paused {
            // A frozen process cannot act on its signal until it thaws.
            let _ = self.runc.call("resume", &[id]);
        }
        if let Some(code) = self.wait_exit(id, Some(timeout))? {
            return Ok(code);
        }
        let _ = self.runc.kill(id, libc::SIGKILL);
        self.wait_exit(id, Some(KILL_WAIT_TIMEOUT))?.ok_or_else(|| RuntimeError::Runc {
            action: "kill".into(),
            message: format!("container {id} survived SIGKILL for {KILL_WAIT_TIMEOUT:?}"),
        })
    }

    /// Freezes every process of the container (cgroup freezer).
    pub fn pause(&self, id: &str) -> Result<(), RuntimeError> {
        match self.require_live(id)? {
            RuntimeState::Paused { .. } => Err(RuntimeError::Paused { id: id.to_string() }),
            _ => self.runc.call("pause", &[id]).map(drop),
        }
    }

    pub fn unpause(&self, id: &str) -> Result<(), RuntimeError> {
        match self.require_live(id)? {
            RuntimeState::Paused { .. } => self.runc.call("resume", &[id]).map(drop),
            _ => Err(RuntimeError::invalid("unpause", format!("container {id} is not paused"))),
        }
    }

    /// Changes limits (`docker update`): fields left at 0 stay as they are. Applies to the
    /// running container and to later starts.
    pub fn update_resources(&self, id: &str, resources: &Resources) -> Result<(), RuntimeError> {
        let files = self.files(id)?;
        let lock = self.lock_container(id);
        let _guard = lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut spec = self.load_spec(&files, id)?;
        if matches!(self.state(id)?, RuntimeState::Running { .. } | RuntimeState::Paused { .. }) {
            let mut args: Vec<String> = Vec::new();
            if resources.memory_bytes > 0 {
                args.extend(["--memory".into(), resources.memory_bytes.to_string()]);
                if self.swap_accounting {
                    args.extend(["--memory-swap".into(), resources.memory_bytes.saturating_mul(2).to_string()]);
                }
            }
            if resources.nano_cpus > 0 {
                args.extend(["--cpu-period".into(), oci::CPU_PERIOD_US.to_string()]);
                args.extend(["--cpu-quota".into(), oci::cpu_quota_us(resources.nano_cpus).to_string()]);
            }
            if resources.cpu_shares > 0 {
                args.extend(["--cpu-share".into(), resources.cpu_shares.to_string()]);
            }
            if !args.is_empty() {
                args.push(id.to_string());
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                self.runc.call("update", &args)?;
            }
        }
        if resources.memory_bytes > 0 {
            spec.resources.memory_bytes = resources.memory_bytes;
        }
        if resources.nano_cpus > 0 {
            spec.resources.nano_cpus = resources.nano_cpus;
        }
        if resources.cpu_shares > 0 {
            spec.resources.cpu_shares = resources.cpu_shares;
        }
        layout::write_json_atomic(&files.spec(), &spec)
    }

    /// Runs a further process in the running container; the caller takes its streams.
    pub fn exec(&self, id: &str, exec: &ExecSpec) -> Result<ExecProcess, RuntimeError> {
        let files = self.files(id)?;
        if exec.args.is_empty() {
            return Err(RuntimeError::invalid("exec", "no command given"));
        }
        if let RuntimeState::Paused { .. } = self.require_live(id)? {
            return Err(RuntimeError::Paused { id: id.to_string() });
        }
        let spec = self.load_spec(&files, id)?;
        let user = oci::resolve_user(&spec.rootfs, if exec.user.is_empty() { &spec.user } else { &exec.user })?;
        let mut env = oci::merge_env(&oci::container_env(&spec), &exec.env);
        if exec.tty && !env.iter().any(|entry| entry.starts_with("TERM=")) {
            env.push("TERM=xterm".to_string());
        }
        let cwd = if exec.working_dir.is_empty() { &spec.working_dir } else { &exec.working_dir };
        let process = oci::process_json(&exec.args, &env, cwd, user, exec.tty);
        let serial = self.exec_counter.fetch_add(1, Ordering::Relaxed);
        let stem = format!("exec-{}-{serial}", std::process::id());
        let process_file = files.dir.join(format!("{stem}.json"));
        let pid_file = files.dir.join(format!("{stem}.pid"));
        let runc_log = files.dir.join(format!("{stem}.log"));
        let bytes = serde_json::to_vec(&process)
            .map_err(|error| RuntimeError::Corrupt { context: "encoding process.json".into(), message: error.to_string() })?;
        std::fs::write(&process_file, bytes).map_err(RuntimeError::io(format!("writing {}", process_file.display())))?;
        let mut command = Command::new(&self.runc.program);
        command
            .args(self.runc.base_args())
            .arg("--log")
            .arg(&runc_log)
            .args(["--log-format", "json", "exec", "--process"])
            .arg(&process_file)
            .arg("--pid-file")
            .arg(&pid_file);
        let mut terminal_parts = None;
        if exec.tty {
            // runc copies between its own terminal and the container's: give it one of ours.
            let (master, slave) = sys::open_pty()?;
            let slave_for = |slave: &File| slave.try_clone().map(Stdio::from).map_err(RuntimeError::io("cloning the terminal"));
            command.stdin(slave_for(&slave)?).stdout(slave_for(&slave)?).stderr(Stdio::from(slave));
            command.arg("--tty");
            terminal_parts = Some(master);
        } else {
            command.stdin(if exec.attach_stdin { Stdio::piped() } else { Stdio::null() }).stdout(Stdio::piped()).stderr(Stdio::piped());
        }
        command.arg(id);
        // Its own process group: a terminal's signals (and berth's) are not the exec's.
        command.process_group(0);
        let spawned = command.spawn();
        drop(command);
        let mut child = spawned.map_err(RuntimeError::io("spawning runc exec"))?;
        let mut process = ExecProcess {
            pid: 0,
            stdin: child.stdin.take(),
            stdout: child.stdout.take(),
            stderr: child.stderr.take(),
            terminal_control: terminal_parts.as_ref().and_then(|master| master.try_clone().ok()),
            terminal: terminal_parts.map(TerminalStream::new),
            child: Some(child),
            exit_code: None,
            leftover_files: vec![process_file, pid_file.clone(), runc_log.clone()],
            runc_log,
        };
        let deadline = Instant::now() + EXEC_START_TIMEOUT;
        loop {
            if let Some(pid) = std::fs::read_to_string(&pid_file).ok().and_then(|text| text.trim().parse::<i32>().ok()) {
                process.pid = pid;
                break;
            }
            if process.try_wait()?.is_some() || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(process)
    }

    /// Connects to the running container's stdio: live output from now on, stdin, resize.
    pub fn attach(&self, id: &str) -> Result<Attachment, RuntimeError> {
        let files = self.files(id)?;
        self.require_live(id)?;
        Attachment::connect(&files.attach_socket(), id)
    }

    /// The json-file log: one `{"log","stream","time"}` object per line, across all runs.
    pub fn log_path(&self, id: &str) -> PathBuf {
        self.layout.container(id).log()
    }

    /// The container's processes (`docker top`).
    pub fn top(&self, id: &str) -> Result<Vec<ProcessInfo>, RuntimeError> {
        let files = self.files(id)?;
        self.require_live(id)?;
        let spec = self.load_spec(&files, id)?;
        let passwd = std::fs::read_to_string(spec.rootfs.join("etc/passwd")).unwrap_or_default();
        let pids = self.runc.pids(id)?;
        Ok(pids.into_iter().filter_map(|pid| process_info(pid, &passwd)).collect())
    }

    /// cgroup statistics (`docker stats`).
    pub fn stats(&self, id: &str) -> Result<ResourceStats, RuntimeError> {
        self.files(id)?;
        self.require_live(id)?;
        let events = self.runc.stats(id)?;
        let data = &events["data"];
        let number = |value: &serde_json::Value| value.as_u64().unwrap_or(0);
        let per_core: Vec<u64> =
            data["cpu"]["usage"]["percpu"].as_array().map(|cores| cores.iter().map(number).collect()).unwrap_or_default();
        // SAFETY: sysconf has no memory preconditions.
        let online_cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as u32;
        Ok(ResourceStats {
            memory_usage_bytes: number(&data["memory"]["usage"]["usage"]),
            memory_limit_bytes: number(&data["memory"]["usage"]["limit"]),
            cpu_total_ns: number(&data["cpu"]["usage"]["total"]),
            cpu_user_ns: number(&data["cpu"]["usage"]["user"]),
            cpu_kernel_ns: number(&data["cpu"]["usage"]["kernel"]),
            cpu_per_core_ns: per_core,
            system_cpu_ns: system_cpu_ns(),
            online_cpus,
            pids_current: number(&data["pids"]["current"]),
        })
    }

    /// Kills the container if needed and removes everything of it: runc state, cgroups,
    /// network namespace, veths and its directory (not the caller's rootfs). Idempotent.
    pub fn delete(&self, id: &str) -> Result<(), RuntimeError> {
        layout::validate_id("container id", id)?;
        let lock = self.lock_container(id);
        let _guard = lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let files = self.layout.container(id);
        if !files.dir.exists() {
            self.runc.delete_force(id)?;
            let _ = self.net.delete_netns(id);
            return Ok(());
        }
        let spec: Option<ContainerRunSpec> = layout::read_json(&files.spec()).ok().flatten();
        if let Some(shim) = layout::read_json::<ShimRecord>(&files.shim_record()).ok().flatten() {
            if sys::process_alive(shim.shim_pid, shim.shim_start_ticks) && !files.exit_record().exists() {
                let _ = self.runc.call("resume", &[id]);
                let _ = self.runc.kill(id, libc::SIGKILL);
                if self.wait_exit(id, Some(KILL_WAIT_TIMEOUT)).ok().flatten().is_none() {
                    let _ = sys::send_signal(shim.shim_pid, libc::SIGKILL);
                }
            }
        }
        self.runc.delete_force(id)?;
        match &spec {
            Some(spec) => self.teardown_network(spec)?,
            None => self.net.delete_netns(id)?,
        }
        std::fs::remove_dir_all(&files.dir).map_err(RuntimeError::io(format!("removing {}", files.dir.display())))?;
        self.container_locks.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(id);
        Ok(())
    }

    /// Every container in the state directory with its live state (how berth finds its
    /// containers again after a restart).
    pub fn list(&self) -> Result<Vec<(String, RuntimeState)>, RuntimeError> {
        let dir = self.layout.containers_dir();
        let entries = std::fs::read_dir(&dir).map_err(RuntimeError::io(format!("reading {}", dir.display())))?;
        let mut containers = Vec::new();
        for entry in entries {
            let entry = entry.map_err(RuntimeError::io(format!("reading {}", dir.display())))?;
            let Some(id) = entry.file_name().to_str().map(str::to_string) else { continue };
            if layout::validate_id("container id", &id).is_err() || !entry.path().join("spec.json").exists() {
                continue;
            }
            match self.state(&id) {
                Ok(state) => containers.push((id, state)),
                // Deleted while we listed.
                Err(RuntimeError::ContainerNotFound { .. }) => continue,
                Err(error) => return Err(error),
            }
        }
        containers.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(containers)
    }

    /// Creates the network's bridge, gateway address and NAT rules; idempotent.
    pub fn ensure_network(&self, network: &NetworkSpec) -> Result<(), RuntimeError> {
        layout::validate_id("network id", &network.id)?;
        let _guard = self.network_lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        self.net.ensure_bridge(network)?;
        layout::write_json_atomic(&self.layout.network_file(&network.id), network)
    }

    /// Removes the network's bridge and rules; idempotent.
    pub fn remove_network(&self, id: &str) -> Result<(), RuntimeError> {
        layout::validate_id("network id", id)?;
        let _guard = self.network_lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        self.net.remove_bridge(id)?;
        layout::remove_if_exists(&self.layout.network_file(id))
    }

    /// Connects the container to another network (live when running; kept for restarts).
    pub fn connect(&self, id: &str, attachment: &NetworkAttachment) -> Result<(), RuntimeError> {
        let files = self.files(id)?;
        let lock = self.lock_container(id);
        let _guard = lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut spec = self.load_spec(&files, id)?;
        let network = self.network(&attachment.network_id)?;
        let NetworkMode::Bridge(attachments) = &mut spec.network_mode else {
            return Err(RuntimeError::invalid("network connect", format!("container {id} uses the host's network or none")));
        };
        if attachments.iter().any(|existing| existing.network_id == attachment.network_id) {
            return Err(RuntimeError::invalid(
                "network connect",
                format!("container {id} is already on network {}", attachment.network_id),
            ));
        }
        attachments.push(attachment.clone());
        if matches!(self.state(id)?, RuntimeState::Running { .. } | RuntimeState::Paused { .. }) {
            let _net_guard = self.network_lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let interface = self.net.free_interface_name(id)?;
            self.net.attach(id, attachment, &interface)?;
            if !network.internal && !self.net.has_default_route(id)? {
                self.net.set_default_route(id, attachment.gateway)?;
            }
        }
        layout::write_json_atomic(&files.spec(), &spec)?;
        self.write_hosts(&spec, &files)
    }

    /// Disconnects the container from a network (live when running).
    pub fn disconnect(&self, id: &str, network_id: &str) -> Result<(), RuntimeError> {
        let files = self.files(id)?;
        let lock = self.lock_container(id);
        let _guard = lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut spec = self.load_spec(&files, id)?;
        let running = matches!(self.state(id)?, RuntimeState::Running { .. } | RuntimeState::Paused { .. });
        let NetworkMode::Bridge(attachments) = &mut spec.network_mode else {
            return Err(RuntimeError::invalid("network disconnect", format!("container {id} uses the host's network or none")));
        };
        let before = attachments.len();
        attachments.retain(|attachment| attachment.network_id != network_id);
        if attachments.len() == before {
            return Err(RuntimeError::invalid("network disconnect", format!("container {id} is not on network {network_id}")));
        }
        if running {
            let _net_guard = self.network_lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            self.net.detach(id, network_id)?;
            if !self.net.has_default_route(id)? {
                let next_gateway = attachments
                    .iter()
                    .find(|attachment| self.network(&attachment.network_id).is_ok_and(|network| !network.internal))
                    .map(|attachment| attachment.gateway);
                if let Some(gateway) = next_gateway {
                    self.net.set_default_route(id, gateway)?;
                }
            }
        }
        layout::write_json_atomic(&files.spec(), &spec)?;
        self.write_hosts(&spec, &files)
    }

    /// Sets the peers' names in the container's /etc/hosts (live, and kept for restarts).
    pub fn update_hosts(&self, id: &str, entries: &[(String, Vec<String>)]) -> Result<(), RuntimeError> {
        let files = self.files(id)?;
        let spec = self.load_spec(&files, id)?;
        layout::write_json_atomic(&files.extra_hosts(), &entries)?;
        self.write_hosts(&spec, &files)
    }
}

fn exited(exit: &ExitRecord) -> RuntimeState {
    RuntimeState::Exited { exit_code: exit.exit_code, finished_at_unix_ms: exit.finished_at_unix_ms }
}

fn absolute(path: &Path) -> Result<PathBuf, RuntimeError> {
    if path.is_absolute() {
        return Ok(path.to_path_buf());
    }
    let current = std::env::current_dir().map_err(RuntimeError::io("reading the current directory"))?;
    Ok(current.join(path))
}

fn validate_signal(signal: i32) -> Result<(), RuntimeError> {
    if (1..=MAX_SIGNAL).contains(&signal) {
        Ok(())
    } else {
        Err(RuntimeError::invalid("signal", format!("{signal} is not between 1 and {MAX_SIGNAL}")))
    }
}

fn validate_spec(spec: &ContainerRunSpec) -> Result<(), RuntimeError> {
    if !spec.rootfs.is_dir() {
        return Err(RuntimeError::RootfsMissing { path: spec.rootfs.clone() });
    }
    if spec.args.is_empty() {
        return Err(RuntimeError::invalid("container command", "no entrypoint or command given"));
    }
    if spec.stop_signal != 0 {
        validate_signal(spec.stop_signal)?;
    }
    for mount in &spec.mounts {
        if !mount.source.exists() {
            return Err(RuntimeError::MountSourceMissing { path: mount.source.clone() });
        }
        if !mount.target.starts_with('/') {
            return Err(RuntimeError::invalid("mount target", format!("{:?} is not an absolute path", mount.target)));
        }
    }
    if let NetworkMode::Bridge(attachments) = &spec.network_mode {
        for attachment in attachments {
            layout::validate_id("network id", &attachment.network_id)?;
            if attachment.prefix_length > 32 {
                return Err(RuntimeError::invalid("network attachment", format!("prefix length {} exceeds 32", attachment.prefix_length)));
            }
        }
    }
    for entry in &spec.env {
        if entry.contains('\0') {
            return Err(RuntimeError::invalid("environment", "entries may not contain NUL"));
        }
    }
    Ok(())
}

/// Tries to create the namespaces a container needs in a throwaway child.
fn probe_namespaces(program: &Path) -> Result<(), RuntimeError> {
    let mut command = Command::new(program);
    command.arg("--version").stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    // SAFETY: the closure only calls unshare, which is async-signal-safe, between fork and exec.
    unsafe {
        command.pre_exec(|| {
            let flags = libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::CLONE_NEWNET | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC;
            if libc::unshare(flags) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    match command.status() {
        Ok(_) => Ok(()),
        Err(error) => Err(RuntimeError::NamespacesUnavailable { message: format!("unshare failed: {error}") }),
    }
}

/// Names a start failure by its cause where it is recognisable.
fn classify_start_failure(id: &str, message: String) -> RuntimeError {
    let lower = message.to_ascii_lowercase();
    if (lower.contains("namespace") || lower.contains("unshare") || lower.contains("clone")) && lower.contains("operation not permitted") {
        return RuntimeError::NamespacesUnavailable { message };
    }
    RuntimeError::Shim { id: id.to_string(), message }
}

/// Writes a file's content without replacing its inode (bind mounts keep pointing at it).
fn write_in_place(path: &Path, bytes: &[u8]) -> Result<(), RuntimeError> {
    let mut file = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(path)
        .map_err(RuntimeError::io(format!("opening {}", path.display())))?;
    file.write_all(bytes).map_err(RuntimeError::io(format!("writing {}", path.display())))
}

/// Host-wide CPU time (all cores) since boot from /proc/stat, in nanoseconds.
fn system_cpu_ns() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    // SAFETY: sysconf has no memory preconditions.
    let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let ticks: u64 = stat
        .lines()
        .next()
        .map(|line| line.split_whitespace().skip(1).take(7).filter_map(|field| field.parse::<u64>().ok()).sum())
        .unwrap_or(0);
    ticks.saturating_mul(1_000_000_000 / ticks_per_second)
}

/// One process's row for `top`, from /proc; `None` if it vanished meanwhile.
fn process_info(pid: i32, passwd: &str) -> Option<ProcessInfo> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields = sys::stat_fields_after_command(&stat);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let uid: u32 = status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|uid| uid.parse().ok())
        .unwrap_or(0);
    let user = passwd
        .lines()
        .map(|line| line.split(':').collect::<Vec<_>>())
        .find(|entry| entry.len() > 2 && entry[2].parse::<u32>().ok() == Some(uid))
        .map(|entry| entry[0].to_string())
        .unwrap_or_else(|| uid.to_string());
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let mut command =
        cmdline.split(|byte| *byte == 0).filter(|part| !part.is_empty()).map(String::from_utf8_lossy).collect::<Vec<_>>().join(" ");
    if command.is_empty() {
        let start = stat.find('(').map_or(0, |index| index + 1);
        let end = stat.rfind(')').unwrap_or(start);
        command = format!("[{}]", &stat[start..end.max(start)]);
    }
    // SAFETY: sysconf has no memory preconditions.
    let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let field = |index: usize| fields.get(index).and_then(|value| value.parse::<u64>().ok()).unwrap_or(0);
    // SAFETY: sysconf has no memory preconditions.
    let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    Some(ProcessInfo {
        pid,
        ppid: fields.get(1).and_then(|ppid| ppid.parse().ok()).unwrap_or(0),
        uid,
        user,
        state: fields.first().map(|state| state.to_string()).unwrap_or_default(),
        cpu_time_ms: (field(11) + field(12)) * 1000 / ticks_per_second,
        rss_bytes: field(21) * page_size,
        command,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_outside_linux_range_are_rejected() {
        assert!(validate_signal(9).is_ok());
        assert!(validate_signal(0).is_err());
        assert!(validate_signal(65).is_err());
    }

    #[test]
    fn this_process_has_a_top_row() {
        let info = process_info(std::process::id() as i32, "root:x:0:0::/:/bin/sh\n").unwrap();
        assert!(info.ppid > 0);
        assert!(!info.command.is_empty());
        assert!(system_cpu_ns() > 0);
    }

    #[test]
    fn namespace_permission_failures_are_named() {
        let error = classify_start_failure("c", "runc create: unshare: operation not permitted (namespace)".into());
        assert!(matches!(error, RuntimeError::NamespacesUnavailable { .. }));
        assert!(matches!(classify_start_failure("c", "other".into()), RuntimeError::Shim { .. }));
    }
}
