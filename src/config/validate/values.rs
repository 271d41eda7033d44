//! Single values and keys: strings (secret ones never shown), paths,
//! listen addresses, durations, ports, choices among names, and the check
//! every key goes through (known, not written twice, with a "did you mean"
//! hint).

use super::Validator;
use crate::config::json::{Json, Spanned};
use crate::config::{ConfigError, LogFormat, LogLevel, SslMode};
use serde_json::Number;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Longest duration accepted anywhere: beyond it a number is surely a slip
/// (milliseconds written as seconds), and `Duration` arithmetic stays far
/// from overflow.
const MAX_DURATION_SECS: f64 = 365.0 * 24.0 * 3600.0;
/// Shortest: below it the value would round to nothing useful.
const MIN_DURATION_SECS: f64 = 0.001;

impl Validator<'_> {
    /// Refuses a key written twice or not among `known`; `parent` prefixes
    /// the message (`nodes[0]`), empty at the top level.
    pub(super) fn check_key(
        &self,
        seen: &mut HashMap<String, usize>,
        key: &Spanned<String>,
        parent: &str,
        what: &str,
        known: &[&str],
    ) -> Result<(), ConfigError> {
        let parent_key = (!parent.is_empty()).then_some(parent);
        if !known.contains(&key.value.as_str()) {
            return Err(self.error(
                Some(key.at),
                parent_key,
                format!(
                    "unknown {what} {:?}{}",
                    key.value,
                    did_you_mean(&key.value, known)
                ),
            ));
        }
        if let Some(first) = seen.insert(key.value.clone(), key.at) {
            return Err(self.error(
                Some(key.at),
                parent_key,
                format!(
                    "duplicate {what} {:?} (first at {})",
                    key.value,
                    self.doc.position(first)
                ),
            ));
        }
        Ok(())
    }

    pub(super) fn string(&self, v: &Spanned<Json>, key: &str) -> Result<String, ConfigError> {
        match &v.value {
            Json::String(s) => Ok(s.clone()),
            other => Err(self.at(
                v.at,
                key,
                format!("expected a string, found {}", other.describe()),
            )),
        }
    }

    /// A string that must never appear in an error: a wrong type is named
    /// by its JSON type only, never by its value.
    pub(super) fn secret_string(
        &self,
        v: &Spanned<Json>,
        key: &str,
    ) -> Result<String, ConfigError> {
        let kind = match &v.value {
            Json::String(s) => return Ok(s.clone()),
            Json::Null => "null",
            Json::Bool(_) => "a boolean",
            Json::Number(..) => "a number",
            Json::Array(_) => "an array",
            Json::Object(_) => "an object",
        };
        Err(self.at(
            v.at,
            key,
            format!("expected a string, found {kind} (value not shown)"),
        ))
    }

    pub(super) fn non_empty_string(
        &self,
        v: &Spanned<Json>,
        key: &str,
    ) -> Result<String, ConfigError> {
        let s = self.string(v, key)?;
        if s.trim().is_empty() {
            return Err(self.at(v.at, key, "must not be empty"));
        }
        Ok(s)
    }

    pub(super) fn path(&self, v: &Spanned<Json>, key: &str) -> Result<PathBuf, ConfigError> {
        let s = self.non_empty_string(v, key)?;
        if s.contains('\0') {
            return Err(self.at(v.at, key, "a path cannot contain a NUL character"));
        }
        Ok(PathBuf::from(s))
    }

    /// A file mode as an octal string (`"0640"`, `"640"`): read and write
    /// bits only, the owner reading and writing, nobody else writing (the
    /// file is what operators' tools trust).
    pub(super) fn file_mode(&self, v: &Spanned<Json>, key: &str) -> Result<u32, ConfigError> {
        let s = self.string(v, key)?;
        let t = s.trim();
        let octal = (3..=4).contains(&t.len()) && t.bytes().all(|b| (b'0'..=b'7').contains(&b));
        let mode = match u32::from_str_radix(t, 8) {
            Ok(m) if octal && m <= 0o777 => m,
            _ => {
                return Err(self.at(
                    v.at,
                    key,
                    format!("{s:?} is not a file mode: write it in octal, e.g. \"0640\""),
                ))
            }
        };
        let problem = if mode & 0o111 != 0 {
            Some("has execute bits: it is a data file")
        } else if mode & 0o600 != 0o600 {
            Some("must let its owner (the daemon user) read and write it")
        } else if mode & 0o022 != 0 {
            Some("lets group or others write it: only the daemon may")
        } else {
            None
        };
        match problem {
            Some(p) => Err(self.at(v.at, key, format!("{s:?} {p} (e.g. \"0640\", \"0644\")"))),
            None => Ok(mode),
        }
    }

    /// `journal_max_bytes`: a whole number of bytes, at least 64 KiB.
    pub(super) fn journal_bytes(&self, v: &Spanned<Json>, key: &str) -> Result<u64, ConfigError> {
        let min = super::super::defaults::JOURNAL_MIN_BYTES;
        let Json::Number(number, n) = &v.value else {
            return Err(self.at(
                v.at,
                key,
                format!("expected a number of bytes, found {}", v.value.describe()),
            ));
        };
        match integer(number).map(u64::try_from) {
            Some(Ok(b)) if b >= min => Ok(b),
            Some(_) => Err(self.at(
                v.at,
                key,
                format!("{n} is less than {min} bytes (64 KiB): too small to keep a history"),
            )),
            None => Err(self.at(v.at, key, format!("{n} is not a whole number of bytes"))),
        }
    }

    /// `"IP:PORT"` (`"[::1]:9187"` for IPv6), or `null` for none. A host
    /// name is refused: the listener binds one address, known at a glance.
    pub(super) fn listen_address(
        &self,
        v: &Spanned<Json>,
        key: &str,
    ) -> Result<Option<SocketAddr>, ConfigError> {
        if matches!(v.value, Json::Null) {
            return Ok(None);
        }
        let s = self.string(v, key)?;
        let addr: SocketAddr = s.trim().parse().map_err(|_| {
            self.at(
                v.at,
                key,
                format!(
                    "{s:?} is not an IP address and port (e.g. \"127.0.0.1:9187\", \"[::1]:9187\")"
                ),
            )
        })?;
        if addr.port() == 0 {
            return Err(self.at(
                v.at,
                key,
                format!("{s:?}: port 0 would listen on a port chosen at random"),
            ));
        }
        Ok(Some(addr))
    }

    pub(super) fn duration(&self, v: &Spanned<Json>, key: &str) -> Result<Duration, ConfigError> {
        let Json::Number(number, n) = &v.value else {
            return Err(self.at(
                v.at,
                key,
                format!("expected a number of seconds, found {}", v.value.describe()),
            ));
        };
        let secs = number.as_f64().unwrap_or(f64::NAN);
        if secs.is_nan() || secs <= 0.0 {
            return Err(self.at(v.at, key, format!("{n} s is not a positive duration")));
        }
        if secs < MIN_DURATION_SECS {
            return Err(self.at(v.at, key, format!("{n} s is shorter than 1 ms")));
        }
        if secs > MAX_DURATION_SECS {
            return Err(self.at(v.at, key, format!("{n} s is longer than one year")));
        }
        Duration::try_from_secs_f64(secs)
            .map_err(|e| self.at(v.at, key, format!("{n} s is not a valid duration: {e}")))
    }

    /// A number of bytes: an integer, or a size as PostgreSQL writes one
    /// (`"16MB"`, `"512kB"`, `"100B"`; units of 1024); `null` is off.
    pub(super) fn size(&self, v: &Spanned<Json>, key: &str) -> Result<Option<u64>, ConfigError> {
        let bytes = match &v.value {
            Json::Null => return Ok(None),
            Json::Number(number, n) => integer(number)
                .and_then(|i| u64::try_from(i).ok())
                .ok_or_else(|| self.at(v.at, key, format!("{n} is not a number of bytes")))?,
            Json::String(s) => crate::cluster::parse_size(s, true).ok_or_else(|| {
                self.at(
                    v.at,
                    key,
                    format!(
                        "{s:?} is not a size: write bytes, or a number with B, kB, MB, GB or TB"
                    ),
                )
            })?,
            other => {
                return Err(self.at(
                    v.at,
                    key,
                    format!(
                        "expected a number of bytes or a size such as \"16MB\", found {}",
                        other.describe()
                    ),
                ))
            }
        };
        if bytes == 0 {
            return Err(self.at(
                v.at,
                key,
                "0 bytes: no standby could ever be in sync (write null for no limit)",
            ));
        }
        Ok(Some(bytes))
    }

    fn choice<T: Copy>(
        &self,
        v: &Spanned<Json>,
        key: &str,
        choices: &[(&str, T)],
    ) -> Result<T, ConfigError> {
        let s = self.string(v, key)?;
        if let Some((_, t)) = choices.iter().find(|(name, _)| *name == s) {
            return Ok(*t);
        }
        let names: Vec<&str> = choices.iter().map(|(n, _)| *n).collect();
        Err(self.at(
            v.at,
            key,
            format!(
                "{s:?} is not one of {}{}",
                names.join(", "),
                did_you_mean(&s, &names)
            ),
        ))
    }

    pub(super) fn log_level(&self, v: &Spanned<Json>) -> Result<LogLevel, ConfigError> {
        let choices = LogLevel::ALL.map(|l| (l.as_str(), l));
        self.choice(v, "log_level", &choices)
    }

    pub(super) fn log_format(&self, v: &Spanned<Json>) -> Result<LogFormat, ConfigError> {
        let choices = LogFormat::ALL.map(|f| (f.as_str(), f));
        self.choice(v, "log_format", &choices)
    }

    pub(super) fn sslmode(&self, v: &Spanned<Json>) -> Result<SslMode, ConfigError> {
        let choices = SslMode::ALL.map(|m| (m.as_str(), m));
        self.choice(v, "sslmode", &choices)
    }

    pub(super) fn port(&self, v: &Spanned<Json>, key: &str) -> Result<u16, ConfigError> {
        let Json::Number(number, n) = &v.value else {
            return Err(self.at(
                v.at,
                key,
                format!("expected an integer port, found {}", v.value.describe()),
            ));
        };
        match integer(number) {
            Some(p) => u16::try_from(p)
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| self.at(v.at, key, format!("{n} is outside 1-65535"))),
            None => Err(self.at(v.at, key, format!("{n} is not an integer port"))),
        }
    }
}

/// An integral number as i128, so that `-1` and `1e3` and `70000` can all
/// be judged against a range; `None` when it has a fractional part.
pub(super) fn integer(n: &Number) -> Option<i128> {
    if let Some(i) = n.as_i64() {
        return Some(i.into());
    }
    if let Some(u) = n.as_u64() {
        return Some(u.into());
    }
    let f = n.as_f64()?;
    // Beyond ±1e30 the exact value does not matter: it is out of any range.
    (f.is_finite() && f.fract() == 0.0).then(|| f.clamp(-1e30, 1e30) as i128)
}

const ALIASES: [(&str, &str); 10] = [
    ("database", "dbname"),
    ("db", "dbname"),
    ("username", "user"),
    ("pass", "password"),
    ("hosts", "nodes"),
    ("servers", "nodes"),
    ("sslcert", "sslrootcert"),
    ("sslrootcrt", "sslrootcert"),
    ("interval", "heartbeat"),
    ("timeout", "connect_timeout"),
];

/// Seconds as a person writes them: `60 s`, `0.5 s`.
pub(in crate::config) fn secs(d: Duration) -> String {
    format!("{} s", d.as_secs_f64())
}

/// ` (did you mean "KNOWN"?)` when `word` is close enough to one of `known`
/// to be a typo of it, else nothing: the hint every "unknown" message ends
/// with.
pub(crate) fn did_you_mean(word: &str, known: &[&str]) -> String {
    match suggest(word, known) {
        Some(s) => format!(" (did you mean {s:?}?)"),
        None => String::new(),
    }
}

/// The known word closest to `word`, if it is close enough to be a typo
/// rather than a different idea.
fn suggest<'k>(word: &str, known: &[&'k str]) -> Option<&'k str> {
    let lower = word.to_lowercase();
    // Names other tools use for the same thing are too far apart to be
    // caught as typos.
    if let Some((_, k)) = ALIASES.iter().find(|(alias, _)| *alias == lower) {
        if let Some(k) = known.iter().find(|known| *known == k) {
            return Some(k);
        }
    }
    known
        .iter()
        .map(|k| (strsim::jaro_winkler(&lower, k), *k))
        .filter(|(score, _)| *score >= 0.85)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, k)| k)
}
