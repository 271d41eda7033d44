//! [`State`] and [`step`]: the rules of SPEC §3 and the lag rules of §2.

use super::*;
use std::collections::BTreeMap;

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
/// configuration and are forgotten).
pub fn step(
    prev: &State,
    observations: &[(NodeName, Observation)],
    now: Time,
    policy: &Policy,
) -> (State, Vec<Event>) {
    let _ = (prev, observations, now, policy);
    todo!("being written")
}
