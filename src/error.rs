//! The crate's one error type.
//!
//! Every fallible call returns [`Result<T>`](crate::Result). [`Error`] mirrors the error
//! hierarchy of the official SDKs (authentication, validation, not found, conflict, rate limit,
//! timeout, server, build) plus transport-level kinds (connection, decode, stream). Match on the
//! variant, or use the predicates ([`Error::status_code`], [`Error::code`],
//! [`Error::is_not_found`], ...).
//!
//! No transport type (reqwest, tungstenite) appears in the public API; the underlying cause, when
//! there is one, is available through [`std::error::Error::source`]. Messages never contain the
//! API key, access tokens or secret values.

use std::fmt;
use std::time::Duration;

/// Shorthand for `std::result::Result<T, superserve::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The details of an error answered by the API (or raised client-side with an HTTP-like status).
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ApiError {
    /// HTTP status code of the response (client-side validation uses 400, a missing key 401).
    pub status: u16,
    /// Machine-readable error code from the body (`"not_found"`, `"rate_limited"`, ...), if any.
    pub code: Option<String>,
    /// Human-readable message (from the body; at most 500 characters of a text body).
    pub message: String,
}

impl ApiError {
    pub(crate) fn new(status: u16, code: Option<&str>, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code: code.map(str::to_owned),
            message: message.into(),
        }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (HTTP {}", self.message, self.status)?;
        if let Some(code) = &self.code {
            write!(f, ", code {code}")?;
        }
        f.write_str(")")
    }
}

impl fmt::Debug for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiError")
            .field("status", &self.status)
            .field("code", &self.code)
            .field("message", &self.message)
            .finish()
    }
}

/// Every error this crate returns.
///
/// ```
/// # fn demo(r: superserve::Result<()>) {
/// match r {
///     Err(superserve::Error::NotFound(e)) => eprintln!("gone: {}", e.message),
///     Err(e) if e.is_retryable() => eprintln!("try again later: {e}"),
///     Err(e) => eprintln!("failed: {e}"),
///     Ok(()) => {}
/// }
/// # }
/// ```
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// 401/403 from the API, or no API key configured.
    #[error("authentication failed: {0}")]
    Authentication(ApiError),
    /// 400 from the API, or input rejected before any request was sent.
    #[error("invalid request: {0}")]
    Validation(ApiError),
    /// 404: the sandbox, file, template, ... does not exist.
    #[error("not found: {0}")]
    NotFound(ApiError),
    /// 409: the resource is in a state that does not allow the operation.
    #[error("conflict: {0}")]
    Conflict(ApiError),
    /// 429: too many requests (`code` tells which limit: `rate_limited`, `too_many_sandboxes`, ...).
    #[error("rate limited: {error}")]
    RateLimit {
        /// The API's answer.
        error: ApiError,
        /// The server's `Retry-After`, when it sent one.
        retry_after: Option<Duration>,
    },
    /// 5xx from the API (status kept: 500, 502, 503, 504, 507, ...).
    #[error("server error: {0}")]
    Server(ApiError),
    /// Any other non-2xx status (405, 413, 422, ...).
    #[error("unexpected API error: {0}")]
    Api(ApiError),
    /// A request, stream or wait ran out of time.
    #[error("timed out: {message}")]
    Timeout {
        /// What timed out.
        message: String,
    },
    /// A template build failed.
    #[error("build failed: {message} (code {code})")]
    Build {
        /// Build error code (`step_failed`, `image_pull_failed`, ..., `build_failed`).
        code: String,
        /// The build's error message.
        message: String,
        /// The failed build, when known.
        build_id: Option<String>,
        /// The template, when known.
        template_id: Option<String>,
    },
    /// The server could not be reached or the connection broke.
    #[error("connection error: {message}")]
    Connection {
        /// What failed.
        message: String,
        /// The transport's error.
        #[source]
        source: Option<BoxError>,
    },
    /// A response could not be understood (malformed JSON, missing field, HTML error page, ...).
    #[error("invalid API response: {message}")]
    Decode {
        /// What was wrong.
        message: String,
        /// The start of the raw body (at most 500 characters), for diagnosis.
        body: String,
    },
    /// A stream or session ended without the server's `finished` event, or broke mid-way.
    #[error("stream error: {message}")]
    Stream {
        /// What happened.
        message: String,
    },
    /// Local I/O failed (the reader of an upload, the writer of a download).
    #[error("I/O error: {message}")]
    Io {
        /// What failed.
        message: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A sandbox operation ended in a state that has no HTTP status (for example a pause that
    /// ended with the sandbox in another state).
    #[error("{message}")]
    Sandbox {
        /// What happened.
        message: String,
    },
    /// The handle was used after [`kill`](crate::blocking::Sandbox::kill).
    #[error("sandbox '{id}' has been deleted; create or connect to another sandbox")]
    SandboxDeleted {
        /// The sandbox's id.
        id: String,
    },
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Display never contains secrets; Debug shows the same plus the variant.
        let variant = match self {
            Error::Authentication(_) => "Authentication",
            Error::Validation(_) => "Validation",
            Error::NotFound(_) => "NotFound",
            Error::Conflict(_) => "Conflict",
            Error::RateLimit { .. } => "RateLimit",
            Error::Server(_) => "Server",
            Error::Api(_) => "Api",
            Error::Timeout { .. } => "Timeout",
            Error::Build { .. } => "Build",
            Error::Connection { .. } => "Connection",
            Error::Decode { .. } => "Decode",
            Error::Stream { .. } => "Stream",
            Error::Io { .. } => "Io",
            Error::Sandbox { .. } => "Sandbox",
            Error::SandboxDeleted { .. } => "SandboxDeleted",
        };
        write!(f, "Error::{variant}({self})")
    }
}

impl Error {
    /// The API's part of the error, for errors answered by the API (or raised client-side with an
    /// HTTP-like status).
    pub fn api_error(&self) -> Option<&ApiError> {
        match self {
            Error::Authentication(e)
            | Error::Validation(e)
            | Error::NotFound(e)
            | Error::Conflict(e)
            | Error::Server(e)
            | Error::Api(e)
            | Error::RateLimit { error: e, .. } => Some(e),
            _ => None,
        }
    }

    /// HTTP status code, for errors that carry one.
    pub fn status_code(&self) -> Option<u16> {
        self.api_error().map(|e| e.status)
    }

    /// The API's machine-readable error code (`"not_found"`, `"sandbox_pausing"`, ...).
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Build { code, .. } => Some(code),
            _ => self.api_error().and_then(|e| e.code.as_deref()),
        }
    }

    /// `true` for 404 errors.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound(_))
    }

    /// `true` for timeouts.
    pub fn is_timeout(&self) -> bool {
        matches!(self, Error::Timeout { .. })
    }

    /// `Retry-After` of a rate-limit error.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::RateLimit { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// `true` when trying the same call again later may succeed (429, 502, 503, 504, connection
    /// errors).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::RateLimit { .. } | Error::Connection { .. } => true,
            Error::Server(e) => matches!(e.status, 502..=504),
            _ => false,
        }
    }

    pub(crate) fn validation(message: impl Into<String>) -> Self {
        Error::Validation(ApiError::new(400, Some("validation_error"), message))
    }

    pub(crate) fn decode(message: impl Into<String>, body: &[u8]) -> Self {
        Error::Decode {
            message: message.into(),
            body: snippet(body),
        }
    }

    pub(crate) fn connection(message: impl Into<String>, source: Option<BoxError>) -> Self {
        Error::Connection {
            message: message.into(),
            source,
        }
    }

    pub(crate) fn timeout(message: impl Into<String>) -> Self {
        Error::Timeout {
            message: message.into(),
        }
    }

    pub(crate) fn io(message: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            message: message.into(),
            source,
        }
    }

    pub(crate) fn stream(message: impl Into<String>) -> Self {
        Error::Stream {
            message: message.into(),
        }
    }
}

/// First 500 characters of a body, lossily decoded.
pub(crate) fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(2048)]);
    text.chars().take(500).collect()
}
