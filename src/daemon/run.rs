//! The one loop: `plusmoin start`, the tests and the benchmarks all run
//! [`run`]. It selects, in this order of priority, on shutdown, reload
//! (SIGHUP), the beat ticker, the probes' news and the beat plan's next
//! deadline; after each, news is decided. An [`Observer`] watches it from
//! inside (tests, benchmarks); `plusmoin start` passes `()`.

use super::{reload, Daemon, DaemonError};
use crate::cluster::{NodeName, State};
use crate::config::Config;
use std::future::Future;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::info;

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

    /// The loop's inputs for these signals: SIGTERM or SIGINT shut down,
    /// SIGHUP reads `config_path` again.
    pub fn inputs(
        self,
        config_path: PathBuf,
        http: Option<std::net::TcpListener>,
    ) -> Inputs<impl Future<Output = ()>> {
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
        Inputs {
            config_path,
            shutdown,
            reload: rx,
            http,
        }
    }
}

/// What drives the loop from outside.
pub struct Inputs<S> {
    /// Read again at each reload.
    pub config_path: PathBuf,
    /// The loop ends when this resolves.
    pub shutdown: S,
    /// Each message reads `config_path` again.
    pub reload: mpsc::UnboundedReceiver<()>,
    /// The HTTP listener's socket, bound by the caller (the binary binds it
    /// before dropping root and before it reports the daemon started).
    pub http: Option<std::net::TcpListener>,
}

/// Watches the loop from inside: told of each beat begun, each answer
/// decided and each beat decided. Benchmarks time decisions with it; tests
/// step a scenario beat by beat. Either may end the loop as a shutdown
/// would.
pub trait Observer: Send {
    /// A beat began at `now` (its first probes are out).
    fn beat_began(&mut self, _now: Instant) -> ControlFlow<()> {
        ControlFlow::Continue(())
    }
    /// Whether to be told of each answer decided ([`Observer::decided`]):
    /// the loop then keeps a list of the answers not decided yet.
    fn wants_answers(&self) -> bool {
        false
    }
    /// These nodes' answers were decided at `now`.
    fn decided(&mut self, _nodes: &[NodeName], _now: Instant) {}
    /// A beat was decided; `state` is the state after it, and the daemon
    /// holds `connections` open to the nodes.
    fn beat_decided(&mut self, _state: &State, _connections: usize) -> ControlFlow<()> {
        ControlFlow::Continue(())
    }
}

/// `plusmoin start` watches nothing.
impl Observer for () {}

/// Runs the daemon over `config` until `inputs.shutdown` resolves (or the
/// observer ends it), then lets running triggers finish (bounded). Returns
/// the observer.
pub async fn run<O: Observer>(
    config: Config,
    inputs: Inputs<impl Future<Output = ()>>,
    mut observer: O,
) -> Result<O, DaemonError> {
    let Inputs {
        config_path,
        shutdown,
        mut reload,
        http,
    } = inputs;
    info!(
        config = %config_path.display(),
        nodes = config.nodes.len(),
        heartbeat = config.heartbeat.as_secs_f64(),
        instance = %config.instance_name,
        "plusmoin starting"
    );
    let mut daemon = Daemon::new(config)?;
    daemon.journal.record(
        crate::status::journal::Entry::new("start")
            .why("plusmoin started")
            .with("pid", std::process::id())
            .with("version", env!("CARGO_PKG_VERSION"))
            .with("nodes", daemon.names.len()),
    );
    if observer.wants_answers() {
        daemon.taken = Some(Vec::new());
    }
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
        let mut flow = ControlFlow::Continue(());
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            r = reload.recv(), if reload_open => {
                match r {
                    Some(()) => {
                        systemd.reloading();
                        let before = (daemon.config().heartbeat, daemon.config().instance_name.clone(), daemon.config().dbname.clone());
                        reload::reload(&mut daemon, &config_path);
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
            _ = beats.tick() => {
                if daemon.tick() {
                    flow = observer.beat_began(Instant::now());
                }
            }
            r = daemon.monitor.recv() => daemon.take_all(r),
            _ = sleep_until_some(deadline) => daemon.deadline_passed(),
        }
        daemon.decide();
        if let Some(taken) = daemon.taken.as_mut() {
            if daemon.news.is_empty() && !taken.is_empty() {
                observer.decided(taken, Instant::now());
                taken.clear();
            }
        }
        if daemon.decisions != decided {
            if decided == 0 {
                // Ready once the first status is on disk: `plusmoin status`
                // answers as soon as `systemctl start` returns.
                daemon.flush_status();
            }
            decided = daemon.decisions;
            systemd.decided();
            let connections = daemon.connections_held();
            if observer
                .beat_decided(daemon.state(), connections)
                .is_break()
            {
                flow = ControlFlow::Break(());
            }
        }
        if flow.is_break() {
            break;
        }
    }
    systemd.stopping();
    info!("plusmoin stopping: waiting for running triggers");
    daemon.shutdown().await;
    info!("plusmoin stopped");
    Ok(observer)
}

/// How long running triggers get at shutdown.
pub(super) fn shutdown_grace(config: &Config) -> Duration {
    config.trigger_timeout.min(Duration::from_secs(10))
}

async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Beats on a steady cadence: a slow beat does not shift the next ones, and
/// beats missed meanwhile are skipped, not bunched up.
fn ticker(period: Duration, start: Instant) -> tokio::time::Interval {
    let mut t = tokio::time::interval_at(start, period);
    t.set_missed_tick_behavior(MissedTickBehavior::Skip);
    t
}
