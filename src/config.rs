//! Client configuration: API key, endpoints, timeouts and retry policy.
//!
//! Resolution follows the official SDKs: an explicit value wins, then the environment
//! (`SUPERSERVE_API_KEY`, `SUPERSERVE_BASE_URL`), then the region encoded in the API key, then the
//! default `https://api.superserve.ai`. One addition: `SUPERSERVE_SANDBOX_URL` (or
//! [`ConfigBuilder::sandbox_url`]) points the data plane at an explicit base URL, with the
//! sandbox chosen by the `X-Superserve-Sandbox-Id` header. That is how a local or self-hosted
//! backend is used.

use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::retry::RetryPolicy;

/// Default control-plane URL.
pub const DEFAULT_BASE_URL: &str = "https://api.superserve.ai";
/// Default data-plane host.
pub const DEFAULT_SANDBOX_HOST: &str = "sandbox.superserve.ai";

const REGIONS: &[(&str, &str, &str)] = &[
    ("use", "https://api.superserve.ai", "sandbox.superserve.ai"),
    (
        "usw",
        "https://api-usw.superserve.ai",
        "usw-sandbox.superserve.ai",
    ),
];
const SHARED_HOSTS: &[&str] = &[
    "sandbox.superserve.ai",
    "staging-sandbox.superserve.ai",
    "usw-sandbox.superserve.ai",
];

/// Timeouts applied to requests.
///
/// `connect` bounds establishing a connection; `request` bounds one control-plane request
/// (per attempt, including the body); `command` is the default run time of a command. Long
/// operations have their own settings in their options.
///
/// ```
/// use std::time::Duration;
/// let t = superserve::Timeouts::default().command(Duration::from_secs(120));
/// assert_eq!(t.command, Duration::from_secs(120));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Timeouts {
    /// Time allowed to open a connection. Default 10 s.
    pub connect: Duration,
    /// Time allowed for one control-plane request attempt. Default 30 s.
    pub request: Duration,
    /// How long a command started by `run`, `run_with` or `run_stream` may run when its
    /// `RunOptions` set no timeout. Default 30 s (the hosted service's own default). The
    /// timeout is sent with the command: the server ends it and answers with exit code 124
    /// and the output so far, and the SDK waits 5 s longer than this for that answer. Whole
    /// seconds, at least 1.
    pub command: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(10),
            request: Duration::from_secs(30),
            command: Duration::from_secs(30),
        }
    }
}

impl Timeouts {
    /// Sets the connect timeout.
    #[must_use]
    pub fn connect(mut self, d: Duration) -> Self {
        self.connect = d;
        self
    }
    /// Sets the per-request timeout.
    #[must_use]
    pub fn request(mut self, d: Duration) -> Self {
        self.request = d;
        self
    }
    /// Sets the default command timeout (rounded up to whole seconds, at least 1 s).
    #[must_use]
    pub fn command(mut self, d: Duration) -> Self {
        let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
        self.command = Duration::from_secs(secs.max(1));
        self
    }
}

/// Resolved client configuration, shared by every handle made from it.
///
/// Cheap to clone (an `Arc`); clones share one connection pool per flavour.
///
/// ```
/// let config = superserve::Config::builder()
///     .api_key("ss_live_usw_0123456789abcdef0123456789abcdef")
///     .build()
///     .unwrap();
/// assert_eq!(config.base_url(), "https://api-usw.superserve.ai");
/// assert_eq!(config.sandbox_host(), "usw-sandbox.superserve.ai");
/// ```
#[derive(Clone)]
pub struct Config {
    pub(crate) inner: Arc<ConfigInner>,
}

pub(crate) struct ConfigInner {
    pub(crate) api_key: String,
    api_key_header: reqwest::header::HeaderValue,
    pub(crate) base_url: String,
    pub(crate) sandbox_host: String,
    pub(crate) sandbox_url: Option<String>,
    pub(crate) preview_url: Option<url::Url>,
    pub(crate) timeouts: Timeouts,
    pub(crate) retry: RetryPolicy,
    #[cfg(feature = "blocking")]
    pub(crate) blocking_http: OnceLock<crate::rt::blocking::Http>,
    #[cfg(feature = "async")]
    pub(crate) async_http: OnceLock<crate::rt::nonblocking::Http>,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("api_key", &"<redacted>")
            .field("base_url", &self.inner.base_url)
            .field("sandbox_host", &self.inner.sandbox_host)
            .field("sandbox_url", &self.inner.sandbox_url)
            .field(
                "preview_url",
                &self.inner.preview_url.as_ref().map(url::Url::as_str),
            )
            .field("timeouts", &self.inner.timeouts)
            .field("retry", &self.inner.retry)
            .finish()
    }
}

impl Config {
    /// Starts an explicit configuration. Unset values fall back to the environment, then to the
    /// defaults.
    pub fn builder() -> ConfigBuilder {
        ConfigBuilder::default()
    }

    /// The configuration from the environment (`SUPERSERVE_API_KEY`, `SUPERSERVE_BASE_URL`,
    /// `SUPERSERVE_SANDBOX_URL`).
    ///
    /// Calls with the same environment return the same configuration (and so share one
    /// connection pool). Fails with [`Error::Authentication`] when no API key is set.
    pub fn from_env() -> Result<Config> {
        static CACHE: OnceLock<Mutex<Option<(EnvKey, Config)>>> = OnceLock::new();
        let key = EnvKey::read();
        let cache = CACHE.get_or_init(|| Mutex::new(None));
        let mut guard = cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((k, c)) = guard.as_ref() {
            if *k == key {
                return Ok(c.clone());
            }
        }
        let config = ConfigBuilder::default().build()?;
        *guard = Some((key, config.clone()));
        Ok(config)
    }

    /// The control-plane base URL.
    pub fn base_url(&self) -> &str {
        &self.inner.base_url
    }

    /// The data-plane host (`sandbox.superserve.ai`, ...).
    pub fn sandbox_host(&self) -> &str {
        &self.inner.sandbox_host
    }

    /// The explicit data-plane base URL, when one is set.
    pub fn sandbox_url(&self) -> Option<&str> {
        self.inner.sandbox_url.as_deref()
    }

    /// The explicit preview address (scheme, domain and port that preview hosts
    /// `{port}-{sandbox id}.` are put in front of), when one is set.
    pub fn preview_url(&self) -> Option<&str> {
        self.inner.preview_url.as_ref().map(url::Url::as_str)
    }

    /// The URL of `port` of a sandbox: `https://{port}-{id}.{sandbox host}`, or with an
    /// explicit preview address `{scheme}://{port}-{id}.{host}[:{its port}]`.
    pub(crate) fn preview_url_for(&self, sandbox_id: &str, port: u16) -> String {
        match &self.inner.preview_url {
            Some(u) => {
                let host = u.host_str().unwrap_or("localhost");
                match u.port() {
                    Some(p) => format!("{}://{port}-{sandbox_id}.{host}:{p}", u.scheme()),
                    None => format!("{}://{port}-{sandbox_id}.{host}", u.scheme()),
                }
            }
            None => format!("https://{port}-{sandbox_id}.{}", self.inner.sandbox_host),
        }
    }

    /// The region encoded in the API key (`"use"`, `"usw"`, ...), if any.
    pub fn region(&self) -> Option<&str> {
        region_of(&self.inner.api_key)
    }

    /// The timeouts.
    pub fn timeouts(&self) -> Timeouts {
        self.inner.timeouts
    }

    /// The retry policy.
    pub fn retry_policy(&self) -> &RetryPolicy {
        &self.inner.retry
    }

    /// A builder holding every setting of this configuration, to change one or two:
    ///
    /// ```
    /// use std::time::Duration;
    /// use superserve::{Config, RetryPolicy};
    /// let base = Config::builder().api_key("ss_live_...").build().unwrap();
    /// let patient = base
    ///     .to_builder()
    ///     .retry_policy(RetryPolicy::default().max_attempts(6))
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(patient.base_url(), base.base_url());
    /// assert_eq!(patient.retry_policy().max_attempts, 6);
    /// ```
    ///
    /// The new configuration has its own connection pool.
    pub fn to_builder(&self) -> ConfigBuilder {
        let i = &self.inner;
        ConfigBuilder {
            api_key: Some(i.api_key.clone()),
            base_url: Some(i.base_url.clone()),
            sandbox_url: i.sandbox_url.clone(),
            preview_url: i.preview_url.as_ref().map(|u| u.as_str().to_owned()),
            timeouts: Some(i.timeouts),
            retry: Some(i.retry.clone()),
        }
    }

    /// The API key as a header value (marked sensitive), built once.
    pub(crate) fn api_key_header(&self) -> &reqwest::header::HeaderValue {
        &self.inner.api_key_header
    }

    /// Data-plane base URL for a sandbox and whether the `X-Superserve-Sandbox-Id` header is
    /// needed (protocol §1.4).
    pub(crate) fn data_plane(&self, sandbox_id: &str) -> (String, bool) {
        if let Some(url) = &self.inner.sandbox_url {
            return (url.trim_end_matches('/').to_owned(), true);
        }
        let host = self.inner.sandbox_host.to_ascii_lowercase();
        if SHARED_HOSTS.contains(&host.as_str()) {
            (format!("https://{host}"), true)
        } else {
            (format!("https://boxd-{sandbox_id}.{host}"), false)
        }
    }

    /// WebSocket URL of `exec/connect` and whether the sandbox-id header is needed.
    pub(crate) fn exec_connect_url(&self, sandbox_id: &str) -> (String, bool) {
        if let Some(url) = &self.inner.sandbox_url {
            let url = url.trim_end_matches('/');
            let ws = if let Some(rest) = url.strip_prefix("https://") {
                format!("wss://{rest}")
            } else if let Some(rest) = url.strip_prefix("http://") {
                format!("ws://{rest}")
            } else {
                url.to_owned()
            };
            return (format!("{ws}/exec/connect"), true);
        }
        (
            format!(
                "wss://boxd-{sandbox_id}.{}/exec/connect",
                self.inner.sandbox_host
            ),
            false,
        )
    }
}

#[derive(PartialEq, Eq)]
struct EnvKey([Option<String>; 4]);

impl EnvKey {
    fn read() -> Self {
        EnvKey(
            [
                "SUPERSERVE_API_KEY",
                "SUPERSERVE_BASE_URL",
                "SUPERSERVE_SANDBOX_URL",
                "SUPERSERVE_PREVIEW_URL",
            ]
            .map(|k| std::env::var(k).ok()),
        )
    }
}

/// Builder for [`Config`].
///
/// ```
/// use std::time::Duration;
/// use superserve::{Config, RetryPolicy, Timeouts};
/// let config = Config::builder()
///     .api_key("ss_live_0123456789abcdef0123456789abcdef")
///     .base_url("http://127.0.0.1:8080")
///     .sandbox_url("http://127.0.0.1:8081")
///     .timeouts(Timeouts::default().request(Duration::from_secs(10)))
///     .retry_policy(RetryPolicy::default().max_attempts(5))
///     .build()
///     .unwrap();
/// assert_eq!(config.base_url(), "http://127.0.0.1:8080");
/// ```
#[derive(Default, Clone)]
#[must_use]
pub struct ConfigBuilder {
    api_key: Option<String>,
    base_url: Option<String>,
    sandbox_url: Option<String>,
    preview_url: Option<String>,
    timeouts: Option<Timeouts>,
    retry: Option<RetryPolicy>,
}

impl fmt::Debug for ConfigBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConfigBuilder")
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("base_url", &self.base_url)
            .field("sandbox_url", &self.sandbox_url)
            .field("preview_url", &self.preview_url)
            .finish_non_exhaustive()
    }
}

fn non_empty(v: Option<String>) -> Option<String> {
    v.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty())
}

impl ConfigBuilder {
    /// The API key (`ss_live_...`). Default: `SUPERSERVE_API_KEY`.
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(key.into());
        self
    }
    /// The control-plane base URL. Default: `SUPERSERVE_BASE_URL`, then the key's region.
    pub fn base_url(mut self, url: impl Into<String>) -> Self {
        self.base_url = Some(url.into());
        self
    }
    /// An explicit data-plane base URL (shared-host mode). Default: `SUPERSERVE_SANDBOX_URL`,
    /// else derived from the base URL.
    pub fn sandbox_url(mut self, url: impl Into<String>) -> Self {
        self.sandbox_url = Some(url.into());
        self
    }
    /// An explicit preview address: preview URLs become
    /// `{scheme}://{port}-{sandbox id}.{host}[:{port}]` of it (a local or self-hosted
    /// backend's preview proxy, e.g. `http://localhost:8083`). Default:
    /// `SUPERSERVE_PREVIEW_URL`, else `https://{port}-{id}.{sandbox host}`.
    pub fn preview_url(mut self, url: impl Into<String>) -> Self {
        self.preview_url = Some(url.into());
        self
    }
    /// Timeouts.
    pub fn timeouts(mut self, t: Timeouts) -> Self {
        self.timeouts = Some(t);
        self
    }
    /// Retry policy for idempotent requests.
    pub fn retry_policy(mut self, r: RetryPolicy) -> Self {
        self.retry = Some(r);
        self
    }

    /// Resolves the configuration. Fails with [`Error::Config`] (local, nothing is sent) when
    /// no API key is given or set in the environment, when the key cannot be sent in a header,
    /// or for a URL that is not `http(s)://`.
    pub fn build(self) -> Result<Config> {
        let api_key = non_empty(self.api_key)
            .or_else(|| non_empty(std::env::var("SUPERSERVE_API_KEY").ok()))
            .ok_or_else(|| {
                Error::config(
                    "missing API key: pass one to Config::builder().api_key(..) or set SUPERSERVE_API_KEY",
                )
            })?;
        let mut api_key_header = reqwest::header::HeaderValue::from_str(&api_key)
            .map_err(|_| Error::config("the API key contains characters a header cannot carry"))?;
        api_key_header.set_sensitive(true);
        let base_override = non_empty(self.base_url)
            .or_else(|| non_empty(std::env::var("SUPERSERVE_BASE_URL").ok()));
        let (base_url, sandbox_host) = match base_override {
            Some(url) => {
                let host = sandbox_host_for(&url);
                (url, host)
            }
            None => {
                let region = region_of(&api_key)
                    .and_then(|r| REGIONS.iter().find(|(name, _, _)| *name == r));
                match region {
                    Some((_, base, host)) => ((*base).to_owned(), (*host).to_owned()),
                    None => (DEFAULT_BASE_URL.to_owned(), DEFAULT_SANDBOX_HOST.to_owned()),
                }
            }
        };
        check_url("base URL", &base_url)?;
        let sandbox_url = non_empty(self.sandbox_url)
            .or_else(|| non_empty(std::env::var("SUPERSERVE_SANDBOX_URL").ok()));
        if let Some(u) = &sandbox_url {
            check_url("sandbox URL", u)?;
        }
        let preview_url = non_empty(self.preview_url)
            .or_else(|| non_empty(std::env::var("SUPERSERVE_PREVIEW_URL").ok()))
            .map(|u| {
                check_url("preview URL", &u)?;
                url::Url::parse(&u).map_err(|_| Error::config(format!("invalid preview URL {u:?}")))
            })
            .transpose()?;
        Ok(Config {
            inner: Arc::new(ConfigInner {
                api_key,
                api_key_header,
                base_url,
                sandbox_host,
                sandbox_url,
                preview_url,
                timeouts: self.timeouts.unwrap_or_default(),
                retry: self.retry.unwrap_or_default(),
                #[cfg(feature = "blocking")]
                blocking_http: OnceLock::new(),
                #[cfg(feature = "async")]
                async_http: OnceLock::new(),
            }),
        })
    }
}

fn check_url(what: &str, u: &str) -> Result<()> {
    match url::Url::parse(u) {
        Ok(p) if matches!(p.scheme(), "http" | "https") && p.host_str().is_some() => Ok(()),
        _ => Err(Error::config(format!(
            "invalid {what} {u:?}: expected an http:// or https:// URL"
        ))),
    }
}

/// The region token of a region-tagged key (`ss_live_<region>_<32 chars>`), protocol §1.2.
pub(crate) fn region_of(key: &str) -> Option<&str> {
    let rest = key.strip_prefix("ss_live_")?;
    if rest.len() < 34 || rest.len() > 50 || !rest.is_ascii() {
        return None;
    }
    let split = rest.len() - 33;
    let (region, tail) = rest.split_at(split);
    let tail = tail.strip_prefix('_')?;
    let region_ok = region
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    let tail_ok = tail
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    (region_ok && tail_ok).then_some(region)
}

/// Sandbox host derived from a base-URL override (protocol §1.3).
fn sandbox_host_for(base_url: &str) -> String {
    let host = url::Url::parse(base_url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_ascii_lowercase));
    match host.as_deref() {
        Some("api-staging.superserve.ai") => "staging-sandbox.superserve.ai".to_owned(),
        Some(h) => REGIONS
            .iter()
            .find(|(_, base, _)| base.strip_prefix("https://") == Some(h))
            .map(|(_, _, sb)| (*sb).to_owned())
            .unwrap_or_else(|| DEFAULT_SANDBOX_HOST.to_owned()),
        None => DEFAULT_SANDBOX_HOST.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TAIL: &str = "0123456789abcdef0123456789abcd_-";

    #[test]
    fn region_parsing() {
        assert_eq!(region_of(&format!("ss_live_usw_{TAIL}")), Some("usw"));
        assert_eq!(region_of(&format!("ss_live_{TAIL}")), None);
        assert_eq!(region_of(&format!("ss_live_US_{TAIL}")), None);
        assert_eq!(
            region_of(&format!("ss_live_abcdefghijklmnopqr_{TAIL}")),
            None
        );
        assert_eq!(region_of("garbage"), None);
    }

    #[test]
    fn sandbox_host_derivation() {
        assert_eq!(
            sandbox_host_for("https://api-staging.superserve.ai"),
            "staging-sandbox.superserve.ai"
        );
        assert_eq!(
            sandbox_host_for("https://api-usw.superserve.ai/"),
            "usw-sandbox.superserve.ai"
        );
        assert_eq!(
            sandbox_host_for("http://localhost:8080"),
            DEFAULT_SANDBOX_HOST
        );
        assert_eq!(sandbox_host_for("not a url"), DEFAULT_SANDBOX_HOST);
    }

    #[test]
    fn data_plane_modes() {
        let c = Config::builder()
            .api_key(format!("ss_live_{TAIL}"))
            .base_url("https://api.superserve.ai")
            .build()
            .unwrap();
        assert_eq!(
            c.data_plane("abc"),
            ("https://sandbox.superserve.ai".to_owned(), true)
        );
        assert_eq!(
            c.exec_connect_url("abc").0,
            "wss://boxd-abc.sandbox.superserve.ai/exec/connect"
        );
        let c = Config::builder()
            .api_key("k")
            .base_url("https://api.example.com")
            .sandbox_url("http://127.0.0.1:9/")
            .build()
            .unwrap();
        assert_eq!(c.data_plane("abc"), ("http://127.0.0.1:9".to_owned(), true));
        assert_eq!(
            c.exec_connect_url("abc"),
            ("ws://127.0.0.1:9/exec/connect".to_owned(), true)
        );
        assert!(!format!("{c:?}").contains("\"k\""));
        assert_eq!(
            c.preview_url_for("abc", 8000),
            "https://8000-abc.sandbox.superserve.ai"
        );
        let c = c
            .to_builder()
            .preview_url("http://localhost:7070")
            .build()
            .unwrap();
        assert_eq!(
            c.preview_url_for("abc", 8000),
            "http://8000-abc.localhost:7070"
        );
    }
}
