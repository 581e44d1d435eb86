//! Team secrets: storage encrypted at rest, the provider catalog, validation of auth rules,
//! rendering of the credential header(s) for the egress broker, and the secret audit log
//! (protocol.md §3.7).

use std::io;
use std::path::Path;

use rand::RngCore;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use rusqlite::{params, Connection, OptionalExtension};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::app::{uuid_v4, ApiError};
use super::egress::policy::domain_matches;
use super::store::{Db, StoreError};
use super::time::{format_rfc3339, now_ns};

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

/// Longest accepted secret value.
const MAX_VALUE: usize = 16 * 1024;

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

impl SecretRecord {
    /// The `SecretInfo` JSON object.
    pub(crate) fn view(&self) -> Value {
        json!({
            "id": self.id,
            "name": self.name,
            "auth_type": self.auth_type,
            "auth_config": self.auth_config,
            "provider_shortcut": self.provider,
            "hosts": self.hosts,
            "created_at": format_rfc3339(self.created_ns),
            "updated_at": format_rfc3339(self.updated_ns),
            "last_used_at": self.last_used_ns.map(format_rfc3339),
        })
    }
}

/// A built-in provider shortcut.
pub(crate) struct Provider {
    name: &'static str,
    display: &'static str,
    auth: fn() -> Value,
    hosts: &'static [&'static str],
    token_shape: &'static str,
}

impl Provider {
    fn view(&self) -> Value {
        let auth = (self.auth)();
        json!({
            "name": self.name,
            "display": self.display,
            "auth_type": auth["type"],
            "auth_config": auth,
            "hosts": self.hosts,
            "token_shape": self.token_shape,
        })
    }
}

/// The provider catalog, in catalog order.
pub(crate) fn providers() -> &'static [Provider] {
    &[
        Provider {
            name: "openai",
            display: "OpenAI",
            auth: || json!({"type": "bearer", "header": "Authorization", "prefix": "Bearer "}),
            hosts: &["api.openai.com"],
            token_shape: "sk-proj-…",
        },
        Provider {
            name: "anthropic",
            display: "Anthropic",
            auth: || json!({"type": "api-key", "header": "x-api-key", "prefix": ""}),
            hosts: &["api.anthropic.com"],
            token_shape: "sk-ant-…",
        },
        Provider {
            name: "github",
            display: "GitHub",
            auth: || json!({"type": "bearer", "header": "Authorization", "prefix": "Bearer "}),
            hosts: &["api.github.com"],
            token_shape: "ghp_…",
        },
    ]
}

/// `GET /providers` body.
pub(crate) fn providers_view() -> Value {
    Value::Array(providers().iter().map(Provider::view).collect())
}

/// `POST /secrets` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateBody {
    pub name: Option<String>,
    pub value: Option<String>,
    #[serde(default)]
    pub provider: Option<String>,
    #[serde(default)]
    pub auth: Option<Value>,
    #[serde(default)]
    pub hosts: Option<Vec<String>>,
}

/// `PATCH /secrets/{name}` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RotateBody {
    pub value: Option<String>,
}

fn validate_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "secret name {name:?} is invalid: 1-64 characters, letters, digits, '_', '.', '-', \
             starting with a letter or digit"
        ))
    }
}

fn validate_value(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("value is required".into());
    }
    if value.len() > MAX_VALUE {
        return Err(format!("value is longer than {MAX_VALUE} bytes"));
    }
    if value.chars().any(char::is_control) {
        return Err("value must not contain control characters".into());
    }
    Ok(())
}

/// A host pattern: a lower-case DNS name, optionally `*.` + at least two labels.
fn validate_host(h: &str) -> Result<(), String> {
    let bad = || {
        Err(format!(
            "host {h:?} is not a valid host name or *.domain pattern"
        ))
    };
    let (wild, name) = match h.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, h),
    };
    if name.is_empty() || name.len() > 253 {
        return bad();
    }
    let labels: Vec<&str> = name.split('.').collect();
    let label_ok = |l: &&str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    if !labels.iter().all(label_ok) {
        return bad();
    }
    if wild && labels.len() < 2 {
        return Err(format!(
            "host {h:?}: a wildcard needs a domain below the top level (e.g. *.example.com)"
        ));
    }
    Ok(())
}

fn validate_hosts(hosts: &[String]) -> Result<(), String> {
    if hosts.is_empty() {
        return Err("hosts must name at least one host".into());
    }
    hosts.iter().try_for_each(|h| validate_host(h))
}

fn header_name_ok(h: &str) -> bool {
    !h.is_empty()
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn str_field<'a>(rule: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>, String> {
    match rule.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(format!("auth.{key} must be a string")),
    }
}

/// Normalises one (non per-host) rule: fills defaults, checks required fields.
fn normalize_rule(rule: &Value) -> Result<Map<String, Value>, String> {
    let Value::Object(r) = rule else {
        return Err("auth must be an object".into());
    };
    let ty = str_field(r, "type")?.ok_or("auth.type is required")?;
    let header = str_field(r, "header")?;
    let prefix = str_field(r, "prefix")?;
    if let Some(h) = header {
        if !header_name_ok(h) {
            return Err(format!("auth.header {h:?} is not a valid header name"));
        }
    }
    if prefix.is_some_and(|p| p.chars().any(char::is_control)) {
        return Err("auth.prefix must not contain control characters".into());
    }
    let mut out = Map::new();
    out.insert("type".into(), json!(ty));
    match ty {
        "bearer" => {
            out.insert("header".into(), json!(header.unwrap_or("Authorization")));
            out.insert("prefix".into(), json!(prefix.unwrap_or("Bearer ")));
        }
        "api-key" => {
            let h = header.ok_or("auth.header is required for api-key")?;
            out.insert("header".into(), json!(h));
            out.insert("prefix".into(), json!(prefix.unwrap_or("")));
        }
        "basic" => {
            let u = str_field(r, "username")?.ok_or("auth.username is required for basic")?;
            if u.contains(':') || u.chars().any(char::is_control) {
                return Err("auth.username must not contain ':' or control characters".into());
            }
            out.insert("username".into(), json!(u));
        }
        "custom" => {
            let Some(Value::Object(headers)) = r.get("headers") else {
                return Err(
                    "auth.headers (an object of header templates) is required for custom".into(),
                );
            };
            if headers.is_empty() {
                return Err("auth.headers must name at least one header".into());
            }
            for (k, v) in headers {
                let Value::String(t) = v else {
                    return Err(format!("auth.headers.{k} must be a string"));
                };
                if !header_name_ok(k) {
                    return Err(format!("auth.headers: {k:?} is not a valid header name"));
                }
                if !(t.contains("{{ value }}") || t.contains("{{value}}")) {
                    return Err(format!("auth.headers.{k} must contain {{{{ value }}}}"));
                }
            }
            out.insert("headers".into(), Value::Object(headers.clone()));
        }
        other => {
            return Err(format!(
                "auth.type {other:?} is not one of bearer, api-key, basic, custom"
            ))
        }
    }
    Ok(out)
}

/// Validates a create body: (auth_type, auth_config, provider, hosts).
fn validate_create(b: &CreateBody) -> Result<(String, Value, Option<String>, Vec<String>), String> {
    if let Some(p) = &b.provider {
        if b.auth.is_some() || b.hosts.is_some() {
            return Err("provider cannot be combined with auth or hosts".into());
        }
        let known = providers();
        let Some(prov) = known.iter().find(|k| k.name == p) else {
            let names: Vec<&str> = known.iter().map(|k| k.name).collect();
            return Err(format!(
                "unknown provider {p:?} (known: {})",
                names.join(", ")
            ));
        };
        let auth = (prov.auth)();
        let ty = auth["type"].as_str().unwrap_or("bearer").to_owned();
        return Ok((
            ty,
            auth,
            Some(p.clone()),
            prov.hosts.iter().map(|h| (*h).to_owned()).collect(),
        ));
    }
    let auth = b
        .auth
        .as_ref()
        .ok_or("either provider or auth and hosts are required")?;
    if let Some(rules) = auth.get("per_host") {
        let Value::Array(rules) = rules else {
            return Err("auth.per_host must be an array".into());
        };
        if rules.is_empty() {
            return Err("auth.per_host must hold at least one rule".into());
        }
        let mut all_hosts: Vec<String> = Vec::new();
        let mut out = Vec::new();
        for rule in rules {
            let mut r = normalize_rule(rule)?;
            let hosts: Vec<String> = match rule.get("hosts") {
                Some(Value::Array(h)) => h
                    .iter()
                    .map(|v| v.as_str().map(str::to_owned).ok_or("hosts must be strings"))
                    .collect::<Result<_, _>>()?,
                _ => return Err("every auth.per_host rule needs hosts".into()),
            };
            validate_hosts(&hosts)?;
            for h in &hosts {
                if !all_hosts.contains(h) {
                    all_hosts.push(h.clone());
                }
            }
            r.insert("hosts".into(), json!(hosts));
            out.push(Value::Object(r));
        }
        if let Some(top) = &b.hosts {
            validate_hosts(top)?;
            if let Some(h) = top.iter().find(|h| !all_hosts.contains(h)) {
                return Err(format!("host {h:?} has no auth.per_host rule"));
            }
        }
        return Ok(("per_host".into(), json!({"per_host": out}), None, all_hosts));
    }
    let rule = normalize_rule(auth)?;
    let hosts = b.hosts.clone().ok_or("hosts are required with auth")?;
    validate_hosts(&hosts)?;
    let ty = rule["type"].as_str().unwrap_or_default().to_owned();
    Ok((ty, Value::Object(rule), None, hosts))
}

fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn render_rule(rule: &Value, value: &str) -> Vec<(String, String)> {
    let s = |k: &str| rule.get(k).and_then(Value::as_str).unwrap_or_default();
    match s("type") {
        "bearer" => vec![(
            if s("header").is_empty() {
                "Authorization".into()
            } else {
                s("header").into()
            },
            format!(
                "{}{value}",
                rule.get("prefix")
                    .and_then(Value::as_str)
                    .unwrap_or("Bearer ")
            ),
        )],
        "api-key" => vec![(s("header").into(), format!("{}{value}", s("prefix")))],
        "basic" => vec![(
            "Authorization".into(),
            format!(
                "Basic {}",
                base64(format!("{}:{value}", s("username")).as_bytes())
            ),
        )],
        "custom" => rule
            .get("headers")
            .and_then(Value::as_object)
            .map(|h| {
                h.iter()
                    .filter_map(|(k, t)| {
                        let t = t.as_str()?;
                        Some((
                            k.clone(),
                            t.replace("{{ value }}", value).replace("{{value}}", value),
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}

/// The header(s) carrying the credential on a request to `host`; `None` if the secret does
/// not cover `host`.
pub(crate) fn render_headers(
    rec: &SecretRecord,
    host: &str,
    value: &str,
) -> Option<Vec<(String, String)>> {
    if !rec.hosts.iter().any(|p| domain_matches(p, host)) {
        return None;
    }
    if let Some(rules) = rec.auth_config.get("per_host").and_then(Value::as_array) {
        let rule = rules.iter().find(|r| {
            r.get("hosts").and_then(Value::as_array).is_some_and(|hs| {
                hs.iter()
                    .filter_map(Value::as_str)
                    .any(|p| domain_matches(p, host))
            })
        })?;
        return Some(render_rule(rule, value));
    }
    Some(render_rule(&rec.auth_config, value)).filter(|h| !h.is_empty())
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

/// Parses the audit query string.
pub(crate) fn parse_audit_query(pairs: Vec<(String, String)>) -> Result<AuditQuery, String> {
    let mut q = AuditQuery {
        limit: 50,
        ..Default::default()
    };
    for (k, v) in pairs {
        match k.as_str() {
            "limit" => {
                q.limit = v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=1000).contains(n))
                    .ok_or_else(|| {
                        format!("limit must be an integer between 1 and 1000, got {v:?}")
                    })?;
            }
            "before" => {
                q.before = Some(
                    v.parse()
                        .map_err(|_| format!("before must be an event id, got {v:?}"))?,
                );
            }
            "status" => match v.as_str() {
                "2xx" | "3xx" | "4xx" | "5xx" | "errors" => q.status = Some(v),
                _ => {
                    return Err(format!(
                        "status must be one of 2xx, 3xx, 4xx, 5xx, errors, got {v:?}"
                    ))
                }
            },
            other => return Err(format!("unknown query parameter {other:?}")),
        }
    }
    Ok(q)
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

fn not_found(name: &str) -> ApiError {
    ApiError::not_found(format!("secret {name:?} not found"))
}

/// The secrets service.
pub(crate) struct Secrets {
    db: Db,
    key: std::sync::Arc<SecretKey>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secrets").finish_non_exhaustive()
    }
}

impl Secrets {
    /// The service over `db` (creating its tables) with values sealed by `key`.
    pub(crate) fn new(db: Db, key: SecretKey) -> Result<Secrets, StoreError> {
        db.call_sync(init_schema)?;
        Ok(Secrets {
            db,
            key: std::sync::Arc::new(key),
        })
    }

    /// `POST /secrets`.
    pub(crate) async fn create(&self, b: CreateBody) -> Result<SecretRecord, ApiError> {
        let name = b.name.clone().unwrap_or_default();
        validate_name(&name).map_err(ApiError::bad_request)?;
        let value = b.value.clone().unwrap_or_default();
        validate_value(&value).map_err(ApiError::bad_request)?;
        let (auth_type, auth_config, provider, hosts) =
            validate_create(&b).map_err(ApiError::bad_request)?;
        let now = now_ns();
        let rec = SecretRecord {
            id: uuid_v4(),
            name,
            auth_type,
            auth_config,
            provider,
            hosts,
            created_ns: now,
            updated_ns: now,
            last_used_ns: None,
        };
        let blob = self.key.seal(&rec.id, &value);
        let r = rec.clone();
        let inserted = self
            .db
            .call(move |c| {
                if load(c, &r.name)?.is_some() {
                    return Ok(false);
                }
                c.execute(
                    "INSERT INTO secrets (id, seq, name, auth_type, auth_config, provider, hosts,
                        value, created_ns, updated_ns, last_used_ns)
                     VALUES (?1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM secrets), ?2, ?3, ?4, ?5,
                        ?6, ?7, ?8, ?9, NULL)",
                    params![
                        r.id,
                        r.name,
                        r.auth_type,
                        r.auth_config.to_string(),
                        r.provider,
                        serde_json::to_string(&r.hosts)?,
                        blob,
                        r.created_ns,
                        r.updated_ns,
                    ],
                )?;
                Ok(true)
            })
            .await?;
        if !inserted {
            return Err(ApiError::conflict(format!(
                "a secret named {:?} already exists",
                rec.name
            )));
        }
        Ok(rec)
    }

    /// `GET /secrets`, creation order.
    pub(crate) async fn list(&self) -> Result<Vec<SecretRecord>, ApiError> {
        Ok(self
            .db
            .call(|c| {
                let mut stmt = c.prepare("SELECT * FROM secrets ORDER BY seq")?;
                let rows = stmt.query_map([], record_from_row)?;
                let mut out = Vec::new();
                for r in rows {
                    out.push(r?.0);
                }
                Ok(out)
            })
            .await?)
    }

    /// `GET /secrets/{name}`.
    pub(crate) async fn get(&self, name: &str) -> Result<SecretRecord, ApiError> {
        let n = name.to_owned();
        self.db
            .call(move |c| load(c, &n))
            .await?
            .map(|(r, _)| r)
            .ok_or_else(|| not_found(name))
    }

    /// `PATCH /secrets/{name}`: a new value.
    pub(crate) async fn rotate(&self, name: &str, b: RotateBody) -> Result<SecretRecord, ApiError> {
        let value = b.value.unwrap_or_default();
        validate_value(&value).map_err(ApiError::bad_request)?;
        let mut rec = self.get(name).await?;
        rec.updated_ns = now_ns().max(rec.updated_ns + 1);
        let blob = self.key.seal(&rec.id, &value);
        let (id, updated) = (rec.id.clone(), rec.updated_ns);
        let changed = self
            .db
            .call(move |c| {
                Ok(c.execute(
                    "UPDATE secrets SET value = ?2, updated_ns = ?3 WHERE id = ?1",
                    params![id, blob, updated],
                )?)
            })
            .await?;
        if changed == 0 {
            return Err(not_found(name));
        }
        Ok(rec)
    }

    /// `DELETE /secrets/{name}`.
    pub(crate) async fn delete(&self, name: &str) -> Result<(), ApiError> {
        let n = name.to_owned();
        let changed = self
            .db
            .call(move |c| Ok(c.execute("DELETE FROM secrets WHERE name = ?1", params![n])?))
            .await?;
        if changed == 0 {
            return Err(not_found(name));
        }
        Ok(())
    }

    /// `GET /secrets/{name}/audit`.
    pub(crate) async fn audit(&self, name: &str, q: AuditQuery) -> Result<Vec<Value>, ApiError> {
        let rec = self.get(name).await?;
        Ok(self.db.call(move |c| query_audit(c, &rec.id, &q)).await?)
    }

    /// The record and plaintext value of a secret, for the egress broker only. `Ok(None)`:
    /// no such secret. A value that does not decrypt (a replaced key file, a damaged row) is
    /// an error, never mistaken for a missing secret.
    pub(crate) async fn resolve(
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

    fn body(v: Value) -> CreateBody {
        serde_json::from_value(v).unwrap()
    }

    fn rec(auth: Value, hosts: &[&str]) -> SecretRecord {
        SecretRecord {
            id: "id".into(),
            name: "n".into(),
            auth_type: auth
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or("per_host")
                .into(),
            auth_config: auth,
            provider: None,
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            created_ns: 0,
            updated_ns: 0,
            last_used_ns: None,
        }
    }

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
    fn create_validation() {
        let ok = |v: Value| validate_create(&body(v));
        let (ty, auth, prov, hosts) =
            ok(json!({"name":"a","value":"v","provider":"openai"})).unwrap();
        assert_eq!((ty.as_str(), prov.as_deref()), ("bearer", Some("openai")));
        assert_eq!(hosts, vec!["api.openai.com"]);
        assert_eq!(auth["header"], "Authorization");
        let (ty, auth, _, _) = ok(json!({"name":"a","value":"v","auth":{"type":"api-key","header":"X-Api-Key"},"hosts":["api.x.com"]})).unwrap();
        assert_eq!(ty, "api-key");
        assert_eq!(auth["prefix"], "");
        let (ty, auth, _, hosts) = ok(json!({"name":"a","value":"v","auth":{"per_host":[
            {"type":"bearer","hosts":["a.x.com"]},{"type":"basic","username":"u","hosts":["*.y.com"]}]}})).unwrap();
        assert_eq!(ty, "per_host");
        assert_eq!(hosts, vec!["a.x.com", "*.y.com"]);
        assert_eq!(auth["per_host"][1]["username"], "u");
        for bad in [
            json!({"name":"a","value":"v"}),
            json!({"name":"a","value":"v","provider":"nope"}),
            json!({"name":"a","value":"v","provider":"openai","hosts":["x.com"]}),
            json!({"name":"a","value":"v","auth":{"type":"bearer"}}),
            json!({"name":"a","value":"v","auth":{"type":"bearer"},"hosts":[]}),
            json!({"name":"a","value":"v","auth":{"type":"bearer"},"hosts":["*.com"]}),
            json!({"name":"a","value":"v","auth":{"type":"bearer"},"hosts":["Upper.com"]}),
            json!({"name":"a","value":"v","auth":{"type":"api-key"},"hosts":["x.com"]}),
            json!({"name":"a","value":"v","auth":{"type":"basic"},"hosts":["x.com"]}),
            json!({"name":"a","value":"v","auth":{"type":"custom","headers":{"X-K":"no template"}},"hosts":["x.com"]}),
            json!({"name":"a","value":"v","auth":{"type":"oauth"},"hosts":["x.com"]}),
            json!({"name":"a","value":"v","auth":{"type":"api-key","header":"bad header"},"hosts":["x.com"]}),
        ] {
            assert!(ok(bad.clone()).is_err(), "{bad}");
        }
        assert!(validate_name("ok-name_1.x").is_ok());
        assert!(validate_name("-bad").is_err());
        assert!(validate_name(&"x".repeat(65)).is_err());
        assert!(validate_value("").is_err());
        assert!(validate_value("a\r\nX-Evil: 1").is_err());
    }

    #[test]
    fn rendering_every_shape() {
        let r = rec(
            json!({"type":"bearer","header":"Authorization","prefix":"Bearer "}),
            &["api.x.com"],
        );
        assert_eq!(
            render_headers(&r, "api.x.com", "v1"),
            Some(vec![("Authorization".into(), "Bearer v1".into())])
        );
        assert_eq!(render_headers(&r, "evil.com", "v1"), None);
        let r = rec(
            json!({"type":"api-key","header":"x-api-key","prefix":"k-"}),
            &["*.x.com"],
        );
        assert_eq!(
            render_headers(&r, "a.x.com", "v"),
            Some(vec![("x-api-key".into(), "k-v".into())])
        );
        assert_eq!(
            render_headers(&r, "x.com", "v"),
            None,
            "wildcards skip the apex"
        );
        let r = rec(json!({"type":"basic","username":"user"}), &["x.com"]);
        assert_eq!(
            render_headers(&r, "x.com", "pass"),
            Some(vec![("Authorization".into(), "Basic dXNlcjpwYXNz".into())])
        );
        let r = rec(
            json!({"type":"custom","headers":{"X-A":"t={{ value }}","X-B":"{{value}}!"}}),
            &["x.com"],
        );
        assert_eq!(
            render_headers(&r, "x.com", "v"),
            Some(vec![
                ("X-A".into(), "t=v".into()),
                ("X-B".into(), "v!".into())
            ])
        );
        let r = rec(
            json!({"per_host":[{"type":"bearer","prefix":"Bearer ","hosts":["a.com"]},{"type":"api-key","header":"K","prefix":"","hosts":["b.com"]}]}),
            &["a.com", "b.com"],
        );
        assert_eq!(
            render_headers(&r, "b.com", "v"),
            Some(vec![("K".into(), "v".into())])
        );
        assert_eq!(base64(b"a"), "YQ==");
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(base64(b"abc"), "YWJj");
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

    #[test]
    fn audit_query_parsing() {
        let p = |s: &[(&str, &str)]| {
            parse_audit_query(
                s.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )
        };
        let q = p(&[("limit", "10"), ("before", "99"), ("status", "errors")]).unwrap();
        assert_eq!(
            (q.limit, q.before, q.status.as_deref()),
            (10, Some(99), Some("errors"))
        );
        assert!(p(&[("limit", "0")]).is_err());
        assert!(p(&[("status", "6xx")]).is_err());
        assert!(p(&[("before", "x")]).is_err());
    }
}
