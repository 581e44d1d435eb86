//! The crate's one error type.
//!
//! Every fallible call returns [`Result<T>`](crate::Result). [`Error`] mirrors the error
//! hierarchy of the official SDKs (authentication, validation, not found, conflict, rate limit,
//! timeout, server, build) plus kinds of its own (invalid input, configuration, a command that
//! could not start, connection, decode, stream, ...). Match on the variant, or use the
//! predicates ([`Error::status_code`], [`Error::code`], [`Error::timeout_kind`],
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

/// The details of an error answered by the API: its status, code and message.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ApiError {
    /// HTTP status code of the response.
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

/// Which limit a [`Error::Timeout`] ran into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TimeoutKind {
    /// Opening a connection (or a WebSocket handshake) took longer than
    /// [`Timeouts::connect`](crate::Timeouts::connect).
    Connect,
    /// One request (an attempt, body included) took longer than its timeout: the configured
    /// [`Timeouts::request`](crate::Timeouts::request), a command's timeout plus a margin, or a
    /// file transfer's wait.
    Request,
    /// A streamed response (command output, a download) sent nothing for longer than its idle
    /// limit.
    StreamIdle,
    /// A whole operation's budget ran out (waiting for a pause, a resume, a build, a snapshot),
    /// retries and polling included.
    Operation,
}

impl fmt::Display for TimeoutKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TimeoutKind::Connect => "connect",
            TimeoutKind::Request => "request",
            TimeoutKind::StreamIdle => "stream idle",
            TimeoutKind::Operation => "operation",
        })
    }
}

/// Every error this crate returns.
///
/// Errors fall in three groups:
///
/// * **answered by the API**: [`Authentication`](Error::Authentication),
///   [`Validation`](Error::Validation), [`NotFound`](Error::NotFound),
///   [`Conflict`](Error::Conflict), [`RateLimit`](Error::RateLimit), [`Server`](Error::Server),
///   [`Api`](Error::Api). They carry the HTTP status ([`Error::status_code`]) and, when the
///   server sent one, its machine-readable code ([`Error::code`]);
/// * **raised before any request was sent**: [`InvalidInput`](Error::InvalidInput),
///   [`Config`](Error::Config), [`SandboxDeleted`](Error::SandboxDeleted),
///   [`BlockingInAsyncContext`](Error::BlockingInAsyncContext). No HTTP status: their
///   [`status_code`](Error::status_code) is `None`;
/// * **everything else**: timeouts (with their [`TimeoutKind`]), connection failures,
///   malformed answers, cut streams, a command that could not start or exited non-zero,
///   local I/O.
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
///
/// Codes a caller can branch on with [`Error::code`] include, on the control plane,
/// `not_found`, `conflict`, `bad_request`, `auth_failed`, `rate_limited`,
/// `too_many_sandboxes`, `too_many_builds`, `too_many_templates`, `sandbox_pausing`,
/// `service_unavailable`; on the data plane (commands and files), `not_found` (no such file or
/// sandbox), `bad_request`, `exec_failed` (a command that could not start, see
/// [`CommandStart`](Error::CommandStart)), `sandbox_unavailable` (paused or stopped),
/// `sandbox_route_stale`, `sandbox_storage_full`, `unauthorized`; a data-plane error whose
/// body names no code gets the code of its status (`bad_request` for 400, `unauthorized` for
/// 401, `forbidden` for 403, `not_found` for 404, `conflict` for 409, `rate_limited` for 429,
/// `internal_error` for 500, `service_unavailable` for 503).
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// 401/403 from the API: the API key or access token was refused.
    #[error("authentication failed: {0}")]
    Authentication(ApiError),
    /// 400 from the API: the server rejected the request.
    #[error("invalid request: {0}")]
    Validation(ApiError),
    /// The input was rejected by the SDK before any request was sent (a bad path, port, name,
    /// metadata, option value, ...). Local: no HTTP status.
    #[error("invalid input: {message}")]
    InvalidInput {
        /// What was wrong.
        message: String,
    },
    /// The configuration is unusable (no API key, a URL that is not `http(s)://`). Local: no
    /// request was sent and there is no HTTP status.
    #[error("configuration error: {message}")]
    Config {
        /// What is missing or wrong.
        message: String,
    },
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
    /// A request, stream or wait ran out of time; [`Error::timeout_kind`] says which limit.
    #[error("timed out ({kind}): {message}")]
    Timeout {
        /// Which limit ran out.
        kind: TimeoutKind,
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
    /// The command could not be started (no such working directory, no such program, ...).
    /// The same error on every path: a one-shot run, a streamed run and a session.
    #[error("command could not start: {message} (code {code})")]
    CommandStart {
        /// The server's code (`exec_failed`).
        code: String,
        /// The server's explanation.
        message: String,
    },
    /// A command exited with a non-zero code, from [`CommandResult::check`].
    ///
    /// [`CommandResult::check`]: crate::CommandResult::check
    #[error("command exited with code {exit_code}{}", stderr_suffix(.stderr_tail))]
    CommandFailed {
        /// The exit code.
        exit_code: i32,
        /// The last part of stderr (at most 2,000 characters).
        stderr_tail: String,
    },
    /// A response or download was larger than allowed (see `Files::max_bytes`); the transfer
    /// was stopped.
    #[error("{what} exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The limit in bytes.
        limit: u64,
        /// What was too large.
        what: String,
    },
    /// A file read as text is not valid UTF-8.
    #[error("{path} is not valid UTF-8 text (first invalid byte at offset {valid_up_to})")]
    NotUtf8 {
        /// The file.
        path: String,
        /// Length of the valid prefix.
        valid_up_to: usize,
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
    /// A snapshot being waited for ended `failed`.
    #[error("snapshot {id} failed")]
    SnapshotFailed {
        /// The snapshot.
        id: String,
    },
    /// A snapshot being waited for was deleted (it is `deleting`, or gone).
    #[error("snapshot {id} was deleted")]
    SnapshotDeleted {
        /// The snapshot.
        id: String,
    },
    /// The handle was used after `kill()`. Raised before any request is sent.
    #[error("sandbox '{id}' has been deleted; create or connect to another sandbox")]
    SandboxDeleted {
        /// The sandbox's id.
        id: String,
    },
    /// A blocking-flavour call was made on a thread that is running async code (a tokio
    /// runtime's worker or `block_on`), where blocking would stall the runtime. Nothing was
    /// sent.
    #[error(
        "superserve: a blocking call was made from inside an async runtime, which it would stall; \
         use superserve::AsyncSandbox (feature `async`) there, or move the call off the runtime \
         with tokio::task::spawn_blocking"
    )]
    BlockingInAsyncContext,
}

fn stderr_suffix(tail: &str) -> String {
    if tail.is_empty() {
        String::new()
    } else {
        format!("; stderr ends with: {tail}")
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Display never contains secrets; Debug shows the same plus the variant.
        let variant = match self {
            Error::Authentication(_) => "Authentication",
            Error::Validation(_) => "Validation",
            Error::InvalidInput { .. } => "InvalidInput",
            Error::Config { .. } => "Config",
            Error::NotFound(_) => "NotFound",
            Error::Conflict(_) => "Conflict",
            Error::RateLimit { .. } => "RateLimit",
            Error::Server(_) => "Server",
            Error::Api(_) => "Api",
            Error::Timeout { .. } => "Timeout",
            Error::Build { .. } => "Build",
            Error::CommandStart { .. } => "CommandStart",
            Error::CommandFailed { .. } => "CommandFailed",
            Error::TooLarge { .. } => "TooLarge",
            Error::NotUtf8 { .. } => "NotUtf8",
            Error::Connection { .. } => "Connection",
            Error::Decode { .. } => "Decode",
            Error::Stream { .. } => "Stream",
            Error::Io { .. } => "Io",
            Error::Sandbox { .. } => "Sandbox",
            Error::SandboxDeleted { .. } => "SandboxDeleted",
            Error::SnapshotFailed { .. } => "SnapshotFailed",
            Error::SnapshotDeleted { .. } => "SnapshotDeleted",
            Error::BlockingInAsyncContext => "BlockingInAsyncContext",
        };
        write!(f, "Error::{variant}({self})")
    }
}

impl Error {
    /// The API's part of the error, for errors answered by the API.
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

    /// HTTP status code, for errors answered by the API. `None` for everything raised locally
    /// (invalid input, configuration, a deleted handle, timeouts, connection failures, ...).
    pub fn status_code(&self) -> Option<u16> {
        self.api_error().map(|e| e.status)
    }

    /// The machine-readable error code (`"not_found"`, `"sandbox_pausing"`, `"exec_failed"`,
    /// a build's code, ...). See the list in [`Error`]'s docs.
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Build { code, .. } | Error::CommandStart { code, .. } => Some(code),
            _ => self.api_error().and_then(|e| e.code.as_deref()),
        }
    }

    /// Which limit a [`Error::Timeout`] ran into; `None` for other errors.
    pub fn timeout_kind(&self) -> Option<TimeoutKind> {
        match self {
            Error::Timeout { kind, .. } => Some(*kind),
            _ => None,
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

    /// `true` when the request was refused as invalid, by the server (400,
    /// [`Validation`](Error::Validation)) or before sending
    /// ([`InvalidInput`](Error::InvalidInput)).
    pub fn is_invalid(&self) -> bool {
        matches!(self, Error::Validation(_) | Error::InvalidInput { .. })
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

    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Error::InvalidInput {
            message: message.into(),
        }
    }

    pub(crate) fn config(message: impl Into<String>) -> Self {
        Error::Config {
            message: message.into(),
        }
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

    pub(crate) fn timeout(kind: TimeoutKind, message: impl Into<String>) -> Self {
        Error::Timeout {
            kind,
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

    pub(crate) fn too_large(what: impl Into<String>, limit: u64) -> Self {
        Error::TooLarge {
            limit,
            what: what.into(),
        }
    }
}

/// First 500 characters of a body, lossily decoded.
pub(crate) fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(2048)]);
    text.chars().take(500).collect()
}
