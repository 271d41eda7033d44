//! The running side: one background worker per `pgpool` section that reads
//! pgpool's view, decides with [`plan::decide`] and applies the pcp actions,
//! one round at a time, never blocking the beat loop or the user triggers.
//!
//! Each beat the daemon hands over its view (plusmoin's place of every
//! mapped node, the master each slave replays, holds). A round runs when a
//! beat's events concern a mapped node, and at least every
//! [`RECONCILE_EVERY`] otherwise: it asks pgpool whether it leads its
//! watchdog cluster, reads every mapped backend's status and role, decides,
//! acts, and confirms each action by reading pgpool again. Rounds are
//! level-triggered, so whatever happened while plusmoin or pgpool was
//! restarting is repaired without an event, and a refused action is tried
//! again next round. Each round reads the newest view, so a round queued
//! behind a slow one never acts on old news.

use super::pcp::{NodeInfo, NodeStatus, Pcp, PcpError, Watchdog};
use super::plan::{self, Action, Decision, Memory, Ours, Remark, Seen, Settings, Step};
use super::templates::Command;
use crate::cluster::{Event, EventKind, NodeName, State};
use crate::config::Config;
use crate::logonce::{LogOnce, LogOnceMap};
use crate::metrics::{PcpOutcome, COUNTERS};
use crate::payload::{HoldEntry, PgpoolReport};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

/// How long pgpool gets to show an attach or detach before it counts as not
/// taken: an attach is only queued when pcp returns.
const CONFIRM_WINDOW: Duration = Duration::from_secs(3);
const CONFIRM_POLL: Duration = Duration::from_millis(50);
/// A round runs every beat, but not more often than this without an
/// event: each node costs a process.
pub const RECONCILE_EVERY: Duration = Duration::from_secs(2);
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// plusmoin's view of one mapped node.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    id: u32,
    ours: Ours,
}

#[derive(Debug, Default)]
struct View {
    /// False until the first beat is decided: before it plusmoin knows
    /// nothing, and pgpool is left alone.
    started: bool,
    targets: BTreeMap<NodeName, Target>,
}

enum Job {
    /// Events of a beat about mapped nodes: settle them now.
    Events(Vec<(NodeName, EventKind)>),
    Reconcile,
}

struct Worker {
    tx: mpsc::UnboundedSender<Job>,
    reconcile_queued: Arc<AtomicBool>,
    /// How many times the worker has taken its queued jobs and dealt with
    /// them (a round, or nothing when the first beat is not decided yet):
    /// tests wait on it before asserting that nothing was done.
    #[cfg_attr(not(test), allow(dead_code))]
    handled: watch::Receiver<u64>,
    task: JoinHandle<()>,
}

/// The maintenance holds as the daemon last read them, handed to the
/// sidecar with each view: the sidecar reads no hold itself.
#[derive(Debug, Clone, Copy)]
pub struct Held<'a> {
    /// Whether the hold table has been read at least once: until then a
    /// held node could be attached by mistake, and pgpool is left alone.
    pub known: bool,
    /// The held nodes, by name (`host:port`).
    pub nodes: &'a BTreeMap<String, HoldEntry>,
}

impl Held<'_> {
    fn is_held(&self, node: &NodeName) -> bool {
        self.nodes.contains_key(&node.to_string())
    }
}

/// The daemon's handle on pgpool handling; inert without a `pgpool` section.
pub struct Sidecar {
    pcp: Option<Arc<Pcp>>,
    config: Option<crate::config::PgpoolConfig>,
    node_ids: BTreeMap<NodeName, u32>,
    settings: Settings,
    view: watch::Sender<Arc<View>>,
    report: watch::Sender<Option<PgpoolReport>>,
    worker: Option<Worker>,
    last_reconcile: Option<Instant>,
}

impl Sidecar {
    /// Logs, once, what keeps pgpool handling from working (pcppass file,
    /// missing programs, nodes without an id).
    pub fn new(config: &Config) -> Sidecar {
        let (view, _) = watch::channel(Arc::new(View::default()));
        let (report, _) = watch::channel(None);
        let mut s = Sidecar {
            pcp: None,
            config: config.pgpool.clone(),
            node_ids: BTreeMap::new(),
            settings: Settings::new(config.heartbeat),
            view,
            report,
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
    /// its round in progress and ends).
    pub fn reconfigure(&mut self, config: &Config) {
        // Same pgpool and timings: keep the worker, and with it the
        // back-offs and what was already said.
        if config.pgpool == self.config && Settings::new(config.heartbeat) == self.settings {
            return;
        }
        *self = Sidecar::new(config);
    }

    /// What the worker last found out about pgpool (`None` before its first
    /// round, or without a `pgpool` section).
    pub fn report(&self) -> Option<PgpoolReport> {
        self.report.borrow().clone()
    }

    /// Takes the beat's outcome and the holds as of now: prompts a round
    /// when an event concerns a mapped node, and a reconciliation round when
    /// one is due. Never waits for pgpool.
    pub fn beat(&mut self, state: &State, events: &[Event], held: Held<'_>) {
        self.update(state, events, held, true);
    }

    /// Takes news decided between beats: the new view (with the holds as of
    /// now), and a round at once if an event concerns a mapped node; rounds
    /// are reconciled at beats only.
    pub fn news(&mut self, state: &State, events: &[Event], held: Held<'_>) {
        self.update(state, events, held, false);
    }

    fn update(&mut self, state: &State, events: &[Event], held: Held<'_>, beat: bool) {
        let Some(pcp) = self.pcp.clone() else {
            return;
        };
        let targets = state
            .nodes
            .iter()
            .filter_map(|n| {
                let id = *self.node_ids.get(&n.name)?;
                let ours = Ours {
                    place: state.started.then_some(n.place),
                    master_name: n.master_name.clone(),
                    held: held.is_held(&n.name),
                };
                Some((n.name.clone(), Target { id, ours }))
            })
            .collect();
        // Until the holds have been read once, a held node could be
        // attached by mistake: pgpool is left alone.
        self.view.send_replace(Arc::new(View {
            started: state.started && held.known,
            targets,
        }));
        let settings = self.settings;
        let report = self.report.clone();
        let Some((tx, reconcile_queued)) = self
            .worker(pcp, settings, report)
            .map(|w| (w.tx.clone(), Arc::clone(&w.reconcile_queued)))
        else {
            return;
        };
        let prompted: Vec<(NodeName, EventKind)> = events
            .iter()
            .filter(|e| {
                matches!(
                    e.kind,
                    EventKind::SlaveDown
                        | EventKind::SlaveUp
                        | EventKind::MasterUp
                        | EventKind::MasterDown
                )
            })
            .filter_map(|e| {
                let node = e.node.as_ref()?;
                if !self.node_ids.contains_key(node) {
                    debug!(node = %node, event = %e.kind, "pgpool: node has no pgpool id; nothing to do");
                    return None;
                }
                Some((node.clone(), e.kind))
            })
            .collect();
        if !prompted.is_empty() {
            let _ = tx.send(Job::Events(prompted));
            return;
        }
        if !beat {
            return;
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
    fn worker(
        &mut self,
        pcp: Arc<Pcp>,
        settings: Settings,
        report: watch::Sender<Option<PgpoolReport>>,
    ) -> Option<&Worker> {
        if self.worker.as_ref().is_some_and(|w| w.task.is_finished()) {
            error!("pgpool worker ended unexpectedly; starting a new one");
            self.worker = None;
        }
        if self.worker.is_none() {
            let runtime = tokio::runtime::Handle::try_current().ok()?;
            let (tx, rx) = mpsc::unbounded_channel();
            let queued = Arc::new(AtomicBool::new(false));
            let (handled_tx, handled) = watch::channel(0);
            let rounds = Rounds {
                pcp,
                settings,
                report,
                memory: Memory::default(),
                health: Health::default(),
                said: Said::default(),
                watchdog: None,
            };
            let task = runtime.spawn(work(
                rounds,
                rx,
                self.view.subscribe(),
                Arc::clone(&queued),
                handled_tx,
            ));
            self.worker = Some(Worker {
                tx,
                reconcile_queued: queued,
                handled,
                task,
            });
        }
        self.worker.as_ref()
    }

    /// Lets the round in progress finish (bounded), then stops the worker
    /// and kills any pcp command still running.
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

/// The last pcp failure, logged once per change rather than every round.
#[derive(Default)]
struct Health {
    error: LogOnce,
}

impl Health {
    fn failed(&mut self, e: &PcpError) {
        let msg = e.to_string();
        if self.error.changed(&msg) {
            error!(error = %msg, "pgpool: pcp failed; retrying every beat, monitoring goes on");
        }
    }
    fn ok(&mut self) {
        if self.error.cleared() {
            info!("pgpool: pcp answers again");
        }
    }
}

/// The remarks of the decisions, each logged once until it changes.
#[derive(Default)]
struct Said {
    paused: LogOnce,
    nodes: LogOnceMap<NodeName>,
}

impl Said {
    fn log(&mut self, d: &Decision, ids: &BTreeMap<NodeName, u32>) {
        match &d.paused {
            Some(r) => {
                if self.paused.changed(&r.text) {
                    say(r, None, None);
                }
            }
            None => {
                if self.paused.cleared() {
                    info!("pgpool: plusmoin acts again");
                }
            }
        }
        // A node without a remark now is forgotten: its next remark, even
        // the same as before, is said again.
        self.nodes.retain(|n| d.remarks.contains_key(n));
        for (node, r) in &d.remarks {
            if self.nodes.changed(node, &r.text) {
                say(r, Some(node), ids.get(node).copied());
            }
        }
    }
}

fn say(r: &Remark, node: Option<&NodeName>, id: Option<u32>) {
    let node = node.map(ToString::to_string);
    let node = node.as_deref().unwrap_or("-");
    if r.warn {
        warn!(node, pgpool_id = id, "pgpool: {}", r.text);
    } else {
        info!(node, pgpool_id = id, "pgpool: {}", r.text);
    }
}

/// Everything a worker keeps between rounds.
struct Rounds {
    pcp: Arc<Pcp>,
    settings: Settings,
    report: watch::Sender<Option<PgpoolReport>>,
    memory: Memory,
    health: Health,
    said: Said,
    watchdog: Option<Watchdog>,
}

async fn work(
    mut r: Rounds,
    mut rx: mpsc::UnboundedReceiver<Job>,
    view: watch::Receiver<Arc<View>>,
    reconcile_queued: Arc<AtomicBool>,
    handled: watch::Sender<u64>,
) {
    // Events wait here until a round runs (none runs before the first
    // beat is decided and the holds are read).
    let mut events = BTreeMap::new();
    while let Some(job) = rx.recv().await {
        // Everything queued meanwhile is settled by this one round.
        let mut take = |job| {
            if let Job::Events(list) = job {
                events.extend(list);
            }
        };
        take(job);
        while let Ok(job) = rx.try_recv() {
            take(job);
        }
        reconcile_queued.store(false, Ordering::SeqCst);
        let v = Arc::clone(&view.borrow());
        if v.started {
            r.round(&v, &events).await;
            events.clear();
        }
        handled.send_modify(|n| *n += 1);
    }
}

impl Rounds {
    /// Reads pgpool, decides, acts and confirms; stops at the first pcp
    /// failure (pgpool unreachable: the other nodes would fail the same
    /// way, slowly).
    async fn round(&mut self, v: &View, events: &BTreeMap<NodeName, EventKind>) {
        let Some(first) = v.targets.keys().next().filter(|_| v.started) else {
            return;
        };
        let (watchdog, seen) = match read_pgpool(&self.pcp, v, first).await {
            Ok(read) => read,
            Err(e) => return self.failed(&e),
        };
        if self.watchdog.as_ref() != Some(&watchdog) {
            info!(
                acting = watchdog.acting(),
                "pgpool: {}",
                watchdog.describe()
            );
            self.watchdog = Some(watchdog.clone());
        }
        self.health.ok();
        let ids: BTreeMap<NodeName, u32> =
            v.targets.iter().map(|(n, t)| (n.clone(), t.id)).collect();
        let d = plan::decide(
            &seen,
            watchdog.acting(),
            &self.settings,
            Instant::now(),
            &mut self.memory,
        );
        self.said.log(&d, &ids);
        // pgpool's status of each node, as read and then as each action
        // left it.
        let mut statuses: BTreeMap<&NodeName, NodeStatus> =
            seen.iter().map(|s| (&s.name, s.pgpool.status)).collect();
        for step in &d.steps {
            let before = seen
                .iter()
                .find(|s| s.name == step.node)
                .map_or(NodeStatus::Unused, |s| s.pgpool.status);
            let event = events.get(&step.node).map(|k| k.as_str());
            let result = apply(&self.pcp, step).await;
            let outcome = match &result {
                Ok(after) if step.action.done(*after) => PcpOutcome::Ok,
                Ok(_) => PcpOutcome::NotTaken,
                Err(_) => PcpOutcome::Failed,
            };
            COUNTERS.pcp_action(step.action == Action::Attach, outcome);
            if let Ok(after) = result {
                statuses.insert(&step.node, after);
            }
            match result {
                Ok(after) if step.action.done(after) => {
                    self.memory.record(&step.node, step.action, Instant::now());
                    let what = if event.is_some() {
                        ""
                    } else {
                        "reconciliation "
                    };
                    info!(
                        node = %step.node, pgpool_id = step.id, event = event.unwrap_or("-"),
                        action = step.action.as_str(), before = %before, after = %after,
                        "pgpool: {what}{} node {}", step.action.past(), step.id
                    );
                }
                Ok(after) => warn!(
                    node = %step.node, pgpool_id = step.id, event = event.unwrap_or("-"),
                    action = step.action.as_str(), before = %before, after = %after,
                    "pgpool: {} not taken yet (pgpool still shows {after}); the next round tries again",
                    step.action.as_str()
                ),
                Err(ApplyError::NotSent(e)) => return self.failed(&e),
                Err(ApplyError::Unconfirmed(e)) => {
                    warn!(
                        node = %step.node, pgpool_id = step.id, event = event.unwrap_or("-"),
                        action = step.action.as_str(), before = %before,
                        "pgpool: {} of node {} sent, but pgpool could not be asked whether it took; the next round reads it again",
                        step.action.as_str(), step.id
                    );
                    return self.failed(&e);
                }
            }
        }
        // Every prompting event gets a line saying what came of it.
        for (node, kind) in events {
            if d.steps.iter().any(|s| &s.node == node) {
                continue;
            }
            let status = seen
                .iter()
                .find(|s| &s.name == node)
                .map_or(NodeStatus::Unused, |s| s.pgpool.status);
            let why = d
                .remarks
                .get(node)
                .or(d.paused.as_ref())
                .map_or("pgpool already agrees", |r| r.text.as_str());
            info!(
                node = %node, pgpool_id = ids.get(node).copied(), event = kind.as_str(),
                pgpool_status = %status, "pgpool: nothing to do ({why})"
            );
        }
        self.publish(&watchdog, &d, &statuses);
    }

    fn failed(&mut self, e: &PcpError) {
        self.health.failed(e);
        let mut report = self.report.borrow().clone().unwrap_or_default();
        report.error = Some(e.to_string());
        self.report.send_replace(Some(report));
    }

    fn publish(
        &mut self,
        watchdog: &Watchdog,
        d: &Decision,
        statuses: &BTreeMap<&NodeName, NodeStatus>,
    ) {
        let now = Instant::now();
        let report = PgpoolReport {
            watchdog: watchdog.describe(),
            acting: watchdog.acting(),
            primary: d.primary.as_ref().map(ToString::to_string),
            paused: d.paused.as_ref().map(|r| r.text.clone()),
            remarks: d
                .remarks
                .iter()
                .map(|(n, r)| (n.to_string(), r.text.clone()))
                .collect(),
            backing_off: self
                .memory
                .backing_off(now)
                .into_iter()
                .map(|(n, left)| (n.to_string(), (left.as_secs_f64() * 10.0).ceil() / 10.0))
                .collect(),
            error: None,
            nodes: statuses
                .iter()
                .map(|(n, s)| (n.to_string(), s.as_str().to_string()))
                .collect(),
        };
        self.report.send_replace(Some(report));
    }
}

/// How many pcp commands a round runs at once.
const PCP_AT_ONCE: usize = 8;

/// What one of a round's pcp reads found.
enum Read {
    Watchdog(Watchdog),
    Node(usize, NodeInfo),
}

/// pgpool's watchdog and its view of every mapped node, read together (a
/// few pcp processes at a time, so a round prompted by an event acts
/// sooner); the first failure ends the round, killing the others.
async fn read_pgpool(
    pcp: &Arc<Pcp>,
    v: &View,
    first: &NodeName,
) -> Result<(Watchdog, Vec<Seen>), PcpError> {
    let slots = Arc::new(tokio::sync::Semaphore::new(PCP_AT_ONCE));
    let mut set = tokio::task::JoinSet::new();
    let spawn_err = |e: tokio::task::JoinError| PcpError::Spawn {
        program: "pcp".into(),
        source: std::io::Error::other(e.to_string()),
    };
    {
        let (pcp, first, slots) = (Arc::clone(pcp), first.clone(), Arc::clone(&slots));
        set.spawn(async move {
            let _slot = slots.acquire_owned().await;
            (0, pcp.watchdog(&first).await.map(Read::Watchdog))
        });
    }
    let targets: Vec<(&NodeName, &Target)> = v.targets.iter().collect();
    for (i, (name, t)) in targets.iter().enumerate() {
        let (pcp, name, id, slots) = (Arc::clone(pcp), (*name).clone(), t.id, Arc::clone(&slots));
        set.spawn(async move {
            let _slot = slots.acquire_owned().await;
            (
                i + 1,
                pcp.node_info(&name, id)
                    .await
                    .map(|info| Read::Node(i, info)),
            )
        });
    }
    // Every read is awaited, and a failure reported in a fixed order
    // (watchdog first, then the nodes in order), so the same trouble gives
    // the same message round after round (it is logged once).
    let mut watchdog = None;
    let mut infos: Vec<Option<NodeInfo>> = vec![None; targets.len()];
    let mut failures: Vec<(usize, PcpError)> = Vec::new();
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok((_, Ok(Read::Watchdog(w)))) => watchdog = Some(w),
            Ok((_, Ok(Read::Node(i, info)))) => infos[i] = Some(info),
            Ok((order, Err(e))) => failures.push((order, e)),
            Err(e) => failures.push((usize::MAX, spawn_err(e))),
        }
    }
    if let Some(first_failure) = failures.into_iter().min_by_key(|(order, _)| *order) {
        return Err(first_failure.1);
    }
    let seen = targets
        .into_iter()
        .zip(infos)
        .filter_map(|((name, t), info)| {
            Some(Seen {
                name: name.clone(),
                id: t.id,
                ours: t.ours.clone(),
                pgpool: info?,
            })
        })
        .collect();
    let watchdog = watchdog.ok_or_else(|| PcpError::Unreadable {
        program: "pcp_watchdog_info".into(),
        reason: "no answer".into(),
    })?;
    Ok((watchdog, seen))
}

/// Runs the step's pcp command and reads pgpool until it shows the result
/// or the confirm window passes; pgpool's status at the end.
/// Sends `step` and reads pgpool's status of the node until the action
/// shows or `CONFIRM_WINDOW` has passed. A failed read is tried again
/// within the window: pgpool restarts its pcp process about a second after
/// a failover or failback, and a pcp command caught by that restart fails
/// ("unable to read data from socket") though the action was carried out.
async fn apply(pcp: &Pcp, step: &Step) -> Result<NodeStatus, ApplyError> {
    let command = match step.action {
        Action::Attach => Command::Attach,
        Action::Detach => Command::Detach,
    };
    pcp.run(command, &step.node, step.id)
        .await
        .map_err(ApplyError::NotSent)?;
    let deadline = Instant::now() + CONFIRM_WINDOW;
    loop {
        match pcp.node_info(&step.node, step.id).await {
            Ok(info) if step.action.done(info.status) || Instant::now() >= deadline => {
                return Ok(info.status)
            }
            Ok(_) => {}
            Err(e) if Instant::now() >= deadline => return Err(ApplyError::Unconfirmed(e)),
            Err(_) => {}
        }
        tokio::time::sleep(CONFIRM_POLL).await;
    }
}

/// Why an action has no confirmed outcome.
#[derive(Debug)]
enum ApplyError {
    /// The pcp command itself failed.
    NotSent(PcpError),
    /// Sent, but pgpool could not be asked afterwards whether it took.
    Unconfirmed(PcpError),
}

#[cfg(test)]
mod tests {
    //! The sidecar against a fake pcp: a shell script keeping each node's
    //! pgpool status in a file, which can refuse attaches (exit 0, nothing
    //! done, as pgpool does) a given number of times.
    use super::*;
    use crate::cluster::{Cluster, NodeState, Place, Time};
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

    impl Captured {
        fn install(&self) -> tracing::subscriber::DefaultGuard {
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
        let with = |node: Option<&str>, paused: Option<&str>| Decision {
            remarks: node
                .map(|t| [(db1.clone(), remark(t))].into())
                .unwrap_or_default(),
            paused: paused.map(remark),
            ..Decision::default()
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
            said.log(&d, &ids);
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
                    r.error.is_none()
                        && r.nodes.get("db1:5432").map(String::as_str) == Some("waiting")
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
}
