//! [`LocalServer`]: starting, addressing, controlling and stopping the backend.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use rand::RngCore;
use tokio::sync::watch;

use super::app::{App, Tuning};
use super::cgroup::Cgroups;
use super::disk::Disks;
use super::egress::policy::Cidr4;
use super::egress::{Egress, EgressSettings};
use super::error::LocalError;
use super::fault::FaultRule;
use super::http;
use super::idmap::IdRanges;
use super::image;
use super::journal::{Plane, RecordedRequest};
use super::layers::LayerStore;
use super::preview::{self, Previews};
use super::preview_proxy;
use super::runtime::Host;
use super::secrets::{SecretKey, SecretLookup, Secrets, Vault};
use super::store::Db;
use super::sys;

/// Smallest sandbox disk, MiB (ext4 needs room for its own metadata).
const MIN_DISK_MIB: u32 = 64;

/// Default interval of `: keepalive` comments on `/exec/stream`.
const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(15);

/// Configures and starts a [`LocalServer`].
///
/// ```no_run
/// # fn main() -> Result<(), superserve::local::LocalError> {
/// let server = superserve::local::LocalServer::builder()
///     .data_dir("/var/lib/superserve-local")
///     .port(8080) // the data plane gets 8081
///     .start()?;
/// println!("{}", server.base_url());
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct LocalServerBuilder {
    data_dir: Option<PathBuf>,
    port: Option<u16>,
    sandbox_port: Option<u16>,
    preview_port: Option<u16>,
    api_key: Option<String>,
    bind: IpAddr,
    keepalive: Duration,
    allow_private: Vec<String>,
    dns_hosts: Vec<(String, Ipv4Addr)>,
    upstream_roots: Vec<Vec<u8>>,
    disk_mib: u32,
    max_connections: Option<usize>,
    header_read_timeout: Duration,
    idle_timeout: Duration,
    registry_mirror: Option<String>,
}

impl fmt::Debug for LocalServerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalServerBuilder")
            .field("data_dir", &self.data_dir)
            .field("port", &self.port)
            .field("sandbox_port", &self.sandbox_port)
            .field("preview_port", &self.preview_port)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("bind", &self.bind)
            .field("keepalive", &self.keepalive)
            .field("allow_private", &self.allow_private)
            .field("dns_hosts", &self.dns_hosts)
            .field("upstream_roots", &self.upstream_roots.len())
            .field("disk_mib", &self.disk_mib)
            .field("max_connections", &self.max_connections)
            .field("header_read_timeout", &self.header_read_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("registry_mirror", &self.registry_mirror)
            .finish()
    }
}

impl Default for LocalServerBuilder {
    fn default() -> Self {
        LocalServerBuilder {
            data_dir: None,
            port: None,
            sandbox_port: None,
            preview_port: None,
            api_key: None,
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            keepalive: DEFAULT_KEEPALIVE,
            allow_private: Vec::new(),
            dns_hosts: Vec::new(),
            upstream_roots: Vec::new(),
            disk_mib: super::model::DEFAULT_DISK_MIB,
            max_connections: None,
            header_read_timeout: http::DEFAULT_HEADER_READ_TIMEOUT,
            idle_timeout: http::DEFAULT_IDLE_TIMEOUT,
            registry_mirror: None,
        }
    }
}

impl LocalServerBuilder {
    /// Keeps state (SQLite database, sandbox files) in this directory, created if missing, and
    /// left in place on shutdown. Without it a temporary directory is used and removed on drop.
    ///
    /// One backend at a time, in this process or another, may use a directory: a second start
    /// fails with [`LocalError::DataDirInUse`](crate::local::LocalError::DataDirInUse). The
    /// directory is free again as soon as [`LocalServer::shutdown`] returns (or the server is
    /// dropped), so a test can restart a backend on the same state.
    #[must_use]
    pub fn data_dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.data_dir = Some(dir.as_ref().to_path_buf());
        self
    }

    /// The control-plane port (default: a random free port). Unless
    /// [`sandbox_port`](Self::sandbox_port) is set, the data plane listens on `port + 1`;
    /// unless [`preview_port`](Self::preview_port) is set, the preview proxy on `port + 2`.
    #[must_use]
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// The data-plane port (default: `port + 1` when [`port`](Self::port) is set, else random).
    #[must_use]
    pub fn sandbox_port(mut self, port: u16) -> Self {
        self.sandbox_port = Some(port);
        self
    }

    /// The preview proxy's port (default: `port + 2` when [`port`](Self::port) is set, else
    /// random). See [`LocalServer::preview_url`].
    #[must_use]
    pub fn preview_port(mut self, port: u16) -> Self {
        self.preview_port = Some(port);
        self
    }

    /// The API key clients must send (default: a random `ss_live_…` key).
    #[must_use]
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(key.into());
        self
    }

    /// The address the listeners bind (default `127.0.0.1`).
    #[must_use]
    pub fn bind(mut self, ip: IpAddr) -> Self {
        self.bind = ip;
        self
    }

    /// Interval of `: keepalive` comments on `/exec/stream` (default 15 s, as the hosted
    /// service). Tests can shorten it.
    #[must_use]
    pub fn keepalive_interval(mut self, every: Duration) -> Self {
        self.keepalive = every;
        self
    }

    /// Lets sandboxes reach an IPv4 network they can never reach otherwise (`"10.88.0.0/16"`,
    /// `"192.168.1.20"`): private, loopback, link-local and the other special-purpose ranges
    /// (documentation, benchmarking, ...), the host's own addresses and the networks the host
    /// is on (see the [module docs](crate::local)). Each sandbox's own `allow_out`/`deny_out`
    /// rules still apply. Meant for test upstreams on this machine.
    /// An entry that is not an IPv4 CIDR makes [`start`](Self::start) fail with
    /// [`LocalError::InvalidOption`].
    ///
    /// ```no_run
    /// # fn main() -> Result<(), superserve::local::LocalError> {
    /// let server = superserve::local::LocalServer::builder()
    ///     .allow_private_destination("10.88.0.0/16")
    ///     .dns_host("api.internal.test", "10.88.0.2".parse().unwrap())
    ///     .start()?;
    /// # drop(server); Ok(()) }
    /// ```
    #[must_use]
    pub fn allow_private_destination(mut self, cidr: impl Into<String>) -> Self {
        self.allow_private.push(cidr.into());
        self
    }

    /// Makes the sandboxes' DNS answer `name` with `ip` (without asking the host's resolver),
    /// like an `/etc/hosts` entry for every sandbox. More can be added while running with
    /// [`LocalServer::set_dns_host`].
    #[must_use]
    pub fn dns_host(mut self, name: impl Into<String>, ip: Ipv4Addr) -> Self {
        self.dns_hosts.push((name.into(), ip));
        self
    }

    /// Trusts these PEM root certificates (besides the host's trust store) when the egress
    /// proxy opens TLS to a brokered secret's host on a sandbox's behalf. For test upstreams
    /// with certificates of a private CA.
    #[must_use]
    pub fn upstream_root_ca(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.upstream_roots.push(pem.into());
        self
    }

    /// The disk size of new sandboxes, in MiB (default 4096, as the hosted base template):
    /// the sandbox's writable layer, its own file system. Writing past it fails with
    /// `ENOSPC` inside the sandbox (and `507 sandbox_storage_full` for uploads); the host and
    /// other sandboxes are unaffected. Disks are sparse: only what is written takes room.
    /// Values below 64 MiB are raised to 64.
    #[must_use]
    pub fn sandbox_disk_mib(mut self, mib: u32) -> Self {
        self.disk_mib = mib.max(MIN_DISK_MIB);
        self
    }

    /// The most connections each listener keeps open (default: an eighth of the process's
    /// open-file limit, between 32 and 4096). At the cap, a new connection closes the one that
    /// has waited longest without a request in progress; when every connection has a request
    /// in progress, the new one is answered `503` with `Retry-After: 1` at once. An upgraded
    /// WebSocket keeps its connection's slot. `0` is rejected by [`start`](Self::start).
    #[must_use]
    pub fn max_connections(mut self, max: usize) -> Self {
        self.max_connections = Some(max);
        self
    }

    /// How long a client may take to send a request head, counted from its first byte (or,
    /// on a new connection, from the accept); slower connections are closed (default 10 s).
    #[must_use]
    pub fn header_read_timeout(mut self, timeout: Duration) -> Self {
        self.header_read_timeout = timeout;
        self
    }

    /// How long a keep-alive connection may wait for its next request before it is closed
    /// (default 120 s, longer than the SDK's 90 s connection-pool idle time).
    #[must_use]
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// A registry mirror for Docker Hub images (`http(s)://host[:port]`): template builds
    /// whose `from` is a Docker Hub image (`python:3.11`, `user/img`, `docker.io/...`) pull it
    /// from the mirror first and from Docker Hub if the mirror fails, as Docker's
    /// `registry-mirrors` setting does. Images of other registries are pulled from their own.
    /// A URL that is not `http`/`https`, or carries credentials, a query or a fragment, is
    /// rejected by [`start`](Self::start).
    #[must_use]
    pub fn registry_mirror(mut self, url: impl Into<String>) -> Self {
        self.registry_mirror = Some(url.into());
        self
    }

    /// Checks the machine, prepares the data directory and base image, binds the listeners
    /// and starts serving on a background thread. Returns once the listeners accept
    /// connections. Works from plain threads and from inside an async runtime.
    pub fn start(self) -> Result<LocalServer, LocalError> {
        LocalServer::start_with(self)
    }
}

/// A Superserve-compatible backend running on this machine.
///
/// It serves the control plane ([`base_url`](Self::base_url)) and the data plane
/// ([`sandbox_url`](Self::sandbox_url), sandbox chosen by the `X-Superserve-Sandbox-Id`
/// header) of the Superserve API, and runs each sandbox as an isolated process tree: its own
/// PID, mount and UTS namespaces, a copy-on-write root filesystem (overlayfs over the
/// `superserve/base` image: a minimal `/etc` and the host's `/usr`), and a cgroup that pauses
/// (freezer), limits memory and CPU. Needs root on Linux with cgroup v1.
///
/// Dropping it (or [`shutdown`](Self::shutdown)) kills every sandbox process and removes the
/// temporary data directory if it made one. Sandbox processes never survive a shutdown: with a
/// persistent [`data_dir`](LocalServerBuilder::data_dir), the next start reports sandboxes
/// that were running as `paused`, with their records and files intact; resuming them starts a
/// fresh process tree.
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let server = superserve::local::LocalServer::start()?;
/// let config = server.config(); // an SDK configuration pointing at it
/// # let _ = config;
/// # Ok(())
/// # }
/// ```
pub struct LocalServer {
    app: Arc<App>,
    base_url: String,
    sandbox_url: String,
    preview_url: String,
    data_dir: PathBuf,
    temporary: bool,
    config: crate::Config,
    stop: Option<watch::Sender<bool>>,
    thread: Option<JoinHandle<()>>,
    /// The server's runtime (for measurements run where requests are served).
    handle: tokio::runtime::Handle,
    lock_file: Option<sys::DirLock>,
}

impl fmt::Debug for LocalServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalServer")
            .field("base_url", &self.base_url)
            .field("sandbox_url", &self.sandbox_url)
            .field("preview_url", &self.preview_url)
            .field("data_dir", &self.data_dir)
            .field("api_key", &"<redacted>")
            .finish()
    }
}

/// The registry mirror option as a URL: `http` or `https`, a host, no credentials, query or
/// fragment.
fn parse_registry_mirror(raw: &str) -> Result<url::Url, LocalError> {
    let bad = |why: &str| {
        LocalError::InvalidOption(format!(
            "registry_mirror {:?}: {why}",
            raw.chars().take(200).collect::<String>()
        ))
    };
    let url = url::Url::parse(raw.trim()).map_err(|e| bad(&e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("must be an http:// or https:// URL"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(LocalError::InvalidOption(
            "registry_mirror: credentials in the URL are not supported (anonymous pulls only)"
                .into(),
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("must not have a query or fragment"));
    }
    Ok(url)
}

fn random_api_key() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut b = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut b);
    let tail: String = b
        .iter()
        .map(|x| char::from(ALPHABET[usize::from(*x) % ALPHABET.len()]))
        .collect();
    format!("ss_live_{tail}")
}

/// Checks what sandbox isolation needs, naming what is missing.
fn preflight() -> Result<(), LocalError> {
    let uid = sys::euid();
    if uid != 0 {
        return Err(LocalError::NotRoot { uid });
    }
    for ns in ["pid", "mnt", "uts", "ipc", "net", "user"] {
        let p = format!("/proc/self/ns/{ns}");
        if !Path::new(&p).exists() {
            return Err(LocalError::Unsupported {
                what: "Linux namespaces",
                detail: format!("{p} does not exist"),
            });
        }
    }
    let fs = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    if !fs
        .lines()
        .any(|l| l.split_whitespace().last() == Some("overlay"))
    {
        return Err(LocalError::Unsupported {
            what: "overlayfs",
            detail:
                "the kernel does not list `overlay` in /proc/filesystems (try `modprobe overlay`)"
                    .into(),
        });
    }
    // openat2 (Linux 5.6) keeps file access inside a sandbox's root; pidfds (5.3) make
    // killing race-free.
    match sys::open_raw(Path::new("/"), libc::O_PATH) {
        Ok(fd) => drop(fd),
        Err(e) => {
            return Err(LocalError::Unsupported {
                what: "/proc access",
                detail: e.to_string(),
            })
        }
    }
    if let Err(e) = super::files::probe_openat2() {
        return Err(LocalError::Unsupported {
            what: "openat2 (Linux 5.6+)",
            detail: e.to_string(),
        });
    }
    // overlay layers given as descriptors (`lowerdir+` with FSCONFIG_SET_FD): Linux 6.13
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut v = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse::<u32>().ok());
    let (major, minor) = (v.next().unwrap_or(0), v.next().unwrap_or(0));
    if (major, minor) < (6, 13) {
        return Err(LocalError::Unsupported {
            what: "Linux 6.13 or later",
            detail: format!(
                "this kernel is {}; sandboxes need idmapped mounts and overlayfs layers \
                 given as file descriptors (6.13)",
                release.trim()
            ),
        });
    }
    if let Err(e) = sys::pidfd_open(std::process::id() as i32) {
        return Err(LocalError::Unsupported {
            what: "pidfd_open (Linux 5.3+)",
            detail: e.to_string(),
        });
    }
    Ok(())
}

/// The name of this data directory's cgroups: a random id kept in `data_dir/.instance`.
fn instance_id(data_dir: &Path) -> Result<String, LocalError> {
    let path = data_dir.join(".instance");
    if let Ok(s) = std::fs::read_to_string(&path) {
        let s = s.trim();
        if s.len() == 16 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(s.to_owned());
        }
    }
    let mut r = [0u8; 8];
    rand::thread_rng().fill_bytes(&mut r);
    let id: String = r.iter().map(|x| format!("{x:02x}")).collect();
    std::fs::write(&path, format!("{id}\n")).map_err(|source| LocalError::DataDir {
        path: path.clone(),
        source,
    })?;
    Ok(id)
}

/// The soft limit on open descriptors of this process (`/proc/self/limits`; 1024 if it cannot
/// be read, unlimited as `u64::MAX`).
fn open_files_limit() -> u64 {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|rest| rest.split_whitespace().next())
        .map_or(1024, |soft| soft.parse().unwrap_or(u64::MAX))
}

fn bind(ip: IpAddr, port: u16) -> Result<std::net::TcpListener, LocalError> {
    let addr = SocketAddr::new(ip, port);
    let l =
        std::net::TcpListener::bind(addr).map_err(|source| LocalError::Bind { addr, source })?;
    l.set_nonblocking(true)
        .map_err(|source| LocalError::Bind { addr, source })?;
    Ok(l)
}

/// The preview proxy's address: `localhost` (whose subdomains resolve to this machine) with
/// the listener's port.
fn preview_url_of(l: &std::net::TcpListener, ip: IpAddr) -> Result<String, LocalError> {
    let addr = l.local_addr().map_err(|source| LocalError::Bind {
        addr: SocketAddr::new(ip, 0),
        source,
    })?;
    Ok(format!("http://localhost:{}", addr.port()))
}

fn url_of(l: &std::net::TcpListener, ip: IpAddr) -> Result<String, LocalError> {
    let addr = l.local_addr().map_err(|source| LocalError::Bind {
        addr: SocketAddr::new(ip, 0),
        source,
    })?;
    Ok(match addr.ip() {
        IpAddr::V6(v6) => format!("http://[{v6}]:{}", addr.port()),
        IpAddr::V4(v4) if v4.is_unspecified() => format!("http://127.0.0.1:{}", addr.port()),
        IpAddr::V4(v4) => format!("http://{v4}:{}", addr.port()),
    })
}

impl LocalServer {
    /// Starts a backend with a temporary data directory (removed on drop), random free ports
    /// on `127.0.0.1` and a random API key.
    pub fn start() -> Result<LocalServer, LocalError> {
        LocalServerBuilder::default().start()
    }

    /// A builder for the data directory, ports, API key and bind address.
    pub fn builder() -> LocalServerBuilder {
        LocalServerBuilder::default()
    }

    fn start_with(b: LocalServerBuilder) -> Result<LocalServer, LocalError> {
        preflight()?;

        let (data_dir, temporary) = match &b.data_dir {
            Some(d) => {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(d)
                    .map_err(|source| LocalError::DataDir {
                        path: d.clone(),
                        source,
                    })?;
                (d.clone(), false)
            }
            None => {
                let mut r = [0u8; 8];
                rand::thread_rng().fill_bytes(&mut r);
                let name: String = r.iter().map(|x| format!("{x:02x}")).collect();
                let d = std::env::temp_dir().join(format!("superserve-local-{name}"));
                // private to root: it holds every sandbox's files
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(&d)
                    .map_err(|source| LocalError::DataDir {
                        path: d.clone(),
                        source,
                    })?;
                (d, true)
            }
        };
        let cleanup_temp = |e: LocalError| {
            if temporary {
                let _ = std::fs::remove_dir_all(&data_dir);
            }
            e
        };
        let data_dir = std::fs::canonicalize(&data_dir)
            .map_err(|source| LocalError::DataDir {
                path: data_dir.clone(),
                source,
            })
            .map_err(cleanup_temp)?;
        let cleanup_temp = |e: LocalError| {
            if temporary {
                let _ = std::fs::remove_dir_all(&data_dir);
            }
            e
        };
        let s = data_dir.to_string_lossy();
        if s.contains([',', ':', '\\', '\n']) || data_dir.to_str().is_none() {
            return Err(cleanup_temp(LocalError::InvalidDataDir {
                path: data_dir.clone(),
                reason: "overlayfs cannot use paths containing ',', ':', '\\', newlines or \
                         non-UTF-8 bytes"
                    .into(),
            }));
        }
        const OVERLAYFS_MAGIC: i64 = 0x794c_7630;
        let on_overlay = sys::open_raw(&data_dir, libc::O_PATH | libc::O_DIRECTORY)
            .and_then(|fd| super::fs_sys::fs_magic(std::os::fd::AsFd::as_fd(&fd)))
            .is_ok_and(|m| m == OVERLAYFS_MAGIC);
        if on_overlay {
            return Err(cleanup_temp(LocalError::InvalidDataDir {
                path: data_dir.clone(),
                reason: "it is on overlayfs, which cannot hold the sandboxes' writable layers; \
                         choose a directory on ext4, xfs, btrfs or tmpfs"
                    .into(),
            }));
        }
        // private to root: it holds every sandbox's files, the state and the secrets key
        std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|source| LocalError::DataDir {
                path: data_dir.clone(),
                source,
            })
            .map_err(cleanup_temp)?;
        let server = Self::start_in(b, data_dir.clone(), temporary);
        server.map_err(cleanup_temp)
    }

    fn start_in(
        b: LocalServerBuilder,
        data_dir: PathBuf,
        temporary: bool,
    ) -> Result<LocalServer, LocalError> {
        let dd_err = |path: PathBuf| move |source| LocalError::DataDir { path, source };
        let lock_path = data_dir.join(".lock");
        let Some(lock_file) =
            sys::DirLock::acquire(&lock_path).map_err(dd_err(lock_path.clone()))?
        else {
            return Err(LocalError::DataDirInUse { path: data_dir });
        };
        let cgroups = Cgroups::discover(&instance_id(&data_dir)?)?;
        let sandboxes_dir = data_dir.join("sandboxes");
        std::fs::create_dir_all(&sandboxes_dir).map_err(dd_err(sandboxes_dir.clone()))?;
        let base = image::prepare(&data_dir)?;
        let db_path = data_dir.join("state.db");
        // the database holds access tokens: 0600 (SQLite gives its -wal/-shm files the same)
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&db_path)
            .and_then(|f| f.set_permissions(std::fs::Permissions::from_mode(0o600)))
            .map_err(dd_err(db_path.clone()))?;
        let db = Db::open(&db_path).map_err(|e| LocalError::Database {
            path: db_path.clone(),
            source: Box::new(e),
        })?;

        let control_port = b.port.unwrap_or(0);
        let data_port = match (b.sandbox_port, b.port) {
            (Some(p), _) => p,
            (None, Some(0)) | (None, None) => 0,
            (None, Some(p)) => p.checked_add(1).ok_or_else(|| {
                LocalError::InvalidOption(format!(
                    "port {p} leaves no room for the data plane on port + 1; set sandbox_port"
                ))
            })?,
        };
        let preview_port = match (b.preview_port, b.port) {
            (Some(p), _) => p,
            (None, Some(0)) | (None, None) => 0,
            (None, Some(p)) => p.checked_add(2).ok_or_else(|| {
                LocalError::InvalidOption(format!(
                    "port {p} leaves no room for the preview proxy on port + 2; set preview_port"
                ))
            })?,
        };
        let max_fds = open_files_limit();
        let mut limits = http::Limits::for_descriptors(max_fds);
        match b.max_connections {
            Some(0) => {
                return Err(LocalError::InvalidOption(
                    "max_connections must be at least 1".into(),
                ))
            }
            Some(n) => limits.max_connections = n,
            None => {}
        }
        if b.header_read_timeout.is_zero() || b.idle_timeout.is_zero() {
            return Err(LocalError::InvalidOption(
                "header_read_timeout and idle_timeout must not be zero".into(),
            ));
        }
        let registry_mirror = b
            .registry_mirror
            .as_deref()
            .map(parse_registry_mirror)
            .transpose()?;
        limits.header_read_timeout = b.header_read_timeout;
        limits.idle_timeout = b.idle_timeout;
        let control_listener = bind(b.bind, control_port)?;
        let data_listener = bind(b.bind, data_port)?;
        let preview_listener = bind(b.bind, preview_port)?;
        let base_url = url_of(&control_listener, b.bind)?;
        let sandbox_url = url_of(&data_listener, b.bind)?;
        let preview_url = preview_url_of(&preview_listener, b.bind)?;

        let api_key = match b.api_key {
            Some(k) if !k.trim().is_empty() => k.trim().to_owned(),
            Some(_) => return Err(LocalError::InvalidOption("the API key is empty".into())),
            None => random_api_key(),
        };
        let config = crate::Config::builder()
            .api_key(api_key.clone())
            .base_url(base_url.clone())
            .sandbox_url(sandbox_url.clone())
            .preview_url(preview_url.clone())
            .build()
            .map_err(|e| LocalError::InvalidOption(format!("SDK configuration: {e}")))?;

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("superserve-local")
            .build()
            .map_err(LocalError::Runtime)?;
        let mut settings = EgressSettings::default();
        for c in &b.allow_private {
            let cidr = Cidr4::parse(c.trim()).ok_or_else(|| {
                LocalError::InvalidOption(format!(
                    "allow_private_destination: {c:?} is not an IPv4 address or CIDR"
                ))
            })?;
            settings.allow_private.push(cidr);
        }
        for (name, ip) in &b.dns_hosts {
            settings
                .hosts
                .entry(name.trim_end_matches('.').to_ascii_lowercase())
                .or_default()
                .push(*ip);
        }
        settings.upstream_roots = b.upstream_roots.clone();
        // a relayed connection holds six descriptors: a sixteenth of them for all relays
        settings.max_connections = usize::try_from(max_fds / 16)
            .unwrap_or(usize::MAX)
            .clamp(16, 16_384);
        let key_path = data_dir.join("secrets.key");
        let key = SecretKey::load_or_create(&key_path).map_err(dd_err(key_path.clone()))?;
        let vault = Arc::new(
            Vault::open(db.clone(), key).map_err(|e| LocalError::Database {
                path: db_path.clone(),
                source: Box::new(e),
            })?,
        );
        let preview_key = data_dir.join("preview.key");
        let previews = Previews::open(db.clone(), &preview_key).map_err(|e| match e {
            preview::OpenError::Key(source) => LocalError::DataDir {
                path: preview_key.clone(),
                source,
            },
            preview::OpenError::Store(e) => LocalError::Database {
                path: db_path.clone(),
                source: Box::new(e),
            },
        })?;
        let egress = Arc::new(Egress::new(
            settings,
            db.clone(),
            SecretLookup::new(vault.clone()),
        ));
        if let Some(pem) = egress.ca_pem() {
            image::install_ca(&base, pem)?;
        }
        let layers = Arc::new(LayerStore::open(
            &data_dir,
            db.clone(),
            image::runtime_layer(&data_dir),
        )?);
        let disks = Disks::new(layers.pool().path(super::layers::pool::DISKS), b.disk_mib)?;
        let ids = IdRanges::open(&data_dir).map_err(|e| LocalError::Unsupported {
            what: "sandbox user id ranges",
            detail: format!("cannot open the registry of id ranges: {e}"),
        })?;
        let host = Host {
            base,
            cgroups,
            sandboxes_dir,
            last_cap: sys::last_cap(),
            egress: egress.clone(),
            disks,
            layers,
            ids,
            seccomp: sys::seccomp::program(),
        };
        let app = Arc::new(App::new(
            api_key,
            host,
            db,
            Secrets::new(vault),
            Arc::new(previews),
            Tuning {
                keepalive: if b.keepalive.is_zero() {
                    DEFAULT_KEEPALIVE
                } else {
                    b.keepalive
                },
                disk_mib: b.disk_mib,
                registry_mirror,
            },
        )?);

        if let Some(why) = egress.unavailable() {
            eprintln!("superserve-local: warning: {why}");
        }

        let (stop_tx, stop_rx) = watch::channel(false);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let thread_app = app.clone();
        let handle = runtime.handle().clone();
        let thread = std::thread::Builder::new()
            .name("superserve-local".into())
            .spawn(move || {
                run(
                    runtime,
                    thread_app,
                    [control_listener, data_listener, preview_listener],
                    limits,
                    stop_rx,
                    ready_tx,
                )
            })
            .map_err(LocalError::Runtime)?;
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(LocalError::Stopped(e));
            }
            Err(_) => {
                let _ = thread.join();
                return Err(LocalError::Stopped("the server thread exited".into()));
            }
        }
        Ok(LocalServer {
            app,
            base_url,
            sandbox_url,
            preview_url,
            data_dir,
            temporary,
            config,
            stop: Some(stop_tx),
            thread: Some(thread),
            handle,
            lock_file: Some(lock_file),
        })
    }

    /// The control-plane URL, e.g. `http://127.0.0.1:41234` (use as `SUPERSERVE_BASE_URL`).
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The data-plane URL (use as `SUPERSERVE_SANDBOX_URL`): requests name their sandbox in
    /// `X-Superserve-Sandbox-Id`.
    pub fn sandbox_url(&self) -> &str {
        &self.sandbox_url
    }

    /// The preview proxy's address, e.g. `http://localhost:41236` (use as
    /// `SUPERSERVE_PREVIEW_URL`; [`config`](Self::config) carries it). Port `3000` of sandbox
    /// `<id>` is at `http://3000-<id>.localhost:41236/`: browsers and curl resolve every
    /// `*.localhost` name to this machine. For clients that cannot resolve such names, the
    /// same preview is at `http://127.0.0.1:41236/_preview/3000-<id>/` (apps see the path
    /// without the prefix and the prefix in `X-Forwarded-Prefix`; previews share one origin
    /// there, so no cookie is set: private ports need the token header or query parameter).
    /// The address is always `localhost`: with [`bind`](LocalServerBuilder::bind) set to
    /// another address, clients on other machines use the second form on that address. See
    /// the [module docs](crate::local) for the access rules.
    pub fn preview_url(&self) -> &str {
        &self.preview_url
    }

    /// A TCP connection to `port` inside a running sandbox's network namespace, made the way
    /// the preview proxy makes its own (loopback inside the sandbox, so apps bound to
    /// `127.0.0.1` are reached too), but without the proxy: for measurements and tests. Does
    /// not resume a paused sandbox. Blocks; do not call it on an async runtime's thread.
    pub fn connect_to_sandbox_port(
        &self,
        sandbox_id: &str,
        port: u16,
    ) -> std::io::Result<std::net::TcpStream> {
        let app = self.app.clone();
        let id = sandbox_id.to_owned();
        on_own_thread(async move { super::preview_proxy::connect_direct(&app, &id, port).await })
    }

    /// Captures the display of a running `superserve/desktop` sandbox once, the way a
    /// screenshot starts but without encoding or HTTP: the in-sandbox helper's capture of the
    /// root window (`GetImage`, converted to RGB) and the raw frame's transfer to the backend,
    /// where its size is checked, timed on the server's own runtime as a request would be.
    /// Returns the frame's width, height and the time it took: the baseline `bench_desktop`
    /// compares screenshot latencies with. Does not resume a paused sandbox. Blocks; do not
    /// call it on an async runtime's thread.
    pub fn desktop_capture(
        &self,
        sandbox_id: &str,
    ) -> std::io::Result<(u32, u32, std::time::Duration)> {
        let app = self.app.clone();
        let id = sandbox_id.to_owned();
        let (tx, rx) = std::sync::mpsc::channel();
        self.handle.spawn(async move {
            let captured = async {
                let entry = app.get(&id).ok_or_else(|| {
                    std::io::Error::new(std::io::ErrorKind::NotFound, "no such sandbox")
                })?;
                let desktop = entry.desktop.lock().await.clone();
                let desktop = desktop
                    .ok_or_else(|| std::io::Error::other("the sandbox has no running desktop"))?;
                desktop
                    .capture_timed()
                    .await
                    .map_err(|e| std::io::Error::other(e.to_string()))
            };
            let _ = tx.send(captured.await);
        });
        rx.recv()
            .map_err(|_| std::io::Error::other("the server stopped"))?
    }

    /// The API key the control plane accepts.
    pub fn api_key(&self) -> &str {
        &self.app.api_key
    }

    /// The data directory (state database, base image, sandbox files).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// An SDK configuration for this backend (API key, base URL, data-plane URL and preview
    /// address set).
    pub fn config(&self) -> crate::Config {
        self.config.clone()
    }

    /// Adds a fault rule (see [`FaultRule`]); rules apply in the order they were added.
    pub fn inject(&self, rule: FaultRule) {
        self.app.faults.push(rule);
    }

    /// Removes every fault rule.
    pub fn clear_faults(&self) {
        self.app.faults.clear();
    }

    /// Every request received so far (the control and data planes, oldest first; at most the last 10 000),
    /// except the `/_local/*` admin routes.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.app.journal.snapshot()
    }

    /// Requests received so far on one listener.
    pub fn requests_on(&self, plane: Plane) -> Vec<RecordedRequest> {
        self.requests()
            .into_iter()
            .filter(|r| r.plane == plane)
            .collect()
    }

    /// Empties the request journal.
    pub fn clear_requests(&self) {
        self.app.journal.clear();
    }

    /// Makes the sandboxes' DNS answer `name` with `ip` from now on (see
    /// [`LocalServerBuilder::dns_host`]).
    pub fn set_dns_host(&self, name: &str, ip: Ipv4Addr) {
        self.app.host.egress.set_host(name, vec![ip]);
    }

    /// Whether sandboxes can reach the outside through the egress proxy. It needs nf_tables
    /// NAT in the kernel (the backend sets the rules over netlink); without it every sandbox
    /// still gets its own network namespace, with loopback only.
    pub fn egress_available(&self) -> bool {
        self.app.host.egress.unavailable().is_none()
    }

    /// The registry mirror Docker Hub pulls go to first
    /// ([`LocalServerBuilder::registry_mirror`]), normalised (`http://127.0.0.1:5000/`).
    pub fn registry_mirror(&self) -> Option<&str> {
        self.app.tuning.registry_mirror.as_ref().map(|u| u.as_str())
    }

    /// Invalidates the sandbox's current access token: its next data-plane call gets
    /// `401 invalid access token` until a client activates it again. Returns whether the
    /// sandbox exists.
    pub fn expire_tokens(&self, sandbox_id: &str) -> bool {
        self.app.expire_token(sandbox_id)
    }

    /// Stops serving, kills every sandbox process (their records and files stay; running
    /// sandboxes are recorded as paused), and removes the temporary data directory if one was
    /// created. Dropping the server does the same.
    pub fn shutdown(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        // release the data directory for a next backend
        self.lock_file.take();
        if self.temporary {
            self.temporary = false;
            // its sandboxes' id ranges are free again
            self.app.host.ids.release_all_except(&[]);
            let _ = std::fs::remove_dir_all(&self.data_dir);
        }
    }
}

/// Runs `f` to completion on a thread of its own with a runtime of its own (the methods of
/// [`LocalServer`] that reach into a sandbox block their caller, which may be anywhere).
fn on_own_thread<T: Send + 'static>(
    f: impl std::future::Future<Output = std::io::Result<T>> + Send + 'static,
) -> std::io::Result<T> {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(f)
    })
    .join()
    .map_err(|_| std::io::Error::other("the backend's helper thread panicked"))?
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        self.stop_now();
    }
}

/// The server thread: serves until told to stop, then kills the sandboxes.
fn run(
    runtime: tokio::runtime::Runtime,
    app: Arc<App>,
    listeners: [std::net::TcpListener; 3],
    limits: http::Limits,
    mut stop: watch::Receiver<bool>,
    ready: std::sync::mpsc::Sender<Result<(), String>>,
) {
    runtime.block_on(async {
        let listeners = (|| -> std::io::Result<_> {
            let [c, d, p] = listeners;
            Ok((
                tokio::net::TcpListener::from_std(c)?,
                tokio::net::TcpListener::from_std(d)?,
                tokio::net::TcpListener::from_std(p)?,
            ))
        })();
        let (cl, dl, pl) = match listeners {
            Ok(l) => l,
            Err(e) => {
                let _ = ready.send(Err(format!("cannot register the listeners: {e}")));
                return;
            }
        };
        let control = tokio::spawn(http::serve(
            cl,
            http::control_plane(app.clone()),
            stop.clone(),
            limits,
        ));
        let data = tokio::spawn(http::serve(
            dl,
            http::data_plane(app.clone()),
            stop.clone(),
            limits,
        ));
        let previews = tokio::spawn(preview_proxy::serve(pl, app.clone(), stop.clone(), limits));
        let reaper_app = app.clone();
        let mut reaper_stop = stop.clone();
        let reaper = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = tick.tick() => reaper_app.reap(),
                    _ = reaper_stop.changed() => return,
                }
            }
        });
        let _ = ready.send(Ok(()));
        while !*stop.borrow() {
            if stop.changed().await.is_err() {
                break;
            }
        }
        let _ = control.await;
        let _ = data.await;
        let _ = previews.await;
        let _ = reaper.await;
        app.shutdown().await;
    });
    runtime.shutdown_timeout(Duration::from_secs(2));
}

#[cfg(test)]
mod tests {
    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn public_types_are_send_sync() {
        assert_send_sync::<super::LocalServer>();
        assert_send_sync::<super::LocalServerBuilder>();
        assert_send_sync::<super::super::LocalError>();
        let key = super::random_api_key();
        assert!(key.starts_with("ss_live_") && key.len() == 40, "{key}");
        let dbg = format!(
            "{:?}",
            super::LocalServer::builder().api_key("ss_live_topsecret")
        );
        assert!(!dbg.contains("topsecret"), "{dbg}");
    }

    #[test]
    fn registry_mirror_option_is_checked_and_kept() {
        for bad in [
            "ftp://mirror.example",
            "http://user:secret@mirror.example",
            "mirror.example:5000",
            "http://mirror.example/?ns=docker.io",
            "",
        ] {
            match super::parse_registry_mirror(bad) {
                Err(super::LocalError::InvalidOption(m)) => {
                    assert!(m.starts_with("registry_mirror"), "{m}");
                    assert!(!m.contains("secret"), "{m}");
                }
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        let e = super::LocalServer::builder()
            .registry_mirror("ftp://mirror.example")
            .start()
            .map(|_| ())
            .unwrap_err();
        assert!(matches!(e, super::LocalError::InvalidOption(_)), "{e:?}");
        let server = super::LocalServer::builder()
            .registry_mirror("http://127.0.0.1:5000")
            .start()
            .unwrap();
        assert_eq!(server.registry_mirror(), Some("http://127.0.0.1:5000/"));
        server.shutdown();
        let server = super::LocalServer::builder().start().unwrap();
        assert_eq!(server.registry_mirror(), None);
    }
}
