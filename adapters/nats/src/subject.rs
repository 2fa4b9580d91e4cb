//! NATS subjects for events: `berth.<vch>.<stream kind>.<id>.<event type>`,
//! namespace first and identifiers last, so `berth.default.container.>` or
//! `berth.*.*.*.ContainerStarted` select what a consumer wants.
//!
//! Subject tokens cannot hold `.`, `*`, `>` or whitespace; volume names and
//! image ids may hold some of them, so such bytes (and `%` itself) are written
//! as `%XX`, which keeps the mapping reversible and one token per identifier.

use berth_core::StreamId;

/// The first token of every subject berth publishes.
pub const SUBJECT_PREFIX: &str = "berth";
/// The subject filter that covers every event berth publishes.
pub const SUBJECT_FILTER_ALL: &str = "berth.>";
/// The header that carries the event's log position beside the payload, so
/// the relay can find where the stream ends without decoding payloads.
pub const POSITION_HEADER: &str = "Berth-Position";

/// Writes one identifier as a subject token.
pub fn escape_token(text: &str) -> String {
    if text.is_empty() {
        // An empty token would make an invalid subject; `%` alone never comes out of escaping.
        return "%".to_string();
    }
    let mut token = String::with_capacity(text.len());
    for byte_char in text.chars() {
        let needs_escape = matches!(byte_char, '.' | '*' | '>' | '%') || byte_char.is_whitespace() || byte_char.is_control();
        if needs_escape {
            let mut buffer = [0u8; 4];
            for byte in byte_char.encode_utf8(&mut buffer).bytes() {
                token.push_str(&format!("%{byte:02X}"));
            }
        } else {
            token.push(byte_char);
        }
    }
    token
}

/// The subject of one event.
pub fn subject_of(vch: &str, stream: &StreamId, event_type: &str) -> String {
    format!("{SUBJECT_PREFIX}.{}.{}.{}.{}", escape_token(vch), stream.kind.as_str(), escape_token(&stream.key), escape_token(event_type))
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_core::StreamKind;

    #[test]
    fn subjects_put_the_namespace_first_and_identifiers_last() {
        let stream = StreamId::new(StreamKind::Container, "4f1c");
        assert_eq!(subject_of("default", &stream, "ContainerStarted"), "berth.default.container.4f1c.ContainerStarted");
    }

    #[test]
    fn reserved_characters_are_escaped_into_one_token() {
        let stream = StreamId::new(StreamKind::Volume, "my.vol *x>%");
        let subject = subject_of("prod.eu", &stream, "VolumeCreated");
        assert_eq!(subject, "berth.prod%2Eeu.volume.my%2Evol%20%2Ax%3E%25.VolumeCreated");
        assert_eq!(subject.split('.').count(), 5);
        assert_eq!(escape_token(""), "%");
        assert_eq!(escape_token("sha256:ab"), "sha256:ab");
    }
}
