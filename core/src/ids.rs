//! Identifiers: streams, positions, versions, command and event ids.
//!
//! A stream id is `kind/key` (for example `container/4f1c...`); its text form
//! is what the log stores and what NATS subjects are built from.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The longest key a stream id may have, in bytes; longer ones are rejected.
pub const STREAM_KEY_LENGTH_BYTES_MAX: usize = 256;

/// A global position in the log: the n-th event ever appended, starting at 1.
/// Position 0 means "before the first event".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
pub struct Position(pub u64);

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The version of a stream: the number of events in it (its last event's version).
/// 0 means the stream has no events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
pub struct StreamVersion(pub u64);

/// The kind of aggregate a stream belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StreamKind {
    Vch,
    Container,
    Image,
    Volume,
    Network,
}

impl StreamKind {
    pub const ALL: [StreamKind; 5] = [StreamKind::Vch, StreamKind::Container, StreamKind::Image, StreamKind::Volume, StreamKind::Network];

    pub fn as_str(self) -> &'static str {
        match self {
            StreamKind::Vch => "vch",
            StreamKind::Container => "container",
            StreamKind::Image => "image",
            StreamKind::Volume => "volume",
            StreamKind::Network => "network",
        }
    }

    pub fn parse(text: &str) -> Option<StreamKind> {
        StreamKind::ALL.into_iter().find(|kind| kind.as_str() == text)
    }
}

/// Identifies one stream (one aggregate instance).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct StreamId {
    pub kind: StreamKind,
    pub key: String,
}

impl StreamId {
    pub fn new(kind: StreamKind, key: impl Into<String>) -> StreamId {
        StreamId { kind, key: key.into() }
    }

    /// Parses `kind/key`; `None` for an unknown kind, an empty or oversize key.
    pub fn parse(text: &str) -> Option<StreamId> {
        let (kind, key) = text.split_once('/')?;
        let kind = StreamKind::parse(kind)?;
        let id = StreamId::new(kind, key);
        id.is_valid().then_some(id)
    }

    /// A key is 1 to [`STREAM_KEY_LENGTH_BYTES_MAX`] bytes without NUL (logs use NUL as a key separator).
    pub fn is_valid(&self) -> bool {
        !self.key.is_empty() && self.key.len() <= STREAM_KEY_LENGTH_BYTES_MAX && !self.key.contains('\0')
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind.as_str(), self.key)
    }
}

/// The idempotency key of a command: a retried command with the same id returns
/// its first result and writes nothing.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CommandId(pub String);

impl fmt::Display for CommandId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A UUID (version 7 when made by [`crate::Entropy`] and a clock) naming one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EventId(pub [u8; 16]);

impl EventId {
    /// Builds a UUIDv7 from a millisecond timestamp and 10 random bytes.
    pub fn v7(unix_ms: u64, random: [u8; 10]) -> EventId {
        let mut bytes = [0u8; 16];
        bytes[..6].copy_from_slice(&unix_ms.to_be_bytes()[2..]);
        bytes[6..].copy_from_slice(&random);
        bytes[6] = (bytes[6] & 0x0f) | 0x70;
        bytes[8] = (bytes[8] & 0x3f) | 0x80;
        EventId(bytes)
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.0;
        for (index, byte) in b.iter().enumerate() {
            if matches!(index, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids_round_trip_through_text() {
        let id = StreamId::new(StreamKind::Container, "abc");
        assert_eq!(StreamId::parse(&id.to_string()), Some(id));
        assert_eq!(StreamId::parse("bogus/abc"), None);
        assert_eq!(StreamId::parse("container/"), None);
        assert_eq!(StreamId::parse(&format!("vch/{}", "x".repeat(300))), None);
    }

    #[test]
    fn event_ids_are_uuid_v7() {
        let id = EventId::v7(0x0123_4567_89ab, [0xff; 10]);
        let text = id.to_string();
        assert_eq!(text.len(), 36);
        assert!(text.starts_with("01234567-89ab-7"));
    }
}
