//! The old conveniences over [`decide`], for unit tests only.

use super::*;

/// Clusters of `prev` that `next` no longer has, in id order.
pub(crate) fn dropped_clusters(prev: &State, next: &State) -> Vec<ClusterId> {
    prev.clusters
        .keys()
        .filter(|id| !next.clusters.contains_key(id))
        .copied()
        .collect()
}

/// A beat's decision with news for every node: `observations` are the
/// whole configuration, in order.
pub(crate) fn step(
    prev: &State,
    observations: &[(NodeName, Observation)],
    now: Time,
    policy: &Policy,
) -> (State, Vec<Event>) {
    let names: Vec<NodeName> = observations.iter().map(|(n, _)| n.clone()).collect();
    let d = decide(prev.clone(), &names, observations, now, policy, true);
    (d.state, d.events)
}

/// [`decide`] on a copy of `prev`.
pub(crate) fn step_news(
    prev: &State,
    nodes: &[NodeName],
    news: &[(NodeName, Observation)],
    now: Time,
    policy: &Policy,
    tick: bool,
) -> (State, Vec<Event>) {
    let d = decide(prev.clone(), nodes, news, now, policy, tick);
    (d.state, d.events)
}
