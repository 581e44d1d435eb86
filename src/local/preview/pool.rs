//! Kept-alive connections to apps inside sandboxes, reused across proxied requests.
//!
//! A connection is pooled once its response was read to the end with nothing after it; it is
//! reused only for the same sandbox, port and sandbox runtime (a
//! sandbox started again has a new network namespace), and dropped after
//! [`IDLE_TIMEOUT`] unused.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use super::super::fault::lock;
use super::super::runtime::Runtime;

/// How long an unused connection is kept.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Most unused connections kept per sandbox port.
const MAX_IDLE_PER_PORT: usize = 8;

struct Idle {
    stream: TcpStream,
    runtime: Weak<Runtime>,
    since: Instant,
}

/// The pool.
#[derive(Default)]
pub(crate) struct Pool {
    idle: Mutex<HashMap<(String, u16), Vec<Idle>>>,
}

impl Pool {
    /// An unused connection to `port` of sandbox `id` in `runtime` that the app has not
    /// closed (nor sent anything on).
    pub(crate) fn take(&self, id: &str, port: u16, runtime: &Arc<Runtime>) -> Option<TcpStream> {
        let mut idle = lock(&self.idle);
        let list = idle.get_mut(&(id.to_owned(), port))?;
        while let Some(c) = list.pop() {
            let fresh = c.since.elapsed() < IDLE_TIMEOUT
                && std::ptr::eq(c.runtime.as_ptr(), Arc::as_ptr(runtime));
            if fresh && is_quiet(&c.stream) {
                return Some(c.stream);
            }
        }
        None
    }

    /// Keeps a connection whose last response was read to its end.
    pub(crate) fn give_back(
        &self,
        id: String,
        port: u16,
        runtime: Weak<Runtime>,
        stream: TcpStream,
    ) {
        let mut idle = lock(&self.idle);
        let list = idle.entry((id, port)).or_default();
        list.retain(|c| c.since.elapsed() < IDLE_TIMEOUT && is_quiet(&c.stream));
        if list.len() < MAX_IDLE_PER_PORT {
            list.push(Idle {
                stream,
                runtime,
                since: Instant::now(),
            });
        }
    }

    /// Drops every connection to a sandbox.
    pub(crate) fn forget(&self, id: &str) {
        lock(&self.idle).retain(|(sid, _), _| sid != id);
    }
}

/// Whether an idle connection is still open with nothing unread (a closed one reads as its
/// end, a confused app may have sent bytes nobody asked for).
fn is_quiet(stream: &TcpStream) -> bool {
    let mut probe = [0u8; 1];
    matches!(stream.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}
