//! The file-system calls of the files API that the standard library does not offer (`openat2`
//! with `RESOLVE_*`, `*at` calls relative to a directory descriptor, `fstatfs`), each behind a
//! safe function. This is the only place of the files API with `unsafe`.

#![allow(unsafe_code)]

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use libc::c_int;

fn owned(fd: libc::c_long) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = c_int::try_from(fd).map_err(|_| io::Error::other("descriptor out of range"))?;
    // SAFETY: `fd` was just returned by the kernel as a new descriptor, owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `openat2(dir, path, flags | O_CLOEXEC, mode, resolve)`, retried while a concurrent rename
/// makes the kernel ask for it (`EAGAIN`).
pub(crate) fn openat2(
    dir: BorrowedFd<'_>,
    path: &CStr,
    flags: c_int,
    mode: u32,
    resolve: u64,
) -> io::Result<OwnedFd> {
    // SAFETY: open_how is plain data; all-zero is its "no options" value.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = u32::try_from(flags | libc::O_CLOEXEC)
        .map(u64::from)
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    how.mode = u64::from(mode);
    how.resolve = resolve;
    loop {
        // SAFETY: a valid C string and open_how of the size passed; the descriptor is
        // borrowed for the call.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dir.as_raw_fd(),
                path.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        match owned(fd) {
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => continue,
            r => return r,
        }
    }
}

/// `openat(dir, name, flags | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY)`: one path component, never
/// through a symlink.
pub(crate) fn open_child(dir: BorrowedFd<'_>, name: &CStr, flags: c_int) -> io::Result<OwnedFd> {
    // SAFETY: a valid C string; the directory descriptor is borrowed for the call.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            flags | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NOCTTY,
        )
    };
    owned(libc::c_long::from(fd))
}

/// `mkdirat(dir, name, mode)`.
pub(crate) fn mkdir_child(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> io::Result<()> {
    // SAFETY: a valid C string; the directory descriptor is borrowed for the call.
    if unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `fchown(fd, uid, gid)`.
pub(crate) fn fchown(fd: BorrowedFd<'_>, uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: plain integers; the descriptor is borrowed for the call.
    if unsafe { libc::fchown(fd.as_raw_fd(), uid, gid) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `fstat(fd)`.
pub(crate) fn fstat(fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
    // SAFETY: stat is plain data; all-zero is a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat fills the buffer it is given, which lives across the call.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

/// The magic number of the file system holding `fd` (`fstatfs`).
// `f_type` has different integer types on different targets.
#[allow(clippy::unnecessary_cast)]
pub(crate) fn fs_magic(fd: BorrowedFd<'_>) -> io::Result<i64> {
    // SAFETY: statfs is plain data; all-zero is a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: fstatfs fills the buffer it is given, which lives across the call.
    if unsafe { libc::fstatfs(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_type as i64)
}

/// Clears `O_NONBLOCK` on `fd` (files are opened non-blocking so that a FIFO cannot hang the
/// open, then read blocking).
pub(crate) fn set_blocking(fd: BorrowedFd<'_>) {
    // SAFETY: F_GETFL/F_SETFL take and return plain flags; the descriptor is borrowed.
    unsafe {
        let fl = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        if fl >= 0 {
            libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, fl & !libc::O_NONBLOCK);
        }
    }
}
