//! The embedded default infrastructure: the local runtime (runc under a shim
//! per container) and the local image store, adapted to the ports the
//! reconciler (`Infrastructure`) and the Docker API (`ContainerPort`,
//! `ImagePort`) use.
//!
//! Layout under the data directory: `images/` (the store), `runtime/` (the
//! runtime's state), `containers/<id>/` (root filesystem, generation, VCH),
//! `volumes/<name>/_data`.

use berth_api::docker::ports::{
    ContainerPort, ContainerStats, ExecSession, FileChange, HistoryStep, ImageDefaults, ImagePort, LogEntry, OutputStream, ProcessTable,
    StoredImageInfo,
};
use berth_core::events::VchSpec;
use berth_core::infrastructure::{ContainerPlan, InfraError, Infrastructure, NetworkPlan, ObservedContainer, ObservedPower};
use berth_images::ImageStore;
use berth_runtime::{
    ContainerRunSpec, ExecSpec, LocalRuntime, Mount, NetworkAttachment, NetworkMode, NetworkSpec, PortBinding, PortProtocol, Resources,
    RuntimeError, RuntimeState,
};
use std::collections::BTreeSet;
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// How long a hard stop waits after SIGKILL.
const KILL_GRACE_S: u64 = 10;
/// How often, and how many times, an exit watcher checks that the runtime reports the exit.
const EXIT_SETTLE_POLL_MS: u64 = 5;
const EXIT_SETTLE_POLL_COUNT_MAX: usize = 400;
/// Image configs kept in memory, at most.
const IMAGE_DEFAULTS_CACHE_COUNT_MAX: usize = 1024;
/// Symlinks followed when resolving a path inside a container, at most.
const SYMLINK_HOP_COUNT_MAX: usize = 40;

/// Called when a container's process ends on its own.
pub type ExitListener = Arc<dyn Fn() + Send + Sync>;
/// The `/etc/hosts` entries (peers on the container's networks) a container should start with.
pub type HostsProvider = Arc<dyn Fn(&str) -> Vec<(String, Vec<String>)> + Send + Sync>;

pub struct LocalInfrastructure {
    runtime: Arc<LocalRuntime>,
    exit_listener: parking_lot::Mutex<Option<ExitListener>>,
    hosts_provider: parking_lot::Mutex<Option<HostsProvider>>,
    /// Containers created but never started: their sandbox (an unpacked root
    /// filesystem) is made on first use, so `docker create` costs a record,
    /// not a copy of the image. Not persisted: after a restart the reconciler
    /// provisions them again, which defers them again.
    deferred: parking_lot::Mutex<std::collections::HashMap<String, ContainerPlan>>,
    /// One sandbox is made at a time, so the reconciler and a `docker cp` never unpack into one directory together.
    materializing: parking_lot::Mutex<()>,
    image_defaults: parking_lot::Mutex<std::collections::HashMap<String, ImageDefaults>>,
    watched: Arc<parking_lot::Mutex<BTreeSet<String>>>,
    images: Arc<ImageStore>,
    containers_dir: PathBuf,
    volumes_dir: PathBuf,
}

fn infra_error(error: RuntimeError) -> InfraError {
    let text = error.to_string();
    match &error {
        RuntimeError::ContainerNotFound { .. } | RuntimeError::NetworkNotFound { .. } => InfraError::NotFound(text),
        // Retrying cannot help: the configuration or the image is wrong.
        RuntimeError::NotRoot { .. }
        | RuntimeError::NamespacesUnavailable { .. }
        | RuntimeError::ToolMissing { .. }
        | RuntimeError::RootfsMissing { .. }
        | RuntimeError::MountSourceMissing { .. }
        | RuntimeError::Invalid { .. } => InfraError::Permanent(text),
        // A process that cannot be executed is the container's own fault (Docker's 126/127).
        RuntimeError::Shim { message, .. }
            if message.contains("executable file not found")
                || message.contains("no such file or directory")
                || message.contains("permission denied") =>
        {
            InfraError::Permanent(text)
        }
        // Everything else (runc, ip, I/O, a busy shim) may pass: back off and retry.
        _ => InfraError::Transient(text),
    }
}

fn io_error(context: &str, error: std::io::Error) -> InfraError {
    InfraError::Transient(format!("{context}: {error}"))
}

/// Signal names (`SIGTERM`, `TERM`, `15`) to numbers.
pub fn signal_number(text: &str) -> Option<i32> {
    let upper = text.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    if let Ok(number) = name.parse::<i32>() {
        return (1..=64).contains(&number).then_some(number);
    }
    Some(match name {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "ILL" => libc::SIGILL,
        "TRAP" => libc::SIGTRAP,
        "ABRT" => libc::SIGABRT,
        "KILL" => libc::SIGKILL,
        "USR1" => libc::SIGUSR1,
        "SEGV" => libc::SIGSEGV,
        "USR2" => libc::SIGUSR2,
        "PIPE" => libc::SIGPIPE,
        "ALRM" => libc::SIGALRM,
        "TERM" => libc::SIGTERM,
        "CHLD" => libc::SIGCHLD,
        "CONT" => libc::SIGCONT,
        "STOP" => libc::SIGSTOP,
        "WINCH" => libc::SIGWINCH,
        _ => return None,
    })
}

/// Writes a small file durably (temp, fsync, rename).
fn write_durably(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let temporary = path.with_extension("tmp");
    let mut file = std::fs::File::create(&temporary)?;
    file.write_all(contents)?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)?;
    if let Some(parent) = path.parent() {
        std::fs::File::open(parent)?.sync_all()?;
    }
    Ok(())
}

impl LocalInfrastructure {
    pub fn open(data_dir: &Path, shim_program: &Path) -> Result<LocalInfrastructure, String> {
        let runtime = LocalRuntime::open(&data_dir.join("runtime"), shim_program).map_err(|e| e.to_string())?;
        let images = Arc::new(ImageStore::open(&data_dir.join("images")).map_err(|e| e.to_string())?);
        let containers_dir = data_dir.join("containers");
        let volumes_dir = data_dir.join("volumes");
        for dir in [&containers_dir, &volumes_dir] {
            std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        }
        Ok(LocalInfrastructure {
            runtime: Arc::new(runtime),
            exit_listener: parking_lot::Mutex::new(None),
            hosts_provider: parking_lot::Mutex::new(None),
            deferred: parking_lot::Mutex::new(std::collections::HashMap::new()),
            materializing: parking_lot::Mutex::new(()),
            image_defaults: parking_lot::Mutex::new(std::collections::HashMap::new()),
            watched: Arc::new(parking_lot::Mutex::new(BTreeSet::new())),
            images,
            containers_dir,
            volumes_dir,
        })
    }

    /// Registers who to tell when a container exits (the reconciler's wake-up).
    pub fn on_exit(&self, listener: ExitListener) {
        *self.exit_listener.lock() = Some(listener);
    }

    /// Registers where a starting container's peers come from, so that names
    /// resolve from its first instruction on.
    pub fn provide_hosts(&self, provider: HostsProvider) {
        *self.hosts_provider.lock() = Some(provider);
    }

    /// Watches a running container on a thread and tells the listener when it ends.
    fn watch_exit(&self, id: &str) {
        if !self.watched.lock().insert(id.to_string()) {
            return;
        }
        let runtime = self.runtime.clone();
        let watched = self.watched.clone();
        let listener = self.exit_listener.lock().clone();
        let id = id.to_string();
        let spawned = std::thread::Builder::new().name("berth-exit-watch".into()).spawn(move || {
            let waited = runtime.wait_exit(&id, None);
            tracing::debug!(container = %id, ?waited, "exit watcher woke");
            // Tell the reconciler only once the runtime reports the exit, or
            // its inventory would still say "running" and the exit would wait
            // for the next resync.
            for _ in 0..EXIT_SETTLE_POLL_COUNT_MAX {
                if !matches!(runtime.state(&id), Ok(RuntimeState::Running { .. }) | Ok(RuntimeState::Paused { .. })) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(EXIT_SETTLE_POLL_MS));
            }
            watched.lock().remove(&id);
            tracing::debug!(container = %id, state = ?runtime.state(&id), "exit watcher notifies");
            if let Some(listener) = listener {
                listener();
            }
        });
        if spawned.is_err() {
            tracing::warn!("cannot start an exit watcher; exits are seen at the next resync");
        }
    }

    fn container_dir(&self, id: &str) -> PathBuf {
        self.containers_dir.join(id)
    }

    fn rootfs_dir(&self, id: &str) -> PathBuf {
        self.container_dir(id).join("rootfs")
    }

    pub fn volume_dir(&self, name: &str) -> PathBuf {
        self.volumes_dir.join(name).join("_data")
    }

    /// Removes a volume's data (after the log says it is gone).
    pub fn remove_volume_data(&self, name: &str) -> std::io::Result<()> {
        match std::fs::remove_dir_all(self.volumes_dir.join(name)) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(error),
            _ => Ok(()),
        }
    }

    fn read_small(&self, id: &str, name: &str) -> Option<String> {
        std::fs::read_to_string(self.container_dir(id).join(name)).ok().map(|s| s.trim().to_string())
    }

    /// The networks a container is attached to, as last enacted.
    pub fn attached_networks(&self, id: &str) -> BTreeSet<String> {
        self.read_small(id, "networks").map(|text| text.lines().filter(|l| !l.is_empty()).map(String::from).collect()).unwrap_or_default()
    }

    fn record_attached_networks(&self, id: &str, networks: &BTreeSet<String>) -> Result<(), InfraError> {
        let text: String = networks.iter().map(|n| format!("{n}\n")).collect();
        write_durably(&self.container_dir(id).join("networks"), text.as_bytes()).map_err(|e| io_error("recording networks", e))
    }

    /// Connects a running container to one more network.
    pub fn connect(&self, id: &str, network: &berth_core::infrastructure::PlannedNetwork) -> Result<(), InfraError> {
        self.runtime.connect(id, &attachment(network)?).map_err(infra_error)?;
        let mut networks = self.attached_networks(id);
        networks.insert(network.network_id.clone());
        self.record_attached_networks(id, &networks)
    }

    pub fn disconnect(&self, id: &str, network_id: &str) -> Result<(), InfraError> {
        self.runtime.disconnect(id, network_id).map_err(infra_error)?;
        let mut networks = self.attached_networks(id);
        networks.remove(network_id);
        self.record_attached_networks(id, &networks)
    }

    pub fn update_hosts(&self, id: &str, entries: &[(String, Vec<String>)]) -> Result<(), InfraError> {
        self.runtime.update_hosts(id, entries).map_err(infra_error)
    }

    pub fn is_running(&self, id: &str) -> bool {
        matches!(self.runtime.state(id), Ok(RuntimeState::Running { .. }) | Ok(RuntimeState::Paused { .. }))
    }

    /// Resolves `path` inside the container's root filesystem, following
    /// symlinks as if the root were `/`, never leaving it.
    fn resolve(&self, id: &str, path: &str) -> Result<PathBuf, String> {
        self.materialize(id).map_err(|e| e.to_string())?;
        let root = self.rootfs_dir(id);
        if !root.exists() {
            return Err(format!("container {id} has no root filesystem yet"));
        }
        let mut resolved = root.clone();
        let mut pending: Vec<String> = path.split('/').filter(|c| !c.is_empty()).map(String::from).rev().collect();
        let mut hops = 0;
        while let Some(component) = pending.pop() {
            match component.as_str() {
                "." => {}
                ".." => {
                    if resolved != root {
                        resolved.pop();
                    }
                }
                name => {
                    let candidate = resolved.join(name);
                    match std::fs::symlink_metadata(&candidate) {
                        Ok(metadata) if metadata.file_type().is_symlink() && !pending.is_empty() => {
                            hops += 1;
                            if hops > SYMLINK_HOP_COUNT_MAX {
                                return Err(format!("too many symlinks in {path}"));
                            }
                            let target = std::fs::read_link(&candidate).map_err(|e| e.to_string())?;
                            let target = target.to_string_lossy().to_string();
                            if target.starts_with('/') {
                                resolved = root.clone();
                            }
                            pending.extend(target.split('/').filter(|c| !c.is_empty()).map(String::from).rev());
                        }
                        _ => resolved = candidate,
                    }
                }
            }
        }
        debug_assert!(resolved.starts_with(&root));
        Ok(resolved)
    }
}

fn attachment(network: &berth_core::infrastructure::PlannedNetwork) -> Result<NetworkAttachment, InfraError> {
    let ip: Ipv4Addr = network.ipv4_address.parse().map_err(|_| InfraError::Permanent(format!("bad address {}", network.ipv4_address)))?;
    let gateway: Ipv4Addr = network.gateway.parse().map_err(|_| InfraError::Permanent(format!("bad gateway {}", network.gateway)))?;
    Ok(NetworkAttachment { network_id: network.network_id.clone(), ip, prefix_length: network.prefix_length, gateway })
}

fn port_bindings(plan: &ContainerPlan) -> Result<Vec<PortBinding>, InfraError> {
    let mut bindings = Vec::new();
    for (port, hosts) in &plan.spec.host.port_bindings {
        let (number, protocol) = port.split_once('/').unwrap_or((port, "tcp"));
        let container_port: u16 = number.parse().map_err(|_| InfraError::Permanent(format!("bad port {port}")))?;
        let protocol = match protocol {
            "udp" => PortProtocol::Udp,
            _ => PortProtocol::Tcp,
        };
        for host in hosts {
            let host_ip: Option<IpAddr> = if host.host_ip.is_empty() { None } else { host.host_ip.parse().ok() };
            let host_port: u16 = if host.host_port.is_empty() {
                0
            } else {
                host.host_port.parse().map_err(|_| InfraError::Permanent(format!("bad host port {}", host.host_port)))?
            };
            bindings.push(PortBinding { container_port, protocol, host_ip, host_port });
        }
    }
    Ok(bindings)
}

impl Infrastructure for LocalInfrastructure {
    fn inventory(&self) -> Result<Vec<ObservedContainer>, InfraError> {
        let listed = self.runtime.list().map_err(infra_error)?;
        let deferred: Vec<ObservedContainer> = self
            .deferred
            .lock()
            .values()
            .filter(|plan| !listed.iter().any(|(id, _)| id == &plan.id))
            .map(|plan| ObservedContainer { id: plan.id.clone(), vch: plan.vch.clone(), generation: 0, power: ObservedPower::Created })
            .collect();
        Ok(deferred
            .into_iter()
            .chain(listed.into_iter().map(|(id, state)| {
                let generation = self.read_small(&id, "generation").and_then(|g| g.parse().ok()).unwrap_or(0);
                let vch = self.read_small(&id, "vch").unwrap_or_else(|| "default".into());
                if matches!(state, RuntimeState::Running { .. } | RuntimeState::Paused { .. }) {
                    self.watch_exit(&id);
                }
                let power = match state {
                    RuntimeState::Created => ObservedPower::Created,
                    RuntimeState::Running { .. } => ObservedPower::Running,
                    RuntimeState::Paused { .. } => ObservedPower::Paused,
                    RuntimeState::Exited { exit_code, .. } => {
                        if generation == 0 {
                            ObservedPower::Created
                        } else {
                            ObservedPower::Exited { exit_code }
                        }
                    }
                };
                ObservedContainer { id, vch, generation, power }
            }))
            .collect())
    }

    fn ensure_vch(&self, _name: &str, _spec: &VchSpec) -> Result<(), InfraError> {
        // The local VCH has no objects of its own: its containers live directly on this host.
        Ok(())
    }

    fn remove_vch(&self, _name: &str) -> Result<(), InfraError> {
        Ok(())
    }

    fn ensure_network(&self, network: &NetworkPlan) -> Result<(), InfraError> {
        if network.driver != "bridge" {
            return Ok(());
        }
        let gateway: Ipv4Addr = network.gateway.parse().map_err(|_| InfraError::Permanent(format!("bad gateway {}", network.gateway)))?;
        self.runtime
            .ensure_network(&NetworkSpec { id: network.id.clone(), subnet: network.subnet.clone(), gateway, internal: network.internal })
            .map_err(infra_error)
    }

    fn remove_network(&self, network_id: &str) -> Result<(), InfraError> {
        self.runtime.remove_network(network_id).map_err(infra_error)
    }

    fn provision(&self, plan: &ContainerPlan) -> Result<(), InfraError> {
        if self.runtime.state(&plan.id).is_ok() {
            return Ok(());
        }
        self.deferred.lock().insert(plan.id.clone(), plan.clone());
        Ok(())
    }

    fn power_on(&self, id: &str, generation: u64) -> Result<(), InfraError> {
        self.materialize(id)?;
        self.start_generation(id, generation)
    }

    fn power_off(&self, id: &str, signal: &str, timeout_s: i64) -> Result<(), InfraError> {
        self.power_off_inner(id, signal, timeout_s)
    }

    fn signal(&self, id: &str, signal: &str) -> Result<(), InfraError> {
        self.signal_inner(id, signal)
    }

    fn pause(&self, id: &str) -> Result<(), InfraError> {
        self.runtime.pause(id).map_err(infra_error)
    }

    fn unpause(&self, id: &str) -> Result<(), InfraError> {
        self.runtime.unpause(id).map_err(infra_error)
    }

    fn destroy(&self, id: &str) -> Result<(), InfraError> {
        self.deferred.lock().remove(id);
        self.destroy_inner(id)
    }
}

impl LocalInfrastructure {
    /// Makes a deferred container's sandbox: unpacks its root filesystem and
    /// writes its bundle. A no-op for one that already has it.
    pub fn materialize(&self, id: &str) -> Result<(), InfraError> {
        let _one_at_a_time = self.materializing.lock();
        let Some(plan) = self.deferred.lock().get(id).cloned() else { return Ok(()) };
        self.create_sandbox(&plan)?;
        self.deferred.lock().remove(id);
        Ok(())
    }

    fn create_sandbox(&self, plan: &ContainerPlan) -> Result<(), InfraError> {
        if self.runtime.state(&plan.id).is_ok() {
            return Ok(());
        }
        let dir = self.container_dir(&plan.id);
        std::fs::create_dir_all(&dir).map_err(|e| io_error("creating the container directory", e))?;
        let rootfs = self.rootfs_dir(&plan.id);
        if !rootfs.exists() {
            // Unpack beside, then rename: a crash never leaves a half-unpacked root filesystem in place.
            let partial = dir.join("rootfs.partial");
            let _ = std::fs::remove_dir_all(&partial);
            std::fs::create_dir_all(&partial).map_err(|e| io_error("creating the root filesystem", e))?;
            self.images
                .unpack_rootfs(&plan.image_id, &partial)
                .map_err(|e| InfraError::Permanent(format!("unpacking {}: {e}", plan.image_id)))?;
            std::fs::rename(&partial, &rootfs).map_err(|e| io_error("placing the root filesystem", e))?;
        }
        let mut mounts = Vec::new();
        for mount in &plan.spec.host.mounts {
            let source = self.volume_dir(&mount.volume);
            std::fs::create_dir_all(&source).map_err(|e| io_error("creating the volume", e))?;
            mounts.push(Mount { source, target: mount.target.clone(), read_only: mount.read_only });
        }
        let network_mode = match plan.spec.host.network_mode.as_str() {
            "host" => NetworkMode::Host,
            "none" => NetworkMode::None,
            _ => NetworkMode::Bridge(plan.networks.iter().map(attachment).collect::<Result<_, _>>()?),
        };
        let mut env = plan.spec.env.clone();
        if !env.iter().any(|e| e.starts_with("PATH=")) {
            env.insert(0, "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
        }
        if !env.iter().any(|e| e.starts_with("HOSTNAME=")) {
            env.insert(1.min(env.len()), format!("HOSTNAME={}", plan.spec.hostname));
        }
        let spec = ContainerRunSpec {
            id: plan.id.clone(),
            rootfs,
            args: plan.spec.entrypoint.iter().chain(plan.spec.cmd.iter()).cloned().collect(),
            env,
            working_dir: plan.spec.working_dir.clone(),
            user: plan.spec.user.clone(),
            hostname: plan.spec.hostname.clone(),
            tty: plan.spec.tty,
            open_stdin: plan.spec.open_stdin,
            network_mode,
            port_bindings: port_bindings(plan)?,
            mounts,
            resources: Resources {
                memory_bytes: plan.spec.host.memory_bytes,
                nano_cpus: plan.spec.host.nano_cpus,
                cpu_shares: plan.spec.host.cpu_shares,
            },
            stop_signal: plan.spec.stop_signal.as_deref().and_then(signal_number).unwrap_or(0),
        };
        write_durably(&dir.join("vch"), plan.vch.as_bytes()).map_err(|e| io_error("recording the VCH", e))?;
        write_durably(&dir.join("image"), plan.image_id.as_bytes()).map_err(|e| io_error("recording the image", e))?;
        self.record_attached_networks(&plan.id, &plan.networks.iter().map(|n| n.network_id.clone()).collect())?;
        self.runtime.create(&spec).map_err(infra_error)
    }

    fn start_generation(&self, id: &str, generation: u64) -> Result<(), InfraError> {
        if matches!(self.runtime.state(id), Ok(RuntimeState::Running { .. }) | Ok(RuntimeState::Paused { .. })) {
            return Ok(());
        }
        let provider = self.hosts_provider.lock().clone();
        if let Some(provider) = provider {
            let entries = provider(id);
            if !entries.is_empty() {
                self.runtime.update_hosts(id, &entries).map_err(infra_error)?;
            }
        }
        let path = self.container_dir(id).join("generation");
        let previous = self.read_small(id, "generation");
        write_durably(&path, generation.to_string().as_bytes()).map_err(|e| io_error("recording the generation", e))?;
        if let Err(error) = self.runtime.start(id) {
            // Put the generation back: this run never began.
            let _ = write_durably(&path, previous.unwrap_or_else(|| "0".into()).as_bytes());
            return Err(infra_error(error));
        }
        self.watch_exit(id);
        Ok(())
    }

    fn power_off_inner(&self, id: &str, signal: &str, timeout_s: i64) -> Result<(), InfraError> {
        let number = signal_number(signal).unwrap_or(0);
        let timeout = Duration::from_secs(timeout_s.max(0) as u64);
        match self.runtime.stop(id, number, timeout) {
            Ok(_) => Ok(()),
            Err(error) if !self.is_running(id) => {
                tracing::debug!(%error, "stop of a container that is not running");
                Ok(())
            }
            Err(error) => Err(infra_error(error)),
        }
    }

    fn signal_inner(&self, id: &str, signal: &str) -> Result<(), InfraError> {
        let number = signal_number(signal).ok_or_else(|| InfraError::Permanent(format!("unknown signal {signal}")))?;
        self.runtime.kill(id, number).map_err(infra_error)?;
        if number == libc::SIGKILL {
            let _ = self.runtime.wait_exit(id, Some(Duration::from_secs(KILL_GRACE_S)));
        }
        Ok(())
    }

    fn destroy_inner(&self, id: &str) -> Result<(), InfraError> {
        self.runtime.delete(id).map_err(infra_error)?;
        match std::fs::remove_dir_all(self.container_dir(id)) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(io_error("removing the container directory", error)),
            _ => Ok(()),
        }
    }
}

fn parse_log_time_ns(text: &str) -> i128 {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).map(|t| t.unix_timestamp_nanos()).unwrap_or(0)
}

/// Closes the container's stdin when dropped, as Docker does on the client's EOF.
struct StdinWriter(berth_runtime::AttachInput);

impl Write for StdinWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.write(bytes)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

impl Drop for StdinWriter {
    fn drop(&mut self) {
        let _ = self.0.close_stdin();
    }
}

impl ContainerPort for LocalInfrastructure {
    fn read_log(&self, id: &str, offset: u64) -> Result<(Vec<LogEntry>, u64), String> {
        let path = self.runtime.log_path(id);
        let mut file = match std::fs::File::open(&path) {
            Ok(file) => file,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), offset)),
            Err(error) => return Err(error.to_string()),
        };
        file.seek(SeekFrom::Start(offset)).map_err(|e| e.to_string())?;
        let mut text = Vec::new();
        file.read_to_end(&mut text).map_err(|e| e.to_string())?;
        // Only whole lines: the shim may be in the middle of writing the last one.
        let complete = text.iter().rposition(|b| *b == b'\n').map(|i| i + 1).unwrap_or(0);
        let mut entries = Vec::new();
        for line in text[..complete].split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let Ok(value) = serde_json::from_slice::<serde_json::Value>(line) else { continue };
            let stream = if value["stream"] == "stderr" { OutputStream::Stderr } else { OutputStream::Stdout };
            entries.push(LogEntry {
                stream,
                time_unix_ns: parse_log_time_ns(value["time"].as_str().unwrap_or_default()),
                bytes: value["log"].as_str().unwrap_or_default().as_bytes().to_vec(),
            });
        }
        Ok((entries, offset + complete as u64))
    }

    fn log_end(&self, id: &str) -> u64 {
        std::fs::metadata(self.runtime.log_path(id)).map(|m| m.len()).unwrap_or(0)
    }

    fn stdin(&self, id: &str) -> Result<Option<Box<dyn Write + Send>>, String> {
        let attachment = self.runtime.attach(id).map_err(|e| e.to_string())?;
        let (_output, input) = attachment.split();
        Ok(Some(Box::new(StdinWriter(input))))
    }

    fn resize(&self, id: &str, width: u16, height: u16) -> Result<(), String> {
        let mut attachment = self.runtime.attach(id).map_err(|e| e.to_string())?;
        attachment.resize(width, height).map_err(|e| e.to_string())
    }

    fn exec(
        &self,
        id: &str,
        cmd: &[String],
        env: &[String],
        working_dir: &str,
        user: &str,
        tty: bool,
        stdin: bool,
    ) -> Result<ExecSession, String> {
        let spec = ExecSpec {
            args: cmd.to_vec(),
            env: env.to_vec(),
            working_dir: working_dir.into(),
            user: user.into(),
            tty,
            attach_stdin: stdin,
        };
        let mut process = self.runtime.exec(id, &spec).map_err(|e| e.to_string())?;
        let pid = process.pid().max(0) as u32;
        let mut outputs: Vec<(OutputStream, Box<dyn Read + Send>)> = Vec::new();
        let mut stdin_writer: Option<Box<dyn Write + Send>> = None;
        if let Some(terminal) = process.take_terminal() {
            let writer = terminal.try_clone().map_err(|e| e.to_string())?;
            if stdin {
                stdin_writer = Some(Box::new(writer));
            }
            outputs.push((OutputStream::Stdout, Box::new(terminal)));
        } else {
            if let Some(out) = process.take_stdout() {
                outputs.push((OutputStream::Stdout, Box::new(out)));
            }
            if let Some(err) = process.take_stderr() {
                outputs.push((OutputStream::Stderr, Box::new(err)));
            }
            if let Some(input) = process.take_stdin() {
                stdin_writer = Some(Box::new(input));
            }
        }
        let process = Arc::new(parking_lot::Mutex::new(process));
        let for_resize = process.clone();
        let resizer: Option<Box<dyn Fn(u16, u16) -> Result<(), String> + Send + Sync>> = if tty {
            Some(Box::new(move |width, height| for_resize.lock().resize(width, height).map_err(|e| e.to_string())))
        } else {
            None
        };
        let waiter = Box::new(move || process.lock().wait().map_err(|e| e.to_string()));
        Ok(ExecSession { stdin: stdin_writer, outputs, waiter, resizer, pid })
    }

    fn top(&self, id: &str, _ps_args: &str) -> Result<ProcessTable, String> {
        let processes = self.runtime.top(id).map_err(|e| e.to_string())?;
        let titles = ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"].iter().map(|t| t.to_string()).collect();
        let rows = processes
            .into_iter()
            .map(|p| {
                let seconds = p.cpu_time_ms / 1000;
                vec![
                    p.user,
                    p.pid.to_string(),
                    p.ppid.to_string(),
                    "0".into(),
                    "-".into(),
                    "?".into(),
                    format!("{:02}:{:02}:{:02}", seconds / 3600, seconds / 60 % 60, seconds % 60),
                    p.command,
                ]
            })
            .collect();
        Ok(ProcessTable { titles, processes: rows })
    }

    fn stats(&self, id: &str) -> Result<ContainerStats, String> {
        let stats = self.runtime.stats(id).map_err(|e| e.to_string())?;
        Ok(ContainerStats {
            memory_usage_bytes: stats.memory_usage_bytes,
            memory_limit_bytes: stats.memory_limit_bytes,
            cpu_total_ns: stats.cpu_total_ns,
            system_cpu_ns: stats.system_cpu_ns,
            online_cpus: stats.online_cpus,
            pids: stats.pids_current,
        })
    }

    fn update_resources(&self, id: &str, memory_bytes: i64, nano_cpus: i64, cpu_shares: i64) -> Result<(), String> {
        self.runtime.update_resources(id, &Resources { memory_bytes, nano_cpus, cpu_shares }).map_err(|e| e.to_string())
    }

    fn rootfs(&self, id: &str) -> Option<PathBuf> {
        if let Err(error) = self.materialize(id) {
            tracing::warn!(container = %id, %error, "making the container's root filesystem failed");
        }
        let root = self.rootfs_dir(id);
        root.exists().then_some(root)
    }

    fn diff(&self, id: &str) -> Result<Vec<FileChange>, String> {
        let root = self.rootfs(id).ok_or_else(|| format!("container {id} has no root filesystem yet"))?;
        let image_id = self.read_small(id, "image").ok_or("the container's image is unknown")?;
        let pristine = tempfile::tempdir().map_err(|e| e.to_string())?;
        self.images.unpack_rootfs(&image_id, pristine.path()).map_err(|e| e.to_string())?;
        let mut changes = Vec::new();
        compare_trees(pristine.path(), &root, Path::new("/"), &mut changes).map_err(|e| e.to_string())?;
        changes.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(changes)
    }

    fn export(&self, id: &str, out: &mut dyn Write) -> Result<(), String> {
        let root = self.rootfs(id).ok_or_else(|| format!("container {id} has no root filesystem yet"))?;
        berth_images::tarfs::tar_directory(&root, out).map_err(|e| e.to_string())
    }

    fn archive_get(&self, id: &str, path: &str, out: &mut dyn Write) -> Result<(), String> {
        let resolved = self.resolve(id, path)?;
        let name = Path::new(path).file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| ".".into());
        berth_images::tarfs::tar_path(&resolved, &name, out).map_err(|e| e.to_string())
    }

    fn archive_stat(&self, id: &str, path: &str) -> Result<serde_json::Value, String> {
        use std::os::unix::fs::MetadataExt;
        let resolved = self.resolve(id, path)?;
        let metadata = std::fs::symlink_metadata(&resolved).map_err(|e| format!("No such file or directory: {e}"))?;
        // Go's os.FileMode: permission bits plus type bits in the high bits.
        let mut mode = metadata.mode() & 0o7777;
        if metadata.is_dir() {
            mode |= 1 << 31;
        }
        if metadata.file_type().is_symlink() {
            mode |= 1 << 27;
        }
        let link_target = if metadata.file_type().is_symlink() {
            std::fs::read_link(&resolved).map(|t| t.to_string_lossy().to_string()).unwrap_or_default()
        } else {
            String::new()
        };
        let mtime = time::OffsetDateTime::from_unix_timestamp(metadata.mtime())
            .ok()
            .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
            .unwrap_or_default();
        Ok(serde_json::json!({
            "name": Path::new(path).file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| "/".into()),
            "size": metadata.len(),
            "mode": mode,
            "mtime": mtime,
            "linkTarget": link_target,
        }))
    }

    fn archive_put(&self, id: &str, path: &str, tar: &mut dyn Read) -> Result<(), String> {
        let resolved = self.resolve(id, path)?;
        if !resolved.is_dir() {
            return Err(format!("No such file or directory: {path} is not a directory in the container"));
        }
        berth_images::tarfs::untar_into(tar, &resolved).map_err(|e| e.to_string())
    }

    fn published_ports(&self, id: &str) -> Vec<(String, String, u16)> {
        self.runtime
            .published_ports(id)
            .unwrap_or_default()
            .into_iter()
            .map(|p| {
                let protocol = match p.protocol {
                    PortProtocol::Tcp => "tcp",
                    PortProtocol::Udp => "udp",
                };
                (format!("{}/{protocol}", p.container_port), p.host_ip.to_string(), p.host_port)
            })
            .collect()
    }

    fn pid(&self, id: &str) -> Option<u32> {
        match self.runtime.state(id) {
            Ok(RuntimeState::Running { pid }) | Ok(RuntimeState::Paused { pid }) => Some(pid.max(0) as u32),
            _ => None,
        }
    }
}

/// `docker diff`: walks both trees; 0 modified, 1 added, 2 deleted.
fn compare_trees(pristine: &Path, current: &Path, relative: &Path, changes: &mut Vec<FileChange>) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let names = |dir: &Path| -> std::io::Result<BTreeSet<std::ffi::OsString>> {
        match std::fs::read_dir(dir) {
            Ok(entries) => entries.map(|e| e.map(|e| e.file_name())).collect(),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(BTreeSet::new()),
            Err(error) => Err(error),
        }
    };
    let before = names(pristine)?;
    let after = names(current)?;
    for name in before.union(&after) {
        let child = relative.join(name);
        let display = child.to_string_lossy().to_string();
        let old = std::fs::symlink_metadata(pristine.join(name)).ok();
        let new = std::fs::symlink_metadata(current.join(name)).ok();
        match (old, new) {
            (Some(_), None) => changes.push(FileChange { path: display, kind: 2 }),
            (None, Some(new)) => {
                changes.push(FileChange { path: display, kind: 1 });
                if new.is_dir() {
                    compare_trees(&pristine.join(name), &current.join(name), &child, changes)?;
                }
            }
            (Some(old), Some(new)) => {
                let changed = old.mode() != new.mode() || (!new.is_dir() && (old.size() != new.size() || old.mtime() != new.mtime()));
                if new.is_dir() && old.is_dir() {
                    let count = changes.len();
                    compare_trees(&pristine.join(name), &current.join(name), &child, changes)?;
                    if changes.len() > count || changed {
                        changes.insert(count, FileChange { path: display, kind: 0 });
                    }
                } else if changed {
                    changes.push(FileChange { path: display, kind: 0 });
                }
            }
            (None, None) => {}
        }
    }
    Ok(())
}

impl ImagePort for LocalInfrastructure {
    fn defaults(&self, image_id: &str) -> Result<ImageDefaults, String> {
        // An image's config never changes (its id is the config's digest): read it once.
        if let Some(cached) = self.image_defaults.lock().get(image_id) {
            return Ok(cached.clone());
        }
        let config = self.images.config(image_id).map_err(|e| e.to_string())?;
        let defaults = ImageDefaults {
            cmd: config.cmd.clone().unwrap_or_default(),
            entrypoint: config.entrypoint.clone().unwrap_or_default(),
            env: config.env.clone(),
            working_dir: config.working_dir.clone(),
            user: config.user.clone(),
            exposed_ports: config.exposed_ports.clone(),
            labels: config.labels.clone(),
            stop_signal: config.stop_signal.clone(),
            architecture: config.architecture.clone(),
            os: config.os.clone(),
            created: config.created.clone().unwrap_or_default(),
            history: config
                .history
                .iter()
                .map(|h| HistoryStep {
                    created_by: h.created_by.clone(),
                    created: h.created.clone().unwrap_or_default(),
                    size_bytes: h.size_bytes,
                    comment: h.comment.clone(),
                })
                .collect(),
            raw: config.raw.clone(),
        };
        let mut cache = self.image_defaults.lock();
        if cache.len() >= IMAGE_DEFAULTS_CACHE_COUNT_MAX {
            cache.clear();
        }
        cache.insert(image_id.to_string(), defaults.clone());
        Ok(defaults)
    }

    fn import(&self, tarball: &mut dyn Read, changes: &[String], message: &str) -> Result<StoredImageInfo, String> {
        let now_s = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
        let stored = self.images.import(tarball, changes, message, now_s).map_err(|e| e.to_string())?;
        Ok(StoredImageInfo { id: stored.id, layer_digests: stored.layer_digests, size_bytes: stored.size_bytes, repo_tags: Vec::new() })
    }

    fn load(&self, archive: &mut dyn Read) -> Result<Vec<StoredImageInfo>, String> {
        let loaded = self.images.load(archive).map_err(|e| e.to_string())?;
        Ok(loaded
            .into_iter()
            .map(|l| StoredImageInfo {
                id: l.image.id,
                layer_digests: l.image.layer_digests,
                size_bytes: l.image.size_bytes,
                repo_tags: l.repo_tags,
            })
            .collect())
    }

    fn save(&self, images: &[(String, Vec<String>)], out: &mut dyn Write) -> Result<(), String> {
        self.images.save(images, out).map_err(|e| e.to_string())
    }

    fn remove(&self, image_id: &str) -> Result<(), String> {
        self.image_defaults.lock().remove(image_id);
        self.images.remove(image_id).map_err(|e| e.to_string())
    }
}

/// The local image store is where a vSphere VCH's image disks come from.
impl berth_vsphere::infrastructure::ImageSource for LocalInfrastructure {
    fn write_rootfs_tar(&self, image_id: &str, out: &Path) -> Result<(), String> {
        let root = tempfile::tempdir().map_err(|e| e.to_string())?;
        self.images.unpack_rootfs(image_id, root.path()).map_err(|e| e.to_string())?;
        let file = std::fs::File::create(out).map_err(|e| format!("{}: {e}", out.display()))?;
        let mut writer = std::io::BufWriter::new(file);
        berth_images::tarfs::tar_directory(root.path(), &mut writer).map_err(|e| e.to_string())?;
        std::io::Write::flush(&mut writer).map_err(|e| e.to_string())
    }
}
