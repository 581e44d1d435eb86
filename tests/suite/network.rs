//! Egress control, brokered secrets and the network log, end to end: real sandboxes in their
//! own network namespaces reaching real upstream servers in other namespaces on this machine.

use std::collections::HashSet;

use superserve::local::LocalServer;
use superserve::{
    AuditOptions, AuditStatus, CreateOptions, Error, NetworkConfig, NetworkEvent, NetworkEventKind,
    NetworkLogOptions, NetworkVerdict, SandboxStatus, SecretAuth, SecretCreateOptions,
    UpdateOptions,
};

use crate::common::{self, Upstream};
use crate::dual;
use crate::flavor::{Provider, Sandbox, Secret};

/// Every network log event of `sb` (all pages).
#[dual]
async fn all_events(sb: &Sandbox, opts: NetworkLogOptions) -> Vec<NetworkEvent> {
    let mut out = Vec::new();
    let mut opts = opts;
    loop {
        let page = sb.get_network_log(opts.clone()).await.unwrap();
        out.extend(page.events);
        match page.next_cursor {
            Some(c) if page.has_more => opts = opts.before(c),
            _ => return out,
        }
    }
}

/// Waits (bounded) until the log holds an event satisfying `pred`; returns it.
#[dual]
async fn wait_event(sb: &Sandbox, pred: impl Fn(&NetworkEvent) -> bool) -> NetworkEvent {
    for _ in 0..500 {
        let events = all_events(sb, NetworkLogOptions::new().limit(1000)).await;
        if let Some(e) = events.into_iter().find(|e| pred(e)) {
            return e;
        }
        crate::flavor::sleep(std::time::Duration::from_millis(20)).await;
    }
    let events = all_events(sb, NetworkLogOptions::new().limit(1000)).await;
    panic!("no matching network event in {events:#?}");
}

#[dual]
async fn sh(sb: &Sandbox, cmd: &str) -> superserve::CommandResult {
    sb.commands()
        .run(cmd)
        .await
        .unwrap_or_else(|e| panic!("{cmd}: {e}"))
}

/// A bearer secret `name` holding `value` for `host`.
#[dual]
async fn bearer_secret(config: &superserve::Config, name: &str, value: &str, host: &str) -> Secret {
    Secret::create_with_config(
        config,
        SecretCreateOptions::new(name, value)
            .hosts([host])
            .auth(SecretAuth::bearer()),
    )
    .await
    .unwrap()
}

/// A bearer secret `name` (value `value`) for `host`, and a sandbox `name` that binds it as
/// `TOKEN`.
#[dual]
async fn bearer_bound_sandbox(
    config: &superserve::Config,
    name: &str,
    value: &str,
    host: &str,
) -> (Secret, Sandbox) {
    let secret = bearer_secret(config, name, value, host).await;
    let sb = Sandbox::create_with_config(config, CreateOptions::new(name).secret("TOKEN", name))
        .await
        .unwrap();
    (secret, sb)
}

/// An egress-enabled backend, an upstream server on this machine, and `names` resolving to
/// the upstream inside the backend's sandboxes.
fn egress_with_upstream(names: &[&str]) -> (LocalServer, Upstream, superserve::Config) {
    let server = common::egress_server();
    let up = Upstream::start();
    for name in names {
        server.set_dns_host(name, up.ip);
    }
    let config = common::config(&server);
    (server, up, config)
}

/// From inside `sb`, calls `url` with `Authorization: Bearer $TOKEN` and asserts that the egress
/// refused it with `status` and error `code`.
#[dual]
async fn assert_refused(sb: &Sandbox, url: &str, status: u16, code: &str) {
    let cmd =
        format!("curl -sS -m 10 -w '\\n%{{http_code}}' -H \"Authorization: Bearer $TOKEN\" {url}");
    let r = sh(sb, &cmd).await;
    assert!(r.stdout.ends_with(&format!("\n{status}")), "{r:?}");
    assert!(r.stdout.contains(code), "{r:?}");
}

#[dual]
pub async fn egress_allowed_blocked_and_logged() {
    local_only!("the local backend (request journal, faults, restarts)");
    let (_server, up, config) = egress_with_upstream(&["ok.upstream.test"]);
    let sb = Sandbox::create_with_config(
        &config,
        CreateOptions::new("egress").network(
            NetworkConfig::new()
                .allow_out(["*.upstream.test"])
                .deny_out(["0.0.0.0/0"]),
        ),
    )
    .await
    .unwrap();
    // allowed by name (DNS through the backend, connection through the proxy)
    let ok = sh(&sb, "curl -sS -m 10 http://ok.upstream.test/hello").await;
    assert_eq!(ok.exit_code, 0, "{ok:?}");
    assert!(ok.stdout.contains("\"path\":\"/hello\""), "{ok:?}");
    assert_eq!(up.requests().len(), 1);
    // another host, by address: no allow rule names it, deny_out 0.0.0.0/0 blocks it
    let other = Upstream::start();
    let blocked = sh(&sb, &format!("curl -sS -m 10 http://{}/nope", other.ip)).await;
    assert_ne!(blocked.exit_code, 0, "{blocked:?}");
    assert!(
        other.requests().is_empty(),
        "a blocked connection never reaches the upstream"
    );
    // allowed, but nothing listens there: the proxy's upstream connect fails
    let refused = sh(&sb, "curl -sS -m 10 http://ok.upstream.test:81/").await;
    assert_ne!(refused.exit_code, 0, "{refused:?}");
    // always-blocked ranges, whatever the rules say
    let meta = sh(&sb, "curl -sS -m 10 http://169.254.169.254/latest").await;
    assert_ne!(meta.exit_code, 0);

    let allowed = wait_event(&sb, |e| {
        e.verdict == Some(NetworkVerdict::Allowed) && e.bytes_recv.unwrap_or(0) > 0
    })
    .await;
    assert_eq!(allowed.kind, NetworkEventKind::Connection);
    assert_eq!(allowed.host.as_deref(), Some("ok.upstream.test"));
    assert_eq!(allowed.dst_ip.as_deref(), Some(up.ip.to_string().as_str()));
    assert_eq!(allowed.dst_port, Some(80));
    let sent = allowed.bytes_sent.unwrap_or(0);
    assert!(sent > 40, "request bytes counted: {allowed:?}");
    let received = allowed.bytes_recv.unwrap_or(0);
    assert!(received > 40, "response bytes counted: {allowed:?}");
    let ip = other.ip.to_string();
    let denied = wait_event(&sb, |e| {
        e.verdict == Some(NetworkVerdict::Blocked) && e.dst_ip.as_deref() == Some(ip.as_str())
    })
    .await;
    assert_eq!(denied.match_rule.as_deref(), Some("0.0.0.0/0"));
    assert_eq!(denied.host, None);
    let link_local = wait_event(&sb, |e| e.dst_ip.as_deref() == Some("169.254.169.254")).await;
    assert_eq!(link_local.verdict, Some(NetworkVerdict::Blocked));
    assert_eq!(
        link_local.match_rule.as_deref(),
        Some("link-local:169.254.0.0/16")
    );
    let failed = wait_event(&sb, |e| e.dst_port == Some(81)).await;
    assert_eq!(failed.verdict, Some(NetworkVerdict::Failed));
    assert_eq!(failed.host.as_deref(), Some("ok.upstream.test"));
    assert_eq!(failed.match_rule, None);
    // the verdict filter returns only matching connection rows
    let only_blocked = all_events(
        &sb,
        NetworkLogOptions::new().verdict(NetworkVerdict::Blocked),
    )
    .await;
    assert_eq!(only_blocked.len(), 2, "{only_blocked:#?}");
    assert!(only_blocked
        .iter()
        .all(|e| e.verdict == Some(NetworkVerdict::Blocked)));
    sb.kill().await.unwrap();
}

#[dual]
pub async fn egress_rules_updated_on_a_live_sandbox() {
    local_only!("the local backend (request journal, faults, restarts)");
    let (_server, up, config) = egress_with_upstream(&["svc.live.test"]);
    let sb = Sandbox::create_with_config(
        &config,
        CreateOptions::new("live").network(NetworkConfig::new().deny_out(["0.0.0.0/0"])),
    )
    .await
    .unwrap();
    let before = sh(&sb, "curl -sS -m 10 http://svc.live.test/a").await;
    assert_ne!(before.exit_code, 0, "{before:?}");
    sb.update(
        UpdateOptions::new().network(
            NetworkConfig::new()
                .allow_out(["svc.live.test"])
                .deny_out(["0.0.0.0/0"]),
        ),
    )
    .await
    .unwrap();
    // the running sandbox (same processes' namespace) gets the new rules at once
    let after = sh(&sb, "curl -sS -m 10 http://svc.live.test/b").await;
    assert_eq!(after.exit_code, 0, "{after:?}");
    let paths: Vec<String> = up.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(paths, vec!["/b".to_owned()]);
    sb.pause().await.unwrap();
    let err = sb
        .update(UpdateOptions::new().network(NetworkConfig::new().allow_out(["x.test"])))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Conflict(_)), "{err:?}");
    sb.kill().await.unwrap();
}

#[dual]
pub async fn secrets_crud_rotate_and_providers() {
    local_only!("the local backend (request journal, faults, restarts)");
    let server = common::server();
    let config = common::config(&server);
    let providers = Provider::list_with_config(&config).await.unwrap();
    let openai = providers
        .iter()
        .find(|p| p.name == "openai")
        .expect("openai");
    assert!(openai.hosts.iter().any(|h| h == "api.openai.com"));
    let anthropic = providers
        .iter()
        .find(|p| p.name == "anthropic")
        .expect("anthropic");
    assert!(anthropic.hosts.iter().any(|h| h == "api.anthropic.com"));

    let value = "sk-test-value-0123456789";
    let s = Secret::create_with_config(
        &config,
        SecretCreateOptions::new("openai-prod", value).provider("openai"),
    )
    .await
    .unwrap();
    assert_eq!(s.name(), "openai-prod");
    assert_eq!(s.info().provider_shortcut.as_deref(), Some("openai"));
    assert_eq!(s.info().hosts, vec!["api.openai.com".to_owned()]);
    let custom = Secret::create_with_config(
        &config,
        SecretCreateOptions::new("internal-api", "tok-1")
            .hosts(["api.internal.example.com", "*.svc.example.com"])
            .auth(SecretAuth::api_key("X-Api-Key")),
    )
    .await
    .unwrap();
    assert_eq!(custom.info().auth_type, superserve::SecretAuthType::ApiKey);
    // the value never comes back, in any shape
    let shown = format!("{s:?} {:?} {custom:?}", s.info());
    assert!(!shown.contains(value));
    let got = Secret::get_with_config(&config, "openai-prod")
        .await
        .unwrap();
    assert_eq!(got.id(), s.id());
    let all = Secret::list_with_config(&config).await.unwrap();
    let names: Vec<&str> = all.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, vec!["openai-prod", "internal-api"]);
    // duplicates and bad input are typed errors that store nothing
    let dup = Secret::create_with_config(
        &config,
        SecretCreateOptions::new("openai-prod", "x").provider("openai"),
    )
    .await;
    assert!(matches!(dup, Err(Error::Conflict(_))), "{dup:?}");
    let bad = Secret::create_with_config(
        &config,
        SecretCreateOptions::new("bad", "v")
            .hosts(["*.com"])
            .auth(SecretAuth::bearer()),
    )
    .await;
    assert!(matches!(bad, Err(Error::Validation(_))), "{bad:?}");
    let unknown = Secret::create_with_config(
        &config,
        SecretCreateOptions::new("bad2", "v").provider("nope"),
    )
    .await;
    assert!(matches!(unknown, Err(Error::Validation(_))), "{unknown:?}");
    let secret_count = Secret::list_with_config(&config).await.unwrap().len();
    assert_eq!(secret_count, 2);

    let rotated = s.rotate("sk-test-value-rotated").await.unwrap();
    assert_eq!(rotated.id(), s.id());
    let info = rotated.get_info().await.unwrap();
    assert!(info.updated_at.as_str() >= info.created_at.as_str());
    // on-disk state holds no plaintext
    let db = std::fs::read(server.data_dir().join("state.db")).unwrap_or_default();
    let wal = std::fs::read(server.data_dir().join("state.db-wal")).unwrap_or_default();
    for blob in [&db, &wal] {
        assert!(!blob.windows(value.len()).any(|w| w == value.as_bytes()));
        assert!(!blob
            .windows(b"sk-test-value-rotated".len())
            .any(|w| w == b"sk-test-value-rotated"));
    }

    // the backend's request journal never keeps a secret's value either
    let journal = format!("{:?}", server.requests());
    assert!(journal.contains("/secrets"));
    assert!(!journal.contains(value) && !journal.contains("sk-test-value-rotated"));

    custom.delete().await.unwrap();
    Secret::delete_by_name_with_config(&config, "internal-api")
        .await
        .unwrap();
    Secret::delete_by_name_with_config(&config, "openai-prod")
        .await
        .unwrap();
    let gone = Secret::get_with_config(&config, "openai-prod").await;
    assert!(matches!(gone, Err(ref e) if e.is_not_found()), "{gone:?}");
    let secret_count = Secret::list_with_config(&config).await.unwrap().len();
    assert_eq!(secret_count, 0);
}

#[dual]
pub async fn brokered_secret_injected_audited_and_revoked() {
    local_only!("the local backend (request journal, faults, restarts)");
    let (_server, up, config) = egress_with_upstream(&["api.broker.test", "elsewhere.broker.test"]);
    let real = "real-credential-7f3a9c";
    let secret = Secret::create_with_config(
        &config,
        SecretCreateOptions::new("broker-key", real)
            .hosts(["api.broker.test"])
            .auth(SecretAuth::api_key("X-Api-Key")),
    )
    .await
    .unwrap();
    let sb = Sandbox::create_with_config(
        &config,
        CreateOptions::new("broker").secret("API_KEY", "broker-key"),
    )
    .await
    .unwrap();
    // the sandbox only ever holds the stand-in
    let env = sh(&sb, "env").await;
    assert!(
        !env.stdout.contains(real),
        "the real value leaked into the env"
    );
    let standin = sh(&sb, "printf %s \"$API_KEY\"").await.stdout;
    assert!(standin.starts_with("ss_standin_"), "{standin:?}");

    let bindings = secret.get_sandboxes().await.unwrap();
    assert_eq!(bindings.len(), 1);
    assert_eq!(bindings[0].sandbox_id, sb.id());
    assert_eq!(bindings[0].env_key, "API_KEY");
    assert_eq!(bindings[0].status, SandboxStatus::Active);

    let call = sh(
        &sb,
        "curl -sS -m 10 -H \"X-Api-Key: $API_KEY\" http://api.broker.test/v1/things",
    )
    .await;
    assert_eq!(call.exit_code, 0, "{call:?}");
    assert!(call.stdout.contains("/v1/things"), "{call:?}");
    let seen = up.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].header("x-api-key"),
        Some(real),
        "upstream got the real credential"
    );

    // the stand-in is worthless anywhere else: it reaches other hosts unchanged
    let other = sh(
        &sb,
        "curl -sS -m 10 -H \"X-Api-Key: $API_KEY\" http://elsewhere.broker.test/leak",
    )
    .await;
    assert_eq!(other.exit_code, 0, "{other:?}");
    let seen = up.requests();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].path, "/leak");
    assert_eq!(seen[1].header("x-api-key"), Some(standin.as_str()));

    // audited, and in the network log as a request row
    let audit = secret
        .get_audit(AuditOptions::new().limit(50))
        .await
        .unwrap();
    assert_eq!(audit.len(), 1, "{audit:?}");
    assert_eq!(audit[0].path, "/v1/things");
    assert_eq!(audit[0].method, "GET");
    assert_eq!(audit[0].host, "api.broker.test");
    assert_eq!(audit[0].status, 200);
    assert_eq!(audit[0].upstream_status, Some(200));
    assert_eq!(audit[0].sandbox_id, sb.id());
    assert_eq!(audit[0].secret_id.as_deref(), Some(secret.id()));
    let sid = secret.id().to_owned();
    let req = wait_event(&sb, |e| {
        e.kind == NetworkEventKind::Request && e.secret_id.as_deref() == Some(sid.as_str())
    })
    .await;
    assert_eq!(req.status, Some(200));
    assert_eq!(req.path.as_deref(), Some("/v1/things"));

    // detach revokes the stand-in: refused at egress, never forwarded, audited as an error
    sb.detach_secret("API_KEY").await.unwrap();
    let refused = sh(
        &sb,
        &format!("curl -sS -m 10 -o /dev/null -w '%{{http_code}}' -H 'X-Api-Key: {standin}' http://api.broker.test/v1/again"),
    )
    .await;
    assert_eq!(refused.stdout, "403", "{refused:?}");
    assert_eq!(
        up.requests().len(),
        2,
        "a revoked stand-in never reaches the upstream"
    );
    let errors = secret
        .get_audit(AuditOptions::new().status(AuditStatus::Errors))
        .await
        .unwrap();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].status, 403);
    assert_eq!(errors[0].error_code.as_deref(), Some("secret_revoked"));
    let bindings = secret.get_sandboxes().await.unwrap();
    assert!(bindings.is_empty(), "{bindings:?}");
    let env_in_new_process = sh(&sb, "printf %s \"${API_KEY:-unset}\"").await.stdout;
    assert_eq!(
        env_in_new_process, "unset",
        "new processes no longer get the stand-in"
    );
    let audited_sandbox_name = errors[0].sandbox_name.clone();
    assert_eq!(audited_sandbox_name.as_deref(), Some("broker"));
    sb.kill().await.unwrap();
    // once the sandbox is gone its audit events keep its id but lose its name
    let after = secret.get_audit(AuditOptions::new()).await.unwrap();
    assert_eq!(after.len(), 2);
    assert!(after
        .iter()
        .all(|e| e.sandbox_id == sb.id() && e.sandbox_name.is_none()));
    secret.delete().await.unwrap();
}

#[dual]
pub async fn network_log_pages_through_hundreds_of_events() {
    local_only!("the local backend (request journal, faults, restarts)");
    let server = common::egress_server();
    let config = common::config(&server);
    let sb = Sandbox::create_with_config(&config, CreateOptions::new("many"))
        .await
        .unwrap();
    // 320 connections to a private address: each is refused and logged
    let r = sh(
        &sb,
        "bash -c 'for i in $(seq 320); do (exec 3<>/dev/tcp/10.1.2.3/80) 2>/dev/null; done; echo done'",
    )
    .await;
    assert_eq!(r.stdout.trim(), "done", "{r:?}");
    let mut total = 0;
    for _ in 0..500 {
        total = all_events(&sb, NetworkLogOptions::new().limit(1000))
            .await
            .len();
        if total >= 320 {
            break;
        }
        crate::flavor::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(total, 320);
    let full = all_events(&sb, NetworkLogOptions::new().limit(1000)).await;
    let paged = all_events(&sb, NetworkLogOptions::new().limit(37)).await;
    let ids = |v: &[NetworkEvent]| v.iter().map(|e| e.id).collect::<Vec<_>>();
    assert_eq!(
        ids(&paged),
        ids(&full),
        "no duplicates or gaps across pages"
    );
    let unique: HashSet<i64> = paged.iter().map(|e| e.id).collect();
    assert_eq!(unique.len(), 320);
    assert!(
        paged
            .windows(2)
            .all(|w| w[0].ts.as_str() >= w[1].ts.as_str()),
        "newest first"
    );
    assert!(paged
        .iter()
        .all(|e| e.match_rule.as_deref() == Some("private:10.0.0.0/8")));
    // since: the oldest event's timestamp keeps everything; before it nothing
    let oldest = paged.last().unwrap().ts.as_str().to_owned();
    let since = all_events(&sb, NetworkLogOptions::new().since(oldest.clone())).await;
    assert_eq!(since.len(), 320);
    let page = sb
        .get_network_log(NetworkLogOptions::new().before(oldest))
        .await
        .unwrap();
    assert!(page.events.is_empty());
    sb.kill().await.unwrap();
}

/// A test CA and a leaf certificate for `host` issued by it: (ca_pem, leaf_chain_pem, key_pem).
fn test_pki(host: &str) -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "upstream test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec![host.to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &ca_cert, &ca_key)
        .unwrap();
    (
        ca_cert.pem(),
        format!("{}{}", leaf.pem(), ca_cert.pem()),
        leaf_key.serialize_pem(),
    )
}

#[dual]
pub async fn brokered_secret_over_https() {
    local_only!("the local backend (request journal, faults, restarts)");
    let (ca_pem, chain_pem, key_pem) = test_pki("api.tls.test");
    let server = LocalServer::builder()
        .allow_private_destination("10.88.0.0/16")
        .upstream_root_ca(ca_pem)
        .start()
        .unwrap();
    let up = Upstream::start();
    up.serve_tls(&chain_pem, &key_pem);
    server.set_dns_host("api.tls.test", up.ip);
    let config = common::config(&server);
    let real = "tls-real-token-51d2";
    let (secret, sb) = bearer_bound_sandbox(&config, "tls-key", real, "api.tls.test").await;
    // curl verifies the proxy's certificate with the sandbox's trust store (no -k)
    let call = sh(
        &sb,
        "curl -sS -m 10 -H \"Authorization: Bearer $TOKEN\" https://api.tls.test/v1/secure",
    )
    .await;
    assert_eq!(call.exit_code, 0, "{call:?}");
    assert!(call.stdout.contains("/v1/secure"), "{call:?}");
    let seen = up.requests();
    assert_eq!(seen.len(), 1);
    let expected = format!("Bearer {real}");
    assert_eq!(seen[0].header("authorization"), Some(expected.as_str()));
    let audit = secret.get_audit(AuditOptions::new()).await.unwrap();
    assert_eq!(audit.len(), 1, "{audit:?}");
    assert_eq!(audit[0].status, 200);
    assert_eq!(audit[0].path, "/v1/secure");
    sb.kill().await.unwrap();
}

#[dual]
pub async fn brokered_https_never_reaches_an_unverified_upstream() {
    local_only!("the local backend (request journal, faults, restarts)");
    // the upstream's CA is not given to the backend: its certificate cannot be verified
    let (_ca_pem, chain_pem, key_pem) = test_pki("api.untrusted.test");
    let (_server, up, config) = egress_with_upstream(&["api.untrusted.test"]);
    up.serve_tls(&chain_pem, &key_pem);
    let (_, sb) = bearer_bound_sandbox(
        &config,
        "untrusted-key",
        "never-sent-9e1",
        "api.untrusted.test",
    )
    .await;
    assert_refused(
        &sb,
        "https://api.untrusted.test/v1/x",
        502,
        "upstream_tls_error",
    )
    .await;
    assert!(
        up.requests().is_empty(),
        "nothing reached the unverified upstream"
    );
    sb.kill().await.unwrap();
}

#[dual]
pub async fn secret_rotation_and_deletion_at_egress() {
    local_only!("the local backend (request journal, faults, restarts)");
    let (_server, up, config) = egress_with_upstream(&["api.gone.test"]);
    let secret = bearer_secret(&config, "gone-key", "gone-real-1", "api.gone.test").await;
    let sb = Sandbox::create_with_config(&config, CreateOptions::new("gone"))
        .await
        .unwrap();
    sb.attach_secret("TOKEN", "gone-key").await.unwrap();
    let curl = "curl -sS -m 10 -o /dev/null -w '%{http_code}' -H \"Authorization: Bearer $TOKEN\" http://api.gone.test/x";
    let status_code = sh(&sb, curl).await.stdout;
    assert_eq!(status_code, "200");
    let credential_seen = up.requests()[0].header("authorization").map(str::to_owned);
    assert_eq!(credential_seen.as_deref(), Some("Bearer gone-real-1"));
    // a rotation takes effect at egress at once, with the same stand-in
    secret.rotate("gone-real-2").await.unwrap();
    let status_code = sh(&sb, curl).await.stdout;
    assert_eq!(status_code, "200");
    let credential_seen = up.requests()[1].header("authorization").map(str::to_owned);
    assert_eq!(credential_seen.as_deref(), Some("Bearer gone-real-2"));
    secret.delete().await.unwrap();
    let bindings = sb.get_info().await.unwrap().secrets.unwrap_or_default();
    assert_eq!(bindings.len(), 1, "{bindings:?}");
    assert_eq!(bindings[0].revoked, Some(true));
    let refused_status = sh(&sb, curl).await.stdout;
    assert_eq!(refused_status, "403");
    assert_eq!(up.requests().len(), 2, "refused before the upstream");
    sb.kill().await.unwrap();
}

#[dual]
pub async fn the_hosts_own_addresses_are_blocked() {
    local_only!("the local backend (request journal, faults, restarts)");
    let server = common::egress_server();
    let up = Upstream::start();
    // a public-range address on this machine: reaching it would reach the host's services
    let own: std::net::Ipv4Addr = "203.0.113.77".parse().unwrap();
    up.add_host_address(own);
    let config = common::config(&server);
    let sb = Sandbox::create_with_config(&config, CreateOptions::new("own"))
        .await
        .unwrap();
    let r = sh(
        &sb,
        &format!(
            "curl -sS -m 10 http://{own}:{}/",
            server.base_url().rsplit(':').next().unwrap()
        ),
    )
    .await;
    assert_ne!(r.exit_code, 0, "{r:?}");
    let ev = wait_event(&sb, |e| e.dst_ip.as_deref() == Some("203.0.113.77")).await;
    assert_eq!(ev.verdict, Some(NetworkVerdict::Blocked));
    assert_eq!(ev.match_rule.as_deref(), Some("host:203.0.113.77"));
    sb.kill().await.unwrap();
}

/// Brokering survives a backend restart (sealed values, bindings and stand-ins are kept), and a
/// value the backend can no longer decrypt (its key file replaced) is refused with 502
/// `secret_unavailable`, not mistaken for a deleted secret, and nothing reaches the upstream.
#[dual]
pub async fn brokered_secret_after_restart_and_with_a_replaced_key() {
    local_only!("the local backend (request journal, faults, restarts)");
    let dir = common::temp_path("superserve-keyswap");
    let up = Upstream::start();
    let start = || {
        let server = LocalServer::builder()
            .data_dir(&dir)
            .api_key("ss_live_keyswaptestkey00000000000000000")
            .allow_private_destination("10.88.0.0/16")
            .start()
            .unwrap();
        assert!(server.egress_available());
        server.set_dns_host("api.keyswap.test", up.ip);
        server
    };
    let call = "curl -sS -m 10 -H \"Authorization: Bearer $TOKEN\" http://api.keyswap.test/v1/x";
    let real = "real-keyswap-credential";
    let id;
    {
        let server = start();
        let (_, sb) = bearer_bound_sandbox(
            &common::config(&server),
            "keyswap",
            real,
            "api.keyswap.test",
        )
        .await;
        id = sb.id().to_owned();
        server.shutdown();
    }
    {
        let server = start();
        let sb = Sandbox::connect_with_config(&common::config(&server), &id)
            .await
            .unwrap();
        let ok = sh(&sb, call).await;
        assert_eq!(ok.exit_code, 0, "{ok:?}");
        let seen = up.requests();
        assert_eq!(seen.len(), 1);
        assert_eq!(
            seen[0].header("authorization"),
            Some(format!("Bearer {real}").as_str())
        );
        server.shutdown();
    }
    // another 32-byte key: the stored value no longer opens
    std::fs::write(dir.join("secrets.key"), [0x5au8; 32]).unwrap();
    let server = start();
    let sb = Sandbox::connect_with_config(&common::config(&server), &id)
        .await
        .unwrap();
    assert_refused(
        &sb,
        "http://api.keyswap.test/v1/x",
        502,
        "secret_unavailable",
    )
    .await;
    assert_eq!(up.requests().len(), 1, "nothing more reached the upstream");
    // the secret is still listed (nothing was lost), and its audit records the refusal
    let secret = Secret::get_with_config(&common::config(&server), "keyswap")
        .await
        .unwrap();
    let audit = secret.get_audit(AuditOptions::new()).await.unwrap();
    assert_eq!(audit[0].status, 502, "{audit:?}");
    assert_eq!(audit[0].error_code.as_deref(), Some("secret_unavailable"));
    sb.kill().await.unwrap();
    server.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A stand-in sent to a host that another of the sandbox's secrets covers is refused (403
/// `secret_host_mismatch`) and audited on its own secret; nothing reaches the upstream.
#[dual]
pub async fn standin_sent_to_another_secrets_host_is_refused() {
    local_only!("the local backend (request journal, faults, restarts)");
    let (_server, up, config) = egress_with_upstream(&["api.one.test", "api.two.test"]);
    let (one, sb) = bearer_bound_sandbox(&config, "one-key", "one-real", "api.one.test").await;
    bearer_secret(&config, "two-key", "two-real", "api.two.test").await;
    sb.attach_secret("TWO", "two-key").await.unwrap();
    assert_refused(&sb, "http://api.two.test/x", 403, "secret_host_mismatch").await;
    assert!(up.requests().is_empty(), "nothing reached the upstream");
    let audit = one.get_audit(AuditOptions::new()).await.unwrap();
    assert_eq!(audit.len(), 1, "{audit:?}");
    assert_eq!(audit[0].host, "api.two.test");
    assert_eq!(audit[0].status, 403);
    assert_eq!(audit[0].error_code.as_deref(), Some("secret_host_mismatch"));
    sb.kill().await.unwrap();
}
