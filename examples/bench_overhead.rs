//! Per-call overhead of the SDK against a bare reqwest client, both flavours, in one process.
//!
//! An in-process stub server on loopback answers `GET /sandboxes/{id}` with a fixed sandbox
//! (keep-alive). The same number of `get_info` calls is made through the SDK and through a bare
//! reqwest client that sends the same request (API key header) and decodes the same JSON into
//! `SandboxInfo` (the same headers as the SDK: API key, JSON content type, user agent). The
//! figure is process CPU time (user + system, from `getrusage`) per call,
//! the stub's share included in both; rounds alternate and the median ratio is printed.
//!
//! ```sh
//! cargo run --release --example bench_overhead --all-features
//! ```
//!
//! CPU time is noisy on a busy machine. For a figure that does not depend on the load, count
//! instructions with callgrind: `BENCH_ONLY=<flavour>-<sdk|raw>` runs the warm-up and then only
//! that loop, `BENCH_CALLS` sets its length; the instructions of a run with `BENCH_CALLS=0`
//! (start-up and warm-up) subtracted from one with `BENCH_CALLS=N` are the loop's:
//!
//! ```sh
//! for only in blocking-sdk blocking-raw async-sdk async-raw; do for n in 0 2000; do
//!   BENCH_ONLY=$only BENCH_CALLS=$n valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!     target/release/examples/bench_overhead 2>&1 | grep -o 'refs: *[0-9,]*'
//! done; done
//! ```

// `getrusage` for the process CPU time.
#![allow(unsafe_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use superserve::{Config, CreateOptions, SandboxInfo};

const CALLS: usize = 2000;
const ROUNDS: usize = 15;
const KEY: &str = "ss_live_bench000000000000000000000000";
const UA: &str = concat!("superserve-rust/", env!("CARGO_PKG_VERSION"));

fn sandbox_json(with_token: bool) -> String {
    let token = if with_token {
        r#","access_token":"tok-0123456789abcdef""#
    } else {
        ""
    };
    format!(
        r#"{{"id":"sb-bench","name":"bench","status":"active","vcpu_count":1,"memory_mib":512,"created_at":"2026-12-01T10:00:00.123456Z","metadata":{{"env":"bench"}},"preview_access":"private","timeout_seconds":3600{token}}}"#
    )
}

/// A keep-alive HTTP/1.1 stub: POST /sandboxes → 201 with a token, anything else → 200.
fn stub() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            std::thread::spawn(move || serve(conn));
        }
    });
    url
}

fn serve(conn: TcpStream) {
    let _ = conn.set_nodelay(true);
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut conn = conn;
    let get = sandbox_json(false);
    let created = sandbox_json(true);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let post = line.starts_with("POST");
        let mut len = 0usize;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            if h == "\r\n" {
                break;
            }
            let lower = h.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                len = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0u8; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let (status, json) = if post {
            ("201 Created", &created)
        } else {
            ("200 OK", &get)
        };
        let resp = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{json}",
            json.len()
        );
        if conn.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}

/// Process CPU time (user + system).
fn cpu() -> Duration {
    // SAFETY: getrusage fills the zeroed struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a rusage struct.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

fn measure(mut f: impl FnMut()) -> Duration {
    let before = cpu();
    for _ in 0..CALLS {
        f();
    }
    cpu() - before
}

/// `BENCH_ONLY` and `BENCH_CALLS`: one loop only (for instruction counts).
fn only() -> Option<(String, usize)> {
    let which = std::env::var("BENCH_ONLY").ok()?;
    let calls = std::env::var("BENCH_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(CALLS);
    Some((which, calls))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn report(flavour: &str, sdk: &[Duration], raw: &[Duration]) {
    let per = |d: &[Duration]| {
        median(
            d.iter()
                .map(|d| d.as_secs_f64() * 1e6 / CALLS as f64)
                .collect(),
        )
    };
    let ratios: Vec<f64> = sdk
        .iter()
        .zip(raw)
        .map(|(s, r)| s.as_secs_f64() / r.as_secs_f64())
        .collect();
    let total = |d: &[Duration]| d.iter().map(Duration::as_secs_f64).sum::<f64>();
    println!(
        "{flavour:<9} SDK get_info {:6.1} µs CPU/call   bare reqwest {:6.1} µs CPU/call   ratio of totals {:.3}, median round ratio {:.3} ({ROUNDS} rounds of {CALLS}, order alternating)",
        per(sdk),
        per(raw),
        total(sdk) / total(raw),
        median(ratios)
    );
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = stub();
    let config = Config::builder()
        .api_key(KEY)
        .base_url(&url)
        .sandbox_url(&url)
        .build()?;

    // Blocking flavour against reqwest::blocking.
    let sb = superserve::Sandbox::create_with_config(&config, CreateOptions::new("bench"))?;
    let raw = reqwest::blocking::Client::new();
    let raw_url = format!("{url}/sandboxes/sb-bench");
    let raw_call = || {
        let body = raw
            .get(&raw_url)
            .header("x-api-key", KEY)
            .header("content-type", "application/json")
            .header("user-agent", UA)
            .send()
            .and_then(|r| r.bytes())
            .unwrap();
        let info: SandboxInfo = serde_json::from_slice(&body).unwrap();
        assert_eq!(info.id, "sb-bench");
    };
    let sdk_call = || {
        let info = sb.get_info().unwrap();
        assert_eq!(info.id, "sb-bench");
    };
    // warm up both connection pools
    for _ in 0..200 {
        raw_call();
        sdk_call();
    }
    match only() {
        Some((which, n)) if which == "blocking-sdk" => (0..n).for_each(|_| sdk_call()),
        Some((which, n)) if which == "blocking-raw" => (0..n).for_each(|_| raw_call()),
        _ => {}
    }
    let run_all = only().is_none();
    let (mut s, mut r) = (Vec::new(), Vec::new());
    for round in (0..ROUNDS).filter(|_| run_all) {
        if round % 2 == 0 {
            s.push(measure(sdk_call));
            r.push(measure(raw_call));
        } else {
            r.push(measure(raw_call));
            s.push(measure(sdk_call));
        }
    }
    if run_all {
        report("blocking", &s, &r);
    }

    // Async flavour against reqwest::Client, on a current-thread runtime.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let sb = superserve::AsyncSandbox::create_with_config(&config, CreateOptions::new("bench"))
            .await
            .unwrap();
        let raw = reqwest::Client::new();
        let raw_call = || async {
            let body = raw
                .get(&raw_url)
                .header("x-api-key", KEY)
                .header("content-type", "application/json")
                .header("user-agent", UA)
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            let info: SandboxInfo = serde_json::from_slice(&body).unwrap();
            assert_eq!(info.id, "sb-bench");
        };
        let sdk_call = || async {
            let info = sb.get_info().await.unwrap();
            assert_eq!(info.id, "sb-bench");
        };
        for _ in 0..200 {
            raw_call().await;
            sdk_call().await;
        }
        if let Some((which, n)) = only() {
            for _ in 0..n {
                match which.as_str() {
                    "async-sdk" => sdk_call().await,
                    "async-raw" => raw_call().await,
                    _ => {}
                }
            }
            return;
        }
        let (mut s, mut r) = (Vec::new(), Vec::new());
        for round in 0..ROUNDS {
            for which in [round % 2, 1 - round % 2] {
                let before = cpu();
                for _ in 0..CALLS {
                    if which == 0 {
                        sdk_call().await;
                    } else {
                        raw_call().await;
                    }
                }
                let spent = cpu() - before;
                if which == 0 {
                    s.push(spent);
                } else {
                    r.push(spent);
                }
            }
        }
        report("async", &s, &r);
    });
    Ok(())
}
