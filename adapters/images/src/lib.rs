//! berth's local image store: content-addressed blobs on disk and the Docker
//! image operations on them: `docker import`, `load`, `save`, image configs,
//! unpacking root filesystems, and removal with blob garbage collection.
//!
//! Image ids are Docker's: the sha256 of the config blob's bytes, so the same
//! archive gives the same ids here and on Docker. Layers are stored
//! uncompressed under their diff id. Every write is durable (fsynced and
//! renamed into place) before the call returns, and an image becomes visible
//! only after all of its blobs are stored, so callers can record an event
//! naming the image as soon as a call returns.
//!
//! `tarfs` also serves containers: `docker export` and `docker cp`.

mod changes;
mod compression;
mod config;
mod digest;
mod load;
mod reference;
mod save;
mod store;
pub mod tarfs;

pub use changes::ChangeError;
pub use compression::CompressionError;
pub use config::{ConfigError, HistoryEntry, ImageConfig};
pub use reference::{ImageReference, ReferenceError};
pub use store::{ImageError, ImageStore, LoadedImage, StoredImage};
pub use tarfs::TarfsError;
