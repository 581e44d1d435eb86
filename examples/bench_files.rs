//! Benchmark: stream a 1 GiB file into a sandbox and back with the streamed file API, and
//! compare with a raw loopback HTTP transfer of the same size (the baseline) measured in the
//! same run. Then downloads a directory of about the same size (files of several sizes in a
//! few subdirectories, made inside the sandbox) as a ZIP archive. Prints throughput and the
//! process's peak RSS (which includes the in-process local backend), the ZIP download's own
//! peak measured from a reset high-water mark.
//!
//! ```text
//! cargo run --release --example bench_files --all-features [-- SIZE_MIB]
//! ```

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::time::Instant;

use superserve::{CreateOptions, Sandbox};

/// Yields `len` bytes of a cheap pattern without holding them in memory.
struct Pattern {
    left: u64,
}

impl Read for Pattern {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (buf.len() as u64).min(self.left) as usize;
        for (i, b) in buf[..n].iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(31).wrapping_add(7);
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// Counts what is written and drops it.
struct Sink(u64);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Resets the peak RSS high-water mark (`VmHWM`) of this process.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn mib_s(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0) / secs
}

/// A minimal HTTP/1.1 server: POST bodies are read and discarded, GET answers `size` bytes.
fn raw_server(size: u64) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().expect("clone"));
                let mut conn = conn;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let get = line.starts_with("GET");
                    let mut len = 0u64;
                    let mut chunked = false;
                    loop {
                        let mut h = String::new();
                        if reader.read_line(&mut h).unwrap_or(0) == 0 {
                            return;
                        }
                        let lower = h.trim_end().to_ascii_lowercase();
                        if lower.is_empty() {
                            break;
                        }
                        if let Some(v) = lower.strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap_or(0);
                        }
                        if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
                            chunked = true;
                        }
                    }
                    if chunked {
                        loop {
                            let mut size_line = String::new();
                            reader.read_line(&mut size_line).ok();
                            let n = u64::from_str_radix(size_line.trim(), 16).unwrap_or(0);
                            std::io::copy(&mut (&mut reader).take(n + 2), &mut std::io::sink())
                                .ok();
                            if n == 0 {
                                break;
                            }
                        }
                    } else {
                        std::io::copy(&mut (&mut reader).take(len), &mut std::io::sink()).ok();
                    }
                    if get {
                        let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {size}\r\n\r\n");
                        conn.write_all(head.as_bytes()).ok();
                        std::io::copy(&mut Pattern { left: size }, &mut conn).ok();
                    } else {
                        conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
                            .ok();
                    }
                }
            });
        }
    });
    url
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let size_mib: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1024);
    let size = size_mib * 1024 * 1024;
    println!("bench_files: {size_mib} MiB each way");

    let server = superserve::local::LocalServer::start()?;
    let sb = Sandbox::create_with_config(&server.config(), CreateOptions::new("bench-files"))?;
    let rss_before = peak_rss_mib();

    let t = Instant::now();
    let sent = sb
        .files()
        .write_from("/data/big.bin", Pattern { left: size })?;
    let up = t.elapsed().as_secs_f64();
    assert_eq!(sent, size);

    let t = Instant::now();
    let mut sink = Sink(0);
    let got = sb
        .files()
        .timeout(std::time::Duration::from_secs(120))
        .read_into("/data/big.bin", &mut sink)?;
    let down = t.elapsed().as_secs_f64();
    assert_eq!(got, size);
    let rss_sdk = peak_rss_mib();

    // A directory of about `size` bytes: 1,000 small files and files of 1 and 16 MiB in
    // subdirectories, written inside the sandbox.
    let big_files = size.saturating_sub(1000 * 4096) / (17 * 1024 * 1024);
    let made = sb.commands().run(&format!(
        "set -e; mkdir -p /zipped/small /zipped/big/deeper; \
         for i in $(seq 1000); do head -c 4096 /dev/urandom > /zipped/small/s$i; done; \
         head -c 16M /dev/urandom > /tmp/seed; head -c 1M /tmp/seed > /tmp/seed1; \
         for i in $(seq {big_files}); do cp /tmp/seed /zipped/big/b$i; \
           cp /tmp/seed1 /zipped/big/deeper/m$i; done; \
         du -sb /zipped | cut -f1"
    ))?;
    let dir_bytes: u64 = made.stdout.trim().parse().unwrap_or(0);
    assert_eq!(made.exit_code, 0, "{}", made.stderr);
    reset_peak_rss();
    let t = Instant::now();
    let mut sink = Sink(0);
    let zipped = sb
        .files()
        .timeout(std::time::Duration::from_secs(120))
        .download_dir_into("/zipped", &mut sink)?;
    let zip_secs = t.elapsed().as_secs_f64();
    let rss_zip = peak_rss_mib();
    assert!(zipped >= dir_bytes, "{zipped} < {dir_bytes}");
    sb.kill()?;

    // Baseline: the same transfer as raw loopback HTTP (no sandbox, no disk).
    let url = raw_server(size);
    let client = reqwest::blocking::Client::builder().timeout(None).build()?;
    let t = Instant::now();
    let resp = client
        .post(format!("{url}/upload"))
        .body(reqwest::blocking::Body::new(Pattern { left: size }))
        .send()?;
    assert!(resp.status().is_success());
    let base_up = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut resp = client.get(format!("{url}/download")).send()?;
    let n = std::io::copy(&mut resp, &mut Sink(0))?;
    let base_down = t.elapsed().as_secs_f64();
    assert_eq!(n, size);

    println!(
        "upload   (write_from): {:8.1} MiB/s   baseline raw HTTP: {:8.1} MiB/s   ratio {:.2}",
        mib_s(size, up),
        mib_s(size, base_up),
        base_up / up
    );
    println!(
        "download (read_into):  {:8.1} MiB/s   baseline raw HTTP: {:8.1} MiB/s   ratio {:.2}",
        mib_s(size, down),
        mib_s(size, base_down),
        base_down / down
    );
    println!(
        "zip download (download_dir_into, {:.0} MiB directory, {:.0} MiB archive): {:8.1} MiB/s   ratio to raw download {:.2}   peak RSS during it: {:.1} MiB",
        dir_bytes as f64 / (1024.0 * 1024.0),
        zipped as f64 / (1024.0 * 1024.0),
        mib_s(zipped, zip_secs),
        base_down / zip_secs * (zipped as f64 / size as f64),
        rss_zip
    );
    println!(
        "peak RSS: {:.1} MiB after the SDK transfers (before them: {:.1} MiB; limit 64 MiB)",
        rss_sdk, rss_before
    );
    if rss_sdk >= 64.0 {
        eprintln!("peak RSS is over the 64 MiB budget");
        std::process::exit(1);
    }
    Ok(())
}
