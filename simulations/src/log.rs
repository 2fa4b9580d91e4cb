//! The simulated event log: an in-memory [`EventLog`] with a disk image.
//!
//! Appends are decided (expected versions checked, positions assigned) when
//! submitted, in submission order, but become durable only at a simulated
//! sync point ([`SimLog::sync`]); only then are their completions called and
//! their events readable. A crash ([`SimLog::crash`]) keeps the synced bytes
//! and a torn prefix of the first unsynced frame; [`SimLog::reopen`] rebuilds
//! the log from that image alone, dropping the torn tail, as a restarted
//! berth must.
//!
//! The disk image is a sequence of frames `[length u32][crc32c u32][payload]`,
//! one per append, the payload being the MessagePack of its recorded events.

use berth_core::log::{AppendCompletion, AppendError, AppendOutcome, AppendRequest, CommitListener, EventLog};
use berth_core::{CommandId, Position, ReadError, RecordedEvent, StreamId, StreamVersion, EVENT_SCHEMA_VERSION};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// Bytes of a frame header: the payload length and its checksum.
const FRAME_HEADER_BYTES: usize = 8;

#[derive(Serialize, Deserialize)]
struct FramePayload {
    command_id: Option<CommandId>,
    events: Vec<RecordedEvent>,
}

/// An append that one simulated client or component submitted, as the
/// auditor needs to see it (in submission order).
#[derive(Debug, Clone, PartialEq)]
pub struct SubmittedAppend {
    pub actor: String,
    /// Each event's stream and type name.
    pub events: Vec<(StreamId, &'static str)>,
}

struct PendingAppend {
    frame: Option<Vec<u8>>,
    events: Vec<RecordedEvent>,
    command_id: Option<CommandId>,
    result: Result<AppendOutcome, AppendError>,
    done: AppendCompletion,
}

#[derive(Default)]
struct LogState {
    /// The synced bytes: what survives a crash.
    disk: Vec<u8>,
    /// Durable events; position `p` is at index `p - 1`.
    events: Vec<RecordedEvent>,
    /// Durable positions of each stream's events, by version.
    stream_positions: HashMap<StreamId, Vec<u64>>,
    durable_commands: HashMap<CommandId, AppendOutcome>,
    /// Durable plus pending: what the next submission is checked against.
    stream_versions: HashMap<StreamId, u64>,
    commands: HashMap<CommandId, AppendOutcome>,
    next_position: u64,
    pending: Vec<PendingAppend>,
    checkpoints: BTreeMap<String, (Position, Vec<u8>)>,
    journal: Vec<SubmittedAppend>,
    closed: bool,
}

pub struct SimLog {
    state: Mutex<LogState>,
    listeners: Mutex<Vec<CommitListener>>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SimLogError {
    #[error("the disk image is corrupt at byte {offset}: {reason}")]
    Corrupt { offset: usize, reason: String },
}

/// What a sync made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SyncReport {
    pub append_count: usize,
    pub head: Position,
}

impl Default for SimLog {
    fn default() -> SimLog {
        SimLog::new()
    }
}

impl SimLog {
    pub fn new() -> SimLog {
        SimLog { state: Mutex::new(LogState { next_position: 1, ..LogState::default() }), listeners: Mutex::new(Vec::new()) }
    }

    /// Rebuilds a log from a disk image, dropping a torn last frame.
    pub fn reopen(disk: Vec<u8>) -> Result<SimLog, SimLogError> {
        let mut state = LogState { next_position: 1, ..LogState::default() };
        let mut offset = 0;
        while offset < disk.len() {
            let remaining = disk.len() - offset;
            if remaining < FRAME_HEADER_BYTES {
                break; // a torn header: the tail of an unsynced write
            }
            let length = u32::from_le_bytes(disk[offset..offset + 4].try_into().unwrap_or_default()) as usize;
            let checksum = u32::from_le_bytes(disk[offset + 4..offset + 8].try_into().unwrap_or_default());
            let end = offset + FRAME_HEADER_BYTES + length;
            if end > disk.len() {
                break; // a torn payload
            }
            let payload = &disk[offset + FRAME_HEADER_BYTES..end];
            if crc32c::crc32c(payload) != checksum {
                if end == disk.len() {
                    break;
                }
                return Err(SimLogError::Corrupt { offset, reason: "checksum mismatch before the tail".into() });
            }
            let frame: FramePayload = rmp_serde::from_slice(payload)
                .map_err(|error| SimLogError::Corrupt { offset, reason: format!("undecodable frame: {error}") })?;
            state.adopt(frame.command_id, frame.events).map_err(|reason| SimLogError::Corrupt { offset, reason })?;
            offset = end;
        }
        state.disk = disk;
        state.disk.truncate(offset);
        Ok(SimLog { state: Mutex::new(state), listeners: Mutex::new(Vec::new()) })
    }

    /// Makes every pending append durable, then answers them in order and
    /// tells the commit listeners. Completions run without the log's lock:
    /// they may read the log.
    pub fn sync(&self) -> SyncReport {
        let (answers, head) = {
            let mut state = self.state.lock();
            let pending = std::mem::take(&mut state.pending);
            let mut answers = Vec::with_capacity(pending.len());
            for append in pending {
                let PendingAppend { frame, events, command_id, result, done } = append;
                if let Some(frame) = &frame {
                    state.disk.extend_from_slice(frame);
                }
                if let (Some(command_id), Ok(outcome), false) = (command_id, &result, events.is_empty()) {
                    state.durable_commands.insert(command_id, outcome.clone());
                }
                for event in events {
                    state.stream_positions.entry(event.stream.clone()).or_default().push(event.position.0);
                    state.events.push(event);
                }
                answers.push((done, result));
            }
            (answers, Position(state.events.len() as u64))
        };
        let append_count = answers.len();
        for (done, result) in answers {
            done(result);
        }
        if append_count > 0 {
            for listener in self.listeners.lock().iter() {
                listener(head);
            }
        }
        SyncReport { append_count, head }
    }

    /// The process dies: unsynced appends are lost (never answered), and the
    /// disk keeps the synced bytes plus the first `torn_bytes` of the first
    /// unsynced frame (clamped below its length, so it is always torn).
    pub fn crash(&self, torn_bytes: usize) -> Vec<u8> {
        let mut state = self.state.lock();
        state.closed = true;
        let mut disk = std::mem::take(&mut state.disk);
        if let Some(frame) = state.pending.iter().find_map(|append| append.frame.as_ref()) {
            disk.extend_from_slice(&frame[..torn_bytes.min(frame.len().saturating_sub(1))]);
        }
        state.pending.clear();
        self.listeners.lock().clear();
        disk
    }

    pub fn pending_append_count(&self) -> usize {
        self.state.lock().pending.len()
    }

    /// The length of the first unsynced frame, if any: the most a crash can tear.
    pub fn first_pending_frame_bytes(&self) -> Option<usize> {
        self.state.lock().pending.iter().find_map(|append| append.frame.as_ref().map(Vec::len))
    }

    /// The synced bytes.
    pub fn disk_bytes(&self) -> usize {
        self.state.lock().disk.len()
    }

    /// A hash of the synced bytes, for the trace.
    pub fn disk_checksum(&self) -> u32 {
        crc32c::crc32c(&self.state.lock().disk)
    }

    /// Takes the submissions made since the last call.
    pub fn take_journal(&self) -> Vec<SubmittedAppend> {
        std::mem::take(&mut self.state.lock().journal)
    }

    /// Checks that positions run 1, 2, 3... and every stream's versions 1, 2,
    /// 3... in position order; `Err` names the first gap.
    pub fn check_gap_free(&self) -> Result<(), String> {
        let state = self.state.lock();
        let mut versions: HashMap<&StreamId, u64> = HashMap::new();
        for (index, event) in state.events.iter().enumerate() {
            if event.position.0 != index as u64 + 1 {
                return Err(format!("position {} found where {} belongs", event.position, index + 1));
            }
            let version = versions.entry(&event.stream).or_insert(0);
            if event.version.0 != *version + 1 {
                return Err(format!("stream {} jumps from version {} to {}", event.stream, version, event.version.0));
            }
            *version += 1;
        }
        for (stream, positions) in &state.stream_positions {
            if versions.get(stream).copied().unwrap_or(0) != positions.len() as u64 {
                return Err(format!("the stream index of {stream} disagrees with the events"));
            }
        }
        Ok(())
    }
}

impl LogState {
    /// Adds one durable frame read back from disk, checking that it continues
    /// the log without a gap (asserted at write time by `submit`).
    fn adopt(&mut self, command_id: Option<CommandId>, events: Vec<RecordedEvent>) -> Result<(), String> {
        let Some(first) = events.first() else { return Err("an empty frame".into()) };
        let first_position = first.position;
        let mut stream_versions: Vec<(StreamId, StreamVersion)> = Vec::new();
        for event in &events {
            if event.position.0 != self.next_position {
                return Err(format!("position {} where {} belongs", event.position, self.next_position));
            }
            self.next_position += 1;
            let version = self.stream_versions.entry(event.stream.clone()).or_insert(0);
            if event.version.0 != *version + 1 {
                return Err(format!("stream {} version {} after {}", event.stream, event.version.0, version));
            }
            *version += 1;
            match stream_versions.iter_mut().find(|(stream, _)| stream == &event.stream) {
                Some(entry) => entry.1 = event.version,
                None => stream_versions.push((event.stream.clone(), event.version)),
            }
        }
        let last_position = Position(self.next_position - 1);
        if let Some(command_id) = command_id {
            let outcome = AppendOutcome { first_position, last_position, stream_versions, duplicate: false };
            self.commands.insert(command_id.clone(), outcome.clone());
            self.durable_commands.insert(command_id, outcome);
        }
        for event in events {
            self.stream_positions.entry(event.stream.clone()).or_default().push(event.position.0);
            self.events.push(event);
        }
        Ok(())
    }

    fn decide(&mut self, request: &AppendRequest) -> Result<AppendOutcome, AppendError> {
        if self.closed {
            return Err(AppendError::Closed);
        }
        if let Some(command_id) = &request.command_id {
            if let Some(first) = self.commands.get(command_id) {
                return Ok(AppendOutcome { duplicate: true, ..first.clone() });
            }
        }
        let event_count = request.event_count();
        request.validate(|stream| self.stream_versions.get(stream).copied().unwrap_or(0))?;
        let head = Position(self.next_position - 1);
        Ok(AppendOutcome {
            first_position: Position(self.next_position),
            last_position: Position(head.0 + event_count as u64),
            stream_versions: Vec::new(),
            duplicate: false,
        })
    }
}

impl EventLog for SimLog {
    /// Every answer, a refusal included, waits for the next sync: the command
    /// bus submits while holding its decision lock, and its completion takes
    /// that lock again, so a log must never answer from inside `submit`.
    fn submit(&self, request: AppendRequest, done: AppendCompletion) {
        let mut guard = self.state.lock();
        let state = &mut *guard;
        if state.closed {
            let refused = PendingAppend { frame: None, events: Vec::new(), command_id: None, result: Err(AppendError::Closed), done };
            state.pending.push(refused);
            return;
        }
        let decided = state.decide(&request);
        let mut journal_events = Vec::new();
        let mut events = Vec::new();
        let result = match decided {
            Ok(outcome) if outcome.duplicate || request.event_count() == 0 => Ok(outcome),
            Ok(mut outcome) => {
                for stream in &request.streams {
                    let mut version = state.stream_versions.get(&stream.stream).copied().unwrap_or(0);
                    for new_event in &stream.events {
                        version += 1;
                        journal_events.push((stream.stream.clone(), new_event.event.type_name()));
                        events.push(RecordedEvent {
                            position: Position(state.next_position),
                            stream: stream.stream.clone(),
                            version: StreamVersion(version),
                            event_id: new_event.event_id,
                            command_id: request.command_id.clone(),
                            actor: request.actor.clone(),
                            recorded_at_ms: request.recorded_at_ms,
                            schema_version: EVENT_SCHEMA_VERSION,
                            event: new_event.event.clone(),
                        });
                        state.next_position += 1;
                    }
                    state.stream_versions.insert(stream.stream.clone(), version);
                    outcome.stream_versions.push((stream.stream.clone(), StreamVersion(version)));
                }
                if let Some(command_id) = &request.command_id {
                    state.commands.insert(command_id.clone(), outcome.clone());
                }
                Ok(outcome)
            }
            Err(error) => Err(error),
        };
        let frame = if events.is_empty() {
            None
        } else {
            let payload = rmp_serde::to_vec(&FramePayload { command_id: request.command_id.clone(), events: events.clone() });
            match payload {
                Ok(payload) => {
                    let mut frame = Vec::with_capacity(FRAME_HEADER_BYTES + payload.len());
                    frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
                    frame.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
                    frame.extend_from_slice(&payload);
                    Some(frame)
                }
                Err(error) => {
                    // Encoding our own events cannot fail; if it did, the append must not be acknowledged.
                    let result = Err(AppendError::Storage(format!("encoding a frame failed: {error}")));
                    state.pending.push(PendingAppend { frame: None, events: Vec::new(), command_id: None, result, done });
                    return;
                }
            }
        };
        if !journal_events.is_empty() {
            state.journal.push(SubmittedAppend { actor: request.actor.clone(), events: journal_events });
        }
        state.pending.push(PendingAppend { frame, events, command_id: request.command_id, result, done });
    }

    fn head(&self) -> Position {
        Position(self.state.lock().events.len() as u64)
    }

    fn read_all(&self, after: Position, count_max: usize) -> Result<Vec<RecordedEvent>, ReadError> {
        let state = self.state.lock();
        let start = (after.0 as usize).min(state.events.len());
        let end = start.saturating_add(count_max).min(state.events.len());
        Ok(state.events[start..end].to_vec())
    }

    fn read_stream(&self, stream: &StreamId, after: StreamVersion, count_max: usize) -> Result<Vec<RecordedEvent>, ReadError> {
        let state = self.state.lock();
        let Some(positions) = state.stream_positions.get(stream) else { return Ok(Vec::new()) };
        Ok(positions.iter().skip(after.0 as usize).take(count_max).map(|position| state.events[*position as usize - 1].clone()).collect())
    }

    fn command_outcome(&self, command_id: &CommandId) -> Result<Option<AppendOutcome>, ReadError> {
        Ok(self.state.lock().durable_commands.get(command_id).cloned())
    }

    fn stream_version(&self, stream: &StreamId) -> StreamVersion {
        StreamVersion(self.state.lock().stream_positions.get(stream).map_or(0, |positions| positions.len() as u64))
    }

    fn on_commit(&self, listener: CommitListener) {
        self.listeners.lock().push(listener);
    }

    /// One thread runs the whole simulation, so nothing else could move the
    /// head while this waited: it answers at once.
    fn wait_for_head(&self, _after: Position, _timeout: Duration) -> Position {
        self.head()
    }

    fn save_checkpoint(&self, consumer: &str, position: Position, state: &[u8]) -> Result<(), AppendError> {
        self.state.lock().checkpoints.insert(consumer.to_string(), (position, state.to_vec()));
        Ok(())
    }

    fn load_checkpoint(&self, consumer: &str) -> Result<Option<(Position, Vec<u8>)>, ReadError> {
        Ok(self.state.lock().checkpoints.get(consumer).cloned())
    }
}
