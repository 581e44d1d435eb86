use serde::{Deserialize, Serialize};

use super::{null_default, string_enum, Timestamp};

/// Egress rules of a sandbox.
///
/// `allow_out` takes CIDRs and domain patterns (`*.example.com` matches subdomains only);
/// `deny_out` takes CIDRs (`0.0.0.0/0` denies everything). Allow wins over deny. Private,
/// loopback and link-local destinations are always blocked.
///
/// ```
/// let net = superserve::NetworkConfig::new()
///     .allow_out(["api.openai.com", "*.github.com"])
///     .deny_out(["0.0.0.0/0"]);
/// assert_eq!(
///     serde_json::to_string(&net).unwrap(),
///     r#"{"allow_out":["api.openai.com","*.github.com"],"deny_out":["0.0.0.0/0"]}"#
/// );
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct NetworkConfig {
    /// Allowed destinations (sent as `null` when unset).
    #[serde(default)]
    pub allow_out: Option<Vec<String>>,
    /// Denied destinations (sent as `null` when unset).
    #[serde(default)]
    pub deny_out: Option<Vec<String>>,
}

impl NetworkConfig {
    /// No rules.
    pub fn new() -> Self {
        NetworkConfig::default()
    }
    /// Sets the allow list.
    #[must_use]
    pub fn allow_out<I, S>(mut self, rules: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.allow_out = Some(rules.into_iter().map(Into::into).collect());
        self
    }
    /// Sets the deny list.
    #[must_use]
    pub fn deny_out<I, S>(mut self, rules: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.deny_out = Some(rules.into_iter().map(Into::into).collect());
        self
    }
}

string_enum! {
    /// Outcome of an outbound connection.
    NetworkVerdict {
        /// Let through.
        Allowed = "allowed",
        /// Refused by a rule.
        Blocked = "blocked",
        /// Allowed but the connection failed.
        Failed = "failed",
    }
}

string_enum! {
    /// Kind of a network-log row.
    NetworkEventKind {
        /// An outbound connection.
        Connection = "connection",
        /// A secret-bearing HTTP request.
        Request = "request",
    }
}

/// One row of a sandbox's network log.
///
/// Connection rows fill `dst_ip`..`bytes_recv`; request rows (secret-bearing requests) fill
/// `method`..`error_code`. Fields that do not apply are `None`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct NetworkEvent {
    /// Row kind.
    pub kind: NetworkEventKind,
    /// Row id.
    pub id: i64,
    /// When it happened.
    pub ts: Timestamp,
    /// Destination host name, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Destination IP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst_ip: Option<String>,
    /// Destination port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst_port: Option<u16>,
    /// Verdict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<NetworkVerdict>,
    /// The rule that blocked the connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_rule: Option<String>,
    /// Bytes sent by the sandbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_sent: Option<u64>,
    /// Bytes received by the sandbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_recv: Option<u64>,
    /// HTTP method (request rows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// HTTP path (request rows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Status returned to the sandbox (request rows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Status the upstream answered (request rows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_status: Option<u16>,
    /// Added latency in milliseconds (request rows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u64>,
    /// Secret used (request rows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_id: Option<String>,
    /// Error code, when the request failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
}

/// One page of a network log, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct NetworkLogPage {
    /// The rows (wire name `data`).
    #[serde(rename = "data", default, deserialize_with = "null_default")]
    pub events: Vec<NetworkEvent>,
    /// Cursor for the next (older) page.
    #[serde(default)]
    pub next_cursor: Option<String>,
    /// Whether older rows exist.
    #[serde(default, deserialize_with = "null_default")]
    pub has_more: bool,
}
