//! Blocking primitives: the async transport driven on the SDK's own I/O runtime while the
//! calling thread waits, std locks, thread sleep.
//!
//! The I/O runtime is started on first use: a current-thread tokio runtime driven by one
//! thread of its own (`superserve-io`), shared by every blocking handle of the process. A call
//! runs its future on the calling thread with `Handle::block_on` (the I/O thread drives sockets
//! and timers and runs session tasks), so nothing is handed to another thread on the way in or
//! out. Streamed responses and sessions live on that runtime: dropping them closes their
//! connections at once.

use std::future::Future;
use std::io::Read;
use std::sync::OnceLock;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;

use super::transport;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::wire::{Req, Resp};

pub(crate) use transport::{binary_frame, text_frame, EventItem, ExecDial, Outcome, StdinSender};

pub(crate) fn sleep(d: Duration) {
    std::thread::sleep(d);
}

/// A mutex whose `lock()` is awaited in the async flavour and blocks here.
pub(crate) struct Mutex<T>(std::sync::Mutex<T>);

impl<T> Mutex<T> {
    pub(crate) fn new(v: T) -> Self {
        Mutex(std::sync::Mutex::new(v))
    }
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, T> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The process-wide I/O runtime of the blocking flavour: a current-thread runtime whose
/// driver (sockets, timers, spawned session tasks) runs on one thread of its own
/// (`superserve-io`); callers run their request futures on their own thread with
/// `Handle::block_on`.
fn io_runtime() -> Result<&'static tokio::runtime::Handle> {
    static RT: OnceLock<std::result::Result<tokio::runtime::Handle, String>> = OnceLock::new();
    RT.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let handle = runtime.handle().clone();
        std::thread::Builder::new()
            .name("superserve-io".into())
            .spawn(move || runtime.block_on(std::future::pending::<()>()))
            .map_err(|e| e.to_string())?;
        Ok(handle)
    })
    .as_ref()
    .map_err(|e| Error::connection(format!("cannot start the SDK's I/O runtime: {e}"), None))
}

/// `true` when this thread is running async code under tokio's cooperative scheduling (a
/// runtime's worker, or the future given to `block_on`), where blocking would stall the
/// runtime. A `spawn_blocking` thread, `block_in_place` and plain threads are fine.
///
/// Tokio has no public "may I block here?" query; what it does expose is the task budget:
/// async code runs with a finite budget, blocking contexts with none. Taking budget units one
/// by one (each restored when its guard drops, in reverse order) tells the two apart without
/// changing the budget.
fn in_async_context() -> bool {
    if tokio::runtime::Handle::try_current().is_err() {
        return false;
    }
    let mut cx = Context::from_waker(Waker::noop());
    let mut held = Vec::with_capacity(130);
    let mut constrained = false;
    for _ in 0..130 {
        match tokio::task::coop::poll_proceed(&mut cx) {
            Poll::Ready(guard) => held.push(guard),
            Poll::Pending => {
                constrained = true;
                break;
            }
        }
    }
    while let Some(guard) = held.pop() {
        drop(guard);
    }
    constrained
}

/// Runs `fut` to completion on this thread, with the I/O runtime driving its sockets and
/// timers. Fails with [`Error::BlockingInAsyncContext`] on a thread running async code.
pub(crate) fn block_on<F: Future>(fut: F) -> Result<F::Output> {
    if in_async_context() {
        return Err(Error::BlockingInAsyncContext);
    }
    Ok(io_runtime()?.block_on(fut))
}

fn run<T>(fut: impl Future<Output = Result<T>>) -> Result<T> {
    block_on(fut)?
}

/// An upload body read from a reader (on a thread of its own, a chunk at a time).
pub(crate) struct Upload(pub(crate) Box<dyn Read + Send + 'static>);

impl Upload {
    fn into_body(self) -> Result<reqwest::Body> {
        let Upload(mut reader) = self;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(4);
        std::thread::Builder::new()
            .name("superserve-upload".into())
            .spawn(move || loop {
                let mut buf = vec![0u8; 256 * 1024];
                let item = match reader.read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => {
                        buf.truncate(n);
                        Ok(Bytes::from(buf))
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => Err(e),
                };
                let failed = item.is_err();
                if tx.blocking_send(item).is_err() || failed {
                    return;
                }
            })
            .map_err(|e| Error::io("cannot start the upload reader thread", e))?;
        let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
        Ok(reqwest::Body::wrap_stream(stream))
    }
}

/// The configuration's HTTP client for the blocking flavour (one connection pool per
/// configuration, on the I/O runtime).
pub(crate) struct Http(transport::Client);

impl Http {
    pub(crate) fn for_config(config: &Config) -> Result<&Http> {
        let cell = &config.inner.blocking_http;
        if let Some(h) = cell.get() {
            return Ok(h);
        }
        // Built inside the I/O runtime so that its connections belong to it.
        let client = {
            let _guard = io_runtime()?.enter();
            transport::Client::new(config)?
        };
        let _ = cell.set(Http(client));
        cell.get()
            .ok_or_else(|| Error::connection("HTTP client unavailable", None))
    }

    pub(crate) fn fetch(
        &self,
        req: &Req,
        timeout: Duration,
        cap: u64,
        attempt: u32,
    ) -> Result<Resp> {
        run(self.0.fetch(req, timeout, cap, attempt))
    }

    pub(crate) fn open_stream(
        &self,
        req: &Req,
        upload: Option<Upload>,
        idle: Duration,
        attempt: u32,
    ) -> Result<StreamResponse> {
        let upload = upload.map(Upload::into_body).transpose()?;
        Ok(StreamResponse(run(self
            .0
            .open_stream(req, upload, idle, attempt))?))
    }
}

/// A response whose body is read chunk by chunk. Dropping it closes the connection.
pub(crate) struct StreamResponse(transport::StreamResponse);

impl StreamResponse {
    pub(crate) fn status(&self) -> u16 {
        self.0.status
    }
    pub(crate) fn headers(&self) -> &reqwest::header::HeaderMap {
        &self.0.headers
    }
    pub(crate) fn next_chunk(&mut self) -> Result<Option<Bytes>> {
        run(self.0.next_chunk())
    }
}

/// An `exec/connect` session whose I/O tasks run on the I/O runtime.
pub(crate) struct ExecSession(transport::ExecSession);

impl ExecSession {
    pub(crate) fn connect(dial: ExecDial) -> Result<ExecSession> {
        Ok(ExecSession(run(transport::ExecSession::connect(dial))?))
    }
    pub(crate) fn is_settled(&self) -> bool {
        self.0.is_settled()
    }
    pub(crate) fn stdin(&self) -> StdinSender {
        self.0.stdin()
    }
    pub(crate) fn send(&self, msg: transport::Frame) -> Result<()> {
        run(self.0.stdin().send(msg))
    }
    pub(crate) fn wait(&self) -> Outcome {
        block_on(self.0.wait())
            .unwrap_or_else(|e| Err(crate::wire::exec::Failure::Stream(e.to_string())))
    }
    pub(crate) fn events(&self) -> tokio::sync::mpsc::Receiver<EventItem> {
        self.0.events()
    }
    pub(crate) fn close(&self) {
        self.0.close();
    }
}

/// Runs `work` here: a blocking call cannot be abandoned half-way, so there is nobody to
/// outlive. (The async flavour runs it on a task of its own.)
pub(crate) fn outlive_caller<T, W, O>(work: W, _orphan: O) -> Result<T>
where
    W: Into<Result<T>>,
{
    work.into()
}
