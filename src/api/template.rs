//! Templates, builds and build logs (protocol §3.6).

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use reqwest::Method;

use super::flavor::BuildLogEvents;
use super::{dual, rt, Api};
use crate::config::Config;
use crate::error::{ApiError, Error, Result, TimeoutKind};
use crate::models::{
    BuildLogEvent, TemplateBuildInfo, TemplateBuildStatus, TemplateInfo, TemplateStatus,
};
use crate::options::{TemplateOptions, TemplateRef, TemplateWaitOptions};
use crate::wire::seg;
use crate::wire::sse::SseDecoder;

/// Idle limit of the build-log stream (the server sends queue notices every 2 s).
const LOG_IDLE: Duration = Duration::from_secs(300);

/// A custom environment: an image plus build steps, built once, booted by sandboxes
/// (`CreateOptions::from_template`). Made by [`Template::create`] or [`Template::connect`].
///
/// Cheap to clone; clones share the handle's current build (set by `create` and
/// [`rebuild`](Self::rebuild)), which [`wait_until_ready`](Self::wait_until_ready) and
/// [`stream_build_logs`](Self::stream_build_logs) follow. The other fields are a snapshot
/// taken when the handle was made; [`get_info`](Self::get_info) fetches fresh ones.
///
/// ```no_run
/// # #[cfg(feature = "blocking")]
/// # fn demo() -> superserve::Result<()> {
/// use superserve::{BuildStep, CreateOptions, Sandbox, Template, TemplateOptions, TemplateWaitOptions};
/// let t = Template::create(
///     TemplateOptions::new("py-app")
///         .from_image("python:3.11")
///         .step(BuildStep::run("pip install requests")),
/// )?;
/// t.wait_until_ready(TemplateWaitOptions::new().on_log(|e| println!("{}", e.text)))?;
/// let sb = Sandbox::create(CreateOptions::new("app").from_template(&t))?;
/// # let _ = sb; Ok(()) }
/// ```
#[derive(Clone)]
pub struct Template {
    api: Api,
    info: TemplateInfo,
    build: Arc<RwLock<Option<String>>>,
}

impl fmt::Debug for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Template")
            .field("id", &self.info.id)
            .field("name", &self.info.name)
            .field("status", &self.info.status)
            .field("build", &self.current_build())
            .finish_non_exhaustive()
    }
}

impl From<&Template> for TemplateRef {
    fn from(t: &Template) -> Self {
        let name = &t.info.name;
        TemplateRef(if name.is_empty() {
            t.info.id.clone()
        } else {
            name.clone()
        })
    }
}

fn require(name_or_id: &str) -> Result<()> {
    if name_or_id.trim().is_empty() {
        return Err(Error::invalid("template name or id must not be empty"));
    }
    Ok(())
}

/// `"<code>: <detail>"` → (code, detail); anything else is `build_failed`.
pub(crate) fn parse_build_error(message: Option<&str>) -> (String, String) {
    let Some(msg) = message.filter(|m| !m.is_empty()) else {
        return ("build_failed".into(), "Template build failed".into());
    };
    if let Some((code, detail)) = msg.split_once(':') {
        let detail = detail.trim();
        if !code.is_empty()
            && code.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            && !detail.is_empty()
        {
            return (code.to_owned(), detail.to_owned());
        }
    }
    ("build_failed".into(), msg.to_owned())
}

/// Pulls the events of one build's log stream (shared by both flavours' `BuildLogEvents`).
pub(crate) struct BuildLogs {
    resp: Option<rt::StreamResponse>,
    decoder: SseDecoder,
    raw: Vec<serde_json::Value>,
    queue: VecDeque<Result<BuildLogEvent>>,
}

#[dual]
impl BuildLogs {
    /// The next event; `None` after the build's last event or the end of the stream.
    pub(crate) async fn next(&mut self) -> Option<Result<BuildLogEvent>> {
        loop {
            if let Some(item) = self.queue.pop_front() {
                if matches!(&item, Ok(e) if e.finished == Some(true)) || item.is_err() {
                    self.resp = None;
                    self.queue.clear();
                }
                return Some(item);
            }
            let resp = self.resp.as_mut()?;
            match resp.next_chunk().await {
                Ok(chunk) => {
                    match &chunk {
                        Some(c) => self.decoder.feed(c, &mut self.raw),
                        None => {
                            self.decoder.finish(&mut self.raw);
                            self.resp = None;
                        }
                    }
                    for v in self.raw.drain(..) {
                        self.queue.push_back(
                            serde_json::from_value::<BuildLogEvent>(v.clone()).map_err(|e| {
                                Error::decode(
                                    format!("build log event: {e}"),
                                    v.to_string().as_bytes(),
                                )
                            }),
                        );
                    }
                }
                Err(e) => {
                    self.resp = None;
                    return Some(Err(e));
                }
            }
        }
    }
}

#[dual]
impl Template {
    fn from_info(api: Api, info: TemplateInfo) -> Template {
        let build = Arc::new(RwLock::new(info.latest_build_id.clone()));
        Template { api, info, build }
    }

    /// Creates a template and queues its first build, with the configuration from the
    /// environment. Returns at once; [`wait_until_ready`](Self::wait_until_ready) follows the
    /// build.
    pub async fn create(opts: TemplateOptions) -> Result<Template> {
        Self::create_with_config(&Config::from_env()?, opts).await
    }

    /// [`create`](Self::create) with an explicit configuration.
    #[tracing::instrument(name = "template.create", level = "debug", skip_all)]
    pub async fn create_with_config(config: &Config, opts: TemplateOptions) -> Result<Template> {
        let body = opts.to_body()?;
        let api = Api::new(config.clone());
        let resp = api
            .send(&api.control(Method::POST, "/templates").json(&body))
            .await?;
        let info: TemplateInfo = resp.json("POST /templates")?;
        if info.latest_build_id.is_none() {
            return Err(Error::decode(
                "POST /templates: missing build_id",
                &resp.body,
            ));
        }
        Ok(Self::from_info(api, info))
    }

    /// A handle to an existing template, by name or id.
    pub async fn connect(name_or_id: &str) -> Result<Template> {
        Self::connect_with_config(&Config::from_env()?, name_or_id).await
    }

    /// [`connect`](Self::connect) with an explicit configuration.
    #[tracing::instrument(name = "template.connect", level = "debug", skip_all, fields(template = name_or_id))]
    pub async fn connect_with_config(config: &Config, name_or_id: &str) -> Result<Template> {
        require(name_or_id)?;
        let api = Api::new(config.clone());
        let info = Self::fetch(&api, name_or_id).await?;
        Ok(Self::from_info(api, info))
    }

    /// The team's templates and the built-in `superserve/*` ones, optionally only those whose
    /// name starts with `name_prefix`.
    pub async fn list(name_prefix: Option<&str>) -> Result<Vec<TemplateInfo>> {
        Self::list_with_config(&Config::from_env()?, name_prefix).await
    }

    /// [`list`](Self::list) with an explicit configuration.
    #[tracing::instrument(name = "template.list", level = "debug", skip_all)]
    pub async fn list_with_config(
        config: &Config,
        name_prefix: Option<&str>,
    ) -> Result<Vec<TemplateInfo>> {
        let api = Api::new(config.clone());
        let path = match name_prefix.filter(|p| !p.is_empty()) {
            Some(p) => format!(
                "/templates?{}",
                url::form_urlencoded::Serializer::new(String::new())
                    .append_pair("name_prefix", p)
                    .finish()
            ),
            None => "/templates".to_owned(),
        };
        api.send(&api.control(Method::GET, &path))
            .await?
            .json("GET /templates")
    }

    /// Deletes a template by name or id. Idempotent: an unknown one is not an error. Fails
    /// with [`Error::Conflict`] while sandboxes use it or a build runs.
    pub async fn delete_by_id(name_or_id: &str) -> Result<()> {
        Self::delete_by_id_with_config(&Config::from_env()?, name_or_id).await
    }

    /// [`delete_by_id`](Self::delete_by_id) with an explicit configuration.
    #[tracing::instrument(name = "template.delete_by_id", level = "debug", skip_all, fields(template = name_or_id))]
    pub async fn delete_by_id_with_config(config: &Config, name_or_id: &str) -> Result<()> {
        require(name_or_id)?;
        Self::delete_raw(&Api::new(config.clone()), name_or_id).await
    }

    async fn fetch(api: &Api, name_or_id: &str) -> Result<TemplateInfo> {
        let path = format!("/templates/{}", seg(name_or_id));
        api.send(&api.control(Method::GET, &path))
            .await?
            .json("GET /templates/{name_or_id}")
    }

    async fn delete_raw(api: &Api, name_or_id: &str) -> Result<()> {
        let req = api.control(Method::DELETE, &format!("/templates/{}", seg(name_or_id)));
        match api.send(&req).await {
            Ok(_) | Err(Error::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn path(&self, tail: &str) -> String {
        format!("/templates/{}{tail}", seg(&self.info.id))
    }

    /// The template id.
    pub fn id(&self) -> &str {
        &self.info.id
    }

    /// The template name.
    pub fn name(&self) -> &str {
        &self.info.name
    }

    /// The status when the handle was made.
    pub fn status(&self) -> &TemplateStatus {
        &self.info.status
    }

    /// vCPUs of its sandboxes.
    pub fn vcpu(&self) -> u32 {
        self.info.vcpu
    }

    /// Memory of its sandboxes, MiB.
    pub fn memory_mib(&self) -> u64 {
        self.info.memory_mib
    }

    /// Disk of its sandboxes, MiB.
    pub fn disk_mib(&self) -> u64 {
        self.info.disk_mib
    }

    /// Size of the built image, when known.
    pub fn size_bytes(&self) -> Option<u64> {
        self.info.size_bytes
    }

    /// Why the last build failed, when it did.
    pub fn error_message(&self) -> Option<&str> {
        self.info.error_message.as_deref()
    }

    /// Creation time.
    pub fn created_at(&self) -> &crate::models::Timestamp {
        &self.info.created_at
    }

    /// When its latest successful build finished.
    pub fn built_at(&self) -> Option<&crate::models::Timestamp> {
        self.info.built_at.as_ref()
    }

    /// The build the handle follows: the one `create` or the latest `rebuild` started, else
    /// the latest the server reported.
    pub fn latest_build_id(&self) -> Option<String> {
        self.current_build()
    }

    /// Everything known when the handle was made.
    pub fn info(&self) -> &TemplateInfo {
        &self.info
    }

    fn current_build(&self) -> Option<String> {
        self.build.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Fetches fresh information.
    #[tracing::instrument(name = "template.get_info", level = "debug", skip_all, fields(template_id = self.id()))]
    pub async fn get_info(&self) -> Result<TemplateInfo> {
        Self::fetch(&self.api, &self.info.id).await
    }

    /// Deletes the template. Idempotent; fails with [`Error::Conflict`] while sandboxes use
    /// it or a build runs.
    #[tracing::instrument(name = "template.delete", level = "debug", skip_all, fields(template_id = self.id()))]
    pub async fn delete(&self) -> Result<()> {
        Self::delete_raw(&self.api, &self.info.id).await
    }

    /// Queues a build of the template's spec. Idempotent on the spec: while a build of the
    /// same spec runs (or once it is done), that build is returned. The handle follows the
    /// returned build from now on.
    #[tracing::instrument(name = "template.rebuild", level = "debug", skip_all, fields(template_id = self.id()))]
    pub async fn rebuild(&self) -> Result<TemplateBuildInfo> {
        let req = self.api.control(Method::POST, &self.path("/builds"));
        let build: TemplateBuildInfo = self
            .api
            .send(&req)
            .await?
            .json("POST /templates/{id}/builds")?;
        *self.build.write().unwrap_or_else(|p| p.into_inner()) = Some(build.id.clone());
        Ok(build)
    }

    /// Recent builds, newest first (at most `limit`; the server's default is 20).
    #[tracing::instrument(name = "template.list_builds", level = "debug", skip_all, fields(template_id = self.id()))]
    pub async fn list_builds(&self, limit: Option<u32>) -> Result<Vec<TemplateBuildInfo>> {
        let path = match limit {
            Some(l) => self.path(&format!("/builds?limit={l}")),
            None => self.path("/builds"),
        };
        self.api
            .send(&self.api.control(Method::GET, &path))
            .await?
            .json("GET /templates/{id}/builds")
    }

    /// One build.
    #[tracing::instrument(name = "template.get_build", level = "debug", skip_all, fields(template_id = self.id()))]
    pub async fn get_build(&self, build_id: &str) -> Result<TemplateBuildInfo> {
        require(build_id)?;
        let path = self.path(&format!("/builds/{}", seg(build_id)));
        self.api
            .send(&self.api.control(Method::GET, &path))
            .await?
            .json("GET /templates/{id}/builds/{build_id}")
    }

    /// Cancels a build. Idempotent: a finished or unknown build is not an error.
    #[tracing::instrument(name = "template.cancel_build", level = "debug", skip_all, fields(template_id = self.id()))]
    pub async fn cancel_build(&self, build_id: &str) -> Result<()> {
        require(build_id)?;
        let path = self.path(&format!("/builds/{}", seg(build_id)));
        match self
            .api
            .send(&self.api.control(Method::DELETE, &path))
            .await
        {
            Ok(_) | Err(Error::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The build to follow: `build_id`, else the handle's, else the newest on the server.
    async fn resolve_build(&self, build_id: Option<&str>) -> Result<String> {
        if let Some(b) = build_id {
            require(b)?;
            return Ok(b.to_owned());
        }
        if let Some(b) = self.current_build() {
            return Ok(b);
        }
        match self.list_builds(Some(1)).await?.into_iter().next() {
            Some(b) => Ok(b.id),
            None => Err(Error::invalid(format!(
                "template {} has no builds: call rebuild() first",
                self.info.name
            ))),
        }
    }

    /// Opens a build's log stream (replayed from the start, then live, closed after the
    /// build's last event).
    pub(crate) async fn open_logs(&self, build_id: Option<&str>) -> Result<BuildLogs> {
        let bid = self.resolve_build(build_id).await?;
        let path = self.path(&format!("/builds/{}/logs", seg(&bid)));
        let req = self.api.control(Method::GET, &path);
        let resp = self.api.open_stream(&req, None, LOG_IDLE).await?;
        Ok(BuildLogs {
            resp: Some(resp),
            decoder: SseDecoder::default(),
            raw: Vec::new(),
            queue: VecDeque::new(),
        })
    }

    /// A build's log as an iterator (blocking) or a `Stream` (async) of [`BuildLogEvent`]s:
    /// the handle's build unless `build_id` says which, replayed from the start, then live,
    /// ending after the build's last event.
    ///
    /// ```no_run
    /// # #[cfg(feature = "blocking")]
    /// # fn demo(t: &superserve::Template) -> superserve::Result<()> {
    /// for event in t.build_log_events(None)? {
    ///     let event = event?;
    ///     println!("[{}] {}", event.stream, event.text);
    /// }
    /// # Ok(()) }
    /// ```
    #[tracing::instrument(name = "template.build_log_events", level = "debug", skip_all, fields(template_id = self.id()))]
    pub async fn build_log_events(&self, build_id: Option<&str>) -> Result<BuildLogEvents> {
        Ok(BuildLogEvents::new(self.open_logs(build_id).await?))
    }

    /// Streams a build's log to `on_event` (the handle's build unless `build_id` says which):
    /// replayed from the start, then live; returns after the build's last event.
    #[tracing::instrument(name = "template.stream_build_logs", level = "debug", skip_all, fields(template_id = self.id()))]
    pub async fn stream_build_logs(
        &self,
        build_id: Option<&str>,
        mut on_event: impl FnMut(BuildLogEvent) + Send,
    ) -> Result<()> {
        let mut logs = self.open_logs(build_id).await?;
        while let Some(ev) = logs.next().await {
            on_event(ev?);
        }
        Ok(())
    }

    /// Waits for the handle's build to end and returns the template's fresh info. Fails with
    /// [`Error::Build`] (code, message, build id and template id) when it failed,
    /// [`Error::Conflict`] with code `cancelled` when it was cancelled, and a
    /// [`TimeoutKind::Operation`] timeout after the options' timeout (none by default). The
    /// build's status is the source of truth; the log (for `on_log`) is read first and its
    /// failures do not fail the wait.
    #[tracing::instrument(name = "template.wait_until_ready", level = "debug", skip_all, fields(template_id = self.id()))]
    pub async fn wait_until_ready(&self, opts: TemplateWaitOptions) -> Result<TemplateInfo> {
        let deadline = opts.timeout.map(|t| Instant::now() + t);
        let timed_out = || {
            Error::timeout(
                TimeoutKind::Operation,
                format!(
                    "template {} is not ready after {:?}",
                    self.info.name,
                    opts.timeout.unwrap_or_default()
                ),
            )
        };
        let bid = match self.resolve_build(None).await {
            Ok(b) => Some(b),
            Err(Error::InvalidInput { .. }) => None,
            Err(e) => return Err(e),
        };
        if let (Some(b), Some(cb)) = (&bid, &opts.on_log) {
            if let Ok(mut logs) = self.open_logs(Some(b)).await {
                while let Some(ev) = logs.next().await {
                    match ev {
                        Ok(e) => cb.call(&e),
                        Err(_) => break,
                    }
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        return Err(timed_out());
                    }
                }
            }
        }
        loop {
            match &bid {
                Some(b) => {
                    let build = self.get_build(b).await?;
                    match build.status {
                        TemplateBuildStatus::Ready => return self.get_info().await,
                        TemplateBuildStatus::Failed => {
                            let (code, message) = parse_build_error(build.error_message.as_deref());
                            return Err(Error::Build {
                                code,
                                message,
                                build_id: Some(b.clone()),
                                template_id: Some(self.info.id.clone()),
                            });
                        }
                        TemplateBuildStatus::Cancelled => {
                            return Err(Error::Conflict(ApiError::new(
                                409,
                                Some("cancelled"),
                                "template build was cancelled",
                            )))
                        }
                        _ => {}
                    }
                }
                None => {
                    let info = self.get_info().await?;
                    match info.status {
                        TemplateStatus::Ready => return Ok(info),
                        TemplateStatus::Failed => {
                            let (code, message) = parse_build_error(info.error_message.as_deref());
                            return Err(Error::Build {
                                code,
                                message,
                                build_id: None,
                                template_id: Some(self.info.id.clone()),
                            });
                        }
                        _ => {}
                    }
                }
            }
            if deadline.is_some_and(|d| Instant::now() + opts.poll_interval >= d) {
                return Err(timed_out());
            }
            rt::sleep(opts.poll_interval).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_build_error;

    #[test]
    fn build_error_codes() {
        assert_eq!(
            parse_build_error(Some("step_failed: step 2 (run) exited with 1")),
            ("step_failed".into(), "step 2 (run) exited with 1".into())
        );
        assert_eq!(
            parse_build_error(Some("something odd happened")),
            ("build_failed".into(), "something odd happened".into())
        );
        assert_eq!(
            parse_build_error(Some("image_pull_failed:   ")),
            ("build_failed".into(), "image_pull_failed:   ".into())
        );
        assert_eq!(
            parse_build_error(None),
            ("build_failed".into(), "Template build failed".into())
        );
    }
}
