//! The accept loop of a listener, made to survive its clients: a cap on open connections,
//! timeouts for request heads and idle keep-alive connections, and a fast `503` for a request
//! that cannot be taken.
//!
//! * A connection that has sent part of a request head must finish it within
//!   [`Limits::header_read_timeout`] (a new connection counts from its accept); a keep-alive
//!   connection with no request in progress is closed after [`Limits::idle_timeout`]. A
//!   request in progress (its response still streaming, an upgraded WebSocket) is never timed
//!   out here: its handler bounds it.
//! * At most [`Limits::max_connections`] connections are open (an upgraded WebSocket keeps
//!   its slot). When a new connection arrives at the cap, the connection idle for the longest
//!   time (no request in progress: silent, slow or kept alive) is closed to make room; when
//!   every connection has a request in progress, the new one is answered `503` with
//!   `Retry-After` and closed. Running out of descriptors on accept ends the same way: a
//!   reserved descriptor is given up to accept the connection and answer it.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, HttpBody};
use axum::Router;
use bytes::Bytes;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, Semaphore};
use tokio::task::JoinSet;

use super::super::fault::lock;

/// Per-connection handle, given to every request as an extension: a fault rule drops the TCP
/// connection through it, without a response.
#[derive(Clone)]
pub(crate) struct ConnCtl(Arc<Notify>);

impl ConnCtl {
    /// Drops the connection at once (the request in progress gets no answer).
    pub(crate) fn drop_connection(&self) {
        self.0.notify_one();
    }
}

/// What one listener allows its clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Most open connections.
    pub max_connections: usize,
    /// Longest time from the first byte of a request head (or a new connection's accept) to
    /// the end of the head.
    pub header_read_timeout: Duration,
    /// Longest time a keep-alive connection waits for its next request.
    pub idle_timeout: Duration,
}

/// Default time to send a request head.
pub(crate) const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Default keep-alive idle time: longer than the 90 s idle timeout of the SDK's connection
/// pool, so that the server never closes a connection a client is about to reuse.
pub(crate) const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Answers being written to shed connections at once; beyond it a shed connection is just
/// closed.
const MAX_SHEDDING: usize = 64;
/// How long a shed connection may take to read its `503`.
const SHED_LINGER: Duration = Duration::from_secs(1);

impl Limits {
    /// The defaults for a process that may open `max_fds` descriptors: each listener
    /// (control plane, data plane, preview proxy) takes an eighth of them (between 32 and 4096 connections), the rest is left
    /// to sandboxes, their egress and the state database.
    pub(crate) fn for_descriptors(max_fds: u64) -> Limits {
        let share = usize::try_from(max_fds / 8).unwrap_or(usize::MAX);
        Limits {
            max_connections: share.clamp(32, 4096),
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
        }
    }
}

/// Milliseconds since `base`.
fn ms_since(base: Instant) -> u64 {
    u64::try_from(base.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// The life of one connection as the limits see it.
struct ConnState {
    /// Times are milliseconds since this instant.
    base: Instant,
    /// Requests in progress (from the head's end until the response body is done).
    busy: AtomicUsize,
    /// An upgraded connection (WebSocket): its handler owns it now.
    upgraded: AtomicBool,
    /// When the current request head started (+1; 0: none started).
    head_started: AtomicU64,
    /// When the connection last finished a request or was accepted.
    idle_since: AtomicU64,
    /// Whether it has finished a request (a keep-alive connection) rather than being new.
    served: AtomicBool,
    /// Notified to close the connection (evicted to make room).
    close: Notify,
}

impl ConnState {
    fn new() -> ConnState {
        ConnState {
            base: Instant::now(),
            busy: AtomicUsize::new(0),
            upgraded: AtomicBool::new(false),
            head_started: AtomicU64::new(0),
            idle_since: AtomicU64::new(0),
            served: AtomicBool::new(false),
            close: Notify::new(),
        }
    }

    fn now(&self) -> u64 {
        ms_since(self.base)
    }

    fn in_progress(&self) -> bool {
        self.upgraded.load(Ordering::SeqCst) || self.busy.load(Ordering::SeqCst) > 0
    }

    /// Bytes arrived: a request head starts unless one is in progress.
    fn on_read(&self) {
        if self.busy.load(Ordering::SeqCst) == 0 {
            let now = self.now().saturating_add(1);
            let _ = self
                .head_started
                .compare_exchange(0, now, Ordering::SeqCst, Ordering::SeqCst);
        }
    }

    /// A request head was read in full: the request is in progress.
    fn on_request(&self) {
        self.busy.fetch_add(1, Ordering::SeqCst);
        self.head_started.store(0, Ordering::SeqCst);
    }

    /// A response (body included) was sent or dropped.
    fn on_response_done(&self) {
        self.idle_since.store(self.now(), Ordering::SeqCst);
        self.served.store(true, Ordering::SeqCst);
        self.busy.fetch_sub(1, Ordering::SeqCst);
    }

    /// How long until the connection's current wait runs out (`None`: it ran out).
    fn time_left(&self, limits: &Limits) -> Option<Duration> {
        if self.in_progress() {
            return Some(limits.header_read_timeout);
        }
        let now = self.now();
        let (since, limit) = match self.head_started.load(Ordering::SeqCst) {
            0 if self.served.load(Ordering::SeqCst) => {
                (self.idle_since.load(Ordering::SeqCst), limits.idle_timeout)
            }
            0 => (0, limits.header_read_timeout),
            started => (started - 1, limits.header_read_timeout),
        };
        let limit = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX);
        let end = since.saturating_add(limit);
        (now < end).then(|| Duration::from_millis(end - now))
    }

    /// How long it has waited without a request in progress (for eviction).
    fn waiting_ms(&self) -> Option<u64> {
        if self.in_progress() {
            return None;
        }
        let since = match self.head_started.load(Ordering::SeqCst) {
            0 => self.idle_since.load(Ordering::SeqCst),
            started => started - 1,
        };
        Some(self.now().saturating_sub(since))
    }
}

/// The open connections of one listener.
#[derive(Default)]
struct Registry {
    next: AtomicU64,
    conns: Mutex<HashMap<u64, Arc<ConnState>>>,
}

/// A connection's place in the registry, given back when the connection's socket closes.
struct Slot {
    registry: Arc<Registry>,
    id: u64,
}

impl Drop for Slot {
    fn drop(&mut self) {
        lock(&self.registry.conns).remove(&self.id);
    }
}

impl Registry {
    /// A slot for a new connection if there is room or room can be made by closing the
    /// connection that has waited longest without a request in progress.
    fn admit(self: &Arc<Self>, max: usize) -> Option<(Slot, Arc<ConnState>)> {
        let mut conns = lock(&self.conns);
        if conns.len() >= max {
            let victim = conns
                .iter()
                .filter_map(|(id, c)| c.waiting_ms().map(|w| (w, *id)))
                .max()
                .map(|(_, id)| id)?;
            if let Some(c) = conns.remove(&victim) {
                c.close.notify_one();
            }
        }
        let id = self.next.fetch_add(1, Ordering::SeqCst);
        let state = Arc::new(ConnState::new());
        conns.insert(id, state.clone());
        drop(conns);
        let slot = Slot {
            registry: self.clone(),
            id,
        };
        Some((slot, state))
    }
}

/// The socket of an admitted connection: it holds the connection's slot (an upgraded
/// WebSocket keeps it) and tells the connection's state when bytes arrive.
struct Tracked {
    inner: TcpStream,
    state: Arc<ConnState>,
    _slot: Slot,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.state.on_read();
        }
        r
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A response body that tells the connection when it is done (sent in full or dropped).
struct Tracking {
    inner: Body,
    state: Arc<ConnState>,
}

impl HttpBody for Tracking {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Tracking {
    fn drop(&mut self) {
        self.state.on_response_done();
    }
}

/// Waits until the connection's current wait runs out.
async fn expiry(state: &ConnState, limits: &Limits) {
    while let Some(left) = state.time_left(limits) {
        tokio::time::sleep(left.max(Duration::from_millis(10))).await;
    }
}

/// The `503` of a request that cannot be taken (`{"error":{"code","message"}}`).
fn shed_response() -> Vec<u8> {
    let body = r#"{"error":{"code":"server_busy","message":"too many open connections; retry in a moment"}}"#;
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         retry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Answers a connection that cannot be taken with `503` and closes it, giving the client a
/// moment to read the answer.
async fn shed(mut stream: TcpStream) {
    let _ = stream.write_all(&shed_response()).await;
    let _ = stream.shutdown().await;
    let mut sink = [0u8; 4096];
    let _ = tokio::time::timeout(SHED_LINGER, async {
        while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}

/// Serves `router` on `listener` within `limits` until `shutdown` flips; then drops every
/// connection.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: watch::Receiver<bool>,
    limits: Limits,
) {
    accept_loop(
        listener,
        shutdown.clone(),
        limits,
        move |stream, slot, state| {
            let io = Tracked {
                inner: stream,
                state: state.clone(),
                _slot: slot,
            };
            connection(io, state, router.clone(), shutdown.clone(), limits)
        },
    )
    .await
}

/// An admitted connection handed whole to its handler (the preview proxy, which frames
/// HTTP/1.1 itself): the socket, and what the handler tells the listener's limits.
pub(crate) struct RawConn {
    /// The client's socket.
    pub(crate) stream: TcpStream,
    /// What the listener's limits learn from the handler.
    pub(crate) hooks: ConnHooks,
    _slot: Slot,
}

/// What a handler that frames HTTP/1.1 itself tells the listener's limits (the timeouts and
/// the eviction order of the module docs).
#[derive(Clone)]
pub(crate) struct ConnHooks(Arc<ConnState>);

impl ConnHooks {
    /// Bytes of a request head arrived.
    pub(crate) fn bytes_arrived(&self) {
        self.0.on_read();
    }
    /// A request head was read in full: a request is in progress.
    pub(crate) fn request_started(&self) {
        self.0.on_request();
    }
    /// The request's response was sent (or given up).
    pub(crate) fn response_done(&self) {
        self.0.on_response_done();
    }
    /// The connection became a tunnel (a WebSocket): it keeps its slot and is never timed out.
    pub(crate) fn upgraded(&self) {
        self.0.upgraded.store(true, Ordering::SeqCst);
    }
}

/// Serves `listener` within `limits` until `shutdown` flips, giving each admitted connection
/// to `handler`; then drops every connection.
pub(crate) async fn serve_raw<H, F>(
    listener: TcpListener,
    handler: H,
    shutdown: watch::Receiver<bool>,
    limits: Limits,
) where
    H: Fn(RawConn) -> F + Send + 'static,
    F: std::future::Future<Output = ()> + Send + 'static,
{
    accept_loop(
        listener,
        shutdown.clone(),
        limits,
        move |stream, slot, state| {
            let conn = RawConn {
                stream,
                hooks: ConnHooks(state.clone()),
                _slot: slot,
            };
            let work = handler(conn);
            let mut stop = shutdown.clone();
            async move {
                tokio::select! {
                    _ = work => {}
                    _ = stop.changed() => {}
                    _ = state.close.notified() => {}
                    _ = expiry(&state, &limits) => {}
                }
            }
        },
    )
    .await
}

/// Accepts connections on `listener` within `limits` until `shutdown` flips, running what
/// `spawn` makes of each admitted one; then drops every connection.
async fn accept_loop<S, F>(
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
    limits: Limits,
    spawn: S,
) where
    S: Fn(TcpStream, Slot, Arc<ConnState>) -> F,
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let registry = Arc::new(Registry::default());
    let shedding = Arc::new(Semaphore::new(MAX_SHEDDING));
    // given up to accept (and answer) a connection when descriptors run out
    let mut reserve = std::fs::File::open("/dev/null").ok();
    let mut conns = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.changed() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                // out of descriptors: answer the waiting client rather than leave it hanging
                if reserve.take().is_some() {
                    let next = tokio::time::timeout(Duration::from_millis(100), listener.accept());
                    if let Ok(Ok((stream, _))) = next.await {
                        if let Ok(permit) = shedding.clone().try_acquire_owned() {
                            tokio::spawn(async move {
                                shed(stream).await;
                                drop(permit);
                            });
                        }
                    }
                } else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                reserve = std::fs::File::open("/dev/null").ok();
                continue;
            }
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let Some((slot, state)) = registry.admit(limits.max_connections) else {
            if let Ok(permit) = shedding.clone().try_acquire_owned() {
                tokio::spawn(async move {
                    shed(stream).await;
                    drop(permit);
                });
            }
            continue;
        };
        conns.spawn(spawn(stream, slot, state));
    }
    conns.abort_all();
    while conns.join_next().await.is_some() {}
}

/// Serves one admitted connection until it ends, is evicted, times out, is dropped by a fault
/// rule, or the server stops.
async fn connection(
    io: Tracked,
    state: Arc<ConnState>,
    router: Router,
    mut stop: watch::Receiver<bool>,
    limits: Limits,
) {
    let ctl = ConnCtl(Arc::new(Notify::new()));
    let req_ctl = ctl.clone();
    let svc_state = state.clone();
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(req_ctl.clone());
        let mut router = router.clone();
        let state = svc_state.clone();
        state.on_request();
        async move {
            futures_util::future::poll_fn(|cx| {
                tower_service::Service::<hyper::Request<Incoming>>::poll_ready(&mut router, cx)
            })
            .await?;
            let resp = tower_service::Service::call(&mut router, req).await?;
            if resp.status() == axum::http::StatusCode::SWITCHING_PROTOCOLS {
                state.upgraded.store(true, Ordering::SeqCst);
            }
            Ok::<_, std::convert::Infallible>(
                resp.map(|inner| Body::new(Tracking { inner, state })),
            )
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades();
    tokio::select! {
        _ = conn => {}
        _ = ctl.0.notified() => {}
        _ = stop.changed() => {}
        _ = state.close.notified() => {}
        _ = expiry(&state, &limits) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_follow_the_descriptor_limit() {
        assert_eq!(Limits::for_descriptors(256).max_connections, 32);
        assert_eq!(Limits::for_descriptors(1024).max_connections, 128);
        assert_eq!(Limits::for_descriptors(20_000).max_connections, 2500);
        assert_eq!(Limits::for_descriptors(u64::MAX).max_connections, 4096);
        assert_eq!(Limits::for_descriptors(0).max_connections, 32);
    }

    #[test]
    fn waits_and_eviction_order() {
        let limits = Limits {
            max_connections: 2,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(100),
        };
        let c = ConnState::new();
        // new: the head timeout counts from the accept
        assert!(c.time_left(&limits).unwrap() <= limits.header_read_timeout);
        c.on_read();
        c.on_request();
        assert!(
            c.waiting_ms().is_none(),
            "a request in progress is never evicted"
        );
        c.on_response_done();
        // kept alive: the idle timeout
        assert!(c.time_left(&limits).unwrap() > limits.header_read_timeout);
        c.on_read();
        assert!(c.time_left(&limits).unwrap() <= limits.header_read_timeout);
        let registry = Arc::new(Registry::default());
        let (a, sa) = registry.admit(2).unwrap();
        let (_b, sb) = registry.admit(2).unwrap();
        sb.on_request();
        // full: the waiting connection makes room, the busy one stays
        let (_c, _) = registry.admit(2).unwrap();
        assert!(!lock(&registry.conns).values().any(|s| Arc::ptr_eq(s, &sa)));
        drop(a);
        let (_d, sd) = registry.admit(2).unwrap();
        sd.on_request();
        // every connection has a request in progress: no room
        assert!(registry.admit(2).is_none());
    }
}
