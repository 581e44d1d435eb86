//! Retry and backoff decisions (protocol §5.3). Pure logic: nothing here sleeps or sends.
//!
//! Only idempotent requests (GET, DELETE) are retried, on 429/502/503/504 and on connection
//! errors; timeouts are never retried. Before retry `k` (0-based) the client waits
//! `base_delay × 2^k` with ±`jitter` (uniform), capped at `max_delay`; a 429's `Retry-After`
//! (capped the same way) replaces the backoff. Sandbox deletion also retries 409 and then allows
//! up to [`RetryPolicy::conflict_attempts`] attempts in all. A data-plane 503 that says the
//! sandbox is paused (`sandbox_unavailable`) is not retried here: it is not transient, and the
//! data-plane call activates (resumes) the sandbox and retries once instead.

use std::time::{Duration, SystemTime};

use rand::Rng;

/// How idempotent requests are retried.
///
/// ```
/// use std::time::Duration;
/// let policy = superserve::RetryPolicy::default()
///     .max_attempts(5)
///     .base_delay(Duration::from_millis(50));
/// assert_eq!(policy.max_attempts, 5);
/// assert_eq!(superserve::RetryPolicy::none().max_attempts, 1);
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// Attempts in all, the first included. Default 3.
    pub max_attempts: u32,
    /// Attempts in all once a sandbox delete has seen a 409. Default 11.
    pub conflict_attempts: u32,
    /// Delay before the first retry. Default 100 ms.
    pub base_delay: Duration,
    /// Longest delay between attempts (also caps `Retry-After`). Default 30 s.
    pub max_delay: Duration,
    /// Relative jitter applied to the backoff (0.2 = ±20 %). Default 0.2.
    pub jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            conflict_attempts: 11,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(30),
            jitter: 0.2,
        }
    }
}

impl RetryPolicy {
    /// A policy that never retries.
    pub fn none() -> Self {
        RetryPolicy {
            max_attempts: 1,
            conflict_attempts: 1,
            ..RetryPolicy::default()
        }
    }
    /// Sets the attempt count (at least 1).
    #[must_use]
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n.max(1);
        self
    }
    /// Sets the attempt count used once a sandbox delete has seen a 409.
    #[must_use]
    pub fn conflict_attempts(mut self, n: u32) -> Self {
        self.conflict_attempts = n.max(1);
        self
    }
    /// Sets the first backoff delay.
    #[must_use]
    pub fn base_delay(mut self, d: Duration) -> Self {
        self.base_delay = d;
        self
    }
    /// Sets the delay cap.
    #[must_use]
    pub fn max_delay(mut self, d: Duration) -> Self {
        self.max_delay = d;
        self
    }
    /// Sets the relative jitter (clamped to 0..=1).
    #[must_use]
    pub fn jitter(mut self, j: f64) -> Self {
        self.jitter = if j.is_finite() {
            j.clamp(0.0, 1.0)
        } else {
            0.0
        };
        self
    }

    /// The backoff before retry `k` (0-based), jitter included, capped.
    pub fn backoff(&self, k: u32) -> Duration {
        let base = self.base_delay.as_secs_f64() * 2f64.powi(k.min(62) as i32);
        let factor = if self.jitter > 0.0 {
            rand::thread_rng().gen_range(1.0 - self.jitter..=1.0 + self.jitter)
        } else {
            1.0
        };
        let secs = (base * factor).min(self.max_delay.as_secs_f64()).max(0.0);
        Duration::from_secs_f64(secs)
    }
}

/// What the transport saw on one attempt.
pub(crate) enum Attempt<'a> {
    Status {
        status: u16,
        retry_after: Option<&'a str>,
    },
    ConnectionError,
    Timeout,
}

/// Per-request retry state.
pub(crate) struct RetryState<'p> {
    policy: &'p RetryPolicy,
    idempotent: bool,
    retry_conflict: bool,
    attempts: u32,
    limit: u32,
}

impl<'p> RetryState<'p> {
    pub(crate) fn new(policy: &'p RetryPolicy, idempotent: bool, retry_conflict: bool) -> Self {
        RetryState {
            policy,
            idempotent,
            retry_conflict,
            attempts: 0,
            limit: policy.max_attempts.max(1),
        }
    }

    /// Records one attempt; returns the delay before the next one, or `None` to stop.
    pub(crate) fn next_delay(&mut self, seen: Attempt<'_>) -> Option<Duration> {
        let k = self.attempts;
        self.attempts += 1;
        if !self.idempotent {
            return None;
        }
        let mut retry_after = None;
        match seen {
            Attempt::Timeout => return None,
            Attempt::ConnectionError => {}
            Attempt::Status {
                status,
                retry_after: ra,
            } => match status {
                429 => retry_after = ra.and_then(parse_retry_after),
                502..=504 => {}
                409 if self.retry_conflict => {
                    self.limit = self.limit.max(self.policy.conflict_attempts);
                }
                _ => return None,
            },
        }
        if self.attempts >= self.limit {
            return None;
        }
        Some(match retry_after {
            Some(d) => d.min(self.policy.max_delay),
            None => self.policy.backoff(k),
        })
    }
}

/// `Retry-After` as decimal seconds or an HTTP date; negative values become zero.
pub(crate) fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<f64>() {
        if !secs.is_finite() {
            return None;
        }
        return Some(Duration::from_secs_f64(secs.clamp(0.0, 1e9)));
    }
    let when = httpdate::parse_http_date(v).ok()?;
    Some(
        when.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy::default().jitter(0.0)
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let p = policy();
        assert_eq!(p.backoff(0), Duration::from_millis(100));
        assert_eq!(p.backoff(1), Duration::from_millis(200));
        assert_eq!(p.backoff(8), Duration::from_millis(25600));
        assert_eq!(p.backoff(9), Duration::from_secs(30));
        let j = RetryPolicy::default();
        for _ in 0..100 {
            let d = j.backoff(0).as_secs_f64();
            assert!((0.08..=0.12).contains(&d), "{d}");
        }
    }

    #[test]
    fn retries_only_idempotent_and_listed_statuses() {
        let p = policy();
        let mut s = RetryState::new(&p, false, false);
        assert!(s
            .next_delay(Attempt::Status {
                status: 503,
                retry_after: None
            })
            .is_none());
        for status in [429, 502, 503, 504] {
            let mut s = RetryState::new(&p, true, false);
            assert!(s
                .next_delay(Attempt::Status {
                    status,
                    retry_after: None
                })
                .is_some());
        }
        for status in [400, 401, 404, 409, 500] {
            let mut s = RetryState::new(&p, true, false);
            assert!(s
                .next_delay(Attempt::Status {
                    status,
                    retry_after: None
                })
                .is_none());
        }
        let mut s = RetryState::new(&p, true, false);
        assert!(s.next_delay(Attempt::Timeout).is_none());
    }

    #[test]
    fn three_attempts_then_conflict_eleven() {
        let p = policy();
        let mut s = RetryState::new(&p, true, false);
        assert!(s.next_delay(Attempt::ConnectionError).is_some());
        assert!(s.next_delay(Attempt::ConnectionError).is_some());
        assert!(s.next_delay(Attempt::ConnectionError).is_none());
        let mut s = RetryState::new(&p, true, true);
        let conflict = || Attempt::Status {
            status: 409,
            retry_after: None,
        };
        let mut delays = 0;
        while s.next_delay(conflict()).is_some() {
            delays += 1;
        }
        assert_eq!(delays, 10);
    }

    #[test]
    fn retry_after_honoured_and_capped() {
        let p = policy();
        let mut s = RetryState::new(&p, true, false);
        assert_eq!(
            s.next_delay(Attempt::Status {
                status: 429,
                retry_after: Some("2")
            }),
            Some(Duration::from_secs(2))
        );
        let mut s = RetryState::new(&p, true, false);
        assert_eq!(
            s.next_delay(Attempt::Status {
                status: 429,
                retry_after: Some("120")
            }),
            Some(Duration::from_secs(30))
        );
        assert_eq!(parse_retry_after("-3"), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("0.5"), Some(Duration::from_millis(500)));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }
}
