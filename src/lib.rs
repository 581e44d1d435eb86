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
//! | `async` (default) | `AsyncSandbox` (tokio) |
//! | `blocking` | `Sandbox` (no async runtime needed) |
//! | `local` | `local::LocalServer`: a Superserve-compatible backend on this machine |
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
//! ## Naming
//!
//! One rule across the API: `x_with(…, XOptions)` is `x` with options (`run_with`,
//! `spawn_with`, `pause_with`, `resume_with`), and `x_with_config(&Config, …)` is `x` with an
//! explicit configuration instead of the environment (`create_with_config`,
//! `connect_with_config`, `list_with_config`, ...).
//!
//! ## Configuration
//!
//! Every factory (`create`, `connect`, `list`, `kill_by_id`, `update_by_id`) reads the
//! environment; its `*_with_config` twin takes an explicit [`Config`]:
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
//! let all = Sandbox::list_with_config(&config, ListOptions::new())?;
//! # let _ = all; Ok(())
//! # }
//! # #[cfg(not(feature = "blocking"))] fn main() {}
//! ```
//!
//! ## Errors
//!
//! Every call returns [`Result`]; [`Error`] has one variant per kind of failure
//! (authentication, validation, invalid input, not found, conflict, rate limit, server,
//! timeout, a command that could not start, connection, decode, stream, ...); its docs list
//! the codes a caller can branch on. Idempotent requests (GET, DELETE) are retried on
//! 429/502/503/504 and connection errors per the [`RetryPolicy`]; POST and PATCH are never
//! retried.
//!
//! ## Observability
//!
//! The crate emits [`tracing`](https://docs.rs/tracing) spans and events, and installs no
//! subscriber: a span per API operation (`sandbox.create`, `commands.run`, `files.read`, ...,
//! with the `sandbox_id`) at debug level, a span per HTTP attempt (`superserve.http`: method,
//! path without query values, attempt number, status, elapsed milliseconds) at debug level,
//! and info events for retries, token refreshes and re-activations. No field ever holds an API
//! key, access token, secret value, header or body. `examples/tracing.rs` shows the output.
//!
//! ## Blocking flavour and async runtimes
//!
//! The blocking flavour runs its I/O on a runtime of its own (two `superserve-io` threads,
//! started on first use); the calling thread waits. It must not be called from a thread that
//! runs async code (a tokio worker, or inside `block_on`): such a call fails with
//! [`Error::BlockingInAsyncContext`] instead of stalling the runtime. Use the async flavour
//! there, or `tokio::task::spawn_blocking`.

#![deny(missing_docs)]
// With only `local`, the client plumbing is compiled but unused.
#![cfg_attr(
    not(any(feature = "async", feature = "blocking")),
    allow(dead_code, unused_imports)
)]
#![cfg_attr(docsrs, feature(doc_cfg))]

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
pub use error::{ApiError, Error, Result, TimeoutKind};
pub use models::{
    BuildLogEvent, BuildLogStream, BuildStep, CommandResult, DesktopAction, ExecEvent, ImageFormat,
    KeyChord, MouseButton, NetworkConfig, NetworkEvent, NetworkEventKind, NetworkLogPage,
    NetworkVerdict, PreviewAccess, PreviewAccessPolicy, PreviewPortList, PreviewToken,
    ProviderShortcut, ProxyAuditEvent, PublishedPreviewPort, SandboxInfo, SandboxSecretBinding,
    SandboxStatus, Screenshot, SecretAuthType, SecretInfo, SecretSandboxBinding, Signal,
    SnapshotInfo, SnapshotKind, SnapshotResources, SnapshotStatus, StepOptions, StepResult,
    StepTimings, TemplateBuildInfo, TemplateBuildStatus, TemplateInfo, TemplateStatus, Timestamp,
    DESKTOP_STREAM_PORT, MAX_PREVIEW_PORT, MIN_PREVIEW_PORT, RESERVED_PREVIEW_PORT,
};
pub use options::{
    AuditOptions, AuditStatus, CreateOptions, ListOptions, NetworkLogOptions, PauseOptions,
    ResumeOptions, RunOptions, SecretAuth, SecretCreateOptions, SnapshotOptions, SnapshotRef,
    TemplateOptions, TemplateRef, TemplateWaitOptions, UpdateOptions, WaitOptions,
    DEFAULT_MAX_OUTPUT_BYTES,
};
pub use retry::RetryPolicy;

/// The blocking flavour: `blocking::Sandbox` (re-exported as `superserve::Sandbox`) and
/// friends (feature `blocking`).
///
/// Calls block the current thread while the SDK's own I/O runtime does the work. Do not call
/// them from a thread running async code (they fail with
/// [`Error::BlockingInAsyncContext`]); use the async flavour there.
#[cfg(feature = "blocking")]
#[cfg_attr(docsrs, doc(cfg(feature = "blocking")))]
#[path = "."]
pub mod blocking {
    use crate::rt::blocking as rt;
    use maybe_async::must_be_sync as dual;

    #[allow(clippy::duplicate_mod)]
    mod api;
    #[path = "flavor/blocking.rs"]
    mod flavor;

    pub use api::{
        CommandSession, Commands, Desktop, Files, KillOnDrop, Provider, Sandbox, Secret, Snapshot,
        Template,
    };
    pub use flavor::{BuildLogEvents, ExecEvents, FileReader, NetworkLogEvents, SessionStdin};
}

/// The async flavour: `nonblocking::Sandbox` (re-exported as `superserve::AsyncSandbox`) and
/// friends (feature `async`).
#[cfg(feature = "async")]
#[cfg_attr(docsrs, doc(cfg(feature = "async")))]
#[path = "."]
pub mod nonblocking {
    use crate::rt::nonblocking as rt;
    use maybe_async::must_be_async as dual;

    #[allow(clippy::duplicate_mod)]
    mod api;
    #[path = "flavor/nonblocking.rs"]
    mod flavor;

    pub use api::{
        CommandSession, Commands, Desktop, Files, KillOnDrop, Provider, Sandbox, Secret, Snapshot,
        Template,
    };
    pub use flavor::{BuildLogEvents, ExecEvents, FileReader, NetworkLogEvents, SessionStdin};
}

#[cfg(feature = "blocking")]
#[cfg_attr(docsrs, doc(cfg(feature = "blocking")))]
pub use blocking::{
    BuildLogEvents, CommandSession, Commands, Desktop, ExecEvents, FileReader, Files, KillOnDrop,
    NetworkLogEvents, Provider, Sandbox, Secret, SessionStdin, Snapshot, Template,
};
#[cfg(feature = "async")]
#[cfg_attr(docsrs, doc(cfg(feature = "async")))]
pub use nonblocking::{
    BuildLogEvents as AsyncBuildLogEvents, CommandSession as AsyncCommandSession,
    Commands as AsyncCommands, Desktop as AsyncDesktop, ExecEvents as AsyncExecEvents,
    FileReader as AsyncFileReader, Files as AsyncFiles, KillOnDrop as AsyncKillOnDrop,
    NetworkLogEvents as AsyncNetworkLogEvents, Provider as AsyncProvider, Sandbox as AsyncSandbox,
    Secret as AsyncSecret, SessionStdin as AsyncSessionStdin, Snapshot as AsyncSnapshot,
    Template as AsyncTemplate,
};

#[cfg(feature = "local")]
#[cfg_attr(docsrs, doc(cfg(feature = "local")))]
pub mod local;
