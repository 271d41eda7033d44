//! The local sandbox: real PostgreSQL servers — a primary and N standbys in
//! streaming replication — on free loopback ports in a temporary directory,
//! shared by the integration tests and the newcomer's demo.
//!
//! It owns the servers' whole life: initdb, pg_basebackup, configuration,
//! the failure operations the demo and the tests need (stop, kill -9,
//! promote, re-point, pg_rewind), and their cleanup on drop. What only the
//! tests do (freeze/thaw with SIGSTOP/SIGCONT, pg_hba.conf changes, most of
//! the pgpool fixture's checks) is in the test kit, `plusmoin_kit::sandbox`,
//! built on [`Sandbox::pids`], [`Sandbox::data_dir`] and [`Sandbox::sql_in`].
//! Everything is synchronous: the callers are tests and a demo, and blocking
//! keeps the failure injection simple and ordered.
//!
//! Servers run as the `postgres` OS user when we are root, because
//! PostgreSQL refuses to run as root. The superuser `postgres` reaches every
//! server without a password over the unix socket in the temporary
//! directory; the `plusmoin` role (with [`SANDBOX_PASSWORD`]) is what
//! plusmoin itself uses, over TCP with scram-sha-256.

mod ops;
pub mod pgpool;
mod procs;
mod run;
mod server;
mod setup;

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::{Gid, Uid, User};

use procs::{owner_stamp, OWNER_FILE};
use run::Runner;
use server::reap_orphans;

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
/// The deadline of any one tool run (pg_ctl has its own, shorter, `-t`).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
/// `pg_ctl -t`: how long start/stop/promote may wait for the server.
const PG_CTL_WAIT: &str = "60";
/// How long a killed server's processes may take to disappear.
const GONE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `start` waits for each new standby to stream.
const FIRST_STREAM_TIMEOUT: Duration = Duration::from_secs(30);
/// The prefix of every sandbox directory's name.
const DIR_PREFIX: &str = "plusmoin-sandbox-";
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

    /// The OS user the servers run as when we are root (`postgres`), with
    /// its group; `None` when they run as ourselves.
    pub(crate) fn owner(&self) -> Option<(Uid, Gid)> {
        self.runner.owner
    }

    /// The temporary directory holding the data directories, the logs
    /// (`node<i>.log`) and the unix sockets; tests may put files there.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The data directory of node `i` (owned by the servers' OS user):
    /// its postgresql.conf, pg_hba.conf and postmaster.pid.
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
