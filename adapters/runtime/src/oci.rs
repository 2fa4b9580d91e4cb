//! Builds runc's OCI `config.json` (and `runc exec`'s process.json) from a ContainerRunSpec.

use crate::layout::ContainerFiles;
use crate::spec::{ContainerRunSpec, NetworkMode, Resources};
use serde_json::{json, Value};
use std::path::Path;

/// The PATH Docker gives containers whose image sets none.
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// CFS period used to turn `nano_cpus` into a quota (Docker's 100 ms).
pub const CPU_PERIOD_US: i64 = 100_000;
/// Open files a container may hold (Docker's default), capped at what this host allows us.
pub const MAX_OPEN_FILES: u64 = 1_048_576;

/// The open-files limit to give containers: Docker's, unless our own hard limit is lower
/// (raising it past that fails inside sandboxes without CAP_SYS_RESOURCE).
pub fn open_files_limit() -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one rlimit to a valid pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return 1024;
    }
    MAX_OPEN_FILES.min(limit.rlim_max)
}

/// Docker's default capability set.
const DEFAULT_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Errors building the OCI configuration.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("user {user:?} is not in the container's /etc/passwd")]
    UnknownUser { user: String },
    #[error("group {group:?} is not in the container's /etc/group")]
    UnknownGroup { group: String },
}

impl From<OciError> for crate::error::RuntimeError {
    fn from(error: OciError) -> Self {
        crate::error::RuntimeError::Invalid { what: "user", reason: error.to_string() }
    }
}

/// A resolved numeric user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NumericUser {
    pub uid: u32,
    pub gid: u32,
}

/// Resolves `user`, `uid`, `user:group` or `uid:gid` against the rootfs's passwd and group files.
pub fn resolve_user(rootfs: &Path, user: &str) -> Result<NumericUser, OciError> {
    if user.is_empty() {
        return Ok(NumericUser { uid: 0, gid: 0 });
    }
    let (user_part, group_part) = match user.split_once(':') {
        Some((user_part, group_part)) => (user_part, Some(group_part)),
        None => (user, None),
    };
    let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).unwrap_or_default();
    let passwd_entry = passwd
        .lines()
        .map(|line| line.split(':').collect::<Vec<_>>())
        .find(|fields| fields.len() >= 4 && (fields[0] == user_part || (user_part.parse::<u32>().is_ok() && fields[2] == user_part)));
    let (uid, default_gid) = match (&passwd_entry, user_part.parse::<u32>()) {
        (Some(fields), _) => {
            (fields[2].parse().map_err(|_| OciError::UnknownUser { user: user_part.to_string() })?, fields[3].parse().unwrap_or(0))
        }
        (None, Ok(uid)) => (uid, 0),
        (None, Err(_)) => return Err(OciError::UnknownUser { user: user_part.to_string() }),
    };
    let gid = match group_part {
        None | Some("") => default_gid,
        Some(group) => match group.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => {
                let groups = std::fs::read_to_string(rootfs.join("etc/group")).unwrap_or_default();
                groups
                    .lines()
                    .map(|line| line.split(':').collect::<Vec<_>>())
                    .find(|fields| fields.len() >= 3 && fields[0] == group)
                    .and_then(|fields| fields[2].parse().ok())
                    .ok_or_else(|| OciError::UnknownGroup { group: group.to_string() })?
            }
        },
    };
    Ok(NumericUser { uid, gid })
}

/// The container environment: the caller's, plus PATH, HOSTNAME and TERM as Docker adds them.
pub fn container_env(spec: &ContainerRunSpec) -> Vec<String> {
    let mut env = spec.env.clone();
    let has = |env: &[String], key: &str| env.iter().any(|entry| entry.split_once('=').map(|(name, _)| name) == Some(key));
    if !has(&env, "PATH") {
        env.insert(0, DEFAULT_PATH.to_string());
    }
    if !has(&env, "HOSTNAME") && !spec.hostname.is_empty() {
        env.push(format!("HOSTNAME={}", spec.hostname));
    }
    if spec.tty && !has(&env, "TERM") {
        env.push("TERM=xterm".to_string());
    }
    env
}

/// Merges exec variables over the container's: later entries win, like `docker exec -e`.
pub fn merge_env(base: &[String], overrides: &[String]) -> Vec<String> {
    let mut merged: Vec<String> = Vec::new();
    for entry in base.iter().chain(overrides) {
        let key = entry.split_once('=').map(|(name, _)| name).unwrap_or(entry);
        merged.retain(|existing| existing.split_once('=').map(|(name, _)| name).unwrap_or(existing) != key);
        merged.push(entry.clone());
    }
    merged
}

/// The OCI `process` object.
pub fn process_json(args: &[String], env: &[String], cwd: &str, user: NumericUser, terminal: bool) -> Value {
    let capabilities: Vec<&str> = DEFAULT_CAPABILITIES.to_vec();
    json!({
        "terminal": terminal,
        "user": { "uid": user.uid, "gid": user.gid },
        "args": args,
        "env": env,
        "cwd": if cwd.is_empty() { "/" } else { cwd },
        "capabilities": {
            "bounding": capabilities,
            "effective": capabilities,
            "permitted": capabilities,
        },
        "rlimits": [{ "type": "RLIMIT_NOFILE", "hard": open_files_limit(), "soft": open_files_limit() }],
        "noNewPrivileges": false,
    })
}

/// The OCI `linux.resources` object (devices are left to runc's defaults).
pub fn resources_json(resources: &Resources, swap_accounting: bool) -> Value {
    let mut value = json!({ "devices": [{ "allow": false, "access": "rwm" }] });
    if resources.memory_bytes > 0 {
        let mut memory = json!({ "limit": resources.memory_bytes });
        if swap_accounting {
            // Docker's default: as much swap as memory, i.e. memory+swap = twice the limit.
            memory["swap"] = json!(resources.memory_bytes.saturating_mul(2));
        }
        value["memory"] = memory;
    }
    let mut cpu = serde_json::Map::new();
    if resources.cpu_shares > 0 {
        cpu.insert("shares".into(), json!(resources.cpu_shares));
    }
    if resources.nano_cpus > 0 {
        cpu.insert("quota".into(), json!(cpu_quota_us(resources.nano_cpus)));
        cpu.insert("period".into(), json!(CPU_PERIOD_US));
    }
    if !cpu.is_empty() {
        value["cpu"] = Value::Object(cpu);
    }
    value
}

/// The CFS quota for `nano_cpus` billionths of a CPU per period.
pub fn cpu_quota_us(nano_cpus: i64) -> i64 {
    (i128::from(nano_cpus) * i128::from(CPU_PERIOD_US) / 1_000_000_000).clamp(1000, i128::from(i64::MAX)) as i64
}

/// The cgroup path runc creates under each v1 controller.
pub fn cgroup_path(id: &str) -> String {
    format!("/berth/{id}")
}

/// The full config.json.
pub fn config_json(
    spec: &ContainerRunSpec,
    files: &ContainerFiles,
    netns_path: Option<&Path>,
    user: NumericUser,
    swap_accounting: bool,
) -> Value {
    let own_network_namespace = !matches!(spec.network_mode, NetworkMode::Host);
    let mut namespaces = vec![json!({"type": "pid"}), json!({"type": "ipc"}), json!({"type": "mount"})];
    if own_network_namespace {
        // With the host's network Docker also shares its hostname.
        namespaces.push(json!({"type": "uts"}));
        match netns_path {
            Some(path) => namespaces.push(json!({"type": "network", "path": path})),
            None => namespaces.push(json!({"type": "network"})),
        }
    }
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts",
               "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}),
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}),
    ];
    for mount in &spec.mounts {
        let mut options = vec!["rbind", "rprivate"];
        if mount.read_only {
            options.push("ro");
        }
        mounts.push(json!({"destination": mount.target, "type": "bind", "source": mount.source, "options": options}));
    }
    for (target, source) in [("/etc/hosts", files.hosts()), ("/etc/hostname", files.hostname()), ("/etc/resolv.conf", files.resolv_conf())]
    {
        mounts.push(json!({"destination": target, "type": "bind", "source": source, "options": ["rbind", "rprivate"]}));
    }
    let mut config = json!({
        "ociVersion": "1.0.2",
        "process": process_json(&spec.args, &container_env(spec), &spec.working_dir, user, spec.tty),
        "root": { "path": spec.rootfs, "readonly": false },
        "mounts": mounts,
        "linux": {
            "cgroupsPath": cgroup_path(&spec.id),
            "resources": resources_json(&spec.resources, swap_accounting),
            "namespaces": namespaces,
            "maskedPaths": [
                "/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware"
            ],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
        },
    });
    if own_network_namespace && !spec.hostname.is_empty() {
        config["hostname"] = json!(spec.hostname);
    }
    config
}

/// The /etc/hosts of a container: localhost, its own addresses, then the peers the caller named.
pub fn hosts_file(hostname: &str, own_ips: &[std::net::Ipv4Addr], extra: &[(String, Vec<String>)]) -> String {
    let mut text = String::from(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n",
    );
    if !hostname.is_empty() {
        for ip in own_ips {
            text.push_str(&format!("{ip}\t{hostname}\n"));
        }
    }
    for (ip, names) in extra {
        // Names and addresses come from callers: keep each entry on one well-formed line.
        let clean = |text: &str| text.chars().filter(|c| !c.is_whitespace() && *c != '#').collect::<String>();
        let names: Vec<String> = names.iter().map(|name| clean(name)).filter(|name| !name.is_empty()).collect();
        let ip = clean(ip);
        if !ip.is_empty() && !names.is_empty() {
            text.push_str(&format!("{ip}\t{}\n", names.join(" ")));
        }
    }
    text
}

/// The container's resolv.conf: the host's, unless it points at a loopback resolver that the
/// container's own network namespace cannot reach.
pub fn resolv_conf(host_resolv_conf: &str, shares_host_network: bool) -> String {
    if shares_host_network {
        return host_resolv_conf.to_string();
    }
    let usable: Vec<&str> = host_resolv_conf
        .lines()
        .filter(|line| {
            let mut words = line.split_whitespace();
            !(words.next() == Some("nameserver") && words.next().is_some_and(|ip| ip.starts_with("127.") || ip == "::1"))
        })
        .collect();
    let mut text = usable.join("\n");
    if !usable.iter().any(|line| line.trim_start().starts_with("nameserver")) {
        // Docker's fallback when the host only has a local resolver.
        text.push_str("\nnameserver 8.8.8.8\nnameserver 8.8.4.4");
    }
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::*;
    use std::path::PathBuf;

    fn spec() -> ContainerRunSpec {
        ContainerRunSpec {
            id: "c1".into(),
            rootfs: PathBuf::from("/r"),
            args: vec!["sh".into()],
            env: vec!["A=1".into()],
            working_dir: String::new(),
            user: String::new(),
            hostname: "box".into(),
            tty: true,
            open_stdin: false,
            network_mode: NetworkMode::Host,
            port_bindings: vec![],
            mounts: vec![Mount { source: "/data".into(), target: "/d".into(), read_only: true }],
            resources: Resources { memory_bytes: 1 << 20, nano_cpus: 500_000_000, cpu_shares: 512 },
            stop_signal: 0,
        }
    }

    #[test]
    fn users_resolve_through_the_rootfs() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join("etc/passwd"), "root:x:0:0::/root:/bin/sh\nweb:x:33:44::/:/bin/sh\n").unwrap();
        std::fs::write(dir.path().join("etc/group"), "root:x:0:\nstaff:x:50:\n").unwrap();
        let resolve = |user: &str| resolve_user(dir.path(), user).map(|user| (user.uid, user.gid));
        assert_eq!(resolve("").unwrap(), (0, 0));
        assert_eq!(resolve("web").unwrap(), (33, 44));
        assert_eq!(resolve("33").unwrap(), (33, 44));
        assert_eq!(resolve("1000").unwrap(), (1000, 0));
        assert_eq!(resolve("web:staff").unwrap(), (33, 50));
        assert_eq!(resolve("1000:7").unwrap(), (1000, 7));
        assert!(resolve("nobody-here").is_err());
        assert!(resolve("web:nogroup").is_err());
    }

    #[test]
    fn config_carries_limits_mounts_and_host_network_choices() {
        let files = ContainerFiles { dir: PathBuf::from("/s/c1") };
        let config = config_json(&spec(), &files, None, NumericUser { uid: 0, gid: 0 }, true);
        assert_eq!(config["linux"]["resources"]["memory"]["limit"], 1 << 20);
        assert_eq!(config["linux"]["resources"]["memory"]["swap"], 2 << 20);
        assert_eq!(config["linux"]["resources"]["cpu"]["quota"], 50_000);
        assert_eq!(config["linux"]["resources"]["cpu"]["shares"], 512);
        let namespaces = config["linux"]["namespaces"].as_array().unwrap();
        assert!(!namespaces.iter().any(|ns| ns["type"] == "network" || ns["type"] == "uts"));
        assert!(config.get("hostname").is_none());
        let env = config["process"]["env"].as_array().unwrap();
        assert!(env.iter().any(|entry| entry == "TERM=xterm"));
        assert!(env.iter().any(|entry| entry == DEFAULT_PATH));
        let mounts = config["mounts"].as_array().unwrap();
        assert!(mounts.iter().any(|mount| mount["destination"] == "/d" && mount["options"][2] == "ro"));
        assert!(mounts.iter().any(|mount| mount["destination"] == "/etc/hosts"));
    }

    #[test]
    fn env_merge_overrides_by_key() {
        let merged = merge_env(&["A=1".into(), "B=2".into()], &["A=3".into(), "C".into()]);
        assert_eq!(merged, vec!["B=2", "A=3", "C"]);
    }

    #[test]
    fn hosts_and_resolv_conf_are_docker_shaped() {
        let hosts = hosts_file("web", &["10.1.0.2".parse().unwrap()], &[("10.1.0.3".into(), vec!["db".into(), "bad name\n".into()])]);
        assert!(hosts.contains("10.1.0.2\tweb\n"));
        assert!(hosts.contains("10.1.0.3\tdb badname\n"));
        assert!(resolv_conf("nameserver 127.0.0.53\n", false).contains("8.8.8.8"));
        assert_eq!(resolv_conf("nameserver 10.0.0.1\n", false), "nameserver 10.0.0.1\n");
        assert_eq!(cpu_quota_us(1_500_000_000), 150_000);
    }
}
