//! Image disks: an image's root filesystem as an ext4 flat VMDK on a datastore, the parent
//! of the writable (delta) disks of the containers made from the image.
//!
//! [`build_flat_vmdk`] unpacks a root filesystem tar with `tar`, makes an ext4 file system
//! image of it with `mkfs.ext4 -d` (e2fsprogs, no root privileges or loop mounts needed) and
//! writes the VMDK descriptor that names that raw image as its extent. [`upload_image_disk`]
//! puts both on a datastore under `berth/<vch>/images/<id>/`, the extent first and the
//! descriptor last, so that a descriptor marks a complete disk (as VIC's manifest, written last,
//! marked a complete layer): an upload that fails leaves no descriptor, and the next one
//! starts over.
//!
//! Ownership: `tar` keeps the archive's numeric owners only when berth runs as root; otherwise
//! every file of the disk belongs to berth's user (and device nodes cannot be unpacked).

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::client::{VimClient, VimError};

/// Bytes of a disk sector, the unit of a descriptor's extent size.
const SECTOR_BYTES: u64 = 512;
/// Image disks are whole MiB.
const MIB: u64 = 1024 * 1024;
/// The room a file system needs beyond its contents: journal, inode tables, directories.
const FILESYSTEM_OVERHEAD_BYTES: u64 = 16 * MIB;
/// What each file is counted as at least, and what its size is rounded up to: a 4 KiB block.
const BLOCK_BYTES: u64 = 4096;
/// Inodes the file system gets beyond one and a half per unpacked entry.
const SPARE_INODES: u64 = 1024;
/// The longest ext4 volume label.
const LABEL_MAX_BYTES: usize = 16;
/// The longest disk name; a hex image id has 64 characters.
const NAME_MAX_BYTES: usize = 128;
/// Where e2fsprogs lives when `/usr/sbin` is not on a non-root user's PATH.
const SBIN_DIRECTORIES: &[&str] = &["/usr/sbin", "/sbin"];
/// How much of a tool's error output goes into an error.
const TOOL_OUTPUT_CHARS: usize = 2000;
/// The ext4 features of image disks, named one by one instead of taken from the host's
/// mke2fs.conf: the same disk whatever e2fsprogs builds it, and one that guest kernels older
/// than the host's can mount read-write (no metadata_csum, orphan_file...).
const EXT4_FEATURES: &str =
    "none,has_journal,ext_attr,resize_inode,dir_index,filetype,extent,flex_bg,sparse_super,large_file,huge_file,dir_nlink,extra_isize,64bit";
/// The virtual hardware version written into descriptors: the oldest that takes these disks,
/// so that a VM of any hardware version can use them.
const DESCRIPTOR_HW_VERSION: u32 = 4;
/// Heads and sectors per track of the BIOS geometry ESX writes for SCSI disks.
const GEOMETRY_HEADS: u64 = 255;
const GEOMETRY_SECTORS: u64 = 63;
/// `parentCID` of a disk without a parent.
const NO_PARENT_CID: u32 = 0xffff_ffff;

/// A flat VMDK built locally: the descriptor's text and the raw extent, ready for upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlatVmdk {
    /// The `.vmdk` descriptor, whose extent line names `<name>-flat.vmdk`.
    pub descriptor: String,
    /// The local raw ext4 image, uploaded as `<name>-flat.vmdk`.
    pub flat_path: PathBuf,
    /// The disk's size: the flat file's length, a whole number of MiB.
    pub capacity_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ImageDiskError {
    #[error("{0:?} cannot name a disk: use 1 to {NAME_MAX_BYTES} letters, digits, '-', '_' or '.', not starting with '.'")]
    BadName(String),
    #[error("{action}: {source}")]
    Io {
        action: String,
        #[source]
        source: io::Error,
    },
    #[error("{tool} cannot run (is e2fsprogs or tar installed?): {source}")]
    ToolMissing {
        tool: &'static str,
        #[source]
        source: io::Error,
    },
    /// `tar` refuses archives with members that would land outside the root (`../x`) and
    /// fails on unreadable archives; `mkfs.ext4` on a full work directory.
    #[error("{tool} failed ({status}): {output}")]
    ToolFailed { tool: &'static str, status: String, output: String },
    #[error("a root filesystem of {bytes} bytes is too large for a disk")]
    TooLarge { bytes: u64 },
}

fn io_error(action: impl Into<String>) -> impl FnOnce(io::Error) -> ImageDiskError {
    let action = action.into();
    move |source| ImageDiskError::Io { action, source }
}

/// Refuses names that are not plain file names (they go into paths and the descriptor's quotes).
fn check_name(name: &str) -> Result<(), ImageDiskError> {
    let plain = name.bytes().all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.'));
    if name.is_empty() || name.len() > NAME_MAX_BYTES || name.starts_with('.') || !plain {
        return Err(ImageDiskError::BadName(name.to_string()));
    }
    Ok(())
}

/// The file name of a disk's raw extent.
pub fn flat_file_name(name: &str) -> String {
    format!("{name}-flat.vmdk")
}

/// The file name of a disk's descriptor.
pub fn descriptor_file_name(name: &str) -> String {
    format!("{name}.vmdk")
}

/// A content ID for the descriptor: vSphere copies it into a child's `parentCID` and checks
/// that it still matches when the child is opened. It is derived from the name and size (FNV-1a)
/// rather than drawn at random, so that rebuilding an image's disk gives the same descriptor.
fn content_id(name: &str, capacity_bytes: u64) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in name.bytes().chain(capacity_bytes.to_le_bytes()) {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    // ffffffff means "no parent" and fffffffe "not set" to the VMDK tools.
    if hash >= 0xffff_fffe {
        hash ^= 0x8000_0000;
    }
    hash
}

/// The descriptor of a flat disk of `capacity_bytes` (whole sectors) whose extent is
/// `<name>-flat.vmdk` in the same directory, as ESX writes for VMFS datastores.
pub fn flat_descriptor(name: &str, capacity_bytes: u64) -> String {
    let sectors = capacity_bytes / SECTOR_BYTES;
    let cylinders = (sectors / (GEOMETRY_HEADS * GEOMETRY_SECTORS)).max(1);
    format!(
        concat!(
            "# Disk DescriptorFile\n",
            "version=1\n",
            "encoding=\"UTF-8\"\n",
            "CID={cid:08x}\n",
            "parentCID={no_parent:08x}\n",
            "createType=\"vmfs\"\n",
            "\n",
            "# Extent description\n",
            "RW {sectors} VMFS \"{flat}\"\n",
            "\n",
            "# The Disk Data Base\n",
            "#DDB\n",
            "\n",
            "ddb.adapterType = \"lsilogic\"\n",
            "ddb.geometry.cylinders = \"{cylinders}\"\n",
            "ddb.geometry.heads = \"{heads}\"\n",
            "ddb.geometry.sectors = \"{track}\"\n",
            "ddb.virtualHWVersion = \"{hw}\"\n",
        ),
        cid = content_id(name, capacity_bytes),
        no_parent = NO_PARENT_CID,
        sectors = sectors,
        flat = flat_file_name(name),
        cylinders = cylinders,
        heads = GEOMETRY_HEADS,
        track = GEOMETRY_SECTORS,
        hw = DESCRIPTOR_HW_VERSION,
    )
}

/// The size of the disk for `content_bytes` of files: half as much again for the file
/// system's own structures and some growth, plus a fixed overhead, in whole MiB.
fn disk_size_for(content_bytes: u64) -> Option<u64> {
    let raw = content_bytes.checked_add(content_bytes / 2)?.checked_add(FILESYSTEM_OVERHEAD_BYTES)?;
    raw.checked_next_multiple_of(MIB)
}

/// The space the files under `root` take in blocks (each entry at least one), and how many
/// entries there are. Symbolic links are not followed.
fn measure_tree(root: &Path) -> Result<(u64, u64), ImageDiskError> {
    let mut bytes: u64 = 0;
    let mut entries: u64 = 0;
    let mut pending = vec![root.to_path_buf()];
    while let Some(directory) = pending.pop() {
        for entry in fs::read_dir(&directory).map_err(io_error(format!("reading {}", directory.display())))? {
            let entry = entry.map_err(io_error(format!("reading {}", directory.display())))?;
            let metadata = entry.metadata().map_err(io_error(format!("reading {}", entry.path().display())))?;
            let length = if metadata.is_file() { metadata.len().max(1) } else { 1 };
            let blocks = length.checked_next_multiple_of(BLOCK_BYTES).ok_or(ImageDiskError::TooLarge { bytes: u64::MAX })?;
            bytes = bytes.checked_add(blocks).ok_or(ImageDiskError::TooLarge { bytes: u64::MAX })?;
            entries += 1;
            if metadata.is_dir() {
                pending.push(entry.path());
            }
        }
    }
    Ok((bytes, entries))
}

/// Runs a tool and returns its output if it succeeded. Tools of e2fsprogs are also looked for
/// in the sbin directories, which a non-root user's PATH may lack.
fn run(tool: &'static str, arguments: &[&std::ffi::OsStr]) -> Result<Output, ImageDiskError> {
    let candidates = std::iter::once(PathBuf::from(tool)).chain(SBIN_DIRECTORIES.iter().map(|directory| Path::new(directory).join(tool)));
    let mut missing = None;
    for program in candidates {
        match Command::new(&program).args(arguments).env("LC_ALL", "C").output() {
            Ok(output) if output.status.success() => return Ok(output),
            Ok(output) => {
                let mut text = String::from_utf8_lossy(&output.stderr).into_owned();
                text.push_str(&String::from_utf8_lossy(&output.stdout));
                return Err(ImageDiskError::ToolFailed {
                    tool,
                    status: output.status.to_string(),
                    output: text.trim().chars().take(TOOL_OUTPUT_CHARS).collect(),
                });
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => missing = Some(error),
            Err(error) => return Err(ImageDiskError::ToolMissing { tool, source: error }),
        }
    }
    Err(ImageDiskError::ToolMissing { tool, source: missing.unwrap_or_else(|| io::Error::from(io::ErrorKind::NotFound)) })
}

/// Removes a directory tree; directories unpacked without write permission (which a non-root
/// user cannot empty) are made writable first.
fn remove_tree(path: &Path) -> io::Result<()> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(_) => {
            let mut pending = vec![path.to_path_buf()];
            while let Some(directory) = pending.pop() {
                fs::set_permissions(&directory, fs::Permissions::from_mode(0o700))?;
                for entry in fs::read_dir(&directory)? {
                    let entry = entry?;
                    if entry.file_type()?.is_dir() {
                        pending.push(entry.path());
                    }
                }
            }
            fs::remove_dir_all(path)
        }
    }
}

/// A short volume label from the disk name: ext4 labels have at most 16 bytes.
fn volume_label(name: &str) -> String {
    name.chars().take(LABEL_MAX_BYTES).collect()
}

/// Builds the flat VMDK of the root filesystem in `rootfs_tar`: unpacks it into
/// `work_dir/root` (GNU tar refuses members with `..` and strips a leading `/`), makes
/// `work_dir/<name>-flat.vmdk` an ext4 image of it sized for its contents, removes the unpacked
/// tree, and returns the descriptor. The flat file stays for the caller to upload and remove.
pub fn build_flat_vmdk(rootfs_tar: &Path, work_dir: &Path, name: &str) -> Result<FlatVmdk, ImageDiskError> {
    check_name(name)?;
    fs::create_dir_all(work_dir).map_err(io_error(format!("creating {}", work_dir.display())))?;
    let root = work_dir.join("root");
    // A tree left by an interrupted build would mix into this one.
    remove_tree(&root).map_err(io_error(format!("removing the stale {}", root.display())))?;
    fs::create_dir(&root).map_err(io_error(format!("creating {}", root.display())))?;
    let flat_path = work_dir.join(flat_file_name(name));
    let built = make_filesystem(rootfs_tar, &root, &flat_path, name);
    // The unpacked tree is as large as the image; only the flat file is needed from here on.
    let removed = remove_tree(&root).map_err(io_error(format!("removing {}", root.display())));
    let capacity_bytes = match built {
        Ok(capacity_bytes) => capacity_bytes,
        Err(error) => {
            let _ = fs::remove_file(&flat_path);
            return Err(error);
        }
    };
    removed?;
    Ok(FlatVmdk { descriptor: flat_descriptor(name, capacity_bytes), flat_path, capacity_bytes })
}

/// Unpacks `rootfs_tar` into `root` and makes `flat_path` an ext4 image of it; returns its size.
fn make_filesystem(rootfs_tar: &Path, root: &Path, flat_path: &Path, name: &str) -> Result<u64, ImageDiskError> {
    // Numeric owners: the image's uids, not those the host's passwd gives the same names;
    // exact permissions whatever berth's umask.
    run(
        "tar",
        &[
            "--extract".as_ref(),
            "--file".as_ref(),
            rootfs_tar.as_os_str(),
            "--directory".as_ref(),
            root.as_os_str(),
            "--numeric-owner".as_ref(),
            "--preserve-permissions".as_ref(),
        ],
    )?;
    let (content_bytes, entries) = measure_tree(root)?;
    let capacity_bytes = disk_size_for(content_bytes).ok_or(ImageDiskError::TooLarge { bytes: content_bytes })?;
    // mke2fs gives small file systems few inodes per byte; an image of many small files
    // needs more.
    let inodes = entries.saturating_add(entries / 2).saturating_add(SPARE_INODES);
    match fs::remove_file(flat_path) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => return Err(ImageDiskError::Io { action: format!("removing the stale {}", flat_path.display()), source: error }),
    }
    let inode_count = inodes.to_string();
    let label = volume_label(name);
    let size = format!("{}K", capacity_bytes / 1024);
    run(
        "mkfs.ext4",
        &[
            "-q".as_ref(),
            "-F".as_ref(),
            "-O".as_ref(),
            EXT4_FEATURES.as_ref(),
            // Containers run as root, which would use the reserved blocks anyway.
            "-m".as_ref(),
            "0".as_ref(),
            "-N".as_ref(),
            inode_count.as_ref(),
            "-E".as_ref(),
            "root_owner=0:0".as_ref(),
            "-L".as_ref(),
            label.as_ref(),
            "-d".as_ref(),
            root.as_os_str(),
            flat_path.as_os_str(),
            size.as_ref(),
        ],
    )?;
    let length = fs::metadata(flat_path).map_err(io_error(format!("reading {}", flat_path.display())))?.len();
    if length != capacity_bytes {
        // The descriptor gives the extent's size, which must be the file's.
        fs::OpenOptions::new()
            .write(true)
            .open(flat_path)
            .and_then(|file| file.set_len(capacity_bytes))
            .map_err(io_error(format!("sizing {}", flat_path.display())))?;
    }
    Ok(capacity_bytes)
}

/// The datastore-relative paths of a disk's descriptor and extent in `directory`.
fn disk_paths(directory: &str, name: &str) -> (String, String) {
    let directory = directory.trim_matches('/');
    (format!("{directory}/{}", descriptor_file_name(name)), format!("{directory}/{}", flat_file_name(name)))
}

/// Whether the image disk `name` in `directory` (e.g. `berth/vch1/images/<id>`) is complete on
/// the datastore: its descriptor, uploaded last, is there.
pub fn image_disk_exists(
    client: &VimClient,
    datacenter_name: &str,
    datastore_name: &str,
    directory: &str,
    name: &str,
) -> Result<bool, VimError> {
    check_name(name).map_err(|error| VimError::InvalidSpec { message: error.to_string() })?;
    let (descriptor, _) = disk_paths(directory, name);
    client.datastore_file_exists(datacenter_name, datastore_name, &descriptor)
}

/// Uploads a flat VMDK as the disk `name` in `directory` (e.g. `berth/vch1/images/<id>`) of
/// the datastore, and returns its datastore path (`[datastore] directory/name.vmdk`), the
/// parent to give containers' disks. Makes the directory, uploads the extent, then the
/// descriptor; if the descriptor is there already the disk is complete and nothing is
/// uploaded. A failed upload removes the partial extent (as far as it can) and leaves no
/// descriptor. Uploads of one image must not run at once: the later one would rewrite the
/// extent under a disk that the earlier one completed.
pub fn upload_image_disk(
    client: &VimClient,
    datacenter_name: &str,
    datastore_name: &str,
    directory: &str,
    name: &str,
    vmdk: &FlatVmdk,
) -> Result<String, VimError> {
    check_name(name).map_err(|error| VimError::InvalidSpec { message: error.to_string() })?;
    let directory = directory.trim_matches('/');
    let (descriptor_path, flat_path) = disk_paths(directory, name);
    let disk = format!("[{datastore_name}] {descriptor_path}");
    if client.datastore_file_exists(datacenter_name, datastore_name, &descriptor_path)? {
        return Ok(disk);
    }
    let unreadable = |error: io::Error| VimError::InvalidSpec {
        message: format!("the image disk's extent {} cannot be read: {error}", vmdk.flat_path.display()),
    };
    let mut flat = fs::File::open(&vmdk.flat_path).map_err(unreadable)?;
    let length = flat.metadata().map_err(unreadable)?.len();
    if length != vmdk.capacity_bytes {
        return Err(VimError::InvalidSpec {
            message: format!("{} has {length} bytes, but its descriptor says {}", vmdk.flat_path.display(), vmdk.capacity_bytes),
        });
    }
    let datacenter = client.find_datacenter(datacenter_name)?;
    match client.make_directory(&datacenter, &format!("[{datastore_name}] {directory}"), true) {
        Ok(()) | Err(VimError::AlreadyExists { .. }) => {}
        Err(error) => return Err(error),
    }
    if let Err(error) = client.upload_file(datacenter_name, datastore_name, &flat_path, &mut flat, length) {
        // Best effort: the error that matters is the upload's, and a retry overwrites the file.
        let _ = client.delete_datastore_file(&datacenter, &format!("[{datastore_name}] {flat_path}"));
        return Err(error);
    }
    let descriptor = vmdk.descriptor.as_bytes();
    client.upload_file(datacenter_name, datastore_name, &descriptor_path, &mut &descriptor[..], descriptor.len() as u64)?;
    Ok(disk)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory under the system's temporary directory, removed when dropped.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(label: &str) -> Scratch {
            let path = std::env::temp_dir().join(format!("berth-image-disk-{label}-{}", std::process::id()));
            let _ = remove_tree(&path);
            fs::create_dir_all(&path).expect("scratch directory");
            Scratch(path)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = remove_tree(&self.0);
        }
    }

    #[test]
    fn descriptors_name_their_flat_extent_in_sectors() {
        let descriptor = flat_descriptor("abc123", 20 * MIB);
        let lines: Vec<&str> = descriptor.lines().collect();
        assert_eq!(lines[0], "# Disk DescriptorFile");
        assert!(lines.contains(&"version=1"));
        assert!(lines.contains(&"createType=\"vmfs\""));
        assert!(lines.contains(&"parentCID=ffffffff"));
        assert!(lines.contains(&"RW 40960 VMFS \"abc123-flat.vmdk\""), "{descriptor}");
        assert!(lines.contains(&"ddb.adapterType = \"lsilogic\""));
        assert!(lines.contains(&"ddb.geometry.heads = \"255\""));
        assert!(lines.contains(&"ddb.geometry.sectors = \"63\""));
        assert!(lines.contains(&"ddb.geometry.cylinders = \"2\""), "40960 sectors / (255 * 63)");
        assert!(lines.contains(&"ddb.virtualHWVersion = \"4\""));
        let cid = lines.iter().find_map(|line| line.strip_prefix("CID=")).expect("a CID");
        assert_eq!(cid.len(), 8);
        assert!(u32::from_str_radix(cid, 16).is_ok_and(|cid| cid < 0xffff_fffe));
        assert_eq!(descriptor, flat_descriptor("abc123", 20 * MIB), "the same disk, the same descriptor");
        assert_ne!(content_id("abc123", 20 * MIB), content_id("abc124", 20 * MIB));
        assert!(flat_descriptor("big", 8 * 1024 * MIB).contains("ddb.geometry.cylinders = \"1044\""));
    }

    #[test]
    fn sizes_are_half_again_the_contents_plus_sixteen_mib_in_whole_mib() {
        assert_eq!(disk_size_for(0), Some(16 * MIB));
        assert_eq!(disk_size_for(1), Some(17 * MIB));
        assert_eq!(disk_size_for(10 * MIB), Some(31 * MIB));
        assert_eq!(disk_size_for(u64::MAX), None);
    }

    #[test]
    fn names_must_be_plain_file_names() {
        assert!(check_name(&"0123456789abcdef".repeat(4)).is_ok());
        assert!(check_name("sha256-ab_c.1").is_ok());
        for bad in ["", ".", "..", ".hidden", "a/b", "a\"b", "a b", "a\nb", &"x".repeat(NAME_MAX_BYTES + 1)] {
            assert!(matches!(check_name(bad), Err(ImageDiskError::BadName(_))), "{bad:?} is refused");
        }
        assert_eq!(
            disk_paths("/berth/v/images/i/", "i"),
            ("berth/v/images/i/i.vmdk".to_string(), "berth/v/images/i/i-flat.vmdk".to_string())
        );
    }

    /// A tar whose members are `(name, contents)`, written by hand (ustar headers) so that it
    /// can hold names that `tar` itself would not write, like `../escape`.
    fn write_tar(path: &Path, members: &[(&str, &[u8])]) {
        let mut archive = Vec::new();
        for (name, contents) in members {
            let mut header = [0u8; 512];
            header[..name.len()].copy_from_slice(name.as_bytes());
            header[100..107].copy_from_slice(b"0000644");
            header[108..115].copy_from_slice(b"0000000");
            header[116..123].copy_from_slice(b"0000000");
            header[124..135].copy_from_slice(format!("{:011o}", contents.len()).as_bytes());
            header[136..147].copy_from_slice(b"00000000000");
            header[156] = b'0';
            header[257..263].copy_from_slice(b"ustar\0");
            header[263..265].copy_from_slice(b"00");
            header[148..156].copy_from_slice(b"        ");
            let checksum: u32 = header.iter().map(|byte| u32::from(*byte)).sum();
            header[148..155].copy_from_slice(format!("{checksum:06o}\0").as_bytes());
            archive.extend_from_slice(&header);
            archive.extend_from_slice(contents);
            archive.resize(archive.len().next_multiple_of(512), 0);
        }
        archive.resize(archive.len() + 1024, 0);
        fs::write(path, archive).expect("tar written");
    }

    #[test]
    fn a_tar_with_a_member_outside_the_root_is_refused() {
        let scratch = Scratch::new("escape");
        let tar = scratch.0.join("evil.tar");
        write_tar(&tar, &[("ok", b"fine"), ("../escape", b"out")]);
        let work = scratch.0.join("work");
        match build_flat_vmdk(&tar, &work, "evil") {
            Err(ImageDiskError::ToolFailed { tool: "tar", output, .. }) => assert!(output.contains(".."), "{output}"),
            other => panic!("a ../ member should fail the build, got {other:?}"),
        }
        assert!(!work.join("escape").exists() && !scratch.0.join("escape").exists(), "nothing was written outside the root");
        assert!(!work.join("root").exists(), "the unpacked tree is removed");
        assert!(!work.join("evil-flat.vmdk").exists(), "no flat file is left");
    }

    #[test]
    fn builds_an_ext4_flat_disk_of_a_tar() {
        let scratch = Scratch::new("build");
        let tar = scratch.0.join("rootfs.tar");
        write_tar(&tar, &[("hello", b"hello from the image\n"), ("etc/motd", b"motd\n")]);
        let work = scratch.0.join("work");
        let vmdk = build_flat_vmdk(&tar, &work, "img").expect("built");
        assert_eq!(vmdk.capacity_bytes, 17 * MIB, "two one-block files and their directory");
        assert_eq!(vmdk.flat_path, work.join("img-flat.vmdk"));
        assert_eq!(fs::metadata(&vmdk.flat_path).expect("flat file").len(), vmdk.capacity_bytes);
        assert_eq!(vmdk.descriptor, flat_descriptor("img", vmdk.capacity_bytes));
        assert!(!work.join("root").exists(), "the unpacked tree is removed");
        // The ext4 superblock's magic, 0xEF53 at byte 1024 + 56.
        let image = fs::read(&vmdk.flat_path).expect("read");
        assert_eq!(&image[1024 + 56..1024 + 58], &[0x53, 0xef]);
        assert!(matches!(build_flat_vmdk(&tar, &work, "../x"), Err(ImageDiskError::BadName(_))));
        assert!(matches!(
            build_flat_vmdk(&scratch.0.join("missing.tar"), &work, "img"),
            Err(ImageDiskError::ToolFailed { tool: "tar", .. })
        ));
    }
}
