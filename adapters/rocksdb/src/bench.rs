//! The raw yardstick for `berth bench log`: synced RocksDB WriteBatches of
//! fixed-size records, with no envelopes, indexes or queue, on the same disk
//! and in the same run as the log's own figures.

use rocksdb::{Options, WriteBatch, WriteOptions, DB};
use std::path::Path;
use std::time::{Duration, Instant};

/// Writes synced batches of `batch_record_count` records of `record_size_bytes`
/// for about `duration`; returns records per second.
pub fn raw_synced_batches(path: &Path, batch_record_count: usize, record_size_bytes: usize, duration: Duration) -> Result<f64, String> {
    let mut options = Options::default();
    options.create_if_missing(true);
    options.set_compression_type(rocksdb::DBCompressionType::None);
    let db = DB::open(&options, path).map_err(|error| error.to_string())?;
    let mut write_options = WriteOptions::default();
    write_options.set_sync(true);
    let value = vec![0x5au8; record_size_bytes];
    let started = Instant::now();
    let mut key = 0u64;
    while started.elapsed() < duration {
        let mut batch = WriteBatch::default();
        for _ in 0..batch_record_count {
            key += 1;
            batch.put(key.to_be_bytes(), &value);
        }
        db.write_opt(batch, &write_options).map_err(|error| error.to_string())?;
    }
    Ok(key as f64 / started.elapsed().as_secs_f64())
}
