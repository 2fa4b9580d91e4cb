//! The Docker Engine API of a VCH.
//!
//! Requests may carry a `/v1.NN` prefix; it is checked against the versions
//! berth speaks and stripped before routing, so every handler is routed once.
//! Errors are `{"message": "..."}` with Docker's status codes.

mod errors;
mod system;

pub use errors::ApiError;

use axum::body::Body;
use axum::http::{header, HeaderValue, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use berth_engine::{CommandBus, ViewHandle};
use std::sync::Arc;
use tower::ServiceExt as _;

/// The newest Docker Engine API version berth speaks.
pub const API_VERSION: &str = "1.47";
/// The oldest version a client may ask for.
pub const API_VERSION_MIN: &str = "1.24";

/// What every Docker API handler can reach.
#[derive(Clone)]
pub struct DockerState {
    pub bus: Option<Arc<CommandBus>>,
    pub views: ViewHandle,
    /// The name of the VCH this endpoint serves.
    pub vch: String,
    pub started_at_ms: u64,
    pub data_dir: String,
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
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "page not found") })
        .with_state(state)
}

/// A service that serves the Docker API with version prefixes and Docker's headers.
pub fn service(
    state: DockerState,
) -> impl tower::Service<Request<Body>, Response = Response, Error = std::convert::Infallible, Future = impl Send> + Clone + Send + 'static {
    let router = routes(state);
    tower::service_fn(move |request: Request<Body>| {
        let router = router.clone();
        async move {
            let mut response = match strip_version(request) {
                Ok(request) => router.oneshot(request).await?,
                Err(response) => response,
            };
            let headers = response.headers_mut();
            headers.insert("api-version", HeaderValue::from_static(API_VERSION));
            headers.insert("docker-experimental", HeaderValue::from_static("false"));
            headers.insert("ostype", HeaderValue::from_static("linux"));
            headers.insert(header::SERVER, HeaderValue::from_static(concat!("berth/", env!("CARGO_PKG_VERSION"), " (linux)")));
            Ok(response)
        }
    })
}
