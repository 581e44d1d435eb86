//! The shared suite, compiled for the blocking flavour, run end to end against the local
//! backend.
#![cfg(all(feature = "blocking", feature = "local"))]

use maybe_async::must_be_sync as dual;

mod flavor {
    pub use superserve::blocking::*;

    pub fn sleep(d: std::time::Duration) {
        std::thread::sleep(d);
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
        .spawn(
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

/// A streamed upload (not replayable) to a paused sandbox: the cheap probe meets the pause,
/// the sandbox is activated once, and the whole stream lands.
#[test]
fn streamed_upload_to_a_paused_sandbox_probes_first() {
    let server = common::server();
    let sb = suite::make(&server, "probe");
    sb.pause().unwrap();
    server.clear_requests();
    let data = vec![7u8; 3 << 20];
    let n = sb
        .files()
        .write_from("/tmp/big", std::io::Cursor::new(data))
        .unwrap();
    assert_eq!(n, 3 << 20);
    let size = sb.commands().run("wc -c < /tmp/big").unwrap().stdout;
    assert_eq!(size.trim(), (3u32 << 20).to_string());
    let activates = suite::count(&server, "POST", &format!("/sandboxes/{}/activate", sb.id()));
    assert_eq!(activates, 1);
    // the probe (a GET of a file that does not exist) met the paused sandbox and was
    // retried after the activate; the stream itself was sent exactly once
    let data_plane: Vec<(String, u16)> = server
        .requests_on(superserve::local::Plane::Data)
        .iter()
        .filter(|r| r.path == "/files")
        .map(|r| (r.method.clone(), r.status))
        .collect();
    let methods: Vec<&str> = data_plane.iter().map(|(m, _)| m.as_str()).collect();
    assert_eq!(methods, vec!["GET", "GET", "POST"], "{data_plane:?}");
    assert_ne!(
        data_plane[0].1, 404,
        "the first probe met the pause: {data_plane:?}"
    );
    assert_eq!(
        data_plane[1].1, 404,
        "the retried probe got through: {data_plane:?}"
    );
    assert_eq!(data_plane[2].1, 200);
    sb.kill().unwrap();
}
