//! `exec/connect` sessions over tungstenite, with one I/O thread per session so output keeps
//! flowing (and callbacks keep firing) while the caller writes stdin.

use std::net::{TcpStream, ToSocketAddrs};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::Duration;

use tungstenite::protocol::WebSocketConfig;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

use crate::error::{Error, Result};
use crate::rt::{ws_error_detail, ExecDial};
use crate::wire::exec::{close_detail, Outcome, OutputSink, MAX_INBOUND_FRAME};

/// How long the I/O thread waits for input before it looks at queued writes.
const POLL: Duration = Duration::from_millis(5);

enum Cmd {
    Frame(Message),
    Close,
}

#[derive(Default)]
struct Shared {
    outcome: Mutex<Option<Outcome>>,
    cv: Condvar,
}

impl Shared {
    fn settle(&self, o: Outcome) {
        let mut g = self.outcome.lock().unwrap_or_else(|p| p.into_inner());
        if g.is_none() {
            *g = Some(o);
            self.cv.notify_all();
        }
    }
    fn is_settled(&self) -> bool {
        self.outcome
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }
}

pub(crate) struct ExecSession {
    tx: mpsc::SyncSender<Cmd>,
    shared: Arc<Shared>,
}

fn set_read_timeout(ws: &mut WebSocket<MaybeTlsStream<TcpStream>>, t: Option<Duration>) {
    match ws.get_mut() {
        MaybeTlsStream::Plain(s) => {
            let _ = s.set_read_timeout(t);
        }
        MaybeTlsStream::Rustls(s) => {
            let _ = s.sock.set_read_timeout(t);
        }
        _ => {}
    }
}

fn dial_tcp(url: &str, timeout: Duration) -> Result<TcpStream> {
    let parsed = url::Url::parse(url)
        .map_err(|_| Error::validation(format!("invalid exec/connect URL {url:?}")))?;
    let host = parsed
        .host_str()
        .ok_or_else(|| Error::validation("exec/connect URL has no host"))?;
    let port = parsed.port_or_known_default().unwrap_or(443);
    let addrs = (host, port).to_socket_addrs().map_err(|e| {
        Error::connection(format!("exec/connect: cannot resolve {host}: {e}"), None)
    })?;
    let mut last = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(Error::connection(
        format!(
            "exec/connect: cannot connect to {host}:{port}: {}",
            last.map_or_else(|| "no address".to_owned(), |e| e.to_string())
        ),
        None,
    ))
}

impl ExecSession {
    pub(crate) fn connect(dial: ExecDial) -> Result<ExecSession> {
        let req = dial.request()?;
        let tcp = dial_tcp(&dial.url, dial.connect_timeout)?;
        let _ = tcp.set_nodelay(true);
        let _ = tcp.set_read_timeout(Some(dial.connect_timeout));
        let config = WebSocketConfig::default()
            .max_message_size(Some(MAX_INBOUND_FRAME))
            .max_frame_size(Some(MAX_INBOUND_FRAME));
        let (mut ws, _) = tungstenite::client_tls_with_config(req, tcp, Some(config), None)
            .map_err(|e| {
                Error::connection(format!("exec/connect: {}", ws_error_detail(&e)), None)
            })?;
        ws.send(Message::Text(dial.start.into())).map_err(|e| {
            Error::connection(
                format!("exec/connect: cannot send the start frame: {e}"),
                None,
            )
        })?;
        set_read_timeout(&mut ws, Some(POLL));
        let (tx, rx) = mpsc::sync_channel::<Cmd>(64);
        let shared = Arc::new(Shared::default());
        let thread_shared = shared.clone();
        let out = dial.sink;
        std::thread::Builder::new()
            .name("superserve-exec".into())
            .spawn(move || io_loop(ws, rx, out, &thread_shared))
            .map_err(|e| Error::io("cannot start the session thread", e))?;
        Ok(ExecSession { tx, shared })
    }

    pub(crate) fn is_settled(&self) -> bool {
        self.shared.is_settled()
    }

    fn send(&self, cmd: Cmd) -> Result<()> {
        if self.is_settled() {
            return Ok(());
        }
        match self.tx.send(cmd) {
            Ok(()) => Ok(()),
            Err(_) if self.is_settled() => Ok(()),
            Err(_) => Err(Error::stream("exec/connect: the session has ended")),
        }
    }

    pub(crate) fn send_binary(&self, frame: Vec<u8>) -> Result<()> {
        self.send(Cmd::Frame(Message::Binary(frame.into())))
    }

    pub(crate) fn send_text(&self, text: String) -> Result<()> {
        self.send(Cmd::Frame(Message::Text(text.into())))
    }

    pub(crate) fn wait(&self) -> Outcome {
        let mut g = self
            .shared
            .outcome
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(o) = g.as_ref() {
                return o.clone();
            }
            g = self.shared.cv.wait(g).unwrap_or_else(|p| p.into_inner());
        }
    }

    pub(crate) fn close(&self) {
        if !self.is_settled() {
            let _ = self.send_text(crate::wire::exec::signal_frame("SIGTERM"));
            let _ = self.tx.try_send(Cmd::Close);
            self.shared
                .settle(Err("exec/connect: session closed".to_owned()));
        } else {
            let _ = self.tx.try_send(Cmd::Close);
        }
    }
}

impl Drop for ExecSession {
    fn drop(&mut self) {
        self.close();
    }
}

fn io_loop(
    mut ws: WebSocket<MaybeTlsStream<TcpStream>>,
    rx: mpsc::Receiver<Cmd>,
    mut out: OutputSink,
    shared: &Shared,
) {
    loop {
        loop {
            match rx.try_recv() {
                Ok(Cmd::Frame(m)) => {
                    if let Err(e) = ws.send(m) {
                        shared.settle(out.closed(&format!("write failed: {e}")));
                        return;
                    }
                }
                Ok(Cmd::Close) | Err(mpsc::TryRecvError::Disconnected) => {
                    let _ = ws.close(None);
                    let _ = ws.flush();
                    shared.settle(out.closed("session closed"));
                    return;
                }
                Err(mpsc::TryRecvError::Empty) => break,
            }
        }
        match ws.read() {
            Ok(Message::Binary(b)) => out.binary(&b),
            Ok(Message::Text(t)) => {
                if let Some(o) = out.text(t.as_str()) {
                    shared.settle(o);
                    let _ = ws.close(None);
                    let _ = ws.flush();
                    return;
                }
            }
            Ok(Message::Close(frame)) => {
                let (code, reason) = frame
                    .map(|f| (Some(u16::from(f.code)), f.reason.to_string()))
                    .unwrap_or((None, String::new()));
                shared.settle(out.closed(&close_detail(code, &reason)));
                return;
            }
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => {
                shared.settle(out.closed(&e.to_string()));
                return;
            }
        }
    }
}
