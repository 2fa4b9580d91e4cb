//! Tar streams and directory trees: unpacking image layers (with OCI
//! whiteouts) and `docker cp` archives into a directory without ever writing
//! outside it, and archiving a directory (`docker export`) or one path
//! (`docker cp` out).
//!
//! Unpacking resolves every parent directory inside the target the way a
//! chroot would: symbolic links are followed, but an absolute target or `..`
//! can never climb above the target directory. The last component of an entry
//! is never followed: whatever is there is replaced.

use crate::compression::{self, CompressionError};
use std::collections::{HashMap, VecDeque};
use std::ffi::{CString, OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

/// More hops than any sane tree needs; a bound so link cycles end in an error.
const MAX_SYMLINKS_FOLLOWED: usize = 255;
const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_WHITEOUT: &[u8] = b".wh..wh..opq";

#[derive(Debug, thiserror::Error)]
pub enum TarfsError {
    #[error("not a valid tar stream: {reason}")]
    InvalidTar { reason: String },
    #[error("the tar stream is truncated: {reason}")]
    Truncated { reason: String },
    #[error("the stream is empty, not a tar archive")]
    Empty,
    #[error("tar entry {path:?} escapes the target directory")]
    PathEscapes { path: String },
    #[error("tar entry {path:?} has unsupported type {kind:?}")]
    UnsupportedEntry { path: String, kind: char },
    #[error("tar entry {path:?} is a link without a target")]
    MissingLinkName { path: String },
    #[error("tar entry {path:?} is a hard link to {target:?}, which is not in the target directory")]
    MissingLinkTarget { path: String, target: String },
    #[error("cannot unpack {path:?}: a parent path component is not a directory")]
    NotADirectory { path: String },
    #[error("too many symbolic links while resolving {path:?}")]
    SymlinkLoop { path: String },
    #[error("{path} is not a directory")]
    TargetNotADirectory { path: PathBuf },
    #[error(transparent)]
    Compression(#[from] CompressionError),
    #[error("{action} {path}: {source}")]
    Io { action: &'static str, path: PathBuf, source: io::Error },
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> TarfsError {
    let path = path.to_path_buf();
    move |source| TarfsError::Io { action, path, source }
}

/// A read failure of the tar stream itself: truncation or garbage.
pub(crate) fn stream_error(error: io::Error) -> TarfsError {
    let reason = error.to_string();
    if error.kind() == io::ErrorKind::UnexpectedEof || reason.contains("unexpected EOF") || reason.contains("entire block") {
        TarfsError::Truncated { reason }
    } else {
        TarfsError::InvalidTar { reason }
    }
}

/// The components of an archive path, or an error when it would escape.
/// A leading `/` or `./` is dropped (archives often carry them); an empty
/// list is the archive root itself.
pub(crate) fn archive_components(raw: &[u8]) -> Result<Vec<OsString>, TarfsError> {
    let mut components = Vec::new();
    for part in raw.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return Err(TarfsError::PathEscapes { path: String::from_utf8_lossy(raw).into_owned() }),
            part => components.push(OsStr::from_bytes(part).to_os_string()),
        }
    }
    Ok(components)
}

fn display(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw).into_owned()
}

/// Entry types that only carry metadata for other entries (the tar reader
/// consumes GNU long names and local PAX headers itself; global PAX headers
/// reach us and say nothing we use).
fn is_metadata_only(kind: tar::EntryType) -> bool {
    kind.is_pax_global_extensions() || kind.is_pax_local_extensions() || kind.is_gnu_longname() || kind.is_gnu_longlink()
}

fn is_regular_file(kind: tar::EntryType) -> bool {
    kind.is_file() || kind.is_contiguous() || kind.is_gnu_sparse()
}

/// Reads a whole tar stream, checking that it is one and that every entry
/// can be unpacked safely. Returns the number of entries.
pub(crate) fn validate_tar_stream<R: Read>(reader: R) -> Result<u64, TarfsError> {
    let mut archive = tar::Archive::new(reader);
    let mut entry_count = 0;
    for entry in archive.entries().map_err(stream_error)? {
        let mut entry = entry.map_err(stream_error)?;
        let kind = entry.header().entry_type();
        if is_metadata_only(kind) {
            continue;
        }
        let path = entry.path_bytes().into_owned();
        archive_components(&path)?;
        // Unpacking reads these; a layer that would fail there is refused now.
        read_metadata(&mut entry, &path)?;
        if kind.is_hard_link() || kind.is_symlink() {
            let link =
                entry.link_name_bytes().filter(|l| !l.is_empty()).ok_or_else(|| TarfsError::MissingLinkName { path: display(&path) })?;
            if kind.is_hard_link() {
                archive_components(&link)?;
            }
        } else if !(is_regular_file(kind) || kind.is_dir() || kind.is_character_special() || kind.is_block_special() || kind.is_fifo()) {
            return Err(TarfsError::UnsupportedEntry { path: display(&path), kind: kind.as_byte() as char });
        }
        entry_count += 1;
    }
    Ok(entry_count)
}

/// Extracts a tar stream (plain, gzip or xz) into `dir`, for `docker cp` into
/// a container. Whiteout files are ordinary files here.
pub fn untar_into(reader: impl Read, dir: &Path) -> Result<(), TarfsError> {
    let decompressed = compression::decompress(reader)?;
    if decompressed.is_empty {
        return Err(TarfsError::Empty);
    }
    let mut unpacker = Unpacker::new(dir)?;
    unpacker.extract_stream(decompressed.reader, false)?;
    unpacker.finish()
}

/// Applies one uncompressed layer file on top of `root`: OPAQUE_WHITEOUT
/// empties a directory of what lower layers put there, `.wh.<name>` deletes
/// `<name>`, everything else is unpacked.
pub(crate) fn apply_layer(layer_path: &Path, root: &Path) -> Result<(), TarfsError> {
    let mut unpacker = Unpacker::new(root)?;
    // Opaque directories are emptied before this layer's own entries land, so
    // that entries of the same layer inside them (which may come before the
    // marker in the stream) survive.
    let layer = File::open(layer_path).map_err(io_error("opening layer", layer_path))?;
    let mut archive = tar::Archive::new(io::BufReader::new(layer));
    for entry in archive.entries().map_err(stream_error)? {
        let entry = entry.map_err(stream_error)?;
        let path = entry.path_bytes();
        let components = archive_components(&path)?;
        if let Some((name, parents)) = components.split_last() {
            if name.as_bytes() == OPAQUE_WHITEOUT {
                if let Some(dir) = resolve_dir(root, parents, false, &path)? {
                    for child in fs::read_dir(&dir).map_err(io_error("listing", &dir))? {
                        let child = child.map_err(io_error("listing", &dir))?.path();
                        remove_any(&child)?;
                    }
                }
            }
        }
    }
    let layer = File::open(layer_path).map_err(io_error("opening layer", layer_path))?;
    unpacker.extract_stream(io::BufReader::new(layer), true)?;
    unpacker.finish()
}

/// Resolves `components` (all directories) inside `root`, following symbolic
/// links as if `root` were `/`. Missing directories are created (mode 0755)
/// when `create`, otherwise the answer is None.
fn resolve_dir(root: &Path, components: &[OsString], create: bool, entry_path: &[u8]) -> Result<Option<PathBuf>, TarfsError> {
    let mut resolved = root.to_path_buf();
    let mut depth = 0usize;
    let mut pending: VecDeque<OsString> = components.iter().cloned().collect();
    let mut symlinks_followed = 0;
    while let Some(component) = pending.pop_front() {
        if component.is_empty() || component == "." {
            continue;
        }
        if component == ".." {
            // Clamped at the root, like `/..` is `/`.
            if depth > 0 {
                resolved.pop();
                depth -= 1;
            }
            continue;
        }
        let candidate = resolved.join(&component);
        match fs::symlink_metadata(&candidate) {
            Ok(meta) if meta.file_type().is_symlink() => {
                symlinks_followed += 1;
                if symlinks_followed > MAX_SYMLINKS_FOLLOWED {
                    return Err(TarfsError::SymlinkLoop { path: display(entry_path) });
                }
                let target = fs::read_link(&candidate).map_err(io_error("reading link", &candidate))?;
                if target.is_absolute() {
                    resolved = root.to_path_buf();
                    depth = 0;
                }
                for part in target.components().rev() {
                    match part {
                        Component::Normal(name) => pending.push_front(name.to_os_string()),
                        Component::ParentDir => pending.push_front(OsString::from("..")),
                        Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
                    }
                }
            }
            Ok(meta) if meta.is_dir() => {
                resolved = candidate;
                depth += 1;
            }
            Ok(_) => return Err(TarfsError::NotADirectory { path: display(entry_path) }),
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                if !create {
                    return Ok(None);
                }
                fs::DirBuilder::new().mode(0o755).create(&candidate).map_err(io_error("creating directory", &candidate))?;
                resolved = candidate;
                depth += 1;
            }
            Err(error) => return Err(TarfsError::Io { action: "inspecting", path: candidate, source: error }),
        }
    }
    Ok(Some(resolved))
}

/// Removes a file, link or whole directory tree; never follows a link.
fn remove_any(path: &Path) -> Result<(), TarfsError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(TarfsError::Io { action: "inspecting", path: path.to_path_buf(), source: error }),
    };
    if meta.is_dir() { fs::remove_dir_all(path) } else { fs::remove_file(path) }.map_err(io_error("removing", path))
}

fn c_path(path: &Path) -> Result<CString, TarfsError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| TarfsError::InvalidTar { reason: format!("path {path:?} contains a NUL byte") })
}

fn last_os_error(action: &'static str, path: &Path) -> TarfsError {
    TarfsError::Io { action, path: path.to_path_buf(), source: io::Error::last_os_error() }
}

/// A numeric header field; one left blank (all NULs or spaces, as some
/// writers leave uid, gid or mtime) reads as 0, like Go's and GNU's readers.
fn numeric_field(parsed: io::Result<u64>, raw: &[u8]) -> io::Result<u64> {
    if raw.iter().all(|&b| b == 0 || b == b' ') {
        Ok(0)
    } else {
        parsed
    }
}

/// The metadata of one entry, with PAX overrides applied.
struct EntryMetadata {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime_s: i64,
    mtime_ns: i64,
    xattrs: Vec<(CString, Vec<u8>)>,
}

fn read_metadata<R: Read>(entry: &mut tar::Entry<'_, R>, path: &[u8]) -> Result<EntryMetadata, TarfsError> {
    let bad = |field: &str| TarfsError::InvalidTar { reason: format!("entry {:?} has an unreadable {field}", display(path)) };
    let header = entry.header();
    let old = header.as_old();
    let mode = numeric_field(header.mode().map(u64::from), &old.mode).map_err(|_| bad("mode"))? as u32 & 0o7777;
    let mut uid = numeric_field(header.uid(), &old.uid).map_err(|_| bad("uid"))?;
    let mut gid = numeric_field(header.gid(), &old.gid).map_err(|_| bad("gid"))?;
    let mtime = numeric_field(header.mtime(), &old.mtime).map_err(|_| bad("mtime"))?;
    let mut mtime_s = i64::try_from(mtime).map_err(|_| bad("mtime"))?;
    let mut mtime_ns = 0;
    let mut xattrs = Vec::new();
    if let Some(extensions) = entry.pax_extensions().map_err(stream_error)? {
        for extension in extensions {
            let extension = extension.map_err(stream_error)?;
            let value = extension.value_bytes();
            let text = std::str::from_utf8(value).unwrap_or("");
            match extension.key_bytes() {
                b"uid" => uid = text.parse().map_err(|_| bad("PAX uid"))?,
                b"gid" => gid = text.parse().map_err(|_| bad("PAX gid"))?,
                b"mtime" => {
                    let (seconds, fraction) = text.split_once('.').unwrap_or((text, ""));
                    mtime_s = seconds.parse().map_err(|_| bad("PAX mtime"))?;
                    let digits: String = fraction.chars().take(9).collect();
                    mtime_ns = if digits.is_empty() { 0 } else { format!("{digits:0<9}").parse().map_err(|_| bad("PAX mtime"))? };
                }
                key => {
                    if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                        let name = CString::new(name).map_err(|_| bad("xattr name"))?;
                        xattrs.push((name, value.to_vec()));
                    }
                }
            }
        }
    }
    let uid = u32::try_from(uid).map_err(|_| bad("uid"))?;
    let gid = u32::try_from(gid).map_err(|_| bad("gid"))?;
    Ok(EntryMetadata { mode, uid, gid, mtime_s, mtime_ns, xattrs })
}

/// Unpacks entries under one root, remembering directories whose mode and
/// time are set last (adding entries would change their mtime, and a
/// read-only mode would stop an unprivileged unpack from filling them).
struct Unpacker {
    root: PathBuf,
    preserve_ownership: bool,
    directories: Vec<(PathBuf, EntryMetadata)>,
}

impl Unpacker {
    fn new(root: &Path) -> Result<Unpacker, TarfsError> {
        let meta = fs::metadata(root).map_err(io_error("opening", root))?;
        if !meta.is_dir() {
            return Err(TarfsError::TargetNotADirectory { path: root.to_path_buf() });
        }
        // Only root may give files away; anyone else keeps them.
        // SAFETY: geteuid has no preconditions and cannot fail.
        let preserve_ownership = unsafe { libc::geteuid() } == 0;
        Ok(Unpacker { root: root.to_path_buf(), preserve_ownership, directories: Vec::new() })
    }

    fn extract_stream(&mut self, reader: impl Read, whiteouts: bool) -> Result<(), TarfsError> {
        let mut archive = tar::Archive::new(reader);
        for entry in archive.entries().map_err(stream_error)? {
            let mut entry = entry.map_err(stream_error)?;
            self.extract_entry(&mut entry, whiteouts)?;
        }
        Ok(())
    }

    fn extract_entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>, whiteouts: bool) -> Result<(), TarfsError> {
        let kind = entry.header().entry_type();
        if is_metadata_only(kind) {
            return Ok(());
        }
        let raw_path = entry.path_bytes().into_owned();
        let components = archive_components(&raw_path)?;
        // Old tars mark directories only by a trailing slash.
        let is_dir = kind.is_dir() || (kind.is_file() && raw_path.ends_with(b"/"));
        let metadata = read_metadata(entry, &raw_path)?;
        let Some((name, parents)) = components.split_last() else {
            // The archive's root (`./`): its metadata describes the target itself.
            if is_dir {
                self.set_ownership_and_xattrs(&self.root.clone(), &metadata)?;
                self.directories.push((self.root.clone(), metadata));
            }
            return Ok(());
        };
        if whiteouts {
            if let Some(hidden) = name.as_bytes().strip_prefix(WHITEOUT_PREFIX) {
                // `.wh..wh.*` are markers (the opaque one was handled before this pass).
                if !hidden.starts_with(WHITEOUT_PREFIX) {
                    if let Some(parent) = resolve_dir(&self.root, parents, false, &raw_path)? {
                        remove_any(&parent.join(OsStr::from_bytes(hidden)))?;
                    }
                }
                return Ok(());
            }
        }
        let parent =
            resolve_dir(&self.root, parents, true, &raw_path)?.ok_or_else(|| TarfsError::NotADirectory { path: display(&raw_path) })?;
        let dest = parent.join(name);
        match fs::symlink_metadata(&dest) {
            // Docker's rule: an existing directory survives only a directory entry.
            Ok(existing) if existing.is_dir() && is_dir => {}
            Ok(_) => remove_any(&dest)?,
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(TarfsError::Io { action: "inspecting", path: dest, source: error }),
        }

        if is_dir {
            if !dest.is_dir() {
                fs::DirBuilder::new().mode(0o700).create(&dest).map_err(io_error("creating directory", &dest))?;
            }
            self.set_ownership_and_xattrs(&dest, &metadata)?;
            self.directories.push((dest, metadata));
        } else if is_regular_file(kind) {
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&dest)
                .map_err(io_error("creating", &dest))?;
            copy_entry_data(entry, &mut file, &dest)?;
            drop(file);
            self.set_ownership_and_xattrs(&dest, &metadata)?;
            fs::set_permissions(&dest, fs::Permissions::from_mode(metadata.mode)).map_err(io_error("setting mode of", &dest))?;
            set_mtime(&dest, &metadata)?;
        } else if kind.is_symlink() {
            let target = entry
                .link_name_bytes()
                .filter(|l| !l.is_empty())
                .ok_or_else(|| TarfsError::MissingLinkName { path: display(&raw_path) })?;
            std::os::unix::fs::symlink(OsStr::from_bytes(&target), &dest).map_err(io_error("creating symlink", &dest))?;
            self.set_ownership_and_xattrs(&dest, &metadata)?;
            set_mtime(&dest, &metadata)?;
        } else if kind.is_hard_link() {
            let target = entry
                .link_name_bytes()
                .filter(|l| !l.is_empty())
                .ok_or_else(|| TarfsError::MissingLinkName { path: display(&raw_path) })?;
            let missing = || TarfsError::MissingLinkTarget { path: display(&raw_path), target: display(&target) };
            let target_components = archive_components(&target)?;
            let (target_name, target_parents) = target_components.split_last().ok_or_else(missing)?;
            let source = resolve_dir(&self.root, target_parents, false, &target)?.ok_or_else(missing)?.join(target_name);
            match fs::symlink_metadata(&source) {
                Ok(meta) if !meta.is_dir() => {}
                _ => return Err(missing()),
            }
            // Linking (not copying) keeps the files one inode, as in the image.
            fs::hard_link(&source, &dest).map_err(io_error("creating hard link", &dest))?;
        } else if kind.is_character_special() || kind.is_block_special() || kind.is_fifo() {
            self.make_node(entry, kind, &dest, &metadata, &raw_path)?;
        } else {
            return Err(TarfsError::UnsupportedEntry { path: display(&raw_path), kind: kind.as_byte() as char });
        }
        Ok(())
    }

    fn make_node<R: Read>(
        &self,
        entry: &tar::Entry<'_, R>,
        kind: tar::EntryType,
        dest: &Path,
        metadata: &EntryMetadata,
        raw_path: &[u8],
    ) -> Result<(), TarfsError> {
        let bad = || TarfsError::InvalidTar { reason: format!("entry {:?} has unreadable device numbers", display(raw_path)) };
        let major = entry.header().device_major().map_err(|_| bad())?.unwrap_or(0);
        let minor = entry.header().device_minor().map_err(|_| bad())?.unwrap_or(0);
        let file_type = if kind.is_character_special() {
            libc::S_IFCHR
        } else if kind.is_block_special() {
            libc::S_IFBLK
        } else {
            libc::S_IFIFO
        };
        let path = c_path(dest)?;
        // SAFETY: `path` is a valid NUL-terminated string that outlives the call.
        let result = unsafe { libc::mknod(path.as_ptr(), file_type | metadata.mode, libc::makedev(major, minor)) };
        if result != 0 {
            let error = io::Error::last_os_error();
            // Without CAP_MKNOD (unprivileged, or a user namespace) device nodes
            // cannot exist; containers get their /dev from the runtime, so the
            // image's device entries are skipped, as Docker does in that case.
            if error.raw_os_error() == Some(libc::EPERM) && file_type != libc::S_IFIFO {
                return Ok(());
            }
            return Err(TarfsError::Io { action: "creating device node", path: dest.to_path_buf(), source: error });
        }
        self.set_ownership_and_xattrs(dest, metadata)?;
        fs::set_permissions(dest, fs::Permissions::from_mode(metadata.mode)).map_err(io_error("setting mode of", dest))?;
        set_mtime(dest, metadata)
    }

    /// Ownership first (chown clears setuid bits and file capabilities, which
    /// the mode and xattrs then restore).
    fn set_ownership_and_xattrs(&self, path: &Path, metadata: &EntryMetadata) -> Result<(), TarfsError> {
        let c = c_path(path)?;
        if self.preserve_ownership {
            // SAFETY: `c` is a valid NUL-terminated string that outlives the call.
            if unsafe { libc::lchown(c.as_ptr(), metadata.uid, metadata.gid) } != 0 {
                return Err(last_os_error("changing owner of", path));
            }
        }
        for (name, value) in &metadata.xattrs {
            // SAFETY: all pointers are valid for the given lengths during the call.
            let result = unsafe { libc::lsetxattr(c.as_ptr(), name.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
            if result != 0 {
                let error = io::Error::last_os_error();
                // Filesystems without xattrs, and namespaces (trusted.*) an
                // unprivileged unpack may not write, lose the attribute, as with
                // Docker; anything else is a real failure.
                if !matches!(error.raw_os_error(), Some(libc::ENOTSUP) | Some(libc::EPERM)) {
                    return Err(TarfsError::Io { action: "setting extended attribute on", path: path.to_path_buf(), source: error });
                }
            }
        }
        Ok(())
    }

    /// Sets directory modes and times, deepest first.
    fn finish(mut self) -> Result<(), TarfsError> {
        self.directories.sort_by_key(|(path, _)| std::cmp::Reverse(path.components().count()));
        for (path, metadata) in &self.directories {
            fs::set_permissions(path, fs::Permissions::from_mode(metadata.mode)).map_err(io_error("setting mode of", path))?;
            set_mtime(path, metadata)?;
        }
        Ok(())
    }
}

/// Copies an entry's data, telling a bad stream from a failing disk.
fn copy_entry_data(entry: &mut impl Read, file: &mut File, dest: &Path) -> Result<(), TarfsError> {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let count = match entry.read(&mut buffer) {
            Ok(0) => return Ok(()),
            Ok(count) => count,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(stream_error(error)),
        };
        file.write_all(&buffer[..count]).map_err(io_error("writing", dest))?;
    }
}

fn set_mtime(path: &Path, metadata: &EntryMetadata) -> Result<(), TarfsError> {
    let c = c_path(path)?;
    let time = libc::timespec { tv_sec: metadata.mtime_s as libc::time_t, tv_nsec: metadata.mtime_ns as libc::c_long };
    let times = [time, time];
    // SAFETY: `c` and `times` are valid for the duration of the call.
    if unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) } != 0 {
        return Err(last_os_error("setting time of", path));
    }
    Ok(())
}

/// Archives the contents of `dir` (not `dir` itself: entries are `bin`,
/// `bin/sh`, ...), for `docker export`. Links are stored as links, files
/// sharing an inode as hard links, device nodes as device entries; sockets
/// cannot be archived and are left out.
pub fn tar_directory(dir: &Path, out: impl Write) -> Result<(), TarfsError> {
    let meta = fs::symlink_metadata(dir).map_err(io_error("opening", dir))?;
    if !meta.is_dir() {
        return Err(TarfsError::TargetNotADirectory { path: dir.to_path_buf() });
    }
    let mut archiver = Archiver { builder: tar::Builder::new(out), hard_links: HashMap::new() };
    for child in sorted_children(dir)? {
        archiver.append_tree(&dir.join(&child), &PathBuf::from(&child))?;
    }
    archiver.finish(dir)
}

/// Archives one path (a file, link or whole directory) under the name
/// `name_in_archive`, for `docker cp` out of a container.
pub fn tar_path(path: &Path, name_in_archive: &str, out: impl Write) -> Result<(), TarfsError> {
    let components = archive_components(name_in_archive.as_bytes())?;
    if components.is_empty() {
        return Err(TarfsError::PathEscapes { path: name_in_archive.to_string() });
    }
    let archive_path: PathBuf = components.iter().collect();
    let mut archiver = Archiver { builder: tar::Builder::new(out), hard_links: HashMap::new() };
    archiver.append_tree(path, &archive_path)?;
    archiver.finish(path)
}

fn sorted_children(dir: &Path) -> Result<Vec<OsString>, TarfsError> {
    let mut children = Vec::new();
    for child in fs::read_dir(dir).map_err(io_error("listing", dir))? {
        children.push(child.map_err(io_error("listing", dir))?.file_name());
    }
    // Sorted, so the same tree always gives the same archive.
    children.sort();
    Ok(children)
}

struct Archiver<W: Write> {
    builder: tar::Builder<W>,
    /// (device, inode) of multiply-linked files already archived, and their names.
    hard_links: HashMap<(u64, u64), PathBuf>,
}

impl<W: Write> Archiver<W> {
    fn append_tree(&mut self, fs_path: &Path, archive_path: &Path) -> Result<(), TarfsError> {
        let meta = fs::symlink_metadata(fs_path).map_err(io_error("inspecting", fs_path))?;
        let file_type = meta.file_type();
        let mut header = tar::Header::new_gnu();
        header.set_mode(meta.mode() & 0o7777);
        header.set_uid(u64::from(meta.uid()));
        header.set_gid(u64::from(meta.gid()));
        header.set_mtime(u64::try_from(meta.mtime()).unwrap_or(0));
        header.set_size(0);
        let write_error = io_error("archiving", fs_path);
        use std::os::unix::fs::FileTypeExt;
        if file_type.is_dir() {
            header.set_entry_type(tar::EntryType::Directory);
            self.builder.append_data(&mut header, archive_path, io::empty()).map_err(write_error)?;
            for child in sorted_children(fs_path)? {
                self.append_tree(&fs_path.join(&child), &archive_path.join(&child))?;
            }
        } else if file_type.is_file() {
            if meta.nlink() > 1 {
                let key = (meta.dev(), meta.ino());
                if let Some(first) = self.hard_links.get(&key) {
                    header.set_entry_type(tar::EntryType::Link);
                    let first = first.clone();
                    return self.builder.append_link(&mut header, archive_path, first).map_err(write_error);
                }
                self.hard_links.insert(key, archive_path.to_path_buf());
            }
            let file = File::open(fs_path).map_err(io_error("opening", fs_path))?;
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(meta.len());
            let data = ExactSize { inner: file, remaining_bytes: meta.len() };
            self.builder.append_data(&mut header, archive_path, data).map_err(write_error)?;
        } else if file_type.is_symlink() {
            let target = fs::read_link(fs_path).map_err(io_error("reading link", fs_path))?;
            header.set_entry_type(tar::EntryType::Symlink);
            self.builder.append_link(&mut header, archive_path, target).map_err(write_error)?;
        } else if file_type.is_char_device() || file_type.is_block_device() || file_type.is_fifo() {
            let kind = if file_type.is_char_device() {
                tar::EntryType::Char
            } else if file_type.is_block_device() {
                tar::EntryType::Block
            } else {
                tar::EntryType::Fifo
            };
            header.set_entry_type(kind);
            let device = meta.rdev();
            header.set_device_major(libc::major(device)).map_err(io_error("archiving", fs_path))?;
            header.set_device_minor(libc::minor(device)).map_err(io_error("archiving", fs_path))?;
            self.builder.append_data(&mut header, archive_path, io::empty()).map_err(write_error)?;
        }
        // Sockets (and anything else) have no tar representation: left out.
        Ok(())
    }

    fn finish(self, source: &Path) -> Result<(), TarfsError> {
        let mut out = self.builder.into_inner().map_err(io_error("archiving", source))?;
        out.flush().map_err(io_error("archiving", source))
    }
}

/// Yields exactly `remaining_bytes`: a file that grows while it is archived
/// is cut, one that shrinks is padded with zeros, so the entry always matches
/// the size already written in its header.
struct ExactSize<R> {
    inner: R,
    remaining_bytes: u64,
}

impl<R: Read> Read for ExactSize<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining_bytes == 0 {
            return Ok(0);
        }
        let wanted = buf.len().min(usize::try_from(self.remaining_bytes).unwrap_or(usize::MAX));
        let mut count = self.inner.read(&mut buf[..wanted])?;
        if count == 0 {
            buf[..wanted].fill(0);
            count = wanted;
        }
        self.remaining_bytes -= count as u64;
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_paths_are_normalized_and_dotdot_refused() {
        assert_eq!(archive_components(b"./a//b/").expect("fine"), vec![OsString::from("a"), OsString::from("b")]);
        assert_eq!(archive_components(b"/etc/passwd").expect("fine").len(), 2);
        assert!(archive_components(b"./").expect("fine").is_empty());
        assert!(matches!(archive_components(b"a/../../evil"), Err(TarfsError::PathEscapes { .. })));
    }

    #[test]
    fn resolution_follows_links_but_stays_inside_the_root() {
        let root = tempfile::tempdir().expect("tempdir");
        fs::create_dir_all(root.path().join("usr/lib")).expect("mkdir");
        std::os::unix::fs::symlink("usr/lib", root.path().join("lib")).expect("symlink");
        std::os::unix::fs::symlink("/", root.path().join("up")).expect("symlink");
        std::os::unix::fs::symlink("../../../../tmp", root.path().join("dotdot")).expect("symlink");
        let resolve = |path: &str| {
            let components = archive_components(path.as_bytes()).expect("valid");
            resolve_dir(root.path(), &components, false, path.as_bytes()).expect("resolves")
        };
        assert_eq!(resolve("lib"), Some(root.path().join("usr/lib")));
        assert_eq!(resolve("up/usr"), Some(root.path().join("usr")));
        assert_eq!(resolve("dotdot"), None, "../../tmp from the root is <root>/tmp, which does not exist");
    }

    #[test]
    fn exact_size_pads_and_cuts() {
        let mut padded = Vec::new();
        ExactSize { inner: &b"ab"[..], remaining_bytes: 4 }.read_to_end(&mut padded).expect("reads");
        assert_eq!(padded, b"ab\0\0");
        let mut cut = Vec::new();
        ExactSize { inner: &b"abcdef"[..], remaining_bytes: 3 }.read_to_end(&mut cut).expect("reads");
        assert_eq!(cut, b"abc");
    }
}
