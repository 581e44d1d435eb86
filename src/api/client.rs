use reqwest::header::{HeaderName, HeaderValue, CONTENT_TYPE};

use super::{dual, rt};

use crate::config::Config;
use crate::error::{Error, Result, TimeoutKind};
use crate::retry::{Attempt, RetryState};
use crate::wire::{self, Req, Resp};

/// Largest JSON body accepted from the control plane.
pub(crate) const MAX_JSON_BYTES: u64 = 64 * 1024 * 1024;

const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

/// Sends requests for one configuration, applying the retry policy.
#[derive(Clone)]
pub(crate) struct Api {
    pub(crate) config: Config,
}

#[dual]
impl Api {
    pub(crate) fn new(config: Config) -> Api {
        Api { config }
    }

    /// A control-plane request with the API key.
    pub(crate) fn control(&self, method: reqwest::Method, path: &str) -> Req {
        Req::new(
            method,
            &self.config.inner.base_url,
            path,
            self.config.inner.timeouts.request,
        )
        .header(X_API_KEY, self.config.api_key_header().clone())
        .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
    }

    /// Sends `req` (retrying idempotent requests per the policy) and buffers the answer.
    /// Non-2xx answers become typed errors.
    pub(crate) async fn send(&self, req: &Req) -> Result<Resp> {
        self.send_capped(req, MAX_JSON_BYTES).await
    }

    /// [`send`](Self::send) with another cap on the answer's size.
    pub(crate) async fn send_capped(&self, req: &Req, cap: u64) -> Result<Resp> {
        let http = rt::Http::for_config(&self.config)?;
        let mut retry = RetryState::new(
            &self.config.inner.retry,
            req.idempotent(),
            req.retry_conflict,
        );
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let Some(timeout) = req.attempt_timeout() else {
                return Err(Error::timeout(
                    TimeoutKind::Operation,
                    format!("{}: the time budget ran out", req.what()),
                ));
            };
            let outcome = http.fetch(req, timeout, cap, attempt).await;
            let (delay, err) = match outcome {
                Ok(resp) if resp.status < 300 => return Ok(resp),
                Ok(resp) => {
                    let err =
                        wire::error_from(resp.status, &resp.headers, &resp.body, req.data_plane);
                    if is_paused(&err) {
                        return Err(err);
                    }
                    let delay = retry.next_delay(Attempt::Status {
                        status: resp.status,
                        retry_after: resp.header("retry-after"),
                    });
                    (delay, err)
                }
                Err(e) => {
                    let seen = match &e {
                        Error::Timeout { .. } => Attempt::Timeout,
                        Error::Connection { .. } => Attempt::ConnectionError,
                        // a cap violation or other local failure: not retried
                        _ => return Err(e),
                    };
                    (retry.next_delay(seen), e)
                }
            };
            let Some(delay) = delay else {
                return Err(err);
            };
            if let Some(deadline) = req.deadline {
                if std::time::Instant::now() + delay >= deadline {
                    return Err(Error::timeout(
                        TimeoutKind::Operation,
                        format!(
                            "{}: the time budget ran out while retrying ({err})",
                            req.what()
                        ),
                    ));
                }
            }
            tracing::info!(
                attempt,
                delay_ms = delay.as_millis() as u64,
                error = %err,
                "superserve: retrying {}",
                req.what()
            );
            rt::sleep(delay).await;
        }
    }

    /// Sends `req` and returns the 2xx response with its body unread, retrying idempotent
    /// requests without an upload per the policy. Every wait is bounded by `idle`.
    pub(crate) async fn open_stream(
        &self,
        req: &Req,
        upload: Option<rt::Upload>,
        idle: std::time::Duration,
    ) -> Result<rt::StreamResponse> {
        let http = rt::Http::for_config(&self.config)?;
        if let Some(upload) = upload {
            let resp = http.open_stream(req, Some(upload), idle, 1).await?;
            return Self::check_stream(resp, req.data_plane).await;
        }
        let mut retry = RetryState::new(&self.config.inner.retry, req.idempotent(), false);
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let (delay, err) = match http.open_stream(req, None, idle, attempt).await {
                Ok(resp) if resp.status() < 300 => return Ok(resp),
                Ok(resp) => {
                    let retry_after = resp
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    let delay = retry.next_delay(Attempt::Status {
                        status: resp.status(),
                        retry_after: retry_after.as_deref(),
                    });
                    let err = match Self::check_stream(resp, req.data_plane).await {
                        Err(e) => e,
                        Ok(_) => continue,
                    };
                    if is_paused(&err) {
                        return Err(err);
                    }
                    (delay, err)
                }
                Err(e) => {
                    let seen = match &e {
                        Error::Connection { .. } => Attempt::ConnectionError,
                        _ => return Err(e),
                    };
                    (retry.next_delay(seen), e)
                }
            };
            match delay {
                Some(d) => {
                    tracing::info!(
                        attempt,
                        delay_ms = d.as_millis() as u64,
                        error = %err,
                        "superserve: retrying {}",
                        req.what()
                    );
                    rt::sleep(d).await
                }
                None => return Err(err),
            }
        }
    }

    /// Passes a 2xx response through; reads (a bounded part of) an error body and maps it.
    async fn check_stream(
        mut resp: rt::StreamResponse,
        data_plane: bool,
    ) -> Result<rt::StreamResponse> {
        if resp.status() < 300 {
            return Ok(resp);
        }
        let mut body = Vec::new();
        while body.len() < 64 * 1024 {
            match resp.next_chunk().await {
                Ok(Some(c)) => body.extend_from_slice(&c),
                _ => break,
            }
        }
        Err(wire::error_from(
            resp.status(),
            resp.headers(),
            &body,
            data_plane,
        ))
    }
}

/// A data-plane 503 that says the sandbox is paused or stopped: not transient, so a transport
/// retry would only wait; the data-plane wrapper activates the sandbox instead.
fn is_paused(err: &Error) -> bool {
    err.code() == Some("sandbox_unavailable")
}
