//! The C library calls and kernel structures the agent uses, declared by hand: the agent is a
//! separate program built by `build.rs` with `std` only (no crates), for 64-bit Linux with
//! glibc (x86-64 and AArch64, whose layouts below agree).

#![allow(non_camel_case_types, dead_code)]

pub type c_char = std::ffi::c_char;
pub type c_int = i32;
pub type c_long = i64;
pub type c_ulong = u64;
pub type pid_t = i32;
pub type uid_t = u32;
pub type gid_t = u32;
pub type mode_t = u32;

/// glibc's `sigset_t` (1024 bits).
#[repr(C)]
pub struct sigset_t(pub [u64; 16]);

#[repr(C)]
pub struct iovec {
    pub iov_base: *mut u8,
    pub iov_len: usize,
}

#[repr(C)]
pub struct msghdr {
    pub msg_name: *mut u8,
    pub msg_namelen: u32,
    pub msg_iov: *mut iovec,
    pub msg_iovlen: usize,
    pub msg_control: *mut u8,
    pub msg_controllen: usize,
    pub msg_flags: c_int,
}

#[repr(C)]
pub struct cmsghdr {
    pub cmsg_len: usize,
    pub cmsg_level: c_int,
    pub cmsg_type: c_int,
}

#[repr(C)]
pub struct pollfd {
    pub fd: c_int,
    pub events: i16,
    pub revents: i16,
}

#[repr(C)]
pub struct mount_attr {
    pub attr_set: u64,
    pub attr_clr: u64,
    pub propagation: u64,
    pub userns_fd: u64,
}

#[repr(C)]
pub struct sock_fprog {
    pub len: u16,
    pub filter: *const u8,
}

#[repr(C)]
pub struct cap_header {
    pub version: u32,
    pub pid: c_int,
}

#[repr(C)]
pub struct cap_data {
    pub effective: u32,
    pub permitted: u32,
    pub inheritable: u32,
}

extern "C" {
    pub fn fork() -> pid_t;
    pub fn execve(
        path: *const c_char,
        argv: *const *const c_char,
        envp: *const *const c_char,
    ) -> c_int;
    pub fn _exit(code: c_int) -> !;
    pub fn setsid() -> pid_t;
    pub fn dup2(old: c_int, new: c_int) -> c_int;
    pub fn chdir(path: *const c_char) -> c_int;
    pub fn prctl(option: c_int, ...) -> c_int;
    pub fn syscall(n: c_long, ...) -> c_long;
    pub fn mount(
        src: *const c_char,
        target: *const c_char,
        fstype: *const c_char,
        flags: c_ulong,
        data: *const u8,
    ) -> c_int;
    pub fn umount2(target: *const c_char, flags: c_int) -> c_int;
    pub fn sethostname(name: *const c_char, len: usize) -> c_int;
    pub fn mknod(path: *const c_char, mode: mode_t, dev: u64) -> c_int;
    pub fn mkdirat(dirfd: c_int, path: *const c_char, mode: mode_t) -> c_int;
    pub fn fchownat(
        dirfd: c_int,
        path: *const c_char,
        uid: uid_t,
        gid: gid_t,
        flags: c_int,
    ) -> c_int;
    pub fn fchmodat(dirfd: c_int, path: *const c_char, mode: mode_t, flags: c_int) -> c_int;
    pub fn setgroups(n: usize, list: *const gid_t) -> c_int;
    pub fn setresuid(r: uid_t, e: uid_t, s: uid_t) -> c_int;
    pub fn setresgid(r: gid_t, e: gid_t, s: gid_t) -> c_int;
    pub fn setns(fd: c_int, nstype: c_int) -> c_int;
    pub fn unshare(flags: c_int) -> c_int;
    pub fn umask(mask: mode_t) -> mode_t;
    pub fn signal(sig: c_int, handler: usize) -> usize;
    pub fn sigprocmask(how: c_int, set: *const sigset_t, old: *mut sigset_t) -> c_int;
    pub fn sigfillset(set: *mut sigset_t) -> c_int;
    pub fn sigemptyset(set: *mut sigset_t) -> c_int;
    pub fn sigaddset(set: *mut sigset_t, sig: c_int) -> c_int;
    pub fn signalfd(fd: c_int, mask: *const sigset_t, flags: c_int) -> c_int;
    pub fn waitpid(pid: pid_t, status: *mut c_int, options: c_int) -> pid_t;
    pub fn kill(pid: pid_t, sig: c_int) -> c_int;
    pub fn poll(fds: *mut pollfd, n: c_ulong, timeout: c_int) -> c_int;
    pub fn pipe2(fds: *mut c_int, flags: c_int) -> c_int;
    pub fn recvmsg(fd: c_int, msg: *mut msghdr, flags: c_int) -> isize;
    pub fn open(path: *const c_char, flags: c_int, ...) -> c_int;
    pub fn openat(dirfd: c_int, path: *const c_char, flags: c_int, ...) -> c_int;
    pub fn close(fd: c_int) -> c_int;
    pub fn read(fd: c_int, buf: *mut u8, n: usize) -> isize;
    pub fn write(fd: c_int, buf: *const u8, n: usize) -> isize;
    pub fn fcntl(fd: c_int, cmd: c_int, ...) -> c_int;
    pub fn __errno_location() -> *mut c_int;
}

pub const AT_FDCWD: c_int = -100;
pub const AT_EMPTY_PATH: c_int = 0x1000;
pub const AT_RECURSIVE: c_int = 0x8000;
pub const AT_SYMLINK_NOFOLLOW: c_int = 0x100;

pub const O_RDONLY: c_int = 0;
pub const O_WRONLY: c_int = 1;
pub const O_NONBLOCK: c_int = 0o4000;
pub const O_CLOEXEC: c_int = 0o2_000_000;
pub const O_PATH: c_int = 0o10_000_000;
#[cfg(target_arch = "x86_64")]
pub const O_DIRECTORY: c_int = 0o200_000;
#[cfg(target_arch = "aarch64")]
pub const O_DIRECTORY: c_int = 0o40_000;
#[cfg(target_arch = "x86_64")]
pub const O_NOFOLLOW: c_int = 0o400_000;
#[cfg(target_arch = "aarch64")]
pub const O_NOFOLLOW: c_int = 0o100_000;

pub const F_SETFD: c_int = 2;
pub const FD_CLOEXEC: c_int = 1;

pub const EINTR: c_int = 4;
pub const EAGAIN: c_int = 11;
pub const EACCES: c_int = 13;
pub const EBUSY: c_int = 16;
pub const EEXIST: c_int = 17;
pub const EINVAL: c_int = 22;
pub const ENOENT: c_int = 2;
pub const ECHILD: c_int = 10;

pub const SIG_DFL: usize = 0;
pub const SIG_SETMASK: c_int = 2;
pub const SIG_BLOCK: c_int = 0;
pub const SIGKILL: c_int = 9;
pub const SIGCHLD: c_int = 17;
pub const SFD_CLOEXEC: c_int = O_CLOEXEC;
pub const SFD_NONBLOCK: c_int = O_NONBLOCK;
pub const WNOHANG: c_int = 1;

pub const POLLIN: i16 = 1;
pub const POLLERR: i16 = 8;
pub const POLLHUP: i16 = 16;

pub const SOL_SOCKET: c_int = 1;
pub const SCM_RIGHTS: c_int = 1;
pub const MSG_CMSG_CLOEXEC: c_int = 0x4000_0000;
pub const MSG_TRUNC: c_int = 0x20;
pub const MSG_CTRUNC: c_int = 0x8;

pub const PR_SET_DUMPABLE: c_int = 4;
pub const PR_CAPBSET_DROP: c_int = 24;
pub const PR_SET_NO_NEW_PRIVS: c_int = 38;
pub const PR_CAP_AMBIENT: c_int = 47;
pub const PR_CAP_AMBIENT_CLEAR_ALL: c_ulong = 4;

pub const CLONE_NEWUSER: c_int = 0x1000_0000;

pub const MS_RDONLY: c_ulong = 1;
pub const MS_NOSUID: c_ulong = 2;
pub const MS_NODEV: c_ulong = 4;
pub const MS_NOEXEC: c_ulong = 8;
pub const MS_REMOUNT: c_ulong = 32;
pub const MS_BIND: c_ulong = 4096;
pub const MS_REC: c_ulong = 16384;
pub const MS_PRIVATE: c_ulong = 1 << 18;
pub const MNT_DETACH: c_int = 2;

pub const OPEN_TREE_CLONE: u32 = 1;
pub const OPEN_TREE_CLOEXEC: u32 = O_CLOEXEC as u32;
pub const MOUNT_ATTR_RDONLY: u64 = 0x1;
pub const MOUNT_ATTR_NOSUID: u64 = 0x2;
pub const MOUNT_ATTR_NODEV: u64 = 0x4;
pub const MOUNT_ATTR_IDMAP: u64 = 0x10_0000;
pub const FSOPEN_CLOEXEC: u32 = 1;
pub const FSMOUNT_CLOEXEC: u32 = 1;
pub const FSCONFIG_SET_FD: u32 = 5;
pub const FSCONFIG_CMD_CREATE: u32 = 6;
pub const MOVE_MOUNT_F_EMPTY_PATH: u32 = 4;

pub const S_IFCHR: mode_t = 0o020_000;

pub const KEYCTL_JOIN_SESSION_KEYRING: c_long = 1;
pub const SECCOMP_SET_MODE_FILTER: c_long = 1;
pub const CLOSE_RANGE_CLOEXEC: u32 = 4;
pub const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[cfg(target_arch = "x86_64")]
pub mod nr {
    use super::c_long;
    pub const PIVOT_ROOT: c_long = 155;
    pub const CAPSET: c_long = 126;
    pub const KEYCTL: c_long = 250;
    pub const SECCOMP: c_long = 317;
}
#[cfg(target_arch = "aarch64")]
pub mod nr {
    use super::c_long;
    pub const PIVOT_ROOT: c_long = 41;
    pub const CAPSET: c_long = 91;
    pub const KEYCTL: c_long = 219;
    pub const SECCOMP: c_long = 277;
}
/// System calls numbered alike on every architecture (the unified table, Linux 5.2+).
pub mod nr_common {
    use super::c_long;
    pub const OPEN_TREE: c_long = 428;
    pub const MOVE_MOUNT: c_long = 429;
    pub const FSOPEN: c_long = 430;
    pub const FSCONFIG: c_long = 431;
    pub const FSMOUNT: c_long = 432;
    pub const CLOSE_RANGE: c_long = 436;
    pub const MOUNT_SETATTR: c_long = 442;
}

/// `makedev(major, minor)` as glibc encodes it.
pub fn makedev(major: u32, minor: u32) -> u64 {
    let (ma, mi) = (u64::from(major), u64::from(minor));
    ((ma & 0xffff_f000) << 32) | ((ma & 0xfff) << 8) | ((mi & 0xffff_ff00) << 12) | (mi & 0xff)
}

/// The calling thread's `errno`.
pub fn errno() -> c_int {
    // SAFETY: __errno_location returns the thread's errno slot, valid for the thread's life.
    unsafe { *__errno_location() }
}
