//! vSphere VCHs of a running `berth serve`: the admin API's implementation
//! (validate against the target, record the command, enact) and the runtime
//! of each VCH: its vSphere adapter, its reconciler and its own Docker API
//! listener.
//!
//! The log holds each VCH's spec; its password never enters the log (an
//! auditor replays the log). It is kept with a copy of the spec in
//! `<data dir>/vchs/<name>.json` (mode 0600, fsynced before the VCH is
//! recorded). The file outlives a `VchDeleted` until the VCH's objects are
//! gone from vSphere, so a berth killed in the middle of a delete finishes
//! the cleanup after a restart.

use crate::system::SystemClock;
use anyhow::Context as _;
use berth_api::admin::{AdminError, VchAdmin, VchConfigureRequest, VchCreateRequest, VchInfo};
use berth_api::docker::{self, DockerState};
use berth_core::events::VchSpec;
use berth_core::{Clock, Command, CommandEnvelope, Rejection};
use berth_engine::reconciler::ReconcilerTask;
use berth_engine::{CommandBus, CommandError, Reconciler, ServedVchs, ViewHandle};
use berth_vsphere::infrastructure::{ImageSource, VsphereInfrastructure};
use berth_vsphere::placement;
use berth_vsphere::{ConnectOptions, VimClient, VimError};
use futures_util::future::BoxFuture;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::future::IntoFuture as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Reconcile actions of one vSphere VCH run at once (each waits on vSphere).
pub const VSPHERE_RECONCILE_PARALLELISM: usize = 16;
/// The prefix length of a vSphere VCH's own bridge network (4,094 addresses).
pub const VCH_BRIDGE_PREFIX_LENGTH: u8 = 20;
/// How long `create` waits for the VCH's objects to exist, and `delete` for them to go.
pub const ENACT_WAIT: Duration = Duration::from_secs(120);
/// The actor of the admin API's commands.
const ADMIN_ACTOR: &str = "admin";

/// What `<data dir>/vchs/<name>.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct VchSecret {
    spec: VchSpec,
    password: String,
    /// The VCH's Docker API certificate, key and client CA (absent: plain HTTP).
    #[serde(default)]
    tls: Option<crate::tls::TlsMaterial>,
}

/// One served vSphere VCH.
struct RunningVch {
    infrastructure: Arc<VsphereInfrastructure>,
    reconciler: Arc<Reconciler>,
    reconciler_task: ReconcilerTask,
    /// Stops the thread that watches vSphere for changes of the VCH's VMs.
    watch_stop: Arc<std::sync::atomic::AtomicBool>,
    /// Stops the VCH's Docker API listener (absent for a VCH being cleaned up).
    listener_stop: Option<tokio::sync::watch::Sender<bool>>,
}

/// The admin API's implementation and the VCHs' runtimes.
pub struct VchManager {
    bus: Arc<CommandBus>,
    views: ViewHandle,
    /// The embedded VCH's Docker state, cloned (with another VCH name and no
    /// local container port) for each vSphere VCH's endpoint.
    docker_template: DockerState,
    secrets_dir: PathBuf,
    /// Where image disks for vSphere are built, and the images they are built from.
    image_work_dir: PathBuf,
    images: Arc<dyn ImageSource>,
    running: Mutex<BTreeMap<String, RunningVch>>,
    /// Serialises admin operations: one create/configure/delete at a time.
    operation: tokio::sync::Mutex<()>,
}

fn connect_options(spec: &VchSpec, password: &str) -> ConnectOptions {
    let mut options = ConnectOptions::new(&spec.target, spec.user.as_deref().unwrap_or_default(), password);
    options.thumbprint = spec.thumbprint.clone();
    options.request_timeout = Duration::from_secs(30);
    options.task_timeout = Duration::from_secs(300);
    options
}

/// A client error as the admin API answers it.
fn target_error(target: &str, error: VimError) -> AdminError {
    use axum::http::StatusCode;
    match error {
        VimError::InvalidUrl { .. } | VimError::Thumbprint(_) => AdminError::bad_request(error.to_string()),
        VimError::InvalidLogin { .. } => AdminError::new(StatusCode::UNAUTHORIZED, format!("{target}: {error}")),
        VimError::Unreachable { .. } | VimError::ThumbprintMismatch { .. } | VimError::UntrustedCertificate { .. } => {
            AdminError::new(StatusCode::BAD_GATEWAY, error.to_string())
        }
        other => AdminError::new(StatusCode::BAD_GATEWAY, format!("{target}: {other}")),
    }
}

fn command_error(error: CommandError) -> AdminError {
    match error {
        CommandError::Rejected(rejection) => match rejection {
            Rejection::NotFound { .. } => AdminError::not_found(rejection.to_string()),
            Rejection::AlreadyExists { .. } | Rejection::NameInUse { .. } | Rejection::InUse { .. } | Rejection::WrongState { .. } => {
                AdminError::conflict(rejection.to_string())
            }
            other => AdminError::bad_request(other.to_string()),
        },
        other => AdminError::internal(other.to_string()),
    }
}

/// Checks the target: log in and resolve every named object of `spec`.
/// Blocking (vSphere calls); run it off the async runtime.
fn validate_against_target(name: &str, spec: &VchSpec, password: &str) -> Result<(), AdminError> {
    let client = VimClient::connect(&connect_options(spec, password)).map_err(|error| target_error(&spec.target, error))?;
    let result = (|| {
        let inventory = client.inventory().map_err(|error| target_error(&spec.target, error))?;
        placement::resolve(&inventory, name, spec).map_err(|error| AdminError::bad_request(error.to_string()))?;
        // A VM of this name that berth did not make would block the endpoint VM.
        if let Some(vm) = inventory.virtual_machine_named(name) {
            let ours = vm.extra_config.get(berth_vsphere::infrastructure::KEY_VCH).map(String::as_str) == Some(name);
            if !ours {
                return Err(AdminError::conflict(format!("the target already has a VM named {name:?} that is not a berth VCH's")));
            }
        }
        Ok(())
    })();
    let _ = client.logout();
    result
}

fn parse_docker_listen(text: Option<&str>, tls: bool) -> Result<SocketAddr, AdminError> {
    let text = text.map(str::trim).filter(|text| !text.is_empty()).unwrap_or("127.0.0.1:0");
    let address: SocketAddr =
        text.parse().map_err(|_| AdminError::bad_request(format!("--docker-listen {text:?}: want HOST:PORT with an IP address")))?;
    if !address.ip().is_loopback() && !tls {
        return Err(AdminError::bad_request(format!(
            "--docker-listen {address}: without TLS berth serves a VCH's Docker API on loopback addresses only; pass --tls-server-cert and --tls-server-key"
        )));
    }
    Ok(address)
}

impl VchManager {
    pub fn new(
        bus: Arc<CommandBus>,
        views: ViewHandle,
        docker_template: DockerState,
        images: Arc<dyn ImageSource>,
        data_dir: &Path,
    ) -> anyhow::Result<Arc<VchManager>> {
        let secrets_dir = data_dir.join("vchs");
        std::fs::create_dir_all(&secrets_dir).with_context(|| format!("creating {}", secrets_dir.display()))?;
        set_mode(&secrets_dir, 0o700)?;
        Ok(Arc::new(VchManager {
            bus,
            views,
            docker_template,
            secrets_dir,
            image_work_dir: data_dir.join("vsphere-images"),
            images,
            running: Mutex::new(BTreeMap::new()),
            operation: tokio::sync::Mutex::new(()),
        }))
    }

    fn secret_path(&self, name: &str) -> PathBuf {
        self.secrets_dir.join(format!("{name}.json"))
    }

    fn read_secret(&self, name: &str) -> Option<VchSecret> {
        let text = std::fs::read(self.secret_path(name)).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Writes the file durably (temp file, fsync, rename, fsync the directory).
    fn write_secret(&self, name: &str, secret: &VchSecret) -> Result<(), AdminError> {
        let write = || -> std::io::Result<()> {
            let path = self.secret_path(name);
            let temporary = self.secrets_dir.join(format!(".{name}.json.tmp"));
            let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).open(&temporary)?;
            set_mode(&temporary, 0o600).map_err(std::io::Error::other)?;
            file.write_all(&serde_json::to_vec_pretty(secret).map_err(std::io::Error::other)?)?;
            file.sync_all()?;
            std::fs::rename(&temporary, &path)?;
            std::fs::File::open(&self.secrets_dir)?.sync_all()
        };
        write().map_err(|error| AdminError::internal(format!("keeping the VCH's credentials: {error}")))
    }

    fn remove_secret(&self, name: &str) {
        let _ = std::fs::remove_file(self.secret_path(name));
        if let Ok(directory) = std::fs::File::open(&self.secrets_dir) {
            let _ = directory.sync_all();
        }
    }

    /// After a restart: serves every vSphere VCH of the log, and finishes
    /// the cleanup of VCHs deleted before their objects were gone.
    pub async fn start_all(self: &Arc<Self>) -> anyhow::Result<()> {
        let vchs: Vec<(String, VchSpec)> = self
            .bus
            .with_model(|model| model.vchs.values().filter(|vch| !vch.spec.is_local()).map(|v| (v.name.clone(), v.spec.clone())).collect());
        for (name, spec) in &vchs {
            match self.read_secret(name) {
                Some(secret) => {
                    if let Err(error) = self.start_vch(name, spec, &secret.password, secret.tls.as_ref(), true).await {
                        tracing::error!(vch = %name, error = %error.message, "cannot serve the VCH");
                    }
                }
                None => {
                    tracing::error!(vch = %name, "no credentials for this VCH in {}: run `berth vch configure --name {name} --password ...`", self.secrets_dir.display())
                }
            }
        }
        let leftovers: Vec<String> = std::fs::read_dir(&self.secrets_dir)?
            .filter_map(|entry| entry.ok()?.file_name().to_str()?.strip_suffix(".json").map(str::to_string))
            .filter(|name| !name.starts_with('.') && !vchs.iter().any(|(known, _)| known == name))
            .collect();
        for name in leftovers {
            if let Some(secret) = self.read_secret(&name) {
                tracing::info!(vch = %name, "finishing the removal of a deleted VCH's objects");
                self.start_vch(&name, &secret.spec, &secret.password, None, false).await.ok();
                let manager = self.clone();
                tokio::spawn(async move {
                    if manager.wait_removed(&name, Duration::from_secs(24 * 3600)).await {
                        manager.stop_vch(&name).await;
                        manager.remove_secret(&name);
                    }
                });
            }
        }
        Ok(())
    }

    /// Starts the VCH's adapter and reconciler, and its Docker API when `serve_docker`.
    async fn start_vch(
        &self,
        name: &str,
        spec: &VchSpec,
        password: &str,
        tls: Option<&crate::tls::TlsMaterial>,
        serve_docker: bool,
    ) -> Result<Option<SocketAddr>, AdminError> {
        let infrastructure = Arc::new(
            VsphereInfrastructure::new(name, connect_options(spec, password), env!("CARGO_PKG_VERSION"))
                .with_images(self.images.clone(), self.image_work_dir.clone()),
        );
        let reconciler = Arc::new(
            Reconciler::with_actor(self.bus.clone(), infrastructure.clone(), ServedVchs::named([name]), format!("vsphere/{name}"))
                .with_parallelism(VSPHERE_RECONCILE_PARALLELISM),
        );
        let mut listener_stop = None;
        let mut address = None;
        if serve_docker {
            let tls_config = tls
                .map(crate::tls::server_config)
                .transpose()
                .map_err(|error| AdminError::bad_request(format!("VCH {name}'s TLS material: {error:#}")))?;
            let wanted = parse_docker_listen(spec.docker_listen.as_deref(), tls_config.is_some())?;
            let listener = tokio::net::TcpListener::bind(wanted)
                .await
                .map_err(|error| AdminError::conflict(format!("binding VCH {name}'s Docker API to {wanted}: {error}")))?;
            address = Some(listener.local_addr().map_err(|error| AdminError::internal(error.to_string()))?);
            let mut state = self.docker_template.clone();
            state.vch = name.to_string();
            state.containers = None;
            state.no_runtime_reason = Some(format!(
                "VCH {name}'s containers are vSphere VMs without a tether (berth has none yet): logs, attach, exec, top, stats, cp, diff and export are not available"
            ));
            state.exec_sessions = Default::default();
            let (stop, mut stopped) = tokio::sync::watch::channel(false);
            let service = docker::service(state);
            let shutdown = async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            };
            match tls_config {
                Some(config) => {
                    tokio::spawn(crate::tls::serve(listener, config, service, shutdown));
                }
                None => {
                    tokio::spawn(
                        axum::serve(listener, axum::ServiceExt::<axum::extract::Request>::into_make_service(service))
                            .with_graceful_shutdown(shutdown)
                            .into_future(),
                    );
                }
            }
            listener_stop = Some(stop);
        }
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let wake = Arc::new(tokio::sync::Notify::new());
        let reconciler_task = reconciler.clone().spawn_with_wake(clock, wake.clone());
        let watch_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        {
            let (infrastructure, stop) = (infrastructure.clone(), watch_stop.clone());
            std::thread::Builder::new()
                .name(format!("vsphere-watch-{name}"))
                .spawn(move || infrastructure.watch(&stop, &|| wake.notify_one()))
                .map_err(|error| AdminError::internal(format!("starting the vSphere watch: {error}")))?;
        }
        self.running.lock().insert(name.to_string(), RunningVch { infrastructure, reconciler, reconciler_task, watch_stop, listener_stop });
        Ok(address)
    }

    async fn stop_vch(&self, name: &str) {
        let running = self.running.lock().remove(name);
        if let Some(running) = running {
            if let Some(stop) = running.listener_stop {
                let _ = stop.send(true);
            }
            running.watch_stop.store(true, std::sync::atomic::Ordering::Relaxed);
            running.reconciler_task.stop().await;
        }
    }

    /// Stops every VCH's listener and reconciler (berth is shutting down).
    pub async fn stop_all(&self) {
        let names: Vec<String> = self.running.lock().keys().cloned().collect();
        for name in names {
            self.stop_vch(&name).await;
        }
    }

    /// Waits until the VCH's reconciler has enacted its objects (or `timeout`).
    async fn wait_enacted(&self, name: &str, timeout: Duration) -> Result<(), AdminError> {
        let deadline = Instant::now() + timeout;
        loop {
            let enacted = self.running.lock().get(name).map(|running| running.infrastructure.is_enacted()).unwrap_or(false);
            if enacted {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let last_error = self.views.read(|views| views.vchs.get(name).and_then(|vch| vch.last_error.clone()));
                return Err(AdminError::new(
                    axum::http::StatusCode::GATEWAY_TIMEOUT,
                    format!(
                        "VCH {name} is recorded but its objects are not in vSphere yet ({}); berth keeps trying",
                        last_error.unwrap_or_else(|| "no error so far".to_string())
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the VCH's reconciler has removed its objects after a delete.
    async fn wait_removed(&self, name: &str, timeout: Duration) -> bool {
        let target = self.bus.log().head();
        let deadline = Instant::now() + timeout;
        loop {
            let done = self.running.lock().get(name).map(|running| {
                running.reconciler.with_desired(|desired| desired.position() >= target && !desired.removed_vchs().contains(name))
            });
            if done != Some(false) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn info(&self, name: &str) -> Option<VchInfo> {
        self.views.read(|views| {
            let vch = views.vchs.get(name)?;
            let spec = &vch.spec;
            let containers = views.containers.values().filter(|c| c.vch == name);
            let container_count = containers.clone().count() as u64;
            let running_count = containers.filter(|c| c.state == "running" || c.state == "paused").count() as u64;
            let docker_host = if spec.is_local() { None } else { spec.docker_listen.as_ref().map(|address| format!("tcp://{address}")) };
            Some(VchInfo {
                name: name.to_string(),
                target: spec.target.clone(),
                user: spec.user.clone(),
                thumbprint: spec.thumbprint.clone(),
                compute_resource: spec.compute_resource.clone(),
                image_store: spec.image_store.clone(),
                volume_stores: spec.volume_stores.clone(),
                bridge_network: spec.bridge_network.clone(),
                public_network: spec.public_network.clone(),
                client_network: spec.client_network.clone(),
                management_network: spec.management_network.clone(),
                container_networks: spec.container_networks.clone(),
                memory_mib: spec.memory_mib_max,
                cpu_mhz: spec.cpu_mhz_max,
                containers_max: spec.container_count_max,
                version: spec.version.clone(),
                docker_host,
                docker_tls: spec.docker_tls.clone(),
                container_count,
                running_count,
                last_error: vch.last_error.clone(),
                drift_count: vch.drift_count,
                last_drift: vch.last_drift.clone(),
                created: berth_api::docker::rfc3339_ms(vch.created_ms),
            })
        })
    }

    async fn execute(&self, command: Command) -> Result<(), AdminError> {
        let outcome = self.bus.execute(CommandEnvelope::new(ADMIN_ACTOR, command)).await.map_err(command_error)?;
        if !self.views.wait_for(outcome.position, Duration::from_secs(10)).await {
            return Err(AdminError::internal("the views did not catch up in time"));
        }
        Ok(())
    }

    async fn create_vch(self: Arc<Self>, request: VchCreateRequest) -> Result<VchInfo, AdminError> {
        let _operation = self.operation.lock().await;
        let name = request.name.trim().to_string();
        if name.is_empty() {
            return Err(AdminError::bad_request("--name is required"));
        }
        if name == berth_engine::vch::DEFAULT_VCH {
            return Err(AdminError::conflict(format!("{name:?} is the embedded VCH of berth serve")));
        }
        if self.views.read(|views| views.vchs.contains_key(&name)) {
            return Err(AdminError::conflict(format!("VCH {name:?} already exists")));
        }
        if request.target.trim().is_empty() || request.target.trim() == "local" {
            return Err(AdminError::bad_request("--target is required: the vCenter or ESX URL"));
        }
        if request.user.trim().is_empty() {
            return Err(AdminError::bad_request("--user is required"));
        }
        if request.password.is_empty() {
            return Err(AdminError::bad_request("--password is required"));
        }
        let tls = match (&request.tls_server_cert_pem, &request.tls_server_key_pem, &request.tls_ca_pem) {
            (None, None, None) => None,
            (Some(cert), Some(key), ca) => {
                Some(crate::tls::TlsMaterial { server_cert_pem: cert.clone(), server_key_pem: key.clone(), client_ca_pem: ca.clone() })
            }
            (None, None, Some(_)) => return Err(AdminError::bad_request("--tls-ca needs --tls-server-cert and --tls-server-key")),
            _ => return Err(AdminError::bad_request("pass both --tls-server-cert and --tls-server-key, or neither")),
        };
        if let Some(material) = &tls {
            crate::tls::server_config(material).map_err(|error| AdminError::bad_request(format!("{error:#}")))?;
        }
        let docker_listen = parse_docker_listen(request.docker_listen.as_deref(), tls.is_some())?;
        let mut spec = VchSpec {
            target: request.target.trim().to_string(),
            compute_resource: request.compute_resource.clone(),
            image_store: request.image_store.clone(),
            volume_stores: request.volume_stores.clone(),
            bridge_network: request.bridge_network.clone(),
            public_network: request.public_network.clone(),
            container_networks: request.container_networks.clone(),
            container_count_max: request.containers.unwrap_or(0),
            memory_mib_max: request.memory_mib.unwrap_or(0),
            cpu_mhz_max: request.cpu_mhz.unwrap_or(0),
            user: Some(request.user.trim().to_string()),
            thumbprint: request.thumbprint.clone().filter(|thumbprint| !thumbprint.trim().is_empty()),
            client_network: request.client_network.clone(),
            management_network: request.management_network.clone(),
            docker_listen: Some(docker_listen.to_string()),
            version: Some(env!("CARGO_PKG_VERSION").to_string()),
            docker_tls: tls.as_ref().map(|material| material.mode().to_string()),
        };
        {
            let (name, spec, password) = (name.clone(), spec.clone(), request.password.clone());
            tokio::task::spawn_blocking(move || validate_against_target(&name, &spec, &password))
                .await
                .map_err(|error| AdminError::internal(error.to_string()))??;
        }
        // Pick the listener's port now, so the log records the address clients use.
        if docker_listen.port() == 0 {
            let probe = std::net::TcpListener::bind(docker_listen)
                .map_err(|error| AdminError::conflict(format!("binding the Docker API to {docker_listen}: {error}")))?;
            spec.docker_listen = Some(probe.local_addr().map_err(|error| AdminError::internal(error.to_string()))?.to_string());
        }
        let aliases = container_network_aliases(&spec.container_networks);
        let taken: Vec<String> = self.views.read(|views| {
            aliases
                .iter()
                .filter(|(_, alias)| views.networks.values().any(|network| &network.name == alias))
                .map(|(_, alias)| alias.clone())
                .collect()
        });
        if let Some(alias) = taken.first() {
            return Err(AdminError::conflict(format!("--container-network alias {alias:?} is already the name of a Docker network")));
        }
        self.write_secret(&name, &VchSecret { spec: spec.clone(), password: request.password.clone(), tls: tls.clone() })?;
        if let Err(error) = self.execute(Command::CreateVch { name: name.clone(), spec: spec.clone() }).await {
            self.remove_secret(&name);
            return Err(error);
        }
        self.create_bridge_network(&name).await?;
        self.create_container_networks(&name, &aliases).await?;
        self.start_vch(&name, &spec, &request.password, tls.as_ref(), true).await?;
        self.wait_enacted(&name, ENACT_WAIT).await?;
        self.info(&name).ok_or_else(|| AdminError::internal("the VCH vanished"))
    }

    /// Gives the VCH its own bridge network (a /20 of the address pool, or the
    /// pool's usual size when no /20 is free), so that its containers'
    /// addresses neither come from nor crowd the embedded VCH's `bridge`.
    async fn create_bridge_network(&self, vch: &str) -> Result<(), AdminError> {
        let name = format!("{vch}-bridge");
        if self.views.read(|views| views.networks.values().any(|network| network.name == name)) {
            return Ok(());
        }
        let pool = self.docker_template.address_pool;
        let wide =
            docker::networks::AddressPool { base: pool.base, subnet_prefix_length: VCH_BRIDGE_PREFIX_LENGTH.max(pool.base.prefix_length) };
        let subnet = self
            .views
            .read(|views| docker::networks::allocate_subnet(wide, views).or_else(|| docker::networks::allocate_subnet(pool, views)));
        let (subnet, gateway) = subnet.ok_or_else(|| {
            AdminError::conflict("the address pool (--default-address-pool) has no free subnet for the VCH's bridge network")
        })?;
        let labels = BTreeMap::from([
            (berth_core::model::LABEL_VCH.to_string(), vch.to_string()),
            (berth_core::model::LABEL_DEFAULT_BRIDGE.to_string(), "true".to_string()),
        ]);
        self.execute(Command::CreateNetwork {
            id: self.bus.entropy().hex_id(),
            name,
            driver: "bridge".to_string(),
            subnet,
            gateway,
            internal: false,
            labels,
        })
        .await
    }

    /// Offers each container network to Docker users as a network named by its alias.
    async fn create_container_networks(&self, vch: &str, aliases: &[(String, String)]) -> Result<(), AdminError> {
        for (port_group, alias) in aliases {
            let exists = self.views.read(|views| views.networks.values().any(|network| &network.name == alias));
            if exists {
                continue;
            }
            let labels = BTreeMap::from([
                (berth_core::model::LABEL_VCH.to_string(), vch.to_string()),
                (berth_core::model::LABEL_PORT_GROUP.to_string(), port_group.clone()),
            ]);
            self.execute(Command::CreateNetwork {
                id: self.bus.entropy().hex_id(),
                name: alias.clone(),
                driver: berth_core::model::EXTERNAL_NETWORK_DRIVER.to_string(),
                subnet: String::new(),
                gateway: String::new(),
                internal: false,
                labels,
            })
            .await?;
        }
        Ok(())
    }

    async fn configure_vch(self: Arc<Self>, name: String, request: VchConfigureRequest) -> Result<VchInfo, AdminError> {
        let _operation = self.operation.lock().await;
        let current = self.views.read(|views| views.vchs.get(&name).map(|vch| vch.spec.clone()));
        let current = current.ok_or_else(|| AdminError::not_found(format!("no such VCH: {name}")))?;
        if current.is_local() {
            return Err(AdminError::bad_request(format!("{name:?} is the embedded VCH of berth serve; it has nothing to configure here")));
        }
        let secret = self.read_secret(&name);
        let tls = secret.as_ref().and_then(|secret| secret.tls.clone());
        let password = request
            .password
            .clone()
            .or_else(|| secret.map(|secret| secret.password))
            .ok_or_else(|| AdminError::bad_request(format!("berth has no password for VCH {name}: pass --password")))?;
        let mut spec = current.clone();
        if let Some(user) = &request.user {
            spec.user = Some(user.trim().to_string());
        }
        if let Some(thumbprint) = &request.thumbprint {
            spec.thumbprint = Some(thumbprint.trim().to_string()).filter(|thumbprint| !thumbprint.is_empty());
        }
        if let Some(memory) = request.memory_mib {
            spec.memory_mib_max = memory;
        }
        if let Some(cpu) = request.cpu_mhz {
            spec.cpu_mhz_max = cpu;
        }
        if let Some(containers) = request.containers {
            spec.container_count_max = containers;
        }
        if let Some(stores) = &request.volume_stores {
            let labels = |list: &[String]| -> Vec<String> {
                list.iter().filter_map(|text| placement::parse_volume_store(&name, text).ok().map(|store| store.label)).collect()
            };
            let kept = labels(stores);
            if let Some(missing) = labels(&current.volume_stores).into_iter().find(|label| !kept.contains(label)) {
                return Err(AdminError::bad_request(format!(
                    "volume store {missing:?} cannot be removed: its volumes live there (give every existing store again)"
                )));
            }
            spec.volume_stores = stores.clone();
        }
        if let Some(networks) = &request.container_networks {
            spec.container_networks = networks.clone();
        }
        let credentials_changed = request.user.is_some() || request.password.is_some() || request.thumbprint.is_some();
        {
            let (name, spec, password) = (name.clone(), spec.clone(), password.clone());
            tokio::task::spawn_blocking(move || validate_against_target(&name, &spec, &password))
                .await
                .map_err(|error| AdminError::internal(error.to_string()))??;
        }
        // Container networks that are dropped must be unused (Docker's rule for removing a network).
        let kept = container_network_aliases(&spec.container_networks);
        let dropped: Vec<(String, String)> = self.views.read(|views| {
            views
                .networks
                .values()
                .filter(|network| {
                    network.driver == berth_core::model::EXTERNAL_NETWORK_DRIVER
                        && network.labels.get(berth_core::model::LABEL_VCH) == Some(&name)
                        && !kept.iter().any(|(_, alias)| alias == &network.name)
                })
                .map(|network| (network.id.clone(), network.name.clone()))
                .collect()
        });
        self.write_secret(&name, &VchSecret { spec: spec.clone(), password: password.clone(), tls: tls.clone() })?;
        for (id, network_name) in dropped {
            self.execute(Command::RemoveNetwork { id }).await.map_err(|error| {
                AdminError::new(error.status, format!("container network {network_name} cannot be removed: {}", error.message))
            })?;
        }
        self.execute(Command::ConfigureVch { name: name.clone(), spec: spec.clone() }).await?;
        self.create_container_networks(&name, &kept).await?;
        if credentials_changed || !self.running.lock().contains_key(&name) {
            self.stop_vch(&name).await;
            self.start_vch(&name, &spec, &password, tls.as_ref(), true).await?;
        }
        self.info(&name).ok_or_else(|| AdminError::internal("the VCH vanished"))
    }

    async fn upgrade_vch(self: Arc<Self>, name: String) -> Result<VchInfo, AdminError> {
        let _operation = self.operation.lock().await;
        let local = self.views.read(|views| views.vchs.get(&name).map(|vch| vch.spec.is_local()));
        match local {
            None => return Err(AdminError::not_found(format!("no such VCH: {name}"))),
            Some(true) => return Err(AdminError::bad_request(format!("{name:?} is the embedded VCH: upgrade berth itself"))),
            Some(false) => {}
        }
        self.execute(Command::UpgradeVch { name: name.clone(), version: env!("CARGO_PKG_VERSION").to_string() }).await?;
        self.info(&name).ok_or_else(|| AdminError::internal("the VCH vanished"))
    }

    async fn delete_vch(self: Arc<Self>, name: String, force: bool) -> Result<(), AdminError> {
        let _operation = self.operation.lock().await;
        let local = self.views.read(|views| views.vchs.get(&name).map(|vch| vch.spec.is_local()));
        match local {
            None => return Err(AdminError::not_found(format!("no such VCH: {name}"))),
            Some(true) => {
                return Err(AdminError::bad_request(format!("{name:?} is the embedded VCH of berth serve and cannot be deleted")))
            }
            Some(false) => {}
        }
        self.execute(Command::DeleteVch { name: name.clone(), force }).await?;
        if let Some(stop) = self.running.lock().get_mut(&name).and_then(|running| running.listener_stop.take()) {
            let _ = stop.send(true);
        }
        if !self.running.lock().contains_key(&name) {
            // Not served (no credentials): nothing berth can remove from vSphere.
            self.remove_secret(&name);
            return Ok(());
        }
        if !self.wait_removed(&name, ENACT_WAIT).await {
            return Err(AdminError::new(
                axum::http::StatusCode::GATEWAY_TIMEOUT,
                format!("VCH {name} is deleted in the log; its vSphere objects are still being removed (berth keeps trying)"),
            ));
        }
        self.stop_vch(&name).await;
        self.remove_secret(&name);
        Ok(())
    }
}

/// The admin API's handle on the manager.
pub struct AdminHandle(pub Arc<VchManager>);

impl std::ops::Deref for AdminHandle {
    type Target = Arc<VchManager>;
    fn deref(&self) -> &Arc<VchManager> {
        &self.0
    }
}

impl VchAdmin for AdminHandle {
    fn list(&self) -> Vec<VchInfo> {
        let names: Vec<String> = self.views.read(|views| views.vchs.keys().cloned().collect());
        names.iter().filter_map(|name| self.info(name)).collect()
    }

    fn inspect(&self, name: &str) -> Result<VchInfo, AdminError> {
        self.info(name).ok_or_else(|| AdminError::not_found(format!("no such VCH: {name}")))
    }

    fn create(&self, request: VchCreateRequest) -> BoxFuture<'static, Result<VchInfo, AdminError>> {
        detached(self.0.clone().create_vch(request))
    }

    fn configure(&self, name: String, request: VchConfigureRequest) -> BoxFuture<'static, Result<VchInfo, AdminError>> {
        detached(self.0.clone().configure_vch(name, request))
    }

    fn upgrade(&self, name: String) -> BoxFuture<'static, Result<VchInfo, AdminError>> {
        detached(self.0.clone().upgrade_vch(name))
    }

    fn delete(&self, name: String, force: bool) -> BoxFuture<'static, Result<(), AdminError>> {
        detached(self.0.clone().delete_vch(name, force))
    }
}

/// The time this process spent in vSphere calls, for `/metrics` and the benchmark.
pub struct VsphereMetrics;

impl berth_api::portal::MetricsSource for VsphereMetrics {
    fn render(&self, out: &mut String) {
        use std::sync::atomic::Ordering;
        let calls = berth_vsphere::soap::SOAP_CALL_COUNT.load(Ordering::Relaxed);
        let nanos = berth_vsphere::soap::SOAP_CALL_NANOS.load(Ordering::Relaxed);
        use std::fmt::Write as _;
        let _ = writeln!(out, "# HELP berth_vsphere_calls_total SOAP calls made to vSphere.\n# TYPE berth_vsphere_calls_total counter");
        let _ = writeln!(out, "berth_vsphere_calls_total {calls}");
        let _ = writeln!(
            out,
            "# HELP berth_vsphere_call_seconds_total Time spent waiting for vSphere's SOAP replies.\n# TYPE berth_vsphere_call_seconds_total counter"
        );
        let _ = writeln!(out, "berth_vsphere_call_seconds_total {:.6}", nanos as f64 / 1e9);
    }
}

/// `PORTGROUP[:ALIAS]` pairs (the alias defaults to the port group's name).
fn container_network_aliases(container_networks: &[String]) -> Vec<(String, String)> {
    container_networks
        .iter()
        .map(|text| {
            let (port_group, alias) = placement::parse_container_network(text);
            (port_group.to_string(), alias.to_string())
        })
        .collect()
}

/// Runs an admin operation on its own task: a client that disconnects (a
/// timeout, Ctrl-C) drops the request, not the operation, which would
/// otherwise stop halfway between vSphere and the log.
fn detached<T: Send + 'static>(
    operation: impl std::future::Future<Output = Result<T, AdminError>> + Send + 'static,
) -> BoxFuture<'static, Result<T, AdminError>> {
    let task = tokio::spawn(operation);
    Box::pin(async move { task.await.unwrap_or_else(|error| Err(AdminError::internal(format!("the operation failed: {error}")))) })
}

fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).with_context(|| format!("setting the mode of {}", path.display()))
}
