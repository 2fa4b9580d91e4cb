//! History against an in-memory log: replaying to a position or a time gives
//! the views as they were then, and the audit trail answers who did what to
//! which object and when, filtered every way the filter allows.

mod reconciler_support;

use berth_core::events::{ContainerSpec, VchSpec};
use berth_core::log::EventLog;
use berth_core::{Command, CommandEnvelope, Position, StreamKind};
use berth_engine::history::{audit, replay_until, AuditFilter, Until};
use berth_engine::CommandBus;
use berth_projections::DockerViews;
use reconciler_support::{CountingEntropy, ManualClock, MemoryLog};
use std::sync::Arc;

const IMAGE_ID: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000001";

struct Berth {
    log: Arc<MemoryLog>,
    clock: Arc<ManualClock>,
    bus: CommandBus,
}

impl Berth {
    fn new() -> Berth {
        let log = Arc::new(MemoryLog::default());
        let clock = Arc::new(ManualClock::default());
        let bus = CommandBus::new(log.clone(), clock.clone(), Arc::new(CountingEntropy::default())).unwrap();
        Berth { log, clock, bus }
    }

    fn at(&self, now_ms: u64, actor: &str, command: Command) -> Position {
        self.clock.set(now_ms);
        let (sender, receiver) = std::sync::mpsc::channel();
        self.bus.submit(CommandEnvelope::new(actor, command), Box::new(move |result| sender.send(result).unwrap()));
        self.log.flush();
        receiver.recv().unwrap().unwrap().position
    }

    /// A short history: a VCH and an image by the admin, then alice creates,
    /// starts and renames a container, and bob removes it.
    fn story() -> (Berth, Vec<Position>) {
        let berth = Berth::new();
        let positions = vec![
            berth.at(
                1_000,
                "admin",
                Command::CreateVch { name: "vch-a".into(), spec: VchSpec { target: "local".into(), ..VchSpec::default() } },
            ),
            berth.at(
                2_000,
                "admin",
                Command::RegisterImage { id: IMAGE_ID.into(), reference_tags: vec!["web:1".into()], size_bytes: 10, layer_digests: vec![] },
            ),
            berth.at(
                3_000,
                "alice",
                Command::CreateContainer {
                    id: "c1".into(),
                    name: "web".into(),
                    vch: "vch-a".into(),
                    image_id: IMAGE_ID.into(),
                    spec: ContainerSpec::default(),
                },
            ),
            berth.at(4_000, "alice", Command::StartContainer { id: "c1".into() }),
            berth.at(5_000, "alice", Command::RenameContainer { id: "c1".into(), new_name: "site".into() }),
            berth.at(6_000, "bob", Command::RemoveContainer { id: "c1".into(), force: true }),
        ];
        (berth, positions)
    }

    fn fold_up_to(&self, position: Position) -> DockerViews {
        let mut views = DockerViews::default();
        for event in self.log.read_all(Position(0), usize::MAX).unwrap() {
            if event.position <= position {
                views.apply(&event);
            }
        }
        views
    }
}

#[test]
fn replay_to_a_position_gives_the_views_as_they_were_then() {
    let (berth, positions) = Berth::story();
    let after_start = replay_until(berth.log.as_ref(), Until::Position(positions[3].0)).unwrap();
    assert_eq!(after_start.containers["c1"].state, "running");
    assert_eq!(after_start.containers["c1"].name, "web");
    assert_eq!(after_start, berth.fold_up_to(positions[3]));
    let after_rename = replay_until(berth.log.as_ref(), Until::Position(positions[4].0)).unwrap();
    assert_eq!(after_rename.containers["c1"].name, "site");
    let now = replay_until(berth.log.as_ref(), Until::Position(berth.log.head().0)).unwrap();
    assert!(now.containers.is_empty());
    assert_eq!(replay_until(berth.log.as_ref(), Until::Position(u64::MAX)).unwrap(), now);
    assert_eq!(replay_until(berth.log.as_ref(), Until::Position(0)).unwrap(), DockerViews::default());
}

#[test]
fn replay_to_a_time_stops_before_the_first_later_event() {
    let (berth, positions) = Berth::story();
    let at_4500 = replay_until(berth.log.as_ref(), Until::TimeMs(4_500)).unwrap();
    assert_eq!(at_4500, berth.fold_up_to(positions[3]));
    let before_everything = replay_until(berth.log.as_ref(), Until::TimeMs(999)).unwrap();
    assert_eq!(before_everything, DockerViews::default());
    let at_6000 = replay_until(berth.log.as_ref(), Until::TimeMs(6_000)).unwrap();
    assert_eq!(at_6000.position, berth.log.head());
}

#[test]
fn replay_reads_across_many_batches() {
    let berth = Berth::new();
    berth.at(1, "admin", Command::CreateVch { name: "vch-a".into(), spec: VchSpec { target: "local".into(), ..VchSpec::default() } });
    for index in 0..20_000u64 {
        berth.at(
            2 + index,
            "admin",
            Command::CreateVolume { name: format!("vol-{index}"), driver: "local".into(), labels: Default::default() },
        );
    }
    let views = replay_until(berth.log.as_ref(), Until::Position(15_001)).unwrap();
    assert_eq!(views.volumes.len(), 15_000);
    assert_eq!(views.position, Position(15_001));
}

#[test]
fn the_audit_trail_names_who_did_what_to_which_object_and_when() {
    let (berth, _) = Berth::story();
    let everything = audit(berth.log.as_ref(), &AuditFilter::default()).unwrap();
    assert_eq!(everything.len() as u64, berth.log.head().0);
    let rename = everything.iter().find(|entry| entry.event_type == "ContainerRenamed").unwrap();
    assert_eq!((rename.actor.as_str(), rename.time_ms, rename.stream.to_string().as_str()), ("alice", 5_000, "container/c1"));
    assert_eq!(rename.summary, "renamed container c1 from web to site");

    let by_bob = audit(berth.log.as_ref(), &AuditFilter { actor: Some("bob".into()), ..AuditFilter::default() }).unwrap();
    let bob_did: Vec<(&str, u64, String)> =
        by_bob.iter().map(|entry| (entry.event_type, entry.time_ms, entry.stream.to_string())).collect();
    assert_eq!(bob_did, [("ContainerRemoved", 6_000, "container/c1".to_string())]);

    let containers =
        AuditFilter { stream_kind: Some(StreamKind::Container), stream_key_prefix: Some("c".into()), ..AuditFilter::default() };
    let types: Vec<&str> = audit(berth.log.as_ref(), &containers).unwrap().iter().map(|entry| entry.event_type).collect();
    assert_eq!(types, ["ContainerCreated", "ContainerStarted", "ContainerRenamed", "ContainerRemoved"]);

    let window = AuditFilter { since_ms: Some(2_000), until_ms: Some(4_000), ..AuditFilter::default() };
    let times: Vec<u64> = audit(berth.log.as_ref(), &window).unwrap().iter().map(|entry| entry.time_ms).collect();
    assert_eq!(times, [2_000, 3_000, 4_000]);

    let starts = AuditFilter { event_type: Some("ContainerStarted".into()), ..AuditFilter::default() };
    assert_eq!(audit(berth.log.as_ref(), &starts).unwrap().len(), 1);

    let limited = AuditFilter { entry_count_max: 2, ..AuditFilter::default() };
    let first_two: Vec<Position> = audit(berth.log.as_ref(), &limited).unwrap().iter().map(|entry| entry.position).collect();
    assert_eq!(first_two, [Position(1), Position(2)]);

    let nobody = AuditFilter { actor: Some("mallory".into()), ..AuditFilter::default() };
    assert!(audit(berth.log.as_ref(), &nobody).unwrap().is_empty());
}

#[test]
fn replay_equals_a_one_by_one_fold_at_every_point_of_a_busy_log() {
    // Containers come and go within and across read batches, connected to a
    // network whose endpoints must survive the replay's shortcuts.
    let berth = Berth::new();
    berth.at(1, "admin", Command::CreateVch { name: "vch-a".into(), spec: VchSpec { target: "local".into(), ..VchSpec::default() } });
    berth.at(2, "admin", Command::RegisterImage { id: IMAGE_ID.into(), reference_tags: vec![], size_bytes: 1, layer_digests: vec![] });
    berth.at(
        3,
        "admin",
        Command::CreateNetwork {
            id: "net".into(),
            name: "bridge".into(),
            driver: "bridge".into(),
            subnet: "172.17.0.0/16".into(),
            gateway: "172.17.0.1".into(),
            internal: false,
            labels: Default::default(),
        },
    );
    for index in 0..3_000u64 {
        let id = format!("c{index}");
        berth.at(
            10 + index,
            "alice",
            Command::CreateContainer {
                id: id.clone(),
                name: format!("n{index}"),
                vch: "vch-a".into(),
                image_id: IMAGE_ID.into(),
                spec: ContainerSpec::default(),
            },
        );
        berth.at(10 + index, "alice", Command::StartContainer { id: id.clone() });
        // Soon after creation (same batch), and long after (an earlier batch).
        if index % 3 == 2 {
            berth.at(10 + index, "bob", Command::RemoveContainer { id: format!("c{}", index - 1), force: true });
        }
        if index % 3 == 1 && index >= 2_000 {
            berth.at(10 + index, "bob", Command::RemoveContainer { id: format!("c{}", index - 2_000), force: true });
        }
    }
    let head = berth.log.head().0;
    for position in [1, 2, 3, 4, 5, 100, 8_191, 8_192, 8_193, 9_000, head / 2, head - 1, head] {
        let replayed = replay_until(berth.log.as_ref(), Until::Position(position)).unwrap();
        assert_eq!(replayed, berth.fold_up_to(Position(position)), "at position {position}");
    }
    assert!(!replay_until(berth.log.as_ref(), Until::Position(head)).unwrap().networks["net"].endpoints.is_empty());
}
