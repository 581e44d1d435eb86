use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use reqwest::header::HeaderName;
use reqwest::Method;
use serde_json::{json, Value};

use super::{dual, rt, Api, Commands, Files};
use crate::config::Config;
use crate::error::{Error, Result, TimeoutKind};
use crate::models::{
    NetworkLogPage, PreviewAccess, SandboxInfo, SandboxSecretBinding, SandboxStatus, SandboxTokens,
};
use crate::options::{
    CreateOptions, ListOptions, NetworkLogOptions, PauseOptions, ResumeOptions, UpdateOptions,
};
use crate::wire::{decode_json, seg, Req, Resp};

const X_ACCESS_TOKEN: HeaderName = HeaderName::from_static("x-access-token");
const X_SANDBOX_ID: HeaderName = HeaderName::from_static("x-superserve-sandbox-id");
const X_ROUTING_HINT: HeaderName = HeaderName::from_static("x-superserve-routing-hint");

/// How long an activate (`connect`, a data-plane re-activate) keeps retrying while a pause
/// finishes (`sandbox_pausing`).
const CONNECT_PAUSING_WINDOW: Duration = Duration::from_secs(30);
/// While polling a pause, `active` is tolerated this long (the pause may not have started).
const PAUSE_ACTIVE_GRACE: Duration = Duration::from_secs(2);

/// A handle to one sandbox.
///
/// Cheap to clone; clones share the sandbox's access token, so a rotation by one (resume,
/// connect, automatic refresh) is seen by all. `Send + Sync`.
///
/// Dropping a handle leaves the sandbox running (it is a handle, not the sandbox): call
/// [`kill`](Self::kill), or wrap it with [`kill_on_drop`](Self::kill_on_drop) to have it
/// killed when the guard goes out of scope.
///
/// The fields read by [`id`](Self::id), [`name`](Self::name), [`status`](Self::status),
/// [`metadata`](Self::metadata), [`secrets`](Self::secrets) and
/// [`preview_access`](Self::preview_access) are a snapshot taken when the handle was made; call
/// [`get_info`](Self::get_info) for fresh values.
#[derive(Clone)]
pub struct Sandbox {
    inner: Arc<Inner>,
}

struct Inner {
    api: Api,
    info: SandboxInfo,
    tokens: RwLock<Tokens>,
    next_revision: AtomicU64,
    refresh: rt::Mutex<()>,
    deleted: AtomicBool,
    /// `/sandboxes/{id}`, percent-encoded once.
    path: String,
}

/// The data-plane credentials of a sandbox.
#[derive(Clone)]
pub(crate) struct Tokens {
    pub(crate) access_token: String,
    pub(crate) routing_hint: Option<String>,
    /// The hint's expiry (unix seconds), read once when the hint arrives.
    hint_expires: Option<f64>,
    /// Revision of the rotation that produced these tokens.
    pub(crate) revision: u64,
}

impl Tokens {
    fn new(access_token: String, routing_hint: Option<String>, revision: u64) -> Tokens {
        let hint_expires = routing_hint.as_deref().and_then(crate::wire::hint::expiry);
        Tokens {
            access_token,
            routing_hint,
            hint_expires,
            revision,
        }
    }

    fn hint_expired(&self) -> bool {
        self.hint_expires.is_some_and(crate::wire::hint::is_past)
    }
}

impl fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sandbox")
            .field("id", &self.inner.info.id)
            .field("name", &self.inner.info.name)
            .field("status", &self.inner.info.status)
            .finish_non_exhaustive()
    }
}

fn require_id(id: &str) -> Result<()> {
    if id.trim().is_empty() {
        return Err(Error::invalid("sandbox id must not be empty"));
    }
    Ok(())
}

/// Splits a create/activate response into the sandbox and its tokens.
fn decode_with_token(resp: &Resp, what: &str) -> Result<(SandboxInfo, SandboxTokens)> {
    let value: Value = decode_json(&resp.body, what)?;
    let info: SandboxInfo = serde_json::from_value(value.clone())
        .map_err(|e| Error::decode(format!("{what}: {e}"), &resp.body))?;
    let tokens: SandboxTokens = serde_json::from_value(value)
        .map_err(|e| Error::decode(format!("{what}: {e}"), &resp.body))?;
    if tokens.access_token.as_deref().unwrap_or("").is_empty() {
        return Err(Error::decode(
            format!("{what}: missing access_token"),
            b"<body withheld: may contain credentials>",
        ));
    }
    Ok((info, tokens))
}

#[dual]
impl Sandbox {
    fn from_parts(api: Api, info: SandboxInfo, tokens: SandboxTokens) -> Sandbox {
        let path = format!("/sandboxes/{}", seg(&info.id));
        Sandbox {
            inner: Arc::new(Inner {
                api,
                info,
                tokens: RwLock::new(Tokens::new(
                    tokens.access_token.unwrap_or_default(),
                    tokens.routing_hint,
                    0,
                )),
                next_revision: AtomicU64::new(1),
                refresh: rt::Mutex::new(()),
                deleted: AtomicBool::new(false),
                path,
            }),
        }
    }

    /// Creates a sandbox, with the configuration from the environment.
    ///
    /// Fails with [`Error::InvalidInput`] before any request for a bad name, bad metadata or an
    /// env var that is also a secret binding.
    ///
    /// Cancellation (async): once the request has gone out, the answer is awaited on a task of
    /// its own; if the caller's future was dropped meanwhile (a deadline, a `select!`), the
    /// sandbox the server made is killed, so nothing is left running that nobody knows about.
    pub async fn create(opts: CreateOptions) -> Result<Sandbox> {
        Self::create_with_config(&Config::from_env()?, opts).await
    }

    /// [`create`](Self::create) with an explicit configuration.
    #[tracing::instrument(name = "sandbox.create", level = "debug", skip_all, fields(sandbox_id = tracing::field::Empty))]
    pub async fn create_with_config(config: &Config, opts: CreateOptions) -> Result<Sandbox> {
        let body = opts.to_body()?;
        let api = Api::new(config.clone());
        let req = api.control(Method::POST, "/sandboxes").json(&body);
        let worker_api = api.clone();
        let sandbox = rt::outlive_caller(
            async move {
                let resp = worker_api.send(&req).await?;
                let (info, tokens) = decode_with_token(&resp, "POST /sandboxes")?;
                Ok(Sandbox::from_parts(worker_api, info, tokens))
            },
            |orphan: Sandbox| async move {
                tracing::info!(
                    sandbox_id = orphan.id(),
                    "superserve: create was cancelled after the request went out; killing the sandbox it made"
                );
                if let Err(e) = orphan.kill().await {
                    tracing::warn!(sandbox_id = orphan.id(), error = %e, "superserve: could not kill an orphaned sandbox");
                }
            },
        )
        .await?;
        tracing::Span::current().record("sandbox_id", sandbox.id());
        Ok(sandbox)
    }

    /// Connects to an existing sandbox, resuming it if it is paused.
    ///
    /// While a pause is finishing (409 `sandbox_pausing`) it retries every second for up to 30 s.
    pub async fn connect(sandbox_id: &str) -> Result<Sandbox> {
        Self::connect_with_config(&Config::from_env()?, sandbox_id).await
    }

    /// [`connect`](Self::connect) with an explicit configuration.
    #[tracing::instrument(
        name = "sandbox.connect",
        level = "debug",
        skip_all,
        fields(sandbox_id)
    )]
    pub async fn connect_with_config(config: &Config, sandbox_id: &str) -> Result<Sandbox> {
        require_id(sandbox_id)?;
        let api = Api::new(config.clone());
        let (info, tokens) = Self::activate_waiting(&api, sandbox_id).await?;
        Ok(Sandbox::from_parts(api, info, tokens))
    }

    /// Activates, retrying every second for up to 30 s while a pause is finishing
    /// (409 `sandbox_pausing`): the pause lands, then the activate resumes the sandbox.
    async fn activate_waiting(api: &Api, sandbox_id: &str) -> Result<(SandboxInfo, SandboxTokens)> {
        let started = Instant::now();
        loop {
            match Self::activate_raw(api, sandbox_id).await {
                Err(e)
                    if matches!(e, Error::Conflict(_))
                        && e.code() == Some("sandbox_pausing")
                        && started.elapsed() + Duration::from_secs(1) < CONNECT_PAUSING_WINDOW =>
                {
                    rt::sleep(Duration::from_secs(1)).await;
                }
                other => return other,
            }
        }
    }

    async fn activate_raw(api: &Api, sandbox_id: &str) -> Result<(SandboxInfo, SandboxTokens)> {
        let what = "POST /sandboxes/{id}/activate";
        let req = api.control(
            Method::POST,
            &format!("/sandboxes/{}/activate", seg(sandbox_id)),
        );
        let resp = api.send(&req).await?;
        decode_with_token(&resp, what)
    }

    /// Lists sandboxes, with the configuration from the environment.
    pub async fn list(opts: ListOptions) -> Result<Vec<SandboxInfo>> {
        Self::list_with_config(&Config::from_env()?, opts).await
    }

    /// [`list`](Self::list) with an explicit configuration.
    #[tracing::instrument(name = "sandbox.list", level = "debug", skip_all)]
    pub async fn list_with_config(config: &Config, opts: ListOptions) -> Result<Vec<SandboxInfo>> {
        let query = opts.to_query()?;
        let api = Api::new(config.clone());
        let path = if query.is_empty() {
            "/sandboxes".to_owned()
        } else {
            format!("/sandboxes?{query}")
        };
        let resp = api.send(&api.control(Method::GET, &path)).await?;
        resp.json("GET /sandboxes")
    }

    /// Deletes a sandbox by id. Idempotent: an unknown id is not an error.
    pub async fn kill_by_id(sandbox_id: &str) -> Result<()> {
        Self::kill_by_id_with_config(&Config::from_env()?, sandbox_id).await
    }

    /// [`kill_by_id`](Self::kill_by_id) with an explicit configuration.
    #[tracing::instrument(
        name = "sandbox.kill_by_id",
        level = "debug",
        skip_all,
        fields(sandbox_id)
    )]
    pub async fn kill_by_id_with_config(config: &Config, sandbox_id: &str) -> Result<()> {
        require_id(sandbox_id)?;
        Self::delete_raw(&Api::new(config.clone()), sandbox_id).await
    }

    async fn delete_raw(api: &Api, sandbox_id: &str) -> Result<()> {
        let mut req = api.control(Method::DELETE, &format!("/sandboxes/{}", seg(sandbox_id)));
        req.retry_conflict = true;
        match api.send(&req).await {
            Ok(_) | Err(Error::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Updates a sandbox by id without resuming it.
    pub async fn update_by_id(sandbox_id: &str, opts: UpdateOptions) -> Result<()> {
        Self::update_by_id_with_config(&Config::from_env()?, sandbox_id, opts).await
    }

    /// [`update_by_id`](Self::update_by_id) with an explicit configuration.
    #[tracing::instrument(
        name = "sandbox.update_by_id",
        level = "debug",
        skip_all,
        fields(sandbox_id)
    )]
    pub async fn update_by_id_with_config(
        config: &Config,
        sandbox_id: &str,
        opts: UpdateOptions,
    ) -> Result<()> {
        require_id(sandbox_id)?;
        Self::patch_raw(&Api::new(config.clone()), sandbox_id, &opts).await
    }

    async fn patch_raw(api: &Api, sandbox_id: &str, opts: &UpdateOptions) -> Result<()> {
        let body = opts.to_body()?;
        let req = api
            .control(Method::PATCH, &format!("/sandboxes/{}", seg(sandbox_id)))
            .json(&body);
        api.send(&req).await.map(drop)
    }

    /// The sandbox id.
    pub fn id(&self) -> &str {
        &self.inner.info.id
    }

    /// The sandbox name.
    pub fn name(&self) -> &str {
        &self.inner.info.name
    }

    /// The status when the handle was made.
    pub fn status(&self) -> &SandboxStatus {
        &self.inner.info.status
    }

    /// The metadata when the handle was made.
    pub fn metadata(&self) -> &HashMap<String, String> {
        &self.inner.info.metadata
    }

    /// The secret bindings when the handle was made.
    pub fn secrets(&self) -> &[SandboxSecretBinding] {
        self.inner.info.secrets.as_deref().unwrap_or(&[])
    }

    /// The preview access policy when the handle was made.
    pub fn preview_access(&self) -> &PreviewAccess {
        &self.inner.info.preview_access
    }

    /// Everything known about the sandbox when the handle was made.
    pub fn info(&self) -> &SandboxInfo {
        &self.inner.info
    }

    /// The configuration the handle uses.
    pub fn config(&self) -> &Config {
        &self.inner.api.config
    }

    /// Wraps the handle in a guard that kills the sandbox when dropped, for scripts and tests.
    /// The guard derefs to the sandbox.
    ///
    /// Blocking flavour: the kill runs in `drop`. Async flavour: the kill also completes
    /// before `drop` returns: on a multi-thread runtime through `tokio::task::block_in_place`
    /// (the runtime keeps running its other tasks), on a current-thread runtime or outside any
    /// runtime on a short-lived thread of its own that `drop` waits for. A failed kill is
    /// logged (`tracing` warning) and otherwise ignored; call
    /// [`KillOnDrop::kill`] to see its result, or [`KillOnDrop::into_inner`] to keep the
    /// sandbox after all.
    ///
    /// ```no_run
    /// # #[cfg(feature = "blocking")]
    /// # fn demo() -> superserve::Result<()> {
    /// use superserve::{CreateOptions, Sandbox};
    /// let sb = Sandbox::create(CreateOptions::new("scratch"))?.kill_on_drop();
    /// sb.commands().run("echo hello")?;
    /// // killed here, when `sb` goes out of scope (also on `?` and panics)
    /// # Ok(()) }
    /// ```
    pub fn kill_on_drop(self) -> KillOnDrop {
        KillOnDrop {
            sandbox: self,
            armed: true,
        }
    }

    fn path(&self, tail: &str) -> String {
        let mut p = String::with_capacity(self.inner.path.len() + tail.len());
        p.push_str(&self.inner.path);
        p.push_str(tail);
        p
    }

    /// The handle's API and the control-plane path `/sandboxes/{id}{tail}`, after the
    /// deleted-handle check.
    pub(crate) fn control_path(&self, tail: &str) -> Result<(&Api, String)> {
        self.ensure_live()?;
        Ok((&self.inner.api, self.path(tail)))
    }

    /// Fails with [`Error::SandboxDeleted`] once [`kill`](Self::kill) succeeded (checked
    /// before anything is sent, by every method of the handle, its commands and its files).
    pub(crate) fn ensure_live(&self) -> Result<()> {
        if self.inner.deleted.load(Ordering::SeqCst) {
            return Err(Error::SandboxDeleted {
                id: self.inner.info.id.clone(),
            });
        }
        Ok(())
    }

    /// Fetches fresh information about the sandbox.
    #[tracing::instrument(name = "sandbox.get_info", level = "debug", skip_all, fields(sandbox_id = self.id()))]
    pub async fn get_info(&self) -> Result<SandboxInfo> {
        self.ensure_live()?;
        let api = &self.inner.api;
        let resp = api.send(&api.control(Method::GET, &self.path(""))).await?;
        resp.json("GET /sandboxes/{id}")
    }

    /// Updates metadata, egress rules, timeouts or preview policy. Does not resume a paused
    /// sandbox (changing `network` needs an active one).
    #[tracing::instrument(name = "sandbox.update", level = "debug", skip_all, fields(sandbox_id = self.id()))]
    pub async fn update(&self, opts: UpdateOptions) -> Result<()> {
        self.ensure_live()?;
        Self::patch_raw(&self.inner.api, &self.inner.info.id, &opts).await
    }

    /// Asks the sandbox to pause and returns once the request is accepted.
    pub async fn pause(&self) -> Result<()> {
        self.pause_with(PauseOptions::new()).await
    }

    /// Pauses, optionally waiting (within the options' timeout) until the pause has landed.
    #[tracing::instrument(name = "sandbox.pause", level = "debug", skip_all, fields(sandbox_id = self.id()))]
    pub async fn pause_with(&self, opts: PauseOptions) -> Result<()> {
        self.ensure_live()?;
        let api = &self.inner.api;
        if !opts.wait {
            let req = api.control(Method::POST, &self.path("/pause")).header(
                HeaderName::from_static("prefer"),
                reqwest::header::HeaderValue::from_static("respond-async"),
            );
            return api.send(&req).await.map(drop);
        }
        let deadline = Instant::now() + opts.timeout;
        let mut req = api.control(Method::POST, &self.path("/pause"));
        req.deadline = Some(deadline);
        match api.send(&req).await {
            Ok(resp) if resp.is_empty() => return Ok(()),
            Ok(resp) => {
                let v: Value = resp.json("POST /sandboxes/{id}/pause")?;
                if v.get("status").and_then(Value::as_str) != Some("pausing") {
                    return Ok(());
                }
            }
            // The server held the request past our attempt timeout: still pausing.
            Err(Error::Timeout { .. }) if Instant::now() < deadline => {}
            Err(e) => return Err(e),
        }
        let poll = opts.poll_interval;
        self.wait_until_paused(deadline, opts.timeout, &|_| poll)
            .await
    }

    async fn wait_until_paused(
        &self,
        deadline: Instant,
        budget: Duration,
        interval: &(dyn Fn(Duration) -> Duration + Send + Sync),
    ) -> Result<()> {
        let api = &self.inner.api;
        let started = Instant::now();
        loop {
            let mut req = api.control(Method::GET, &self.path(""));
            req.deadline = Some(deadline);
            match api.send(&req).await {
                Err(Error::NotFound(_)) => return Ok(()),
                Err(Error::Timeout { .. }) => {}
                Err(e) => return Err(e),
                Ok(resp) => {
                    let info: SandboxInfo = resp.json("GET /sandboxes/{id}")?;
                    match info.status {
                        SandboxStatus::Paused | SandboxStatus::Deleted => return Ok(()),
                        SandboxStatus::Pausing => {}
                        SandboxStatus::Active if started.elapsed() < PAUSE_ACTIVE_GRACE => {}
                        other => {
                            return Err(Error::Sandbox {
                                message: format!(
                                    "sandbox {} did not pause: status is {other}",
                                    self.inner.info.id
                                ),
                            })
                        }
                    }
                }
            }
            let delay = interval(started.elapsed());
            if Instant::now() + delay >= deadline {
                return Err(Error::timeout(
                    TimeoutKind::Operation,
                    format!(
                        "sandbox {} is still pausing after {}s",
                        self.inner.info.id,
                        budget.as_secs()
                    ),
                ));
            }
            rt::sleep(delay).await;
        }
    }

    /// Resumes a paused sandbox and rotates its access token.
    ///
    /// If a pause is still in flight (409), waits for it to land (up to 5 minutes) and resumes;
    /// [`resume_with`](Self::resume_with) sets that wait.
    pub async fn resume(&self) -> Result<()> {
        self.resume_with(ResumeOptions::new()).await
    }

    /// [`resume`](Self::resume), waiting at most `opts`' timeout for an in-flight pause.
    ///
    /// ```no_run
    /// # #[cfg(feature = "blocking")]
    /// # fn demo(sb: &superserve::Sandbox) -> superserve::Result<()> {
    /// use std::time::Duration;
    /// sb.resume_with(superserve::ResumeOptions::new().timeout(Duration::from_secs(30)))?;
    /// # Ok(()) }
    /// ```
    #[tracing::instrument(name = "sandbox.resume", level = "debug", skip_all, fields(sandbox_id = self.id()))]
    pub async fn resume_with(&self, opts: ResumeOptions) -> Result<()> {
        self.ensure_live()?;
        match self.post_resume().await {
            Err(Error::Conflict(conflict)) => {
                let info = self.get_info().await?;
                match info.status {
                    SandboxStatus::Paused => {}
                    SandboxStatus::Pausing => {
                        let fixed = opts.poll_interval;
                        let interval = move |elapsed: Duration| match fixed {
                            Some(d) => d,
                            None if elapsed < Duration::from_secs(2) => Duration::from_millis(50),
                            None => Duration::from_secs(1),
                        };
                        self.wait_until_paused(
                            Instant::now() + opts.timeout,
                            opts.timeout,
                            &interval,
                        )
                        .await?;
                    }
                    _ => return Err(Error::Conflict(conflict)),
                }
                self.post_resume().await
            }
            other => other,
        }
    }

    async fn post_resume(&self) -> Result<()> {
        let api = &self.inner.api;
        let revision = self.inner.next_revision.fetch_add(1, Ordering::SeqCst);
        let resp = api
            .send(&api.control(Method::POST, &self.path("/resume")))
            .await?;
        let tokens: SandboxTokens = resp.json("POST /sandboxes/{id}/resume")?;
        self.apply_tokens(revision, tokens, "POST /sandboxes/{id}/resume")
    }

    /// Stores rotated tokens unless a newer rotation was applied meanwhile.
    fn apply_tokens(&self, revision: u64, tokens: SandboxTokens, what: &str) -> Result<()> {
        let token = tokens
            .access_token
            .filter(|t| !t.is_empty())
            .ok_or_else(|| Error::decode(format!("{what}: missing access_token"), b""))?;
        let mut held = self.inner.tokens.write().unwrap_or_else(|p| p.into_inner());
        if revision > held.revision {
            *held = Tokens::new(token, tokens.routing_hint, revision);
        }
        Ok(())
    }

    /// The current data-plane credentials.
    pub(crate) fn tokens(&self) -> Tokens {
        self.inner
            .tokens
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Re-activates the sandbox (resuming it if paused) to get a fresh token, unless another
    /// caller rotated the token since `seen_revision`. Concurrent callers share one activate.
    pub(crate) async fn refresh(&self, seen_revision: u64) -> Result<()> {
        let _guard = self.inner.refresh.lock().await;
        if self.tokens().revision != seen_revision {
            return Ok(());
        }
        let revision = self.inner.next_revision.fetch_add(1, Ordering::SeqCst);
        tracing::info!(
            sandbox_id = self.id(),
            "superserve: refreshing the access token (activate; resumes a paused sandbox)"
        );
        let (_, tokens) = Self::activate_waiting(&self.inner.api, &self.inner.info.id).await?;
        self.apply_tokens(revision, tokens, "POST /sandboxes/{id}/activate")
    }

    /// Deletes the sandbox. Idempotent; afterwards every other method of this handle (and of
    /// its [`commands`](Self::commands) and [`files`](Self::files)) fails with
    /// [`Error::SandboxDeleted`] before sending anything. A delete that failed can be retried.
    #[tracing::instrument(name = "sandbox.kill", level = "debug", skip_all, fields(sandbox_id = self.id()))]
    pub async fn kill(&self) -> Result<()> {
        if self.inner.deleted.load(Ordering::SeqCst) {
            return Ok(());
        }
        Self::delete_raw(&self.inner.api, &self.inner.info.id).await?;
        self.inner.deleted.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Binds a team secret as environment variable `env_key` (for processes started afterwards).
    #[tracing::instrument(name = "sandbox.attach_secret", level = "debug", skip_all, fields(sandbox_id = self.id()))]
    pub async fn attach_secret(&self, env_key: &str, secret_name: &str) -> Result<()> {
        self.ensure_live()?;
        if env_key.is_empty() || secret_name.is_empty() {
            return Err(Error::invalid("env_key and secret_name must not be empty"));
        }
        let api = &self.inner.api;
        let req = api
            .control(Method::POST, &self.path("/secrets"))
            .json(&json!({"env_key": env_key, "secret_name": secret_name}));
        api.send(&req).await.map(drop)
    }

    /// Removes a secret binding and revokes its stand-in token.
    #[tracing::instrument(name = "sandbox.detach_secret", level = "debug", skip_all, fields(sandbox_id = self.id()))]
    pub async fn detach_secret(&self, env_key: &str) -> Result<()> {
        self.ensure_live()?;
        if env_key.is_empty() {
            return Err(Error::invalid("env_key must not be empty"));
        }
        let api = &self.inner.api;
        let req = api.control(
            Method::DELETE,
            &self.path(&format!("/secrets/{}", seg(env_key))),
        );
        api.send(&req).await.map(drop)
    }

    /// One page of the sandbox's network log, newest first. Does not resume the sandbox.
    #[tracing::instrument(name = "sandbox.get_network_log", level = "debug", skip_all, fields(sandbox_id = self.id()))]
    pub async fn get_network_log(&self, opts: NetworkLogOptions) -> Result<NetworkLogPage> {
        self.ensure_live()?;
        let api = &self.inner.api;
        let query = opts.to_query();
        let path = if query.is_empty() {
            self.path("/network")
        } else {
            self.path(&format!("/network?{query}"))
        };
        let resp = api.send(&api.control(Method::GET, &path)).await?;
        resp.json("GET /sandboxes/{id}/network")
    }
}

/// A sandbox that is killed when this guard is dropped. Made by [`Sandbox::kill_on_drop`];
/// derefs to the [`Sandbox`].
#[derive(Debug)]
pub struct KillOnDrop {
    pub(crate) sandbox: Sandbox,
    pub(crate) armed: bool,
}

impl std::ops::Deref for KillOnDrop {
    type Target = Sandbox;
    fn deref(&self) -> &Sandbox {
        &self.sandbox
    }
}

#[dual]
impl KillOnDrop {
    /// Disarms the guard and returns the handle; the sandbox keeps running.
    pub fn into_inner(mut self) -> Sandbox {
        self.armed = false;
        self.sandbox.clone()
    }

    /// Kills the sandbox now and returns the outcome (the guard is disarmed either way).
    pub async fn kill(mut self) -> Result<()> {
        self.armed = false;
        self.sandbox.kill().await
    }
}

/// Whether a data-plane failure is cured by re-activating (protocol §5.2).
fn resumable(e: &Error, hinted: bool) -> bool {
    match e {
        Error::NotFound(a) => a.code.as_deref() == Some("sandbox_route_stale"),
        Error::Authentication(_) => true,
        Error::Server(a) => {
            a.status == 503 && (!hinted || a.code.as_deref() == Some("sandbox_unavailable"))
        }
        _ => false,
    }
}

/// Builds one data-plane request from the current credentials.
pub(crate) type BuildReq<'a> = &'a (dyn Fn(&Tokens) -> Req + Send + Sync);

#[dual]
impl Sandbox {
    /// Commands inside the sandbox.
    pub fn commands(&self) -> Commands {
        Commands::new(self.clone())
    }

    /// Files inside the sandbox.
    pub fn files(&self) -> Files {
        Files::new(self.clone())
    }

    /// A data-plane request carrying the access token and routing headers.
    pub(crate) fn dp_req(
        &self,
        tokens: &Tokens,
        method: Method,
        path: &str,
        timeout: Duration,
    ) -> Req {
        let config = &self.inner.api.config;
        let (base, needs_id) = config.data_plane(&self.inner.info.id);
        let mut req =
            Req::new(method, &base, path, timeout).header_str(X_ACCESS_TOKEN, &tokens.access_token);
        req.data_plane = true;
        if needs_id {
            req = req.header_str(X_SANDBOX_ID, &self.inner.info.id);
        }
        if let Some(hint) = &tokens.routing_hint {
            req = req.header_str(X_ROUTING_HINT, hint);
        }
        req
    }

    /// Refreshes the credentials first if the routing hint has expired. Fails with
    /// [`Error::SandboxDeleted`] after [`kill`](Self::kill).
    pub(crate) async fn fresh_tokens(&self) -> Result<Tokens> {
        self.ensure_live()?;
        let tokens = self.tokens();
        if tokens.hint_expired() {
            self.refresh(tokens.revision).await?;
            return Ok(self.tokens());
        }
        Ok(tokens)
    }

    /// Sends a buffered data-plane request; on a resumable failure re-activates once and
    /// retries once.
    pub(crate) async fn dp_send(&self, build: BuildReq<'_>) -> Result<Resp> {
        self.dp_send_capped(build, super::client::MAX_JSON_BYTES)
            .await
    }

    /// [`dp_send`](Self::dp_send) with another cap on the answer's size.
    pub(crate) async fn dp_send_capped(&self, build: BuildReq<'_>, cap: u64) -> Result<Resp> {
        let tokens = self.fresh_tokens().await?;
        let hinted = tokens.routing_hint.is_some();
        match self.inner.api.send_capped(&build(&tokens), cap).await {
            Err(e) if resumable(&e, hinted) => {
                tracing::info!(sandbox_id = self.id(), error = %e, "superserve: re-activating the sandbox and retrying once");
                self.refresh(tokens.revision).await?;
                self.inner
                    .api
                    .send_capped(&build(&self.tokens()), cap)
                    .await
            }
            other => other,
        }
    }

    /// Opens a streamed data-plane response, with the same re-activate-once rule.
    pub(crate) async fn dp_stream(
        &self,
        build: BuildReq<'_>,
        idle: Duration,
    ) -> Result<rt::StreamResponse> {
        let tokens = self.fresh_tokens().await?;
        let hinted = tokens.routing_hint.is_some();
        match self
            .inner
            .api
            .open_stream(&build(&tokens), None, idle)
            .await
        {
            Err(e) if resumable(&e, hinted) => {
                tracing::info!(sandbox_id = self.id(), error = %e, "superserve: re-activating the sandbox and retrying once");
                self.refresh(tokens.revision).await?;
                self.inner
                    .api
                    .open_stream(&build(&self.tokens()), None, idle)
                    .await
            }
            other => other,
        }
    }

    /// Streams an upload body. The body cannot be replayed, so the credentials are checked
    /// first with a cheap request (which re-activates when needed).
    pub(crate) async fn dp_upload(
        &self,
        build: BuildReq<'_>,
        upload: rt::Upload,
        idle: Duration,
    ) -> Result<rt::StreamResponse> {
        let probe = |t: &Tokens| {
            self.dp_req(
                t,
                Method::GET,
                "/files?path=%2F.superserve-token-check",
                Duration::from_secs(30),
            )
        };
        // Any answer other than a resumable failure means the credentials work; a failed
        // re-activate is returned as it is (sending the stream would only meet the pause).
        let tokens = self.fresh_tokens().await?;
        if let Err(e) = self.inner.api.send(&probe(&tokens)).await {
            if resumable(&e, tokens.routing_hint.is_some()) {
                self.refresh(tokens.revision).await?;
                match self.inner.api.send(&probe(&self.tokens())).await {
                    Err(e) if resumable(&e, false) => return Err(e),
                    _ => {}
                }
            }
        }
        let tokens = self.tokens();
        self.inner
            .api
            .open_stream(&build(&tokens), Some(upload), idle)
            .await
    }
}
