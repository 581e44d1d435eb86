//! The request journal: every request the backend received, in order.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::fault::lock;

/// How much of each request body the journal keeps.
pub(crate) const BODY_CAPTURE: usize = 64 * 1024;
/// How many requests the journal keeps (the oldest are dropped first).
pub(crate) const JOURNAL_CAP: usize = 10_000;
/// How many captured body bytes the journal keeps in total (the oldest entries go first).
pub(crate) const JOURNAL_BYTES: usize = 64 * 1024 * 1024;

/// Which listener received a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Plane {
    /// The control plane ([`LocalServer::base_url`](super::LocalServer::base_url)).
    Control,
    /// The data plane ([`LocalServer::sandbox_url`](super::LocalServer::sandbox_url)).
    Data,
}

/// One request the backend received.
///
/// `Debug` redacts the values of `X-API-Key`, `X-Access-Token` and the `token.` WebSocket
/// subprotocol; the fields themselves hold what was sent.
#[derive(Clone)]
#[non_exhaustive]
pub struct RecordedRequest {
    /// Which listener received it.
    pub plane: Plane,
    /// HTTP method, e.g. `POST`.
    pub method: String,
    /// Path without the query, as sent (not percent-decoded), e.g. `/sandboxes/abc/pause`.
    pub path: String,
    /// Raw query string without `?` (empty when none), e.g. `metadata.env=prod+x`.
    pub query: String,
    /// Headers in arrival order; names lower-case, values lossily decoded as UTF-8.
    pub headers: Vec<(String, String)>,
    /// The first 64 KiB of the body, as far as the server read it.
    pub body: Vec<u8>,
    /// The response status (`101` for an accepted WebSocket upgrade, `0` while unanswered or
    /// when the connection was dropped without a response).
    pub status: u16,
}

impl RecordedRequest {
    /// The first value of a header (name compared case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The captured body as text (invalid UTF-8 replaced).
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A header value with secrets blanked out.
pub(crate) fn redact_header(name: &str, value: &str) -> String {
    if name.eq_ignore_ascii_case("x-api-key")
        || name.eq_ignore_ascii_case("x-access-token")
        || name.eq_ignore_ascii_case("authorization")
    {
        return "<redacted>".to_owned();
    }
    if name.eq_ignore_ascii_case("sec-websocket-protocol") {
        return value
            .split(',')
            .map(|p| {
                let p = p.trim();
                if p.starts_with("token.") {
                    "token.<redacted>"
                } else {
                    p
                }
            })
            .collect::<Vec<_>>()
            .join(", ");
    }
    value.to_owned()
}

impl fmt::Debug for RecordedRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let headers: Vec<(String, String)> = self
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), redact_header(k, v)))
            .collect();
        f.debug_struct("RecordedRequest")
            .field("plane", &self.plane)
            .field("method", &self.method)
            .field("path", &self.path)
            .field("query", &self.query)
            .field("headers", &headers)
            .field("body", &String::from_utf8_lossy(&self.body))
            .field("status", &self.status)
            .finish()
    }
}

/// A journal entry that handlers fill in as the request is processed.
pub(crate) type Slot = Arc<Mutex<RecordedRequest>>;

/// The journal itself.
#[derive(Default)]
pub(crate) struct Journal {
    entries: Mutex<VecDeque<Slot>>,
    /// Captured body bytes currently held (shared with the body taps).
    bytes: Arc<AtomicUsize>,
}

impl Journal {
    pub(crate) fn record(&self, req: RecordedRequest) -> Slot {
        let slot = Arc::new(Mutex::new(req));
        let mut entries = lock(&self.entries);
        while entries.len() >= JOURNAL_CAP
            || (self.bytes.load(Ordering::Relaxed) > JOURNAL_BYTES && !entries.is_empty())
        {
            if let Some(old) = entries.pop_front() {
                let n = lock(&old).body.len();
                self.bytes
                    .fetch_sub(n.min(self.bytes.load(Ordering::Relaxed)), Ordering::Relaxed);
            }
        }
        entries.push_back(slot.clone());
        slot
    }

    /// Appends captured body bytes to an entry (up to [`BODY_CAPTURE`] per request).
    pub(crate) fn capture(&self, slot: &Slot, data: &[u8]) {
        let mut rec = lock(slot);
        let room = BODY_CAPTURE.saturating_sub(rec.body.len());
        let take = data.len().min(room);
        if take > 0 {
            rec.body.extend_from_slice(&data[..take]);
            self.bytes.fetch_add(take, Ordering::Relaxed);
        }
    }

    pub(crate) fn snapshot(&self) -> Vec<RecordedRequest> {
        lock(&self.entries)
            .iter()
            .map(|s| lock(s).clone())
            .collect()
    }

    pub(crate) fn clear(&self) {
        let mut entries = lock(&self.entries);
        entries.clear();
        self.bytes.store(0, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_redacts_secrets() {
        let r = RecordedRequest {
            plane: Plane::Data,
            method: "GET".into(),
            path: "/exec/connect".into(),
            query: String::new(),
            headers: vec![
                ("x-api-key".into(), "ss_live_secretkey".into()),
                ("x-access-token".into(), "tok123".into()),
                (
                    "sec-websocket-protocol".into(),
                    "superserve.exec.v1, token.tok123".into(),
                ),
            ],
            body: Vec::new(),
            status: 101,
        };
        let dbg = format!("{r:?}");
        assert!(!dbg.contains("secretkey"), "{dbg}");
        assert!(!dbg.contains("tok123"), "{dbg}");
        assert!(dbg.contains("superserve.exec.v1"));
        assert_eq!(r.header("X-Access-Token"), Some("tok123"));
    }
}
