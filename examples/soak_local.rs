//! Soak test of the local backend: 1,000 create → exec → kill cycles, then the count of
//! everything a sandbox could leak: processes, mounts (and loop devices), cgroups, network
//! namespaces, veths and the backend's descriptors. Each count must be 0.
//!
//! ```text
//! cargo run --release --example soak_local --all-features [-- CYCLES]
//! ```

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Instant;

use superserve::{CreateOptions, Sandbox};

fn pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Processes that are sandbox agents started by this process, or live in its cgroups.
fn sandbox_processes(instance: &str) -> usize {
    let me = std::process::id().to_string();
    pids()
        .into_iter()
        .filter(|pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let ppid = status
                .lines()
                .find_map(|l| l.strip_prefix("PPid:"))
                .map(str::trim);
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
            (ppid == Some(me.as_str()) && cmd.starts_with(b"superserve-agent"))
                || cg.contains(&format!("superserve-local/{instance}/"))
        })
        .count()
}

fn mount_lines() -> usize {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|m| m.lines().count())
        .unwrap_or(0)
}

/// Loop devices whose backing file is in `dir`.
fn loop_devices(dir: &Path) -> usize {
    let dir = dir.to_string_lossy().into_owned();
    std::fs::read_dir("/sys/block")
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    std::fs::read_to_string(e.path().join("loop/backing_file"))
                        .is_ok_and(|b| b.starts_with(&dir))
                })
                .count()
        })
        .unwrap_or(0)
}

/// Sandbox groups of the instance in every v1 hierarchy.
fn cgroups(instance: &str) -> usize {
    std::fs::read_dir("/sys/fs/cgroup")
        .map(|d| {
            d.flatten()
                .map(|h| {
                    std::fs::read_dir(h.path().join("superserve-local").join(instance))
                        .map(|g| g.flatten().filter(|e| e.path().is_dir()).count())
                        .unwrap_or(0)
                })
                .sum()
        })
        .unwrap_or(0)
}

/// Network namespaces held by any process or by a descriptor of this one.
fn net_namespaces() -> BTreeSet<String> {
    let mut set = BTreeSet::new();
    for pid in pids() {
        if let Ok(l) = std::fs::read_link(format!("/proc/{pid}/ns/net")) {
            set.insert(l.to_string_lossy().into_owned());
        }
    }
    for e in std::fs::read_dir("/proc/self/fd")
        .into_iter()
        .flatten()
        .flatten()
    {
        if let Ok(l) = std::fs::read_link(e.path()) {
            let l = l.to_string_lossy().into_owned();
            if l.starts_with("net:") {
                set.insert(l);
            }
        }
    }
    set
}

fn veths() -> usize {
    std::fs::read_dir("/sys/class/net")
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("veth"))
                .count()
        })
        .unwrap_or(0)
}

fn descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cycles: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1000);
    let server = superserve::local::LocalServer::start()?;
    let config = server.config();
    let instance = std::fs::read_to_string(server.data_dir().join(".instance"))?
        .trim()
        .to_owned();
    // warm-up: the first sandbox makes the disk template and the client's connections
    let sb = Sandbox::create_with_config(&config, CreateOptions::new("warm-up"))?;
    sb.commands().run("true")?;
    sb.kill()?;
    let (mounts0, netns0, veths0, fds0) = (mount_lines(), net_namespaces(), veths(), descriptors());

    let t = Instant::now();
    for i in 0..cycles {
        let sb = Sandbox::create_with_config(&config, CreateOptions::new(format!("soak-{i}")))?;
        let r = sb.commands().run("echo soak")?;
        assert_eq!(r.stdout, "soak\n");
        sb.kill()?;
    }
    let elapsed = t.elapsed();
    // the last sandboxes' disks and namespaces are torn down in the background (the kernel
    // and a blocking thread finish after `kill` returns): give that up to 5 s to settle
    let mut netns_leaked = usize::MAX;
    for _ in 0..50 {
        netns_leaked = net_namespaces().difference(&netns0).count();
        if netns_leaked == 0 && loop_devices(server.data_dir()) == 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    println!(
        "{cycles} create/exec/kill cycles in {:.1} s ({:.1} ms each)",
        elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1000.0 / cycles as f64
    );
    println!(
        "leaked processes:          {}",
        sandbox_processes(&instance)
    );
    println!(
        "leaked mounts:             {}",
        mount_lines().saturating_sub(mounts0)
    );
    println!(
        "leaked loop devices:       {}",
        loop_devices(server.data_dir())
    );
    println!("leaked cgroups:            {}", cgroups(&instance));
    println!("leaked network namespaces: {netns_leaked}");
    println!(
        "leaked veths:              {}",
        veths().saturating_sub(veths0)
    );
    println!(
        "leaked descriptors:        {}",
        descriptors().saturating_sub(fds0)
    );
    Ok(())
}
