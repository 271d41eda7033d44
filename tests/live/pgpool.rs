//! End-to-end: a real `plusmoin -x start` with a `pgpool` section, in front
//! of which a real pgpool-II (health check every second, auto_failback off)
//! serves the sandbox (issue 4). Every attach asserted here is plusmoin's
//! doing: pgpool never attaches a node by itself with auto_failback off.

use crate::monitor::{assert_no_secret, healthy, names, node, Plusmoin, Timings};
use crate::wait_until;
use plusmoin::demo::sandbox::pgpool::{
    pgpool_installed, Pgpool, PgpoolOptions, PCP_PASSWORD, PCP_USER,
};
use plusmoin::demo::sandbox::Sandbox;
use plusmoin_kit::sandbox::{PgpoolExt, SandboxExt};
use std::path::Path;
use std::time::Duration;

pub(crate) const LONG: Duration = Duration::from_secs(30);
pub(crate) const UP: &[&str] = &["up", "waiting"];

/// A sandbox and a pgpool in front of it: health check every second,
/// auto_failback off.
pub(crate) fn setup(standbys: usize) -> (Sandbox, Pgpool) {
    assert!(
        pgpool_installed(),
        "pgpool-II is not installed (apt-get install pgpool2)"
    );
    let sb = Sandbox::start(standbys).expect("sandbox");
    let pgpool = Pgpool::start(
        &sb,
        PgpoolOptions {
            auto_failback: None,
            health_check_period: Some(1),
            ..PgpoolOptions::default()
        },
    )
    .expect("pgpool");
    (sb, pgpool)
}

/// The `pgpool` section for `pg`, node ids from its pgpool.conf.
pub(crate) fn section(pg: &Pgpool, pcppass: &Path) -> String {
    format!(
        r#", "pgpool": {{"pcp_host": "{}", "pcp_port": {}, "pcp_user": "{PCP_USER}",
           "pcppass_file": "{}", "pgpool_conf": "{}", "bin_dir": "{}"}}"#,
        pg.host(),
        pg.pcp_port(),
        pcppass.display(),
        pg.conf_file().display(),
        pg.bin_dir().display()
    )
}

fn start(sb: &Sandbox, pg: &Pgpool) -> Plusmoin {
    let p = Plusmoin::start(sb, &Timings::default(), &section(pg, pg.pcppass_file()));
    healthy(&p, sb);
    p
}

pub(crate) fn status(pg: &Pgpool, id: usize) -> String {
    pg.node_status(id).unwrap_or_else(|e| format!("error: {e}"))
}

/// Waits until pgpool shows node `id` in one of `want`; fails with
/// plusmoin's log.
pub(crate) fn wait_pgpool(p: &Plusmoin, pg: &Pgpool, id: usize, want: &[&str], what: &str) {
    if let Err(e) = pg.wait_status(id, want, LONG) {
        p.fail(&format!("{what}: {e}"));
    }
}

pub(crate) fn wait_log(p: &Plusmoin, what: &str, pred: impl Fn(&str) -> bool) -> String {
    let mut found = String::new();
    let ok = wait_until(LONG, || match p.log().lines().find(|l| pred(l)) {
        Some(l) => {
            found = l.to_string();
            true
        }
        None => false,
    });
    if !ok {
        let log = p.log();
        if let Some(dir) = std::env::var_os("PLUSMOIN_FAILED_LOG_DIR") {
            let _ = std::fs::write(std::path::Path::new(&dir).join("plusmoin.log"), &log);
        }
        let ours: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("pgpool") && !l.contains("in step"))
            .collect();
        p.fail(&format!(
            "no log line {what}; pgpool lines:\n{}",
            ours.join("\n")
        ));
    }
    found
}

pub(crate) fn plusmoin_cmd(p: &Plusmoin, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_plusmoin"))
        .arg("-c")
        .arg(&p.config_path)
        .args(args)
        .output()
        .expect("run plusmoin")
}

/// Node 2 up in pgpool; then stopped: `slave_down`, and pgpool shows it down.
fn stop_standby_2_and_see_it_detached(p: &Plusmoin, sb: &Sandbox, pg: &Pgpool) {
    let n2 = node(sb, 2);
    wait_pgpool(p, pg, 2, UP, "node 2 up at start");
    sb.stop(2).expect("stop standby 2");
    p.wait_event("slave_down for standby 2", LONG, |e| {
        e.kind == "slave_down" && e.about(&n2)
    });
    wait_pgpool(p, pg, 2, &["down"], "node 2 detached");
}

#[test]
fn stopped_standby_is_detached_and_attached_again_by_plusmoin_when_in_sync() {
    let (sb, pg) = setup(2);
    let p = start(&sb, &pg);
    let n2 = node(&sb, 2);
    stop_standby_2_and_see_it_detached(&p, &sb, &pg);
    // pgpool's health check may have detached it first; either way the
    // handler looked and logged its outcome.
    wait_log(&p, "with the slave_down handler's outcome", |l| {
        l.contains("slave_down") && l.contains("pgpool_id=2") && l.contains("pgpool: ")
    });

    sb.start_node(2).expect("start standby 2");
    p.wait_event("slave_up for standby 2", LONG, |e| {
        e.kind == "slave_up" && e.about(&n2)
    });
    // auto_failback is off: only plusmoin attaches.
    wait_pgpool(&p, &pg, 2, UP, "node 2 attached again");
    let line = wait_log(&p, "saying plusmoin attached node 2", |l| {
        l.contains("attached node 2")
    });
    assert!(line.contains(&n2), "{line}");
    let nodes = pg.show_pool_nodes().expect("SHOW pool_nodes");
    assert_eq!(nodes[2].1, "up", "{nodes:?}");
}

#[test]
fn standby_out_of_sync_but_running_is_detached_by_plusmoin_not_by_pgpool() {
    let (sb, pg) = setup(1);
    let p = start(&sb, &pg);
    let n1 = node(&sb, 1);
    wait_pgpool(&p, &pg, 1, UP, "node 1 up at start");

    // The standby stays up (pgpool's health check passes) but stops
    // replaying: only plusmoin's heartbeat sees it fall behind.
    sb.sql(1, "SELECT pg_wal_replay_pause()")
        .expect("pause replay");
    p.wait_event("slave_down for the paused standby", LONG, |e| {
        e.kind == "slave_down" && e.about(&n1)
    });
    wait_pgpool(&p, &pg, 1, &["down"], "node 1 detached by plusmoin");
    let line = wait_log(&p, "saying plusmoin detached node 1", |l| {
        l.contains("detached node 1") && l.contains("slave_down")
    });
    assert!(
        line.contains(&n1) && (line.contains("before=up") || line.contains("before=waiting")),
        "pgpool still had it attached: {line}"
    );

    sb.sql(1, "SELECT pg_wal_replay_resume()")
        .expect("resume replay");
    p.wait_event("slave_up once caught up", LONG, |e| {
        e.kind == "slave_up" && e.about(&n1)
    });
    wait_pgpool(&p, &pg, 1, UP, "node 1 attached again");
    wait_log(&p, "saying plusmoin attached node 1", |l| {
        l.contains("attached node 1") && l.contains("slave_up")
    });
}

#[test]
fn reconciliation_attaches_a_node_detached_while_plusmoin_was_stopped() {
    let (sb, pg) = setup(2);
    let mut p = start(&sb, &pg);
    let n1 = node(&sb, 1);
    wait_pgpool(&p, &pg, 1, UP, "node 1 up at start");
    assert!(p.terminate(), "clean exit: {}", p.log());

    pg.detach(1)
        .expect("detach node 1 while plusmoin is stopped");
    assert_eq!(status(&pg, 1), "down");
    let events_before = p.changes().len();

    p.spawn();
    wait_pgpool(&p, &pg, 1, UP, "node 1 attached by reconciliation");
    let line = wait_log(&p, "saying reconciliation attached node 1", |l| {
        l.contains("reconciliation attached node 1")
    });
    assert!(line.contains(&n1), "{line}");
    // No event was needed: the standby never left sync.
    let after: Vec<String> = p.changes()[events_before..]
        .iter()
        .map(|e| e.kind.clone())
        .collect();
    assert!(
        after.iter().all(|k| k == "plusmoin_up"),
        "only plusmoin_up after the restart: {after:?}"
    );
}

#[test]
fn held_node_stays_detached_while_in_sync_and_release_attaches_it() {
    let (sb, pg) = setup(2);
    let p = start(&sb, &pg);
    let n1 = node(&sb, 1);
    wait_pgpool(&p, &pg, 1, UP, "node 1 up at start");

    let out = plusmoin_cmd(&p, &["hold", &n1]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("held"),
        "{out:?}"
    );
    p.wait_status("node 1 shown held", LONG, |st| st["held"][0] == n1.as_str());
    wait_pgpool(&p, &pg, 1, &["down"], "held node 1 detached");
    // Several reconciliations pass: it stays down though in sync.
    let left = wait_until(Duration::from_secs(6), || status(&pg, 1) != "down");
    assert!(!left, "held node 1 came back: {}", status(&pg, 1));
    let st = p.status();
    assert!(
        names(&st["clusters"][0]["slaves"]).contains(&n1),
        "in sync: {st:#}"
    );
    let table = plusmoin_cmd(&p, &["status", "--table"]);
    let table = String::from_utf8_lossy(&table.stdout).to_string();
    assert!(
        table.lines().any(|l| l.contains(&n1) && l.contains("held")),
        "{table}"
    );
    let bad = plusmoin_cmd(&p, &["hold", "127.0.0.1:1"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not a configured node"));

    let out = plusmoin_cmd(&p, &["release", &n1]);
    assert!(out.status.success(), "{out:?}");
    wait_pgpool(&p, &pg, 1, UP, "released node 1 attached");
    p.wait_status("nothing held", LONG, |st| {
        st["held"].as_array().is_some_and(|a| a.is_empty())
    });
}

#[test]
fn wrong_pcp_password_is_reported_once_and_fixing_it_recovers() {
    let (sb, pg) = setup(1);
    let dir = tempfile::tempdir().expect("dir");
    let pcppass = dir.path().join("pcppass");
    let write = |line: &str| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(&pcppass, line).expect("write pcppass");
        std::fs::set_permissions(&pcppass, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    };
    write(&format!("*:*:{PCP_USER}:wrong-password\n"));
    pg.detach(1).expect("detach node 1");
    let p = Plusmoin::start(&sb, &Timings::default(), &section(&pg, &pcppass));
    let n1 = node(&sb, 1);
    healthy(&p, &sb);
    let line = wait_log(&p, "about the refused pcp password", |l| {
        l.contains("pgpool: pcp failed")
    });
    if std::env::var_os("PLUSMOIN_SHOW_LOG").is_some() {
        eprintln!("{line}");
    }
    assert!(line.contains("pcppass_file"), "a hint: {line}");
    assert!(
        !line.contains("wrong-password"),
        "no secret in the log: {line}"
    );
    // Monitoring goes on, and the error is not repeated every beat.
    let beats = |p: &Plusmoin| {
        p.events()
            .iter()
            .filter(|e| e.kind == "plusmoin_heartbeat")
            .count()
    };
    let now = beats(&p);
    assert!(wait_until(LONG, || beats(&p) >= now + 8), "{}", p.log());
    let errors = p.log().matches("pgpool: pcp failed").count();
    assert_eq!(errors, 1, "{}", p.log());
    assert_eq!(status(&pg, 1), "down", "nothing attached without pcp");

    let real = std::fs::read_to_string(pg.pcppass_file()).expect("fixture pcppass");
    write(&real);
    wait_pgpool(
        &p,
        &pg,
        1,
        UP,
        "reconciliation attaches node 1 once pcp works",
    );
    wait_log(&p, "saying pcp answers again", |l| {
        l.contains("pcp answers again")
    });
    p.wait_status("node 1 a slave", LONG, |st| {
        st["clusters"][0]["slaves"][0]["name"] == n1.as_str()
    });
    assert_no_secret(&p, "wrong-password");
    assert_no_secret(&p, PCP_PASSWORD);
}

#[test]
fn pgpool_down_is_reported_monitoring_goes_on_and_its_view_is_fixed_when_back() {
    let (sb, pg) = setup(2);
    let p = start(&sb, &pg);
    let n2 = node(&sb, 2);
    wait_pgpool(&p, &pg, 2, UP, "node 2 up at start");

    pg.stop().expect("stop pgpool");
    // Keep the pcp port ours while pgpool is away: other tests on this
    // machine start pgpools on free ports, and one answering on this port
    // with the same sandbox credentials would be "our" pgpool to plusmoin.
    let squatter = PortSquatter::bind(pg.pcp_port());
    wait_log(&p, "about pgpool being unreachable", |l| {
        l.contains("pgpool: pcp failed") && l.contains("unreachable")
    });
    // Events still fire while pgpool is away.
    sb.stop(2).expect("stop standby 2");
    p.wait_event("slave_down while pgpool is down", LONG, |e| {
        e.kind == "slave_down" && e.about(&n2)
    });
    sb.start_node(2).expect("start standby 2");
    p.wait_event("slave_up while pgpool is down", LONG, |e| {
        e.kind == "slave_up" && e.about(&n2)
    });
    healthy(&p, &sb);

    // pgpool is back. Make its view wrong behind plusmoin's back (node 2
    // down while plusmoin sees it in sync) unless it already is (pgpool may
    // come back with it down): no event comes, reconciliation alone must
    // fix it.
    drop(squatter);
    pg.start_again().expect("pgpool back");
    wait_log(&p, "saying pcp answers again", |l| {
        l.contains("pcp answers again")
    });
    if status(&pg, 2) != "down" {
        pg.detach(2).expect("detach node 2 behind plusmoin's back");
    }
    wait_pgpool(&p, &pg, 2, UP, "reconciliation attaches node 2");
    wait_log(&p, "saying reconciliation attached node 2", |l| {
        l.contains("reconciliation attached node 2")
    });
}

/// Holds a loopback port, accepting and at once closing every connection
/// (pcp then fails as with a pgpool that went away), until dropped.
pub(crate) struct PortSquatter {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PortSquatter {
    pub(crate) fn bind(port: u16) -> PortSquatter {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind(("127.0.0.1", port)).expect("bind pcp port");
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = std::sync::Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((conn, _)) => drop(conn),
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        PortSquatter {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for PortSquatter {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn pcppass_readable_by_others_is_reported_by_check_config_and_at_start() {
    use std::os::unix::fs::PermissionsExt;
    let sb = Sandbox::start(1).expect("sandbox");
    let dir = tempfile::tempdir().expect("dir");
    let pcppass = dir.path().join("pcppass");
    std::fs::write(&pcppass, "*:*:pgpool:secret-pw\n").expect("write");
    std::fs::set_permissions(&pcppass, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let extra = format!(
        r#", "pgpool": {{"pcp_user": "pgpool", "pcppass_file": "{}", "pcp_port": 1999}}"#,
        pcppass.display()
    );
    let p = Plusmoin::start(&sb, &Timings::default(), &extra);
    let check = plusmoin_cmd(&p, &["check-config"]);
    let stderr = String::from_utf8_lossy(&check.stderr).to_string();
    assert!(check.status.success(), "only a warning: {check:?}");
    assert!(
        stderr.contains("warning: pgpool: pcppass_file") && stderr.contains("mode 0644"),
        "{stderr}"
    );
    let stdout = String::from_utf8_lossy(&check.stdout).to_string();
    assert!(
        stdout.contains("no pgpool node id"),
        "no id for any node: {stdout}"
    );
    let line = wait_log(&p, "about the pcppass mode at start", |l| {
        l.contains("ERROR") && l.contains("mode 0644")
    });
    assert!(!line.contains("secret-pw"), "{line}");
    wait_log(&p, "saying nodes without an id are left alone", |l| {
        l.contains("no pgpool node id for this node")
    });
    // Nodes without an id: no pcp command is ever run for them.
    healthy(&p, &sb);
    assert!(!p.log().contains("pgpool: pcp failed"), "{}", p.log());
}

/// A hung primary is pgpool's to handle: plusmoin never detaches it.
/// pgpool (no failover_command, no retries) detaches it by itself where its
/// health check gives up on a frozen server, and once pgpool has had no
/// primary for a while plusmoin attaches the one master it sees when that
/// answers again. Where pgpool's health check waits out the freeze (see
/// `PgpoolExt::health_check_waits_out_a_freeze`), pgpool keeps the hung
/// primary attached all along, and plusmoin, which saw it down, still
/// neither detaches nor needs to attach it.
#[test]
fn hung_primary_is_left_to_pgpool_and_attached_again_by_plusmoin_once_it_answers() {
    let (sb, pg) = setup(1);
    let p = start(&sb, &pg);
    let n0 = node(&sb, 0);
    wait_pgpool(&p, &pg, 0, UP, "node 0 up at start");
    let waits_out = pg.health_check_waits_out_a_freeze();

    sb.freeze(0).expect("freeze primary");
    let thaw = scopeguard(|| {
        let _ = sb.thaw(0);
    });
    p.wait_event("master_down for the hung primary", LONG, |e| {
        e.kind == "master_down" && e.about(&n0)
    });
    if waits_out {
        // pcp blocks while a backend is frozen: pgpool's status file says
        // what it believes. Its health check is held, never fails.
        let seen = pg.watch_status_file(Duration::from_secs(5));
        if let Some(why) = pg.down_in(&seen, 0) {
            panic!("this pgpool should wait out a freeze, yet: {why}");
        }
    } else {
        wait_pgpool(&p, &pg, 0, &["down"], "node 0 detached by pgpool");
    }
    // The master_down round left pgpool's primary to pgpool, and said so.
    wait_log(&p, "with the master_down round's outcome", |l| {
        l.contains("event=\"master_down\"")
            && l.contains("pgpool_id=0")
            && l.contains("nothing to do")
    });

    drop(thaw);
    p.wait_event("master_up for the primary answering again", LONG, |e| {
        e.kind == "master_up" && e.about(&n0)
    });
    wait_pgpool(&p, &pg, 0, UP, "node 0 up in pgpool once it answers");
    if waits_out {
        // Nothing was left to do: pgpool never let go of its primary.
        wait_log(&p, "with the master_up round's outcome", |l| {
            l.contains("event=\"master_up\"")
                && l.contains("pgpool_id=0")
                && l.contains("nothing to do")
        });
        assert!(
            !p.log().contains("attached node 0"),
            "plusmoin attached a primary pgpool never detached: {}",
            p.log()
        );
    } else {
        // pgpool never re-attaches a primary by itself: plusmoin did.
        let line = wait_log(&p, "saying plusmoin attached node 0", |l| {
            l.contains("attached node 0")
        });
        assert!(line.contains("action=\"attach\""), "{line}");
    }
    assert!(
        !p.log().contains("detached node 0"),
        "plusmoin detached pgpool's primary: {}",
        p.log()
    );
    if std::env::var_os("PLUSMOIN_SHOW_LOG").is_some() {
        let log = p.log();
        for l in log
            .lines()
            .filter(|l| l.contains("pgpool") && !l.contains("in step"))
        {
            eprintln!("{l}");
        }
    }
}

/// Runs `f` when dropped (a thaw must happen even if the test fails).
pub(crate) fn scopeguard<F: FnOnce()>(f: F) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}

/// A restarted standby is tried again every `retry_interval`, not at the
/// next beat: with beats 30 s apart it is back in pgpool within seconds of
/// accepting connections (the bounds leave a loaded machine room, and a
/// beat-bound plusmoin would meet them by luck about one time in four).
#[test]
fn restarted_standby_is_back_in_pgpool_well_before_the_next_beat() {
    let (sb, pg) = setup(2);
    let t = Timings {
        heartbeat: 30.0,
        connect_timeout: 2.0,
        max_sync_delay: 30.0,
        recover_sync_delay: 15.0,
        ..Timings::default()
    };
    let p = Plusmoin::start(&sb, &t, &section(&pg, pg.pcppass_file()));
    healthy(&p, &sb);
    let n2 = node(&sb, 2);
    stop_standby_2_and_see_it_detached(&p, &sb, &pg);

    sb.start_node(2).expect("start standby 2");
    let accepted = std::time::SystemTime::now();
    let started = std::time::Instant::now();
    let e = p.wait_event("slave_up for standby 2", LONG, |e| {
        e.kind == "slave_up" && e.about(&n2)
    });
    let took = e.secs_after(accepted);
    assert!(
        took < 5.0,
        "slave_up {took:.2} s after it accepted connections"
    );
    wait_pgpool(&p, &pg, 2, UP, "node 2 attached again");
    let back = started.elapsed();
    assert!(
        back < Duration::from_secs(8),
        "back in pgpool after {back:?} (heartbeat 30 s)"
    );
}

/// pcp finds no password (its pcppass file is gone): on every pgpool
/// version it fails at once and plusmoin says why, naming the file. From
/// pgpool-II 4.7 pcp falls back to asking for a password on the terminal
/// (`-w` or not); plusmoin runs it in a session of its own with stdin from
/// /dev/null, so it never sits at a prompt until the pcp_timeout (20 s).
#[test]
fn pgpool_pcp_without_a_pcppass_file_fails_fast_and_names_it() {
    let (sb, pg) = setup(1);
    let dir = tempfile::tempdir().expect("dir");
    let missing = dir.path().join("no-such-pcppass");
    let p = Plusmoin::start(&sb, &Timings::default(), &section(&pg, &missing));
    healthy(&p, &sb);
    let started = std::time::Instant::now();
    let check = plusmoin_cmd(&p, &["check-config"]);
    let took = started.elapsed();
    let out = String::from_utf8_lossy(&check.stdout).to_string()
        + &String::from_utf8_lossy(&check.stderr);
    assert!(
        took < Duration::from_secs(10),
        "check-config took {took:?} (pcp at a prompt?): {out}"
    );
    let shown = missing.display().to_string();
    let asked = out
        .lines()
        .find(|l| l.contains("cannot ask pgpool about its watchdog"))
        .unwrap_or_else(|| panic!("check-config says pcp failed: {out}"));
    assert!(
        asked.contains("pcp_watchdog_info failed") && asked.contains(&shown),
        "and names the pcppass file: {asked}"
    );
    let line = wait_log(&p, "about pcp failing without a password", |l| {
        l.contains("pgpool: pcp failed")
    });
    assert!(
        line.contains(&shown) && line.contains("No such file"),
        "the log names the pcppass file and what is wrong: {line}"
    );
    assert_no_secret(&p, PCP_PASSWORD);
}

/// A pcppass file the daemon cannot read (root's, mode 0600, while the
/// daemon runs as `daemon_user`): from pgpool-II 4.7 pcp then falls back to
/// a password prompt. plusmoin's pcp has no terminal, so every version
/// fails at once, and the log names the file and why, long before the
/// pcp_timeout; monitoring goes on.
#[test]
fn pcppass_unreadable_by_the_daemon_user_fails_fast_and_names_it() {
    use std::os::unix::fs::PermissionsExt;
    if !nix::unistd::geteuid().is_root() {
        plusmoin_kit::skip("needs root to run the daemon as another user");
        return;
    }
    let (sb, pg) = setup(1);
    let dir = tempfile::tempdir().expect("dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let pcppass = dir.path().join("pcppass");
    std::fs::copy(pg.pcppass_file(), &pcppass).expect("copy pcppass");
    std::fs::set_permissions(&pcppass, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let t = Timings {
        daemon_user: Some("nobody"),
        ..Timings::default()
    };
    let mut p = Plusmoin::configure(&sb, &t, &section(&pg, &pcppass));
    for d in [p.dir.path().to_path_buf(), p.dir.path().join("events")] {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    }
    let started = std::time::Instant::now();
    p.spawn();
    healthy(&p, &sb);
    let shown = pcppass.display().to_string();
    let line = wait_log(&p, "about the pcppass file nobody can read", |l| {
        l.contains("ERROR") && l.contains(&shown)
    });
    let took = started.elapsed();
    eprintln!("after {took:?}: {line}");
    assert!(
        took < Duration::from_secs(15),
        "the pcppass problem took {took:?} to be told (pcp at a prompt?): {line}"
    );
    assert!(
        line.contains("Permission denied") || line.contains("cannot read"),
        "says why: {line}"
    );
    // No pcp run sat at a prompt: nothing timed out.
    assert!(!p.log().contains("timed out"), "{}", p.log());
    assert_no_secret(&p, PCP_PASSWORD);
}
