//! `POST /superserve.boxd.v1.DesktopService/<Method>` (protocol.md §4.6): Connect RPC over
//! JSON. Bodies are proto-JSON (camelCase field names, the original snake_case names
//! accepted too; 64-bit and 32-bit integers as numbers or decimal strings; enums by name;
//! unknown fields ignored); answers omit zero values as proto-JSON does; errors are Connect
//! errors, `{"code","message"}` with the Connect HTTP status.
//!
//! Every body is checked completely (types and ranges) before anything reaches the display;
//! coordinates are checked against the display's size under the input lock, before the first
//! action of a batch runs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::{json, Map, Value};

use super::encode::{encode, Format};
use super::keysym;
use super::wire::Request;
use super::{DesktopError, Screen};

/// Largest batch of `SendActions` and `Step`.
pub(crate) const MAX_ACTIONS: usize = 1000;
/// Longest text of one `SendKey` or key action, in characters.
pub(crate) const MAX_TEXT_CHARS: usize = 10_000;
/// Most modifiers of a chord.
const MAX_MODIFIERS: usize = 8;
/// Largest scroll, in wheel clicks per axis.
pub(crate) const MAX_SCROLL: i64 = 1000;
/// Longest settle time and quiet time of a `Step`, ms.
pub(crate) const MAX_SETTLE_MS: i64 = 2000;
/// Settle time of a `Step` with `waitForChange` and `settleMs` 0.
const DEFAULT_CHANGE_WAIT_MS: u64 = 1000;
/// How often a `Step` waiting for a change looks at the display.
const POLL: Duration = Duration::from_millis(20);
/// Largest encoded frame answered (its base64 stays under the SDKs' 48 MiB cap).
const MAX_IMAGE_BYTES: usize = 34 * 1024 * 1024;
/// Display size range of `Resize`.
pub(crate) const MIN_WIDTH: i64 = 320;
pub(crate) const MIN_HEIGHT: i64 = 200;
pub(crate) const MAX_SIDE: i64 = 8192;

/// The methods of `superserve.boxd.v1.DesktopService`.
pub(crate) const METHODS: &[&str] = &[
    "Screenshot",
    "SendPointer",
    "Scroll",
    "SendKey",
    "SendActions",
    "Step",
    "Resize",
];

/// A Connect error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ConnectError {
    pub code: &'static str,
    pub message: String,
}

impl ConnectError {
    pub(crate) fn new(code: &'static str, message: impl Into<String>) -> ConnectError {
        ConnectError {
            code,
            message: message.into(),
        }
    }

    fn invalid(message: impl Into<String>) -> ConnectError {
        ConnectError::new("invalid_argument", message)
    }

    fn out_of_range(message: impl Into<String>) -> ConnectError {
        ConnectError::new("out_of_range", message)
    }

    /// The HTTP status of the code (Connect protocol, "Error codes").
    pub(crate) fn status(&self) -> StatusCode {
        match self.code {
            "canceled" => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
            "invalid_argument" | "failed_precondition" | "out_of_range" => StatusCode::BAD_REQUEST,
            "deadline_exceeded" => StatusCode::GATEWAY_TIMEOUT,
            "not_found" => StatusCode::NOT_FOUND,
            "already_exists" | "aborted" => StatusCode::CONFLICT,
            "permission_denied" => StatusCode::FORBIDDEN,
            "resource_exhausted" => StatusCode::TOO_MANY_REQUESTS,
            "unimplemented" => StatusCode::NOT_IMPLEMENTED,
            "unavailable" => StatusCode::SERVICE_UNAVAILABLE,
            "unauthenticated" => StatusCode::UNAUTHORIZED,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<DesktopError> for ConnectError {
    fn from(e: DesktopError) -> Self {
        match e {
            DesktopError::Unavailable(m) => ConnectError::new("unavailable", m),
            DesktopError::Failed(m) => ConnectError::new("internal", m),
        }
    }
}

impl IntoResponse for ConnectError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut r = (
            status,
            axum::Json(json!({"code": self.code, "message": self.message})),
        )
            .into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        r
    }
}

type Result<T> = std::result::Result<T, ConnectError>;

/// The error for a sandbox that has no desktop.
pub(crate) fn no_desktop() -> ConnectError {
    ConnectError::new(
        "failed_precondition",
        format!(
            "this sandbox has no desktop: create it from the {} template",
            super::TEMPLATE
        ),
    )
}

/// Checks the method name and the content type; `Err` is the answer to send.
pub(crate) fn check_call(method: &str, headers: &HeaderMap) -> Result<()> {
    if !METHODS.contains(&method) {
        return Err(ConnectError::new(
            "unimplemented",
            format!("superserve.boxd.v1.DesktopService has no method {method:?}"),
        ));
    }
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    let base = ct.split(';').next().unwrap_or("").trim();
    if !base.eq_ignore_ascii_case("application/json") {
        return Err(ConnectError::invalid(format!(
            "content type {base:?} is not supported: send application/json"
        )));
    }
    Ok(())
}

// ---- proto-JSON reading -------------------------------------------------------------------

/// A JSON object's field under its camelCase or snake_case name (`null` = absent).
fn field<'a>(obj: &'a Map<String, Value>, camel: &str, snake: &str) -> Option<&'a Value> {
    obj.get(camel)
        .or_else(|| obj.get(snake))
        .filter(|v| !v.is_null())
}

fn object<'a>(v: &'a Value, what: &str) -> Result<&'a Map<String, Value>> {
    v.as_object()
        .ok_or_else(|| ConnectError::invalid(format!("{what} must be a JSON object")))
}

/// An integer field (a JSON number without fraction, or a decimal string), absent = 0.
fn int(obj: &Map<String, Value>, camel: &str, snake: &str) -> Result<i64> {
    let Some(v) = field(obj, camel, snake) else {
        return Ok(0);
    };
    let parsed = match v {
        Value::Number(n) => n.as_i64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
                .map(|f| f as i64)
        }),
        Value::String(s) => s.trim().parse::<i64>().ok(),
        _ => None,
    };
    parsed.ok_or_else(|| ConnectError::invalid(format!("{camel} must be an integer, got {v}")))
}

fn boolean(obj: &Map<String, Value>, camel: &str, snake: &str) -> Result<bool> {
    match field(obj, camel, snake) {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(v) => Err(ConnectError::invalid(format!(
            "{camel} must be true or false, got {v}"
        ))),
    }
}

/// An enum field by name; absent, `null` and the `_UNSPECIFIED` name give `None`.
fn enumeration<'a>(
    obj: &'a Map<String, Value>,
    name: &str,
    prefix: &str,
) -> Result<Option<&'a str>> {
    match field(obj, name, name) {
        None => Ok(None),
        Some(Value::String(s)) if s == &format!("{prefix}UNSPECIFIED") => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(v) => Err(ConnectError::invalid(format!(
            "{name} must be an enum name ({prefix}...), got {v}"
        ))),
    }
}

fn format_of(obj: &Map<String, Value>) -> Result<Format> {
    match enumeration(obj, "format", "FRAME_FORMAT_")? {
        None | Some("FRAME_FORMAT_PNG") => Ok(Format::Png),
        Some("FRAME_FORMAT_JPEG") => Ok(Format::Jpeg),
        Some(other) => Err(ConnectError::invalid(format!(
            "format {other:?} is not one of FRAME_FORMAT_PNG, FRAME_FORMAT_JPEG"
        ))),
    }
}

// ---- requests -----------------------------------------------------------------------------

/// What a pointer action does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PointerKind {
    Click,
    DoubleClick,
    Move,
    Down,
    Up,
}

/// One action of a batch (or the body of `SendPointer`, `SendKey`, `Scroll`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    Pointer {
        x: u32,
        y: u32,
        /// X button number: 1 left, 2 middle, 3 right.
        button: u8,
        kind: PointerKind,
    },
    /// Typed text, as keysyms.
    Text(Vec<u32>),
    /// A key with modifiers held, as keysyms.
    Chord {
        key: u32,
        modifiers: Vec<u32>,
    },
    Scroll {
        dx: i32,
        dy: i32,
    },
}

fn coordinate(obj: &Map<String, Value>, name: &str) -> Result<u32> {
    let v = int(obj, name, name)?;
    u32::try_from(v)
        .ok()
        .filter(|v| i64::from(*v) < MAX_SIDE)
        .ok_or_else(|| {
            ConnectError::out_of_range(format!(
                "{name} must be between 0 and {}, got {v}",
                MAX_SIDE - 1
            ))
        })
}

pub(crate) fn parse_pointer(v: &Value) -> Result<Action> {
    let obj = object(v, "pointer")?;
    let x = coordinate(obj, "x")?;
    let y = coordinate(obj, "y")?;
    let button = match enumeration(obj, "button", "POINTER_BUTTON_")? {
        None | Some("POINTER_BUTTON_LEFT") => 1,
        Some("POINTER_BUTTON_MIDDLE") => 2,
        Some("POINTER_BUTTON_RIGHT") => 3,
        Some(other) => {
            return Err(ConnectError::invalid(format!(
                "button {other:?} is not one of POINTER_BUTTON_LEFT, POINTER_BUTTON_RIGHT, \
                 POINTER_BUTTON_MIDDLE"
            )))
        }
    };
    let kind = match enumeration(obj, "action", "POINTER_ACTION_")? {
        Some("POINTER_ACTION_CLICK") => PointerKind::Click,
        Some("POINTER_ACTION_DOUBLE_CLICK") => PointerKind::DoubleClick,
        Some("POINTER_ACTION_MOVE") => PointerKind::Move,
        Some("POINTER_ACTION_DOWN") => PointerKind::Down,
        Some("POINTER_ACTION_UP") => PointerKind::Up,
        None => {
            return Err(ConnectError::invalid(
                "action is required (POINTER_ACTION_CLICK, _DOUBLE_CLICK, _MOVE, _DOWN, _UP)",
            ))
        }
        Some(other) => {
            return Err(ConnectError::invalid(format!(
                "action {other:?} is not a pointer action"
            )))
        }
    };
    Ok(Action::Pointer { x, y, button, kind })
}

/// A `SendKey` body or a key action: `{"text"}` or `{"key", "modifiers"}`. `Ok(None)`: an
/// empty text (nothing to type).
pub(crate) fn parse_key(v: &Value) -> Result<Option<Action>> {
    let obj = object(v, "key")?;
    let text = field(obj, "text", "text");
    let key = field(obj, "key", "key");
    match (text, key) {
        (Some(_), Some(_)) => Err(ConnectError::invalid("send either text or key, not both")),
        (None, None) => Err(ConnectError::invalid("text or key is required")),
        (Some(t), None) => {
            let t = t
                .as_str()
                .ok_or_else(|| ConnectError::invalid("text must be a string"))?;
            let n = t.chars().count();
            if n > MAX_TEXT_CHARS {
                return Err(ConnectError::out_of_range(format!(
                    "text is at most {MAX_TEXT_CHARS} characters, got {n}"
                )));
            }
            if t.is_empty() {
                return Ok(None);
            }
            let keysyms = t
                .chars()
                .map(keysym::of_char)
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(ConnectError::invalid)?;
            Ok(Some(Action::Text(keysyms)))
        }
        (None, Some(k)) => {
            let name = k
                .as_str()
                .ok_or_else(|| ConnectError::invalid("key must be a string"))?;
            let key = keysym::of_name(name).map_err(ConnectError::invalid)?;
            let mods = match field(obj, "modifiers", "modifiers") {
                None => Vec::new(),
                Some(Value::Array(a)) => a.clone(),
                Some(_) => return Err(ConnectError::invalid("modifiers must be a list")),
            };
            if mods.len() > MAX_MODIFIERS {
                return Err(ConnectError::out_of_range(format!(
                    "a chord has at most {MAX_MODIFIERS} modifiers, got {}",
                    mods.len()
                )));
            }
            let modifiers = mods
                .iter()
                .map(|m| {
                    let name = m
                        .as_str()
                        .ok_or_else(|| ConnectError::invalid("modifiers must be strings"))?;
                    keysym::of_name(name).map_err(ConnectError::invalid)
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(Some(Action::Chord { key, modifiers }))
        }
    }
}

pub(crate) fn parse_scroll(v: &Value) -> Result<Action> {
    let obj = object(v, "scroll")?;
    let axis = |name: &str| -> Result<i32> {
        let d = int(obj, name, name)?;
        if d.abs() > MAX_SCROLL {
            return Err(ConnectError::out_of_range(format!(
                "{name} must be between -{MAX_SCROLL} and {MAX_SCROLL}, got {d}"
            )));
        }
        Ok(d as i32)
    };
    Ok(Action::Scroll {
        dx: axis("dx")?,
        dy: axis("dy")?,
    })
}

/// A batch: `{"actions": [{"pointer"|"key"|"scroll": ...}, ...]}`; empty texts dropped.
pub(crate) fn parse_actions(obj: &Map<String, Value>) -> Result<Vec<Action>> {
    let list = match field(obj, "actions", "actions") {
        None => return Ok(Vec::new()),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(ConnectError::invalid("actions must be a list")),
    };
    if list.len() > MAX_ACTIONS {
        return Err(ConnectError::out_of_range(format!(
            "a batch holds at most {MAX_ACTIONS} actions, got {}",
            list.len()
        )));
    }
    let mut out = Vec::with_capacity(list.len());
    for (i, a) in list.iter().enumerate() {
        let at = |e: ConnectError| ConnectError::new(e.code, format!("action {i}: {}", e.message));
        let o = object(a, "an action").map_err(at)?;
        let kinds: Vec<&str> = ["pointer", "key", "scroll"]
            .into_iter()
            .filter(|k| field(o, k, k).is_some())
            .collect();
        let action = match kinds.as_slice() {
            ["pointer"] => Some(parse_pointer(&o["pointer"]).map_err(at)?),
            ["key"] => parse_key(&o["key"]).map_err(at)?,
            ["scroll"] => Some(parse_scroll(&o["scroll"]).map_err(at)?),
            _ => {
                return Err(at(ConnectError::invalid(
                    "an action has exactly one of pointer, key, scroll",
                )))
            }
        };
        out.extend(action);
    }
    Ok(out)
}

/// A `Step` body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Step {
    pub actions: Vec<Action>,
    pub settle_ms: u64,
    pub format: Format,
    pub wait_for_change: bool,
    pub quiet_ms: u64,
}

pub(crate) fn parse_step(obj: &Map<String, Value>) -> Result<Step> {
    let count = field(obj, "actions", "actions")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    if count == 0 {
        return Err(ConnectError::invalid("a step needs at least one action"));
    }
    let actions = parse_actions(obj)?;
    let ms = |camel: &str, snake: &str| -> Result<u64> {
        let v = int(obj, camel, snake)?;
        if !(0..=MAX_SETTLE_MS).contains(&v) {
            return Err(ConnectError::out_of_range(format!(
                "{camel} must be between 0 and {MAX_SETTLE_MS}, got {v}"
            )));
        }
        Ok(v as u64)
    };
    let settle_ms = ms("settleMs", "settle_ms")?;
    let quiet_ms = ms("quietMs", "quiet_ms")?;
    let wait_for_change = boolean(obj, "waitForChange", "wait_for_change")?;
    if quiet_ms > 0 && !wait_for_change {
        return Err(ConnectError::invalid("quietMs needs waitForChange"));
    }
    Ok(Step {
        actions,
        settle_ms,
        format: format_of(obj)?,
        wait_for_change,
        quiet_ms,
    })
}

pub(crate) fn parse_resize(obj: &Map<String, Value>) -> Result<(u32, u32)> {
    let (w, h) = (int(obj, "width", "width")?, int(obj, "height", "height")?);
    if !(MIN_WIDTH..=MAX_SIDE).contains(&w) || w % 8 != 0 || !(MIN_HEIGHT..=MAX_SIDE).contains(&h) {
        return Err(ConnectError::out_of_range(format!(
            "a display is {MIN_WIDTH}-{MAX_SIDE} wide (a multiple of 8) and \
             {MIN_HEIGHT}-{MAX_SIDE} high; got {w}x{h}"
        )));
    }
    Ok((w as u32, h as u32))
}

/// A parsed call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Call {
    Screenshot(Format),
    Actions(Vec<Action>),
    Step(Step),
    Resize(u32, u32),
}

/// Parses the body of `method` (already checked by [`check_call`]).
pub(crate) fn parse(method: &str, body: &[u8]) -> Result<Call> {
    let v: Value = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        serde_json::from_slice(body)
            .map_err(|e| ConnectError::invalid(format!("invalid JSON body: {e}")))?
    };
    let obj = object(&v, "the request body")?;
    Ok(match method {
        "Screenshot" => Call::Screenshot(format_of(obj)?),
        "SendPointer" => Call::Actions(vec![parse_pointer(&v)?]),
        "Scroll" => Call::Actions(vec![parse_scroll(&v)?]),
        "SendKey" => Call::Actions(parse_key(&v)?.into_iter().collect()),
        "SendActions" => Call::Actions(parse_actions(obj)?),
        "Step" => Call::Step(parse_step(obj)?),
        "Resize" => {
            let (w, h) = parse_resize(obj)?;
            Call::Resize(w, h)
        }
        other => {
            return Err(ConnectError::new(
                "unimplemented",
                format!("superserve.boxd.v1.DesktopService has no method {other:?}"),
            ))
        }
    })
}

// ---- execution ----------------------------------------------------------------------------

/// Checks every pointer coordinate of a batch against the display's size.
fn check_coordinates(actions: &[Action], (w, h): (u32, u32)) -> Result<()> {
    for (i, a) in actions.iter().enumerate() {
        if let Action::Pointer { x, y, .. } = a {
            if *x >= w || *y >= h {
                return Err(ConnectError::out_of_range(format!(
                    "action {i}: ({x}, {y}) is outside the {w}x{h} display"
                )));
            }
        }
    }
    Ok(())
}

/// Runs one action and waits until the X server has processed it.
async fn run(screen: &mut Screen, action: &Action) -> std::result::Result<(), DesktopError> {
    let click = |button: u8| {
        [
            Request::Button { button, down: true },
            Request::Button {
                button,
                down: false,
            },
        ]
    };
    let mut reqs: Vec<Request> = Vec::new();
    match action {
        Action::Pointer { x, y, button, kind } => {
            reqs.push(Request::Move {
                x: *x as u16,
                y: *y as u16,
            });
            let b = *button;
            match kind {
                PointerKind::Move => {}
                PointerKind::Click => reqs.extend(click(b)),
                PointerKind::DoubleClick => {
                    reqs.extend(click(1));
                    reqs.extend(click(1));
                }
                PointerKind::Down => reqs.push(Request::Button {
                    button: b,
                    down: true,
                }),
                PointerKind::Up => reqs.push(Request::Button {
                    button: b,
                    down: false,
                }),
            }
        }
        Action::Text(keysyms) => {
            for chunk in keysyms.chunks(4096) {
                reqs.push(Request::Type {
                    keysyms: chunk.to_vec(),
                });
            }
        }
        Action::Chord { key, modifiers } => {
            for m in modifiers {
                reqs.push(Request::Key {
                    keysym: *m,
                    down: true,
                });
            }
            reqs.push(Request::Key {
                keysym: *key,
                down: true,
            });
            reqs.push(Request::Key {
                keysym: *key,
                down: false,
            });
            for m in modifiers.iter().rev() {
                reqs.push(Request::Key {
                    keysym: *m,
                    down: false,
                });
            }
        }
        Action::Scroll { dx, dy } => {
            // X wheel buttons: 4 up, 5 down, 6 left, 7 right
            let (v, h) = (if *dy < 0 { 4 } else { 5 }, if *dx < 0 { 6 } else { 7 });
            for _ in 0..dy.unsigned_abs() {
                reqs.extend(click(v));
            }
            for _ in 0..dx.unsigned_abs() {
                reqs.extend(click(h));
            }
        }
    }
    reqs.push(Request::Sync);
    for r in &reqs {
        screen.act(r).await?;
    }
    Ok(())
}

/// Runs a batch; `Err((index, error))` for the first action that failed.
async fn run_all(
    screen: &mut Screen,
    actions: &[Action],
) -> std::result::Result<(), (usize, DesktopError)> {
    for (i, a) in actions.iter().enumerate() {
        run(screen, a).await.map_err(|e| (i, e))?;
    }
    Ok(())
}

/// Captures and encodes the display: `{"image","width","height","format"?}`.
async fn screenshot(
    screen: &mut Screen,
    format: Format,
) -> std::result::Result<Value, ConnectError> {
    let (width, height, rgb) = screen.capture().await?;
    let encoded = tokio::task::spawn_blocking(move || {
        encode(format, width, height, &rgb).map(|img| {
            let len = img.len();
            (base64::engine::general_purpose::STANDARD.encode(img), len)
        })
    })
    .await
    .map_err(|e| ConnectError::new("internal", e.to_string()))?
    .map_err(|e| ConnectError::new("internal", format!("cannot encode the frame: {e}")))?;
    let (image, len) = encoded;
    if len > MAX_IMAGE_BYTES {
        return Err(ConnectError::new(
            "resource_exhausted",
            format!(
                "the {width}x{height} frame is {len} bytes encoded, more than an answer may \
                 carry; use JPEG or a smaller display"
            ),
        ));
    }
    let mut v = json!({"image": image, "width": width, "height": height});
    if format == Format::Jpeg {
        v["format"] = json!("FRAME_FORMAT_JPEG");
    }
    Ok(v)
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Waits for the display to differ from `before`, then (with `quiet`) until it has been
/// still for `quiet`; bounded by `deadline`. Whether it changed.
async fn wait_for_change(
    screen: &mut Screen,
    before: (u32, u32, u64),
    deadline: Instant,
    quiet: Duration,
) -> std::result::Result<bool, DesktopError> {
    let mut last = before;
    let mut changed = false;
    let mut still_since = Instant::now();
    loop {
        let now = screen.digest().await?;
        let at = Instant::now();
        if now != last {
            last = now;
            still_since = at;
        }
        if now != before && !changed {
            changed = true;
            if quiet.is_zero() {
                return Ok(true);
            }
        }
        if changed && at.duration_since(still_since) >= quiet {
            return Ok(true);
        }
        if at >= deadline {
            return Ok(changed);
        }
        tokio::time::sleep(POLL.min(deadline.saturating_duration_since(at))).await;
    }
}

/// Runs a parsed call on a desktop; the JSON answer.
pub(crate) async fn execute(desktop: &Arc<super::Desktop>, call: Call) -> Result<Value> {
    let queued = Instant::now();
    let mut screen = desktop.lock().await;
    let queue_ms = ms(queued.elapsed());
    match call {
        Call::Screenshot(format) => screenshot(&mut screen, format).await,
        Call::Resize(w, h) => {
            screen.resize(w, h).await?;
            Ok(json!({}))
        }
        Call::Actions(actions) => {
            if actions.is_empty() {
                return Ok(json!({}));
            }
            let size = screen.size().await?;
            check_coordinates(&actions, size)?;
            match run_all(&mut screen, &actions).await {
                Ok(()) => Ok(json!({})),
                Err((i, e)) => {
                    let ce = ConnectError::from(e);
                    let message = if actions.len() > 1 {
                        format!("action {i} failed (the {i} before it ran): {}", ce.message)
                    } else {
                        ce.message
                    };
                    Err(ConnectError::new(ce.code, message))
                }
            }
        }
        Call::Step(step) => {
            let size = screen.size().await?;
            check_coordinates(&step.actions, size)?;
            let began = Instant::now();
            let before = if step.wait_for_change {
                Some(screen.digest().await?)
            } else {
                None
            };
            let (executed, action_error) = match run_all(&mut screen, &step.actions).await {
                Ok(()) => (step.actions.len(), None),
                Err((i, e)) => (i, Some(e.to_string())),
            };
            let actions_ms = ms(began.elapsed());
            let settling = Instant::now();
            let mut changed = false;
            let mut capture_error = None;
            match before {
                Some(before) => {
                    let wait = if step.settle_ms == 0 {
                        DEFAULT_CHANGE_WAIT_MS
                    } else {
                        step.settle_ms
                    };
                    let deadline = settling + Duration::from_millis(wait);
                    let quiet = Duration::from_millis(step.quiet_ms);
                    match wait_for_change(&mut screen, before, deadline, quiet).await {
                        Ok(c) => changed = c,
                        Err(e) => capture_error = Some(e.to_string()),
                    }
                }
                None => tokio::time::sleep(Duration::from_millis(step.settle_ms)).await,
            }
            let settle_ms = ms(settling.elapsed());
            let capturing = Instant::now();
            let shot = match capture_error {
                Some(_) => None,
                None => match screenshot(&mut screen, step.format).await {
                    Ok(v) => Some(v),
                    Err(e) => {
                        capture_error = Some(e.message);
                        None
                    }
                },
            };
            let capture_ms = ms(capturing.elapsed());
            let mut out = Map::new();
            let mut put = |k: &str, v: Value| {
                out.insert(k.to_owned(), v);
            };
            if executed > 0 {
                put("executed", json!(executed));
            }
            if let Some(e) = action_error {
                put("actionError", json!(e));
            }
            if let Some(s) = shot {
                put("screenshot", s);
            }
            if let Some(e) = capture_error {
                put("captureError", json!(e));
            }
            if changed {
                put("changed", json!(true));
            }
            for (k, v) in [
                ("queueMs", queue_ms),
                ("actionsMs", actions_ms),
                ("settleMs", settle_ms),
                ("captureMs", capture_ms),
            ] {
                if v > 0 {
                    put(k, json!(v));
                }
            }
            Ok(Value::Object(out))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(method: &str, body: &str) -> Result<Call> {
        parse(method, body.as_bytes())
    }

    fn code(r: Result<Call>) -> &'static str {
        r.unwrap_err().code
    }

    #[test]
    fn bodies_are_parsed_as_proto_json() {
        assert_eq!(
            call("Screenshot", "").unwrap(),
            Call::Screenshot(Format::Png)
        );
        assert_eq!(
            call("Screenshot", r#"{"format":"FRAME_FORMAT_JPEG"}"#).unwrap(),
            Call::Screenshot(Format::Jpeg)
        );
        assert_eq!(
            call(
                "SendPointer",
                r#"{"x":"3","y":4,"button":"POINTER_BUTTON_RIGHT","action":"POINTER_ACTION_CLICK","extra":1}"#
            )
            .unwrap(),
            Call::Actions(vec![Action::Pointer {
                x: 3,
                y: 4,
                button: 3,
                kind: PointerKind::Click
            }])
        );
        assert_eq!(
            call("SendKey", r#"{"key":"c","modifiers":["ctrl","shift"]}"#).unwrap(),
            Call::Actions(vec![Action::Chord {
                key: 0x63,
                modifiers: vec![0xffe3, 0xffe1]
            }])
        );
        assert_eq!(
            call("SendKey", r#"{"text":"A\n"}"#).unwrap(),
            Call::Actions(vec![Action::Text(vec![0x41, 0xff0d])])
        );
        assert_eq!(
            call("SendKey", r#"{"text":""}"#).unwrap(),
            Call::Actions(vec![])
        );
        let step = call(
            "Step",
            r#"{"actions":[{"scroll":{"dx":0,"dy":-2}}],"settle_ms":300,"waitForChange":true,"quietMs":100}"#,
        )
        .unwrap();
        assert_eq!(
            step,
            Call::Step(Step {
                actions: vec![Action::Scroll { dx: 0, dy: -2 }],
                settle_ms: 300,
                format: Format::Png,
                wait_for_change: true,
                quiet_ms: 100
            })
        );
        assert_eq!(
            call("Resize", r#"{"width":1024,"height":768}"#).unwrap(),
            Call::Resize(1024, 768)
        );
    }

    #[test]
    fn ranges_and_shapes_are_refused() {
        assert_eq!(code(call("Screenshot", "[]")), "invalid_argument");
        assert_eq!(code(call("Screenshot", "{")), "invalid_argument");
        assert_eq!(
            code(call("Screenshot", r#"{"format":"GIF"}"#)),
            "invalid_argument"
        );
        let p = |b: &str| call("SendPointer", b);
        assert_eq!(
            code(p(r#"{"x":-1,"y":0,"action":"POINTER_ACTION_MOVE"}"#)),
            "out_of_range"
        );
        assert_eq!(
            code(p(r#"{"x":8192,"y":0,"action":"POINTER_ACTION_MOVE"}"#)),
            "out_of_range"
        );
        assert_eq!(
            code(p(r#"{"x":1.5,"y":0,"action":"POINTER_ACTION_MOVE"}"#)),
            "invalid_argument"
        );
        assert_eq!(code(p(r#"{"x":1,"y":0}"#)), "invalid_argument");
        assert_eq!(
            code(p(r#"{"x":1,"y":0,"action":"POINTER_ACTION_FLY"}"#)),
            "invalid_argument"
        );
        assert_eq!(code(call("Scroll", r#"{"dy":1001}"#)), "out_of_range");
        assert_eq!(code(call("SendKey", "{}")), "invalid_argument");
        assert_eq!(
            code(call("SendKey", r#"{"text":"a","key":"b"}"#)),
            "invalid_argument"
        );
        assert_eq!(
            code(call("SendKey", r#"{"key":"NoSuchKey"}"#)),
            "invalid_argument"
        );
        assert_eq!(
            code(call("SendKey", r#"{"text":"bell\u0007"}"#)),
            "invalid_argument"
        );
        let long = format!(r#"{{"text":"{}"}}"#, "x".repeat(MAX_TEXT_CHARS + 1));
        assert_eq!(code(call("SendKey", &long)), "out_of_range");
        assert_eq!(code(call("Step", r#"{"actions":[]}"#)), "invalid_argument");
        let one = r#"[{"scroll":{"dy":1}}]"#;
        assert_eq!(
            code(call(
                "Step",
                &format!(r#"{{"actions":{one},"settleMs":2001}}"#)
            )),
            "out_of_range"
        );
        assert_eq!(
            code(call(
                "Step",
                &format!(r#"{{"actions":{one},"quietMs":10}}"#)
            )),
            "invalid_argument"
        );
        assert_eq!(
            code(call(
                "SendActions",
                r#"{"actions":[{"scroll":{"dy":1},"key":{"text":"x"}}]}"#
            )),
            "invalid_argument"
        );
        let err = call(
            "SendActions",
            r#"{"actions":[{"scroll":{"dy":1}},{"pointer":{"x":-3}}]}"#,
        )
        .unwrap_err();
        assert!(err.message.starts_with("action 1:"), "{}", err.message);
        for (w, h) in [
            (1281, 800),
            (312, 800),
            (8200, 800),
            (1280, 199),
            (1280, 8193),
        ] {
            let body = format!(r#"{{"width":{w},"height":{h}}}"#);
            assert_eq!(code(call("Resize", &body)), "out_of_range", "{w}x{h}");
        }
        assert_eq!(
            code(call("Resize", r#"{"width":"wide","height":800}"#)),
            "invalid_argument"
        );
    }

    #[test]
    fn methods_content_types_and_statuses() {
        let mut h = HeaderMap::new();
        assert!(check_call("Screenshot", &h).is_ok());
        assert_eq!(
            check_call("Teleport", &h).unwrap_err().code,
            "unimplemented"
        );
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        assert!(check_call("Step", &h).is_ok());
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/proto"),
        );
        assert!(check_call("Step", &h).is_err());
        assert_eq!(no_desktop().status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            ConnectError::new("unimplemented", "").status(),
            StatusCode::NOT_IMPLEMENTED
        );
        assert_eq!(
            ConnectError::new("unavailable", "").status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert!(check_coordinates(
            &[Action::Pointer {
                x: 1279,
                y: 799,
                button: 1,
                kind: PointerKind::Move
            }],
            (1280, 800)
        )
        .is_ok());
        assert_eq!(
            check_coordinates(
                &[Action::Pointer {
                    x: 1280,
                    y: 0,
                    button: 1,
                    kind: PointerKind::Move
                }],
                (1280, 800)
            )
            .unwrap_err()
            .code,
            "out_of_range"
        );
    }
}
