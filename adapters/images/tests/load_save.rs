//! `docker save` and `docker load`: round trips, archives in the legacy and
//! OCI layouts built by hand, several images in one archive, whiteouts
//! across layers, and skopeo (an independent implementation) reading what we
//! write and writing what we read.

mod common;

use berth_images::ImageStore;
use common::{busybox_rootfs, legacy_archive, oci_archive, sha256, tar_of, Entry};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::process::Command;

fn store_in(dir: &Path) -> ImageStore {
    ImageStore::open(&dir.join("images")).expect("open")
}

/// Every file of a tar, by name.
fn files_of(archive: &[u8]) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut reader = tar::Archive::new(archive);
    for entry in reader.entries().expect("a tar") {
        let mut entry = entry.expect("an entry");
        if entry.header().entry_type().is_file() {
            let name = entry.path().expect("a path").to_string_lossy().into_owned();
            let mut data = Vec::new();
            entry.read_to_end(&mut data).expect("data");
            files.insert(name, data);
        }
    }
    files
}

fn imported_busybox(store: &ImageStore) -> berth_images::StoredImage {
    let rootfs = tempfile::tempdir().expect("tempdir");
    busybox_rootfs(rootfs.path());
    let mut tarball = Vec::new();
    berth_images::tarfs::tar_directory(rootfs.path(), &mut tarball).expect("tar");
    store.import(&tarball[..], &[r#"CMD ["/bin/sh"]"#.to_string()], "", 1_700_000_000).expect("import")
}

#[test]
fn save_then_load_gives_the_same_ids_and_tags() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store_in(dir.path());
    let image = imported_busybox(&store);
    let tags = vec!["busybox:latest".to_string(), "registry.example:5000/team/bb:1.0".to_string()];
    let mut archive = Vec::new();
    store.save(&[(image.id.clone(), tags.clone())], &mut archive).expect("save");

    // The layout Docker 25+ writes.
    let files = files_of(&archive);
    assert_eq!(files["oci-layout"], br#"{"imageLayoutVersion":"1.0.0"}"#);
    let manifest: serde_json::Value = serde_json::from_slice(&files["manifest.json"]).expect("json");
    assert_eq!(manifest[0]["Config"], format!("blobs/sha256/{}", &image.id[7..]));
    assert_eq!(manifest[0]["RepoTags"], serde_json::json!(tags));
    let index: serde_json::Value = serde_json::from_slice(&files["index.json"]).expect("json");
    let names: Vec<&str> = index["manifests"]
        .as_array()
        .expect("array")
        .iter()
        .map(|m| m["annotations"]["io.containerd.image.name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, vec!["docker.io/library/busybox:latest", "registry.example:5000/team/bb:1.0"]);
    for (name, data) in files.iter().filter(|(name, _)| name.starts_with("blobs/sha256/")) {
        assert_eq!(sha256(data)[7..], name["blobs/sha256/".len()..], "every blob is named by its digest");
    }

    let other = tempfile::tempdir().expect("tempdir");
    let fresh = store_in(other.path());
    let loaded = fresh.load(&archive[..]).expect("load");
    assert_eq!(loaded.len(), 1);
    assert_eq!(loaded[0].image.id, image.id);
    assert_eq!(loaded[0].image.layer_digests, image.layer_digests);
    assert_eq!(loaded[0].image.size_bytes, image.size_bytes);
    assert_eq!(loaded[0].repo_tags, tags);
    assert_eq!(fresh.config(&image.id).expect("config").cmd, Some(vec!["/bin/sh".to_string()]));

    let rootfs = tempfile::tempdir().expect("tempdir");
    fresh.unpack_rootfs(&image.id, rootfs.path()).expect("unpack");
    let output = Command::new(rootfs.path().join("bin/busybox")).args(["echo", "hi"]).output().expect("runs");
    assert_eq!(output.stdout, b"hi\n");

    // Saving again writes the same bytes; loading into a store that has the
    // image already is harmless.
    let mut again = Vec::new();
    store.save(&[(image.id.clone(), tags)], &mut again).expect("save");
    assert_eq!(again, archive);
    assert_eq!(store.load(&archive[..]).expect("reload")[0].image.id, image.id);
}

#[test]
fn untagged_images_save_and_load_without_tags() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store_in(dir.path());
    let image = store.import(&tar_of(&[Entry::File("f", b"x")])[..], &[], "", 0).expect("import");
    let mut archive = Vec::new();
    store.save(&[(image.id.clone(), vec![])], &mut archive).expect("save");
    let manifest: serde_json::Value = serde_json::from_slice(&files_of(&archive)["manifest.json"]).expect("json");
    assert_eq!(manifest[0]["RepoTags"], serde_json::Value::Null);
    let other = tempfile::tempdir().expect("tempdir");
    let loaded = store_in(other.path()).load(&archive[..]).expect("load");
    assert_eq!(loaded[0].image.id, image.id);
    assert!(loaded[0].repo_tags.is_empty());
}

#[test]
fn legacy_layout_archives_load() {
    let layers = vec![
        tar_of(&[Entry::Dir("bin"), Entry::FileWithMode("bin/tool", b"#!/bin/sh\n", 0o755)]),
        tar_of(&[Entry::Dir("etc"), Entry::File("etc/conf", b"v=1\n")]),
    ];
    let (archive, id) = legacy_archive(&layers, &["someone/app:v1", "app"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store_in(dir.path());
    let loaded = store.load(&archive[..]).expect("load");
    assert_eq!(loaded.len(), 1);
    assert_eq!(loaded[0].image.id, id);
    assert_eq!(loaded[0].repo_tags, vec!["someone/app:v1", "app:latest"]);
    assert_eq!(loaded[0].image.layer_digests, layers.iter().map(|l| sha256(l)).collect::<Vec<_>>());
    let config = store.config(&id).expect("config");
    assert_eq!(config.cmd, Some(vec!["sh".to_string()]));
    assert_eq!(config.history.iter().map(|h| h.size_bytes).collect::<Vec<_>>(), layers.iter().map(|l| l.len() as u64).collect::<Vec<_>>());

    let rootfs = tempfile::tempdir().expect("tempdir");
    store.unpack_rootfs(&id, rootfs.path()).expect("unpack");
    assert_eq!(std::fs::read(rootfs.path().join("etc/conf")).expect("file"), b"v=1\n");
}

#[test]
fn legacy_archives_with_linked_duplicate_layers_and_gzip_load() {
    // Docker before 25 stored a layer shared by two images once and linked
    // the second `layer.tar` to it; `docker load` also accepts a gzipped archive.
    let layer = tar_of(&[Entry::File("shared", b"s")]);
    let diff_ids = vec![sha256(&layer)];
    let first = common::config_json(&diff_ids, &["one"]);
    let second = common::config_json(&diff_ids, &["two"]);
    let manifest = serde_json::to_vec(&serde_json::json!([
        {"Config": format!("{}.json", &sha256(&first)[7..]), "RepoTags": ["one:1"], "Layers": ["a/layer.tar"]},
        {"Config": format!("{}.json", &sha256(&second)[7..]), "RepoTags": ["two:2"], "Layers": ["b/layer.tar"]},
    ]))
    .expect("json");
    let first_name = format!("{}.json", &sha256(&first)[7..]);
    let second_name = format!("{}.json", &sha256(&second)[7..]);
    let archive = tar_of(&[
        Entry::File("a/layer.tar", &layer),
        Entry::Symlink("b/layer.tar", "../a/layer.tar"),
        Entry::File(&first_name, &first),
        Entry::File(&second_name, &second),
        Entry::File("manifest.json", &manifest),
    ]);
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store_in(dir.path());
    let loaded = store.load(&common::gzip(&archive)[..]).expect("load");
    assert_eq!(loaded.iter().map(|l| l.image.id.clone()).collect::<Vec<_>>(), vec![sha256(&first), sha256(&second)]);
    assert_eq!(loaded[1].repo_tags, vec!["two:2"]);
    assert_eq!(store.list().expect("list").len(), 2);
}

#[test]
fn oci_layout_archives_with_gzip_layers_load() {
    let layers = vec![tar_of(&[Entry::File("a", b"1")]), tar_of(&[Entry::File("b", b"2")])];
    for compress in [false, true] {
        let (archive, id) = oci_archive(&layers, compress, "docker.io/library/app:latest");
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store_in(dir.path());
        let loaded = store.load(&archive[..]).expect("load");
        assert_eq!(loaded[0].image.id, id);
        assert_eq!(loaded[0].repo_tags, vec!["app:latest"]);
        // Layers are stored uncompressed, under their diff ids.
        assert_eq!(loaded[0].image.layer_digests, layers.iter().map(|l| sha256(l)).collect::<Vec<_>>());
        let rootfs = tempfile::tempdir().expect("tempdir");
        store.unpack_rootfs(&id, rootfs.path()).expect("unpack");
        assert_eq!(std::fs::read(rootfs.path().join("b")).expect("file"), b"2");
    }
}

#[test]
fn multi_platform_indexes_pick_this_platform() {
    let layer = tar_of(&[Entry::File("a", b"1")]);
    let config = common::config_json(&[sha256(&layer)], &["sh"]);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(&config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha256(&layer), "size": layer.len()}],
    }))
    .expect("json");
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    // The other platform's manifest is not in the archive at all: choosing
    // it would fail, so a successful load shows the right one was chosen.
    let nested = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": sha256(b"elsewhere"), "size": 9, "platform": {"os": "linux", "architecture": "s390x"}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": sha256(&manifest), "size": manifest.len(), "platform": {"os": "linux", "architecture": arch}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": sha256(b"attestation"), "size": 11, "platform": {"os": "unknown", "architecture": "unknown"}},
        ],
    }))
    .expect("json");
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.index.v1+json", "digest": sha256(&nested), "size": nested.len(),
                       "annotations": {"io.containerd.image.name": "docker.io/library/multi:2"}}],
    }))
    .expect("json");
    let names: Vec<(String, &[u8])> = vec![
        ("index.json".into(), &index),
        (format!("blobs/sha256/{}", &sha256(&nested)[7..]), &nested),
        (format!("blobs/sha256/{}", &sha256(&manifest)[7..]), &manifest),
        (format!("blobs/sha256/{}", &sha256(&config)[7..]), &config),
        (format!("blobs/sha256/{}", &sha256(&layer)[7..]), &layer),
    ];
    let archive = tar_of(&names.iter().map(|(n, d)| Entry::File(n, d)).collect::<Vec<_>>());
    let dir = tempfile::tempdir().expect("tempdir");
    let loaded = store_in(dir.path()).load(&archive[..]).expect("load");
    assert_eq!(loaded[0].image.id, sha256(&config));
    assert_eq!(loaded[0].repo_tags, vec!["multi:2"]);
}

#[test]
fn whiteouts_apply_across_layers() {
    let lower = tar_of(&[
        Entry::Dir("a"),
        Entry::File("a/deleted", b"x"),
        Entry::File("a/kept", b"y"),
        Entry::Dir("d"),
        Entry::File("d/old", b"old"),
        Entry::Dir("d/sub"),
        Entry::File("d/sub/older", b"older"),
        Entry::Dir("gone"),
        Entry::File("gone/inside", b"z"),
        Entry::File("replaced", b"file"),
    ]);
    let upper = tar_of(&[
        Entry::File("a/.wh.deleted", b""),
        Entry::File(".wh.gone", b""),
        // This layer's own entry comes before the opaque marker and must survive it.
        Entry::File("d/new", b"new"),
        Entry::File("d/.wh..wh..opq", b""),
        Entry::Dir("replaced"),
        Entry::File("replaced/now-a-dir", b"d"),
    ]);
    let (archive, id) = legacy_archive(&[lower, upper], &["layers:test"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store_in(dir.path());
    store.load(&archive[..]).expect("load");
    let rootfs = tempfile::tempdir().expect("tempdir");
    store.unpack_rootfs(&id, rootfs.path()).expect("unpack");
    assert_eq!(common::tree(rootfs.path()), vec!["a", "a/kept", "d", "d/new", "replaced", "replaced/now-a-dir"]);
}

fn skopeo() -> Option<&'static str> {
    let found = Command::new("skopeo").arg("--version").output().is_ok_and(|o| o.status.success());
    if !found {
        println!("skipping: skopeo is not installed (apt-get install -y skopeo)");
    }
    found.then_some("skopeo")
}

fn run(command: &mut Command) -> Vec<u8> {
    let output = command.output().expect("runs");
    assert!(output.status.success(), "{command:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    output.stdout
}

#[test]
fn skopeo_reads_saved_archives_and_writes_loadable_ones() {
    let Some(skopeo) = skopeo() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store_in(dir.path());
    let image = imported_busybox(&store);
    let saved = dir.path().join("saved.tar");
    let file = std::fs::File::create(&saved).expect("create");
    store.save(&[(image.id.clone(), vec!["busybox:latest".to_string()])], file).expect("save");

    // As a docker-archive (manifest.json)...
    let inspected: serde_json::Value = serde_json::from_slice(&run(Command::new(skopeo)
        .args(["inspect", "--raw", "--config"])
        .arg(format!("docker-archive:{}", saved.display()))))
    .expect("json");
    assert_eq!(inspected["rootfs"]["diff_ids"], serde_json::json!(image.layer_digests));
    // ...and as an OCI archive (index.json), copied out blob by blob, verified by skopeo.
    let copied = dir.path().join("copied");
    run(Command::new(skopeo)
        .args(["copy", "--quiet"])
        .arg(format!("oci-archive:{}", saved.display()))
        .arg(format!("dir:{}", copied.display())));
    assert!(copied.join(&image.id[7..]).is_file(), "the config blob keeps its digest");

    // Archives skopeo writes load here with the same image id: Docker's
    // legacy layout, and OCI with gzip-compressed layers.
    let docker_archive = dir.path().join("by-skopeo-docker.tar");
    run(Command::new(skopeo)
        .args(["copy", "--quiet"])
        .arg(format!("oci-archive:{}", saved.display()))
        .arg(format!("docker-archive:{}:busybox:copied", docker_archive.display())));
    let oci_gzip = dir.path().join("by-skopeo-oci.tar");
    run(Command::new(skopeo)
        .args(["copy", "--quiet", "--dest-compress", "--dest-compress-format", "gzip"])
        .arg(format!("oci-archive:{}", saved.display()))
        .arg(format!("oci-archive:{}:busybox:gz", oci_gzip.display())));
    for (archive, tag) in [(docker_archive, "busybox:copied"), (oci_gzip, "busybox:gz")] {
        let other = tempfile::tempdir().expect("tempdir");
        let fresh = store_in(other.path());
        let loaded = fresh.load(std::fs::File::open(&archive).expect("open")).expect("load");
        assert_eq!(loaded[0].image.id, image.id, "{}", archive.display());
        assert_eq!(loaded[0].repo_tags, vec![tag]);
        let rootfs = tempfile::tempdir().expect("tempdir");
        fresh.unpack_rootfs(&image.id, rootfs.path()).expect("unpack");
        assert_eq!(run(Command::new(rootfs.path().join("bin/busybox")).args(["echo", "hi"])), b"hi\n");
    }
}
