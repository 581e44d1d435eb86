//! Async primitives: reqwest, tokio::time, tokio::sync, tokio-tungstenite exec sessions.

use std::time::Duration;

use bytes::Bytes;
use reqwest::header::HeaderMap;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::wire::{Req, Resp, USER_AGENT};

#[path = "nonblocking_session.rs"]
mod session;
pub(crate) use super::ExecDial;
pub(crate) use session::ExecSession;

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
pub(crate) struct Http {
    client: reqwest::Client,
}

impl Http {
    pub(crate) fn for_config(config: &Config) -> Result<&Http> {
        let cell = &config.inner.async_http;
        if let Some(h) = cell.get() {
            return Ok(h);
        }
        let client = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .connect_timeout(config.inner.timeouts.connect)
            .pool_max_idle_per_host(20)
            .build()
            .map_err(|e| {
                Error::connection(format!("cannot build HTTP client: {e}"), Some(Box::new(e)))
            })?;
        let _ = cell.set(Http { client });
        cell.get()
            .ok_or_else(|| Error::connection("HTTP client unavailable", None))
    }

    fn builder(&self, req: &Req) -> reqwest::RequestBuilder {
        super::request_builder!(self.client, req)
    }

    /// Sends a request whose whole exchange must finish within `timeout`, and buffers the
    /// answer (at most `cap` bytes).
    pub(crate) async fn fetch(&self, req: &Req, timeout: Duration, cap: u64) -> Result<Resp> {
        let mut resp = self
            .builder(req)
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| crate::rt::transport_error(&req.what, e))?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| {
            crate::rt::transport_error(&format!("{}: reading the response", req.what), e)
        })? {
            super::push_capped(&mut body, &chunk, cap, &req.what)?;
        }
        Ok(Resp {
            status,
            headers,
            body: Bytes::from(body),
        })
    }

    /// Sends a request whose body is read as it arrives; every wait (for the headers, for each
    /// chunk) is bounded by `idle`.
    pub(crate) async fn open_stream(
        &self,
        req: &Req,
        upload: Option<Upload>,
        idle: Duration,
    ) -> Result<StreamResponse> {
        let mut builder = self.builder(req);
        if let Some(Upload(body)) = upload {
            builder = builder
                .header("content-type", "application/octet-stream")
                .body(body);
        }
        let resp = match tokio::time::timeout(idle, builder.send()).await {
            Err(_) => {
                return Err(Error::timeout(format!(
                    "{}: no response within {}s",
                    req.what,
                    idle.as_secs_f64()
                )))
            }
            Ok(r) => r.map_err(|e| crate::rt::transport_error(&req.what, e))?,
        };
        Ok(StreamResponse {
            status: resp.status().as_u16(),
            headers: resp.headers().clone(),
            inner: resp,
            idle,
            what: req.what.clone(),
        })
    }
}

/// A response whose body is read chunk by chunk.
pub(crate) struct StreamResponse {
    pub(crate) status: u16,
    pub(crate) headers: HeaderMap,
    inner: reqwest::Response,
    idle: Duration,
    what: String,
}

impl StreamResponse {
    /// The next chunk of the body, `None` at its end; waits at most the idle timeout.
    pub(crate) async fn next_chunk(&mut self) -> Result<Option<Bytes>> {
        match tokio::time::timeout(self.idle, self.inner.chunk()).await {
            Err(_) => Err(Error::timeout(format!(
                "{}: no data for {}s",
                self.what,
                self.idle.as_secs_f64()
            ))),
            Ok(r) => r.map_err(|e| {
                crate::rt::transport_error(&format!("{}: reading the response", self.what), e)
            }),
        }
    }
}
