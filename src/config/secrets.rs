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

/// libpq's default password file as the daemon will read it:
/// `$PGPASSFILE`, else `~/.pgpass` of the user the daemon runs as. Run as
/// root, that is `daemon_user`'s when that user has one (the daemon drops
/// to it, and its reloads read that user's file); otherwise
/// `$HOME/.pgpass`.
pub(crate) fn default_pgpass(daemon_user: &str) -> Option<PathBuf> {
    pgpass_for(
        std::env::var_os("PGPASSFILE"),
        nix::unistd::geteuid().is_root(),
        daemon_user,
        std::env::var_os("HOME"),
        &|p: &Path| p.is_file(),
    )
}

/// [`default_pgpass`] from its inputs: `PGPASSFILE`, whether we are root,
/// `daemon_user`, `HOME`.
fn pgpass_for(
    pgpassfile: Option<std::ffi::OsString>,
    root: bool,
    daemon_user: &str,
    home: Option<std::ffi::OsString>,
    exists: &dyn Fn(&Path) -> bool,
) -> Option<PathBuf> {
    if let Some(p) = pgpassfile.filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let theirs = (root && daemon_user != "root")
        .then(|| nix::unistd::User::from_name(daemon_user).ok().flatten())
        .flatten()
        .map(|u| u.dir.join(".pgpass"))
        .filter(|p| exists(p));
    theirs.or_else(|| home.map(|h| PathBuf::from(h).join(".pgpass")))
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
///   fine: the daemon needs to read it, and nobody else can;
/// - started as root, so that the daemon runs as `daemon_user`: a file that
///   user cannot read, which every reload would then fail to read
///   (Permission denied).
///
/// The fix named never breaks a reload: `chmod 600` only when the daemon
/// runs as the file's owner, else `chgrp GROUP FILE; chmod 640 FILE` with
/// the group of the user the daemon runs as.
///
/// Empty when all is well, or when the file cannot be looked at (reading it
/// will report that).
pub fn permission_warnings(path: &Path, daemon_user: &str) -> Vec<String> {
    warnings_for(path, daemon_user, nix::unistd::geteuid().is_root())
}

/// [`permission_warnings`]; `drops`: the daemon will switch to
/// `daemon_user` (it is started as root), else it runs as the current user.
pub(crate) fn warnings_for(path: &Path, daemon_user: &str, drops: bool) -> Vec<String> {
    use nix::unistd::{Uid, User};
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(path) else {
        return Vec::new();
    };
    let mode = meta.mode() & 0o777;
    // Who reads the file again at each reload.
    let runs_as = if drops {
        User::from_name(daemon_user).ok().flatten()
    } else {
        User::from_uid(nix::unistd::geteuid()).ok().flatten()
    };
    let fix = fix_for(path, meta.uid(), runs_as.as_ref());
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
            "{} is readable by group or others (mode {mode:04o}) and may hold a password: {fix}",
            path.display()
        ));
    }
    if let Some(u) = runs_as.as_ref().filter(|u| drops && !u.uid.is_root()) {
        let may_read = if u.uid == Uid::from_raw(meta.uid()) {
            mode & 0o400 != 0
        } else if in_group(&u.name, meta.gid()) {
            mode & 0o040 != 0
        } else {
            mode & 0o004 != 0
        };
        if !may_read {
            out.push(format!(
                "{} cannot be read by daemon_user {} (owner {}, group {}, mode {mode:04o}): \
                 plusmoin reads it again as {} at every reload, which would fail with \
                 Permission denied: {fix}",
                path.display(),
                u.name,
                user_name(meta.uid()),
                group_name(meta.gid()),
                u.name
            ));
        }
    }
    out
}

/// How to keep a secret file to its owner and the daemon: `chmod 600 it`
/// when the daemon runs as the owner (or who it runs as is unknown), else
/// group-readable by that user's group, so that reloads still read it.
fn fix_for(path: &Path, owner: u32, runs_as: Option<&nix::unistd::User>) -> String {
    match runs_as {
        Some(u) if u.uid.as_raw() != owner => {
            let file = shell_word(&path.display().to_string());
            format!(
                "chgrp {} {file}; chmod 640 {file}",
                shell_word(&group_name(u.gid.as_raw()))
            )
        }
        _ => "chmod 600 it".to_string(),
    }
}

fn user_name(uid: u32) -> String {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map_or_else(|| uid.to_string(), |u| u.name)
}

fn group_name(gid: u32) -> String {
    nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid))
        .ok()
        .flatten()
        .map_or_else(|| gid.to_string(), |g| g.name)
}

/// `s` as one shell word: as is when plain, else single-quoted.
fn shell_word(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars().all(|c| {
            c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '-' | '+' | ':' | '@' | ',')
        });
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
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
    fn run_as_root_the_pgpass_is_daemon_users_not_roots() {
        let root_home = Some("/root".into());
        let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
        let theirs = nobody.dir.join(".pgpass");
        let has = |p: &Path| p == theirs;
        let none = |_: &Path| false;
        assert_eq!(
            pgpass_for(None, true, "nobody", root_home.clone(), &has),
            Some(theirs.clone())
        );
        // The daemon user has none: root's, as libpq would read it.
        assert_eq!(
            pgpass_for(None, true, "nobody", root_home.clone(), &none),
            Some(PathBuf::from("/root/.pgpass"))
        );
        assert_eq!(
            pgpass_for(None, false, "nobody", Some("/home/me".into()), &has),
            Some(PathBuf::from("/home/me/.pgpass"))
        );
        assert_eq!(
            pgpass_for(None, true, "root", root_home.clone(), &has),
            Some(PathBuf::from("/root/.pgpass"))
        );
        assert_eq!(
            pgpass_for(Some("/etc/pp".into()), true, "nobody", root_home, &has),
            Some(PathBuf::from("/etc/pp"))
        );
    }

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

    /// A user other than the one running the tests, and its group's name.
    fn stranger() -> (nix::unistd::User, String) {
        let me = nix::unistd::geteuid();
        let u = ["nobody", "daemon", "bin"]
            .into_iter()
            .filter_map(|n| nix::unistd::User::from_name(n).ok().flatten())
            .find(|u| u.uid != me)
            .expect("a user other than the one running the tests");
        let group = group_name(u.gid.as_raw());
        (u, group)
    }

    #[test]
    fn readable_config_advice_keeps_reloads_working() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("plusmoin.json");
        std::fs::write(&f, "{}").unwrap();
        let me = user_name(nix::unistd::geteuid().as_raw());
        let (other, group) = stranger();
        let fix = format!("chgrp {group} {p}; chmod 640 {p}", p = f.display());
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        // Started as root, the daemon runs as another user than the owner:
        // chmod 600 would lock it out of its own configuration.
        let w = warnings_for(&f, &other.name, true);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("is readable by group or others (mode 0644)"),
            "{w:?}"
        );
        assert!(w[0].ends_with(&fix), "{w:?}");
        assert!(!w[0].contains("chmod 600"), "{w:?}");
        // The daemon runs as the owner: 600 is right.
        for (user, drops) in [(me.as_str(), true), (other.name.as_str(), false)] {
            let w = warnings_for(&f, user, drops);
            assert_eq!(w.len(), 1, "{user} {drops}: {w:?}");
            assert!(w[0].ends_with(": chmod 600 it"), "{user} {drops}: {w:?}");
        }
    }

    #[test]
    fn a_config_daemon_user_cannot_read_is_warned_with_the_fix() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("my config.json");
        std::fs::write(&f, "{}").unwrap();
        let (other, group) = stranger();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        let w = warnings_for(&f, &other.name, true);
        assert_eq!(w.len(), 1, "{w:?}");
        let quoted = format!("'{}'", f.display());
        for part in [
            format!(
                "{} cannot be read by daemon_user {}",
                f.display(),
                other.name
            ),
            "mode 0600".to_string(),
            "Permission denied".to_string(),
            format!("chgrp {group} {quoted}; chmod 640 {quoted}"),
        ] {
            assert!(w[0].contains(&part), "{part:?} in {w:?}");
        }
        // Not started as root: the daemon stays the owner, who can read it.
        assert!(warnings_for(&f, &other.name, false).is_empty());
        // No mode is ever fixed by a chmod 600 that would lock it out.
        for mode in [0o400, 0o600, 0o640, 0o644, 0o604, 0o660, 0o666, 0o000] {
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode)).unwrap();
            for w in warnings_for(&f, &other.name, true) {
                assert!(!w.contains("chmod 600"), "mode {mode:o}: {w}");
            }
        }
        // The fix applied (root only: chgrp to another group): all is well.
        if nix::unistd::geteuid().is_root() {
            nix::unistd::chown(&f, None, Some(other.gid)).unwrap();
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o640)).unwrap();
            assert_eq!(warnings_for(&f, &other.name, true), Vec::<String>::new());
        }
    }

    #[test]
    fn shell_words_are_quoted_only_when_needed() {
        assert_eq!(
            shell_word("/etc/plusmoin/plusmoin.json"),
            "/etc/plusmoin/plusmoin.json"
        );
        assert_eq!(shell_word("/a b/it's"), r"'/a b/it'\''s'");
        assert_eq!(shell_word(""), "''");
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
