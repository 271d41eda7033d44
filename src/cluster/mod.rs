//! The pure cluster state machine (README, "How it works", step 3).
//!
//! It owns every decision plusmoin makes: which node is master, which cluster
//! each node belongs to, whether a slave is in sync or lost, and which events
//! fire. It does no I/O and reads no clock: the beat's time and one
//! [`Observation`] per node come in as plain data, and the next [`State`] and
//! the ordered [`Event`]s go out as plain data.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

mod machine;
mod primary;
mod sync;
pub use machine::*;
pub(crate) use primary::{PrimaryGuard, Refusal};
pub(crate) use sync::parse_size;

/// A node as written in the configuration: `host:port` is its name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeName {
    pub host: String,
    pub port: u16,
}

impl NodeName {
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        NodeName {
            host: host.into(),
            port,
        }
    }
}

impl fmt::Display for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            // IPv6 literal: bracket it so the port stays readable.
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// A point on plusmoin's own clock, in microseconds since the Unix epoch.
///
/// Only plusmoin's clock is ever compared with itself: the heartbeat rows
/// carry the time plusmoin wrote them, and a slave's lag is the difference
/// of two such times. So the servers' clocks need not agree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Time(pub i64);

impl Time {
    pub fn from_secs_f64(secs: f64) -> Time {
        Time((secs * 1_000_000.0).round() as i64)
    }
    pub fn as_secs_f64(self) -> f64 {
        self.0 as f64 / 1_000_000.0
    }
    pub fn now() -> Time {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Time(d.as_micros() as i64)
    }
    /// `self - earlier`, or zero when `earlier` is later.
    pub(crate) fn since(self, earlier: Time) -> Duration {
        Duration::from_micros(self.0.saturating_sub(earlier.0).max(0) as u64)
    }
    pub(crate) fn to_system_time(self) -> std::time::SystemTime {
        if self.0 >= 0 {
            std::time::UNIX_EPOCH + Duration::from_micros(self.0 as u64)
        } else {
            std::time::UNIX_EPOCH - Duration::from_micros(self.0.unsigned_abs())
        }
    }
    pub(crate) fn from_system_time(t: std::time::SystemTime) -> Time {
        match t.duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => Time(d.as_micros() as i64),
            Err(e) => Time(-(e.duration().as_micros() as i64)),
        }
    }
}

impl std::ops::Add<Duration> for Time {
    type Output = Time;
    fn add(self, d: Duration) -> Time {
        Time(self.0 + d.as_micros() as i64)
    }
}

/// Cluster ids: 0, 1, 2, … in the order clusters are founded. An existing
/// cluster's id never changes.
pub type ClusterId = u32;

/// The heartbeat row a slave replays: what plusmoin wrote on a master
/// (README, "How it works", step 2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    /// `host:port` of the master that wrote the row, as written in the config.
    pub master_name: String,
    /// The cluster id plusmoin gave that master when it wrote the row.
    pub cluster_id: Option<ClusterId>,
    /// plusmoin's clock when it wrote the row.
    pub written_at: Time,
    /// The WAL position the slave has received, read with the row
    /// (`pg_last_wal_receive_lsn()`, in bytes from `0/0`); `None` when the
    /// server did not say.
    pub received: Option<u64>,
    /// The WAL position the slave has replayed (`pg_last_wal_replay_lsn()`,
    /// in bytes): its lag in bytes is its master's position at the beat
    /// minus this one.
    pub replayed: Option<u64>,
}

/// What a master's heartbeat write read along with it, in the same
/// statement: its WAL position and how it replicates synchronously.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MasterRepl {
    /// `pg_current_wal_lsn()` just after the write, in bytes from `0/0`.
    pub wal: Option<u64>,
    /// The master's `synchronous_standby_names`, as it gave it.
    pub standby_names: String,
    /// The master's `synchronous_commit`, as a new session gets it.
    pub synchronous_commit: String,
    /// Its `pg_stat_replication` rows; `None` when it showed them without
    /// their columns (plusmoin's user lacks `pg_read_all_stats`).
    pub walsenders: Option<Vec<Walsender>>,
}

/// One `pg_stat_replication` row: a standby streaming from the master.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Walsender {
    pub application_name: String,
    /// `streaming`, `catchup`, `startup`, `backup` or `stopping`.
    pub state: String,
    /// `sync`, `quorum`, `potential` or `async`.
    pub sync_state: String,
}

/// What one probe of one node found during one beat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observation {
    /// Unreachable, refused, timed out, or answered nonsense.
    Down { reason: String },
    /// Not in recovery, and the heartbeat was written with `wrote_at`;
    /// `repl` is what the write read along with it (`None`: nothing, as
    /// from a server that could not say).
    Master {
        wrote_at: Time,
        repl: Option<Box<MasterRepl>>,
    },
    /// In recovery. `heartbeat` is `None` while the table or this instance's
    /// row has not reached the slave yet.
    Slave { heartbeat: Option<Heartbeat> },
}

/// The triggers, which are also the events (README, "Triggers"): the
/// original six, then `sync_lost` and `sync_ok` (a master's commits wait
/// on missing synchronous standbys, and no longer do).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EventKind {
    PlusmoinUp,
    MasterDown,
    MasterUp,
    SlaveDown,
    SlaveUp,
    PlusmoinHeartbeat,
    SyncLost,
    SyncOk,
}

impl EventKind {
    pub const ALL: [EventKind; 8] = [
        EventKind::PlusmoinUp,
        EventKind::MasterDown,
        EventKind::MasterUp,
        EventKind::SlaveDown,
        EventKind::SlaveUp,
        EventKind::PlusmoinHeartbeat,
        EventKind::SyncLost,
        EventKind::SyncOk,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::PlusmoinUp => "plusmoin_up",
            EventKind::MasterDown => "master_down",
            EventKind::MasterUp => "master_up",
            EventKind::SlaveDown => "slave_down",
            EventKind::SlaveUp => "slave_up",
            EventKind::PlusmoinHeartbeat => "plusmoin_heartbeat",
            EventKind::SyncLost => "sync_lost",
            EventKind::SyncOk => "sync_ok",
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EventKind {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        EventKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or(())
    }
}

/// One thing that happened in one cluster during one beat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    pub cluster_id: ClusterId,
    /// The node the event is about (the master for `sync_lost` and
    /// `sync_ok`); `None` for `plusmoin_up` and `plusmoin_heartbeat`.
    pub node: Option<NodeName>,
}

/// The sync limits: a slave in sync is lost once its lag exceeds
/// `max_sync_delay`, and a lost one is back in sync only once its lag is
/// within `recover_sync_delay`, so a slave near the limit does not flap.
/// The same with bytes when `max_lag_bytes` is set: lost once its lag in
/// bytes exceeds it, back once within `recover_lag_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub max_sync_delay: Duration,
    pub recover_sync_delay: Duration,
    /// `None` (the default): no byte rule.
    pub max_lag_bytes: Option<u64>,
    /// Taken only with `max_lag_bytes`; at most it.
    pub recover_lag_bytes: Option<u64>,
}

#[cfg(test)]
mod tests;
