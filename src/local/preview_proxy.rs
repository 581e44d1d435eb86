//! The preview listener: a reverse proxy from `http://{port}-{id}.localhost:{P}/…` (or
//! `http://{listener}/_preview/{port}-{id}/…`) to `port` inside the sandbox's network
//! namespace, with the hosted service's access rules.
//!
//! Per request, in this order (as the hosted edge): the address names a sandbox and a port
//! (else `400`/`404`); the sandbox exists (`404`); under `public` and `private` the port is
//! published (`404`); a private port gets a valid token from the `X-Superserve-Preview-Token`
//! header, the `superserve_preview_token` cookie or query parameter (`401`; a valid query
//! token on a `GET` is moved into a host-only cookie by a `302` to the same URL without it);
//! only then is the sandbox's state revealed (`503` while it is paused or not running), and
//! the request is forwarded (`502` when nothing listens on the port, `504` when the app does
//! not accept the connection). Nothing here resumes a sandbox. The token header, cookie and
//! query parameter are removed before anything reaches the app, on every port.
//!
//! The proxy frames HTTP/1.1 itself ([`relay`]): requests and responses are streamed both
//! ways (bodies are never buffered; a body of known length, or one that lasts until the app
//! closes, is spliced from socket to socket without passing through this process), and a
//! WebSocket (any `Upgrade`) becomes a tunnel. Connections to apps are kept alive and reused. A request, response or tunnel in progress ends when its sandbox is paused or
//! deleted.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, Version};
use axum::response::{IntoResponse, Response};
use bytes::BytesMut;
use tokio::net::TcpStream;

use super::app::{App, Entry};
use super::http::{serve_raw, ConnHooks, Limits, RawConn};
use super::model::Status;
use super::preview::netns::DialError;
use super::preview::relay::{self, Framing, HeadError, RequestHead, ResponseHead};
use super::preview::sys::Pipe;
use super::preview::token::Refusal;
use super::preview::{check_port, Access, TOKEN_COOKIE, TOKEN_HEADER, TOKEN_QUERY_PARAM};
use super::reply::form_pairs;
use super::runtime::Runtime;

/// The path prefix of the form that needs no resolver for `*.localhost` names.
pub(crate) const PATH_PREFIX: &str = "/_preview/";
/// How often a request in progress checks that its sandbox is still running.
const LIVENESS_INTERVAL: Duration = Duration::from_millis(250);

/// How a request named its preview.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Form {
    /// `{port}-{id}.<domain>` in `Host`.
    Host,
    /// `/_preview/{port}-{id}` in the path: the prefix, and what follows it (`/…`).
    Path { prefix: String, rest: String },
}

/// The preview a request is for.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    port: u16,
    id: String,
    form: Form,
}

/// Parses `{port}-{id}` (`None`: not of that shape; `Err`: a port that cannot be previewed).
fn parse_label(label: &str) -> Option<Result<(u16, String), String>> {
    let (port, id) = label.split_once('-')?;
    let id_ok = !id.is_empty()
        && id.len() <= 64
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if port.is_empty() || port.len() > 6 || !port.bytes().all(|b| b.is_ascii_digit()) || !id_ok {
        return None;
    }
    let port: i64 = port.parse().ok()?;
    Some(check_port(port).map(|p| (p, id.to_ascii_lowercase())))
}

/// The host of a request without its port (`Host`, else the absolute URI's).
fn request_host(req: &Request) -> Option<String> {
    let raw = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri().authority().map(|a| a.as_str().to_owned()))?;
    let host = if raw.starts_with('[') {
        raw.split(']').next().map(|h| format!("{h}]"))?
    } else {
        raw.split(':').next()?.to_owned()
    };
    Some(host.trim_end_matches('.').to_ascii_lowercase())
}

/// Which preview a request is for.
fn target(req: &Request) -> Result<Target, Page> {
    let bad_port = |why: String| {
        page(
            StatusCode::BAD_REQUEST,
            "invalid_preview_port",
            "This port cannot be previewed",
            &why,
        )
    };
    if let Some(host) = request_host(req) {
        if let Some((label, _domain)) = host.split_once('.') {
            if let Some(parsed) = parse_label(label) {
                let (port, id) = parsed.map_err(bad_port)?;
                return Ok(Target {
                    port,
                    id,
                    form: Form::Host,
                });
            }
        }
    }
    let path = req.uri().path();
    if let Some(after) = path.strip_prefix(PATH_PREFIX) {
        let (label, rest) = match after.find('/') {
            Some(i) => (&after[..i], &after[i..]),
            None => (after, "/"),
        };
        if let Some(parsed) = parse_label(label) {
            let (port, id) = parsed.map_err(bad_port)?;
            return Ok(Target {
                port,
                id,
                form: Form::Path {
                    prefix: format!("{PATH_PREFIX}{label}"),
                    rest: rest.to_owned(),
                },
            });
        }
    }
    Err(page(
        StatusCode::NOT_FOUND,
        "not_a_preview_address",
        "Not a preview address",
        "Preview URLs look like http://{port}-{sandbox id}.localhost:{this port}/ or, for \
         clients that cannot resolve *.localhost names, \
         http://{this address}/_preview/{port}-{sandbox id}/.",
    ))
}

/// The preview credentials a request carries, in the order they are tried.
#[derive(Default)]
struct Credentials {
    header: Vec<String>,
    cookie: Vec<String>,
    query: Vec<String>,
}

/// Splits a raw query into the preview token values and the other parameters (kept as sent).
fn split_query(query: &str) -> (Vec<String>, Vec<&str>) {
    let mut tokens = Vec::new();
    let mut rest = Vec::new();
    for part in query.split('&').filter(|p| !p.is_empty()) {
        match form_pairs(part).into_iter().next() {
            Some((k, v)) if k == TOKEN_QUERY_PARAM => tokens.push(v),
            _ => rest.push(part),
        }
    }
    (tokens, rest)
}

/// The values of the preview cookie in `Cookie` headers, and the headers without it.
fn split_cookies(headers: &HeaderMap) -> (Vec<String>, Option<String>) {
    let mut tokens = Vec::new();
    let mut rest = Vec::new();
    for v in headers.get_all(header::COOKIE) {
        let Ok(v) = v.to_str() else { continue };
        for c in v.split(';').map(str::trim).filter(|c| !c.is_empty()) {
            match c.split_once('=') {
                Some((name, value)) if name.trim() == TOKEN_COOKIE => {
                    tokens.push(value.trim().trim_matches('"').to_owned())
                }
                _ => rest.push(c),
            }
        }
    }
    let rest = (!rest.is_empty()).then(|| rest.join("; "));
    (tokens, rest)
}

impl Credentials {
    fn of(req: &Request, form: &Form) -> Credentials {
        let header = req
            .headers()
            .get_all(TOKEN_HEADER)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(|v| v.trim().to_owned())
            .collect();
        // the path form shares one origin between previews: no cookies there
        let cookie = match form {
            Form::Host => split_cookies(req.headers()).0,
            Form::Path { .. } => Vec::new(),
        };
        let query = split_query(req.uri().query().unwrap_or("")).0;
        Credentials {
            header,
            cookie,
            query,
        }
    }

    fn is_empty(&self) -> bool {
        self.header.is_empty() && self.cookie.is_empty() && self.query.is_empty()
    }
}

/// How a private port's request was let through.
enum Granted {
    /// A header or cookie token.
    Carried,
    /// A query token (with its expiry, unix seconds), to be moved into the cookie.
    Query(String, Option<i64>),
}

fn authorize(app: &App, t: &Target, creds: &Credentials) -> Result<Granted, Refusal> {
    let mut refusal = Refusal::Invalid;
    for tok in creds.header.iter().chain(&creds.cookie) {
        match app.previews.check(tok, &t.id, t.port) {
            Ok(_) => return Ok(Granted::Carried),
            Err(r) => refusal = r,
        }
    }
    for tok in &creds.query {
        match app.previews.check(tok, &t.id, t.port) {
            Ok(exp) => return Ok(Granted::Query(tok.clone(), exp)),
            Err(r) => refusal = r,
        }
    }
    Err(refusal)
}

fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE) && relay::connection_has(headers, "upgrade")
}

/// What the proxy does with a request.
enum Decision {
    /// Answers it itself (an error page, the signed link's redirect).
    Answer(Response),
    /// Relays it to the app.
    Forward(Box<Forward>),
}

/// A request to relay, with the sandbox it goes to.
struct Forward {
    entry: Arc<Entry>,
    rt: Arc<Runtime>,
    t: Target,
    req: Request,
}

/// Routes a request and applies the access rules.
async fn decide(app: &App, req: Request) -> Decision {
    use Decision::Answer;
    let t = match target(&req) {
        Ok(t) => t,
        Err(page) => return Answer(page.into_response()),
    };
    let Some(entry) = app.get(&t.id) else {
        return Answer(
            page(
                StatusCode::NOT_FOUND,
                "sandbox_not_found",
                "Sandbox not found",
                &format!("There is no sandbox {} on this backend.", t.id),
            )
            .into_response(),
        );
    };
    let preview_access = entry.with(|r| r.preview_access.clone());
    let published = app.previews.port(&t.id, t.port).filter(|s| s.published);
    let private = match (preview_access.as_str(), published) {
        (_, Some(s)) => s.access == Access::Private,
        ("legacy_public", None) => false,
        (_, None) => {
            return Answer(
                page(
                    StatusCode::NOT_FOUND,
                    "port_not_published",
                    "Port not published",
                    &format!(
                        "Port {} of sandbox {} is not published: publish it first \
                         (publish_preview_port).",
                        t.port, t.id
                    ),
                )
                .into_response(),
            )
        }
    };
    if private && req.method() != Method::OPTIONS {
        let creds = Credentials::of(&req, &t.form);
        match authorize(app, &t, &creds) {
            Ok(Granted::Query(token, exp))
                if t.form == Form::Host
                    && req.method() == Method::GET
                    && !is_upgrade(req.headers()) =>
            {
                return Answer(redirect_into_cookie(req.uri(), &token, exp));
            }
            Ok(_) => {}
            Err(refusal) => {
                let why = if creds.is_empty() {
                    "This port is private: send the token of get_preview_token in the header it \
                     names, or open a link of get_signed_preview_url."
                } else if refusal == Refusal::Expired {
                    "The preview token has expired: get a new one."
                } else {
                    "The preview token was refused: it is not for this port, or the port's \
                     tokens were rotated, or the port was unpublished."
                };
                return Answer(
                    page(
                        StatusCode::UNAUTHORIZED,
                        "preview_token_required",
                        "Preview token required",
                        why,
                    )
                    .into_response(),
                );
            }
        }
    }
    let rt = match running(&entry).await {
        Ok(rt) => rt,
        Err(page) => return Answer(page.into_response()),
    };
    Decision::Forward(Box::new(Forward { entry, rt, t, req }))
}

/// The sandbox's runtime when it is running (never starts or resumes anything).
async fn running(entry: &Arc<Entry>) -> Result<Arc<Runtime>, Page> {
    let unavailable = |code: &'static str, title: &str, why: String| {
        let mut r = page(StatusCode::SERVICE_UNAVAILABLE, code, title, &why);
        r.0.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        r
    };
    match entry.status() {
        Status::Active => {}
        Status::Paused | Status::Pausing => {
            return Err(unavailable(
                "sandbox_paused",
                "Sandbox paused",
                format!(
                    "Sandbox {} is {}: resume it to reach its previews.",
                    entry.id,
                    entry.status().as_str()
                ),
            ));
        }
        other => {
            return Err(unavailable(
                "sandbox_unavailable",
                "Sandbox not running",
                format!("Sandbox {} is {}.", entry.id, other.as_str()),
            ))
        }
    }
    let rt = entry.rt.read().await.clone();
    match rt {
        Some(rt) if !rt.is_dead() && !entry.is_deleted() => Ok(rt),
        _ => Err(unavailable(
            "sandbox_unavailable",
            "Sandbox not running",
            format!("Sandbox {} has no running processes.", entry.id),
        )),
    }
}

/// A connection to `port` inside sandbox `id` made as the proxy makes its own (no access
/// rules apply), as a blocking stream.
pub(crate) async fn connect_direct(
    app: &App,
    id: &str,
    port: u16,
) -> std::io::Result<std::net::TcpStream> {
    use std::io::{Error, ErrorKind};
    let entry = app
        .get(id)
        .ok_or_else(|| Error::new(ErrorKind::NotFound, format!("no sandbox {id}")))?;
    let rt = running(&entry)
        .await
        .map_err(|_| Error::other(format!("sandbox {id} is not running")))?;
    let stream = app
        .previews
        .dialer()
        .connect(rt.net_ns(), port)
        .await
        .map_err(|e| match e {
            DialError::Refused => Error::new(
                ErrorKind::ConnectionRefused,
                format!("nothing listens on port {port} in sandbox {id}"),
            ),
            DialError::TimedOut => Error::new(ErrorKind::TimedOut, "connection timed out"),
            DialError::Io(e) => e,
        })?;
    let stream = stream.into_std()?;
    stream.set_nonblocking(false)?;
    Ok(stream)
}

/// Resolves once the sandbox is no longer running in `rt` (paused, deleted, restarted).
fn stopped(entry: Arc<Entry>, rt: Weak<Runtime>) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    Box::pin(async move {
        loop {
            tokio::time::sleep(LIVENESS_INTERVAL).await;
            let alive = !entry.is_deleted()
                && entry.status() == Status::Active
                && rt.upgrade().is_some_and(|rt| !rt.is_dead());
            if !alive {
                return;
            }
        }
    })
}

/// Headers that belong to one connection, never forwarded.
const HOP_BY_HOP: &[HeaderName] = &[
    header::CONNECTION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
];

/// Removes hop-by-hop headers (and those `Connection` names); with `upgrade`, keeps the
/// `Connection: upgrade` / `Upgrade` pair.
fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .filter(|n| !(upgrade && n == header::UPGRADE))
        .collect();
    let up = headers.get(header::UPGRADE).cloned();
    for n in named.iter().chain(HOP_BY_HOP) {
        headers.remove(n);
    }
    for n in ["keep-alive", "proxy-connection"] {
        headers.remove(n);
    }
    if let (true, Some(up)) = (upgrade, up) {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, up);
    }
}

/// The request as the app gets it: origin-form target without the preview prefix or token,
/// no preview credentials, no hop-by-hop headers, `X-Forwarded-*` added.
fn upstream_request(t: &Target, req: Request, upgrade: bool) -> Result<Request, Page> {
    let (mut parts, body) = req.into_parts();
    let path = match &t.form {
        Form::Host => parts.uri.path().to_owned(),
        Form::Path { rest, .. } => rest.clone(),
    };
    let (_, rest) = split_query(parts.uri.query().unwrap_or(""));
    let target = if rest.is_empty() {
        path
    } else {
        format!("{path}?{}", rest.join("&"))
    };
    let host = parts.headers.get(header::HOST).cloned();
    let headers = &mut parts.headers;
    strip_hop_by_hop(headers, upgrade);
    headers.remove(TOKEN_HEADER);
    let (_, cookies) = split_cookies(headers);
    headers.remove(header::COOKIE);
    if let Some(c) = cookies.and_then(|c| HeaderValue::from_str(&c).ok()) {
        headers.insert(header::COOKIE, c);
    }
    headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));
    if let Some(h) = host {
        headers.insert("x-forwarded-host", h);
    }
    if let Form::Path { prefix, .. } = &t.form {
        if let Ok(v) = HeaderValue::from_str(prefix) {
            headers.insert("x-forwarded-prefix", v);
        }
    }
    let uri: Uri = target.parse().map_err(|_| {
        page(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Invalid request target",
            "The request target cannot be forwarded.",
        )
    })?;
    parts.uri = uri;
    parts.version = axum::http::Version::HTTP_11;
    Ok(Request::from_parts(parts, body))
}

/// Serves the preview proxy on `listener` (the shared accept loop: connection cap, timeouts,
/// shedding): its own HTTP/1.1 framing (bodies are spliced between the sockets), routing (by
/// `Host` or path) and access rules, no journal (its requests carry preview tokens) and no
/// fault rules.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    app: Arc<App>,
    stop: tokio::sync::watch::Receiver<bool>,
    limits: Limits,
) {
    serve_raw(
        listener,
        move |conn| serve_connection(app.clone(), conn),
        stop,
        limits,
    )
    .await
}

/// Serves one connection of the preview listener: its requests one after another (HTTP/1.1
/// keep-alive), each answered by the proxy or relayed to its app, until either side closes,
/// a request cannot be framed, or the connection becomes a tunnel.
async fn serve_connection(app: Arc<App>, mut conn: RawConn) {
    if serve_requests(&app, &conn).await {
        close_gracefully(&mut conn.stream).await;
    }
}

/// How long a connection the proxy closes may take to send what it had not read yet.
const CLOSE_LINGER: Duration = Duration::from_secs(1);
/// Most unread bytes taken (and dropped) while closing.
const CLOSE_DRAIN: usize = 1 << 20;

/// Closes a connection whose client may still be sending (a request the proxy answered
/// without reading all of it): closing with unread bytes would reset the connection and
/// could destroy the answer before the client reads it. So the write side is shut first and
/// what arrives is read and dropped, for a moment.
async fn close_gracefully(client: &mut TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = client.shutdown().await;
    let mut sink = vec![0u8; 16 * 1024];
    let mut drained = 0;
    let _ = tokio::time::timeout(CLOSE_LINGER, async {
        while drained < CLOSE_DRAIN {
            match client.read(&mut sink).await {
                Ok(n) if n > 0 => drained += n,
                _ => break,
            }
        }
    })
    .await;
}

/// Serves the requests of a connection; `true` when the proxy ends the connection (rather
/// than the client closing it or failing).
async fn serve_requests(app: &App, conn: &RawConn) -> bool {
    let client = &conn.stream;
    let hooks = &conn.hooks;
    let mut buf = BytesMut::new();
    let mut pipe = None;
    loop {
        let head = match relay::read_request(client, &mut buf, || hooks.bytes_arrived()).await {
            Ok(head) => head,
            Err(HeadError::Closed | HeadError::Io(_)) => return false,
            Err(HeadError::TooLarge) => {
                let p = page(
                    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    "request_head_too_large",
                    "Request head too large",
                    "The request line and header fields are longer than this proxy takes.",
                );
                return write_answer(client, p.into_response(), false, false)
                    .await
                    .is_ok();
            }
            Err(HeadError::Malformed(why)) => {
                let p = page(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "Invalid request",
                    &format!("The request cannot be read as HTTP/1.1: {why}."),
                );
                return write_answer(client, p.into_response(), false, false)
                    .await
                    .is_ok();
            }
        };
        hooks.request_started();
        let keep = exchange(app, client, hooks, &mut buf, &mut pipe, head).await;
        hooks.response_done();
        if !keep {
            return true;
        }
    }
}

/// Answers or relays one request; `true` when the connection can carry another.
async fn exchange(
    app: &App,
    client: &TcpStream,
    hooks: &ConnHooks,
    buf: &mut BytesMut,
    pipe: &mut Option<Pipe>,
    head: RequestHead,
) -> bool {
    let is_head = head.req.method() == Method::HEAD;
    match decide(app, head.req).await {
        Decision::Answer(resp) => {
            // the request's body is left unread: only a request without one leaves the
            // connection usable
            let keep = head.keep_alive && !head.framing.has_body();
            write_answer(client, resp, keep, is_head).await.is_ok() && keep
        }
        Decision::Forward(fwd) => {
            let Forward { entry, rt, t, req } = *fwd;
            let ex = Exchange {
                app,
                client,
                hooks,
                t,
                framing: head.framing,
                keep_alive: head.keep_alive,
                expect_continue: head.expect_continue,
                http10: req.version() == Version::HTTP_10,
                answered: AtomicBool::new(false),
            };
            ex.forward(entry, rt, req, buf, pipe).await
        }
    }
}

/// Writes a response the proxy makes itself (small, whole bodies).
async fn write_answer(
    client: &TcpStream,
    resp: Response,
    keep: bool,
    is_head: bool,
) -> std::io::Result<()> {
    let (mut parts, body) = resp.into_parts();
    let body = axum::body::to_bytes(body, 1 << 20)
        .await
        .map_err(std::io::Error::other)?;
    let h = &mut parts.headers;
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    if !keep {
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    let start = format!(
        "HTTP/1.1 {} {}",
        parts.status.as_u16(),
        parts.status.canonical_reason().unwrap_or("")
    );
    let mut out = relay::head_bytes(&start, &parts.headers);
    if !is_head {
        out.extend_from_slice(&body);
    }
    relay::write_all(client, &out).await
}

/// A new connection to the app, made in the sandbox's network namespace.
async fn dial(app: &App, t: &Target, rt: &Arc<Runtime>) -> Result<TcpStream, Page> {
    let stream = app
        .previews
        .dialer()
        .connect(rt.net_ns(), t.port)
        .await
        .map_err(|e| match e {
            DialError::Refused => page(
                StatusCode::BAD_GATEWAY,
                "port_not_listening",
                "Nothing is listening",
                &format!(
                    "Nothing is listening on port {} inside sandbox {}: start the app (it may \
                     bind 127.0.0.1 or 0.0.0.0), or wait for it (wait_for_port).",
                    t.port, t.id
                ),
            ),
            DialError::TimedOut => page(
                StatusCode::GATEWAY_TIMEOUT,
                "port_not_accepting",
                "The app did not answer",
                &format!(
                    "The app on port {} inside sandbox {} did not accept the connection in time.",
                    t.port, t.id
                ),
            ),
            DialError::Io(e) => page(
                StatusCode::BAD_GATEWAY,
                "preview_connect_failed",
                "Cannot reach the sandbox",
                &format!("Cannot connect into sandbox {}: {e}", t.id),
            ),
        })?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

fn app_failed(t: &Target, why: &dyn std::fmt::Display) -> Page {
    page(
        StatusCode::BAD_GATEWAY,
        "preview_app_failed",
        "The app did not answer",
        &format!(
            "The app on port {} inside sandbox {} closed the connection without a complete \
             answer ({why}).",
            t.port, t.id
        ),
    )
}

fn stopped_page(t: &Target) -> Page {
    page(
        StatusCode::SERVICE_UNAVAILABLE,
        "sandbox_unavailable",
        "Sandbox stopped",
        &format!(
            "Sandbox {} was paused or deleted while this request was in progress.",
            t.id
        ),
    )
}

/// One request relayed to its app.
struct Exchange<'a> {
    app: &'a App,
    client: &'a TcpStream,
    hooks: &'a ConnHooks,
    t: Target,
    /// The request body's framing.
    framing: Framing,
    /// Whether the client keeps its connection.
    keep_alive: bool,
    /// Whether the client waits for `100 Continue`.
    expect_continue: bool,
    /// Whether the client speaks HTTP/1.0 (no chunked bodies).
    http10: bool,
    /// Whether the response's head went out (after it, a stop can only cut the connection).
    answered: AtomicBool,
}

/// How far a relayed exchange got when it ended.
enum Ended {
    /// Nothing was sent to the client: it gets this page.
    Before(Page),
    /// The response went out (whole: `true` when the connection can carry another request).
    After(bool),
}

impl Exchange<'_> {
    /// Relays the request and its response, cut when the sandbox stops; `true` when the
    /// client's connection can carry another request.
    async fn forward(
        self,
        entry: Arc<Entry>,
        rt: Arc<Runtime>,
        req: Request,
        buf: &mut BytesMut,
        pipe: &mut Option<Pipe>,
    ) -> bool {
        let upgrade = is_upgrade(req.headers());
        let method = req.method().clone();
        let mut req = match upstream_request(&self.t, req, upgrade) {
            Ok(r) => r,
            Err(p) => {
                let _ = write_answer(self.client, p.into_response(), false, false).await;
                return false;
            }
        };
        let h = req.headers_mut();
        // this proxy answers `Expect: 100-continue` itself
        h.remove(header::EXPECT);
        h.remove(header::CONTENT_LENGTH);
        match self.framing {
            Framing::Length(n) => {
                h.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
            }
            Framing::Chunked => {
                h.insert(
                    header::TRANSFER_ENCODING,
                    HeaderValue::from_static("chunked"),
                );
            }
            Framing::Empty | Framing::UntilClose => {}
        }
        let target = req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let head = relay::head_bytes(&format!("{method} {target} HTTP/1.1"), req.headers());
        let stop = stopped(entry, Arc::downgrade(&rt));
        let ended = tokio::select! {
            e = self.relay(&rt, &method, upgrade, &head, buf, pipe) => e,
            () = stop => match self.answered.load(Ordering::SeqCst) {
                false => Ended::Before(stopped_page(&self.t)),
                true => Ended::After(false),
            },
        };
        match ended {
            Ended::Before(p) => {
                let _ = write_answer(
                    self.client,
                    p.into_response(),
                    false,
                    method == Method::HEAD,
                )
                .await;
                false
            }
            Ended::After(keep) => keep,
        }
    }

    /// Sends the request head, then relays the request body and the response at once (an
    /// app may answer before it has read the whole body).
    async fn relay(
        &self,
        rt: &Arc<Runtime>,
        method: &Method,
        upgrade: bool,
        head: &[u8],
        buf: &mut BytesMut,
        pipe: &mut Option<Pipe>,
    ) -> Ended {
        let t = &self.t;
        let pool = self.app.previews.pool();
        let mut pooled = pool.take(&t.id, t.port, rt);
        let mut ubuf = BytesMut::new();
        let (up, resp) = loop {
            let reused = pooled.is_some();
            let up = match pooled.take() {
                Some(s) => s,
                None => match dial(self.app, t, rt).await {
                    Ok(s) => s,
                    Err(p) => return Ended::Before(p),
                },
            };
            // a kept-alive connection the app closed meanwhile fails at once: once more on
            // a new one (only while nothing of the request's body went out)
            if let Err(e) = relay::write_all(&up, head).await {
                if reused {
                    continue;
                }
                return Ended::Before(app_failed(t, &e));
            }
            if !self.framing.has_body() {
                match relay::read_response(&up, &mut ubuf, method).await {
                    Err(HeadError::Closed) if reused => continue,
                    r => break (up, Some(r)),
                }
            }
            break (up, None);
        };
        if self.expect_continue && self.framing.has_body() {
            if let Err(_e) = relay::write_all(self.client, b"HTTP/1.1 100 Continue\r\n\r\n").await {
                return Ended::After(false);
            }
        }
        let mut body_done = !self.framing.has_body();
        let mut no_pipe = None;
        let mut body = Box::pin(relay::relay_body(
            self.client,
            buf,
            &up,
            self.framing,
            &mut no_pipe,
            false,
        ));
        let resp = match resp {
            Some(r) => r,
            None => {
                let read = self.final_head(&up, &mut ubuf, method);
                tokio::pin!(read);
                loop {
                    tokio::select! {
                        r = &mut body, if !body_done => match r {
                            Ok(()) => body_done = true,
                            // the client went away, or the app stopped reading
                            Err(_) => return Ended::After(false),
                        },
                        r = &mut read => break r,
                    }
                }
            }
        };
        let resp = match resp {
            Ok(r) => r,
            Err(HeadError::TooLarge) => {
                return Ended::Before(app_failed(t, &"its response head is too large"))
            }
            Err(HeadError::Malformed(why)) => return Ended::Before(app_failed(t, &why)),
            Err(HeadError::Closed) => {
                return Ended::Before(app_failed(t, &"it closed the connection"))
            }
            Err(HeadError::Io(e)) => return Ended::Before(app_failed(t, &e)),
        };
        if resp.status == StatusCode::SWITCHING_PROTOCOLS {
            if !upgrade {
                return Ended::Before(page(
                    StatusCode::BAD_GATEWAY,
                    "preview_app_failed",
                    "Unexpected protocol switch",
                    &format!(
                        "The app on port {} switched protocols without being asked to.",
                        t.port
                    ),
                ));
            }
            drop(body);
            return self.tunnel(resp, up, ubuf, buf).await;
        }
        // the response's head as the client gets it
        let mut headers = resp.headers;
        strip_hop_by_hop(&mut headers, false);
        if let Form::Path { prefix, .. } = &t.form {
            rewrite_location(&mut headers, prefix);
        }
        let dechunk = self.http10 && resp.framing == Framing::Chunked;
        let keep = self.keep_alive && resp.framing != Framing::UntilClose && !dechunk;
        if resp.framing == Framing::Chunked && !dechunk {
            headers.insert(
                header::TRANSFER_ENCODING,
                HeaderValue::from_static("chunked"),
            );
        }
        if !keep {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        } else if self.http10 {
            headers.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        }
        if resp.framing == Framing::Chunked {
            headers.remove(header::CONTENT_LENGTH);
        }
        let start = format!("HTTP/1.1 {} {}", resp.status.as_u16(), resp.reason);
        self.answered.store(true, Ordering::SeqCst);
        if relay::write_all(self.client, &relay::head_bytes(&start, &headers))
            .await
            .is_err()
        {
            return Ended::After(false);
        }
        let mut out = Box::pin(relay::relay_body(
            &up,
            &mut ubuf,
            self.client,
            resp.framing,
            pipe,
            dechunk,
        ));
        let sent = loop {
            tokio::select! {
                r = &mut body, if !body_done => match r {
                    Ok(()) => body_done = true,
                    Err(_) => return Ended::After(false),
                },
                r = &mut out => break r,
            }
        };
        drop(out);
        drop(body);
        if sent.is_err() {
            return Ended::After(false);
        }
        if resp.keep_alive && body_done && ubuf.is_empty() {
            pool.give_back(t.id.clone(), t.port, Arc::downgrade(rt), up);
        }
        Ended::After(keep && body_done)
    }

    /// Reads the app's final response head, passing informational ones on (`100 Continue`
    /// was answered by the proxy already).
    async fn final_head(
        &self,
        up: &TcpStream,
        ubuf: &mut BytesMut,
        method: &Method,
    ) -> Result<ResponseHead, HeadError> {
        loop {
            let r = relay::read_response(up, ubuf, method).await?;
            if r.status.is_informational() && r.status != StatusCode::SWITCHING_PROTOCOLS {
                if r.status != StatusCode::CONTINUE && !self.http10 {
                    let start = format!("HTTP/1.1 {} {}", r.status.as_u16(), r.reason);
                    relay::write_all(self.client, &relay::head_bytes(&start, &r.headers))
                        .await
                        .map_err(HeadError::Io)?;
                }
                continue;
            }
            return Ok(r);
        }
    }

    /// Joins the client's and the app's connections (a WebSocket) until either side closes
    /// (or the sandbox stops, which ends the caller).
    async fn tunnel(
        &self,
        resp: ResponseHead,
        up: TcpStream,
        ubuf: BytesMut,
        buf: &mut BytesMut,
    ) -> Ended {
        let mut headers = resp.headers;
        strip_hop_by_hop(&mut headers, true);
        let start = format!("HTTP/1.1 {} {}", resp.status.as_u16(), resp.reason);
        let mut out = relay::head_bytes(&start, &headers);
        out.extend_from_slice(&ubuf);
        self.answered.store(true, Ordering::SeqCst);
        if relay::write_all(self.client, &out).await.is_err() {
            return Ended::After(false);
        }
        self.hooks.upgraded();
        if relay::write_all(&up, buf).await.is_err() {
            return Ended::After(false);
        }
        buf.clear();
        tokio::select! {
            _ = pump(self.client, &up) => {}
            _ = pump(&up, self.client) => {}
        }
        Ended::After(false)
    }
}

/// Copies what `from` sends to `to` until `from` closes.
async fn pump(from: &TcpStream, to: &TcpStream) -> std::io::Result<()> {
    let mut buf = BytesMut::new();
    while relay::read_some(from, &mut buf).await? > 0 {
        relay::write_all(to, &buf).await?;
        buf.clear();
    }
    Ok(())
}
/// `Location: /x` from an app behind the path form points back under its prefix.
fn rewrite_location(headers: &mut HeaderMap, prefix: &str) {
    let Some(loc) = headers.get(header::LOCATION).and_then(|v| v.to_str().ok()) else {
        return;
    };
    if loc.starts_with('/') && !loc.starts_with("//") {
        if let Ok(v) = HeaderValue::from_str(&format!("{prefix}{loc}")) {
            headers.insert(header::LOCATION, v);
        }
    }
}

/// A signed link's answer: the token moves into a host-only cookie, and the browser goes
/// to the same URL without it.
fn redirect_into_cookie(uri: &Uri, token: &str, exp: Option<i64>) -> Response {
    let (_, rest) = split_query(uri.query().unwrap_or(""));
    // one leading slash: `//host/...` would leave this origin
    let path = format!("/{}", uri.path().trim_start_matches('/'));
    let location = if rest.is_empty() {
        path
    } else {
        format!("{path}?{}", rest.join("&"))
    };
    let mut cookie = format!("{TOKEN_COOKIE}={token}; Path=/; HttpOnly; SameSite=Lax");
    if let Some(exp) = exp {
        let now = super::time::now_ns().div_euclid(1_000_000_000);
        cookie.push_str(&format!("; Max-Age={}", exp.saturating_sub(now).max(0)));
    }
    let mut r = StatusCode::FOUND.into_response();
    let h = r.headers_mut();
    if let (Ok(loc), Ok(c)) = (
        HeaderValue::from_str(&location),
        HeaderValue::from_str(&cookie),
    ) {
        h.insert(header::LOCATION, loc);
        h.insert(header::SET_COOKIE, c);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}

/// The header naming an error page's code.
const ERROR_HEADER: &str = "x-superserve-preview-error";

fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// An error page of the proxy (boxed: it travels in `Err`s).
#[derive(Debug)]
struct Page(Box<Response>);

impl IntoResponse for Page {
    fn into_response(self) -> Response {
        *self.0
    }
}

/// An error page of the proxy: HTML naming the problem, its code in
/// `X-Superserve-Preview-Error`, never cached.
fn page(status: StatusCode, code: &'static str, title: &str, detail: &str) -> Page {
    let body = format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{status} {title}</title>\
         </head>\n<body><h1>{title}</h1>\n<p>{detail}</p>\n<p><small>{code} · superserve \
         local preview</small></p></body></html>\n",
        status = status.as_u16(),
        title = escape_html(title),
        detail = escape_html(detail),
    );
    let mut r = (status, body).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(ERROR_HEADER, HeaderValue::from_static(code));
    Page(Box::new(r))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;

    fn req(host: &str, uri: &str) -> Request {
        Request::builder()
            .uri(uri)
            .header(header::HOST, host)
            .body(Body::empty())
            .unwrap()
    }

    #[test]
    fn both_forms_name_a_preview() {
        let id = "1b4e28ba-2fa1-41d2-883f-0016d3cca427";
        let t = target(&req(&format!("3000-{id}.localhost:8082"), "/a?b=1")).unwrap();
        assert_eq!((t.port, t.id.as_str(), t.form), (3000, id, Form::Host));
        let t = target(&req(&format!("3000-{}.LOCALHOST", id.to_uppercase()), "/")).unwrap();
        assert_eq!(t.id, id);
        let t = target(&req(
            "127.0.0.1:8082",
            &format!("/_preview/8000-{id}/x/y?q"),
        ))
        .unwrap();
        assert_eq!(t.port, 8000);
        assert_eq!(
            t.form,
            Form::Path {
                prefix: format!("/_preview/8000-{id}"),
                rest: "/x/y".into()
            }
        );
        let t = target(&req("[::1]:8082", &format!("/_preview/8000-{id}"))).unwrap();
        assert_eq!(
            t.form,
            Form::Path {
                prefix: format!("/_preview/8000-{id}"),
                rest: "/".into()
            }
        );
        // not previews
        for (host, path) in [
            ("localhost:8082", "/"),
            ("my-app.localhost", "/"),
            ("3000-.localhost", "/"),
            ("3000-a_b.localhost", "/"),
            ("x3000-abc.localhost", "/_preview/abc/"),
        ] {
            let r = target(&req(host, path)).unwrap_err().into_response();
            assert_eq!(r.status(), StatusCode::NOT_FOUND, "{host}{path}");
        }
        // ports that cannot be previewed
        for host in [
            "80-abc.localhost",
            "49983-abc.localhost",
            "70000-abc.localhost",
        ] {
            let r = target(&req(host, "/")).unwrap_err().into_response();
            assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{host}");
        }
    }

    #[test]
    fn credentials_are_found_and_removed() {
        let (tokens, rest) = split_query(
            "a=1&superserve_preview_token=spv1.x%2By&b=&superserve%5Fpreview%5Ftoken=t2",
        );
        assert_eq!(tokens, vec!["spv1.x+y".to_owned(), "t2".to_owned()]);
        assert_eq!(rest, vec!["a=1", "b="]);
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; superserve_preview_token=tok; b=2"),
        );
        h.append(
            header::COOKIE,
            HeaderValue::from_static("superserve_preview_token=\"t2\""),
        );
        let (tokens, rest) = split_cookies(&h);
        assert_eq!(tokens, vec!["tok".to_owned(), "t2".to_owned()]);
        assert_eq!(rest.as_deref(), Some("a=1; b=2"));

        let id = "1b4e28ba-2fa1-41d2-883f-0016d3cca427";
        let mut r = req(
            &format!("3000-{id}.localhost:1"),
            "/p?x=1&superserve_preview_token=secret",
        );
        let h = r.headers_mut();
        h.insert(TOKEN_HEADER, HeaderValue::from_static("secret"));
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("superserve_preview_token=secret"),
        );
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-private"),
        );
        h.insert("x-private", HeaderValue::from_static("1"));
        let t = target(&r).unwrap();
        let up = upstream_request(&t, r, false).unwrap();
        assert_eq!(up.uri().to_string(), "/p?x=1");
        let all = format!("{:?}", up.headers());
        assert!(!all.contains("secret"), "{all}");
        assert!(up.headers().get("x-private").is_none());
        assert!(up.headers().get(header::CONNECTION).is_none());
    }

    #[test]
    fn the_redirect_stays_on_this_origin_and_drops_the_token() {
        let uri: Uri = "//evil.example/a?superserve_preview_token=tok&k=v"
            .parse()
            .unwrap();
        let r = redirect_into_cookie(&uri, "tok", None);
        assert_eq!(r.status(), StatusCode::FOUND);
        assert_eq!(r.headers()[header::LOCATION], "/evil.example/a?k=v");
        let cookie = r.headers()[header::SET_COOKIE].to_str().unwrap();
        assert!(
            cookie.starts_with("superserve_preview_token=tok; Path=/; HttpOnly"),
            "{cookie}"
        );
        assert!(!cookie.contains("Domain"), "{cookie}");
    }

    #[tokio::test]
    async fn error_pages_escape_what_the_client_sent() {
        let r = page(
            StatusCode::NOT_FOUND,
            "x",
            "<t>",
            "no sandbox <script>alert(1)</script>",
        )
        .into_response();
        assert_eq!(r.headers()[ERROR_HEADER], "x");
        assert_eq!(
            r.headers()[header::CONTENT_TYPE],
            "text/html; charset=utf-8"
        );
        let body = axum::body::to_bytes(r.into_body(), 1 << 16).await.unwrap();
        let body = String::from_utf8(body.to_vec()).unwrap();
        assert!(
            body.contains("no sandbox &lt;script&gt;alert(1)&lt;/script&gt;"),
            "{body}"
        );
        assert!(
            !body.contains("<script>") && !body.contains("<t>"),
            "{body}"
        );
    }
}
