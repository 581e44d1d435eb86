//! # superserve
//!
//! The Rust SDK for the [Superserve](https://superserve.ai) sandbox API: isolated sandboxes
//! (Firecracker microVMs) for AI agents. Create, connect, list, pause/resume and kill sandboxes;
//! run commands; read and write files; control and audit network egress; bind secrets.
//!
//! One codebase, two flavours, chosen by Cargo features (additive: both can be on):
//!
//! | feature | types |
//! |---|---|
//! | `async` (default) | [`AsyncSandbox`] (tokio) |
//! | `blocking` | [`Sandbox`] (no async runtime needed) |
//! | `local` | [`local::LocalServer`]: a Superserve-compatible backend on this machine |
//!
//! Both flavours have the same method names; the async one returns futures.
//!
//! ## Quick start (blocking)
//!
//! ```no_run
//! # #[cfg(feature = "blocking")]
//! # fn main() -> superserve::Result<()> {
//! use superserve::{CreateOptions, Sandbox};
//!
//! // Reads SUPERSERVE_API_KEY (and optionally SUPERSERVE_BASE_URL) from the environment.
//! let sandbox = Sandbox::create(CreateOptions::new("data-analyzer").metadata("env", "dev"))?;
//! println!("created {} ({})", sandbox.id(), sandbox.status());
//! sandbox.pause()?;
//! sandbox.resume()?;
//! sandbox.kill()?;
//! # Ok(())
//! # }
//! # #[cfg(not(feature = "blocking"))] fn main() {}
//! ```
//!
//! ## Quick start (async)
//!
//! ```no_run
//! # #[cfg(feature = "async")]
//! # async fn run() -> superserve::Result<()> {
//! use superserve::{AsyncSandbox, CreateOptions};
//!
//! let sandbox = AsyncSandbox::create(CreateOptions::new("data-analyzer")).await?;
//! let info = sandbox.get_info().await?;
//! println!("{} is {}", info.id, info.status);
//! sandbox.kill().await?;
//! # Ok(())
//! # }
//! ```
//!
//! ## Configuration
//!
//! Every factory (`create`, `connect`, `list`, `kill_by_id`, `update_by_id`) reads the
//! environment; its `*_with` twin takes an explicit [`Config`]:
//!
//! ```no_run
//! # #[cfg(feature = "blocking")]
//! # fn main() -> superserve::Result<()> {
//! use superserve::{Config, ListOptions, Sandbox};
//! let config = Config::builder()
//!     .api_key("ss_live_...")
//!     .base_url("http://127.0.0.1:8080")
//!     .sandbox_url("http://127.0.0.1:8081")
//!     .build()?;
//! let all = Sandbox::list_with(&config, ListOptions::new())?;
//! # let _ = all; Ok(())
//! # }
//! # #[cfg(not(feature = "blocking"))] fn main() {}
//! ```
//!
//! ## Errors
//!
//! Every call returns [`Result`]; [`Error`] has one variant per kind of failure
//! (authentication, validation, not found, conflict, rate limit, server, timeout, connection,
//! decode, stream, ...). Idempotent requests (GET, DELETE) are retried on 429/502/503/504 and
//! connection errors per the [`RetryPolicy`]; POST and PATCH are never retried.
//!
//! The blocking flavour must not be called from inside an async runtime's worker thread (it
//! runs its own I/O threads and would block the runtime); use the async flavour there.

#![deny(missing_docs)]
// With only `local`, the client plumbing is compiled but unused.
#![cfg_attr(
    not(any(feature = "async", feature = "blocking")),
    allow(dead_code, unused_imports)
)]
#![cfg_attr(docsrs, feature(doc_auto_cfg))]

#[cfg(not(any(feature = "async", feature = "blocking", feature = "local")))]
compile_error!("enable at least one of the features `async`, `blocking` (and optionally `local`)");

mod config;
mod error;
mod models;
mod options;
mod retry;
mod rt;
mod wire;

pub use config::{Config, ConfigBuilder, Timeouts, DEFAULT_BASE_URL, DEFAULT_SANDBOX_HOST};
pub use error::{ApiError, Error, Result};
pub use models::{
    CommandResult, NetworkConfig, NetworkEvent, NetworkEventKind, NetworkLogPage, NetworkVerdict,
    PreviewAccess, PreviewAccessPolicy, ProviderShortcut, ProxyAuditEvent, SandboxInfo,
    SandboxSecretBinding, SandboxStatus, SecretAuthType, SecretInfo, SecretSandboxBinding,
    Timestamp,
};
pub use options::{
    AuditOptions, AuditStatus, CreateOptions, ListOptions, NetworkLogOptions, PauseOptions,
    RunOptions, SecretAuth, SecretCreateOptions, UpdateOptions,
};
pub use retry::RetryPolicy;

/// The blocking flavour: [`blocking::Sandbox`] and friends (feature `blocking`).
///
/// Calls block the current thread. Do not call them from inside an async runtime's worker
/// thread; use [`nonblocking`] there.
#[cfg(feature = "blocking")]
#[path = "."]
pub mod blocking {
    use crate::rt::blocking as rt;
    use maybe_async::must_be_sync as dual;

    #[allow(clippy::duplicate_mod)]
    mod api;
    #[path = "flavor/blocking.rs"]
    mod flavor;

    pub use api::{CommandSession, Commands, Files, Provider, Sandbox, Secret};
    pub use flavor::NetworkLogEvents;
}

/// The async flavour: [`nonblocking::Sandbox`] (re-exported as [`AsyncSandbox`]) and friends
/// (feature `async`).
#[cfg(feature = "async")]
#[path = "."]
pub mod nonblocking {
    use crate::rt::nonblocking as rt;
    use maybe_async::must_be_async as dual;

    #[allow(clippy::duplicate_mod)]
    mod api;
    #[path = "flavor/nonblocking.rs"]
    mod flavor;

    pub use api::{CommandSession, Commands, Files, Provider, Sandbox, Secret};
    pub use flavor::NetworkLogEvents;
}

#[cfg(feature = "blocking")]
pub use blocking::{CommandSession, Commands, Files, Provider, Sandbox, Secret};
#[cfg(feature = "async")]
pub use nonblocking::{
    CommandSession as AsyncCommandSession, Commands as AsyncCommands, Files as AsyncFiles,
    Provider as AsyncProvider, Sandbox as AsyncSandbox, Secret as AsyncSecret,
};

#[cfg(feature = "local")]
pub mod local;
