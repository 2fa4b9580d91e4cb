//! The Docker Engine API of a VCH.
//!
//! Requests may carry a `/v1.NN` prefix; it is checked against the versions
//! berth speaks and stripped before routing, so every handler is routed once.
//! Errors are `{"message": "..."}` with Docker's status codes. Every change is
//! a core command through the bus, answered once the views have folded it
//! (read-your-writes); every read comes from the views.

mod containers;
mod errors;
mod events;
mod images;
pub mod networks;
pub mod ports;
mod streams;
mod system;
mod util;
mod volumes;

pub use containers::remove_anonymous_volumes;
pub use errors::ApiError;
pub use util::rfc3339_ms;

use axum::body::Body;
use axum::http::{header, HeaderValue, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Router;
use berth_core::log::EventLog;
use berth_core::{Command, CommandEnvelope};
use berth_engine::{CommandBus, CommandOutcome, ViewHandle};
use ports::{ContainerPort, ImagePort};
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt as _;

/// The newest Docker Engine API version berth speaks.
pub const API_VERSION: &str = "1.47";
/// The oldest version a client may ask for.
pub const API_VERSION_MIN: &str = "1.24";
/// The largest request body (image archives, `docker cp` tarballs).
const REQUEST_BODY_BYTES_MAX: usize = 4 * 1024 * 1024 * 1024;
/// How long a write waits for the views to fold it before answering anyway.
const READ_YOUR_WRITES_WAIT_S: u64 = 10;

/// What every Docker API handler can reach.
#[derive(Clone)]
pub struct DockerState {
    /// None on a read-only follower.
    pub bus: Option<Arc<CommandBus>>,
    pub views: ViewHandle,
    pub log: Arc<dyn EventLog>,
    pub images: Option<Arc<dyn ImagePort>>,
    pub containers: Option<Arc<dyn ContainerPort>>,
    pub exec_sessions: Arc<streams::ExecRegistry>,
    /// The name of the VCH this endpoint serves.
    pub vch: String,
    pub started_at_ms: u64,
    pub data_dir: String,
    /// Where new networks get subnets (`--default-address-pool`).
    pub address_pool: networks::AddressPool,
    /// Extra `/info` status lines (`SystemStatus`), e.g. a follower's lag.
    pub status: Option<Arc<dyn Fn() -> Vec<(String, String)> + Send + Sync>>,
    /// Why there is no container port, when there is none (Docker's 501 message).
    pub no_runtime_reason: Option<String>,
}

impl DockerState {
    pub fn new(views: ViewHandle, log: Arc<dyn EventLog>, vch: impl Into<String>, data_dir: impl Into<String>) -> DockerState {
        DockerState {
            bus: None,
            views,
            log,
            images: None,
            containers: None,
            exec_sessions: Arc::new(streams::ExecRegistry::default()),
            vch: vch.into(),
            started_at_ms: now_ms(),
            data_dir: data_dir.into(),
            address_pool: networks::AddressPool::default(),
            status: None,
            no_runtime_reason: None,
        }
    }

    fn bus(&self) -> Result<&Arc<CommandBus>, ApiError> {
        self.bus
            .as_ref()
            .ok_or_else(|| ApiError::new(StatusCode::FORBIDDEN, "this berth is a read-only follower: send changes to the leader"))
    }

    /// Executes a command and waits until the views reflect it.
    pub async fn execute(&self, command: Command) -> Result<CommandOutcome, ApiError> {
        let outcome = self.bus()?.execute(CommandEnvelope::new("docker", command)).await?;
        if !self.views.wait_for(outcome.position, Duration::from_secs(READ_YOUR_WRITES_WAIT_S)).await {
            return Err(ApiError::internal(format!("the views did not reach position {} in time", outcome.position)));
        }
        Ok(outcome)
    }

    pub fn random_hex(&self) -> String {
        match &self.bus {
            Some(bus) => bus.entropy().hex_id(),
            None => format!("{:064x}", now_ms()),
        }
    }

    pub fn generated_name(&self) -> String {
        let mut random = [0u8; 3];
        if let Some(bus) = &self.bus {
            bus.entropy().fill(&mut random);
        }
        let base = util::generated_name(random);
        // The decision model's name index answers in O(1); the views would scan.
        let taken = match &self.bus {
            Some(bus) => bus.with_model(|model| model.container_names.contains_key(&base)),
            None => self.views.read(|views| views.find_container(&base).is_some()),
        };
        if !taken {
            base
        } else {
            format!("{base}_{}", &self.random_hex()[..6])
        }
    }

    pub fn address_pool(&self) -> networks::AddressPool {
        self.address_pool
    }

    pub fn now_ms(&self) -> u64 {
        match &self.bus {
            Some(bus) => bus.clock().now_ms(),
            None => now_ms(),
        }
    }

    /// After a start: waits until the infrastructure runs the container (or it already exited).
    pub async fn await_started(&self, id: &str, timeout: Duration) -> Result<(), ApiError> {
        let Some(containers) = self.containers.clone() else { return Ok(()) };
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let (generation, state) =
                self.views.read(|views| views.containers.get(id).map(|c| (c.generation, c.state.clone())).unwrap_or((0, "gone".into())));
            if state != "running" && state != "paused" {
                return Ok(());
            }
            let _ = generation;
            if containers.pid(id).is_some() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ApiError::internal(format!("container {id} did not start within {} s", timeout.as_secs())));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn parse_version(text: &str) -> Option<(u32, u32)> {
    let (major, minor) = text.split_once('.')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// Strips and checks the `/vX.Y` prefix; `Err` is the response to send instead.
fn strip_version(mut request: Request<Body>) -> Result<Request<Body>, Response> {
    let path = request.uri().path();
    let Some(rest) = path.strip_prefix("/v") else { return Ok(request) };
    let (version, tail) = match rest.find('/') {
        Some(slash) => (&rest[..slash], &rest[slash..]),
        None => return Ok(request),
    };
    let Some(asked) = parse_version(version) else { return Ok(request) };
    let newest = parse_version(API_VERSION).expect("valid constant");
    let oldest = parse_version(API_VERSION_MIN).expect("valid constant");
    if asked > newest {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("client version {version} is too new. Maximum supported API version is {API_VERSION}"),
        )
        .into_response());
    }
    if asked < oldest {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("client version {version} is too old. Minimum supported API version is {API_VERSION_MIN}, please upgrade your client to a newer version"),
        )
        .into_response());
    }
    let query = request.uri().query().map(|q| format!("?{q}")).unwrap_or_default();
    let new_uri = format!("{tail}{query}");
    *request.uri_mut() = new_uri.parse().map_err(|_| ApiError::bad_request("invalid request path").into_response())?;
    Ok(request)
}

/// The Docker API routes, without the version prefix handling.
pub fn routes(state: DockerState) -> Router {
    Router::new()
        .route("/_ping", get(system::ping).head(system::ping))
        .route("/version", get(system::version))
        .route("/info", get(system::info))
        .route("/system/df", get(system::disk_usage))
        .route("/events", get(events::events))
        .route("/containers/create", post(containers::create))
        .route("/containers/json", get(containers::list))
        .route("/containers/prune", post(containers::prune))
        .route("/containers/{id}/json", get(containers::inspect))
        .route("/containers/{id}/start", post(containers::start))
        .route("/containers/{id}/stop", post(containers::stop))
        .route("/containers/{id}/restart", post(containers::restart))
        .route("/containers/{id}/kill", post(containers::kill))
        .route("/containers/{id}/pause", post(containers::pause))
        .route("/containers/{id}/unpause", post(containers::unpause))
        .route("/containers/{id}/rename", post(containers::rename))
        .route("/containers/{id}/wait", post(streams::wait))
        .route("/containers/{id}/logs", get(streams::logs))
        .route("/containers/{id}/attach", post(streams::attach))
        .route("/containers/{id}/resize", post(streams::resize))
        .route("/containers/{id}/exec", post(streams::exec_create))
        .route("/containers/{id}/top", get(streams::top))
        .route("/containers/{id}/stats", get(streams::stats))
        .route("/containers/{id}/update", post(streams::update))
        .route("/containers/{id}/changes", get(streams::changes))
        .route("/containers/{id}/export", get(streams::export))
        .route("/containers/{id}/archive", get(streams::archive_get).head(streams::archive_head).put(streams::archive_put))
        .route("/containers/{id}", delete(containers::remove))
        .route("/exec/{id}/start", post(streams::exec_start))
        .route("/exec/{id}/resize", post(streams::exec_resize))
        .route("/exec/{id}/json", get(streams::exec_inspect))
        .route("/images/json", get(images::list))
        .route("/images/create", post(images::create))
        .route("/images/load", post(images::load))
        .route("/images/get", get(images::save_many))
        .route("/images/prune", post(images::prune))
        .route("/images/{*rest}", get(images::dispatch_get).post(images::dispatch_post).delete(images::remove))
        .route("/volumes", get(volumes::list))
        .route("/volumes/create", post(volumes::create))
        .route("/volumes/prune", post(volumes::prune))
        .route("/volumes/{name}", get(volumes::inspect).delete(volumes::remove))
        .route("/networks", get(networks::list))
        .route("/networks/create", post(networks::create))
        .route("/networks/prune", post(networks::prune))
        .route("/networks/{id}", get(networks::inspect).delete(networks::remove))
        .route("/networks/{id}/connect", post(networks::connect))
        .route("/networks/{id}/disconnect", post(networks::disconnect))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "page not found") })
        .layer(axum::extract::DefaultBodyLimit::max(REQUEST_BODY_BYTES_MAX))
        .with_state(state)
}

/// Errors that did not come from a handler (axum's extractor rejections, 405
/// for a wrong method) get Docker's `{"message": ...}` JSON body too.
async fn as_docker_error(response: Response) -> Response {
    let is_json = response.headers().get(header::CONTENT_TYPE).map(|v| v.as_bytes().starts_with(b"application/json")).unwrap_or(false);
    if is_json {
        return response;
    }
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 64 * 1024).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes).trim().to_string();
    let message = if text.is_empty() { status.canonical_reason().unwrap_or("error").to_string() } else { text };
    ApiError::new(status, message).into_response()
}

/// A service that serves the Docker API with version prefixes and Docker's headers.
pub fn service(
    state: DockerState,
) -> impl tower::Service<Request<Body>, Response = Response, Error = std::convert::Infallible, Future = impl Send> + Clone + Send + 'static
{
    let router = routes(state);
    tower::service_fn(move |request: Request<Body>| {
        let router = router.clone();
        async move {
            let mut response = match strip_version(request) {
                Ok(request) => router.oneshot(request).await?,
                Err(response) => response,
            };
            if response.status().is_client_error() || response.status().is_server_error() {
                response = as_docker_error(response).await;
            }
            let headers = response.headers_mut();
            headers.insert("api-version", HeaderValue::from_static(API_VERSION));
            headers.insert("docker-experimental", HeaderValue::from_static("false"));
            headers.insert("ostype", HeaderValue::from_static("linux"));
            headers.insert(header::SERVER, HeaderValue::from_static(concat!("berth/", env!("CARGO_PKG_VERSION"), " (linux)")));
            Ok(response)
        }
    })
}
