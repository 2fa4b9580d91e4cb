//! The simulated log's durability model: only synced appends survive a
//! crash, a torn last write is dropped on reopen, damage before the tail is
//! refused, and completions come at sync time.

use berth_core::log::{AppendRequest, EventLog, ExpectedVersion, NewEvent, StreamAppendRequest};
use berth_core::{CommandId, DomainEvent, EventId, Position, StreamId, StreamKind, StreamVersion};
use berth_sim::log::SimLog;
use parking_lot::Mutex;
use std::sync::Arc;

fn volume_append(name: &str) -> AppendRequest {
    AppendRequest {
        command_id: Some(CommandId(format!("create-{name}"))),
        actor: "tester".into(),
        recorded_at_ms: 1,
        streams: vec![StreamAppendRequest {
            stream: StreamId::new(StreamKind::Volume, name),
            expected: ExpectedVersion::NoStream,
            events: vec![NewEvent {
                event_id: EventId([1; 16]),
                event: DomainEvent::VolumeCreated { name: name.into(), driver: "local".into(), labels: Default::default(), created_ms: 1 },
            }],
        }],
    }
}

fn submit(log: &SimLog, name: &str) -> Arc<Mutex<Option<bool>>> {
    let answer = Arc::new(Mutex::new(None));
    let slot = answer.clone();
    log.submit(volume_append(name), Box::new(move |result| *slot.lock() = Some(result.is_ok())));
    answer
}

#[test]
fn appends_are_answered_and_readable_only_after_a_sync() {
    let log = SimLog::new();
    let answer = submit(&log, "one");
    assert_eq!(*answer.lock(), None);
    assert_eq!(log.head(), Position(0));
    log.sync();
    assert_eq!(*answer.lock(), Some(true));
    assert_eq!(log.head(), Position(1));
    assert_eq!(log.stream_version(&StreamId::new(StreamKind::Volume, "one")), StreamVersion(1));
    assert!(log.command_outcome(&CommandId("create-one".into())).unwrap().is_some());
}

#[test]
fn a_crash_keeps_synced_appends_and_drops_a_torn_tail() {
    let log = SimLog::new();
    submit(&log, "one");
    log.sync();
    let lost = submit(&log, "two");
    let frame_bytes = log.first_pending_frame_bytes().unwrap();
    for torn_bytes in [0, 3, 8, frame_bytes / 2, frame_bytes] {
        let image = {
            let log = SimLog::new();
            submit(&log, "one");
            log.sync();
            submit(&log, "two");
            log.crash(torn_bytes)
        };
        let reopened = SimLog::reopen(image).unwrap();
        assert_eq!(reopened.head(), Position(1), "torn at {torn_bytes} bytes");
        assert!(reopened.command_outcome(&CommandId("create-two".into())).unwrap().is_none());
        reopened.check_gap_free().unwrap();
        // The reopened log continues where the durable part ends.
        submit(&reopened, "three");
        reopened.sync();
        assert_eq!(reopened.read_all(Position(1), 10).unwrap()[0].position, Position(2));
    }
    log.crash(0);
    assert_eq!(*lost.lock(), None, "an unsynced append is never answered");
}

#[test]
fn damage_before_the_tail_is_refused() {
    let log = SimLog::new();
    submit(&log, "one");
    submit(&log, "two");
    log.sync();
    let mut image = log.crash(0);
    image[12] ^= 0xff;
    assert!(SimLog::reopen(image).is_err());
}

#[test]
fn a_closed_log_refuses_appends() {
    let log = SimLog::new();
    log.crash(0);
    let answer = submit(&log, "one");
    assert_eq!(*answer.lock(), None, "never answered from inside submit");
    log.sync();
    assert_eq!(*answer.lock(), Some(false));
    assert_eq!(log.head(), Position(0));
}
