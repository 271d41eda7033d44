//! The sidecar's safety rules end-to-end, against real servers and a real
//! pgpool-II set up the production way (failover_command promoting the new
//! main node, follow_primary_command re-pointing the other standbys without
//! attaching them, health-check retries where stated): plusmoin never takes
//! pgpool's primary away, never adds a second primary, detaches nothing
//! while its own view is in doubt, stops fighting a pgpool that keeps
//! detaching a node, and only the watchdog leader's plusmoin acts.
//!
//! Every duration a test waits or watches for is derived from the timings
//! it chose (heartbeat, the sidecar's round period, pgpool's health check),
//! with generous margins: the machine is small and shared.

use crate::monitor::{names, node, Plusmoin, Timings};
use crate::pgpool::{
    plusmoin_cmd, scopeguard, section, status, wait_log, wait_pgpool, PortSquatter, LONG, UP,
};
use crate::wait_until;
use plusmoin::demo::sandbox::pgpool::{pgpool_installed, Pgpool, PgpoolOptions};
use plusmoin::demo::sandbox::Sandbox;
use plusmoin::pgpool::sidecar::RECONCILE_EVERY;
use plusmoin_kit::sandbox::{PgpoolExt, SandboxExt};
use plusmoin_kit::watchdog::PgpoolCluster;
use std::time::{Duration, Instant};

/// The production shape: real failover and follow_primary scripts, health
/// check every second, auto_failback off.
fn production(retries: u32) -> PgpoolOptions {
    PgpoolOptions {
        auto_failback: None,
        health_check_period: Some(1),
        health_check_max_retries: retries,
        health_check_retry_delay: 1,
        failover: true,
        ..PgpoolOptions::default()
    }
}

fn sandbox(standbys: usize) -> Sandbox {
    assert!(
        pgpool_installed(),
        "pgpool-II is not installed (apt-get install pgpool2)"
    );
    Sandbox::start(standbys).expect("sandbox")
}

/// The sandbox is returned first so callers bind it first: it is dropped
/// after pgpool.
fn setup(standbys: usize, opts: PgpoolOptions) -> (Sandbox, Pgpool) {
    let sb = sandbox(standbys);
    let pg = Pgpool::start(&sb, opts).expect("pgpool");
    (sb, pg)
}

fn heartbeat(t: &Timings) -> Duration {
    Duration::from_secs_f64(t.heartbeat)
}

/// How long to watch for something that must NOT happen: `beats`
/// heartbeats, and at least `rounds` of the sidecar's reconciliation
/// rounds (a round runs at most every [`RECONCILE_EVERY`] without an
/// event).
fn watch_window(t: &Timings, beats: u32, rounds: u32) -> Duration {
    (heartbeat(t) * beats).max(RECONCILE_EVERY * rounds)
}

/// Lets what must NOT happen have its chances: waits out
/// [`watch_window`], and longer while `p` has decided fewer beats since
/// than fit in it (on a loaded machine beats come late, and rounds with
/// them), not a fixed sleep.
fn watch(p: &Plusmoin, t: &Timings, beats: u32, rounds: u32) {
    let window = watch_window(t, beats, rounds);
    let want = (window.as_secs_f64() / t.heartbeat).floor() as usize;
    let since = std::time::SystemTime::now();
    let began = Instant::now();
    let decided = || {
        p.events()
            .iter()
            .filter(|e| e.kind == "plusmoin_heartbeat" && e.secs_after(since) > 0.0)
            .count()
    };
    if !wait_until(window + LONG, || {
        began.elapsed() >= window && decided() >= want
    }) {
        p.fail(&format!(
            "fewer than {want} beats in {:?}: {}",
            window + LONG,
            decided()
        ));
    }
}

/// Starts plusmoin with `t` and the `pgpool` section of `pg`; waits until
/// it sees one cluster with node 0 as master and every slave in sync.
fn start(sb: &Sandbox, pg: &Pgpool, t: &Timings) -> Plusmoin {
    let p = Plusmoin::start(sb, t, &section(pg, pg.pcppass_file()));
    in_sync(&p, sb, 0);
    p
}

/// Waits until plusmoin sees `master` as the master of one cluster with
/// every other running sandbox node its slave in sync.
fn in_sync(p: &Plusmoin, sb: &Sandbox, master: usize) {
    let m = node(sb, master);
    let want: Vec<String> = (0..sb.len())
        .filter(|i| *i != master)
        .map(|i| node(sb, i))
        .collect();
    p.wait_status("one cluster, every slave in sync", LONG, |st| {
        st["clusters"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["master"]["name"] == m.as_str() && names(&c["slaves"]) == want)
    });
}

/// plusmoin's log lines saying it attached or detached a node.
fn actions(p: &Plusmoin) -> Vec<String> {
    p.log()
        .lines()
        .filter(|l| l.contains("pgpool: ") && is_action(l))
        .map(str::to_owned)
        .collect()
}

fn is_action(l: &str) -> bool {
    ["attached node ", "detached node "]
        .iter()
        .any(|a| l.contains(a))
}

/// How many of plusmoin's action lines are `what` ("attached"/"detached")
/// of pgpool node `id`.
fn count(p: &Plusmoin, what: &str, id: usize) -> usize {
    let needle = format!("{what} node {id} ");
    actions(p)
        .iter()
        .filter(|l| l.contains(&needle) || l.ends_with(&needle[..needle.len() - 1]))
        .count()
}

/// How many pcp attaches plusmoin sent for node `id`: the confirmed ones
/// and those pgpool had not shown yet when the confirm window ended.
fn attach_attempts(p: &Plusmoin, id: usize) -> usize {
    let pid = format!("pgpool_id={id} ");
    count(p, "attached", id)
        + p.log()
            .lines()
            .filter(|l| l.contains("pgpool: attach not taken yet") && l.contains(&pid))
            .count()
}

/// The statuses in pgpool's status file (one `up`/`down` line per node):
/// readable while pcp blocks on a frozen backend.
/// The status's pgpool report.
fn report(p: &Plusmoin) -> serde_json::Value {
    p.status()["pgpool"].clone()
}

/// Kills the primary of a sandbox with 2 standbys in front of which `pg`
/// runs with `failover: true`, and waits until pgpool promoted node 1,
/// re-pointed node 2, plusmoin saw node 1 as master and node 2 in sync
/// with it, and attached node 2.
fn fail_over(sb: &Sandbox, pg: &Pgpool, p: &Plusmoin) {
    let n1 = node(sb, 1);
    sb.kill9(0).expect("kill -9 the primary");
    wait_pgpool(p, pg, 0, &["down"], "node 0 detached by pgpool");
    let promoted = wait_until(LONG, || {
        pg.node_info(1)
            .is_ok_and(|i| i.role == "primary" && i.status != "down")
    });
    if !promoted {
        p.fail(&format!(
            "pgpool never took node 1 as primary: {:?}; failovers {:?}",
            pg.node_info(1),
            pg.failover_runs()
        ));
    }
    let followed = wait_until(LONG, || {
        pg.follow_runs()
            .iter()
            .any(|l| l.starts_with("follow node=2 new_primary=1 ") && l.contains("repointed"))
    });
    if !followed {
        p.fail(&format!("no follow run for node 2: {:?}", pg.follow_runs()));
    }
    sb.set_upstream(1, None).expect("record node 1 promoted");
    sb.set_upstream(2, Some(1))
        .expect("record node 2 re-pointed");
    p.wait_event("master_up for the promoted node 1", LONG, |e| {
        e.kind == "master_up" && e.about(&n1)
    });
    // Node 2 streams from node 1 and replays its heartbeat: plusmoin, not
    // the follow script, attaches it.
    p.wait_status("node 2 in sync with node 1", LONG, |st| {
        st["clusters"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["master"]["name"] == n1.as_str() && names(&c["slaves"]) == [node(sb, 2)])
    });
    wait_pgpool(p, pg, 2, UP, "re-pointed node 2 attached");
    wait_log(p, "saying plusmoin attached node 2", |l| {
        l.contains("attached node 2")
    });
}

/// pgpool retries its health check 5 times a second apart: a primary that
/// hangs 3 s is never detached, by pgpool or by plusmoin, though plusmoin
/// sees it go and come back.
#[test]
fn primary_frozen_shorter_than_pgpools_retries_is_never_detached() {
    // plusmoin gives up on the hung primary after 1 s (so it sees it go),
    // pgpool only after its retries (5 × 1 s).
    let t = Timings {
        connect_timeout: 1.0,
        ..Timings::default()
    };
    let (sb, pg) = setup(1, production(5));
    let p = start(&sb, &pg, &t);
    let n0 = node(&sb, 0);
    wait_pgpool(&p, &pg, 0, UP, "node 0 up at start");

    sb.freeze(0).expect("freeze the primary");
    let thaw = scopeguard(|| {
        let _ = sb.thaw(0);
    });
    // Shorter than pgpool's retries (5 × 1 s) and its failover.
    let mut seen = pg.watch_status_file(Duration::from_secs(3));
    drop(thaw);
    let down = p.wait_event("master_down for the hung primary", LONG, |e| {
        e.kind == "master_down" && e.about(&n0)
    });
    let down_at = down.payload.clone();
    let mut up = false;
    let back = wait_until(LONG, || {
        seen.push(pg.status_file_lines());
        up = p
            .events()
            .iter()
            .skip_while(|e| !(e.kind == "master_down" && e.about(&n0)))
            .any(|e| e.kind == "master_up" && e.about(&n0));
        up
    });
    if !back {
        p.fail(&format!("no master_up for node 0 after {down_at}"));
    }
    // A few more rounds with the primary back: plusmoin leaves it be.
    seen.extend(pg.watch_status_file(watch_window(&t, 8, 3)));
    if let Some(why) = pg.down_in(&seen, 0) {
        p.fail(&why);
    }
    assert!(UP.contains(&status(&pg, 0).as_str()), "{}", status(&pg, 0));
    assert!(
        pg.failover_runs().is_empty(),
        "failover ran: {:?}",
        pg.failover_runs()
    );
    let log = p.log();
    assert!(
        !log.contains("detached node 0"),
        "plusmoin detached pgpool's primary: {log}"
    );
}

/// pgpool fails over (failover_command promotes node 1, follow_primary
/// re-points node 2 and leaves it down); plusmoin follows pgpool's new
/// primary and attaches node 2 once it replays node 1 — and sends no pcp
/// command pgpool would reverse.
#[test]
fn primary_killed_pgpool_fails_over_plusmoin_follows_and_reattaches_the_repointed_standby() {
    let t = Timings::default();
    let (sb, pg) = setup(2, production(0));
    let p = start(&sb, &pg, &t);
    wait_pgpool(&p, &pg, 2, UP, "node 2 up at start");

    fail_over(&sb, &pg, &p);
    // Some more rounds: nothing undone, nothing redone.
    watch(&p, &t, 8, 3);
    assert_eq!(
        pg.failover_runs(),
        vec!["failover failed=0 old_primary=0 new_main=1 action=promoted".to_owned()]
    );
    let shown = pg.show_pool_nodes().expect("SHOW pool_nodes");
    assert_eq!(shown[0].1, "down", "{shown:?}");
    assert_eq!(shown[1].1, "up", "{shown:?}");
    assert_eq!(shown[2].1, "up", "{shown:?}");
    let lines = actions(&p);
    let bad = count(&p, "detached", 0) + count(&p, "detached", 1) + count(&p, "attached", 0);
    assert_eq!(bad, 0, "plusmoin fought pgpool's failover: {lines:#?}");
    assert_eq!(count(&p, "attached", 2), 1, "{lines:#?}");
    assert!(
        count(&p, "detached", 2) == 0 || pg.follow_runs().len() > 1,
        "plusmoin detached node 2 though pgpool's follow had it down: {lines:#?}"
    );
}

/// After a failover the old primary comes back as a primary: pgpool has
/// another one, so plusmoin never attaches it, and warns (log and status).
#[test]
fn old_primary_started_again_as_a_primary_is_never_attached() {
    let t = Timings::default();
    let (sb, pg) = setup(2, production(0));
    let p = start(&sb, &pg, &t);
    let n0 = node(&sb, 0);
    fail_over(&sb, &pg, &p);

    sb.start_node(0).expect("start the old primary again");
    assert!(
        !sb.is_in_recovery(0).expect("node 0 answers"),
        "node 0 came back a standby"
    );
    let line = wait_log(&p, "warning that node 0 is a second primary", |l| {
        l.contains("WARN") && l.contains(&n0) && l.contains("second primary")
    });
    assert!(line.contains("pgpool_id=0"), "{line}");
    p.wait_status("the second primary among the pgpool remarks", LONG, |st| {
        st["pgpool"]["remarks"][n0.as_str()]
            .as_str()
            .is_some_and(|r| r.contains("second primary"))
    });
    // Several heartbeats and rounds: pgpool keeps it down.
    let window = watch_window(&t, 10, 4);
    let mut last = String::new();
    let attached = wait_until(window, || {
        last = status(&pg, 0);
        last != "down"
    });
    assert!(!attached, "pgpool shows node 0 {last}:\n{}", p.log());
    assert_eq!(
        count(&p, "attached", 0),
        0,
        "plusmoin attached a second primary: {:#?}",
        actions(&p)
    );
    assert_eq!(pg.node_info(1).expect("node 1").role, "primary");
}

/// pgpool's health check (in another database) keeps failing on a standby
/// plusmoin sees in sync: plusmoin attaches it, pgpool detaches it again,
/// and plusmoin backs off, doubling from one heartbeat.
#[test]
fn standby_pgpool_keeps_detaching_is_backed_off() {
    // A heartbeat of 1 s so the back-off outgrows the round period soon.
    let t = Timings {
        heartbeat: 1.0,
        max_sync_delay: 4.0,
        recover_sync_delay: 2.0,
        ..Timings::default()
    };
    let (sb, pg) = setup(
        1,
        PgpoolOptions {
            health_check_database: Some("postgres".to_owned()),
            ..production(0)
        },
    );
    let p = start(&sb, &pg, &t);
    let n1 = node(&sb, 1);
    wait_pgpool(&p, &pg, 1, UP, "node 1 up at start");
    assert_eq!(attach_attempts(&p, 1), 0);

    let began = Instant::now();
    sb.hba_prepend(1, "host postgres all 127.0.0.1/32 reject")
        .expect("refuse pgpool's health check on node 1");
    let beats = 30;
    let window = heartbeat(&t) * beats;
    let mut backing_off = None;
    while began.elapsed() < window {
        let r = report(&p);
        if backing_off.is_none() && r["backing_off"].get(n1.as_str()).is_some() {
            backing_off = Some(r);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let attempts = attach_attempts(&p, 1);
    // The k-th attach is followed by a back-off of heartbeat × 2^(k-1)
    // before the next one: n attaches need (2^(n-1) - 1) heartbeats. All
    // of them came after `began` (pgpool had to detach it first).
    let elapsed = began.elapsed().as_secs_f64() / t.heartbeat;
    let max = 1 + (elapsed + 1.0).log2().floor() as usize;
    let lines = actions(&p);
    eprintln!("back-off: {attempts} attaches of node 1 in {elapsed:.1} heartbeats (bound {max})");
    assert!(
        attempts >= 2,
        "pgpool never detached node 1 again after plusmoin attached it: {lines:#?}"
    );
    assert!(
        attempts <= max,
        "{attempts} attaches of node 1 in {elapsed:.1} heartbeats (at most {max} with the back-off): {lines:#?}"
    );
    // Still plusmoin sees it in sync: it is pgpool that refuses it.
    assert!(
        names(&p.status()["clusters"][0]["slaves"]).contains(&n1),
        "{:#}",
        p.status()
    );
    let line = wait_log(&p, "about the back-off", |l| {
        l.contains("pgpool detached it again while plusmoin saw it in sync")
    });
    assert!(
        line.contains(&n1) && line.contains("plusmoin stops attaching it for"),
        "{line}"
    );
    let r = backing_off.unwrap_or_else(|| {
        p.fail(&format!(
            "status never showed node 1 backing off; last: {:#}",
            report(&p)
        ))
    });
    assert!(r["acting"] == true, "{r:#}");
}

/// plusmoin loses the primary (its logins refused there) while pgpool
/// still reaches every node: its view is in doubt, it detaches nothing —
/// not pgpool's primary, not a standby it lost too (standby 2, cut off
/// from plusmoin the same way), not the standby it still sees (standby 1:
/// a slave whose master is gone stays a slave to plusmoin).
#[test]
fn cut_off_from_the_primary_only_detaches_nothing() {
    let t = Timings::default();
    let (sb, pg) = setup(
        2,
        PgpoolOptions {
            health_check_database: Some("postgres".to_owned()),
            // Retries and a health-check timeout as production pgpools
            // have: a check that is merely slow on a loaded machine must
            // not make pgpool itself detach a node (seen under a CPU hog
            // with 2 s), which this test would take for plusmoin's doing.
            health_check_timeout: 10,
            ..production(2)
        },
    );
    let p = start(&sb, &pg, &t);
    let (n0, n2) = (node(&sb, 0), node(&sb, 2));
    wait_pgpool(&p, &pg, 2, UP, "node 2 up at start");
    let before = p.events().len();

    for i in [0, 2] {
        sb.hba_prepend(i, "host plusmoin plusmoin 127.0.0.1/32 reject")
            .expect("refuse plusmoin");
        sb.sql(
            i,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'plusmoin'",
        )
        .expect("drop plusmoin's sessions");
    }
    p.wait_event(
        "master_down for the primary plusmoin cannot reach",
        LONG,
        |e| e.kind == "master_down" && e.about(&n0),
    );
    p.wait_event(
        "slave_down for standby 2 plusmoin cannot reach",
        LONG,
        |e| e.kind == "slave_down" && e.about(&n2),
    );
    wait_log(&p, "saying plusmoin disagrees with pgpool", |l| {
        l.contains("disagrees with pgpool") && l.contains(&n0)
    });
    let window = watch_window(&t, 10, 4);
    let mut last = Vec::new();
    let left = wait_until(window, || {
        last = (0..sb.len()).map(|i| status(&pg, i)).collect();
        !last.iter().all(|s| UP.contains(&s.as_str()))
    });
    // pgpool's own health check may detach a node (its failover log says
    // so): that is pgpool's doing, not the claim here.
    if left && pg.failover_runs().is_empty() {
        p.fail(&format!("pgpool lost a node: {last:?}"));
    }
    let lines = actions(&p);
    assert!(
        lines.is_empty(),
        "plusmoin acted on a view in doubt: {lines:#?}"
    );
    wait_log(&p, "saying its view of standby 2 is in doubt", |l| {
        l.contains("its view is in doubt") && l.contains(&n2)
    });
    let r = report(&p);
    assert!(
        r["remarks"][n0.as_str()]
            .as_str()
            .is_some_and(|s| s.contains("disagrees with pgpool")),
        "{r:#}"
    );
    assert!(
        r["remarks"][n2.as_str()]
            .as_str()
            .is_some_and(|s| s.contains("in doubt")),
        "{r:#}"
    );

    // plusmoin is let in again (first match wins): it sees the cluster.
    // Standby 2 first: once plusmoin reaches the primary again, a standby
    // still lost to it would rightly be detached.
    for i in [2, 0] {
        sb.hba_prepend(i, "host plusmoin plusmoin 127.0.0.1/32 scram-sha-256")
            .expect("let plusmoin in");
    }
    let up = wait_until(LONG, || {
        p.events()[before..]
            .iter()
            .any(|e| e.kind == "master_up" && e.about(&n0))
    });
    if !up {
        p.fail("no master_up for node 0 once plusmoin is let in again");
    }
    in_sync(&p, &sb, 0);
    // plusmoin detached nothing. (Should pgpool's own health check have
    // detached a standby, plusmoin, reaching the primary again, rightly
    // attaches it back: attaches are not the question here.)
    let detached: Vec<String> = actions(&p)
        .into_iter()
        .filter(|l| l.contains("detached node "))
        .collect();
    assert!(detached.is_empty(), "{detached:#?}");
    let statuses: Vec<String> = (0..sb.len()).map(|i| status(&pg, i)).collect();
    let failovers = pg.failover_runs();
    assert!(
        statuses.iter().all(|s| UP.contains(&s.as_str())) || !failovers.is_empty(),
        "a node is out of pgpool and pgpool did not fail it over itself: {statuses:?}"
    );
    if !failovers.is_empty() {
        eprintln!(
            "note: pgpool's own health check failed a node over: {failovers:?}; {statuses:?}"
        );
    }
}

/// Three pgpool watchdog members, one plusmoin beside each: only the
/// leader's plusmoin acts; when the leader pgpool stops, the new leader's
/// plusmoin takes over.
#[test]
fn watchdog_only_the_leaders_plusmoin_acts_holds_are_shared_and_a_new_leader_takes_over() {
    let sb = sandbox(2);
    let cluster = PgpoolCluster::start(&sb, production(0), 3).expect("watchdog cluster");
    let leader = cluster.leader().expect("a leader");
    let instances = ["wd0", "wd1", "wd2"];
    let ps: Vec<Plusmoin> = (0..3)
        .map(|i| {
            let t = Timings {
                instance_name: instances[i],
                ..Timings::default()
            };
            let m = cluster.member(i);
            Plusmoin::start(&sb, &t, &section(m, m.pcppass_file()))
        })
        .collect();
    for p in &ps {
        in_sync(p, &sb, 0);
    }
    let n2 = node(&sb, 2);
    let acting = |p: &Plusmoin, want: bool, what: &str| {
        p.wait_status(what, LONG, |st| st["pgpool"]["acting"] == want);
    };
    for (i, p) in ps.iter().enumerate() {
        acting(
            p,
            i == leader,
            &format!("acting={} on member {i}", i == leader),
        );
    }
    let lead = cluster.member(leader);
    wait_pgpool(&ps[leader], lead, 2, UP, "node 2 up at start");

    let bounce = |pg: &Pgpool, p: &Plusmoin| {
        sb.stop(2).expect("stop standby 2");
        wait_pgpool(p, pg, 2, &["down"], "node 2 detached");
        sb.start_node(2).expect("start standby 2");
        wait_pgpool(p, pg, 2, UP, "node 2 attached again");
    };
    bounce(lead, &ps[leader]);
    wait_log(
        &ps[leader],
        "saying the leader's plusmoin attached node 2",
        |l| l.contains("attached node 2"),
    );
    // A few rounds: nothing more.
    watch(&ps[leader], &Timings::default(), 6, 2);
    assert_eq!(
        count(&ps[leader], "attached", 2),
        1,
        "{:#?}",
        actions(&ps[leader])
    );
    for (i, p) in ps.iter().enumerate().filter(|(i, _)| *i != leader) {
        assert!(
            actions(p).is_empty(),
            "member {i}'s plusmoin acted: {:#?}",
            actions(p)
        );
        wait_log(p, "saying it is not the leader's plusmoin", |l| {
            l.contains("not the watchdog leader")
        });
        assert!(report(p)["acting"] == false, "{:#}", report(p));
    }

    // A hold placed through a follower's plusmoin is honoured by the
    // leader's: node 1 is detached and stays out while all run, and a
    // release through the same follower brings it back.
    let follower = (0..3).find(|&i| i != leader).expect("a follower");
    let n1 = node(&sb, 1);
    let out = plusmoin_cmd(&ps[follower], &["hold", &n1]);
    assert!(
        out.status.success(),
        "hold through member {follower}: {out:?}"
    );
    wait_pgpool(
        &ps[leader],
        lead,
        1,
        &["down"],
        "held node 1 detached by the leader's plusmoin",
    );
    for p in &ps {
        p.wait_status("the hold shown by every plusmoin", LONG, |st| {
            st["holds"][0]["node"] == n1.as_str()
                && st["holds"][0]["placed_by"]
                    .as_str()
                    .is_some_and(|b| b.contains(instances[follower]))
        });
    }
    let held_for = watch_window(&Timings::default(), 6, 2);
    let left = wait_until(held_for, || status(lead, 1) != "down");
    assert!(!left, "held node 1 came back: {}", status(lead, 1));
    assert!(
        ps.iter()
            .enumerate()
            .all(|(i, p)| i == leader || actions(p).is_empty()),
        "only the leader's plusmoin acts on holds"
    );
    let out = plusmoin_cmd(&ps[follower], &["release", &n1]);
    assert!(
        out.status.success(),
        "release through member {follower}: {out:?}"
    );
    wait_pgpool(&ps[leader], lead, 1, UP, "released node 1 attached again");

    // The leader pgpool stops; hold its pcp port so no other test's pgpool
    // takes it for the old leader's plusmoin.
    lead.stop().expect("stop the leader pgpool");
    let _squatter = PortSquatter::bind(lead.pcp_port());
    let new = cluster
        .wait_leader(LONG)
        .unwrap_or_else(|e| ps[leader].fail(&format!("no new leader: {e}")));
    assert_ne!(new, leader);
    acting(&ps[new], true, "the new leader's plusmoin acting");
    let before: Vec<usize> = ps.iter().map(|p| actions(p).len()).collect();
    bounce(cluster.member(new), &ps[new]);
    // The new leader's plusmoin acts on the bounce: it detaches or
    // re-attaches node 2 (right after an election the new leader pgpool
    // sometimes shows the standby down or up on its own before plusmoin's
    // round, so which of the two it had to do varies).
    wait_log(
        &ps[new],
        "saying the new leader's plusmoin acted on node 2",
        |l| is_action(l) && l.contains("node 2 "),
    );
    assert!(
        count(&ps[new], "attached", 2) <= 1,
        "{:#?}",
        actions(&ps[new])
    );
    for (i, p) in ps.iter().enumerate().filter(|(i, _)| *i != new) {
        assert_eq!(
            actions(p).len(),
            before[i],
            "member {i}'s plusmoin acted after the re-election: {:#?}",
            actions(p)
        );
    }
    // pgpool may show it up before plusmoin sees it in sync again.
    ps[new].wait_status("standby 2 a slave again", LONG, |st| {
        names(&st["clusters"][0]["slaves"]).contains(&n2)
    });
}
