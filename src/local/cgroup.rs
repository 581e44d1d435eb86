//! cgroup v1: one group per sandbox in the `freezer` (pause/resume), `memory`, `cpu` and `pids`
//! hierarchies, under `<hierarchy>/superserve-local/<instance>/<sandbox id>`, where the
//! instance names one data directory: a backend restarted on it finds (and removes) every
//! group a crashed predecessor left, and never touches another backend's groups.
//!
//! Limits: memory including swap (`memory.memsw.*`; without it the backend refuses to start
//! on a host with swap), CPU quota, a `pids.max` per sandbox, and one over all sandboxes of
//! every backend (`superserve-local` itself) so that many sandboxes together cannot take every
//! pid of the host.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::error::LocalError;
use super::sys;

/// Name of the parent group in every hierarchy.
const PARENT: &str = "superserve-local";
/// Processes (tasks) per sandbox: the fork-bomb guard.
pub(crate) const PIDS_MAX: u32 = 1024;
/// Share of the host's `kernel.pid_max` that all sandboxes together may use.
const PIDS_SHARE_PERCENT: u64 = 50;

/// The parent groups this backend uses.
#[derive(Clone, Debug)]
pub(crate) struct Cgroups {
    freezer: PathBuf,
    memory: PathBuf,
    cpu: Option<PathBuf>,
    pids: PathBuf,
    /// Whether the kernel offers `memory.memsw.*`.
    memsw: bool,
}

/// Undoes the `\040`-style escapes of `/proc/self/mounts`.
fn unescape_mount_path(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = u32::from(b[i + 1] - b'0') * 64
                + u32::from(b[i + 2] - b'0') * 8
                + u32::from(b[i + 3] - b'0');
            out.push(u8::try_from(v).unwrap_or(b'?'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Mount points of the v1 hierarchies, by controller.
fn v1_mounts() -> io::Result<Vec<(PathBuf, Vec<String>)>> {
    let mounts = std::fs::read_to_string("/proc/self/mounts")?;
    Ok(mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_src, dir, fstype, opts) = (f.next()?, f.next()?, f.next()?, f.next()?);
            (fstype == "cgroup").then(|| {
                (
                    PathBuf::from(unescape_mount_path(dir)),
                    opts.split(',').map(str::to_owned).collect(),
                )
            })
        })
        .collect())
}

impl Cgroups {
    /// Finds the hierarchies and creates this instance's parent groups. The freezer, memory
    /// and pids controllers are required (pause, memory limit, fork-bomb guard); `cpu` is
    /// used when present.
    pub(crate) fn discover(instance: &str) -> Result<Cgroups, LocalError> {
        let mounts = v1_mounts().map_err(|e| LocalError::Unsupported {
            what: "cgroups",
            detail: format!("cannot read /proc/self/mounts: {e}"),
        })?;
        let find = |ctrl: &str| {
            mounts
                .iter()
                .find(|(_, opts)| opts.iter().any(|o| o == ctrl))
                .map(|(dir, _)| dir.join(PARENT))
        };
        let required = |ctrl: &'static str, what: &'static str| {
            find(ctrl).ok_or_else(|| LocalError::Unsupported {
                what,
                detail: format!(
                    "no cgroup v1 hierarchy with the {ctrl} controller is mounted \
                     (cgroup v2-only hosts are not supported yet)"
                ),
            })
        };
        let freezer = required("freezer", "the cgroup v1 freezer")?;
        let memory = required("memory", "the cgroup v1 memory controller")?;
        let pids = required("pids", "the cgroup v1 pids controller")?;
        let swap = std::fs::read_to_string("/proc/meminfo")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("SwapTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0);
        let memsw = memory
            .with_file_name("memory.memsw.limit_in_bytes")
            .exists();
        if swap > 0 && !memsw {
            return Err(LocalError::Unsupported {
                what: "memory limits that include swap",
                detail: "the host has swap but the kernel offers no memory.memsw.* (boot with \
                         swapaccount=1, or disable swap)"
                    .into(),
            });
        }
        let create = |dir: &Path, what: &'static str| {
            std::fs::create_dir_all(dir).map_err(|e| LocalError::Unsupported {
                what,
                detail: format!("cannot create {}: {e}", dir.display()),
            })
        };
        create(&pids, "the cgroup v1 pids controller")?;
        let pid_max = std::fs::read_to_string("/proc/sys/kernel/pid_max")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(32768);
        let share = (pid_max * PIDS_SHARE_PERCENT / 100).to_string();
        write(&pids, "pids.max", &share).map_err(|e| LocalError::Unsupported {
            what: "the cgroup v1 pids controller",
            detail: format!("cannot limit {}: {e}", pids.display()),
        })?;
        let cg = Cgroups {
            freezer: freezer.join(instance),
            memory: memory.join(instance),
            cpu: find("cpu").map(|p| p.join(instance)),
            pids: pids.join(instance),
            memsw,
        };
        create(&cg.freezer, "the cgroup v1 freezer")?;
        create(&cg.memory, "the cgroup v1 memory controller")?;
        create(&cg.pids, "the cgroup v1 pids controller")?;
        if let Some(cpu) = &cg.cpu {
            // optional: without it there is no CPU quota
            let _ = std::fs::create_dir_all(cpu);
        }
        Ok(cg)
    }

    /// The group of one sandbox (not created yet).
    pub(crate) fn sandbox(&self, id: &str) -> SandboxCgroup {
        SandboxCgroup {
            freezer: self.freezer.join(id),
            memory: Some(self.memory.join(id)),
            cpu: self.cpu.as_ref().map(|p| p.join(id)),
            pids: Some(self.pids.join(id)),
            memsw: self.memsw,
        }
    }

    /// Removes this instance's (empty) parent groups; a group still in use stays. Called when
    /// the backend stops, after every sandbox was killed.
    pub(crate) fn remove_instance(&self) {
        for dir in [
            Some(&self.freezer),
            Some(&self.memory),
            self.cpu.as_ref(),
            Some(&self.pids),
        ]
        .into_iter()
        .flatten()
        {
            let _ = std::fs::remove_dir(dir);
        }
    }

    /// Names of every sandbox group of this instance (in any hierarchy).
    pub(crate) fn sandbox_names(&self) -> Vec<String> {
        let mut names = Vec::new();
        let dirs = [
            Some(&self.freezer),
            Some(&self.memory),
            self.cpu.as_ref(),
            Some(&self.pids),
        ];
        for dir in dirs.into_iter().flatten() {
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    let n = e.file_name().to_string_lossy().into_owned();
                    if !names.contains(&n) {
                        names.push(n);
                    }
                }
            }
        }
        names
    }
}

/// One sandbox's group in each hierarchy.
#[derive(Clone, Debug)]
pub(crate) struct SandboxCgroup {
    freezer: PathBuf,
    memory: Option<PathBuf>,
    cpu: Option<PathBuf>,
    pids: Option<PathBuf>,
    memsw: bool,
}

fn write(dir: &Path, file: &str, value: &str) -> io::Result<()> {
    std::fs::write(dir.join(file), value)
}

impl SandboxCgroup {
    fn dirs(&self) -> impl Iterator<Item = &PathBuf> {
        std::iter::once(&self.freezer)
            .chain([&self.memory, &self.cpu, &self.pids].into_iter().flatten())
    }

    /// Creates the groups (idempotent) and applies the limits.
    pub(crate) fn create(&self, vcpu: u32, memory_mib: u32) -> io::Result<()> {
        std::fs::create_dir_all(&self.freezer)?;
        write(&self.freezer, "freezer.state", "THAWED")?;
        if let Some(dir) = &self.memory {
            std::fs::create_dir_all(dir)?;
            let bytes = (u64::from(memory_mib) * 1024 * 1024).to_string();
            write(dir, "memory.limit_in_bytes", &bytes)?;
            if self.memsw {
                // memory + swap together: the same figure, so nothing goes to swap
                write(dir, "memory.memsw.limit_in_bytes", &bytes)?;
            }
        }
        if let Some(dir) = &self.cpu {
            if std::fs::create_dir_all(dir).is_ok() {
                let _ = write(dir, "cpu.cfs_period_us", "100000");
                let quota = u64::from(vcpu.max(1)) * 100_000;
                let _ = write(dir, "cpu.cfs_quota_us", &quota.to_string());
            }
        }
        if let Some(dir) = &self.pids {
            std::fs::create_dir_all(dir)?;
            write(dir, "pids.max", &PIDS_MAX.to_string())?;
        }
        Ok(())
    }

    /// The `tasks` file of every group of the sandbox (a task writes `0` there to join).
    pub(crate) fn task_files(&self) -> Vec<PathBuf> {
        self.dirs()
            .filter(|d| d.is_dir())
            .map(|d| d.join("tasks"))
            .collect()
    }

    /// Host PIDs of every process in the sandbox.
    pub(crate) fn procs(&self) -> Vec<i32> {
        std::fs::read_to_string(self.freezer.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// Freezes or thaws every process; waits (blocking, up to 10 s) until the state lands.
    pub(crate) fn set_frozen(&self, frozen: bool) -> io::Result<()> {
        let want = if frozen { "FROZEN" } else { "THAWED" };
        write(&self.freezer, "freezer.state", want)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let state = std::fs::read_to_string(self.freezer.join("freezer.state"))?;
            if state.trim() == want {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("freezer still {} after 10 s", state.trim()),
                ));
            }
            if frozen {
                // Retry the transition: tasks that were busy get another chance.
                let _ = write(&self.freezer, "freezer.state", want);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// SIGKILLs every process (thawing so frozen ones can die), waits until the groups are
    /// empty (up to 10 s), then removes them. Blocking.
    pub(crate) fn destroy(&self) -> io::Result<()> {
        if self.freezer.is_dir() {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let procs = self.procs();
                if procs.is_empty() {
                    break;
                }
                for pid in procs {
                    let _ = sys::kill(pid, libc::SIGKILL);
                }
                let _ = write(&self.freezer, "freezer.state", "THAWED");
                if Instant::now() > deadline {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "sandbox processes did not exit after SIGKILL",
                    ));
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        let mut last = Ok(());
        for dir in self.dirs() {
            if !dir.exists() {
                continue;
            }
            let mut tries = 0;
            loop {
                match std::fs::remove_dir(dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    Err(_) if tries < 1000 => {
                        // A task that just died may still be accounted for a moment.
                        tries += 1;
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err(e) => {
                        last = Err(e);
                        break;
                    }
                }
            }
        }
        last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescape() {
        assert_eq!(
            unescape_mount_path("/sys/fs/cgroup/a\\040b"),
            "/sys/fs/cgroup/a b"
        );
        assert_eq!(unescape_mount_path("/plain"), "/plain");
    }
}
