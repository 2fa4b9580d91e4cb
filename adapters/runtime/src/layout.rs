//! Where the runtime keeps things under its state directory, and the small records it writes.
//!
//! ```text
//! <state_dir>/runc/                      runc's --root
//! <state_dir>/networks/<id>.json         NetworkSpec of every ensured network
//! <state_dir>/containers/<id>/spec.json  the ContainerRunSpec
//!                            bundle/config.json
//!                            etc/{hosts,hostname,resolv.conf}   bind-mounted into the container
//!                            container.log   json-file log
//!                            shim.json       the current run's shim (pid, ports)
//!                            exit.json       the last run's exit (absent while running)
//!                            attach.sock     the shim's attach socket
//! ```

use crate::error::RuntimeError;
use crate::spec::PublishedPort;
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// Longest container or network id accepted: ids become file and namespace names.
pub const MAX_ID_LEN: usize = 128;

/// Checks an id can safely name files, network namespaces and runc containers.
pub(crate) fn validate_id(what: &'static str, id: &str) -> Result<(), RuntimeError> {
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Err(RuntimeError::invalid(what, format!("{id:?} must have 1 to {MAX_ID_LEN} characters")));
    }
    if id.starts_with('.') || id.starts_with('-') {
        return Err(RuntimeError::invalid(what, format!("{id:?} must not start with '.' or '-'")));
    }
    if !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.') {
        return Err(RuntimeError::invalid(what, format!("{id:?} may only contain letters, digits, '_', '-' and '.'")));
    }
    Ok(())
}

/// The state directory's layout.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    pub state_dir: PathBuf,
}

impl Layout {
    pub fn runc_root(&self) -> PathBuf {
        self.state_dir.join("runc")
    }
    pub fn containers_dir(&self) -> PathBuf {
        self.state_dir.join("containers")
    }
    pub fn networks_dir(&self) -> PathBuf {
        self.state_dir.join("networks")
    }
    pub fn network_file(&self, network_id: &str) -> PathBuf {
        self.networks_dir().join(format!("{network_id}.json"))
    }
    pub fn container(&self, id: &str) -> ContainerFiles {
        ContainerFiles { dir: self.containers_dir().join(id) }
    }
}

/// The files of one container.
#[derive(Debug, Clone)]
pub(crate) struct ContainerFiles {
    pub dir: PathBuf,
}

impl ContainerFiles {
    pub fn spec(&self) -> PathBuf {
        self.dir.join("spec.json")
    }
    pub fn bundle(&self) -> PathBuf {
        self.dir.join("bundle")
    }
    pub fn config(&self) -> PathBuf {
        self.bundle().join("config.json")
    }
    pub fn etc_dir(&self) -> PathBuf {
        self.dir.join("etc")
    }
    pub fn hosts(&self) -> PathBuf {
        self.etc_dir().join("hosts")
    }
    pub fn hostname(&self) -> PathBuf {
        self.etc_dir().join("hostname")
    }
    pub fn resolv_conf(&self) -> PathBuf {
        self.etc_dir().join("resolv.conf")
    }
    /// Peers' names the caller gave to `update_hosts`, kept so a restart rewrites them too.
    pub fn extra_hosts(&self) -> PathBuf {
        self.dir.join("extra-hosts.json")
    }
    pub fn log(&self) -> PathBuf {
        self.dir.join("container.log")
    }
    pub fn shim_record(&self) -> PathBuf {
        self.dir.join("shim.json")
    }
    pub fn exit_record(&self) -> PathBuf {
        self.dir.join("exit.json")
    }
    pub fn attach_socket(&self) -> PathBuf {
        self.dir.join("attach.sock")
    }
    pub fn console_socket(&self) -> PathBuf {
        self.dir.join("console.sock")
    }
    pub fn init_pid(&self) -> PathBuf {
        self.dir.join("init.pid")
    }
    pub fn runc_log(&self) -> PathBuf {
        self.dir.join("runc.log")
    }
    pub fn shim_log(&self) -> PathBuf {
        self.dir.join("shim.log")
    }
}

/// The current run's shim, written by the shim once the container exists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ShimRecord {
    pub shim_pid: i32,
    /// /proc/<pid>/stat start time, so a recycled pid is not mistaken for the shim.
    pub shim_start_ticks: u64,
    pub pid: i32,
    pub published_ports: Vec<PublishedPort>,
    pub started_at_unix_ms: i64,
}

/// How the last run ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ExitRecord {
    pub exit_code: i64,
    pub finished_at_unix_ms: i64,
}

/// Reads a JSON file; `Ok(None)` when it does not exist.
pub(crate) fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>, RuntimeError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(RuntimeError::io(format!("reading {}", path.display()))(error)),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|error| RuntimeError::Corrupt { context: format!("parsing {}", path.display()), message: error.to_string() })
}

/// Writes a JSON file atomically: temp file, fsync, rename, fsync of the directory.
pub(crate) fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> Result<(), RuntimeError> {
    let bytes = serde_json::to_vec_pretty(value)
        .map_err(|error| RuntimeError::Corrupt { context: format!("encoding {}", path.display()), message: error.to_string() })?;
    write_atomic(path, &bytes)
}

/// Replaces `path` with `bytes` so readers see the old or the new content, never a torn one.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), RuntimeError> {
    let parent = path.parent().unwrap_or(Path::new("."));
    let file_name = path.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
    let temp = parent.join(format!(".{file_name}.tmp-{}", std::process::id()));
    let context = || format!("writing {}", path.display());
    let mut file = File::create(&temp).map_err(RuntimeError::io(context()))?;
    file.write_all(bytes).map_err(RuntimeError::io(context()))?;
    file.sync_all().map_err(RuntimeError::io(context()))?;
    drop(file);
    std::fs::rename(&temp, path).map_err(RuntimeError::io(context()))?;
    if let Ok(dir) = File::open(parent) {
        // The rename is only durable once the directory entry is; losing it is not worth failing for.
        let _ = dir.sync_all();
    }
    Ok(())
}

/// Removes a file, treating "already gone" as success.
pub(crate) fn remove_if_exists(path: &Path) -> Result<(), RuntimeError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(RuntimeError::io(format!("removing {}", path.display()))(error)),
    }
}

pub(crate) fn now_unix_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|elapsed| elapsed.as_millis() as i64).unwrap_or(0)
}

/// A stable 64-bit FNV-1a hash: derives short interface names from long ids.
pub(crate) fn fnv1a(parts: &[&str]) -> u64 {
    let mut hash: u64 = 0xcbf29ce484222325;
    for part in parts {
        for byte in part.as_bytes().iter().chain(std::iter::once(&0u8)) {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x100000001b3);
        }
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_that_could_escape_the_state_dir_are_rejected() {
        assert!(validate_id("container id", "abc-1_2.3").is_ok());
        for bad in ["", "../x", "a/b", ".hidden", "-flag", "a b", &"x".repeat(MAX_ID_LEN + 1)] {
            assert!(validate_id("container id", bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn atomic_json_round_trips_and_missing_reads_as_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("exit.json");
        assert_eq!(read_json::<ExitRecord>(&path).unwrap(), None);
        let record = ExitRecord { exit_code: 137, finished_at_unix_ms: 5 };
        write_json_atomic(&path, &record).unwrap();
        assert_eq!(read_json::<ExitRecord>(&path).unwrap(), Some(record));
        std::fs::write(&path, b"{not json").unwrap();
        assert!(read_json::<ExitRecord>(&path).is_err());
        remove_if_exists(&path).unwrap();
        remove_if_exists(&path).unwrap();
    }

    #[test]
    fn fnv_separates_parts() {
        assert_ne!(fnv1a(&["ab", "c"]), fnv1a(&["a", "bc"]));
        assert_eq!(fnv1a(&["x"]), fnv1a(&["x"]));
    }
}
