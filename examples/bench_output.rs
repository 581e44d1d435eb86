//! Memory stays bounded however much a command prints: 500 MiB of output streamed through
//! `run_with` + `on_stdout` and through `run_stream`, in both flavours, in one process with
//! the local backend. Prints the throughput and the whole process's peak RSS for each run
//! (the peak is reset before each with `/proc/self/clear_refs`), against the peak of the same
//! process doing nothing but holding an idle sandbox.
//!
//! ```sh
//! cargo run --release --example bench_output --all-features
//! ```

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use superserve::local::LocalServer;
use superserve::{CreateOptions, ExecEvent, RunOptions};

const MIB: usize = 1024 * 1024;
const TOTAL: usize = 500 * MIB;

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn reset_peak() {
    // "5" resets the peak resident set size (Linux 4.0+).
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn command() -> String {
    format!("head -c {TOTAL} /dev/zero | tr '\\0' x")
}

fn opts() -> RunOptions {
    RunOptions::new().timeout_seconds(900)
}

fn report(what: &str, bytes: usize, started: Instant, truncated: bool) {
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{what:<34} {:>5} MiB in {secs:6.2} s ({:7.1} MiB/s)  peak RSS {:6.1} MiB{}",
        bytes / MIB,
        bytes as f64 / MIB as f64 / secs,
        peak_rss_mib(),
        if truncated {
            "  (result truncated at the cap)"
        } else {
            ""
        }
    );
    assert_eq!(bytes, TOTAL, "every byte reached the caller");
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = LocalServer::start()?;
    let config = server.config();

    let sb = superserve::Sandbox::create_with_config(&config, CreateOptions::new("output"))?;
    sb.commands().run("true")?;
    reset_peak();
    std::thread::sleep(std::time::Duration::from_millis(200));
    sb.commands().run("echo warm")?;
    println!(
        "{:<34} peak RSS {:6.1} MiB (baseline: backend + one idle sandbox)",
        "idle",
        peak_rss_mib()
    );

    // blocking: callback
    reset_peak();
    let seen = Arc::new(AtomicUsize::new(0));
    let s2 = seen.clone();
    let started = Instant::now();
    let r = sb.commands().run_with(
        &command(),
        opts().on_stdout(move |s: &str| {
            s2.fetch_add(s.len(), Ordering::Relaxed);
        }),
    )?;
    report(
        "blocking run_with + on_stdout",
        seen.load(Ordering::Relaxed),
        started,
        r.truncated,
    );

    // blocking: events
    reset_peak();
    let started = Instant::now();
    let mut n = 0;
    for ev in sb.commands().run_stream(&command(), opts())? {
        if let ExecEvent::Stdout(s) = ev? {
            n += s.len();
        }
    }
    report("blocking run_stream", n, started, false);
    sb.kill()?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        use futures_util::StreamExt;
        let sb =
            superserve::AsyncSandbox::create_with_config(&config, CreateOptions::new("output"))
                .await?;
        reset_peak();
        let seen = Arc::new(AtomicUsize::new(0));
        let s2 = seen.clone();
        let started = Instant::now();
        let r = sb
            .commands()
            .run_with(
                &command(),
                opts().on_stdout(move |s: &str| {
                    s2.fetch_add(s.len(), Ordering::Relaxed);
                }),
            )
            .await?;
        report(
            "async run_with + on_stdout",
            seen.load(Ordering::Relaxed),
            started,
            r.truncated,
        );

        reset_peak();
        let started = Instant::now();
        let mut n = 0;
        let mut events = sb.commands().run_stream(&command(), opts()).await?;
        while let Some(ev) = events.next().await {
            if let ExecEvent::Stdout(s) = ev? {
                n += s.len();
            }
        }
        report("async run_stream", n, started, false);
        sb.kill().await?;
        Ok::<_, superserve::Error>(())
    })?;
    Ok(())
}
