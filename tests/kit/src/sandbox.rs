//! What only the tests do to the sandbox of `plusmoin demo`
//! ([`plusmoin::demo::sandbox`]): freeze and thaw a server, put a line in
//! its pg_hba.conf ([`SandboxExt`]); attach, detach and wait through pcp,
//! `SHOW pool_nodes`, the failover scripts' logs and pgpool's status file
//! ([`PgpoolExt`]).
//!
//! They are extension traits so that call sites read as before
//! (`sb.freeze(1)`, `pg.failover_runs()`) with
//! `use plusmoin_kit::sandbox::{PgpoolExt, SandboxExt};`, and they are
//! built only on the sandbox's public API ([`Sandbox::pids`],
//! [`Sandbox::data_dir`], [`Sandbox::sql_in`], [`Pgpool::pcp`],
//! [`Pgpool::dir`], ...): nothing of them ships in plusmoin.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use plusmoin::demo::sandbox::pgpool::Pgpool;
use plusmoin::demo::sandbox::{
    pg_bin_dir, Sandbox, SandboxError, SANDBOX_DBNAME, SANDBOX_PASSWORD, SANDBOX_USER,
};

/// How long freeze waits for every process of a node to be stopped.
const FREEZE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long attach/detach wait for pgpool to show the result.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(15);
/// The deadline of one `SHOW pool_nodes` (a frozen pgpool must not hang us).
const PSQL_TIMEOUT: Duration = Duration::from_secs(15);
/// One line per failover_command run, in pgpool's directory
/// ([`plusmoin::demo::sandbox::pgpool::PgpoolOptions::failover`]).
const FAILOVER_LOG: &str = "failover.log";
/// One line per follow_primary_command run, in pgpool's directory.
const FOLLOW_LOG: &str = "follow.log";
/// pgpool's own status file, in its directory (its `logdir`).
const STATUS_FILE: &str = "pgpool_status";
/// pgpool's output, in its directory.
const PGPOOL_LOG: &str = "pgpool.log";

/// The tests' operations on a [`Sandbox`].
pub trait SandboxExt {
    /// Freezes node `i` with SIGSTOP on its postmaster and every child: the
    /// kernel still accepts TCP connections, but nothing answers — a hung
    /// server, not a dead one.
    fn freeze(&self, i: usize) -> Result<(), SandboxError>;

    /// Resumes a node frozen by [`SandboxExt::freeze`] (SIGCONT to all).
    fn thaw(&self, i: usize) -> Result<(), SandboxError>;

    /// Puts `line` first in node `i`'s pg_hba.conf (first match wins, so it
    /// overrides the sandbox's own lines) and, when the node runs, reloads
    /// the configuration. The file is checked first (`pg_hba_file_rules`)
    /// so a bad line fails here, not silently at reload. A reload is
    /// asynchronous: this returns once the postmaster has done it
    /// (`pg_conf_load_time()` moved on), so new connections see the rule. Example: `host postgres plusmoin
    /// 127.0.0.1/32 reject` refuses pgpool's health check (when it logs in
    /// to `postgres`) but not plusmoin (database `plusmoin`).
    fn hba_prepend(&self, i: usize, line: &str) -> Result<(), SandboxError>;

    /// Makes running standby `i` stream as `application_name` (its
    /// `primary_conninfo` rewritten, reloaded: the WAL receiver reconnects)
    /// and waits until its upstream `primary` shows it streaming so.
    fn name_standby(
        &self,
        i: usize,
        primary: usize,
        application_name: &str,
    ) -> Result<(), SandboxError>;

    /// Sets `synchronous_standby_names` on node `primary` (`ALTER SYSTEM`,
    /// reload) and waits until a new session sees it.
    fn set_standby_names(&self, primary: usize, value: &str) -> Result<(), SandboxError>;
}

/// `'text'` as an SQL literal.
fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// Polls `sql` on node `i` until it gives `want`.
fn wait_for(sb: &Sandbox, i: usize, sql: &str, want: &str, what: &str) -> Result<(), SandboxError> {
    let deadline = Instant::now() + CONFIRM_TIMEOUT;
    loop {
        let last = sb.sql(i, sql)?;
        if last.trim() == want {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(SandboxError::Timeout {
                what: what.to_string(),
                timeout: CONFIRM_TIMEOUT,
                last,
            });
        }
        thread::sleep(Duration::from_millis(50));
    }
}

impl SandboxExt for Sandbox {
    fn freeze(&self, i: usize) -> Result<(), SandboxError> {
        let Some(&postmaster) = self.pids(i)?.first() else {
            return Err(SandboxError::NotRunning(i));
        };
        // The postmaster first, so it forks no new child behind our back;
        // the second walk catches a child forked while we signalled.
        send(postmaster, Signal::SIGSTOP)?;
        for _ in 0..2 {
            for child in self.pids(i)?.into_iter().skip(1) {
                send(child, Signal::SIGSTOP)?;
            }
        }
        // A signal takes effect when its process next enters the kernel: on
        // a loaded machine a busy child may still run for a moment. Return
        // only once every process of the node is stopped (or gone), so a
        // caller's "frozen" holds from here on.
        for pid in self.pids(i)? {
            stop_process(pid)?;
        }
        tracing::info!(node = i, pid = postmaster, "sandbox: frozen");
        Ok(())
    }

    fn thaw(&self, i: usize) -> Result<(), SandboxError> {
        let pids = self.pids(i)?;
        let Some((&postmaster, children)) = pids.split_first() else {
            return Err(SandboxError::NotRunning(i));
        };
        for child in children {
            send(*child, Signal::SIGCONT)?;
        }
        send(postmaster, Signal::SIGCONT)?;
        tracing::info!(node = i, pid = postmaster, "sandbox: thawed");
        Ok(())
    }

    fn hba_prepend(&self, i: usize, line: &str) -> Result<(), SandboxError> {
        // Also checks `i` (data_dir panics on a bad index).
        let running = !self.pids(i)?.is_empty();
        let path = self.data_dir(i).join("pg_hba.conf");
        let old = fs::read_to_string(&path).map_err(|source| SandboxError::Io {
            what: format!("read {}", path.display()),
            source,
        })?;
        // Rewriting the existing file keeps its owner (the servers' user).
        rewrite(&path, &format!("{}\n{old}", line.trim_end()))?;
        if !running {
            tracing::info!(
                node = i,
                line,
                "sandbox: pg_hba line added (node not running)"
            );
            return Ok(());
        }
        let errors = self.sql_in(
            i,
            "postgres",
            "SELECT line_number || ': ' || error FROM pg_hba_file_rules WHERE error IS NOT NULL",
        )?;
        if !errors.trim().is_empty() {
            rewrite(&path, &old)?;
            return Err(SandboxError::Unexpected {
                command: format!("node {i}: pg_hba.conf with {line:?}"),
                output: errors,
            });
        }
        // The postmaster reloads pg_hba.conf when it gets to the signal:
        // wait until a new session sees the reload (pg_conf_load_time,
        // which new backends inherit from the postmaster, moved on). The
        // postmaster forks no backend halfway through a reload, so from
        // then on every new connection sees the rule. (Our psql comes in
        // through the socket directory, which a `host` line never matches.)
        let before = self.sql_in(i, "postgres", "SELECT pg_conf_load_time()")?;
        self.sql_in(i, "postgres", "SELECT pg_reload_conf()")?;
        let moved_on = format!(
            "SELECT pg_conf_load_time() > '{}'::timestamptz",
            before.trim()
        );
        let deadline = Instant::now() + CONFIRM_TIMEOUT;
        loop {
            if self.sql_in(i, "postgres", &moved_on)?.trim() == "t" {
                break;
            }
            if Instant::now() >= deadline {
                return Err(SandboxError::Timeout {
                    what: format!("node {i} to reload pg_hba.conf"),
                    timeout: CONFIRM_TIMEOUT,
                    last: before,
                });
            }
            thread::sleep(Duration::from_millis(50));
        }
        tracing::info!(node = i, line, "sandbox: pg_hba line added and reloaded");
        Ok(())
    }

    fn name_standby(
        &self,
        i: usize,
        primary: usize,
        application_name: &str,
    ) -> Result<(), SandboxError> {
        let old = self.sql(i, "SHOW primary_conninfo")?;
        let mut words: Vec<String> = old
            .split_whitespace()
            .filter(|w| !w.starts_with("application_name="))
            .map(String::from)
            .collect();
        let quoted = application_name.replace('\\', "\\\\").replace('\'', "\\'");
        words.push(format!("application_name='{quoted}'"));
        self.sql(
            i,
            &format!(
                "ALTER SYSTEM SET primary_conninfo = {}",
                literal(&words.join(" "))
            ),
        )?;
        self.sql(i, "SELECT pg_reload_conf()")?;
        wait_for(
            self,
            primary,
            &format!(
                "SELECT count(*) FROM pg_stat_replication WHERE application_name = {} AND state = 'streaming'",
                literal(application_name)
            ),
            "1",
            &format!("node {i} to stream as {application_name:?}"),
        )?;
        tracing::info!(node = i, application_name, "sandbox: standby renamed");
        Ok(())
    }

    fn set_standby_names(&self, primary: usize, value: &str) -> Result<(), SandboxError> {
        self.sql(
            primary,
            &format!(
                "ALTER SYSTEM SET synchronous_standby_names = {}",
                literal(value)
            ),
        )?;
        self.sql(primary, "SELECT pg_reload_conf()")?;
        wait_for(
            self,
            primary,
            "SHOW synchronous_standby_names",
            value,
            &format!("node {primary} to take synchronous_standby_names {value:?}"),
        )?;
        tracing::info!(
            node = primary,
            value,
            "sandbox: synchronous_standby_names set"
        );
        Ok(())
    }
}

/// Sends `signal` to `pid`; a process that is already gone is not an error.
fn send(pid: i32, signal: Signal) -> Result<(), SandboxError> {
    match kill(Pid::from_raw(pid), signal) {
        Ok(()) | Err(Errno::ESRCH) => Ok(()),
        Err(source) => Err(SandboxError::Signal {
            signal,
            pid,
            source,
        }),
    }
}

/// Stops the process `pid` (SIGSTOP) and returns once every one of its
/// threads is stopped. `kill` returns before that: until the thread the
/// signal went to takes it, the others run on, and on a loaded machine a
/// worker thread may meanwhile handle what the caller meant it to miss.
pub fn stop_process(pid: i32) -> Result<(), SandboxError> {
    let deadline = Instant::now() + FREEZE_TIMEOUT;
    loop {
        send(pid, Signal::SIGSTOP)?;
        let running = running_threads(pid);
        if running == 0 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(SandboxError::Io {
                what: format!(
                    "stop pid {pid}: {running} threads still running after {FREEZE_TIMEOUT:?}"
                ),
                source: io::Error::from(io::ErrorKind::TimedOut),
            });
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// How many threads of process `pid` run: neither stopped (`T`) nor
/// zombies (0 when it is gone).
fn running_threads(pid: i32) -> usize {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter(|t| stat_runs(&t.path().join("stat")))
        .count()
}

/// Whether the process or thread whose `stat` file is at `path` is there
/// and neither stopped (`T`) nor a zombie.
fn stat_runs(path: &Path) -> bool {
    let Ok(stat) = fs::read_to_string(path) else {
        return false;
    };
    // The command name, in parentheses, may hold spaces: the state is the
    // first field after the last ')'.
    let state = stat
        .rfind(')')
        .and_then(|at| stat[at + 1..].split_whitespace().next())
        .and_then(|s| s.chars().next());
    !matches!(state, None | Some('T' | 'Z' | 'X'))
}

/// Replaces the contents of the existing file `path`.
fn rewrite(path: &Path, contents: &str) -> Result<(), SandboxError> {
    fs::write(path, contents).map_err(|source| SandboxError::Io {
        what: format!("write {}", path.display()),
        source,
    })
}

/// The tests' operations on a [`Pgpool`].
pub trait PgpoolExt {
    /// Writes `name` into pgpool's directory, owned by the user pgpool
    /// runs as (a watchdog member's `pgpool_node_id`, say).
    fn write_file(&self, name: &str, contents: &str) -> Result<(), SandboxError>;

    /// One line per run of the failover_command script (`failover: true`),
    /// oldest first: `failover failed=<id> old_primary=<id> new_main=<id>
    /// action=<promoted|none|promote-failed|no-new-main>`. Empty when it never ran.
    fn failover_runs(&self) -> Vec<String>;

    /// One line per run of the follow_primary_command script, oldest
    /// first: `follow node=<id> new_primary=<id> old_primary=<id>
    /// result=<repointed|skipped|failed|unknown-pair>` (skipped: the node
    /// was not a running standby, e.g. the dead old primary).
    fn follow_runs(&self) -> Vec<String>;

    /// pgpool's own status file (`pgpool_status`), one line per backend
    /// ("up", "down", …): what pgpool believes, read without pcp, which
    /// blocks while a backend is frozen. Empty when there is none yet.
    fn status_file_lines(&self) -> Vec<String>;

    /// [`PgpoolExt::status_file_lines`] every 100 ms for `period`.
    fn watch_status_file(&self, period: Duration) -> Vec<Vec<String>>;

    /// Why the snapshots of [`PgpoolExt::watch_status_file`] do not show
    /// backend `id` up all along: a snapshot unreadable (not one line per
    /// backend) or showing it down.
    fn down_in(&self, seen: &[Vec<String>], id: usize) -> Option<String>;

    /// pgpool's own output (its log goes to stderr), kept across restarts.
    fn log_file(&self) -> PathBuf;

    /// `(node_id, status)` of every backend from `SHOW pool_nodes`, asked
    /// through pgpool's own port as the sandbox's plusmoin role. The act of
    /// connecting makes "waiting" nodes "up", so this shows "up" where pcp
    /// showed "waiting" a moment before. A new session fails while pgpool
    /// fails a node over or back, or while a backend goes down: such
    /// failures are retried a few times before they are returned.
    fn show_pool_nodes(&self) -> Result<Vec<(usize, String)>, SandboxError>;

    /// Attaches backend `id` (`pcp_attach_node`) and waits until pgpool
    /// shows it "up" or "waiting": the command only queues the attach.
    fn attach(&self, id: usize) -> Result<(), SandboxError>;

    /// Detaches backend `id` (`pcp_detach_node`) and waits until pgpool
    /// shows it "down". With auto_failback on, pgpool may attach it again
    /// soon after: that is pgpool's behaviour, not hidden here.
    fn detach(&self, id: usize) -> Result<(), SandboxError>;

    /// Polls `pcp_node_info` until backend `id`'s status is one of `want`;
    /// returns that status.
    fn wait_status(
        &self,
        id: usize,
        want: &[&str],
        timeout: Duration,
    ) -> Result<String, SandboxError>;

    /// Starts pgpool again like [`Pgpool::start_again`], but without its
    /// status file (what `pgpool -D` does): every node starts as up.
    fn start_again_discarding_status(&self) -> Result<(), SandboxError>;

    /// Whether this pgpool's health check waits for a backend that accepts
    /// the connection but never answers (a frozen server) instead of
    /// giving up after `health_check_timeout`. From the releases of
    /// January 2025 (4.3.14, 4.4.11, 4.5.6, and 4.6.0 on) pgpool's signal
    /// handlers restart an interrupted system call, the health check's
    /// alarm among them: its read of the frozen server's answer goes on
    /// until the server answers, so the check neither fails nor retries,
    /// and pgpool never fails over a frozen primary. Earlier releases time
    /// out, retry, and fail the node over when the retries run out.
    fn health_check_waits_out_a_freeze(&self) -> bool;

    /// The longest health check of backend `id` so far, in milliseconds
    /// (`pcp_health_check_stats`' "Max Health Check Duration").
    fn health_check_max_ms(&self, id: usize) -> Result<u64, SandboxError>;
}

impl PgpoolExt for Pgpool {
    fn write_file(&self, name: &str, contents: &str) -> Result<(), SandboxError> {
        let path = self.dir().join(name);
        let io = |what: &str, source| SandboxError::Io {
            what: format!("{what} {}", path.display()),
            source,
        };
        fs::write(&path, contents).map_err(|e| io("write", e))?;
        // pgpool's directory belongs to the user pgpool runs as.
        let dir = fs::metadata(self.dir()).map_err(|e| io("stat the directory of", e))?;
        let file = fs::metadata(&path).map_err(|e| io("stat", e))?;
        if (file.uid(), file.gid()) != (dir.uid(), dir.gid()) {
            std::os::unix::fs::chown(&path, Some(dir.uid()), Some(dir.gid()))
                .map_err(|e| io("chown", e))?;
        }
        Ok(())
    }

    fn failover_runs(&self) -> Vec<String> {
        lines(&self.dir().join(FAILOVER_LOG))
    }

    fn follow_runs(&self) -> Vec<String> {
        lines(&self.dir().join(FOLLOW_LOG))
    }

    fn status_file_lines(&self) -> Vec<String> {
        fs::read_to_string(self.dir().join(STATUS_FILE))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn watch_status_file(&self, period: Duration) -> Vec<Vec<String>> {
        let mut seen = Vec::new();
        let began = Instant::now();
        while began.elapsed() < period {
            seen.push(self.status_file_lines());
            thread::sleep(Duration::from_millis(100));
        }
        seen
    }

    fn down_in(&self, seen: &[Vec<String>], id: usize) -> Option<String> {
        if let Some(bad) = seen.iter().find(|s| s.len() != self.len()) {
            return Some(format!("unreadable status file {bad:?} in {seen:?}"));
        }
        seen.iter()
            .any(|s| s.get(id).map(String::as_str) == Some("down"))
            .then(|| format!("node {id} went down in the status file: {seen:?}"))
    }

    fn log_file(&self) -> PathBuf {
        self.dir().join(PGPOOL_LOG)
    }

    fn show_pool_nodes(&self) -> Result<Vec<(usize, String)>, SandboxError> {
        let (command, stdout) =
            plusmoin::demo::sandbox::pgpool::retry_transient(|| psql_show_pool_nodes(self))?;
        parse_pool_nodes(&stdout).ok_or(SandboxError::Unexpected {
            command,
            output: stdout,
        })
    }

    fn health_check_waits_out_a_freeze(&self) -> bool {
        // `pgpool-II version 4.6.7 (…)`
        let out = Command::new(self.bin_dir().join("pgpool"))
            .arg("--version")
            .stdin(Stdio::null())
            .output();
        let text = out.map_or_else(
            |_| String::new(),
            |o| {
                String::from_utf8_lossy(&o.stdout).into_owned()
                    + &String::from_utf8_lossy(&o.stderr)
            },
        );
        let Some(v) = text
            .split_whitespace()
            .skip_while(|w| *w != "version")
            .nth(1)
        else {
            return false;
        };
        let nums: Vec<u32> = v.split('.').map_while(|n| n.parse().ok()).collect();
        match nums[..] {
            [4, 3, patch, ..] => patch >= 14,
            [4, 4, patch, ..] => patch >= 11,
            [4, 5, patch, ..] => patch >= 6,
            [4, minor, ..] => minor >= 6,
            [major, ..] => major > 4,
            [] => false,
        }
    }

    fn health_check_max_ms(&self, id: usize) -> Result<u64, SandboxError> {
        check_id(self, id)?;
        let out = self.pcp("pcp_health_check_stats", &["-v", "-n", &id.to_string()])?;
        let text = &out.stdout;
        // `-v` prints one `Title : value` line per field.
        text.lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim() == "Max Health Check Duration")
            .and_then(|(_, v)| v.trim().parse().ok())
            .ok_or_else(|| SandboxError::Io {
                what: format!("pcp_health_check_stats -v -n {id} printed {text:?}"),
                source: io::Error::from(io::ErrorKind::InvalidData),
            })
    }

    fn attach(&self, id: usize) -> Result<(), SandboxError> {
        check_id(self, id)?;
        self.pcp("pcp_attach_node", &["-n", &id.to_string()])?;
        self.wait_status(id, &["up", "waiting"], CONFIRM_TIMEOUT)?;
        tracing::info!(node = id, "pgpool: attached");
        Ok(())
    }

    fn detach(&self, id: usize) -> Result<(), SandboxError> {
        check_id(self, id)?;
        self.pcp("pcp_detach_node", &["-n", &id.to_string()])?;
        self.wait_status(id, &["down"], CONFIRM_TIMEOUT)?;
        tracing::info!(node = id, "pgpool: detached");
        Ok(())
    }

    fn wait_status(
        &self,
        id: usize,
        want: &[&str],
        timeout: Duration,
    ) -> Result<String, SandboxError> {
        check_id(self, id)?;
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

    fn start_again_discarding_status(&self) -> Result<(), SandboxError> {
        let status = self.dir().join(STATUS_FILE);
        match fs::remove_file(&status) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(SandboxError::Io {
                    what: format!("remove {}", status.display()),
                    source,
                })
            }
        }
        self.start_again()
    }
}

fn check_id(pg: &Pgpool, id: usize) -> Result<(), SandboxError> {
    if id < pg.len() {
        Ok(())
    } else {
        Err(SandboxError::NoSuchNode {
            index: id,
            len: pg.len(),
        })
    }
}

/// The non-empty lines of `path`; none when it cannot be read.
fn lines(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

/// `psql -c 'SHOW pool_nodes'` through pgpool's port, within
/// [`PSQL_TIMEOUT`]: its command line and stdout. A non-zero exit, or an
/// ERROR or FATAL on stderr, is a [`SandboxError::Failed`].
fn psql_show_pool_nodes(pg: &Pgpool) -> Result<(String, String), SandboxError> {
    let psql = pg_bin_dir()?.join("psql");
    let port = pg.port().to_string();
    let args = [
        "-X",
        "-A",
        "-t",
        "-q",
        "-F",
        "|",
        "-v",
        "ON_ERROR_STOP=1",
        "-h",
        pg.host(),
        "-p",
        &port,
        "-U",
        SANDBOX_USER,
        "-d",
        SANDBOX_DBNAME,
        "-c",
        "SHOW pool_nodes",
    ];
    let command = format!("{} {}", psql.display(), args.join(" "));
    let child = Command::new(&psql)
        .args(args)
        .current_dir(pg.dir())
        // None of our libpq variables: only what we give.
        .env_clear()
        .env("LC_ALL", "C")
        .env("PGPASSWORD", SANDBOX_PASSWORD)
        .env("PGCONNECT_TIMEOUT", "10")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| SandboxError::Spawn {
            command: command.clone(),
            source,
        })?;
    let pid = child.id() as i32;
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let output = match rx.recv_timeout(PSQL_TIMEOUT) {
        Ok(output) => output,
        Err(_) => {
            // Not reaped yet (the thread waits for it): the pid is still its.
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            let stderr = rx
                .recv()
                .ok()
                .and_then(Result::ok)
                .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_owned())
                .unwrap_or_default();
            return Err(SandboxError::CommandTimeout {
                command,
                timeout: PSQL_TIMEOUT,
                stderr,
            });
        }
    };
    let output = output.map_err(|source| SandboxError::Spawn {
        command: command.clone(),
        source,
    })?;
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
    if !output.status.success() || reports_error(&stderr) {
        return Err(SandboxError::Failed {
            command,
            status: output.status.to_string(),
            stderr,
        });
    }
    Ok((
        command,
        String::from_utf8_lossy(&output.stdout).into_owned(),
    ))
}

/// psql prints its refusals as `ERROR:`/`FATAL:` lines.
fn reports_error(stderr: &str) -> bool {
    stderr.lines().any(|l| {
        let l = l.trim_start();
        l.starts_with("ERROR") || l.starts_with("FATAL") || l.contains("error:")
    })
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn psql_refusals_are_errors() {
        assert!(reports_error("FATAL:  password authentication failed"));
        assert!(reports_error("psql: error: connection to server failed"));
        assert!(!reports_error(""));
    }

    #[test]
    fn our_own_process_runs() {
        assert!(running_threads(std::process::id() as i32) >= 1);
        assert_eq!(running_threads(-1), 0);
    }
}
