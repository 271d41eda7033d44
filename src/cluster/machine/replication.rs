//! Synchronous replication in a decision: each cluster's [`SyncView`]
//! from its master's news, `sync_lost` / `sync_ok` when commits start or
//! stop waiting on missing synchronous standbys, and each slave's
//! `sync_state`.
//!
//! A slave is matched to its master's `pg_stat_replication` row by
//! `application_name`: the row whose `application_name` is the node's
//! name as plusmoin writes it (`host:port`, as in the standby's
//! `primary_conninfo`), compared case-insensitively as PostgreSQL
//! compares `synchronous_standby_names`. A node no row names, or several
//! rows name, has no `sync_state` (`None`); its row, if any, still counts
//! for the master's check, which only looks at the master's rows.

use super::super::sync::SyncView;
use super::super::{MasterRepl, Walsender};
use super::*;

impl<'a> Beat<'a> {
    /// Runs once slaves are placed and empty clusters dropped. A cluster
    /// whose master has no news keeps its view and its slaves their
    /// states; one without a master has no view (and no event: its
    /// `master_down` said it).
    pub(super) fn sync_checks(&mut self) {
        // The clusters whose master has news, with its rows (`None`: it
        // showed none), to match their slaves against.
        let mut rows: HashMap<ClusterId, Option<&'a [Walsender]>> = HashMap::new();
        let ids: Vec<ClusterId> = self.next.clusters.keys().copied().collect();
        for id in ids {
            let master = self.next.clusters[&id]
                .master
                .as_ref()
                .and_then(|m| self.index_of(m));
            let Some(m) = master else {
                if let Some(c) = self.next.clusters.get_mut(&id) {
                    c.sync = None;
                }
                continue;
            };
            let repl: Option<&'a MasterRepl> = match self.obs[m] {
                None => continue,
                Some(Observation::Master { repl, .. }) => repl.as_deref(),
                Some(_) => None,
            };
            let Some(cluster) = self.next.clusters.get_mut(&id) else {
                continue;
            };
            let prev = cluster.sync.take();
            let was_waiting = prev.as_ref().is_some_and(|v| v.waiting);
            cluster.sync = repl.map(|r| SyncView::update(prev, r));
            let waiting = cluster.sync.as_ref().is_some_and(|v| v.waiting);
            if waiting != was_waiting {
                // Also on the first decision: commits waiting when plusmoin
                // starts are news an operator needs.
                self.events.push(Event {
                    kind: if waiting {
                        EventKind::SyncLost
                    } else {
                        EventKind::SyncOk
                    },
                    cluster_id: id,
                    node: Some(self.next.nodes[m].name.clone()),
                });
            }
            rows.insert(id, repl.and_then(|r| r.walsenders.as_deref()));
        }
        if rows.is_empty() {
            return;
        }
        for node in &mut self.next.nodes {
            let Some(ws) = node.cluster_id.and_then(|c| rows.get(&c)) else {
                continue;
            };
            node.sync_state = match ws {
                Some(ws) if node.is_slave && node.place != Place::Master => matched(ws, &node.name),
                _ => None,
            };
        }
    }
}

/// The `sync_state` of the one row whose `application_name` is `name`
/// (`host:port` as plusmoin writes it, case-insensitively); `None` when no
/// row, or several, name it. Compared in place: nothing is allocated per
/// slave.
fn matched(ws: &[Walsender], name: &NodeName) -> Option<&'static str> {
    let mut found = None;
    for w in ws {
        let Some((host, port)) = name_parts(&w.application_name) else {
            continue;
        };
        if port == name.port && host.eq_ignore_ascii_case(&name.host) {
            if found.is_some() {
                return None;
            }
            found = Some(
                ["sync", "quorum", "potential", "async"]
                    .into_iter()
                    .find(|s| *s == w.sync_state),
            );
        }
    }
    found.flatten()
}

#[cfg(test)]
mod tests;
