//! What callers ask the runtime for: the container, network, exec and resource descriptions,
//! and what the runtime answers with (states, ports, processes, stats).

use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

/// Everything needed to run one container; written to the container's directory by `create`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRunSpec {
    pub id: String,
    /// An already unpacked root filesystem; the runtime never deletes it.
    pub rootfs: PathBuf,
    /// Entrypoint and command, already resolved.
    pub args: Vec<String>,
    /// `KEY=value` entries.
    pub env: Vec<String>,
    /// Empty means `/`.
    pub working_dir: String,
    /// `user`, `uid`, `user:group` or `uid:gid`, resolved against the rootfs; empty means root.
    pub user: String,
    pub hostname: String,
    pub tty: bool,
    pub open_stdin: bool,
    pub network_mode: NetworkMode,
    pub port_bindings: Vec<PortBinding>,
    pub mounts: Vec<Mount>,
    pub resources: Resources,
    /// Signal number `stop` sends first; 0 means SIGTERM.
    pub stop_signal: i32,
}

/// How a container is networked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NetworkMode {
    /// Its own network namespace with one interface per attached network (`eth0`, `eth1`, ...).
    Bridge(Vec<NetworkAttachment>),
    /// The host's network namespace.
    Host,
    /// Its own network namespace with only loopback.
    None,
}

/// One container's place on one network: the address the caller allocated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkAttachment {
    pub network_id: String,
    pub ip: Ipv4Addr,
    pub prefix_length: u8,
    pub gateway: Ipv4Addr,
}

/// Transport protocol of a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PortProtocol {
    Tcp,
    Udp,
}

impl PortProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            PortProtocol::Tcp => "tcp",
            PortProtocol::Udp => "udp",
        }
    }
}

/// `-p [host_ip:]host_port:container_port/protocol`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortBinding {
    pub container_port: u16,
    pub protocol: PortProtocol,
    /// `None` means every address (`0.0.0.0`).
    pub host_ip: Option<IpAddr>,
    /// 0 lets the kernel choose a free port; the chosen one is reported back.
    pub host_port: u16,
}

/// A published port as actually bound on the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedPort {
    pub container_port: u16,
    pub protocol: PortProtocol,
    pub host_ip: IpAddr,
    pub host_port: u16,
}

/// A bind mount of a host directory or file (volumes are directories the caller created).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    pub source: PathBuf,
    /// Absolute path inside the container.
    pub target: String,
    pub read_only: bool,
}

/// cgroup limits; 0 means unlimited / the default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    pub memory_bytes: i64,
    /// CPUs in billionths (`--cpus 1.5` is 1_500_000_000), turned into a CFS quota.
    pub nano_cpus: i64,
    /// Relative CPU weight (`--cpu-shares`).
    pub cpu_shares: i64,
}

/// A bridge network: one Linux bridge holding the gateway address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkSpec {
    pub id: String,
    /// `a.b.c.d/n`.
    pub subnet: String,
    pub gateway: Ipv4Addr,
    /// Internal networks get neither NAT nor a default route.
    pub internal: bool,
}

/// The live state of a container as the runtime sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RuntimeState {
    /// Created (bundle written) but never started, or its start was abandoned.
    Created,
    Running {
        pid: i32,
    },
    Paused {
        pid: i32,
    },
    /// The last run ended; `exit_code` follows Docker (128 + signal when killed).
    Exited {
        exit_code: i64,
        finished_at_unix_ms: i64,
    },
}

/// What `start` reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartedContainer {
    /// The container's init process, as seen from the host.
    pub pid: i32,
    pub published_ports: Vec<PublishedPort>,
}

/// `docker exec`: a further process inside a running container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecSpec {
    pub args: Vec<String>,
    /// Added to (and overriding) the container's environment.
    pub env: Vec<String>,
    /// Empty means the container's working directory.
    pub working_dir: String,
    /// Empty means the container's user.
    pub user: String,
    pub tty: bool,
    /// Give the caller a stdin writer; otherwise the process reads /dev/null.
    pub attach_stdin: bool,
}

/// One process of `docker top`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessInfo {
    pub pid: i32,
    pub ppid: i32,
    pub uid: u32,
    /// The user name from the container's /etc/passwd, or the uid.
    pub user: String,
    /// The one-letter state of /proc/<pid>/stat (R, S, D, Z, T...).
    pub state: String,
    pub cpu_time_ms: u64,
    pub rss_bytes: u64,
    pub command: String,
}

/// `docker stats` numbers from the container's cgroups.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceStats {
    pub memory_usage_bytes: u64,
    /// The cgroup limit (a huge number when unlimited, as Docker reports it).
    pub memory_limit_bytes: u64,
    pub cpu_total_ns: u64,
    pub cpu_per_core_ns: Vec<u64>,
    pub cpu_user_ns: u64,
    pub cpu_kernel_ns: u64,
    /// Host-wide CPU time since boot (all cores), the denominator Docker's CLI uses.
    pub system_cpu_ns: u64,
    pub online_cpus: u32,
    pub pids_current: u64,
}
