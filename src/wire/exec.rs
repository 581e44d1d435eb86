//! Exec request bodies and the `exec/connect` WebSocket frame codec (protocol §4.1, §4.4).

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

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

/// Binary stdin frames (`[0x00][≤32 KiB]`) for `data`.
pub(crate) fn stdin_frames(data: &[u8]) -> impl Iterator<Item = Vec<u8>> + '_ {
    data.chunks(STDIN_CHUNK).map(|c| {
        let mut f = Vec::with_capacity(c.len() + 1);
        f.push(CHANNEL_STDIN);
        f.extend_from_slice(c);
        f
    })
}

pub(crate) fn stdin_close_frame() -> String {
    json!({"type": "stdin_close"}).to_string()
}

pub(crate) fn signal_frame(name: &str) -> String {
    json!({"type": "signal", "name": name}).to_string()
}

/// A text frame from the server.
pub(crate) enum Lifecycle {
    /// `{"finished": true, "exit_code": n}` or an error terminal event.
    Finished {
        exit_code: i64,
        error: Option<String>,
    },
    /// An `error` without `finished` (appended to stderr).
    Error(String),
    Other,
}

pub(crate) fn parse_text_frame(text: &str) -> Lifecycle {
    let Ok(v) = serde_json::from_str::<Value>(text) else {
        return Lifecycle::Other;
    };
    let error = v.get("error").and_then(Value::as_str).map(str::to_owned);
    if v.get("finished").and_then(Value::as_bool) == Some(true) {
        Lifecycle::Finished {
            exit_code: v.get("exit_code").and_then(Value::as_i64).unwrap_or(0),
            error,
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

/// The signals the exec bridge understands.
pub(crate) fn check_signal(name: &str) -> crate::Result<()> {
    match name {
        "SIGINT" | "SIGTERM" | "SIGHUP" | "SIGQUIT" => Ok(()),
        other => Err(crate::Error::validation(format!(
            "unsupported signal {other:?}: the sandbox accepts SIGINT, SIGTERM, SIGHUP and SIGQUIT"
        ))),
    }
}

/// How a session ended: the result, or why it has none.
pub(crate) type Outcome = std::result::Result<crate::models::CommandResult, String>;

/// Output bookkeeping shared by both session flavours: decodes frames, feeds callbacks,
/// accumulates text, and produces the outcome.
pub(crate) struct OutputSink {
    stdout: String,
    stderr: String,
    out_dec: crate::wire::utf8::Utf8Decoder,
    err_dec: crate::wire::utf8::Utf8Decoder,
    on_stdout: Option<crate::options::OutputCallback>,
    on_stderr: Option<crate::options::OutputCallback>,
}

impl OutputSink {
    pub(crate) fn new(
        on_stdout: Option<crate::options::OutputCallback>,
        on_stderr: Option<crate::options::OutputCallback>,
    ) -> Self {
        OutputSink {
            stdout: String::new(),
            stderr: String::new(),
            out_dec: Default::default(),
            err_dec: Default::default(),
            on_stdout,
            on_stderr,
        }
    }

    fn emit(&mut self, to_stdout: bool, text: &str) {
        if text.is_empty() {
            return;
        }
        let (buf, cb) = if to_stdout {
            (&mut self.stdout, &self.on_stdout)
        } else {
            (&mut self.stderr, &self.on_stderr)
        };
        buf.push_str(text);
        if let Some(cb) = cb {
            cb(text);
        }
    }

    /// A binary frame.
    pub(crate) fn binary(&mut self, frame: &[u8]) {
        match frame.split_first() {
            Some((&CHANNEL_STDOUT, payload)) => {
                let t = self.out_dec.decode(payload);
                self.emit(true, &t);
            }
            Some((&CHANNEL_STDERR, payload)) => {
                let t = self.err_dec.decode(payload);
                self.emit(false, &t);
            }
            _ => {}
        }
    }

    fn flush(&mut self) {
        let t = self.out_dec.finish();
        self.emit(true, &t);
        let t = self.err_dec.finish();
        self.emit(false, &t);
    }

    /// A text frame; `Some` once the command has finished.
    pub(crate) fn text(&mut self, text: &str) -> Option<Outcome> {
        match parse_text_frame(text) {
            Lifecycle::Finished { exit_code, error } => {
                self.flush();
                if let Some(e) = error {
                    self.emit(false, &e);
                }
                Some(Ok(crate::models::CommandResult {
                    stdout: std::mem::take(&mut self.stdout),
                    stderr: std::mem::take(&mut self.stderr),
                    exit_code: i32::try_from(exit_code).unwrap_or(-1),
                    truncated: false,
                }))
            }
            Lifecycle::Error(e) => {
                self.emit(false, &e);
                None
            }
            Lifecycle::Other => None,
        }
    }

    /// The socket closed (or broke) before `finished`.
    pub(crate) fn closed(&mut self, detail: &str) -> Outcome {
        self.flush();
        Err(format!(
            "exec/connect: connection closed before the command finished ({detail})"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames() {
        let data = vec![7u8; STDIN_CHUNK * 2 + 1];
        let frames: Vec<_> = stdin_frames(&data).collect();
        assert_eq!(frames.len(), 3);
        assert_eq!(frames[0].len(), STDIN_CHUNK + 1);
        assert_eq!(frames[0][0], CHANNEL_STDIN);
        assert_eq!(frames[2].len(), 2);
        assert!(matches!(
            parse_text_frame(r#"{"exit_code":3,"finished":true}"#),
            Lifecycle::Finished {
                exit_code: 3,
                error: None
            }
        ));
        assert!(matches!(
            parse_text_frame(r#"{"error":"boom","code":"exec_failed","finished":true}"#),
            Lifecycle::Finished {
                exit_code: 0,
                error: Some(_)
            }
        ));
        assert_eq!(close_detail(None, ""), "connection dropped");
        assert_eq!(close_detail(Some(1011), ""), "close code 1011");
        assert!(check_signal("SIGKILL").is_err());
    }
}
