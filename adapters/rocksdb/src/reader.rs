//! [`LogReader`]: reads a log that a running berth may hold open, as a RocksDB
//! secondary instance (no lock taken, no writes), for `berth log tail` and
//! `berth log verify` beside a live server.

use crate::envelope::decode_envelope;
use crate::log::{db_options, OpenError, CF_EVENTS, COLUMN_FAMILIES};
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
        let db =
            DB::open_cf_as_secondary(&options, path, secondary_dir.path(), COLUMN_FAMILIES).map_err(|error| fail(error.to_string()))?;
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

/// A log reader is a read-only [`EventLog`]: replays and audits run on it
/// beside a live berth. Appends are refused; it never commits.
impl berth_core::log::EventLog for LogReader {
    fn submit(&self, _request: berth_core::log::AppendRequest, done: berth_core::log::AppendCompletion) {
        done(Err(berth_core::log::AppendError::Closed));
    }

    fn head(&self) -> Position {
        LogReader::head(self).unwrap_or_default()
    }

    fn read_all(&self, after: Position, count_max: usize) -> Result<Vec<RecordedEvent>, ReadError> {
        LogReader::read_all(self, after, count_max)
    }

    fn read_stream(
        &self,
        stream: &berth_core::StreamId,
        after: berth_core::StreamVersion,
        count_max: usize,
    ) -> Result<Vec<RecordedEvent>, ReadError> {
        let mut events = Vec::new();
        let mut position = Position(0);
        loop {
            let batch = LogReader::read_all(self, position, 4096)?;
            let Some(last) = batch.last() else { break };
            position = last.position;
            events.extend(batch.into_iter().filter(|e| &e.stream == stream && e.version > after));
            if events.len() >= count_max {
                events.truncate(count_max);
                break;
            }
        }
        Ok(events)
    }

    fn command_outcome(&self, _command_id: &berth_core::CommandId) -> Result<Option<berth_core::log::AppendOutcome>, ReadError> {
        Ok(None)
    }

    fn stream_version(&self, stream: &berth_core::StreamId) -> berth_core::StreamVersion {
        self.read_stream(stream, berth_core::StreamVersion(0), usize::MAX)
            .ok()
            .and_then(|e| e.last().map(|e| e.version))
            .unwrap_or_default()
    }

    fn on_commit(&self, _listener: berth_core::log::CommitListener) {}

    fn wait_for_head(&self, _after: Position, timeout: std::time::Duration) -> Position {
        std::thread::sleep(timeout);
        let _ = self.refresh();
        berth_core::log::EventLog::head(self)
    }

    fn save_checkpoint(&self, _consumer: &str, _position: Position, _state: &[u8]) -> Result<(), berth_core::log::AppendError> {
        Err(berth_core::log::AppendError::Closed)
    }

    fn load_checkpoint(&self, _consumer: &str) -> Result<Option<(Position, Vec<u8>)>, ReadError> {
        Ok(None)
    }
}
