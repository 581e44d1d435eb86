//! SQLite state: sandbox records and the network event log.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{params, Connection, Row};
use serde::Serialize;

use super::fault::lock;
use super::model::{Binding, Network, Record, Status};
use super::time::format_rfc3339;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS sandboxes (
    id                  TEXT PRIMARY KEY,
    seq                 INTEGER NOT NULL,
    name                TEXT NOT NULL,
    status              TEXT NOT NULL,
    vcpu_count          INTEGER NOT NULL,
    memory_mib          INTEGER NOT NULL,
    created_ns          INTEGER NOT NULL,
    timeout_seconds     INTEGER,
    auto_delete_seconds INTEGER,
    auto_delete_at_ns   INTEGER,
    active_since_ns     INTEGER,
    paused_at_ns        INTEGER,
    network             TEXT,
    metadata            TEXT NOT NULL,
    env_vars            TEXT NOT NULL,
    secrets             TEXT NOT NULL,
    preview_access      TEXT NOT NULL,
    access_token        TEXT NOT NULL,
    template            TEXT NOT NULL,
    hostname            TEXT NOT NULL,
    disk_mib            INTEGER NOT NULL DEFAULT 4096,
    id_slot             INTEGER,
    stack               TEXT NOT NULL DEFAULT '{}',
    source_snapshot     TEXT,
    boot                TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS network_events (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    sandbox_id      TEXT NOT NULL,
    ts_ns           INTEGER NOT NULL,
    kind            TEXT NOT NULL,
    host            TEXT,
    dst_ip          TEXT,
    dst_port        INTEGER,
    verdict         TEXT,
    match_rule      TEXT,
    bytes_sent      INTEGER,
    bytes_recv      INTEGER,
    method          TEXT,
    path            TEXT,
    status          INTEGER,
    upstream_status INTEGER,
    latency_ms      INTEGER,
    secret_id       TEXT,
    error_code      TEXT
);
CREATE INDEX IF NOT EXISTS network_events_by_sandbox ON network_events (sandbox_id, ts_ns, id);
";

/// Errors of the store (SQLite or JSON columns).
#[derive(Debug, thiserror::Error)]
pub(crate) enum StoreError {
    #[error("sqlite: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("corrupt JSON column: {0}")]
    Json(#[from] serde_json::Error),
    #[error("corrupt record: {0}")]
    Corrupt(String),
    #[error("store task failed: {0}")]
    Join(String),
}

/// One network log row (protocol.md §8 `NetworkEvent`); inapplicable fields are `None` and
/// omitted from the JSON.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub(crate) struct NetworkEventRow {
    pub id: i64,
    #[serde(skip)]
    pub ts_ns: i64,
    pub ts: String,
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dst_ip: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dst_port: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verdict: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub match_rule: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_sent: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_recv: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_status: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
}

/// Where a page of the network log ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Before {
    /// A cursor from a previous page: rows strictly after it in newest-first order.
    Cursor { ts_ns: i64, id: i64 },
    /// An RFC 3339 timestamp: rows strictly older.
    Time(i64),
}

/// A network log query (already validated).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct EventQuery {
    pub limit: usize,
    pub before: Option<Before>,
    pub since_ns: Option<i64>,
    pub verdict: Option<String>,
}

/// A page of the network log.
#[derive(Debug, Serialize)]
pub(crate) struct EventPage {
    pub data: Vec<NetworkEventRow>,
    pub next_cursor: Option<String>,
    pub has_more: bool,
}

/// Cursor strings are opaque to clients: `c<ts_ns>.<id>`.
pub(crate) fn encode_cursor(ts_ns: i64, id: i64) -> String {
    format!("c{ts_ns}.{id}")
}

/// Parses a cursor made by [`encode_cursor`].
pub(crate) fn decode_cursor(s: &str) -> Option<Before> {
    let (ts, id) = s.strip_prefix('c')?.split_once('.')?;
    Some(Before::Cursor {
        ts_ns: ts.parse().ok()?,
        id: id.parse().ok()?,
    })
}

/// The database, shared by the async handlers (every call runs on the blocking pool).
#[derive(Clone)]
pub(crate) struct Db {
    conn: Arc<Mutex<Connection>>,
}

impl Db {
    /// Opens (creating if needed) the database file.
    pub(crate) fn open(path: &Path) -> Result<Db, StoreError> {
        let conn = Connection::open(path)?;
        Self::init(conn)
    }

    /// An in-memory database (tests).
    #[cfg(test)]
    pub(crate) fn memory() -> Result<Db, StoreError> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(conn: Connection) -> Result<Db, StoreError> {
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        // WAL keeps writes cheap; NORMAL sync is durable across process crashes.
        let _: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        conn.execute_batch("PRAGMA synchronous=NORMAL;")?;
        conn.execute_batch(SCHEMA)?;
        // databases made before the per-sandbox disk and id range
        for column in [
            "disk_mib INTEGER NOT NULL DEFAULT 4096",
            "id_slot INTEGER",
            "stack TEXT NOT NULL DEFAULT '{}'",
            "source_snapshot TEXT",
            "boot TEXT NOT NULL DEFAULT '{}'",
        ] {
            let name = column.split(' ').next().unwrap_or(column);
            let has: bool = conn.query_row(
                "SELECT COUNT(*) > 0 FROM pragma_table_info('sandboxes') WHERE name = ?1",
                params![name],
                |r| r.get(0),
            )?;
            if !has {
                conn.execute_batch(&format!("ALTER TABLE sandboxes ADD COLUMN {column}"))?;
            }
        }
        Ok(Db {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Runs `f` with the connection on the blocking pool.
    pub(crate) async fn call<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || f(&lock(&conn)))
            .await
            .map_err(|e| StoreError::Join(e.to_string()))?
    }

    /// Runs `f` with the connection on the current thread (startup, shutdown, tests).
    pub(crate) fn call_sync<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        f(&lock(&self.conn))
    }

    pub(crate) async fn delete(&self, id: String) -> Result<(), StoreError> {
        self.call(move |c| {
            c.execute("DELETE FROM sandboxes WHERE id = ?1", params![id])?;
            c.execute(
                "DELETE FROM network_events WHERE sandbox_id = ?1",
                params![id],
            )?;
            Ok(())
        })
        .await
    }
}

fn to_json<T: Serialize>(v: &T) -> Result<String, StoreError> {
    Ok(serde_json::to_string(v)?)
}

/// Inserts or replaces a record.
pub(crate) fn upsert(c: &Connection, r: &Record) -> Result<(), StoreError> {
    let network = match &r.network {
        Some(n) => Some(to_json(n)?),
        None => None,
    };
    c.execute(
        "INSERT OR REPLACE INTO sandboxes (id, seq, name, status, vcpu_count, memory_mib,
            created_ns, timeout_seconds, auto_delete_seconds, auto_delete_at_ns, active_since_ns,
            paused_at_ns, network, metadata, env_vars, secrets, preview_access, access_token,
            template, hostname, disk_mib, id_slot, stack, source_snapshot, boot)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17,
            ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25)",
        params![
            r.id,
            r.seq,
            r.name,
            r.status.as_str(),
            r.vcpu_count,
            r.memory_mib,
            r.created_ns,
            r.timeout_seconds.map(|v| v as i64),
            r.auto_delete_seconds.map(|v| v as i64),
            r.auto_delete_at_ns,
            r.active_since_ns,
            r.paused_at_ns,
            network,
            to_json(&r.metadata)?,
            to_json(&r.env_vars)?,
            to_json(&r.secrets)?,
            r.preview_access,
            r.access_token,
            r.template,
            r.hostname,
            r.disk_mib,
            r.id_slot,
            to_json(&r.stack)?,
            r.source_snapshot,
            to_json(&r.boot)?,
        ],
    )?;
    Ok(())
}

fn opt_u64(v: Option<i64>) -> Option<u64> {
    v.and_then(|v| u64::try_from(v).ok())
}

fn record_from_row(row: &Row<'_>) -> Result<Record, StoreError> {
    let status: String = row.get("status")?;
    let network: Option<String> = row.get("network")?;
    let metadata: String = row.get("metadata")?;
    let env_vars: String = row.get("env_vars")?;
    let secrets: String = row.get("secrets")?;
    let stack: String = row.get("stack")?;
    Ok(Record {
        id: row.get("id")?,
        seq: row.get("seq")?,
        name: row.get("name")?,
        status: Status::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown status {status:?}")))?,
        vcpu_count: row.get("vcpu_count")?,
        memory_mib: row.get("memory_mib")?,
        disk_mib: row.get("disk_mib")?,
        id_slot: row.get("id_slot")?,
        created_ns: row.get("created_ns")?,
        timeout_seconds: opt_u64(row.get("timeout_seconds")?),
        auto_delete_seconds: opt_u64(row.get("auto_delete_seconds")?),
        auto_delete_at_ns: row.get("auto_delete_at_ns")?,
        active_since_ns: row.get("active_since_ns")?,
        paused_at_ns: row.get("paused_at_ns")?,
        network: match network {
            Some(n) => Some(serde_json::from_str::<Network>(&n)?),
            None => None,
        },
        metadata: serde_json::from_str::<BTreeMap<String, String>>(&metadata)?,
        env_vars: serde_json::from_str::<BTreeMap<String, String>>(&env_vars)?,
        secrets: serde_json::from_str::<Vec<Binding>>(&secrets)?,
        preview_access: row.get("preview_access")?,
        access_token: row.get("access_token")?,
        template: row.get("template")?,
        hostname: row.get("hostname")?,
        stack: serde_json::from_str(&stack)?,
        source_snapshot: row.get("source_snapshot")?,
        boot: serde_json::from_str(&row.get::<_, String>("boot")?)?,
    })
}

/// Every record, oldest first.
pub(crate) fn load_all(c: &Connection) -> Result<Vec<Record>, StoreError> {
    let mut stmt = c.prepare("SELECT * FROM sandboxes ORDER BY seq")?;
    let mut rows = stmt.query([])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(record_from_row(row)?);
    }
    Ok(out)
}

/// Loads one record.
#[cfg(test)]
pub(crate) fn load(c: &Connection, id: &str) -> Result<Option<Record>, StoreError> {
    use rusqlite::OptionalExtension;
    let mut stmt = c.prepare("SELECT * FROM sandboxes WHERE id = ?1")?;
    let row = stmt
        .query_row(params![id], |row| Ok(record_from_row(row)))
        .optional()?;
    row.transpose()
}

/// Appends one event to a sandbox's network log and returns its id. `ev.id` and `ev.ts` are
/// ignored (assigned by the database and derived from `ev.ts_ns`).
pub(crate) fn insert_network_event(
    c: &Connection,
    sandbox_id: &str,
    ev: &NetworkEventRow,
) -> Result<i64, StoreError> {
    c.execute(
        "INSERT INTO network_events (sandbox_id, ts_ns, kind, host, dst_ip, dst_port, verdict,
            match_rule, bytes_sent, bytes_recv, method, path, status, upstream_status, latency_ms,
            secret_id, error_code)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
        params![
            sandbox_id,
            ev.ts_ns,
            ev.kind,
            ev.host,
            ev.dst_ip,
            ev.dst_port,
            ev.verdict,
            ev.match_rule,
            ev.bytes_sent,
            ev.bytes_recv,
            ev.method,
            ev.path,
            ev.status,
            ev.upstream_status,
            ev.latency_ms,
            ev.secret_id,
            ev.error_code,
        ],
    )?;
    let id = c.last_insert_rowid();
    if id % 1024 == 0 {
        trim_network_events(c, sandbox_id, MAX_EVENTS_PER_SANDBOX)?;
    }
    Ok(id)
}

/// Most network log events kept per sandbox (the oldest go first).
const MAX_EVENTS_PER_SANDBOX: i64 = 100_000;

/// Drops a sandbox's oldest network events beyond the newest `keep`.
fn trim_network_events(c: &Connection, sandbox_id: &str, keep: i64) -> Result<(), StoreError> {
    c.execute(
        "DELETE FROM network_events WHERE sandbox_id = ?1 AND id <= (
            SELECT id FROM network_events WHERE sandbox_id = ?1
            ORDER BY id DESC LIMIT 1 OFFSET ?2)",
        params![sandbox_id, keep],
    )?;
    Ok(())
}

/// Records the final byte counts of a relayed connection.
pub(crate) fn set_connection_bytes(
    c: &Connection,
    event_id: i64,
    sent: u64,
    recv: u64,
) -> Result<(), StoreError> {
    c.execute(
        "UPDATE network_events SET bytes_sent = ?2, bytes_recv = ?3 WHERE id = ?1",
        params![
            event_id,
            i64::try_from(sent).unwrap_or(i64::MAX),
            i64::try_from(recv).unwrap_or(i64::MAX)
        ],
    )?;
    Ok(())
}

/// One page of a sandbox's network log, newest first.
pub(crate) fn query_network_events(
    c: &Connection,
    sandbox_id: &str,
    q: &EventQuery,
) -> Result<EventPage, StoreError> {
    let mut sql = String::from(
        "SELECT id, ts_ns, kind, host, dst_ip, dst_port, verdict, match_rule, bytes_sent,
            bytes_recv, method, path, status, upstream_status, latency_ms, secret_id, error_code
         FROM network_events WHERE sandbox_id = ?1",
    );
    let mut args: Vec<rusqlite::types::Value> = vec![sandbox_id.to_owned().into()];
    match q.before {
        Some(Before::Cursor { ts_ns, id }) => {
            args.push(ts_ns.into());
            args.push(id.into());
            sql.push_str(&format!(
                " AND (ts_ns < ?{a} OR (ts_ns = ?{a} AND id < ?{b}))",
                a = args.len() - 1,
                b = args.len()
            ));
        }
        Some(Before::Time(ts)) => {
            args.push(ts.into());
            sql.push_str(&format!(" AND ts_ns < ?{}", args.len()));
        }
        None => {}
    }
    if let Some(since) = q.since_ns {
        args.push(since.into());
        sql.push_str(&format!(" AND ts_ns >= ?{}", args.len()));
    }
    if let Some(v) = &q.verdict {
        args.push(v.clone().into());
        sql.push_str(&format!(
            " AND kind = 'connection' AND verdict = ?{}",
            args.len()
        ));
    }
    args.push(((q.limit as i64).saturating_add(1)).into());
    sql.push_str(&format!(
        " ORDER BY ts_ns DESC, id DESC LIMIT ?{}",
        args.len()
    ));

    let mut stmt = c.prepare(&sql)?;
    let mut rows = stmt.query(rusqlite::params_from_iter(args))?;
    let mut data = Vec::new();
    while let Some(r) = rows.next()? {
        let ts_ns: i64 = r.get(1)?;
        data.push(NetworkEventRow {
            id: r.get(0)?,
            ts_ns,
            ts: format_rfc3339(ts_ns),
            kind: r.get(2)?,
            host: r.get(3)?,
            dst_ip: r.get(4)?,
            dst_port: r.get(5)?,
            verdict: r.get(6)?,
            match_rule: r.get(7)?,
            bytes_sent: r.get(8)?,
            bytes_recv: r.get(9)?,
            method: r.get(10)?,
            path: r.get(11)?,
            status: r.get(12)?,
            upstream_status: r.get(13)?,
            latency_ms: r.get(14)?,
            secret_id: r.get(15)?,
            error_code: r.get(16)?,
        });
    }
    let has_more = data.len() > q.limit;
    data.truncate(q.limit);
    let next_cursor = if has_more {
        data.last().map(|e| encode_cursor(e.ts_ns, e.id))
    } else {
        None
    };
    Ok(EventPage {
        data,
        next_cursor,
        has_more,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(ts_ns: i64, kind: &str, verdict: Option<&str>) -> NetworkEventRow {
        NetworkEventRow {
            ts_ns,
            kind: kind.to_owned(),
            host: Some("example.com".to_owned()),
            verdict: verdict.map(str::to_owned),
            ..Default::default()
        }
    }

    #[test]
    fn network_log_trim_keeps_the_newest() -> Result<(), StoreError> {
        let db = Db::memory()?;
        db.call_sync(|c| {
            for i in 0..20i64 {
                insert_network_event(c, "a", &ev(i, "connection", Some("allowed")))?;
                insert_network_event(c, "b", &ev(i, "connection", Some("allowed")))?;
            }
            trim_network_events(c, "a", 5)?;
            let q = EventQuery {
                limit: 100,
                before: None,
                since_ns: None,
                verdict: None,
            };
            let a = query_network_events(c, "a", &q)?;
            let ts: Vec<i64> = a.data.iter().map(|e| e.ts_ns).collect();
            assert_eq!(ts, vec![19, 18, 17, 16, 15]);
            assert_eq!(query_network_events(c, "b", &q)?.data.len(), 20);
            Ok(())
        })
    }

    #[test]
    fn network_log_paging() -> Result<(), StoreError> {
        let db = Db::memory()?;
        db.call_sync(|c| {
            // 25 events, one second apart; every 5th is a blocked connection, some requests
            for i in 0..25i64 {
                let e = if i % 5 == 0 {
                    ev(i * 1_000_000_000, "connection", Some("blocked"))
                } else if i % 2 == 0 {
                    ev(i * 1_000_000_000, "request", None)
                } else {
                    ev(i * 1_000_000_000, "connection", Some("allowed"))
                };
                insert_network_event(c, "sb", &e)?;
            }
            insert_network_event(c, "other", &ev(0, "connection", Some("blocked")))?;

            // page through everything, 10 at a time, newest first
            let mut seen = Vec::new();
            let mut q = EventQuery {
                limit: 10,
                before: None,
                since_ns: None,
                verdict: None,
            };
            loop {
                let page = query_network_events(c, "sb", &q)?;
                seen.extend(page.data.iter().map(|e| e.ts_ns / 1_000_000_000));
                if !page.has_more {
                    assert!(page.next_cursor.is_none());
                    break;
                }
                let cursor = page.next_cursor.clone().unwrap_or_default();
                q.before = decode_cursor(&cursor);
                assert!(q.before.is_some(), "cursor {cursor:?}");
            }
            assert_eq!(seen, (0..25).rev().collect::<Vec<_>>());

            // verdict filter: only connection rows with that verdict
            let page = query_network_events(
                c,
                "sb",
                &EventQuery {
                    limit: 100,
                    before: None,
                    since_ns: None,
                    verdict: Some("blocked".into()),
                },
            )?;
            assert_eq!(page.data.len(), 5);
            assert!(page.data.iter().all(|e| e.kind == "connection"));

            // before = timestamp (strictly older), since = at/after
            let page = query_network_events(
                c,
                "sb",
                &EventQuery {
                    limit: 100,
                    before: Some(Before::Time(10_000_000_000)),
                    since_ns: Some(5_000_000_000),
                    verdict: None,
                },
            )?;
            let ts: Vec<i64> = page.data.iter().map(|e| e.ts_ns / 1_000_000_000).collect();
            assert_eq!(ts, vec![9, 8, 7, 6, 5]);
            assert!(!page.has_more);

            // same timestamp: the cursor still splits correctly by id
            for _ in 0..3 {
                insert_network_event(c, "same", &ev(7, "request", None))?;
            }
            let q = EventQuery {
                limit: 2,
                before: None,
                since_ns: None,
                verdict: None,
            };
            let p1 = query_network_events(c, "same", &q)?;
            assert!(p1.has_more);
            let p2 = query_network_events(
                c,
                "same",
                &EventQuery {
                    before: p1.next_cursor.as_deref().and_then(decode_cursor),
                    ..q
                },
            )?;
            assert_eq!(p2.data.len(), 1);
            assert!(p1.data.iter().all(|e| e.id != p2.data[0].id));
            let json = serde_json::to_value(&p2)?;
            assert_eq!(json["data"][0]["ts"], "1970-01-01T00:00:00.000000007Z");
            assert!(json["data"][0].get("dst_ip").is_none());
            Ok(())
        })
    }

    #[test]
    fn records_round_trip() -> Result<(), StoreError> {
        let db = Db::memory()?;
        let mut metadata = BTreeMap::new();
        metadata.insert("env".to_owned(), "prod".to_owned());
        let rec = Record {
            id: "id-1".into(),
            seq: 1,
            name: "n".into(),
            status: Status::Paused,
            vcpu_count: 1,
            memory_mib: 512,
            disk_mib: 4096,
            id_slot: Some(7),
            created_ns: 42,
            timeout_seconds: Some(60),
            auto_delete_seconds: None,
            auto_delete_at_ns: None,
            active_since_ns: Some(1),
            paused_at_ns: Some(2),
            network: Some(Network {
                allow_out: Some(vec!["a.com".into()]),
                deny_out: None,
            }),
            metadata,
            env_vars: BTreeMap::new(),
            secrets: vec![Binding {
                env_key: "K".into(),
                secret_name: "s".into(),
                revoked: false,
                detached: true,
                secret_id: "sid".into(),
                hosts: vec!["api.x.test".into()],
                standin: "ss_standin_x".into(),
            }],
            preview_access: "legacy_public".into(),
            access_token: "t".into(),
            template: "superserve/base".into(),
            hostname: "h".into(),
            stack: crate::local::model::Stack {
                layers: vec!["cap-1".into()],
                base: crate::local::model::Base::Host,
            },
            source_snapshot: Some("snap-1".into()),
            boot: crate::local::model::Boot {
                workdir: Some("/srv".into()),
                ..Default::default()
            },
        };
        db.call_sync(|c| upsert(c, &rec))?;
        let back = db.call_sync(|c| load(c, "id-1"))?;
        assert_eq!(back.as_ref(), Some(&rec));
        assert_eq!(db.call_sync(load_all)?.len(), 1);
        Ok(())
    }
}
