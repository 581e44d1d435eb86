//! Sans-IO wire helpers: request descriptions, response decoding, status + body → [`Error`].

use std::time::{Duration, Instant};

use reqwest::header::HeaderMap;
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::{snippet, ApiError, Error, Result};

pub(crate) mod exec;
pub(crate) mod hint;
pub(crate) mod sse;
pub(crate) mod utf8;
use crate::retry::parse_retry_after;

pub(crate) const USER_AGENT: &str = concat!("superserve-rust/", env!("CARGO_PKG_VERSION"));

/// Request body.
pub(crate) enum Body {
    Empty,
    Json(bytes::Bytes),
    Bytes(bytes::Bytes),
}

/// One HTTP request, described without I/O.
pub(crate) struct Req {
    pub(crate) method: Method,
    pub(crate) url: String,
    pub(crate) headers: Vec<(&'static str, String)>,
    pub(crate) body: Body,
    /// Per-attempt timeout.
    pub(crate) timeout: Duration,
    /// Whole-operation deadline (budget), if any.
    pub(crate) deadline: Option<Instant>,
    /// DELETE of a sandbox: retry 409 too.
    pub(crate) retry_conflict: bool,
    /// What the request is, for messages (`"GET /sandboxes"`).
    pub(crate) what: String,
}

impl Req {
    pub(crate) fn new(method: Method, base: &str, path: &str, timeout: Duration) -> Req {
        let what = format!("{method} {}", path.split('?').next().unwrap_or(path));
        Req {
            method,
            url: format!("{base}{path}"),
            headers: Vec::new(),
            body: Body::Empty,
            timeout,
            deadline: None,
            retry_conflict: false,
            what,
        }
    }

    pub(crate) fn header(mut self, name: &'static str, value: impl Into<String>) -> Req {
        self.headers.push((name, value.into()));
        self
    }

    pub(crate) fn json(mut self, body: &Value) -> Req {
        // Serializing a Value cannot fail.
        self.body = Body::Json(serde_json::to_vec(body).unwrap_or_default().into());
        self
    }

    pub(crate) fn bytes(mut self, body: bytes::Bytes) -> Req {
        self.body = Body::Bytes(body);
        self
    }

    pub(crate) fn idempotent(&self) -> bool {
        self.method == Method::GET || self.method == Method::DELETE
    }

    /// Per-attempt timeout bounded by the deadline; `None` once the deadline has passed.
    pub(crate) fn attempt_timeout(&self) -> Option<Duration> {
        match self.deadline {
            None => Some(self.timeout),
            Some(d) => {
                let left = d.checked_duration_since(Instant::now())?;
                (!left.is_zero()).then_some(self.timeout.min(left))
            }
        }
    }
}

/// A buffered response.
pub(crate) struct Resp {
    pub(crate) status: u16,
    pub(crate) headers: HeaderMap,
    pub(crate) body: bytes::Bytes,
}

impl Resp {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Decodes a JSON body into `T`.
    pub(crate) fn json<T: DeserializeOwned>(&self, what: &str) -> Result<T> {
        decode_json(&self.body, what)
    }

    /// `true` for 204 or an empty 2xx body.
    pub(crate) fn is_empty(&self) -> bool {
        self.status == 204 || self.body.iter().all(u8::is_ascii_whitespace)
    }
}

pub(crate) fn decode_json<T: DeserializeOwned>(body: &[u8], what: &str) -> Result<T> {
    serde_json::from_slice(body).map_err(|e| Error::decode(format!("{what}: {e}"), body))
}

/// Percent-encodes one path segment (everything but unreserved characters).
pub(crate) fn seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Maps a non-2xx response to the typed error (protocol §7).
pub(crate) fn error_from(status: u16, headers: &HeaderMap, body: &[u8]) -> Error {
    let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    let (code, message) = parse_error_body(
        status,
        header("content-type"),
        header("x-content-type-options"),
        body,
    );
    let api = ApiError {
        status,
        code,
        message,
    };
    match status {
        400 => Error::Validation(api),
        401 | 403 => Error::Authentication(api),
        404 => Error::NotFound(api),
        409 => Error::Conflict(api),
        429 => Error::RateLimit {
            error: api,
            retry_after: header("retry-after").and_then(parse_retry_after),
        },
        500.. => Error::Server(api),
        _ => Error::Api(api),
    }
}

/// The three JSON error shapes, then text (protocol §7.1).
fn parse_error_body(
    status: u16,
    content_type: Option<&str>,
    nosniff: Option<&str>,
    body: &[u8],
) -> (Option<String>, String) {
    if let Ok(Value::Object(obj)) = serde_json::from_slice::<Value>(body) {
        match obj.get("error") {
            Some(Value::Object(err)) => {
                let code = err.get("code").and_then(Value::as_str).map(str::to_owned);
                let message = err
                    .get("message")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .unwrap_or_else(|| format!("API error ({status})"));
                return (code, message);
            }
            Some(Value::String(s)) => {
                let code = obj.get("code").and_then(Value::as_str).map(str::to_owned);
                return (code, s.clone());
            }
            _ => {}
        }
        if let Some(Value::String(m)) = obj.get("message") {
            let code = obj.get("code").and_then(Value::as_str).map(str::to_owned);
            return (code, m.clone());
        }
    }
    let text = snippet(body);
    let is_plain = content_type.is_some_and(|c| c.starts_with("text/plain"));
    if status == 503
        && is_plain
        && nosniff.is_some_and(|v| v.eq_ignore_ascii_case("nosniff"))
        && (body == b"sandbox is paused\n" || body == b"sandbox is stopped\n")
    {
        return (
            Some("sandbox_unavailable".to_owned()),
            text.trim().to_owned(),
        );
    }
    let trimmed = text.trim();
    if trimmed.is_empty() {
        (None, format!("API error ({status})"))
    } else {
        (None, trimmed.to_owned())
    }
}

/// Decodes base64 in either alphabet (standard `+/` or URL-safe `-_`), padding optional;
/// `None` on any other character.
pub(crate) fn base64_decode(s: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for &c in s {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' | b'+' => 62,
            b'_' | b'/' => 63,
            b'=' => break,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn err(status: u16, ct: &str, body: &str) -> Error {
        let mut h = HeaderMap::new();
        h.insert("content-type", HeaderValue::from_str(ct).unwrap());
        h.insert(
            "x-content-type-options",
            HeaderValue::from_static("nosniff"),
        );
        h.insert("retry-after", HeaderValue::from_static("3"));
        error_from(status, &h, body.as_bytes())
    }

    #[test]
    fn error_shapes() {
        let e = err(
            404,
            "application/json",
            r#"{"error":{"code":"not_found","message":"no such sandbox"}}"#,
        );
        assert!(e.is_not_found());
        assert_eq!(e.code(), Some("not_found"));
        assert_eq!(e.status_code(), Some(404));
        let e = err(404, "application/json", r#"{"error":"file not found"}"#);
        assert_eq!(e.api_error().unwrap().message, "file not found");
        assert_eq!(e.code(), None);
        let e = err(
            400,
            "application/json",
            r#"{"code":"invalid_argument","message":"bad x"}"#,
        );
        assert!(matches!(e, Error::Validation(_)));
        assert_eq!(e.code(), Some("invalid_argument"));
        let e = err(503, "text/plain; charset=utf-8", "sandbox is paused\n");
        assert_eq!(e.code(), Some("sandbox_unavailable"));
        let e = err(502, "text/html", "<html><body>Bad Gateway</body></html>");
        assert!(matches!(e, Error::Server(_)));
        assert!(e.to_string().contains("Bad Gateway"));
        let e = err(
            429,
            "application/json",
            r#"{"error":{"code":"too_many_sandboxes","message":"limit"}}"#,
        );
        assert_eq!(e.retry_after(), Some(Duration::from_secs(3)));
        assert_eq!(e.code(), Some("too_many_sandboxes"));
        let e = err(418, "text/plain", "");
        assert!(matches!(e, Error::Api(_)));
        assert!(e.to_string().contains("API error (418)"));
        let e = err(500, "application/json", "[1,2]");
        assert_eq!(e.api_error().unwrap().message, "[1,2]");
        let long = "x".repeat(2000);
        assert_eq!(
            err(500, "text/plain", &long)
                .api_error()
                .unwrap()
                .message
                .len(),
            500
        );
    }

    #[test]
    fn segment_encoding() {
        assert_eq!(seg("superserve/base"), "superserve%2Fbase");
        assert_eq!(seg("a b~c"), "a%20b~c");
    }
}
