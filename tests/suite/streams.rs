//! Output as events, stdin and files as I/O, bounded memory.

use std::sync::{Arc, Mutex};

use superserve::{Error, ExecEvent, RunOptions, Signal};

use super::make;
use crate::common;
use crate::dual;
use crate::flavor::{Next as _, ReadAll as _, WriteAll as _};

/// Events up to and including `Exit`, or the error that ended the stream.
#[dual]
async fn drain(events: &mut crate::flavor::ExecEvents) -> (Vec<ExecEvent>, Option<Error>) {
    let mut seen = Vec::new();
    while let Some(item) = events.next().await {
        match item {
            Ok(ev) => seen.push(ev),
            Err(e) => return (seen, Some(e)),
        }
    }
    (seen, None)
}

fn joined(events: &[ExecEvent], stdout: bool) -> String {
    events
        .iter()
        .filter_map(|e| match e {
            ExecEvent::Stdout(s) if stdout => Some(s.as_str()),
            ExecEvent::Stderr(s) if !stdout => Some(s.as_str()),
            _ => None,
        })
        .collect()
}

#[dual]
pub async fn run_stream_yields_output_then_exit() {
    let target = common::target();
    let sb = make(&target, "events").await;
    let mut events = sb
        .commands()
        .run_stream(
            "echo \"$A-$B\"; echo oops >&2; pwd; exit 3",
            RunOptions::new().cwd("/tmp").envs([("A", "x"), ("B", "y")]),
        )
        .await
        .unwrap();
    let (seen, err) = drain(&mut events).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(seen.last(), Some(&ExecEvent::Exit(3)), "{seen:?}");
    assert_eq!(joined(&seen, true), "x-y\n/tmp\n");
    assert_eq!(joined(&seen, false), "oops\n");
    // after Exit the stream is over
    let after_exit = events.next().await;
    assert!(after_exit.is_none(), "{after_exit:?}");
    sb.kill().await.unwrap();
}

#[dual]
pub async fn run_stream_cut_short_ends_with_an_error() {
    local_only!("the local backend's fault injection");
    let server = common::server();
    let sb = make(&server, "cut-events").await;
    server.inject(
        superserve::local::FaultRule::new("POST", "/exec/stream")
            .fault(superserve::local::Fault::CutStream { after_events: 1 }),
    );
    let mut events = sb
        .commands()
        .run_stream("echo first; sleep 0.2; echo second", RunOptions::new())
        .await
        .unwrap();
    let (seen, err) = drain(&mut events).await;
    assert_eq!(seen, vec![ExecEvent::Stdout("first\n".into())]);
    let err = err.expect("a cut stream ends with an error, never silently");
    assert!(matches!(err, Error::Stream { .. }), "{err:?}");
    let after_error = events.next().await;
    assert!(after_error.is_none(), "{after_error:?}");
    sb.kill().await.unwrap();
}

/// The pid a command printed first, from an event stream.
#[dual]
async fn first_line(events: &mut crate::flavor::ExecEvents) -> String {
    let mut out = String::new();
    while !out.contains('\n') {
        match events.next().await {
            Some(Ok(ExecEvent::Stdout(s))) => out.push_str(&s),
            other => panic!("expected output, got {other:?}"),
        }
    }
    out.lines().next().unwrap_or_default().to_owned()
}

/// Waits (bounded) until process `pid` is gone from the sandbox.
#[dual]
async fn wait_gone(sb: &crate::flavor::Sandbox, pid: &str) {
    for _ in 0..300 {
        let r = sb
            .commands()
            .run(&format!(
                "kill -0 {pid} 2>/dev/null && echo alive || echo gone"
            ))
            .await
            .unwrap();
        if r.stdout.trim() == "gone" {
            return;
        }
        crate::flavor::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("process {pid} is still running");
}

#[dual]
pub async fn dropping_run_stream_stops_the_command() {
    let target = common::target();
    let sb = make(&target, "drop-stream").await;
    let mut events = sb
        .commands()
        .run_stream(
            "echo $$; exec sleep 300",
            RunOptions::new().timeout_seconds(600),
        )
        .await
        .unwrap();
    let pid = first_line(&mut events).await;
    assert!(pid.parse::<u32>().is_ok(), "{pid:?}");
    drop(events);
    wait_gone(&sb, &pid).await;
    sb.kill().await.unwrap();
}

#[dual]
pub async fn session_events_pull_style() {
    let target = common::target();
    let sb = make(&target, "session-events").await;
    let session = sb
        .commands()
        .spawn_with(
            "read line; echo \"got $line\"; echo note >&2; exit 4",
            RunOptions::new(),
        )
        .await
        .unwrap();
    let mut events = session.events();
    session.write_stdin("hello\n").await.unwrap();
    let (seen, err) = drain(&mut events).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(seen.last(), Some(&ExecEvent::Exit(4)), "{seen:?}");
    assert_eq!(joined(&seen, true), "got hello\n");
    assert_eq!(joined(&seen, false), "note\n");
    // wait() still has the result
    let r = session.wait().await.unwrap();
    assert_eq!((r.exit_code, r.stdout.as_str()), (4, "got hello\n"));

    // events() after the end: what was collected, then the exit
    let late = sb
        .commands()
        .spawn_with("echo done", RunOptions::new())
        .await
        .unwrap();
    late.wait().await.unwrap();
    let (seen, err) = drain(&mut late.events()).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(
        seen,
        vec![ExecEvent::Stdout("done\n".into()), ExecEvent::Exit(0)]
    );
    sb.kill().await.unwrap();
}

#[dual]
pub async fn session_stdin_is_an_io_writer() {
    let target = common::target();
    let sb = make(&target, "stdin-io").await;
    let session = sb
        .commands()
        .spawn_with("sha256sum", RunOptions::new())
        .await
        .unwrap();
    let data = common::noise(3 * 1024 * 1024 + 17, 7);
    let (head, tail) = data.split_at(2 * 1024 * 1024);
    let mut reader: &[u8] = head;
    let mut stdin = session.stdin();
    let copied = crate::flavor::copy(&mut reader, &mut stdin).await.unwrap();
    assert_eq!(copied, head.len() as u64);
    stdin.write_all(tail).await.unwrap();
    session.close_stdin().await.unwrap();
    let r = session.wait().await.unwrap();
    // the digest of the same bytes, uploaded as a file
    sb.files()
        .write("/tmp/data.bin", data.clone())
        .await
        .unwrap();
    let expected = sb
        .commands()
        .run("sha256sum < /tmp/data.bin")
        .await
        .unwrap();
    assert_eq!(r.stdout, expected.stdout, "every byte arrived, in order");
    sb.kill().await.unwrap();
}

#[dual]
pub async fn signals_are_typed() {
    let target = common::target();
    let sb = make(&target, "signals").await;
    let ready = Arc::new(Mutex::new(String::new()));
    let r2 = ready.clone();
    let session = sb
        .commands()
        .spawn_with(
            "trap 'echo got-int; exit 7' INT; echo ready; while true; do sleep 0.05; done",
            RunOptions::new().on_stdout(move |s: &str| r2.lock().unwrap().push_str(s)),
        )
        .await
        .unwrap();
    super::wait_for(&ready, "ready").await;
    session.signal(Signal::Int).await.unwrap();
    let r = session.wait().await.unwrap();
    assert_eq!(r.exit_code, 7, "{r:?}");
    assert!(r.stdout.contains("got-int"));
    assert_eq!(Signal::Quit.as_str(), "SIGQUIT");
    sb.kill().await.unwrap();
}

#[dual]
pub async fn dropping_a_session_terminates_its_command() {
    let target = common::target();
    let sb = make(&target, "drop-session").await;
    let session = sb
        .commands()
        .spawn_with(
            "trap 'echo term > /tmp/got-term; exit 0' TERM; echo $$; while true; do sleep 0.05; done",
            RunOptions::new(),
        )
        .await
        .unwrap();
    let mut events = session.events();
    let pid = first_line(&mut events).await;
    drop(events);
    drop(session);
    wait_gone(&sb, &pid).await;
    let text = sb.files().read_text("/tmp/got-term").await.unwrap();
    assert_eq!(text, "term\n", "the command got SIGTERM");
    sb.kill().await.unwrap();
}

#[dual]
pub async fn callbacks_may_own_and_mutate_state() {
    let target = common::target();
    let sb = make(&target, "fnmut").await;
    let (tx, rx) = std::sync::mpsc::channel();
    let mut total = 0usize;
    let r = sb
        .commands()
        .run_with(
            "for i in 1 2 3; do echo line$i; done",
            RunOptions::new().on_stdout(move |s: &str| {
                total += s.len();
                let _ = tx.send(total);
            }),
        )
        .await
        .unwrap();
    let last = rx.try_iter().last();
    assert_eq!(last, Some(r.stdout.len()), "{r:?}");
    sb.kill().await.unwrap();
}

#[dual]
pub async fn open_read_streams_a_file() {
    let target = common::target();
    let sb = make(&target, "open-read").await;
    let data = common::noise(3 * 1024 * 1024 + 5, 11);
    sb.files()
        .write("/data/noise.bin", data.clone())
        .await
        .unwrap();
    let mut reader = sb.files().open_read("/data/noise.bin").await.unwrap();
    let mut got = Vec::new();
    reader.read_to_end(&mut got).await.unwrap();
    assert!(got == data, "the streamed read returns the file");

    // past the cap: refused as soon as the size is known, before any byte is read
    let err = sb
        .files()
        .max_bytes(1024 * 1024)
        .open_read("/data/noise.bin")
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::TooLarge { limit, .. } if limit == 1024 * 1024),
        "{err:?}"
    );

    let missing = sb.files().open_read("/data/none").await.unwrap_err();
    assert!(missing.is_not_found(), "{missing:?}");
    sb.kill().await.unwrap();
}

#[dual]
pub async fn collected_output_is_capped_while_callbacks_see_everything() {
    let target = common::target();
    let sb = make(&target, "cap").await;
    let seen = Arc::new(Mutex::new(0usize));
    let s2 = seen.clone();
    let total = 20 * 1024 * 1024;
    let r = sb
        .commands()
        .run_with(
            &format!("head -c {total} /dev/zero | tr '\\0' a"),
            RunOptions::new()
                .max_output_bytes(1024 * 1024)
                .timeout_seconds(120)
                .on_stdout(move |s: &str| *s2.lock().unwrap() += s.len()),
        )
        .await
        .unwrap();
    assert_eq!(r.exit_code, 0);
    assert_eq!(r.stdout.len(), 1024 * 1024);
    assert!(r.truncated);
    assert_eq!(*seen.lock().unwrap(), total, "callbacks see every byte");

    // the one-shot (JSON) path keeps the same cap
    let r = sb
        .commands()
        .run_with(
            "head -c 5000 /dev/zero | tr '\\0' b",
            RunOptions::new().max_output_bytes(1000),
        )
        .await
        .unwrap();
    assert_eq!((r.stdout.len(), r.truncated), (1000, true));
    let r = sb.commands().run("echo small").await.unwrap();
    assert!(!r.truncated);
    sb.kill().await.unwrap();
}
