//! OCI pull + unpack throughput of the local backend's image puller against `skopeo copy` of
//! the same image from the same loopback registry, in the same run.
//!
//! ```text
//! cargo run --release --example bench_pull --all-features [-- ROUNDS]
//! ```
//!
//! Starts Debian's `docker-registry` on a free loopback port, pushes an image of at least
//! 100 MiB (gzip) made of this machine's `/usr` files, then times, per round, a pull into an
//! empty layer store (download, digest check, gunzip, unpack with owners/modes/times) and
//! `skopeo copy docker://… dir:…` (download and digest check only). Prints MiB/s and the
//! ratio of the medians. Needs root (the unpacker sets owners) and the `docker-registry` and
//! `skopeo` packages.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

// The puller is crate-private; the benchmark compiles the same source as a module of its own.
#[allow(dead_code, unused_imports)]
#[path = "../src/local/oci/mod.rs"]
mod oci;
#[path = "../src/local/oci/testutil.rs"]
mod testutil;

const TARGET_GZ: u64 = 110 << 20;
const LAYER_RAW: u64 = 64 << 20;
const MIB: f64 = 1048576.0;

fn usr_files() -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![
        PathBuf::from("/usr/lib/x86_64-linux-gnu"),
        PathBuf::from("/usr/bin"),
        PathBuf::from("/usr/share"),
    ];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        let mut entries: Vec<_> = rd.flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let Ok(t) = e.file_type() else { continue };
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                out.push(e.path());
            }
        }
    }
    out
}

/// Layers of /usr files, gzip level 6 (as `docker build` does), until ≥ TARGET_GZ.
fn build_layers() -> (Vec<Vec<u8>>, u64) {
    let mut layers = Vec::new();
    let (mut gz_total, mut raw_total) = (0u64, 0u64);
    let mut files = usr_files().into_iter();
    while gz_total < TARGET_GZ {
        let mut t = testutil::Tar::new();
        let mut raw = 0u64;
        for f in files.by_ref() {
            let Ok(data) = std::fs::read(&f) else {
                continue;
            };
            raw += data.len() as u64;
            let path = f
                .strip_prefix("/")
                .unwrap_or(&f)
                .to_string_lossy()
                .into_owned();
            if path.len() > 250 {
                continue;
            }
            t.file_with(&path, &data, 0o644, 0, 0, 1_600_000_000);
            if raw >= LAYER_RAW {
                break;
            }
        }
        assert!(raw > 0, "ran out of /usr files before {TARGET_GZ} bytes");
        let gz = testutil::gzip(&t.finish(), 6);
        gz_total += gz.len() as u64;
        raw_total += raw;
        layers.push(gz);
    }
    (layers, raw_total)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn remove(p: &Path) {
    let _ = std::fs::remove_dir_all(p);
}

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(3)
        .max(1);
    assert!(
        Path::new("/usr/bin/skopeo").exists(),
        "skopeo is not installed: apt-get install skopeo"
    );
    let reg = testutil::TestRegistry::start();
    let scratch = testutil::Scratch::new("bench-pull");
    let (layers, raw_total) = build_layers();
    let gz_total: u64 = layers.iter().map(|l| l.len() as u64).sum();
    let config = testutil::config_json("amd64", &[], "/", "", &["sh"]);
    reg.push_image("bench/usr", "1", &layers, &config, false);
    let reference = format!("{}/bench/usr:1", reg.host());
    println!(
        "image: {} layers, {:.1} MiB gzip, {:.1} MiB of files; {rounds} rounds each",
        layers.len(),
        gz_total as f64 / MIB,
        raw_total as f64 / MIB
    );
    drop(layers);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (mut ours, mut skopeo) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let store = scratch.0.join(format!("store-{round}"));
        let t = Instant::now();
        let img = rt
            .block_on(oci::pull(
                &oci::PullOptions::default(),
                &reference,
                &store,
                &|_| {},
            ))
            .unwrap_or_else(|e| panic!("pull: {e}"));
        ours.push(t.elapsed());
        assert!(img.layers.iter().all(|l| l.downloaded && l.dir.is_dir()));
        remove(&store);

        let dir = scratch.0.join(format!("skopeo-{round}"));
        let t = Instant::now();
        let st = Command::new("skopeo")
            .args(["copy", "--quiet", "--src-tls-verify=false"])
            .arg(format!("docker://{reference}"))
            .arg(format!("dir:{}", dir.display()))
            .status()
            .expect("run skopeo");
        skopeo.push(t.elapsed());
        assert!(st.success(), "skopeo copy failed");
        remove(&dir);
    }
    let (o, s) = (median(ours), median(skopeo));
    let mibs = |d: Duration| gz_total as f64 / MIB / d.as_secs_f64();
    println!(
        "pull+unpack (superserve):  median {:>7.0} ms  {:>7.1} MiB/s gzip  {:>7.1} MiB/s unpacked",
        o.as_secs_f64() * 1e3,
        mibs(o),
        raw_total as f64 / MIB / o.as_secs_f64()
    );
    println!(
        "skopeo copy dir: (download): median {:>7.0} ms  {:>7.1} MiB/s gzip",
        s.as_secs_f64() * 1e3,
        mibs(s)
    );
    println!(
        "ratio pull+unpack / skopeo copy: {:.2}x",
        o.as_secs_f64() / s.as_secs_f64()
    );
}
