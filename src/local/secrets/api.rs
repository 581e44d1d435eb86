//! The secrets API's logic (protocol.md §3.7): request bodies, validation of names, values,
//! hosts and auth rules, the provider catalog, and the operations behind the handlers.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::super::error::ApiError;
use super::super::ident::uuid_v4;
use super::super::time::{format_rfc3339, now_ns};
use super::vault::{AuditQuery, SecretRecord, Vault};

/// Longest accepted secret value.
const MAX_VALUE: usize = 16 * 1024;

impl SecretRecord {
    /// The `SecretInfo` JSON object.
    pub(crate) fn view(&self) -> Value {
        json!({
            "id": self.id,
            "name": self.name,
            "auth_type": self.auth_type,
            "auth_config": self.auth_config,
            "provider_shortcut": self.provider,
            "hosts": self.hosts,
            "created_at": format_rfc3339(self.created_ns),
            "updated_at": format_rfc3339(self.updated_ns),
            "last_used_at": self.last_used_ns.map(format_rfc3339),
        })
    }
}

/// A built-in provider shortcut.
pub(crate) struct Provider {
    name: &'static str,
    display: &'static str,
    auth: fn() -> Value,
    hosts: &'static [&'static str],
    token_shape: &'static str,
}

impl Provider {
    fn view(&self) -> Value {
        let auth = (self.auth)();
        json!({
            "name": self.name,
            "display": self.display,
            "auth_type": auth["type"],
            "auth_config": auth,
            "hosts": self.hosts,
            "token_shape": self.token_shape,
        })
    }
}

/// The provider catalog, in catalog order.
pub(crate) fn providers() -> &'static [Provider] {
    &[
        Provider {
            name: "openai",
            display: "OpenAI",
            auth: || json!({"type": "bearer", "header": "Authorization", "prefix": "Bearer "}),
            hosts: &["api.openai.com"],
            token_shape: "sk-proj-…",
        },
        Provider {
            name: "anthropic",
            display: "Anthropic",
            auth: || json!({"type": "api-key", "header": "x-api-key", "prefix": ""}),
            hosts: &["api.anthropic.com"],
            token_shape: "sk-ant-…",
        },
        Provider {
            name: "github",
            display: "GitHub",
            auth: || json!({"type": "bearer", "header": "Authorization", "prefix": "Bearer "}),
            hosts: &["api.github.com"],
            token_shape: "ghp_…",
        },
    ]
}

/// `GET /providers` body.
pub(crate) fn providers_view() -> Value {
    Value::Array(providers().iter().map(Provider::view).collect())
}

/// `POST /secrets` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateBody {
    pub name: Option<String>,
    pub value: Option<String>,
    #[serde(default)]
    pub provider: Option<String>,
    #[serde(default)]
    pub auth: Option<Value>,
    #[serde(default)]
    pub hosts: Option<Vec<String>>,
}

/// `PATCH /secrets/{name}` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RotateBody {
    pub value: Option<String>,
}

fn validate_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "secret name {name:?} is invalid: 1-64 characters, letters, digits, '_', '.', '-', \
             starting with a letter or digit"
        ))
    }
}

fn validate_value(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("value is required".into());
    }
    if value.len() > MAX_VALUE {
        return Err(format!("value is longer than {MAX_VALUE} bytes"));
    }
    if value.chars().any(char::is_control) {
        return Err("value must not contain control characters".into());
    }
    Ok(())
}

/// A host pattern: a lower-case DNS name, optionally `*.` + at least two labels.
fn validate_host(h: &str) -> Result<(), String> {
    let bad = || {
        Err(format!(
            "host {h:?} is not a valid host name or *.domain pattern"
        ))
    };
    let (wild, name) = match h.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, h),
    };
    if name.is_empty() || name.len() > 253 {
        return bad();
    }
    let labels: Vec<&str> = name.split('.').collect();
    let label_ok = |l: &&str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    if !labels.iter().all(label_ok) {
        return bad();
    }
    if wild && labels.len() < 2 {
        return Err(format!(
            "host {h:?}: a wildcard needs a domain below the top level (e.g. *.example.com)"
        ));
    }
    Ok(())
}

fn validate_hosts(hosts: &[String]) -> Result<(), String> {
    if hosts.is_empty() {
        return Err("hosts must name at least one host".into());
    }
    hosts.iter().try_for_each(|h| validate_host(h))
}

fn header_name_ok(h: &str) -> bool {
    !h.is_empty()
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn str_field<'a>(rule: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>, String> {
    match rule.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(format!("auth.{key} must be a string")),
    }
}

/// Normalises one (non per-host) rule: fills defaults, checks required fields.
fn normalize_rule(rule: &Value) -> Result<Map<String, Value>, String> {
    let Value::Object(r) = rule else {
        return Err("auth must be an object".into());
    };
    let ty = str_field(r, "type")?.ok_or("auth.type is required")?;
    let header = str_field(r, "header")?;
    let prefix = str_field(r, "prefix")?;
    if let Some(h) = header {
        if !header_name_ok(h) {
            return Err(format!("auth.header {h:?} is not a valid header name"));
        }
    }
    if prefix.is_some_and(|p| p.chars().any(char::is_control)) {
        return Err("auth.prefix must not contain control characters".into());
    }
    let mut out = Map::new();
    out.insert("type".into(), json!(ty));
    match ty {
        "bearer" => {
            out.insert("header".into(), json!(header.unwrap_or("Authorization")));
            out.insert("prefix".into(), json!(prefix.unwrap_or("Bearer ")));
        }
        "api-key" => {
            let h = header.ok_or("auth.header is required for api-key")?;
            out.insert("header".into(), json!(h));
            out.insert("prefix".into(), json!(prefix.unwrap_or("")));
        }
        "basic" => {
            let u = str_field(r, "username")?.ok_or("auth.username is required for basic")?;
            if u.contains(':') || u.chars().any(char::is_control) {
                return Err("auth.username must not contain ':' or control characters".into());
            }
            out.insert("username".into(), json!(u));
        }
        "custom" => {
            let Some(Value::Object(headers)) = r.get("headers") else {
                return Err(
                    "auth.headers (an object of header templates) is required for custom".into(),
                );
            };
            if headers.is_empty() {
                return Err("auth.headers must name at least one header".into());
            }
            for (k, v) in headers {
                let Value::String(t) = v else {
                    return Err(format!("auth.headers.{k} must be a string"));
                };
                if !header_name_ok(k) {
                    return Err(format!("auth.headers: {k:?} is not a valid header name"));
                }
                if !(t.contains("{{ value }}") || t.contains("{{value}}")) {
                    return Err(format!("auth.headers.{k} must contain {{{{ value }}}}"));
                }
            }
            out.insert("headers".into(), Value::Object(headers.clone()));
        }
        other => {
            return Err(format!(
                "auth.type {other:?} is not one of bearer, api-key, basic, custom"
            ))
        }
    }
    Ok(out)
}

/// Validates a create body: (auth_type, auth_config, provider, hosts).
fn validate_create(b: &CreateBody) -> Result<(String, Value, Option<String>, Vec<String>), String> {
    if let Some(p) = &b.provider {
        if b.auth.is_some() || b.hosts.is_some() {
            return Err("provider cannot be combined with auth or hosts".into());
        }
        let known = providers();
        let Some(prov) = known.iter().find(|k| k.name == p) else {
            let names: Vec<&str> = known.iter().map(|k| k.name).collect();
            return Err(format!(
                "unknown provider {p:?} (known: {})",
                names.join(", ")
            ));
        };
        let auth = (prov.auth)();
        let ty = auth["type"].as_str().unwrap_or("bearer").to_owned();
        return Ok((
            ty,
            auth,
            Some(p.clone()),
            prov.hosts.iter().map(|h| (*h).to_owned()).collect(),
        ));
    }
    let auth = b
        .auth
        .as_ref()
        .ok_or("either provider or auth and hosts are required")?;
    if let Some(rules) = auth.get("per_host") {
        let Value::Array(rules) = rules else {
            return Err("auth.per_host must be an array".into());
        };
        if rules.is_empty() {
            return Err("auth.per_host must hold at least one rule".into());
        }
        let mut all_hosts: Vec<String> = Vec::new();
        let mut out = Vec::new();
        for rule in rules {
            let mut r = normalize_rule(rule)?;
            let hosts: Vec<String> = match rule.get("hosts") {
                Some(Value::Array(h)) => h
                    .iter()
                    .map(|v| v.as_str().map(str::to_owned).ok_or("hosts must be strings"))
                    .collect::<Result<_, _>>()?,
                _ => return Err("every auth.per_host rule needs hosts".into()),
            };
            validate_hosts(&hosts)?;
            for h in &hosts {
                if !all_hosts.contains(h) {
                    all_hosts.push(h.clone());
                }
            }
            r.insert("hosts".into(), json!(hosts));
            out.push(Value::Object(r));
        }
        if let Some(top) = &b.hosts {
            validate_hosts(top)?;
            if let Some(h) = top.iter().find(|h| !all_hosts.contains(h)) {
                return Err(format!("host {h:?} has no auth.per_host rule"));
            }
        }
        return Ok(("per_host".into(), json!({"per_host": out}), None, all_hosts));
    }
    let rule = normalize_rule(auth)?;
    let hosts = b.hosts.clone().ok_or("hosts are required with auth")?;
    validate_hosts(&hosts)?;
    let ty = rule["type"].as_str().unwrap_or_default().to_owned();
    Ok((ty, Value::Object(rule), None, hosts))
}

/// Parses the audit query string.
pub(crate) fn parse_audit_query(pairs: Vec<(String, String)>) -> Result<AuditQuery, String> {
    let mut q = AuditQuery {
        limit: 50,
        ..Default::default()
    };
    for (k, v) in pairs {
        match k.as_str() {
            "limit" => {
                q.limit = v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=1000).contains(n))
                    .ok_or_else(|| {
                        format!("limit must be an integer between 1 and 1000, got {v:?}")
                    })?;
            }
            "before" => {
                q.before = Some(
                    v.parse()
                        .map_err(|_| format!("before must be an event id, got {v:?}"))?,
                );
            }
            "status" => match v.as_str() {
                "2xx" | "3xx" | "4xx" | "5xx" | "errors" => q.status = Some(v),
                _ => {
                    return Err(format!(
                        "status must be one of 2xx, 3xx, 4xx, 5xx, errors, got {v:?}"
                    ))
                }
            },
            other => return Err(format!("unknown query parameter {other:?}")),
        }
    }
    Ok(q)
}

fn not_found(name: &str) -> ApiError {
    ApiError::not_found(format!("secret {name:?} not found"))
}

/// The secrets API.
pub(crate) struct Secrets {
    vault: Arc<Vault>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secrets").finish_non_exhaustive()
    }
}

impl Secrets {
    /// The API over `vault`.
    pub(crate) fn new(vault: Arc<Vault>) -> Secrets {
        Secrets { vault }
    }

    /// `POST /secrets`.
    pub(crate) async fn create(&self, b: CreateBody) -> Result<SecretRecord, ApiError> {
        let name = b.name.clone().unwrap_or_default();
        validate_name(&name).map_err(ApiError::bad_request)?;
        let value = b.value.clone().unwrap_or_default();
        validate_value(&value).map_err(ApiError::bad_request)?;
        let (auth_type, auth_config, provider, hosts) =
            validate_create(&b).map_err(ApiError::bad_request)?;
        let now = now_ns();
        let rec = SecretRecord {
            id: uuid_v4(),
            name,
            auth_type,
            auth_config,
            provider,
            hosts,
            created_ns: now,
            updated_ns: now,
            last_used_ns: None,
        };
        if !self.vault.insert(rec.clone(), &value).await? {
            return Err(ApiError::conflict(format!(
                "a secret named {:?} already exists",
                rec.name
            )));
        }
        Ok(rec)
    }

    /// `GET /secrets`, creation order.
    pub(crate) async fn list(&self) -> Result<Vec<SecretRecord>, ApiError> {
        Ok(self.vault.list().await?)
    }

    /// `GET /secrets/{name}`.
    pub(crate) async fn get(&self, name: &str) -> Result<SecretRecord, ApiError> {
        self.vault.get(name).await?.ok_or_else(|| not_found(name))
    }

    /// `PATCH /secrets/{name}`: a new value.
    pub(crate) async fn rotate(&self, name: &str, b: RotateBody) -> Result<SecretRecord, ApiError> {
        let value = b.value.unwrap_or_default();
        validate_value(&value).map_err(ApiError::bad_request)?;
        let mut rec = self.get(name).await?;
        rec.updated_ns = now_ns().max(rec.updated_ns + 1);
        if !self
            .vault
            .set_value(&rec.id, &value, rec.updated_ns)
            .await?
        {
            return Err(not_found(name));
        }
        Ok(rec)
    }

    /// `DELETE /secrets/{name}`.
    pub(crate) async fn delete(&self, name: &str) -> Result<(), ApiError> {
        if !self.vault.delete(name).await? {
            return Err(not_found(name));
        }
        Ok(())
    }

    /// `GET /secrets/{name}/audit`.
    pub(crate) async fn audit(&self, name: &str, q: AuditQuery) -> Result<Vec<Value>, ApiError> {
        let rec = self.get(name).await?;
        Ok(self.vault.audit(&rec.id, q).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(v: Value) -> CreateBody {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn create_validation() {
        let ok = |v: Value| validate_create(&body(v));
        let (ty, auth, prov, hosts) =
            ok(json!({"name":"a","value":"v","provider":"openai"})).unwrap();
        assert_eq!((ty.as_str(), prov.as_deref()), ("bearer", Some("openai")));
        assert_eq!(hosts, vec!["api.openai.com"]);
        assert_eq!(auth["header"], "Authorization");
        let (ty, auth, _, _) = ok(json!({"name":"a","value":"v","auth":{"type":"api-key","header":"X-Api-Key"},"hosts":["api.x.com"]})).unwrap();
        assert_eq!(ty, "api-key");
        assert_eq!(auth["prefix"], "");
        let (ty, auth, _, hosts) = ok(json!({"name":"a","value":"v","auth":{"per_host":[
            {"type":"bearer","hosts":["a.x.com"]},{"type":"basic","username":"u","hosts":["*.y.com"]}]}})).unwrap();
        assert_eq!(ty, "per_host");
        assert_eq!(hosts, vec!["a.x.com", "*.y.com"]);
        assert_eq!(auth["per_host"][1]["username"], "u");
        for bad in [
            json!({"name":"a","value":"v"}),
            json!({"name":"a","value":"v","provider":"nope"}),
            json!({"name":"a","value":"v","provider":"openai","hosts":["x.com"]}),
            json!({"name":"a","value":"v","auth":{"type":"bearer"}}),
            json!({"name":"a","value":"v","auth":{"type":"bearer"},"hosts":[]}),
            json!({"name":"a","value":"v","auth":{"type":"bearer"},"hosts":["*.com"]}),
            json!({"name":"a","value":"v","auth":{"type":"bearer"},"hosts":["Upper.com"]}),
            json!({"name":"a","value":"v","auth":{"type":"api-key"},"hosts":["x.com"]}),
            json!({"name":"a","value":"v","auth":{"type":"basic"},"hosts":["x.com"]}),
            json!({"name":"a","value":"v","auth":{"type":"custom","headers":{"X-K":"no template"}},"hosts":["x.com"]}),
            json!({"name":"a","value":"v","auth":{"type":"oauth"},"hosts":["x.com"]}),
            json!({"name":"a","value":"v","auth":{"type":"api-key","header":"bad header"},"hosts":["x.com"]}),
        ] {
            assert!(ok(bad.clone()).is_err(), "{bad}");
        }
        assert!(validate_name("ok-name_1.x").is_ok());
        assert!(validate_name("-bad").is_err());
        assert!(validate_name(&"x".repeat(65)).is_err());
        assert!(validate_value("").is_err());
        assert!(validate_value("a\r\nX-Evil: 1").is_err());
    }

    #[test]
    fn audit_query_parsing() {
        let p = |s: &[(&str, &str)]| {
            parse_audit_query(
                s.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )
        };
        let q = p(&[("limit", "10"), ("before", "99"), ("status", "errors")]).unwrap();
        assert_eq!(
            (q.limit, q.before, q.status.as_deref()),
            (10, Some(99), Some("errors"))
        );
        assert!(p(&[("limit", "0")]).is_err());
        assert!(p(&[("status", "6xx")]).is_err());
        assert!(p(&[("before", "x")]).is_err());
    }
}
