//! Soak test of the local backend: 1,000 create → exec → kill cycles, then the count of
//! everything a sandbox could leak: processes, mounts (and loop devices), cgroups, network
//! namespaces, veths and the backend's descriptors. Each count must be 0. Descriptors of the
//! API connections between the client and the backend (both ends are in this process) are
//! counted apart: how many keep-alive connections the SDK's pool holds is its own business.
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

/// Inodes of the established TCP connections from or to one of `ports` whose other end is
/// established on this host too (a live client-backend connection; a socket the backend
/// failed to close after its client went is in another state and is not one of them).
fn connections_on(ports: &[u16]) -> BTreeSet<String> {
    let mut rows = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if let (Some(local), Some(remote), Some("01"), Some(inode)) =
                (f.get(1), f.get(2), f.get(3).copied(), f.get(9))
            {
                rows.push((local.to_string(), remote.to_string(), inode.to_string()));
            }
        }
    }
    let port = |a: &str| {
        a.rsplit(':')
            .next()
            .and_then(|p| u16::from_str_radix(p, 16).ok())
            .unwrap_or(0)
    };
    let established: BTreeSet<(&str, &str)> = rows
        .iter()
        .map(|(l, r, _)| (l.as_str(), r.as_str()))
        .collect();
    rows.iter()
        .filter(|(l, r, _)| ports.contains(&port(l)) || ports.contains(&port(r)))
        .filter(|(l, r, _)| established.contains(&(r.as_str(), l.as_str())))
        .map(|(_, _, inode)| inode.clone())
        .collect()
}

/// This process's descriptors, in two counts: the API connections between the client and
/// the backend (both ends are in this process: the SDK's pooled keep-alive connections and
/// the backend's side of them), and every other descriptor.
fn descriptors(api_ports: &[u16]) -> (usize, usize) {
    let api = connections_on(api_ports);
    let (mut conns, mut other) = (0, 0);
    for e in std::fs::read_dir("/proc/self/fd")
        .into_iter()
        .flatten()
        .flatten()
    {
        let target = std::fs::read_link(e.path())
            .map(|l| l.to_string_lossy().into_owned())
            .unwrap_or_default();
        let inode = target
            .strip_prefix("socket:[")
            .and_then(|t| t.strip_suffix(']'));
        if inode.is_some_and(|i| api.contains(i)) {
            conns += 1;
        } else {
            other += 1;
        }
    }
    (conns, other)
}

/// The port of a URL such as `http://127.0.0.1:8080`.
fn port_of(url: &str) -> u16 {
    url.rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse().ok())
        .unwrap_or(0)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cycles: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1000);
    let server = superserve::local::LocalServer::start()?;
    let config = server.config();
    let api_ports = [port_of(server.base_url()), port_of(server.sandbox_url())];
    let instance = std::fs::read_to_string(server.data_dir().join(".instance"))?
        .trim()
        .to_owned();
    // warm-up: the first sandbox makes the disk template and the client's connections
    let sb = Sandbox::create_with_config(&config, CreateOptions::new("warm-up"))?;
    sb.commands().run("true")?;
    sb.kill()?;
    // the backend keeps a few disks and network namespaces ready for the next creates (its
    // warm pools, refilled in the background): they are counted once refilled
    std::thread::sleep(std::time::Duration::from_millis(500));
    let (mounts0, netns0, veths0) = (mount_lines(), net_namespaces().len(), veths());
    // the backend's own loop device (the layer store's pool) is there before any sandbox
    let loops0 = loop_devices(server.data_dir());
    let (conns0, fds0) = descriptors(&api_ports);

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
        netns_leaked = net_namespaces().len().saturating_sub(netns0);
        if netns_leaked == 0 && loop_devices(server.data_dir()) <= loops0 {
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
        loop_devices(server.data_dir()).saturating_sub(loops0)
    );
    println!("leaked cgroups:            {}", cgroups(&instance));
    println!("leaked network namespaces: {netns_leaked}");
    println!(
        "leaked veths:              {}",
        veths().saturating_sub(veths0)
    );
    let (conns, fds) = descriptors(&api_ports);
    println!("leaked descriptors:        {}", fds.saturating_sub(fds0));
    // not a leak: the client's pool keeps what keep-alive connections it wants (bounded by
    // its idle limits), and each one is two descriptors of this process
    println!(
        "API connection descriptors (the SDK's pooled connections and the backend's ends): \
         {conns0} before, {conns} after"
    );
    Ok(())
}
