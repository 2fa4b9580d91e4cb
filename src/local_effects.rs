//! Local side effects that follow the views rather than a single command:
//! `--rm` (auto-remove after exit), live `network connect/disconnect` of
//! running containers, `/etc/hosts` of containers that share a network (how
//! containers reach each other by name), and deleting the data of removed
//! volumes. Each pass is level-triggered: it compares what the views say with
//! what it last enacted, so a missed wake-up is repaired by the next one.

use crate::local::LocalInfrastructure;
use berth_api::docker::DockerState;
use berth_core::infrastructure::PlannedNetwork;
use berth_core::Command;
use berth_projections::DockerViews;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

/// The longest a pass waits for a change before looking again anyway.
const PASS_INTERVAL_MS_MAX: u64 = 2_000;
/// Changes arriving within this window are handled by one pass.
const DEBOUNCE_MS: u64 = 10;

type HostsEntries = Vec<(String, Vec<String>)>;

#[derive(Default)]
struct Enacted {
    hosts: HashMap<String, HostsEntries>,
    volumes: BTreeSet<String>,
}

pub fn hosts_for(views: &DockerViews, id: &str) -> HostsEntries {
    let mut entries: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let Some(container) = views.containers.get(id) else { return Vec::new() };
    for network_id in container.networks.keys() {
        let Some(network) = views.networks.get(network_id) else { continue };
        for (peer_id, address) in &network.endpoints {
            let Some(peer) = views.containers.get(peer_id) else { continue };
            let names = entries.entry(address.clone()).or_default();
            for name in [peer.name.clone(), peer.spec.hostname.clone(), peer.id[..12].to_string()] {
                if !name.is_empty() && !names.contains(&name) {
                    names.push(name);
                }
            }
        }
    }
    entries.into_iter().collect()
}

fn planned(views: &DockerViews, network_id: &str, address: &str) -> Option<PlannedNetwork> {
    let network = views.networks.get(network_id)?;
    let prefix_length = network.subnet.split('/').nth(1)?.parse().ok()?;
    Some(PlannedNetwork {
        network_id: network.id.clone(),
        network_name: network.name.clone(),
        ipv4_address: address.to_string(),
        prefix_length,
        gateway: network.gateway.clone(),
        internal: network.internal,
    })
}

/// Runs the local effects until the process ends: auto-removal on its own
/// loop (it must be prompt: `docker run --rm` waits for it), networks, hosts
/// and volume data on another (they may wait on a container's shim).
pub fn spawn(state: DockerState, infrastructure: Arc<LocalInfrastructure>) -> tokio::task::JoinHandle<()> {
    let removal_state = state.clone();
    tokio::spawn(async move {
        let mut changes = removal_state.views.subscribe();
        let mut auto_removed = BTreeSet::new();
        loop {
            let _ = tokio::time::timeout(Duration::from_millis(PASS_INTERVAL_MS_MAX), changes.changed()).await;
            auto_remove_pass(&removal_state, &mut auto_removed).await;
        }
    });
    tokio::spawn(async move {
        let mut changes = state.views.subscribe();
        let mut enacted = Enacted { volumes: state.views.read(|v| v.volumes.keys().cloned().collect()), ..Enacted::default() };
        loop {
            let _ = tokio::time::timeout(Duration::from_millis(PASS_INTERVAL_MS_MAX), changes.changed()).await;
            tokio::time::sleep(Duration::from_millis(DEBOUNCE_MS)).await;
            pass(&state, &infrastructure, &mut enacted).await;
        }
    })
}

async fn auto_remove_pass(state: &DockerState, auto_removed: &mut BTreeSet<String>) {
    // --rm: remove containers whose run ended.
    let finished: Vec<berth_projections::ContainerView> = state.views.read(|views| {
        views.containers.values().filter(|c| c.spec.host.auto_remove && c.state == "exited" && c.generation > 0).cloned().collect()
    });
    for container in finished {
        if auto_removed.insert(container.id.clone()) {
            match state.execute(Command::RemoveContainer { id: container.id.clone(), force: true }).await {
                Ok(_) => berth_api::docker::remove_anonymous_volumes(state, &container).await,
                Err(error) => {
                    tracing::warn!(container = %container.id, message = %error.message, "auto-remove failed");
                    auto_removed.remove(&container.id);
                }
            }
        }
    }
    if !auto_removed.is_empty() {
        state.views.read(|views| auto_removed.retain(|id| views.containers.contains_key(id)));
    }
}

async fn pass(state: &DockerState, infrastructure: &Arc<LocalInfrastructure>, enacted: &mut Enacted) {
    // Networks and hosts of running containers.
    let work: Vec<(String, BTreeMap<String, String>, HostsEntries, Vec<(String, Option<PlannedNetwork>)>)> = state.views.read(|views| {
        views
            .containers
            .values()
            // Only the local runtime's containers: a vSphere VCH's are VMs.
            .filter(|c| c.vch == state.vch)
            .filter(|c| c.state == "running" || c.state == "paused")
            .filter(|c| !matches!(c.spec.host.network_mode.as_str(), "host" | "none"))
            .map(|c| {
                let plans = c.networks.iter().map(|(id, address)| (id.clone(), planned(views, id, address))).collect();
                (c.id.clone(), c.networks.clone(), hosts_for(views, &c.id), plans)
            })
            .collect()
    });
    for (id, desired_networks, hosts, plans) in work {
        let infrastructure = infrastructure.clone();
        let previous = enacted.hosts.get(&id).cloned();
        let result = tokio::task::spawn_blocking(move || {
            if !infrastructure.is_running(&id) {
                return (id, None);
            }
            let attached = infrastructure.attached_networks(&id);
            for (network_id, plan) in &plans {
                if !attached.contains(network_id) {
                    if let Some(plan) = plan {
                        if let Err(error) = infrastructure.connect(&id, plan) {
                            tracing::warn!(container = %id, network = %network_id, %error, "live connect failed");
                        }
                    }
                }
            }
            for network_id in attached.iter().filter(|n| !desired_networks.contains_key(*n)) {
                if let Err(error) = infrastructure.disconnect(&id, network_id) {
                    tracing::warn!(container = %id, network = %network_id, %error, "live disconnect failed");
                }
            }
            if previous.as_ref() != Some(&hosts) {
                match infrastructure.update_hosts(&id, &hosts) {
                    Ok(()) => return (id, Some(hosts)),
                    Err(error) => tracing::debug!(container = %id, %error, "updating /etc/hosts failed; retrying on the next pass"),
                }
            }
            (id, previous)
        })
        .await;
        if let Ok((id, Some(hosts))) = result {
            enacted.hosts.insert(id, hosts);
        }
    }
    if !enacted.hosts.is_empty() {
        state.views.read(|views| enacted.hosts.retain(|id, _| views.containers.contains_key(id)));
    }

    // Data of removed volumes (compared only when the count changed or a removal may have happened).
    let volumes: BTreeSet<String> = state.views.read(|views| views.volumes.keys().cloned().collect());
    for removed in enacted.volumes.difference(&volumes) {
        if let Err(error) = infrastructure.remove_volume_data(removed) {
            tracing::warn!(volume = %removed, %error, "removing a volume's data failed");
        }
    }
    enacted.volumes = volumes;
}
