//! Directory downloads (`GET /files?format=zip`): a ZIP archive streamed as the directory is
//! read, written by the `zip` crate (stored entries, data descriptors, ZIP64 where sizes or
//! offsets need it).
//!
//! Two passes, both iterative (a directory tree made by a sandbox can be as deep as its file
//! system allows; nothing here recurses):
//! 1. [`scan`] lists the tree (names, kinds, modes, times; no file contents) and refuses it
//!    before a byte is sent if it is nested deeper than [`MAX_DEPTH`], holds more than
//!    [`MAX_ENTRIES`] entries, or has an entry name longer than the format holds
//!    ([`MAX_NAME`]), so the client gets a clear `400`;
//! 2. [`write`] streams the entries, opening each directory again from the downloaded one,
//!    one path component at a time, never through a symlink; what vanished or changed kind
//!    in between is left out, what grew is cut at its size when it was opened.
//!
//! Symlinks, special files and virtual file systems are left out. A name that is not UTF-8
//! is stored with its invalid bytes replaced (`U+FFFD`); two names that become the same that
//! way are refused in the scan. Memory grows with the number of entries (the central
//! directory), never with their size. At most two descriptors are open at any time.

use std::collections::HashSet;
use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, DateTime};

use super::files::{is_virtual, FileError};
use super::fs_sys::{fstat, open_child, set_blocking};
use super::time::utc_parts;

/// Deepest nesting of directories below the downloaded one.
pub(crate) const MAX_DEPTH: usize = 256;
/// Most entries (files and directories) in one archive.
pub(crate) const MAX_ENTRIES: usize = 250_000;
/// Longest entry name a ZIP archive holds (a 16-bit length).
pub(crate) const MAX_NAME: usize = u16::MAX as usize;
/// Most bytes of entry names in one archive (its central directory holds them all).
pub(crate) const MAX_NAMES_TOTAL: usize = 32 << 20;
/// Entries of at least this size get ZIP64 sizes.
const ZIP64_SIZE: u64 = 0xffff_ffff;

/// What an entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Dir,
    File,
}

/// One entry found by the scan.
#[derive(Debug)]
struct Entry {
    /// The path below the downloaded directory, components joined by `/` (empty: itself).
    path: Vec<u8>,
    kind: Kind,
    mode: u32,
    mtime: i64,
}

impl Entry {
    /// The path's components.
    fn components(&self) -> impl Iterator<Item = &[u8]> {
        self.path.split(|b| *b == b'/').filter(|c| !c.is_empty())
    }
}

/// The scanned tree, ready to be written.
#[derive(Debug)]
pub(crate) struct Listing {
    prefix: String,
    entries: Vec<Entry>,
}

/// A child of a listed directory.
struct Child {
    name: Vec<u8>,
    kind: Kind,
    mode: u32,
    mtime: i64,
}

/// The directories and regular files directly in `dir`, sorted by name.
fn children(dir: BorrowedFd<'_>) -> Result<Vec<Child>, FileError> {
    let listing = std::fs::read_dir(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&dir)
    ))?;
    let mut names: Vec<Vec<u8>> = listing
        .filter_map(Result::ok)
        .map(|e| e.file_name().as_bytes().to_vec())
        .collect();
    names.sort();
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let Ok(cname) = CString::new(name.clone()) else {
            continue;
        };
        // O_PATH + O_NOFOLLOW: a symlink is looked at as itself, and left out
        let Ok(probe) = open_child(dir, &cname, libc::O_PATH) else {
            continue;
        };
        let st = fstat(probe.as_fd())?;
        let kind = match st.st_mode & libc::S_IFMT {
            libc::S_IFDIR => Kind::Dir,
            libc::S_IFREG => Kind::File,
            _ => continue,
        };
        out.push(Child {
            name,
            kind,
            mode: st.st_mode,
            mtime: st.st_mtime,
        });
    }
    Ok(out)
}

/// Opens the directory at `path` below `root`, one component at a time, never through a
/// symlink. `None` if it vanished or is no longer a directory.
fn open_dir<'a>(
    root: BorrowedFd<'_>,
    path: impl IntoIterator<Item = &'a [u8]>,
) -> Result<Option<OwnedFd>, FileError> {
    let mut cur = root.try_clone_to_owned()?;
    for comp in path {
        let Ok(c) = CString::new(comp) else {
            return Ok(None);
        };
        cur = match open_child(cur.as_fd(), &c, libc::O_RDONLY | libc::O_DIRECTORY) {
            Ok(fd) => fd,
            Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                return Err(e.into())
            }
            Err(_) => return Ok(None),
        };
    }
    Ok(Some(cur))
}

/// The archive name of `path` below a download named `prefix` (`""`: no prefix), and whether
/// invalid UTF-8 had to be replaced.
fn entry_name(prefix: &str, path: &[u8]) -> (String, bool) {
    let mut bytes = prefix.as_bytes().to_vec();
    if !bytes.is_empty() && !path.is_empty() {
        bytes.push(b'/');
    }
    bytes.extend_from_slice(path);
    match String::from_utf8(bytes) {
        Ok(s) => (s, false),
        Err(e) => (String::from_utf8_lossy(e.as_bytes()).into_owned(), true),
    }
}

/// Lists the directory `dir` for a download whose entries are prefixed with `prefix/` (no
/// prefix when empty). Blocking.
pub(crate) fn scan(dir: &OwnedFd, prefix: &str) -> Result<Listing, FileError> {
    struct Frame {
        path: Vec<u8>,
        depth: usize,
        children: std::vec::IntoIter<Child>,
    }
    let st = fstat(dir.as_fd())?;
    let mut entries = Vec::new();
    let (mut lossy, mut total) = (false, 0usize);
    if !prefix.is_empty() {
        entries.push(Entry {
            path: Vec::new(),
            kind: Kind::Dir,
            mode: st.st_mode,
            mtime: st.st_mtime,
        });
    }
    let mut frames = vec![Frame {
        path: Vec::new(),
        depth: 0,
        children: children(dir.as_fd())?.into_iter(),
    }];
    while let Some(frame) = frames.last_mut() {
        let Some(child) = frame.children.next() else {
            frames.pop();
            continue;
        };
        let mut path = frame.path.clone();
        if !path.is_empty() {
            path.push(b'/');
        }
        path.extend_from_slice(&child.name);
        let depth = frame.depth + 1;
        let (name, changed) = entry_name(prefix, &path);
        lossy |= changed;
        // a directory entry ends with '/'
        let len = name.len() + usize::from(child.kind == Kind::Dir);
        if len > MAX_NAME {
            return Err(FileError::NameTooLongForZip(len));
        }
        total = total.saturating_add(len);
        if total > MAX_NAMES_TOTAL || entries.len() >= MAX_ENTRIES {
            return Err(FileError::TooManyEntries(MAX_ENTRIES, MAX_NAMES_TOTAL));
        }
        if child.kind == Kind::Dir {
            if depth > MAX_DEPTH {
                return Err(FileError::TooDeep(MAX_DEPTH));
            }
            let comps = path.split(|b| *b == b'/');
            let Some(sub) = open_dir(dir.as_fd(), comps)? else {
                continue;
            };
            if is_virtual(sub.as_fd())? {
                continue;
            }
            let listed = children(sub.as_fd())?;
            drop(sub);
            frames.push(Frame {
                path: path.clone(),
                depth,
                children: listed.into_iter(),
            });
        }
        entries.push(Entry {
            path,
            kind: child.kind,
            mode: child.mode,
            mtime: child.mtime,
        });
    }
    if lossy {
        let mut seen = HashSet::with_capacity(entries.len());
        for e in &entries {
            let (name, _) = entry_name(prefix, &e.path);
            if !seen.insert(name.clone()) {
                return Err(FileError::DuplicateZipName(name));
            }
        }
    }
    Ok(Listing {
        prefix: prefix.to_owned(),
        entries,
    })
}

/// The MS-DOS time of a Unix time, UTC, clamped to the years ZIP can hold (1980..=2107).
fn dos_time(unix_secs: i64) -> DateTime {
    let (y, mo, d, h, mi, s) = utc_parts(unix_secs);
    let part = |v: u32| u8::try_from(v).unwrap_or(0);
    let t = match u16::try_from(y) {
        Ok(y @ 1980..=2107) => {
            DateTime::from_date_and_time(y, part(mo), part(d), part(h), part(mi), part(s))
        }
        _ if y > 2107 => DateTime::from_date_and_time(2107, 12, 31, 23, 59, 58),
        _ => DateTime::from_date_and_time(1980, 1, 1, 0, 0, 0),
    };
    t.unwrap_or_default()
}

fn options(e: &Entry) -> SimpleFileOptions {
    SimpleFileOptions::default()
        .compression_method(CompressionMethod::Stored)
        .last_modified_time(dos_time(e.mtime))
        .unix_permissions(e.mode & 0o7777)
}

fn zip_err(e: zip::result::ZipError) -> io::Error {
    match e {
        zip::result::ZipError::Io(e) => e,
        e => io::Error::other(e.to_string()),
    }
}

/// The open file of entry `e` (in the directory `parent`), with its size now; `None` if it
/// vanished or is no longer a regular file.
fn open_file(parent: BorrowedFd<'_>, e: &Entry) -> io::Result<Option<(File, u64)>> {
    let Some(name) = e.components().last() else {
        return Ok(None);
    };
    let Ok(c) = CString::new(name) else {
        return Ok(None);
    };
    let Ok(fd) = open_child(parent, &c, libc::O_RDONLY | libc::O_NONBLOCK) else {
        return Ok(None);
    };
    if is_virtual(fd.as_fd())? {
        return Ok(None);
    }
    let st = fstat(fd.as_fd())?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Ok(None);
    }
    set_blocking(fd.as_fd());
    Ok(Some((
        File::from(fd),
        u64::try_from(st.st_size).unwrap_or(0),
    )))
}

/// Writes the archive of `listing` (scanned from `dir`) to `out`. Blocking.
pub(crate) fn write<W: Write>(dir: &OwnedFd, listing: Listing, out: W) -> io::Result<W> {
    let mut zip = zip::ZipWriter::new_stream(out);
    // the directory whose files are being written, kept open across its files
    let mut parent: Option<(Vec<u8>, OwnedFd)> = None;
    for e in &listing.entries {
        let (name, _) = entry_name(&listing.prefix, &e.path);
        if e.kind == Kind::Dir {
            zip.add_directory(name, options(e)).map_err(zip_err)?;
            continue;
        }
        let parent_path = match e.path.iter().rposition(|b| *b == b'/') {
            Some(i) => &e.path[..i],
            None => &[][..],
        };
        if parent
            .as_ref()
            .is_none_or(|(p, _)| p.as_slice() != parent_path)
        {
            let comps = parent_path.split(|b| *b == b'/').filter(|c| !c.is_empty());
            parent = match open_dir(dir.as_fd(), comps) {
                Ok(Some(fd)) => Some((parent_path.to_vec(), fd)),
                Ok(None) => None,
                Err(FileError::Io(e)) => return Err(e),
                Err(_) => None,
            };
        }
        let Some((_, pfd)) = &parent else { continue };
        let Some((file, size)) = open_file(pfd.as_fd(), e)? else {
            continue;
        };
        zip.start_file(name, options(e).large_file(size >= ZIP64_SIZE))
            .map_err(zip_err)?;
        io::copy(&mut file.take(size), &mut zip)?;
    }
    Ok(zip.finish().map_err(zip_err)?.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dos_times_are_clamped() {
        let t = dos_time(0);
        assert_eq!((t.year(), t.month(), t.day()), (1980, 1, 1));
        // 2024-02-29 12:34:56 UTC
        let t = dos_time(1_709_210_096);
        assert_eq!(
            (
                t.year(),
                t.month(),
                t.day(),
                t.hour(),
                t.minute(),
                t.second()
            ),
            (2024, 2, 29, 12, 34, 56)
        );
        assert_eq!(dos_time(i64::MAX / 2).year(), 2107);
        assert_eq!(dos_time(i64::MIN / 2).year(), 1980);
    }

    #[test]
    fn names() {
        assert_eq!(entry_name("out", b"a/b.txt"), ("out/a/b.txt".into(), false));
        assert_eq!(entry_name("out", b""), ("out".into(), false));
        assert_eq!(entry_name("", b"x"), ("x".into(), false));
        assert_eq!(entry_name("", b"12:30.log"), ("12:30.log".into(), false));
        assert_eq!(entry_name("o", b"\xff"), ("o/\u{fffd}".into(), true));
    }

    /// A tree on this machine's disk, zipped, read back with the `zip` crate's reader.
    #[test]
    fn archives_read_back() -> io::Result<()> {
        let base = std::env::temp_dir().join(format!("ss-zip-{}", super::super::ident::uuid_v4()));
        std::fs::create_dir_all(base.join("out/sub"))?;
        std::fs::write(base.join("out/a.txt"), "A")?;
        std::fs::write(base.join("out/sub/12:30.log"), "B")?;
        std::os::unix::fs::symlink("/etc/passwd", base.join("out/link"))?;
        let dir = OwnedFd::from(File::open(base.join("out"))?);
        let listing = scan(&dir, "out").map_err(|e| io::Error::other(format!("{e:?}")))?;
        let bytes = write(&dir, listing, Vec::new())?;
        let mut ar = zip::ZipArchive::new(io::Cursor::new(bytes)).map_err(zip_err)?;
        let names: Vec<String> = ar.file_names().map(str::to_owned).collect();
        assert_eq!(
            names,
            ["out/", "out/a.txt", "out/sub/", "out/sub/12:30.log"]
        );
        let mut text = String::new();
        ar.by_name("out/sub/12:30.log")
            .map_err(zip_err)?
            .read_to_string(&mut text)?;
        assert_eq!(text, "B");
        std::fs::remove_dir_all(&base)?;
        Ok(())
    }
}
