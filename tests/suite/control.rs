//! Control plane: lifecycle, list, update, pause/resume, bindings, network log, errors, shapes.

use std::time::Duration;

use superserve::{
    CreateOptions, Error, ListOptions, NetworkConfig, NetworkLogOptions, NetworkVerdict,
    PauseOptions, PreviewAccess, PreviewAccessPolicy, RunOptions, SandboxStatus, UpdateOptions,
};

use super::{count, make};
use crate::common;
use crate::dual;
use crate::flavor::Sandbox;

#[dual]
pub async fn lifecycle_and_accessors() {
    local_only!("the local backend (request journal, faults, restarts)");
    let server = common::server();
    let config = common::config(&server);
    let sb = Sandbox::create_with_config(
        &config,
        CreateOptions::new("data-analyzer")
            .metadata("env", "prod")
            .env_var("GREETING", "hello")
            .timeout_seconds(3600)
            .preview_access(PreviewAccessPolicy::Private),
    )
    .await
    .unwrap();
    assert_eq!(sb.name(), "data-analyzer");
    assert_eq!(sb.status(), &SandboxStatus::Active);
    assert_eq!(sb.metadata().get("env").map(String::as_str), Some("prod"));
    assert_eq!(sb.preview_access(), &PreviewAccess::Private);
    assert!(sb.secrets().is_empty());
    let info = sb.get_info().await.unwrap();
    assert_eq!(info.id, sb.id());
    assert_eq!(info.timeout_seconds, Some(3600));
    assert!(info.created_at.to_system_time().is_some());
    let dbg = format!("{sb:?} {config:?}");
    assert!(!dbg.contains(server.api_key()), "Debug leaked the API key");

    // clones share one handle
    let clone = sb.clone();
    sb.kill().await.unwrap();
    let info_after_kill = clone.get_info().await;
    let refused_as_deleted = matches!(info_after_kill, Err(Error::SandboxDeleted { .. }));
    assert!(refused_as_deleted);
    // idempotent
    sb.kill().await.unwrap();
    Sandbox::kill_by_id_with_config(&config, sb.id())
        .await
        .unwrap();
    Sandbox::kill_by_id_with_config(&config, "00000000-0000-4000-8000-000000000000")
        .await
        .unwrap();
    let err = Sandbox::connect_with_config(&config, sb.id())
        .await
        .unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
}

#[dual]
pub async fn create_validation_sends_nothing() {
    local_only!("the local backend (request journal, faults, restarts)");
    let server = common::server();
    let config = common::config(&server);
    let bad = [
        CreateOptions::new(""),
        CreateOptions::new("x".repeat(65)),
        CreateOptions::new("x").metadata("superserve.owner", "me"),
        CreateOptions::new("x").metadata("k", "v".repeat(3000)),
        CreateOptions::new("x").env_var("K", "1").secret("K", "s"),
    ];
    for opts in bad {
        let err = Sandbox::create_with_config(&config, opts)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::InvalidInput { .. }), "{err:?}");
        assert_eq!(err.status_code(), None, "local errors carry no HTTP status");
        assert!(err.is_invalid());
    }
    let err = Sandbox::connect_with_config(&config, "").await.unwrap_err();
    assert!(matches!(err, Error::InvalidInput { .. }));
    assert_eq!(count(&server, "POST", "/sandboxes"), 0);
    assert!(
        server.requests().is_empty(),
        "bad input must not reach the server"
    );
}

#[dual]
pub async fn connect_rotates_token_and_resumes() {
    local_only!("the local backend (request journal, faults, restarts)");
    let server = common::server();
    let config = common::config(&server);
    let sb = make(&server, "conn").await;
    sb.commands().run("true").await.unwrap();
    sb.pause_with(PauseOptions::new().wait(true)).await.unwrap();
    let status_after_pause = sb.get_info().await.unwrap().status;
    assert_eq!(status_after_pause, SandboxStatus::Paused);

    let other = Sandbox::connect_with_config(&config, sb.id())
        .await
        .unwrap();
    assert_eq!(other.status(), &SandboxStatus::Active, "connect resumes");
    server.clear_requests();
    other.commands().run("true").await.unwrap();
    sb.commands().run("true").await.unwrap();
    let tokens: Vec<String> = server
        .requests()
        .iter()
        .filter(|r| r.path == "/exec")
        .filter_map(|r| r.header("x-access-token").map(str::to_owned))
        .collect();
    assert_eq!(
        tokens.len(),
        3,
        "old handle: 401 then retry; new handle: one call"
    );
    // the new handle used the rotated token at once, the old one refreshed
    assert_eq!(
        count(&server, "POST", &format!("/sandboxes/{}/activate", sb.id())),
        1
    );

    // resume rotates: the next call carries a token the server accepts without activate
    other
        .pause_with(PauseOptions::new().wait(true))
        .await
        .unwrap();
    other.resume().await.unwrap();
    server.clear_requests();
    other.commands().run("true").await.unwrap();
    assert_eq!(
        count(&server, "POST", &format!("/sandboxes/{}/activate", sb.id())),
        0
    );
    other.kill().await.unwrap();
}

#[dual]
pub async fn list_filters_and_query_encoding() {
    local_only!("the local backend (request journal, faults, restarts)");
    let server = common::server();
    let config = common::config(&server);
    let a = Sandbox::create_with_config(&config, CreateOptions::new("a").metadata("env", "prod x"))
        .await
        .unwrap();
    let b = Sandbox::create_with_config(&config, CreateOptions::new("b").metadata("env", "dev"))
        .await
        .unwrap();
    let c = Sandbox::create_with_config(
        &config,
        CreateOptions::new("c")
            .metadata("env", "prod x")
            .metadata("team", "ml"),
    )
    .await
    .unwrap();
    c.pause_with(PauseOptions::new().wait(true)).await.unwrap();

    let all = Sandbox::list_with_config(&config, ListOptions::new())
        .await
        .unwrap();
    assert_eq!(all.len(), 3);
    server.clear_requests();
    let prod = Sandbox::list_with_config(&config, ListOptions::new().metadata("env", "prod x"))
        .await
        .unwrap();
    let mut ids: Vec<_> = prod.iter().map(|i| i.id.clone()).collect();
    ids.sort();
    let mut want = vec![a.id().to_owned(), c.id().to_owned()];
    want.sort();
    assert_eq!(ids, want);
    assert_eq!(server.requests()[0].query, "metadata.env=prod+x");

    let both = Sandbox::list_with_config(
        &config,
        ListOptions::new()
            .metadata("env", "prod x")
            .metadata("team", "ml"),
    )
    .await
    .unwrap();
    assert_eq!(both.len(), 1);
    assert_eq!(both[0].id, c.id());

    let paused =
        Sandbox::list_with_config(&config, ListOptions::new().status(SandboxStatus::Paused))
            .await
            .unwrap();
    assert_eq!(paused.len(), 1);
    assert_eq!(paused[0].status, SandboxStatus::Paused);
    server.clear_requests();
    let either = Sandbox::list_with_config(
        &config,
        ListOptions::new()
            .status(SandboxStatus::Active)
            .status(SandboxStatus::Paused),
    )
    .await
    .unwrap();
    assert_eq!(either.len(), 3);
    assert_eq!(server.requests()[0].query, "status=active%2Cpaused");

    let page1 = Sandbox::list_with_config(&config, ListOptions::new().limit(2).offset(0))
        .await
        .unwrap();
    let page2 = Sandbox::list_with_config(&config, ListOptions::new().limit(2).offset(2))
        .await
        .unwrap();
    assert_eq!(page1.len(), 2);
    assert_eq!(page2.len(), 1);
    assert!(page1.iter().all(|p| p.id != page2[0].id));
    for s in [a, b, c] {
        s.kill().await.unwrap();
    }
}

#[dual]
pub async fn update_tri_state_and_update_by_id() {
    let server = common::target();
    let config = common::config(&server);
    let sb = Sandbox::create_with_config(
        &config,
        CreateOptions::new("upd")
            .metadata("env", "prod")
            .timeout_seconds(600),
    )
    .await
    .unwrap();
    sb.update(
        UpdateOptions::new()
            .replace_metadata([("env", "staging")])
            .clear_timeout_seconds()
            .network(NetworkConfig::new().allow_out(["api.openai.com"])),
    )
    .await
    .unwrap();
    let info = sb.get_info().await.unwrap();
    assert_eq!(
        info.metadata.get("env").map(String::as_str),
        Some("staging")
    );
    assert_eq!(info.timeout_seconds, None);
    assert_eq!(
        info.network.and_then(|n| n.allow_out),
        Some(vec!["api.openai.com".to_owned()])
    );
    if let Some(local) = server.local() {
        let body = local
            .requests()
            .into_iter()
            .find(|r| r.method == "PATCH")
            .expect("patch sent")
            .body;
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["timeout_seconds"], serde_json::Value::Null);
        assert!(
            body.get("auto_delete_seconds").is_none(),
            "untouched fields are left out"
        );
        assert_eq!(body["network"]["deny_out"], serde_json::Value::Null);
    }

    let err = sb.update(UpdateOptions::new()).await.unwrap_err();
    assert!(matches!(err, Error::InvalidInput { .. }), "{err:?}");

    sb.pause_with(PauseOptions::new().wait(true)).await.unwrap();
    Sandbox::update_by_id_with_config(
        &config,
        sb.id(),
        UpdateOptions::new().auto_delete_seconds(3600),
    )
    .await
    .unwrap();
    let info = sb.get_info().await.unwrap();
    assert_eq!(
        info.status,
        SandboxStatus::Paused,
        "update_by_id must not resume"
    );
    assert_eq!(info.auto_delete_seconds, Some(3600));
    assert!(info.auto_delete_at.is_some());
    // network rules need an active sandbox
    let err = sb
        .update(UpdateOptions::new().network(NetworkConfig::new().deny_out(["0.0.0.0/0"])))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Conflict(_)), "{err:?}");
    sb.kill().await.unwrap();
}

#[dual]
pub async fn pause_resume_keeps_process_state() {
    let server = common::target();
    let sb = make(&server, "pause").await;
    let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let s2 = seen.clone();
    let session = sb
        .commands()
        .spawn_with(
            "python3 -u -i -q",
            RunOptions::new().on_stdout(move |s: &str| s2.lock().unwrap().push_str(s)),
        )
        .await
        .unwrap();
    session
        .write_stdin("x = 41\nprint('ready')\n")
        .await
        .unwrap();
    // pause only once the interpreter provably holds the state
    for _ in 0..1000 {
        if seen.lock().unwrap().contains("ready") {
            break;
        }
        crate::flavor::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        seen.lock().unwrap().contains("ready"),
        "python did not start"
    );
    sb.pause_with(PauseOptions::new().wait(true)).await.unwrap();
    let status_while_paused = sb.get_info().await.unwrap().status;
    assert_eq!(status_while_paused, SandboxStatus::Paused);
    sb.resume().await.unwrap();
    let status_after_resume = sb.get_info().await.unwrap().status;
    assert_eq!(status_after_resume, SandboxStatus::Active);
    session.write_stdin("print(x + 1)\n").await.unwrap();
    session.close_stdin().await.unwrap();
    let r = session.wait().await.unwrap();
    assert!(r.stdout.contains("42"), "state lost across pause: {r:?}");
    assert_eq!(r.exit_code, 0);
    sb.kill().await.unwrap();
}

#[dual]
pub async fn pause_wait_and_conflicts() {
    local_only!("the local backend (request journal, faults, restarts)");
    let server = common::server();
    let sb = make(&server, "pw").await;
    // resume of an active sandbox is a conflict
    let err = sb.resume().await.unwrap_err();
    assert!(matches!(err, Error::Conflict(_)), "{err:?}");
    assert_eq!(err.status_code(), Some(409));
    // the default pause returns once accepted and asks the server not to wait
    server.clear_requests();
    sb.pause().await.unwrap();
    let req = server
        .requests()
        .into_iter()
        .find(|r| r.path.ends_with("/pause"))
        .unwrap();
    assert_eq!(req.header("prefer"), Some("respond-async"));
    // resume while the pause may still be landing: waits, then resumes
    sb.resume().await.unwrap();
    let status_after_resume = sb.get_info().await.unwrap().status;
    assert_eq!(status_after_resume, SandboxStatus::Active);
    // pausing a paused sandbox is a conflict
    sb.pause_with(
        PauseOptions::new()
            .wait(true)
            .timeout(Duration::from_secs(60)),
    )
    .await
    .unwrap();
    let err = sb
        .pause_with(PauseOptions::new().wait(true))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Conflict(_)), "{err:?}");
    sb.kill().await.unwrap();
}

#[dual]
pub async fn secret_bindings() {
    let server = common::target();
    let sb = make(&server, "sec").await;
    // binding a secret that does not exist is a 404
    let err = sb
        .attach_secret("ANTHROPIC_API_KEY", "anthropic-prod")
        .await
        .unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
    crate::flavor::Secret::create_with_config(
        &common::config(&server),
        superserve::SecretCreateOptions::new("anthropic-prod", "sk-ant-x").provider("anthropic"),
    )
    .await
    .unwrap();
    sb.attach_secret("ANTHROPIC_API_KEY", "anthropic-prod")
        .await
        .unwrap();
    let info = sb.get_info().await.unwrap();
    let bindings = info.secrets.unwrap_or_default();
    assert_eq!(bindings.len(), 1);
    assert_eq!(bindings[0].env_key, "ANTHROPIC_API_KEY");
    assert_eq!(bindings[0].secret_name, "anthropic-prod");
    sb.detach_secret("ANTHROPIC_API_KEY").await.unwrap();
    let no_bindings = sb.get_info().await.unwrap().secrets.is_none();
    assert!(no_bindings);
    let err = sb.detach_secret("ANTHROPIC_API_KEY").await.unwrap_err();
    assert!(err.is_not_found(), "detach does not swallow 404: {err:?}");
    let empty_env_key = sb.attach_secret("", "x").await;
    let rejected_locally = matches!(empty_env_key, Err(Error::InvalidInput { .. }));
    assert!(rejected_locally, "{empty_env_key:?}");
    sb.kill().await.unwrap();
}

#[dual]
pub async fn network_log_paging_empty() {
    let server = common::target();
    let sb = make(&server, "net").await;
    let page = sb
        .get_network_log(
            NetworkLogOptions::new()
                .verdict(NetworkVerdict::Blocked)
                .limit(100),
        )
        .await
        .unwrap();
    assert!(page.events.is_empty());
    assert!(!page.has_more);
    if let Some(local) = server.local() {
        let req = local
            .requests()
            .into_iter()
            .find(|r| r.path.ends_with("/network"))
            .unwrap();
        assert_eq!(req.query, "limit=100&verdict=blocked");
    }
    sb.kill().await.unwrap();
}

#[dual]
pub async fn authentication_and_not_found() {
    local_only!("the local backend (request journal, faults, restarts)");
    let server = common::server();
    let bad = superserve::Config::builder()
        .api_key("ss_live_wrongwrongwrongwrongwrongwrongwr")
        .base_url(server.base_url())
        .sandbox_url(server.sandbox_url())
        .build()
        .unwrap();
    let err = Sandbox::list_with_config(&bad, ListOptions::new())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Authentication(_)), "{err:?}");
    assert_eq!(err.status_code(), Some(401));
    assert_eq!(err.code(), Some("auth_failed"));
    assert!(!format!("{err} {err:?}").contains("wrongwrong"));

    let config = common::config(&server);
    let err = Sandbox::connect_with_config(&config, "00000000-0000-4000-8000-000000000000")
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotFound(_)), "{err:?}");
    assert_eq!(err.code(), Some("not_found"));
    let err = Sandbox::update_by_id_with_config(
        &config,
        "00000000-0000-4000-8000-000000000000",
        UpdateOptions::new().replace_metadata([("a", "b")]),
    )
    .await
    .unwrap_err();
    assert!(err.is_not_found());

    // no key at all: a typed error before any request
    let err = superserve::Config::builder()
        .base_url(server.base_url())
        .build();
    if std::env::var("SUPERSERVE_API_KEY").is_err() {
        let err = err.unwrap_err();
        assert!(matches!(err, Error::Config { .. }), "{err:?}");
        assert_eq!(err.status_code(), None);
    }
}

#[dual]
pub async fn request_shapes() {
    local_only!("the local backend (request journal, faults, restarts)");
    let server = common::server();
    let config = common::config(&server);
    let sb = Sandbox::create_with_config(
        &config,
        CreateOptions::new("shape")
            .metadata("env", "prod")
            .network(NetworkConfig::new().allow_out(["api.openai.com"])),
    )
    .await
    .unwrap();
    sb.files().write("/home/a b.txt", "x").await.unwrap();
    let reqs = server.requests();
    let create = &reqs[0];
    assert_eq!(
        (create.method.as_str(), create.path.as_str()),
        ("POST", "/sandboxes")
    );
    assert_eq!(create.header("x-api-key"), Some(server.api_key()));
    assert_eq!(create.header("content-type"), Some("application/json"));
    assert!(create.header("x-access-token").is_none());
    let body: serde_json::Value = serde_json::from_slice(&create.body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"name": "shape", "metadata": {"env": "prod"},
            "network": {"allow_out": ["api.openai.com"], "deny_out": null}})
    );
    let write = reqs
        .iter()
        .find(|r| r.path == "/files" && r.method == "POST")
        .expect("file write");
    assert_eq!(write.query, "path=%2Fhome%2Fa%20b.txt");
    assert_eq!(
        write.header("content-type"),
        Some("application/octet-stream")
    );
    assert_eq!(write.header("x-superserve-sandbox-id"), Some(sb.id()));
    assert!(write.header("x-access-token").is_some());
    assert!(
        write.header("x-api-key").is_none(),
        "the API key must never reach the data plane"
    );
    assert!(write
        .header("user-agent")
        .is_some_and(|ua| ua.starts_with("superserve-rust/")));
    sb.kill().await.unwrap();
    let del = server.requests().pop().unwrap();
    assert_eq!(del.method, "DELETE");
    assert_eq!(del.path, format!("/sandboxes/{}", sb.id()));
}
