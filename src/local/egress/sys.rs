//! The system calls of the egress proxy that neither the standard library nor tokio wrap, each
//! behind a safe function. This is the only place in `egress` with `unsafe`.

#![allow(unsafe_code)]

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// Sets `SO_LINGER` to zero, so that closing the socket sends a reset.
pub(crate) fn set_linger_zero(sock: BorrowedFd<'_>) -> io::Result<()> {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt reads exactly `size_of::<linger>()` bytes from a live `linger`; the
    // descriptor is borrowed for the call.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The destination a connection redirected by netfilter was addressed to (`SO_ORIGINAL_DST`);
/// `None` for a connection that was not redirected.
pub(crate) fn original_dst(sock: BorrowedFd<'_>) -> Option<SocketAddrV4> {
    const SO_ORIGINAL_DST: libc::c_int = 80;
    // SAFETY: sockaddr_in is plain data; all-zero is a valid value.
    let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `addr`, which lives across the call.
    let r = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_IP,
            SO_ORIGINAL_DST,
            (&mut addr as *mut libc::sockaddr_in).cast(),
            &mut len,
        )
    };
    if r != 0 || addr.sin_family != libc::AF_INET as libc::sa_family_t {
        return None;
    }
    let ip = Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr));
    Some(SocketAddrV4::new(ip, u16::from_be(addr.sin_port)))
}

/// Moves the calling thread into the network namespace `ns`.
pub(crate) fn enter_net_namespace(ns: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: setns changes the network namespace of the calling thread only; the descriptor
    // is borrowed for the call.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Brings the loopback device of the calling thread's network namespace up (`ip link set lo
/// up`, by ioctl).
pub(crate) fn loopback_up() -> io::Result<()> {
    // SAFETY: socket() has no memory arguments; its result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by socket() and is owned by nothing else.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (i, b) in b"lo".iter().enumerate() {
        req.ifr_name[i] = *b as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads the NUL-terminated name and writes the flags of `req`.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the union member written by SIOCGIFFLAGS is ifru_flags.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: SIOCSIFFLAGS reads the name and flags of `req`.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The IPv4 addresses of this machine's interfaces with their netmasks (`getifaddrs`).
pub(crate) fn interface_addrs() -> Vec<(Ipv4Addr, Ipv4Addr)> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs stores a list it allocated in `head` on success.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return out;
    }
    let v4 = |sa: *const libc::sockaddr| -> Option<Ipv4Addr> {
        // SAFETY: a non-null sockaddr of the list is valid while the list lives; it is read as
        // sockaddr_in only when its family says AF_INET.
        unsafe {
            if sa.is_null() || i32::from((*sa).sa_family) != libc::AF_INET {
                return None;
            }
            let sin = &*(sa as *const libc::sockaddr_in);
            Some(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)))
        }
    };
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list returned by getifaddrs, not yet freed.
        let node = unsafe { &*cur };
        if let Some(addr) = v4(node.ifa_addr) {
            out.push((addr, v4(node.ifa_netmask).unwrap_or(Ipv4Addr::BROADCAST)));
        }
        cur = node.ifa_next;
    }
    // SAFETY: frees the list getifaddrs allocated, once; no reference into it outlives this.
    unsafe { libc::freeifaddrs(head) };
    out
}

pub(crate) use super::super::sys::{pipe, splice};

/// Shuts down the write side of a socket.
pub(crate) fn shutdown_write(sock: BorrowedFd<'_>) {
    // SAFETY: shutdown has no memory arguments; the descriptor is borrowed for the call.
    unsafe { libc::shutdown(sock.as_raw_fd(), libc::SHUT_WR) };
}
