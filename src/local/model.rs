//! Sandbox records, request bodies, validation and the JSON views of protocol.md §3.1.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Deserializer, Serialize};

use super::time::format_rfc3339;

/// The only template this backend has.
pub(crate) const BASE_TEMPLATE: &str = "superserve/base";
/// The base template's fixed id (accepted by `from_template` too).
pub(crate) const BASE_TEMPLATE_ID: &str = "00000000-0000-4000-8000-0000000000b5";
/// Resources every sandbox of the base template gets.
pub(crate) const DEFAULT_VCPU: u32 = 1;
/// Memory of the base template, MiB.
pub(crate) const DEFAULT_MEMORY_MIB: u32 = 512;
/// Disk size of a sandbox made from the base template, MiB (as the hosted templates).
pub(crate) const DEFAULT_DISK_MIB: u32 = 4096;
/// Longest `timeout_seconds` accepted (7 days).
pub(crate) const MAX_TIMEOUT_SECONDS: u64 = 604_800;
/// Longest `auto_delete_seconds` accepted (30 days).
pub(crate) const MAX_AUTO_DELETE_SECONDS: u64 = 2_592_000;

/// Sandbox lifecycle states (protocol.md §8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Status {
    Starting,
    Active,
    Pausing,
    Paused,
    Resuming,
    Failed,
}

impl Status {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Status::Starting => "starting",
            Status::Active => "active",
            Status::Pausing => "pausing",
            Status::Paused => "paused",
            Status::Resuming => "resuming",
            Status::Failed => "failed",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Status> {
        Some(match s {
            "starting" => Status::Starting,
            "active" => Status::Active,
            "pausing" => Status::Pausing,
            "paused" => Status::Paused,
            "resuming" => Status::Resuming,
            "failed" => Status::Failed,
            _ => return None,
        })
    }
}

/// Statuses a list filter may name (unknown ones are a 400).
pub(crate) const KNOWN_STATUSES: &[&str] = &[
    "starting",
    "active",
    "pausing",
    "paused",
    "resuming",
    "migrating",
    "failed",
    "deleted",
];

/// `network` of a sandbox: egress rules (stored; enforced once sandboxes get their own network
/// namespace).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Network {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_out: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deny_out: Option<Vec<String>>,
}

impl Network {
    fn is_empty(&self) -> bool {
        self.allow_out.is_none() && self.deny_out.is_none()
    }
}

/// A secret bound to an env var (as stored; the API shows [`BindingView`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Binding {
    pub env_key: String,
    pub secret_name: String,
    /// The secret was deleted: its stand-in is refused at egress.
    #[serde(default)]
    pub revoked: bool,
    /// The binding was detached (or replaced): hidden from the API, its stand-in refused.
    #[serde(default)]
    pub detached: bool,
    /// The secret's id when it was bound.
    #[serde(default)]
    pub secret_id: String,
    /// The hosts the secret covers (fixed for a secret's lifetime).
    #[serde(default)]
    pub hosts: Vec<String>,
    /// The stand-in token the sandbox sees in `env_key` instead of the value.
    #[serde(default)]
    pub standin: String,
}

impl Binding {
    /// Whether the API still shows it (and processes still get its env var).
    pub(crate) fn visible(&self) -> bool {
        !self.detached
    }

    /// Its API shape.
    pub(crate) fn view(&self) -> BindingView<'_> {
        BindingView {
            env_key: &self.env_key,
            secret_name: &self.secret_name,
            revoked: self.revoked,
        }
    }
}

/// A binding as the API shows it (`SandboxSecretBinding`).
#[derive(Debug, Serialize)]
pub(crate) struct BindingView<'a> {
    env_key: &'a str,
    secret_name: &'a str,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    revoked: bool,
}

/// Everything the backend knows about one sandbox (persisted in SQLite).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Record {
    pub id: String,
    pub seq: i64,
    pub name: String,
    pub status: Status,
    pub vcpu_count: u32,
    pub memory_mib: u32,
    /// Size of the sandbox's disk (its writable layer), MiB.
    pub disk_mib: u32,
    /// The sandbox's slot of host user/group ids (see `idmap`), once it has one.
    pub id_slot: Option<u32>,
    pub created_ns: i64,
    pub timeout_seconds: Option<u64>,
    pub auto_delete_seconds: Option<u64>,
    pub auto_delete_at_ns: Option<i64>,
    /// When the auto-pause window started counting (start, resume, or a new `timeout_seconds`).
    pub active_since_ns: Option<i64>,
    pub paused_at_ns: Option<i64>,
    pub network: Option<Network>,
    pub metadata: BTreeMap<String, String>,
    pub env_vars: BTreeMap<String, String>,
    pub secrets: Vec<Binding>,
    pub preview_access: String,
    pub access_token: String,
    pub template: String,
    pub hostname: String,
    /// The read-only layers under the sandbox's root.
    pub stack: Stack,
    /// The snapshot it was created from.
    pub source_snapshot: Option<String>,
    /// What its template gives its commands and its boot (env, working directory, user,
    /// start and ready commands).
    pub boot: Boot,
}

impl Record {
    /// The JSON sandbox object; `with_token` adds `access_token`.
    pub(crate) fn view(&self, with_token: bool) -> SandboxView<'_> {
        SandboxView {
            id: &self.id,
            name: &self.name,
            status: self.status.as_str(),
            vcpu_count: self.vcpu_count,
            memory_mib: self.memory_mib,
            created_at: format_rfc3339(self.created_ns),
            timeout_seconds: self.timeout_seconds,
            auto_delete_seconds: self.auto_delete_seconds,
            auto_delete_at: match self.status {
                Status::Paused | Status::Pausing => self.auto_delete_at_ns.map(format_rfc3339),
                _ => None,
            },
            network: self.network.as_ref().filter(|n| !n.is_empty()),
            metadata: &self.metadata,
            preview_access: &self.preview_access,
            secrets: {
                let v: Vec<BindingView<'_>> = self
                    .secrets
                    .iter()
                    .filter(|b| b.visible())
                    .map(Binding::view)
                    .collect();
                (!v.is_empty()).then_some(v)
            },
            source_snapshot_id: self.source_snapshot.as_deref(),
            access_token: if with_token {
                Some(&self.access_token)
            } else {
                None
            },
        }
    }

    /// Arms the auto-delete countdown from `now` if configured.
    pub(crate) fn arm_auto_delete(&mut self, now: i64) {
        self.auto_delete_at_ns = self
            .auto_delete_seconds
            .map(|s| now.saturating_add((s as i64).saturating_mul(1_000_000_000)));
    }

    /// When the auto-pause fires, if armed and active.
    pub(crate) fn auto_pause_at_ns(&self) -> Option<i64> {
        match (self.status, self.timeout_seconds, self.active_since_ns) {
            (Status::Active, Some(t), Some(since)) => {
                Some(since.saturating_add((t as i64).saturating_mul(1_000_000_000)))
            }
            _ => None,
        }
    }
}

/// Serialised form of a sandbox (field order as protocol.md §3.1).
#[derive(Serialize)]
pub(crate) struct SandboxView<'a> {
    id: &'a str,
    name: &'a str,
    status: &'static str,
    vcpu_count: u32,
    memory_mib: u32,
    created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    timeout_seconds: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    auto_delete_seconds: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    auto_delete_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    network: Option<&'a Network>,
    metadata: &'a BTreeMap<String, String>,
    preview_access: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    secrets: Option<Vec<BindingView<'a>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    source_snapshot_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    access_token: Option<&'a str>,
}

/// `POST /sandboxes` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateBody {
    pub name: Option<String>,
    #[serde(default)]
    pub from_template: Option<String>,
    #[serde(default)]
    pub from_snapshot: Option<String>,
    #[serde(default)]
    pub timeout_seconds: Option<u64>,
    #[serde(default)]
    pub auto_delete_seconds: Option<u64>,
    #[serde(default)]
    pub metadata: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub env_vars: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub secrets: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub network: Option<Network>,
    #[serde(default)]
    pub preview_access: Option<String>,
}

/// Distinguishes an absent field (`None`) from an explicit `null` (`Some(None)`).
fn tri_state<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// `PATCH /sandboxes/{id}` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PatchBody {
    #[serde(default)]
    pub metadata: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub network: Option<Network>,
    #[serde(default, deserialize_with = "tri_state")]
    pub auto_delete_seconds: Option<Option<u64>>,
    #[serde(default, deserialize_with = "tri_state")]
    pub timeout_seconds: Option<Option<u64>>,
    #[serde(default)]
    pub preview_access: Option<String>,
}

impl PatchBody {
    pub(crate) fn is_empty(&self) -> bool {
        self.metadata.is_none()
            && self.network.is_none()
            && self.auto_delete_seconds.is_none()
            && self.timeout_seconds.is_none()
            && self.preview_access.is_none()
    }
}

/// `POST /sandboxes/{id}/secrets` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BindBody {
    pub env_key: Option<String>,
    pub secret_name: Option<String>,
}

/// Validates a sandbox name (1–64 characters).
pub(crate) fn validate_name(name: &str) -> Result<(), String> {
    let n = name.chars().count();
    if n == 0 || n > 64 {
        return Err(format!("name must be 1-64 characters, got {n}"));
    }
    if name.chars().any(char::is_control) {
        return Err("name must not contain control characters".into());
    }
    Ok(())
}

/// Validates metadata limits (protocol.md §3.1).
pub(crate) fn validate_metadata(m: &BTreeMap<String, String>) -> Result<(), String> {
    if m.len() > 64 {
        return Err(format!(
            "metadata has {} keys; at most 64 are allowed",
            m.len()
        ));
    }
    let mut total = 0usize;
    for (k, v) in m {
        if k.is_empty() {
            return Err("metadata keys must not be empty".into());
        }
        if k.len() > 256 {
            return Err(format!("metadata key {k:?} is longer than 256 bytes"));
        }
        if v.len() > 2048 {
            return Err(format!(
                "metadata value for {k:?} is longer than 2048 bytes"
            ));
        }
        let lower = k.to_ascii_lowercase();
        if lower.starts_with("superserve.") || lower.starts_with("_superserve") {
            return Err(format!("metadata key {k:?} uses a reserved prefix"));
        }
        total += k.len() + v.len();
    }
    if total > 16 * 1024 {
        return Err(format!(
            "metadata is {total} bytes; at most 16384 are allowed"
        ));
    }
    Ok(())
}

/// Whether `k` is a usable environment variable name.
pub(crate) fn valid_env_key(k: &str) -> bool {
    let mut chars = k.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

/// Validates `env_vars` (names and NUL-free values).
pub(crate) fn validate_env(env: &BTreeMap<String, String>) -> Result<(), String> {
    for (k, v) in env {
        if !valid_env_key(k) {
            return Err(format!("env var name {k:?} is invalid"));
        }
        if v.contains('\0') {
            return Err(format!("env var {k:?} contains a NUL byte"));
        }
    }
    Ok(())
}

fn valid_cidr(s: &str) -> bool {
    let (ip, prefix) = match s.split_once('/') {
        Some((ip, p)) => (ip, Some(p)),
        None => (s, None),
    };
    let Ok(ip) = ip.parse::<IpAddr>() else {
        return false;
    };
    match prefix {
        None => true,
        Some(p) => {
            let max = if ip.is_ipv4() { 32 } else { 128 };
            p.parse::<u8>().is_ok_and(|p| p <= max) && !p.starts_with('+')
        }
    }
}

fn valid_domain(s: &str) -> bool {
    let s = s.strip_prefix("*.").unwrap_or(s);
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
}

/// Validates egress rules: `allow_out` takes CIDRs or domains (`*.x` wildcards), `deny_out`
/// only CIDRs.
pub(crate) fn validate_network(n: &Network) -> Result<(), String> {
    for a in n.allow_out.iter().flatten() {
        if !(valid_cidr(a) || valid_domain(a)) {
            return Err(format!(
                "allow_out entry {a:?} is neither a CIDR nor a domain"
            ));
        }
    }
    for d in n.deny_out.iter().flatten() {
        if !valid_cidr(d) {
            return Err(format!("deny_out entry {d:?} is not a CIDR"));
        }
    }
    Ok(())
}

/// Validates a requested `preview_access` (`legacy_public` cannot be requested).
pub(crate) fn validate_preview_access(p: &str) -> Result<(), String> {
    match p {
        "public" | "private" => Ok(()),
        other => Err(format!(
            "preview_access must be \"public\" or \"private\", got {other:?}"
        )),
    }
}

/// Validates `timeout_seconds`.
pub(crate) fn validate_timeout(t: u64) -> Result<(), String> {
    if t == 0 || t > MAX_TIMEOUT_SECONDS {
        return Err(format!(
            "timeout_seconds must be between 1 and {MAX_TIMEOUT_SECONDS}, got {t}"
        ));
    }
    Ok(())
}

/// Validates `auto_delete_seconds` (0 = delete as soon as paused).
pub(crate) fn validate_auto_delete(t: u64) -> Result<(), String> {
    if t > MAX_AUTO_DELETE_SECONDS {
        return Err(format!(
            "auto_delete_seconds must be between 0 and {MAX_AUTO_DELETE_SECONDS}, got {t}"
        ));
    }
    Ok(())
}

/// What is under a stack's layers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Base {
    /// `superserve/base`: the skeleton root and the host's `/usr` (its own overlay).
    #[default]
    Host,
    /// Nothing: the layers are a whole root (an OCI image), under the backend's small
    /// runtime layer (`/etc/resolv.conf`, `/etc/hosts`, mount points).
    None,
}

/// An ordered stack of layers, top first.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Stack {
    #[serde(default)]
    pub layers: Vec<String>,
    #[serde(default)]
    pub base: Base,
}

impl Stack {
    /// `layer` on top of this stack.
    pub(crate) fn with_top(&self, layer: &str) -> Stack {
        let mut layers = vec![layer.to_owned()];
        layers.extend(self.layers.iter().cloned());
        Stack {
            layers,
            base: self.base,
        }
    }
}

/// What a sandbox made from a template boots with.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Boot {
    /// Environment of every command (under the sandbox's own `env_vars`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Default working directory of commands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// Default user of commands (root when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Started (in the background) whenever the sandbox boots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_cmd: Option<String>,
    /// Polled after `start_cmd` until it succeeds before the sandbox is active.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_cmd: Option<String>,
}

impl Boot {
    pub(crate) fn is_empty(&self) -> bool {
        *self == Boot::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_metadata() {
        assert!(validate_name("").is_err());
        assert!(validate_name(&"x".repeat(65)).is_err());
        assert!(validate_name(&"é".repeat(64)).is_ok());
        let mut m = BTreeMap::new();
        m.insert("Superserve.owner".to_owned(), "me".to_owned());
        assert!(validate_metadata(&m).is_err());
        m.clear();
        m.insert("_SUPERSERVE_x".to_owned(), "me".to_owned());
        assert!(validate_metadata(&m).is_err());
        m.clear();
        m.insert("k".to_owned(), "v".repeat(2049));
        assert!(validate_metadata(&m).is_err());
        m.clear();
        for i in 0..8 {
            m.insert(format!("k{i}"), "v".repeat(2048));
        }
        assert!(validate_metadata(&m).is_err(), "total over 16 KiB");
        m.clear();
        for i in 0..65 {
            m.insert(format!("k{i}"), String::new());
        }
        assert!(validate_metadata(&m).is_err());
    }

    #[test]
    fn env_and_network() {
        assert!(valid_env_key("ANTHROPIC_API_KEY"));
        assert!(valid_env_key("_x1"));
        assert!(!valid_env_key("1X"));
        assert!(!valid_env_key("A-B"));
        assert!(!valid_env_key(""));
        let ok = Network {
            allow_out: Some(vec![
                "api.openai.com".into(),
                "*.github.com".into(),
                "10.0.0.0/8".into(),
            ]),
            deny_out: Some(vec!["0.0.0.0/0".into(), "::/0".into()]),
        };
        assert!(validate_network(&ok).is_ok());
        let bad = Network {
            allow_out: None,
            deny_out: Some(vec!["example.com".into()]),
        };
        assert!(validate_network(&bad).is_err());
        let bad = Network {
            allow_out: Some(vec!["10.0.0.0/33".into()]),
            deny_out: None,
        };
        assert!(validate_network(&bad).is_err());
    }

    #[test]
    fn patch_tri_state() {
        let p: PatchBody =
            serde_json::from_str(r#"{"timeout_seconds":null}"#).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.timeout_seconds, Some(None));
        assert_eq!(p.auto_delete_seconds, None);
        let p: PatchBody =
            serde_json::from_str(r#"{"auto_delete_seconds":5}"#).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.auto_delete_seconds, Some(Some(5)));
        assert!(serde_json::from_str::<PatchBody>(r#"{"bogus":1}"#).is_err());
        let p: PatchBody = serde_json::from_str("{}").unwrap_or_else(|e| panic!("{e}"));
        assert!(p.is_empty());
    }
}
