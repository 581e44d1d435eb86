//! Routing-hint expiry (protocol §1.6): `v1.<base64url(JSON {"e": unix seconds, ...})>.<sig>`.

use std::time::{SystemTime, UNIX_EPOCH};

/// The expiry (unix seconds) a hint carries; `None` when it carries none or cannot be read.
pub(crate) fn expiry(hint: &str) -> Option<f64> {
    let payload = hint.split('.').nth(1)?;
    let json = super::base64_decode(payload.as_bytes())?;
    serde_json::from_slice::<serde_json::Value>(&json)
        .ok()?
        .get("e")?
        .as_f64()
}

/// `true` once `expires` (unix seconds) is at or before now.
pub(crate) fn is_past(expires: f64) -> bool {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    expires <= now
}

/// `true` when the hint carries an expiry at or before now. Unparsable hints are not expired.
#[cfg(test)]
pub(crate) fn is_expired(hint: &str) -> bool {
    expiry(hint).is_some_and(is_past)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry() {
        // {"e":1} and {"e":99999999999}
        assert!(is_expired("v1.eyJlIjoxfQ.sig"));
        assert!(!is_expired("v1.eyJlIjo5OTk5OTk5OTk5OX0.sig"));
        assert!(!is_expired("garbage"));
        assert!(!is_expired("v1.!!!.x"));
    }
}
