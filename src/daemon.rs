//! The beat loop: probes → [`cluster::step`] → actions → status, on a steady
//! cadence, with SIGTERM/SIGINT (finish the beat, exit) and SIGHUP (reload
//! the configuration between beats).
//!
//! Process plumbing (pid file, detaching, privileges, logging) lives in
//! [`crate::lifecycle`]; this module only beats.

use crate::actions::trigger::{Dispatcher, TriggerJob};
use crate::cluster::{self, ClusterId, Event, EventKind, NodeName, Policy, State, Time};
use crate::config::{self, Config};
use crate::payload::{Status, TriggerPayload};
use crate::probe::{ProbeSettings, ProbeTarget, Prober};
use crate::status;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{error, info, warn};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot set up the probes: {0}")]
    Probe(#[from] crate::probe::ProbeError),
    #[error("cannot listen for signals: {0}")]
    Signal(std::io::Error),
}

/// Everything that lives across beats.
pub struct Daemon {
    config: Arc<Config>,
    prober: Prober,
    state: State,
    dispatcher: Dispatcher,
    /// The last status-file error, logged once until it changes.
    status_error: Option<String>,
    /// pgpool handlers, reconciliation and holds (inert without a section).
    pgpool: crate::pgpool::Sidecar,
}

impl Daemon {
    pub fn new(config: Config) -> Result<Daemon, DaemonError> {
        let prober = Prober::new(ProbeSettings::from_config(&config))?;
        let pgpool = crate::pgpool::Sidecar::new(&config);
        Ok(Daemon {
            pgpool,
            config: Arc::new(config),
            prober,
            state: State::default(),
            dispatcher: Dispatcher::new(),
            status_error: None,
        })
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    /// Connections kept open to the nodes (for the scale benchmark).
    pub fn connections_held(&self) -> usize {
        self.prober.connections_held()
    }

    fn targets(&self) -> Vec<ProbeTarget> {
        // One map rather than a search per node: a beat over thousands of
        // nodes stays linear (reversed so the first of a name wins, as
        // `State::node` finds).
        let cluster_of: HashMap<&NodeName, Option<ClusterId>> = self
            .state
            .nodes
            .iter()
            .rev()
            .map(|s| (&s.name, s.cluster_id))
            .collect();
        self.config
            .nodes
            .iter()
            .map(|n| ProbeTarget {
                name: n.name.clone(),
                cluster_id: cluster_of.get(&n.name).copied().flatten(),
            })
            .collect()
    }

    fn policy(&self) -> Policy {
        Policy {
            max_sync_delay: self.config.max_sync_delay,
            recover_sync_delay: self.config.recover_sync_delay,
        }
    }

    /// Before the first decision, write a heartbeat on every master so the
    /// slaves have one to replay: otherwise every slave of a fresh cluster
    /// would start out of sync and come back one beat later.
    pub async fn prime(&mut self) {
        let targets = self.targets();
        let obs = self.prober.probe_all(&targets, Time::now()).await;
        let masters = obs
            .iter()
            .filter(|(_, o)| matches!(o, cluster::Observation::Master { .. }))
            .count();
        if masters > 0 {
            // Streaming replication delivers the row within milliseconds.
            let settle = self.config.heartbeat.min(Duration::from_millis(500));
            tokio::time::sleep(settle).await;
        }
    }

    /// One beat: probe every node, decide, act, write the status.
    pub async fn beat(&mut self) -> Vec<Event> {
        let now = Time::now();
        let targets = self.targets();
        let obs = self.prober.probe_all(&targets, now).await;
        let (next, events) = cluster::step(&self.state, &obs, now, &self.policy());
        for e in &events {
            self.act(&next, e);
        }
        self.pgpool.beat(&next, &events);
        self.state = next;
        self.write_status(now);
        events
    }

    fn act(&self, state: &State, e: &Event) {
        let node = e.node.as_ref().map(|n| n.to_string());
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
        st.set_holds(self.pgpool.holds());
        st.pgpool = self.pgpool.report();
        match status::write(&self.config.status_file, &st) {
            Ok(()) => {
                if self.status_error.take().is_some() {
                    info!(file = %self.config.status_file.display(), "status file written again");
                }
            }
            Err(e) => {
                let msg = e.to_string();
                if self.status_error.as_deref() != Some(&msg) {
                    error!("{msg} (the previous status file is left as it was)");
                    self.status_error = Some(msg);
                }
            }
        }
    }

    /// Takes a new configuration between beats; the state of unchanged nodes
    /// is kept (the next `step` forgets removed nodes and adds new ones).
    pub fn reconfigure(&mut self, config: Config) -> Result<(), DaemonError> {
        self.prober
            .update_settings(ProbeSettings::from_config(&config))?;
        self.pgpool.reconfigure(&config);
        self.config = Arc::new(config);
        Ok(())
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Lets running triggers finish (bounded), then kills what remains.
    pub async fn shutdown(self) {
        let grace = self.config.trigger_timeout.min(Duration::from_secs(10));
        self.dispatcher.shutdown(grace).await;
        self.pgpool.shutdown().await;
    }
}

/// Runs until SIGTERM or SIGINT. `config_path` is read again on SIGHUP.
pub async fn run(config: Config, config_path: PathBuf) -> Result<(), DaemonError> {
    let mut term = signal(SignalKind::terminate()).map_err(DaemonError::Signal)?;
    let mut int = signal(SignalKind::interrupt()).map_err(DaemonError::Signal)?;
    let mut hup = signal(SignalKind::hangup()).map_err(DaemonError::Signal)?;
    info!(
        config = %config_path.display(),
        nodes = config.nodes.len(),
        heartbeat = config.heartbeat.as_secs_f64(),
        instance = %config.instance_name,
        "plusmoin starting"
    );
    let mut daemon = Daemon::new(config)?;
    let mut ticker = ticker(daemon.config().heartbeat);
    tokio::select! {
        _ = daemon.prime() => {}
        _ = term.recv() => return finish(daemon).await,
        _ = int.recv() => return finish(daemon).await,
    }
    loop {
        tokio::select! {
            biased;
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                let heartbeat = daemon.config().heartbeat;
                reload(&mut daemon, &config_path);
                if daemon.config().heartbeat != heartbeat {
                    ticker = ticker_from(daemon.config().heartbeat, Instant::now() + daemon.config().heartbeat);
                }
                continue;
            }
            _ = ticker.tick() => {}
        }
        // A signal arriving now waits for the beat to finish.
        daemon.beat().await;
    }
    finish(daemon).await
}

async fn finish(daemon: Daemon) -> Result<(), DaemonError> {
    info!("plusmoin stopping: waiting for running triggers");
    daemon.shutdown().await;
    info!("plusmoin stopped");
    Ok(())
}

fn reload(daemon: &mut Daemon, path: &std::path::Path) {
    match config::load(path) {
        Ok(new) => {
            let nodes = new.nodes.len();
            match daemon.reconfigure(new) {
                Ok(()) => info!(config = %path.display(), nodes, "configuration reloaded"),
                Err(e) => error!("configuration not reloaded, the old one stays in force: {e}"),
            }
        }
        Err(e) => error!("configuration not reloaded, the old one stays in force: {e}"),
    }
    for w in daemon
        .config()
        .secret_files()
        .into_iter()
        .filter_map(crate::lifecycle::world_readable_warning)
    {
        warn!("{w}");
    }
}

/// Beats on a steady cadence: a slow beat does not shift the next ones, and
/// beats missed while one ran long are skipped, not bunched up.
fn ticker(period: Duration) -> tokio::time::Interval {
    ticker_from(period, Instant::now())
}

fn ticker_from(period: Duration, start: Instant) -> tokio::time::Interval {
    let mut t = tokio::time::interval_at(start, period);
    t.set_missed_tick_behavior(MissedTickBehavior::Skip);
    t
}
