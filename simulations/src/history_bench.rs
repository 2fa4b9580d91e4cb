//! A benchmark of `berth_engine::history::replay_until` over a large log:
//! the time to rebuild the Docker views from N events, beside the time of a
//! raw read of the same events (the floor any replay pays).

use crate::log::SimLog;
use crate::world::SimRng;
use berth_core::events::ContainerSpec;
use berth_core::log::{AppendRequest, EventLog, ExpectedVersion, NewEvent, StreamAppendRequest};
use berth_core::{DomainEvent, EventId, Position, ReadError, StreamId, StreamKind};
use berth_engine::history::{replay_until, Until, REPLAY_BATCH_EVENT_COUNT_MAX};
use std::time::Instant;

/// Containers alive at once while the log is generated; each lives through
/// created, started, exited and removed.
const LIVE_CONTAINER_COUNT: u64 = 1_000;

/// What one benchmark measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HistoryBenchReport {
    pub event_count: u64,
    pub raw_read_events_per_s: f64,
    pub replay_events_per_s: f64,
    pub container_count: usize,
}

/// Fills a log with `event_count` container lifecycle events (appended
/// directly, without the command bus, so that filling is fast).
pub fn fill_log(event_count: u64, seed: u64) -> SimLog {
    let log = SimLog::new();
    let rng = SimRng::new(seed);
    let mut versions = vec![0u64; LIVE_CONTAINER_COUNT as usize];
    let mut generations = vec![0u64; LIVE_CONTAINER_COUNT as usize];
    for index in 0..event_count {
        let slot = rng.below(LIVE_CONTAINER_COUNT) as usize;
        let id = format!("{:064x}", (generations[slot] << 16) | slot as u64);
        let event = match versions[slot] % 4 {
            0 => DomainEvent::ContainerCreated {
                name: format!("c-{slot}-{}", generations[slot]),
                vch: "vch-0".into(),
                image_id: format!("sha256:{:064x}", slot % 7),
                spec: ContainerSpec {
                    image: "app:1".into(),
                    cmd: vec!["serve".into(), "--port".into(), "80".into()],
                    ..ContainerSpec::default()
                },
                created_ms: index,
            },
            1 => DomainEvent::ContainerStarted { started_ms: index },
            2 => DomainEvent::ContainerExited { exit_code: 0, finished_ms: index },
            _ => DomainEvent::ContainerRemoved,
        };
        versions[slot] += 1;
        let stream_version = (versions[slot] - 1) % 4;
        if versions[slot].is_multiple_of(4) {
            generations[slot] += 1;
        }
        let request = AppendRequest {
            command_id: None,
            actor: "bench".into(),
            recorded_at_ms: index,
            streams: vec![StreamAppendRequest {
                stream: StreamId::new(StreamKind::Container, id),
                expected: ExpectedVersion::Exact(berth_core::StreamVersion(stream_version)),
                events: vec![NewEvent { event_id: EventId([0; 16]), event }],
            }],
        };
        log.submit(request, Box::new(|_| {}));
        if index.is_multiple_of(4_096) {
            log.sync();
        }
    }
    log.sync();
    log
}

/// Times a raw read and a replay of the whole log, each the best of `round_count`.
pub fn run(event_count: u64, round_count: u32) -> Result<HistoryBenchReport, ReadError> {
    let log = fill_log(event_count, 1);
    let head = log.head();
    let mut raw_best_s = f64::MAX;
    let mut replay_best_s = f64::MAX;
    let mut container_count = 0;
    for _ in 0..round_count.max(1) {
        let started = Instant::now();
        let mut after = Position(0);
        let mut read_count = 0u64;
        loop {
            let batch = log.read_all(after, REPLAY_BATCH_EVENT_COUNT_MAX)?;
            let Some(last) = batch.last() else { break };
            after = last.position;
            read_count += batch.len() as u64;
        }
        raw_best_s = raw_best_s.min(started.elapsed().as_secs_f64());
        debug_assert_eq!(read_count, head.0);

        let started = Instant::now();
        let views = replay_until(&log, Until::Position(head.0))?;
        replay_best_s = replay_best_s.min(started.elapsed().as_secs_f64());
        container_count = views.containers.len();
    }
    Ok(HistoryBenchReport {
        event_count: head.0,
        raw_read_events_per_s: head.0 as f64 / raw_best_s,
        replay_events_per_s: head.0 as f64 / replay_best_s,
        container_count,
    })
}
