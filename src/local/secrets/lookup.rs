//! What the egress broker asks of the secrets: a secret's value by name, the header(s) that
//! carry it to a host, and the audit log of secret-bearing requests.

use std::sync::Arc;

use serde_json::Value;

use super::super::domain::domain_matches;
use super::super::store::StoreError;
use super::vault::{AuditRow, SecretRecord, Vault};

/// The broker's view of the secrets.
#[derive(Clone, Debug)]
pub(crate) struct SecretLookup {
    vault: Arc<Vault>,
}

impl SecretLookup {
    /// Lookups in `vault`.
    pub(crate) fn new(vault: Arc<Vault>) -> SecretLookup {
        SecretLookup { vault }
    }

    /// The record and plaintext value of the secret `name` (`Ok(None)`: no such secret; a
    /// value that cannot be decrypted is an error).
    pub(crate) async fn resolve(
        &self,
        name: &str,
    ) -> Result<Option<(SecretRecord, String)>, StoreError> {
        self.vault.open_value(name).await
    }

    /// Appends an audit event (and marks the secret used).
    pub(crate) async fn record_audit(&self, row: AuditRow) -> Result<i64, StoreError> {
        self.vault.record_audit(row).await
    }
}

/// Standard base64 with padding (HTTP basic credentials).
fn base64(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(data)
}

fn render_rule(rule: &Value, value: &str) -> Vec<(String, String)> {
    let s = |k: &str| rule.get(k).and_then(Value::as_str).unwrap_or_default();
    match s("type") {
        "bearer" => vec![(
            if s("header").is_empty() {
                "Authorization".into()
            } else {
                s("header").into()
            },
            format!(
                "{}{value}",
                rule.get("prefix")
                    .and_then(Value::as_str)
                    .unwrap_or("Bearer ")
            ),
        )],
        "api-key" => vec![(s("header").into(), format!("{}{value}", s("prefix")))],
        "basic" => vec![(
            "Authorization".into(),
            format!(
                "Basic {}",
                base64(format!("{}:{value}", s("username")).as_bytes())
            ),
        )],
        "custom" => rule
            .get("headers")
            .and_then(Value::as_object)
            .map(|h| {
                h.iter()
                    .filter_map(|(k, t)| {
                        let t = t.as_str()?;
                        Some((
                            k.clone(),
                            t.replace("{{ value }}", value).replace("{{value}}", value),
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}

/// The header(s) carrying the credential on a request to `host`; `None` if the secret does
/// not cover `host`.
pub(crate) fn render_headers(
    rec: &SecretRecord,
    host: &str,
    value: &str,
) -> Option<Vec<(String, String)>> {
    if !rec.hosts.iter().any(|p| domain_matches(p, host)) {
        return None;
    }
    if let Some(rules) = rec.auth_config.get("per_host").and_then(Value::as_array) {
        let rule = rules.iter().find(|r| {
            r.get("hosts").and_then(Value::as_array).is_some_and(|hs| {
                hs.iter()
                    .filter_map(Value::as_str)
                    .any(|p| domain_matches(p, host))
            })
        })?;
        return Some(render_rule(rule, value));
    }
    Some(render_rule(&rec.auth_config, value)).filter(|h| !h.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rec(auth: Value, hosts: &[&str]) -> SecretRecord {
        SecretRecord {
            id: "id".into(),
            name: "n".into(),
            auth_type: auth
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or("per_host")
                .into(),
            auth_config: auth,
            provider: None,
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            created_ns: 0,
            updated_ns: 0,
            last_used_ns: None,
        }
    }

    #[test]
    fn rendering_every_shape() {
        let r = rec(
            json!({"type":"bearer","header":"Authorization","prefix":"Bearer "}),
            &["api.x.com"],
        );
        assert_eq!(
            render_headers(&r, "api.x.com", "v1"),
            Some(vec![("Authorization".into(), "Bearer v1".into())])
        );
        assert_eq!(render_headers(&r, "evil.com", "v1"), None);
        let r = rec(
            json!({"type":"api-key","header":"x-api-key","prefix":"k-"}),
            &["*.x.com"],
        );
        assert_eq!(
            render_headers(&r, "a.x.com", "v"),
            Some(vec![("x-api-key".into(), "k-v".into())])
        );
        assert_eq!(
            render_headers(&r, "x.com", "v"),
            None,
            "wildcards skip the apex"
        );
        let r = rec(json!({"type":"basic","username":"user"}), &["x.com"]);
        assert_eq!(
            render_headers(&r, "x.com", "pass"),
            Some(vec![("Authorization".into(), "Basic dXNlcjpwYXNz".into())])
        );
        let r = rec(
            json!({"type":"custom","headers":{"X-A":"t={{ value }}","X-B":"{{value}}!"}}),
            &["x.com"],
        );
        assert_eq!(
            render_headers(&r, "x.com", "v"),
            Some(vec![
                ("X-A".into(), "t=v".into()),
                ("X-B".into(), "v!".into())
            ])
        );
        let r = rec(
            json!({"per_host":[{"type":"bearer","prefix":"Bearer ","hosts":["a.com"]},{"type":"api-key","header":"K","prefix":"","hosts":["b.com"]}]}),
            &["a.com", "b.com"],
        );
        assert_eq!(
            render_headers(&r, "b.com", "v"),
            Some(vec![("K".into(), "v".into())])
        );
        assert_eq!(base64(b"a"), "YQ==");
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(base64(b"abc"), "YWJj");
    }
}
