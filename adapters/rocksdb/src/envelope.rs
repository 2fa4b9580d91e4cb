//! The on-disk envelope: `crc32c (4 bytes, little-endian) ++ MessagePack`.
//! The checksum covers the MessagePack bytes and is verified on every read.

use berth_core::{CommandId, DomainEvent, EventId, Position, RecordedEvent, StreamId, StreamVersion};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct EnvelopeV1 {
    position: u64,
    stream: String,
    version: u64,
    event_id: [u8; 16],
    command_id: Option<String>,
    actor: String,
    recorded_at_ms: u64,
    schema_version: u16,
    event_type: String,
    event: DomainEvent,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvelopeError {
    #[error("envelope is {0} bytes, shorter than its checksum")]
    Truncated(usize),
    #[error("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum { stored: u32, computed: u32 },
    #[error("undecodable envelope: {0}")]
    Decode(String),
    #[error("bad stream id {0:?}")]
    Stream(String),
    #[error("{0}")]
    Schema(String),
}

pub fn encode_envelope(event: &RecordedEvent) -> Vec<u8> {
    let envelope = EnvelopeV1 {
        position: event.position.0,
        stream: event.stream.to_string(),
        version: event.version.0,
        event_id: event.event_id.0,
        command_id: event.command_id.as_ref().map(|id| id.0.clone()),
        actor: event.actor.clone(),
        recorded_at_ms: event.recorded_at_ms,
        schema_version: event.schema_version,
        event_type: event.event.type_name().to_string(),
        event: event.event.clone(),
    };
    let body = rmp_serde::to_vec_named(&envelope).expect("a domain event always encodes to MessagePack");
    let mut bytes = Vec::with_capacity(body.len() + 4);
    bytes.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
    bytes.extend_from_slice(&body);
    bytes
}

pub fn decode_envelope(bytes: &[u8]) -> Result<RecordedEvent, EnvelopeError> {
    if bytes.len() < 4 {
        return Err(EnvelopeError::Truncated(bytes.len()));
    }
    let stored = u32::from_le_bytes(bytes[..4].try_into().expect("four bytes"));
    let computed = crc32c::crc32c(&bytes[4..]);
    if stored != computed {
        return Err(EnvelopeError::Checksum { stored, computed });
    }
    let envelope: EnvelopeV1 = rmp_serde::from_slice(&bytes[4..]).map_err(|error| EnvelopeError::Decode(error.to_string()))?;
    let stream = StreamId::parse(&envelope.stream).ok_or_else(|| EnvelopeError::Stream(envelope.stream.clone()))?;
    let event =
        berth_core::events::upcast(envelope.schema_version, envelope.event).map_err(|error| EnvelopeError::Schema(error.to_string()))?;
    Ok(RecordedEvent {
        position: Position(envelope.position),
        stream,
        version: StreamVersion(envelope.version),
        event_id: EventId(envelope.event_id),
        command_id: envelope.command_id.map(CommandId),
        actor: envelope.actor,
        recorded_at_ms: envelope.recorded_at_ms,
        schema_version: berth_core::EVENT_SCHEMA_VERSION,
        event,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_core::StreamKind;

    fn sample() -> RecordedEvent {
        RecordedEvent {
            position: Position(7),
            stream: StreamId::new(StreamKind::Volume, "data"),
            version: StreamVersion(1),
            event_id: EventId::v7(1, [3; 10]),
            command_id: Some(CommandId("c".into())),
            actor: "me".into(),
            recorded_at_ms: 5,
            schema_version: 1,
            event: DomainEvent::VolumeRemoved,
        }
    }

    #[test]
    fn envelopes_round_trip_and_detect_damage() {
        let bytes = encode_envelope(&sample());
        assert_eq!(decode_envelope(&bytes).unwrap(), sample());
        let mut flipped = bytes.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(matches!(decode_envelope(&flipped), Err(EnvelopeError::Checksum { .. })));
        assert!(matches!(decode_envelope(&bytes[..3]), Err(EnvelopeError::Truncated(3))));
    }
}
