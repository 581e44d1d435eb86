//! Brokered secrets at egress: HTTP (and intercepted HTTPS) to an address the sandbox resolved
//! for a host one of its secrets covers is relayed request by request. A request carrying a
//! binding's stand-in token gets the real credential in the secret's header(s) instead, and
//! is audited, only when the host it names (absolute target, else `Host`) is one the sandbox
//! resolved to this very address, is the TLS server name of the session (HTTPS), and is
//! covered by the secret; otherwise it is refused with `403 secret_host_mismatch`. A revoked
//! stand-in (detached binding, deleted secret) is refused with `403 secret_revoked`. Refusals
//! are audited too. Requests without a stand-in pass unchanged.
//!
//! Refusals and their codes are listed in the `superserve::local` module docs.

use std::convert::Infallible;
use std::sync::{Arc, Weak};
use std::time::Instant;

use axum::body::Body;
use axum::http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

use super::super::domain::{domain_matches, host_of_authority};
use super::super::model::Binding;
use super::super::secrets::{render_headers, AuditRow, SecretLookup};
use super::super::store::{self, Db, NetworkEventRow};
use super::super::time::now_ns;
use crate::wire::base64_decode;

/// Whether `host` is covered by a secret bound to the sandbox (live or revoked), so its plain
/// HTTP traffic goes through the broker.
pub(crate) fn covers(bindings: &[Binding], host: &str) -> bool {
    bindings
        .iter()
        .any(|b| b.hosts.iter().any(|p| domain_matches(p, host)))
}

/// Relays one connection request by request until either side closes.
pub(crate) async fn relay<C, U>(broker: Broker, client: C, upstream: U)
where
    C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    U: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Ok((sender, conn)) = hyper::client::conn::http1::handshake(TokioIo::new(upstream)).await
    else {
        return;
    };
    let upstream_task = tokio::spawn(conn);
    let sender = Arc::new(tokio::sync::Mutex::new(sender));
    let ctx = Arc::new(broker);
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let ctx = ctx.clone();
        let sender = sender.clone();
        async move { Ok::<_, Infallible>(ctx.handle(req, &sender).await) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(client), service)
        .await;
    upstream_task.abort();
}

/// Answers every request on an intercepted connection whose upstream could not be reached
/// over verified TLS with `502` (`upstream_tls_error`).
pub(crate) async fn refuse_tls<C>(client: C, host: &str)
where
    C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let message = format!("could not establish verified TLS to {host}");
    let service = hyper::service::service_fn(move |_req: Request<Incoming>| {
        let message = message.clone();
        async move {
            Ok::<_, Infallible>(
                error_response(StatusCode::BAD_GATEWAY, "upstream_tls_error", &message).0,
            )
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(client), service)
        .await;
}

/// The refusal for a stand-in sent to a host its secret does not cover.
const HOST_MISMATCH: (&str, &str) = (
    "secret_host_mismatch",
    "the secret is not valid for this host",
);

/// What the broker of one intercepted connection works with.
pub(crate) struct Broker {
    /// The network log.
    pub db: Db,
    /// Secret values and the audit log.
    pub secrets: SecretLookup,
    pub sandbox_id: String,
    /// The sandbox's rules and bindings (asked per request).
    pub policy: Weak<dyn super::policy::SandboxPolicy>,
    /// The names the sandbox resolved to the address this connection goes to.
    pub resolved: Vec<String>,
    /// The TLS server name of an intercepted HTTPS connection.
    pub sni: Option<String>,
}

/// What the audit records of a secret-bearing request.
struct AuditedRequest<'a> {
    host: &'a str,
    method: &'a str,
    path: &'a str,
}

/// How a secret-bearing request ended, for the audit log and the network log.
struct Outcome {
    status: u16,
    upstream_status: Option<u16>,
    error_code: Option<&'static str>,
}

impl Broker {
    async fn handle(
        &self,
        mut req: Request<Incoming>,
        sender: &tokio::sync::Mutex<hyper::client::conn::http1::SendRequest<Body>>,
    ) -> Response<Body> {
        let started = Instant::now();
        let bindings = self
            .policy
            .upgrade()
            .and_then(|p| p.rules())
            .map(|(_, b)| b)
            .unwrap_or_default();
        let Some(binding) = bindings.iter().find(|b| carries(&req, b)).cloned() else {
            return forward(sender, req.map(Body::new)).await.0;
        };
        let method = req.method().to_string();
        let path = req.uri().path().to_owned();
        let (named, host) = self.request_host(&req);
        let refusal = match &host {
            // it names a host this connection does not go to
            None => Some(HOST_MISMATCH),
            // a host no secret covers: the stand-in is worthless there
            Some(h) if !covers(&bindings, h) => {
                return forward(sender, req.map(Body::new)).await.0;
            }
            Some(_) if binding.detached || binding.revoked => {
                Some(("secret_revoked", "the secret binding was revoked"))
            }
            Some(h) if !binding.hosts.iter().any(|p| domain_matches(p, h)) => Some(HOST_MISMATCH),
            Some(_) => None,
        };
        let host = host.unwrap_or_default();
        let mut secret_id = binding.secret_id.clone();
        let (response, outcome) = match refusal {
            Some((code, message)) => refuse(code, message),
            None => match self.secrets.resolve(&binding.secret_name).await {
                Err(e) => {
                    // the message names the secret and the failure, never the value
                    eprintln!("superserve-local: secret {:?}: {e}", binding.secret_name);
                    error_response(
                        StatusCode::BAD_GATEWAY,
                        "secret_unavailable",
                        "the secret's value cannot be read by the backend",
                    )
                }
                Ok(None) => refuse("secret_revoked", "the secret no longer exists"),
                Ok(Some((secret, value))) => {
                    secret_id = secret.id.clone();
                    match render_headers(&secret, &host, &value)
                        .map(|headers| swap(&mut req, &binding, headers))
                    {
                        Some(Ok(())) => {
                            origin_form(&mut req);
                            forward(sender, req.map(Body::new)).await
                        }
                        Some(Err(())) => {
                            refuse("secret_invalid", "the secret cannot be sent in a header")
                        }
                        // no credential rule of the secret covers this host
                        None => refuse(HOST_MISMATCH.0, HOST_MISMATCH.1),
                    }
                }
            },
        };
        let latency_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let audited = AuditedRequest {
            host: &named,
            method: &method,
            path: &path,
        };
        self.audit(&binding, &secret_id, &audited, &outcome, latency_ms)
            .await;
        response
    }

    /// The host a request names (absolute-form target, else `Host`; for the audit, else the
    /// connection's own name), and that host again if the broker may act for it: target and
    /// `Host` agree, the sandbox resolved it to this connection's address, and inside TLS it
    /// is the session's server name.
    fn request_host(&self, req: &Request<Incoming>) -> (String, Option<String>) {
        let header = req
            .headers()
            .get(axum::http::header::HOST)
            .map(|v| host_of_authority(&String::from_utf8_lossy(v.as_bytes())));
        let target = req.uri().host().map(host_of_authority);
        let named = target
            .clone()
            .or(header.clone())
            .or_else(|| self.sni.clone())
            .or_else(|| self.resolved.last().cloned())
            .unwrap_or_default();
        let host = match (target, header) {
            (Some(t), Some(h)) if t != h => None,
            (Some(h), _) | (None, Some(h)) => Some(h),
            (None, None) => None,
        };
        let host = host
            .filter(|h| self.resolved.contains(h))
            .filter(|h| self.sni.as_ref().is_none_or(|s| s == h));
        (named, host)
    }

    async fn audit(
        &self,
        binding: &Binding,
        secret_id: &str,
        req: &AuditedRequest<'_>,
        outcome: &Outcome,
        latency_ms: u64,
    ) {
        let ts_ns = now_ns();
        let sandbox_name = self.policy.upgrade().and_then(|p| p.name());
        let _ = self
            .secrets
            .record_audit(AuditRow {
                ts_ns,
                secret_id: secret_id.to_owned(),
                secret_name: binding.secret_name.clone(),
                sandbox_id: self.sandbox_id.clone(),
                sandbox_name,
                method: req.method.to_owned(),
                host: req.host.to_owned(),
                path: req.path.to_owned(),
                status: outcome.status,
                upstream_status: outcome.upstream_status,
                latency_ms: Some(latency_ms),
                error_code: outcome.error_code.map(str::to_owned),
            })
            .await;
        let row = NetworkEventRow {
            ts_ns,
            kind: "request".to_owned(),
            host: Some(req.host.to_owned()),
            method: Some(req.method.to_owned()),
            path: Some(req.path.to_owned()),
            status: Some(i64::from(outcome.status)),
            upstream_status: outcome.upstream_status.map(i64::from),
            latency_ms: Some(i64::try_from(latency_ms).unwrap_or(i64::MAX)),
            secret_id: Some(secret_id.to_owned()),
            error_code: outcome.error_code.map(str::to_owned),
            ..Default::default()
        };
        let id = self.sandbox_id.clone();
        let _ = self
            .db
            .call(move |c| store::insert_network_event(c, &id, &row))
            .await;
    }
}

/// Whether one header carries `standin`: anywhere in its value, or as the password of HTTP
/// basic auth.
fn header_carries(name: &HeaderName, value: &HeaderValue, standin: &str) -> bool {
    let (v, needle) = (value.as_bytes(), standin.as_bytes());
    contains(v, needle)
        || (name == axum::http::header::AUTHORIZATION
            && v.len() > 6
            && v[..6].eq_ignore_ascii_case(b"basic ")
            && base64_decode(&v[6..]).is_some_and(|d| contains(&d, needle)))
}

/// Whether a request carries the binding's stand-in in any header.
fn carries(req: &Request<Incoming>, b: &Binding) -> bool {
    req.headers()
        .iter()
        .any(|(name, value)| header_carries(name, value, &b.standin))
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// Replaces every header that carries the stand-in with the secret's header(s).
fn swap(
    req: &mut Request<Incoming>,
    b: &Binding,
    headers: Vec<(String, String)>,
) -> Result<(), ()> {
    let stale: Vec<HeaderName> = req
        .headers()
        .iter()
        .filter(|(name, value)| header_carries(name, value, &b.standin))
        .map(|(name, _)| name.clone())
        .collect();
    for name in stale {
        req.headers_mut().remove(&name);
    }
    for (name, value) in headers {
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(drop)?;
        let mut value = HeaderValue::from_str(&value).map_err(drop)?;
        value.set_sensitive(true);
        req.headers_mut().insert(name, value);
    }
    Ok(())
}

/// Turns an absolute-form request target into origin form (path and query) for the upstream.
fn origin_form<B>(req: &mut Request<B>) {
    if req.uri().authority().is_some() {
        let pq = req
            .uri()
            .path_and_query()
            .map_or("/", axum::http::uri::PathAndQuery::as_str);
        if let Ok(uri) = pq.parse() {
            *req.uri_mut() = uri;
        }
    }
}

async fn forward(
    sender: &tokio::sync::Mutex<hyper::client::conn::http1::SendRequest<Body>>,
    mut req: Request<Body>,
) -> (Response<Body>, Outcome) {
    // the server side parsed an origin-form request; the upstream gets the same
    *req.version_mut() = axum::http::Version::HTTP_11;
    let mut sender = sender.lock().await;
    let sent = match sender.ready().await {
        Ok(()) => sender.send_request(req).await,
        Err(e) => Err(e),
    };
    match sent {
        Ok(resp) => {
            let status = resp.status().as_u16();
            (
                resp.map(Body::new),
                Outcome {
                    status,
                    upstream_status: Some(status),
                    error_code: None,
                },
            )
        }
        Err(_) => {
            let (resp, mut outcome) = error_response(
                StatusCode::BAD_GATEWAY,
                "upstream_error",
                "the upstream connection failed",
            );
            outcome.error_code = Some("upstream_error");
            (resp, outcome)
        }
    }
}

fn refuse(code: &'static str, message: &str) -> (Response<Body>, Outcome) {
    error_response(StatusCode::FORBIDDEN, code, message)
}

fn error_response(
    status: StatusCode,
    code: &'static str,
    message: &str,
) -> (Response<Body>, Outcome) {
    let body = serde_json::json!({"error": {"code": code, "message": message}}).to_string();
    let resp = Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("x-superserve-egress", "refused")
        .body(Body::from(body))
        .unwrap_or_else(|_| Response::new(Body::empty()));
    (
        resp,
        Outcome {
            status: status.as_u16(),
            upstream_status: None,
            error_code: Some(code),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_stand_ins_in_basic_credentials() {
        assert_eq!(base64_decode(b"dXNlcjpwYXNz").unwrap(), b"user:pass");
        assert_eq!(base64_decode(b"YWI=").unwrap(), b"ab");
        assert!(base64_decode(b"!!!!").is_none());
        assert!(contains(b"Bearer abc", b"abc"));
        let auth = axum::http::header::AUTHORIZATION;
        let basic = HeaderValue::from_static("Basic dXNlcjpzc19zdGFuZGluX2FiYw==");
        assert!(header_carries(&auth, &basic, "ss_standin_abc"));
        assert!(!header_carries(&auth, &basic, "ss_standin_abd"));
        let other = HeaderName::from_static("x-basic");
        assert!(
            !header_carries(&other, &basic, "ss_standin_abc"),
            "basic only in Authorization"
        );
        let bearer = HeaderValue::from_static("Bearer ss_standin_abc");
        assert!(header_carries(&auth, &bearer, "ss_standin_abc"));
        assert!(
            !header_carries(&auth, &bearer, ""),
            "an empty stand-in matches nothing"
        );
        assert!(!contains(b"Bearer ab", b"abc"));
    }
}
