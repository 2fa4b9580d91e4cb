//! The follower: reads the relay's stream with an ordered consumer and appends
//! every event to a local replica of the log, at the same position it has on
//! the leader. The usual projection runner folds the replica into the Docker
//! views, so a follower serves the same reads as the leader, a little later.
//!
//! The replica is durable and checkpointed (its position and the stream
//! sequence that carried it), so a restarted follower resumes where it was.
//! Each event is appended with the exact stream version the leader gave it;
//! a position or version that does not line up stops the session with the
//! reason instead of building different views. Command ids are not carried
//! into the replica: a command's events arrive one by one, and the replica
//! would take the second one for a retry of the first.

use crate::connection::{self, ConnectionError};
use async_nats::jetstream::{self, consumer};
use berth_core::log::{AppendError, AppendOutcome, AppendRequest, EventLog, ExpectedVersion, NewEvent, StreamAppendRequest};
use berth_core::{Position, RecordedEvent, StreamVersion};
use futures_util::StreamExt as _;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// Appends submitted to the replica whose durability is not confirmed yet.
pub const APPEND_IN_FLIGHT_COUNT_MAX: usize = 2048;
/// How often the replica's position is checkpointed.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(200);
const RETRY_DELAY_MIN: Duration = Duration::from_millis(100);
const RETRY_DELAY_MAX: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct FollowerConfig {
    pub server_url: String,
    pub stream_name: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FollowerState {
    Connecting,
    Following,
    Degraded { reason: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FollowerStatus {
    pub state: FollowerState,
    /// The last position durable in the replica.
    pub position: Position,
    /// The leader's last published position, as the stream last reported it.
    pub leader_position: Position,
    /// When the leader recorded the last event the replica holds (Unix ms).
    pub last_recorded_at_ms: u64,
    pub restart_count: u64,
}

impl FollowerStatus {
    /// How many events the replica is behind the stream.
    pub fn lag_event_count(&self) -> u64 {
        self.leader_position.0.saturating_sub(self.position.0)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FollowerError {
    #[error(transparent)]
    Connection(#[from] ConnectionError),
    #[error("the JetStream stream {name} is not there (is the leader's relay on?): {reason}")]
    StreamMissing { name: String, reason: String },
    #[error("JetStream request failed: {0}")]
    Request(String),
    #[error("stream sequence {sequence} is not a berth event: {reason}")]
    Decode { sequence: u64, reason: String },
    #[error("the stream skips from position {expected} to {found}: those events expired or were purged, so this replica cannot be completed from JetStream")]
    Gap { expected: u64, found: u64 },
    #[error("the replica diverged from the stream at position {position}: {reason}")]
    Diverged { position: u64, reason: String },
    #[error("the replica log failed: {0}")]
    Log(String),
}

/// A running follower.
pub struct Follower {
    status: watch::Receiver<FollowerStatus>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// The checkpoint name of a replica fed from `stream_name`.
pub fn checkpoint_name(stream_name: &str) -> String {
    format!("follower/nats/{stream_name}")
}

impl Follower {
    /// Starts following; only a bad address is an error, everything else is
    /// retried and shown in the status.
    pub async fn start(log: Arc<dyn EventLog>, config: FollowerConfig) -> Result<Follower, FollowerError> {
        let client = connection::connect(&config.server_url, "berth-follower").await?;
        let status = FollowerStatus {
            state: FollowerState::Connecting,
            position: log.head(),
            leader_position: log.head(),
            last_recorded_at_ms: 0,
            restart_count: 0,
        };
        let (status_sender, status_receiver) = watch::channel(status);
        let (stop_sender, stop_receiver) = watch::channel(false);
        let task = tokio::spawn(run(log, config, client, status_sender, stop_receiver));
        Ok(Follower { status: status_receiver, stop: stop_sender, task })
    }

    pub fn status(&self) -> FollowerStatus {
        self.status.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<FollowerStatus> {
        self.status.clone()
    }

    pub async fn stop(self) {
        self.stop.send_replace(true);
        let _ = self.task.await;
    }
}

async fn run(
    log: Arc<dyn EventLog>,
    config: FollowerConfig,
    client: async_nats::Client,
    status: watch::Sender<FollowerStatus>,
    mut stop: watch::Receiver<bool>,
) {
    let mut retry_delay = RETRY_DELAY_MIN;
    loop {
        let before = status.borrow().position;
        match session(&log, &config, &client, &status, &mut stop).await {
            Ok(()) => return,
            Err(error) => {
                let reason = error.to_string();
                tracing::warn!(%reason, "follower degraded; retrying");
                status.send_modify(|status| {
                    status.state = FollowerState::Degraded { reason };
                    status.restart_count += 1;
                });
            }
        }
        if status.borrow().position > before {
            retry_delay = RETRY_DELAY_MIN;
        }
        tokio::select! {
            _ = tokio::time::sleep(retry_delay) => {}
            _ = stopped(&mut stop) => return,
        }
        retry_delay = (retry_delay * 2).min(RETRY_DELAY_MAX);
    }
}

async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T, FollowerError> {
    tokio::task::spawn_blocking(work).await.map_err(|error| FollowerError::Log(error.to_string()))
}

async fn save_checkpoint(log: &Arc<dyn EventLog>, name: &str, position: Position, sequence: u64) -> Result<(), FollowerError> {
    let log = log.clone();
    let name = name.to_string();
    blocking(move || log.save_checkpoint(&name, position, &sequence.to_be_bytes()))
        .await?
        .map_err(|error| FollowerError::Log(error.to_string()))
}

/// The result of one replica append: the event's position and stream sequence.
type AppendResult = (Position, u64, Result<AppendOutcome, AppendError>);

async fn session(
    log: &Arc<dyn EventLog>,
    config: &FollowerConfig,
    client: &async_nats::Client,
    status: &watch::Sender<FollowerStatus>,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), FollowerError> {
    status.send_modify(|status| status.state = FollowerState::Connecting);
    if !connection::wait_connected(client, connection::CONNECT_WAIT).await {
        return Err(ConnectionError::Connect { url: config.server_url.clone(), reason: "not connected yet".to_string() }.into());
    }
    let context = jetstream::new(client.clone());
    let stream = context
        .get_stream(&config.stream_name)
        .await
        .map_err(|error| FollowerError::StreamMissing { name: config.stream_name.clone(), reason: error.to_string() })?;
    let checkpoint = checkpoint_name(&config.stream_name);
    let head = log.head();
    let stored = {
        let log = log.clone();
        let checkpoint = checkpoint.clone();
        blocking(move || log.load_checkpoint(&checkpoint)).await?.map_err(|error| FollowerError::Log(error.to_string()))?
    };
    // Start after the checkpointed message; events the replica already holds
    // beyond it (appended after the last checkpoint) are skipped by position.
    let deliver_policy = match stored.and_then(|(position, state)| Some((position, u64::from_be_bytes(state.as_slice().try_into().ok()?))))
    {
        Some((position, sequence)) if position <= head && sequence > 0 => {
            consumer::DeliverPolicy::ByStartSequence { start_sequence: sequence + 1 }
        }
        _ => consumer::DeliverPolicy::All,
    };
    let ordered = stream
        .create_consumer(consumer::pull::OrderedConfig { deliver_policy, ..Default::default() })
        .await
        .map_err(|error| FollowerError::Request(error.to_string()))?;
    let mut messages = ordered.messages().await.map_err(|error| FollowerError::Request(error.to_string()))?;
    tracing::info!(stream = %config.stream_name, %head, "follower reading the stream");
    status.send_modify(|status| {
        status.state = FollowerState::Following;
        status.position = head;
        status.leader_position = status.leader_position.max(head);
    });

    let (completion_sender, mut completions) = mpsc::unbounded_channel::<AppendResult>();
    let mut next_position = Position(head.0 + 1);
    let mut in_flight_count = 0usize;
    let mut durable: Option<(Position, u64)> = None;
    let mut saved: Option<(Position, u64)> = None;
    let mut ticker = tokio::time::interval(CHECKPOINT_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let result = loop {
        tokio::select! {
            biased;
            _ = stopped(stop) => break Ok(()),
            Some((position, sequence, outcome)) = completions.recv() => {
                in_flight_count -= 1;
                match outcome {
                    Ok(outcome) if outcome.first_position == position && outcome.last_position == position => {
                        durable = Some((position, sequence));
                        status.send_modify(|status| {
                            status.position = position;
                            status.leader_position = status.leader_position.max(position);
                        });
                    }
                    Ok(outcome) => break Err(FollowerError::Diverged {
                        position: position.0,
                        reason: format!("the replica wrote it at position {}", outcome.first_position),
                    }),
                    Err(error) => break Err(FollowerError::Diverged { position: position.0, reason: error.to_string() }),
                }
            }
            message = messages.next(), if in_flight_count < APPEND_IN_FLIGHT_COUNT_MAX => {
                let message = match message {
                    Some(Ok(message)) => message,
                    Some(Err(error)) => break Err(FollowerError::Request(error.to_string())),
                    None => break Err(FollowerError::Request("the ordered consumer ended".to_string())),
                };
                let (sequence, pending) = match message.info() {
                    Ok(info) => (info.stream_sequence, info.pending),
                    Err(error) => break Err(FollowerError::Request(format!("a message without JetStream metadata: {error}"))),
                };
                let recorded: RecordedEvent = match serde_json::from_slice(&message.payload) {
                    Ok(recorded) => recorded,
                    Err(error) => break Err(FollowerError::Decode { sequence, reason: error.to_string() }),
                };
                let position = recorded.position;
                status.send_modify(|status| status.leader_position = status.leader_position.max(Position(position.0 + pending)));
                if position < next_position {
                    continue;
                }
                if position > next_position {
                    break Err(FollowerError::Gap { expected: next_position.0, found: position.0 });
                }
                next_position = Position(position.0 + 1);
                in_flight_count += 1;
                status.send_modify(|status| status.last_recorded_at_ms = recorded.recorded_at_ms);
                let sender = completion_sender.clone();
                log.submit(replica_append(recorded), Box::new(move |outcome| {
                    let _ = sender.send((position, sequence, outcome));
                }));
            }
            _ = ticker.tick() => {
                if durable != saved {
                    if let Some((position, sequence)) = durable {
                        save_checkpoint(log, &checkpoint, position, sequence).await?;
                        saved = durable;
                    }
                }
            }
        }
    };
    // Let the appends in flight finish, so the checkpoint names the last durable one.
    let drain = async {
        while in_flight_count > 0 {
            let Some((position, sequence, Ok(_))) = completions.recv().await else { break };
            in_flight_count -= 1;
            durable = Some((position, sequence));
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), drain).await;
    if durable != saved {
        if let Some((position, sequence)) = durable {
            save_checkpoint(log, &checkpoint, position, sequence).await?;
        }
    }
    result
}

/// The append that puts one leader event into the replica at the same stream version.
fn replica_append(recorded: RecordedEvent) -> AppendRequest {
    let expected = ExpectedVersion::Exact(StreamVersion(recorded.version.0.saturating_sub(1)));
    AppendRequest {
        // See the module doc: command ids would make a command's later events look like retries.
        command_id: None,
        actor: recorded.actor,
        recorded_at_ms: recorded.recorded_at_ms,
        streams: vec![StreamAppendRequest {
            stream: recorded.stream,
            expected,
            events: vec![NewEvent { event_id: recorded.event_id, event: recorded.event }],
        }],
    }
}

/// Resolves once a stop is asked for (the watch guard is dropped before any await).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}
