//! `berth follow`: a read-only berth fed from NATS JetStream, and the live
//! side of `berth serve` (the portal listener and the NATS relay), which the
//! two share.
//!
//! A follower appends the relay's stream to a local replica of the log and
//! serves the Docker API's read side and the portal from it; writes are
//! refused by the Docker handlers (no command bus). Its lag behind the leader
//! is in the portal's `/metrics` and in its log lines.

use crate::system::SystemClock;
use anyhow::{bail, Context as _};
use berth_api::docker::{self, DockerState};
use berth_api::portal::metrics::write_gauge;
use berth_api::portal::{self, MetricsSource, PortalState};
use berth_core::log::EventLog;
use berth_core::Clock as _;
use berth_engine::{ProjectionRunner, ViewHandle};
use berth_log_rocksdb::RocksLog;
use berth_nats::follower::FollowerState;
use berth_nats::{Follower, FollowerConfig, FollowerStatus, Relay, RelayConfig, RelayState, RelayStatus, Retention, StreamSettings};
use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// The stream name when `--nats-stream` is not given.
pub const NATS_STREAM_DEFAULT: &str = "berth";
/// How often `berth follow` logs its lag.
const LAG_LOG_INTERVAL: Duration = Duration::from_secs(5);

#[derive(Args, Clone)]
pub struct PortalArgs {
    /// The portal's address: live events (SSE), views and metrics (loopback only until TLS is configured).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub portal_listen: SocketAddr,
    /// The pause between two heartbeat comments on an idle event stream (e.g. 15s, 500ms).
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    pub portal_heartbeat_interval: Duration,
}

#[derive(Args, Clone)]
pub struct NatsArgs {
    /// Publish every committed event to this NATS JetStream server (nats://HOST:PORT[,nats://...]).
    #[arg(long)]
    pub nats: Option<String>,
    /// The JetStream stream's name.
    #[arg(long, default_value = NATS_STREAM_DEFAULT)]
    pub nats_stream: String,
    /// The stream's replica count (1 to 5; more than 1 needs a NATS cluster).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5))]
    pub nats_replicas: u8,
    /// How JetStream drops messages: limits (keep until max age), interest or workqueue.
    #[arg(long, default_value = "limits", value_parser = ["limits", "interest", "workqueue"])]
    pub nats_retention: String,
    /// How long JetStream keeps messages (e.g. 30d); 0 keeps them. A new follower needs the whole history.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub nats_max_age: Duration,
}

impl NatsArgs {
    fn stream_settings(&self) -> anyhow::Result<StreamSettings> {
        let retention = Retention::parse(&self.nats_retention).with_context(|| format!("--nats-retention {:?}", self.nats_retention))?;
        Ok(StreamSettings {
            name: self.nats_stream.clone(),
            replicas: usize::from(self.nats_replicas),
            retention,
            max_age: self.nats_max_age,
        })
    }
}

/// The portal and the relay of a running berth.
pub struct Live {
    relay: Option<Relay>,
    portal: tokio::task::JoinHandle<()>,
}

impl Live {
    /// Stops the relay (checkpointing what NATS acknowledged) and the portal.
    pub async fn stop(self) {
        if let Some(relay) = self.relay {
            relay.stop().await;
        }
        // Event streams never end by themselves, so the portal is not drained.
        self.portal.abort();
    }
}

/// Starts the relay (when `--nats` is given) and the portal for `berth serve`.
/// Starts the relay (with `--nats`) and the portal; `admin` adds the admin
/// API's routes and `metrics` more Prometheus families (only `serve` has them).
pub async fn start_live(
    log: Arc<dyn EventLog>,
    views: ViewHandle,
    portal_args: &PortalArgs,
    nats_args: &NatsArgs,
    admin: Option<axum::Router>,
    metrics: Vec<Arc<dyn MetricsSource>>,
) -> anyhow::Result<Live> {
    let mut portal_state = PortalState::new(log.clone(), views);
    portal_state.heartbeat_interval = portal_args.portal_heartbeat_interval;
    portal_state.metrics.extend(metrics);
    let relay = match &nats_args.nats {
        Some(url) => {
            let settings = nats_args.stream_settings()?;
            let relay = Relay::start(log.clone(), RelayConfig::new(url.clone(), settings.clone()))
                .await
                .with_context(|| format!("starting the NATS relay to {url}"))?;
            match relay.status().state {
                RelayState::Degraded { reason } => {
                    println!("berth: NATS relay degraded ({reason}); berth serves from its own log meanwhile")
                }
                _ => println!(
                    "berth: relaying events to NATS {url}, stream {} ({} replicas, {} retention)",
                    settings.name, settings.replicas, settings.retention
                ),
            }
            portal_state.metrics.push(Arc::new(RelayMetrics { status: relay.subscribe(), log: log.clone() }));
            Some(relay)
        }
        None => {
            println!("berth: NATS relay off (no --nats): events stay in the local log and the portal");
            None
        }
    };
    let (portal, _) = start_portal(portal_args.portal_listen, portal_state, admin).await?;
    Ok(Live { relay, portal })
}

async fn start_portal(
    listen: SocketAddr,
    state: PortalState,
    admin: Option<axum::Router>,
) -> anyhow::Result<(tokio::task::JoinHandle<()>, SocketAddr)> {
    if !listen.ip().is_loopback() {
        bail!("refusing to serve the portal on {listen} without TLS: berth serves plain HTTP on loopback addresses only");
    }
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding the portal to {listen}"))?;
    let address = listener.local_addr()?;
    println!("berth: portal listening on http://{address}");
    let router = match admin {
        Some(admin) => admin.merge(portal::router(state)),
        None => portal::router(state),
    };
    let task = tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, router).await {
            tracing::error!(%error, "the portal stopped");
        }
    });
    Ok((task, address))
}

/// The relay's state as Prometheus gauges.
struct RelayMetrics {
    status: watch::Receiver<RelayStatus>,
    log: Arc<dyn EventLog>,
}

impl MetricsSource for RelayMetrics {
    fn render(&self, out: &mut String) {
        let status = self.status.borrow().clone();
        let up = u8::from(status.state == RelayState::Publishing);
        write_gauge(out, "berth_relay_up", "1 when the NATS relay is publishing, 0 when it is connecting or degraded.", up);
        write_gauge(out, "berth_relay_published_position", "The last log position JetStream acknowledged.", status.published_position.0);
        write_gauge(
            out,
            "berth_relay_lag_events",
            "Committed events not yet acknowledged by JetStream.",
            self.log.head().0.saturating_sub(status.published_position.0),
        );
        write_gauge(out, "berth_relay_stream_sequence", "The JetStream sequence of the last acknowledged event.", status.stream_sequence);
        write_gauge(
            out,
            "berth_relay_duplicate_acks",
            "Replays that JetStream's dedup window answered as duplicates.",
            status.duplicate_count,
        );
        write_gauge(out, "berth_relay_restarts", "Relay sessions that failed and were started again.", status.restart_count);
    }
}

/// A follower's state as Prometheus gauges.
struct FollowerMetrics {
    status: watch::Receiver<FollowerStatus>,
}

fn follower_lag_ms(status: &FollowerStatus, now_ms: u64) -> u64 {
    if status.lag_event_count() == 0 {
        0
    } else {
        now_ms.saturating_sub(status.last_recorded_at_ms)
    }
}

impl MetricsSource for FollowerMetrics {
    fn render(&self, out: &mut String) {
        let status = self.status.borrow().clone();
        let up = u8::from(status.state == FollowerState::Following);
        write_gauge(out, "berth_follower_up", "1 when the follower is reading the stream, 0 when it is connecting or degraded.", up);
        write_gauge(out, "berth_follower_position", "The last position durable in the follower's replica.", status.position.0);
        write_gauge(
            out,
            "berth_follower_leader_position",
            "The leader's last published position, as the stream reports it.",
            status.leader_position.0,
        );
        write_gauge(out, "berth_follower_lag_events", "Events the follower is behind the leader's stream.", status.lag_event_count());
        let lag_seconds = follower_lag_ms(&status, SystemClock.now_ms()) as f64 / 1000.0;
        write_gauge(out, "berth_follower_lag_seconds", "Age of the newest replicated event while behind; 0 when caught up.", lag_seconds);
        write_gauge(out, "berth_follower_restarts", "Follower sessions that failed and were started again.", status.restart_count);
    }
}

#[derive(Args)]
pub struct FollowArgs {
    /// The NATS server the leader's relay publishes to (nats://HOST:PORT[,nats://...]).
    #[arg(long)]
    pub nats: String,
    /// The JetStream stream's name.
    #[arg(long, default_value = NATS_STREAM_DEFAULT)]
    pub nats_stream: String,
    /// Where the follower keeps its replica of the log (default: follower/ in the data directory).
    #[arg(long, env = "BERTH_FOLLOWER_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// The read-only Docker API's TCP address (loopback only until TLS is configured; on the leader's machine pick another port).
    #[arg(long, default_value = "127.0.0.1:2375")]
    pub docker_listen: SocketAddr,
    #[command(flatten)]
    pub portal: PortalArgs,
}

pub fn run(args: FollowArgs) -> anyhow::Result<ExitCode> {
    if !args.docker_listen.ip().is_loopback() {
        bail!("refusing to serve the Docker API on {} without TLS: berth serves plain HTTP on loopback addresses only", args.docker_listen);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")?;
    runtime.block_on(follow(args))
}

async fn follow(args: FollowArgs) -> anyhow::Result<ExitCode> {
    // Installed before the follower says it listens, as in `serve`.
    let shutdown = super::serve::shutdown_signal()?;
    let data_dir = args.data_dir.clone().unwrap_or_else(|| super::default_data_dir().join("follower"));
    std::fs::create_dir_all(&data_dir).with_context(|| format!("creating the data directory {}", data_dir.display()))?;
    let log = Arc::new(RocksLog::open(&data_dir.join("log"))?);
    let config = FollowerConfig { server_url: args.nats.clone(), stream_name: args.nats_stream.clone() };
    let follower = Follower::start(log.clone(), config).await.with_context(|| format!("following NATS {}", args.nats))?;
    let (mut runner, views) = ProjectionRunner::start(log.clone());

    let mut portal_state = PortalState::new(log.clone(), views.clone());
    portal_state.heartbeat_interval = args.portal.portal_heartbeat_interval;
    portal_state.metrics.push(Arc::new(FollowerMetrics { status: follower.subscribe() }));
    let (portal, _) = start_portal(args.portal.portal_listen, portal_state, None).await?;

    // No bus: every Docker handler that writes answers that this is a read-only follower.
    let mut state = DockerState::new(views, log.clone(), super::serve::DEFAULT_VCH, data_dir.display().to_string());
    let info_status = follower.subscribe();
    state.status = Some(Arc::new(move || {
        let status = info_status.borrow().clone();
        vec![
            ("role".to_string(), "follower".to_string()),
            ("follower.state".to_string(), format!("{:?}", status.state)),
            ("follower.position".to_string(), status.position.0.to_string()),
            ("follower.leader_position".to_string(), status.leader_position.0.to_string()),
            ("follower.lag_events".to_string(), status.lag_event_count().to_string()),
            ("follower.lag_ms".to_string(), follower_lag_ms(&status, SystemClock.now_ms()).to_string()),
        ]
    }));
    let listener = tokio::net::TcpListener::bind(args.docker_listen)
        .await
        .with_context(|| format!("binding the Docker API to {}", args.docker_listen))?;
    let address = listener.local_addr()?;
    println!("berth {}: read-only follower of NATS {} stream {}", env!("CARGO_PKG_VERSION"), args.nats, args.nats_stream);
    println!("berth {}: Docker API listening on tcp://{address} (data in {})", env!("CARGO_PKG_VERSION"), data_dir.display());
    let lag_logger = tokio::spawn(log_lag(follower.subscribe()));

    let service = docker::service(state);
    axum::serve(listener, axum::ServiceExt::<axum::extract::Request>::into_make_service(service))
        .with_graceful_shutdown(shutdown)
        .await
        .context("serving the Docker API")?;

    lag_logger.abort();
    portal.abort();
    follower.stop().await;
    runner.stop();
    log.close();
    println!("berth: stopped");
    Ok(ExitCode::SUCCESS)
}

/// Logs the follower's lag and state whenever they changed since the last line.
async fn log_lag(status: watch::Receiver<FollowerStatus>) {
    let mut ticker = tokio::time::interval(LAG_LOG_INTERVAL);
    let mut last_logged: Option<FollowerStatus> = None;
    loop {
        ticker.tick().await;
        let current = status.borrow().clone();
        if last_logged.as_ref() == Some(&current) {
            continue;
        }
        let lag_ms = follower_lag_ms(&current, SystemClock.now_ms());
        match &current.state {
            FollowerState::Degraded { reason } => tracing::warn!(%reason, position = current.position.0, "follower degraded"),
            state => tracing::info!(
                ?state,
                position = current.position.0,
                leader_position = current.leader_position.0,
                lag_events = current.lag_event_count(),
                lag_ms,
                "follower lag"
            ),
        }
        last_logged = Some(current);
    }
}
