use serde::{Deserialize, Serialize};

use super::null_default;

/// The outcome of a command. A non-zero `exit_code` is a result, not an error.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct CommandResult {
    /// Everything the command wrote to stdout.
    #[serde(default, deserialize_with = "null_default")]
    pub stdout: String,
    /// Everything the command wrote to stderr (plus server notices).
    #[serde(default, deserialize_with = "null_default")]
    pub stderr: String,
    /// Exit code.
    #[serde(default, deserialize_with = "null_default")]
    pub exit_code: i32,
    /// `true` when the server dropped the tail of the output (one-shot runs only).
    #[serde(default, deserialize_with = "null_default")]
    pub truncated: bool,
}
