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
use super::*;

impl Beat<'_> {
    /// Runs once slaves are placed and empty clusters dropped. A cluster
    /// whose master has no news keeps its view and its slaves their
    /// states; one without a master has no view (and no event: its
    /// `master_down` said it).
    pub(super) fn sync_checks(&mut self) {
        // For each cluster whose master has news: its rows by name (`None`
        // for a name on several rows), or `None` when it shows no rows.
        type Rows = Option<HashMap<String, Option<String>>>;
        let mut tables: HashMap<ClusterId, Rows> = HashMap::new();
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
            let repl = match self.obs[m] {
                None => continue,
                Some(Observation::Master { repl, .. }) => repl.as_deref(),
                Some(_) => None,
            };
            let view = repl.map(SyncView::of);
            let waiting = view.as_ref().is_some_and(|v| v.waiting);
            let Some(cluster) = self.next.clusters.get_mut(&id) else {
                continue;
            };
            let was_waiting = cluster.sync.as_ref().is_some_and(|v| v.waiting);
            cluster.sync = view;
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
            let rows = repl.and_then(|r| r.walsenders.as_ref()).map(|ws| {
                let mut by_name: HashMap<String, Option<String>> = HashMap::new();
                for w in ws {
                    by_name
                        .entry(w.application_name.to_lowercase())
                        .and_modify(|s| *s = None)
                        .or_insert_with(|| Some(w.sync_state.clone()));
                }
                by_name
            });
            tables.insert(id, rows);
        }
        if tables.is_empty() {
            return;
        }
        for node in &mut self.next.nodes {
            let Some(rows) = node.cluster_id.and_then(|c| tables.get(&c)) else {
                continue;
            };
            node.sync_state = match rows {
                Some(rows) if node.is_slave && node.place != Place::Master => rows
                    .get(&node.name.to_string().to_lowercase())
                    .cloned()
                    .flatten(),
                _ => None,
            };
        }
    }
}

#[cfg(test)]
mod tests;
