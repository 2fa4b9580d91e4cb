//! Image endpoints: list, inspect, history, tag, remove, import, load, save,
//! prune, and pull (which can only confirm images that are already here:
//! berth has no registry client yet).

use super::errors::ApiError;
use super::ports::ImagePort;
use super::util::{check_filter_keys, filters, flag, labels_match, rfc3339_ms};
use super::DockerState;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, RawQuery, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use berth_core::model::normalize_reference;
use berth_core::Command;
use berth_projections::ImageView;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;

fn image_port(state: &DockerState) -> Result<Arc<dyn ImagePort>, ApiError> {
    state.images.clone().ok_or_else(|| ApiError::new(StatusCode::NOT_IMPLEMENTED, "this endpoint has no image store"))
}

fn find(state: &DockerState, reference: &str) -> Result<ImageView, ApiError> {
    state.views.read(|views| views.find_image(reference).cloned()).ok_or_else(|| ApiError::not_found(format!("No such image: {reference}")))
}

fn json_lines(lines: Vec<Value>) -> Response {
    let body: String = lines.into_iter().map(|line| format!("{line}\r\n")).collect();
    let mut response = Response::new(Body::from(body));
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

pub async fn list(State(state): State<DockerState>, Query(query): Query<HashMap<String, String>>) -> Result<Json<Value>, ApiError> {
    let filters = filters(&query)?;
    check_filter_keys(&filters, &["dangling", "label", "reference", "before", "since"])?;
    let images = state.views.read(|views| {
        let mut images: Vec<&ImageView> = views.images.values().collect();
        images.sort_by(|a, b| b.created_ms.cmp(&a.created_ms).then(a.id.cmp(&b.id)));
        images
            .into_iter()
            .filter(|i| filters.get("dangling").map(|d| d.iter().any(|d| (d == "true" || d == "1") == i.tags.is_empty())).unwrap_or(true))
            .filter(|i| {
                filters
                    .get("reference")
                    .map(|r| r.iter().any(|pattern| i.tags.iter().any(|tag| reference_matches(tag, pattern))))
                    .unwrap_or(true)
            })
            .filter(|i| filters.get("label").map(|l| labels_match(&image_labels(&state, &i.id), l)).unwrap_or(true))
            .map(|i| {
                let containers = views.containers.values().filter(|c| c.image_id == i.id).count();
                json!({
                    "Id": i.id,
                    "ParentId": "",
                    "RepoTags": i.tags.iter().collect::<Vec<_>>(),
                    "RepoDigests": [],
                    "Created": i.created_ms / 1000,
                    "Size": i.size_bytes,
                    "SharedSize": -1,
                    "Labels": image_labels(&state, &i.id),
                    "Containers": containers,
                })
            })
            .collect::<Vec<_>>()
    });
    Ok(Json(Value::Array(images)))
}

fn image_labels(state: &DockerState, id: &str) -> std::collections::BTreeMap<String, String> {
    state.images.as_ref().and_then(|images| images.defaults(id).ok()).map(|d| d.labels).unwrap_or_default()
}

/// `docker images --filter reference=busybox*`: glob on the repository, optional tag.
fn reference_matches(tag: &str, pattern: &str) -> bool {
    fn glob(text: &str, pattern: &str) -> bool {
        match pattern.split_once('*') {
            None => text == pattern,
            Some((prefix, rest)) => {
                text.starts_with(prefix) && (0..=text.len() - prefix.len()).any(|i| glob(&text[prefix.len() + i..], rest))
            }
        }
    }
    let pattern = if pattern.contains(':') { pattern.to_string() } else { format!("{pattern}:*") };
    glob(tag, &pattern)
}

/// Routes `GET /images/{name}/json|history|get` (names may contain `/`).
pub async fn dispatch_get(State(state): State<DockerState>, Path(rest): Path<String>) -> Result<Response, ApiError> {
    if let Some(name) = rest.strip_suffix("/json") {
        return inspect(&state, name).await.map(IntoResponse::into_response);
    }
    if let Some(name) = rest.strip_suffix("/history") {
        return history(&state, name).await.map(IntoResponse::into_response);
    }
    if let Some(name) = rest.strip_suffix("/get") {
        let image = find(&state, name)?;
        let tags = if image.tags.contains(&normalize_reference(name)) {
            vec![normalize_reference(name)]
        } else {
            image.tags.iter().cloned().collect()
        };
        return save(&state, vec![(image.id, tags)]);
    }
    Err(ApiError::not_found("page not found"))
}

/// Routes `POST /images/{name}/tag|push`.
pub async fn dispatch_post(
    State(state): State<DockerState>,
    Path(rest): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    if let Some(name) = rest.strip_suffix("/tag") {
        let image = find(&state, name)?;
        let repo = query.get("repo").cloned().unwrap_or_default();
        if repo.is_empty() {
            return Err(ApiError::bad_request("repository name must have at least one component"));
        }
        let tag = query.get("tag").filter(|t| !t.is_empty()).cloned().unwrap_or_else(|| "latest".into());
        state.execute(Command::TagImage { id: image.id, reference: format!("{repo}:{tag}") }).await?;
        return Ok(StatusCode::CREATED.into_response());
    }
    if rest.ends_with("/push") {
        return Err(ApiError::new(StatusCode::NOT_IMPLEMENTED, "push is not available: this berth has no registry client yet"));
    }
    Err(ApiError::not_found("page not found"))
}

async fn inspect(state: &DockerState, name: &str) -> Result<Json<Value>, ApiError> {
    let image = find(state, name)?;
    let defaults = match &state.images {
        Some(images) => {
            let images = images.clone();
            let id = image.id.clone();
            tokio::task::spawn_blocking(move || images.defaults(&id))
                .await
                .map_err(|e| ApiError::internal(e.to_string()))?
                .unwrap_or_default()
        }
        None => Default::default(),
    };
    let exposed: serde_json::Map<String, Value> = defaults.exposed_ports.iter().map(|p| (p.clone(), json!({}))).collect();
    Ok(Json(json!({
        "Id": image.id,
        "RepoTags": image.tags.iter().collect::<Vec<_>>(),
        "RepoDigests": [],
        "Parent": "",
        "Comment": "",
        "Created": if defaults.created.is_empty() { rfc3339_ms(image.created_ms) } else { defaults.created.clone() },
        "DockerVersion": "",
        "Author": "",
        "Config": {
            "Hostname": "",
            "Domainname": "",
            "User": defaults.user,
            "AttachStdin": false,
            "AttachStdout": false,
            "AttachStderr": false,
            "ExposedPorts": if exposed.is_empty() { Value::Null } else { Value::Object(exposed) },
            "Tty": false,
            "OpenStdin": false,
            "StdinOnce": false,
            "Env": defaults.env,
            "Cmd": if defaults.cmd.is_empty() { Value::Null } else { json!(defaults.cmd) },
            "Image": "",
            "Volumes": null,
            "WorkingDir": defaults.working_dir,
            "Entrypoint": if defaults.entrypoint.is_empty() { Value::Null } else { json!(defaults.entrypoint) },
            "OnBuild": null,
            "Labels": defaults.labels,
        },
        "Architecture": if defaults.architecture.is_empty() { "amd64".to_string() } else { defaults.architecture.clone() },
        "Os": if defaults.os.is_empty() { "linux".to_string() } else { defaults.os.clone() },
        "Size": image.size_bytes,
        "GraphDriver": { "Name": "overlay2", "Data": null },
        "RootFS": { "Type": "layers", "Layers": image.layer_digests },
        "Metadata": { "LastTagTime": "0001-01-01T00:00:00Z" },
    })))
}

async fn history(state: &DockerState, name: &str) -> Result<Json<Value>, ApiError> {
    let image = find(state, name)?;
    let port = image_port(state)?;
    let id = image.id.clone();
    let defaults = tokio::task::spawn_blocking(move || port.defaults(&id))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(ApiError::internal)?;
    let count = defaults.history.len();
    let rows: Vec<Value> = defaults
        .history
        .iter()
        .enumerate()
        .rev()
        .map(|(index, step)| {
            let created_s = time::OffsetDateTime::parse(&step.created, &time::format_description::well_known::Rfc3339)
                .map(|t| t.unix_timestamp())
                .unwrap_or(0);
            json!({
                "Id": if index + 1 == count { image.id.clone() } else { "<missing>".to_string() },
                "Created": created_s,
                "CreatedBy": step.created_by,
                "Tags": if index + 1 == count { json!(image.tags.iter().collect::<Vec<_>>()) } else { Value::Null },
                "Size": step.size_bytes,
                "Comment": step.comment,
            })
        })
        .collect();
    Ok(Json(Value::Array(rows)))
}

pub async fn remove(
    State(state): State<DockerState>,
    Path(name): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let image = find(&state, &name)?;
    let force = flag(&query, "force");
    let normalized = normalize_reference(&name);
    let by_tag = image.tags.contains(&normalized);
    let mut results = Vec::new();
    if by_tag && image.tags.len() > 1 {
        state.execute(Command::UntagImage { reference: normalized.clone() }).await?;
        return Ok(Json(json!([{ "Untagged": normalized }])).into_response());
    }
    if !by_tag && image.tags.len() > 1 && !force {
        return Err(ApiError::conflict(format!(
            "conflict: unable to delete {} (must be forced) - image is referenced in multiple repositories",
            super::util::short_id(&image.id)
        )));
    }
    let user = state.views.read(|views| {
        views.containers.values().find(|c| c.image_id == image.id).map(|c| (c.id.clone(), matches!(c.state.as_str(), "running" | "paused")))
    });
    if let Some((container, running)) = user {
        if running {
            return Err(ApiError::conflict(format!(
                "conflict: unable to delete {} (cannot be forced) - image is being used by running container {}",
                super::util::short_id(&image.id),
                super::util::short_id(&container)
            )));
        }
        if !force {
            return Err(ApiError::conflict(format!(
                "conflict: unable to delete {} (must be forced) - image is being used by stopped container {}",
                if by_tag { name.clone() } else { super::util::short_id(&image.id).to_string() },
                super::util::short_id(&container)
            )));
        }
    }
    for tag in &image.tags {
        results.push(json!({ "Untagged": tag }));
    }
    state.execute(Command::RemoveImage { id: image.id.clone(), force }).await?;
    if let Some(port) = state.images.clone() {
        let id = image.id.clone();
        if let Ok(Err(message)) = tokio::task::spawn_blocking(move || port.remove(&id)).await {
            tracing::warn!(image = %image.id, %message, "the image's blobs could not be removed");
        }
    }
    results.push(json!({ "Deleted": image.id }));
    Ok(Json(Value::Array(results)).into_response())
}

async fn register(state: &DockerState, stored: &super::ports::StoredImageInfo) -> Result<(), ApiError> {
    state
        .execute(Command::RegisterImage {
            id: stored.id.clone(),
            reference_tags: stored.repo_tags.clone(),
            size_bytes: stored.size_bytes,
            layer_digests: stored.layer_digests.clone(),
        })
        .await?;
    Ok(())
}

/// `POST /images/create`: `fromSrc=-` imports the body; `fromImage` can only
/// confirm an image that is already here.
pub async fn create(State(state): State<DockerState>, RawQuery(raw): RawQuery, body: Bytes) -> Result<Response, ApiError> {
    let pairs: Vec<(String, String)> = serde_urlencoded_pairs(raw.as_deref().unwrap_or(""));
    let get = |name: &str| pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    if let Some(source) = get("fromSrc") {
        if source != "-" {
            return Err(ApiError::bad_request("importing from a URL is not supported: send the tarball in the request body (fromSrc=-)"));
        }
        let port = image_port(&state)?;
        let changes: Vec<String> = pairs.iter().filter(|(k, _)| k == "changes").map(|(_, v)| v.clone()).collect();
        let message = get("message").unwrap_or_default();
        let mut stored = tokio::task::spawn_blocking(move || port.import(&mut &body[..], &changes, &message))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?
            .map_err(ApiError::bad_request)?;
        if let Some(repo) = get("repo").filter(|r| !r.is_empty()) {
            let tag = get("tag").filter(|t| !t.is_empty()).unwrap_or_else(|| "latest".into());
            let reference =
                if repo.rsplit('/').next().map(|last| last.contains(':')).unwrap_or(false) { repo } else { format!("{repo}:{tag}") };
            berth_core::model::validate_reference(&reference).map_err(|r| ApiError::bad_request(r.to_string()))?;
            stored.repo_tags = vec![reference];
        }
        register(&state, &stored).await?;
        return Ok(json_lines(vec![json!({ "status": stored.id })]));
    }
    let image = get("fromImage").unwrap_or_default();
    if image.is_empty() {
        return Err(ApiError::bad_request("fromImage or fromSrc is required"));
    }
    let tag = get("tag").filter(|t| !t.is_empty());
    let reference = match &tag {
        Some(tag) if !image.contains('@') => format!("{image}:{tag}"),
        _ => image.clone(),
    };
    let present = state.views.read(|views| views.find_image(&reference).map(|i| i.id.clone()));
    match present {
        Some(_) => Ok(json_lines(vec![
            json!({ "status": format!("Pulling from {image}"), "id": tag.unwrap_or_else(|| "latest".into()) }),
            json!({ "status": format!("Status: Image is up to date for {}", normalize_reference(&reference)) }),
        ])),
        None => Err(ApiError::not_found(format!(
            "pull access denied for {image}: berth has no registry client yet; load the image with `docker load` or `docker import`"
        ))),
    }
}

fn serde_urlencoded_pairs(raw: &str) -> Vec<(String, String)> {
    raw.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(key), percent_decode(value))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let byte = bytes[index];
        if byte == b'+' {
            out.push(b' ');
        } else if byte == b'%' && index + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[index + 1..index + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
            match hex {
                Some(value) => {
                    out.push(value);
                    index += 2;
                }
                None => out.push(b'%'),
            }
        } else {
            out.push(byte);
        }
        index += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub async fn load(
    State(state): State<DockerState>,
    Query(query): Query<HashMap<String, String>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let port = image_port(&state)?;
    let loaded = tokio::task::spawn_blocking(move || port.load(&mut &body[..]))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(ApiError::bad_request)?;
    // `quiet` only silences progress bars, which a load from a request body does not have.
    let _quiet = flag(&query, "quiet");
    let mut lines = Vec::new();
    for image in &loaded {
        register(&state, image).await?;
        if image.repo_tags.is_empty() {
            lines.push(json!({ "stream": format!("Loaded image ID: {}\n", image.id) }));
        }
        for tag in &image.repo_tags {
            lines.push(json!({ "stream": format!("Loaded image: {tag}\n") }));
        }
    }
    Ok(json_lines(lines))
}

fn save(state: &DockerState, images: Vec<(String, Vec<String>)>) -> Result<Response, ApiError> {
    let port = image_port(state)?;
    let mut response = Response::new(super::streams::streamed_body(move |out| port.save(&images, out)));
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-tar"));
    Ok(response)
}

pub async fn save_many(State(state): State<DockerState>, RawQuery(raw): RawQuery) -> Result<Response, ApiError> {
    let names: Vec<String> =
        serde_urlencoded_pairs(raw.as_deref().unwrap_or("")).into_iter().filter(|(k, _)| k == "names").map(|(_, v)| v).collect();
    if names.is_empty() {
        return Err(ApiError::bad_request("names is required"));
    }
    let mut images: Vec<(String, Vec<String>)> = Vec::new();
    for name in names {
        let image = find(&state, &name)?;
        let tags = if image.tags.contains(&normalize_reference(&name)) { vec![normalize_reference(&name)] } else { Vec::new() };
        match images.iter_mut().find(|(id, _)| *id == image.id) {
            Some((_, existing)) => existing.extend(tags),
            None => images.push((image.id, tags)),
        }
    }
    save(&state, images)
}

pub async fn prune(State(state): State<DockerState>, Query(query): Query<HashMap<String, String>>) -> Result<Json<Value>, ApiError> {
    let filters = filters(&query)?;
    check_filter_keys(&filters, &["dangling", "label", "until"])?;
    let dangling_only = filters.get("dangling").map(|d| !d.iter().any(|v| v == "false" || v == "0")).unwrap_or(true);
    let candidates: Vec<ImageView> = state.views.read(|views| {
        views
            .images
            .values()
            .filter(|i| !dangling_only || i.tags.is_empty())
            .filter(|i| !views.containers.values().any(|c| c.image_id == i.id))
            .cloned()
            .collect()
    });
    let mut deleted = Vec::new();
    let mut reclaimed = 0u64;
    for image in candidates {
        if state.execute(Command::RemoveImage { id: image.id.clone(), force: false }).await.is_err() {
            continue;
        }
        if let Some(port) = state.images.clone() {
            let id = image.id.clone();
            let _ = tokio::task::spawn_blocking(move || port.remove(&id)).await;
        }
        for tag in &image.tags {
            deleted.push(json!({ "Untagged": tag }));
        }
        deleted.push(json!({ "Deleted": image.id }));
        reclaimed += image.size_bytes;
    }
    Ok(Json(json!({ "ImagesDeleted": if deleted.is_empty() { Value::Null } else { json!(deleted) }, "SpaceReclaimed": reclaimed })))
}
