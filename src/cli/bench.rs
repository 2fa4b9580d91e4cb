//! `berth bench ...`: berth's figures beside their yardsticks, measured in
//! the same run on the same disk. Results go to docs/benchmarks.md.

use anyhow::Context as _;
use berth_core::log::{AppendRequest, EventLog, ExpectedVersion, NewEvent, StreamAppendRequest};
use berth_core::{DomainEvent, EventId, StreamId, StreamKind};
use berth_log_rocksdb::{bench::raw_synced_batches, RocksLog};
use clap::Subcommand;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The size of a benchmark record, as the raw figures use.
const RECORD_SIZE_BYTES: usize = 200;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Durable appends per second with concurrent writers, beside raw synced WriteBatches of the same sizes.
    Log {
        /// A directory on the disk to measure (default: a temporary directory under the current one).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Seconds per measurement.
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        /// Writer counts to measure (each also the raw batch size).
        #[arg(long, value_delimiter = ',', default_value = "1,16,256")]
        writers: Vec<usize>,
    },
    /// Commit-to-delivery latency to an SSE client and a JetStream consumer, and the relay's rate beside raw JetStream publishing.
    Nats(super::bench_nats::BenchNatsArgs),
    /// Docker API latency and throughput beside a raw synced write and the HTTP layer's /_ping rate.
    Docker(super::bench_docker::BenchDockerArgs),
    /// Rebuilding every projection from a log of N events, beside a raw read of the same events.
    Replay(super::bench_replay::BenchReplayArgs),
    /// Containers created and powered on per second on a vSphere VCH against vcsim, and vSphere's share of the time.
    Vsphere(super::bench_vsphere::BenchVsphereArgs),
}

pub fn run(command: BenchCommand) -> anyhow::Result<ExitCode> {
    match command {
        BenchCommand::Log { dir, seconds, writers } => bench_log(dir, Duration::from_secs_f64(seconds), &writers),
        BenchCommand::Nats(args) => super::bench_nats::run(args),
        BenchCommand::Docker(args) => super::bench_docker::run(args),
        BenchCommand::Replay(args) => super::bench_replay::run(args),
        BenchCommand::Vsphere(args) => super::bench_vsphere::run(args),
    }
}

/// An event whose envelope is about [`RECORD_SIZE_BYTES`].
pub(super) fn sized_event() -> DomainEvent {
    let mut labels = BTreeMap::new();
    labels.insert("pad".to_string(), "x".repeat(RECORD_SIZE_BYTES - 150));
    DomainEvent::VolumeCreated { name: "bench".into(), driver: "local".into(), labels, created_ms: 0 }
}

fn log_rate(path: &std::path::Path, writer_count: usize, duration: Duration) -> anyhow::Result<(f64, f64)> {
    let log = Arc::new(RocksLog::open(path)?);
    let commits = Arc::new(AtomicU64::new(0));
    let counter = commits.clone();
    log.on_commit(Box::new(move |_| {
        counter.fetch_add(1, Ordering::Relaxed);
    }));
    let stop = Arc::new(AtomicBool::new(false));
    let appended = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let threads: Vec<_> = (0..writer_count)
        .map(|writer| {
            let log = log.clone();
            let stop = stop.clone();
            let appended = appended.clone();
            std::thread::spawn(move || {
                let stream = StreamId::new(StreamKind::Volume, format!("bench-{writer}"));
                let event = sized_event();
                let mut sequence = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    sequence += 1;
                    let mut random = [0u8; 10];
                    random[..8].copy_from_slice(&sequence.to_be_bytes());
                    let request = AppendRequest {
                        command_id: None,
                        actor: "bench".into(),
                        recorded_at_ms: 0,
                        streams: vec![StreamAppendRequest {
                            stream: stream.clone(),
                            expected: ExpectedVersion::Any,
                            events: vec![NewEvent { event_id: EventId::v7(writer as u64, random), event: event.clone() }],
                        }],
                    };
                    log.append(request).expect("bench append");
                    appended.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    std::thread::sleep(duration);
    stop.store(true, Ordering::Relaxed);
    for thread in threads {
        let _ = thread.join();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let count = appended.load(Ordering::Relaxed) as f64;
    let commit_count = commits.load(Ordering::Relaxed).max(1) as f64;
    Ok((count / elapsed, count / commit_count))
}

fn bench_log(dir: Option<PathBuf>, duration: Duration, writers: &[usize]) -> anyhow::Result<ExitCode> {
    let base = match dir {
        Some(dir) => {
            std::fs::create_dir_all(&dir)?;
            tempfile::tempdir_in(dir)?
        }
        None => tempfile::tempdir_in(".")?,
    };
    println!(
        "# berth bench log: {RECORD_SIZE_BYTES}-byte events, {:.1} s per figure, in {}",
        duration.as_secs_f64(),
        base.path().display()
    );
    println!();
    println!(
        "| writers | berth durable appends/s | events per fsync | raw synced WriteBatch of {{writers}} records: records/s | berth / raw |"
    );
    println!("|---:|---:|---:|---:|---:|");
    for &writer_count in writers {
        let raw = raw_synced_batches(&base.path().join(format!("raw-{writer_count}")), writer_count, RECORD_SIZE_BYTES, duration)
            .map_err(anyhow::Error::msg)
            .context("measuring raw synced batches")?;
        let (rate, per_commit) = log_rate(&base.path().join(format!("log-{writer_count}")), writer_count, duration)?;
        println!("| {writer_count} | {rate:.0} | {per_commit:.1} | {raw:.0} | {:.0}% |", 100.0 * rate / raw);
    }
    Ok(ExitCode::SUCCESS)
}
