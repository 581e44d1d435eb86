//! The sandbox agent: PID 1 of every sandbox.
//!
//! A small program of its own (built by `build.rs`, embedded in the library and executed from
//! a sealed memfd), so a sandbox never holds any memory, code or descriptor of the backend.
//! It starts in a fresh PID namespace with descriptor 3 (its control channel, a
//! `SOCK_SEQPACKET` socket) and `/dev/null` on 0-2, nothing else. It:
//!
//! 1. makes itself non-dumpable (before anything else, and for good): its memory lives under
//!    the host's user namespace, so no sandbox process can ptrace it, open `/proc/1/exe`,
//!    `/proc/1/fd/*` or take its descriptors with `pidfd_getfd`;
//! 2. builds the sandbox from the backend's `Setup` while still host root: joins the
//!    sandbox's cgroups (before it uses anything), a user namespace
//!    mapped to the sandbox's id range, its disk image on a loop device (ext4, full = ENOSPC),
//!    idmapped read-only layers under an overlay root, `/proc`, `/dev`, the hostname, then
//!    `pivot_root`;
//! 3. enters the sandbox user namespace as its root, joins a fresh session keyring, installs
//!    the seccomp filter (inherited by every command), reports `Ready`;
//! 4. starts commands on request (the backend's pipes arrive with `SCM_RIGHTS`), reports when
//!    each runs or why it could not, reaps every process (it is the sandbox's init) and
//!    reports its commands' exits. A command stopped before `exec` only delays its own report.
//!
//! When the channel closes (the backend stopped or died) the agent exits, and with it, as
//! PID 1, every process of the sandbox.

#![no_main]
// The agent is part of the syscall layer (build.rs compiles it with the manifest's lints,
// which deny `unsafe` elsewhere); every unsafe block says why it is sound.
#![allow(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_debug_implementations)]

mod ffi;
#[path = "../proto.rs"]
#[allow(dead_code)]
mod proto;

use std::ffi::CString;

use ffi::{c_char, c_int};
use proto::{FromAgent, Lower, Setup, ToAgent, MAX_MESSAGE, MAX_SETUP_FDS, STEP_CHDIR, STEP_EXEC};

/// The control channel's descriptor.
const CHANNEL: c_int = 3;
/// Most descriptors accepted with one message (a setup's disk and layer images).
const MAX_FDS: usize = MAX_SETUP_FDS;

/// A failed step: its index and the OS error.
type StepError = (u8, c_int);

fn cstr(b: &[u8]) -> Result<CString, c_int> {
    CString::new(b.to_vec()).map_err(|_| ffi::EINVAL)
}

/// `Err(errno)` when `r` is negative.
fn check(r: c_int) -> Result<c_int, c_int> {
    if r < 0 {
        Err(ffi::errno())
    } else {
        Ok(r)
    }
}

fn check_long(r: ffi::c_long) -> Result<c_int, c_int> {
    if r < 0 {
        Err(ffi::errno())
    } else {
        Ok(r as c_int)
    }
}

/// An owned descriptor (closed on drop).
#[derive(Debug)]
struct Fd(c_int);

impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: closing a descriptor this value owns.
        unsafe { ffi::close(self.0) };
    }
}

fn send(msg: &FromAgent) {
    let b = msg.encode();
    // SAFETY: writes one packet from a live buffer to the channel.
    unsafe { ffi::write(CHANNEL, b.as_ptr(), b.len()) };
}

/// Entry point (no Rust runtime start-up: nothing is set up that a command could inherit).
#[no_mangle]
pub extern "C" fn main(_argc: c_int, _argv: *const *const c_char) -> c_int {
    // SAFETY: prctl with integer arguments on this process.
    unsafe { ffi::prctl(ffi::PR_SET_DUMPABLE, 0 as ffi::c_ulong, 0, 0, 0) };
    // SAFETY: marks the channel close-on-exec so no command ever inherits it.
    unsafe { ffi::fcntl(CHANNEL, ffi::F_SETFD, ffi::FD_CLOEXEC) };
    let mut buf = vec![0u8; MAX_MESSAGE];
    let (setup, images) = match recv(&mut buf) {
        Some((Ok(ToAgent::Setup(s)), fds)) if !fds.is_empty() => (s, fds),
        _ => {
            send(&FromAgent::SetupFailed {
                step: 0,
                errno: ffi::EINVAL,
            });
            // SAFETY: ends this process.
            unsafe { ffi::_exit(1) }
        }
    };
    let sigfd = match build(&setup, images) {
        Ok(fd) => fd,
        Err((step, errno)) => {
            send(&FromAgent::SetupFailed { step, errno });
            // SAFETY: ends this process.
            unsafe { ffi::_exit(1) }
        }
    };
    send(&FromAgent::Ready);
    serve(&setup, &sigfd, &mut buf)
}

/// Receives one packet and its descriptors; `None` when the channel is closed.
fn recv(buf: &mut [u8]) -> Option<(Result<ToAgent, proto::Malformed>, Vec<Fd>)> {
    loop {
        let mut iov = ffi::iovec {
            iov_base: buf.as_mut_ptr(),
            iov_len: buf.len(),
        };
        // room for a cmsghdr (16 bytes) and MAX_FDS descriptors, 8-aligned
        let mut control = [0u64; 2 + MAX_FDS / 2];
        let mut msg = ffi::msghdr {
            msg_name: std::ptr::null_mut(),
            msg_namelen: 0,
            msg_iov: &mut iov,
            msg_iovlen: 1,
            msg_control: control.as_mut_ptr().cast(),
            msg_controllen: std::mem::size_of_val(&control),
            msg_flags: 0,
        };
        // SAFETY: msghdr points at live buffers of the sizes given.
        let n = unsafe { ffi::recvmsg(CHANNEL, &mut msg, ffi::MSG_CMSG_CLOEXEC) };
        if n < 0 {
            if ffi::errno() == ffi::EINTR {
                continue;
            }
            return None;
        }
        if n == 0 {
            return None;
        }
        let mut fds = Vec::new();
        if msg.msg_controllen >= std::mem::size_of::<ffi::cmsghdr>() {
            // SAFETY: the kernel wrote a cmsghdr at the start of `control`.
            let hdr = unsafe { &*(control.as_ptr() as *const ffi::cmsghdr) };
            if hdr.cmsg_level == ffi::SOL_SOCKET && hdr.cmsg_type == ffi::SCM_RIGHTS {
                let count = (hdr.cmsg_len.saturating_sub(16)) / 4;
                // SAFETY: the descriptors follow the 16-byte header inside `control`.
                let data = unsafe { (control.as_ptr() as *const u8).add(16) as *const c_int };
                for i in 0..count.min(MAX_FDS) {
                    // SAFETY: within the descriptors the kernel wrote.
                    fds.push(Fd(unsafe { *data.add(i) }));
                }
            }
        }
        if msg.msg_flags & (ffi::MSG_TRUNC | ffi::MSG_CTRUNC) != 0 {
            return Some((Err(proto::Malformed), fds));
        }
        return Some((ToAgent::decode(&buf[..n as usize]), fds));
    }
}

fn step<T>(i: u8, r: Result<T, c_int>) -> Result<T, StepError> {
    r.map_err(|e| (i, e))
}

/// Builds the sandbox; returns the SIGCHLD signalfd. `images[0]` is the disk's detached
/// mount, the others the read-only layer images' mounts the lowers refer to (the backend
/// attaches and mounts the images).
fn build(s: &Setup, images: Vec<Fd>) -> Result<Fd, StepError> {
    // Every signal is blocked in the agent (commands get a clean mask): SIGCHLD is read from
    // a signalfd, and as PID 1 it ignores what the sandbox sends it anyway.
    let sigfd = step(19, signals())?;
    for tasks in &s.cgroup_tasks {
        let p = std::str::from_utf8(tasks).map_err(|_| (20, ffi::EINVAL))?;
        step(20, write_file(p, "0"))?;
    }
    // SAFETY: mount(2) with valid C strings; only this process's private mount namespace.
    let private = unsafe {
        ffi::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            ffi::MS_REC | ffi::MS_PRIVATE,
            std::ptr::null(),
        )
    };
    step(1, check(private))?;
    // a /proc of the sandbox's PID namespace (the host's one names other processes)
    let flags = ffi::MS_NOSUID | ffi::MS_NODEV | ffi::MS_NOEXEC;
    step(1, mount_fs(c"proc", c"/proc", c"proc", flags, None))?;
    let userns = step(2, user_namespace(0, s.id_base, s.id_count))?;
    let mut images = images.into_iter();
    let disk = images.next().ok_or((3, ffi::EINVAL))?;
    let [upper, work, usr_upper, usr_work] = step(5, writable_layers(&disk, s.id_base))?;
    let mut layers = Layers {
        id_base: s.id_base,
        id_count: s.id_count,
        userns: vec![(0, userns)],
        images: images.map(|f| (f, false)).collect(),
    };
    let root_lowers = layers.open_all(&s.root_layers)?;
    let usr_lowers = layers.open_all(&s.usr_layers)?;
    let root = cstr(&s.root_dir).map_err(|e| (7, e))?;
    step(7, overlay(&root_lowers, &upper, &work, &s.root_dir))?;
    if !usr_lowers.is_empty() {
        let mut usr_target = s.root_dir.clone();
        usr_target.extend_from_slice(b"/usr");
        step(8, overlay(&usr_lowers, &usr_upper, &usr_work, &usr_target))?;
    }
    // the overlays hold their own clones of the disk's and the layers' mounts now
    drop((disk, root_lowers, usr_lowers));
    let userns = layers.userns.swap_remove(0).1;
    drop(layers);
    for d in &s.host_dirs {
        let mut src = b"/".to_vec();
        src.extend_from_slice(d);
        let attrs = ffi::MOUNT_ATTR_RDONLY | ffi::MOUNT_ATTR_NOSUID | ffi::MOUNT_ATTR_NODEV;
        let tree = step(9, idmapped_tree(&src, &userns, true, attrs))?;
        let mut target = s.root_dir.clone();
        target.push(b'/');
        target.extend_from_slice(d);
        step(9, move_mount(&tree, &target))?;
    }
    let path = |rel: &str| {
        let mut p = s.root_dir.clone();
        p.extend_from_slice(rel.as_bytes());
        cstr(&p)
    };
    step(
        10,
        mount_fs(
            c"proc",
            &path("/proc").map_err(|e| (10, e))?,
            c"proc",
            flags,
            None,
        ),
    )?;
    step(11, protect_proc(&path))?;
    let id = s.id_base;
    let dev = path("/dev").map_err(|e| (12, e))?;
    let opts = format!("mode=755,size=65536k,uid={id},gid={id}");
    step(
        12,
        mount_fs(
            c"tmpfs",
            &dev,
            c"tmpfs",
            ffi::MS_NOSUID | ffi::MS_NOEXEC,
            Some(&opts),
        ),
    )?;
    step(13, populate_dev(&path, id))?;
    // SAFETY: sethostname with a live buffer of the given length (own UTS namespace).
    let named = unsafe { ffi::sethostname(s.hostname.as_ptr().cast(), s.hostname.len()) };
    step(14, check(named))?;
    step(15, pivot_root(&root))?;
    step(16, enter_user_namespace(userns))?;
    // A fresh anonymous session keyring: nothing of the host's keyrings is reachable (keyctl
    // itself is then blocked by the seccomp filter).
    // SAFETY: keyctl(KEYCTL_JOIN_SESSION_KEYRING, NULL).
    let keyring =
        unsafe { ffi::syscall(ffi::nr::KEYCTL, ffi::KEYCTL_JOIN_SESSION_KEYRING, 0usize) };
    step(17, check_long(keyring))?;
    step(18, install_seccomp(&s.seccomp))?;
    Ok(sigfd)
}

fn signals() -> Result<Fd, c_int> {
    let mut all = ffi::sigset_t([0; 16]);
    let mut chld = ffi::sigset_t([0; 16]);
    // SAFETY: sigset operations on local sets, then the process mask and a signalfd.
    unsafe {
        ffi::sigfillset(&mut all);
        check(ffi::sigprocmask(ffi::SIG_BLOCK, &all, std::ptr::null_mut()))?;
        ffi::sigemptyset(&mut chld);
        ffi::sigaddset(&mut chld, ffi::SIGCHLD);
        Ok(Fd(check(ffi::signalfd(
            -1,
            &chld,
            ffi::SFD_CLOEXEC | ffi::SFD_NONBLOCK,
        ))?))
    }
}

fn write_file(path: &str, content: &str) -> Result<(), c_int> {
    std::fs::write(path, content).map_err(|e| e.raw_os_error().unwrap_or(ffi::EINVAL))
}

/// Creates a user namespace mapping `inside..inside+count` to `outside..` (uids and gids)
/// with a throwaway child and returns a descriptor of it. The sandbox's own is
/// `0 id_base count`; a layer written by another sandbox gets `its id_base id_base count`.
fn user_namespace(inside: u32, outside: u32, count: u32) -> Result<Fd, c_int> {
    let mut p = [0 as c_int; 2];
    // SAFETY: pipe2 fills the two-element array.
    check(unsafe { ffi::pipe2(p.as_mut_ptr(), ffi::O_CLOEXEC) })?;
    let (r, w) = (Fd(p[0]), Fd(p[1]));
    // SAFETY: the agent is single-threaded; the child only makes system calls and exits.
    let pid = check(unsafe { ffi::fork() })?;
    if pid == 0 {
        // SAFETY: in the child: unshare, report the result, wait to be killed.
        unsafe {
            let code: u8 = if ffi::unshare(ffi::CLONE_NEWUSER) == 0 {
                0
            } else {
                1
            };
            ffi::write(w.0, &code, 1);
            loop {
                ffi::poll(std::ptr::null_mut(), 0, -1);
            }
        }
    }
    drop(w);
    let mut code = 1u8;
    // SAFETY: reads one byte into a local.
    let n = unsafe { ffi::read(r.0, &mut code, 1) };
    let res = (|| {
        if n != 1 || code != 0 {
            return Err(ffi::EINVAL);
        }
        let map = format!("{inside} {outside} {count}\n");
        write_file(&format!("/proc/{pid}/uid_map"), &map)?;
        write_file(&format!("/proc/{pid}/gid_map"), &map)?;
        let path = cstr(format!("/proc/{pid}/ns/user").as_bytes())?;
        // SAFETY: open with a valid C string.
        Ok(Fd(check(unsafe {
            ffi::open(path.as_ptr(), ffi::O_RDONLY | ffi::O_CLOEXEC)
        })?))
    })();
    // SAFETY: kills and reaps our own child.
    unsafe {
        ffi::kill(pid, ffi::SIGKILL);
        ffi::waitpid(pid, std::ptr::null_mut(), 0);
    }
    res
}

fn fsconfig(
    fs: &Fd,
    cmd: u32,
    key: Option<&std::ffi::CStr>,
    value: *const u8,
    aux: c_int,
) -> Result<(), c_int> {
    // SAFETY: fsconfig with valid (or null) C strings on a filesystem context we own.
    check_long(unsafe {
        ffi::syscall(
            ffi::nr_common::FSCONFIG,
            fs.0,
            cmd,
            key.map_or(std::ptr::null(), |k| k.as_ptr()),
            value,
            aux,
        )
    })
    .map(drop)
}

fn fsopen(name: &std::ffi::CStr) -> Result<Fd, c_int> {
    // SAFETY: fsopen with a valid C string.
    check_long(unsafe { ffi::syscall(ffi::nr_common::FSOPEN, name.as_ptr(), ffi::FSOPEN_CLOEXEC) })
        .map(Fd)
}

fn fsmount(fs: &Fd, attrs: u64) -> Result<Fd, c_int> {
    // SAFETY: fsmount on a created context we own.
    check_long(unsafe { ffi::syscall(ffi::nr_common::FSMOUNT, fs.0, ffi::FSMOUNT_CLOEXEC, attrs) })
        .map(Fd)
}

/// The four writable directories on the disk (created, owned by the sandbox's root, on
/// first use), as `O_PATH` descriptors.
fn writable_layers(disk: &Fd, id: u32) -> Result<[Fd; 4], c_int> {
    let mut out = Vec::new();
    for name in proto::WRITABLE_DIRS {
        let name = cstr(name.as_bytes())?;
        // SAFETY: mkdirat/fchownat/openat relative to a directory descriptor we own.
        unsafe {
            let new = if ffi::mkdirat(disk.0, name.as_ptr(), 0o755) == 0 {
                true
            } else if ffi::errno() == ffi::EEXIST {
                fresh_dir(disk, &name)?
            } else {
                return Err(ffi::errno());
            };
            if new {
                check(ffi::fchownat(disk.0, name.as_ptr(), id, id, 0))?;
                check(ffi::fchmodat(disk.0, name.as_ptr(), 0o755, 0))?;
            }
            let flags = ffi::O_PATH | ffi::O_DIRECTORY | ffi::O_NOFOLLOW | ffi::O_CLOEXEC;
            out.push(Fd(check(ffi::openat(disk.0, name.as_ptr(), flags))?));
        }
    }
    let mut it = out.into_iter();
    match (it.next(), it.next(), it.next(), it.next()) {
        (Some(a), Some(b), Some(c), Some(d)) => Ok([a, b, c, d]),
        _ => Err(ffi::EINVAL),
    }
}

/// Whether `name` exists on the disk as a directory a fresh disk comes with (made with the
/// disk's template, owned by host root; once the sandbox has used it, it belongs to the
/// sandbox's ids, and no process of a sandbox can give a file to host root).
fn fresh_dir(disk: &Fd, name: &std::ffi::CStr) -> Result<bool, c_int> {
    use std::os::unix::fs::MetadataExt;
    let path = format!("/proc/self/fd/{}/{}", disk.0, name.to_string_lossy());
    let fresh = match std::fs::symlink_metadata(&path) {
        Ok(m) => m.is_dir() && m.uid() == 0 && m.gid() == 0,
        Err(e) => return Err(e.raw_os_error().unwrap_or(ffi::EINVAL)),
    };
    Ok(fresh)
}

/// A detached copy of the mount tree at `path`, idmapped through `userns` (host id 0 shows as
/// the sandbox's root), plus `attrs`.
fn idmapped_tree(path: &[u8], userns: &Fd, recursive: bool, attrs: u64) -> Result<Fd, c_int> {
    let p = cstr(path)?;
    let rec = if recursive {
        ffi::AT_RECURSIVE as u32
    } else {
        0
    };
    // SAFETY: open_tree with a valid C string.
    let tree = check_long(unsafe {
        ffi::syscall(
            ffi::nr_common::OPEN_TREE,
            ffi::AT_FDCWD,
            p.as_ptr(),
            ffi::OPEN_TREE_CLONE | ffi::OPEN_TREE_CLOEXEC | rec,
        )
    })
    .map(Fd)?;
    idmap(&tree, userns, recursive, attrs)?;
    Ok(tree)
}

/// Idmaps a detached mount (tree) through `userns`, plus `attrs`.
fn idmap(tree: &Fd, userns: &Fd, recursive: bool, attrs: u64) -> Result<(), c_int> {
    let rec = if recursive {
        ffi::AT_RECURSIVE as u32
    } else {
        0
    };
    let attr = ffi::mount_attr {
        attr_set: ffi::MOUNT_ATTR_IDMAP | attrs,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.0 as u64,
    };
    // SAFETY: mount_setattr on the detached tree we own, with a live attribute struct.
    check_long(unsafe {
        ffi::syscall(
            ffi::nr_common::MOUNT_SETATTR,
            tree.0,
            c"".as_ptr(),
            ffi::AT_EMPTY_PATH as u32 | rec,
            &attr as *const ffi::mount_attr,
            std::mem::size_of::<ffi::mount_attr>(),
        )
    })
    .map(drop)
}

fn move_mount(tree: &Fd, target: &[u8]) -> Result<(), c_int> {
    let t = cstr(target)?;
    // SAFETY: move_mount of a detached tree we own onto a path.
    check_long(unsafe {
        ffi::syscall(
            ffi::nr_common::MOVE_MOUNT,
            tree.0,
            c"".as_ptr(),
            ffi::AT_FDCWD,
            t.as_ptr(),
            ffi::MOVE_MOUNT_F_EMPTY_PATH,
        )
    })
    .map(drop)
}

/// An overlay of `lowers` (idmapped, top first) under `upper` attached at `target`.
fn overlay(lowers: &[Fd], upper: &Fd, work: &Fd, target: &[u8]) -> Result<(), c_int> {
    let fs = fsopen(c"overlay")?;
    for lower in lowers {
        fsconfig(
            &fs,
            ffi::FSCONFIG_SET_FD,
            Some(c"lowerdir+"),
            std::ptr::null(),
            lower.0,
        )?;
    }
    fsconfig(
        &fs,
        ffi::FSCONFIG_SET_FD,
        Some(c"upperdir"),
        std::ptr::null(),
        upper.0,
    )?;
    fsconfig(
        &fs,
        ffi::FSCONFIG_SET_FD,
        Some(c"workdir"),
        std::ptr::null(),
        work.0,
    )?;
    fsconfig(&fs, ffi::FSCONFIG_CMD_CREATE, None, std::ptr::null(), 0)?;
    let mnt = fsmount(&fs, ffi::MOUNT_ATTR_NODEV)?;
    move_mount(&mnt, target)
}

/// Opens the lower layers: user namespaces per layer owner, the read-only layer images'
/// mounts (made by the backend) idmapped once each.
struct Layers {
    id_base: u32,
    id_count: u32,
    /// (owner base, user namespace mapping it to the sandbox's range).
    userns: Vec<(u32, Fd)>,
    /// The read-only images' detached mounts, and whether each is idmapped yet.
    images: Vec<(Fd, bool)>,
}

impl Layers {
    fn userns_for(&mut self, owner: u32) -> Result<usize, StepError> {
        if let Some(i) = self.userns.iter().position(|(o, _)| *o == owner) {
            return Ok(i);
        }
        let ns = step(21, user_namespace(owner, self.id_base, self.id_count))?;
        self.userns.push((owner, ns));
        Ok(self.userns.len() - 1)
    }

    fn open(&mut self, l: &Lower) -> Result<Fd, StepError> {
        let ns = self.userns_for(l.owner_base)?;
        if l.image == 0 {
            let attrs = ffi::MOUNT_ATTR_RDONLY | ffi::MOUNT_ATTR_NODEV;
            return step(
                6,
                idmapped_tree(&l.path, &self.userns[ns].1, l.recursive, attrs),
            );
        }
        let i = usize::try_from(l.image - 1).map_err(|_| (22, ffi::EINVAL))?;
        if i >= self.images.len() {
            return Err((22, ffi::EINVAL));
        }
        let (mnt, mapped) = &mut self.images[i];
        if !*mapped {
            step(6, idmap(mnt, &self.userns[ns].1, false, 0))?;
            *mapped = true;
        }
        let p = cstr(&l.path).map_err(|e| (6, e))?;
        let flags = ffi::O_PATH | ffi::O_DIRECTORY | ffi::O_NOFOLLOW | ffi::O_CLOEXEC;
        // SAFETY: openat relative to a mount descriptor we own, with a valid C string.
        step(
            6,
            check(unsafe { ffi::openat(mnt.0, p.as_ptr(), flags) }).map(Fd),
        )
    }

    fn open_all(&mut self, lowers: &[Lower]) -> Result<Vec<Fd>, StepError> {
        lowers.iter().map(|l| self.open(l)).collect()
    }
}

fn mount_fs(
    src: &std::ffi::CStr,
    target: &std::ffi::CStr,
    fstype: &std::ffi::CStr,
    flags: ffi::c_ulong,
    data: Option<&str>,
) -> Result<(), c_int> {
    let data = data.map(|d| cstr(d.as_bytes())).transpose()?;
    // SAFETY: mount(2) with valid C strings in the agent's own mount namespace.
    check(unsafe {
        ffi::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            flags,
            data.as_ref()
                .map_or(std::ptr::null(), |d| d.as_ptr().cast()),
        )
    })
    .map(drop)
}

fn bind(src: &std::ffi::CStr, target: &std::ffi::CStr, flags: ffi::c_ulong) -> Result<(), c_int> {
    // SAFETY: mount(2) with valid C strings in the agent's own mount namespace.
    check(unsafe {
        ffi::mount(
            src.as_ptr(),
            target.as_ptr(),
            std::ptr::null(),
            flags,
            std::ptr::null(),
        )
    })
    .map(drop)
}

/// Read-only kernel knobs, masked sensitive files (missing ones are skipped).
fn protect_proc(path: &dyn Fn(&str) -> Result<CString, c_int>) -> Result<(), c_int> {
    for ro in ["sys", "sysrq-trigger", "irq", "bus", "fs"] {
        let p = path(&format!("/proc/{ro}"))?;
        match bind(&p, &p, ffi::MS_BIND | ffi::MS_REC) {
            Err(ffi::ENOENT) => continue,
            other => other?,
        }
        let flags = ffi::MS_BIND
            | ffi::MS_REMOUNT
            | ffi::MS_RDONLY
            | ffi::MS_NOSUID
            | ffi::MS_NODEV
            | ffi::MS_NOEXEC;
        // SAFETY: remount of the bind just made.
        check(unsafe {
            ffi::mount(
                std::ptr::null(),
                p.as_ptr(),
                std::ptr::null(),
                flags,
                std::ptr::null(),
            )
        })?;
    }
    for masked in [
        "kcore",
        "keys",
        "timer_list",
        "sched_debug",
        "latency_stats",
    ] {
        let p = path(&format!("/proc/{masked}"))?;
        match bind(c"/dev/null", &p, ffi::MS_BIND) {
            Err(ffi::ENOENT) => {}
            other => other?,
        }
    }
    Ok(())
}

/// Device nodes, links, `/dev/pts` and `/dev/shm`, owned by the sandbox's root.
fn populate_dev(path: &dyn Fn(&str) -> Result<CString, c_int>, id: u32) -> Result<(), c_int> {
    // SAFETY: umask only affects this process.
    unsafe { ffi::umask(0) };
    for (name, major, minor) in [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ] {
        let p = path(&format!("/dev/{name}"))?;
        // SAFETY: mknod/fchownat with a valid C string on our own tmpfs.
        unsafe {
            check(ffi::mknod(
                p.as_ptr(),
                ffi::S_IFCHR | 0o666,
                ffi::makedev(major, minor),
            ))?;
            check(ffi::fchownat(ffi::AT_FDCWD, p.as_ptr(), id, id, 0))?;
        }
    }
    for (target, name) in [
        ("/proc/self/fd", "fd"),
        ("/proc/self/fd/0", "stdin"),
        ("/proc/self/fd/1", "stdout"),
        ("/proc/self/fd/2", "stderr"),
        ("pts/ptmx", "ptmx"),
    ] {
        let link = path(&format!("/dev/{name}"))?;
        std::os::unix::fs::symlink(target, link.to_string_lossy().as_ref())
            .map_err(|e| e.raw_os_error().unwrap_or(ffi::EINVAL))?;
        // SAFETY: fchownat with a valid C string, not following the link.
        check(unsafe {
            ffi::fchownat(
                ffi::AT_FDCWD,
                link.as_ptr(),
                id,
                id,
                ffi::AT_SYMLINK_NOFOLLOW,
            )
        })?;
    }
    for (name, mode) in [("pts", 0o755), ("shm", 0o1777)] {
        let p = path(&format!("/dev/{name}"))?;
        // SAFETY: mkdirat/fchownat with a valid C string.
        unsafe {
            check(ffi::mkdirat(ffi::AT_FDCWD, p.as_ptr(), mode))?;
            check(ffi::fchownat(ffi::AT_FDCWD, p.as_ptr(), id, id, 0))?;
        }
    }
    let tty_gid = id + 5;
    mount_fs(
        c"devpts",
        &path("/dev/pts")?,
        c"devpts",
        ffi::MS_NOSUID | ffi::MS_NOEXEC,
        Some(&format!(
            "newinstance,ptmxmode=0666,mode=0620,gid={tty_gid}"
        )),
    )?;
    mount_fs(
        c"shm",
        &path("/dev/shm")?,
        c"tmpfs",
        ffi::MS_NOSUID | ffi::MS_NODEV,
        Some(&format!("mode=1777,size=65536k,uid={id},gid={id}")),
    )?;
    // SAFETY: umask only affects this process.
    unsafe { ffi::umask(0o022) };
    Ok(())
}

fn pivot_root(root: &CString) -> Result<(), c_int> {
    // SAFETY: chdir/pivot_root/umount2 with valid C strings, in our own mount namespace.
    unsafe {
        check(ffi::chdir(root.as_ptr()))?;
        check_long(ffi::syscall(
            ffi::nr::PIVOT_ROOT,
            c".".as_ptr(),
            c".".as_ptr(),
        ))?;
        check(ffi::umount2(c".".as_ptr(), ffi::MNT_DETACH))?;
        check(ffi::chdir(c"/".as_ptr())).map(drop)
    }
}

/// Joins the sandbox user namespace as its root (host id `id_base`). Mount, PID, UTS, IPC and
/// network namespaces stay owned by the host's user namespace: capabilities in the sandbox's
/// own user namespace give no power over them.
fn enter_user_namespace(userns: Fd) -> Result<(), c_int> {
    // SAFETY: credential changes of this single-threaded process.
    unsafe {
        check(ffi::setns(userns.0, ffi::CLONE_NEWUSER))?;
        check(ffi::setgroups(0, std::ptr::null()))?;
        check(ffi::setresgid(0, 0, 0))?;
        check(ffi::setresuid(0, 0, 0))?;
        // credential changes may reset it: non-dumpable for good
        ffi::prctl(ffi::PR_SET_DUMPABLE, 0 as ffi::c_ulong, 0, 0, 0);
    }
    Ok(())
}

fn install_seccomp(program: &[u8]) -> Result<(), c_int> {
    if program.is_empty()
        || !program.len().is_multiple_of(8)
        || program.len() / 8 > usize::from(u16::MAX)
    {
        return Err(ffi::EINVAL);
    }
    let prog = ffi::sock_fprog {
        len: (program.len() / 8) as u16,
        filter: program.as_ptr(),
    };
    // SAFETY: seccomp(SET_MODE_FILTER) reads the program, which outlives the call.
    check_long(unsafe {
        ffi::syscall(
            ffi::nr::SECCOMP,
            ffi::SECCOMP_SET_MODE_FILTER,
            0usize,
            &prog as *const ffi::sock_fprog,
        )
    })
    .map(drop)
}

/// A command the backend started.
#[derive(Debug)]
struct Command {
    id: u32,
    pid: ffi::pid_t,
    /// Read end of the exec-status pipe until the program ran (or failed to).
    status: Option<Fd>,
    /// Whether `Started` was sent (an `Exited` follows only then).
    started: bool,
}

fn serve(setup: &Setup, sigfd: &Fd, buf: &mut [u8]) -> ! {
    let mut cmds: Vec<Command> = Vec::new();
    loop {
        let mut pfds = vec![
            ffi::pollfd {
                fd: CHANNEL,
                events: ffi::POLLIN,
                revents: 0,
            },
            ffi::pollfd {
                fd: sigfd.0,
                events: ffi::POLLIN,
                revents: 0,
            },
        ];
        for c in &cmds {
            if let Some(s) = &c.status {
                pfds.push(ffi::pollfd {
                    fd: s.0,
                    events: ffi::POLLIN,
                    revents: 0,
                });
            }
        }
        // SAFETY: poll over a live array of the given length.
        let n = unsafe { ffi::poll(pfds.as_mut_ptr(), pfds.len() as ffi::c_ulong, -1) };
        if n < 0 {
            continue;
        }
        for p in &pfds[2..] {
            if p.revents != 0 {
                if let Some(c) = cmds
                    .iter_mut()
                    .find(|c| c.status.as_ref().is_some_and(|s| s.0 == p.fd))
                {
                    resolve(c);
                }
            }
        }
        cmds.retain(|c| c.status.is_some() || c.started);
        if pfds[1].revents != 0 {
            drain(sigfd);
            reap(&mut cmds);
        }
        if pfds[0].revents != 0 {
            match recv(buf) {
                None => {
                    // SAFETY: the backend is gone: end the sandbox.
                    unsafe { ffi::_exit(0) }
                }
                Some((
                    Ok(ToAgent::Spawn {
                        id,
                        argv,
                        env,
                        cwd,
                        stdin,
                    }),
                    fds,
                )) => {
                    if let Some(c) = spawn(setup, id, &argv, &env, &cwd, stdin, fds) {
                        cmds.push(c);
                    }
                }
                Some((Ok(ToAgent::Signal { id, sig, group }), _)) => {
                    if let Some(c) = cmds.iter().find(|c| c.id == id) {
                        let target = if group { -c.pid } else { c.pid };
                        // SAFETY: signals our own, not yet reaped, child (or its group).
                        unsafe { ffi::kill(target, sig) };
                    }
                }
                Some(_) => {}
            }
        }
    }
}

fn drain(sigfd: &Fd) {
    let mut b = [0u8; 128 * 8];
    // SAFETY: reads into a local buffer from our non-blocking signalfd.
    while unsafe { ffi::read(sigfd.0, b.as_mut_ptr(), b.len()) } > 0 {}
}

/// Reads the exec-status pipe of a command that became readable: EOF means the program runs.
fn resolve(c: &mut Command) {
    let Some(s) = c.status.take() else { return };
    let mut b = [0u8; 5];
    // SAFETY: reads into a local buffer from our pipe (the writer is gone or wrote).
    let n = unsafe { ffi::read(s.0, b.as_mut_ptr(), b.len()) };
    if n == 5 {
        let errno = c_int::from_le_bytes([b[1], b[2], b[3], b[4]]);
        send(&FromAgent::SpawnFailed {
            id: c.id,
            step: b[0],
            errno,
        });
    } else {
        c.started = true;
        send(&FromAgent::Started {
            id: c.id,
            pid: c.pid,
        });
    }
}

/// Reaps every exited process (the agent is the sandbox's init) and reports commands' exits.
fn reap(cmds: &mut Vec<Command>) {
    loop {
        let mut status = 0;
        // SAFETY: waitpid into a local.
        let pid = unsafe { ffi::waitpid(-1, &mut status, ffi::WNOHANG) };
        if pid <= 0 {
            return;
        }
        if let Some(i) = cmds.iter().position(|c| c.pid == pid) {
            let mut c = cmds.swap_remove(i);
            if c.status.is_some() {
                resolve(&mut c);
            }
            if c.started {
                send(&FromAgent::Exited { id: c.id, status });
            }
        }
    }
}

/// The paths to try for `program` (`PATH` search when it has no slash).
fn candidates(program: &[u8], env: &[Vec<u8>]) -> Vec<CString> {
    if program.contains(&b'/') {
        return cstr(program).into_iter().collect();
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix(b"PATH="))
        .unwrap_or(b"/usr/local/bin:/usr/bin:/bin");
    path.split(|b| *b == b':')
        .filter(|d| !d.is_empty())
        .filter_map(|d| {
            let mut p = d.to_vec();
            p.push(b'/');
            p.extend_from_slice(program);
            cstr(&p).ok()
        })
        .collect()
}

fn spawn(
    setup: &Setup,
    id: u32,
    argv: &[Vec<u8>],
    env: &[Vec<u8>],
    cwd: &[u8],
    stdin: bool,
    fds: Vec<Fd>,
) -> Option<Command> {
    let fail = |step: u8, errno: c_int| {
        send(&FromAgent::SpawnFailed { id, step, errno });
        None
    };
    if fds.len() != if stdin { 3 } else { 2 } || argv.is_empty() {
        return fail(6, ffi::EINVAL);
    }
    // everything the child needs is prepared here: after fork it only makes system calls
    let (Ok(args), Ok(envs), Ok(cwd)) = (
        argv.iter().map(|a| cstr(a)).collect::<Result<Vec<_>, _>>(),
        env.iter().map(|e| cstr(e)).collect::<Result<Vec<_>, _>>(),
        cstr(cwd),
    ) else {
        return fail(STEP_EXEC, ffi::EINVAL);
    };
    let mut argp: Vec<*const c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argp.push(std::ptr::null());
    let mut envp: Vec<*const c_char> = envs.iter().map(|e| e.as_ptr()).collect();
    envp.push(std::ptr::null());
    let paths = candidates(&argv[0], env);
    let mut p = [0 as c_int; 2];
    // SAFETY: pipe2 fills the two-element array.
    if unsafe { ffi::pipe2(p.as_mut_ptr(), ffi::O_CLOEXEC) } != 0 {
        return fail(0, ffi::errno());
    }
    let (status_r, status_w) = (Fd(p[0]), Fd(p[1]));
    // SAFETY: the agent is single-threaded; the child runs `child` (system calls only) and
    // never returns.
    let pid = unsafe { ffi::fork() };
    if pid < 0 {
        return fail(0, ffi::errno());
    }
    if pid == 0 {
        // SAFETY: in the freshly forked child, with everything prepared above.
        unsafe { child(setup, &fds, stdin, &cwd, &paths, &argp, &envp, status_w.0) }
    }
    drop(status_w);
    drop(fds);
    Some(Command {
        id,
        pid,
        status: Some(status_r),
        started: false,
    })
}

/// The forked command: session, standard streams, working directory, capabilities, exec.
/// Failures are written to `report` as (step, errno).
///
/// # Safety
/// Only in a freshly forked child of the (single-threaded) agent.
#[allow(clippy::too_many_arguments)]
unsafe fn child(
    setup: &Setup,
    fds: &[Fd],
    stdin: bool,
    cwd: &CString,
    paths: &[CString],
    argv: &[*const c_char],
    envp: &[*const c_char],
    report: c_int,
) -> ! {
    let fail = |step: u8, errno: c_int| -> ! {
        let mut b = [step, 0, 0, 0, 0];
        b[1..].copy_from_slice(&errno.to_le_bytes());
        // SAFETY: writes a local buffer to the report pipe, then ends the child.
        unsafe {
            ffi::write(report, b.as_ptr(), b.len());
            ffi::_exit(127)
        }
    };
    // SAFETY: system calls on this process only (it is a fresh single-threaded child).
    unsafe {
        ffi::close(CHANNEL);
        let mut empty = ffi::sigset_t([0; 16]);
        ffi::sigemptyset(&mut empty);
        for sig in 1..65 {
            ffi::signal(sig, ffi::SIG_DFL);
        }
        ffi::sigprocmask(ffi::SIG_SETMASK, &empty, std::ptr::null_mut());
        if ffi::setsid() < 0 {
            fail(1, ffi::errno());
        }
        let input = if stdin {
            fds[2].0
        } else {
            let fd = ffi::open(c"/dev/null".as_ptr(), ffi::O_RDONLY | ffi::O_CLOEXEC);
            if fd < 0 {
                fail(2, ffi::errno());
            }
            fd
        };
        if ffi::dup2(input, 0) < 0 || ffi::dup2(fds[0].0, 1) < 0 || ffi::dup2(fds[1].0, 2) < 0 {
            fail(2, ffi::errno());
        }
        // nothing but 0-2 (and the report pipe, close-on-exec) reaches the program
        ffi::syscall(
            ffi::nr_common::CLOSE_RANGE,
            3u32,
            u32::MAX,
            ffi::CLOSE_RANGE_CLOEXEC,
        );
        if ffi::chdir(cwd.as_ptr()) != 0 {
            fail(STEP_CHDIR, ffi::errno());
        }
        if let Err(e) = drop_caps(setup.keep_caps, setup.last_cap) {
            fail(4, e);
        }
        ffi::umask(0o022);
        let mut err = ffi::ENOENT;
        for p in paths {
            ffi::execve(p.as_ptr(), argv.as_ptr(), envp.as_ptr());
            let e = ffi::errno();
            // as execvp: a permission problem is worth more than "not found"
            if e != ffi::ENOENT {
                err = e;
            }
        }
        fail(STEP_EXEC, err)
    }
}

/// Drops every capability not in `keep` (all sets, bounding set, ambient), then sets
/// `no_new_privs`.
///
/// # Safety
/// Changes this process's credentials.
unsafe fn drop_caps(keep: u64, last_cap: u32) -> Result<(), c_int> {
    // SAFETY: prctl/capset calls on this process with valid arguments.
    unsafe {
        for cap in 0..=last_cap.min(63) {
            if keep & (1u64 << cap) == 0
                && ffi::prctl(ffi::PR_CAPBSET_DROP, ffi::c_ulong::from(cap), 0, 0, 0) != 0
                && ffi::errno() != ffi::EINVAL
            {
                return Err(ffi::errno());
            }
        }
        ffi::prctl(ffi::PR_CAP_AMBIENT, ffi::PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
        let header = ffi::cap_header {
            version: ffi::LINUX_CAPABILITY_VERSION_3,
            pid: 0,
        };
        let (lo, hi) = ((keep & 0xffff_ffff) as u32, (keep >> 32) as u32);
        let data = [
            ffi::cap_data {
                effective: lo,
                permitted: lo,
                inheritable: 0,
            },
            ffi::cap_data {
                effective: hi,
                permitted: hi,
                inheritable: 0,
            },
        ];
        check_long(ffi::syscall(
            ffi::nr::CAPSET,
            &header as *const ffi::cap_header,
            data.as_ptr(),
        ))?;
        check(ffi::prctl(
            ffi::PR_SET_NO_NEW_PRIVS,
            1 as ffi::c_ulong,
            0,
            0,
            0,
        ))
        .map(drop)
    }
}
