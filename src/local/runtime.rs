//! A sandbox's running side: its init process (PID 1 of its own PID, mount and UTS
//! namespaces, root on an overlay), its cgroup, and spawning commands inside it.
//!
//! Layout on disk: `data_dir/sandboxes/<id>/{upper,work,usr-upper,usr-work,root}`. The overlays
//! are mounted inside the sandbox's own mount namespace only, so the host's mount table never
//! shows them and they disappear with the sandbox's last process.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use libc::c_ulong;

use super::cgroup::{Cgroups, SandboxCgroup};
use super::egress::{Egress, SandboxNet, SandboxPolicy};
use super::image::BaseImage;
use super::sys::{self, cstr, path_cstr, ChildPlan, PidNs, SpawnError, Step};

/// `PATH` of every sandbox process.
pub(crate) const SANDBOX_PATH: &str =
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// `HOME` of every sandbox process (the sandbox user is root).
pub(crate) const SANDBOX_HOME: &str = "/root";

/// PID 1 of a sandbox: reaps orphans, otherwise sleeps.
const REAPER: &str = "trap '' HUP INT QUIT TERM USR1 USR2; \
                      while :; do sleep 2147483647 & wait; done";

/// Host-side context shared by all sandboxes.
pub(crate) struct Host {
    pub base: BaseImage,
    pub cgroups: Cgroups,
    pub sandboxes_dir: PathBuf,
    pub last_cap: u32,
    pub handle: tokio::runtime::Handle,
    pub spawner: Arc<sys::Spawner>,
    /// Network namespaces' setup and the egress proxy.
    pub egress: Arc<Egress>,
}

/// Where a sandbox's files live on the host.
#[derive(Clone, Debug)]
pub(crate) struct SandboxDirs {
    pub dir: PathBuf,
    upper: PathBuf,
    work: PathBuf,
    usr_upper: PathBuf,
    usr_work: PathBuf,
    root: PathBuf,
}

impl SandboxDirs {
    pub(crate) fn new(sandboxes_dir: &Path, id: &str) -> SandboxDirs {
        let dir = sandboxes_dir.join(id);
        SandboxDirs {
            upper: dir.join("upper"),
            work: dir.join("work"),
            usr_upper: dir.join("usr-upper"),
            usr_work: dir.join("usr-work"),
            root: dir.join("root"),
            dir,
        }
    }

    fn create(&self) -> io::Result<()> {
        for d in [
            &self.upper,
            &self.work,
            &self.usr_upper,
            &self.usr_work,
            &self.root,
        ] {
            std::fs::create_dir_all(d)?;
        }
        Ok(())
    }

    /// Removes everything (the sandbox's files included). Blocking.
    pub(crate) fn remove(&self) -> io::Result<()> {
        match std::fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }
}

/// What to run inside a sandbox.
pub(crate) struct CommandSpec {
    pub program: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: String,
    pub stdin: bool,
}

/// A running sandbox.
pub(crate) struct Runtime {
    pub init_pid: i32,
    pidfd: OwnedFd,
    pid_ns: OwnedFd,
    mnt_ns: OwnedFd,
    uts_ns: OwnedFd,
    /// The network namespace and the proxy tasks serving it.
    net: SandboxNet,
    /// The sandbox's root directory (an `O_PATH` fd), for the files API.
    pub root: OwnedFd,
    cgroup_fds: Vec<OwnedFd>,
    pub cgroup: SandboxCgroup,
    dead: Arc<AtomicBool>,
    last_cap: u32,
    spawner: Arc<sys::Spawner>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("init_pid", &self.init_pid)
            .field("dead", &self.is_dead())
            .finish_non_exhaustive()
    }
}

fn overlay_opts(lower: &Path, upper: &Path, work: &Path) -> io::Result<String> {
    for p in [lower, upper, work] {
        let s = p.to_string_lossy();
        if s.contains([',', ':', '\\']) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("path {s} cannot be used in overlay options"),
            ));
        }
    }
    Ok(format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    ))
}

fn mount(
    src: &str,
    target: &Path,
    fstype: Option<&str>,
    flags: c_ulong,
    data: Option<&str>,
) -> io::Result<Step> {
    Ok(Step::Mount {
        src: Some(cstr(src)?),
        target: path_cstr(target)?,
        fstype: fstype.map(cstr).transpose()?,
        flags,
        data: data.map(cstr).transpose()?,
        optional: false,
    })
}

fn init_plan(
    host: &Host,
    dirs: &SandboxDirs,
    cgroup_fds: &[OwnedFd],
    hostname: &str,
) -> io::Result<ChildPlan> {
    let root = &dirs.root;
    let mut p = ChildPlan::new()?;
    // The sandbox dies with the backend, even if the backend is killed or aborts.
    p.push(
        "asking for SIGKILL when the backend exits",
        Step::ParentDeathSignal(libc::SIGKILL),
    );
    p.push(
        "joining the sandbox cgroups",
        Step::JoinCgroups(cgroup_fds.iter().map(AsRawFd::as_raw_fd).collect()),
    );
    p.push(
        "creating mount and UTS namespaces",
        Step::Unshare(libc::CLONE_NEWNS | libc::CLONE_NEWUTS | libc::CLONE_NEWNET),
    );
    p.push(
        "making mounts private",
        Step::Mount {
            src: None,
            target: cstr("/")?,
            fstype: None,
            flags: libc::MS_REC | libc::MS_PRIVATE,
            data: None,
            optional: false,
        },
    );
    p.push(
        "mounting the root overlay",
        mount(
            "overlay",
            root,
            Some("overlay"),
            libc::MS_NODEV,
            Some(&overlay_opts(&host.base.dir, &dirs.upper, &dirs.work)?),
        )?,
    );
    p.push(
        "mounting the /usr overlay",
        mount(
            "overlay",
            &root.join("usr"),
            Some("overlay"),
            libc::MS_NODEV,
            Some(&overlay_opts(
                Path::new("/usr"),
                &dirs.usr_upper,
                &dirs.usr_work,
            )?),
        )?,
    );
    for d in &host.base.host_dirs {
        let target = root.join(d);
        p.push(
            format!("binding host /{d}"),
            mount(
                &format!("/{d}"),
                &target,
                None,
                libc::MS_BIND | libc::MS_REC,
                None,
            )?,
        );
        p.push(
            format!("making /{d} read-only"),
            Step::Mount {
                src: None,
                target: path_cstr(&target)?,
                fstype: None,
                flags: libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
                data: None,
                optional: false,
            },
        );
    }
    p.push(
        "mounting /proc",
        mount(
            "proc",
            &root.join("proc"),
            Some("proc"),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            None,
        )?,
    );
    for ro in ["sys", "sysrq-trigger", "irq", "bus", "fs"] {
        p.push(
            format!("making /proc/{ro} read-only"),
            Step::ReadOnlyBind(path_cstr(&root.join("proc").join(ro))?),
        );
    }
    for masked in [
        "kcore",
        "keys",
        "timer_list",
        "sched_debug",
        "latency_stats",
    ] {
        p.push(
            format!("masking /proc/{masked}"),
            Step::Mount {
                src: Some(cstr("/dev/null")?),
                target: path_cstr(&root.join("proc").join(masked))?,
                fstype: None,
                flags: libc::MS_BIND,
                data: None,
                optional: true,
            },
        );
    }
    let dev = root.join("dev");
    p.push(
        "mounting /dev",
        mount(
            "tmpfs",
            &dev,
            Some("tmpfs"),
            libc::MS_NOSUID | libc::MS_NOEXEC,
            Some("mode=755,size=65536k"),
        )?,
    );
    p.push("setting the umask", Step::Umask(0));
    for (name, major, minor) in [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ] {
        p.push(
            format!("creating /dev/{name}"),
            Step::CharDev(path_cstr(&dev.join(name))?, 0o666, major, minor),
        );
    }
    for (target, name) in [
        ("/proc/self/fd", "fd"),
        ("/proc/self/fd/0", "stdin"),
        ("/proc/self/fd/1", "stdout"),
        ("/proc/self/fd/2", "stderr"),
        ("pts/ptmx", "ptmx"),
    ] {
        p.push(
            format!("creating /dev/{name}"),
            Step::Symlink(cstr(target)?, path_cstr(&dev.join(name))?),
        );
    }
    p.push(
        "creating /dev/pts",
        Step::Mkdir(path_cstr(&dev.join("pts"))?, 0o755),
    );
    p.push(
        "creating /dev/shm",
        Step::Mkdir(path_cstr(&dev.join("shm"))?, 0o1777),
    );
    p.push(
        "mounting /dev/pts",
        mount(
            "devpts",
            &dev.join("pts"),
            Some("devpts"),
            libc::MS_NOSUID | libc::MS_NOEXEC,
            Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
        )?,
    );
    p.push(
        "mounting /dev/shm",
        mount(
            "shm",
            &dev.join("shm"),
            Some("tmpfs"),
            libc::MS_NOSUID | libc::MS_NODEV,
            Some("mode=1777,size=65536k"),
        )?,
    );
    p.push("setting the hostname", Step::Hostname(cstr(hostname)?));
    p.push(
        "switching to the sandbox root",
        Step::PivotRoot(path_cstr(root)?),
    );
    p.push("starting a session", Step::Setsid);
    p.push(
        "dropping capabilities",
        Step::DropCaps {
            keep: sys::KEEP_CAPS,
            last_cap: host.last_cap,
        },
    );
    p.push("setting the umask", Step::Umask(0o022));
    Ok(p)
}

fn open_ns(pid: i32, ns: &str) -> io::Result<OwnedFd> {
    sys::open_raw(Path::new(&format!("/proc/{pid}/ns/{ns}")), libc::O_RDONLY)
}

impl Runtime {
    /// Starts a sandbox: creates its directories (kept if present) and cgroup, then its init
    /// process. Any processes left over from an earlier run of the same sandbox are killed.
    /// The egress proxy asks `policy` for the sandbox's rules and bindings.
    pub(crate) async fn start(
        host: &Host,
        id: &str,
        hostname: &str,
        vcpu: u32,
        memory_mib: u32,
        policy: Arc<dyn SandboxPolicy>,
    ) -> Result<Arc<Runtime>, String> {
        let dirs = SandboxDirs::new(&host.sandboxes_dir, id);
        let cgroup = host.cgroups.sandbox(id);
        let prep = {
            let dirs = dirs.clone();
            let cgroup = cgroup.clone();
            tokio::task::spawn_blocking(move || -> io::Result<Vec<OwnedFd>> {
                cgroup.destroy()?;
                dirs.create()?;
                cgroup.create(vcpu, memory_mib)?;
                cgroup.open_procs()
            })
        };
        let cgroup_fds = prep
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("preparing the sandbox: {e}"))?;
        let plan = init_plan(host, &dirs, &cgroup_fds, hostname)
            .map_err(|e| format!("preparing the sandbox: {e}"))?;
        let mut cmd = tokio::process::Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(REAPER)
            .env_clear()
            .env("PATH", SANDBOX_PATH)
            .env("HOME", SANDBOX_HOME)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(false);
        let mut child = host
            .spawner
            .spawn(PidNs::New, Arc::new(plan), cmd)
            .await
            .map_err(|e| format!("starting the sandbox init: {e}"))?;
        let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) else {
            return Err("the sandbox init exited at once".into());
        };
        let opened = (|| -> io::Result<_> {
            Ok((
                sys::pidfd_open(pid)?,
                open_ns(pid, "pid")?,
                open_ns(pid, "mnt")?,
                open_ns(pid, "uts")?,
                open_ns(pid, "net")?,
                sys::open_raw(
                    Path::new(&format!("/proc/{pid}/root")),
                    libc::O_PATH | libc::O_DIRECTORY,
                )?,
            ))
        })();
        let (pidfd, pid_ns, mnt_ns, uts_ns, net_ns, root) = match opened {
            Ok(v) => v,
            Err(e) => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                return Err(format!("the sandbox init is not usable: {e}"));
            }
        };
        let net = match host.egress.attach(id, net_ns, &policy).await {
            Ok(net) => net,
            Err(e) => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                return Err(format!("setting up the sandbox network: {e}"));
            }
        };
        let dead = Arc::new(AtomicBool::new(false));
        let flag = dead.clone();
        host.handle.spawn(async move {
            let _ = child.wait().await;
            flag.store(true, Ordering::SeqCst);
        });
        Ok(Arc::new(Runtime {
            init_pid: pid,
            pidfd,
            pid_ns,
            mnt_ns,
            uts_ns,
            net,
            root,
            cgroup_fds,
            cgroup,
            dead,
            last_cap: host.last_cap,
            spawner: host.spawner.clone(),
        }))
    }

    /// The sandbox's network namespace (the preview proxy connects to its ports in it).
    pub(crate) fn net_ns(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.net.ns)
    }

    /// Whether the init process has exited.
    pub(crate) fn is_dead(&self) -> bool {
        self.dead.load(Ordering::SeqCst)
    }

    /// Spawns a command inside the sandbox: its namespaces and cgroup, the sandbox root,
    /// `cwd`, a session of its own, the sandbox's reduced capabilities.
    pub(crate) async fn spawn(
        &self,
        spec: CommandSpec,
    ) -> Result<tokio::process::Child, SpawnError> {
        let plan = (|| -> io::Result<ChildPlan> {
            let mut p = ChildPlan::new()?;
            p.push(
                "joining the sandbox cgroups",
                Step::JoinCgroups(self.cgroup_fds.iter().map(AsRawFd::as_raw_fd).collect()),
            );
            p.push(
                "entering the sandbox mount namespace",
                Step::Setns(self.mnt_ns.as_raw_fd(), libc::CLONE_NEWNS),
            );
            p.push(
                "entering the sandbox UTS namespace",
                Step::Setns(self.uts_ns.as_raw_fd(), libc::CLONE_NEWUTS),
            );
            p.push(
                "entering the sandbox network namespace",
                Step::Setns(self.net.ns.as_raw_fd(), libc::CLONE_NEWNET),
            );
            p.push(
                format!("changing to the working directory {}", spec.cwd),
                Step::Chdir(cstr(spec.cwd.as_str())?),
            );
            p.push("starting a session", Step::Setsid);
            p.push(
                "dropping capabilities",
                Step::DropCaps {
                    keep: sys::KEEP_CAPS,
                    last_cap: self.last_cap,
                },
            );
            p.push("setting the umask", Step::Umask(0o022));
            Ok(p)
        })()
        .map_err(|source| SpawnError { step: None, source })?;
        let mut cmd = tokio::process::Command::new(&spec.program);
        cmd.args(&spec.args)
            .env_clear()
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(if spec.stdin {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(false);
        self.spawner
            .spawn(PidNs::Join(self.pid_ns.as_raw_fd()), Arc::new(plan), cmd)
            .await
    }

    /// Kills every process of the sandbox and removes its cgroup (waits until they are gone).
    pub(crate) async fn kill(&self) -> io::Result<()> {
        let _ = sys::pidfd_kill(&self.pidfd, libc::SIGKILL);
        let cgroup = self.cgroup.clone();
        tokio::task::spawn_blocking(move || cgroup.destroy())
            .await
            .map_err(io::Error::other)?
    }

    /// Freezes (pause) or thaws (resume) every process of the sandbox.
    pub(crate) async fn set_frozen(&self, frozen: bool) -> io::Result<()> {
        let cgroup = self.cgroup.clone();
        tokio::task::spawn_blocking(move || cgroup.set_frozen(frozen))
            .await
            .map_err(io::Error::other)?
    }
}
