//! One round of the worker: read pgpool (its watchdog and every mapped
//! backend), decide with [`plan::decide`], send each step's pcp command and
//! confirm it, then publish the report; and what is logged once of it.

use super::super::pcp::{NodeInfo, NodeStatus, Pcp, PcpError, Watchdog};
use super::super::plan::{self, Action, Memory, Remark, RoundPlan, Seen, Settings, Step};
use super::super::templates::Command;
use super::{Job, Target, View};
use crate::cluster::{EventKind, NodeName};
use crate::logonce::{LogOnce, LogOnceMap};
use crate::metrics::{PcpOutcome, COUNTERS};
use crate::payload::PgpoolReport;
use crate::status::journal::{Entry, Journal};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{error, info, warn};

/// How long pgpool gets to show an attach or detach before it counts as not
/// taken: an attach is only queued when pcp returns.
const CONFIRM_WINDOW: Duration = Duration::from_secs(3);
const CONFIRM_POLL: Duration = Duration::from_millis(50);

/// The last pcp failure, logged once per change rather than every round.
#[derive(Default)]
pub(super) struct Health {
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
pub(super) struct Said {
    paused: LogOnce,
    nodes: LogOnceMap<NodeName>,
}

impl Said {
    pub(super) fn log(&mut self, d: &RoundPlan, ids: &BTreeMap<NodeName, u32>, journal: &Journal) {
        match &d.paused {
            Some(r) => {
                if self.paused.changed(&r.text) {
                    say(r, None, None);
                    journal.record(Entry::new("pgpool_refused").why(&r.text));
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
                let mut e = Entry::new("pgpool_refused").node(node).why(&r.text);
                if let Some(id) = ids.get(node) {
                    e = e.with("pgpool_id", *id);
                }
                journal.record(e);
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
pub(super) struct Rounds {
    pub(super) pcp: Arc<Pcp>,
    pub(super) settings: Settings,
    pub(super) report: watch::Sender<Option<PgpoolReport>>,
    pub(super) memory: Memory,
    pub(super) health: Health,
    pub(super) said: Said,
    pub(super) watchdog: Option<Watchdog>,
    pub(super) journal: Journal,
}

pub(super) async fn work(
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
        self.said.log(&d, &ids, &self.journal);
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
            let result = send_and_confirm(&self.pcp, step).await;
            let outcome = match &result {
                Ok(after) if step.action.done(*after) => PcpOutcome::Ok,
                Ok(_) => PcpOutcome::NotTaken,
                Err(_) => PcpOutcome::Failed,
            };
            COUNTERS.pcp_action(step.action == Action::Attach, outcome);
            if let Ok(after) = result {
                statuses.insert(&step.node, after);
            }
            self.journal
                .record(action_entry(step, event, before, &result));
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
                Err(ActionError::NotSent(e)) => return self.failed(&e),
                Err(ActionError::Unconfirmed(e)) => {
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
        d: &RoundPlan,
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
async fn send_and_confirm(pcp: &Pcp, step: &Step) -> Result<NodeStatus, ActionError> {
    let command = match step.action {
        Action::Attach => Command::Attach,
        Action::Detach => Command::Detach,
    };
    pcp.run(command, &step.node, step.id)
        .await
        .map_err(ActionError::NotSent)?;
    let deadline = Instant::now() + CONFIRM_WINDOW;
    loop {
        match pcp.node_info(&step.node, step.id).await {
            Ok(info) if step.action.done(info.status) || Instant::now() >= deadline => {
                return Ok(info.status)
            }
            Ok(_) => {}
            Err(e) if Instant::now() >= deadline => return Err(ActionError::Unconfirmed(e)),
            Err(_) => {}
        }
        tokio::time::sleep(CONFIRM_POLL).await;
    }
}

/// An action as the journal records it (`pgpool_attach`,
/// `pgpool_detach`): pgpool's status before and after, and the outcome
/// (`ok`, `not_taken`, `not_sent`, `unconfirmed`).
fn action_entry(
    step: &Step,
    event: Option<&str>,
    before: NodeStatus,
    result: &Result<NodeStatus, ActionError>,
) -> Entry {
    let kind = match step.action {
        Action::Attach => "pgpool_attach",
        Action::Detach => "pgpool_detach",
    };
    let e = Entry::new(kind)
        .node(&step.node)
        .with("pgpool_id", step.id)
        .with("event", event.unwrap_or("reconciliation"))
        .with("before", before.to_string());
    match result {
        Ok(after) if step.action.done(*after) => {
            e.with("after", after.to_string()).with("outcome", "ok")
        }
        Ok(after) => e
            .with("after", after.to_string())
            .with("outcome", "not_taken")
            .why(format!(
                "pgpool still shows {after}; the next round tries again"
            )),
        Err(ActionError::NotSent(err)) => e.with("outcome", "not_sent").why(err.to_string()),
        Err(ActionError::Unconfirmed(err)) => e.with("outcome", "unconfirmed").why(format!(
            "sent, but pgpool could not be asked whether it took: {err}"
        )),
    }
}

/// Why an action has no confirmed outcome.
#[derive(Debug)]
enum ActionError {
    /// The pcp command itself failed.
    NotSent(PcpError),
    /// Sent, but pgpool could not be asked afterwards whether it took.
    Unconfirmed(PcpError),
}
