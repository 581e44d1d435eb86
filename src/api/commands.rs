use std::fmt;
use std::time::Duration;

use reqwest::Method;

use super::sandbox::Tokens;
use super::{dual, rt, Sandbox};
use crate::error::{Error, Result};
use crate::models::CommandResult;
use crate::options::RunOptions;
use crate::wire::exec::{check_signal, stdin_frames, OutputSink, EXEC_SUBPROTOCOL};
use crate::wire::sse::SseDecoder;

/// Runs commands inside a sandbox. Made by [`Sandbox::commands`].
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
/// [`Commands::spawn`].
///
/// Output goes to the `on_stdout`/`on_stderr` callbacks of the [`RunOptions`] as it arrives,
/// and is collected for the [`CommandResult`] that [`wait`](Self::wait) returns. Dropping the
/// session closes it (and sends `SIGTERM` to a command still running).
pub struct CommandSession {
    inner: rt::ExecSession,
}

impl fmt::Debug for CommandSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CommandSession").finish_non_exhaustive()
    }
}

#[dual]
impl Commands {
    pub(crate) fn new(sandbox: Sandbox) -> Commands {
        Commands { sandbox }
    }

    /// Runs `command` (through `/bin/sh -c`) and returns its output and exit code.
    pub async fn run(&self, command: &str) -> Result<CommandResult> {
        self.run_with(command, RunOptions::new()).await
    }

    /// Runs `command` with options. With an output callback the output is streamed.
    pub async fn run_with(&self, command: &str, opts: RunOptions) -> Result<CommandResult> {
        let body = opts.body(command)?;
        if opts.has_callbacks() {
            return self.run_streamed(&body, opts).await;
        }
        let timeout = Duration::from_secs(opts.timeout_seconds.map_or(30, |t| t.saturating_add(5)));
        let build = |t: &Tokens| {
            self.sandbox
                .dp_req(t, Method::POST, "/exec", timeout)
                .header("content-type", "application/json")
                .json(&body)
        };
        let resp = self.sandbox.dp_send(&build).await?;
        resp.json("POST /exec")
    }

    async fn run_streamed(
        &self,
        body: &serde_json::Value,
        opts: RunOptions,
    ) -> Result<CommandResult> {
        let idle = Duration::from_secs(opts.timeout_seconds.map_or(300, |t| t.saturating_add(5)));
        let build = |t: &Tokens| {
            self.sandbox
                .dp_req(t, Method::POST, "/exec/stream", idle)
                .header("content-type", "application/json")
                .json(body)
        };
        let mut resp = self.sandbox.dp_stream(&build, idle).await?;
        let mut decoder = SseDecoder::default();
        let mut events = Vec::new();
        let mut result = CommandResult::default();
        loop {
            let chunk = resp.next_chunk().await?;
            match &chunk {
                Some(c) => decoder.feed(c, &mut events),
                None => decoder.finish(&mut events),
            }
            for ev in events.drain(..) {
                if let Some(s) = ev.stdout.filter(|s| !s.is_empty()) {
                    if let Some(cb) = &opts.on_stdout {
                        cb(&s);
                    }
                    result.stdout.push_str(&s);
                }
                if let Some(s) = ev.stderr.filter(|s| !s.is_empty()) {
                    if let Some(cb) = &opts.on_stderr {
                        cb(&s);
                    }
                    result.stderr.push_str(&s);
                }
                if ev.finished {
                    if let Some(e) = ev.error {
                        if let Some(cb) = &opts.on_stderr {
                            cb(&e);
                        }
                        result.stderr.push_str(&e);
                    }
                    result.exit_code = ev.exit_code.map_or(0, |c| i32::try_from(c).unwrap_or(-1));
                    return Ok(result);
                }
            }
            if chunk.is_none() {
                return Err(Error::stream(
                    "command stream ended without a finished event (the connection was cut before the command completed)",
                ));
            }
        }
    }

    /// Starts `command` as an interactive session over a WebSocket.
    ///
    /// Works in both flavours. In the blocking flavour the callbacks run on the session's I/O
    /// thread, so output keeps flowing while the caller writes stdin.
    pub async fn spawn(&self, command: &str, opts: RunOptions) -> Result<CommandSession> {
        let start = opts.body(command)?.to_string();
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
                sink: OutputSink::new(opts.on_stdout.clone(), opts.on_stderr.clone()),
            }
        };
        let inner = match rt::ExecSession::connect(dial(&tokens)).await {
            Ok(s) => s,
            Err(_) => {
                // Any dial failure: re-activate once (resumes a paused sandbox, rotates the
                // token) and dial again.
                self.sandbox.refresh(tokens.revision).await?;
                rt::ExecSession::connect(dial(&self.sandbox.tokens())).await?
            }
        };
        Ok(CommandSession { inner })
    }
}

#[dual]
impl CommandSession {
    /// Writes to the command's stdin (sent in chunks of at most 32 KiB). A no-op once the
    /// command has finished.
    pub async fn write_stdin(&self, data: impl AsRef<[u8]>) -> Result<()> {
        for frame in stdin_frames(data.as_ref()) {
            self.inner.send_binary(frame).await?;
        }
        Ok(())
    }

    /// Closes stdin (EOF). A no-op once the command has finished.
    pub async fn close_stdin(&self) -> Result<()> {
        self.inner
            .send_text(crate::wire::exec::stdin_close_frame())
            .await
    }

    /// Sends a signal: `"SIGINT"`, `"SIGTERM"`, `"SIGHUP"` or `"SIGQUIT"` (others are rejected
    /// with [`Error::Validation`]). A no-op once the command has finished.
    pub async fn kill(&self, signal: &str) -> Result<()> {
        check_signal(signal)?;
        self.inner
            .send_text(crate::wire::exec::signal_frame(signal))
            .await
    }

    /// Waits for the command to finish and returns its result. Fails with [`Error::Stream`]
    /// when the connection closed before the command finished.
    pub async fn wait(&self) -> Result<CommandResult> {
        self.inner.wait().await.map_err(Error::stream)
    }

    /// `true` once the command has finished or the session has ended.
    pub fn is_finished(&self) -> bool {
        self.inner.is_settled()
    }

    /// Ends the session: sends `SIGTERM` if the command is still running and closes the
    /// connection. A later [`wait`](Self::wait) fails with "session closed" unless the command
    /// had already finished.
    pub async fn close(&self) -> Result<()> {
        self.inner.close().await;
        Ok(())
    }
}
