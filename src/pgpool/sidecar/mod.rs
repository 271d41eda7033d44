//! The running side: one background worker per `pgpool` section that reads
//! pgpool's view, decides with `plan::decide` and applies the pcp actions,
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

use super::pcp::Pcp;
use super::plan::{Memory, Ours, Settings};
use crate::cluster::{Event, EventKind, NodeName, State};
use crate::config::Config;
use crate::payload::{HoldEntry, PgpoolReport};
use round::{work, Health, Rounds, Said};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

mod round;

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
pub(crate) struct Held<'a> {
    /// Whether the hold table has been read at least once: until then a
    /// held node could be attached by mistake, and pgpool is left alone.
    pub(crate) known: bool,
    /// The held nodes, by name (`host:port`).
    pub(crate) nodes: &'a BTreeMap<String, HoldEntry>,
}

impl Held<'_> {
    fn is_held(&self, node: &NodeName) -> bool {
        self.nodes.contains_key(&node.to_string())
    }
}

/// The daemon's handle on pgpool handling; inert without a `pgpool` section.
pub(crate) struct Sidecar {
    pcp: Option<Arc<Pcp>>,
    config: Option<crate::config::PgpoolConfig>,
    node_ids: BTreeMap<NodeName, u32>,
    settings: Settings,
    view: watch::Sender<Arc<View>>,
    report: watch::Sender<Option<PgpoolReport>>,
    worker: Option<Worker>,
    last_reconcile: Option<Instant>,
    /// Where actions and refusals are recorded.
    journal: crate::status::journal::Journal,
}

impl Sidecar {
    /// Logs, once, what keeps pgpool handling from working (pcppass file,
    /// missing programs, nodes without an id).
    pub(crate) fn new(config: &Config) -> Sidecar {
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
            journal: Default::default(),
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
    pub(crate) fn reconfigure(&mut self, config: &Config) {
        // Same pgpool and timings: keep the worker, and with it the
        // back-offs and what was already said.
        if config.pgpool == self.config && Settings::new(config.heartbeat) == self.settings {
            return;
        }
        let journal = std::mem::take(&mut self.journal);
        *self = Sidecar::new(config);
        self.journal = journal;
    }

    /// Records each action and refusal in `journal` (set before the first
    /// beat: the worker takes it when it starts).
    pub(crate) fn set_journal(&mut self, journal: crate::status::journal::Journal) {
        self.journal = journal;
    }

    /// What the worker last found out about pgpool (`None` before its first
    /// round, or without a `pgpool` section).
    pub(crate) fn report(&self) -> Option<PgpoolReport> {
        self.report.borrow().clone()
    }

    /// Takes the beat's outcome and the holds as of now: prompts a round
    /// when an event concerns a mapped node, and a reconciliation round when
    /// one is due. Never waits for pgpool.
    pub(crate) fn beat(&mut self, state: &State, events: &[Event], held: Held<'_>) {
        self.update(state, events, held, true);
    }

    /// Takes news decided between beats: the new view (with the holds as of
    /// now), and a round at once if an event concerns a mapped node; rounds
    /// are reconciled at beats only.
    pub(crate) fn news(&mut self, state: &State, events: &[Event], held: Held<'_>) {
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
                journal: self.journal.clone(),
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
    pub(crate) async fn shutdown(self) {
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

#[cfg(test)]
mod tests;
