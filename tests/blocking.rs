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
