//! The sandbox lifecycle: create, activate, pause, resume, update and delete, and the
//! auto-pause / auto-delete timers (the reaper).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::http::StatusCode;

use super::super::desktop::{self, Desktop};
use super::super::error::ApiError;
use super::super::ident::{new_token, uuid_v4};
use super::super::layers::sandbox_holder;
use super::super::model::Boot;
use super::super::model::Stack;
use super::super::model::{
    self, CreateBody, PatchBody, Record, Status, DEFAULT_MEMORY_MIB, DEFAULT_VCPU,
};
use super::super::runtime::{Runtime, SandboxDirs, SandboxSpec};
use super::super::time::now_ns;
use super::{App, Entry};

impl App {
    /// Starts the sandbox's runtime from its record: its agent, disk, cgroup and network.
    pub(super) async fn start_runtime(&self, entry: &Arc<Entry>) -> Result<Arc<Runtime>, ApiError> {
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
            stack: &rec.stack,
            policy: entry.clone(),
        };
        let rt = Runtime::start(&self.host, spec)
            .await
            .map_err(|e| ApiError::internal(format!("cannot start the sandbox: {e}")))?;
        if desktop::is_template(&rec.template) {
            // the desktop boots with the sandbox (its X server through the agent)
            match Desktop::boot(&rt).await {
                Ok(d) => *entry.desktop.lock().await = Some(d),
                Err(e) => {
                    let _ = rt.kill().await;
                    return Err(ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "service_unavailable",
                        format!("cannot start the sandbox's desktop: {e}"),
                    ));
                }
            }
        }
        if !rec.boot.is_empty() {
            if let Err(e) = self.boot_commands(&rt, &rec.boot, &rec.hostname).await {
                let _ = rt.kill().await;
                return Err(e);
            }
        }
        Ok(rt)
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
        let mut env_vars = body.env_vars.unwrap_or_default();
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
        // a snapshot brings its files and its configuration; what the request sets wins
        let snap = match &body.from_snapshot {
            Some(sid) => Some(self.boot_snapshot(sid).await?),
            None => None,
        };
        let mut network = body.network;
        if let Some(snap) = &snap {
            let cfg = &snap.config;
            for (env_key, secret_name) in &cfg.secrets {
                if env_vars.contains_key(env_key) || secrets.iter().any(|b| &b.env_key == env_key) {
                    continue;
                }
                let binding = self
                    .new_binding(env_key.clone(), secret_name.clone())
                    .await
                    .map_err(|e| {
                        let mut c = ApiError::conflict(format!(
                            "the snapshot binds {env_key} to secret {secret_name:?}, which is \
                             unavailable: {}",
                            e.message
                        ));
                        c.code = "snapshot_secret_unavailable".into();
                        c
                    })?;
                secrets.push(binding);
            }
            for (k, v) in &cfg.env_vars {
                if !secrets.iter().any(|b| &b.env_key == k) {
                    env_vars.entry(k.clone()).or_insert_with(|| v.clone());
                }
            }
            if network.is_none() {
                network = cfg.network.clone();
            }
        }
        // a template brings its layers, its boot configuration and its resources
        let tmpl = match &body.from_template {
            Some(t) => Some(
                self.resolve_template(t)
                    .await?
                    .ok_or_else(|| ApiError::not_found(format!("template {t:?} not found")))?,
            ),
            None => None,
        };
        let template = match (&snap, &tmpl) {
            (Some(s), _) => s.config.template.clone(),
            (None, Some(t)) => t.id.clone(),
            (None, None) => model::BASE_TEMPLATE.to_owned(),
        };
        if desktop::is_template(&template) {
            desktop::check_host().map_err(|msg| {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "service_unavailable", msg)
            })?;
        }
        let res = tmpl.as_ref().and_then(|t| t.res);

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
            vcpu_count: match (&snap, res) {
                (Some(s), _) => s.config.vcpu_count,
                (None, Some(r)) => r.vcpu,
                (None, None) => DEFAULT_VCPU,
            },
            memory_mib: match (&snap, res) {
                (Some(s), _) => s.config.memory_mib,
                (None, Some(r)) => r.memory_mib,
                (None, None) => DEFAULT_MEMORY_MIB,
            },
            disk_mib: match (&snap, res) {
                (Some(s), _) => s.config.disk_mib,
                (None, Some(r)) => r.disk_mib,
                (None, None) => self.tuning.disk_mib,
            },
            id_slot: Some(id_slot),
            created_ns: now,
            timeout_seconds: body.timeout_seconds,
            auto_delete_seconds: body.auto_delete_seconds,
            auto_delete_at_ns: None,
            active_since_ns: None,
            paused_at_ns: None,
            network,
            metadata,
            env_vars,
            secrets,
            preview_access,
            access_token: new_token(),
            template,
            stack: match (&snap, &tmpl) {
                (Some(s), _) => s.stack.clone(),
                (None, Some(t)) => t.stack.clone(),
                (None, None) => Stack::default(),
            },
            source_snapshot: snap.as_ref().map(|s| s.id.clone()),
            boot: match (&snap, &tmpl) {
                (Some(s), _) => s.config.boot.clone(),
                (None, Some(t)) => t.boot.clone(),
                (None, None) => Boot::default(),
            },
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
        let held = match &snap {
            Some(s) => self.hold_snapshot_stack(&id, &s.id, &rec.stack).await,
            None if rec.stack.layers.is_empty() => Ok(()),
            None => self
                .host
                .layers
                .hold(&sandbox_holder(&id), &rec.stack)
                .await
                .map_err(ApiError::from),
        };
        if let Err(e) = held {
            self.discard(&entry, None).await;
            return Err(e);
        }
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
        let dirs = SandboxDirs::new(&self.host, &entry.id);
        let (ids, id, slot) = (self.host.ids.clone(), entry.id.clone(), entry.rec().id_slot);
        let _ = tokio::task::spawn_blocking(move || {
            let _ = cgroup.destroy();
            let _ = dirs.remove();
            if let Some(slot) = slot {
                ids.release(slot, &id);
            }
        })
        .await;
        let _ = self.host.layers.release(&sandbox_holder(&entry.id)).await;
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
            // nothing of the disk is kept: no write-back, no flush on the way out
            if let Err(e) = rt.discard_disk() {
                tracing::debug!(sandbox = id, error = %e, "the sandbox disk was not shut down");
            }
            if let Err(e) = rt.kill().await {
                problems.push(format!("killing processes: {e}"));
            }
        }
        let cgroup = self.host.cgroups.sandbox(id);
        let dirs = SandboxDirs::new(&self.host, id);
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
        self.previews.forget(id).await?;
        if let Err(e) = self.host.layers.release(&sandbox_holder(id)).await {
            problems.push(format!("releasing its layers: {e}"));
        }
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
}
