//! The sidecar against a fake pcp: a shell script keeping each node's
//! pgpool status in a file, which can refuse attaches (exit 0, nothing
//! done, as pgpool does) a given number of times.
use super::*;
use crate::cluster::{Cluster, NodeState, Place, Time};
use crate::pgpool::plan::{Remark, RoundPlan};
use std::path::Path;

const FAKE_PCP: &str = r#"#!/bin/sh
# fake pcp: $1 = info|attach|detach|watchdog, $2 = node id; state in this
# directory: file N holds "status role" of node N, file watchdog what
# pcp_watchdog_info -v prints (none: watchdog off).
d="$(dirname "$0")"
echo "$1 $2" >> "$d/calls"
# file fail: every command fails with its text, as pcp does when pgpool is
# unreachable.
if [ -f "$d/fail" ]; then echo "ERROR: $(cat "$d/fail")" >&2; exit 1; fi
# file info.fail: that many info calls fail, as when pgpool restarts its pcp
# process after a failback (file restart: written there by an attach).
if [ "$1" = info ] && [ -s "$d/info.fail" ]; then
  n=$(cat "$d/info.fail"); echo $((n - 1)) > "$d/info.fail"
  [ "$n" -gt 1 ] || rm -f "$d/info.fail"
  echo "ERROR: unable to read data from socket." >&2; exit 1
fi
[ "$1" = watchdog ] || read -r st role < "$d/$2"
case "$1" in
  info) echo "h 5432 1 0.5 $st $st $role $role 0 none none 2026-01-01 00:00:00" ;;
  attach)
if [ -s "$d/$2.refuse" ]; then
  n=$(cat "$d/$2.refuse"); echo $((n - 1)) > "$d/$2.refuse"
  [ "$n" -gt 1 ] || rm -f "$d/$2.refuse"
else
  echo "waiting $role" > "$d/$2"
  if [ -f "$d/restart" ]; then cp "$d/restart" "$d/info.fail"; fi
fi ;;
  detach) echo "down $role" > "$d/$2" ;;
  watchdog)
if [ -f "$d/watchdog" ]; then cat "$d/watchdog"
else echo "ERROR: PCP: informing watchdog info failed" >&2; echo "DETAIL: watchdog is not enabled" >&2
fi ;;
esac
"#;

struct Fake {
    dir: tempfile::TempDir,
}

impl Fake {
    fn new(statuses: &[&str]) -> Fake {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("pcp.sh");
        std::fs::write(&script, FAKE_PCP).unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        for (i, s) in statuses.iter().enumerate() {
            let role = if i == 0 { "primary" } else { "standby" };
            std::fs::write(dir.path().join(i.to_string()), format!("{s} {role}\n")).unwrap();
        }
        Fake { dir }
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
    /// pgpool's status of node `id` (node 0 is pgpool's primary); an
    /// empty read (the script rewriting the file) is read again.
    fn status(&self, id: usize) -> String {
        loop {
            let text = std::fs::read_to_string(self.path().join(id.to_string())).unwrap();
            if let Some(s) = text.split_whitespace().next() {
                return s.to_string();
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
    fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.path().join("calls"))
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    }
    fn config(&self) -> Config {
        let d = self.path().display();
        let t = |c: &str| format!("{d}/pcp.sh {c} {{{{node_id}}}}");
        let text = format!(
            r#"{{"dbname": "d", "user": "u", "password": "p", "instance_name": "i",
                "status_file": "{d}/status.json", "trigger_timeout": 5,
                "nodes": [{{"host": "db0", "pgpool_node_id": 0}},
                          {{"host": "db1", "pgpool_node_id": 1}},
                          {{"host": "db2"}}],
                "pgpool": {{"pcp_user": "pgpool", "pcppass_file": "{d}/pcppass",
                            "templates": {{"attach": "{}", "detach": "{}", "node_info": "{}",
                                           "watchdog_info": "{}"}}}}}}"#,
            t("attach"),
            t("detach"),
            t("info"),
            t("watchdog")
        );
        crate::config::parse(&text, Path::new("x.json")).unwrap()
    }
}

/// db0 master, db1 in `place1`, db2 (no pgpool id) slave; slaves
/// replay db0's heartbeat.
fn state(place1: Place) -> State {
    let node = |host: &str, place| NodeState {
        place,
        cluster_id: Some(0),
        master_name: match place {
            Place::Master => Some(format!("{host}:5432")),
            Place::Slave => Some("db0:5432".into()),
            _ => None,
        },
        ..NodeState::new(NodeName::new(host, 5432), Time(0))
    };
    State {
        started: true,
        next_cluster_id: 1,
        clusters: [(
            0,
            Cluster {
                id: 0,
                master: Some(NodeName::new("db0", 5432)),
                sync: None,
            },
        )]
        .into(),
        nodes: vec![
            node("db0", Place::Master),
            node("db1", place1),
            node("db2", Place::Slave),
        ],
        last_written: Default::default(),
        last_wal: Default::default(),
    }
}

fn event(kind: EventKind, host: &str) -> Event {
    Event {
        kind,
        cluster_id: 0,
        node: Some(NodeName::new(host, 5432)),
    }
}

fn sidecar(config: &Config) -> Sidecar {
    Sidecar::new(config)
}

/// The holds read, and none held.
const NOTHING_HELD: Held<'static> = Held {
    known: true,
    nodes: &BTreeMap::new(),
};

/// Beats (each one due a round) until `check` holds.
async fn beat_until(
    s: &mut Sidecar,
    st: &State,
    held: Held<'_>,
    what: &str,
    mut check: impl FnMut() -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        s.last_reconcile = None;
        s.beat(st, &[], held);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Beats with a round due and waits for a round's report: the positive
/// sign that a round ran, before asserting what it did not do. Done
/// twice, so the second round surely began after this beat (the first
/// report may come from a round already under way).
async fn beat_and_wait_rounds(s: &mut Sidecar, st: &State, events: &[Event], held: Held<'_>) {
    for _ in 0..2 {
        let mut rx = s.report.subscribe();
        rx.borrow_and_update();
        s.last_reconcile = None;
        s.beat(st, events, held);
        tokio::time::timeout(Duration::from_secs(15), rx.changed())
            .await
            .expect("a round's report within 15 s")
            .expect("the worker is alive");
    }
}

async fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn reconciliation_attaches_in_sync_nodes_and_detaches_lost_ones() {
    let fake = Fake::new(&["up", "up"]);
    let mut s = sidecar(&fake.config());
    s.beat(&state(Place::Lost), &[], NOTHING_HELD);
    wait_for("node 1 detached", || fake.status(1) == "down").await;
    s.last_reconcile = None;
    s.beat(&state(Place::Slave), &[], NOTHING_HELD);
    wait_for("node 1 attached", || fake.status(1) == "waiting").await;
    let report = s.report().expect("a report after a round");
    assert_eq!(report.primary.as_deref(), Some("db0:5432"));
    // pgpool's status of each node, as the attach left it.
    let shown = |n: &str| {
        s.report()
            .and_then(|r| r.nodes.get(n).cloned())
            .unwrap_or_default()
    };
    wait_for("the report shows the attach", || {
        shown("db1:5432") == "waiting"
    })
    .await;
    assert_eq!(shown("db0:5432"), "up");
    assert!(
        report.acting && report.watchdog.contains("no watchdog"),
        "{report:?}"
    );
    // Nothing for db2, which has no id; nothing before the first beat.
    assert!(fake
        .calls()
        .iter()
        .all(|c| c.ends_with(" 0") || c.ends_with(" 1")));
    s.shutdown().await;
}

#[tokio::test]
async fn seeing_no_server_at_all_detaches_nothing() {
    let fake = Fake::new(&["up", "up"]);
    let mut s = sidecar(&fake.config());
    let mut st = state(Place::Lost);
    for n in &mut st.nodes {
        n.place = Place::Lost;
    }
    beat_and_wait_rounds(
        &mut s,
        &st,
        &[event(EventKind::SlaveDown, "db1")],
        NOTHING_HELD,
    )
    .await;
    assert_eq!((fake.status(0), fake.status(1)), ("up".into(), "up".into()));
    assert!(
        !fake.calls().iter().any(|c| c.starts_with("detach")),
        "{:?}",
        fake.calls()
    );
    // One server seen again: the lost one is detached.
    s.last_reconcile = None;
    s.beat(&state(Place::Lost), &[], NOTHING_HELD);
    wait_for("node 1 detached", || fake.status(1) == "down").await;
    s.shutdown().await;
}

#[tokio::test]
async fn nothing_is_done_before_the_first_beat_is_decided() {
    let fake = Fake::new(&["up", "down"]);
    let mut s = sidecar(&fake.config());
    // Nodes and an event about a mapped one, but no beat decided yet.
    let mut before = state(Place::Slave);
    before.started = false;
    s.beat(&before, &[event(EventKind::SlaveUp, "db1")], NOTHING_HELD);
    // The positive sign: the worker took that beat's job and dealt
    // with it (by doing nothing) before anything is asserted.
    let mut handled = s.worker.as_ref().expect("a worker").handled.clone();
    tokio::time::timeout(Duration::from_secs(15), handled.wait_for(|n| *n >= 1))
        .await
        .expect("the worker dealt with the job within 15 s")
        .expect("the worker is alive");
    assert!(fake.calls().is_empty(), "{:?}", fake.calls());
    assert!(s.report().is_none(), "no round, no report");
    // Once the first beat is decided, the same sidecar acts: the fake
    // pcp would have shown calls.
    s.last_reconcile = None;
    s.beat(&state(Place::Slave), &[], NOTHING_HELD);
    wait_for("node 1 attached", || fake.status(1) == "waiting").await;
    s.shutdown().await;
}

/// Shared capture of the log lines written on this thread (the tests'
/// runtime is single-threaded, so the worker's lines too).
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
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

impl Captured {
    fn install(&self) -> tracing::subscriber::DefaultGuard {
        every_subscriber_asked();
        let writer = self.clone();
        tracing::subscriber::set_default(
            tracing_subscriber::fmt()
                .with_writer(move || writer.clone())
                .with_ansi(false)
                .with_max_level(tracing::Level::INFO)
                .finish(),
        )
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
    fn count(&self, needle: &str) -> usize {
        self.text().lines().filter(|l| l.contains(needle)).count()
    }
}

#[tokio::test]
async fn a_lasting_pcp_failure_is_logged_once_retried_every_round_and_its_end_said() {
    let fake = Fake::new(&["up", "down"]);
    std::fs::write(fake.path().join("fail"), "connection refused").unwrap();
    let log = Captured::default();
    let _guard = log.install();
    let mut s = sidecar(&fake.config());
    let st = state(Place::Slave);
    let mut calls = Vec::new();
    for round in 0..4 {
        beat_and_wait_rounds(
            &mut s,
            &st,
            &[event(EventKind::SlaveUp, "db1")],
            NOTHING_HELD,
        )
        .await;
        calls.push(fake.calls().len());
        let report = s.report().expect("a report");
        assert!(
            report
                .error
                .as_deref()
                .is_some_and(|e| e.contains("connection refused")),
            "round {round}: {report:?}"
        );
    }
    // pcp is tried again at every round: no giving up.
    assert!(
        calls.windows(2).all(|w| w[1] > w[0]),
        "pcp runs after each round: {calls:?}"
    );
    assert!(
        !fake
            .calls()
            .iter()
            .any(|c| c.starts_with("attach") || c.starts_with("detach")),
        "nothing acted on while pgpool could not be read: {:?}",
        fake.calls()
    );
    assert_eq!(
        log.count("pgpool: pcp failed; retrying every beat"),
        1,
        "one line for the same failure:\n{}",
        log.text()
    );
    assert_eq!(log.count("pcp answers again"), 0);

    // Another failure is a new line; then pgpool answers.
    std::fs::write(fake.path().join("fail"), "authentication failed").unwrap();
    beat_and_wait_rounds(&mut s, &st, &[], NOTHING_HELD).await;
    assert_eq!(log.count("pgpool: pcp failed; retrying every beat"), 2);
    std::fs::remove_file(fake.path().join("fail")).unwrap();
    beat_until(
        &mut s,
        &st,
        NOTHING_HELD,
        "node 1 attached once pcp answers",
        || fake.status(1) == "waiting",
    )
    .await;
    assert_eq!(log.count("pgpool: pcp answers again"), 1, "{}", log.text());
    assert_eq!(log.count("pgpool: pcp failed"), 2, "{}", log.text());
    s.shutdown().await;
}

#[test]
fn remarks_are_said_once_until_they_change_or_come_back() {
    let log = Captured::default();
    let _guard = log.install();
    let db1 = NodeName::new("db1", 5432);
    let ids: BTreeMap<NodeName, u32> = [(db1.clone(), 1)].into();
    let remark = |text: &str| Remark {
        warn: true,
        text: text.into(),
    };
    let with = |node: Option<&str>, paused: Option<&str>| RoundPlan {
        remarks: node
            .map(|t| [(db1.clone(), remark(t))].into())
            .unwrap_or_default(),
        paused: paused.map(remark),
        ..RoundPlan::default()
    };
    let mut said = Said::default();
    for d in [
        with(Some("backing off"), None),
        with(Some("backing off"), None),
        with(Some("is a primary too"), None),
        with(Some("is a primary too"), None),
        with(None, None),
        with(Some("is a primary too"), None),
        with(None, Some("not the watchdog leader")),
        with(None, Some("not the watchdog leader")),
        with(None, None),
        with(None, None),
    ] {
        said.log(&d, &ids, &Default::default());
    }
    let text = log.text();
    let said: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_once("pgpool: ").map(|(_, rest)| rest))
        .collect();
    assert_eq!(
        said.iter()
            .map(|l| l.split(" node=").next().unwrap_or(l))
            .collect::<Vec<_>>(),
        [
            "backing off",
            "is a primary too",
            "is a primary too",
            "not the watchdog leader",
            "plusmoin acts again",
        ],
        "{text}"
    );
    assert!(
        said[0].contains("node=\"db1:5432\"") && said[0].contains("pgpool_id=1"),
        "{text}"
    );
}

/// pgpool restarts its pcp process about a second after a failback:
/// the reads confirming an attach fail for a moment. The attach is
/// still confirmed in the same round (no "pcp failed", no second
/// attach), as long as pgpool answers again within the confirm window.
#[tokio::test]
async fn an_attach_is_confirmed_through_pgpools_pcp_restart() {
    let fake = Fake::new(&["up", "down"]);
    std::fs::write(fake.path().join("restart"), "3\n").unwrap();
    let mut s = sidecar(&fake.config());
    // One beat, one round: nothing else would run another.
    s.beat(
        &state(Place::Slave),
        &[event(EventKind::SlaveUp, "db1")],
        NOTHING_HELD,
    );
    wait_for(
        "the round's report shows the attach, without a pcp error",
        || {
            s.report().is_some_and(|r| {
                r.error.is_none() && r.nodes.get("db1:5432").map(String::as_str) == Some("waiting")
            })
        },
    )
    .await;
    let calls = fake.calls();
    let attach = calls
        .iter()
        .position(|c| c == "attach 1")
        .expect("attached");
    let infos_after = calls[attach..].iter().filter(|c| *c == "info 1").count();
    assert!(infos_after >= 4, "three failed reads, then one: {calls:?}");
    assert_eq!(
        calls.iter().filter(|c| *c == "attach 1").count(),
        1,
        "{calls:?}"
    );
    s.shutdown().await;
}

#[tokio::test]
async fn refused_attach_is_retried_until_pgpool_shows_it() {
    let fake = Fake::new(&["up", "down"]);
    std::fs::write(fake.path().join("1.refuse"), "1\n").unwrap();
    let mut s = sidecar(&fake.config());
    s.beat(
        &state(Place::Slave),
        &[event(EventKind::SlaveUp, "db1")],
        NOTHING_HELD,
    );
    // The refused attach is tried again at a later round.
    let deadline = Instant::now() + Duration::from_secs(15);
    while fake.status(1) != "waiting" {
        assert!(
            Instant::now() < deadline,
            "never attached: {:?}",
            fake.calls()
        );
        s.last_reconcile = None;
        s.beat(&state(Place::Slave), &[], NOTHING_HELD);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let attaches = fake.calls().iter().filter(|c| *c == "attach 1").count();
    assert_eq!(attaches, 2, "one refused, one taken: {:?}", fake.calls());
    s.shutdown().await;
}

#[tokio::test]
async fn held_node_is_detached_and_never_attached() {
    use crate::hold::{self, Holds};
    let fake = Fake::new(&["up", "up"]);
    let config = fake.config();
    hold::hold(&config, "db1:5432").unwrap();
    // The holds as the daemon reads them, here from held.json only (no
    // database).
    let mut holds = Holds::new(&config);
    holds.assume_table_read();
    holds.refresh(vec![]);
    holds.settle().await;
    assert_eq!(holds.names(), ["db1:5432"]);
    let held = Held {
        known: holds.known(),
        nodes: holds.current(),
    };
    let mut s = sidecar(&config);
    s.beat(
        &state(Place::Slave),
        &[event(EventKind::SlaveUp, "db1")],
        held,
    );
    beat_until(
        &mut s,
        &state(Place::Slave),
        held,
        "held node 1 detached",
        || fake.status(1) == "down",
    )
    .await;
    // Further beats and events never attach it.
    beat_and_wait_rounds(
        &mut s,
        &state(Place::Slave),
        &[event(EventKind::SlaveUp, "db1")],
        held,
    )
    .await;
    assert_eq!(fake.status(1), "down");
    assert!(!fake.calls().contains(&"attach 1".to_string()));
    // Released: the next reconciliation attaches it.
    hold::release(&config, "db1:5432").unwrap();
    holds.refresh(vec![]);
    holds.settle().await;
    assert!(holds.current().is_empty());
    let held = Held {
        known: holds.known(),
        nodes: holds.current(),
    };
    beat_until(
        &mut s,
        &state(Place::Slave),
        held,
        "released node 1 attached",
        || fake.status(1) == "waiting",
    )
    .await;
    s.shutdown().await;
}

/// What pgpool 4.3's `pcp_watchdog_info -v` prints on a member.
fn watchdog_verbose(local: &str) -> String {
    format!(
        "Watchdog Cluster Information \nQuorum state             : QUORUM EXIST\n\
         Leader Node Name         : 127.0.0.1:9999 Linux other\n\n\
         Watchdog Node Information \nNode Name         : 127.0.0.1:9998 Linux me\n\
         Status Name       : {local}\n\nNode Name         : 127.0.0.1:9999 Linux other\n\
         Status Name       : LEADER\n"
    )
}

#[tokio::test]
async fn a_watchdog_follower_acts_on_nothing_until_its_pgpool_leads() {
    let fake = Fake::new(&["up", "down"]);
    std::fs::write(fake.path().join("watchdog"), watchdog_verbose("STANDBY")).unwrap();
    let mut s = sidecar(&fake.config());
    s.beat(
        &state(Place::Slave),
        &[event(EventKind::SlaveUp, "db1")],
        NOTHING_HELD,
    );
    wait_for("a round's report", || s.report().is_some()).await;
    let report = s.report().unwrap();
    assert!(!report.acting, "{report:?}");
    assert!(report.paused.unwrap().contains("not the watchdog leader"));
    assert!(
        !fake.calls().iter().any(|c| c.starts_with("attach")),
        "{:?}",
        fake.calls()
    );
    // Its pgpool becomes the leader: it takes over.
    std::fs::write(fake.path().join("watchdog"), watchdog_verbose("LEADER")).unwrap();
    s.last_reconcile = None;
    s.beat(&state(Place::Slave), &[], NOTHING_HELD);
    wait_for("node 1 attached by the new leader's plusmoin", || {
        fake.status(1) == "waiting"
    })
    .await;
    s.shutdown().await;
}
