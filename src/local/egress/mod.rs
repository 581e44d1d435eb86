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
mod netlink;
pub(crate) mod policy;
mod splice;
pub(crate) mod sys;
pub(crate) mod tls;

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsFd, OwnedFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio::task::AbortHandle;

use super::fault::lock;
use super::secrets::SecretLookup;
use super::spares::Spares;
use super::store::{self, Db, NetworkEventRow};
use super::time::now_ns;
pub(crate) use policy::SandboxPolicy;
use policy::{Cidr4, HostNetworks, Verdict};

/// The sandbox's own (non-loopback) address, on its loopback device.
pub(crate) const SANDBOX_ADDR: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 2);
/// The proxy's port inside each sandbox namespace (on 127.0.0.1).
pub(crate) const PROXY_PORT: u16 = 15001;
/// Upstream connect timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// DNS answers' TTL.
const DNS_TTL: u32 = 30;
/// How long the list of the host's own addresses and networks is reused.
const HOST_ADDRS_TTL: Duration = Duration::from_secs(2);
/// Most addresses with remembered names per sandbox.
const MAX_NAMES: usize = 4096;
/// Most names remembered per address (several names can share one address).
const NAMES_PER_ADDR: usize = 8;
/// A refused lookup of the same name again within this time is not logged again (a program
/// asks for `A` and `AAAA` at once, and retries).
const DNS_LOG_QUIET: Duration = Duration::from_secs(1);

/// The operator's egress settings (from the server builder).
#[derive(Clone, Debug, Default)]
pub(crate) struct EgressSettings {
    /// Non-public destinations sandboxes may reach anyway (their own rules still apply).
    pub allow_private: Vec<Cidr4>,
    /// Names the DNS responder answers without asking the host's resolver.
    pub hosts: HashMap<String, Vec<Ipv4Addr>>,
    /// Extra PEM roots trusted for intercepted upstreams (besides the host's trust store).
    pub upstream_roots: Vec<Vec<u8>>,
    /// Most connections relayed at once for all sandboxes together (each holds six of the
    /// backend's descriptors); a sandbox gets a quarter of them (at least 4).
    pub max_connections: usize,
}

/// Most DNS lookups a sandbox has in progress at once (each may hold a resolver thread);
/// further queries are answered `SERVFAIL` at once.
const MAX_LOOKUPS: usize = 32;

/// The host's CA bundle (Debian / Fedora locations).
const HOST_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
];

/// The egress service shared by all sandboxes.
pub(crate) struct Egress {
    allow_private: Vec<Cidr4>,
    hosts: RwLock<HashMap<String, Vec<Ipv4Addr>>>,
    /// Whether sandboxes get egress (the kernel can configure their namespaces), or why not.
    available: Result<(), String>,
    mitm: Result<tls::Mitm, String>,
    host_networks: Mutex<(Option<std::time::Instant>, Arc<HostNetworks>)>,
    /// Where connections and secret-bearing requests are logged.
    db: Db,
    /// The broker's access to secret values and the audit log.
    secrets: SecretLookup,
    /// Connections relayed now, all sandboxes together.
    relays: Arc<Semaphore>,
    /// The share of one sandbox.
    relays_per_sandbox: usize,
    /// Network namespaces configured ahead of time.
    spares: Spares<PreparedNet>,
}

/// Network namespaces kept configured ahead of time (making one waits on the kernel).
const SPARE_NAMESPACES: usize = 2;

/// A configured network namespace no sandbox uses yet: loopback up and, with egress, the
/// sandbox address, route and redirect rules, and the bound (idle) proxy and DNS sockets.
/// No process is in it: it lives as long as this descriptor, or the agent that joins it.
pub(crate) struct PreparedNet {
    ns: OwnedFd,
    sockets: Option<(std::net::TcpListener, std::net::UdpSocket)>,
}

impl PreparedNet {
    /// The namespace, for the sandbox's agent to join.
    pub(crate) fn ns(&self) -> std::os::fd::BorrowedFd<'_> {
        self.ns.as_fd()
    }
}

/// A network namespace for a new sandbox: a spare, or one being configured now.
pub(crate) enum NetTicket {
    Ready(PreparedNet),
    Pending(tokio::sync::oneshot::Receiver<io::Result<PreparedNet>>),
}

impl NetTicket {
    /// The namespace, once configured.
    pub(crate) async fn wait(self) -> io::Result<PreparedNet> {
        match self {
            NetTicket::Ready(n) => Ok(n),
            NetTicket::Pending(rx) => rx
                .await
                .map_err(|_| io::Error::other("the namespace's thread ended"))?,
        }
    }
}

impl std::fmt::Debug for Egress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Egress")
            .field("allow_private", &self.allow_private)
            .field("available", &self.available.is_ok())
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
    policy: Weak<dyn SandboxPolicy>,
    names: Mutex<Names>,
    /// The last refused lookup that was logged, and when.
    last_refused: Mutex<Option<(String, std::time::Instant)>>,
    /// Connections of this sandbox relayed now.
    relays: Arc<Semaphore>,
    /// Lookups of this sandbox in progress.
    lookups: Arc<Semaphore>,
    /// When a connection over the limit was last logged.
    last_over_limit: Mutex<Option<std::time::Instant>>,
}

/// The names a sandbox resolved, by address: an address reached under one of them is
/// "resolved for" that name (what domain rules and the secret broker go by).
#[derive(Default)]
struct Names {
    by_addr: HashMap<Ipv4Addr, Vec<String>>,
}

impl Names {
    /// Remembers that `name` resolved to `addrs`.
    fn record(&mut self, name: &str, addrs: &[Ipv4Addr]) {
        if self.by_addr.len() > MAX_NAMES {
            self.by_addr.clear();
        }
        for a in addrs {
            let names = self.by_addr.entry(*a).or_default();
            names.retain(|n| n != name);
            if names.len() >= NAMES_PER_ADDR {
                names.remove(0);
            }
            names.push(name.to_owned());
        }
    }

    /// The names resolved to `addr`, most recent last.
    fn of(&self, addr: Ipv4Addr) -> Vec<String> {
        self.by_addr.get(&addr).cloned().unwrap_or_default()
    }
}

impl Egress {
    /// The service, logging to `db` and brokering the secrets of `secrets`; on a kernel that
    /// cannot configure a namespace (no nf_tables NAT), sandboxes get no egress at all.
    pub(crate) fn new(settings: EgressSettings, db: Db, secrets: SecretLookup) -> Egress {
        // one namespace configured now tells whether the kernel can (nf_tables, NAT)
        let available = prepare(true).map(drop).map_err(|e| {
            format!("sandboxes have no network egress: cannot configure a namespace: {e}")
        });
        let mut roots: Vec<Vec<u8>> = HOST_BUNDLES
            .iter()
            .filter_map(|p| std::fs::read(p).ok())
            .collect();
        roots.extend(settings.upstream_roots);
        let mitm = tls::Mitm::new(&roots).map_err(|e| format!("no TLS interception: {e}"));
        let egress = available.is_ok();
        let spares = Spares::new("superserve-netns", SPARE_NAMESPACES, move || {
            prepare(egress)
        });
        Egress {
            allow_private: settings.allow_private,
            hosts: RwLock::new(settings.hosts),
            available,
            mitm,
            host_networks: Mutex::new((None, Arc::default())),
            db,
            secrets,
            relays: Arc::new(Semaphore::new(settings.max_connections.max(1))),
            relays_per_sandbox: (settings.max_connections / 4).max(4),
            spares,
        }
    }

    /// The interception CA's certificate (PEM) for the sandboxes' trust store.
    pub(crate) fn ca_pem(&self) -> Option<&str> {
        self.mitm.as_ref().ok().map(tls::Mitm::ca_pem)
    }

    /// Why egress is unavailable, if it is.
    pub(crate) fn unavailable(&self) -> Option<&str> {
        self.available.as_ref().err().map(String::as_str)
    }

    /// Adds (or replaces) a name the sandboxes' DNS answers with `addrs`.
    pub(crate) fn set_host(&self, name: &str, addrs: Vec<Ipv4Addr>) {
        let mut hosts = self.hosts.write().unwrap_or_else(|e| e.into_inner());
        hosts.insert(name.trim_end_matches('.').to_ascii_lowercase(), addrs);
    }

    /// A network namespace for a new sandbox: a spare when one is ready, else one
    /// configured now on a thread of its own.
    pub(crate) fn take_net(&self) -> NetTicket {
        if let Some(n) = self.spares.take() {
            return NetTicket::Ready(n);
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let egress = self.available.is_ok();
        let spawned = std::thread::Builder::new()
            .name("superserve-netns".into())
            .spawn(move || {
                let _ = tx.send(configure_new(egress));
            });
        if let Err(e) = spawned {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let _ = tx.send(Err(e));
            return NetTicket::Pending(rx);
        }
        NetTicket::Pending(rx)
    }

    /// Starts the proxy and DNS tasks of sandbox `id` in its configured namespace `net`;
    /// they ask `policy` for the sandbox's rules.
    pub(crate) fn attach(
        self: &Arc<Self>,
        id: &str,
        net: PreparedNet,
        policy: &Arc<dyn SandboxPolicy>,
    ) -> io::Result<SandboxNet> {
        let PreparedNet { ns, sockets } = net;
        let net = SandboxNet {
            ns,
            tasks: Mutex::new(Vec::new()),
        };
        if let Some((tcp, udp)) = sockets {
            let ctx = Arc::new(SandboxCtx {
                id: id.to_owned(),
                policy: Arc::downgrade(policy),
                names: Mutex::default(),
                last_refused: Mutex::default(),
                relays: Arc::new(Semaphore::new(self.relays_per_sandbox)),
                lookups: Arc::new(Semaphore::new(MAX_LOOKUPS)),
                last_over_limit: Mutex::default(),
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
            let permits = (
                self.relays.clone().try_acquire_owned(),
                ctx.relays.clone().try_acquire_owned(),
            );
            let (Ok(all), Ok(own)) = permits else {
                self.refuse_over_limit(&ctx, client).await;
                continue;
            };
            let me = self.clone();
            let ctx = ctx.clone();
            tokio::spawn(async move {
                me.handle(ctx, client).await;
                drop((all, own));
            });
        }
    }

    /// Resets a connection past the sandbox's (or the backend's) limit of relayed
    /// connections; logged as blocked by `connection-limit`, at most once a second.
    async fn refuse_over_limit(&self, ctx: &SandboxCtx, client: TcpStream) {
        let dst = original_dst(&client);
        reset(client);
        {
            let mut last = lock(&ctx.last_over_limit);
            if last.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
                return;
            }
            *last = Some(std::time::Instant::now());
        }
        let row = NetworkEventRow {
            ts_ns: now_ns(),
            kind: "connection".to_owned(),
            dst_ip: dst.map(|d| d.ip().to_string()),
            dst_port: dst.map(|d| i64::from(d.port())),
            verdict: Some("blocked".into()),
            match_rule: Some("connection-limit".into()),
            ..Default::default()
        };
        self.log(&ctx.id, row).await;
    }

    async fn serve_dns(self: Arc<Self>, ctx: Arc<SandboxCtx>, socket: UdpSocket) {
        let socket = Arc::new(socket);
        let mut buf = vec![0u8; 1500];
        loop {
            let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
                continue;
            };
            let pkt = buf[..n].to_vec();
            let Ok(permit) = ctx.lookups.clone().try_acquire_owned() else {
                // too many lookups in progress: fail this one at once
                if let Ok(q) = dns::parse(&pkt) {
                    let reply = dns::respond(&q, &dns::Answer::ServFail, DNS_TTL);
                    let _ = socket.send_to(&reply, peer).await;
                }
                continue;
            };
            let me = self.clone();
            let ctx = ctx.clone();
            let socket = socket.clone();
            tokio::spawn(async move {
                if let Some(reply) = me.answer_dns(&ctx, &pkt).await {
                    let _ = socket.send_to(&reply, peer).await;
                }
                drop(permit);
            });
        }
    }

    /// Answers one query under the sandbox's rules: a name no rule could allow is refused
    /// without being looked up; an answer carries only addresses a connection could go to
    /// (none left: refused). Refusals are logged.
    async fn answer_dns(&self, ctx: &SandboxCtx, pkt: &[u8]) -> Option<Vec<u8>> {
        let q = match dns::parse(pkt) {
            Ok(q) => q,
            Err(e) => return dns::error_response(&e),
        };
        let Some((network, _)) = ctx.policy.upgrade().and_then(|p| p.rules()) else {
            return Some(dns::respond(&q, &dns::Answer::Refused, DNS_TTL));
        };
        if let Some(rule) = policy::refuse_name(network.as_ref(), &q.name) {
            self.log_refused_lookup(ctx, &q.name, &rule).await;
            return Some(dns::respond(&q, &dns::Answer::Refused, DNS_TTL));
        }
        if !dns::wants_a(&q) {
            return Some(dns::respond(&q, &dns::Answer::Addrs(Vec::new()), DNS_TTL));
        }
        let answer = match self.resolve(&q.name).await {
            dns::Answer::Addrs(addrs) if !addrs.is_empty() => {
                let host = self.host_networks();
                let names = [q.name.clone()];
                let mut refused = None;
                let allowed: Vec<Ipv4Addr> = addrs
                    .into_iter()
                    .filter(|a| {
                        let net = network.as_ref();
                        match policy::decide(net, &self.allow_private, &host, &names, *a) {
                            Verdict::Allowed => true,
                            Verdict::Blocked(rule) => {
                                refused.get_or_insert(rule);
                                false
                            }
                        }
                    })
                    .collect();
                match refused {
                    Some(rule) if allowed.is_empty() => {
                        self.log_refused_lookup(ctx, &q.name, &rule).await;
                        dns::Answer::Refused
                    }
                    _ => {
                        lock(&ctx.names).record(&q.name, &allowed);
                        dns::Answer::Addrs(allowed)
                    }
                }
            }
            other => other,
        };
        Some(dns::respond(&q, &answer, DNS_TTL))
    }

    /// Logs a refused lookup of `name` (because of `rule`) as a blocked `connection` row with
    /// the name as host, port 53 and rule `dns:<rule>`; the same name again within
    /// [`DNS_LOG_QUIET`] is not logged twice.
    async fn log_refused_lookup(&self, ctx: &SandboxCtx, name: &str, rule: &str) {
        {
            let mut last = lock(&ctx.last_refused);
            if matches!(&*last, Some((n, at)) if n == name && at.elapsed() < DNS_LOG_QUIET) {
                return;
            }
            *last = Some((name.to_owned(), std::time::Instant::now()));
        }
        let row = NetworkEventRow {
            ts_ns: now_ns(),
            kind: "connection".to_owned(),
            host: Some(name.to_owned()),
            dst_port: Some(53),
            verdict: Some("blocked".into()),
            match_rule: Some(format!("dns:{rule}")),
            ..Default::default()
        };
        self.log(&ctx.id, row).await;
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

    /// The host's own addresses and networks (refreshed at most every few seconds).
    fn host_networks(&self) -> Arc<HostNetworks> {
        let mut cache = lock(&self.host_networks);
        if cache.0.is_none_or(|t| t.elapsed() > HOST_ADDRS_TTL) {
            let ifs = sys::interface_addrs();
            *cache = (
                Some(std::time::Instant::now()),
                Arc::new(HostNetworks::from_interfaces(&ifs)),
            );
        }
        cache.1.clone()
    }

    async fn log(&self, sandbox_id: &str, row: NetworkEventRow) -> Option<i64> {
        let id = sandbox_id.to_owned();
        self.db
            .call(move |c| store::insert_network_event(c, &id, &row))
            .await
            .ok()
    }

    async fn handle(self: Arc<Self>, ctx: Arc<SandboxCtx>, client: TcpStream) {
        let Some(dst) = original_dst(&client) else {
            return; // a direct connection to the proxy port: not redirected traffic
        };
        let Some((network, bindings)) = ctx.policy.upgrade().and_then(|p| p.rules()) else {
            return; // the sandbox is gone
        };
        let resolved = lock(&ctx.names).of(*dst.ip());
        let host = resolved.last().cloned();
        let verdict = policy::decide(
            network.as_ref(),
            &self.allow_private,
            &self.host_networks(),
            &resolved,
            *dst.ip(),
        );
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
            self.log(&ctx.id, row).await;
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
                    self.log(&ctx.id, row).await;
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
            let me = self.clone();
            let id = ctx.id.clone();
            tokio::spawn(async move { me.log(&id, row).await })
        };
        let counters = Arc::new(Counters::default());
        let client = Counted {
            inner: client,
            counters: counters.clone(),
        };
        // a connection to an address resolved for a host that a bound secret covers goes
        // through the broker, request by request; HTTPS only when the TLS server name is
        // such a host (anything else is relayed as is: its stand-ins are worthless there)
        let brokered = resolved.iter().any(|n| broker::covers(&bindings, n));
        let first = if brokered {
            first_bytes(&client.inner).await
        } else {
            FirstBytes::Other
        };
        match (first, self.mitm.as_ref()) {
            (FirstBytes::Http, _) => {
                let b = self.broker(&ctx, resolved, None);
                broker::relay(b, client, upstream).await;
            }
            (FirstBytes::Tls(Some(sni)), Ok(mitm))
                if resolved.contains(&sni) && broker::covers(&bindings, &sni) =>
            {
                if let Ok(tls_client) = mitm.accept(&sni, client).await {
                    match mitm.connect(&sni, upstream).await {
                        Ok(tls_upstream) => {
                            let b = self.broker(&ctx, resolved, Some(sni));
                            broker::relay(b, tls_client, tls_upstream).await;
                        }
                        Err(_) => broker::refuse_tls(tls_client, &sni).await,
                    }
                }
            }
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
            let _ = self
                .db
                .call(move |c| store::set_connection_bytes(c, row_id, sent, recv))
                .await;
        }
    }
}

impl Egress {
    /// The broker of one intercepted connection of sandbox `ctx` to an address resolved for
    /// the names `resolved`, inside a TLS session for `sni` (if any).
    fn broker(
        &self,
        ctx: &SandboxCtx,
        resolved: Vec<String>,
        sni: Option<String>,
    ) -> broker::Broker {
        broker::Broker {
            db: self.db.clone(),
            secrets: self.secrets.clone(),
            sandbox_id: ctx.id.clone(),
            policy: ctx.policy.clone(),
            resolved,
            sni,
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
    /// A TLS ClientHello, with the server name it asks for.
    Tls(Option<String>),
    /// Anything else, or nothing within a few seconds.
    Other,
}

/// Largest ClientHello looked at (a post-quantum key share makes it a few KiB).
const MAX_HELLO: usize = 16 * 1024;

/// Looks at (without consuming) what the client sends first.
async fn first_bytes(s: &TcpStream) -> FirstBytes {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut buf = vec![0u8; MAX_HELLO];
    loop {
        let n = match tokio::time::timeout_at(deadline, s.peek(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => return FirstBytes::Other,
        };
        if buf[0] == 0x16 {
            match tls::client_hello_server_name(&buf[..n]) {
                tls::Hello::ServerName(name) => return FirstBytes::Tls(name),
                // the rest of the ClientHello is on its way: look again shortly
                tls::Hello::Incomplete
                    if n < buf.len() && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
                tls::Hello::Incomplete | tls::Hello::Malformed => return FirstBytes::Other,
            }
        }
        let head = &buf[..n.min(8)];
        let method = match head.iter().position(|b| *b == b' ') {
            Some(end) => &head[..end],
            None => head,
        };
        return if !method.is_empty() && method.iter().all(u8::is_ascii_uppercase) {
            FirstBytes::Http
        } else {
            FirstBytes::Other
        };
    }
}

/// Closes a connection with a reset (`SO_LINGER` 0), so the sandbox sees the refusal at once.
fn reset(s: TcpStream) {
    let _ = sys::set_linger_zero(s.as_fd());
    drop(s);
}

/// The destination a redirected connection was addressed to; `None` for a connection straight
/// to the proxy port (it has itself as "original" destination).
fn original_dst(s: &TcpStream) -> Option<SocketAddrV4> {
    sys::original_dst(s.as_fd()).filter(|d| *d.ip() != Ipv4Addr::LOCALHOST)
}

/// Makes and configures a network namespace on a thread of its own (which leaves it with
/// the thread: the descriptor returned is what keeps it).
fn prepare(egress: bool) -> io::Result<PreparedNet> {
    std::thread::Builder::new()
        .name("superserve-netns".into())
        .spawn(move || configure_new(egress))?
        .join()
        .map_err(|_| io::Error::other("configuring a network namespace panicked"))?
}

/// Runs on a thread of its own, which it moves into a new network namespace: brings loopback
/// up and, with egress, adds the sandbox address, the default route and the redirect
/// rules, then binds the proxy and DNS sockets inside the namespace. The thread must end
/// afterwards.
fn configure_new(egress: bool) -> io::Result<PreparedNet> {
    let ns = sys::new_net_namespace()?;
    sys::loopback_up()?;
    if !egress {
        return Ok(PreparedNet { ns, sockets: None });
    }
    netlink::configure(SANDBOX_ADDR, PROXY_PORT, 53)?;
    let tcp = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, PROXY_PORT))?;
    tcp.set_nonblocking(true)?;
    let udp = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 53))?;
    udp.set_nonblocking(true)?;
    Ok(PreparedNet {
        ns,
        sockets: Some((tcp, udp)),
    })
}
