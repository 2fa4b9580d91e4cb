//! The command bus: one decider owns the domain model.
//!
//! A command is decided and its events applied to the model under one short
//! lock, and the append is queued to the log inside that same lock, so the
//! log's order is the decision order. The lock is released before the fsync:
//! many commands are in flight at once and share group commits. A command is
//! answered only when its append is durable. If an append that the model has
//! already applied fails, the model is rebuilt from the log, so it never
//! believes in an event the log does not hold.

use berth_core::log::{AppendError, AppendOutcome, AppendRequest, EventLog, ExpectedVersion, NewEvent, StreamAppendRequest};
use berth_core::model::DomainModel;
use berth_core::{Clock, CommandEnvelope, CommandId, Context, Entropy, EventId, Position, ReadError, Rejection, StreamVersion};
use parking_lot::Mutex;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

/// How long a retry waits for the same command id still in flight.
const IN_FLIGHT_WAIT_MS_MAX: u64 = 10_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandOutcome {
    /// The position of the last event written, or the head when nothing was
    /// written; reads at or after it see the command's effect.
    pub position: Position,
    pub event_count: usize,
    pub duplicate: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Rejected(#[from] Rejection),
    #[error("the log refused the append: {0}")]
    Log(#[from] AppendError),
    #[error("reading the log failed: {0}")]
    Read(#[from] ReadError),
    #[error("command {0} is still in progress")]
    InProgress(CommandId),
}

pub type CommandCompletion = Box<dyn FnOnce(Result<CommandOutcome, CommandError>) + Send>;

struct Decider {
    model: DomainModel,
    in_flight: HashSet<CommandId>,
}

pub struct CommandBus {
    log: Arc<dyn EventLog>,
    clock: Arc<dyn Clock>,
    entropy: Arc<dyn Entropy>,
    decider: Arc<Mutex<Decider>>,
}

/// Folds the whole log into a domain model.
pub fn load_model(log: &dyn EventLog) -> Result<DomainModel, ReadError> {
    let mut model = DomainModel::default();
    let mut after = Position(0);
    loop {
        let batch = log.read_all(after, 4096)?;
        let Some(last) = batch.last() else { break };
        after = last.position;
        for event in &batch {
            model.apply(&event.stream, event.version, &event.event);
        }
    }
    Ok(model)
}

impl CommandBus {
    pub fn new(log: Arc<dyn EventLog>, clock: Arc<dyn Clock>, entropy: Arc<dyn Entropy>) -> Result<CommandBus, ReadError> {
        let model = load_model(log.as_ref())?;
        Ok(CommandBus { log, clock, entropy, decider: Arc::new(Mutex::new(Decider { model, in_flight: HashSet::new() })) })
    }

    pub fn log(&self) -> &Arc<dyn EventLog> {
        &self.log
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    pub fn entropy(&self) -> &Arc<dyn Entropy> {
        &self.entropy
    }

    /// Reads the current decision model (which may be ahead of durable state
    /// by the appends in flight).
    pub fn with_model<T>(&self, read: impl FnOnce(&DomainModel) -> T) -> T {
        read(&self.decider.lock().model)
    }

    fn event_id(&self, now_ms: u64) -> EventId {
        let mut random = [0u8; 10];
        self.entropy.fill(&mut random);
        EventId::v7(now_ms, random)
    }

    /// Decides a command and queues its events; `done` is called once they are
    /// durable, or with the reason they are not.
    pub fn submit(&self, envelope: CommandEnvelope, done: CommandCompletion) {
        if let Some(command_id) = &envelope.command_id {
            match self.log.command_outcome(command_id) {
                Ok(Some(outcome)) => return done(Ok(outcome_of(&outcome, self.log.head()))),
                Ok(None) => {}
                Err(error) => return done(Err(error.into())),
            }
        }
        let now_ms = self.clock.now_ms();
        let mut decider = self.decider.lock();
        if let Some(command_id) = &envelope.command_id {
            if decider.in_flight.contains(command_id) {
                return done(Err(CommandError::InProgress(command_id.clone())));
            }
        }
        let decision = match decider.model.decide(&envelope, &Context { now_ms }) {
            Ok(decision) => decision,
            Err(rejection) => return done(Err(rejection.into())),
        };
        if decision.is_empty() {
            drop(decider);
            return done(Ok(CommandOutcome { position: self.log.head(), event_count: 0, duplicate: false }));
        }
        let mut streams = Vec::with_capacity(decision.appends.len());
        for append in decision.appends {
            let mut version = append.expected.0;
            let mut events = Vec::with_capacity(append.events.len());
            for event in append.events {
                version += 1;
                decider.model.apply(&append.stream, StreamVersion(version), &event);
                events.push(NewEvent { event_id: self.event_id(now_ms), event });
            }
            streams.push(StreamAppendRequest { stream: append.stream, expected: ExpectedVersion::Exact(append.expected), events });
        }
        let command_id = envelope.command_id.clone();
        if let Some(command_id) = &command_id {
            decider.in_flight.insert(command_id.clone());
        }
        let request = AppendRequest { command_id: command_id.clone(), actor: envelope.actor, recorded_at_ms: now_ms, streams };
        let decider_for_completion = self.decider.clone();
        let log_for_completion = self.log.clone();
        // Submitting inside the lock keeps the log's order equal to the decision order.
        self.log.submit(
            request,
            Box::new(move |result| {
                let finish = move |result: Result<AppendOutcome, AppendError>| {
                    let answer = match result {
                        Ok(outcome) => Ok(outcome_of(&outcome, outcome.last_position)),
                        Err(error) => {
                            tracing::error!(%error, "an append the model had applied failed; rebuilding the model from the log");
                            let mut decider = decider_for_completion.lock();
                            match load_model(log_for_completion.as_ref()) {
                                Ok(model) => decider.model = model,
                                Err(read_error) => tracing::error!(%read_error, "cannot rebuild the model; it may be ahead of the log"),
                            }
                            Err(CommandError::Log(error))
                        }
                    };
                    if let Some(command_id) = &command_id {
                        decider_for_completion.lock().in_flight.remove(command_id);
                    }
                    done(answer);
                };
                match result {
                    Ok(outcome) => finish(Ok(outcome)),
                    // A log may refuse inline, inside `submit`, while this thread
                    // still holds the decider lock: finish on another thread so the
                    // rebuild never waits for a lock its own caller holds.
                    Err(error) => {
                        if std::thread::Builder::new().name("berth-bus-recovery".into()).spawn(move || finish(Err(error))).is_err() {
                            tracing::error!("cannot start the recovery thread; the caller sees the log as closed");
                        }
                    }
                }
            }),
        );
        drop(decider);
    }

    /// Decides a command and waits until its events are durable.
    pub async fn execute(&self, envelope: CommandEnvelope) -> Result<CommandOutcome, CommandError> {
        let waited_ms_max = if envelope.command_id.is_some() { IN_FLIGHT_WAIT_MS_MAX } else { 0 };
        let mut waited_ms = 0;
        loop {
            let (sender, receiver) = tokio::sync::oneshot::channel();
            self.submit(
                envelope.clone(),
                Box::new(move |result| {
                    let _ = sender.send(result);
                }),
            );
            let result = receiver.await.unwrap_or(Err(CommandError::Log(AppendError::Closed)));
            match result {
                Err(CommandError::InProgress(_)) if waited_ms < waited_ms_max => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    waited_ms += 5;
                }
                other => return other,
            }
        }
    }
}

fn outcome_of(outcome: &AppendOutcome, position_if_empty: Position) -> CommandOutcome {
    let event_count = (outcome.last_position.0 + 1).saturating_sub(outcome.first_position.0) as usize;
    let position = if event_count == 0 { position_if_empty } else { outcome.last_position };
    CommandOutcome { position, event_count, duplicate: outcome.duplicate }
}
