//! Endpoints that stream: wait, logs, attach and exec (over hijacked
//! connections), plus the container I/O reads and writes (top, stats,
//! update, changes, export, archive).
//!
//! Attach reads the container's durable log rather than a live pipe, so a
//! client that attaches before `start` sees every byte of a short command;
//! stdin goes to the runtime's stdin of the running container.

use super::containers::{find, parse_body, wait_until};
use super::errors::ApiError;
use super::ports::{ContainerPort, ExecSession, LogEntry, OutputStream};
use super::util::{flag, parse_time_ms, rfc3339_ms, rfc3339_ns};
use super::DockerState;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use berth_core::Command;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How often a follower of a log looks for new lines.
const LOG_POLL_MS: u64 = 10;
/// Buffer size for copying a client's stdin.
const STDIN_CHUNK_BYTES: usize = 32 * 1024;

fn container_port(state: &DockerState) -> Result<Arc<dyn ContainerPort>, ApiError> {
    state.containers.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            state.no_runtime_reason.clone().unwrap_or_else(|| "this endpoint has no container runtime".to_string()),
        )
    })
}

/// Docker's multiplexed stream frame: `[stream, 0, 0, 0, size u32 BE] ++ payload`.
pub fn frame(stream: u8, payload: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(payload.len() + 8);
    bytes.extend_from_slice(&[stream, 0, 0, 0]);
    bytes.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    bytes.extend_from_slice(payload);
    bytes
}

fn stream_byte(stream: OutputStream) -> u8 {
    match stream {
        OutputStream::Stdout => 1,
        OutputStream::Stderr => 2,
    }
}

fn encode_entry(entry: &LogEntry, tty: bool, timestamps: bool) -> Vec<u8> {
    let mut payload = Vec::with_capacity(entry.bytes.len() + 32);
    if timestamps {
        payload.extend_from_slice(rfc3339_ns(entry.time_unix_ns).as_bytes());
        payload.push(b' ');
    }
    payload.extend_from_slice(&entry.bytes);
    if tty {
        payload
    } else {
        frame(stream_byte(entry.stream), &payload)
    }
}

fn stream_content_type(tty: bool) -> &'static str {
    if tty {
        "application/vnd.docker.raw-stream"
    } else {
        "application/vnd.docker.multiplexed-stream"
    }
}

// ---- wait ----------------------------------------------------------------

pub async fn wait(
    State(state): State<DockerState>,
    Path(reference): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let container = find(&state, &reference)?;
    let condition = query.get("condition").cloned().unwrap_or_else(|| "not-running".into());
    if !matches!(condition.as_str(), "not-running" | "next-exit" | "removed") {
        return Err(ApiError::bad_request(format!("invalid condition: \"{condition}\"")));
    }
    let id = container.id.clone();
    let finished_before = container.finished_ms;
    let generation_before = container.generation;
    let exit_code = Arc::new(Mutex::new(container.exit_code));
    let body = futures_util::stream::once(async move {
        let seen = exit_code.clone();
        let done = move |view: Option<&berth_projections::ContainerView>| -> bool {
            match view {
                None => true,
                Some(c) => {
                    *seen.lock() = c.exit_code;
                    let exited = c.state == "exited" || c.state == "created";
                    match condition.as_str() {
                        "not-running" => exited && !(c.state == "created" && c.generation > generation_before),
                        "next-exit" => c.state == "exited" && (c.finished_ms != finished_before || c.generation > generation_before),
                        _ => false,
                    }
                }
            }
        };
        // Bounded by a day: a wait is a long poll, but never an endless one.
        let finished = wait_until(&state, &id, Duration::from_secs(24 * 3600), done).await;
        let mut code = *exit_code.lock();
        let gone = state.views.read(|views| !views.containers.contains_key(&id));
        if gone {
            // The exit and the removal may reach the views in one step (`--rm`):
            // the exit code then comes from the container's own stream.
            let log = state.log.clone();
            let stream = berth_core::StreamId::new(berth_core::StreamKind::Container, id.clone());
            let recorded = tokio::task::spawn_blocking(move || log.read_stream(&stream, berth_core::StreamVersion(0), usize::MAX)).await;
            if let Ok(Ok(events)) = recorded {
                if let Some(last_exit) = events.iter().rev().find_map(|e| match &e.event {
                    berth_core::DomainEvent::ContainerExited { exit_code, .. } => Some(*exit_code),
                    _ => None,
                }) {
                    code = last_exit;
                }
            }
        }
        let line = if finished {
            json!({ "StatusCode": code, "Error": null })
        } else {
            json!({ "StatusCode": -1, "Error": { "Message": "wait timed out" } })
        };
        Ok::<_, std::io::Error>(Bytes::from(format!("{line}\n")))
    });
    let mut response = Response::new(Body::from_stream(body));
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(response)
}

// ---- logs ----------------------------------------------------------------

struct LogOptions {
    stdout: bool,
    stderr: bool,
    since_ns: i128,
    until_ns: Option<i128>,
    timestamps: bool,
    tail: Option<usize>,
    follow: bool,
}

fn log_options(query: &HashMap<String, String>) -> Result<LogOptions, ApiError> {
    let tail = match query.get("tail").map(String::as_str) {
        None | Some("all") | Some("") => None,
        Some(text) => Some(text.parse::<i64>().map_err(|_| ApiError::bad_request(format!("invalid tail {text:?}")))?.max(0) as usize),
    };
    let time_ns = |name: &str| -> Result<Option<i128>, ApiError> {
        match query.get(name).filter(|t| !t.is_empty() && *t != "0") {
            Some(text) => Ok(Some(i128::from(parse_time_ms(text)?) * 1_000_000)),
            None => Ok(None),
        }
    };
    Ok(LogOptions {
        stdout: flag(query, "stdout"),
        stderr: flag(query, "stderr"),
        since_ns: time_ns("since")?.unwrap_or(0),
        until_ns: time_ns("until")?,
        timestamps: flag(query, "timestamps"),
        tail,
        follow: flag(query, "follow"),
    })
}

fn wanted(entry: &LogEntry, options: &LogOptions) -> bool {
    let stream_ok = match entry.stream {
        OutputStream::Stdout => options.stdout,
        OutputStream::Stderr => options.stderr,
    };
    stream_ok && entry.time_unix_ns >= options.since_ns && options.until_ns.map(|u| entry.time_unix_ns <= u).unwrap_or(true)
}

pub async fn logs(
    State(state): State<DockerState>,
    Path(reference): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let container = find(&state, &reference)?;
    let options = log_options(&query)?;
    if !options.stdout && !options.stderr {
        return Err(ApiError::bad_request("You must choose at least one stream"));
    }
    let port = container_port(&state)?;
    let tty = container.spec.tty;
    let id = container.id.clone();
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(64);
    tokio::spawn(async move {
        let first = {
            let port = port.clone();
            let id = id.clone();
            tokio::task::spawn_blocking(move || port.read_log(&id, 0)).await
        };
        let (mut entries, mut offset) = match first {
            Ok(Ok(read)) => read,
            _ => (Vec::new(), 0),
        };
        entries.retain(|entry| wanted(entry, &options));
        if let Some(tail) = options.tail {
            let skip = entries.len().saturating_sub(tail);
            entries.drain(..skip);
        }
        for entry in &entries {
            if sender.send(Ok(Bytes::from(encode_entry(entry, tty, options.timestamps)))).await.is_err() {
                return;
            }
        }
        if !options.follow {
            return;
        }
        loop {
            let running = state.views.read(|views| views.containers.get(&id).map(|c| matches!(c.state.as_str(), "running" | "paused")));
            let read = {
                let port = port.clone();
                let id = id.clone();
                tokio::task::spawn_blocking(move || port.read_log(&id, offset)).await
            };
            let Ok(Ok((entries, next))) = read else { return };
            offset = next;
            let empty = entries.is_empty();
            for entry in entries.iter().filter(|entry| wanted(entry, &options)) {
                if sender.send(Ok(Bytes::from(encode_entry(entry, tty, options.timestamps)))).await.is_err() {
                    return;
                }
            }
            if empty && running != Some(true) {
                return;
            }
            if empty {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(LOG_POLL_MS * 5)) => {}
                    _ = sender.closed() => return,
                }
            }
        }
    });
    let mut response = Response::new(Body::from_stream(tokio_stream_from(receiver)));
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(stream_content_type(tty)));
    Ok(response)
}

fn tokio_stream_from(
    mut receiver: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send {
    futures_util::stream::poll_fn(move |context| receiver.poll_recv(context))
}

// ---- attach --------------------------------------------------------------

fn wants_upgrade(request: &Request) -> bool {
    request.headers().get(header::UPGRADE).is_some()
}

fn upgraded_response(tty: bool) -> Response {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(stream_content_type(tty)));
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("tcp"));
    response
}

/// Streams the container's output from `offset` until the run it is attached to ends.
async fn pump_output(
    state: DockerState,
    port: Arc<dyn ContainerPort>,
    id: String,
    mut offset: u64,
    target_generation: u64,
    tty: bool,
    options: (bool, bool),
    sender: tokio::sync::mpsc::Sender<Vec<u8>>,
) {
    let (stdout, stderr) = options;
    loop {
        let (gone, finished) = state.views.read(|views| match views.containers.get(&id) {
            None => (true, true),
            Some(c) => (false, c.state == "exited" && c.generation >= target_generation),
        });
        let read = {
            let port = port.clone();
            let id = id.clone();
            tokio::task::spawn_blocking(move || port.read_log(&id, offset)).await
        };
        let (entries, next) = match read {
            Ok(Ok(read)) => read,
            _ => (Vec::new(), offset),
        };
        offset = next;
        let empty = entries.is_empty();
        for entry in entries {
            let keep = match entry.stream {
                OutputStream::Stdout => stdout,
                OutputStream::Stderr => stderr,
            };
            if keep && sender.send(encode_entry(&entry, tty, false)).await.is_err() {
                return;
            }
        }
        if empty && (gone || finished) {
            return;
        }
        if empty {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(LOG_POLL_MS)) => {}
                _ = sender.closed() => return,
            }
        }
    }
}

pub async fn attach(
    State(state): State<DockerState>,
    Path(reference): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    mut request: Request,
) -> Result<Response, ApiError> {
    let container = find(&state, &reference)?;
    let port = container_port(&state)?;
    let tty = container.spec.tty;
    let id = container.id.clone();
    let running = matches!(container.state.as_str(), "running" | "paused");
    let target_generation = if running { container.generation } else { container.generation + 1 };
    let offset = if flag(&query, "logs") { 0 } else { port.log_end(&id) };
    let want_stdin = flag(&query, "stdin") && container.spec.open_stdin;
    let options = (flag(&query, "stdout"), flag(&query, "stderr"));
    let stream_output = flag(&query, "stream") || flag(&query, "logs");
    let (sender, mut receiver) = tokio::sync::mpsc::channel::<Vec<u8>>(64);
    if stream_output {
        tokio::spawn(pump_output(state.clone(), port.clone(), id.clone(), offset, target_generation, tty, options, sender));
    } else {
        drop(sender);
    }

    if !wants_upgrade(&request) {
        return Ok(output_response(receiver, tty));
    }
    let upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let (mut reader, mut writer) = tokio::io::split(TokioIo::new(upgraded));
        if want_stdin {
            let state = state.clone();
            let port = port.clone();
            let id = id.clone();
            tokio::spawn(async move { copy_stdin_to_container(state, port, id, &mut reader).await });
        }
        while let Some(bytes) = receiver.recv().await {
            if writer.write_all(&bytes).await.is_err() {
                return;
            }
            let _ = writer.flush().await;
        }
        let _ = writer.shutdown().await;
    });
    Ok(upgraded_response(tty))
}

/// Copies a client's stdin into the running container; closes it on EOF.
async fn copy_stdin_to_container(
    state: DockerState,
    port: Arc<dyn ContainerPort>,
    id: String,
    reader: &mut (impl tokio::io::AsyncRead + Unpin),
) {
    // Wait (bounded) for the process to exist: attach usually precedes start.
    let started = wait_until(&state, &id, Duration::from_secs(60), |c| c.map(|c| c.state != "created").unwrap_or(true)).await;
    if !started || state.await_started(&id, Duration::from_secs(30)).await.is_err() {
        return;
    }
    let writer = {
        let port = port.clone();
        let id = id.clone();
        tokio::task::spawn_blocking(move || port.stdin(&id)).await
    };
    let Ok(Ok(Some(writer))) = writer else { return };
    pump_stdin(reader, writer).await;
}

/// Copies a client's bytes into a process's stdin until the client's EOF,
/// then drops the writer, which closes the stdin as Docker does.
async fn pump_stdin(reader: &mut (impl tokio::io::AsyncRead + Unpin), writer: Box<dyn Write + Send>) {
    let writer = Arc::new(Mutex::new(Some(writer)));
    let mut buffer = vec![0u8; STDIN_CHUNK_BYTES];
    loop {
        let count = match reader.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(count) => count,
        };
        let chunk = buffer[..count].to_vec();
        let writer = writer.clone();
        let written = tokio::task::spawn_blocking(move || {
            writer.lock().as_mut().map(|w| w.write_all(&chunk).and_then(|_| w.flush())).unwrap_or(Ok(()))
        })
        .await;
        if !matches!(written, Ok(Ok(()))) {
            break;
        }
    }
    writer.lock().take();
}

pub async fn resize(
    State(state): State<DockerState>,
    Path(reference): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let container = find(&state, &reference)?;
    let (height, width) = dimensions(&query)?;
    if !matches!(container.state.as_str(), "running" | "paused") {
        return Err(ApiError::conflict(format!("Container {} is not running", container.id)));
    }
    let port = container_port(&state)?;
    let id = container.id.clone();
    tokio::task::spawn_blocking(move || port.resize(&id, width, height))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(ApiError::internal)?;
    Ok(StatusCode::OK.into_response())
}

fn dimensions(query: &HashMap<String, String>) -> Result<(u16, u16), ApiError> {
    let parse = |name: &str| -> Result<u16, ApiError> {
        query.get(name).map(|v| v.parse::<u16>().map_err(|_| ApiError::bad_request(format!("invalid {name} {v:?}")))).unwrap_or(Ok(0))
    };
    Ok((parse("h")?, parse("w")?))
}

// ---- exec ----------------------------------------------------------------

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct ExecCreateBody {
    attach_stdin: Option<bool>,
    tty: Option<bool>,
    cmd: Option<Vec<String>>,
    env: Option<Vec<String>>,
    working_dir: Option<String>,
    user: Option<String>,
    privileged: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct ExecStartBody {
    detach: Option<bool>,
}

/// One exec instance, as `docker exec` and `/exec/{id}/json` see it.
pub struct ExecInstance {
    container_id: String,
    cmd: Vec<String>,
    env: Vec<String>,
    working_dir: String,
    user: String,
    tty: bool,
    stdin: bool,
    privileged: bool,
    running: bool,
    started: bool,
    exit_code: Option<i64>,
    pid: u32,
    resizer: Option<Arc<dyn Fn(u16, u16) -> Result<(), String> + Send + Sync>>,
}

/// The exec instances of this endpoint; they live as long as the process, as in Docker.
#[derive(Default)]
pub struct ExecRegistry {
    instances: Mutex<HashMap<String, ExecInstance>>,
}

pub async fn exec_create(State(state): State<DockerState>, Path(reference): Path<String>, body: Bytes) -> Result<Response, ApiError> {
    let container = find(&state, &reference)?;
    let body: ExecCreateBody = parse_body(&body)?;
    let cmd = body.cmd.unwrap_or_default();
    if cmd.is_empty() {
        return Err(ApiError::bad_request("No exec command specified"));
    }
    match container.state.as_str() {
        "running" => {}
        "paused" => return Err(ApiError::conflict(format!("Container {} is paused, unpause the container before exec", container.id))),
        _ => return Err(ApiError::conflict(format!("container {} is not running", container.id))),
    }
    container_port(&state)?;
    let id = state.random_hex();
    state.exec_sessions.instances.lock().insert(
        id.clone(),
        ExecInstance {
            container_id: container.id.clone(),
            cmd,
            env: body.env.unwrap_or_default(),
            working_dir: body.working_dir.unwrap_or_default(),
            user: body.user.unwrap_or_default(),
            tty: body.tty.unwrap_or(false),
            stdin: body.attach_stdin.unwrap_or(false),
            privileged: body.privileged.unwrap_or(false),
            running: false,
            started: false,
            exit_code: None,
            pid: 0,
            resizer: None,
        },
    );
    Ok((StatusCode::CREATED, Json(json!({ "Id": id }))).into_response())
}

pub async fn exec_start(State(state): State<DockerState>, Path(exec_id): Path<String>, mut request: Request) -> Result<Response, ApiError> {
    let body =
        axum::body::to_bytes(std::mem::take(request.body_mut()), 1024 * 1024).await.map_err(|e| ApiError::bad_request(e.to_string()))?;
    let start: ExecStartBody = parse_body(&body)?;
    let (container_id, cmd, env, working_dir, user, tty, want_stdin) = {
        let mut instances = state.exec_sessions.instances.lock();
        let instance = instances.get_mut(&exec_id).ok_or_else(|| ApiError::not_found(format!("No such exec instance: {exec_id}")))?;
        if instance.started {
            return Err(ApiError::conflict(format!("Error: Exec command {exec_id} has already run")));
        }
        instance.started = true;
        instance.running = true;
        (
            instance.container_id.clone(),
            instance.cmd.clone(),
            instance.env.clone(),
            instance.working_dir.clone(),
            instance.user.clone(),
            instance.tty,
            instance.stdin,
        )
    };
    let running = state.views.read(|views| views.containers.get(&container_id).map(|c| c.state == "running").unwrap_or(false));
    if !running {
        state.exec_sessions.instances.lock().remove(&exec_id);
        return Err(ApiError::conflict(format!("container {container_id} is not running")));
    }
    let port = container_port(&state)?;
    let session = {
        let port = port.clone();
        let container_id = container_id.clone();
        tokio::task::spawn_blocking(move || port.exec(&container_id, &cmd, &env, &working_dir, &user, tty, want_stdin))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?
    };
    let session = match session {
        Ok(session) => session,
        Err(message) => {
            if let Some(instance) = state.exec_sessions.instances.lock().get_mut(&exec_id) {
                instance.running = false;
                instance.exit_code = Some(126);
            }
            return Err(ApiError::internal(message));
        }
    };
    {
        let mut instances = state.exec_sessions.instances.lock();
        if let Some(instance) = instances.get_mut(&exec_id) {
            instance.pid = session.pid;
            instance.resizer = session.resizer.as_ref().map(|_| None).unwrap_or(None);
        }
    }
    let ExecSession { stdin, outputs, waiter, resizer, .. } = session;
    if let Some(resizer) = resizer {
        let resizer: Arc<dyn Fn(u16, u16) -> Result<(), String> + Send + Sync> = Arc::from(resizer);
        if let Some(instance) = state.exec_sessions.instances.lock().get_mut(&exec_id) {
            instance.resizer = Some(resizer);
        }
    }
    let (sender, mut receiver) = tokio::sync::mpsc::channel::<Vec<u8>>(64);
    let mut readers = Vec::new();
    for (stream, mut reader) in outputs {
        let sender = sender.clone();
        readers.push(tokio::task::spawn_blocking(move || {
            let mut buffer = vec![0u8; STDIN_CHUNK_BYTES];
            loop {
                match std::io::Read::read(&mut reader, &mut buffer) {
                    Ok(0) | Err(_) => break,
                    Ok(count) => {
                        let bytes = if tty { buffer[..count].to_vec() } else { frame(stream_byte(stream), &buffer[..count]) };
                        if sender.blocking_send(bytes).is_err() {
                            break;
                        }
                    }
                }
            }
        }));
    }
    drop(sender);
    let registry = state.exec_sessions.clone();
    let exec_for_waiter = exec_id.clone();
    let finished = tokio::spawn(async move {
        for reader in readers {
            let _ = reader.await;
        }
        let code = tokio::task::spawn_blocking(waiter).await.ok().and_then(Result::ok).unwrap_or(-1);
        if let Some(instance) = registry.instances.lock().get_mut(&exec_for_waiter) {
            instance.running = false;
            instance.exit_code = Some(code);
        }
    });
    if start.detach.unwrap_or(false) {
        drop(stdin);
        tokio::spawn(async move { while receiver.recv().await.is_some() {} });
        return Ok(StatusCode::OK.into_response());
    }
    if !wants_upgrade(&request) {
        drop(stdin);
        return Ok(output_response(receiver, tty));
    }
    let upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let (mut reader, mut writer) = tokio::io::split(TokioIo::new(upgraded));
        if let Some(stdin) = stdin {
            tokio::spawn(async move { pump_stdin(&mut reader, stdin).await });
        }
        while let Some(bytes) = receiver.recv().await {
            if writer.write_all(&bytes).await.is_err() {
                break;
            }
            let _ = writer.flush().await;
        }
        let _ = finished.await;
        let _ = writer.shutdown().await;
    });
    Ok(upgraded_response(tty))
}

pub async fn exec_resize(
    State(state): State<DockerState>,
    Path(exec_id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let (height, width) = dimensions(&query)?;
    let resizer = {
        let instances = state.exec_sessions.instances.lock();
        let instance = instances.get(&exec_id).ok_or_else(|| ApiError::not_found(format!("No such exec instance: {exec_id}")))?;
        instance.resizer.clone()
    };
    if let Some(resizer) = resizer {
        tokio::task::spawn_blocking(move || resizer(width, height))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?
            .map_err(ApiError::internal)?;
    }
    Ok(StatusCode::OK.into_response())
}

pub async fn exec_inspect(State(state): State<DockerState>, Path(exec_id): Path<String>) -> Result<Json<Value>, ApiError> {
    let instances = state.exec_sessions.instances.lock();
    let instance = instances.get(&exec_id).ok_or_else(|| ApiError::not_found(format!("No such exec instance: {exec_id}")))?;
    Ok(Json(json!({
        "ID": exec_id,
        "Running": instance.running,
        "ExitCode": instance.exit_code,
        "ProcessConfig": {
            "tty": instance.tty,
            "entrypoint": instance.cmd.first(),
            "arguments": instance.cmd.iter().skip(1).collect::<Vec<_>>(),
            "privileged": instance.privileged,
            "user": instance.user,
        },
        "OpenStdin": instance.stdin,
        "OpenStderr": true,
        "OpenStdout": true,
        "CanRemove": false,
        "ContainerID": instance.container_id,
        "DetachKeys": "",
        "Pid": instance.pid,
    })))
}

// ---- top, stats, update, changes, export, archive ------------------------

fn require_running(container: &berth_projections::ContainerView) -> Result<(), ApiError> {
    if matches!(container.state.as_str(), "running" | "paused") {
        Ok(())
    } else {
        Err(ApiError::conflict(format!("container {} is not running", container.id)))
    }
}

pub async fn top(
    State(state): State<DockerState>,
    Path(reference): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let container = find(&state, &reference)?;
    require_running(&container)?;
    let port = container_port(&state)?;
    let ps_args = query.get("ps_args").cloned().unwrap_or_default();
    let id = container.id.clone();
    let table = tokio::task::spawn_blocking(move || port.top(&id, &ps_args))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(ApiError::internal)?;
    Ok(Json(json!({ "Titles": table.titles, "Processes": table.processes })))
}

fn stats_json(
    container: &berth_projections::ContainerView,
    now: &super::ports::ContainerStats,
    before: &super::ports::ContainerStats,
    read_ms: u64,
    preread_ms: u64,
) -> Value {
    let cpu = |s: &super::ports::ContainerStats| {
        json!({
            "cpu_usage": { "total_usage": s.cpu_total_ns, "usage_in_kernelmode": 0, "usage_in_usermode": s.cpu_total_ns },
            "system_cpu_usage": s.system_cpu_ns,
            "online_cpus": s.online_cpus,
            "throttling_data": { "periods": 0, "throttled_periods": 0, "throttled_time": 0 },
        })
    };
    json!({
        "read": rfc3339_ms(read_ms),
        "preread": rfc3339_ms(preread_ms),
        "pids_stats": { "current": now.pids },
        "blkio_stats": {},
        "num_procs": 0,
        "storage_stats": {},
        "cpu_stats": cpu(now),
        "precpu_stats": cpu(before),
        "memory_stats": { "usage": now.memory_usage_bytes, "limit": now.memory_limit_bytes, "stats": {} },
        "name": format!("/{}", container.name),
        "id": container.id,
    })
}

pub async fn stats(
    State(state): State<DockerState>,
    Path(reference): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let container = find(&state, &reference)?;
    let port = container_port(&state)?;
    let stream = query.get("stream").map(|v| v != "0" && v != "false").unwrap_or(true);
    let one_shot = flag(&query, "one-shot");
    let sample = |port: Arc<dyn ContainerPort>, id: String| async move {
        tokio::task::spawn_blocking(move || port.stats(&id)).await.ok().and_then(Result::ok).unwrap_or_default()
    };
    let running = matches!(container.state.as_str(), "running" | "paused");
    if !stream {
        let before = if running && !one_shot { sample(port.clone(), container.id.clone()).await } else { Default::default() };
        let preread_ms = state.now_ms();
        if running && !one_shot {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let now = if running { sample(port.clone(), container.id.clone()).await } else { Default::default() };
        return Ok(Json(stats_json(&container, &now, &before, state.now_ms(), preread_ms)).into_response());
    }
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    tokio::spawn(async move {
        let mut before = Default::default();
        let mut preread_ms = 0;
        loop {
            let running =
                state.views.read(|views| views.containers.get(&container.id).map(|c| matches!(c.state.as_str(), "running" | "paused")));
            let Some(running) = running else { return };
            let now = if running { sample(port.clone(), container.id.clone()).await } else { Default::default() };
            let read_ms = state.now_ms();
            let line = format!("{}\n", stats_json(&container, &now, &before, read_ms, preread_ms));
            if sender.send(Ok(Bytes::from(line))).await.is_err() {
                return;
            }
            before = now;
            preread_ms = read_ms;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    let mut response = Response::new(Body::from_stream(tokio_stream_from(receiver)));
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(response)
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct UpdateBody {
    memory: Option<i64>,
    nano_cpus: Option<i64>,
    cpu_shares: Option<i64>,
    restart_policy: Option<super::containers::RestartPolicyBody>,
}

pub async fn update(State(state): State<DockerState>, Path(reference): Path<String>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let container = find(&state, &reference)?;
    let body: UpdateBody = parse_body(&body)?;
    let memory_bytes = body.memory.unwrap_or(container.spec.host.memory_bytes);
    if memory_bytes != 0 && memory_bytes < 6 * 1024 * 1024 {
        return Err(ApiError::bad_request("Minimum memory limit allowed is 6MB"));
    }
    let nano_cpus = body.nano_cpus.unwrap_or(container.spec.host.nano_cpus);
    let cpu_shares = body.cpu_shares.unwrap_or(container.spec.host.cpu_shares);
    if memory_bytes < 0 || nano_cpus < 0 || cpu_shares < 0 {
        return Err(ApiError::bad_request("resource limits must not be negative"));
    }
    let restart_policy = body.restart_policy.and_then(|p| p.name).unwrap_or_else(|| container.spec.host.restart_policy.clone());
    state.execute(Command::UpdateContainer { id: container.id.clone(), memory_bytes, nano_cpus, cpu_shares, restart_policy }).await?;
    if matches!(container.state.as_str(), "running" | "paused") {
        if let Some(port) = state.containers.clone() {
            let id = container.id.clone();
            tokio::task::spawn_blocking(move || port.update_resources(&id, memory_bytes, nano_cpus, cpu_shares))
                .await
                .map_err(|e| ApiError::internal(e.to_string()))?
                .map_err(ApiError::internal)?;
        }
    }
    Ok(Json(json!({ "Warnings": [] })))
}

pub async fn changes(State(state): State<DockerState>, Path(reference): Path<String>) -> Result<Json<Value>, ApiError> {
    let container = find(&state, &reference)?;
    let port = container_port(&state)?;
    let id = container.id.clone();
    let changes = tokio::task::spawn_blocking(move || port.diff(&id))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(ApiError::internal)?;
    Ok(Json(Value::Array(changes.into_iter().map(|c| json!({ "Path": c.path, "Kind": c.kind })).collect())))
}

/// Runs a blocking writer on its own thread and streams what it writes.
pub(super) fn streamed_body(produce: impl FnOnce(&mut dyn Write) -> Result<(), String> + Send + 'static) -> Body {
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    struct ChannelWriter(tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>);
    impl Write for ChannelWriter {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0
                .blocking_send(Ok(Bytes::copy_from_slice(bytes)))
                .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "client went away"))?;
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    tokio::task::spawn_blocking(move || {
        let mut writer = ChannelWriter(sender.clone());
        if let Err(message) = produce(&mut writer) {
            let _ = sender.blocking_send(Err(std::io::Error::other(message)));
        }
    });
    Body::from_stream(tokio_stream_from(receiver))
}

pub async fn export(State(state): State<DockerState>, Path(reference): Path<String>) -> Result<Response, ApiError> {
    let container = find(&state, &reference)?;
    let port = container_port(&state)?;
    if port.rootfs(&container.id).is_none() {
        return Err(ApiError::conflict(format!("container {} has no root filesystem yet: start it once first", container.id)));
    }
    let id = container.id.clone();
    let mut response = Response::new(streamed_body(move |out| port.export(&id, out)));
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-tar"));
    Ok(response)
}

fn archive_path(query: &HashMap<String, String>) -> Result<String, ApiError> {
    query.get("path").filter(|p| !p.is_empty()).cloned().ok_or_else(|| ApiError::bad_request("path is required"))
}

async fn stat_header(state: &DockerState, reference: &str, path: &str) -> Result<(String, HeaderValue), ApiError> {
    let container = find(state, reference)?;
    let port = container_port(state)?;
    let id = container.id.clone();
    let lookup = path.to_string();
    let stat = tokio::task::spawn_blocking(move || port.archive_stat(&id, &lookup)).await.map_err(|e| ApiError::internal(e.to_string()))?;
    let stat =
        stat.map_err(|message| ApiError::not_found(format!("Could not find the file {path} in container {reference}: {message}")))?;
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(stat.to_string());
    Ok((container.id, HeaderValue::from_str(&encoded).map_err(|e| ApiError::internal(e.to_string()))?))
}

pub async fn archive_head(
    State(state): State<DockerState>,
    Path(reference): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let path = archive_path(&query)?;
    let (_, stat) = stat_header(&state, &reference, &path).await?;
    let mut response = StatusCode::OK.into_response();
    response.headers_mut().insert("x-docker-container-path-stat", stat);
    Ok(response)
}

pub async fn archive_get(
    State(state): State<DockerState>,
    Path(reference): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let path = archive_path(&query)?;
    let (id, stat) = stat_header(&state, &reference, &path).await?;
    let port = container_port(&state)?;
    let mut response = Response::new(streamed_body(move |out| port.archive_get(&id, &path, out)));
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-tar"));
    response.headers_mut().insert("x-docker-container-path-stat", stat);
    Ok(response)
}

pub async fn archive_put(
    State(state): State<DockerState>,
    Path(reference): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let path = archive_path(&query)?;
    let container = find(&state, &reference)?;
    let port = container_port(&state)?;
    let id = container.id.clone();
    let target = path.clone();
    tokio::task::spawn_blocking(move || port.archive_put(&id, &target, &mut &body[..]))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|message| {
            if message.contains("not found") || message.contains("No such file") {
                ApiError::not_found(format!("Could not find the file {path} in container {reference}"))
            } else {
                ApiError::bad_request(message)
            }
        })?;
    Ok(StatusCode::OK.into_response())
}

/// A plain (not upgraded) response streaming a container's output as it comes.
fn output_response(mut receiver: tokio::sync::mpsc::Receiver<Vec<u8>>, tty: bool) -> Response {
    let stream = futures_util::stream::poll_fn(move |context| {
        receiver.poll_recv(context).map(|o| o.map(|bytes| Ok::<_, std::io::Error>(Bytes::from(bytes))))
    });
    let mut response = Response::new(Body::from_stream(stream));
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(stream_content_type(tty)));
    response
}
