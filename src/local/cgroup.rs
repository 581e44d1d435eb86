//! cgroup v1: one group per sandbox in the `freezer` (pause/resume), `memory`, `cpu` and `pids`
//! hierarchies, under `<hierarchy>/superserve-local/<sandbox id>`.

use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::error::LocalError;
use super::sys;

/// Name of the parent group in every hierarchy.
const PARENT: &str = "superserve-local";
/// Processes per sandbox (fork-bomb guard).
const PIDS_MAX: u32 = 4096;

/// The parent groups this backend uses.
#[derive(Clone, Debug)]
pub(crate) struct Cgroups {
    freezer: PathBuf,
    memory: Option<PathBuf>,
    cpu: Option<PathBuf>,
    pids: Option<PathBuf>,
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
    /// Finds the hierarchies and creates the parent groups. The freezer is required; the
    /// others are used when present.
    pub(crate) fn discover() -> Result<Cgroups, LocalError> {
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
        let freezer = find("freezer").ok_or_else(|| LocalError::Unsupported {
            what: "the cgroup v1 freezer",
            detail: "no cgroup v1 hierarchy with the freezer controller is mounted \
                     (cgroup v2-only hosts are not supported yet)"
                .into(),
        })?;
        let cg = Cgroups {
            freezer,
            memory: find("memory"),
            cpu: find("cpu"),
            pids: find("pids"),
        };
        std::fs::create_dir_all(&cg.freezer).map_err(|e| LocalError::Unsupported {
            what: "the cgroup v1 freezer",
            detail: format!("cannot create {}: {e}", cg.freezer.display()),
        })?;
        for dir in [&cg.memory, &cg.cpu, &cg.pids].into_iter().flatten() {
            // Optional controllers: a failure here only means no limit of that kind.
            let _ = std::fs::create_dir_all(dir);
        }
        Ok(cg)
    }

    /// The group of one sandbox (not created yet).
    pub(crate) fn sandbox(&self, id: &str) -> SandboxCgroup {
        SandboxCgroup {
            freezer: self.freezer.join(id),
            memory: self.memory.as_ref().map(|p| p.join(id)),
            cpu: self.cpu.as_ref().map(|p| p.join(id)),
            pids: self.pids.as_ref().map(|p| p.join(id)),
        }
    }
}

/// One sandbox's group in each hierarchy.
#[derive(Clone, Debug)]
pub(crate) struct SandboxCgroup {
    freezer: PathBuf,
    memory: Option<PathBuf>,
    cpu: Option<PathBuf>,
    pids: Option<PathBuf>,
}

fn write(dir: &Path, file: &str, value: &str) -> io::Result<()> {
    std::fs::write(dir.join(file), value)
}

impl SandboxCgroup {
    fn dirs(&self) -> impl Iterator<Item = &PathBuf> {
        std::iter::once(&self.freezer)
            .chain([&self.memory, &self.cpu, &self.pids].into_iter().flatten())
    }

    /// Creates the groups (idempotent) and applies limits where the controllers allow.
    pub(crate) fn create(&self, vcpu: u32, memory_mib: u32) -> io::Result<()> {
        std::fs::create_dir_all(&self.freezer)?;
        write(&self.freezer, "freezer.state", "THAWED")?;
        if let Some(dir) = &self.memory {
            if std::fs::create_dir_all(dir).is_ok() {
                let bytes = u64::from(memory_mib) * 1024 * 1024;
                let _ = write(dir, "memory.limit_in_bytes", &bytes.to_string());
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
            if std::fs::create_dir_all(dir).is_ok() {
                let _ = write(dir, "pids.max", &PIDS_MAX.to_string());
            }
        }
        Ok(())
    }

    /// `cgroup.procs` of every existing group, opened for writing (a child writes `0` to join).
    pub(crate) fn open_procs(&self) -> io::Result<Vec<OwnedFd>> {
        let mut out = Vec::new();
        for dir in self.dirs() {
            if dir.is_dir() {
                out.push(sys::open_raw(&dir.join("cgroup.procs"), libc::O_WRONLY)?);
            }
        }
        Ok(out)
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
                std::thread::sleep(Duration::from_millis(5));
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
                    Err(_) if tries < 200 => {
                        // A task that just died may still be accounted for a moment.
                        tries += 1;
                        std::thread::sleep(Duration::from_millis(5));
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
