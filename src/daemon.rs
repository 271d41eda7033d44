//! The deciding loop: news from the per-node probe tasks ([`Monitor`]) is
//! decided as it arrives ([`cluster::decide_news`]), then acted on (triggers,
//! the pgpool sidecar, handed the maintenance holds the loop reads in the
//! background) and written to the status file; beats come on a steady
//! cadence; shutdown and reload come in as inputs.
//!
//! A beat: the nodes that were masters write their heartbeat first; once a
//! master's write is back (and has had a moment to replicate), the other
//! members of its cluster are read, so a slave's lag is this beat's write
//! minus the row it shows. Nodes in no cluster with a master are read once
//! every master's write is back. A master that hangs holds its cluster's
//! reads back for a short bound at most, and no other cluster's. Each answer
//! is decided when it comes: a hung server delays only its own news. When
//! the beat's answers are in (or `connect_timeout` after it began), the
//! beat's own decision emits `plusmoin_heartbeat` and the status file is
//! written. Between beats, a dropped connection or a lost node's retry
//! brings news that is decided at once.
//!
//! Process plumbing (pid file, detaching, privileges, logging) lives in
//! [`crate::lifecycle`]; this module only decides.

use crate::actions::trigger::{Dispatcher, TriggerJob};
use crate::cluster::{
    self, ClusterId, Event, EventKind, NodeName, Observation, Policy, State, Time,
};
use crate::config::{self, Config};
use crate::payload::{Status, TriggerPayload};
use crate::probe::{Monitor, ProbeSettings, Report};
use crate::status;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
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

/// The longest the slaves' reads wait for the masters' writes of a beat.
const MASTERS_BOUND: Duration = Duration::from_millis(300);
/// A beat still missing answers this long after `connect_timeout` is closed
/// anyway (a request queued behind a probe already out).
const BEAT_SLACK: Duration = Duration::from_millis(100);
/// Between the masters' writes coming back and the slaves' reads: time for
/// streaming replication to deliver the row (milliseconds on a LAN), so a
/// healthy slave does not show a heartbeat's lag. Longer at start, when the
/// row may have just been created.
const REPLICATION_GRACE: Duration = Duration::from_millis(20);
const PRIMING_GRACE: Duration = Duration::from_millis(100);
/// News is decided at most this often: answers that come together (a
/// beat's hundreds, the retries of many lost nodes) are decided in one
/// step rather than one step each. News after a quiet spell is decided at
/// once.
const NEWS_BATCH: Duration = Duration::from_millis(5);

/// Reads whose time has come go out together, on this grid from the
/// beat's start: a thousand masters answering one by one give a few groups
/// of reads (each preceded by a decision of the writes), not a thousand.
const READ_QUANTUM: Duration = Duration::from_millis(2);

/// A node to read, and the cluster id it writes should it answer as a
/// master.
type Read = (NodeName, Option<ClusterId>);

/// The beat in progress.
#[derive(Debug)]
struct BeatRun {
    at: Time,
    began: Instant,
    /// The first beat: every node is probed first (roles unknown, masters
    /// write), then the slaves are read again.
    priming: bool,
    /// Masters whose write of this beat has not come back yet, each with
    /// the other members of its cluster: they are read once that write is
    /// back (and has had [`REPLICATION_GRACE`] to replicate).
    masters: HashMap<NodeName, Vec<Read>>,
    /// The nodes in no cluster with a master, read once every master's
    /// write is back (when priming: the nodes that answered as slaves,
    /// chosen then).
    rest: Vec<Read>,
    /// When `rest` goes out, once every master's write is back.
    rest_at: Option<Instant>,
    rest_sent: bool,
    /// Reads waiting for their time, by when they go out.
    due: BTreeMap<Instant, Vec<Read>>,
    /// When reads last went out: once all have, the beat closes
    /// `connect_timeout` later at the latest.
    reads_sent_at: Instant,
    /// Nodes asked this beat that have not answered since.
    outstanding: HashSet<NodeName>,
}

impl BeatRun {
    /// Every read of the beat has gone out.
    fn reads_sent(&self) -> bool {
        self.rest_sent && self.due.is_empty()
    }

    /// `t` rounded up to the beat's [`READ_QUANTUM`] grid.
    fn on_grid(&self, t: Instant) -> Instant {
        let q = READ_QUANTUM.as_micros();
        let since = t.saturating_duration_since(self.began).as_micros();
        let steps = since.div_ceil(q);
        self.began + Duration::from_micros((steps * q) as u64)
    }
}

/// Everything that lives across beats.
pub struct Daemon {
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
    beat: Option<BeatRun>,
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
}

impl Daemon {
    /// Must run inside the runtime: the node tasks start here.
    pub fn new(config: Config) -> Result<Daemon, DaemonError> {
        let mut monitor = Monitor::new(ProbeSettings::from_config(&config))?;
        let names: Vec<NodeName> = config.nodes.iter().map(|n| n.name.clone()).collect();
        monitor.set_nodes(&names);
        let pgpool = crate::pgpool::Sidecar::new(&config);
        let holds = crate::hold::Holds::new(&config);
        Ok(Daemon {
            pgpool,
            holds,
            config: Arc::new(config),
            monitor,
            state: State::default(),
            names,
            dispatcher: Dispatcher::new(),
            status: status::Writer::new(),
            beat: None,
            decisions: 0,
            news: Vec::new(),
            first: HashMap::new(),
            down: HashSet::new(),
            lost: HashSet::new(),
            down_flipped: Vec::new(),
            last_news_step: None,
            web: crate::web::Publisher::new(),
            systems: HashMap::new(),
            primary: cluster::PrimaryGuard::new(),
            refused: BTreeMap::new(),
        })
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    /// Connections kept open to the nodes (for the scale benchmark).
    pub fn connections_held(&self) -> usize {
        self.monitor.connections_held()
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// What the HTTP listener serves: each status as it is written.
    pub fn snapshots(&self) -> crate::web::Snapshots {
        self.web.subscribe()
    }

    fn policy(&self) -> Policy {
        Policy {
            max_sync_delay: self.config.max_sync_delay,
            recover_sync_delay: self.config.recover_sync_delay,
        }
    }

    /// Starts a beat: the masters' writes first. A beat still open is
    /// decided first.
    pub fn tick(&mut self) {
        // The first decision waits for every node's first answer (each
        // comes by its deadline): beats meanwhile are skipped, or a hung
        // server would have the others decided on half their news.
        if self.beat.as_ref().is_some_and(|b| b.priming) {
            return;
        }
        if self.beat.is_some() {
            self.close_beat();
        }
        let at = Time::now();
        let priming = !self.state.started;
        let mut masters: HashMap<NodeName, Vec<Read>> = HashMap::new();
        let mut rest = Vec::new();
        if priming {
            for n in &self.names {
                self.monitor.probe(n, None, at);
                masters.insert(n.clone(), Vec::new());
            }
        } else {
            // Each cluster's master writes first; the other members of its
            // cluster are read once its write is back.
            let mut led: HashMap<ClusterId, &NodeName> = HashMap::new();
            for n in &self.state.nodes {
                if let (cluster::Place::Master, Some(c)) = (n.place, n.cluster_id) {
                    self.monitor.probe(&n.name, Some(c), at);
                    masters.insert(n.name.clone(), Vec::new());
                    led.insert(c, &n.name);
                }
            }
            for (name, known) in configured(&self.names, &self.state) {
                if known.is_some_and(|n| n.place == cluster::Place::Master) {
                    continue;
                }
                let cluster = known.and_then(|n| n.cluster_id);
                let read = (name.clone(), cluster);
                match cluster.and_then(|c| led.get(&c)) {
                    Some(m) => masters.get_mut(*m).expect("a master").push(read),
                    None => rest.push(read),
                }
            }
        }
        let began = Instant::now();
        self.beat = Some(BeatRun {
            at,
            began,
            priming,
            outstanding: masters.keys().cloned().collect(),
            rest_at: masters.is_empty().then_some(began),
            masters,
            rest,
            rest_sent: false,
            due: BTreeMap::new(),
            reads_sent_at: began,
        });
        self.send_due_reads();
    }

    /// Sends the reads whose time has come: a master's cluster once its
    /// write is back (and has had time to replicate), the rest once every
    /// master's is; all of them once the masters have had
    /// [`MASTERS_BOUND`] (a hung master holds no read back longer).
    fn send_due_reads(&mut self) {
        let now = Instant::now();
        let bound = self.masters_bound();
        let Some(b) = self.beat.as_mut() else {
            return;
        };
        let mut reads: Vec<Read> = Vec::new();
        while let Some(group) = b.due.first_entry() {
            if *group.key() > now {
                break;
            }
            reads.extend(group.remove());
        }
        let mut rest_now = false;
        if !b.rest_sent && b.rest_at.unwrap_or(b.began + bound) <= now {
            rest_now = true;
            b.rest_sent = true;
            for (_, group) in b.masters.drain() {
                reads.extend(group);
            }
            for (_, group) in std::mem::take(&mut b.due) {
                reads.extend(group);
            }
            reads.append(&mut b.rest);
        }
        if reads.is_empty() && !rest_now {
            return;
        }
        if b.priming {
            // The nodes that answered as slaves, now that the masters have
            // written.
            reads = self
                .names
                .iter()
                .filter(|n| matches!(self.first.get(*n), Some(Observation::Slave { .. })))
                .map(|n| (n.clone(), None))
                .collect();
        }
        // The masters' writes are decided before their slaves are read.
        self.step_news();
        let Some(b) = self.beat.as_mut() else {
            return;
        };
        b.reads_sent_at = now;
        let at = b.at;
        for (name, cluster) in reads {
            self.monitor.probe(&name, cluster, at);
            b.outstanding.insert(name);
        }
    }

    /// How long a beat waits for its masters' writes before reading
    /// anyway; priming waits for every node's first answer (each ends by
    /// its deadline).
    fn masters_bound(&self) -> Duration {
        if self.beat.as_ref().is_some_and(|b| b.priming) {
            self.config.connect_timeout + BEAT_SLACK
        } else {
            MASTERS_BOUND.min(self.config.connect_timeout)
        }
    }

    /// When the loop must wake up: for the beat in progress, or to decide
    /// news held back to be decided together (see `NEWS_BATCH`).
    pub fn deadline(&self) -> Option<Instant> {
        let news = (!self.news.is_empty()).then(|| self.news_due());
        match (self.beat_deadline(), news) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// When news may be decided next.
    fn news_due(&self) -> Instant {
        match self.last_news_step {
            Some(t) => t + NEWS_BATCH,
            None => Instant::now(),
        }
    }

    /// When the beat in progress must move on: reads go out, or it is
    /// decided.
    fn beat_deadline(&self) -> Option<Instant> {
        let b = self.beat.as_ref()?;
        if b.reads_sent() {
            return Some(b.reads_sent_at + self.config.connect_timeout + BEAT_SLACK);
        }
        let mut next = b.due.keys().next().copied();
        if !b.rest_sent {
            let rest = b.rest_at.unwrap_or(b.began + self.masters_bound());
            next = Some(next.map_or(rest, |d| d.min(rest)));
        }
        next
    }

    /// [`Daemon::deadline`] passed: if it was the beat's, reads go out or
    /// it is decided (held-back news is decided by [`Daemon::decide`]).
    pub fn deadline_passed(&mut self) {
        if !self.beat_deadline().is_some_and(|d| d <= Instant::now()) {
            return;
        }
        let Some(b) = self.beat.as_ref() else { return };
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
    pub fn take(&mut self, r: Report) {
        if let Some(id) = r.system {
            if self.systems.get(&r.node) != Some(&id) {
                self.systems.insert(r.node.clone(), id);
            }
        }
        let flipped = if matches!(r.obs, Observation::Down { .. }) {
            self.down.insert(r.node.clone())
        } else {
            self.down.remove(&r.node)
        };
        if flipped {
            self.down_flipped.push(r.node.clone());
        }
        if let Some(b) = self.beat.as_mut() {
            b.outstanding.remove(&r.node);
            if let Some(group) = b.masters.remove(&r.node) {
                let grace = if b.priming {
                    PRIMING_GRACE
                } else {
                    REPLICATION_GRACE
                };
                let at = b.on_grid(Instant::now() + grace);
                if !group.is_empty() {
                    b.due.entry(at).or_default().extend(group);
                }
                if b.masters.is_empty() && b.rest_at.is_none() {
                    b.rest_at = Some(at);
                }
            }
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
    pub fn decide(&mut self) {
        if !self.news.is_empty() && self.news_due() <= Instant::now() {
            self.step_news();
        }
        let done = self
            .beat
            .as_ref()
            .is_some_and(|b| b.reads_sent() && b.outstanding.is_empty());
        if done {
            self.close_beat();
        }
    }

    /// Decides the news taken so far, now.
    fn step_news(&mut self) {
        if !self.news.is_empty() {
            self.last_news_step = Some(Instant::now());
            let news = std::mem::take(&mut self.news);
            self.step(&news, false);
        }
    }

    /// Decides the beat in progress: its news, `plusmoin_heartbeat`, the
    /// status file. The first one decides every node at once.
    fn close_beat(&mut self) {
        let Some(b) = self.beat.take() else { return };
        self.decisions += 1;
        crate::metrics::COUNTERS.beat_closed(b.began.elapsed());
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
                elapsed_ms = b.began.elapsed().as_millis() as u64,
                "first decision"
            );
            self.step(&all, true);
            return;
        }
        let news = std::mem::take(&mut self.news);
        self.step(&news, true);
    }

    fn step(&mut self, news: &[(NodeName, Observation)], tick: bool) {
        let now = Time::now();
        let prev = std::mem::take(&mut self.state);
        let cluster::Decision {
            state: next,
            events,
            changed,
            dropped,
        } = cluster::decide_news(prev, &self.names, news, now, &self.policy(), tick);
        for e in &events {
            self.act(&next, e);
        }
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

    /// One whole beat, for benchmarks and tests: tick, then every answer
    /// decided as it comes, until the beat is decided.
    pub async fn beat_once(&mut self) {
        self.beat_once_timed().await;
    }

    /// [`Daemon::beat_once`], also saying, for every answer taken during
    /// the beat, how long after the tick it was decided (for tests). A node
    /// asked but not answering before the beat closed is not in the list.
    pub async fn beat_once_timed(&mut self) -> Vec<(NodeName, Duration)> {
        self.beat_timed(None).await
    }

    /// One beat as [`run_with`] makes it, for the scale benchmark: the
    /// tick (which first decides the previous beat, should it still be
    /// open), then every answer decided as it comes, until the beat is
    /// decided or `period` has passed since the tick (then it is left open,
    /// for the next tick to decide, as the next beat would). Says, for
    /// every answer taken meanwhile, how long after the tick it was
    /// decided.
    pub async fn beat_for(&mut self, period: Duration) -> Vec<(NodeName, Duration)> {
        self.beat_timed(Some(period)).await
    }

    async fn beat_timed(&mut self, period: Option<Duration>) -> Vec<(NodeName, Duration)> {
        let t0 = Instant::now();
        let end = period.map(|p| t0 + p);
        self.tick();
        let mut decided = Vec::new();
        let mut taken = Vec::new();
        while self.beat.is_some() {
            let deadline = self.deadline().unwrap_or_else(Instant::now);
            let deadline = end.map_or(deadline, |e| deadline.min(e));
            tokio::select! {
                r = self.monitor.recv() => {
                    taken.push(r.node.clone());
                    self.take(r);
                    while let Some(r) = self.monitor.try_recv() {
                        taken.push(r.node.clone());
                        self.take(r);
                    }
                }
                _ = tokio::time::sleep_until(deadline) => self.deadline_passed(),
            }
            self.decide();
            if self.news.is_empty() {
                let at = t0.elapsed();
                decided.extend(taken.drain(..).map(|n| (n, at)));
            }
            if end.is_some_and(|e| e <= Instant::now()) {
                break;
            }
        }
        decided
    }

    /// Runs the deciding loop for `period` as [`run_with`] would (beats
    /// every `heartbeat` from now, news decided as it comes, lost nodes
    /// retried), without signals or reloads: for benchmarks.
    pub async fn run_for(&mut self, period: Duration) {
        let end = Instant::now() + period;
        let mut beats = ticker(self.config.heartbeat, Instant::now());
        loop {
            let deadline = self.deadline();
            tokio::select! {
                biased;
                _ = tokio::time::sleep_until(end) => break,
                _ = beats.tick() => self.tick(),
                r = self.monitor.recv() => self.take_all(r),
                _ = sleep_until_some(deadline) => self.deadline_passed(),
            }
            self.decide();
        }
    }

    fn act(&self, state: &State, e: &Event) {
        let node = e.node.as_ref().map(|n| n.to_string());
        crate::metrics::COUNTERS.event(e.kind);
        if e.kind == EventKind::PlusmoinHeartbeat {
            tracing::debug!(cluster = e.cluster_id, event = %e.kind, "event");
        } else {
            info!(
                cluster = e.cluster_id,
                event = %e.kind,
                node = node.as_deref().unwrap_or("-"),
                "event"
            );
        }
        let Some(command) = self.config.triggers.get(&e.kind) else {
            return;
        };
        let payload = TriggerPayload::new(state, e.kind, e.cluster_id, e.node.as_ref());
        match serde_json::to_string(&payload) {
            Ok(payload) => self.dispatcher.dispatch(TriggerJob {
                kind: e.kind,
                cluster_id: e.cluster_id,
                command: command.clone(),
                payload,
                timeout: self.config.trigger_timeout,
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
        st.pgpool = self.pgpool.report();
        st.primary_refused = self.refuse_primaries(st.pgpool.as_ref());
        let st = Arc::new(st);
        self.status.write(&self.config.status_file, Arc::clone(&st));
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

    /// Waits until the statuses decided so far are written.
    pub fn flush_status(&self) {
        self.status.flush();
    }

    /// Takes a new configuration; the state of unchanged nodes is kept
    /// (the next decision forgets removed nodes and adds new ones).
    pub fn reconfigure(&mut self, mut config: Config) -> Result<(), DaemonError> {
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
    pub async fn shutdown(self) {
        let grace = shutdown_grace(&self.config);
        drop(self.monitor);
        self.dispatcher.shutdown(grace).await;
        self.pgpool.shutdown().await;
    }
}

/// How long running triggers get at shutdown.
pub fn shutdown_grace(config: &Config) -> Duration {
    config.trigger_timeout.min(Duration::from_secs(10))
}

/// SIGTERM/SIGINT and SIGHUP, listened to from the moment this returns.
pub struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs the handlers; call it before telling anyone the daemon is
    /// ready, so an early SIGHUP is not fatal. Needs the runtime.
    pub fn install() -> Result<Signals, DaemonError> {
        Ok(Signals {
            term: signal(SignalKind::terminate()).map_err(DaemonError::Signal)?,
            int: signal(SignalKind::interrupt()).map_err(DaemonError::Signal)?,
            hup: signal(SignalKind::hangup()).map_err(DaemonError::Signal)?,
        })
    }

    /// Splits into the shutdown future and the reload stream
    /// [`run_with`] takes.
    pub fn split(self) -> (impl Future<Output = ()>, mpsc::UnboundedReceiver<()>) {
        let Signals {
            mut term,
            mut int,
            mut hup,
        } = self;
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                if tx.send(()).is_err() {
                    return;
                }
            }
        });
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        };
        (shutdown, rx)
    }
}

/// Runs until SIGTERM or SIGINT; `config_path` is read again on SIGHUP.
pub async fn run(config: Config, config_path: PathBuf) -> Result<(), DaemonError> {
    let (shutdown, reload) = Signals::install()?.split();
    run_with(config, config_path, shutdown, reload).await
}

/// Runs until `shutdown` resolves; each message on `reload` reads
/// `config_path` again. The binary wires real signals to these; tests can
/// drive them directly. The HTTP listener, if `http_listen` is set, is
/// bound here.
pub async fn run_with(
    config: Config,
    config_path: PathBuf,
    shutdown: impl Future<Output = ()>,
    reload: mpsc::UnboundedReceiver<()>,
) -> Result<(), DaemonError> {
    let http = match config.http_listen {
        Some(addr) => {
            Some(crate::web::bind(addr).map_err(|source| DaemonError::Listen { addr, source })?)
        }
        None => None,
    };
    run_serving(config, config_path, shutdown, reload, http).await
}

/// [`run_with`], the HTTP listener's socket already bound (by the binary,
/// before it reports the daemon started).
pub async fn run_serving(
    config: Config,
    config_path: PathBuf,
    shutdown: impl Future<Output = ()>,
    mut reload: mpsc::UnboundedReceiver<()>,
    http: Option<std::net::TcpListener>,
) -> Result<(), DaemonError> {
    info!(
        config = %config_path.display(),
        nodes = config.nodes.len(),
        heartbeat = config.heartbeat.as_secs_f64(),
        instance = %config.instance_name,
        "plusmoin starting"
    );
    let mut daemon = Daemon::new(config)?;
    // Stopped when dropped, at the end of this function.
    let _http = match http {
        Some(l) => {
            let addr = l.local_addr().ok();
            Some(crate::web::serve(l, daemon.snapshots()).map_err(|source| {
                DaemonError::Listen {
                    addr: addr.unwrap_or_else(|| ([0, 0, 0, 0], 0).into()),
                    source,
                }
            })?)
        }
        None => None,
    };
    let mut systemd = crate::notify::Notifier::from_env();
    let mut decided = daemon.decisions;
    let mut beats = ticker(daemon.config().heartbeat, Instant::now());
    tokio::pin!(shutdown);
    let mut reload_open = true;
    loop {
        let deadline = daemon.deadline();
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            r = reload.recv(), if reload_open => {
                match r {
                    Some(()) => {
                        systemd.reloading();
                        let before = (daemon.config().heartbeat, daemon.config().instance_name.clone(), daemon.config().dbname.clone());
                        reload_config(&mut daemon, &config_path);
                        let c = daemon.config();
                        if (c.heartbeat, c.instance_name.clone(), c.dbname.clone()) != before {
                            // A new row or database: the masters write it
                            // before any slave is read again.
                            beats = ticker(c.heartbeat, Instant::now());
                        }
                        systemd.reloaded();
                    }
                    None => reload_open = false,
                }
            }
            _ = beats.tick() => daemon.tick(),
            r = daemon.monitor.recv() => daemon.take_all(r),
            _ = sleep_until_some(deadline) => daemon.deadline_passed(),
        }
        daemon.decide();
        if daemon.decisions != decided {
            if decided == 0 {
                // Ready once the first status is on disk: `plusmoin status`
                // answers as soon as `systemctl start` returns.
                daemon.flush_status();
            }
            decided = daemon.decisions;
            systemd.decided();
        }
    }
    systemd.stopping();
    info!("plusmoin stopping: waiting for running triggers");
    daemon.shutdown().await;
    info!("plusmoin stopped");
    Ok(())
}

/// Each configured node with its state, if it has one yet (a node added by
/// a reload joins the state at the next decision). Linear: the state's
/// nodes are the configured ones in order, except just after a reload.
fn configured<'a>(
    names: &'a [NodeName],
    state: &'a State,
) -> impl Iterator<Item = (&'a NodeName, Option<&'a cluster::NodeState>)> {
    let aligned = names.len() == state.nodes.len()
        && names.iter().zip(&state.nodes).all(|(a, b)| *a == b.name);
    let by_name: HashMap<&NodeName, &cluster::NodeState> = if aligned {
        HashMap::new()
    } else {
        state.nodes.iter().rev().map(|n| (&n.name, n)).collect()
    };
    names.iter().enumerate().map(move |(i, name)| {
        let known = if aligned {
            Some(&state.nodes[i])
        } else {
            by_name.get(name).copied()
        };
        (name, known)
    })
}

async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Loads the configuration at `path` as plusmoin runs it: [`config::load`],
/// then the sidecar's check of the `pgpool` section ([`crate::pgpool::check`]:
/// templates, node ids from `pgpool_conf`). What the commands and a reload
/// use; either refusal is a [`config::ConfigError`] naming the key at fault.
pub fn load_config(path: &std::path::Path) -> Result<Config, config::ConfigError> {
    config::load(path).and_then(crate::pgpool::check)
}

fn reload_config(daemon: &mut Daemon, path: &std::path::Path) {
    match load_config(path) {
        Ok(new) => {
            let nodes = new.nodes.len();
            let at_start = start_only_changes(daemon.config(), &new);
            match daemon.reconfigure(new) {
                Ok(()) => {
                    info!(config = %path.display(), nodes, "configuration reloaded");
                    if !at_start.is_empty() {
                        warn!(
                            keys = at_start.join(", "),
                            "these settings changed but take effect only when plusmoin is started again"
                        );
                    }
                }
                Err(e) => error!("configuration not reloaded, the old one stays in force: {e}"),
            }
        }
        Err(e) => error!("configuration not reloaded, the old one stays in force: {e}"),
    }
    for w in daemon.config().secret_warnings() {
        warn!("{w}");
    }
}

/// The keys a reload cannot apply: the pid file and the log are opened,
/// and root dropped for `daemon_user`, once at start.
fn start_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    [
        ("pid_file", old.pid_file != new.pid_file),
        ("log_file", old.log_file != new.log_file),
        ("log_level", old.log_level != new.log_level),
        ("log_format", old.log_format != new.log_format),
        ("daemon_user", old.daemon_user != new.daemon_user),
    ]
    .into_iter()
    .filter_map(|(key, changed)| changed.then_some(key))
    .collect()
}

/// Beats on a steady cadence: a slow beat does not shift the next ones, and
/// beats missed meanwhile are skipped, not bunched up.
fn ticker(period: Duration, start: Instant) -> tokio::time::Interval {
    let mut t = tokio::time::interval_at(start, period);
    t.set_missed_tick_behavior(MissedTickBehavior::Skip);
    t
}
