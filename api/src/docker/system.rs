//! System endpoints: `/_ping` and `/version`.

use super::{DockerState, API_VERSION, API_VERSION_MIN};
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;

pub async fn ping() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8"), (header::CACHE_CONTROL, "no-cache, no-store, must-revalidate")], "OK")
}

pub async fn version(State(state): State<DockerState>) -> impl IntoResponse {
    let build_time = time::OffsetDateTime::from_unix_timestamp((state.started_at_ms / 1000) as i64)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default();
    Json(serde_json::json!({
        "Platform": { "Name": "berth" },
        "Components": [{
            "Name": "Engine",
            "Version": env!("CARGO_PKG_VERSION"),
            "Details": { "ApiVersion": API_VERSION, "MinAPIVersion": API_VERSION_MIN, "Os": "linux", "Arch": std::env::consts::ARCH }
        }],
        "Version": env!("CARGO_PKG_VERSION"),
        "ApiVersion": API_VERSION,
        "MinAPIVersion": API_VERSION_MIN,
        "GitCommit": "berth",
        "GoVersion": "n/a (rust)",
        "Os": "linux",
        "Arch": if std::env::consts::ARCH == "x86_64" { "amd64" } else { std::env::consts::ARCH },
        "KernelVersion": kernel_version(),
        "BuildTime": build_time,
    }))
}

fn kernel_version() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_default()
}
