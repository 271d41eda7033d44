//! Where the database password comes from: the configuration itself
//! (`password`), a file of its own (`password_file`), or libpq's password
//! file (`PGPASSFILE`, else `~/.pgpass`), so that it need not sit in the
//! configuration.

use std::path::{Path, PathBuf};

/// Where the password was found, for the summary and the permission check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PasswordSource {
    /// `password` in the configuration.
    Inline,
    /// `password_file`.
    File(PathBuf),
    /// libpq's password file: one entry per node.
    PgPass(PathBuf),
}

impl PasswordSource {
    /// The file holding the secret, if it is not the configuration itself.
    pub(crate) fn file(&self) -> Option<&Path> {
        match self {
            PasswordSource::Inline => None,
            PasswordSource::File(p) | PasswordSource::PgPass(p) => Some(p),
        }
    }
}

/// The password in `password_file`: its first line, without the line end.
pub(crate) fn read_password_file(path: &Path) -> Result<String, String> {
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
pub(crate) fn default_pgpass() -> Option<PathBuf> {
    match std::env::var_os("PGPASSFILE") {
        Some(p) if !p.is_empty() => Some(PathBuf::from(p)),
        _ => std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".pgpass")),
    }
}

/// Why libpq would ignore the password file at `path`: not a plain file,
/// or group or others have any access to it. `None`: it may be used.
pub(crate) fn pgpass_ignored(path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_file() {
        return Some(format!(
            "password file {} is not a plain file: ignored",
            path.display()
        ));
    }
    let mode = meta.permissions().mode() & 0o777;
    (mode & 0o077 != 0).then(|| {
        format!(
            "password file {} has group or world access (mode {mode:04o}): ignored, \
             as libpq does; chmod 600 it",
            path.display()
        )
    })
}

/// What is wrong with who may access `path`, a file that may hold the
/// database password (the configuration, `password_file`, the pgpass file):
///
/// - writable by group or others: they can change the password, the nodes,
///   or the triggers root or the daemon user will run;
/// - readable by others, or by a group the daemon user is not in: they can
///   read the password. A file only its owner and the daemon user's group
///   can read (the Debian package's root:plusmoin 0640 configuration) is
///   fine: the daemon needs to read it, and nobody else can.
///
/// Empty when all is well, or when the file cannot be looked at (reading it
/// will report that).
pub fn permission_warnings(path: &Path, daemon_user: &str) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(path) else {
        return Vec::new();
    };
    let mode = meta.mode() & 0o777;
    let mut out = Vec::new();
    if mode & 0o022 != 0 {
        out.push(format!(
            "{} is writable by {} (mode {mode:04o}): they can change the password, the nodes \
             or the triggers plusmoin runs: chmod go-w it",
            path.display(),
            match mode & 0o022 {
                0o020 => "its group",
                0o002 => "others",
                _ => "group and others",
            }
        ));
    }
    let group_may_read = mode & 0o040 == 0 || in_group(daemon_user, meta.gid());
    if mode & 0o004 != 0 || !group_may_read {
        out.push(format!(
            "{} is readable by group or others (mode {mode:04o}) and may hold a password: chmod 600 it",
            path.display()
        ));
    }
    out
}

/// Whether `user`'s primary or supplementary groups include `gid`.
fn in_group(user: &str, gid: u32) -> bool {
    let Ok(Some(u)) = nix::unistd::User::from_name(user) else {
        return false;
    };
    if u.gid.as_raw() == gid {
        return true;
    }
    matches!(
        nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid)),
        Ok(Some(g)) if g.mem.iter().any(|m| m == user)
    )
}

/// One field of a password file line: its text with `\` escapes removed,
/// and whether it was a bare `*` (an escaped `\*` is a literal star).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Field {
    text: String,
    any: bool,
}

impl Field {
    fn matches(&self, value: &str) -> bool {
        self.any || self.text == value
    }
}

/// A parsed password file: `hostname:port:database:username:password` per
/// line, a bare `*` matching anything in the first four fields, `\:` and
/// `\\` escaping in every field, the password ending at its first
/// unescaped `:`, `#` starting a comment line (libpq's rules; the first
/// match wins).
#[derive(Debug, Default)]
pub(crate) struct PgPass {
    entries: Vec<([Field; 4], String)>,
}

impl PgPass {
    pub(crate) fn parse(text: &str) -> PgPass {
        let entries = text
            .lines()
            .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
            .filter_map(parse_line)
            .collect();
        PgPass { entries }
    }

    pub(crate) fn lookup(&self, host: &str, port: u16, database: &str, user: &str) -> Option<&str> {
        let port = port.to_string();
        self.entries
            .iter()
            .find(|([h, p, d, u], _)| {
                h.matches(host) && p.matches(&port) && d.matches(database) && u.matches(user)
            })
            .map(|(_, password)| password.as_str())
    }
}

/// One line, or `None` when it has fewer than five fields.
fn parse_line(line: &str) -> Option<([Field; 4], String)> {
    let mut fields: Vec<Field> = Vec::with_capacity(4);
    let mut text = String::new();
    let mut escaped = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            // A trailing backslash stays, as in libpq.
            '\\' if chars.peek().is_some() => {
                escaped = true;
                text.extend(chars.next());
            }
            ':' if fields.len() < 4 => {
                let any = text == "*" && !escaped;
                fields.push(Field {
                    text: std::mem::take(&mut text),
                    any,
                });
                escaped = false;
            }
            // The password ends at its first unescaped colon.
            ':' => break,
            c => text.push(c),
        }
    }
    let fields = <[Field; 4]>::try_from(fields).ok()?;
    Some((fields, text))
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
    fn pgpass_escapes_in_every_field_and_password_ends_at_a_colon() {
        let p = PgPass::parse(
            "fe80\\:\\:1:5432:d\\\\b:u\\:x:pw\\:1:extra:fields\n\
             \\*:5432:d:u:star\n\
             *:5433:d:u:trailing\\\n",
        );
        // Escaped colons in the host, a backslash in the database, a colon
        // in the user; the password stops at its first unescaped colon.
        assert_eq!(p.lookup("fe80::1", 5432, "d\\b", "u:x"), Some("pw:1"));
        // An escaped star is a literal star, not a wildcard.
        assert_eq!(p.lookup("db1", 5432, "d", "u"), None);
        assert_eq!(p.lookup("*", 5432, "d", "u"), Some("star"));
        // A trailing backslash is kept.
        assert_eq!(p.lookup("any", 5433, "d", "u"), Some("trailing\\"));
    }

    #[test]
    fn pgpass_with_group_or_world_access_is_ignored() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pgpass");
        std::fs::write(&f, "*:*:*:*:pw\n").unwrap();
        for (mode, ignored) in [
            (0o600, false),
            (0o400, false),
            (0o640, true),
            (0o604, true),
            (0o620, true),
            (0o601, true),
        ] {
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode)).unwrap();
            let why = pgpass_ignored(&f);
            assert_eq!(why.is_some(), ignored, "mode {mode:o}: {why:?}");
            if let Some(w) = why {
                assert!(
                    w.contains("group or world access") && w.contains("chmod 600"),
                    "{w}"
                );
            }
        }
        assert!(pgpass_ignored(dir.path())
            .unwrap()
            .contains("not a plain file"));
        assert!(pgpass_ignored(&dir.path().join("missing")).is_none());
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
