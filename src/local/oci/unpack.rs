//! Unpacking one layer tarball into a directory, safely: every entry lands inside the
//! directory (no `..`, absolute paths are taken relative to it, no entry is written through a
//! symlink, hard links only to entries inside), device nodes are not created, owners, modes,
//! times and extended attributes are kept as the layer says, and OCI whiteouts become overlayfs
//! whiteouts (`.wh.name` → a 0/0 character device `name`; `.wh..wh..opq` → the directory gets
//! `trusted.overlay.opaque=y`).

use std::fs;
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use super::{sys, OciError};

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";
const OVERLAY_OPAQUE: &[u8] = b"trusted.overlay.opaque";

/// What an unpack did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct UnpackStats {
    /// Entries written (files, directories, links, whiteouts).
    pub entries: u64,
    /// Bytes of file content written.
    pub bytes: u64,
    /// Device nodes in the layer that were not created.
    pub skipped_devices: u64,
}

/// Unpacks the layer blob `blob` (gzip, or uncompressed tar) into `dest`, which must exist
/// and be empty. `digest` names the layer in errors.
pub(crate) fn unpack_layer(
    blob: &Path,
    dest: &Path,
    digest: &str,
    log: &(dyn Fn(&str) + Send + Sync),
) -> Result<UnpackStats, OciError> {
    let file = fs::File::open(blob).map_err(|e| io_err(blob, e))?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let magic = reader.fill_buf().map_err(|e| io_err(blob, e))?;
    let input: Box<dyn Read> = if magic.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::bufread::MultiGzDecoder::new(reader))
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        return Err(OciError::Unsupported(format!(
            "layer {digest} is zstd-compressed; only gzip and uncompressed layers are supported"
        )));
    } else {
        Box::new(reader)
    };
    unpack_tar(input, dest, digest, log)
}

/// Unpacks an uncompressed tar stream into `dest` (see the module documentation).
pub(crate) fn unpack_tar(
    input: impl Read,
    dest: &Path,
    digest: &str,
    log: &(dyn Fn(&str) + Send + Sync),
) -> Result<UnpackStats, OciError> {
    let mut u = Unpacker {
        root: dest,
        digest,
        stats: UnpackStats::default(),
        dirs: Vec::new(),
    };
    let mut archive = tar::Archive::new(input);
    let entries = archive.entries().map_err(|e| u.bad("", e))?;
    for entry in entries {
        let entry = entry.map_err(|e| u.bad("", e))?;
        u.entry(entry, log)?;
    }
    // directory times last: writing into a directory changes its mtime
    for (path, mtime) in u.dirs.iter().rev() {
        sys::set_times_nofollow(path, *mtime).map_err(|e| io_err(path, e))?;
    }
    Ok(u.stats)
}

fn io_err(path: &Path, source: io::Error) -> OciError {
    OciError::Io {
        path: path.to_owned(),
        source,
    }
}

struct Unpacker<'a> {
    root: &'a Path,
    digest: &'a str,
    stats: UnpackStats,
    /// Directories and their mtimes, set after every entry is written.
    dirs: Vec<(PathBuf, i64)>,
}

/// The metadata of one entry, PAX records applied.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Unpacker<'_> {
    fn unsafe_entry(&self, path: &str, reason: &str) -> OciError {
        OciError::UnsafeLayer {
            digest: self.digest.to_owned(),
            path: path.chars().take(300).collect(),
            reason: reason.to_owned(),
        }
    }

    fn bad(&self, path: &str, e: io::Error) -> OciError {
        OciError::BadLayer {
            digest: self.digest.to_owned(),
            detail: if path.is_empty() {
                format!("not a readable tar stream: {e}")
            } else {
                format!(
                    "entry {:?}: {e}",
                    path.chars().take(300).collect::<String>()
                )
            },
        }
    }

    fn entry<R: Read>(
        &mut self,
        mut entry: tar::Entry<'_, R>,
        log: &(dyn Fn(&str) + Send + Sync),
    ) -> Result<(), OciError> {
        let raw_path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader | tar::EntryType::GNULongName
        ) {
            return Ok(());
        }
        let meta = self.meta(&mut entry, &raw_path)?;
        let rel = self.normalise(
            &entry.path().map_err(|e| self.bad(&raw_path, e))?,
            &raw_path,
        )?;
        let name = rel
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();

        // whiteouts
        if name == OPAQUE {
            let dir = self.prepare_parents(&rel, &raw_path)?;
            self.ensure_dir(&dir, &raw_path)?;
            sys::lsetxattr(&dir, OVERLAY_OPAQUE, b"y").map_err(|e| io_err(&dir, e))?;
            self.stats.entries += 1;
            return Ok(());
        }
        if let Some(target) = name.strip_prefix(WHITEOUT_PREFIX) {
            if target.starts_with(WHITEOUT_PREFIX) {
                // other `.wh..wh.*` entries are aufs bookkeeping, meaningless here
                return Ok(());
            }
            if target.is_empty() || target == "." || target == ".." {
                return Err(self.unsafe_entry(&raw_path, "malformed whiteout"));
            }
            let path = self.prepare_parents(&rel, &raw_path)?.join(target);
            self.clear(&path, false)?;
            sys::mknod_whiteout(&path).map_err(|e| io_err(&path, e))?;
            self.stats.entries += 1;
            return Ok(());
        }

        if rel.as_os_str().is_empty() {
            // the layer's root itself ("./"): only a directory makes sense
            if kind.is_dir() {
                self.apply(self.root, &meta, true)?;
                self.dirs.push((self.root.to_owned(), meta.mtime));
            }
            return Ok(());
        }
        let parent = self.prepare_parents(&rel, &raw_path)?;
        let path = parent.join(rel.file_name().unwrap_or_default());
        match kind {
            tar::EntryType::Directory => {
                self.clear(&path, true)?;
                if !path.is_dir() {
                    fs::DirBuilder::new()
                        .create(&path)
                        .map_err(|e| io_err(&path, e))?;
                }
                self.apply(&path, &meta, true)?;
                self.dirs.push((path, meta.mtime));
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                self.clear(&path, false)?;
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&path)
                    .map_err(|e| io_err(&path, e))?;
                let n = io::copy(&mut entry, &mut f).map_err(|e| self.bad(&raw_path, e))?;
                self.stats.bytes += n;
                drop(f);
                self.apply(&path, &meta, false)?;
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(|e| self.bad(&raw_path, e))?
                    .ok_or_else(|| self.unsafe_entry(&raw_path, "symlink without a target"))?
                    .into_owned();
                self.clear(&path, false)?;
                std::os::unix::fs::symlink(&target, &path).map_err(|e| io_err(&path, e))?;
                self.apply(&path, &meta, false)?;
            }
            tar::EntryType::Link => {
                let raw_target = entry
                    .link_name()
                    .map_err(|e| self.bad(&raw_path, e))?
                    .ok_or_else(|| self.unsafe_entry(&raw_path, "hard link without a target"))?
                    .into_owned();
                let target_rel = self.normalise(&raw_target, &raw_path)?;
                if target_rel.as_os_str().is_empty() {
                    return Err(self.unsafe_entry(&raw_path, "hard link to the layer root"));
                }
                let target = self.prepare_parents_existing(&target_rel, &raw_path)?;
                match fs::symlink_metadata(&target) {
                    Ok(m) if !m.is_dir() => {}
                    _ => {
                        return Err(self.unsafe_entry(
                            &raw_path,
                            "hard link to something that is not an earlier entry of the layer",
                        ))
                    }
                }
                if target == path {
                    return Ok(());
                }
                self.clear(&path, false)?;
                // link(2) does not follow a symlink target: a link to a symlink links the
                // symlink itself
                fs::hard_link(&target, &path).map_err(|e| io_err(&path, e))?;
            }
            tar::EntryType::Fifo => {
                self.clear(&path, false)?;
                sys::mkfifo(&path, 0o600).map_err(|e| io_err(&path, e))?;
                self.apply(&path, &meta, false)?;
            }
            tar::EntryType::Char | tar::EntryType::Block => {
                self.stats.skipped_devices += 1;
                log(&format!(
                    "layer {}: device node {raw_path:?} not created",
                    short(self.digest)
                ));
                return Ok(());
            }
            other => {
                log(&format!(
                    "layer {}: entry {raw_path:?} of type {other:?} skipped",
                    short(self.digest)
                ));
                return Ok(());
            }
        }
        self.stats.entries += 1;
        Ok(())
    }

    fn meta<R: Read>(
        &self,
        entry: &mut tar::Entry<'_, R>,
        raw_path: &str,
    ) -> Result<Meta, OciError> {
        let h = entry.header();
        let mode = h.mode().map_err(|e| self.bad(raw_path, e))? & 0o7777;
        let mut uid = h.uid().map_err(|e| self.bad(raw_path, e))?;
        let mut gid = h.gid().map_err(|e| self.bad(raw_path, e))?;
        let mut mtime = h.mtime().map_err(|e| self.bad(raw_path, e))? as i64;
        let mut xattrs = Vec::new();
        if let Some(pax) = entry.pax_extensions().map_err(|e| self.bad(raw_path, e))? {
            for ext in pax {
                let ext = ext.map_err(|e| self.bad(raw_path, e))?;
                let key = ext.key_bytes();
                let value = ext.value_bytes();
                let num = || {
                    std::str::from_utf8(value)
                        .ok()
                        .and_then(|v| v.split('.').next())
                        .and_then(|v| v.parse::<i64>().ok())
                };
                match key {
                    b"uid" => uid = num().and_then(|v| u64::try_from(v).ok()).unwrap_or(uid),
                    b"gid" => gid = num().and_then(|v| u64::try_from(v).ok()).unwrap_or(gid),
                    b"mtime" => mtime = num().unwrap_or(mtime),
                    k => {
                        if let Some(name) = k.strip_prefix(b"SCHILY.xattr.") {
                            xattrs.push((name.to_vec(), value.to_vec()));
                        }
                    }
                }
            }
        }
        let id = |v: u64| {
            u32::try_from(v)
                .ok()
                .filter(|v| *v != u32::MAX)
                .ok_or_else(|| self.unsafe_entry(raw_path, "owner id out of range"))
        };
        Ok(Meta {
            mode,
            uid: id(uid)?,
            gid: id(gid)?,
            mtime,
            xattrs,
        })
    }

    /// The entry's path relative to the layer root: leading `/` and `.` dropped, `..` refused.
    fn normalise(&self, p: &Path, raw_path: &str) -> Result<PathBuf, OciError> {
        let mut out = PathBuf::new();
        for c in p.components() {
            match c {
                Component::RootDir | Component::CurDir => {}
                Component::Normal(n) => out.push(n),
                Component::ParentDir => {
                    return Err(self.unsafe_entry(raw_path, "path contains '..'"))
                }
                Component::Prefix(_) => return Err(self.unsafe_entry(raw_path, "path prefix")),
            }
        }
        Ok(out)
    }

    /// Creates the missing parent directories of `rel` (0755, root-owned, as Docker does) and
    /// returns the parent's full path. A parent that is a symlink or not a directory refuses
    /// the entry: nothing is ever written through a symlink.
    fn prepare_parents(&self, rel: &Path, raw_path: &str) -> Result<PathBuf, OciError> {
        let mut cur = self.root.to_owned();
        let parent = rel.parent().unwrap_or(Path::new(""));
        for c in parent.components() {
            cur.push(c);
            match fs::symlink_metadata(&cur) {
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(self.unsafe_entry(raw_path, "a parent directory is a symlink"))
                }
                Ok(m) if m.is_dir() => {}
                Ok(_) => return Err(self.unsafe_entry(raw_path, "a parent is not a directory")),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::DirBuilder::new()
                        .create(&cur)
                        .map_err(|e| io_err(&cur, e))?;
                    fs::set_permissions(&cur, fs::Permissions::from_mode(0o755))
                        .map_err(|e| io_err(&cur, e))?;
                }
                Err(e) => return Err(io_err(&cur, e)),
            }
        }
        Ok(cur)
    }

    /// The full path of an existing entry `rel`, its parents checked as above (none created).
    fn prepare_parents_existing(&self, rel: &Path, raw_path: &str) -> Result<PathBuf, OciError> {
        let mut cur = self.root.to_owned();
        let parent = rel.parent().unwrap_or(Path::new(""));
        for c in parent.components() {
            cur.push(c);
            match fs::symlink_metadata(&cur) {
                Ok(m) if m.is_dir() => {}
                _ => {
                    return Err(self.unsafe_entry(
                        raw_path,
                        "hard link target's parent is not a directory of the layer",
                    ))
                }
            }
        }
        Ok(cur.join(rel.file_name().unwrap_or_default()))
    }

    fn ensure_dir(&self, dir: &Path, raw_path: &str) -> Result<(), OciError> {
        match fs::symlink_metadata(dir) {
            Ok(m) if m.is_dir() => Ok(()),
            Ok(_) => Err(self.unsafe_entry(raw_path, "opaque marker in something not a directory")),
            Err(e) => Err(io_err(dir, e)),
        }
    }

    /// Makes room for a new entry at `path`: an existing directory stays when the new entry is
    /// a directory too (later metadata wins), anything else already there is removed (a later
    /// entry of a layer replaces an earlier one).
    fn clear(&self, path: &Path, new_is_dir: bool) -> Result<(), OciError> {
        match fs::symlink_metadata(path) {
            Ok(m) if m.is_dir() && new_is_dir => Ok(()),
            Ok(m) if m.is_dir() => fs::remove_dir_all(path).map_err(|e| io_err(path, e)),
            Ok(_) => fs::remove_file(path).map_err(|e| io_err(path, e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(path, e)),
        }
    }

    /// Owner, then mode (a chown clears set-id bits), xattrs and mtime (directories' later).
    fn apply(&self, path: &Path, meta: &Meta, is_dir: bool) -> Result<(), OciError> {
        std::os::unix::fs::lchown(path, Some(meta.uid), Some(meta.gid))
            .map_err(|e| io_err(path, e))?;
        let is_symlink = fs::symlink_metadata(path)
            .map_err(|e| io_err(path, e))?
            .file_type()
            .is_symlink();
        if !is_symlink {
            fs::set_permissions(path, fs::Permissions::from_mode(meta.mode))
                .map_err(|e| io_err(path, e))?;
        }
        for (name, value) in &meta.xattrs {
            // overlayfs' own attributes (redirects, metacopy, opaque) come only from the
            // whiteout conversion, never from the image
            if name.starts_with(b"trusted.overlay.") {
                continue;
            }
            sys::lsetxattr(path, name, value).map_err(|e| io_err(path, e))?;
        }
        if !is_dir {
            sys::set_times_nofollow(path, meta.mtime).map_err(|e| io_err(path, e))?;
        }
        Ok(())
    }
}

/// `sha256:0123456789ab` for log lines.
pub(crate) fn short(digest: &str) -> &str {
    &digest[..digest.len().min(19)]
}
