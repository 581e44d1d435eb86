//! The programs of a desktop sandbox, each started through the sandbox's agent like any
//! command: the X server (Xvfb, owned by the display), and the live view (x11vnc serving the
//! display over VNC on the sandbox's loopback, websockify serving noVNC and bridging its
//! WebSocket to x11vnc on port 6080), each kept running by a watcher task that restarts it
//! when it exits.

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::sync::watch;

use super::super::agent::Process;
use super::super::fault::lock;
use super::super::runtime::{CommandSpec, Runtime, SANDBOX_HOME, SANDBOX_PATH};
use super::{DesktopError, DISPLAY_NUMBER, STREAM_PORT, VNC_PORT};

/// What is kept of a program's output for error messages.
const TAIL_BYTES: usize = 2048;
/// The longest a restarted live-view program waits before its next start.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// A program that ran this long before exiting is restarted at once.
const HEALTHY_RUN: Duration = Duration::from_secs(10);

/// The last bytes a program wrote.
#[derive(Debug, Default)]
pub(super) struct Tail(Mutex<Vec<u8>>);

impl Tail {
    fn push(&self, data: &[u8]) {
        let mut t = lock(&self.0);
        t.extend_from_slice(data);
        if t.len() > TAIL_BYTES {
            let cut = t.len() - TAIL_BYTES;
            t.drain(..cut);
        }
    }

    /// The kept output as text.
    pub(super) fn text(&self) -> String {
        String::from_utf8_lossy(&lock(&self.0)).into_owned()
    }
}

/// Reads a program's output into `tail` until it closes.
pub(super) fn drain(mut r: pipe::Receiver, tail: Arc<Tail>) {
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        while let Ok(n) = r.read(&mut buf).await {
            if n == 0 {
                break;
            }
            tail.push(&buf[..n]);
        }
    });
}

/// The environment of the desktop's programs.
pub(super) fn environment(display: &str) -> Vec<(String, String)> {
    [
        ("PATH", SANDBOX_PATH),
        ("HOME", SANDBOX_HOME),
        ("USER", "root"),
        ("LANG", "C.UTF-8"),
        ("DISPLAY", display),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

fn spec(program: &str, args: &[String], stdin: bool) -> CommandSpec {
    CommandSpec {
        program: program.to_owned(),
        args: args.to_vec(),
        env: environment(&format!(":{DISPLAY_NUMBER}")),
        cwd: "/".into(),
        stdin,
    }
}

/// A program of the desktop with its output kept.
pub(super) struct Program {
    pub process: Process,
    pub output: Arc<Tail>,
}

impl std::fmt::Debug for Program {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Program")
            .field("pid", &self.process.pid)
            .finish_non_exhaustive()
    }
}

impl Program {
    async fn start(
        rt: &Runtime,
        spec: CommandSpec,
        output: Arc<Tail>,
    ) -> Result<Program, DesktopError> {
        let name = spec.program.clone();
        let mut process = rt.spawn(spec).await.map_err(|e| {
            DesktopError::Unavailable(format!("cannot start {name} in the sandbox: {e}"))
        })?;
        if let Some(err) = process.stderr.take() {
            drain(err, output.clone());
        }
        Ok(Program { process, output })
    }

    /// Whether it has exited (without waiting).
    pub(super) fn exited(&mut self) -> bool {
        use futures_util::FutureExt;
        self.process.wait().now_or_never().is_some()
    }

    /// Stops it (SIGTERM, SIGKILL after `grace`) and waits until it is gone.
    pub(super) async fn stop(mut self, grace: Duration) {
        self.process.signal(libc::SIGTERM, true);
        if tokio::time::timeout(grace, self.process.wait())
            .await
            .is_err()
        {
            self.process.signal(libc::SIGKILL, true);
            let _ = tokio::time::timeout(grace, self.process.wait()).await;
        }
    }
}

impl Drop for Program {
    fn drop(&mut self) {
        self.process.signal(libc::SIGKILL, true);
    }
}

/// Starts Xvfb on the desktop's display at `width`×`height` and waits until it accepts
/// connections (it writes its display number on stdout then: `-displayfd 1`). A stale lock
/// of an X server that was killed is removed first.
pub(super) async fn start_xvfb(
    rt: &Runtime,
    width: u32,
    height: u32,
) -> Result<Program, DesktopError> {
    let n = DISPLAY_NUMBER;
    let script = format!(
        "rm -f /tmp/.X{n}-lock /tmp/.X11-unix/X{n}; exec Xvfb :{n} -screen 0 {width}x{height}x24 \
         -nolisten tcp -noreset -dpi 96 -displayfd 1"
    );
    let output = Arc::new(Tail::default());
    let mut p = Program::start(rt, spec("/bin/sh", &["-c".into(), script], false), output).await?;
    let Some(mut out) = p.process.stdout.take() else {
        return Err(DesktopError::Unavailable("Xvfb has no stdout".into()));
    };
    let ready = async {
        let mut got = Vec::new();
        let mut buf = [0u8; 16];
        while !got.contains(&b'\n') && got.len() < 64 {
            match out.read(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(k) => got.extend_from_slice(&buf[..k]),
            }
        }
        got.starts_with(n.to_string().as_bytes())
    };
    match tokio::time::timeout(Duration::from_secs(20), ready).await {
        Ok(true) => {
            drain(out, p.output.clone());
            Ok(p)
        }
        _ => {
            let log = p.output.text();
            Err(DesktopError::Unavailable(format!(
                "the X server (Xvfb) did not start: {}",
                log.trim()
            )))
        }
    }
}

/// The live-view programs, restarted when they exit, stopped on drop.
pub(super) struct LiveView {
    stop: watch::Sender<bool>,
    /// What x11vnc and websockify last wrote.
    pub logs: [Arc<Tail>; 2],
}

impl std::fmt::Debug for LiveView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveView").finish_non_exhaustive()
    }
}

impl Drop for LiveView {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

impl LiveView {
    /// Starts x11vnc and websockify (with noVNC's pages) and keeps them running.
    pub(super) fn start(rt: &Arc<Runtime>) -> LiveView {
        let (stop, rx) = watch::channel(false);
        let vnc = vec![
            "-display".to_owned(),
            format!(":{DISPLAY_NUMBER}"),
            "-rfbport".into(),
            VNC_PORT.to_string(),
            "-localhost".into(),
            "-forever".into(),
            "-shared".into(),
            "-nopw".into(),
            "-quiet".into(),
        ];
        let ws = vec![
            "--web".to_owned(),
            super::NOVNC_DIR.into(),
            format!("127.0.0.1:{STREAM_PORT}"),
            format!("127.0.0.1:{VNC_PORT}"),
        ];
        let logs = [Arc::new(Tail::default()), Arc::new(Tail::default())];
        let vnc = spec("x11vnc", &vnc, false);
        watch_program(Arc::downgrade(rt), vnc, logs[0].clone(), rx.clone());
        let ws = spec("websockify", &ws, false);
        watch_program(Arc::downgrade(rt), ws, logs[1].clone(), rx);
        LiveView { stop, logs }
    }
}

fn clone_spec(s: &CommandSpec) -> CommandSpec {
    CommandSpec {
        program: s.program.clone(),
        args: s.args.clone(),
        env: s.env.clone(),
        cwd: s.cwd.clone(),
        stdin: s.stdin,
    }
}

/// Runs `spec` in the sandbox until `stop`, starting it again whenever it exits (after a
/// pause that grows while it keeps exiting early). Ends when the sandbox's runtime is gone.
fn watch_program(
    rt: Weak<Runtime>,
    spec: CommandSpec,
    output: Arc<Tail>,
    mut stop: watch::Receiver<bool>,
) {
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(200);
        loop {
            let started = {
                let Some(rt) = rt.upgrade() else { return };
                if rt.is_dead() || *stop.borrow() {
                    return;
                }
                Program::start(&rt, clone_spec(&spec), output.clone()).await
            };
            let began = Instant::now();
            if let Ok(mut p) = started {
                if let Some(out) = p.process.stdout.take() {
                    drain(out, p.output.clone());
                }
                tokio::select! {
                    _ = p.process.wait() => {}
                    _ = stop.changed() => return,
                }
                tracing::debug!(
                    program = %spec.program,
                    output = %p.output.text(),
                    "a desktop program exited; starting it again"
                );
            }
            backoff = if began.elapsed() >= HEALTHY_RUN {
                Duration::from_millis(200)
            } else {
                (backoff * 2).min(MAX_BACKOFF)
            };
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop.changed() => return,
            }
        }
    });
}
