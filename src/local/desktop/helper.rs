//! The backend's end of the desktop helper: writing the program into the sandbox, starting it
//! through the agent, and one request/reply at a time over its stdin/stdout, each reply read
//! only up to the cap chosen for its request and within a deadline. A helper that breaks
//! either rule is killed and replaced at the next request.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use rand::RngCore;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;

use super::super::agent::Process;
use super::super::files;
use super::super::runtime::{CommandSpec, Runtime};
use super::services::{drain, Tail};
use super::wire::{reply_cap, Reply, Request};
use super::DesktopError;

/// The helper program (built by `build.rs` from `helper/main.rs`).
const PROGRAM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/superserve-desktop-helper"));
/// How long the helper may take to connect to the display.
const HELLO_TIMEOUT: Duration = Duration::from_secs(15);
/// How long one request may take (a frame of the largest display included).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

/// A running helper.
pub(super) struct Helper {
    process: Process,
    stdin: pipe::Sender,
    stdout: pipe::Receiver,
    stderr: Arc<Tail>,
    /// The largest display its frames may have (the size the X server was started with).
    max: (u32, u32),
    /// The root window's size as last reported.
    pub size: (u32, u32),
}

impl std::fmt::Debug for Helper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Helper")
            .field("pid", &self.process.pid)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        self.process.signal(libc::SIGKILL, true);
    }
}

/// Writes a fresh copy of the program into the sandbox (the helper removes it once it runs).
async fn install(rt: &Arc<Runtime>) -> Result<String, DesktopError> {
    let mut r = [0u8; 8];
    rand::thread_rng().fill_bytes(&mut r);
    let name: String = r.iter().map(|b| format!("{b:02x}")).collect();
    let path = format!("/tmp/.superserve-desktop-{name}");
    let rt = rt.clone();
    let p = path.clone();
    let written = tokio::task::spawn_blocking(move || -> Result<(), String> {
        let mut f = files::open_write(rt.root(), &p, rt.root_id).map_err(|e| format!("{e:?}"))?;
        f.write_all(PROGRAM).map_err(|e| e.to_string())?;
        f.set_permissions(std::fs::Permissions::from_mode(0o755))
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|r| r);
    written
        .map(|()| path)
        .map_err(|e| DesktopError::Unavailable(format!("cannot write the desktop helper: {e}")))
}

impl Helper {
    /// Starts a helper on `display` and waits until it is connected. `max` is the size the X
    /// server was started with.
    pub(super) async fn start(
        rt: &Arc<Runtime>,
        display: &str,
        max: (u32, u32),
    ) -> Result<Helper, DesktopError> {
        let mut last = None;
        // a program file that another thread of the backend still holds open while forking
        // (ETXTBSY) cannot run yet: a fresh copy a moment later can
        for _ in 0..5 {
            let path = install(rt).await?;
            let spec = CommandSpec {
                program: path,
                args: vec![display.to_owned()],
                env: super::services::environment(display),
                cwd: "/".into(),
                stdin: true,
            };
            match rt.spawn(spec).await {
                Ok(p) => return Helper::connected(p, max).await,
                Err(e) if e.source.raw_os_error() == Some(libc::ETXTBSY) => {
                    last = Some(e);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => {
                    return Err(DesktopError::Unavailable(format!(
                        "cannot start the desktop helper: {e}"
                    )))
                }
            }
        }
        Err(DesktopError::Unavailable(format!(
            "cannot start the desktop helper: {}",
            last.map_or_else(String::new, |e| e.to_string())
        )))
    }

    async fn connected(mut process: Process, max: (u32, u32)) -> Result<Helper, DesktopError> {
        let (Some(stdin), Some(stdout)) = (process.stdin.take(), process.stdout.take()) else {
            return Err(DesktopError::Unavailable(
                "the desktop helper has no pipes".into(),
            ));
        };
        let stderr = Arc::new(Tail::default());
        if let Some(err) = process.stderr.take() {
            drain(err, stderr.clone());
        }
        let mut h = Helper {
            process,
            stdin,
            stdout,
            stderr,
            max,
            size: max,
        };
        match h.read(&Request::Size, HELLO_TIMEOUT).await {
            Ok(Reply::Size { width, height }) => {
                h.size = (width, height);
                Ok(h)
            }
            Ok(Reply::Failed(msg)) => Err(DesktopError::Unavailable(msg)),
            Ok(other) => Err(DesktopError::Unavailable(format!(
                "the desktop helper said {other:?} instead of hello"
            ))),
            Err(e) => Err(e),
        }
    }

    /// Reads one reply (capped for `req`) within `timeout`.
    async fn read(&mut self, req: &Request, timeout: Duration) -> Result<Reply, DesktopError> {
        let cap = reply_cap(req, self.max.0, self.max.1);
        let stdout = &mut self.stdout;
        let read = async move {
            let mut len = [0u8; 4];
            stdout.read_exact(&mut len).await?;
            let len = u32::from_le_bytes(len) as usize;
            if len > cap {
                return Err(std::io::Error::other(format!(
                    "a reply of {len} bytes (at most {cap} expected)"
                )));
            }
            let mut body = vec![0u8; len];
            stdout.read_exact(&mut body).await?;
            Ok(body)
        };
        let body = match tokio::time::timeout(timeout, read).await {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => return Err(self.broken(&e.to_string())),
            Err(_) => return Err(self.broken("no answer in time")),
        };
        Reply::decode(&body).map_err(|e| self.broken(&e.to_string()))
    }

    fn broken(&self, what: &str) -> DesktopError {
        self.process.signal(libc::SIGKILL, true);
        let log = self.stderr.text();
        let log = if log.is_empty() {
            String::new()
        } else {
            format!(" ({})", log.trim())
        };
        DesktopError::Unavailable(format!("the desktop helper failed: {what}{log}"))
    }

    /// One request and its reply. A transport failure is [`DesktopError::Unavailable`] (and
    /// the helper is dead); a refusal by the X server is [`DesktopError::Failed`].
    pub(super) async fn call(&mut self, req: &Request) -> Result<Reply, DesktopError> {
        let msg = req.encode();
        let sent = tokio::time::timeout(REQUEST_TIMEOUT, self.stdin.write_all(&msg)).await;
        match sent {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(self.broken(&e.to_string())),
            Err(_) => return Err(self.broken("it does not read its requests")),
        }
        match self.read(req, REQUEST_TIMEOUT).await? {
            Reply::Failed(msg) => Err(DesktopError::Failed(msg)),
            // the helper ends after it; the X server is restarted if it is gone
            Reply::Lost(msg) => Err(self.broken(&msg)),
            reply => Ok(reply),
        }
    }
}
