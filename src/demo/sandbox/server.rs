//! The servers' processes: starting one with pg_ctl, finding its running
//! postmaster, clearing what a killed one left behind, and stopping every
//! server (on drop, and for orphaned sandboxes).

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::procs::{self, Proc};
use super::run::Runner;
use super::{lock, Sandbox, SandboxError, DIR_PREFIX, GONE_TIMEOUT, PG_CTL_WAIT};

impl Sandbox {
    pub(super) fn pg_ctl_start(&self, i: usize) -> Result<(), SandboxError> {
        let node = self.node(i)?;
        let result = self.run_tool(
            "pg_ctl",
            [
                "start".as_ref(),
                "-D".as_ref(),
                node.data.as_os_str(),
                "-l".as_ref(),
                node.log.as_os_str(),
                "-w".as_ref(),
                "-t".as_ref(),
                PG_CTL_WAIT.as_ref(),
            ],
        );
        match result {
            Ok(_) => {
                // Starting on the same data directory reclaimed them.
                *lock(&node.crashed) = None;
                tracing::info!(node = i, port = node.port, "sandbox: server started");
                Ok(())
            }
            Err(SandboxError::Failed {
                command,
                status,
                stderr,
            }) => Err(SandboxError::Failed {
                command,
                status,
                stderr: format!(
                    "{stderr}\n--- {}:\n{}",
                    node.log.display(),
                    self.log_tail(i)
                ),
            }),
            Err(e) => Err(e),
        }
    }

    /// The last lines of node `i`'s server log, for start failures.
    fn log_tail(&self, i: usize) -> String {
        let Some(node) = self.nodes.get(i) else {
            return String::new();
        };
        let log = fs::read(&node.log).unwrap_or_default();
        let log = String::from_utf8_lossy(&log);
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// The running postmaster of node `i`, from its pid file; checked
    /// against the command line so a reused pid is never taken for it.
    pub(super) fn postmaster(&self, i: usize) -> Result<Option<Proc>, SandboxError> {
        Ok(running_postmaster(&self.node(i)?.data))
    }

    /// A killed postmaster leaves its pid file, and its process may linger
    /// a moment (or stay a zombie nobody reaps): once it is gone, the file
    /// is stale and would make the next start refuse.
    /// The same goes for the unix socket's lock file, which names the dead
    /// postmaster too (and a zombie still passes PostgreSQL's liveness
    /// check).
    pub(super) fn clear_stale_pid_file(&self, i: usize) -> Result<(), SandboxError> {
        let node = self.node(i)?;
        let pid_file = node.data.join("postmaster.pid");
        if !pid_file.exists() {
            return Ok(());
        }
        let deadline = Instant::now() + GONE_TIMEOUT;
        while self.postmaster(i)?.is_some() {
            if Instant::now() >= deadline {
                return Err(SandboxError::StillRunning(i));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let socket_lock = self.dir().join(format!(".s.PGSQL.{}.lock", node.port));
        for stale in [pid_file, socket_lock] {
            match fs::remove_file(&stale) {
                Ok(()) => {
                    tracing::debug!(node = i, file = %stale.display(), "sandbox: removed a stale lock file")
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(SandboxError::Io {
                        what: format!("removing stale {}", stale.display()),
                        source,
                    })
                }
            }
        }
        Ok(())
    }

    pub(super) fn gone_timeout(&self, i: usize, what: &str) -> SandboxError {
        SandboxError::Timeout {
            what: format!("node {i}: {what}"),
            timeout: GONE_TIMEOUT,
            last: "still alive".to_owned(),
        }
    }

    /// Best-effort end of node `i` for Drop: thaw, immediate stop, then
    /// SIGKILL whatever is left.
    fn shut_down(&self, i: usize) {
        shut_down_server(&self.runner, &self.bin, &self.nodes[i].data);
    }

    /// The System V shared memory id on line 7 of node `i`'s pid file.
    pub(super) fn pid_file_shmid(&self, i: usize) -> Option<i32> {
        let text = fs::read_to_string(self.nodes.get(i)?.data.join("postmaster.pid")).ok()?;
        text.lines().nth(6)?.split_whitespace().nth(1)?.parse().ok()
    }

    /// Frees the shared memory of node `i` if it was killed and never
    /// started again.
    fn remove_crash_leftovers(&self, i: usize) {
        let Some(leftovers) = lock(&self.nodes[i].crashed).take() else {
            return;
        };
        if matches!(self.postmaster(i), Ok(Some(_))) {
            return;
        }
        for file in &leftovers.files {
            let _ = fs::remove_file(file);
        }
        if let Some(shmid) = leftovers.shmid {
            if procs::sysv_segment_abandoned(shmid, leftovers.postmaster_pid) {
                let id = shmid.to_string();
                if let Err(e) = self.runner.run(
                    Path::new("ipcrm"),
                    ["-m", id.as_str()],
                    None,
                    Duration::from_secs(10),
                ) {
                    tracing::warn!(node = i, shmid, error = %e, "sandbox: could not remove shared memory");
                }
            }
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.shut_down(i);
            self.remove_crash_leftovers(i);
        }
        tracing::info!(dir = %self.dir().display(), "sandbox: stopped and removed");
    }
}

/// The running postmaster of the server in `data`, from its pid file;
/// checked against its command line so a reused pid is never taken for it.
fn running_postmaster(data: &Path) -> Option<Proc> {
    let text = fs::read_to_string(data.join("postmaster.pid")).ok()?;
    let pid = text.lines().next()?.trim().parse::<i32>().ok()?;
    let postmaster = procs::identify(pid)?;
    let ours = procs::cmdline(pid).is_some_and(|cmd| cmd.contains(data.to_string_lossy().as_ref()));
    ours.then_some(postmaster)
}

/// Best-effort end of the server in `data`, for Drop and orphans: thaw,
/// immediate stop, then SIGKILL whatever is left.
fn shut_down_server(runner: &Runner, bin: &Path, data: &Path) {
    let Some(postmaster) = running_postmaster(data) else {
        return;
    };
    let mut all = procs::descendants(&postmaster);
    all.push(postmaster);
    for p in &all {
        let _ = p.signal(Signal::SIGCONT);
    }
    if let Err(e) = runner.run(
        &bin.join("pg_ctl"),
        [
            "stop".as_ref(),
            "-D".as_ref(),
            data.as_os_str(),
            "-m".as_ref(),
            "immediate".as_ref(),
            "-w".as_ref(),
            "-t".as_ref(),
            "10".as_ref(),
        ],
        None,
        Duration::from_secs(20),
    ) {
        tracing::warn!(data = %data.display(), error = %e, "sandbox: immediate stop failed, killing");
    }
    if !procs::wait_gone(&all, Duration::from_secs(2)) {
        for p in &all {
            let _ = p.signal(Signal::SIGKILL);
        }
        if !procs::wait_gone(&all, GONE_TIMEOUT) {
            tracing::warn!(data = %data.display(), "sandbox: server processes survived SIGKILL");
        }
    }
}

/// Stops the servers and removes the directories of sandboxes whose owning
/// process died without dropping them, so they do not pile up.
pub(super) fn reap_orphans(runner: &Runner, bin: &Path, base: &Path) {
    for (dir, owner_pid) in procs::orphaned_dirs(base, DIR_PREFIX) {
        tracing::warn!(dir = %dir.display(), owner_pid, "sandbox: removing an orphaned sandbox");
        if let Ok(nodes) = fs::read_dir(&dir) {
            for node in nodes.flatten() {
                if node.path().join("postmaster.pid").is_file() {
                    shut_down_server(runner, bin, &node.path());
                }
            }
        }
        let _ = fs::remove_dir_all(&dir);
    }
}
