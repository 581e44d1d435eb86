//! Clients of the local backend's preview proxy for the preview tests: raw HTTP/1.1 over a
//! std socket (the test names the preview in `Host`, as a browser resolving `*.localhost`
//! would), curl (which resolves `*.localhost` itself), a WebSocket client, and the apps the
//! tests start inside sandboxes.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use superserve::local::LocalServer;

/// The preview proxy of a local backend.
pub struct Proxy {
    /// `127.0.0.1:P`.
    pub addr: String,
    /// `P`.
    pub port: u16,
}

impl Proxy {
    pub fn of(server: &LocalServer) -> Proxy {
        let url = server.preview_url();
        let port: u16 = url
            .rsplit(':')
            .next()
            .and_then(|p| p.trim_end_matches('/').parse().ok())
            .unwrap_or_else(|| panic!("no port in the preview URL {url:?}"));
        Proxy {
            addr: format!("127.0.0.1:{port}"),
            port,
        }
    }

    /// The `Host` of port `port` of sandbox `id`.
    pub fn host(&self, port: u16, id: &str) -> String {
        format!("{port}-{id}.localhost:{}", self.port)
    }

    /// One request on a fresh connection to the proxy.
    pub fn send(
        &self,
        method: &str,
        host: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Resp {
        let mut s = TcpStream::connect(&self.addr).expect("connect to the preview proxy");
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut head =
            format!("{method} {target} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n");
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
        s.write_all(head.as_bytes()).unwrap();
        s.write_all(body).unwrap();
        read_response(&mut BufReader::new(s))
    }

    /// `GET target` of port `port` of sandbox `id` with `headers`.
    pub fn get(&self, port: u16, id: &str, target: &str, headers: &[(&str, &str)]) -> Resp {
        self.send("GET", &self.host(port, id), target, headers, b"")
    }
}

/// A response of the proxy.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    /// Lower-cased names.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The code of a proxy error page (`X-Superserve-Preview-Error`).
    pub fn error_code(&self) -> Option<&str> {
        self.header("x-superserve-preview-error")
    }
}

/// Reads a response head and its body (content-length, chunked, or up to the end).
pub fn read_response(r: &mut impl BufRead) -> Resp {
    let (status, headers) = read_head(r);
    let body = read_body(r, &headers);
    Resp {
        status,
        headers,
        body,
    }
}

/// Reads a response head: the status and the headers (names lower-cased).
pub fn read_head(r: &mut impl BufRead) -> (u16, Vec<(String, String)>) {
    let mut line = String::new();
    r.read_line(&mut line).expect("status line");
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {line:?}"));
    let mut headers = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line).expect("header line");
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':').expect("header");
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
    }
    (status, headers)
}

fn read_body(r: &mut impl BufRead, headers: &[(String, String)]) -> Vec<u8> {
    let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let mut body = Vec::new();
    if let Some(n) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
        body.resize(n, 0);
        r.read_exact(&mut body).expect("body");
    } else if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        while let Some(chunk) = read_chunk(r) {
            body.extend(chunk);
        }
    } else {
        let _ = r.read_to_end(&mut body);
    }
    body
}

/// Reads one chunk of a chunked body (`None` at the last one).
pub fn read_chunk(r: &mut impl BufRead) -> Option<Vec<u8>> {
    let mut line = String::new();
    r.read_line(&mut line).expect("chunk size");
    let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
        .unwrap_or_else(|_| panic!("bad chunk size {line:?}"));
    if size == 0 {
        line.clear();
        let _ = r.read_line(&mut line);
        return None;
    }
    let mut chunk = vec![0u8; size + 2];
    r.read_exact(&mut chunk).expect("chunk");
    chunk.truncate(size);
    Some(chunk)
}

/// Runs curl on this machine (it resolves `*.localhost` names to loopback by itself): its
/// stdout. `-s` is added.
pub fn curl(args: &[&str]) -> String {
    let out = std::process::Command::new("curl")
        .arg("-s")
        .arg("--max-time")
        .arg("30")
        .args(args)
        .output()
        .expect("curl must be installed (Debian package `curl`)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A WebSocket client connected through the proxy to `port` of sandbox `id` (the status of
/// the handshake's answer when it is refused).
pub fn websocket(
    proxy: &Proxy,
    port: u16,
    id: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<tokio_tungstenite::tungstenite::WebSocket<TcpStream>, u16> {
    use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest, http::HeaderValue};
    let url = format!("ws://{}{path}", proxy.host(port, id));
    let mut req = url.into_client_request().unwrap();
    for (k, v) in headers {
        req.headers_mut().insert(
            tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    let stream = TcpStream::connect(&proxy.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    match tungstenite::client::client(req, stream) {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(resp))) => {
            Err(resp.status().as_u16())
        }
        Err(e) => panic!("WebSocket handshake through the preview proxy: {e}"),
    }
}

/// A small HTTP/1.1 app (Python standard library) for the preview tests, started with
/// `python3 /srv/app.py PORT`:
/// * `GET /echo…` answers the request line and headers as the app received them;
/// * `GET /bytes/N` answers N bytes (a repeating pattern);
/// * `GET /slow` answers a chunked body: `first`, then, once `/tmp/go` exists, `second`;
/// * `POST /sha256` answers `<length> <sha256>` of the (streamed) request body;
/// * `GET /moved` redirects to `/echo`; anything else answers `app-root`.
pub const APP: &str = r#"
import hashlib, os, sys, time
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler

PATTERN = bytes(range(256)) * 256

class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, *a):
        pass

    def reply(self, code, body, extra=()):
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def chunk(self, data):
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def do_GET(self):
        if self.path.startswith("/echo"):
            lines = [self.requestline] + ["%s: %s" % kv for kv in self.headers.items()]
            return self.reply(200, "\n".join(lines).encode())
        if self.path.startswith("/bytes/"):
            n = int(self.path[len("/bytes/"):])
            self.send_response(200)
            self.send_header("Content-Length", str(n))
            self.end_headers()
            while n > 0:
                part = PATTERN[: min(n, len(PATTERN))]
                self.wfile.write(part)
                n -= len(part)
            return
        if self.path == "/slow":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.chunk(b"first\n")
            for _ in range(6000):
                if os.path.exists("/tmp/go"):
                    break
                time.sleep(0.01)
            self.chunk(b"second\n")
            self.wfile.write(b"0\r\n\r\n")
            return
        if self.path == "/moved":
            return self.reply(302, b"", [("Location", "/echo")])
        return self.reply(200, b"app-root")

    def do_POST(self):
        h, n = hashlib.sha256(), 0
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    break
                data = self.rfile.read(size)
                self.rfile.read(2)
                h.update(data)
                n += len(data)
        else:
            left = int(self.headers.get("Content-Length", "0"))
            while left > 0:
                data = self.rfile.read(min(left, 65536))
                h.update(data)
                n += len(data)
                left -= len(data)
        self.reply(200, ("%d %s" % (n, h.hexdigest())).encode())

ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"#;

/// A WebSocket echo server (Python standard library), `python3 /srv/ws.py PORT`: its first
/// message says whether the handshake carried a preview token header
/// (`token-header:absent`), then it echoes every text or binary message, prefixed `echo:`.
pub const WS_ECHO: &str = r#"
import base64, hashlib, socketserver, struct, sys

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

def send(sock, opcode, payload):
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 127, n)
    sock.sendall(head + payload)

def recv_exact(f, n):
    data = f.read(n)
    if len(data) < n:
        raise EOFError
    return data

class H(socketserver.StreamRequestHandler):
    def handle(self):
        headers = {}
        self.rfile.readline()
        while True:
            line = self.rfile.readline().strip()
            if not line:
                break
            k, _, v = line.partition(b":")
            headers[k.strip().lower()] = v.strip()
        key = headers.get(b"sec-websocket-key", b"")
        accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
        self.wfile.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
        )
        seen = b"present" if b"x-superserve-preview-token" in headers else b"absent"
        send(self.request, 1, b"token-header:" + seen)
        try:
            while True:
                b1, b2 = recv_exact(self.rfile, 2)
                opcode, n = b1 & 0x0F, b2 & 0x7F
                if n == 126:
                    n = struct.unpack("!H", recv_exact(self.rfile, 2))[0]
                elif n == 127:
                    n = struct.unpack("!Q", recv_exact(self.rfile, 8))[0]
                mask = recv_exact(self.rfile, 4) if b2 & 0x80 else b"\0\0\0\0"
                data = bytes(c ^ mask[i % 4] for i, c in enumerate(recv_exact(self.rfile, n)))
                if opcode == 8:
                    send(self.request, 8, data[:2])
                    return
                if opcode == 9:
                    send(self.request, 10, data)
                elif opcode in (1, 2):
                    send(self.request, opcode, b"echo:" + data)
        except EOFError:
            return

class S(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True

S(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"#;

/// Starts headless Chromium with the (fresh) profile directory `profile` and `args`, its output
/// as `stdout` and `stderr` say. A missing `chromium` is a failure naming the package.
pub fn spawn_chromium(
    profile: &std::path::Path,
    args: &[&str],
    stdout: std::process::Stdio,
    stderr: std::process::Stdio,
) -> std::process::Child {
    let child = std::process::Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .stdout(stdout)
        .stderr(stderr)
        .spawn();
    match child {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "this test needs headless Chromium: install Debian's `chromium` package \
             (apt-get install chromium)"
        ),
        Err(e) => panic!("cannot start chromium: {e}"),
    }
}

/// Opens `url` in headless Chromium (fresh profile, DevTools on a port of its choosing) and
/// evaluates `expression` in the page (DevTools protocol, `Runtime.evaluate`) until its value
/// contains `want`, for at most `wait`; returns the last value. For pages whose state changes
/// after load (a WebSocket connecting). A missing `chromium` is a failure naming the package.
pub fn chromium_eval_until(url: &str, expression: &str, want: &str, wait: Duration) -> String {
    use std::process::Stdio;
    use tokio_tungstenite::tungstenite::{self, Message};
    let profile = super::temp_path("chromium");
    let mut child = spawn_chromium(
        &profile,
        &[
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            url,
        ],
        Stdio::null(),
        Stdio::piped(),
    );
    // "DevTools listening on ws://127.0.0.1:PORT/devtools/browser/…" on stderr; the rest of
    // stderr is drained so Chromium never blocks on it
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let mut sent = false;
        while stderr.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
            if !sent {
                if let Some(rest) = line.split("ws://127.0.0.1:").nth(1) {
                    let port: Option<u16> = rest.split('/').next().and_then(|p| p.parse().ok());
                    let _ = tx.send(port);
                    sent = true;
                }
            }
            line.clear();
        }
    });
    let result = (|| -> Result<String, String> {
        let port = rx
            .recv_timeout(Duration::from_secs(60))
            .map_err(|_| "chromium did not open its DevTools port".to_owned())?
            .ok_or("no port in chromium's DevTools line")?;
        let deadline = std::time::Instant::now() + wait;
        // the page's DevTools WebSocket, from /json/list
        let ws_url = loop {
            let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            s.write_all(b"GET /json/list HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n")
                .map_err(|e| e.to_string())?;
            let resp = read_response(&mut BufReader::new(s));
            let list: serde_json::Value =
                serde_json::from_slice(&resp.body).map_err(|e| e.to_string())?;
            let page = list.as_array().and_then(|l| {
                l.iter()
                    .find(|t| t["type"] == "page")
                    .and_then(|t| t["webSocketDebuggerUrl"].as_str())
                    .map(str::to_owned)
            });
            match page {
                Some(p) => break p,
                None if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                None => return Err(format!("no page target: {}", resp.text())),
            }
        };
        let stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let (mut ws, _) =
            tungstenite::client::client(ws_url.as_str(), stream).map_err(|e| e.to_string())?;
        let mut last = String::new();
        for id in 1.. {
            let call = serde_json::json!({
                "id": id,
                "method": "Runtime.evaluate",
                "params": {"expression": expression, "returnByValue": true},
            });
            ws.send(Message::text(call.to_string()))
                .map_err(|e| e.to_string())?;
            loop {
                let msg = ws.read().map_err(|e| e.to_string())?;
                let Message::Text(text) = msg else { continue };
                let v: serde_json::Value =
                    serde_json::from_str(text.as_str()).map_err(|e| e.to_string())?;
                if v["id"] == id {
                    last = match &v["result"]["result"]["value"] {
                        serde_json::Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    break;
                }
            }
            if last.contains(want) || std::time::Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(last)
    })();
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&profile);
    result.unwrap_or_else(|e| panic!("chromium on {url}: {e}"))
}
