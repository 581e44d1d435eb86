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
        .spawn(
            "cat",
            superserve::RunOptions::new().on_stdout(move |s: &str| s2.lock().unwrap().push_str(s)),
        )
        .await
        .unwrap();
    let line = "x".repeat(1000) + "\n";
    let mut echoed_before_end = false;
    for _ in 0..2000 {
        session.write_stdin(&line).await.unwrap();
        if !seen.lock().unwrap().is_empty() {
            echoed_before_end = true;
        }
    }
    session.close_stdin().await.unwrap();
    let r = session.wait().await.unwrap();
    assert!(
        echoed_before_end,
        "no output arrived while stdin was being written"
    );
    assert_eq!(r.stdout.len(), line.len() * 2000);
    assert_eq!(*seen.lock().unwrap(), r.stdout);
    sb.kill().await.unwrap();
}
