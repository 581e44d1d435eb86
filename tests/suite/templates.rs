//! Templates end to end: builds whose steps show up in sandboxes, failing steps, cancel,
//! rebuild idempotency, deletes while in use, templates from templates, restarts.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use superserve::local::LocalServer;
use superserve::{
    BuildStep, CreateOptions, Error, TemplateBuildStatus, TemplateOptions, TemplateStatus,
    TemplateWaitOptions,
};

use crate::common;
use crate::dual;
use crate::flavor::{Next, Sandbox, Template};

/// Runs `cmd`, asserts it succeeded, returns its stdout trimmed.
#[dual]
async fn ok(sb: &Sandbox, cmd: &str) -> String {
    let r = sb.commands().run(cmd).await.unwrap();
    assert_eq!(r.exit_code, 0, "{cmd}: {r:?}");
    r.stdout.trim().to_owned()
}

fn wait() -> TemplateWaitOptions {
    TemplateWaitOptions::new()
        .timeout(Duration::from_secs(300))
        .poll_interval(Duration::from_millis(200))
}

/// Waits until the build has this status (bounded).
#[dual]
async fn wait_build(t: &Template, build_id: &str, want: TemplateBuildStatus) {
    for _ in 0..600 {
        let b = t.get_build(build_id).await.unwrap();
        if b.status == want {
            return;
        }
        crate::flavor::sleep(Duration::from_millis(100)).await;
    }
    panic!("build {build_id} never reached {want:?}");
}

#[dual]
pub async fn template_build_steps_show_up_in_sandboxes() {
    let target = common::target();
    let config = common::config(&target);
    let opts = TemplateOptions::new("tpl-steps")
        .vcpu(2)
        .memory_mib(768)
        .disk_mib(2048)
        .step(BuildStep::run(
            "mkdir -p /opt/tpl && echo built-in-template > /opt/tpl/hello \
             && printf '#!/bin/sh\\necho tool-from-template\\n' > /usr/local/bin/tpltool \
             && chmod +x /usr/local/bin/tpltool && echo step-output-line",
        ))
        .step(BuildStep::env("TPL_GREETING", "hello from env"))
        .step(BuildStep::workdir("/srv/app"))
        .step(BuildStep::run("echo $TPL_GREETING > greeting && pwd"))
        .start_cmd("mkdir -p /run/app && echo started > /run/app/started")
        .ready_cmd("test -f /run/app/started");
    let t = Template::create_with_config(&config, opts).await.unwrap();
    let build_id = t.latest_build_id().expect("create returns the build id");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    let info = t
        .wait_until_ready(wait().on_log(move |e| sink.lock().unwrap().push(e.text.clone())))
        .await
        .unwrap();
    assert_eq!(info.status, TemplateStatus::Ready);
    let build = t.get_build(&build_id).await.unwrap();
    assert_eq!(build.status, TemplateBuildStatus::Ready);
    assert!(!build.build_spec_hash.is_empty());

    // the log replays from the start and ends with the terminal event
    let mut events = t.build_log_events(Some(&build_id)).await.unwrap();
    let mut texts = Vec::new();
    let mut last = None;
    while let Some(e) = events.next().await {
        let e = e.unwrap();
        texts.push(e.text.clone());
        last = Some(e);
    }
    let last = last.expect("events");
    assert_eq!(last.finished, Some(true));
    assert_eq!(last.status, Some(TemplateBuildStatus::Ready));
    assert!(texts.iter().any(|t| t == "step-output-line"), "{texts:?}");
    assert!(texts.iter().any(|t| t == "/srv/app"), "{texts:?}");
    assert!(
        texts.iter().any(|t| t.contains("status: building")),
        "{texts:?}"
    );
    assert!(
        texts.iter().any(|t| t.contains("status: snapshotting")),
        "{texts:?}"
    );

    // listed with the built-in base
    let names: Vec<String> = Template::list_with_config(&config, None)
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.name)
        .collect();
    assert!(names.contains(&"superserve/base".to_owned()), "{names:?}");
    assert!(
        names.contains(&"superserve/desktop".to_owned()),
        "{names:?}"
    );
    let builtin = Template::connect_with_config(&config, "superserve/base")
        .await
        .unwrap();
    assert_eq!(builtin.status(), &TemplateStatus::Ready);
    assert!(names.contains(&"tpl-steps".to_owned()), "{names:?}");
    let only = Template::list_with_config(&config, Some("tpl-st"))
        .await
        .unwrap();
    assert_eq!(only.len(), 1);

    let sb = Sandbox::create_with_config(&config, CreateOptions::new("from-tpl").from_template(&t))
        .await
        .unwrap();
    let got = ok(
        &sb,
        "cat /opt/tpl/hello; tpltool; echo $TPL_GREETING; pwd; cat greeting; cat /run/app/started",
    )
    .await;
    assert_eq!(
        got,
        "built-in-template\ntool-from-template\nhello from env\n/srv/app\nhello from env\nstarted"
    );
    let info = sb.get_info().await.unwrap();
    assert_eq!(info.vcpu_count, 2);
    assert_eq!(info.memory_mib, 768);

    // in use: the template cannot go
    let busy = t.delete().await;
    assert!(matches!(busy, Err(Error::Conflict(_))), "{busy:?}");
    sb.kill().await.unwrap();
    t.delete().await.unwrap();
    let gone = Template::connect_with_config(&config, "tpl-steps").await;
    assert!(matches!(gone, Err(Error::NotFound(_))), "{gone:?}");
}

#[dual]
pub async fn template_user_step_sets_the_default_user() {
    local_only!("a user created by the build (the local base image's tools)");
    let server = common::server();
    let config = common::config(&server);
    let opts = TemplateOptions::new("tpl-user")
        .step(BuildStep::user("app", false))
        .step(BuildStep::run("whoami > /home/app/built-by"));
    let t = Template::create_with_config(&config, opts).await.unwrap();
    t.wait_until_ready(wait().on_log(|e| eprintln!("build: {}", e.text)))
        .await
        .unwrap();
    let sb = Sandbox::create_with_config(&config, CreateOptions::new("as-user").from_template(&t))
        .await
        .unwrap();
    let got = ok(&sb, "whoami; cat /home/app/built-by; echo $HOME").await;
    assert_eq!(got, "app\napp\n/home/app");
    sb.kill().await.unwrap();
}

#[dual]
pub async fn template_from_a_template_and_a_failing_step() {
    let target = common::target();
    let config = common::config(&target);
    let base = Template::create_with_config(
        &config,
        TemplateOptions::new("tpl-lower")
            .step(BuildStep::run("echo lower > /opt/lower"))
            .step(BuildStep::env("FROM_LOWER", "yes")),
    )
    .await
    .unwrap();
    base.wait_until_ready(wait()).await.unwrap();
    let upper = Template::create_with_config(
        &config,
        TemplateOptions::new("tpl-upper")
            .from_image("tpl-lower")
            .step(BuildStep::run(
                "cat /opt/lower > /opt/upper && echo $FROM_LOWER >> /opt/upper",
            )),
    )
    .await
    .unwrap();
    upper.wait_until_ready(wait()).await.unwrap();
    let sb = Sandbox::create_with_config(
        &config,
        CreateOptions::new("from-upper").from_template(&upper),
    )
    .await
    .unwrap();
    let got = ok(&sb, "cat /opt/upper /opt/lower; echo $FROM_LOWER").await;
    assert_eq!(got, "lower\nyes\nlower\nyes");
    sb.kill().await.unwrap();

    // a failing step fails the build, naming the step; nothing half-built is ready
    let bad = Template::create_with_config(
        &config,
        TemplateOptions::new("tpl-bad")
            .step(BuildStep::run("echo fine"))
            .step(BuildStep::run("echo about-to-fail >&2; exit 3")),
    )
    .await
    .unwrap();
    let err = bad.wait_until_ready(wait()).await.unwrap_err();
    match &err {
        Error::Build {
            code,
            message,
            build_id,
            template_id,
        } => {
            assert_eq!(code, "step_failed");
            assert!(message.contains("step 2"), "{message}");
            assert!(message.contains("code 3"), "{message}");
            assert_eq!(build_id.as_deref(), bad.latest_build_id().as_deref());
            assert_eq!(template_id.as_deref(), Some(bad.id()));
        }
        other => panic!("expected a build error, got {other:?}"),
    }
    let info = bad.get_info().await.unwrap();
    assert_eq!(info.status, TemplateStatus::Failed);
    let refused =
        Sandbox::create_with_config(&config, CreateOptions::new("x").from_template(&bad)).await;
    assert!(matches!(refused, Err(Error::Conflict(_))), "{refused:?}");
    let missing = Sandbox::create_with_config(
        &config,
        CreateOptions::new("x").from_template("no-such-template"),
    )
    .await;
    assert!(matches!(missing, Err(Error::NotFound(_))), "{missing:?}");
    for t in [bad, upper, base] {
        t.delete().await.unwrap();
    }
}

#[dual]
pub async fn template_cancel_and_rebuild_idempotency() {
    let target = common::target();
    let config = common::config(&target);
    let slow = Template::create_with_config(
        &config,
        TemplateOptions::new("tpl-slow").step(BuildStep::run("echo sleeping; sleep 300")),
    )
    .await
    .unwrap();
    let b1 = slow.latest_build_id().unwrap();
    wait_build(&slow, &b1, TemplateBuildStatus::Building).await;
    // a build of the same spec in flight is the same build
    let again = slow.rebuild().await.unwrap();
    assert_eq!(again.id, b1);
    // deleting while it builds is refused
    let busy = slow.delete().await;
    assert!(matches!(busy, Err(Error::Conflict(_))), "{busy:?}");
    slow.cancel_build(&b1).await.unwrap();
    wait_build(&slow, &b1, TemplateBuildStatus::Cancelled).await;
    slow.cancel_build(&b1).await.unwrap(); // idempotent
    let err = slow.wait_until_ready(wait()).await.unwrap_err();
    assert!(
        matches!(&err, Error::Conflict(c) if c.code.as_deref() == Some("cancelled")),
        "{err:?}"
    );
    // after a cancelled build, a rebuild is a new one
    let b2 = slow.rebuild().await.unwrap();
    assert_ne!(b2.id, b1);
    slow.cancel_build(&b2.id).await.unwrap();
    wait_build(&slow, &b2.id, TemplateBuildStatus::Cancelled).await;
    let builds = slow.list_builds(None).await.unwrap();
    assert_eq!(builds.len(), 2);
    assert_eq!(builds[0].id, b2.id, "newest first");
    slow.delete().await.unwrap();

    let quick = Template::create_with_config(
        &config,
        TemplateOptions::new("tpl-quick").step(BuildStep::run("true")),
    )
    .await
    .unwrap();
    quick.wait_until_ready(wait()).await.unwrap();
    let same = quick.rebuild().await.unwrap();
    assert_eq!(
        Some(same.id),
        quick.latest_build_id(),
        "same spec: the ready build"
    );
    quick.delete().await.unwrap();
}

#[dual]
pub async fn templates_survive_a_restart_and_interrupted_builds_fail() {
    local_only!("restarts of the local backend");
    let dir = common::temp_path("superserve-tpl-restart");
    let start = || LocalServer::builder().data_dir(&dir).start().unwrap();
    let (slow_build, sandbox_id);
    {
        let server = start();
        let config = common::config(&server);
        let t = Template::create_with_config(
            &config,
            TemplateOptions::new("tpl-kept").step(BuildStep::run("echo kept > /opt/kept")),
        )
        .await
        .unwrap();
        t.wait_until_ready(wait()).await.unwrap();
        let sb =
            Sandbox::create_with_config(&config, CreateOptions::new("kept-sb").from_template(&t))
                .await
                .unwrap();
        sandbox_id = sb.id().to_owned();
        let slow = Template::create_with_config(
            &config,
            TemplateOptions::new("tpl-interrupted")
                .step(BuildStep::run("sleep 300 && echo interrupted-build-marker")),
        )
        .await
        .unwrap();
        slow_build = slow.latest_build_id().unwrap();
        wait_build(&slow, &slow_build, TemplateBuildStatus::Building).await;
        let marked = || -> Vec<String> {
            std::fs::read_dir("/proc")
                .unwrap()
                .flatten()
                .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
                .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
                .filter(|c| c.contains("interrupted-build-marker"))
                .collect()
        };
        for _ in 0..100 {
            if !marked().is_empty() {
                break;
            }
            crate::flavor::sleep(Duration::from_millis(50)).await;
        }
        assert!(!marked().is_empty(), "the build step runs");
        server.shutdown();
        // the stopped backend left no build process behind
        let left = marked();
        assert!(left.is_empty(), "{left:?}");
    }
    let server = start();
    let config = common::config(&server);
    let t = Template::connect_with_config(&config, "tpl-kept")
        .await
        .unwrap();
    assert_eq!(t.status(), &TemplateStatus::Ready);
    let sb = Sandbox::connect_with_config(&config, &sandbox_id)
        .await
        .unwrap();
    let got = ok(&sb, "cat /opt/kept").await;
    assert_eq!(got, "kept");
    let fresh = Sandbox::create_with_config(&config, CreateOptions::new("fresh").from_template(&t))
        .await
        .unwrap();
    let got = ok(&fresh, "cat /opt/kept").await;
    assert_eq!(got, "kept");
    let slow = Template::connect_with_config(&config, "tpl-interrupted")
        .await
        .unwrap();
    let b = slow.get_build(&slow_build).await.unwrap();
    assert_eq!(b.status, TemplateBuildStatus::Failed);
    assert!(
        b.error_message
            .as_deref()
            .is_some_and(|m| m.contains("interrupted")),
        "{b:?}"
    );
    let err = slow.wait_until_ready(wait()).await.unwrap_err();
    assert!(matches!(err, Error::Build { .. }), "{err:?}");
    for s in [sb, fresh] {
        s.kill().await.unwrap();
    }
    server.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Images the OCI test pushes: a shared busybox base layer and one top layer per image.
struct Images {
    reg: common::registry::TestRegistry,
    base: String,
    top_a: String,
    top_b: String,
    corrupt_repo: String,
}

fn push_images() -> Images {
    use common::registry::{busybox_layer, config_json, gzip, Tar, TestRegistry};
    let reg = TestRegistry::start();
    let base = gzip(&busybox_layer(|_| {}), 6);
    let top = |name: &str| {
        gzip(
            &Tar::new()
                .file(&format!("etc/{name}"), format!("{name}\n").as_bytes())
                .finish(),
            6,
        )
    };
    let cfg = config_json(
        "amd64",
        &["IMG_ENV=from-image", "PATH=/usr/sbin:/usr/bin:/sbin:/bin"],
        "/work",
        "",
        &["sh"],
    );
    let a = reg.push_image("team/app", "v1", &[base.clone(), top("img-a")], &cfg, false);
    // a Docker Hub short name (`busybox`) resolves to library/busybox on the mirror
    let b = reg.push_image(
        "library/busybox",
        "latest",
        &[base.clone(), top("img-b")],
        &cfg,
        true,
    );
    // an image whose top layer the registry then serves corrupted
    let c = reg.push_image("team/corrupt", "v1", &[base, top("img-c")], &cfg, false);
    let data = reg.blob_data(&c.layers[1]);
    let mut bytes = std::fs::read(&data).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&data, bytes).unwrap();
    Images {
        base: a.layers[0].clone(),
        top_a: a.layers[1].clone(),
        top_b: b.layers[1].clone(),
        corrupt_repo: "team/corrupt:v1".into(),
        reg,
    }
}

#[dual]
pub async fn template_from_oci_images_by_reference_and_through_a_mirror() {
    local_only!("a loopback registry and the registry mirror option");
    // the registry helpers are blocking: they run on a thread of their own
    let images = std::thread::spawn(push_images).join().unwrap();
    let server = LocalServer::builder()
        .registry_mirror(images.reg.url())
        .start()
        .unwrap();
    let config = common::config(&server);
    let by_ref = Template::create_with_config(
        &config,
        TemplateOptions::new("oci-a")
            .from_image(format!("{}/team/app:v1", images.reg.host()))
            .step(BuildStep::run(
                "cat /etc/img-a > built && echo $IMG_ENV >> built",
            )),
    )
    .await
    .unwrap();
    by_ref.wait_until_ready(wait()).await.unwrap();
    let short =
        Template::create_with_config(&config, TemplateOptions::new("oci-b").from_image("busybox"))
            .await
            .unwrap();
    short.wait_until_ready(wait()).await.unwrap();

    let a =
        Sandbox::create_with_config(&config, CreateOptions::new("oci-a").from_template(&by_ref))
            .await
            .unwrap();
    let got = ok(
        &a,
        "pwd; cat built; echo $IMG_ENV; ls /etc/img-b 2>&1 | grep -c 'No such'",
    )
    .await;
    assert_eq!(got, "/work\nimg-a\nfrom-image\nfrom-image\n1");
    let b = Sandbox::create_with_config(&config, CreateOptions::new("oci-b").from_template(&short))
        .await
        .unwrap();
    let got = ok(&b, "cat /etc/img-b; busybox true && echo busybox-runs").await;
    assert_eq!(got, "img-b\nbusybox-runs");
    // independent roots: a write in one is not in the other
    ok(&a, "echo mine > /etc/img-a").await;
    let got = ok(&b, "test -e /etc/img-a || echo absent").await;
    assert_eq!(got, "absent");

    // the base layer both images share is stored once
    let mut stored: Vec<String> = std::fs::read_dir(server.data_dir().join("layers"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("sha256:"))
        .collect();
    stored.sort();
    let mut want = vec![
        images.base.clone(),
        images.top_a.clone(),
        images.top_b.clone(),
    ];
    want.sort();
    assert_eq!(stored, want);

    // unreachable registries, unknown tags, corrupt layers: clear build errors, nothing ready
    for (name, from, needle) in [
        (
            "oci-unreachable",
            "127.0.0.1:1/team/app:v1".to_owned(),
            "127.0.0.1:1",
        ),
        (
            "oci-unknown-tag",
            format!("{}/team/app:nope", images.reg.host()),
            "not found",
        ),
        (
            "oci-corrupt",
            format!("{}/{}", images.reg.host(), images.corrupt_repo),
            "digest",
        ),
    ] {
        let t = Template::create_with_config(&config, TemplateOptions::new(name).from_image(from))
            .await
            .unwrap();
        let err = t.wait_until_ready(wait()).await.unwrap_err();
        match &err {
            Error::Build { code, message, .. } => {
                assert_eq!(code, "image_pull_failed", "{name}: {message}");
                assert!(message.contains(needle), "{name}: {message}");
            }
            other => panic!("{name}: expected a build error, got {other:?}"),
        }
        let info = t.get_info().await.unwrap();
        assert_eq!(info.status, TemplateStatus::Failed, "{name}");
        t.delete().await.unwrap();
    }
    // a reference the SDK would refuse, sent raw: the build fails as bad_reference
    let (status, text) = common::raw_http(
        &common::authority(server.base_url()),
        &format!(
            "POST /templates HTTP/1.1\r\nhost: x\r\nx-api-key: {}\r\ncontent-type: application/json",
            server.api_key()
        ),
        br#"{"name":"oci-bad-ref","build_spec":{"from":"Not A//Valid:ref!"}}"#,
        Duration::from_secs(30),
    );
    assert_eq!(status, 202, "{text}");
    let t = Template::connect_with_config(&config, "oci-bad-ref")
        .await
        .unwrap();
    let err = t.wait_until_ready(wait()).await.unwrap_err();
    assert!(
        matches!(&err, Error::Build { code, .. } if code == "bad_reference"),
        "{err:?}"
    );
    t.delete().await.unwrap();
    for s in [a, b] {
        s.kill().await.unwrap();
    }
    server.shutdown();
    std::thread::spawn(move || drop(images)).join().unwrap();
}

#[dual]
pub async fn template_builds_queue_with_system_events_and_hit_the_build_limit() {
    local_only!("this backend's build limits (2 running, 8 in flight)");
    let server = common::server();
    let config = common::config(&server);
    let mut slow = Vec::new();
    for i in 0..8 {
        let t = Template::create_with_config(
            &config,
            TemplateOptions::new(format!("tpl-q{i}")).step(BuildStep::run("sleep 300")),
        )
        .await
        .unwrap();
        slow.push(t);
    }
    let over = Template::create_with_config(
        &config,
        TemplateOptions::new("tpl-over").step(BuildStep::run("true")),
    )
    .await;
    match &over {
        Err(Error::RateLimit { error, .. }) => {
            assert_eq!(error.code.as_deref(), Some("too_many_builds"))
        }
        other => panic!("expected 429 too_many_builds, got {other:?}"),
    }
    // the last one waits for a build slot; its log says so while it waits
    let last = slow.last().unwrap();
    let bid = last.latest_build_id().unwrap();
    let b = last.get_build(&bid).await.unwrap();
    assert_eq!(b.status, TemplateBuildStatus::Pending);
    let mut events = last.build_log_events(Some(&bid)).await.unwrap();
    let mut seen = Vec::new();
    while let Some(e) = events.next().await {
        let e = e.unwrap();
        seen.push(e.text.clone());
        if e.text.contains("waiting for a free build slot") {
            break;
        }
        assert!(seen.len() < 20, "{seen:?}");
    }
    drop(events);
    for t in &slow {
        let bid = t.latest_build_id().unwrap();
        t.cancel_build(&bid).await.unwrap();
    }
    for t in &slow {
        let bid = t.latest_build_id().unwrap();
        wait_build(t, &bid, TemplateBuildStatus::Cancelled).await;
    }
    let now_fits = Template::create_with_config(
        &config,
        TemplateOptions::new("tpl-over").step(BuildStep::run("true")),
    )
    .await
    .unwrap();
    now_fits.wait_until_ready(wait()).await.unwrap();
    for t in slow {
        t.delete().await.unwrap();
    }
    now_fits.delete().await.unwrap();
}
