use serde::{Deserialize, Serialize};

use super::null_default;
use crate::error::{Error, Result};

/// The outcome of a command. A non-zero `exit_code` is a result, not an error; use
/// [`check`](Self::check) to turn it into one.
///
/// ```
/// # fn demo(r: superserve::CommandResult) -> superserve::Result<()> {
/// let r = r.check()?; // fails with Error::CommandFailed unless the exit code is 0
/// println!("{}", r.stdout);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct CommandResult {
    /// What the command wrote to stdout (at most `RunOptions::max_output_bytes`).
    #[serde(default, deserialize_with = "null_default")]
    pub stdout: String,
    /// What the command wrote to stderr (plus server notices; at most
    /// `RunOptions::max_output_bytes`).
    #[serde(default, deserialize_with = "null_default")]
    pub stderr: String,
    /// Exit code (124 when the command's timeout ended it; 128+N when signal N killed it).
    #[serde(default, deserialize_with = "null_default")]
    pub exit_code: i32,
    /// `true` when output was left out: by the server (one-shot runs keep 10 MiB of combined
    /// output), or because a stream went past `RunOptions::max_output_bytes`.
    #[serde(default, deserialize_with = "null_default")]
    pub truncated: bool,
}

/// How much of stderr an [`Error::CommandFailed`] keeps.
const STDERR_TAIL_CHARS: usize = 2000;

impl CommandResult {
    /// `true` when the exit code is 0.
    pub fn success(&self) -> bool {
        self.exit_code == 0
    }

    /// The result itself when the exit code is 0; otherwise [`Error::CommandFailed`] with the
    /// exit code and the last 2,000 characters of stderr.
    ///
    /// ```
    /// # #[cfg(feature = "blocking")]
    /// # fn demo(sb: &superserve::Sandbox) -> superserve::Result<()> {
    /// let out = sb.commands().run("make test")?.check()?;
    /// # let _ = out; Ok(()) }
    /// ```
    pub fn check(self) -> Result<CommandResult> {
        if self.success() {
            return Ok(self);
        }
        let chars = self.stderr.chars().count();
        let tail: String = self
            .stderr
            .chars()
            .skip(chars.saturating_sub(STDERR_TAIL_CHARS))
            .collect();
        Err(Error::CommandFailed {
            exit_code: self.exit_code,
            stderr_tail: tail,
        })
    }
}

/// Something a running command did, as streamed by `Commands::run_stream` and
/// `CommandSession::events`.
///
/// Output is decoded UTF-8 (a character split across chunks is joined; invalid bytes become
/// U+FFFD). `Exit` is the last event.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExecEvent {
    /// A chunk of stdout.
    Stdout(String),
    /// A chunk of stderr.
    Stderr(String),
    /// The command finished with this exit code (124 after its timeout, 128+N after signal N).
    Exit(i32),
}

/// A signal for a running session (`CommandSession::signal`): the ones the exec bridge
/// forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Signal {
    /// `SIGTERM`: ask the command to end (what `kill()` sends).
    Term,
    /// `SIGINT`: as Ctrl-C in a terminal.
    Int,
    /// `SIGHUP`: the terminal hung up.
    Hup,
    /// `SIGQUIT`: quit (many programs dump core).
    Quit,
}

impl Signal {
    /// The wire name (`"SIGTERM"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Signal::Term => "SIGTERM",
            Signal::Int => "SIGINT",
            Signal::Hup => "SIGHUP",
            Signal::Quit => "SIGQUIT",
        }
    }
}

impl std::fmt::Display for Signal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_keeps_the_tail_of_stderr() {
        let ok = CommandResult {
            stdout: "x".into(),
            ..CommandResult::default()
        };
        assert!(ok.success());
        assert_eq!(ok.clone().check().unwrap(), ok);
        let failed = CommandResult {
            stderr: format!("{}END", "e".repeat(5000)),
            exit_code: 3,
            ..CommandResult::default()
        };
        match failed.check() {
            Err(Error::CommandFailed {
                exit_code,
                stderr_tail,
            }) => {
                assert_eq!(exit_code, 3);
                assert_eq!(stderr_tail.chars().count(), STDERR_TAIL_CHARS);
                assert!(stderr_tail.ends_with("END"));
            }
            other => panic!("{other:?}"),
        }
    }
}
