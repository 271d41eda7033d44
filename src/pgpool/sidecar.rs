//! The running side: one background worker per `pgpool` section that runs
//! the event handlers and the periodic reconciliation, one job at a time,
//! never blocking the beat loop or the user triggers.
//!
//! Each beat the daemon hands over its view (what pgpool should show for
//! every mapped node, holds included) and the beat's events. An event is a
//! prompt to settle that node now, with retries; reconciliation settles
//! every node, level-triggered, so whatever happened while plusmoin or pgpool
//! was restarting is repaired without an event. Both read the newest view
//! when they run, so a job queued behind a slow one never acts on old news.

use super::hold;
use super::pcp::{NodeStatus, Pcp, PcpError};
use super::plan::{self, Action, Want};
use super::templates::Command;
use crate::cluster::{Event, EventKind, NodeName, Place, State};
use crate::config::Config;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

/// Attempts of an event handler before it leaves the node to reconciliation.
pub const ATTEMPTS: u32 = 3;
/// How long pgpool gets to show an attach or detach before it counts as not
/// taken: an attach is only queued when pcp returns.
const CONFIRM_WINDOW: Duration = Duration::from_secs(3);
const CONFIRM_POLL: Duration = Duration::from_millis(200);
/// Reconciliation runs every beat, but not more often than this: each node
/// costs a process.
const RECONCILE_EVERY: Duration = Duration::from_secs(2);
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Pause before attempt `attempt + 1`: 1 s, 2 s, 4 s…
fn backoff(attempt: u32) -> Duration {
    Duration::from_secs(1u64 << attempt.saturating_sub(1).min(5))
}

/// What the sidecar wants pgpool to show for one mapped node.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    id: u32,
    want: Want,
    place: Option<Place>,
    held: bool,
}

#[derive(Debug, Default)]
struct View {
    /// False until the first beat is decided: before it plusmoin knows
    /// nothing, and pgpool is left alone.
    started: bool,
    targets: BTreeMap<NodeName, Target>,
}

enum Job {
    Event { kind: EventKind, node: NodeName },
    Reconcile,
}

struct Worker {
    tx: mpsc::UnboundedSender<Job>,
    reconcile_queued: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

/// The daemon's handle on pgpool handling; inert without a `pgpool` section
/// (holds are still read, so `plusmoin status` shows them).
pub struct Sidecar {
    pcp: Option<Arc<Pcp>>,
    node_ids: BTreeMap<NodeName, u32>,
    held_path: PathBuf,
    held: BTreeSet<String>,
    held_error: Option<String>,
    /// Whether plusmoin saw no node up at the last beat (see [`plan::blind`]).
    blind: bool,
    view: watch::Sender<Arc<View>>,
    worker: Option<Worker>,
    last_reconcile: Option<Instant>,
}

impl Sidecar {
    /// Logs, once, what keeps pgpool handling from working (pcppass file,
    /// missing programs, nodes without an id).
    pub fn new(config: &Config) -> Sidecar {
        let (view, _) = watch::channel(Arc::new(View::default()));
        let mut s = Sidecar {
            pcp: None,
            node_ids: BTreeMap::new(),
            held_path: hold::path_for(&config.status_file),
            held: BTreeSet::new(),
            held_error: None,
            blind: false,
            view,
            worker: None,
            last_reconcile: None,
        };
        let Some(p) = &config.pgpool else {
            return s;
        };
        match Pcp::new(p, p.pcp_timeout) {
            Ok(pcp) => s.pcp = Some(Arc::new(pcp)),
            Err(e) => {
                error!("pgpool handling disabled: {e}");
                return s;
            }
        }
        s.node_ids = p.node_ids.clone();
        info!(
            pcp_host = %p.pcp_host,
            pcp_port = p.pcp_port,
            pcp_user = %p.pcp_user,
            mapped = p.node_ids.len(),
            nodes = config.nodes.len(),
            "pgpool handling on"
        );
        for w in super::problems(config) {
            error!("pgpool: {w}");
        }
        for n in super::unmapped(config) {
            warn!(node = %n, "pgpool: no pgpool node id for this node (neither pgpool_node_id nor a backend in pgpool_conf): pgpool actions leave it alone");
        }
        s
    }

    /// Takes a reloaded configuration: a new worker (the old one finishes
    /// its job in progress and ends); the holds read so far are kept.
    pub fn reconfigure(&mut self, config: &Config) {
        let mut next = Sidecar::new(config);
        next.held = std::mem::take(&mut self.held);
        *self = next;
    }

    /// The held nodes as of the last beat.
    pub fn held(&self) -> Vec<String> {
        self.held.iter().cloned().collect()
    }

    /// Takes the beat's outcome: reads the holds, queues a handler per event
    /// about a mapped node, and a reconciliation when one is due. Never
    /// waits for pgpool.
    pub fn beat(&mut self, state: &State, events: &[Event]) {
        self.read_held();
        let Some(pcp) = self.pcp.clone() else {
            return;
        };
        let blind = plan::blind(state.started, state.nodes.iter().map(|n| n.place));
        if blind != self.blind {
            if blind {
                warn!("pgpool: plusmoin reaches no server at all: it may be plusmoin that is cut off, so it detaches nothing (except held nodes) until it sees one again");
            } else {
                info!("pgpool: plusmoin sees servers again: detaching resumes");
            }
            self.blind = blind;
        }
        let targets = state
            .nodes
            .iter()
            .filter_map(|n| {
                let id = *self.node_ids.get(&n.name)?;
                let held = self.held.contains(&n.name.to_string());
                let place = state.started.then_some(n.place);
                Some((
                    n.name.clone(),
                    Target {
                        id,
                        want: plan::unless_blind(Want::of(place, held), blind, held),
                        place,
                        held,
                    },
                ))
            })
            .collect();
        self.view.send_replace(Arc::new(View {
            started: state.started,
            targets,
        }));
        let Some((tx, reconcile_queued)) = self
            .worker(pcp)
            .map(|w| (w.tx.clone(), Arc::clone(&w.reconcile_queued)))
        else {
            return;
        };
        for e in events {
            let handled = matches!(
                e.kind,
                EventKind::SlaveDown
                    | EventKind::SlaveUp
                    | EventKind::MasterUp
                    | EventKind::MasterDown
            );
            let Some(node) = e.node.as_ref().filter(|_| handled) else {
                continue;
            };
            if !self.node_ids.contains_key(node) {
                debug!(node = %node, event = %e.kind, "pgpool: node has no pgpool id; nothing to do");
                continue;
            }
            let _ = tx.send(Job::Event {
                kind: e.kind,
                node: node.clone(),
            });
        }
        let due = self
            .last_reconcile
            .map_or(true, |t| t.elapsed() >= RECONCILE_EVERY);
        if due && !reconcile_queued.swap(true, Ordering::SeqCst) {
            self.last_reconcile = Some(Instant::now());
            let _ = tx.send(Job::Reconcile);
        }
    }

    /// The worker, started on first use (it needs the runtime).
    fn worker(&mut self, pcp: Arc<Pcp>) -> Option<&Worker> {
        if self.worker.as_ref().is_some_and(|w| w.task.is_finished()) {
            error!("pgpool worker ended unexpectedly; starting a new one");
            self.worker = None;
        }
        if self.worker.is_none() {
            let runtime = tokio::runtime::Handle::try_current().ok()?;
            let (tx, rx) = mpsc::unbounded_channel();
            let queued = Arc::new(AtomicBool::new(false));
            let task = runtime.spawn(work(pcp, rx, self.view.subscribe(), Arc::clone(&queued)));
            self.worker = Some(Worker {
                tx,
                reconcile_queued: queued,
                task,
            });
        }
        self.worker.as_ref()
    }

    fn read_held(&mut self) {
        match hold::read(&self.held_path) {
            Ok(held) => {
                if self.held_error.take().is_some() {
                    info!(file = %self.held_path.display(), "hold list readable again");
                }
                for n in held.difference(&self.held) {
                    info!(node = %n, "node held: plusmoin keeps it out of pgpool until released");
                }
                for n in self.held.difference(&held) {
                    info!(node = %n, "node released: plusmoin attaches it again when it is in sync");
                }
                self.held = held;
            }
            Err(e) => {
                // Keep the last good list: releasing everything because a
                // file is unreadable would attach nodes held on purpose.
                let msg = e.to_string();
                if self.held_error.as_deref() != Some(&msg) {
                    error!("{msg} (the previous hold list stays in force)");
                    self.held_error = Some(msg);
                }
            }
        }
    }

    /// Lets the job in progress finish (bounded), then stops the worker and
    /// kills any pcp command still running.
    pub async fn shutdown(self) {
        let Some(w) = self.worker else { return };
        drop(w.tx);
        let mut task = w.task;
        if tokio::time::timeout(SHUTDOWN_GRACE, &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
    }
}

/// The last pcp failure, logged once per change rather than every beat.
#[derive(Default)]
struct Health {
    error: Option<String>,
}

impl Health {
    fn failed(&mut self, e: &PcpError) {
        let msg = e.to_string();
        if self.error.as_deref() != Some(&msg) {
            error!(error = %msg, "pgpool: pcp failed; retrying every beat, monitoring goes on");
            self.error = Some(msg);
        }
    }
    fn ok(&mut self) {
        if self.error.take().is_some() {
            info!("pgpool: pcp answers again");
        }
    }
}

async fn work(
    pcp: Arc<Pcp>,
    mut rx: mpsc::UnboundedReceiver<Job>,
    view: watch::Receiver<Arc<View>>,
    reconcile_queued: Arc<AtomicBool>,
) {
    let mut health = Health::default();
    while let Some(job) = rx.recv().await {
        match job {
            Job::Event { kind, node } => handle(&pcp, &mut health, kind, &node, &view).await,
            Job::Reconcile => {
                let v = Arc::clone(&view.borrow());
                reconcile(&pcp, &mut health, &v).await;
                reconcile_queued.store(false, Ordering::SeqCst);
            }
        }
    }
}

/// How one attempt to settle a node ended.
enum Settled {
    /// pgpool already shows what plusmoin wants.
    InStep(NodeStatus),
    /// Acted, and pgpool shows it.
    Done {
        action: Action,
        before: NodeStatus,
        after: NodeStatus,
    },
    /// Acted, but pgpool does not show it within the confirm window.
    NotTaken {
        action: Action,
        before: NodeStatus,
        after: NodeStatus,
    },
}

/// Looks at pgpool's view, acts if it differs from `want`, and confirms.
async fn settle(pcp: &Pcp, node: &NodeName, id: u32, want: Want) -> Result<Settled, PcpError> {
    let before = pcp.node_info(node, id).await?.status;
    let Some(action) = plan::action(want, before) else {
        return Ok(Settled::InStep(before));
    };
    let command = match action {
        Action::Attach => Command::Attach,
        Action::Detach => Command::Detach,
    };
    pcp.run(command, node, id).await?;
    let deadline = Instant::now() + CONFIRM_WINDOW;
    loop {
        let after = pcp.node_info(node, id).await?.status;
        if action.done(after) {
            return Ok(Settled::Done {
                action,
                before,
                after,
            });
        }
        if Instant::now() >= deadline {
            return Ok(Settled::NotTaken {
                action,
                before,
                after,
            });
        }
        tokio::time::sleep(CONFIRM_POLL).await;
    }
}

/// An event handler: settles `node` now, retrying with backoff, one log
/// line for the outcome. Each attempt reads plusmoin's newest view: a retry
/// must not detach a node that came back meanwhile.
async fn handle(
    pcp: &Pcp,
    health: &mut Health,
    kind: EventKind,
    node: &NodeName,
    view: &watch::Receiver<Arc<View>>,
) {
    let event = kind.as_str();
    let mut last = String::new();
    let mut want = Want::Leave;
    for attempt in 1..=ATTEMPTS {
        let Some(t) = view.borrow().targets.get(node).cloned() else {
            return;
        };
        let id = t.id;
        want = t.want;
        if t.want == Want::Leave {
            if t.place == Some(Place::Lost) {
                info!(node = %node, pgpool_id = id, event, "pgpool: not detaching: plusmoin reaches no server at all (pgpool's health check decides)");
            } else {
                info!(node = %node, pgpool_id = id, event, "pgpool: plusmoin does not know this node's role; pgpool left as it is");
            }
            return;
        }
        match settle(pcp, node, id, t.want).await {
            Ok(Settled::InStep(status)) => {
                health.ok();
                let why = if t.held && status == NodeStatus::Down {
                    "held: not attaching"
                } else {
                    "pgpool already agrees"
                };
                info!(node = %node, pgpool_id = id, event, pgpool_status = %status, held = t.held, "pgpool: nothing to do ({why})");
                return;
            }
            Ok(Settled::Done {
                action,
                before,
                after,
            }) => {
                health.ok();
                info!(
                    node = %node, pgpool_id = id, event, action = action.as_str(),
                    before = %before, after = %after, attempt, held = t.held,
                    "pgpool: {} node {id}", past(action)
                );
                return;
            }
            Ok(Settled::NotTaken {
                action,
                before,
                after,
            }) => {
                health.ok();
                last = format!(
                    "pgpool still shows {after} after {} (was {before})",
                    action.as_str()
                );
                warn!(node = %node, pgpool_id = id, event, action = action.as_str(), attempt, "pgpool: {last}; retrying");
            }
            Err(e) => {
                health.failed(&e);
                last = e.to_string();
            }
        }
        if attempt < ATTEMPTS {
            tokio::time::sleep(backoff(attempt)).await;
        }
    }
    let action = match want {
        Want::Attached => "attach",
        _ => "detach",
    };
    error!(
        node = %node, event, action, attempts = ATTEMPTS, error = %last,
        "pgpool: gave up on this event; reconciliation keeps trying"
    );
}

fn past(a: Action) -> &'static str {
    match a {
        Action::Attach => "attached",
        Action::Detach => "detached",
    }
}

/// Settles every mapped node once; stops at the first pcp failure (pgpool
/// unreachable: the other nodes would fail the same way, slowly).
async fn reconcile(pcp: &Pcp, health: &mut Health, v: &View) {
    if !v.started {
        return;
    }
    for (node, t) in &v.targets {
        if t.want == Want::Leave {
            continue;
        }
        match settle(pcp, node, t.id, t.want).await {
            Ok(Settled::InStep(status)) => {
                debug!(node = %node, pgpool_id = t.id, pgpool_status = %status, "pgpool: in step");
            }
            Ok(Settled::Done {
                action,
                before,
                after,
            }) => info!(
                node = %node, pgpool_id = t.id, action = action.as_str(), before = %before,
                after = %after, place = t.place.map_or("-", Place::as_str), held = t.held,
                "pgpool: reconciliation {} node {}", past(action), t.id
            ),
            Ok(Settled::NotTaken {
                action,
                before,
                after,
            }) => warn!(
                node = %node, pgpool_id = t.id, action = action.as_str(), before = %before,
                after = %after, "pgpool: reconciliation's {} not taken yet; next round retries",
                action.as_str()
            ),
            Err(e) => {
                health.failed(&e);
                return;
            }
        }
    }
    health.ok();
}

#[cfg(test)]
mod tests {
    //! The sidecar against a fake pcp: a shell script keeping each node's
    //! pgpool status in a file, which can refuse attaches (exit 0, nothing
    //! done, as pgpool does) a given number of times.
    use super::*;
    use crate::cluster::{Cluster, NodeState, Time};
    use std::path::Path;

    const FAKE_PCP: &str = r#"#!/bin/sh
# fake pcp: $1 = info|attach|detach, $2 = node id; state in this directory.
d="$(dirname "$0")"
echo "$1 $2" >> "$d/calls"
case "$1" in
  info) echo "h 5432 1 0.5 $(cat "$d/$2")" ;;
  attach)
    if [ -s "$d/$2.refuse" ]; then
      n=$(cat "$d/$2.refuse"); echo $((n - 1)) > "$d/$2.refuse"
      [ "$n" -gt 1 ] || rm -f "$d/$2.refuse"
    else
      echo waiting > "$d/$2"
    fi ;;
  detach) echo down > "$d/$2" ;;
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
                std::fs::write(dir.path().join(i.to_string()), format!("{s}\n")).unwrap();
            }
            Fake { dir }
        }
        fn path(&self) -> &Path {
            self.dir.path()
        }
        fn status(&self, id: usize) -> String {
            std::fs::read_to_string(self.path().join(id.to_string()))
                .unwrap()
                .trim()
                .to_string()
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
                                "templates": {{"attach": "{}", "detach": "{}", "node_info": "{}"}}}}}}"#,
                t("attach"),
                t("detach"),
                t("info")
            );
            crate::config::parse(&text, Path::new("x.json")).unwrap()
        }
    }

    /// db0 master, db1 in `place1`, db2 (no pgpool id) slave.
    fn state(place1: Place) -> State {
        let node = |host: &str, place| NodeState {
            place,
            cluster_id: Some(0),
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
                },
            )]
            .into(),
            nodes: vec![
                node("db0", Place::Master),
                node("db1", place1),
                node("db2", Place::Slave),
            ],
            last_written: Default::default(),
        }
    }

    fn event(kind: EventKind, host: &str) -> Event {
        Event {
            kind,
            cluster_id: 0,
            node: Some(NodeName::new(host, 5432)),
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
        let fake = Fake::new(&["down", "up"]);
        let mut s = Sidecar::new(&fake.config());
        s.beat(&state(Place::Lost), &[]);
        wait_for("node 0 attached, node 1 detached", || {
            fake.status(0) == "waiting" && fake.status(1) == "down"
        })
        .await;
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
        let mut s = Sidecar::new(&fake.config());
        let mut st = state(Place::Lost);
        for n in &mut st.nodes {
            n.place = Place::Lost;
        }
        s.beat(&st, &[event(EventKind::SlaveDown, "db1")]);
        tokio::time::sleep(Duration::from_millis(1000)).await;
        assert_eq!((fake.status(0), fake.status(1)), ("up".into(), "up".into()));
        assert!(
            !fake.calls().iter().any(|c| c.starts_with("detach")),
            "{:?}",
            fake.calls()
        );
        // One server seen again: the lost one is detached.
        s.last_reconcile = None;
        s.beat(&state(Place::Lost), &[]);
        wait_for("node 1 detached", || fake.status(1) == "down").await;
        s.shutdown().await;
    }

    #[tokio::test]
    async fn nothing_is_done_before_the_first_beat_is_decided() {
        let fake = Fake::new(&["down", "down"]);
        let mut s = Sidecar::new(&fake.config());
        s.beat(&State::default(), &[]);
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(fake.calls().is_empty(), "{:?}", fake.calls());
        s.shutdown().await;
    }

    #[tokio::test]
    async fn refused_attach_is_retried_until_pgpool_shows_it() {
        let fake = Fake::new(&["up", "down"]);
        std::fs::write(fake.path().join("1.refuse"), "1\n").unwrap();
        let mut s = Sidecar::new(&fake.config());
        // Let the first reconciliation pass, so the event handler does the work.
        s.last_reconcile = Some(Instant::now());
        s.beat(&state(Place::Slave), &[event(EventKind::SlaveUp, "db1")]);
        wait_for("node 1 attached", || fake.status(1) == "waiting").await;
        let attaches = fake.calls().iter().filter(|c| *c == "attach 1").count();
        assert_eq!(attaches, 2, "one refused, one taken: {:?}", fake.calls());
        s.shutdown().await;
    }

    #[tokio::test]
    async fn held_node_is_detached_and_never_attached() {
        let fake = Fake::new(&["up", "up"]);
        let config = fake.config();
        hold::hold(&config, "db1:5432").unwrap();
        let mut s = Sidecar::new(&config);
        s.beat(&state(Place::Slave), &[event(EventKind::SlaveUp, "db1")]);
        assert_eq!(s.held(), ["db1:5432"]);
        wait_for("held node 1 detached", || fake.status(1) == "down").await;
        // Further beats and events never attach it.
        s.last_reconcile = None;
        s.beat(&state(Place::Slave), &[event(EventKind::SlaveUp, "db1")]);
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert_eq!(fake.status(1), "down");
        assert!(!fake.calls().contains(&"attach 1".to_string()));
        // Released: the next reconciliation attaches it.
        hold::release(&config, "db1:5432").unwrap();
        s.last_reconcile = None;
        s.beat(&state(Place::Slave), &[]);
        assert!(s.held().is_empty());
        wait_for("released node 1 attached", || fake.status(1) == "waiting").await;
        s.shutdown().await;
    }
}
