//! Wire shapes of SDK calls checked against a scripted server that answers as the hosted
//! service does (bodies from protocol.md), for what the local backend's own tests do not pin.

use superserve::{Error, PreviewAccess, PreviewAccessPolicy};

use crate::common::{self, Reply};
use crate::dual;
use crate::flavor::Sandbox;

const TOKEN_JSON: &str = r#"{"token":"spv1.abc+/=","port":8000,"header":"X-Superserve-Preview-Token","query_param":"superserve_preview_token","token_version":3,"access":"private","preview_access":"private","expires_at":"2026-12-02T10:00:00Z"}"#;

#[dual]
pub async fn preview_calls_have_the_hosted_shapes() {
    let s = common::Scripted::start(vec![
        Reply::sandbox(201, "sb-1", "tok", None),
        Reply::json(
            200,
            r#"{"preview_access":"private","ports":[{"port":8000,"token_version":3,"access":"private"}]}"#,
        ),
        Reply::json(200, r#"{"port":8000,"token_version":3,"access":"private"}"#),
        Reply::json(200, TOKEN_JSON),
        Reply::json(200, TOKEN_JSON),
        Reply::json(200, TOKEN_JSON),
        Reply::Http {
            status: 204,
            headers: vec![],
            body: vec![],
        },
    ]);
    let config = s
        .config()
        .to_builder()
        .preview_url("http://localhost:7070")
        .build()
        .unwrap();
    let sb = Sandbox::create_with_config(&config, superserve::CreateOptions::new("p"))
        .await
        .unwrap();
    // pure, validated, no request
    assert_eq!(
        sb.get_preview_url(8000).unwrap(),
        "http://8000-sb-1.localhost:7070"
    );
    for bad in [80u16, 1023, 49983] {
        let err = sb.get_preview_url(bad).unwrap_err();
        assert!(matches!(err, Error::InvalidInput { .. }), "{bad}: {err:?}");
        let err = sb.publish_preview_port(bad, None).await.unwrap_err();
        assert!(matches!(err, Error::InvalidInput { .. }), "{bad}: {err:?}");
    }
    let err = sb
        .get_preview_token(8000, Some(std::time::Duration::from_secs(604_801)))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidInput { .. }), "{err:?}");
    assert_eq!(s.calls().len(), 1, "bad input sends nothing");

    let list = sb.list_preview_ports().await.unwrap();
    assert_eq!(list.preview_access, PreviewAccess::Private);
    assert_eq!(list.ports[0].port, 8000);
    let published = sb
        .publish_preview_port(8000, Some(PreviewAccessPolicy::Private))
        .await
        .unwrap();
    assert_eq!(published.access, PreviewAccess::Private);
    let token = sb
        .get_preview_token(8000, Some(std::time::Duration::from_secs(120)))
        .await
        .unwrap();
    assert_eq!(token.token_version, 3);
    assert!(!format!("{token:?}").contains("spv1"));
    let link = sb.get_signed_preview_url(8000, None).await.unwrap();
    assert_eq!(
        link,
        "http://8000-sb-1.localhost:7070?superserve_preview_token=spv1.abc%2B%2F%3D"
    );
    sb.rotate_preview_token(8000).await.unwrap();
    sb.unpublish_preview_port(8000).await.unwrap();
    assert_eq!(
        s.calls(),
        vec![
            "POST /sandboxes",
            "GET /sandboxes/sb-1/preview-ports",
            "POST /sandboxes/sb-1/preview-ports",
            "POST /sandboxes/sb-1/preview-ports/8000/token",
            "POST /sandboxes/sb-1/preview-ports/8000/token",
            "POST /sandboxes/sb-1/preview-ports/8000/token/rotate",
            "DELETE /sandboxes/sb-1/preview-ports/8000",
        ]
    );
    let bodies: Vec<serde_json::Value> = s
        .requests()
        .iter()
        .map(|r| serde_json::from_slice(&r.body).unwrap_or(serde_json::Value::Null))
        .collect();
    assert_eq!(
        bodies[2],
        serde_json::json!({"port": 8000, "access": "private"})
    );
    assert_eq!(bodies[3], serde_json::json!({"expires_in_seconds": 120}));
    assert_eq!(bodies[4], serde_json::json!({"expires_in_seconds": 60}));
    // none of these resumes: no activate went out, no data-plane header either
    assert!(s
        .requests()
        .iter()
        .all(|r| r.header("x-access-token").is_none()));
}

fn snap(status: &str) -> Reply {
    Reply::json(
        200,
        &format!(
            r#"{{"id":"snap-1","sandbox_id":"sb-1","status":"{status}","kind":"mem+fs","created_at":"2026-12-01T00:00:00Z","resources":{{"vcpu_count":1,"memory_mib":512,"disk_mib":4096}}}}"#
        ),
    )
}

#[dual]
pub async fn snapshot_calls_have_the_hosted_shapes() {
    use std::time::Duration;
    use superserve::{SnapshotOptions, SnapshotStatus};
    let s = common::Scripted::start(vec![
        Reply::sandbox(201, "sb-1", "tok", None),
        snap("creating"),
        snap("creating"),
        snap("ready"),
        snap("creating"),
        snap("failed"),
        snap("creating"),
        Reply::json(
            404,
            r#"{"error":{"code":"not_found","message":"no snapshot"}}"#,
        ),
        snap("creating"),
        Reply::json(200, r#"[]"#),
        Reply::json(404, r#"{"error":{"code":"not_found","message":"gone"}}"#),
    ]);
    let config = s.config();
    let sb = Sandbox::create_with_config(&config, superserve::CreateOptions::new("p"))
        .await
        .unwrap();
    let fast = || {
        SnapshotOptions::new()
            .name("before")
            .poll_interval(Duration::from_millis(10))
    };
    let ready = sb.snapshot(fast().idempotency_key("k-1")).await.unwrap();
    assert_eq!(ready.status(), &SnapshotStatus::Ready);
    let err = sb.snapshot(fast()).await.unwrap_err();
    assert!(
        matches!(err, Error::SnapshotFailed { ref id } if id == "snap-1"),
        "{err:?}"
    );
    let err = sb.snapshot(fast()).await.unwrap_err();
    assert!(matches!(err, Error::SnapshotDeleted { .. }), "{err:?}");
    let pending = sb.snapshot(fast().wait(false)).await.unwrap();
    assert_eq!(pending.status(), &SnapshotStatus::Creating);
    let listed = sb.snapshots(Some(5), Some(0)).await.unwrap();
    assert!(listed.is_empty());
    crate::flavor::Snapshot::delete_by_id_with_config(&config, "snap-1")
        .await
        .unwrap();
    // bad names send nothing
    let err = sb
        .snapshot(SnapshotOptions::new().name(""))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidInput { .. }));
    let calls = s.calls();
    assert_eq!(calls.len(), 11, "{calls:?}");
    assert_eq!(calls[1], "POST /sandboxes/sb-1/snapshot");
    assert_eq!(calls[2], "GET /snapshots/snap-1");
    assert_eq!(calls[9], "GET /sandboxes/sb-1/snapshots?limit=5&offset=0");
    assert_eq!(calls[10], "DELETE /snapshots/snap-1");
    let bodies: Vec<serde_json::Value> = s
        .requests()
        .iter()
        .filter(|r| r.target.ends_with("/snapshot"))
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect();
    assert_eq!(
        bodies[0],
        serde_json::json!({"kind": "mem+fs", "idempotency_key": "k-1", "name": "before"})
    );
    let key = bodies[1]["idempotency_key"].as_str().unwrap();
    assert_eq!(key.len(), 36, "a fresh UUID when none is given: {key}");
    assert_ne!(key, bodies[2]["idempotency_key"].as_str().unwrap());
}

const TEMPLATE_JSON: &str = r#"{"id":"t-1","team_id":"team","name":"py-app","status":"building","vcpu":2,"memory_mib":2048,"disk_mib":4096,"created_at":"2026-12-01T00:00:00Z"}"#;

fn build(id: &str, status: &str, error: Option<&str>) -> Reply {
    let err = error.map_or(String::new(), |e| format!(r#","error_message":"{e}""#));
    Reply::json(
        200,
        &format!(
            r#"{{"id":"{id}","template_id":"t-1","status":"{status}","build_spec_hash":"h","created_at":"2026-12-01T00:00:00Z"{err}}}"#
        ),
    )
}

#[dual]
pub async fn template_calls_have_the_hosted_shapes() {
    use std::time::Duration;
    use superserve::{BuildStep, TemplateOptions, TemplateWaitOptions};
    let created = TEMPLATE_JSON.replace(
        r#""status":"building""#,
        r#""status":"pending","build_id":"b-1""#,
    );
    let s = common::Scripted::start(vec![
        Reply::json(202, &created),
        build("b-1", "building", None),
        build(
            "b-1",
            "failed",
            Some("step_failed: step 2 (run) exited with 1"),
        ),
        build("b-2", "pending", None),
        build("b-2", "cancelled", None),
        Reply::json(404, r#"{"error":{"code":"not_found","message":"gone"}}"#),
    ]);
    let config = s.config();
    // bad input sends nothing
    for bad in [
        TemplateOptions::new("Bad Name"),
        TemplateOptions::new("superserve/mine"),
        TemplateOptions::new("ok").vcpu(9),
        TemplateOptions::new("ok").memory_mib(100),
        TemplateOptions::new("ok").disk_mib(100_000),
        TemplateOptions::new("ok").step(BuildStep::workdir("relative")),
        TemplateOptions::new("ok").step(BuildStep::run(" ")),
    ] {
        let err = crate::flavor::Template::create_with_config(&config, bad)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::InvalidInput { .. }), "{err:?}");
    }
    assert!(s.calls().is_empty());
    let t = crate::flavor::Template::create_with_config(
        &config,
        TemplateOptions::new("py-app")
            .from_image("python:3.11")
            .vcpu(2)
            .memory_mib(2048)
            .disk_mib(4096)
            .step(BuildStep::run("pip install x"))
            .step(BuildStep::env("K", "V"))
            .step(BuildStep::workdir("/srv/app"))
            .step(BuildStep::user("app", true))
            .start_cmd("python -m http.server")
            .ready_cmd("true"),
    )
    .await
    .unwrap();
    assert_eq!(t.latest_build_id().as_deref(), Some("b-1"));
    let fast = || TemplateWaitOptions::new().poll_interval(Duration::from_millis(10));
    let err = t.wait_until_ready(fast()).await.unwrap_err();
    match err {
        Error::Build {
            code,
            message,
            build_id,
            template_id,
        } => {
            assert_eq!(code, "step_failed");
            assert_eq!(message, "step 2 (run) exited with 1");
            assert_eq!(build_id.as_deref(), Some("b-1"));
            assert_eq!(template_id.as_deref(), Some("t-1"));
        }
        other => panic!("{other:?}"),
    }
    // a rebuild is followed from then on; a cancelled build is the `cancelled` conflict
    let b = t.rebuild().await.unwrap();
    assert_eq!(b.id, "b-2");
    let err = t.wait_until_ready(fast()).await.unwrap_err();
    assert!(matches!(err, Error::Conflict(_)), "{err:?}");
    assert_eq!(err.code(), Some("cancelled"));
    t.cancel_build("b-9").await.unwrap();
    let calls = s.calls();
    assert_eq!(
        calls,
        vec![
            "POST /templates",
            "GET /templates/t-1/builds/b-1",
            "GET /templates/t-1/builds/b-1",
            "POST /templates/t-1/builds",
            "GET /templates/t-1/builds/b-2",
            "DELETE /templates/t-1/builds/b-9",
        ]
    );
    let body: serde_json::Value = serde_json::from_slice(&s.requests()[0].body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({
            "name": "py-app", "vcpu": 2, "memory_mib": 2048, "disk_mib": 4096,
            "build_spec": {
                "from": "python:3.11",
                "steps": [
                    {"run": "pip install x"},
                    {"env": {"key": "K", "value": "V"}},
                    {"workdir": "/srv/app"},
                    {"user": {"name": "app", "sudo": true}}
                ],
                "start_cmd": "python -m http.server",
                "ready_cmd": "true"
            }
        })
    );
    // from_template takes the handle
    let opts = superserve::CreateOptions::new("x").from_template(&t);
    assert!(format!("{opts:?}").contains("py-app"));
}

#[dual]
pub async fn desktop_calls_have_the_hosted_shapes() {
    use superserve::{DesktopAction, ImageFormat, KeyChord, MouseButton, StepOptions};
    let s = common::Scripted::start(vec![
        Reply::sandbox(201, "sb-1", "tok", None),
        Reply::json(
            200,
            r#"{"image":"iVBORw0KGgo=","width":1280,"height":800,"format":"FRAME_FORMAT_JPEG"}"#,
        ),
        Reply::json(200, "{}"),
        Reply::json(200, "{}"),
        Reply::json(200, "{}"),
        Reply::json(
            200,
            r#"{"executed":1,"changed":true,"screenshot":{"image":"iVBO","width":8,"height":8},"settleMs":12}"#,
        ),
        Reply::json(200, "{}"),
        // get_stream_url: activate, publish (private), token
        Reply::sandbox(200, "sb-1", "tok2", None),
        Reply::json(200, r#"{"port":6080,"token_version":1,"access":"private"}"#),
        Reply::json(200, TOKEN_JSON),
    ]);
    let config = s
        .config()
        .to_builder()
        .preview_url("http://localhost:7070")
        .build()
        .unwrap();
    let sb = Sandbox::create_with_config(&config, superserve::CreateOptions::new("d"))
        .await
        .unwrap();
    let d = sb.desktop();
    // checked before sending
    let bad_size = d.resize(1281, 800).await;
    assert!(
        matches!(bad_size, Err(Error::InvalidInput { .. })),
        "{bad_size:?}"
    );
    let bad_key = d.press("ctrl+").await;
    assert!(
        matches!(bad_key, Err(Error::InvalidInput { .. })),
        "{bad_key:?}"
    );
    let empty = d.step(StepOptions::new([])).await;
    assert!(matches!(empty, Err(Error::InvalidInput { .. })));
    d.actions(&[]).await.unwrap();
    d.write("").await.unwrap();
    assert_eq!(s.calls().len(), 1, "nothing sent for bad or empty input");

    let shot = d.screenshot(ImageFormat::Jpeg).await.unwrap();
    assert_eq!(
        (shot.width, shot.height, shot.format),
        (1280, 800, ImageFormat::Jpeg)
    );
    assert_eq!(&shot.bytes[..4], b"\x89PNG");
    d.click(0, 5, MouseButton::Right).await.unwrap();
    d.press("ctrl+c").await.unwrap();
    d.drag((1, 2), (3, 4), MouseButton::Left).await.unwrap();
    let r = d
        .step(
            StepOptions::new([DesktopAction::Press(KeyChord::new("enter").with("shift"))])
                .wait_for_change(true)
                .quiet_ms(100),
        )
        .await
        .unwrap();
    assert!(r.changed);
    assert_eq!(r.timings.unwrap().settle_ms, 12);
    d.resize(1024, 768).await.unwrap();
    let url = d.get_stream_url(true).await.unwrap();
    assert_eq!(
        url,
        "http://6080-sb-1.localhost:7070/vnc.html?autoconnect=1&resize=scale&view_only=1&superserve_preview_token=spv1.abc%2B%2F%3D"
    );
    let calls = s.calls();
    let rpc = "/superserve.boxd.v1.DesktopService";
    assert_eq!(
        calls[1..],
        [
            format!("POST {rpc}/Screenshot"),
            format!("POST {rpc}/SendPointer"),
            format!("POST {rpc}/SendKey"),
            format!("POST {rpc}/SendActions"),
            format!("POST {rpc}/Step"),
            format!("POST {rpc}/Resize"),
            "POST /sandboxes/sb-1/activate".to_owned(),
            "POST /sandboxes/sb-1/preview-ports".to_owned(),
            "POST /sandboxes/sb-1/preview-ports/6080/token".to_owned(),
        ]
    );
    let body =
        |i: usize| -> serde_json::Value { serde_json::from_slice(&s.requests()[i].body).unwrap() };
    assert_eq!(body(1), serde_json::json!({"format": "FRAME_FORMAT_JPEG"}));
    assert_eq!(
        body(2),
        serde_json::json!({"x": 0, "y": 5, "button": "POINTER_BUTTON_RIGHT", "action": "POINTER_ACTION_CLICK"})
    );
    assert_eq!(
        body(3),
        serde_json::json!({"key": "c", "modifiers": ["ctrl"]})
    );
    assert_eq!(body(4)["actions"].as_array().unwrap().len(), 3);
    assert_eq!(
        body(5),
        serde_json::json!({"actions": [{"key": {"key": "Return", "modifiers": ["shift"]}}],
            "settleMs": 0, "waitForChange": true, "quietMs": 100})
    );
    assert_eq!(body(6), serde_json::json!({"width": 1024, "height": 768}));
    // RPCs go to the data plane with the access token, never the API key
    let screenshot = &s.requests()[1];
    assert_eq!(screenshot.header("x-access-token"), Some("tok"));
    assert!(screenshot.header("x-api-key").is_none());
}
