//! The container log in Docker's json-file shape: one `{"log","stream","time"}` object a line.

use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// Output without a newline is written as its own entry once this much piles up (Docker's 16 KiB).
pub const MAX_PARTIAL_LINE_BYTES: usize = 16 * 1024;

/// Errors writing the log.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("opening the container log {path}: {source}")]
    Open { path: String, source: std::io::Error },
    #[error("writing the container log: {0}")]
    Write(std::io::Error),
}

/// Which output stream a piece of output came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputStream {
    Stdout,
    Stderr,
}

impl OutputStream {
    fn index(self) -> usize {
        match self {
            OutputStream::Stdout => 0,
            OutputStream::Stderr => 1,
        }
    }
}

/// One line of the log file, as Docker's json-file driver writes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    pub log: String,
    pub stream: OutputStream,
    pub time: String,
}

/// Appends output to the log file, one entry per line of output.
pub struct LogWriter {
    inner: Mutex<LogWriterInner>,
}

struct LogWriterInner {
    file: File,
    partial_lines: [Vec<u8>; 2],
}

impl LogWriter {
    /// Opens (appending) the log file; restarts of the container keep adding to it.
    pub fn open(path: &Path) -> Result<LogWriter, LogError> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| LogError::Open { path: path.display().to_string(), source })?;
        Ok(LogWriter { inner: Mutex::new(LogWriterInner { file, partial_lines: [Vec::new(), Vec::new()] }) })
    }

    /// Records a chunk of output: every complete line becomes an entry; the rest waits.
    pub fn write(&self, stream: OutputStream, bytes: &[u8]) -> Result<(), LogError> {
        let mut inner = self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let LogWriterInner { file, partial_lines } = &mut *inner;
        let pending = &mut partial_lines[stream.index()];
        pending.extend_from_slice(bytes);
        let mut out = Vec::new();
        let mut consumed = 0;
        while let Some(newline) = pending[consumed..].iter().position(|byte| *byte == b'\n') {
            let end = consumed + newline + 1;
            encode_entry(&mut out, stream, &pending[consumed..end]);
            consumed = end;
        }
        pending.drain(..consumed);
        if pending.len() >= MAX_PARTIAL_LINE_BYTES {
            encode_entry(&mut out, stream, pending);
            pending.clear();
        }
        if !out.is_empty() {
            // One write per chunk keeps entries whole in the O_APPEND file even if we crash.
            file.write_all(&out).map_err(LogError::Write)?;
        }
        Ok(())
    }

    /// Writes whatever partial lines remain and syncs the file (at the end of a run).
    pub fn finish(&self) -> Result<(), LogError> {
        let mut inner = self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let LogWriterInner { file, partial_lines } = &mut *inner;
        let mut out = Vec::new();
        for (stream, pending) in [OutputStream::Stdout, OutputStream::Stderr].into_iter().zip(partial_lines.iter_mut()) {
            if !pending.is_empty() {
                encode_entry(&mut out, stream, pending);
                pending.clear();
            }
        }
        file.write_all(&out).map_err(LogError::Write)?;
        file.sync_all().map_err(LogError::Write)
    }
}

fn encode_entry(out: &mut Vec<u8>, stream: OutputStream, bytes: &[u8]) {
    let entry = LogEntry { log: String::from_utf8_lossy(bytes).into_owned(), stream, time: rfc3339_nano(SystemTime::now()) };
    if serde_json::to_writer(&mut *out, &entry).is_ok() {
        out.push(b'\n');
    }
}

/// Reads a json-file log (for tests and callers that want entries rather than lines).
pub fn read_log(path: &Path) -> std::io::Result<Vec<LogEntry>> {
    let text = std::fs::read_to_string(path)?;
    Ok(text.lines().filter_map(|line| serde_json::from_str(line).ok()).collect())
}

/// Go's RFC3339Nano in UTC: `2006-01-02T15:04:05.999999999Z`, trailing zeros of the fraction dropped.
pub fn rfc3339_nano(time: SystemTime) -> String {
    let since_epoch = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let seconds = since_epoch.as_secs() as i64;
    let nanos = since_epoch.subsec_nanos();
    let (year, month, day) = civil_from_days(seconds.div_euclid(86_400));
    let second_of_day = seconds.rem_euclid(86_400);
    let mut text =
        format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}", second_of_day / 3600, second_of_day % 3600 / 60, second_of_day % 60);
    if nanos > 0 {
        let fraction = format!("{nanos:09}");
        text.push('.');
        text.push_str(fraction.trim_end_matches('0'));
    }
    text.push('Z');
    text
}

/// Days since 1970-01-01 to (year, month, day), Howard Hinnant's algorithm.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let shifted = days + 719_468;
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u32;
    let month = if month_index < 10 { month_index + 3 } else { month_index - 9 } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_match_go_rfc3339nano() {
        assert_eq!(rfc3339_nano(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let time = UNIX_EPOCH + Duration::new(1_709_251_199, 120_000_000);
        assert_eq!(rfc3339_nano(time), "2024-02-29T23:59:59.12Z");
        let time = UNIX_EPOCH + Duration::new(951_782_400, 1);
        assert_eq!(rfc3339_nano(time), "2000-02-29T00:00:00.000000001Z");
    }

    #[test]
    fn lines_become_entries_and_partials_wait_for_their_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.log");
        let writer = LogWriter::open(&path).unwrap();
        writer.write(OutputStream::Stdout, b"one\ntw").unwrap();
        writer.write(OutputStream::Stderr, b"err\n").unwrap();
        writer.write(OutputStream::Stdout, b"o\nthree").unwrap();
        writer.finish().unwrap();
        let entries = read_log(&path).unwrap();
        let got: Vec<(&str, OutputStream)> = entries.iter().map(|entry| (entry.log.as_str(), entry.stream)).collect();
        assert_eq!(
            got,
            vec![
                ("one\n", OutputStream::Stdout),
                ("err\n", OutputStream::Stderr),
                ("two\n", OutputStream::Stdout),
                ("three", OutputStream::Stdout)
            ]
        );
        assert!(entries[0].time.ends_with('Z'));
    }

    #[test]
    fn endless_lines_are_cut_at_the_partial_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.log");
        let writer = LogWriter::open(&path).unwrap();
        writer.write(OutputStream::Stdout, &vec![b'x'; MAX_PARTIAL_LINE_BYTES + 5]).unwrap();
        assert_eq!(read_log(&path).unwrap().len(), 1);
    }
}
