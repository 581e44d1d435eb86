//! Data plane: commands, streamed output, sessions, files, token refresh, backend isolation.

use std::sync::{Arc, Mutex};

use superserve::local::{Fault, FaultRule, LocalServer};
use superserve::{CreateOptions, Error, PauseOptions, RunOptions, SandboxStatus};

use super::{count, make};
use crate::common;
use crate::dual;
use crate::flavor::Sandbox;

#[dual]
pub async fn run_basics() {
    let server = common::target();
    let sb = Sandbox::create_with_config(
        &common::config(&server),
        CreateOptions::new("run").env_var("GREETING", "hello from env"),
    )
    .await
    .unwrap();
    let r = sb.commands().run("echo hello").await.unwrap();
    assert_eq!(r.stdout, "hello\n");
    assert_eq!(r.exit_code, 0);
    assert!(!r.truncated);
    let r = sb.commands().run("echo oops >&2; exit 3").await.unwrap();
    assert_eq!(r.exit_code, 3, "a non-zero exit is a result");
    assert_eq!(r.stderr, "oops\n");
    let r = sb
        .commands()
        .run_with(
            "mkdir -p /work && cd . && pwd && echo $GREETING && echo $CI",
            RunOptions::new().cwd("/").env("CI", "1"),
        )
        .await
        .unwrap();
    assert_eq!(r.stdout, "/\nhello from env\n1\n");
    let r = sb
        .commands()
        .run_with("pwd", RunOptions::new().cwd("/work"))
        .await
        .unwrap();
    assert_eq!(r.stdout.trim(), "/work");
    let blank_run = sb.commands().run("  ").await;
    let rejected_locally = matches!(blank_run, Err(Error::InvalidInput { .. }));
    assert!(rejected_locally, "{blank_run:?}");
    sb.kill().await.unwrap();
}

#[dual]
pub async fn run_streamed_with_callbacks() {
    local_only!("the local backend (request journal, faults, restarts)");
    let server = common::server();
    let sb = make(&server, "stream").await;
    let out = Arc::new(Mutex::new(Vec::<String>::new()));
    let err = Arc::new(Mutex::new(String::new()));
    let (o, e) = (out.clone(), err.clone());
    let r = sb
        .commands()
        .run_with(
            "for i in 1 2 3; do echo line-$i; sleep 0.1; done; printf 'h\\303\\251llo \\342\\202\\254\\n'; echo warn >&2; exit 7",
            RunOptions::new()
                .on_stdout(move |s: &str| o.lock().unwrap().push(s.to_owned()))
                .on_stderr(move |s: &str| e.lock().unwrap().push_str(s)),
        )
        .await
        .unwrap();
    assert_eq!(r.exit_code, 7);
    assert_eq!(r.stdout, "line-1\nline-2\nline-3\nhéllo €\n");
    assert_eq!(out.lock().unwrap().concat(), r.stdout);
    assert!(
        out.lock().unwrap().len() >= 3,
        "output must arrive in chunks as it is produced"
    );
    assert_eq!(*err.lock().unwrap(), "warn\n");
    assert_eq!(r.stderr, "warn\n");
    assert!(!r.truncated);
    assert_eq!(count(&server, "POST", "/exec/stream"), 1);
    assert_eq!(count(&server, "POST", "/exec"), 0);
    sb.kill().await.unwrap();
}

#[dual]
pub async fn stream_cut_before_finished_is_error() {
    local_only!("the local backend's fault injection");
    let server = common::server();
    let sb = make(&server, "cut").await;
    server
        .inject(FaultRule::new("POST", "/exec/stream").fault(Fault::CutStream { after_events: 1 }));
    let got = Arc::new(Mutex::new(String::new()));
    let g = got.clone();
    let err = sb
        .commands()
        .run_with(
            "echo first; sleep 0.2; echo second",
            RunOptions::new().on_stdout(move |s: &str| g.lock().unwrap().push_str(s)),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Stream { .. }), "{err:?}");
    assert!(
        err.to_string().contains("without a finished event"),
        "{err}"
    );
    assert_eq!(*got.lock().unwrap(), "first\n");
    sb.kill().await.unwrap();
}

#[dual]
pub async fn stream_idle_timeout() {
    local_only!("the local backend (request journal, faults, restarts)");
    // A server that sends one event and then nothing: the idle timeout (timeout_s + 5 s)
    // fires; the call does not hang.
    let scripted = common::Scripted::start(vec![
        common::Reply::sandbox(201, "sb-1", "t", None),
        common::Reply::StreamThenHang {
            head: vec![("content-type", "text/event-stream".into())],
            chunks: vec!["data: {\"stdout\":\"partial\"}\n\n".into()],
        },
    ]);
    let sb = Sandbox::create_with_config(&scripted.config(), CreateOptions::new("idle"))
        .await
        .unwrap();
    let got = Arc::new(Mutex::new(String::new()));
    let g = got.clone();
    let err = sb
        .commands()
        .run_with(
            "sleep 100",
            RunOptions::new()
                .timeout_seconds(1)
                .on_stdout(move |s: &str| g.lock().unwrap().push_str(s)),
        )
        .await
        .unwrap_err();
    assert_eq!(
        err.timeout_kind(),
        Some(superserve::TimeoutKind::StreamIdle),
        "{err:?}"
    );
    assert_eq!(*got.lock().unwrap(), "partial");
}

#[dual]
pub async fn spawn_stdin_eof_and_signal() {
    let server = common::target();
    let sb = make(&server, "spawn").await;
    let out = Arc::new(Mutex::new(String::new()));
    let o = out.clone();
    let s = sb
        .commands()
        .spawn_with(
            "cat; echo done >&2",
            RunOptions::new().on_stdout(move |s: &str| o.lock().unwrap().push_str(s)),
        )
        .await
        .unwrap();
    let big = "0123456789abcdef".repeat(8 * 1024); // 128 KiB: several 32 KiB frames
    s.write_stdin("hello\n").await.unwrap();
    s.write_stdin(big.as_bytes()).await.unwrap();
    s.close_stdin().await.unwrap();
    let r = s.wait().await.unwrap();
    assert_eq!(r.stdout, format!("hello\n{big}"));
    assert_eq!(r.stderr, "done\n");
    assert_eq!(r.exit_code, 0);
    assert_eq!(*out.lock().unwrap(), r.stdout);
    assert!(s.is_finished());
    // writes after the end are no-ops
    s.write_stdin("ignored").await.unwrap();
    s.close().await.unwrap();

    let ready = Arc::new(Mutex::new(String::new()));
    let r2 = ready.clone();
    let s = sb
        .commands()
        .spawn_with(
            "trap 'echo got-term; exit 42' TERM; echo ready; while true; do sleep 0.05; done",
            RunOptions::new().on_stdout(move |s: &str| r2.lock().unwrap().push_str(s)),
        )
        .await
        .unwrap();
    super::wait_for(&ready, "ready").await;
    s.kill().await.unwrap();
    let r = s.wait().await.unwrap();
    assert_eq!(r.exit_code, 42, "{r:?}");
    assert!(r.stdout.contains("got-term"));

    // close() of a running session ends it
    let s = sb
        .commands()
        .spawn_with("sleep 1000", RunOptions::new())
        .await
        .unwrap();
    s.close().await.unwrap();
    let err = s.wait().await.unwrap_err();
    assert!(err.to_string().contains("session closed"), "{err}");
    sb.kill().await.unwrap();
}

#[dual]
pub async fn session_cut_midway_is_error() {
    local_only!("the local backend's fault injection");
    let server = common::server();
    let sb = make(&server, "cutws").await;
    server
        .inject(FaultRule::new("GET", "/exec/connect").fault(Fault::CutStream { after_events: 1 }));
    let s = sb
        .commands()
        .spawn_with("echo one; sleep 0.3; echo two; sleep 5", RunOptions::new())
        .await
        .unwrap();
    let err = s.wait().await.unwrap_err();
    assert!(matches!(err, Error::Stream { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("closed before the command finished"),
        "{err}"
    );
    sb.kill().await.unwrap();
}

#[dual]
pub async fn files_round_trips() {
    let server = common::target();
    let sb = make(&server, "files").await;
    let f = sb.files();
    f.write("/app/config.json", r#"{"k":1}"#).await.unwrap();
    let config_text = f.read_text("/app/config.json").await.unwrap();
    assert_eq!(config_text, r#"{"k":1}"#);
    let data = common::noise(5 * 1024 * 1024 + 7, 1);
    f.write("/data/blob.bin", &data).await.unwrap();
    let blob = f.read("/data/blob.bin").await.unwrap();
    assert_eq!(blob, data);
    // overwrite truncates
    f.write("/data/blob.bin", b"short").await.unwrap();
    let overwritten = f.read("/data/blob.bin").await.unwrap();
    assert_eq!(overwritten, b"short");
    // visible to commands
    let r = sb.commands().run("cat /app/config.json").await.unwrap();
    assert_eq!(r.stdout, r#"{"k":1}"#);
    // not UTF-8
    f.write("/data/bin", [0xffu8, 0xfe]).await.unwrap();
    let binary_as_text = f.read_text("/data/bin").await;
    let not_text = matches!(
        &binary_as_text,
        Err(Error::NotUtf8 { path, valid_up_to: 0 }) if path == "/data/bin"
    );
    assert!(not_text, "{binary_as_text:?}");
    // missing
    let err = f.read("/nope/missing.txt").await.unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
    // cap enforced while reading
    let err = f.clone().max_bytes(1024).read("/app/config.json").await;
    assert!(err.is_ok());
    let err = f.clone().max_bytes(1024).read("/data/blob.bin").await;
    assert!(err.is_ok());
    f.write("/data/big", vec![1u8; 4096]).await.unwrap();
    let err = f
        .clone()
        .max_bytes(1024)
        .read("/data/big")
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::TooLarge { limit: 1024, .. }),
        "{err:?}"
    );
    sb.kill().await.unwrap();
}

#[dual]
pub async fn files_zip_and_validation() {
    local_only!("the local backend (request journal, faults, restarts)");
    let server = common::server();
    let sb = make(&server, "zip").await;
    let f = sb.files();
    f.write("/out/a.txt", "A").await.unwrap();
    f.write("/out/sub/b.txt", "B").await.unwrap();
    let zip = f.download_dir("/out").await.unwrap();
    assert_eq!(&zip[..2], b"PK");
    let mut names = common::zip_entries(&zip);
    names.sort();
    assert!(names.contains(&"out/a.txt".to_owned()), "{names:?}");
    assert!(names.contains(&"out/sub/b.txt".to_owned()), "{names:?}");
    // a regular file comes back as itself
    let single_file_download = f.download_dir("/out/a.txt").await.unwrap();
    assert_eq!(single_file_download, b"A");
    // the zip is a real archive: unzip inside the sandbox agrees
    f.write("/tmp/out.zip", &zip).await.unwrap();
    let r = sb
        .commands()
        .run("cd /tmp && python3 -m zipfile -l out.zip")
        .await
        .unwrap();
    assert!(r.stdout.contains("out/sub/b.txt"), "{r:?}");

    server.clear_requests();
    for bad in ["relative.txt", "/a/../etc/passwd", "/a/b\0c", ""] {
        let err = f.read(bad).await.unwrap_err();
        assert!(
            matches!(err, Error::InvalidInput { .. }),
            "{bad:?}: {err:?}"
        );
        assert_eq!(err.status_code(), None, "rejected before sending");
        let err = f.write(bad, "x").await.unwrap_err();
        assert!(
            matches!(err, Error::InvalidInput { .. }),
            "{bad:?}: {err:?}"
        );
    }
    assert!(server.requests().is_empty(), "bad paths must not be sent");
    sb.kill().await.unwrap();
}

#[dual]
pub async fn paused_sandbox_resumed_by_data_plane() {
    local_only!("the local backend (request journal, faults, restarts)");
    let server = common::server();
    let sb = make(&server, "auto").await;
    sb.files().write("/note.txt", "kept").await.unwrap();
    sb.pause_with(PauseOptions::new().wait(true)).await.unwrap();
    server.clear_requests();
    let note = sb.files().read_text("/note.txt").await.unwrap();
    assert_eq!(note, "kept");
    assert_eq!(
        count(&server, "POST", &format!("/sandboxes/{}/activate", sb.id())),
        1
    );
    let status_after_resume = sb.get_info().await.unwrap().status;
    assert_eq!(status_after_resume, SandboxStatus::Active);
    sb.kill().await.unwrap();
}

#[dual]
pub async fn stale_token_refresh_once() {
    local_only!("the local backend (request journal, faults, restarts)");
    let (server, sb) = super::stale_token_setup().await;
    let r = sb.commands().run("echo ok").await.unwrap();
    assert_eq!(r.stdout, "ok\n");
    let reqs = server.requests();
    let execs: Vec<_> = reqs.iter().filter(|r| r.path == "/exec").collect();
    assert_eq!(execs.len(), 2, "one refused call, one retry");
    assert_ne!(
        execs[0].header("x-access-token"),
        execs[1].header("x-access-token"),
        "the retry carries the rotated token"
    );
    assert_eq!(
        count(&server, "POST", &format!("/sandboxes/{}/activate", sb.id())),
        1
    );
    // a second expiry: still exactly one activate per staleness
    server.expire_tokens(sb.id());
    sb.files().write("/x", "y").await.unwrap();
    assert_eq!(
        count(&server, "POST", &format!("/sandboxes/{}/activate", sb.id())),
        2
    );
    // the WebSocket dial meets the stale token: one activate, one redial
    server.expire_tokens(sb.id());
    server.clear_requests();
    let session = sb
        .commands()
        .spawn_with("echo via-ws", superserve::RunOptions::new())
        .await
        .unwrap();
    let done = session.wait().await.unwrap();
    assert_eq!(done.stdout, "via-ws\n");
    let dials: Vec<u16> = server
        .requests()
        .iter()
        .filter(|r| r.path == "/exec/connect")
        .map(|r| r.status)
        .collect();
    assert_eq!(dials.len(), 2, "refused dial, then the redial: {dials:?}");
    assert_eq!(dials[0], 401);
    assert_eq!(
        count(&server, "POST", &format!("/sandboxes/{}/activate", sb.id())),
        1
    );
    sb.kill().await.unwrap();
}

#[dual]
pub async fn isolation_between_sandboxes() {
    local_only!("the local backend (request journal, faults, restarts)");
    let server = common::server();
    let a = make(&server, "iso-a").await;
    let b = make(&server, "iso-b").await;
    a.files().write("/tmp/secret-a", "only a").await.unwrap();
    let closed_before_finished = b
        .files()
        .read("/tmp/secret-a")
        .await
        .unwrap_err()
        .is_not_found();
    assert!(closed_before_finished);
    let host_path = std::path::Path::new("/tmp/secret-a");
    assert!(!host_path.exists() || std::fs::read(host_path).unwrap_or_default() != b"only a");
    // a's processes are invisible to b; each sees its own PID namespace
    let started = Arc::new(Mutex::new(String::new()));
    let st2 = started.clone();
    let s = a
        .commands()
        .spawn_with(
            "echo started; exec sleep 30",
            RunOptions::new().on_stdout(move |s: &str| st2.lock().unwrap().push_str(s)),
        )
        .await
        .unwrap();
    super::wait_for(&started, "started").await;
    let ps_b = b
        .commands()
        .run("ls /proc | grep -E '^[0-9]+$' | while read p; do cat /proc/$p/cmdline 2>/dev/null | tr '\\0' ' '; echo; done")
        .await
        .unwrap();
    assert!(!ps_b.stdout.contains("sleep 30"), "{}", ps_b.stdout);
    let ps_a = a
        .commands()
        .run("ls /proc | grep -E '^[0-9]+$' | while read p; do cat /proc/$p/cmdline 2>/dev/null | tr '\\0' ' '; echo; done")
        .await
        .unwrap();
    assert!(ps_a.stdout.contains("sleep 30"), "{}", ps_a.stdout);
    s.close().await.unwrap();
    // nothing private of the host
    let r = a
        .commands()
        .run("cat /etc/shadow; ls -A /root /home; hostname")
        .await
        .unwrap();
    // no shadow entries, and /root and /home are empty (`ls -A` prints only their headers)
    assert!(!r.stdout.lines().any(|l| l.starts_with("root:")), "{r:?}");
    let listing: Vec<&str> = r.stdout.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(&listing[..2], &["/home:", "/root:"], "{r:?}");
    assert_eq!(listing.len(), 3, "only the hostname follows: {r:?}");
    let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    assert_ne!(r.stdout.lines().last().unwrap_or(""), host.trim());
    let hb = b.commands().run("hostname").await.unwrap();
    assert_ne!(r.stdout.lines().last(), hb.stdout.lines().last());
    let data_dir = server.data_dir().display().to_string();
    let r = a
        .commands()
        .run(&format!("ls {data_dir} 2>&1; ls /work 2>&1"))
        .await
        .unwrap();
    assert!(
        !r.stdout.contains("state.db"),
        "backend data visible: {r:?}"
    );
    assert!(
        !r.stdout.contains("Cargo.toml"),
        "project checkout visible: {r:?}"
    );
    a.kill().await.unwrap();
    b.kill().await.unwrap();
}

#[dual]
pub async fn restart_keeps_records_and_files() {
    local_only!("the local backend (request journal, faults, restarts)");
    let dir = common::temp_path("superserve-restart");
    let key = "ss_live_restarttestkey0000000000000000";
    let id;
    {
        let server = LocalServer::builder()
            .data_dir(&dir)
            .api_key(key)
            .start()
            .unwrap();
        let sb = Sandbox::create_with_config(
            &server.config(),
            CreateOptions::new("persist").metadata("keep", "me"),
        )
        .await
        .unwrap();
        sb.files()
            .write("/data/kept.txt", "still here")
            .await
            .unwrap();
        id = sb.id().to_owned();
        server.shutdown();
    }
    let server = LocalServer::builder()
        .data_dir(&dir)
        .api_key(key)
        .start()
        .unwrap();
    let config = server.config();
    let list = Sandbox::list_with_config(&config, superserve::ListOptions::new())
        .await
        .unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].id, id);
    assert_eq!(
        list[0].status,
        SandboxStatus::Paused,
        "processes do not survive a restart"
    );
    assert_eq!(list[0].metadata.get("keep").map(String::as_str), Some("me"));
    let sb = Sandbox::connect_with_config(&config, &id).await.unwrap();
    let kept_file = sb.files().read_text("/data/kept.txt").await.unwrap();
    assert_eq!(kept_file, "still here");
    let echo_after_restart = sb.commands().run("echo alive").await.unwrap().stdout;
    assert_eq!(echo_after_restart, "alive\n");
    sb.kill().await.unwrap();
    server.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Streamed uploads and downloads of several MiB (past the in-memory threshold).
#[dual]
pub async fn files_streamed_multi_mib() {
    let server = common::target();
    let sb = make(&server, "streamed").await;
    let data = common::noise(3 * 1024 * 1024 + 123, 9);
    let sent = sb
        .files()
        .write_from("/big/streamed.bin", std::io::Cursor::new(data.clone()))
        .await
        .unwrap();
    assert_eq!(sent, data.len() as u64);
    let mut back = Vec::new();
    let n = sb
        .files()
        .read_into("/big/streamed.bin", &mut back)
        .await
        .unwrap();
    assert_eq!(n, data.len() as u64);
    assert_eq!(back, data);
    let r = sb
        .commands()
        .run("wc -c < /big/streamed.bin")
        .await
        .unwrap();
    assert_eq!(r.stdout.trim(), data.len().to_string());
    let mut zip = Vec::new();
    let n = sb
        .files()
        .download_dir_into("/big", &mut zip)
        .await
        .unwrap();
    assert_eq!(n as usize, zip.len());
    assert!(common::zip_entries(&zip).contains(&"big/streamed.bin".to_owned()));
    sb.kill().await.unwrap();
}

/// A streamed upload (not replayable) to a paused sandbox: the cheap probe meets the pause,
/// the sandbox is activated once, and the whole stream lands.
#[dual]
pub async fn streamed_upload_to_a_paused_sandbox_probes_first() {
    local_only!("the local backend (request journal, faults, restarts)");
    let server = common::server();
    let sb = make(&server, "probe").await;
    sb.pause_with(PauseOptions::new().wait(true)).await.unwrap();
    server.clear_requests();
    // Cursor is both a Read (blocking write_from) and an AsyncRead (async write_from)
    let data = vec![7u8; 3 << 20];
    let n = sb
        .files()
        .write_from("/tmp/big", std::io::Cursor::new(data))
        .await
        .unwrap();
    assert_eq!(n, 3 << 20);
    let size = sb.commands().run("wc -c < /tmp/big").await.unwrap().stdout;
    assert_eq!(size.trim(), (3u32 << 20).to_string());
    let activates = count(&server, "POST", &format!("/sandboxes/{}/activate", sb.id()));
    assert_eq!(activates, 1);
    // the probe (a GET of a file that does not exist) met the pause and was retried after
    // the activate; the stream itself was sent exactly once
    let data_plane: Vec<(String, u16)> = server
        .requests_on(superserve::local::Plane::Data)
        .iter()
        .filter(|r| r.path == "/files")
        .map(|r| (r.method.clone(), r.status))
        .collect();
    let methods: Vec<&str> = data_plane.iter().map(|(m, _)| m.as_str()).collect();
    assert_eq!(methods, vec!["GET", "GET", "POST"], "{data_plane:?}");
    assert_eq!(data_plane[0].1, 503, "the first probe met the pause");
    assert_eq!(data_plane[1].1, 404, "the retried probe got through");
    assert_eq!(data_plane[2].1, 200);
    sb.kill().await.unwrap();
}

/// A paused sandbox whose next activate answers 409 with `code`; the journal starts empty.
/// Returns the activate path too.
#[dual]
async fn paused_with_failing_activate(name: &str, code: &str) -> (LocalServer, Sandbox, String) {
    let server = common::server();
    let sb = make(&server, name).await;
    sb.pause_with(PauseOptions::new().wait(true)).await.unwrap();
    let activate = format!("/sandboxes/{}/activate", sb.id());
    server.inject(FaultRule::new("POST", &activate).fault(Fault::Status {
        status: 409,
        code: code.into(),
    }));
    server.clear_requests();
    (server, sb, activate)
}

/// A data-plane call that meets a pause still landing: the re-activate gets 409
/// `sandbox_pausing`, waits a second, activates again, and the call goes through.
#[dual]
pub async fn data_plane_waits_out_a_pause_in_progress() {
    local_only!("the local backend (request journal, faults, restarts)");
    let (server, sb, activate) = paused_with_failing_activate("landing", "sandbox_pausing").await;
    let r = sb.commands().run("echo resumed").await.unwrap();
    assert_eq!(r.stdout, "resumed\n");
    let statuses: Vec<u16> = server
        .requests()
        .iter()
        .filter(|q| q.method == "POST" && q.path == activate)
        .map(|q| q.status)
        .collect();
    assert_eq!(statuses, vec![409, 200]);
    sb.kill().await.unwrap();
}

/// A streamed upload whose re-activate fails is refused with that failure, and the stream
/// is never sent (it would only meet the pause).
#[dual]
pub async fn streamed_upload_reports_a_failed_reactivate() {
    local_only!("the local backend (request journal, faults, restarts)");
    let (server, sb, activate) = paused_with_failing_activate("refused", "conflict").await;
    let err = sb
        .files()
        .write_from("/tmp/big", std::io::Cursor::new(vec![1u8; 3 << 20]))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Conflict(_)), "{err:?}");
    assert_eq!(err.code(), Some("conflict"));
    let posts = server
        .requests()
        .iter()
        .filter(|q| q.method == "POST" && q.path == "/files")
        .count();
    assert_eq!(posts, 0, "the stream was not sent");
    assert_eq!(
        count(&server, "POST", &activate),
        1,
        "a plain conflict is not retried"
    );
    // the sandbox is still paused and intact: the next call resumes it
    let r = sb.commands().run("echo ok").await.unwrap();
    assert_eq!(r.stdout, "ok\n");
    sb.kill().await.unwrap();
}
