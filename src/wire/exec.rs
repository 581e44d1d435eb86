//! Exec request bodies, the `exec/connect` WebSocket frame codec (protocol §4.1, §4.4), and the
//! sans-IO pieces both output paths share: turning server frames into [`ExecEvent`]s, the
//! meaning of a terminal event, and collecting output under a cap.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde_json::{json, Map, Value};

use crate::error::{ApiError, Error};
use crate::models::{CommandResult, ExecEvent};

/// WebSocket subprotocol of the exec bridge.
pub(crate) const EXEC_SUBPROTOCOL: &str = "superserve.exec.v1";
/// Largest stdin payload per binary frame.
pub(crate) const STDIN_CHUNK: usize = 32 * 1024;
/// Largest inbound frame/message accepted from the server.
pub(crate) const MAX_INBOUND_FRAME: usize = 16 * 1024 * 1024;

pub(crate) const CHANNEL_STDIN: u8 = 0;
pub(crate) const CHANNEL_STDOUT: u8 = 1;
pub(crate) const CHANNEL_STDERR: u8 = 2;

/// The body of `/exec`, `/exec/stream` and the start frame of `/exec/connect`.
pub(crate) fn exec_body(
    command: &str,
    cwd: Option<&str>,
    env: &BTreeMap<String, String>,
    timeout_s: Option<u64>,
) -> Value {
    let mut m = Map::new();
    m.insert("command".into(), json!(command));
    if let Some(c) = cwd {
        m.insert("working_dir".into(), json!(c));
    }
    if !env.is_empty() {
        m.insert("env".into(), json!(env));
    }
    if let Some(t) = timeout_s {
        m.insert("timeout_s".into(), json!(t));
    }
    Value::Object(m)
}

/// One binary stdin frame (`[0x00][payload]`); `data` must be at most [`STDIN_CHUNK`] bytes.
pub(crate) fn stdin_frame(data: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(data.len() + 1);
    f.push(CHANNEL_STDIN);
    f.extend_from_slice(data);
    f
}

pub(crate) fn stdin_close_frame() -> String {
    json!({"type": "stdin_close"}).to_string()
}

pub(crate) fn signal_frame(name: &str) -> String {
    json!({"type": "signal", "name": name}).to_string()
}

/// Why a command produced no exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The channel closed or broke before the command finished.
    Stream(String),
    /// The server's terminal error: the command could not start (`exec_failed`, or another
    /// code), or the request was refused (`bad_request`).
    Terminal { code: String, message: String },
}

impl Failure {
    pub(crate) fn into_error(self) -> Error {
        match self {
            Failure::Stream(message) => Error::Stream { message },
            Failure::Terminal { code, message } if code == "bad_request" => {
                Error::Validation(ApiError::new(400, Some(&code), message))
            }
            Failure::Terminal { code, message } => Error::CommandStart { code, message },
        }
    }
}

/// The meaning of a `finished` event: the exit code, or why there is none. A finished event
/// without an exit code never reads as success.
pub(crate) fn terminal(
    exit_code: Option<i64>,
    error: Option<String>,
    code: Option<String>,
) -> Result<i32, Failure> {
    match exit_code {
        Some(c) => Ok(i32::try_from(c).unwrap_or(-1)),
        None => match error {
            Some(message) => Err(Failure::Terminal {
                code: code.unwrap_or_else(|| "exec_failed".to_owned()),
                message,
            }),
            None => Err(Failure::Stream(
                "the server finished the command without an exit code".to_owned(),
            )),
        },
    }
}

/// A text frame from the server.
pub(crate) enum Lifecycle {
    /// `{"finished": true, ...}`: the exit code, or why there is none; plus an `error` text
    /// that came with an exit code (shown as stderr).
    Finished {
        outcome: Result<i32, Failure>,
        note: Option<String>,
    },
    /// An `error` without `finished` (shown as stderr).
    Error(String),
    Other,
}

pub(crate) fn parse_text_frame(text: &str) -> Lifecycle {
    let Ok(v) = serde_json::from_str::<Value>(text) else {
        return Lifecycle::Other;
    };
    let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
    let error = s("error");
    if v.get("finished").and_then(Value::as_bool) == Some(true) {
        let exit_code = v.get("exit_code").and_then(Value::as_i64);
        let note = exit_code.and(error.clone());
        Lifecycle::Finished {
            outcome: terminal(exit_code, error, s("code")),
            note,
        }
    } else if let Some(e) = error {
        Lifecycle::Error(e)
    } else {
        Lifecycle::Other
    }
}

/// The detail of a close that came before `finished`.
pub(crate) fn close_detail(code: Option<u16>, reason: &str) -> String {
    match code {
        Some(1009) => "message too big: a frame exceeded the server's limit".to_owned(),
        _ if !reason.is_empty() => reason.to_owned(),
        Some(c) => format!("close code {c}"),
        None => "connection dropped".to_owned(),
    }
}

/// The message of a channel that closed before `finished`.
pub(crate) fn closed_early(detail: &str) -> Failure {
    Failure::Stream(format!(
        "exec/connect: connection closed before the command finished ({detail})"
    ))
}

/// Decodes the binary frames of a session into output events (incremental UTF-8 per stream).
#[derive(Default)]
pub(crate) struct FrameDecoder {
    out_dec: crate::wire::utf8::Utf8Decoder,
    err_dec: crate::wire::utf8::Utf8Decoder,
}

impl FrameDecoder {
    /// A binary frame: at most one output event.
    pub(crate) fn binary(&mut self, frame: &[u8]) -> Option<ExecEvent> {
        let (text, stdout) = match frame.split_first() {
            Some((&CHANNEL_STDOUT, payload)) => (self.out_dec.decode(payload), true),
            Some((&CHANNEL_STDERR, payload)) => (self.err_dec.decode(payload), false),
            _ => return None,
        };
        output_event(text, stdout)
    }

    /// What is left in the decoders (an incomplete character at the end of a stream).
    pub(crate) fn flush(&mut self) -> Vec<ExecEvent> {
        let out = output_event(self.out_dec.finish(), true);
        let err = output_event(self.err_dec.finish(), false);
        out.into_iter().chain(err).collect()
    }
}

fn output_event(text: String, stdout: bool) -> Option<ExecEvent> {
    if text.is_empty() {
        None
    } else if stdout {
        Some(ExecEvent::Stdout(text))
    } else {
        Some(ExecEvent::Stderr(text))
    }
}

/// Decodes a `/exec/stream` body (server-sent events) into exec events; the last event is
/// `Exit`, or the stream yields a failure.
#[derive(Default)]
pub(crate) struct SseExecDecoder {
    sse: crate::wire::sse::SseDecoder,
    raw: Vec<Value>,
}

impl SseExecDecoder {
    /// Feeds a chunk (`None` at the end of the body); decoded items are appended to `out`.
    pub(crate) fn feed(
        &mut self,
        chunk: Option<&[u8]>,
        out: &mut std::collections::VecDeque<Result<ExecEvent, Failure>>,
    ) {
        match chunk {
            Some(c) => self.sse.feed(c, &mut self.raw),
            None => self.sse.finish(&mut self.raw),
        }
        for ev in self
            .raw
            .drain(..)
            .filter_map(|v| crate::wire::sse::SseEvent::from_json(&v))
        {
            if let Some(e) = ev.stdout.filter(|s| !s.is_empty()) {
                out.push_back(Ok(ExecEvent::Stdout(e)));
            }
            if let Some(e) = ev.stderr.filter(|s| !s.is_empty()) {
                out.push_back(Ok(ExecEvent::Stderr(e)));
            }
            if ev.finished {
                let note = ev.exit_code.and(ev.error.clone());
                if let Some(n) = note.filter(|n| !n.is_empty()) {
                    out.push_back(Ok(ExecEvent::Stderr(n)));
                }
                out.push_back(terminal(ev.exit_code, ev.error, ev.code).map(ExecEvent::Exit));
                return;
            }
        }
        if chunk.is_none() {
            out.push_back(Err(Failure::Stream(
                "command stream ended without a finished event (the connection was cut before the command completed)".to_owned(),
            )));
        }
    }
}

/// Output collected for a [`CommandResult`], each stream capped at `cap` bytes (cut at a
/// character boundary); what does not fit sets `truncated`.
#[derive(Debug, Clone)]
pub(crate) struct Collected {
    pub(crate) stdout: String,
    pub(crate) stderr: String,
    pub(crate) truncated: bool,
    cap: usize,
}

impl Collected {
    pub(crate) fn new(cap: usize) -> Collected {
        Collected {
            stdout: String::new(),
            stderr: String::new(),
            truncated: false,
            cap,
        }
    }

    pub(crate) fn push(&mut self, ev: &ExecEvent) {
        let (buf, text) = match ev {
            ExecEvent::Stdout(t) => (&mut self.stdout, t),
            ExecEvent::Stderr(t) => (&mut self.stderr, t),
            _ => return,
        };
        let room = self.cap.saturating_sub(buf.len());
        if text.len() <= room {
            buf.push_str(text);
        } else {
            let mut cut = room;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            buf.push_str(&text[..cut]);
            self.truncated = true;
        }
    }

    pub(crate) fn result(&self, exit_code: i32) -> CommandResult {
        CommandResult {
            stdout: self.stdout.clone(),
            stderr: self.stderr.clone(),
            exit_code,
            truncated: self.truncated,
        }
    }

    pub(crate) fn into_result(self, exit_code: i32) -> CommandResult {
        CommandResult {
            stdout: self.stdout,
            stderr: self.stderr,
            exit_code,
            truncated: self.truncated,
        }
    }
}

type OutputFn = dyn FnMut(&str) + Send + 'static;

/// A callback that receives decoded output text as it arrives.
#[derive(Clone)]
pub(crate) struct OutputCallback(Arc<Mutex<OutputFn>>);

impl OutputCallback {
    pub(crate) fn new(f: impl FnMut(&str) + Send + 'static) -> Self {
        OutputCallback(Arc::new(Mutex::new(f)))
    }

    pub(crate) fn call(&self, text: &str) {
        let mut f = self.0.lock().unwrap_or_else(|p| p.into_inner());
        f(text);
    }
}

/// The output callbacks of a run or session.
#[derive(Clone, Default)]
pub(crate) struct Callbacks {
    pub(crate) on_stdout: Option<OutputCallback>,
    pub(crate) on_stderr: Option<OutputCallback>,
}

impl Callbacks {
    pub(crate) fn call(&self, ev: &ExecEvent) {
        let (cb, text) = match ev {
            ExecEvent::Stdout(t) => (&self.on_stdout, t),
            ExecEvent::Stderr(t) => (&self.on_stderr, t),
            _ => return,
        };
        if let Some(cb) = cb {
            cb.call(text);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    #[test]
    fn frames_and_terminal_events() {
        let f = stdin_frame(b"abc");
        assert_eq!(f, [CHANNEL_STDIN, b'a', b'b', b'c']);
        match parse_text_frame(r#"{"exit_code":3,"finished":true}"#) {
            Lifecycle::Finished { outcome, note } => {
                assert_eq!(outcome, Ok(3));
                assert_eq!(note, None);
            }
            _ => panic!("finished expected"),
        }
        match parse_text_frame(r#"{"error":"boom","code":"exec_failed","finished":true}"#) {
            Lifecycle::Finished { outcome, .. } => assert_eq!(
                outcome,
                Err(Failure::Terminal {
                    code: "exec_failed".into(),
                    message: "boom".into()
                })
            ),
            _ => panic!("finished expected"),
        }
        // A finished event without an exit code never reads as success.
        assert!(matches!(
            terminal(None, None, None),
            Err(Failure::Stream(_))
        ));
        assert!(matches!(
            Failure::Terminal {
                code: "bad_request".into(),
                message: "x".into()
            }
            .into_error(),
            Error::Validation(_)
        ));
        assert_eq!(close_detail(None, ""), "connection dropped");
        assert_eq!(close_detail(Some(1011), ""), "close code 1011");
    }

    #[test]
    fn sse_decoder_ends_with_exit_or_a_failure() {
        let mut d = SseExecDecoder::default();
        let mut out = VecDeque::new();
        d.feed(Some(b"data: {\"stdout\":\"a\"}\n\ndata: {\"exit_code\":2,\"error\":\"note\",\"finished\":true}\n\n"), &mut out);
        assert_eq!(
            out.drain(..).collect::<Vec<_>>(),
            vec![
                Ok(ExecEvent::Stdout("a".into())),
                Ok(ExecEvent::Stderr("note".into())),
                Ok(ExecEvent::Exit(2))
            ]
        );
        let mut d = SseExecDecoder::default();
        d.feed(Some(b"data: {\"stdout\":\"a\"}\n\n"), &mut out);
        d.feed(None, &mut out);
        assert!(matches!(out.pop_back(), Some(Err(Failure::Stream(_)))));
        let mut d = SseExecDecoder::default();
        let mut out = VecDeque::new();
        d.feed(
            Some(
                b"data: {\"error\":\"no such dir\",\"code\":\"exec_failed\",\"finished\":true}\n\n",
            ),
            &mut out,
        );
        assert!(matches!(
            out.pop_back(),
            Some(Err(Failure::Terminal { .. }))
        ));
    }

    #[test]
    fn collection_is_capped_at_a_character_boundary() {
        let mut c = Collected::new(4);
        c.push(&ExecEvent::Stdout("ab".into()));
        c.push(&ExecEvent::Stdout("cé".into()));
        assert_eq!(c.stdout, "abc");
        assert!(c.truncated);
        c.push(&ExecEvent::Stderr("xyz".into()));
        assert_eq!(c.stderr, "xyz");
        let r = c.into_result(0);
        assert!(r.truncated);
    }
}
