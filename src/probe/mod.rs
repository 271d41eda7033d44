//! Probing the PostgreSQL nodes (README "How it works"): one persistent tokio-postgres
//! connection per node, the role query, and the heartbeat table (written on
//! masters, read on slaves). It owns the per-node deadline: whatever a node
//! does — refuse, hang after accepting TCP, answer nonsense — its probe ends
//! within `connect_timeout` as an [`Observation`], and never delays the
//! other nodes, which are probed at the same time.

pub(crate) mod connect;
mod monitor;
mod node;
pub(crate) mod owner;
mod statements;
mod tls;

use crate::text::escape_controls;
pub use monitor::{Cause, Monitor, Report};

use crate::cluster::{ClusterId, NodeName, Observation, Time};
use crate::config::{Config, Secret, SslMode};
use crate::logonce::LogOnceMap;
use node::{NodeConn, ProbeFailure};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tracing::debug;

/// The statement a probe reads a node's role and heartbeat row with, for
/// the simulated server of the test kits (`tests/kit`), which must tell it
/// apart.
pub const COMBINED: &str = statements::COMBINED;
/// The heartbeat table, for operators who create it beforehand.
pub const HEARTBEAT_TABLE_DDL: &str = statements::CREATE_TABLE;

/// What the probes need from the configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeSettings {
    pub dbname: String,
    pub user: String,
    pub password: Secret,
    /// Nodes with a password of their own (from libpq's password file).
    pub node_passwords: BTreeMap<NodeName, Secret>,
    /// Key of this plusmoin instance's heartbeat row.
    pub instance_name: String,
    pub is_slave_statement: String,
    pub sslmode: SslMode,
    pub sslrootcert: Option<PathBuf>,
    /// The deadline of one node's whole probe: connect, authentication and
    /// statements together.
    pub connect_timeout: Duration,
    /// How often a lost node is tried again between beats, at first.
    pub retry_interval: Duration,
}

impl ProbeSettings {
    pub(crate) fn from_config(c: &Config) -> Self {
        ProbeSettings {
            dbname: c.dbname.clone(),
            user: c.user.clone(),
            password: c.password.clone(),
            node_passwords: c
                .nodes
                .iter()
                .filter_map(|n| Some((n.name.clone(), n.password.clone()?)))
                .collect(),
            instance_name: c.instance_name.clone(),
            is_slave_statement: c.is_slave_statement.clone(),
            sslmode: c.sslmode,
            sslrootcert: c.sslrootcert.clone(),
            connect_timeout: c.connect_timeout,
            retry_interval: c.retry_interval,
        }
    }

    /// The password to log in to `node` with.
    pub(crate) fn password_for(&self, node: &NodeName) -> &Secret {
        self.node_passwords.get(node).unwrap_or(&self.password)
    }

    /// Removes every password from a text that a server or a library
    /// produced: none should ever contain one, but reasons end up in logs
    /// and files. Control characters in it are escaped ([`crate::text::escape_controls`]):
    /// a server's message must not forge log lines or table rows.
    pub(crate) fn scrub(&self, text: String) -> String {
        // Longest first, so that a password containing another is removed
        // whole.
        let mut all: Vec<&str> = std::iter::once(&self.password)
            .chain(self.node_passwords.values())
            .map(Secret::expose)
            .collect();
        all.sort_by_key(|p| std::cmp::Reverse(p.len()));
        escape_controls(&all.into_iter().fold(text, scrub))
    }

    /// Whether open connections were made with other credentials or TLS
    /// than these settings ask for.
    fn connection_differs(&self, other: &ProbeSettings) -> bool {
        self.dbname != other.dbname
            || self.user != other.user
            || self.password != other.password
            || self.node_passwords != other.node_passwords
            || self.sslmode != other.sslmode
            || self.sslrootcert != other.sslrootcert
    }
}

/// What to do for one node this beat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeTarget {
    pub name: NodeName,
    /// Cluster id to write into the heartbeat row if the node turns out to
    /// be a master.
    pub cluster_id: Option<ClusterId>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("cannot read sslrootcert {path}: {source}")]
    ReadRootCert {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("sslrootcert {path} is not a PEM certificate file: {source}")]
    ParseRootCert {
        path: PathBuf,
        source: native_tls::Error,
    },
    #[error("sslrootcert {path} holds no certificate")]
    NoRootCert { path: PathBuf },
    #[error(
        "sslmode {mode} needs a root certificate: set sslrootcert, or put the CA in {}",
        default.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "~/.postgresql/root.crt (this user has no home directory)".into())
    )]
    NoDefaultRootCert {
        mode: &'static str,
        default: Option<PathBuf>,
    },
    #[error("cannot set up tls: {0}")]
    Tls(#[source] native_tls::Error),
}

/// What every probe task shares: read-only for the duration of a beat.
pub(crate) struct Shared {
    settings: ProbeSettings,
    tls: tls::Tls,
    pg_ssl_mode: tokio_postgres::config::SslMode,
}

impl Shared {
    fn new(settings: ProbeSettings) -> Result<Shared, ProbeError> {
        let (tls, pg_ssl_mode) = tls::build(settings.sslmode, settings.sslrootcert.as_deref())?;
        Ok(Shared {
            settings,
            tls,
            pg_ssl_mode,
        })
    }
}

/// The question a probe asks before it touches plusmoin's `table`: who
/// owns it. For the simulated server of the test kits (`tests/kit`), which
/// answers it.
pub fn owner_query(table: &str) -> String {
    owner::query(table)
}

/// How a node's observation compares with the last logged one.
#[derive(Debug, PartialEq, Eq)]
enum Change {
    /// Down, having answered at its last probe (or never been probed):
    /// worth the one error line.
    NewDown,
    /// Still down, for the reason last noted.
    StillDown,
    /// Still down, for another reason (a server stopping first says it is
    /// shutting down, then refuses connections): news, but no second error.
    OtherReason,
    /// Answers after having been down.
    Back,
    Up,
}

/// Records `obs` in `last_down` and says what changed.
fn note(last_down: &mut LogOnceMap<NodeName>, name: &NodeName, obs: &Observation) -> Change {
    match obs {
        Observation::Down { reason } => {
            let was_down = last_down.current(name).is_some();
            match (was_down, last_down.changed(name, reason)) {
                (false, _) => Change::NewDown,
                (true, true) => Change::OtherReason,
                (true, false) => Change::StillDown,
            }
        }
        _ => {
            if last_down.cleared(name) {
                Change::Back
            } else {
                Change::Up
            }
        }
    }
}

/// A connection attempt running in a task of its own, so that it can
/// outlive the beat that started it; aborted when dropped.
pub(crate) struct Pending {
    handle: tokio::task::JoinHandle<Result<NodeConn, ProbeFailure>>,
    since: tokio::time::Instant,
}

impl Pending {
    fn start(shared: Arc<Shared>, node: NodeName) -> Pending {
        Pending {
            handle: tokio::spawn(async move { NodeConn::connect(&shared, &node).await }),
            since: tokio::time::Instant::now(),
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

/// How long an unanswered connection attempt is kept before a new one
/// replaces it (a server that comes back answers the kept one at once).
fn pending_max_age(connect_timeout: Duration) -> Duration {
    (connect_timeout * 10).max(Duration::from_secs(60))
}

/// One node's probe under its single deadline. The connection comes in and
/// goes back out, unless it broke or the deadline passed; an attempt to
/// connect that the server has not answered by the deadline is kept for the
/// next beat.
async fn probe_node(
    shared: Arc<Shared>,
    target: ProbeTarget,
    conn: Option<NodeConn>,
    pending: Option<Pending>,
    now: Time,
) -> (Option<NodeConn>, Option<Pending>, Observation) {
    let limit = shared.settings.connect_timeout;
    let deadline = tokio::time::Instant::now() + limit;
    let late = || Observation::Down {
        reason: format!("no answer within {}", fmt_duration(limit)),
    };
    let (conn, reused) = match conn {
        Some(c) if !c.is_closed() => (c, true),
        _ => {
            let mut pending = match pending {
                Some(p) if p.since.elapsed() < pending_max_age(limit) => p,
                _ => Pending::start(shared.clone(), target.name.clone()),
            };
            let connected = tokio::time::timeout_at(deadline, &mut pending.handle).await;
            match connected {
                Err(_) => return (None, Some(pending), late()),
                Ok(Ok(Ok(c))) => (c, false),
                Ok(Ok(Err(f))) => return (None, None, scrubbed(&shared, down(f))),
                Ok(Err(e)) => {
                    let reason = format!("probe failed: {e}");
                    return (None, None, Observation::Down { reason });
                }
            }
        }
    };
    let run = probe_with(&shared, &target, conn, reused, now);
    let (conn, obs) = match tokio::time::timeout_at(deadline, run).await {
        Ok(done) => done,
        // The future, and the connection in it, are dropped here.
        Err(_) => (None, late()),
    };
    (conn, None, scrubbed(&shared, obs))
}

fn scrubbed(shared: &Shared, obs: Observation) -> Observation {
    match obs {
        Observation::Down { reason } => Observation::Down {
            reason: shared.settings.scrub(reason),
        },
        other => other,
    }
}

async fn probe_with(
    shared: &Shared,
    target: &ProbeTarget,
    mut conn: NodeConn,
    reused: bool,
    now: Time,
) -> (Option<NodeConn>, Observation) {
    let first = conn
        .observe(shared, &target.name, target.cluster_id, now)
        .await;
    match first {
        Ok(obs) => (Some(conn), obs),
        // A kept connection may have died since the last beat without us
        // noticing (server restarted): then one fresh attempt, same deadline.
        Err(f) if f.broken && reused => {
            let reason = shared.settings.scrub(f.reason);
            debug!(node = %target.name, reason = %reason, "kept connection broke, reconnecting");
            drop(conn);
            // Boxed: a connect future is large, and this rarely runs.
            let mut conn = match Box::pin(NodeConn::connect(shared, &target.name)).await {
                Ok(c) => c,
                Err(f) => return (None, down(f)),
            };
            match conn
                .observe(shared, &target.name, target.cluster_id, now)
                .await
            {
                Ok(obs) => (Some(conn), obs),
                Err(f) => finish(conn, f),
            }
        }
        Err(f) => finish(conn, f),
    }
}

fn finish(conn: NodeConn, f: ProbeFailure) -> (Option<NodeConn>, Observation) {
    let keep = !f.broken && !conn.is_closed();
    (keep.then_some(conn), down(f))
}

fn down(f: ProbeFailure) -> Observation {
    Observation::Down { reason: f.reason }
}

/// Removes `password` from `text`.
fn scrub(text: String, password: &str) -> String {
    if password.is_empty() || !text.contains(password) {
        text
    } else {
        text.replace(password, "***")
    }
}

/// `5s`, `1.5s`, `0.25s`.
fn fmt_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        let s = format!("{:.3}", d.as_secs_f64());
        format!("{}s", s.trim_end_matches('0').trim_end_matches('.'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(fmt_duration(Duration::from_secs(5)), "5s");
        assert_eq!(fmt_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(fmt_duration(Duration::from_millis(250)), "0.25s");
        assert_eq!(fmt_duration(Duration::from_millis(0)), "0s");
    }

    #[test]
    fn a_node_down_is_one_error_until_it_answers_again() {
        let mut last = LogOnceMap::default();
        let n = NodeName::new("db1", 5432);
        let down = |r: &str| Observation::Down { reason: r.into() };
        let slave = Observation::Slave { heartbeat: None };
        assert_eq!(note(&mut last, &n, &slave), Change::Up);
        assert_eq!(note(&mut last, &n, &down("refused")), Change::NewDown);
        assert_eq!(note(&mut last, &n, &down("refused")), Change::StillDown);
        assert_eq!(note(&mut last, &n, &down("timeout")), Change::OtherReason);
        assert_eq!(note(&mut last, &n, &down("timeout")), Change::StillDown);
        assert_eq!(note(&mut last, &n, &slave), Change::Back);
        assert_eq!(note(&mut last, &n, &slave), Change::Up);
        assert_eq!(note(&mut last, &n, &down("timeout")), Change::NewDown);
        // Another node has its own history.
        let m = NodeName::new("db2", 5432);
        assert_eq!(note(&mut last, &m, &down("timeout")), Change::NewDown);
    }

    #[test]
    fn server_reasons_are_scrubbed_and_escaped() {
        let mut settings = settings();
        settings.password = Secret::new("hunter2");
        assert_eq!(
            settings.scrub("FATAL: hunter2\nplusmoin: forged line".into()),
            "FATAL: ***\\nplusmoin: forged line"
        );
    }

    #[test]
    fn scrubbing() {
        assert_eq!(
            scrub("FATAL: hunter2 bad".into(), "hunter2"),
            "FATAL: *** bad"
        );
        assert_eq!(scrub("nothing here".into(), "hunter2"), "nothing here");
        assert_eq!(scrub("abc".into(), ""), "abc");
    }

    pub(super) fn settings() -> ProbeSettings {
        ProbeSettings {
            dbname: "db".into(),
            user: "u".into(),
            password: Secret::new("p"),
            node_passwords: Default::default(),
            instance_name: "i".into(),
            is_slave_statement: "SELECT pg_is_in_recovery()".into(),
            sslmode: SslMode::Disable,
            sslrootcert: None,
            connect_timeout: Duration::from_secs(1),
            retry_interval: Duration::from_millis(250),
        }
    }

    #[test]
    fn node_passwords_win_and_every_password_is_scrubbed() {
        let mut s = settings();
        s.password = Secret::new("pw");
        let n = NodeName::new("h", 1);
        s.node_passwords.insert(n.clone(), Secret::new("node-pw"));
        assert_eq!(s.password_for(&n).expose(), "node-pw");
        assert_eq!(s.password_for(&NodeName::new("h", 2)).expose(), "pw");
        assert_eq!(s.scrub("x node-pw y".into()), "x *** y");
    }

    #[test]
    fn what_makes_a_reconnect() {
        let a = settings();
        let mut b = a.clone();
        b.instance_name = "other".into();
        b.is_slave_statement = "SELECT true".into();
        b.connect_timeout = Duration::from_secs(9);
        assert!(!a.connection_differs(&b));
        for change in [
            |s: &mut ProbeSettings| s.password = Secret::new("q"),
            |s: &mut ProbeSettings| s.user = "v".into(),
            |s: &mut ProbeSettings| s.dbname = "e".into(),
            |s: &mut ProbeSettings| s.sslmode = SslMode::Require,
            |s: &mut ProbeSettings| s.sslrootcert = Some("/x".into()),
            |s: &mut ProbeSettings| {
                s.node_passwords
                    .insert(NodeName::new("h", 1), Secret::new("r"));
            },
        ] {
            let mut c = a.clone();
            change(&mut c);
            assert!(a.connection_differs(&c), "{c:?}");
        }
    }
}
