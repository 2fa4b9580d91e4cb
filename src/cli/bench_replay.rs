//! `berth bench replay`: rebuilding every projection from N events of a
//! RocksDB log, beside a raw read (read + checksum + decode) of the same
//! events in the same run.

use berth_core::events::{ContainerSpec, VchSpec};
use berth_core::log::{AppendRequest, EventLog, ExpectedVersion, NewEvent, StreamAppendRequest};
use berth_core::{DomainEvent, EventId, Position, StreamId, StreamKind};
use berth_engine::{replay_until, Until};
use berth_log_rocksdb::RocksLog;
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

/// Events written per append while filling the log.
const FILL_BATCH_EVENT_COUNT: usize = 1000;

#[derive(Args)]
pub struct BenchReplayArgs {
    /// A directory on the disk to measure (default: a temporary directory under the current one).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Events in the log.
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
}

/// A realistic mix: containers created, started, exited, removed.
fn event_for(index: u64) -> (StreamId, DomainEvent) {
    let container = index / 4;
    let stream = StreamId::new(StreamKind::Container, format!("{container:064x}"));
    let event = match index % 4 {
        0 => DomainEvent::ContainerCreated {
            name: format!("c{container}"),
            vch: "default".into(),
            image_id: format!("sha256:{:064x}", 1),
            spec: ContainerSpec { image: "busybox".into(), cmd: vec!["true".into()], ..ContainerSpec::default() },
            created_ms: index,
        },
        1 => DomainEvent::ContainerStarted { started_ms: index },
        2 => DomainEvent::ContainerExited { exit_code: 0, finished_ms: index },
        _ => DomainEvent::ContainerRemoved,
    };
    (stream, event)
}

pub fn run(args: BenchReplayArgs) -> anyhow::Result<ExitCode> {
    let base = match &args.dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            tempfile::tempdir_in(dir)?
        }
        None => tempfile::tempdir_in(".")?,
    };
    let log = RocksLog::open(&base.path().join("log"))?;
    let started = Instant::now();
    log.append(AppendRequest {
        command_id: None,
        actor: "bench".into(),
        recorded_at_ms: 0,
        streams: vec![StreamAppendRequest {
            stream: StreamId::new(StreamKind::Vch, "default"),
            expected: ExpectedVersion::Any,
            events: vec![NewEvent {
                event_id: EventId::v7(0, [0; 10]),
                event: DomainEvent::VchCreated { name: "default".into(), spec: VchSpec { target: "local".into(), ..VchSpec::default() } },
            }],
        }],
    })?;
    let mut index = 0u64;
    while index < args.events {
        let mut streams: Vec<StreamAppendRequest> = Vec::new();
        for _ in 0..FILL_BATCH_EVENT_COUNT.min((args.events - index) as usize) {
            let (stream, event) = event_for(index);
            let new_event = NewEvent { event_id: EventId::v7(index, [1; 10]), event };
            match streams.iter_mut().find(|s| s.stream == stream) {
                Some(existing) => existing.events.push(new_event),
                None => streams.push(StreamAppendRequest { stream, expected: ExpectedVersion::Any, events: vec![new_event] }),
            }
            index += 1;
        }
        log.append(AppendRequest { command_id: None, actor: "bench".into(), recorded_at_ms: index, streams })?;
    }
    let fill_s = started.elapsed().as_secs_f64();
    let head = log.head();

    let started = Instant::now();
    let mut after = Position(0);
    let mut raw_count = 0u64;
    loop {
        let batch = log.read_all(after, 8192)?;
        let Some(last) = batch.last() else { break };
        after = last.position;
        raw_count += batch.len() as u64;
    }
    let raw_s = started.elapsed().as_secs_f64();

    let started = Instant::now();
    let views = replay_until(&log, Until::Position(head.0))?;
    let replay_s = started.elapsed().as_secs_f64();
    assert_eq!(views.position, head, "the replay must reach the head");

    let raw_rate = raw_count as f64 / raw_s;
    let replay_rate = head.0 as f64 / replay_s;
    println!("# berth bench replay: {} events (filled in {fill_s:.1} s)", head.0);
    println!();
    println!("| figure | events/s |");
    println!("|---|---:|");
    println!("| raw read (RocksDB iterate + crc32c + MessagePack decode) | {raw_rate:.0} |");
    println!("| rebuild all Docker views (replay_until) | {replay_rate:.0} ({:.0}% of raw) |", 100.0 * replay_rate / raw_rate);
    Ok(ExitCode::SUCCESS)
}
