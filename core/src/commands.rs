//! Commands: what a client or an adapter asks berth to do, imperative and
//! carrying everything the decision needs (ids chosen by the caller, so that
//! deciding stays pure).

use crate::events::{ContainerSpec, VchSpec};
use crate::ids::{CommandId, StreamId, StreamVersion};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A command with its envelope: who asked, its idempotency key, and the
/// version of the target stream the caller last saw (optimistic concurrency).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandEnvelope {
    pub command_id: Option<CommandId>,
    pub actor: String,
    pub expected_version: Option<StreamVersion>,
    pub command: Command,
}

impl CommandEnvelope {
    pub fn new(actor: impl Into<String>, command: Command) -> CommandEnvelope {
        CommandEnvelope { command_id: None, actor: actor.into(), expected_version: None, command }
    }

    pub fn with_id(mut self, command_id: CommandId) -> CommandEnvelope {
        self.command_id = Some(command_id);
        self
    }

    pub fn expecting(mut self, version: StreamVersion) -> CommandEnvelope {
        self.expected_version = Some(version);
        self
    }
}

/// What the decision may read besides the model: the current time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Context {
    pub now_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    CreateVch {
        name: String,
        spec: VchSpec,
    },
    ConfigureVch {
        name: String,
        spec: VchSpec,
    },
    /// Upgrades a VCH's objects to `version` (the running berth's).
    UpgradeVch {
        name: String,
        version: String,
    },
    /// An observation: the infrastructure differs from the log (see `DriftObserved`).
    RecordDrift {
        stream: StreamId,
        description: String,
    },
    /// An observation: an action on an object keeps failing.
    RecordReconcileFailure {
        stream: StreamId,
        action: String,
        error: String,
        attempts: u32,
    },
    /// Deletes a VCH; without `force` it must hold no containers.
    DeleteVch {
        name: String,
        force: bool,
    },

    CreateContainer {
        id: String,
        name: String,
        vch: String,
        image_id: String,
        spec: ContainerSpec,
    },
    StartContainer {
        id: String,
    },
    StopContainer {
        id: String,
        timeout_s: Option<i64>,
    },
    KillContainer {
        id: String,
        signal: String,
    },
    /// An observation: the container's process ended with this code.
    RecordContainerExited {
        id: String,
        exit_code: i64,
    },
    PauseContainer {
        id: String,
    },
    UnpauseContainer {
        id: String,
    },
    RenameContainer {
        id: String,
        new_name: String,
    },
    /// Changes a container's resources and restart policy (docker update).
    UpdateContainer {
        id: String,
        memory_bytes: i64,
        nano_cpus: i64,
        cpu_shares: i64,
        restart_policy: String,
    },
    /// Removes a container; a running one only with `force` (it is killed first).
    RemoveContainer {
        id: String,
        force: bool,
    },

    RegisterImage {
        id: String,
        reference_tags: Vec<String>,
        size_bytes: u64,
        layer_digests: Vec<String>,
    },
    /// Points `reference` at an image, moving it away from any image that had it.
    TagImage {
        id: String,
        reference: String,
    },
    UntagImage {
        reference: String,
    },
    /// Removes an image; one that a container uses only with `force`.
    RemoveImage {
        id: String,
        force: bool,
    },

    CreateVolume {
        name: String,
        driver: String,
        labels: BTreeMap<String, String>,
    },
    RemoveVolume {
        name: String,
        force: bool,
    },

    CreateNetwork {
        id: String,
        name: String,
        driver: String,
        subnet: String,
        gateway: String,
        internal: bool,
        labels: BTreeMap<String, String>,
    },
    RemoveNetwork {
        id: String,
    },
    ConnectNetwork {
        network_id: String,
        container_id: String,
        ipv4_address: Option<String>,
    },
    DisconnectNetwork {
        network_id: String,
        container_id: String,
        force: bool,
    },
}
