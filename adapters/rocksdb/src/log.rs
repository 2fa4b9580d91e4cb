//! [`RocksLog`]: the [`EventLog`] on RocksDB, with one group-committing writer.

use crate::envelope::{decode_envelope, encode_envelope};
use crate::verify::{scan_events, VerifyFailure};
use berth_core::log::{
    AppendCompletion, AppendError, AppendOutcome, AppendRequest, CommitListener, EventLog, ReadError, EVENT_SIZE_BYTES_MAX,
};
use berth_core::{CommandId, Position, RecordedEvent, StreamId, StreamVersion, EVENT_SCHEMA_VERSION};
use parking_lot::{Condvar, Mutex, RwLock};
use rocksdb::{ColumnFamilyDescriptor, Direction, IteratorMode, Options, WriteBatch, WriteOptions, DB};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub(crate) const CF_EVENTS: &str = "events";
pub(crate) const CF_STREAMS: &str = "streams";
pub(crate) const CF_HEADS: &str = "heads";
pub(crate) const CF_COMMANDS: &str = "commands";
pub(crate) const CF_CHECKPOINTS: &str = "checkpoints";
pub(crate) const COLUMN_FAMILIES: [&str; 5] = [CF_EVENTS, CF_STREAMS, CF_HEADS, CF_COMMANDS, CF_CHECKPOINTS];

/// Tunables of the log, each a limit.
#[derive(Debug, Clone)]
pub struct RocksLogOptions {
    /// Appends waiting for the writer; a full queue makes submitters wait.
    pub queue_append_count_max: usize,
    /// Events per group commit.
    pub batch_event_count_max: usize,
    /// Verify every envelope when opening (the default; refuse wrong state).
    pub verify_on_open: bool,
}

impl Default for RocksLogOptions {
    fn default() -> Self {
        RocksLogOptions { queue_append_count_max: 8192, batch_event_count_max: 8192, verify_on_open: true }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot open the log at {path}: {reason}")]
    Storage { path: PathBuf, reason: String },
    #[error("the log at {path} is corrupt at position {position}: {reason}; berth refuses to serve from it (run `berth log verify` for details)")]
    Corrupt { path: PathBuf, position: u64, reason: String },
}

#[derive(Serialize, Deserialize)]
struct StoredOutcome {
    first_position: u64,
    last_position: u64,
    stream_versions: Vec<(String, u64)>,
}

struct Job {
    request: AppendRequest,
    done: AppendCompletion,
}

struct Shared {
    db: DB,
    head: AtomicU64,
    head_lock: Mutex<()>,
    head_changed: Condvar,
    listeners: RwLock<Vec<CommitListener>>,
    stream_heads: RwLock<HashMap<StreamId, u64>>,
    failure: Mutex<Option<String>>,
}

/// The RocksDB event log. Dropping it stops the writer after the queue drains.
pub struct RocksLog {
    shared: Arc<Shared>,
    sender: Mutex<Option<SyncSender<Job>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    path: PathBuf,
}

pub(crate) fn db_options() -> Options {
    let mut options = Options::default();
    options.create_if_missing(true);
    options.create_missing_column_families(true);
    options.set_compression_type(rocksdb::DBCompressionType::None);
    options.set_wal_recovery_mode(rocksdb::DBRecoveryMode::PointInTime);
    options.increase_parallelism(2);
    options
}

pub(crate) fn open_db(path: &Path) -> Result<DB, OpenError> {
    let descriptors = COLUMN_FAMILIES.iter().map(|name| ColumnFamilyDescriptor::new(*name, db_options()));
    DB::open_cf_descriptors(&db_options(), path, descriptors)
        .map_err(|error| OpenError::Storage { path: path.to_path_buf(), reason: error.to_string() })
}

pub(crate) fn stream_key(stream: &str, version: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(stream.len() + 9);
    key.extend_from_slice(stream.as_bytes());
    key.push(0);
    key.extend_from_slice(&version.to_be_bytes());
    key
}

fn storage(error: rocksdb::Error) -> ReadError {
    ReadError::Storage(error.to_string())
}

impl RocksLog {
    pub fn open(path: &Path) -> Result<RocksLog, OpenError> {
        RocksLog::open_with(path, RocksLogOptions::default())
    }

    pub fn open_with(path: &Path, options: RocksLogOptions) -> Result<RocksLog, OpenError> {
        std::fs::create_dir_all(path).map_err(|error| OpenError::Storage { path: path.to_path_buf(), reason: error.to_string() })?;
        let db = open_db(path)?;
        let (head, stream_heads) = if options.verify_on_open {
            let scan = scan_events(&db, true).map_err(|failure| match failure {
                VerifyFailure::Corrupt { position, reason } => OpenError::Corrupt { path: path.to_path_buf(), position, reason },
                VerifyFailure::Storage(reason) => OpenError::Storage { path: path.to_path_buf(), reason },
            })?;
            (scan.head, scan.stream_heads)
        } else {
            load_heads(&db).map_err(|reason| OpenError::Storage { path: path.to_path_buf(), reason })?
        };
        let shared = Arc::new(Shared {
            db,
            head: AtomicU64::new(head),
            head_lock: Mutex::new(()),
            head_changed: Condvar::new(),
            listeners: RwLock::new(Vec::new()),
            stream_heads: RwLock::new(stream_heads),
            failure: Mutex::new(None),
        });
        let (sender, receiver) = sync_channel(options.queue_append_count_max);
        let writer_shared = shared.clone();
        let batch_event_count_max = options.batch_event_count_max;
        let writer = std::thread::Builder::new()
            .name("berth-log-writer".into())
            .spawn(move || run_writer(writer_shared, receiver, batch_event_count_max))
            .map_err(|error| OpenError::Storage { path: path.to_path_buf(), reason: error.to_string() })?;
        Ok(RocksLog { shared, sender: Mutex::new(Some(sender)), writer: Mutex::new(Some(writer)), path: path.to_path_buf() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops accepting appends, lets the queued ones commit, and joins the writer.
    pub fn close(&self) {
        self.sender.lock().take();
        if let Some(writer) = self.writer.lock().take() {
            let _ = writer.join();
        }
    }
}

impl Drop for RocksLog {
    fn drop(&mut self) {
        self.close();
    }
}

fn load_heads(db: &DB) -> Result<(u64, HashMap<StreamId, u64>), String> {
    let events = db.cf_handle(CF_EVENTS).expect("events column family");
    let head = match db.iterator_cf(&events, IteratorMode::End).next() {
        Some(Ok((key, _))) => u64::from_be_bytes(key.as_ref().try_into().map_err(|_| "bad event key".to_string())?),
        Some(Err(error)) => return Err(error.to_string()),
        None => 0,
    };
    let heads = db.cf_handle(CF_HEADS).expect("heads column family");
    let mut stream_heads = HashMap::new();
    for item in db.iterator_cf(&heads, IteratorMode::Start) {
        let (key, value) = item.map_err(|error| error.to_string())?;
        let stream = std::str::from_utf8(&key).ok().and_then(StreamId::parse).ok_or("bad stream head key")?;
        let version = u64::from_be_bytes(value.as_ref().try_into().map_err(|_| "bad stream head".to_string())?);
        stream_heads.insert(stream, version);
    }
    Ok((head, stream_heads))
}

fn lookup_command(db: &DB, command_id: &CommandId) -> Result<Option<AppendOutcome>, ReadError> {
    let commands = db.cf_handle(CF_COMMANDS).expect("commands column family");
    let Some(bytes) = db.get_cf(&commands, command_id.0.as_bytes()).map_err(storage)? else {
        return Ok(None);
    };
    let stored: StoredOutcome = rmp_serde::from_slice(&bytes)
        .map_err(|error| ReadError::Corrupt { position: 0, reason: format!("command index entry for {command_id}: {error}") })?;
    Ok(Some(AppendOutcome {
        first_position: Position(stored.first_position),
        last_position: Position(stored.last_position),
        stream_versions: stored
            .stream_versions
            .into_iter()
            .filter_map(|(stream, version)| Some((StreamId::parse(&stream)?, StreamVersion(version))))
            .collect(),
        duplicate: true,
    }))
}

fn run_writer(shared: Arc<Shared>, receiver: Receiver<Job>, batch_event_count_max: usize) {
    while let Ok(first) = receiver.recv() {
        let mut event_count = first.request.event_count();
        let mut jobs = vec![first];
        while event_count < batch_event_count_max {
            match receiver.try_recv() {
                Ok(job) => {
                    event_count += job.request.event_count();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        commit_group(&shared, jobs);
    }
}

/// Validates and encodes a group of appends into one batch, syncs it, then
/// answers every append in the group.
fn commit_group(shared: &Shared, jobs: Vec<Job>) {
    if let Some(reason) = shared.failure.lock().clone() {
        for job in jobs {
            (job.done)(Err(AppendError::Storage(format!("the log stopped after a storage failure: {reason}"))));
        }
        return;
    }
    let db = &shared.db;
    let cf_events = db.cf_handle(CF_EVENTS).expect("events column family");
    let cf_streams = db.cf_handle(CF_STREAMS).expect("streams column family");
    let cf_heads = db.cf_handle(CF_HEADS).expect("heads column family");
    let cf_commands = db.cf_handle(CF_COMMANDS).expect("commands column family");

    let head_before = shared.head.load(Ordering::Acquire);
    let mut next_position = head_before + 1;
    let mut overlay: HashMap<StreamId, u64> = HashMap::new();
    let mut batch_commands: HashMap<CommandId, AppendOutcome> = HashMap::new();
    let mut batch = WriteBatch::default();
    let mut answers: Vec<(AppendCompletion, Result<AppendOutcome, AppendError>)> = Vec::with_capacity(jobs.len());
    let stream_heads = shared.stream_heads.read();
    let current_version = |overlay: &HashMap<StreamId, u64>, stream: &StreamId| {
        overlay.get(stream).copied().or_else(|| stream_heads.get(stream).copied()).unwrap_or(0)
    };

    for Job { request, done } in jobs {
        if let Some(command_id) = &request.command_id {
            if let Some(outcome) = batch_commands.get(command_id) {
                let mut outcome = outcome.clone();
                outcome.duplicate = true;
                answers.push((done, Ok(outcome)));
                continue;
            }
            match lookup_command(db, command_id) {
                Ok(Some(outcome)) => {
                    answers.push((done, Ok(outcome)));
                    continue;
                }
                Ok(None) => {}
                Err(error) => {
                    answers.push((done, Err(AppendError::Storage(error.to_string()))));
                    continue;
                }
            }
        }
        match request.validate(|stream| current_version(&overlay, stream)) {
            Err(error) => answers.push((done, Err(error))),
            Ok(()) => {
                let first_position = next_position;
                let mut encoded = Vec::with_capacity(request.event_count());
                let mut versions = Vec::with_capacity(request.streams.len());
                let mut position = next_position;
                for stream_append in &request.streams {
                    let mut version = current_version(&overlay, &stream_append.stream);
                    for new_event in &stream_append.events {
                        version += 1;
                        let recorded = RecordedEvent {
                            position: Position(position),
                            stream: stream_append.stream.clone(),
                            version: StreamVersion(version),
                            event_id: new_event.event_id,
                            command_id: request.command_id.clone(),
                            actor: request.actor.clone(),
                            recorded_at_ms: request.recorded_at_ms,
                            schema_version: EVENT_SCHEMA_VERSION,
                            event: new_event.event.clone(),
                        };
                        encoded.push((position, stream_append.stream.to_string(), version, encode_envelope(&recorded)));
                        position += 1;
                    }
                    versions.push((stream_append.stream.clone(), version));
                }
                if let Some((_, _, _, bytes)) = encoded.iter().find(|(_, _, _, bytes)| bytes.len() > EVENT_SIZE_BYTES_MAX) {
                    answers.push((done, Err(AppendError::EventTooLarge { size_bytes: bytes.len() })));
                    continue;
                }
                for (position, stream, version, bytes) in encoded {
                    batch.put_cf(&cf_events, position.to_be_bytes(), bytes);
                    batch.put_cf(&cf_streams, stream_key(&stream, version), position.to_be_bytes());
                }
                for (stream, version) in &versions {
                    batch.put_cf(&cf_heads, stream.to_string().as_bytes(), version.to_be_bytes());
                    overlay.insert(stream.clone(), *version);
                }
                next_position = position;
                let outcome = AppendOutcome {
                    first_position: Position(first_position),
                    last_position: Position(position - 1),
                    stream_versions: versions.iter().map(|(stream, version)| (stream.clone(), StreamVersion(*version))).collect(),
                    duplicate: false,
                };
                if let Some(command_id) = &request.command_id {
                    let stored = StoredOutcome {
                        first_position,
                        last_position: position - 1,
                        stream_versions: versions.iter().map(|(stream, version)| (stream.to_string(), *version)).collect(),
                    };
                    batch.put_cf(&cf_commands, command_id.0.as_bytes(), rmp_serde::to_vec(&stored).expect("outcome encodes"));
                    batch_commands.insert(command_id.clone(), outcome.clone());
                }
                answers.push((done, Ok(outcome)));
            }
        }
    }
    drop(stream_heads);

    if !batch.is_empty() {
        let mut write_options = WriteOptions::default();
        write_options.set_sync(true);
        if let Err(error) = db.write_opt(batch, &write_options) {
            let reason = error.to_string();
            tracing::error!(%reason, "log write failed; the log refuses further appends");
            *shared.failure.lock() = Some(reason.clone());
            for (done, answer) in answers {
                done(answer.and(Err(AppendError::Storage(reason.clone()))));
            }
            return;
        }
        shared.stream_heads.write().extend(overlay);
        let head = next_position - 1;
        {
            let _guard = shared.head_lock.lock();
            shared.head.store(head, Ordering::Release);
            shared.head_changed.notify_all();
        }
        for listener in shared.listeners.read().iter() {
            listener(Position(head));
        }
    }
    let head = shared.head.load(Ordering::Acquire);
    for (done, answer) in answers {
        done(answer.map(|mut outcome| {
            if outcome.last_position < outcome.first_position {
                outcome.first_position = Position(head + 1);
                outcome.last_position = Position(head);
            }
            outcome
        }));
    }
}

impl EventLog for RocksLog {
    fn submit(&self, request: AppendRequest, done: AppendCompletion) {
        let sender = self.sender.lock().clone();
        let Some(sender) = sender else {
            done(Err(AppendError::Closed));
            return;
        };
        match sender.try_send(Job { request, done }) {
            Ok(()) => {}
            Err(TrySendError::Full(job)) => {
                // Back-pressure: wait for room rather than grow without bound.
                if let Err(error) = sender.send(job) {
                    (error.0.done)(Err(AppendError::Closed));
                }
            }
            Err(TrySendError::Disconnected(job)) => (job.done)(Err(AppendError::Closed)),
        }
    }

    fn head(&self) -> Position {
        Position(self.shared.head.load(Ordering::Acquire))
    }

    fn read_all(&self, after: Position, count_max: usize) -> Result<Vec<RecordedEvent>, ReadError> {
        let head = self.shared.head.load(Ordering::Acquire);
        if after.0 >= head || count_max == 0 {
            return Ok(Vec::new());
        }
        let db = &self.shared.db;
        let cf_events = db.cf_handle(CF_EVENTS).expect("events column family");
        let start = (after.0 + 1).to_be_bytes();
        let wanted = ((head - after.0) as usize).min(count_max);
        let mut events = Vec::with_capacity(wanted);
        for item in db.iterator_cf(&cf_events, IteratorMode::From(&start, Direction::Forward)) {
            let (key, value) = item.map_err(storage)?;
            let expected_position = after.0 + 1 + events.len() as u64;
            let position = u64::from_be_bytes(
                key.as_ref()
                    .try_into()
                    .map_err(|_| ReadError::Corrupt { position: expected_position, reason: "event key is not 8 bytes".into() })?,
            );
            if position != expected_position {
                return Err(ReadError::Corrupt { position: expected_position, reason: format!("event missing (next key is {position})") });
            }
            let event = decode_envelope(&value).map_err(|error| ReadError::Corrupt { position, reason: error.to_string() })?;
            if event.position.0 != position {
                return Err(ReadError::Corrupt { position, reason: format!("envelope says position {}", event.position) });
            }
            events.push(event);
            if events.len() == wanted {
                break;
            }
        }
        Ok(events)
    }

    fn read_stream(&self, stream: &StreamId, after: StreamVersion, count_max: usize) -> Result<Vec<RecordedEvent>, ReadError> {
        let db = &self.shared.db;
        let cf_streams = db.cf_handle(CF_STREAMS).expect("streams column family");
        let cf_events = db.cf_handle(CF_EVENTS).expect("events column family");
        let text = stream.to_string();
        let start = stream_key(&text, after.0 + 1);
        let prefix_length = text.len() + 1;
        let mut events = Vec::new();
        for item in db.iterator_cf(&cf_streams, IteratorMode::From(&start, Direction::Forward)) {
            let (key, value) = item.map_err(storage)?;
            if key.len() != prefix_length + 8 || key[..prefix_length] != start[..prefix_length] || events.len() >= count_max {
                break;
            }
            let position = u64::from_be_bytes(
                value
                    .as_ref()
                    .try_into()
                    .map_err(|_| ReadError::Corrupt { position: 0, reason: format!("stream index entry of {text} is not 8 bytes") })?,
            );
            if position > self.shared.head.load(Ordering::Acquire) {
                break;
            }
            let bytes = db
                .get_cf(&cf_events, position.to_be_bytes())
                .map_err(storage)?
                .ok_or_else(|| ReadError::Corrupt { position, reason: format!("indexed by {text} but missing") })?;
            events.push(decode_envelope(&bytes).map_err(|error| ReadError::Corrupt { position, reason: error.to_string() })?);
        }
        Ok(events)
    }

    fn command_outcome(&self, command_id: &CommandId) -> Result<Option<AppendOutcome>, ReadError> {
        lookup_command(&self.shared.db, command_id)
    }

    fn stream_version(&self, stream: &StreamId) -> StreamVersion {
        StreamVersion(self.shared.stream_heads.read().get(stream).copied().unwrap_or(0))
    }

    fn on_commit(&self, listener: CommitListener) {
        self.shared.listeners.write().push(listener);
    }

    fn wait_for_head(&self, after: Position, timeout: Duration) -> Position {
        let deadline = Instant::now() + timeout;
        let mut guard = self.shared.head_lock.lock();
        loop {
            let head = self.shared.head.load(Ordering::Acquire);
            if head > after.0 {
                return Position(head);
            }
            if self.shared.head_changed.wait_until(&mut guard, deadline).timed_out() {
                return Position(self.shared.head.load(Ordering::Acquire));
            }
        }
    }

    fn save_checkpoint(&self, consumer: &str, position: Position, state: &[u8]) -> Result<(), AppendError> {
        let db = &self.shared.db;
        let cf = db.cf_handle(CF_CHECKPOINTS).expect("checkpoints column family");
        let mut value = Vec::with_capacity(state.len() + 12);
        value.extend_from_slice(&position.0.to_be_bytes());
        value.extend_from_slice(&crc32c::crc32c(state).to_le_bytes());
        value.extend_from_slice(state);
        let mut write_options = WriteOptions::default();
        write_options.set_sync(true);
        db.put_cf_opt(&cf, consumer.as_bytes(), value, &write_options).map_err(|error| AppendError::Storage(error.to_string()))
    }

    fn load_checkpoint(&self, consumer: &str) -> Result<Option<(Position, Vec<u8>)>, ReadError> {
        let db = &self.shared.db;
        let cf = db.cf_handle(CF_CHECKPOINTS).expect("checkpoints column family");
        let Some(value) = db.get_cf(&cf, consumer.as_bytes()).map_err(storage)? else {
            return Ok(None);
        };
        if value.len() < 12 {
            return Err(ReadError::Corrupt { position: 0, reason: format!("checkpoint of {consumer} is truncated") });
        }
        let position = u64::from_be_bytes(value[..8].try_into().expect("eight bytes"));
        let stored = u32::from_le_bytes(value[8..12].try_into().expect("four bytes"));
        if crc32c::crc32c(&value[12..]) != stored {
            return Err(ReadError::Corrupt { position, reason: format!("checkpoint of {consumer} fails its checksum") });
        }
        Ok(Some((Position(position), value[12..].to_vec())))
    }
}
