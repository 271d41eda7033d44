//! The probes against real servers: roles, the heartbeat table on masters
//! and standbys, the per-node deadline (stopped and frozen nodes),
//! connection reuse and reconnection, and the reasons given for bad
//! answers.

use std::time::{Duration, Instant};

use plusmoin::cluster::{Heartbeat, NodeName, Observation, Time};
use plusmoin::config::{Secret, SslMode};
use plusmoin::demo::sandbox::{Sandbox, SANDBOX_DBNAME, SANDBOX_PASSWORD, SANDBOX_USER};
use plusmoin::probe::{Monitor, ProbeSettings, ProbeTarget};
use plusmoin_kit::probe::probe_once;
use plusmoin_kit::sandbox::SandboxExt;

const REPLICATION: Duration = Duration::from_secs(30);

fn start(standbys: usize) -> Sandbox {
    match Sandbox::start(standbys) {
        Ok(sb) => sb,
        Err(e) => panic!("sandbox start: {e}"),
    }
}

fn ok<T, E: std::fmt::Display>(what: &str, r: Result<T, E>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{what}: {e}"),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    ok(
        "tokio runtime",
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
    )
}

/// Probe settings for the sandbox's plusmoin role.
pub(crate) fn settings(instance: &str, timeout: Duration) -> ProbeSettings {
    ProbeSettings {
        dbname: SANDBOX_DBNAME.into(),
        user: SANDBOX_USER.into(),
        password: Secret::new(SANDBOX_PASSWORD),
        node_passwords: Default::default(),
        instance_name: instance.into(),
        is_slave_statement: "SELECT pg_is_in_recovery()".into(),
        // The sandbox has no TLS: prefer falls back to plain, as libpq does.
        sslmode: SslMode::Prefer,
        sslrootcert: None,
        connect_timeout: timeout,
        retry_interval: Duration::from_millis(250),
    }
}

fn prober(s: ProbeSettings) -> Monitor {
    ok("monitor", Monitor::new(s))
}

/// Waits (10 s at most) until the monitor's node tasks have taken new
/// connection settings and dropped their connections, as they do at once
/// in the daemon, whose runtime always runs; here it runs only within
/// `block_on`. Not a fixed pause: a busy machine may take longer.
fn settle(rt: &tokio::runtime::Runtime, p: &Monitor) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while p.connections_held() != 0 {
        assert!(
            Instant::now() < deadline,
            "the node tasks never took the new settings"
        );
        rt.block_on(async { tokio::time::sleep(Duration::from_millis(10)).await });
    }
}

fn name(sb: &Sandbox, i: usize) -> NodeName {
    NodeName::new(sb.host(), sb.port(i))
}

fn targets(sb: &Sandbox, nodes: &[usize]) -> Vec<ProbeTarget> {
    nodes
        .iter()
        .map(|&i| ProbeTarget {
            name: name(sb, i),
            cluster_id: Some(7),
        })
        .collect()
}

/// One beat: checks the answer has one observation per target, in order.
fn beat(rt: &tokio::runtime::Runtime, p: &mut Monitor, t: &[ProbeTarget]) -> Vec<Observation> {
    let out = rt.block_on(probe_once(p, t, Time::now()));
    assert_eq!(out.len(), t.len());
    for ((n, obs), target) in out.iter().zip(t) {
        assert_eq!(n, &target.name);
        if let Observation::Down { reason } = obs {
            assert!(
                !reason.contains(SANDBOX_PASSWORD),
                "password in reason: {reason}"
            );
        }
    }
    out.into_iter().map(|(_, o)| o).collect()
}

/// Beats until `check` accepts the observations (returns the last ones).
fn beat_until(
    rt: &tokio::runtime::Runtime,
    p: &mut Monitor,
    t: &[ProbeTarget],
    timeout: Duration,
    check: impl Fn(&[Observation]) -> bool,
) -> Vec<Observation> {
    let deadline = Instant::now() + timeout;
    loop {
        let obs = beat(rt, p, t);
        if check(&obs) {
            return obs;
        }
        if Instant::now() >= deadline {
            panic!("never got the expected observations; last: {obs:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn down_reason(obs: &Observation) -> &str {
    match obs {
        Observation::Down { reason } => reason,
        other => panic!("expected Down, got {other:?}"),
    }
}

fn assert_down_with(obs: &Observation, needles: &[&str]) {
    let reason = down_reason(obs);
    eprintln!("down: {reason}");
    for needle in needles {
        assert!(reason.contains(needle), "{needle:?} not in {reason:?}");
    }
}

fn heartbeat(obs: &Observation) -> Option<&Heartbeat> {
    match obs {
        Observation::Slave { heartbeat } => heartbeat.as_ref(),
        other => panic!("expected Slave, got {other:?}"),
    }
}

/// The heartbeat time of a master's observation; `None` for any other.
fn written_at(obs: &Observation) -> Option<Time> {
    match obs {
        Observation::Master { wrote_at, .. } => Some(*wrote_at),
        _ => None,
    }
}

fn is_master(obs: &Observation) -> bool {
    matches!(obs, Observation::Master { .. })
}

/// Backend pids of plusmoin's sessions on node `i`.
fn plusmoin_pids(sb: &Sandbox, i: usize) -> Vec<String> {
    plusmoin_sessions(sb, i, "pid")
}

/// `column` of pg_stat_activity for each of plusmoin's sessions on node
/// `i`, in pid order.
fn plusmoin_sessions(sb: &Sandbox, i: usize, column: &str) -> Vec<String> {
    let out = ok(
        "pg_stat_activity",
        sb.sql(
            i,
            &format!(
                "SELECT {column} FROM pg_stat_activity \
                 WHERE application_name = 'plusmoin' ORDER BY pid"
            ),
        ),
    );
    out.lines().map(str::to_owned).collect()
}

/// Waits until plusmoin's sessions on node `i` are exactly `want` (a
/// dropped connection ends on the runtime, shortly after).
fn wait_pids(rt: &tokio::runtime::Runtime, sb: &Sandbox, i: usize, want: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = plusmoin_pids(sb, i);
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "node {i}: sessions {got:?}, want {want:?}"
        );
        rt.block_on(tokio::time::sleep(Duration::from_millis(100)));
    }
}

fn row(sb: &Sandbox, i: usize, instance: &str) -> String {
    ok(
        "heartbeat row",
        sb.sql(
            i,
            &format!(
                "SELECT master_name, cluster_id, \
                 (extract(epoch FROM beat_at) * 1000000)::bigint \
                 FROM plusmoin_heartbeat WHERE instance_name = '{instance}'"
            ),
        ),
    )
}

/// Roles, the heartbeat written on the master and replayed on the
/// standbys, a row per instance, connection reuse, recreating a dropped
/// table, and the master's reason when the table is altered.
#[test]
fn heartbeat_roles_and_reuse() {
    let sb = start(2);
    let rt = runtime();
    let all = targets(&sb, &[0, 1, 2]);
    let standbys = targets(&sb, &[1, 2]);
    let mut a = prober(settings("pm-a", Duration::from_secs(10)));

    // Before any master write the standbys have no table: not in sync yet.
    let obs = beat(&rt, &mut a, &standbys);
    assert_eq!(obs, vec![Observation::Slave { heartbeat: None }; 2]);

    // The master: the table is created and this instance's row written.
    let now = Time::now();
    let out = rt.block_on(probe_once(&mut a, &all, now));
    assert_eq!(written_at(&out[0].1), Some(now));
    // The write read the master's WAL position and replication along:
    // both standbys stream, asynchronously; a session's synchronous_commit
    // is the server's, not the `local` of plusmoin's own session.
    let Observation::Master {
        repl: Some(repl), ..
    } = &out[0].1
    else {
        panic!("no replication read with the write: {:?}", out[0].1);
    };
    let wal = repl.wal.expect("a WAL position");
    assert!(wal > 0);
    assert_eq!(repl.standby_names, "");
    assert_eq!(repl.synchronous_commit, "on");
    let senders = repl.walsenders.as_ref().expect("pg_stat_replication shown");
    assert_eq!(senders.len(), 2, "{senders:?}");
    assert!(
        senders
            .iter()
            .all(|w| w.state == "streaming" && w.sync_state == "async"),
        "{senders:?}"
    );
    let master = name(&sb, 0).to_string();
    assert_eq!(row(&sb, 0, "pm-a"), format!("{master}|7|{}", now.0));

    // The standbys replay it: master name, cluster id, plusmoin's time.
    let obs = beat_until(&rt, &mut a, &all, REPLICATION, |o| {
        o[1..].iter().all(|o| heartbeat(o).is_some())
    });
    for o in &obs[1..] {
        let hb = heartbeat(o).unwrap();
        assert_eq!(hb.master_name, master);
        assert_eq!(hb.cluster_id, Some(7));
        assert!(hb.written_at >= now, "{hb:?} older than {now:?}");
        // Replayed at least up to the write it shows.
        let replayed = hb.replayed.expect("a replay position");
        assert!(hb.received.is_some_and(|r| r >= replayed), "{hb:?}");
        assert!(replayed > 0, "{hb:?}");
    }

    // One connection per node, the same across beats.
    assert_eq!(a.connections_held(), 3);
    let pids: Vec<Vec<String>> = (0..3).map(|i| plusmoin_pids(&sb, i)).collect();
    for p in &pids {
        assert_eq!(p.len(), 1, "{pids:?}");
    }
    for _ in 0..3 {
        let obs = beat(&rt, &mut a, &all);
        assert!(is_master(&obs[0]), "{obs:?}");
    }
    let again: Vec<Vec<String>> = (0..3).map(|i| plusmoin_pids(&sb, i)).collect();
    assert_eq!(pids, again);

    // A second instance keeps its own row; neither disturbs the other.
    let mut b = prober(settings("pm-b", Duration::from_secs(10)));
    let t_b = Time::now();
    let out = rt.block_on(probe_once(&mut b, &targets(&sb, &[0]), t_b));
    assert_eq!(written_at(&out[0].1), Some(t_b));
    assert_eq!(row(&sb, 0, "pm-b"), format!("{master}|7|{}", t_b.0));
    let t_a = Time::now();
    let out = rt.block_on(probe_once(&mut a, &all, t_a));
    assert_eq!(written_at(&out[0].1), Some(t_a));
    assert_eq!(row(&sb, 0, "pm-a"), format!("{master}|7|{}", t_a.0));
    assert_eq!(row(&sb, 0, "pm-b"), format!("{master}|7|{}", t_b.0));
    // (b now forgets its master connection: not a target any more.)
    beat_until(&rt, &mut b, &standbys, REPLICATION, |o| {
        o.iter()
            .all(|o| heartbeat(o).map(|h| h.written_at) == Some(t_b))
    });
    // `a` probed the master after `b`: its standbys show a's later time.
    beat_until(&rt, &mut a, &all, REPLICATION, |o| {
        o[1..]
            .iter()
            .all(|o| heartbeat(o).is_some_and(|h| h.written_at > t_b))
    });

    // A table dropped under a cached statement is recreated.
    ok("drop table", sb.sql(0, "DROP TABLE plusmoin_heartbeat"));
    let t = Time::now();
    let out = rt.block_on(probe_once(&mut a, &all, t));
    assert_eq!(written_at(&out[0].1), Some(t));
    assert_eq!(row(&sb, 0, "pm-a"), format!("{master}|7|{}", t.0));
    wait_pids(&rt, &sb, 0, &pids[0]);

    // A wrong column type on the standbys' side: they cannot read it.
    ok(
        "alter type",
        sb.sql(
            0,
            "ALTER TABLE plusmoin_heartbeat ALTER COLUMN cluster_id TYPE text",
        ),
    );
    let obs = beat_until(&rt, &mut a, &all, REPLICATION, |o| {
        // A statement prepared before the change may first fail with
        // "cached plan must not change result type"; the next is re-prepared.
        o[1..].iter().all(
            |o| matches!(o, Observation::Down { reason } if reason.contains("cluster_id column is text, expected integer")),
        )
    });
    assert!(is_master(&obs[0]), "{obs:?}");
    for o in &obs[1..] {
        assert_down_with(o, &["heartbeat table's cluster_id column is text"]);
    }

    // A column dropped: the master cannot be written, so it is not usable.
    ok(
        "drop column",
        sb.sql(0, "ALTER TABLE plusmoin_heartbeat DROP COLUMN beat_at"),
    );
    let obs = beat(&rt, &mut a, &all);
    assert_down_with(&obs[0], &["cannot write the heartbeat", "beat_at"]);
    // The connection survives an SQL error.
    assert_eq!(a.connections_held(), 3);
    wait_pids(&rt, &sb, 0, &pids[0]);
}

/// Last statements of plusmoin's sessions on node `i` (what
/// pg_stat_activity shows of a session between two beats).
fn plusmoin_last_queries(sb: &Sandbox, i: usize) -> Vec<String> {
    plusmoin_sessions(sb, i, "query")
}

/// Whether one of plusmoin's sessions on node `i` last ran the statement
/// asking a slave its role and heartbeat at once.
fn ran_combined(sb: &Sandbox, i: usize) -> bool {
    plusmoin_last_queries(sb, i).iter().any(|q| {
        q.contains("pg_is_in_recovery()") && q.contains("LEFT JOIN public.plusmoin_heartbeat")
    })
}

/// With the default `is_slave_statement` a standby is asked its role and
/// heartbeat in one statement, on real servers too; whatever that
/// statement meets (no row yet, a row it cannot read, the table dropped
/// under it), the answers are those the two statements give apart.
#[test]
fn one_statement_on_standbys() {
    let sb = start(1);
    let rt = runtime();
    let timeout = Duration::from_secs(10);
    let standby = targets(&sb, &[1]);
    let all = targets(&sb, &[0, 1]);
    let master = name(&sb, 0).to_string();

    // Another instance, with a custom role statement (the two statements
    // apart), creates the table; the standby replays it with its row.
    let mut custom = settings("pm-other", timeout);
    custom.is_slave_statement = "SELECT pg_is_in_recovery() AS in_recovery".into();
    let mut other = prober(custom);
    assert!(is_master(&beat(&rt, &mut other, &targets(&sb, &[0]))[0]));
    beat_until(&rt, &mut other, &standby, REPLICATION, |o| {
        heartbeat(&o[0]).is_some()
    });
    assert!(!ran_combined(&sb, 1), "{:?}", plusmoin_last_queries(&sb, 1));

    // This instance has no row there yet: not in sync, through the one
    // statement.
    let mut p = prober(settings("pm-one", timeout));
    for _ in 0..3 {
        assert_eq!(
            beat(&rt, &mut p, &standby),
            vec![Observation::Slave { heartbeat: None }]
        );
    }
    assert!(ran_combined(&sb, 1), "{:?}", plusmoin_last_queries(&sb, 1));

    // Its row written on the master, the standby shows it.
    let t = Time::now();
    let out = rt.block_on(probe_once(&mut p, &all, t));
    assert_eq!(written_at(&out[0].1), Some(t));
    let obs = beat_until(&rt, &mut p, &standby, REPLICATION, |o| {
        heartbeat(&o[0]).is_some()
    });
    let hb = heartbeat(&obs[0]).unwrap();
    assert_eq!(hb.master_name, master);
    assert_eq!(hb.cluster_id, Some(7));
    assert_eq!(hb.written_at, t);
    assert!(ran_combined(&sb, 1), "{:?}", plusmoin_last_queries(&sb, 1));

    // A row the heartbeat read refuses (a NULL master name): the reason is
    // that read's own, column number included.
    for statement in [
        "ALTER TABLE plusmoin_heartbeat ALTER COLUMN master_name DROP NOT NULL",
        "UPDATE plusmoin_heartbeat SET master_name = NULL WHERE instance_name = 'pm-one'",
    ] {
        ok("null master name", sb.sql(0, statement));
    }
    let obs = beat_until(&rt, &mut p, &standby, REPLICATION, |o| {
        matches!(o[0], Observation::Down { .. })
    });
    assert_eq!(
        down_reason(&obs[0]),
        "the heartbeat table has an unexpected shape: \
         error deserializing column 0: a Postgres value was `NULL`"
    );

    // The table dropped under the prepared statement: the standby is a
    // slave without a heartbeat, never down.
    ok("drop table", sb.sql(0, "DROP TABLE plusmoin_heartbeat"));
    beat_until(&rt, &mut p, &standby, REPLICATION, |o| {
        o[0] == Observation::Slave { heartbeat: None }
    });
    for _ in 0..3 {
        assert_eq!(
            beat(&rt, &mut p, &standby),
            vec![Observation::Slave { heartbeat: None }]
        );
    }

    // Created again by the master's next write: the standby shows the row,
    // through the one statement again.
    let t = Time::now();
    let out = rt.block_on(probe_once(&mut p, &all, t));
    assert_eq!(written_at(&out[0].1), Some(t));
    beat_until(&rt, &mut p, &standby, REPLICATION, |o| {
        heartbeat(&o[0]).is_some_and(|h| h.written_at == t)
    });
    beat(&rt, &mut p, &standby);
    assert!(ran_combined(&sb, 1), "{:?}", plusmoin_last_queries(&sb, 1));
    assert_eq!(p.connections_held(), 1);
}

/// Every way `is_slave_statement` can answer nonsense gives its own
/// reason, and a wrong password gives an authentication reason without
/// the password in it.
#[test]
fn bad_answers_and_wrong_password() {
    let sb = start(0);
    let rt = runtime();
    let t = targets(&sb, &[0]);
    let mut p = prober(settings("pm-stmt", Duration::from_secs(10)));
    assert!(is_master(&beat(&rt, &mut p, &t)[0]));

    let cases: &[(&str, &[&str])] = &[
        (
            "SELECT NULL::boolean",
            &["is_slave_statement returned NULL"],
        ),
        (
            "SELECT 'yes'::text",
            &["is_slave_statement returned a text column"],
        ),
        (
            "SELECT true, false",
            &["is_slave_statement returned 2 columns"],
        ),
        (
            "SELECT true WHERE false",
            &["is_slave_statement returned no row"],
        ),
        (
            "SELECT true FROM generate_series(1, 2)",
            &["is_slave_statement returned 2 rows"],
        ),
        (
            "SELECT flag FROM no_such_table",
            &["is_slave_statement failed", "no_such_table", "42P01"],
        ),
        (
            "SELECT 1/0 = 1",
            &["is_slave_statement failed", "division by zero"],
        ),
        (
            "SELECT $1::boolean",
            &["is_slave_statement expects 1 parameters"],
        ),
    ];
    for (statement, needles) in cases {
        let mut s = settings("pm-stmt", Duration::from_secs(10));
        s.is_slave_statement = (*statement).into();
        ok("update", p.update_settings(s));
        let obs = beat(&rt, &mut p, &t);
        assert_down_with(&obs[0], needles);
    }
    // None of those dropped the connection; a good statement works again.
    assert_eq!(plusmoin_pids(&sb, 0).len(), 1);
    ok(
        "update",
        p.update_settings(settings("pm-stmt", Duration::from_secs(10))),
    );
    assert!(is_master(&beat(&rt, &mut p, &t)[0]));
    assert_eq!(p.connections_held(), 1);

    // A synchronous standby that is missing does not hold the heartbeat.
    ok(
        "sync",
        sb.sql(0, "ALTER SYSTEM SET synchronous_standby_names = 'nobody'"),
    );
    ok("reload", sb.sql(0, "SELECT pg_reload_conf()"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while ok("show", sb.sql(0, "SHOW synchronous_standby_names")).trim() != "nobody" {
        assert!(Instant::now() < deadline, "reload not applied");
        std::thread::sleep(Duration::from_millis(50));
    }
    let began = Instant::now();
    assert!(is_master(&beat(&rt, &mut p, &t)[0]));
    assert!(began.elapsed() < Duration::from_secs(5));

    // Changing the password drops the connection; the new one fails.
    let wrong = "Wr0ng-horse-battery";
    let mut s = settings("pm-stmt", Duration::from_secs(10));
    s.password = Secret::new(wrong);
    ok("update", p.update_settings(s));
    settle(&rt, &p);
    let obs = beat(&rt, &mut p, &t);
    assert_down_with(&obs[0], &["password authentication failed"]);
    let reason = down_reason(&obs[0]);
    assert!(!reason.contains(wrong), "{reason}");
    assert!(!reason.contains(SANDBOX_PASSWORD), "{reason}");
    assert_eq!(p.connections_held(), 0);

    // TLS required from a server without TLS: a clear refusal.
    let mut s = settings("pm-stmt", Duration::from_secs(10));
    s.sslmode = SslMode::Require;
    ok("update", p.update_settings(s));
    let obs = beat(&rt, &mut p, &t);
    assert_down_with(&obs[0], &["TLS"]);
}

/// Stopped and frozen nodes are down within the deadline while the others
/// are answered as usual; connections come back after a restart or a thaw.
#[test]
fn down_frozen_and_back() {
    let sb = start(2);
    let rt = runtime();
    let timeout = Duration::from_secs(3);
    let all = targets(&sb, &[0, 1, 2]);
    let mut p = prober(settings("pm-down", timeout));
    beat_until(&rt, &mut p, &all, REPLICATION, |o| {
        is_master(&o[0]) && o[1..].iter().all(|o| heartbeat(o).is_some())
    });
    assert_eq!(p.connections_held(), 3);
    let master_pid = plusmoin_pids(&sb, 0);

    // Stopped: down at once (the kept connection is found dead, the
    // reconnection refused), the others unaffected.
    ok("stop", sb.stop(2));
    let began = Instant::now();
    let obs = beat(&rt, &mut p, &all);
    assert!(
        began.elapsed() < Duration::from_secs(2),
        "{:?}",
        began.elapsed()
    );
    assert!(is_master(&obs[0]), "{obs:?}");
    assert!(heartbeat(&obs[1]).is_some(), "{obs:?}");
    assert_down_with(&obs[2], &["refused"]);
    assert_eq!(p.connections_held(), 2);

    // Frozen, first with a kept connection (the query hangs), then with a
    // fresh one (the startup hangs): down at the deadline, and the other
    // nodes answered in the same beat.
    ok("freeze", sb.freeze(1));
    let frozen = scopeguard(&sb, 1);
    for round in 0..2 {
        let began = Instant::now();
        let obs = beat(&rt, &mut p, &all);
        let took = began.elapsed();
        assert!(
            took >= timeout - Duration::from_millis(50),
            "round {round}: {took:?}"
        );
        assert!(
            took < timeout + Duration::from_millis(1500),
            "round {round}: {took:?}"
        );
        assert!(is_master(&obs[0]), "round {round}: {obs:?}");
        assert_eq!(
            obs[1],
            Observation::Down {
                reason: "no answer within 3s".into()
            },
            "round {round}"
        );
        assert_down_with(&obs[2], &["refused"]);
        assert_eq!(p.connections_held(), 1, "round {round}");
    }
    // The master's connection was kept through all this.
    assert_eq!(plusmoin_pids(&sb, 0), master_pid);

    // Thawed: back as a slave on a fresh connection.
    drop(frozen);
    let obs = beat_until(&rt, &mut p, &all, REPLICATION, |o| has_heartbeat(&o[1]));
    assert!(is_master(&obs[0]), "{obs:?}");

    // Restarted: reconnected.
    ok("start 2", sb.start_node(2));
    beat_until(&rt, &mut p, &all, REPLICATION, |o| {
        o[1..].iter().all(has_heartbeat)
    });
    assert_eq!(p.connections_held(), 3);

    // The master restarted between two beats: the kept connection is
    // dead, the probe reconnects within the same beat.
    ok("stop 0", sb.stop(0));
    ok("start 0", sb.start_node(0));
    let obs = beat(&rt, &mut p, &all);
    assert!(is_master(&obs[0]), "{obs:?}");
    let new_pid = plusmoin_pids(&sb, 0);
    assert_eq!(new_pid.len(), 1);
    assert_ne!(new_pid, master_pid);

    // Nodes no longer listed are forgotten.
    beat(&rt, &mut p, &all[..1]);
    assert_eq!(p.connections_held(), 1);
}

fn has_heartbeat(o: &Observation) -> bool {
    matches!(o, Observation::Slave { heartbeat: Some(_) })
}

/// Thaws node `i` when dropped, so a failing assertion never leaves a
/// frozen server behind (the sandbox's own drop must be able to stop it).
struct Thaw<'a>(&'a Sandbox, usize);

impl Drop for Thaw<'_> {
    fn drop(&mut self) {
        let _ = self.0.thaw(self.1);
    }
}

fn scopeguard(sb: &Sandbox, i: usize) -> Thaw<'_> {
    Thaw(sb, i)
}

/// Runs openssl in `dir`; panics with its output on failure.
fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = ok(
        "openssl",
        std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output(),
    );
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, and a server certificate it signed for `san`.
fn make_cert(dir: &std::path::Path, stem: &str, ca: &str, san: &str) {
    let ext = format!("{stem}.ext");
    ok(
        "write ext",
        std::fs::write(
            dir.join(&ext),
            format!("basicConstraints=CA:FALSE\nsubjectAltName={san}\n"),
        ),
    );
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{stem}.key"),
            "-out",
            &format!("{stem}.csr"),
            "-subj",
            "/CN=plusmoin-test-server",
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{stem}.csr"),
            "-CA",
            &format!("{ca}.crt"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &ext,
            "-out",
            &format!("{stem}.crt"),
        ],
    );
}

fn make_ca(dir: &std::path::Path, stem: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{stem}.key"),
            "-out",
            &format!("{stem}.crt"),
            "-days",
            "2",
            "-subj",
            &format!("/CN=plusmoin test {stem}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
}

/// Points node 0 at the server certificate `stem` and turns TLS on.
fn serve_tls(sb: &Sandbox, stem: &str) {
    let dir = sb.dir();
    let key = dir.join(format!("{stem}.key"));
    // The server wants its key private to the user it runs as.
    if nix::unistd::Uid::effective().is_root() {
        let owner = ok("postgres user", nix::unistd::User::from_name("postgres"));
        let Some(owner) = owner else {
            panic!("no postgres user");
        };
        for f in [key.clone(), dir.join(format!("{stem}.crt"))] {
            ok(
                "chown",
                nix::unistd::chown(&f, Some(owner.uid), Some(owner.gid)),
            );
        }
    }
    use std::os::unix::fs::PermissionsExt;
    ok(
        "chmod",
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)),
    );
    for statement in [
        format!(
            "ALTER SYSTEM SET ssl_cert_file = '{}'",
            dir.join(format!("{stem}.crt")).display()
        ),
        format!("ALTER SYSTEM SET ssl_key_file = '{}'", key.display()),
        "ALTER SYSTEM SET ssl = on".to_owned(),
        "SELECT pg_reload_conf()".to_owned(),
    ] {
        ok("tls setup", sb.sql(0, &statement));
    }
}

/// Whether plusmoin's session on node 0 uses TLS.
fn session_uses_tls(sb: &Sandbox) -> bool {
    let out = ok(
        "pg_stat_ssl",
        sb.sql(
            0,
            "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.application_name = 'plusmoin'",
        ),
    );
    out.trim() == "t"
}

/// sslmode as libpq means it: prefer/require encrypt without verifying,
/// verify-ca checks the chain only, verify-full the host name too.
#[test]
fn tls_modes() {
    let sb = start(0);
    let rt = runtime();
    let dir = sb.dir();
    make_ca(dir, "ca");
    make_ca(dir, "other-ca");
    // Signed by `ca`, but for another name than 127.0.0.1.
    make_cert(dir, "wrong-name", "ca", "DNS:wrong.invalid");
    make_cert(dir, "right-name", "ca", "IP:127.0.0.1");
    serve_tls(&sb, "wrong-name");

    let t = targets(&sb, &[0]);
    let with = |mode: SslMode, root: Option<&str>| {
        let mut s = settings("pm-tls", Duration::from_secs(10));
        s.sslmode = mode;
        s.sslrootcert = root.map(|r| dir.join(format!("{r}.crt")));
        s
    };
    let mut p = prober(with(SslMode::Prefer, None));
    // The reload takes a moment: wait until the session is encrypted.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(is_master(&beat(&rt, &mut p, &t)[0]));
        if session_uses_tls(&sb) {
            break;
        }
        assert!(Instant::now() < deadline, "TLS never used");
        ok("reconnect", p.update_settings(with(SslMode::Require, None)));
        settle(&rt, &p);
        ok("reconnect", p.update_settings(with(SslMode::Prefer, None)));
    }

    let cases: &[(SslMode, Option<&str>, Option<&str>)] = &[
        (SslMode::Require, None, None),
        (SslMode::VerifyCa, Some("ca"), None),
        (
            SslMode::VerifyCa,
            Some("other-ca"),
            Some("certificate verify failed"),
        ),
        // libpq: a root certificate makes require check the chain.
        (
            SslMode::Require,
            Some("other-ca"),
            Some("certificate verify failed"),
        ),
        (
            SslMode::VerifyFull,
            Some("ca"),
            Some("certificate verify failed"),
        ),
    ];
    for (mode, root, failure) in cases {
        ok("update", p.update_settings(with(*mode, *root)));
        let obs = beat(&rt, &mut p, &t);
        match failure {
            None => {
                assert!(is_master(&obs[0]), "{mode:?} {root:?}: {obs:?}");
                assert!(session_uses_tls(&sb), "{mode:?} {root:?}");
            }
            Some(needle) => {
                assert_down_with(&obs[0], &["TLS", needle]);
                assert_eq!(p.connections_held(), 0);
            }
        }
    }

    // With a certificate naming 127.0.0.1, verify-full succeeds.
    serve_tls(&sb, "right-name");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        ok("update", p.update_settings(with(SslMode::Disable, None)));
        ok(
            "update",
            p.update_settings(with(SslMode::VerifyFull, Some("ca"))),
        );
        let obs = beat(&rt, &mut p, &t);
        if is_master(&obs[0]) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "verify-full never passed: {obs:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(session_uses_tls(&sb));
}
