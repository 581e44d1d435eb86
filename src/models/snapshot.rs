use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use super::{string_enum, Timestamp};

string_enum! {
    /// What a snapshot captured.
    SnapshotKind {
        /// Memory and disk: a sandbox made from it continues the processes that were running
        /// (the hosted service).
        MemFs = "mem+fs",
        /// The filesystem and the sandbox's configuration, no processes or memory (the local
        /// backend: this kernel offers no working checkpoint/restore).
        Fs = "fs",
    }
}

string_enum! {
    /// Lifecycle state of a snapshot.
    SnapshotStatus {
        /// Being captured.
        Creating = "creating",
        /// Usable: sandboxes can be created from it.
        Ready = "ready",
        /// The capture failed.
        Failed = "failed",
        /// Being deleted.
        Deleting = "deleting",
    }
}

/// What a sandbox created from a snapshot gets.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SnapshotResources {
    /// vCPUs.
    pub vcpu_count: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// Disk in MiB.
    pub disk_mib: u64,
}

/// A snapshot as the API describes it.
///
/// Both server shapes are read: the SDK's (`resources: {vcpu_count, memory_mib, disk_mib}`,
/// `size_bytes`) and a newer flat one (`vcpu_count`, `memory_mib`, `disk_mib`,
/// `logical_size_bytes`, `parent_snapshot_id`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct SnapshotInfo {
    /// Snapshot id.
    pub id: String,
    /// The sandbox it was taken from (which may since have been deleted).
    pub sandbox_id: String,
    /// The template that sandbox was created from.
    pub template_id: Option<String>,
    /// What was captured.
    pub kind: SnapshotKind,
    /// Lifecycle state.
    pub status: SnapshotStatus,
    /// Its name, if it has one.
    pub name: Option<String>,
    /// Bytes it holds on disk (0 until ready).
    pub size_bytes: u64,
    /// What a sandbox created from it gets.
    pub resources: SnapshotResources,
    /// The snapshot this one was taken over (a sandbox created from a snapshot), if any.
    pub parent_snapshot_id: Option<String>,
    /// When it was requested.
    pub created_at: Timestamp,
    /// When it became ready.
    pub ready_at: Option<Timestamp>,
}

impl<'de> Deserialize<'de> for SnapshotInfo {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let v = Value::deserialize(d)?;
        let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
        let n = |k: &str| v.get(k).and_then(Value::as_u64);
        let required = |k: &str| {
            s(k).filter(|x| !x.is_empty())
                .ok_or_else(|| D::Error::custom(format!("snapshot missing {k}")))
        };
        let res = v.get("resources").filter(|r| r.is_object());
        let rn = |k: &str| {
            res.and_then(|r| r.get(k))
                .and_then(Value::as_u64)
                .or_else(|| n(k))
                .unwrap_or(0)
        };
        Ok(SnapshotInfo {
            id: required("id")?,
            sandbox_id: required("sandbox_id")?,
            template_id: s("template_id"),
            kind: s("kind")
                .filter(|k| !k.is_empty())
                .map_or(SnapshotKind::MemFs, |k| SnapshotKind::from(k.as_str())),
            status: SnapshotStatus::from(required("status")?.as_str()),
            name: s("name"),
            size_bytes: n("size_bytes")
                .or_else(|| n("logical_size_bytes"))
                .unwrap_or(0),
            resources: SnapshotResources {
                vcpu_count: u32::try_from(rn("vcpu_count")).unwrap_or(u32::MAX),
                memory_mib: rn("memory_mib"),
                disk_mib: rn("disk_mib"),
            },
            parent_snapshot_id: s("parent_snapshot_id"),
            created_at: Timestamp::from(required("created_at")?),
            ready_at: s("ready_at").map(Timestamp::from),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_server_shapes() {
        let a: SnapshotInfo = serde_json::from_str(
            r#"{"id":"s1","sandbox_id":"sb","status":"creating","created_at":"2026-01-01T00:00:00Z",
                "resources":{"vcpu_count":2,"memory_mib":1024,"disk_mib":4096},"size_bytes":null}"#,
        )
        .unwrap();
        assert_eq!(a.kind, SnapshotKind::MemFs);
        assert_eq!(a.status, SnapshotStatus::Creating);
        assert_eq!(a.resources.memory_mib, 1024);
        assert_eq!(a.size_bytes, 0);
        let b: SnapshotInfo = serde_json::from_str(
            r#"{"id":"s2","sandbox_id":"sb","status":"ready","created_at":"2026-01-01T00:00:00Z",
                "kind":"fs","vcpu_count":1,"memory_mib":512,"disk_mib":2048,
                "logical_size_bytes":99,"parent_snapshot_id":"s1","updated_at":"x"}"#,
        )
        .unwrap();
        assert_eq!(b.kind, SnapshotKind::Fs);
        assert_eq!(b.resources.disk_mib, 2048);
        assert_eq!(b.size_bytes, 99);
        assert_eq!(b.parent_snapshot_id.as_deref(), Some("s1"));
        assert!(serde_json::from_str::<SnapshotInfo>(r#"{"id":"x","status":"ready"}"#).is_err());
        let c: SnapshotInfo = serde_json::from_str(
            r#"{"id":"s3","sandbox_id":"sb","status":"archived","created_at":"t"}"#,
        )
        .unwrap();
        assert_eq!(c.status, SnapshotStatus::Unknown("archived".into()));
    }
}
