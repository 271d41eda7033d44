//! The JSON shapes plusmoin shows the world: the trigger payload (README "Triggers")
//! and the status document (README "Status"), both built from a [`State`].
//! The status document's type, [`Status`], lives here; [`crate::status`] is
//! the file that holds it (writing it every beat, reading it back).
//!
//! The fields of the original format must stay; the extra ones (`name`, `state`, `lag`,
//! `since`, …) are there for operators and may grow. Nothing secret is ever
//! part of a [`State`], so nothing secret can reach these documents.

use crate::cluster::{ClusterId, EventKind, NodeState, Place, State, Time};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One maintenance hold (`plusmoin hold`), as the status shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldEntry {
    /// `host:port` as plusmoin prints it.
    pub node: String,
    /// Who placed it: `user@host` and the plusmoin instance that ran the
    /// command, or `held.json (this host only)` for a hold of the legacy
    /// file.
    pub placed_by: String,
    /// When (RFC 3339, UTC); empty for a legacy hold.
    pub placed_at: String,
    pub reason: Option<String>,
}

/// A node entry: `host`, `port`, `cluster_id`, `is_slave`, `master_name` as
/// the original format has, then what an operator wants to see at a glance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct NodeEntry {
    pub(crate) host: String,
    pub(crate) port: u16,
    /// `null` for a clusterless node.
    pub(crate) cluster_id: Option<ClusterId>,
    /// Whether the node was in recovery when last seen.
    pub(crate) is_slave: bool,
    /// The master it follows (its own name for a master); `null` if unknown.
    pub(crate) master_name: Option<String>,
    /// `host:port`.
    pub(crate) name: String,
    /// `master`, `slave`, `lost` or `clusterless`.
    pub(crate) state: String,
    /// Seconds behind its cluster's master, for a slave seen replaying.
    pub(crate) lag: Option<f64>,
    /// Bytes of WAL behind its cluster's master (the master's position at
    /// the beat minus its replay position), when both were read.
    #[serde(default)]
    pub(crate) lag_bytes: Option<u64>,
    /// `sync`, `quorum`, `potential` or `async`, as the master's
    /// `pg_stat_replication` shows the standby whose `application_name`
    /// is this node's `host:port`; `null` when no single row does.
    #[serde(default)]
    pub(crate) sync_state: Option<std::borrow::Cow<'static, str>>,
    /// When it entered its current state (RFC 3339, UTC).
    pub(crate) since: String,
    /// When it last answered a probe (RFC 3339, UTC).
    pub(crate) last_seen: Option<String>,
    /// Why it is lost or clusterless, when known.
    pub(crate) reason: Option<String>,
}

impl NodeEntry {
    pub(crate) fn from_state(n: &NodeState) -> NodeEntry {
        NodeEntry {
            host: n.name.host.clone(),
            port: n.name.port,
            cluster_id: n.cluster_id,
            is_slave: n.is_slave,
            master_name: n.master_name.clone(),
            name: n.name.to_string(),
            state: n.place.as_str().to_string(),
            lag: n.lag.map(|l| (l.as_secs_f64() * 1000.0).round() / 1000.0),
            lag_bytes: n.lag_bytes,
            sync_state: n.sync_state.map(std::borrow::Cow::Borrowed),
            since: rfc3339(n.since),
            last_seen: n.last_seen.map(rfc3339),
            reason: n.reason.clone(),
        }
    }
}

/// RFC 3339 in UTC with milliseconds.
pub(crate) fn rfc3339(t: Time) -> String {
    humantime::format_rfc3339_millis(t.to_system_time()).to_string()
}

fn entries<'a>(nodes: impl Iterator<Item = &'a NodeState>) -> Vec<NodeEntry> {
    nodes.map(NodeEntry::from_state).collect()
}

fn master_entry(state: &State, cluster: ClusterId) -> Option<NodeEntry> {
    state
        .members(cluster, Place::Master)
        .next()
        .map(NodeEntry::from_state)
}

/// What a trigger reads on stdin (README "Triggers").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct TriggerPayload {
    pub(crate) cluster_id: ClusterId,
    /// The node the trigger is about; `null` for `plusmoin_up` and
    /// `plusmoin_heartbeat`.
    pub(crate) trigger: Option<NodeEntry>,
    pub(crate) master: Option<NodeEntry>,
    pub(crate) slaves: Vec<NodeEntry>,
    pub(crate) lost: Vec<NodeEntry>,
    pub(crate) clusterless: Vec<NodeEntry>,
    /// The trigger's name, so one script can serve several triggers.
    pub(crate) event: String,
    /// The event's record in the journal (`plusmoin events`): its id…
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) event_id: Option<u64>,
    /// …and its time (RFC 3339, UTC), the record's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) event_time: Option<String>,
    /// The cluster's synchronous replication (what `sync_lost` and
    /// `sync_ok` are about); absent before its master said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) sync: Option<SyncEntry>,
}

/// A cluster's synchronous replication, from its master's last beat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SyncEntry {
    /// The master's `synchronous_standby_names`, as it gave it.
    pub(crate) standby_names: String,
    /// The master's `synchronous_commit`.
    pub(crate) synchronous_commit: String,
    /// `first` or `any`; `null` without synchronous standbys.
    pub(crate) method: Option<String>,
    /// How many synchronous standbys commits wait for.
    pub(crate) required: u32,
    /// How many of the standbys named are connected and streaming;
    /// `null` when the master does not show them.
    pub(crate) connected: Option<u32>,
    /// Commits on the master wait on missing synchronous standbys.
    pub(crate) waiting: bool,
    /// Why plusmoin cannot tell, when it cannot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) problem: Option<String>,
}

impl SyncEntry {
    fn of(state: &State, cluster: ClusterId) -> Option<SyncEntry> {
        let v = state.clusters.get(&cluster)?.sync.as_ref()?;
        Some(SyncEntry {
            standby_names: crate::text::escape_controls(&v.standby_names),
            synchronous_commit: crate::text::escape_controls(&v.synchronous_commit),
            method: v.method.map(str::to_string),
            required: v.required,
            connected: v.connected,
            waiting: v.waiting,
            problem: v.problem.clone(),
        })
    }
}

impl TriggerPayload {
    /// The payload of `event` about `node` in `cluster`, from the state after
    /// the beat.
    pub(crate) fn new(
        state: &State,
        event: EventKind,
        cluster: ClusterId,
        node: Option<&crate::cluster::NodeName>,
    ) -> TriggerPayload {
        TriggerPayload {
            cluster_id: cluster,
            trigger: node.and_then(|n| state.node(n)).map(NodeEntry::from_state),
            master: master_entry(state, cluster),
            slaves: entries(state.members(cluster, Place::Slave)),
            lost: entries(state.members(cluster, Place::Lost)),
            clusterless: entries(state.clusterless()),
            event: event.as_str().to_string(),
            event_id: None,
            event_time: None,
            sync: SyncEntry::of(state, cluster),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct ClusterStatus {
    pub(crate) cluster_id: ClusterId,
    pub(crate) has_master: bool,
    pub(crate) master: Option<NodeEntry>,
    pub(crate) slaves: Vec<NodeEntry>,
    pub(crate) lost: Vec<NodeEntry>,
    /// See [`TriggerPayload::sync`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) sync: Option<SyncEntry>,
}

/// The status file (README "Status").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub(crate) clusters: Vec<ClusterStatus>,
    pub(crate) clusterless: Vec<NodeEntry>,
    /// This instance's name (its heartbeat row).
    pub(crate) instance_name: String,
    /// When the beat that wrote this was decided (RFC 3339, UTC).
    pub updated_at: String,
    /// The same, in seconds since the Unix epoch, for easy age checks.
    pub(crate) updated_at_unix: f64,
    /// Seconds between beats: the file is stale after three of them.
    pub(crate) heartbeat: f64,
    /// The daemon's process id.
    pub(crate) pid: u32,
    /// Nodes an operator holds out of pgpool on purpose.
    #[serde(default)]
    pub(crate) held: Vec<String>,
    /// The same holds, with who placed each, when and why.
    #[serde(default)]
    pub(crate) holds: Vec<HoldEntry>,
    /// What the pgpool sidecar last found (absent without a `pgpool`
    /// section, or before its first round).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) pgpool: Option<PgpoolReport>,
    /// Masters refused `/primary/HOST:PORT`, with why: another master of
    /// the same replication set is up (contrib/README.md, "Two masters").
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) primary_refused: BTreeMap<String, String>,
    /// The last reload (SIGHUP) this daemon handled and how it went; absent
    /// until the first one. `plusmoin reload` waits for its generation to
    /// grow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reload: Option<ReloadReport>,
}

/// One reload as the status shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadReport {
    /// Reloads (SIGHUPs) handled since the daemon started: 1 for the first.
    pub generation: u64,
    /// When it was handled (RFC 3339, UTC).
    pub at: String,
    /// Whether the new configuration is in force.
    pub ok: bool,
    /// Why not, when it is not (the old configuration stays in force).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Settings that changed but take effect only at the next start.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub restart_needed: Vec<String>,
}

/// The statuses pgpool gives a node, as [`PgpoolReport::nodes`] names them
/// (pcp's `Status`, in words), in the order `/metrics` lists them.
pub(crate) const PGPOOL_NODE_STATUSES: [&str; 5] =
    ["up", "waiting", "down", "quarantine", "unused"];

/// The pgpool sidecar's view, as `status` shows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct PgpoolReport {
    /// This pgpool's place in its watchdog cluster, in words.
    pub(crate) watchdog: String,
    /// Whether this plusmoin is the one sending pcp actions.
    pub(crate) acting: bool,
    /// The node pgpool has as its primary, if any.
    pub(crate) primary: Option<String>,
    /// Why plusmoin acts on no node at the moment.
    pub(crate) paused: Option<String>,
    /// Per node, why plusmoin leaves it as it is (disagreements with
    /// pgpool, back-off, a second primary…).
    #[serde(default)]
    pub(crate) remarks: std::collections::BTreeMap<String, String>,
    /// Nodes plusmoin does not attach for now, with the seconds left.
    #[serde(default)]
    pub(crate) backing_off: std::collections::BTreeMap<String, f64>,
    /// The last pcp failure, while pgpool cannot be asked.
    pub(crate) error: Option<String>,
    /// pgpool's status of each mapped node (one of
    /// [`PGPOOL_NODE_STATUSES`]) as the last round read it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) nodes: BTreeMap<String, String>,
}

impl Status {
    pub fn new(
        state: &State,
        instance_name: &str,
        now: Time,
        heartbeat: std::time::Duration,
    ) -> Status {
        // One pass over the nodes (configuration order kept in each list),
        // not one per cluster: the status is written every beat.
        let mut clusters: std::collections::BTreeMap<ClusterId, ClusterStatus> = state
            .clusters
            .values()
            .map(|c| {
                let status = ClusterStatus {
                    cluster_id: c.id,
                    has_master: c.master.is_some(),
                    master: None,
                    slaves: Vec::new(),
                    lost: Vec::new(),
                    sync: SyncEntry::of(state, c.id),
                };
                (c.id, status)
            })
            .collect();
        let mut clusterless = Vec::new();
        for n in &state.nodes {
            let entry = NodeEntry::from_state(n);
            match n.cluster_id.and_then(|id| clusters.get_mut(&id)) {
                Some(c) => match n.place {
                    Place::Master => c.master = Some(entry),
                    Place::Slave => c.slaves.push(entry),
                    Place::Lost | Place::Clusterless => c.lost.push(entry),
                },
                None => clusterless.push(entry),
            }
        }
        Status {
            clusters: clusters.into_values().collect(),
            clusterless,
            instance_name: instance_name.to_string(),
            updated_at: rfc3339(now),
            updated_at_unix: now.as_secs_f64(),
            heartbeat: heartbeat.as_secs_f64(),
            pid: std::process::id(),
            held: Vec::new(),
            holds: Vec::new(),
            pgpool: None,
            primary_refused: BTreeMap::new(),
            reload: None,
        }
    }

    /// Shows `holds` (by node name) in both `held` and `holds`.
    pub(crate) fn set_holds(&mut self, holds: &BTreeMap<String, HoldEntry>) {
        self.held = holds.keys().cloned().collect();
        self.holds = holds.values().cloned().collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::testing::step;
    use crate::cluster::{Heartbeat, NodeName, Observation, Policy};
    use serde_json::json;
    use std::time::Duration;

    /// A master, one slave in sync, one slave down, one clusterless node.
    fn sample() -> State {
        let policy = Policy {
            max_sync_delay: Duration::from_secs(10),
            recover_sync_delay: Duration::from_secs(5),
            max_lag_bytes: None,
            recover_lag_bytes: None,
        };
        let n = |p| NodeName::new("db", p);
        let t0 = Time(1_700_000_000_000_000);
        let obs = |slave2: Observation| {
            vec![
                (
                    n(5432),
                    Observation::Master {
                        wrote_at: t0,
                        repl: None,
                    },
                ),
                (
                    n(5433),
                    Observation::Slave {
                        heartbeat: Some(Heartbeat {
                            master_name: "db:5432".into(),
                            cluster_id: Some(0),
                            written_at: t0,
                            received: None,
                            replayed: None,
                        }),
                    },
                ),
                (n(5434), slave2),
                (
                    n(5435),
                    Observation::Down {
                        reason: "connection refused".into(),
                    },
                ),
            ]
        };
        let up = Observation::Slave {
            heartbeat: Some(Heartbeat {
                master_name: "db:5432".into(),
                cluster_id: Some(0),
                written_at: t0,
                received: None,
                replayed: None,
            }),
        };
        let (s, _) = step(&State::default(), &obs(up), t0, &policy);
        let down = Observation::Down {
            reason: "connection refused".into(),
        };
        let (s, _) = step(&s, &obs(down), t0, &policy);
        s
    }

    fn entry(port: u16, state: &str, cluster: serde_json::Value, slave: bool) -> serde_json::Value {
        let master_name = match (state, slave) {
            ("clusterless", _) => serde_json::Value::Null,
            _ => json!("db:5432"),
        };
        let (lag, last_seen, reason) = match state {
            "master" => (json!(null), json!("2023-11-14T22:13:20.000Z"), json!(null)),
            "slave" => (json!(0.0), json!("2023-11-14T22:13:20.000Z"), json!(null)),
            "lost" => (
                json!(null),
                json!("2023-11-14T22:13:20.000Z"),
                json!("connection refused"),
            ),
            _ => (json!(null), json!(null), json!("connection refused")),
        };
        json!({
            "host": "db", "port": port, "cluster_id": cluster, "is_slave": slave,
            "master_name": master_name, "name": format!("db:{port}"), "state": state,
            "lag": lag, "lag_bytes": null, "sync_state": null,
            "since": "2023-11-14T22:13:20.000Z", "last_seen": last_seen,
            "reason": reason,
        })
    }

    #[test]
    fn trigger_payload_matches_spec_shape() {
        let s = sample();
        let p = TriggerPayload::new(
            &s,
            EventKind::SlaveDown,
            0,
            Some(&NodeName::new("db", 5434)),
        );
        let got = serde_json::to_value(&p).unwrap();
        let expected = json!({
            "cluster_id": 0,
            "trigger": entry(5434, "lost", json!(0), true),
            "master": entry(5432, "master", json!(0), false),
            "slaves": [entry(5433, "slave", json!(0), true)],
            "lost": [entry(5434, "lost", json!(0), true)],
            "clusterless": [entry(5435, "clusterless", json!(null), false)],
            "event": "slave_down",
        });
        assert_eq!(got, expected);
    }

    /// The journal's id and time come beside the seed's keys, which stay.
    #[test]
    fn trigger_payload_carries_the_journal_id_and_time_beside_the_seed_keys() {
        let s = sample();
        let node = NodeName::new("db", 5434);
        let mut p = TriggerPayload::new(&s, EventKind::SlaveDown, 0, Some(&node));
        let seed = serde_json::to_value(&p).unwrap();
        p.event_id = Some(42);
        p.event_time = Some("2023-11-14T22:13:20.000Z".into());
        let mut got = serde_json::to_value(&p).unwrap();
        assert_eq!(got["event_id"], json!(42));
        assert_eq!(got["event_time"], json!("2023-11-14T22:13:20.000Z"));
        let o = got.as_object_mut().unwrap();
        o.remove("event_id");
        o.remove("event_time");
        assert_eq!(got, seed);
    }

    #[test]
    fn heartbeat_payload_has_null_trigger() {
        let s = sample();
        let p = TriggerPayload::new(&s, EventKind::PlusmoinHeartbeat, 0, None);
        let got = serde_json::to_value(&p).unwrap();
        assert_eq!(got["trigger"], json!(null));
        assert_eq!(got["event"], json!("plusmoin_heartbeat"));
    }

    #[test]
    fn status_matches_spec_shape() {
        let s = sample();
        let st = Status::new(
            &s,
            "pgpool1",
            Time(1_700_000_001_500_000),
            Duration::from_secs(2),
        );
        let mut got = serde_json::to_value(&st).unwrap();
        assert_eq!(got["pid"], json!(std::process::id()));
        got.as_object_mut().unwrap().remove("pid");
        let expected = json!({
            "clusters": [{
                "cluster_id": 0,
                "has_master": true,
                "master": entry(5432, "master", json!(0), false),
                "slaves": [entry(5433, "slave", json!(0), true)],
                "lost": [entry(5434, "lost", json!(0), true)],
            }],
            "clusterless": [entry(5435, "clusterless", json!(null), false)],
            "instance_name": "pgpool1",
            "updated_at": "2023-11-14T22:13:21.500Z",
            "updated_at_unix": 1700000001.5,
            "heartbeat": 2.0,
            "held": [],
            "holds": [],
        });
        assert_eq!(got, expected);
    }

    #[test]
    fn status_shows_holds_with_who_placed_them() {
        let mut st = Status::new(
            &sample(),
            "pgpool1",
            Time(1_700_000_001_500_000),
            Duration::from_secs(2),
        );
        let holds: BTreeMap<String, HoldEntry> = [
            HoldEntry {
                node: "db:5434".into(),
                placed_by: "held.json (this host only)".into(),
                placed_at: String::new(),
                reason: None,
            },
            HoldEntry {
                node: "db:5433".into(),
                placed_by: "alice@admin1 (plusmoin pgpool2)".into(),
                placed_at: "2023-11-14T22:10:00.000Z".into(),
                reason: Some("kernel upgrade".into()),
            },
        ]
        .into_iter()
        .map(|e| (e.node.clone(), e))
        .collect();
        st.set_holds(&holds);
        let got = serde_json::to_value(&st).unwrap();
        assert_eq!(got["held"], json!(["db:5433", "db:5434"]));
        assert_eq!(
            got["holds"],
            json!([
                {"node": "db:5433", "placed_by": "alice@admin1 (plusmoin pgpool2)",
                 "placed_at": "2023-11-14T22:10:00.000Z", "reason": "kernel upgrade"},
                {"node": "db:5434", "placed_by": "held.json (this host only)",
                 "placed_at": "", "reason": null},
            ])
        );
        // A status written before holds had details still reads.
        let mut old = got.clone();
        old.as_object_mut().unwrap().remove("holds");
        let back: Status = serde_json::from_value(old).unwrap();
        assert!(back.holds.is_empty());
        assert_eq!(back.held, ["db:5433", "db:5434"]);
    }
}
