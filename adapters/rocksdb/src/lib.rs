//! berth-log-rocksdb: the durable event log on RocksDB.
//!
//! One writer thread drains a bounded queue of appends into one synced
//! WriteBatch (group commit), so many appends share one fsync and none is
//! acknowledged before its WAL record is on disk. Events are stored as
//! checksummed MessagePack envelopes keyed by their big-endian global
//! position; a stream index, the stream heads, the command-id index and
//! consumer checkpoints live in their own column families and are written in
//! the same batch, so a crash never leaves them out of step.
//!
//! This is the only code that touches the log's part of the data directory.

pub mod bench;
mod envelope;
mod log;
mod reader;
mod verify;

pub use envelope::{decode_envelope, encode_envelope, EnvelopeError};
pub use log::{OpenError, RocksLog, RocksLogOptions};
pub use reader::LogReader;
pub use verify::{verify_log, VerifyReport};
