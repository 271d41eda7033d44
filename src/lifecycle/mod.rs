//! The daemon's process plumbing (README "Configuration"), kept apart from the beat loop in
//! [`crate::daemon`] so each piece can be tested with real processes: the
//! locked pid file, detaching into the background, dropping root, `stop`
//! and `reload` as seen from the command line, logging set-up, and opening
//! files in directories others may write ([`safefile`]). It takes plain
//! values (paths, a user name, [`LogLevel`], [`LogFormat`]), never the
//! configuration: its callers (the `plusmoin` binary, the demo) map the
//! configuration onto them.
//!
//! The pid file is guarded by an exclusive `flock` held on an open
//! descriptor for the whole life of the daemon. The kernel releases it
//! whatever way the process ends, so "is the lock held?" — not "does the
//! file exist?" or "is that pid alive?" — is what tells a running daemon
//! from a stale file left by a crash or a `kill -9`. Who holds it is another
//! matter: `/proc/locks` names the process that took a lock, not the one
//! holding it now, so `stop` and `reload` check that the process named is
//! the daemon itself, pinned by a pidfd until the signal (`process`).
//!
//! The order `start` is meant to follow, each step needing the one before:
//! [`daemonize`] (single-threaded, so before the tokio runtime) →
//! [`PidFile::acquire`] and [`init_logging`] (as root: their directories are
//! usually root's; the open descriptors outlive the switch) →
//! [`drop_privileges`] → [`Detached::ready`] → build the runtime. Any error
//! on the way goes to [`Detached::fail`] so `start` prints it.

mod control;
mod detach;
mod logging;
mod pidfile;
mod privileges;
mod process;
pub mod safefile;

pub use control::{reload, stop};
pub use detach::{daemonize, Detached};
pub use logging::{init_logging, LogFormat, LogLevel};
pub use pidfile::{running_pid, PidFile};
pub use privileges::drop_privileges;
use process::NotDaemon;
pub use safefile::Owners;

use nix::errno::Errno;
use nix::sys::signal::Signal;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

#[derive(thiserror::Error, Debug)]
pub enum LifecycleError {
    #[error("plusmoin is already running ({}, {})", .pid.map_or_else(|| "pid unknown".to_string(), |p| format!("pid {p}")), .path.display())]
    AlreadyRunning { pid: Option<i32>, path: PathBuf },
    #[error("pid file directory {} does not exist: create it, writable by the daemon user", .dir.display())]
    PidDirMissing { dir: PathBuf },
    #[error("cannot open pid file {}: {source}", .path.display())]
    PidFileOpen { path: PathBuf, source: io::Error },
    #[error("cannot lock pid file {}: {source}", .path.display())]
    PidFileLock { path: PathBuf, source: Errno },
    #[error("cannot write pid file {}: {source}", .path.display())]
    PidFileWrite { path: PathBuf, source: io::Error },
    #[error("cannot read pid file {}: {source}", .path.display())]
    PidFileRead { path: PathBuf, source: io::Error },
    #[error("pid file {} is locked but holds no valid pid ({content:?})", .path.display())]
    PidFileInvalid { path: PathBuf, content: String },
    #[error("pid file {} names pid {pid}, but {why}: not signalling anyone (a forged or replaced pid file?)", .path.display())]
    NotTheDaemon {
        path: PathBuf,
        pid: i32,
        why: NotDaemon,
    },
    #[error("cannot pin pid {pid} to signal it (pidfd_open): {source}")]
    Pidfd { pid: i32, source: Errno },
    #[error("plusmoin is not running (no live daemon holds {})", .path.display())]
    NotRunning { path: PathBuf },
    #[error("cannot send {signal} to plusmoin (pid {pid}): {source}")]
    Signal {
        pid: i32,
        signal: Signal,
        source: Errno,
    },
    #[error("plusmoin (pid {pid}) still exists {waited:?} after SIGKILL")]
    DidNotExit { pid: i32, waited: Duration },
    #[error("cannot detach into the background: {step}: {source}")]
    Daemonize { step: &'static str, source: Errno },
    #[error("cannot look up user {user:?}: {source}")]
    UserLookup { user: String, source: Errno },
    #[error("unknown daemon_user {user:?}: no such user on this system")]
    UnknownUser { user: String },
    #[error("cannot switch to user {user:?}: {step}: {source}")]
    DropPrivileges {
        user: String,
        step: &'static str,
        source: Errno,
    },
    #[error("cannot open log file {}: {source}", .path.display())]
    LogFile { path: PathBuf, source: io::Error },
    #[error("cannot set up logging: {0}")]
    Logging(String),
    #[error("cannot raise the open files limit: {0}")]
    NoFileLimit(#[source] Errno),
}

/// Raises the soft limit on open files to the hard limit and returns the
/// limit now in force. plusmoin keeps one connection per node open across
/// beats, and the usual soft limit (1024) would cap it near a thousand
/// nodes, where the hard limit is usually far higher.
pub fn raise_nofile_limit() -> Result<u64, LifecycleError> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(LifecycleError::NoFileLimit)?;
    if soft >= hard {
        return Ok(soft);
    }
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).map_err(LifecycleError::NoFileLimit)?;
    Ok(hard)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn already_running_message_names_pid_and_file() {
        let e = LifecycleError::AlreadyRunning {
            pid: Some(42),
            path: "/run/p.pid".into(),
        };
        assert_eq!(
            e.to_string(),
            "plusmoin is already running (pid 42, /run/p.pid)"
        );
    }

    #[test]
    fn open_files_limit_is_raised_to_the_hard_limit() {
        use nix::sys::resource::{getrlimit, setrlimit, Resource};
        let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        // Lower the soft limit first so there is something to raise.
        setrlimit(Resource::RLIMIT_NOFILE, hard.min(512), hard).unwrap();
        assert_eq!(raise_nofile_limit().unwrap(), hard);
        assert_eq!(getrlimit(Resource::RLIMIT_NOFILE).unwrap(), (hard, hard));
        // Already there: nothing to do, same answer.
        assert_eq!(raise_nofile_limit().unwrap(), hard);
    }
}
