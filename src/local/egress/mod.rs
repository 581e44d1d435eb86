//! Sandbox networking: every sandbox gets its own network namespace whose only way out is the
//! backend's egress proxy.
//!
//! Inside the namespace there is no link to the outside at all: loopback carries an extra
//! address ([`SANDBOX_ADDR`]) and the default route points at it, and an nftables `nat output`
//! rule redirects every TCP connection to a non-loopback address to the proxy's listener, and
//! every DNS query to the backend's DNS responder. Both sockets are created inside the
//! namespace but owned by the backend, which makes the outbound connections from the host's
//! namespace. Sandbox processes lack `CAP_NET_ADMIN`; even if they removed the rules, packets
//! would only loop back (fail closed).
//!
//! Per connection the proxy reads the original destination (`SO_ORIGINAL_DST`), names it from
//! the sandbox's own DNS answers, applies the sandbox's rules ([`policy`]), logs the connection
//! in the network log, and either refuses it (TCP reset) or relays it, counting bytes. Plain
//! HTTP to a host that one of the sandbox's secrets covers is relayed request by request
//! ([`broker`]): stand-in tokens are swapped for the real credential, or refused when revoked.

pub(crate) mod broker;
pub(crate) mod dns;
pub(crate) mod policy;
mod splice;
pub(crate) mod tls;

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::AbortHandle;

use super::app::App;
use super::fault::lock;
use super::store::{self, NetworkEventRow};
use super::time::now_ns;
use policy::{Cidr4, Verdict};

/// The sandbox's own (non-loopback) address, on its loopback device.
pub(crate) const SANDBOX_ADDR: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 2);
/// The proxy's port inside each sandbox namespace (on 127.0.0.1).
const PROXY_PORT: u16 = 15001;
/// Upstream connect timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// DNS answers' TTL.
const DNS_TTL: u32 = 30;
/// How long the list of the host's own addresses is reused.
const HOST_ADDRS_TTL: Duration = Duration::from_secs(2);
/// Most remembered (address → name) pairs per sandbox.
const MAX_NAMES: usize = 4096;

/// The operator's egress settings (from the server builder).
#[derive(Clone, Debug, Default)]
pub(crate) struct EgressSettings {
    /// Non-public destinations sandboxes may reach anyway (their own rules still apply).
    pub allow_private: Vec<Cidr4>,
    /// Names the DNS responder answers without asking the host's resolver.
    pub hosts: HashMap<String, Vec<Ipv4Addr>>,
    /// Extra PEM roots trusted for intercepted upstreams (besides the host's trust store).
    pub upstream_roots: Vec<Vec<u8>>,
}

/// The host's CA bundle (Debian / Fedora locations).
const HOST_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
];

/// The tools that configure a namespace (`ip`, `nft`), when the host has them.
#[derive(Debug)]
struct Tools {
    ip: PathBuf,
    nft: PathBuf,
}

fn find_tool(name: &str) -> Option<PathBuf> {
    ["/usr/sbin", "/sbin", "/usr/bin", "/bin", "/usr/local/sbin"]
        .iter()
        .map(|d| PathBuf::from(d).join(name))
        .find(|p| p.is_file())
}

/// The egress service shared by all sandboxes.
pub(crate) struct Egress {
    allow_private: Vec<Cidr4>,
    hosts: RwLock<HashMap<String, Vec<Ipv4Addr>>>,
    tools: Result<Tools, String>,
    mitm: Result<tls::Mitm, String>,
    host_addrs: Mutex<(Option<std::time::Instant>, Vec<Ipv4Addr>)>,
    app: OnceLock<Weak<App>>,
}

impl std::fmt::Debug for Egress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Egress")
            .field("allow_private", &self.allow_private)
            .field("available", &self.tools.is_ok())
            .finish_non_exhaustive()
    }
}

/// A sandbox's network: the namespace plus the proxy and DNS tasks serving it (aborted on drop).
pub(crate) struct SandboxNet {
    #[allow(dead_code)] // held: the namespace lives as long as its proxy
    pub ns: OwnedFd,
    tasks: Mutex<Vec<AbortHandle>>,
}

impl Drop for SandboxNet {
    fn drop(&mut self) {
        for t in lock(&self.tasks).drain(..) {
            t.abort();
        }
    }
}

/// What the proxy and DNS tasks of one sandbox share.
struct SandboxCtx {
    id: String,
    /// Address → the name the sandbox resolved it from (most recent).
    names: Mutex<HashMap<Ipv4Addr, String>>,
}

impl Egress {
    /// The service; without `ip` and `nft` on the host, sandboxes get no egress at all.
    pub(crate) fn new(settings: EgressSettings) -> Egress {
        let tools = match (find_tool("ip"), find_tool("nft")) {
            (Some(ip), Some(nft)) => Ok(Tools { ip, nft }),
            (ip, nft) => Err(format!(
                "sandboxes have no network egress: {} not found (install iproute2 and nftables)",
                [("ip", ip.is_none()), ("nft", nft.is_none())]
                    .iter()
                    .filter(|(_, missing)| *missing)
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(" and ")
            )),
        };
        let mut roots: Vec<Vec<u8>> = HOST_BUNDLES
            .iter()
            .filter_map(|p| std::fs::read(p).ok())
            .collect();
        roots.extend(settings.upstream_roots);
        let mitm = tls::Mitm::new(&roots).map_err(|e| format!("no TLS interception: {e}"));
        Egress {
            allow_private: settings.allow_private,
            hosts: RwLock::new(settings.hosts),
            tools,
            mitm,
            host_addrs: Mutex::new((None, Vec::new())),
            app: OnceLock::new(),
        }
    }

    /// The interception CA's certificate (PEM) for the sandboxes' trust store.
    pub(crate) fn ca_pem(&self) -> Option<&str> {
        self.mitm.as_ref().ok().map(tls::Mitm::ca_pem)
    }

    /// Why egress is unavailable, if it is.
    pub(crate) fn unavailable(&self) -> Option<&str> {
        self.tools.as_ref().err().map(String::as_str)
    }

    /// Connects the service to the backend (once, right after the backend is built).
    pub(crate) fn set_app(&self, app: Weak<App>) {
        let _ = self.app.set(app);
    }

    fn app(&self) -> Option<Arc<App>> {
        self.app.get().and_then(Weak::upgrade)
    }

    /// Adds (or replaces) a name the sandboxes' DNS answers with `addrs`.
    pub(crate) fn set_host(&self, name: &str, addrs: Vec<Ipv4Addr>) {
        let mut hosts = self.hosts.write().unwrap_or_else(|e| e.into_inner());
        hosts.insert(name.trim_end_matches('.').to_ascii_lowercase(), addrs);
    }

    /// Sets up the network namespace `ns` of sandbox `id` (loopback up; with the tools, the
    /// route and redirect rules) and starts its proxy and DNS tasks.
    pub(crate) async fn attach(self: &Arc<Self>, id: &str, ns: OwnedFd) -> io::Result<SandboxNet> {
        let ns_fd = ns.try_clone()?;
        let tools = self
            .tools
            .as_ref()
            .ok()
            .map(|t| (t.ip.clone(), t.nft.clone()));
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("superserve-netns".into())
            .spawn(move || {
                let _ = tx.send(configure(&ns_fd, tools));
            })?;
        let sockets = rx.await.map_err(io::Error::other)??;
        let net = SandboxNet {
            ns,
            tasks: Mutex::new(Vec::new()),
        };
        if let Some((tcp, udp)) = sockets {
            let ctx = Arc::new(SandboxCtx {
                id: id.to_owned(),
                names: Mutex::new(HashMap::new()),
            });
            let tcp = TcpListener::from_std(tcp)?;
            let udp = UdpSocket::from_std(udp)?;
            let me = self.clone();
            let c = ctx.clone();
            let proxy = tokio::spawn(async move { me.serve_proxy(c, tcp).await });
            let me = self.clone();
            let dns = tokio::spawn(async move { me.serve_dns(ctx, udp).await });
            lock(&net.tasks).extend([proxy.abort_handle(), dns.abort_handle()]);
        }
        Ok(net)
    }

    async fn serve_proxy(self: Arc<Self>, ctx: Arc<SandboxCtx>, listener: TcpListener) {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let me = self.clone();
            let ctx = ctx.clone();
            tokio::spawn(async move { me.handle(ctx, client).await });
        }
    }

    async fn serve_dns(self: Arc<Self>, ctx: Arc<SandboxCtx>, socket: UdpSocket) {
        let socket = Arc::new(socket);
        let mut buf = vec![0u8; 1500];
        loop {
            let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
                continue;
            };
            let pkt = buf[..n].to_vec();
            let me = self.clone();
            let ctx = ctx.clone();
            let socket = socket.clone();
            tokio::spawn(async move {
                if let Some(reply) = me.answer_dns(&ctx, &pkt).await {
                    let _ = socket.send_to(&reply, peer).await;
                }
            });
        }
    }

    async fn answer_dns(&self, ctx: &SandboxCtx, pkt: &[u8]) -> Option<Vec<u8>> {
        let q = match dns::parse(pkt) {
            Ok(q) => q,
            Err(e) => return dns::error_response(&e),
        };
        if !dns::wants_a(&q) {
            return Some(dns::respond(&q, &dns::Answer::Addrs(Vec::new()), DNS_TTL));
        }
        let answer = self.resolve(&q.name).await;
        if let dns::Answer::Addrs(addrs) = &answer {
            let mut names = lock(&ctx.names);
            if names.len() > MAX_NAMES {
                names.clear();
            }
            for a in addrs {
                names.insert(*a, q.name.clone());
            }
        }
        Some(dns::respond(&q, &answer, DNS_TTL))
    }

    async fn resolve(&self, name: &str) -> dns::Answer {
        let fixed = {
            let hosts = self.hosts.read().unwrap_or_else(|e| e.into_inner());
            hosts.get(name).cloned()
        };
        if let Some(addrs) = fixed {
            return dns::Answer::Addrs(addrs);
        }
        if name.is_empty() || name == "localhost" {
            return dns::Answer::NxDomain;
        }
        let lookup = tokio::net::lookup_host((name.to_owned(), 0));
        match tokio::time::timeout(Duration::from_secs(5), lookup).await {
            Ok(Ok(addrs)) => {
                let mut v4: Vec<Ipv4Addr> = addrs
                    .filter_map(|a| match a {
                        SocketAddr::V4(a) => Some(*a.ip()),
                        SocketAddr::V6(_) => None,
                    })
                    .collect();
                v4.dedup();
                dns::Answer::Addrs(v4)
            }
            Ok(Err(_)) => dns::Answer::NxDomain,
            Err(_) => dns::Answer::ServFail,
        }
    }

    /// The IPv4 addresses of the host's interfaces (refreshed at most every few seconds).
    fn host_addrs(&self) -> Vec<Ipv4Addr> {
        let mut cache = lock(&self.host_addrs);
        if cache.0.map_or(true, |t| t.elapsed() > HOST_ADDRS_TTL) {
            *cache = (Some(std::time::Instant::now()), local_ipv4_addrs());
        }
        cache.1.clone()
    }

    async fn log(&self, app: &App, sandbox_id: &str, row: NetworkEventRow) -> Option<i64> {
        let id = sandbox_id.to_owned();
        app.db
            .call(move |c| store::insert_network_event(c, &id, &row))
            .await
            .ok()
    }

    async fn handle(self: Arc<Self>, ctx: Arc<SandboxCtx>, client: TcpStream) {
        let Some(dst) = original_dst(&client) else {
            return; // a direct connection to the proxy port: not redirected traffic
        };
        let Some(app) = self.app() else { return };
        let Some(entry) = app.get(&ctx.id) else {
            return;
        };
        // only what the decision needs, not a copy of the whole record
        let (network, bindings) = entry.with(|r| (r.network.clone(), r.secrets.clone()));
        let host = lock(&ctx.names).get(dst.ip()).cloned();
        let mut verdict = policy::decide(
            network.as_ref(),
            &self.allow_private,
            host.as_deref(),
            *dst.ip(),
        );
        // the machine's own addresses (a public one included) would reach the host's services
        if verdict == Verdict::Allowed
            && !self.allow_private.iter().any(|c| c.contains(*dst.ip()))
            && self.host_addrs().contains(dst.ip())
        {
            verdict = Verdict::Blocked(format!("host:{}", dst.ip()));
        }
        let mut row = NetworkEventRow {
            ts_ns: now_ns(),
            kind: "connection".to_owned(),
            host: host.clone(),
            dst_ip: Some(dst.ip().to_string()),
            dst_port: Some(i64::from(dst.port())),
            ..Default::default()
        };
        if let Verdict::Blocked(rule) = verdict {
            row.verdict = Some("blocked".into());
            row.match_rule = Some(rule);
            self.log(&app, &ctx.id, row).await;
            reset(client);
            return;
        }
        let upstream =
            match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(SocketAddr::V4(dst)))
                .await
            {
                Ok(Ok(s)) => s,
                _ => {
                    row.verdict = Some("failed".into());
                    self.log(&app, &ctx.id, row).await;
                    reset(client);
                    return;
                }
            };
        let _ = upstream.set_nodelay(true);
        let _ = client.set_nodelay(true);
        row.verdict = Some("allowed".into());
        row.bytes_sent = Some(0);
        row.bytes_recv = Some(0);
        // logged off the relay's path: the row (with its start time) is written while the
        // first bytes flow, and gets its byte counts when the connection ends
        let logged = {
            let app = app.clone();
            let id = ctx.id.clone();
            tokio::spawn(async move {
                app.db
                    .call(move |c| store::insert_network_event(c, &id, &row))
                    .await
                    .ok()
            })
        };
        let counters = Arc::new(Counters::default());
        let client = Counted {
            inner: client,
            counters: counters.clone(),
        };
        let brokered = host
            .as_deref()
            .filter(|h| broker::covers(&bindings, h))
            .map(str::to_owned);
        let first = match &brokered {
            Some(_) => first_bytes(&client.inner).await,
            None => FirstBytes::Other,
        };
        match (brokered, first, self.mitm.as_ref()) {
            (Some(h), FirstBytes::Http, _) => {
                broker::relay(app.clone(), ctx.id.clone(), h, client, upstream).await;
            }
            (Some(h), FirstBytes::Tls, Ok(mitm)) => {
                if let Ok(tls_client) = mitm.accept(&h, client).await {
                    match mitm.connect(&h, upstream).await {
                        Ok(tls_upstream) => {
                            broker::relay(app.clone(), ctx.id.clone(), h, tls_client, tls_upstream)
                                .await;
                        }
                        Err(_) => {
                            broker::refuse_tls(tls_client, &h).await;
                        }
                    }
                }
            }
            // anything else to a covered host is relayed as is: its stand-ins are worthless
            _ => {
                let _ =
                    splice::relay(&client.inner, &upstream, &counters.sent, &counters.recv).await;
            }
        }
        let (sent, recv) = (
            counters.sent.load(Ordering::Relaxed),
            counters.recv.load(Ordering::Relaxed),
        );
        if let Ok(Some(row_id)) = logged.await {
            let _ = app
                .db
                .call(move |c| store::set_connection_bytes(c, row_id, sent, recv))
                .await;
        }
    }
}

/// Byte counts of one relayed connection, from the sandbox's point of view.
#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    recv: AtomicU64,
}

/// The sandbox side of a relayed connection, counting what passes.
pub(crate) struct Counted {
    inner: TcpStream,
    counters: Arc<Counters>,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        self.counters.sent.fetch_add(n as u64, Ordering::Relaxed);
        r
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            self.counters.recv.fetch_add(*n as u64, Ordering::Relaxed);
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// What a client sent first on a connection to a brokered host.
enum FirstBytes {
    /// An HTTP/1 request line.
    Http,
    /// A TLS handshake record.
    Tls,
    /// Anything else, or nothing within a few seconds.
    Other,
}

async fn first_bytes(s: &TcpStream) -> FirstBytes {
    let mut first = [0u8; 8];
    match tokio::time::timeout(Duration::from_secs(5), s.peek(&mut first)).await {
        Ok(Ok(n)) if n > 0 => {
            if first[0] == 0x16 {
                return FirstBytes::Tls;
            }
            let method = match first[..n].iter().position(|b| *b == b' ') {
                Some(end) => &first[..end],
                None => &first[..n],
            };
            if !method.is_empty() && method.iter().all(u8::is_ascii_uppercase) {
                FirstBytes::Http
            } else {
                FirstBytes::Other
            }
        }
        _ => FirstBytes::Other,
    }
}

/// Closes a connection with a reset (`SO_LINGER` 0), so the sandbox sees the refusal at once.
fn reset(s: TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt reads a valid `linger` of the given size.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    drop(s);
}

/// The destination a redirected connection was addressed to.
fn original_dst(s: &TcpStream) -> Option<SocketAddrV4> {
    const SO_ORIGINAL_DST: libc::c_int = 80;
    // SAFETY: getsockopt writes at most `len` bytes into the zeroed sockaddr_in.
    unsafe {
        let mut addr: libc::sockaddr_in = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let r = libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_IP,
            SO_ORIGINAL_DST,
            (&mut addr as *mut libc::sockaddr_in).cast(),
            &mut len,
        );
        if r != 0 || addr.sin_family != libc::AF_INET as libc::sa_family_t {
            return None;
        }
        let ip = Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr));
        let port = u16::from_be(addr.sin_port);
        // a connection straight to the proxy port has itself as "original" destination
        (ip != Ipv4Addr::LOCALHOST).then_some(SocketAddrV4::new(ip, port))
    }
}

/// nftables rules of every sandbox namespace.
const RULES: &str = "table ip superserve {
  chain egress {
    type nat hook output priority -100; policy accept;
    ip daddr != 127.0.0.0/8 meta l4proto tcp redirect to :15001
    ip daddr != 127.0.0.0/8 udp dport 53 redirect to :53
  }
}
";

/// Runs on a thread of its own (it joins the namespace): brings loopback up and, with the
/// tools, adds the sandbox address, the default route and the redirect rules, then binds the
/// proxy and DNS sockets inside the namespace.
fn configure(
    ns: &OwnedFd,
    tools: Option<(PathBuf, PathBuf)>,
) -> io::Result<Option<(std::net::TcpListener, std::net::UdpSocket)>> {
    // SAFETY: changes the network namespace of this short-lived thread only.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    loopback_up()?;
    let Some((ip, nft)) = tools else {
        return Ok(None);
    };
    run_with_stdin(
        &ip,
        &["-batch", "-"],
        &format!(
            "addr add {SANDBOX_ADDR}/32 dev lo\nroute add default dev lo src {SANDBOX_ADDR}\n"
        ),
    )?;
    run_with_stdin(&nft, &["-f", "-"], RULES)?;
    let tcp = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, PROXY_PORT))?;
    tcp.set_nonblocking(true)?;
    let udp = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 53))?;
    udp.set_nonblocking(true)?;
    Ok(Some((tcp, udp)))
}

fn run_with_stdin(program: &std::path::Path, args: &[&str], input: &str) -> io::Result<()> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "{} failed ({}): {}",
            program.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// `ip link set lo up`, by ioctl.
fn loopback_up() -> io::Result<()> {
    // SAFETY: plain socket + ioctl calls on a zeroed ifreq naming "lo"; the fd is closed by
    // OwnedFd.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let sock = <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd);
        let mut req: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo".iter().enumerate() {
            req.ifr_name[i] = *b as libc::c_char;
        }
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err(io::Error::last_os_error());
        }
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The IPv4 addresses of this machine's interfaces (`getifaddrs`).
fn local_ipv4_addrs() -> Vec<Ipv4Addr> {
    let mut out = Vec::new();
    // SAFETY: getifaddrs allocates a list that is walked read-only and freed once.
    unsafe {
        let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
        if libc::getifaddrs(&mut head) != 0 {
            return out;
        }
        let mut cur = head;
        while !cur.is_null() {
            let addr = (*cur).ifa_addr;
            if !addr.is_null() && i32::from((*addr).sa_family) == libc::AF_INET {
                let sin = &*(addr as *const libc::sockaddr_in);
                out.push(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)));
            }
            cur = (*cur).ifa_next;
        }
        libc::freeifaddrs(head);
    }
    out
}
