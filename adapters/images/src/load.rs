//! `docker load`: reads a `docker save` archive — the legacy layout
//! (`manifest.json`, `<id>.json`, `<layer>/layer.tar`), the OCI layout Docker
//! 25+ writes next to it (`oci-layout`, `index.json`, `blobs/sha256/...`), or
//! an OCI-only archive — and stores its images.
//!
//! The archive is a stream whose files come in any order, so it is first
//! spooled into the store's `tmp/` (hashing each file on the way), then every
//! blob is checked against its digest, then blobs are stored, and only then
//! are the images' records written.

use crate::compression;
use crate::config::{host_architecture, null_as_default, parse_config, HOST_OS};
use crate::digest::{sha256_digest_of, sha256_hex, HashingReader, SHA256_PREFIX};
use crate::reference::ImageReference;
use crate::store::{io_error, ImageError, ImageStore, LoadedImage, StoredImage};
use crate::tarfs::{archive_components, stream_error, TarfsError};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufWriter, Read};
use std::path::{Path, PathBuf};

/// Manifests, indexes and configs are read into memory; real ones are a few
/// kilobytes, so this only stops a hostile archive from exhausting memory.
const MAX_JSON_BYTES: u64 = 32 * 1024 * 1024;
/// Symbolic links followed to find one file (older Docker links duplicate layers).
const MAX_LINK_HOPS: usize = 16;
/// Nested OCI indexes followed from `index.json`.
const MAX_INDEX_DEPTH: usize = 8;
const ANNOTATION_IMAGE_NAME: &str = "io.containerd.image.name";
const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
const ANNOTATION_REFERENCE_TYPE: &str = "vnd.docker.reference.type";

enum SpoolEntry {
    File {
        path: PathBuf,
        size_bytes: u64,
        digest: String,
    },
    /// A symbolic or hard link to another archive path (already normalized).
    Link {
        target: String,
    },
}

/// The archive's files, copied into the store's tmp directory.
struct Spool {
    dir: tempfile::TempDir,
    entries: HashMap<String, SpoolEntry>,
}

struct SpooledFile<'a> {
    path: &'a Path,
    size_bytes: u64,
    digest: &'a str,
}

fn invalid_tar(source: TarfsError) -> ImageError {
    ImageError::BadTar { what: "the archive".to_string(), source }
}

/// Joins normalized components with `/`; `..` is refused.
fn normalize(name: &str) -> Result<String, ImageError> {
    let components = archive_components(name.as_bytes()).map_err(invalid_tar)?;
    let parts: Vec<&str> = components.iter().map(|c| c.to_str().unwrap_or("\u{fffd}")).collect();
    Ok(parts.join("/"))
}

/// Resolves a link target relative to the link's directory, lexically.
fn resolve_link_target(link_path: &str, target: &[u8]) -> Result<String, ImageError> {
    let target_text = String::from_utf8_lossy(target);
    let mut parts: Vec<String> = if target.starts_with(b"/") { Vec::new() } else { link_path.split('/').map(str::to_string).collect() };
    if !target.starts_with(b"/") {
        parts.pop();
    }
    for part in target_text.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err(invalid_tar(TarfsError::PathEscapes { path: format!("{link_path} -> {target_text}") }));
                }
            }
            part => parts.push(part.to_string()),
        }
    }
    Ok(parts.join("/"))
}

/// Notices when the stream runs out. The tar reader stops at the
/// end-of-archive marker (a zero block) without reading further, so running
/// out means the marker never came: the archive was cut short, possibly right
/// between two entries, where the tar reader alone cannot tell.
struct EndWatch<R> {
    inner: R,
    reached_end: bool,
}

impl<R: Read> Read for EndWatch<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let count = self.inner.read(buf)?;
        if count == 0 && !buf.is_empty() {
            self.reached_end = true;
        }
        Ok(count)
    }
}

impl Spool {
    fn read(store: &ImageStore, archive: impl Read) -> Result<Spool, ImageError> {
        let tmp = store.tmp_dir();
        let dir = tempfile::Builder::new().prefix("load-").tempdir_in(&tmp).map_err(io_error("creating a directory in", &tmp))?;
        let decompressed = compression::decompress(archive)?;
        if decompressed.is_empty {
            return Err(invalid_tar(TarfsError::Empty));
        }
        let mut tar = tar::Archive::new(EndWatch { inner: decompressed.reader, reached_end: false });
        let mut entries = HashMap::new();
        for (index, entry) in tar.entries().map_err(|e| invalid_tar(stream_error(e)))?.enumerate() {
            let mut entry = entry.map_err(|e| invalid_tar(stream_error(e)))?;
            let raw_path = entry.path_bytes().into_owned();
            let name = normalize(&String::from_utf8_lossy(&raw_path))?;
            let kind = entry.header().entry_type();
            if kind.is_symlink() || kind.is_hard_link() {
                let link = entry.link_name_bytes().unwrap_or_default().into_owned();
                let target =
                    if kind.is_symlink() { resolve_link_target(&name, &link)? } else { normalize(&String::from_utf8_lossy(&link))? };
                entries.insert(name, SpoolEntry::Link { target });
            } else if kind.is_file() || kind.is_contiguous() {
                let path = dir.path().join(index.to_string());
                let file = File::create(&path).map_err(io_error("creating", &path))?;
                let mut hashing = HashingReader::new(&mut entry, BufWriter::new(file));
                let copied = hashing.drain();
                if let Some(error) = hashing.take_sink_error() {
                    return Err(ImageError::Io { action: "writing", path, source: error });
                }
                copied.map_err(|e| invalid_tar(stream_error(e)))?;
                let (digest, size_bytes, writer) = hashing.finish();
                writer.into_inner().map_err(|e| ImageError::Io { action: "writing", path: path.clone(), source: e.into_error() })?;
                entries.insert(name, SpoolEntry::File { path, size_bytes, digest });
            }
            // Directories and anything else carry nothing a loader reads.
        }
        if tar.into_inner().reached_end {
            return Err(invalid_tar(TarfsError::Truncated { reason: "the archive ends before tar's end-of-archive marker".to_string() }));
        }
        Ok(Spool { dir, entries })
    }

    fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    fn file(&self, name: &str, named_by: &str) -> Result<SpooledFile<'_>, ImageError> {
        let missing = |path: &str| ImageError::MissingInArchive { path: path.to_string(), named_by: named_by.to_string() };
        let mut current = normalize(name)?;
        for _ in 0..=MAX_LINK_HOPS {
            match self.entries.get(&current) {
                Some(SpoolEntry::File { path, size_bytes, digest }) => {
                    return Ok(SpooledFile { path, size_bytes: *size_bytes, digest });
                }
                Some(SpoolEntry::Link { target }) => current = target.clone(),
                None => return Err(missing(&current)),
            }
        }
        Err(ImageError::InvalidArchive(format!("{name} is a chain of more than {MAX_LINK_HOPS} links")))
    }

    fn read_small(&self, name: &str, named_by: &str) -> Result<Vec<u8>, ImageError> {
        let file = self.file(name, named_by)?;
        if file.size_bytes > MAX_JSON_BYTES {
            return Err(ImageError::TooLarge { what: name.to_string(), limit_bytes: MAX_JSON_BYTES });
        }
        std::fs::read(file.path).map_err(io_error("reading", file.path))
    }

    /// A blob of the OCI layout, checked against its descriptor.
    fn blob(&self, descriptor: &Descriptor, named_by: &str) -> Result<SpooledFile<'_>, ImageError> {
        let hex = sha256_hex(&descriptor.digest)
            .ok_or_else(|| ImageError::InvalidArchive(format!("{named_by} names {:?}, which is not a sha256 digest", descriptor.digest)))?;
        let name = format!("blobs/sha256/{hex}");
        let file = self.file(&name, named_by)?;
        if file.digest != descriptor.digest {
            return Err(ImageError::DigestMismatch { what: name, expected: descriptor.digest.clone(), actual: file.digest.to_string() });
        }
        if descriptor.size != file.size_bytes {
            return Err(ImageError::SizeMismatch { what: name, expected_bytes: descriptor.size, actual_bytes: file.size_bytes });
        }
        Ok(file)
    }

    fn read_blob(&self, descriptor: &Descriptor, named_by: &str) -> Result<Vec<u8>, ImageError> {
        let file = self.blob(descriptor, named_by)?;
        if file.size_bytes > MAX_JSON_BYTES {
            return Err(ImageError::TooLarge { what: descriptor.digest.clone(), limit_bytes: MAX_JSON_BYTES });
        }
        std::fs::read(file.path).map_err(io_error("reading", file.path))
    }
}

#[derive(Deserialize)]
struct LegacyManifestEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default, deserialize_with = "null_as_default")]
    repo_tags: Vec<String>,
    #[serde(rename = "Layers", default, deserialize_with = "null_as_default")]
    layers: Vec<String>,
}

#[derive(Deserialize)]
struct Descriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    size: u64,
    #[serde(default, deserialize_with = "null_as_default")]
    annotations: BTreeMap<String, String>,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Deserialize)]
struct Platform {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
}

/// An image manifest or an image index; which one it is shows in its fields.
#[derive(Deserialize)]
struct ManifestOrIndex {
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default, deserialize_with = "null_as_default")]
    layers: Vec<Descriptor>,
}

/// One image to store: where its parts are in the spool.
struct ImagePlan {
    config_bytes: Vec<u8>,
    /// Archive path of each layer, bottom first.
    layers: Vec<String>,
    /// Who names the layers (for error messages).
    named_by: String,
    repo_tags: Vec<String>,
}

fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, ImageError> {
    serde_json::from_slice(bytes).map_err(|e| ImageError::InvalidArchive(format!("{what} is not valid: {e}")))
}

fn familiar_tag(reference: &str) -> Result<String, ImageError> {
    Ok(ImageReference::parse(reference)?.familiar())
}

fn legacy_plans(spool: &Spool) -> Result<Vec<ImagePlan>, ImageError> {
    let bytes = spool.read_small("manifest.json", "the archive")?;
    let manifest: Vec<LegacyManifestEntry> = parse_json(&bytes, "manifest.json")?;
    let mut plans = Vec::new();
    for entry in manifest {
        let config_bytes = spool.read_small(&entry.config, "manifest.json")?;
        // The config's file name is its digest (`<hex>.json` or
        // `blobs/sha256/<hex>`): a file that does not hash to it was altered.
        let file_name = entry.config.rsplit('/').next().unwrap_or_default();
        let named_hex = file_name.strip_suffix(".json").unwrap_or(file_name);
        if let Some(expected) = sha256_hex(&format!("{SHA256_PREFIX}{named_hex}")) {
            let actual = sha256_digest_of(&config_bytes);
            if actual[SHA256_PREFIX.len()..] != *expected {
                return Err(ImageError::DigestMismatch {
                    what: entry.config.clone(),
                    expected: format!("{SHA256_PREFIX}{expected}"),
                    actual,
                });
            }
        }
        let repo_tags = entry.repo_tags.iter().map(|t| familiar_tag(t)).collect::<Result<_, _>>()?;
        plans.push(ImagePlan { config_bytes, layers: entry.layers, named_by: "manifest.json".to_string(), repo_tags });
    }
    Ok(plans)
}

fn oci_plans(spool: &Spool) -> Result<Vec<ImagePlan>, ImageError> {
    let bytes = spool.read_small("index.json", "the archive")?;
    let index: ManifestOrIndex = parse_json(&bytes, "index.json")?;
    let descriptors = index.manifests.ok_or_else(|| ImageError::InvalidArchive("index.json has no manifests".to_string()))?;
    let mut plans = Vec::new();
    for descriptor in &descriptors {
        let mut repo_tags = Vec::new();
        if let Some(name) = descriptor.annotations.get(ANNOTATION_IMAGE_NAME) {
            repo_tags.push(familiar_tag(name)?);
        } else if let Some(name) = descriptor.annotations.get(ANNOTATION_REF_NAME) {
            // The OCI annotation may be just a tag ("latest"), which names no
            // repository and so cannot tag an image; a full reference can.
            if name.contains(':') || name.contains('/') {
                if let Ok(reference) = ImageReference::parse(name) {
                    repo_tags.push(reference.familiar());
                }
            }
        }
        plans.push(plan_from_descriptor(spool, descriptor, repo_tags, 0)?);
    }
    Ok(plans)
}

fn is_for_this_host(descriptor: &Descriptor) -> bool {
    descriptor.platform.as_ref().is_some_and(|p| p.os == HOST_OS && p.architecture == host_architecture())
}

fn plan_from_descriptor(spool: &Spool, descriptor: &Descriptor, repo_tags: Vec<String>, depth: usize) -> Result<ImagePlan, ImageError> {
    if depth > MAX_INDEX_DEPTH {
        return Err(ImageError::InvalidArchive(format!("image indexes nest deeper than {MAX_INDEX_DEPTH}")));
    }
    let named_by = format!("manifest {}", descriptor.digest);
    let bytes = spool.read_blob(descriptor, if depth == 0 { "index.json" } else { "an image index" })?;
    let parsed: ManifestOrIndex = parse_json(&bytes, &named_by)?;
    if let Some(children) = parsed.manifests {
        // Attestations (build provenance) ride in indexes as unknown/unknown
        // manifests; they are not images.
        let candidates: Vec<&Descriptor> = children
            .iter()
            .filter(|d| d.annotations.get(ANNOTATION_REFERENCE_TYPE).is_none_or(|t| t != "attestation-manifest"))
            .filter(|d| d.platform.as_ref().is_none_or(|p| p.os != "unknown"))
            .collect();
        let chosen = match candidates.iter().find(|d| is_for_this_host(d)) {
            Some(chosen) => *chosen,
            None if candidates.len() == 1 && candidates[0].platform.is_none() => candidates[0],
            None => return Err(ImageError::NoMatchingPlatform { platform: format!("{HOST_OS}/{}", host_architecture()) }),
        };
        return plan_from_descriptor(spool, chosen, repo_tags, depth + 1);
    }
    let config = parsed.config.ok_or_else(|| {
        ImageError::InvalidArchive(format!("{named_by} ({}) is neither an image manifest nor an index", descriptor.media_type))
    })?;
    let config_bytes = spool.read_blob(&config, &named_by)?;
    let mut layers = Vec::new();
    for layer in &parsed.layers {
        spool.blob(layer, &named_by)?;
        layers.push(format!("blobs/sha256/{}", &layer.digest[SHA256_PREFIX.len()..]));
    }
    Ok(ImagePlan { config_bytes, layers, named_by, repo_tags })
}

pub(crate) fn load(store: &ImageStore, archive: impl Read) -> Result<Vec<LoadedImage>, ImageError> {
    let spool = Spool::read(store, archive)?;
    // Docker 25+ writes both layouts; manifest.json carries the tags in the
    // familiar form, so it is preferred, as Docker itself does.
    let plans = if spool.contains("manifest.json") {
        legacy_plans(&spool)?
    } else if spool.contains("index.json") {
        oci_plans(&spool)?
    } else if spool.contains("repositories") {
        return Err(ImageError::InvalidArchive(
            "it is a pre-1.10 Docker archive (only a repositories file, no manifest.json); those are not supported".to_string(),
        ));
    } else {
        return Err(ImageError::MissingInArchive { path: "manifest.json or index.json".to_string(), named_by: "docker load".to_string() });
    };
    if plans.is_empty() {
        return Err(ImageError::InvalidArchive("it contains no images".to_string()));
    }

    // Check and store every blob first; nothing is visible yet.
    let mut loaded: Vec<LoadedImage> = Vec::new();
    for plan in &plans {
        let id = sha256_digest_of(&plan.config_bytes);
        let config = parse_config(&id, &plan.config_bytes).map_err(|source| ImageError::BadConfig { what: id.clone(), source })?;
        if config.diff_ids.len() != plan.layers.len() {
            return Err(ImageError::InvalidArchive(format!(
                "{} lists {} layers for image {id}, but its config names {}",
                plan.named_by,
                plan.layers.len(),
                config.diff_ids.len()
            )));
        }
        let mut size_bytes = plan.config_bytes.len() as u64;
        for (layer, diff_id) in plan.layers.iter().zip(&config.diff_ids) {
            let hex = sha256_hex(diff_id).unwrap_or_default();
            // A layer the store already has is the same bytes (same digest);
            // Docker skips it the same way.
            if store.has_blob(hex) {
                size_bytes += store.blob_size_bytes(hex)?;
                continue;
            }
            let file = spool.file(layer, &plan.named_by)?;
            size_bytes += store.store_layer_file(file.path, &format!("layer {layer} of image {id}"), diff_id)?;
        }
        store.write_blob(&plan.config_bytes)?;
        match loaded.iter_mut().find(|l| l.image.id == id) {
            Some(existing) => {
                for tag in &plan.repo_tags {
                    if !existing.repo_tags.contains(tag) {
                        existing.repo_tags.push(tag.clone());
                    }
                }
            }
            None => loaded.push(LoadedImage {
                image: StoredImage { id, layer_digests: config.diff_ids, size_bytes },
                repo_tags: plan.repo_tags.clone(),
            }),
        }
    }

    // Then make them visible, all together: if one record cannot be written,
    // the ones this load added are taken back.
    let mut added: Vec<&str> = Vec::new();
    for image in &loaded {
        let hex = &image.image.id[SHA256_PREFIX.len()..];
        let existed = store.contains(hex);
        if let Err(error) = store.write_record(hex, &image.image.layer_digests) {
            for hex in added {
                // Best effort: the write error below is what the caller must see.
                let _ = store.remove_record(hex);
            }
            return Err(error);
        }
        if !existed {
            added.push(hex);
        }
    }
    drop(spool.dir);
    Ok(loaded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_targets_resolve_relative_to_the_link() {
        assert_eq!(resolve_link_target("abc/layer.tar", b"../def/layer.tar").expect("inside"), "def/layer.tar");
        assert_eq!(resolve_link_target("abc/layer.tar", b"/blobs/sha256/x").expect("inside"), "blobs/sha256/x");
        assert!(resolve_link_target("layer.tar", b"../../etc/passwd").is_err());
    }

    #[test]
    fn archive_names_are_normalized() {
        assert_eq!(normalize("./manifest.json").expect("fine"), "manifest.json");
        assert_eq!(normalize("/blobs//sha256/x").expect("fine"), "blobs/sha256/x");
        assert!(normalize("../evil").is_err());
    }
}
