//! Helpers shared by the image store's integration tests: tar archives built
//! in memory (including malformed ones), docker-save archives in both
//! layouts, and a busybox root filesystem from the host's busybox-static.

#![allow(dead_code)] // each test binary uses a different subset

use sha2::{Digest, Sha256};
use std::path::Path;

pub const BUSYBOX: &str = "/bin/busybox";

pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

pub fn hex_of(digest: &str) -> &str {
    digest.strip_prefix("sha256:").expect("a sha256 digest")
}

/// One entry of a test tar.
pub enum Entry<'a> {
    Dir(&'a str),
    File(&'a str, &'a [u8]),
    FileWithMode(&'a str, &'a [u8], u32),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
    /// A file whose name is written into the header as is, bypassing the
    /// tar writer's own `..` check: how a hostile archive looks.
    RawName(&'a str, &'a [u8]),
}

pub fn tar_of(entries: &[Entry<'_>]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        let mut header = tar::Header::new_gnu();
        header.set_mtime(1_700_000_000);
        match entry {
            Entry::Dir(path) => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(0o755);
                header.set_size(0);
                builder.append_data(&mut header, path, std::io::empty()).expect("in memory");
            }
            Entry::File(path, data) | Entry::FileWithMode(path, data, _) => {
                let mode = if let Entry::FileWithMode(_, _, mode) = entry { *mode } else { 0o644 };
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(mode);
                header.set_size(data.len() as u64);
                builder.append_data(&mut header, path, *data).expect("in memory");
            }
            Entry::Symlink(path, target) => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_mode(0o777);
                header.set_size(0);
                builder.append_link(&mut header, path, target).expect("in memory");
            }
            Entry::Hardlink(path, target) => {
                header.set_entry_type(tar::EntryType::Link);
                header.set_mode(0o644);
                header.set_size(0);
                builder.append_link(&mut header, path, target).expect("in memory");
            }
            Entry::RawName(path, data) => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(0o644);
                header.set_size(data.len() as u64);
                let name = &mut header.as_old_mut().name;
                name.fill(0);
                name[..path.len()].copy_from_slice(path.as_bytes());
                header.set_cksum();
                builder.append(&header, *data).expect("in memory");
            }
        }
    }
    builder.into_inner().expect("in memory")
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).expect("in memory");
    encoder.finish().expect("in memory")
}

/// A minimal image config naming `diff_ids`.
pub fn config_json(diff_ids: &[String], cmd: &[&str]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "created": "2024-01-02T03:04:05Z",
        "config": { "Cmd": cmd, "Env": ["PATH=/bin"] },
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
        "history": diff_ids.iter().map(|_| serde_json::json!({"created_by": "test layer"})).collect::<Vec<_>>(),
    }))
    .expect("json")
}

/// A pre-25 `docker save` archive: `<hex>.json` config, `<n>/layer.tar`
/// layers, `manifest.json`, `repositories`. Returns (archive, image id).
pub fn legacy_archive(layers: &[Vec<u8>], repo_tags: &[&str]) -> (Vec<u8>, String) {
    let diff_ids: Vec<String> = layers.iter().map(|l| sha256(l)).collect();
    let config = config_json(&diff_ids, &["sh"]);
    let id = sha256(&config);
    let layer_paths: Vec<String> = (0..layers.len()).map(|i| format!("layer{i}/layer.tar")).collect();
    let manifest = serde_json::to_vec(&serde_json::json!([{
        "Config": format!("{}.json", hex_of(&id)),
        "RepoTags": repo_tags,
        "Layers": layer_paths,
    }]))
    .expect("json");
    let config_name = format!("{}.json", hex_of(&id));
    let mut entries = vec![Entry::File(&config_name, &config)];
    for (path, layer) in layer_paths.iter().zip(layers) {
        entries.push(Entry::File(path, layer));
    }
    entries.push(Entry::File("repositories", b"{}"));
    entries.push(Entry::File("manifest.json", &manifest));
    (tar_of(&entries), id)
}

/// An OCI-layout archive (no manifest.json), as buildx or skopeo write
/// them: blobs may be gzip-compressed. Returns (archive, image id).
pub fn oci_archive(layers: &[Vec<u8>], compress: bool, image_name: &str) -> (Vec<u8>, String) {
    let diff_ids: Vec<String> = layers.iter().map(|l| sha256(l)).collect();
    let config = config_json(&diff_ids, &["sh"]);
    let id = sha256(&config);
    let blobs: Vec<Vec<u8>> = layers.iter().map(|l| if compress { gzip(l) } else { l.clone() }).collect();
    let media_type = if compress { "application/vnd.oci.image.layer.v1.tar+gzip" } else { "application/vnd.oci.image.layer.v1.tar" };
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": id, "size": config.len() },
        "layers": blobs.iter().map(|b| serde_json::json!({"mediaType": media_type, "digest": sha256(b), "size": b.len()})).collect::<Vec<_>>(),
    }))
    .expect("json");
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": sha256(&manifest),
            "size": manifest.len(),
            "annotations": { "io.containerd.image.name": image_name, "org.opencontainers.image.ref.name": "latest" },
        }],
    }))
    .expect("json");
    let mut named: Vec<(String, Vec<u8>)> =
        vec![("oci-layout".into(), br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec()), ("index.json".into(), index)];
    named.push((format!("blobs/sha256/{}", hex_of(&sha256(&manifest))), manifest.clone()));
    named.push((format!("blobs/sha256/{}", hex_of(&id)), config));
    for blob in &blobs {
        named.push((format!("blobs/sha256/{}", hex_of(&sha256(blob))), blob.clone()));
    }
    let entries: Vec<Entry<'_>> = named.iter().map(|(name, data)| Entry::File(name, data)).collect();
    (tar_of(&entries), id)
}

/// Every path under `dir`, relative, sorted.
pub fn tree_paths(dir: &Path) -> Vec<std::path::PathBuf> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("readable") {
            let path = entry.expect("readable").path();
            out.push(path.strip_prefix(base).expect("inside").to_path_buf());
            if path.symlink_metadata().expect("exists").is_dir() {
                walk(base, &path, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// Every path under `dir` as text, to compare trees in assertions.
pub fn tree(dir: &Path) -> Vec<String> {
    tree_paths(dir).iter().map(|p| p.to_string_lossy().into_owned()).collect()
}

/// A small busybox root filesystem: the static busybox, applet links,
/// a hard link, an etc file and a sticky tmp.
pub fn busybox_rootfs(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    assert!(Path::new(BUSYBOX).is_file(), "{BUSYBOX} is missing: install Debian's busybox-static (apt-get install -y busybox-static)");
    for sub in ["bin", "etc", "tmp"] {
        std::fs::create_dir(dir.join(sub)).expect("mkdir");
    }
    std::fs::copy(BUSYBOX, dir.join("bin/busybox")).expect("copy busybox");
    std::fs::set_permissions(dir.join("bin/busybox"), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    for applet in ["sh", "echo", "ls", "cat"] {
        std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet)).expect("symlink");
    }
    std::fs::hard_link(dir.join("bin/busybox"), dir.join("bin/busybox.hard")).expect("hard link");
    std::fs::write(dir.join("etc/hostname"), b"berth\n").expect("write");
    std::fs::set_permissions(dir.join("tmp"), std::fs::Permissions::from_mode(0o1777)).expect("chmod");
}
