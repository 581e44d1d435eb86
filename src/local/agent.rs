//! The backend's end of a sandbox agent's control channel: setup, starting commands (their
//! pipes are created here and handed over with `SCM_RIGHTS`), signals, exit statuses.
//!
//! One reader task per sandbox dispatches the agent's replies; nothing is shared between
//! sandboxes, so a slow or stopped process in one sandbox never delays another.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::unix::AsyncFd;
use tokio::net::unix::pipe;
use tokio::sync::oneshot;

use super::fault::lock;
use super::sys::proto::{FromAgent, Setup, ToAgent, MAX_MESSAGE, SETUP_STEPS, SPAWN_STEPS};
use super::sys::proto::{STEP_CHDIR, STEP_EXEC};
use super::sys::spawn::{async_fd, recv_packet, send_packet, stream_pipe};

/// A spawn failure, naming the step that failed when it was not the program itself.
#[derive(Debug)]
pub(crate) struct SpawnError {
    /// The failed step (`None`: executing the program, or the channel).
    pub step: Option<String>,
    pub source: io::Error,
}

impl std::fmt::Display for SpawnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.step {
            Some(step) => write!(f, "{step}: {}", self.source),
            None => write!(f, "{}", self.source),
        }
    }
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the sandbox agent is gone")
}

/// The outcome of a setup or a start: `Err((step, errno))`.
type Outcome<T> = Result<T, (u8, i32)>;

/// What a command is waiting for.
struct Waiter {
    started: Option<oneshot::Sender<Outcome<i32>>>,
    exited: Option<oneshot::Sender<i32>>,
}

/// A connected agent.
pub(crate) struct AgentConn {
    fd: AsyncFd<OwnedFd>,
    waiters: Mutex<HashMap<u32, Waiter>>,
    ready: Mutex<Option<oneshot::Sender<Outcome<()>>>>,
    next_id: AtomicU32,
    closed: AtomicBool,
}

impl std::fmt::Debug for AgentConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentConn")
            .field("fd", &self.fd.get_ref().as_raw_fd())
            .field("closed", &self.closed.load(Ordering::SeqCst))
            .finish_non_exhaustive()
    }
}

impl AgentConn {
    /// Connects to an agent, sends it `setup` with its descriptors (the disk image, then the
    /// read-only layer images) and waits until the sandbox is built.
    pub(crate) async fn setup(
        channel: OwnedFd,
        setup: Setup,
        fds: Vec<OwnedFd>,
    ) -> io::Result<Arc<AgentConn>> {
        let (ready_tx, ready_rx) = oneshot::channel();
        let conn = Arc::new(AgentConn {
            fd: async_fd(channel)?,
            waiters: Mutex::new(HashMap::new()),
            ready: Mutex::new(Some(ready_tx)),
            next_id: AtomicU32::new(1),
            closed: AtomicBool::new(false),
        });
        let reader = conn.clone();
        tokio::spawn(async move { reader.read_loop().await });
        let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
        conn.send(&ToAgent::Setup(setup), &raw).await?;
        // the agent has its own copies now
        drop(fds);
        match ready_rx.await {
            Ok(Ok(())) => Ok(conn),
            Ok(Err((step, errno))) => {
                let what = SETUP_STEPS.get(usize::from(step)).unwrap_or(&"?");
                Err(io::Error::new(
                    io::Error::from_raw_os_error(errno).kind(),
                    format!("{what}: {}", io::Error::from_raw_os_error(errno)),
                ))
            }
            Err(_) => Err(io::Error::other("the sandbox agent exited during setup")),
        }
    }

    /// Whether the channel is closed (the agent exited).
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    async fn send(&self, msg: &ToAgent, fds: &[RawFd]) -> io::Result<()> {
        let data = msg.encode();
        if data.len() > MAX_MESSAGE {
            return Err(io::Error::from_raw_os_error(libc::E2BIG));
        }
        loop {
            if self.is_closed() {
                return Err(gone());
            }
            let mut guard = self.fd.writable().await?;
            match guard.try_io(|fd| send_packet(fd.get_ref().as_raw_fd(), &data, fds)) {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EPIPE) => return Err(gone()),
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }

    /// Sends without waiting (signals from synchronous code); a full channel defers it to a
    /// task.
    fn send_now(self: &Arc<Self>, msg: ToAgent) {
        let data = msg.encode();
        match send_packet(self.fd.get_ref().as_raw_fd(), &data, &[]) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if let Ok(h) = tokio::runtime::Handle::try_current() {
                    let me = self.clone();
                    h.spawn(async move {
                        let _ = me.send(&msg, &[]).await;
                    });
                }
            }
            _ => {}
        }
    }

    async fn read_loop(self: Arc<Self>) {
        let mut buf = vec![0u8; 4096];
        loop {
            let n = match self.fd.readable().await {
                Ok(mut guard) => {
                    match guard.try_io(|fd| recv_packet(fd.get_ref().as_raw_fd(), &mut buf)) {
                        Ok(Ok(n)) => n,
                        Ok(Err(_)) => 0,
                        Err(_would_block) => continue,
                    }
                }
                Err(_) => 0,
            };
            if n == 0 {
                break;
            }
            match FromAgent::decode(&buf[..n]) {
                Ok(msg) => self.dispatch(msg),
                // a confused agent is treated as a dead one
                Err(_) => break,
            }
        }
        self.closed.store(true, Ordering::SeqCst);
        lock(&self.ready).take();
        lock(&self.waiters).clear();
    }

    fn dispatch(&self, msg: FromAgent) {
        match msg {
            FromAgent::Ready => {
                if let Some(tx) = lock(&self.ready).take() {
                    let _ = tx.send(Ok(()));
                }
            }
            FromAgent::SetupFailed { step, errno } => {
                if let Some(tx) = lock(&self.ready).take() {
                    let _ = tx.send(Err((step, errno)));
                }
            }
            FromAgent::Started { id, pid } => {
                let mut w = lock(&self.waiters);
                if let Some(tx) = w.get_mut(&id).and_then(|w| w.started.take()) {
                    let _ = tx.send(Ok(pid));
                }
            }
            FromAgent::SpawnFailed { id, step, errno } => {
                if let Some(mut w) = lock(&self.waiters).remove(&id) {
                    if let Some(tx) = w.started.take() {
                        let _ = tx.send(Err((step, errno)));
                    }
                }
            }
            FromAgent::Exited { id, status } => {
                if let Some(mut w) = lock(&self.waiters).remove(&id) {
                    if let Some(tx) = w.exited.take() {
                        let _ = tx.send(status);
                    }
                }
            }
        }
    }

    /// Starts a command in the sandbox; returns once its program runs (or could not).
    pub(crate) async fn spawn(
        self: &Arc<Self>,
        argv: Vec<Vec<u8>>,
        env: Vec<Vec<u8>>,
        cwd: Vec<u8>,
        with_stdin: bool,
    ) -> Result<Process, SpawnError> {
        let plain = |source| SpawnError { step: None, source };
        let (out_r, out_w) = stream_pipe(true).map_err(plain)?;
        let (err_r, err_w) = stream_pipe(true).map_err(plain)?;
        let stdin = if with_stdin {
            Some(stream_pipe(false).map_err(plain)?)
        } else {
            None
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (started_tx, started_rx) = oneshot::channel();
        let (exited_tx, exited_rx) = oneshot::channel();
        lock(&self.waiters).insert(
            id,
            Waiter {
                started: Some(started_tx),
                exited: Some(exited_tx),
            },
        );
        let mut fds = vec![out_w.as_raw_fd(), err_w.as_raw_fd()];
        if let Some((r, _)) = &stdin {
            fds.push(r.as_raw_fd());
        }
        let msg = ToAgent::Spawn {
            id,
            argv,
            env,
            cwd: cwd.clone(),
            stdin: with_stdin,
        };
        if let Err(e) = self.send(&msg, &fds).await {
            lock(&self.waiters).remove(&id);
            return Err(plain(e));
        }
        // the sandbox has its own copies now
        drop((out_w, err_w));
        let stdin = stdin.map(|(_, w)| w);
        let pid = match started_rx.await {
            Ok(Ok(pid)) => pid,
            Ok(Err((step, errno))) => {
                let source = io::Error::from_raw_os_error(errno);
                let step = match step {
                    STEP_EXEC => None,
                    STEP_CHDIR => Some(format!(
                        "changing to the working directory {}",
                        String::from_utf8_lossy(&cwd)
                    )),
                    s => Some(SPAWN_STEPS.get(usize::from(s)).unwrap_or(&"?").to_string()),
                };
                return Err(SpawnError { step, source });
            }
            Err(_) => return Err(plain(gone())),
        };
        let stream = |fd: OwnedFd| pipe::Receiver::from_owned_fd(fd).ok();
        Ok(Process {
            id,
            pid,
            stdin: stdin.and_then(|w| pipe::Sender::from_owned_fd(w).ok()),
            stdout: stream(out_r),
            stderr: stream(err_r),
            exit: Some(exited_rx),
            status: None,
            agent: self.clone(),
        })
    }
}

/// A command running in a sandbox.
pub(crate) struct Process {
    id: u32,
    /// Its pid inside the sandbox.
    pub pid: i32,
    /// Its stdin, when requested.
    pub stdin: Option<pipe::Sender>,
    /// Its stdout.
    pub stdout: Option<pipe::Receiver>,
    /// Its stderr.
    pub stderr: Option<pipe::Receiver>,
    exit: Option<oneshot::Receiver<i32>>,
    status: Option<io::Result<i32>>,
    agent: Arc<AgentConn>,
}

impl std::fmt::Debug for Process {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Process")
            .field("id", &self.id)
            .field("pid", &self.pid)
            .finish_non_exhaustive()
    }
}

impl Process {
    /// Waits for the exit; the `waitpid` status (an error when the agent died first).
    /// Cancel-safe.
    pub(crate) async fn wait(&mut self) -> io::Result<i32> {
        if let Some(rx) = self.exit.as_mut() {
            let r = rx.await.map_err(|_| gone());
            self.exit = None;
            self.status = Some(r);
        }
        match &self.status {
            Some(Ok(s)) => Ok(*s),
            _ => Err(gone()),
        }
    }

    /// Sends `sig` to the command (`group`: to its process group), through the agent.
    pub(crate) fn signal(&self, sig: i32, group: bool) {
        if self.status.is_none() {
            self.agent.send_now(ToAgent::Signal {
                id: self.id,
                sig,
                group,
            });
        }
    }
}
