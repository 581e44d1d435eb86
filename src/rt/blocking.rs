//! Blocking primitives: reqwest::blocking, thread sleep, std locks, a worker thread per
//! streamed body (for idle timeouts), tungstenite exec sessions.

use std::io::Read;
use std::sync::mpsc;
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::HeaderMap;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::wire::{Req, Resp, USER_AGENT};

#[path = "blocking_session.rs"]
mod session;
pub(crate) use super::ExecDial;
pub(crate) use session::ExecSession;

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

/// An upload body read from a reader.
pub(crate) struct Upload(pub(crate) Box<dyn Read + Send + 'static>);

/// The configuration's blocking HTTP client (one connection pool per configuration).
pub(crate) struct Http {
    client: reqwest::blocking::Client,
}

impl Http {
    pub(crate) fn for_config(config: &Config) -> Result<&Http> {
        let cell = &config.inner.blocking_http;
        if let Some(h) = cell.get() {
            return Ok(h);
        }
        let client = reqwest::blocking::Client::builder()
            .user_agent(USER_AGENT)
            .connect_timeout(config.inner.timeouts.connect)
            .timeout(None)
            .pool_max_idle_per_host(20)
            .build()
            .map_err(|e| {
                Error::connection(format!("cannot build HTTP client: {e}"), Some(Box::new(e)))
            })?;
        let _ = cell.set(Http { client });
        cell.get()
            .ok_or_else(|| Error::connection("HTTP client unavailable", None))
    }

    fn builder(&self, req: &Req) -> reqwest::blocking::RequestBuilder {
        super::request_builder!(self.client, req)
    }

    /// Sends a request whose whole exchange must finish within `timeout`, and buffers the
    /// answer (at most `cap` bytes).
    pub(crate) fn fetch(&self, req: &Req, timeout: Duration, cap: u64) -> Result<Resp> {
        let mut resp = self
            .builder(req)
            .timeout(timeout)
            .send()
            .map_err(|e| crate::rt::transport_error(&req.what, e))?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let mut body = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = resp.read(&mut buf).map_err(|e| io_error(&req.what, e))?;
            if n == 0 {
                break;
            }
            super::push_capped(&mut body, &buf[..n], cap, &req.what)?;
        }
        Ok(Resp {
            status,
            headers,
            body: Bytes::from(body),
        })
    }

    /// Sends a request whose body is read as it arrives; every wait (for the headers, for each
    /// chunk) is bounded by `idle`.
    pub(crate) fn open_stream(
        &self,
        req: &Req,
        upload: Option<Upload>,
        idle: Duration,
    ) -> Result<StreamResponse> {
        let mut builder = self.builder(req);
        if let Some(Upload(reader)) = upload {
            builder = builder
                .header("content-type", "application/octet-stream")
                .body(reqwest::blocking::Body::new(reader));
        }
        let (tx, rx) = mpsc::sync_channel::<Msg>(8);
        let what = req.what.clone();
        std::thread::Builder::new()
            .name("superserve-body".into())
            .spawn(move || body_worker(builder, tx, what))
            .map_err(|e| Error::io("cannot start a body reader thread", e))?;
        match rx.recv_timeout(idle) {
            Ok(Msg::Head(status, headers)) => Ok(StreamResponse {
                status,
                headers,
                rx,
                idle,
                what: req.what.clone(),
            }),
            Ok(Msg::Err(e)) => Err(e),
            Ok(_) => Err(Error::connection(
                format!("{}: no response", req.what),
                None,
            )),
            Err(mpsc::RecvTimeoutError::Timeout) => Err(Error::timeout(format!(
                "{}: no response within {}s",
                req.what,
                idle.as_secs_f64()
            ))),
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(Error::connection(
                format!("{}: no response", req.what),
                None,
            )),
        }
    }
}

enum Msg {
    Head(u16, HeaderMap),
    Chunk(Bytes),
    Err(Error),
}

fn body_worker(
    builder: reqwest::blocking::RequestBuilder,
    tx: mpsc::SyncSender<Msg>,
    what: String,
) {
    let mut resp = match builder.send() {
        Ok(r) => r,
        Err(e) => {
            let _ = tx.send(Msg::Err(crate::rt::transport_error(&what, e)));
            return;
        }
    };
    if tx
        .send(Msg::Head(resp.status().as_u16(), resp.headers().clone()))
        .is_err()
    {
        return;
    }
    loop {
        let mut buf = vec![0u8; 64 * 1024];
        match resp.read(&mut buf) {
            Ok(0) => return, // dropping tx tells the reader the body ended
            Ok(n) => {
                buf.truncate(n);
                if tx.send(Msg::Chunk(Bytes::from(buf))).is_err() {
                    return;
                }
            }
            Err(e) => {
                let _ = tx.send(Msg::Err(io_error(&what, e)));
                return;
            }
        }
    }
}

/// A response whose body is read chunk by chunk.
pub(crate) struct StreamResponse {
    pub(crate) status: u16,
    pub(crate) headers: HeaderMap,
    rx: mpsc::Receiver<Msg>,
    idle: Duration,
    what: String,
}

impl StreamResponse {
    /// The next chunk of the body, `None` at its end; waits at most the idle timeout.
    pub(crate) fn next_chunk(&mut self) -> Result<Option<Bytes>> {
        match self.rx.recv_timeout(self.idle) {
            Ok(Msg::Chunk(c)) => Ok(Some(c)),
            Ok(Msg::Err(e)) => Err(e),
            Ok(Msg::Head(..)) => Ok(None),
            Err(mpsc::RecvTimeoutError::Disconnected) => Ok(None),
            Err(mpsc::RecvTimeoutError::Timeout) => Err(Error::timeout(format!(
                "{}: no data for {}s",
                self.what,
                self.idle.as_secs_f64()
            ))),
        }
    }
}

fn io_error(what: &str, e: std::io::Error) -> Error {
    let timed_out = e.kind() == std::io::ErrorKind::TimedOut
        || e.get_ref()
            .and_then(|i| i.downcast_ref::<reqwest::Error>())
            .is_some_and(reqwest::Error::is_timeout);
    if timed_out {
        Error::timeout(format!("{what}: reading the response timed out"))
    } else {
        Error::connection(
            format!("{what}: reading the response failed: {e}"),
            Some(Box::new(e)),
        )
    }
}
