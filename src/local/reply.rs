//! What both planes' handlers answer with: the control plane's JSON errors (`ApiError`), the
//! data plane's boxd-style errors with their codes, Go-style text errors, JSON bodies; and the
//! two request helpers they share (header values as text, form-encoded queries).

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::error::ApiError;

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
