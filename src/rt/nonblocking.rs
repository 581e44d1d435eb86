//! Async primitives: the transport on the caller's tokio runtime, tokio::time, tokio::sync.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;

use super::transport;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::wire::{Req, Resp};

pub(crate) use transport::{binary_frame, text_frame, EventItem, ExecDial, Outcome, StdinSender};

pub(crate) async fn sleep(d: Duration) {
    tokio::time::sleep(d).await;
}

/// A mutex held across awaits (single-flight token refresh).
pub(crate) struct Mutex<T>(tokio::sync::Mutex<T>);

impl<T> Mutex<T> {
    pub(crate) fn new(v: T) -> Self {
        Mutex(tokio::sync::Mutex::new(v))
    }
    pub(crate) async fn lock(&self) -> tokio::sync::MutexGuard<'_, T> {
        self.0.lock().await
    }
}

/// An upload body read from an async reader.
pub(crate) struct Upload(pub(crate) reqwest::Body);

/// The configuration's async HTTP client (one connection pool per configuration).
pub(crate) struct Http(transport::Client);

impl Http {
    pub(crate) fn for_config(config: &Config) -> Result<&Http> {
        let cell = &config.inner.async_http;
        if let Some(h) = cell.get() {
            return Ok(h);
        }
        let _ = cell.set(Http(transport::Client::new(config)?));
        cell.get()
            .ok_or_else(|| Error::connection("HTTP client unavailable", None))
    }

    pub(crate) async fn fetch(
        &self,
        req: &Req,
        timeout: Duration,
        cap: u64,
        attempt: u32,
    ) -> Result<Resp> {
        self.0.fetch(req, timeout, cap, attempt).await
    }

    pub(crate) async fn open_stream(
        &self,
        req: &Req,
        upload: Option<Upload>,
        idle: Duration,
        attempt: u32,
    ) -> Result<StreamResponse> {
        let upload = upload.map(|Upload(b)| b);
        Ok(StreamResponse(
            self.0.open_stream(req, upload, idle, attempt).await?,
        ))
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
    pub(crate) async fn next_chunk(&mut self) -> Result<Option<Bytes>> {
        self.0.next_chunk().await
    }
}

/// An `exec/connect` session on the caller's runtime.
pub(crate) struct ExecSession(transport::ExecSession);

impl ExecSession {
    pub(crate) async fn connect(dial: ExecDial) -> Result<ExecSession> {
        Ok(ExecSession(transport::ExecSession::connect(dial).await?))
    }
    pub(crate) fn is_settled(&self) -> bool {
        self.0.is_settled()
    }
    pub(crate) fn stdin(&self) -> StdinSender {
        self.0.stdin()
    }
    pub(crate) async fn send(&self, msg: transport::Frame) -> Result<()> {
        self.0.stdin().send(msg).await
    }
    pub(crate) async fn wait(&self) -> Outcome {
        self.0.wait().await
    }
    pub(crate) fn events(&self) -> tokio::sync::mpsc::Receiver<EventItem> {
        self.0.events()
    }
    pub(crate) async fn close(&self) {
        self.0.close();
    }
}

/// Runs `work` on a task of its own, so that it completes even if the caller's future is
/// dropped; when nobody is left to receive its output, `orphan` gets it (for cleanup).
pub(crate) async fn outlive_caller<T, W, O, OF>(work: W, orphan: O) -> Result<T>
where
    T: Send + 'static,
    W: Future<Output = Result<T>> + Send + 'static,
    O: FnOnce(T) -> OF + Send + 'static,
    OF: Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let result = work.await;
        if let Err(Ok(value)) = tx.send(result) {
            orphan(value).await;
        }
    });
    rx.await
        .unwrap_or_else(|_| Err(Error::stream("the request task ended without an answer")))
}
