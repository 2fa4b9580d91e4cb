//! Reading a whole stream back, for tests and diagnostics: every message
//! with its sequence, subject, position header, message id and event.

use crate::connection::{self, ConnectionError};
use crate::subject::POSITION_HEADER;
use async_nats::jetstream::{self, consumer};
use berth_core::RecordedEvent;
use futures_util::StreamExt as _;
use std::time::Duration;

/// How long one message may take to arrive before the read gives up.
const MESSAGE_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq)]
pub struct StoredMessage {
    pub sequence: u64,
    pub subject: String,
    /// The `Berth-Position` header, if the message has one.
    pub position: Option<u64>,
    /// The `Nats-Msg-Id` header, if the message has one.
    pub message_id: Option<String>,
    /// The payload as an event, if it is one.
    pub event: Option<RecordedEvent>,
}

#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error(transparent)]
    Connection(#[from] ConnectionError),
    #[error("cannot reach NATS at {0}")]
    Unreachable(String),
    #[error("NATS refused: {0}")]
    Nats(String),
}

fn nats_error(error: impl std::fmt::Display) -> InspectError {
    InspectError::Nats(error.to_string())
}

/// Every message of `stream_name`, in stream order.
pub async fn stream_messages(url: &str, stream_name: &str) -> Result<Vec<StoredMessage>, InspectError> {
    let client = connection::connect(url, "berth-inspect").await?;
    if !connection::wait_connected(&client, connection::CONNECT_WAIT).await {
        return Err(InspectError::Unreachable(url.to_string()));
    }
    let context = jetstream::new(client);
    let mut stream = context.get_stream(stream_name).await.map_err(nats_error)?;
    let expected_count = stream.info().await.map_err(nats_error)?.state.messages;
    let mut stored = Vec::new();
    if expected_count == 0 {
        return Ok(stored);
    }
    let consumer = stream.create_consumer(consumer::pull::OrderedConfig::default()).await.map_err(nats_error)?;
    let mut messages = consumer.messages().await.map_err(nats_error)?;
    while (stored.len() as u64) < expected_count {
        let message = tokio::time::timeout(MESSAGE_WAIT, messages.next())
            .await
            .map_err(|_| InspectError::Nats(format!("message {} of {expected_count} did not arrive", stored.len() + 1)))?
            .ok_or_else(|| InspectError::Nats("the consumer ended".to_string()))?
            .map_err(nats_error)?;
        let sequence = message.info().map_err(nats_error)?.stream_sequence;
        let header = |name: &str| message.headers.as_ref().and_then(|headers| headers.get(name)).map(|value| value.as_str().to_string());
        stored.push(StoredMessage {
            sequence,
            subject: message.subject.to_string(),
            position: header(POSITION_HEADER).and_then(|text| text.parse().ok()),
            message_id: header(async_nats::header::NATS_MESSAGE_ID.as_ref()),
            event: serde_json::from_slice(&message.payload).ok(),
        });
    }
    Ok(stored)
}
