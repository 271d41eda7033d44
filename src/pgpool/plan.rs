//! The pure decision of the sidecar: from plusmoin's view of every mapped
//! node, pgpool's view of it (status and role), whether this plusmoin is
//! the one that acts (see [`super::pcp::Watchdog`]) and the history kept in
//! [`Memory`], which pcp actions to take — and why it takes no others.
//!
//! The rules, in the order they apply:
//! - **The primary is pgpool's.** The node pgpool shows as its primary is
//!   never detached, whatever plusmoin sees (plusmoin only says it
//!   disagrees). A node plusmoin sees as a master is never attached while
//!   pgpool has a primary: it would be a second one. Only when pgpool has
//!   had no primary for a while ([`Settings::no_primary_wait`]) may the one
//!   master plusmoin sees among pgpool's backends be attached.
//! - **Failover is pgpool's.** While pgpool has no primary, or its primary
//!   changed within [`Settings::settle`], nothing is attached or detached:
//!   pgpool's failover and `follow_primary_command` are at work.
//! - **Standbys follow pgpool's primary.** A slave is attached only when it
//!   is in sync and the heartbeat row it replays was written on pgpool's
//!   primary; a slave replaying another master is kept out.
//! - **Detach on trustworthy evidence only.** Lost nodes are detached only
//!   while plusmoin itself reaches pgpool's primary (sees it as a master);
//!   otherwise its own view is in doubt. Held nodes are detached anyway.
//! - **No fights.** A node pgpool detached again while plusmoin saw it in
//!   sync after attaching it is not attached again for a while: from one
//!   heartbeat, doubling up to [`MAX_BACKOFF`], reset once the node stayed
//!   attached that long or plusmoin saw it really go away.
//! - **One actor.** A plusmoin that is not the acting one (its pgpool is
//!   not the watchdog leader) takes no action at all.

use super::pcp::{NodeInfo, NodeStatus};
use crate::cluster::{NodeName, Place};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::time::Instant;

/// The longest back-off, and how long a node must stay attached for its
/// back-off to be forgotten.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    Attach,
    Detach,
}

impl Action {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Action::Attach => "attach",
            Action::Detach => "detach",
        }
    }
    pub(crate) fn past(self) -> &'static str {
        match self {
            Action::Attach => "attached",
            Action::Detach => "detached",
        }
    }
    /// Whether pgpool's status shows the action took effect.
    pub(crate) fn done(self, status: NodeStatus) -> bool {
        match self {
            Action::Attach => status.is_attached(),
            Action::Detach => status == NodeStatus::Down,
        }
    }
}

/// plusmoin's view of one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Ours {
    /// `None` before the first beat is decided.
    pub(crate) place: Option<Place>,
    /// For a slave, the master named by the heartbeat row it replays.
    pub(crate) master_name: Option<String>,
    pub(crate) held: bool,
}

/// Both views of one mapped node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Seen {
    pub(crate) name: NodeName,
    pub(crate) id: u32,
    pub(crate) ours: Ours,
    pub(crate) pgpool: NodeInfo,
}

/// The timings the rules depend on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Settings {
    /// plusmoin's heartbeat: the first back-off.
    pub(crate) heartbeat: Duration,
    /// How long after pgpool's primary changed nothing is done.
    pub(crate) settle: Duration,
    /// How long pgpool must have had no primary before plusmoin attaches
    /// the one master it sees.
    pub(crate) no_primary_wait: Duration,
}

impl Settings {
    pub(crate) fn new(heartbeat: Duration) -> Settings {
        Settings {
            heartbeat,
            settle: (heartbeat * 2).max(Duration::from_secs(2)),
            no_primary_wait: (heartbeat * 2).max(Duration::from_secs(10)),
        }
    }
}

/// What the sidecar remembers between rounds.
#[derive(Debug, Default, Clone)]
pub(crate) struct Memory {
    looked: bool,
    /// pgpool's attached primary at the last round.
    primary: Option<NodeName>,
    /// When that primary (or its absence) was first seen; `None` when it
    /// was already so at plusmoin's first look.
    since: Option<Instant>,
    nodes: BTreeMap<NodeName, NodeMemory>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct NodeMemory {
    /// When plusmoin attached it, while that attach still counts.
    attached_at: Option<Instant>,
    /// The current back-off (zero: none).
    delay: Duration,
    /// No attach before this.
    not_before: Option<Instant>,
}

impl Memory {
    /// Notes an action pgpool confirmed.
    pub(crate) fn record(&mut self, node: &NodeName, action: Action, now: Instant) {
        let m = self.nodes.entry(node.clone()).or_default();
        m.attached_at = match action {
            Action::Attach => Some(now),
            Action::Detach => None,
        };
    }

    /// Nodes plusmoin does not attach for now, with the time left.
    pub(crate) fn backing_off(&self, now: Instant) -> BTreeMap<NodeName, Duration> {
        self.nodes
            .iter()
            .filter_map(|(n, m)| {
                let until = m.not_before?;
                (until > now).then(|| (n.clone(), until - now))
            })
            .collect()
    }
}

/// One pcp action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Step {
    pub(crate) node: NodeName,
    pub(crate) id: u32,
    pub(crate) action: Action,
}

/// Why plusmoin does not do what its own view alone would. The texts are
/// stable while the situation lasts, so a caller can log each once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Remark {
    pub(crate) warn: bool,
    pub(crate) text: String,
}

fn warn(text: String) -> Remark {
    Remark { warn: true, text }
}

fn info(text: String) -> Remark {
    Remark { warn: false, text }
}

/// What one round does, as [`decide`] plans it: the pcp steps, and what is
/// said of the nodes left alone.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct RoundPlan {
    pub(crate) steps: Vec<Step>,
    /// pgpool's attached primary, if it has exactly one.
    pub(crate) primary: Option<NodeName>,
    /// Why plusmoin acts on no node at all this round.
    pub(crate) paused: Option<Remark>,
    /// Per node, why plusmoin leaves it as it is.
    pub(crate) remarks: BTreeMap<NodeName, Remark>,
}

/// Decides one round. `acting`: whether this plusmoin is the one that acts
/// (see [`super::pcp::Watchdog::acting`]).
pub(crate) fn decide(
    nodes: &[Seen],
    acting: bool,
    settings: &Settings,
    now: Instant,
    memory: &mut Memory,
) -> RoundPlan {
    let mut d = RoundPlan::default();
    let primaries: Vec<&Seen> = nodes
        .iter()
        .filter(|n| n.pgpool.is_attached_primary())
        .collect();
    let primary = match primaries.as_slice() {
        [] => None,
        [one] => Some(one.name.clone()),
        several => {
            let names: Vec<String> = several.iter().map(|n| n.name.to_string()).collect();
            d.paused = Some(warn(format!(
                "pgpool shows several primaries ({}): plusmoin acts on no node",
                names.join(", ")
            )));
            return d;
        }
    };
    if !memory.looked {
        // A primary already there is settled; no primary at all might be
        // a failover under way.
        memory.looked = true;
        memory.primary = primary.clone();
        memory.since = primary.is_none().then_some(now);
    } else if memory.primary != primary {
        memory.primary = primary.clone();
        memory.since = Some(now);
    }
    let unchanged_for = memory.since.map_or(Duration::MAX, |t| now - t);
    d.primary = primary.clone();
    forget(nodes, now, memory);

    if !acting {
        d.paused = Some(info(
            "this pgpool is not the watchdog leader: plusmoin watches, the leader's plusmoin acts"
                .into(),
        ));
        return d;
    }
    let Some(primary) = primary else {
        if unchanged_for < settings.no_primary_wait {
            d.paused = Some(warn(
                "pgpool has no primary (failing over?): plusmoin attaches and detaches nothing until it has one again"
                    .into(),
            ));
            return d;
        }
        sole_master(nodes, settings, now, memory, &mut d);
        return d;
    };
    if unchanged_for < settings.settle {
        d.paused = Some(info(format!(
            "pgpool's primary is now {primary}: plusmoin waits for pgpool's failover to settle"
        )));
        return d;
    }
    let Some(p) = nodes.iter().find(|n| n.name == primary) else {
        return d;
    };
    let reach = p.ours.place == Some(Place::Master);
    if !reach {
        let seen = p.ours.place.map_or("unknown", Place::as_str);
        d.remarks.insert(
            primary.clone(),
            warn(format!(
                "plusmoin disagrees with pgpool: pgpool's primary {primary} is {seen} to plusmoin; it stays pgpool's, and plusmoin detaches no standby while it does not reach it"
            )),
        );
    } else if p.ours.held {
        d.remarks.insert(
            primary.clone(),
            warn(format!(
                "{primary} is held but is pgpool's primary: not detached (switch over first)"
            )),
        );
    }
    let wanted = primary.to_string();
    for n in nodes.iter().filter(|n| n.name != primary) {
        let status = n.pgpool.status;
        let attached = status.is_attached();
        let mut step = |action| {
            d.steps.push(Step {
                node: n.name.clone(),
                id: n.id,
                action,
            })
        };
        if n.ours.held {
            if attached {
                step(Action::Detach);
            }
            continue;
        }
        match n.ours.place {
            Some(Place::Slave) if n.ours.master_name.as_deref() == Some(wanted.as_str()) => {
                if status != NodeStatus::Down {
                    continue;
                }
                if !reach {
                    d.remarks.insert(
                        n.name.clone(),
                        info(format!(
                            "not attached: plusmoin does not reach pgpool's primary {primary}"
                        )),
                    );
                    continue;
                }
                if let Some(r) = backoff(n, settings, now, memory) {
                    d.remarks.insert(n.name.clone(), r);
                    continue;
                }
                step(Action::Attach);
            }
            Some(Place::Slave) => {
                let theirs = n.ours.master_name.as_deref().unwrap_or("an unknown master");
                d.remarks.insert(
                    n.name.clone(),
                    info(format!(
                        "kept out of pgpool: it replays {theirs}, not pgpool's primary {primary}"
                    )),
                );
                if attached && reach {
                    step(Action::Detach);
                }
            }
            Some(Place::Master) => {
                d.remarks.insert(
                    n.name.clone(),
                    warn(format!(
                        "{} is a primary too, but pgpool's primary is {primary}: plusmoin never attaches it (it would be a second primary)",
                        n.name
                    )),
                );
            }
            Some(Place::Lost) => {
                if !attached {
                    continue;
                }
                if reach {
                    step(Action::Detach);
                } else {
                    d.remarks.insert(
                        n.name.clone(),
                        warn(format!(
                            "lost to plusmoin, but plusmoin does not reach pgpool's primary {primary} either: its view is in doubt, it detaches nothing (pgpool's health check decides)"
                        )),
                    );
                }
            }
            Some(Place::Clusterless) | None => {}
        }
    }
    d
}

/// Back-off bookkeeping that does not depend on acting: a node plusmoin
/// saw go away was not fought over; one that stayed attached long enough
/// is forgiven.
fn forget(nodes: &[Seen], now: Instant, memory: &mut Memory) {
    memory
        .nodes
        .retain(|name, _| nodes.iter().any(|n| &n.name == name));
    for n in nodes {
        let Some(m) = memory.nodes.get_mut(&n.name) else {
            continue;
        };
        if n.ours.place == Some(Place::Lost) {
            *m = NodeMemory::default();
        } else if let Some(t) = m.attached_at {
            if n.pgpool.status.is_attached() && now - t >= MAX_BACKOFF {
                *m = NodeMemory::default();
            }
        }
    }
}

/// Whether `n`, which plusmoin would attach, must wait: pgpool detached it
/// again after plusmoin attached it while plusmoin saw it in sync.
fn backoff(n: &Seen, settings: &Settings, now: Instant, memory: &mut Memory) -> Option<Remark> {
    let m = memory.nodes.entry(n.name.clone()).or_default();
    if m.attached_at.take().is_some() {
        m.delay = if m.delay.is_zero() {
            settings.heartbeat
        } else {
            (m.delay * 2).min(MAX_BACKOFF)
        };
        m.not_before = Some(now + m.delay);
    }
    match m.not_before {
        Some(until) if until > now => Some(warn(format!(
            "pgpool detached it again while plusmoin saw it in sync: plusmoin stops attaching it for {} s (pgpool's health check may fail on it, or follow_primary_command may be rebuilding it)",
            secs(m.delay)
        ))),
        _ => None,
    }
}

/// pgpool has had no primary for a while: the one master plusmoin sees
/// among its backends may be attached (pgpool then finds it primary).
fn sole_master(
    nodes: &[Seen],
    settings: &Settings,
    now: Instant,
    memory: &mut Memory,
    d: &mut RoundPlan,
) {
    let masters: Vec<&Seen> = nodes
        .iter()
        .filter(|n| n.ours.place == Some(Place::Master))
        .collect();
    let [m] = masters.as_slice() else {
        let names: Vec<String> = masters.iter().map(|n| n.name.to_string()).collect();
        d.paused = Some(warn(format!(
            "pgpool has no primary and plusmoin sees {} masters among its backends ({}): plusmoin attaches nothing",
            masters.len(),
            if names.is_empty() { "none".to_string() } else { names.join(", ") }
        )));
        return;
    };
    d.paused = Some(warn(format!(
        "pgpool has no primary: plusmoin attaches no standby and detaches nothing (the one master it sees is {}; a custom node_info template must print pgpool's role)",
        m.name
    )));
    if m.ours.held || m.pgpool.status != NodeStatus::Down {
        return;
    }
    if let Some(r) = backoff(m, settings, now, memory) {
        d.remarks.insert(m.name.clone(), r);
        return;
    }
    d.remarks.insert(
        m.name.clone(),
        warn(format!(
            "pgpool has had no primary for {} s or more: plusmoin attaches {}, the one master it sees among pgpool's backends",
            secs(settings.no_primary_wait),
            m.name
        )),
    );
    d.steps.push(Step {
        node: m.name.clone(),
        id: m.id,
        action: Action::Attach,
    });
}

#[cfg(test)]
mod tests;

fn secs(d: Duration) -> String {
    format!("{}", d.as_secs_f64())
}
