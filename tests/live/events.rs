//! The event-driven monitor on real servers: each node on its own, a
//! dropped connection is news at once, lag as this beat's write minus the
//! slave's row, signals obeyed at once, start and reload without false
//! events, and lost nodes tried again between beats.
//!
//! Timing bounds follow from the settings each test chose: where a test
//! says "well before the next beat", its heartbeat is long enough that a
//! beat-bound implementation could only pass by luck.

use crate::monitor::{healthy, names, node, Plusmoin, Timings};
use crate::wait_until;
use plusmoin::demo::sandbox::Sandbox;
use plusmoin_kit::sandbox::SandboxExt;
use std::time::{Duration, Instant, SystemTime};

const LONG: Duration = Duration::from_secs(30);

fn timings(heartbeat: f64, connect_timeout: f64, max: f64, recover: f64) -> Timings {
    Timings {
        heartbeat,
        connect_timeout,
        max_sync_delay: max,
        recover_sync_delay: recover,
        ..Timings::default()
    }
}

/// Waits until `n` plusmoin_heartbeat triggers ran after `t`: that many
/// beats were decided since.
fn beats_after(p: &Plusmoin, t: SystemTime, n: usize) {
    let ok = wait_until(LONG, || {
        p.events()
            .iter()
            .filter(|e| e.kind == "plusmoin_heartbeat" && e.secs_after(t) > 0.0)
            .count()
            >= n
    });
    if !ok {
        p.fail(&format!("fewer than {n} beats decided in {LONG:?}"));
    }
}

fn count(p: &Plusmoin, kind: &str, n: &str) -> usize {
    p.changes()
        .iter()
        .filter(|e| e.kind == kind && e.about(n))
        .count()
}

#[test]
fn a_killed_or_stopped_standby_is_down_at_once_not_at_the_next_beat() {
    // Beats 30 s apart: a beat-bound plusmoin would take 15 s on average,
    // and be within the 3 s bound below by luck one time in ten; 3 s leaves
    // a loaded machine room for the probe and the recording trigger. (A
    // standby that shows no row yet at the first decision is tried again
    // between beats, so the cluster is healthy long before the next beat.)
    let sb = Sandbox::start(2).expect("sandbox");
    let p = Plusmoin::start(&sb, &timings(30.0, 2.0, 60.0, 30.0), "");
    healthy(&p, &sb);
    let (n1, n2) = (node(&sb, 1), node(&sb, 2));

    let t = SystemTime::now();
    sb.kill9(1).expect("kill standby 1");
    let e = p.wait_event("slave_down for the killed standby", LONG, |e| {
        e.kind == "slave_down" && e.about(&n1)
    });
    let took = e.secs_after(t);
    assert!(took < 3.0, "slave_down {took:.2} s after kill -9");
    assert!(
        e.payload["trigger"]["reason"]
            .as_str()
            .is_some_and(|r| !r.is_empty()),
        "the event says why: {}",
        e.payload
    );

    let t = SystemTime::now();
    sb.stop(2).expect("stop standby 2");
    let e = p.wait_event("slave_down for the stopped standby", LONG, |e| {
        e.kind == "slave_down" && e.about(&n2)
    });
    let took = e.secs_after(t);
    // pg_ctl stop returns once the server is gone; plusmoin heard earlier.
    assert!(took < 3.0, "slave_down {took:.2} s after pg_ctl stop began");
}

#[test]
fn a_frozen_server_delays_no_other_nodes_news() {
    // connect_timeout 8 s: a beat that waited for every probe would hold
    // standby 2's news back by 6.5 s or more, far past the 3 s bounds
    // below (which leave a loaded machine room).
    let sb = Sandbox::start(2).expect("sandbox");
    let p = Plusmoin::start(&sb, &timings(1.0, 8.0, 10.0, 5.0), "");
    healthy(&p, &sb);
    let (n1, n2) = (node(&sb, 1), node(&sb, 2));

    sb.freeze(1).expect("freeze standby 1");
    let _thaw = Thaw(&sb, 1);
    // Let a probe of the frozen one be out.
    std::thread::sleep(Duration::from_millis(1500));
    let t = SystemTime::now();
    sb.stop(2).expect("stop standby 2");
    let e = p.wait_event("slave_down for standby 2", LONG, |e| {
        e.kind == "slave_down" && e.about(&n2)
    });
    let took = e.secs_after(t);
    assert!(
        took < 3.0,
        "slave_down {took:.2} s after the stop, with another node frozen"
    );

    // Back while the other is still frozen: seen at once too.
    sb.start_node(2).expect("start standby 2");
    let t = SystemTime::now();
    let e = p.wait_event("slave_up for standby 2", LONG, |e| {
        e.kind == "slave_up" && e.about(&n2)
    });
    let took = e.secs_after(t);
    assert!(
        took < 3.0,
        "slave_up {took:.2} s after it accepted connections"
    );
    // The frozen one is down at its own deadline.
    p.wait_event("slave_down for the frozen standby", LONG, |e| {
        e.kind == "slave_down" && e.about(&n1)
    });
}

#[test]
fn a_closed_connection_is_probed_at_once_and_a_server_that_answers_gives_no_event() {
    let sb = Sandbox::start(1).expect("sandbox");
    let p = Plusmoin::start(&sb, &timings(10.0, 2.0, 30.0, 15.0), "");
    healthy(&p, &sb);
    let n1 = node(&sb, 1);
    p.wait_event("plusmoin_up", LONG, |e| e.kind == "plusmoin_up");
    let before = p.changes().len();
    let kills = sb
        .sql(
            1,
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE application_name = 'plusmoin'",
        )
        .expect("terminate plusmoin's session");
    assert_eq!(kills.trim(), "1", "plusmoin kept one connection");
    // The cause in the line tells this probe from a beat's; the wait stays
    // under the 10 s heartbeat but leaves a loaded machine room.
    let seen = wait_until(Duration::from_secs(8), || {
        p.log().lines().any(|l| {
            l.contains("probed")
                && l.contains(&format!("node={n1}"))
                && l.contains("cause=\"connection closed\"")
        })
    });
    if !seen {
        p.fail("no probe at once after the connection closed");
    }
    // That probe answered (a "probed" line is an answer, not "node down"),
    // and the beat after it is decided before anything is asserted.
    let probed_at = SystemTime::now();
    p.wait_event("the next beat's plusmoin_heartbeat", LONG, |e| {
        e.kind == "plusmoin_heartbeat" && e.secs_after(probed_at) > 0.0
    });
    let after: Vec<String> = p.changes()[before..]
        .iter()
        .map(|e| e.kind.clone())
        .collect();
    assert!(after.is_empty(), "no event: {after:?}");
}

/// plusmoin's sessions on server `i`.
fn sessions(sb: &Sandbox, i: usize) -> Vec<String> {
    sb.sql(
        i,
        "SELECT pid FROM pg_stat_activity WHERE application_name = 'plusmoin' ORDER BY 1",
    )
    .map(|s| s.lines().map(String::from).collect())
    .unwrap_or_default()
}

/// Continues a stopped process, also when the test fails.
struct Cont(u32);
impl Drop for Cont {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0 as i32),
            nix::sys::signal::Signal::SIGCONT,
        );
    }
}

/// README "Failure handling", a server restarts between two beats. plusmoin
/// is stopped (SIGSTOP) while the master and the standby restart, so from
/// its side both restarts fall between two beats: every connection it kept
/// is dead when it next uses one, and each server answers again. The probe
/// replaces the dead connection within the same probe, so there is no
/// event at all. connect_timeout (10 s) and max_sync_delay (30 s) are far
/// above what a restart and a slow probe take here: the only way to a
/// `slave_down` or `master_down` is a probe that reports the dead
/// connection itself as the server being down.
#[test]
fn servers_restarted_between_two_beats_give_no_event() {
    let sb = Sandbox::start(1).expect("sandbox");
    let p = Plusmoin::start(&sb, &timings(0.5, 10.0, 30.0, 15.0), "");
    healthy(&p, &sb);
    p.wait_event("plusmoin_up", LONG, |e| e.kind == "plusmoin_up");
    let before = p.changes().len();
    let old = [sessions(&sb, 0), sessions(&sb, 1)];
    assert!(
        old.iter().all(|s| !s.is_empty()),
        "a kept connection each: {old:?}"
    );
    // Every thread stopped before the servers go: a worker still running
    // would see the connections end as it happens, not after.
    let cont = Cont(p.pid());
    plusmoin_kit::sandbox::stop_process(p.pid() as i32).expect("SIGSTOP plusmoin");
    sb.stop(0).expect("stop master");
    sb.start_node(0).expect("start master");
    sb.stop(1).expect("stop standby");
    sb.start_node(1).expect("start standby");
    drop(cont);
    // The positive sign: both servers have a new plusmoin session.
    let fresh = wait_until(LONG, || {
        (0..2).all(|i| sessions(&sb, i).iter().any(|pid| !old[i].contains(pid)))
    });
    if !fresh {
        p.fail("plusmoin did not reconnect to both restarted servers");
    }
    // Two beats begun after that are decided before anything is asserted.
    let reconnected = SystemTime::now();
    if !wait_until(LONG, || {
        p.events()
            .iter()
            .filter(|e| e.kind == "plusmoin_heartbeat" && e.secs_after(reconnected) > 0.0)
            .count()
            >= 2
    }) {
        p.fail("no two beats after the reconnection");
    }
    let after: Vec<String> = p.changes()[before..]
        .iter()
        .map(|e| format!("{} {}", e.kind, e.payload["trigger"]["name"]))
        .collect();
    if !after.is_empty() {
        p.fail(&format!("events for servers that answered: {after:?}"));
    }
    assert!(!p.log().contains("node down"), "{}", p.log());
}

#[test]
fn replay_paused_is_out_of_sync_once_max_sync_delay_has_passed_not_a_beat_later() {
    // heartbeat 3 s, max_sync_delay 2 s: the first beat after the pause
    // writes a row the slave does not show, 3 s after the one it shows, so
    // it is out of sync at that beat (within 3 s). Measured against the
    // previous beat's write it would take one more beat (3 to 6 s).
    let sb = Sandbox::start(1).expect("sandbox");
    let p = Plusmoin::start(&sb, &timings(3.0, 2.0, 2.0, 1.0), "");
    healthy(&p, &sb);
    let n1 = node(&sb, 1);
    // A healthy slave shows no lag, beat after beat, though the heartbeat
    // is longer than max_sync_delay: two beats decided since, not a fixed
    // sleep.
    beats_after(&p, SystemTime::now(), 2);
    assert_eq!(count(&p, "slave_down", &n1), 0, "no flap while healthy");
    let lag = p.status()["clusters"][0]["slaves"][0]["lag"].as_f64();
    assert!(lag.is_some_and(|l| l < 0.5), "healthy lag {lag:?}");

    let t = SystemTime::now();
    sb.sql(1, "SELECT pg_wal_replay_pause()").expect("pause");
    let e = p.wait_event("slave_down for the paused standby", LONG, |e| {
        e.kind == "slave_down" && e.about(&n1)
    });
    let took = e.secs_after(t);
    assert!(
        took <= 3.3,
        "slave_down {took:.2} s after the pause (heartbeat 3 s)"
    );
}

/// A standby that shows no heartbeat row yet at the first decision (here:
/// replay paused since before plusmoin started, as on a loaded machine
/// where the row is not replayed within the first read) is clusterless; it
/// is tried again between beats like a lost node, so it joins its cluster
/// within moments of replaying the row, not a whole heartbeat later.
#[test]
fn a_standby_clusterless_at_start_joins_between_beats() {
    let sb = Sandbox::start(1).expect("sandbox");
    let n1 = node(&sb, 1);
    sb.sql(1, "SELECT pg_wal_replay_pause()").expect("pause");
    let _resume = Resume(&sb, 1);
    // Beats 30 s apart: waiting for the next one would take ~30 s.
    let p = Plusmoin::start(&sb, &timings(30.0, 3.0, 6.0, 3.0), "");
    p.wait_status("the standby clusterless", LONG, |st| {
        st["clusterless"][0]["name"] == n1.as_str()
            && st["clusters"][0]["master"]["name"] == node(&sb, 0).as_str()
    });
    let t = SystemTime::now();
    sb.sql(1, "SELECT pg_wal_replay_resume()").expect("resume");
    let e = p.wait_event("slave_up for the standby", LONG, |e| {
        e.kind == "slave_up" && e.about(&n1)
    });
    let took = e.secs_after(t);
    // Retries start every retry_interval (0.25 s); 5 s leaves a loaded
    // machine room and is far from the 30 s beat.
    assert!(took < 5.0, "slave_up {took:.2} s after replay resumed");
}

/// Resumes replay on node `.1` however the test ends.
struct Resume<'a>(&'a Sandbox, usize);

impl Drop for Resume<'_> {
    fn drop(&mut self) {
        let _ = self.0.sql(self.1, "SELECT pg_wal_replay_resume()");
    }
}

#[test]
fn sigterm_is_obeyed_at_once_while_a_probe_hangs() {
    let sb = Sandbox::start(1).expect("sandbox");
    let mut p = Plusmoin::start(&sb, &timings(1.0, 30.0, 60.0, 30.0), "");
    healthy(&p, &sb);
    sb.freeze(1).expect("freeze standby 1");
    let _thaw = Thaw(&sb, 1);
    // A beat or two: a probe of the frozen server is out (for up to 30 s).
    std::thread::sleep(Duration::from_millis(2500));
    let t = Instant::now();
    assert!(p.terminate(), "clean exit: {}", p.log());
    let took = t.elapsed();
    // Far below what waiting for the hung probe (30 s) would take; room
    // for a loaded machine.
    assert!(
        took < Duration::from_secs(8),
        "took {took:?} to obey SIGTERM"
    );
}

#[test]
fn a_server_hanging_at_start_does_not_make_the_other_slaves_start_out_of_sync() {
    // connect_timeout 3 s > max_sync_delay 2 s: a start that read the
    // slaves long after the masters wrote would find them behind.
    let sb = Sandbox::start(2).expect("sandbox");
    sb.freeze(1).expect("freeze standby 1");
    let _thaw = Thaw(&sb, 1);
    let p = Plusmoin::start(&sb, &timings(1.0, 3.0, 2.0, 1.0), "");
    let n2 = node(&sb, 2);
    // The first decision's status, as seen, not a later one read again.
    let st = p.wait_status("the first decision", LONG, |st| !st.is_null());
    assert_eq!(
        names(&st["clusters"][0]["slaves"]),
        std::slice::from_ref(&n2),
        "standby 2 in sync from the start: {st:#}"
    );
    // Three beats decided after the first one, not a fixed sleep.
    beats_after(&p, SystemTime::now(), 3);
    if count(&p, "slave_down", &n2) + count(&p, "slave_up", &n2) > 0 {
        p.fail("standby 2 flapped at start");
    }
}

#[test]
fn reloading_a_new_instance_name_loses_no_slave() {
    let sb = Sandbox::start(2).expect("sandbox");
    let t = timings(1.0, 2.0, 3.0, 1.5);
    let p = Plusmoin::start(&sb, &t, "");
    healthy(&p, &sb);
    p.wait_event("plusmoin_up", LONG, |e| e.kind == "plusmoin_up");
    let before = p.changes().len();
    let renamed = Timings {
        instance_name: "renamed",
        ..timings(1.0, 2.0, 3.0, 1.5)
    };
    let all: Vec<usize> = (0..sb.len()).collect();
    p.write_config(&sb, &renamed, "", &all);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(p.pid() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .expect("SIGHUP");
    p.wait_status("the renamed instance", LONG, |st| {
        st["instance_name"] == "renamed"
    });
    // Three beats decided after the reload, not a fixed sleep.
    beats_after(&p, SystemTime::now(), 3);
    let after: Vec<String> = p.changes()[before..]
        .iter()
        .map(|e| format!("{} {}", e.kind, e.payload["trigger"]["name"]))
        .collect();
    assert!(after.is_empty(), "no event on reload: {after:?}");
    // The new row is what the slaves replay now.
    let rows = sb
        .sql(2, "SELECT instance_name FROM plusmoin_heartbeat ORDER BY 1")
        .expect("rows");
    assert!(rows.contains("renamed"), "{rows}");
}

/// Thaws a frozen node when dropped (also when the test fails).
struct Thaw<'a>(&'a Sandbox, usize);

impl Drop for Thaw<'_> {
    fn drop(&mut self) {
        let _ = self.0.thaw(self.1);
    }
}
