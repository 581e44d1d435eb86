//! Connections into a sandbox's network namespace.
//!
//! A socket belongs to the network namespace of the thread that created it, for its whole
//! life. One thread of the backend ("superserve-ingress") creates the sockets: per request it
//! enters the sandbox's namespace, creates the socket, and returns to the backend's own
//! namespace, so it never keeps a sandbox's namespace alive. The socket is then connected from
//! any thread to the loopback address inside the sandbox, which reaches apps bound to
//! `127.0.0.1` (or `::1`) as well as those bound to every address.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{mpsc, Mutex};
use std::time::Duration;

use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::oneshot;

use super::super::egress::sys::enter_net_namespace;
use super::super::egress::PROXY_PORT as EGRESS_PROXY_PORT;
use super::super::fault::lock;
use super::sys;

/// How long a connection to an app inside a sandbox may take (a loopback connection is
/// answered at once unless the app's accept queue is full).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

struct Job {
    ns: OwnedFd,
    v6: bool,
    reply: oneshot::Sender<io::Result<OwnedFd>>,
}

/// Creates sockets inside sandboxes' network namespaces (started on first use; a thread
/// that could not return to its own namespace ends and is replaced).
#[derive(Default)]
pub(crate) struct Dialer {
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
}

/// Why a connection to an app in a sandbox failed.
#[derive(Debug)]
pub(crate) enum DialError {
    /// Nothing listens on the port (on IPv4 or IPv6 loopback).
    Refused,
    /// The app did not accept the connection in time.
    TimedOut,
    /// The backend could not make the connection.
    Io(io::Error),
}

impl Dialer {
    fn submit(&self, job: Job) -> io::Result<()> {
        let mut jobs = lock(&self.jobs);
        let job = match jobs.as_ref() {
            Some(tx) => match tx.send(job) {
                Ok(()) => return Ok(()),
                Err(mpsc::SendError(job)) => job,
            },
            None => job,
        };
        let (tx, rx) = mpsc::channel::<Job>();
        let home = std::fs::File::open("/proc/thread-self/ns/net")?;
        std::thread::Builder::new()
            .name("superserve-ingress".into())
            .stack_size(64 * 1024)
            .spawn(move || worker(OwnedFd::from(home), rx))?;
        tx.send(job)
            .map_err(|_| io::Error::other("the ingress thread exited"))?;
        *jobs = Some(tx);
        Ok(())
    }

    /// A new socket inside the network namespace `ns`.
    async fn socket(&self, ns: BorrowedFd<'_>, v6: bool) -> io::Result<OwnedFd> {
        let (tx, rx) = oneshot::channel();
        self.submit(Job {
            ns: ns.try_clone_to_owned()?,
            v6,
            reply: tx,
        })?;
        rx.await
            .map_err(|_| io::Error::other("the ingress thread exited"))?
    }

    /// Connects to `port` on the loopback address inside the network namespace `ns`: IPv4
    /// first, then IPv6 when nothing listens on IPv4. The port of the backend's egress
    /// listener in the namespace counts as one nobody listens on.
    pub(crate) async fn connect(
        &self,
        ns: BorrowedFd<'_>,
        port: u16,
    ) -> Result<TcpStream, DialError> {
        // the backend's own egress listener lives there, never an app of the sandbox
        if port == EGRESS_PROXY_PORT {
            return Err(DialError::Refused);
        }
        let mut last = DialError::Refused;
        for v6 in [false, true] {
            let fd = self.socket(ns, v6).await.map_err(DialError::Io)?;
            let socket = TcpSocket::from_std_stream(std::net::TcpStream::from(fd));
            let addr = loopback(v6, port);
            match tokio::time::timeout(CONNECT_TIMEOUT, socket.connect(addr)).await {
                Ok(Ok(stream)) => {
                    let _ = stream.set_nodelay(true);
                    return Ok(stream);
                }
                Ok(Err(e)) if refused(&e) => last = DialError::Refused,
                Ok(Err(e)) => return Err(DialError::Io(e)),
                Err(_) => last = DialError::TimedOut,
            }
        }
        Err(last)
    }
}

fn loopback(v6: bool, port: u16) -> SocketAddr {
    if v6 {
        SocketAddr::from((Ipv6Addr::LOCALHOST, port))
    } else {
        SocketAddr::from((Ipv4Addr::LOCALHOST, port))
    }
}

fn refused(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ECONNREFUSED | libc::EADDRNOTAVAIL | libc::ENETUNREACH | libc::EAFNOSUPPORT)
    )
}

/// The ingress thread: serves jobs until the dialer is dropped, or until it could not
/// return to its own namespace (then it ends, and the dialer starts another).
fn worker(home: OwnedFd, jobs: mpsc::Receiver<Job>) {
    while let Ok(job) = jobs.recv() {
        let made = enter_net_namespace(job.ns.as_fd()).and_then(|()| sys::stream_socket(job.v6));
        drop(job.ns);
        let back = enter_net_namespace(home.as_fd());
        let stuck = back.is_err();
        let result = match back {
            Ok(()) => made,
            // a socket made here now could be in the wrong namespace: give up this thread
            Err(e) => Err(io::Error::other(format!(
                "cannot return to the backend's network namespace: {e}"
            ))),
        };
        let _ = job.reply.send(result);
        if stuck {
            return;
        }
    }
}
