//! The relay: follows the log from its checkpoint and publishes every committed
//! event to JetStream, in log order, exactly once.
//!
//! Publishing is asynchronous with at most `in_flight_count_max` unacknowledged
//! messages; acks arrive in publish order and the checkpoint only ever names a
//! position whose ack, and every earlier one, arrived. After a crash of berth
//! or of NATS a session starts over: it reads where the stream ends (the last
//! message's `Berth-Position` header, or the checkpointed sequence when the
//! stream is empty) and resumes right after it. Every publish carries
//! `Nats-Expected-Last-Sequence`, so a message can only land directly after
//! its predecessor: a lost publish makes the following ones fail instead of
//! leaving a gap, and a replay can never land twice, even after the dedup
//! window has passed. `Nats-Msg-Id` = the event id makes a replay within the
//! window a plain duplicate ack instead of an error.
//!
//! Any failure (NATS down, stream deleted, ack timeout) makes the relay
//! visibly degraded and retried with backoff; berth keeps serving meanwhile.

use crate::connection::{self, ConnectionError};
use crate::stream::{self, StreamEnd, StreamError, StreamSettings};
use crate::subject::{subject_of, POSITION_HEADER};
use crate::vch::VchResolver;
use async_nats::jetstream::{self, message::PublishMessage};
use berth_core::log::EventLog;
use berth_core::{Position, ReadError};
use bytes::Bytes;
use futures_util::stream::{FuturesOrdered, StreamExt as _};
use futures_util::FutureExt as _;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// The default bound on published messages whose ack has not arrived.
pub const IN_FLIGHT_COUNT_MAX_DEFAULT: usize = 4096;
/// How long one publish ack may take before the session is restarted.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the acknowledged position is checkpointed (and the connection checked).
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(100);
/// The room a payload gets before encoding: most events fit, so few grow.
const PAYLOAD_CAPACITY_BYTES: usize = 1024;
/// Events read from the log at a time.
const READ_BATCH_EVENT_COUNT_MAX: usize = 1024;
/// Prepared batches the log reader may run ahead of the publisher.
const READ_AHEAD_BATCH_COUNT_MAX: usize = 4;
/// The first pause after a failed session; it doubles up to [`RETRY_DELAY_MAX`].
const RETRY_DELAY_MIN: Duration = Duration::from_millis(100);
const RETRY_DELAY_MAX: Duration = Duration::from_secs(5);
/// How long a start waits for NATS before going on degraded (it delays the Docker API).
const START_CONNECT_WAIT: Duration = Duration::from_secs(2);
/// How long an idle reader waits for a commit before looking at the log again.
const IDLE_POLL_INTERVAL: Duration = Duration::from_millis(500);

#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// `nats://HOST:PORT`, or several separated by commas.
    pub server_url: String,
    pub stream: StreamSettings,
    pub in_flight_count_max: usize,
}

impl RelayConfig {
    pub fn new(server_url: impl Into<String>, stream: StreamSettings) -> RelayConfig {
        RelayConfig { server_url: server_url.into(), stream, in_flight_count_max: IN_FLIGHT_COUNT_MAX_DEFAULT }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayState {
    /// Waiting for NATS or setting up the stream.
    Connecting,
    /// Publishing; caught up or catching up.
    Publishing,
    /// Not publishing, for the reason given; retrying.
    Degraded { reason: String },
}

/// What the relay has done, for logs, metrics and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayStatus {
    pub state: RelayState,
    /// The last position JetStream acknowledged (and every earlier one).
    pub published_position: Position,
    /// The stream sequence of that message.
    pub stream_sequence: u64,
    /// Acks that said "duplicate": replays the dedup window absorbed.
    pub duplicate_count: u64,
    /// Sessions that failed and were started again.
    pub restart_count: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Connection(#[from] ConnectionError),
    #[error(transparent)]
    Stream(#[from] StreamError),
    #[error("reading the log failed: {0}")]
    Read(#[from] ReadError),
    #[error("saving the relay checkpoint failed: {0}")]
    Checkpoint(String),
    #[error("the connection to NATS is lost; reconnecting")]
    Disconnected,
    #[error("publishing position {position} failed: {reason}")]
    Publish { position: u64, reason: String },
    #[error("the relay task failed: {0}")]
    Task(String),
}

/// One event, ready to publish.
pub(crate) struct PreparedMessage {
    pub(crate) position: Position,
    pub(crate) subject: String,
    pub(crate) event_id: String,
    pub(crate) payload: Bytes,
}

type AckResult = Result<jetstream::publish::PublishAck, jetstream::context::PublishError>;
type AckFuture = <jetstream::context::PublishAckFuture as std::future::IntoFuture>::IntoFuture;

/// Publishes awaiting their acks, in publish order, with their positions
/// beside them (acks come back in the same order, so no per-message wrapper).
#[derive(Default)]
struct InFlight {
    acks: FuturesOrdered<AckFuture>,
    positions: VecDeque<Position>,
}

impl InFlight {
    fn push(&mut self, position: Position, ack: jetstream::context::PublishAckFuture) {
        self.acks.push_back(std::future::IntoFuture::into_future(ack));
        self.positions.push_back(position);
    }

    fn len(&self) -> usize {
        self.positions.len()
    }

    fn is_empty(&self) -> bool {
        self.positions.is_empty()
    }

    /// The next ack in publish order (cancel-safe: nothing is taken until it is there).
    async fn next(&mut self) -> Option<(Position, AckResult)> {
        let result = self.acks.next().await?;
        let position = self.positions.pop_front()?;
        Some((position, result))
    }
}

/// A running relay; stop it with [`Relay::stop`].
pub struct Relay {
    status: watch::Receiver<RelayStatus>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// The checkpoint name of the relay that feeds `stream_name`.
pub fn checkpoint_name(stream_name: &str) -> String {
    format!("relay/nats/{stream_name}")
}

impl Relay {
    /// Connects and checks the stream. A bad address or a misconfigured
    /// NATS (no JetStream, a conflicting stream, a stream of another log) is
    /// an error; an unreachable NATS is not: the relay starts degraded and
    /// keeps trying.
    pub async fn start(log: Arc<dyn EventLog>, config: RelayConfig) -> Result<Relay, RelayError> {
        let client = connection::connect(&config.server_url, "berth-relay").await?;
        let context = publish_context(client.clone(), config.in_flight_count_max);
        let initial_state = if connection::wait_connected(&client, START_CONNECT_WAIT).await {
            match check_stream(&context, &config, log.head()).await {
                Ok(()) => RelayState::Connecting,
                Err(error) if error.is_misconfiguration() => return Err(error.into()),
                // A cluster still electing its leaders, a slow reply: the sessions retry.
                Err(error) => RelayState::Degraded { reason: error.to_string() },
            }
        } else {
            let reason = format!("NATS at {} is unreachable; retrying", config.server_url);
            tracing::warn!(%reason, "relay degraded; berth keeps serving from its own log");
            RelayState::Degraded { reason }
        };
        let (head_sender, head) = watch::channel(log.head());
        log.on_commit(Box::new(move |position| {
            head_sender.send_replace(position);
        }));
        let status =
            RelayStatus { state: initial_state, published_position: Position(0), stream_sequence: 0, duplicate_count: 0, restart_count: 0 };
        let (status_sender, status_receiver) = watch::channel(status);
        let (stop_sender, stop_receiver) = watch::channel(false);
        let task = tokio::spawn(run(RelayTask { log, config, client, context, head, status: status_sender, stop: stop_receiver }));
        Ok(Relay { status: status_receiver, stop: stop_sender, task })
    }

    pub fn status(&self) -> RelayStatus {
        self.status.borrow().clone()
    }

    /// A receiver that changes with every status update.
    pub fn subscribe(&self) -> watch::Receiver<RelayStatus> {
        self.status.clone()
    }

    /// Stops publishing and checkpoints what was acknowledged.
    pub async fn stop(self) {
        self.stop.send_replace(true);
        let _ = self.task.await;
    }
}

fn publish_context(client: async_nats::Client, in_flight_count_max: usize) -> jetstream::Context {
    jetstream::ContextBuilder::new()
        .timeout(ACK_TIMEOUT)
        // Acks abandoned by a failed session hold their permits no longer than this.
        .ack_timeout(ACK_TIMEOUT)
        // The relay bounds its own in-flight acks; the client's bound only has to be above it.
        .max_ack_inflight(in_flight_count_max.saturating_mul(2).max(1))
        .backpressure_on_inflight(true)
        .build(client)
}

async fn check_stream(context: &jetstream::Context, config: &RelayConfig, log_head: Position) -> Result<(), StreamError> {
    let mut stream = stream::ensure_stream(context, &config.stream).await?;
    let end = stream::stream_end(&mut stream, &config.stream.name).await?;
    check_not_ahead(&config.stream.name, end, log_head)
}

fn check_not_ahead(name: &str, end: StreamEnd, log_head: Position) -> Result<(), StreamError> {
    if end.last_position > log_head {
        return Err(StreamError::AheadOfLog { name: name.to_string(), stream_position: end.last_position.0, log_head: log_head.0 });
    }
    Ok(())
}

struct RelayTask {
    log: Arc<dyn EventLog>,
    config: RelayConfig,
    client: async_nats::Client,
    context: jetstream::Context,
    head: watch::Receiver<Position>,
    status: watch::Sender<RelayStatus>,
    stop: watch::Receiver<bool>,
}

async fn run(mut task: RelayTask) {
    let mut retry_delay = RETRY_DELAY_MIN;
    loop {
        let published_before = task.status.borrow().published_position;
        match session(&mut task).await {
            Ok(()) => return,
            Err(error) => {
                let reason = error.to_string();
                tracing::warn!(%reason, "relay degraded; retrying");
                task.status.send_modify(|status| {
                    status.state = RelayState::Degraded { reason };
                    status.restart_count += 1;
                });
            }
        }
        // A session that got something published was healthy: start the backoff over.
        if task.status.borrow().published_position > published_before {
            retry_delay = RETRY_DELAY_MIN;
        }
        tokio::select! {
            _ = tokio::time::sleep(retry_delay) => {}
            _ = stopped(&mut task.stop) => return,
        }
        retry_delay = (retry_delay * 2).min(RETRY_DELAY_MAX);
    }
}

/// The checkpoint state: the stream sequence of the checkpointed position.
fn encode_sequence(sequence: u64) -> [u8; 8] {
    sequence.to_be_bytes()
}

fn decode_sequence(state: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(state.try_into().ok()?))
}

async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T, RelayError> {
    tokio::task::spawn_blocking(work).await.map_err(|error| RelayError::Task(error.to_string()))
}

/// Where to resume: right after the last position the stream holds.
fn resume_position(end: StreamEnd, checkpoint: Option<(Position, Option<u64>)>) -> Position {
    if end.last_position.0 > 0 {
        return end.last_position;
    }
    match checkpoint {
        // An empty stream whose sequence moved past the checkpoint: the messages
        // after it were published and then dropped by retention. Positions and
        // sequences advance together, so the offset says how far.
        Some((position, Some(sequence))) if end.last_sequence >= sequence => Position(position.0 + (end.last_sequence - sequence)),
        Some((position, _)) => position,
        None => Position(0),
    }
}

async fn save_checkpoint(log: &Arc<dyn EventLog>, name: &str, position: Position, sequence: u64) -> Result<(), RelayError> {
    let log = log.clone();
    let name = name.to_string();
    blocking(move || log.save_checkpoint(&name, position, &encode_sequence(sequence)))
        .await?
        .map_err(|error| RelayError::Checkpoint(error.to_string()))
}

async fn session(task: &mut RelayTask) -> Result<(), RelayError> {
    task.status.send_modify(|status| status.state = RelayState::Connecting);
    if !connection::wait_connected(&task.client, connection::CONNECT_WAIT).await {
        return Err(RelayError::Connection(ConnectionError::Connect {
            url: task.config.server_url.clone(),
            reason: "not connected yet".to_string(),
        }));
    }
    // A fresh context per session: permits of acks a failed session abandoned
    // must not starve this one.
    task.context = publish_context(task.client.clone(), task.config.in_flight_count_max);
    let name = task.config.stream.name.clone();
    let checkpoint = checkpoint_name(&name);
    let mut stream = stream::ensure_stream(&task.context, &task.config.stream).await?;
    let end = stream::stream_end(&mut stream, &name).await?;
    check_not_ahead(&name, end, task.log.head())?;
    let stored = {
        let log = task.log.clone();
        let checkpoint = checkpoint.clone();
        blocking(move || log.load_checkpoint(&checkpoint)).await??
    };
    let stored = stored.map(|(position, state)| (position, decode_sequence(&state)));
    let resume = resume_position(end, stored);
    if resume > task.log.head() {
        return Err(StreamError::AheadOfLog { name, stream_position: resume.0, log_head: task.log.head().0 }.into());
    }
    if stored.as_ref().map(|(position, _)| *position) != Some(resume) {
        save_checkpoint(&task.log, &checkpoint, resume, end.last_sequence).await?;
    }
    tracing::info!(stream = %name, %resume, last_sequence = end.last_sequence, "relay publishing");
    task.status.send_modify(|status| {
        status.state = RelayState::Publishing;
        status.published_position = resume;
        status.stream_sequence = end.last_sequence;
    });

    let (batch_sender, mut batches) = mpsc::channel(READ_AHEAD_BATCH_COUNT_MAX);
    let reader = tokio::spawn(read_log(task.log.clone(), resume, task.head.clone(), batch_sender));
    let result = publish_loop(task, &mut batches, end.last_sequence, &checkpoint).await;
    reader.abort();
    result
}

/// The relay's working state within one session.
struct Publisher<'task> {
    task: &'task mut RelayTask,
    checkpoint: String,
    expected_last_sequence: u64,
    in_flight: InFlight,
    acked_position: Position,
    acked_sequence: u64,
    duplicate_count: u64,
    saved_position: Position,
    /// The checkpoint write under way, if any: it runs beside publishing.
    saving: Option<tokio::task::JoinHandle<Result<Position, RelayError>>>,
}

impl Publisher<'_> {
    async fn publish(&mut self, message: PreparedMessage) -> Result<(), RelayError> {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, message.event_id);
        headers.insert(async_nats::header::NATS_EXPECTED_LAST_SEQUENCE, self.expected_last_sequence.to_string());
        headers.insert(POSITION_HEADER, message.position.0.to_string());
        let position = message.position;
        let ack = self
            .task
            .context
            .send_publish(message.subject, PublishMessage::build().payload(message.payload).headers(headers))
            .await
            .map_err(|error| RelayError::Publish { position: position.0, reason: error.to_string() })?;
        self.expected_last_sequence += 1;
        self.in_flight.push(position, ack);
        Ok(())
    }

    fn acknowledged(&mut self, position: Position, result: AckResult) -> Result<(), RelayError> {
        let ack = result.map_err(|error| RelayError::Publish { position: position.0, reason: error.to_string() })?;
        self.acked_position = position;
        self.acked_sequence = ack.sequence;
        if ack.duplicate {
            self.duplicate_count += 1;
        }
        Ok(())
    }

    /// Shows the acknowledged position in the status; once per wake-up, not
    /// per ack, because every update wakes whoever watches the status.
    fn report(&mut self) {
        let (position, sequence, duplicates) = (self.acked_position, self.acked_sequence, self.duplicate_count);
        self.task.status.send_if_modified(|status| {
            let changed = status.published_position != position || status.duplicate_count != duplicates;
            status.published_position = position;
            status.stream_sequence = sequence;
            status.duplicate_count = duplicates;
            changed
        });
    }

    /// Collects a finished checkpoint write and starts the next one when the
    /// acknowledged position moved; never waits for the disk.
    async fn checkpoint_in_background(&mut self) -> Result<(), RelayError> {
        if self.saving.as_ref().is_some_and(|saving| saving.is_finished()) {
            if let Some(saving) = self.saving.take() {
                self.saved_position = saving.await.map_err(|error| RelayError::Task(error.to_string()))??;
            }
        }
        if self.saving.is_none() && self.acked_position > self.saved_position {
            let (log, name, position, sequence) =
                (self.task.log.clone(), self.checkpoint.clone(), self.acked_position, self.acked_sequence);
            self.saving = Some(tokio::spawn(async move { save_checkpoint(&log, &name, position, sequence).await.map(|()| position) }));
        }
        Ok(())
    }

    /// Waits for the write under way, then saves the acknowledged position if it is newer.
    async fn checkpoint_now(&mut self) -> Result<(), RelayError> {
        if let Some(saving) = self.saving.take() {
            self.saved_position = saving.await.map_err(|error| RelayError::Task(error.to_string()))??;
        }
        if self.acked_position > self.saved_position {
            save_checkpoint(&self.task.log, &self.checkpoint, self.acked_position, self.acked_sequence).await?;
            self.saved_position = self.acked_position;
        }
        Ok(())
    }
}

async fn publish_loop(
    task: &mut RelayTask,
    batches: &mut mpsc::Receiver<Result<Vec<PreparedMessage>, ReadError>>,
    last_sequence: u64,
    checkpoint: &str,
) -> Result<(), RelayError> {
    let in_flight_count_max = task.config.in_flight_count_max.max(1);
    let (acked_position, acked_sequence, duplicate_count) = {
        let status = task.status.borrow();
        (status.published_position, status.stream_sequence, status.duplicate_count)
    };
    let mut publisher = Publisher {
        task,
        checkpoint: checkpoint.to_string(),
        expected_last_sequence: last_sequence,
        in_flight: InFlight::default(),
        acked_position,
        acked_sequence,
        duplicate_count,
        saved_position: acked_position,
        saving: None,
    };
    let mut pending: VecDeque<PreparedMessage> = VecDeque::new();
    let mut ticker = tokio::time::interval(CHECKPOINT_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // Publish what is ready up to the in-flight bound, then take the acks
        // that already arrived: one wake-up serves many messages.
        while publisher.in_flight.len() < in_flight_count_max {
            let Some(message) = pending.pop_front() else { break };
            publisher.publish(message).await?;
        }
        while let Some(Some((position, result))) = publisher.in_flight.next().now_or_never() {
            publisher.acknowledged(position, result)?;
        }
        publisher.report();
        tokio::select! {
            biased;
            _ = stopped(&mut publisher.task.stop) => {
                // Give the acks in flight a moment, so a clean stop checkpoints them.
                let drain = async {
                    while let Some((position, result)) = publisher.in_flight.next().await {
                        if publisher.acknowledged(position, result).is_err() {
                            break;
                        }
                    }
                };
                let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
                publisher.report();
                return publisher.checkpoint_now().await;
            }
            Some((position, result)) = publisher.in_flight.next(), if !publisher.in_flight.is_empty() => {
                publisher.acknowledged(position, result)?;
            }
            batch = batches.recv(), if pending.is_empty() => {
                match batch {
                    Some(Ok(batch)) => pending.extend(batch),
                    Some(Err(error)) => return Err(error.into()),
                    None => return Err(RelayError::Task("the log reader stopped".to_string())),
                }
            }
            _ = ticker.tick() => {
                if !connection::is_connected(&publisher.task.client) {
                    publisher.report();
                    publisher.checkpoint_now().await?;
                    return Err(RelayError::Disconnected);
                }
                publisher.checkpoint_in_background().await?;
            }
        }
    }
}

/// Reads the log after `after` and prepares each event's message, in order
/// and in batches, until the receiver goes away.
async fn read_log(
    log: Arc<dyn EventLog>,
    after: Position,
    mut head: watch::Receiver<Position>,
    sender: mpsc::Sender<Result<Vec<PreparedMessage>, ReadError>>,
) {
    let mut position = after;
    let mut resolver = VchResolver::default();
    loop {
        let reading_log = log.clone();
        let read = tokio::task::spawn_blocking(move || {
            let prepared = prepare_batch(reading_log.as_ref(), &mut resolver, position);
            (resolver, prepared)
        })
        .await;
        let Ok((returned_resolver, prepared)) = read else { return };
        resolver = returned_resolver;
        let batch = match prepared {
            Ok(batch) => batch,
            Err(error) => {
                let _ = sender.send(Err(error)).await;
                return;
            }
        };
        let Some(last) = batch.last().map(|message| message.position) else {
            head.mark_unchanged();
            if log.head() <= position {
                let _ = tokio::time::timeout(IDLE_POLL_INTERVAL, head.changed()).await;
            }
            continue;
        };
        position = last;
        if sender.send(Ok(batch)).await.is_err() {
            return;
        }
    }
}

pub(crate) fn prepare_batch(log: &dyn EventLog, resolver: &mut VchResolver, after: Position) -> Result<Vec<PreparedMessage>, ReadError> {
    let events = log.read_all(after, READ_BATCH_EVENT_COUNT_MAX)?;
    let mut prepared = Vec::with_capacity(events.len());
    for event in events {
        let vch = resolver.vch_of(log, &event)?;
        let mut payload = Vec::with_capacity(PAYLOAD_CAPACITY_BYTES);
        serde_json::to_writer(&mut payload, &event)
            .map_err(|error| ReadError::Corrupt { position: event.position.0, reason: error.to_string() })?;
        prepared.push(PreparedMessage {
            position: event.position,
            subject: subject_of(&vch, &event.stream, event.event.type_name()),
            event_id: event.event_id.to_string(),
            payload: Bytes::from(payload),
        });
    }
    Ok(prepared)
}

/// Resolves once a stop is asked for (the watch guard is dropped before any await).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resumes_after_the_last_position_the_stream_holds() {
        let end = StreamEnd { last_sequence: 40, last_position: Position(30) };
        assert_eq!(resume_position(end, Some((Position(25), Some(35)))), Position(30));
        assert_eq!(resume_position(end, None), Position(30));
    }

    #[test]
    fn an_emptied_stream_resumes_by_the_sequence_offset() {
        // Retention dropped every message; 5 were published after the checkpoint.
        let end = StreamEnd { last_sequence: 40, last_position: Position(0) };
        assert_eq!(resume_position(end, Some((Position(25), Some(35)))), Position(30));
        // A recreated, empty stream: resume at the checkpoint.
        let fresh = StreamEnd { last_sequence: 0, last_position: Position(0) };
        assert_eq!(resume_position(fresh, Some((Position(25), Some(35)))), Position(25));
        assert_eq!(resume_position(fresh, None), Position(0));
    }

    #[test]
    fn checkpoint_state_round_trips() {
        assert_eq!(decode_sequence(&encode_sequence(123_456)), Some(123_456));
        assert_eq!(decode_sequence(b"bad"), None);
    }
}
