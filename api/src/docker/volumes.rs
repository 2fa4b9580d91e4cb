//! Volume endpoints: create, list, inspect, remove, prune.

use super::containers::{parse_body, ANONYMOUS_VOLUME_LABEL};
use super::errors::ApiError;
use super::util::{check_filter_keys, filters, labels_match, rfc3339_ms};
use super::DockerState;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use berth_core::Command;
use berth_projections::{DockerViews, VolumeView};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct CreateBody {
    name: Option<String>,
    driver: Option<String>,
    driver_opts: Option<BTreeMap<String, String>>,
    labels: Option<BTreeMap<String, String>>,
}

fn volume_json(state: &DockerState, volume: &VolumeView) -> Value {
    json!({
        "Name": volume.name,
        "Driver": volume.driver,
        "Mountpoint": format!("{}/volumes/{}/_data", state.data_dir, volume.name),
        "CreatedAt": rfc3339_ms(volume.created_ms),
        "Labels": volume.labels,
        "Scope": "local",
        "Options": {},
    })
}

fn users(views: &DockerViews, name: &str) -> Vec<String> {
    views.containers.values().filter(|c| c.spec.host.mounts.iter().any(|m| m.volume == name)).map(|c| c.id.clone()).collect()
}

pub async fn create(State(state): State<DockerState>, body: Bytes) -> Result<Response, ApiError> {
    let body: CreateBody = parse_body(&body)?;
    if body.driver_opts.as_ref().map(|o| !o.is_empty()).unwrap_or(false) {
        return Err(ApiError::bad_request("driver options are not supported by the local volume driver of a VCH"));
    }
    let name = body.name.filter(|n| !n.is_empty()).unwrap_or_else(|| state.random_hex());
    let mut labels = body.labels.unwrap_or_default();
    if name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit()) && labels.is_empty() {
        labels.insert(ANONYMOUS_VOLUME_LABEL.to_string(), String::new());
    }
    state
        .execute(Command::CreateVolume {
            name: name.clone(),
            driver: body.driver.filter(|d| !d.is_empty()).unwrap_or_else(|| "local".into()),
            labels,
        })
        .await?;
    let volume = state.views.read(|views| views.volumes.get(&name).cloned()).ok_or_else(|| ApiError::internal("the volume vanished"))?;
    Ok((StatusCode::CREATED, Json(volume_json(&state, &volume))).into_response())
}

pub async fn list(State(state): State<DockerState>, Query(query): Query<HashMap<String, String>>) -> Result<Json<Value>, ApiError> {
    let filters = filters(&query)?;
    check_filter_keys(&filters, &["name", "dangling", "driver", "label"])?;
    let volumes: Vec<Value> = state.views.read(|views| {
        views
            .volumes
            .values()
            .filter(|v| filters.get("name").map(|names| names.iter().any(|n| v.name.contains(n.as_str()))).unwrap_or(true))
            .filter(|v| filters.get("driver").map(|d| d.contains(&v.driver)).unwrap_or(true))
            .filter(|v| filters.get("label").map(|l| labels_match(&v.labels, l)).unwrap_or(true))
            .filter(|v| {
                filters
                    .get("dangling")
                    .map(|d| d.iter().any(|d| (d == "true" || d == "1") == users(views, &v.name).is_empty()))
                    .unwrap_or(true)
            })
            .map(|v| volume_json(&state, v))
            .collect()
    });
    Ok(Json(json!({ "Volumes": volumes, "Warnings": [] })))
}

pub async fn inspect(State(state): State<DockerState>, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    let volume = state
        .views
        .read(|views| views.volumes.get(&name).cloned())
        .ok_or_else(|| ApiError::not_found(format!("get {name}: no such volume")))?;
    Ok(Json(volume_json(&state, &volume)))
}

pub async fn remove(
    State(state): State<DockerState>,
    Path(name): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let force = super::util::flag(&query, "force");
    match state.execute(Command::RemoveVolume { name: name.clone(), force }).await {
        Ok(_) => Ok(StatusCode::NO_CONTENT.into_response()),
        Err(error) if error.status == StatusCode::NOT_FOUND => Err(ApiError::not_found(format!("get {name}: no such volume"))),
        Err(error) if error.status == StatusCode::CONFLICT => {
            let users = state.views.read(|views| users(views, &name));
            Err(ApiError::conflict(format!("remove {name}: volume is in use - [{}]", users.join(", "))))
        }
        Err(error) => Err(error),
    }
}

pub async fn prune(State(state): State<DockerState>, Query(query): Query<HashMap<String, String>>) -> Result<Json<Value>, ApiError> {
    let filters = filters(&query)?;
    check_filter_keys(&filters, &["label", "all"])?;
    let all = filters.get("all").map(|a| a.iter().any(|v| v == "true" || v == "1")).unwrap_or(false);
    let candidates: Vec<String> = state.views.read(|views| {
        views
            .volumes
            .values()
            .filter(|v| all || v.labels.contains_key(ANONYMOUS_VOLUME_LABEL))
            .filter(|v| filters.get("label").map(|l| labels_match(&v.labels, l)).unwrap_or(true))
            .filter(|v| users(views, &v.name).is_empty())
            .map(|v| v.name.clone())
            .collect()
    });
    let mut deleted = Vec::new();
    for name in candidates {
        if state.execute(Command::RemoveVolume { name: name.clone(), force: false }).await.is_ok() {
            deleted.push(name);
        }
    }
    Ok(Json(json!({ "VolumesDeleted": if deleted.is_empty() { Value::Null } else { json!(deleted) }, "SpaceReclaimed": 0 })))
}
