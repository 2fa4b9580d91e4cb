//! The JetStream stream the relay publishes to: its settings, and creating or
//! verifying it at start. An existing stream whose settings conflict with the
//! asked ones is refused with both values named, never silently changed:
//! changing retention or replicas of a live stream is an operator's decision.

use async_nats::jetstream::{self, stream};
use berth_core::Position;
use std::fmt;
use std::time::Duration;

use crate::subject::{POSITION_HEADER, SUBJECT_FILTER_ALL};

/// The dedup window berth asks for: how long JetStream remembers a
/// `Nats-Msg-Id`. Replays after a crash within it are answered as duplicates;
/// older ones are still kept out by the expected-sequence check.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// How JetStream drops messages, as `--nats-retention` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retention {
    /// Keep messages until a limit (age) drops them: every consumer sees the whole history.
    Limits,
    /// Drop a message once every consumer has acknowledged it.
    Interest,
    /// Drop a message once one consumer has acknowledged it.
    WorkQueue,
}

impl Retention {
    pub fn parse(text: &str) -> Option<Retention> {
        match text {
            "limits" => Some(Retention::Limits),
            "interest" => Some(Retention::Interest),
            "workqueue" => Some(Retention::WorkQueue),
            _ => None,
        }
    }

    fn policy(self) -> stream::RetentionPolicy {
        match self {
            Retention::Limits => stream::RetentionPolicy::Limits,
            Retention::Interest => stream::RetentionPolicy::Interest,
            Retention::WorkQueue => stream::RetentionPolicy::WorkQueue,
        }
    }

    fn of(policy: stream::RetentionPolicy) -> Retention {
        match policy {
            stream::RetentionPolicy::Limits => Retention::Limits,
            stream::RetentionPolicy::Interest => Retention::Interest,
            stream::RetentionPolicy::WorkQueue => Retention::WorkQueue,
        }
    }
}

impl fmt::Display for Retention {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Retention::Limits => "limits",
            Retention::Interest => "interest",
            Retention::WorkQueue => "workqueue",
        })
    }
}

/// What the stream must look like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSettings {
    pub name: String,
    pub replicas: usize,
    pub retention: Retention,
    /// How long messages are kept; zero keeps them until another limit drops them.
    pub max_age: Duration,
}

impl StreamSettings {
    pub fn new(name: impl Into<String>) -> StreamSettings {
        StreamSettings { name: name.into(), replicas: 1, retention: Retention::Limits, max_age: Duration::ZERO }
    }

    fn config(&self) -> stream::Config {
        stream::Config {
            name: self.name.clone(),
            subjects: vec![SUBJECT_FILTER_ALL.to_string()],
            retention: self.retention.policy(),
            num_replicas: self.replicas,
            max_age: self.max_age,
            duplicate_window: DUPLICATE_WINDOW,
            storage: stream::StorageType::File,
            description: Some("berth's event log, published by its relay".to_string()),
            ..Default::default()
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("NATS has no JetStream (start nats-server with -js, or enable JetStream for this account): {0}")]
    NoJetStream(String),
    #[error("the JetStream stream {name} exists with {setting} = {existing}, but berth was asked for {asked}; change the flag, or edit or delete the stream")]
    Conflict { name: String, setting: &'static str, existing: String, asked: String },
    #[error("the JetStream stream {name} does not capture the subjects {SUBJECT_FILTER_ALL} (it has {subjects:?})")]
    SubjectsMissing { name: String, subjects: Vec<String> },
    #[error("the JetStream stream {name} holds a message at sequence {sequence} that berth did not publish (no {POSITION_HEADER} header); the stream must belong to berth alone")]
    ForeignMessage { name: String, sequence: u64 },
    #[error("the JetStream stream {name} ends at log position {stream_position}, beyond this log's head {log_head}: it belongs to another berth log; use another --nats-stream")]
    AheadOfLog { name: String, stream_position: u64, log_head: u64 },
    #[error("JetStream request failed: {0}")]
    Request(String),
}

impl StreamError {
    /// True for errors an operator must fix; false for ones a retry may cure.
    pub fn is_misconfiguration(&self) -> bool {
        !matches!(self, StreamError::Request(_))
    }
}

/// Where the stream ends: its last sequence, and the log position of the message there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StreamEnd {
    pub last_sequence: u64,
    /// Position 0 when the stream is empty.
    pub last_position: Position,
}

/// An error with its sources, as one line: async-nats puts the telling part
/// (no responders, the server's JetStream error) in the source.
fn chain_text(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        let inner_text = inner.to_string();
        if !text.contains(&inner_text) {
            text.push_str(": ");
            text.push_str(&inner_text);
        }
        source = inner.source();
    }
    text
}

fn request_error(error: impl std::error::Error + 'static) -> StreamError {
    let text = chain_text(&error);
    let lowercase = text.to_lowercase();
    // Without JetStream nothing answers on $JS.API, or the server says so.
    // (async-nats words no responders as "requested JetStream resource does not exist").
    if lowercase.contains("jetstream not enabled") || lowercase.contains("no responders") || lowercase.contains("resource does not exist") {
        StreamError::NoJetStream(text)
    } else {
        StreamError::Request(text)
    }
}

/// Creates the stream, or checks that the existing one has the asked settings.
pub async fn ensure_stream(context: &jetstream::Context, settings: &StreamSettings) -> Result<stream::Stream, StreamError> {
    // Not `query_account`: its reply type wants fields nats-server 2.9 does not send.
    match context.get_stream(&settings.name).await {
        Ok(mut existing) => {
            let info = existing.info().await.map_err(request_error)?.clone();
            check_settings(&info.config, settings)?;
            Ok(existing)
        }
        Err(error) if is_stream_not_found(&error) => context.create_stream(settings.config()).await.map_err(request_error),
        Err(error) => Err(request_error(error)),
    }
}

fn is_stream_not_found(error: &jetstream::context::GetStreamError) -> bool {
    match error.kind() {
        jetstream::context::GetStreamErrorKind::JetStream(inner) => inner.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND,
        _ => false,
    }
}

fn check_settings(config: &stream::Config, settings: &StreamSettings) -> Result<(), StreamError> {
    let conflict = |setting: &'static str, existing: String, asked: String| StreamError::Conflict {
        name: settings.name.clone(),
        setting,
        existing,
        asked,
    };
    if !config.subjects.iter().any(|subject| subject == SUBJECT_FILTER_ALL) {
        return Err(StreamError::SubjectsMissing { name: settings.name.clone(), subjects: config.subjects.clone() });
    }
    let retention = Retention::of(config.retention);
    if retention != settings.retention {
        return Err(conflict("retention", retention.to_string(), settings.retention.to_string()));
    }
    if config.num_replicas.max(1) != settings.replicas {
        return Err(conflict("replicas", config.num_replicas.to_string(), settings.replicas.to_string()));
    }
    if config.max_age != settings.max_age {
        return Err(conflict("max age", format!("{:?}", config.max_age), format!("{:?}", settings.max_age)));
    }
    if config.duplicate_window < DUPLICATE_WINDOW {
        return Err(conflict("duplicate window", format!("{:?}", config.duplicate_window), format!("at least {DUPLICATE_WINDOW:?}")));
    }
    Ok(())
}

/// Reads where the stream ends, from its last message's position header.
pub async fn stream_end(stream: &mut stream::Stream, name: &str) -> Result<StreamEnd, StreamError> {
    let state = stream.info().await.map_err(request_error)?.state.clone();
    if state.messages == 0 {
        return Ok(StreamEnd { last_sequence: state.last_sequence, last_position: Position(0) });
    }
    let message = stream.get_raw_message(state.last_sequence).await.map_err(request_error)?;
    let position = message
        .headers
        .get(POSITION_HEADER)
        .and_then(|value| value.as_str().parse::<u64>().ok())
        .ok_or(StreamError::ForeignMessage { name: name.to_string(), sequence: state.last_sequence })?;
    Ok(StreamEnd { last_sequence: state.last_sequence, last_position: Position(position) })
}
