//! The shared suite, compiled for the async flavour, run end to end against the local backend.
#![cfg(all(feature = "async", feature = "local"))]

use maybe_async::must_be_async as dual;

mod flavor {
    /// `next()` of the flavour's event streams.
    pub use futures_util::StreamExt as Next;
    pub use superserve::nonblocking::*;
    /// `read_to_end` of the flavour's readers.
    pub use tokio::io::AsyncReadExt as ReadAll;
    /// `write_all` of the flavour's writers.
    pub use tokio::io::AsyncWriteExt as WriteAll;

    pub async fn sleep(d: std::time::Duration) {
        tokio::time::sleep(d).await;
    }

    /// Copies a reader into a writer (tokio::io::copy).
    pub async fn copy<R, W>(r: &mut R, w: &mut W) -> std::io::Result<u64>
    where
        R: tokio::io::AsyncRead + Unpin + ?Sized,
        W: tokio::io::AsyncWrite + Unpin + ?Sized,
    {
        tokio::io::copy(r, w).await
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

#[macro_use]
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

/// A create whose future is dropped after the request went out leaves no sandbox behind: the
/// answer is awaited on a task of its own, which kills the sandbox nobody received.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_creates_leave_no_sandbox() {
    let server = common::server();
    let config = common::config(&server);
    server.inject(
        superserve::local::FaultRule::new("POST", "/sandboxes")
            .fault(superserve::local::Fault::DelayResponse { millis: 400 })
            .times(5),
    );
    let creates = (0..5).map(|i| {
        let config = config.clone();
        async move {
            tokio::time::timeout(
                std::time::Duration::from_millis(50),
                superserve::AsyncSandbox::create_with_config(
                    &config,
                    superserve::CreateOptions::new(format!("cancelled-{i}")),
                ),
            )
            .await
        }
    });
    let outcomes = futures_util::future::join_all(creates).await;
    assert!(
        outcomes.iter().all(|o| o.is_err()),
        "every create was cut short by its deadline"
    );
    // The server did create them; each is then killed by the task that got its answer.
    let created: Vec<_> = server
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path == "/sandboxes")
        .collect();
    assert_eq!(created.len(), 5);
    let mut left = usize::MAX;
    for _ in 0..200 {
        let all =
            superserve::AsyncSandbox::list_with_config(&config, superserve::ListOptions::new())
                .await
                .unwrap();
        left = all
            .iter()
            .filter(|s| s.name.starts_with("cancelled-"))
            .count();
        let deletes = suite::count_prefix(&server, "DELETE", "/sandboxes/");
        if left == 0 && deletes == 5 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(left, 0, "no orphaned sandbox survives");
}
