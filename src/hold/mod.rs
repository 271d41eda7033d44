//! Maintenance holds: nodes an operator keeps out of pgpool on purpose
//! (`plusmoin hold HOST:PORT` / `plusmoin release HOST:PORT`).
//!
//! Holds are cluster-wide: they are rows of the table `plusmoin_hold` on
//! the PostgreSQL master, beside the heartbeat table, so they replicate to
//! every standby and every plusmoin instance (one beside each pgpool of a
//! watchdog pair) reads the same list, even with the master down. A held
//! node is detached from pgpool and never attached by plusmoin until
//! released.
//!
//! Before holds were cluster-wide they were kept in `held.json` beside the
//! status file, for this host only. That file is still read: its entries
//! count as holds (placed by "held.json (this host only)"), so an upgrade
//! never attaches a node held on purpose; `release` removes a node from
//! both places, `hold` writes only the table.
//!
//! The table is plusmoin's own: every statement names its schema, and a
//! `plusmoin_hold` of another role's is never written, read or deleted from
//! (see the probe's `owner` check); `hold` and `release` refuse it, naming its
//! owner. What is read from it is bounded: only the rows of configured
//! nodes (the others are counted, up to `IGNORED_COUNT_CAP`, and a
//! warning says how many), at most `MAX_HOLDS` of them, `placed_by` and
//! `reason` cut at [`PLACED_BY_CAP`] and [`REASON_CAP`] characters (with a
//! warning naming the cap), and every text field has its control
//! characters escaped (`text::escape_controls`) as it is read, so
//! no log line, status or terminal gets a raw one.
//!
//! The parts: [`Holds`] here, the set a daemon reads every beat (and hands
//! on to the pgpool sidecar and the status); `table` (the SQL on
//! `public.plusmoin_hold`, [`place`] and [`lift`]); `legacy` (`held.json`);
//! `reader` (one background read of both).

mod legacy;
mod reader;
mod table;
#[cfg(test)]
mod tests;

pub(crate) use crate::payload::HoldEntry;
#[cfg(test)]
pub(crate) use legacy::release;
pub use legacy::{hold, path_for, read, LEGACY_PLACED_BY};
pub use table::{lift, place, placed_by, Lifted, Placed, HOLD_TABLE_DDL};

use crate::cluster::NodeName;
use crate::config::Config;
use crate::lifecycle::safefile::Owners;
use crate::logonce::LogOnce;
use crate::probe::connect::{Connector, Session};
use crate::probe::ProbeSettings;
use reader::ReadOutcome;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use tracing::{error, info, warn};

/// The most characters of a hold's `placed_by` read (plusmoin writes
/// `user@host (plusmoin instance)`); longer is cut, with a warning.
pub const PLACED_BY_CAP: usize = 256;
/// The most characters of a hold's `reason` read; longer is cut, with a
/// warning.
pub const REASON_CAP: usize = 1024;
/// The most holds read. Only configured nodes' rows are read, one per node,
/// so only a configuration of more nodes than this can reach it; the holds
/// past it (in node name order) are left out, with a warning.
pub(crate) const MAX_HOLDS: usize = 10_000;
/// Rows naming no configured node are counted up to this many.
pub(crate) const IGNORED_COUNT_CAP: i64 = 1_000;

#[derive(Debug, thiserror::Error)]
pub enum HoldError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid hold list: {source}")]
    Invalid {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{given:?} is not a configured node (configured: {known})")]
    UnknownNode { given: String, known: String },
    #[error(
        "no master reachable: a hold is stored on the master, in table plusmoin_hold ({tried})"
    )]
    NoMaster { tried: String },
    #[error("more than one master ({masters}): plusmoin does not know which one holds the cluster's holds; fix the replication first")]
    SeveralMasters { masters: String },
    #[error("{node} is the primary: switch over first (a hold keeps a node out of pgpool, and the primary cannot be)")]
    IsMaster { node: NodeName },
    #[error("{node} is pgpool's primary (pgpool node {id}): switch over first (a hold keeps a node out of pgpool, and the primary cannot be)")]
    IsPgpoolPrimary { node: NodeName, id: u32 },
    #[error(
        "cannot ask pgpool whether {node} is its primary, so the hold is not placed: {reason}"
    )]
    PgpoolUnknown { node: NodeName, reason: String },
    #[error("{what} on the master {master}: {reason}")]
    Sql {
        what: &'static str,
        master: NodeName,
        reason: String,
    },
    #[error("cannot set up the connection to the nodes: {0}")]
    Connect(String),
    /// `release` failed half-way and undid what it had done: `left` says
    /// what stays as it was.
    #[error("{reason}: nothing released ({left})")]
    NotReleased { reason: String, left: String },
    /// The master's `plusmoin_hold` belongs to a role plusmoin does not
    /// trust: never written, read or deleted from.
    #[error("on the master {master}: {reason}")]
    NotOurs { master: NodeName, reason: String },
}

/// The configured node `given` names: `host:port` (host without case, an
/// IPv6 host in brackets), or a bare host when only one node has it.
pub(crate) fn resolve(config: &Config, given: &str) -> Result<NodeName, HoldError> {
    let g = given.trim();
    let by_name = config
        .nodes
        .iter()
        .find(|n| n.name.to_string().eq_ignore_ascii_case(g));
    if let Some(n) = by_name {
        return Ok(n.name.clone());
    }
    let bare = g.trim_start_matches('[').trim_end_matches(']');
    let by_host: Vec<_> = config
        .nodes
        .iter()
        .filter(|n| n.name.host.eq_ignore_ascii_case(bare))
        .collect();
    if let [only] = by_host.as_slice() {
        return Ok(only.name.clone());
    }
    let known: Vec<String> = config.nodes.iter().map(|n| n.name.to_string()).collect();
    Err(HoldError::UnknownNode {
        given: given.to_string(),
        known: if known.is_empty() {
            "none".into()
        } else {
            known.join(", ")
        },
    })
}

/// The order to read the holds in, for [`Holds::refresh`]: the configured
/// nodes, masters first (they have the latest holds), then slaves, then
/// the rest (lost, clusterless, not seen yet), each group in configuration
/// order.
pub(crate) fn read_order(config: &Config, state: &crate::cluster::State) -> Vec<NodeName> {
    use crate::cluster::Place;
    // One map, not a search per comparison: this runs every beat.
    let places: std::collections::HashMap<&NodeName, Place> = state
        .nodes
        .iter()
        .rev()
        .map(|s| (&s.name, s.place))
        .collect();
    let rank = |n: &NodeName| match places.get(n) {
        Some(Place::Master) => 0,
        Some(Place::Slave) => 1,
        _ => 2,
    };
    let mut nodes: Vec<NodeName> = config.nodes.iter().map(|n| n.name.clone()).collect();
    nodes.sort_by_key(|n| rank(n));
    nodes
}

/// The holds a daemon reads every beat, without ever waiting for a node:
/// [`Holds::refresh`] starts a read in the background and takes the result
/// of the previous one; [`Holds::current`] is the list as of the last
/// successful read. A failed read leaves the previous list in force
/// (releasing everything because no node answers would attach nodes held on
/// purpose), and is logged once until its reason changes.
pub struct Holds {
    settings: ProbeSettings,
    /// The configured nodes' names: only their holds are read.
    configured: Vec<String>,
    held_path: PathBuf,
    /// Who may own `held_path`.
    owners: Owners,
    /// Built at the first read (it reads `sslrootcert`).
    connector: Option<Connector>,
    /// The connection of the last read, reused when its node is tried again.
    cached: Option<(NodeName, Session)>,
    /// The read running in the background, and where its result arrives.
    in_flight: Option<(
        tokio::task::JoinHandle<()>,
        tokio::sync::oneshot::Receiver<ReadOutcome>,
    )>,
    table: BTreeMap<String, HoldEntry>,
    file: BTreeSet<String>,
    current: BTreeMap<String, HoldEntry>,
    /// Whether the table has been read at least once.
    table_known: bool,
    table_error: LogOnce,
    file_error: LogOnce,
    /// What the last table read left out or cut.
    table_notes: LogOnce,
}

fn configured(config: &Config) -> Vec<String> {
    config.nodes.iter().map(|n| n.name.to_string()).collect()
}

impl Holds {
    /// No I/O: the first read happens at the first [`Holds::refresh`].
    pub fn new(config: &Config) -> Holds {
        Holds {
            settings: ProbeSettings::from_config(config),
            configured: configured(config),
            held_path: path_for(&config.status_file),
            owners: legacy::owners(config),
            connector: None,
            cached: None,
            in_flight: None,
            table: BTreeMap::new(),
            file: BTreeSet::new(),
            current: BTreeMap::new(),
            table_known: false,
            table_error: LogOnce::default(),
            file_error: LogOnce::default(),
            table_notes: LogOnce::default(),
        }
    }

    /// Takes a reloaded configuration; the holds read so far stay in force.
    /// A read in flight finishes with the old settings.
    pub(crate) fn reconfigure(&mut self, config: &Config) {
        let settings = ProbeSettings::from_config(config);
        if settings != self.settings {
            self.connector = None;
            self.cached = None;
        }
        self.settings = settings;
        self.configured = configured(config);
        self.held_path = path_for(&config.status_file);
        self.owners = legacy::owners(config);
    }

    /// Takes the result of a finished background read, then starts a new
    /// one if none is in flight; never waits. `candidates` are the nodes to
    /// read from, in order (masters first, then slaves, then the rest): the
    /// first that answers wins; a missing table there means no holds. Must
    /// be called within a tokio runtime.
    pub fn refresh(&mut self, candidates: Vec<NodeName>) {
        if let Some((_, rx)) = &mut self.in_flight {
            match rx.try_recv() {
                Ok(outcome) => {
                    self.in_flight = None;
                    self.apply(Some(outcome));
                }
                Err(tokio::sync::oneshot::error::TryRecvError::Empty) => return,
                Err(tokio::sync::oneshot::error::TryRecvError::Closed) => {
                    self.in_flight = None;
                    self.apply(None);
                }
            }
        }
        let connector = self.connector.take();
        let cached = self.cached.take();
        let settings = self.settings.clone();
        let held_path = self.held_path.clone();
        let owners = self.owners.clone();
        let configured = self.configured.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let outcome = reader::read_all(
                settings, connector, cached, candidates, configured, held_path, owners,
            )
            .await;
            let _ = tx.send(outcome);
        });
        self.in_flight = Some((task, rx));
    }

    /// Waits for the read in flight, if any, and takes its result (for
    /// tests, and for a caller that wants the holds before acting).
    pub async fn settle(&mut self) {
        if let Some((_task, rx)) = self.in_flight.take() {
            self.apply(rx.await.ok());
        }
    }

    /// The holds as of the last successful read, by node name.
    pub fn current(&self) -> &BTreeMap<String, HoldEntry> {
        &self.current
    }

    /// The held node names.
    pub fn names(&self) -> Vec<String> {
        self.current.keys().cloned().collect()
    }

    /// For tests of callers that have no database: the table counts as
    /// read (and empty); `held.json` is still read.
    #[cfg(test)]
    pub(crate) fn assume_table_read(&mut self) {
        self.table_known = true;
    }

    /// Whether `node` is held.
    #[cfg(test)]
    pub(crate) fn is_held(&self, node: &NodeName) -> bool {
        self.current.contains_key(&node.to_string())
    }

    /// Whether the hold table has been read at least once: until then only
    /// `held.json`'s holds are known, and a caller should not attach nodes.
    pub fn known(&self) -> bool {
        self.table_known
    }

    /// Takes a read's outcome (`None`: the read task died).
    fn apply(&mut self, outcome: Option<ReadOutcome>) {
        let outcome = outcome.unwrap_or_else(|| ReadOutcome {
            connector: None,
            cached: None,
            table: Err("the hold read ended without an answer".into()),
            file: Err("the hold read ended without an answer".into()),
        });
        if outcome.connector.is_some() {
            self.connector = outcome.connector;
        }
        self.cached = outcome.cached;
        match outcome.table {
            Ok((from, read)) => {
                if self.table_error.cleared() {
                    info!(node = %from, "holds readable again");
                }
                if read.notes.is_empty() {
                    self.table_notes.cleared();
                } else if self.table_notes.changed(read.notes.join("\n")) {
                    for note in &read.notes {
                        warn!(node = %from, "{note}");
                    }
                }
                self.table = read.holds;
                self.table_known = true;
            }
            Err(msg) => {
                if self.table_error.changed(&msg) {
                    error!("cannot read the holds: {msg} (the previous hold list stays in force)");
                }
            }
        }
        match outcome.file {
            Ok(file) => {
                if self.file_error.cleared() {
                    info!(file = %self.held_path.display(), "hold list readable again");
                }
                self.file = file;
            }
            Err(msg) => {
                if self.file_error.changed(&msg) {
                    error!("{msg} (the previous hold list stays in force)");
                }
            }
        }
        let next = merge(&self.table, &self.file);
        log_changes(&self.current, &next);
        self.current = next;
    }
}

impl Drop for Holds {
    fn drop(&mut self) {
        if let Some((task, _)) = self.in_flight.take() {
            task.abort();
        }
    }
}

/// The table's holds, and `held.json`'s for the nodes the table does not
/// hold.
fn merge(
    table: &BTreeMap<String, HoldEntry>,
    file: &BTreeSet<String>,
) -> BTreeMap<String, HoldEntry> {
    let mut all = table.clone();
    for n in file {
        all.entry(n.clone()).or_insert_with(|| legacy::entry(n));
    }
    all
}

fn log_changes(before: &BTreeMap<String, HoldEntry>, after: &BTreeMap<String, HoldEntry>) {
    for (n, e) in after {
        if !before.contains_key(n) {
            info!(
                node = %n,
                placed_by = %e.placed_by,
                placed_at = %e.placed_at,
                reason = e.reason.as_deref().unwrap_or(""),
                "node held: plusmoin keeps it out of pgpool until released"
            );
        }
    }
    for n in before.keys() {
        if !after.contains_key(n) {
            info!(node = %n, "node released: plusmoin attaches it again when it is in sync");
        }
    }
}
