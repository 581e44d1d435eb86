//! Running one command inside a sandbox and turning its output into events.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use serde::Deserialize;
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::agent::Process;
use super::model::Record;
use super::runtime::{CommandSpec, SANDBOX_HOME, SANDBOX_PATH};
use super::templates::build::as_user;

/// Default per-command timeout of `/exec` and `/exec/stream` when `timeout_s` is absent or 0.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Combined stdout+stderr kept by `/exec` before `truncated` is set.
pub(crate) const OUTPUT_CAP: usize = 10 * 1024 * 1024;
/// Exit code reported for a command killed by its timeout (as `timeout(1)` does).
pub(crate) const TIMEOUT_EXIT_CODE: i32 = 124;
/// After the command exited, output is collected until its pipes close, or until no output
/// arrived for this long (background processes that inherited its stdout may keep the pipe
/// open forever).
const DRAIN_IDLE: Duration = Duration::from_secs(1);
/// Default working directory of commands.
pub(crate) const DEFAULT_CWD: &str = "/";

/// The body of `/exec`, `/exec/stream` and the `/exec/connect` start frame.
#[derive(Debug, Deserialize)]
pub(crate) struct ExecBody {
    #[serde(default)]
    pub command: Option<String>,
    #[serde(default)]
    pub args: Option<Vec<String>>,
    #[serde(default)]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub env: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub timeout_s: Option<u64>,
}

impl ExecBody {
    /// The per-command timeout: `timeout_s`, else `default` (`None` = no timeout).
    pub(crate) fn timeout(&self, default: Option<Duration>) -> Option<Duration> {
        match self.timeout_s {
            Some(s) if s > 0 => Some(Duration::from_secs(s)),
            _ => default,
        }
    }
}

/// Builds what to spawn; the error is a client error message.
pub(crate) fn command_spec(
    rec: &Record,
    body: &ExecBody,
    stdin: bool,
) -> Result<CommandSpec, String> {
    let command = body.command.as_deref().unwrap_or("");
    if command.trim().is_empty() {
        return Err("command is required".into());
    }
    if command.contains('\0') {
        return Err("command must not contain NUL bytes".into());
    }
    let cwd = match body.working_dir.as_deref() {
        // a template's `workdir` step sets the default
        None | Some("") => rec
            .boot
            .workdir
            .clone()
            .unwrap_or_else(|| DEFAULT_CWD.to_owned()),
        Some(d) if d.starts_with('/') && !d.contains('\0') => d.to_owned(),
        Some(d) => return Err(format!("working_dir must be an absolute path, got {d:?}")),
    };
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in [
        ("PATH", SANDBOX_PATH),
        ("HOME", SANDBOX_HOME),
        ("USER", "root"),
        ("LOGNAME", "root"),
        ("SHELL", "/bin/sh"),
        ("LANG", "C.UTF-8"),
    ] {
        env.insert(k.to_owned(), v.to_owned());
    }
    env.insert("HOSTNAME".to_owned(), rec.hostname.clone());
    if super::desktop::is_template(&rec.template) {
        // GUI programs appear on the sandbox's desktop
        env.insert("DISPLAY".to_owned(), super::desktop::DISPLAY.to_owned());
    }
    // the template's `env` steps, under the sandbox's own variables
    for (k, v) in &rec.boot.env {
        env.insert(k.clone(), v.clone());
    }
    // bound secrets: the sandbox only ever sees their stand-in tokens
    for b in rec.secrets.iter().filter(|b| b.visible()) {
        env.insert(b.env_key.clone(), b.standin.clone());
    }
    for (k, v) in rec.env_vars.iter().chain(body.env.iter().flatten()) {
        if k.is_empty() || k.contains(['=', '\0']) || v.contains('\0') {
            return Err(format!("invalid environment variable {k:?}"));
        }
        env.insert(k.clone(), v.clone());
    }
    let (program, args) = match &body.args {
        Some(args) => {
            if args.iter().any(|a| a.contains('\0')) {
                return Err("args must not contain NUL bytes".into());
            }
            (command.to_owned(), args.clone())
        }
        None => (
            "/bin/sh".to_owned(),
            vec!["-c".to_owned(), command.to_owned()],
        ),
    };
    // a template's `user` step makes its user the default one
    let mut env: Vec<(String, String)> = env.into_iter().collect();
    let (program, args) = as_user(rec.boot.user.as_deref(), program, args, &mut env);
    Ok(CommandSpec {
        program,
        args,
        env,
        cwd,
        stdin,
    })
}

/// Something the command did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Event {
    Stdout(Bytes),
    Stderr(Bytes),
    /// The per-command timeout fired; the process group was killed.
    TimedOut,
    /// Final: the exit code (128+N when killed by signal N; 124 after a timeout).
    Exit(i32),
}

enum Chunk {
    Out(Bytes),
    Err(Bytes),
}

/// A running command; [`Running::next`] yields its events in order and then `None`.
pub(crate) struct Running {
    child: Process,
    rx: mpsc::Receiver<Chunk>,
    rx_open: bool,
    deadline: Option<Instant>,
    timed_out: Option<Instant>,
    exited: Option<(i32, Instant)>,
    finished: bool,
    /// stdin, if it was requested (take it to write).
    pub stdin: Option<pipe::Sender>,
}

fn pump<R: tokio::io::AsyncRead + Unpin + Send + 'static>(
    mut r: R,
    tx: mpsc::Sender<Chunk>,
    is_err: bool,
) {
    tokio::spawn(async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let b = Bytes::copy_from_slice(&buf[..n]);
                    let chunk = if is_err { Chunk::Err(b) } else { Chunk::Out(b) };
                    if tx.send(chunk).await.is_err() {
                        break;
                    }
                }
            }
        }
    });
}

/// The exit code of a `waitpid` status: the code, or 128+N when killed by signal N; -1 when
/// the sandbox's agent died first.
fn exit_code(status: std::io::Result<i32>) -> i32 {
    match status {
        Ok(s) if libc::WIFEXITED(s) => libc::WEXITSTATUS(s),
        Ok(s) if libc::WIFSIGNALED(s) => 128 + libc::WTERMSIG(s),
        _ => -1,
    }
}

impl Running {
    /// Wraps a freshly started command.
    pub(crate) fn new(mut child: Process, timeout: Option<Duration>) -> Running {
        let (tx, rx) = mpsc::channel(64);
        if let Some(out) = child.stdout.take() {
            pump(out, tx.clone(), false);
        }
        if let Some(err) = child.stderr.take() {
            pump(err, tx, true);
        }
        let stdin = child.stdin.take();
        Running {
            child,
            rx,
            rx_open: true,
            deadline: timeout.map(|t| Instant::now() + t),
            timed_out: None,
            exited: None,
            finished: false,
            stdin,
        }
    }

    /// Sends a signal to the command's main process (as the hosted service does).
    pub(crate) fn signal(&self, sig: i32) {
        if !self.finished && self.exited.is_none() {
            self.child.signal(sig, false);
        }
    }

    /// Kills the command's whole process group (timeout, client gone, stream cut).
    pub(crate) fn kill(&mut self) {
        if !self.finished {
            self.child.signal(libc::SIGKILL, true);
        }
    }

    /// The next event; `None` after [`Event::Exit`].
    pub(crate) async fn next(&mut self) -> Option<Event> {
        if self.finished {
            return None;
        }
        loop {
            if let Some((code, grace_end)) = self.exited {
                if self.rx_open {
                    match tokio::time::timeout_at(grace_end, self.rx.recv()).await {
                        Ok(Some(c)) => {
                            self.exited = Some((code, Instant::now() + DRAIN_IDLE));
                            return Some(chunk_event(c));
                        }
                        Ok(None) => self.rx_open = false,
                        Err(_) => self.rx_open = false,
                    }
                    continue;
                }
                self.finished = true;
                let code = if self.timed_out.is_some() {
                    TIMEOUT_EXIT_CODE
                } else {
                    code
                };
                return Some(Event::Exit(code));
            }
            let timeout_at = match (self.timed_out, self.deadline) {
                // Killed but not gone (e.g. frozen by a pause): give up waiting after 2 s.
                (Some(t), _) => Some(t + Duration::from_secs(2)),
                (None, d) => d,
            };
            tokio::select! {
                c = self.rx.recv(), if self.rx_open => match c {
                    Some(c) => return Some(chunk_event(c)),
                    None => self.rx_open = false,
                },
                st = self.child.wait() => {
                    self.exited = Some((exit_code(st), Instant::now() + DRAIN_IDLE));
                }
                _ = sleep_until_opt(timeout_at) => {
                    if self.timed_out.is_none() {
                        self.timed_out = Some(Instant::now());
                        self.kill();
                        return Some(Event::TimedOut);
                    }
                    self.exited = Some((TIMEOUT_EXIT_CODE, Instant::now()));
                }
            }
        }
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn chunk_event(c: Chunk) -> Event {
    match c {
        Chunk::Out(b) => Event::Stdout(b),
        Chunk::Err(b) => Event::Stderr(b),
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // Like a request context in boxd: a command nobody waits for any more is killed.
        if !self.finished {
            self.kill();
        }
    }
}

/// Incremental UTF-8 decoding: a multi-byte character split across chunks is kept until its
/// end arrives; invalid bytes become U+FFFD.
#[derive(Default)]
pub(crate) struct Utf8Decoder {
    pending: Vec<u8>,
}

impl Utf8Decoder {
    pub(crate) fn push(&mut self, data: &[u8]) -> String {
        self.pending.extend_from_slice(data);
        let mut out = String::new();
        let mut start = 0;
        loop {
            match std::str::from_utf8(&self.pending[start..]) {
                Ok(s) => {
                    out.push_str(s);
                    start = self.pending.len();
                    break;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // the prefix is valid UTF-8: lossy decoding copies it unchanged
                    out.push_str(&String::from_utf8_lossy(
                        &self.pending[start..start + valid],
                    ));
                    match e.error_len() {
                        Some(bad) => {
                            out.push('\u{FFFD}');
                            start += valid + bad;
                        }
                        None => {
                            // incomplete sequence at the end: keep it for the next chunk
                            start += valid;
                            break;
                        }
                    }
                }
            }
        }
        self.pending.drain(..start);
        out
    }

    /// Whatever is left (an incomplete sequence) as replacement characters.
    pub(crate) fn finish(&mut self) -> String {
        let rest = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        rest
    }
}

/// Collects output for `/exec`: up to [`OUTPUT_CAP`] bytes combined.
#[derive(Default)]
pub(crate) struct Collected {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub truncated: bool,
}

impl Collected {
    pub(crate) fn push(&mut self, data: &[u8], is_err: bool) {
        let room = OUTPUT_CAP.saturating_sub(self.stdout.len() + self.stderr.len());
        if data.len() > room {
            self.truncated = true;
        }
        let take = &data[..data.len().min(room)];
        if is_err {
            self.stderr.extend_from_slice(take);
        } else {
            self.stdout.extend_from_slice(take);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_split_across_chunks() {
        let text = "héllo €";
        let bytes = text.as_bytes();
        let mut d = Utf8Decoder::default();
        let mut out = String::new();
        for b in bytes {
            out.push_str(&d.push(std::slice::from_ref(b)));
        }
        out.push_str(&d.finish());
        assert_eq!(out, text);
        let mut d = Utf8Decoder::default();
        assert_eq!(d.push(b"a\xffb"), "a\u{FFFD}b");
        assert_eq!(d.push(b"\xe2\x82"), "");
        assert_eq!(d.finish(), "\u{FFFD}");
    }

    #[test]
    fn collected_caps_output() {
        let mut c = Collected::default();
        c.push(&vec![b'a'; OUTPUT_CAP - 1], false);
        assert!(!c.truncated);
        c.push(b"xyz", true);
        assert!(c.truncated);
        assert_eq!(c.stdout.len() + c.stderr.len(), OUTPUT_CAP);
    }
}
