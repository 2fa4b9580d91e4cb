//! [`LogReader`]: reads a log that a running berth may hold open, as a RocksDB
//! secondary instance (no lock taken, no writes), for `berth log tail` and
//! `berth log verify` beside a live server.

use crate::envelope::decode_envelope;
use crate::log::{db_options, OpenError, COLUMN_FAMILIES, CF_EVENTS};
use crate::verify::{scan_events, VerifyFailure, VerifyReport};
use berth_core::{Position, ReadError, RecordedEvent};
use rocksdb::{Direction, IteratorMode, DB};
use std::path::{Path, PathBuf};

pub struct LogReader {
    db: DB,
    _secondary_dir: tempfile::TempDir,
    path: PathBuf,
}

impl LogReader {
    pub fn open(path: &Path) -> Result<LogReader, OpenError> {
        let fail = |reason: String| OpenError::Storage { path: path.to_path_buf(), reason };
        if !path.join("CURRENT").exists() {
            return Err(fail("no log here (is this a berth data directory's log?)".into()));
        }
        let secondary_dir = tempfile::tempdir().map_err(|error| fail(error.to_string()))?;
        let mut options = db_options();
        options.create_if_missing(false);
        options.set_max_open_files(-1);
        let db = DB::open_cf_as_secondary(&options, path, secondary_dir.path(), COLUMN_FAMILIES).map_err(|error| fail(error.to_string()))?;
        Ok(LogReader { db, _secondary_dir: secondary_dir, path: path.to_path_buf() })
    }

    /// Catches up with what the primary has written since.
    pub fn refresh(&self) -> Result<(), ReadError> {
        self.db.try_catch_up_with_primary().map_err(|error| ReadError::Storage(error.to_string()))
    }

    pub fn head(&self) -> Result<Position, ReadError> {
        let cf = self.db.cf_handle(CF_EVENTS).expect("events column family");
        match self.db.iterator_cf(&cf, IteratorMode::End).next() {
            None => Ok(Position(0)),
            Some(Err(error)) => Err(ReadError::Storage(error.to_string())),
            Some(Ok((key, _))) => Ok(Position(u64::from_be_bytes(
                key.as_ref().try_into().map_err(|_| ReadError::Corrupt { position: 0, reason: "bad event key".into() })?,
            ))),
        }
    }

    /// Up to `count_max` events after `after`.
    pub fn read_all(&self, after: Position, count_max: usize) -> Result<Vec<RecordedEvent>, ReadError> {
        let cf = self.db.cf_handle(CF_EVENTS).expect("events column family");
        let start = (after.0 + 1).to_be_bytes();
        let mut events = Vec::new();
        for item in self.db.iterator_cf(&cf, IteratorMode::From(&start, Direction::Forward)) {
            let (key, value) = item.map_err(|error| ReadError::Storage(error.to_string()))?;
            let position = u64::from_be_bytes(
                key.as_ref().try_into().map_err(|_| ReadError::Corrupt { position: after.0 + 1, reason: "bad event key".into() })?,
            );
            let expected = after.0 + 1 + events.len() as u64;
            if position != expected {
                return Err(ReadError::Corrupt { position: expected, reason: format!("event missing (next key is {position})") });
            }
            events.push(decode_envelope(&value).map_err(|error| ReadError::Corrupt { position, reason: error.to_string() })?);
            if events.len() >= count_max {
                break;
            }
        }
        Ok(events)
    }

    /// Verifies the whole log as of now.
    pub fn verify(&self) -> Result<VerifyReport, OpenError> {
        match scan_events(&self.db, true) {
            Ok(scan) => Ok(VerifyReport { event_count: scan.head, stream_count: scan.stream_heads.len(), problem: None }),
            Err(VerifyFailure::Corrupt { position, reason }) => {
                Ok(VerifyReport { event_count: position.saturating_sub(1), stream_count: 0, problem: Some((position, reason)) })
            }
            Err(VerifyFailure::Storage(reason)) => Err(OpenError::Storage { path: self.path.clone(), reason }),
        }
    }
}
