//! What the demo and the tests do to a running sandbox: stop, kill -9 a
//! server, start it again, promote, re-point, rewind, and wait for a
//! standby to stream; and the pids of a server, for the test kit's
//! freeze and thaw (`plusmoin_kit::sandbox`).

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::procs;
use super::{
    conninfo_quote, lock, sql_quote, CrashLeftovers, Sandbox, SandboxError, GONE_TIMEOUT,
    PG_CTL_WAIT, SANDBOX_DBNAME, SUPERUSER,
};

impl Sandbox {
    /// The pids of node `i`'s postmaster (first) and of every process it
    /// forked, while it runs; empty when it does not. The postmaster is
    /// found through its pid file and checked against its command line, so
    /// a reused pid is never taken for it. For the tests to watch or signal
    /// a server's processes (the test kit freezes and thaws a node so).
    pub fn pids(&self, i: usize) -> Result<Vec<i32>, SandboxError> {
        let Some(postmaster) = self.postmaster(i)? else {
            return Ok(Vec::new());
        };
        let mut pids = vec![postmaster.pid];
        pids.extend(procs::descendants(&postmaster).iter().map(|p| p.pid));
        Ok(pids)
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
