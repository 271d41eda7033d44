//! [`State`], [`step`] and [`step_news`]: how observations place nodes in
//! clusters, how lag is measured, and which events fire (README, "How it
//! works", step 3).

use super::*;
use std::collections::{BTreeMap, HashMap, HashSet};

/// Where a node stands: master or slave (in sync) of a cluster, lost (a
/// member of a cluster, but down or out of sync), or clusterless.
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
/// The same as [`step_news`] with `nodes` the names of `observations`, every
/// node with news and `tick` true (node names are unique, as the
/// configuration guarantees).
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
    let nodes = observations
        .iter()
        .map(|(name, o)| (name, Some(o)))
        .collect();
    decide(prev, nodes, now, policy, true)
}

/// Decides on the news: `nodes` is the whole configuration in order (nodes
/// not in it are forgotten, new ones start clusterless); `news` holds
/// observations for some of them only (news about a node not in `nodes` is
/// ignored; should one node have several, the last one counts).
///
/// A node without news keeps its state unchanged (its place, cluster, lag,
/// reason, since, last_seen), and a master without news stays its cluster's
/// master: a node answering as master in that cluster splits off and founds
/// a new cluster, as it would beside a master that answered.
///
/// `tick`: this is a beat's decision — emit `plusmoin_heartbeat` for every
/// cluster. News between beats (`tick == false`) emits only the node events
/// it causes.
///
/// The first decision (`prev.started == false`) is always made by the
/// daemon with news for every node and `tick == true`. As in [`step`], it
/// emits no node event — it only places the nodes — and emits
/// `plusmoin_up` for every cluster (whatever `tick`, so that it is never
/// lost), then the heartbeats.
///
/// Lag is measured against the master's write known before this decision
/// (see `Beat::slave`): the daemon steps a beat's master writes before it
/// reads the slaves, so a slave read afterwards is compared with this
/// beat's write.
///
/// Events come out in the order of [`step`]: master changes (cluster id
/// order, then new clusters; a slave promoted beside a running master gets
/// `slave_down` in its old cluster just before `master_up` in the cluster
/// it founds), slave changes (configuration order), `plusmoin_up`,
/// `plusmoin_heartbeat`. Which decisions are made does not depend on the
/// order of `nodes` or `news`; only the ids given to clusters founded in
/// the same decision, and the relative order of events about different
/// nodes, follow the configuration order.
///
/// A cluster left without any node — its nodes removed from the
/// configuration, or all of them moved to other clusters (e.g. its master
/// demoted and now following another cluster's master) — is dropped. It
/// gets no event of its own for that: the events it gets are those of its
/// nodes leaving (`master_down` for a master demoted or gone with no
/// replacement, `slave_down` for a slave in sync that leaves), and no
/// `plusmoin_heartbeat`, since it no longer exists when the heartbeats go
/// out. Trigger payloads of those events show it empty. The ids of dropped
/// clusters are given by [`dropped_clusters`]; ids are never reused.
pub fn step_news(
    prev: &State,
    nodes: &[NodeName],
    news: &[(NodeName, Observation)],
    now: Time,
    policy: &Policy,
    tick: bool,
) -> (State, Vec<Event>) {
    let mut latest: HashMap<&NodeName, &Observation> = HashMap::with_capacity(news.len());
    for (name, o) in news {
        latest.insert(name, o);
    }
    let nodes = nodes
        .iter()
        .map(|name| (name, latest.get(name).copied()))
        .collect();
    decide(prev, nodes, now, policy, tick)
}

/// The clusters of `prev` that `next` no longer has, in id order: the
/// daemon frees their trigger queues once their last events have run.
pub fn dropped_clusters(prev: &State, next: &State) -> Vec<ClusterId> {
    prev.clusters
        .keys()
        .filter(|id| !next.clusters.contains_key(id))
        .copied()
        .collect()
}

/// [`step_news`] with each configured node paired with its news, if any.
fn decide(
    prev: &State,
    nodes: Vec<(&NodeName, Option<&Observation>)>,
    now: Time,
    policy: &Policy,
    tick: bool,
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
    for (i, (name, _)) in nodes.iter().enumerate().rev() {
        by_node.insert((*name).clone(), i);
        by_name.insert(name.to_string(), i);
    }
    let mut beat = Beat {
        first,
        now,
        policy,
        written_before: &prev.last_written,
        before: nodes
            .iter()
            .map(|(name, _)| prev_node(name).map(|n| (n.place, n.cluster_id)))
            .collect(),
        obs: nodes.iter().map(|(_, o)| *o).collect(),
        next: State {
            started: true,
            next_cluster_id: prev.next_cluster_id,
            clusters: prev.clusters.clone(),
            nodes: nodes
                .iter()
                .map(|(name, _)| {
                    prev_node(name)
                        .cloned()
                        .unwrap_or_else(|| NodeState::new((*name).clone(), now))
                })
                .collect(),
            last_written: prev.last_written.clone(),
        },
        events: Vec::new(),
        by_node,
        by_name,
        led: HashMap::new(),
        member_of: Vec::new(),
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
    if tick {
        events.extend(next.clusters.keys().map(|&id| Event {
            kind: EventKind::PlusmoinHeartbeat,
            cluster_id: id,
            node: None,
        }));
    }
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

/// The working data of one decision.
struct Beat<'a> {
    first: bool,
    now: Time,
    policy: &'a Policy,
    /// The heartbeat times written before this beat.
    written_before: &'a BTreeMap<String, Time>,
    /// Each node's place and cluster before this beat (`None`: new node).
    before: Vec<Option<(Place, Option<ClusterId>)>>,
    /// Each node's news, `None` for a node without news (kept as it was).
    obs: Vec<Option<&'a Observation>>,
    next: State,
    events: Vec<Event>,
    /// Index of each node (the first, should a name repeat) by name…
    by_node: HashMap<NodeName, usize>,
    /// …and by its `host:port` text, as heartbeat rows name masters.
    by_name: HashMap<String, usize>,
    /// The cluster each master leads, by `host:port`; filled once masters
    /// are decided, since only [`Beat::masters`] changes a cluster's master.
    led: HashMap<String, ClusterId>,
    /// Each node's cluster once masters are decided, before any slave
    /// moves: where a slave replaying a node that leads no cluster goes.
    member_of: Vec<Option<ClusterId>>,
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

    /// Nodes that answered as master: keep, replace, split, found (README,
    /// "How it works", step 3).
    fn masters(&mut self) {
        for (i, obs) in self.obs.iter().enumerate() {
            if let Some(Observation::Master { wrote_at }) = obs {
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
            if let (Some(Observation::Master { .. }), Some(c)) =
                (obs, self.next.nodes[i].cluster_id)
            {
                answering.entry(c).or_default().push(i);
            }
        }
        for id in ids {
            let candidates = answering.remove(&id).unwrap_or_default();
            let old = self.next.clusters[&id]
                .master
                .clone()
                .and_then(|m| self.index_of(&m));
            // A master without news is still its cluster's master.
            let kept = old.filter(|&m| self.obs[m].is_none() || candidates.contains(&m));
            // Several nodes answering as master in a cluster whose master is
            // gone: the lowest name takes the cluster and the others split
            // off. Not the first in configuration order, so that reordering
            // the configuration changes no decision.
            let new_master = kept.or_else(|| {
                candidates
                    .iter()
                    .copied()
                    .min_by(|&a, &b| self.next.nodes[a].name.cmp(&self.next.nodes[b].name))
            });
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
                // Without news it is `kept`, and stays exactly as it was.
                if self.obs[m].is_some() {
                    self.set_master(m, id);
                }
                if kept.is_none() {
                    self.emit(EventKind::MasterUp, id, m);
                }
            } else if let Some(c) = self.next.clusters.get_mut(&id) {
                c.master = None;
            }
        }
        founders.extend((0..self.obs.len()).filter(|&i| {
            self.next.nodes[i].place == Place::Clusterless
                && matches!(self.obs[i], Some(Observation::Master { .. }))
        }));
        for m in founders {
            // A slave in sync promoted beside its running master leaves its
            // cluster like any other leaving slave.
            if let Some((Place::Slave, Some(old))) = self.before[m] {
                self.emit(EventKind::SlaveDown, old, m);
            }
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

    /// Slaves and unreachable nodes with news, in configuration order.
    fn others(&mut self) {
        self.member_of = self.next.nodes.iter().map(|n| n.cluster_id).collect();
        // Lowest id first, as a search of the clusters in id order finds.
        for c in self.next.clusters.values().rev() {
            if let Some(m) = &c.master {
                self.led.insert(m.to_string(), c.id);
            }
        }
        for i in 0..self.obs.len() {
            match self.obs[i] {
                None | Some(Observation::Master { .. }) => {}
                Some(Observation::Slave { heartbeat }) => self.slave(i, heartbeat.as_ref()),
                Some(Observation::Down { reason }) => self.down(i, reason),
            }
        }
    }

    /// The cluster a slave replaying `master_name` belongs to: the cluster
    /// that master leads, else the cluster it was a member of once masters
    /// were decided. Not the cluster it may move to later in this decision:
    /// that would make the answer depend on whether it comes before or after
    /// the slave in the configuration.
    fn cluster_of_master(&self, master_name: &str) -> Option<ClusterId> {
        self.led.get(master_name).copied().or_else(|| {
            self.by_name
                .get(master_name)
                .and_then(|&i| self.member_of[i])
        })
    }

    fn slave(&mut self, i: usize, heartbeat: Option<&Heartbeat>) {
        let own = self.next.nodes[i].name.to_string();
        let current = self.next.nodes[i].cluster_id;
        let target = heartbeat
            .and_then(|hb| self.cluster_of_master(&hb.master_name))
            .or(current);
        // Lag is measured against the cluster's current master, so a slave
        // still replaying a replaced master ages out of sync although the
        // row it shows never changes. The reference is that master's write
        // known before this decision (`written_before`), falling back to
        // this decision's write for a master with none before. The daemon
        // steps a beat's master writes before it reads the slaves, so for a
        // slave read afterwards the reference is this beat's write: lag =
        // this beat's write − the row the slave shows. A slave read decided
        // together with its master's newer write was read before that write
        // could replicate, and comparing with it would show every healthy
        // slave one heartbeat behind: it is compared with the previous
        // write.
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

    /// Drops the clusters left without any node: their nodes were removed
    /// from the configuration, or all moved to other clusters in this
    /// decision (a master demoted and following another cluster's master,
    /// its slaves following along). No event is emitted for the drop
    /// itself; the nodes' departures already gave theirs (`master_down`,
    /// `slave_down`), and the dropped cluster gets no `plusmoin_heartbeat`.
    /// See [`step_news`] and [`dropped_clusters`].
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
