//! `exec/connect` sessions over tokio-tungstenite.

use std::sync::Arc;

use futures_util::stream::{SplitSink, StreamExt};
use futures_util::SinkExt;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::error::{Error, Result};
use crate::rt::{ws_error_detail, ExecDial};
use crate::wire::exec::{close_detail, Outcome, MAX_INBOUND_FRAME};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub(crate) struct ExecSession {
    sink: tokio::sync::Mutex<SplitSink<Ws, Message>>,
    outcome: watch::Receiver<Option<Outcome>>,
    settle: Arc<watch::Sender<Option<Outcome>>>,
    reader: tokio::task::JoinHandle<()>,
}

fn settle(tx: &watch::Sender<Option<Outcome>>, outcome: Outcome) {
    tx.send_if_modified(|v| {
        if v.is_none() {
            *v = Some(outcome);
            true
        } else {
            false
        }
    });
}

impl ExecSession {
    pub(crate) async fn connect(dial: ExecDial) -> Result<ExecSession> {
        let req = dial.request()?;
        let config = WebSocketConfig::default()
            .max_message_size(Some(MAX_INBOUND_FRAME))
            .max_frame_size(Some(MAX_INBOUND_FRAME));
        let connecting = tokio_tungstenite::connect_async_with_config(req, Some(config), true);
        let (ws, _) = match tokio::time::timeout(dial.connect_timeout, connecting).await {
            Err(_) => {
                return Err(Error::timeout(
                    "exec/connect: the WebSocket handshake timed out",
                ))
            }
            Ok(Err(e)) => {
                return Err(Error::connection(
                    format!("exec/connect: {}", ws_error_detail(&e)),
                    None,
                ))
            }
            Ok(Ok(v)) => v,
        };
        let (mut sink, mut stream) = ws.split();
        sink.send(Message::Text(dial.start.into()))
            .await
            .map_err(|e| {
                Error::connection(
                    format!("exec/connect: cannot send the start frame: {e}"),
                    None,
                )
            })?;
        let (tx, rx) = watch::channel(None);
        let tx = Arc::new(tx);
        let reader_tx = tx.clone();
        let mut out = dial.sink;
        let reader = tokio::spawn(async move {
            let outcome = loop {
                match stream.next().await {
                    Some(Ok(Message::Binary(b))) => out.binary(&b),
                    Some(Ok(Message::Text(t))) => {
                        if let Some(o) = out.text(t.as_str()) {
                            break o;
                        }
                    }
                    Some(Ok(Message::Close(frame))) => {
                        let (code, reason) = frame
                            .map(|f| (Some(u16::from(f.code)), f.reason.to_string()))
                            .unwrap_or((None, String::new()));
                        break out.closed(&close_detail(code, &reason));
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => break out.closed(&e.to_string()),
                    None => break out.closed("connection dropped"),
                }
            };
            settle(&reader_tx, outcome);
        });
        Ok(ExecSession {
            sink: tokio::sync::Mutex::new(sink),
            outcome: rx,
            settle: tx,
            reader,
        })
    }

    pub(crate) fn is_settled(&self) -> bool {
        self.outcome.borrow().is_some()
    }

    async fn send(&self, msg: Message) -> Result<()> {
        if self.is_settled() {
            return Ok(());
        }
        let mut sink = self.sink.lock().await;
        match sink.send(msg).await {
            Ok(()) => Ok(()),
            Err(_) if self.is_settled() => Ok(()),
            Err(e) => Err(Error::stream(format!("exec/connect: cannot write: {e}"))),
        }
    }

    pub(crate) async fn send_binary(&self, frame: Vec<u8>) -> Result<()> {
        self.send(Message::Binary(frame.into())).await
    }

    pub(crate) async fn send_text(&self, text: String) -> Result<()> {
        self.send(Message::Text(text.into())).await
    }

    pub(crate) async fn wait(&self) -> Outcome {
        let mut rx = self.outcome.clone();
        let result = match rx.wait_for(Option::is_some).await {
            Ok(v) => v.clone(),
            Err(_) => None,
        };
        result.unwrap_or_else(|| Err("exec/connect: session ended".to_owned()))
    }

    pub(crate) async fn close(&self) {
        if !self.is_settled() {
            let _ = self
                .send_text(crate::wire::exec::signal_frame("SIGTERM"))
                .await;
            settle(&self.settle, Err("exec/connect: session closed".to_owned()));
        }
        self.reader.abort();
        let _ = self.sink.lock().await.close().await;
    }
}

impl Drop for ExecSession {
    fn drop(&mut self) {
        self.reader.abort();
    }
}
