//! The files API's host side: paths are resolved inside a sandbox's root with `openat2`
//! (`RESOLVE_IN_ROOT`), so `..` and symlinks can never lead out of the sandbox; virtual file
//! systems (`/proc`, `/sys`) and special files are refused.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use bytes::Bytes;
use libc::c_int;

use super::fs_sys::{self, fstat, set_blocking};
use super::sys::cstr;

/// Why a file operation failed (mapped to HTTP by the handlers). Every error a client can
/// cause has a variant of its own; `Io` is left for the backend's own failures.
#[derive(Debug)]
pub(crate) enum FileError {
    NotFound,
    IsDirectory,
    /// A component of the path is not a directory (reading: the file does not exist).
    NotADirectory,
    /// Writing: a parent of the path is a file.
    ParentNotADirectory,
    NotRegular,
    Virtual,
    NoSpace,
    ReadOnly,
    /// A symlink loop, or a link that would leave the sandbox.
    BadLink,
    /// The path or one of its names is too long (`ENAMETOOLONG`).
    NameTooLong,
    /// `EACCES`, `EPERM` (e.g. an immutable file).
    PermissionDenied,
    /// `ETXTBSY`, `EBUSY`: a running program, a mount point.
    Busy,
    /// `EFBIG`: past the largest file the file system holds.
    TooLarge,
    /// `EINVAL`: a name the file system does not take.
    Invalid,
    /// `EMFILE`, `ENFILE`, `ENOMEM`: the backend is short of resources for now.
    Exhausted,
    /// A ZIP download of a directory nested deeper than this.
    TooDeep(usize),
    /// A ZIP download with an entry name of this many bytes (more than the format holds).
    NameTooLongForZip(usize),
    /// A ZIP download of more than this many entries, or of names longer than this in total.
    TooManyEntries(usize, usize),
    /// A ZIP download in which two names are the same once made valid UTF-8.
    DuplicateZipName(String),
    Io(io::Error),
}

impl From<io::Error> for FileError {
    fn from(e: io::Error) -> Self {
        match e.raw_os_error() {
            Some(libc::ENOENT) => FileError::NotFound,
            Some(libc::EISDIR) => FileError::IsDirectory,
            Some(libc::ENOTDIR) => FileError::NotADirectory,
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => FileError::NoSpace,
            Some(libc::EROFS) => FileError::ReadOnly,
            Some(libc::ENXIO) => FileError::NotRegular,
            Some(libc::ELOOP) | Some(libc::EXDEV) => FileError::BadLink,
            Some(libc::ENAMETOOLONG) => FileError::NameTooLong,
            Some(libc::EACCES) | Some(libc::EPERM) => FileError::PermissionDenied,
            Some(libc::ETXTBSY) | Some(libc::EBUSY) => FileError::Busy,
            Some(libc::EFBIG) => FileError::TooLarge,
            Some(libc::EINVAL) => FileError::Invalid,
            Some(libc::EMFILE) | Some(libc::ENFILE) | Some(libc::ENOMEM) => FileError::Exhausted,
            _ => FileError::Io(e),
        }
    }
}

/// Validates a files-API path: absolute, no `..` segment, no NUL. The message is the
/// `text/plain` 400 body.
pub(crate) fn validate_path(path: &str) -> Result<(), &'static str> {
    if path.is_empty() {
        return Err("missing path");
    }
    if path.contains('\0') {
        return Err("invalid path: contains a NUL byte");
    }
    if !path.starts_with('/') {
        return Err("invalid path: must be absolute");
    }
    if path.split('/').any(|s| s == "..") {
        return Err("invalid path: must not contain '..'");
    }
    Ok(())
}

/// `path` relative to the sandbox root (`"."` for `/`).
fn relative(path: &str) -> io::Result<CString> {
    let rel = path.trim_start_matches('/');
    cstr(if rel.is_empty() { "." } else { rel })
}

/// Resolution inside a sandbox root: `..` and absolute symlinks stay inside it, magic links
/// (`/proc/*/fd/*`) are refused.
const IN_ROOT: u64 = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;

fn openat2(dir: BorrowedFd<'_>, path: &CString, flags: c_int, mode: u32) -> io::Result<OwnedFd> {
    fs_sys::openat2(dir, path, flags, mode, IN_ROOT)
}

/// Checks that the kernel has `openat2` (Linux 5.6+).
pub(crate) fn probe_openat2() -> io::Result<()> {
    let root = std::fs::File::open("/")?;
    openat2(root.as_fd(), &cstr(".")?, libc::O_PATH, 0).map(drop)
}

/// Whether `fd` lives on a virtual file system the files API refuses (the backend runs with
/// more privileges than the sandbox: it must not read kernel files on its behalf).
// The magic constants have different integer types on different targets.
#[allow(clippy::unnecessary_cast)]
pub(crate) fn is_virtual(fd: BorrowedFd<'_>) -> io::Result<bool> {
    let fs_type = fs_sys::fs_magic(fd)?;
    const DEVPTS: i64 = 0x1cd1;
    const CGROUP: i64 = 0x0027_e0eb;
    const CGROUP2: i64 = 0x6367_7270;
    Ok(fs_type == libc::PROC_SUPER_MAGIC as i64
        || fs_type == libc::SYSFS_MAGIC as i64
        || fs_type == DEVPTS
        || fs_type == CGROUP
        || fs_type == CGROUP2)
}

/// What a read found.
pub(crate) enum ReadTarget {
    /// A regular file and its size.
    File(File, u64),
    /// A directory (fd) for zipping.
    Dir(OwnedFd),
}

/// Opens `path` inside the sandbox for reading.
pub(crate) fn open_read(root: &OwnedFd, path: &str) -> Result<ReadTarget, FileError> {
    let fd = openat2(
        root.as_fd(),
        &relative(path)?,
        libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY,
        0,
    )?;
    if is_virtual(fd.as_fd())? {
        return Err(FileError::Virtual);
    }
    let st = fstat(fd.as_fd())?;
    match st.st_mode & libc::S_IFMT {
        libc::S_IFDIR => Ok(ReadTarget::Dir(fd)),
        libc::S_IFREG => {
            set_blocking(fd.as_fd());
            Ok(ReadTarget::File(File::from(fd), st.st_size as u64))
        }
        _ => Err(FileError::NotRegular),
    }
}

/// Opens `path` inside the sandbox for writing: parents are created (0755), the file is
/// created (0644) or truncated. What is created is owned by `owner` (the host id of the
/// sandbox's root), as if the sandbox's root had written it.
pub(crate) fn open_write(root: &OwnedFd, path: &str, owner: u32) -> Result<File, FileError> {
    open_write_in(root, path, owner).map_err(|e| match e {
        FileError::NotADirectory => FileError::ParentNotADirectory,
        e => e,
    })
}

fn open_write_in(root: &OwnedFd, path: &str, owner: u32) -> Result<File, FileError> {
    let trimmed = path.trim_matches('/');
    if trimmed.is_empty() {
        return Err(FileError::IsDirectory);
    }
    let comps: Vec<&str> = trimmed
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    // mkdir -p of the parents, each step resolved inside the root
    let mut prefix = String::new();
    let mut parent = openat2(
        root.as_fd(),
        &cstr(".")?,
        libc::O_PATH | libc::O_DIRECTORY,
        0,
    )?;
    for comp in comps.iter().take(comps.len().saturating_sub(1)) {
        if !prefix.is_empty() {
            prefix.push('/');
        }
        prefix.push_str(comp);
        let p = cstr(prefix.as_str())?;
        parent = match openat2(root.as_fd(), &p, libc::O_PATH | libc::O_DIRECTORY, 0) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                let name = cstr(*comp)?;
                match fs_sys::mkdir_child(parent.as_fd(), &name, 0o755) {
                    Ok(()) => {
                        let dir = openat2(root.as_fd(), &p, libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
                        fs_sys::fchown(dir.as_fd(), owner, owner)?;
                    }
                    Err(e) if e.raw_os_error() != Some(libc::EEXIST) => return Err(e.into()),
                    Err(_) => {}
                }
                openat2(root.as_fd(), &p, libc::O_PATH | libc::O_DIRECTORY, 0)?
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => {
                return Err(FileError::NotADirectory)
            }
            Err(e) => return Err(e.into()),
        };
    }
    drop(parent);
    let rel = relative(path)?;
    let flags = libc::O_WRONLY | libc::O_NONBLOCK | libc::O_NOCTTY;
    let (fd, created) = match openat2(
        root.as_fd(),
        &rel,
        flags | libc::O_CREAT | libc::O_EXCL,
        0o644,
    ) {
        Ok(fd) => (fd, true),
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
            (openat2(root.as_fd(), &rel, flags, 0)?, false)
        }
        Err(e) => return Err(e.into()),
    };
    if is_virtual(fd.as_fd())? {
        return Err(FileError::Virtual);
    }
    let st = fstat(fd.as_fd())?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(FileError::NotRegular);
    }
    if created {
        fs_sys::fchown(fd.as_fd(), owner, owner)?;
    }
    let file = File::from(fd);
    file.set_len(0)?;
    set_blocking(file.as_fd());
    Ok(file)
}

/// The last path segment (`""` for `/`).
pub(crate) fn base_name(path: &str) -> &str {
    path.trim_end_matches('/').rsplit('/').next().unwrap_or("")
}

/// What a `Range` header asks of a file of `size` bytes (single byte ranges, as RFC 9110).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ByteRange {
    /// No usable range: the whole file, `200`. Also for several ranges, units other than
    /// `bytes`, and any range on an empty file (a server may ignore a Range header).
    Full,
    /// `206` with `start..start + len`.
    Part { start: u64, len: u64 },
    /// `416`: the range is malformed or starts past the end.
    Unsatisfiable,
}

/// Reads a `Range` header value (`bytes=a-b`, `bytes=a-`, `bytes=-n`).
pub(crate) fn byte_range(header: Option<&str>, size: u64) -> ByteRange {
    let Some(spec) = header.map(str::trim).filter(|h| !h.is_empty()) else {
        return ByteRange::Full;
    };
    let Some(set) = spec.strip_prefix("bytes=") else {
        return ByteRange::Full;
    };
    if set.contains(',') || size == 0 {
        return ByteRange::Full;
    }
    let Some((first, last)) = set.split_once('-') else {
        return ByteRange::Unsatisfiable;
    };
    let (first, last) = (first.trim(), last.trim());
    // digits only (`parse` alone would take a leading `+`)
    let num = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| s.parse::<u64>().ok())
            .flatten()
    };
    if first.is_empty() {
        // bytes=-n: the last n bytes
        return match num(last) {
            Some(n) if n > 0 => {
                let len = n.min(size);
                ByteRange::Part {
                    start: size - len,
                    len,
                }
            }
            _ => ByteRange::Unsatisfiable,
        };
    }
    let Some(start) = num(first).filter(|a| *a < size) else {
        return ByteRange::Unsatisfiable;
    };
    // bytes=a- runs to the end; bytes=a-b is clamped to it
    let end = match num(last) {
        _ if last.is_empty() => size - 1,
        Some(b) if b >= start => b.min(size - 1),
        _ => return ByteRange::Unsatisfiable,
    };
    ByteRange::Part {
        start,
        len: end - start + 1,
    }
}

/// A `Write` that sends 64 KiB chunks into a channel (the HTTP body). Fails with
/// `BrokenPipe` once the receiver is gone (client disconnected).
pub(crate) struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<Result<Bytes, io::Error>>,
    buf: Vec<u8>,
}

const CHUNK: usize = 64 * 1024;

impl ChannelWriter {
    pub(crate) fn new(tx: tokio::sync::mpsc::Sender<Result<Bytes, io::Error>>) -> Self {
        ChannelWriter {
            tx,
            buf: Vec::with_capacity(CHUNK),
        }
    }

    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "client went away"))
    }

    /// Passes an error to the body (the client sees a broken transfer).
    pub(crate) fn fail(&self, e: io::Error) {
        let _ = self.tx.blocking_send(Err(e));
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_ranges() {
        use ByteRange::*;
        let r = |h: &str| byte_range(Some(h), 100);
        assert_eq!(byte_range(None, 100), Full);
        assert_eq!(r("bytes=0-9"), Part { start: 0, len: 10 });
        assert_eq!(r("bytes=90-"), Part { start: 90, len: 10 });
        assert_eq!(
            r("bytes=90-500"),
            Part { start: 90, len: 10 },
            "clamped to the end"
        );
        assert_eq!(r("bytes=-10"), Part { start: 90, len: 10 });
        assert_eq!(
            r("bytes=-500"),
            Part { start: 0, len: 100 },
            "suffix longer than the file"
        );
        assert_eq!(r("bytes=99-99"), Part { start: 99, len: 1 });
        assert_eq!(r("bytes=100-"), Unsatisfiable, "starts past the end");
        assert_eq!(r("bytes=5-4"), Unsatisfiable);
        assert_eq!(r("bytes=-0"), Unsatisfiable);
        assert_eq!(r("bytes=x-"), Unsatisfiable);
        assert_eq!(r("bytes=+1-2"), Unsatisfiable);
        assert_eq!(r("bytes=1-2x"), Unsatisfiable);
        assert_eq!(r("bytes="), Unsatisfiable);
        assert_eq!(r("bytes=0-1,5-6"), Full, "several ranges: the whole file");
        assert_eq!(r("items=0-1"), Full, "other units are ignored");
        assert_eq!(
            byte_range(Some("bytes=0-"), 0),
            Full,
            "an empty file is sent whole"
        );
    }

    #[test]
    fn path_rules() {
        assert!(validate_path("/a/b.txt").is_ok());
        assert!(validate_path("/").is_ok());
        assert!(validate_path("/a/..b/c").is_ok());
        assert!(validate_path("").is_err());
        assert!(validate_path("relative.txt").is_err());
        assert!(validate_path("/a/../etc/passwd").is_err());
        assert!(validate_path("/a/..").is_err());
        assert!(validate_path("/a/b\0c").is_err());
        assert_eq!(base_name("/out"), "out");
        assert_eq!(base_name("/a/out/"), "out");
        assert_eq!(base_name("/"), "");
    }
}
