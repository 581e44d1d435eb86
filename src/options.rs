//! Request options shared by both flavours.
//!
//! One rule for every `*Options` type: private fields, a `new()` (or `Default`) and consuming
//! `#[must_use]` setters; values are checked when the call is made, and a bad one fails with
//! [`Error::InvalidInput`] before anything is sent.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Map, Value};

use crate::error::{Error, Result};
use crate::models::{NetworkConfig, NetworkVerdict, PreviewAccessPolicy, SandboxStatus, Timestamp};
use crate::wire::exec::OutputCallback;

const METADATA_MAX_KEYS: usize = 64;
const METADATA_MAX_KEY_BYTES: usize = 256;
const METADATA_MAX_VALUE_BYTES: usize = 2048;
const METADATA_MAX_TOTAL_BYTES: usize = 16 * 1024;

/// Checks metadata against the API's limits (protocol §3.1) before anything is sent.
pub(crate) fn validate_metadata(m: &BTreeMap<String, String>) -> Result<()> {
    if m.len() > METADATA_MAX_KEYS {
        return Err(Error::invalid(format!(
            "metadata has {} keys; at most {METADATA_MAX_KEYS} are allowed",
            m.len()
        )));
    }
    let mut total = 0;
    for (k, v) in m {
        if k.is_empty() {
            return Err(Error::invalid("metadata keys must not be empty"));
        }
        if k.len() > METADATA_MAX_KEY_BYTES {
            return Err(Error::invalid(format!(
                "metadata key {:?}... is {} bytes; at most {METADATA_MAX_KEY_BYTES} are allowed",
                k.chars().take(32).collect::<String>(),
                k.len()
            )));
        }
        if v.len() > METADATA_MAX_VALUE_BYTES {
            return Err(Error::invalid(format!(
                "metadata value of {k:?} is {} bytes; at most {METADATA_MAX_VALUE_BYTES} are allowed",
                v.len()
            )));
        }
        let lower = k.to_ascii_lowercase();
        if lower.starts_with("superserve.") || lower.starts_with("_superserve") {
            return Err(Error::invalid(format!(
                "metadata key {k:?} uses a reserved prefix (superserve. / _superserve)"
            )));
        }
        total += k.len() + v.len();
    }
    if total > METADATA_MAX_TOTAL_BYTES {
        return Err(Error::invalid(format!(
            "metadata is {total} bytes in all; at most {METADATA_MAX_TOTAL_BYTES} are allowed"
        )));
    }
    Ok(())
}

fn validate_env_key(kind: &str, k: &str) -> Result<()> {
    if k.is_empty() || k.contains('=') || k.contains('\0') {
        return Err(Error::invalid(format!(
            "{kind} name {k:?} is not a valid environment variable name"
        )));
    }
    Ok(())
}

/// Options of `Sandbox::create`.
///
/// ```
/// use superserve::{CreateOptions, NetworkConfig, PreviewAccessPolicy};
/// let opts = CreateOptions::new("data-analyzer")
///     .from_template("superserve/base")
///     .timeout_seconds(3600)
///     .auto_delete_seconds(600)
///     .metadata("env", "prod")
///     .env_var("LOG_LEVEL", "debug")
///     .secret("ANTHROPIC_API_KEY", "anthropic-prod")
///     .network(NetworkConfig::new().allow_out(["api.openai.com"]).deny_out(["0.0.0.0/0"]))
///     .preview_access(PreviewAccessPolicy::Private);
/// # let _ = opts;
/// ```
#[derive(Clone, PartialEq)]
#[must_use]
pub struct CreateOptions {
    /// Sandbox name (1–64 characters).
    pub(crate) name: String,
    /// Template name or id (server default `superserve/base`).
    pub(crate) from_template: Option<String>,
    /// Snapshot id to fork from.
    pub(crate) from_snapshot: Option<String>,
    /// Auto-pause after this many seconds of active time.
    pub(crate) timeout_seconds: Option<u64>,
    /// Auto-delete after this many seconds continuously paused.
    pub(crate) auto_delete_seconds: Option<u64>,
    /// User metadata.
    pub(crate) metadata: BTreeMap<String, String>,
    /// Environment variables for every process.
    pub(crate) env_vars: BTreeMap<String, String>,
    /// Secrets to bind: environment variable → secret name.
    pub(crate) secrets: BTreeMap<String, String>,
    /// Egress rules.
    pub(crate) network: Option<NetworkConfig>,
    /// Preview access policy.
    pub(crate) preview_access: Option<PreviewAccessPolicy>,
}

impl std::fmt::Debug for CreateOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // env var values may be credentials: show the keys only.
        f.debug_struct("CreateOptions")
            .field("name", &self.name)
            .field("from_template", &self.from_template)
            .field("from_snapshot", &self.from_snapshot)
            .field("timeout_seconds", &self.timeout_seconds)
            .field("auto_delete_seconds", &self.auto_delete_seconds)
            .field("metadata", &self.metadata)
            .field("env_vars", &self.env_vars.keys().collect::<Vec<_>>())
            .field("secrets", &self.secrets)
            .field("network", &self.network)
            .field("preview_access", &self.preview_access)
            .finish()
    }
}

impl CreateOptions {
    /// Options for a sandbox called `name`.
    pub fn new(name: impl Into<String>) -> Self {
        CreateOptions {
            name: name.into(),
            from_template: None,
            from_snapshot: None,
            timeout_seconds: None,
            auto_delete_seconds: None,
            metadata: BTreeMap::new(),
            env_vars: BTreeMap::new(),
            secrets: BTreeMap::new(),
            network: None,
            preview_access: None,
        }
    }
    /// Starts from a template: its name, its id, or a `Template` handle (either flavour).
    pub fn from_template(mut self, template: impl Into<TemplateRef>) -> Self {
        self.from_template = Some(template.into().0);
        self
    }
    /// Starts from a snapshot: its id, or a `Snapshot` handle (either flavour).
    pub fn from_snapshot(mut self, snapshot: impl Into<SnapshotRef>) -> Self {
        self.from_snapshot = Some(snapshot.into().0);
        self
    }
    /// Auto-pause after `secs` of active time.
    pub fn timeout_seconds(mut self, secs: u64) -> Self {
        self.timeout_seconds = Some(secs);
        self
    }
    /// Auto-delete after `secs` continuously paused (`0` = on pause).
    pub fn auto_delete_seconds(mut self, secs: u64) -> Self {
        self.auto_delete_seconds = Some(secs);
        self
    }
    /// Adds one metadata entry.
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }
    /// Adds one environment variable.
    pub fn env_var(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env_vars.insert(key.into(), value.into());
        self
    }
    /// Binds a team secret as environment variable `env_key`.
    pub fn secret(mut self, env_key: impl Into<String>, secret_name: impl Into<String>) -> Self {
        self.secrets.insert(env_key.into(), secret_name.into());
        self
    }
    /// Sets egress rules.
    pub fn network(mut self, network: NetworkConfig) -> Self {
        self.network = Some(network);
        self
    }
    /// Sets the preview access policy.
    pub fn preview_access(mut self, policy: PreviewAccessPolicy) -> Self {
        self.preview_access = Some(policy);
        self
    }

    /// Validates and builds the request body.
    pub(crate) fn to_body(&self) -> Result<Value> {
        let n = self.name.chars().count();
        if self.name.trim().is_empty() || n > 64 {
            return Err(Error::invalid(format!(
                "sandbox name must be 1-64 characters (got {n})"
            )));
        }
        if self.from_template.is_some() && self.from_snapshot.is_some() {
            return Err(Error::invalid(
                "from_template and from_snapshot are mutually exclusive",
            ));
        }
        validate_metadata(&self.metadata)?;
        for k in self.env_vars.keys() {
            validate_env_key("env var", k)?;
            if self.secrets.contains_key(k) {
                return Err(Error::invalid(format!(
                    "{k:?} is both an env var and a secret binding"
                )));
            }
        }
        for k in self.secrets.keys() {
            validate_env_key("secret env var", k)?;
        }
        let mut body = Map::new();
        body.insert("name".into(), json!(self.name));
        if let Some(t) = &self.from_template {
            body.insert("from_template".into(), json!(t));
        }
        if let Some(s) = &self.from_snapshot {
            body.insert("from_snapshot".into(), json!(s));
        }
        if let Some(t) = self.timeout_seconds {
            body.insert("timeout_seconds".into(), json!(t));
        }
        if let Some(t) = self.auto_delete_seconds {
            body.insert("auto_delete_seconds".into(), json!(t));
        }
        if !self.metadata.is_empty() {
            body.insert("metadata".into(), json!(self.metadata));
        }
        if !self.env_vars.is_empty() {
            body.insert("env_vars".into(), json!(self.env_vars));
        }
        if !self.secrets.is_empty() {
            body.insert("secrets".into(), json!(self.secrets));
        }
        if let Some(n) = &self.network {
            body.insert("network".into(), json!(n));
        }
        if let Some(p) = self.preview_access {
            body.insert("preview_access".into(), json!(p.as_str()));
        }
        Ok(Value::Object(body))
    }
}

/// Declares a reference type built from `&str`, `String` and `&String` (and from a handle, in
/// the api modules).
macro_rules! string_ref {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct $name(pub(crate) String);

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                $name(s.to_owned())
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                $name(s)
            }
        }

        impl From<&String> for $name {
            fn from(s: &String) -> Self {
                $name(s.clone())
            }
        }
    };
}

string_ref! {
    /// A template to start from: a name or an id (`&str`, `String`), or a `Template` handle of
    /// either flavour (its name, falling back to its id).
    TemplateRef
}

string_ref! {
    /// A snapshot to start from: an id (`&str`, `String`) or a `Snapshot` handle of either
    /// flavour.
    SnapshotRef
}

/// Filters of `Sandbox::list`.
///
/// ```
/// use superserve::{ListOptions, SandboxStatus};
/// let opts = ListOptions::new()
///     .metadata("env", "prod")
///     .status(SandboxStatus::Active)
///     .status(SandboxStatus::Paused)
///     .limit(100)
///     .offset(0);
/// # let _ = opts;
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
#[must_use]
pub struct ListOptions {
    /// Metadata filters (AND, exact match).
    pub(crate) metadata: BTreeMap<String, String>,
    /// Statuses to include (any of).
    pub(crate) statuses: Vec<SandboxStatus>,
    /// Page size (all when unset).
    pub(crate) limit: Option<u32>,
    /// Rows to skip.
    pub(crate) offset: Option<u32>,
}

impl ListOptions {
    /// No filters.
    pub fn new() -> Self {
        ListOptions::default()
    }
    /// Adds a metadata filter.
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }
    /// Adds a status to include.
    pub fn status(mut self, status: SandboxStatus) -> Self {
        self.statuses.push(status);
        self
    }
    /// Sets the page size.
    pub fn limit(mut self, limit: u32) -> Self {
        self.limit = Some(limit);
        self
    }
    /// Sets the offset.
    pub fn offset(mut self, offset: u32) -> Self {
        self.offset = Some(offset);
        self
    }

    pub(crate) fn to_query(&self) -> Result<String> {
        validate_metadata(&self.metadata)?;
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in &self.metadata {
            q.append_pair(&format!("metadata.{k}"), v);
        }
        if !self.statuses.is_empty() {
            let joined: Vec<&str> = self.statuses.iter().map(SandboxStatus::as_str).collect();
            q.append_pair("status", &joined.join(","));
        }
        if let Some(l) = self.limit {
            q.append_pair("limit", &l.to_string());
        }
        if let Some(o) = self.offset {
            q.append_pair("offset", &o.to_string());
        }
        Ok(q.finish())
    }
}

/// A tri-state field of an update: leave as is, set, or clear.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Patch<T> {
    #[default]
    Keep,
    Set(T),
    Clear,
}

/// Changes for `Sandbox::update`.
///
/// ```
/// use superserve::UpdateOptions;
/// let opts = UpdateOptions::new()
///     .replace_metadata([("env", "staging"), ("owner", "ci")])
///     .auto_delete_seconds(3600)
///     .clear_timeout_seconds();
/// # let _ = opts;
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
#[must_use]
pub struct UpdateOptions {
    metadata: Option<BTreeMap<String, String>>,
    network: Option<NetworkConfig>,
    auto_delete_seconds: Patch<u64>,
    timeout_seconds: Patch<u64>,
    preview_access: Option<PreviewAccessPolicy>,
}

impl UpdateOptions {
    /// No changes.
    pub fn new() -> Self {
        UpdateOptions::default()
    }
    /// Replaces the sandbox's metadata with `map`, as a whole: keys not in `map` are removed,
    /// and an empty map clears it. (There is no per-key update: the API replaces the map.)
    pub fn replace_metadata<I, K, V>(mut self, map: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        self.metadata = Some(map.into_iter().map(|(k, v)| (k.into(), v.into())).collect());
        self
    }
    /// Replaces the egress rules (the sandbox must be active).
    pub fn network(mut self, network: NetworkConfig) -> Self {
        self.network = Some(network);
        self
    }
    /// Arms (or re-arms) auto-delete.
    pub fn auto_delete_seconds(mut self, secs: u64) -> Self {
        self.auto_delete_seconds = Patch::Set(secs);
        self
    }
    /// Disarms auto-delete.
    pub fn clear_auto_delete_seconds(mut self) -> Self {
        self.auto_delete_seconds = Patch::Clear;
        self
    }
    /// Sets the auto-pause timeout.
    pub fn timeout_seconds(mut self, secs: u64) -> Self {
        self.timeout_seconds = Patch::Set(secs);
        self
    }
    /// Disables auto-pause.
    pub fn clear_timeout_seconds(mut self) -> Self {
        self.timeout_seconds = Patch::Clear;
        self
    }
    /// Sets the default preview access for new ports.
    pub fn preview_access(mut self, policy: PreviewAccessPolicy) -> Self {
        self.preview_access = Some(policy);
        self
    }

    pub(crate) fn to_body(&self) -> Result<Value> {
        let mut body = Map::new();
        if let Some(m) = &self.metadata {
            validate_metadata(m)?;
            body.insert("metadata".into(), json!(m));
        }
        if let Some(n) = &self.network {
            body.insert("network".into(), json!(n));
        }
        for (key, patch) in [
            ("auto_delete_seconds", self.auto_delete_seconds),
            ("timeout_seconds", self.timeout_seconds),
        ] {
            match patch {
                Patch::Keep => {}
                Patch::Set(v) => {
                    body.insert(key.into(), json!(v));
                }
                Patch::Clear => {
                    body.insert(key.into(), Value::Null);
                }
            }
        }
        if let Some(p) = self.preview_access {
            body.insert("preview_access".into(), json!(p.as_str()));
        }
        if body.is_empty() {
            return Err(Error::invalid(
                "an update needs at least one field to change",
            ));
        }
        Ok(Value::Object(body))
    }
}

/// Filters of `Sandbox::get_network_log`.
///
/// ```
/// use superserve::{NetworkLogOptions, NetworkVerdict};
/// let opts = NetworkLogOptions::new().verdict(NetworkVerdict::Blocked).limit(100);
/// # let _ = opts;
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
#[must_use]
pub struct NetworkLogOptions {
    /// Page size.
    pub(crate) limit: Option<u32>,
    /// Cursor (a previous `next_cursor`) or RFC 3339 time: rows strictly older.
    pub(crate) before: Option<String>,
    /// RFC 3339 time: rows at or after.
    pub(crate) since: Option<String>,
    /// Only connection rows with this verdict.
    pub(crate) verdict: Option<NetworkVerdict>,
}

impl NetworkLogOptions {
    /// No filters.
    pub fn new() -> Self {
        NetworkLogOptions::default()
    }
    /// Sets the page size.
    pub fn limit(mut self, limit: u32) -> Self {
        self.limit = Some(limit);
        self
    }
    /// Rows older than this cursor (a page's `next_cursor`) or RFC 3339 time text.
    pub fn before(mut self, cursor: impl Into<String>) -> Self {
        self.before = Some(cursor.into());
        self
    }
    /// Rows strictly older than this time (a [`SystemTime`](std::time::SystemTime) or a [`Timestamp`]).
    pub fn before_time(mut self, time: impl Into<Timestamp>) -> Self {
        self.before = Some(time.into().as_str().to_owned());
        self
    }
    /// Rows at or after this time: a [`SystemTime`](std::time::SystemTime), a [`Timestamp`], or RFC 3339 text.
    ///
    /// ```
    /// use std::time::{Duration, SystemTime};
    /// let last_hour = superserve::NetworkLogOptions::new()
    ///     .since(SystemTime::now() - Duration::from_secs(3600));
    /// let since_noon = superserve::NetworkLogOptions::new().since("2026-12-01T12:00:00Z");
    /// # let _ = (last_hour, since_noon);
    /// ```
    pub fn since(mut self, time: impl Into<Timestamp>) -> Self {
        self.since = Some(time.into().as_str().to_owned());
        self
    }
    /// Only rows with this verdict.
    pub fn verdict(mut self, verdict: NetworkVerdict) -> Self {
        self.verdict = Some(verdict);
        self
    }

    pub(crate) fn to_query(&self) -> String {
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        if let Some(l) = self.limit {
            q.append_pair("limit", &l.to_string());
        }
        if let Some(b) = &self.before {
            q.append_pair("before", b);
        }
        if let Some(s) = &self.since {
            q.append_pair("since", s);
        }
        if let Some(v) = &self.verdict {
            q.append_pair("verdict", v.as_str());
        }
        q.finish()
    }
}

/// How `Sandbox::pause_with` waits.
///
/// ```
/// use std::time::Duration;
/// let opts = superserve::PauseOptions::new().wait(true).timeout(Duration::from_secs(60));
/// # let _ = opts;
/// ```
#[derive(Debug, Clone, PartialEq)]
#[must_use]
pub struct PauseOptions {
    /// Wait until the pause has landed (default `false`: return once accepted).
    pub(crate) wait: bool,
    /// Budget for the whole call, polling included. Default 300 s.
    pub(crate) timeout: Duration,
    /// Poll interval while waiting. Default 1 s.
    pub(crate) poll_interval: Duration,
}

impl Default for PauseOptions {
    fn default() -> Self {
        PauseOptions {
            wait: false,
            timeout: Duration::from_secs(300),
            poll_interval: Duration::from_secs(1),
        }
    }
}

impl PauseOptions {
    /// The defaults.
    pub fn new() -> Self {
        PauseOptions::default()
    }
    /// Whether to wait for the pause to land.
    pub fn wait(mut self, wait: bool) -> Self {
        self.wait = wait;
        self
    }
    /// Budget for the call.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
    /// Poll interval.
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }
}

/// How `Sandbox::resume_with` waits for a pause
/// that is still landing (a resume answered with 409 while the sandbox is `pausing`).
///
/// ```
/// use std::time::Duration;
/// let opts = superserve::ResumeOptions::new()
///     .timeout(Duration::from_secs(60))
///     .poll_interval(Duration::from_millis(200));
/// # let _ = opts;
/// ```
#[derive(Debug, Clone, PartialEq)]
#[must_use]
pub struct ResumeOptions {
    pub(crate) timeout: Duration,
    pub(crate) poll_interval: Option<Duration>,
}

impl Default for ResumeOptions {
    fn default() -> Self {
        ResumeOptions {
            timeout: Duration::from_secs(300),
            poll_interval: None,
        }
    }
}

impl ResumeOptions {
    /// The defaults: wait up to 300 s for an in-flight pause, polling every 50 ms for the first
    /// 2 s and every second after.
    pub fn new() -> Self {
        ResumeOptions::default()
    }
    /// How long to wait for an in-flight pause to land before resuming.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
    /// A fixed poll interval while waiting (instead of 50 ms, then 1 s).
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = Some(interval);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_body_and_validation() {
        let body = CreateOptions::new("x")
            .network(NetworkConfig::new().allow_out(["a.com"]))
            .to_body()
            .unwrap();
        assert_eq!(
            body,
            json!({"name":"x","network":{"allow_out":["a.com"],"deny_out":null}})
        );
        assert!(CreateOptions::new("").to_body().is_err());
        assert!(CreateOptions::new("a".repeat(65)).to_body().is_err());
        assert!(CreateOptions::new("x")
            .metadata("superserve.owner", "me")
            .to_body()
            .is_err());
        assert!(CreateOptions::new("x")
            .env_var("K", "v")
            .secret("K", "s")
            .to_body()
            .is_err());
        let too_many = (0..65).fold(CreateOptions::new("x"), |o, i| {
            o.metadata(format!("k{i}"), "v")
        });
        assert!(too_many.to_body().is_err());
        let dbg = format!("{:?}", CreateOptions::new("x").env_var("TOKEN", "hunter2"));
        assert!(!dbg.contains("hunter2"));
    }

    #[test]
    fn list_query_encoding() {
        let q = ListOptions::new()
            .metadata("env", "prod x")
            .status(SandboxStatus::Active)
            .status(SandboxStatus::Paused)
            .limit(10)
            .offset(0)
            .to_query()
            .unwrap();
        assert_eq!(
            q,
            "metadata.env=prod+x&status=active%2Cpaused&limit=10&offset=0"
        );
    }

    #[test]
    fn update_tri_state() {
        let b = UpdateOptions::new()
            .clear_timeout_seconds()
            .auto_delete_seconds(5)
            .to_body()
            .unwrap();
        assert_eq!(b, json!({"timeout_seconds":null,"auto_delete_seconds":5}));
        assert!(UpdateOptions::new().to_body().is_err());
        let b = UpdateOptions::new()
            .replace_metadata(Vec::<(String, String)>::new())
            .to_body()
            .unwrap();
        assert_eq!(b, json!({"metadata":{}}));
    }
}

/// Default cap on the output collected into a [`CommandResult`](crate::CommandResult), per
/// stream: 10 MiB.
pub const DEFAULT_MAX_OUTPUT_BYTES: usize = 10 * 1024 * 1024;

/// Longest command timeout accepted: a week.
const MAX_COMMAND_TIMEOUT_SECS: u64 = 7 * 24 * 3600;

/// Options of `Commands::run_with`, `run_stream` and `spawn_with`.
///
/// With an `on_stdout` or `on_stderr` callback, `run_with` streams the output (server-sent
/// events) and calls the callback with each chunk as it arrives; the result still holds it, up
/// to [`max_output_bytes`](Self::max_output_bytes) per stream.
///
/// Callbacks are `FnMut + Send + 'static`: they may own and change what they collect into. They
/// run on the SDK's I/O task (sessions) or the calling task (runs); keep them short.
///
/// ```
/// use superserve::RunOptions;
/// let mut lines = 0;
/// let opts = RunOptions::new()
///     .cwd("/app")
///     .env("CI", "1")
///     .envs([("LANG", "C.UTF-8"), ("TZ", "UTC")])
///     .timeout_seconds(300)
///     .max_output_bytes(1024 * 1024)
///     .on_stdout(move |s: &str| {
///         lines += s.matches('\n').count();
///         print!("{s}");
///     })
///     .on_stderr(|s: &str| eprint!("{s}"));
/// # let _ = opts;
/// ```
#[derive(Clone)]
#[must_use]
pub struct RunOptions {
    pub(crate) cwd: Option<String>,
    pub(crate) env: BTreeMap<String, String>,
    pub(crate) timeout_seconds: Option<u64>,
    pub(crate) max_output_bytes: usize,
    pub(crate) on_stdout: Option<OutputCallback>,
    pub(crate) on_stderr: Option<OutputCallback>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            cwd: None,
            env: BTreeMap::new(),
            timeout_seconds: None,
            max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES,
            on_stdout: None,
            on_stderr: None,
        }
    }
}

impl std::fmt::Debug for RunOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunOptions")
            .field("cwd", &self.cwd)
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .field("timeout_seconds", &self.timeout_seconds)
            .field("max_output_bytes", &self.max_output_bytes)
            .field("on_stdout", &self.on_stdout.is_some())
            .field("on_stderr", &self.on_stderr.is_some())
            .finish()
    }
}

impl RunOptions {
    /// No options: runs in the default directory with the sandbox's environment, with the
    /// default timeout (`Timeouts::command`, 30 s) and output cap (10 MiB per stream).
    pub fn new() -> Self {
        RunOptions::default()
    }
    /// Working directory.
    pub fn cwd(mut self, dir: impl Into<String>) -> Self {
        self.cwd = Some(dir.into());
        self
    }
    /// Adds an environment variable for this command.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(key.into(), value.into());
        self
    }
    /// Adds environment variables for this command.
    pub fn envs<I, K, V>(mut self, vars: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        self.env
            .extend(vars.into_iter().map(|(k, v)| (k.into(), v.into())));
        self
    }
    /// How long the command may run (1 s to a week). The server ends it after this long and
    /// answers with exit code 124 and the output so far; the SDK waits 5 s longer than this
    /// for that answer. Default for `run`, `run_with` and `run_stream`: the configuration's
    /// [`Timeouts::command`](crate::Timeouts::command) (30 s); a session (`spawn`) has no
    /// timeout unless one is set here.
    pub fn timeout_seconds(mut self, secs: u64) -> Self {
        self.timeout_seconds = Some(secs);
        self
    }
    /// Caps what is collected into the result's `stdout` and `stderr` (each), default 10 MiB.
    /// Past it collection stops and [`CommandResult::truncated`](crate::CommandResult) is set;
    /// callbacks and event streams still see every byte, and memory stays bounded however
    /// much the command prints.
    pub fn max_output_bytes(mut self, bytes: usize) -> Self {
        self.max_output_bytes = bytes;
        self
    }
    /// Called with each chunk of stdout (decoded UTF-8) as it arrives.
    pub fn on_stdout(mut self, f: impl FnMut(&str) + Send + 'static) -> Self {
        self.on_stdout = Some(OutputCallback::new(f));
        self
    }
    /// Called with each chunk of stderr (decoded UTF-8) as it arrives.
    pub fn on_stderr(mut self, f: impl FnMut(&str) + Send + 'static) -> Self {
        self.on_stderr = Some(OutputCallback::new(f));
        self
    }

    pub(crate) fn has_callbacks(&self) -> bool {
        self.on_stdout.is_some() || self.on_stderr.is_some()
    }

    pub(crate) fn callbacks(&self) -> crate::wire::exec::Callbacks {
        crate::wire::exec::Callbacks {
            on_stdout: self.on_stdout.clone(),
            on_stderr: self.on_stderr.clone(),
        }
    }

    /// The request body, with `timeout_s` = the explicit timeout, else `default_timeout`.
    pub(crate) fn body(&self, command: &str, default_timeout: Option<u64>) -> Result<Value> {
        if command.trim().is_empty() {
            return Err(Error::invalid("command must not be empty"));
        }
        if command.contains('\0') {
            return Err(Error::invalid("command must not contain a NUL byte"));
        }
        if let Some(cwd) = &self.cwd {
            if !cwd.starts_with('/') || cwd.contains('\0') {
                return Err(Error::invalid(format!(
                    "cwd {cwd:?} must be an absolute path"
                )));
            }
        }
        for (k, v) in &self.env {
            validate_env_key("env var", k)?;
            if v.contains('\0') {
                return Err(Error::invalid(format!(
                    "the value of env var {k:?} contains a NUL byte"
                )));
            }
        }
        let timeout = self.timeout_seconds.or(default_timeout);
        if let Some(t) = timeout {
            if !(1..=MAX_COMMAND_TIMEOUT_SECS).contains(&t) {
                return Err(Error::invalid(format!(
                    "timeout_seconds must be between 1 and {MAX_COMMAND_TIMEOUT_SECS} (got {t})"
                )));
            }
        }
        Ok(crate::wire::exec::exec_body(
            command,
            self.cwd.as_deref(),
            &self.env,
            timeout,
        ))
    }
}

/// How a secret is presented to its hosts (the request-side `auth` rule).
///
/// ```
/// use superserve::SecretAuth;
/// let bearer = SecretAuth::bearer();
/// let key = SecretAuth::api_key("X-Api-Key").prefix("Key ");
/// let basic = SecretAuth::basic("svc-user");
/// let custom = SecretAuth::custom([("X-Token", "{{ value }}")]);
/// let split = SecretAuth::per_host([
///     (SecretAuth::bearer(), vec!["api.a.example.com"]),
///     (SecretAuth::api_key("X-Key"), vec!["api.b.example.com"]),
/// ]);
/// # let _ = (bearer, key, basic, custom, split);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct SecretAuth(pub(crate) Value);

impl SecretAuth {
    /// `Authorization: Bearer <value>`.
    pub fn bearer() -> Self {
        SecretAuth(json!({"type": "bearer"}))
    }
    /// HTTP basic auth: `<username>:<value>`.
    pub fn basic(username: impl Into<String>) -> Self {
        SecretAuth(json!({"type": "basic", "username": username.into()}))
    }
    /// `<header>: <value>` (see [`prefix`](Self::prefix)).
    pub fn api_key(header: impl Into<String>) -> Self {
        SecretAuth(json!({"type": "api-key", "header": header.into()}))
    }
    /// Header templates; `{{ value }}` stands for the secret.
    pub fn custom<I, K, V>(headers: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let headers: BTreeMap<String, String> = headers
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        SecretAuth(json!({"type": "custom", "headers": headers}))
    }
    /// One rule per group of hosts.
    pub fn per_host<I, H, S>(rules: I) -> Self
    where
        I: IntoIterator<Item = (SecretAuth, H)>,
        H: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let rules: Vec<Value> = rules
            .into_iter()
            .map(|(auth, hosts)| {
                let mut rule = auth.0;
                let hosts: Vec<String> = hosts.into_iter().map(Into::into).collect();
                if let Value::Object(m) = &mut rule {
                    m.insert("hosts".into(), json!(hosts));
                }
                rule
            })
            .collect();
        SecretAuth(json!({"per_host": rules}))
    }
    /// A prefix before the value (`api_key` rules).
    #[must_use]
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        if let Value::Object(m) = &mut self.0 {
            m.insert("prefix".into(), json!(prefix.into()));
        }
        self
    }

    fn is_per_host(&self) -> bool {
        self.0.get("per_host").is_some()
    }
}

/// What `Secret::create` stores.
///
/// The value is never shown by `Debug`.
///
/// ```
/// use superserve::{SecretAuth, SecretCreateOptions};
/// let openai = SecretCreateOptions::new("openai-prod", "sk-...").provider("openai");
/// let internal = SecretCreateOptions::new("internal-api", "tok")
///     .hosts(["api.internal.example.com"])
///     .auth(SecretAuth::api_key("X-Api-Key"));
/// assert!(!format!("{internal:?}").contains("tok\""));
/// # let _ = openai;
/// ```
#[derive(Clone)]
#[must_use]
pub struct SecretCreateOptions {
    pub(crate) name: String,
    pub(crate) value: String,
    pub(crate) provider: Option<String>,
    pub(crate) auth: Option<SecretAuth>,
    pub(crate) hosts: Vec<String>,
}

impl std::fmt::Debug for SecretCreateOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretCreateOptions")
            .field("name", &self.name)
            .field("value", &"<redacted>")
            .field("provider", &self.provider)
            .field("auth", &self.auth)
            .field("hosts", &self.hosts)
            .finish()
    }
}

impl SecretCreateOptions {
    /// A secret called `name` holding `value`.
    pub fn new(name: impl Into<String>, value: impl Into<String>) -> Self {
        SecretCreateOptions {
            name: name.into(),
            value: value.into(),
            provider: None,
            auth: None,
            hosts: Vec::new(),
        }
    }
    /// Uses a provider shortcut (hosts and auth preset), e.g. `"openai"`.
    pub fn provider(mut self, provider: impl Into<String>) -> Self {
        self.provider = Some(provider.into());
        self
    }
    /// The auth rule.
    pub fn auth(mut self, auth: SecretAuth) -> Self {
        self.auth = Some(auth);
        self
    }
    /// Hosts the secret is injected for (`*.example.com` matches subdomains).
    pub fn hosts<I, S>(mut self, hosts: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.hosts = hosts.into_iter().map(Into::into).collect();
        self
    }

    pub(crate) fn to_body(&self) -> Result<Value> {
        if self.name.trim().is_empty() {
            return Err(Error::invalid("secret name must not be empty"));
        }
        if self.value.is_empty() {
            return Err(Error::invalid("secret value must not be empty"));
        }
        let per_host = self.auth.as_ref().is_some_and(SecretAuth::is_per_host);
        if self.provider.is_none() && self.hosts.is_empty() && !per_host {
            return Err(Error::invalid(
                "a secret needs a provider shortcut or the hosts it is for",
            ));
        }
        let mut m = Map::new();
        m.insert("name".into(), json!(self.name));
        m.insert("value".into(), json!(self.value));
        if let Some(p) = &self.provider {
            m.insert("provider".into(), json!(p));
        }
        if let Some(a) = &self.auth {
            m.insert("auth".into(), a.0.clone());
        }
        if !self.hosts.is_empty() {
            m.insert("hosts".into(), json!(self.hosts));
        }
        Ok(Value::Object(m))
    }
}

/// Status filter of a secret's audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuditStatus {
    /// 2xx answers.
    Success,
    /// 3xx answers.
    Redirect,
    /// 4xx answers.
    ClientError,
    /// 5xx answers.
    ServerError,
    /// Every failed request.
    Errors,
}

impl AuditStatus {
    /// The wire value (`2xx`, `3xx`, `4xx`, `5xx`, `errors`).
    pub fn as_str(self) -> &'static str {
        match self {
            AuditStatus::Success => "2xx",
            AuditStatus::Redirect => "3xx",
            AuditStatus::ClientError => "4xx",
            AuditStatus::ServerError => "5xx",
            AuditStatus::Errors => "errors",
        }
    }
}

/// Filters of `Secret::get_audit`.
///
/// ```
/// use superserve::{AuditOptions, AuditStatus};
/// let opts = AuditOptions::new().limit(50).status(AuditStatus::Errors);
/// # let _ = opts;
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
#[must_use]
pub struct AuditOptions {
    /// Page size.
    pub(crate) limit: Option<u32>,
    /// Only events with a smaller id (the cursor).
    pub(crate) before: Option<i64>,
    /// Status filter.
    pub(crate) status: Option<AuditStatus>,
}

impl AuditOptions {
    /// No filters.
    pub fn new() -> Self {
        AuditOptions::default()
    }
    /// Page size.
    pub fn limit(mut self, limit: u32) -> Self {
        self.limit = Some(limit);
        self
    }
    /// Events older than this id.
    pub fn before(mut self, id: i64) -> Self {
        self.before = Some(id);
        self
    }
    /// Status filter.
    pub fn status(mut self, status: AuditStatus) -> Self {
        self.status = Some(status);
        self
    }

    pub(crate) fn to_query(&self) -> String {
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        if let Some(l) = self.limit {
            q.append_pair("limit", &l.to_string());
        }
        if let Some(b) = self.before {
            q.append_pair("before", &b.to_string());
        }
        if let Some(s) = self.status {
            q.append_pair("status", s.as_str());
        }
        q.finish()
    }
}

/// How `Sandbox::wait_for_port` waits for an app inside a sandbox to answer.
///
/// Without an HTTP path, a TCP connection to the port is enough; with one, an HTTP `GET` of the
/// path must answer with a status below 500.
///
/// ```
/// use std::time::Duration;
/// let opts = superserve::WaitOptions::new()
///     .http_path("/health")
///     .timeout(Duration::from_secs(30))
///     .interval(Duration::from_millis(100));
/// # let _ = opts;
/// ```
#[derive(Debug, Clone, PartialEq)]
#[must_use]
pub struct WaitOptions {
    pub(crate) http_path: Option<String>,
    pub(crate) timeout: Duration,
    pub(crate) interval: Duration,
}

impl Default for WaitOptions {
    fn default() -> Self {
        WaitOptions {
            http_path: None,
            timeout: Duration::from_secs(60),
            interval: Duration::from_millis(200),
        }
    }
}

impl WaitOptions {
    /// The defaults: a TCP connect, up to 60 s, trying every 200 ms.
    pub fn new() -> Self {
        WaitOptions::default()
    }
    /// Wait for an HTTP status below 500 on this path (starting with `/`) instead of a bare
    /// TCP connect.
    pub fn http_path(mut self, path: impl Into<String>) -> Self {
        self.http_path = Some(path.into());
        self
    }
    /// How long to wait in all.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
    /// The pause between two tries.
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    pub(crate) fn check(&self) -> Result<()> {
        if let Some(p) = &self.http_path {
            let ok = p.starts_with('/')
                && p.len() <= 2048
                && p.bytes()
                    .all(|b| b.is_ascii_graphic() && b != b'\'' && b != b'"');
            if !ok {
                return Err(Error::invalid(format!(
                    "http_path {p:?} must start with '/' and hold printable characters only"
                )));
            }
        }
        Ok(())
    }
}

/// How `Sandbox::snapshot` takes a snapshot.
///
/// The idempotency key is always sent: this one, or a fresh random UUID, so that a retried
/// request never makes two snapshots.
///
/// ```
/// use std::time::Duration;
/// let opts = superserve::SnapshotOptions::new()
///     .name("before-upgrade")
///     .idempotency_key("upgrade-42")
///     .wait(true)
///     .timeout(Duration::from_secs(600));
/// # let _ = opts;
/// ```
#[derive(Debug, Clone, PartialEq)]
#[must_use]
pub struct SnapshotOptions {
    pub(crate) name: Option<String>,
    pub(crate) idempotency_key: Option<String>,
    pub(crate) wait: bool,
    pub(crate) timeout: Duration,
    pub(crate) poll_interval: Duration,
}

impl Default for SnapshotOptions {
    fn default() -> Self {
        SnapshotOptions {
            name: None,
            idempotency_key: None,
            wait: true,
            timeout: Duration::from_secs(900),
            poll_interval: Duration::from_secs(2),
        }
    }
}

impl SnapshotOptions {
    /// The defaults: no name, a fresh key, wait until ready, 15 minutes in all, poll every 2 s.
    pub fn new() -> Self {
        SnapshotOptions::default()
    }
    /// A name for the snapshot (1–128 characters).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }
    /// The idempotency key: the same key returns the same snapshot.
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }
    /// Wait until the snapshot is ready (default) or return once it is accepted.
    pub fn wait(mut self, wait: bool) -> Self {
        self.wait = wait;
        self
    }
    /// Budget for the capture and the wait together.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
    /// Poll interval while waiting.
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    pub(crate) fn to_body(&self) -> Result<Value> {
        if let Some(n) = &self.name {
            check_snapshot_name(n)?;
        }
        let key = match &self.idempotency_key {
            Some(k) if k.is_empty() || k.len() > 256 => {
                return Err(Error::invalid(
                    "an idempotency key must be 1-256 characters",
                ))
            }
            Some(k) => k.clone(),
            None => crate::wire::uuid_v4(),
        };
        let mut m = Map::new();
        m.insert("kind".into(), json!("mem+fs"));
        m.insert("idempotency_key".into(), json!(key));
        if let Some(n) = &self.name {
            m.insert("name".into(), json!(n));
        }
        Ok(Value::Object(m))
    }
}

/// Checks a snapshot name: 1–128 characters, no control characters.
pub(crate) fn check_snapshot_name(name: &str) -> Result<()> {
    let n = name.chars().count();
    if name.trim().is_empty() || n > 128 || name.chars().any(char::is_control) {
        return Err(Error::invalid(format!(
            "a snapshot name must be 1-128 characters without control characters (got {name:?})"
        )));
    }
    Ok(())
}

/// A template to build: `Template::create`'s options.
///
/// Checked before anything is sent: the name (1–128 characters of `a-z 0-9 . _ / -`,
/// starting and ending with a letter or digit, not under the reserved `superserve/`), the
/// image reference, vCPUs 1–4, memory 256–4096 MiB, disk 1024–8192 MiB, and each step.
///
/// ```
/// use superserve::{BuildStep, TemplateOptions};
/// let opts = TemplateOptions::new("py-app")
///     .from_image("python:3.11")
///     .vcpu(2)
///     .memory_mib(2048)
///     .disk_mib(4096)
///     .step(BuildStep::run("pip install fastapi uvicorn"))
///     .step(BuildStep::workdir("/srv/app"))
///     .step(BuildStep::env("PORT", "8000"))
///     .step(BuildStep::user("app", true))
///     .start_cmd("uvicorn main:app --port 8000")
///     .ready_cmd("curl -fs localhost:8000/health");
/// # let _ = opts;
/// ```
#[derive(Debug, Clone, PartialEq)]
#[must_use]
pub struct TemplateOptions {
    pub(crate) name: String,
    pub(crate) from: String,
    pub(crate) vcpu: Option<u32>,
    pub(crate) memory_mib: Option<u32>,
    pub(crate) disk_mib: Option<u32>,
    pub(crate) steps: Vec<crate::models::BuildStep>,
    pub(crate) start_cmd: Option<String>,
    pub(crate) ready_cmd: Option<String>,
}

impl TemplateOptions {
    /// A template called `name`, built from `superserve/base` unless
    /// [`from_image`](Self::from_image) says otherwise.
    pub fn new(name: impl Into<String>) -> Self {
        TemplateOptions {
            name: name.into(),
            from: "superserve/base".to_owned(),
            vcpu: None,
            memory_mib: None,
            disk_mib: None,
            steps: Vec::new(),
            start_cmd: None,
            ready_cmd: None,
        }
    }
    /// What to build from: an OCI image reference (`python:3.11`,
    /// `ghcr.io/org/img@sha256:…`; linux/amd64), `superserve/base`, or another template.
    pub fn from_image(mut self, reference: impl Into<String>) -> Self {
        self.from = reference.into();
        self
    }
    /// vCPUs of the template's sandboxes (1–4).
    pub fn vcpu(mut self, vcpu: u32) -> Self {
        self.vcpu = Some(vcpu);
        self
    }
    /// Memory of the template's sandboxes, MiB (256–4096).
    pub fn memory_mib(mut self, mib: u32) -> Self {
        self.memory_mib = Some(mib);
        self
    }
    /// Disk of the template's sandboxes, MiB (1024–8192).
    pub fn disk_mib(mut self, mib: u32) -> Self {
        self.disk_mib = Some(mib);
        self
    }
    /// Adds a build step (run in order).
    pub fn step(mut self, step: crate::models::BuildStep) -> Self {
        self.steps.push(step);
        self
    }
    /// Adds build steps.
    pub fn steps(mut self, steps: impl IntoIterator<Item = crate::models::BuildStep>) -> Self {
        self.steps.extend(steps);
        self
    }
    /// A command started when a sandbox boots from the template.
    pub fn start_cmd(mut self, cmd: impl Into<String>) -> Self {
        self.start_cmd = Some(cmd.into());
        self
    }
    /// A command run (repeatedly) until it succeeds before a sandbox from the template is
    /// active.
    pub fn ready_cmd(mut self, cmd: impl Into<String>) -> Self {
        self.ready_cmd = Some(cmd.into());
        self
    }

    pub(crate) fn to_body(&self) -> Result<Value> {
        check_template_name(&self.name)?;
        if self.from.trim().is_empty()
            || self.from.len() > 1024
            || self.from.contains(char::is_whitespace)
        {
            return Err(Error::invalid(format!(
                "from_image {:?} is not an image reference",
                self.from
            )));
        }
        let range = |what: &str, v: Option<u32>, lo: u32, hi: u32| -> Result<()> {
            match v {
                Some(x) if !(lo..=hi).contains(&x) => Err(Error::invalid(format!(
                    "{what} must be {lo}-{hi} (got {x})"
                ))),
                _ => Ok(()),
            }
        };
        range("vcpu", self.vcpu, 1, 4)?;
        range("memory_mib", self.memory_mib, 256, 4096)?;
        range("disk_mib", self.disk_mib, 1024, 8192)?;
        for (i, step) in self.steps.iter().enumerate() {
            check_step(i, step)?;
        }
        for (what, cmd) in [
            ("start_cmd", &self.start_cmd),
            ("ready_cmd", &self.ready_cmd),
        ] {
            if cmd
                .as_deref()
                .is_some_and(|c| c.trim().is_empty() || c.contains('\0'))
            {
                return Err(Error::invalid(format!(
                    "{what} must be a non-empty command"
                )));
            }
        }
        let mut spec = Map::new();
        spec.insert("from".into(), json!(self.from));
        if !self.steps.is_empty() {
            let steps: Vec<Value> = self
                .steps
                .iter()
                .map(crate::models::BuildStep::to_json)
                .collect();
            spec.insert("steps".into(), Value::Array(steps));
        }
        if let Some(c) = &self.start_cmd {
            spec.insert("start_cmd".into(), json!(c));
        }
        if let Some(c) = &self.ready_cmd {
            spec.insert("ready_cmd".into(), json!(c));
        }
        let mut body = Map::new();
        body.insert("name".into(), json!(self.name));
        for (k, v) in [
            ("vcpu", self.vcpu),
            ("memory_mib", self.memory_mib),
            ("disk_mib", self.disk_mib),
        ] {
            if let Some(v) = v {
                body.insert(k.into(), json!(v));
            }
        }
        body.insert("build_spec".into(), Value::Object(spec));
        Ok(Value::Object(body))
    }
}

/// Checks a template name: 1–128 characters of `a-z 0-9 . _ / -`, starting and ending with a
/// letter or digit, not under `superserve/` (reserved for built-ins).
pub(crate) fn check_template_name(name: &str) -> Result<()> {
    let b = name.as_bytes();
    let edge = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    let ok = (1..=128).contains(&b.len())
        && b.first().copied().is_some_and(edge)
        && b.last().copied().is_some_and(edge)
        && b.iter()
            .all(|&c| edge(c) || matches!(c, b'.' | b'_' | b'/' | b'-'));
    if !ok {
        return Err(Error::invalid(format!(
            "template name {name:?} must be 1-128 characters of a-z, 0-9, '.', '_', '/', '-', starting and ending with a letter or digit"
        )));
    }
    if name.starts_with("superserve/") {
        return Err(Error::invalid(format!(
            "template name {name:?} uses the reserved prefix superserve/"
        )));
    }
    Ok(())
}

fn check_step(i: usize, step: &crate::models::BuildStep) -> Result<()> {
    use crate::models::BuildStep;
    let bad = |why: &str| Err(Error::invalid(format!("build step {}: {why}", i + 1)));
    match step {
        BuildStep::Run(c) if c.trim().is_empty() || c.contains('\0') => bad("run needs a command"),
        BuildStep::Env { key, value } => {
            validate_env_key("env", key)?;
            if value.contains('\0') {
                return bad("env value contains a NUL byte");
            }
            Ok(())
        }
        BuildStep::Workdir(d) if !d.starts_with('/') || d.contains('\0') => {
            bad("workdir must be an absolute path")
        }
        BuildStep::User { name, .. }
            if name.is_empty()
                || name.len() > 32
                || !name
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.')) =>
        {
            bad("user needs a name of letters, digits, '_', '-' or '.' (at most 32)")
        }
        BuildStep::Unknown(_) => bad("a step of a kind this version does not know"),
        _ => Ok(()),
    }
}

/// How `Template::wait_until_ready` waits for a build.
///
/// ```
/// use std::time::Duration;
/// let opts = superserve::TemplateWaitOptions::new()
///     .on_log(|e: &superserve::BuildLogEvent| println!("{}", e.text))
///     .timeout(Duration::from_secs(1800));
/// # let _ = opts;
/// ```
#[derive(Clone)]
#[must_use]
pub struct TemplateWaitOptions {
    pub(crate) on_log: Option<LogCallback>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) poll_interval: Duration,
}

type LogFn = dyn FnMut(&crate::models::BuildLogEvent) + Send + 'static;

/// A callback for build log events.
#[derive(Clone)]
pub(crate) struct LogCallback(Arc<Mutex<LogFn>>);

impl LogCallback {
    pub(crate) fn call(&self, ev: &crate::models::BuildLogEvent) {
        let mut f = self.0.lock().unwrap_or_else(|p| p.into_inner());
        f(ev);
    }
}

impl Default for TemplateWaitOptions {
    fn default() -> Self {
        TemplateWaitOptions {
            on_log: None,
            timeout: None,
            poll_interval: Duration::from_secs(2),
        }
    }
}

impl std::fmt::Debug for TemplateWaitOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TemplateWaitOptions")
            .field("on_log", &self.on_log.is_some())
            .field("timeout", &self.timeout)
            .field("poll_interval", &self.poll_interval)
            .finish()
    }
}

impl TemplateWaitOptions {
    /// The defaults: no log callback, no overall timeout, poll every 2 s.
    pub fn new() -> Self {
        TemplateWaitOptions::default()
    }
    /// Called with each build log event (replayed from the start, then live) while waiting.
    pub fn on_log(mut self, f: impl FnMut(&crate::models::BuildLogEvent) + Send + 'static) -> Self {
        self.on_log = Some(LogCallback(Arc::new(Mutex::new(f))));
        self
    }
    /// Gives up after this long with a [`TimeoutKind::Operation`](crate::TimeoutKind)
    /// timeout (the build keeps running; cancel it with `Template::cancel_build`).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
    /// Poll interval of the build's status.
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }
}
