//! A sandbox's running side: its agent (PID 1 of the sandbox's own PID, mount, UTS, IPC,
//! network and user namespaces, see `sys/agent`), its cgroup, its disk, and starting
//! commands through the agent.
//!
//! Layout on disk: `data_dir/sandboxes/<id>/root` (the mount point) and the disk image
//! `<pool>/disks/<id>.ext4` in the layer store's pool (sandboxes made by earlier versions keep
//! theirs in `data_dir/sandboxes/<id>/disk.ext4`). The disk holds the writable layers; the
//! read-only layers are the sandbox's [`Stack`]; the overlays and the disks' mounts exist in
//! the sandbox's mount namespace only, so the host's mount table never shows them and they
//! disappear with the sandbox's last process (a crashed backend leaves no mount behind).

use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::agent::{AgentConn, Process, SpawnError};
use super::cgroup::{Cgroups, SandboxCgroup};
use super::disk::{mount_image, Disks};
use super::egress::{Egress, SandboxNet, SandboxPolicy};
use super::idmap::{self, IdRanges};
use super::image::BaseImage;
use super::layers::{LayerStore, Resolved};
use super::model::Stack;
use super::sys::proto::Setup;
use super::sys::{self, spawn};

/// `PATH` of every sandbox process.
pub(crate) const SANDBOX_PATH: &str =
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// `HOME` of every sandbox process (the sandbox user is root).
pub(crate) const SANDBOX_HOME: &str = "/root";
/// How long an agent may take to build its sandbox.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long [`Runtime::kill`] waits for the agent's exit before it looks at the cgroup.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// Host-side context shared by all sandboxes.
pub(crate) struct Host {
    pub base: BaseImage,
    pub cgroups: Cgroups,
    pub sandboxes_dir: PathBuf,
    pub last_cap: u32,
    /// Network namespaces' setup and the egress proxy.
    pub egress: Arc<Egress>,
    /// Per-sandbox disk images.
    pub disks: Arc<Disks>,
    /// The layer store (read-only layers, and the pool the disks live in).
    pub layers: Arc<LayerStore>,
    /// Host id ranges of the sandboxes' user namespaces.
    pub ids: IdRanges,
    /// The seccomp program every agent installs.
    pub seccomp: Vec<u8>,
}

/// Where a sandbox's files live on the host.
#[derive(Clone, Debug)]
pub(crate) struct SandboxDirs {
    pub dir: PathBuf,
    /// The disk image (the sandbox's writable layer).
    pub disk: PathBuf,
    /// Mount point of the root overlay inside the sandbox's mount namespace.
    root: PathBuf,
}

impl SandboxDirs {
    pub(crate) fn new(host: &Host, id: &str) -> SandboxDirs {
        let dir = host.sandboxes_dir.join(id);
        let legacy = dir.join("disk.ext4");
        SandboxDirs {
            disk: if legacy.exists() {
                legacy
            } else {
                host.disks.image_path(id)
            },
            root: dir.join("root"),
            dir,
        }
    }

    fn create(&self) -> io::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)?;
        std::fs::create_dir_all(&self.root)
    }

    /// Removes everything (the sandbox's files included). Blocking.
    pub(crate) fn remove(&self) -> io::Result<()> {
        let not_found = |r: io::Result<()>| match r {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        };
        not_found(std::fs::remove_file(&self.disk))?;
        not_found(std::fs::remove_dir_all(&self.dir))
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

/// What a sandbox is made of.
pub(crate) struct SandboxSpec<'a> {
    pub id: &'a str,
    pub hostname: &'a str,
    pub vcpu: u32,
    pub memory_mib: u32,
    pub disk_mib: u32,
    pub id_slot: u32,
    /// The read-only layers under its root.
    pub stack: &'a Stack,
    /// What the egress proxy asks for the sandbox's rules and bindings.
    pub policy: Arc<dyn SandboxPolicy>,
}

/// A running sandbox.
pub(crate) struct Runtime {
    pub init_pid: i32,
    pidfd: OwnedFd,
    agent: Arc<AgentConn>,
    /// The network namespace and the proxy tasks serving it.
    net: SandboxNet,
    /// The sandbox's root directory (an `O_PATH` fd), for the files API (taken on drop).
    root: Option<OwnedFd>,
    /// The root of the sandbox disk's mount (taken on drop), to discard the disk when the
    /// sandbox is deleted.
    disk: Option<OwnedFd>,
    /// Host uid/gid of the sandbox's root (owner of what the files API writes).
    pub root_id: u32,
    pub cgroup: SandboxCgroup,
    dead: Arc<AtomicBool>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("init_pid", &self.init_pid)
            .field("dead", &self.is_dead())
            .finish_non_exhaustive()
    }
}

fn bytes(p: &Path) -> Vec<u8> {
    p.as_os_str().as_bytes().to_vec()
}

impl Runtime {
    /// Starts a sandbox: its directory, disk (kept if present) and cgroup, then its agent.
    /// Any processes left over from an earlier run of the same sandbox are killed first.
    /// The egress proxy asks `spec.policy` for the sandbox's rules and bindings.
    pub(crate) async fn start(host: &Host, spec: SandboxSpec<'_>) -> Result<Arc<Runtime>, String> {
        let dirs = SandboxDirs::new(host, spec.id);
        let cgroup = host.cgroups.sandbox(spec.id);
        let (vcpu, memory_mib, disk_mib) = (spec.vcpu, spec.memory_mib, spec.disk_mib);
        // a spare network namespace, or one configured (over netlink) while the disks
        // are mounted below
        let net = host.egress.take_net();
        let prep = tokio::task::block_in_place(|| -> io::Result<(Resolved, Vec<OwnedFd>)> {
            if !dirs.disk.exists() && dirs.dir.join("upper").is_dir() {
                // made by a backend that kept files in plain directories, owned by host root:
                // never hand such a sandbox an empty disk as if it were its own
                return Err(io::Error::other(format!(
                    "the sandbox was created by an older version of the backend; its files are \
                     in {} and are not used by this version",
                    dirs.dir.join("upper").display()
                )));
            }
            let resolved = host
                .layers
                .resolve(spec.stack, &host.base)
                .map_err(io::Error::other)?;
            cgroup.destroy()?;
            dirs.create()?;
            // the disk and the read-only layer images go to the agent mounted (detached)
            let mut fds = vec![host.disks.mount(&dirs.disk, disk_mib)?];
            for image in &resolved.images {
                fds.push(mount_image(image, true).map_err(|e| {
                    io::Error::new(e.kind(), format!("layer {}: {e}", image.display()))
                })?);
            }
            cgroup.create(vcpu, memory_mib)?;
            Ok((resolved, fds))
        });
        let (resolved, fds) = prep.map_err(|e| format!("preparing the sandbox: {e}"))?;
        let disk = fds[0]
            .try_clone()
            .map_err(|e| format!("preparing the sandbox: {e}"))?;
        let net = net
            .wait()
            .await
            .map_err(|e| format!("setting up the sandbox network: {e}"))?;
        let agent =
            spawn::spawn_agent(net.ns()).map_err(|e| format!("starting the sandbox agent: {e}"))?;
        let pid = agent.pid;
        let kill = |pidfd: &OwnedFd| {
            let _ = sys::pidfd_kill(pidfd, libc::SIGKILL);
        };
        let id_base = idmap::base(spec.id_slot);
        let setup = Setup {
            hostname: spec.hostname.as_bytes().to_vec(),
            id_base,
            id_count: idmap::ID_COUNT,
            root_layers: resolved.root,
            usr_layers: resolved.usr,
            host_dirs: resolved
                .host_dirs
                .iter()
                .map(|d| d.as_bytes().to_vec())
                .collect(),
            root_dir: bytes(&dirs.root),
            keep_caps: sys::KEEP_CAPS,
            last_cap: host.last_cap,
            seccomp: host.seccomp.clone(),
            cgroup_tasks: cgroup.task_files().iter().map(|p| bytes(p)).collect(),
        };
        let dead = Arc::new(AtomicBool::new(false));
        let fail = |pidfd: OwnedFd, dead: Arc<AtomicBool>, msg: String| {
            kill(&pidfd);
            reap_later(pidfd, dead);
            Err(msg)
        };
        let built =
            tokio::time::timeout(SETUP_TIMEOUT, AgentConn::setup(agent.channel, setup, fds)).await;
        let conn = match built {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return fail(agent.pidfd, dead, format!("building the sandbox: {e}")),
            Err(_) => {
                let msg = "building the sandbox: the agent did not answer".to_owned();
                return fail(agent.pidfd, dead, msg);
            }
        };
        let net = match host.egress.attach(spec.id, net, &spec.policy) {
            Ok(net) => net,
            Err(e) => {
                return fail(
                    agent.pidfd,
                    dead,
                    format!("setting up the sandbox network: {e}"),
                )
            }
        };
        let opened = (|| -> io::Result<_> {
            Ok((
                sys::open_raw(
                    Path::new(&format!("/proc/{pid}/root")),
                    libc::O_PATH | libc::O_DIRECTORY,
                )?,
                agent.pidfd.try_clone()?,
            ))
        })();
        let (root, watch_fd) = match opened {
            Ok(v) => v,
            Err(e) => {
                return fail(
                    agent.pidfd,
                    dead,
                    format!("the sandbox agent is not usable: {e}"),
                )
            }
        };
        reap_later(watch_fd, dead.clone());
        Ok(Arc::new(Runtime {
            init_pid: pid,
            pidfd: agent.pidfd,
            agent: conn,
            net,
            root: Some(root),
            disk: Some(disk),
            root_id: id_base,
            cgroup,
            dead,
        }))
    }

    /// The sandbox's network namespace (the preview proxy connects to its ports in it).
    pub(crate) fn net_ns(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.net.ns)
    }

    /// The sandbox's root directory (an `O_PATH` descriptor), for the files API.
    pub(crate) fn root(&self) -> &OwnedFd {
        self.root.as_ref().expect("the root is only taken on drop")
    }

    /// Whether the agent has exited.
    pub(crate) fn is_dead(&self) -> bool {
        self.dead.load(Ordering::SeqCst) || self.agent.is_closed()
    }

    /// Starts a command inside the sandbox (through its agent): the sandbox root, `cwd`, a
    /// session of its own, the sandbox's capabilities.
    pub(crate) async fn spawn(&self, spec: CommandSpec) -> Result<Process, SpawnError> {
        let argv = std::iter::once(spec.program)
            .chain(spec.args)
            .map(String::into_bytes)
            .collect();
        let env = spec
            .env
            .into_iter()
            .map(|(k, v)| format!("{k}={v}").into_bytes())
            .collect();
        self.agent
            .spawn(argv, env, spec.cwd.into_bytes(), spec.stdin)
            .await
    }

    /// Kills every process of the sandbox and removes its cgroup (waits until they are gone).
    pub(crate) async fn kill(&self) -> io::Result<()> {
        let _ = sys::pidfd_kill(&self.pidfd, libc::SIGKILL);
        // The agent is PID 1 of the sandbox: by the time it has exited (its pidfd is
        // readable), the kernel has killed and reaped every other process of the sandbox.
        // Waiting for that, rather than polling the cgroup, answers as soon as it happens.
        if let Ok(fd) = self.pidfd.try_clone().and_then(spawn::async_fd) {
            let _ = tokio::time::timeout(KILL_WAIT, fd.readable()).await;
        }
        let cgroup = self.cgroup.clone();
        tokio::task::spawn_blocking(move || cgroup.destroy())
            .await
            .map_err(io::Error::other)?
    }

    /// Shuts the sandbox's disk down before a delete: every access fails from now on, and the
    /// disk's unmount (when the sandbox's last process exits) writes nothing back and
    /// flushes nothing, which would only be thrown away with the image. Call it just before
    /// [`kill`](Self::kill) of a sandbox being deleted, never of one that will run again.
    pub(crate) fn discard_disk(&self) -> io::Result<()> {
        match &self.disk {
            Some(disk) => sys::pool::shut_down_ext4(std::os::fd::AsFd::as_fd(disk)),
            None => Ok(()),
        }
    }

    /// Freezes (pause) or thaws (resume) every process of the sandbox.
    pub(crate) async fn set_frozen(&self, frozen: bool) -> io::Result<()> {
        let cgroup = self.cgroup.clone();
        tokio::task::spawn_blocking(move || cgroup.set_frozen(frozen))
            .await
            .map_err(io::Error::other)?
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        // The root and disk descriptors may hold the sandbox's last references to its overlay
        // and disk: closing them unmounts both and frees the loop device, which can take tens
        // of milliseconds. That happens on a blocking thread, not on a runtime worker.
        let held = (self.root.take(), self.disk.take());
        if let Ok(h) = tokio::runtime::Handle::try_current() {
            h.spawn_blocking(move || drop(held));
        }
    }
}

/// Waits (in a task) until the agent exits, reaps it and sets `dead`.
fn reap_later(pidfd: OwnedFd, dead: Arc<AtomicBool>) {
    let fd = match pidfd.try_clone().and_then(spawn::async_fd) {
        Ok(fd) => fd,
        Err(_) => {
            // cannot watch: reap on a thread
            std::thread::spawn(move || {
                while !matches!(spawn::reap_pidfd(&pidfd), Ok(true) | Err(_)) {
                    std::thread::sleep(Duration::from_millis(50));
                }
                dead.store(true, Ordering::SeqCst);
            });
            return;
        }
    };
    tokio::spawn(async move {
        while let Ok(mut g) = fd.readable().await {
            g.clear_ready();
            if !matches!(spawn::reap_pidfd(fd.get_ref()), Ok(false)) {
                break;
            }
        }
        dead.store(true, Ordering::SeqCst);
        drop(pidfd);
    });
}
