//! The ports the Docker API needs besides the command bus and the views: the
//! image store and the containers' live I/O (logs, attach, exec, copy). The
//! binary implements them with the local image store and runtime; a follower
//! serves without them.
//!
//! They are synchronous: handlers call them through `spawn_blocking`.

use std::io::{Read, Write};
use std::path::PathBuf;

/// An image's configuration, as the API needs it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImageDefaults {
    pub cmd: Vec<String>,
    pub entrypoint: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
    pub exposed_ports: Vec<String>,
    pub labels: std::collections::BTreeMap<String, String>,
    pub stop_signal: Option<String>,
    pub architecture: String,
    pub os: String,
    pub created: String,
    /// One entry per history step, oldest first.
    pub history: Vec<HistoryStep>,
    /// The full config document (for inspect).
    pub raw: serde_json::Value,
}

/// One step of an image's history (`docker history`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HistoryStep {
    pub created_by: String,
    pub created: String,
    pub size_bytes: u64,
    pub comment: String,
}

/// An image written to the store, not yet recorded in the log.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredImageInfo {
    pub id: String,
    pub layer_digests: Vec<String>,
    pub size_bytes: u64,
    pub repo_tags: Vec<String>,
}

pub trait ImagePort: Send + Sync {
    fn defaults(&self, image_id: &str) -> Result<ImageDefaults, String>;
    fn import(&self, tarball: &mut dyn Read, changes: &[String], message: &str) -> Result<StoredImageInfo, String>;
    fn load(&self, archive: &mut dyn Read) -> Result<Vec<StoredImageInfo>, String>;
    fn save(&self, images: &[(String, Vec<String>)], out: &mut dyn Write) -> Result<(), String>;
    fn remove(&self, image_id: &str) -> Result<(), String>;
}

/// Which output stream a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputStream {
    Stdout,
    Stderr,
}

/// One line (or chunk) of a container's log.
#[derive(Debug, Clone, PartialEq)]
pub struct LogEntry {
    pub stream: OutputStream,
    pub time_unix_ns: i128,
    pub bytes: Vec<u8>,
}

/// A process started by exec, with its streams.
pub struct ExecSession {
    pub stdin: Option<Box<dyn Write + Send>>,
    /// (stream, reader) pairs; one stdout stream when the exec has a TTY.
    pub outputs: Vec<(OutputStream, Box<dyn Read + Send>)>,
    pub waiter: Box<dyn FnOnce() -> Result<i64, String> + Send>,
    pub resizer: Option<Box<dyn Fn(u16, u16) -> Result<(), String> + Send + Sync>>,
    pub pid: u32,
}

/// What `docker top` and `docker stats` show.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProcessTable {
    pub titles: Vec<String>,
    pub processes: Vec<Vec<String>>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ContainerStats {
    pub memory_usage_bytes: u64,
    pub memory_limit_bytes: u64,
    pub cpu_total_ns: u64,
    pub system_cpu_ns: u64,
    pub online_cpus: u32,
    pub pids: u64,
}

/// A file-system change in a container, for `docker diff`: 0 modified, 1 added, 2 deleted.
#[derive(Debug, Clone, PartialEq)]
pub struct FileChange {
    pub path: String,
    pub kind: u8,
}

pub trait ContainerPort: Send + Sync {
    /// The container's log file entries from byte `offset`; returns the entries and the next offset.
    fn read_log(&self, id: &str, offset: u64) -> Result<(Vec<LogEntry>, u64), String>;
    /// The log's current end (so a follower of a new run starts there).
    fn log_end(&self, id: &str) -> u64;
    /// Writes to the container's stdin (when it was started with OpenStdin); None when no stdin is attached.
    fn stdin(&self, id: &str) -> Result<Option<Box<dyn Write + Send>>, String>;
    fn resize(&self, id: &str, width: u16, height: u16) -> Result<(), String>;
    fn exec(
        &self,
        id: &str,
        cmd: &[String],
        env: &[String],
        working_dir: &str,
        user: &str,
        tty: bool,
        stdin: bool,
    ) -> Result<ExecSession, String>;
    fn top(&self, id: &str, ps_args: &str) -> Result<ProcessTable, String>;
    fn stats(&self, id: &str) -> Result<ContainerStats, String>;
    fn update_resources(&self, id: &str, memory_bytes: i64, nano_cpus: i64, cpu_shares: i64) -> Result<(), String>;
    /// The container's root filesystem directory (for cp, export, diff); None before it is provisioned.
    fn rootfs(&self, id: &str) -> Option<PathBuf>;
    fn diff(&self, id: &str) -> Result<Vec<FileChange>, String>;
    fn export(&self, id: &str, out: &mut dyn Write) -> Result<(), String>;
    /// A tar of `path` in the container; the stat header value as Docker sends it.
    fn archive_get(&self, id: &str, path: &str, out: &mut dyn Write) -> Result<(), String>;
    fn archive_stat(&self, id: &str, path: &str) -> Result<serde_json::Value, String>;
    fn archive_put(&self, id: &str, path: &str, tar: &mut dyn Read) -> Result<(), String>;
    /// Host ports actually bound for the container's published ports: (container_port/proto, host_ip, host_port).
    fn published_ports(&self, id: &str) -> Vec<(String, String, u16)>;
    /// The container's main process id while it runs.
    fn pid(&self, id: &str) -> Option<u32>;
}
