//! Small helpers shared by the Docker handlers: query flags, filters, times,
//! Docker's human durations and its generated names.

use super::errors::ApiError;
use std::collections::{BTreeMap, HashMap};

/// Docker's boolean query values: `1`, `true`, `True` are true.
pub fn flag(query: &HashMap<String, String>, name: &str) -> bool {
    matches!(query.get(name).map(String::as_str), Some("1" | "true" | "True" | "TRUE" | "yes"))
}

/// Parses `filters`: the CLI sends `{"k":{"v":true}}`, docker-py `{"k":["v"]}`.
pub fn filters(query: &HashMap<String, String>) -> Result<BTreeMap<String, Vec<String>>, ApiError> {
    let Some(text) = query.get("filters").filter(|t| !t.is_empty()) else { return Ok(BTreeMap::new()) };
    let value: serde_json::Value = serde_json::from_str(text).map_err(|error| ApiError::bad_request(format!("invalid filter: {error}")))?;
    let object = value.as_object().ok_or_else(|| ApiError::bad_request("invalid filter: want a JSON object"))?;
    let mut parsed = BTreeMap::new();
    for (key, values) in object {
        let list: Vec<String> = match values {
            serde_json::Value::Array(items) => items.iter().filter_map(|v| v.as_str().map(String::from)).collect(),
            serde_json::Value::Object(map) => map.iter().filter(|(_, on)| on.as_bool().unwrap_or(false)).map(|(k, _)| k.clone()).collect(),
            serde_json::Value::String(single) => vec![single.clone()],
            _ => return Err(ApiError::bad_request(format!("invalid filter {key:?}"))),
        };
        parsed.insert(key.clone(), list);
    }
    Ok(parsed)
}

/// Rejects filter keys an endpoint does not know, as Docker does.
pub fn check_filter_keys(filters: &BTreeMap<String, Vec<String>>, known: &[&str]) -> Result<(), ApiError> {
    for key in filters.keys() {
        if !known.contains(&key.as_str()) {
            return Err(ApiError::bad_request(format!("invalid filter '{key}'")));
        }
    }
    Ok(())
}

/// Matches `key=value` or `key` label filters.
pub fn labels_match(labels: &BTreeMap<String, String>, wanted: &[String]) -> bool {
    wanted.iter().all(|filter| match filter.split_once('=') {
        Some((key, value)) => labels.get(key).map(String::as_str) == Some(value),
        None => labels.contains_key(filter),
    })
}

/// RFC 3339 with nanoseconds, UTC; Docker's zero time for 0.
pub fn rfc3339_ms(unix_ms: u64) -> String {
    if unix_ms == 0 {
        return "0001-01-01T00:00:00Z".into();
    }
    let time = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_ms) * 1_000_000).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    time.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

pub fn rfc3339_ns(unix_ns: i128) -> String {
    let time = time::OffsetDateTime::from_unix_timestamp_nanos(unix_ns).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    time.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

/// Docker's `units.HumanDuration`.
pub fn human_duration(seconds: u64) -> String {
    let minutes = seconds / 60;
    let hours = minutes / 60;
    match seconds {
        0 => "Less than a second".into(),
        1 => "1 second".into(),
        s if s < 60 => format!("{s} seconds"),
        _ if minutes == 1 => "About a minute".into(),
        _ if minutes < 60 => format!("{minutes} minutes"),
        _ if hours == 1 => "About an hour".into(),
        _ if hours < 48 => format!("{hours} hours"),
        _ if hours < 24 * 7 * 2 => format!("{} days", hours / 24),
        _ if hours < 24 * 30 * 2 => format!("{} weeks", hours / 24 / 7),
        _ if hours < 24 * 365 * 2 => format!("{} months", hours / 24 / 30),
        _ => format!("{} years", hours / 24 / 365),
    }
}

/// Parses a Docker time argument: unix seconds (with fractions) or RFC 3339; returns unix ms.
pub fn parse_time_ms(text: &str) -> Result<u64, ApiError> {
    if let Ok(seconds) = text.parse::<f64>() {
        return Ok((seconds * 1000.0).max(0.0) as u64);
    }
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map(|t| (t.unix_timestamp_nanos() / 1_000_000).max(0) as u64)
        .map_err(|_| ApiError::bad_request(format!("invalid time {text:?}: want unix seconds or RFC 3339")))
}

const ADJECTIVES: [&str; 24] = [
    "admiring",
    "brave",
    "calm",
    "clever",
    "dazzling",
    "eager",
    "elegant",
    "focused",
    "gallant",
    "happy",
    "jolly",
    "keen",
    "lucid",
    "modest",
    "nifty",
    "optimistic",
    "peaceful",
    "quirky",
    "relaxed",
    "serene",
    "sharp",
    "trusting",
    "vibrant",
    "zealous",
];
const SURNAMES: [&str; 24] = [
    "babbage", "curie", "darwin", "einstein", "euler", "fermat", "galileo", "hopper", "hypatia", "kepler", "lamport", "lovelace",
    "meitner", "newton", "noether", "pascal", "ritchie", "shannon", "tesla", "thompson", "turing", "volta", "wozniak", "yonath",
];

/// A Docker-style generated name from random bytes.
pub fn generated_name(random: [u8; 3]) -> String {
    let adjective = ADJECTIVES[random[0] as usize % ADJECTIVES.len()];
    let surname = SURNAMES[random[1] as usize % SURNAMES.len()];
    if random[2] % 4 == 0 {
        format!("{adjective}_{surname}{}", random[2] % 10)
    } else {
        format!("{adjective}_{surname}")
    }
}

/// The short form of an id (12 hex digits, no `sha256:`).
pub fn short_id(id: &str) -> &str {
    let id = id.strip_prefix("sha256:").unwrap_or(id);
    &id[..id.len().min(12)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_accept_both_client_shapes() {
        let mut query = HashMap::new();
        query.insert("filters".to_string(), r#"{"status":{"running":true},"name":["web"]}"#.to_string());
        let parsed = filters(&query).unwrap();
        assert_eq!(parsed["status"], vec!["running"]);
        assert_eq!(parsed["name"], vec!["web"]);
        query.insert("filters".to_string(), "not json".to_string());
        assert!(filters(&query).is_err());
    }

    #[test]
    fn durations_read_like_docker() {
        assert_eq!(human_duration(0), "Less than a second");
        assert_eq!(human_duration(5), "5 seconds");
        assert_eq!(human_duration(90), "About a minute");
        assert_eq!(human_duration(7200), "2 hours");
    }
}
