//! The one transport both flavours use: reqwest for HTTP, tokio-tungstenite for exec sessions.
//!
//! The async flavour drives these futures on the caller's runtime; the blocking flavour drives
//! them on the SDK's own I/O runtime (see `rt::blocking`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream::{SplitSink, StreamExt};
use futures_util::SinkExt;
use reqwest::header::HeaderMap;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch, Notify};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tracing::Instrument;

use crate::config::Config;
use crate::error::{Error, Result, TimeoutKind};
use crate::models::{CommandResult, ExecEvent};
use crate::wire::exec::{
    close_detail, closed_early, parse_text_frame, Callbacks, Collected, Failure, FrameDecoder,
    Lifecycle, MAX_INBOUND_FRAME,
};
use crate::wire::{Body, Req, Resp, USER_AGENT};

/// An HTTP client (one connection pool) for one configuration and flavour.
pub(crate) struct Client {
    client: reqwest::Client,
}

/// Maps a transport error to the crate's error.
pub(crate) fn transport_error(req: &Req, e: reqwest::Error) -> Error {
    if e.is_timeout() {
        let kind = if e.is_connect() {
            TimeoutKind::Connect
        } else {
            TimeoutKind::Request
        };
        Error::timeout(kind, format!("{} timed out", req.what()))
    } else {
        let msg = format!("{}: {}", req.what(), display_chain(&e));
        Error::connection(msg, Some(Box::new(e)))
    }
}

fn display_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        let t = inner.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = inner.source();
    }
    s
}

/// The span of one HTTP attempt (method, path without query values, attempt number; status
/// and elapsed time recorded when known). Never carries headers or bodies.
fn attempt_span(req: &Req, attempt: u32) -> tracing::Span {
    tracing::debug_span!(
        "superserve.http",
        method = %req.method,
        path = %req.log_path(),
        attempt,
        status = tracing::field::Empty,
        elapsed_ms = tracing::field::Empty,
    )
}

fn record_outcome(span: &tracing::Span, status: Option<u16>, started: Instant) {
    if let Some(s) = status {
        span.record("status", s);
    }
    span.record("elapsed_ms", started.elapsed().as_secs_f64() * 1000.0);
}

impl Client {
    pub(crate) fn new(config: &Config) -> Result<Client> {
        let client = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .connect_timeout(config.inner.timeouts.connect)
            .pool_max_idle_per_host(20)
            .build()
            .map_err(|e| {
                Error::connection(format!("cannot build HTTP client: {e}"), Some(Box::new(e)))
            })?;
        Ok(Client { client })
    }

    fn builder(&self, req: &Req) -> reqwest::RequestBuilder {
        let mut b = self.client.request(req.method.clone(), &req.url);
        for (k, v) in &req.headers {
            b = b.header(k.clone(), v.clone());
        }
        match &req.body {
            Body::Empty => b,
            Body::Json(j) => b.body(j.clone()),
            Body::Bytes(bytes) => b
                .header("content-type", "application/octet-stream")
                .body(bytes.clone()),
        }
    }

    /// Sends a request whose whole exchange must finish within `timeout`, and buffers the
    /// answer (at most `cap` bytes).
    pub(crate) async fn fetch(
        &self,
        req: &Req,
        timeout: Duration,
        cap: u64,
        attempt: u32,
    ) -> Result<Resp> {
        let span = attempt_span(req, attempt);
        let started = Instant::now();
        let result = async {
            let mut resp = self
                .builder(req)
                .timeout(timeout)
                .send()
                .await
                .map_err(|e| transport_error(req, e))?;
            let status = resp.status().as_u16();
            let headers = std::mem::take(resp.headers_mut());
            let body = read_capped(resp, cap, req).await?;
            Ok(Resp {
                status,
                headers,
                body,
            })
        }
        .instrument(span.clone())
        .await;
        record_outcome(&span, result.as_ref().ok().map(|r| r.status), started);
        result
    }

    /// Sends a request whose body is read as it arrives; every wait (for the headers, for each
    /// chunk) is bounded by `idle`.
    pub(crate) async fn open_stream(
        &self,
        req: &Req,
        upload: Option<reqwest::Body>,
        idle: Duration,
        attempt: u32,
    ) -> Result<StreamResponse> {
        let span = attempt_span(req, attempt);
        let started = Instant::now();
        let mut builder = self.builder(req);
        if let Some(body) = upload {
            builder = builder
                .header("content-type", "application/octet-stream")
                .body(body);
        }
        let sent = tokio::time::timeout(idle, builder.send())
            .instrument(span.clone())
            .await;
        let mut resp = match sent {
            Err(_) => {
                record_outcome(&span, None, started);
                return Err(Error::timeout(
                    TimeoutKind::StreamIdle,
                    format!("{}: no response within {}s", req.what(), idle.as_secs_f64()),
                ));
            }
            Ok(r) => r.map_err(|e| transport_error(req, e))?,
        };
        let status = resp.status().as_u16();
        record_outcome(&span, Some(status), started);
        Ok(StreamResponse {
            status,
            headers: std::mem::take(resp.headers_mut()),
            inner: resp,
            idle,
            what: req.what(),
        })
    }
}

/// Reads a whole body, refusing to go past `cap` bytes.
async fn read_capped(mut resp: reqwest::Response, cap: u64, req: &Req) -> Result<Bytes> {
    let too_large = || Error::too_large(format!("the answer to {}", req.what()), cap);
    if let Some(len) = resp.content_length() {
        if len > cap {
            return Err(too_large());
        }
        return resp.bytes().await.map_err(|e| transport_error(req, e));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| transport_error(req, e))? {
        if (body.len() + chunk.len()) as u64 > cap {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(body))
}

/// A response whose body is read chunk by chunk. Dropping it closes the connection.
pub(crate) struct StreamResponse {
    pub(crate) status: u16,
    pub(crate) headers: HeaderMap,
    inner: reqwest::Response,
    idle: Duration,
    what: String,
}

impl StreamResponse {
    /// The next chunk of the body, `None` at its end; waits at most the idle timeout.
    pub(crate) async fn next_chunk(&mut self) -> Result<Option<Bytes>> {
        match tokio::time::timeout(self.idle, self.inner.chunk()).await {
            Err(_) => Err(Error::timeout(
                TimeoutKind::StreamIdle,
                format!("{}: no data for {}s", self.what, self.idle.as_secs_f64()),
            )),
            Ok(r) => r.map_err(|e| {
                Error::connection(
                    format!("{}: reading the response: {}", self.what, display_chain(&e)),
                    Some(Box::new(e)),
                )
            }),
        }
    }
}

/// Everything needed to open an `exec/connect` session.
pub(crate) struct ExecDial {
    pub(crate) url: String,
    /// Offered subprotocols (the second carries the access token: never log this).
    pub(crate) protocols: Vec<String>,
    /// Value of `X-Superserve-Sandbox-Id`, in shared-host mode.
    pub(crate) sandbox_id: Option<String>,
    pub(crate) connect_timeout: Duration,
    /// The start frame (JSON text).
    pub(crate) start: String,
    pub(crate) callbacks: Callbacks,
    /// Per-stream cap on the output collected for the result.
    pub(crate) max_output_bytes: usize,
}

impl ExecDial {
    /// The handshake request.
    fn request(&self) -> Result<tokio_tungstenite::tungstenite::http::Request<()>> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        use tokio_tungstenite::tungstenite::http;
        let bad = |what: &str| Error::invalid(format!("cannot open exec/connect: {what}"));
        let mut req = self
            .url
            .as_str()
            .into_client_request()
            .map_err(|_| bad("invalid URL"))?;
        let h = req.headers_mut();
        let mut protocols = http::HeaderValue::from_str(&self.protocols.join(", "))
            .map_err(|_| bad("the access token is not a valid header value"))?;
        protocols.set_sensitive(true);
        h.insert("sec-websocket-protocol", protocols);
        h.insert("user-agent", http::HeaderValue::from_static(USER_AGENT));
        if let Some(id) = &self.sandbox_id {
            h.insert(
                "x-superserve-sandbox-id",
                http::HeaderValue::from_str(id).map_err(|_| bad("invalid sandbox id"))?,
            );
        }
        Ok(req)
    }
}

/// Describes a WebSocket failure without leaking the request (its headers carry the token).
fn ws_error_detail(e: &dyn std::fmt::Display) -> String {
    let s = e.to_string();
    if s.contains("token.") {
        "WebSocket handshake failed".to_owned()
    } else {
        s
    }
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How a session ended: the result, or why it has none.
pub(crate) type Outcome = std::result::Result<CommandResult, Failure>;

/// An item of a session's event stream.
pub(crate) type EventItem = std::result::Result<ExecEvent, Failure>;

/// The next item of a session's event channel for the flavours' `ExecEvents`: after `Exit`
/// or an error, `None`; the channel closing before either is an error.
pub(crate) fn session_item(item: Option<EventItem>, done: &mut bool) -> Option<Result<ExecEvent>> {
    if *done {
        return None;
    }
    match item {
        Some(Ok(ev)) => {
            *done = matches!(ev, ExecEvent::Exit(_));
            Some(Ok(ev))
        }
        Some(Err(f)) => {
            *done = true;
            Some(Err(f.into_error()))
        }
        None => {
            *done = true;
            Some(Err(Failure::Stream(
                "exec/connect: the session ended before the command finished".to_owned(),
            )
            .into_error()))
        }
    }
}

/// State shared by a session's handle, its stdin writers and its I/O tasks.
struct Shared {
    outcome: watch::Sender<Option<Outcome>>,
    /// Output collected for the result, and the event subscriber (if `events()` was called):
    /// one lock, so that a subscriber sees exactly what was not collected before it came.
    output: std::sync::Mutex<Output>,
    /// Asks the writer task to end the session (SIGTERM if still running, then close).
    close: Notify,
}

struct Output {
    collected: Collected,
    tap: Option<mpsc::Sender<EventItem>>,
}

impl Shared {
    fn is_settled(&self) -> bool {
        self.outcome.borrow().is_some()
    }

    fn settle(&self, outcome: Outcome) {
        self.outcome.send_if_modified(|v| {
            if v.is_none() {
                *v = Some(outcome);
                true
            } else {
                false
            }
        });
    }

    fn output(&self) -> std::sync::MutexGuard<'_, Output> {
        self.output.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// An `exec/connect` session: a reader task (output → callbacks, collection, subscriber) and a
/// writer task (stdin frames, control frames, close). Dropping the handle ends the session
/// (SIGTERM if the command still runs, then close), in both flavours.
pub(crate) struct ExecSession {
    frames: mpsc::Sender<Message>,
    shared: Arc<Shared>,
}

/// A WebSocket frame for a session.
pub(crate) type Frame = Message;

/// A binary frame (`[channel][payload]`).
pub(crate) fn binary_frame(bytes: Vec<u8>) -> Frame {
    Message::Binary(bytes.into())
}

/// A text (control) frame.
pub(crate) fn text_frame(text: String) -> Frame {
    Message::Text(text.into())
}

/// What a stdin writer holds: the frame queue and the session's state.
#[derive(Clone)]
pub(crate) struct StdinSender {
    frames: mpsc::Sender<Message>,
    shared: Arc<Shared>,
}

impl ExecSession {
    /// Dials, sends the start frame and starts the I/O tasks on the current runtime.
    pub(crate) async fn connect(dial: ExecDial) -> Result<ExecSession> {
        let req = dial.request()?;
        let config = WebSocketConfig::default()
            .max_message_size(Some(MAX_INBOUND_FRAME))
            .max_frame_size(Some(MAX_INBOUND_FRAME));
        let connecting = tokio_tungstenite::connect_async_with_config(req, Some(config), true);
        let (ws, _) = match tokio::time::timeout(dial.connect_timeout, connecting).await {
            Err(_) => {
                return Err(Error::timeout(
                    TimeoutKind::Connect,
                    "exec/connect: the WebSocket handshake timed out",
                ))
            }
            Ok(Err(e)) => {
                return Err(Error::connection(
                    format!("exec/connect: {}", ws_error_detail(&e)),
                    None,
                ))
            }
            Ok(Ok(v)) => v,
        };
        let (mut sink, stream) = ws.split();
        sink.send(Message::Text(dial.start.into()))
            .await
            .map_err(|e| {
                Error::connection(
                    format!("exec/connect: cannot send the start frame: {e}"),
                    None,
                )
            })?;
        let (outcome, _) = watch::channel(None);
        let shared = Arc::new(Shared {
            outcome,
            output: std::sync::Mutex::new(Output {
                collected: Collected::new(dial.max_output_bytes),
                tap: None,
            }),
            close: Notify::new(),
        });
        let (frames, frames_rx) = mpsc::channel(64);
        let reader = tokio::spawn(read_loop(stream, shared.clone(), dial.callbacks));
        tokio::spawn(write_loop(sink, frames_rx, shared.clone(), reader));
        Ok(ExecSession { frames, shared })
    }

    pub(crate) fn is_settled(&self) -> bool {
        self.shared.is_settled()
    }

    /// A handle for writing stdin and control frames.
    pub(crate) fn stdin(&self) -> StdinSender {
        StdinSender {
            frames: self.frames.clone(),
            shared: self.shared.clone(),
        }
    }

    /// Waits for the command to finish.
    pub(crate) async fn wait(&self) -> Outcome {
        let mut rx = self.shared.outcome.subscribe();
        let result = match rx.wait_for(Option::is_some).await {
            Ok(v) => v.clone(),
            Err(_) => None,
        };
        result.unwrap_or_else(|| Err(Failure::Stream("exec/connect: session ended".to_owned())))
    }

    /// Subscribes to the session's events: first what was collected so far (stdout, then
    /// stderr), then every event as it arrives, the last being `Exit` or a failure. A second
    /// subscription replaces the first.
    pub(crate) fn events(&self) -> mpsc::Receiver<EventItem> {
        let (tx, rx) = mpsc::channel(64);
        let mut out = self.shared.output();
        let replay = [
            (!out.collected.stdout.is_empty())
                .then(|| ExecEvent::Stdout(out.collected.stdout.clone())),
            (!out.collected.stderr.is_empty())
                .then(|| ExecEvent::Stderr(out.collected.stderr.clone())),
        ];
        for ev in replay.into_iter().flatten() {
            let _ = tx.try_send(Ok(ev));
        }
        match self.shared.outcome.borrow().clone() {
            Some(Ok(r)) => {
                let _ = tx.try_send(Ok(ExecEvent::Exit(r.exit_code)));
            }
            Some(Err(f)) => {
                let _ = tx.try_send(Err(f));
            }
            None => out.tap = Some(tx),
        }
        rx
    }

    /// Ends the session: SIGTERM if the command still runs, then close. A later `wait` fails
    /// with "session closed" unless the command had already finished.
    pub(crate) fn close(&self) {
        self.shared.close.notify_one();
    }
}

impl Drop for ExecSession {
    fn drop(&mut self) {
        self.close();
    }
}

impl StdinSender {
    /// Queues one frame; a no-op once the command has finished.
    pub(crate) async fn send(&self, msg: Message) -> Result<()> {
        if self.shared.is_settled() {
            return Ok(());
        }
        match self.frames.send(msg).await {
            Ok(()) => Ok(()),
            Err(_) if self.shared.is_settled() => Ok(()),
            Err(_) => Err(Error::stream("exec/connect: the session has ended")),
        }
    }

    /// The frame queue itself (for `AsyncWrite`, which reserves room before writing).
    #[cfg(feature = "async")]
    pub(crate) fn sender(&self) -> mpsc::Sender<Frame> {
        self.frames.clone()
    }

    pub(crate) fn is_settled(&self) -> bool {
        self.shared.is_settled()
    }
}

async fn read_loop(
    mut stream: futures_util::stream::SplitStream<Ws>,
    shared: Arc<Shared>,
    callbacks: Callbacks,
) {
    let mut decoder = FrameDecoder::default();
    let deliver = |ev: ExecEvent, shared: &Shared| {
        callbacks.call(&ev);
        let mut out = shared.output();
        out.collected.push(&ev);
        out.tap.clone().map(|tap| (tap, ev))
    };
    let outcome: Outcome = loop {
        let msg = stream.next().await;
        let mut pending = Vec::new();
        let end = match msg {
            Some(Ok(Message::Binary(b))) => {
                pending.extend(decoder.binary(&b));
                None
            }
            Some(Ok(Message::Text(t))) => match parse_text_frame(t.as_str()) {
                Lifecycle::Finished { outcome, note } => {
                    pending.extend(decoder.flush());
                    pending.extend(note.map(ExecEvent::Stderr));
                    Some(outcome)
                }
                Lifecycle::Error(e) => {
                    pending.push(ExecEvent::Stderr(e));
                    None
                }
                Lifecycle::Other => None,
            },
            Some(Ok(Message::Close(frame))) => {
                let (code, reason) = frame
                    .map(|f| (Some(u16::from(f.code)), f.reason.to_string()))
                    .unwrap_or((None, String::new()));
                pending.extend(decoder.flush());
                Some(Err(closed_early(&close_detail(code, &reason))))
            }
            Some(Ok(_)) => None,
            Some(Err(e)) => {
                pending.extend(decoder.flush());
                Some(Err(closed_early(&e.to_string())))
            }
            None => {
                pending.extend(decoder.flush());
                Some(Err(closed_early("connection dropped")))
            }
        };
        for ev in pending {
            if let Some((tap, ev)) = deliver(ev, &shared) {
                // Backpressure: an unread subscriber holds the reader (and so the socket).
                if tap.send(Ok(ev)).await.is_err() {
                    shared.output().tap = None;
                }
            }
        }
        if let Some(end) = end {
            break match end {
                Ok(code) => Ok(shared.output().collected.result(code)),
                Err(f) => Err(f),
            };
        }
    };
    let tap = shared.output().tap.take();
    if let Some(tap) = tap {
        let last = match &outcome {
            Ok(r) => Ok(ExecEvent::Exit(r.exit_code)),
            Err(f) => Err(f.clone()),
        };
        let _ = tap.send(last).await;
    }
    shared.settle(outcome);
}

/// Returns once the session has an outcome.
async fn until_settled(rx: &mut watch::Receiver<Option<Outcome>>) {
    loop {
        let done = rx.borrow_and_update().is_some();
        if done || rx.changed().await.is_err() {
            return;
        }
    }
}

/// How long a closed session waits for its command to finish after SIGTERM before it closes
/// the connection.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

async fn write_loop(
    mut sink: SplitSink<Ws, Message>,
    mut frames: mpsc::Receiver<Message>,
    shared: Arc<Shared>,
    mut reader: tokio::task::JoinHandle<()>,
) {
    let mut settled = shared.outcome.subscribe();
    loop {
        tokio::select! {
            biased;
            _ = shared.close.notified() => {
                if !shared.is_settled() {
                    let _ = sink
                        .send(Message::Text(crate::wire::exec::signal_frame("SIGTERM").into()))
                        .await;
                    shared.settle(Err(Failure::Stream("exec/connect: session closed".to_owned())));
                    // Give the command a moment to handle SIGTERM before the connection goes
                    // (the server kills whatever is left when it does).
                    let _ = tokio::time::timeout(CLOSE_GRACE, &mut reader).await;
                }
                break;
            }
            _ = until_settled(&mut settled) => {
                // The command finished: nothing more to send.
                break;
            }
            msg = frames.recv() => match msg {
                Some(m) => {
                    if let Err(e) = sink.send(m).await {
                        if !shared.is_settled() {
                            tracing::debug!(error = %e, "exec/connect: write failed");
                        }
                        break;
                    }
                }
                // Every sender is gone (the handle and all stdin writers): same as close.
                None => shared.close.notify_one(),
            },
        }
    }
    let _ = sink.close().await;
    reader.abort();
    shared.settle(Err(Failure::Stream(
        "exec/connect: session closed".to_owned(),
    )));
}
