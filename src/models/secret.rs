use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{null_default, string_enum, SandboxStatus, Timestamp};

string_enum! {
    /// How a secret is presented to its hosts.
    SecretAuthType {
        /// `Authorization: Bearer <value>`.
        Bearer = "bearer",
        /// HTTP basic auth with a fixed username.
        Basic = "basic",
        /// `<header>: <prefix><value>`.
        ApiKey = "api-key",
        /// Header templates.
        Custom = "custom",
        /// A rule per host group.
        PerHost = "per_host",
    }
}

fn default_bearer() -> SecretAuthType {
    SecretAuthType::Bearer
}

fn empty_object() -> Value {
    Value::Object(Default::default())
}

fn object_or_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Value, D::Error> {
    Ok(Option::<Value>::deserialize(d)?.unwrap_or_else(empty_object))
}

#[derive(Deserialize)]
struct SecretInfoWire {
    id: String,
    name: String,
    auth_type: SecretAuthType,
    created_at: Timestamp,
    #[serde(default = "empty_object", deserialize_with = "object_or_empty")]
    auth_config: Value,
    #[serde(default)]
    provider_shortcut: Option<String>,
    #[serde(default, deserialize_with = "null_default")]
    hosts: Vec<String>,
    #[serde(default)]
    updated_at: Option<Timestamp>,
    #[serde(default)]
    last_used_at: Option<Timestamp>,
}

/// A team secret as the API describes it. The value is never returned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "SecretInfoWire")]
#[non_exhaustive]
pub struct SecretInfo {
    /// Secret id.
    pub id: String,
    /// Secret name (unique in the team).
    pub name: String,
    /// How it is presented.
    pub auth_type: SecretAuthType,
    /// Creation time.
    pub created_at: Timestamp,
    /// The auth rule (header names, prefixes, ...; never the value).
    pub auth_config: Value,
    /// The provider shortcut it was created from, if any.
    pub provider_shortcut: Option<String>,
    /// Hosts it is injected for.
    pub hosts: Vec<String>,
    /// Last change (the creation time if never changed).
    pub updated_at: Timestamp,
    /// Last use at egress.
    pub last_used_at: Option<Timestamp>,
}

impl From<SecretInfoWire> for SecretInfo {
    fn from(w: SecretInfoWire) -> Self {
        SecretInfo {
            updated_at: w.updated_at.unwrap_or_else(|| w.created_at.clone()),
            id: w.id,
            name: w.name,
            auth_type: w.auth_type,
            created_at: w.created_at,
            auth_config: w.auth_config,
            provider_shortcut: w.provider_shortcut,
            hosts: w.hosts,
            last_used_at: w.last_used_at,
        }
    }
}

/// One secret-bearing request seen at egress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ProxyAuditEvent {
    /// Event id (also the paging cursor).
    pub id: i64,
    /// When it happened.
    pub ts: Timestamp,
    /// The sandbox that sent it.
    #[serde(default, deserialize_with = "null_default")]
    pub sandbox_id: String,
    /// Its name (`None` once the sandbox is deleted).
    #[serde(default)]
    pub sandbox_name: Option<String>,
    /// The secret used.
    #[serde(default)]
    pub secret_id: Option<String>,
    /// HTTP method.
    #[serde(default, deserialize_with = "null_default")]
    pub method: String,
    /// Destination host.
    #[serde(default, deserialize_with = "null_default")]
    pub host: String,
    /// Request path.
    #[serde(default, deserialize_with = "null_default")]
    pub path: String,
    /// Status returned to the sandbox.
    #[serde(default, deserialize_with = "null_default")]
    pub status: u16,
    /// Status the upstream answered.
    #[serde(default)]
    pub upstream_status: Option<u16>,
    /// Added latency in milliseconds.
    #[serde(default)]
    pub latency_ms: Option<u64>,
    /// Error code, when the request failed.
    #[serde(default)]
    pub error_code: Option<String>,
}

fn active() -> SandboxStatus {
    SandboxStatus::Active
}

/// A sandbox a secret is bound to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SecretSandboxBinding {
    /// Sandbox id.
    #[serde(default, deserialize_with = "null_default")]
    pub sandbox_id: String,
    /// Sandbox name.
    #[serde(default, deserialize_with = "null_default")]
    pub sandbox_name: String,
    /// Environment variable holding the stand-in token.
    #[serde(default, deserialize_with = "null_default")]
    pub env_key: String,
    /// Sandbox status.
    #[serde(default = "active")]
    pub status: SandboxStatus,
}

#[derive(Deserialize)]
struct ProviderWire {
    name: String,
    #[serde(default)]
    display: Option<String>,
    #[serde(default)]
    auth_type: Option<SecretAuthType>,
    #[serde(default = "empty_object", deserialize_with = "object_or_empty")]
    auth_config: Value,
    #[serde(default, deserialize_with = "null_default")]
    hosts: Vec<String>,
    #[serde(default, deserialize_with = "null_default")]
    token_shape: String,
}

/// A built-in provider shortcut (`openai`, `anthropic`, ...): hosts and auth shape preset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "ProviderWire")]
#[non_exhaustive]
pub struct ProviderShortcut {
    /// Shortcut name, for [`SecretCreateOptions::provider`](crate::SecretCreateOptions::provider).
    pub name: String,
    /// Display name.
    pub display: String,
    /// Auth type.
    pub auth_type: SecretAuthType,
    /// Auth rule.
    pub auth_config: Value,
    /// Hosts.
    pub hosts: Vec<String>,
    /// What a token looks like (a hint, e.g. `sk-...`).
    pub token_shape: String,
}

impl From<ProviderWire> for ProviderShortcut {
    fn from(w: ProviderWire) -> Self {
        ProviderShortcut {
            display: w.display.unwrap_or_else(|| w.name.clone()),
            auth_type: w.auth_type.unwrap_or_else(default_bearer),
            name: w.name,
            auth_config: w.auth_config,
            hosts: w.hosts,
            token_shape: w.token_shape,
        }
    }
}
