//! The simulated infrastructure: implements the core's [`Infrastructure`]
//! port over an in-memory world of VMs, networks and VCHs, with faults:
//! failed tasks, latency (the virtual clock moves during a call), lost
//! responses (the action happened, the reply did not arrive), host loss
//! (running VMs exit or vanish), a full datastore (provisioning fails
//! permanently until space is freed) and partitions (nothing answers).
//!
//! Its state is the ground truth the auditor checks convergence against.

use crate::world::{SimClock, SimRng, TraceHash};
use berth_core::events::VchSpec;
use berth_core::infrastructure::{ContainerPlan, InfraError, Infrastructure, NetworkPlan, ObservedContainer, ObservedPower};
use parking_lot::Mutex;
use std::collections::BTreeMap;

/// The exit code of a run ended by a hard stop or a kill (128 + SIGKILL).
pub const EXIT_CODE_KILLED: i64 = 137;
/// The exit code of a run that ended on its stop signal (128 + SIGTERM).
pub const EXIT_CODE_TERMINATED: i64 = 143;
/// The exit code of a run whose host was lost.
pub const EXIT_CODE_HOST_LOST: i64 = 255;

/// How often the infrastructure misbehaves; all zero is a healthy world.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct InfraFaults {
    /// A task fails without effect.
    pub failure_probability: f64,
    /// A task succeeds but its reply is lost.
    pub lost_response_probability: f64,
    /// The most virtual time one call takes.
    pub latency_ms_max: u64,
}

/// One VM as the world holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimVm {
    pub vch: String,
    pub generation: u64,
    pub power: ObservedPower,
    pub plan: ContainerPlan,
}

/// The whole simulated infrastructure at one moment.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct InfraSnapshot {
    pub vms: BTreeMap<String, SimVm>,
    pub networks: BTreeMap<String, NetworkPlan>,
    pub vchs: BTreeMap<String, VchSpec>,
}

#[derive(Default)]
struct InfraState {
    world: InfraSnapshot,
    faults: InfraFaults,
    partitioned: bool,
    datastore_full: bool,
    call_count: u64,
    trace: TraceHash,
}

pub struct SimInfra {
    rng: SimRng,
    clock: SimClock,
    state: Mutex<InfraState>,
}

impl SimInfra {
    pub fn new(rng: SimRng, clock: SimClock) -> SimInfra {
        SimInfra { rng, clock, state: Mutex::new(InfraState::default()) }
    }

    pub fn set_faults(&self, faults: InfraFaults) {
        self.state.lock().faults = faults;
    }

    pub fn set_partitioned(&self, partitioned: bool) {
        self.state.lock().partitioned = partitioned;
    }

    pub fn partitioned(&self) -> bool {
        self.state.lock().partitioned
    }

    pub fn set_datastore_full(&self, full: bool) {
        self.state.lock().datastore_full = full;
    }

    pub fn datastore_full(&self) -> bool {
        self.state.lock().datastore_full
    }

    pub fn snapshot(&self) -> InfraSnapshot {
        self.state.lock().world.clone()
    }

    pub fn call_count(&self) -> u64 {
        self.state.lock().call_count
    }

    /// A hash of every call and its result, for the run's trace.
    pub fn trace_value(&self) -> u64 {
        self.state.lock().trace.value()
    }

    /// Processes end on their own: each running VM exits with `probability`.
    pub fn natural_exits(&self, probability: f64) {
        if probability <= 0.0 {
            return;
        }
        let mut state = self.state.lock();
        for vm in state.world.vms.values_mut() {
            if vm.power == ObservedPower::Running && self.rng.chance(probability) {
                vm.power = ObservedPower::Exited { exit_code: self.rng.below(3) as i64 };
            }
        }
    }

    /// A host is lost: about half of the active VMs stop; of those, some exit
    /// and the rest vanish with the host. Returns how many were hit.
    pub fn lose_host(&self) -> usize {
        let mut state = self.state.lock();
        let mut vanished = Vec::new();
        let mut hit_count = 0;
        for (id, vm) in state.world.vms.iter_mut() {
            let active = matches!(vm.power, ObservedPower::Running | ObservedPower::Paused);
            if !active || !self.rng.chance(0.5) {
                continue;
            }
            hit_count += 1;
            if self.rng.chance(0.5) {
                vm.power = ObservedPower::Exited { exit_code: EXIT_CODE_HOST_LOST };
            } else {
                vanished.push(id.clone());
            }
        }
        for id in vanished {
            state.world.vms.remove(&id);
        }
        hit_count
    }

    /// Runs one call with the configured faults: latency first, then a
    /// partition or a failed task (no effect), then the effect, then perhaps a
    /// lost reply (the effect stays).
    fn call<T>(&self, name: &str, operate: impl FnOnce(&mut InfraState) -> Result<T, InfraError>) -> Result<T, InfraError> {
        let mut state = self.state.lock();
        state.call_count += 1;
        let faults = state.faults;
        if faults.latency_ms_max > 0 {
            self.clock.advance(self.rng.below(faults.latency_ms_max + 1));
        }
        let result = if state.partitioned {
            Err(InfraError::Transient("the infrastructure is unreachable".into()))
        } else if self.rng.chance(faults.failure_probability) {
            Err(InfraError::Transient(format!("task {name} failed")))
        } else {
            match operate(&mut state) {
                Ok(_) if self.rng.chance(faults.lost_response_probability) => {
                    Err(InfraError::Transient(format!("the reply to {name} was lost")))
                }
                other => other,
            }
        };
        state.trace.text(name);
        state.trace.number(match &result {
            Ok(_) => 0,
            Err(InfraError::NotFound(_)) => 1,
            Err(InfraError::Transient(_)) => 2,
            Err(InfraError::Permanent(_)) => 3,
        });
        result
    }
}

fn vm_mut<'a>(state: &'a mut InfraState, id: &str) -> Result<&'a mut SimVm, InfraError> {
    state.world.vms.get_mut(id).ok_or_else(|| InfraError::NotFound(format!("container {id}")))
}

impl Infrastructure for SimInfra {
    fn inventory(&self) -> Result<Vec<ObservedContainer>, InfraError> {
        self.call("inventory", |state| {
            Ok(state
                .world
                .vms
                .iter()
                .map(|(id, vm)| ObservedContainer { id: id.clone(), vch: vm.vch.clone(), generation: vm.generation, power: vm.power })
                .collect())
        })
    }

    fn ensure_vch(&self, name: &str, spec: &VchSpec) -> Result<(), InfraError> {
        self.call("ensure_vch", |state| {
            state.world.vchs.insert(name.to_string(), spec.clone());
            Ok(())
        })
    }

    fn remove_vch(&self, name: &str) -> Result<(), InfraError> {
        self.call("remove_vch", |state| {
            state.world.vms.retain(|_, vm| vm.vch != name);
            state.world.vchs.remove(name);
            Ok(())
        })
    }

    fn ensure_network(&self, network: &NetworkPlan) -> Result<(), InfraError> {
        self.call("ensure_network", |state| {
            state.world.networks.insert(network.id.clone(), network.clone());
            Ok(())
        })
    }

    fn remove_network(&self, network_id: &str) -> Result<(), InfraError> {
        self.call("remove_network", |state| {
            state.world.networks.remove(network_id);
            Ok(())
        })
    }

    fn provision(&self, plan: &ContainerPlan) -> Result<(), InfraError> {
        self.call("provision", |state| {
            if state.world.vms.contains_key(&plan.id) {
                return Ok(());
            }
            if !state.world.vchs.contains_key(&plan.vch) {
                return Err(InfraError::NotFound(format!("VCH {}", plan.vch)));
            }
            if let Some(missing) = plan.networks.iter().find(|n| !state.world.networks.contains_key(&n.network_id)) {
                return Err(InfraError::NotFound(format!("network {}", missing.network_id)));
            }
            if state.datastore_full {
                return Err(InfraError::Permanent("the datastore is full".into()));
            }
            state
                .world
                .vms
                .insert(plan.id.clone(), SimVm { vch: plan.vch.clone(), generation: 0, power: ObservedPower::Created, plan: plan.clone() });
            Ok(())
        })
    }

    fn power_on(&self, id: &str, generation: u64) -> Result<(), InfraError> {
        self.call("power_on", |state| {
            let vm = vm_mut(state, id)?;
            if vm.generation >= generation {
                return Ok(()); // this run (or a later one) already started
            }
            if matches!(vm.power, ObservedPower::Running | ObservedPower::Paused) {
                return Err(InfraError::Transient(format!("container {id} still runs generation {}", vm.generation)));
            }
            vm.generation = generation;
            vm.power = ObservedPower::Running;
            Ok(())
        })
    }

    fn power_off(&self, id: &str, signal: &str, timeout_s: i64) -> Result<(), InfraError> {
        self.call("power_off", |state| {
            let vm = vm_mut(state, id)?;
            if matches!(vm.power, ObservedPower::Running | ObservedPower::Paused) {
                let graceful = timeout_s > 0 && signal != "SIGKILL" && signal != "9";
                vm.power = ObservedPower::Exited { exit_code: if graceful { EXIT_CODE_TERMINATED } else { EXIT_CODE_KILLED } };
            }
            Ok(())
        })
    }

    fn signal(&self, id: &str, signal: &str) -> Result<(), InfraError> {
        self.call("signal", |state| {
            let vm = vm_mut(state, id)?;
            if matches!(signal, "SIGKILL" | "9") && matches!(vm.power, ObservedPower::Running | ObservedPower::Paused) {
                vm.power = ObservedPower::Exited { exit_code: EXIT_CODE_KILLED };
            }
            Ok(())
        })
    }

    fn pause(&self, id: &str) -> Result<(), InfraError> {
        self.call("pause", |state| {
            let vm = vm_mut(state, id)?;
            match vm.power {
                ObservedPower::Running | ObservedPower::Paused => {
                    vm.power = ObservedPower::Paused;
                    Ok(())
                }
                _ => Err(InfraError::Transient(format!("container {id} is not running"))),
            }
        })
    }

    fn unpause(&self, id: &str) -> Result<(), InfraError> {
        self.call("unpause", |state| {
            let vm = vm_mut(state, id)?;
            match vm.power {
                ObservedPower::Running | ObservedPower::Paused => {
                    vm.power = ObservedPower::Running;
                    Ok(())
                }
                _ => Err(InfraError::Transient(format!("container {id} is not paused"))),
            }
        })
    }

    fn destroy(&self, id: &str) -> Result<(), InfraError> {
        self.call("destroy", |state| {
            state.world.vms.remove(id);
            Ok(())
        })
    }
}
