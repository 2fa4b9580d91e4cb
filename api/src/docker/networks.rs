//! Network endpoints: create (with subnet allocation from the address pool),
//! list, inspect, remove, connect, disconnect, prune.

use super::containers::{find, mac_address, parse_body};
use super::errors::ApiError;
use super::util::{check_filter_keys, filters, labels_match, rfc3339_ms};
use super::DockerState;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use berth_core::model::{format_ipv4, Ipv4Subnet, PREDEFINED_NETWORK_NAMES};
use berth_core::Command;
use berth_projections::{DockerViews, NetworkView};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct IpamPoolBody {
    subnet: Option<String>,
    gateway: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct IpamBody {
    config: Option<Vec<IpamPoolBody>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct CreateBody {
    name: Option<String>,
    driver: Option<String>,
    internal: Option<bool>,
    #[serde(rename = "IPAM")]
    ipam: Option<IpamBody>,
    labels: Option<BTreeMap<String, String>>,
    #[serde(rename = "EnableIPv6")]
    enable_ipv6: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct EndpointIpam {
    #[serde(rename = "IPv4Address")]
    ipv4_address: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct EndpointConfig {
    #[serde(rename = "IPAMConfig")]
    ipam_config: Option<EndpointIpam>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct ConnectBody {
    container: Option<String>,
    endpoint_config: Option<EndpointConfig>,
    force: Option<bool>,
}

/// Where user networks get their subnets when the client names none.
#[derive(Debug, Clone, Copy)]
pub struct AddressPool {
    pub base: Ipv4Subnet,
    pub subnet_prefix_length: u8,
}

impl Default for AddressPool {
    fn default() -> Self {
        AddressPool { base: Ipv4Subnet::parse("172.18.0.0/15").expect("valid pool"), subnet_prefix_length: 24 }
    }
}

/// The first subnet of the pool's size that overlaps no network's, and its gateway.
pub fn allocate_subnet(pool: AddressPool, views: &DockerViews) -> Option<(String, String)> {
    let taken: Vec<Ipv4Subnet> = views.networks.values().filter_map(|n| Ipv4Subnet::parse(&n.subnet)).collect();
    let step = 1u32 << (32 - pool.subnet_prefix_length);
    let pool_size = 1u64 << (32 - pool.base.prefix_length);
    let mut offset = 0u64;
    while offset < pool_size {
        let base = pool.base.base + offset as u32;
        let candidate = Ipv4Subnet { base, prefix_length: pool.subnet_prefix_length };
        if !taken.iter().any(|t| t.contains(candidate.base) || candidate.contains(t.base)) {
            return Some((format!("{}/{}", format_ipv4(base), pool.subnet_prefix_length), format_ipv4(base + 1)));
        }
        offset += u64::from(step);
    }
    None
}

fn network_json(views: &DockerViews, network: &NetworkView, with_containers: bool) -> Value {
    let prefix = network.subnet.split('/').nth(1).unwrap_or("0");
    let mut containers = serde_json::Map::new();
    if with_containers {
        for (container_id, address) in &network.endpoints {
            let name = views.containers.get(container_id).map(|c| c.name.clone()).unwrap_or_default();
            containers.insert(
                container_id.clone(),
                json!({ "Name": name, "EndpointID": "", "MacAddress": mac_address(address), "IPv4Address": format!("{address}/{prefix}"), "IPv6Address": "" }),
            );
        }
    }
    let config = if network.subnet.is_empty() { json!([]) } else { json!([{ "Subnet": network.subnet, "Gateway": network.gateway }]) };
    json!({
        "Name": network.name,
        "Id": network.id,
        "Created": rfc3339_ms(network.created_ms),
        "Scope": "local",
        "Driver": network.driver,
        "EnableIPv4": true,
        "EnableIPv6": false,
        "IPAM": { "Driver": "default", "Options": null, "Config": config },
        "Internal": network.internal,
        "Attachable": false,
        "Ingress": false,
        "ConfigFrom": { "Network": "" },
        "ConfigOnly": false,
        "Containers": containers,
        "Options": {},
        "Labels": network.labels,
    })
}

pub async fn create(State(state): State<DockerState>, body: Bytes) -> Result<Response, ApiError> {
    let body: CreateBody = parse_body(&body)?;
    let name = body.name.filter(|n| !n.is_empty()).ok_or_else(|| ApiError::bad_request("network name is required"))?;
    let driver = body.driver.filter(|d| !d.is_empty()).unwrap_or_else(|| "bridge".into());
    if driver != "bridge" {
        return Err(ApiError::bad_request(format!("plugin \"{driver}\" not found: only the bridge driver can create networks")));
    }
    if body.enable_ipv6.unwrap_or(false) {
        return Err(ApiError::bad_request("IPv6 networks are not supported"));
    }
    if state.views.read(|views| views.networks.values().any(|n| n.name == name)) {
        return Err(ApiError::conflict(format!("network with name {name} already exists")));
    }
    let pool = body.ipam.and_then(|i| i.config).and_then(|c| c.into_iter().next());
    let (subnet, gateway) = match pool.and_then(|p| p.subnet.map(|s| (s, p.gateway))) {
        Some((subnet, gateway)) => {
            let parsed = Ipv4Subnet::parse(&subnet).ok_or_else(|| ApiError::bad_request(format!("invalid subnet {subnet:?}")))?;
            let gateway = gateway.filter(|g| !g.is_empty()).unwrap_or_else(|| format_ipv4(parsed.base + 1));
            (format!("{}/{}", format_ipv4(parsed.base), parsed.prefix_length), gateway)
        }
        None => state.views.read(|views| allocate_subnet(state.address_pool(), views)).ok_or_else(|| {
            ApiError::new(
                StatusCode::FORBIDDEN,
                "could not find an available, non-overlapping IPv4 address pool among the defaults to assign to the network",
            )
        })?,
    };
    let id = state.random_hex();
    state
        .execute(Command::CreateNetwork {
            id: id.clone(),
            name,
            driver,
            subnet,
            gateway,
            internal: body.internal.unwrap_or(false),
            labels: body.labels.unwrap_or_default(),
        })
        .await?;
    Ok((StatusCode::CREATED, Json(json!({ "Id": id, "Warning": "" }))).into_response())
}

fn find_network(state: &DockerState, reference: &str) -> Result<NetworkView, ApiError> {
    state
        .views
        .read(|views| views.find_network(reference).cloned())
        .ok_or_else(|| ApiError::not_found(format!("network {reference} not found")))
}

pub async fn list(State(state): State<DockerState>, Query(query): Query<HashMap<String, String>>) -> Result<Json<Value>, ApiError> {
    let filters = filters(&query)?;
    check_filter_keys(&filters, &["name", "id", "driver", "label", "type", "scope", "dangling"])?;
    let networks = state.views.read(|views| {
        views
            .networks
            .values()
            .filter(|n| filters.get("name").map(|v| v.iter().any(|x| n.name.contains(x.as_str()))).unwrap_or(true))
            .filter(|n| filters.get("id").map(|v| v.iter().any(|x| n.id.starts_with(x.as_str()))).unwrap_or(true))
            .filter(|n| filters.get("driver").map(|v| v.contains(&n.driver)).unwrap_or(true))
            .filter(|n| filters.get("label").map(|l| labels_match(&n.labels, l)).unwrap_or(true))
            .filter(|n| {
                filters
                    .get("type")
                    .map(|v| v.iter().any(|t| (t == "builtin") == PREDEFINED_NETWORK_NAMES.contains(&n.name.as_str())))
                    .unwrap_or(true)
            })
            .filter(|n| {
                filters.get("dangling").map(|v| v.iter().any(|d| (d == "true" || d == "1") == n.endpoints.is_empty())).unwrap_or(true)
            })
            .map(|n| network_json(views, n, false))
            .collect::<Vec<_>>()
    });
    Ok(Json(Value::Array(networks)))
}

pub async fn inspect(State(state): State<DockerState>, Path(reference): Path<String>) -> Result<Json<Value>, ApiError> {
    let network = find_network(&state, &reference)?;
    Ok(Json(state.views.read(|views| network_json(views, &network, true))))
}

pub async fn remove(State(state): State<DockerState>, Path(reference): Path<String>) -> Result<Response, ApiError> {
    let network = find_network(&state, &reference)?;
    match state.execute(Command::RemoveNetwork { id: network.id.clone() }).await {
        Ok(_) => Ok(StatusCode::NO_CONTENT.into_response()),
        Err(error) if error.status == StatusCode::CONFLICT => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("error while removing network: network {} id {} has active endpoints", network.name, network.id),
        )),
        Err(error) => Err(error),
    }
}

pub async fn connect(State(state): State<DockerState>, Path(reference): Path<String>, body: Bytes) -> Result<Response, ApiError> {
    let network = find_network(&state, &reference)?;
    let body: ConnectBody = parse_body(&body)?;
    let container = find(&state, body.container.as_deref().unwrap_or_default())?;
    let ipv4_address = body.endpoint_config.and_then(|e| e.ipam_config).and_then(|i| i.ipv4_address).filter(|a| !a.is_empty());
    if matches!(container.spec.host.network_mode.as_str(), "host" | "none") {
        return Err(ApiError::bad_request("container cannot be disconnected from host network or connected to host network"));
    }
    state.execute(Command::ConnectNetwork { network_id: network.id.clone(), container_id: container.id.clone(), ipv4_address }).await?;
    Ok(StatusCode::OK.into_response())
}

pub async fn disconnect(State(state): State<DockerState>, Path(reference): Path<String>, body: Bytes) -> Result<Response, ApiError> {
    let network = find_network(&state, &reference)?;
    let body: ConnectBody = parse_body(&body)?;
    let container = find(&state, body.container.as_deref().unwrap_or_default())?;
    state
        .execute(Command::DisconnectNetwork {
            network_id: network.id.clone(),
            container_id: container.id.clone(),
            force: body.force.unwrap_or(false),
        })
        .await?;
    Ok(StatusCode::OK.into_response())
}

pub async fn prune(State(state): State<DockerState>, Query(query): Query<HashMap<String, String>>) -> Result<Json<Value>, ApiError> {
    let filters = filters(&query)?;
    check_filter_keys(&filters, &["label", "until"])?;
    let candidates: Vec<(String, String)> = state.views.read(|views| {
        views
            .networks
            .values()
            .filter(|n| !PREDEFINED_NETWORK_NAMES.contains(&n.name.as_str()) && n.endpoints.is_empty())
            .filter(|n| filters.get("label").map(|l| labels_match(&n.labels, l)).unwrap_or(true))
            .map(|n| (n.id.clone(), n.name.clone()))
            .collect()
    });
    let mut deleted = Vec::new();
    for (id, name) in candidates {
        if state.execute(Command::RemoveNetwork { id }).await.is_ok() {
            deleted.push(name);
        }
    }
    Ok(Json(json!({ "NetworksDeleted": if deleted.is_empty() { Value::Null } else { json!(deleted) } })))
}
