//! `berth serve`: the composition root of a running berth.

use crate::system::{OsEntropy, SystemClock};
use anyhow::{bail, Context as _};
use berth_api::docker::{self, DockerState};
use berth_core::events::VchSpec;
use berth_core::{Clock, Command, CommandEnvelope, CommandId, Entropy};
use berth_engine::{CommandBus, ProjectionRunner};
use berth_log_rocksdb::RocksLog;
use clap::Args;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

/// The name of the VCH that `berth serve` runs on the local runtime.
pub const DEFAULT_VCH: &str = "default";

#[derive(Args)]
pub struct ServeArgs {
    /// Where berth keeps its log and data.
    #[arg(long, env = "BERTH_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// The Docker API's TCP address (loopback only until TLS is configured).
    #[arg(long, default_value = "127.0.0.1:2375")]
    pub docker_listen: SocketAddr,
    /// The default bridge network's gateway and prefix, like dockerd's --bip.
    #[arg(long, default_value = "172.31.0.1/16")]
    pub bip: String,
}

pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    if !args.docker_listen.ip().is_loopback() {
        bail!(
            "refusing to serve the Docker API on {} without TLS: berth serves plain HTTP on loopback addresses only",
            args.docker_listen
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")?;
    runtime.block_on(serve(args))
}

async fn bootstrap(bus: &CommandBus, bip: &str) -> anyhow::Result<()> {
    let (gateway, prefix) = bip.split_once('/').with_context(|| format!("--bip {bip:?} must be ADDRESS/PREFIX"))?;
    let gateway_value = berth_core::model::parse_ipv4(gateway).with_context(|| format!("--bip {bip:?}: bad address"))?;
    let prefix_length: u32 = prefix.parse().with_context(|| format!("--bip {bip:?}: bad prefix"))?;
    if !(8..=30).contains(&prefix_length) {
        bail!("--bip {bip:?}: the prefix must be 8 to 30");
    }
    let subnet = format!("{}/{prefix_length}", berth_core::model::format_ipv4(gateway_value & (u32::MAX << (32 - prefix_length))));
    let vch = Command::CreateVch { name: DEFAULT_VCH.into(), spec: VchSpec { target: "local".into(), ..VchSpec::default() } };
    let mut commands = vec![("bootstrap/vch/default".to_string(), vch)];
    for (name, driver) in [("bridge", "bridge"), ("host", "host"), ("none", "null")] {
        let exists = bus.with_model(|model| model.network_names.contains_key(name));
        if exists {
            continue;
        }
        let (subnet, gateway) = if driver == "bridge" { (subnet.clone(), gateway.to_string()) } else { (String::new(), String::new()) };
        let command = Command::CreateNetwork {
            id: bus.entropy().hex_id(),
            name: name.into(),
            driver: driver.into(),
            subnet,
            gateway,
            internal: false,
            labels: BTreeMap::new(),
        };
        commands.push((format!("bootstrap/network/{name}"), command));
    }
    for (command_id, command) in commands {
        let envelope = CommandEnvelope::new("berth", command).with_id(CommandId(command_id.clone()));
        match bus.execute(envelope).await {
            Ok(_) | Err(berth_engine::CommandError::Rejected(berth_core::Rejection::AlreadyExists { .. })) => {}
            Err(error) => return Err(error).with_context(|| format!("bootstrapping ({command_id})")),
        }
    }
    Ok(())
}

async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let data_dir = args.data_dir.clone().unwrap_or_else(super::default_data_dir);
    std::fs::create_dir_all(&data_dir).with_context(|| format!("creating the data directory {}", data_dir.display()))?;
    let log_dir = data_dir.join("log");
    let log = Arc::new(RocksLog::open(&log_dir)?);
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let entropy: Arc<dyn Entropy> = Arc::new(OsEntropy);
    let bus = Arc::new(CommandBus::new(log.clone(), clock.clone(), entropy).context("loading the domain model from the log")?);
    bootstrap(&bus, &args.bip).await?;
    let (mut runner, views) = ProjectionRunner::start(log.clone());

    let state = DockerState {
        bus: Some(bus.clone()),
        views: views.clone(),
        vch: DEFAULT_VCH.into(),
        started_at_ms: clock.now_ms(),
        data_dir: data_dir.display().to_string(),
    };
    let listener = tokio::net::TcpListener::bind(args.docker_listen)
        .await
        .with_context(|| format!("binding the Docker API to {}", args.docker_listen))?;
    let address = listener.local_addr()?;
    println!("berth {}: Docker API listening on tcp://{address} (data in {})", env!("CARGO_PKG_VERSION"), data_dir.display());
    println!("berth: export DOCKER_HOST=tcp://{address}");
    tracing::info!(%address, log_head = %berth_core::log::EventLog::head(log.as_ref()), "serving");

    let service = docker::service(state);
    axum::serve(listener, axum::ServiceExt::<axum::extract::Request>::into_make_service(service))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("serving the Docker API")?;

    tracing::info!("shutting down: checkpointing the views and closing the log");
    runner.stop();
    drop(bus);
    log.close();
    println!("berth: stopped");
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    let mut interrupt = signal(SignalKind::interrupt()).expect("installing the SIGINT handler");
    tokio::select! {
        _ = terminate.recv() => {},
        _ = interrupt.recv() => {},
    }
}
