//! Benchmark of the local backend's egress proxy: throughput of a 256 MiB HTTP download and
//! the time of one small request on a fresh connection, each from inside a sandbox (through
//! the transparent proxy: DNS, policy check, network log, relay) and, as the baseline measured
//! in the same run, the same `curl` from the host straight to the upstream. The upstream is a
//! real HTTP server in a network namespace of its own on this machine.
//!
//! ```text
//! cargo run --release --example bench_egress --all-features
//! ```

#[path = "../tests/common/upstream.rs"]
mod upstream;

use superserve::{CreateOptions, NetworkLogOptions, Sandbox};

const SIZE: u64 = 256 * 1024 * 1024;
const RUNS: usize = 5;
const SMALL: usize = 50;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// `curl -w` figures, one line per request: "<time_total s> <bytes> <http code>".
fn parse(out: &str) -> Vec<(f64, u64)> {
    out.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let t = it.next()?.parse().ok()?;
            let n = it.next()?.parse().ok()?;
            (it.next()? == "200").then_some((t, n))
        })
        .collect()
}

fn host_sh(cmd: &str) -> String {
    let out = std::process::Command::new("sh")
        .args(["-c", cmd])
        .output()
        .expect("sh");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = superserve::local::LocalServer::builder()
        .allow_private_destination("10.88.0.0/16")
        .start()?;
    if !server.egress_available() {
        return Err("egress needs nf_tables NAT in the kernel".into());
    }
    let up = upstream::Upstream::start();
    server.set_dns_host("bench.upstream.test", up.ip);
    let sb = Sandbox::create_with_config(&server.config(), CreateOptions::new("bench-egress"))?;
    let fmt = "-w '%{time_total} %{size_download} %{http_code}\\n'";

    let big = |via_proxy: bool| -> Vec<f64> {
        let host = if via_proxy {
            "bench.upstream.test".to_owned()
        } else {
            up.ip.to_string()
        };
        let cmd = format!("curl -s -o /dev/null {fmt} http://{host}/bytes/{SIZE}");
        let mut speeds = Vec::new();
        for _ in 0..RUNS {
            let out = if via_proxy {
                sb.commands().run(&cmd).expect("run").stdout
            } else {
                host_sh(&cmd)
            };
            let (t, n) = parse(&out).first().copied().expect("a 200 download");
            assert_eq!(n, SIZE);
            speeds.push(n as f64 / (1024.0 * 1024.0) / t);
        }
        speeds
    };
    let small = |via_proxy: bool| -> Vec<f64> {
        let host = if via_proxy {
            "bench.upstream.test".to_owned()
        } else {
            up.ip.to_string()
        };
        let cmd = format!(
            "for i in $(seq {SMALL}); do curl -s -o /dev/null {fmt} http://{host}/small; done"
        );
        let out = if via_proxy {
            sb.commands().run(&cmd).expect("run").stdout
        } else {
            host_sh(&cmd)
        };
        let v: Vec<f64> = parse(&out).into_iter().map(|(t, _)| t * 1000.0).collect();
        assert_eq!(v.len(), SMALL);
        v
    };

    // interleave so both see the same machine load
    let direct_big = big(false);
    let proxy_big = big(true);
    let direct_small = small(false);
    let proxy_small = small(true);

    let (d, p) = (median(direct_big), median(proxy_big));
    println!("256 MiB download, median of {RUNS}:");
    println!("  direct (host -> upstream)         {d:8.1} MiB/s");
    println!(
        "  via egress proxy (sandbox)        {p:8.1} MiB/s   ({:.2}x direct)",
        p / d
    );
    let (ds, ps) = (median(direct_small), median(proxy_small));
    println!("small request on a new connection, median of {SMALL}:");
    println!("  direct                            {ds:8.3} ms");
    println!(
        "  via egress proxy (incl. DNS)      {ps:8.3} ms   (+{:.3} ms per request)",
        ps - ds
    );

    // the proxy logged the big downloads with their byte counts
    let page = sb.get_network_log(NetworkLogOptions::new().limit(1000))?;
    let logged = page
        .events
        .iter()
        .filter(|e| e.bytes_recv.unwrap_or(0) >= SIZE)
        .count();
    println!(
        "network log: {} events, {logged} of them >= 256 MiB received",
        page.events.len()
    );
    sb.kill()?;
    Ok(())
}
