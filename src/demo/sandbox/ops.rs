//! What the tests do to a running sandbox: stop, kill -9, freeze and thaw
//! a server, start it again, promote, re-point, rewind, change pg_hba.conf,
//! and wait for a standby to stream.

use std::fs;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::procs;
use super::{
    conninfo_quote, lock, sql_quote, CrashLeftovers, Sandbox, SandboxError, GONE_TIMEOUT,
    PG_CTL_WAIT, SANDBOX_DBNAME, SUPERUSER,
};

impl Sandbox {
    /// Puts `line` first in node `i`'s pg_hba.conf (first match wins, so it
    /// overrides the sandbox's own lines) and, when the node runs, reloads
    /// the configuration. The file is checked first (`pg_hba_file_rules`)
    /// so a bad line fails here, not silently at reload. A reload is
    /// asynchronous: this waits a moment after signalling the postmaster so
    /// new connections see the rule. Example: `host postgres plusmoin
    /// 127.0.0.1/32 reject` refuses pgpool's health check (when it logs in
    /// to `postgres`) but not plusmoin (database `plusmoin`).
    pub fn hba_prepend(&self, i: usize, line: &str) -> Result<(), SandboxError> {
        let path = self.node(i)?.data.join("pg_hba.conf");
        let old = fs::read_to_string(&path).map_err(|source| SandboxError::Io {
            what: format!("read {}", path.display()),
            source,
        })?;
        self.write_file(&path, &format!("{}\n{old}", line.trim_end()))?;
        if self.postmaster(i)?.is_none() {
            tracing::info!(
                node = i,
                line,
                "sandbox: pg_hba line added (node not running)"
            );
            return Ok(());
        }
        let errors = self.psql(
            i,
            "postgres",
            "SELECT line_number || ': ' || error FROM pg_hba_file_rules WHERE error IS NOT NULL",
        )?;
        if !errors.trim().is_empty() {
            self.write_file(&path, &old)?;
            return Err(SandboxError::Unexpected {
                command: format!("node {i}: pg_hba.conf with {line:?}"),
                output: errors,
            });
        }
        self.psql(i, "postgres", "SELECT pg_reload_conf()")?;
        std::thread::sleep(Duration::from_millis(300));
        tracing::info!(node = i, line, "sandbox: pg_hba line added and reloaded");
        Ok(())
    }

    /// Stops node `i` cleanly (`pg_ctl stop -m fast`) and waits for it.
    pub fn stop(&self, i: usize) -> Result<(), SandboxError> {
        let data = self.node(i)?.data.clone();
        self.run_tool(
            "pg_ctl",
            [
                "stop".as_ref(),
                "-D".as_ref(),
                data.as_os_str(),
                "-m".as_ref(),
                "fast".as_ref(),
                "-w".as_ref(),
                "-t".as_ref(),
                PG_CTL_WAIT.as_ref(),
            ],
        )?;
        Ok(())
    }

    /// Kills node `i`'s postmaster with SIGKILL, as a crash would, and
    /// waits until it and all its children are gone. Children normally
    /// exit by themselves on their postmaster's death; frozen or slow ones
    /// are killed too.
    pub fn kill9(&self, i: usize) -> Result<(), SandboxError> {
        let postmaster = self.postmaster(i)?.ok_or(SandboxError::NotRunning(i))?;
        let children = procs::descendants(&postmaster);
        let mut files = procs::shm_files(postmaster.pid);
        for child in &children {
            files.extend(procs::shm_files(child.pid));
        }
        files.sort();
        files.dedup();
        let leftovers = CrashLeftovers {
            postmaster_pid: postmaster.pid,
            shmid: self.pid_file_shmid(i),
            files,
        };
        postmaster.signal(Signal::SIGKILL)?;
        if !procs::wait_gone(&[postmaster], GONE_TIMEOUT) {
            return Err(self.gone_timeout(i, "its postmaster to die after SIGKILL"));
        }
        for child in children.iter().filter(|c| c.is_stopped()) {
            child.signal(Signal::SIGKILL)?;
        }
        if !procs::wait_gone(&children, GONE_TIMEOUT) {
            for child in &children {
                child.signal(Signal::SIGKILL)?;
            }
            if !procs::wait_gone(&children, GONE_TIMEOUT) {
                return Err(self.gone_timeout(i, "the children of its killed postmaster to die"));
            }
        }
        *lock(&self.nodes[i].crashed) = Some(leftovers);
        tracing::info!(node = i, pid = postmaster.pid, "sandbox: killed -9");
        Ok(())
    }

    /// Freezes node `i` with SIGSTOP on its postmaster and every child: the
    /// kernel still accepts TCP connections, but nothing answers — a hung
    /// server, not a dead one.
    pub fn freeze(&self, i: usize) -> Result<(), SandboxError> {
        let postmaster = self.postmaster(i)?.ok_or(SandboxError::NotRunning(i))?;
        // The postmaster first, so it forks no new child behind our back;
        // the second walk catches a child forked while we signalled.
        postmaster.signal(Signal::SIGSTOP)?;
        for _ in 0..2 {
            for child in procs::descendants(&postmaster) {
                child.signal(Signal::SIGSTOP)?;
            }
        }
        // A signal takes effect when its process next enters the kernel: on
        // a loaded machine a busy child may still run for a moment. Return
        // only once every process of the node is stopped (or gone), so a
        // caller's "frozen" holds from here on.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let running: Vec<procs::Proc> = std::iter::once(postmaster)
                .chain(procs::descendants(&postmaster))
                .filter(|p| p.is_alive() && !p.is_stopped())
                .collect();
            if running.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                return Err(SandboxError::Io {
                    what: format!(
                        "freeze node {i}: pids {:?} still not stopped after 10 s",
                        running.iter().map(|p| p.pid).collect::<Vec<_>>()
                    ),
                    source: std::io::Error::from(std::io::ErrorKind::TimedOut),
                });
            }
            for p in &running {
                p.signal(Signal::SIGSTOP)?;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        tracing::info!(node = i, pid = postmaster.pid, "sandbox: frozen");
        Ok(())
    }

    /// Resumes a node frozen by [`Sandbox::freeze`] (SIGCONT to all).
    pub fn thaw(&self, i: usize) -> Result<(), SandboxError> {
        let postmaster = self.postmaster(i)?.ok_or(SandboxError::NotRunning(i))?;
        for child in procs::descendants(&postmaster) {
            child.signal(Signal::SIGCONT)?;
        }
        postmaster.signal(Signal::SIGCONT)?;
        tracing::info!(node = i, pid = postmaster.pid, "sandbox: thawed");
        Ok(())
    }

    /// Starts node `i` again (`pg_ctl start -w`), after a stop or a kill -9.
    pub fn start_node(&self, i: usize) -> Result<(), SandboxError> {
        self.clear_stale_pid_file(i)?;
        self.pg_ctl_start(i)
    }

    /// Promotes standby `i` to a primary (`pg_ctl promote -w`).
    pub fn promote(&self, i: usize) -> Result<(), SandboxError> {
        let data = self.node(i)?.data.clone();
        self.run_tool(
            "pg_ctl",
            [
                "promote".as_ref(),
                "-D".as_ref(),
                data.as_os_str(),
                "-w".as_ref(),
                "-t".as_ref(),
                PG_CTL_WAIT.as_ref(),
            ],
        )?;
        self.upstreams()[i] = None;
        tracing::info!(node = i, "sandbox: promoted");
        Ok(())
    }

    /// Makes running standby `i` stream from `new_primary` instead, without
    /// a restart (primary_conninfo is reloadable since PostgreSQL 13). Every
    /// node runs with `recovery_target_timeline = 'latest'`, so this works
    /// after `new_primary` was promoted to a new timeline.
    pub fn repoint(&self, i: usize, new_primary: usize) -> Result<(), SandboxError> {
        self.node(new_primary)?;
        if !self.is_in_recovery(i)? {
            return Err(SandboxError::NotStandby(i));
        }
        let conninfo = self.primary_conninfo(i, new_primary);
        self.psql(
            i,
            SANDBOX_DBNAME,
            &format!(
                "ALTER SYSTEM SET primary_conninfo = {}",
                sql_quote(&conninfo)
            ),
        )?;
        self.psql(i, SANDBOX_DBNAME, "SELECT pg_reload_conf()")?;
        self.upstreams()[i] = Some(new_primary);
        tracing::info!(node = i, new_primary, "sandbox: repointed");
        Ok(())
    }

    /// Turns stopped (or killed) old primary `i` into a standby of
    /// `new_primary`: pg_rewind from it, standby.signal, primary_conninfo,
    /// then start.
    pub fn rewind_as_standby(&self, i: usize, new_primary: usize) -> Result<(), SandboxError> {
        let data = self.node(i)?.data.clone();
        let source_port = self.node(new_primary)?.port;
        if self.postmaster(i)?.is_some() {
            return Err(SandboxError::StillRunning(i));
        }
        self.clear_stale_pid_file(i)?;
        // A freshly promoted server writes its new timeline to pg_control
        // only at its next checkpoint, and pg_rewind reads it from there.
        self.psql(new_primary, SANDBOX_DBNAME, "CHECKPOINT")?;
        let source = format!(
            "host={} port={source_port} user={SUPERUSER} dbname=postgres",
            conninfo_quote(&self.dir().to_string_lossy())
        );
        self.run_tool(
            "pg_rewind",
            [
                "-D".as_ref(),
                data.as_os_str(),
                "--source-server".as_ref(),
                source.as_ref(),
                "--no-sync".as_ref(),
            ],
        )?;
        // pg_rewind copied the source's configuration files: ours again.
        self.write_conf(i)?;
        self.write_standby_conf(i, new_primary)?;
        self.upstreams()[i] = Some(new_primary);
        self.pg_ctl_start(i)?;
        tracing::info!(node = i, new_primary, "sandbox: rewound as a standby");
        Ok(())
    }

    /// Waits until standby `standby`'s WAL receiver streams from the node it
    /// was last pointed at (status `streaming` and the sender's port).
    pub fn wait_until_streaming(
        &self,
        standby: usize,
        timeout: Duration,
    ) -> Result<(), SandboxError> {
        self.node(standby)?;
        let upstream = self.upstreams()[standby].ok_or(SandboxError::NotStandby(standby))?;
        let want = format!("streaming|{}", self.port(upstream));
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.sql(
                standby,
                "SELECT status, sender_port FROM pg_stat_wal_receiver",
            ) {
                Ok(out) if out.trim() == want => return Ok(()),
                Ok(out) => format!("{:?}", out.trim()),
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                return Err(SandboxError::Timeout {
                    what: format!("node {standby} to stream from node {upstream} ({want})"),
                    timeout,
                    last,
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
