//! An HTTP/1.1 upstream in a network namespace of its own (a real remote host for egress
//! tests and benchmarks). Shared by the test targets and `examples/bench_egress.rs`.
#![allow(dead_code)]
// `setns` moves the upstream's thread into its network namespace.
#![allow(unsafe_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

/// One request an [`Upstream`] received.
#[derive(Clone, Debug)]
pub struct SeenRequest {
    pub method: String,
    pub path: String,
    /// Lower-cased names.
    pub headers: Vec<(String, String)>,
}

impl SeenRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// An HTTP/1.1 server in a network namespace of its own, reached from the host over a veth
/// pair at `ip:80`: a real remote host for egress tests. `GET /bytes/N` answers N bytes;
/// anything else a small JSON body naming the path (never echoing headers).
pub struct Upstream {
    pub ip: std::net::Ipv4Addr,
    netns: String,
    host_if: String,
    seen: Arc<Mutex<Vec<SeenRequest>>>,
}

fn run_ip(args: &[&str]) {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Upstream {
    pub fn start() -> Upstream {
        Upstream::start_in(std::net::Ipv4Addr::new(10, 88, 0, 0), 16384)
    }

    /// An upstream on a /30 link inside the network starting at `net` that holds `slots` /30s
    /// (the host's end is the first address of the /30, the upstream the second). The /30 is
    /// spread by pid so that concurrent test binaries differ.
    pub fn start_in(net: std::net::Ipv4Addr, slots: u32) -> Upstream {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let slot = (pid.wrapping_mul(64).wrapping_add(n)) % slots;
        let base = u32::from(net) + slot * 4;
        let host_ip = std::net::Ipv4Addr::from(base + 1);
        let ip = std::net::Ipv4Addr::from(base + 2);
        let netns = format!("ssup-{pid}-{n}");
        let (ha, hb) = (
            format!("ssu{}x{n}a", pid % 100000),
            format!("ssu{}x{n}b", pid % 100000),
        );
        run_ip(&["netns", "add", &netns]);
        run_ip(&[
            "link", "add", &ha, "type", "veth", "peer", "name", &hb, "netns", &netns,
        ]);
        run_ip(&["addr", "add", &format!("{host_ip}/30"), "dev", &ha]);
        run_ip(&["link", "set", &ha, "up"]);
        run_ip(&["-n", &netns, "addr", "add", &format!("{ip}/30"), "dev", &hb]);
        run_ip(&["-n", &netns, "link", "set", &hb, "up"]);
        run_ip(&["-n", &netns, "link", "set", "lo", "up"]);
        let seen: Arc<Mutex<Vec<SeenRequest>>> = Arc::default();
        let upstream = Upstream {
            ip,
            netns,
            host_if: ha,
            seen,
        };
        upstream.listen(80, None);
        upstream
    }

    /// Also serves HTTPS on port 443 with this certificate chain and key (PEM), e.g. a leaf
    /// issued by a test CA the backend is told to trust.
    pub fn serve_tls(&self, chain_pem: &str, key_pem: &str) {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(chain_pem.as_bytes())
                .map(|c| c.expect("certificate PEM"))
                .collect();
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("key PEM");
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("protocols")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("server certificate");
        self.listen(443, Some(Arc::new(config)));
    }

    fn listen(&self, port: u16, tls: Option<Arc<rustls::ServerConfig>>) {
        let (tx, rx) = std::sync::mpsc::channel();
        let ns_path = format!("/run/netns/{}", self.netns);
        let thread_seen = self.seen.clone();
        let ip = self.ip;
        std::thread::spawn(move || {
            use std::os::fd::AsRawFd;
            let ns = std::fs::File::open(&ns_path).expect("open netns");
            assert_eq!(enter_net_namespace(ns.as_raw_fd()), 0, "setns");
            let listener = TcpListener::bind((ip, port)).expect("bind upstream");
            tx.send(()).unwrap();
            for conn in listener.incoming().flatten() {
                let seen = thread_seen.clone();
                let tls = tls.clone();
                std::thread::spawn(move || match tls {
                    None => serve_upstream(conn, &seen),
                    Some(config) => {
                        let Ok(session) = rustls::ServerConnection::new(config) else {
                            return;
                        };
                        serve_upstream(rustls::StreamOwned::new(session, conn), &seen);
                    }
                });
            }
        });
        rx.recv().expect("upstream started");
    }

    /// Gives the host another address (on its end of the link; gone with the upstream).
    pub fn add_host_address(&self, ip: std::net::Ipv4Addr) {
        run_ip(&["addr", "add", &format!("{ip}/32"), "dev", &self.host_if]);
    }

    /// Requests received so far.
    pub fn requests(&self) -> Vec<SeenRequest> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.netns])
            .output();
    }
}

extern "C" {
    fn setns(fd: i32, nstype: i32) -> i32;
}

/// `setns(fd, CLONE_NEWNET)`: moves the calling thread (only) into a network namespace.
fn enter_net_namespace(fd: i32) -> i32 {
    const CLONE_NEWNET: i32 = 0x4000_0000;
    // SAFETY: a system call with plain integer arguments, on a descriptor the caller keeps
    // open; it changes nothing but the calling thread's network namespace.
    unsafe { setns(fd, CLONE_NEWNET) }
}

/// One HTTP/1.1 request as read off the wire.
pub struct RawRequest {
    pub method: String,
    pub target: String,
    /// Names as sent.
    pub headers: Vec<(String, String)>,
    /// `Content-Length` bytes.
    pub body: Vec<u8>,
}

/// Reads one request from `reader`; `None` at end of input.
pub fn read_request<R: BufRead>(reader: &mut R) -> Option<RawRequest> {
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_owned();
    let target = parts.next().unwrap_or("").to_owned();
    let mut headers = Vec::new();
    let mut len = 0usize;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 {
            return None;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().unwrap_or(0);
            }
            headers.push((k.trim().to_owned(), v.trim().to_owned()));
        }
    }
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).ok()?;
    Some(RawRequest {
        method,
        target,
        headers,
        body,
    })
}

fn serve_upstream<S: Read + Write>(conn: S, seen: &Mutex<Vec<SeenRequest>>) {
    let mut reader = BufReader::new(conn);
    while let Some(req) = read_request(&mut reader) {
        let (method, path) = (req.method, req.target);
        let headers = req
            .headers
            .into_iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v))
            .collect();
        seen.lock().unwrap().push(SeenRequest {
            method: method.clone(),
            path: path.clone(),
            headers,
        });
        let ok = if let Some(n) = path.strip_prefix("/bytes/") {
            let n: u64 = n.parse().unwrap_or(0);
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: {n}\r\n\r\n"
            );
            let chunk = vec![b'x'; 256 * 1024];
            let mut left = n;
            let mut ok = reader.get_mut().write_all(head.as_bytes()).is_ok();
            while ok && left > 0 {
                let k = left.min(chunk.len() as u64) as usize;
                ok = reader.get_mut().write_all(&chunk[..k]).is_ok();
                left -= k as u64;
            }
            ok
        } else {
            let body = format!("{{\"ok\":true,\"method\":\"{method}\",\"path\":\"{path}\"}}");
            let resp = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            reader.get_mut().write_all(resp.as_bytes()).is_ok()
        };
        if !ok || reader.get_mut().flush().is_err() {
            return;
        }
    }
}
