//! The local backend's error types: [`LocalError`] (public: why the backend could not start)
//! and `ApiError` (an API answer: status and `{"error":{"code","message"}}`).

use std::net::SocketAddr;
use std::path::PathBuf;

use axum::http::StatusCode;

use super::store;

/// Why the local backend could not start (or could not do what it was asked).
///
/// No variant ever contains the API key or an access token.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LocalError {
    /// The backend isolates sandboxes with namespaces, overlayfs and cgroups, which needs root.
    #[error(
        "the local backend must run as root (it isolates sandboxes with namespaces, overlayfs \
         and cgroups); the effective uid is {uid}"
    )]
    NotRoot {
        /// The effective user id of this process.
        uid: u32,
    },
    /// A kernel feature the isolation needs is missing on this machine.
    #[error("the local backend cannot isolate sandboxes here: {what} is unavailable ({detail})")]
    Unsupported {
        /// The missing feature (e.g. `overlayfs`, `the cgroup v1 freezer`).
        what: &'static str,
        /// What was checked and what was found.
        detail: String,
    },
    /// A host program or file the base image needs is missing.
    #[error("cannot build the base image: {0}")]
    BaseImage(String),
    /// The data directory could not be created, read or written.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// The data directory.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The data directory path cannot be used (overlayfs options cannot carry it).
    #[error("data directory {path} cannot be used: {reason}")]
    InvalidDataDir {
        /// The data directory.
        path: PathBuf,
        /// Why it cannot be used.
        reason: String,
    },
    /// Another local backend holds the data directory.
    #[error("data directory {path} is in use by another running local backend")]
    DataDirInUse {
        /// The data directory.
        path: PathBuf,
    },
    /// The state database could not be opened, migrated or read.
    #[error("state database {path}: {source}")]
    Database {
        /// The database file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The backend's own async runtime or thread could not be started.
    #[error("cannot start the backend runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// A builder option is invalid.
    #[error("invalid option: {0}")]
    InvalidOption(String),
    /// The backend stopped before it was ready.
    #[error("the backend stopped before it was ready: {0}")]
    Stopped(String),
}

/// A control-plane error: status + `{"error":{"code","message"}}`.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code: code.to_owned(),
            message: message.into(),
            retry_after: None,
        }
    }
    pub(crate) fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
    pub(crate) fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    pub(crate) fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, "conflict", message)
    }
    pub(crate) fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", message)
    }
}

impl From<store::StoreError> for ApiError {
    fn from(e: store::StoreError) -> Self {
        ApiError::internal(format!("state database: {e}"))
    }
}
