//! The configuration's one error type: every message is one line that names
//! the file, then the line and column and the key when they are known.

use super::json::Position;
use std::path::PathBuf;

/// Why a configuration was refused.
///
/// `Display` gives `FILE:LINE:COL: KEY: problem`, dropping the parts that are
/// unknown. The I/O cause of [`ConfigError::Read`] is part of that line rather
/// than a `source()`, so that a cause-chain printer does not repeat it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read (missing, unreadable, a directory…).
    #[error("{}", render(path, None, None, &format!("cannot read: {reason}")))]
    Read {
        path: PathBuf,
        reason: std::io::Error,
    },
    /// The text is not JSON with comments.
    #[error("{}", render(path, Some(*position), None, message))]
    Syntax {
        path: PathBuf,
        position: Position,
        message: String,
    },
    /// Valid JSON that is not a valid configuration.
    #[error("{}", render(path, *position, key.as_deref(), problem))]
    Invalid {
        path: PathBuf,
        position: Option<Position>,
        /// The offending key as a path: `heartbeat`, `nodes[1].port`,
        /// `triggers.master_down`.
        key: Option<String>,
        problem: String,
    },
}

impl ConfigError {
    /// Where in the file, when known.
    #[cfg(test)]
    pub(crate) fn position(&self) -> Option<Position> {
        match self {
            ConfigError::Read { .. } => None,
            ConfigError::Syntax { position, .. } => Some(*position),
            ConfigError::Invalid { position, .. } => *position,
        }
    }
}

fn render(
    path: &std::path::Path,
    position: Option<Position>,
    key: Option<&str>,
    problem: &str,
) -> String {
    let mut out = path.display().to_string();
    if let Some(p) = position {
        out.push_str(&format!(":{p}"));
    }
    out.push_str(": ");
    if let Some(k) = key {
        out.push_str(k);
        out.push_str(": ");
    }
    out.push_str(problem);
    one_line(&out)
}

/// Control characters (a newline in a file name or a key, say) are escaped:
/// the message must stay one line whatever the input.
fn one_line(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_string();
    }
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}
