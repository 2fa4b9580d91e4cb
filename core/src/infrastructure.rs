//! The port to the place where containers live (the local runtime, vSphere,
//! or the simulator's double), as the reconciler sees it.
//!
//! Every operation is idempotent and names objects by the container id, so a
//! retried or repeated reconcile converges instead of duplicating. A
//! container's run is identified by its *generation*: the number of times it
//! was started. The reconciler powers on generation `g`; the infrastructure
//! reports the generation it runs or last ran, so "needs a start" and "has
//! exited" are told apart from state alone (level-triggered).

use crate::events::{ContainerSpec, VchSpec};

/// What the infrastructure observed of one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedContainer {
    pub id: String,
    pub vch: String,
    /// The generation it runs or last ran (0: never started).
    pub generation: u64,
    pub power: ObservedPower,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObservedPower {
    /// Provisioned, never started in this generation.
    Created,
    Running,
    Paused,
    /// The run of `generation` ended with this exit code.
    Exited {
        exit_code: i64,
    },
}

/// One network attachment of a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedNetwork {
    pub network_id: String,
    pub network_name: String,
    pub ipv4_address: String,
    pub prefix_length: u8,
    pub gateway: String,
    pub internal: bool,
}

/// Everything needed to provision a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerPlan {
    pub id: String,
    pub name: String,
    pub vch: String,
    pub image_id: String,
    pub spec: ContainerSpec,
    pub networks: Vec<PlannedNetwork>,
}

/// A network the infrastructure must provide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkPlan {
    pub id: String,
    pub name: String,
    pub driver: String,
    pub subnet: String,
    pub gateway: String,
    pub internal: bool,
    /// The VCH that owns the network (its bridge or a container network);
    /// None for networks every VCH shares.
    pub vch: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InfraError {
    #[error("{0} not found")]
    NotFound(String),
    /// Worth retrying with backoff (a timeout, a busy host, a lost response).
    #[error("transient infrastructure failure: {0}")]
    Transient(String),
    /// Retrying will not help (no space, bad configuration, unsupported).
    #[error("infrastructure failure: {0}")]
    Permanent(String),
}

pub trait Infrastructure: Send + Sync {
    /// Every container the infrastructure holds for berth.
    fn inventory(&self) -> Result<Vec<ObservedContainer>, InfraError>;
    /// Makes sure the VCH's own objects exist (resource pool, folder...).
    fn ensure_vch(&self, name: &str, spec: &VchSpec) -> Result<(), InfraError>;
    /// Removes the VCH's own objects; its containers are destroyed first.
    fn remove_vch(&self, name: &str) -> Result<(), InfraError>;
    fn ensure_network(&self, network: &NetworkPlan) -> Result<(), InfraError>;
    fn remove_network(&self, network_id: &str) -> Result<(), InfraError>;
    /// Creates the container (idempotent: an existing one is success).
    fn provision(&self, plan: &ContainerPlan) -> Result<(), InfraError>;
    /// Starts generation `generation` of the container.
    fn power_on(&self, id: &str, generation: u64) -> Result<(), InfraError>;
    /// Stops it: the stop signal, then a hard stop after `timeout_s`.
    fn power_off(&self, id: &str, signal: &str, timeout_s: i64) -> Result<(), InfraError>;
    fn signal(&self, id: &str, signal: &str) -> Result<(), InfraError>;
    fn pause(&self, id: &str) -> Result<(), InfraError>;
    fn unpause(&self, id: &str) -> Result<(), InfraError>;
    /// Removes the container and everything it holds (idempotent); its
    /// volumes stay.
    fn destroy(&self, id: &str) -> Result<(), InfraError>;
    /// Removes what holds a removed volume's data (idempotent). Infrastructures
    /// whose volumes live elsewhere (the local runtime's are directories that
    /// berth's effects remove) keep the default.
    fn remove_volume(&self, _name: &str) -> Result<(), InfraError> {
        Ok(())
    }
}
