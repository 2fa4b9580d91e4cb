//! `docker save`: writes the archive Docker 25+ writes, which every `docker
//! load` since 1.10 reads: the OCI image layout (`oci-layout`, `index.json`,
//! `blobs/sha256/<hex>` holding configs, uncompressed layers and manifests)
//! plus the legacy `manifest.json` pointing into the same blobs.

use crate::config::parse_config;
use crate::digest::{sha256_digest_of, sha256_hex, SHA256_PREFIX};
use crate::reference::ImageReference;
use crate::store::{image_hex, io_error, ImageError, ImageStore};
use serde::Serialize;
use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::{self, Write};
use std::path::PathBuf;

const MEDIA_TYPE_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MEDIA_TYPE_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MEDIA_TYPE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const MEDIA_TYPE_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
const ANNOTATION_IMAGE_NAME: &str = "io.containerd.image.name";
const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;
const FILE_MODE: u32 = 0o644;
const DIRECTORY_MODE: u32 = 0o755;

#[derive(Serialize, Clone)]
struct Descriptor {
    #[serde(rename = "mediaType")]
    media_type: &'static str,
    digest: String,
    size: u64,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    annotations: BTreeMap<&'static str, String>,
}

#[derive(Serialize)]
struct Manifest<'a> {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "mediaType")]
    media_type: &'static str,
    config: &'a Descriptor,
    layers: &'a [Descriptor],
}

#[derive(Serialize)]
struct Index {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "mediaType")]
    media_type: &'static str,
    manifests: Vec<Descriptor>,
}

#[derive(Serialize)]
struct LegacyManifestEntry {
    #[serde(rename = "Config")]
    config: String,
    /// `null` for an untagged image, as Docker writes it.
    #[serde(rename = "RepoTags")]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

/// One image, fully checked, ready to be written.
struct SaveImage {
    config_hex: String,
    config_bytes: Vec<u8>,
    layers: Vec<Descriptor>,
    tags: Vec<ImageReference>,
    manifest_bytes: Vec<u8>,
    manifest_descriptor: Descriptor,
}

fn blob_name(digest: &str) -> String {
    format!("blobs/sha256/{}", &digest[SHA256_PREFIX.len()..])
}

fn prepare(store: &ImageStore, images: &[(String, Vec<String>)]) -> Result<Vec<SaveImage>, ImageError> {
    let mut prepared: Vec<SaveImage> = Vec::new();
    for (image_id, repo_tags) in images {
        let hex = image_hex(image_id)?.to_string();
        let mut tags = Vec::new();
        for tag in repo_tags {
            let reference = ImageReference::parse(tag)?;
            if !tags.contains(&reference) {
                tags.push(reference);
            }
        }
        // The same image asked for twice: one entry with every tag.
        if let Some(existing) = prepared.iter_mut().find(|p| p.config_hex == hex) {
            for tag in tags {
                if !existing.tags.contains(&tag) {
                    existing.tags.push(tag);
                }
            }
            continue;
        }
        let config = store.config_unlocked(&hex)?;
        let config_bytes = store.read_config_bytes(&hex)?;
        // The stored config is re-read (not trusted from the record): what is
        // saved must be exactly the bytes whose digest is the id.
        let id = sha256_digest_of(&config_bytes);
        if id[SHA256_PREFIX.len()..] != hex {
            return Err(ImageError::Corrupt { path: store.blob_path(&hex), reason: format!("hashes to {id}") });
        }
        parse_config(&id, &config_bytes).map_err(|source| ImageError::BadConfig { what: id.clone(), source })?;
        let layers: Vec<Descriptor> = config
            .diff_ids
            .iter()
            .zip(&config.layer_sizes_bytes)
            .map(|(digest, size)| Descriptor {
                media_type: MEDIA_TYPE_LAYER,
                digest: digest.clone(),
                size: *size,
                annotations: BTreeMap::new(),
            })
            .collect();
        let config_descriptor =
            Descriptor { media_type: MEDIA_TYPE_CONFIG, digest: id.clone(), size: config_bytes.len() as u64, annotations: BTreeMap::new() };
        let manifest = Manifest { schema_version: 2, media_type: MEDIA_TYPE_MANIFEST, config: &config_descriptor, layers: &layers };
        let manifest_bytes = serde_json::to_vec(&manifest).expect("a manifest of strings and numbers always serializes");
        let manifest_descriptor = Descriptor {
            media_type: MEDIA_TYPE_MANIFEST,
            digest: sha256_digest_of(&manifest_bytes),
            size: manifest_bytes.len() as u64,
            annotations: BTreeMap::new(),
        };
        prepared.push(SaveImage { config_hex: hex, config_bytes, layers, tags, manifest_bytes, manifest_descriptor });
    }
    Ok(prepared)
}

fn header(size_bytes: u64, kind: tar::EntryType, mode: u32) -> tar::Header {
    let mut header = tar::Header::new_ustar();
    header.set_size(size_bytes);
    header.set_entry_type(kind);
    header.set_mode(mode);
    // Fixed metadata: saving the same images twice gives the same bytes.
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    header
}

fn append_bytes<W: Write>(builder: &mut tar::Builder<W>, name: &str, bytes: &[u8]) -> Result<(), ImageError> {
    let mut header = header(bytes.len() as u64, tar::EntryType::Regular, FILE_MODE);
    builder.append_data(&mut header, name, bytes).map_err(ImageError::WriteArchive)
}

pub(crate) fn save(store: &ImageStore, images: &[(String, Vec<String>)], out: impl Write) -> Result<(), ImageError> {
    let prepared = prepare(store, images)?;

    let mut index = Index { schema_version: 2, media_type: MEDIA_TYPE_INDEX, manifests: Vec::new() };
    let mut legacy = Vec::new();
    for image in &prepared {
        if image.tags.is_empty() {
            index.manifests.push(image.manifest_descriptor.clone());
        }
        for tag in &image.tags {
            let mut descriptor = image.manifest_descriptor.clone();
            descriptor.annotations.insert(ANNOTATION_IMAGE_NAME, tag.fully_qualified());
            descriptor.annotations.insert(ANNOTATION_REF_NAME, tag.tag.clone());
            index.manifests.push(descriptor);
        }
        legacy.push(LegacyManifestEntry {
            config: blob_name(&format!("{SHA256_PREFIX}{}", image.config_hex)),
            repo_tags: if image.tags.is_empty() { None } else { Some(image.tags.iter().map(ImageReference::familiar).collect()) },
            layers: image.layers.iter().map(|l| blob_name(&l.digest)).collect(),
        });
    }
    let index_bytes = serde_json::to_vec(&index).expect("an index of strings and numbers always serializes");
    let legacy_bytes = serde_json::to_vec(&legacy).expect("a manifest of strings always serializes");

    let mut builder = tar::Builder::new(out);
    for dir in ["blobs", "blobs/sha256"] {
        let mut header = header(0, tar::EntryType::Directory, DIRECTORY_MODE);
        builder.append_data(&mut header, dir, io::empty()).map_err(ImageError::WriteArchive)?;
    }
    let mut written: HashSet<String> = HashSet::new();
    for image in &prepared {
        if written.insert(image.config_hex.clone()) {
            append_bytes(&mut builder, &blob_name(&format!("{SHA256_PREFIX}{}", image.config_hex)), &image.config_bytes)?;
        }
        for layer in &image.layers {
            let hex = sha256_hex(&layer.digest).unwrap_or_default();
            if !written.insert(hex.to_string()) {
                continue;
            }
            let path: PathBuf = store.blob_path(hex);
            let file = File::open(&path).map_err(io_error("opening", &path))?;
            let mut header = header(layer.size, tar::EntryType::Regular, FILE_MODE);
            // Blobs never change once stored, so the size read during
            // preparation is the size streamed now.
            builder.append_data(&mut header, blob_name(&layer.digest), file).map_err(ImageError::WriteArchive)?;
        }
        let manifest_hex = &image.manifest_descriptor.digest[SHA256_PREFIX.len()..];
        if written.insert(manifest_hex.to_string()) {
            append_bytes(&mut builder, &blob_name(&image.manifest_descriptor.digest), &image.manifest_bytes)?;
        }
    }
    append_bytes(&mut builder, "index.json", &index_bytes)?;
    append_bytes(&mut builder, "manifest.json", &legacy_bytes)?;
    append_bytes(&mut builder, "oci-layout", OCI_LAYOUT)?;
    let mut out = builder.into_inner().map_err(ImageError::WriteArchive)?;
    out.flush().map_err(ImageError::WriteArchive)
}
