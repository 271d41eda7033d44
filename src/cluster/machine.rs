//! [`State`] and [`decide`]: how observations place nodes in
//! clusters, how lag is measured, and which events fire (README, "How it
//! works", step 3).

use super::*;
use std::collections::{BTreeMap, HashMap, HashSet};

mod replication;

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
    /// For a slave: how many bytes of WAL it had still to replay, its
    /// cluster master's position at the beat minus its replay position.
    pub lag_bytes: Option<u64>,
    /// For a slave its master's `pg_stat_replication` row matched by
    /// `application_name` shows: `sync`, `quorum`, `potential` or `async`;
    /// `None` when no single row matches it (see `replication`).
    pub sync_state: Option<&'static str>,
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
    /// Its master's synchronous replication, from the master's last beat
    /// (`None` without a master, or before it said).
    pub(crate) sync: Option<super::sync::SyncView>,
}

/// The whole state: nodes in configuration order, clusters by id.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct State {
    /// False until the first beat has been decided.
    pub started: bool,
    pub(crate) next_cluster_id: ClusterId,
    pub clusters: BTreeMap<ClusterId, Cluster>,
    pub nodes: Vec<NodeState>,
    /// The heartbeat time plusmoin last wrote on each master, by master name.
    pub(crate) last_written: BTreeMap<String, Time>,
    /// The WAL position each master was at after that write, by master
    /// name.
    pub(crate) last_wal: BTreeMap<String, u64>,
}

impl State {
    pub fn node(&self, name: &NodeName) -> Option<&NodeState> {
        self.nodes.iter().find(|n| &n.name == name)
    }

    /// The nodes of `cluster` in `place`, in configuration order.
    pub(crate) fn members(
        &self,
        cluster: ClusterId,
        place: Place,
    ) -> impl Iterator<Item = &NodeState> {
        self.nodes
            .iter()
            .filter(move |n| n.cluster_id == Some(cluster) && n.place == place)
    }

    pub(crate) fn clusterless(&self) -> impl Iterator<Item = &NodeState> {
        self.nodes.iter().filter(|n| n.place == Place::Clusterless)
    }
}

/// What [`decide`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The next state.
    pub state: State,
    /// The events, in the order [`decide`] describes.
    pub events: Vec<Event>,
    /// Whether some node changed place, cluster or the master it follows,
    /// or nodes were added or removed: what the pgpool sidecar is told of
    /// between beats.
    pub(crate) changed: bool,
    /// The clusters this decision dropped (the previous state had them,
    /// the next has not), in id order.
    pub(crate) dropped: Vec<ClusterId>,
}

/// The host and port a `host:port` text names, exactly as
/// [`NodeName`]'s `Display` writes them (an IPv6 literal in brackets, the
/// port without sign or leading zero): `None` for any other text. So a
/// heartbeat row's master is found among the nodes without writing every
/// node's name out at each decision.
pub(crate) fn name_parts(text: &str) -> Option<(&str, u16)> {
    let (head, port) = text.rsplit_once(':')?;
    let canonical = !port.is_empty()
        && port.bytes().all(|b| b.is_ascii_digit())
        && (port == "0" || !port.starts_with('0'));
    if !canonical {
        return None;
    }
    let port: u16 = port.parse().ok()?;
    match head.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(host) if host.contains(':') => Some((host, port)),
        _ if !head.contains(':') => Some((head, port)),
        _ => None,
    }
}

/// The one decision: `names` is the whole configuration in order (nodes
/// not in it are forgotten, new ones start clusterless); `news` holds
/// observations for some of them only (news about a node not in `names` is
/// ignored; should one node have several, the last one counts). It takes
/// the previous state rather than a copy of it: over a thousand nodes a
/// decision then costs little more than the news it holds
/// (benches/step.rs).
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
/// daemon with news for every node and `tick == true`. It emits no node
/// event — it only places the nodes — and emits `plusmoin_up` for every
/// cluster (whatever `tick`, so that it is never lost), then the heartbeats.
///
/// Lag is measured against the master's write known before this decision
/// (see `Beat::slave`): the daemon decides a beat's master writes before it
/// reads the slaves, so a slave read afterwards is compared with this
/// beat's write.
///
/// Events come out in this order: master changes (cluster id order, then
/// new clusters; a slave promoted beside a running master gets
/// `slave_down` in its old cluster just before `master_up` in the cluster
/// it founds), slave changes (configuration order), `plusmoin_up`,
/// `plusmoin_heartbeat`. The events of one cluster are therefore in the
/// order they happened. Which decisions are made does not depend on the
/// order of `names` or `news`; only the ids given to clusters founded in
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
/// clusters are in `Decision::dropped`; ids are never reused.
pub fn decide(
    prev: State,
    names: &[NodeName],
    news: &[(NodeName, Observation)],
    now: Time,
    policy: &Policy,
    tick: bool,
) -> Decision {
    let first = !prev.started;
    let State {
        next_cluster_id,
        clusters,
        nodes: prev_nodes,
        last_written,
        last_wal,
        ..
    } = prev;
    // Lookups by name go through a map built once per step, so that a step
    // stays linear in the number of nodes (10,000 nodes: see benches/step.rs).
    let mut by_node: HashMap<(&str, u16), usize> = HashMap::with_capacity(names.len());
    for (i, name) in names.iter().enumerate().rev() {
        // Reversed, so the first node of a name wins, as `State::node` finds.
        by_node.insert((name.host.as_str(), name.port), i);
    }
    let unique = by_node.len() == names.len();
    // Each node's news, if any (the last one, should it have several).
    let mut obs: Vec<Option<&Observation>> = vec![None; names.len()];
    if unique {
        for (name, o) in news {
            if let Some(&i) = by_node.get(&(name.host.as_str(), name.port)) {
                obs[i] = Some(o);
            }
        }
    } else if !news.is_empty() {
        // A name repeats: every node of that name has the news.
        let mut latest: HashMap<&NodeName, &Observation> = HashMap::with_capacity(news.len());
        for (name, o) in news {
            latest.insert(name, o);
        }
        for (i, name) in names.iter().enumerate() {
            obs[i] = latest.get(name).copied();
        }
    }
    // The common case: the same nodes as before, in the same order. Their
    // states are taken over as they are.
    let aligned = unique
        && prev_nodes.len() == names.len()
        && prev_nodes
            .iter()
            .zip(names)
            .all(|(n, name)| n.name == *name);
    let (next_nodes, before): (Vec<NodeState>, Vec<Before>) = if aligned {
        let before = prev_nodes
            .iter()
            .map(|n| Some((n.place, n.cluster_id)))
            .collect();
        (prev_nodes, before)
    } else {
        let mut prev_by_name: HashMap<&NodeName, &NodeState> =
            HashMap::with_capacity(prev_nodes.len());
        for n in prev_nodes.iter().rev() {
            prev_by_name.insert(&n.name, n);
        }
        names
            .iter()
            .map(|name| match prev_by_name.get(name) {
                Some(n) => ((*n).clone(), Some((n.place, n.cluster_id))),
                None => (NodeState::new(name.clone(), now), None),
            })
            .unzip()
    };
    let mut beat = Beat {
        first,
        now,
        policy,
        before,
        obs,
        next: State {
            started: true,
            next_cluster_id,
            clusters,
            nodes: next_nodes,
            last_written,
            last_wal,
        },
        written: vec![None; names.len()],
        wal_written: vec![None; names.len()],
        events: Vec::new(),
        by_node,
        led: Vec::new(),
        member_of: Vec::new(),
        changed: !aligned,
        dropped: Vec::new(),
    };
    beat.masters();
    beat.others();
    beat.drop_empty_clusters();
    beat.sync_checks();
    beat.record_writes();
    let Beat {
        mut next,
        mut events,
        by_node,
        changed,
        dropped,
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
    let known = |name: &String| name_parts(name).is_some_and(|k| by_node.contains_key(&k));
    next.last_written.retain(|name, _| known(name));
    next.last_wal.retain(|name, _| known(name));
    Decision {
        state: next,
        changed: changed || !events.is_empty(),
        events,
        dropped,
    }
}

impl NodeState {
    /// A node plusmoin has not placed yet.
    pub(crate) fn new(name: NodeName, now: Time) -> NodeState {
        NodeState {
            name,
            place: Place::Clusterless,
            cluster_id: None,
            is_slave: false,
            master_name: None,
            lag: None,
            lag_bytes: None,
            sync_state: None,
            since: now,
            last_seen: None,
            reason: Some("not probed yet".into()),
        }
    }
}

/// A node's place and cluster before a decision (`None`: a new node).
type Before = Option<(Place, Option<ClusterId>)>;

/// The working data of one decision.
struct Beat<'a> {
    first: bool,
    now: Time,
    policy: &'a Policy,
    /// Each node's place and cluster before this beat (`None`: new node).
    before: Vec<Before>,
    /// Each node's news, `None` for a node without news (kept as it was).
    obs: Vec<Option<&'a Observation>>,
    /// The state being decided. Its `last_written` stays the writes known
    /// before this decision until [`Beat::record_writes`].
    next: State,
    /// The heartbeat each master wrote in this decision's news.
    written: Vec<Option<Time>>,
    /// The WAL position each master gave with that write.
    wal_written: Vec<Option<u64>>,
    events: Vec<Event>,
    /// Index of each node (the first, should a name repeat) by host and
    /// port.
    by_node: HashMap<(&'a str, u16), usize>,
    /// The cluster each node leads, if it is a master; filled once masters
    /// are decided, since only [`Beat::masters`] changes a cluster's master.
    led: Vec<Option<ClusterId>>,
    /// Each node's cluster once masters are decided, before any slave
    /// moves: where a slave replaying a node that leads no cluster goes.
    member_of: Vec<Option<ClusterId>>,
    /// See [`Decision::changed`].
    changed: bool,
    /// See [`Decision::dropped`].
    dropped: Vec<ClusterId>,
}

impl Beat<'_> {
    fn index_of(&self, name: &NodeName) -> Option<usize> {
        self.by_node.get(&(name.host.as_str(), name.port)).copied()
    }

    /// The node a heartbeat row's `host:port` names, if it is configured.
    fn index_of_text(&self, text: &str) -> Option<usize> {
        name_parts(text).and_then(|k| self.by_node.get(&k).copied())
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
            self.changed = true;
        }
        node.place = place;
        node.cluster_id = cluster;
    }

    /// Nodes that answered as master: keep, replace, split, found (README,
    /// "How it works", step 3).
    fn masters(&mut self) {
        for (i, obs) in self.obs.iter().enumerate() {
            if let Some(Observation::Master { wrote_at, repl }) = obs {
                self.written[i] = Some(*wrote_at);
                self.wal_written[i] = repl.as_ref().and_then(|r| r.wal);
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
            // A master removed from the configuration has no index: its
            // cluster is left masterless below unless another takes it.
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
            self.next.clusters.insert(
                id,
                Cluster {
                    id,
                    master: None,
                    sync: None,
                },
            );
            self.set_master(m, id);
            self.emit(EventKind::MasterUp, id, m);
        }
    }

    fn set_master(&mut self, i: usize, id: ClusterId) {
        self.place(i, Place::Master, Some(id));
        let node = &mut self.next.nodes[i];
        node.is_slave = false;
        let own = node.name.to_string();
        if node.master_name.as_ref() != Some(&own) {
            node.master_name = Some(own);
            self.changed = true;
        }
        node.lag = None;
        node.lag_bytes = None;
        node.sync_state = None;
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
        self.led = vec![None; self.next.nodes.len()];
        // Lowest id first, as a search of the clusters in id order finds.
        for c in self.next.clusters.values().rev() {
            if let Some(m) = c.master.as_ref().and_then(|m| self.index_of(m)) {
                self.led[m] = Some(c.id);
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
        let i = self.index_of_text(master_name)?;
        self.led[i].or(self.member_of[i])
    }

    fn slave(&mut self, i: usize, heartbeat: Option<&Heartbeat>) {
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
        let replays = heartbeat.map(|hb| self.index_of_text(&hb.master_name));
        // Its own row: a slave cloned from the master plusmoin wrote on
        // (the name's text and the node's are the same exactly when they
        // name the same node).
        let own = replays == Some(Some(i));
        let (lag, lag_bytes) = match (target, heartbeat, replays) {
            (Some(t), Some(hb), Some(Some(followed))) if !own => {
                let reference = self.next.clusters[&t]
                    .master
                    .as_ref()
                    .and_then(|m| self.index_of(m))
                    .unwrap_or(followed);
                let text = self.next.nodes[reference].name.to_string();
                // `last_written` still holds the writes known before this
                // decision; `written`, this decision's. The same for the
                // WAL positions: the master's position at this beat.
                let lag = self
                    .next
                    .last_written
                    .get(&text)
                    .copied()
                    .or(self.written[reference])
                    .map(|w| w.since(hb.written_at));
                let wal = self
                    .next
                    .last_wal
                    .get(&text)
                    .copied()
                    .or(self.wal_written[reference]);
                let bytes = wal.zip(hb.replayed).map(|(w, r)| w.saturating_sub(r));
                (lag, bytes)
            }
            _ => (None, None),
        };
        let before = self.before[i];
        let stayed_slave = before == Some((Place::Slave, target));
        let limit = if self.first || stayed_slave {
            self.policy.max_sync_delay
        } else {
            self.policy.recover_sync_delay
        };
        let byte_limit = if self.first || stayed_slave {
            self.policy.max_lag_bytes
        } else {
            self.policy.recover_lag_bytes.or(self.policy.max_lag_bytes)
        };
        // The byte rule, when set, judges only a lag in bytes it knows.
        let bytes_over = byte_limit
            .zip(lag_bytes)
            .filter(|&(max, bytes)| bytes > max)
            .map(|(max, _)| max);
        let in_sync = lag.is_some_and(|l| l <= limit) && bytes_over.is_none();
        let reason = match (heartbeat, lag) {
            (None, _) => Some("no heartbeat row replayed yet".to_string()),
            (Some(_), _) if own => Some("replays its own heartbeat: follows no master".to_string()),
            (Some(hb), None) => Some(format!("follows unknown master {}", hb.master_name)),
            (Some(_), Some(l)) if l > limit => Some(format!(
                "lag {:.1} s is over {} {:.1} s",
                l.as_secs_f64(),
                if limit == self.policy.max_sync_delay {
                    "max_sync_delay"
                } else {
                    "recover_sync_delay"
                },
                limit.as_secs_f64()
            )),
            (Some(_), Some(_)) if !in_sync => Some(format!(
                "lag {} bytes is over {} {} bytes",
                lag_bytes.unwrap_or_default(),
                if byte_limit == self.policy.max_lag_bytes {
                    "max_lag_bytes"
                } else {
                    "recover_lag_bytes"
                },
                bytes_over.unwrap_or_default()
            )),
            _ => None,
        };
        {
            let node = &mut self.next.nodes[i];
            node.is_slave = true;
            let follows = heartbeat.map(|hb| &hb.master_name);
            if node.master_name.as_ref() != follows {
                node.master_name = follows.cloned();
                self.changed = true;
            }
            node.lag = lag;
            node.lag_bytes = lag_bytes;
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
        node.lag_bytes = None;
        node.sync_state = None;
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
    /// See [`decide`].
    fn drop_empty_clusters(&mut self) {
        if !self.changed {
            // No node changed cluster, none came or went: no cluster was
            // emptied.
            return;
        }
        let used: HashSet<ClusterId> = self
            .next
            .nodes
            .iter()
            .filter_map(|n| n.cluster_id)
            .collect();
        let dropped = &mut self.dropped;
        self.next.clusters.retain(|id, _| {
            let keep = used.contains(id);
            if !keep {
                dropped.push(*id);
            }
            keep
        });
    }

    /// This decision's heartbeat writes become the last known ones.
    fn record_writes(&mut self) {
        for (i, w) in self.written.iter().enumerate() {
            if let Some(w) = w {
                let name = self.next.nodes[i].name.to_string();
                match self.wal_written[i] {
                    Some(wal) => self.next.last_wal.insert(name.clone(), wal),
                    None => self.next.last_wal.remove(&name),
                };
                self.next.last_written.insert(name, *w);
            }
        }
    }
}

/// The old conveniences over [`decide`], for unit tests only.
#[cfg(test)]
pub(crate) mod testing;
