//! Typed models of the API's JSON (protocol §8), shared by both flavours.
//!
//! Server enums keep an `Unknown(String)` variant: a value this version does not know is never a
//! decode error. Optional fields the server may send as `null` are treated like absent ones.

mod command;
mod network;
mod sandbox;
mod secret;

pub use command::CommandResult;
pub use network::{NetworkConfig, NetworkEvent, NetworkEventKind, NetworkLogPage, NetworkVerdict};
pub(crate) use sandbox::SandboxTokens;
pub use sandbox::{
    PreviewAccess, PreviewAccessPolicy, SandboxInfo, SandboxSecretBinding, SandboxStatus,
};
pub use secret::{
    ProviderShortcut, ProxyAuditEvent, SecretAuthType, SecretInfo, SecretSandboxBinding,
};

use std::fmt;
use std::time::{Duration, SystemTime};

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
/// Kept verbatim; [`Timestamp::to_system_time`] converts it.
///
/// ```
/// let t = superserve::Timestamp::from("2026-01-02T03:04:05Z");
/// let secs = t.to_system_time().unwrap()
///     .duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
/// assert_eq!(secs, 1_767_323_045);
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

    /// Formats a time as RFC 3339 UTC with nanoseconds (`...Z`).
    pub fn from_system_time(t: SystemTime) -> Timestamp {
        let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        let secs = d.as_secs() as i64;
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400);
        let (y, m, dd) = civil_from_days(days);
        Timestamp(format!(
            "{y:04}-{m:02}-{dd:02}T{:02}:{:02}:{:02}.{:09}Z",
            rem / 3600,
            (rem / 60) % 60,
            rem % 60,
            d.subsec_nanos()
        ))
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

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
pub(crate) fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

pub(crate) fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Unix seconds of a civil UTC date-time, with range checks.
pub(crate) fn unix_from_civil(y: i64, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> Option<i64> {
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    Some(days_from_civil(y, mo, d) * 86_400 + (h * 3600 + mi * 60 + s) as i64)
}

fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        let t = s.get(r)?;
        if t.bytes().all(|c| c.is_ascii_digit()) {
            t.parse().ok()
        } else {
            None
        }
    };
    let (y, mo, d) = (num(0..4)? as i64, num(5..7)?, num(8..10)?);
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut i = 19;
    let mut nanos: u64 = 0;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            if i - start < 9 {
                nanos = nanos * 10 + u64::from(b[i] - b'0');
            }
            i += 1;
        }
        if i == start {
            return None;
        }
        for _ in (i - start).min(9)..9 {
            nanos *= 10;
        }
    }
    let offset: i64 = match b.get(i)? {
        b'Z' | b'z' if i + 1 == b.len() => 0,
        sign @ (b'+' | b'-') if b.len() == i + 6 && b[i + 3] == b':' => {
            let oh = num(i + 1..i + 3)? as i64;
            let om = num(i + 4..i + 6)? as i64;
            let o = oh * 3600 + om * 60;
            if *sign == b'+' {
                o
            } else {
                -o
            }
        }
        _ => return None,
    };
    let secs = unix_from_civil(y, mo, d, h, mi, sec)? - offset;
    let secs = u64::try_from(secs).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_nanos(nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trip() {
        let t = Timestamp::from("2026-11-28T15:04:05.5+01:00");
        let st = t.to_system_time().unwrap();
        let back = Timestamp::from_system_time(st);
        assert_eq!(back.as_str(), "2026-11-28T14:04:05.500000000Z");
        assert_eq!(back.to_system_time(), Some(st));
        assert!(Timestamp::from("2026-13-01T00:00:00Z")
            .to_system_time()
            .is_none());
        assert!(Timestamp::from("yesterday").to_system_time().is_none());
        assert!(Timestamp::from("2026-01-01T00:00:00")
            .to_system_time()
            .is_none());
    }
}
