//! `berth bench nats`: how fast a committed event reaches people and other
//! machines, measured in one run against one nats-server.
//!
//! 1. Latency: events are committed at a steady rate (1,000/s by default);
//!    the commit instant is taken in the log's commit listener, and the
//!    delivery instant when an SSE client of the portal, and a JetStream
//!    ordered consumer fed by the relay, receive the event.
//! 2. Rate: a log pre-filled with N events is relayed to a fresh stream, and
//!    the same messages (same subjects, payloads, message ids) are published
//!    with plain JetStream async publishing with the same in-flight bound.
//!    Each is measured twice, alternating; the better figure of each counts.

use anyhow::{bail, Context as _};
use berth_api::portal::{self, PortalState};
use berth_core::log::{AppendRequest, EventLog, ExpectedVersion, NewEvent, StreamAppendRequest};
use berth_core::{EventId, Position, StreamId, StreamKind};
use berth_engine::ViewHandle;
use berth_log_rocksdb::RocksLog;
use berth_nats::relay::IN_FLIGHT_COUNT_MAX_DEFAULT;
use berth_nats::{Relay, RelayConfig, RelayState, StreamSettings};
use berth_projections::DockerViews;
use clap::Args;
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitCode};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long deliveries may trail the last commit before the run counts them as lost.
const DELIVERY_WAIT: Duration = Duration::from_secs(20);
/// How long a started nats-server may take to accept connections.
const NATS_START_WAIT: Duration = Duration::from_secs(10);
const LATENCY_STREAM: &str = "BERTH_BENCH_LATENCY";
const RELAY_STREAM: &str = "BERTH_BENCH_RELAY";
const RAW_STREAM: &str = "BERTH_BENCH_RAW";
/// The subject prefix of the raw stream (a second stream cannot also take `berth.>`).
const RAW_SUBJECT_PREFIX: &str = "rawbench";
/// Rounds of the rate comparison; the best of each side counts.
const RATE_ROUND_COUNT: usize = 3;

#[derive(Args)]
pub struct BenchNatsArgs {
    /// A NATS server with JetStream to measure against (default: start nats-server on a free loopback port).
    #[arg(long)]
    pub nats: Option<String>,
    /// A directory on the disk to measure (default: a temporary directory under the current one).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Commits per second in the latency measurement.
    #[arg(long, default_value_t = 1000)]
    pub rate: u64,
    /// Seconds of the latency measurement.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Events relayed in the rate measurement.
    #[arg(long, default_value_t = 100_000)]
    pub relay_events: usize,
}

/// A nats-server started for the bench, killed on drop.
struct NatsServer {
    child: Child,
    url: String,
}

impl NatsServer {
    fn start(store_dir: &Path) -> anyhow::Result<NatsServer> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut command = std::process::Command::new("nats-server");
        command
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(store_dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        // SAFETY: prctl is async-signal-safe; it makes the server die with the bench even when the bench is killed.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut command, || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = command.spawn().context("starting nats-server (install it: apt-get install nats-server)")?;
        let server = NatsServer { child, url: format!("nats://127.0.0.1:{port}") };
        let deadline = Instant::now() + NATS_START_WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("nats-server did not listen on port {port} within {NATS_START_WAIT:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(server)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn event_request(sequence: u64) -> AppendRequest {
    let mut random = [0u8; 10];
    random[..8].copy_from_slice(&sequence.to_be_bytes());
    AppendRequest {
        command_id: None,
        actor: "bench".into(),
        recorded_at_ms: 0,
        streams: vec![StreamAppendRequest {
            stream: StreamId::new(StreamKind::Volume, format!("bench-{}", sequence % 64)),
            expected: ExpectedVersion::Any,
            events: vec![NewEvent { event_id: EventId::v7(sequence, random), event: super::bench::sized_event() }],
        }],
    }
}

/// Commit instants by position, taken in the commit listener.
fn record_commits(log: &RocksLog) -> Arc<Mutex<HashMap<u64, Instant>>> {
    let commits = Arc::new(Mutex::new(HashMap::new()));
    let recorded = commits.clone();
    let previous_head = AtomicU64::new(log.head().0);
    log.on_commit(Box::new(move |head| {
        let now = Instant::now();
        let previous = previous_head.swap(head.0, Ordering::AcqRel);
        let mut recorded = recorded.lock();
        for position in previous + 1..=head.0 {
            recorded.insert(position, now);
        }
    }));
    commits
}

/// Reads the portal's event stream and sends each event's position with its arrival instant.
fn sse_client(address: std::net::SocketAddr, after: Position, arrivals: std::sync::mpsc::Sender<(u64, Instant)>) -> anyhow::Result<()> {
    let mut stream = std::net::TcpStream::connect(address)?;
    write!(stream, "GET /api/events?since={after} HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n\r\n")?;
    for line in BufReader::new(stream).lines() {
        let line = line?;
        // Each SSE event is one HTTP chunk, so an `id:` line is never split.
        if let Some(position) = line.strip_prefix("id: ").and_then(|text| text.trim().parse::<u64>().ok()) {
            if arrivals.send((position, Instant::now())).is_err() {
                return Ok(());
            }
        }
    }
    Ok(())
}

struct LatencyFigures {
    delivered_count: u64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

fn latency_figures(
    commits: &HashMap<u64, Instant>,
    arrivals: &std::sync::mpsc::Receiver<(u64, Instant)>,
    wanted: &std::ops::RangeInclusive<u64>,
) -> anyhow::Result<LatencyFigures> {
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut delivered_count = 0;
    let deadline = Instant::now() + DELIVERY_WAIT;
    let mut seen = std::collections::HashSet::new();
    while seen.len() < (wanted.end() - wanted.start() + 1) as usize {
        let Some(remaining) = deadline.checked_duration_since(Instant::now()) else { break };
        let Ok((position, arrived)) = arrivals.recv_timeout(remaining) else { break };
        if !wanted.contains(&position) || !seen.insert(position) {
            continue;
        }
        let Some(committed) = commits.get(&position) else { continue };
        let latency_us = arrived.saturating_duration_since(*committed).as_micros() as u64;
        histogram.saturating_record(latency_us.max(1));
        delivered_count += 1;
    }
    let ms = |us: u64| us as f64 / 1000.0;
    Ok(LatencyFigures {
        delivered_count,
        p50_ms: ms(histogram.value_at_quantile(0.50)),
        p99_ms: ms(histogram.value_at_quantile(0.99)),
        max_ms: ms(histogram.max()),
    })
}

pub fn run(args: BenchNatsArgs) -> anyhow::Result<ExitCode> {
    let base = match &args.dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            tempfile::tempdir_in(dir)?
        }
        None => tempfile::tempdir_in(".")?,
    };
    let server = match &args.nats {
        Some(_) => None,
        None => Some(NatsServer::start(&base.path().join("nats"))?),
    };
    let url = args.nats.clone().or_else(|| server.as_ref().map(|server| server.url.clone())).context("no NATS server")?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    println!("# berth bench nats: in {}, NATS at {url}", base.path().display());
    println!();
    runtime.block_on(latency(&args, &url, base.path()))?;
    println!();
    runtime.block_on(rate(&args, &url, base.path()))?;
    drop(server);
    Ok(ExitCode::SUCCESS)
}

async fn latency(args: &BenchNatsArgs, url: &str, base: &Path) -> anyhow::Result<()> {
    let log = Arc::new(RocksLog::open(&base.join("latency-log"))?);
    let commits = record_commits(&log);
    let dyn_log: Arc<dyn EventLog> = log.clone();
    let portal_state = PortalState::new(dyn_log.clone(), ViewHandle::fixed(DockerViews::default()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let portal_address = listener.local_addr()?;
    let portal_task = tokio::spawn(async move { axum::serve(listener, portal::router(portal_state)).await });

    berth_nats::bench::delete_stream(url, LATENCY_STREAM).await?;
    let relay = Relay::start(dyn_log.clone(), RelayConfig::new(url, StreamSettings::new(LATENCY_STREAM))).await?;
    let (sse_sender, sse_arrivals) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        if let Err(error) = sse_client(portal_address, Position(0), sse_sender) {
            eprintln!("berth bench: the SSE client stopped: {error:#}");
        }
    });
    let (jetstream_sender, jetstream_arrivals) = std::sync::mpsc::channel();
    let consumer_url = url.to_string();
    // The relay creates the stream; the consumer needs it to exist.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let consumer = tokio::spawn(async move { berth_nats::bench::consume_positions(&consumer_url, LATENCY_STREAM, jetstream_sender).await });
    tokio::time::sleep(Duration::from_millis(300)).await;

    let event_count = (args.rate as f64 * args.seconds).round().max(1.0) as u64;
    let interval = Duration::from_secs_f64(1.0 / args.rate.max(1) as f64);
    let writer_log = log.clone();
    let writer = std::thread::spawn(move || {
        let started = Instant::now();
        for sequence in 0..event_count {
            let due = started + interval.mul_f64(sequence as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            writer_log.submit(event_request(sequence), Box::new(|_| {}));
        }
    });
    writer.join().map_err(|_| anyhow::anyhow!("the bench writer panicked"))?;
    let wanted = 1..=event_count;
    let commits_view = {
        // Wait for the last commit so every wanted position has its instant.
        let deadline = Instant::now() + DELIVERY_WAIT;
        while log.head().0 < event_count && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        commits.lock().clone()
    };
    let (sse, jetstream) = tokio::task::spawn_blocking(move || -> anyhow::Result<(LatencyFigures, LatencyFigures)> {
        Ok((latency_figures(&commits_view, &sse_arrivals, &wanted)?, latency_figures(&commits_view, &jetstream_arrivals, &wanted)?))
    })
    .await??;
    consumer.abort();
    relay.stop().await;
    portal_task.abort();
    berth_nats::bench::delete_stream(url, LATENCY_STREAM).await?;
    log.close();

    println!("## commit-to-delivery latency at {} events/s for {:.0} s ({event_count} events)", args.rate, args.seconds);
    println!();
    println!("| delivered to | events delivered | p50 ms | p99 ms | max ms | goal p99 |");
    println!("|---|---:|---:|---:|---:|---:|");
    println!(
        "| SSE client of the portal | {} | {:.2} | {:.2} | {:.2} | ≤ 20 ms |",
        sse.delivered_count, sse.p50_ms, sse.p99_ms, sse.max_ms
    );
    println!(
        "| JetStream ordered consumer (via the relay) | {} | {:.2} | {:.2} | {:.2} | ≤ 50 ms |",
        jetstream.delivered_count, jetstream.p50_ms, jetstream.p99_ms, jetstream.max_ms
    );
    Ok(())
}

async fn rate(args: &BenchNatsArgs, url: &str, base: &Path) -> anyhow::Result<()> {
    let log = Arc::new(RocksLog::open(&base.join("rate-log"))?);
    let event_count = args.relay_events.max(1) as u64;
    let filler = log.clone();
    tokio::task::spawn_blocking(move || {
        for sequence in 0..event_count {
            filler.submit(event_request(sequence), Box::new(|_| {}));
        }
        while filler.head().0 < event_count {
            filler.wait_for_head(filler.head(), Duration::from_millis(100));
        }
    })
    .await?;
    let dyn_log: Arc<dyn EventLog> = log.clone();
    let reading_log = dyn_log.clone();
    let prepare_started = Instant::now();
    let messages =
        tokio::task::spawn_blocking(move || berth_nats::bench::prepare_messages(reading_log.as_ref(), event_count as usize)).await??;
    // What the relay's reader does alone (read, decode, find the VCH, encode JSON), on one thread.
    let prepare_rate = messages.len() as f64 / prepare_started.elapsed().as_secs_f64();

    let mut rounds = Vec::with_capacity(RATE_ROUND_COUNT);
    for _ in 0..RATE_ROUND_COUNT {
        let raw = berth_nats::bench::raw_publish(url, RAW_STREAM, RAW_SUBJECT_PREFIX, &messages, IN_FLIGHT_COUNT_MAX_DEFAULT).await?;

        berth_nats::bench::delete_stream(url, RELAY_STREAM).await?;
        // A fresh stream starts the relay from position 0 only without an old checkpoint.
        let checkpoint = berth_nats::relay::checkpoint_name(RELAY_STREAM);
        dyn_log.save_checkpoint(&checkpoint, Position(0), &[])?;
        let relay = Relay::start(dyn_log.clone(), RelayConfig::new(url, StreamSettings::new(RELAY_STREAM))).await?;
        let mut status = relay.subscribe();
        // Timed from the first publish, as the raw figure is: connecting and creating the stream are not publishing.
        let _ = status.wait_for(|status| status.state == RelayState::Publishing).await.is_ok();
        let started = Instant::now();
        let published_before = status.borrow().published_position.0;
        // Reduced to a bool at once: the watch guard `wait_for` returns would block the relay's status updates.
        let caught_up =
            tokio::time::timeout(Duration::from_secs(300), status.wait_for(|status| status.published_position.0 >= event_count))
                .await
                .is_ok_and(|result| result.is_ok());
        let relay_time = started.elapsed();
        relay.stop().await;
        if !caught_up {
            bail!("the relay did not publish {event_count} events within 300 s");
        }
        let relay_rate = (event_count - published_before) as f64 / relay_time.as_secs_f64();
        let raw_rate = event_count as f64 / raw.as_secs_f64();
        rounds.push((relay_rate, raw_rate));
    }
    berth_nats::bench::delete_stream(url, RELAY_STREAM).await?;
    log.close();
    println!("## relay rate beside raw JetStream async publish ({} messages, {IN_FLIGHT_COUNT_MAX_DEFAULT} in flight; rounds alternate raw, relay)", messages.len());
    println!();
    println!("| round | relay events/s (log read, encode, publish, acks, checkpoints) | raw async publish messages/s (pre-encoded) | relay / raw | goal |");
    println!("|---|---:|---:|---:|---:|");
    for (index, (relay_rate, raw_rate)) in rounds.iter().enumerate() {
        println!("| {} | {relay_rate:.0} | {raw_rate:.0} | {:.0}% | ≥ 80% |", index + 1, 100.0 * relay_rate / raw_rate);
    }
    let relay_best = rounds.iter().map(|(relay, _)| *relay).fold(0.0, f64::max);
    let raw_best = rounds.iter().map(|(_, raw)| *raw).fold(0.0, f64::max);
    println!("| best of each | {relay_best:.0} | {raw_best:.0} | {:.0}% | ≥ 80% |", 100.0 * relay_best / raw_best);
    println!();
    println!("The relay's log reading and JSON encoding alone, on one thread: {prepare_rate:.0} events/s.");
    Ok(())
}
