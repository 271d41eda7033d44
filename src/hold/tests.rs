use super::table::{the_master, Roles, DELETE, INSERT, SELECT_ALL, SELECT_ONE};
use super::*;
use std::path::Path;
use std::time::SystemTime;

fn config(dir: &Path) -> Config {
    let text = format!(
        r#"{{"dbname": "d", "user": "u", "password": "p", "instance_name": "i",
            "status_file": "{}/status.json",
            "nodes": [{{"host": "DB1"}}, {{"host": "db2", "port": 5433}},
                      {{"host": "db2", "port": 5434}}, {{"host": "::1", "port": 6000}}]}}"#,
        dir.display()
    );
    crate::config::parse(&text, Path::new("x.json")).unwrap()
}

#[test]
fn hold_and_release_round_trip_through_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(dir.path());
    let path = path_for(&c.status_file);
    assert_eq!(path, dir.path().join("held.json"));
    assert!(
        read(&path, &Owners::me()).unwrap().is_empty(),
        "no file: nothing held"
    );
    assert_eq!(
        hold(&c, "db1:5432").unwrap(),
        (NodeName::new("DB1", 5432), true)
    );
    assert!(!hold(&c, "DB1").unwrap().1, "already held");
    assert_eq!(
        hold(&c, "[::1]:6000").unwrap().0,
        NodeName::new("::1", 6000)
    );
    let held: Vec<String> = read(&path, &Owners::me()).unwrap().into_iter().collect();
    assert_eq!(held, ["DB1:5432", "[::1]:6000"]);
    assert!(release(&c, "DB1:5432").unwrap().1);
    assert!(!release(&c, "DB1:5432").unwrap().1);
    let held: Vec<String> = read(&path, &Owners::me()).unwrap().into_iter().collect();
    assert_eq!(held, ["[::1]:6000"]);
}

#[test]
fn unknown_or_ambiguous_nodes_are_refused_with_the_list() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(dir.path());
    let e = hold(&c, "db9:5432").unwrap_err().to_string();
    assert!(e.contains("\"db9:5432\" is not a configured node"), "{e}");
    assert!(e.contains("db2:5433, db2:5434"), "{e}");
    assert!(hold(&c, "db2").is_err(), "two nodes on db2");
    assert!(!path_for(&c.status_file).exists());
}

#[test]
fn a_broken_file_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("held.json");
    std::fs::write(&path, "{not json").unwrap();
    assert!(matches!(
        read(&path, &Owners::me()),
        Err(HoldError::Invalid { .. })
    ));
}

#[test]
fn concurrent_holds_are_all_kept() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(dir.path());
    std::thread::scope(|scope| {
        for node in ["db1:5432", "db2:5433", "db2:5434", "[::1]:6000"] {
            let c = &c;
            scope.spawn(move || {
                for _ in 0..20 {
                    hold(c, node).unwrap();
                    release(c, node).unwrap();
                }
                hold(c, node).unwrap();
            });
        }
    });
    let held = read(&path_for(&c.status_file), &Owners::me()).unwrap();
    assert_eq!(held.len(), 4, "{held:?}");
}

#[test]
fn the_master_is_the_only_node_out_of_recovery() {
    let n = |p| NodeName::new("db", p);
    let roles = |masters: &[u16], slaves: &[u16], down: &[u16]| Roles {
        masters: masters.iter().map(|&p| (n(p), ())).collect(),
        slaves: slaves.iter().map(|&p| n(p)).collect(),
        unreachable: down.iter().map(|&p| (n(p), "refused".into())).collect(),
    };
    assert_eq!(the_master(roles(&[1], &[2], &[3])).unwrap().0, n(1));
    let none = the_master(roles(&[], &[2], &[3])).unwrap_err().to_string();
    assert!(
        none.starts_with("no master reachable: a hold is stored on the master"),
        "{none}"
    );
    assert!(none.contains("db:2: in recovery; db:3: refused"), "{none}");
    let two = the_master(roles(&[1, 3], &[2], &[]))
        .unwrap_err()
        .to_string();
    assert!(two.contains("more than one master (db:1, db:3)"), "{two}");
}

#[test]
fn the_table_wins_over_the_legacy_file() {
    let table: BTreeMap<String, HoldEntry> = [HoldEntry {
        node: "a:1".into(),
        placed_by: "bob@h (plusmoin i)".into(),
        placed_at: "2024-01-01T00:00:00.000Z".into(),
        reason: None,
    }]
    .into_iter()
    .map(|e| (e.node.clone(), e))
    .collect();
    let file: BTreeSet<String> = ["a:1".to_string(), "b:2".to_string()].into();
    let all = merge(&table, &file);
    assert_eq!(all["a:1"].placed_by, "bob@h (plusmoin i)");
    assert_eq!(all["b:2"].placed_by, LEGACY_PLACED_BY);
    assert_eq!(all.len(), 2);
}

#[test]
fn fields_read_are_escaped_and_cut_at_their_caps() {
    let long = "p".repeat(PLACED_BY_CAP + 1);
    let (e, cut) = table::cleaned(
        "a:1\n",
        &long,
        SystemTime::UNIX_EPOCH,
        Some("r\u{1b}[2J\u{7}"),
    );
    assert_eq!(e.node, "a:1\\n");
    assert_eq!(e.placed_by, format!("{}…", &long[..PLACED_BY_CAP]));
    assert_eq!(e.reason.as_deref(), Some("r\\u{1b}[2J\\u{7}"));
    assert_eq!(cut, ["placed_by"]);
    // The cap counts what is shown: escapes lengthen the text.
    let (e, cut) = table::cleaned(
        "a:1",
        "x",
        SystemTime::UNIX_EPOCH,
        Some(&"\u{1b}".repeat(REASON_CAP)),
    );
    assert_eq!(e.reason.map(|r| r.chars().count()), Some(REASON_CAP + 1));
    assert_eq!(cut, ["reason"]);
}

#[test]
fn every_statement_names_the_schema_and_reads_at_most_one_past_the_caps() {
    for sql in [HOLD_TABLE_DDL, &INSERT, &SELECT_ONE, &SELECT_ALL, &DELETE] {
        let bare = sql.replace("public.plusmoin_hold", "");
        assert!(!bare.contains("plusmoin_hold"), "{sql}");
        assert!(
            !bare.contains(" now()") && !bare.contains(" left("),
            "{sql}"
        );
    }
    assert!(SELECT_ALL.contains("pg_catalog.left(h.placed_by, 257)"));
    assert!(SELECT_ALL.contains("pg_catalog.left(h.reason, 1025)"));
    assert!(SELECT_ALL.contains("LIMIT 10001"));
    assert!(SELECT_ALL.contains("LIMIT 1000)"));
}

#[test]
fn placed_by_names_user_host_and_instance() {
    let by = placed_by("pgpool1");
    assert!(by.contains('@'), "{by}");
    assert!(by.ends_with(" (plusmoin pgpool1)"), "{by}");
}

fn refused_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[tokio::test]
async fn no_node_answering_keeps_the_previous_list_and_the_legacy_file_counts() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(dir.path());
    hold(&c, "db1:5432").unwrap();
    let mut h = Holds::new(&c);
    assert!(h.current().is_empty(), "no I/O before the first refresh");
    let nowhere = vec![NodeName::new("127.0.0.1", refused_port())];
    h.refresh(nowhere.clone());
    h.settle().await;
    assert!(!h.known(), "the table was never read");
    assert_eq!(h.names(), ["DB1:5432"]);
    assert_eq!(h.current()["DB1:5432"].placed_by, LEGACY_PLACED_BY);
    assert!(h.is_held(&NodeName::new("DB1", 5432)));
    // A table read that once succeeded stays in force when none answers.
    h.table.insert("db2:5433".into(), legacy::entry("db2:5433"));
    h.table_known = true;
    h.refresh(nowhere);
    h.settle().await;
    assert_eq!(h.names(), ["DB1:5432", "db2:5433"]);
    assert!(h
        .table_error
        .current()
        .unwrap()
        .contains("no node answered"));
    // An unreadable file keeps its previous entries too.
    std::fs::write(path_for(&c.status_file), "{broken").unwrap();
    h.refresh(vec![]);
    h.settle().await;
    assert_eq!(h.names(), ["DB1:5432", "db2:5433"]);
    assert!(h.file_error.current().is_some());
    // Released from the file: gone.
    std::fs::write(path_for(&c.status_file), r#"{"held": []}"#).unwrap();
    h.refresh(vec![]);
    h.settle().await;
    assert_eq!(h.names(), ["db2:5433"]);
}

#[tokio::test]
async fn refresh_never_waits_for_a_silent_server() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let keep = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.connect_timeout = std::time::Duration::from_secs(2);
    let mut h = Holds::new(&c);
    let t0 = std::time::Instant::now();
    for _ in 0..5 {
        h.refresh(vec![NodeName::new("127.0.0.1", port)]);
    }
    assert!(t0.elapsed() < std::time::Duration::from_millis(100));
    assert!(h.in_flight.is_some(), "one read in flight");
    h.settle().await;
    let waited = t0.elapsed();
    assert!(waited >= std::time::Duration::from_secs(2), "{waited:?}");
    assert!(
        waited < std::time::Duration::from_secs(3),
        "one read, not five: {waited:?}"
    );
    assert!(h
        .table_error
        .current()
        .unwrap()
        .contains("no answer within 2s"));
    keep.abort();
}

#[test]
fn holds_are_read_from_masters_first_then_slaves_then_the_rest() {
    use crate::cluster::testing::step;
    use crate::cluster::{Observation, Policy, State, Time};
    let dir = tempfile::tempdir().unwrap();
    let c = config(dir.path());
    let names: Vec<NodeName> = c.nodes.iter().map(|n| n.name.clone()).collect();
    let policy = Policy {
        max_sync_delay: std::time::Duration::from_secs(10),
        recover_sync_delay: std::time::Duration::from_secs(5),
        max_lag_bytes: None,
        recover_lag_bytes: None,
    };
    let t = Time(1_000_000_000);
    // DB1 down, db2:5433 a slave with no heartbeat yet (clusterless),
    // db2:5434 master, [::1]:6000 its slave in sync.
    let heartbeat = crate::cluster::Heartbeat {
        master_name: "db2:5434".into(),
        cluster_id: Some(0),
        written_at: t,
        received: None,
        replayed: None,
    };
    let obs = vec![
        (names[0].clone(), Observation::Down { reason: "x".into() }),
        (names[1].clone(), Observation::Slave { heartbeat: None }),
        (
            names[2].clone(),
            Observation::Master {
                wrote_at: t,
                repl: None,
            },
        ),
        (
            names[3].clone(),
            Observation::Slave {
                heartbeat: Some(heartbeat),
            },
        ),
    ];
    let (state, _) = step(&State::default(), &obs, t, &policy);
    let order = read_order(&c, &state);
    let want = [&names[2], &names[3], &names[0], &names[1]].map(Clone::clone);
    assert_eq!(order, want);
    assert_eq!(
        read_order(&c, &State::default()),
        names,
        "configuration order"
    );
}

#[derive(Clone, Default)]
struct SharedLog(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for SharedLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl SharedLog {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// Call before a test installs its own subscriber: while a single tracing
/// dispatcher exists, a log line first reached by another test's thread (no
/// subscriber) is muted for every thread (tracing caches that per line), so
/// what a test captures would depend on which test got there first. A
/// second dispatcher, kept for the binary's life, makes tracing ask every
/// subscriber.
fn every_subscriber_asked() {
    static SECOND: std::sync::OnceLock<tracing::Dispatch> = std::sync::OnceLock::new();
    SECOND.get_or_init(|| tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default()));
}

#[tokio::test]
async fn changes_are_logged_and_a_lasting_failure_once() {
    every_subscriber_asked();
    let log = SharedLog::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _default = tracing::subscriber::set_default(subscriber);
    let dir = tempfile::tempdir().unwrap();
    let c = config(dir.path());
    hold(&c, "db2:5433").unwrap();
    let mut h = Holds::new(&c);
    let nowhere = vec![NodeName::new("127.0.0.1", refused_port())];
    for _ in 0..3 {
        h.refresh(nowhere.clone());
        h.settle().await;
    }
    release(&c, "db2:5433").unwrap();
    h.refresh(nowhere);
    h.settle().await;
    let text = log.text();
    let held: Vec<&str> = text.lines().filter(|l| l.contains("node held")).collect();
    assert_eq!(held.len(), 1, "{text}");
    assert!(held[0].contains("node=db2:5433"), "{text}");
    assert!(held[0].contains("held.json (this host only)"), "{text}");
    let released = text.lines().filter(|l| l.contains("node released"));
    assert_eq!(released.count(), 1, "{text}");
    let failures = text.lines().filter(|l| l.contains("cannot read the holds"));
    assert_eq!(failures.count(), 1, "logged once while it lasts: {text}");
}
