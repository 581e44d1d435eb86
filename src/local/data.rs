//! Data-plane routes (protocol.md §4.1–4.5): `/exec`, `/exec/stream`, `/exec/connect`,
//! `/files`. A sandbox is chosen by `X-Superserve-Sandbox-Id` (or, for the WebSocket, a
//! `Host: boxd-<id>.…` header) and authorised by its access token.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, RawQuery, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::agent::SpawnError;
use super::app::{App, Entry, SpawnFailure, Unavailable};
use super::exec::{
    command_spec, Collected, Event, ExecBody, Running, Utf8Decoder, DEFAULT_TIMEOUT,
};
use super::fault::CutAfter;
use super::files::{self, ByteRange, ChannelWriter, FileError, ReadTarget};
use super::ident::ct_eq;
use super::model::Status;
use super::reply::{boxd_error, boxd_error_code, form_pairs, header_str, json, text};
use super::runtime::CommandSpec;
use super::time::{format_rfc3339, now_ns};
use super::zip;

/// Largest inbound WebSocket frame/message.
const WS_MAX_MESSAGE: usize = 4 * 1024 * 1024;
/// Time a client has to send the start frame.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Server pings on the exec WebSocket.
const WS_PING: Duration = Duration::from_secs(30);
/// Longest `timeout_s` a command may ask for (7 days, the longest sandbox `timeout_seconds`).
const MAX_COMMAND_TIMEOUT_S: u64 = 604_800;

/// Checks the numbers of an exec body (the message is the 400's).
fn check_exec_body(body: &ExecBody) -> Result<(), String> {
    match body.timeout_s {
        Some(t) if t > MAX_COMMAND_TIMEOUT_S => Err(format!(
            "timeout_s must be between 0 and {MAX_COMMAND_TIMEOUT_S} seconds, got {t}"
        )),
        _ => Ok(()),
    }
}

/// The data plane's own routes (the desktop service is routed beside them, in `http`).
pub(crate) fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/exec", post(exec))
        .route("/exec/stream", post(exec_stream))
        .route("/exec/connect", get(exec_connect))
        .route("/files", get(files_get).post(files_post))
        .fallback(|| async { text(StatusCode::NOT_FOUND, "404 page not found") })
}

/// `r` with `Retry-After: secs`.
fn retry_after(mut r: Response, secs: &'static str) -> Response {
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static(secs));
    r
}

fn paused() -> Response {
    retry_after(
        text(StatusCode::SERVICE_UNAVAILABLE, "sandbox is paused"),
        "5",
    )
}

pub(crate) fn unavailable(u: Unavailable) -> Response {
    match u {
        Unavailable::Paused => paused(),
        Unavailable::Gone => boxd_error(StatusCode::NOT_FOUND, "sandbox not found"),
        Unavailable::Failed(msg) => retry_after(
            text(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("sandbox unavailable: {msg}"),
            ),
            "5",
        ),
    }
}

/// The sandbox id from `Host: boxd-<id>.<domain>`.
fn id_from_host(headers: &HeaderMap) -> Option<String> {
    let host = header_str(headers, "host")?;
    let label = host.split('.').next()?;
    let id = label.strip_prefix("boxd-")?;
    (!id.is_empty()).then(|| id.to_owned())
}

/// A response that ends a request early (boxed: responses are large).
type Reject = Box<Response>;

/// Routing and authorisation of a data-plane request.
pub(crate) fn authorize(
    app: &App,
    headers: &HeaderMap,
    ws_token: Option<&str>,
    allow_host: bool,
) -> Result<Arc<Entry>, Reject> {
    let id = header_str(headers, "x-superserve-sandbox-id")
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .or_else(|| allow_host.then(|| id_from_host(headers)).flatten())
        .ok_or_else(|| {
            Box::new(boxd_error(
                StatusCode::BAD_REQUEST,
                "missing X-Superserve-Sandbox-Id header",
            ))
        })?;
    let entry = app
        .get(&id)
        .ok_or_else(|| Box::new(boxd_error(StatusCode::NOT_FOUND, "sandbox not found")))?;
    let token = header_str(headers, "x-access-token")
        .filter(|s| !s.is_empty())
        .or(ws_token)
        .ok_or_else(|| {
            Box::new(boxd_error(
                StatusCode::UNAUTHORIZED,
                "missing X-Access-Token header",
            ))
        })?;
    let current = entry.with(|r| r.access_token.clone());
    if !ct_eq(token, &current) {
        return Err(Box::new(boxd_error(
            StatusCode::UNAUTHORIZED,
            "invalid access token",
        )));
    }
    match entry.status() {
        Status::Active => Ok(entry),
        _ => Err(Box::new(paused())),
    }
}

fn parse_exec(body: &[u8]) -> Result<ExecBody, Reject> {
    serde_json::from_slice(body).map_err(|e| {
        Box::new(boxd_error(
            StatusCode::BAD_REQUEST,
            &format!("invalid request body: {e}"),
        ))
    })
}

/// The common start of `POST /exec` and `POST /exec/stream`: authorise, parse the body, and
/// build the command.
fn exec_request(
    app: &App,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(Arc<Entry>, ExecBody, CommandSpec), Reject> {
    let entry = authorize(app, headers, None, false)?;
    let body = parse_exec(body)?;
    check_exec_body(&body).map_err(|msg| Box::new(boxd_error(StatusCode::BAD_REQUEST, &msg)))?;
    let spec = command_spec(&entry.rec(), &body, false)
        .map_err(|msg| Box::new(boxd_error(StatusCode::BAD_REQUEST, &msg)))?;
    Ok((entry, body, spec))
}

/// The status and an explanation for a command that could not be started: what the client
/// asked for (a missing program or directory, arguments too long, not executable, ...) is a
/// 4xx, a sandbox out of processes a 503, anything else the backend's own failure.
fn spawn_status(e: &SpawnError) -> (StatusCode, Option<&'static str>) {
    let errno = e.source.raw_os_error();
    if matches!(
        errno,
        Some(libc::EAGAIN) | Some(libc::EMFILE) | Some(libc::ENFILE) | Some(libc::ENOMEM)
    ) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Some("out of processes or memory; retry in a moment"),
        );
    }
    // the program itself (no step) or the working directory: what the client asked for
    let asked = match e.step.as_deref() {
        None => true,
        Some(s) => s.starts_with("changing to the working directory"),
    };
    if !asked {
        return (StatusCode::INTERNAL_SERVER_ERROR, None);
    }
    match errno {
        Some(libc::E2BIG) => (
            StatusCode::BAD_REQUEST,
            Some("the arguments and environment are too long for the kernel"),
        ),
        Some(libc::ENAMETOOLONG) => (StatusCode::BAD_REQUEST, Some("a path is too long")),
        Some(libc::EACCES) | Some(libc::EPERM) => (
            StatusCode::BAD_REQUEST,
            Some("permission denied (not executable, or not searchable)"),
        ),
        Some(libc::ENOEXEC) => (StatusCode::BAD_REQUEST, Some("not an executable format")),
        Some(libc::ETXTBSY) => (StatusCode::CONFLICT, Some("the program file is busy")),
        _ => (StatusCode::BAD_REQUEST, None),
    }
}

/// The message of a command that could not be started.
fn spawn_message(e: &SpawnError) -> String {
    match spawn_status(e).1 {
        Some(why) => format!("failed to start command: {why}: {e}"),
        None => format!("failed to start command: {e}"),
    }
}

fn spawn_failure(f: SpawnFailure) -> Response {
    match f {
        SpawnFailure::Unavailable(u) => unavailable(u),
        SpawnFailure::Spawn(e) => {
            let r = boxd_error_code(spawn_status(&e).0, "exec_failed", &spawn_message(&e));
            if r.status() == StatusCode::SERVICE_UNAVAILABLE {
                retry_after(r, "1")
            } else {
                r
            }
        }
    }
}

async fn exec(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    let (entry, body, spec) = match exec_request(&app, &headers, &body) {
        Ok(t) => t,
        Err(r) => return *r,
    };
    let child = match app.spawn(&entry, spec).await {
        Ok(c) => c,
        Err(f) => return spawn_failure(f),
    };
    let timeout = body.timeout(Some(DEFAULT_TIMEOUT));
    let mut running = Running::new(child, timeout);
    let mut out = Collected::default();
    let mut exit_code = -1;
    let mut timed_out = false;
    while let Some(ev) = running.next().await {
        match ev {
            Event::Stdout(b) => out.push(&b, false),
            Event::Stderr(b) => out.push(&b, true),
            Event::TimedOut => timed_out = true,
            Event::Exit(code) => exit_code = code,
        }
    }
    let mut stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if out.truncated {
        stderr.push_str("\n[output truncated: more than 10 MiB of combined output]\n");
    }
    if timed_out {
        let secs = timeout.map_or(0, |t| t.as_secs());
        stderr.push_str(&format!(
            "\n[command timed out after {secs}s and was killed]\n"
        ));
    }
    json(
        StatusCode::OK,
        &serde_json::json!({
            "stdout": String::from_utf8_lossy(&out.stdout),
            "stderr": stderr,
            "exit_code": exit_code,
            "truncated": out.truncated,
        }),
    )
}

pub(crate) fn sse_event(value: &serde_json::Value) -> Bytes {
    Bytes::from(format!("data: {value}\n\n"))
}

async fn exec_stream(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    cut: Option<Extension<CutAfter>>,
    body: Bytes,
) -> Response {
    let (entry, body, spec) = match exec_request(&app, &headers, &body) {
        Ok(t) => t,
        Err(r) => return *r,
    };
    let (tx, rx) = mpsc::channel::<Result<Bytes, io::Error>>(32);
    let spawned = app.spawn(&entry, spec).await;
    let child = match spawned {
        Ok(c) => c,
        Err(SpawnFailure::Unavailable(u)) => return unavailable(u),
        Err(SpawnFailure::Spawn(e)) => {
            let ev = sse_event(&serde_json::json!({
                "error": spawn_message(&e),
                "code": "exec_failed",
                "finished": true,
            }));
            let _ = tx.send(Ok(ev)).await;
            drop(tx);
            return sse_response(rx);
        }
    };
    let timeout = body.timeout(Some(DEFAULT_TIMEOUT));
    let keepalive = app.tuning.keepalive;
    let cut_after = cut.map(|Extension(CutAfter(n))| n);
    tokio::spawn(async move {
        let mut running = Running::new(child, timeout);
        let mut out_dec = Utf8Decoder::default();
        let mut err_dec = Utf8Decoder::default();
        let mut sent = 0u32;
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + keepalive, keepalive);
        loop {
            let ev = tokio::select! {
                ev = running.next() => ev,
                _ = tick.tick() => {
                    if tx.send(Ok(Bytes::from_static(b": keepalive\n\n"))).await.is_err() {
                        return; // client gone: dropping `running` kills the command
                    }
                    continue;
                }
            };
            let Some(ev) = ev else { return };
            let payload = match ev {
                Event::Stdout(b) => {
                    let s = out_dec.push(&b);
                    (!s.is_empty()).then(
                        || serde_json::json!({"timestamp": format_rfc3339(now_ns()), "stdout": s}),
                    )
                }
                Event::Stderr(b) => {
                    let s = err_dec.push(&b);
                    (!s.is_empty()).then(
                        || serde_json::json!({"timestamp": format_rfc3339(now_ns()), "stderr": s}),
                    )
                }
                Event::TimedOut => {
                    let secs = timeout.map_or(0, |t| t.as_secs());
                    Some(serde_json::json!({
                        "timestamp": format_rfc3339(now_ns()),
                        "stderr": format!("\n[command timed out after {secs}s and was killed]\n"),
                    }))
                }
                Event::Exit(code) => {
                    for (rest, key) in [(out_dec.finish(), "stdout"), (err_dec.finish(), "stderr")]
                    {
                        if !rest.is_empty() {
                            let ev = serde_json::json!({"timestamp": format_rfc3339(now_ns()), key: rest});
                            let _ = tx.send(Ok(sse_event(&ev))).await;
                        }
                    }
                    let ev = serde_json::json!({
                        "timestamp": format_rfc3339(now_ns()),
                        "exit_code": code,
                        "finished": true,
                    });
                    let _ = tx.send(Ok(sse_event(&ev))).await;
                    return;
                }
            };
            if let Some(p) = payload {
                if tx.send(Ok(sse_event(&p))).await.is_err() {
                    return;
                }
                sent += 1;
                if cut_after.is_some_and(|n| sent >= n) {
                    // injected fault: end the body without `finished`; the command is killed
                    running.kill();
                    return;
                }
            }
        }
    });
    sse_response(rx)
}

pub(crate) fn sse_response(rx: mpsc::Receiver<Result<Bytes, io::Error>>) -> Response {
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let mut resp = Response::new(Body::from_stream(stream));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}

/// Offered subprotocols.
fn subprotocols(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty())
        .collect()
}

async fn exec_connect(State(app): State<Arc<App>>, req: Request) -> Response {
    let cut_after = req.extensions().get::<CutAfter>().map(|c| c.0);
    let (mut parts, _body) = req.into_parts();
    let headers = parts.headers.clone();
    let offered = subprotocols(&headers);
    let token = offered
        .iter()
        .find_map(|p| p.strip_prefix("token."))
        .map(str::to_owned);
    let entry = match authorize(&app, &headers, token.as_deref(), true) {
        Ok(e) => e,
        Err(r) => return *r,
    };
    let upgrade = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
        Ok(u) => u,
        Err(rej) => return rej.into_response(),
    };
    upgrade
        .protocols(["superserve.exec.v1"])
        .max_message_size(WS_MAX_MESSAGE)
        .max_frame_size(WS_MAX_MESSAGE)
        .on_upgrade(move |socket| session(app, entry, socket, cut_after))
}

fn close(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: reason.to_owned().into(),
    }))
}

fn signal_number(name: &str) -> Option<i32> {
    match name {
        "SIGINT" => Some(libc::SIGINT),
        "SIGTERM" => Some(libc::SIGTERM),
        "SIGHUP" => Some(libc::SIGHUP),
        "SIGQUIT" => Some(libc::SIGQUIT),
        _ => None,
    }
}

enum Control {
    Signal(i32),
    Closed,
    TooBig,
}

/// Reads the start frame: `Ok(body)` or the close frame to send.
async fn start_frame(socket: &mut WebSocket) -> Result<ExecBody, Option<Message>> {
    let deadline = tokio::time::Instant::now() + START_TIMEOUT;
    loop {
        let msg = match tokio::time::timeout_at(deadline, socket.recv()).await {
            Err(_) => return Err(Some(close(1008, "expected start message"))),
            Ok(None) | Ok(Some(Err(_))) => return Err(None),
            Ok(Some(Ok(m))) => m,
        };
        match msg {
            Message::Text(t) => {
                return match serde_json::from_str::<ExecBody>(t.as_str()) {
                    Ok(b) if b.command.as_deref().is_some_and(|c| !c.trim().is_empty()) => {
                        match check_exec_body(&b) {
                            Ok(()) => Ok(b),
                            Err(msg) => {
                                Err(Some(close(1008, &format!("invalid start message ({msg})"))))
                            }
                        }
                    }
                    _ => Err(Some(close(
                        1008,
                        "invalid start message (command required)",
                    ))),
                }
            }
            Message::Binary(_) => return Err(Some(close(1003, "expected a text start message"))),
            Message::Close(_) => return Err(None),
            Message::Ping(_) | Message::Pong(_) => {}
        }
    }
}

async fn session(app: Arc<App>, entry: Arc<Entry>, mut socket: WebSocket, cut_after: Option<u32>) {
    let body = match start_frame(&mut socket).await {
        Ok(b) => b,
        Err(Some(frame)) => {
            let _ = socket.send(frame).await;
            return;
        }
        Err(None) => return,
    };
    let spec = match command_spec(&entry.rec(), &body, true) {
        Ok(s) => s,
        Err(msg) => {
            let ev = serde_json::json!({"error": msg, "code": "bad_request", "finished": true});
            let _ = socket.send(Message::Text(ev.to_string().into())).await;
            let _ = socket
                .send(close(1008, "invalid start message (command required)"))
                .await;
            return;
        }
    };
    let child = match app.spawn(&entry, spec).await {
        Ok(c) => c,
        Err(f) => {
            let msg = match f {
                SpawnFailure::Unavailable(Unavailable::Paused) => "sandbox is paused".to_owned(),
                SpawnFailure::Unavailable(Unavailable::Gone) => "sandbox not found".to_owned(),
                SpawnFailure::Unavailable(Unavailable::Failed(m)) => m,
                SpawnFailure::Spawn(e) => spawn_message(&e),
            };
            let ev = serde_json::json!({"error": msg, "code": "exec_failed", "finished": true});
            let _ = socket.send(Message::Text(ev.to_string().into())).await;
            let _ = socket.send(close(1011, "failed to start command")).await;
            return;
        }
    };
    let mut running = Running::new(child, body.timeout(None));

    // stdin: a writer task, so output keeps flowing while stdin is backpressured
    let (stdin_tx, mut stdin_rx) = mpsc::channel::<Option<Bytes>>(16);
    if let Some(mut stdin) = running.stdin.take() {
        tokio::spawn(async move {
            while let Some(Some(data)) = stdin_rx.recv().await {
                if stdin.write_all(&data).await.is_err() {
                    // the command closed its stdin: discard the rest
                    while let Some(Some(_)) = stdin_rx.recv().await {}
                    return;
                }
            }
            let _ = stdin.shutdown().await;
        });
    }

    let (mut sink, mut stream) = socket.split();
    let (ctl_tx, mut ctl_rx) = mpsc::channel::<Control>(8);
    let reader = tokio::spawn(async move {
        let mut stdin_tx = Some(stdin_tx);
        loop {
            let msg = match stream.next().await {
                Some(Ok(m)) => m,
                Some(Err(e)) => {
                    let text = e.to_string();
                    let big = text.contains("too long") || text.contains("Space limit");
                    let _ = ctl_tx
                        .send(if big {
                            Control::TooBig
                        } else {
                            Control::Closed
                        })
                        .await;
                    return;
                }
                None => {
                    let _ = ctl_tx.send(Control::Closed).await;
                    return;
                }
            };
            match msg {
                Message::Binary(b) => {
                    if b.first() == Some(&0) && b.len() > 1 {
                        if let Some(tx) = &stdin_tx {
                            // awaiting here is the stdin backpressure
                            let _ = tx.send(Some(b.slice(1..))).await;
                        }
                    }
                }
                Message::Text(t) => {
                    let Ok(v) = serde_json::from_str::<serde_json::Value>(t.as_str()) else {
                        continue;
                    };
                    match v.get("type").and_then(|t| t.as_str()) {
                        Some("stdin_close") => {
                            if let Some(tx) = stdin_tx.take() {
                                let _ = tx.send(None).await;
                            }
                        }
                        Some("signal") => {
                            if let Some(sig) = v
                                .get("name")
                                .and_then(|n| n.as_str())
                                .and_then(signal_number)
                            {
                                let _ = ctl_tx.send(Control::Signal(sig)).await;
                            }
                        }
                        _ => {}
                    }
                }
                Message::Close(_) => {
                    let _ = ctl_tx.send(Control::Closed).await;
                    return;
                }
                Message::Ping(_) | Message::Pong(_) => {}
            }
        }
    });

    let mut sent = 0u32;
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + WS_PING, WS_PING);
    loop {
        tokio::select! {
            ev = running.next() => {
                let Some(ev) = ev else { break };
                let frame = match ev {
                    Event::Stdout(b) | Event::Stderr(b) if b.is_empty() => continue,
                    Event::Stdout(b) => channel_frame(1, &b),
                    Event::Stderr(b) => channel_frame(2, &b),
                    Event::TimedOut => continue,
                    Event::Exit(code) => {
                        let ev = serde_json::json!({"exit_code": code, "finished": true});
                        let _ = sink.send(Message::Text(ev.to_string().into())).await;
                        let _ = sink.send(close(1000, "command exited")).await;
                        break;
                    }
                };
                if sink.send(frame).await.is_err() {
                    running.kill();
                    break;
                }
                sent += 1;
                if cut_after.is_some_and(|n| sent >= n) {
                    running.kill();
                    let _ = sink.send(close(1011, "stream cut (injected fault)")).await;
                    break;
                }
            }
            c = ctl_rx.recv() => match c {
                Some(Control::Signal(sig)) => running.signal(sig),
                Some(Control::TooBig) => {
                    running.kill();
                    let _ = sink.send(close(1009, "message too big")).await;
                    break;
                }
                Some(Control::Closed) | None => {
                    running.kill();
                    break;
                }
            },
            _ = ping.tick() => {
                if sink.send(Message::Ping(Bytes::new())).await.is_err() {
                    running.kill();
                    break;
                }
            }
        }
    }
    reader.abort();
}

fn channel_frame(channel: u8, data: &[u8]) -> Message {
    let mut v = Vec::with_capacity(data.len() + 1);
    v.push(channel);
    v.extend_from_slice(data);
    Message::Binary(Bytes::from(v))
}

/// `path` and `format` from the query.
fn file_query(query: Option<&str>) -> (Option<String>, Option<String>) {
    let mut path = None;
    let mut format = None;
    for (k, v) in form_pairs(query.unwrap_or("")) {
        match k.as_str() {
            "path" if path.is_none() => path = Some(v),
            "format" if format.is_none() => format = Some(v),
            _ => {}
        }
    }
    (path, format)
}

fn file_error(e: FileError) -> Response {
    match e {
        FileError::NotFound | FileError::NotADirectory => {
            boxd_error(StatusCode::NOT_FOUND, "file not found")
        }
        FileError::ParentNotADirectory => boxd_error(
            StatusCode::BAD_REQUEST,
            "a parent of the path is not a directory",
        ),
        FileError::NameTooLong => boxd_error(
            StatusCode::BAD_REQUEST,
            "path too long (a name longer than 255 bytes, or a path longer than 4096)",
        ),
        FileError::PermissionDenied => boxd_error(StatusCode::FORBIDDEN, "permission denied"),
        FileError::Busy => boxd_error(
            StatusCode::CONFLICT,
            "file is busy (a running program or a mount point)",
        ),
        FileError::TooLarge => boxd_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "file too large for the sandbox's file system",
        ),
        FileError::Invalid => boxd_error(StatusCode::BAD_REQUEST, "invalid path"),
        FileError::Exhausted => retry_after(
            boxd_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the backend is short of resources; retry in a moment",
            ),
            "1",
        ),
        FileError::IsDirectory => boxd_error(StatusCode::BAD_REQUEST, "path is a directory"),
        FileError::NotRegular => boxd_error(StatusCode::BAD_REQUEST, "not a regular file"),
        FileError::Virtual => boxd_error(
            StatusCode::FORBIDDEN,
            "path is on a virtual file system (/proc, /sys)",
        ),
        FileError::ReadOnly => boxd_error(StatusCode::FORBIDDEN, "read-only file system"),
        FileError::BadLink => boxd_error(
            StatusCode::BAD_REQUEST,
            "path cannot be resolved (symlink loop or magic link)",
        ),
        FileError::NoSpace => json(
            StatusCode::INSUFFICIENT_STORAGE,
            &serde_json::json!({"error": {"code": "sandbox_storage_full", "message": "no space left in the sandbox"}}),
        ),
        FileError::TooDeep(max) => boxd_error(
            StatusCode::BAD_REQUEST,
            &format!("the directory is nested deeper than {max} levels; download a subdirectory"),
        ),
        FileError::TooManyEntries(entries, names) => boxd_error(
            StatusCode::BAD_REQUEST,
            &format!(
                "the directory holds more than {entries} entries or {names} bytes of names; \
                 download a subdirectory"
            ),
        ),
        FileError::DuplicateZipName(name) => boxd_error(
            StatusCode::BAD_REQUEST,
            &format!("two names are both {name:?} once made valid UTF-8"),
        ),
        FileError::NameTooLongForZip(len) => boxd_error(
            StatusCode::BAD_REQUEST,
            &format!(
                "an entry name is {len} bytes long; a ZIP archive holds names of at most 65535"
            ),
        ),
        FileError::Io(e) => boxd_error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

/// Validates the query path, authorises, and gets the sandbox running.
async fn file_target(
    app: &Arc<App>,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<(Arc<super::runtime::Runtime>, String, Option<String>), Reject> {
    let entry = authorize(app, headers, None, false)?;
    let (path, format) = file_query(query);
    let path = path.unwrap_or_default();
    files::validate_path(&path)
        .map_err(|msg| Box::new(boxd_error(StatusCode::BAD_REQUEST, msg)))?;
    let rt = app
        .ensure_running(&entry)
        .await
        .map_err(|u| Box::new(unavailable(u)))?;
    Ok((rt, path, format))
}

fn content_disposition(kind: &str, name: &str) -> Option<HeaderValue> {
    let safe: String = name
        .chars()
        .map(|c| {
            if c == '"' || c == '\\' || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect();
    HeaderValue::from_str(&format!("{kind}; filename=\"{safe}\"")).ok()
}

/// Runs a blocking open inside the sandbox root off the async runtime; failures become the
/// data plane's error responses.
async fn open_in_root<T: Send + 'static>(
    rt: &Arc<super::runtime::Runtime>,
    path: &str,
    open: impl FnOnce(&std::os::fd::OwnedFd, &str) -> Result<T, FileError> + Send + 'static,
) -> Result<T, Box<Response>> {
    let rt = rt.clone();
    let path = path.to_owned();
    match tokio::task::spawn_blocking(move || open(rt.root(), &path)).await {
        Ok(Ok(t)) => Ok(t),
        Ok(Err(e)) => Err(Box::new(file_error(e))),
        Err(e) => Err(Box::new(boxd_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &e.to_string(),
        ))),
    }
}

async fn files_get(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let (rt, path, format) = match file_target(&app, &headers, query.as_deref()).await {
        Ok(t) => t,
        Err(r) => return *r,
    };
    let target = match open_in_root(&rt, &path, files::open_read).await {
        Ok(t) => t,
        Err(r) => return *r,
    };
    let name = files::base_name(&path).to_owned();
    match target {
        ReadTarget::File(mut file, size) => {
            // If-Range cannot be checked (no validators are sent): the whole file, as RFC 9110
            // allows
            let range = if headers.contains_key(header::IF_RANGE) {
                ByteRange::Full
            } else {
                files::byte_range(header_str(&headers, "range"), size)
            };
            let (status, start, len) = match range {
                ByteRange::Full => (StatusCode::OK, 0, size),
                ByteRange::Part { start, len } => (StatusCode::PARTIAL_CONTENT, start, len),
                ByteRange::Unsatisfiable => {
                    let mut r = text(
                        StatusCode::RANGE_NOT_SATISFIABLE,
                        "invalid range: failed to overlap",
                    );
                    if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                        r.headers_mut().insert(header::CONTENT_RANGE, v);
                    }
                    return r;
                }
            };
            if start > 0 {
                if let Err(e) = std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(start)) {
                    return boxd_error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string());
                }
            }
            let file = tokio::fs::File::from_std(file).take(len);
            let stream = futures_util::stream::unfold(file, |mut f| async move {
                let mut buf = vec![0u8; 64 * 1024];
                match f.read(&mut buf).await {
                    Ok(0) => None,
                    Ok(n) => {
                        buf.truncate(n);
                        Some((Ok::<Bytes, io::Error>(Bytes::from(buf)), f))
                    }
                    Err(e) => Some((Err(e), f)),
                }
            });
            let mut resp = Response::new(Body::from_stream(stream));
            *resp.status_mut() = status;
            let h = resp.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
            h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
            if status == StatusCode::PARTIAL_CONTENT {
                let end = start + len - 1;
                if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{end}/{size}")) {
                    h.insert(header::CONTENT_RANGE, v);
                }
            }
            if let Some(v) = content_disposition("inline", &name) {
                h.insert(header::CONTENT_DISPOSITION, v);
            }
            resp
        }
        ReadTarget::Dir(fd) => {
            if format.as_deref() != Some("zip") {
                return boxd_error(
                    StatusCode::BAD_REQUEST,
                    "path is a directory (use format=zip to download it)",
                );
            }
            // the whole tree is listed first: a tree too deep, too large or with names the
            // format cannot hold is refused before a byte is sent
            let prefix = name.clone();
            let scanned = tokio::task::spawn_blocking(move || {
                zip::scan(&fd, &prefix).map(|listing| (fd, listing))
            })
            .await;
            let (fd, listing) = match scanned {
                Ok(Ok(t)) => t,
                Ok(Err(e)) => return file_error(e),
                Err(e) => return boxd_error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
            };
            let (tx, rx) = mpsc::channel::<Result<Bytes, io::Error>>(8);
            tokio::task::spawn_blocking(move || {
                let _keep = rt; // the sandbox root stays reachable while zipping
                let writer = ChannelWriter::new(tx.clone());
                match zip::write(&fd, listing, writer) {
                    Ok(mut w) => {
                        let _ = std::io::Write::flush(&mut w);
                    }
                    Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {}
                    Err(e) => ChannelWriter::new(tx).fail(e),
                }
            });
            let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|item| (item, rx))
            });
            let mut resp = Response::new(Body::from_stream(stream));
            let h = resp.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/zip"),
            );
            let zip_name = if name.is_empty() {
                "root".to_owned()
            } else {
                name
            };
            if let Some(v) = content_disposition("attachment", &format!("{zip_name}.zip")) {
                h.insert(header::CONTENT_DISPOSITION, v);
            }
            resp
        }
    }
}

async fn files_post(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Body,
) -> Response {
    let (rt, path, _) = match file_target(&app, &headers, query.as_deref()).await {
        Ok(t) => t,
        Err(r) => return *r,
    };
    let owner = rt.root_id;
    let open = move |root: &std::os::fd::OwnedFd, p: &str| files::open_write(root, p, owner);
    let file = match open_in_root(&rt, &path, open).await {
        Ok(f) => f,
        Err(r) => return *r,
    };
    let mut file = tokio::fs::File::from_std(file);
    let mut size: u64 = 0;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                return boxd_error(StatusCode::BAD_REQUEST, &format!("upload interrupted: {e}"))
            }
        };
        if let Err(e) = file.write_all(&chunk).await {
            return file_error(FileError::from(e));
        }
        size += chunk.len() as u64;
    }
    if let Err(e) = file.flush().await {
        return file_error(FileError::from(e));
    }
    drop(rt);
    json(
        StatusCode::OK,
        &serde_json::json!({ "path": path, "size": size }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_routing() {
        let mut h = HeaderMap::new();
        h.insert(
            "host",
            HeaderValue::from_static("boxd-1234-abcd.sandbox.superserve.ai"),
        );
        assert_eq!(id_from_host(&h).as_deref(), Some("1234-abcd"));
        h.insert("host", HeaderValue::from_static("127.0.0.1:8081"));
        assert_eq!(id_from_host(&h), None);
        assert_eq!(signal_number("SIGKILL"), None);
        assert_eq!(signal_number("SIGTERM"), Some(libc::SIGTERM));
        let (p, f) = file_query(Some("path=%2Fout&format=zip"));
        assert_eq!(p.as_deref(), Some("/out"));
        assert_eq!(f.as_deref(), Some("zip"));
    }

    #[test]
    fn exec_numbers_are_range_checked() {
        let body = |t: &str| -> ExecBody {
            serde_json::from_str(&format!(r#"{{"command":"true","timeout_s":{t}}}"#)).unwrap()
        };
        assert!(check_exec_body(&body("0")).is_ok());
        assert!(check_exec_body(&body("604800")).is_ok());
        assert!(check_exec_body(&body("604801")).is_err());
        assert!(check_exec_body(&body("18446744073709551615")).is_err());
    }

    #[test]
    fn spawn_errors_a_client_causes_are_4xx() {
        let e = |step: Option<&str>, errno: i32| SpawnError {
            step: step.map(str::to_owned),
            source: io::Error::from_raw_os_error(errno),
        };
        assert_eq!(
            spawn_status(&e(None, libc::E2BIG)).0,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            spawn_status(&e(None, libc::EACCES)).0,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            spawn_status(&e(None, libc::ENOENT)).0,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            spawn_status(&e(None, libc::ETXTBSY)).0,
            StatusCode::CONFLICT
        );
        assert_eq!(
            spawn_status(&e(
                Some("changing to the working directory /x"),
                libc::ENOTDIR
            ))
            .0,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            spawn_status(&e(None, libc::EAGAIN)).0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        // the backend's own steps failing is its own failure
        assert_eq!(
            spawn_status(&e(Some("entering the PID namespace"), libc::EPERM)).0,
            StatusCode::INTERNAL_SERVER_ERROR
        );
        assert!(spawn_message(&e(None, libc::E2BIG)).contains("too long"));
    }
}
