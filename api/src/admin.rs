//! The admin REST API of `berth serve`, on the portal listener: what
//! `berth vch create|ls|inspect|configure|upgrade|delete` talk to (the
//! vic-machine equivalent).
//!
//! - `GET /api/vchs`, `POST /api/vchs`: list, create (201)
//! - `GET|PUT|DELETE /api/vchs/{name}`: inspect, configure, delete (`?force=true`)
//! - `POST /api/vchs/{name}/upgrade`: upgrade to the running berth's version
//!
//! Errors are `{"message": "..."}` with a status that says whose fault it is:
//! 400 bad input or a target object that does not exist, 401 wrong
//! credentials, 404 no such VCH, 409 a name in use or a VCH that still holds
//! containers, 502 an unreachable or untrusted target. This crate knows the
//! wire format only; the composition root validates against vSphere and runs
//! the commands (dependencies point inward: no adapter is known here).

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// `berth vch create`: everything a new VCH needs (vic-machine's create options).
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VchCreateRequest {
    pub name: String,
    /// The vCenter or ESX: `https://host[/sdk]`, `http://...` or a bare host.
    pub target: String,
    pub user: String,
    /// Kept by the server outside the log (a 0600 file in its data directory).
    pub password: String,
    pub thumbprint: Option<String>,
    /// A cluster, host or resource pool name; the only one when absent.
    pub compute_resource: Option<String>,
    /// The datastore for images and container VMs; the first one when absent.
    pub image_store: Option<String>,
    /// `DATASTORE[/PATH]:LABEL` (vic-machine's `ds://` prefix is accepted).
    pub volume_stores: Vec<String>,
    /// The port group container VMs' bridge NICs use.
    pub bridge_network: Option<String>,
    pub public_network: Option<String>,
    pub client_network: Option<String>,
    pub management_network: Option<String>,
    /// `PORTGROUP[:ALIAS]`: port groups offered to containers as Docker networks.
    pub container_networks: Vec<String>,
    /// The VCH's memory limit in MiB (its resource pool's limit; unlimited when absent).
    pub memory_mib: Option<u64>,
    /// The VCH's CPU limit in MHz.
    pub cpu_mhz: Option<u64>,
    /// The most containers the VCH may hold.
    pub containers: Option<u64>,
    /// Where the VCH's Docker API listens (`HOST:PORT`, loopback only without
    /// TLS; port 0 picks a free port once, at creation). Default 127.0.0.1:0.
    pub docker_listen: Option<String>,
    /// The Docker API's server certificate (then any intermediates) as PEM
    /// text; with `tls_server_key_pem` (both or neither) the VCH serves TLS.
    /// Texts rather than paths: the CLI reads the files, so it may run on
    /// another machine than the server.
    pub tls_server_cert_pem: Option<String>,
    /// The server certificate's private key as PEM, unencrypted: a secret,
    /// kept outside the log like the password.
    pub tls_server_key_pem: Option<String>,
    /// A CA as PEM: clients must present a certificate it signed (Docker's
    /// `--tlsverify`). Needs the server certificate and key.
    pub tls_ca_pem: Option<String>,
}

/// `berth vch configure`: the settings that change on a running VCH; absent ones stay.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VchConfigureRequest {
    /// New credentials for the target (the password is checked before it is kept).
    pub user: Option<String>,
    pub password: Option<String>,
    pub thumbprint: Option<String>,
    pub memory_mib: Option<u64>,
    pub cpu_mhz: Option<u64>,
    pub containers: Option<u64>,
    /// Replaces the volume stores (existing ones must stay: volumes live there).
    pub volume_stores: Option<Vec<String>>,
    /// Replaces the container networks.
    pub container_networks: Option<Vec<String>>,
}

// Debug without the password or the TLS key: requests end up in logs.
impl std::fmt::Debug for VchCreateRequest {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("VchCreateRequest")
            .field("name", &self.name)
            .field("target", &self.target)
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for VchConfigureRequest {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("VchConfigureRequest")
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("memory_mib", &self.memory_mib)
            .field("cpu_mhz", &self.cpu_mhz)
            .field("containers", &self.containers)
            .finish_non_exhaustive()
    }
}

/// What `berth vch ls` and `berth vch inspect` show.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct VchInfo {
    pub name: String,
    pub target: String,
    pub user: Option<String>,
    pub thumbprint: Option<String>,
    pub compute_resource: Option<String>,
    pub image_store: Option<String>,
    pub volume_stores: Vec<String>,
    pub bridge_network: Option<String>,
    pub public_network: Option<String>,
    pub client_network: Option<String>,
    pub management_network: Option<String>,
    pub container_networks: Vec<String>,
    /// 0: unlimited.
    pub memory_mib: u64,
    pub cpu_mhz: u64,
    pub containers_max: u64,
    pub version: Option<String>,
    /// The value for `DOCKER_HOST` (`tcp://HOST:PORT`), once the VCH serves.
    pub docker_host: Option<String>,
    /// How clients reach the Docker API: "tlsverify" (TLS, client
    /// certificates required), "tls" (TLS only), absent for plain HTTP.
    pub docker_tls: Option<String>,
    pub container_count: u64,
    pub running_count: u64,
    /// The last action on the VCH's objects that kept failing.
    pub last_error: Option<String>,
    pub drift_count: u64,
    pub last_drift: Option<String>,
    pub created: String,
}

/// A refused admin request: `{"message": ...}` with its HTTP status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminError {
    pub status: StatusCode,
    pub message: String,
}

impl AdminError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> AdminError {
        AdminError { status, message: message.into() }
    }
    pub fn bad_request(message: impl Into<String>) -> AdminError {
        AdminError::new(StatusCode::BAD_REQUEST, message)
    }
    pub fn not_found(message: impl Into<String>) -> AdminError {
        AdminError::new(StatusCode::NOT_FOUND, message)
    }
    pub fn conflict(message: impl Into<String>) -> AdminError {
        AdminError::new(StatusCode::CONFLICT, message)
    }
    pub fn internal(message: impl Into<String>) -> AdminError {
        AdminError::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        (self.status, Json(serde_json::json!({ "message": self.message }))).into_response()
    }
}

/// What the admin API does; the composition root implements it.
pub trait VchAdmin: Send + Sync + 'static {
    fn list(&self) -> Vec<VchInfo>;
    fn inspect(&self, name: &str) -> Result<VchInfo, AdminError>;
    /// Validates everything against the target before anything is created.
    fn create(&self, request: VchCreateRequest) -> BoxFuture<'static, Result<VchInfo, AdminError>>;
    fn configure(&self, name: String, request: VchConfigureRequest) -> BoxFuture<'static, Result<VchInfo, AdminError>>;
    fn upgrade(&self, name: String) -> BoxFuture<'static, Result<VchInfo, AdminError>>;
    /// Without `force` the VCH must hold no containers.
    fn delete(&self, name: String, force: bool) -> BoxFuture<'static, Result<(), AdminError>>;
}

#[derive(Debug, Default, Deserialize)]
struct DeleteQuery {
    #[serde(default)]
    force: Option<String>,
}

/// The admin routes, to merge into the portal's router.
pub fn router(admin: Arc<dyn VchAdmin>) -> Router {
    Router::new()
        .route("/api/vchs", get(list).post(create))
        .route("/api/vchs/{name}", get(inspect).put(configure).delete(delete))
        .route("/api/vchs/{name}/upgrade", post(upgrade))
        .with_state(admin)
}

type Admin = State<Arc<dyn VchAdmin>>;

async fn list(State(admin): Admin) -> Json<Vec<VchInfo>> {
    Json(admin.list())
}

async fn inspect(State(admin): Admin, Path(name): Path<String>) -> Result<Json<VchInfo>, AdminError> {
    admin.inspect(&name).map(Json)
}

fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, AdminError> {
    serde_json::from_slice(body)
        .map_err(|error| AdminError::bad_request(format!("the request body is not valid JSON for this call: {error}")))
}

async fn create(State(admin): Admin, body: axum::body::Bytes) -> Result<(StatusCode, Json<VchInfo>), AdminError> {
    let request: VchCreateRequest = parse_body(&body)?;
    let info = admin.create(request).await?;
    Ok((StatusCode::CREATED, Json(info)))
}

async fn configure(State(admin): Admin, Path(name): Path<String>, body: axum::body::Bytes) -> Result<Json<VchInfo>, AdminError> {
    let request: VchConfigureRequest = parse_body(&body)?;
    admin.configure(name, request).await.map(Json)
}

async fn upgrade(State(admin): Admin, Path(name): Path<String>) -> Result<Json<VchInfo>, AdminError> {
    admin.upgrade(name).await.map(Json)
}

async fn delete(State(admin): Admin, Path(name): Path<String>, Query(query): Query<DeleteQuery>) -> Result<StatusCode, AdminError> {
    let force = match query.force.as_deref() {
        None | Some("") | Some("0") | Some("false") => false,
        Some("1") | Some("true") => true,
        Some(other) => return Err(AdminError::bad_request(format!("force={other:?}: want true or false"))),
    };
    admin.delete(name, force).await?;
    Ok(StatusCode::NO_CONTENT)
}
