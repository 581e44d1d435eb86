//! Snapshots (protocol §3.5): `Sandbox::snapshot`, `Sandbox::snapshots` and the `Snapshot`
//! handle.

use std::fmt;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::json;

use super::{dual, rt, Api, Sandbox};
use crate::config::Config;
use crate::error::{Error, Result, TimeoutKind};
use crate::models::{SnapshotInfo, SnapshotStatus};
use crate::options::{check_snapshot_name, SnapshotOptions, SnapshotRef};
use crate::wire::seg;

/// The last check before a deadline still gets this long, so a snapshot that became ready in
/// the last interval is seen.
const FINAL_CHECK: Duration = Duration::from_secs(5);

/// A saved sandbox: its disk (and, on the hosted service, its memory and processes), kept
/// until deleted whatever becomes of the sandbox. Made by [`Sandbox::snapshot`] or
/// [`Snapshot::get`]; create sandboxes from it with `CreateOptions::from_snapshot`.
///
/// Cheap to clone. The fields are a snapshot of the state when the handle was made;
/// [`get_info`](Self::get_info) fetches fresh ones.
///
/// ```no_run
/// # #[cfg(feature = "blocking")]
/// # fn demo(sb: &superserve::Sandbox) -> superserve::Result<()> {
/// use superserve::{CreateOptions, Sandbox, SnapshotOptions};
/// let snap = sb.snapshot(SnapshotOptions::new().name("before-upgrade"))?;
/// let fork = Sandbox::create(CreateOptions::new("fork").from_snapshot(&snap))?;
/// # let _ = fork; Ok(()) }
/// ```
#[derive(Clone)]
pub struct Snapshot {
    api: Api,
    info: SnapshotInfo,
}

impl fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Snapshot")
            .field("id", &self.info.id)
            .field("name", &self.info.name)
            .field("status", &self.info.status)
            .field("kind", &self.info.kind)
            .finish_non_exhaustive()
    }
}

impl From<&Snapshot> for SnapshotRef {
    fn from(s: &Snapshot) -> Self {
        SnapshotRef(s.info.id.clone())
    }
}

fn require_id(id: &str) -> Result<()> {
    if id.trim().is_empty() {
        return Err(Error::invalid("snapshot id must not be empty"));
    }
    Ok(())
}

fn list_path(sandbox_id: &str, limit: Option<u32>, offset: Option<u32>) -> String {
    let mut q = url::form_urlencoded::Serializer::new(String::new());
    if let Some(l) = limit {
        q.append_pair("limit", &l.to_string());
    }
    if let Some(o) = offset {
        q.append_pair("offset", &o.to_string());
    }
    let q = q.finish();
    let base = format!("/sandboxes/{}/snapshots", seg(sandbox_id));
    if q.is_empty() {
        base
    } else {
        format!("{base}?{q}")
    }
}

#[dual]
impl Sandbox {
    /// Takes a snapshot of the sandbox (see [`SnapshotOptions`]): the key is always sent, so a
    /// retried request never makes two snapshots. With `wait` (the default) returns once the
    /// snapshot is ready; the options' timeout covers the capture and the wait together.
    /// Fails with [`Error::SnapshotFailed`], [`Error::SnapshotDeleted`] or a
    /// [`TimeoutKind::Operation`] timeout while waiting.
    #[tracing::instrument(name = "sandbox.snapshot", level = "debug", skip_all, fields(sandbox_id = self.id()))]
    pub async fn snapshot(&self, opts: SnapshotOptions) -> Result<Snapshot> {
        let body = opts.to_body()?;
        let (api, path) = self.control_path("/snapshot")?;
        let started = Instant::now();
        let deadline = started + opts.timeout;
        let mut req = api.control(Method::POST, &path).json(&body);
        req.timeout = opts.timeout;
        req.deadline = Some(deadline);
        let info: SnapshotInfo = api
            .send(&req)
            .await?
            .json("POST /sandboxes/{id}/snapshot")?;
        let snapshot = Snapshot {
            api: api.clone(),
            info,
        };
        if !opts.wait {
            return Ok(snapshot);
        }
        let left = opts.timeout.saturating_sub(started.elapsed());
        snapshot.wait_until_ready(left, opts.poll_interval).await
    }

    /// This sandbox's snapshots, newest first.
    #[tracing::instrument(name = "sandbox.snapshots", level = "debug", skip_all, fields(sandbox_id = self.id()))]
    pub async fn snapshots(
        &self,
        limit: Option<u32>,
        offset: Option<u32>,
    ) -> Result<Vec<SnapshotInfo>> {
        let (api, _) = self.control_path("")?;
        let path = list_path(self.id(), limit, offset);
        api.send(&api.control(Method::GET, &path))
            .await?
            .json("GET /sandboxes/{id}/snapshots")
    }
}

#[dual]
impl Snapshot {
    /// Fetches a snapshot by id, with the configuration from the environment.
    pub async fn get(snapshot_id: &str) -> Result<Snapshot> {
        Self::get_with_config(&Config::from_env()?, snapshot_id).await
    }

    /// [`get`](Self::get) with an explicit configuration.
    #[tracing::instrument(name = "snapshot.get", level = "debug", skip_all, fields(snapshot_id))]
    pub async fn get_with_config(config: &Config, snapshot_id: &str) -> Result<Snapshot> {
        require_id(snapshot_id)?;
        let api = Api::new(config.clone());
        let info = Self::fetch(&api, snapshot_id, None).await?;
        Ok(Snapshot { api, info })
    }

    /// A sandbox's snapshots, newest first (works for a deleted sandbox too).
    pub async fn list(
        sandbox_id: &str,
        limit: Option<u32>,
        offset: Option<u32>,
    ) -> Result<Vec<SnapshotInfo>> {
        Self::list_with_config(&Config::from_env()?, sandbox_id, limit, offset).await
    }

    /// [`list`](Self::list) with an explicit configuration.
    #[tracing::instrument(name = "snapshot.list", level = "debug", skip_all, fields(sandbox_id))]
    pub async fn list_with_config(
        config: &Config,
        sandbox_id: &str,
        limit: Option<u32>,
        offset: Option<u32>,
    ) -> Result<Vec<SnapshotInfo>> {
        if sandbox_id.trim().is_empty() {
            return Err(Error::invalid("sandbox id must not be empty"));
        }
        let api = Api::new(config.clone());
        let path = list_path(sandbox_id, limit, offset);
        api.send(&api.control(Method::GET, &path))
            .await?
            .json("GET /sandboxes/{id}/snapshots")
    }

    /// Deletes a snapshot by id. Idempotent: an unknown id is not an error.
    pub async fn delete_by_id(snapshot_id: &str) -> Result<()> {
        Self::delete_by_id_with_config(&Config::from_env()?, snapshot_id).await
    }

    /// [`delete_by_id`](Self::delete_by_id) with an explicit configuration.
    #[tracing::instrument(
        name = "snapshot.delete_by_id",
        level = "debug",
        skip_all,
        fields(snapshot_id)
    )]
    pub async fn delete_by_id_with_config(config: &Config, snapshot_id: &str) -> Result<()> {
        require_id(snapshot_id)?;
        Self::delete_raw(&Api::new(config.clone()), snapshot_id).await
    }

    async fn fetch(api: &Api, id: &str, deadline: Option<Instant>) -> Result<SnapshotInfo> {
        let mut req = api.control(Method::GET, &format!("/snapshots/{}", seg(id)));
        req.deadline = deadline;
        api.send(&req).await?.json("GET /snapshots/{id}")
    }

    async fn delete_raw(api: &Api, id: &str) -> Result<()> {
        let req = api.control(Method::DELETE, &format!("/snapshots/{}", seg(id)));
        match api.send(&req).await {
            Ok(_) | Err(Error::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The snapshot id.
    pub fn id(&self) -> &str {
        &self.info.id
    }

    /// Its name, if it has one.
    pub fn name(&self) -> Option<&str> {
        self.info.name.as_deref()
    }

    /// Its status when the handle was made.
    pub fn status(&self) -> &SnapshotStatus {
        &self.info.status
    }

    /// Everything known when the handle was made.
    pub fn info(&self) -> &SnapshotInfo {
        &self.info
    }

    /// Fetches fresh information.
    #[tracing::instrument(name = "snapshot.get_info", level = "debug", skip_all, fields(snapshot_id = self.id()))]
    pub async fn get_info(&self) -> Result<SnapshotInfo> {
        Self::fetch(&self.api, &self.info.id, None).await
    }

    /// Renames the snapshot; returns the renamed snapshot.
    #[tracing::instrument(name = "snapshot.rename", level = "debug", skip_all, fields(snapshot_id = self.id()))]
    pub async fn rename(&self, name: &str) -> Result<Snapshot> {
        check_snapshot_name(name)?;
        let req = self
            .api
            .control(Method::PATCH, &format!("/snapshots/{}", seg(&self.info.id)))
            .json(&json!({ "name": name }));
        let info = self.api.send(&req).await?.json("PATCH /snapshots/{id}")?;
        Ok(Snapshot {
            api: self.api.clone(),
            info,
        })
    }

    /// Deletes the snapshot. Sandboxes created from it are unaffected. Idempotent.
    #[tracing::instrument(name = "snapshot.delete", level = "debug", skip_all, fields(snapshot_id = self.id()))]
    pub async fn delete(&self) -> Result<()> {
        Self::delete_raw(&self.api, &self.info.id).await
    }

    /// Waits until the snapshot is `ready` (polling every `poll_interval`, at most `timeout`)
    /// and returns it. Fails with [`Error::SnapshotFailed`] when it failed,
    /// [`Error::SnapshotDeleted`] when it is being deleted or gone, and a
    /// [`TimeoutKind::Operation`] timeout when it is still settling at the deadline.
    #[tracing::instrument(name = "snapshot.wait_until_ready", level = "debug", skip_all, fields(snapshot_id = self.id()))]
    pub async fn wait_until_ready(
        &self,
        timeout: Duration,
        poll_interval: Duration,
    ) -> Result<Snapshot> {
        let id = self.info.id.clone();
        let settled = |info: &SnapshotInfo| -> Result<bool> {
            match info.status {
                SnapshotStatus::Ready => Ok(true),
                SnapshotStatus::Failed => Err(Error::SnapshotFailed { id: id.clone() }),
                SnapshotStatus::Deleting => Err(Error::SnapshotDeleted { id: id.clone() }),
                _ => Ok(false),
            }
        };
        if settled(&self.info)? {
            return Ok(self.clone());
        }
        let started = Instant::now();
        let deadline = started + timeout;
        let mut status = self.info.status.clone();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::timeout(
                    TimeoutKind::Operation,
                    format!(
                        "snapshot {id} still {status} after {}s",
                        timeout.as_secs_f64()
                    ),
                ));
            }
            rt::sleep(poll_interval.min(left)).await;
            let budget = Instant::now()
                + deadline
                    .saturating_duration_since(Instant::now())
                    .max(FINAL_CHECK);
            let info = match Self::fetch(&self.api, &id, Some(budget)).await {
                Err(Error::NotFound(_)) => return Err(Error::SnapshotDeleted { id }),
                other => other?,
            };
            if settled(&info)? {
                return Ok(Snapshot {
                    api: self.api.clone(),
                    info,
                });
            }
            status = info.status;
        }
    }
}
