//! `docker import` into the store and unpacking images into root
//! filesystems: a real busybox runs from the unpacked tree; compression,
//! `--change`, sizes, removal with blob garbage collection and reopening.

mod common;

use berth_images::{ImageError, ImageStore};
use common::{busybox_rootfs, sha256, tar_of, Entry};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

/// The busybox tree archived by the system's GNU tar, so import is checked
/// against an archive this crate did not write.
fn busybox_tarball() -> Vec<u8> {
    let rootfs = tempfile::tempdir().expect("tempdir");
    busybox_rootfs(rootfs.path());
    let output = Command::new("tar").arg("-C").arg(rootfs.path()).args(["-cf", "-", "."]).output().expect("tar runs");
    assert!(output.status.success(), "tar failed: {}", String::from_utf8_lossy(&output.stderr));
    output.stdout
}

fn blob_count(store_root: &Path) -> usize {
    std::fs::read_dir(store_root.join("blobs/sha256")).expect("blobs dir").count()
}

#[test]
fn imported_busybox_runs_after_unpacking() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = ImageStore::open(&dir.path().join("images")).expect("open");
    let tarball = busybox_tarball();
    let image = store.import(&tarball[..], &[], "", 1_700_000_000).expect("import");

    // The id is the digest of the stored config blob, as on Docker.
    let config_blob = std::fs::read(dir.path().join("images/blobs/sha256").join(&image.id[7..])).expect("config blob");
    assert_eq!(sha256(&config_blob), image.id);
    assert_eq!(image.layer_digests, vec![sha256(&tarball)], "the layer is the uncompressed tarball, byte for byte");
    assert!(store.contains(&image.id));

    let rootfs = tempfile::tempdir().expect("tempdir");
    store.unpack_rootfs(&image.id, rootfs.path()).expect("unpack");
    let output = Command::new(rootfs.path().join("bin/busybox")).args(["echo", "hi"]).output().expect("busybox runs");
    assert_eq!(output.stdout, b"hi\n");
    let via_applet_link = Command::new(rootfs.path().join("bin/echo")).arg("linked").output().expect("applet link runs");
    assert_eq!(via_applet_link.stdout, b"linked\n");

    assert_eq!(std::fs::read_link(rootfs.path().join("bin/sh")).expect("symlink"), Path::new("busybox"));
    let busybox = std::fs::metadata(rootfs.path().join("bin/busybox")).expect("exists");
    let hard = std::fs::metadata(rootfs.path().join("bin/busybox.hard")).expect("exists");
    assert_eq!(busybox.ino(), hard.ino(), "hard links stay one inode");
    assert_eq!(busybox.permissions().mode() & 0o7777, 0o755);
    let tmp = std::fs::metadata(rootfs.path().join("tmp")).expect("exists");
    assert_eq!(tmp.permissions().mode() & 0o7777, 0o1777, "sticky bit kept");
    assert_eq!(std::fs::read(rootfs.path().join("etc/hostname")).expect("file"), b"berth\n");
}

#[test]
fn plain_gzip_and_xz_tarballs_give_the_same_layer() {
    use std::io::Write;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = ImageStore::open(dir.path()).expect("open");
    let tarball = tar_of(&[Entry::Dir("etc"), Entry::File("etc/motd", b"hello\n")]);
    let gzipped = common::gzip(&tarball);
    let mut xz = liblzma::write::XzEncoder::new(Vec::new(), 6);
    xz.write_all(&tarball).expect("in memory");
    let xz = xz.finish().expect("in memory");

    let plain = store.import(&tarball[..], &[], "", 0).expect("plain");
    let from_gzip = store.import(&gzipped[..], &[], "", 0).expect("gzip");
    let from_xz = store.import(&xz[..], &[], "", 0).expect("xz");
    assert_eq!(plain.layer_digests, from_gzip.layer_digests);
    assert_eq!(plain.layer_digests, from_xz.layer_digests);
    assert_eq!(plain.id, from_gzip.id, "same layer, same config, same time: the same image");
}

#[test]
fn changes_and_message_land_in_the_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = ImageStore::open(dir.path()).expect("open");
    let tarball = tar_of(&[Entry::File("hello", b"world")]);
    let changes: Vec<String> = [
        r#"CMD ["/bin/sh", "-c", "echo hi"]"#,
        "ENTRYPOINT /entry",
        "ENV GREETING=hello NAME=\"berth user\"",
        "WORKDIR /srv",
        "USER nobody",
        "EXPOSE 80 53/udp",
        "LABEL org.example.team=images",
    ]
    .iter()
    .map(|c| c.to_string())
    .collect();
    let image = store.import(&tarball[..], &changes, "from a test", 1_700_000_000).expect("import");
    let config = store.config(&image.id).expect("config");
    assert_eq!(config.cmd, Some(vec!["/bin/sh".to_string(), "-c".to_string(), "echo hi".to_string()]));
    assert_eq!(config.entrypoint, Some(vec!["/bin/sh".to_string(), "-c".to_string(), "/entry".to_string()]));
    assert_eq!(config.env, vec!["GREETING=hello", "NAME=berth user"]);
    assert_eq!(config.working_dir, "/srv");
    assert_eq!(config.user, "nobody");
    assert_eq!(config.exposed_ports, vec!["53/udp", "80/tcp"]);
    assert_eq!(config.labels.get("org.example.team").map(String::as_str), Some("images"));
    assert_eq!(config.os, "linux");
    assert_eq!(config.created_unix_s, Some(1_700_000_000));
    assert_eq!(config.diff_ids, image.layer_digests);
    assert_eq!(config.raw["config"]["WorkingDir"], "/srv");

    assert_eq!(config.history.len(), 1);
    assert_eq!(config.history[0].comment, "from a test");
    assert_eq!(config.history[0].size_bytes, tarball.len() as u64);
    assert_eq!(store.layer_sizes_bytes(&image.id).expect("sizes"), vec![(image.layer_digests[0].clone(), tarball.len() as u64)]);
    assert_eq!(store.size_bytes(&image.id).expect("size"), image.size_bytes);
    assert!(image.size_bytes > tarball.len() as u64, "config plus layer");

    let default_message = store.import(&tarball[..], &[], "", 0).expect("import");
    assert_eq!(store.config(&default_message.id).expect("config").history[0].comment, "Imported from -");
}

#[test]
fn remove_reclaims_only_blobs_no_other_image_uses() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = ImageStore::open(dir.path()).expect("open");
    let tarball = tar_of(&[Entry::File("shared", b"layer")]);
    let first = store.import(&tarball[..], &["CMD a".to_string()], "", 0).expect("import");
    let second = store.import(&tarball[..], &["CMD b".to_string()], "", 0).expect("import");
    assert_ne!(first.id, second.id);
    assert_eq!(first.layer_digests, second.layer_digests);
    assert_eq!(blob_count(dir.path()), 3, "one shared layer, two configs");
    assert_eq!(store.list().expect("list").len(), 2);

    store.remove(&first.id).expect("remove");
    assert!(!store.contains(&first.id));
    assert!(matches!(store.config(&first.id), Err(ImageError::NotFound(_))));
    assert!(matches!(store.remove(&first.id), Err(ImageError::NotFound(_))));
    assert_eq!(blob_count(dir.path()), 2, "the shared layer stays for the second image");
    let rootfs = tempfile::tempdir().expect("tempdir");
    store.unpack_rootfs(&second.id, rootfs.path()).expect("still unpacks");
    assert_eq!(std::fs::read(rootfs.path().join("shared")).expect("file"), b"layer");

    store.remove(&second.id).expect("remove");
    assert_eq!(blob_count(dir.path()), 0);
    assert!(store.list().expect("list").is_empty());
}

#[test]
fn reopening_keeps_images_and_drops_leftovers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let image = {
        let store = ImageStore::open(dir.path()).expect("open");
        store.import(&tar_of(&[Entry::File("f", b"x")])[..], &[], "", 0).expect("import")
    };
    // What a crash mid-write leaves: a temporary file and a blob no image names.
    std::fs::write(dir.path().join("tmp/partial"), b"half a layer").expect("write");
    let orphan = dir.path().join("blobs/sha256").join("0".repeat(64));
    std::fs::write(&orphan, b"orphan").expect("write");

    let store = ImageStore::open(dir.path()).expect("reopen");
    assert!(store.contains(&image.id));
    assert_eq!(store.list().expect("list"), vec![image.id.clone()]);
    assert!(!dir.path().join("tmp/partial").exists());
    assert!(!orphan.exists());
    assert_eq!(store.config(&image.id).expect("config").diff_ids, image.layer_digests);
}

#[test]
fn image_ids_are_checked_before_use() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = ImageStore::open(dir.path()).expect("open");
    for bad in ["", "sha256:../../etc/passwd", "busybox", &"A".repeat(64)] {
        assert!(matches!(store.config(bad), Err(ImageError::InvalidImageId(_))), "{bad:?}");
        assert!(!store.contains(bad));
    }
    let unknown = format!("sha256:{}", "1".repeat(64));
    assert!(matches!(store.config(&unknown), Err(ImageError::NotFound(_))));
    assert!(matches!(store.unpack_rootfs(&unknown, dir.path()), Err(ImageError::NotFound(_))));
    // The bare hex form is accepted too.
    let image = store.import(&tar_of(&[Entry::File("f", b"x")])[..], &[], "", 0).expect("import");
    assert!(store.contains(&image.id[7..]));
}

#[test]
fn removals_racing_imports_never_take_a_live_images_blobs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let importing = ImageStore::open(dir.path()).expect("open");
    // A second store value on the same root, as another component might
    // hold: the lock file keeps them consistent.
    let removing = ImageStore::open(dir.path()).expect("open");
    let tarball = tar_of(&[Entry::File("shared", b"one layer for every image")]);
    let (sender, receiver) = std::sync::mpsc::channel::<String>();
    std::thread::scope(|scope| {
        let (importing, removing, tarball) = (&importing, &removing, &tarball);
        scope.spawn(move || {
            for round in 0..40 {
                let image = importing.import(&tarball[..], &[format!("CMD echo {round}")], "", 0).expect("import");
                sender.send(image.id).expect("remover listens");
            }
            drop(sender);
        });
        scope.spawn(move || {
            for (index, id) in receiver.iter().enumerate() {
                if index % 2 == 0 {
                    removing.remove(&id).expect("remove");
                }
            }
        });
    });
    let remaining = importing.list().expect("list");
    assert_eq!(remaining.len(), 20);
    for id in remaining {
        let rootfs = tempfile::tempdir().expect("tempdir");
        importing.unpack_rootfs(&id, rootfs.path()).expect("every remaining image is whole");
    }
}
