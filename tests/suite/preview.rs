//! Preview ports end to end against the local backend: apps started inside sandboxes, reached
//! through the preview proxy by raw HTTP, curl, a WebSocket client and headless Chromium.
//! Each access-control test is written as an attacker would try it (no token, a rotated or
//! unpublished token, a token for another port or sandbox, a forged or expired one) and
//! asserts the refusal.

use std::time::Duration;

use superserve::local::LocalServer;
use superserve::{
    CreateOptions, PauseOptions, PreviewAccess, PreviewAccessPolicy, TimeoutKind, UpdateOptions,
    WaitOptions,
};

use crate::common::preview::{curl, read_chunk, read_head, websocket, Proxy, APP, WS_ECHO};
use crate::common::{self, raw_http};
use crate::dual;
use crate::flavor::Sandbox;

#[dual]
async fn sandbox(server: &LocalServer, name: &str, access: Option<PreviewAccessPolicy>) -> Sandbox {
    let mut opts = CreateOptions::new(name);
    if let Some(a) = access {
        opts = opts.preview_access(a);
    }
    Sandbox::create_with_config(&common::config(server), opts)
        .await
        .unwrap_or_else(|e| panic!("create {name}: {e}"))
}

#[dual]
async fn sh(sb: &Sandbox, cmd: &str) -> String {
    let r = sb
        .commands()
        .run(cmd)
        .await
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert_eq!(r.exit_code, 0, "{cmd}: {}", r.stderr);
    r.stdout
}

/// Starts the test app (`common::preview::APP`) on `port` inside the sandbox and waits until
/// it answers.
#[dual]
async fn start_app(sb: &Sandbox, port: u16) {
    sb.files().write("/srv/app.py", APP).await.unwrap();
    sh(
        sb,
        &format!("nohup python3 /srv/app.py {port} >/tmp/app-{port}.log 2>&1 &"),
    )
    .await;
    sb.wait_for_port(port, WaitOptions::new().http_path("/"))
        .await
        .unwrap();
}

/// Starts `python3 -m http.server` on `port` (bound to 127.0.0.1 only) serving `/srv/www`.
#[dual]
async fn start_http_server(sb: &Sandbox, port: u16, index: &str) {
    sb.files()
        .write("/srv/www/index.html", index)
        .await
        .unwrap();
    sh(
        sb,
        &format!(
            "cd /srv/www && nohup python3 -m http.server {port} --bind 127.0.0.1 \
             >/tmp/http-{port}.log 2>&1 &"
        ),
    )
    .await;
    sb.wait_for_port(port, WaitOptions::new().http_path("/"))
        .await
        .unwrap();
}

const TOKEN_HEADER: &str = "X-Superserve-Preview-Token";

/// A private port of a `python3 -m http.server` inside a sandbox: refused without a token,
/// served with the header token and through a signed URL (whose token becomes a cookie with
/// a redirect that drops it from the URL), and refused again, by header, cookie and link,
/// after a rotation and after an unpublish (also once the port is published again).
#[dual]
pub async fn private_preview_with_header_token_and_signed_url() {
    local_only!("the local backend's preview proxy");
    let server = common::server();
    let proxy = Proxy::of(&server);
    let sb = sandbox(
        &server,
        "preview-private",
        Some(PreviewAccessPolicy::Private),
    )
    .await;
    start_http_server(&sb, 3000, "<h1>hello from the sandbox</h1>").await;
    let id = sb.id().to_owned();

    // not published: nothing to see, token or not
    let r = proxy.get(3000, &id, "/", &[]);
    assert_eq!(
        (r.status, r.error_code()),
        (404, Some("port_not_published"))
    );

    let published = sb
        .publish_preview_port(3000, Some(PreviewAccessPolicy::Private))
        .await
        .unwrap();
    assert_eq!(
        (
            published.port,
            published.token_version,
            published.access.clone()
        ),
        (3000, 1, PreviewAccess::Private)
    );
    let list = sb.list_preview_ports().await.unwrap();
    assert_eq!(list.preview_access, PreviewAccess::Private);
    assert_eq!(list.ports, vec![published]);

    // an attacker without a token
    let r = proxy.get(3000, &id, "/", &[]);
    assert_eq!(
        (r.status, r.error_code()),
        (401, Some("preview_token_required"))
    );
    assert!(!r.text().contains("hello from the sandbox"));

    // the header token
    let token = sb.get_preview_token(3000, None).await.unwrap();
    assert_eq!(token.header, TOKEN_HEADER);
    assert!(token.token.starts_with("spv1."), "{}", token.token);
    assert_eq!(token.expires_at, None);
    let r = proxy.get(3000, &id, "/", &[(TOKEN_HEADER, &token.token)]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("hello from the sandbox"), "{}", r.text());
    // the same preview by its real URL, with a real client (curl resolves *.localhost)
    let url = sb.get_preview_url(3000).unwrap();
    assert_eq!(url, format!("http://{}", proxy.host(3000, &id)));
    let body = curl(&[
        "-H",
        &format!("{TOKEN_HEADER}: {}", token.token),
        &format!("{url}/"),
    ]);
    assert!(body.contains("hello from the sandbox"), "{body}");

    // the signed URL: a redirect without the token, which moves into a host-only cookie
    let link = sb.get_signed_preview_url(3000, None).await.unwrap();
    assert!(
        link.starts_with(&format!("{url}?superserve_preview_token=spv1.")),
        "{link}"
    );
    let head = curl(&["-i", "-o", "-", &link]);
    assert!(head.starts_with("HTTP/1.1 302"), "{head}");
    let header = |name: &str| {
        head.lines()
            .find_map(|l| {
                l.split_once(':')
                    .filter(|(k, _)| k.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v.trim().to_owned())
            })
            .unwrap_or_else(|| panic!("no {name} in {head}"))
    };
    assert_eq!(header("location"), "/");
    let cookie = header("set-cookie");
    assert!(
        cookie.starts_with("superserve_preview_token=spv1."),
        "{cookie}"
    );
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("Path=/"),
        "{cookie}"
    );
    assert!(
        !cookie.to_ascii_lowercase().contains("domain"),
        "host-only: {cookie}"
    );
    let jar = common::temp_path("preview-jar");
    let jar = jar.to_str().unwrap();
    let out = curl(&[
        "-c",
        jar,
        "-b",
        jar,
        "-L",
        "-w",
        "\n%{url_effective} %{http_code}",
        &link,
    ]);
    assert!(out.contains("hello from the sandbox"), "{out}");
    assert!(out.ends_with(&format!("{url}/ 200")), "{out}");
    // the cookie alone opens the page (and another port's host never gets it)
    let again = curl(&[
        "-b",
        jar,
        "-w",
        "%{http_code}",
        "-o",
        "/dev/null",
        &format!("{url}/"),
    ]);
    assert_eq!(again, "200");

    // rotate: header token, cookie and link of version 1 are refused; version 2 works
    let rotated = sb.rotate_preview_token(3000).await.unwrap();
    assert_eq!(rotated.token_version, 2);
    let r = proxy.get(3000, &id, "/", &[(TOKEN_HEADER, &token.token)]);
    assert_eq!(r.status, 401, "a rotated header token");
    let old_cookie = curl(&[
        "-b",
        jar,
        "-w",
        "%{http_code}",
        "-o",
        "/dev/null",
        &format!("{url}/"),
    ]);
    assert_eq!(old_cookie, "401", "a rotated cookie");
    let old_link = curl(&["-w", "%{http_code}", "-o", "/dev/null", &link]);
    assert_eq!(old_link, "401", "a rotated signed link");
    let r = proxy.get(3000, &id, "/", &[(TOKEN_HEADER, &rotated.token)]);
    assert_eq!(r.status, 200);

    // unpublish: the current token is refused, and stays refused once published again
    sb.unpublish_preview_port(3000).await.unwrap();
    sb.unpublish_preview_port(3000).await.unwrap(); // idempotent
    let list = sb.list_preview_ports().await.unwrap();
    assert!(list.ports.is_empty());
    let r = proxy.get(3000, &id, "/", &[(TOKEN_HEADER, &rotated.token)]);
    assert_eq!(
        (r.status, r.error_code()),
        (404, Some("port_not_published"))
    );
    let republished = sb.publish_preview_port(3000, None).await.unwrap();
    assert_eq!(republished.access, PreviewAccess::Private);
    assert!(republished.token_version > rotated.token_version);
    let r = proxy.get(3000, &id, "/", &[(TOKEN_HEADER, &rotated.token)]);
    assert_eq!(r.status, 401, "a token from before the unpublish");
    let fresh = sb.get_preview_token(3000, None).await.unwrap();
    let r = proxy.get(3000, &id, "/", &[(TOKEN_HEADER, &fresh.token)]);
    assert_eq!(r.status, 200);
    let _ = std::fs::remove_file(jar);
    sb.kill().await.unwrap();
}

/// Tokens an attacker might hold or make: for another port, for another sandbox, forged,
/// expired, planted in a cookie of the resolver-free form. Each is refused; and no preview
/// credential ever reaches the app, even on a public port.
#[dual]
pub async fn preview_tokens_open_only_their_own_port_and_sandbox() {
    local_only!("the local backend's preview proxy");
    let server = common::server();
    let proxy = Proxy::of(&server);
    let sb = sandbox(
        &server,
        "preview-victim",
        Some(PreviewAccessPolicy::Private),
    )
    .await;
    let other = sandbox(&server, "preview-other", Some(PreviewAccessPolicy::Private)).await;
    let id = sb.id().to_owned();
    start_app(&sb, 3000).await;
    start_app(&other, 3000).await;
    for (s, port) in [(&sb, 3000), (&sb, 3001), (&other, 3000)] {
        s.publish_preview_port(port, Some(PreviewAccessPolicy::Private))
            .await
            .unwrap();
    }
    let own = sb.get_preview_token(3000, None).await.unwrap().token;
    let other_port = sb.get_preview_token(3001, None).await.unwrap().token;
    let other_sandbox = other.get_preview_token(3000, None).await.unwrap().token;
    let short = sb
        .get_preview_token(3000, Some(Duration::from_secs(1)))
        .await
        .unwrap();
    assert!(short.expires_at.is_some());

    // a forged token: the other sandbox's claims re-signed with garbage, and own claims with
    // a bumped version under the genuine MAC
    let parts: Vec<&str> = own.split('.').collect();
    assert_eq!(parts.len(), 3, "{own}");
    let forged_mac = format!("{}.{}.{}", parts[0], parts[1], "A".repeat(parts[2].len()));
    let other_parts: Vec<&str> = other_sandbox.split('.').collect();
    let swapped_payload = format!("{}.{}.{}", parts[0], other_parts[1], parts[2]);
    for (what, tok) in [
        (
            "a token for another port of the same sandbox",
            other_port.as_str(),
        ),
        (
            "a token for the same port of another sandbox",
            &other_sandbox,
        ),
        ("a token with a forged MAC", &forged_mac),
        (
            "another sandbox's claims under this token's MAC",
            &swapped_payload,
        ),
        ("garbage", "spv1.bm9wZQ.bm9wZQ"),
        ("an empty token", ""),
    ] {
        let r = proxy.get(3000, &id, "/echo", &[(TOKEN_HEADER, tok)]);
        assert_eq!(r.status, 401, "{what}: {}", r.text());
        let q = format!("/echo?superserve_preview_token={}", tok.replace('=', "%3D"));
        let r = proxy.get(3000, &id, &q, &[]);
        assert_eq!(r.status, 401, "{what} as a link: {}", r.text());
        let cookie = format!("superserve_preview_token={tok}");
        let r = proxy.get(3000, &id, "/echo", &[("cookie", &cookie)]);
        assert_eq!(r.status, 401, "{what} as a cookie: {}", r.text());
    }
    // a stale token next to a valid one does not lock the holder out
    let r = proxy.get(
        3000,
        &id,
        "/echo",
        &[
            (TOKEN_HEADER, &own),
            ("cookie", "superserve_preview_token=stale"),
        ],
    );
    assert_eq!(r.status, 200);

    // the resolver-free form takes the header, never a cookie (previews share its origin)
    let path = format!("/_preview/3000-{id}/echo");
    let r = proxy.send("GET", &proxy.addr, &path, &[(TOKEN_HEADER, &own)], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().starts_with("GET /echo HTTP/1.1"), "{}", r.text());
    let planted = format!("superserve_preview_token={own}");
    let r = proxy.send("GET", &proxy.addr, &path, &[("cookie", &planted)], b"");
    assert_eq!(r.status, 401, "a cookie in the shared-origin form");

    // expiry (the token said 1 s)
    crate::flavor::sleep(Duration::from_millis(2100)).await;
    let r = proxy.get(3000, &id, "/", &[(TOKEN_HEADER, &short.token)]);
    assert_eq!(r.status, 401, "an expired token");
    assert!(r.text().contains("expired"), "{}", r.text());

    // the app never sees a preview credential: not the header, the cookie or the parameter
    let q = format!("/echo?a=1&superserve_preview_token={own}&b=2");
    let cookies = format!("theme=dark; superserve_preview_token={own}; lang=en");
    let r = proxy.get(3000, &id, &q, &[(TOKEN_HEADER, &own), ("cookie", &cookies)]);
    assert_eq!(r.status, 200);
    let seen = r.text();
    assert!(seen.starts_with("GET /echo?a=1&b=2 HTTP/1.1"), "{seen}");
    assert!(!seen.contains("spv1."), "the app saw a token: {seen}");
    assert!(seen.contains("theme=dark; lang=en"), "{seen}");
    let public = sandbox(&server, "preview-public", Some(PreviewAccessPolicy::Public)).await;
    start_app(&public, 3000).await;
    public.publish_preview_port(3000, None).await.unwrap();
    let r = proxy.get(
        3000,
        public.id(),
        &format!("/echo?superserve_preview_token={own}"),
        &[(TOKEN_HEADER, &own)],
    );
    assert_eq!(r.status, 200);
    assert!(!r.text().contains("spv1."), "{}", r.text());
    for s in [sb, other, public] {
        s.kill().await.unwrap();
    }
}

/// The three policies: `legacy_public` (every port, no publishing; a port published private
/// still needs a token), `public` (published ports only, no token), `private` (published
/// ports; a port published public needs none). An update changes the default for new ports
/// only.
#[dual]
pub async fn preview_access_policies() {
    local_only!("the local backend's preview proxy");
    let server = common::server();
    let proxy = Proxy::of(&server);

    let legacy = sandbox(&server, "preview-legacy", None).await;
    assert_eq!(legacy.preview_access(), &PreviewAccess::LegacyPublic);
    start_app(&legacy, 3000).await;
    start_app(&legacy, 4000).await;
    let r = proxy.get(3000, legacy.id(), "/", &[]);
    assert_eq!((r.status, r.text().as_str()), (200, "app-root"));
    let r = proxy.get(4000, legacy.id(), "/", &[]);
    assert_eq!(r.status, 200, "every port of a legacy sandbox");
    let list = legacy.list_preview_ports().await.unwrap();
    assert_eq!(list.preview_access, PreviewAccess::LegacyPublic);
    assert!(list.ports.is_empty());
    let p = legacy.publish_preview_port(4000, None).await.unwrap();
    assert_eq!(p.access, PreviewAccess::Public);
    legacy
        .publish_preview_port(4000, Some(PreviewAccessPolicy::Private))
        .await
        .unwrap();
    let r = proxy.get(4000, legacy.id(), "/", &[]);
    assert_eq!(
        r.status, 401,
        "a port published private on a legacy sandbox"
    );
    let t = legacy.get_preview_token(4000, None).await.unwrap();
    assert_eq!(t.preview_access, PreviewAccess::LegacyPublic);
    assert_eq!(
        proxy
            .get(4000, legacy.id(), "/", &[(TOKEN_HEADER, &t.token)])
            .status,
        200
    );

    let public = sandbox(&server, "preview-public", Some(PreviewAccessPolicy::Public)).await;
    start_app(&public, 3000).await;
    start_app(&public, 4000).await;
    let r = proxy.get(3000, public.id(), "/", &[]);
    assert_eq!(
        (r.status, r.error_code()),
        (404, Some("port_not_published"))
    );
    let p = public.publish_preview_port(3000, None).await.unwrap();
    assert_eq!(p.access, PreviewAccess::Public);
    assert_eq!(proxy.get(3000, public.id(), "/", &[]).status, 200);
    // publishing 3000 never opens 4000, even with a token for 3000
    let t = public.get_preview_token(3000, None).await.unwrap();
    let r = proxy.get(4000, public.id(), "/", &[(TOKEN_HEADER, &t.token)]);
    assert_eq!(r.status, 404);

    let private = sandbox(
        &server,
        "preview-private",
        Some(PreviewAccessPolicy::Private),
    )
    .await;
    start_app(&private, 3000).await;
    start_app(&private, 4000).await;
    let p = private.publish_preview_port(3000, None).await.unwrap();
    assert_eq!(p.access, PreviewAccess::Private);
    let p = private
        .publish_preview_port(4000, Some(PreviewAccessPolicy::Public))
        .await
        .unwrap();
    assert_eq!(p.access, PreviewAccess::Public);
    assert_eq!(proxy.get(3000, private.id(), "/", &[]).status, 401);
    assert_eq!(proxy.get(4000, private.id(), "/", &[]).status, 200);
    // a CORS preflight carries no credentials: the app answers it
    let r = proxy.send("OPTIONS", &proxy.host(3000, private.id()), "/", &[], b"");
    assert_ne!(r.status, 401);

    // an update changes the default for new ports, not published ones
    private
        .update(UpdateOptions::new().preview_access(PreviewAccessPolicy::Public))
        .await
        .unwrap();
    let list = private.list_preview_ports().await.unwrap();
    assert_eq!(list.preview_access, PreviewAccess::Public);
    assert_eq!(proxy.get(3000, private.id(), "/", &[]).status, 401);
    let p = private.publish_preview_port(5000, None).await.unwrap();
    assert_eq!(p.access, PreviewAccess::Public);
    // republishing without an access keeps the port's mode
    let p = private.publish_preview_port(3000, None).await.unwrap();
    assert_eq!(p.access, PreviewAccess::Private);
    for s in [legacy, public, private] {
        s.kill().await.unwrap();
    }
}

/// Clear error pages with the right status, never a hang or a 500, and nothing resumes:
/// unknown and deleted sandboxes (404), a port nobody listens on (502), a paused sandbox
/// (503, and it stays paused), ports that cannot be previewed (400), an address that is no
/// preview (404); the control plane answers 400 for a bad port and 404 for an unknown
/// sandbox, and works on a paused sandbox without resuming it.
#[dual]
pub async fn preview_error_pages_and_control_plane_answers() {
    local_only!("the local backend's preview proxy");
    let server = common::server();
    let proxy = Proxy::of(&server);
    let sb = sandbox(&server, "preview-errors", None).await;
    let id = sb.id().to_owned();

    let unknown = "00000000-0000-4000-8000-000000000000";
    let r = proxy.get(3000, unknown, "/", &[]);
    assert_eq!((r.status, r.error_code()), (404, Some("sandbox_not_found")));
    assert!(r.header("content-type").unwrap().starts_with("text/html"));
    assert!(r.text().contains(unknown), "{}", r.text());

    let r = proxy.get(3999, &id, "/", &[]);
    assert_eq!(
        (r.status, r.error_code()),
        (502, Some("port_not_listening"))
    );
    assert!(
        r.text().contains("Nothing is listening on port 3999"),
        "{}",
        r.text()
    );
    // the backend's own egress listener inside the sandbox is no app to preview
    let r = proxy.get(15001, &id, "/", &[]);
    assert_eq!(r.error_code(), Some("port_not_listening"));

    for host in [
        format!("80-{id}.localhost"),
        format!("49983-{id}.localhost"),
        format!("99999-{id}.localhost"),
    ] {
        let r = proxy.send("GET", &host, "/", &[], b"");
        assert_eq!(
            (r.status, r.error_code()),
            (400, Some("invalid_preview_port")),
            "{host}"
        );
    }
    for (host, path) in [
        ("localhost".to_owned(), "/".to_owned()),
        (proxy.addr.clone(), "/_preview/nope/".to_owned()),
    ] {
        let r = proxy.send("GET", &host, &path, &[], b"");
        assert_eq!(
            (r.status, r.error_code()),
            (404, Some("not_a_preview_address"))
        );
    }

    // control plane: bad ports and unknown sandboxes, straight to the server (the SDK checks
    // ports before sending)
    let cp = common::authority(server.base_url());
    let key = format!("x-api-key: {}", server.api_key());
    let post = |path: &str, body: &str| {
        raw_http(
            &cp,
            &format!("POST {path} HTTP/1.1\r\nhost: x\r\n{key}"),
            body.as_bytes(),
            Duration::from_secs(30),
        )
    };
    for body in [
        r#"{"port":80}"#,
        r#"{"port":49983}"#,
        r#"{"port":70000}"#,
        r#"{"port":-1}"#,
        r#"{"port":"3000"}"#,
        r#"{}"#,
        r#"{"port":3000,"access":"everyone"}"#,
        r#"{"port":3000,"bogus":1}"#,
    ] {
        let (status, text) = post(&format!("/sandboxes/{id}/preview-ports"), body);
        assert_eq!(status, 400, "{body}: {text}");
        assert!(text.contains("\"bad_request\""), "{text}");
    }
    for path in [
        format!("/sandboxes/{id}/preview-ports/80/token"),
        format!("/sandboxes/{id}/preview-ports/abc/token/rotate"),
    ] {
        assert_eq!(post(&path, "{}").0, 400, "{path}");
    }
    let (status, text) = post(
        &format!("/sandboxes/{id}/preview-ports/3000/token"),
        r#"{"expires_in_seconds":604801}"#,
    );
    assert_eq!(status, 400, "{text}");
    let (status, text) = post(&format!("/sandboxes/{id}/preview-ports/3000/token"), "{}");
    assert_eq!(status, 404, "a token of an unpublished port: {text}");
    let (status, _) = post(
        &format!("/sandboxes/{unknown}/preview-ports"),
        r#"{"port":3000}"#,
    );
    assert_eq!(status, 404);
    let ghost = Sandbox::create_with_config(&common::config(&server), CreateOptions::new("ghost"))
        .await
        .unwrap();
    ghost.kill().await.unwrap();
    let (status, _) = raw_http(
        &cp,
        &format!(
            "GET /sandboxes/{}/preview-ports HTTP/1.1\r\nhost: x\r\n{key}",
            ghost.id()
        ),
        b"",
        Duration::from_secs(30),
    );
    assert_eq!(status, 404, "a deleted sandbox");

    // a paused sandbox: 503, and previews and their calls leave it paused
    start_app(&sb, 3000).await;
    assert_eq!(proxy.get(3000, &id, "/", &[]).status, 200);
    sb.pause_with(PauseOptions::new().wait(true)).await.unwrap();
    let r = proxy.get(3000, &id, "/", &[]);
    assert_eq!((r.status, r.error_code()), (503, Some("sandbox_paused")));
    assert!(r.header("retry-after").is_some());
    sb.publish_preview_port(3000, Some(PreviewAccessPolicy::Private))
        .await
        .unwrap();
    let t = sb.get_preview_token(3000, None).await.unwrap();
    sb.rotate_preview_token(3000).await.unwrap();
    sb.list_preview_ports().await.unwrap();
    // auth comes first: without a token the state is not revealed
    assert_eq!(proxy.get(3000, &id, "/", &[]).status, 401);
    assert_eq!(
        proxy
            .get(3000, &id, "/", &[(TOKEN_HEADER, &t.token)])
            .status,
        401
    );
    let t = sb.get_preview_token(3000, None).await.unwrap();
    assert_eq!(
        proxy
            .get(3000, &id, "/", &[(TOKEN_HEADER, &t.token)])
            .status,
        503
    );
    let info = sb.get_info().await.unwrap();
    assert_eq!(info.status, superserve::SandboxStatus::Paused);
    sb.resume().await.unwrap();
    // processes keep running across pause/resume: the app answers again
    assert_eq!(
        proxy
            .get(3000, &id, "/", &[(TOKEN_HEADER, &t.token)])
            .status,
        200
    );

    // deleted: 404, the token with it
    sb.kill().await.unwrap();
    let r = proxy.get(3000, &id, "/", &[(TOKEN_HEADER, &t.token)]);
    assert_eq!((r.status, r.error_code()), (404, Some("sandbox_not_found")));
}

/// A WebSocket through the proxy to an echo server inside the sandbox (private port, header
/// token): messages both ways, the token header stripped before the app; without a token the
/// handshake is refused.
#[dual]
pub async fn preview_websocket_echo() {
    local_only!("the local backend's preview proxy");
    use tokio_tungstenite::tungstenite::Message;
    let server = common::server();
    let proxy = Proxy::of(&server);
    let sb = sandbox(&server, "preview-ws", Some(PreviewAccessPolicy::Private)).await;
    sb.files().write("/srv/ws.py", WS_ECHO).await.unwrap();
    sh(&sb, "nohup python3 /srv/ws.py 8765 >/tmp/ws.log 2>&1 &").await;
    sb.wait_for_port(8765, WaitOptions::new()).await.unwrap();
    sb.publish_preview_port(8765, None).await.unwrap();
    let token = sb.get_preview_token(8765, None).await.unwrap().token;

    let refused = websocket(&proxy, 8765, sb.id(), "/ws", &[])
        .map(drop)
        .unwrap_err();
    assert_eq!(refused, 401);

    let mut ws = websocket(&proxy, 8765, sb.id(), "/ws", &[(TOKEN_HEADER, &token)])
        .unwrap_or_else(|status| panic!("handshake refused: {status}"));
    let first = ws.read().unwrap();
    assert_eq!(first, Message::text("token-header:absent"));
    for i in 0..20 {
        let msg = format!("message {i} {}", "x".repeat(i * 1000));
        ws.send(Message::text(msg.clone())).unwrap();
        assert_eq!(ws.read().unwrap(), Message::text(format!("echo:{msg}")));
    }
    let blob: Vec<u8> = common::noise(200_000, 7);
    ws.send(Message::binary(blob.clone())).unwrap();
    let mut expected = b"echo:".to_vec();
    expected.extend(&blob);
    assert_eq!(ws.read().unwrap(), Message::binary(expected));
    ws.close(None).unwrap();
    // the close handshake completes through the tunnel
    loop {
        match ws.read() {
            Ok(Message::Close(_)) | Err(_) => break,
            Ok(_) => {}
        }
    }
    sb.kill().await.unwrap();
}

/// Bodies stream both ways: an upload of several MiB in chunks reaches the app whole; the
/// first chunk of a response reaches the client while the app still holds the second
/// (the app sends it only after the client saw the first); a download arrives whole; and a
/// redirect of the app keeps the resolver-free form's prefix.
#[dual]
pub async fn preview_streams_bodies_both_ways() {
    local_only!("the local backend's preview proxy");
    use std::io::{BufReader, Write};
    let server = common::server();
    let proxy = Proxy::of(&server);
    let sb = sandbox(&server, "preview-stream", None).await;
    start_app(&sb, 3000).await;
    let host = proxy.host(3000, sb.id());

    // upload, chunked, 8 MiB
    let data = common::noise(8 << 20, 3);
    let mut s = std::net::TcpStream::connect(&proxy.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "POST /sha256 HTTP/1.1\r\nhost: {host}\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    for chunk in data.chunks(300_000) {
        write!(s, "{:x}\r\n", chunk.len()).unwrap();
        s.write_all(chunk).unwrap();
        s.write_all(b"\r\n").unwrap();
    }
    s.write_all(b"0\r\n\r\n").unwrap();
    let r = crate::common::preview::read_response(&mut BufReader::new(s));
    let expected = sha256_hex(&sb, &data).await;
    assert_eq!(r.text(), format!("{} {expected}", data.len()));

    // a response streamed: `second` is only sent once the client has seen `first`
    let mut s = std::net::TcpStream::connect(&proxy.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "GET /slow HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut reader = BufReader::new(s);
    let (status, headers) = read_head(&mut reader);
    assert_eq!(status, 200);
    assert!(headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v == "chunked"));
    assert_eq!(read_chunk(&mut reader).unwrap(), b"first\n");
    sh(&sb, "touch /tmp/go").await;
    assert_eq!(read_chunk(&mut reader).unwrap(), b"second\n");
    assert!(read_chunk(&mut reader).is_none());

    // a download, through the resolver-free form too
    let n = 20 << 20;
    let r = proxy.get(3000, sb.id(), &format!("/bytes/{n}"), &[]);
    assert_eq!((r.status, r.body.len()), (200, n));
    assert!(r
        .body
        .chunks(65536)
        .all(|c| c.iter().enumerate().all(|(i, b)| *b == i as u8)));
    let prefix = format!("/_preview/3000-{}", sb.id());
    let r = proxy.send(
        "GET",
        &proxy.addr,
        &format!("{prefix}/bytes/1000"),
        &[],
        b"",
    );
    assert_eq!((r.status, r.body.len()), (200, 1000));
    let r = proxy.send("GET", &proxy.addr, &format!("{prefix}/moved"), &[], b"");
    assert_eq!(r.status, 302);
    assert_eq!(
        r.header("location"),
        Some(format!("{prefix}/echo").as_str())
    );
    let r = proxy.send("GET", &proxy.addr, &format!("{prefix}/echo"), &[], b"");
    assert!(
        r.text()
            .to_ascii_lowercase()
            .contains(&format!("x-forwarded-prefix: {prefix}")),
        "{}",
        r.text()
    );

    // the proxy's own connection into the sandbox, without the proxy (the benchmark's
    // baseline): the same app, no forwarding headers; nothing listening is refused
    let mut direct = server.connect_to_sandbox_port(sb.id(), 3000).unwrap();
    direct
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    direct
        .write_all(b"GET /echo HTTP/1.1\r\nhost: direct\r\nconnection: close\r\n\r\n")
        .unwrap();
    let r = crate::common::preview::read_response(&mut BufReader::new(direct));
    assert_eq!(r.status, 200);
    assert!(r.text().starts_with("GET /echo HTTP/1.1"), "{}", r.text());
    assert!(
        !r.text().to_ascii_lowercase().contains("x-forwarded"),
        "{}",
        r.text()
    );
    let err = server.connect_to_sandbox_port(sb.id(), 3999).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    sb.kill().await.unwrap();
    let err = server.connect_to_sandbox_port(sb.id(), 3000).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
}

/// The proxy frames HTTP/1.1 itself: requests pipelined on one connection are answered in
/// order (a short body, a long one that is spliced, a `HEAD` whose answer has no body, then
/// one more); `Expect: 100-continue` gets its interim answer before the body is sent; an
/// HTTP/1.0 client is answered (a chunked answer without its framing) and its connection
/// closed; a request head past the proxy's limit gets `431`; a request with both
/// `Content-Length` and `Transfer-Encoding` (a smuggling attempt) is refused with `400`.
#[dual]
pub async fn preview_proxy_frames_http11_itself() {
    local_only!("the local backend's preview proxy");
    use std::io::{BufReader, Read, Write};
    let server = common::server();
    let proxy = Proxy::of(&server);
    let sb = sandbox(&server, "preview-framing", None).await;
    start_app(&sb, 3000).await;
    let host = proxy.host(3000, sb.id());
    let connect = || {
        let s = std::net::TcpStream::connect(&proxy.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        s
    };
    let pattern = |body: &[u8]| body.iter().enumerate().all(|(i, b)| *b == i as u8);

    let mut s = connect();
    let mut r = BufReader::new(s.try_clone().unwrap());
    write!(
        s,
        "GET /bytes/1000 HTTP/1.1\r\nhost: {host}\r\n\r\n\
         GET /bytes/300000 HTTP/1.1\r\nhost: {host}\r\n\r\n\
         HEAD /bytes/5 HTTP/1.1\r\nhost: {host}\r\n\r\n\
         GET /echo HTTP/1.1\r\nhost: {host}\r\n\r\n"
    )
    .unwrap();
    let a = crate::common::preview::read_response(&mut r);
    assert_eq!((a.status, a.body.len()), (200, 1000));
    assert!(pattern(&a.body));
    let b = crate::common::preview::read_response(&mut r);
    assert_eq!((b.status, b.body.len()), (200, 300_000));
    assert!(pattern(&b.body));
    // the app has no HEAD handler: its 501 names a length but carries no body
    let (status, _) = read_head(&mut r);
    assert_eq!(status, 501);
    let d = crate::common::preview::read_response(&mut r);
    assert_eq!(d.status, 200);
    assert!(d.text().starts_with("GET /echo HTTP/1.1"), "{}", d.text());

    // Expect: 100-continue, on the same connection
    let data = common::noise(100_000, 9);
    write!(
        s,
        "POST /sha256 HTTP/1.1\r\nhost: {host}\r\ncontent-length: {}\r\n\
         expect: 100-continue\r\n\r\n",
        data.len()
    )
    .unwrap();
    let (status, _) = read_head(&mut r);
    assert_eq!(status, 100);
    s.write_all(&data).unwrap();
    let e = crate::common::preview::read_response(&mut r);
    let expected = sha256_hex(&sb, &data).await;
    assert_eq!(e.text(), format!("{} {expected}", data.len()));

    // HTTP/1.0: answered, then closed
    let mut s = connect();
    write!(s, "GET /bytes/10 HTTP/1.0\r\nhost: {host}\r\n\r\n").unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    let text = String::from_utf8_lossy(&all).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 200"), "{text}");
    assert!(text.contains("connection: close"), "{text}");
    assert!(all.ends_with(&(0u8..10).collect::<Vec<_>>()), "{text}");
    // a chunked answer reaches an HTTP/1.0 client without its chunk framing
    sh(&sb, "touch /tmp/go").await;
    let mut s = connect();
    write!(s, "GET /slow HTTP/1.0\r\nhost: {host}\r\n\r\n").unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    let text = String::from_utf8_lossy(&all);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        !text.to_ascii_lowercase().contains("transfer-encoding"),
        "{text}"
    );
    assert!(text.ends_with("\r\n\r\nfirst\nsecond\n"), "{text}");

    // a request head longer than the proxy takes: 431, closed
    let mut s = connect();
    let big = "x".repeat(70 * 1024);
    write!(s, "GET / HTTP/1.1\r\nhost: {host}\r\nx-big: {big}\r\n\r\n").unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    let text = String::from_utf8_lossy(&all).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 431"), "{text}");
    assert!(
        text.contains("x-superserve-preview-error: request_head_too_large"),
        "{text}"
    );

    // Content-Length and Transfer-Encoding together: refused, closed
    let mut s = connect();
    write!(
        s,
        "POST /sha256 HTTP/1.1\r\nhost: {host}\r\ncontent-length: 4\r\n\
         transfer-encoding: chunked\r\n\r\n0\r\n\r\nGET /echo HTTP/1.1\r\nhost: {host}\r\n\r\n"
    )
    .unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    let text = String::from_utf8_lossy(&all).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 400"), "{text}");
    assert!(
        text.contains("x-superserve-preview-error: invalid_request"),
        "{text}"
    );
    assert!(
        !text.contains("get /echo"),
        "the smuggled request reached the app: {text}"
    );
    sb.kill().await.unwrap();
}

/// The SHA-256 of `data` as the sandbox computes it (the reference for the upload).
#[dual]
async fn sha256_hex(sb: &Sandbox, data: &[u8]) -> String {
    sb.files().write("/tmp/ref.bin", data).await.unwrap();
    sh(sb, "sha256sum /tmp/ref.bin | cut -d' ' -f1")
        .await
        .trim()
        .to_owned()
}

/// `wait_for_port` returns once a server that starts late answers (TCP, and HTTP on a path),
/// and times out, typed, for a port nobody opens.
#[dual]
pub async fn wait_for_port_waits_for_a_late_server() {
    local_only!("the local backend's preview proxy");
    let server = common::server();
    let proxy = Proxy::of(&server);
    let sb = sandbox(&server, "preview-late", None).await;
    sb.files().write("/srv/app.py", APP).await.unwrap();
    // the server starts a second after /tmp/start appears
    sh(
        &sb,
        "(while [ ! -e /tmp/start ]; do sleep 0.1; done; sleep 1; exec python3 /srv/app.py 3000) \
         >/tmp/late.log 2>&1 </dev/null &",
    )
    .await;
    // nothing listens yet
    assert_eq!(proxy.get(3000, sb.id(), "/", &[]).status, 502);
    sh(&sb, "touch /tmp/start").await;
    sb.wait_for_port(
        3000,
        WaitOptions::new()
            .http_path("/echo")
            .timeout(Duration::from_secs(60)),
    )
    .await
    .unwrap();
    let r = proxy.get(3000, sb.id(), "/", &[]);
    assert_eq!((r.status, r.text().as_str()), (200, "app-root"));
    sb.wait_for_port(3000, WaitOptions::new()).await.unwrap();
    let err = sb
        .wait_for_port(
            3999,
            WaitOptions::new()
                .timeout(Duration::from_secs(2))
                .interval(Duration::from_millis(200)),
        )
        .await
        .unwrap_err();
    assert_eq!(err.timeout_kind(), Some(TimeoutKind::Operation), "{err:?}");
    sb.kill().await.unwrap();
}

/// Published ports and token versions survive a restart of the backend: the list is the
/// same, a token of the current version opens the port again once the app runs, a rotated
/// one stays refused.
#[dual]
pub async fn preview_ports_survive_a_restart() {
    local_only!("restarting the local backend on its data directory");
    let dir = common::temp_path("preview-restart");
    let start = || {
        LocalServer::builder()
            .data_dir(&dir)
            .start()
            .unwrap_or_else(|e| panic!("local backend failed to start: {e}"))
    };
    let server = start();
    let sb = sandbox(
        &server,
        "preview-restart",
        Some(PreviewAccessPolicy::Private),
    )
    .await;
    let id = sb.id().to_owned();
    sb.publish_preview_port(3000, None).await.unwrap();
    sb.publish_preview_port(4000, Some(PreviewAccessPolicy::Public))
        .await
        .unwrap();
    let old = sb.get_preview_token(3000, None).await.unwrap().token;
    sb.rotate_preview_token(3000).await.unwrap();
    let current = sb.get_preview_token(3000, None).await.unwrap().token;
    let before = sb.list_preview_ports().await.unwrap();
    server.shutdown();

    let server = start();
    let proxy = Proxy::of(&server);
    let sb = Sandbox::connect_with_config(&common::config(&server), &id)
        .await
        .unwrap();
    let after = sb.list_preview_ports().await.unwrap();
    assert_eq!(after, before);
    start_app(&sb, 3000).await;
    let r = proxy.get(3000, &id, "/", &[(TOKEN_HEADER, &current)]);
    assert_eq!((r.status, r.text().as_str()), (200, "app-root"));
    assert_eq!(
        proxy.get(3000, &id, "/", &[(TOKEN_HEADER, &old)]).status,
        401
    );
    assert_eq!(proxy.get(3000, &id, "/", &[]).status, 401);
    sb.kill().await.unwrap();
    server.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
}

/// The preview listener shares the backend's HTTP layer: with every slot held by a WebSocket
/// tunnel, a new client gets a fast `503` with `Retry-After` (the control plane keeps its own
/// slots), a client that never finishes its request head is closed, and once the tunnels end
/// previews are served again.
#[dual]
pub async fn the_preview_listener_survives_hostile_clients() {
    local_only!("the local backend's preview proxy");
    use std::io::{Read, Write};
    let server = LocalServer::builder()
        .max_connections(3)
        .header_read_timeout(Duration::from_secs(1))
        .start()
        .unwrap();
    let proxy = Proxy::of(&server);
    let sb = sandbox(&server, "preview-hostile", None).await;
    sb.files().write("/srv/ws.py", WS_ECHO).await.unwrap();
    sh(&sb, "nohup python3 /srv/ws.py 8765 >/tmp/ws.log 2>&1 &").await;
    sb.wait_for_port(8765, WaitOptions::new()).await.unwrap();
    let tunnels: Vec<_> = (0..3)
        .map(|_| {
            let mut ws = websocket(&proxy, 8765, sb.id(), "/", &[]).unwrap();
            ws.read().unwrap();
            ws
        })
        .collect();
    let r = proxy.get(8765, sb.id(), "/", &[]);
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.header("retry-after").is_some());
    let (status, _) = raw_http(
        &common::authority(server.base_url()),
        "GET /health HTTP/1.1\r\nhost: x",
        b"",
        Duration::from_secs(30),
    );
    assert_eq!(status, 200, "the control plane has slots of its own");
    drop(tunnels);

    // a request head that never ends is cut off
    let mut slow = std::net::TcpStream::connect(&proxy.addr).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nhost: x").unwrap();
    let mut sink = Vec::new();
    let closed = slow.read_to_end(&mut sink).is_ok();
    assert!(closed, "the slow client was not closed");

    let mut served = false;
    for _ in 0..200 {
        if proxy.get(8765, sb.id(), "/", &[]).status != 503 {
            served = true;
            break;
        }
        crate::flavor::sleep(Duration::from_millis(50)).await;
    }
    assert!(served, "the preview listener never served again");
    sb.kill().await.unwrap();
}

/// `superserve-local` prints `SUPERSERVE_PREVIEW_URL` with its other lines; a configuration
/// made of them gives preview URLs that work (curl resolves `*.localhost` by itself).
#[dual]
pub async fn superserve_local_prints_the_preview_address() {
    local_only!("the superserve-local binary");
    let backend = common::Backend::start_with_fd_limit(4096, &[]);
    assert!(
        backend.preview_url.starts_with("http://localhost:"),
        "{}",
        backend.preview_url
    );
    let config = backend.config();
    let sb = Sandbox::create_with_config(&config, CreateOptions::new("printed"))
        .await
        .unwrap();
    start_app(&sb, 3000).await;
    let url = sb.get_preview_url(3000).unwrap();
    let port = backend.preview_url.rsplit(':').next().unwrap();
    assert_eq!(url, format!("http://3000-{}.localhost:{port}", sb.id()));
    assert_eq!(curl(&[&format!("{url}/")]), "app-root");
    sb.kill().await.unwrap();
}

/// Headless Chromium (Debian's `chromium`) opens a signed URL of a page served inside a
/// sandbox: the rendered DOM has the page's content and the page's own `location.href` has
/// no token (the proxy moved it into a cookie and redirected). Without the token Chromium
/// gets the refusal page.
#[dual]
pub async fn preview_in_a_real_browser() {
    local_only!("the local backend's preview proxy");
    let server = common::server();
    let sb = sandbox(
        &server,
        "preview-browser",
        Some(PreviewAccessPolicy::Private),
    )
    .await;
    let page = r#"<!doctype html><html><head><title>sandbox page</title></head><body>
<p id="content">rendered inside the sandbox</p><p id="where"></p>
<script>document.getElementById("where").textContent = "href=" + location.href + ";";</script>
</body></html>"#;
    start_http_server(&sb, 3000, page).await;
    sb.publish_preview_port(3000, None).await.unwrap();
    let url = format!("{}/", sb.get_preview_url(3000).unwrap());

    let refused = dump_dom(&url);
    assert!(refused.contains("Preview token required"), "{refused}");
    assert!(
        !refused.contains("rendered inside the sandbox"),
        "{refused}"
    );

    let link = sb.get_signed_preview_url(3000, None).await.unwrap();
    let dom = dump_dom(&link);
    assert!(dom.contains("rendered inside the sandbox"), "{dom}");
    assert!(dom.contains(&format!("href={url};")), "{dom}");
    assert!(
        !dom.contains("superserve_preview_token"),
        "the token is still in the URL: {dom}"
    );
    sb.kill().await.unwrap();
}

/// `chromium --headless --dump-dom URL` with a fresh profile: the DOM after load.
fn dump_dom(url: &str) -> String {
    use std::process::{Command, Stdio};
    let profile = common::temp_path("preview-chromium");
    let child = crate::common::preview::spawn_chromium(
        &profile,
        &["--virtual-time-budget=5000", "--dump-dom", url],
        Stdio::piped(),
        Stdio::piped(),
    );
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(Duration::from_secs(120)) {
        Ok(out) => out.expect("chromium"),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("chromium did not finish within 120 s")
        }
    };
    let _ = std::fs::remove_dir_all(&profile);
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
