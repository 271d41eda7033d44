//! Benchmark (issue 4, "Measure"): how long after a standby comes back does
//! pgpool-II serve it again — with plusmoin's pgpool handlers, and with
//! pgpool's own `auto_failback` (interval 1 s, and its default 60 s).
//!
//! `cargo bench --bench failback` (5 runs per setup, 3 for the 60 s
//! interval's second outage, 1 for (c3); `-- --quick`: 2, 1 and 1). It owns one
//! sandbox (a primary and one standby, sandbox node 1 = pgpool backend 1),
//! one pgpool at a time in front of it, and plusmoin in setup (a); all are
//! stopped by their Drop guards, on error and on panic too.
//!
//! One run: the standby is stopped (`pg_ctl stop -m fast`), pgpool's health
//! check detaches it (and plusmoin, in (a), has seen it lost), it stays down
//! [`OUTAGE`] more, then `start_node` (`pg_ctl start -w`, which returns once
//! the server accepts connections) brings it back. The figure is the time
//! from `start_node`'s return to the first `pcp_node_info` (polled every
//! [`POLL`]) showing it `up` or `waiting`.
//!
//! Setups:
//! - (a) plusmoin, heartbeat 1 s, connect_timeout 1 s, max_sync_delay 5 s,
//!   recover_sync_delay 2 s, with its pgpool section; auto_failback off.
//!   Then the same at heartbeat 5 s and 60 s ([`SLOW_HEARTBEATS`], 3 runs
//!   each, 1 with `--quick`): a restarted standby is retried every
//!   `retry_interval` while lost, so it should be back as fast whatever the
//!   heartbeat. For every plusmoin run, the time to `slave_up` (a trigger
//!   writing a timestamp) is taken too.
//! - (b) auto_failback on, auto_failback_interval 1 s; no plusmoin.
//! - (c) auto_failback on, auto_failback_interval 60 s (pgpool's default);
//!   no plusmoin. pgpool fails a node back at most once per interval, the
//!   first time after its start immediately. So (c1) restarts pgpool before
//!   each run — a standby that fails more than 60 s after its previous
//!   failback, what a lone outage gets — and (c2) stops the same standby
//!   again as soon as (c1) saw it back, without restarting pgpool: a second
//!   outage within the interval, where the 60 s bite. (c3) checks that the
//!   restart stands for a lone outage: the same pgpool, not restarted, the
//!   standby stopped once 60 s have passed since its last failback.
//!
//! All pgpools run health_check_period 1 s (retries 0) and sr_check_period
//! 1 s, so only who fails back, and the interval, differ. Then, per setup,
//! what happens to a healthy standby detached on purpose
//! (`pcp_detach_node`), observed for [`WATCH`].

use std::error::Error;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use plusmoin::demo::sandbox::pgpool::{pgpool_installed, Pgpool, PgpoolOptions, PCP_USER};
use plusmoin::demo::sandbox::{Sandbox, SANDBOX_DBNAME, SANDBOX_PASSWORD, SANDBOX_USER};
use plusmoin_kit::sandbox::PgpoolExt;

type Res<T> = Result<T, Box<dyn Error>>;

/// The standby that goes down (sandbox node and pgpool backend id).
const STANDBY: usize = 1;
/// How often pgpool's view is polled.
const POLL: Duration = Duration::from_millis(50);
/// How long the standby stays down once pgpool detached it (and plusmoin,
/// in (a), saw it lost): every watcher has had a beat to see the outage.
const OUTAGE: Duration = Duration::from_secs(2);
/// How long a failback may take before the run is an error (the 60 s
/// interval plus margin).
const FAILBACK_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a detach, or plusmoin's view of the standby, may take.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a node detached on purpose is watched for a re-attach.
const WATCH: Duration = Duration::from_secs(15);
/// pgpool's default auto_failback_interval.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);
const UP: &[&str] = &["up", "waiting"];
/// The heartbeats measured beside setup (a)'s 1 s.
const SLOW_HEARTBEATS: [u64; 2] = [5, 60];
/// The aim for plusmoin: back in pgpool this soon, at every heartbeat.
const AIM: Duration = Duration::from_millis(300);
/// The `slave_up` trigger: a nanosecond timestamp in `events/`.
const SCRIPT: &str = r#"#!/bin/sh
t=$(date +%s%N)
d="$(dirname "$0")/events"
printf '%s\n' "$t" > "$d/$t-$$.tmp" && mv "$d/$t-$$.tmp" "$d/$t-$$.ev"
"#;

fn now_ns() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128)
}

/// plusmoin's runs at one heartbeat: (to slave_up, to pgpool up) each.
struct PlusmoinRuns {
    heartbeat: u64,
    slave_up: Vec<Duration>,
    pgpool_up: Vec<Duration>,
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let began = Instant::now();
    let result = run(quick);
    let total = began.elapsed();
    match result {
        Ok(report) => {
            println!("\n{report}");
            println!("total bench time: {:.0} s", total.as_secs_f64());
        }
        Err(e) => {
            eprintln!(
                "failback bench failed after {:.0} s: {e}",
                total.as_secs_f64()
            );
            std::process::exit(1);
        }
    }
}

fn run(quick: bool) -> Res<String> {
    if !pgpool_installed() {
        return Err("pgpool-II is not installed (apt-get install pgpool2)".into());
    }
    let (runs, c2_runs) = if quick { (2, 1) } else { (5, 3) };
    let slow_runs = if quick { 1 } else { 3 };
    let mut by_hb: Vec<PlusmoinRuns> = Vec::new();
    let sb = Sandbox::start(1)?;
    println!(
        "sandbox: primary :{}, standby :{}; {runs} runs per setup, {c2_runs} for (c2)",
        sb.port(0),
        sb.port(STANDBY)
    );

    // (a) plusmoin, auto_failback off.
    let a;
    let (q_plain, q_hold);
    {
        let pg = start_pgpool(&sb, None)?;
        let pm = Daemon::start(&sb, &pg, 1)?;
        pm.wait_in_sync(&sb)?;
        wait_status(&pg, UP, SETTLE_TIMEOUT)?;
        let mut s = Vec::new();
        let mut one = PlusmoinRuns {
            heartbeat: 1,
            slave_up: Vec::new(),
            pgpool_up: Vec::new(),
        };
        for i in 1..=runs {
            let r = outage(&sb, &pg, Some(&pm))?;
            let up = pm.slave_up_after(r.stopped_ns, r.ready_ns)?;
            println!(
                "(a) plusmoin            run {i}: {}; slave_up after {:.2} s",
                r.line(),
                up.as_secs_f64()
            );
            s.push(r.failback);
            one.slave_up.push(up);
            one.pgpool_up.push(r.failback);
        }
        by_hb.push(one);
        a = s;
        pm.wait_in_sync(&sb)?;
        q_plain = detached_on_purpose(&pg)?;
        println!("(a) detached on purpose: {q_plain}");
        pm.wait_in_sync(&sb)?;
        wait_status(&pg, UP, SETTLE_TIMEOUT)?;
        q_hold = held(&sb, &pg, &pm)?;
        println!("(a) held: {q_hold}");
        drop(pm);
        for hb in SLOW_HEARTBEATS {
            let pm = Daemon::start(&sb, &pg, hb)?;
            pm.wait_in_sync(&sb)?;
            wait_status(&pg, UP, SETTLE_TIMEOUT)?;
            let mut runs_hb = PlusmoinRuns {
                heartbeat: hb,
                slave_up: Vec::new(),
                pgpool_up: Vec::new(),
            };
            for i in 1..=slow_runs {
                let r = outage(&sb, &pg, Some(&pm))?;
                let up = pm.slave_up_after(r.stopped_ns, r.ready_ns)?;
                println!(
                    "(a) plusmoin, heartbeat {hb} s, run {i}: {}; slave_up after {:.2} s",
                    r.line(),
                    up.as_secs_f64()
                );
                runs_hb.slave_up.push(up);
                runs_hb.pgpool_up.push(r.failback);
            }
            by_hb.push(runs_hb);
        }
    }

    // (b) auto_failback, interval 1 s.
    let b;
    let q_b;
    {
        let pg = start_pgpool(&sb, Some(Duration::from_secs(1)))?;
        wait_status(&pg, UP, SETTLE_TIMEOUT)?;
        let mut s = Vec::new();
        for i in 1..=runs {
            let r = outage(&sb, &pg, None)?;
            println!("(b) auto_failback 1 s   run {i}: {}", r.line());
            s.push(r.failback);
        }
        b = s;
        // More than the interval since the last failback.
        sleep(Duration::from_secs(2));
        q_b = detached_on_purpose(&pg)?;
        println!("(b) detached on purpose: {q_b}");
    }

    // (c) auto_failback, interval 60 s.
    let (mut c1, mut c2, mut c3) = (Vec::new(), Vec::new(), Vec::new());
    let q_c;
    {
        let pg = start_pgpool(&sb, Some(DEFAULT_INTERVAL))?;
        let mut last_up = Instant::now();
        for i in 1..=runs {
            restart_pgpool(&pg)?;
            let r = outage(&sb, &pg, None)?;
            println!("(c1) auto_failback 60 s run {i}: {}", r.line());
            c1.push(r.failback);
            last_up = r.up_at;
            if i <= c2_runs {
                let first_up = r.up_at;
                let r = outage(&sb, &pg, None)?;
                println!(
                    "(c2) second outage      run {i}: {} (restarted {:.1} s after the first failback)",
                    r.line(),
                    r.ready_at.duration_since(first_up).as_secs_f64()
                );
                c2.push(r.failback);
                last_up = r.up_at;
            }
        }
        // Is a restart really what a lone outage gets? The same pgpool, no
        // restart, the standby stopped once the interval since its last
        // failback has passed.
        let since = last_up.elapsed();
        if let Some(rest) = (DEFAULT_INTERVAL + Duration::from_secs(1)).checked_sub(since) {
            println!(
                "(c3) waiting {:.0} s for the interval since the last failback to pass",
                rest.as_secs_f64()
            );
            sleep(rest);
        }
        let r = outage(&sb, &pg, None)?;
        println!(
            "(c3) outage > 60 s after the last failback, no restart: {} (stopped {:.1} s after it)",
            r.line(),
            r.stopped_at.duration_since(last_up).as_secs_f64()
        );
        c3.push(r.failback);
        restart_pgpool(&pg)?;
        q_c = detached_on_purpose(&pg)?;
        println!("(c) detached on purpose (pgpool just restarted): {q_c}");
    }

    let mut text = report(&Report {
        runs,
        c2_runs,
        a: &a,
        b: &b,
        c1: &c1,
        c2: &c2,
        c3: &c3,
        q_plain: &q_plain,
        q_hold: &q_hold,
        q_b: &q_b,
        q_c: &q_c,
    });
    text.push('\n');
    text.push_str(&report_heartbeats(&by_hb));
    Ok(text)
}

/// One outage's timings.
struct Outage {
    /// When the standby's stop began.
    stopped_at: Instant,
    /// `start_node`'s own duration (pg_ctl start -w).
    start: Duration,
    /// From `start_node`'s return to pgpool showing the node up/waiting.
    failback: Duration,
    ready_at: Instant,
    /// `ready_at` and the stop's start on the wall clock (ns), to compare
    /// with trigger stamps.
    ready_ns: i128,
    stopped_ns: i128,
    up_at: Instant,
}

impl Outage {
    fn line(&self) -> String {
        format!(
            "{:6.2} s to up (start_node took {:.2} s)",
            self.failback.as_secs_f64(),
            self.start.as_secs_f64()
        )
    }
}

/// Stops the standby, waits until pgpool (and plusmoin) saw it down, keeps
/// it down [`OUTAGE`] more, starts it and times pgpool's failback.
fn outage(sb: &Sandbox, pg: &Pgpool, pm: Option<&Daemon>) -> Res<Outage> {
    let stopping = Instant::now();
    let stopped_ns = now_ns();
    sb.stop(STANDBY)?;
    wait_status(pg, &["down"], SETTLE_TIMEOUT)?;
    if let Some(pm) = pm {
        pm.wait_lost(sb)?;
    }
    sleep(OUTAGE);
    let called = Instant::now();
    sb.start_node(STANDBY)?;
    let ready_at = Instant::now();
    let ready_ns = now_ns();
    wait_status(pg, UP, FAILBACK_TIMEOUT)?;
    let up_at = Instant::now();
    Ok(Outage {
        stopped_at: stopping,
        start: ready_at - called,
        failback: up_at - ready_at,
        ready_at,
        ready_ns,
        stopped_ns,
        up_at,
    })
}

/// Detaches the healthy standby through pcp and watches [`WATCH`] for a
/// re-attach; says what happened.
fn detached_on_purpose(pg: &Pgpool) -> Res<String> {
    wait_status(pg, UP, SETTLE_TIMEOUT)?;
    pg.detach(STANDBY)?;
    let detached = Instant::now();
    Ok(match wait_status(pg, UP, WATCH) {
        Ok(_) => format!(
            "re-attached after {:.1} s",
            detached.elapsed().as_secs_f64()
        ),
        Err(_) => format!("stayed detached ({} s watched)", WATCH.as_secs()),
    })
}

/// `plusmoin hold` on the in-sync standby, a `pcp_detach_node` if plusmoin
/// has not detached it yet, [`WATCH`] of watching, then `plusmoin release`.
fn held(sb: &Sandbox, pg: &Pgpool, pm: &Daemon) -> Res<String> {
    let node = node_name(sb, STANDBY);
    pm.cli(&["hold", &node])?;
    let held_at = Instant::now();
    // plusmoin detaches a held node itself; detach by hand only if it has
    // not within a few beats.
    if wait_status(pg, &["down"], Duration::from_secs(5)).is_err() {
        pg.detach(STANDBY)?;
    }
    let by_plusmoin = held_at.elapsed();
    let down_at = Instant::now();
    let stayed = wait_status(pg, UP, WATCH).is_err();
    let in_sync = pm.slaves()?.contains(&node);
    pm.cli(&["release", &node])?;
    let released = Instant::now();
    wait_status(pg, UP, SETTLE_TIMEOUT)?;
    let back = released.elapsed();
    Ok(if stayed {
        format!(
            "detached {:.1} s after `hold`, stayed detached ({} s watched{}), \
             re-attached {:.1} s after `release`",
            by_plusmoin.as_secs_f64(),
            WATCH.as_secs(),
            if in_sync { ", in sync all along" } else { "" },
            back.as_secs_f64()
        )
    } else {
        format!(
            "re-attached {:.1} s after being detached, though held",
            down_at.elapsed().as_secs_f64()
        )
    })
}

fn start_pgpool(sb: &Sandbox, auto_failback: Option<Duration>) -> Res<Pgpool> {
    Ok(Pgpool::start(
        sb,
        PgpoolOptions {
            auto_failback,
            health_check_period: Some(1),
            ..PgpoolOptions::default()
        },
    )?)
}

/// Stops and starts pgpool (same ports and status file), which resets its
/// auto_failback interval; waits until it serves the standby.
fn restart_pgpool(pg: &Pgpool) -> Res<()> {
    pg.stop()?;
    pg.start_again()?;
    wait_status(pg, UP, SETTLE_TIMEOUT)?;
    Ok(())
}

/// Polls pgpool's status of the standby every [`POLL`] until it is one of
/// `want`. A pcp failure is retried until the deadline (pcp_node_info
/// fails now and then while a backend goes down or comes up).
fn wait_status(pg: &Pgpool, want: &[&str], timeout: Duration) -> Res<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match pg.node_status(STANDBY) {
            Ok(s) if want.contains(&s.as_str()) => return Ok(s),
            Ok(s) => s,
            Err(e) => format!("error: {e}"),
        };
        if Instant::now() >= deadline {
            return Err(format!(
                "pgpool backend {STANDBY} not {want:?} within {timeout:?} (last: {last})"
            )
            .into());
        }
        sleep(POLL);
    }
}

fn node_name(sb: &Sandbox, i: usize) -> String {
    format!("{}:{}", sb.host(), sb.port(i))
}

/// A foreground plusmoin on the sandbox with a `pgpool` section; stopped
/// (SIGTERM, then SIGKILL) on drop.
struct Daemon {
    dir: tempfile::TempDir,
    config: PathBuf,
    child: Option<Child>,
}

impl Daemon {
    fn start(sb: &Sandbox, pg: &Pgpool, heartbeat: u64) -> Res<Daemon> {
        let dir = tempfile::tempdir()?;
        let d = dir.path().display().to_string();
        std::fs::create_dir(dir.path().join("events"))?;
        let script = dir.path().join("slave_up.sh");
        std::fs::write(&script, SCRIPT)?;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
        let nodes: Vec<String> = (0..sb.len())
            .map(|i| format!(r#"{{"host": "{}", "port": {}}}"#, sb.host(), sb.port(i)))
            .collect();
        let config = format!(
            r#"{{
  "dbname": "{SANDBOX_DBNAME}", "user": "{SANDBOX_USER}", "password": "{SANDBOX_PASSWORD}",
  "heartbeat": {heartbeat}, "connect_timeout": 1, "max_sync_delay": 5, "recover_sync_delay": 2,
  "log_level": "info", "daemon_user": "{user}", "instance_name": "bench", "sslmode": "disable",
  "status_file": "{d}/status.json", "pid_file": "{d}/plusmoin.pid", "log_file": "{d}/plusmoin.log",
  "nodes": [{nodes}],
  "triggers": {{"slave_up": "{script}"}},
  "pgpool": {{"pcp_host": "{host}", "pcp_port": {pcp_port}, "pcp_user": "{PCP_USER}",
             "pcppass_file": "{pcppass}", "pgpool_conf": "{conf}", "bin_dir": "{bin}"}}
}}"#,
            user = current_user(),
            nodes = nodes.join(", "),
            script = script.display(),
            host = pg.host(),
            pcp_port = pg.pcp_port(),
            pcppass = pg.pcppass_file().display(),
            conf = pg.conf_file().display(),
            bin = pg.bin_dir().display(),
        );
        let path = dir.path().join("plusmoin.json");
        std::fs::write(&path, config)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        let out = std::fs::File::create(dir.path().join("stdout.log"))?;
        let err = out.try_clone()?;
        let mut daemon = Daemon {
            dir,
            config: path,
            child: None,
        };
        daemon.child = Some(
            Command::new(env!("CARGO_BIN_EXE_plusmoin"))
                .arg("-c")
                .arg(&daemon.config)
                .args(["-x", "start"])
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .spawn()?,
        );
        Ok(daemon)
    }

    /// From `ready` (wall clock, ns) to the first `slave_up` trigger
    /// started since `after` (waited for up to [`SETTLE_TIMEOUT`]); zero if
    /// it started before `ready` (plusmoin can see the server accept
    /// connections before `pg_ctl start -w`, polling, does).
    fn slave_up_after(&self, after: i128, ready: i128) -> Res<Duration> {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        loop {
            let first = std::fs::read_dir(self.dir.path().join("events"))?
                .filter_map(|e| e.ok())
                .filter(|e| e.path().extension().is_some_and(|x| x == "ev"))
                .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                .filter_map(|t| t.trim().parse::<i128>().ok())
                .filter(|t| *t > after)
                .min();
            if let Some(t) = first {
                return Ok(Duration::from_nanos((t - ready).max(0) as u64));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "no slave_up within {SETTLE_TIMEOUT:?}; log tail:\n{}",
                    self.log_tail()
                )
                .into());
            }
            sleep(POLL);
        }
    }

    fn status(&self) -> Option<serde_json::Value> {
        let text = std::fs::read_to_string(self.dir.path().join("status.json")).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Names of the in-sync slaves of the first cluster.
    fn slaves(&self) -> Res<Vec<String>> {
        let st = self
            .status()
            .ok_or("plusmoin wrote no readable status file")?;
        Ok(st["clusters"][0]["slaves"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|n| n["name"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default())
    }

    fn wait_slave(&self, sb: &Sandbox, in_sync: bool) -> Res<()> {
        let node = node_name(sb, STANDBY);
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        loop {
            if self.slaves().is_ok_and(|s| s.contains(&node) == in_sync) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "plusmoin did not show {node} {} within {SETTLE_TIMEOUT:?}; log tail:\n{}",
                    if in_sync { "in sync" } else { "lost" },
                    self.log_tail()
                )
                .into());
            }
            sleep(POLL);
        }
    }

    fn wait_in_sync(&self, sb: &Sandbox) -> Res<()> {
        self.wait_slave(sb, true)
    }

    fn wait_lost(&self, sb: &Sandbox) -> Res<()> {
        self.wait_slave(sb, false)
    }

    /// Runs `plusmoin -c CONFIG args…` (hold, release).
    fn cli(&self, args: &[&str]) -> Res<()> {
        let out = Command::new(env!("CARGO_BIN_EXE_plusmoin"))
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .output()?;
        if !out.status.success() {
            return Err(format!(
                "plusmoin {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            )
            .into());
        }
        Ok(())
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("stdout.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(pid) = i32::try_from(child.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            sleep(POLL);
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

fn current_user() -> String {
    nix::unistd::User::from_uid(nix::unistd::geteuid())
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| "root".into())
}

struct Report<'a> {
    runs: usize,
    c2_runs: usize,
    a: &'a [Duration],
    b: &'a [Duration],
    c1: &'a [Duration],
    c2: &'a [Duration],
    c3: &'a [Duration],
    q_plain: &'a str,
    q_hold: &'a str,
    q_b: &'a str,
    q_c: &'a str,
}

/// min / median / max in seconds.
fn stats(s: &[Duration]) -> String {
    let mut v: Vec<f64> = s.iter().map(Duration::as_secs_f64).collect();
    v.sort_by(f64::total_cmp);
    let (Some(min), Some(max)) = (v.first(), v.last()) else {
        return "– | – | –".into();
    };
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    format!("{min:.2} | {median:.2} | {max:.2}")
}

fn report(r: &Report) -> String {
    let mut t = String::new();
    t.push_str(
        "| setup | runs | min s | median s | max s | a healthy standby detached on purpose (`pcp_detach_node`) |\n\
         |---|---|---|---|---|---|\n",
    );
    t.push_str(&format!(
        "| (a) plusmoin, heartbeat 1 s; auto_failback off | {} | {} | without hold: {}; with `plusmoin hold`: {} |\n",
        r.runs,
        stats(r.a),
        r.q_plain,
        r.q_hold
    ));
    t.push_str(&format!(
        "| (b) auto_failback, interval 1 s | {} | {} | {} |\n",
        r.runs,
        stats(r.b),
        r.q_b
    ));
    t.push_str(&format!(
        "| (c1) auto_failback, interval 60 s (default), first failback since pgpool started | {} | {} | {} |\n",
        r.runs,
        stats(r.c1),
        r.q_c
    ));
    t.push_str(&format!(
        "| (c2) auto_failback, interval 60 s, the same standby's next outage right after | {} | {} | (same as c1, once the interval has passed) |\n",
        r.c2_runs,
        stats(r.c2)
    ));
    t.push_str(&format!(
        "| (c3) auto_failback, interval 60 s, an outage more than 60 s after the previous failback, no restart | {} | {} | |\n",
        r.c3.len(),
        stats(r.c3)
    ));
    t
}

/// plusmoin at each heartbeat: to `slave_up`, and to pgpool showing the
/// standby up, from the restarted standby accepting connections.
fn report_heartbeats(rows: &[PlusmoinRuns]) -> String {
    let mut t = String::from(
        "| plusmoin, heartbeat | runs | to `slave_up`: min / median / max s | to pgpool up: min / median / max s | aim: pgpool up within 0.3 s |\n\
         |---|---|---|---|---|\n",
    );
    for r in rows {
        let worst = r.pgpool_up.iter().max().copied().unwrap_or_default();
        t.push_str(&format!(
            "| {} s | {} | {} | {} | {} |\n",
            r.heartbeat,
            r.pgpool_up.len(),
            stats(&r.slave_up).replace(" | ", " / "),
            stats(&r.pgpool_up).replace(" | ", " / "),
            if worst <= AIM { "met" } else { "MISSED" }
        ));
    }
    t
}
