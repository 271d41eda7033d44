//! Dropping root for `daemon_user`, and living as that user: its HOME,
//! USER and LOGNAME, and a plain PATH, for the daemon and the trigger
//! scripts it starts.

use std::ffi::OsString;

use nix::unistd::{self, User};
use tracing::{info, warn};

use super::LifecycleError;

/// The PATH of the daemon and its triggers once root is dropped: the
/// system's directories, whatever the PATH of the shell that started it.
pub(crate) const DAEMON_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The environment of a process living as `entry`: HOME, USER and LOGNAME
/// from its passwd entry, and [`DAEMON_PATH`]. Its `~/.pgpass` and
/// `~/.postgresql/root.crt` are then the ones found, and a trigger never
/// gets root's HOME.
pub(crate) fn user_env(entry: &User) -> [(&'static str, OsString); 4] {
    [
        ("HOME", entry.dir.clone().into_os_string()),
        ("USER", OsString::from(&entry.name)),
        ("LOGNAME", OsString::from(&entry.name)),
        ("PATH", OsString::from(DAEMON_PATH)),
    ]
}

/// Threads of this process besides the calling one (0 when /proc cannot
/// tell: the caller's documented order is then all there is).
fn other_threads() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(0, |d| d.count().saturating_sub(1))
}

/// Done after the pid file and log file are open (as root, in directories
/// root owns) so the daemon keeps those descriptors but nothing else of
/// root's; and before any other thread exists (the tokio runtime, the
/// status writer): the environment is switched to `user`'s (HOME, USER
/// and LOGNAME from its passwd entry, a plain PATH), which is only sound
/// while one thread runs (with other threads running, it is left as it
/// was, with a warning). Everything
/// started later (probes reading `~/.pgpass` on reload, trigger scripts)
/// inherits it.
pub fn drop_privileges(user: &str) -> Result<(), LifecycleError> {
    if !unistd::geteuid().is_root() {
        let current = User::from_uid(unistd::geteuid())
            .ok()
            .flatten()
            .map_or_else(|| unistd::geteuid().to_string(), |u| u.name);
        info!(
            daemon_user = user,
            current_user = %current,
            "not started as root: staying as the current user"
        );
        return Ok(());
    }
    let entry = User::from_name(user)
        .map_err(|source| LifecycleError::UserLookup {
            user: user.to_string(),
            source,
        })?
        .ok_or_else(|| LifecycleError::UnknownUser {
            user: user.to_string(),
        })?;
    let fail = |step: &'static str| {
        move |source| LifecycleError::DropPrivileges {
            user: user.to_string(),
            step,
            source,
        }
    };
    let name = std::ffi::CString::new(user).map_err(|_| LifecycleError::UnknownUser {
        user: user.to_string(),
    })?;
    // Counted before anything changes (the answer cannot change after).
    let threads = other_threads();
    // Groups first: once the uid is gone, we may no longer change them.
    unistd::initgroups(&name, entry.gid).map_err(fail("initgroups"))?;
    unistd::setgid(entry.gid).map_err(fail("setgid"))?;
    unistd::setuid(entry.uid).map_err(fail("setuid"))?;
    if threads == 0 {
        for (key, value) in user_env(&entry) {
            // Sound: no other thread exists, so none reads the environment
            // meanwhile.
            std::env::set_var(key, value);
        }
    } else {
        // Not the daemon (it drops root before its first thread): a
        // caller that runs threads keeps its environment.
        warn!(
            daemon_user = user,
            threads,
            "other threads run: the environment (HOME, USER, LOGNAME, PATH) is left as it was"
        );
    }
    info!(
        daemon_user = user,
        uid = %entry.uid,
        gid = %entry.gid,
        home = %entry.dir.display(),
        "dropped root privileges"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_daemon_users_environment_comes_from_its_passwd_entry() {
        let root = User::from_uid(unistd::Uid::from_raw(0)).unwrap().unwrap();
        let env = user_env(&root);
        assert_eq!(env[0], ("HOME", root.dir.into_os_string()));
        assert_eq!(env[1], ("USER", OsString::from(&root.name)));
        assert_eq!(env[2], ("LOGNAME", OsString::from(&root.name)));
        assert_eq!(
            env[3],
            (
                "PATH",
                OsString::from("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
            )
        );
    }
}
