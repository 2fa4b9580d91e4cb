//! System endpoints: `/_ping`, `/version`, `/info` and `/system/df`.

use super::{DockerState, API_VERSION, API_VERSION_MIN};
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;

pub async fn ping() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache, no-store, must-revalidate"),
            (header::PRAGMA, "no-cache"),
            (header::HeaderName::from_static("builder-version"), "1"),
            (header::HeaderName::from_static("swarm"), "inactive"),
        ],
        "OK",
    )
}

pub async fn version(State(state): State<DockerState>) -> impl IntoResponse {
    let build_time = time::OffsetDateTime::from_unix_timestamp((state.started_at_ms / 1000) as i64)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default();
    Json(serde_json::json!({
        "Platform": { "Name": "berth" },
        "Components": [{
            "Name": "Engine",
            "Version": env!("CARGO_PKG_VERSION"),
            "Details": { "ApiVersion": API_VERSION, "MinAPIVersion": API_VERSION_MIN, "Os": "linux", "Arch": go_arch(), "GitCommit": "berth", "GoVersion": "n/a (rust)", "KernelVersion": kernel_version(), "Experimental": "false", "BuildTime": build_time }
        }],
        "Version": env!("CARGO_PKG_VERSION"),
        "ApiVersion": API_VERSION,
        "MinAPIVersion": API_VERSION_MIN,
        "GitCommit": "berth",
        "GoVersion": "n/a (rust)",
        "Os": "linux",
        "Arch": go_arch(),
        "KernelVersion": kernel_version(),
        "BuildTime": build_time,
    }))
}

/// The architecture in Go's words, as Docker clients expect it.
fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn kernel_version() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_default()
}

fn memory_total_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

pub async fn info(State(state): State<DockerState>) -> impl IntoResponse {
    let (containers, running, paused, stopped, images, vch) = state.views.read(|views| {
        let own = || views.containers.values().filter(|c| c.vch == state.vch);
        let running = own().filter(|c| c.state == "running").count();
        let paused = own().filter(|c| c.state == "paused").count();
        let total = own().count();
        (total, running, paused, total - running - paused, views.images.len(), views.vchs.get(&state.vch).cloned())
    });
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_default();
    let system_status: Vec<(String, String)> = state.status.as_ref().map(|status| status()).unwrap_or_default();
    let mut labels = vec![format!("berth.vch={}", state.vch)];
    labels.extend(system_status.iter().map(|(key, value)| format!("berth.{key}={value}")));
    if let Some(vch) = &vch {
        labels.push(format!("berth.target={}", vch.spec.target));
    }
    // A vSphere VCH reports its resource pool's limits, as VIC's did.
    let (operating_system, mem_total) = match &vch {
        Some(vch) if !vch.spec.is_local() => (
            format!("berth VCH on vSphere ({})", vch.spec.target),
            if vch.spec.memory_mib_max > 0 { vch.spec.memory_mib_max * 1024 * 1024 } else { memory_total_bytes() },
        ),
        _ => ("berth (event-sourced VCH)".to_string(), memory_total_bytes()),
    };
    Json(serde_json::json!({
        "ID": format!("berth-{}", state.vch),
        "SystemStatus": if system_status.is_empty() { serde_json::Value::Null } else { serde_json::json!(system_status.iter().map(|(k, v)| [k, v]).collect::<Vec<_>>()) },
        "Containers": containers,
        "ContainersRunning": running,
        "ContainersPaused": paused,
        "ContainersStopped": stopped,
        "Images": images,
        "Driver": "overlay2",
        "DriverStatus": [["Backing Filesystem", "extfs"]],
        "Plugins": { "Volume": ["local"], "Network": ["bridge", "host", "null"], "Authorization": null, "Log": ["json-file"] },
        "MemoryLimit": true,
        "SwapLimit": false,
        "CpuCfsPeriod": true,
        "CpuCfsQuota": true,
        "CPUShares": true,
        "CPUSet": false,
        "PidsLimit": true,
        "IPv4Forwarding": true,
        "Debug": false,
        "NFd": 0,
        "NGoroutines": 0,
        "SystemTime": super::util::rfc3339_ms(state.now_ms()),
        "LoggingDriver": "json-file",
        "CgroupDriver": "cgroupfs",
        "CgroupVersion": "1",
        "NEventsListener": 0,
        "KernelVersion": kernel_version(),
        "OperatingSystem": operating_system,
        "OSVersion": "",
        "OSType": "linux",
        "Architecture": std::env::consts::ARCH,
        "IndexServerAddress": "https://index.docker.io/v1/",
        "RegistryConfig": { "IndexConfigs": {}, "InsecureRegistryCIDRs": [], "Mirrors": [] },
        "NCPU": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "MemTotal": mem_total,
        "DockerRootDir": state.data_dir,
        "HttpProxy": "",
        "HttpsProxy": "",
        "NoProxy": "",
        "Name": hostname,
        "Labels": labels,
        "ExperimentalBuild": false,
        "ServerVersion": env!("CARGO_PKG_VERSION"),
        "Runtimes": { "runc": { "path": "runc" } },
        "DefaultRuntime": "runc",
        "Swarm": { "NodeID": "", "NodeAddr": "", "LocalNodeState": "inactive", "ControlAvailable": false, "Error": "", "RemoteManagers": null },
        "LiveRestoreEnabled": true,
        "Isolation": "",
        "InitBinary": "",
        "SecurityOptions": [],
        "Warnings": [],
    }))
}

pub async fn disk_usage(State(state): State<DockerState>) -> impl IntoResponse {
    let body = state.views.read(|views| {
        let images: Vec<serde_json::Value> = views
            .images
            .values()
            .map(|i| {
                let containers = views.containers.values().filter(|c| c.image_id == i.id).count();
                serde_json::json!({
                    "Id": i.id, "ParentId": "", "RepoTags": i.tags.iter().collect::<Vec<_>>(), "RepoDigests": [],
                    "Created": i.created_ms / 1000, "Size": i.size_bytes, "SharedSize": 0, "Labels": {}, "Containers": containers,
                })
            })
            .collect();
        let layers_size: u64 = views.images.values().map(|i| i.size_bytes).sum();
        let containers: Vec<serde_json::Value> = views
            .containers
            .values()
            .map(|c| {
                serde_json::json!({
                    "Id": c.id, "Names": [format!("/{}", c.name)], "Image": c.spec.image, "ImageID": c.image_id,
                    "Command": c.spec.entrypoint.iter().chain(c.spec.cmd.iter()).cloned().collect::<Vec<_>>().join(" "),
                    "Created": c.created_ms / 1000, "State": c.state, "Status": c.state, "SizeRw": 0, "SizeRootFs": 0,
                    "Labels": c.spec.labels, "Mounts": [],
                })
            })
            .collect();
        let volumes: Vec<serde_json::Value> = views
            .volumes
            .values()
            .map(|v| {
                let users = views.containers.values().filter(|c| c.spec.host.mounts.iter().any(|m| m.volume == v.name)).count();
                serde_json::json!({
                    "Name": v.name, "Driver": v.driver, "Mountpoint": format!("{}/volumes/{}/_data", state.data_dir, v.name),
                    "CreatedAt": super::util::rfc3339_ms(v.created_ms), "Labels": v.labels, "Scope": "local", "Options": {},
                    "UsageData": { "Size": -1, "RefCount": users },
                })
            })
            .collect();
        serde_json::json!({ "LayersSize": layers_size, "Images": images, "Containers": containers, "Volumes": volumes, "BuildCache": [] })
    });
    Json(body)
}
