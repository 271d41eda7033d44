//! The listener's pure parts: routing from a snapshot, and the metrics.

use super::exposition::{self, Exposition};
use super::metrics;
use super::routes::{route, Reply};
use super::Snapshot;
use crate::cluster::testing::{step, step_news};
use crate::cluster::{EventKind, Heartbeat, NodeName, Observation, Policy, State, Time};
use crate::metrics::{Counters, PcpOutcome};
use crate::payload::{PgpoolReport, Status};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

const T0: i64 = 1_700_000_000_000_000;
/// When the sample was decided, in seconds.
const DECIDED: f64 = 1_700_000_002.0;

/// What a master's write answers: its WAL position `wal`, no synchronous
/// standbys.
fn repl(wal: u64) -> Option<Box<crate::cluster::MasterRepl>> {
    Some(Box::new(crate::cluster::MasterRepl {
        wal: Some(wal),
        standby_names: String::new(),
        synchronous_commit: "on".into(),
        walsenders: Some(Vec::new()),
    }))
}

/// Cluster 0: db:5432 master, db:5433 slave 2 s and 3 MB behind, db:5434
/// lost (down); db:5435 clusterless (down). Heartbeat 1 s.
fn sample() -> Snapshot {
    let policy = Policy {
        max_sync_delay: Duration::from_secs(10),
        recover_sync_delay: Duration::from_secs(5),
        max_lag_bytes: None,
        recover_lag_bytes: None,
    };
    let n = |p| NodeName::new("db", p);
    let row = |at| Observation::Slave {
        heartbeat: Some(Heartbeat {
            master_name: "db:5432".into(),
            cluster_id: Some(0),
            written_at: Time(at),
            received: Some(1_000),
            replayed: Some(1_000),
        }),
    };
    let down = || Observation::Down {
        reason: "connection refused".into(),
    };
    let first = vec![
        (
            n(5432),
            Observation::Master {
                wrote_at: Time(T0),
                repl: repl(1_000),
            },
        ),
        (n(5433), row(T0)),
        (n(5434), row(T0)),
        (n(5435), down()),
    ];
    let (s, _) = step(&State::default(), &first, Time(T0), &policy);
    // The master writes 2 s later; then the slave still shows the old row.
    let later = T0 + 2_000_000;
    let names: Vec<NodeName> = first.iter().map(|(n, _)| n.clone()).collect();
    let master = [(
        n(5432),
        Observation::Master {
            wrote_at: Time(later),
            repl: repl(1_000 + (3 << 20)),
        },
    )];
    let (s, _) = step_news(&s, &names, &master, Time(later), &policy, false);
    let reads = [(n(5433), row(T0)), (n(5434), down()), (n(5435), down())];
    let (s, _) = step_news(&s, &names, &reads, Time(later), &policy, true);
    let status = Status::new(
        &s,
        "i1",
        Time::from_secs_f64(DECIDED),
        Duration::from_secs(1),
    );
    let down: HashSet<NodeName> = [n(5434), n(5435)].into();
    Snapshot {
        status: Arc::new(status),
        down: down.iter().map(ToString::to_string).collect(),
        journal: None,
    }
}

fn get(path: &str, snapshot: Option<&Snapshot>, now: f64) -> Reply {
    let (path, query) = match path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path, None),
    };
    let snapshot = snapshot.cloned().map(Arc::new);
    route("GET", path, query, snapshot.as_ref(), now, &Counters::new())
}

/// A second after the decision: fresh.
fn fresh(path: &str) -> Reply {
    get(path, Some(&sample()), DECIDED + 1.0)
}

fn status_of(r: &Reply) -> u16 {
    assert!(r.body.ends_with('\n'), "one line: {r:?}");
    r.status
}

#[test]
fn primary_is_200_for_the_master_only() {
    let r = fresh("/primary/db:5432");
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "db:5432 is the master of cluster 0\n")
    );
    for node in ["db:5433", "db:5434", "db:5435"] {
        let r = fresh(&format!("/primary/{node}"));
        assert_eq!(status_of(&r), 503, "{node}: {r:?}");
        assert!(
            r.body.starts_with(&format!("{node} is not a master: ")),
            "{r:?}"
        );
    }
    let r = fresh("/primary/db:5435");
    assert_eq!(
        r.body,
        "db:5435 is not a master: clusterless (connection refused)\n"
    );
    // Percent-encoded, as some clients send the colon.
    assert_eq!(fresh("/primary/db%3A5432").status, 200);
}

#[test]
fn a_refused_master_is_503_with_why_and_counted_in_metrics() {
    let mut s = sample();
    let why = "another master of the same replication set, db:5440, has been the primary";
    Arc::make_mut(&mut s.status)
        .primary_refused
        .insert("db:5432".into(), why.into());
    let r = get("/primary/db:5432", Some(&s), DECIDED + 1.0);
    assert_eq!(
        (r.status, r.body.as_str()),
        (
            503,
            format!("db:5432 is a master but not routed to: {why}\n").as_str()
        )
    );
    let labels = [("node", "db:5432"), ("cluster", "0")];
    let m = scrape(&s, &Counters::new());
    assert_eq!(m.value("plusmoin_primary_refused", &labels), Some(1.0));
    let m = scrape(&sample(), &Counters::new());
    assert_eq!(m.value("plusmoin_primary_refused", &labels), Some(0.0));
    // Only masters have the series.
    let slave = [("node", "db:5433"), ("cluster", "0")];
    assert_eq!(m.value("plusmoin_primary_refused", &slave), None);
    let c = Counters::new();
    c.primary_refused();
    let m = scrape(&sample(), &c);
    assert_eq!(m.value("plusmoin_primary_refusals_total", &[]), Some(1.0));
}

#[test]
fn replica_is_200_for_a_slave_in_sync_within_the_lag_asked() {
    let r = fresh("/replica/db:5433");
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "db:5433 is a slave in sync in cluster 0\n")
    );
    assert_eq!(fresh("/replica/db:5433?lag=2.5").status, 200);
    assert_eq!(fresh("/replica/db:5433?lag=2").status, 200, "at the bound");
    let r = fresh("/replica/db:5433?lag=1.5");
    assert_eq!(
        (r.status, r.body.as_str()),
        (503, "db:5433 is 2 s behind its master, more than 1.5 s\n")
    );
    for node in ["db:5432", "db:5434", "db:5435"] {
        let r = fresh(&format!("/replica/{node}"));
        assert_eq!(status_of(&r), 503, "{node}: {r:?}");
        assert!(
            r.body
                .starts_with(&format!("{node} is not a slave in sync: ")),
            "{r:?}"
        );
    }
    assert_eq!(
        fresh("/replica/db:5434").body,
        "db:5434 is not a slave in sync: lost in cluster 0 (connection refused)\n"
    );
}

/// `lag` in bytes, as Patroni takes it: 3 MB behind.
#[test]
fn replica_takes_a_lag_in_bytes_beside_seconds() {
    let r = fresh("/replica/db:5433?lag=4MB");
    assert_eq!(
        (r.status, r.body.as_str()),
        (
            200,
            "db:5433 is a slave in sync in cluster 0, 3145728 bytes behind (at most 4194304 bytes)\n"
        )
    );
    assert_eq!(
        fresh("/replica/db:5433?lag=3MB").status,
        200,
        "at the bound"
    );
    assert_eq!(fresh("/replica/db:5433?lag=3145728B").status, 200);
    assert_eq!(fresh("/replica/db:5433?lag=3072kB").status, 200);
    let r = fresh("/replica/db:5433?lag=1MB");
    assert_eq!(
        (r.status, r.body.as_str()),
        (
            503,
            "db:5433 is 3145728 bytes behind its master, more than 1048576 bytes\n"
        )
    );
    assert_eq!(fresh("/replica/db:5433?lag=3145727B").status, 503);
    // Seconds still mean seconds: a bare number, or with `s`.
    assert_eq!(fresh("/replica/db:5433?lag=60").status, 200);
    assert_eq!(fresh("/replica/db:5433?lag=60s").status, 200);
    assert_eq!(fresh("/replica/db:5433?lag=1s").status, 503);
    // Both forms: both bounds hold.
    assert_eq!(fresh("/replica/db:5433?lag=60&lag=4MB").status, 200);
    assert_eq!(fresh("/replica/db:5433?lag=60&lag=1MB").status, 503);
    assert_eq!(fresh("/replica/db:5433?lag=1&lag=4MB").status, 503);
}

#[test]
fn bad_lag_and_unknown_parameters_are_400() {
    for q in [
        "lag=abc",
        "lag=-1",
        "lag=NaN",
        "lag=inf",
        "lag=",
        "lag",
        "lag=-1MB",
        "lag=1.5MB",
    ] {
        let r = fresh(&format!("/replica/db:5433?{q}"));
        assert_eq!(status_of(&r), 400, "{q}: {r:?}");
        assert!(r.body.starts_with("bad lag "), "{r:?}");
    }
    let r = fresh("/replica/db:5433?lag=1&max=3");
    assert_eq!(
        (r.status, r.body.as_str()),
        (400, "unknown parameter \"max\"\n")
    );
    // A unit that could be bytes or time is refused, not guessed.
    for q in [
        "lag=16M", "lag=16mb", "lag=5m", "lag=512k", "lag=1Mb", "lag=2h",
    ] {
        let r = fresh(&format!("/replica/db:5433?{q}"));
        assert_eq!(status_of(&r), 400, "{q}: {r:?}");
        assert!(r.body.starts_with("ambiguous lag "), "{q}: {r:?}");
        assert!(r.body.contains("16MB"), "the forms are said: {r:?}");
    }
    // /primary takes no lag.
    assert_eq!(fresh("/primary/db:5432?lag=1").status, 400);
    // A bad parameter is 400 even for an unknown node.
    assert_eq!(fresh("/replica/nope:1?lag=x").status, 400);
}

#[test]
fn unknown_nodes_paths_and_methods() {
    for path in [
        "/primary/db:9999",
        "/replica/db",
        "/primary/",
        "/replica/DB:5432",
    ] {
        let r = fresh(path);
        assert_eq!(status_of(&r), 404, "{path}: {r:?}");
        assert!(r.body.starts_with("unknown node "), "{r:?}");
        assert_eq!(r.body.lines().count(), 1);
    }
    for path in [
        "/",
        "/metrics/",
        "/primary",
        "/status.json",
        "/../etc/passwd",
    ] {
        let r = fresh(path);
        assert_eq!(status_of(&r), 404, "{path}: {r:?}");
        assert!(r.body.starts_with("no such endpoint"), "{r:?}");
    }
    let r = fresh("/primary/db%zz");
    assert_eq!(status_of(&r), 400, "{r:?}");
    let r = fresh("/primary/%ff%fe");
    assert_eq!(status_of(&r), 400, "not UTF-8: {r:?}");
    let snap = Arc::new(sample());
    for method in ["POST", "PUT", "DELETE", "OPTIONS", "CONNECT", "BREW"] {
        let r = route(
            method,
            "/health",
            None,
            Some(&snap),
            DECIDED,
            &Counters::new(),
        );
        assert_eq!(status_of(&r), 405, "{method}: {r:?}");
    }
    let r = route(
        "HEAD",
        "/primary/db:5432",
        None,
        Some(&snap),
        DECIDED,
        &Counters::new(),
    );
    assert_eq!(r.status, 200);
}

#[test]
fn health_follows_the_status_staleness_rule() {
    let s = sample();
    let r = get("/health", Some(&s), DECIDED + 2.9);
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "ok: last decision 2.9 s ago\n")
    );
    let r = get("/health", Some(&s), DECIDED + 3.5);
    assert_eq!(status_of(&r), 503);
    assert_eq!(
        r.body,
        "stale: the last decision is 3.5 s old, older than three beats (3.0 s): plusmoin is not beating\n"
    );
    // A stale view routes nothing, even its master.
    for path in ["/primary/db:5432", "/replica/db:5433"] {
        let r = get(path, Some(&s), DECIDED + 3.5);
        assert_eq!(status_of(&r), 503, "{path}: {r:?}");
        assert!(r.body.starts_with("stale: "), "{r:?}");
    }
    // Unknown is still unknown.
    assert_eq!(get("/primary/x:1", Some(&s), DECIDED + 3.5).status, 404);
}

#[test]
fn before_the_first_decision_only_metrics_answer_200() {
    for path in ["/health", "/status", "/primary/db:5432", "/replica/db:5433"] {
        let r = get(path, None, DECIDED);
        assert_eq!(
            (r.status, r.body.as_str()),
            (503, "plusmoin is starting: no decision yet\n"),
            "{path}"
        );
    }
    let r = get("/metrics", None, DECIDED);
    assert_eq!(r.status, 200);
    let m = exposition::parse(&r.body).unwrap();
    assert_eq!(
        m.value(
            "plusmoin_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0)
    );
    assert!(m.matching("plusmoin_node_up", &[]).is_empty());
}

#[test]
fn status_is_the_status_files_json() {
    let s = sample();
    let r = fresh("/status");
    assert_eq!((r.status, r.content_type), (200, "application/json"));
    let back: Status = serde_json::from_str(&r.body).unwrap();
    assert_eq!(back, *s.status);
}

fn scrape(s: &Snapshot, c: &Counters) -> Exposition {
    let text = metrics::render(Some(Arc::new(s.clone())), c);
    match exposition::parse(&text) {
        Ok(e) => e,
        Err(e) => panic!("{e}\n{text}"),
    }
}

#[test]
fn metrics_show_every_node_and_cluster() {
    let m = scrape(&sample(), &Counters::new());
    let node = |n: &'static str, c: &'static str| [("node", n), ("cluster", c)];
    for (n, c, up, place) in [
        ("db:5432", "0", 1.0, "master"),
        ("db:5433", "0", 1.0, "slave"),
        ("db:5434", "0", 0.0, "lost"),
        ("db:5435", "", 0.0, "clusterless"),
    ] {
        assert_eq!(m.value("plusmoin_node_up", &node(n, c)), Some(up), "{n}");
        let places = m.matching("plusmoin_node_place", &node(n, c));
        assert_eq!(places.len(), 4, "one series per place: {places:?}");
        for p in places {
            let want = if p.labels["place"] == place { 1.0 } else { 0.0 };
            assert_eq!(p.value, want, "{n}: {p:?}");
        }
        assert_eq!(m.value("plusmoin_node_held", &node(n, c)), Some(0.0));
    }
    assert_eq!(
        m.value("plusmoin_node_lag_seconds", &node("db:5433", "0")),
        Some(2.0)
    );
    assert_eq!(m.matching("plusmoin_node_lag_seconds", &[]).len(), 1);
    let role = |n, r| {
        m.value(
            "plusmoin_node_role",
            &[("node", n), ("cluster", "0"), ("role", r)],
        )
    };
    assert_eq!(role("db:5432", "master"), Some(1.0));
    assert_eq!(role("db:5433", "slave"), Some(1.0));
    assert_eq!(role("db:5433", "master"), Some(0.0));
    // Never seen: no role.
    assert!(m
        .matching("plusmoin_node_role", &[("node", "db:5435")])
        .is_empty());
    assert_eq!(
        m.value("plusmoin_cluster_has_master", &[("cluster", "0")]),
        Some(1.0)
    );
    assert_eq!(
        m.value("plusmoin_last_beat_timestamp_seconds", &[]),
        Some(DECIDED)
    );
    assert_eq!(m.value("plusmoin_heartbeat_seconds", &[]), Some(1.0));
    assert_eq!(m.types["plusmoin_node_up"], "gauge");
    // No pgpool section: no pgpool series.
    assert!(m.matching("plusmoin_node_pgpool_status", &[]).is_empty());
    assert!(!m.types.contains_key("plusmoin_pgpool_acting"));
}

#[test]
fn metrics_show_pgpools_view_and_holds() {
    let mut s = sample();
    Arc::make_mut(&mut s.status).held = vec!["db:5434".into()];
    Arc::make_mut(&mut s.status).pgpool = Some(PgpoolReport {
        acting: true,
        nodes: [
            ("db:5432".to_string(), "up".to_string()),
            ("db:5434".to_string(), "down".to_string()),
        ]
        .into(),
        ..PgpoolReport::default()
    });
    let m = scrape(&s, &Counters::new());
    let pg = |n: &'static str, status| {
        m.value(
            "plusmoin_node_pgpool_status",
            &[("node", n), ("cluster", "0"), ("status", status)],
        )
    };
    assert_eq!(pg("db:5432", "up"), Some(1.0));
    assert_eq!(pg("db:5432", "down"), Some(0.0));
    assert_eq!(pg("db:5434", "down"), Some(1.0));
    assert_eq!(pg("db:5434", "waiting"), Some(0.0));
    assert!(
        m.matching("plusmoin_node_pgpool_status", &[("node", "db:5433")])
            .is_empty(),
        "not read: no series"
    );
    assert_eq!(
        m.value(
            "plusmoin_node_held",
            &[("node", "db:5434"), ("cluster", "0")]
        ),
        Some(1.0)
    );
    assert_eq!(m.value("plusmoin_pgpool_acting", &[]), Some(1.0));
    assert_eq!(m.value("plusmoin_pgpool_pcp_error", &[]), Some(0.0));
}

#[test]
fn counters_and_the_beat_histogram() {
    let c = Counters::new();
    c.event(EventKind::SlaveDown);
    c.event(EventKind::SlaveDown);
    c.event(EventKind::PlusmoinHeartbeat);
    c.pcp_action(true, PcpOutcome::Ok);
    c.pcp_action(false, PcpOutcome::NotTaken);
    c.pcp_action(false, PcpOutcome::Failed);
    c.beat_closed(Duration::from_millis(3));
    c.beat_closed(Duration::from_millis(40));
    c.beat_closed(Duration::from_secs(100));
    let m = scrape(&sample(), &c);
    let ev = |k| m.value("plusmoin_events_total", &[("event", k)]);
    assert_eq!(ev("slave_down"), Some(2.0));
    assert_eq!(ev("plusmoin_heartbeat"), Some(1.0));
    assert_eq!(ev("master_up"), Some(0.0), "every kind, from 0");
    assert_eq!(m.types["plusmoin_events_total"], "counter");
    let pcp = |a, o| {
        m.value(
            "plusmoin_pcp_actions_total",
            &[("action", a), ("outcome", o)],
        )
    };
    assert_eq!(pcp("attach", "ok"), Some(1.0));
    assert_eq!(pcp("detach", "not_taken"), Some(1.0));
    assert_eq!(pcp("detach", "failed"), Some(1.0));
    assert_eq!(pcp("attach", "failed"), Some(0.0));
    assert_eq!(
        m.matching("plusmoin_trigger_runs_total", &[]).len(),
        EventKind::ALL.len() * 3
    );
    let buckets = m.matching("plusmoin_beat_duration_seconds_bucket", &[]);
    assert_eq!(buckets.len(), crate::metrics::BEAT_BUCKETS.len() + 1);
    let bucket = |le: f64| {
        let b = buckets
            .iter()
            .find(|b| b.labels["le"].parse::<f64>() == Ok(le));
        b.map(|b| b.value)
    };
    assert_eq!(bucket(0.005), Some(1.0));
    assert_eq!(bucket(0.025), Some(1.0));
    assert_eq!(bucket(0.05), Some(2.0), "cumulative");
    assert_eq!(bucket(60.0), Some(2.0));
    assert_eq!(bucket(f64::INFINITY), Some(3.0), "+Inf");
    assert_eq!(
        m.value("plusmoin_beat_duration_seconds_count", &[]),
        Some(3.0)
    );
    let sum = m.value("plusmoin_beat_duration_seconds_sum", &[]).unwrap();
    assert!((sum - 100.043).abs() < 1e-6, "{sum}");
    assert_eq!(m.types["plusmoin_beat_duration_seconds"], "histogram");
}

#[test]
fn label_values_are_escaped() {
    let mut s = sample();
    // A node name cannot hold these, but a value must never break a line.
    Arc::make_mut(&mut s.status).clusterless[0].name = "we\"ird\\node\n:1".into();
    let m = scrape(&s, &Counters::new());
    assert_eq!(
        m.value(
            "plusmoin_node_up",
            &[("node", "we\"ird\\node\n:1"), ("cluster", "")]
        ),
        Some(1.0)
    );
}

#[test]
fn the_reader_refuses_what_prometheus_would() {
    for bad in [
        "x 1\n",                                  // no TYPE
        "# TYPE x gauge\nx{a=\"1\"} one\n",       // not a number
        "# TYPE x gauge\n1x 1\n",                 // bad name
        "# TYPE x gauge\nx{a=\"1} 1\n",           // unterminated
        "# TYPE x gauge\nx{a=\"1\",a=\"2\"} 1\n", // label twice
        "# TYPE x gauge\nx 1\nx 2\n",             // series twice
        "# TYPE x gauge\n# TYPE x counter\n",     // two types
        "# TYPE x gauge\nx{1a=\"1\"} 1\n",        // bad label name
    ] {
        assert!(exposition::parse(bad).is_err(), "accepted {bad:?}");
    }
    let ok = exposition::parse("# HELP x h\n# TYPE x gauge\nx{a=\"q\\\"\"} +Inf\n").unwrap();
    assert_eq!(ok.value("x", &[("a", "q\"")]), Some(f64::INFINITY));
}

/// Every metric the alert rules and the dashboard of `contrib` use is one
/// `/metrics` serves: their names against the families a scrape with
/// every part present (pgpool, holds, synchronous standbys) declares.
#[test]
fn contrib_alerts_and_dashboard_use_only_served_metrics() {
    let mut s = sample();
    {
        let st = Arc::make_mut(&mut s.status);
        st.held = vec!["db:5434".into()];
        st.pgpool = Some(PgpoolReport {
            acting: true,
            nodes: [("db:5432".to_string(), "up".to_string())].into(),
            ..PgpoolReport::default()
        });
        st.clusters[0].sync = Some(crate::payload::SyncEntry {
            standby_names: "\"db:5433\"".into(),
            synchronous_commit: "on".into(),
            method: Some("first".into()),
            required: 1,
            connected: Some(1),
            waiting: false,
            problem: None,
        });
    }
    let text = metrics::render(Some(Arc::new(s)), &Counters::new());
    // The sample names a family declares, by its type.
    let mut served = std::collections::BTreeSet::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if let (Some("#"), Some("TYPE"), Some(name), Some(kind)) =
            (words.next(), words.next(), words.next(), words.next())
        {
            let suffixes: &[&str] = match kind {
                // Declared with or without its suffix, by version.
                "counter" if name.ends_with("_total") => &[""],
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                _ => &[""],
            };
            served.extend(suffixes.iter().map(|s| format!("{name}{s}")));
        }
    }
    assert!(served.contains("plusmoin_node_lag_bytes"), "{served:?}");
    assert!(served.contains("plusmoin_events_total"), "{served:?}");
    for (file, text) in [
        (
            "contrib/prometheus/plusmoin-alerts.yml",
            include_str!("../../contrib/prometheus/plusmoin-alerts.yml"),
        ),
        (
            "contrib/grafana/plusmoin.json",
            include_str!("../../contrib/grafana/plusmoin.json"),
        ),
    ] {
        let mut used = std::collections::BTreeSet::new();
        for (at, _) in text.match_indices("plusmoin_") {
            // A label value (`event!="plusmoin_heartbeat"`) is no metric.
            if text[..at].ends_with('"') || text[..at].ends_with(|c: char| c.is_alphanumeric()) {
                continue;
            }
            let name: String = text[at..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            used.insert(name);
        }
        assert!(used.len() > 5, "{file}: {used:?}");
        let missing: Vec<&String> = used.iter().filter(|n| !served.contains(*n)).collect();
        assert!(
            missing.is_empty(),
            "{file} uses metrics /metrics does not serve: {missing:?}\n{served:?}"
        );
    }
}
