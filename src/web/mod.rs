//! The HTTP listener (contrib/README.md, "Metrics and health endpoints"), on only when
//! `http_listen` is set: Prometheus metrics, the status JSON, and health
//! endpoints a load balancer checks (`/primary/HOST:PORT`,
//! `/replica/HOST:PORT`).
//!
//! It never touches the deciding loop: the loop publishes a [`Snapshot`]
//! (the status it has just written to the status file, and which nodes
//! were down) through a `watch` channel, which only swaps an `Arc`; the
//! listener's own tasks read the latest one. Counters are atomics kept
//! apart, in [`crate::metrics::COUNTERS`], where each part counts what it
//! does; [`metrics`] only renders them.

mod events;
/// The metrics reader of the test kits (`tests/kit`), for the unit tests.
#[cfg(test)]
#[path = "../../tests/kit/src/exposition.rs"]
mod exposition;
pub mod metrics;
pub(crate) mod routes;
mod server;
#[cfg(test)]
mod tests;

pub use server::{
    bind, serve, Listener, CONNECTION_LIFETIME, FIRST_BYTE_TIMEOUT, HEAD_TIMEOUT, MAX_PER_PEER,
};

use crate::cluster::NodeName;
use crate::payload::{NodeEntry, Status};
use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use tokio::sync::watch;

/// What the deciding loop last decided, as the listener serves it.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// The status, as written to the status file.
    pub(crate) status: Arc<Status>,
    /// Nodes (`host:port`) whose last probe failed.
    pub(crate) down: BTreeSet<String>,
    /// The event journal, which `/events` reads.
    pub(crate) journal: Option<Arc<std::path::Path>>,
}

impl Snapshot {
    /// Every node, in the status' order (clusters, then clusterless).
    pub(crate) fn nodes(&self) -> Vec<&NodeEntry> {
        let st = &self.status;
        st.clusters
            .iter()
            .flat_map(|c| c.master.iter().chain(&c.slaves).chain(&c.lost))
            .chain(&st.clusterless)
            .collect()
    }

    /// The node named `host:port`, as the status names it.
    pub(crate) fn node(&self, name: &str) -> Option<&NodeEntry> {
        self.nodes().into_iter().find(|n| n.name == name)
    }
}

/// The latest snapshot, or `None` before the first decision.
pub(crate) type Snapshots = watch::Receiver<Option<Arc<Snapshot>>>;

/// The deciding loop's end of the channel.
#[derive(Debug)]
pub struct Publisher {
    tx: watch::Sender<Option<Arc<Snapshot>>>,
    journal: Option<Arc<std::path::Path>>,
}

impl Default for Publisher {
    fn default() -> Self {
        Publisher::new()
    }
}

impl Publisher {
    pub fn new() -> Publisher {
        Publisher {
            tx: watch::channel(None).0,
            journal: None,
        }
    }

    /// The event journal `/events` reads.
    pub(crate) fn set_journal(&mut self, path: std::path::PathBuf) {
        self.journal = Some(Arc::from(path));
    }

    /// A receiver for the listener.
    pub fn subscribe(&self) -> Snapshots {
        self.tx.subscribe()
    }

    /// Publishes `status` (just written to the status file); nothing is
    /// done when no listener runs.
    pub fn publish(&self, status: Arc<Status>, down: &HashSet<NodeName>) {
        if self.tx.receiver_count() == 0 {
            return;
        }
        let down = down.iter().map(ToString::to_string).collect();
        let journal = self.journal.clone();
        self.tx.send_replace(Some(Arc::new(Snapshot {
            status,
            down,
            journal,
        })));
    }
}
