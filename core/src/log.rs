//! The port to the durable event log. The RocksDB adapter implements it for
//! production; the simulator implements it with a fault-injecting store.
//!
//! Appends are atomic across streams, checked against expected versions, and
//! acknowledged only once durable. Every event gets the next global position.

use crate::events::{DomainEvent, RecordedEvent};
use crate::ids::{CommandId, EventId, Position, StreamId, StreamVersion};
use std::time::Duration;

/// The largest encoded event the log accepts, in bytes.
pub const EVENT_SIZE_BYTES_MAX: usize = 1024 * 1024;
/// The most events one append may carry.
pub const APPEND_EVENT_COUNT_MAX: usize = 10_000;

/// What a stream must look like for an append to go ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedVersion {
    Any,
    NoStream,
    StreamExists,
    Exact(StreamVersion),
}

impl ExpectedVersion {
    pub fn admits(self, actual: StreamVersion) -> bool {
        match self {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => actual.0 == 0,
            ExpectedVersion::StreamExists => actual.0 > 0,
            ExpectedVersion::Exact(expected) => expected == actual,
        }
    }
}

/// One event to append, with the id it will keep forever.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub event_id: EventId,
    pub event: DomainEvent,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StreamAppendRequest {
    pub stream: StreamId,
    pub expected: ExpectedVersion,
    pub events: Vec<NewEvent>,
}

/// An atomic append to one or more streams.
#[derive(Debug, Clone, PartialEq)]
pub struct AppendRequest {
    pub command_id: Option<CommandId>,
    pub actor: String,
    pub recorded_at_ms: u64,
    pub streams: Vec<StreamAppendRequest>,
}

impl AppendRequest {
    pub fn event_count(&self) -> usize {
        self.streams.iter().map(|s| s.events.len()).sum()
    }

    /// The checks every log makes before it writes anything: the event count,
    /// valid and distinct streams, and each stream's expected version against
    /// `version_of` (the stream's current version).
    pub fn validate(&self, version_of: impl Fn(&StreamId) -> u64) -> Result<(), AppendError> {
        let event_count = self.event_count();
        if event_count > APPEND_EVENT_COUNT_MAX {
            return Err(AppendError::TooManyEvents(event_count));
        }
        for (index, stream_append) in self.streams.iter().enumerate() {
            let stream = &stream_append.stream;
            if !stream.is_valid() {
                return Err(AppendError::InvalidStream(stream.to_string()));
            }
            if self.streams[..index].iter().any(|earlier| &earlier.stream == stream) {
                return Err(AppendError::DuplicateStream(stream.clone()));
            }
            let actual = version_of(stream);
            if !stream_append.expected.admits(StreamVersion(actual)) {
                return Err(AppendError::WrongExpectedVersion { stream: stream.clone(), expected: stream_append.expected, actual });
            }
        }
        Ok(())
    }
}

/// The result of an append: where its events landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendOutcome {
    /// The first and last positions written; equal to the head before the
    /// append (with `last < first`) when nothing was written.
    pub first_position: Position,
    pub last_position: Position,
    /// Each stream's version after the append.
    pub stream_versions: Vec<(StreamId, StreamVersion)>,
    /// True when the command id had been seen: this is the first result, and
    /// nothing was written now.
    pub duplicate: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppendError {
    #[error("wrong expected version for {stream}: expected {expected:?}, the stream is at version {actual}")]
    WrongExpectedVersion { stream: StreamId, expected: ExpectedVersion, actual: u64 },
    #[error("invalid stream id {0:?}")]
    InvalidStream(String),
    #[error("event of {size_bytes} bytes is larger than the limit of {EVENT_SIZE_BYTES_MAX} bytes")]
    EventTooLarge { size_bytes: usize },
    #[error("an append may carry at most {APPEND_EVENT_COUNT_MAX} events, not {0}")]
    TooManyEvents(usize),
    #[error("the append names stream {0} twice")]
    DuplicateStream(StreamId),
    #[error("the log is closed")]
    Closed,
    #[error("log storage failed: {0}")]
    Storage(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    #[error("corrupt log at position {position}: {reason}")]
    Corrupt { position: u64, reason: String },
    #[error("log storage failed: {0}")]
    Storage(String),
}

/// Called once with the result of a submitted append.
pub type AppendCompletion = Box<dyn FnOnce(Result<AppendOutcome, AppendError>) + Send>;
/// Called after every durable commit with the new head position.
pub type CommitListener = Box<dyn Fn(Position) + Send + Sync>;

pub trait EventLog: Send + Sync {
    /// Queues an append; `done` is called once it is durable or refused.
    /// Appends submitted from one thread commit in submission order.
    fn submit(&self, request: AppendRequest, done: AppendCompletion);

    /// Appends and waits until the append is durable.
    fn append(&self, request: AppendRequest) -> Result<AppendOutcome, AppendError> {
        let (sender, receiver) = std::sync::mpsc::sync_channel(1);
        self.submit(
            request,
            Box::new(move |result| {
                let _ = sender.send(result);
            }),
        );
        receiver.recv().unwrap_or(Err(AppendError::Closed))
    }

    /// The position of the last durable event (0 when empty).
    fn head(&self) -> Position;

    /// Up to `count_max` events after `after`, in position order.
    fn read_all(&self, after: Position, count_max: usize) -> Result<Vec<RecordedEvent>, ReadError>;

    /// Up to `count_max` events of one stream with versions above `after`.
    fn read_stream(&self, stream: &StreamId, after: StreamVersion, count_max: usize) -> Result<Vec<RecordedEvent>, ReadError>;

    /// The first result of a command id, if it was ever appended.
    fn command_outcome(&self, command_id: &CommandId) -> Result<Option<AppendOutcome>, ReadError>;

    /// The current version of a stream (0 when it has no events).
    fn stream_version(&self, stream: &StreamId) -> StreamVersion;

    /// Registers a listener told of every new head after a durable commit.
    fn on_commit(&self, listener: CommitListener);

    /// Blocks until the head passes `after` or `timeout` elapses; returns the head.
    fn wait_for_head(&self, after: Position, timeout: Duration) -> Position;

    /// Stores a consumer's checkpoint (a position and an opaque state), durably.
    fn save_checkpoint(&self, consumer: &str, position: Position, state: &[u8]) -> Result<(), AppendError>;

    /// The last checkpoint saved by a consumer.
    fn load_checkpoint(&self, consumer: &str) -> Result<Option<(Position, Vec<u8>)>, ReadError>;
}

/// A catch-up subscription over any [`EventLog`]: reads from disk while behind,
/// then waits for new commits. It never drops events: a slow reader simply
/// reads further behind the head.
pub struct Subscription<'log> {
    log: &'log dyn EventLog,
    position: Position,
    batch_count_max: usize,
}

impl<'log> Subscription<'log> {
    pub fn new(log: &'log dyn EventLog, after: Position, batch_count_max: usize) -> Subscription<'log> {
        Subscription { log, position: after, batch_count_max }
    }

    pub fn position(&self) -> Position {
        self.position
    }

    /// The next batch, waiting up to `timeout` for one; empty on timeout.
    pub fn next_batch(&mut self, timeout: Duration) -> Result<Vec<RecordedEvent>, ReadError> {
        let mut batch = self.log.read_all(self.position, self.batch_count_max)?;
        if batch.is_empty() {
            self.log.wait_for_head(self.position, timeout);
            batch = self.log.read_all(self.position, self.batch_count_max)?;
        }
        if let Some(last) = batch.last() {
            self.position = last.position;
        }
        Ok(batch)
    }
}
