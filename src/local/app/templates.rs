//! Templates: the endpoints (create, list, get, delete, rebuild, builds, cancel) and the
//! build itself (resolve `from`, run the steps in a build sandbox, capture its disk).

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use serde_json::Value;

use super::super::error::ApiError;
use super::super::exec::{Event, Running};
use super::super::ident::uuid_v4;
use super::super::idmap;
use super::super::layers::pool;
use super::super::model::{Base, Boot, Stack};
use super::super::oci;
use super::super::runtime::{
    CommandSpec, Runtime, SandboxDirs, SandboxSpec, SANDBOX_HOME, SANDBOX_PATH,
};
use super::super::templates::build::{as_user, BuildCtl, BuildPolicy};
use super::super::templates::{
    self as tpl, BuildRow, BuildSpec, BuildStatus, CreateBody, Resources, Step, TemplateRow,
};
use super::super::time::now_ns;
use super::App;

/// Builds in flight at once (pending ones included) before `429 too_many_builds`.
const MAX_BUILDS_IN_FLIGHT: usize = 8;
/// Templates a team may have before `429 too_many_templates`.
const MAX_TEMPLATES: usize = 100;
/// Longest a step may run.
const STEP_TIMEOUT: Duration = Duration::from_secs(3600);

impl ApiError {
    fn template_not_found() -> ApiError {
        ApiError::not_found("template not found")
    }

    fn too_many(code: &str, message: &str) -> ApiError {
        ApiError::new(StatusCode::TOO_MANY_REQUESTS, code, message)
    }
}

/// What a template resolves to for a sandbox or a build: its stack, its boot config, its
/// resources and id.
#[derive(Clone, Debug)]
pub(crate) struct Resolved {
    pub id: String,
    pub stack: Stack,
    pub boot: Boot,
    pub res: Option<Resources>,
}

impl App {
    /// `POST /templates`: 202 with the template and its first build's id.
    pub(crate) async fn create_template(
        self: &Arc<Self>,
        body: CreateBody,
    ) -> Result<Value, ApiError> {
        let (name, res, spec) = body.validate().map_err(ApiError::bad_request)?;
        if tpl::builtin(&name).is_some() {
            return Err(ApiError::conflict(format!("template {name:?} exists")));
        }
        let t = TemplateRow {
            id: uuid_v4(),
            name: name.clone(),
            res,
            spec: spec.clone(),
            boot: Boot::default(),
            stack: None,
            size_bytes: None,
            created_ns: now_ns(),
            built_ns: None,
            latest_build_id: None,
        };
        let b = new_build(&t.id, &spec, res);
        let (t2, b2) = (t.clone(), b.clone());
        let outcome = self
            .db
            .call(move |c| {
                let tx = c.unchecked_transaction()?;
                if tpl::get_template(&tx, &t2.name)?.is_some() {
                    return Ok(Err(ApiError::conflict(format!(
                        "template {:?} exists",
                        t2.name
                    ))));
                }
                if tpl::list_templates(&tx)?.len() >= MAX_TEMPLATES {
                    return Ok(Err(ApiError::too_many(
                        "too_many_templates",
                        "the team has as many templates as it may have; delete one first",
                    )));
                }
                if tpl::count_in_flight(&tx)? >= MAX_BUILDS_IN_FLIGHT {
                    return Ok(Err(too_many_builds()));
                }
                tpl::insert_template(&tx, &t2)?;
                tpl::insert_build(&tx, &b2)?;
                tx.commit()?;
                Ok(Ok(()))
            })
            .await?;
        outcome?;
        self.start_build(&t, &b);
        let mut v = t.view(Some(&b));
        v["build_id"] = Value::String(b.id.clone());
        v["latest_build_id"] = Value::String(b.id);
        Ok(v)
    }

    /// `GET /templates`: the built-ins and the team's, optionally by name prefix.
    pub(crate) async fn list_templates(
        &self,
        prefix: Option<String>,
    ) -> Result<Vec<Value>, ApiError> {
        let rows = self
            .db
            .call(|c| {
                tpl::list_templates(c)?
                    .into_iter()
                    .map(|t| {
                        let latest = match &t.latest_build_id {
                            Some(b) => tpl::get_build(c, &t.id, b)?,
                            None => None,
                        };
                        Ok((t, latest))
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .await?;
        let keep = |name: &str| prefix.as_deref().is_none_or(|p| name.starts_with(p));
        let mut out: Vec<Value> = tpl::BUILTINS
            .iter()
            .filter(|b| keep(b.name))
            .map(tpl::builtin_view)
            .collect();
        out.extend(
            rows.iter()
                .filter(|(t, _)| keep(&t.name))
                .map(|(t, b)| t.view(b.as_ref())),
        );
        Ok(out)
    }

    async fn template_row(
        &self,
        name_or_id: &str,
    ) -> Result<(TemplateRow, Option<BuildRow>), ApiError> {
        let key = name_or_id.to_owned();
        self.db
            .call(move |c| {
                let Some(t) = tpl::get_template(c, &key)? else {
                    return Ok(None);
                };
                let latest = match &t.latest_build_id {
                    Some(b) => tpl::get_build(c, &t.id, b)?,
                    None => None,
                };
                Ok(Some((t, latest)))
            })
            .await?
            .ok_or_else(ApiError::template_not_found)
    }

    /// `GET /templates/{name_or_id}`.
    pub(crate) async fn get_template(&self, name_or_id: &str) -> Result<Value, ApiError> {
        if let Some(b) = tpl::builtin(name_or_id) {
            return Ok(tpl::builtin_view(b));
        }
        let (t, latest) = self.template_row(name_or_id).await?;
        Ok(t.view(latest.as_ref()))
    }

    /// `DELETE /templates/{name_or_id}`: 409 while a sandbox uses it or a build runs.
    pub(crate) async fn delete_template(&self, name_or_id: &str) -> Result<(), ApiError> {
        if tpl::builtin(name_or_id).is_some() {
            return Err(ApiError::conflict("built-in templates cannot be deleted"));
        }
        let (t, latest) = self.template_row(name_or_id).await?;
        if latest.as_ref().is_some_and(|b| !b.status.is_terminal()) {
            return Err(ApiError::conflict(
                "a build of the template is in progress; cancel it first",
            ));
        }
        let users: Vec<String> = self
            .all()
            .iter()
            .filter(|e| e.with(|r| r.template == t.id))
            .map(|e| e.id.clone())
            .collect();
        if !users.is_empty() {
            return Err(ApiError::conflict(format!(
                "template {} is used by {} sandbox(es) ({}); delete them first",
                t.name,
                users.len(),
                users.join(", ")
            )));
        }
        let id = t.id.clone();
        self.db.call(move |c| tpl::delete_template(c, &id)).await?;
        self.host.layers.gc().await?;
        Ok(())
    }

    /// `POST /templates/{id}/builds`: the in-flight or ready build of the same spec (200),
    /// else a new build (201).
    pub(crate) async fn rebuild(
        self: &Arc<Self>,
        name_or_id: &str,
    ) -> Result<(BuildRow, StatusCode), ApiError> {
        if tpl::builtin(name_or_id).is_some() {
            return Err(ApiError::conflict("built-in templates are not rebuilt"));
        }
        let (t, _) = self.template_row(name_or_id).await?;
        let hash = tpl::spec_hash(&t.spec, t.res);
        let b = new_build(&t.id, &t.spec, t.res);
        let (tid, b2) = (t.id.clone(), b.clone());
        let existing = self
            .db
            .call(move |c| {
                let tx = c.unchecked_transaction()?;
                let same = tpl::list_builds(&tx, &tid, 100)?.into_iter().find(|x| {
                    x.spec_hash == hash
                        && matches!(
                            x.status,
                            BuildStatus::Pending
                                | BuildStatus::Building
                                | BuildStatus::Snapshotting
                                | BuildStatus::Ready
                        )
                });
                if let Some(x) = same {
                    return Ok(Ok(Some(x)));
                }
                if tpl::count_in_flight(&tx)? >= MAX_BUILDS_IN_FLIGHT {
                    return Ok(Err(too_many_builds()));
                }
                tpl::insert_build(&tx, &b2)?;
                tx.commit()?;
                Ok(Ok(None))
            })
            .await??;
        if let Some(x) = existing {
            return Ok((x, StatusCode::OK));
        }
        self.start_build(&t, &b);
        Ok((b, StatusCode::CREATED))
    }

    /// `GET /templates/{id}/builds`.
    pub(crate) async fn list_builds(
        &self,
        name_or_id: &str,
        limit: usize,
    ) -> Result<Vec<BuildRow>, ApiError> {
        if tpl::builtin(name_or_id).is_some() {
            return Ok(Vec::new());
        }
        let (t, _) = self.template_row(name_or_id).await?;
        let limit = limit.clamp(1, 100);
        Ok(self
            .db
            .call(move |c| tpl::list_builds(c, &t.id, limit))
            .await?)
    }

    /// `GET /templates/{id}/builds/{bid}`.
    pub(crate) async fn get_build(
        &self,
        name_or_id: &str,
        bid: &str,
    ) -> Result<BuildRow, ApiError> {
        let (t, _) = self.template_row(name_or_id).await?;
        let bid = bid.to_owned();
        self.db
            .call(move |c| tpl::get_build(c, &t.id, &bid))
            .await?
            .ok_or_else(|| ApiError::not_found("build not found"))
    }

    /// `DELETE /templates/{id}/builds/{bid}`: cancels (a no-op once it has ended).
    pub(crate) async fn cancel_build(&self, name_or_id: &str, bid: &str) -> Result<(), ApiError> {
        let b = self.get_build(name_or_id, bid).await?;
        if b.status.is_terminal() {
            return Ok(());
        }
        if let Some(ctl) = self.build_ctl(&b.id) {
            ctl.cancel();
        }
        // a pending build that has not started yet ends here; a running one ends itself
        let id = b.id.clone();
        let now = now_ns();
        self.db
            .call(move |c| {
                let cur = tpl::get_build(c, &b.template_id, &id)?;
                if cur.is_some_and(|x| x.status == BuildStatus::Pending) {
                    tpl::finish_build(c, &id, BuildStatus::Cancelled, None, now)?;
                    tpl::append_log(c, &id, now, "system", "build cancelled")?;
                }
                Ok(())
            })
            .await?;
        Ok(())
    }

    /// The build's log lines after `after`, and its current status.
    pub(crate) async fn build_logs(
        &self,
        template_id: &str,
        bid: &str,
        after: i64,
    ) -> Result<(Vec<tpl::LogLine>, BuildRow), ApiError> {
        let (tid, bid) = (template_id.to_owned(), bid.to_owned());
        self.db
            .call(move |c| {
                let Some(b) = tpl::get_build(c, &tid, &bid)? else {
                    return Ok(None);
                };
                Ok(Some((tpl::logs_after(c, &bid, after)?, b)))
            })
            .await?
            .ok_or_else(|| ApiError::not_found("build not found"))
    }

    /// The template id behind a name or id (404 if unknown).
    pub(crate) async fn template_id(&self, name_or_id: &str) -> Result<String, ApiError> {
        Ok(self.template_row(name_or_id).await?.0.id)
    }

    /// What `from_template` (or a build's `from`) resolves to: a built-in or a ready team
    /// template.
    pub(crate) async fn resolve_template(
        &self,
        name_or_id: &str,
    ) -> Result<Option<Resolved>, ApiError> {
        if let Some(b) = tpl::builtin(name_or_id) {
            return Ok(Some(Resolved {
                id: b.name.to_owned(),
                stack: Stack::default(),
                boot: (b.boot)(),
                res: None,
            }));
        }
        let key = name_or_id.to_owned();
        let Some(t) = self.db.call(move |c| tpl::get_template(c, &key)).await? else {
            return Ok(None);
        };
        let Some(stack) = t.stack.clone() else {
            return Err(ApiError::conflict(format!(
                "template {} is not ready (no successful build yet)",
                t.name
            )));
        };
        Ok(Some(Resolved {
            id: t.id,
            stack,
            boot: t.boot,
            res: Some(t.res),
        }))
    }

    fn build_ctl(&self, bid: &str) -> Option<Arc<BuildCtl>> {
        super::super::fault::lock(&self.builds).get(bid).cloned()
    }

    fn start_build(self: &Arc<Self>, t: &TemplateRow, b: &BuildRow) {
        let ctl = Arc::new(BuildCtl::default());
        super::super::fault::lock(&self.builds).insert(b.id.clone(), ctl.clone());
        let app = self.clone();
        let (t, b) = (t.clone(), b.clone());
        tokio::spawn(async move {
            app.run_build(&t, &b, &ctl).await;
            super::super::fault::lock(&app.builds).remove(&b.id);
        });
    }

    async fn log(&self, bid: &str, stream: &'static str, text: String) {
        let bid = bid.to_owned();
        let _ = self
            .db
            .call(move |c| tpl::append_log(c, &bid, now_ns(), stream, &text))
            .await;
    }

    async fn set_status(&self, bid: &str, s: BuildStatus) {
        let id = bid.to_owned();
        let _ = self
            .db
            .call(move |c| tpl::set_build_status(c, &id, s, now_ns()))
            .await;
        self.log(bid, "system", format!("status: {}", s.as_str()))
            .await;
    }

    /// Ends the build; `false` if it had ended (cancelled while pending).
    async fn end_build(&self, bid: &str, s: BuildStatus, error: Option<String>) -> bool {
        if self.stopping.load(std::sync::atomic::Ordering::SeqCst) {
            // the next start marks it failed (interrupted)
            return false;
        }
        let bid2 = bid.to_owned();
        let err = error.clone();
        let ended = self
            .db
            .call(move |c| tpl::finish_build(c, &bid2, s, err.as_deref(), now_ns()))
            .await
            .unwrap_or(false);
        if ended {
            let text = match &error {
                Some(e) => format!("build {}: {e}", s.as_str()),
                None => format!("build {}", s.as_str()),
            };
            self.log(bid, "system", text).await;
        }
        ended
    }

    async fn run_build(self: &Arc<Self>, t: &TemplateRow, b: &BuildRow, ctl: &Arc<BuildCtl>) {
        self.log(
            &b.id,
            "system",
            format!("build queued for template {}", t.name),
        )
        .await;
        let permit = tokio::select! {
            p = self.build_slots.clone().acquire_owned() => p.ok(),
            () = ctl.cancelled() => None,
        };
        if permit.is_none() || ctl.is_cancelled() {
            self.end_build(&b.id, BuildStatus::Cancelled, None).await;
            return;
        }
        self.set_status(&b.id, BuildStatus::Building).await;
        let holder = tpl::build_holder(&b.id);
        let res = self.build_steps(t, b, ctl).await;
        let _ = self.host.layers.release(&holder).await;
        match res {
            Ok(()) => {
                self.end_build(&b.id, BuildStatus::Ready, None).await;
            }
            Err(_) if ctl.is_cancelled() => {
                self.end_build(&b.id, BuildStatus::Cancelled, None).await;
            }
            Err(e) => {
                self.end_build(&b.id, BuildStatus::Failed, Some(e)).await;
            }
        }
        drop(permit);
    }

    /// Resolves `from`, runs the steps, captures the result into the template. The error is
    /// the build's `error_message` (`code: detail`).
    async fn build_steps(
        self: &Arc<Self>,
        t: &TemplateRow,
        b: &BuildRow,
        ctl: &Arc<BuildCtl>,
    ) -> Result<(), String> {
        let spec: &BuildSpec = &t.spec;
        let (stack, mut boot) = self.resolve_from(&spec.from, &b.id).await?;
        self.host
            .layers
            .hold(&tpl::build_holder(&b.id), &stack)
            .await
            .map_err(|e| format!("build_failed: {e}"))?;
        if ctl.is_cancelled() {
            return Err("cancelled".into());
        }
        let sid = format!("build-{}", b.id);
        let slot = {
            let ids = self.host.ids.clone();
            let sid = sid.clone();
            tokio::task::spawn_blocking(move || ids.claim(&sid))
                .await
                .map_err(|e| format!("build_failed: {e}"))?
                .map_err(|e| format!("build_failed: cannot claim an id range: {e}"))?
        };
        self.log(&b.id, "system", "starting the build sandbox".into())
            .await;
        let started = Runtime::start(
            &self.host,
            SandboxSpec {
                id: &sid,
                hostname: "build",
                vcpu: t.res.vcpu,
                memory_mib: t.res.memory_mib,
                disk_mib: t.res.disk_mib,
                id_slot: slot,
                stack: &stack,
                policy: Arc::new(BuildPolicy),
            },
        )
        .await;
        let result = match started {
            Ok(rt) => {
                let r = match self.ensure_workdir(&rt, &boot, &b.id, ctl).await {
                    Ok(()) => self.run_steps(&rt, spec, &mut boot, b, ctl).await,
                    Err(e) => Err(e),
                };
                let r = match r {
                    Ok(()) if ctl.is_cancelled() => Err("cancelled".into()),
                    Ok(()) => {
                        self.set_status(&b.id, BuildStatus::Snapshotting).await;
                        boot.start_cmd = spec.start_cmd.clone();
                        boot.ready_cmd = spec.ready_cmd.clone();
                        self.capture_build(&rt, &sid, slot, &stack, t, &boot).await
                    }
                    Err(e) => Err(e),
                };
                let _ = rt.kill().await;
                drop(rt);
                r
            }
            Err(e) => Err(format!("boot_failed: {e}")),
        };
        let dirs = SandboxDirs::new(&self.host, &sid);
        let cgroup = self.host.cgroups.sandbox(&sid);
        let ids = self.host.ids.clone();
        let _ = tokio::task::spawn_blocking(move || {
            let _ = cgroup.destroy();
            let _ = dirs.remove();
            ids.release(slot, &sid);
        })
        .await;
        result
    }

    /// The stack and boot config `from` gives: a built-in, a ready template, or an image.
    async fn resolve_from(&self, from: &str, bid: &str) -> Result<(Stack, Boot), String> {
        match self.resolve_template(from).await {
            Ok(Some(r)) => {
                self.log(bid, "system", format!("from template {from}"))
                    .await;
                return Ok((r.stack, r.boot));
            }
            Ok(None) => {}
            Err(e) => return Err(format!("bad_reference: {}", e.message)),
        }
        if from.starts_with("superserve/") {
            return Err(format!("bad_reference: no built-in template {from:?}"));
        }
        self.pull_image(from, bid).await
    }

    /// Pulls an OCI image into the layer store: its layers (bottom first in the image, top
    /// first in the stack) with the backend's runtime layer on top, and its configuration.
    async fn pull_image(&self, reference: &str, bid: &str) -> Result<(Stack, Boot), String> {
        let opts = oci::PullOptions {
            mirror: self.tuning.registry_mirror.clone(),
        };
        let dir = self.host.layers.dirs().to_path_buf();
        let lines = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let sink = lines.clone();
        let log = move |l: &str| super::super::fault::lock(&sink).push(l.to_owned());
        let pulled = oci::pull(&opts, reference, &dir, &log).await;
        let collected: Vec<String> = std::mem::take(&mut *super::super::fault::lock(&lines));
        for l in collected {
            self.log(bid, "system", l).await;
        }
        let img = pulled.map_err(|e| {
            let code = match e {
                oci::OciError::BadReference { .. } => "bad_reference",
                oci::OciError::NoPlatform { .. } => "unsupported_platform",
                oci::OciError::UnsafeLayer { .. } => "image_unsafe",
                oci::OciError::TooLarge { .. } => "image_too_large",
                _ => "image_pull_failed",
            };
            format!("{code}: {e}")
        })?;
        let ids: Vec<(String, u64)> = img
            .layers
            .iter()
            .rev()
            .map(|l| (l.digest.clone(), l.size))
            .collect();
        let stack = Stack {
            layers: ids.iter().map(|(d, _)| d.clone()).collect(),
            base: Base::None,
        };
        self.host
            .layers
            .add_dirs(&ids, &tpl::build_holder(bid), &stack)
            .await
            .map_err(|e| format!("image_pull_failed: {e}"))?;
        let mut boot = Boot::default();
        for kv in &img.config.env {
            if let Some((k, v)) = kv.split_once('=') {
                boot.env.insert(k.to_owned(), v.to_owned());
            }
        }
        boot.workdir = img.config.working_dir.clone();
        boot.user = img
            .config
            .user
            .clone()
            .filter(|u| u != "root" && u != "0" && u != "0:0");
        Ok((stack, boot))
    }

    async fn run_steps(
        &self,
        rt: &Arc<Runtime>,
        spec: &BuildSpec,
        boot: &mut Boot,
        b: &BuildRow,
        ctl: &Arc<BuildCtl>,
    ) -> Result<(), String> {
        for (i, step) in spec.steps.iter().enumerate() {
            if ctl.is_cancelled() {
                return Err("cancelled".into());
            }
            let n = i + 1;
            let what = step.describe();
            self.log(
                &b.id,
                "system",
                format!("step {n}/{}: {what}", spec.steps.len()),
            )
            .await;
            let failed = |detail: String| format!("step_failed: step {n} ({what}): {detail}");
            match step {
                Step::Run(cmd) => {
                    let code = self.build_command(rt, boot, cmd, false, &b.id, ctl).await?;
                    if code != 0 {
                        return Err(failed(format!("exited with code {code}")));
                    }
                }
                Step::Env { key, value } => {
                    boot.env.insert(key.clone(), value.clone());
                }
                Step::Workdir(d) => {
                    let code = self
                        .build_command(
                            rt,
                            boot,
                            &format!("mkdir -p '{}'", d.replace('\'', "'\\''")),
                            true,
                            &b.id,
                            ctl,
                        )
                        .await?;
                    if code != 0 {
                        return Err(failed(format!(
                            "cannot create the directory (exit code {code})"
                        )));
                    }
                    boot.workdir = Some(d.clone());
                }
                Step::User { name, sudo } => {
                    let mut cmd = format!(
                        "id -u {name} >/dev/null 2>&1 || useradd -m -U -s /bin/sh {name} \
                         || adduser -D -s /bin/sh {name}"
                    );
                    if *sudo {
                        cmd.push_str(&format!(
                            " && mkdir -p /etc/sudoers.d && echo '{name} ALL=(ALL) NOPASSWD:ALL' \
                             > /etc/sudoers.d/{name} && chmod 0440 /etc/sudoers.d/{name}"
                        ));
                    }
                    let code = self.build_command(rt, boot, &cmd, true, &b.id, ctl).await?;
                    if code != 0 {
                        return Err(failed(format!("cannot create the user (exit code {code})")));
                    }
                    boot.user = Some(name.clone());
                }
            }
        }
        Ok(())
    }

    /// Creates the image's working directory if the image lacks it (as Docker does when a
    /// container starts), so it is in the template.
    async fn ensure_workdir(
        &self,
        rt: &Arc<Runtime>,
        boot: &Boot,
        bid: &str,
        ctl: &Arc<BuildCtl>,
    ) -> Result<(), String> {
        let Some(w) = boot.workdir.as_deref() else {
            return Ok(());
        };
        let at_root = Boot {
            workdir: None,
            ..boot.clone()
        };
        let cmd = format!("mkdir -p '{}'", w.replace('\'', "'\\''"));
        match self
            .build_command(rt, &at_root, &cmd, true, bid, ctl)
            .await?
        {
            0 => Ok(()),
            code => Err(format!(
                "boot_failed: cannot create the image's working directory {w} (exit code {code})"
            )),
        }
    }

    /// Runs one command of a build (as the build's current user unless `as_root`), its
    /// output into the build log; returns its exit code.
    async fn build_command(
        &self,
        rt: &Arc<Runtime>,
        boot: &Boot,
        cmd: &str,
        as_root: bool,
        bid: &str,
        ctl: &Arc<BuildCtl>,
    ) -> Result<i32, String> {
        let spec = boot_command(boot, cmd, "build", !as_root);
        let child = rt
            .spawn(spec)
            .await
            .map_err(|e| format!("step_failed: cannot start the command: {e}"))?;
        let mut running = Running::new(child, Some(STEP_TIMEOUT));
        let mut out = LineBuf::default();
        let mut err = LineBuf::default();
        loop {
            let ev = tokio::select! {
                ev = running.next() => ev,
                () = ctl.cancelled() => {
                    running.kill();
                    return Err("cancelled".into());
                }
            };
            match ev {
                Some(Event::Stdout(b)) => {
                    for l in out.push(&b) {
                        self.log(bid, "stdout", l).await;
                    }
                }
                Some(Event::Stderr(b)) => {
                    for l in err.push(&b) {
                        self.log(bid, "stderr", l).await;
                    }
                }
                Some(Event::TimedOut) => {
                    self.log(bid, "system", "step timed out".into()).await;
                }
                Some(Event::Exit(code)) => {
                    for (l, s) in [(out.rest(), "stdout"), (err.rest(), "stderr")] {
                        if let Some(l) = l {
                            self.log(bid, s, l).await;
                        }
                    }
                    return Ok(code);
                }
                None => return Ok(-1),
            }
        }
    }

    /// Flushes and captures the build sandbox's disk as the template's top layer, and
    /// records the template as built.
    async fn capture_build(
        &self,
        rt: &Arc<Runtime>,
        sid: &str,
        slot: u32,
        stack: &Stack,
        t: &TemplateRow,
        boot: &Boot,
    ) -> Result<(), String> {
        use std::os::fd::AsRawFd;
        rt.set_frozen(true)
            .await
            .map_err(|e| format!("snapshot_failed: cannot freeze the build sandbox: {e}"))?;
        let root = std::path::PathBuf::from(format!("/proc/self/fd/{}", rt.root().as_raw_fd()));
        let disk = SandboxDirs::new(&self.host, sid).disk;
        let store = self.host.layers.clone();
        let holder = tpl::holder(&t.id);
        let captured = tokio::task::block_in_place(|| {
            pool::sync_fs_of(&root).map_err(|e| format!("cannot flush the disk: {e}"))?;
            store
                .capture(&disk, idmap::base(slot), &holder, stack)
                .map_err(|e| e.to_string())
        })
        .map_err(|e| format!("snapshot_failed: {e}"))?;
        let (new_stack, size) = captured;
        let total = self.host.layers.size_of(&new_stack.layers).unwrap_or(size);
        let (id, boot) = (t.id.clone(), boot.clone());
        self.db
            .call(move |c| tpl::set_built(c, &id, &new_stack, &boot, total, now_ns()))
            .await
            .map_err(|e| format!("snapshot_failed: {e}"))?;
        // the template's previous layers go unless something else holds them
        let _ = self.host.layers.gc().await;
        Ok(())
    }
}

fn too_many_builds() -> ApiError {
    ApiError::too_many(
        "too_many_builds",
        "too many template builds are in progress; retry when one has finished",
    )
}

fn new_build(template_id: &str, spec: &BuildSpec, res: Resources) -> BuildRow {
    BuildRow {
        id: uuid_v4(),
        template_id: template_id.to_owned(),
        status: BuildStatus::Pending,
        spec_hash: tpl::spec_hash(spec, res),
        error_message: None,
        created_ns: now_ns(),
        started_ns: None,
        finalized_ns: None,
    }
}

/// A `sh -c cmd` with the template's environment and working directory, as its user when
/// `as_user_too`.
pub(crate) fn boot_command(
    boot: &Boot,
    cmd: &str,
    hostname: &str,
    as_user_too: bool,
) -> CommandSpec {
    let mut env: Vec<(String, String)> = vec![
        ("PATH".into(), SANDBOX_PATH.into()),
        ("HOME".into(), SANDBOX_HOME.into()),
        ("USER".into(), "root".into()),
        ("LOGNAME".into(), "root".into()),
        ("SHELL".into(), "/bin/sh".into()),
        ("LANG".into(), "C.UTF-8".into()),
        ("HOSTNAME".into(), hostname.into()),
    ];
    for (k, v) in &boot.env {
        env.retain(|(key, _)| key != k);
        env.push((k.clone(), v.clone()));
    }
    let user = if as_user_too {
        boot.user.as_deref()
    } else {
        None
    };
    let (program, args) = as_user(
        user,
        "/bin/sh".into(),
        vec!["-c".into(), cmd.into()],
        &mut env,
    );
    CommandSpec {
        program,
        args,
        env,
        cwd: boot.workdir.clone().unwrap_or_else(|| "/".into()),
        stdin: false,
    }
}

/// Splits output into lines for the build log.
#[derive(Default)]
struct LineBuf(Vec<u8>);

impl LineBuf {
    fn push(&mut self, b: &[u8]) -> Vec<String> {
        self.0.extend_from_slice(b);
        let mut out = Vec::new();
        while let Some(i) = self.0.iter().position(|&c| c == b'\n') {
            let line: Vec<u8> = self.0.drain(..=i).collect();
            out.push(String::from_utf8_lossy(&line[..line.len() - 1]).into_owned());
        }
        if self.0.len() > 64 * 1024 {
            out.push(String::from_utf8_lossy(&std::mem::take(&mut self.0)).into_owned());
        }
        out
    }

    fn rest(&mut self) -> Option<String> {
        (!self.0.is_empty())
            .then(|| String::from_utf8_lossy(&std::mem::take(&mut self.0)).into_owned())
    }
}

impl App {
    /// Starts the template's `start_cmd` (in the background) and polls its `ready_cmd` until
    /// it succeeds, in a sandbox that just booted.
    pub(super) async fn boot_commands(
        &self,
        rt: &Arc<Runtime>,
        boot: &Boot,
        hostname: &str,
    ) -> Result<(), ApiError> {
        if let Some(cmd) = &boot.start_cmd {
            let spec = boot_command(boot, cmd, hostname, true);
            let child = rt
                .spawn(spec)
                .await
                .map_err(|e| ApiError::internal(format!("start_cmd_failed: {e}")))?;
            tokio::spawn(async move {
                let mut running = Running::new(child, None);
                while running.next().await.is_some() {}
            });
        }
        if let Some(cmd) = &boot.ready_cmd {
            let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
            loop {
                let spec = boot_command(boot, cmd, hostname, true);
                let child = rt
                    .spawn(spec)
                    .await
                    .map_err(|e| ApiError::internal(format!("ready_cmd_failed: {e}")))?;
                let mut running = Running::new(child, Some(Duration::from_secs(30)));
                let mut code = -1;
                while let Some(ev) = running.next().await {
                    if let Event::Exit(c) = ev {
                        code = c;
                    }
                }
                if code == 0 {
                    break;
                }
                if tokio::time::Instant::now() >= deadline {
                    return Err(ApiError::internal(format!(
                        "ready_cmd_failed: the template's ready_cmd did not succeed within {} s",
                        READY_TIMEOUT.as_secs()
                    )));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        Ok(())
    }
}

/// How long a sandbox's `ready_cmd` may take to succeed.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
