//! Verification of a whole log: every envelope's checksum, positions without
//! gaps, stream versions without gaps, and the stream indexes agreeing with
//! the events. Used when opening (berth refuses to serve a corrupt log) and by
//! `berth log verify`.

use crate::envelope::decode_envelope;
use crate::log::{open_db, stream_key, OpenError, CF_EVENTS, CF_HEADS, CF_STREAMS};
use berth_core::StreamId;
use rocksdb::{IteratorMode, DB};
use std::collections::HashMap;
use std::path::Path;

pub(crate) struct Scan {
    pub head: u64,
    pub stream_heads: HashMap<StreamId, u64>,
}

pub(crate) enum VerifyFailure {
    Corrupt { position: u64, reason: String },
    Storage(String),
}

/// Walks every event in position order; stops at the first problem.
pub(crate) fn scan_events(db: &DB, check_indexes: bool) -> Result<Scan, VerifyFailure> {
    let cf_events = db.cf_handle(CF_EVENTS).expect("events column family");
    let cf_streams = db.cf_handle(CF_STREAMS).expect("streams column family");
    let cf_heads = db.cf_handle(CF_HEADS).expect("heads column family");
    let mut head = 0u64;
    let mut stream_heads: HashMap<StreamId, u64> = HashMap::new();
    for item in db.iterator_cf(&cf_events, IteratorMode::Start) {
        let (key, value) = item.map_err(|error| VerifyFailure::Storage(error.to_string()))?;
        let expected = head + 1;
        let corrupt = |reason: String| VerifyFailure::Corrupt { position: expected, reason };
        let position = u64::from_be_bytes(key.as_ref().try_into().map_err(|_| corrupt("event key is not 8 bytes".into()))?);
        if position != expected {
            return Err(corrupt(format!("position {expected} is missing (the next event is at {position})")));
        }
        let event = decode_envelope(&value).map_err(|error| corrupt(error.to_string()))?;
        if event.position.0 != position {
            return Err(corrupt(format!("the envelope says position {}", event.position)));
        }
        let version = stream_heads.entry(event.stream.clone()).or_insert(0);
        if event.version.0 != *version + 1 {
            return Err(corrupt(format!("{} jumps from version {} to {}", event.stream, version, event.version.0)));
        }
        *version = event.version.0;
        if check_indexes {
            let indexed = db
                .get_cf(&cf_streams, stream_key(&event.stream.to_string(), event.version.0))
                .map_err(|error| VerifyFailure::Storage(error.to_string()))?;
            if indexed.as_deref() != Some(&position.to_be_bytes()[..]) {
                return Err(corrupt(format!("the stream index of {} version {} does not point here", event.stream, event.version.0)));
            }
        }
        head = position;
    }
    if check_indexes {
        for (stream, version) in &stream_heads {
            let stored = db.get_cf(&cf_heads, stream.to_string().as_bytes()).map_err(|error| VerifyFailure::Storage(error.to_string()))?;
            if stored.as_deref() != Some(&version.to_be_bytes()[..]) {
                return Err(VerifyFailure::Corrupt {
                    position: head,
                    reason: format!("the stored head of {stream} is not version {version}"),
                });
            }
        }
    }
    Ok(Scan { head, stream_heads })
}

/// What `berth log verify` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    pub event_count: u64,
    pub stream_count: usize,
    /// The first problem found, if any, with the position it is at.
    pub problem: Option<(u64, String)>,
}

/// Opens the log at `path` (which must not be in use by a running berth) and verifies it.
pub fn verify_log(path: &Path) -> Result<VerifyReport, OpenError> {
    if !path.join("CURRENT").exists() {
        return Err(OpenError::Storage { path: path.to_path_buf(), reason: "no log here".into() });
    }
    let db = open_db(path)?;
    match scan_events(&db, true) {
        Ok(scan) => Ok(VerifyReport { event_count: scan.head, stream_count: scan.stream_heads.len(), problem: None }),
        Err(VerifyFailure::Corrupt { position, reason }) => {
            Ok(VerifyReport { event_count: position.saturating_sub(1), stream_count: 0, problem: Some((position, reason)) })
        }
        Err(VerifyFailure::Storage(reason)) => Err(OpenError::Storage { path: path.to_path_buf(), reason }),
    }
}
