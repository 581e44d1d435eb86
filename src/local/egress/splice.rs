//! Zero-copy relay of a plain TCP connection: per direction, `splice(2)` moves bytes from one
//! socket into a pipe and from the pipe into the other socket without copying them through
//! user space. Readiness comes from tokio, so a relay costs no thread.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::Interest;
use tokio::net::TcpStream;

/// Bytes moved per `splice` call (the pipe is grown to hold this much).
const CHUNK: usize = 256 * 1024;

/// Relays between `client` and `upstream` until both directions ended (or one failed),
/// adding what the client sent to `sent` and what it received to `recv`.
pub(crate) async fn relay(
    client: &TcpStream,
    upstream: &TcpStream,
    sent: &AtomicU64,
    recv: &AtomicU64,
) -> io::Result<()> {
    let up = pump(client, upstream, sent);
    let down = pump(upstream, client, recv);
    tokio::pin!(up, down);
    let (mut up_done, mut down_done) = (false, false);
    while !(up_done && down_done) {
        tokio::select! {
            r = &mut up, if !up_done => {
                up_done = true;
                r?;
            }
            r = &mut down, if !down_done => {
                down_done = true;
                r?;
            }
        }
    }
    Ok(())
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 fills both fds on success; each is owned exactly once below.
    unsafe {
        if libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) != 0 {
            return Err(io::Error::last_os_error());
        }
        let (r, w) = (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1]));
        // a larger pipe means fewer calls; the default size works too
        libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, CHUNK as libc::c_int);
        Ok((r, w))
    }
}

fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: plain fd-to-fd transfer, no user memory involved.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// One direction: `src` → pipe → `dst`; on end of input, shuts down `dst`'s write side.
async fn pump(src: &TcpStream, dst: &TcpStream, count: &AtomicU64) -> io::Result<()> {
    let (pr, pw) = pipe()?;
    loop {
        let n = src
            .async_io(Interest::READABLE, || {
                splice(src.as_raw_fd(), pw.as_raw_fd(), CHUNK)
            })
            .await?;
        if n == 0 {
            // SAFETY: shutdown of a socket this relay holds open.
            unsafe { libc::shutdown(dst.as_raw_fd(), libc::SHUT_WR) };
            return Ok(());
        }
        count.fetch_add(n as u64, Ordering::Relaxed);
        let mut left = n;
        while left > 0 {
            left -= dst
                .async_io(Interest::WRITABLE, || {
                    splice(pr.as_raw_fd(), dst.as_raw_fd(), left)
                })
                .await?;
        }
    }
}
