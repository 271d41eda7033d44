//! What `stop`, `status` and `reload` need from a configuration that may
//! be broken: the pid file, the status file and `daemon_user` (whose files
//! those may be). A stray comma, an unknown key or a password file that
//! cannot be found must not keep an operator from stopping the daemon or
//! reading its status, so these three are picked out of the text without
//! validating anything else: top-level `"key": "string"` members, comments
//! skipped, anything unreadable ignored, defaults for what is not found.

use super::defaults;
use super::ConfigError;
use std::path::{Path, PathBuf};

/// The paths and user the control commands use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlPaths {
    pub pid_file: PathBuf,
    pub status_file: PathBuf,
    pub daemon_user: String,
}

impl Default for ControlPaths {
    fn default() -> Self {
        ControlPaths {
            pid_file: defaults::PID_FILE.into(),
            status_file: defaults::STATUS_FILE.into(),
            daemon_user: defaults::DAEMON_USER.into(),
        }
    }
}

/// Reads `path` and picks its control paths (see `control_paths`); an
/// error only when the file cannot be read at all.
pub fn read_control_paths(path: &Path) -> Result<ControlPaths, ConfigError> {
    let bytes = std::fs::read(path).map_err(|reason| ConfigError::Read {
        path: path.to_path_buf(),
        reason,
    })?;
    Ok(control_paths(&String::from_utf8_lossy(&bytes)))
}

/// `pid_file`, `status_file` and `daemon_user` as written at the top level
/// of `text` (JSON with comments, broken or not), defaults for the rest.
/// A key written twice: the last one wins. A value that is not a non-empty
/// string (without NUL) is ignored.
pub(crate) fn control_paths(text: &str) -> ControlPaths {
    let mut out = ControlPaths::default();
    let mut depth = 0usize;
    // The top-level tokens just seen: a key, then a colon.
    let mut key: Option<String> = None;
    let mut colon = false;
    for token in Tokens::new(text) {
        let top = depth == 1;
        match token {
            Token::Open | Token::Close => {
                depth = match token {
                    Token::Open => depth + 1,
                    _ => depth.saturating_sub(1),
                };
                key = None;
                colon = false;
            }
            Token::Colon if top && key.is_some() => colon = true,
            Token::Str(raw) if top && colon => {
                if let (Some(k), Some(v)) = (key.take(), decode(raw)) {
                    if !v.is_empty() && !v.contains('\0') {
                        match k.as_str() {
                            "pid_file" => out.pid_file = v.into(),
                            "status_file" => out.status_file = v.into(),
                            "daemon_user" => out.daemon_user = v,
                            _ => {}
                        }
                    }
                }
                colon = false;
            }
            Token::Str(raw) if top => {
                key = decode(raw);
                colon = false;
            }
            _ => {
                key = None;
                colon = false;
            }
        }
    }
    out
}

/// A JSON string token's value, `None` when it is not a valid one.
fn decode(raw: &str) -> Option<String> {
    serde_json::from_str(raw).ok()
}

#[derive(Debug, PartialEq, Eq)]
enum Token<'a> {
    /// `{` or `[`.
    Open,
    /// `}` or `]`.
    Close,
    Colon,
    /// A string with its quotes, escapes as written.
    Str(&'a str),
    /// Anything else: a comma, a number, a word, a stray character.
    Other,
}

/// The tokens of JSON with comments, never failing: comments are skipped,
/// a string ends at its closing quote or at the end of its line.
struct Tokens<'a> {
    text: &'a str,
    i: usize,
}

impl<'a> Tokens<'a> {
    fn new(text: &'a str) -> Self {
        Tokens { text, i: 0 }
    }

    fn byte(&self, at: usize) -> Option<u8> {
        self.text.as_bytes().get(at).copied()
    }

    /// Moves past the first `end` at or after `self.i` (or to the end).
    fn skip_past(&mut self, end: &str) {
        self.i = match self.text.get(self.i..).and_then(|rest| rest.find(end)) {
            Some(at) => self.i + at + end.len(),
            None => self.text.len(),
        };
    }
}

impl<'a> Iterator for Tokens<'a> {
    type Item = Token<'a>;

    fn next(&mut self) -> Option<Token<'a>> {
        loop {
            let b = self.byte(self.i)?;
            let start = self.i;
            self.i += 1;
            return Some(match b {
                b' ' | b'\t' | b'\r' | b'\n' => continue,
                b'/' if self.byte(self.i) == Some(b'/') => {
                    self.skip_past("\n");
                    continue;
                }
                b'/' if self.byte(self.i) == Some(b'*') => {
                    self.i += 1;
                    self.skip_past("*/");
                    continue;
                }
                b'{' | b'[' => Token::Open,
                b'}' | b']' => Token::Close,
                b':' => Token::Colon,
                b'"' => {
                    loop {
                        match self.byte(self.i) {
                            None | Some(b'\n') => break,
                            Some(b'\\') => self.i += 2,
                            Some(b'"') => {
                                self.i += 1;
                                break;
                            }
                            Some(_) => self.i += 1,
                        }
                    }
                    self.i = self.i.min(self.text.len());
                    // Quotes and backslashes are ASCII: on boundaries.
                    self.text
                        .get(start..self.i)
                        .map_or(Token::Other, Token::Str)
                }
                _ => {
                    // A word or number up to the next delimiter; a lone
                    // byte of a multi-byte character stays inside it.
                    while let Some(c) = self.byte(self.i) {
                        if matches!(
                            c,
                            b' ' | b'\t'
                                | b'\r'
                                | b'\n'
                                | b'{'
                                | b'}'
                                | b'['
                                | b']'
                                | b':'
                                | b','
                                | b'"'
                                | b'/'
                        ) {
                            break;
                        }
                        self.i += 1;
                    }
                    Token::Other
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(pid: &str, status: &str, user: &str) -> ControlPaths {
        ControlPaths {
            pid_file: pid.into(),
            status_file: status.into(),
            daemon_user: user.into(),
        }
    }

    #[test]
    fn picks_the_three_keys_from_a_valid_file() {
        // Comments are skipped, keys in them too (the last key wins, so
        // they come after the real ones).
        let text = r#"{
            "dbname": "plusmoin",
            "pid_file": "/run/p/p.pid",
            "status_file": "/var/lib/p/status.json",
            // "pid_file": "/not/this",
            "daemon_user": "plusmoin", /* "status_file": "/nor/this",
            "daemon_user": "nor-this" */
            "nodes": [{"host": "a", "port": 1}]
        }"#;
        assert_eq!(
            control_paths(text),
            paths("/run/p/p.pid", "/var/lib/p/status.json", "plusmoin")
        );
    }

    #[test]
    fn a_broken_file_still_gives_its_paths() {
        // A stray comma, an unknown key, a missing password file and an
        // unterminated value further down: none of it matters here.
        let text = "{\n \"pid_file\": \"/run/x.pid\",,\n \"password_file\": \"/nope\",\n \
                    \"hearbeat\": 5,\n \"status_file\": \"/tmp/s \\\"q\\\".json\",\n \
                    \"dbname\": \"unterminated\n}";
        let got = control_paths(text);
        assert_eq!(got, paths("/run/x.pid", "/tmp/s \"q\".json", "nobody"));
    }

    #[test]
    fn only_top_level_strings_count_and_defaults_fill_the_rest() {
        let text = r#"{
            "pgpool": {"pid_file": "/nested.pid"},
            "nodes": [{"status_file": "/nested.json"}, "pid_file", ":", "/x"],
            "daemon_user": 42,
            "status_file": "",
            "pid_file": "/first.pid", "pid_file": "/last.pid"
        }"#;
        let got = control_paths(text);
        let d = ControlPaths::default();
        assert_eq!(
            got,
            paths("/last.pid", d.status_file.to_str().unwrap(), "nobody")
        );
        assert_eq!(control_paths(""), d);
        assert_eq!(control_paths("\"pid_file\": \"/x\""), d, "not in an object");
        assert_eq!(control_paths("{ /* unterminated"), d);
        assert_eq!(
            control_paths("{\"pid_file\": \"\\u00e9t\u{e9}.pid\"}").pid_file,
            PathBuf::from("\u{e9}t\u{e9}.pid")
        );
    }

    #[test]
    fn an_unreadable_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.json");
        let e = read_control_paths(&missing).unwrap_err().to_string();
        assert!(
            e.contains(&missing.display().to_string()) && e.contains("cannot read"),
            "{e}"
        );
        std::fs::write(&missing, "{\"pid_file\": \"/p.pid\",}").unwrap();
        assert_eq!(
            read_control_paths(&missing).unwrap().pid_file,
            PathBuf::from("/p.pid")
        );
    }
}
