//! Zero-copy relay of a plain TCP connection: per direction, `splice(2)` moves bytes from one
//! socket into a pipe and from the pipe into the other socket without copying them through
//! user space. Readiness comes from tokio, so a relay costs no thread.

use std::io;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::Interest;
use tokio::net::TcpStream;

use super::sys;

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

/// One direction: `src` → pipe → `dst`; on end of input, shuts down `dst`'s write side.
async fn pump(src: &TcpStream, dst: &TcpStream, count: &AtomicU64) -> io::Result<()> {
    let (pr, pw, _) = sys::pipe(CHUNK)?;
    loop {
        let n = src
            .async_io(Interest::READABLE, || {
                sys::splice(src.as_fd(), pw.as_fd(), CHUNK)
            })
            .await?;
        if n == 0 {
            sys::shutdown_write(dst.as_fd());
            return Ok(());
        }
        count.fetch_add(n as u64, Ordering::Relaxed);
        let mut left = n;
        while left > 0 {
            left -= dst
                .async_io(Interest::WRITABLE, || {
                    sys::splice(pr.as_fd(), dst.as_fd(), left)
                })
                .await?;
        }
    }
}
