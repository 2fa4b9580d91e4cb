//! Yardsticks for `berth bench nats`: raw JetStream async publishing of the
//! relay's own messages, and a consumer that timestamps each delivered
//! position. They live here so that only this crate talks to NATS.

use crate::connection::{self, ConnectionError};
use crate::relay::{prepare_batch, PreparedMessage};
use crate::subject::{POSITION_HEADER, SUBJECT_PREFIX};
use crate::vch::VchResolver;
use async_nats::jetstream::{self, consumer, message::PublishMessage, stream};
use berth_core::log::EventLog;
use berth_core::{Position, ReadError};
use futures_util::stream::{FuturesOrdered, StreamExt as _};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Connection(#[from] ConnectionError),
    #[error("reading the log failed: {0}")]
    Read(#[from] ReadError),
    #[error("NATS refused: {0}")]
    Nats(String),
}

fn nats_error(error: impl std::fmt::Display) -> BenchError {
    BenchError::Nats(error.to_string())
}

async fn connected(url: &str) -> Result<async_nats::Client, BenchError> {
    let client = connection::connect(url, "berth-bench").await?;
    if !connection::wait_connected(&client, connection::CONNECT_WAIT).await {
        return Err(BenchError::Nats(format!("cannot reach NATS at {url}")));
    }
    Ok(client)
}

/// The relay's messages for the events after `after`, up to `count_max`.
pub struct PreparedMessages(Vec<PreparedMessage>);

impl PreparedMessages {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

pub fn prepare_messages(log: &dyn EventLog, count_max: usize) -> Result<PreparedMessages, BenchError> {
    let mut resolver = VchResolver::default();
    let mut messages = Vec::new();
    let mut after = Position(0);
    while messages.len() < count_max {
        let batch = prepare_batch(log, &mut resolver, after)?;
        let Some(last) = batch.last() else { break };
        after = last.position;
        messages.extend(batch);
    }
    messages.truncate(count_max);
    Ok(PreparedMessages(messages))
}

/// Deletes a stream if it exists (bench streams are throwaway).
pub async fn delete_stream(url: &str, name: &str) -> Result<(), BenchError> {
    let context = jetstream::new(connected(url).await?);
    let _ = context.delete_stream(name).await;
    Ok(())
}

/// Publishes `messages` to a fresh stream `stream_name` on subjects under
/// `subject_prefix` (instead of `berth`), asynchronously with at most
/// `in_flight_count_max` unacknowledged, and returns how long it took from the
/// first publish to the last ack.
pub async fn raw_publish(
    url: &str,
    stream_name: &str,
    subject_prefix: &str,
    messages: &PreparedMessages,
    in_flight_count_max: usize,
) -> Result<Duration, BenchError> {
    let client = connected(url).await?;
    let context = jetstream::ContextBuilder::new().max_ack_inflight(in_flight_count_max * 2).backpressure_on_inflight(true).build(client);
    let _ = context.delete_stream(stream_name).await;
    context
        .create_stream(stream::Config {
            name: stream_name.to_string(),
            subjects: vec![format!("{subject_prefix}.>")],
            ..Default::default()
        })
        .await
        .map_err(nats_error)?;
    // Encode everything first: the yardstick is publishing alone.
    let outgoing: Vec<(String, async_nats::HeaderMap, bytes::Bytes)> = messages
        .0
        .iter()
        .map(|message| {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(async_nats::header::NATS_MESSAGE_ID, message.event_id.as_str());
            headers.insert(POSITION_HEADER, message.position.0.to_string());
            let subject = format!("{subject_prefix}{}", &message.subject[SUBJECT_PREFIX.len()..]);
            (subject, headers, message.payload.clone())
        })
        .collect();
    let started = Instant::now();
    let mut in_flight: FuturesOrdered<<async_nats::jetstream::context::PublishAckFuture as std::future::IntoFuture>::IntoFuture> =
        FuturesOrdered::new();
    for (subject, headers, payload) in outgoing {
        if in_flight.len() >= in_flight_count_max {
            if let Some(result) = in_flight.next().await {
                result.map_err(nats_error)?;
            }
        }
        let ack = context.send_publish(subject, PublishMessage::build().payload(payload).headers(headers)).await.map_err(nats_error)?;
        in_flight.push_back(std::future::IntoFuture::into_future(ack));
    }
    while let Some(result) = in_flight.next().await {
        result.map_err(nats_error)?;
    }
    let elapsed = started.elapsed();
    let _ = context.delete_stream(stream_name).await;
    Ok(elapsed)
}

/// Reads `stream_name` from its first message with an ordered consumer and
/// sends each message's position with the instant it arrived, until the
/// receiver is dropped.
pub async fn consume_positions(url: &str, stream_name: &str, arrivals: std::sync::mpsc::Sender<(u64, Instant)>) -> Result<(), BenchError> {
    let context = jetstream::new(connected(url).await?);
    let stream = context.get_stream(stream_name).await.map_err(nats_error)?;
    let consumer = stream.create_consumer(consumer::pull::OrderedConfig::default()).await.map_err(nats_error)?;
    let mut messages = consumer.messages().await.map_err(nats_error)?;
    while let Some(message) = messages.next().await {
        let arrived = Instant::now();
        let message = message.map_err(nats_error)?;
        let position =
            message.headers.as_ref().and_then(|headers| headers.get(POSITION_HEADER)).and_then(|value| value.as_str().parse::<u64>().ok());
        if let Some(position) = position {
            if arrivals.send((position, arrived)).is_err() {
                return Ok(());
            }
        }
    }
    Ok(())
}
