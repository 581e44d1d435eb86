//! Typed models of the API's JSON (protocol §8), shared by both flavours.
//!
//! Server enums keep an `Unknown(String)` variant: a value this version does not know is never a
//! decode error. Optional fields the server may send as `null` are treated like absent ones.

mod command;
mod desktop;
mod network;
mod preview;
mod sandbox;
mod secret;
mod snapshot;
mod template;

pub use command::{CommandResult, ExecEvent, Signal};
pub(crate) use desktop::{check_resize, decode_screenshot, decode_step};
pub use desktop::{
    DesktopAction, ImageFormat, KeyChord, MouseButton, Screenshot, StepOptions, StepResult,
    StepTimings,
};
pub use network::{NetworkConfig, NetworkEvent, NetworkEventKind, NetworkLogPage, NetworkVerdict};
pub(crate) use preview::check_preview_port;
pub use preview::{
    PreviewPortList, PreviewToken, PublishedPreviewPort, DESKTOP_STREAM_PORT, MAX_PREVIEW_PORT,
    MIN_PREVIEW_PORT, RESERVED_PREVIEW_PORT,
};
pub(crate) use sandbox::SandboxTokens;
pub use sandbox::{
    PreviewAccess, PreviewAccessPolicy, SandboxInfo, SandboxSecretBinding, SandboxStatus,
};
pub use secret::{
    ProviderShortcut, ProxyAuditEvent, SecretAuthType, SecretInfo, SecretSandboxBinding,
};
pub use snapshot::{SnapshotInfo, SnapshotKind, SnapshotResources, SnapshotStatus};
pub use template::{
    BuildLogEvent, BuildLogStream, BuildStep, TemplateBuildInfo, TemplateBuildStatus, TemplateInfo,
    TemplateStatus,
};

use std::fmt;
use std::time::SystemTime;

use serde::{Deserialize, Deserializer, Serialize};

/// Declares a string enum with an `Unknown(String)` fallback, serde, `as_str` and `Display`.
macro_rules! string_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $variant:ident = $wire:literal,)+ }) => {
        $(#[$m])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum $name {
            $($(#[$vm])* $variant,)+
            /// A value this version of the crate does not know (kept verbatim).
            Unknown(String),
        }

        impl $name {
            /// The wire string.
            pub fn as_str(&self) -> &str {
                match self {
                    $($name::$variant => $wire,)+
                    $name::Unknown(s) => s,
                }
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                match s {
                    $($wire => $name::$variant,)+
                    other => $name::Unknown(other.to_owned()),
                }
            }
        }

        impl std::str::FromStr for $name {
            type Err = std::convert::Infallible;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Ok($name::from(s))
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Ok($name::from(s.as_str()))
            }
        }
    };
}
pub(crate) use string_enum;

/// Deserializes `null` as the type's default (for fields the converters default).
pub(crate) fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// An RFC 3339 timestamp as the server sent it (`2026-01-02T03:04:05.123Z`).
///
/// Kept verbatim; converts to and from [`SystemTime`].
///
/// ```
/// use std::time::{Duration, SystemTime, UNIX_EPOCH};
/// use superserve::Timestamp;
///
/// let t = Timestamp::from("2026-01-02T03:04:05Z");
/// let st = SystemTime::try_from(&t).unwrap();
/// assert_eq!(st.duration_since(UNIX_EPOCH).unwrap().as_secs(), 1_767_323_045);
///
/// let back = Timestamp::from(UNIX_EPOCH + Duration::from_millis(1_500));
/// assert_eq!(back.as_str(), "1970-01-01T00:00:01.5Z");
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(String);

impl Timestamp {
    /// The timestamp text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Parses the timestamp; `None` if it is not valid RFC 3339.
    pub fn to_system_time(&self) -> Option<SystemTime> {
        parse_rfc3339(&self.0)
    }

    /// Formats a time as RFC 3339 UTC (`...Z`, with the fraction of a second when there is
    /// one).
    pub fn from_system_time(t: SystemTime) -> Timestamp {
        Timestamp(format_rfc3339(t))
    }
}

impl From<&str> for Timestamp {
    fn from(s: &str) -> Self {
        Timestamp(s.to_owned())
    }
}

impl From<String> for Timestamp {
    fn from(s: String) -> Self {
        Timestamp(s)
    }
}

impl From<SystemTime> for Timestamp {
    fn from(t: SystemTime) -> Self {
        Timestamp::from_system_time(t)
    }
}

impl TryFrom<&Timestamp> for SystemTime {
    type Error = crate::Error;

    /// Fails with [`Error::InvalidInput`](crate::Error::InvalidInput) when the text is not RFC
    /// 3339.
    fn try_from(t: &Timestamp) -> Result<SystemTime, crate::Error> {
        t.to_system_time()
            .ok_or_else(|| crate::Error::invalid(format!("{:?} is not an RFC 3339 time", t.0)))
    }
}

impl TryFrom<Timestamp> for SystemTime {
    type Error = crate::Error;

    /// Fails with [`Error::InvalidInput`](crate::Error::InvalidInput) when the text is not RFC
    /// 3339.
    fn try_from(t: Timestamp) -> Result<SystemTime, crate::Error> {
        SystemTime::try_from(&t)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// Parses RFC 3339 (`Z` or a numeric offset, optional fraction).
pub(crate) fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let t = time::OffsetDateTime::parse(s.trim(), &time::format_description::well_known::Rfc3339)
        .ok()?;
    Some(t.into())
}

/// RFC 3339 in UTC with a trimmed fraction (Go's `RFC3339Nano`): `2026-05-01T12:00:00.5Z`.
pub(crate) fn format_rfc3339(t: SystemTime) -> String {
    let t = time::OffsetDateTime::from(t);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trip() {
        let t = Timestamp::from("2026-11-28T15:04:05.5+01:00");
        let st = t.to_system_time().unwrap();
        let back = Timestamp::from_system_time(st);
        assert_eq!(back.as_str(), "2026-11-28T14:04:05.5Z");
        assert_eq!(back.to_system_time(), Some(st));
        assert!(Timestamp::from("2026-13-01T00:00:00Z")
            .to_system_time()
            .is_none());
        assert!(Timestamp::from("yesterday").to_system_time().is_none());
        assert!(Timestamp::from("2026-01-01T00:00:00")
            .to_system_time()
            .is_none());
        assert!(SystemTime::try_from(Timestamp::from("nope")).is_err());
        let ns = Timestamp::from("2026-05-01T12:34:56.123456789Z");
        assert_eq!(
            Timestamp::from(ns.to_system_time().unwrap()).as_str(),
            "2026-05-01T12:34:56.123456789Z"
        );
    }
}
