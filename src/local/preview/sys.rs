//! The system calls of the preview proxy that neither the standard library nor tokio wrap,
//! behind safe functions (pipes and `splice` are the backend's shared ones). This is the
//! only place in `preview` with `unsafe`.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

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
const PIPE_SIZE: usize = 1 << 20;

impl Pipe {
    /// A new pipe of about [`PIPE_SIZE`] bytes (the default size when the system refuses more).
    pub(crate) fn new() -> io::Result<Pipe> {
        let (read, write, capacity) = super::super::sys::pipe(PIPE_SIZE)?;
        Ok(Pipe {
            read,
            write,
            capacity,
        })
    }
}

pub(crate) use super::super::sys::splice;
