//! `stop` and `reload` of a running daemon, as seen from the command line.

use std::fs::File;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tracing::warn;

use super::LifecycleError;

/// After SIGKILL only the kernel is left to act; this bounds a wait for a
/// process stuck in uninterruptible sleep.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// `plusmoin stop`: `Ok(None)` when nothing was running (the caller words
/// the message), `Ok(Some(pid))` once that process is gone.
///
/// Only the daemon holding the pid file is signalled (see
/// `pidfile::holder`), through a pidfd taken before checking it, and "gone"
/// means its lock was released: a pid number may be given to another
/// process, a lock dies with its holder.
pub fn stop(
    pid_file: &Path,
    grace: Duration,
    owners: &Owners,
) -> Result<Option<i32>, LifecycleError> {
    let Some(Holder { process, file }) = holder(pid_file, owners)? else {
        return Ok(None);
    };
    let pid = process.pid();
    if !send(&process, Signal::SIGTERM)? {
        return Ok(Some(pid));
    }
    if wait_released(&file, grace) {
        return Ok(Some(pid));
    }
    // Still locked: by that process if it still is the daemon holding the
    // file (it may have exited, the lock living on in a child).
    if check_daemon(&process, &file).is_err() {
        return Ok(Some(pid));
    }
    warn!(
        pid,
        grace_s = grace.as_secs_f64(),
        "plusmoin did not exit after SIGTERM; sending SIGKILL"
    );
    if !send(&process, Signal::SIGKILL)? {
        return Ok(Some(pid));
    }
    if wait_released(&file, KILL_WAIT) {
        Ok(Some(pid))
    } else {
        Err(LifecycleError::DidNotExit {
            pid,
            waited: KILL_WAIT,
        })
    }
}

/// `plusmoin reload`: the daemon reads its configuration again between beats.
pub fn reload(pid_file: &Path, owners: &Owners) -> Result<i32, LifecycleError> {
    let Holder { process, .. } =
        holder(pid_file, owners)?.ok_or_else(|| LifecycleError::NotRunning {
            path: pid_file.to_path_buf(),
        })?;
    if !send(&process, Signal::SIGHUP)? {
        return Err(LifecycleError::NotRunning {
            path: pid_file.to_path_buf(),
        });
    }
    Ok(process.pid())
}

/// `Ok(false)` when the process was already gone.
fn send(process: &Pinned, signal: Signal) -> Result<bool, LifecycleError> {
    process
        .signal(signal)
        .map_err(|source| LifecycleError::Signal {
            pid: process.pid(),
            signal,
            source,
        })
}

/// Whether the lock on `file` is released within `within`. An error taking
/// the probe lock counts as not yet.
fn wait_released(file: &File, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if lock_is_free(file).unwrap_or(false) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(POLL_EVERY);
    }
}

use super::pidfile::{holder, lock_is_free, Holder, POLL_EVERY};
use super::process::{check_daemon, Pinned};
use super::safefile::Owners;
