//! Helpers shared by both test targets (no flavour-specific code here).
#![allow(dead_code)]

use std::io::{BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use superserve::local::LocalServer;
use superserve::Config;

/// A loopback registry (Debian's `docker-registry`) and image builders for the template
/// tests: the OCI puller's own test helpers, compiled here as a module of their own.
#[path = "../../src/local/oci/testutil.rs"]
pub mod registry;

/// Where the end-to-end suite runs: a fresh local backend (the default), or the hosted
/// service when `SUPERSERVE_TEST_TARGET=hosted` and `SUPERSERVE_API_KEY` are set.
pub enum Target {
    /// A local backend started for this test.
    Local(LocalServer),
    /// The hosted service, configured from the environment.
    Hosted(Config),
}

/// `true` when the suite runs against the hosted service.
pub fn hosted() -> bool {
    std::env::var("SUPERSERVE_TEST_TARGET").as_deref() == Ok("hosted")
}

/// The target of a test that needs nothing but the API.
pub fn target() -> Target {
    if hosted() {
        let config = Config::from_env().unwrap_or_else(|e| {
            panic!("SUPERSERVE_TEST_TARGET=hosted needs SUPERSERVE_API_KEY: {e}")
        });
        Target::Hosted(config)
    } else {
        Target::Local(server())
    }
}

impl Target {
    /// The local backend, when the test runs against one.
    pub fn local(&self) -> Option<&LocalServer> {
        match self {
            Target::Local(s) => Some(s),
            Target::Hosted(_) => None,
        }
    }
}

/// Anything the suite can get an SDK configuration from.
pub trait SdkConfig {
    /// The configuration.
    fn sdk_config(&self) -> Config;
}

impl SdkConfig for LocalServer {
    fn sdk_config(&self) -> Config {
        self.config()
    }
}

impl SdkConfig for Target {
    fn sdk_config(&self) -> Config {
        match self {
            Target::Local(s) => s.config(),
            Target::Hosted(c) => c.clone(),
        }
    }
}

impl SdkConfig for Config {
    fn sdk_config(&self) -> Config {
        self.clone()
    }
}

/// Skips the rest of a test (with a printed reason) when the suite runs against the hosted
/// service, for tests that need the local backend's fault injection, request journal, data
/// directory or restarts.
macro_rules! local_only {
    ($why:expr) => {
        if $crate::common::hosted() {
            eprintln!("skipped against the hosted service: needs {}", $why);
            return;
        }
    };
}

/// A fresh local backend (its own data dir, ports and key).
pub fn server() -> LocalServer {
    LocalServer::start().unwrap_or_else(|e| panic!("local backend failed to start: {e}"))
}

/// An SDK configuration for a target or a local backend.
pub fn config(target: &impl SdkConfig) -> Config {
    target.sdk_config()
}

/// An SDK configuration for `server` with another retry policy.
pub fn config_with_retry(server: &LocalServer, policy: superserve::RetryPolicy) -> Config {
    Config::builder()
        .api_key(server.api_key())
        .base_url(server.base_url())
        .sandbox_url(server.sandbox_url())
        .retry_policy(policy)
        .build()
        .expect("config")
}

/// What a scripted server answers to one request.
#[derive(Clone)]
pub enum Reply {
    /// A raw HTTP response (status line, headers, body); `Content-Length` is added.
    Http {
        status: u16,
        headers: Vec<(&'static str, String)>,
        body: Vec<u8>,
    },
    /// A streamed body: the head, then these chunks (chunked encoding), then hang.
    StreamThenHang {
        head: Vec<(&'static str, String)>,
        chunks: Vec<String>,
    },
    /// Read the request, then never answer.
    Hang,
}

impl Reply {
    pub fn json(status: u16, body: &str) -> Reply {
        Reply::Http {
            status,
            headers: vec![("content-type", "application/json".into())],
            body: body.as_bytes().to_vec(),
        }
    }
    /// A create (201) or activate (200) answer: an active sandbox `id` with its access token
    /// and, optionally, a routing hint.
    pub fn sandbox(status: u16, id: &str, token: &str, hint: Option<&str>) -> Reply {
        let hint = hint.map_or(String::new(), |h| format!(r#","routing_hint":"{h}""#));
        Reply::json(
            status,
            &format!(
                r#"{{"id":"{id}","status":"active","created_at":"2026-01-01T00:00:00Z","access_token":"{token}"{hint}}}"#
            ),
        )
    }
    pub fn text(status: u16, content_type: &str, body: &str) -> Reply {
        Reply::Http {
            status,
            headers: vec![("content-type", content_type.to_owned())],
            body: body.as_bytes().to_vec(),
        }
    }
}

/// One request the scripted server saw.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A tiny HTTP/1.1 server answering a script of replies, one per request, for what a real
/// server cannot be made to do on cue (malformed bodies, HTML error pages, stalls).
pub struct Scripted {
    pub url: String,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl Scripted {
    pub fn start(script: Vec<Reply>) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        let script = Arc::new(Mutex::new(script.into_iter()));
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let seen = seen2.clone();
                let script = script.clone();
                std::thread::spawn(move || serve(conn, &seen, &script));
            }
        });
        Scripted { url, seen }
    }

    pub fn config(&self) -> Config {
        Config::builder()
            .api_key("ss_live_scripted0000000000000000000000")
            .base_url(&self.url)
            .sandbox_url(&self.url)
            .timeouts(superserve::Timeouts::default().request(Duration::from_secs(2)))
            .build()
            .expect("config")
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The requests seen so far as `"METHOD target"`.
    pub fn calls(&self) -> Vec<String> {
        self.requests()
            .iter()
            .map(|r| format!("{} {}", r.method, r.target))
            .collect()
    }
}

/// A fresh directory path under the system temp dir (not created), unique per process and
/// call: `<prefix>-<pid>-<timestamp>`.
pub fn temp_path(prefix: &str) -> std::path::PathBuf {
    let stamp = superserve::Timestamp::from_system_time(std::time::SystemTime::now())
        .as_str()
        .replace([':', '.'], "");
    std::env::temp_dir().join(format!("{prefix}-{}-{stamp}", std::process::id()))
}

fn serve(conn: TcpStream, seen: &Mutex<Vec<Seen>>, script: &Mutex<std::vec::IntoIter<Reply>>) {
    let mut reader = BufReader::new(conn.try_clone().expect("clone"));
    let mut conn = conn;
    while let Some(req) = upstream::read_request(&mut reader) {
        seen.lock().unwrap().push(Seen {
            method: req.method,
            target: req.target,
            headers: req.headers,
            body: req.body,
        });
        let reply = script.lock().unwrap().next().unwrap_or(Reply::json(
            500,
            r#"{"error":{"code":"internal_error","message":"script exhausted"}}"#,
        ));
        match reply {
            Reply::Http {
                status,
                headers,
                body,
            } => {
                let mut out = format!("HTTP/1.1 {status} X\r\ncontent-length: {}\r\n", body.len());
                for (k, v) in headers {
                    out.push_str(&format!("{k}: {v}\r\n"));
                }
                out.push_str("\r\n");
                let _ = conn.write_all(out.as_bytes());
                let _ = conn.write_all(&body);
            }
            Reply::StreamThenHang { head, chunks } => {
                let mut out = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n".to_owned();
                for (k, v) in head {
                    out.push_str(&format!("{k}: {v}\r\n"));
                }
                out.push_str("\r\n");
                let _ = conn.write_all(out.as_bytes());
                for c in chunks {
                    let _ = conn.write_all(format!("{:x}\r\n{c}\r\n", c.len()).as_bytes());
                }
                let _ = conn.flush();
                std::thread::sleep(Duration::from_secs(60));
                return;
            }
            Reply::Hang => {
                std::thread::sleep(Duration::from_secs(60));
                return;
            }
        }
    }
}

/// Names of the entries in a ZIP archive's central directory.
pub fn zip_entries(zip: &[u8]) -> Vec<String> {
    let mut names = Vec::new();
    let mut i = 0;
    while i + 46 <= zip.len() {
        if zip[i..i + 4] == [0x50, 0x4b, 0x01, 0x02] {
            let n = u16::from_le_bytes([zip[i + 28], zip[i + 29]]) as usize;
            let m = u16::from_le_bytes([zip[i + 30], zip[i + 31]]) as usize;
            let k = u16::from_le_bytes([zip[i + 32], zip[i + 33]]) as usize;
            if i + 46 + n <= zip.len() {
                names.push(String::from_utf8_lossy(&zip[i + 46..i + 46 + n]).into_owned());
            }
            i += 46 + n + m + k;
        } else {
            i += 1;
        }
    }
    names
}

/// Deterministic pseudo-random bytes.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A local backend whose sandboxes may reach [`Upstream`]s (10.88.0.0/16).
pub fn egress_server() -> LocalServer {
    let server = LocalServer::builder()
        .allow_private_destination("10.88.0.0/16")
        .start()
        .unwrap_or_else(|e| panic!("local backend failed to start: {e}"));
    assert!(
        server.egress_available(),
        "these tests need sandbox egress (nf_tables NAT in the kernel)"
    );
    server
}

pub mod preview;
mod upstream;
pub use upstream::Upstream;

/// The `superserve-local` binary running as a child process (for what an in-process backend
/// cannot show, such as a descriptor limit of its own). Stopped with SIGTERM on drop.
pub struct Backend {
    child: std::process::Child,
    pub base_url: String,
    pub sandbox_url: String,
    pub api_key: String,
    pub preview_url: String,
}

impl Backend {
    /// Starts `superserve-local ARGS` with at most `max_fds` open descriptors (`ulimit -n`).
    pub fn start_with_fd_limit(max_fds: u32, args: &[&str]) -> Backend {
        use std::io::BufRead;
        let bin = env!("CARGO_BIN_EXE_superserve-local");
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("ulimit -n {max_fds} && exec \"$0\" \"$@\""))
            .arg(bin)
            .args(args)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start superserve-local");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = std::io::BufReader::new(stdout).lines();
        let mut var = |name: &str| -> String {
            let line = lines
                .next()
                .and_then(Result::ok)
                .unwrap_or_else(|| panic!("superserve-local printed no {name}"));
            line.strip_prefix(&format!("{name}="))
                .unwrap_or_else(|| panic!("expected {name}=..., got {line:?}"))
                .to_owned()
        };
        let (base_url, sandbox_url, api_key, preview_url) = (
            var("SUPERSERVE_BASE_URL"),
            var("SUPERSERVE_SANDBOX_URL"),
            var("SUPERSERVE_API_KEY"),
            var("SUPERSERVE_PREVIEW_URL"),
        );
        Backend {
            child,
            base_url,
            sandbox_url,
            api_key,
            preview_url,
        }
    }

    pub fn config(&self) -> Config {
        Config::builder()
            .api_key(&self.api_key)
            .base_url(&self.base_url)
            .sandbox_url(&self.sandbox_url)
            .preview_url(&self.preview_url)
            .build()
            .expect("config")
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        // a clean stop: the backend kills its sandboxes on SIGTERM
        let _ = std::process::Command::new("sh")
            .args(["-c", "kill -TERM \"$0\"", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// The `host:port` of a URL such as `http://127.0.0.1:8080`.
pub fn authority(url: &str) -> String {
    url.trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned()
}

/// A fresh access token for sandbox `id` (control plane, raw HTTP).
pub fn access_token(base_url: &str, api_key: &str, id: &str) -> String {
    let (status, resp) = raw_http(
        &authority(base_url),
        &format!("POST /sandboxes/{id}/activate HTTP/1.1\r\nhost: x\r\nx-api-key: {api_key}"),
        b"",
        Duration::from_secs(60),
    );
    assert_eq!(status, 200, "{resp}");
    let body = resp.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    v["access_token"].as_str().unwrap().to_owned()
}

/// A data-plane request for sandbox `id` with `token` (raw HTTP).
pub fn data_request(method_path: &str, id: &str, token: &str) -> String {
    format!(
        "{method_path} HTTP/1.1\r\nhost: x\r\nx-superserve-sandbox-id: {id}\r\nx-access-token: {token}\r\ncontent-type: application/json"
    )
}

/// Sends `request` (head and body) to `addr` and closes the connection `after` later,
/// without reading the answer.
pub fn send_and_hang_up(addr: &str, request: &str, after: Duration) {
    use std::io::Write;
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    std::thread::sleep(after);
    drop(s);
}

/// One HTTP/1.1 exchange on a fresh connection (`Connection: close`): `request` is the
/// request line and headers without the blank line; returns the status (0 when the
/// connection ended without a response) and the raw response. Waits at most `wait` for it.
pub fn raw_http(addr: &str, request: &str, body: &[u8], wait: Duration) -> (u16, String) {
    use std::io::Read;
    let Ok(mut s) = TcpStream::connect(addr) else {
        return (0, String::new());
    };
    s.set_read_timeout(Some(wait)).expect("read timeout");
    let head = format!(
        "{request}\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    if s.write_all(head.as_bytes())
        .and_then(|()| s.write_all(body))
        .is_err()
    {
        return (0, String::new());
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, text)
}
