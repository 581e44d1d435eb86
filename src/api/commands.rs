use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use reqwest::Method;

use super::flavor::{ExecEvents, SessionStdin};
use super::sandbox::Tokens;
use super::{dual, rt, Sandbox};
use crate::error::{Error, Result};
use crate::models::{CommandResult, ExecEvent, Signal};
use crate::options::RunOptions;
use crate::wire::exec::{Collected, Failure, SseExecDecoder, EXEC_SUBPROTOCOL};

/// How much longer than a command's timeout the SDK waits for the server's answer.
const ANSWER_MARGIN: Duration = Duration::from_secs(5);

/// Runs commands inside a sandbox. Made by [`Sandbox::commands`].
///
/// Every method fails with [`Error::SandboxDeleted`] once the sandbox handle was killed, and
/// with [`Error::CommandStart`] (code `exec_failed`) when the command could not be started
/// (no such working directory, ...), whichever way it was run.
///
/// What dropping a call's future does (async): `run`/`run_with` closes the connection, and the
/// server ends the command; a [`run_stream`](Self::run_stream) stream does the same when it is
/// dropped; a `spawn` future dropped before it returned leaves nothing behind (a session that
/// was already opened is closed and its command sent SIGTERM).
#[derive(Clone)]
pub struct Commands {
    sandbox: Sandbox,
}

impl fmt::Debug for Commands {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Commands")
            .field("sandbox", &self.sandbox.id())
            .finish()
    }
}

/// An interactive command: stdin can be written while output arrives. Made by
/// [`Commands::spawn`] and [`Commands::spawn_with`].
///
/// Output goes to the `on_stdout`/`on_stderr` callbacks of the [`RunOptions`] as it arrives,
/// is collected (up to `max_output_bytes` per stream) for the [`CommandResult`] that
/// [`wait`](Self::wait) returns, and can be pulled as events with [`events`](Self::events).
///
/// Dropping the session ends it, in both flavours, as [`close`](Self::close) does: the
/// command gets `SIGTERM` if it is still running, up to 2 s to finish, then the connection is
/// closed (and the server kills whatever is left). This happens on the SDK's I/O task: `drop`
/// itself does not wait.
pub struct CommandSession {
    inner: rt::ExecSession,
}

impl fmt::Debug for CommandSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CommandSession")
            .field("finished", &self.inner.is_settled())
            .finish_non_exhaustive()
    }
}

/// Pulls the events of a `/exec/stream` response, one at a time (shared by both flavours'
/// [`ExecEvents`]).
pub(crate) struct SseEvents {
    resp: Option<rt::StreamResponse>,
    decoder: SseExecDecoder,
    queue: VecDeque<std::result::Result<ExecEvent, Failure>>,
}

#[dual]
impl SseEvents {
    fn new(resp: rt::StreamResponse) -> SseEvents {
        SseEvents {
            resp: Some(resp),
            decoder: SseExecDecoder::default(),
            queue: VecDeque::new(),
        }
    }

    /// The next event; after `Exit` or an error, `None`. The connection is closed as soon as
    /// the last event is known.
    pub(crate) async fn next(&mut self) -> Option<Result<ExecEvent>> {
        loop {
            if let Some(item) = self.queue.pop_front() {
                if !matches!(item, Ok(ExecEvent::Stdout(_) | ExecEvent::Stderr(_))) {
                    self.resp = None;
                    self.queue.clear();
                }
                return Some(item.map_err(Failure::into_error));
            }
            let resp = self.resp.as_mut()?;
            match resp.next_chunk().await {
                Ok(chunk) => self.decoder.feed(chunk.as_deref(), &mut self.queue),
                Err(e) => {
                    self.resp = None;
                    return Some(Err(e));
                }
            }
        }
    }
}

#[dual]
impl Commands {
    pub(crate) fn new(sandbox: Sandbox) -> Commands {
        Commands { sandbox }
    }

    /// The timeout sent with a run: the options' own, else the configuration's default.
    fn run_timeout(&self, opts: &RunOptions) -> u64 {
        opts.timeout_seconds
            .unwrap_or_else(|| self.sandbox.config().timeouts().command.as_secs().max(1))
    }

    /// Runs `command` (through `/bin/sh -c`) and returns its output and exit code.
    ///
    /// The command may run for the configuration's default timeout
    /// ([`Timeouts::command`](crate::Timeouts::command), 30 s): the server then ends it and
    /// the result has exit code 124 and the output so far. A non-zero exit code is a result,
    /// not an error ([`CommandResult::check`] makes it one).
    pub async fn run(&self, command: &str) -> Result<CommandResult> {
        self.run_with(command, RunOptions::new()).await
    }

    /// Runs `command` with options. With an output callback the output is streamed to it as
    /// it arrives (and still collected into the result, up to `max_output_bytes` per stream).
    #[tracing::instrument(name = "commands.run", level = "debug", skip_all, fields(sandbox_id = self.sandbox.id()))]
    pub async fn run_with(&self, command: &str, opts: RunOptions) -> Result<CommandResult> {
        self.sandbox.ensure_live()?;
        let timeout_s = self.run_timeout(&opts);
        let body = opts.body(command, Some(timeout_s))?;
        let wait = Duration::from_secs(timeout_s) + ANSWER_MARGIN;
        if opts.has_callbacks() {
            let mut events = self.open_events(&body, wait).await?;
            let callbacks = opts.callbacks();
            let mut collected = Collected::new(opts.max_output_bytes);
            while let Some(item) = events.next().await {
                let ev = item?;
                if let ExecEvent::Exit(code) = ev {
                    return Ok(collected.into_result(code));
                }
                callbacks.call(&ev);
                collected.push(&ev);
            }
            return Err(Error::stream("command stream ended without an exit code"));
        }
        let build = |t: &Tokens| {
            self.sandbox
                .dp_req(t, Method::POST, "/exec", wait)
                .json(&body)
        };
        let resp = self.sandbox.dp_send(&build).await?;
        let r: CommandResult = resp.json("POST /exec")?;
        Ok(cap_result(r, opts.max_output_bytes))
    }

    /// Runs `command` and returns its output as it arrives: an iterator (blocking) or a
    /// `Stream` (async) of [`ExecEvent`]s, the last being [`ExecEvent::Exit`].
    ///
    /// A stream that ends without the exit (a cut connection, a command that could not start)
    /// yields an error as its last item, never a silent end. Dropping it closes the connection,
    /// and the server ends the command. The timeout is the options' own, else the
    /// configuration's default, as for [`run`](Self::run). Callbacks in `opts` are not used
    /// (the events carry the output).
    ///
    /// ```no_run
    /// # #[cfg(feature = "blocking")]
    /// # fn demo(sb: &superserve::Sandbox) -> superserve::Result<()> {
    /// use superserve::{ExecEvent, RunOptions};
    /// for event in sb.commands().run_stream("make -j2", RunOptions::new())? {
    ///     match event? {
    ///         ExecEvent::Stdout(s) => print!("{s}"),
    ///         ExecEvent::Stderr(s) => eprint!("{s}"),
    ///         ExecEvent::Exit(code) => println!("exit {code}"),
    ///         _ => {}
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// ```no_run
    /// # #[cfg(feature = "async")]
    /// # async fn demo(sb: &superserve::AsyncSandbox) -> superserve::Result<()> {
    /// use futures_util::StreamExt;
    /// use superserve::{ExecEvent, RunOptions};
    /// let mut events = sb.commands().run_stream("make -j2", RunOptions::new()).await?;
    /// while let Some(event) = events.next().await {
    ///     if let ExecEvent::Stdout(s) = event? {
    ///         print!("{s}");
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    #[tracing::instrument(name = "commands.run_stream", level = "debug", skip_all, fields(sandbox_id = self.sandbox.id()))]
    pub async fn run_stream(&self, command: &str, opts: RunOptions) -> Result<ExecEvents> {
        self.sandbox.ensure_live()?;
        let timeout_s = self.run_timeout(&opts);
        let body = opts.body(command, Some(timeout_s))?;
        let wait = Duration::from_secs(timeout_s) + ANSWER_MARGIN;
        let events = self.open_events(&body, wait).await?;
        Ok(ExecEvents::from_sse(events))
    }

    async fn open_events(&self, body: &serde_json::Value, idle: Duration) -> Result<SseEvents> {
        let build = |t: &Tokens| {
            self.sandbox
                .dp_req(t, Method::POST, "/exec/stream", idle)
                .json(body)
        };
        let resp = self.sandbox.dp_stream(&build, idle).await?;
        Ok(SseEvents::new(resp))
    }

    /// Starts `command` as an interactive session over a WebSocket (no timeout).
    pub async fn spawn(&self, command: &str) -> Result<CommandSession> {
        self.spawn_with(command, RunOptions::new()).await
    }

    /// Starts `command` as an interactive session with options.
    ///
    /// Works in both flavours. Callbacks run on the SDK's I/O task, so output keeps flowing
    /// while the caller writes stdin. A session has no timeout unless the options set one.
    ///
    /// ```no_run
    /// # #[cfg(feature = "blocking")]
    /// # fn demo(sb: &superserve::Sandbox) -> superserve::Result<()> {
    /// use std::io::Write;
    /// let session = sb.commands().spawn_with("python3 -i -q", superserve::RunOptions::new())?;
    /// writeln!(session.stdin(), "print(2 + 2)").unwrap();
    /// session.close_stdin()?;
    /// assert_eq!(session.wait()?.stdout, "4\n");
    /// # Ok(()) }
    /// ```
    #[tracing::instrument(name = "commands.spawn", level = "debug", skip_all, fields(sandbox_id = self.sandbox.id()))]
    pub async fn spawn_with(&self, command: &str, opts: RunOptions) -> Result<CommandSession> {
        self.sandbox.ensure_live()?;
        let start = opts.body(command, None)?.to_string();
        let config = self.sandbox.config().clone();
        let (url, needs_id) = config.exec_connect_url(self.sandbox.id());
        let sandbox_id = needs_id.then(|| self.sandbox.id().to_owned());
        let tokens = self.sandbox.fresh_tokens().await?;
        let dial = |t: &Tokens| {
            let mut protocols = vec![
                EXEC_SUBPROTOCOL.to_owned(),
                format!("token.{}", t.access_token),
            ];
            if let Some(h) = &t.routing_hint {
                protocols.push(format!("route.{h}"));
            }
            rt::ExecDial {
                url: url.clone(),
                protocols,
                sandbox_id: sandbox_id.clone(),
                connect_timeout: config.timeouts().connect,
                start: start.clone(),
                callbacks: opts.callbacks(),
                max_output_bytes: opts.max_output_bytes,
            }
        };
        let inner = match rt::ExecSession::connect(dial(&tokens)).await {
            Ok(s) => s,
            Err(e @ Error::BlockingInAsyncContext) => return Err(e),
            Err(e) => {
                // Any dial failure: re-activate once (resumes a paused sandbox, rotates the
                // token) and dial again.
                tracing::info!(sandbox_id = self.sandbox.id(), error = %e, "superserve: exec/connect failed; re-activating and dialing again");
                self.sandbox.refresh(tokens.revision).await?;
                rt::ExecSession::connect(dial(&self.sandbox.tokens())).await?
            }
        };
        Ok(CommandSession { inner })
    }
}

/// Keeps at most `cap` bytes of each stream of a buffered result.
fn cap_result(mut r: CommandResult, cap: usize) -> CommandResult {
    for s in [&mut r.stdout, &mut r.stderr] {
        if s.len() > cap {
            let mut cut = cap;
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            s.truncate(cut);
            r.truncated = true;
        }
    }
    r
}

#[dual]
impl CommandSession {
    /// Writes to the command's stdin (sent in chunks of at most 32 KiB). A no-op once the
    /// command has finished.
    pub async fn write_stdin(&self, data: impl AsRef<[u8]>) -> Result<()> {
        for chunk in data.as_ref().chunks(crate::wire::exec::STDIN_CHUNK) {
            let frame = crate::wire::exec::stdin_frame(chunk);
            self.inner.send(rt::binary_frame(frame)).await?;
        }
        Ok(())
    }

    /// Closes stdin (EOF). A no-op once the command has finished.
    pub async fn close_stdin(&self) -> Result<()> {
        self.inner
            .send(rt::text_frame(crate::wire::exec::stdin_close_frame()))
            .await
    }

    /// A writer for stdin: `std::io::Write` (blocking) or `tokio::io::AsyncWrite` (async), so
    /// that `io::copy(&mut file, &mut session.stdin())` works. Dropping it does not close
    /// stdin: call [`close_stdin`](Self::close_stdin) (or, async, `shutdown()`) for EOF.
    pub fn stdin(&self) -> SessionStdin {
        SessionStdin::new(self.inner.stdin())
    }

    /// Sends `SIGTERM` (the references' default). A no-op once the command has finished.
    pub async fn kill(&self) -> Result<()> {
        self.signal(Signal::Term).await
    }

    /// Sends a signal. A no-op once the command has finished.
    pub async fn signal(&self, signal: Signal) -> Result<()> {
        self.inner
            .send(rt::text_frame(crate::wire::exec::signal_frame(
                signal.as_str(),
            )))
            .await
    }

    /// Waits for the command to finish and returns its result. Fails with [`Error::Stream`]
    /// when the connection closed before the command finished, and with
    /// [`Error::CommandStart`] when it could not start.
    pub async fn wait(&self) -> Result<CommandResult> {
        self.inner.wait().await.map_err(Failure::into_error)
    }

    /// The session's output as events, for callers who would rather pull than register
    /// callbacks: an iterator (blocking) or a `Stream` (async) of [`ExecEvent`]s ending with
    /// [`ExecEvent::Exit`], or an error if the command could not start or the connection
    /// broke.
    ///
    /// Output that arrived before the call comes first (all of stdout collected so far, then
    /// all of stderr), then every event as it arrives. An events stream that is not read holds
    /// the session's output (backpressure); dropping it lets the output flow again. A second
    /// call takes over from the first.
    pub fn events(&self) -> ExecEvents {
        ExecEvents::from_session(self.inner.events())
    }

    /// `true` once the command has finished or the session has ended.
    pub fn is_finished(&self) -> bool {
        self.inner.is_settled()
    }

    /// Ends the session: sends `SIGTERM` if the command is still running, gives it up to 2 s
    /// to finish, and closes the connection (in the background: this returns at once). A later
    /// [`wait`](Self::wait) fails with "session closed" unless the command had already
    /// finished.
    pub async fn close(&self) -> Result<()> {
        self.inner.close().await;
        Ok(())
    }
}
