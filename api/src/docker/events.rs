//! `GET /events`: Docker events served from the log, past ones included.
//!
//! The handler folds the log from position 0 (names and images of containers
//! are needed to describe later events), emits the events inside
//! `since`..`until` that pass the filters, and then follows live commits.

use super::errors::ApiError;
use super::util::{filters, parse_time_ms};
use super::DockerState;
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{header, HeaderValue};
use axum::response::Response;
use berth_core::{DomainEvent, Position, RecordedEvent, StreamKind};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// Events read per batch from the log.
const BATCH_EVENT_COUNT_MAX: usize = 1024;

#[derive(Default)]
struct Context {
    containers: HashMap<String, (String, String)>,
    networks: HashMap<String, String>,
    stop_requested: HashMap<String, bool>,
}

/// One Docker event: (type, action, actor id, attributes).
type DockerEvent = (&'static str, String, String, BTreeMap<String, String>);

fn translate(context: &mut Context, recorded: &RecordedEvent) -> Vec<DockerEvent> {
    let key = recorded.stream.key.clone();
    let container_attributes = |context: &Context, id: &str| {
        let mut attributes = BTreeMap::new();
        if let Some((name, image)) = context.containers.get(id) {
            attributes.insert("name".to_string(), name.clone());
            attributes.insert("image".to_string(), image.clone());
        }
        attributes
    };
    match (&recorded.event, recorded.stream.kind) {
        (DomainEvent::ContainerCreated { name, spec, .. }, _) => {
            context.containers.insert(key.clone(), (name.clone(), spec.image.clone()));
            let mut attributes = container_attributes(context, &key);
            attributes.extend(spec.labels.clone());
            vec![("container", "create".into(), key, attributes)]
        }
        (DomainEvent::ContainerStarted { .. }, _) => {
            context.stop_requested.insert(key.clone(), false);
            vec![("container", "start".into(), key.clone(), container_attributes(context, &key))]
        }
        (DomainEvent::ContainerStopRequested { .. }, _) => {
            context.stop_requested.insert(key.clone(), true);
            Vec::new()
        }
        (DomainEvent::ContainerKilled { signal }, _) => {
            let mut attributes = container_attributes(context, &key);
            attributes.insert("signal".into(), signal.trim_start_matches("SIG").to_string());
            vec![("container", "kill".into(), key, attributes)]
        }
        (DomainEvent::ContainerExited { exit_code, .. }, _) => {
            let mut attributes = container_attributes(context, &key);
            attributes.insert("exitCode".into(), exit_code.to_string());
            let mut events = vec![("container", "die".into(), key.clone(), attributes)];
            if context.stop_requested.insert(key.clone(), false) == Some(true) {
                events.push(("container", "stop".into(), key.clone(), container_attributes(context, &key)));
            }
            events
        }
        (DomainEvent::ContainerPaused, _) => vec![("container", "pause".into(), key.clone(), container_attributes(context, &key))],
        (DomainEvent::ContainerUnpaused, _) => vec![("container", "unpause".into(), key.clone(), container_attributes(context, &key))],
        (DomainEvent::ContainerUpdated { .. }, _) => vec![("container", "update".into(), key.clone(), container_attributes(context, &key))],
        (DomainEvent::ContainerRenamed { old_name, new_name }, _) => {
            if let Some(entry) = context.containers.get_mut(&key) {
                entry.0 = new_name.clone();
            }
            let mut attributes = container_attributes(context, &key);
            attributes.insert("oldName".into(), format!("/{old_name}"));
            vec![("container", "rename".into(), key, attributes)]
        }
        (DomainEvent::ContainerRemoved, _) => {
            let attributes = container_attributes(context, &key);
            context.containers.remove(&key);
            vec![("container", "destroy".into(), key, attributes)]
        }
        (DomainEvent::ImageRegistered { reference_tags, .. }, _) => {
            let mut attributes = BTreeMap::new();
            attributes.insert("name".into(), reference_tags.first().cloned().unwrap_or_else(|| key.clone()));
            vec![("image", "load".into(), key, attributes)]
        }
        (DomainEvent::ImageTagged { reference }, _) => {
            vec![("image", "tag".into(), key, BTreeMap::from([("name".to_string(), reference.clone())]))]
        }
        (DomainEvent::ImageUntagged { reference }, _) => {
            vec![("image", "untag".into(), key, BTreeMap::from([("name".to_string(), reference.clone())]))]
        }
        (DomainEvent::ImageRemoved, _) => vec![("image", "delete".into(), key.clone(), BTreeMap::from([("name".to_string(), key)]))],
        (DomainEvent::VolumeCreated { driver, .. }, _) => {
            vec![("volume", "create".into(), key, BTreeMap::from([("driver".to_string(), driver.clone())]))]
        }
        (DomainEvent::VolumeRemoved, _) => {
            vec![("volume", "destroy".into(), key, BTreeMap::from([("driver".to_string(), "local".to_string())]))]
        }
        (DomainEvent::NetworkCreated { name, driver, .. }, _) => {
            context.networks.insert(key.clone(), name.clone());
            vec![(
                "network",
                "create".into(),
                key,
                BTreeMap::from([("name".to_string(), name.clone()), ("type".to_string(), driver.clone())]),
            )]
        }
        (DomainEvent::NetworkRemoved, _) => {
            let name = context.networks.remove(&key).unwrap_or_default();
            vec![(
                "network",
                "destroy".into(),
                key,
                BTreeMap::from([("name".to_string(), name), ("type".to_string(), "bridge".to_string())]),
            )]
        }
        (DomainEvent::NetworkContainerConnected { container_id, .. }, StreamKind::Network) => {
            let name = context.networks.get(&key).cloned().unwrap_or_default();
            vec![(
                "network",
                "connect".into(),
                key,
                BTreeMap::from([
                    ("container".to_string(), container_id.clone()),
                    ("name".to_string(), name),
                    ("type".to_string(), "bridge".to_string()),
                ]),
            )]
        }
        (DomainEvent::NetworkContainerDisconnected { container_id }, StreamKind::Network) => {
            let name = context.networks.get(&key).cloned().unwrap_or_default();
            vec![(
                "network",
                "disconnect".into(),
                key,
                BTreeMap::from([
                    ("container".to_string(), container_id.clone()),
                    ("name".to_string(), name),
                    ("type".to_string(), "bridge".to_string()),
                ]),
            )]
        }
        _ => Vec::new(),
    }
}

fn passes(filters: &BTreeMap<String, Vec<String>>, event: &DockerEvent) -> bool {
    let (kind, action, id, attributes) = event;
    let name = attributes.get("name").cloned().unwrap_or_default();
    for (key, values) in filters {
        let ok = match key.as_str() {
            "type" => values.iter().any(|v| v == kind),
            "event" | "action" => values.iter().any(|v| v == action),
            "container" => *kind == "container" && values.iter().any(|v| id.starts_with(v.as_str()) || &name == v),
            "image" => values.iter().any(|v| attributes.get("image") == Some(v) || (*kind == "image" && (id == v || &name == v))),
            "volume" => *kind == "volume" && values.iter().any(|v| id == v),
            "network" => *kind == "network" && values.iter().any(|v| id.starts_with(v.as_str()) || &name == v),
            "label" => values.iter().all(|v| match v.split_once('=') {
                Some((k, val)) => attributes.get(k).map(String::as_str) == Some(val),
                None => attributes.contains_key(v),
            }),
            "scope" => values.iter().any(|v| v == "local"),
            _ => true,
        };
        if !ok {
            return false;
        }
    }
    true
}

fn event_json(event: &DockerEvent, time_ms: u64) -> Value {
    let (kind, action, id, attributes) = event;
    let mut value = Map::new();
    if *kind == "container" {
        value.insert("status".into(), json!(action));
        value.insert("id".into(), json!(id));
        if let Some(image) = attributes.get("image") {
            value.insert("from".into(), json!(image));
        }
    }
    value.insert("Type".into(), json!(kind));
    value.insert("Action".into(), json!(action));
    value.insert("Actor".into(), json!({ "ID": id, "Attributes": attributes }));
    value.insert("scope".into(), json!("local"));
    value.insert("time".into(), json!(time_ms / 1000));
    value.insert("timeNano".into(), json!(u128::from(time_ms) * 1_000_000));
    Value::Object(value)
}

pub async fn events(State(state): State<DockerState>, Query(query): Query<HashMap<String, String>>) -> Result<Response, ApiError> {
    let filters = filters(&query)?;
    for key in filters.keys() {
        if !matches!(
            key.as_str(),
            "type"
                | "event"
                | "action"
                | "container"
                | "image"
                | "volume"
                | "network"
                | "label"
                | "scope"
                | "daemon"
                | "plugin"
                | "node"
                | "service"
                | "secret"
                | "config"
        ) {
            return Err(ApiError::bad_request(format!("invalid filter '{key}'")));
        }
    }
    let since_ms = query.get("since").filter(|s| !s.is_empty()).map(|s| parse_time_ms(s)).transpose()?;
    let until_ms = query.get("until").filter(|s| !s.is_empty()).map(|s| parse_time_ms(s)).transpose()?;
    // Without `since`, Docker streams only what happens from now on.
    let start_ms = since_ms.unwrap_or_else(|| state.now_ms());
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(64);
    let log = state.log.clone();
    let views = state.views.clone();
    let clock_state = state.clone();
    tokio::spawn(async move {
        let mut context = Context::default();
        let mut position = Position(0);
        let mut changes = views.subscribe();
        loop {
            let batch = {
                let log = log.clone();
                tokio::task::spawn_blocking(move || log.read_all(position, BATCH_EVENT_COUNT_MAX)).await
            };
            let batch = match batch {
                Ok(Ok(batch)) => batch,
                _ => return,
            };
            for recorded in &batch {
                position = recorded.position;
                if let Some(until) = until_ms {
                    if recorded.recorded_at_ms > until {
                        return;
                    }
                }
                for event in translate(&mut context, recorded) {
                    if recorded.recorded_at_ms >= start_ms && passes(&filters, &event) {
                        let line = format!("{}\n", event_json(&event, recorded.recorded_at_ms));
                        if sender.send(Ok(Bytes::from(line))).await.is_err() {
                            return;
                        }
                    }
                }
            }
            if batch.is_empty() {
                if let Some(until) = until_ms {
                    if clock_state.now_ms() >= until {
                        return;
                    }
                }
                let wait = tokio::time::timeout(Duration::from_millis(500), changes.changed());
                tokio::select! {
                    _ = wait => {}
                    _ = sender.closed() => return,
                }
            }
        }
    });
    let mut receiver = receiver;
    let stream = futures_util::stream::poll_fn(move |context| receiver.poll_recv(context));
    let mut response = Response::new(Body::from_stream(stream));
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(response)
}
