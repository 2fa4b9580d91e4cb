//! The portal listener: what people and tools watch, beside the Docker API.
//!
//! - `GET /api/events`: every committed event as server-sent events, past
//!   ones included, filterable and resumable (see [`events`]).
//! - `GET /api/views`: the Docker views at their current position, as JSON.
//! - `GET /metrics`: Prometheus text: the log head, the views' position, and
//!   whatever the composition root adds (the relay's or a follower's state).
//!
//! The portal only reads: it holds the log and the views, never the bus.

pub mod events;
pub mod metrics;

pub use metrics::MetricsSource;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use berth_core::log::EventLog;
use berth_core::Position;
use berth_engine::ViewHandle;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Semaphore};

/// The default pause between two SSE heartbeat comments.
pub const HEARTBEAT_INTERVAL_DEFAULT: Duration = Duration::from_secs(15);
/// The most event streams open at once; one more is answered 503.
pub const EVENT_STREAM_COUNT_MAX: usize = 1024;

/// What the portal's handlers can reach.
#[derive(Clone)]
pub struct PortalState {
    pub log: Arc<dyn EventLog>,
    /// The log's head, moved by a commit listener (see [`head_watch`]).
    pub head: watch::Receiver<Position>,
    pub views: ViewHandle,
    pub heartbeat_interval: Duration,
    /// Extra metrics the composition root provides.
    pub metrics: Vec<Arc<dyn MetricsSource>>,
    event_stream_slots: Arc<Semaphore>,
}

impl PortalState {
    pub fn new(log: Arc<dyn EventLog>, views: ViewHandle) -> PortalState {
        let head = head_watch(&log);
        PortalState {
            log,
            head,
            views,
            heartbeat_interval: HEARTBEAT_INTERVAL_DEFAULT,
            metrics: Vec::new(),
            event_stream_slots: Arc::new(Semaphore::new(EVENT_STREAM_COUNT_MAX)),
        }
    }

    /// Event streams open now.
    pub fn event_stream_count(&self) -> usize {
        EVENT_STREAM_COUNT_MAX - self.event_stream_slots.available_permits()
    }
}

/// A receiver of the log's head, updated after every durable commit. Register
/// it once per log: commit listeners cannot be removed.
pub fn head_watch(log: &Arc<dyn EventLog>) -> watch::Receiver<Position> {
    let (sender, receiver) = watch::channel(log.head());
    log.on_commit(Box::new(move |position| {
        sender.send_replace(position);
    }));
    receiver
}

/// The portal's routes.
pub fn router(state: PortalState) -> Router {
    Router::new()
        .route("/api/events", get(events::stream_events))
        .route("/api/views", get(views))
        .route("/metrics", get(metrics::metrics))
        .route("/healthz", get(|| async { "ok" }))
        .fallback(|| async { crate::docker::ApiError::not_found("page not found") })
        .with_state(state)
}

async fn views(State(state): State<PortalState>) -> impl IntoResponse {
    let views = state.views.read(|views| views.clone());
    ([(header::CACHE_CONTROL, "no-store")], Json(views))
}
