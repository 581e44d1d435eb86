//! Benchmark of the local backend's snapshots: the time to snapshot a running sandbox that
//! holds 1 GiB of written data against one that holds 1 MiB (a capture is a reflink of the
//! disk: its cost should not depend on the data), the room the snapshots take in the data
//! directory (nothing copied), and create-from-snapshot → first command (p50) against a plain
//! create → first command, the baseline measured in the same run.
//!
//! ```text
//! cargo run --release --example bench_snapshot --all-features
//! ```

use std::os::unix::fs::MetadataExt;
use std::time::Instant;

use superserve::local::LocalServer;
use superserve::{CreateOptions, Sandbox, SnapshotOptions};

const SNAPSHOTS: usize = 5;
const CREATES: usize = 15;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

/// Bytes the data directory's files take on the host's disk (the pool image is sparse).
fn used(server: &LocalServer) -> u64 {
    fn walk(p: &std::path::Path) -> u64 {
        let Ok(m) = std::fs::symlink_metadata(p) else {
            return 0;
        };
        let own = m.blocks() * 512;
        if m.is_dir() {
            own + std::fs::read_dir(p)
                .map(|d| d.flatten().map(|e| walk(&e.path())).sum())
                .unwrap_or(0)
        } else {
            own
        }
    }
    walk(server.data_dir())
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = LocalServer::builder().sandbox_disk_mib(2048).start()?;
    let config = server.config();
    let big = Sandbox::create_with_config(&config, CreateOptions::new("bench-snap-1g"))?;
    let small = Sandbox::create_with_config(&config, CreateOptions::new("bench-snap-1m"))?;
    for (sb, count) in [(&big, 1024), (&small, 1)] {
        let r = sb.commands().run(&format!(
            "head -c {count}M /dev/urandom > /opt/data && sync && du -m /opt/data"
        ))?;
        assert_eq!(r.exit_code, 0, "{r:?}");
        print!("written: {}", r.stdout);
    }
    // a process keeps running through the captures
    big.commands().run("nohup sleep 3600 >/dev/null 2>&1 &")?;

    let before = used(&server);
    let times = |sb: &Sandbox| -> Result<Vec<f64>, superserve::Error> {
        let mut v = Vec::new();
        for _ in 0..SNAPSHOTS {
            let t = Instant::now();
            sb.snapshot(SnapshotOptions::new())?;
            v.push(ms(t));
        }
        Ok(v)
    };
    let t_big = median(times(&big)?);
    let t_small = median(times(&small)?);
    let after = used(&server);
    println!(
        "snapshot (p50 of {SNAPSHOTS}, request to ready): 1 GiB sandbox {t_big:.1} ms, \
         1 MiB sandbox {t_small:.1} ms, ratio {:.2}",
        t_big / t_small
    );
    println!(
        "data directory on disk: {:.1} MiB before, {:.1} MiB after {} snapshots \
         (+{:.1} MiB; 1 GiB copied once would be +1024)",
        mib(before),
        mib(after),
        2 * SNAPSHOTS,
        mib(after.saturating_sub(before))
    );
    let still = big.commands().run("pgrep -x sleep | wc -l")?;
    println!("process kept running: {}", still.stdout.trim() == "1");

    let snap = big.snapshot(SnapshotOptions::new().name("boot"))?;
    let mut plain = Vec::new();
    let mut forked = Vec::new();
    for i in 0..CREATES {
        for from_snapshot in [false, true] {
            let t = Instant::now();
            let mut opts = CreateOptions::new(format!("bench-{i}"));
            if from_snapshot {
                opts = opts.from_snapshot(&snap);
            }
            let sb = Sandbox::create_with_config(&config, opts)?;
            let r = sb.commands().run("true")?;
            assert_eq!(r.exit_code, 0);
            let v = ms(t);
            sb.kill()?;
            if from_snapshot {
                forked.push(v);
            } else {
                plain.push(v);
            }
        }
    }
    let (p, f) = (median(plain), median(forked));
    println!(
        "create -> first command (p50 of {CREATES}): plain {p:.1} ms, from the 1 GiB \
         snapshot {f:.1} ms, ratio {:.2}",
        f / p
    );
    big.kill()?;
    small.kill()?;
    Ok(())
}
