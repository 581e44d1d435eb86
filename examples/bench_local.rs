//! Benchmark of the local backend: latency from create to the first command's answer (median
//! of 20), create+kill throughput for 100 sandboxes, and the peak RSS of the process (the
//! in-process backend plus the client). The baseline, measured in the same run, is the same
//! command started as a plain host process (`sh -c true`): the cost of running a process at
//! all, without a sandbox.
//!
//! ```text
//! cargo run --release --example bench_local --all-features
//! ```

use std::time::{Duration, Instant};

use superserve::{CreateOptions, Sandbox};

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = superserve::local::LocalServer::start()?;
    let config = server.config();

    // Baseline: a host process, no sandbox.
    let mut base = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        let out = std::process::Command::new("sh")
            .args(["-c", "echo ready"])
            .output()?;
        assert!(out.status.success());
        base.push(t.elapsed());
    }

    let mut first = Vec::new();
    for i in 0..20 {
        let t = Instant::now();
        let sb = Sandbox::create_with_config(&config, CreateOptions::new(format!("lat-{i}")))?;
        let r = sb.commands().run("echo ready")?;
        first.push(t.elapsed());
        assert_eq!(r.stdout, "ready\n");
        sb.kill()?;
    }

    let (mut creates, mut kills) = (Vec::new(), Vec::new());
    let t = Instant::now();
    for i in 0..100 {
        let c = Instant::now();
        let sb = Sandbox::create_with_config(&config, CreateOptions::new(format!("tp-{i}")))?;
        let k = Instant::now();
        sb.kill()?;
        creates.push(k - c);
        kills.push(k.elapsed());
    }
    let tp = t.elapsed();

    let first_med = median(first);
    let base_med = median(base);
    println!(
        "create -> first command: median {:.1} ms over 20 (baseline host `sh -c`: {:.2} ms; ratio {:.0}x)",
        ms(first_med),
        ms(base_med),
        first_med.as_secs_f64() / base_med.as_secs_f64()
    );
    println!(
        "create+kill: 100 sandboxes in {:.2} s = {:.1} sandboxes/s ({:.1} ms each)",
        tp.as_secs_f64(),
        100.0 / tp.as_secs_f64(),
        ms(tp) / 100.0
    );
    println!(
        "  of which create: median {:.1} ms, kill: median {:.1} ms",
        ms(median(creates)),
        ms(median(kills))
    );
    println!(
        "peak RSS (backend + client, one process): {:.1} MiB",
        peak_rss_mib()
    );
    Ok(())
}
