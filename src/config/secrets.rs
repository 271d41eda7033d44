//! Where the database password comes from: the configuration itself
//! (`password`), a file of its own (`password_file`), or libpq's password
//! file (`PGPASSFILE`, else `~/.pgpass`), so that it need not sit in the
//! configuration.

use std::path::{Path, PathBuf};

/// Where the password was found, for the summary and the permission check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PasswordSource {
    /// `password` in the configuration.
    Inline,
    /// `password_file`.
    File(PathBuf),
    /// libpq's password file: one entry per node.
    PgPass(PathBuf),
}

impl PasswordSource {
    /// The file holding the secret, if it is not the configuration itself.
    pub fn file(&self) -> Option<&Path> {
        match self {
            PasswordSource::Inline => None,
            PasswordSource::File(p) | PasswordSource::PgPass(p) => Some(p),
        }
    }
}

/// The password in `password_file`: its first line, without the line end.
pub fn read_password_file(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let first = text.lines().next().unwrap_or("");
    if first.is_empty() {
        return Err(format!(
            "{} is empty: its first line must be the password",
            path.display()
        ));
    }
    Ok(first.to_string())
}

/// libpq's default password file: `$PGPASSFILE`, else `$HOME/.pgpass`.
pub fn default_pgpass() -> Option<PathBuf> {
    match std::env::var_os("PGPASSFILE") {
        Some(p) if !p.is_empty() => Some(PathBuf::from(p)),
        _ => std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".pgpass")),
    }
}

/// A parsed password file: `hostname:port:database:username:password` per
/// line, `*` matching anything in the first four fields, `\:` and `\\`
/// escaping, `#` starting a comment line (libpq's rules; the first match
/// wins).
#[derive(Debug, Default)]
pub struct PgPass {
    entries: Vec<[String; 5]>,
}

impl PgPass {
    pub fn parse(text: &str) -> PgPass {
        let entries = text
            .lines()
            .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
            .filter_map(|line| {
                let mut fields = Vec::with_capacity(5);
                let mut field = String::new();
                let mut chars = line.chars();
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => field.extend(chars.next()),
                        ':' if fields.len() < 4 => fields.push(std::mem::take(&mut field)),
                        c => field.push(c),
                    }
                }
                fields.push(field);
                <[String; 5]>::try_from(fields).ok()
            })
            .collect();
        PgPass { entries }
    }

    pub fn lookup(&self, host: &str, port: u16, database: &str, user: &str) -> Option<&str> {
        let port = port.to_string();
        let matches = |pattern: &str, value: &str| pattern == "*" || pattern == value;
        self.entries
            .iter()
            .find(|[h, p, d, u, _]| {
                matches(h, host) && matches(p, &port) && matches(d, database) && matches(u, user)
            })
            .map(|e| e[4].as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pgpass_matches_like_libpq() {
        let p = PgPass::parse(
            "# comment\n\
             db1:5432:plusmoin:plusmoin:first\n\
             *:6432:*:plusmoin:with\\:colon\\\\\n\
             *:*:plusmoin:plusmoin:fallback\n\
             broken:line\n",
        );
        assert_eq!(p.lookup("db1", 5432, "plusmoin", "plusmoin"), Some("first"));
        assert_eq!(p.lookup("db2", 6432, "x", "plusmoin"), Some("with:colon\\"));
        assert_eq!(
            p.lookup("db3", 5432, "plusmoin", "plusmoin"),
            Some("fallback")
        );
        assert_eq!(p.lookup("db3", 5432, "other", "plusmoin"), None);
        assert_eq!(p.lookup("db1", 5432, "plusmoin", "someone"), None);
    }

    #[test]
    fn password_file_first_line_without_line_end() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pw");
        std::fs::write(&f, "s3cret\r\nignored\n").unwrap();
        assert_eq!(read_password_file(&f).unwrap(), "s3cret");
        std::fs::write(&f, "\n").unwrap();
        assert!(read_password_file(&f).unwrap_err().contains("is empty"));
        let missing = dir.path().join("nope");
        assert!(read_password_file(&missing)
            .unwrap_err()
            .starts_with("cannot read"));
    }
}
