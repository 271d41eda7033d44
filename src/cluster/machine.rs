//! [`State`] and [`step`]: the rules of SPEC §3 and the lag rules of §2.

use super::*;
use std::collections::{BTreeMap, HashMap, HashSet};

/// Where a node stands (SPEC §1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Place {
    Master,
    Slave,
    Lost,
    Clusterless,
}

impl Place {
    pub fn as_str(self) -> &'static str {
        match self {
            Place::Master => "master",
            Place::Slave => "slave",
            Place::Lost => "lost",
            Place::Clusterless => "clusterless",
        }
    }
}

/// Everything plusmoin knows about one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeState {
    pub name: NodeName,
    pub place: Place,
    /// `None` exactly when `place` is `Clusterless`.
    pub cluster_id: Option<ClusterId>,
    /// Whether the node was in recovery when last seen.
    pub is_slave: bool,
    /// For a master its own name; for a slave the master named by the
    /// heartbeat it replays; `None` while unknown.
    pub master_name: Option<String>,
    /// For a slave: how far behind its cluster's master it was last seen.
    pub lag: Option<Duration>,
    /// When the node entered its current place.
    pub since: Time,
    /// When the node last answered a probe.
    pub last_seen: Option<Time>,
    /// Why the node is lost or clusterless, when known.
    pub reason: Option<String>,
}

/// One cluster: an id and, when it has one, its master.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    pub id: ClusterId,
    pub master: Option<NodeName>,
}

/// The whole state: nodes in configuration order, clusters by id.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct State {
    /// False until the first beat has been decided.
    pub started: bool,
    pub next_cluster_id: ClusterId,
    pub clusters: BTreeMap<ClusterId, Cluster>,
    pub nodes: Vec<NodeState>,
    /// The heartbeat time plusmoin last wrote on each master, by master name.
    pub last_written: BTreeMap<String, Time>,
}

impl State {
    pub fn node(&self, name: &NodeName) -> Option<&NodeState> {
        self.nodes.iter().find(|n| &n.name == name)
    }

    /// The nodes of `cluster` in `place`, in configuration order.
    pub fn members(&self, cluster: ClusterId, place: Place) -> impl Iterator<Item = &NodeState> {
        self.nodes
            .iter()
            .filter(move |n| n.cluster_id == Some(cluster) && n.place == place)
    }

    pub fn clusterless(&self) -> impl Iterator<Item = &NodeState> {
        self.nodes.iter().filter(|n| n.place == Place::Clusterless)
    }
}

/// Decides one beat: `observations` hold one entry per configured node, in
/// configuration order (nodes missing from it were removed from the
/// configuration and are forgotten; new ones start clusterless).
///
/// Events come out in this order: master changes (cluster id order, then
/// new clusters), slave changes (configuration order), then on the first
/// beat `plusmoin_up` for every cluster, and last `plusmoin_heartbeat` for
/// every cluster. The events of one cluster are therefore in the order they
/// happened.
pub fn step(
    prev: &State,
    observations: &[(NodeName, Observation)],
    now: Time,
    policy: &Policy,
) -> (State, Vec<Event>) {
    let first = !prev.started;
    // Lookups by name go through maps built once per step, so that a step
    // stays linear in the number of nodes (10,000 nodes: see benches/step.rs).
    let mut prev_by_name: HashMap<&NodeName, &NodeState> = HashMap::new();
    for n in prev.nodes.iter().rev() {
        // Reversed, so the first node of a name wins, as `State::node` finds.
        prev_by_name.insert(&n.name, n);
    }
    let prev_node = |name: &NodeName| prev_by_name.get(name).copied();
    let mut by_node = HashMap::new();
    let mut by_name = HashMap::new();
    for (i, (name, _)) in observations.iter().enumerate().rev() {
        by_node.insert(name.clone(), i);
        by_name.insert(name.to_string(), i);
    }
    let mut beat = Beat {
        first,
        now,
        policy,
        written_before: &prev.last_written,
        before: observations
            .iter()
            .map(|(name, _)| prev_node(name).map(|n| (n.place, n.cluster_id)))
            .collect(),
        obs: observations.iter().map(|(_, o)| o).collect(),
        next: State {
            started: true,
            next_cluster_id: prev.next_cluster_id,
            clusters: prev.clusters.clone(),
            nodes: observations
                .iter()
                .map(|(name, _)| {
                    prev_node(name)
                        .cloned()
                        .unwrap_or_else(|| NodeState::new(name.clone(), now))
                })
                .collect(),
            last_written: prev.last_written.clone(),
        },
        events: Vec::new(),
        by_node,
        by_name,
        led: HashMap::new(),
    };
    beat.forget_removed_masters();
    beat.masters();
    beat.others();
    beat.drop_empty_clusters();
    let Beat {
        mut next,
        mut events,
        by_name,
        ..
    } = beat;
    if first {
        events.extend(next.clusters.keys().map(|&id| Event {
            kind: EventKind::PlusmoinUp,
            cluster_id: id,
            node: None,
        }));
    }
    events.extend(next.clusters.keys().map(|&id| Event {
        kind: EventKind::PlusmoinHeartbeat,
        cluster_id: id,
        node: None,
    }));
    next.last_written
        .retain(|name, _| by_name.contains_key(name));
    (next, events)
}

impl NodeState {
    /// A node plusmoin has not placed yet.
    pub fn new(name: NodeName, now: Time) -> NodeState {
        NodeState {
            name,
            place: Place::Clusterless,
            cluster_id: None,
            is_slave: false,
            master_name: None,
            lag: None,
            since: now,
            last_seen: None,
            reason: Some("not probed yet".into()),
        }
    }
}

/// The working data of one `step`.
struct Beat<'a> {
    first: bool,
    now: Time,
    policy: &'a Policy,
    /// The heartbeat times written before this beat.
    written_before: &'a BTreeMap<String, Time>,
    /// Each node's place and cluster before this beat (`None`: new node).
    before: Vec<Option<(Place, Option<ClusterId>)>>,
    obs: Vec<&'a Observation>,
    next: State,
    events: Vec<Event>,
    /// Index of each node (the first, should a name repeat) by name…
    by_node: HashMap<NodeName, usize>,
    /// …and by its `host:port` text, as heartbeat rows name masters.
    by_name: HashMap<String, usize>,
    /// The cluster each master leads, by `host:port`; filled once masters
    /// are decided, since only [`Beat::masters`] changes a cluster's master.
    led: HashMap<String, ClusterId>,
}

impl Beat<'_> {
    fn index_of(&self, name: &NodeName) -> Option<usize> {
        self.by_node.get(name).copied()
    }

    fn emit(&mut self, kind: EventKind, cluster_id: ClusterId, node: usize) {
        if !self.first {
            self.events.push(Event {
                kind,
                cluster_id,
                node: Some(self.next.nodes[node].name.clone()),
            });
        }
    }

    /// Moves node `i` to `place` in `cluster`, restarting `since` on a change.
    fn place(&mut self, i: usize, place: Place, cluster: Option<ClusterId>) {
        let node = &mut self.next.nodes[i];
        if node.place != place || node.cluster_id != cluster {
            node.since = self.now;
        }
        node.place = place;
        node.cluster_id = cluster;
    }

    /// A master removed from the configuration leaves its cluster masterless.
    fn forget_removed_masters(&mut self) {
        let present = &self.by_node;
        for cluster in self.next.clusters.values_mut() {
            if let Some(m) = &cluster.master {
                if !present.contains_key(m) {
                    cluster.master = None;
                }
            }
        }
    }

    /// SPEC §3 for nodes that answered as master: keep, replace, split, found.
    fn masters(&mut self) {
        for (i, obs) in self.obs.iter().enumerate() {
            if let Observation::Master { wrote_at } = obs {
                let name = self.next.nodes[i].name.to_string();
                self.next.last_written.insert(name, *wrote_at);
            }
        }
        let mut founders = Vec::new();
        let ids: Vec<ClusterId> = self.next.clusters.keys().copied().collect();
        // The nodes answering as master in each cluster, in configuration
        // order. Deciding one cluster moves no node into or out of another
        // (a cluster's master is always one of its members), so this holds
        // for the whole loop.
        let mut answering: HashMap<ClusterId, Vec<usize>> = HashMap::new();
        for (i, obs) in self.obs.iter().enumerate() {
            if let (Observation::Master { .. }, Some(c)) = (obs, self.next.nodes[i].cluster_id) {
                answering.entry(c).or_default().push(i);
            }
        }
        for id in ids {
            let candidates = answering.remove(&id).unwrap_or_default();
            let old = self.next.clusters[&id]
                .master
                .clone()
                .and_then(|m| self.index_of(&m));
            let kept = old.filter(|m| candidates.contains(m));
            let new_master = kept.or(candidates.first().copied());
            founders.extend(candidates.iter().filter(|&&c| Some(c) != new_master));
            if let Some(old) = old.filter(|&o| Some(o) != new_master) {
                // Down or demoted: it stays in the cluster, as lost unless it
                // is found in sync as a slave below.
                self.place(old, Place::Lost, Some(id));
                if new_master.is_none() {
                    self.emit(EventKind::MasterDown, id, old);
                }
            }
            if let Some(m) = new_master {
                self.set_master(m, id);
                if kept.is_none() {
                    self.emit(EventKind::MasterUp, id, m);
                }
            } else if let Some(c) = self.next.clusters.get_mut(&id) {
                c.master = None;
            }
        }
        founders.extend((0..self.obs.len()).filter(|&i| {
            self.next.nodes[i].place == Place::Clusterless
                && matches!(self.obs[i], Observation::Master { .. })
        }));
        for m in founders {
            let id = self.next.next_cluster_id;
            self.next.next_cluster_id += 1;
            self.next.clusters.insert(id, Cluster { id, master: None });
            self.set_master(m, id);
            self.emit(EventKind::MasterUp, id, m);
        }
    }

    fn set_master(&mut self, i: usize, id: ClusterId) {
        self.place(i, Place::Master, Some(id));
        let node = &mut self.next.nodes[i];
        node.is_slave = false;
        node.master_name = Some(node.name.to_string());
        node.lag = None;
        node.last_seen = Some(self.now);
        node.reason = None;
        let name = node.name.clone();
        if let Some(c) = self.next.clusters.get_mut(&id) {
            c.master = Some(name);
        }
    }

    /// Slaves and unreachable nodes, in configuration order.
    fn others(&mut self) {
        // Lowest id first, as a search of the clusters in id order finds.
        for c in self.next.clusters.values().rev() {
            if let Some(m) = &c.master {
                self.led.insert(m.to_string(), c.id);
            }
        }
        for i in 0..self.obs.len() {
            match self.obs[i] {
                Observation::Master { .. } => {}
                Observation::Slave { heartbeat } => self.slave(i, heartbeat.as_ref()),
                Observation::Down { reason } => self.down(i, reason),
            }
        }
    }

    /// The cluster a slave replaying `master_name` belongs to: the cluster
    /// that master leads, else the cluster it is a member of.
    fn cluster_of_master(&self, master_name: &str) -> Option<ClusterId> {
        self.led.get(master_name).copied().or_else(|| {
            self.by_name
                .get(master_name)
                .and_then(|&i| self.next.nodes[i].cluster_id)
        })
    }

    fn slave(&mut self, i: usize, heartbeat: Option<&Heartbeat>) {
        let own = self.next.nodes[i].name.to_string();
        let current = self.next.nodes[i].cluster_id;
        let target = heartbeat
            .and_then(|hb| self.cluster_of_master(&hb.master_name))
            .or(current);
        // Lag is measured against the cluster's current master, so a slave
        // still replaying a replaced master ages out of sync (SPEC §3). The
        // reference is the master's write of the previous beat: this beat's
        // write may not have had time to replicate (probes run concurrently),
        // and comparing with it would show every healthy slave one heartbeat
        // behind.
        let known = |m: &str| self.by_name.contains_key(m);
        let lag = match (target, heartbeat) {
            (Some(t), Some(hb)) if hb.master_name != own && known(&hb.master_name) => {
                let reference = self.next.clusters[&t]
                    .master
                    .as_ref()
                    .map(|m| m.to_string())
                    .unwrap_or_else(|| hb.master_name.clone());
                self.written_before
                    .get(&reference)
                    .or_else(|| self.next.last_written.get(&reference))
                    .map(|w| w.since(hb.written_at))
            }
            _ => None,
        };
        let before = self.before[i];
        let stayed_slave = before == Some((Place::Slave, target));
        let limit = if self.first || stayed_slave {
            self.policy.max_sync_delay
        } else {
            self.policy.recover_sync_delay
        };
        let in_sync = lag.is_some_and(|l| l <= limit);
        let reason = match (heartbeat, lag) {
            (None, _) => Some("no heartbeat row replayed yet".to_string()),
            (Some(hb), _) if hb.master_name == own => {
                Some("replays its own heartbeat: follows no master".to_string())
            }
            (Some(hb), None) => Some(format!("follows unknown master {}", hb.master_name)),
            (Some(_), Some(l)) if !in_sync => Some(format!(
                "lag {:.1} s is over {} {:.1} s",
                l.as_secs_f64(),
                if limit == self.policy.max_sync_delay {
                    "max_sync_delay"
                } else {
                    "recover_sync_delay"
                },
                limit.as_secs_f64()
            )),
            _ => None,
        };
        {
            let node = &mut self.next.nodes[i];
            node.is_slave = true;
            node.master_name = heartbeat.map(|hb| hb.master_name.clone());
            node.lag = lag;
            node.last_seen = Some(self.now);
            node.reason = reason;
        }
        let place = match target {
            None => Place::Clusterless,
            Some(_) if in_sync => Place::Slave,
            Some(_) => Place::Lost,
        };
        self.place(i, place, target);
        if let Some((Place::Slave, Some(c))) = before {
            if !stayed_slave || place != Place::Slave {
                self.emit(EventKind::SlaveDown, c, i);
            }
        }
        if let (Place::Slave, Some(t)) = (place, target) {
            if !stayed_slave {
                self.emit(EventKind::SlaveUp, t, i);
            }
        }
    }

    fn down(&mut self, i: usize, reason: &str) {
        let node = &mut self.next.nodes[i];
        node.lag = None;
        node.reason = Some(reason.to_string());
        match node.place {
            Place::Slave => {
                let c = node.cluster_id;
                self.place(i, Place::Lost, c);
                if let Some(c) = c {
                    self.emit(EventKind::SlaveDown, c, i);
                }
            }
            // A master that went down was made lost by `masters`.
            Place::Master | Place::Lost | Place::Clusterless => {}
        }
    }

    /// Clusters left without any node (removed from the configuration).
    fn drop_empty_clusters(&mut self) {
        let used: HashSet<ClusterId> = self
            .next
            .nodes
            .iter()
            .filter_map(|n| n.cluster_id)
            .collect();
        self.next.clusters.retain(|id, _| used.contains(id));
    }
}
