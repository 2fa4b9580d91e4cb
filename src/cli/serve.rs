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
use std::future::IntoFuture as _;
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
    /// Where new networks get their subnets, like dockerd's --default-address-pool.
    #[arg(long, default_value = "base=172.18.0.0/15,size=24")]
    pub default_address_pool: String,
    /// The Docker API's unix socket (default: docker.sock in the data directory).
    #[arg(long)]
    pub docker_socket: Option<PathBuf>,
    #[command(flatten)]
    pub portal: super::follow::PortalArgs,
    #[command(flatten)]
    pub nats: super::follow::NatsArgs,
}

pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    if !args.docker_listen.ip().is_loopback() {
        bail!("refusing to serve the Docker API on {} without TLS: berth serves plain HTTP on loopback addresses only", args.docker_listen);
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
    let shutdown = shutdown_signal()?;
    let data_dir = args.data_dir.clone().unwrap_or_else(super::default_data_dir);
    std::fs::create_dir_all(&data_dir).with_context(|| format!("creating the data directory {}", data_dir.display()))?;
    let log_dir = data_dir.join("log");
    let log = Arc::new(RocksLog::open(&log_dir)?);
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let entropy: Arc<dyn Entropy> = Arc::new(OsEntropy);
    let bus = Arc::new(CommandBus::new(log.clone(), clock.clone(), entropy).context("loading the domain model from the log")?);
    bootstrap(&bus, &args.bip).await?;
    let (mut runner, views) = ProjectionRunner::start(log.clone());

    let shim_program = std::env::current_exe().context("finding the berth binary for the runtime shim")?;
    let local = Arc::new(
        crate::local::LocalInfrastructure::open(&data_dir, &shim_program)
            .map_err(anyhow::Error::msg)
            .context("starting the local runtime (berth serve needs root, runc and iproute2)")?,
    );
    let reconciler = Arc::new(berth_engine::Reconciler::new(bus.clone(), local.clone(), berth_engine::ServedVchs::named([DEFAULT_VCH])));
    let reconciler_wake = Arc::new(tokio::sync::Notify::new());
    let exit_wake = reconciler_wake.clone();
    local.on_exit(Arc::new(move || exit_wake.notify_one()));
    let reconciler_task = reconciler.spawn_with_wake(clock.clone(), reconciler_wake);

    let mut state = DockerState::new(views.clone(), log.clone(), DEFAULT_VCH, data_dir.display().to_string());
    state.bus = Some(bus.clone());
    state.images = Some(local.clone());
    state.containers = Some(local.clone());
    let hosts_views = views.clone();
    local.provide_hosts(Arc::new(move |id| hosts_views.read(|views| crate::local_effects::hosts_for(views, id))));
    let effects = crate::local_effects::spawn(state.clone(), local.clone());
    state.address_pool = parse_address_pool(&args.default_address_pool)?;
    let listener = tokio::net::TcpListener::bind(args.docker_listen)
        .await
        .with_context(|| format!("binding the Docker API to {}", args.docker_listen))?;
    let address = listener.local_addr()?;
    println!("berth {}: Docker API listening on tcp://{address} (data in {})", env!("CARGO_PKG_VERSION"), data_dir.display());
    println!("berth: export DOCKER_HOST=tcp://{address}");
    tracing::info!(%address, log_head = %berth_core::log::EventLog::head(log.as_ref()), "serving");

    let socket_path = args.docker_socket.clone().unwrap_or_else(|| data_dir.join("docker.sock"));
    let _ = std::fs::remove_file(&socket_path);
    let unix_listener =
        tokio::net::UnixListener::bind(&socket_path).with_context(|| format!("binding the Docker API socket {}", socket_path.display()))?;
    println!("berth: Docker API listening on unix://{}", socket_path.display());

    let vchs = crate::vch_admin::VchManager::new(bus.clone(), views.clone(), state.clone(), local.clone(), &data_dir)?;
    vchs.start_all().await?;
    let admin_router = berth_api::admin::router(Arc::new(crate::vch_admin::AdminHandle(vchs.clone())));
    let vsphere_metrics: Arc<dyn berth_api::portal::MetricsSource> = Arc::new(crate::vch_admin::VsphereMetrics);
    let live =
        super::follow::start_live(log.clone(), views.clone(), &args.portal, &args.nats, Some(admin_router), vec![vsphere_metrics]).await?;
    let service = docker::service(state);
    let (stop_sender, stop_receiver) = tokio::sync::watch::channel(false);
    let mut unix_stop = stop_receiver.clone();
    let unix_server = tokio::spawn(
        axum::serve(unix_listener, axum::ServiceExt::<axum::extract::Request>::into_make_service(service.clone()))
            .with_graceful_shutdown(async move {
                let _ = unix_stop.wait_for(|stop| *stop).await;
            })
            .into_future(),
    );
    let tcp_server =
        axum::serve(listener, axum::ServiceExt::<axum::extract::Request>::into_make_service(service)).with_graceful_shutdown(async move {
            shutdown.await;
            let _ = stop_sender.send(true);
        });
    tcp_server.await.context("serving the Docker API")?;
    let _ = unix_server.await;
    let _ = std::fs::remove_file(&socket_path);
    live.stop().await;
    vchs.stop_all().await;

    effects.abort();
    reconciler_task.stop().await;
    tracing::info!("shutting down: checkpointing the views and closing the log (containers keep running)");
    runner.stop();
    drop(bus);
    log.close();
    println!("berth: stopped");
    Ok(ExitCode::SUCCESS)
}

/// Parses `base=A.B.C.D/N,size=M`.
fn parse_address_pool(text: &str) -> anyhow::Result<docker::networks::AddressPool> {
    let mut base = None;
    let mut size = None;
    for part in text.split(',') {
        match part.split_once('=') {
            Some(("base", value)) => base = berth_core::model::Ipv4Subnet::parse(value),
            Some(("size", value)) => size = value.parse::<u8>().ok(),
            _ => bail!("--default-address-pool {text:?}: want base=A.B.C.D/N,size=M"),
        }
    }
    match (base, size) {
        (Some(base), Some(size)) if size >= base.prefix_length && size <= 30 => {
            Ok(docker::networks::AddressPool { base, subnet_prefix_length: size })
        }
        _ => bail!("--default-address-pool {text:?}: want base=A.B.C.D/N,size=M with N <= M <= 30"),
    }
}

/// Installs the SIGTERM and SIGINT handlers now (before berth says it
/// listens, so a signal right after that is never the default action) and
/// returns a future that ends on the first of them.
pub(super) fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => {},
            _ = interrupt.recv() => {},
        }
    })
}
