//! The API, written once in async style and compiled twice (see `build-features.md`).
//!
//! This file and everything below it is included by `crate::blocking` (with
//! `maybe_async::must_be_sync` as `dual` and `rt::blocking` as `rt`) and by `crate::nonblocking`
//! (with `must_be_async` and `rt::nonblocking`).

use super::{dual, flavor, rt};

mod client;
mod commands;
mod desktop;
mod files;
mod preview;
pub(crate) use files::{check_cap, check_path};
mod sandbox;
mod secret;
mod snapshot;
mod template;

pub(crate) use client::Api;
pub(crate) use commands::SseEvents;
pub use commands::{CommandSession, Commands};
pub use desktop::Desktop;
pub use files::Files;
pub use sandbox::{KillOnDrop, Sandbox};
pub use secret::{Provider, Secret};
pub use snapshot::Snapshot;
pub(crate) use template::BuildLogs;
pub use template::Template;
