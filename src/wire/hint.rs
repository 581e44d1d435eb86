//! Routing-hint expiry (protocol §1.6): `v1.<base64url(JSON {"e": unix seconds, ...})>.<sig>`.

use std::time::{SystemTime, UNIX_EPOCH};

/// `true` when the hint carries an expiry at or before now. Unparsable hints are not expired.
pub(crate) fn is_expired(hint: &str) -> bool {
    let Some(payload) = hint.split('.').nth(1) else {
        return false;
    };
    let Some(json) = super::base64_decode(payload.as_bytes()) else {
        return false;
    };
    let Some(e) = serde_json::from_slice::<serde_json::Value>(&json)
        .ok()
        .and_then(|v| v.get("e").and_then(serde_json::Value::as_f64))
    else {
        return false;
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    e <= now
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
