//! The reconciler: makes the infrastructure hold what the log says.
//!
//! It is level-triggered: every round compares the *desired* state, folded
//! from the durable log, with the *observed* state (the infrastructure's
//! inventory), and acts on the difference, never on why it was woken. The
//! decision is the pure function [`plan`], tested without any infrastructure;
//! the [`Reconciler`] executes a plan with backoff per object and records what
//! it observes (exits) as commands through the [`CommandBus`].
//!
//! Desired state is folded from *durable* events, not read from the command
//! bus's model: the bus applies a decision before it is durable, and powering
//! on a run whose `ContainerStarted` is then lost in a crash would leave the
//! infrastructure ahead of the log.
//!
//! One step, [`Reconciler::tick`], does one bounded round of work. The tokio
//! task of [`Reconciler::spawn`] calls it when the log commits and on a
//! periodic resync; the simulator calls it on its own thread with virtual
//! time. Both run the same code.

use crate::bus::{CommandBus, CommandError, CommandOutcome};
use berth_core::events::VchSpec;
use berth_core::infrastructure::{
    ContainerPlan, InfraError, Infrastructure, NetworkPlan, ObservedContainer, ObservedPower, PlannedNetwork,
};
use berth_core::model::{ContainerState, ContainerStatus, DomainModel, Ipv4Subnet, NetworkState};
use berth_core::{Clock, Command, CommandEnvelope, CommandId, DomainEvent, Position, ReadError, RecordedEvent, StreamId, StreamKind};
use parking_lot::Mutex;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

/// Events read from the log per batch while catching up.
pub const READ_BATCH_EVENT_COUNT_MAX: usize = 4_096;
/// Events folded per tick; a tick that could not catch up acts on nothing,
/// because a stale prefix of the log is not the desired state.
pub const FOLD_EVENT_COUNT_PER_TICK_MAX: usize = 262_144;
/// Infrastructure actions started per tick; the rest wait for the next tick.
pub const ACTION_COUNT_PER_TICK_MAX: usize = 256;
/// The first retry delay after a failure; it doubles with every failure.
pub const BACKOFF_MS_MIN: u64 = 100;
/// The longest delay between fast retries.
pub const BACKOFF_MS_MAX: u64 = 10_000;
/// Failures of the same action before it is parked (retried slowly).
pub const ATTEMPT_COUNT_MAX: u32 = 8;
/// How long a parked action (permanent error, or too many failures) waits.
pub const PARKED_RETRY_MS: u64 = 30_000;
/// How often the production task re-reads the inventory when nothing commits.
pub const RESYNC_INTERVAL_MS: u64 = 10_000;
/// The shortest pause between two production ticks, so that a burst of
/// commits is handled by one round.
pub const TICK_INTERVAL_MS_MIN: u64 = 20;
/// The signal a stop sends when the container's spec names none.
pub const DEFAULT_STOP_SIGNAL: &str = "SIGTERM";
/// Seconds between the stop signal and the hard stop when neither the
/// request nor the spec says.
pub const DEFAULT_STOP_TIMEOUT_S: i64 = 10;
/// A kill delivers its signal and stops the container without grace.
pub const KILL_TIMEOUT_S: i64 = 0;
/// The actor that the reconciler's commands are recorded under.
pub const DEFAULT_ACTOR: &str = "reconciler";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReconcileError {
    #[error("reading the log failed: {0}")]
    Read(#[from] ReadError),
    #[error("reading the infrastructure's inventory failed: {0}")]
    Inventory(InfraError),
    #[error("{action} failed: {error}")]
    Action { action: String, error: InfraError },
    #[error("recording an observation failed: {0}")]
    Record(#[from] CommandError),
}

/// Which VCHs (and so which containers) one reconciler serves: one reconciler
/// runs per [`Infrastructure`] instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServedVchs {
    All,
    Named(BTreeSet<String>),
}

impl ServedVchs {
    pub fn named<I: IntoIterator<Item = S>, S: Into<String>>(names: I) -> ServedVchs {
        ServedVchs::Named(names.into_iter().map(Into::into).collect())
    }

    pub fn serves(&self, vch: &str) -> bool {
        match self {
            ServedVchs::All => true,
            ServedVchs::Named(names) => names.contains(vch),
        }
    }
}

/// How a requested stop is carried out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopOrder {
    pub signal: String,
    pub timeout_s: i64,
}

/// The desired state: the domain model folded from durable events, plus what
/// the model does not keep and the reconciler needs (how a stop was asked
/// for, which VCHs and networks were removed and still need cleaning up).
#[derive(Debug, Clone, Default)]
pub struct DesiredState {
    model: DomainModel,
    position: Position,
    stop_orders: HashMap<String, StopOrder>,
    removed_vchs: BTreeSet<String>,
    removed_networks: BTreeSet<String>,
    /// Containers removed in the log whose VMs may still exist: destroying
    /// one of these is cleanup, destroying any other unknown VM is drift.
    removed_containers: BTreeSet<String>,
    /// Volumes removed in the log whose data may still exist.
    removed_volumes: BTreeSet<String>,
}

impl DesiredState {
    pub fn new() -> DesiredState {
        DesiredState::default()
    }

    /// Folds one event; events at or before the current position are ignored.
    pub fn apply(&mut self, recorded: &RecordedEvent) {
        if recorded.position <= self.position {
            return;
        }
        self.position = recorded.position;
        let key = &recorded.stream.key;
        match (&recorded.event, recorded.stream.kind) {
            (DomainEvent::ContainerStarted { .. }, StreamKind::Container) => {
                self.stop_orders.remove(key);
            }
            (DomainEvent::ContainerRemoved, StreamKind::Container) => {
                self.stop_orders.remove(key);
                self.removed_containers.insert(key.clone());
            }
            (DomainEvent::ContainerCreated { .. }, StreamKind::Container) => {
                self.removed_containers.remove(key);
            }
            (DomainEvent::ContainerStopRequested { timeout_s }, StreamKind::Container) => {
                if let Some(container) = self.model.containers.get(key) {
                    let signal = container.spec.stop_signal.clone().unwrap_or_else(|| DEFAULT_STOP_SIGNAL.to_string());
                    let timeout_s = timeout_s.or(container.spec.stop_timeout_s).unwrap_or(DEFAULT_STOP_TIMEOUT_S);
                    self.order_stop(key, StopOrder { signal, timeout_s });
                }
            }
            (DomainEvent::ContainerKilled { signal }, StreamKind::Container) => {
                self.order_stop(key, StopOrder { signal: signal.clone(), timeout_s: KILL_TIMEOUT_S });
            }
            (DomainEvent::VchCreated { .. }, StreamKind::Vch) => {
                self.removed_vchs.remove(key);
            }
            (DomainEvent::VchDeleted, StreamKind::Vch) => {
                self.removed_vchs.insert(key.clone());
            }
            (DomainEvent::NetworkCreated { .. }, StreamKind::Network) => {
                self.removed_networks.remove(key);
            }
            (DomainEvent::NetworkRemoved, StreamKind::Network) => {
                self.removed_networks.insert(key.clone());
            }
            (DomainEvent::VolumeCreated { .. }, StreamKind::Volume) => {
                self.removed_volumes.remove(key);
            }
            (DomainEvent::VolumeRemoved, StreamKind::Volume) => {
                self.removed_volumes.insert(key.clone());
            }
            _ => {}
        }
        self.model.apply(&recorded.stream, recorded.version, &recorded.event);
    }

    /// A later, harsher order (a kill after a stop) wins; a gentler one does not
    /// undo it.
    fn order_stop(&mut self, id: &str, order: StopOrder) {
        match self.stop_orders.get(id) {
            Some(existing) if existing.timeout_s <= order.timeout_s => {}
            _ => {
                self.stop_orders.insert(id.to_string(), order);
            }
        }
    }

    pub fn model(&self) -> &DomainModel {
        &self.model
    }

    /// The position of the last event folded.
    pub fn position(&self) -> Position {
        self.position
    }

    /// How to stop a container: as requested, or by its spec's defaults.
    pub fn stop_order(&self, container: &ContainerState) -> StopOrder {
        self.stop_orders.get(&container.id).cloned().unwrap_or_else(|| StopOrder {
            signal: container.spec.stop_signal.clone().unwrap_or_else(|| DEFAULT_STOP_SIGNAL.to_string()),
            timeout_s: container.spec.stop_timeout_s.unwrap_or(DEFAULT_STOP_TIMEOUT_S),
        })
    }

    /// VCHs deleted in the log whose infrastructure objects may still exist.
    pub fn removed_vchs(&self) -> &BTreeSet<String> {
        &self.removed_vchs
    }

    /// Networks removed in the log that may still exist in the infrastructure.
    pub fn removed_networks(&self) -> &BTreeSet<String> {
        &self.removed_networks
    }

    /// The VCH's objects are gone from the infrastructure: nothing left to clean.
    pub fn forget_removed_vch(&mut self, name: &str) {
        self.removed_vchs.remove(name);
    }

    /// The network is gone from the infrastructure: nothing left to clean.
    pub fn forget_removed_network(&mut self, id: &str) {
        self.removed_networks.remove(id);
    }

    /// Volumes removed in the log whose data may still exist.
    pub fn removed_volumes(&self) -> &BTreeSet<String> {
        &self.removed_volumes
    }

    /// The volume's data is gone from the infrastructure.
    pub fn forget_removed_volume(&mut self, name: &str) {
        self.removed_volumes.remove(name);
    }

    /// Containers removed in the log whose VMs may still exist.
    pub fn removed_containers(&self) -> &BTreeSet<String> {
        &self.removed_containers
    }

    /// Keeps only the removed containers that the infrastructure still holds.
    pub fn retain_removed_containers(&mut self, still_present: impl Fn(&str) -> bool) {
        self.removed_containers.retain(|id| still_present(id));
    }
}

/// The observed state. Containers come from the inventory on every round;
/// the infrastructure has no inventory of networks and VCHs, so those are what
/// this reconciler ensured since it started (empty after a restart: every
/// object is ensured once more, which is idempotent).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ObservedState {
    pub containers: BTreeMap<String, ObservedContainer>,
    /// Networks ensured, by id.
    pub networks: BTreeSet<String>,
    /// VCHs ensured, with the spec they were ensured with.
    pub vchs: BTreeMap<String, VchSpec>,
}

/// The object an action works on: never two actions on one object at once.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ObjectKey {
    Vch(String),
    Network(String),
    Volume(String),
    Container(String),
}

/// One step towards the desired state.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    EnsureVch {
        name: String,
        spec: VchSpec,
    },
    /// Only once none of the VCH's containers is left in the infrastructure.
    RemoveVch {
        name: String,
    },
    EnsureNetwork(NetworkPlan),
    RemoveNetwork {
        id: String,
    },
    /// Only once no container of this infrastructure mounts it.
    RemoveVolume {
        name: String,
    },
    /// Only once its VCH and networks are ensured.
    Provision(Box<ContainerPlan>),
    PowerOn {
        id: String,
        generation: u64,
    },
    PowerOff {
        id: String,
        signal: String,
        timeout_s: i64,
    },
    Pause {
        id: String,
    },
    Unpause {
        id: String,
    },
    Destroy {
        id: String,
    },
    /// Records through the command bus that the current run has exited.
    RecordExited {
        id: String,
        generation: u64,
        exit_code: i64,
    },
}

impl Action {
    pub fn object(&self) -> ObjectKey {
        match self {
            Action::EnsureVch { name, .. } | Action::RemoveVch { name } => ObjectKey::Vch(name.clone()),
            Action::EnsureNetwork(network) => ObjectKey::Network(network.id.clone()),
            Action::RemoveNetwork { id } => ObjectKey::Network(id.clone()),
            Action::RemoveVolume { name } => ObjectKey::Volume(name.clone()),
            Action::Provision(plan) => ObjectKey::Container(plan.id.clone()),
            Action::PowerOn { id, .. }
            | Action::PowerOff { id, .. }
            | Action::Pause { id }
            | Action::Unpause { id }
            | Action::Destroy { id }
            | Action::RecordExited { id, .. } => ObjectKey::Container(id.clone()),
        }
    }

    /// A short name for logs and error messages.
    pub fn describe(&self) -> String {
        match self {
            Action::EnsureVch { name, .. } => format!("ensure VCH {name}"),
            Action::RemoveVch { name } => format!("remove VCH {name}"),
            Action::EnsureNetwork(network) => format!("ensure network {}", network.id),
            Action::RemoveNetwork { id } => format!("remove network {id}"),
            Action::RemoveVolume { name } => format!("remove volume {name}"),
            Action::Provision(plan) => format!("provision container {}", plan.id),
            Action::PowerOn { id, generation } => format!("power on container {id} (generation {generation})"),
            Action::PowerOff { id, signal, timeout_s } => format!("power off container {id} ({signal}, {timeout_s} s)"),
            Action::Pause { id } => format!("pause container {id}"),
            Action::Unpause { id } => format!("unpause container {id}"),
            Action::Destroy { id } => format!("destroy container {id}"),
            Action::RecordExited { id, generation, exit_code } => {
                format!("record the exit of container {id} (generation {generation}, code {exit_code})")
            }
        }
    }
}

fn network_plan(network: &NetworkState) -> NetworkPlan {
    NetworkPlan {
        id: network.id.clone(),
        name: network.name.clone(),
        driver: network.driver.clone(),
        subnet: network.subnet.clone(),
        gateway: network.gateway.clone(),
        internal: network.internal,
        vch: network.labels.get(berth_core::model::LABEL_VCH).cloned(),
    }
}

/// Compares desired and observed state and returns what to do, at most one
/// action per object, in a safe order: VCHs and networks before the containers
/// that need them, containers before the VCHs and networks that held them.
pub fn plan(desired: &DesiredState, observed: &ObservedState, served: &ServedVchs) -> Vec<Action> {
    let model = desired.model();
    let mut actions = Vec::new();

    for (name, vch) in &model.vchs {
        if served.serves(name) && observed.vchs.get(name) != Some(&vch.spec) {
            actions.push(Action::EnsureVch { name: name.clone(), spec: vch.spec.clone() });
        }
    }
    for network in model.networks.values() {
        // A VCH's own networks are its reconciler's; shared ones everyone's.
        let owner = network.labels.get(berth_core::model::LABEL_VCH);
        if owner.is_none_or(|vch| served.serves(vch)) && !observed.networks.contains(&network.id) {
            actions.push(Action::EnsureNetwork(network_plan(network)));
        }
    }

    for container in model.containers.values() {
        if !served.serves(&container.vch) {
            continue;
        }
        let action = match observed.containers.get(&container.id) {
            None => {
                let networks = attachments(model, &container.id);
                let ready = observed.vchs.contains_key(&container.vch)
                    && networks.iter().all(|network| observed.networks.contains(&network.network_id));
                ready.then(|| {
                    Action::Provision(Box::new(ContainerPlan {
                        id: container.id.clone(),
                        name: container.name.clone(),
                        vch: container.vch.clone(),
                        image_id: container.image_id.clone(),
                        spec: container.spec.clone(),
                        networks,
                    }))
                })
            }
            Some(observed_container) => container_action(desired, container, observed_container),
        };
        actions.extend(action);
    }

    let mut vchs_with_containers = BTreeSet::new();
    for observed_container in observed.containers.values() {
        if !served.serves(&observed_container.vch) {
            continue;
        }
        vchs_with_containers.insert(observed_container.vch.as_str());
        if !model.containers.contains_key(&observed_container.id) {
            actions.push(Action::Destroy { id: observed_container.id.clone() });
        }
    }

    for id in desired.removed_networks() {
        if !model.networks.contains_key(id) {
            actions.push(Action::RemoveNetwork { id: id.clone() });
        }
    }
    if !desired.removed_volumes().is_empty() {
        // A removed volume can still be mounted by a VM whose container is
        // gone from the log but not yet destroyed: its data goes after the VM.
        let destroying: BTreeSet<&str> =
            observed.containers.keys().filter(|id| !model.containers.contains_key(*id)).map(String::as_str).collect();
        for name in desired.removed_volumes() {
            if !model.volumes.contains_key(name) && destroying.is_empty() {
                actions.push(Action::RemoveVolume { name: name.clone() });
            }
        }
    }
    for name in desired.removed_vchs() {
        if served.serves(name) && !model.vchs.contains_key(name) && !vchs_with_containers.contains(name.as_str()) {
            actions.push(Action::RemoveVch { name: name.clone() });
        }
    }
    actions
}

/// The networks a container is connected to, as its provisioning needs them.
fn attachments(model: &DomainModel, container_id: &str) -> Vec<PlannedNetwork> {
    let mut networks = Vec::new();
    for network in model.networks.values() {
        if let Some(address) = network.endpoints.get(container_id) {
            networks.push(PlannedNetwork {
                network_id: network.id.clone(),
                network_name: network.name.clone(),
                ipv4_address: address.clone(),
                prefix_length: Ipv4Subnet::parse(&network.subnet).map_or(0, |subnet| subnet.prefix_length),
                gateway: network.gateway.clone(),
                internal: network.internal,
            });
        }
    }
    networks
}

/// What one provisioned container needs, judged by generations: a run older
/// than the log's needs a start, the log's own run is followed (exit, stop,
/// pause), and a run the log does not want is stopped.
fn container_action(desired: &DesiredState, container: &ContainerState, observed: &ObservedContainer) -> Option<Action> {
    let id = container.id.clone();
    let generation = container.generation;
    let observed_active = matches!(observed.power, ObservedPower::Running | ObservedPower::Paused);
    let power_off = || {
        let order = desired.stop_order(container);
        Action::PowerOff { id: id.clone(), signal: order.signal, timeout_s: order.timeout_s }
    };
    if !container.status.is_running() {
        return observed_active.then(power_off);
    }
    if observed.generation < generation {
        // An older run still going must end before the new one starts.
        return Some(if observed_active { power_off() } else { Action::PowerOn { id, generation } });
    }
    match (observed.power, container.status) {
        (ObservedPower::Exited { exit_code }, _) => Some(Action::RecordExited { id, generation, exit_code }),
        (ObservedPower::Created, _) => Some(Action::PowerOn { id, generation }),
        (ObservedPower::Running | ObservedPower::Paused, _) if container.stop_requested => Some(power_off()),
        (ObservedPower::Running, ContainerStatus::Paused) => Some(Action::Pause { id }),
        (ObservedPower::Paused, ContainerStatus::Running) => Some(Action::Unpause { id }),
        _ => None,
    }
}

/// What went wrong with one action in a tick.
#[derive(Debug, Clone, PartialEq)]
pub struct ActionFailure {
    pub action: Action,
    pub error: ReconcileError,
    /// True when the action now waits [`PARKED_RETRY_MS`] instead of backing off.
    pub parked: bool,
}

/// What one tick did.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TickReport {
    /// True when the desired state had folded the whole durable log.
    pub caught_up: bool,
    pub position: Position,
    /// True when another tick was running and this one did nothing.
    pub skipped_busy: bool,
    /// Set when the log or the inventory could not be read.
    pub error: Option<ReconcileError>,
    pub planned_action_count: usize,
    pub executed_action_count: usize,
    /// Actions waiting for their backoff, an exit record in flight, or the next tick.
    pub deferred_action_count: usize,
    pub failures: Vec<ActionFailure>,
    /// The earliest time something deferred becomes due.
    pub next_due_ms: Option<u64>,
}

impl TickReport {
    /// Nothing left to do: caught up, read the inventory, planned nothing.
    pub fn is_converged(&self) -> bool {
        self.caught_up && self.error.is_none() && !self.skipped_busy && self.planned_action_count == 0
    }

    fn due_at(&mut self, due_ms: u64) {
        self.next_due_ms = Some(self.next_due_ms.map_or(due_ms, |current| current.min(due_ms)));
    }
}

#[derive(Debug, Clone)]
struct Backoff {
    failure_count: u32,
    next_attempt_ms: u64,
    /// The backoff applies while the plan asks for the same action; a
    /// different action (the desired state moved) starts afresh.
    action: Action,
}

#[derive(Debug, Default)]
struct DriverState {
    desired: DesiredState,
    observed: ObservedState,
    backoffs: BTreeMap<ObjectKey, Backoff>,
    inventory_failure_count: u32,
    inventory_next_attempt_ms: u64,
    /// Containers the log still has whose VMs were in an earlier inventory
    /// and are missing from a later one: provisioning them again is drift.
    vanished: BTreeSet<String>,
    /// VCHs whose objects were found missing (a provision in them answered
    /// NotFound): ensuring them again repairs drift.
    vanished_vchs: BTreeSet<String>,
}

/// Executes plans against one [`Infrastructure`]; see the module docs.
pub struct Reconciler {
    bus: Arc<CommandBus>,
    infrastructure: Arc<dyn Infrastructure>,
    served: ServedVchs,
    actor: String,
    state: Mutex<DriverState>,
    /// Containers whose exit record is in the bus, not yet answered.
    recording: Arc<Mutex<BTreeSet<String>>>,
    /// How many actions of one tick run at once (on different objects).
    parallelism: usize,
}

/// The delay before the `failure_count`-th retry (counting from 1).
pub fn backoff_delay_ms(failure_count: u32) -> u64 {
    let shift = failure_count.saturating_sub(1).min(32);
    BACKOFF_MS_MIN.saturating_mul(1u64 << shift).min(BACKOFF_MS_MAX)
}

impl Reconciler {
    pub fn new(bus: Arc<CommandBus>, infrastructure: Arc<dyn Infrastructure>, served: ServedVchs) -> Reconciler {
        Reconciler::with_actor(bus, infrastructure, served, DEFAULT_ACTOR)
    }

    /// A reconciler whose recorded commands carry `actor` (one per infrastructure).
    pub fn with_actor(
        bus: Arc<CommandBus>,
        infrastructure: Arc<dyn Infrastructure>,
        served: ServedVchs,
        actor: impl Into<String>,
    ) -> Reconciler {
        Reconciler {
            bus,
            infrastructure,
            served,
            actor: actor.into(),
            state: Mutex::new(DriverState::default()),
            recording: Arc::new(Mutex::new(BTreeSet::new())),
            parallelism: 1,
        }
    }

    /// Runs up to `parallelism` actions of a tick at once, on different
    /// objects (the plan has at most one action per object). For
    /// infrastructures whose calls wait on a remote (vSphere); the simulator
    /// keeps 1, which executes in plan order.
    pub fn with_parallelism(mut self, parallelism: usize) -> Reconciler {
        self.parallelism = parallelism.max(1);
        self
    }

    pub fn served(&self) -> &ServedVchs {
        &self.served
    }

    /// The desired state as the last tick folded it.
    pub fn with_desired<T>(&self, read: impl FnOnce(&DesiredState) -> T) -> T {
        read(&self.state.lock().desired)
    }

    /// One bounded round: fold new durable events, read the inventory, plan,
    /// and start at most [`ACTION_COUNT_PER_TICK_MAX`] due actions. Never waits
    /// for anything but the infrastructure calls themselves; a tick that finds
    /// another one running returns at once.
    pub fn tick(&self, now_ms: u64) -> TickReport {
        let mut report = TickReport::default();
        let Some(mut state) = self.state.try_lock() else {
            report.skipped_busy = true;
            return report;
        };
        let state = &mut *state;

        match self.catch_up(&mut state.desired) {
            Ok(caught_up) => report.caught_up = caught_up,
            Err(error) => {
                tracing::error!(%error, "the reconciler cannot read the log");
                report.error = Some(error);
            }
        }
        report.position = state.desired.position();
        if !report.caught_up {
            return report;
        }

        if now_ms < state.inventory_next_attempt_ms {
            report.due_at(state.inventory_next_attempt_ms);
            return report;
        }
        match self.infrastructure.inventory() {
            Ok(containers) => {
                state.inventory_failure_count = 0;
                let observed: BTreeMap<String, ObservedContainer> =
                    containers.into_iter().map(|container| (container.id.clone(), container)).collect();
                for id in state.observed.containers.keys() {
                    if !observed.contains_key(id) && state.desired.model().containers.contains_key(id) {
                        state.vanished.insert(id.clone());
                    }
                }
                let model = state.desired.model();
                state.vanished.retain(|id| model.containers.contains_key(id) && !observed.contains_key(id));
                state.desired.retain_removed_containers(|id| observed.contains_key(id));
                state.observed.containers = observed;
            }
            Err(error) => {
                state.inventory_failure_count = state.inventory_failure_count.saturating_add(1);
                let delay_ms = backoff_delay_ms(state.inventory_failure_count);
                state.inventory_next_attempt_ms = now_ms.saturating_add(delay_ms);
                tracing::warn!(%error, delay_ms, "the reconciler cannot read the inventory; retrying");
                report.due_at(state.inventory_next_attempt_ms);
                report.error = Some(ReconcileError::Inventory(error));
                return report;
            }
        }

        let actions = plan(&state.desired, &state.observed, &self.served);
        report.planned_action_count = actions.len();
        let mut due = Vec::new();
        for action in actions {
            let key = action.object();
            if let Some(backoff) = state.backoffs.get(&key) {
                if backoff.action == action && now_ms < backoff.next_attempt_ms {
                    report.deferred_action_count += 1;
                    report.due_at(backoff.next_attempt_ms);
                    continue;
                }
            }
            if report.executed_action_count >= ACTION_COUNT_PER_TICK_MAX {
                report.deferred_action_count += 1;
                report.due_at(now_ms);
                continue;
            }
            if let Action::RecordExited { id, .. } = &action {
                if self.recording.lock().contains(id) {
                    report.deferred_action_count += 1;
                    continue;
                }
            }
            report.executed_action_count += 1;
            if !state.backoffs.contains_key(&key) {
                if let Some((stream, description)) = drift_of(state, &action) {
                    self.record_observation(Command::RecordDrift { stream, description }, None);
                }
            }
            if let Action::Provision(plan) = &action {
                state.vanished.remove(&plan.id);
            }
            if let Action::EnsureVch { name, .. } = &action {
                state.vanished_vchs.remove(name);
            }
            due.push(action);
        }
        let results = self.execute_all(&due);
        for (action, result) in due.into_iter().zip(results) {
            let key = action.object();
            match result {
                Ok(()) => {
                    state.backoffs.remove(&key);
                    remember_success(state, &action);
                }
                Err(error) => {
                    forget_uncertain(state, &action);
                    // A container whose VCH's objects are gone cannot be provisioned
                    // until they are ensured again: forget that they were.
                    if let (Action::Provision(plan), ReconcileError::Action { error: InfraError::NotFound(_), .. }) = (&action, &error) {
                        if state.observed.vchs.remove(&plan.vch).is_some() {
                            state.vanished_vchs.insert(plan.vch.clone());
                        }
                    }
                    let failure = self.back_off(state, now_ms, key, action, error);
                    report.due_at(state.backoffs.values().map(|b| b.next_attempt_ms).min().unwrap_or(now_ms));
                    report.failures.push(failure);
                }
            }
        }
        // Backoffs for objects the plan no longer mentions are stale.
        if state.backoffs.len() > ACTION_COUNT_PER_TICK_MAX * 4 {
            state.backoffs.retain(|_, backoff| backoff.next_attempt_ms > now_ms);
        }
        report
    }

    fn catch_up(&self, desired: &mut DesiredState) -> Result<bool, ReconcileError> {
        let log = self.bus.log();
        let mut folded_count = 0;
        while folded_count < FOLD_EVENT_COUNT_PER_TICK_MAX {
            let batch = log.read_all(desired.position(), READ_BATCH_EVENT_COUNT_MAX)?;
            folded_count += batch.len();
            for event in &batch {
                desired.apply(event);
            }
            if batch.len() < READ_BATCH_EVENT_COUNT_MAX {
                return Ok(true);
            }
        }
        Ok(log.head() <= desired.position())
    }

    /// Executes `actions` (each on a different object), `parallelism` at a
    /// time; the results come back in the order of `actions`.
    fn execute_all(&self, actions: &[Action]) -> Vec<Result<(), ReconcileError>> {
        if self.parallelism <= 1 || actions.len() <= 1 {
            return actions.iter().map(|action| self.execute(action)).collect();
        }
        let next = std::sync::atomic::AtomicUsize::new(0);
        let results: Vec<Mutex<Option<Result<(), ReconcileError>>>> = actions.iter().map(|_| Mutex::new(None)).collect();
        std::thread::scope(|scope| {
            for _ in 0..self.parallelism.min(actions.len()) {
                scope.spawn(|| loop {
                    let index = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(action) = actions.get(index) else { break };
                    *results[index].lock() = Some(self.execute(action));
                });
            }
        });
        results
            .into_iter()
            .map(|result| {
                result.into_inner().unwrap_or_else(|| {
                    Err(ReconcileError::Action { action: "an action".to_string(), error: InfraError::Transient("not run".to_string()) })
                })
            })
            .collect()
    }

    fn back_off(&self, state: &mut DriverState, now_ms: u64, key: ObjectKey, action: Action, error: ReconcileError) -> ActionFailure {
        let previous = state.backoffs.get(&key).filter(|backoff| backoff.action == action).map_or(0, |b| b.failure_count);
        let failure_count = previous.saturating_add(1);
        let permanent = matches!(error, ReconcileError::Action { error: InfraError::Permanent(_), .. });
        let parked = permanent || failure_count >= ATTEMPT_COUNT_MAX;
        // Parking is worth an event, once: the object's stream then says why
        // the infrastructure does not follow the log (Docker's State.Error).
        let newly_parked = if permanent { previous == 0 } else { failure_count == ATTEMPT_COUNT_MAX };
        if newly_parked {
            if let Some(stream) = object_stream(&key) {
                let action_text = action.describe();
                let error_text = match &error {
                    ReconcileError::Action { error, .. } => error.to_string(),
                    other => other.to_string(),
                };
                self.record_observation(
                    Command::RecordReconcileFailure { stream, action: action_text, error: error_text, attempts: failure_count },
                    None,
                );
            }
        }
        let delay_ms = if parked { PARKED_RETRY_MS } else { backoff_delay_ms(failure_count) };
        if parked {
            tracing::error!(%error, failure_count, delay_ms, "reconcile action parked");
        } else {
            tracing::warn!(%error, failure_count, delay_ms, "reconcile action failed; backing off");
        }
        state.backoffs.insert(key, Backoff { failure_count, next_attempt_ms: now_ms.saturating_add(delay_ms), action: action.clone() });
        ActionFailure { action, error, parked }
    }

    fn execute(&self, action: &Action) -> Result<(), ReconcileError> {
        let infrastructure = self.infrastructure.as_ref();
        let result = match action {
            Action::EnsureVch { name, spec } => infrastructure.ensure_vch(name, spec),
            Action::RemoveVch { name } => tolerate_missing(infrastructure.remove_vch(name)),
            Action::EnsureNetwork(network) => infrastructure.ensure_network(network),
            Action::RemoveNetwork { id } => tolerate_missing(infrastructure.remove_network(id)),
            Action::RemoveVolume { name } => tolerate_missing(infrastructure.remove_volume(name)),
            Action::Provision(plan) => infrastructure.provision(plan),
            Action::PowerOn { id, generation } => {
                let result = infrastructure.power_on(id, *generation);
                if let Err(InfraError::Permanent(message)) = &result {
                    // A run that can never start ends as Docker ends it: exited,
                    // 127 when the command is missing, 126 otherwise.
                    let exit_code = if message.contains("not found") || message.contains("no such file") { 127 } else { 126 };
                    self.record_exit(id, *generation, exit_code);
                }
                result
            }
            Action::PowerOff { id, signal, timeout_s } => infrastructure.power_off(id, signal, *timeout_s),
            Action::Pause { id } => infrastructure.pause(id),
            Action::Unpause { id } => infrastructure.unpause(id),
            Action::Destroy { id } => tolerate_missing(infrastructure.destroy(id)),
            Action::RecordExited { id, generation, exit_code } => {
                self.record_exit(id, *generation, *exit_code);
                Ok(())
            }
        };
        result.map_err(|error| ReconcileError::Action { action: action.describe(), error })
    }

    /// Submits the observation; its answer arrives once durable. The command
    /// id names the run, so a repeated record of the same exit writes nothing.
    fn record_exit(&self, id: &str, generation: u64, exit_code: i64) {
        self.recording.lock().insert(id.to_string());
        let command_id = CommandId(format!("{}/exited/{id}/{generation}", self.actor));
        let envelope =
            CommandEnvelope::new(self.actor.clone(), Command::RecordContainerExited { id: id.to_string(), exit_code }).with_id(command_id);
        let recording = self.recording.clone();
        let container_id = id.to_string();
        self.bus.submit(
            envelope,
            Box::new(move |result: Result<CommandOutcome, CommandError>| {
                recording.lock().remove(&container_id);
                if let Err(error) = result {
                    tracing::warn!(%error, container = %container_id, "recording a container's exit failed; the next round retries");
                }
            }),
        );
    }

    /// Submits an observation (drift, a parked action) without waiting; a
    /// rejection (the object was removed meanwhile) is only logged.
    fn record_observation(&self, command: Command, command_id: Option<CommandId>) {
        let mut envelope = CommandEnvelope::new(self.actor.clone(), command);
        if let Some(command_id) = command_id {
            envelope = envelope.with_id(command_id);
        }
        self.bus.submit(
            envelope,
            Box::new(|result: Result<CommandOutcome, CommandError>| {
                if let Err(error) = result {
                    tracing::debug!(%error, "an observation was not recorded");
                }
            }),
        );
    }

    /// Runs the reconciler on tokio: a tick whenever the log commits (at most
    /// one per [`TICK_INTERVAL_MS_MIN`]), when a backoff is due, and every
    /// [`RESYNC_INTERVAL_MS`] otherwise. Call it once per reconciler: it
    /// registers a commit listener on the log. Infrastructure calls block, so
    /// ticks run on the blocking pool.
    pub fn spawn(self: Arc<Self>, clock: Arc<dyn Clock>) -> ReconcilerTask {
        self.spawn_with_wake(clock, Arc::new(tokio::sync::Notify::new()))
    }

    /// Like [`Reconciler::spawn`], with a wake-up the infrastructure can also
    /// use (the local runtime wakes it when a container exits on its own).
    pub fn spawn_with_wake(self: Arc<Self>, clock: Arc<dyn Clock>, wake: Arc<tokio::sync::Notify>) -> ReconcilerTask {
        let listener_wake = wake.clone();
        self.bus.log().on_commit(Box::new(move |_head| listener_wake.notify_one()));
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let handle = tokio::spawn(async move {
            loop {
                let reconciler = self.clone();
                let tick_clock = clock.clone();
                let report = match tokio::task::spawn_blocking(move || reconciler.tick(tick_clock.now_ms())).await {
                    Ok(report) => report,
                    Err(error) => {
                        tracing::error!(%error, "a reconciler tick failed to run");
                        TickReport::default()
                    }
                };
                let now_ms = clock.now_ms();
                // A round that acted may have enabled the next step of an object
                // (a provision enables its power-on): look again at once.
                let wait_ms = if (report.error.is_none() && !report.caught_up) || report.executed_action_count > 0 {
                    0
                } else {
                    report.next_due_ms.map_or(RESYNC_INTERVAL_MS, |due_ms| due_ms.saturating_sub(now_ms).min(RESYNC_INTERVAL_MS))
                };
                tokio::select! {
                    _ = wake.notified() => {}
                    _ = tokio::time::sleep(Duration::from_millis(wait_ms)) => {}
                    _ = stopped.changed() => return,
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(TICK_INTERVAL_MS_MIN)) => {}
                    _ = stopped.changed() => return,
                }
            }
        });
        ReconcilerTask { stop, handle }
    }
}

/// The stream an object's observations are recorded on.
fn object_stream(key: &ObjectKey) -> Option<StreamId> {
    Some(match key {
        ObjectKey::Vch(name) => StreamId::new(StreamKind::Vch, name),
        ObjectKey::Network(id) => StreamId::new(StreamKind::Network, id),
        ObjectKey::Volume(name) => StreamId::new(StreamKind::Volume, name),
        ObjectKey::Container(id) => StreamId::new(StreamKind::Container, id),
    })
}

/// The drift an action repairs, if it repairs one: the infrastructure
/// changed in a way no command asked for. Judged on the action's first
/// attempt only, so a retried repair is reported once.
fn drift_of(state: &DriverState, action: &Action) -> Option<(StreamId, String)> {
    let model = state.desired.model();
    match action {
        Action::Destroy { id } if !state.desired.removed_containers().contains(id) && !model.containers.contains_key(id) => {
            let vch = state.observed.containers.get(id).map(|observed| observed.vch.clone())?;
            model.vchs.contains_key(&vch).then(|| {
                (StreamId::new(StreamKind::Vch, &vch), format!("found a VM for container {id}, which the log does not know: destroying it"))
            })
        }
        Action::EnsureVch { name, .. } if state.vanished_vchs.contains(name) => Some((
            StreamId::new(StreamKind::Vch, name),
            "its objects (resource pool or folder) disappeared from the infrastructure: ensuring them again".to_string(),
        )),
        Action::Provision(plan) if state.vanished.contains(&plan.id) => Some((
            StreamId::new(StreamKind::Container, &plan.id),
            "its VM disappeared from the infrastructure: provisioning it again".to_string(),
        )),
        Action::PowerOff { id, .. } => {
            let container = model.containers.get(id)?;
            (!container.status.is_running()).then(|| {
                (
                    StreamId::new(StreamKind::Container, id),
                    format!("found running while the log says {}: powering it off", container.status.as_docker_str()),
                )
            })
        }
        _ => None,
    }
}

/// Removing what is already gone is success: removals are idempotent.
fn tolerate_missing(result: Result<(), InfraError>) -> Result<(), InfraError> {
    match result {
        Err(InfraError::NotFound(_)) => Ok(()),
        other => other,
    }
}

fn remember_success(state: &mut DriverState, action: &Action) {
    match action {
        Action::EnsureVch { name, spec } => {
            state.observed.vchs.insert(name.clone(), spec.clone());
        }
        Action::RemoveVch { name } => {
            state.observed.vchs.remove(name);
            state.desired.forget_removed_vch(name);
        }
        Action::EnsureNetwork(network) => {
            state.observed.networks.insert(network.id.clone());
        }
        Action::RemoveNetwork { id } => {
            state.observed.networks.remove(id);
            state.desired.forget_removed_network(id);
        }
        Action::RemoveVolume { name } => {
            state.desired.forget_removed_volume(name);
        }
        // Containers are observed afresh from the inventory on every round.
        _ => {}
    }
}

/// A failed action may still have happened (a lost reply), so what this
/// reconciler remembers of the object is no longer known to be true: forget
/// it, and the next plan ensures the object afresh. Remembering the old state
/// would hide a change made by the "failed" call from every later plan.
fn forget_uncertain(state: &mut DriverState, action: &Action) {
    match action {
        Action::EnsureVch { name, .. } | Action::RemoveVch { name } => {
            state.observed.vchs.remove(name);
        }
        Action::EnsureNetwork(network) => {
            state.observed.networks.remove(&network.id);
        }
        Action::RemoveNetwork { id } => {
            state.observed.networks.remove(id);
        }
        // Containers are observed afresh from the inventory on every round.
        _ => {}
    }
}

/// The running production task of a reconciler.
pub struct ReconcilerTask {
    stop: tokio::sync::watch::Sender<bool>,
    handle: tokio::task::JoinHandle<()>,
}

impl ReconcilerTask {
    /// Stops after the tick in progress, if any, and waits for the task.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.handle.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_core::events::ContainerSpec;
    use berth_core::{EventId, StreamId, StreamVersion};

    /// Builds desired state from events, as the log would record them.
    struct Given {
        desired: DesiredState,
        versions: HashMap<StreamId, u64>,
    }

    impl Given {
        fn new() -> Given {
            Given { desired: DesiredState::new(), versions: HashMap::new() }
        }

        fn event(mut self, kind: StreamKind, key: &str, event: DomainEvent) -> Given {
            let stream = StreamId::new(kind, key);
            let version = self.versions.entry(stream.clone()).or_insert(0);
            *version += 1;
            let recorded = RecordedEvent {
                position: Position(self.desired.position().0 + 1),
                stream,
                version: StreamVersion(*version),
                event_id: EventId([0; 16]),
                command_id: None,
                actor: "test".into(),
                recorded_at_ms: 0,
                schema_version: 1,
                event,
            };
            self.desired.apply(&recorded);
            self
        }

        fn vch(self, name: &str) -> Given {
            self.event(StreamKind::Vch, name, DomainEvent::VchCreated { name: name.into(), spec: local_spec() })
        }

        fn container(self, id: &str, vch: &str) -> Given {
            self.event(
                StreamKind::Container,
                id,
                DomainEvent::ContainerCreated {
                    name: format!("name-{id}"),
                    vch: vch.into(),
                    image_id: "sha256:image".into(),
                    spec: ContainerSpec::default(),
                    created_ms: 0,
                },
            )
        }

        fn container_event(self, id: &str, event: DomainEvent) -> Given {
            self.event(StreamKind::Container, id, event)
        }

        fn network(self, id: &str, name: &str) -> Given {
            self.event(
                StreamKind::Network,
                id,
                DomainEvent::NetworkCreated {
                    name: name.into(),
                    driver: "bridge".into(),
                    subnet: "10.1.0.0/24".into(),
                    gateway: "10.1.0.1".into(),
                    internal: false,
                    labels: BTreeMap::new(),
                    created_ms: 0,
                },
            )
        }
    }

    fn local_spec() -> VchSpec {
        VchSpec { target: "local".into(), ..VchSpec::default() }
    }

    fn observed_with(vchs: &[&str], networks: &[&str], containers: &[(&str, &str, u64, ObservedPower)]) -> ObservedState {
        ObservedState {
            containers: containers
                .iter()
                .map(|(id, vch, generation, power)| {
                    (id.to_string(), ObservedContainer { id: id.to_string(), vch: vch.to_string(), generation: *generation, power: *power })
                })
                .collect(),
            networks: networks.iter().map(|n| n.to_string()).collect(),
            vchs: vchs.iter().map(|name| (name.to_string(), local_spec())).collect(),
        }
    }

    fn plan_all(given: &Given, observed: &ObservedState) -> Vec<Action> {
        plan(&given.desired, observed, &ServedVchs::All)
    }

    fn started() -> DomainEvent {
        DomainEvent::ContainerStarted { started_ms: 1 }
    }

    #[test]
    fn nothing_desired_and_nothing_observed_plans_nothing() {
        assert_eq!(plan_all(&Given::new(), &ObservedState::default()), vec![]);
    }

    #[test]
    fn a_new_vch_is_ensured_and_a_reconfigured_one_ensured_again() {
        let given = Given::new().vch("v1");
        assert_eq!(plan_all(&given, &ObservedState::default()), vec![Action::EnsureVch { name: "v1".into(), spec: local_spec() }]);
        assert_eq!(plan_all(&given, &observed_with(&["v1"], &[], &[])), vec![]);
        let spec = VchSpec { container_count_max: 3, ..local_spec() };
        let given = given.event(StreamKind::Vch, "v1", DomainEvent::VchConfigured { spec: spec.clone() });
        assert_eq!(plan_all(&given, &observed_with(&["v1"], &[], &[])), vec![Action::EnsureVch { name: "v1".into(), spec }]);
    }

    #[test]
    fn a_missing_container_is_provisioned_once_its_vch_and_networks_are_ensured() {
        let given = Given::new().vch("v1").network("n1", "net").container("c1", "v1").event(
            StreamKind::Network,
            "n1",
            DomainEvent::NetworkContainerConnected { container_id: "c1".into(), ipv4_address: "10.1.0.2".into() },
        );
        let before = plan_all(&given, &ObservedState::default());
        assert_eq!(before.len(), 2, "{before:?}");
        assert!(matches!(&before[0], Action::EnsureVch { name, .. } if name == "v1"));
        assert!(matches!(&before[1], Action::EnsureNetwork(network) if network.id == "n1"));
        assert_eq!(plan_all(&given, &observed_with(&["v1"], &[], &[])).len(), 1, "networks not ensured yet: no provision");

        let actions = plan_all(&given, &observed_with(&["v1"], &["n1"], &[]));
        let [Action::Provision(plan)] = actions.as_slice() else { panic!("want one provision, got {actions:?}") };
        assert_eq!(plan.id, "c1");
        assert_eq!(plan.vch, "v1");
        assert_eq!(plan.networks.len(), 1);
        assert_eq!(plan.networks[0].ipv4_address, "10.1.0.2");
        assert_eq!(plan.networks[0].prefix_length, 24);
    }

    #[test]
    fn a_started_container_is_powered_on_at_its_generation() {
        let given = Given::new().vch("v1").container("c1", "v1").container_event("c1", started());
        let observed = observed_with(&["v1"], &[], &[("c1", "v1", 0, ObservedPower::Created)]);
        assert_eq!(plan_all(&given, &observed), vec![Action::PowerOn { id: "c1".into(), generation: 1 }]);
        let running = observed_with(&["v1"], &[], &[("c1", "v1", 1, ObservedPower::Running)]);
        assert_eq!(plan_all(&given, &running), vec![]);
    }

    #[test]
    fn a_restart_powers_on_the_next_generation_after_an_exited_run() {
        let given = Given::new()
            .vch("v1")
            .container("c1", "v1")
            .container_event("c1", started())
            .container_event("c1", DomainEvent::ContainerExited { exit_code: 0, finished_ms: 2 })
            .container_event("c1", started());
        let observed = observed_with(&["v1"], &[], &[("c1", "v1", 1, ObservedPower::Exited { exit_code: 0 })]);
        assert_eq!(plan_all(&given, &observed), vec![Action::PowerOn { id: "c1".into(), generation: 2 }]);
    }

    #[test]
    fn an_older_run_still_going_is_stopped_before_the_new_one_starts() {
        let given = Given::new().vch("v1").container("c1", "v1").container_event("c1", started());
        let observed = observed_with(&["v1"], &[], &[("c1", "v1", 0, ObservedPower::Running)]);
        assert!(matches!(plan_all(&given, &observed).as_slice(), [Action::PowerOff { id, .. }] if id == "c1"));
    }

    #[test]
    fn an_exit_of_the_current_run_is_recorded_but_not_of_an_older_run() {
        let given = Given::new().vch("v1").container("c1", "v1").container_event("c1", started());
        let exited = observed_with(&["v1"], &[], &[("c1", "v1", 1, ObservedPower::Exited { exit_code: 3 })]);
        assert_eq!(plan_all(&given, &exited), vec![Action::RecordExited { id: "c1".into(), generation: 1, exit_code: 3 }]);
        let recorded = given.container_event("c1", DomainEvent::ContainerExited { exit_code: 3, finished_ms: 2 });
        assert_eq!(plan_all(&recorded, &exited), vec![], "an exit already recorded needs nothing");
    }

    #[test]
    fn a_stop_request_powers_off_with_the_requested_timeout_and_a_kill_without_grace() {
        let given = Given::new()
            .vch("v1")
            .container("c1", "v1")
            .container_event("c1", started())
            .container_event("c1", DomainEvent::ContainerStopRequested { timeout_s: Some(7) });
        let running = observed_with(&["v1"], &[], &[("c1", "v1", 1, ObservedPower::Running)]);
        assert_eq!(
            plan_all(&given, &running),
            vec![Action::PowerOff { id: "c1".into(), signal: DEFAULT_STOP_SIGNAL.into(), timeout_s: 7 }]
        );
        let killed = given.container_event("c1", DomainEvent::ContainerKilled { signal: "SIGKILL".into() });
        assert_eq!(
            plan_all(&killed, &running),
            vec![Action::PowerOff { id: "c1".into(), signal: "SIGKILL".into(), timeout_s: KILL_TIMEOUT_S }]
        );
        let paused = observed_with(&["v1"], &[], &[("c1", "v1", 1, ObservedPower::Paused)]);
        assert!(matches!(plan_all(&killed, &paused).as_slice(), [Action::PowerOff { .. }]), "a paused container stops too");
    }

    #[test]
    fn a_stop_request_is_forgotten_by_the_next_start() {
        let given = Given::new()
            .vch("v1")
            .container("c1", "v1")
            .container_event("c1", started())
            .container_event("c1", DomainEvent::ContainerKilled { signal: "SIGKILL".into() })
            .container_event("c1", DomainEvent::ContainerExited { exit_code: 137, finished_ms: 2 })
            .container_event("c1", started());
        let running = observed_with(&["v1"], &[], &[("c1", "v1", 2, ObservedPower::Running)]);
        assert_eq!(plan_all(&given, &running), vec![]);
    }

    #[test]
    fn pause_and_unpause_follow_the_log() {
        let given = Given::new().vch("v1").container("c1", "v1").container_event("c1", started());
        let paused_log = given.container_event("c1", DomainEvent::ContainerPaused);
        let running = observed_with(&["v1"], &[], &[("c1", "v1", 1, ObservedPower::Running)]);
        let paused = observed_with(&["v1"], &[], &[("c1", "v1", 1, ObservedPower::Paused)]);
        assert_eq!(plan_all(&paused_log, &running), vec![Action::Pause { id: "c1".into() }]);
        assert_eq!(plan_all(&paused_log, &paused), vec![]);
        let unpaused_log = paused_log.container_event("c1", DomainEvent::ContainerUnpaused);
        assert_eq!(plan_all(&unpaused_log, &paused), vec![Action::Unpause { id: "c1".into() }]);
    }

    #[test]
    fn a_container_the_log_does_not_want_running_is_powered_off() {
        let given = Given::new().vch("v1").container("c1", "v1");
        let running = observed_with(&["v1"], &[], &[("c1", "v1", 1, ObservedPower::Running)]);
        assert!(matches!(plan_all(&given, &running).as_slice(), [Action::PowerOff { .. }]));
        let created = observed_with(&["v1"], &[], &[("c1", "v1", 0, ObservedPower::Created)]);
        assert_eq!(plan_all(&given, &created), vec![]);
    }

    #[test]
    fn removed_containers_and_unknown_vms_are_destroyed() {
        let given = Given::new().vch("v1").container("c1", "v1").container_event("c1", DomainEvent::ContainerRemoved);
        let observed = observed_with(&["v1"], &[], &[("c1", "v1", 0, ObservedPower::Created), ("stray", "v1", 3, ObservedPower::Running)]);
        assert_eq!(plan_all(&given, &observed), vec![Action::Destroy { id: "c1".into() }, Action::Destroy { id: "stray".into() }]);
    }

    #[test]
    fn a_vm_lost_with_its_host_is_provisioned_again() {
        let given = Given::new().vch("v1").container("c1", "v1").container_event("c1", started());
        let actions = plan_all(&given, &observed_with(&["v1"], &[], &[]));
        assert!(matches!(actions.as_slice(), [Action::Provision(plan)] if plan.id == "c1"));
    }

    #[test]
    fn containers_of_vchs_not_served_are_left_alone() {
        let given = Given::new().vch("v1").vch("v2").container("c1", "v1").container("c2", "v2");
        let served = ServedVchs::named(["v1"]);
        let observed = observed_with(&["v1"], &[], &[("stray", "v2", 0, ObservedPower::Created)]);
        let actions = plan(&given.desired, &observed, &served);
        assert!(matches!(actions.as_slice(), [Action::Provision(plan)] if plan.id == "c1"), "{actions:?}");
    }

    #[test]
    fn removed_networks_are_removed_and_live_ones_ensured() {
        let given = Given::new().network("n1", "one").network("n2", "two").event(StreamKind::Network, "n2", DomainEvent::NetworkRemoved);
        let actions = plan_all(&given, &ObservedState::default());
        assert!(matches!(actions.as_slice(), [Action::EnsureNetwork(n), Action::RemoveNetwork { id }] if n.id == "n1" && id == "n2"));
        let mut forgotten = given;
        forgotten.desired.forget_removed_network("n2");
        assert_eq!(plan_all(&forgotten, &observed_with(&[], &["n1"], &[])), vec![]);
    }

    #[test]
    fn a_deleted_vch_is_removed_only_after_its_containers_are_destroyed() {
        let given = Given::new().vch("v1").container("c1", "v1").container_event("c1", DomainEvent::ContainerRemoved).event(
            StreamKind::Vch,
            "v1",
            DomainEvent::VchDeleted,
        );
        let with_vm = observed_with(&["v1"], &[], &[("c1", "v1", 0, ObservedPower::Created)]);
        assert_eq!(plan_all(&given, &with_vm), vec![Action::Destroy { id: "c1".into() }]);
        assert_eq!(plan_all(&given, &observed_with(&["v1"], &[], &[])), vec![Action::RemoveVch { name: "v1".into() }]);
        let recreated = given.vch("v1");
        assert_eq!(plan_all(&recreated, &observed_with(&["v1"], &[], &[])), vec![], "a recreated VCH is live again");
    }

    #[test]
    fn every_plan_has_at_most_one_action_per_object() {
        let given = Given::new()
            .vch("v1")
            .network("n1", "net")
            .container("c1", "v1")
            .container_event("c1", started())
            .container("c2", "v1")
            .container_event("c2", DomainEvent::ContainerRemoved);
        let observed =
            observed_with(&[], &[], &[("c1", "v1", 1, ObservedPower::Exited { exit_code: 1 }), ("c2", "v1", 0, ObservedPower::Created)]);
        let actions = plan_all(&given, &observed);
        let keys: BTreeSet<ObjectKey> = actions.iter().map(Action::object).collect();
        assert_eq!(keys.len(), actions.len(), "{actions:?}");
        assert_eq!(actions.len(), 4, "{actions:?}");
    }

    #[test]
    fn backoff_doubles_up_to_its_limit() {
        assert_eq!(backoff_delay_ms(1), BACKOFF_MS_MIN);
        assert_eq!(backoff_delay_ms(2), BACKOFF_MS_MIN * 2);
        assert_eq!(backoff_delay_ms(3), BACKOFF_MS_MIN * 4);
        assert_eq!(backoff_delay_ms(40), BACKOFF_MS_MAX);
    }
}
