//! The domain model: every aggregate's state, folded from events, and the
//! decisions taken against it.
//!
//! Cross-aggregate rules (unique container and network names, an image in
//! use, a volume in use, a network with endpoints) need more than one
//! stream's state, so decisions read the whole model. One decider at a time
//! owns the model (the command bus), which makes those rules race-free; the
//! log's expected-version check is the second line of defence.

use crate::commands::{Command, CommandEnvelope, Context};
use crate::events::{ContainerSpec, DomainEvent, VchSpec};
use crate::ids::{StreamId, StreamKind, StreamVersion};
use crate::rejection::Rejection;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Names of the networks every VCH has and no one may remove.
pub const PREDEFINED_NETWORK_NAMES: [&str; 3] = ["bridge", "host", "none"];

/// The events of one stream within a decision, appended only if the stream is
/// still at `expected`.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamAppend {
    pub stream: StreamId,
    pub expected: StreamVersion,
    pub events: Vec<DomainEvent>,
}

/// The outcome of an accepted command: appends to one or more streams, written
/// atomically. Empty when the command changes nothing (an idempotent repeat).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Decision {
    pub appends: Vec<StreamAppend>,
}

impl Decision {
    pub fn is_empty(&self) -> bool {
        self.appends.iter().all(|append| append.events.is_empty())
    }

    pub fn event_count(&self) -> usize {
        self.appends.iter().map(|append| append.events.len()).sum()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct VchState {
    pub name: String,
    pub spec: VchSpec,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerStatus {
    Created,
    Running,
    Paused,
    Exited,
}

impl ContainerStatus {
    /// Docker's word for the state.
    pub fn as_docker_str(self) -> &'static str {
        match self {
            ContainerStatus::Created => "created",
            ContainerStatus::Running => "running",
            ContainerStatus::Paused => "paused",
            ContainerStatus::Exited => "exited",
        }
    }

    pub fn is_running(self) -> bool {
        matches!(self, ContainerStatus::Running | ContainerStatus::Paused)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ContainerState {
    pub id: String,
    pub name: String,
    pub vch: String,
    pub image_id: String,
    pub spec: ContainerSpec,
    pub status: ContainerStatus,
    /// Set by a stop request or kill while running: the exit that follows was asked for.
    pub stop_requested: bool,
    pub exit_code: i64,
    pub created_ms: u64,
    pub started_ms: u64,
    pub finished_ms: u64,
    pub restart_count: u64,
    /// How many times it was started: the run the infrastructure should be on.
    pub generation: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ImageState {
    pub id: String,
    pub tags: BTreeSet<String>,
    pub size_bytes: u64,
    pub layer_digests: Vec<String>,
    pub created_ms: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct VolumeState {
    pub name: String,
    pub driver: String,
    pub labels: BTreeMap<String, String>,
    pub created_ms: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NetworkState {
    pub id: String,
    pub name: String,
    pub driver: String,
    pub subnet: String,
    pub gateway: String,
    pub internal: bool,
    pub labels: BTreeMap<String, String>,
    pub created_ms: u64,
    /// Connected containers and their IPv4 addresses.
    pub endpoints: BTreeMap<String, String>,
}

/// Every live aggregate, plus the indexes the rules need.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DomainModel {
    pub vchs: BTreeMap<String, VchState>,
    pub containers: BTreeMap<String, ContainerState>,
    pub container_names: HashMap<String, String>,
    pub images: BTreeMap<String, ImageState>,
    /// Image reference (`repo:tag`) to image id.
    pub tags: BTreeMap<String, String>,
    pub volumes: BTreeMap<String, VolumeState>,
    pub networks: BTreeMap<String, NetworkState>,
    pub network_names: HashMap<String, String>,
    /// The version of every stream that has events (removed objects included,
    /// so that a removed stream is never reused from version 0).
    pub versions: HashMap<StreamId, StreamVersion>,
}

fn validate_object_name(kind: &'static str, name: &str) -> Result<(), Rejection> {
    let invalid = |reason| Err(Rejection::InvalidName { kind, name: name.to_string(), reason });
    let bytes = name.as_bytes();
    if bytes.len() < 2 {
        return invalid("must be at least 2 characters");
    }
    if bytes.len() > 128 {
        return invalid("must be at most 128 characters");
    }
    if !bytes[0].is_ascii_alphanumeric() {
        return invalid("only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed");
    }
    if !bytes.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')) {
        return invalid("only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed");
    }
    Ok(())
}

/// Checks an image reference `name[:tag]` in the shape Docker accepts.
pub fn validate_reference(reference: &str) -> Result<(), Rejection> {
    let bad = |reason: &str| Err(Rejection::InvalidArgument(format!("invalid reference format {reference:?}: {reason}")));
    if reference.is_empty() || reference.len() > 255 {
        return bad("must be 1 to 255 characters");
    }
    let (name, tag) = match reference.rfind(':') {
        Some(colon) if !reference[colon..].contains('/') => (&reference[..colon], Some(&reference[colon + 1..])),
        _ => (reference, None),
    };
    if name.is_empty() || name.bytes().any(|b| b.is_ascii_uppercase()) {
        return bad("repository name must be lowercase");
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/' | b':')) {
        return bad("repository name has invalid characters");
    }
    if name.starts_with(['/', '.', '-', '_']) || name.ends_with(['/', '.', '-', '_']) || name.contains("//") {
        return bad("repository name components must start and end with a letter or digit");
    }
    if let Some(tag) = tag {
        let valid = !tag.is_empty()
            && tag.len() <= 128
            && (tag.as_bytes()[0].is_ascii_alphanumeric() || tag.as_bytes()[0] == b'_')
            && tag.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !valid {
            return bad("invalid tag");
        }
    }
    Ok(())
}

/// The familiar form of a reference, as Docker shows it: Docker Hub's
/// `docker.io/library/` (or `docker.io/`) prefix dropped and `:latest` added
/// when there is no tag.
pub fn normalize_reference(reference: &str) -> String {
    let mut familiar = reference;
    for prefix in ["docker.io/library/", "index.docker.io/library/", "docker.io/", "index.docker.io/"] {
        if let Some(rest) = familiar.strip_prefix(prefix) {
            familiar = rest;
            break;
        }
    }
    match familiar.rfind(':') {
        Some(colon) if !familiar[colon..].contains('/') => familiar.to_string(),
        _ => format!("{familiar}:latest"),
    }
}

/// An IPv4 subnet `a.b.c.d/len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Subnet {
    pub base: u32,
    pub prefix_length: u8,
}

impl Ipv4Subnet {
    pub fn parse(text: &str) -> Option<Ipv4Subnet> {
        let (address, length) = text.split_once('/')?;
        let prefix_length: u8 = length.parse().ok()?;
        if !(8..=30).contains(&prefix_length) {
            return None;
        }
        let address = parse_ipv4(address)?;
        let mask = u32::MAX << (32 - prefix_length);
        Some(Ipv4Subnet { base: address & mask, prefix_length })
    }

    fn mask(self) -> u32 {
        u32::MAX << (32 - self.prefix_length)
    }

    pub fn contains(self, address: u32) -> bool {
        address & self.mask() == self.base
    }

    /// The usable host addresses: all but the network and broadcast addresses.
    pub fn hosts(self) -> impl Iterator<Item = u32> {
        let first = self.base + 1;
        let last = self.base | !self.mask();
        first..last
    }
}

pub fn parse_ipv4(text: &str) -> Option<u32> {
    let mut octets = text.split('.');
    let mut value = 0u32;
    for _ in 0..4 {
        let octet: u8 = octets.next()?.parse().ok()?;
        value = (value << 8) | u32::from(octet);
    }
    if octets.next().is_some() {
        return None;
    }
    Some(value)
}

pub fn format_ipv4(value: u32) -> String {
    let [a, b, c, d] = value.to_be_bytes();
    format!("{a}.{b}.{c}.{d}")
}

fn not_found(kind: &'static str, id: &str) -> Rejection {
    Rejection::NotFound { kind, id: id.to_string() }
}

impl DomainModel {
    pub fn version(&self, stream: &StreamId) -> StreamVersion {
        self.versions.get(stream).copied().unwrap_or_default()
    }

    /// Resolves a network by id, name or unique id prefix.
    pub fn find_network(&self, reference: &str) -> Option<&NetworkState> {
        if let Some(network) = self.networks.get(reference) {
            return Some(network);
        }
        if let Some(id) = self.network_names.get(reference) {
            return self.networks.get(id);
        }
        let mut matches = self.networks.values().filter(|network| network.id.starts_with(reference));
        match (matches.next(), matches.next()) {
            (Some(network), None) if !reference.is_empty() => Some(network),
            _ => None,
        }
    }

    /// The stream a command targets first (its expected version applies there).
    pub fn target_stream(command: &Command) -> StreamId {
        use Command::*;
        match command {
            CreateVch { name, .. } | ConfigureVch { name, .. } | UpgradeVch { name, .. } | DeleteVch { name, .. } => {
                StreamId::new(StreamKind::Vch, name)
            }
            RecordDrift { stream, .. } | RecordReconcileFailure { stream, .. } => stream.clone(),
            CreateContainer { id, .. }
            | StartContainer { id }
            | StopContainer { id, .. }
            | KillContainer { id, .. }
            | RecordContainerExited { id, .. }
            | PauseContainer { id }
            | UnpauseContainer { id }
            | RenameContainer { id, .. }
            | UpdateContainer { id, .. }
            | RemoveContainer { id, .. } => StreamId::new(StreamKind::Container, id),
            RegisterImage { id, .. } | TagImage { id, .. } | RemoveImage { id, .. } => StreamId::new(StreamKind::Image, id),
            UntagImage { reference } => StreamId::new(StreamKind::Image, reference),
            CreateVolume { name, .. } | RemoveVolume { name, .. } => StreamId::new(StreamKind::Volume, name),
            CreateNetwork { id, .. } | RemoveNetwork { id } => StreamId::new(StreamKind::Network, id),
            ConnectNetwork { network_id, .. } | DisconnectNetwork { network_id, .. } => StreamId::new(StreamKind::Network, network_id),
        }
    }

    fn append(&self, decision: &mut Decision, stream: StreamId, event: DomainEvent) {
        if let Some(existing) = decision.appends.iter_mut().find(|append| append.stream == stream) {
            existing.events.push(event);
            return;
        }
        let expected = self.version(&stream);
        decision.appends.push(StreamAppend { stream, expected, events: vec![event] });
    }

    /// The live object an observation is recorded on.
    fn observed_object(&self, stream: &StreamId) -> Result<(), Rejection> {
        let key = &stream.key;
        let exists = stream.is_valid()
            && match stream.kind {
                StreamKind::Vch => self.vchs.contains_key(key),
                StreamKind::Container => self.containers.contains_key(key),
                StreamKind::Network => self.networks.contains_key(key),
                StreamKind::Image => self.images.contains_key(key),
                StreamKind::Volume => self.volumes.contains_key(key),
            };
        if exists {
            Ok(())
        } else {
            Err(not_found(stream.kind.as_str(), key))
        }
    }

    /// Refuses a start that would take the VCH's running containers past its
    /// memory limit, the way vSphere's admission control refuses a power-on
    /// in a full resource pool, but before anything is tried.
    fn check_vch_memory(&self, starting: &ContainerState) -> Result<(), Rejection> {
        let Some(vch) = self.vchs.get(&starting.vch) else {
            return Ok(());
        };
        let limit_mib = vch.spec.memory_mib_max;
        if limit_mib == 0 {
            return Ok(());
        }
        let running_mib: u64 = self
            .containers
            .values()
            .filter(|c| c.vch == starting.vch && c.status.is_running() && c.id != starting.id)
            .map(|c| container_memory_mib(&c.spec))
            .sum();
        let wanted_mib = container_memory_mib(&starting.spec);
        if running_mib + wanted_mib > limit_mib {
            return Err(Rejection::LimitReached(format!(
                "VCH {} has {} MiB of memory; its running containers use {running_mib} MiB and container {} needs {wanted_mib} MiB",
                starting.vch, limit_mib, starting.name
            )));
        }
        Ok(())
    }

    fn container(&self, id: &str) -> Result<&ContainerState, Rejection> {
        self.containers.get(id).ok_or_else(|| not_found("container", id))
    }

    fn wrong_state(container: &ContainerState, action: &'static str) -> Rejection {
        Rejection::WrongState { kind: "container", id: container.id.clone(), state: container.status.as_docker_str().to_string(), action }
    }

    /// Decides a command: the events it causes, or why it is refused.
    pub fn decide(&self, envelope: &CommandEnvelope, context: &Context) -> Result<Decision, Rejection> {
        if let Some(expected) = envelope.expected_version {
            let stream = Self::target_stream(&envelope.command);
            let actual = self.version(&stream);
            if actual != expected {
                return Err(Rejection::WrongExpectedVersion { stream: stream.to_string(), expected, actual });
            }
        }
        let mut decision = Decision::default();
        self.decide_into(&envelope.command, context, &mut decision)?;
        Ok(decision)
    }

    fn decide_into(&self, command: &Command, context: &Context, decision: &mut Decision) -> Result<(), Rejection> {
        use Command::*;
        let now_ms = context.now_ms;
        match command {
            CreateVch { name, spec } => {
                validate_object_name("vch", name)?;
                if self.vchs.contains_key(name) {
                    return Err(Rejection::AlreadyExists { kind: "vch", id: name.clone() });
                }
                if spec.target.is_empty() {
                    return Err(Rejection::InvalidArgument("a VCH needs a target".into()));
                }
                self.append(
                    decision,
                    StreamId::new(StreamKind::Vch, name),
                    DomainEvent::VchCreated { name: name.clone(), spec: spec.clone() },
                );
            }
            ConfigureVch { name, spec } => {
                let vch = self.vchs.get(name).ok_or_else(|| not_found("vch", name))?;
                let container_count = self.containers.values().filter(|c| &c.vch == name).count() as u64;
                if spec.container_count_max != 0 && spec.container_count_max < container_count {
                    return Err(Rejection::LimitReached(format!(
                        "VCH {name} holds {container_count} containers, more than the new limit of {}",
                        spec.container_count_max
                    )));
                }
                if &vch.spec != spec {
                    self.append(decision, StreamId::new(StreamKind::Vch, name), DomainEvent::VchConfigured { spec: spec.clone() });
                }
            }
            UpgradeVch { name, version } => {
                let vch = self.vchs.get(name).ok_or_else(|| not_found("vch", name))?;
                if version.trim().is_empty() {
                    return Err(Rejection::InvalidArgument("the version to upgrade to is empty".to_string()));
                }
                if vch.spec.version.as_deref() != Some(version.as_str()) {
                    self.append(
                        decision,
                        StreamId::new(StreamKind::Vch, name),
                        DomainEvent::VchUpgraded { from_version: vch.spec.version.clone(), to_version: version.clone() },
                    );
                }
            }
            RecordDrift { stream, description } => {
                self.observed_object(stream)?;
                self.append(decision, stream.clone(), DomainEvent::DriftObserved { description: description.clone() });
            }
            RecordReconcileFailure { stream, action, error, attempts } => {
                self.observed_object(stream)?;
                self.append(
                    decision,
                    stream.clone(),
                    DomainEvent::ReconcileFailed { action: action.clone(), error: error.clone(), attempts: *attempts },
                );
            }
            DeleteVch { name, force } => {
                self.vchs.get(name).ok_or_else(|| not_found("vch", name))?;
                let members: Vec<&ContainerState> = self.containers.values().filter(|c| &c.vch == name).collect();
                if !members.is_empty() && !force {
                    return Err(Rejection::InUse {
                        kind: "vch",
                        id: name.clone(),
                        by: format!("{} containers (delete them or use --force)", members.len()),
                    });
                }
                for container in members {
                    self.remove_container_into(container, decision);
                }
                // The VCH's own networks (its bridge, its container networks) go with it.
                for network in self.networks.values() {
                    if network.labels.get(LABEL_VCH) == Some(name) {
                        self.append(decision, StreamId::new(StreamKind::Network, &network.id), DomainEvent::NetworkRemoved);
                    }
                }
                self.append(decision, StreamId::new(StreamKind::Vch, name), DomainEvent::VchDeleted);
            }
            CreateContainer { id, name, vch, image_id, spec } => {
                validate_object_name("container", name)?;
                if self.versions.contains_key(&StreamId::new(StreamKind::Container, id)) {
                    return Err(Rejection::AlreadyExists { kind: "container", id: id.clone() });
                }
                if let Some(by) = self.container_names.get(name) {
                    return Err(Rejection::NameInUse { kind: "container", name: name.clone(), by: by.clone() });
                }
                let vch_state = self.vchs.get(vch).ok_or_else(|| not_found("vch", vch))?;
                let limit = vch_state.spec.container_count_max;
                if limit != 0 && self.containers.values().filter(|c| &c.vch == vch).count() as u64 >= limit {
                    return Err(Rejection::LimitReached(format!("VCH {vch} already holds its maximum of {limit} containers")));
                }
                if !self.images.contains_key(image_id) {
                    return Err(not_found("image", image_id));
                }
                for mount in &spec.host.mounts {
                    if !self.volumes.contains_key(&mount.volume) {
                        return Err(not_found("volume", &mount.volume));
                    }
                }
                let network = match spec.host.network_mode.as_str() {
                    // `bridge` is Docker's name for the default bridge: a VCH's own, if it has one.
                    "" | "default" | "bridge" => self.default_bridge(vch).or_else(|| self.find_network("bridge")),
                    "host" | "none" => None,
                    mode if mode.starts_with("container:") => None,
                    other => Some(self.find_network(other).ok_or_else(|| not_found("network", other))?),
                };
                self.append(
                    decision,
                    StreamId::new(StreamKind::Container, id),
                    DomainEvent::ContainerCreated {
                        name: name.clone(),
                        vch: vch.clone(),
                        image_id: image_id.clone(),
                        spec: spec.clone(),
                        created_ms: now_ms,
                    },
                );
                if let Some(network) = network {
                    if !matches!(network.driver.as_str(), "host" | "null") {
                        let address = self.endpoint_address(network, None, vch)?;
                        self.append(
                            decision,
                            StreamId::new(StreamKind::Network, &network.id),
                            DomainEvent::NetworkContainerConnected { container_id: id.clone(), ipv4_address: address },
                        );
                    }
                }
            }
            StartContainer { id } => {
                let container = self.container(id)?;
                match container.status {
                    ContainerStatus::Created | ContainerStatus::Exited => {
                        self.check_vch_memory(container)?;
                        self.append(
                            decision,
                            StreamId::new(StreamKind::Container, id),
                            DomainEvent::ContainerStarted { started_ms: now_ms },
                        );
                    }
                    ContainerStatus::Running | ContainerStatus::Paused => return Err(Self::wrong_state(container, "start")),
                }
            }
            StopContainer { id, timeout_s } => {
                let container = self.container(id)?;
                if !container.status.is_running() {
                    return Err(Self::wrong_state(container, "stop"));
                }
                self.append(
                    decision,
                    StreamId::new(StreamKind::Container, id),
                    DomainEvent::ContainerStopRequested { timeout_s: *timeout_s },
                );
            }
            KillContainer { id, signal } => {
                let container = self.container(id)?;
                if !container.status.is_running() {
                    return Err(Self::wrong_state(container, "kill"));
                }
                if signal.is_empty() {
                    return Err(Rejection::InvalidArgument("a signal is required".into()));
                }
                self.append(decision, StreamId::new(StreamKind::Container, id), DomainEvent::ContainerKilled { signal: signal.clone() });
            }
            RecordContainerExited { id, exit_code } => {
                // An observation: repeating it, or reporting on a container that is
                // already gone or stopped, changes nothing.
                if let Some(container) = self.containers.get(id) {
                    if container.status.is_running() {
                        self.append(
                            decision,
                            StreamId::new(StreamKind::Container, id),
                            DomainEvent::ContainerExited { exit_code: *exit_code, finished_ms: now_ms },
                        );
                    }
                }
            }
            PauseContainer { id } => {
                let container = self.container(id)?;
                if container.status != ContainerStatus::Running {
                    return Err(Self::wrong_state(container, "pause"));
                }
                self.append(decision, StreamId::new(StreamKind::Container, id), DomainEvent::ContainerPaused);
            }
            UnpauseContainer { id } => {
                let container = self.container(id)?;
                if container.status != ContainerStatus::Paused {
                    return Err(Self::wrong_state(container, "unpause"));
                }
                self.append(decision, StreamId::new(StreamKind::Container, id), DomainEvent::ContainerUnpaused);
            }
            RenameContainer { id, new_name } => {
                let container = self.container(id)?;
                validate_object_name("container", new_name)?;
                if &container.name == new_name {
                    return Err(Rejection::InvalidArgument(format!("container is already named {new_name}")));
                }
                if let Some(by) = self.container_names.get(new_name) {
                    return Err(Rejection::NameInUse { kind: "container", name: new_name.clone(), by: by.clone() });
                }
                self.append(
                    decision,
                    StreamId::new(StreamKind::Container, id),
                    DomainEvent::ContainerRenamed { old_name: container.name.clone(), new_name: new_name.clone() },
                );
            }
            UpdateContainer { id, memory_bytes, nano_cpus, cpu_shares, restart_policy } => {
                let container = self.container(id)?;
                if *memory_bytes < 0 || *nano_cpus < 0 || *cpu_shares < 0 {
                    return Err(Rejection::InvalidArgument("resource limits must not be negative".into()));
                }
                if !matches!(restart_policy.as_str(), "" | "no" | "always" | "unless-stopped" | "on-failure") {
                    return Err(Rejection::InvalidArgument(format!("invalid restart policy {restart_policy:?}")));
                }
                let host = &container.spec.host;
                let unchanged = host.memory_bytes == *memory_bytes
                    && host.nano_cpus == *nano_cpus
                    && host.cpu_shares == *cpu_shares
                    && host.restart_policy == *restart_policy;
                if !unchanged {
                    self.append(
                        decision,
                        StreamId::new(StreamKind::Container, id),
                        DomainEvent::ContainerUpdated {
                            memory_bytes: *memory_bytes,
                            nano_cpus: *nano_cpus,
                            cpu_shares: *cpu_shares,
                            restart_policy: restart_policy.clone(),
                        },
                    );
                }
            }
            RemoveContainer { id, force } => {
                let container = self.container(id)?;
                if container.status.is_running() && !force {
                    return Err(Self::wrong_state(container, "remove (stop it first or force the removal)"));
                }
                self.remove_container_into(container, decision);
            }
            RegisterImage { id, reference_tags, size_bytes, layer_digests } => {
                validate_image_id(id)?;
                for reference in reference_tags {
                    validate_reference(reference)?;
                }
                if !self.images.contains_key(id) {
                    self.append(
                        decision,
                        StreamId::new(StreamKind::Image, id),
                        DomainEvent::ImageRegistered {
                            reference_tags: reference_tags.iter().map(|r| normalize_reference(r)).collect(),
                            size_bytes: *size_bytes,
                            layer_digests: layer_digests.clone(),
                            created_ms: now_ms,
                        },
                    );
                    for reference in reference_tags {
                        self.untag_elsewhere(&normalize_reference(reference), id, decision);
                    }
                } else {
                    for reference in reference_tags {
                        self.tag_into(id, &normalize_reference(reference), decision);
                    }
                }
            }
            TagImage { id, reference } => {
                if !self.images.contains_key(id) {
                    return Err(not_found("image", id));
                }
                validate_reference(reference)?;
                self.tag_into(id, &normalize_reference(reference), decision);
            }
            UntagImage { reference } => {
                let reference = normalize_reference(reference);
                let id = self.tags.get(&reference).ok_or_else(|| not_found("image", &reference))?;
                self.append(decision, StreamId::new(StreamKind::Image, id), DomainEvent::ImageUntagged { reference: reference.clone() });
            }
            RemoveImage { id, force } => {
                if !self.images.contains_key(id) {
                    return Err(not_found("image", id));
                }
                if let Some(user) = self.containers.values().find(|c| &c.image_id == id && (!force || c.status.is_running())) {
                    let state = if user.status.is_running() { "running" } else { "stopped" };
                    return Err(Rejection::InUse { kind: "image", id: id.clone(), by: format!("{state} container {}", user.id) });
                }
                self.append(decision, StreamId::new(StreamKind::Image, id), DomainEvent::ImageRemoved);
            }
            CreateVolume { name, driver, labels } => {
                validate_object_name("volume", name)?;
                if driver != "local" {
                    return Err(Rejection::InvalidArgument(format!("volume driver {driver:?} is not supported; use \"local\"")));
                }
                if !self.volumes.contains_key(name) {
                    self.append(
                        decision,
                        StreamId::new(StreamKind::Volume, name),
                        DomainEvent::VolumeCreated {
                            name: name.clone(),
                            driver: driver.clone(),
                            labels: labels.clone(),
                            created_ms: now_ms,
                        },
                    );
                }
            }
            RemoveVolume { name, force } => {
                if !self.volumes.contains_key(name) {
                    if *force {
                        return Ok(());
                    }
                    return Err(not_found("volume", name));
                }
                let users: Vec<&str> = self
                    .containers
                    .values()
                    .filter(|c| c.spec.host.mounts.iter().any(|m| &m.volume == name))
                    .map(|c| c.id.as_str())
                    .collect();
                if !users.is_empty() {
                    return Err(Rejection::InUse { kind: "volume", id: name.clone(), by: format!("[{}]", users.join(", ")) });
                }
                self.append(decision, StreamId::new(StreamKind::Volume, name), DomainEvent::VolumeRemoved);
            }
            CreateNetwork { id, name, driver, subnet, gateway, internal, labels } => {
                if !PREDEFINED_NETWORK_NAMES.contains(&name.as_str()) || self.network_names.contains_key(name) {
                    validate_object_name("network", name)?;
                }
                if let Some(by) = self.network_names.get(name) {
                    return Err(Rejection::NameInUse { kind: "network", name: name.clone(), by: by.clone() });
                }
                if self.versions.contains_key(&StreamId::new(StreamKind::Network, id)) {
                    return Err(Rejection::AlreadyExists { kind: "network", id: id.clone() });
                }
                if !matches!(driver.as_str(), "bridge" | "host" | "null" | EXTERNAL_NETWORK_DRIVER) {
                    return Err(Rejection::InvalidArgument(format!("network driver {driver:?} is not supported")));
                }
                if driver == EXTERNAL_NETWORK_DRIVER {
                    let vch = labels.get(LABEL_VCH).ok_or_else(|| {
                        Rejection::InvalidArgument(format!("an {EXTERNAL_NETWORK_DRIVER} network needs the label {LABEL_VCH}"))
                    })?;
                    self.vchs.get(vch).ok_or_else(|| not_found("vch", vch))?;
                    if labels.get(LABEL_PORT_GROUP).is_none_or(|port_group| port_group.is_empty()) {
                        return Err(Rejection::InvalidArgument(format!(
                            "an {EXTERNAL_NETWORK_DRIVER} network needs the label {LABEL_PORT_GROUP}"
                        )));
                    }
                    if !subnet.is_empty() {
                        return Err(Rejection::InvalidArgument(format!(
                            "an {EXTERNAL_NETWORK_DRIVER} network takes its addresses from its port group, not subnet {subnet}"
                        )));
                    }
                }
                if driver == "bridge" {
                    let parsed = Ipv4Subnet::parse(subnet)
                        .ok_or_else(|| Rejection::InvalidArgument(format!("invalid subnet {subnet:?}: want a.b.c.d/8..30")))?;
                    let gateway_address =
                        parse_ipv4(gateway).ok_or_else(|| Rejection::InvalidArgument(format!("invalid gateway {gateway:?}")))?;
                    if !parsed.contains(gateway_address) {
                        return Err(Rejection::InvalidArgument(format!("gateway {gateway} is not in subnet {subnet}")));
                    }
                    for other in self.networks.values() {
                        if let Some(other_subnet) = Ipv4Subnet::parse(&other.subnet) {
                            if other_subnet.contains(parsed.base) || parsed.contains(other_subnet.base) {
                                return Err(Rejection::Forbidden(format!(
                                    "invalid pool request: Pool overlaps with other one on this address space ({} of network {})",
                                    other.subnet, other.name
                                )));
                            }
                        }
                    }
                }
                self.append(
                    decision,
                    StreamId::new(StreamKind::Network, id),
                    DomainEvent::NetworkCreated {
                        name: name.clone(),
                        driver: driver.clone(),
                        subnet: subnet.clone(),
                        gateway: gateway.clone(),
                        internal: *internal,
                        labels: labels.clone(),
                        created_ms: now_ms,
                    },
                );
            }
            RemoveNetwork { id } => {
                let network = self.networks.get(id).ok_or_else(|| not_found("network", id))?;
                if PREDEFINED_NETWORK_NAMES.contains(&network.name.as_str()) {
                    return Err(Rejection::Forbidden(format!("{} is a pre-defined network and cannot be removed", network.name)));
                }
                if !network.endpoints.is_empty() {
                    return Err(Rejection::InUse {
                        kind: "network",
                        id: format!("{} id {}", network.name, network.id),
                        by: "active endpoints".into(),
                    });
                }
                self.append(decision, StreamId::new(StreamKind::Network, id), DomainEvent::NetworkRemoved);
            }
            ConnectNetwork { network_id, container_id, ipv4_address } => {
                let network = self.networks.get(network_id).ok_or_else(|| not_found("network", network_id))?;
                let container = self.container(container_id)?;
                if network.endpoints.contains_key(container_id) {
                    return Err(Rejection::Forbidden(format!(
                        "endpoint with name {} already exists in network {}",
                        container.name, network.name
                    )));
                }
                if matches!(network.driver.as_str(), "host" | "null") {
                    return Err(Rejection::Forbidden(format!("container cannot be connected to network {}", network.name)));
                }
                let address = self.endpoint_address(network, ipv4_address.as_deref(), &container.vch)?;
                self.append(
                    decision,
                    StreamId::new(StreamKind::Network, network_id),
                    DomainEvent::NetworkContainerConnected { container_id: container_id.clone(), ipv4_address: address },
                );
            }
            DisconnectNetwork { network_id, container_id, force } => {
                let network = self.networks.get(network_id).ok_or_else(|| not_found("network", network_id))?;
                if !network.endpoints.contains_key(container_id) {
                    if *force {
                        return Ok(());
                    }
                    return Err(Rejection::Forbidden(format!("container {container_id} is not connected to network {}", network.name)));
                }
                self.append(
                    decision,
                    StreamId::new(StreamKind::Network, network_id),
                    DomainEvent::NetworkContainerDisconnected { container_id: container_id.clone() },
                );
            }
        }
        Ok(())
    }

    fn remove_container_into(&self, container: &ContainerState, decision: &mut Decision) {
        for network in self.networks.values() {
            if network.endpoints.contains_key(&container.id) {
                self.append(
                    decision,
                    StreamId::new(StreamKind::Network, &network.id),
                    DomainEvent::NetworkContainerDisconnected { container_id: container.id.clone() },
                );
            }
        }
        self.append(decision, StreamId::new(StreamKind::Container, &container.id), DomainEvent::ContainerRemoved);
    }

    fn untag_elsewhere(&self, reference: &str, new_owner: &str, decision: &mut Decision) {
        if let Some(owner) = self.tags.get(reference) {
            if owner != new_owner {
                self.append(
                    decision,
                    StreamId::new(StreamKind::Image, owner),
                    DomainEvent::ImageUntagged { reference: reference.to_string() },
                );
            }
        }
    }

    fn tag_into(&self, id: &str, reference: &str, decision: &mut Decision) {
        if self.tags.get(reference).map(String::as_str) == Some(id) {
            return;
        }
        self.untag_elsewhere(reference, id, decision);
        self.append(decision, StreamId::new(StreamKind::Image, id), DomainEvent::ImageTagged { reference: reference.to_string() });
    }

    /// The bridge network a VCH's containers join by default: its own (a
    /// vSphere VCH's, labelled [`LABEL_DEFAULT_BRIDGE`]), else the global `bridge`.
    fn default_bridge(&self, vch: &str) -> Option<&NetworkState> {
        self.networks.values().find(|network| {
            network.labels.get(LABEL_VCH).map(String::as_str) == Some(vch)
                && network.labels.get(LABEL_DEFAULT_BRIDGE).map(String::as_str) == Some("true")
        })
    }

    /// The address a container gets on `network`: allocated from a bridge
    /// network's subnet; empty on a container network, whose port group
    /// assigns it (DHCP), and only for containers of the network's VCH.
    fn endpoint_address(&self, network: &NetworkState, requested: Option<&str>, container_vch: &str) -> Result<String, Rejection> {
        if network.driver != EXTERNAL_NETWORK_DRIVER {
            return self.allocate_address(network, requested);
        }
        let owner = network.labels.get(LABEL_VCH).map(String::as_str).unwrap_or_default();
        if owner != container_vch {
            return Err(Rejection::InvalidArgument(format!(
                "network {} is a container network of VCH {owner}; this container belongs to VCH {container_vch}",
                network.name
            )));
        }
        if requested.is_some_and(|address| !address.is_empty()) {
            return Err(Rejection::InvalidArgument(format!("network {} assigns addresses itself (DHCP on its port group)", network.name)));
        }
        Ok(String::new())
    }

    fn allocate_address(&self, network: &NetworkState, requested: Option<&str>) -> Result<String, Rejection> {
        let subnet = Ipv4Subnet::parse(&network.subnet)
            .ok_or_else(|| Rejection::InvalidArgument(format!("network {} has no IPv4 subnet", network.name)))?;
        let gateway = parse_ipv4(&network.gateway);
        let used: BTreeSet<u32> = network.endpoints.values().filter_map(|a| parse_ipv4(a)).collect();
        if let Some(requested) = requested.filter(|r| !r.is_empty()) {
            let address = parse_ipv4(requested).ok_or_else(|| Rejection::InvalidArgument(format!("invalid IPv4 address {requested:?}")))?;
            if !subnet.contains(address) || Some(address) == gateway {
                return Err(Rejection::InvalidArgument(format!("address {requested} is not usable in subnet {}", network.subnet)));
            }
            if used.contains(&address) {
                return Err(Rejection::Forbidden(format!("Address already in use: {requested}")));
            }
            return Ok(requested.to_string());
        }
        subnet
            .hosts()
            .find(|address| Some(*address) != gateway && !used.contains(address))
            .map(format_ipv4)
            .ok_or_else(|| Rejection::LimitReached(format!("no free address left in network {}", network.name)))
    }

    /// Folds one recorded event into the model. Never fails: an event that
    /// does not fit (which the decisions never produce) is ignored.
    pub fn apply(&mut self, stream: &StreamId, version: StreamVersion, event: &DomainEvent) {
        self.versions.insert(stream.clone(), version);
        let key = &stream.key;
        match event {
            DomainEvent::VchCreated { name, spec } => {
                self.vchs.insert(key.clone(), VchState { name: name.clone(), spec: spec.clone() });
            }
            DomainEvent::VchConfigured { spec } => {
                if let Some(vch) = self.vchs.get_mut(key) {
                    vch.spec = spec.clone();
                }
            }
            DomainEvent::VchDeleted => {
                self.vchs.remove(key);
            }
            DomainEvent::VchUpgraded { to_version, .. } => {
                if let Some(vch) = self.vchs.get_mut(key) {
                    vch.spec.version = Some(to_version.clone());
                }
            }
            // Observations: in the audit trail and the views, not in the rules.
            DomainEvent::DriftObserved { .. } | DomainEvent::ReconcileFailed { .. } => {}
            DomainEvent::ContainerCreated { name, vch, image_id, spec, created_ms } => {
                self.container_names.insert(name.clone(), key.clone());
                self.containers.insert(
                    key.clone(),
                    ContainerState {
                        id: key.clone(),
                        name: name.clone(),
                        vch: vch.clone(),
                        image_id: image_id.clone(),
                        spec: spec.clone(),
                        status: ContainerStatus::Created,
                        stop_requested: false,
                        exit_code: 0,
                        created_ms: *created_ms,
                        started_ms: 0,
                        finished_ms: 0,
                        restart_count: 0,
                        generation: 0,
                    },
                );
            }
            DomainEvent::ContainerStarted { started_ms } => {
                if let Some(container) = self.containers.get_mut(key) {
                    if container.status == ContainerStatus::Exited {
                        container.restart_count += 1;
                    }
                    container.generation += 1;
                    container.status = ContainerStatus::Running;
                    container.stop_requested = false;
                    container.started_ms = *started_ms;
                    container.exit_code = 0;
                }
            }
            DomainEvent::ContainerStopRequested { .. } | DomainEvent::ContainerKilled { .. } => {
                if let Some(container) = self.containers.get_mut(key) {
                    container.stop_requested = true;
                }
            }
            DomainEvent::ContainerExited { exit_code, finished_ms } => {
                if let Some(container) = self.containers.get_mut(key) {
                    container.status = ContainerStatus::Exited;
                    container.exit_code = *exit_code;
                    container.finished_ms = *finished_ms;
                }
            }
            DomainEvent::ContainerPaused => {
                if let Some(container) = self.containers.get_mut(key) {
                    container.status = ContainerStatus::Paused;
                }
            }
            DomainEvent::ContainerUnpaused => {
                if let Some(container) = self.containers.get_mut(key) {
                    container.status = ContainerStatus::Running;
                }
            }
            DomainEvent::ContainerRenamed { old_name, new_name } => {
                if let Some(container) = self.containers.get_mut(key) {
                    self.container_names.remove(old_name);
                    self.container_names.insert(new_name.clone(), key.clone());
                    container.name = new_name.clone();
                }
            }
            DomainEvent::ContainerUpdated { memory_bytes, nano_cpus, cpu_shares, restart_policy } => {
                if let Some(container) = self.containers.get_mut(key) {
                    container.spec.host.memory_bytes = *memory_bytes;
                    container.spec.host.nano_cpus = *nano_cpus;
                    container.spec.host.cpu_shares = *cpu_shares;
                    container.spec.host.restart_policy = restart_policy.clone();
                }
            }
            DomainEvent::ContainerRemoved => {
                if let Some(container) = self.containers.remove(key) {
                    self.container_names.remove(&container.name);
                }
            }
            DomainEvent::ImageRegistered { reference_tags, size_bytes, layer_digests, created_ms } => {
                for reference in reference_tags {
                    self.tags.insert(reference.clone(), key.clone());
                }
                self.images.insert(
                    key.clone(),
                    ImageState {
                        id: key.clone(),
                        tags: reference_tags.iter().cloned().collect(),
                        size_bytes: *size_bytes,
                        layer_digests: layer_digests.clone(),
                        created_ms: *created_ms,
                    },
                );
                // A tag moved here in the same decision is untagged on its old owner
                // by a separate event; the index already points here.
            }
            DomainEvent::ImageTagged { reference } => {
                if let Some(image) = self.images.get_mut(key) {
                    image.tags.insert(reference.clone());
                    self.tags.insert(reference.clone(), key.clone());
                }
            }
            DomainEvent::ImageUntagged { reference } => {
                if let Some(image) = self.images.get_mut(key) {
                    image.tags.remove(reference);
                    if self.tags.get(reference) == Some(key) {
                        self.tags.remove(reference);
                    }
                }
            }
            DomainEvent::ImageRemoved => {
                if let Some(image) = self.images.remove(key) {
                    for reference in image.tags {
                        if self.tags.get(&reference) == Some(key) {
                            self.tags.remove(&reference);
                        }
                    }
                }
            }
            DomainEvent::VolumeCreated { name, driver, labels, created_ms } => {
                self.volumes.insert(
                    key.clone(),
                    VolumeState { name: name.clone(), driver: driver.clone(), labels: labels.clone(), created_ms: *created_ms },
                );
            }
            DomainEvent::VolumeRemoved => {
                self.volumes.remove(key);
            }
            DomainEvent::NetworkCreated { name, driver, subnet, gateway, internal, labels, created_ms } => {
                self.network_names.insert(name.clone(), key.clone());
                self.networks.insert(
                    key.clone(),
                    NetworkState {
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
            DomainEvent::NetworkRemoved => {
                if let Some(network) = self.networks.remove(key) {
                    self.network_names.remove(&network.name);
                }
            }
            DomainEvent::NetworkContainerConnected { container_id, ipv4_address } => {
                if let Some(network) = self.networks.get_mut(key) {
                    network.endpoints.insert(container_id.clone(), ipv4_address.clone());
                }
            }
            DomainEvent::NetworkContainerDisconnected { container_id } => {
                if let Some(network) = self.networks.get_mut(key) {
                    network.endpoints.remove(container_id);
                }
            }
        }
    }

    /// Checks the invariants every reachable model keeps; `Err` names the first broken one.
    pub fn check_invariants(&self) -> Result<(), String> {
        for (name, id) in &self.container_names {
            match self.containers.get(id) {
                Some(container) if &container.name == name => {}
                _ => return Err(format!("container name index: {name} -> {id} is stale")),
            }
        }
        if self.container_names.len() != self.containers.len() {
            return Err("a container is missing from the name index".into());
        }
        for container in self.containers.values() {
            if !self.images.contains_key(&container.image_id)
                && self.versions.get(&StreamId::new(StreamKind::Image, &container.image_id)).is_none()
            {
                return Err(format!("container {} uses unknown image {}", container.id, container.image_id));
            }
            if !self.vchs.contains_key(&container.vch) {
                return Err(format!("container {} belongs to missing VCH {}", container.id, container.vch));
            }
        }
        for (reference, id) in &self.tags {
            match self.images.get(id) {
                Some(image) if image.tags.contains(reference) => {}
                _ => return Err(format!("tag index: {reference} -> {id} is stale")),
            }
        }
        for image in self.images.values() {
            for reference in &image.tags {
                if self.tags.get(reference) != Some(&image.id) {
                    return Err(format!("image {} claims tag {reference} owned elsewhere", image.id));
                }
            }
        }
        for (name, id) in &self.network_names {
            match self.networks.get(id) {
                Some(network) if &network.name == name => {}
                _ => return Err(format!("network name index: {name} -> {id} is stale")),
            }
        }
        for network in self.networks.values() {
            let subnet = Ipv4Subnet::parse(&network.subnet);
            let mut seen = BTreeSet::new();
            for (container_id, address) in &network.endpoints {
                if !self.containers.contains_key(container_id) {
                    return Err(format!("network {} has an endpoint for removed container {container_id}", network.name));
                }
                // Container networks' addresses come from the port group (DHCP): empty here.
                if !address.is_empty() && !seen.insert(address) {
                    return Err(format!("network {} gives {address} twice", network.name));
                }
                if let (Some(subnet), Some(parsed)) = (subnet, parse_ipv4(address)) {
                    if !subnet.contains(parsed) {
                        return Err(format!("network {} gives {address} outside {}", network.name, network.subnet));
                    }
                }
            }
        }
        Ok(())
    }
}

fn validate_image_id(id: &str) -> Result<(), Rejection> {
    let hex = id.strip_prefix("sha256:").unwrap_or("");
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return Err(Rejection::InvalidArgument(format!("invalid image id {id:?}: want sha256:<64 hex digits>")));
    }
    Ok(())
}

/// The memory a container's VM gets: its `--memory`, rounded up to whole MiB,
/// or [`CONTAINER_MEMORY_MIB_DEFAULT`].
pub fn container_memory_mib(spec: &ContainerSpec) -> u64 {
    let bytes = spec.host.memory_bytes;
    if bytes > 0 {
        (bytes as u64).div_ceil(1024 * 1024)
    } else {
        CONTAINER_MEMORY_MIB_DEFAULT
    }
}

/// The memory of a container VM started without `--memory` (VIC used 2 GiB;
/// berth's container VMs boot a smaller kernel).
pub const CONTAINER_MEMORY_MIB_DEFAULT: u64 = 512;

/// The driver of a container network: a vSphere port group offered to a
/// VCH's containers under an alias (vic-machine's --container-network).
pub const EXTERNAL_NETWORK_DRIVER: &str = "external";
/// The label naming the VCH a container network belongs to.
pub const LABEL_VCH: &str = "berth.vch";
/// The label marking a VCH's own default bridge network (value `true`).
pub const LABEL_DEFAULT_BRIDGE: &str = "berth.default_bridge";
/// The label naming a container network's port group.
pub const LABEL_PORT_GROUP: &str = "berth.port_group";
