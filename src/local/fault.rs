//! Scripted faults: rules that make the backend answer chosen requests with an error, drop the
//! connection, or cut a stream short.

use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// What the backend does instead of answering normally.
///
/// In JSON (for `POST /_local/faults`) a fault is tagged by `type`:
/// `{"type":"rate_limited","retry_after_secs":1}`, `{"type":"status","status":502,"code":"bad_gateway"}`,
/// `{"type":"drop_connection"}`, `{"type":"cut_stream","after_events":1}`,
/// `{"type":"delay_response","millis":500}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Fault {
    /// `429` with `{"error":{"code":"rate_limited",..}}` and `Retry-After: <retry_after_secs>`.
    RateLimited {
        /// Seconds sent in `Retry-After`.
        retry_after_secs: u64,
    },
    /// This status with the JSON error body `{"error":{"code":<code>,"message":..}}`
    /// (e.g. 502 `bad_gateway`, 503 `service_unavailable`, 504 `gateway_timeout`, 409
    /// `conflict`, 500 `internal_error`).
    Status {
        /// The HTTP status code (200–599; anything else is answered as 500).
        status: u16,
        /// The API error code in the body.
        code: String,
    },
    /// Close the TCP connection without sending a single response byte.
    DropConnection,
    /// For `POST /exec/stream`: send this many real output events, then end the body without
    /// the `finished` event. For `GET /exec/connect`: forward this many output frames, then
    /// close the socket (code 1011) before the exit frame. The command is killed. Rules with
    /// this fault only match those two endpoints.
    CutStream {
        /// Output events (SSE events or WebSocket output frames) sent before the cut.
        after_events: u32,
    },
    /// Handle the request normally (the work is done: a sandbox is created, a file written),
    /// then hold the answer this long before sending it. For testing client deadlines and
    /// what a client does when it gives up on a request the server carried out.
    DelayResponse {
        /// How long the answer is held, in milliseconds (at most 10 minutes).
        millis: u64,
    },
}

/// A fault rule: which requests it matches, what it does, and how many times.
///
/// ```
/// use superserve::local::{Fault, FaultRule};
/// let rule = FaultRule::new("GET", "/sandboxes/*")
///     .fault(Fault::RateLimited { retry_after_secs: 1 })
///     .times(2);
/// assert!(rule.matches("GET", "/sandboxes/abc"));
/// assert!(!rule.matches("GET", "/sandboxes/abc/network"));
/// ```
///
/// Path patterns: an exact path; `*` matches exactly one path segment; a trailing `/**`
/// matches the prefix itself and anything below it. Method `*` matches any method. Rules apply
/// to both listeners (control and data plane), never to the `/_local/*` admin routes; the first
/// matching rule that has uses left wins. A rule can let the first matching requests through
/// untouched ([`skip`](Self::skip), or [`nth`](Self::nth) to hit exactly the n-th one); a
/// request a rule lets through is offered to the rules after it.
///
/// ```
/// use superserve::local::{Fault, FaultRule};
/// // the third GET of the sandbox fails, the ones before and after succeed
/// let third = FaultRule::new("GET", "/sandboxes/*").nth(3);
/// // after two successful creates, the next two are rate limited
/// let later = FaultRule::new("POST", "/sandboxes")
///     .fault(Fault::RateLimited { retry_after_secs: 1 })
///     .skip(2)
///     .times(2);
/// # let _ = (third, later);
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultRule {
    method: String,
    path: String,
    #[serde(default = "default_fault")]
    fault: Fault,
    #[serde(default = "default_times")]
    times: u32,
    #[serde(default)]
    skip: u32,
}

fn default_fault() -> Fault {
    Fault::Status {
        status: 503,
        code: "service_unavailable".to_owned(),
    }
}

fn default_times() -> u32 {
    1
}

impl FaultRule {
    /// A rule for requests with this method (`GET`, `POST`, ..., or `*`) and path pattern.
    /// Until [`fault`](Self::fault) is called it answers `503 service_unavailable`, once.
    pub fn new(method: impl Into<String>, path: impl Into<String>) -> Self {
        FaultRule {
            method: method.into(),
            path: path.into(),
            fault: default_fault(),
            times: 1,
            skip: 0,
        }
    }

    /// Lets the first `n` matching requests through untouched; the rule applies from the
    /// `n+1`-th on.
    #[must_use]
    pub fn skip(mut self, n: u32) -> Self {
        self.skip = n;
        self
    }

    /// Applies to exactly the `n`-th matching request (1-based): `skip(n - 1).times(1)`.
    #[must_use]
    pub fn nth(self, n: u32) -> Self {
        self.skip(n.saturating_sub(1)).times(1)
    }

    /// What the rule does.
    #[must_use]
    pub fn fault(mut self, fault: Fault) -> Self {
        self.fault = fault;
        self
    }

    /// How many matching requests it applies to (default 1; 0 makes the rule inert).
    #[must_use]
    pub fn times(mut self, n: u32) -> Self {
        self.times = n;
        self
    }

    /// Whether a request with this method and path matches the rule (ignoring its use count).
    pub fn matches(&self, method: &str, path: &str) -> bool {
        (self.method == "*" || self.method.eq_ignore_ascii_case(method))
            && path_matches(&self.path, path)
    }
}

/// Path pattern matching: exact segments, `*` for one segment, trailing `/**` for any suffix.
pub(crate) fn path_matches(pattern: &str, path: &str) -> bool {
    let (pattern, any_suffix) = match pattern.strip_suffix("/**") {
        Some(p) => (p, true),
        None => (pattern, false),
    };
    let pat: Vec<&str> = pattern.split('/').collect();
    let segs: Vec<&str> = path.split('/').collect();
    if segs.len() < pat.len() || (!any_suffix && segs.len() != pat.len()) {
        return false;
    }
    pat.iter()
        .zip(segs.iter())
        .all(|(p, s)| *p == "*" || p == s)
}

/// What a [`Fault::CutStream`] rule leaves on the request it matched (a request extension):
/// the streaming handler cuts its stream after this many output events.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CutAfter(pub u32);

/// The live rule list.
#[derive(Default)]
pub(crate) struct FaultSet {
    rules: Mutex<Vec<FaultRule>>,
}

impl FaultSet {
    pub(crate) fn push(&self, rule: FaultRule) {
        if rule.times > 0 {
            lock(&self.rules).push(rule);
        }
    }

    pub(crate) fn clear(&self) {
        lock(&self.rules).clear();
    }

    /// Takes one use of the first rule matching this request. `streaming` tells whether the
    /// endpoint is one that [`Fault::CutStream`] applies to.
    pub(crate) fn take(&self, method: &str, path: &str, streaming: bool) -> Option<Fault> {
        let mut rules = lock(&self.rules);
        let mut found = None;
        for (i, r) in rules.iter_mut().enumerate() {
            if !r.matches(method, path)
                || (!streaming && matches!(r.fault, Fault::CutStream { .. }))
            {
                continue;
            }
            if r.skip > 0 {
                r.skip -= 1;
                continue;
            }
            found = Some(i);
            break;
        }
        let idx = found?;
        let fault = rules[idx].fault.clone();
        rules[idx].times -= 1;
        if rules[idx].times == 0 {
            rules.remove(idx);
        }
        Some(fault)
    }
}

/// Locks a mutex, recovering the data if a panicking thread poisoned it.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        assert!(path_matches("/sandboxes", "/sandboxes"));
        assert!(!path_matches("/sandboxes", "/sandboxes/x"));
        assert!(path_matches("/sandboxes/*", "/sandboxes/abc"));
        assert!(!path_matches("/sandboxes/*", "/sandboxes"));
        assert!(!path_matches("/sandboxes/*", "/sandboxes/a/pause"));
        assert!(path_matches("/sandboxes/*/pause", "/sandboxes/a/pause"));
        assert!(path_matches("/sandboxes/**", "/sandboxes"));
        assert!(path_matches("/sandboxes/**", "/sandboxes/a/b/c"));
        assert!(!path_matches("/sandboxes/**", "/sandboxesx"));
        assert!(path_matches("/**", "/anything/at/all"));
        assert!(path_matches("/exec/stream", "/exec/stream"));
    }

    #[test]
    fn counts_and_order() {
        let set = FaultSet::default();
        set.push(
            FaultRule::new("DELETE", "/sandboxes/*")
                .fault(Fault::Status {
                    status: 409,
                    code: "conflict".into(),
                })
                .times(2),
        );
        set.push(FaultRule::new("*", "/sandboxes/**").fault(Fault::DropConnection));
        set.push(
            FaultRule::new("POST", "/exec/stream").fault(Fault::CutStream { after_events: 1 }),
        );
        let conflict = Fault::Status {
            status: 409,
            code: "conflict".into(),
        };
        assert_eq!(
            set.take("delete", "/sandboxes/x", false),
            Some(conflict.clone())
        );
        assert_eq!(set.take("DELETE", "/sandboxes/x", false), Some(conflict));
        assert_eq!(
            set.take("DELETE", "/sandboxes/x", false),
            Some(Fault::DropConnection)
        );
        assert_eq!(set.take("DELETE", "/sandboxes/x", false), None);
        // a cut-stream rule never fires on a non-streaming request
        assert_eq!(set.take("POST", "/exec/stream", false), None);
        assert_eq!(
            set.take("POST", "/exec/stream", true),
            Some(Fault::CutStream { after_events: 1 })
        );
        // skip lets the first requests through, then applies
        let set = FaultSet::default();
        set.push(FaultRule::new("GET", "/x").nth(3));
        set.push(FaultRule::new("GET", "/x").fault(Fault::DropConnection));
        assert_eq!(
            set.take("GET", "/x", false),
            Some(Fault::DropConnection),
            "a request the first rule lets through goes on to the next rule"
        );
        assert_eq!(set.take("GET", "/x", false), None);
        assert!(matches!(
            set.take("GET", "/x", false),
            Some(Fault::Status { status: 503, .. })
        ));
        assert_eq!(set.take("GET", "/x", false), None);
        let json =
            r#"{"method":"GET","path":"/x","fault":{"type":"rate_limited","retry_after_secs":2}}"#;
        let rule: FaultRule = serde_json::from_str(json).unwrap_or_else(|_| FaultRule::new("", ""));
        assert_eq!(rule.times, 1);
        assert_eq!(
            rule.fault,
            Fault::RateLimited {
                retry_after_secs: 2
            }
        );
    }
}
