//! Sans-IO decoder for the exec SSE stream (protocol §4.3).

use serde_json::Value;

/// One decoded `data:` event of an exec stream.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct SseEvent {
    pub(crate) stdout: Option<String>,
    pub(crate) stderr: Option<String>,
    pub(crate) finished: bool,
    pub(crate) exit_code: Option<i64>,
    pub(crate) error: Option<String>,
    pub(crate) code: Option<String>,
}

impl SseEvent {
    /// An exec event from one `data:` document (non-objects are skipped).
    pub(crate) fn from_json(v: &Value) -> Option<SseEvent> {
        let obj = v.as_object()?;
        let s = |k: &str| obj.get(k).and_then(Value::as_str).map(str::to_owned);
        Some(SseEvent {
            stdout: s("stdout"),
            stderr: s("stderr"),
            finished: obj
                .get("finished")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            exit_code: obj.get("exit_code").and_then(Value::as_i64),
            error: s("error"),
            code: s("code"),
        })
    }
}

/// Splits a byte stream into lines and decodes each `data:` line as one JSON document (exec
/// output, build logs); comments and other fields are skipped, as are empty data, `[DONE]`
/// and invalid JSON.
#[derive(Default)]
pub(crate) struct SseDecoder {
    buf: Vec<u8>,
}

/// Longest line kept while waiting for its end (a runaway line is dropped).
const MAX_LINE: usize = 64 * 1024 * 1024;

impl SseDecoder {
    pub(crate) fn feed(&mut self, chunk: &[u8], out: &mut Vec<Value>) {
        let mut start = 0;
        for (i, b) in chunk.iter().enumerate() {
            if *b == b'\n' {
                if self.buf.is_empty() {
                    Self::line(&chunk[start..i], out);
                } else {
                    self.buf.extend_from_slice(&chunk[start..i]);
                    let line = std::mem::take(&mut self.buf);
                    Self::line(&line, out);
                }
                start = i + 1;
            }
        }
        self.buf.extend_from_slice(&chunk[start..]);
        if self.buf.len() > MAX_LINE {
            self.buf.clear();
        }
    }

    /// Flushes a last line without a newline.
    pub(crate) fn finish(&mut self, out: &mut Vec<Value>) {
        let line = std::mem::take(&mut self.buf);
        Self::line(&line, out);
    }

    fn line(line: &[u8], out: &mut Vec<Value>) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(data) = line.strip_prefix(b"data:") else {
            return;
        };
        let data = data.trim_ascii();
        if data.is_empty() || data == b"[DONE]" {
            return;
        }
        if let Ok(v) = serde_json::from_slice::<Value>(data) {
            out.push(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_split_lines_and_skips_noise() {
        let stream = "data: {\"stdout\":\"h\\u00e9llo\"}\n\n: keepalive\n\nevent: x\ndata: nope\n\ndata: [DONE]\ndata: {\"stderr\":\"e\"}\r\n\r\ndata: {\"exit_code\":3,\"finished\":true}\n\n"
            .replace("\\u00e9", "é");
        let bytes = stream.as_bytes();
        // feed one byte at a time: splits inside the multi-byte é too
        let mut d = SseDecoder::default();
        let mut out = Vec::new();
        for b in bytes.chunks(1) {
            d.feed(b, &mut out);
        }
        d.finish(&mut out);
        let out: Vec<SseEvent> = out.iter().filter_map(SseEvent::from_json).collect();
        assert_eq!(out.len(), 3);
        assert_eq!(out[0].stdout.as_deref(), Some("héllo"));
        assert_eq!(out[1].stderr.as_deref(), Some("e"));
        assert!(out[2].finished);
        assert_eq!(out[2].exit_code, Some(3));
    }
}
