//! The deciding loop. [`run`] is the one loop `plusmoin start`, the tests
//! and the benchmarks drive: news from the per-node probe tasks
//! ([`Monitor`]) is decided as it arrives ([`cluster::decide`]), then
//! acted on (triggers, the pgpool sidecar, handed the maintenance holds the
//! loop reads in the background) and written to the status file; beats come
//! on a steady cadence, each probing as the beat plan (`plan.rs`, pure)
//! orders; shutdown and reload come in as inputs (`reload.rs`).
//!
//! Each answer is decided when it comes: a hung server delays only its own
//! news. When the beat's answers are in (or `connect_timeout` after its
//! last reads), the beat's own decision emits `plusmoin_heartbeat` and the
//! status file is written. Between beats, a dropped connection or a lost
//! node's retry brings news that is decided at once.
//!
//! Process plumbing (pid file, detaching, privileges, logging) lives in
//! [`crate::lifecycle`]; this module only decides.

mod plan;
mod reload;
mod run;

pub use reload::load_config;
pub use run::{run, Inputs, Observer, Signals};

use crate::actions::trigger::{Dispatcher, TriggerJob};
use crate::cluster::{self, Event, EventKind, NodeName, Observation, Policy, State, Time};
use crate::config::Config;
use crate::payload::{Status, TriggerPayload};
use crate::probe::{Monitor, ProbeSettings, Report};
use crate::status;
use crate::status::journal::{Entry, Journal};
use plan::BeatPlan;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot set up the probes: {0}")]
    Probe(#[from] crate::probe::ProbeError),
    #[error("cannot listen for signals: {0}")]
    Signal(std::io::Error),
    #[error("cannot listen on http_listen {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// News is decided at most this often: answers that come together (a
/// beat's hundreds, the retries of many lost nodes) are decided in one
/// step rather than one step each. News after a quiet spell is decided at
/// once.
const NEWS_BATCH: Duration = Duration::from_millis(5);

/// Everything that lives across beats.
struct Daemon {
    config: Arc<Config>,
    monitor: Monitor,
    state: State,
    /// The configured nodes, in order.
    names: Vec<NodeName>,
    dispatcher: Dispatcher,
    /// Writes the status file beside the loop.
    status: status::Writer,
    /// pgpool handlers and reconciliation (inert without a section).
    pgpool: crate::pgpool::Sidecar,
    /// Cluster-wide maintenance holds, read in the background every beat;
    /// handed to the sidecar and shown in the status.
    holds: crate::hold::Holds,
    beat: Option<BeatPlan>,
    /// Answers taken and not decided yet, kept only for an [`Observer`]
    /// that asks for them.
    taken: Option<Vec<NodeName>>,
    /// Beats decided so far (systemd readiness and watchdog follow it).
    decisions: u64,
    /// News not decided yet, in arrival order.
    news: Vec<(NodeName, Observation)>,
    /// Before the first decision: each node's latest answer.
    first: HashMap<NodeName, Observation>,
    /// Nodes whose latest answer was Down.
    down: HashSet<NodeName>,
    /// Nodes the monitor retries on its own.
    lost: HashSet<NodeName>,
    /// Nodes that entered or left `down` since [`Daemon::update_lost`]
    /// last ran.
    down_flipped: Vec<NodeName>,
    /// When news was last decided between beats (see [`NEWS_BATCH`]).
    last_news_step: Option<Instant>,
    /// The HTTP listener's view, published with each status written.
    web: crate::web::Publisher,
    /// Each node's system identifier, as last read.
    systems: HashMap<NodeName, u64>,
    /// Which masters may answer `/primary` (never two of one set).
    primary: cluster::PrimaryGuard,
    /// The masters refused at the last status, for logging changes.
    refused: BTreeMap<NodeName, cluster::Refusal>,
    /// The last reload handled and how it went, shown in the status.
    reload: Option<crate::payload::ReloadReport>,
    /// The event journal (README "Event history").
    journal: Journal,
    /// Why each node whose last answer was Down failed (for the journal's
    /// `node_answers_again`).
    down_why: HashMap<NodeName, String>,
    /// The holds as last recorded in the journal (`None` until read).
    holds_seen: Option<BTreeMap<String, crate::payload::HoldEntry>>,
    /// Each configured node's place in `names` (and so, once decided, in
    /// the state's nodes): the journal's lookups cost no scan.
    index: HashMap<NodeName, usize>,
    /// Masters to probe again for their synchronous standbys, and when
    /// (see [`Daemon::recheck_sync`]).
    sync_rechecks: Vec<(Instant, NodeName, cluster::ClusterId)>,
}

/// How long after a standby of a master with synchronous standbys leaves
/// or comes back that master is asked once more: its walsender may not
/// have gone (or come) yet when it was asked at once.
const SYNC_RECHECK: Duration = Duration::from_millis(150);

impl Daemon {
    /// Must run inside the runtime: the node tasks start here.
    fn new(config: Config) -> Result<Daemon, DaemonError> {
        let mut monitor = Monitor::new(ProbeSettings::from_config(&config))?;
        let names: Vec<NodeName> = config.nodes.iter().map(|n| n.name.clone()).collect();
        monitor.set_nodes(&names);
        let mut pgpool = crate::pgpool::Sidecar::new(&config);
        let holds = crate::hold::Holds::new(&config);
        let journal = Journal::open(
            status::journal::path_for(&config.status_file),
            config.journal_max_bytes,
            config.status_file_mode,
            &config.instance_name,
        );
        pgpool.set_journal(journal.clone());
        let mut dispatcher = Dispatcher::new();
        dispatcher.set_journal(journal.clone());
        let mut web = crate::web::Publisher::new();
        web.set_journal(status::journal::path_for(&config.status_file));
        Ok(Daemon {
            pgpool,
            holds,
            config: Arc::new(config),
            monitor,
            state: State::default(),
            names: names.clone(),
            dispatcher,
            status: status::Writer::new(),
            beat: None,
            taken: None,
            decisions: 0,
            news: Vec::new(),
            first: HashMap::new(),
            down: HashSet::new(),
            lost: HashSet::new(),
            down_flipped: Vec::new(),
            last_news_step: None,
            web,
            systems: HashMap::new(),
            primary: cluster::PrimaryGuard::new(),
            refused: BTreeMap::new(),
            reload: None,
            journal,
            down_why: HashMap::new(),
            holds_seen: None,
            index: index_of(&names),
            sync_rechecks: Vec::new(),
        })
    }

    fn state(&self) -> &State {
        &self.state
    }

    /// Connections kept open to the nodes (for the scale benchmark).
    fn connections_held(&self) -> usize {
        self.monitor.connections_held()
    }

    fn config(&self) -> &Config {
        &self.config
    }

    /// What the HTTP listener serves: each status as it is written.
    fn snapshots(&self) -> crate::web::Snapshots {
        self.web.subscribe()
    }

    fn policy(&self) -> Policy {
        Policy {
            max_sync_delay: self.config.max_sync_delay,
            recover_sync_delay: self.config.recover_sync_delay,
            max_lag_bytes: self.config.max_lag_bytes,
            recover_lag_bytes: self.config.recover_lag_bytes,
        }
    }

    /// Starts a beat: the masters' writes first. A beat still open is
    /// decided first.
    /// False when skipped (see below).
    fn tick(&mut self) -> bool {
        // The first decision waits for every node's first answer (each
        // comes by its deadline): beats meanwhile are skipped, or a hung
        // server would have the others decided on half their news.
        if self.beat.as_ref().is_some_and(|b| b.is_priming()) {
            return false;
        }
        if self.beat.is_some() {
            self.close_beat();
        }
        let at = Time::now();
        let now = Instant::now();
        let timeout = self.config.connect_timeout;
        let (plan, probes) = if self.state.started {
            BeatPlan::beat(&self.names, &self.state, at, now, timeout)
        } else {
            BeatPlan::priming(&self.names, at, now, timeout)
        };
        for (name, cluster) in probes {
            self.monitor.probe(&name, cluster, at);
        }
        self.beat = Some(plan);
        self.send_due_reads();
        true
    }

    /// Sends the beat's reads whose time has come (see [`BeatPlan`]), the
    /// masters' writes decided first.
    fn send_due_reads(&mut self) {
        let Some(reads) = self.beat.as_mut().and_then(|b| b.due_reads(Instant::now())) else {
            return;
        };
        self.decide_pending_news();
        let Some(b) = self.beat.as_ref() else { return };
        let at = b.at();
        for (name, cluster) in reads {
            self.monitor.probe(&name, cluster, at);
        }
    }

    /// When the loop must wake up: for the beat in progress, or to decide
    /// news held back to be decided together (see `NEWS_BATCH`).
    fn deadline(&self) -> Option<Instant> {
        let news = (!self.news.is_empty()).then(|| self.news_due());
        let recheck = self.sync_rechecks.iter().map(|r| r.0).min();
        [self.beat.as_ref().map(BeatPlan::deadline), news, recheck]
            .into_iter()
            .flatten()
            .min()
    }

    /// A standby left or came back in a cluster whose master has
    /// synchronous standbys: that master is asked now, and once more
    /// [`SYNC_RECHECK`] later, so that `sync_lost` / `sync_ok` need not
    /// wait for the next beat.
    fn recheck_sync(&mut self, state: &State, events: &[cluster::Event]) {
        for e in events {
            if !matches!(e.kind, EventKind::SlaveDown | EventKind::SlaveUp) {
                continue;
            }
            let Some(c) = state.clusters.get(&e.cluster_id) else {
                continue;
            };
            let (Some(master), Some(sync)) = (&c.master, &c.sync) else {
                continue;
            };
            if sync.required == 0 {
                continue;
            }
            self.monitor.probe(master, Some(c.id), Time::now());
            self.sync_rechecks.retain(|r| &r.1 != master);
            self.sync_rechecks
                .push((Instant::now() + SYNC_RECHECK, master.clone(), c.id));
        }
    }

    /// When news may be decided next.
    fn news_due(&self) -> Instant {
        match self.last_news_step {
            Some(t) => t + NEWS_BATCH,
            None => Instant::now(),
        }
    }

    /// [`Daemon::deadline`] passed: if it was the beat's, reads go out or
    /// it is decided (held-back news is decided by [`Daemon::decide`]).
    fn deadline_passed(&mut self) {
        let now = Instant::now();
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.sync_rechecks)
            .into_iter()
            .partition(|r| r.0 <= now);
        self.sync_rechecks = later;
        for (_, master, id) in due {
            self.monitor.probe(&master, Some(id), Time::now());
        }
        let Some(b) = self.beat.as_ref() else { return };
        if b.deadline() > Instant::now() {
            return;
        }
        if b.reads_sent() {
            self.close_beat();
        } else {
            self.send_due_reads();
        }
    }

    /// Takes `first` and every other answer already waiting.
    fn take_all(&mut self, first: Report) {
        self.take(first);
        while let Some(r) = self.monitor.try_recv() {
            self.take(r);
        }
    }

    /// Takes one probe's outcome (decided by [`Daemon::decide`]).
    fn take(&mut self, r: Report) {
        if let Some(id) = r.system {
            if self.systems.get(&r.node) != Some(&id) {
                self.systems.insert(r.node.clone(), id);
            }
        }
        let flipped = if let Observation::Down { reason } = &r.obs {
            self.down_why.insert(r.node.clone(), reason.clone());
            self.down.insert(r.node.clone())
        } else {
            let was_down = self.down.remove(&r.node);
            if was_down {
                let why = self.down_why.remove(&r.node).unwrap_or_default();
                let cluster = node_in(&self.state, &self.index, &r.node).and_then(|n| n.cluster_id);
                self.journal.record(
                    Entry::new("node_answers_again")
                        .cluster(cluster)
                        .node(&r.node)
                        .why(format!("it answers again after: {why}")),
                );
            }
            was_down
        };
        if flipped {
            self.down_flipped.push(r.node.clone());
        }
        if let Some(b) = self.beat.as_mut() {
            let slave = matches!(r.obs, Observation::Slave { .. });
            b.answered(&r.node, slave, Instant::now());
        }
        if let Some(taken) = self.taken.as_mut() {
            taken.push(r.node.clone());
        }
        if self.state.started {
            self.news.push((r.node, r.obs));
        } else {
            self.first.insert(r.node, r.obs);
        }
    }

    /// Decides the news taken so far (unless news was decided less than
    /// `NEWS_BATCH` ago: then at [`Daemon::deadline`]), and the beat if
    /// all its answers are in.
    fn decide(&mut self) {
        if !self.news.is_empty() && self.news_due() <= Instant::now() {
            self.decide_pending_news();
        }
        if self.beat.as_ref().is_some_and(BeatPlan::complete) {
            self.close_beat();
        }
    }

    /// Decides the news taken so far, now.
    fn decide_pending_news(&mut self) {
        if !self.news.is_empty() {
            self.last_news_step = Some(Instant::now());
            let news = std::mem::take(&mut self.news);
            self.decide_and_act(&news, false);
        }
    }

    /// Decides the beat in progress: its news, `plusmoin_heartbeat`, the
    /// status file. The first one decides every node at once.
    fn close_beat(&mut self) {
        let Some(b) = self.beat.take() else { return };
        self.decisions += 1;
        crate::metrics::COUNTERS.beat_closed(b.began().elapsed());
        if !self.state.started {
            let all: Vec<(NodeName, Observation)> = self
                .names
                .iter()
                .map(|n| {
                    let obs = self.first.remove(n).unwrap_or_else(|| Observation::Down {
                        reason: "no answer to the first probe".into(),
                    });
                    (n.clone(), obs)
                })
                .collect();
            self.first.clear();
            debug!(
                elapsed_ms = b.began().elapsed().as_millis() as u64,
                "first decision"
            );
            self.decide_and_act(&all, true);
            return;
        }
        let news = std::mem::take(&mut self.news);
        self.decide_and_act(&news, true);
    }

    fn decide_and_act(&mut self, news: &[(NodeName, Observation)], tick: bool) {
        let now = Time::now();
        let prev = std::mem::take(&mut self.state);
        let cluster::Decision {
            state: next,
            events,
            changed,
            dropped,
        } = cluster::decide(prev, &self.names, news, now, &self.policy(), tick);
        for e in &events {
            self.act(&next, e);
        }
        self.recheck_sync(&next, &events);
        // The pgpool sidecar is told at every beat (the holds are read and
        // it reconciles then), and between beats only when something it
        // acts on changed (an event, a node's place or master): not for
        // every answer that changed nothing, as retries of lost nodes and
        // each beat's hundreds of answers mostly are. It is told the holds
        // as of now each time.
        if tick || changed {
            // Holds are read once a beat; until the first read is in, each
            // time the sidecar is told (it acts on nothing before it).
            if next.started && (tick || !self.holds.known()) {
                self.holds
                    .refresh(crate::hold::read_order(&self.config, &next));
            }
            let held = crate::pgpool::Held {
                known: self.holds.known(),
                nodes: self.holds.current(),
            };
            if tick {
                self.pgpool.beat(&next, &events, held);
            } else {
                self.pgpool.news(&next, &events, held);
            }
        }
        // A cluster emptied by moves is gone: its trigger queue finishes
        // what it has, then is freed.
        for id in dropped {
            self.dispatcher.forget_cluster(id);
        }
        self.state = next;
        self.update_lost(changed);
        if tick
            || events
                .iter()
                .any(|e| e.kind != EventKind::PlusmoinHeartbeat)
        {
            self.write_status(now);
        }
    }

    /// Tells the monitor which nodes to retry between beats: lost ones
    /// (down or out of sync), clusterless ones (a slave whose master's row
    /// has not reached it yet, as just after start) and those whose last
    /// answer was down.
    ///
    /// `moved`: some node changed place (or nodes came or went) in the
    /// decision just made: every node is looked at. Otherwise only the
    /// nodes whose answers went from down to up or back since the last
    /// call can have changed.
    fn update_lost(&mut self, moved: bool) {
        let flipped = std::mem::take(&mut self.down_flipped);
        let mut update = |n: &cluster::NodeState| {
            let lost = matches!(n.place, cluster::Place::Lost | cluster::Place::Clusterless)
                || self.down.contains(&n.name);
            if lost != self.lost.contains(&n.name) {
                self.monitor.set_lost(&n.name, lost);
                if lost {
                    self.lost.insert(n.name.clone());
                } else {
                    self.lost.remove(&n.name);
                }
            }
        };
        if moved {
            self.state.nodes.iter().for_each(&mut update);
        } else {
            for name in &flipped {
                if let Some(n) = self.state.node(name) {
                    update(n);
                }
            }
        }
    }

    fn act(&self, state: &State, e: &Event) {
        let node = e.node.as_ref().map(|n| n.to_string());
        crate::metrics::COUNTERS.event(e.kind);
        let sync = state
            .clusters
            .get(&e.cluster_id)
            .and_then(|c| c.sync.as_ref());
        if e.kind == EventKind::PlusmoinHeartbeat {
            tracing::debug!(cluster = e.cluster_id, event = %e.kind, "event");
        } else if let (EventKind::SyncLost, Some(s)) = (e.kind, sync) {
            tracing::warn!(
                cluster = e.cluster_id,
                event = %e.kind,
                node = node.as_deref().unwrap_or("-"),
                connected = s.connected.unwrap_or_default(),
                required = s.required,
                standby_names = %crate::text::escape_controls(&s.standby_names),
                "commits on the master wait: fewer synchronous standbys connected than required"
            );
        } else {
            info!(
                cluster = e.cluster_id,
                event = %e.kind,
                node = node.as_deref().unwrap_or("-"),
                "event"
            );
        }
        let command = self.config.triggers.get(&e.kind);
        // A heartbeat is news only for its trigger: recorded when one runs.
        let stamp = if e.kind != EventKind::PlusmoinHeartbeat || command.is_some() {
            self.journal.record(event_entry(state, &self.index, e))
        } else {
            None
        };
        let Some(command) = command else {
            return;
        };
        let mut payload = TriggerPayload::new(state, e.kind, e.cluster_id, e.node.as_ref());
        if let Some(s) = &stamp {
            payload.event_id = Some(s.id);
            payload.event_time = Some(s.time.clone());
        }
        match serde_json::to_string(&payload) {
            Ok(payload) => self.dispatcher.dispatch(TriggerJob {
                kind: e.kind,
                cluster_id: e.cluster_id,
                command: command.clone(),
                payload,
                timeout: self.config.trigger_timeout,
                event_id: stamp.map(|s| s.id),
            }),
            Err(err) => {
                error!(cluster = e.cluster_id, event = %e.kind, "cannot build payload: {err}")
            }
        }
    }

    fn write_status(&mut self, now: Time) {
        let mut st = Status::new(
            &self.state,
            &self.config.instance_name,
            now,
            self.config.heartbeat,
        );
        st.set_holds(self.holds.current());
        self.record_holds();
        st.pgpool = self.pgpool.report();
        st.primary_refused = self.refuse_primaries(st.pgpool.as_ref());
        st.reload = self.reload.clone();
        let st = Arc::new(st);
        self.status.write(
            &self.config.status_file,
            self.config.status_file_mode,
            Arc::clone(&st),
        );
        self.web.publish(st, &self.down);
    }

    /// The masters that may not answer `/primary` now, with why, logging
    /// each refusal as it begins and ends.
    fn refuse_primaries(
        &mut self,
        pgpool: Option<&crate::payload::PgpoolReport>,
    ) -> BTreeMap<String, String> {
        let pg_primary = pgpool
            .and_then(|r| r.primary.as_deref())
            .and_then(|p| self.state.nodes.iter().find(|n| n.name.to_string() == p))
            .map(|n| n.name.clone());
        // An incumbent must be away for three beats (the staleness rule)
        // before a master refused beside it takes over.
        let hold = status::stale_after(self.config.heartbeat);
        let refused = self.primary.decide(
            &self.state,
            &self.systems,
            pg_primary.as_ref(),
            Time::now(),
            hold,
        );
        if refused != self.refused {
            for (node, why) in &refused {
                if self.refused.get(node) != Some(why) {
                    crate::metrics::COUNTERS.primary_refused();
                    warn!(event = "primary_refused", node = %node, "a master is refused /primary: {why}");
                }
            }
            for node in self.refused.keys() {
                if !refused.contains_key(node) {
                    let now = if self.primary.allowed().contains(node) {
                        "it answers /primary again"
                    } else {
                        "it is no master any more"
                    };
                    info!(event = "primary_refused_ended", node = %node, "a master is no longer refused /primary: {now}");
                }
            }
            self.refused = refused;
        }
        self.refused
            .iter()
            .map(|(n, why)| (n.to_string(), why.to_string()))
            .collect()
    }

    /// Records the holds placed and lifted since the last call (nothing
    /// until the holds are first read: those already placed then are
    /// recorded as found, once).
    fn record_holds(&mut self) {
        if !self.holds.known() {
            return;
        }
        let now = self.holds.current();
        if self.holds_seen.as_ref() == Some(now) {
            return;
        }
        let before = self.holds_seen.take().unwrap_or_default();
        for (node, h) in now {
            if before.get(node) != Some(h) {
                let mut e = Entry::new("hold_placed")
                    .node(node)
                    .with("placed_by", h.placed_by.as_str())
                    .with("placed_at", h.placed_at.as_str());
                if let Some(r) = &h.reason {
                    e = e.why(r.as_str());
                }
                self.journal.record(e);
            }
        }
        for (node, h) in &before {
            if !now.contains_key(node) {
                self.journal.record(
                    Entry::new("hold_lifted")
                        .node(node)
                        .with("placed_by", h.placed_by.as_str())
                        .why("released (plusmoin release, or its row removed)"),
                );
            }
        }
        self.holds_seen = Some(now.clone());
    }

    /// Waits until the statuses decided so far are written.
    fn flush_status(&self) {
        self.status.flush();
    }

    /// Takes a new configuration; the state of unchanged nodes is kept
    /// (the next decision forgets removed nodes and adds new ones).
    fn reconfigure(&mut self, mut config: Config) -> Result<(), DaemonError> {
        if config.http_listen != self.config.http_listen {
            // The listener was bound at start (maybe as root): it stays.
            let show =
                |a: Option<std::net::SocketAddr>| a.map_or("off".to_string(), |a| a.to_string());
            warn!(
                "http_listen changed from {} to {}: this takes a restart; the listener stays as it was until then",
                show(self.config.http_listen),
                show(config.http_listen)
            );
            config.http_listen = self.config.http_listen;
        }
        self.monitor
            .update_settings(ProbeSettings::from_config(&config))?;
        self.names = config.nodes.iter().map(|n| n.name.clone()).collect();
        self.index = index_of(&self.names);
        self.monitor.set_nodes(&self.names);
        self.holds.reconfigure(&config);
        self.pgpool.reconfigure(&config);
        self.config = Arc::new(config);
        // Nodes removed from the configuration are no one's news.
        let known: HashSet<&NodeName> = self.names.iter().collect();
        self.news.retain(|(n, _)| known.contains(n));
        self.lost.retain(|n| known.contains(n));
        self.down.retain(|n| known.contains(n));
        Ok(())
    }

    /// Lets running triggers finish (bounded), then kills what remains.
    async fn shutdown(self) {
        let grace = run::shutdown_grace(&self.config);
        drop(self.monitor);
        self.dispatcher.shutdown(grace).await;
        self.pgpool.shutdown().await;
        self.journal.record(Entry::new("stop").why("asked to stop"));
        self.journal.close(Duration::from_secs(2));
    }
}

/// A trigger event as the journal records it: its cluster and node, and
/// why (the node's reason, when it has one).
fn event_entry(state: &State, index: &HashMap<NodeName, usize>, e: &Event) -> Entry {
    let mut entry = Entry::new(e.kind.as_str()).cluster(Some(e.cluster_id));
    if let Some(n) = &e.node {
        entry = entry.node(n);
        if let Some(why) = node_in(state, index, n).and_then(|s| s.reason.as_deref()) {
            entry = entry.why(why);
        }
    }
    entry
}

fn index_of(names: &[NodeName]) -> HashMap<NodeName, usize> {
    names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.clone(), i))
        .collect()
}

/// `name`'s state: at its place in the configuration when it is there
/// (the state keeps that order), else found by a scan.
fn node_in<'a>(
    state: &'a State,
    index: &HashMap<NodeName, usize>,
    name: &NodeName,
) -> Option<&'a cluster::NodeState> {
    index
        .get(name)
        .and_then(|&i| state.nodes.get(i))
        .filter(|n| &n.name == name)
        .or_else(|| state.node(name))
}
