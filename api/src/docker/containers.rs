//! Container endpoints: create, list, inspect and the lifecycle commands.
//! Every change is a core command; every read comes from the views.

use super::errors::ApiError;
use super::util::{check_filter_keys, filters, flag, human_duration, labels_match, rfc3339_ms};
use super::DockerState;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use berth_core::events::{ContainerSpec, HostSpec, PortBinding, VolumeMount};
use berth_core::Command;
use berth_projections::{ContainerView, DockerViews};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// Docker's StrSlice: a string or a list of strings.
#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
pub enum StringOrList {
    One(String),
    Many(Vec<String>),
}

impl StringOrList {
    fn into_vec(self, shell: bool) -> Vec<String> {
        match self {
            StringOrList::Many(items) => items,
            StringOrList::One(text) if shell => vec!["/bin/sh".into(), "-c".into(), text],
            StringOrList::One(text) => vec![text],
        }
    }
}

#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "PascalCase")]
pub struct PortBindingBody {
    pub host_ip: Option<String>,
    pub host_port: Option<String>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "PascalCase")]
pub struct RestartPolicyBody {
    pub name: Option<String>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "PascalCase")]
pub struct MountBody {
    #[serde(rename = "Type")]
    pub kind: Option<String>,
    pub source: Option<String>,
    pub target: Option<String>,
    pub read_only: Option<bool>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "PascalCase")]
pub struct HostConfigBody {
    pub binds: Option<Vec<String>>,
    pub port_bindings: Option<BTreeMap<String, Option<Vec<PortBindingBody>>>>,
    pub network_mode: Option<String>,
    pub memory: Option<i64>,
    pub nano_cpus: Option<i64>,
    pub cpu_shares: Option<i64>,
    pub auto_remove: Option<bool>,
    pub restart_policy: Option<RestartPolicyBody>,
    pub mounts: Option<Vec<MountBody>>,
    pub publish_all_ports: Option<bool>,
    pub privileged: Option<bool>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "PascalCase")]
pub struct IpamConfigBody {
    #[serde(rename = "IPv4Address")]
    pub ipv4_address: Option<String>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "PascalCase")]
pub struct EndpointBody {
    #[serde(rename = "IPAMConfig")]
    pub ipam_config: Option<IpamConfigBody>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "PascalCase")]
pub struct NetworkingConfigBody {
    pub endpoints_config: Option<BTreeMap<String, Option<EndpointBody>>>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "PascalCase")]
pub struct CreateBody {
    pub hostname: Option<String>,
    pub user: Option<String>,
    pub tty: Option<bool>,
    pub open_stdin: Option<bool>,
    pub env: Option<Vec<String>>,
    pub cmd: Option<StringOrList>,
    pub entrypoint: Option<StringOrList>,
    pub image: Option<String>,
    pub labels: Option<BTreeMap<String, String>>,
    pub working_dir: Option<String>,
    pub exposed_ports: Option<BTreeMap<String, Value>>,
    pub stop_signal: Option<String>,
    pub stop_timeout: Option<i64>,
    pub volumes: Option<BTreeMap<String, Value>>,
    pub host_config: Option<HostConfigBody>,
    pub networking_config: Option<NetworkingConfigBody>,
}

/// Parses a JSON body with Docker's error style for malformed or mistyped input.
pub fn parse_body<T: for<'de> Deserialize<'de> + Default>(body: &Bytes) -> Result<T, ApiError> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|error| ApiError::bad_request(format!("invalid JSON: {error}")))
}

/// `80`, `80/tcp`, `53/udp` → `80/tcp`-style keys; anything else is an error.
pub fn normalize_port(spec: &str) -> Result<String, ApiError> {
    let (port, protocol) = spec.split_once('/').unwrap_or((spec, "tcp"));
    let valid_port = port.parse::<u16>().map(|p| p > 0).unwrap_or(false);
    if !valid_port || !matches!(protocol, "tcp" | "udp" | "sctp") {
        return Err(ApiError::bad_request(format!("invalid port specification: {spec:?}")));
    }
    Ok(format!("{port}/{protocol}"))
}

fn is_volume_name(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.len() >= 2
        && bytes[0].is_ascii_alphanumeric()
        && bytes.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// The label that marks anonymous volumes, as Docker does.
pub const ANONYMOUS_VOLUME_LABEL: &str = "com.docker.volume.anonymous";

pub async fn create(
    State(state): State<DockerState>,
    Query(query): Query<HashMap<String, String>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body: CreateBody = parse_body(&body)?;
    let image_reference = body.image.clone().filter(|i| !i.is_empty()).ok_or_else(|| ApiError::bad_request("config.Image is required"))?;
    let image = state
        .views
        .read(|views| views.find_image(&image_reference).cloned())
        .ok_or_else(|| ApiError::not_found(format!("No such image: {}", berth_core::model::normalize_reference(&image_reference))))?;
    let defaults = match &state.images {
        Some(images) => {
            let images = images.clone();
            let id = image.id.clone();
            tokio::task::spawn_blocking(move || images.defaults(&id))
                .await
                .map_err(|e| ApiError::internal(e.to_string()))?
                .map_err(ApiError::internal)?
        }
        None => Default::default(),
    };
    let entrypoint_given = body.entrypoint.is_some();
    let host = body.host_config.unwrap_or_default();

    // Entrypoint and Cmd: the client's, else the image's (an entrypoint given
    // without a command drops the image's command, as Docker does).
    let entrypoint = match body.entrypoint {
        Some(entrypoint) => entrypoint.into_vec(false),
        None => defaults.entrypoint.clone(),
    };
    let cmd = match body.cmd {
        Some(cmd) => cmd.into_vec(false),
        None if entrypoint_given => Vec::new(),
        None => defaults.cmd.clone(),
    };
    if entrypoint.is_empty() && cmd.is_empty() {
        return Err(ApiError::bad_request("No command specified"));
    }
    let mut env = defaults.env.clone();
    for variable in body.env.unwrap_or_default() {
        let key = variable.split('=').next().unwrap_or_default().to_string();
        if key.is_empty() {
            return Err(ApiError::bad_request(format!("invalid environment variable: {variable:?}")));
        }
        env.retain(|existing| existing.split('=').next() != Some(key.as_str()));
        env.push(variable);
    }
    let mut labels = defaults.labels.clone();
    labels.extend(body.labels.unwrap_or_default());
    let mut exposed_ports: Vec<String> = defaults.exposed_ports.clone();
    for port in body.exposed_ports.unwrap_or_default().keys() {
        let port = normalize_port(port)?;
        if !exposed_ports.contains(&port) {
            exposed_ports.push(port);
        }
    }
    let mut port_bindings = BTreeMap::new();
    for (port, bindings) in host.port_bindings.unwrap_or_default() {
        let port = normalize_port(&port)?;
        let mut list = Vec::new();
        for binding in bindings.unwrap_or_default() {
            let host_port = binding.host_port.unwrap_or_default();
            if !host_port.is_empty() && host_port.split('-').any(|p| p.parse::<u16>().is_err()) {
                return Err(ApiError::bad_request(format!("invalid host port {host_port:?}")));
            }
            list.push(PortBinding { host_ip: binding.host_ip.unwrap_or_default(), host_port });
        }
        if !exposed_ports.contains(&port) {
            exposed_ports.push(port.clone());
        }
        port_bindings.insert(port, list);
    }

    if host.privileged.unwrap_or(false) {
        return Err(ApiError::bad_request("privileged containers are not supported by a VCH"));
    }
    if host.publish_all_ports.unwrap_or(false) {
        for port in &exposed_ports {
            port_bindings.entry(port.clone()).or_insert_with(|| vec![PortBinding { host_ip: String::new(), host_port: String::new() }]);
        }
    }

    // Volumes: named ones are created on first use; host paths are refused.
    let mut mounts: Vec<VolumeMount> = Vec::new();
    for bind in host.binds.unwrap_or_default() {
        let parts: Vec<&str> = bind.split(':').collect();
        let (source, target, mode) = match parts.as_slice() {
            [source, target] => (*source, *target, ""),
            [source, target, mode] => (*source, *target, *mode),
            _ => return Err(ApiError::bad_request(format!("invalid volume specification: '{bind}'"))),
        };
        if source.starts_with('/') || source.starts_with('.') {
            return Err(ApiError::bad_request(format!(
                "invalid volume specification: '{bind}': a VCH does not bind-mount host paths; use a named volume"
            )));
        }
        if !is_volume_name(source) || !target.starts_with('/') {
            return Err(ApiError::bad_request(format!("invalid volume specification: '{bind}'")));
        }
        mounts.push(VolumeMount { volume: source.into(), target: target.into(), read_only: mode.split(',').any(|m| m == "ro") });
    }
    for mount in host.mounts.unwrap_or_default() {
        let kind = mount.kind.unwrap_or_else(|| "volume".into());
        let target = mount.target.unwrap_or_default();
        if kind != "volume" {
            return Err(ApiError::bad_request(format!("mount type {kind:?} is not supported by a VCH; use a volume")));
        }
        if !target.starts_with('/') {
            return Err(ApiError::bad_request(format!("invalid mount target {target:?}: must be an absolute path")));
        }
        let source = mount.source.unwrap_or_default();
        let volume = if source.is_empty() { state.random_hex() } else { source };
        mounts.push(VolumeMount { volume, target, read_only: mount.read_only.unwrap_or(false) });
    }
    for target in body.volumes.unwrap_or_default().keys() {
        if !mounts.iter().any(|m| &m.target == target) {
            mounts.push(VolumeMount { volume: state.random_hex(), target: target.clone(), read_only: false });
        }
    }
    for mount in &mounts {
        let anonymous = mount.volume.len() == 64 && mount.volume.bytes().all(|b| b.is_ascii_hexdigit());
        let mut volume_labels = BTreeMap::new();
        if anonymous {
            volume_labels.insert(ANONYMOUS_VOLUME_LABEL.to_string(), String::new());
        }
        state.execute(Command::CreateVolume { name: mount.volume.clone(), driver: "local".into(), labels: volume_labels }).await?;
    }

    let network_mode = match host.network_mode.unwrap_or_default().as_str() {
        "" | "default" => "bridge".to_string(),
        other => other.to_string(),
    };
    let endpoints = body.networking_config.and_then(|n| n.endpoints_config).unwrap_or_default();
    let name = match query.get("name").map(|n| n.trim_start_matches('/').to_string()).filter(|n| !n.is_empty()) {
        Some(name) => name,
        None => state.generated_name(),
    };
    let id = state.random_hex();
    let spec = ContainerSpec {
        image: image_reference,
        cmd,
        entrypoint,
        env,
        working_dir: body.working_dir.filter(|w| !w.is_empty()).unwrap_or(defaults.working_dir),
        user: body.user.filter(|u| !u.is_empty()).unwrap_or(defaults.user),
        hostname: body.hostname.filter(|h| !h.is_empty()).unwrap_or_else(|| id[..12].to_string()),
        tty: body.tty.unwrap_or(false),
        open_stdin: body.open_stdin.unwrap_or(false),
        labels,
        exposed_ports,
        stop_signal: body.stop_signal.or(defaults.stop_signal),
        stop_timeout_s: body.stop_timeout,
        host: HostSpec {
            port_bindings,
            network_mode: network_mode.clone(),
            memory_bytes: host.memory.unwrap_or(0),
            nano_cpus: host.nano_cpus.unwrap_or(0),
            cpu_shares: host.cpu_shares.unwrap_or(0),
            auto_remove: host.auto_remove.unwrap_or(false),
            restart_policy: host.restart_policy.and_then(|p| p.name).unwrap_or_else(|| "no".into()),
            mounts,
        },
    };
    if spec.host.memory_bytes != 0 && spec.host.memory_bytes < 6 * 1024 * 1024 {
        return Err(ApiError::bad_request("Minimum memory limit allowed is 6MB"));
    }
    if spec.host.nano_cpus < 0 || spec.host.memory_bytes < 0 {
        return Err(ApiError::bad_request("resource limits must not be negative"));
    }
    let generated = query.get("name").map(|n| n.trim_start_matches('/')).is_none_or(str::is_empty);
    let mut name = name;
    let mut attempt = 0;
    loop {
        let command = Command::CreateContainer {
            id: id.clone(),
            name: name.clone(),
            vch: state.vch.clone(),
            image_id: image.id.clone(),
            spec: spec.clone(),
        };
        match state.execute(command).await {
            Ok(_) => break,
            // A generated name taken meanwhile by a concurrent create: draw another, as dockerd does.
            Err(error)
                if generated
                    && attempt < GENERATED_NAME_ATTEMPT_COUNT_MAX
                    && error.message.contains("name")
                    && error.message.contains("in use") =>
            {
                attempt += 1;
                name = state.generated_name();
            }
            Err(error) if error.status == StatusCode::CONFLICT && error.message.contains("name") && error.message.contains("in use") => {
                return Err(ApiError::conflict(format!(
                    "Conflict. The container name \"/{name}\" is already in use by container \"{}\". You have to remove (or rename) that container to be able to reuse that name.",
                    error.message.rsplit(' ').next().unwrap_or_default()
                )));
            }
            Err(error) => return Err(error),
        }
    }
    for (network, endpoint) in endpoints {
        if network == "default" || network == network_mode {
            continue;
        }
        let resolved = state.views.read(|views| views.find_network(&network).map(|n| (n.id.clone(), n.name.clone())));
        let Some((network_id, network_name)) = resolved else {
            let _ = state.execute(Command::RemoveContainer { id: id.clone(), force: true }).await;
            return Err(ApiError::not_found(format!("network {network} not found")));
        };
        if network_name == network_mode || network_id == network_mode {
            continue;
        }
        let ipv4_address = endpoint.and_then(|e| e.ipam_config).and_then(|i| i.ipv4_address).filter(|a| !a.is_empty());
        state.execute(Command::ConnectNetwork { network_id, container_id: id.clone(), ipv4_address }).await?;
    }
    Ok((StatusCode::CREATED, Json(json!({ "Id": id, "Warnings": [] }))).into_response())
}

/// How many generated names a create tries before it gives up.
const GENERATED_NAME_ATTEMPT_COUNT_MAX: u32 = 5;

/// Resolves a container reference or answers Docker's 404.
pub fn find(state: &DockerState, reference: &str) -> Result<ContainerView, ApiError> {
    state
        .views
        .read(|views| views.find_container(reference).filter(|container| container.vch == state.vch).cloned())
        .ok_or_else(|| ApiError::not_found(format!("No such container: {reference}")))
}

fn command_line(container: &ContainerView) -> String {
    container.spec.entrypoint.iter().chain(container.spec.cmd.iter()).cloned().collect::<Vec<_>>().join(" ")
}

fn status_text(container: &ContainerView, now_ms: u64) -> String {
    let since = |ms: u64| human_duration(now_ms.saturating_sub(ms) / 1000);
    match container.state.as_str() {
        "running" => format!("Up {}", since(container.started_ms)),
        "paused" => format!("Up {} (Paused)", since(container.started_ms)),
        "exited" => format!("Exited ({}) {} ago", container.exit_code, since(container.finished_ms)),
        _ => "Created".into(),
    }
}

fn ports_json(state: &DockerState, container: &ContainerView) -> Vec<Value> {
    let mut ports = Vec::new();
    let published = state.containers.as_ref().map(|c| c.published_ports(&container.id)).unwrap_or_default();
    for exposed in &container.spec.exposed_ports {
        let (port, protocol) = exposed.split_once('/').unwrap_or((exposed, "tcp"));
        let private: u16 = port.parse().unwrap_or(0);
        let bound: Vec<&(String, String, u16)> = published.iter().filter(|(p, _, _)| p == exposed).collect();
        if bound.is_empty() {
            ports.push(json!({ "PrivatePort": private, "Type": protocol }));
        }
        for (_, host_ip, host_port) in bound {
            ports.push(json!({ "IP": host_ip, "PrivatePort": private, "PublicPort": host_port, "Type": protocol }));
        }
    }
    ports
}

fn networks_json(views: &DockerViews, container: &ContainerView) -> serde_json::Map<String, Value> {
    let mut networks = serde_json::Map::new();
    if matches!(container.spec.host.network_mode.as_str(), "host" | "none") {
        if let Some(network) = views.find_network(&container.spec.host.network_mode) {
            networks.insert(
                network.name.clone(),
                json!({ "NetworkID": network.id, "EndpointID": "", "Gateway": "", "IPAddress": "", "IPPrefixLen": 0, "MacAddress": "", "Aliases": null, "DNSNames": null }),
            );
        }
    }
    for (network_id, address) in &container.networks {
        let Some(network) = views.networks.get(network_id) else { continue };
        let prefix_length: u32 = network.subnet.split('/').nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
        networks.insert(
            network.name.clone(),
            json!({
                "IPAMConfig": null,
                "Links": null,
                "Aliases": if network.name == "bridge" { Value::Null } else { json!([container.name, &container.id[..12]]) },
                "MacAddress": mac_address(address),
                "NetworkID": network.id,
                "EndpointID": format!("{}{}", &container.id[..32], &network.id[..32.min(network.id.len())]),
                "Gateway": network.gateway,
                "IPAddress": address,
                "IPPrefixLen": prefix_length,
                "IPv6Gateway": "",
                "GlobalIPv6Address": "",
                "GlobalIPv6PrefixLen": 0,
                "DNSNames": if network.name == "bridge" { Value::Null } else { json!([container.name, &container.id[..12]]) },
            }),
        );
    }
    networks
}

/// A stable, locally administered MAC derived from the IPv4 address, as Docker does.
pub fn mac_address(ipv4: &str) -> String {
    let octets: Vec<u8> = ipv4.split('.').filter_map(|o| o.parse().ok()).collect();
    if octets.len() != 4 {
        return String::new();
    }
    format!("02:42:{:02x}:{:02x}:{:02x}:{:02x}", octets[0], octets[1], octets[2], octets[3])
}

pub async fn list(State(state): State<DockerState>, Query(query): Query<HashMap<String, String>>) -> Result<Json<Vec<Value>>, ApiError> {
    let filters = filters(&query)?;
    check_filter_keys(
        &filters,
        &["id", "name", "status", "label", "ancestor", "exited", "network", "volume", "before", "since", "health", "is-task"],
    )?;
    let all = flag(&query, "all");
    let limit: Option<usize> = query.get("limit").and_then(|l| l.parse::<i64>().ok()).filter(|l| *l > 0).map(|l| l as usize);
    let now_ms = state.now_ms();
    let rows = state.views.read(|views| {
        // Each VCH's endpoint sees its own containers only.
        let mut containers: Vec<&ContainerView> = views.containers.values().filter(|c| c.vch == state.vch).collect();
        containers.sort_by(|a, b| b.position_created().cmp(&a.position_created()));
        let mut rows = Vec::new();
        for container in containers {
            let image = views.images.get(&container.image_id);
            let running = matches!(container.state.as_str(), "running" | "paused");
            let filtered = !filters.is_empty();
            if !all && !running && !(filtered && (filters.contains_key("status") || filters.contains_key("exited"))) && limit.is_none() {
                continue;
            }
            if let Some(ids) = filters.get("id") {
                if !ids.iter().any(|id| container.id.starts_with(id.as_str())) {
                    continue;
                }
            }
            if let Some(names) = filters.get("name") {
                if !names.iter().any(|n| container.name.contains(n.trim_start_matches('/'))) {
                    continue;
                }
            }
            if let Some(statuses) = filters.get("status") {
                if !statuses.iter().any(|s| s == &container.state) {
                    continue;
                }
            }
            if let Some(codes) = filters.get("exited") {
                if container.state != "exited" || !codes.iter().any(|c| c.parse::<i64>().ok() == Some(container.exit_code)) {
                    continue;
                }
            }
            if let Some(labels) = filters.get("label") {
                if !labels_match(&container.spec.labels, labels) {
                    continue;
                }
            }
            if let Some(ancestors) = filters.get("ancestor") {
                let matches = ancestors
                    .iter()
                    .any(|a| views.find_image(a).map(|i| i.id == container.image_id).unwrap_or(false) || container.spec.image == *a);
                if !matches {
                    continue;
                }
            }
            if let Some(networks) = filters.get("network") {
                let matches =
                    networks.iter().any(|n| views.find_network(n).map(|n| container.networks.contains_key(&n.id)).unwrap_or(false));
                if !matches {
                    continue;
                }
            }
            if let Some(volumes) = filters.get("volume") {
                if !volumes.iter().any(|v| container.spec.host.mounts.iter().any(|m| &m.volume == v || &m.target == v)) {
                    continue;
                }
            }
            let image_name =
                if image.map(|i| i.tags.contains(&berth_core::model::normalize_reference(&container.spec.image))).unwrap_or(false) {
                    container.spec.image.clone()
                } else {
                    container.image_id.clone()
                };
            rows.push(json!({
                "Id": container.id,
                "Names": [format!("/{}", container.name)],
                "Image": image_name,
                "ImageID": container.image_id,
                "Command": command_line(container),
                "Created": container.created_ms / 1000,
                "Ports": ports_json(&state, container),
                "Labels": container.spec.labels,
                "State": container.state,
                "Status": status_text(container, now_ms),
                "HostConfig": { "NetworkMode": container.spec.host.network_mode },
                "NetworkSettings": { "Networks": networks_json(views, container) },
                "Mounts": mounts_json(container),
            }));
        }
        rows
    });
    let rows = match limit {
        Some(limit) => rows.into_iter().take(limit).collect(),
        None => rows,
    };
    Ok(Json(rows))
}

fn mounts_json(container: &ContainerView) -> Vec<Value> {
    container
        .spec
        .host
        .mounts
        .iter()
        .map(|mount| {
            json!({
                "Type": "volume",
                "Name": mount.volume,
                "Source": format!("/var/lib/berth/volumes/{}/_data", mount.volume),
                "Destination": mount.target,
                "Driver": "local",
                "Mode": if mount.read_only { "ro" } else { "z" },
                "RW": !mount.read_only,
                "Propagation": "",
            })
        })
        .collect()
}

trait CreationOrder {
    fn position_created(&self) -> (u64, &str);
}

impl CreationOrder for ContainerView {
    fn position_created(&self) -> (u64, &str) {
        (self.created_ms, &self.id)
    }
}

pub fn inspect_json(state: &DockerState, views: &DockerViews, container: &ContainerView) -> Value {
    let running = matches!(container.state.as_str(), "running" | "paused");
    let pid = if running { state.containers.as_ref().and_then(|c| c.pid(&container.id)).unwrap_or(0) } else { 0 };
    let mut ports = serde_json::Map::new();
    let published = state.containers.as_ref().map(|c| c.published_ports(&container.id)).unwrap_or_default();
    for exposed in &container.spec.exposed_ports {
        let bound: Vec<Value> = published
            .iter()
            .filter(|(p, _, _)| p == exposed)
            .map(|(_, ip, port)| json!({ "HostIp": ip, "HostPort": port.to_string() }))
            .collect();
        ports.insert(exposed.clone(), if bound.is_empty() || !running { Value::Null } else { Value::Array(bound) });
    }
    let networks = networks_json(views, container);
    let bridge =
        container.networks.iter().find_map(|(id, address)| views.networks.get(id).filter(|n| n.name == "bridge").map(|n| (n, address)));
    let (path, args) = {
        let mut all: Vec<String> = container.spec.entrypoint.iter().chain(container.spec.cmd.iter()).cloned().collect();
        if all.is_empty() {
            (String::new(), Vec::new())
        } else {
            let path = all.remove(0);
            (path, all)
        }
    };
    let port_bindings: serde_json::Map<String, Value> = container
        .spec
        .host
        .port_bindings
        .iter()
        .map(|(port, bindings)| {
            (port.clone(), Value::Array(bindings.iter().map(|b| json!({ "HostIp": b.host_ip, "HostPort": b.host_port })).collect()))
        })
        .collect();
    let exposed: serde_json::Map<String, Value> = container.spec.exposed_ports.iter().map(|p| (p.clone(), json!({}))).collect();
    json!({
        "Id": container.id,
        "Created": rfc3339_ms(container.created_ms),
        "Path": path,
        "Args": args,
        "State": {
            "Status": container.state,
            "Running": running,
            "Paused": container.state == "paused",
            "Restarting": false,
            "OOMKilled": false,
            "Dead": false,
            "Pid": pid,
            "ExitCode": container.exit_code,
            "Error": container.error,
            "StartedAt": rfc3339_ms(container.started_ms),
            "FinishedAt": rfc3339_ms(container.finished_ms),
        },
        "Image": container.image_id,
        "ResolvConfPath": "",
        "HostnamePath": "",
        "HostsPath": "",
        "LogPath": "",
        "Name": format!("/{}", container.name),
        "RestartCount": container.restart_count,
        "Driver": "overlay2",
        "Platform": "linux",
        "MountLabel": "",
        "ProcessLabel": "",
        "AppArmorProfile": "",
        "ExecIDs": null,
        "HostConfig": {
            "Binds": null,
            "NetworkMode": container.spec.host.network_mode,
            "PortBindings": port_bindings,
            "RestartPolicy": { "Name": container.spec.host.restart_policy, "MaximumRetryCount": 0 },
            "AutoRemove": container.spec.host.auto_remove,
            "Memory": container.spec.host.memory_bytes,
            "NanoCpus": container.spec.host.nano_cpus,
            "CpuShares": container.spec.host.cpu_shares,
            "LogConfig": { "Type": "json-file", "Config": {} },
            "Privileged": false,
            "PublishAllPorts": false,
            "ReadonlyRootfs": false,
        },
        "GraphDriver": { "Name": "overlay2", "Data": null },
        "Mounts": mounts_json(container),
        "Config": {
            "Hostname": container.spec.hostname,
            "Domainname": "",
            "User": container.spec.user,
            "AttachStdin": false,
            "AttachStdout": false,
            "AttachStderr": false,
            "ExposedPorts": if exposed.is_empty() { Value::Null } else { Value::Object(exposed) },
            "Tty": container.spec.tty,
            "OpenStdin": container.spec.open_stdin,
            "StdinOnce": false,
            "Env": container.spec.env,
            "Cmd": if container.spec.cmd.is_empty() { Value::Null } else { json!(container.spec.cmd) },
            "Image": container.spec.image,
            "Volumes": null,
            "WorkingDir": container.spec.working_dir,
            "Entrypoint": if container.spec.entrypoint.is_empty() { Value::Null } else { json!(container.spec.entrypoint) },
            "OnBuild": null,
            "Labels": container.spec.labels,
            "StopSignal": container.spec.stop_signal,
            "StopTimeout": container.spec.stop_timeout_s,
        },
        "NetworkSettings": {
            "Bridge": "",
            "SandboxID": "",
            "SandboxKey": "",
            "Ports": ports,
            "HairpinMode": false,
            "LinkLocalIPv6Address": "",
            "LinkLocalIPv6PrefixLen": 0,
            "SecondaryIPAddresses": null,
            "SecondaryIPv6Addresses": null,
            "EndpointID": "",
            "Gateway": bridge.map(|(n, _)| n.gateway.clone()).unwrap_or_default(),
            "GlobalIPv6Address": "",
            "GlobalIPv6PrefixLen": 0,
            "IPAddress": bridge.map(|(_, a)| a.clone()).unwrap_or_default(),
            "IPPrefixLen": bridge.and_then(|(n, _)| n.subnet.split('/').nth(1).and_then(|p| p.parse::<u32>().ok())).unwrap_or(0),
            "IPv6Gateway": "",
            "MacAddress": bridge.map(|(_, a)| mac_address(a)).unwrap_or_default(),
            "Networks": networks,
        },
    })
}

pub async fn inspect(State(state): State<DockerState>, Path(reference): Path<String>) -> Result<Json<Value>, ApiError> {
    let container = find(&state, &reference)?;
    Ok(Json(state.views.read(|views| inspect_json(&state, views, &container))))
}

/// Waits (bounded) until the container's view satisfies `done`.
pub async fn wait_until(state: &DockerState, id: &str, timeout: Duration, done: impl Fn(Option<&ContainerView>) -> bool) -> bool {
    let mut changes = state.views.subscribe();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if state.views.read(|views| done(views.containers.get(id))) {
            return true;
        }
        match tokio::time::timeout_at(deadline, changes.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return false,
            Err(_) => return false,
        }
    }
}

/// How long `start` waits for the infrastructure to run the container.
const START_WAIT_S: u64 = 30;

pub async fn start(State(state): State<DockerState>, Path(reference): Path<String>) -> Result<Response, ApiError> {
    let container = find(&state, &reference)?;
    match state.execute(Command::StartContainer { id: container.id.clone() }).await {
        Ok(_) => {}
        Err(error) if error.status == StatusCode::CONFLICT && matches!(container.state.as_str(), "running") => {
            return Ok(StatusCode::NOT_MODIFIED.into_response())
        }
        Err(error) if error.status == StatusCode::CONFLICT && container.state == "paused" => {
            return Err(ApiError::conflict("cannot start a paused container, try unpause instead"))
        }
        Err(error) => return Err(error),
    }
    state.await_started(&container.id, Duration::from_secs(START_WAIT_S)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn stop_timeout(query: &HashMap<String, String>, container: &ContainerView) -> Result<Option<i64>, ApiError> {
    match query.get("t").or_else(|| query.get("timeout")) {
        Some(text) => text.parse::<i64>().map(Some).map_err(|_| ApiError::bad_request(format!("invalid stop timeout {text:?}"))),
        None => Ok(container.spec.stop_timeout_s),
    }
}

async fn stop_and_wait(state: &DockerState, container: &ContainerView, timeout_s: Option<i64>) -> Result<bool, ApiError> {
    match state.execute(Command::StopContainer { id: container.id.clone(), timeout_s }).await {
        Ok(_) => {}
        Err(error) if error.status == StatusCode::CONFLICT && matches!(container.state.as_str(), "created" | "exited") => return Ok(false),
        Err(error) => return Err(error),
    }
    let wait_s = timeout_s.unwrap_or(10).max(0) as u64 + 30;
    let stopped = wait_until(state, &container.id, Duration::from_secs(wait_s), |c| c.map(|c| c.state == "exited").unwrap_or(true)).await;
    if !stopped {
        return Err(ApiError::internal(format!("container {} did not stop within {wait_s} s", container.id)));
    }
    Ok(true)
}

pub async fn stop(
    State(state): State<DockerState>,
    Path(reference): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let container = find(&state, &reference)?;
    let timeout_s = stop_timeout(&query, &container)?;
    if stop_and_wait(&state, &container, timeout_s).await? {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Ok(StatusCode::NOT_MODIFIED.into_response())
    }
}

pub async fn restart(
    State(state): State<DockerState>,
    Path(reference): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let container = find(&state, &reference)?;
    let timeout_s = stop_timeout(&query, &container)?;
    stop_and_wait(&state, &container, timeout_s).await?;
    state.execute(Command::StartContainer { id: container.id.clone() }).await?;
    state.await_started(&container.id, Duration::from_secs(START_WAIT_S)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Signal names and numbers Docker accepts.
pub fn normalize_signal(text: &str) -> Result<String, ApiError> {
    const NAMES: [(&str, i32); 16] = [
        ("HUP", 1),
        ("INT", 2),
        ("QUIT", 3),
        ("ILL", 4),
        ("TRAP", 5),
        ("ABRT", 6),
        ("KILL", 9),
        ("USR1", 10),
        ("SEGV", 11),
        ("USR2", 12),
        ("PIPE", 13),
        ("ALRM", 14),
        ("TERM", 15),
        ("CHLD", 17),
        ("CONT", 18),
        ("STOP", 19),
    ];
    let upper = text.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    if let Ok(number) = name.parse::<i32>() {
        if (1..=64).contains(&number) {
            return Ok(NAMES
                .iter()
                .find(|(_, n)| *n == number)
                .map(|(name, _)| format!("SIG{name}"))
                .unwrap_or_else(|| number.to_string()));
        }
    } else if NAMES.iter().any(|(n, _)| *n == name) {
        return Ok(format!("SIG{name}"));
    }
    Err(ApiError::bad_request(format!("Invalid signal: {text}")))
}

pub async fn kill(
    State(state): State<DockerState>,
    Path(reference): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let container = find(&state, &reference)?;
    let signal = normalize_signal(query.get("signal").map(String::as_str).filter(|s| !s.is_empty()).unwrap_or("KILL"))?;
    match state.execute(Command::KillContainer { id: container.id.clone(), signal: signal.clone() }).await {
        Ok(_) => {}
        Err(error) if error.status == StatusCode::CONFLICT => {
            return Err(ApiError::conflict(format!("Cannot kill container: {reference}: container {} is not running", container.id)))
        }
        Err(error) => return Err(error),
    }
    if signal == "SIGKILL" {
        wait_until(&state, &container.id, Duration::from_secs(10), |c| c.map(|c| c.state == "exited").unwrap_or(true)).await;
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub async fn pause(State(state): State<DockerState>, Path(reference): Path<String>) -> Result<Response, ApiError> {
    freeze(&state, &reference, |id| Command::PauseContainer { id }, "running").await
}

pub async fn unpause(State(state): State<DockerState>, Path(reference): Path<String>) -> Result<Response, ApiError> {
    freeze(&state, &reference, |id| Command::UnpauseContainer { id }, "paused").await
}

/// Pause or unpause: a wrong state is Docker's 409 "container X is not <required_state>".
async fn freeze(state: &DockerState, reference: &str, command: fn(String) -> Command, required_state: &str) -> Result<Response, ApiError> {
    let container = find(state, reference)?;
    state.execute(command(container.id.clone())).await.map_err(|error| match error.status {
        StatusCode::CONFLICT => ApiError::conflict(format!("container {} is not {required_state}", container.id)),
        _ => error,
    })?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub async fn rename(
    State(state): State<DockerState>,
    Path(reference): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let container = find(&state, &reference)?;
    let new_name = query.get("name").map(|n| n.trim_start_matches('/').to_string()).unwrap_or_default();
    if new_name.is_empty() {
        return Err(ApiError::bad_request("Neither old nor new names may be empty"));
    }
    state.execute(Command::RenameContainer { id: container.id.clone(), new_name }).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub async fn remove(
    State(state): State<DockerState>,
    Path(reference): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let container = find(&state, &reference)?;
    let force = flag(&query, "force");
    match state.execute(Command::RemoveContainer { id: container.id.clone(), force }).await {
        Ok(_) => {}
        Err(error) if error.status == StatusCode::CONFLICT => {
            return Err(ApiError::conflict(format!(
                "cannot remove container \"/{}\": container is {}: stop the container before removing or force remove",
                container.name, container.state
            )))
        }
        Err(error) => return Err(error),
    }
    if flag(&query, "v") {
        remove_anonymous_volumes(&state, &container).await;
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Removes the anonymous volumes a removed container used (`rm -v`, `--rm`).
pub async fn remove_anonymous_volumes(state: &DockerState, container: &ContainerView) {
    for mount in &container.spec.host.mounts {
        let anonymous = state
            .views
            .read(|views| views.volumes.get(&mount.volume).map(|v| v.labels.contains_key(ANONYMOUS_VOLUME_LABEL)).unwrap_or(false));
        if anonymous {
            if let Err(error) = state.execute(Command::RemoveVolume { name: mount.volume.clone(), force: true }).await {
                tracing::warn!(volume = %mount.volume, message = %error.message, "could not remove an anonymous volume");
            }
        }
    }
}

pub async fn prune(State(state): State<DockerState>, Query(query): Query<HashMap<String, String>>) -> Result<Json<Value>, ApiError> {
    let filters = filters(&query)?;
    check_filter_keys(&filters, &["label", "until"])?;
    let until_ms = filters.get("until").and_then(|u| u.first()).map(|u| super::util::parse_time_ms(u)).transpose()?;
    let candidates: Vec<String> = state.views.read(|views| {
        views
            .containers
            .values()
            .filter(|c| !matches!(c.state.as_str(), "running" | "paused"))
            .filter(|c| filters.get("label").map(|l| labels_match(&c.spec.labels, l)).unwrap_or(true))
            .filter(|c| until_ms.map(|u| c.created_ms < u).unwrap_or(true))
            .map(|c| c.id.clone())
            .collect()
    });
    let mut deleted = Vec::new();
    for id in candidates {
        match state.execute(Command::RemoveContainer { id: id.clone(), force: false }).await {
            Ok(_) => deleted.push(id),
            Err(error) if error.status == StatusCode::NOT_FOUND || error.status == StatusCode::CONFLICT => {}
            Err(error) => return Err(error),
        }
    }
    Ok(Json(json!({ "ContainersDeleted": if deleted.is_empty() { Value::Null } else { json!(deleted) }, "SpaceReclaimed": 0 })))
}
