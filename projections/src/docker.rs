//! The Docker views: containers, images, volumes, networks and VCHs as the
//! Docker API reads them.

use berth_core::events::{ContainerSpec, VchSpec};
use berth_core::{DomainEvent, Position, RecordedEvent, StreamKind};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VchView {
    pub name: String,
    pub spec: VchSpec,
    pub created_ms: u64,
    /// The last action on the VCH's own objects that kept failing, if any.
    #[serde(default)]
    pub last_error: Option<String>,
    /// How many drifts of its infrastructure were observed and repaired.
    #[serde(default)]
    pub drift_count: u64,
    #[serde(default)]
    pub last_drift: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerView {
    pub id: String,
    pub name: String,
    pub vch: String,
    pub image_id: String,
    pub spec: ContainerSpec,
    /// Docker's state word: created, running, paused, exited.
    pub state: String,
    pub exit_code: i64,
    pub created_ms: u64,
    pub started_ms: u64,
    pub finished_ms: u64,
    pub restart_count: u64,
    /// How many times it was started.
    pub generation: u64,
    /// Network id to IPv4 address.
    pub networks: BTreeMap<String, String>,
    /// The position of the last event that changed this container.
    pub position: u64,
    /// Docker's State.Error: why enacting the container keeps failing (cleared by a start).
    #[serde(default)]
    pub error: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageView {
    pub id: String,
    pub tags: BTreeSet<String>,
    pub size_bytes: u64,
    pub layer_digests: Vec<String>,
    pub created_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeView {
    pub name: String,
    pub driver: String,
    pub labels: BTreeMap<String, String>,
    pub created_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkView {
    pub id: String,
    pub name: String,
    pub driver: String,
    pub subnet: String,
    pub gateway: String,
    pub internal: bool,
    pub labels: BTreeMap<String, String>,
    pub created_ms: u64,
    /// Container id to IPv4 address.
    pub endpoints: BTreeMap<String, String>,
}

/// All Docker views at one log position.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DockerViews {
    pub position: Position,
    pub vchs: BTreeMap<String, VchView>,
    pub containers: BTreeMap<String, ContainerView>,
    pub images: BTreeMap<String, ImageView>,
    pub volumes: BTreeMap<String, VolumeView>,
    pub networks: BTreeMap<String, NetworkView>,
}

impl DockerViews {
    /// Folds one event. Events must come in position order; an event at or
    /// before the current position is ignored (already applied).
    pub fn apply(&mut self, recorded: &RecordedEvent) {
        if recorded.position <= self.position {
            return;
        }
        self.position = recorded.position;
        let key = &recorded.stream.key;
        let position = recorded.position.0;
        match (&recorded.event, recorded.stream.kind) {
            (DomainEvent::VchCreated { name, spec }, _) => {
                self.vchs.insert(
                    key.clone(),
                    VchView {
                        name: name.clone(),
                        spec: spec.clone(),
                        created_ms: recorded.recorded_at_ms,
                        last_error: None,
                        drift_count: 0,
                        last_drift: None,
                    },
                );
            }
            (DomainEvent::VchConfigured { spec }, _) => {
                if let Some(vch) = self.vchs.get_mut(key) {
                    vch.spec = spec.clone();
                }
            }
            (DomainEvent::VchDeleted, _) => {
                self.vchs.remove(key);
            }
            (DomainEvent::VchUpgraded { to_version, .. }, _) => {
                if let Some(vch) = self.vchs.get_mut(key) {
                    vch.spec.version = Some(to_version.clone());
                }
            }
            (DomainEvent::DriftObserved { description }, StreamKind::Vch) => {
                if let Some(vch) = self.vchs.get_mut(key) {
                    vch.drift_count += 1;
                    vch.last_drift = Some(description.clone());
                }
            }
            (DomainEvent::ReconcileFailed { action, error, .. }, StreamKind::Vch) => {
                if let Some(vch) = self.vchs.get_mut(key) {
                    vch.last_error = Some(format!("{action}: {error}"));
                }
            }
            (DomainEvent::ContainerCreated { name, vch, image_id, spec, created_ms }, _) => {
                self.containers.insert(
                    key.clone(),
                    ContainerView {
                        id: key.clone(),
                        name: name.clone(),
                        vch: vch.clone(),
                        image_id: image_id.clone(),
                        spec: spec.clone(),
                        state: "created".into(),
                        exit_code: 0,
                        created_ms: *created_ms,
                        started_ms: 0,
                        finished_ms: 0,
                        restart_count: 0,
                        generation: 0,
                        networks: BTreeMap::new(),
                        position,
                        error: String::new(),
                    },
                );
            }
            (DomainEvent::ContainerRemoved, _) => {
                self.containers.remove(key);
            }
            (DomainEvent::NetworkContainerConnected { container_id, ipv4_address }, StreamKind::Network) => {
                if let Some(network) = self.networks.get_mut(key) {
                    network.endpoints.insert(container_id.clone(), ipv4_address.clone());
                }
                if let Some(container) = self.containers.get_mut(container_id) {
                    container.networks.insert(key.clone(), ipv4_address.clone());
                    container.position = position;
                }
            }
            (DomainEvent::NetworkContainerDisconnected { container_id }, StreamKind::Network) => {
                if let Some(network) = self.networks.get_mut(key) {
                    network.endpoints.remove(container_id);
                }
                if let Some(container) = self.containers.get_mut(container_id) {
                    container.networks.remove(key);
                    container.position = position;
                }
            }
            (event, StreamKind::Container) => {
                let Some(container) = self.containers.get_mut(key) else { return };
                container.position = position;
                match event {
                    DomainEvent::ContainerStarted { started_ms } => {
                        if container.state == "exited" {
                            container.restart_count += 1;
                        }
                        container.generation += 1;
                        container.state = "running".into();
                        container.started_ms = *started_ms;
                        container.exit_code = 0;
                        container.error.clear();
                    }
                    DomainEvent::ReconcileFailed { action, error, .. } => container.error = format!("{action}: {error}"),
                    DomainEvent::ContainerExited { exit_code, finished_ms } => {
                        container.state = "exited".into();
                        container.exit_code = *exit_code;
                        container.finished_ms = *finished_ms;
                    }
                    DomainEvent::ContainerPaused => container.state = "paused".into(),
                    DomainEvent::ContainerUnpaused => container.state = "running".into(),
                    DomainEvent::ContainerRenamed { new_name, .. } => container.name = new_name.clone(),
                    DomainEvent::ContainerUpdated { memory_bytes, nano_cpus, cpu_shares, restart_policy } => {
                        container.spec.host.memory_bytes = *memory_bytes;
                        container.spec.host.nano_cpus = *nano_cpus;
                        container.spec.host.cpu_shares = *cpu_shares;
                        container.spec.host.restart_policy = restart_policy.clone();
                    }
                    _ => {}
                }
            }
            (DomainEvent::ImageRegistered { reference_tags, size_bytes, layer_digests, created_ms }, _) => {
                for reference in reference_tags {
                    self.untag_everywhere(reference);
                }
                self.images.insert(
                    key.clone(),
                    ImageView {
                        id: key.clone(),
                        tags: reference_tags.iter().cloned().collect(),
                        size_bytes: *size_bytes,
                        layer_digests: layer_digests.clone(),
                        created_ms: *created_ms,
                    },
                );
            }
            (DomainEvent::ImageTagged { reference }, _) => {
                self.untag_everywhere(reference);
                if let Some(image) = self.images.get_mut(key) {
                    image.tags.insert(reference.clone());
                }
            }
            (DomainEvent::ImageUntagged { reference }, _) => {
                if let Some(image) = self.images.get_mut(key) {
                    image.tags.remove(reference);
                }
            }
            (DomainEvent::ImageRemoved, _) => {
                self.images.remove(key);
            }
            (DomainEvent::VolumeCreated { name, driver, labels, created_ms }, _) => {
                self.volumes.insert(
                    key.clone(),
                    VolumeView { name: name.clone(), driver: driver.clone(), labels: labels.clone(), created_ms: *created_ms },
                );
            }
            (DomainEvent::VolumeRemoved, _) => {
                self.volumes.remove(key);
            }
            (DomainEvent::NetworkCreated { name, driver, subnet, gateway, internal, labels, created_ms }, _) => {
                self.networks.insert(
                    key.clone(),
                    NetworkView {
                        id: key.clone(),
                        name: name.clone(),
                        driver: driver.clone(),
                        subnet: subnet.clone(),
                        gateway: gateway.clone(),
                        internal: *internal,
                        labels: labels.clone(),
                        created_ms: *created_ms,
                        endpoints: BTreeMap::new(),
                    },
                );
            }
            (DomainEvent::NetworkRemoved, _) => {
                self.networks.remove(key);
            }
            _ => {}
        }
    }

    fn untag_everywhere(&mut self, reference: &str) {
        for image in self.images.values_mut() {
            image.tags.remove(reference);
        }
    }

    /// Finds a container by full id, name (with or without the leading `/`),
    /// or unique id prefix, as Docker does.
    pub fn find_container(&self, reference: &str) -> Option<&ContainerView> {
        if let Some(container) = self.containers.get(reference) {
            return Some(container);
        }
        let name = reference.strip_prefix('/').unwrap_or(reference);
        if let Some(container) = self.containers.values().find(|c| c.name == name) {
            return Some(container);
        }
        unique_prefix(self.containers.values(), reference, |c| &c.id)
    }

    /// Finds an image by id, `sha256:` prefix, short id prefix, or tag.
    pub fn find_image(&self, reference: &str) -> Option<&ImageView> {
        if let Some(image) = self.images.get(reference) {
            return Some(image);
        }
        let tagged = berth_core::model::normalize_reference(reference);
        if let Some(image) = self.images.values().find(|image| image.tags.contains(&tagged) || image.tags.contains(reference)) {
            return Some(image);
        }
        let prefix = if reference.starts_with("sha256:") { reference.to_string() } else { format!("sha256:{reference}") };
        if reference.len() >= 4 && reference.bytes().all(|b| b.is_ascii_hexdigit() || b == b':' || b.is_ascii_lowercase()) {
            return unique_prefix(self.images.values(), &prefix, |image| &image.id);
        }
        None
    }

    pub fn find_network(&self, reference: &str) -> Option<&NetworkView> {
        if let Some(network) = self.networks.get(reference) {
            return Some(network);
        }
        if let Some(network) = self.networks.values().find(|n| n.name == reference) {
            return Some(network);
        }
        unique_prefix(self.networks.values(), reference, |n| &n.id)
    }
}

fn unique_prefix<'a, T>(items: impl Iterator<Item = &'a T>, prefix: &str, id: impl Fn(&T) -> &String) -> Option<&'a T> {
    if prefix.is_empty() {
        return None;
    }
    let mut matches = items.filter(|item| id(item).starts_with(prefix));
    match (matches.next(), matches.next()) {
        (Some(item), None) => Some(item),
        _ => None,
    }
}
