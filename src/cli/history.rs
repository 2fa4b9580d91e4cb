//! `berth replay` and `berth audit`: history from the log, beside a live berth.
//!
//! `replay --until` rebuilds the Docker views as they were at a position or a
//! time and prints them (or serves them as a read-only Docker API); `audit`
//! lists who did what to which object and when.

use anyhow::{bail, Context as _};
use berth_api::docker::{self, DockerState};
use berth_core::StreamKind;
use berth_engine::{audit, replay_until, AuditFilter, Until, ViewHandle};
use berth_log_rocksdb::LogReader;
use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Args)]
pub struct ReplayArgs {
    #[arg(long, env = "BERTH_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// A log position, or a time (RFC 3339, or unix seconds with a leading `@`).
    #[arg(long)]
    until: String,
    /// Print the views as JSON instead of tables.
    #[arg(long)]
    json: bool,
    /// Serve the replayed views as a read-only Docker API on this address.
    #[arg(long)]
    serve: Option<SocketAddr>,
}

#[derive(Args)]
pub struct AuditArgs {
    #[arg(long, env = "BERTH_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Only this actor.
    #[arg(long)]
    actor: Option<String>,
    /// Only this kind of object: vch, container, image, volume, network.
    #[arg(long)]
    kind: Option<String>,
    /// Only objects whose id or name starts with this.
    #[arg(long)]
    id: Option<String>,
    /// Only this event type (e.g. ContainerCreated).
    #[arg(long = "type")]
    event_type: Option<String>,
    /// Only events at or after this time (RFC 3339 or @unix-seconds).
    #[arg(long)]
    since: Option<String>,
    /// Only events at or before this time.
    #[arg(long)]
    until: Option<String>,
    /// The most entries to print.
    #[arg(long, default_value_t = 10_000)]
    limit: usize,
    /// One JSON object per entry.
    #[arg(long)]
    json: bool,
}

fn open(data_dir: Option<PathBuf>) -> anyhow::Result<LogReader> {
    Ok(LogReader::open(&data_dir.unwrap_or_else(super::default_data_dir).join("log"))?)
}

fn parse_time_ms(text: &str) -> anyhow::Result<u64> {
    if let Some(seconds) = text.strip_prefix('@') {
        let seconds: f64 = seconds.parse().with_context(|| format!("bad unix time {text:?}"))?;
        return Ok((seconds * 1000.0) as u64);
    }
    let time = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .with_context(|| format!("{text:?} is neither a position, @unix-seconds nor an RFC 3339 time"))?;
    Ok((time.unix_timestamp_nanos() / 1_000_000).max(0) as u64)
}

fn format_ms(ms: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default()
}

pub fn replay(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let reader = open(args.data_dir.clone())?;
    let until = match args.until.parse::<u64>() {
        Ok(position) => Until::Position(position),
        Err(_) => Until::TimeMs(parse_time_ms(&args.until)?),
    };
    let views = replay_until(&reader, until)?;
    if let Some(address) = args.serve {
        if !address.ip().is_loopback() {
            bail!("refusing to serve on {address} without TLS");
        }
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
        let data_dir = args.data_dir.unwrap_or_else(super::default_data_dir);
        return runtime.block_on(async move {
            let position = views.position;
            let state = DockerState::new(ViewHandle::fixed(views), Arc::new(reader), "default", data_dir.display().to_string());
            let listener = tokio::net::TcpListener::bind(address).await?;
            println!("berth replay: the views at position {position}, read-only, on tcp://{}", listener.local_addr()?);
            axum::serve(listener, axum::ServiceExt::<axum::extract::Request>::into_make_service(docker::service(state)))
                .with_graceful_shutdown(async {
                    let _ = tokio::signal::ctrl_c().await;
                })
                .await?;
            Ok(ExitCode::SUCCESS)
        });
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&views)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("views at position {}", views.position);
    println!("\nCONTAINERS");
    for container in views.containers.values() {
        println!(
            "  {}  {:<24} {:<10} {:<20} exit {}",
            &container.id[..12],
            container.name,
            container.state,
            container.spec.image,
            container.exit_code
        );
    }
    println!("\nIMAGES");
    for image in views.images.values() {
        println!("  {}  {}", &image.id[7..19.min(image.id.len())], image.tags.iter().cloned().collect::<Vec<_>>().join(", "));
    }
    println!("\nVOLUMES");
    for volume in views.volumes.values() {
        println!("  {}", volume.name);
    }
    println!("\nNETWORKS");
    for network in views.networks.values() {
        println!("  {}  {:<16} {:<8} {}", &network.id[..12.min(network.id.len())], network.name, network.driver, network.subnet);
    }
    Ok(ExitCode::SUCCESS)
}

pub fn run_audit(args: AuditArgs) -> anyhow::Result<ExitCode> {
    let reader = open(args.data_dir)?;
    let stream_kind = match &args.kind {
        Some(kind) => {
            Some(StreamKind::parse(kind).with_context(|| format!("unknown kind {kind:?}: want vch, container, image, volume or network"))?)
        }
        None => None,
    };
    let filter = AuditFilter {
        actor: args.actor,
        stream_kind,
        stream_key_prefix: args.id,
        event_type: args.event_type,
        since_ms: args.since.as_deref().map(parse_time_ms).transpose()?,
        until_ms: args.until.as_deref().map(parse_time_ms).transpose()?,
        entry_count_max: args.limit,
    };
    for entry in audit(&reader, &filter)? {
        if args.json {
            println!(
                "{}",
                serde_json::json!({
                    "position": entry.position.0,
                    "time": format_ms(entry.time_ms),
                    "actor": entry.actor,
                    "stream": entry.stream.to_string(),
                    "event": entry.event_type,
                    "summary": entry.summary,
                })
            );
        } else {
            println!(
                "{:>8}  {}  {:<12} {:<40} {}",
                entry.position.0,
                format_ms(entry.time_ms),
                entry.actor,
                entry.stream.to_string(),
                entry.summary
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
