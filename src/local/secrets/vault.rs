//! Secrets at rest: the tables, the key that seals values (ChaCha20-Poly1305, bound to the
//! secret's id), and every query on secrets and their audit log.

use std::io;
use std::path::Path;
use std::sync::Arc;

use rand::RngCore;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use rusqlite::{params, Connection, OptionalExtension};
use serde_json::{json, Value};

use super::super::store::{Db, StoreError};
use super::super::time::format_rfc3339;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS secrets (
    id           TEXT PRIMARY KEY,
    seq          INTEGER NOT NULL,
    name         TEXT NOT NULL UNIQUE,
    auth_type    TEXT NOT NULL,
    auth_config  TEXT NOT NULL,
    provider     TEXT,
    hosts        TEXT NOT NULL,
    value        BLOB NOT NULL,
    created_ns   INTEGER NOT NULL,
    updated_ns   INTEGER NOT NULL,
    last_used_ns INTEGER
);
CREATE TABLE IF NOT EXISTS secret_audit (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    ts_ns           INTEGER NOT NULL,
    secret_id       TEXT NOT NULL,
    secret_name     TEXT NOT NULL,
    sandbox_id      TEXT NOT NULL,
    sandbox_name    TEXT,
    method          TEXT NOT NULL,
    host            TEXT NOT NULL,
    path            TEXT NOT NULL,
    status          INTEGER NOT NULL,
    upstream_status INTEGER,
    latency_ms      INTEGER,
    error_code      TEXT
);
CREATE INDEX IF NOT EXISTS secret_audit_by_secret ON secret_audit (secret_id, id);
";

/// Creates the secrets tables if missing.
pub(crate) fn init_schema(c: &Connection) -> Result<(), StoreError> {
    c.execute_batch(SCHEMA)?;
    Ok(())
}

/// The key that seals secret values at rest (ChaCha20-Poly1305).
pub(crate) struct SecretKey(LessSafeKey);

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

impl SecretKey {
    fn from_bytes(b: &[u8]) -> io::Result<SecretKey> {
        let k = UnboundKey::new(&CHACHA20_POLY1305, b)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad secret key length"))?;
        Ok(SecretKey(LessSafeKey::new(k)))
    }

    /// Reads the key file, or creates it (32 random bytes, mode 0600) if missing.
    pub(crate) fn load_or_create(path: &Path) -> io::Result<SecretKey> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        match std::fs::read(path) {
            Ok(b) if b.len() == 32 => SecretKey::from_bytes(&b),
            Ok(b) => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{} holds {} bytes; a secrets key is 32 bytes",
                    path.display(),
                    b.len()
                ),
            )),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // Written in full under a private name, then linked into place: a backend
                // starting at the same moment either wins the link or reads the winner's key,
                // and never sees a half-written file.
                let mut b = [0u8; 32];
                rand::thread_rng().fill_bytes(&mut b);
                let tmp = path.with_extension(format!(
                    "key.{}.{:016x}",
                    std::process::id(),
                    rand::random::<u64>()
                ));
                let written = (|| {
                    let mut f = std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o600)
                        .open(&tmp)?;
                    f.write_all(&b)?;
                    f.sync_all()?;
                    std::fs::hard_link(&tmp, path)
                })();
                let _ = std::fs::remove_file(&tmp);
                match written {
                    Ok(()) => SecretKey::from_bytes(&b),
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                        SecretKey::load_or_create(path)
                    }
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// A random key (tests).
    #[cfg(test)]
    fn random() -> SecretKey {
        let mut b = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut b);
        SecretKey::from_bytes(&b).unwrap()
    }

    /// nonce ‖ ciphertext ‖ tag, bound to `id` (so blobs cannot be swapped between rows).
    fn seal(&self, id: &str, value: &str) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::thread_rng().fill_bytes(&mut nonce);
        let mut buf = value.as_bytes().to_vec();
        // sealing only fails for inputs larger than the AEAD limit (values are ≤ 16 KiB)
        let _ = self.0.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(id.as_bytes()),
            &mut buf,
        );
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        out
    }

    fn open(&self, id: &str, blob: &[u8]) -> Option<String> {
        if blob.len() < NONCE_LEN {
            return None;
        }
        let (nonce, sealed) = blob.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut buf = sealed.to_vec();
        let plain = self
            .0
            .open_in_place(nonce, Aad::from(id.as_bytes()), &mut buf)
            .ok()?;
        String::from_utf8(plain.to_vec()).ok()
    }
}

/// A stored secret, without its value.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct SecretRecord {
    pub id: String,
    pub name: String,
    pub auth_type: String,
    pub auth_config: Value,
    pub provider: Option<String>,
    pub hosts: Vec<String>,
    pub created_ns: i64,
    pub updated_ns: i64,
    pub last_used_ns: Option<i64>,
}

/// One audited secret-bearing request.
#[derive(Clone, Debug)]
pub(crate) struct AuditRow {
    pub ts_ns: i64,
    pub secret_id: String,
    pub secret_name: String,
    pub sandbox_id: String,
    pub sandbox_name: Option<String>,
    pub method: String,
    pub host: String,
    pub path: String,
    pub status: u16,
    pub upstream_status: Option<u16>,
    pub latency_ms: Option<u64>,
    pub error_code: Option<String>,
}

/// Audit log query (`GET /secrets/{name}/audit`).
#[derive(Clone, Debug, Default)]
pub(crate) struct AuditQuery {
    pub limit: usize,
    pub before: Option<i64>,
    pub status: Option<String>,
}

fn insert_audit(c: &Connection, r: &AuditRow) -> Result<i64, StoreError> {
    c.execute(
        "INSERT INTO secret_audit (ts_ns, secret_id, secret_name, sandbox_id, sandbox_name, method,
            host, path, status, upstream_status, latency_ms, error_code)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        params![
            r.ts_ns,
            r.secret_id,
            r.secret_name,
            r.sandbox_id,
            r.sandbox_name,
            r.method,
            r.host,
            r.path,
            r.status,
            r.upstream_status,
            r.latency_ms.map(|l| i64::try_from(l).unwrap_or(i64::MAX)),
            r.error_code,
        ],
    )?;
    let id = c.last_insert_rowid();
    c.execute(
        "UPDATE secrets SET last_used_ns = ?2 WHERE id = ?1",
        params![r.secret_id, r.ts_ns],
    )?;
    Ok(id)
}

fn query_audit(c: &Connection, secret_id: &str, q: &AuditQuery) -> Result<Vec<Value>, StoreError> {
    let mut sql = String::from(
        "SELECT id, ts_ns, sandbox_id, sandbox_name, secret_id, method, host, path, status,
            upstream_status, latency_ms, error_code FROM secret_audit WHERE secret_id = ?1",
    );
    let mut args: Vec<rusqlite::types::Value> = vec![secret_id.to_owned().into()];
    if let Some(b) = q.before {
        args.push(b.into());
        sql.push_str(&format!(" AND id < ?{}", args.len()));
    }
    match q.status.as_deref() {
        Some("errors") => sql.push_str(" AND (status >= 400 OR error_code IS NOT NULL)"),
        Some(s) => {
            let lo = i64::from(s.as_bytes()[0] - b'0') * 100;
            sql.push_str(&format!(" AND status >= {lo} AND status < {}", lo + 100));
        }
        None => {}
    }
    args.push((q.limit as i64).into());
    sql.push_str(&format!(" ORDER BY id DESC LIMIT ?{}", args.len()));
    let mut stmt = c.prepare(&sql)?;
    let mut rows = stmt.query(rusqlite::params_from_iter(args))?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push(json!({
            "id": r.get::<_, i64>(0)?,
            "ts": format_rfc3339(r.get(1)?),
            "sandbox_id": r.get::<_, String>(2)?,
            "sandbox_name": r.get::<_, Option<String>>(3)?,
            "secret_id": r.get::<_, String>(4)?,
            "method": r.get::<_, String>(5)?,
            "host": r.get::<_, String>(6)?,
            "path": r.get::<_, String>(7)?,
            "status": r.get::<_, i64>(8)?,
            "upstream_status": r.get::<_, Option<i64>>(9)?,
            "latency_ms": r.get::<_, Option<i64>>(10)?,
            "error_code": r.get::<_, Option<String>>(11)?,
        }));
    }
    Ok(out)
}

fn record_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(SecretRecord, Vec<u8>)> {
    let auth_config: String = r.get("auth_config")?;
    let hosts: String = r.get("hosts")?;
    Ok((
        SecretRecord {
            id: r.get("id")?,
            name: r.get("name")?,
            auth_type: r.get("auth_type")?,
            auth_config: serde_json::from_str(&auth_config).unwrap_or(Value::Null),
            provider: r.get("provider")?,
            hosts: serde_json::from_str(&hosts).unwrap_or_default(),
            created_ns: r.get("created_ns")?,
            updated_ns: r.get("updated_ns")?,
            last_used_ns: r.get("last_used_ns")?,
        },
        r.get("value")?,
    ))
}

fn load(c: &Connection, name: &str) -> Result<Option<(SecretRecord, Vec<u8>)>, StoreError> {
    Ok(c.query_row(
        "SELECT * FROM secrets WHERE name = ?1",
        params![name],
        record_from_row,
    )
    .optional()?)
}

/// The secrets tables and the sealing key: every read and write of a secret goes through here.
pub(crate) struct Vault {
    db: Db,
    key: Arc<SecretKey>,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault").finish_non_exhaustive()
    }
}

impl Vault {
    /// The vault over `db` (creating its tables) with values sealed by `key`.
    pub(crate) fn open(db: Db, key: SecretKey) -> Result<Vault, StoreError> {
        db.call_sync(init_schema)?;
        Ok(Vault {
            db,
            key: Arc::new(key),
        })
    }

    /// Stores a new secret with its value sealed; `false` if the name is taken.
    pub(crate) async fn insert(&self, rec: SecretRecord, value: &str) -> Result<bool, StoreError> {
        let blob = self.key.seal(&rec.id, value);
        self.db
            .call(move |c| {
                if load(c, &rec.name)?.is_some() {
                    return Ok(false);
                }
                c.execute(
                    "INSERT INTO secrets (id, seq, name, auth_type, auth_config, provider, hosts,
                        value, created_ns, updated_ns, last_used_ns)
                     VALUES (?1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM secrets), ?2, ?3, ?4, ?5,
                        ?6, ?7, ?8, ?9, NULL)",
                    params![
                        rec.id,
                        rec.name,
                        rec.auth_type,
                        rec.auth_config.to_string(),
                        rec.provider,
                        serde_json::to_string(&rec.hosts)?,
                        blob,
                        rec.created_ns,
                        rec.updated_ns,
                    ],
                )?;
                Ok(true)
            })
            .await
    }

    /// Every secret, creation order.
    pub(crate) async fn list(&self) -> Result<Vec<SecretRecord>, StoreError> {
        self.db
            .call(|c| {
                let mut stmt = c.prepare("SELECT * FROM secrets ORDER BY seq")?;
                let rows = stmt.query_map([], record_from_row)?;
                let mut out = Vec::new();
                for r in rows {
                    out.push(r?.0);
                }
                Ok(out)
            })
            .await
    }

    /// The secret named `name`, without its value.
    pub(crate) async fn get(&self, name: &str) -> Result<Option<SecretRecord>, StoreError> {
        let n = name.to_owned();
        Ok(self.db.call(move |c| load(c, &n)).await?.map(|(r, _)| r))
    }

    /// Replaces the value of secret `id`; `false` if it is gone.
    pub(crate) async fn set_value(
        &self,
        id: &str,
        value: &str,
        updated_ns: i64,
    ) -> Result<bool, StoreError> {
        let blob = self.key.seal(id, value);
        let id = id.to_owned();
        let changed = self
            .db
            .call(move |c| {
                Ok(c.execute(
                    "UPDATE secrets SET value = ?2, updated_ns = ?3 WHERE id = ?1",
                    params![id, blob, updated_ns],
                )?)
            })
            .await?;
        Ok(changed > 0)
    }

    /// Deletes the secret named `name`; `false` if there was none.
    pub(crate) async fn delete(&self, name: &str) -> Result<bool, StoreError> {
        let n = name.to_owned();
        let changed = self
            .db
            .call(move |c| Ok(c.execute("DELETE FROM secrets WHERE name = ?1", params![n])?))
            .await?;
        Ok(changed > 0)
    }

    /// Audit events of secret `secret_id`, newest first.
    pub(crate) async fn audit(
        &self,
        secret_id: &str,
        q: AuditQuery,
    ) -> Result<Vec<Value>, StoreError> {
        let id = secret_id.to_owned();
        self.db.call(move |c| query_audit(c, &id, &q)).await
    }

    /// The record and plaintext value of a secret. `Ok(None)`: no such secret. A value that
    /// does not decrypt (a replaced key file, a damaged row) is an error, never mistaken for a
    /// missing secret.
    pub(crate) async fn open_value(
        &self,
        name: &str,
    ) -> Result<Option<(SecretRecord, String)>, StoreError> {
        let n = name.to_owned();
        let key = self.key.clone();
        self.db
            .call(move |c| match load(c, &n)? {
                None => Ok(None),
                Some((rec, blob)) => match key.open(&rec.id, &blob) {
                    Some(value) => Ok(Some((rec, value))),
                    None => Err(StoreError::Corrupt(format!(
                        "the value of secret {n:?} cannot be decrypted with this backend's key"
                    ))),
                },
            })
            .await
    }

    /// Appends an audit event (and marks the secret used).
    pub(crate) async fn record_audit(&self, row: AuditRow) -> Result<i64, StoreError> {
        self.db.call(move |c| insert_audit(c, &row)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::local::ident::uuid_v4;

    #[test]
    fn sealing_round_trips_and_detects_tampering() {
        let k = SecretKey::random();
        let blob = k.seal("id-1", "sk-very-secret");
        assert!(!blob.windows(14).any(|w| w == b"sk-very-secret"));
        assert_eq!(k.open("id-1", &blob).as_deref(), Some("sk-very-secret"));
        assert_eq!(k.open("id-2", &blob), None, "bound to its row");
        let mut bad = blob.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert_eq!(k.open("id-1", &bad), None);
        assert_eq!(SecretKey::random().open("id-1", &blob), None);
        assert_eq!(format!("{k:?}"), "SecretKey(<redacted>)");
    }

    #[test]
    fn key_file_is_created_private_and_reloaded() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("ss-key-{}", uuid_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("secrets.key");
        let a = SecretKey::load_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let b = SecretKey::load_or_create(&path).unwrap();
        assert_eq!(b.open("x", &a.seal("x", "v")).as_deref(), Some("v"));
        std::fs::write(&path, b"short").unwrap();
        assert!(SecretKey::load_or_create(&path).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn simultaneous_starts_agree_on_one_key() {
        let dir = std::env::temp_dir().join(format!("ss-key-{}", uuid_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("secrets.key");
        let keys: Vec<SecretKey> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| s.spawn(|| SecretKey::load_or_create(&path).unwrap()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let blob = keys[0].seal("x", "same key");
        for k in &keys {
            assert_eq!(k.open("x", &blob).as_deref(), Some("same key"));
        }
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            names,
            vec![std::ffi::OsString::from("secrets.key")],
            "no temp files left"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn audit_paging_and_filters() -> Result<(), StoreError> {
        let db = Db::memory()?;
        db.call_sync(|c| {
            init_schema(c)?;
            for i in 0..30i64 {
                insert_audit(
                    c,
                    &AuditRow {
                        ts_ns: i,
                        secret_id: if i % 10 == 9 {
                            "other".into()
                        } else {
                            "s".into()
                        },
                        secret_name: "n".into(),
                        sandbox_id: "sb".into(),
                        sandbox_name: None,
                        method: "GET".into(),
                        host: "h".into(),
                        path: format!("/{i}"),
                        status: if i % 3 == 0 { 403 } else { 200 },
                        upstream_status: None,
                        latency_ms: Some(1),
                        error_code: (i % 3 == 0).then(|| "secret_revoked".into()),
                    },
                )?;
            }
            let q = |limit, before, status: Option<&str>| AuditQuery {
                limit,
                before,
                status: status.map(str::to_owned),
            };
            let all = query_audit(c, "s", &q(1000, None, None))?;
            assert_eq!(all.len(), 27);
            let ids: Vec<i64> = all.iter().map(|e| e["id"].as_i64().unwrap()).collect();
            assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first");
            let mut paged = Vec::new();
            let mut before = None;
            loop {
                let page = query_audit(c, "s", &q(5, before, None))?;
                if page.is_empty() {
                    break;
                }
                before = page.last().and_then(|e| e["id"].as_i64());
                paged.extend(page.iter().map(|e| e["id"].as_i64().unwrap()));
            }
            assert_eq!(paged, ids);
            let errors = query_audit(c, "s", &q(1000, None, Some("errors")))?;
            assert!(errors.iter().all(|e| e["status"] == 403));
            assert_eq!(errors.len(), 9); // i % 3 == 0, minus i = 9 (another secret)
            let ok = query_audit(c, "s", &q(1000, None, Some("2xx")))?;
            assert_eq!(ok.len(), 18);
            assert!(query_audit(c, "s", &q(1000, None, Some("5xx")))?.is_empty());
            Ok(())
        })
    }
}
