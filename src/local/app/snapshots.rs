//! Snapshots of sandboxes: the capture (freeze, flush, reflink the disk into the layer
//! store, thaw), list, get, rename, delete, and what a sandbox created from one gets.

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;

use super::super::error::ApiError;
use super::super::ident::uuid_v4;
use super::super::idmap;
use super::super::layers::{self, pool};
use super::super::model::Stack;
use super::super::model::Status;
use super::super::runtime::SandboxDirs;
use super::super::snapshots::{self, Captured, CreateBody, SnapStatus, SnapshotRow};
use super::super::time::now_ns;
use super::{App, Entry};

/// How long `POST /sandboxes/{id}/snapshot` waits for the capture before answering 202
/// (`creating`) and letting it finish in the background.
const CAPTURE_WAIT: Duration = Duration::from_secs(10);

impl ApiError {
    fn snapshot_not_found() -> ApiError {
        ApiError::not_found("snapshot not found")
    }
}

impl App {
    /// `POST /sandboxes/{id}/snapshot`: the snapshot and the status to answer with (201 made
    /// now, 200 the one an earlier request with the same key made, 202 still `creating`).
    pub(crate) async fn snapshot(
        self: &Arc<Self>,
        id: &str,
        body: CreateBody,
    ) -> Result<(SnapshotRow, StatusCode), ApiError> {
        body.validate().map_err(ApiError::bad_request)?;
        let entry = self.entry(id)?;
        if let Some(existing) = self
            .snapshot_by_key(id, body.idempotency_key.as_deref())
            .await?
        {
            return Ok(answer_existing(existing));
        }
        let rec = entry.rec();
        // a start, pause or resume under way settles before the capture (it waits for the
        // sandbox's lifecycle lock); a failed sandbox never does
        if rec.status == Status::Failed {
            check_capturable(rec.status)?;
        }
        let row = SnapshotRow {
            id: uuid_v4(),
            sandbox_id: rec.id.clone(),
            name: body.name,
            status: SnapStatus::Creating,
            idempotency_key: body.idempotency_key.clone(),
            config: Captured::of(&rec),
            stack: rec.stack.clone(),
            parent_snapshot_id: rec.source_snapshot.clone(),
            size_bytes: 0,
            created_ns: now_ns(),
            ready_ns: None,
        };
        let inserted = {
            let row = row.clone();
            self.db.call(move |c| snapshots::insert(c, &row)).await
        };
        if let Err(e) = inserted {
            // the same key raced in from another request: that one's snapshot
            if let Some(existing) = self
                .snapshot_by_key(id, body.idempotency_key.as_deref())
                .await?
            {
                return Ok(answer_existing(existing));
            }
            return Err(e.into());
        }
        let app = self.clone();
        let sid = row.id.clone();
        let task = tokio::spawn(async move { app.capture(&entry, &sid).await });
        match tokio::time::timeout(CAPTURE_WAIT, task).await {
            Ok(Ok(Ok(done))) => Ok((done, StatusCode::CREATED)),
            Ok(Ok(Err(e))) => Err(e),
            Ok(Err(e)) => Err(ApiError::internal(format!("the capture task failed: {e}"))),
            Err(_) => Ok((row, StatusCode::ACCEPTED)),
        }
    }

    async fn snapshot_by_key(
        &self,
        sandbox_id: &str,
        key: Option<&str>,
    ) -> Result<Option<SnapshotRow>, ApiError> {
        let Some(key) = key else {
            return Ok(None);
        };
        let (sandbox_id, key) = (sandbox_id.to_owned(), key.to_owned());
        Ok(self
            .db
            .call(move |c| snapshots::by_key(c, &sandbox_id, &key))
            .await?)
    }

    /// Captures the sandbox into snapshot `sid` (its row exists, `creating`) and records the
    /// outcome. The sandbox is frozen for the capture if it runs, and thawed after.
    async fn capture(&self, entry: &Arc<Entry>, sid: &str) -> Result<SnapshotRow, ApiError> {
        let res = self.capture_locked(entry, sid).await;
        let outcome = res.as_ref().ok().map(|(s, n)| (s.clone(), *n));
        let (id, now) = (sid.to_owned(), now_ns());
        let finished = self
            .db
            .call(move |c| {
                snapshots::finish(c, &id, outcome.as_ref().map(|(s, n)| (s, *n)), now)?;
                snapshots::get(c, &id)
            })
            .await;
        if res.is_ok() && !matches!(finished, Ok(Some(_))) {
            // deleted while it was being captured: its layer goes
            let _ = self.host.layers.release(&snapshots::holder(sid)).await;
        }
        res?;
        finished?.ok_or_else(ApiError::snapshot_not_found)
    }

    async fn capture_locked(
        &self,
        entry: &Arc<Entry>,
        sid: &str,
    ) -> Result<(Stack, u64), ApiError> {
        let _ops = entry.ops.lock().await;
        if entry.is_deleted() {
            return Err(ApiError::sandbox_not_found());
        }
        let rec = entry.rec();
        check_capturable(rec.status)?;
        let slot = rec
            .id_slot
            .ok_or_else(|| ApiError::internal("the sandbox has no id range"))?;
        let guard = entry.rt.read().await;
        let live = guard.as_ref().filter(|rt| !rt.is_dead()).cloned();
        drop(guard);
        let freeze = live.is_some() && rec.status == Status::Active;
        if let Some(rt) = live.as_ref().filter(|_| freeze) {
            rt.set_frozen(true)
                .await
                .map_err(|e| ApiError::internal(format!("cannot freeze the sandbox: {e}")))?;
        }
        let disk = SandboxDirs::new(&self.host, &rec.id).disk;
        let root: Option<PathBuf> = live
            .as_ref()
            .map(|rt| PathBuf::from(format!("/proc/self/fd/{}", rt.root().as_raw_fd())));
        let holder = snapshots::holder(sid);
        let store = self.host.layers.clone();
        let captured = tokio::task::block_in_place(|| {
            if let Some(root) = &root {
                // the sandbox's overlay flushes its upper file system: every block of the
                // disk image is at its place before the clone
                pool::sync_fs_of(root)
                    .map_err(|e| format!("cannot flush the sandbox disk: {e}"))?;
            }
            store
                .capture(&disk, idmap::base(slot), &holder, &rec.stack)
                .map_err(|e| e.to_string())
        });
        if let Some(rt) = live.as_ref().filter(|_| freeze) {
            if let Err(e) = rt.set_frozen(false).await {
                eprintln!(
                    "superserve-local: sandbox {}: cannot thaw after a snapshot: {e}",
                    rec.id
                );
            }
        }
        captured.map_err(|e| ApiError::internal(format!("the snapshot failed: {e}")))
    }

    /// `GET /snapshots/{id}`.
    pub(crate) async fn get_snapshot(&self, sid: &str) -> Result<SnapshotRow, ApiError> {
        let sid = sid.to_owned();
        self.db
            .call(move |c| snapshots::get(c, &sid))
            .await?
            .ok_or_else(ApiError::snapshot_not_found)
    }

    /// `GET /sandboxes/{id}/snapshots`: also for a deleted sandbox (404 only for an id that
    /// never had a sandbox here, or had one without snapshots and is gone).
    pub(crate) async fn list_snapshots(
        &self,
        sandbox_id: &str,
        limit: Option<usize>,
        offset: usize,
    ) -> Result<Vec<SnapshotRow>, ApiError> {
        let known = self.get(sandbox_id).is_some();
        let id = sandbox_id.to_owned();
        let (rows, any) = self
            .db
            .call(move |c| {
                Ok((
                    snapshots::list(c, &id, limit, offset)?,
                    snapshots::any_for(c, &id)?,
                ))
            })
            .await?;
        if !known && !any {
            return Err(ApiError::sandbox_not_found());
        }
        Ok(rows)
    }

    /// `PATCH /snapshots/{id}`.
    pub(crate) async fn rename_snapshot(
        &self,
        sid: &str,
        body: snapshots::RenameBody,
    ) -> Result<SnapshotRow, ApiError> {
        let name = body
            .name
            .ok_or_else(|| ApiError::bad_request("name is required"))?;
        snapshots::validate_name(&name).map_err(ApiError::bad_request)?;
        let sid = sid.to_owned();
        self.db
            .call(move |c| {
                if !snapshots::rename(c, &sid, &name)? {
                    return Ok(None);
                }
                snapshots::get(c, &sid)
            })
            .await?
            .ok_or_else(ApiError::snapshot_not_found)
    }

    /// `DELETE /snapshots/{id}`: the row goes at once; its layers go when nothing else (a
    /// sandbox, a snapshot made over it, a template) uses them.
    pub(crate) async fn delete_snapshot(&self, sid: &str) -> Result<(), ApiError> {
        let id = sid.to_owned();
        if !self.db.call(move |c| snapshots::delete(c, &id)).await? {
            return Err(ApiError::snapshot_not_found());
        }
        self.host.layers.gc().await?;
        Ok(())
    }

    /// What a sandbox created from snapshot `sid` starts from (the snapshot must be ready).
    pub(super) async fn boot_snapshot(&self, sid: &str) -> Result<SnapshotRow, ApiError> {
        let row = self
            .get_snapshot(sid)
            .await
            .map_err(|_| ApiError::not_found(format!("snapshot {sid:?} not found")))?;
        match row.status {
            SnapStatus::Ready => Ok(row),
            other => {
                let mut e =
                    ApiError::conflict(format!("snapshot {sid} is {}, not ready", other.as_str()));
                e.code = "snapshot_not_ready".into();
                Err(e)
            }
        }
    }

    /// Makes sandbox `sandbox_id` hold `stack`, the stack of snapshot `sid`, if that snapshot
    /// still exists (in one transaction: a concurrent delete cannot take the layers away).
    pub(super) async fn hold_snapshot_stack(
        &self,
        sandbox_id: &str,
        sid: &str,
        stack: &Stack,
    ) -> Result<(), ApiError> {
        let (holder, sid, stack) = (
            layers::sandbox_holder(sandbox_id),
            sid.to_owned(),
            stack.clone(),
        );
        let held = self
            .db
            .call(move |c| {
                let tx = c.unchecked_transaction()?;
                if snapshots::get(&tx, &sid)?.is_none() {
                    return Ok(false);
                }
                layers::hold(&tx, &holder, &stack)?;
                tx.commit()?;
                Ok(true)
            })
            .await?;
        if held {
            Ok(())
        } else {
            Err(ApiError::not_found("the snapshot was deleted meanwhile"))
        }
    }
}

fn answer_existing(row: SnapshotRow) -> (SnapshotRow, StatusCode) {
    let code = match row.status {
        SnapStatus::Creating => StatusCode::ACCEPTED,
        _ => StatusCode::OK,
    };
    (row, code)
}

fn check_capturable(status: Status) -> Result<(), ApiError> {
    match status {
        Status::Active | Status::Paused => Ok(()),
        other => {
            let mut e = ApiError::conflict(format!(
                "sandbox is {}; a snapshot needs an active or paused sandbox",
                other.as_str()
            ));
            e.code = "snapshot_source_state_invalid".into();
            Err(e)
        }
    }
}
