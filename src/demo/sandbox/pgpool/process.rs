//! pgpool's process: spawning it in the foreground, waiting until it
//! answers, stopping and restarting it, and stopping the pgpools of test
//! processes that died without dropping theirs.

use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use super::{Pgpool, Running, DIR_PREFIX};
use crate::demo::sandbox::procs::{self, Proc};
use crate::demo::sandbox::run::command_line;
use crate::demo::sandbox::{lock, SandboxError};

/// How long a start may take until pgpool answers on both ports.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a fast shutdown may take before everything is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

impl Pgpool {
    /// The pids of pgpool's main process and all its children, while it
    /// runs (for tests that check nothing is left behind).
    pub fn pids(&self) -> Vec<i32> {
        let running = lock(&self.running);
        let Some(r) = running.as_ref() else {
            return Vec::new();
        };
        let mut pids = vec![r.main.pid];
        pids.extend(procs::descendants(&r.main).iter().map(|p| p.pid));
        pids
    }

    /// Stops pgpool (fast shutdown, SIGINT) and waits until all its
    /// processes are gone; pcp does not answer until [`Pgpool::start_again`].
    /// Stopping a stopped pgpool does nothing.
    pub fn stop(&self) -> Result<(), SandboxError> {
        let running = lock(&self.running).take();
        if let Some(running) = running {
            shut_down(running, Signal::SIGINT, STOP_TIMEOUT)?;
            tracing::info!(port = self.port, "pgpool: stopped");
        }
        Ok(())
    }

    /// Starts pgpool again with the same configuration and ports (or for
    /// the first time, after [`Pgpool::create`]), keeping its status file: a node that was down (detached by hand or by a
    /// health check) when pgpool stopped is still down, as in real life.
    pub fn start_again(&self) -> Result<(), SandboxError> {
        self.launch()
    }

    /// Spawns pgpool in the foreground and waits until it answers; on
    /// failure whatever started is stopped again.
    pub(super) fn launch(&self) -> Result<(), SandboxError> {
        let mut running = lock(&self.running);
        if let Some(r) = running.as_ref() {
            return Err(SandboxError::Io {
                what: format!("pgpool already runs (pid {}); stop it first", r.main.pid),
                source: std::io::Error::from(std::io::ErrorKind::AlreadyExists),
            });
        }
        self.clear_stale_files();
        let log_io = |source| SandboxError::Io {
            what: format!("open {}", self.log.display()),
            source,
        };
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(log_io)?;
        let log_err = log.try_clone().map_err(log_io)?;
        let mut cmd = Command::new(self.bin.join("pgpool"));
        cmd.arg("-n")
            .arg("-f")
            .arg(&self.conf)
            .arg("-F")
            .arg(&self.pcp_conf)
            .arg("-a")
            .arg(&self.hba);
        cmd.current_dir(self.dir())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("LC_ALL", "C")
            // No ~/.pgpoolkey or ~/.pcppass of the server user is read.
            .env("HOME", self.dir())
            // Its own group, so nothing of it survives a kill of the group.
            .process_group(0);
        if let Some((uid, gid)) = self.runner.owner {
            cmd.uid(uid.as_raw()).gid(gid.as_raw());
        }
        let command = command_line(&cmd);
        let child = cmd.spawn().map_err(|source| SandboxError::Spawn {
            command: command.clone(),
            source,
        })?;
        let pid = child.id() as i32;
        let Some(main) = procs::identify(pid) else {
            let mut child = child;
            let status = child
                .wait()
                .map_or_else(|e| e.to_string(), |s| s.to_string());
            return Err(SandboxError::Failed {
                command,
                status,
                stderr: self.log_tail(),
            });
        };
        let mut started = Running { child, main };
        match self.wait_ready(&mut started, &command) {
            Ok(()) => {
                tracing::info!(
                    pid,
                    port = self.port,
                    pcp_port = self.pcp_port,
                    "pgpool: running"
                );
                *running = Some(started);
                Ok(())
            }
            Err(e) => {
                if let Err(stop) = shut_down(started, Signal::SIGQUIT, STOP_TIMEOUT) {
                    tracing::warn!(error = %stop, "pgpool: could not stop a failed start");
                }
                Err(e)
            }
        }
    }

    /// Waits until pgpool accepts TCP connections and pcp answers for every
    /// node, or pgpool exits, or [`START_TIMEOUT`] passes.
    fn wait_ready(&self, running: &mut Running, command: &str) -> Result<(), SandboxError> {
        let deadline = Instant::now() + START_TIMEOUT;
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        loop {
            if let Ok(Some(status)) = running.child.try_wait() {
                return Err(SandboxError::Failed {
                    command: command.to_owned(),
                    status: status.to_string(),
                    stderr: self.log_tail(),
                });
            }
            let last = match TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
                Err(e) => format!("port {}: {e}", self.port),
                Ok(_) => match (0..self.nodes).try_for_each(|i| self.node_info_once(i).map(drop)) {
                    Ok(()) => return Ok(()),
                    Err(e) => e.to_string(),
                },
            };
            if Instant::now() >= deadline {
                return Err(SandboxError::Timeout {
                    what: format!(
                        "pgpool to answer on ports {} and {}",
                        self.port, self.pcp_port
                    ),
                    timeout: START_TIMEOUT,
                    last: format!("{last}\n--- {}:\n{}", self.log.display(), self.log_tail()),
                });
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// A pgpool that was killed leaves its pid file (pgpool refuses to
    /// start over a live one) and its unix sockets.
    fn clear_stale_files(&self) {
        let dir = self.dir();
        for stale in [
            self.pid_file.clone(),
            dir.join(format!(".s.PGSQL.{}", self.port)),
            dir.join(format!(".s.PGSQL.{}", self.pcp_port)),
        ] {
            if fs::remove_file(&stale).is_ok() {
                tracing::debug!(file = %stale.display(), "pgpool: removed a stale file");
            }
        }
        // A watchdog member's command socket (wd_ipc_socket_dir is ours).
        for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with(".s.PGPOOLWD_CMD.")
            {
                let _ = fs::remove_file(entry.path());
            }
        }
    }

    /// The last lines of pgpool's log, for start failures.
    fn log_tail(&self) -> String {
        let log = fs::read(&self.log).unwrap_or_default();
        let log = String::from_utf8_lossy(&log);
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Pgpool {
    fn drop(&mut self) {
        let running = lock(&self.running).take();
        if let Some(running) = running {
            if let Err(e) = shut_down(running, Signal::SIGINT, Duration::from_secs(5)) {
                tracing::warn!(error = %e, "pgpool: could not stop on drop");
            }
        }
        tracing::info!(dir = %self.dir().display(), "pgpool: stopped and removed");
    }
}

/// Stops the pgpool of `running`: `signal` to the main process (SIGINT:
/// fast, SIGQUIT: immediate), then SIGKILL to the group and every child
/// left after `timeout`. Always reaps the main process.
fn shut_down(mut running: Running, signal: Signal, timeout: Duration) -> Result<(), SandboxError> {
    let mut all = procs::descendants(&running.main);
    all.push(running.main);
    running.main.signal(signal)?;
    let deadline = Instant::now() + timeout;
    let mut reaped = false;
    loop {
        if !reaped {
            reaped = matches!(running.child.try_wait(), Ok(Some(_)) | Err(_));
        }
        if reaped && procs::wait_gone(&all, Duration::ZERO) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    tracing::warn!(
        pid = running.main.pid,
        "pgpool: did not stop in time, killing"
    );
    all.extend(procs::descendants(&running.main));
    if !reaped {
        // The unreaped leader still holds the group id: no other group can
        // have it.
        let _ = killpg(Pid::from_raw(running.main.pid), Signal::SIGKILL);
    }
    for p in &all {
        let _ = p.signal(Signal::SIGKILL);
    }
    let _ = running.child.wait();
    if procs::wait_gone(&all, STOP_TIMEOUT) {
        Ok(())
    } else {
        Err(SandboxError::Timeout {
            what: format!("pgpool (pid {}) to die after SIGKILL", running.main.pid),
            timeout: STOP_TIMEOUT,
            last: "still alive".to_owned(),
        })
    }
}

/// Stops the pgpools of test processes that died without dropping theirs,
/// and removes their directories. A pgpool is found by the pid in its pid
/// file and recognised by its command line naming its directory.
pub(super) fn reap_orphans(base: &Path) {
    for (dir, owner_pid) in procs::orphaned_dirs(base, DIR_PREFIX) {
        tracing::warn!(dir = %dir.display(), owner_pid, "pgpool: removing an orphaned pgpool");
        if let Some(main) = pid_file_process(&dir) {
            let mut all = procs::descendants(&main);
            all.push(main);
            for p in &all {
                let _ = p.signal(Signal::SIGKILL);
            }
            if !procs::wait_gone(&all, STOP_TIMEOUT) {
                tracing::warn!(dir = %dir.display(), "pgpool: orphaned processes survived SIGKILL");
            }
        }
        let _ = fs::remove_dir_all(&dir);
    }
}

/// The live pgpool named by the pid file in `dir` (NUL-padded by pgpool),
/// checked against its command line so a reused pid is never taken for it.
fn pid_file_process(dir: &Path) -> Option<Proc> {
    let mut text = String::new();
    File::open(dir.join("pgpool.pid"))
        .ok()?
        .read_to_string(&mut text)
        .ok()?;
    let pid = text
        .trim_matches(|c: char| c == '\0' || c.is_whitespace())
        .parse()
        .ok()?;
    let proc = procs::identify(pid)?;
    let ours = procs::cmdline(pid).is_some_and(|cmd| cmd.contains(dir.to_string_lossy().as_ref()));
    ours.then_some(proc)
}
