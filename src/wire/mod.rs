//! Sans-IO wire helpers: request descriptions, response decoding, status + body → [`Error`].

use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
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
    /// The whole URL; the path (with its query) starts at `path_at`.
    pub(crate) url: String,
    path_at: usize,
    pub(crate) headers: Vec<(HeaderName, HeaderValue)>,
    pub(crate) body: Body,
    /// Per-attempt timeout.
    pub(crate) timeout: Duration,
    /// Whole-operation deadline (budget), if any.
    pub(crate) deadline: Option<Instant>,
    /// DELETE of a sandbox: retry 409 too.
    pub(crate) retry_conflict: bool,
    /// A data-plane request (errors are mapped with the data plane's conventions).
    pub(crate) data_plane: bool,
}

impl Req {
    pub(crate) fn new(method: Method, base: &str, path: &str, timeout: Duration) -> Req {
        let mut url = String::with_capacity(base.len() + path.len());
        url.push_str(base);
        url.push_str(path);
        Req {
            method,
            url,
            path_at: base.len(),
            headers: Vec::with_capacity(4),
            body: Body::Empty,
            timeout,
            deadline: None,
            retry_conflict: false,
            data_plane: false,
        }
    }

    pub(crate) fn header(mut self, name: HeaderName, value: HeaderValue) -> Req {
        self.headers.push((name, value));
        self
    }

    /// A header from a string; a value that is not a valid header value is left out (it could
    /// only come from a server-issued token or hint, and the request fails authentication).
    pub(crate) fn header_str(self, name: HeaderName, value: &str) -> Req {
        match HeaderValue::from_str(value) {
            Ok(mut v) => {
                v.set_sensitive(true);
                self.header(name, v)
            }
            Err(_) => self,
        }
    }

    pub(crate) fn json(mut self, body: &Value) -> Req {
        // Serializing a Value cannot fail.
        self.body = Body::Json(serde_json::to_vec(body).unwrap_or_default().into());
        self.headers
            .push((CONTENT_TYPE, HeaderValue::from_static("application/json")));
        self
    }

    pub(crate) fn bytes(mut self, body: bytes::Bytes) -> Req {
        self.body = Body::Bytes(body);
        self
    }

    pub(crate) fn idempotent(&self) -> bool {
        self.method == Method::GET || self.method == Method::DELETE
    }

    /// The path and query.
    pub(crate) fn path(&self) -> &str {
        &self.url[self.path_at..]
    }

    /// What the request is, for messages: `"GET /sandboxes/abc"` (no query).
    pub(crate) fn what(&self) -> String {
        let path = self.path();
        format!("{} {}", self.method, path.split('?').next().unwrap_or(path))
    }

    /// The path with the query's values left out (`/files?path`), for logs: values can be
    /// file names or filters a caller would not want in a log.
    pub(crate) fn log_path(&self) -> String {
        let path = self.path();
        match path.split_once('?') {
            None => path.to_owned(),
            Some((p, q)) => {
                let keys: Vec<&str> = q
                    .split('&')
                    .map(|kv| kv.split('=').next().unwrap_or(kv))
                    .collect();
                format!("{p}?{}", keys.join("&"))
            }
        }
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
///
/// On the data plane (`data_plane`), an error whose body names no code gets the code of its
/// status, so that a caller can branch on [`Error::code`] whichever data plane answered (the
/// hosted one often answers a bare `{"error": "..."}`), and `exec_failed` (a command that could
/// not start) becomes [`Error::CommandStart`], as on the streamed paths.
pub(crate) fn error_from(status: u16, headers: &HeaderMap, body: &[u8], data_plane: bool) -> Error {
    let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    let (mut code, message) = parse_error_body(
        status,
        header("content-type"),
        header("x-content-type-options"),
        body,
    );
    if data_plane {
        if code.as_deref() == Some("exec_failed") {
            return Error::CommandStart {
                code: "exec_failed".to_owned(),
                message,
            };
        }
        if code.is_none() {
            code = status_code_name(status).map(str::to_owned);
        }
    }
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

/// The code a data-plane error without one gets from its status (the local backend sends the
/// same ones).
pub(crate) fn status_code_name(status: u16) -> Option<&'static str> {
    Some(match status {
        400 => "bad_request",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not_found",
        409 => "conflict",
        413 => "too_large",
        416 => "range_not_satisfiable",
        429 => "rate_limited",
        500 => "internal_error",
        502 => "bad_gateway",
        503 => "service_unavailable",
        504 => "gateway_timeout",
        507 => "sandbox_storage_full",
        _ => return None,
    })
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

/// A random (version 4) UUID.
pub(crate) fn uuid_v4() -> String {
    use rand::RngCore;
    let mut b = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Decodes base64 in either alphabet (standard `+/` or URL-safe `-_`), padding optional;
/// `None` on anything else.
pub(crate) fn base64_decode(s: &[u8]) -> Option<Vec<u8>> {
    use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
    use base64::engine::DecodePaddingMode;
    use base64::Engine;
    const CONFIG: GeneralPurposeConfig = GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true);
    const URL_SAFE: GeneralPurpose = GeneralPurpose::new(&base64::alphabet::URL_SAFE, CONFIG);
    const STANDARD: GeneralPurpose = GeneralPurpose::new(&base64::alphabet::STANDARD, CONFIG);
    if s.iter().any(|c| matches!(c, b'-' | b'_')) {
        URL_SAFE.decode(s).ok()
    } else {
        STANDARD.decode(s).ok()
    }
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
        error_from(status, &h, body.as_bytes(), false)
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
    fn data_plane_errors_carry_a_code() {
        let h = HeaderMap::new();
        let e = error_from(404, &h, br#"{"error":"file not found"}"#, true);
        assert_eq!(e.code(), Some("not_found"));
        assert_eq!(e.api_error().unwrap().message, "file not found");
        let e = error_from(
            400,
            &h,
            br#"{"error":"failed to start command","code":"exec_failed"}"#,
            true,
        );
        assert!(matches!(e, Error::CommandStart { .. }), "{e:?}");
        assert_eq!(e.code(), Some("exec_failed"));
        assert_eq!(e.status_code(), None);
        let e = error_from(404, &h, br#"{"error":"file not found"}"#, false);
        assert_eq!(
            e.code(),
            None,
            "the control plane's codes are the server's own"
        );
    }

    #[test]
    fn base64_either_alphabet() {
        assert_eq!(base64_decode(b"dXNlcjpwYXNz").unwrap(), b"user:pass");
        assert_eq!(base64_decode(b"eyJlIjoxfQ").unwrap(), br#"{"e":1}"#);
        assert_eq!(base64_decode(b"-_8=").unwrap(), [0xfb, 0xff]);
        assert_eq!(base64_decode(b"+/8").unwrap(), [0xfb, 0xff]);
        assert!(base64_decode(b"!!!").is_none());
    }

    #[test]
    fn log_paths_drop_query_values() {
        let r = Req::new(
            Method::GET,
            "http://h",
            "/files?path=%2Fsecret%2Fname&format=zip",
            Duration::from_secs(1),
        );
        assert_eq!(r.log_path(), "/files?path&format");
        assert_eq!(r.what(), "GET /files");
        assert_eq!(r.path(), "/files?path=%2Fsecret%2Fname&format=zip");
    }

    #[test]
    fn segment_encoding() {
        assert_eq!(seg("superserve/base"), "superserve%2Fbase");
        assert_eq!(seg("a b~c"), "a%20b~c");
    }
}
