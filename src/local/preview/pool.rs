//! Kept-alive connections to apps inside sandboxes, reused across proxied requests.
//!
//! A connection is pooled once its response was read to the end and it is ready for the
//! next request; it is reused only for the same sandbox, port and sandbox runtime (a
//! sandbox started again has a new network namespace), and dropped after
//! [`IDLE_TIMEOUT`] unused.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use axum::body::Body;
use hyper::client::conn::http1::SendRequest;

use super::super::fault::lock;
use super::super::runtime::Runtime;

/// How long an unused connection is kept.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Most unused connections kept per sandbox port (each may hold a read buffer of 512 KiB).
const MAX_IDLE_PER_PORT: usize = 8;

struct Idle {
    tx: SendRequest<Body>,
    runtime: Weak<Runtime>,
    since: Instant,
}

/// The pool.
#[derive(Default)]
pub(crate) struct Pool {
    idle: Mutex<HashMap<(String, u16), Vec<Idle>>>,
}

impl Pool {
    /// An unused connection to `port` of sandbox `id` in `runtime`, ready for a request.
    pub(crate) fn take(
        &self,
        id: &str,
        port: u16,
        runtime: &Arc<Runtime>,
    ) -> Option<SendRequest<Body>> {
        let mut idle = lock(&self.idle);
        let list = idle.get_mut(&(id.to_owned(), port))?;
        while let Some(c) = list.pop() {
            let fresh = c.since.elapsed() < IDLE_TIMEOUT
                && std::ptr::eq(c.runtime.as_ptr(), Arc::as_ptr(runtime));
            if fresh && !c.tx.is_closed() && c.tx.is_ready() {
                return Some(c.tx);
            }
        }
        None
    }

    /// Keeps a connection whose last response is done, once it is ready for another.
    pub(crate) fn give_back(
        self: &Arc<Self>,
        id: String,
        port: u16,
        runtime: Weak<Runtime>,
        mut tx: SendRequest<Body>,
    ) {
        let pool = Arc::downgrade(self);
        tokio::spawn(async move {
            if tx.ready().await.is_err() {
                return;
            }
            let Some(pool) = pool.upgrade() else { return };
            let mut idle = lock(&pool.idle);
            let list = idle.entry((id, port)).or_default();
            list.retain(|c| c.since.elapsed() < IDLE_TIMEOUT && !c.tx.is_closed());
            if list.len() < MAX_IDLE_PER_PORT {
                list.push(Idle {
                    tx,
                    runtime,
                    since: Instant::now(),
                });
            }
        });
    }

    /// Drops every connection to a sandbox.
    pub(crate) fn forget(&self, id: &str) {
        lock(&self.idle).retain(|(sid, _), _| sid != id);
    }
}
