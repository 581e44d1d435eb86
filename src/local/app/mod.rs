//! Backend state: one [`Entry`] per sandbox (its record, a lifecycle lock and its runtime
//! while it has processes) and the [`App`] that holds them with the database, the secrets,
//! the request journal and the fault rules. Its jobs, one file each:
//!
//! * `records`: the sandbox registry and the record store glue (lookups, persisting a
//!   record, token expiry);
//! * `lifecycle`: create, activate, pause, resume, update, delete, and the auto-pause /
//!   auto-delete timers;
//! * `spawn`: starting commands in a running sandbox (restarting its runtime if it died);
//! * `bindings`: secrets bound to sandboxes;
//! * `snapshots`: capturing sandboxes into snapshots, and the snapshots' endpoints;
//! * `templates`: templates, their builds (run in build sandboxes) and build logs;
//! * `recovery`: restart recovery (loading the state, cleaning what a crash left) and
//!   shutdown.

mod bindings;
mod lifecycle;
mod records;
mod recovery;
mod snapshots;
mod spawn;
mod templates;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use super::agent::SpawnError;
use super::desktop::Desktop;
use super::egress::SandboxPolicy;
use super::error::ApiError;
use super::fault::{lock, FaultSet};
use super::journal::Journal;
use super::model::{Binding, Network, Record, Status};
use super::preview::Previews;
use super::runtime::{Host, Runtime};
use super::secrets::Secrets;
use super::store::Db;

/// One sandbox: its record, a lifecycle lock, and its runtime while it has processes.
pub(crate) struct Entry {
    pub id: String,
    rec: Mutex<Record>,
    /// Serialises lifecycle operations (start, pause, resume, delete, update).
    pub ops: tokio::sync::Mutex<()>,
    /// The running side. Spawns hold a read guard; pause/resume/delete take it for writing.
    pub rt: tokio::sync::RwLock<Option<Arc<Runtime>>>,
    /// The desktop of a `superserve/desktop` sandbox, booted with its runtime.
    pub desktop: tokio::sync::Mutex<Option<Arc<Desktop>>>,
    deleted: AtomicBool,
    deleting: AtomicBool,
}

impl Entry {
    fn new(rec: Record) -> Entry {
        Entry {
            id: rec.id.clone(),
            rec: Mutex::new(rec),
            ops: tokio::sync::Mutex::new(()),
            rt: tokio::sync::RwLock::new(None),
            desktop: tokio::sync::Mutex::new(None),
            deleted: AtomicBool::new(false),
            deleting: AtomicBool::new(false),
        }
    }

    /// A copy of the record.
    pub(crate) fn rec(&self) -> Record {
        lock(&self.rec).clone()
    }

    /// Changes the record in place.
    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut Record) -> R) -> R {
        f(&mut lock(&self.rec))
    }

    pub(crate) fn status(&self) -> Status {
        lock(&self.rec).status
    }

    pub(crate) fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::SeqCst)
    }
}

/// The egress proxy asks the sandbox's record for its rules and bindings at every connection
/// (a live update applies at once); a deleted sandbox has none.
impl SandboxPolicy for Entry {
    fn rules(&self) -> Option<(Option<Network>, Vec<Binding>)> {
        (!self.is_deleted()).then(|| self.with(|r| (r.network.clone(), r.secrets.clone())))
    }

    fn name(&self) -> Option<String> {
        (!self.is_deleted()).then(|| self.with(|r| r.name.clone()))
    }
}

/// Why a data-plane call could not get a running sandbox.
#[derive(Debug)]
pub(crate) enum Unavailable {
    Paused,
    Gone,
    Failed(String),
}

/// How a spawn into a sandbox failed.
#[derive(Debug)]
pub(crate) enum SpawnFailure {
    Unavailable(Unavailable),
    Spawn(SpawnError),
}

/// Options the server was started with that handlers need.
#[derive(Clone, Debug)]
pub(crate) struct Tuning {
    pub keepalive: Duration,
    /// Disk size of new sandboxes, MiB.
    pub disk_mib: u32,
    /// Docker Hub pulls of template builds try this registry first.
    pub registry_mirror: Option<url::Url>,
}

/// The backend.
pub(crate) struct App {
    pub api_key: String,
    pub host: Host,
    pub db: Db,
    sandboxes: RwLock<HashMap<String, Arc<Entry>>>,
    pub journal: Journal,
    pub faults: FaultSet,
    pub tuning: Tuning,
    /// Team secrets (values sealed at rest).
    pub secrets: Secrets,
    /// Published preview ports, their tokens, and the preview proxy's connections.
    pub previews: Arc<Previews>,
    seq: AtomicI64,
    /// Template builds in progress (cancel handles).
    builds: Mutex<HashMap<String, Arc<super::templates::build::BuildCtl>>>,
    /// Template builds that may run at once.
    build_slots: Arc<tokio::sync::Semaphore>,
    /// Set by shutdown: builds it interrupts are left for the next start to mark failed.
    stopping: AtomicBool,
}

impl ApiError {
    fn sandbox_not_found() -> ApiError {
        ApiError::not_found("sandbox not found")
    }
}
