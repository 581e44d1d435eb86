//! Unix-nanosecond timestamps and their RFC 3339 form (always UTC, `Z`), through the same
//! `time`-crate functions the SDK's models use.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::models::{format_rfc3339 as format_system_time, parse_rfc3339 as parse_system_time};

/// Now, in nanoseconds since the Unix epoch.
pub(crate) fn now_ns() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(_) => 0,
    }
}

fn system_time(ns: i64) -> SystemTime {
    let abs = Duration::from_nanos(ns.unsigned_abs());
    if ns >= 0 {
        UNIX_EPOCH + abs
    } else {
        UNIX_EPOCH - abs
    }
}

/// Broken-down UTC time: (year, month, day, hour, minute, second).
pub(crate) fn utc_parts(secs: i64) -> (i64, u32, u32, u32, u32, u32) {
    // Out of range (beyond ±9999 years): the nearest representable time.
    let t = time::OffsetDateTime::from_unix_timestamp(secs).unwrap_or(if secs > 0 {
        time::PrimitiveDateTime::MAX.assume_utc()
    } else {
        time::PrimitiveDateTime::MIN.assume_utc()
    });
    (
        i64::from(t.year()),
        u32::from(u8::from(t.month())),
        u32::from(t.day()),
        u32::from(t.hour()),
        u32::from(t.minute()),
        u32::from(t.second()),
    )
}

/// RFC 3339 with nanoseconds, trailing zeros trimmed (Go's `RFC3339Nano`), e.g.
/// `2026-05-01T12:00:00.5Z`.
pub(crate) fn format_rfc3339(ns: i64) -> String {
    format_system_time(system_time(ns))
}

/// Parses an RFC 3339 timestamp (`Z` or `±hh:mm` offset, optional fraction) into Unix
/// nanoseconds.
pub(crate) fn parse_rfc3339(s: &str) -> Option<i64> {
    let t = parse_system_time(s)?;
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).ok(),
        Err(e) => i64::try_from(e.duration().as_nanos()).ok().map(|n| -n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let ns = parse_rfc3339("2026-05-01T12:34:56.123456789Z").unwrap_or_default();
        assert_eq!(format_rfc3339(ns), "2026-05-01T12:34:56.123456789Z");
        let ns = parse_rfc3339("2024-02-29T00:00:00Z").unwrap_or_default();
        assert_eq!(format_rfc3339(ns), "2024-02-29T00:00:00Z");
        assert_eq!(format_rfc3339(500_000_000), "1970-01-01T00:00:00.5Z");
        assert_eq!(parse_rfc3339("1970-01-01T01:00:00+01:00"), Some(0));
        assert_eq!(parse_rfc3339("1969-12-31T23:59:59Z"), Some(-1_000_000_000));
        assert_eq!(parse_rfc3339("2026-13-01T00:00:00Z"), None);
        assert_eq!(parse_rfc3339("yesterday"), None);
        assert_eq!(parse_rfc3339("2026-01-01T00:00:00"), None);
    }
}
