//! The system calls of the preview proxy that neither the standard library nor tokio wrap,
//! behind safe functions. This is the only place in `preview` with `unsafe`.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// A new, unconnected, non-blocking TCP socket (IPv6 when `v6`) in the calling thread's
/// network namespace.
pub(crate) fn stream_socket(v6: bool) -> io::Result<OwnedFd> {
    let domain = if v6 { libc::AF_INET6 } else { libc::AF_INET };
    // SAFETY: socket() has no memory arguments; its result is checked before use.
    let fd = unsafe {
        libc::socket(
            domain,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by socket() and is owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A pipe (both ends non-blocking), the kernel buffer `splice` moves a body through without
/// copying it into this process.
#[derive(Debug)]
pub(crate) struct Pipe {
    /// The read end.
    pub(crate) read: OwnedFd,
    /// The write end.
    pub(crate) write: OwnedFd,
    /// How many bytes it holds at most.
    pub(crate) capacity: usize,
}

/// Size asked for a relay pipe (the default is 64 KiB; larger pipes mean fewer system calls
/// per body).
pub(crate) const PIPE_SIZE: usize = 1 << 20;

impl Pipe {
    /// A new pipe of about [`PIPE_SIZE`] bytes (the default size when the system refuses more).
    pub(crate) fn new() -> io::Result<Pipe> {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: pipe2() writes two descriptors into the array it is given, which holds two.
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both descriptors were just returned by pipe2() and are owned by nothing else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: fcntl(F_SETPIPE_SZ) takes an integer argument; it answers the new size, or
        // fails and leaves the default size.
        let set = unsafe {
            libc::fcntl(
                write.as_raw_fd(),
                libc::F_SETPIPE_SZ,
                PIPE_SIZE as libc::c_int,
            )
        };
        let capacity = match usize::try_from(set) {
            Ok(n) if n > 0 => n,
            // SAFETY: fcntl(F_GETPIPE_SZ) takes no argument and answers the size.
            _ => usize::try_from(unsafe { libc::fcntl(write.as_raw_fd(), libc::F_GETPIPE_SZ) })
                .ok()
                .filter(|&n| n > 0)
                .unwrap_or(65536),
        };
        Ok(Pipe {
            read,
            write,
            capacity,
        })
    }
}

/// Moves up to `len` bytes from descriptor `from` to descriptor `to` (one of them a pipe)
/// without copying them through this process; `Ok(0)`: `from` is at its end.
/// `ErrorKind::WouldBlock` when either side is not ready.
pub(crate) fn splice(from: BorrowedFd<'_>, to: BorrowedFd<'_>, len: usize) -> io::Result<usize> {
    // SAFETY: splice() with null offsets takes no memory from this process; both descriptors
    // are borrowed, so they stay open for the call.
    let n = unsafe {
        libc::splice(
            from.as_raw_fd(),
            std::ptr::null_mut(),
            to.as_raw_fd(),
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}
