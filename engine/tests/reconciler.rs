//! The reconciler's driver against an in-memory log and a scripted
//! infrastructure: it converges, records exits through the command bus,
//! backs off on errors, parks permanent failures, and never trusts its memory
//! of an object after a call whose reply was lost.

mod reconciler_support;

use berth_core::events::{ContainerSpec, VchSpec};
use berth_core::infrastructure::{InfraError, ObservedPower};
use berth_core::log::EventLog;
use berth_core::{Command, CommandEnvelope, DomainEvent};
use berth_engine::reconciler::{ServedVchs, ATTEMPT_COUNT_MAX, BACKOFF_MS_MIN, PARKED_RETRY_MS};
use berth_engine::{CommandBus, Reconciler};
use reconciler_support::{CountingEntropy, ManualClock, MemoryLog, Script, ScriptedInfra, Vm};
use std::sync::Arc;

const IMAGE_ID: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000001";

struct World {
    log: Arc<MemoryLog>,
    bus: Arc<CommandBus>,
    infra: Arc<ScriptedInfra>,
    reconciler: Reconciler,
}

fn world() -> World {
    let log = Arc::new(MemoryLog::default());
    let bus = Arc::new(CommandBus::new(log.clone(), Arc::new(ManualClock::default()), Arc::new(CountingEntropy::default())).unwrap());
    let infra = Arc::new(ScriptedInfra::default());
    let reconciler = Reconciler::new(bus.clone(), infra.clone(), ServedVchs::named(["vch-a"]));
    World { log, bus, infra, reconciler }
}

impl World {
    fn command(&self, command: Command) {
        let (sender, receiver) = std::sync::mpsc::channel();
        self.bus.submit(CommandEnvelope::new("tester", command), Box::new(move |result| sender.send(result).unwrap()));
        self.log.flush();
        receiver.recv().unwrap().unwrap();
    }

    fn vch(&self, name: &str, container_count_max: u64) {
        let spec = VchSpec { target: "local".into(), container_count_max, ..VchSpec::default() };
        if self.bus.with_model(|model| model.vchs.contains_key(name)) {
            self.command(Command::ConfigureVch { name: name.into(), spec });
        } else {
            self.command(Command::CreateVch { name: name.into(), spec });
        }
    }

    fn container(&self, id: &str, vch: &str) {
        self.command(Command::CreateContainer {
            id: id.into(),
            name: format!("name-{id}"),
            vch: vch.into(),
            image_id: IMAGE_ID.into(),
            spec: ContainerSpec::default(),
        });
    }

    fn setup(&self) {
        self.command(Command::RegisterImage { id: IMAGE_ID.into(), reference_tags: vec![], size_bytes: 1, layer_digests: vec![] });
        self.vch("vch-a", 0);
    }

    fn run_until_converged(&self, start_ms: u64) -> u64 {
        let mut now_ms = start_ms;
        for _ in 0..100 {
            let report = self.reconciler.tick(now_ms);
            self.log.flush();
            if report.is_converged() {
                return now_ms;
            }
            now_ms += BACKOFF_MS_MIN;
        }
        panic!("no convergence within 100 ticks");
    }

    fn vm(&self, id: &str) -> Option<Vm> {
        self.infra.vms.lock().get(id).cloned()
    }

    fn exit_events(&self) -> usize {
        self.log
            .read_all(Default::default(), 10_000)
            .unwrap()
            .iter()
            .filter(|e| matches!(e.event, DomainEvent::ContainerExited { .. }))
            .count()
    }
}

#[test]
fn a_started_container_is_provisioned_and_powered_on() {
    let world = world();
    world.setup();
    world.container("c1", "vch-a");
    world.command(Command::StartContainer { id: "c1".into() });
    world.run_until_converged(0);
    assert_eq!(world.vm("c1"), Some(Vm { vch: "vch-a".into(), generation: 1, power: ObservedPower::Running }));
    assert!(world.infra.vchs.lock().contains_key("vch-a"));
}

#[test]
fn an_exit_is_recorded_once_through_the_bus() {
    let world = world();
    world.setup();
    world.container("c1", "vch-a");
    world.command(Command::StartContainer { id: "c1".into() });
    world.run_until_converged(0);
    world.infra.vms.lock().get_mut("c1").unwrap().power = ObservedPower::Exited { exit_code: 3 };
    world.run_until_converged(1_000);
    world.reconciler.tick(2_000);
    world.log.flush();
    assert_eq!(world.exit_events(), 1);
    let exited = world.bus.with_model(|model| (model.containers["c1"].status, model.containers["c1"].exit_code));
    assert_eq!(exited, (berth_core::model::ContainerStatus::Exited, 3));
    let recorded_by = world.log.read_all(Default::default(), 10_000).unwrap().last().unwrap().actor.clone();
    assert_eq!(recorded_by, berth_engine::reconciler::DEFAULT_ACTOR);
}

#[test]
fn stop_then_restart_runs_the_next_generation() {
    let world = world();
    world.setup();
    world.container("c1", "vch-a");
    world.command(Command::StartContainer { id: "c1".into() });
    world.run_until_converged(0);
    world.command(Command::StopContainer { id: "c1".into(), timeout_s: Some(1) });
    world.run_until_converged(1_000);
    assert_eq!(world.vm("c1").unwrap().power, ObservedPower::Exited { exit_code: 143 });
    world.command(Command::StartContainer { id: "c1".into() });
    world.run_until_converged(2_000);
    assert_eq!(world.vm("c1"), Some(Vm { vch: "vch-a".into(), generation: 2, power: ObservedPower::Running }));
}

#[test]
fn removed_containers_and_unknown_vms_are_destroyed() {
    let world = world();
    world.setup();
    world.container("c1", "vch-a");
    world.run_until_converged(0);
    world.infra.vms.lock().insert("stray".into(), Vm { vch: "vch-a".into(), generation: 4, power: ObservedPower::Running });
    world.command(Command::RemoveContainer { id: "c1".into(), force: false });
    world.run_until_converged(1_000);
    assert!(world.infra.vms.lock().is_empty());
}

#[test]
fn containers_of_other_vchs_are_left_to_their_reconciler() {
    let world = world();
    world.setup();
    world.vch("vch-b", 0);
    world.container("c1", "vch-b");
    world.run_until_converged(0);
    assert_eq!(world.vm("c1"), None);
    assert!(!world.infra.vchs.lock().contains_key("vch-b"));
}

#[test]
fn transient_failures_back_off_exponentially_then_park() {
    let world = world();
    world.setup();
    world.infra.set_script(Script::Fail(InfraError::Transient("busy".into())));
    let first = world.reconciler.tick(0);
    assert_eq!(first.failures.len(), 1, "{first:?}");
    assert_eq!(first.next_due_ms, Some(BACKOFF_MS_MIN));
    let waiting = world.reconciler.tick(BACKOFF_MS_MIN - 1);
    assert_eq!((waiting.executed_action_count, waiting.deferred_action_count), (0, 1), "no retry before the backoff");
    let mut now_ms = BACKOFF_MS_MIN;
    let mut parked = false;
    for attempt in 2..=ATTEMPT_COUNT_MAX {
        let report = world.reconciler.tick(now_ms);
        assert_eq!(report.executed_action_count, 1, "attempt {attempt}");
        parked = report.failures[0].parked;
        now_ms = report.next_due_ms.unwrap();
    }
    assert!(parked, "after {ATTEMPT_COUNT_MAX} failures the action is parked");
    assert_eq!(world.infra.call_count("ensure_vch"), ATTEMPT_COUNT_MAX as usize);
    world.infra.set_script(Script::Healthy);
    world.run_until_converged(now_ms);
    assert!(world.infra.vchs.lock().contains_key("vch-a"));
}

#[test]
fn a_permanent_failure_is_parked_at_once() {
    let world = world();
    world.setup();
    world.infra.set_script(Script::Fail(InfraError::Permanent("no space".into())));
    let report = world.reconciler.tick(0);
    assert!(report.failures[0].parked);
    assert_eq!(report.next_due_ms, Some(PARKED_RETRY_MS));
    world.reconciler.tick(PARKED_RETRY_MS - 1);
    assert_eq!(world.infra.call_count("ensure_vch"), 1);
}

#[test]
fn a_change_of_plan_does_not_wait_for_the_old_backoff() {
    let world = world();
    world.setup();
    world.infra.set_script(Script::Fail(InfraError::Permanent("no space".into())));
    world.reconciler.tick(0);
    world.infra.set_script(Script::Healthy);
    world.vch("vch-a", 5);
    world.reconciler.tick(1);
    assert_eq!(world.infra.vchs.lock()["vch-a"].container_count_max, 5);
}

#[test]
fn a_lost_reply_does_not_leave_a_stale_memory_of_the_object() {
    // Found by the simulator (seed 33): a reconfigure whose reply was lost,
    // then a reconfigure back, left the infrastructure on the lost spec.
    let world = world();
    world.setup();
    world.run_until_converged(0);
    world.vch("vch-a", 10);
    world.infra.set_script(Script::LoseReplies);
    world.reconciler.tick(1_000);
    assert_eq!(world.infra.vchs.lock()["vch-a"].container_count_max, 10, "the call took effect");
    world.infra.set_script(Script::Healthy);
    world.vch("vch-a", 0);
    world.run_until_converged(2_000);
    assert_eq!(world.infra.vchs.lock()["vch-a"].container_count_max, 0);
}

#[test]
fn an_unreachable_infrastructure_is_reported_and_retried_without_hanging() {
    let world = world();
    world.setup();
    world.infra.set_script(Script::Partitioned);
    let report = world.reconciler.tick(0);
    assert!(report.error.is_some());
    assert_eq!(report.next_due_ms, Some(BACKOFF_MS_MIN));
    world.infra.set_script(Script::Healthy);
    world.run_until_converged(BACKOFF_MS_MIN);
}

impl World {
    fn events_of_type(&self, type_name: &str) -> Vec<berth_core::RecordedEvent> {
        self.log.read_all(Default::default(), 10_000).unwrap().into_iter().filter(|e| e.event.type_name() == type_name).collect()
    }
}

#[test]
fn parking_an_action_records_why_on_the_object_once() {
    let world = world();
    world.setup();
    world.infra.set_script(Script::Fail(InfraError::Permanent("no space".into())));
    world.reconciler.tick(0);
    world.log.flush();
    world.reconciler.tick(PARKED_RETRY_MS);
    world.log.flush();
    let failures = world.events_of_type("ReconcileFailed");
    assert_eq!(failures.len(), 1, "recorded once, not at every slow retry");
    assert_eq!(failures[0].stream.to_string(), "vch/vch-a");
    match &failures[0].event {
        DomainEvent::ReconcileFailed { error, attempts, .. } => {
            assert!(error.contains("no space"), "{error}");
            assert_eq!(*attempts, 1);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn transient_failures_are_recorded_when_they_park() {
    let world = world();
    world.setup();
    world.infra.set_script(Script::Fail(InfraError::Transient("busy".into())));
    let mut now_ms = 0;
    for _ in 0..ATTEMPT_COUNT_MAX {
        let report = world.reconciler.tick(now_ms);
        world.log.flush();
        now_ms = report.next_due_ms.unwrap();
    }
    let failures = world.events_of_type("ReconcileFailed");
    assert_eq!(failures.len(), 1);
    assert!(matches!(failures[0].event, DomainEvent::ReconcileFailed { attempts, .. } if attempts == ATTEMPT_COUNT_MAX));
}

#[test]
fn repairs_of_drift_are_recorded_and_cleanup_is_not() {
    let world = world();
    world.setup();
    world.container("c1", "vch-a");
    world.container("c2", "vch-a");
    world.command(Command::StartContainer { id: "c1".into() });
    world.run_until_converged(0);
    // A VM the log never had, and a VM that vanished: both are drift.
    world.infra.vms.lock().insert("stray".into(), Vm { vch: "vch-a".into(), generation: 1, power: ObservedPower::Running });
    world.infra.vms.lock().remove("c2");
    world.run_until_converged(1_000);
    // A container removed through the API: its destroy is cleanup, not drift.
    world.command(Command::RemoveContainer { id: "c1".into(), force: true });
    world.run_until_converged(2_000);
    let drift: Vec<(String, String)> = world
        .events_of_type("DriftObserved")
        .into_iter()
        .map(|e| match e.event {
            DomainEvent::DriftObserved { description } => (e.stream.to_string(), description),
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(drift.len(), 2, "{drift:?}");
    assert!(drift.iter().any(|(stream, text)| stream == "vch/vch-a" && text.contains("stray")), "{drift:?}");
    assert!(drift.iter().any(|(stream, text)| stream == "container/c2" && text.contains("disappeared")), "{drift:?}");
    assert!(world.vm("c2").is_some(), "the vanished VM was provisioned again");
    assert!(world.vm("stray").is_none() && world.vm("c1").is_none());
}

#[test]
fn a_vm_running_against_the_log_is_stopped_as_drift() {
    let world = world();
    world.setup();
    world.container("c1", "vch-a");
    world.command(Command::StartContainer { id: "c1".into() });
    world.run_until_converged(0);
    world.command(Command::StopContainer { id: "c1".into(), timeout_s: Some(0) });
    world.run_until_converged(1_000);
    world.infra.vms.lock().get_mut("c1").unwrap().power = ObservedPower::Running;
    world.run_until_converged(2_000);
    assert!(matches!(world.vm("c1").unwrap().power, ObservedPower::Exited { .. }));
    let drift = world.events_of_type("DriftObserved");
    assert_eq!(drift.len(), 1);
    assert!(matches!(&drift[0].event, DomainEvent::DriftObserved { description } if description.contains("powering it off")));
}

#[test]
fn a_vch_whose_objects_vanished_is_ensured_again_as_drift() {
    let world = world();
    world.setup();
    world.run_until_converged(0);
    let ensured_before = world.infra.call_count("ensure_vch");
    world.container("c1", "vch-a");
    // The provision finds the VCH's pool gone (deleted behind berth's back).
    world.infra.set_script(Script::Fail(InfraError::NotFound("resource pool vch-a".into())));
    world.reconciler.tick(1_000);
    world.infra.set_script(Script::Healthy);
    world.run_until_converged(2_000);
    assert_eq!(world.infra.call_count("ensure_vch"), ensured_before + 1, "the VCH was ensured again");
    assert!(world.vm("c1").is_some());
    let drift = world.events_of_type("DriftObserved");
    assert_eq!(drift.len(), 1, "{drift:?}");
    assert_eq!(drift[0].stream.to_string(), "vch/vch-a");
}

#[test]
fn parallel_actions_converge_to_the_same_state() {
    let log = Arc::new(MemoryLog::default());
    let bus = Arc::new(CommandBus::new(log.clone(), Arc::new(ManualClock::default()), Arc::new(CountingEntropy::default())).unwrap());
    let infra = Arc::new(ScriptedInfra::default());
    let reconciler = Reconciler::new(bus.clone(), infra.clone(), ServedVchs::named(["vch-a"])).with_parallelism(8);
    let world = World { log, bus, infra, reconciler };
    world.setup();
    for index in 0..40 {
        let id = format!("c{index}");
        world.container(&id, "vch-a");
        world.command(Command::StartContainer { id });
    }
    world.run_until_converged(0);
    for index in 0..40 {
        assert_eq!(world.vm(&format!("c{index}")).map(|vm| vm.power), Some(ObservedPower::Running));
    }
}

#[tokio::test]
async fn the_production_task_reacts_to_commits() {
    let world = world();
    world.setup();
    let reconciler = Arc::new(world.reconciler);
    let task = reconciler.clone().spawn(Arc::new(ManualClock::default()));
    let bus = world.bus.clone();
    let (sender, receiver) = tokio::sync::oneshot::channel();
    bus.submit(
        CommandEnvelope::new(
            "tester",
            Command::CreateContainer {
                id: "c1".into(),
                name: "one".into(),
                vch: "vch-a".into(),
                image_id: IMAGE_ID.into(),
                spec: ContainerSpec::default(),
            },
        ),
        Box::new(move |result| {
            let _ = sender.send(result);
        }),
    );
    world.log.flush();
    receiver.await.unwrap().unwrap();
    let mut provisioned = false;
    for _ in 0..200 {
        if world.infra.vms.lock().contains_key("c1") {
            provisioned = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    task.stop().await;
    assert!(provisioned, "the task provisioned the container after the commit");
}
