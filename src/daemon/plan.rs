//! The beat plan: which node is probed when during one beat. Pure and
//! clock-free: every step is told the time, so the order is unit-tested
//! without servers or sleeps.
//!
//! A beat: the nodes that were masters write their heartbeat first; once a
//! master's write is back (and has had [`REPLICATION_GRACE`] to replicate),
//! the other members of its cluster are read, so a slave's lag is this
//! beat's write minus the row it shows. Nodes in no cluster with a master
//! are read once every master's write is back. A master that hangs holds
//! its cluster's reads back for [`MASTERS_BOUND`] at most, and no other
//! cluster's. Reads whose time has come go out together, on a
//! [`READ_QUANTUM`] grid from the beat's start. Once every read has gone
//! out, the beat is complete when every node asked has answered, and is
//! closed anyway `connect_timeout` (+ [`BEAT_SLACK`]) after the last reads.
//!
//! The first beat primes: every node is probed (roles unknown, masters
//! write), then the nodes that answered as slaves are read again, once
//! every node has answered or `connect_timeout` has passed.

use crate::cluster::{self, ClusterId, NodeName, State, Time};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;
use tokio::time::Instant;

/// The longest the slaves' reads wait for the masters' writes of a beat.
pub(super) const MASTERS_BOUND: Duration = Duration::from_millis(300);
/// A beat still missing answers this long after `connect_timeout` is closed
/// anyway (a request queued behind a probe already out).
pub(super) const BEAT_SLACK: Duration = Duration::from_millis(100);
/// Between a master's write coming back and its slaves' reads: time for
/// streaming replication to deliver the row (milliseconds on a LAN), so a
/// healthy slave does not show a heartbeat's lag.
pub(super) const REPLICATION_GRACE: Duration = Duration::from_millis(20);
/// [`REPLICATION_GRACE`] when priming: the row may have just been created.
pub(super) const PRIMING_GRACE: Duration = Duration::from_millis(100);
/// Reads whose time has come go out together, on this grid from the
/// beat's start: a thousand masters answering one by one give a few groups
/// of reads (each preceded by a decision of the writes), not a thousand.
pub(super) const READ_QUANTUM: Duration = Duration::from_millis(2);

/// A node to probe, and the cluster id it writes should it answer as a
/// master (`None`: it writes none it knows of).
pub(super) type Probe = (NodeName, Option<ClusterId>);

/// The beat in progress.
#[derive(Debug)]
pub(super) struct BeatPlan {
    at: Time,
    began: Instant,
    connect_timeout: Duration,
    /// The first beat: the configured nodes in order, and those whose
    /// latest answer was a slave's (read again once the masters wrote).
    priming: Option<(Vec<NodeName>, HashSet<NodeName>)>,
    /// Masters whose write of this beat has not come back yet, each with
    /// the other members of its cluster.
    masters: HashMap<NodeName, Vec<Probe>>,
    /// The nodes in no cluster with a master, read once every master's
    /// write is back.
    rest: Vec<Probe>,
    /// When `rest` goes out, once every master's write is back.
    rest_at: Option<Instant>,
    rest_sent: bool,
    /// Reads waiting for their time, by when they go out.
    due: BTreeMap<Instant, Vec<Probe>>,
    /// When reads last went out.
    reads_sent_at: Instant,
    /// Nodes asked this beat that have not answered since.
    outstanding: HashSet<NodeName>,
}

impl BeatPlan {
    /// The first beat, begun at `now` (plusmoin's clock `at`): every node
    /// is probed. Returns the plan and the probes to send now.
    pub(super) fn priming(
        names: &[NodeName],
        at: Time,
        now: Instant,
        connect_timeout: Duration,
    ) -> (BeatPlan, Vec<Probe>) {
        let probes: Vec<Probe> = names.iter().map(|n| (n.clone(), None)).collect();
        let masters = names.iter().map(|n| (n.clone(), Vec::new())).collect();
        let priming = Some((names.to_vec(), HashSet::new()));
        let plan = BeatPlan::new(at, now, connect_timeout, masters, Vec::new(), priming);
        (plan, probes)
    }

    /// A beat after the first, begun at `now` over the configured `names`
    /// and the state decided so far: each cluster's master writes first.
    /// Returns the plan and the probes to send now (the masters').
    pub(super) fn beat(
        names: &[NodeName],
        state: &State,
        at: Time,
        now: Instant,
        connect_timeout: Duration,
    ) -> (BeatPlan, Vec<Probe>) {
        let mut masters: HashMap<NodeName, Vec<Probe>> = HashMap::new();
        let mut probes = Vec::new();
        let mut rest = Vec::new();
        let mut led: HashMap<ClusterId, &NodeName> = HashMap::new();
        // Only configured nodes: a master removed by a reload is still in
        // the state until the next decision, and is not probed.
        for (name, known) in configured(names, state) {
            if let Some((cluster::Place::Master, Some(c))) = known.map(|n| (n.place, n.cluster_id))
            {
                probes.push((name.clone(), Some(c)));
                masters.insert(name.clone(), Vec::new());
                led.insert(c, name);
            }
        }
        for (name, known) in configured(names, state) {
            if known.is_some_and(|n| n.place == cluster::Place::Master) {
                continue;
            }
            let cluster = known.and_then(|n| n.cluster_id);
            let read = (name.clone(), cluster);
            match cluster.and_then(|c| led.get(&c)) {
                Some(m) => masters.get_mut(*m).expect("a master").push(read),
                None => rest.push(read),
            }
        }
        let plan = BeatPlan::new(at, now, connect_timeout, masters, rest, None);
        (plan, probes)
    }

    fn new(
        at: Time,
        began: Instant,
        connect_timeout: Duration,
        masters: HashMap<NodeName, Vec<Probe>>,
        rest: Vec<Probe>,
        priming: Option<(Vec<NodeName>, HashSet<NodeName>)>,
    ) -> BeatPlan {
        BeatPlan {
            at,
            began,
            connect_timeout,
            priming,
            outstanding: masters.keys().cloned().collect(),
            rest_at: masters.is_empty().then_some(began),
            masters,
            rest,
            rest_sent: false,
            due: BTreeMap::new(),
            reads_sent_at: began,
        }
    }

    /// plusmoin's clock when the beat began (the heartbeat written).
    pub(super) fn at(&self) -> Time {
        self.at
    }

    pub(super) fn began(&self) -> Instant {
        self.began
    }

    pub(super) fn is_priming(&self) -> bool {
        self.priming.is_some()
    }

    /// `node` answered at `now` (`slave`: as a slave). A master's answer
    /// sets when its cluster is read.
    pub(super) fn answered(&mut self, node: &NodeName, slave: bool, now: Instant) {
        self.outstanding.remove(node);
        if let Some((_, slaves)) = self.priming.as_mut() {
            if slave {
                slaves.insert(node.clone());
            } else {
                slaves.remove(node);
            }
        }
        if let Some(group) = self.masters.remove(node) {
            let grace = if self.is_priming() {
                PRIMING_GRACE
            } else {
                REPLICATION_GRACE
            };
            let at = self.on_grid(now + grace);
            if !group.is_empty() {
                self.due.entry(at).or_default().extend(group);
            }
            if self.masters.is_empty() && self.rest_at.is_none() {
                self.rest_at = Some(at);
            }
        }
    }

    /// The reads whose time has come at `now`, marked as sent: a master's
    /// cluster once its write is back (and has had time to replicate), the
    /// rest once every master's is; all of them once the masters have had
    /// their bound (a hung master holds no read back longer). `None` when
    /// nothing is due; `Some` (maybe empty: the beat's last phase began
    /// with nothing to read) otherwise. The masters' writes are to be
    /// decided before these reads are sent.
    pub(super) fn due_reads(&mut self, now: Instant) -> Option<Vec<Probe>> {
        let bound = self.masters_bound();
        let mut reads: Vec<Probe> = Vec::new();
        while let Some(group) = self.due.first_entry() {
            if *group.key() > now {
                break;
            }
            reads.extend(group.remove());
        }
        let mut rest_now = false;
        if !self.rest_sent && self.rest_at.unwrap_or(self.began + bound) <= now {
            rest_now = true;
            self.rest_sent = true;
            for (_, group) in self.masters.drain() {
                reads.extend(group);
            }
            for (_, group) in std::mem::take(&mut self.due) {
                reads.extend(group);
            }
            reads.append(&mut self.rest);
        }
        if reads.is_empty() && !rest_now {
            return None;
        }
        if let Some((names, slaves)) = &self.priming {
            // The nodes that answered as slaves, now that the masters have
            // written.
            reads = names
                .iter()
                .filter(|n| slaves.contains(*n))
                .map(|n| (n.clone(), None))
                .collect();
        }
        self.reads_sent_at = now;
        self.outstanding
            .extend(reads.iter().map(|(name, _)| name.clone()));
        Some(reads)
    }

    /// Every read of the beat has gone out.
    pub(super) fn reads_sent(&self) -> bool {
        self.rest_sent && self.due.is_empty()
    }

    /// Every read has gone out and every node asked has answered.
    pub(super) fn complete(&self) -> bool {
        self.reads_sent() && self.outstanding.is_empty()
    }

    /// When the beat must move on: reads go out, or (once all have) it is
    /// decided with the answers it has.
    pub(super) fn deadline(&self) -> Instant {
        if self.reads_sent() {
            return self.reads_sent_at + self.connect_timeout + BEAT_SLACK;
        }
        let mut next = self.due.keys().next().copied();
        if !self.rest_sent {
            let rest = self.rest_at.unwrap_or(self.began + self.masters_bound());
            next = Some(next.map_or(rest, |d| d.min(rest)));
        }
        next.unwrap_or(self.began)
    }

    /// How long a beat waits for its masters' writes before reading
    /// anyway; priming waits for every node's first answer (each ends by
    /// its deadline).
    fn masters_bound(&self) -> Duration {
        if self.is_priming() {
            self.connect_timeout + BEAT_SLACK
        } else {
            MASTERS_BOUND.min(self.connect_timeout)
        }
    }

    /// `t` rounded up to the beat's [`READ_QUANTUM`] grid.
    fn on_grid(&self, t: Instant) -> Instant {
        let q = READ_QUANTUM.as_micros();
        let since = t.saturating_duration_since(self.began).as_micros();
        let steps = since.div_ceil(q);
        self.began + Duration::from_micros((steps * q) as u64)
    }
}

/// Each configured node with its state, if it has one yet (a node added by
/// a reload joins the state at the next decision). Linear: the state's
/// nodes are the configured ones in order, except just after a reload.
fn configured<'a>(
    names: &'a [NodeName],
    state: &'a State,
) -> impl Iterator<Item = (&'a NodeName, Option<&'a cluster::NodeState>)> {
    let aligned = names.len() == state.nodes.len()
        && names.iter().zip(&state.nodes).all(|(a, b)| *a == b.name);
    let by_name: HashMap<&NodeName, &cluster::NodeState> = if aligned {
        HashMap::new()
    } else {
        state.nodes.iter().rev().map(|n| (&n.name, n)).collect()
    };
    names.iter().enumerate().map(move |(i, name)| {
        let known = if aligned {
            Some(&state.nodes[i])
        } else {
            by_name.get(name).copied()
        };
        (name, known)
    })
}

#[cfg(test)]
mod tests;
