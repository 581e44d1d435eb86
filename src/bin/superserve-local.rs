//! `superserve-local`: the local Superserve backend as a standalone server.
//!
//! ```text
//! eval "$(sudo superserve-local --port 8080 --data-dir /var/lib/superserve-local | head -4)"
//! ```

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::process::ExitCode;

use superserve::local::LocalServer;

const USAGE: &str = "\
superserve-local: a Superserve-compatible backend that runs sandboxes on this machine

USAGE:
    superserve-local [--port N] [--data-dir DIR] [--api-key KEY] [--bind ADDR]
                     [--allow-private CIDR]... [--dns-host NAME=IP]... [--upstream-ca FILE]...
                     [--registry-mirror URL]

OPTIONS:
    --port N          control-plane port; the data plane listens on N+1, the preview proxy
                      on N+2 (default: random ports)
    --data-dir DIR    keep state and sandbox files in DIR across restarts
                      (default: a temporary directory removed on exit)
    --api-key KEY     the API key clients must send (default: a random ss_live_ key)
    --bind ADDR       address to listen on (default: 127.0.0.1)
    --allow-private CIDR
                      let sandboxes reach this IPv4 network although it is private,
                      special-purpose (RFC 6890), the host's own or one the host is on
                      (always blocked otherwise; each sandbox's own rules still apply)
    --dns-host NAME=IP
                      make the sandboxes' DNS answer NAME with IP
    --upstream-ca FILE
                      trust these PEM roots for brokered HTTPS upstreams (besides the host's)
    --registry-mirror URL
                      pull Docker Hub images for template builds from this registry first
                      (falling back to Docker Hub), as Docker's registry-mirrors
    -h, --help        print this help

On start it prints SUPERSERVE_BASE_URL, SUPERSERVE_SANDBOX_URL, SUPERSERVE_API_KEY and
SUPERSERVE_PREVIEW_URL lines (for `eval`), then serves until SIGINT or SIGTERM, then kills every sandbox process and exits.
Sandboxes that were running are paused on the next start with the same --data-dir.
Needs root on Linux (namespaces, overlayfs, cgroup v1 freezer); sandbox egress needs
nf_tables NAT in the kernel.
";

struct Args {
    port: Option<u16>,
    data_dir: Option<PathBuf>,
    api_key: Option<String>,
    bind: Option<IpAddr>,
    allow_private: Vec<String>,
    dns_hosts: Vec<(String, Ipv4Addr)>,
    upstream_cas: Vec<PathBuf>,
    registry_mirror: Option<String>,
}

fn parse_args() -> Result<Option<Args>, String> {
    let mut args = Args {
        port: None,
        data_dir: None,
        api_key: None,
        bind: None,
        allow_private: Vec::new(),
        dns_hosts: Vec::new(),
        upstream_cas: Vec::new(),
        registry_mirror: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        let mut value = |what: &str| -> Result<String, String> {
            inline
                .clone()
                .or_else(|| it.next())
                .ok_or_else(|| format!("{name} needs {what}"))
        };
        match name.as_str() {
            "-h" | "--help" => return Ok(None),
            "--port" => {
                let v = value("a port number")?;
                args.port = Some(v.parse().map_err(|_| format!("invalid port {v:?}"))?);
            }
            "--data-dir" => args.data_dir = Some(PathBuf::from(value("a directory")?)),
            "--api-key" => args.api_key = Some(value("a key")?),
            "--bind" => {
                let v = value("an IP address")?;
                args.bind = Some(v.parse().map_err(|_| format!("invalid address {v:?}"))?);
            }
            "--allow-private" => args.allow_private.push(value("a CIDR")?),
            "--dns-host" => {
                let v = value("NAME=IP")?;
                let parsed = v
                    .split_once('=')
                    .and_then(|(n, ip)| Some((n.to_owned(), ip.parse::<Ipv4Addr>().ok()?)))
                    .filter(|(n, _)| !n.is_empty());
                args.dns_hosts
                    .push(parsed.ok_or_else(|| format!("--dns-host wants NAME=IPv4, got {v:?}"))?);
            }
            "--upstream-ca" => args.upstream_cas.push(PathBuf::from(value("a PEM file")?)),
            "--registry-mirror" => args.registry_mirror = Some(value("a URL")?),
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    Ok(Some(args))
}

/// SIGINT and SIGTERM streams, registered before the server starts so that an early Ctrl-C
/// still leads to a clean shutdown.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn register() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    async fn wait(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(Some(a)) => a,
        Ok(None) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("superserve-local: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("superserve-local: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut signals = match rt.block_on(async { Signals::register() }) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("superserve-local: cannot listen for signals: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut builder = LocalServer::builder();
    if let Some(p) = args.port {
        builder = builder.port(p);
    }
    if let Some(d) = &args.data_dir {
        builder = builder.data_dir(d);
    }
    if let Some(k) = args.api_key {
        builder = builder.api_key(k);
    }
    if let Some(b) = args.bind {
        builder = builder.bind(b);
    }
    if let Some(m) = args.registry_mirror {
        builder = builder.registry_mirror(m);
    }
    for c in args.allow_private {
        builder = builder.allow_private_destination(c);
    }
    for (name, ip) in args.dns_hosts {
        builder = builder.dns_host(name, ip);
    }
    for path in &args.upstream_cas {
        match std::fs::read(path) {
            Ok(pem) => builder = builder.upstream_root_ca(pem),
            Err(e) => {
                eprintln!("superserve-local: --upstream-ca {}: {e}", path.display());
                return ExitCode::from(2);
            }
        }
    }
    let server = match builder.start() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("superserve-local: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "SUPERSERVE_BASE_URL={}", server.base_url());
    let _ = writeln!(out, "SUPERSERVE_SANDBOX_URL={}", server.sandbox_url());
    let _ = writeln!(out, "SUPERSERVE_API_KEY={}", server.api_key());
    let _ = writeln!(out, "SUPERSERVE_PREVIEW_URL={}", server.preview_url());
    let _ = out.flush();
    drop(out);
    eprintln!(
        "superserve-local: serving (data dir {}); Ctrl-C to stop",
        server.data_dir().display()
    );
    let sig = rt.block_on(signals.wait());
    eprintln!("superserve-local: {sig}: shutting down");
    server.shutdown();
    eprintln!("superserve-local: stopped");
    ExitCode::SUCCESS
}
