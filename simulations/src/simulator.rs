//! One simulated run: the production command bus, domain model, Docker views
//! and reconciler against the simulated log and infrastructure, driven by a
//! workload of simulated clients and checked by an auditor, all on one thread
//! and from one seed.
//!
//! A run has a *safety* phase (operations with faults: crashes with torn
//! writes, host loss, partitions, a full datastore, failed tasks, lost
//! replies, latency) and a *liveness* phase (faults off: the infrastructure
//! must converge to the desired state within [`LIVENESS_TICK_COUNT_MAX`]
//! ticks). The auditor checks every reply against the reference model and,
//! along the way and at the end: acknowledged commands are never lost,
//! projections equal a rebuild from the log, the decision model equals a fold
//! of the log, positions and stream versions have no gaps, and after
//! convergence every container has its VM and every VM its container.

use crate::infra::{InfraFaults, SimInfra};
use crate::log::{SimLog, SimLogError};
use crate::reference::{Op, Prediction, Reference, BRIDGE_NAME, BRIDGE_SUBNET};
use crate::workload::{image_id, next_op, VCH_NAMES};
use crate::world::{SimClock, SimEntropy, SimRng, TraceHash};
use berth_core::infrastructure::ObservedPower;
use berth_core::log::EventLog;
use berth_core::model::{ContainerStatus, DomainModel};
use berth_core::{CommandId, Position, ReadError};
use berth_engine::bus::load_model;
use berth_engine::history::{replay_until, Until};
use berth_engine::reconciler::{Reconciler, ServedVchs};
use berth_engine::{CommandBus, CommandError, CommandOutcome};
use berth_projections::DockerViews;
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::Arc;

/// The actor the simulated reconciler records its observations under.
pub const RECONCILER_ACTOR: &str = "reconciler/sim";
/// Appends waiting for a sync before one is forced (a bounded write queue).
pub const PENDING_APPEND_COUNT_MAX: usize = 64;
/// The operation of the first deep check (views against a rebuild, the model
/// against a fold of the log, the reference against the views). A deep check
/// reads the whole log, so the next one comes after twice as many
/// operations: their total cost stays proportional to the run's length.
pub const FIRST_DEEP_CHECK_OP: u64 = 256;
/// Ticks the liveness phase allows for convergence.
pub const LIVENESS_TICK_COUNT_MAX: u64 = 2_000;
/// Virtual time between two liveness ticks.
pub const LIVENESS_TICK_INTERVAL_MS: u64 = 100;
/// The most virtual time between two operations.
pub const OP_INTERVAL_MS_MAX: u64 = 3;

/// What to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimConfig {
    pub seed: u64,
    pub op_count: u64,
}

/// The faults and rhythm of one run, drawn from its seed (swarm testing:
/// each seed switches a different mix of faults on, at different rates).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FaultPlan {
    pub client_count: u64,
    pub sync_probability: f64,
    pub crash_probability: f64,
    pub host_loss_probability: f64,
    pub partition_probability: f64,
    pub partition_ops_max: u64,
    pub datastore_full_probability: f64,
    pub datastore_full_ops_max: u64,
    pub natural_exit_probability: f64,
    pub infra: InfraFaults,
    pub tick_every_ops: u64,
}

impl FaultPlan {
    pub fn draw(rng: &SimRng) -> FaultPlan {
        let maybe = |probability_max: f64| if rng.chance(0.5) { rng.unit() * probability_max } else { 0.0 };
        FaultPlan {
            client_count: rng.between(2, 32),
            sync_probability: 0.05 + rng.unit() * 0.6,
            crash_probability: maybe(0.002),
            host_loss_probability: maybe(0.003),
            partition_probability: maybe(0.005),
            partition_ops_max: rng.between(10, 300),
            datastore_full_probability: maybe(0.005),
            datastore_full_ops_max: rng.between(10, 300),
            natural_exit_probability: maybe(0.002),
            infra: InfraFaults {
                failure_probability: maybe(0.2),
                lost_response_probability: maybe(0.2),
                latency_ms_max: if rng.chance(0.5) { rng.between(1, 50) } else { 0 },
            },
            tick_every_ops: rng.between(1, 8),
        }
    }
}

/// What a run did.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSummary {
    pub seed: u64,
    pub op_count: u64,
    pub trace_hash: u64,
    pub plan: FaultPlan,
    pub accepted_count: u64,
    pub rejected_count: u64,
    /// Operations whose reply a crash swallowed (never acknowledged, so lost).
    pub unanswered_count: u64,
    pub crash_count: u64,
    /// Drift and parked-action events the reconciler recorded.
    pub observation_count: u64,
    pub sync_count: u64,
    pub host_loss_count: u64,
    pub tick_count: u64,
    pub liveness_tick_count: u64,
    pub infra_call_count: u64,
    pub event_count: u64,
    pub virtual_time_ms: u64,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SimFailure {
    #[error("operation {seq} ({op}) by client {client}: expected {expected}, got {actual}")]
    Reply { seq: u64, client: usize, op: String, expected: String, actual: String },
    #[error("invariant broken after {op_index} operations: {reason}")]
    Invariant { op_index: u64, reason: String },
    #[error("no convergence within {LIVENESS_TICK_COUNT_MAX} liveness ticks: {reason}")]
    Liveness { reason: String },
    #[error("the restarted log cannot be opened: {0}")]
    Reopen(#[from] SimLogError),
    #[error("reading the log failed: {0}")]
    Read(#[from] ReadError),
}

struct Expectation {
    client: usize,
    op: Op,
    prediction: Prediction,
    command_id: CommandId,
}

type Mailbox = Arc<Mutex<Vec<(u64, Result<CommandOutcome, CommandError>)>>>;

/// Everything a berth process holds, rebuilt from the durable log on restart.
struct Berth {
    log: Arc<SimLog>,
    bus: Arc<CommandBus>,
    reconciler: Reconciler,
    views: DockerViews,
}

struct Simulation {
    plan: FaultPlan,
    rng: SimRng,
    clock: SimClock,
    infra: Arc<SimInfra>,
    berth: Berth,
    /// The reference after every operation decided so far.
    speculative: Reference,
    /// The reference after every operation made durable so far.
    durable: Reference,
    idle_clients: Vec<usize>,
    expectations: BTreeMap<u64, Expectation>,
    mailbox: Mailbox,
    acknowledged: Vec<(CommandId, Position)>,
    next_seq: u64,
    op_index: u64,
    next_deep_check_op: u64,
    partition_ops_left: u64,
    datastore_full_ops_left: u64,
    trace: TraceHash,
    summary: RunSummary,
}

fn start_berth(log: Arc<SimLog>, rng: &SimRng, clock: &SimClock, infra: &Arc<SimInfra>) -> Result<Berth, SimFailure> {
    let event_log: Arc<dyn EventLog> = log.clone();
    let bus = Arc::new(CommandBus::new(event_log.clone(), Arc::new(clock.clone()), Arc::new(SimEntropy { rng: rng.clone() }))?);
    let reconciler = Reconciler::with_actor(bus.clone(), infra.clone(), ServedVchs::named(VCH_NAMES), RECONCILER_ACTOR);
    let views = replay_until(event_log.as_ref(), Until::Position(log.head().0))?;
    Ok(Berth { log, bus, reconciler, views })
}

fn code_of(result: &Result<CommandOutcome, CommandError>) -> String {
    match result {
        Ok(_) => "accepted".into(),
        Err(CommandError::Rejected(rejection)) => format!("refused ({})", rejection.code()),
        Err(other) => format!("error ({other})"),
    }
}

fn describe(prediction: &Prediction) -> String {
    match prediction {
        Ok(()) => "accepted".into(),
        Err(code) => format!("refused ({code})"),
    }
}

/// Runs one seed to the end; `Err` is the first broken rule.
pub fn run(config: SimConfig) -> Result<RunSummary, SimFailure> {
    let rng = SimRng::new(config.seed);
    let clock = SimClock::new();
    let plan = FaultPlan::draw(&rng);
    let infra = Arc::new(SimInfra::new(rng.clone(), clock.clone()));
    infra.set_faults(plan.infra);
    let berth = start_berth(Arc::new(SimLog::new()), &rng, &clock, &infra)?;
    let summary = RunSummary {
        seed: config.seed,
        op_count: config.op_count,
        trace_hash: 0,
        plan,
        accepted_count: 0,
        rejected_count: 0,
        unanswered_count: 0,
        crash_count: 0,
        observation_count: 0,
        sync_count: 0,
        host_loss_count: 0,
        tick_count: 0,
        liveness_tick_count: 0,
        infra_call_count: 0,
        event_count: 0,
        virtual_time_ms: 0,
    };
    let mut simulation = Simulation {
        plan,
        rng,
        clock,
        infra,
        berth,
        speculative: Reference::default(),
        durable: Reference::default(),
        idle_clients: (0..plan.client_count as usize).collect(),
        expectations: BTreeMap::new(),
        mailbox: Arc::new(Mutex::new(Vec::new())),
        acknowledged: Vec::new(),
        next_seq: 0,
        op_index: 0,
        next_deep_check_op: FIRST_DEEP_CHECK_OP,
        partition_ops_left: 0,
        datastore_full_ops_left: 0,
        trace: TraceHash::new(),
        summary,
    };
    simulation.bootstrap()?;
    for op_index in 1..=config.op_count {
        simulation.op_index = op_index;
        simulation.step()?;
    }
    simulation.liveness()?;
    simulation.final_checks()?;
    Ok(simulation.finish())
}

impl Simulation {
    fn invariant(&self, reason: impl Into<String>) -> SimFailure {
        SimFailure::Invariant { op_index: self.op_index, reason: reason.into() }
    }

    /// What a fresh berth's operator sets up first: the bridge network, a VCH,
    /// an image and a volume.
    fn bootstrap(&mut self) -> Result<(), SimFailure> {
        let ops = [
            Op::CreateNetwork { id: self.rng.hex_id(), name: BRIDGE_NAME.into(), subnet: BRIDGE_SUBNET.into() },
            Op::CreateVch { name: VCH_NAMES[0].into(), container_count_max: 0 },
            Op::RegisterImage { id: image_id(0), tags: vec!["app0:v0".into()] },
            Op::CreateVolume { name: "vol-0".into() },
        ];
        for op in ops {
            let client = self.idle_clients.pop().ok_or_else(|| self.invariant("no client to bootstrap with"))?;
            self.submit(client, op)?;
            self.sync()?;
        }
        Ok(())
    }

    fn step(&mut self) -> Result<(), SimFailure> {
        self.clock.advance(self.rng.between(1, OP_INTERVAL_MS_MAX));
        self.inject_faults()?;
        if self.idle_clients.is_empty() {
            self.sync()?;
        }
        let slot = self.rng.below(self.idle_clients.len() as u64) as usize;
        if slot >= self.idle_clients.len() {
            return Err(self.invariant("every client is still waiting after a sync"));
        }
        let client = self.idle_clients.swap_remove(slot);
        let op = next_op(&self.rng, &self.speculative);
        self.submit(client, op)?;
        if self.rng.chance(self.plan.sync_probability) || self.berth.log.pending_append_count() >= PENDING_APPEND_COUNT_MAX {
            self.sync()?;
        }
        if self.op_index.is_multiple_of(self.plan.tick_every_ops) {
            self.tick()?;
        }
        if self.op_index == self.next_deep_check_op {
            self.next_deep_check_op *= 2;
            self.deep_check()?;
        }
        Ok(())
    }

    fn inject_faults(&mut self) -> Result<(), SimFailure> {
        if self.rng.chance(self.plan.crash_probability) {
            self.crash()?;
        }
        if self.rng.chance(self.plan.host_loss_probability) {
            let hit_count = self.infra.lose_host();
            self.summary.host_loss_count += 1;
            self.trace.text("host_loss");
            self.trace.number(hit_count as u64);
        }
        if self.partition_ops_left > 0 {
            self.partition_ops_left -= 1;
            if self.partition_ops_left == 0 {
                self.infra.set_partitioned(false);
            }
        } else if self.rng.chance(self.plan.partition_probability) {
            self.partition_ops_left = self.rng.between(1, self.plan.partition_ops_max);
            self.infra.set_partitioned(true);
            self.trace.text("partition");
        }
        if self.datastore_full_ops_left > 0 {
            self.datastore_full_ops_left -= 1;
            if self.datastore_full_ops_left == 0 {
                self.infra.set_datastore_full(false);
            }
        } else if self.rng.chance(self.plan.datastore_full_probability) {
            self.datastore_full_ops_left = self.rng.between(1, self.plan.datastore_full_ops_max);
            self.infra.set_datastore_full(true);
            self.trace.text("datastore_full");
        }
        self.infra.natural_exits(self.plan.natural_exit_probability);
        Ok(())
    }

    fn submit(&mut self, client: usize, op: Op) -> Result<(), SimFailure> {
        let seq = self.next_seq;
        self.next_seq += 1;
        let prediction = self.speculative.decide(&op);
        let command_id = CommandId(format!("client-{client}/{seq}"));
        let envelope = op.to_envelope(&format!("client-{client}")).with_id(command_id.clone());
        self.trace.text(op.kind());
        self.expectations.insert(seq, Expectation { client, op, prediction, command_id });
        let mailbox = self.mailbox.clone();
        self.berth.bus.submit(envelope, Box::new(move |result| mailbox.lock().push((seq, result))));
        self.drain_replies()
    }

    fn drain_replies(&mut self) -> Result<(), SimFailure> {
        let replies = std::mem::take(&mut *self.mailbox.lock());
        for (seq, result) in replies {
            let Some(expectation) = self.expectations.remove(&seq) else {
                return Err(self.invariant(format!("a reply to operation {seq}, which nobody is waiting for")));
            };
            self.idle_clients.push(expectation.client);
            let matches = match (&expectation.prediction, &result) {
                (Ok(()), Ok(_)) => true,
                (Err(code), Err(CommandError::Rejected(rejection))) => rejection.code() == *code,
                _ => false,
            };
            if !matches {
                return Err(SimFailure::Reply {
                    seq,
                    client: expectation.client,
                    op: format!("{:?}", expectation.op),
                    expected: describe(&expectation.prediction),
                    actual: code_of(&result),
                });
            }
            self.trace.number(seq);
            match &result {
                Ok(outcome) => {
                    self.summary.accepted_count += 1;
                    self.trace.number(outcome.position.0);
                    if outcome.event_count > 0 {
                        self.acknowledged.push((expectation.command_id, outcome.position));
                    }
                }
                Err(_) => {
                    self.summary.rejected_count += 1;
                    self.trace.text(&code_of(&result));
                }
            }
        }
        Ok(())
    }

    fn sync(&mut self) -> Result<(), SimFailure> {
        let report = self.berth.log.sync();
        self.summary.sync_count += 1;
        self.trace.number(report.head.0);
        // Everything decided is durable now, in decision order.
        self.durable = self.speculative.clone();
        self.drain_replies()?;
        self.absorb_journal()?;
        let log = self.berth.log.clone();
        loop {
            let batch = log.read_all(self.berth.views.position, 4096)?;
            if batch.is_empty() {
                break;
            }
            for event in &batch {
                self.berth.views.apply(event);
            }
        }
        Ok(())
    }

    fn tick(&mut self) -> Result<(), SimFailure> {
        let report = self.berth.reconciler.tick(self.clock.now());
        self.summary.tick_count += 1;
        self.trace.number(report.planned_action_count as u64);
        self.trace.number(report.executed_action_count as u64);
        self.trace.number(report.failures.len() as u64);
        self.absorb_journal()
    }

    /// Applies the reconciler's recorded exits to the reference, in the order
    /// the bus decided them (no client operation runs during a tick).
    fn absorb_journal(&mut self) -> Result<(), SimFailure> {
        for append in self.berth.log.take_journal() {
            if append.actor != RECONCILER_ACTOR {
                continue;
            }
            for (stream, type_name) in append.events {
                // Observations of drift and of parked actions change no state.
                if type_name == "DriftObserved" || type_name == "ReconcileFailed" {
                    self.summary.observation_count += 1;
                    continue;
                }
                if type_name != "ContainerExited" {
                    return Err(self.invariant(format!("the reconciler wrote {type_name} to {stream}")));
                }
                let recorded = self.speculative.record_exit(&stream.key);
                recorded.map_err(|reason| self.invariant(reason))?;
            }
        }
        Ok(())
    }

    /// The berth process dies: unsynced appends are lost, the last one torn;
    /// a new process opens the durable part and rebuilds everything from it.
    fn crash(&mut self) -> Result<(), SimFailure> {
        let torn_bytes = self.berth.log.first_pending_frame_bytes().map_or(0, |length| self.rng.below(length as u64) as usize);
        let disk = self.berth.log.crash(torn_bytes);
        self.summary.crash_count += 1;
        self.trace.text("crash");
        self.trace.number(torn_bytes as u64);
        let log = Arc::new(SimLog::reopen(disk)?);
        log.check_gap_free().map_err(|reason| self.invariant(format!("after a restart: {reason}")))?;
        self.berth = start_berth(log, &self.rng, &self.clock, &self.infra)?;
        self.summary.unanswered_count += self.expectations.len() as u64;
        for (_, expectation) in std::mem::take(&mut self.expectations) {
            self.idle_clients.push(expectation.client);
        }
        self.idle_clients.sort_unstable();
        self.mailbox.lock().clear();
        self.speculative = self.durable.clone();
        self.check_acknowledged()?;
        self.durable.compare(&self.berth.views).map_err(|reason| self.invariant(format!("after a restart: {reason}")))
    }

    fn check_acknowledged(&self) -> Result<(), SimFailure> {
        let log = self.berth.log.as_ref();
        for (command_id, position) in &self.acknowledged {
            let outcome = log.command_outcome(command_id)?;
            if outcome.as_ref().map(|outcome| outcome.last_position) != Some(*position) {
                return Err(self.invariant(format!("acknowledged command {command_id} at position {position} is lost")));
            }
            let event = log.read_all(Position(position.0 - 1), 1)?;
            if event.first().and_then(|event| event.command_id.as_ref()) != Some(command_id) {
                return Err(self.invariant(format!("position {position} no longer holds acknowledged command {command_id}")));
            }
        }
        Ok(())
    }

    /// Syncs, then checks everything that must hold at a quiet point.
    fn deep_check(&mut self) -> Result<(), SimFailure> {
        self.sync()?;
        let log = self.berth.log.clone();
        let rebuilt = replay_until(log.as_ref(), Until::Position(log.head().0))?;
        if rebuilt != self.berth.views {
            return Err(self.invariant("the views differ from a rebuild from the log"));
        }
        self.durable.compare(&self.berth.views).map_err(|reason| self.invariant(reason))?;
        let folded = load_model(log.as_ref())?;
        let model_matches = self.berth.bus.with_model(|model| model == &folded);
        if !model_matches {
            return Err(self.invariant("the decision model differs from a fold of the log"));
        }
        folded.check_invariants().map_err(|reason| self.invariant(reason))?;
        log.check_gap_free().map_err(|reason| self.invariant(reason))
    }

    /// Faults stop; the reconciler must bring the infrastructure to the
    /// desired state within the allowed ticks.
    fn liveness(&mut self) -> Result<(), SimFailure> {
        self.infra.set_faults(InfraFaults::default());
        self.infra.set_partitioned(false);
        self.infra.set_datastore_full(false);
        self.sync()?;
        let mut last_reason = String::from("never checked");
        for tick in 1..=LIVENESS_TICK_COUNT_MAX {
            self.clock.advance(LIVENESS_TICK_INTERVAL_MS);
            let report = self.berth.reconciler.tick(self.clock.now());
            self.absorb_journal()?;
            self.sync()?;
            if !report.is_converged() {
                last_reason = format!("the reconciler still plans {} actions ({:?})", report.planned_action_count, report.failures.first());
                continue;
            }
            match self.converged() {
                Ok(()) => {
                    self.summary.liveness_tick_count = tick;
                    self.trace.number(tick);
                    return Ok(());
                }
                Err(reason) => last_reason = reason,
            }
        }
        Err(SimFailure::Liveness { reason: last_reason })
    }

    /// The ground truth: the infrastructure holds exactly what the log says.
    fn converged(&self) -> Result<(), String> {
        let world = self.infra.snapshot();
        self.berth.bus.with_model(|model: &DomainModel| {
            for container in model.containers.values() {
                let Some(vm) = world.vms.get(&container.id) else { return Err(format!("container {} has no VM", container.id)) };
                let active = matches!(vm.power, ObservedPower::Running | ObservedPower::Paused);
                let as_desired = match container.status {
                    ContainerStatus::Created | ContainerStatus::Exited => !active,
                    ContainerStatus::Running => {
                        vm.power == ObservedPower::Running && vm.generation == container.generation && !container.stop_requested
                    }
                    ContainerStatus::Paused => {
                        vm.power == ObservedPower::Paused && vm.generation == container.generation && !container.stop_requested
                    }
                };
                if vm.vch != container.vch || !as_desired {
                    return Err(format!("container {} is {:?} in the log but its VM is {vm:?}", container.id, container.status));
                }
            }
            if let Some(id) = world.vms.keys().find(|id| !model.containers.contains_key(*id)) {
                return Err(format!("VM {id} has no container"));
            }
            if !world.networks.keys().eq(model.networks.keys()) {
                let held: Vec<&String> = world.networks.keys().collect();
                let wanted: Vec<&String> = model.networks.keys().collect();
                return Err(format!("the infrastructure holds networks {held:?}, the log wants {wanted:?}"));
            }
            let vchs_match =
                world.vchs.len() == model.vchs.len() && model.vchs.iter().all(|(name, vch)| world.vchs.get(name) == Some(&vch.spec));
            if !vchs_match {
                let wanted: BTreeMap<&String, &berth_core::events::VchSpec> =
                    model.vchs.iter().map(|(name, vch)| (name, &vch.spec)).collect();
                return Err(format!("the infrastructure holds VCHs {:?}, the log wants {wanted:?}", world.vchs));
            }
            Ok(())
        })
    }

    fn final_checks(&mut self) -> Result<(), SimFailure> {
        self.deep_check()?;
        self.check_acknowledged()
    }

    fn finish(mut self) -> RunSummary {
        let log = &self.berth.log;
        self.trace.number(u64::from(log.disk_checksum()));
        self.trace.number(self.infra.trace_value());
        self.trace.number(log.head().0);
        self.summary.trace_hash = self.trace.value();
        self.summary.infra_call_count = self.infra.call_count();
        self.summary.event_count = log.head().0;
        self.summary.virtual_time_ms = self.clock.now() - crate::world::EPOCH_MS;
        self.summary
    }
}
