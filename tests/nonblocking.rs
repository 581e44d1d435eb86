//! The shared suite, compiled for the async flavour, run end to end against the local backend.
#![cfg(all(feature = "async", feature = "local"))]

use maybe_async::must_be_async as dual;

mod flavor {
    pub use superserve::nonblocking::*;

    pub async fn sleep(d: std::time::Duration) {
        tokio::time::sleep(d).await;
    }
}

macro_rules! suite_tests {
    ($($name:ident),* $(,)?) => {
        mod generated {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                crate::suite::$name().await
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
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_stale_token_single_activate() {
    let (server, sb) = suite::stale_token_setup().await;
    let runs = (0..8).map(|i| {
        let sb = sb.clone();
        async move { sb.commands().run(&format!("echo caller-{i}")).await }
    });
    let results = futures_util::future::join_all(runs).await;
    for (i, r) in results.into_iter().enumerate() {
        assert_eq!(
            r.expect("run after refresh").stdout.trim(),
            format!("caller-{i}")
        );
    }
    suite::assert_single_activate(&server, &sb);
}

/// Output callbacks fire while the caller is still writing stdin (no deadlock, no loss).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_output_flows_while_writing() {
    use std::sync::{Arc, Mutex};
    let server = common::server();
    let sb = suite::make(&server, "flow").await;
    let seen = Arc::new(Mutex::new(String::new()));
    let s2 = seen.clone();
    let session = sb
        .commands()
        .spawn_with(
            "cat",
            superserve::RunOptions::new().on_stdout(move |s: &str| s2.lock().unwrap().push_str(s)),
        )
        .await
        .unwrap();
    let line = "x".repeat(1000) + "\n";
    // The first line's echo arrives while stdin is still open (bounded wait, no timing claim).
    session.write_stdin(&line).await.unwrap();
    let mut echoed_while_open = false;
    for _ in 0..1000 {
        if !seen.lock().unwrap().is_empty() {
            echoed_while_open = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(!session.is_finished());
    // Then a large volume in both directions at once: nothing lost, no deadlock.
    for _ in 1..2000 {
        session.write_stdin(&line).await.unwrap();
    }
    session.close_stdin().await.unwrap();
    let r = session.wait().await.unwrap();
    assert!(echoed_while_open, "no output arrived while stdin was open");
    assert_eq!(r.stdout.len(), line.len() * 2000);
    assert_eq!(*seen.lock().unwrap(), r.stdout);
    sb.kill().await.unwrap();
}
