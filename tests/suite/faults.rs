//! Retry rules, faults and malformed answers: scripted through the local backend's fault
//! injection, or a scripted server for what no real server does on cue.

use std::time::Duration;

use superserve::local::{Fault, FaultRule};
use superserve::{Config, CreateOptions, Error, ListOptions, RetryPolicy, Timeouts, UpdateOptions};

use super::{count, make};
use crate::common::{self, Reply, Scripted};
use crate::dual;
use crate::flavor::Sandbox;

fn status(status: u16, code: &str) -> Fault {
    Fault::Status {
        status,
        code: code.to_owned(),
    }
}

#[dual]
pub async fn retries_on_transient_statuses() {
    local_only!("the local backend (request journal, faults, restarts)");
    let server = common::server();
    let config = common::config(&server);
    let sb = make(&server, "retry").await;
    let path = format!("/sandboxes/{}", sb.id());
    for (st, code) in [
        (502, "bad_gateway"),
        (503, "service_unavailable"),
        (504, "gateway_timeout"),
    ] {
        server.clear_requests();
        server.inject(
            FaultRule::new("GET", &path)
                .fault(status(st, code))
                .times(2),
        );
        let info = sb.get_info().await.unwrap();
        assert_eq!(info.id, sb.id());
        assert_eq!(
            count(&server, "GET", &path),
            3,
            "{st}: two failures then success"
        );
    }
    // 429 honours Retry-After and then succeeds
    server.clear_requests();
    server.inject(
        FaultRule::new("GET", "/sandboxes")
            .fault(Fault::RateLimited {
                retry_after_secs: 1,
            })
            .times(1),
    );
    let listed_after_retry = Sandbox::list_with_config(&config, ListOptions::new())
        .await
        .unwrap()
        .len();
    assert_eq!(listed_after_retry, 1);
    assert_eq!(count(&server, "GET", "/sandboxes"), 2);
    // exhausted: the last answer becomes the error, after exactly 3 attempts
    server.clear_requests();
    server.inject(
        FaultRule::new("GET", &path)
            .fault(status(503, "service_unavailable"))
            .times(5),
    );
    let err = sb.get_info().await.unwrap_err();
    assert!(matches!(err, Error::Server(_)), "{err:?}");
    assert_eq!(err.status_code(), Some(503));
    assert!(err.is_retryable());
    assert_eq!(count(&server, "GET", &path), 3);
    server.clear_faults();
    // 500 is not retried
    server.clear_requests();
    server.inject(FaultRule::new("GET", &path).fault(status(500, "internal_error")));
    let err = sb.get_info().await.unwrap_err();
    assert_eq!(err.status_code(), Some(500));
    assert_eq!(count(&server, "GET", &path), 1);
    // a custom policy
    let once = common::config_with_retry(&server, RetryPolicy::none());
    server.clear_requests();
    server.inject(FaultRule::new("GET", "/sandboxes").fault(status(502, "bad_gateway")));
    let failed_without_retry = Sandbox::list_with_config(&once, ListOptions::new())
        .await
        .is_err();
    assert!(failed_without_retry);
    assert_eq!(count(&server, "GET", "/sandboxes"), 1);
    sb.kill().await.unwrap();
}

#[dual]
pub async fn no_retry_for_post_and_patch() {
    local_only!("the local backend (request journal, faults, restarts)");
    let server = common::server();
    let config = common::config(&server);
    server.inject(FaultRule::new("POST", "/sandboxes").fault(status(503, "service_unavailable")));
    let err = Sandbox::create_with_config(&config, CreateOptions::new("x"))
        .await
        .unwrap_err();
    assert_eq!(err.status_code(), Some(503));
    assert_eq!(count(&server, "POST", "/sandboxes"), 1);
    server.inject(
        FaultRule::new("POST", "/sandboxes").fault(Fault::RateLimited {
            retry_after_secs: 0,
        }),
    );
    let err = Sandbox::create_with_config(&config, CreateOptions::new("x"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::RateLimit { .. }));
    assert_eq!(count(&server, "POST", "/sandboxes"), 2);
    let sb = make(&server, "patch").await;
    let path = format!("/sandboxes/{}", sb.id());
    server.inject(FaultRule::new("PATCH", &path).fault(status(502, "bad_gateway")));
    let err = sb
        .update(UpdateOptions::new().replace_metadata([("a", "b")]))
        .await
        .unwrap_err();
    assert_eq!(err.status_code(), Some(502));
    assert_eq!(count(&server, "PATCH", &path), 1);
    sb.kill().await.unwrap();
}

#[dual]
pub async fn delete_conflict_retried_up_to_eleven() {
    local_only!("the local backend (request journal, faults, restarts)");
    let server = common::server();
    let config = common::config_with_retry(
        &server,
        RetryPolicy::default().base_delay(Duration::from_millis(5)),
    );
    let sb = Sandbox::create_with_config(&config, CreateOptions::new("del"))
        .await
        .unwrap();
    let path = format!("/sandboxes/{}", sb.id());
    // 409 then 503 then 409 ...: past the third attempt because a 409 was seen
    server.inject(
        FaultRule::new("DELETE", &path)
            .fault(status(409, "conflict"))
            .times(3),
    );
    server.inject(
        FaultRule::new("DELETE", &path)
            .fault(status(503, "service_unavailable"))
            .times(2),
    );
    sb.kill().await.unwrap();
    assert_eq!(count(&server, "DELETE", &path), 6);
    let still_refused = sb.get_info().await.is_err();
    assert!(still_refused);
    // eleven attempts at most
    let sb = Sandbox::create_with_config(&config, CreateOptions::new("del2"))
        .await
        .unwrap();
    let path = format!("/sandboxes/{}", sb.id());
    server.inject(
        FaultRule::new("DELETE", &path)
            .fault(status(409, "conflict"))
            .times(20),
    );
    let err = sb.kill().await.unwrap_err();
    assert!(matches!(err, Error::Conflict(_)));
    assert_eq!(count(&server, "DELETE", &path), 11);
    server.clear_faults();
    // a failed kill can be retried
    sb.kill().await.unwrap();
    // other deletes do not retry 409
    let sb = Sandbox::create_with_config(&config, CreateOptions::new("sec"))
        .await
        .unwrap();
    crate::flavor::Secret::create_with_config(
        &config,
        superserve::SecretCreateOptions::new("s", "v").provider("openai"),
    )
    .await
    .unwrap();
    sb.attach_secret("K", "s").await.unwrap();
    let sp = format!("/sandboxes/{}/secrets/K", sb.id());
    server.inject(
        FaultRule::new("DELETE", &sp)
            .fault(status(409, "conflict"))
            .times(3),
    );
    let refused_without_retry = sb.detach_secret("K").await.is_err();
    assert!(refused_without_retry);
    assert_eq!(count(&server, "DELETE", &sp), 1);
    sb.kill().await.unwrap();
}

#[dual]
pub async fn dropped_connection_retried_for_get_only() {
    local_only!("the local backend (request journal, faults, restarts)");
    let server = common::server();
    let config = common::config(&server);
    let sb = make(&server, "drop").await;
    let path = format!("/sandboxes/{}", sb.id());
    server.inject(FaultRule::new("GET", &path).fault(Fault::DropConnection));
    let fetched_id = sb.get_info().await.unwrap().id;
    assert_eq!(fetched_id, sb.id());
    assert_eq!(count(&server, "GET", &path), 2);
    server.inject(FaultRule::new("POST", "/sandboxes").fault(Fault::DropConnection));
    let before = count(&server, "POST", "/sandboxes");
    let err = Sandbox::create_with_config(&config, CreateOptions::new("x"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Connection { .. }), "{err:?}");
    assert!(err.is_retryable());
    assert_eq!(count(&server, "POST", "/sandboxes"), before + 1);
    sb.kill().await.unwrap();
}

#[dual]
pub async fn rate_limit_error_carries_code_and_retry_after() {
    local_only!("the local backend (request journal, faults, restarts)");
    let server = common::server();
    let config = common::config(&server);
    server.inject(
        FaultRule::new("GET", "/sandboxes")
            .fault(Fault::RateLimited {
                retry_after_secs: 2,
            })
            .times(3),
    );
    let err = Sandbox::list_with_config(&config, ListOptions::new())
        .await
        .unwrap_err();
    match &err {
        Error::RateLimit { error, retry_after } => {
            assert_eq!(error.status, 429);
            assert_eq!(error.code.as_deref(), Some("rate_limited"));
            assert_eq!(*retry_after, Some(Duration::from_secs(2)));
        }
        other => panic!("expected a rate-limit error, got {other:?}"),
    }
    assert_eq!(err.code(), Some("rate_limited"));
    assert_eq!(count(&server, "GET", "/sandboxes"), 3);
}

#[dual]
pub async fn malformed_responses_are_decode_errors() {
    let s = Scripted::start(vec![
        Reply::json(200, "{not json"),
        Reply::json(200, r#"[{"id":"x"}]"#),
        Reply::json(
            201,
            r#"{"id":"a","status":"active","created_at":"2026-01-01T00:00:00Z"}"#,
        ),
        Reply::json(
            200,
            r#"[{"id":"a","status":"hibernating","created_at":"2026-01-01T00:00:00Z","preview_access":"team"}]"#,
        ),
    ]);
    let config = s.config();
    let err = Sandbox::list_with_config(&config, ListOptions::new())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Decode { .. }), "{err:?}");
    let err = Sandbox::list_with_config(&config, ListOptions::new())
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Decode { .. }),
        "missing fields: {err:?}"
    );
    let err = Sandbox::create_with_config(&config, CreateOptions::new("x"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("access_token"), "{err}");
    // an unknown enum value is not an error
    let list = Sandbox::list_with_config(&config, ListOptions::new())
        .await
        .unwrap();
    assert_eq!(list[0].status.as_str(), "hibernating");
    assert_eq!(list[0].preview_access.as_str(), "team");
}

#[dual]
pub async fn html_error_page_is_typed() {
    let s = Scripted::start(vec![
        Reply::text(
            404,
            "text/html",
            "<html><body><h1>404 Not Found</h1></body></html>",
        ),
        Reply::text(418, "text/plain", ""),
        Reply::json(
            400,
            r#"{"error":{"code":"bad_request","message":"name too long"}}"#,
        ),
        Reply::json(404, r#"{"error":"file not found"}"#),
    ]);
    let config = s.config();
    let err = Sandbox::connect_with_config(&config, "x")
        .await
        .unwrap_err();
    assert!(err.is_not_found());
    assert!(err.to_string().contains("404 Not Found"), "{err}");
    let err = Sandbox::connect_with_config(&config, "x")
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Api(_)), "{err:?}");
    assert_eq!(err.status_code(), Some(418));
    let err = Sandbox::connect_with_config(&config, "x")
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Validation(_)));
    assert_eq!(err.code(), Some("bad_request"));
    let err = Sandbox::connect_with_config(&config, "x")
        .await
        .unwrap_err();
    assert_eq!(err.api_error().unwrap().message, "file not found");
    let seen = s.requests();
    assert_eq!(seen.len(), 4, "4xx answers are not retried");
    assert_eq!(seen[0].target, "/sandboxes/x/activate");
    assert_eq!(
        seen[0].header("x-api-key"),
        Some("ss_live_scripted0000000000000000000000")
    );
}

#[dual]
pub async fn timeouts_are_typed() {
    let s = Scripted::start(vec![Reply::Hang, Reply::Hang]);
    let config = Config::builder()
        .api_key("ss_live_scripted0000000000000000000000")
        .base_url(&s.url)
        .timeouts(Timeouts::default().request(Duration::from_millis(300)))
        .build()
        .unwrap();
    let err = Sandbox::list_with_config(&config, ListOptions::new())
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    assert!(!err.is_retryable());
    assert_eq!(s.requests().len(), 1, "timeouts are never retried");
}

#[dual]
pub async fn unreachable_server_is_connection_error() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let config = Config::builder()
        .api_key("ss_live_scripted0000000000000000000000")
        .base_url(format!("http://127.0.0.1:{port}"))
        .retry_policy(RetryPolicy::default().base_delay(Duration::from_millis(1)))
        .build()
        .unwrap();
    let err = Sandbox::list_with_config(&config, ListOptions::new())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Connection { .. }), "{err:?}");
    assert!(std::error::Error::source(&err).is_some());
    let err = Config::builder()
        .api_key("k")
        .base_url("ftp://x")
        .build()
        .unwrap_err();
    assert!(matches!(err, Error::Config { .. }), "{err:?}");
}

#[dual]
pub async fn connect_waits_out_sandbox_pausing() {
    local_only!("the local backend (request journal, faults, restarts)");
    let server = common::server();
    let config = common::config(&server);
    let sb = make(&server, "pausing").await;
    let path = format!("/sandboxes/{}/activate", sb.id());
    server.inject(FaultRule::new("POST", &path).fault(status(409, "sandbox_pausing")));
    let again = Sandbox::connect_with_config(&config, sb.id())
        .await
        .unwrap();
    assert_eq!(again.id(), sb.id());
    assert_eq!(count(&server, "POST", &path), 2, "one 409, then the retry");
    // any other conflict is not retried
    server.inject(FaultRule::new("POST", &path).fault(status(409, "conflict")));
    let err = Sandbox::connect_with_config(&config, sb.id())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("conflict"));
    assert_eq!(count(&server, "POST", &path), 3);
    sb.kill().await.unwrap();
}

#[dual]
pub async fn expired_routing_hint_refreshes_first() {
    // {"e":1}: expired long ago; the fresh hint expires far in the future
    let fresh = "v1.eyJlIjo5OTk5OTk5OTk5OX0.sig";
    let s = Scripted::start(vec![
        Reply::sandbox(201, "sb-1", "t1", Some("v1.eyJlIjoxfQ.sig")),
        Reply::sandbox(200, "sb-1", "t2", Some(fresh)),
        Reply::json(200, r#"{"stdout":"ok\n","stderr":"","exit_code":0}"#),
    ]);
    let sb = Sandbox::create_with_config(&s.config(), CreateOptions::new("hint"))
        .await
        .unwrap();
    let r = sb.commands().run("echo ok").await.unwrap();
    assert_eq!(r.stdout, "ok\n");
    let seen = s.requests();
    let targets: Vec<&str> = seen.iter().map(|r| r.target.as_str()).collect();
    assert_eq!(targets, ["/sandboxes", "/sandboxes/sb-1/activate", "/exec"]);
    assert_eq!(seen[2].header("x-access-token"), Some("t2"));
    assert_eq!(seen[2].header("x-superserve-routing-hint"), Some(fresh));
    assert!(
        seen[1].header("x-superserve-routing-hint").is_none(),
        "never sent to the control plane"
    );
}

#[dual]
pub async fn pause_wait_polls_until_paused() {
    local_only!("the local backend (request journal, faults, restarts)");
    let sb_json = |status: &str| sandbox_json("sb-p", status);
    let s = Scripted::start(vec![
        Reply::sandbox(201, "sb-p", "t1", None),
        // the server accepted the pause but has not finished it
        Reply::json(202, r#"{"status":"pausing"}"#),
        Reply::json(200, &sb_json("pausing")),
        Reply::json(200, &sb_json("paused")),
    ]);
    let sb = Sandbox::create_with_config(&s.config(), CreateOptions::new("p"))
        .await
        .unwrap();
    sb.pause_with(
        superserve::PauseOptions::new()
            .wait(true)
            .poll_interval(Duration::from_millis(10)),
    )
    .await
    .unwrap();
    let seen = s.requests();
    assert_eq!(
        s.calls(),
        vec![
            "POST /sandboxes",
            "POST /sandboxes/sb-p/pause",
            "GET /sandboxes/sb-p",
            "GET /sandboxes/sb-p",
        ]
    );
    // waiting sends no Prefer header: the server decides whether to answer early
    assert!(seen[1].headers.iter().all(|(k, _)| k != "prefer"));
}

#[dual]
pub async fn resume_waits_out_a_pause_in_progress() {
    let sb_json = |status: &str| sandbox_json("sb-r", status);
    let conflict = r#"{"error":{"code":"conflict","message":"sandbox is pausing"}}"#;
    let s = Scripted::start(vec![
        Reply::sandbox(201, "sb-r", "t1", None),
        Reply::json(409, conflict),
        Reply::json(200, &sb_json("pausing")),
        Reply::json(200, &sb_json("pausing")),
        Reply::json(200, &sb_json("paused")),
        Reply::json(
            200,
            r#"{"id":"sb-r","status":"active","access_token":"t2"}"#,
        ),
        // a conflict while active is the caller's: no waiting, no retry
        Reply::json(409, conflict),
        Reply::json(200, &sb_json("active")),
    ]);
    let sb = Sandbox::create_with_config(&s.config(), CreateOptions::new("r"))
        .await
        .unwrap();
    sb.resume().await.unwrap();
    let err = sb.resume().await.unwrap_err();
    assert!(matches!(err, Error::Conflict(_)), "{err:?}");
    assert_eq!(
        s.calls(),
        vec![
            "POST /sandboxes",
            "POST /sandboxes/sb-r/resume",
            "GET /sandboxes/sb-r",
            "GET /sandboxes/sb-r",
            "GET /sandboxes/sb-r",
            "POST /sandboxes/sb-r/resume",
            "POST /sandboxes/sb-r/resume",
            "GET /sandboxes/sb-r",
        ]
    );
}

/// A sandbox object as the control plane returns it.
fn sandbox_json(id: &str, status: &str) -> String {
    format!(r#"{{"id":"{id}","status":"{status}","created_at":"2026-01-01T00:00:00Z"}}"#)
}
