//! Backend state and the sandbox lifecycle: create, activate, pause, resume, update, delete,
//! the auto-pause / auto-delete reaper, restart recovery and shutdown.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use super::agent::{Process, SpawnError};
use super::egress::SandboxPolicy;
use super::error::{ApiError, LocalError};
use super::fault::{lock, FaultSet};
use super::ident::{new_token, uuid_v4};
use super::journal::Journal;
use super::model::{
    self, BindBody, Binding, CreateBody, Network, PatchBody, Record, Status, DEFAULT_MEMORY_MIB,
    DEFAULT_VCPU,
};
use super::runtime::{CommandSpec, Host, Runtime, SandboxDirs, SandboxSpec};
use super::secrets::Secrets;
use super::store::{self, Db};
use super::time::now_ns;

/// One sandbox: its record, a lifecycle lock, and its runtime while it has processes.
pub(crate) struct Entry {
    pub id: String,
    rec: Mutex<Record>,
    /// Serialises lifecycle operations (start, pause, resume, delete, update).
    pub ops: tokio::sync::Mutex<()>,
    /// The running side. Spawns hold a read guard; pause/resume/delete take it for writing.
    pub rt: tokio::sync::RwLock<Option<Arc<Runtime>>>,
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
    seq: AtomicI64,
}

impl ApiError {
    fn sandbox_not_found() -> ApiError {
        ApiError::not_found("sandbox not found")
    }
}

impl App {
    /// Loads the state and prepares sandboxes that survived a restart: every sandbox that was
    /// not paused comes back paused (its processes did not survive), leftovers are cleaned.
    pub(crate) fn new(
        api_key: String,
        host: Host,
        db: Db,
        secrets: Secrets,
        tuning: Tuning,
    ) -> Result<App, LocalError> {
        let db_err = |e: store::StoreError| LocalError::Database {
            path: host.sandboxes_dir.with_file_name("state.db"),
            source: Box::new(e),
        };
        let records = db.call_sync(store::load_all).map_err(db_err)?;
        // Nothing of a previous backend on this data directory survives: every cgroup of this
        // instance is emptied (its processes killed, frozen ones included) and removed,
        // whatever the records say; processes never survive a restart.
        for name in host.cgroups.sandbox_names() {
            let _ = host.cgroups.sandbox(&name).destroy();
        }
        let now = now_ns();
        let mut map = HashMap::new();
        let mut max_seq = 0;
        for mut rec in records {
            let mut changed = false;
            if rec.status != Status::Paused {
                rec.status = Status::Paused;
                rec.paused_at_ns = Some(now);
                rec.active_since_ns = None;
                rec.arm_auto_delete(now);
                changed = true;
            }
            // the sandbox's files are owned by its id range: keep the claim
            match rec.id_slot {
                Some(slot) => {
                    if let Err(e) = host.ids.reclaim(slot, &rec.id) {
                        eprintln!("superserve-local: sandbox {}: {e}", rec.id);
                    }
                }
                None => {
                    let slot = host
                        .ids
                        .claim(&rec.id)
                        .map_err(|source| LocalError::DataDir {
                            path: host.sandboxes_dir.clone(),
                            source,
                        })?;
                    rec.id_slot = Some(slot);
                    changed = true;
                }
            }
            if changed {
                db.call_sync(|c| store::upsert(c, &rec)).map_err(db_err)?;
            }
            max_seq = max_seq.max(rec.seq);
            map.insert(rec.id.clone(), Arc::new(Entry::new(rec)));
        }
        // directories of sandboxes that have no record (a create interrupted by a crash)
        if let Ok(dirs) = std::fs::read_dir(&host.sandboxes_dir) {
            for d in dirs.flatten() {
                let name = d.file_name().to_string_lossy().into_owned();
                if !map.contains_key(&name) {
                    let _ = std::fs::remove_dir_all(d.path());
                }
            }
        }
        let keep: Vec<String> = map.keys().cloned().collect();
        host.ids.release_all_except(&keep);
        Ok(App {
            api_key,
            host,
            db,
            sandboxes: RwLock::new(map),
            journal: Journal::default(),
            faults: FaultSet::default(),
            tuning,
            secrets,
            seq: AtomicI64::new(max_seq + 1),
        })
    }

    /// The live entry of a sandbox.
    pub(crate) fn get(&self, id: &str) -> Option<Arc<Entry>> {
        let map = self
            .sandboxes
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.get(id).filter(|e| !e.is_deleted()).cloned()
    }

    fn entry(&self, id: &str) -> Result<Arc<Entry>, ApiError> {
        self.get(id).ok_or_else(ApiError::sandbox_not_found)
    }

    /// Every entry, oldest first.
    pub(crate) fn all(&self) -> Vec<Arc<Entry>> {
        let map = self
            .sandboxes
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut v: Vec<Arc<Entry>> = map.values().filter(|e| !e.is_deleted()).cloned().collect();
        v.sort_by_key(|e| e.with(|r| r.seq));
        v
    }

    fn remove(&self, id: &str) {
        let mut map = self
            .sandboxes
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.remove(id);
    }

    /// Writes the entry's current record (read under the database lock, so the last write
    /// always carries the latest state).
    pub(crate) async fn persist(&self, entry: &Arc<Entry>) -> Result<(), ApiError> {
        let entry = entry.clone();
        self.db
            .call(move |c| {
                if entry.is_deleted() {
                    return Ok(());
                }
                store::upsert(c, &entry.rec())
            })
            .await
            .map_err(ApiError::from)
    }

    async fn start_runtime(&self, entry: &Arc<Entry>) -> Result<Arc<Runtime>, ApiError> {
        let rec = entry.rec();
        let Some(id_slot) = rec.id_slot else {
            return Err(ApiError::internal(
                "cannot start the sandbox: it has no id range",
            ));
        };
        let spec = SandboxSpec {
            id: &rec.id,
            hostname: &rec.hostname,
            vcpu: rec.vcpu_count,
            memory_mib: rec.memory_mib,
            disk_mib: rec.disk_mib,
            id_slot,
            policy: entry.clone(),
        };
        Runtime::start(&self.host, spec)
            .await
            .map_err(|e| ApiError::internal(format!("cannot start the sandbox: {e}")))
    }

    /// `POST /sandboxes`.
    pub(crate) async fn create(&self, body: CreateBody) -> Result<Record, ApiError> {
        let name = body
            .name
            .ok_or_else(|| ApiError::bad_request("name is required"))?;
        model::validate_name(&name).map_err(ApiError::bad_request)?;
        if body.from_template.is_some() && body.from_snapshot.is_some() {
            return Err(ApiError::bad_request(
                "from_template and from_snapshot are mutually exclusive",
            ));
        }
        if let Some(t) = body.timeout_seconds {
            model::validate_timeout(t).map_err(ApiError::bad_request)?;
        }
        if let Some(t) = body.auto_delete_seconds {
            model::validate_auto_delete(t).map_err(ApiError::bad_request)?;
        }
        let metadata = body.metadata.unwrap_or_default();
        model::validate_metadata(&metadata).map_err(ApiError::bad_request)?;
        let env_vars = body.env_vars.unwrap_or_default();
        model::validate_env(&env_vars).map_err(ApiError::bad_request)?;
        let mut secrets = Vec::new();
        for (env_key, secret_name) in body.secrets.unwrap_or_default() {
            if !model::valid_env_key(&env_key) {
                return Err(ApiError::bad_request(format!(
                    "secret env var name {env_key:?} is invalid"
                )));
            }
            if secret_name.is_empty() {
                return Err(ApiError::bad_request(format!(
                    "secret name for {env_key:?} is empty"
                )));
            }
            if env_vars.contains_key(&env_key) {
                return Err(ApiError::bad_request(format!(
                    "{env_key:?} is set in both env_vars and secrets"
                )));
            }
            secrets.push(self.new_binding(env_key, secret_name).await?);
        }
        if let Some(n) = &body.network {
            model::validate_network(n).map_err(ApiError::bad_request)?;
        }
        let preview_access = match body.preview_access {
            Some(p) => {
                model::validate_preview_access(&p).map_err(ApiError::bad_request)?;
                p
            }
            None => "legacy_public".to_owned(),
        };
        if let Some(snap) = &body.from_snapshot {
            return Err(ApiError::not_found(format!("snapshot {snap:?} not found")));
        }
        if let Some(t) = &body.from_template {
            if !model::is_base_template(t) {
                return Err(ApiError::not_found(format!("template {t:?} not found")));
            }
        }

        let id = uuid_v4();
        let now = now_ns();
        let id_slot = {
            let ids = self.host.ids.clone();
            let id = id.clone();
            tokio::task::spawn_blocking(move || ids.claim(&id))
                .await
                .map_err(|e| ApiError::internal(e.to_string()))?
                .map_err(|e| ApiError::internal(format!("cannot claim an id range: {e}")))?
        };
        let rec = Record {
            hostname: id.chars().take(8).collect(),
            id: id.clone(),
            seq: self.seq.fetch_add(1, Ordering::SeqCst),
            name,
            status: Status::Starting,
            vcpu_count: DEFAULT_VCPU,
            memory_mib: DEFAULT_MEMORY_MIB,
            disk_mib: self.tuning.disk_mib,
            id_slot: Some(id_slot),
            created_ns: now,
            timeout_seconds: body.timeout_seconds,
            auto_delete_seconds: body.auto_delete_seconds,
            auto_delete_at_ns: None,
            active_since_ns: None,
            paused_at_ns: None,
            network: body.network,
            metadata,
            env_vars,
            secrets,
            preview_access,
            access_token: new_token(),
            template: model::BASE_TEMPLATE.to_owned(),
        };
        let entry = Arc::new(Entry::new(rec.clone()));
        {
            let mut map = self
                .sandboxes
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            map.insert(id.clone(), entry.clone());
        }
        let _ops = entry.ops.lock().await;
        let started = self.start_runtime(&entry).await;
        let rt = match started {
            Ok(rt) => rt,
            Err(e) => {
                self.discard(&entry, None).await;
                return Err(e);
            }
        };
        *entry.rt.write().await = Some(rt.clone());
        entry.with(|r| {
            r.status = Status::Active;
            r.active_since_ns = Some(now_ns());
        });
        if let Err(e) = self.persist(&entry).await {
            self.discard(&entry, Some(rt)).await;
            return Err(e);
        }
        Ok(entry.rec())
    }

    /// Removes a sandbox that failed to come up.
    async fn discard(&self, entry: &Arc<Entry>, rt: Option<Arc<Runtime>>) {
        entry.deleted.store(true, Ordering::SeqCst);
        self.remove(&entry.id);
        if let Some(rt) = rt {
            let _ = rt.kill().await;
        }
        *entry.rt.write().await = None;
        let cgroup = self.host.cgroups.sandbox(&entry.id);
        let dirs = SandboxDirs::new(&self.host.sandboxes_dir, &entry.id);
        let (ids, id, slot) = (self.host.ids.clone(), entry.id.clone(), entry.rec().id_slot);
        let _ = tokio::task::spawn_blocking(move || {
            let _ = cgroup.destroy();
            let _ = dirs.remove();
            if let Some(slot) = slot {
                ids.release(slot, &id);
            }
        })
        .await;
    }

    /// Thaws (or restarts) a paused sandbox. Caller holds `ops`.
    async fn resume_locked(&self, entry: &Arc<Entry>) -> Result<(), ApiError> {
        entry.with(|r| r.status = Status::Resuming);
        let res = async {
            let mut guard = entry.rt.write().await;
            match guard.as_ref() {
                Some(rt) if !rt.is_dead() => rt
                    .set_frozen(false)
                    .await
                    .map_err(|e| ApiError::internal(format!("cannot thaw the sandbox: {e}"))),
                _ => {
                    if let Some(old) = guard.take() {
                        let _ = old.kill().await;
                    }
                    *guard = Some(self.start_runtime(entry).await?);
                    Ok(())
                }
            }
        }
        .await;
        match res {
            Ok(()) => {
                let now = now_ns();
                entry.with(|r| {
                    r.status = Status::Active;
                    r.active_since_ns = Some(now);
                    r.paused_at_ns = None;
                    r.auto_delete_at_ns = None;
                });
                Ok(())
            }
            Err(e) => {
                entry.with(|r| r.status = Status::Paused);
                Err(e)
            }
        }
    }

    /// `POST /sandboxes/{id}/activate`: resumes if paused, rotates the token.
    pub(crate) async fn activate(&self, id: &str) -> Result<Record, ApiError> {
        let entry = self.entry(id)?;
        if entry.status() == Status::Pausing {
            let mut e = ApiError::conflict("sandbox is pausing; retry when the pause has landed");
            e.code = "sandbox_pausing".into();
            e.retry_after = Some(1);
            return Err(e);
        }
        let _ops = entry.ops.lock().await;
        if entry.is_deleted() {
            return Err(ApiError::sandbox_not_found());
        }
        match entry.status() {
            Status::Paused => self.resume_locked(&entry).await?,
            Status::Active => {
                // an active sandbox whose init died (or never restarted) gets a fresh one
                let mut guard = entry.rt.write().await;
                if guard.as_ref().is_none_or(|rt| rt.is_dead()) {
                    if let Some(old) = guard.take() {
                        let _ = old.kill().await;
                    }
                    *guard = Some(self.start_runtime(&entry).await?);
                }
            }
            other => {
                return Err(ApiError::conflict(format!(
                    "sandbox is {}; retry shortly",
                    other.as_str()
                )))
            }
        }
        entry.with(|r| r.access_token = new_token());
        self.persist(&entry).await?;
        Ok(entry.rec())
    }

    /// `POST /sandboxes/{id}/pause`. With `wait`, returns once paused; otherwise once the
    /// pause is under way (`Ok(false)`).
    pub(crate) async fn pause(self: &Arc<Self>, id: &str, wait: bool) -> Result<bool, ApiError> {
        let entry = self.entry(id)?;
        entry.with(|r| {
            if r.status == Status::Active {
                r.status = Status::Pausing;
                Ok(())
            } else {
                Err(ApiError::conflict(format!(
                    "sandbox is {}, not active",
                    r.status.as_str()
                )))
            }
        })?;
        if wait {
            self.finish_pause(&entry).await?;
            return Ok(true);
        }
        let app = self.clone();
        tokio::spawn(async move {
            let _ = app.finish_pause(&entry).await;
        });
        Ok(false)
    }

    async fn finish_pause(&self, entry: &Arc<Entry>) -> Result<(), ApiError> {
        let _ops = entry.ops.lock().await;
        if entry.is_deleted() {
            return Ok(());
        }
        let res = {
            let guard = entry.rt.write().await;
            match guard.as_ref() {
                Some(rt) if !rt.is_dead() => rt.set_frozen(true).await,
                _ => Ok(()),
            }
        };
        if let Err(e) = res {
            let guard = entry.rt.write().await;
            if let Some(rt) = guard.as_ref() {
                let _ = rt.set_frozen(false).await;
            }
            entry.with(|r| r.status = Status::Active);
            return Err(ApiError::internal(format!(
                "cannot freeze the sandbox: {e}"
            )));
        }
        let now = now_ns();
        entry.with(|r| {
            r.status = Status::Paused;
            r.paused_at_ns = Some(now);
            r.active_since_ns = None;
            r.arm_auto_delete(now);
        });
        self.persist(entry).await
    }

    /// `POST /sandboxes/{id}/resume`.
    pub(crate) async fn resume(&self, id: &str) -> Result<Record, ApiError> {
        let entry = self.entry(id)?;
        let not_paused =
            |s: Status| ApiError::conflict(format!("sandbox is {}, not paused", s.as_str()));
        if entry.status() != Status::Paused {
            return Err(not_paused(entry.status()));
        }
        let _ops = entry.ops.lock().await;
        if entry.is_deleted() {
            return Err(ApiError::sandbox_not_found());
        }
        if entry.status() != Status::Paused {
            return Err(not_paused(entry.status()));
        }
        self.resume_locked(&entry).await?;
        entry.with(|r| r.access_token = new_token());
        self.persist(&entry).await?;
        Ok(entry.rec())
    }

    /// `DELETE /sandboxes/{id}`: kills every process, removes files, cgroups and the record.
    pub(crate) async fn delete(&self, id: &str) -> Result<(), ApiError> {
        let entry = self.entry(id)?;
        entry.deleting.store(true, Ordering::SeqCst);
        let _ops = entry.ops.lock().await;
        if entry.is_deleted() {
            return Err(ApiError::sandbox_not_found());
        }
        entry.deleted.store(true, Ordering::SeqCst);
        self.remove(id);
        let rt = entry.rt.write().await.take();
        let mut problems = Vec::new();
        if let Some(rt) = rt {
            if let Err(e) = rt.kill().await {
                problems.push(format!("killing processes: {e}"));
            }
        }
        let cgroup = self.host.cgroups.sandbox(id);
        let dirs = SandboxDirs::new(&self.host.sandboxes_dir, id);
        let (ids, sid, slot) = (self.host.ids.clone(), id.to_owned(), entry.rec().id_slot);
        let cleanup = tokio::task::spawn_blocking(move || {
            let mut p = Vec::new();
            if let Err(e) = cgroup.destroy() {
                p.push(format!("removing cgroups: {e}"));
            }
            if let Err(e) = dirs.remove() {
                p.push(format!("removing files: {e}"));
            }
            if let Some(slot) = slot {
                ids.release(slot, &sid);
            }
            p
        })
        .await
        .unwrap_or_default();
        problems.extend(cleanup);
        self.db.delete(id.to_owned()).await?;
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ApiError::internal(format!(
                "sandbox deleted with leftovers: {}",
                problems.join("; ")
            )))
        }
    }

    /// `PATCH /sandboxes/{id}`.
    pub(crate) async fn patch(&self, id: &str, body: PatchBody) -> Result<(), ApiError> {
        let entry = self.entry(id)?;
        if body.is_empty() {
            return Err(ApiError::bad_request("at least one field must be provided"));
        }
        if let Some(m) = &body.metadata {
            model::validate_metadata(m).map_err(ApiError::bad_request)?;
        }
        if let Some(n) = &body.network {
            model::validate_network(n).map_err(ApiError::bad_request)?;
        }
        if let Some(Some(t)) = body.timeout_seconds {
            model::validate_timeout(t).map_err(ApiError::bad_request)?;
        }
        if let Some(Some(t)) = body.auto_delete_seconds {
            model::validate_auto_delete(t).map_err(ApiError::bad_request)?;
        }
        if let Some(p) = &body.preview_access {
            model::validate_preview_access(p).map_err(ApiError::bad_request)?;
        }
        let _ops = entry.ops.lock().await;
        if entry.is_deleted() {
            return Err(ApiError::sandbox_not_found());
        }
        entry.with(|r| {
            if body.network.is_some() && r.status != Status::Active {
                return Err(ApiError::conflict(format!(
                    "network rules can only be changed while the sandbox is active (it is {})",
                    r.status.as_str()
                )));
            }
            let now = now_ns();
            if let Some(m) = body.metadata {
                r.metadata = m;
            }
            if let Some(n) = body.network {
                r.network = Some(n);
            }
            if let Some(t) = body.timeout_seconds {
                r.timeout_seconds = t;
                if r.status == Status::Active {
                    // the auto-pause window counts from now
                    r.active_since_ns = Some(now);
                }
            }
            if let Some(a) = body.auto_delete_seconds {
                r.auto_delete_seconds = a;
                if matches!(r.status, Status::Paused | Status::Pausing) {
                    r.arm_auto_delete(now);
                } else {
                    r.auto_delete_at_ns = None;
                }
            }
            if let Some(p) = body.preview_access {
                r.preview_access = p;
            }
            Ok(())
        })?;
        self.persist(&entry).await
    }

    /// A binding of an existing secret with a fresh stand-in token (404 if the secret does not
    /// exist).
    async fn new_binding(&self, env_key: String, secret_name: String) -> Result<Binding, ApiError> {
        let secret = self.secrets.get(&secret_name).await?;
        Ok(Binding {
            env_key,
            secret_name,
            revoked: false,
            detached: false,
            secret_id: secret.id,
            hosts: secret.hosts,
            standin: format!("ss_standin_{}", new_token()),
        })
    }

    /// `POST /sandboxes/{id}/secrets`.
    pub(crate) async fn bind_secret(&self, id: &str, body: BindBody) -> Result<Binding, ApiError> {
        let entry = self.entry(id)?;
        let env_key = body.env_key.unwrap_or_default();
        let secret_name = body.secret_name.unwrap_or_default();
        if !model::valid_env_key(&env_key) {
            return Err(ApiError::bad_request(format!(
                "env_key {env_key:?} is not a valid environment variable name"
            )));
        }
        if secret_name.is_empty() {
            return Err(ApiError::bad_request("secret_name is required"));
        }
        let binding = self.new_binding(env_key, secret_name).await?;
        let _ops = entry.ops.lock().await;
        entry.with(|r| {
            if r.env_vars.contains_key(&binding.env_key) {
                return Err(ApiError::bad_request(format!(
                    "{:?} is already set in env_vars",
                    binding.env_key
                )));
            }
            // a replaced binding's stand-in is revoked, like a detached one
            for b in r.secrets.iter_mut() {
                if b.env_key == binding.env_key {
                    b.detached = true;
                }
            }
            r.secrets.push(binding.clone());
            Ok(())
        })?;
        self.persist(&entry).await?;
        Ok(binding)
    }

    /// `DELETE /sandboxes/{id}/secrets/{env_key}`.
    pub(crate) async fn unbind_secret(&self, id: &str, env_key: &str) -> Result<(), ApiError> {
        let entry = self.entry(id)?;
        let _ops = entry.ops.lock().await;
        let found = entry.with(|r| {
            let mut found = false;
            for b in r.secrets.iter_mut().filter(|b| b.visible()) {
                if b.env_key == env_key {
                    b.detached = true;
                    found = true;
                }
            }
            found
        });
        if !found {
            return Err(ApiError::not_found(format!(
                "no secret is bound to {env_key:?}"
            )));
        }
        self.persist(&entry).await
    }

    /// After a secret was deleted: every binding of it is marked revoked (its stand-in is
    /// refused at egress; the sandbox's bindings show `revoked: true`).
    pub(crate) async fn revoke_bindings_of(&self, secret_name: &str) -> Result<(), ApiError> {
        for entry in self.all() {
            let touched = entry.with(|r| {
                let mut touched = false;
                for b in r.secrets.iter_mut() {
                    if b.secret_name == secret_name && !b.revoked {
                        b.revoked = true;
                        touched = true;
                    }
                }
                touched
            });
            if touched {
                self.persist(&entry).await?;
            }
        }
        Ok(())
    }

    /// Sandboxes with a live binding of `secret_name`: (id, name, env_key, status).
    pub(crate) fn bindings_of(&self, secret_name: &str) -> Vec<(String, String, String, Status)> {
        let mut out = Vec::new();
        for entry in self.all() {
            let rec = entry.rec();
            for b in rec.secrets.iter() {
                if b.secret_name == secret_name && b.visible() && !b.revoked {
                    out.push((
                        rec.id.clone(),
                        rec.name.clone(),
                        b.env_key.clone(),
                        rec.status,
                    ));
                }
            }
        }
        out
    }

    /// `GET /sandboxes/{id}` (the record) or 404.
    pub(crate) fn record(&self, id: &str) -> Result<Record, ApiError> {
        Ok(self.entry(id)?.rec())
    }

    /// Invalidates a sandbox's access token (for tests of token refresh).
    pub(crate) fn expire_token(&self, id: &str) -> bool {
        let Some(entry) = self.get(id) else {
            return false;
        };
        entry.with(|r| r.access_token = new_token());
        let rec = entry.rec();
        let _ = self.db.call_sync(|c| store::upsert(c, &rec));
        true
    }

    /// A running runtime for a data-plane call, starting the init if an active sandbox has
    /// none (e.g. it died).
    pub(crate) async fn ensure_running(
        &self,
        entry: &Arc<Entry>,
    ) -> Result<Arc<Runtime>, Unavailable> {
        {
            let guard = entry.rt.read().await;
            if entry.is_deleted() {
                return Err(Unavailable::Gone);
            }
            if entry.status() != Status::Active {
                return Err(Unavailable::Paused);
            }
            if let Some(rt) = guard.as_ref().filter(|rt| !rt.is_dead()) {
                return Ok(rt.clone());
            }
        }
        let _ops = entry.ops.lock().await;
        if entry.is_deleted() {
            return Err(Unavailable::Gone);
        }
        if entry.status() != Status::Active {
            return Err(Unavailable::Paused);
        }
        let mut guard = entry.rt.write().await;
        if let Some(rt) = guard.as_ref().filter(|rt| !rt.is_dead()) {
            return Ok(rt.clone());
        }
        if let Some(old) = guard.take() {
            let _ = old.kill().await;
        }
        let rt = self
            .start_runtime(entry)
            .await
            .map_err(|e| Unavailable::Failed(e.message))?;
        *guard = Some(rt.clone());
        Ok(rt)
    }

    /// Spawns a command in an active sandbox. The runtime lock is held (for reading) while
    /// spawning, so a concurrent pause waits for the spawn instead of freezing it midway.
    pub(crate) async fn spawn(
        &self,
        entry: &Arc<Entry>,
        spec: CommandSpec,
    ) -> Result<Process, SpawnFailure> {
        for _ in 0..2 {
            {
                let guard = entry.rt.read().await;
                if entry.is_deleted() {
                    return Err(SpawnFailure::Unavailable(Unavailable::Gone));
                }
                if entry.status() != Status::Active {
                    return Err(SpawnFailure::Unavailable(Unavailable::Paused));
                }
                if let Some(rt) = guard.as_ref().filter(|rt| !rt.is_dead()) {
                    return rt.spawn(spec).await.map_err(SpawnFailure::Spawn);
                }
            }
            self.ensure_running(entry)
                .await
                .map_err(SpawnFailure::Unavailable)?;
        }
        Err(SpawnFailure::Unavailable(Unavailable::Failed(
            "the sandbox init keeps exiting".into(),
        )))
    }

    /// One reaper pass: auto-pause sandboxes past their active window, auto-delete sandboxes
    /// paused for longer than `auto_delete_seconds`.
    pub(crate) fn reap(self: &Arc<Self>) {
        let now = now_ns();
        for entry in self.all() {
            let rec = entry.rec();
            if rec.auto_pause_at_ns().is_some_and(|at| now >= at) {
                let app = self.clone();
                let id = rec.id.clone();
                tokio::spawn(async move {
                    let _ = app.pause(&id, false).await;
                });
            }
            if rec.status == Status::Paused
                && rec.auto_delete_at_ns.is_some_and(|at| now >= at)
                && !entry.deleting.load(Ordering::SeqCst)
            {
                let app = self.clone();
                let id = rec.id.clone();
                tokio::spawn(async move {
                    let _ = app.delete(&id).await;
                });
            }
        }
    }

    /// Kills every sandbox's processes, records running sandboxes as paused and removes this
    /// backend's parent cgroups.
    pub(crate) async fn shutdown(&self) {
        for entry in self.all() {
            let _ops = tokio::time::timeout(Duration::from_secs(15), entry.ops.lock())
                .await
                .ok();
            let rt = entry.rt.write().await.take();
            if let Some(rt) = rt {
                let _ = rt.kill().await;
            }
            let now = now_ns();
            let changed = entry.with(|r| {
                if r.status == Status::Paused {
                    return false;
                }
                r.status = Status::Paused;
                r.paused_at_ns = Some(now);
                r.active_since_ns = None;
                r.arm_auto_delete(now);
                true
            });
            if changed {
                let _ = self.persist(&entry).await;
            }
        }
        self.host.cgroups.remove_instance();
    }
}
