//! `stop` and `reload` of a running daemon, as seen from the command line.

use std::io::{self};
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tracing::warn;

use super::LifecycleError;

/// After SIGKILL only the kernel is left to act; this bounds a wait for a
/// process stuck in uninterruptible sleep.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// `plusmoin stop`: `Ok(None)` when nothing was running (the caller words
/// the message), `Ok(Some(pid))` once that process is gone.
pub fn stop(pid_file: &Path, grace: Duration) -> Result<Option<i32>, LifecycleError> {
    let Some(pid) = running_pid(pid_file)? else {
        return Ok(None);
    };
    if !send(pid, Signal::SIGTERM)? {
        return Ok(Some(pid));
    }
    if wait_gone(pid, grace) {
        return Ok(Some(pid));
    }
    warn!(
        pid,
        ?grace,
        "plusmoin did not exit after SIGTERM; sending SIGKILL"
    );
    if !send(pid, Signal::SIGKILL)? {
        return Ok(Some(pid));
    }
    if wait_gone(pid, KILL_WAIT) {
        Ok(Some(pid))
    } else {
        Err(LifecycleError::DidNotExit {
            pid,
            waited: KILL_WAIT,
        })
    }
}

/// `plusmoin reload`: the daemon reads its configuration again between beats.
pub fn reload(pid_file: &Path) -> Result<i32, LifecycleError> {
    let pid = running_pid(pid_file)?.ok_or_else(|| LifecycleError::NotRunning {
        path: pid_file.to_path_buf(),
    })?;
    if !send(pid, Signal::SIGHUP)? {
        return Err(LifecycleError::NotRunning {
            path: pid_file.to_path_buf(),
        });
    }
    Ok(pid)
}

/// `Ok(false)` when the process was already gone.
fn send(pid: i32, signal: Signal) -> Result<bool, LifecycleError> {
    match kill(Pid::from_raw(pid), signal) {
        Ok(()) => Ok(true),
        Err(Errno::ESRCH) => Ok(false),
        Err(source) => Err(LifecycleError::Signal {
            pid,
            signal,
            source,
        }),
    }
}

fn wait_gone(pid: i32, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if process_gone(pid) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(POLL_EVERY);
    }
}

/// A zombie counts as gone: it has run its course, and its parent (init,
/// or the caller in tests) may be slow to reap it.
fn process_gone(pid: i32) -> bool {
    if let Err(Errno::ESRCH) = kill(Pid::from_raw(pid), None) {
        return true;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => matches!(proc_state(&stat), Some('Z' | 'X')),
        Err(e) => e.kind() == io::ErrorKind::NotFound,
    }
}

/// The state letter of a `/proc/PID/stat` line; the command name before it
/// is in parentheses and may itself contain spaces and parentheses.
fn proc_state(stat: &str) -> Option<char> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().next()?.chars().next()
}

use super::pidfile::{running_pid, POLL_EVERY};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_state_survives_odd_command_names() {
        assert_eq!(proc_state("12 (a) b) (c) S 1 12 12"), Some('S'));
        assert_eq!(proc_state("12 (sh) Z 1 12 12"), Some('Z'));
        assert_eq!(proc_state("garbage"), None);
    }
}
