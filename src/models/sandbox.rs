use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::{null_default, string_enum, NetworkConfig, Timestamp};

string_enum! {
    /// Lifecycle state of a sandbox.
    SandboxStatus {
        /// Being created.
        Starting = "starting",
        /// Running.
        Active = "active",
        /// A pause is in progress.
        Pausing = "pausing",
        /// Paused: processes frozen, nothing billed but storage.
        Paused = "paused",
        /// A resume is in progress.
        Resuming = "resuming",
        /// Moving between hosts.
        Migrating = "migrating",
        /// Failed.
        Failed = "failed",
        /// Deleted.
        Deleted = "deleted",
    }
}

string_enum! {
    /// Preview-URL access policy of a sandbox, as reported by the server.
    PreviewAccess {
        /// Pre-policy sandboxes: every port public without publishing.
        LegacyPublic = "legacy_public",
        /// Published ports are public.
        Public = "public",
        /// Published ports need a token.
        Private = "private",
    }
}

/// Preview-URL access policy that can be requested on create or update.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PreviewAccessPolicy {
    /// Published ports are reachable by anyone with the URL.
    Public,
    /// Published ports need a preview token.
    Private,
}

impl PreviewAccessPolicy {
    /// The wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            PreviewAccessPolicy::Public => "public",
            PreviewAccessPolicy::Private => "private",
        }
    }
}

/// A secret bound to a sandbox as an environment variable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SandboxSecretBinding {
    /// Environment variable that holds the stand-in token.
    #[serde(default, deserialize_with = "null_default")]
    pub env_key: String,
    /// Name of the team secret.
    #[serde(default, deserialize_with = "null_default")]
    pub secret_name: String,
    /// `true` when the secret was deleted and the binding no longer works.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked: Option<bool>,
}

/// A sandbox as the API describes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SandboxInfo {
    /// Sandbox id (opaque string).
    pub id: String,
    /// Name given at creation.
    #[serde(default, deserialize_with = "null_default")]
    pub name: String,
    /// Lifecycle state.
    pub status: SandboxStatus,
    /// vCPUs.
    #[serde(default, deserialize_with = "null_default")]
    pub vcpu_count: u32,
    /// Memory in MiB.
    #[serde(default, deserialize_with = "null_default")]
    pub memory_mib: u64,
    /// Creation time.
    pub created_at: Timestamp,
    /// Auto-pause after this many seconds of active time, if set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u64>,
    /// Auto-delete after this many seconds continuously paused, if set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_delete_seconds: Option<u64>,
    /// When a paused sandbox with auto-delete armed will be deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_delete_at: Option<Timestamp>,
    /// Egress rules, when not the default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkConfig>,
    /// User metadata.
    #[serde(default, deserialize_with = "null_default")]
    pub metadata: HashMap<String, String>,
    /// Preview access policy (`legacy_public` when the server omits it).
    #[serde(default = "legacy_public", deserialize_with = "preview_or_legacy")]
    pub preview_access: PreviewAccess,
    /// Bound secrets (`None` when there are none).
    #[serde(
        default,
        deserialize_with = "non_empty_list",
        skip_serializing_if = "Option::is_none"
    )]
    pub secrets: Option<Vec<SandboxSecretBinding>>,
    /// The snapshot this sandbox was created from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_snapshot_id: Option<String>,
}

fn legacy_public() -> PreviewAccess {
    PreviewAccess::LegacyPublic
}

fn preview_or_legacy<'de, D: serde::Deserializer<'de>>(d: D) -> Result<PreviewAccess, D::Error> {
    Ok(Option::<PreviewAccess>::deserialize(d)?.unwrap_or(PreviewAccess::LegacyPublic))
}

fn non_empty_list<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Vec<SandboxSecretBinding>>, D::Error> {
    Ok(Option::<Vec<SandboxSecretBinding>>::deserialize(d)?.filter(|v| !v.is_empty()))
}

/// The token fields of create/activate/resume responses.
#[derive(Deserialize)]
pub(crate) struct SandboxTokens {
    #[serde(default)]
    pub(crate) access_token: Option<String>,
    #[serde(default)]
    pub(crate) routing_hint: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_with_defaults_and_unknowns() {
        let info: SandboxInfo = serde_json::from_str(
            r#"{"id":"a","status":"hibernating","created_at":"2026-01-01T00:00:00Z",
                "name":null,"metadata":null,"preview_access":"members_only","secrets":[]}"#,
        )
        .unwrap();
        assert_eq!(info.status, SandboxStatus::Unknown("hibernating".into()));
        assert_eq!(info.name, "");
        assert!(info.metadata.is_empty());
        assert_eq!(
            info.preview_access,
            PreviewAccess::Unknown("members_only".into())
        );
        assert_eq!(info.secrets, None);
        let info: SandboxInfo = serde_json::from_str(
            r#"{"id":"a","status":"migrating","created_at":"2026-01-01T00:00:00Z"}"#,
        )
        .unwrap();
        assert_eq!(info.status, SandboxStatus::Migrating);
        assert_eq!(info.preview_access, PreviewAccess::LegacyPublic);
        assert!(serde_json::from_str::<SandboxInfo>(r#"{"id":"a","status":"active"}"#).is_err());
    }
}
