//! The RocksDB log against its contract: expected versions, idempotent
//! command ids, atomic multi-stream appends, typed refusals that write
//! nothing, catch-up subscriptions, checkpoints and corruption detection.

use berth_core::log::{AppendError, AppendRequest, EventLog, ExpectedVersion, NewEvent, StreamAppendRequest, Subscription};
use berth_core::{CommandId, DomainEvent, EventId, Position, StreamId, StreamKind, StreamVersion};
use berth_log_rocksdb::{verify_log, OpenError, RocksLog};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

fn volume(name: &str) -> StreamId {
    StreamId::new(StreamKind::Volume, name)
}

fn created(name: &str) -> DomainEvent {
    DomainEvent::VolumeCreated { name: name.into(), driver: "local".into(), labels: BTreeMap::new(), created_ms: 1 }
}

fn new_event(seed: u8, event: DomainEvent) -> NewEvent {
    NewEvent { event_id: EventId::v7(1, [seed; 10]), event }
}

fn request(command_id: Option<&str>, streams: Vec<(StreamId, ExpectedVersion, Vec<DomainEvent>)>) -> AppendRequest {
    AppendRequest {
        command_id: command_id.map(|id| CommandId(id.into())),
        actor: "tester".into(),
        recorded_at_ms: 42,
        streams: streams
            .into_iter()
            .map(|(stream, expected, events)| StreamAppendRequest {
                stream,
                expected,
                events: events.into_iter().enumerate().map(|(index, event)| new_event(index as u8, event)).collect(),
            })
            .collect(),
    }
}

#[test]
fn appends_get_positions_and_versions_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let log = RocksLog::open(dir.path()).unwrap();
    let first = log.append(request(None, vec![(volume("a"), ExpectedVersion::NoStream, vec![created("a")])])).unwrap();
    assert_eq!((first.first_position, first.last_position), (Position(1), Position(1)));
    let second =
        log.append(request(None, vec![(volume("a"), ExpectedVersion::Exact(StreamVersion(1)), vec![DomainEvent::VolumeRemoved])])).unwrap();
    assert_eq!(second.stream_versions, vec![(volume("a"), StreamVersion(2))]);
    let all = log.read_all(Position(0), 100).unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[1].event, DomainEvent::VolumeRemoved);
    assert_eq!(all[1].actor, "tester");
    assert_eq!(log.read_stream(&volume("a"), StreamVersion(1), 10).unwrap().len(), 1);
    assert_eq!(log.read_stream(&volume("b"), StreamVersion(0), 10).unwrap().len(), 0);
    assert_eq!(log.stream_version(&volume("a")), StreamVersion(2));
}

#[test]
fn expected_versions_are_enforced_and_refusals_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let log = RocksLog::open(dir.path()).unwrap();
    log.append(request(None, vec![(volume("a"), ExpectedVersion::Any, vec![created("a")])])).unwrap();
    for expected in [ExpectedVersion::NoStream, ExpectedVersion::Exact(StreamVersion(0)), ExpectedVersion::Exact(StreamVersion(5))] {
        let error = log.append(request(None, vec![(volume("a"), expected, vec![created("a")])])).unwrap_err();
        assert!(matches!(error, AppendError::WrongExpectedVersion { actual: 1, .. }), "{error}");
    }
    let error = log.append(request(None, vec![(volume("new"), ExpectedVersion::StreamExists, vec![created("x")])])).unwrap_err();
    assert!(matches!(error, AppendError::WrongExpectedVersion { actual: 0, .. }));
    let error =
        log.append(request(None, vec![(StreamId::new(StreamKind::Vch, ""), ExpectedVersion::Any, vec![created("x")])])).unwrap_err();
    assert!(matches!(error, AppendError::InvalidStream(_)));
    let huge =
        DomainEvent::VolumeCreated { name: "x".repeat(2 * 1024 * 1024), driver: "local".into(), labels: BTreeMap::new(), created_ms: 0 };
    let error = log.append(request(None, vec![(volume("big"), ExpectedVersion::Any, vec![huge])])).unwrap_err();
    assert!(matches!(error, AppendError::EventTooLarge { .. }));
    let error = log
        .append(request(
            None,
            vec![(volume("d"), ExpectedVersion::Any, vec![created("d")]), (volume("d"), ExpectedVersion::Any, vec![created("d")])],
        ))
        .unwrap_err();
    assert!(matches!(error, AppendError::DuplicateStream(_)));
    // A multi-stream append with one bad expectation writes none of its streams.
    let error = log
        .append(request(
            None,
            vec![
                (volume("fresh"), ExpectedVersion::NoStream, vec![created("fresh")]),
                (volume("a"), ExpectedVersion::NoStream, vec![created("a")]),
            ],
        ))
        .unwrap_err();
    assert!(matches!(error, AppendError::WrongExpectedVersion { .. }));
    assert_eq!(log.head(), Position(1));
    assert_eq!(log.stream_version(&volume("fresh")), StreamVersion(0));
}

#[test]
fn multi_stream_appends_are_atomic_and_contiguous() {
    let dir = tempfile::tempdir().unwrap();
    let log = RocksLog::open(dir.path()).unwrap();
    let outcome = log
        .append(request(
            None,
            vec![
                (volume("a"), ExpectedVersion::NoStream, vec![created("a"), DomainEvent::VolumeRemoved]),
                (volume("b"), ExpectedVersion::NoStream, vec![created("b")]),
            ],
        ))
        .unwrap();
    assert_eq!((outcome.first_position, outcome.last_position), (Position(1), Position(3)));
    assert_eq!(outcome.stream_versions, vec![(volume("a"), StreamVersion(2)), (volume("b"), StreamVersion(1))]);
}

#[test]
fn a_retried_command_returns_its_first_result_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let log = RocksLog::open(dir.path()).unwrap();
    let first = log.append(request(Some("cmd-1"), vec![(volume("a"), ExpectedVersion::NoStream, vec![created("a")])])).unwrap();
    assert!(!first.duplicate);
    let retry = log.append(request(Some("cmd-1"), vec![(volume("a"), ExpectedVersion::NoStream, vec![created("a")])])).unwrap();
    assert!(retry.duplicate);
    assert_eq!((retry.first_position, retry.last_position), (first.first_position, first.last_position));
    assert_eq!(log.head(), Position(1));
    drop(log);
    let log = RocksLog::open(dir.path()).unwrap();
    let after_restart = log.append(request(Some("cmd-1"), vec![(volume("zz"), ExpectedVersion::Any, vec![created("zz")])])).unwrap();
    assert!(after_restart.duplicate);
    assert_eq!(after_restart.first_position, Position(1));
    assert_eq!(log.head(), Position(1));
}

#[test]
fn concurrent_writers_share_group_commits_without_losing_order() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(RocksLog::open(dir.path()).unwrap());
    let threads: Vec<_> = (0..16)
        .map(|writer| {
            let log = log.clone();
            std::thread::spawn(move || {
                for index in 0..50 {
                    let stream = volume(&format!("w{writer}"));
                    let expected = ExpectedVersion::Exact(StreamVersion(index));
                    log.append(request(None, vec![(stream, expected, vec![created("x")])])).unwrap();
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    assert_eq!(log.head(), Position(800));
    let all = log.read_all(Position(0), 10_000).unwrap();
    assert!(all.iter().enumerate().all(|(index, event)| event.position.0 == index as u64 + 1));
}

#[test]
fn subscriptions_catch_up_then_follow_live() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(RocksLog::open(dir.path()).unwrap());
    for index in 0..5 {
        log.append(request(None, vec![(volume(&format!("v{index}")), ExpectedVersion::Any, vec![created("x")])])).unwrap();
    }
    let writer = {
        let log = log.clone();
        std::thread::spawn(move || {
            for index in 5..10 {
                std::thread::sleep(Duration::from_millis(5));
                log.append(request(None, vec![(volume(&format!("v{index}")), ExpectedVersion::Any, vec![created("x")])])).unwrap();
            }
        })
    };
    let mut subscription = Subscription::new(log.as_ref(), Position(2), 2);
    let mut seen = Vec::new();
    while seen.len() < 8 {
        for event in subscription.next_batch(Duration::from_secs(5)).unwrap() {
            seen.push(event.position.0);
        }
    }
    writer.join().unwrap();
    assert_eq!(seen, (3..=10).collect::<Vec<_>>());
}

#[test]
fn checkpoints_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = RocksLog::open(dir.path()).unwrap();
        assert_eq!(log.load_checkpoint("views").unwrap(), None);
        log.save_checkpoint("views", Position(9), b"state").unwrap();
    }
    let log = RocksLog::open(dir.path()).unwrap();
    assert_eq!(log.load_checkpoint("views").unwrap(), Some((Position(9), b"state".to_vec())));
}

#[test]
fn a_corrupt_event_is_detected_on_open_with_its_position() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = RocksLog::open(dir.path()).unwrap();
        for index in 0..3 {
            log.append(request(None, vec![(volume(&format!("v{index}")), ExpectedVersion::Any, vec![created("x")])])).unwrap();
        }
    }
    {
        // Damage event 2 behind the log's back.
        let mut options = rocksdb::Options::default();
        options.create_if_missing(false);
        let names = rocksdb::DB::list_cf(&options, dir.path()).unwrap();
        let db = rocksdb::DB::open_cf(&options, dir.path(), names).unwrap();
        let events = db.cf_handle("events").unwrap();
        let mut value = db.get_cf(&events, 2u64.to_be_bytes()).unwrap().unwrap();
        let last = value.len() - 1;
        value[last] ^= 0xff;
        db.put_cf(&events, 2u64.to_be_bytes(), value).unwrap();
    }
    match RocksLog::open(dir.path()) {
        Err(OpenError::Corrupt { position, reason, .. }) => {
            assert_eq!(position, 2);
            assert!(reason.contains("checksum"), "{reason}");
        }
        other => panic!("expected corruption at position 2, got {:?}", other.map(|_| ())),
    }
    let report = verify_log(dir.path()).unwrap();
    assert_eq!(report.problem.as_ref().map(|(position, _)| *position), Some(2));
}

#[test]
fn a_missing_event_is_a_gap_named_by_position() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = RocksLog::open(dir.path()).unwrap();
        for index in 0..3 {
            log.append(request(None, vec![(volume(&format!("v{index}")), ExpectedVersion::Any, vec![created("x")])])).unwrap();
        }
    }
    {
        let options = rocksdb::Options::default();
        let names = rocksdb::DB::list_cf(&options, dir.path()).unwrap();
        let db = rocksdb::DB::open_cf(&options, dir.path(), names).unwrap();
        let events = db.cf_handle("events").unwrap();
        db.delete_cf(&events, 2u64.to_be_bytes()).unwrap();
    }
    let error = RocksLog::open(dir.path()).err().expect("a gap must be refused");
    assert!(error.to_string().contains("position 2"), "{error}");
}
