//! A real pgpool-II in front of a [`Sandbox`], for the integration tests and
//! the benchmark of the pgpool sidecar.
//!
//! It owns one pgpool process tree and a temporary directory of its own
//! (configuration, pcp.conf, pool_passwd, pcppass, pid file, sockets, status
//! file and log): writing the configuration, starting pgpool in the
//! foreground, reading pgpool's view of the backends through pcp, stopping
//! and restarting it, and its cleanup on drop — including the pgpools of
//! test processes that died without dropping theirs. What only the tests
//! do with it (attach, detach and wait through pcp, `SHOW pool_nodes`, the
//! failover scripts' logs, the status file) is in the test kit,
//! `plusmoin_kit::sandbox`, on top of [`Pgpool::pcp`] and [`Pgpool::dir`].
//!
//! By default it is the "easy lab shape" (no health-check retries, no
//! failover or follow_primary command, no watchdog); [`PgpoolOptions`] makes
//! it production-shaped (retries, real failover/follow_primary scripts, the
//! checks in another database), and the test kits' `PgpoolCluster`
//! (`tests/kit`) runs several members with the watchdog on, through
//! [`Pgpool::create`] and the calls after it.
//!
//! Facts it is built around (pgpool-II 4.3): pcp commands exit 0 when
//! pgpool refused a request (an unknown node id, for one; only a failed
//! login or connection exits 1), so their stderr is checked; pcp silently ignores a
//! pcppass file that is not mode 0600; an attach is only queued when
//! `pcp_attach_node` returns; a node detached by hand stays down across a
//! pgpool restart because pgpool remembers it in its status file
//! (`pgpool_status` in [`Pgpool::dir`], unless that file is removed first);
//! and `auto_failback` re-attaches any down standby
//! that the primary's `pg_stat_replication` shows streaming, including one
//! detached on purpose.

mod conf;
mod pcp;
mod process;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::procs::{owner_stamp, Proc, OWNER_FILE};
pub use super::run::Output;
use super::run::{run_command, Runner};
use super::{base_dir, free_port, Sandbox, SandboxError, HOST};
use pcp::reports_error;
use process::reap_orphans;

/// The pcp user of every sandbox pgpool.
pub const PCP_USER: &str = "pgpool";
/// Its password (a sandbox secret: public on purpose).
pub const PCP_PASSWORD: &str = "pcp-sandbox-pw";

/// The prefix of every pgpool directory's name (orphans are found by it).
const DIR_PREFIX: &str = "plusmoin-pgpool-";
/// What must be in the pgpool binary directory.
const TOOLS: &[&str] = &[
    "pgpool",
    "pcp_node_info",
    "pcp_attach_node",
    "pcp_detach_node",
    "pg_md5",
];
/// A directory holding another pgpool-II build's `pgpool` and `pcp_*`
/// (e.g. `/var/cache/plusmoin-pgpool/4.7.2/bin`), used instead of the
/// system's: how the tests run against every pgpool version
/// (`.ci/pgpool-versions`).
pub(crate) const PGPOOL_BIN_ENV: &str = "PLUSMOIN_TEST_PGPOOL_BIN";
/// Where distributions put pgpool (Debian: /usr/sbin), searched before PATH.
const BIN_CANDIDATES: &[&str] = &["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"];
/// The deadline of one pcp or psql run (a frozen pgpool must not hang us).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(15);
/// How many fresh port pairs a first start tries when a port got taken.
const PORT_ATTEMPTS: usize = 5;
/// How pgpool says it could not bind (its log, at start).
const BIND_FAILURE: &str = "Address already in use";
/// One line per failover_command run.
const FAILOVER_LOG: &str = "failover.log";
/// One line per follow_primary_command run.
const FOLLOW_LOG: &str = "follow.log";

/// How the pgpool in front of the sandbox behaves beyond the fixed basics.
/// `Default` is the "easy lab shape": no retries, no failover scripts, the
/// checks log in to the sandbox database.
#[derive(Clone, Debug)]
pub struct PgpoolOptions {
    /// None: `auto_failback = off`. Some(interval): `auto_failback = on`
    /// with that `auto_failback_interval` (whole seconds, rounded down).
    /// The streaming-replication check it needs is always on
    /// (`sr_check_period = 1`), and `backend_application_nameN` is the
    /// sandbox's `application_name` of node N. pgpool fails a node back as
    /// soon as its health check passes and sr_check saw it streaming, but
    /// at most once per interval per node: the first failback after
    /// pgpool's start is immediate, the next one waits until the interval
    /// since the previous failback has passed (a pgpool restart resets it).
    pub auto_failback: Option<Duration>,
    /// `health_check_period` in seconds (None: 1).
    pub health_check_period: Option<u32>,
    /// `health_check_max_retries` (default 0: one failed check detaches
    /// the node). With retries, a really dead node is detached only after
    /// every retry failed (10 retries, delay 1: about 11 s).
    pub health_check_max_retries: u32,
    /// `health_check_retry_delay` in seconds (default 1).
    pub health_check_retry_delay: u32,
    /// `health_check_timeout` in seconds (default 2: a frozen node is
    /// found quickly; a test about something else on a loaded machine may
    /// want more, or pgpool detaches a node whose check was merely slow).
    pub health_check_timeout: u32,
    /// When true pgpool gets real scripts, written into its directory and
    /// run as the servers' OS user: a `failover_command` that promotes the
    /// new main node (`pg_ctl promote -w`) when the failed node was the
    /// primary, and a `follow_primary_command` that re-points each standby
    /// at the new primary (`ALTER SYSTEM SET primary_conninfo` +
    /// `pg_reload_conf()`, the sandbox's own conninfo shape). The follow
    /// script does NOT attach the standby again: pgpool leaves it down
    /// (re-attaching is plusmoin's job). Neither script starts a server.
    /// Each run appends a line to `failover.log` / `follow.log` in
    /// [`Pgpool::dir`] (the test kit reads them). False (the
    /// default): both commands are empty, nothing is promoted.
    pub failover: bool,
    /// The database pgpool's health check and streaming-replication check
    /// log in to (as the sandbox's plusmoin role). None (the default): the
    /// sandbox database, the one plusmoin uses. `Some("postgres")` lets a
    /// test refuse pgpool's checks on one node with a pg_hba.conf line
    /// (the test kit's `hba_prepend`) while plusmoin still gets in.
    pub health_check_database: Option<String>,
    /// The directory of the `pgpool` and `pcp_*` binaries to run. None
    /// (the default): `PLUSMOIN_TEST_PGPOOL_BIN` when set, else the first system
    /// directory, then PATH, that has them all.
    pub bin_dir: Option<PathBuf>,
}

impl Default for PgpoolOptions {
    fn default() -> Self {
        PgpoolOptions {
            auto_failback: None,
            health_check_period: None,
            health_check_max_retries: 0,
            health_check_retry_delay: 1,
            health_check_timeout: 2,
            failover: false,
            health_check_database: None,
            bin_dir: None,
        }
    }
}

/// A pcp command's verbatim result (see [`Pgpool::pcp_raw`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PcpOutput {
    /// The command line run.
    pub command: String,
    pub stdout: String,
    pub stderr: String,
    /// The exit code; None when it was killed (by a signal, or at the
    /// 15 s deadline).
    pub exit_code: Option<i32>,
}

/// pgpool's view of one backend, from `pcp_node_info`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    /// pgpool's status of the node: "up", "waiting" (up, no client has
    /// used it yet), "down", "quarantine" or "unused".
    pub status: String,
    /// What pgpool's last health check found ("up", "down"; 4.3+).
    pub pg_status: String,
    /// The role pgpool assigns ("primary", "standby").
    pub role: String,
    /// The standby's state in the primary's pg_stat_replication as the
    /// streaming-replication check last saw it ("streaming", "none", "").
    pub replication_state: String,
}

/// A running (or stopped, see [`Pgpool::stop`]) pgpool-II in front of every
/// node of a sandbox; dropping it stops pgpool and removes its directory.
#[derive(Debug)]
pub struct Pgpool {
    bin: PathBuf,
    runner: Runner,
    nodes: usize,
    port: u16,
    pcp_port: u16,
    conf: PathBuf,
    pcp_conf: PathBuf,
    hba: PathBuf,
    pcppass: PathBuf,
    pid_file: PathBuf,
    log: PathBuf,
    running: Mutex<Option<Running>>,
    /// Declared last: removed only after `Drop::drop` stopped pgpool.
    dir: tempfile::TempDir,
}

/// The pgpool main process we spawned (its own process group leader).
#[derive(Debug)]
struct Running {
    child: Child,
    main: Proc,
}

/// The directory holding `pgpool` and the `pcp_*` tools: `chosen` when
/// given, else `PLUSMOIN_TEST_PGPOOL_BIN` when set, else the first of the usual
/// system directories, then PATH, that has them all. The first time a
/// directory is found in this process, pgpool's version is printed once on
/// stderr (past the test harness's capture), so a test log says which
/// pgpool was tested.
pub(crate) fn pgpool_bin_dir(chosen: Option<&Path>) -> Result<PathBuf, SandboxError> {
    let dir = find_bin_dir(chosen)?;
    announce_version(&dir);
    Ok(dir)
}

fn find_bin_dir(chosen: Option<&Path>) -> Result<PathBuf, SandboxError> {
    let missing = |dir: &Path| -> Vec<&str> {
        TOOLS
            .iter()
            .copied()
            .filter(|t| !dir.join(t).is_file())
            .collect()
    };
    let given = chosen
        .map(|d| (d.to_path_buf(), "the pgpool binary directory"))
        .or_else(|| {
            std::env::var_os(PGPOOL_BIN_ENV)
                .filter(|v| !v.is_empty())
                .map(|v| (PathBuf::from(v), PGPOOL_BIN_ENV))
        });
    if let Some((dir, what)) = given {
        let lacking = missing(&dir);
        if lacking.is_empty() {
            return Ok(dir);
        }
        return Err(SandboxError::Io {
            what: format!(
                "{what} {} has no {} (it must hold pgpool-II's `pgpool`, `pcp_*` and `pg_md5`)",
                dir.display(),
                lacking.join(", ")
            ),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        });
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let candidates = BIN_CANDIDATES
        .iter()
        .map(PathBuf::from)
        .chain(std::env::split_paths(&path));
    let mut searched = Vec::new();
    for dir in candidates {
        if missing(&dir).is_empty() {
            return Ok(dir);
        }
        searched.push(dir.display().to_string());
    }
    Err(SandboxError::Io {
        what: format!(
            "pgpool-II not found (no directory among {} has all of {}); install it (e.g. `apt-get install pgpool2`) or set {PGPOOL_BIN_ENV}",
            searched.join(":"),
            TOOLS.join(", ")
        ),
        source: std::io::Error::from(std::io::ErrorKind::NotFound),
    })
}

/// `pgpool --version`'s line (`pgpool-II version 4.7.2 (…)`), or why not.
pub(crate) fn pgpool_version(bin: &Path) -> String {
    let pgpool = bin.join("pgpool");
    match Command::new(&pgpool)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .output()
    {
        Ok(out) => {
            let text = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            text.lines()
                .find(|l| !l.trim().is_empty())
                .map_or_else(|| "no version".to_owned(), |l| l.trim().to_owned())
        }
        Err(e) => format!("cannot run {}: {e}", pgpool.display()),
    }
}

/// Prints the version of the pgpool in `bin` on stderr, once per process
/// and directory.
fn announce_version(bin: &Path) {
    static SEEN: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
    let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    if seen.iter().any(|d| d == bin) {
        return;
    }
    seen.push(bin.to_path_buf());
    // Straight to the stream: `eprintln!` is captured by the test harness.
    let line = format!(
        "plusmoin sandbox: using {} from {}\n",
        pgpool_version(bin),
        bin.display()
    );
    let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
}

/// Whether pgpool-II and its pcp tools are installed (tests that need it
/// can say so clearly instead of failing on a missing binary):
/// `PLUSMOIN_TEST_PGPOOL_BIN`'s directory when set, else the system's.
pub fn pgpool_installed() -> bool {
    find_bin_dir(None).is_ok()
}

impl Pgpool {
    /// Starts pgpool in front of every node of `sb` (backend N = sandbox
    /// node N) in streaming-replication mode, with load balancing, health
    /// checks every second, by default no failover command (a failed node
    /// is only detached, nothing is promoted; see [`PgpoolOptions`]) and no
    /// failover on backend errors.
    /// pgpool runs in the foreground as the sandbox's OS user, on two free
    /// loopback ports, with everything it writes in a directory of its own.
    /// Returns once pgpool accepts connections and `pcp_node_info` answers
    /// for every node.
    pub fn start(sb: &Sandbox, opts: PgpoolOptions) -> Result<Pgpool, SandboxError> {
        Pgpool::start_with_conf(sb, opts, &[])
    }

    /// [`Pgpool::start`] with `extra_conf` lines appended verbatim to
    /// pgpool.conf. pgpool takes the last value of a parameter, so they
    /// override the fixture's own settings (for example
    /// `search_primary_node_timeout = 30`).
    pub fn start_with_conf(
        sb: &Sandbox,
        opts: PgpoolOptions,
        extra_conf: &[&str],
    ) -> Result<Pgpool, SandboxError> {
        let began = Instant::now();
        let mut pgpool = Pgpool::create(sb, &opts)?;
        let extra: Vec<String> = extra_conf.iter().map(|l| l.to_string()).collect();
        let mut attempt = 1;
        loop {
            if pgpool.port == pgpool.pcp_port {
                pgpool.pcp_port = free_port()?;
                continue;
            }
            pgpool.write_conf(sb, &opts, &extra)?;
            let log_len = pgpool.log_len();
            match pgpool.launch() {
                Ok(()) => break,
                Err(e) => {
                    if attempt >= PORT_ATTEMPTS || !pgpool.bind_failed_since(log_len) {
                        return Err(e);
                    }
                    tracing::warn!(
                        port = pgpool.port,
                        pcp_port = pgpool.pcp_port,
                        "pgpool: port taken, retrying"
                    );
                    pgpool.port = free_port()?;
                    pgpool.pcp_port = free_port()?;
                    attempt += 1;
                }
            }
        }
        tracing::info!(
            dir = %pgpool.dir().display(),
            port = pgpool.port,
            pcp_port = pgpool.pcp_port,
            nodes = pgpool.nodes,
            elapsed_ms = began.elapsed().as_millis() as u64,
            "pgpool: started"
        );
        Ok(pgpool)
    }

    /// A pgpool not started yet: its directory with the fixed files (and
    /// the scripts when `opts.failover`), and two free ports.
    /// [`Pgpool::start_with_conf`] is this, [`Pgpool::write_conf`] and
    /// [`Pgpool::start_again`] (retried on fresh ports when one was taken);
    /// a harness that picks the ports and the configuration itself (a
    /// watchdog cluster, in the test kits) calls them in turn.
    pub fn create(sb: &Sandbox, opts: &PgpoolOptions) -> Result<Pgpool, SandboxError> {
        let bin = pgpool_bin_dir(opts.bin_dir.as_deref())?;
        let base = base_dir();
        let owner = sb.runner.owner;
        reap_orphans(&base);
        let dir = tempfile::Builder::new()
            .prefix(DIR_PREFIX)
            .tempdir_in(&base)
            .map_err(|source| SandboxError::Io {
                what: format!("creating a temporary directory in {}", base.display()),
                source,
            })?;
        let path = dir.path().to_path_buf();
        let runner = Runner {
            owner,
            cwd: path.clone(),
        };
        runner.chown(&path)?;
        if let Some(stamp) = owner_stamp() {
            fs::write(path.join(OWNER_FILE), stamp).map_err(|source| SandboxError::Io {
                what: format!("write {}", path.join(OWNER_FILE).display()),
                source,
            })?;
        }
        let pgpool = Pgpool {
            bin,
            runner,
            nodes: sb.len(),
            port: free_port()?,
            pcp_port: free_port()?,
            conf: path.join("pgpool.conf"),
            pcp_conf: path.join("pcp.conf"),
            hba: path.join("pool_hba.conf"),
            pcppass: path.join("pcppass"),
            pid_file: path.join("pgpool.pid"),
            log: path.join("pgpool.log"),
            running: Mutex::new(None),
            dir,
        };
        pgpool.write_fixed_files()?;
        if opts.failover {
            pgpool.write_scripts(sb)?;
        }
        Ok(pgpool)
    }

    /// Sets the ports pgpool and pcp listen on, for the next
    /// [`Pgpool::write_conf`] and start.
    pub fn set_ports(&mut self, port: u16, pcp_port: u16) {
        self.port = port;
        self.pcp_port = pcp_port;
    }

    /// How long pgpool's log is now (see [`Pgpool::bind_failed_since`]).
    pub fn log_len(&self) -> u64 {
        fs::metadata(&self.log).map_or(0, |m| m.len())
    }

    /// Whether pgpool's log says, after byte `since`, that it could not bind.
    pub fn bind_failed_since(&self, since: u64) -> bool {
        let log = fs::read(&self.log).unwrap_or_default();
        String::from_utf8_lossy(log.get(since as usize..).unwrap_or_default())
            .contains(BIND_FAILURE)
    }

    /// The port clients connect to pgpool on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The pcp port (127.0.0.1).
    pub fn pcp_port(&self) -> u16 {
        self.pcp_port
    }

    /// The address pgpool and pcp listen on.
    pub fn host(&self) -> &str {
        HOST
    }

    /// The pcppass file (`host:port:user:password`, mode 0600, owned by us)
    /// to give pcp commands as `PCPPASSFILE`.
    pub fn pcppass_file(&self) -> &Path {
        &self.pcppass
    }

    /// The pgpool.conf pgpool runs with (backend_hostnameN/backend_portN
    /// give the node ids).
    pub fn conf_file(&self) -> &Path {
        &self.conf
    }

    /// Where `pgpool` and the `pcp_*` programs live.
    pub fn bin_dir(&self) -> &Path {
        &self.bin
    }

    /// pgpool's directory (configuration, status file, sockets, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// How many backends pgpool has (the sandbox's nodes at start).
    pub fn len(&self) -> usize {
        self.nodes
    }

    /// Always false: a sandbox has at least its primary.
    pub fn is_empty(&self) -> bool {
        self.nodes == 0
    }

    // ---- plumbing ----------------------------------------------------

    fn check_id(&self, id: usize) -> Result<(), SandboxError> {
        if id < self.nodes {
            Ok(())
        } else {
            Err(SandboxError::NoSuchNode {
                index: id,
                len: self.nodes,
            })
        }
    }

    /// Runs a client tool as ourselves, in pgpool's directory, with a
    /// deadline; stderr naming an ERROR or FATAL fails it even on exit 0.
    fn run(&self, mut cmd: Command, secret: Option<&str>) -> Result<Output, SandboxError> {
        cmd.current_dir(self.dir());
        run_command(cmd, secret, COMMAND_TIMEOUT, reports_error)
    }
}

/// Runs `f` again (at most 4 times in all, with a
/// growing pause) while it fails with a command failure: what pgpool
/// answers while it fails a node over or a backend goes down. The test
/// kit's pgpool readers use it too.
pub fn retry_transient<T>(
    mut f: impl FnMut() -> Result<T, SandboxError>,
) -> Result<T, SandboxError> {
    let mut attempt = 1;
    loop {
        match f() {
            Err(SandboxError::Failed { ref stderr, .. }) if attempt < 4 => {
                tracing::debug!(attempt, stderr = %stderr, "pgpool: transient failure, retrying");
                std::thread::sleep(Duration::from_millis(100) * attempt);
                attempt += 1;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pgpool_can_be_shared_between_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<Pgpool>();
    }
}
