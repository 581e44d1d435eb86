//! Benchmark of the local backend's preview proxy: the latency it adds to a small `GET` on a
//! kept-alive connection (p50, p90, p99) and the throughput of a 256 MiB download, through the
//! proxy (a private port: the token is checked on every request) against, as the baseline
//! measured in the same run, a connection made straight into the sandbox's network namespace
//! (`LocalServer::connect_to_sandbox_port`) to the same app. The app is a keep-alive HTTP/1.1
//! server inside the sandbox (Python's standard library, the download sent with `sendfile`).
//! Direct and proxied rounds alternate, so both see the same machine load.
//!
//! For the downloads it also prints the CPU time each path costs per GiB: the whole
//! machine's busy time (`/proc/stat`), the client (this program's main thread) and the
//! backend (its other threads, the proxy among them; `schedstat`). A path can carry at most
//! the machine's CPU count over its CPU time per byte, so the proxied path's cost bounds the
//! proxy's throughput on this machine, and its ratio to the direct median.
//!
//! ```text
//! cargo run --release --example bench_preview --features blocking,local
//! ```

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Instant;

use superserve::{CreateOptions, PreviewAccessPolicy, Sandbox, WaitOptions};

const PORT: u16 = 3000;
const BIG: u64 = 256 * 1024 * 1024;
const ROUNDS: usize = 10;
const SMALL_PER_ROUND: usize = 500;
const BIG_RUNS: usize = 5;

const APP: &str = r#"
import os, sys
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler

class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # headers and body leave in separate writes: without this, Nagle and delayed ACKs
    # would add 40 ms to every small answer
    disable_nagle_algorithm = True

    def log_message(self, *a):
        pass

    def do_GET(self):
        if self.path == "/big":
            size = os.path.getsize("/tmp/big.bin")
            self.send_response(200)
            self.send_header("Content-Length", str(size))
            self.end_headers()
            self.wfile.flush()
            with open("/tmp/big.bin", "rb") as f:
                self.connection.sendfile(f)
            return
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"#;

/// A kept-alive HTTP/1.1 client on one connection.
struct Client {
    reader: BufReader<TcpStream>,
    head: String,
}

impl Client {
    fn new(stream: TcpStream, host: &str, token: Option<&str>) -> Client {
        stream.set_nodelay(true).expect("nodelay");
        let mut head = format!("host: {host}\r\n");
        if let Some(t) = token {
            head.push_str(&format!("x-superserve-preview-token: {t}\r\n"));
        }
        Client {
            reader: BufReader::with_capacity(1 << 20, stream),
            head,
        }
    }

    /// `GET path`; returns the body's length (the body is read and dropped).
    fn get(&mut self, path: &str) -> u64 {
        let req = format!("GET {path} HTTP/1.1\r\n{}\r\n", self.head);
        self.reader
            .get_mut()
            .write_all(req.as_bytes())
            .expect("send");
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("status");
        assert!(
            line.starts_with("HTTP/1.1 200"),
            "unexpected answer {line:?}"
        );
        let mut len = 0u64;
        loop {
            line.clear();
            self.reader.read_line(&mut line).expect("header");
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().expect("content-length");
                }
            }
        }
        let copied =
            std::io::copy(&mut (&mut self.reader).take(len), &mut std::io::sink()).expect("body");
        assert_eq!(copied, len);
        len
    }
}

/// CPU time used so far, in seconds.
#[derive(Debug, Clone, Copy, Default)]
struct Cpu {
    /// Every CPU's busy time: all but idle and I/O wait (`/proc/stat`, in `USER_HZ` ticks,
    /// which Linux fixes at 100 per second).
    machine: f64,
    /// This program's main thread: the client.
    client: f64,
    /// This program's other threads: the embedded backend, its preview proxy among them.
    backend: f64,
}

impl Cpu {
    fn now() -> Cpu {
        let stat = std::fs::read_to_string("/proc/stat").expect("/proc/stat");
        let ticks: Vec<u64> = stat
            .lines()
            .next()
            .expect("cpu line")
            .split_whitespace()
            .skip(1)
            .map(|t| t.parse().expect("tick count"))
            .collect();
        // user nice system idle iowait irq softirq steal
        let busy: u64 = ticks.iter().take(8).sum::<u64>() - ticks[3] - ticks[4];
        let me = std::process::id().to_string();
        let (mut client, mut backend) = (0.0, 0.0);
        for task in std::fs::read_dir("/proc/self/task").expect("/proc/self/task") {
            let task = task.expect("task");
            // a thread may end between the listing and the read: its time is then not counted
            let Ok(s) = std::fs::read_to_string(task.path().join("schedstat")) else {
                continue;
            };
            let ns: f64 = s
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .expect("schedstat");
            if task.file_name().to_str() == Some(me.as_str()) {
                client += ns / 1e9;
            } else {
                backend += ns / 1e9;
            }
        }
        Cpu {
            machine: busy as f64 / 100.0,
            client,
            backend,
        }
    }

    fn add_since(&mut self, start: Cpu) {
        let now = Cpu::now();
        self.machine += now.machine - start.machine;
        self.client += now.client - start.client;
        self.backend += now.backend - start.backend;
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = superserve::local::LocalServer::start()?;
    let sb = Sandbox::create_with_config(
        &server.config(),
        CreateOptions::new("bench-preview").preview_access(PreviewAccessPolicy::Private),
    )?;
    sb.files().write("/srv/app.py", APP)?;
    sb.commands()
        .run(&format!(
            "head -c {BIG} /dev/urandom > /tmp/big.bin && \
             (nohup python3 /srv/app.py {PORT} >/tmp/app.log 2>&1 &)"
        ))?
        .check()?;
    sb.wait_for_port(PORT, WaitOptions::new().http_path("/small"))?;
    sb.publish_preview_port(PORT, None)?;
    let token = sb.get_preview_token(PORT, None)?.token;
    let preview_port = server
        .preview_url()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse::<u16>().ok())
        .ok_or("no port in the preview URL")?;
    let host = format!("{PORT}-{}.localhost:{preview_port}", sb.id());
    let direct = || {
        let s = server
            .connect_to_sandbox_port(sb.id(), PORT)
            .expect("connect into the sandbox");
        Client::new(s, &host, None)
    };
    let proxied = || {
        let s = TcpStream::connect(("127.0.0.1", preview_port)).expect("connect to the proxy");
        Client::new(s, &host, Some(&token))
    };

    // small GETs on kept-alive connections, rounds alternating
    let (mut d, mut p) = (direct(), proxied());
    for _ in 0..50 {
        d.get("/small");
        p.get("/small");
    }
    let (mut dt, mut pt) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        for (client, times) in [(&mut d, &mut dt), (&mut p, &mut pt)] {
            for _ in 0..SMALL_PER_ROUND {
                let t = Instant::now();
                client.get("/small");
                times.push(t.elapsed().as_secs_f64() * 1000.0);
            }
        }
    }
    dt.sort_by(f64::total_cmp);
    pt.sort_by(f64::total_cmp);
    let n = dt.len();
    println!("small GET on a kept-alive connection, {n} each (ms):");
    println!("                           p50       p90       p99");
    for (name, t) in [
        ("direct into the sandbox", &dt),
        ("through the preview proxy", &pt),
    ] {
        println!(
            "  {name:26}{:8.3}  {:8.3}  {:8.3}",
            percentile(t, 0.5),
            percentile(t, 0.9),
            percentile(t, 0.99)
        );
    }
    println!(
        "  added by the proxy (p50)  {:+8.3} ms   (goal <= 0.5 ms)",
        percentile(&pt, 0.5) - percentile(&dt, 0.5)
    );

    // 256 MiB downloads, each on a fresh kept-alive connection, alternating
    let (mut ds, mut ps) = (Vec::new(), Vec::new());
    let (mut dcpu, mut pcpu) = (Cpu::default(), Cpu::default());
    let (mut dwall, mut pwall) = (0.0, 0.0);
    for _ in 0..BIG_RUNS {
        for via_proxy in [false, true] {
            let mut c = if via_proxy { proxied() } else { direct() };
            let cpu = Cpu::now();
            let t = Instant::now();
            let got = c.get("/big");
            let secs = t.elapsed().as_secs_f64();
            assert_eq!(got, BIG);
            let (speeds, used, wall) = if via_proxy {
                (&mut ps, &mut pcpu, &mut pwall)
            } else {
                (&mut ds, &mut dcpu, &mut dwall)
            };
            used.add_since(cpu);
            *wall += secs;
            speeds.push(got as f64 / (1024.0 * 1024.0) / secs);
        }
    }
    ds.sort_by(f64::total_cmp);
    ps.sort_by(f64::total_cmp);
    let (dm, pm) = (percentile(&ds, 0.5), percentile(&ps, 0.5));
    println!("256 MiB download, median of {BIG_RUNS}:");
    println!("  direct into the sandbox   {dm:8.1} MiB/s");
    println!(
        "  through the preview proxy {pm:8.1} MiB/s   ({:.2}x direct; goal >= 0.8x)",
        pm / dm
    );
    // the machine's CPUs, as /proc/stat counts them (the busy time is the whole machine's,
    // whatever this program's affinity)
    let cpus = std::fs::read_to_string("/proc/stat")?
        .lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .count()
        .max(1);
    let gib = (BIG_RUNS as u64 * BIG) as f64 / (1u64 << 30) as f64;
    println!("CPU time per GiB downloaded, all {BIG_RUNS} runs ({cpus} CPUs):");
    println!("                            machine    client   backend  app+kernel   CPUs busy");
    for (name, c, wall) in [
        ("direct into the sandbox", dcpu, dwall),
        ("through the preview proxy", pcpu, pwall),
    ] {
        let rest = c.machine - c.client - c.backend;
        println!(
            "  {name:25} {:6.0} ms {:6.0} ms {:6.0} ms {:8.0} ms   {:6.0} %",
            c.machine / gib * 1000.0,
            c.client / gib * 1000.0,
            c.backend / gib * 1000.0,
            rest / gib * 1000.0,
            c.machine / (wall * cpus as f64) * 100.0
        );
    }
    // every CPU busy at the proxied path's cost per byte: the most it could carry here
    let cap = cpus as f64 / (pcpu.machine / gib) * 1024.0;
    println!(
        "  the proxied path costs {:.2}x the CPU per byte; with all {cpus} CPUs busy at that \
         cost it carries at most {cap:.0} MiB/s: {:.2}x the direct median",
        pcpu.machine / dcpu.machine,
        cap / dm
    );
    sb.kill()?;
    Ok(())
}
