use std::fmt;

use serde::{Deserialize, Serialize};

use super::{null_default, PreviewAccess, Timestamp};

/// Lowest port a preview can expose.
pub const MIN_PREVIEW_PORT: u16 = 1024;
/// Highest port a preview can expose.
pub const MAX_PREVIEW_PORT: u16 = 65535;
/// The port of the in-sandbox daemon, never exposed as a preview.
pub const RESERVED_PREVIEW_PORT: u16 = 49983;
/// The port of a desktop sandbox's live view (noVNC).
pub const DESKTOP_STREAM_PORT: u16 = 6080;

/// Checks a preview port (1024–65535, not 49983) before anything is sent.
pub(crate) fn check_preview_port(port: u16) -> crate::Result<()> {
    if port == RESERVED_PREVIEW_PORT {
        return Err(crate::Error::invalid(format!(
            "port {RESERVED_PREVIEW_PORT} is reserved for the sandbox's daemon and cannot be previewed"
        )));
    }
    if port < MIN_PREVIEW_PORT {
        return Err(crate::Error::invalid(format!(
            "preview port {port} is out of range: use {MIN_PREVIEW_PORT}-{MAX_PREVIEW_PORT}"
        )));
    }
    Ok(())
}

/// A published preview port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PublishedPreviewPort {
    /// The port inside the sandbox.
    pub port: u16,
    /// The version of its tokens (bumped by a rotation).
    #[serde(default, deserialize_with = "null_default")]
    pub token_version: u64,
    /// Who may reach it (`public` or `private`).
    pub access: PreviewAccess,
}

/// A sandbox's preview policy and its published ports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PreviewPortList {
    /// The sandbox's default for new ports (`legacy_public` when the server omits it).
    #[serde(default = "legacy_public", deserialize_with = "preview_or_legacy")]
    pub preview_access: PreviewAccess,
    /// The published ports (tokens are never listed).
    #[serde(default, deserialize_with = "null_default")]
    pub ports: Vec<PublishedPreviewPort>,
}

fn legacy_public() -> PreviewAccess {
    PreviewAccess::LegacyPublic
}

fn preview_or_legacy<'de, D: serde::Deserializer<'de>>(d: D) -> Result<PreviewAccess, D::Error> {
    Ok(Option::<PreviewAccess>::deserialize(d)?.unwrap_or(PreviewAccess::LegacyPublic))
}

/// A credential for a private preview port: send `header: token` with each request, or put
/// `query_param=token` in a link (the edge swaps it for a cookie). `Debug` hides the token.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PreviewToken {
    /// The token (a secret: never logged by this crate).
    pub token: String,
    /// The port it opens.
    pub port: u16,
    /// The header to send it in (`X-Superserve-Preview-Token` today: use this field).
    pub header: String,
    /// The query parameter for links (`superserve_preview_token` today: use this field).
    pub query_param: String,
    /// The port's token version it belongs to.
    #[serde(default, deserialize_with = "null_default")]
    pub token_version: u64,
    /// The port's access mode.
    pub access: PreviewAccess,
    /// The sandbox's preview policy.
    #[serde(default = "legacy_public", deserialize_with = "preview_or_legacy")]
    pub preview_access: PreviewAccess,
    /// When it stops working (`None`: until the port's tokens are rotated or it is unpublished).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
}

impl fmt::Debug for PreviewToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PreviewToken")
            .field("token", &"<redacted>")
            .field("port", &self.port)
            .field("header", &self.header)
            .field("query_param", &self.query_param)
            .field("token_version", &self.token_version)
            .field("access", &self.access)
            .field("preview_access", &self.preview_access)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_and_tokens() {
        assert!(check_preview_port(8000).is_ok());
        assert!(check_preview_port(65535).is_ok());
        assert!(check_preview_port(1023).is_err());
        assert!(check_preview_port(RESERVED_PREVIEW_PORT).is_err());
        let t: PreviewToken = serde_json::from_str(
            r#"{"token":"spv1.secret","port":8000,"header":"X-Superserve-Preview-Token",
                "query_param":"superserve_preview_token","token_version":2,"access":"private",
                "preview_access":"private","expires_at":null}"#,
        )
        .unwrap();
        assert_eq!(t.token_version, 2);
        assert!(!format!("{t:?}").contains("spv1.secret"));
        let l: PreviewPortList = serde_json::from_str(r#"{"ports":null}"#).unwrap();
        assert_eq!(l.preview_access, PreviewAccess::LegacyPublic);
        assert!(l.ports.is_empty());
    }
}
