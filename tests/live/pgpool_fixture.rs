//! The pgpool-II fixture against a real pgpool in front of real servers:
//! pgpool's view of the nodes (pcp and `SHOW pool_nodes`), health-check
//! detaches, detach/attach, the status file across restarts, pgpool's own
//! auto_failback (the baseline plusmoin is compared with) and cleanup.

use std::time::{Duration, Instant};

use plusmoin::demo::sandbox::pgpool::{pgpool_installed, Pgpool, PgpoolOptions};
use plusmoin::demo::sandbox::Sandbox;
use plusmoin_kit::sandbox::{PgpoolExt, SandboxExt};
use plusmoin_kit::watchdog::WatchdogView;

use crate::wait_until;

/// How long pgpool may take to notice a node's change (health check every
/// second, plus a loaded 2-core machine).
const NOTICE: Duration = Duration::from_secs(30);
const UP: &[&str] = &["up", "waiting"];

fn ok<T, E: std::fmt::Display>(what: &str, r: Result<T, E>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{what}: {e}"),
    }
}

/// A sandbox with `standbys` standbys and a pgpool in front of it. The
/// sandbox is returned first so callers bind it first: it is dropped after
/// pgpool.
fn setup(standbys: usize, opts: PgpoolOptions) -> (Sandbox, Pgpool) {
    assert!(
        pgpool_installed(),
        "pgpool-II is not installed (apt-get install pgpool2)"
    );
    let sb = ok("sandbox start", Sandbox::start(standbys));
    let began = Instant::now();
    let pgpool = ok("pgpool start", Pgpool::start(&sb, opts));
    eprintln!(
        "pgpool on {} (pcp {}) in front of {} nodes started in {:?}",
        pgpool.port(),
        pgpool.pcp_port(),
        sb.len(),
        began.elapsed()
    );
    (sb, pgpool)
}

/// pcp's status of every node.
fn pcp_statuses(pgpool: &Pgpool) -> Vec<String> {
    (0..pgpool.len())
        .map(|i| ok("node_status", pgpool.node_status(i)))
        .collect()
}

/// Asserts that pgpool keeps node `id` at one of `statuses` for `period`
/// (pcp polled).
fn stays_in(pgpool: &Pgpool, id: usize, statuses: &[&str], period: Duration) {
    let mut seen = Ok(String::new());
    let changed = wait_until(period, || {
        seen = pgpool.node_status(id);
        seen.as_ref()
            .map_or(true, |s| !statuses.contains(&s.as_str()))
    });
    assert!(
        !changed,
        "node {id} left {statuses:?}: {}",
        match seen {
            Ok(s) => s,
            Err(e) => e.to_string(),
        }
    );
}

fn stays(pgpool: &Pgpool, id: usize, status: &str, period: Duration) {
    stays_in(pgpool, id, &[status], period);
}

#[test]
fn all_nodes_up_after_start_and_views_agree() {
    let (sb, pgpool) = setup(2, PgpoolOptions::default());
    let pcp = pcp_statuses(&pgpool);
    assert!(pcp.iter().all(|s| UP.contains(&s.as_str())), "pcp: {pcp:?}");
    let shown = ok("show pool_nodes", pgpool.show_pool_nodes());
    let ids: Vec<usize> = shown.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids, vec![0, 1, 2], "{shown:?}");
    assert!(shown.iter().all(|(_, s)| s == "up"), "{shown:?}");
    // Roles come from pgpool probing the servers, not from our config.
    let roles: Vec<String> = (0..sb.len())
        .map(|i| ok("node_info", pgpool.node_info(i)).role)
        .collect();
    assert_eq!(roles, vec!["primary", "standby", "standby"]);
    // The config pgpool runs with names every sandbox node by its port.
    let conf = ok("read conf", std::fs::read_to_string(pgpool.conf_file()));
    for i in 0..sb.len() {
        assert!(
            conf.contains(&format!("backend_port{i} = {}\n", sb.port(i))),
            "backend_port{i} missing"
        );
    }
    // The pcppass file is one pcp will use.
    let meta = ok("stat pcppass", std::fs::metadata(pgpool.pcppass_file()));
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
        0o600
    );
    assert!(pgpool.bin_dir().join("pcp_attach_node").is_file());
    assert!(pgpool.node_status(3).is_err(), "node 3 does not exist");
    // No watchdog here: pcp refuses (on stderr, exit 0) and we say so.
    let refused = pgpool.watchdog_info();
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.to_string().contains("watchdog is not enabled")),
        "{refused:?}"
    );
}

#[test]
fn a_stopped_standby_is_detached_by_health_check_and_stays_down() {
    let (sb, pgpool) = setup(2, PgpoolOptions::default());
    ok("stop node 2", sb.stop(2));
    ok("node 2 down", pgpool.wait_status(2, &["down"], NOTICE));
    let shown = ok("show pool_nodes", pgpool.show_pool_nodes());
    assert_eq!(
        shown,
        vec![
            (0, "up".to_owned()),
            (1, "up".to_owned()),
            (2, "down".to_owned())
        ]
    );
    // auto_failback is off: back and streaming, it stays detached.
    ok("start node 2", sb.start_node(2));
    ok("node 2 streams", sb.wait_until_streaming(2, NOTICE));
    stays(&pgpool, 2, "down", Duration::from_secs(4));
    ok("attach node 2", pgpool.attach(2));
    assert!(UP.contains(&ok("status", pgpool.node_status(2)).as_str()));
}

#[test]
fn detach_and_attach_are_confirmed_by_pgpool() {
    let (_sb, pgpool) = setup(1, PgpoolOptions::default());
    ok("detach 1", pgpool.detach(1));
    assert_eq!(ok("status", pgpool.node_status(1)), "down");
    let shown = ok("show pool_nodes", pgpool.show_pool_nodes());
    assert_eq!(shown, vec![(0, "up".to_owned()), (1, "down".to_owned())]);
    // Nothing attaches it again by itself.
    stays(&pgpool, 1, "down", Duration::from_secs(3));
    ok("attach 1", pgpool.attach(1));
    let status = ok("status", pgpool.node_status(1));
    assert!(UP.contains(&status.as_str()), "{status}");
    let shown = ok("show pool_nodes", pgpool.show_pool_nodes());
    assert_eq!(shown, vec![(0, "up".to_owned()), (1, "up".to_owned())]);
}

#[test]
fn a_detached_node_stays_down_across_a_pgpool_restart() {
    let (_sb, pgpool) = setup(2, PgpoolOptions::default());
    ok("detach 1", pgpool.detach(1));
    // By pid and start time, as in drop_leaves_no_pgpool_process: a child
    // pgpool ends by itself may see its pid reused meanwhile.
    let procs: Vec<(i32, u64)> = pgpool
        .pids()
        .into_iter()
        .filter_map(|p| Some((p, started(p)?)))
        .collect();
    assert!(!procs.is_empty());
    ok("stop", pgpool.stop());
    assert!(pgpool.pids().is_empty());
    assert!(pgpool.node_status(0).is_err(), "pcp answered while stopped");
    let left: Vec<i32> = procs
        .iter()
        .filter(|(p, at)| alive(*p) && started(*p) == Some(*at))
        .map(|(p, _)| *p)
        .collect();
    assert!(
        left.is_empty(),
        "pgpool processes left after stop: {left:?}"
    );
    let began = Instant::now();
    ok("start again", pgpool.start_again());
    eprintln!("pgpool restarted in {:?}", began.elapsed());
    assert_eq!(
        pcp_statuses(&pgpool)
            .iter()
            .map(|s| UP.contains(&s.as_str()))
            .collect::<Vec<_>>(),
        vec![true, false, true]
    );
    assert_eq!(ok("status 1", pgpool.node_status(1)), "down");
    stays(&pgpool, 1, "down", Duration::from_secs(2));
    // -D forgets it.
    ok("stop", pgpool.stop());
    ok(
        "start again discarding status",
        pgpool.start_again_discarding_status(),
    );
    let pcp = pcp_statuses(&pgpool);
    assert!(pcp.iter().all(|s| UP.contains(&s.as_str())), "{pcp:?}");
}

#[test]
fn auto_failback_reattaches_a_restarted_standby_once_it_streams() {
    let (sb, pgpool) = setup(
        1,
        PgpoolOptions {
            auto_failback: Some(Duration::from_secs(1)),
            ..PgpoolOptions::default()
        },
    );
    // sr_check sees the standby streaming under its application_name.
    let mut last = None;
    let streaming = wait_until(NOTICE, || {
        last = pgpool.node_info(1).ok();
        last.as_ref()
            .is_some_and(|i| i.replication_state == "streaming")
    });
    assert!(streaming, "sr_check never saw node 1 streaming: {last:?}");

    ok("stop node 1", sb.stop(1));
    ok("node 1 down", pgpool.wait_status(1, &["down"], NOTICE));
    // While it is down, sr_check no longer sees it streaming.
    let gone = wait_until(NOTICE, || {
        last = pgpool.node_info(1).ok();
        last.as_ref()
            .is_some_and(|i| i.replication_state != "streaming")
    });
    assert!(gone, "sr_check still sees node 1 streaming: {last:?}");
    assert_eq!(ok("status", pgpool.node_status(1)), "down");

    let began = Instant::now();
    ok("start node 1", sb.start_node(1));
    let status = ok("node 1 back", pgpool.wait_status(1, UP, NOTICE));
    eprintln!(
        "auto_failback: node 1 {status} {:?} after its restart",
        began.elapsed()
    );
    let info = ok("node_info", pgpool.node_info(1));
    assert_eq!(info.replication_state, "streaming", "{info:?}");

    // The baseline's known flaw: a standby detached on purpose comes back.
    ok("detach 1", pgpool.detach(1));
    ok(
        "auto_failback re-attaches a detached node",
        pgpool.wait_status(1, UP, NOTICE),
    );
}

#[test]
fn drop_leaves_no_pgpool_process() {
    let (_sb, pgpool) = setup(1, PgpoolOptions::default());
    // pgpool starts and ends some children by itself (health check
    // workers, a child replaced after a client leaves): whether each one
    // listed here is still alive a moment later is not the question. Each
    // process is known by its pid and start time, so a pid that ends and is
    // reused by an unrelated process is not taken for one left behind.
    let procs: Vec<(i32, u64)> = pgpool
        .pids()
        .into_iter()
        .filter_map(|p| Some((p, started(p)?)))
        .collect();
    // The main process, 4 children, pcp, the worker and health checks.
    assert!(procs.len() >= 6, "{procs:?}");
    let dir = pgpool.dir().to_path_buf();
    drop(pgpool);
    let left: Vec<i32> = procs
        .iter()
        .filter(|(p, at)| alive(*p) && started(*p) == Some(*at))
        .map(|(p, _)| *p)
        .collect();
    assert!(
        left.is_empty(),
        "pgpool processes left after drop: {left:?}"
    );
    assert!(!dir.exists(), "{} left behind", dir.display());
}

/// When `pid` started (clock ticks since boot), while it exists.
fn started(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 22; fields 3 on follow the command name's closing parenthesis.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

/// Whether `pid` is a live (not zombie) process.
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')')?.1.trim_start().chars().next())
        .is_some_and(|state| !matches!(state, 'Z' | 'X'))
}

#[test]
fn a_stopped_primary_is_detached_and_a_promoted_standby_becomes_pgpools_primary() {
    let sb = ok("sandbox start", Sandbox::start(2));
    // Long enough for the promotion below even on a loaded machine.
    let extra = "search_primary_node_timeout = 60";
    let pgpool = ok(
        "pgpool start",
        Pgpool::start_with_conf(&sb, PgpoolOptions::default(), &[extra]),
    );
    let conf = ok("read conf", std::fs::read_to_string(pgpool.conf_file()));
    assert!(conf.ends_with(&format!("{extra}\n")));
    ok("stop node 0", sb.stop(0));
    ok("node 0 down", pgpool.wait_status(0, &["down"], NOTICE));
    // No failover_command: pgpool promotes nothing by itself.
    stays_in(&pgpool, 1, UP, Duration::from_secs(1));
    assert!(ok("node 1 in recovery", sb.is_in_recovery(1)));
    ok("promote 1", sb.promote(1));
    ok("repoint 2", sb.repoint(2, 1));
    // pgpool is still searching for a primary (search_primary_node_timeout)
    // and finds the promoted one.
    let mut last = None;
    let found = wait_until(NOTICE, || {
        last = pgpool.node_info(1).ok();
        last.as_ref().is_some_and(|i| i.role == "primary")
    });
    assert!(found, "pgpool never took node 1 as primary: {last:?}");
    let shown = ok("show pool_nodes", pgpool.show_pool_nodes());
    assert_eq!(
        shown,
        vec![
            (0, "down".to_owned()),
            (1, "up".to_owned()),
            (2, "up".to_owned())
        ]
    );
}

#[test]
fn pcp_ignores_a_pcppass_file_that_is_not_0600() {
    use std::os::unix::fs::PermissionsExt;
    let (_sb, pgpool) = setup(1, PgpoolOptions::default());
    let chmod = |mode| {
        ok(
            "chmod pcppass",
            std::fs::set_permissions(pgpool.pcppass_file(), std::fs::Permissions::from_mode(mode)),
        )
    };
    chmod(0o644);
    let refused = pgpool.node_status(0);
    chmod(0o600);
    let Err(e) = refused else {
        panic!("pcp used a 0644 pcppass file: {refused:?}")
    };
    // No word about the file: pcp just logs in without a password.
    assert!(e.to_string().contains("authentication failed"), "{e}");
    assert!(UP.contains(&ok("status", pgpool.node_status(0)).as_str()));
}

/// Polls `pgpool.node_info(id)` until `check` holds; the last answer.
fn wait_info(
    pgpool: &Pgpool,
    id: usize,
    timeout: Duration,
    check: impl Fn(&plusmoin::demo::sandbox::pgpool::NodeInfo) -> bool,
) -> Result<plusmoin::demo::sandbox::pgpool::NodeInfo, String> {
    let mut last = Err("never asked".to_owned());
    let found = wait_until(timeout, || {
        last = pgpool.node_info(id).map_err(|e| e.to_string());
        last.as_ref().is_ok_and(&check)
    });
    match last {
        Ok(info) if found => Ok(info),
        other => Err(format!("{other:?}")),
    }
}

#[test]
fn with_failover_a_killed_primary_is_replaced_and_the_other_standby_follows() {
    let (sb, pgpool) = setup(
        2,
        PgpoolOptions {
            failover: true,
            ..PgpoolOptions::default()
        },
    );
    assert!(pgpool.failover_runs().is_empty());
    let began = Instant::now();
    ok("kill -9 node 0", sb.kill9(0));
    ok("node 0 down", pgpool.wait_status(0, &["down"], NOTICE));
    let promoted = wait_until(NOTICE, || sb.is_in_recovery(1).is_ok_and(|r| !r));
    assert!(
        promoted,
        "node 1 still in recovery; log: {:?}",
        pgpool.failover_runs()
    );
    let info = wait_info(&pgpool, 1, NOTICE, |i| i.role == "primary")
        .unwrap_or_else(|e| panic!("pgpool never took node 1 as primary: {e}"));
    eprintln!(
        "failover: node 1 primary in pgpool {:?} after the kill ({info:?})",
        began.elapsed()
    );
    let followed = wait_until(NOTICE, || {
        pgpool
            .follow_runs()
            .iter()
            .any(|l| l.starts_with("follow node=2 new_primary=1 "))
    });
    assert!(
        followed,
        "no follow run for node 2: {:?}",
        pgpool.follow_runs()
    );
    let failovers = pgpool.failover_runs();
    assert_eq!(
        failovers,
        vec!["failover failed=0 old_primary=0 new_main=1 action=promoted".to_owned()]
    );
    let follows = pgpool.follow_runs();
    eprintln!("follow runs: {follows:?}");
    assert!(
        follows.contains(&"follow node=2 new_primary=1 old_primary=0 result=repointed".to_owned()),
        "{follows:?}"
    );
    ok("record the new upstreams", sb.set_upstream(1, None));
    ok("record the new upstreams", sb.set_upstream(2, Some(1)));
    ok(
        "node 2 streams from node 1",
        sb.wait_until_streaming(2, NOTICE),
    );
    // A row written on the new primary reaches node 2.
    ok(
        "write on node 1",
        sb.sql(1, "CREATE TABLE after_failover AS SELECT 42 AS x"),
    );
    let replicated = wait_until(NOTICE, || {
        sb.sql(2, "SELECT x FROM after_failover")
            .is_ok_and(|o| o.trim() == "42")
    });
    assert!(replicated, "the row written on node 1 never reached node 2");
    // The follow script re-points but does not attach: pgpool keeps node 2
    // down until someone (plusmoin) attaches it.
    let status2 = ok("status 2", pgpool.node_status(2));
    eprintln!("after follow_primary: node 2 is {status2} in pgpool");
    assert_eq!(status2, "down");
    assert_eq!(pgpool.failover_runs().len(), 1);
}

/// The statuses in pgpool's status file (`pgpool_status` in its logdir,
/// one `up`/`down`/`unused` line per node, rewritten on every change):
/// readable without asking pgpool, so it does not block while a backend is
/// frozen (pcp_node_info does).
#[test]
fn with_retries_a_primary_frozen_3s_is_never_detached() {
    let sb = ok("sandbox start", Sandbox::start(1));
    let opts = PgpoolOptions {
        failover: true,
        health_check_period: Some(1),
        health_check_max_retries: 5,
        health_check_retry_delay: 1,
        ..PgpoolOptions::default()
    };
    // LOG level shows the health check's retries: proof the freeze was felt.
    let pgpool = ok(
        "pgpool start",
        Pgpool::start_with_conf(&sb, opts, &["log_min_messages = log"]),
    );
    ok("freeze node 0", sb.freeze(0));
    let mut seen = pgpool.watch_status_file(Duration::from_secs(3));
    ok("thaw node 0", sb.thaw(0));
    seen.extend(pgpool.watch_status_file(Duration::from_secs(4)));
    if let Some(why) = pgpool.down_in(&seen, 0) {
        panic!("{why}");
    }
    stays_in(&pgpool, 0, UP, Duration::from_secs(3));
    // Proof the freeze was felt. A pgpool whose health check gives up
    // after health_check_timeout retried during it; one whose health check
    // waits for the frozen server (see `health_check_waits_out_a_freeze`)
    // had a check held for most of the 3 s.
    if pgpool.health_check_waits_out_a_freeze() {
        let longest = ok("health check stats", pgpool.health_check_max_ms(0));
        eprintln!("this pgpool waits out a freeze: longest health check of node 0 {longest} ms");
        assert!(
            longest >= 1000,
            "no health check of node 0 was held by the 3 s freeze (longest {longest} ms)"
        );
    } else {
        let log = ok("read log", std::fs::read_to_string(pgpool.log_file()));
        assert!(
            log.contains("retrying"),
            "pgpool's health check never retried during the freeze; its health check lines:\n{}",
            log.lines()
                .filter(|l| l.contains("health") || l.contains("node 0"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    assert!(
        pgpool.failover_runs().is_empty(),
        "{:?}",
        pgpool.failover_runs()
    );
    assert!(
        pgpool.follow_runs().is_empty(),
        "{:?}",
        pgpool.follow_runs()
    );
    assert!(ok("node 1 in recovery", sb.is_in_recovery(1)));
}

#[test]
fn a_watchdog_cluster_elects_a_leader_forwards_pcp_and_reelects() {
    use plusmoin_kit::watchdog::PgpoolCluster;
    assert!(pgpool_installed(), "pgpool-II is not installed");
    let sb = ok("sandbox start", Sandbox::start(2));
    let began = Instant::now();
    let cluster = ok(
        "cluster start",
        PgpoolCluster::start(&sb, PgpoolOptions::default(), 3),
    );
    let leader = cluster
        .leader()
        .expect("start returned without an agreed leader");
    eprintln!(
        "watchdog: 3 members, leader {leader} after {:?}",
        began.elapsed()
    );
    // Every member has its own ports, directory and node id.
    let mut ports: Vec<u16> = cluster
        .members()
        .iter()
        .flat_map(|m| [m.port(), m.pcp_port()])
        .collect();
    ports.sort();
    ports.dedup();
    assert_eq!(ports.len(), 6);
    for (i, m) in cluster.members().iter().enumerate() {
        let id = ok(
            "read pgpool_node_id",
            std::fs::read_to_string(m.dir().join("pgpool_node_id")),
        );
        assert_eq!(id.trim(), i.to_string());
        let w = ok("watchdog_info", m.watchdog_info());
        assert_eq!(w.total_nodes, 3, "{w:?}");
        assert_eq!(w.quorum_state, "QUORUM EXIST", "{w:?}");
        assert_eq!(
            w.leader_port(),
            Some(cluster.member(leader).port()),
            "{w:?}"
        );
        let want = if i == leader { "LEADER" } else { "STANDBY" };
        assert_eq!(w.local_state(), want, "member {i}: {w:?}");
        assert_eq!(w.escalated, i == leader);
    }
    // A detach sent to a non-leader is forwarded; every member sees it.
    let other = (leader + 1) % 3;
    ok(
        "detach 2 through a standby member",
        cluster.member(other).detach(2),
    );
    for (i, m) in cluster.members().iter().enumerate() {
        ok(
            &format!("member {i} sees node 2 down"),
            m.wait_status(2, &["down"], NOTICE),
        );
    }
    // The leader stops: another member takes over.
    let stopped_at = Instant::now();
    ok("stop the leader", cluster.member(leader).stop());
    // About 1-12 s on an idle machine: room for a loaded one.
    let new_leader = ok("re-election", cluster.wait_leader(Duration::from_secs(60)));
    eprintln!(
        "watchdog: member {new_leader} leader {:?} after the leader {leader} stopped",
        stopped_at.elapsed()
    );
    assert_ne!(new_leader, leader);
    let w = ok(
        "new leader's view",
        cluster.member(new_leader).watchdog_info(),
    );
    assert_eq!(w.local_state(), "LEADER", "{w:?}");
    // The stopped member rejoins as a standby.
    ok(
        "restart the old leader",
        cluster.member(leader).start_again(),
    );
    let rejoined = wait_until(Duration::from_secs(60), || {
        cluster
            .member(leader)
            .watchdog_info()
            .is_ok_and(|w| w.local_state() == "STANDBY")
    });
    assert!(rejoined, "{:?}", cluster.member(leader).watchdog_info());
    // One round of watchdog_info may catch a member still taking in the
    // rejoin (seen under load): the claim is the leader they then agree on.
    let agreed = ok(
        "leader after the rejoin",
        cluster.wait_leader(Duration::from_secs(30)),
    );
    assert_eq!(agreed, new_leader, "the rejoined member took the lead back");
    // By pid and start time, as in drop_leaves_no_pgpool_process: a child
    // pgpool ends by itself may see its pid reused meanwhile.
    let procs: Vec<(i32, u64)> = cluster
        .members()
        .iter()
        .flat_map(|m| m.pids())
        .filter_map(|p| Some((p, started(p)?)))
        .collect();
    let dirs: Vec<_> = cluster
        .members()
        .iter()
        .map(|m| m.dir().to_path_buf())
        .collect();
    drop(cluster);
    let left: Vec<i32> = procs
        .iter()
        .filter(|(p, at)| alive(*p) && started(*p) == Some(*at))
        .map(|(p, _)| *p)
        .collect();
    assert!(
        left.is_empty(),
        "member processes left after drop: {left:?}"
    );
    assert!(dirs.iter().all(|d| !d.exists()));
}

#[test]
fn health_checks_in_another_database_can_be_refused_on_one_standby() {
    let (sb, pgpool) = setup(
        2,
        PgpoolOptions {
            health_check_database: Some("postgres".to_owned()),
            ..PgpoolOptions::default()
        },
    );
    let conf = ok("read conf", std::fs::read_to_string(pgpool.conf_file()));
    assert!(conf.contains("health_check_database = 'postgres'\n"));
    // Every node lets the checks in by default.
    stays_in(&pgpool, 2, UP, Duration::from_secs(2));
    ok(
        "refuse pgpool's checks on node 2",
        sb.hba_prepend(2, "host postgres plusmoin 127.0.0.1/32 reject"),
    );
    ok("node 2 down", pgpool.wait_status(2, &["down"], NOTICE));
    // Node 2 itself is fine and still streams; only pgpool's login is refused.
    assert!(ok("node 2 in recovery", sb.is_in_recovery(2)));
    ok("node 2 streams", sb.wait_until_streaming(2, NOTICE));
    assert!(UP.contains(&ok("status 1", pgpool.node_status(1)).as_str()));
    // A bad line is refused and the file left as it was.
    assert!(sb.hba_prepend(1, "host nonsense").is_err());
    stays_in(&pgpool, 1, UP, Duration::from_secs(2));
}

/// Runs `tool args` against `pg`, verbatim.
fn pcp(pg: &Pgpool, tool: &str, args: &[&str]) -> plusmoin::demo::sandbox::pgpool::PcpOutput {
    ok(tool, pg.pcp_raw(tool, args))
}

/// The version of the pgpool the fixtures run (`4.7.2`), from `pgpool
/// --version` (`pgpool-II version 4.7.2 (…)`).
fn pgpool_version(pg: &Pgpool) -> String {
    let out = ok(
        "pgpool --version",
        std::process::Command::new(pg.bin_dir().join("pgpool"))
            .arg("--version")
            .output(),
    );
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    text.split_whitespace()
        .skip_while(|w| *w != "version")
        .nth(1)
        .unwrap_or_else(|| panic!("no version in {text:?}"))
        .to_owned()
}

/// Whether pgpool `version` is at least `major.minor`.
fn at_least(version: &str, major: u32, minor: u32) -> bool {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0)) >= (major, minor)
}

/// Records pcp outputs of the fixtures' pgpool (the system's, or the one
/// in PLUSMOIN_TEST_PGPOOL_BIN) into tests/data/pcp: Debian's 4.3.5 at the
/// top, any other version in a folder named after it (run by hand: `cargo
/// test --test live record_pcp_outputs -- --ignored`): `<case>.stdout.txt`,
/// `<case>.stderr.txt`, `<case>.exit.txt`, and `commands.txt` naming each
/// case's command.
#[test]
#[ignore = "writes tests/data/pcp; run by hand"]
fn record_pcp_outputs() {
    use plusmoin::demo::sandbox::pgpool::PcpOutput;
    use plusmoin_kit::watchdog::PgpoolCluster;
    let sb = ok("sandbox", Sandbox::start(2));
    let version = {
        let pg = ok("pgpool", Pgpool::start(&sb, PgpoolOptions::default()));
        pgpool_version(&pg)
    };
    let mut out_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/pcp");
    if version != "4.3.5" {
        out_dir.push(&version);
    }
    ok("mkdir", std::fs::create_dir_all(&out_dir));
    let mut index = Vec::new();
    let mut save = |name: &str, tool: &str, args: &[&str], out: &PcpOutput| {
        let write = |ext: &str, text: &str| {
            let path = out_dir.join(format!("{name}.{ext}"));
            ok("write", std::fs::write(path, text));
        };
        write("stdout.txt", &out.stdout);
        write("stderr.txt", &out.stderr);
        let exit = out.exit_code.map_or("killed".to_owned(), |c| c.to_string());
        write("exit.txt", &format!("{exit}\n"));
        index.push(format!(
            "{name}: {tool} -h 127.0.0.1 -p PCP_PORT -U pgpool -w {}",
            args.join(" ")
        ));
    };
    let mut record = |name: &str, pg: &Pgpool, tool: &str, args: &[&str]| {
        save(name, tool, args, &pcp(pg, tool, args));
    };
    {
        let pg = ok("pgpool", Pgpool::start(&sb, PgpoolOptions::default()));
        let wd = "pcp_watchdog_info";
        record("watchdog_info_no_watchdog_verbose", &pg, wd, &["-v"]);
        record("watchdog_info_no_watchdog_terse", &pg, wd, &[]);
        let ni = "pcp_node_info";
        for (name, id) in [("primary_up", "0"), ("standby_up", "1")] {
            record(
                &format!("node_info_{name}_verbose"),
                &pg,
                ni,
                &["-v", "-n", id],
            );
            record(&format!("node_info_{name}_terse"), &pg, ni, &["-n", id]);
        }
        ok("detach 2", pg.detach(2));
        record(
            "node_info_standby_down_verbose",
            &pg,
            ni,
            &["-v", "-n", "2"],
        );
        record("node_info_standby_down_terse", &pg, ni, &["-n", "2"]);
        record("node_info_all_terse", &pg, ni, &["-a"]);
        record("node_info_all_verbose", &pg, ni, &["-a", "-v"]);
        record("node_info_unknown_node", &pg, ni, &["-n", "7"]);
        record("attach_node", &pg, "pcp_attach_node", &["-n", "2"]);
    }
    if at_least(&version, 4, 4) {
        // 4.4+: the delay in seconds (a unit with -v) instead of bytes.
        let pg = ok(
            "pgpool with delay_threshold_by_time",
            Pgpool::start_with_conf(
                &sb,
                PgpoolOptions::default(),
                &["delay_threshold_by_time = 10000"],
            ),
        );
        let ni = "pcp_node_info";
        let streaming = wait_until(NOTICE, || {
            pg.node_info(1)
                .is_ok_and(|i| i.replication_state == "streaming")
        });
        assert!(streaming, "pgpool never saw node 1 streaming");
        record(
            "node_info_delay_by_time_verbose",
            &pg,
            ni,
            &["-v", "-n", "1"],
        );
        record("node_info_delay_by_time_terse", &pg, ni, &["-n", "1"]);
    }
    let failover_cases = {
        let pg = ok(
            "pgpool with failover",
            Pgpool::start(
                &sb,
                PgpoolOptions {
                    failover: true,
                    ..PgpoolOptions::default()
                },
            ),
        );
        ok("kill -9 node 0", sb.kill9(0));
        // As fast as pcp goes until pgpool settled on node 1 as primary;
        // only answers that differ from the previous one are kept.
        let args = ["-a", "-v"];
        let (mut cases, mut last) = (Vec::new(), String::new());
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline && cases.len() < 10 {
            let out = pcp(&pg, "pcp_node_info", &args);
            let seen = format!("{}{}{:?}", out.stdout, out.stderr, out.exit_code);
            if seen != last {
                last = seen;
                cases.push(out);
            }
            let settled = pg.node_info(1).is_ok_and(|i| i.role == "primary")
                && pg.node_info(0).is_ok_and(|i| i.status == "down");
            if settled {
                break;
            }
        }
        cases.push(pcp(&pg, "pcp_node_info", &["-a"]));
        cases
    };
    let (after, during) = failover_cases.split_last().expect("cases");
    for (n, out) in during.iter().enumerate() {
        let name = format!("node_info_during_failover_{n:02}_all_verbose");
        save(&name, "pcp_node_info", &["-a", "-v"], out);
    }
    save(
        "node_info_after_failover_all_terse",
        "pcp_node_info",
        &["-a"],
        after,
    );
    drop(sb);
    let sb = ok("sandbox", Sandbox::start(1));
    let cluster = ok(
        "cluster",
        PgpoolCluster::start(&sb, PgpoolOptions::default(), 3),
    );
    let leader = cluster.leader().expect("leader");
    let standby = (leader + 1) % 3;
    let third = (leader + 2) % 3;
    let wd = "pcp_watchdog_info";
    for (name, m) in [("leader", leader), ("standby", standby)] {
        let pg = cluster.member(m);
        save(
            &format!("watchdog_info_{name}_verbose"),
            wd,
            &["-v"],
            &pcp(pg, wd, &["-v"]),
        );
        save(
            &format!("watchdog_info_{name}_terse"),
            wd,
            &[],
            &pcp(pg, wd, &[]),
        );
    }
    let m = cluster.member(standby);
    let ni = "pcp_node_info";
    save(
        "node_info_watchdog_standby_member_all_terse",
        ni,
        &["-a"],
        &pcp(m, ni, &["-a"]),
    );
    let dt = "pcp_detach_node";
    save(
        "detach_node_via_watchdog_standby_member",
        dt,
        &["-n", "1"],
        &pcp(m, dt, &["-n", "1"]),
    );
    ok("stop the leader", cluster.member(leader).stop());
    let (mut n, mut last) = (0, String::new());
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline && n < 10 {
        let out = pcp(cluster.member(third), wd, &["-v"]);
        if out.stdout != last {
            save(
                &format!("watchdog_info_election_{n:02}_verbose"),
                wd,
                &["-v"],
                &out,
            );
            n += 1;
            last = out.stdout.clone();
        }
        if out.stdout.contains("Status Name       : LEADER") && !out.stdout.contains("Not Set") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = pcp(cluster.member(third), wd, &[]);
    save("watchdog_info_after_reelection_terse", wd, &[], &out);
    drop(cluster);
    index.sort();
    ok(
        "index",
        std::fs::write(out_dir.join("commands.txt"), index.join("\n") + "\n"),
    );
}
