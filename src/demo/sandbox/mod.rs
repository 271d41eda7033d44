//! The local sandbox: real PostgreSQL servers — a primary and N standbys in
//! streaming replication — on free loopback ports in a temporary directory,
//! shared by the integration tests and the newcomer's demo.
//!
//! It owns the servers' whole life: initdb, pg_basebackup, configuration,
//! the failure operations the tests need (stop, kill -9, freeze/thaw with
//! SIGSTOP/SIGCONT, promote, re-point, pg_rewind), and their cleanup on drop.
//! Everything is synchronous: the callers are tests and a demo, and blocking
//! keeps the failure injection simple and ordered.
//!
//! Servers run as the `postgres` OS user when we are root, because
//! PostgreSQL refuses to run as root. The superuser `postgres` reaches every
//! server without a password over the unix socket in the temporary
//! directory; the `plusmoin` role (with [`SANDBOX_PASSWORD`]) is what
//! plusmoin itself uses, over TCP with scram-sha-256.

pub mod pgpool;
mod procs;
mod run;

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::{Gid, Uid, User};

use procs::{owner_stamp, Proc, OWNER_FILE};
use run::Runner;

/// The role plusmoin logs in as.
pub const SANDBOX_USER: &str = "plusmoin";
/// The password of [`SANDBOX_USER`] (a sandbox secret: public on purpose).
pub const SANDBOX_PASSWORD: &str = "carrotcake-sandbox";
/// The database plusmoin connects to, owned by [`SANDBOX_USER`].
pub const SANDBOX_DBNAME: &str = "plusmoin";

/// The only address the sandbox listens on.
const HOST: &str = "127.0.0.1";
/// The bootstrap superuser, trusted over the unix socket and for replication.
const SUPERUSER: &str = "postgres";
/// How many fresh ports a first start tries when its port got taken.
const PORT_ATTEMPTS: usize = 5;
/// The deadline of any one tool run (pg_ctl has its own, shorter, `-t`).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
/// `pg_ctl -t`: how long start/stop/promote may wait for the server.
const PG_CTL_WAIT: &str = "60";
/// How long a killed server's processes may take to disappear.
const GONE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `start` waits for each new standby to stream.
const FIRST_STREAM_TIMEOUT: Duration = Duration::from_secs(30);
/// Binaries the sandbox runs, checked up front for a clear error.
const TOOLS: &[&str] = &[
    "initdb",
    "pg_ctl",
    "postgres",
    "pg_basebackup",
    "pg_rewind",
    "psql",
];

/// Why a sandbox operation failed. Command failures carry the command line
/// and its stderr (and, for a server that would not start, its log's tail).
#[derive(thiserror::Error, Debug)]
pub enum SandboxError {
    #[error("postgresql server binaries not found ({0}); install postgresql (e.g. `apt-get install postgresql`)")]
    NotInstalled(String),
    #[error("we run as root and postgresql refuses to, but there is no `postgres` os user to run the servers as")]
    NoPostgresUser,
    #[error("looking up the `postgres` os user: {0}")]
    UserLookup(#[source] nix::errno::Errno),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("could not run `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("`{command}` did not finish within {timeout:?} and was killed; stderr: {stderr}")]
    CommandTimeout {
        command: String,
        timeout: Duration,
        stderr: String,
    },
    #[error("unexpected output from `{command}`: {output:?}")]
    Unexpected { command: String, output: String },
    #[error("no node {index}: the sandbox has {len}")]
    NoSuchNode { index: usize, len: usize },
    #[error("node {0} is not running")]
    NotRunning(usize),
    #[error("node {0} is still running; stop it first")]
    StillRunning(usize),
    #[error("node {0} is not a standby")]
    NotStandby(usize),
    #[error("sending {signal} to pid {pid}: {source}")]
    Signal {
        signal: Signal,
        pid: i32,
        #[source]
        source: nix::errno::Errno,
    },
    #[error("timed out after {timeout:?} waiting for {what} (last seen: {last})")]
    Timeout {
        what: String,
        timeout: Duration,
        last: String,
    },
}

/// One server of the sandbox.
#[derive(Debug)]
struct Node {
    data: PathBuf,
    log: PathBuf,
    port: u16,
    /// Shared memory a kill -9 left behind; the next successful start of
    /// this node reclaims it, otherwise Drop removes it.
    crashed: Mutex<Option<CrashLeftovers>>,
}

/// What a SIGKILLed server could not clean up itself.
#[derive(Debug)]
struct CrashLeftovers {
    postmaster_pid: i32,
    /// The System V segment id from postmaster.pid.
    shmid: Option<i32>,
    /// Dynamic shared memory files under /dev/shm.
    files: Vec<PathBuf>,
}

/// A running primary and its standbys; dropping it stops them all and
/// removes the directory.
#[derive(Debug)]
pub struct Sandbox {
    bin: PathBuf,
    runner: Runner,
    nodes: Vec<Node>,
    /// Which node each node streams from (`None`: a primary).
    upstream: Mutex<Vec<Option<usize>>>,
    /// Declared last: removed only after `Drop::drop` stopped the servers.
    dir: tempfile::TempDir,
}

/// The directory of PostgreSQL's server binaries: the highest
/// `/usr/lib/postgresql/<version>/bin` (Debian's layout), else
/// `pg_config --bindir`.
pub fn pg_bin_dir() -> Result<PathBuf, SandboxError> {
    let mut best: Option<(Vec<u32>, PathBuf)> = None;
    if let Ok(entries) = fs::read_dir("/usr/lib/postgresql") {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(version) = name.to_str().and_then(parse_version) else {
                continue;
            };
            let bin = entry.path().join("bin");
            if bin.join("pg_ctl").is_file() && best.as_ref().map_or(true, |(v, _)| version > *v) {
                best = Some((version, bin));
            }
        }
    }
    if let Some((_, bin)) = best {
        return Ok(bin);
    }
    let out = Command::new("pg_config")
        .arg("--bindir")
        .output()
        .map_err(|e| {
            SandboxError::NotInstalled(format!(
                "no /usr/lib/postgresql/*/bin/pg_ctl, and `pg_config --bindir` could not run: {e}"
            ))
        })?;
    if !out.status.success() {
        return Err(SandboxError::NotInstalled(format!(
            "no /usr/lib/postgresql/*/bin/pg_ctl, and `pg_config --bindir` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let bin = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if bin.join("pg_ctl").is_file() {
        Ok(bin)
    } else {
        Err(SandboxError::NotInstalled(format!(
            "no /usr/lib/postgresql/*/bin/pg_ctl, and `pg_config --bindir` says {} which has no pg_ctl",
            bin.display()
        )))
    }
}

/// Locks `m`, even poisoned: the data stays usable and Drop must not panic.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// "15" → [15], "9.6" → [9, 6]; anything else is not a version directory.
fn parse_version(name: &str) -> Option<Vec<u32>> {
    name.split('.').map(|part| part.parse().ok()).collect()
}

/// The OS user the servers run as: `postgres` when we are root, else us.
fn server_owner() -> Result<Option<(Uid, Gid)>, SandboxError> {
    if !Uid::effective().is_root() {
        return Ok(None);
    }
    let user = User::from_name(SUPERUSER)
        .map_err(SandboxError::UserLookup)?
        .ok_or(SandboxError::NoPostgresUser)?;
    Ok(Some((user.uid, user.gid)))
}

/// A loopback port nobody listens on right now (it may be taken again
/// before the server binds it: the first start retries on that).
pub fn free_port() -> Result<u16, SandboxError> {
    let io = |source| SandboxError::Io {
        what: format!("picking a free port on {HOST}"),
        source,
    };
    let listener = TcpListener::bind((HOST, 0)).map_err(io)?;
    Ok(listener.local_addr().map_err(io)?.port())
}

/// Where sandboxes live: RAM when it is there, so servers start fast and
/// nothing is left on disk.
fn base_dir() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

/// A libpq connection-string value, quoted (the socket path may hold spaces).
fn conninfo_quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// A SQL (and postgresql.conf) string literal.
fn sql_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

impl Sandbox {
    /// Starts a primary (index 0) and `standbys` standbys (1..=standbys),
    /// all streaming from the primary, and returns once every standby
    /// streams. On error, whatever was started is stopped and removed.
    pub fn start(standbys: usize) -> Result<Sandbox, SandboxError> {
        let began = Instant::now();
        let bin = pg_bin_dir()?;
        if let Some(missing) = TOOLS.iter().find(|t| !bin.join(t).is_file()) {
            return Err(SandboxError::NotInstalled(format!(
                "{} has no {missing}",
                bin.display()
            )));
        }
        let owner = server_owner()?;
        let base = base_dir();
        let dir = tempfile::Builder::new()
            .prefix(DIR_PREFIX)
            .tempdir_in(&base)
            .map_err(|source| SandboxError::Io {
                what: format!("creating a temporary directory in {}", base.display()),
                source,
            })?;
        let runner = Runner {
            owner,
            cwd: dir.path().to_path_buf(),
        };
        runner.chown(dir.path())?;
        if let Some(stamp) = owner_stamp() {
            runner.write_file(&dir.path().join(OWNER_FILE), &stamp)?;
        }
        reap_orphans(&runner, &bin, &base);
        let mut sandbox = Sandbox {
            bin,
            runner,
            nodes: Vec::new(),
            upstream: Mutex::new(Vec::new()),
            dir,
        };
        // From here on, an early return drops `sandbox`, which stops
        // whatever already runs.
        sandbox.init_primary()?;
        for i in 1..=standbys {
            sandbox.add_standby(i)?;
        }
        for i in 1..=standbys {
            sandbox.wait_until_streaming(i, FIRST_STREAM_TIMEOUT)?;
        }
        tracing::info!(
            dir = %sandbox.dir().display(),
            ports = ?sandbox.nodes.iter().map(|n| n.port).collect::<Vec<_>>(),
            elapsed_ms = began.elapsed().as_millis() as u64,
            "sandbox: started"
        );
        Ok(sandbox)
    }

    /// How many servers: the primary plus the standbys.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Always false: a sandbox has at least its primary.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The address every server listens on.
    pub fn host(&self) -> &str {
        HOST
    }

    /// The TCP port of node `i`.
    ///
    /// # Panics
    /// When `i >= self.len()`, like slice indexing: a caller's bug.
    pub fn port(&self, i: usize) -> u16 {
        self.nodes[i].port
    }

    /// The temporary directory holding the data directories, the logs
    /// (`node<i>.log`) and the unix sockets; tests may put files there.
    /// The OS user the servers run as when we are root (`postgres`), with
    /// its group; `None` when they run as ourselves.
    pub fn owner(&self) -> Option<(Uid, Gid)> {
        self.runner.owner
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The data directory of node `i` (owned by the servers' OS user).
    ///
    /// # Panics
    /// When `i >= self.len()`, like slice indexing: a caller's bug.
    pub fn data_dir(&self, i: usize) -> &Path {
        &self.nodes[i].data
    }

    /// Records that something outside the sandbox (pgpool's failover or
    /// follow_primary scripts, say) promoted node `i` (`None`) or re-pointed
    /// it at `upstream`, so [`Sandbox::wait_until_streaming`] waits for the
    /// right sender.
    pub fn set_upstream(&self, i: usize, upstream: Option<usize>) -> Result<(), SandboxError> {
        self.node(i)?;
        if let Some(u) = upstream {
            self.node(u)?;
        }
        self.upstreams()[i] = upstream;
        Ok(())
    }

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

    /// Runs `sql` on node `i` as the superuser over the unix socket, in the
    /// plusmoin database; returns psql's unaligned, tuples-only output
    /// (`|` between columns, one line per row).
    pub fn sql(&self, i: usize, sql: &str) -> Result<String, SandboxError> {
        self.psql(i, SANDBOX_DBNAME, sql)
    }

    /// Like [`Sandbox::sql`], in database `dbname` (e.g. `postgres`, to drop
    /// the plusmoin database).
    pub fn sql_in(&self, i: usize, dbname: &str, sql: &str) -> Result<String, SandboxError> {
        self.psql(i, dbname, sql)
    }

    /// Whether node `i` is a standby (`pg_is_in_recovery()`).
    pub fn is_in_recovery(&self, i: usize) -> Result<bool, SandboxError> {
        let out = self.sql(i, "SELECT pg_is_in_recovery()")?;
        match out.trim() {
            "t" => Ok(true),
            "f" => Ok(false),
            _ => Err(SandboxError::Unexpected {
                command: format!("node {i}: SELECT pg_is_in_recovery()"),
                output: out,
            }),
        }
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

    // ---- setup -------------------------------------------------------

    fn init_primary(&mut self) -> Result<(), SandboxError> {
        let node = self.new_node(0)?;
        let data = node.data.clone();
        self.nodes.push(node);
        self.upstreams().push(None);
        self.run_tool(
            "initdb",
            [
                "-D".as_ref(),
                data.as_os_str(),
                "-U".as_ref(),
                SUPERUSER.as_ref(),
                "-A".as_ref(),
                "trust".as_ref(),
                "-E".as_ref(),
                "UTF8".as_ref(),
                "--no-locale".as_ref(),
                "--no-sync".as_ref(),
                "--no-instructions".as_ref(),
            ],
        )?;
        self.write_file(
            &data.join("pg_hba.conf"),
            &format!(
                "# written by plusmoin's sandbox\n\
                 local all all trust\n\
                 host all {SANDBOX_USER} {HOST}/32 scram-sha-256\n\
                 host replication all {HOST}/32 trust\n\
                 host all all {HOST}/32 scram-sha-256\n"
            ),
        )?;
        self.first_start(0)?;
        self.psql(
            0,
            "postgres",
            &format!(
                "CREATE ROLE {SANDBOX_USER} LOGIN PASSWORD {}",
                sql_quote(SANDBOX_PASSWORD)
            ),
        )?;
        self.psql(
            0,
            "postgres",
            &format!("CREATE DATABASE {SANDBOX_DBNAME} OWNER {SANDBOX_USER}"),
        )?;
        self.psql(
            0,
            "postgres",
            &format!("GRANT pg_monitor TO {SANDBOX_USER}"),
        )?;
        Ok(())
    }

    fn add_standby(&mut self, i: usize) -> Result<(), SandboxError> {
        let node = self.new_node(i)?;
        let data = node.data.clone();
        self.nodes.push(node);
        self.upstreams().push(Some(0));
        let primary_port = self.port(0).to_string();
        self.run_tool(
            "pg_basebackup",
            [
                "-h".as_ref(),
                HOST.as_ref(),
                "-p".as_ref(),
                primary_port.as_ref(),
                "-U".as_ref(),
                SUPERUSER.as_ref(),
                "-D".as_ref(),
                data.as_os_str(),
                "-X".as_ref(),
                "stream".as_ref(),
                "-c".as_ref(),
                "fast".as_ref(),
                "-R".as_ref(),
                "--no-sync".as_ref(),
            ],
        )?;
        // -R made standby.signal; the copied configuration is the primary's.
        self.write_standby_conf(i, 0)?;
        self.first_start(i)
    }

    fn new_node(&self, i: usize) -> Result<Node, SandboxError> {
        Ok(Node {
            data: self.dir().join(format!("node{i}")),
            log: self.dir().join(format!("node{i}.log")),
            port: free_port()?,
            crashed: Mutex::new(None),
        })
    }

    /// The first start of a node: when its port was taken between
    /// [`free_port`] and the bind, pick another and try again.
    fn first_start(&mut self, i: usize) -> Result<(), SandboxError> {
        let mut attempt = 1;
        loop {
            self.write_conf(i)?;
            let log_len = fs::metadata(&self.nodes[i].log).map_or(0, |m| m.len());
            let result = self.pg_ctl_start(i);
            let Err(err) = result else {
                return Ok(());
            };
            let log = fs::read(&self.nodes[i].log).unwrap_or_default();
            let new_log = String::from_utf8_lossy(log.get(log_len as usize..).unwrap_or_default());
            if attempt >= PORT_ATTEMPTS || !new_log.contains("Address already in use") {
                return Err(err);
            }
            tracing::warn!(
                node = i,
                port = self.nodes[i].port,
                "sandbox: port taken, retrying"
            );
            self.nodes[i].port = free_port()?;
            attempt += 1;
        }
    }

    /// The whole postgresql.conf of node `i`: written by us, and again after
    /// pg_basebackup or pg_rewind copied another node's.
    fn write_conf(&self, i: usize) -> Result<(), SandboxError> {
        let node = self.node(i)?;
        let socket_dir = self.dir().to_string_lossy().replace('\'', "''");
        // The directory's unique name in cluster_name puts it in every
        // server process's title, so leftovers can be found by name.
        let dir_name = self
            .dir()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let conf = format!(
            "# written by plusmoin's sandbox\n\
             listen_addresses = '{HOST}'\n\
             port = {port}\n\
             unix_socket_directories = '{socket_dir}'\n\
             cluster_name = '{dir_name}-node{i}'\n\
             max_connections = 50\n\
             shared_buffers = 16MB\n\
             password_encryption = 'scram-sha-256'\n\
             wal_level = replica\n\
             max_wal_senders = 10\n\
             max_replication_slots = 10\n\
             wal_keep_size = 64MB\n\
             hot_standby = on\n\
             wal_log_hints = on\n\
             full_page_writes = on\n\
             fsync = off\n\
             recovery_target_timeline = 'latest'\n\
             wal_receiver_status_interval = 1s\n\
             wal_retrieve_retry_interval = 500ms\n\
             wal_sender_timeout = 5s\n\
             wal_receiver_timeout = 5s\n\
             logging_collector = off\n\
             log_line_prefix = '%m [%p] %q%u@%d '\n",
            port = node.port,
        );
        self.write_file(&node.data.join("postgresql.conf"), &conf)
    }

    /// Makes node `i` a standby of `upstream` on its next start:
    /// standby.signal and a postgresql.auto.conf holding only
    /// primary_conninfo.
    fn write_standby_conf(&self, i: usize, upstream: usize) -> Result<(), SandboxError> {
        let data = self.node(i)?.data.clone();
        self.write_conf(i)?;
        let conninfo = self.primary_conninfo(i, upstream);
        self.write_file(
            &data.join("postgresql.auto.conf"),
            &format!(
                "# Do not edit this file manually!\n\
                 # It will be overwritten by the ALTER SYSTEM command.\n\
                 primary_conninfo = {}\n",
                sql_quote(&conninfo)
            ),
        )?;
        self.write_file(&data.join("standby.signal"), "")
    }

    /// Replication over TCP as the trusted superuser; the application name
    /// makes the standby recognisable in pg_stat_replication.
    fn primary_conninfo(&self, i: usize, upstream: usize) -> String {
        format!(
            "host={HOST} port={} user={SUPERUSER} application_name=node{i}",
            self.nodes.get(upstream).map_or(0, |n| n.port)
        )
    }

    // ---- plumbing ----------------------------------------------------

    fn node(&self, i: usize) -> Result<&Node, SandboxError> {
        self.nodes.get(i).ok_or(SandboxError::NoSuchNode {
            index: i,
            len: self.nodes.len(),
        })
    }

    fn upstreams(&self) -> MutexGuard<'_, Vec<Option<usize>>> {
        lock(&self.upstream)
    }

    /// The System V shared memory id on line 7 of node `i`'s pid file.
    fn pid_file_shmid(&self, i: usize) -> Option<i32> {
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

    fn write_file(&self, path: &Path, contents: &str) -> Result<(), SandboxError> {
        self.runner.write_file(path, contents)
    }

    fn run_tool<I, S>(&self, tool: &str, args: I) -> Result<String, SandboxError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        Ok(self
            .runner
            .run(
                &self.bin.join(tool),
                args,
                Some(SANDBOX_PASSWORD),
                COMMAND_TIMEOUT,
            )?
            .stdout)
    }

    fn psql(&self, i: usize, dbname: &str, sql: &str) -> Result<String, SandboxError> {
        let port = self.node(i)?.port.to_string();
        let dir = self.dir().to_path_buf();
        let out = self.run_tool(
            "psql",
            [
                "-X".as_ref(),
                "-A".as_ref(),
                "-t".as_ref(),
                "-q".as_ref(),
                "-v".as_ref(),
                "ON_ERROR_STOP=1".as_ref(),
                "-h".as_ref(),
                dir.as_os_str(),
                "-p".as_ref(),
                port.as_ref(),
                "-U".as_ref(),
                SUPERUSER.as_ref(),
                "-d".as_ref(),
                dbname.as_ref(),
                "-c".as_ref(),
                sql.as_ref(),
            ],
        )?;
        Ok(out.trim_end_matches('\n').to_owned())
    }

    fn pg_ctl_start(&self, i: usize) -> Result<(), SandboxError> {
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
    fn postmaster(&self, i: usize) -> Result<Option<Proc>, SandboxError> {
        Ok(running_postmaster(&self.node(i)?.data))
    }

    /// A killed postmaster leaves its pid file, and its process may linger
    /// a moment (or stay a zombie nobody reaps): once it is gone, the file
    /// is stale and would make the next start refuse.
    /// The same goes for the unix socket's lock file, which names the dead
    /// postmaster too (and a zombie still passes PostgreSQL's liveness
    /// check).
    fn clear_stale_pid_file(&self, i: usize) -> Result<(), SandboxError> {
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

    fn gone_timeout(&self, i: usize, what: &str) -> SandboxError {
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

/// The prefix of every sandbox directory's name.
const DIR_PREFIX: &str = "plusmoin-sandbox-";

/// Stops the servers and removes the directories of sandboxes whose owning
/// process died without dropping them, so they do not pile up.
fn reap_orphans(runner: &Runner, bin: &Path, base: &Path) {
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

impl Drop for Sandbox {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.shut_down(i);
            self.remove_crash_leftovers(i);
        }
        tracing::info!(dir = %self.dir().display(), "sandbox: stopped and removed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandbox_can_be_shared_between_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<Sandbox>();
    }

    #[test]
    fn versions_order_numerically() {
        assert_eq!(parse_version("15"), Some(vec![15]));
        assert_eq!(parse_version("9.6"), Some(vec![9, 6]));
        assert_eq!(parse_version("15beta"), None);
        assert_eq!(parse_version(""), None);
        assert!(parse_version("10") > parse_version("9.6"));
    }

    #[test]
    fn quoting_doubles_quotes() {
        assert_eq!(sql_quote("it's"), "'it''s'");
        assert_eq!(conninfo_quote(r"a'b\c"), r"'a\'b\\c'");
    }

    #[test]
    fn free_ports_are_loopback_and_nonzero() {
        let port = free_port().map_err(|e| e.to_string());
        assert!(matches!(port, Ok(p) if p > 0), "{port:?}");
    }
}
