//! Shared fixtures for the runtime's integration tests: busybox root filesystems, a runtime
//! over a temporary state directory, and guards that delete containers and networks even
//! when a test fails.

#![allow(dead_code)]

use berth_runtime::*;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Generous bound for anything a test waits on, so a broken runtime fails instead of hanging.
pub const TEST_WAIT_TIMEOUT: Duration = Duration::from_secs(20);

pub fn shim_program() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_berth-runtime-test-shim"))
}

/// A runtime over its own temporary state directory (removed after the test).
pub struct Fixture {
    pub runtime: Arc<LocalRuntime>,
    pub state_dir: tempfile::TempDir,
    pub rootfs: tempfile::TempDir,
}

impl Fixture {
    pub fn new() -> Fixture {
        let state_dir = tempfile::tempdir().expect("state dir");
        let runtime = LocalRuntime::open(&state_dir.path().join("runtime"), &shim_program()).expect("open runtime");
        Fixture { runtime: Arc::new(runtime), state_dir, rootfs: busybox_rootfs() }
    }

    pub fn state_path(&self) -> PathBuf {
        self.state_dir.path().join("runtime")
    }

    /// A spec running `script` under `sh -c` in the fixture's rootfs with no network.
    pub fn spec(&self, id: &str, script: &str) -> ContainerRunSpec {
        ContainerRunSpec {
            id: id.to_string(),
            rootfs: self.rootfs.path().to_path_buf(),
            args: vec!["sh".into(), "-c".into(), script.into()],
            env: vec!["GREETING=hello".into()],
            working_dir: "/".into(),
            user: String::new(),
            hostname: id.chars().take(20).collect(),
            tty: false,
            open_stdin: false,
            network_mode: NetworkMode::None,
            port_bindings: vec![],
            mounts: vec![],
            resources: Resources::default(),
            stop_signal: 0,
        }
    }

    /// Creates the container and returns a guard that deletes it.
    pub fn create(&self, spec: &ContainerRunSpec) -> ContainerGuard {
        self.runtime.create(spec).expect("create");
        ContainerGuard { runtime: self.runtime.clone(), id: spec.id.clone() }
    }

    pub fn log_text(&self, id: &str) -> String {
        read_log(&self.runtime.log_path(id)).unwrap_or_default().into_iter().map(|entry| entry.log).collect()
    }
}

/// A test-unique id: tests in this binary run in parallel, and other binaries may too.
pub fn unique_id(name: &str) -> String {
    format!("bt-{name}-{}", std::process::id())
}

/// Deletes its container when dropped.
pub struct ContainerGuard {
    pub runtime: Arc<LocalRuntime>,
    pub id: String,
}

impl Drop for ContainerGuard {
    fn drop(&mut self) {
        if let Err(error) = self.runtime.delete(&self.id) {
            eprintln!("cleanup of {} failed: {error}", self.id);
        }
    }
}

/// Removes its network (bridge and `berth:` rules) when dropped.
pub struct NetworkGuard {
    pub runtime: Arc<LocalRuntime>,
    pub spec: NetworkSpec,
}

impl NetworkGuard {
    /// Ensures a network `10.<second>.<third>.0/24` with gateway .1.
    pub fn new(runtime: &Arc<LocalRuntime>, name: &str, second_octet: u8, internal: bool) -> NetworkGuard {
        let third_octet = (std::process::id() % 250) as u8 + 1;
        let spec = NetworkSpec {
            id: unique_id(name),
            subnet: format!("10.{second_octet}.{third_octet}.0/24"),
            gateway: format!("10.{second_octet}.{third_octet}.1").parse().expect("gateway"),
            internal,
        };
        let guard = NetworkGuard { runtime: runtime.clone(), spec };
        runtime.ensure_network(&guard.spec).expect("ensure network");
        guard
    }

    pub fn address(&self, host: u8) -> NetworkAttachment {
        let gateway = self.spec.gateway.octets();
        NetworkAttachment {
            network_id: self.spec.id.clone(),
            ip: [gateway[0], gateway[1], gateway[2], host].into(),
            prefix_length: 24,
            gateway: self.spec.gateway,
        }
    }
}

impl Drop for NetworkGuard {
    fn drop(&mut self) {
        if let Err(error) = self.runtime.remove_network(&self.spec.id) {
            eprintln!("cleanup of network {} failed: {error}", self.spec.id);
        }
    }
}

/// A root filesystem with busybox and its applets, passwd and group.
pub fn busybox_rootfs() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("rootfs dir");
    let root = dir.path();
    for sub in ["bin", "etc", "tmp", "root", "proc", "sys", "dev", "var/www"] {
        std::fs::create_dir_all(root.join(sub)).expect("rootfs subdir");
    }
    let busybox = ["/bin/busybox", "/usr/bin/busybox"].into_iter().map(Path::new).find(|path| path.exists()).expect("busybox installed");
    std::fs::copy(busybox, root.join("bin/busybox")).expect("copy busybox");
    let applets = std::process::Command::new(busybox).arg("--list").output().expect("busybox --list");
    for applet in String::from_utf8_lossy(&applets.stdout).lines() {
        if applet != "busybox" && !applet.is_empty() {
            let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(applet));
        }
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n").expect("passwd");
    std::fs::write(root.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n").expect("group");
    dir
}

/// Polls `condition` until it holds or the test timeout passes.
pub fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + TEST_WAIT_TIMEOUT;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
