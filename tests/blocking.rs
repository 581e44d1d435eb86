//! The shared suite, compiled for the blocking flavour, run end to end against the local
//! backend.
#![cfg(all(feature = "blocking", feature = "local"))]
// The suite is written once for both flavours: `while let Some(x) = events.next().await`
// reads a `Stream` in the async copy and an `Iterator` here.
#![allow(clippy::while_let_on_iterator)]

use maybe_async::must_be_sync as dual;

mod flavor {
    /// `read_to_end` of the flavour's readers.
    pub use std::io::Read as ReadAll;
    /// `write_all` of the flavour's writers.
    pub use std::io::Write as WriteAll;
    /// `next()` of the flavour's event streams.
    pub use std::iter::Iterator as Next;
    pub use superserve::blocking::*;

    pub fn sleep(d: std::time::Duration) {
        std::thread::sleep(d);
    }

    /// Copies a reader into a writer (std::io::copy).
    pub fn copy<R: std::io::Read + ?Sized, W: std::io::Write + ?Sized>(
        r: &mut R,
        w: &mut W,
    ) -> std::io::Result<u64> {
        std::io::copy(r, w)
    }
}

macro_rules! suite_tests {
    ($($name:ident),* $(,)?) => {
        mod generated {
        $(
            #[test]
            fn $name() {
                crate::suite::$name()
            }
        )*
        }
    };
}

#[macro_use]
#[path = "common/mod.rs"]
mod common;
#[path = "suite/mod.rs"]
mod suite;

/// Concurrent callers holding a stale token trigger exactly one activate.
#[test]
fn concurrent_stale_token_single_activate() {
    let (server, sb) = suite::stale_token_setup();
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let sb = sb.clone();
            std::thread::spawn(move || sb.commands().run(&format!("echo caller-{i}")))
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        let r = h.join().expect("caller thread").expect("run after refresh");
        assert_eq!(r.stdout.trim(), format!("caller-{i}"));
    }
    suite::assert_single_activate(&server, &sb);
}

/// Output callbacks fire while the caller is still writing stdin (no deadlock, no loss).
#[test]
fn session_output_flows_while_writing() {
    use std::sync::{Arc, Mutex};
    let server = common::server();
    let sb = suite::make(&server, "flow");
    let seen = Arc::new(Mutex::new(String::new()));
    let s2 = seen.clone();
    let session = sb
        .commands()
        .spawn_with(
            "cat",
            superserve::RunOptions::new().on_stdout(move |s: &str| s2.lock().unwrap().push_str(s)),
        )
        .unwrap();
    let line = "x".repeat(1000) + "\n";
    // The first line's echo arrives while stdin is still open (bounded wait, no timing claim).
    session.write_stdin(&line).unwrap();
    let mut echoed_while_open = false;
    for _ in 0..1000 {
        if !seen.lock().unwrap().is_empty() {
            echoed_while_open = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(!session.is_finished());
    // Then a large volume in both directions at once: nothing lost, no deadlock.
    for _ in 1..2000 {
        session.write_stdin(&line).unwrap();
    }
    session.close_stdin().unwrap();
    let r = session.wait().unwrap();
    assert!(echoed_while_open, "no output arrived while stdin was open");
    assert_eq!(r.stdout.len(), line.len() * 2000);
    assert_eq!(*seen.lock().unwrap(), r.stdout);
    sb.kill().unwrap();
}

/// The backend's `GET /files` honours single byte ranges as the hosted data plane does
/// (206 with `Content-Range`, 416 past the end); the SDK does not send ranges, so this talks
/// raw HTTP with a token from `activate`.
#[test]
fn file_reads_honour_byte_ranges() {
    let server = common::server();
    let sb = suite::make(&server, "ranges");
    let data: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
    sb.files().write("/r.bin", data.clone()).unwrap();
    let http = reqwest::blocking::Client::new();
    let activated: serde_json::Value = http
        .post(format!(
            "{}/sandboxes/{}/activate",
            server.base_url(),
            sb.id()
        ))
        .header("x-api-key", server.api_key())
        .send()
        .and_then(|r| r.bytes())
        .map(|b| serde_json::from_slice(&b).unwrap())
        .unwrap();
    let token = activated["access_token"].as_str().unwrap().to_owned();
    let get = |extra: &[(&str, &str)]| {
        let mut req = http
            .get(format!("{}/files?path=%2Fr.bin", server.sandbox_url()))
            .header("x-access-token", &token)
            .header("x-superserve-sandbox-id", sb.id());
        for (k, v) in extra {
            req = req.header(*k, *v);
        }
        let resp = req.send().unwrap();
        let status = resp.status().as_u16();
        let header = |n: &str| {
            resp.headers()
                .get(n)
                .map(|v| v.to_str().unwrap().to_owned())
        };
        let (cr, ar) = (header("content-range"), header("accept-ranges"));
        (status, cr, ar, resp.bytes().unwrap().to_vec())
    };
    let (status, cr, ar, body) = get(&[]);
    assert_eq!((status, cr, ar.as_deref()), (200, None, Some("bytes")));
    assert_eq!(body, data);
    let (status, cr, _, body) = get(&[("range", "bytes=100-199")]);
    assert_eq!((status, cr.as_deref()), (206, Some("bytes 100-199/1000")));
    assert_eq!(body, &data[100..200]);
    let (status, cr, _, body) = get(&[("range", "bytes=-24")]);
    assert_eq!((status, cr.as_deref()), (206, Some("bytes 976-999/1000")));
    assert_eq!(body, &data[976..]);
    let (status, cr, _, body) = get(&[("range", "bytes=990-")]);
    assert_eq!((status, cr.as_deref()), (206, Some("bytes 990-999/1000")));
    assert_eq!(body, &data[990..]);
    let (status, cr, _, _) = get(&[("range", "bytes=1000-")]);
    assert_eq!((status, cr.as_deref()), (416, Some("bytes */1000")));
    let (status, _, _, body) = get(&[("range", "bytes=0-1,5-6")]);
    assert_eq!(
        (status, body.len()),
        (200, 1000),
        "several ranges: the whole file"
    );
    // If-Range cannot be validated (no ETag or Last-Modified is sent): the whole file
    let (status, cr, _, body) = get(&[("range", "bytes=0-9"), ("if-range", "\"v1\"")]);
    assert_eq!((status, cr, body.len()), (200, None, 1000));
    sb.kill().unwrap();
}

/// A blocking call made on a thread that runs async code fails with a clear error (nothing
/// is sent); the same call from `spawn_blocking` works.
#[test]
fn a_blocking_call_inside_a_runtime_fails_clearly() {
    let server = common::server();
    let config = common::config(&server);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let c2 = config.clone();
    let err = runtime
        .block_on(async move {
            superserve::Sandbox::create_with_config(&c2, superserve::CreateOptions::new("x"))
        })
        .unwrap_err();
    assert!(
        matches!(err, superserve::Error::BlockingInAsyncContext),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("superserve")
            && msg.contains("spawn_blocking")
            && msg.contains("AsyncSandbox"),
        "{msg}"
    );
    assert_eq!(suite::count(&server, "POST", "/sandboxes"), 0);
    // from spawn_blocking (and a multi-thread runtime's task via spawn_blocking) it works
    let multi = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let sb = multi
        .block_on(async move {
            tokio::task::spawn_blocking(move || {
                superserve::Sandbox::create_with_config(
                    &config,
                    superserve::CreateOptions::new("y"),
                )
            })
            .await
        })
        .unwrap()
        .unwrap();
    assert_eq!(sb.commands().run("echo ok").unwrap().stdout, "ok\n");
    sb.kill().unwrap();
}
