//! A real pgpool-II in front of a [`Sandbox`], for the integration tests and
//! the benchmark of the pgpool sidecar.
//!
//! It owns one pgpool process tree and a temporary directory of its own
//! (configuration, pcp.conf, pool_passwd, pcppass, pid file, sockets, status
//! file and log): writing the configuration, starting pgpool in the
//! foreground, reading pgpool's view of the backends through pcp and
//! `SHOW pool_nodes`, detaching/attaching, stopping and restarting it, and
//! its cleanup on drop — including the pgpools of test processes that died
//! without dropping theirs.
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
//! pgpool restart because pgpool remembers it in its status file (unless it
//! is started with `-D`); and `auto_failback` re-attaches any down standby
//! that the primary's `pg_stat_replication` shows streaming, including one
//! detached on purpose.

use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use super::procs::{self, owner_stamp, Proc, OWNER_FILE};
pub use super::run::Output;
use super::run::{command_line, run_capture, run_command, Runner};
use super::{
    base_dir, free_port, lock, pg_bin_dir, sql_quote, Sandbox, SandboxError, HOST, SANDBOX_DBNAME,
    SANDBOX_PASSWORD, SANDBOX_USER,
};

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
/// Where distributions put pgpool (Debian: /usr/sbin), searched before PATH.
const BIN_CANDIDATES: &[&str] = &["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"];
/// How long a start may take until pgpool answers on both ports.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a fast shutdown may take before everything is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// The deadline of one pcp or psql run (a frozen pgpool must not hang us).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(15);
/// How long detach/attach wait for pgpool to show the result.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(15);
/// How many times node_info and show_pool_nodes try (see retry_transient).
const TRANSIENT_ATTEMPTS: u32 = 4;
/// How many fresh port pairs a first start tries when a port got taken.
const PORT_ATTEMPTS: usize = 5;
/// How pgpool says it could not bind (its log, at start).
const BIND_FAILURE: &str = "Address already in use";
/// The failover_command script in pgpool's directory (`failover: true`).
const FAILOVER_SCRIPT: &str = "failover.sh";
/// The follow_primary_command script in pgpool's directory.
const FOLLOW_SCRIPT: &str = "follow_primary.sh";
/// One line per failover_command run.
const FAILOVER_LOG: &str = "failover.log";
/// One line per follow_primary_command run.
const FOLLOW_LOG: &str = "follow.log";
/// What both scripts do first: close every descriptor inherited from
/// pgpool beyond stdin/stdout/stderr (its listening sockets among them), so
/// nothing they start can keep pgpool's ports.
const CLOSE_INHERITED_FDS: &str = "for fd in $(ls /proc/$$/fd); do\n  \
     [ \"$fd\" -gt 2 ] && eval \"exec $fd>&-\"\n\
     done 2>/dev/null\n";

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
    /// When true pgpool gets real scripts, written into its directory and
    /// run as the servers' OS user: a `failover_command` that promotes the
    /// new main node (`pg_ctl promote -w`) when the failed node was the
    /// primary, and a `follow_primary_command` that re-points each standby
    /// at the new primary (`ALTER SYSTEM SET primary_conninfo` +
    /// `pg_reload_conf()`, the sandbox's own conninfo shape). The follow
    /// script does NOT attach the standby again: pgpool leaves it down
    /// (re-attaching is plusmoin's job). Neither script starts a server.
    /// Each run appends a line to `failover.log` / `follow.log`, see
    /// [`Pgpool::failover_runs`] and [`Pgpool::follow_runs`]. False (the
    /// default): both commands are empty, nothing is promoted.
    pub failover: bool,
    /// The database pgpool's health check and streaming-replication check
    /// log in to (as the sandbox's plusmoin role). None (the default): the
    /// sandbox database, the one plusmoin uses. `Some("postgres")` lets a
    /// test refuse pgpool's checks on one node with
    /// [`Sandbox::hba_prepend`] while plusmoin still gets in.
    pub health_check_database: Option<String>,
}

impl Default for PgpoolOptions {
    fn default() -> Self {
        PgpoolOptions {
            auto_failback: None,
            health_check_period: None,
            health_check_max_retries: 0,
            health_check_retry_delay: 1,
            failover: false,
            health_check_database: None,
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
    psql: PathBuf,
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

/// The directory holding `pgpool` and the `pcp_*` tools: the first of the
/// usual system directories, then PATH, that has them all.
pub fn pgpool_bin_dir() -> Result<PathBuf, SandboxError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let candidates = BIN_CANDIDATES
        .iter()
        .map(PathBuf::from)
        .chain(std::env::split_paths(&path));
    let mut searched = Vec::new();
    for dir in candidates {
        if TOOLS.iter().all(|t| dir.join(t).is_file()) {
            return Ok(dir);
        }
        searched.push(dir.display().to_string());
    }
    Err(SandboxError::Io {
        what: format!(
            "pgpool-II not found (no directory among {} has all of {}); install it (e.g. `apt-get install pgpool2`)",
            searched.join(":"),
            TOOLS.join(", ")
        ),
        source: std::io::Error::from(std::io::ErrorKind::NotFound),
    })
}

/// Whether pgpool-II and its pcp tools are installed (tests that need it
/// can say so clearly instead of failing on a missing binary).
pub fn pgpool_installed() -> bool {
    pgpool_bin_dir().is_ok()
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
            match pgpool.launch(false) {
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
        let bin = pgpool_bin_dir()?;
        let psql = pg_bin_dir()?.join("psql");
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
            psql,
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

    /// Writes pgpool.conf for the current ports, with `extra` lines last,
    /// and the pcppass file for the current pcp port.
    pub fn write_conf(
        &self,
        sb: &Sandbox,
        opts: &PgpoolOptions,
        extra: &[String],
    ) -> Result<(), SandboxError> {
        let backends: Vec<Backend> = (0..sb.len())
            .map(|i| Backend {
                port: sb.port(i),
                application_name: application_name(sb, i),
                data: sb.data_dir(i).to_path_buf(),
            })
            .collect();
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let conf = render_conf(&ConfInput {
            dir: self.dir(),
            port: self.port,
            pcp_port: self.pcp_port,
            backends: &backends,
            opts,
            extra_conf: &extra,
        });
        self.runner.write_file(&self.conf, &conf)?;
        self.write_pcppass()
    }

    /// Writes `name` into pgpool's directory, owned by the user pgpool
    /// runs as (a watchdog member's `pgpool_node_id`, say).
    pub fn write_file(&self, name: &str, contents: &str) -> Result<(), SandboxError> {
        self.runner.write_file(&self.dir().join(name), contents)
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

    /// One line per run of the failover_command script (`failover: true`),
    /// oldest first: `failover failed=<id> old_primary=<id> new_main=<id>
    /// action=<promoted|none|promote-failed|no-new-main>`. Empty when it never ran.
    pub fn failover_runs(&self) -> Vec<String> {
        self.script_log(FAILOVER_LOG)
    }

    /// One line per run of the follow_primary_command script, oldest
    /// first: `follow node=<id> new_primary=<id> old_primary=<id>
    /// result=<repointed|skipped|failed|unknown-pair>` (skipped: the node
    /// was not a running standby, e.g. the dead old primary).
    pub fn follow_runs(&self) -> Vec<String> {
        self.script_log(FOLLOW_LOG)
    }

    fn script_log(&self, name: &str) -> Vec<String> {
        fs::read_to_string(self.dir().join(name))
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_owned)
            .collect()
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

    /// pgpool's own status file (`pgpool_status`), one line per backend
    /// ("up", "down", …): what pgpool believes, read without pcp, which
    /// blocks while a backend is frozen. Empty when there is none yet.
    pub fn status_file_lines(&self) -> Vec<String> {
        fs::read_to_string(self.dir().join("pgpool_status"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// [`Pgpool::status_file_lines`] every 100 ms for `period`.
    pub fn watch_status_file(&self, period: Duration) -> Vec<Vec<String>> {
        let mut seen = Vec::new();
        let began = Instant::now();
        while began.elapsed() < period {
            seen.push(self.status_file_lines());
            thread::sleep(Duration::from_millis(100));
        }
        seen
    }

    /// Why the snapshots of [`Pgpool::watch_status_file`] do not show
    /// backend `id` up all along: a snapshot unreadable (not one line per
    /// backend) or showing it down.
    pub fn down_in(&self, seen: &[Vec<String>], id: usize) -> Option<String> {
        if let Some(bad) = seen.iter().find(|s| s.len() != self.nodes) {
            return Some(format!("unreadable status file {bad:?} in {seen:?}"));
        }
        seen.iter()
            .any(|s| s.get(id).map(String::as_str) == Some("down"))
            .then(|| format!("node {id} went down in the status file: {seen:?}"))
    }

    /// pgpool's own output (its log goes to stderr), kept across restarts.
    pub fn log_file(&self) -> &Path {
        &self.log
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

    /// pgpool's view of backend `id` through `pcp_node_info -v`.
    ///
    /// pgpool 4.3's pcp_node_info also queries the backends (for
    /// `pg_status`/`pg_role`), so it fails now and then while a backend is
    /// going down ("FATAL: unable to read data from DB node N"): such
    /// failures are retried a few times before they are returned.
    pub fn node_info(&self, id: usize) -> Result<NodeInfo, SandboxError> {
        retry_transient(|| self.node_info_once(id))
    }

    /// The status pgpool reports for backend `id` ("up", "waiting", "down",
    /// "quarantine", "unused").
    pub fn node_status(&self, id: usize) -> Result<String, SandboxError> {
        Ok(self.node_info(id)?.status)
    }

    /// `(node_id, status)` of every backend from `SHOW pool_nodes`, asked
    /// through pgpool's own port as the sandbox's plusmoin role. The act of
    /// connecting makes "waiting" nodes "up", so this shows "up" where pcp
    /// showed "waiting" a moment before. A new session fails while pgpool
    /// fails a node over or back, or while a backend goes down: such
    /// failures are retried a few times before they are returned.
    pub fn show_pool_nodes(&self) -> Result<Vec<(usize, String)>, SandboxError> {
        let out = retry_transient(|| self.psql_show_pool_nodes())?;
        parse_pool_nodes(&out.stdout).ok_or(SandboxError::Unexpected {
            command: out.command,
            output: out.stdout,
        })
    }

    fn psql_show_pool_nodes(&self) -> Result<Output, SandboxError> {
        let port = self.port.to_string();
        let mut cmd = Command::new(&self.psql);
        cmd.args([
            "-X",
            "-A",
            "-t",
            "-q",
            "-F",
            "|",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            HOST,
            "-p",
            &port,
            "-U",
            SANDBOX_USER,
            "-d",
            SANDBOX_DBNAME,
            "-c",
            "SHOW pool_nodes",
        ])
        .env("PGPASSWORD", SANDBOX_PASSWORD);
        self.run(cmd, None)
    }

    /// Attaches backend `id` (`pcp_attach_node`) and waits until pgpool
    /// shows it "up" or "waiting": the command only queues the attach.
    pub fn attach(&self, id: usize) -> Result<(), SandboxError> {
        self.check_id(id)?;
        let id_arg = id.to_string();
        self.pcp("pcp_attach_node", &["-n", &id_arg])?;
        self.wait_status(id, &["up", "waiting"], CONFIRM_TIMEOUT)?;
        tracing::info!(node = id, "pgpool: attached");
        Ok(())
    }

    /// Detaches backend `id` (`pcp_detach_node`) and waits until pgpool
    /// shows it "down". With auto_failback on, pgpool may attach it again
    /// soon after: that is pgpool's behaviour, not hidden here.
    pub fn detach(&self, id: usize) -> Result<(), SandboxError> {
        self.check_id(id)?;
        let id_arg = id.to_string();
        self.pcp("pcp_detach_node", &["-n", &id_arg])?;
        self.wait_status(id, &["down"], CONFIRM_TIMEOUT)?;
        tracing::info!(node = id, "pgpool: detached");
        Ok(())
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
        self.launch(false)
    }

    /// Starts pgpool again like [`Pgpool::start_again`], but with `-D`: the
    /// status file is discarded and every node starts as up.
    pub fn start_again_discarding_status(&self) -> Result<(), SandboxError> {
        self.launch(true)
    }

    /// Polls `pcp_node_info` until backend `id`'s status is one of `want`;
    /// returns that status.
    pub fn wait_status(
        &self,
        id: usize,
        want: &[&str],
        timeout: Duration,
    ) -> Result<String, SandboxError> {
        self.check_id(id)?;
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.node_status(id) {
                Ok(status) if want.contains(&status.as_str()) => return Ok(status),
                Ok(status) => status,
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                return Err(SandboxError::Timeout {
                    what: format!("pgpool to show node {id} as {}", want.join(" or ")),
                    timeout,
                    last,
                });
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    // ---- plumbing ----------------------------------------------------

    fn node_info_once(&self, id: usize) -> Result<NodeInfo, SandboxError> {
        self.check_id(id)?;
        let id_arg = id.to_string();
        let out = self.pcp("pcp_node_info", &["-v", "-n", &id_arg])?;
        parse_node_info(&out.stdout).ok_or(SandboxError::Unexpected {
            command: out.command,
            output: out.stdout,
        })
    }

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

    /// pcp.conf (user:md5 of the password, as pg_md5 computes it), the
    /// pool_passwd pgpool authenticates clients and backends with, and a
    /// pool_hba.conf of our own so nothing is read from /etc.
    fn write_fixed_files(&self) -> Result<(), SandboxError> {
        let mut cmd = Command::new(self.bin.join("pg_md5"));
        cmd.arg(PCP_PASSWORD);
        let out = self.run(cmd, Some(PCP_PASSWORD))?;
        let hash = out.stdout.trim();
        if hash.len() != 32 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(SandboxError::Unexpected {
                command: out.command,
                output: out.stdout,
            });
        }
        self.runner
            .write_file(&self.pcp_conf, &format!("{PCP_USER}:{hash}\n"))?;
        // A "TEXT" entry gives pgpool the clear password: what it needs to
        // answer the backends' scram-sha-256 for a client and itself.
        let pool_passwd = self.dir().join("pool_passwd");
        self.runner.write_file(
            &pool_passwd,
            &format!("{SANDBOX_USER}:TEXT{SANDBOX_PASSWORD}\n"),
        )?;
        set_mode(&pool_passwd, 0o600)?;
        self.runner.write_file(
            &self.hba,
            &format!("# unused (enable_pool_hba = off)\nhost all all {HOST}/32 scram-sha-256\n"),
        )
    }

    /// The failover and follow_primary scripts (see
    /// [`PgpoolOptions::failover`]): the sandbox's binaries, socket
    /// directory and conninfo shape are baked in; pgpool passes node ids,
    /// ports and data directories through its %-escapes.
    fn write_scripts(&self, sb: &Sandbox) -> Result<(), SandboxError> {
        let dir = self.dir();
        let pg_ctl = sb.bin.join("pg_ctl");
        let failover = format!(
            "#!/bin/bash\n\
             # written by plusmoin's sandbox: pgpool's failover_command\n\
             # args: %d (failed node) %m (new main) %P (old primary) %R (new main's data)\n\
             {CLOSE_INHERITED_FDS}\
             FAILED=\"$1\"; NEW_MAIN=\"$2\"; OLD_PRIMARY=\"$3\"; NEW_MAIN_DATA=\"$4\"\n\
             if [ \"$NEW_MAIN\" -lt 0 ]; then\n  action=no-new-main\n\
             elif [ \"$OLD_PRIMARY\" != -1 ] && [ \"$FAILED\" != \"$OLD_PRIMARY\" ]; then\n  action=none\n\
             elif {pg_ctl} promote -w -t 60 -D \"$NEW_MAIN_DATA\"; then\n  action=promoted\n\
             else\n  action=promote-failed\nfi\n\
             echo \"failover failed=$FAILED old_primary=$OLD_PRIMARY new_main=$NEW_MAIN action=$action\" >> {log}\n\
             exit 0\n",
            pg_ctl = shell_quote(&pg_ctl.to_string_lossy()),
            log = shell_quote(&dir.join(FAILOVER_LOG).to_string_lossy()),
        );
        let mut pairs = String::new();
        for node in 0..sb.len() {
            for primary in (0..sb.len()).filter(|p| *p != node) {
                let sql = format!(
                    "ALTER SYSTEM SET primary_conninfo = {}",
                    sql_quote(&sb.primary_conninfo(node, primary))
                );
                pairs.push_str(&format!(
                    "  {node}:{primary}) SQL={} ;;\n",
                    shell_quote(&sql)
                ));
            }
        }
        let follow = format!(
            "#!/bin/bash\n\
             # written by plusmoin's sandbox: pgpool's follow_primary_command\n\
             # args: %d (node to re-point) %p (its port) %m (new primary) %P (old primary)\n\
             # It re-points the standby; it does not attach it in pgpool again.\n\
             {CLOSE_INHERITED_FDS}\
             NODE=\"$1\"; NODE_PORT=\"$2\"; NEW_PRIMARY=\"$3\"; OLD_PRIMARY=\"$4\"\n\
             export PGCONNECT_TIMEOUT=5\n\
             psql_node() {{ {psql} -X -A -t -q -h {sock} -p \"$NODE_PORT\" -U postgres -d postgres -c \"$1\"; }}\n\
             SQL=\n\
             case \"$NODE:$NEW_PRIMARY\" in\n{pairs}esac\n\
             if [ -z \"$SQL\" ]; then\n  result=unknown-pair\n\
             elif [ \"$(psql_node 'SELECT pg_is_in_recovery()' 2>/dev/null)\" != t ]; then\n  result=skipped\n\
             elif psql_node \"$SQL\" && psql_node 'SELECT pg_reload_conf()' >/dev/null; then\n  result=repointed\n\
             else\n  result=failed\nfi\n\
             echo \"follow node=$NODE new_primary=$NEW_PRIMARY old_primary=$OLD_PRIMARY result=$result\" >> {log}\n\
             exit 0\n",
            psql = shell_quote(&sb.bin.join("psql").to_string_lossy()),
            sock = shell_quote(&sb.dir().to_string_lossy()),
            log = shell_quote(&dir.join(FOLLOW_LOG).to_string_lossy()),
        );
        for (name, text) in [(FAILOVER_SCRIPT, failover), (FOLLOW_SCRIPT, follow)] {
            let path = dir.join(name);
            self.runner.write_file(&path, &text)?;
            set_mode(&path, 0o755)?;
        }
        Ok(())
    }

    /// The pcppass file, owned by us (we run the pcp commands) and created
    /// 0600 from the start, since pcp ignores it otherwise.
    fn write_pcppass(&self) -> Result<(), SandboxError> {
        let io = |source| SandboxError::Io {
            what: format!("write {}", self.pcppass.display()),
            source,
        };
        let _ = fs::remove_file(&self.pcppass);
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&self.pcppass)
            .map_err(io)?;
        std::io::Write::write_all(
            &mut file,
            format!("{HOST}:{}:{PCP_USER}:{PCP_PASSWORD}\n", self.pcp_port).as_bytes(),
        )
        .map_err(io)?;
        set_mode(&self.pcppass, 0o600)
    }

    /// Spawns pgpool in the foreground and waits until it answers; on
    /// failure whatever started is stopped again.
    fn launch(&self, discard_status: bool) -> Result<(), SandboxError> {
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
        if discard_status {
            cmd.arg("-D");
        }
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
                    discard_status,
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

    /// Runs `pcp_<tool> -h -p -U -w args` with our pcppass file. pcp exits
    /// 0 even when pgpool refused, so an ERROR or FATAL on stderr is a
    /// failure too.
    pub fn pcp(&self, tool: &str, args: &[&str]) -> Result<Output, SandboxError> {
        let port = self.pcp_port.to_string();
        let mut cmd = Command::new(self.bin.join(tool));
        cmd.args(["-h", HOST, "-p", &port, "-U", PCP_USER, "-w"])
            .args(args)
            .env("PCPPASSFILE", &self.pcppass);
        self.run(cmd, None)
    }

    /// Runs `pcp_<tool> -h 127.0.0.1 -p <pcp port> -U pgpool -w args`
    /// with our pcppass file and returns what it printed and its exit code
    /// as they are, refusals included (for recording outputs, and for tests
    /// of how pcp behaves). `tool` is the program's name, e.g.
    /// `pcp_watchdog_info`.
    pub fn pcp_raw(&self, tool: &str, args: &[&str]) -> Result<PcpOutput, SandboxError> {
        let port = self.pcp_port.to_string();
        let mut cmd = Command::new(self.bin.join(tool));
        cmd.args(["-h", HOST, "-p", &port, "-U", PCP_USER, "-w"])
            .args(args)
            .env("PCPPASSFILE", &self.pcppass)
            .current_dir(self.dir());
        let c = run_capture(cmd, None, COMMAND_TIMEOUT)?;
        Ok(PcpOutput {
            command: c.command,
            stdout: c.stdout,
            stderr: c.stderr,
            exit_code: c.status.and_then(|s| s.code()),
        })
    }

    /// Runs a client tool as ourselves, in pgpool's directory, with a
    /// deadline; stderr naming an ERROR or FATAL fails it even on exit 0.
    fn run(&self, mut cmd: Command, secret: Option<&str>) -> Result<Output, SandboxError> {
        cmd.current_dir(self.dir());
        run_command(cmd, secret, COMMAND_TIMEOUT, reports_error)
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

/// One backend line of pgpool.conf.
struct Backend {
    port: u16,
    application_name: String,
    data: PathBuf,
}

/// Everything pgpool.conf depends on.
struct ConfInput<'a> {
    dir: &'a Path,
    port: u16,
    pcp_port: u16,
    backends: &'a [Backend],
    opts: &'a PgpoolOptions,
    extra_conf: &'a [&'a str],
}

/// The whole pgpool.conf (pgpool-II 4.2+ parameter names).
fn render_conf(c: &ConfInput) -> String {
    let dir = c.dir.to_string_lossy();
    let q = |s: &str| sql_quote(s);
    let path = |name: &str| q(&c.dir.join(name).to_string_lossy());
    // Both checks log in to the backends as the sandbox's own role.
    let database = c
        .opts
        .health_check_database
        .as_deref()
        .unwrap_or(SANDBOX_DBNAME);
    let login = |check: &str| {
        format!(
            "{check}_user = {}\n{check}_password = {}\n{check}_database = {}\n",
            q(SANDBOX_USER),
            q(SANDBOX_PASSWORD),
            q(database),
        )
    };
    let (failover_command, follow_command) = if c.opts.failover {
        (
            q(&format!(
                "{} %d %m %P %R",
                c.dir.join(FAILOVER_SCRIPT).display()
            )),
            q(&format!(
                "{} %d %p %m %P",
                c.dir.join(FOLLOW_SCRIPT).display()
            )),
        )
    } else {
        (q(""), q(""))
    };
    let mut conf = format!(
        "# written by plusmoin's sandbox (pgpool fixture)\n\
         backend_clustering_mode = 'streaming_replication'\n\
         listen_addresses = {host}\n\
         port = {port}\n\
         socket_dir = {dir}\n\
         pcp_listen_addresses = {host}\n\
         pcp_port = {pcp_port}\n\
         pcp_socket_dir = {dir}\n\
         wd_ipc_socket_dir = {dir}\n\
         pid_file_name = {pid_file}\n\
         logdir = {dir}\n\
         use_watchdog = off\n\
         num_init_children = 4\n\
         max_pool = 1\n\
         reserved_connections = 0\n\
         enable_pool_hba = off\n\
         pool_passwd = {pool_passwd}\n\
         allow_clear_text_frontend_auth = off\n\
         load_balance_mode = on\n\
         memory_cache_enabled = off\n\
         memqcache_total_size = 1MB\n\
         memqcache_max_num_cache = 100\n\
         memqcache_oiddir = {oiddir}\n\
         sr_check_period = 1\n\
         {sr_check_login}\
         delay_threshold = 0\n\
         health_check_period = {hc_period}\n\
         health_check_timeout = 2\n\
         {health_check_login}\
         health_check_max_retries = {hc_retries}\n\
         health_check_retry_delay = {hc_retry_delay}\n\
         connect_timeout = 5000\n\
         failover_command = {failover_command}\n\
         failback_command = ''\n\
         follow_primary_command = {follow_command}\n\
         failover_on_backend_error = off\n\
         failover_on_backend_shutdown = off\n\
         detach_false_primary = off\n\
         search_primary_node_timeout = 10\n\
         auto_failback = {auto_failback}\n\
         auto_failback_interval = {af_interval}\n\
         log_destination = 'stderr'\n\
         logging_collector = off\n\
         log_min_messages = warning\n",
        host = q(HOST),
        port = c.port,
        pcp_port = c.pcp_port,
        dir = q(&dir),
        pid_file = path("pgpool.pid"),
        pool_passwd = path("pool_passwd"),
        oiddir = path("oiddir"),
        sr_check_login = login("sr_check"),
        health_check_login = login("health_check"),
        hc_period = c.opts.health_check_period.unwrap_or(1),
        hc_retries = c.opts.health_check_max_retries,
        hc_retry_delay = c.opts.health_check_retry_delay,
        auto_failback = if c.opts.auto_failback.is_some() {
            "on"
        } else {
            "off"
        },
        af_interval = c.opts.auto_failback.map_or(60, |d| d.as_secs()),
    );
    for (i, b) in c.backends.iter().enumerate() {
        conf.push_str(&format!(
            "backend_hostname{i} = {host}\n\
             backend_port{i} = {port}\n\
             backend_weight{i} = 1\n\
             backend_flag{i} = 'ALLOW_TO_FAILOVER'\n\
             backend_application_name{i} = {app}\n\
             backend_data_directory{i} = {data}\n",
            host = q(HOST),
            port = b.port,
            app = q(&b.application_name),
            data = q(&b.data.to_string_lossy()),
        ));
    }
    for line in c.extra_conf {
        conf.push_str(line);
        conf.push('\n');
    }
    conf
}

/// The application_name standby `i` streams with (from the sandbox's own
/// primary_conninfo, so the two cannot drift apart).
fn application_name(sb: &Sandbox, i: usize) -> String {
    sb.primary_conninfo(i, 0)
        .split_whitespace()
        .find_map(|w| w.strip_prefix("application_name="))
        .map_or_else(|| format!("node{i}"), str::to_owned)
}

/// pcp_node_info's answer, verbose (`Status Name : up`) or terse
/// (`host port status weight status_name pg_status role pg_role delay
/// repl_state sync_state date time`); None when it is neither.
fn parse_node_info(out: &str) -> Option<NodeInfo> {
    let verbose: Vec<(&str, &str)> = out
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim(), v.trim()))
        .collect();
    let field = |name: &str| {
        verbose
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.to_string())
    };
    if let Some(code) = field("Status") {
        let status = field("Status Name")
            .filter(|s| !s.is_empty())
            .or_else(|| status_from_code(&code))?;
        return Some(NodeInfo {
            status,
            pg_status: field("Backend Status Name").unwrap_or_default(),
            role: field("Role").unwrap_or_default(),
            replication_state: field("Replication State").unwrap_or_default(),
        });
    }
    let line = out.lines().find(|l| !l.trim().is_empty())?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let code = words.get(2)?;
    code.parse::<u32>().ok()?;
    let status = match words.get(4) {
        Some(name) if name.chars().all(|c| c.is_ascii_alphabetic()) => name.to_string(),
        _ => status_from_code(code)?,
    };
    let word = |i: usize| words.get(i).map_or_else(String::new, |w| w.to_string());
    Some(NodeInfo {
        status,
        pg_status: word(5),
        role: word(6),
        replication_state: word(9),
    })
}

/// pgpool's BACKEND_STATUS codes, for an answer without a status name.
fn status_from_code(code: &str) -> Option<String> {
    let name = match code.trim() {
        "0" => "unused",
        "1" => "waiting",
        "2" => "up",
        "3" => "down",
        _ => return None,
    };
    Some(name.to_owned())
}

/// `SHOW pool_nodes` in psql's unaligned tuples-only form: node_id first,
/// status fourth. None when a line does not look like that.
fn parse_pool_nodes(out: &str) -> Option<Vec<(usize, String)>> {
    let mut nodes = Vec::new();
    for line in out.lines().filter(|l| !l.trim().is_empty()) {
        let fields: Vec<&str> = line.split('|').collect();
        let id = fields.first()?.trim().parse().ok()?;
        let status = fields.get(3)?.trim();
        if status.is_empty() {
            return None;
        }
        nodes.push((id, status.to_owned()));
    }
    (!nodes.is_empty()).then_some(nodes)
}

/// Runs `f` again (at most [`TRANSIENT_ATTEMPTS`] times in all, with a
/// growing pause) while it fails with a command failure: what pgpool
/// answers while it fails a node over or a backend goes down.
fn retry_transient<T>(mut f: impl FnMut() -> Result<T, SandboxError>) -> Result<T, SandboxError> {
    let mut attempt = 1;
    loop {
        match f() {
            Err(SandboxError::Failed { ref stderr, .. }) if attempt < TRANSIENT_ATTEMPTS => {
                tracing::debug!(attempt, stderr = %stderr, "pgpool: transient failure, retrying");
                thread::sleep(Duration::from_millis(100) * attempt);
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// pcp and psql print their refusals as `ERROR:`/`FATAL:` lines.
fn reports_error(stderr: &str) -> bool {
    stderr.lines().any(|l| {
        let l = l.trim_start();
        l.starts_with("ERROR") || l.starts_with("FATAL") || l.contains("error:")
    })
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
fn reap_orphans(base: &Path) {
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

/// A word for bash, single-quoted.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn set_mode(path: &Path, mode: u32) -> Result<(), SandboxError> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(|source| SandboxError::Io {
        what: format!("chmod {mode:o} {}", path.display()),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pgpool_can_be_shared_between_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<Pgpool>();
    }

    #[test]
    fn parses_terse_node_info() {
        let info = parse_node_info(
            "127.0.0.1 25431 1 0.500000 waiting up standby standby 0 streaming async 2026-11-25 18:40:07\n",
        );
        assert_eq!(
            info,
            Some(NodeInfo {
                status: "waiting".into(),
                pg_status: "up".into(),
                role: "standby".into(),
                replication_state: "streaming".into(),
            })
        );
        let down = parse_node_info(
            "127.0.0.1 25431 3 0.500000 down down standby unknown 0 none none 2026-11-25 18:40:31",
        );
        assert_eq!(down.map(|i| i.status), Some("down".to_owned()));
    }

    #[test]
    fn parses_recorded_node_info() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/pcp/");
        let read = |name: &str| {
            std::fs::read_to_string(format!("{dir}{name}.stdout.txt")).expect("recorded output")
        };
        for form in ["verbose", "terse"] {
            let primary = parse_node_info(&read(&format!("node_info_primary_up_{form}")));
            assert_eq!(
                primary.map(|i| i.role),
                Some("primary".to_owned()),
                "{form}"
            );
            let standby =
                parse_node_info(&read(&format!("node_info_standby_up_{form}"))).expect(form);
            assert_eq!(standby.status, "waiting");
            assert_eq!(standby.replication_state, "streaming");
            let down = parse_node_info(&read(&format!("node_info_standby_down_{form}")));
            assert_eq!(down.map(|i| i.status), Some("down".to_owned()), "{form}");
        }
    }

    #[test]
    fn terse_node_info_without_a_name_uses_the_code() {
        let info = parse_node_info("db1 5432 3 0.5");
        assert_eq!(info.map(|i| i.status), Some("down".to_owned()));
        let info = parse_node_info("db1 5432 2 0.5 0.3");
        assert_eq!(info.map(|i| i.status), Some("up".to_owned()));
    }

    #[test]
    fn parses_verbose_node_info() {
        let out = "Hostname               : 127.0.0.1\n\
                   Port                   : 25431\n\
                   Status                 : 1\n\
                   Weight                 : 0.500000\n\
                   Status Name            : waiting\n\
                   Backend Status Name    : up\n\
                   Role                   : standby\n\
                   Backend Role           : standby\n\
                   Replication Delay      : 0\n\
                   Replication State      : streaming\n\
                   Replication Sync State : async\n\
                   Last Status Change     : 2026-11-25 18:40:07\n";
        let info = parse_node_info(out);
        assert_eq!(
            info,
            Some(NodeInfo {
                status: "waiting".into(),
                pg_status: "up".into(),
                role: "standby".into(),
                replication_state: "streaming".into(),
            })
        );
        let coded = parse_node_info("Hostname : h\nStatus : 3\n");
        assert_eq!(coded.map(|i| i.status), Some("down".to_owned()));
    }

    #[test]
    fn rejects_what_is_not_node_info() {
        assert_eq!(parse_node_info(""), None);
        assert_eq!(parse_node_info("pcp_node_info -- Command Successful"), None);
        assert_eq!(parse_node_info("Status : 9\n"), None);
        assert_eq!(parse_node_info("127.0.0.1 5432 x 0.5 up"), None);
    }

    #[test]
    fn parses_show_pool_nodes() {
        let out = "0|127.0.0.1|25430|up|up|0.500000|primary|primary|0|true|0|||2026-11-25 18:40:15\n\
                   1|127.0.0.1|25431|down|up|0.500000|standby|standby|0|false|0|streaming|async|2026-11-25 18:40:15\n";
        assert_eq!(
            parse_pool_nodes(out),
            Some(vec![(0, "up".to_owned()), (1, "down".to_owned())])
        );
        assert_eq!(parse_pool_nodes(""), None);
        assert_eq!(parse_pool_nodes("x|h|1|up"), None);
        assert_eq!(parse_pool_nodes("0|h|1"), None);
    }

    #[test]
    fn pcp_refusals_are_errors() {
        assert!(reports_error(
            "ERROR:  informing node info failed\nDETAIL:  invalid node ID : 5"
        ));
        assert!(reports_error(
            "FATAL:  authentication failed for user \"pgpool\""
        ));
        assert!(!reports_error(""));
        assert!(!reports_error("pcp_attach_node -- Command Successful"));
    }

    #[test]
    fn conf_has_every_backend_and_the_options() {
        let backends = [
            Backend {
                port: 5432,
                application_name: "node0".into(),
                data: PathBuf::from("/d/node0"),
            },
            Backend {
                port: 5433,
                application_name: "node1".into(),
                data: PathBuf::from("/d/node1"),
            },
        ];
        let opts = PgpoolOptions {
            auto_failback: Some(Duration::from_secs(3)),
            health_check_period: Some(2),
            health_check_max_retries: 5,
            failover: true,
            health_check_database: Some("postgres".into()),
            ..PgpoolOptions::default()
        };
        let conf = render_conf(&ConfInput {
            dir: Path::new("/dev/shm/x'y"),
            port: 9999,
            pcp_port: 9898,
            backends: &backends,
            opts: &opts,
            extra_conf: &["search_primary_node_timeout = 30"],
        });
        for want in [
            "backend_clustering_mode = 'streaming_replication'",
            "port = 9999\n",
            "pcp_port = 9898\n",
            "socket_dir = '/dev/shm/x''y'\n",
            "pid_file_name = '/dev/shm/x''y/pgpool.pid'\n",
            "backend_port1 = 5433\n",
            "backend_application_name1 = 'node1'\n",
            "health_check_period = 2\n",
            "health_check_max_retries = 5\n",
            "health_check_retry_delay = 1\n",
            "health_check_database = 'postgres'\n",
            "sr_check_database = 'postgres'\n",
            "backend_data_directory1 = '/d/node1'\n",
            "failover_command = '/dev/shm/x''y/failover.sh %d %m %P %R'\n",
            "follow_primary_command = '/dev/shm/x''y/follow_primary.sh %d %p %m %P'\n",
            "auto_failback = on\n",
            "auto_failback_interval = 3\n",
            "failover_on_backend_error = off\n",
        ] {
            assert!(conf.contains(want), "missing {want:?} in:\n{conf}");
        }
        assert!(conf.ends_with("search_primary_node_timeout = 30\n"));
        assert!(!conf.contains("backend_port2"));
        let off = render_conf(&ConfInput {
            dir: Path::new("/d"),
            port: 1,
            pcp_port: 2,
            backends: &backends,
            opts: &PgpoolOptions::default(),
            extra_conf: &[],
        });
        assert!(off.contains("auto_failback = off\n"));
        assert!(off.contains("health_check_period = 1\n"));
        assert!(off.contains("health_check_max_retries = 0\n"));
        assert!(off.contains("failover_command = ''\n"));
        assert!(off.contains("follow_primary_command = ''\n"));
        assert!(off.contains("health_check_database = 'plusmoin'\n"));
    }

    #[test]
    fn status_codes_map_to_names() {
        assert_eq!(status_from_code("1").as_deref(), Some("waiting"));
        assert_eq!(status_from_code("2").as_deref(), Some("up"));
        assert_eq!(status_from_code("3").as_deref(), Some("down"));
        assert_eq!(status_from_code("7"), None);
    }
}
