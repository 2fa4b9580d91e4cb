//! Test doubles shared by the reconciler and history tests: an in-memory
//! event log whose appends are durable at once, a fixed clock and entropy,
//! and a scripted infrastructure that can fail or lose replies.

#![allow(dead_code)]

use berth_core::events::VchSpec;
use berth_core::infrastructure::{ContainerPlan, InfraError, Infrastructure, NetworkPlan, ObservedContainer, ObservedPower};
use berth_core::log::{AppendCompletion, AppendError, AppendOutcome, AppendRequest, CommitListener, EventLog};
use berth_core::{Clock, CommandId, Entropy, Position, ReadError, RecordedEvent, StreamId, StreamVersion, EVENT_SCHEMA_VERSION};
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// An event log in memory: every append is durable when `submit` returns,
/// but answered only by [`MemoryLog::flush`], because the command bus submits
/// under its decision lock and its completion takes that lock again.
#[derive(Default)]
pub struct MemoryLog {
    answers: Mutex<Vec<(AppendCompletion, Result<AppendOutcome, AppendError>)>>,
    events: Mutex<Vec<RecordedEvent>>,
    versions: Mutex<HashMap<StreamId, u64>>,
    commands: Mutex<HashMap<CommandId, AppendOutcome>>,
    listeners: Mutex<Vec<CommitListener>>,
}

impl MemoryLog {
    /// Answers every append submitted so far.
    pub fn flush(&self) {
        let answers = std::mem::take(&mut *self.answers.lock());
        for (done, result) in answers {
            done(result);
        }
    }

    fn answer(&self, done: AppendCompletion, result: Result<AppendOutcome, AppendError>) {
        self.answers.lock().push((done, result));
    }
}

impl EventLog for MemoryLog {
    fn submit(&self, request: AppendRequest, done: AppendCompletion) {
        if let Some(first) = request.command_id.as_ref().and_then(|id| self.commands.lock().get(id).cloned()) {
            return self.answer(done, Ok(AppendOutcome { duplicate: true, ..first }));
        }
        let mut events = self.events.lock();
        let mut versions = self.versions.lock();
        for stream in &request.streams {
            let actual = versions.get(&stream.stream).copied().unwrap_or(0);
            if !stream.expected.admits(StreamVersion(actual)) {
                drop((events, versions));
                return self.answer(
                    done,
                    Err(AppendError::WrongExpectedVersion { stream: stream.stream.clone(), expected: stream.expected, actual }),
                );
            }
        }
        let first_position = Position(events.len() as u64 + 1);
        let mut stream_versions = Vec::new();
        for stream in &request.streams {
            let version = versions.entry(stream.stream.clone()).or_insert(0);
            for new_event in &stream.events {
                *version += 1;
                let position = Position(events.len() as u64 + 1);
                events.push(RecordedEvent {
                    position,
                    stream: stream.stream.clone(),
                    version: StreamVersion(*version),
                    event_id: new_event.event_id,
                    command_id: request.command_id.clone(),
                    actor: request.actor.clone(),
                    recorded_at_ms: request.recorded_at_ms,
                    schema_version: EVENT_SCHEMA_VERSION,
                    event: new_event.event.clone(),
                });
            }
            stream_versions.push((stream.stream.clone(), StreamVersion(*version)));
        }
        let outcome = AppendOutcome { first_position, last_position: Position(events.len() as u64), stream_versions, duplicate: false };
        if let Some(command_id) = &request.command_id {
            self.commands.lock().insert(command_id.clone(), outcome.clone());
        }
        let head = Position(events.len() as u64);
        drop((events, versions));
        self.answer(done, Ok(outcome));
        for listener in self.listeners.lock().iter() {
            listener(head);
        }
    }

    fn head(&self) -> Position {
        Position(self.events.lock().len() as u64)
    }

    fn read_all(&self, after: Position, count_max: usize) -> Result<Vec<RecordedEvent>, ReadError> {
        let events = self.events.lock();
        let start = (after.0 as usize).min(events.len());
        Ok(events[start..(start + count_max).min(events.len())].to_vec())
    }

    fn read_stream(&self, stream: &StreamId, after: StreamVersion, count_max: usize) -> Result<Vec<RecordedEvent>, ReadError> {
        Ok(self.events.lock().iter().filter(|e| &e.stream == stream && e.version > after).take(count_max).cloned().collect())
    }

    fn command_outcome(&self, command_id: &CommandId) -> Result<Option<AppendOutcome>, ReadError> {
        Ok(self.commands.lock().get(command_id).cloned())
    }

    fn stream_version(&self, stream: &StreamId) -> StreamVersion {
        StreamVersion(self.versions.lock().get(stream).copied().unwrap_or(0))
    }

    fn on_commit(&self, listener: CommitListener) {
        self.listeners.lock().push(listener);
    }

    fn wait_for_head(&self, _after: Position, _timeout: Duration) -> Position {
        self.head()
    }

    fn save_checkpoint(&self, _consumer: &str, _position: Position, _state: &[u8]) -> Result<(), AppendError> {
        Ok(())
    }

    fn load_checkpoint(&self, _consumer: &str) -> Result<Option<(Position, Vec<u8>)>, ReadError> {
        Ok(None)
    }
}

/// A clock the test moves by hand.
#[derive(Default)]
pub struct ManualClock(pub AtomicU64);

impl ManualClock {
    pub fn set(&self, now_ms: u64) {
        self.0.store(now_ms, Ordering::Relaxed);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Entropy that counts: distinct, repeatable event ids.
#[derive(Default)]
pub struct CountingEntropy(AtomicU64);

impl Entropy for CountingEntropy {
    fn fill(&self, bytes: &mut [u8]) {
        let value = self.0.fetch_add(1, Ordering::Relaxed).to_le_bytes();
        for (index, byte) in bytes.iter_mut().enumerate() {
            *byte = value[index % value.len()];
        }
    }
}

/// What the scripted infrastructure does with the next calls.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Script {
    #[default]
    Healthy,
    /// Every call but the inventory fails with this error, without effect.
    Fail(InfraError),
    /// Every call but the inventory takes effect, then reports a transient error.
    LoseReplies,
    /// Every call, the inventory included, fails: the infrastructure is unreachable.
    Partitioned,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vm {
    pub vch: String,
    pub generation: u64,
    pub power: ObservedPower,
}

/// An infrastructure whose behaviour the test scripts, and whose calls it counts.
#[derive(Default)]
pub struct ScriptedInfra {
    pub script: Mutex<Script>,
    pub vms: Mutex<BTreeMap<String, Vm>>,
    pub vchs: Mutex<BTreeMap<String, VchSpec>>,
    pub networks: Mutex<BTreeMap<String, NetworkPlan>>,
    pub calls: Mutex<Vec<String>>,
}

impl ScriptedInfra {
    pub fn set_script(&self, script: Script) {
        *self.script.lock() = script;
    }

    fn call(&self, name: &str, effect: impl FnOnce(&ScriptedInfra) -> Result<(), InfraError>) -> Result<(), InfraError> {
        self.calls.lock().push(name.to_string());
        match self.script.lock().clone() {
            Script::Healthy => effect(self),
            Script::Fail(error) => Err(error),
            Script::LoseReplies => {
                effect(self)?;
                Err(InfraError::Transient("reply lost".into()))
            }
            Script::Partitioned => Err(InfraError::Transient("unreachable".into())),
        }
    }

    pub fn call_count(&self, name: &str) -> usize {
        self.calls.lock().iter().filter(|call| call.as_str() == name).count()
    }

    fn with_vm(&self, id: &str, change: impl FnOnce(&mut Vm)) -> Result<(), InfraError> {
        let mut vms = self.vms.lock();
        let vm = vms.get_mut(id).ok_or_else(|| InfraError::NotFound(id.to_string()))?;
        change(vm);
        Ok(())
    }
}

impl Infrastructure for ScriptedInfra {
    fn inventory(&self) -> Result<Vec<ObservedContainer>, InfraError> {
        if *self.script.lock() == Script::Partitioned {
            return Err(InfraError::Transient("unreachable".into()));
        }
        Ok(self
            .vms
            .lock()
            .iter()
            .map(|(id, vm)| ObservedContainer { id: id.clone(), vch: vm.vch.clone(), generation: vm.generation, power: vm.power })
            .collect())
    }

    fn ensure_vch(&self, name: &str, spec: &VchSpec) -> Result<(), InfraError> {
        self.call("ensure_vch", |infra| {
            infra.vchs.lock().insert(name.to_string(), spec.clone());
            Ok(())
        })
    }

    fn remove_vch(&self, name: &str) -> Result<(), InfraError> {
        self.call("remove_vch", |infra| {
            infra.vchs.lock().remove(name);
            Ok(())
        })
    }

    fn ensure_network(&self, network: &NetworkPlan) -> Result<(), InfraError> {
        self.call("ensure_network", |infra| {
            infra.networks.lock().insert(network.id.clone(), network.clone());
            Ok(())
        })
    }

    fn remove_network(&self, network_id: &str) -> Result<(), InfraError> {
        self.call("remove_network", |infra| {
            infra.networks.lock().remove(network_id);
            Ok(())
        })
    }

    fn provision(&self, plan: &ContainerPlan) -> Result<(), InfraError> {
        self.call("provision", |infra| {
            infra.vms.lock().entry(plan.id.clone()).or_insert(Vm { vch: plan.vch.clone(), generation: 0, power: ObservedPower::Created });
            Ok(())
        })
    }

    fn power_on(&self, id: &str, generation: u64) -> Result<(), InfraError> {
        self.call("power_on", |infra| {
            infra.with_vm(id, |vm| {
                if vm.generation < generation {
                    vm.generation = generation;
                    vm.power = ObservedPower::Running;
                }
            })
        })
    }

    fn power_off(&self, id: &str, _signal: &str, _timeout_s: i64) -> Result<(), InfraError> {
        self.call("power_off", |infra| {
            infra.with_vm(id, |vm| {
                if matches!(vm.power, ObservedPower::Running | ObservedPower::Paused) {
                    vm.power = ObservedPower::Exited { exit_code: 143 };
                }
            })
        })
    }

    fn signal(&self, id: &str, _signal: &str) -> Result<(), InfraError> {
        self.call("signal", |infra| infra.with_vm(id, |_| {}))
    }

    fn pause(&self, id: &str) -> Result<(), InfraError> {
        self.call("pause", |infra| infra.with_vm(id, |vm| vm.power = ObservedPower::Paused))
    }

    fn unpause(&self, id: &str) -> Result<(), InfraError> {
        self.call("unpause", |infra| infra.with_vm(id, |vm| vm.power = ObservedPower::Running))
    }

    fn destroy(&self, id: &str) -> Result<(), InfraError> {
        self.call("destroy", |infra| {
            infra.vms.lock().remove(id);
            Ok(())
        })
    }
}
