//! The system call of the preview proxy that neither the standard library nor tokio wrap,
//! behind a safe function. This is the only place in `preview` with `unsafe`.
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
