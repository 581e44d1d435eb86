//! Snapshots (protocol.md §3.5): what a snapshot holds, its table, its JSON.
//!
//! A snapshot of the local backend is of kind `fs`: the sandbox's whole file system (a
//! captured layer of the layer store on top of the layers the sandbox already had, see
//! `layers`) and its configuration ([`Captured`]). Processes and memory are not captured:
//! this kernel offers no working checkpoint/restore, so a sandbox created from a snapshot
//! boots fresh on the snapshot's files.
//!
//! Rows outlive their sandbox (a deleted sandbox's snapshots are still listed and usable);
//! each snapshot holds its stack in the layer store as `snapshot:<id>`, so deleting it keeps
//! the layers that sandboxes or other snapshots made from it still use.

use std::collections::BTreeMap;

use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::model::{Boot, Stack};
use super::model::{Network, Record};
use super::store::StoreError;
use super::time::format_rfc3339;

/// The only kind this backend captures.
pub(crate) const KIND: &str = "fs";

/// Longest idempotency key accepted.
const MAX_KEY: usize = 256;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS snapshots (
    id                  TEXT PRIMARY KEY,
    sandbox_id          TEXT NOT NULL,
    name                TEXT,
    status              TEXT NOT NULL,
    idempotency_key     TEXT,
    config              TEXT NOT NULL,
    stack               TEXT NOT NULL,
    parent_snapshot_id  TEXT,
    size_bytes          INTEGER NOT NULL DEFAULT 0,
    created_ns          INTEGER NOT NULL,
    ready_ns            INTEGER
);
CREATE UNIQUE INDEX IF NOT EXISTS snapshots_by_key ON snapshots (sandbox_id, idempotency_key);
CREATE INDEX IF NOT EXISTS snapshots_by_sandbox ON snapshots (sandbox_id, created_ns);
";

/// Creates the table.
pub(crate) fn init(c: &Connection) -> Result<(), StoreError> {
    c.execute_batch(SCHEMA)?;
    Ok(())
}

/// The layer store holder name of a snapshot.
pub(crate) fn holder(id: &str) -> String {
    format!("snapshot:{id}")
}

/// The configuration a snapshot captures: what a sandbox created from it gets.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Captured {
    pub template: String,
    pub vcpu_count: u32,
    pub memory_mib: u32,
    pub disk_mib: u32,
    #[serde(default)]
    pub env_vars: BTreeMap<String, String>,
    #[serde(default)]
    pub network: Option<Network>,
    /// Secret bindings by name (`env key → secret name`): a sandbox made from the snapshot
    /// gets new stand-ins for the same secrets.
    #[serde(default)]
    pub secrets: BTreeMap<String, String>,
    /// The template's boot configuration (env, working directory, user, start and ready
    /// commands).
    #[serde(default)]
    pub boot: Boot,
}

impl Captured {
    /// What `rec` would hand on.
    pub(crate) fn of(rec: &Record) -> Captured {
        Captured {
            template: rec.template.clone(),
            vcpu_count: rec.vcpu_count,
            memory_mib: rec.memory_mib,
            disk_mib: rec.disk_mib,
            env_vars: rec.env_vars.clone(),
            network: rec.network.clone(),
            secrets: rec
                .secrets
                .iter()
                .filter(|b| b.visible() && !b.revoked)
                .map(|b| (b.env_key.clone(), b.secret_name.clone()))
                .collect(),
            boot: rec.boot.clone(),
        }
    }
}

/// Lifecycle of a snapshot row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SnapStatus {
    Creating,
    Ready,
    Failed,
}

impl SnapStatus {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            SnapStatus::Creating => "creating",
            SnapStatus::Ready => "ready",
            SnapStatus::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Result<SnapStatus, StoreError> {
        match s {
            "creating" => Ok(SnapStatus::Creating),
            "ready" => Ok(SnapStatus::Ready),
            "failed" => Ok(SnapStatus::Failed),
            other => Err(StoreError::Corrupt(format!("snapshot status {other:?}"))),
        }
    }
}

/// One snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SnapshotRow {
    pub id: String,
    pub sandbox_id: String,
    pub name: Option<String>,
    pub status: SnapStatus,
    pub idempotency_key: Option<String>,
    pub config: Captured,
    pub stack: Stack,
    pub parent_snapshot_id: Option<String>,
    pub size_bytes: u64,
    pub created_ns: i64,
    pub ready_ns: Option<i64>,
}

impl SnapshotRow {
    /// The JSON snapshot object (the SDK's shape, plus the flat variant's
    /// `parent_snapshot_id`).
    pub(crate) fn view(&self) -> serde_json::Value {
        json!({
            "id": self.id,
            "sandbox_id": self.sandbox_id,
            "template_id": self.config.template,
            "kind": KIND,
            "status": self.status.as_str(),
            "name": self.name,
            "size_bytes": self.size_bytes,
            "resources": {
                "vcpu_count": self.config.vcpu_count,
                "memory_mib": self.config.memory_mib,
                "disk_mib": self.config.disk_mib,
            },
            "parent_snapshot_id": self.parent_snapshot_id,
            "created_at": format_rfc3339(self.created_ns),
            "ready_at": self.ready_ns.map(format_rfc3339),
        })
    }
}

/// `POST /sandboxes/{id}/snapshot` body (the SDK always sends `kind: "mem+fs"`; this
/// backend captures `fs` whatever was asked, and says so in its answer).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateBody {
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub idempotency_key: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
}

impl CreateBody {
    /// Checks the fields.
    pub(crate) fn validate(&self) -> Result<(), String> {
        if let Some(k) = &self.kind {
            if k != "mem+fs" && k != KIND {
                return Err(format!("kind must be \"mem+fs\" or \"fs\", got {k:?}"));
            }
        }
        if let Some(k) = &self.idempotency_key {
            if k.is_empty() || k.len() > MAX_KEY || k.chars().any(char::is_control) {
                return Err(format!(
                    "idempotency_key must be 1-{MAX_KEY} bytes without control characters"
                ));
            }
        }
        if let Some(n) = &self.name {
            validate_name(n)?;
        }
        Ok(())
    }
}

/// `PATCH /snapshots/{id}` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RenameBody {
    pub name: Option<String>,
}

/// A snapshot name: 1-128 characters, no control characters, not only spaces.
pub(crate) fn validate_name(name: &str) -> Result<(), String> {
    let n = name.chars().count();
    if name.trim().is_empty() || n > 128 || name.chars().any(char::is_control) {
        return Err(format!(
            "a snapshot name must be 1-128 characters without control characters (got {n})"
        ));
    }
    Ok(())
}

fn from_row(r: &Row<'_>) -> Result<SnapshotRow, StoreError> {
    let config: String = r.get("config")?;
    let stack: String = r.get("stack")?;
    let status: String = r.get("status")?;
    Ok(SnapshotRow {
        id: r.get("id")?,
        sandbox_id: r.get("sandbox_id")?,
        name: r.get("name")?,
        status: SnapStatus::parse(&status)?,
        idempotency_key: r.get("idempotency_key")?,
        config: serde_json::from_str(&config)?,
        stack: serde_json::from_str(&stack)?,
        parent_snapshot_id: r.get("parent_snapshot_id")?,
        size_bytes: u64::try_from(r.get::<_, i64>("size_bytes")?).unwrap_or(0),
        created_ns: r.get("created_ns")?,
        ready_ns: r.get("ready_ns")?,
    })
}

/// Inserts a new row.
pub(crate) fn insert(c: &Connection, s: &SnapshotRow) -> Result<(), StoreError> {
    c.execute(
        "INSERT INTO snapshots (id, sandbox_id, name, status, idempotency_key, config, stack,
            parent_snapshot_id, size_bytes, created_ns, ready_ns)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        params![
            s.id,
            s.sandbox_id,
            s.name,
            s.status.as_str(),
            s.idempotency_key,
            serde_json::to_string(&s.config)?,
            serde_json::to_string(&s.stack)?,
            s.parent_snapshot_id,
            i64::try_from(s.size_bytes).unwrap_or(i64::MAX),
            s.created_ns,
            s.ready_ns,
        ],
    )?;
    Ok(())
}

/// Records the outcome of a capture.
pub(crate) fn finish(
    c: &Connection,
    id: &str,
    outcome: Option<(&Stack, u64)>,
    now: i64,
) -> Result<(), StoreError> {
    match outcome {
        Some((stack, size)) => c.execute(
            "UPDATE snapshots SET status = 'ready', stack = ?2, size_bytes = ?3, ready_ns = ?4
             WHERE id = ?1",
            params![
                id,
                serde_json::to_string(stack)?,
                i64::try_from(size).unwrap_or(i64::MAX),
                now
            ],
        )?,
        None => c.execute(
            "UPDATE snapshots SET status = 'failed' WHERE id = ?1",
            params![id],
        )?,
    };
    Ok(())
}

/// One snapshot by id.
pub(crate) fn get(c: &Connection, id: &str) -> Result<Option<SnapshotRow>, StoreError> {
    let mut stmt = c.prepare("SELECT * FROM snapshots WHERE id = ?1")?;
    let row = stmt
        .query_row(params![id], |r| Ok(from_row(r)))
        .optional()?;
    row.transpose()
}

/// The snapshot a sandbox made with `key`, if any.
pub(crate) fn by_key(
    c: &Connection,
    sandbox_id: &str,
    key: &str,
) -> Result<Option<SnapshotRow>, StoreError> {
    let mut stmt =
        c.prepare("SELECT * FROM snapshots WHERE sandbox_id = ?1 AND idempotency_key = ?2")?;
    let row = stmt
        .query_row(params![sandbox_id, key], |r| Ok(from_row(r)))
        .optional()?;
    row.transpose()
}

/// A sandbox's snapshots, newest first.
pub(crate) fn list(
    c: &Connection,
    sandbox_id: &str,
    limit: Option<usize>,
    offset: usize,
) -> Result<Vec<SnapshotRow>, StoreError> {
    let mut stmt = c.prepare(
        "SELECT * FROM snapshots WHERE sandbox_id = ?1
         ORDER BY created_ns DESC, rowid DESC LIMIT ?2 OFFSET ?3",
    )?;
    let limit = limit.map_or(-1, |l| i64::try_from(l).unwrap_or(i64::MAX));
    let offset = i64::try_from(offset).unwrap_or(i64::MAX);
    let rows = stmt
        .query_map(params![sandbox_id, limit, offset], |r| Ok(from_row(r)))?
        .collect::<Result<Vec<_>, _>>()?;
    rows.into_iter().collect()
}

/// Every snapshot id (start-up: the layer store's live holders).
pub(crate) fn all_ids(c: &Connection) -> Result<Vec<String>, StoreError> {
    let mut stmt = c.prepare("SELECT id FROM snapshots")?;
    let ids = stmt
        .query_map([], |r| r.get(0))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ids)
}

/// Start-up: a capture a stop interrupted failed.
pub(crate) fn fail_interrupted(c: &Connection) -> Result<(), StoreError> {
    c.execute(
        "UPDATE snapshots SET status = 'failed' WHERE status = 'creating'",
        [],
    )?;
    Ok(())
}

/// Renames a snapshot; `false` if there is none.
pub(crate) fn rename(c: &Connection, id: &str, name: &str) -> Result<bool, StoreError> {
    Ok(c.execute(
        "UPDATE snapshots SET name = ?2 WHERE id = ?1",
        params![id, name],
    )? > 0)
}

/// Deletes the row and its references to layers (in one transaction); `false` if there is
/// none.
pub(crate) fn delete(c: &Connection, id: &str) -> Result<bool, StoreError> {
    let tx = c.unchecked_transaction()?;
    let n = tx.execute("DELETE FROM snapshots WHERE id = ?1", params![id])?;
    super::layers::release(&tx, &holder(id))?;
    tx.commit()?;
    Ok(n > 0)
}

/// Whether a sandbox id has (had) snapshots.
pub(crate) fn any_for(c: &Connection, sandbox_id: &str) -> Result<bool, StoreError> {
    Ok(c.query_row(
        "SELECT COUNT(*) > 0 FROM snapshots WHERE sandbox_id = ?1",
        params![sandbox_id],
        |r| r.get(0),
    )?)
}
