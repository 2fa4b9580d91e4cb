//! Domain events: the one persisted schema. Past tense, versioned, never
//! changed in place: a new field is an `Option` with a default, a changed
//! meaning is a new event type, and [`upcast`] upgrades old schema versions
//! when they are read back.

use crate::ids::{CommandId, EventId, Position, StreamId, StreamVersion};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The schema version written with every new event.
pub const EVENT_SCHEMA_VERSION: u16 = 1;

/// An event as the log recorded it: the domain event plus its envelope.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedEvent {
    pub position: Position,
    pub stream: StreamId,
    pub version: StreamVersion,
    pub event_id: EventId,
    pub command_id: Option<CommandId>,
    pub actor: String,
    pub recorded_at_ms: u64,
    pub schema_version: u16,
    pub event: DomainEvent,
}

/// How a VCH is configured: where its containers live and what limits it has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct VchSpec {
    /// `local` for the embedded runtime, or a vSphere target URL.
    pub target: String,
    pub compute_resource: Option<String>,
    pub image_store: Option<String>,
    #[serde(default)]
    pub volume_stores: Vec<String>,
    pub bridge_network: Option<String>,
    pub public_network: Option<String>,
    #[serde(default)]
    pub container_networks: Vec<String>,
    /// The most containers the VCH may hold (0: unlimited).
    #[serde(default)]
    pub container_count_max: u64,
    /// Memory limit of the VCH's resource pool in MiB (0: unlimited).
    #[serde(default)]
    pub memory_mib_max: u64,
    /// CPU limit of the VCH's resource pool in MHz (0: unlimited).
    #[serde(default)]
    pub cpu_mhz_max: u64,
    /// The vSphere user berth logs in as (the password is kept outside the log).
    #[serde(default)]
    pub user: Option<String>,
    /// The target certificate's thumbprint, when it is self-signed.
    #[serde(default)]
    pub thumbprint: Option<String>,
    /// The port group on which docker clients reach the VCH (vic-machine's --client-network).
    #[serde(default)]
    pub client_network: Option<String>,
    /// The port group the VCH uses to reach vSphere (vic-machine's --management-network).
    #[serde(default)]
    pub management_network: Option<String>,
    /// Where the VCH's own Docker API listens (`HOST:PORT`); empty for the embedded VCH.
    #[serde(default)]
    pub docker_listen: Option<String>,
    /// The berth version the VCH was created with or last upgraded to.
    #[serde(default)]
    pub version: Option<String>,
    /// How the VCH's Docker API is protected: `tls` (server certificate),
    /// `tlsverify` (clients must present certificates the VCH's CA signed),
    /// or absent (plain HTTP on loopback). The keys themselves stay out of the log.
    #[serde(default)]
    pub docker_tls: Option<String>,
}

impl VchSpec {
    /// True when the VCH's containers live on the embedded local runtime.
    pub fn is_local(&self) -> bool {
        self.target == "local"
    }
}

/// A published port: `container_port/protocol` to a host address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct PortBinding {
    pub host_ip: String,
    pub host_port: String,
}

/// A volume mounted into a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct VolumeMount {
    /// The named volume (an anonymous one gets a generated name).
    pub volume: String,
    pub target: String,
    pub read_only: bool,
}

/// The host-side settings of a container (Docker's HostConfig, the parts berth enacts).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct HostSpec {
    #[serde(default)]
    pub port_bindings: BTreeMap<String, Vec<PortBinding>>,
    #[serde(default)]
    pub network_mode: String,
    #[serde(default)]
    pub memory_bytes: i64,
    #[serde(default)]
    pub nano_cpus: i64,
    #[serde(default)]
    pub cpu_shares: i64,
    #[serde(default)]
    pub auto_remove: bool,
    #[serde(default)]
    pub restart_policy: String,
    #[serde(default)]
    pub mounts: Vec<VolumeMount>,
}

/// What a container runs (Docker's Config, the parts berth enacts).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ContainerSpec {
    /// The image reference as the client gave it.
    pub image: String,
    #[serde(default)]
    pub cmd: Vec<String>,
    #[serde(default)]
    pub entrypoint: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub working_dir: String,
    #[serde(default)]
    pub user: String,
    #[serde(default)]
    pub hostname: String,
    #[serde(default)]
    pub tty: bool,
    #[serde(default)]
    pub open_stdin: bool,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub exposed_ports: Vec<String>,
    #[serde(default)]
    pub stop_signal: Option<String>,
    #[serde(default)]
    pub stop_timeout_s: Option<i64>,
    #[serde(default)]
    pub host: HostSpec,
}

/// Everything that can happen to a berth object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum DomainEvent {
    VchCreated {
        name: String,
        spec: VchSpec,
    },
    VchConfigured {
        spec: VchSpec,
    },
    VchDeleted,
    /// The VCH's objects were upgraded to this berth version.
    VchUpgraded {
        from_version: Option<String>,
        to_version: String,
    },
    /// The infrastructure was found to differ from what the log says in a way
    /// that no command caused (a VM powered off or removed behind berth's back,
    /// a VM that belongs to no container); the reconciler repairs it.
    DriftObserved {
        description: String,
    },
    /// The reconciler gave up retrying an action quickly: it keeps retrying slowly.
    ReconcileFailed {
        action: String,
        error: String,
        attempts: u32,
    },

    ContainerCreated {
        name: String,
        vch: String,
        image_id: String,
        spec: ContainerSpec,
        created_ms: u64,
    },
    ContainerStarted {
        started_ms: u64,
    },
    ContainerStopRequested {
        timeout_s: Option<i64>,
    },
    ContainerKilled {
        signal: String,
    },
    /// Observed: the container's process ended.
    ContainerExited {
        exit_code: i64,
        finished_ms: u64,
    },
    ContainerPaused,
    ContainerUnpaused,
    ContainerRenamed {
        old_name: String,
        new_name: String,
    },
    ContainerUpdated {
        memory_bytes: i64,
        nano_cpus: i64,
        cpu_shares: i64,
        restart_policy: String,
    },
    ContainerRemoved,

    ImageRegistered {
        reference_tags: Vec<String>,
        size_bytes: u64,
        layer_digests: Vec<String>,
        created_ms: u64,
    },
    ImageTagged {
        reference: String,
    },
    ImageUntagged {
        reference: String,
    },
    ImageRemoved,

    VolumeCreated {
        name: String,
        driver: String,
        labels: BTreeMap<String, String>,
        created_ms: u64,
    },
    VolumeRemoved,

    NetworkCreated {
        name: String,
        driver: String,
        subnet: String,
        gateway: String,
        internal: bool,
        labels: BTreeMap<String, String>,
        created_ms: u64,
    },
    NetworkRemoved,
    NetworkContainerConnected {
        container_id: String,
        ipv4_address: String,
    },
    NetworkContainerDisconnected {
        container_id: String,
    },
}

impl DomainEvent {
    /// The event's type name, as the envelope and NATS subjects carry it.
    pub fn type_name(&self) -> &'static str {
        match self {
            DomainEvent::VchCreated { .. } => "VchCreated",
            DomainEvent::VchConfigured { .. } => "VchConfigured",
            DomainEvent::VchDeleted => "VchDeleted",
            DomainEvent::VchUpgraded { .. } => "VchUpgraded",
            DomainEvent::DriftObserved { .. } => "DriftObserved",
            DomainEvent::ReconcileFailed { .. } => "ReconcileFailed",
            DomainEvent::ContainerCreated { .. } => "ContainerCreated",
            DomainEvent::ContainerStarted { .. } => "ContainerStarted",
            DomainEvent::ContainerStopRequested { .. } => "ContainerStopRequested",
            DomainEvent::ContainerKilled { .. } => "ContainerKilled",
            DomainEvent::ContainerExited { .. } => "ContainerExited",
            DomainEvent::ContainerPaused => "ContainerPaused",
            DomainEvent::ContainerUnpaused => "ContainerUnpaused",
            DomainEvent::ContainerRenamed { .. } => "ContainerRenamed",
            DomainEvent::ContainerUpdated { .. } => "ContainerUpdated",
            DomainEvent::ContainerRemoved => "ContainerRemoved",
            DomainEvent::ImageRegistered { .. } => "ImageRegistered",
            DomainEvent::ImageTagged { .. } => "ImageTagged",
            DomainEvent::ImageUntagged { .. } => "ImageUntagged",
            DomainEvent::ImageRemoved => "ImageRemoved",
            DomainEvent::VolumeCreated { .. } => "VolumeCreated",
            DomainEvent::VolumeRemoved => "VolumeRemoved",
            DomainEvent::NetworkCreated { .. } => "NetworkCreated",
            DomainEvent::NetworkRemoved => "NetworkRemoved",
            DomainEvent::NetworkContainerConnected { .. } => "NetworkContainerConnected",
            DomainEvent::NetworkContainerDisconnected { .. } => "NetworkContainerDisconnected",
        }
    }
}

/// Why an event could not be read back in the current schema.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UpcastError {
    #[error("event schema version {0} is newer than this berth understands ({EVENT_SCHEMA_VERSION})")]
    FromTheFuture(u16),
    #[error("event schema version 0 does not exist")]
    VersionZero,
}

/// Upgrades an event written with an older schema version to the current one.
/// Version 1 is the first schema, so today this only refuses unknown versions;
/// an upgrade step goes here whenever an event's meaning changes.
pub fn upcast(schema_version: u16, event: DomainEvent) -> Result<DomainEvent, UpcastError> {
    match schema_version {
        0 => Err(UpcastError::VersionZero),
        EVENT_SCHEMA_VERSION => Ok(event),
        newer => Err(UpcastError::FromTheFuture(newer)),
    }
}
