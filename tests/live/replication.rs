//! Replication as PostgreSQL sees it, on real servers (issue 25): the lag
//! in bytes of a standby whose replay is paused while the master writes,
//! `/replica?lag=` in bytes and in seconds, and synchronous standbys —
//! `sync_lost` at once when the one named stops, `sync_ok` when it is
//! back, nothing when a quorum still holds.

use crate::http::{free_port, get};
use crate::monitor::{healthy, node, Ev, Plusmoin, Timings};
use crate::wait_until;
use plusmoin::demo::sandbox::Sandbox;
use plusmoin_kit::sandbox::SandboxExt;
use serde_json::Value;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

const LONG: Duration = Duration::from_secs(30);

/// plusmoin with its listener on a free loopback port.
fn start(sb: &Sandbox, t: &Timings) -> (Plusmoin, SocketAddr) {
    let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let p = Plusmoin::start(sb, t, &format!(r#", "http_listen": "{addr}""#));
    if !wait_until(LONG, || get(addr, "/metrics").0 == 200) {
        p.fail(&format!("the listener never answered on {addr}"));
    }
    (p, addr)
}

/// The status entry of node `name`, wherever it is.
fn entry(st: &Value, name: &str) -> Value {
    let mut all = Vec::new();
    for c in st["clusters"].as_array().into_iter().flatten() {
        all.push(c["master"].clone());
        all.extend(c["slaves"].as_array().cloned().unwrap_or_default());
        all.extend(c["lost"].as_array().cloned().unwrap_or_default());
    }
    all.extend(st["clusterless"].as_array().cloned().unwrap_or_default());
    all.into_iter()
        .find(|n| n["name"] == name)
        .unwrap_or(Value::Null)
}

/// The master's WAL position, in bytes.
fn wal_position(sb: &Sandbox) -> u64 {
    let out = sb
        .sql(
            0,
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::int8",
        )
        .expect("WAL position");
    out.trim().parse().expect("a number")
}

/// Resumes WAL replay on drop, should the test fail while it is paused.
struct Resume<'a>(&'a Sandbox, usize);

impl Drop for Resume<'_> {
    fn drop(&mut self) {
        let _ = self.0.sql(self.1, "SELECT pg_wal_replay_resume()");
    }
}

#[test]
fn byte_lag_grows_while_replay_is_paused_and_replica_takes_sizes() {
    // A lag of a few seconds stays well within max_sync_delay.
    let t = Timings {
        max_sync_delay: 60.0,
        recover_sync_delay: 30.0,
        ..Timings::default()
    };
    let sb = Sandbox::start(1).expect("sandbox");
    let (p, addr) = start(&sb, &t);
    healthy(&p, &sb);
    let n1 = node(&sb, 1);
    // Streaming: a lag in bytes is shown, and small.
    let st = p.wait_status("a lag in bytes", LONG, |st| {
        entry(st, &n1)["lag_bytes"].is_u64()
    });
    let small = entry(&st, &n1)["lag_bytes"].as_u64().unwrap_or(u64::MAX);
    assert!(small < 1 << 20, "a streaming standby {small} bytes behind");
    assert_eq!(get(addr, &format!("/replica/{n1}?lag=1MB")).0, 200);

    sb.sql(1, "SELECT pg_wal_replay_pause()")
        .expect("pause replay");
    let _resume = Resume(&sb, 1);
    let paused = Instant::now();
    let before = wal_position(&sb);
    sb.sql(
        0,
        "CREATE TABLE filler AS SELECT g, repeat('x', 1000) AS pad FROM generate_series(1, 4000) AS g",
    )
    .expect("write a few MB");
    let written = wal_position(&sb) - before;
    assert!(written >= 4 << 20, "only {written} bytes of WAL written");
    // Replay paused: the byte lag grows to at least what was written.
    let st = p.wait_status("the byte lag past what was written", LONG, |st| {
        entry(st, &n1)["lag_bytes"]
            .as_u64()
            .is_some_and(|b| b >= written)
    });
    let lag = entry(&st, &n1)["lag_bytes"].as_u64().unwrap_or_default();
    let (code, body) = get(addr, &format!("/replica/{n1}?lag=1MB"));
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("bytes behind its master, more than 1048576 bytes"),
        "{body}"
    );
    let (code, body) = get(addr, &format!("/replica/{n1}?lag=60"));
    assert_eq!(code, 200, "60 seconds still accepts it: {body}");
    assert!(
        paused.elapsed() < Duration::from_secs(30),
        "the test ran long: {:?}",
        paused.elapsed()
    );
    // Ambiguous: megabytes or minutes? Refused, not guessed.
    assert_eq!(get(addr, &format!("/replica/{n1}?lag=1m")).0, 400);
    // The metric says the same.
    let (_, metrics) = get(addr, "/metrics");
    let line = metrics
        .lines()
        .find(|l| l.starts_with("plusmoin_node_lag_bytes{") && l.contains(&n1))
        .unwrap_or_else(|| panic!("no plusmoin_node_lag_bytes for {n1}:\n{metrics}"));
    let shown: f64 = line
        .rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(shown >= written as f64, "{line} (status said {lag})");

    sb.sql(1, "SELECT pg_wal_replay_resume()")
        .expect("resume replay");
    assert!(
        wait_until(LONG, || get(addr, &format!("/replica/{n1}?lag=1MB")).0
            == 200),
        "caught up: within 1MB again"
    );
}

/// The `sync_lost` / `sync_ok` events recorded so far.
fn sync_events(p: &Plusmoin) -> Vec<Ev> {
    p.events()
        .into_iter()
        .filter(|e| e.kind == "sync_lost" || e.kind == "sync_ok")
        .collect()
}

#[test]
fn sync_lost_at_once_when_the_synchronous_standby_stops_and_ok_when_back() {
    // Beats far apart: what comes within 0.5 s is not a beat's doing.
    let t = Timings {
        heartbeat: 3.0,
        ..Timings::default()
    };
    let sb = Sandbox::start(2).expect("sandbox");
    let (n0, n1, n2) = (node(&sb, 0), node(&sb, 1), node(&sb, 2));
    for i in 1..=2 {
        sb.name_standby(i, 0, &node(&sb, i))
            .expect("name the standby host:port");
    }
    sb.set_standby_names(0, &format!("\"{n1}\""))
        .expect("synchronous_standby_names");
    let (p, addr) = start(&sb, &t);
    healthy(&p, &sb);
    let st = p.wait_status("standby 1 synchronous", LONG, |st| {
        st["clusters"][0]["sync"]["connected"] == 1 && entry(st, &n1)["sync_state"] == "sync"
    });
    assert_eq!(st["clusters"][0]["sync"]["required"], 1);
    assert_eq!(st["clusters"][0]["sync"]["waiting"], false);
    assert_eq!(entry(&st, &n2)["sync_state"], "async");
    assert!(sync_events(&p).is_empty(), "{:?}", sync_events(&p));

    let stopping = SystemTime::now();
    sb.stop(1).expect("stop the synchronous standby");
    let lost = p.wait_event("sync_lost", Duration::from_secs(10), |e| {
        e.kind == "sync_lost"
    });
    let after = lost.secs_after(stopping);
    assert!(after <= 0.5, "sync_lost {after:.3} s after the stop began");
    assert_eq!(lost.payload["trigger"]["name"], n0.as_str());
    assert_eq!(lost.payload["sync"]["waiting"], true);
    assert_eq!(lost.payload["sync"]["connected"], 0);
    let st = p.wait_status("the sync flag", Duration::from_secs(2), |st| {
        st["clusters"][0]["sync"]["waiting"] == true
    });
    assert_eq!(st["clusters"][0]["sync"]["required"], 1);
    let (_, metrics) = get(addr, "/metrics");
    assert!(
        metrics.contains("plusmoin_cluster_sync_waiting{cluster=\"0\"} 1"),
        "{metrics}"
    );
    assert!(
        wait_until(Duration::from_secs(5), || p
            .log()
            .contains("commits on the master wait")),
        "no log line said so"
    );

    sb.start_node(1).expect("start the standby again");
    let ok = p.wait_event("sync_ok", LONG, |e| e.kind == "sync_ok");
    assert_eq!(ok.payload["sync"]["waiting"], false);
    p.wait_status("the sync flag cleared", LONG, |st| {
        st["clusters"][0]["sync"]["waiting"] == false
    });

    // ANY 1 of both: losing one of the two gives nothing.
    sb.set_standby_names(0, &format!("ANY 1 (\"{n1}\", \"{n2}\")"))
        .expect("synchronous_standby_names");
    p.wait_status("a quorum of two", LONG, |st| {
        st["clusters"][0]["sync"]["method"] == "any" && st["clusters"][0]["sync"]["connected"] == 2
    });
    let seen = sync_events(&p).len();
    sb.stop(2).expect("stop standby 2");
    p.wait_event("slave_down of standby 2", LONG, |e| {
        e.kind == "slave_down" && e.about(&n2)
    });
    // Two beats and the rechecks: still no sync event.
    std::thread::sleep(Duration::from_secs_f64(2.0 * t.heartbeat));
    assert_eq!(sync_events(&p).len(), seen, "{:?}", sync_events(&p));
    let st = p.status();
    assert_eq!(st["clusters"][0]["sync"]["waiting"], false, "{st:#}");
    assert_eq!(st["clusters"][0]["sync"]["connected"], 1, "{st:#}");
    sb.set_standby_names(0, "").expect("no synchronous standby");
}
