//! `GET /metrics` in Prometheus' text format (version 0.0.4).

use super::PortalState;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use std::fmt::Write as _;

/// Metrics the composition root adds to the portal (the relay, a follower).
pub trait MetricsSource: Send + Sync {
    /// Appends complete metric families (`# HELP`, `# TYPE`, samples) to `out`.
    fn render(&self, out: &mut String);
}

/// Writes one gauge with its help line.
pub fn write_gauge(out: &mut String, name: &str, help: &str, value: impl std::fmt::Display) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
}

pub async fn metrics(State(state): State<PortalState>) -> impl IntoResponse {
    let mut out = String::new();
    write_gauge(&mut out, "berth_log_head_position", "The position of the last durable event in the log.", state.log.head().0);
    write_gauge(&mut out, "berth_views_position", "The last position folded into the Docker views.", state.views.position().0);
    write_gauge(&mut out, "berth_event_streams_open", "Server-sent event streams open on the portal.", state.event_stream_count());
    for source in &state.metrics {
        source.render(&mut out);
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], out)
}
