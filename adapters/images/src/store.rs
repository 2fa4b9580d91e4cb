//! The store itself: content-addressed blobs under `blobs/sha256/<hex>`
//! (image configs and uncompressed layers), one record per image under
//! `images/<hex>.json`, a `tmp/` directory for writes in progress and a
//! `lock` file.
//!
//! An image exists when its record does. Every blob is written to `tmp/`,
//! fsynced, renamed into place and its directory fsynced before the record is
//! written the same way, so a crash never leaves a visible image with missing
//! parts; blobs no record names are swept when the store opens and after each
//! removal. Writers and readers hold a shared `flock` on `lock`; opening and
//! removing hold it exclusively, so a sweep never races a write (also across
//! processes and store instances).

use crate::changes::{apply_changes, ChangeError};
use crate::compression::{self, Compression, CompressionError};
use crate::config::{import_config_bytes, parse_config, ConfigError, ImageConfig, RunConfig};
use crate::digest::{is_sha256_hex, sha256_digest_of, sha256_hex, HashingReader, SHA256_PREFIX};
use crate::reference::ReferenceError;
use crate::tarfs::{self, stream_error, TarfsError};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use tempfile::NamedTempFile;

const BLOBS_DIR: &str = "blobs/sha256";
const IMAGES_DIR: &str = "images";
const TMP_DIR: &str = "tmp";
const LOCK_FILE: &str = "lock";
const RECORD_SUFFIX: &str = ".json";
/// History comment of an import without a message, as Docker writes it.
const DEFAULT_IMPORT_MESSAGE: &str = "Imported from -";

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{0:?} is not an image id (expected sha256:<64 lowercase hex digits>)")]
    InvalidImageId(String),
    #[error("no such image: {0}")]
    NotFound(String),
    #[error("invalid archive: {0}")]
    InvalidArchive(String),
    #[error("invalid archive: it has no {path} (named by {named_by})")]
    MissingInArchive { path: String, named_by: String },
    #[error("{what} does not match its digest: expected {expected}, the content hashes to {actual}")]
    DigestMismatch { what: String, expected: String, actual: String },
    #[error("{what} is {actual_bytes} bytes, but its descriptor says {expected_bytes}")]
    SizeMismatch { what: String, expected_bytes: u64, actual_bytes: u64 },
    #[error("{what} is larger than the {limit_bytes}-byte limit")]
    TooLarge { what: String, limit_bytes: u64 },
    #[error("no image in the archive is for this platform ({platform})")]
    NoMatchingPlatform { platform: String },
    #[error("{what}: {source}")]
    BadTar { what: String, source: TarfsError },
    #[error("invalid image config {what}: {source}")]
    BadConfig { what: String, source: ConfigError },
    #[error("invalid --change: {0}")]
    Change(#[from] ChangeError),
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error(transparent)]
    Compression(#[from] CompressionError),
    #[error("unpacking: {0}")]
    Unpack(#[source] TarfsError),
    #[error("the image store is damaged: {path} {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("writing the archive: {0}")]
    WriteArchive(#[source] io::Error),
    #[error("{action} {path}: {source}")]
    Io { action: &'static str, path: PathBuf, source: io::Error },
}

pub(crate) fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ImageError {
    let path = path.to_path_buf();
    move |source| ImageError::Io { action, path, source }
}

/// An image in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredImage {
    /// `sha256:<hex>` of the config blob: Docker's image id.
    pub id: String,
    /// The layers' diff ids (digests of the uncompressed layers), bottom first.
    pub layer_digests: Vec<String>,
    /// Config plus layer blobs.
    pub size_bytes: u64,
}

/// An image from `docker load`, with the tags the archive gave it
/// (familiar form: `busybox:latest`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedImage {
    pub image: StoredImage,
    pub repo_tags: Vec<String>,
}

/// What makes an image visible; written after all its blobs.
#[derive(Debug, Serialize, Deserialize)]
struct ImageRecord {
    /// Diff ids, in order (the config says the same; kept here so sweeping
    /// does not parse every config).
    layers: Vec<String>,
}

#[derive(Clone, Copy)]
pub(crate) enum LockMode {
    Shared,
    Exclusive,
}

/// Held for the duration of an operation; the flock goes with the file.
pub(crate) struct StoreLock {
    _file: File,
}

/// The local image store. One value per root is enough; it is cheap to share
/// (`Sync`), and separate values on the same root stay consistent through the
/// lock file.
#[derive(Debug)]
pub struct ImageStore {
    root: PathBuf,
}

/// The hex of an image id given as `sha256:<hex>` or bare `<hex>`.
pub(crate) fn image_hex(image_id: &str) -> Result<&str, ImageError> {
    let hex = image_id.strip_prefix(SHA256_PREFIX).unwrap_or(image_id);
    if is_sha256_hex(hex) {
        Ok(hex)
    } else {
        Err(ImageError::InvalidImageId(image_id.to_string()))
    }
}

pub(crate) fn fsync_dir(dir: &Path) -> Result<(), ImageError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_error("syncing directory", dir))
}

impl ImageStore {
    /// Opens (creating) a store under `root`, e.g. `<data-dir>/images`.
    /// Leftovers of interrupted writes are removed.
    pub fn open(root: &Path) -> Result<ImageStore, ImageError> {
        for dir in [BLOBS_DIR, IMAGES_DIR, TMP_DIR] {
            let path = root.join(dir);
            fs::create_dir_all(&path).map_err(io_error("creating", &path))?;
        }
        for dir in [root.to_path_buf(), root.join("blobs")] {
            fsync_dir(&dir)?;
        }
        let store = ImageStore { root: root.to_path_buf() };
        let _lock = store.lock(LockMode::Exclusive)?;
        let tmp = store.root.join(TMP_DIR);
        for leftover in fs::read_dir(&tmp).map_err(io_error("listing", &tmp))? {
            let leftover = leftover.map_err(io_error("listing", &tmp))?.path();
            let removed = if leftover.is_dir() { fs::remove_dir_all(&leftover) } else { fs::remove_file(&leftover) };
            removed.map_err(io_error("removing leftover", &leftover))?;
        }
        store.sweep_unreferenced_blobs()?;
        Ok(store)
    }

    pub(crate) fn lock(&self, mode: LockMode) -> Result<StoreLock, ImageError> {
        let path = self.root.join(LOCK_FILE);
        let file =
            OpenOptions::new().create(true).truncate(false).read(true).write(true).open(&path).map_err(io_error("opening", &path))?;
        let operation = match mode {
            LockMode::Shared => libc::LOCK_SH,
            LockMode::Exclusive => libc::LOCK_EX,
        };
        loop {
            // SAFETY: the descriptor is open for the whole call.
            if unsafe { libc::flock(file.as_raw_fd(), operation) } == 0 {
                return Ok(StoreLock { _file: file });
            }
            let error = io::Error::last_os_error();
            if error.kind() != io::ErrorKind::Interrupted {
                return Err(ImageError::Io { action: "locking", path, source: error });
            }
        }
    }

    pub(crate) fn blob_path(&self, hex: &str) -> PathBuf {
        self.root.join(BLOBS_DIR).join(hex)
    }

    pub(crate) fn tmp_dir(&self) -> PathBuf {
        self.root.join(TMP_DIR)
    }

    fn record_path(&self, hex: &str) -> PathBuf {
        self.root.join(IMAGES_DIR).join(format!("{hex}{RECORD_SUFFIX}"))
    }

    pub(crate) fn has_blob(&self, hex: &str) -> bool {
        self.blob_path(hex).is_file()
    }

    pub(crate) fn blob_size_bytes(&self, hex: &str) -> Result<u64, ImageError> {
        let path = self.blob_path(hex);
        match fs::metadata(&path) {
            Ok(meta) => Ok(meta.len()),
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                Err(ImageError::Corrupt { path, reason: "is missing, but an image needs it".to_string() })
            }
            Err(error) => Err(ImageError::Io { action: "inspecting", path, source: error }),
        }
    }

    fn new_temp_file(&self) -> Result<NamedTempFile, ImageError> {
        let tmp = self.tmp_dir();
        NamedTempFile::new_in(&tmp).map_err(io_error("creating a temporary file in", &tmp))
    }

    /// Makes a complete temporary file the blob `hex`, durably.
    fn persist_blob(&self, file: NamedTempFile, hex: &str) -> Result<(), ImageError> {
        let path = self.blob_path(hex);
        file.as_file().sync_all().map_err(io_error("syncing", file.path()))?;
        file.persist(&path).map_err(|e| ImageError::Io { action: "storing", path: path.clone(), source: e.error })?;
        fsync_dir(&self.root.join(BLOBS_DIR))
    }

    /// Writes a blob held in memory; returns its digest.
    pub(crate) fn write_blob(&self, bytes: &[u8]) -> Result<String, ImageError> {
        let digest = sha256_digest_of(bytes);
        let hex = &digest[SHA256_PREFIX.len()..];
        if !self.has_blob(hex) {
            let mut file = self.new_temp_file()?;
            file.write_all(bytes).map_err(io_error("writing", &self.tmp_dir()))?;
            self.persist_blob(file, hex)?;
        }
        Ok(digest)
    }

    /// Stores a layer from a tar stream (plain, gzip or xz), checking it is
    /// a tar that unpacks safely. With `expected_diff_id`, a stream whose
    /// uncompressed digest differs is refused (and nothing is stored).
    /// Returns the diff id and the stored size.
    pub(crate) fn store_layer(&self, stream: impl Read, what: &str, expected_diff_id: Option<&str>) -> Result<(String, u64), ImageError> {
        let bad_tar = |source| ImageError::BadTar { what: what.to_string(), source };
        let decompressed = compression::decompress(stream)?;
        if decompressed.is_empty {
            return Err(bad_tar(TarfsError::Empty));
        }
        let temp = self.new_temp_file()?;
        let mut hashing = HashingReader::new(decompressed.reader, BufWriter::new(temp));
        let checked = tarfs::validate_tar_stream(&mut hashing).and_then(|_| hashing.drain().map_err(stream_error));
        if let Some(error) = hashing.take_sink_error() {
            return Err(ImageError::Io { action: "writing a layer to", path: self.tmp_dir(), source: error });
        }
        checked.map_err(bad_tar)?;
        let (diff_id, size_bytes, writer) = hashing.finish();
        if let Some(expected) = expected_diff_id {
            if expected != diff_id {
                return Err(ImageError::DigestMismatch { what: what.to_string(), expected: expected.to_string(), actual: diff_id });
            }
        }
        let hex = &diff_id[SHA256_PREFIX.len()..];
        if !self.has_blob(hex) {
            let temp = writer.into_inner().map_err(|e| ImageError::Io {
                action: "writing a layer to",
                path: self.tmp_dir(),
                source: e.into_error(),
            })?;
            self.persist_blob(temp, hex)?;
        }
        Ok((diff_id, size_bytes))
    }

    /// Stores a layer that is already a complete file inside the store's
    /// `tmp/` (spooled from an archive): uncompressed ones are checked and
    /// hard-linked into place instead of copied.
    pub(crate) fn store_layer_file(&self, path: &Path, what: &str, expected_diff_id: &str) -> Result<u64, ImageError> {
        let mut file = File::open(path).map_err(io_error("opening", path))?;
        let mut magic = [0u8; 6];
        let read = file.read(&mut magic).map_err(io_error("reading", path))?;
        if compression::detect(&magic[..read]) != Compression::None {
            let file = File::open(path).map_err(io_error("opening", path))?;
            return self.store_layer(io::BufReader::new(file), what, Some(expected_diff_id)).map(|(_, size)| size);
        }
        let file = File::open(path).map_err(io_error("opening", path))?;
        let mut hashing = HashingReader::new(io::BufReader::new(file), io::sink());
        let checked = tarfs::validate_tar_stream(&mut hashing).and_then(|_| hashing.drain().map_err(stream_error));
        checked.map_err(|source| ImageError::BadTar { what: what.to_string(), source })?;
        let (diff_id, size_bytes, _) = hashing.finish();
        if diff_id != expected_diff_id {
            return Err(ImageError::DigestMismatch { what: what.to_string(), expected: expected_diff_id.to_string(), actual: diff_id });
        }
        let hex = &diff_id[SHA256_PREFIX.len()..];
        let blob = self.blob_path(hex);
        File::open(path).and_then(|f| f.sync_all()).map_err(io_error("syncing", path))?;
        match fs::hard_link(path, &blob) {
            Ok(()) => {}
            // Someone stored the same content meanwhile: same bytes, nothing to do.
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {}
            Err(error) => return Err(ImageError::Io { action: "storing", path: blob, source: error }),
        }
        fsync_dir(&self.root.join(BLOBS_DIR))?;
        Ok(size_bytes)
    }

    /// Makes an image visible. Its blobs must already be durable.
    pub(crate) fn write_record(&self, hex: &str, layers: &[String]) -> Result<(), ImageError> {
        let bytes = serde_json::to_vec(&ImageRecord { layers: layers.to_vec() }).expect("a list of strings always serializes");
        let mut file = self.new_temp_file()?;
        file.write_all(&bytes).map_err(io_error("writing", &self.tmp_dir()))?;
        file.as_file().sync_all().map_err(io_error("syncing", &self.tmp_dir()))?;
        let path = self.record_path(hex);
        file.persist(&path).map_err(|e| ImageError::Io { action: "storing", path: path.clone(), source: e.error })?;
        fsync_dir(&self.root.join(IMAGES_DIR))
    }

    /// Hides an image again (its blobs are left to the sweep).
    pub(crate) fn remove_record(&self, hex: &str) -> Result<(), ImageError> {
        let path = self.record_path(hex);
        fs::remove_file(&path).map_err(io_error("removing", &path))?;
        fsync_dir(&self.root.join(IMAGES_DIR))
    }

    fn read_record(&self, hex: &str) -> Result<ImageRecord, ImageError> {
        let path = self.record_path(hex);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Err(ImageError::NotFound(format!("{SHA256_PREFIX}{hex}"))),
            Err(error) => return Err(ImageError::Io { action: "reading", path, source: error }),
        };
        serde_json::from_slice(&bytes).map_err(|e| ImageError::Corrupt { path, reason: format!("is not a valid image record: {e}") })
    }

    pub(crate) fn read_config_bytes(&self, hex: &str) -> Result<Vec<u8>, ImageError> {
        let path = self.blob_path(hex);
        fs::read(&path).map_err(|error| match error.kind() {
            io::ErrorKind::NotFound => ImageError::Corrupt { path: path.clone(), reason: "(an image config) is missing".to_string() },
            _ => ImageError::Io { action: "reading", path: path.clone(), source: error },
        })
    }

    /// `docker import`: a root filesystem tarball (plain, gzip or xz) becomes
    /// a one-layer image. `changes` are `--change` Dockerfile instructions;
    /// `message` is the history comment ("Imported from -" when empty).
    pub fn import(&self, tarball: impl Read, changes: &[String], message: &str, now_unix_s: i64) -> Result<StoredImage, ImageError> {
        let mut run = RunConfig::default();
        apply_changes(&mut run, changes)?;
        let message = if message.is_empty() { DEFAULT_IMPORT_MESSAGE } else { message };
        let _lock = self.lock(LockMode::Shared)?;
        let (diff_id, layer_size_bytes) = self.store_layer(tarball, "the imported tarball", None)?;
        let config = import_config_bytes(&diff_id, &run, message, now_unix_s);
        let id = self.write_blob(&config)?;
        let layers = vec![diff_id];
        self.write_record(&id[SHA256_PREFIX.len()..], &layers)?;
        Ok(StoredImage { id, layer_digests: layers, size_bytes: config.len() as u64 + layer_size_bytes })
    }

    /// `docker load`: stores every image of a `docker save` archive (legacy
    /// or OCI layout, plain or compressed) and returns them with their tags.
    /// Either all images become visible or none does.
    pub fn load(&self, archive: impl Read) -> Result<Vec<LoadedImage>, ImageError> {
        let _lock = self.lock(LockMode::Shared)?;
        crate::load::load(self, archive)
    }

    /// `docker save`: writes an archive in the layout Docker 25+ writes (OCI
    /// layout plus the legacy `manifest.json`) holding `images`, each a pair
    /// of an image id and the repo tags to record for it. Everything is
    /// checked before the first byte is written.
    pub fn save(&self, images: &[(String, Vec<String>)], out: impl Write) -> Result<(), ImageError> {
        let _lock = self.lock(LockMode::Shared)?;
        crate::save::save(self, images, out)
    }

    /// The image's config.
    pub fn config(&self, image_id: &str) -> Result<ImageConfig, ImageError> {
        let hex = image_hex(image_id)?;
        let _lock = self.lock(LockMode::Shared)?;
        self.config_unlocked(hex)
    }

    pub(crate) fn config_unlocked(&self, hex: &str) -> Result<ImageConfig, ImageError> {
        self.read_record(hex)?;
        let id = format!("{SHA256_PREFIX}{hex}");
        let bytes = self.read_config_bytes(hex)?;
        let mut config = parse_config(&id, &bytes).map_err(|source| ImageError::BadConfig { what: id.clone(), source })?;
        let sizes = config
            .diff_ids
            .iter()
            .map(|diff_id| self.blob_size_bytes(sha256_hex(diff_id).unwrap_or_default()))
            .collect::<Result<Vec<_>, _>>()?;
        config.set_layer_sizes(sizes);
        Ok(config)
    }

    pub fn contains(&self, image_id: &str) -> bool {
        image_hex(image_id).is_ok_and(|hex| self.record_path(hex).is_file())
    }

    /// Ids of every image in the store (for reconciling with the event log
    /// after a crash between storing an image and recording it).
    pub fn list(&self) -> Result<Vec<String>, ImageError> {
        let dir = self.root.join(IMAGES_DIR);
        let mut ids = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_error("listing", &dir))? {
            let name = entry.map_err(io_error("listing", &dir))?.file_name();
            if let Some(hex) = name.to_str().and_then(|n| n.strip_suffix(RECORD_SUFFIX)).filter(|h| is_sha256_hex(h)) {
                ids.push(format!("{SHA256_PREFIX}{hex}"));
            }
        }
        ids.sort();
        Ok(ids)
    }

    /// Unpacks the image's layers in order into `target` (an existing, empty
    /// directory), applying whiteouts and keeping modes, links, times and
    /// (when running as root) ownership.
    pub fn unpack_rootfs(&self, image_id: &str, target: &Path) -> Result<(), ImageError> {
        let hex = image_hex(image_id)?;
        let _lock = self.lock(LockMode::Shared)?;
        let config = self.config_unlocked(hex)?;
        for diff_id in &config.diff_ids {
            let layer = self.blob_path(sha256_hex(diff_id).unwrap_or_default());
            tarfs::apply_layer(&layer, target).map_err(ImageError::Unpack)?;
        }
        Ok(())
    }

    /// Deletes an image and every blob no remaining image uses.
    pub fn remove(&self, image_id: &str) -> Result<(), ImageError> {
        let hex = image_hex(image_id)?;
        let _lock = self.lock(LockMode::Exclusive)?;
        self.read_record(hex)?;
        self.remove_record(hex)?;
        // The image is gone once its record is: failing to reclaim blobs now
        // must not report the removal as failed. What is left is swept again
        // at the next removal or open.
        let _ = self.sweep_unreferenced_blobs();
        Ok(())
    }

    /// Config plus layer blob sizes (`docker images` SIZE).
    pub fn size_bytes(&self, image_id: &str) -> Result<u64, ImageError> {
        let hex = image_hex(image_id)?;
        let _lock = self.lock(LockMode::Shared)?;
        let config = self.config_unlocked(hex)?;
        Ok(self.blob_size_bytes(hex)? + config.layer_sizes_bytes.iter().sum::<u64>())
    }

    /// Each layer's diff id and size, bottom first (`docker history` sizes are
    /// also in `config().history`).
    pub fn layer_sizes_bytes(&self, image_id: &str) -> Result<Vec<(String, u64)>, ImageError> {
        let hex = image_hex(image_id)?;
        let _lock = self.lock(LockMode::Shared)?;
        let config = self.config_unlocked(hex)?;
        Ok(config.diff_ids.into_iter().zip(config.layer_sizes_bytes).collect())
    }

    /// Deletes blobs no record names. Callers hold the exclusive lock. A
    /// record that cannot be read stops the sweep: deleting blobs without
    /// knowing what that image needs could destroy it.
    fn sweep_unreferenced_blobs(&self) -> Result<(), ImageError> {
        let mut referenced = HashSet::new();
        for id in self.list()? {
            let hex = id[SHA256_PREFIX.len()..].to_string();
            let record = self.read_record(&hex)?;
            for layer in &record.layers {
                let layer_hex = sha256_hex(layer).ok_or_else(|| ImageError::Corrupt {
                    path: self.record_path(&hex),
                    reason: format!("names {layer:?}, which is not a sha256 digest"),
                })?;
                referenced.insert(layer_hex.to_string());
            }
            referenced.insert(hex);
        }
        let blobs = self.root.join(BLOBS_DIR);
        let mut removed_any = false;
        for entry in fs::read_dir(&blobs).map_err(io_error("listing", &blobs))? {
            let entry = entry.map_err(io_error("listing", &blobs))?;
            let name = entry.file_name();
            if name.to_str().is_some_and(|n| referenced.contains(n)) {
                continue;
            }
            fs::remove_file(entry.path()).map_err(io_error("removing", &entry.path()))?;
            removed_any = true;
        }
        if removed_any {
            fsync_dir(&blobs)?;
        }
        Ok(())
    }
}
