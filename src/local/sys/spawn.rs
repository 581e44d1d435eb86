//! Starting a sandbox's agent and talking to it: the embedded agent program in a sealed
//! memfd, `clone3` into fresh namespaces, the `SOCK_SEQPACKET` control channel with
//! `SCM_RIGHTS`, pidfds.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::OnceLock;

use libc::{c_int, c_void};

use super::cvt;

/// The agent program, built by `build.rs` from `src/local/sys/agent/`.
static AGENT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/superserve-agent"));

/// Namespaces every agent starts in: a new PID namespace (it is PID 1), mount, UTS and IPC
/// namespaces, all owned by the host user namespace. Its network namespace, configured
/// beforehand, is joined before the agent runs.
const AGENT_NAMESPACES: u64 =
    (libc::CLONE_NEWPID | libc::CLONE_NEWNS | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC) as u64;

fn owned(fd: c_int) -> OwnedFd {
    // SAFETY: callers pass a descriptor that was just returned to them and nobody else owns.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// The agent's executable: a memfd holding [`AGENT`], sealed against any change, made once
/// per process. Nothing on the host file system is ever an agent's executable, so no
/// process can overwrite "the binary the sandbox runs" (runc's CVE-2019-5736).
fn agent_image() -> io::Result<&'static OwnedFd> {
    static IMAGE: OnceLock<Result<OwnedFd, String>> = OnceLock::new();
    let made = IMAGE.get_or_init(|| {
        let make = || -> io::Result<OwnedFd> {
            // SAFETY: memfd_create with a valid C string; the fd is owned below.
            let fd = cvt(unsafe {
                libc::memfd_create(
                    c"superserve-agent".as_ptr(),
                    libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
                )
            })?;
            let fd = owned(fd);
            let mut file = std::fs::File::from(fd);
            std::io::Write::write_all(&mut file, AGENT)?;
            release_image_pages(AGENT);
            let fd = OwnedFd::from(file);
            let seals =
                libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
            // SAFETY: fcntl(F_ADD_SEALS) on the memfd we own.
            cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) })?;
            Ok(fd)
        };
        make().map_err(|e| format!("cannot prepare the sandbox agent: {e}"))
    });
    made.as_ref().map_err(|e| io::Error::other(e.clone()))
}

/// Gives back the pages of `data`, a part of this program's read-only image, that reading it
/// mapped in (the agent is read once, into its memfd; its 300-odd KiB would otherwise count in
/// the backend's resident memory for good). Untouched, they are read from the program's file
/// again if `data` is ever read.
fn release_image_pages(data: &'static [u8]) {
    // SAFETY: sysconf has no memory arguments.
    let page = match usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }) {
        Ok(p) if p.is_power_of_two() => p,
        _ => return,
    };
    let start = (data.as_ptr() as usize).next_multiple_of(page);
    let end = (data.as_ptr() as usize + data.len()) & !(page - 1);
    if end > start {
        // SAFETY: the whole pages inside `data`, a read-only part of the program's image (a
        // private file mapping never written to): after MADV_DONTNEED they read back the same
        // bytes from the file, so `data` stays valid and unchanged.
        unsafe { libc::madvise(start as *mut c_void, end - start, libc::MADV_DONTNEED) };
    }
}

/// A descriptor copy numbered at least 10 (close-on-exec), so the agent's child can `dup2`
/// onto 0-3 without overwriting it.
fn dup_high(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC on a descriptor the caller keeps open.
    cvt(unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 10) }).map(owned)
}

/// A started agent.
#[derive(Debug)]
pub(crate) struct Agent {
    /// Its pid in the backend's PID namespace.
    pub pid: i32,
    /// A pidfd of it (signals without pid reuse races; readable once it exited).
    pub pidfd: OwnedFd,
    /// The backend's end of the control channel (non-blocking).
    pub channel: OwnedFd,
}

#[repr(C)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
}

/// Starts an agent: `clone3` into new PID, mount, UTS and IPC namespaces; the child (alone in
/// its brand-new PID namespace, where nothing can see it) joins the network namespace
/// `net` (made for it, with no process in it), resets its signal mask, puts `/dev/null` on
/// 0-2 and its channel end on 3, marks every other descriptor close-on-exec and executes the
/// sealed agent image at once. No other code of the backend runs in it.
pub(crate) fn spawn_agent(net: BorrowedFd<'_>) -> io::Result<Agent> {
    let image = dup_high(agent_image()?.as_raw_fd())?;
    let mut pair = [0 as c_int; 2];
    // SAFETY: socketpair fills the two-element array.
    cvt(unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            pair.as_mut_ptr(),
        )
    })?;
    let (ours, theirs) = (owned(pair[0]), owned(pair[1]));
    let theirs = dup_high(theirs.as_raw_fd())?;
    // the largest message must fit the send buffer (unix sockets queue on the sender)
    let size: c_int = (super::proto::MAX_MESSAGE * 2) as c_int;
    // SAFETY: setsockopt reads an int of the given size.
    cvt(unsafe {
        libc::setsockopt(
            ours.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUFFORCE,
            (&size as *const c_int).cast(),
            std::mem::size_of::<c_int>() as libc::socklen_t,
        )
    })?;
    set_nonblocking(ours.as_raw_fd())?;
    let devnull = super::open_raw(std::path::Path::new("/dev/null"), libc::O_RDWR)?;
    let devnull = dup_high(devnull.as_raw_fd())?;
    let arg0 = CString::from(c"superserve-agent");
    let argv: [*const libc::c_char; 2] = [arg0.as_ptr(), std::ptr::null()];
    let envp: [*const libc::c_char; 1] = [std::ptr::null()];
    let mut pidfd: c_int = -1;
    let args = CloneArgs {
        flags: AGENT_NAMESPACES | libc::CLONE_PIDFD as u64,
        pidfd: &mut pidfd as *mut c_int as u64,
        child_tid: 0,
        parent_tid: 0,
        exit_signal: libc::SIGCHLD as u64,
        stack: 0,
        stack_size: 0,
        tls: 0,
    };
    let (chan, null, img) = (theirs.as_raw_fd(), devnull.as_raw_fd(), image.as_raw_fd());
    let net = net.as_raw_fd();
    // SAFETY: clone3 without CLONE_VM: the child gets a copy of this process and, below, only
    // makes raw system calls on values prepared before the call (async-signal-safe), then
    // execs or exits. The parent just gets the pid and pidfd.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if pid == 0 {
        // SAFETY: in the child, see above.
        unsafe { agent_child(chan, null, img, net, &argv, &envp) }
    }
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Agent {
        pid: pid as i32,
        pidfd: owned(pidfd),
        channel: ours,
    })
}

/// The cloned child: becomes the agent.
///
/// # Safety
/// Only right after `clone3` in the child; every argument was prepared by the parent.
unsafe fn agent_child(
    chan: RawFd,
    devnull: RawFd,
    image: RawFd,
    net: RawFd,
    argv: &[*const libc::c_char; 2],
    envp: &[*const libc::c_char; 1],
) -> ! {
    // SAFETY: raw system calls on this process only.
    unsafe {
        if libc::setns(net, libc::CLONE_NEWNET) != 0 {
            libc::_exit(125);
        }
        let empty = [0u64; 16];
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            empty.as_ptr(),
            std::ptr::null_mut::<c_void>(),
            8usize,
        );
        if libc::dup2(devnull, 0) < 0
            || libc::dup2(devnull, 1) < 0
            || libc::dup2(devnull, 2) < 0
            || libc::dup2(chan, 3) < 0
        {
            libc::_exit(126);
        }
        // everything else closes at exec (the image must stay open until then)
        libc::syscall(
            libc::SYS_close_range,
            4u32,
            u32::MAX,
            4u32, /* CLOEXEC */
        );
        libc::syscall(
            libc::SYS_execveat,
            image,
            c"".as_ptr(),
            argv.as_ptr(),
            envp.as_ptr(),
            libc::AT_EMPTY_PATH,
        );
        libc::_exit(127)
    }
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor the caller owns.
    unsafe {
        let fl = cvt(libc::fcntl(fd, libc::F_GETFL))?;
        cvt(libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK)).map(drop)
    }
}

/// Sends one packet with `fds` attached (`SCM_RIGHTS`). Non-blocking: `WouldBlock` when the
/// channel is full.
pub(crate) fn send_packet(sock: RawFd, data: &[u8], fds: &[RawFd]) -> io::Result<()> {
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut c_void,
        iov_len: data.len(),
    };
    let fd_bytes = std::mem::size_of_val(fds);
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE(fd_bytes as u32) } as usize;
    let mut control = vec![0u64; space.div_ceil(8)];
    // SAFETY: a zeroed msghdr is valid; the pointers set below outlive the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: the control buffer holds one header plus `fds`, as CMSG_SPACE computed.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(fd_bytes as u32) as _;
            std::ptr::copy_nonoverlapping(fds.as_ptr().cast::<u8>(), libc::CMSG_DATA(c), fd_bytes);
        }
    }
    loop {
        // SAFETY: msghdr and its buffers are live for the call.
        let n = unsafe { libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) };
        if n >= 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Receives one packet into `buf`; `Ok(0)` at end of stream. Any descriptors sent along are
/// discarded (the kernel closes those that do not fit the absent control buffer).
pub(crate) fn recv_packet(sock: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: recv into a live buffer of the given length.
        let n = unsafe { libc::recv(sock, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Reaps an exited child by pidfd (`waitid(P_PIDFD, WNOHANG)`); `Ok(true)` once it is gone.
pub(crate) fn reap_pidfd(pidfd: &OwnedFd) -> io::Result<bool> {
    // SAFETY: a zeroed siginfo_t is valid for waitid to fill.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid on a pidfd we own, filling a local siginfo_t.
    let r = unsafe {
        libc::waitid(
            libc::P_PIDFD,
            pidfd.as_raw_fd() as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG,
        )
    };
    if r != 0 {
        let e = io::Error::last_os_error();
        // not our child any more (already reaped): gone
        return if e.raw_os_error() == Some(libc::ECHILD) {
            Ok(true)
        } else {
            Err(e)
        };
    }
    // SAFETY: si_pid is valid to read after waitid filled the struct.
    Ok(unsafe { info.si_pid() } != 0)
}

/// A pipe for a command's stream: `(read end, write end)`, both close-on-exec; the backend's
/// end (`ours_read` says which) is non-blocking.
pub(crate) fn stream_pipe(ours_read: bool) -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as c_int; 2];
    // SAFETY: pipe2 fills the two-element array.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    let (r, w) = (owned(fds[0]), owned(fds[1]));
    set_nonblocking(if ours_read {
        r.as_raw_fd()
    } else {
        w.as_raw_fd()
    })?;
    Ok((r, w))
}

/// Registers a descriptor with the tokio reactor (the caller is inside a runtime).
pub(crate) fn async_fd(fd: OwnedFd) -> io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    // SAFETY: the `OwnedFd` moves into the `AsyncFd`, which is its only owner: it stays open
    // and refers to the same open file description until the `AsyncFd` is dropped, and
    // `OwnedFd::as_raw_fd` always returns the same number.
    unsafe { tokio::io::unix::AsyncFd::register(fd) }.map_err(|e| e.into_parts().1)
}
