//! The files API's host side: paths are resolved inside a sandbox's root with `openat2`
//! (`RESOLVE_IN_ROOT`), so `..` and symlinks can never lead out of the sandbox; virtual file
//! systems (`/proc`, `/sys`) and special files are refused.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;

use bytes::Bytes;
use libc::c_int;

use super::sys::{self, cstr};
use super::zip::ZipWriter;

/// Why a file operation failed (mapped to HTTP by the handlers).
#[derive(Debug)]
pub(crate) enum FileError {
    NotFound,
    IsDirectory,
    NotADirectory,
    NotRegular,
    Virtual,
    NoSpace,
    ReadOnly,
    /// A symlink loop, or a link that would leave the sandbox.
    BadLink,
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

fn openat2(dirfd: RawFd, path: &CString, flags: c_int, mode: u32) -> io::Result<OwnedFd> {
    // SAFETY: open_how is plain data; all-zero is its "no options" value.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.mode = u64::from(mode);
    how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    loop {
        // SAFETY: valid C string and open_how; the returned fd is owned by the OwnedFd.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dirfd,
                path.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if fd >= 0 {
            let fd = c_int::try_from(fd).map_err(|_| io::Error::other("fd out of range"))?;
            // SAFETY: fd was just returned by openat2.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        let e = io::Error::last_os_error();
        // EAGAIN: a concurrent rename raced the lookup; retry.
        if e.raw_os_error() != Some(libc::EAGAIN) {
            return Err(e);
        }
    }
}

/// Checks that the kernel has `openat2` (Linux 5.6+).
pub(crate) fn probe_openat2() -> io::Result<()> {
    openat2(libc::AT_FDCWD, &cstr("/")?, libc::O_PATH, 0).map(drop)
}

/// The file-system magic number of the file system holding `fd`.
// `f_type` has different integer types on different targets.
#[allow(clippy::unnecessary_cast)]
pub(crate) fn fs_magic(fd: RawFd) -> io::Result<i64> {
    // SAFETY: fstatfs fills a zeroed statfs buffer.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        if libc::fstatfs(fd, &mut st) != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(st.f_type as i64)
    }
}

fn fstat(fd: RawFd) -> io::Result<libc::stat> {
    // SAFETY: fstat fills a zeroed stat buffer.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        if libc::fstat(fd, &mut st) != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(st)
    }
}

/// Whether `fd` lives on a virtual file system the files API refuses (the backend runs with
/// more privileges than the sandbox: it must not read kernel files on its behalf).
// The magic constants have different integer types on different targets.
#[allow(clippy::unnecessary_cast)]
fn is_virtual(fd: RawFd) -> io::Result<bool> {
    let fs_type = fs_magic(fd)?;
    const DEVPTS: i64 = 0x1cd1;
    const CGROUP: i64 = 0x0027_e0eb;
    const CGROUP2: i64 = 0x6367_7270;
    Ok(fs_type == libc::PROC_SUPER_MAGIC as i64
        || fs_type == libc::SYSFS_MAGIC as i64
        || fs_type == DEVPTS
        || fs_type == CGROUP
        || fs_type == CGROUP2)
}

fn set_blocking(fd: RawFd) {
    // SAFETY: fcntl on an fd we own.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        if fl >= 0 {
            libc::fcntl(fd, libc::F_SETFL, fl & !libc::O_NONBLOCK);
        }
    }
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
        root.as_raw_fd(),
        &relative(path)?,
        libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY,
        0,
    )?;
    if is_virtual(fd.as_raw_fd())? {
        return Err(FileError::Virtual);
    }
    let st = fstat(fd.as_raw_fd())?;
    match st.st_mode & libc::S_IFMT {
        libc::S_IFDIR => Ok(ReadTarget::Dir(fd)),
        libc::S_IFREG => {
            set_blocking(fd.as_raw_fd());
            Ok(ReadTarget::File(File::from(fd), st.st_size as u64))
        }
        _ => Err(FileError::NotRegular),
    }
}

/// Opens `path` inside the sandbox for writing: parents are created (0755), the file is
/// created (0644) or truncated. What is created is owned by `owner` (the host id of the
/// sandbox's root), as if the sandbox's root had written it.
pub(crate) fn open_write(root: &OwnedFd, path: &str, owner: u32) -> Result<File, FileError> {
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
        root.as_raw_fd(),
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
        parent = match openat2(root.as_raw_fd(), &p, libc::O_PATH | libc::O_DIRECTORY, 0) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                let name = cstr(*comp)?;
                // SAFETY: mkdirat with a directory fd we own and a valid name.
                let r = unsafe { libc::mkdirat(parent.as_raw_fd(), name.as_ptr(), 0o755) };
                let created = r == 0;
                if !created {
                    let e = io::Error::last_os_error();
                    if e.raw_os_error() != Some(libc::EEXIST) {
                        return Err(e.into());
                    }
                }
                if created {
                    let dir = openat2(root.as_raw_fd(), &p, libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
                    sys::fchown(&dir, owner, owner)?;
                }
                openat2(root.as_raw_fd(), &p, libc::O_PATH | libc::O_DIRECTORY, 0)?
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
        root.as_raw_fd(),
        &rel,
        flags | libc::O_CREAT | libc::O_EXCL,
        0o644,
    ) {
        Ok(fd) => (fd, true),
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
            (openat2(root.as_raw_fd(), &rel, flags, 0)?, false)
        }
        Err(e) => return Err(e.into()),
    };
    if is_virtual(fd.as_raw_fd())? {
        return Err(FileError::Virtual);
    }
    let st = fstat(fd.as_raw_fd())?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(FileError::NotRegular);
    }
    if created {
        sys::fchown(&fd, owner, owner)?;
    }
    // SAFETY: ftruncate on a regular file we own.
    if unsafe { libc::ftruncate(fd.as_raw_fd(), 0) } != 0 {
        return Err(io::Error::last_os_error().into());
    }
    set_blocking(fd.as_raw_fd());
    Ok(File::from(fd))
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

fn open_child(dir: RawFd, name: &CString, flags: c_int) -> io::Result<OwnedFd> {
    // SAFETY: openat relative to a directory fd we own; one path component, no symlink follow.
    let fd = unsafe {
        libc::openat(
            dir,
            name.as_ptr(),
            flags | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NOCTTY,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by openat.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Zips the directory `dir` into `out`, entries prefixed with `prefix/` (no prefix when
/// empty). Symlinks, special files and virtual file systems are skipped. Blocking.
pub(crate) fn zip_dir<W: Write>(dir: OwnedFd, prefix: &str, out: W) -> io::Result<W> {
    let mut zip = ZipWriter::new(out);
    let st = fstat(dir.as_raw_fd())?;
    if !prefix.is_empty() {
        zip.add_dir(prefix.as_bytes(), st.st_mtime, st.st_mode)?;
    }
    walk(&mut zip, &dir, prefix.as_bytes())?;
    zip.finish()
}

fn walk<W: Write>(zip: &mut ZipWriter<W>, dir: &OwnedFd, prefix: &[u8]) -> io::Result<()> {
    let listing = std::fs::read_dir(format!("/proc/self/fd/{}", dir.as_raw_fd()))?;
    let mut names: Vec<Vec<u8>> = listing
        .filter_map(Result::ok)
        .map(|e| e.file_name().as_bytes().to_vec())
        .collect();
    names.sort();
    for name in names {
        let mut full = prefix.to_vec();
        if !full.is_empty() {
            full.push(b'/');
        }
        full.extend_from_slice(&name);
        let cname = cstr(name)?;
        // O_PATH + O_NOFOLLOW: a symlink is opened as itself and then skipped.
        let Ok(probe) = open_child(dir.as_raw_fd(), &cname, libc::O_PATH) else {
            continue;
        };
        let st = fstat(probe.as_raw_fd())?;
        match st.st_mode & libc::S_IFMT {
            libc::S_IFDIR => {
                let Ok(sub) =
                    open_child(dir.as_raw_fd(), &cname, libc::O_RDONLY | libc::O_DIRECTORY)
                else {
                    continue;
                };
                if is_virtual(sub.as_raw_fd())? {
                    continue;
                }
                zip.add_dir(&full, st.st_mtime, st.st_mode)?;
                walk(zip, &sub, &full)?;
            }
            libc::S_IFREG => {
                let Ok(fd) = open_child(dir.as_raw_fd(), &cname, libc::O_RDONLY | libc::O_NONBLOCK)
                else {
                    continue;
                };
                if is_virtual(fd.as_raw_fd())? {
                    continue;
                }
                let st = fstat(fd.as_raw_fd())?;
                if st.st_mode & libc::S_IFMT != libc::S_IFREG {
                    continue;
                }
                set_blocking(fd.as_raw_fd());
                let mut file = File::from(fd);
                zip.add_file(&full, st.st_mtime, st.st_mode, st.st_size as u64, &mut file)?;
            }
            _ => {}
        }
    }
    Ok(())
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
