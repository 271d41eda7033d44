//! One task per node, each owning its node's connection, and one channel
//! on which every answer, error, timeout or dropped connection arrives as
//! it happens: a hung server delays only its own news.
//!
//! A node task runs at most one probe at a time, under the probe's single
//! deadline (`connect_timeout`); a request that comes while one is out
//! waits in the task's [`Mailbox`] and is run after it (the latest one
//! wins), so `connect_timeout` may exceed `heartbeat`. Between requests the
//! task watches its kept connection: when the server closes it (killed,
//! stopped, restarted, terminated us), it probes at once. While the daemon says the node is
//! lost it also probes on its own on a short interval (`retry_interval`,
//! slower for a node away for long), so a server that comes back is seen
//! at once rather than at the next beat.

use super::node::NodeConn;
use super::{note, probe_node, Change, Pending, ProbeError, ProbeSettings, ProbeTarget, Shared};
use crate::cluster::{ClusterId, NodeName, Observation, Time};
use crate::logonce::LogOnceMap;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, error, info};

/// Why a probe ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The daemon asked (a beat).
    Asked,
    /// The kept connection closed between probes.
    Dropped,
    /// The node is lost and was tried again.
    Retry,
}

impl Cause {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Cause::Asked => "beat",
            Cause::Dropped => "connection closed",
            Cause::Retry => "retry",
        }
    }
}

/// One probe's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub node: NodeName,
    pub obs: Observation,
    pub cause: Cause,
    /// When the probe began (its deadline ran from there).
    pub(crate) began: Instant,
    /// The server's system identifier, when the connection the probe used
    /// could read it (`cluster::PrimaryGuard`).
    pub(crate) system: Option<u64>,
}

/// What the daemon asked of a node's task since the task last looked: the
/// task takes it all at once. Newer requests replace older ones, so a
/// task's requests cost no allocation and never pile up.
#[derive(Default)]
struct Inbox {
    /// Probe now (or right after the probe in flight); write `cluster_id`
    /// into the heartbeat row if the node is a master, with time `at`.
    probe: Option<(Option<ClusterId>, Time)>,
    /// Whether the node is lost (tried again on its own), as last said.
    lost: Option<bool>,
    /// The node was said not lost meanwhile (even if lost again since):
    /// its time away starts over.
    found: bool,
    settings: Option<Arc<Shared>>,
}

/// A node task's [`Inbox`], and the signal that something is in it.
#[derive(Default)]
struct Mailbox {
    inbox: std::sync::Mutex<Inbox>,
    posted: Notify,
}

impl Mailbox {
    fn post(&self, f: impl FnOnce(&mut Inbox)) {
        f(&mut self.inbox.lock().unwrap_or_else(|e| e.into_inner()));
        // A stored permit when the task is not waiting: it looks next time.
        self.posted.notify_one();
    }

    fn post_lost(&self, lost: bool) {
        self.post(|i| {
            i.found |= !lost;
            i.lost = Some(lost);
        });
    }

    /// Waits for something to be posted, and takes everything posted.
    async fn take(&self) -> Inbox {
        self.posted.notified().await;
        std::mem::take(&mut *self.inbox.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

struct Handle {
    mailbox: Arc<Mailbox>,
    task: JoinHandle<()>,
    connected: Arc<AtomicBool>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The node tasks and the channel of their reports.
pub struct Monitor {
    shared: Arc<Shared>,
    nodes: HashMap<NodeName, Handle>,
    tx: mpsc::UnboundedSender<Report>,
    rx: mpsc::UnboundedReceiver<Report>,
    /// The last Down reason noted per node: the first is logged at error
    /// level, the next ones (still down) at debug until the node is back.
    last_down: LogOnceMap<NodeName>,
}

impl Monitor {
    /// Builds the TLS connector now, so a bad `sslrootcert` is reported at
    /// start. No task runs until [`Monitor::set_nodes`].
    pub fn new(settings: ProbeSettings) -> Result<Monitor, ProbeError> {
        let (tx, rx) = mpsc::unbounded_channel();
        Ok(Monitor {
            shared: Arc::new(Shared::new(settings)?),
            nodes: HashMap::new(),
            tx,
            rx,
            last_down: LogOnceMap::default(),
        })
    }

    /// The settings the next probes run with.
    #[cfg(test)]
    pub(crate) fn settings(&self) -> &ProbeSettings {
        &self.shared.settings
    }

    /// Reload: every task takes the new settings for its next probe, and
    /// drops its connection if it was made with other credentials or TLS.
    /// On error the old settings stay.
    pub fn update_settings(&mut self, settings: ProbeSettings) -> Result<(), ProbeError> {
        self.shared = Arc::new(Shared::new(settings)?);
        for h in self.nodes.values() {
            h.mailbox
                .post(|i| i.settings = Some(Arc::clone(&self.shared)));
        }
        Ok(())
    }

    /// Starts a task for each new node and stops those of nodes no longer
    /// listed (their connections close).
    pub fn set_nodes<'a>(&mut self, names: impl IntoIterator<Item = &'a NodeName>) {
        let mut keep: HashMap<NodeName, Handle> = HashMap::new();
        for name in names {
            if keep.contains_key(name) {
                continue;
            }
            let handle = self.nodes.remove(name).unwrap_or_else(|| {
                let mailbox = Arc::new(Mailbox::default());
                let connected = Arc::new(AtomicBool::new(false));
                let task = tokio::spawn(node_task(
                    name.clone(),
                    Arc::clone(&self.shared),
                    Arc::clone(&mailbox),
                    self.tx.clone(),
                    Arc::clone(&connected),
                ));
                Handle {
                    mailbox,
                    task,
                    connected,
                }
            });
            keep.insert(name.clone(), handle);
        }
        self.nodes = keep;
        let nodes = &self.nodes;
        self.last_down.retain(|n| nodes.contains_key(n));
    }

    /// Asks for a probe of `node` (run at once, or right after the one in
    /// flight).
    pub fn probe(&self, node: &NodeName, cluster_id: Option<ClusterId>, at: Time) {
        if let Some(h) = self.nodes.get(node) {
            h.mailbox.post(|i| i.probe = Some((cluster_id, at)));
        }
    }

    /// Tells `node`'s task whether the node is lost (retried on its own).
    pub(crate) fn set_lost(&self, node: &NodeName, lost: bool) {
        if let Some(h) = self.nodes.get(node) {
            h.mailbox.post_lost(lost);
        }
    }

    /// The next report (logged).
    pub async fn recv(&mut self) -> Report {
        // We hold a sender ourselves: the channel never closes.
        let r = self
            .rx
            .recv()
            .await
            .expect("the monitor holds a sender of its own channel");
        self.log(&r);
        r
    }

    /// A report already waiting, if any (logged).
    pub(crate) fn try_recv(&mut self) -> Option<Report> {
        let r = self.rx.try_recv().ok()?;
        self.log(&r);
        Some(r)
    }

    /// Connections currently kept open.
    pub fn connections_held(&self) -> usize {
        self.nodes
            .values()
            .filter(|h| h.connected.load(Ordering::Relaxed))
            .count()
    }

    fn log(&mut self, r: &Report) {
        let name = &r.node;
        let cause = r.cause.as_str();
        match (note(&mut self.last_down, name, &r.obs), &r.obs) {
            (Change::NewDown, Observation::Down { reason }) => {
                error!(node = %name, reason = %reason, cause, "node down")
            }
            (Change::OtherReason, Observation::Down { reason }) => {
                debug!(node = %name, reason = %reason, cause, "node still down, for another reason")
            }
            (Change::StillDown, Observation::Down { reason }) => {
                debug!(node = %name, reason = %reason, cause, "node still down")
            }
            (Change::Back, other) => {
                let observation = in_words(other, Time::now());
                info!(node = %name, observation = %observation, cause, "node answers again")
            }
            (_, other) => {
                let observation = in_words(other, Time::now());
                debug!(node = %name, observation = %observation, cause, "probed")
            }
        }
    }
}

/// An observation as a log line says it: the role, and for a slave the
/// heartbeat row it shows (whose master, how old by plusmoin's clock at
/// `now`), e.g. `slave of db1:5432, heartbeat 0.3 s old`.
pub(crate) fn in_words(obs: &Observation, now: Time) -> String {
    match obs {
        Observation::Down { reason } => format!("down: {reason}"),
        Observation::Master { .. } => "master, heartbeat written".to_string(),
        Observation::Slave { heartbeat: None } => {
            "slave, no heartbeat row of this instance yet".to_string()
        }
        Observation::Slave {
            heartbeat: Some(hb),
        } => format!(
            "slave of {}, heartbeat {:.1} s old",
            hb.master_name,
            now.since(hb.written_at).as_secs_f64()
        ),
    }
}

/// How long a lost node waits between tries: `base` for its first 30 s
/// away, then doubling every 30 s up to 5 s (a thousand dead servers then
/// cost 200 connection attempts a second).
pub(crate) fn retry_delay(base: Duration, lost_for: Duration) -> Duration {
    let doublings = (lost_for.as_secs() / 30).min(16) as u32;
    (base * 2u32.pow(doublings)).min(Duration::from_secs(5).max(base))
}

async fn node_task(
    name: NodeName,
    mut shared: Arc<Shared>,
    mailbox: Arc<Mailbox>,
    out: mpsc::UnboundedSender<Report>,
    connected: Arc<AtomicBool>,
) {
    let mut conn: Option<NodeConn> = None;
    let mut pending: Option<Pending> = None;
    let mut cluster_id = None;
    // The probe to run next, if any.
    let mut want: Option<(Cause, Time)> = None;
    let mut lost_since: Option<Instant> = None;
    let mut next_retry: Option<Instant> = None;
    let mut reset = false;
    loop {
        let Some((cause, at)) = want.take() else {
            // Idle: a request, a dropped connection, or time to retry.
            let ended = async {
                match &conn {
                    Some(c) => c.ended().await,
                    None => std::future::pending().await,
                }
            };
            let retry = async {
                match next_retry {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                inbox = mailbox.take() => {
                    take_requests(inbox, &mut want, &mut cluster_id, &mut lost_since, &mut next_retry, &mut shared, &mut reset);
                }
                _ = ended => want = Some((Cause::Dropped, Time::now())),
                _ = retry => want = Some((Cause::Retry, Time::now())),
            }
            if reset {
                reset = false;
                conn = None;
                pending = None;
                connected.store(false, Ordering::Relaxed);
            }
            continue;
        };
        let target = ProbeTarget {
            name: name.clone(),
            cluster_id,
        };
        let began = Instant::now();
        // Boxed, so that an idle task stays small: a thousand nodes wait
        // between probes far longer than they probe.
        let mut probe = Box::pin(probe_node(
            Arc::clone(&shared),
            target,
            conn.take(),
            pending.take(),
            at,
        ));
        let (c, p, obs) = loop {
            tokio::select! {
                done = &mut probe => break done,
                inbox = mailbox.take() => {
                    take_requests(inbox, &mut want, &mut cluster_id, &mut lost_since, &mut next_retry, &mut shared, &mut reset);
                }
            }
        };
        (conn, pending) = (c, p);
        if reset {
            reset = false;
            conn = None;
            pending = None;
        }
        connected.store(conn.is_some(), Ordering::Relaxed);
        let system = conn.as_ref().and_then(|c| c.system());
        if let Some(since) = lost_since {
            let base = shared.settings.retry_interval;
            next_retry = Some(Instant::now() + retry_delay(base, since.elapsed()));
        }
        if out
            .send(Report {
                node: name.clone(),
                obs,
                cause,
                began,
                system,
            })
            .is_err()
        {
            return;
        }
    }
}

/// Takes the daemon's requests (an [`Inbox`]) into the node task's state,
/// in the order they could have been posted in: the settings first (a probe
/// asked for runs with the newest), then the node's lost status, then the
/// probe.
fn take_requests(
    inbox: Inbox,
    want: &mut Option<(Cause, Time)>,
    cluster_id: &mut Option<ClusterId>,
    lost_since: &mut Option<Instant>,
    next_retry: &mut Option<Instant>,
    shared: &mut Arc<Shared>,
    reset: &mut bool,
) {
    if let Some(s) = inbox.settings {
        if s.settings.connection_differs(&shared.settings) {
            *reset = true;
        }
        *shared = s;
    }
    if inbox.found {
        *lost_since = None;
        *next_retry = None;
    }
    if inbox.lost == Some(true) && lost_since.is_none() {
        *lost_since = Some(Instant::now());
        *next_retry = Some(Instant::now() + shared.settings.retry_interval);
    }
    if let Some((c, at)) = inbox.probe {
        *cluster_id = c;
        *want = Some((Cause::Asked, at));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_are_said_in_words() {
        use crate::cluster::Heartbeat;
        let now = Time(1_796_583_112_464_493);
        let slave = Observation::Slave {
            heartbeat: Some(Heartbeat {
                master_name: "db1:5432".into(),
                cluster_id: Some(0),
                written_at: Time(now.0 - 300_000),
                received: None,
                replayed: None,
            }),
        };
        assert_eq!(
            in_words(&slave, now),
            "slave of db1:5432, heartbeat 0.3 s old"
        );
        let master = Observation::Master {
            wrote_at: now,
            repl: None,
        };
        let fresh = Observation::Slave { heartbeat: None };
        let down = Observation::Down {
            reason: "Connection refused".into(),
        };
        for (obs, words) in [
            (&master, "master, heartbeat written"),
            (&fresh, "slave, no heartbeat row of this instance yet"),
            (&down, "down: Connection refused"),
        ] {
            assert_eq!(in_words(obs, now), words);
        }
        for obs in [&slave, &master, &fresh, &down] {
            let words = in_words(obs, now);
            for shape in ["Some(", "{", "Time(", "Heartbeat"] {
                assert!(!words.contains(shape), "{words}");
            }
        }
    }

    #[test]
    fn retries_slow_down_for_nodes_away_for_long() {
        let base = Duration::from_millis(250);
        let at = |s| retry_delay(base, Duration::from_secs(s));
        assert_eq!(at(0), base);
        assert_eq!(at(29), base);
        assert_eq!(at(30), base * 2);
        assert_eq!(at(60), base * 4);
        assert_eq!(at(600), Duration::from_secs(5));
        assert_eq!(at(100_000), Duration::from_secs(5));
        // A base above the cap is kept as it is.
        assert_eq!(
            retry_delay(Duration::from_secs(9), Duration::from_secs(90)),
            Duration::from_secs(9)
        );
    }

    /// Requests posted while the task was busy are taken together, as if
    /// taken one by one: the newest probe wins, and a node found and lost
    /// again meanwhile starts its time away over.
    #[tokio::test]
    async fn posted_requests_are_taken_together_in_order() {
        let shared = Arc::new(Shared::new(crate::probe::tests::settings()).unwrap());
        let mailbox = Mailbox::default();
        let mut want = None;
        let mut cluster_id = None;
        let away_since = Instant::now() - Duration::from_secs(100);
        let mut lost_since = Some(away_since);
        let mut next_retry = None;
        let mut current = Arc::clone(&shared);
        let mut reset = false;
        let mut take = |inbox| {
            take_requests(
                inbox,
                &mut want,
                &mut cluster_id,
                &mut lost_since,
                &mut next_retry,
                &mut current,
                &mut reset,
            );
            (want, cluster_id, lost_since, next_retry.is_some(), reset)
        };

        // Lost again: its time away goes on.
        mailbox.post_lost(true);
        let (_, _, since, _, _) = take(mailbox.take().await);
        assert_eq!(since, Some(away_since));

        // Two probes, found, lost again: the second probe, time away anew.
        mailbox.post(|i| i.probe = Some((Some(1), Time(10))));
        mailbox.post(|i| i.probe = Some((Some(2), Time(20))));
        mailbox.post_lost(false);
        mailbox.post_lost(true);
        let (want, cluster, since, retrying, reset) = take(mailbox.take().await);
        assert_eq!(want, Some((Cause::Asked, Time(20))));
        assert_eq!(cluster, Some(2));
        assert!(since.is_some_and(|t| t > away_since), "{since:?}");
        assert!(retrying);
        assert!(!reset);
    }

    /// A task's memory is its largest state, and most of their time node
    /// tasks are idle: the probe (a connect, statements pipelined) is boxed
    /// while it runs, or a thousand idle tasks would hold 5 MB.
    #[test]
    fn an_idle_node_task_is_small() {
        let shared = Arc::new(Shared::new(crate::probe::tests::settings()).unwrap());
        let (out, _reports) = mpsc::unbounded_channel();
        let connected = Arc::new(AtomicBool::new(false));
        let mailbox = Arc::new(Mailbox::default());
        let task = node_task(NodeName::new("h", 1), shared, mailbox, out, connected);
        let size = std::mem::size_of_val(&task);
        assert!(size <= 1536, "a node task takes {size} bytes");
    }

    /// `node`'s observation from one probe asked of `m`, as a beat asks
    /// (reports the monitor sent on its own are passed over).
    async fn probe_once(m: &mut Monitor, node: &NodeName, cluster_id: Option<ClusterId>) -> Report {
        m.set_nodes([node]);
        m.probe(node, cluster_id, Time(0));
        loop {
            let r = m.recv().await;
            if r.cause == Cause::Asked {
                return r;
            }
        }
    }

    /// The daemon drives the monitor from spawned tasks.
    #[allow(dead_code)]
    fn monitor_is_send(m: &mut Monitor) {
        fn is_send<T: Send>(_: &T) {}
        is_send(m);
        is_send(&m.recv());
    }

    #[test]
    fn bad_update_keeps_old_settings() {
        use crate::config::SslMode;
        let settings = crate::probe::tests::settings;
        let mut m = Monitor::new(settings()).unwrap();
        let mut bad = settings();
        bad.sslmode = SslMode::VerifyCa;
        bad.sslrootcert = Some("/nonexistent/root.crt".into());
        assert!(m.update_settings(bad).is_err());
        assert_eq!(m.settings(), &settings());
    }

    #[tokio::test]
    async fn refused_node_is_down_quickly() {
        // A port nobody listens on: bind, learn it, close.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        // Quickly: long before a deadline far off, with room for a loaded
        // machine.
        let mut s = crate::probe::tests::settings();
        s.connect_timeout = Duration::from_secs(10);
        let mut m = Monitor::new(s).unwrap();
        let name = NodeName::new("127.0.0.1", port);
        let t0 = std::time::Instant::now();
        let r = probe_once(&mut m, &name, None).await;
        assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
        assert_eq!(r.node, name);
        match &r.obs {
            Observation::Down { reason } => assert!(reason.contains("refused"), "{reason}"),
            o => panic!("{o:?}"),
        }
        assert_eq!(m.connections_held(), 0);
    }

    #[tokio::test]
    async fn silent_server_is_not_sent_a_new_connection_every_beat() {
        use tokio::io::AsyncReadExt;
        // Counts the connections a silent server accepts over four beats:
        // the unanswered attempt is kept, not replaced each beat.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (accepted_tx, mut accepted) = mpsc::unbounded_channel();
        let hold = tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                let _ = accepted_tx.send(s);
            }
        });
        let mut s = crate::probe::tests::settings();
        s.connect_timeout = Duration::from_millis(200);
        let mut m = Monitor::new(s).unwrap();
        let name = NodeName::new("127.0.0.1", port);
        for _ in 0..4 {
            let r = probe_once(&mut m, &name, Some(0)).await;
            assert!(matches!(r.obs, Observation::Down { .. }));
        }
        let mut first = accepted.try_recv().expect("one connection accepted");
        assert!(accepted.try_recv().is_err(), "a second connection");
        // Forgotten with the node: the attempt is aborted (its connection
        // closed).
        m.set_nodes(std::iter::empty::<&NodeName>());
        let mut sent = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(5), first.read_to_end(&mut sent));
        assert!(
            matches!(closed.await, Ok(Ok(_))),
            "the attempt was not aborted"
        );
        hold.abort();
    }

    #[tokio::test]
    async fn silent_server_is_down_at_the_deadline() {
        // Accepts TCP and never says a word, like a frozen postmaster.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let hold = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        });
        let mut s = crate::probe::tests::settings();
        s.connect_timeout = Duration::from_millis(300);
        let mut m = Monitor::new(s).unwrap();
        let t0 = std::time::Instant::now();
        let r = probe_once(&mut m, &NodeName::new("127.0.0.1", port), Some(0)).await;
        let took = t0.elapsed();
        hold.abort();
        assert!(took >= Duration::from_millis(300), "{took:?}");
        // Not long after it, with room for a loaded machine.
        assert!(took < Duration::from_millis(1300), "{took:?}");
        assert_eq!(
            r.obs,
            Observation::Down {
                reason: "no answer within 0.3s".into()
            }
        );
        assert_eq!(m.connections_held(), 0);
    }
}
