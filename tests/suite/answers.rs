//! Right answers where a new user got wrong or surprising ones: a command that never started,
//! the default timeout, a killed handle, error codes, cleanup, conveniences.

use std::time::{Duration, SystemTime};

use superserve::local::{Fault, FaultRule};
use superserve::{
    CreateOptions, Error, ExecEvent, NetworkLogOptions, PauseOptions, RetryPolicy, RunOptions,
    Timeouts, UpdateOptions,
};

use super::{count, make};
use crate::common;
use crate::dual;
use crate::flavor::{Next as _, Sandbox};

fn assert_start_failure(err: &Error) {
    assert!(matches!(err, Error::CommandStart { .. }), "{err:?}");
    assert_eq!(err.code(), Some("exec_failed"), "{err:?}");
    assert!(err.to_string().contains("/no/such/dir"), "{err}");
}

#[dual]
pub async fn a_command_that_cannot_start_is_the_same_error_on_every_path() {
    let target = common::target();
    let sb = make(&target, "no-start").await;
    let opts = || RunOptions::new().cwd("/no/such/dir");
    // one-shot JSON
    let err = sb.commands().run_with("pwd", opts()).await.unwrap_err();
    assert_start_failure(&err);
    // streamed, with a callback
    let err = sb
        .commands()
        .run_with("pwd", opts().on_stdout(|_: &str| {}))
        .await
        .unwrap_err();
    assert_start_failure(&err);
    // events: the stream's last item
    let mut events = sb.commands().run_stream("pwd", opts()).await.unwrap();
    let mut last = None;
    while let Some(item) = events.next().await {
        last = Some(item);
    }
    let err = last.expect("an item").unwrap_err();
    assert_start_failure(&err);
    // session
    let session = sb.commands().spawn_with("pwd", opts()).await.unwrap();
    let err = session.wait().await.unwrap_err();
    assert_start_failure(&err);
    sb.kill().await.unwrap();
}

#[dual]
pub async fn the_default_timeout_keeps_the_output() {
    let target = common::target();
    let config = common::config(&target)
        .to_builder()
        .timeouts(Timeouts::default().command(Duration::from_secs(2)))
        .build()
        .unwrap();
    let sb = Sandbox::create_with_config(&config, CreateOptions::new("default-timeout"))
        .await
        .unwrap();
    // no timeout in the options: the configured default is sent, the server ends the
    // command and answers with the output so far
    let r = sb
        .commands()
        .run("echo before; sleep 30; echo after")
        .await
        .unwrap();
    assert_eq!(r.exit_code, 124, "{r:?}");
    assert!(
        r.stdout.contains("before") && !r.stdout.contains("after"),
        "{r:?}"
    );
    let r = sb
        .commands()
        .run_with(
            "echo before; sleep 30; echo after",
            RunOptions::new().on_stderr(|_: &str| {}),
        )
        .await
        .unwrap();
    assert_eq!(r.exit_code, 124, "{r:?}");
    assert!(r.stdout.contains("before"), "{r:?}");
    if let Some(local) = target.local() {
        let sent: Vec<serde_json::Value> = local
            .requests()
            .iter()
            .filter(|r| r.path.starts_with("/exec"))
            .map(|r| serde_json::from_slice(&r.body).unwrap())
            .collect();
        assert_eq!(sent.len(), 2);
        assert!(sent.iter().all(|b| b["timeout_s"] == 2), "{sent:?}");
    }
    sb.kill().await.unwrap();
}

#[dual]
pub async fn a_killed_handle_refuses_everything_before_sending() {
    local_only!("the request journal");
    let server = common::server();
    let sb = make(&server, "killed").await;
    let commands = sb.commands();
    let files = sb.files();
    sb.kill().await.unwrap();
    server.clear_requests();
    let deleted = |r: Result<(), Error>, what: &str| match r {
        Err(Error::SandboxDeleted { id }) => assert_eq!(id, sb.id(), "{what}"),
        other => panic!("{what}: {other:?}"),
    };
    deleted(sb.get_info().await.map(drop), "get_info");
    deleted(
        sb.update(UpdateOptions::new().timeout_seconds(5)).await,
        "update",
    );
    deleted(sb.pause().await, "pause");
    deleted(
        sb.pause_with(PauseOptions::new().wait(true)).await,
        "pause_with",
    );
    deleted(sb.resume().await, "resume");
    deleted(sb.attach_secret("K", "s").await, "attach_secret");
    deleted(sb.detach_secret("K").await, "detach_secret");
    deleted(
        sb.get_network_log(NetworkLogOptions::new()).await.map(drop),
        "get_network_log",
    );
    deleted(commands.run("true").await.map(drop), "run");
    deleted(
        commands
            .run_with("true", RunOptions::new().on_stdout(|_: &str| {}))
            .await
            .map(drop),
        "run_with",
    );
    deleted(
        commands
            .run_stream("true", RunOptions::new())
            .await
            .map(drop),
        "run_stream",
    );
    deleted(commands.spawn("cat").await.map(drop), "spawn");
    deleted(files.write("/x", "y").await, "write");
    deleted(files.read("/x").await.map(drop), "read");
    deleted(files.read_text("/x").await.map(drop), "read_text");
    deleted(files.open_read("/x").await.map(drop), "open_read");
    deleted(files.download_dir("/").await.map(drop), "download_dir");
    assert!(
        server.requests().is_empty(),
        "nothing is sent for a killed handle: {:?}",
        server.requests()
    );
    // a second kill is a no-op
    sb.kill().await.unwrap();
}

#[dual]
pub async fn data_plane_errors_carry_codes() {
    let target = common::target();
    let sb = make(&target, "codes").await;
    let err = sb.files().read("/no/such/file").await.unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
    assert_eq!(err.code(), Some("not_found"));
    let err = sb
        .commands()
        .run_with("true", RunOptions::new().cwd("/no/such/dir"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("exec_failed"));
    // the sandbox deleted behind the handle's back
    Sandbox::kill_by_id_with_config(&common::config(&target), sb.id())
        .await
        .unwrap();
    let err = sb.files().read("/etc/hostname").await.unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
    assert_eq!(err.code(), Some("not_found"));
}

#[dual]
pub async fn check_turns_a_failed_command_into_an_error() {
    let target = common::target();
    let sb = make(&target, "check").await;
    let r = sb.commands().run("echo oops >&2; exit 3").await.unwrap();
    assert!(!r.success());
    match r.check() {
        Err(Error::CommandFailed {
            exit_code,
            stderr_tail,
        }) => {
            assert_eq!(exit_code, 3);
            assert_eq!(stderr_tail, "oops\n");
        }
        other => panic!("{other:?}"),
    }
    let ok = sb
        .commands()
        .run("echo fine")
        .await
        .unwrap()
        .check()
        .unwrap();
    assert!(ok.success());
    assert_eq!(ok.stdout, "fine\n");
    sb.kill().await.unwrap();
}

#[dual]
pub async fn kill_on_drop_kills_and_into_inner_keeps() {
    let target = common::target();
    let config = common::config(&target);
    let id = {
        let sb = make(&target, "guarded").await.kill_on_drop();
        let r = sb.commands().run("echo in-guard").await.unwrap();
        assert_eq!(r.stdout, "in-guard\n");
        sb.id().to_owned()
    };
    let err = Sandbox::connect_with_config(&config, &id)
        .await
        .unwrap_err();
    assert!(err.is_not_found(), "killed when the guard dropped: {err:?}");

    let kept = make(&target, "kept").await.kill_on_drop().into_inner();
    let again = Sandbox::connect_with_config(&config, kept.id())
        .await
        .unwrap();
    assert_eq!(again.id(), kept.id());
    let explicit = kept.kill_on_drop();
    explicit.kill().await.unwrap();
    let err = again.get_info().await.unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
}

#[dual]
pub async fn fault_rules_target_the_nth_request() {
    local_only!("the local backend's fault injection");
    let server = common::server();
    let config = server
        .config()
        .to_builder()
        .retry_policy(RetryPolicy::none())
        .build()
        .unwrap();
    assert_eq!(config.base_url(), server.base_url());
    assert_eq!(config.retry_policy().max_attempts, 1);
    let sb = Sandbox::create_with_config(&config, CreateOptions::new("nth"))
        .await
        .unwrap();
    let path = format!("/sandboxes/{}", sb.id());
    server.inject(FaultRule::new("GET", &path).nth(2));
    let first = sb.get_info().await;
    assert!(first.is_ok(), "the first request passes: {first:?}");
    let err = sb.get_info().await.unwrap_err();
    assert_eq!(err.status_code(), Some(503), "the second is hit: {err:?}");
    let third = sb.get_info().await;
    assert!(third.is_ok(), "and only the second: {third:?}");
    server.inject(
        FaultRule::new("GET", &path)
            .fault(Fault::Status {
                status: 502,
                code: "bad_gateway".into(),
            })
            .skip(1)
            .times(2),
    );
    let outcomes: Vec<Option<u16>> = {
        let mut v = Vec::new();
        for _ in 0..4 {
            v.push(sb.get_info().await.err().and_then(|e| e.status_code()));
        }
        v
    };
    assert_eq!(outcomes, vec![None, Some(502), Some(502), None]);
    assert_eq!(
        count(&server, "GET", &path),
        7,
        "no retries with the new policy"
    );
    sb.kill().await.unwrap();
}

#[dual]
pub async fn network_log_filters_take_system_times() {
    local_only!("the request journal");
    let server = common::server();
    let sb = make(&server, "times").await;
    let since = SystemTime::UNIX_EPOCH + Duration::from_millis(1_767_323_045_500);
    let page = sb
        .get_network_log(
            NetworkLogOptions::new()
                .since(since)
                .before_time(SystemTime::now()),
        )
        .await
        .unwrap();
    assert!(page.events.is_empty());
    let req = server
        .requests()
        .into_iter()
        .find(|r| r.path.ends_with("/network"))
        .unwrap();
    assert!(
        req.query.contains("since=2026-01-02T03%3A04%3A05.5Z"),
        "{}",
        req.query
    );
    assert!(req.query.contains("before=20"), "{}", req.query);
    sb.kill().await.unwrap();
}

#[dual]
pub async fn exec_events_from_a_session_and_a_stream_agree() {
    let target = common::target();
    let sb = make(&target, "agree").await;
    let cmd = "printf 'a\\nb\\n'; exit 2";
    let mut from_stream = Vec::new();
    let mut events = sb
        .commands()
        .run_stream(cmd, RunOptions::new())
        .await
        .unwrap();
    while let Some(item) = events.next().await {
        from_stream.push(item.unwrap());
    }
    let session = sb.commands().spawn(cmd).await.unwrap();
    let mut from_session = Vec::new();
    let mut events = session.events();
    while let Some(item) = events.next().await {
        from_session.push(item.unwrap());
    }
    let text = |v: &[ExecEvent]| -> String {
        v.iter()
            .filter_map(|e| match e {
                ExecEvent::Stdout(s) => Some(s.clone()),
                _ => None,
            })
            .collect()
    };
    assert_eq!(text(&from_stream), "a\nb\n");
    assert_eq!(text(&from_session), "a\nb\n");
    assert_eq!(from_stream.last(), Some(&ExecEvent::Exit(2)));
    assert_eq!(from_session.last(), Some(&ExecEvent::Exit(2)));
    sb.kill().await.unwrap();
}

/// Everything the crate traced in this process (a global subscriber, installed once).
fn traced() -> &'static std::sync::Mutex<Vec<u8>> {
    use std::sync::{Mutex, OnceLock};
    static BUF: OnceLock<&'static Mutex<Vec<u8>>> = OnceLock::new();
    BUF.get_or_init(|| {
        let buf: &'static Mutex<Vec<u8>> = Box::leak(Box::new(Mutex::new(Vec::new())));
        struct W(&'static Mutex<Vec<u8>>);
        impl std::io::Write for W {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("superserve=trace"))
            .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
            .with_ansi(false)
            .with_writer(move || W(buf))
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("one global subscriber");
        buf
    })
}

#[dual]
pub async fn tracing_spans_never_carry_secrets() {
    local_only!("the request journal (to learn the access token)");
    let buf = traced();
    let server = common::server();
    let config = common::config(&server);
    let value = "sk-very-secret-value-123";
    let secret = crate::flavor::Secret::create_with_config(
        &config,
        superserve::SecretCreateOptions::new("traced", value)
            .hosts(["api.example.com"])
            .auth(superserve::SecretAuth::bearer()),
    )
    .await
    .unwrap();
    let sb = Sandbox::create_with_config(
        &config,
        CreateOptions::new("traced").secret("TOKEN", secret.name()),
    )
    .await
    .unwrap();
    sb.commands().run("echo $TOKEN").await.unwrap();
    sb.files().write("/tmp/t", "x").await.unwrap();
    sb.files().read("/tmp/secret-name.txt").await.unwrap_err();
    server.expire_tokens(sb.id());
    sb.commands().run("true").await.unwrap();
    let tokens: Vec<String> = server
        .requests()
        .iter()
        .filter_map(|r| {
            r.headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("x-access-token"))
                .map(|(_, v)| v.clone())
        })
        .collect();
    assert!(!tokens.is_empty());
    sb.kill().await.unwrap();
    secret.delete().await.unwrap();
    let text = String::from_utf8_lossy(&buf.lock().unwrap()).into_owned();
    for expected in [
        "sandbox.create",
        "commands.run",
        "files.write",
        "superserve.http",
        "attempt",
        "refreshing the access token",
    ] {
        assert!(text.contains(expected), "no {expected:?} in the trace");
    }
    assert!(text.contains(sb.id()), "spans carry the sandbox id");
    assert!(
        !text.contains("/tmp/secret-name.txt") && !text.contains("secret-name"),
        "query values stay out of the trace"
    );
    for leaked in [server.api_key(), value]
        .into_iter()
        .chain(tokens.iter().map(String::as_str))
    {
        assert!(!text.contains(leaked), "the trace holds a credential");
    }
}
