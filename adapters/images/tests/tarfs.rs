//! `tarfs`: archiving a directory (`docker export`) or one path (`docker cp`
//! out) and extracting into a directory (`docker cp` in), checked by round
//! trips that must keep contents, modes, owners, times and every file kind.

mod common;

use berth_images::tarfs::{tar_directory, tar_path, untar_into};
use berth_images::TarfsError;
use common::{busybox_rootfs, tar_of, tree, Entry};
use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn entry_names(archive: &[u8]) -> Vec<String> {
    let mut reader = tar::Archive::new(archive);
    reader.entries().expect("a tar").map(|e| e.expect("an entry").path().expect("a path").to_string_lossy().into_owned()).collect()
}

/// Everything about one path that an export and import must keep.
fn describe(path: &Path) -> String {
    let meta = std::fs::symlink_metadata(path).expect("exists");
    let kind = meta.file_type();
    let detail = if kind.is_symlink() {
        format!("link->{}", std::fs::read_link(path).expect("link").display())
    } else if kind.is_file() {
        format!("file:{}:mtime={}", common::sha256(&std::fs::read(path).expect("file")), meta.mtime())
    } else {
        format!("other:{:o}", meta.mode() & 0o170000)
    };
    let mode = if kind.is_symlink() { 0 } else { meta.mode() & 0o7777 };
    format!("{detail} mode={mode:o} owner={}:{}", meta.uid(), meta.gid())
}

#[test]
fn a_directory_round_trips_through_export_and_cp() {
    let source = tempfile::tempdir().expect("tempdir");
    busybox_rootfs(source.path());
    let root = source.path();
    std::fs::write(root.join("bin/setuid-tool"), b"#!/bin/sh\n").expect("write");
    std::fs::set_permissions(root.join("bin/setuid-tool"), std::fs::Permissions::from_mode(0o4755)).expect("chmod");
    let long_dir = root.join("d".repeat(60)).join("e".repeat(60));
    std::fs::create_dir_all(&long_dir).expect("mkdir");
    std::fs::write(long_dir.join("f".repeat(80)), b"long names need GNU extensions").expect("write");
    std::os::unix::fs::symlink("t".repeat(150), root.join("long-link")).expect("symlink");
    std::fs::write(root.join(OsStr::from_bytes(b"not-utf8-\xff")), b"bytes").expect("write");
    let fifo = std::ffi::CString::new(root.join("fifo").as_os_str().as_bytes()).expect("path");
    // SAFETY: a valid path string for the duration of the call.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o640) }, 0);
    if is_root() {
        std::os::unix::fs::lchown(root.join("etc/hostname"), Some(1234), Some(5678)).expect("chown");
    }

    let mut archive = Vec::new();
    tar_directory(root, &mut archive).expect("export");
    assert!(entry_names(&archive).iter().all(|n| !n.starts_with('/') && !n.starts_with("..")));
    let target = tempfile::tempdir().expect("tempdir");
    untar_into(&archive[..], target.path()).expect("import");

    assert_eq!(tree(target.path()), tree(root));
    for path in common::tree_paths(root) {
        assert_eq!(describe(&target.path().join(&path)), describe(&root.join(&path)), "{}", path.display());
    }
    let busybox = std::fs::metadata(target.path().join("bin/busybox")).expect("exists");
    let hard = std::fs::metadata(target.path().join("bin/busybox.hard")).expect("exists");
    assert_eq!(busybox.ino(), hard.ino(), "hard links come back as hard links");
    if is_root() {
        assert_eq!(std::fs::metadata(target.path().join("etc/hostname")).expect("exists").uid(), 1234);
    }
    // The same tree always gives the same archive.
    let mut again = Vec::new();
    tar_directory(root, &mut again).expect("export");
    assert_eq!(again, archive);
}

#[test]
fn tar_path_archives_one_path_under_the_given_name() {
    let source = tempfile::tempdir().expect("tempdir");
    busybox_rootfs(source.path());
    let mut file = Vec::new();
    tar_path(&source.path().join("etc/hostname"), "hostname", &mut file).expect("file");
    assert_eq!(entry_names(&file), vec!["hostname"]);
    let mut reader = tar::Archive::new(&file[..]);
    let mut entry = reader.entries().expect("tar").next().expect("one").expect("entry");
    let mut data = Vec::new();
    entry.read_to_end(&mut data).expect("data");
    assert_eq!(data, b"berth\n");

    let mut dir = Vec::new();
    tar_path(&source.path().join("etc"), "config", &mut dir).expect("dir");
    assert_eq!(entry_names(&dir), vec!["config", "config/hostname"]);

    let mut link = Vec::new();
    tar_path(&source.path().join("bin/sh"), "sh", &mut link).expect("link");
    let mut reader = tar::Archive::new(&link[..]);
    let entry = reader.entries().expect("tar").next().expect("one").expect("entry");
    assert!(entry.header().entry_type().is_symlink(), "links are archived as links, not followed");

    assert!(matches!(tar_path(source.path(), "../up", &mut Vec::new()), Err(TarfsError::PathEscapes { .. })));
    assert!(matches!(tar_path(source.path(), "", &mut Vec::new()), Err(TarfsError::PathEscapes { .. })));
}

#[test]
fn untar_into_accepts_gzip_and_replaces_what_is_there() {
    let target = tempfile::tempdir().expect("tempdir");
    std::fs::write(target.path().join("was-a-file"), b"old").expect("write");
    std::fs::create_dir(target.path().join("was-a-dir")).expect("mkdir");
    std::fs::write(target.path().join("was-a-dir/child"), b"old").expect("write");
    std::fs::create_dir(target.path().join("stays")).expect("mkdir");
    std::fs::write(target.path().join("stays/old"), b"kept").expect("write");
    let archive = tar_of(&[
        Entry::Dir("was-a-file"),
        Entry::File("was-a-file/inside", b"new"),
        Entry::File("was-a-dir", b"now a file"),
        Entry::Dir("stays"),
        Entry::File("stays/new", b"added"),
        // No parent entry: parents are created.
        Entry::File("deep/er/file", b"deep"),
        Entry::FileWithMode("script", b"#!/bin/sh\n", 0o750),
    ]);
    untar_into(&common::gzip(&archive)[..], target.path()).expect("untar");
    assert_eq!(std::fs::read(target.path().join("was-a-file/inside")).expect("file"), b"new");
    assert_eq!(std::fs::read(target.path().join("was-a-dir")).expect("file"), b"now a file");
    assert_eq!(std::fs::read(target.path().join("stays/old")).expect("file"), b"kept", "directories merge");
    assert_eq!(std::fs::read(target.path().join("stays/new")).expect("file"), b"added");
    assert_eq!(std::fs::read(target.path().join("deep/er/file")).expect("file"), b"deep");
    let script = std::fs::metadata(target.path().join("script")).expect("exists");
    assert_eq!(script.permissions().mode() & 0o7777, 0o750);
    assert_eq!(script.mtime(), 1_700_000_000, "times come from the archive");
    // Whiteout names are ordinary files outside image layers.
    untar_into(&tar_of(&[Entry::File(".wh.stays", b"")])[..], target.path()).expect("untar");
    assert!(target.path().join("stays").is_dir() && target.path().join(".wh.stays").is_file());
}

#[test]
fn untar_into_refuses_a_missing_target_and_hard_links_to_nowhere() {
    let base = tempfile::tempdir().expect("tempdir");
    let archive = tar_of(&[Entry::File("f", b"x")]);
    assert!(matches!(untar_into(&archive[..], &base.path().join("missing")), Err(TarfsError::Io { .. })));
    std::fs::write(base.path().join("plain-file"), b"").expect("write");
    assert!(matches!(untar_into(&archive[..], &base.path().join("plain-file")), Err(TarfsError::TargetNotADirectory { .. })));
    let dangling = tar_of(&[Entry::Hardlink("link", "does/not/exist")]);
    assert!(matches!(untar_into(&dangling[..], base.path()), Err(TarfsError::MissingLinkTarget { .. })));
    assert!(matches!(untar_into(&b""[..], base.path()), Err(TarfsError::Empty)));
}

/// One PAX extended-header record: `<length> <key>=<value>\n`, where the
/// length counts the whole record including its own digits.
fn pax_record(key: &str, value: &str) -> Vec<u8> {
    let base = key.len() + value.len() + 3;
    let mut length = base + 1;
    while length != base + length.to_string().len() {
        length = base + length.to_string().len();
    }
    format!("{length} {key}={value}\n").into_bytes()
}

#[test]
fn pax_overrides_xattrs_and_device_nodes_are_unpacked() {
    let mut builder = tar::Builder::new(Vec::new());
    let mut records = pax_record("SCHILY.xattr.user.berth", "hello");
    records.extend(pax_record("mtime", "1600000000.25"));
    records.extend(pax_record("uid", "4321"));
    let mut pax = tar::Header::new_ustar();
    pax.set_entry_type(tar::EntryType::XHeader);
    pax.set_size(records.len() as u64);
    pax.set_mode(0o644);
    builder.append_data(&mut pax, "PaxHeaders/tagged", &records[..]).expect("in memory");
    let mut file = tar::Header::new_ustar();
    file.set_entry_type(tar::EntryType::Regular);
    file.set_size(2);
    file.set_mode(0o600);
    file.set_mtime(1);
    builder.append_data(&mut file, "tagged", &b"hi"[..]).expect("in memory");
    let mut device = tar::Header::new_ustar();
    device.set_entry_type(tar::EntryType::Char);
    device.set_size(0);
    device.set_mode(0o666);
    device.set_device_major(1).expect("fits");
    device.set_device_minor(3).expect("fits");
    builder.append_data(&mut device, "dev/null", std::io::empty()).expect("in memory");
    let archive = builder.into_inner().expect("in memory");

    let target = tempfile::tempdir().expect("tempdir");
    untar_into(&archive[..], target.path()).expect("untar");
    let tagged = target.path().join("tagged");
    let meta = std::fs::metadata(&tagged).expect("exists");
    assert_eq!(meta.mtime(), 1_600_000_000, "the PAX mtime wins over the header's");
    assert_eq!(meta.mtime_nsec(), 250_000_000);
    if is_root() {
        assert_eq!(meta.uid(), 4321, "the PAX uid wins over the header's");
    }
    let path = std::ffi::CString::new(tagged.as_os_str().as_bytes()).expect("path");
    let mut value = [0u8; 16];
    // SAFETY: valid strings and a buffer of the given length.
    let length = unsafe { libc::lgetxattr(path.as_ptr(), c"user.berth".as_ptr(), value.as_mut_ptr().cast(), value.len()) };
    if length >= 0 {
        assert_eq!(&value[..length as usize], b"hello");
    } else {
        println!("skipping the xattr check: {}", std::io::Error::last_os_error());
    }

    // Device nodes need CAP_MKNOD; without it they are skipped, never an error.
    match std::fs::symlink_metadata(target.path().join("dev/null")) {
        Ok(meta) => {
            use std::os::unix::fs::FileTypeExt;
            assert!(meta.file_type().is_char_device());
            assert_eq!(meta.rdev(), libc::makedev(1, 3));
        }
        Err(error) => {
            assert_eq!(error.kind(), std::io::ErrorKind::NotFound);
            println!("device node skipped: no CAP_MKNOD here");
        }
    }
}
