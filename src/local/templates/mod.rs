//! Templates (protocol.md §3.6): built-in ones, the team's, their builds and build logs.
//!
//! A template is a stack of read-only layers in the layer store (held as `template:<id>`)
//! plus what its sandboxes boot with ([`Boot`]: env, working directory, default user,
//! start and ready commands) and their resources. A build resolves `from` (a built-in, a
//! ready template of the team, or an OCI image pulled into the layer store), runs the steps in
//! a build sandbox with the isolation of any sandbox, and captures its disk as the template's
//! top layer (a reflink, as snapshots do). Builds, their logs and the templates are in SQLite;
//! a build a restart interrupted is marked failed.
//!
//! Built-in templates are rows of [`BUILTINS`]: adding one is adding a line there.

pub(crate) mod build;

use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::model::{Boot, Stack};
use super::model::{BASE_TEMPLATE, BASE_TEMPLATE_ID};
use super::store::StoreError;
use super::time::format_rfc3339;

/// Template builds that run at once (the others wait, `pending`).
pub(crate) const BUILDS_RUNNING: usize = 2;

/// The team id the local backend reports.
pub(crate) const TEAM_ID: &str = "local";

/// A template the backend ships.
#[derive(Debug)]
pub(crate) struct Builtin {
    pub id: &'static str,
    pub name: &'static str,
    /// What sandboxes created from it boot with.
    pub boot: fn() -> Boot,
}

fn no_boot() -> Boot {
    Boot::default()
}

/// The built-in templates (`superserve/*`): their root is the host base image.
/// `superserve/desktop` adds an X desktop that the backend starts with each of its sandboxes
/// (see `desktop`).
pub(crate) const BUILTINS: &[Builtin] = &[
    Builtin {
        id: BASE_TEMPLATE_ID,
        name: BASE_TEMPLATE,
        boot: no_boot,
    },
    Builtin {
        id: super::desktop::TEMPLATE_ID,
        name: super::desktop::TEMPLATE,
        boot: no_boot,
    },
];

/// The built-in named `name_or_id`.
pub(crate) fn builtin(name_or_id: &str) -> Option<&'static Builtin> {
    BUILTINS
        .iter()
        .find(|b| b.id == name_or_id || b.name == name_or_id)
}

/// One build step: exactly one of its keys.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub(crate) enum Step {
    Run(String),
    Env {
        key: String,
        value: String,
    },
    Workdir(String),
    User {
        name: String,
        #[serde(default)]
        sudo: bool,
    },
}

impl Step {
    /// How a log line or an error names the step.
    pub(crate) fn describe(&self) -> String {
        let short = |s: &str| {
            let s: String = s.chars().take(80).collect();
            s.replace('\n', " ")
        };
        match self {
            Step::Run(c) => format!("run: {}", short(c)),
            Step::Env { key, .. } => format!("env: {key}"),
            Step::Workdir(d) => format!("workdir: {}", short(d)),
            Step::User { name, sudo } => {
                format!("user: {name}{}", if *sudo { " (sudo)" } else { "" })
            }
        }
    }
}

/// `build_spec` of `POST /templates`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BuildSpec {
    pub from: String,
    #[serde(default)]
    pub steps: Vec<Step>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_cmd: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_cmd: Option<String>,
}

/// `POST /templates` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateBody {
    pub name: Option<String>,
    #[serde(default)]
    pub vcpu: Option<u32>,
    #[serde(default)]
    pub memory_mib: Option<u32>,
    #[serde(default)]
    pub disk_mib: Option<u32>,
    pub build_spec: Option<BuildSpec>,
}

/// Resources of a template's sandboxes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Resources {
    pub vcpu: u32,
    pub memory_mib: u32,
    pub disk_mib: u32,
}

fn is_valid_env_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 256
        && !k.starts_with(|c: char| c.is_ascii_digit())
        && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Checks a template name (protocol.md §3.6).
pub(crate) fn validate_name(name: &str) -> Result<(), String> {
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._/-".contains(c));
    let ends_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if name.is_empty()
        || name.len() > 128
        || !ok_chars
        || !ends_ok(name.chars().next())
        || !ends_ok(name.chars().last())
    {
        return Err(format!(
            "template name {name:?} must be 1-128 characters of a-z 0-9 . _ / -, starting and \
             ending with a letter or digit"
        ));
    }
    if name.starts_with("superserve/") {
        return Err("the superserve/ prefix is reserved for built-in templates".into());
    }
    Ok(())
}

impl CreateBody {
    /// Checks everything; returns the name, resources and spec.
    pub(crate) fn validate(self) -> Result<(String, Resources, BuildSpec), String> {
        let name = self.name.ok_or("name is required")?;
        validate_name(&name)?;
        let check = |v: Option<u32>, lo: u32, hi: u32, default: u32, what: &str| match v {
            None => Ok(default),
            Some(v) if (lo..=hi).contains(&v) => Ok(v),
            Some(v) => Err(format!("{what} must be {lo}-{hi}, got {v}")),
        };
        let res = Resources {
            vcpu: check(self.vcpu, 1, 4, 1, "vcpu")?,
            memory_mib: check(self.memory_mib, 256, 4096, 1024, "memory_mib")?,
            disk_mib: check(self.disk_mib, 1024, 8192, 4096, "disk_mib")?,
        };
        let spec = self.build_spec.ok_or("build_spec is required")?;
        validate_spec(&spec)?;
        Ok((name, res, spec))
    }
}

fn validate_spec(spec: &BuildSpec) -> Result<(), String> {
    if spec.from.trim().is_empty() || spec.from.len() > 512 || spec.from.contains(char::is_control)
    {
        return Err("build_spec.from must be a template name or an image reference".into());
    }
    if spec.steps.len() > 256 {
        return Err("build_spec.steps holds at most 256 steps".into());
    }
    let nul = |s: &str| s.contains('\0');
    for (i, s) in spec.steps.iter().enumerate() {
        let n = i + 1;
        match s {
            Step::Run(c) if c.trim().is_empty() || nul(c) => {
                return Err(format!("step {n}: run needs a command without NUL bytes"))
            }
            Step::Env { key, value } if !is_valid_env_key(key) || nul(value) => {
                return Err(format!(
                    "step {n}: env key {key:?} is not a valid variable name"
                ))
            }
            Step::Workdir(d) if !d.starts_with('/') || nul(d) => {
                return Err(format!(
                    "step {n}: workdir must be an absolute path, got {d:?}"
                ))
            }
            Step::User { name, .. }
                if name.is_empty()
                    || name.len() > 32
                    || !name.chars().all(|c| {
                        c.is_ascii_lowercase() || c.is_ascii_digit() || "_-".contains(c)
                    })
                    || name.starts_with('-') =>
            {
                return Err(format!(
                    "step {n}: user name {name:?} is not a valid user name"
                ))
            }
            _ => {}
        }
    }
    for (what, c) in [
        ("start_cmd", &spec.start_cmd),
        ("ready_cmd", &spec.ready_cmd),
    ] {
        if c.as_deref().is_some_and(|c| c.trim().is_empty() || nul(c)) {
            return Err(format!("build_spec.{what} must be a non-empty command"));
        }
    }
    Ok(())
}

/// The spec hash: the same spec and resources build the same template.
pub(crate) fn spec_hash(spec: &BuildSpec, res: Resources) -> String {
    let canon = json!({
        "spec": spec,
        "vcpu": res.vcpu,
        "memory_mib": res.memory_mib,
        "disk_mib": res.disk_mib,
    });
    let d = ring::digest::digest(&ring::digest::SHA256, canon.to_string().as_bytes());
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS templates (
    id              TEXT PRIMARY KEY,
    name            TEXT NOT NULL UNIQUE,
    vcpu            INTEGER NOT NULL,
    memory_mib      INTEGER NOT NULL,
    disk_mib        INTEGER NOT NULL,
    spec            TEXT NOT NULL,
    boot            TEXT NOT NULL DEFAULT '{}',
    stack           TEXT,
    size_bytes      INTEGER,
    created_ns      INTEGER NOT NULL,
    built_ns        INTEGER,
    latest_build_id TEXT
);
CREATE TABLE IF NOT EXISTS template_builds (
    id              TEXT PRIMARY KEY,
    template_id     TEXT NOT NULL,
    status          TEXT NOT NULL,
    spec_hash       TEXT NOT NULL,
    error_message   TEXT,
    created_ns      INTEGER NOT NULL,
    started_ns      INTEGER,
    finalized_ns    INTEGER
);
CREATE INDEX IF NOT EXISTS template_builds_by_template ON template_builds (template_id, created_ns);
CREATE TABLE IF NOT EXISTS build_logs (
    build_id    TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    ts_ns       INTEGER NOT NULL,
    stream      TEXT NOT NULL,
    text        TEXT NOT NULL,
    PRIMARY KEY (build_id, seq)
);
";

/// Creates the tables; a build a stop interrupted failed.
pub(crate) fn init(c: &Connection, now: i64) -> Result<Vec<String>, StoreError> {
    c.execute_batch(SCHEMA)?;
    let mut stmt = c.prepare(
        "SELECT id FROM template_builds WHERE status IN ('pending', 'building', 'snapshotting')",
    )?;
    let interrupted: Vec<String> = stmt
        .query_map([], |r| r.get(0))?
        .collect::<Result<Vec<_>, _>>()?;
    drop(stmt);
    for id in &interrupted {
        finish_build(
            c,
            id,
            BuildStatus::Failed,
            Some("build_failed: interrupted by a restart of the backend"),
            now,
        )?;
        append_log(
            c,
            id,
            now,
            "system",
            "build interrupted by a restart of the backend",
        )?;
    }
    let mut stmt = c.prepare("SELECT id FROM templates WHERE stack IS NOT NULL")?;
    let held = stmt
        .query_map([], |r| r.get(0))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(held)
}

/// Layer store holder of a template.
pub(crate) fn holder(id: &str) -> String {
    format!("template:{id}")
}

/// Layer store holder of a build (its `from` while it runs).
pub(crate) fn build_holder(id: &str) -> String {
    format!("build:{id}")
}

/// Status of a build.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BuildStatus {
    Pending,
    Building,
    Snapshotting,
    Ready,
    Failed,
    Cancelled,
}

impl BuildStatus {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            BuildStatus::Pending => "pending",
            BuildStatus::Building => "building",
            BuildStatus::Snapshotting => "snapshotting",
            BuildStatus::Ready => "ready",
            BuildStatus::Failed => "failed",
            BuildStatus::Cancelled => "cancelled",
        }
    }

    fn parse(s: &str) -> BuildStatus {
        match s {
            "pending" => BuildStatus::Pending,
            "building" => BuildStatus::Building,
            "snapshotting" => BuildStatus::Snapshotting,
            "ready" => BuildStatus::Ready,
            "cancelled" => BuildStatus::Cancelled,
            _ => BuildStatus::Failed,
        }
    }

    pub(crate) fn is_terminal(self) -> bool {
        matches!(
            self,
            BuildStatus::Ready | BuildStatus::Failed | BuildStatus::Cancelled
        )
    }
}

/// A template of the team.
#[derive(Clone, Debug)]
pub(crate) struct TemplateRow {
    pub id: String,
    pub name: String,
    pub res: Resources,
    pub spec: BuildSpec,
    pub boot: Boot,
    /// Set once a build made it ready.
    pub stack: Option<Stack>,
    pub size_bytes: Option<u64>,
    pub created_ns: i64,
    pub built_ns: Option<i64>,
    pub latest_build_id: Option<String>,
}

/// A build.
#[derive(Clone, Debug)]
pub(crate) struct BuildRow {
    pub id: String,
    pub template_id: String,
    pub status: BuildStatus,
    pub spec_hash: String,
    pub error_message: Option<String>,
    pub created_ns: i64,
    pub started_ns: Option<i64>,
    pub finalized_ns: Option<i64>,
}

impl BuildRow {
    pub(crate) fn view(&self) -> Value {
        json!({
            "id": self.id,
            "template_id": self.template_id,
            "status": self.status.as_str(),
            "build_spec_hash": self.spec_hash,
            "error_message": self.error_message,
            "created_at": format_rfc3339(self.created_ns),
            "started_at": self.started_ns.map(format_rfc3339),
            "finalized_at": self.finalized_ns.map(format_rfc3339),
        })
    }
}

/// The template's status: ready once built; else what its latest build says.
pub(crate) fn template_status(t: &TemplateRow, latest: Option<&BuildRow>) -> &'static str {
    if t.stack.is_some() {
        return "ready";
    }
    match latest.map(|b| b.status) {
        Some(BuildStatus::Pending) | None => "pending",
        Some(BuildStatus::Building | BuildStatus::Snapshotting) => "building",
        Some(BuildStatus::Ready) => "ready",
        Some(BuildStatus::Failed | BuildStatus::Cancelled) => "failed",
    }
}

impl TemplateRow {
    pub(crate) fn view(&self, latest: Option<&BuildRow>) -> Value {
        let status = template_status(self, latest);
        json!({
            "id": self.id,
            "team_id": TEAM_ID,
            "name": self.name,
            "status": status,
            "vcpu": self.res.vcpu,
            "memory_mib": self.res.memory_mib,
            "disk_mib": self.res.disk_mib,
            "size_bytes": self.size_bytes,
            "error_message": if status == "failed" {
                latest.and_then(|b| b.error_message.clone())
            } else {
                None
            },
            "created_at": format_rfc3339(self.created_ns),
            "built_at": self.built_ns.map(format_rfc3339),
            "latest_build_id": self.latest_build_id,
        })
    }
}

/// The JSON of a built-in template.
pub(crate) fn builtin_view(b: &Builtin) -> Value {
    json!({
        "id": b.id,
        "team_id": TEAM_ID,
        "name": b.name,
        "status": "ready",
        "vcpu": super::model::DEFAULT_VCPU,
        "memory_mib": super::model::DEFAULT_MEMORY_MIB,
        "disk_mib": 4096,
        "created_at": format_rfc3339(0),
    })
}

fn template_from_row(r: &Row<'_>) -> Result<TemplateRow, StoreError> {
    let spec: String = r.get("spec")?;
    let boot: String = r.get("boot")?;
    let stack: Option<String> = r.get("stack")?;
    Ok(TemplateRow {
        id: r.get("id")?,
        name: r.get("name")?,
        res: Resources {
            vcpu: r.get("vcpu")?,
            memory_mib: r.get("memory_mib")?,
            disk_mib: r.get("disk_mib")?,
        },
        spec: serde_json::from_str(&spec)?,
        boot: serde_json::from_str(&boot)?,
        stack: stack.map(|s| serde_json::from_str(&s)).transpose()?,
        size_bytes: r
            .get::<_, Option<i64>>("size_bytes")?
            .map(|n| u64::try_from(n).unwrap_or(0)),
        created_ns: r.get("created_ns")?,
        built_ns: r.get("built_ns")?,
        latest_build_id: r.get("latest_build_id")?,
    })
}

fn build_from_row(r: &Row<'_>) -> Result<BuildRow, StoreError> {
    let status: String = r.get("status")?;
    Ok(BuildRow {
        id: r.get("id")?,
        template_id: r.get("template_id")?,
        status: BuildStatus::parse(&status),
        spec_hash: r.get("spec_hash")?,
        error_message: r.get("error_message")?,
        created_ns: r.get("created_ns")?,
        started_ns: r.get("started_ns")?,
        finalized_ns: r.get("finalized_ns")?,
    })
}

/// Inserts a template.
pub(crate) fn insert_template(c: &Connection, t: &TemplateRow) -> Result<(), StoreError> {
    c.execute(
        "INSERT INTO templates (id, name, vcpu, memory_mib, disk_mib, spec, boot, stack,
            size_bytes, created_ns, built_ns, latest_build_id)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, NULL, NULL, ?8, NULL, ?9)",
        params![
            t.id,
            t.name,
            t.res.vcpu,
            t.res.memory_mib,
            t.res.disk_mib,
            serde_json::to_string(&t.spec)?,
            serde_json::to_string(&t.boot)?,
            t.created_ns,
            t.latest_build_id,
        ],
    )?;
    Ok(())
}

/// A template by id or name.
pub(crate) fn get_template(
    c: &Connection,
    name_or_id: &str,
) -> Result<Option<TemplateRow>, StoreError> {
    let mut stmt = c.prepare("SELECT * FROM templates WHERE id = ?1 OR name = ?1")?;
    let row = stmt
        .query_row(params![name_or_id], |r| Ok(template_from_row(r)))
        .optional()?;
    row.transpose()
}

/// Every template, oldest first.
pub(crate) fn list_templates(c: &Connection) -> Result<Vec<TemplateRow>, StoreError> {
    let mut stmt = c.prepare("SELECT * FROM templates ORDER BY created_ns, rowid")?;
    let rows = stmt
        .query_map([], |r| Ok(template_from_row(r)))?
        .collect::<Result<Vec<_>, _>>()?;
    rows.into_iter().collect()
}

/// Deletes a template, its builds and logs, and its layer references.
pub(crate) fn delete_template(c: &Connection, id: &str) -> Result<(), StoreError> {
    let tx = c.unchecked_transaction()?;
    tx.execute(
        "DELETE FROM build_logs WHERE build_id IN
            (SELECT id FROM template_builds WHERE template_id = ?1)",
        params![id],
    )?;
    tx.execute(
        "DELETE FROM template_builds WHERE template_id = ?1",
        params![id],
    )?;
    tx.execute("DELETE FROM templates WHERE id = ?1", params![id])?;
    super::layers::release(&tx, &holder(id))?;
    tx.commit()?;
    Ok(())
}

/// Records a ready build's result on its template (stack held in the same transaction by
/// the capture).
pub(crate) fn set_built(
    c: &Connection,
    id: &str,
    stack: &Stack,
    boot: &Boot,
    size: u64,
    now: i64,
) -> Result<(), StoreError> {
    c.execute(
        "UPDATE templates SET stack = ?2, boot = ?3, size_bytes = ?4, built_ns = ?5 WHERE id = ?1",
        params![
            id,
            serde_json::to_string(stack)?,
            serde_json::to_string(boot)?,
            i64::try_from(size).unwrap_or(i64::MAX),
            now
        ],
    )?;
    Ok(())
}

/// Inserts a build and makes it its template's latest.
pub(crate) fn insert_build(c: &Connection, b: &BuildRow) -> Result<(), StoreError> {
    c.execute(
        "INSERT INTO template_builds (id, template_id, status, spec_hash, error_message,
            created_ns, started_ns, finalized_ns)
         VALUES (?1, ?2, ?3, ?4, NULL, ?5, NULL, NULL)",
        params![
            b.id,
            b.template_id,
            b.status.as_str(),
            b.spec_hash,
            b.created_ns
        ],
    )?;
    c.execute(
        "UPDATE templates SET latest_build_id = ?2 WHERE id = ?1",
        params![b.template_id, b.id],
    )?;
    Ok(())
}

/// A build of a template.
pub(crate) fn get_build(
    c: &Connection,
    template_id: &str,
    id: &str,
) -> Result<Option<BuildRow>, StoreError> {
    let mut stmt = c.prepare("SELECT * FROM template_builds WHERE id = ?1 AND template_id = ?2")?;
    let row = stmt
        .query_row(params![id, template_id], |r| Ok(build_from_row(r)))
        .optional()?;
    row.transpose()
}

/// A template's builds, newest first.
pub(crate) fn list_builds(
    c: &Connection,
    template_id: &str,
    limit: usize,
) -> Result<Vec<BuildRow>, StoreError> {
    let mut stmt = c.prepare(
        "SELECT * FROM template_builds WHERE template_id = ?1
         ORDER BY created_ns DESC, rowid DESC LIMIT ?2",
    )?;
    let rows = stmt
        .query_map(
            params![template_id, i64::try_from(limit).unwrap_or(100)],
            |r| Ok(build_from_row(r)),
        )?
        .collect::<Result<Vec<_>, _>>()?;
    rows.into_iter().collect()
}

/// Builds not finished yet, of every template.
pub(crate) fn count_in_flight(c: &Connection) -> Result<usize, StoreError> {
    let n: i64 = c.query_row(
        "SELECT COUNT(*) FROM template_builds WHERE status IN ('pending', 'building', 'snapshotting')",
        [],
        |r| r.get(0),
    )?;
    Ok(usize::try_from(n).unwrap_or(0))
}

/// Sets a build's status (`started_ns` when it starts building).
pub(crate) fn set_build_status(
    c: &Connection,
    id: &str,
    s: BuildStatus,
    now: i64,
) -> Result<(), StoreError> {
    c.execute(
        "UPDATE template_builds SET status = ?2,
            started_ns = CASE WHEN ?2 = 'building' AND started_ns IS NULL THEN ?3 ELSE started_ns END
         WHERE id = ?1",
        params![id, s.as_str(), now],
    )?;
    Ok(())
}

/// Ends a build (unless it has ended already); `false` if it had.
pub(crate) fn finish_build(
    c: &Connection,
    id: &str,
    s: BuildStatus,
    error: Option<&str>,
    now: i64,
) -> Result<bool, StoreError> {
    Ok(c.execute(
        "UPDATE template_builds SET status = ?2, error_message = ?3, finalized_ns = ?4
         WHERE id = ?1 AND status IN ('pending', 'building', 'snapshotting')",
        params![id, s.as_str(), error, now],
    )? > 0)
}

/// One build log line.
#[derive(Clone, Debug)]
pub(crate) struct LogLine {
    pub seq: i64,
    pub ts_ns: i64,
    pub stream: String,
    pub text: String,
}

/// Appends a log line.
pub(crate) fn append_log(
    c: &Connection,
    build_id: &str,
    ts_ns: i64,
    stream: &str,
    text: &str,
) -> Result<(), StoreError> {
    c.execute(
        "INSERT INTO build_logs (build_id, seq, ts_ns, stream, text)
         VALUES (?1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM build_logs WHERE build_id = ?1), ?2, ?3, ?4)",
        params![build_id, ts_ns, stream, text],
    )?;
    Ok(())
}

/// Log lines after `after`.
pub(crate) fn logs_after(
    c: &Connection,
    build_id: &str,
    after: i64,
) -> Result<Vec<LogLine>, StoreError> {
    let mut stmt = c.prepare(
        "SELECT seq, ts_ns, stream, text FROM build_logs WHERE build_id = ?1 AND seq > ?2
         ORDER BY seq LIMIT 1000",
    )?;
    let rows = stmt
        .query_map(params![build_id, after], |r| {
            Ok(LogLine {
                seq: r.get(0)?,
                ts_ns: r.get(1)?,
                stream: r.get(2)?,
                text: r.get(3)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_one_key_each() {
        let s: Vec<Step> = serde_json::from_str(
            r#"[{"run":"x"},{"env":{"key":"K","value":"V"}},{"workdir":"/w"},{"user":{"name":"app","sudo":true}}]"#,
        )
        .unwrap();
        assert_eq!(s.len(), 4);
        assert!(serde_json::from_str::<Step>(r#"{"run":"x","workdir":"/w"}"#).is_err());
        assert!(serde_json::from_str::<Step>(r#"{"shell":"x"}"#).is_err());
    }

    #[test]
    fn names_and_specs() {
        assert!(validate_name("my-env.v2/x_1").is_ok());
        for bad in ["", "-a", "a-", "A", "superserve/x", "a b"] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
        let spec = |steps: &str| -> BuildSpec {
            serde_json::from_str(&format!(r#"{{"from":"superserve/base","steps":{steps}}}"#))
                .unwrap()
        };
        assert!(validate_spec(&spec(r#"[{"workdir":"rel"}]"#)).is_err());
        assert!(validate_spec(&spec(r#"[{"env":{"key":"1A","value":""}}]"#)).is_err());
        assert!(validate_spec(&spec(r#"[{"user":{"name":"Root"}}]"#)).is_err());
        assert!(validate_spec(&spec(r#"[{"run":"echo"}]"#)).is_ok());
        let res = Resources {
            vcpu: 1,
            memory_mib: 1024,
            disk_mib: 4096,
        };
        assert_eq!(spec_hash(&spec("[]"), res), spec_hash(&spec("[]"), res));
        assert_ne!(
            spec_hash(&spec("[]"), res),
            spec_hash(&spec(r#"[{"run":"echo"}]"#), res)
        );
    }
}
