//! Linux plumbing: the steps a freshly forked child runs before `exec` (namespaces, mounts,
//! capabilities, cgroup membership), spawning into a sandbox's PID namespace, pidfds.
//!
//! Everything a child runs between `fork` and `exec` is prepared by the parent (C strings,
//! file descriptors) and executed with raw system calls only: no allocation, no locks, which is
//! what is allowed after `fork` in a multi-threaded process.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use libc::{c_int, c_ulong, c_void};

/// A C string from bytes; an interior NUL is an `InvalidInput` error.
pub(crate) fn cstr(s: impl Into<Vec<u8>>) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL byte in string"))
}

/// A C string from a path.
pub(crate) fn path_cstr(p: &Path) -> io::Result<CString> {
    cstr(p.as_os_str().as_bytes())
}

fn cvt(r: c_int) -> io::Result<c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Capabilities a sandbox process keeps (Docker's default set without `MKNOD`, `NET_RAW` and
/// `NET_BIND_SERVICE`, since sandboxes still share the host's network namespace).
pub(crate) const KEEP_CAPS: u64 = (1 << 0) // CHOWN
    | (1 << 1) // DAC_OVERRIDE
    | (1 << 3) // FOWNER
    | (1 << 4) // FSETID
    | (1 << 5) // KILL
    | (1 << 6) // SETGID
    | (1 << 7) // SETUID
    | (1 << 8) // SETPCAP
    | (1 << 18) // SYS_CHROOT
    | (1 << 29) // AUDIT_WRITE
    | (1 << 31); // SETFCAP

/// The highest capability number the kernel knows.
pub(crate) fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

/// One thing a child does before `exec`.
pub(crate) enum Step {
    /// Write `"0"` (= "this process") to each fd (`cgroup.procs` of every hierarchy).
    JoinCgroups(Vec<RawFd>),
    /// `unshare(flags)`.
    Unshare(c_int),
    /// `setns(fd, nstype)`.
    Setns(RawFd, c_int),
    /// `mount(2)`; with `optional`, a missing target (`ENOENT`) is skipped.
    Mount {
        src: Option<CString>,
        target: CString,
        fstype: Option<CString>,
        flags: c_ulong,
        data: Option<CString>,
        optional: bool,
    },
    /// Bind `path` onto itself, then remount it read-only (skipped if missing).
    ReadOnlyBind(CString),
    /// `mknod(path, S_IFCHR | mode, makedev(major, minor))`.
    CharDev(CString, u32, u32, u32),
    /// `symlink(target, path)`.
    Symlink(CString, CString),
    /// `mkdir(path, mode)`.
    Mkdir(CString, u32),
    /// `sethostname`.
    Hostname(CString),
    /// `chdir(root)`, `pivot_root(".", ".")`, `umount2(".", MNT_DETACH)`, `chdir("/")`.
    PivotRoot(CString),
    /// `chdir(path)`.
    Chdir(CString),
    /// `setsid()`: own session and process group.
    Setsid,
    /// Drop every capability not in `keep` from all sets and the bounding set; no new privs.
    DropCaps { keep: u64, last_cap: u32 },
    /// `umask(mask)`.
    Umask(u32),
    /// `prctl(PR_SET_PDEATHSIG, sig)`: the signal to get when the spawning thread dies.
    ParentDeathSignal(c_int),
}

/// Steps plus their descriptions (for error messages).
pub(crate) struct ChildPlan {
    steps: Vec<(Step, String)>,
    dot: CString,
    root: CString,
}

impl ChildPlan {
    pub(crate) fn new() -> io::Result<ChildPlan> {
        Ok(ChildPlan {
            steps: Vec::new(),
            dot: cstr(".")?,
            root: cstr("/")?,
        })
    }

    pub(crate) fn push(&mut self, what: impl Into<String>, step: Step) {
        self.steps.push((step, what.into()));
    }

    /// The description of step `i`.
    pub(crate) fn describe(&self, i: usize) -> &str {
        self.steps.get(i).map_or("?", |(_, d)| d.as_str())
    }

    /// Runs the steps. On failure writes the failing step's index to `report_fd` and returns
    /// the OS error.
    ///
    /// # Safety
    /// Only to be called in a freshly forked child before `exec`: it changes namespaces,
    /// mounts and credentials of the calling process.
    pub(crate) unsafe fn run(&self, report_fd: RawFd) -> io::Result<()> {
        for (i, (step, _)) in self.steps.iter().enumerate() {
            if let Err(e) = self.run_step(step) {
                let idx = [u8::try_from(i).unwrap_or(u8::MAX)];
                libc::write(report_fd, idx.as_ptr().cast::<c_void>(), 1);
                return Err(e);
            }
        }
        Ok(())
    }

    unsafe fn run_step(&self, step: &Step) -> io::Result<()> {
        match step {
            Step::JoinCgroups(fds) => {
                for fd in fds {
                    let zero = b"0";
                    if libc::write(*fd, zero.as_ptr().cast::<c_void>(), 1) != 1 {
                        return Err(io::Error::last_os_error());
                    }
                }
                Ok(())
            }
            Step::Unshare(flags) => cvt(libc::unshare(*flags)).map(drop),
            Step::Setns(fd, ty) => cvt(libc::setns(*fd, *ty)).map(drop),
            Step::Mount {
                src,
                target,
                fstype,
                flags,
                data,
                optional,
            } => {
                let r = libc::mount(
                    src.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
                    target.as_ptr(),
                    fstype.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
                    *flags,
                    data.as_ref()
                        .map_or(std::ptr::null(), |s| s.as_ptr().cast::<c_void>()),
                );
                if r != 0 {
                    let e = io::Error::last_os_error();
                    if *optional && e.raw_os_error() == Some(libc::ENOENT) {
                        return Ok(());
                    }
                    return Err(e);
                }
                Ok(())
            }
            Step::ReadOnlyBind(path) => {
                let p = path.as_ptr();
                if libc::mount(p, p, std::ptr::null(), libc::MS_BIND, std::ptr::null()) != 0 {
                    let e = io::Error::last_os_error();
                    if e.raw_os_error() == Some(libc::ENOENT) {
                        return Ok(());
                    }
                    return Err(e);
                }
                let flags = libc::MS_BIND
                    | libc::MS_REMOUNT
                    | libc::MS_RDONLY
                    | libc::MS_NOSUID
                    | libc::MS_NODEV
                    | libc::MS_NOEXEC;
                cvt(libc::mount(
                    std::ptr::null(),
                    p,
                    std::ptr::null(),
                    flags,
                    std::ptr::null(),
                ))
                .map(drop)
            }
            Step::CharDev(path, mode, major, minor) => cvt(libc::mknod(
                path.as_ptr(),
                libc::S_IFCHR | *mode,
                libc::makedev(*major, *minor),
            ))
            .map(drop),
            Step::Symlink(target, path) => {
                cvt(libc::symlink(target.as_ptr(), path.as_ptr())).map(drop)
            }
            Step::Mkdir(path, mode) => {
                if libc::mkdir(path.as_ptr(), *mode) != 0 {
                    let e = io::Error::last_os_error();
                    if e.raw_os_error() != Some(libc::EEXIST) {
                        return Err(e);
                    }
                }
                Ok(())
            }
            Step::Hostname(name) => {
                let bytes = name.as_bytes();
                cvt(libc::sethostname(name.as_ptr(), bytes.len())).map(drop)
            }
            Step::PivotRoot(root) => {
                cvt(libc::chdir(root.as_ptr()))?;
                if libc::syscall(libc::SYS_pivot_root, self.dot.as_ptr(), self.dot.as_ptr()) != 0 {
                    return Err(io::Error::last_os_error());
                }
                cvt(libc::umount2(self.dot.as_ptr(), libc::MNT_DETACH))?;
                cvt(libc::chdir(self.root.as_ptr())).map(drop)
            }
            Step::Chdir(path) => cvt(libc::chdir(path.as_ptr())).map(drop),
            Step::Setsid => cvt(libc::setsid()).map(drop),
            Step::DropCaps { keep, last_cap } => drop_caps(*keep, *last_cap),
            Step::Umask(mask) => {
                libc::umask(*mask);
                Ok(())
            }
            Step::ParentDeathSignal(sig) => cvt(libc::prctl(
                libc::PR_SET_PDEATHSIG,
                *sig as c_ulong,
                0,
                0,
                0,
            ))
            .map(drop),
        }
    }
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: c_int,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

unsafe fn drop_caps(keep: u64, last_cap: u32) -> io::Result<()> {
    for cap in 0..=last_cap.min(63) {
        if keep & (1u64 << cap) == 0
            && libc::prctl(libc::PR_CAPBSET_DROP, c_ulong::from(cap), 0, 0, 0) != 0
        {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINVAL) {
                return Err(e);
            }
        }
    }
    // Ambient capabilities (Linux 4.3+); EINVAL on older kernels is fine.
    libc::prctl(
        libc::PR_CAP_AMBIENT,
        libc::PR_CAP_AMBIENT_CLEAR_ALL as c_ulong,
        0,
        0,
        0,
    );
    let header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let lo = (keep & 0xffff_ffff) as u32;
    let hi = (keep >> 32) as u32;
    let data = [
        CapData {
            effective: lo,
            permitted: lo,
            inheritable: 0,
        },
        CapData {
            effective: hi,
            permitted: hi,
            inheritable: 0,
        },
    ];
    if libc::syscall(libc::SYS_capset, &header as *const CapHeader, data.as_ptr()) != 0 {
        return Err(io::Error::last_os_error());
    }
    cvt(libc::prctl(
        libc::PR_SET_NO_NEW_PRIVS,
        1 as c_ulong,
        0,
        0,
        0,
    ))
    .map(drop)
}

/// A spawn failure, naming the step that failed when it was one of ours.
#[derive(Debug)]
pub(crate) struct SpawnError {
    pub step: Option<String>,
    pub source: io::Error,
}

impl std::fmt::Display for SpawnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.step {
            Some(step) => write!(f, "{step}: {}", self.source),
            None => write!(f, "{}", self.source),
        }
    }
}

impl SpawnError {
    fn plain(source: io::Error) -> SpawnError {
        SpawnError { step: None, source }
    }
}

/// Which namespace the spawning thread moves its future children into first.
pub(crate) enum PidNs {
    /// A new PID namespace: the child becomes its PID 1.
    New,
    /// An existing one (a sandbox's), by namespace fd.
    Join(RawFd),
}

type Job = (
    PidNs,
    Arc<ChildPlan>,
    tokio::process::Command,
    tokio::sync::oneshot::Sender<Result<tokio::process::Child, SpawnError>>,
);

/// A dedicated thread that forks every sandbox process. It lives as long as the backend, so
/// init processes can ask for `SIGKILL` when it dies (`PR_SET_PDEATHSIG`): sandboxes never
/// outlive a crashed or aborted backend. Between spawns it moves its "namespace for
/// children" into the wanted PID namespace and back.
pub(crate) struct Spawner {
    tx: Mutex<Option<std::sync::mpsc::Sender<Job>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Spawner {
    /// Starts the thread; `handle` is the runtime the spawned children are registered with.
    pub(crate) fn start(handle: tokio::runtime::Handle) -> io::Result<Spawner> {
        let home = open_raw(Path::new("/proc/thread-self/ns/pid"), libc::O_RDONLY)?;
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let thread = std::thread::Builder::new()
            .name("superserve-spawner".into())
            .spawn(move || {
                while let Ok((pid_ns, plan, mut cmd, reply)) = rx.recv() {
                    let res = spawn_on_this_thread(&handle, pid_ns, &plan, &mut cmd);
                    let _ = reply.send(res);
                    // back to our own PID namespace for the next job
                    // SAFETY: setns on an fd we own, affecting only this thread's children.
                    if unsafe { libc::setns(home.as_raw_fd(), libc::CLONE_NEWPID) } != 0 {
                        return;
                    }
                }
            })?;
        Ok(Spawner {
            tx: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Spawns `cmd` with its children's PID namespace set to `pid_ns`, running `plan` in the
    /// child before `exec`. The caller keeps every fd the plan refers to open until this
    /// returns.
    pub(crate) async fn spawn(
        &self,
        pid_ns: PidNs,
        plan: Arc<ChildPlan>,
        cmd: tokio::process::Command,
    ) -> Result<tokio::process::Child, SpawnError> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        let sent = match &*crate::local::fault::lock(&self.tx) {
            Some(tx) => tx.send((pid_ns, plan, cmd, reply)).is_ok(),
            None => false,
        };
        let stopped = || SpawnError::plain(io::Error::other("the backend is shutting down"));
        if !sent {
            return Err(stopped());
        }
        rx.await.map_err(|_| stopped())?
    }

    /// Stops the thread (init processes it started get `SIGKILL`).
    pub(crate) fn stop(&self) {
        crate::local::fault::lock(&self.tx).take();
        if let Some(t) = crate::local::fault::lock(&self.thread).take() {
            let _ = t.join();
        }
    }
}

fn spawn_on_this_thread(
    handle: &tokio::runtime::Handle,
    pid_ns: PidNs,
    plan: &Arc<ChildPlan>,
    cmd: &mut tokio::process::Command,
) -> Result<tokio::process::Child, SpawnError> {
    // SAFETY: changes only this (dedicated) thread's namespace for children; unshare/setns
    // of CLONE_NEWPID are allowed in multi-threaded processes.
    let r = unsafe {
        match pid_ns {
            PidNs::New => libc::unshare(libc::CLONE_NEWPID),
            PidNs::Join(fd) => libc::setns(fd, libc::CLONE_NEWPID),
        }
    };
    if r != 0 {
        return Err(SpawnError {
            step: Some("entering the PID namespace".into()),
            source: io::Error::last_os_error(),
        });
    }
    let (report_r, report_w) = pipe().map_err(SpawnError::plain)?;
    let wfd = report_w.as_raw_fd();
    let child_plan = plan.clone();
    // SAFETY: `ChildPlan::run` only makes async-signal-safe system calls on data prepared
    // before the fork, and runs in the forked child before `exec`.
    let hook = move || unsafe { child_plan.run(wfd) };
    // SAFETY: see above; the hook does not allocate or take locks.
    unsafe {
        cmd.pre_exec(hook);
    }
    let _guard = handle.enter();
    let res = cmd.spawn();
    drop(report_w);
    match res {
        Ok(child) => Ok(child),
        Err(source) => {
            let mut b = [0u8; 1];
            // SAFETY: reading one byte into a local buffer from a pipe we own.
            let n = unsafe { libc::read(report_r.as_raw_fd(), b.as_mut_ptr().cast::<c_void>(), 1) };
            let step = (n == 1).then(|| plan.describe(usize::from(b[0])).to_owned());
            Err(SpawnError { step, source })
        }
    }
}

/// A close-on-exec pipe; the read end is non-blocking.
pub(crate) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as c_int; 2];
    // SAFETY: pipe2 fills the two-element array.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: both fds were just created and are owned by nobody else.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: fcntl on an fd we own.
    unsafe {
        let fl = libc::fcntl(r.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(r.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK);
    }
    Ok((r, w))
}

/// Opens a file with raw flags, close-on-exec.
pub(crate) fn open_raw(path: &Path, flags: c_int) -> io::Result<OwnedFd> {
    let c = path_cstr(path)?;
    // SAFETY: valid C string; the returned fd is owned by the OwnedFd.
    let fd = cvt(unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC) })?;
    // SAFETY: fd was just returned by open.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `pidfd_open(pid)`.
pub(crate) fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain system call; the returned fd is owned by the OwnedFd.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = c_int::try_from(fd).map_err(|_| io::Error::other("pidfd out of range"))?;
    // SAFETY: fd was just returned by pidfd_open.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `pidfd_send_signal(pidfd, sig)`; a process that already exited is not an error.
pub(crate) fn pidfd_kill(pidfd: &OwnedFd, sig: c_int) -> io::Result<()> {
    // SAFETY: plain system call on an fd we own.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig,
            std::ptr::null::<c_void>(),
            0,
        )
    };
    if r != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ESRCH) {
            return Err(e);
        }
    }
    Ok(())
}

/// `kill(pid, sig)`; a process that already exited is not an error.
pub(crate) fn kill(pid: i32, sig: c_int) -> io::Result<()> {
    // SAFETY: plain system call.
    if unsafe { libc::kill(pid, sig) } != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ESRCH) {
            return Err(e);
        }
    }
    Ok(())
}

/// The effective user id.
pub(crate) fn euid() -> u32 {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() }
}

/// Exclusive use of a data directory by one backend, held until dropped.
///
/// Two layers: a POSIX record lock (`fcntl(F_SETLK)`) on the lock file excludes other
/// processes, and a registry excludes other backends in this process (record locks never
/// conflict within one process). Record locks, unlike `flock`, belong to the process alone: a
/// child forked by any thread holds a copy of every descriptor until it execs, and with `flock`
/// that copy kept the directory locked after its backend had stopped.
///
/// A record lock is released when its process closes *any* descriptor of the file, so the lock
/// file is opened only while the registry says no backend in this process holds it.
pub(crate) struct DirLock {
    file: Option<std::fs::File>,
    key: (u64, u64),
}

/// `(device, inode)` of every lock file held by a backend in this process.
static HELD_DIRS: Mutex<Vec<(u64, u64)>> = Mutex::new(Vec::new());

impl DirLock {
    /// Takes the lock file at `path` (created if missing); `Ok(None)` if another backend, in
    /// this process or another, holds it.
    pub(crate) fn acquire(path: &Path) -> io::Result<Option<DirLock>> {
        use std::os::unix::fs::MetadataExt;
        let mut held = HELD_DIRS.lock().unwrap_or_else(|p| p.into_inner());
        if let Ok(m) = std::fs::metadata(path) {
            if held.contains(&(m.dev(), m.ino())) {
                return Ok(None);
            }
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)?;
        let m = file.metadata()?;
        let key = (m.dev(), m.ino());
        // SAFETY: a zeroed `flock` is a valid value; every field used is set below.
        let mut fl: libc::flock = unsafe { std::mem::zeroed() };
        fl.l_type = libc::F_WRLCK as libc::c_short;
        fl.l_whence = libc::SEEK_SET as libc::c_short;
        // SAFETY: F_SETLK on an fd we own, with a valid flock struct (l_len 0 = whole file).
        let r = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLK, &fl) };
        if r != 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EACCES) | Some(libc::EAGAIN) => Ok(None),
                _ => Err(e),
            };
        }
        held.push(key);
        Ok(Some(DirLock {
            file: Some(file),
            key,
        }))
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        let mut held = HELD_DIRS.lock().unwrap_or_else(|p| p.into_inner());
        // closed under the registry lock, so no backend in this process can open the file
        // (and release the next holder's lock by closing it) in between
        self.file.take();
        held.retain(|k| *k != self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// In a forked child: tries the record lock on `path`; the child's exit code is 0 if it got
    /// it, 1 if not (2 if it could not open the file).
    fn other_process_try_lock(path: &Path) -> i32 {
        let c = path_cstr(path).unwrap();
        // SAFETY: a zeroed `flock` is valid; the fields used are set.
        let mut fl: libc::flock = unsafe { std::mem::zeroed() };
        fl.l_type = libc::F_WRLCK as libc::c_short;
        fl.l_whence = libc::SEEK_SET as libc::c_short;
        // SAFETY: the child only calls async-signal-safe functions (open, fcntl, _exit) on
        // data prepared before the fork.
        unsafe {
            let pid = libc::fork();
            assert!(pid >= 0, "fork failed");
            if pid == 0 {
                let fd = libc::open(c.as_ptr(), libc::O_WRONLY);
                if fd < 0 {
                    libc::_exit(2);
                }
                let r = libc::fcntl(fd, libc::F_SETLK, &fl);
                libc::_exit(if r == 0 { 0 } else { 1 });
            }
            let mut status = 0;
            libc::waitpid(pid, &mut status, 0);
            libc::WEXITSTATUS(status)
        }
    }

    #[test]
    fn dir_lock_excludes_others_and_outlives_no_forked_child() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir = std::env::temp_dir().join(format!("ss-lock-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(".lock");
        let a = DirLock::acquire(&path).unwrap().expect("a free directory");
        assert!(DirLock::acquire(&path).unwrap().is_none(), "this process");
        assert_eq!(other_process_try_lock(&path), 1, "another process");
        // a child forked now holds a copy of every descriptor, the lock file's included
        // SAFETY: the child only sleeps and exits (async-signal-safe).
        let sleeper = unsafe {
            let pid = libc::fork();
            assert!(pid >= 0, "fork failed");
            if pid == 0 {
                libc::sleep(30);
                libc::_exit(0);
            }
            pid
        };
        drop(a);
        let b = DirLock::acquire(&path).unwrap();
        assert!(
            b.is_some(),
            "the forked child's copy does not keep the lock"
        );
        assert_eq!(other_process_try_lock(&path), 1, "held again");
        drop(b);
        assert_eq!(other_process_try_lock(&path), 0, "released");
        // SAFETY: reaping our own child.
        unsafe {
            libc::kill(sleeper, libc::SIGKILL);
            libc::waitpid(sleeper, std::ptr::null_mut(), 0);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
