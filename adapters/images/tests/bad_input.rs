//! Hostile and broken input: random bytes, empty and truncated archives,
//! manifests naming missing blobs, content that does not match its digest,
//! and entries that try to escape the target directory. Each must be a clear
//! error, never a panic, with nothing visible in the store and nothing
//! written outside it.

mod common;

use berth_images::{tarfs, ImageError, ImageStore, TarfsError};
use common::{legacy_archive, oci_archive, sha256, tar_of, tree, Entry};
use std::path::Path;

/// A store under `<base>/store`, so anything escaping it would land in `<base>`.
fn store_in(base: &Path) -> ImageStore {
    ImageStore::open(&base.join("store")).expect("open")
}

/// Nothing visible, no blobs kept, no temporary files left behind, and
/// nothing named `evil` anywhere around the store.
fn assert_untouched(base: &Path, store: &ImageStore) {
    assert!(store.list().expect("list").is_empty(), "no image became visible");
    assert_eq!(std::fs::read_dir(base.join("store/tmp")).expect("tmp").count(), 0, "temporary files are cleaned up");
    assert!(tree(base).iter().all(|path| !path.contains("evil")), "nothing escaped: {:?}", tree(base));
}

fn pseudo_random_bytes(length: usize) -> Vec<u8> {
    // xorshift: deterministic noise without a dependency.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..length)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

#[test]
fn random_bytes_and_empty_input_are_refused() {
    let base = tempfile::tempdir().expect("tempdir");
    let store = store_in(base.path());
    let noise = pseudo_random_bytes(64 * 1024);
    for input in [&noise[..], &b""[..], &b"short"[..]] {
        let import = store.import(input, &[], "", 0).expect_err("not a tar");
        assert!(matches!(import, ImageError::BadTar { .. }), "{import}");
        let load = store.load(input).expect_err("not an archive");
        assert!(matches!(load, ImageError::BadTar { .. }), "{load}");
    }
    assert_untouched(base.path(), &store);
    assert_eq!(std::fs::read_dir(base.path().join("store/blobs/sha256")).expect("blobs").count(), 0);
}

#[test]
fn gzip_of_garbage_and_unsupported_compression_are_clear_errors() {
    let base = tempfile::tempdir().expect("tempdir");
    let store = store_in(base.path());
    let broken_gzip = common::gzip(&pseudo_random_bytes(4096));
    assert!(matches!(store.import(&broken_gzip[..], &[], "", 0), Err(ImageError::BadTar { .. })));
    let zstd = [0x28, 0xb5, 0x2f, 0xfd, 0, 0, 0, 0];
    let error = store.import(&zstd[..], &[], "", 0).expect_err("zstd");
    assert!(error.to_string().contains("zstd"), "{error}");
    assert_untouched(base.path(), &store);
}

#[test]
fn truncated_archives_are_refused() {
    let layer = tar_of(&[Entry::File("data", &pseudo_random_bytes(100_000))]);
    let (archive, _) = legacy_archive(std::slice::from_ref(&layer), &["app:1"]);
    let base = tempfile::tempdir().expect("tempdir");
    let store = store_in(base.path());
    for cut in [archive.len() / 2, archive.len() - 2048, 700] {
        let error = store.load(&archive[..cut]).expect_err("truncated");
        assert!(error.to_string().contains("truncated"), "cut at {cut}: {error}");
    }
    let error = store.import(&layer[..layer.len() / 2], &[], "", 0).expect_err("truncated");
    assert!(error.to_string().contains("truncated"), "{error}");
    assert_untouched(base.path(), &store);
}

#[test]
fn a_manifest_naming_a_missing_file_is_refused() {
    let layer = tar_of(&[Entry::File("a", b"1")]);
    let config = common::config_json(&[sha256(&layer)], &["sh"]);
    let config_name = format!("{}.json", &sha256(&config)[7..]);
    let manifest =
        serde_json::to_vec(&serde_json::json!([{"Config": config_name, "RepoTags": ["app:1"], "Layers": ["missing/layer.tar"]}]))
            .expect("json");
    let archive = tar_of(&[Entry::File(&config_name, &config), Entry::File("manifest.json", &manifest)]);
    let base = tempfile::tempdir().expect("tempdir");
    let store = store_in(base.path());
    match store.load(&archive[..]) {
        Err(ImageError::MissingInArchive { path, .. }) => assert_eq!(path, "missing/layer.tar"),
        other => panic!("expected a missing file, got {other:?}"),
    }

    // OCI layout: the index names a manifest blob the archive lacks.
    let (oci, _) = oci_archive(&[layer], false, "app:1");
    let without_manifest_blob: Vec<(String, Vec<u8>)> = {
        let mut reader = tar::Archive::new(&oci[..]);
        let mut kept = Vec::new();
        let index: serde_json::Value = serde_json::from_slice(&common_file(&oci, "index.json")).expect("json");
        let manifest_blob = format!("blobs/sha256/{}", &index["manifests"][0]["digest"].as_str().expect("digest")[7..]);
        for entry in reader.entries().expect("tar") {
            let mut entry = entry.expect("entry");
            let name = entry.path().expect("path").to_string_lossy().into_owned();
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut data).expect("data");
            if name != manifest_blob {
                kept.push((name, data));
            }
        }
        kept
    };
    let archive = tar_of(&without_manifest_blob.iter().map(|(n, d)| Entry::File(n, d)).collect::<Vec<_>>());
    assert!(matches!(store.load(&archive[..]), Err(ImageError::MissingInArchive { .. })));

    // No manifest at all.
    let error = store.load(&tar_of(&[Entry::File("hello", b"x")])[..]).expect_err("no manifest");
    assert!(error.to_string().contains("manifest.json"), "{error}");
    assert_untouched(base.path(), &store);
}

fn common_file(archive: &[u8], wanted: &str) -> Vec<u8> {
    let mut reader = tar::Archive::new(archive);
    for entry in reader.entries().expect("tar") {
        let mut entry = entry.expect("entry");
        if entry.path().expect("path").to_string_lossy() == wanted {
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut data).expect("data");
            return data;
        }
    }
    panic!("{wanted} not in archive");
}

#[test]
fn content_that_does_not_match_its_digest_is_refused_and_named() {
    let base = tempfile::tempdir().expect("tempdir");
    let store = store_in(base.path());
    let good = tar_of(&[Entry::File("a", b"good")]);
    let evil = tar_of(&[Entry::File("a", b"evil")]);

    // Legacy: the config names the good layer's diff id, the archive ships another.
    let config = common::config_json(&[sha256(&good)], &["sh"]);
    let config_name = format!("{}.json", &sha256(&config)[7..]);
    let manifest =
        serde_json::to_vec(&serde_json::json!([{"Config": config_name, "RepoTags": ["app:1"], "Layers": ["l/layer.tar"]}])).expect("json");
    let archive = tar_of(&[Entry::File(&config_name, &config), Entry::File("l/layer.tar", &evil), Entry::File("manifest.json", &manifest)]);
    match store.load(&archive[..]) {
        Err(ImageError::DigestMismatch { what, expected, actual }) => {
            assert!(what.contains("l/layer.tar"), "{what}");
            assert_eq!(expected, sha256(&good));
            assert_eq!(actual, sha256(&evil));
        }
        other => panic!("expected a digest mismatch, got {other:?}"),
    }

    // Legacy: a config file whose name is not its digest.
    let renamed = format!("{}.json", "0".repeat(64));
    let manifest = serde_json::to_vec(&serde_json::json!([{"Config": renamed, "Layers": ["l/layer.tar"]}])).expect("json");
    let archive = tar_of(&[Entry::File(&renamed, &config), Entry::File("l/layer.tar", &good), Entry::File("manifest.json", &manifest)]);
    assert!(matches!(store.load(&archive[..]), Err(ImageError::DigestMismatch { .. })));

    // OCI: a blob whose bytes are not what its name says.
    let (oci, _) = oci_archive(std::slice::from_ref(&good), false, "app:1");
    let tampered: Vec<u8> = {
        let good_name = format!("blobs/sha256/{}", &sha256(&good)[7..]);
        let mut reader = tar::Archive::new(&oci[..]);
        let mut files = Vec::new();
        for entry in reader.entries().expect("tar") {
            let mut entry = entry.expect("entry");
            let name = entry.path().expect("path").to_string_lossy().into_owned();
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut data).expect("data");
            files.push((name.clone(), if name == good_name { evil.clone() } else { data }));
        }
        tar_of(&files.iter().map(|(n, d)| Entry::File(n, d)).collect::<Vec<_>>())
    };
    match store.load(&tampered[..]) {
        Err(ImageError::DigestMismatch { what, .. }) => assert!(what.contains(&sha256(&good)[7..]), "{what}"),
        other => panic!("expected a digest mismatch, got {other:?}"),
    }
    assert_untouched(base.path(), &store);
}

#[test]
fn entries_escaping_with_dotdot_are_refused_everywhere() {
    let base = tempfile::tempdir().expect("tempdir");
    let store = store_in(base.path());
    let hostile = tar_of(&[Entry::File("fine", b"ok"), Entry::RawName("../evil", b"pwned")]);
    let hostile_link = tar_of(&[Entry::Hardlink("link", "../../evil")]);

    for tarball in [&hostile, &hostile_link] {
        let error = store.import(&tarball[..], &[], "", 0).expect_err("escapes");
        assert!(matches!(error, ImageError::BadTar { source: TarfsError::PathEscapes { .. }, .. }), "{error}");
    }
    // In the archive itself, and inside one of its layers.
    assert!(matches!(store.load(&hostile[..]), Err(ImageError::BadTar { source: TarfsError::PathEscapes { .. }, .. })));
    let (archive, _) = legacy_archive(std::slice::from_ref(&hostile), &["app:1"]);
    let error = store.load(&archive[..]).expect_err("layer escapes");
    assert!(matches!(error, ImageError::BadTar { source: TarfsError::PathEscapes { .. }, .. }), "{error}");

    // docker cp into a container directory.
    let target = base.path().join("target");
    std::fs::create_dir(&target).expect("mkdir");
    let error = tarfs::untar_into(&hostile[..], &target).expect_err("escapes");
    assert!(matches!(error, TarfsError::PathEscapes { .. }), "{error}");
    assert_untouched(base.path(), &store);
}

#[test]
fn symlinks_are_never_followed_out_of_the_target() {
    let base = tempfile::tempdir().expect("tempdir");
    let outside = base.path().join("outside");
    std::fs::create_dir(&outside).expect("mkdir");
    let target = base.path().join("target");
    std::fs::create_dir(&target).expect("mkdir");
    let outside_text = outside.to_string_lossy().into_owned();
    let archive = tar_of(&[
        Entry::Symlink("absolute", &outside_text),
        Entry::File("absolute/pwned", b"x"),
        Entry::Symlink("relative", "../../../../.."),
        Entry::File("relative/pwned-too", b"y"),
        // A file entry over an existing link replaces the link, never writes through it.
        Entry::Symlink("overwrite", &format!("{outside_text}/victim")),
        Entry::File("overwrite", b"z"),
    ]);
    tarfs::untar_into(&archive[..], &target).expect("unpacks, inside");
    assert_eq!(std::fs::read_dir(&outside).expect("outside").count(), 0, "nothing written outside");
    // Links resolve as if the target were `/`.
    assert_eq!(std::fs::read(target.join(outside.strip_prefix("/").expect("absolute")).join("pwned")).expect("inside"), b"x");
    assert_eq!(std::fs::read(target.join("pwned-too")).expect("inside"), b"y");
    assert!(std::fs::symlink_metadata(target.join("overwrite")).expect("exists").is_file());
    assert_eq!(std::fs::read_link(target.join("absolute")).expect("kept as a link"), outside);
}

#[test]
fn bad_changes_and_tags_are_refused_before_anything_is_stored() {
    let base = tempfile::tempdir().expect("tempdir");
    let store = store_in(base.path());
    let tarball = tar_of(&[Entry::File("f", b"x")]);
    let error = store.import(&tarball[..], &["RUN rm -rf /".to_string()], "", 0).expect_err("unsupported");
    assert!(matches!(error, ImageError::Change(_)), "{error}");
    assert_eq!(std::fs::read_dir(base.path().join("store/blobs/sha256")).expect("blobs").count(), 0);

    let image = store.import(&tarball[..], &[], "", 0).expect("import");
    let mut out = Vec::new();
    let error = store.save(&[(image.id.clone(), vec!["Not A Valid Tag".to_string()])], &mut out).expect_err("bad tag");
    assert!(matches!(error, ImageError::Reference(_)), "{error}");
    assert!(out.is_empty(), "nothing written before the check");
    let unknown = format!("sha256:{}", "2".repeat(64));
    assert!(matches!(store.save(&[(unknown, vec![])], &mut out), Err(ImageError::NotFound(_))));

    let (archive, _) = legacy_archive(&[tarball], &["app:-not-a-tag"]);
    assert!(matches!(store.load(&archive[..]), Err(ImageError::Reference(_))));
}
