//! Linux plumbing: every `unsafe` system call of the backend lives in this module and its
//! children, each with the reason it is sound.
//!
//! * [`spawn`]: starting a sandbox's agent (`clone3` + exec of a sealed memfd) and its
//!   control channel;
//! * [`proto`]: the channel's messages (shared with the agent program in `agent/`);
//! * [`seccomp`]: the sandboxes' seccomp filter;
//! * [`pool`]: the layer store's pool (loop device, detached mount, reflinks);
//! * here: pidfds, descriptors, pipes and `splice(2)`, the data-directory lock.

#![allow(unsafe_code)]

pub(crate) mod pool;
#[allow(dead_code)] // the agent program uses the other half of the codec
pub(crate) mod proto;
pub(crate) mod seccomp;
pub(crate) mod spawn;

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Mutex;

use libc::{c_int, c_void};

/// A C string from bytes; an interior NUL is an `InvalidInput` error.
pub(crate) fn cstr(s: impl Into<Vec<u8>>) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL byte in string"))
}

/// A C string from a path.
pub(crate) fn path_cstr(p: &Path) -> io::Result<CString> {
    cstr(p.as_os_str().as_bytes())
}

pub(crate) fn cvt(r: c_int) -> io::Result<c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Capabilities a sandbox process keeps, inside its own user namespace (Docker's default set
/// without `MKNOD`, `NET_RAW` and `NET_BIND_SERVICE`; the network namespace belongs to the
/// host's user namespace anyway).
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

/// A non-blocking pipe: read end, write end, and how many bytes it holds (grown to `size`
/// when the kernel allows it; the default size otherwise).
pub(crate) fn pipe(size: usize) -> io::Result<(OwnedFd, OwnedFd, usize)> {
    let mut fds = [0 as c_int; 2];
    // SAFETY: pipe2 writes two descriptors into the two-element array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just returned by pipe2, each is owned exactly once.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let want = c_int::try_from(size).unwrap_or(c_int::MAX);
    // SAFETY: F_SETPIPE_SZ takes an int argument and answers the new size (or fails and
    // leaves the default); the descriptor is owned above.
    let set = unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, want) };
    let got = if set > 0 {
        set
    } else {
        // SAFETY: F_GETPIPE_SZ takes no argument and answers the size.
        unsafe { libc::fcntl(w.as_raw_fd(), libc::F_GETPIPE_SZ) }
    };
    let capacity = usize::try_from(got)
        .ok()
        .filter(|&n| n > 0)
        .unwrap_or(65536);
    Ok((r, w, capacity))
}

/// Moves up to `len` bytes from `from` to `to` (one of them a pipe) without copying them
/// through this process (`splice`, non-blocking); `Ok(0)`: `from` is at its end;
/// `ErrorKind::WouldBlock` when either side is not ready.
pub(crate) fn splice(from: BorrowedFd<'_>, to: BorrowedFd<'_>, len: usize) -> io::Result<usize> {
    // SAFETY: fd-to-fd transfer with null offsets: no user memory is involved; both
    // descriptors are borrowed, so they stay open for the call.
    let n = unsafe {
        libc::splice(
            from.as_raw_fd(),
            std::ptr::null_mut(),
            to.as_raw_fd(),
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
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
