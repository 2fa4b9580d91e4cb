//! The auditor's reference model: an independent, much smaller statement of
//! berth's rules for the operations the workload issues. It predicts every
//! reply (accepted, or refused with which rejection code) and is compared
//! with the Docker views at quiet points.
//!
//! It is written from the Docker semantics, not from `core`'s code, so that a
//! mistake in one shows up as a disagreement with the other. Subnets are
//! simplified: the workload only uses aligned /28 blocks and the /16 of the
//! bridge network, so two subnets overlap exactly when they are equal.

use berth_core::{Command, CommandEnvelope};
use std::collections::{BTreeMap, BTreeSet};

/// The name and subnet of the predefined bridge network the bootstrap creates.
pub const BRIDGE_NAME: &str = "bridge";
pub const BRIDGE_SUBNET: &str = "172.17.0.0/16";
/// Usable addresses of a /28 (14 hosts, one of them the gateway).
pub const SMALL_SUBNET_ADDRESS_COUNT: usize = 13;
/// Usable addresses of the bridge's /16 (65,534 hosts, one the gateway).
pub const BRIDGE_ADDRESS_COUNT: usize = 65_533;

/// A Docker-like operation a simulated client issues.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    CreateVch { name: String, container_count_max: u64 },
    ConfigureVch { name: String, container_count_max: u64 },
    DeleteVch { name: String, force: bool },
    CreateContainer { id: String, name: String, vch: String, image_id: String, mounts: Vec<String>, network_mode: String },
    Start { id: String },
    Stop { id: String, timeout_s: Option<i64> },
    Kill { id: String, signal: String },
    Pause { id: String },
    Unpause { id: String },
    Rename { id: String, new_name: String },
    Remove { id: String, force: bool },
    RegisterImage { id: String, tags: Vec<String> },
    TagImage { id: String, reference: String },
    UntagImage { reference: String },
    RemoveImage { id: String, force: bool },
    CreateVolume { name: String },
    RemoveVolume { name: String, force: bool },
    CreateNetwork { id: String, name: String, subnet: String },
    RemoveNetwork { id: String },
    Connect { network_id: String, container_id: String },
    Disconnect { network_id: String, container_id: String, force: bool },
}

/// The spec every simulated VCH gets besides its container limit.
pub fn vch_spec(container_count_max: u64) -> berth_core::events::VchSpec {
    berth_core::events::VchSpec { target: "local".into(), container_count_max, ..Default::default() }
}

/// The gateway of a subnet `a.b.c.d/len`: its first host address.
pub fn gateway_of(subnet: &str) -> String {
    let base = subnet.split('/').next().unwrap_or("");
    let mut octets: Vec<u32> = base.split('.').filter_map(|octet| octet.parse().ok()).collect();
    if let Some(last) = octets.last_mut() {
        *last += 1;
    }
    octets.iter().map(u32::to_string).collect::<Vec<_>>().join(".")
}

impl Op {
    /// A short name for the trace and for failure messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::CreateVch { .. } => "create_vch",
            Op::ConfigureVch { .. } => "configure_vch",
            Op::DeleteVch { .. } => "delete_vch",
            Op::CreateContainer { .. } => "create_container",
            Op::Start { .. } => "start",
            Op::Stop { .. } => "stop",
            Op::Kill { .. } => "kill",
            Op::Pause { .. } => "pause",
            Op::Unpause { .. } => "unpause",
            Op::Rename { .. } => "rename",
            Op::Remove { .. } => "remove",
            Op::RegisterImage { .. } => "register_image",
            Op::TagImage { .. } => "tag_image",
            Op::UntagImage { .. } => "untag_image",
            Op::RemoveImage { .. } => "remove_image",
            Op::CreateVolume { .. } => "create_volume",
            Op::RemoveVolume { .. } => "remove_volume",
            Op::CreateNetwork { .. } => "create_network",
            Op::RemoveNetwork { .. } => "remove_network",
            Op::Connect { .. } => "connect",
            Op::Disconnect { .. } => "disconnect",
        }
    }

    /// The command the Docker API would submit for this operation.
    pub fn to_envelope(&self, actor: &str) -> CommandEnvelope {
        use berth_core::events::{ContainerSpec, HostSpec, VolumeMount};
        let command = match self.clone() {
            Op::CreateVch { name, container_count_max } => Command::CreateVch { name, spec: vch_spec(container_count_max) },
            Op::ConfigureVch { name, container_count_max } => Command::ConfigureVch { name, spec: vch_spec(container_count_max) },
            Op::DeleteVch { name, force } => Command::DeleteVch { name, force },
            Op::CreateContainer { id, name, vch, image_id, mounts, network_mode } => {
                let host = HostSpec {
                    network_mode,
                    mounts: mounts.into_iter().map(|volume| VolumeMount { volume, target: "/data".into(), read_only: false }).collect(),
                    ..HostSpec::default()
                };
                let spec = ContainerSpec { image: image_id.clone(), cmd: vec!["serve".into()], host, ..ContainerSpec::default() };
                Command::CreateContainer { id, name, vch, image_id, spec }
            }
            Op::Start { id } => Command::StartContainer { id },
            Op::Stop { id, timeout_s } => Command::StopContainer { id, timeout_s },
            Op::Kill { id, signal } => Command::KillContainer { id, signal },
            Op::Pause { id } => Command::PauseContainer { id },
            Op::Unpause { id } => Command::UnpauseContainer { id },
            Op::Rename { id, new_name } => Command::RenameContainer { id, new_name },
            Op::Remove { id, force } => Command::RemoveContainer { id, force },
            Op::RegisterImage { id, tags } => {
                Command::RegisterImage { id, reference_tags: tags, size_bytes: 1 << 20, layer_digests: vec!["sha256:layer".into()] }
            }
            Op::TagImage { id, reference } => Command::TagImage { id, reference },
            Op::UntagImage { reference } => Command::UntagImage { reference },
            Op::RemoveImage { id, force } => Command::RemoveImage { id, force },
            Op::CreateVolume { name } => Command::CreateVolume { name, driver: "local".into(), labels: BTreeMap::new() },
            Op::RemoveVolume { name, force } => Command::RemoveVolume { name, force },
            Op::CreateNetwork { id, name, subnet } => Command::CreateNetwork {
                id,
                name,
                driver: "bridge".into(),
                gateway: gateway_of(&subnet),
                subnet,
                internal: false,
                labels: BTreeMap::new(),
            },
            Op::RemoveNetwork { id } => Command::RemoveNetwork { id },
            Op::Connect { network_id, container_id } => Command::ConnectNetwork { network_id, container_id, ipv4_address: None },
            Op::Disconnect { network_id, container_id, force } => Command::DisconnectNetwork { network_id, container_id, force },
        };
        CommandEnvelope::new(actor, command)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefStatus {
    Created,
    Running,
    Paused,
    Exited,
}

impl RefStatus {
    pub fn is_running(self) -> bool {
        matches!(self, RefStatus::Running | RefStatus::Paused)
    }

    pub fn docker_word(self) -> &'static str {
        match self {
            RefStatus::Created => "created",
            RefStatus::Running => "running",
            RefStatus::Paused => "paused",
            RefStatus::Exited => "exited",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct RefContainer {
    pub name: String,
    pub vch: String,
    pub image_id: String,
    pub status: RefStatus,
    pub mounts: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RefNetwork {
    pub name: String,
    pub subnet: String,
    pub endpoints: BTreeSet<String>,
}

impl RefNetwork {
    fn capacity(&self) -> usize {
        if self.subnet == BRIDGE_SUBNET {
            BRIDGE_ADDRESS_COUNT
        } else {
            SMALL_SUBNET_ADDRESS_COUNT
        }
    }
}

/// What berth should hold after the operations accepted so far.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Reference {
    pub vchs: BTreeMap<String, u64>,
    pub containers: BTreeMap<String, RefContainer>,
    pub images: BTreeMap<String, BTreeSet<String>>,
    pub volumes: BTreeSet<String>,
    pub networks: BTreeMap<String, RefNetwork>,
}

/// A predicted reply: accepted, or refused with this rejection code.
pub type Prediction = Result<(), &'static str>;

impl Reference {
    fn name_taken(&self, name: &str) -> bool {
        self.containers.values().any(|container| container.name == name)
    }

    fn network_by_mode(&self, mode: &str) -> Option<&String> {
        if let Some((id, _)) = self.networks.get_key_value(mode) {
            return Some(id);
        }
        self.networks.iter().find(|(_, network)| network.name == mode).map(|(id, _)| id)
    }

    fn owner_of(&self, reference: &str) -> Option<String> {
        self.images.iter().find(|(_, tags)| tags.contains(reference)).map(|(id, _)| id.clone())
    }

    fn move_tag(&mut self, id: &str, reference: &str) {
        for tags in self.images.values_mut() {
            tags.remove(reference);
        }
        if let Some(tags) = self.images.get_mut(id) {
            tags.insert(reference.to_string());
        }
    }

    fn drop_container(&mut self, id: &str) {
        self.containers.remove(id);
        for network in self.networks.values_mut() {
            network.endpoints.remove(id);
        }
    }

    /// Predicts the reply to `op` and, when accepted, applies it.
    pub fn decide(&mut self, op: &Op) -> Prediction {
        match op {
            Op::CreateVch { name, container_count_max } => {
                if self.vchs.contains_key(name) {
                    return Err("already_exists");
                }
                self.vchs.insert(name.clone(), *container_count_max);
            }
            Op::ConfigureVch { name, container_count_max } => {
                let Some(limit) = self.vchs.get(name).copied() else { return Err("not_found") };
                let count = self.containers.values().filter(|c| &c.vch == name).count() as u64;
                if *container_count_max != 0 && *container_count_max < count {
                    return Err("limit_reached");
                }
                if limit != *container_count_max {
                    self.vchs.insert(name.clone(), *container_count_max);
                }
            }
            Op::DeleteVch { name, force } => {
                if !self.vchs.contains_key(name) {
                    return Err("not_found");
                }
                let members: Vec<String> = self.containers.iter().filter(|(_, c)| &c.vch == name).map(|(id, _)| id.clone()).collect();
                if !members.is_empty() && !force {
                    return Err("in_use");
                }
                for id in members {
                    self.drop_container(&id);
                }
                self.vchs.remove(name);
            }
            Op::CreateContainer { id, name, vch, image_id, mounts, network_mode } => {
                // Ids are 256 random bits: a fresh one never collides.
                if self.name_taken(name) {
                    return Err("name_in_use");
                }
                let Some(limit) = self.vchs.get(vch).copied() else { return Err("not_found") };
                if limit != 0 && self.containers.values().filter(|c| &c.vch == vch).count() as u64 >= limit {
                    return Err("limit_reached");
                }
                if !self.images.contains_key(image_id) {
                    return Err("not_found");
                }
                if mounts.iter().any(|volume| !self.volumes.contains(volume)) {
                    return Err("not_found");
                }
                let network = match network_mode.as_str() {
                    "" | "default" => self.network_by_mode(BRIDGE_NAME).cloned(),
                    "none" | "host" => None,
                    other => Some(self.network_by_mode(other).cloned().ok_or("not_found")?),
                };
                if let Some(network_id) = &network {
                    let network = &self.networks[network_id];
                    if network.endpoints.len() >= network.capacity() {
                        return Err("limit_reached");
                    }
                }
                self.containers.insert(
                    id.clone(),
                    RefContainer {
                        name: name.clone(),
                        vch: vch.clone(),
                        image_id: image_id.clone(),
                        status: RefStatus::Created,
                        mounts: mounts.clone(),
                    },
                );
                if let Some(network_id) = network {
                    if let Some(network) = self.networks.get_mut(&network_id) {
                        network.endpoints.insert(id.clone());
                    }
                }
            }
            Op::Start { id } => {
                let container = self.containers.get_mut(id).ok_or("not_found")?;
                if container.status.is_running() {
                    return Err("wrong_state");
                }
                container.status = RefStatus::Running;
            }
            Op::Stop { id, .. } => {
                let container = self.containers.get(id).ok_or("not_found")?;
                if !container.status.is_running() {
                    return Err("wrong_state");
                }
            }
            Op::Kill { id, signal } => {
                let container = self.containers.get(id).ok_or("not_found")?;
                if !container.status.is_running() {
                    return Err("wrong_state");
                }
                if signal.is_empty() {
                    return Err("invalid_argument");
                }
            }
            Op::Pause { id } => {
                let container = self.containers.get_mut(id).ok_or("not_found")?;
                if container.status != RefStatus::Running {
                    return Err("wrong_state");
                }
                container.status = RefStatus::Paused;
            }
            Op::Unpause { id } => {
                let container = self.containers.get_mut(id).ok_or("not_found")?;
                if container.status != RefStatus::Paused {
                    return Err("wrong_state");
                }
                container.status = RefStatus::Running;
            }
            Op::Rename { id, new_name } => {
                let current = self.containers.get(id).ok_or("not_found")?.name.clone();
                if &current == new_name {
                    return Err("invalid_argument");
                }
                if self.name_taken(new_name) {
                    return Err("name_in_use");
                }
                if let Some(container) = self.containers.get_mut(id) {
                    container.name = new_name.clone();
                }
            }
            Op::Remove { id, force } => {
                let container = self.containers.get(id).ok_or("not_found")?;
                if container.status.is_running() && !force {
                    return Err("wrong_state");
                }
                self.drop_container(id);
            }
            Op::RegisterImage { id, tags } => {
                if !self.images.contains_key(id) {
                    self.images.insert(id.clone(), BTreeSet::new());
                }
                for reference in tags {
                    self.move_tag(id, reference);
                }
            }
            Op::TagImage { id, reference } => {
                if !self.images.contains_key(id) {
                    return Err("not_found");
                }
                self.move_tag(id, reference);
            }
            Op::UntagImage { reference } => {
                let owner = self.owner_of(reference).ok_or("not_found")?;
                if let Some(tags) = self.images.get_mut(&owner) {
                    tags.remove(reference);
                }
            }
            Op::RemoveImage { id, force } => {
                if !self.images.contains_key(id) {
                    return Err("not_found");
                }
                if self.containers.values().any(|c| &c.image_id == id && (!force || c.status.is_running())) {
                    return Err("in_use");
                }
                self.images.remove(id);
            }
            Op::CreateVolume { name } => {
                self.volumes.insert(name.clone());
            }
            Op::RemoveVolume { name, force } => {
                if !self.volumes.contains(name) {
                    return if *force { Ok(()) } else { Err("not_found") };
                }
                if self.containers.values().any(|c| c.mounts.contains(name)) {
                    return Err("in_use");
                }
                self.volumes.remove(name);
            }
            Op::CreateNetwork { id, name, subnet } => {
                if self.networks.values().any(|network| &network.name == name) {
                    return Err("name_in_use");
                }
                if self.networks.values().any(|network| &network.subnet == subnet) {
                    return Err("forbidden");
                }
                self.networks.insert(id.clone(), RefNetwork { name: name.clone(), subnet: subnet.clone(), endpoints: BTreeSet::new() });
            }
            Op::RemoveNetwork { id } => {
                let network = self.networks.get(id).ok_or("not_found")?;
                if network.name == BRIDGE_NAME {
                    return Err("forbidden");
                }
                if !network.endpoints.is_empty() {
                    return Err("in_use");
                }
                self.networks.remove(id);
            }
            Op::Connect { network_id, container_id } => {
                let network = self.networks.get(network_id).ok_or("not_found")?;
                if !self.containers.contains_key(container_id) {
                    return Err("not_found");
                }
                if network.endpoints.contains(container_id) {
                    return Err("forbidden");
                }
                if network.endpoints.len() >= network.capacity() {
                    return Err("limit_reached");
                }
                if let Some(network) = self.networks.get_mut(network_id) {
                    network.endpoints.insert(container_id.clone());
                }
            }
            Op::Disconnect { network_id, container_id, force } => {
                let network = self.networks.get_mut(network_id).ok_or("not_found")?;
                if !network.endpoints.remove(container_id) && !force {
                    return Err("forbidden");
                }
            }
        }
        Ok(())
    }

    /// The reconciler recorded that a container's run ended.
    pub fn record_exit(&mut self, id: &str) -> Result<(), String> {
        match self.containers.get_mut(id) {
            Some(container) if container.status.is_running() => {
                container.status = RefStatus::Exited;
                Ok(())
            }
            Some(container) => {
                Err(format!("an exit was recorded for container {id}, which the reference has {}", container.status.docker_word()))
            }
            None => Err(format!("an exit was recorded for container {id}, which the reference does not hold")),
        }
    }

    /// Compares with the Docker views; `Err` names the first difference.
    pub fn compare(&self, views: &berth_projections::DockerViews) -> Result<(), String> {
        let vchs: BTreeMap<String, u64> = views.vchs.iter().map(|(name, vch)| (name.clone(), vch.spec.container_count_max)).collect();
        if vchs != self.vchs {
            return Err(format!("VCHs differ: views {vchs:?}, reference {:?}", self.vchs));
        }
        if views.containers.len() != self.containers.len() {
            return Err(format!("{} containers in the views, {} in the reference", views.containers.len(), self.containers.len()));
        }
        for (id, expected) in &self.containers {
            let Some(view) = views.containers.get(id) else { return Err(format!("container {id} missing from the views")) };
            let networks: BTreeSet<String> =
                self.networks.iter().filter(|(_, n)| n.endpoints.contains(id)).map(|(id, _)| id.clone()).collect();
            let view_networks: BTreeSet<String> = view.networks.keys().cloned().collect();
            if view.name != expected.name
                || view.vch != expected.vch
                || view.image_id != expected.image_id
                || view.state != expected.status.docker_word()
                || view_networks != networks
            {
                return Err(format!("container {id} differs: views {view:?}, reference {expected:?} on {networks:?}"));
            }
        }
        let images: BTreeMap<String, BTreeSet<String>> = views.images.iter().map(|(id, image)| (id.clone(), image.tags.clone())).collect();
        if images != self.images {
            return Err(format!("images differ: views {images:?}, reference {:?}", self.images));
        }
        let volumes: BTreeSet<String> = views.volumes.keys().cloned().collect();
        if volumes != self.volumes {
            return Err(format!("volumes differ: views {volumes:?}, reference {:?}", self.volumes));
        }
        let networks: BTreeMap<String, (String, BTreeSet<String>)> =
            views.networks.iter().map(|(id, n)| (id.clone(), (n.name.clone(), n.endpoints.keys().cloned().collect()))).collect();
        let expected: BTreeMap<String, (String, BTreeSet<String>)> =
            self.networks.iter().map(|(id, n)| (id.clone(), (n.name.clone(), n.endpoints.clone()))).collect();
        if networks != expected {
            return Err(format!("networks differ: views {networks:?}, reference {expected:?}"));
        }
        Ok(())
    }
}
