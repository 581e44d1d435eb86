//! HTTP plumbing shared by both listeners: the accept loop ([`serve`]: HTTP/1 with upgrades,
//! connection caps, timeouts, shedding, and the ability to drop a connection on cue), the
//! journal + fault middleware, response helpers.

mod serve;

pub(crate) use serve::{serve, Limits, DEFAULT_HEADER_READ_TIMEOUT, DEFAULT_IDLE_TIMEOUT};

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use tokio::sync::Notify;

use super::app::App;
use super::error::ApiError;
use super::fault::{lock, Fault};
use super::journal::{Plane, RecordedRequest, Slot};

/// Per-connection handle: notifying it drops the TCP connection without a response.
#[derive(Clone)]
pub(crate) struct ConnCtl(Arc<Notify>);

/// Request extension set by a [`Fault::CutStream`] rule.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CutAfter(pub u32);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        let mut resp = (self.status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        resp
    }
}

/// A JSON response.
pub(crate) fn json<T: serde::Serialize>(status: StatusCode, body: &T) -> Response {
    (status, axum::Json(body)).into_response()
}

/// A `text/plain` error as Go's `http.Error` writes it (newline-terminated, `nosniff`).
pub(crate) fn text(status: StatusCode, message: &str) -> Response {
    let mut resp = (status, format!("{message}\n")).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}

/// A data-plane JSON error: boxd's `{"error":"<message>"}` plus the `code` a caller can branch
/// on (the status's code: `bad_request`, `unauthorized`, `not_found`, ...).
pub(crate) fn boxd_error(status: StatusCode, message: &str) -> Response {
    boxd_error_code(status, status_code_name(status), message)
}

/// [`boxd_error`] with an explicit code (`exec_failed`, ...).
pub(crate) fn boxd_error_code(status: StatusCode, code: &str, message: &str) -> Response {
    json(
        status,
        &serde_json::json!({ "error": message, "code": code }),
    )
}

/// The code of a data-plane error that has no more specific one: the one the SDK gives
/// such an error.
fn status_code_name(status: StatusCode) -> &'static str {
    crate::wire::status_code_name(status.as_u16()).unwrap_or("internal_error")
}

/// Decodes a form-encoded query string (`+` is a space) into pairs, in order.
pub(crate) fn form_pairs(query: &str) -> Vec<(String, String)> {
    fn decode(s: &str) -> String {
        let b = s.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < b.len() => {
                    let hex = std::str::from_utf8(&b[i + 1..i + 3])
                        .ok()
                        .and_then(|h| u8::from_str_radix(h, 16).ok());
                    match hex {
                        Some(v) => {
                            out.push(v);
                            i += 3;
                            continue;
                        }
                        None => out.push(b'%'),
                    }
                }
                c => out.push(c),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(p), String::new()),
        })
        .collect()
}

fn capture_body(req: &mut Request, app: Arc<App>, slot: Slot) {
    let body = std::mem::replace(req.body_mut(), Body::empty());
    let stream = body.into_data_stream().map(move |chunk| {
        if let Ok(bytes) = &chunk {
            app.journal.capture(&slot, bytes);
        }
        chunk
    });
    *req.body_mut() = Body::from_stream(stream);
}

fn is_streaming(plane: Plane, method: &str, path: &str) -> bool {
    plane == Plane::Data
        && ((method == "POST" && path == "/exec/stream")
            || (method == "GET" && path == "/exec/connect"))
}

/// Journals the request, applies a matching fault rule, and records the response status.
pub(crate) async fn observe(
    State((app, plane)): State<(Arc<App>, Plane)>,
    mut req: Request,
    next: Next,
) -> Response {
    let path = req.uri().path().to_owned();
    if plane == Plane::Control && path.starts_with("/_local/") {
        return next.run(req).await;
    }
    let method = req.method().as_str().to_owned();
    let headers = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let slot = app.journal.record(RecordedRequest {
        plane,
        method: method.clone(),
        path: path.clone(),
        query: req.uri().query().unwrap_or("").to_owned(),
        headers,
        body: Vec::new(),
        status: 0,
    });
    // bodies that carry secret values are never kept
    let carries_secret = plane == Plane::Control
        && (path == "/secrets" || path.starts_with("/secrets/"))
        && (method == "POST" || method == "PATCH");
    if carries_secret {
        app.journal.capture(&slot, b"<redacted: secret value>");
    } else {
        capture_body(&mut req, app.clone(), slot.clone());
    }
    let fault = app
        .faults
        .take(&method, &path, is_streaming(plane, &method, &path));
    let resp = match fault {
        None => next.run(req).await,
        Some(Fault::CutStream { after_events }) => {
            req.extensions_mut().insert(CutAfter(after_events));
            next.run(req).await
        }
        Some(Fault::DelayResponse { millis }) => {
            let resp = next.run(req).await;
            tokio::time::sleep(std::time::Duration::from_millis(millis.min(600_000))).await;
            resp
        }
        Some(Fault::DropConnection) => {
            if let Some(ctl) = req.extensions().get::<ConnCtl>() {
                ctl.0.notify_one();
                // The connection task drops this request (and the socket) now.
                std::future::pending::<()>().await;
            }
            ApiError::internal("cannot drop this connection").into_response()
        }
        Some(Fault::RateLimited { retry_after_secs }) => {
            let mut e = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "rate limit exceeded (injected fault)",
            );
            e.retry_after = Some(retry_after_secs);
            e.into_response()
        }
        Some(Fault::Status { status, code }) => {
            let status = StatusCode::from_u16(status)
                .ok()
                .filter(|s| (200..=599).contains(&s.as_u16()))
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            ApiError::new(status, &code, format!("injected fault: {status}")).into_response()
        }
    };
    lock(&slot).status = resp.status().as_u16();
    resp
}

/// Control-plane authentication (everything but `/health`).
pub(crate) async fn require_api_key(
    State(app): State<Arc<App>>,
    req: Request,
    next: Next,
) -> Response {
    if req.uri().path() == "/health" {
        return next.run(req).await;
    }
    let ok = req
        .headers()
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|k| super::ident::ct_eq(k.trim(), &app.api_key));
    if ok {
        next.run(req).await
    } else {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "auth_failed",
            "missing or invalid API key (X-API-Key)",
        )
        .into_response()
    }
}

/// A header's value as text.
pub(crate) fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_decoding() {
        let p = form_pairs("metadata.env=prod+x&status=active%2Cpaused&path=%2Fa%20b&flag&bad=%zz");
        assert_eq!(
            p,
            vec![
                ("metadata.env".to_owned(), "prod x".to_owned()),
                ("status".to_owned(), "active,paused".to_owned()),
                ("path".to_owned(), "/a b".to_owned()),
                ("flag".to_owned(), String::new()),
                ("bad".to_owned(), "%zz".to_owned()),
            ]
        );
    }
}
