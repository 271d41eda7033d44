//! `GET /metrics`: the Prometheus text format (README "Metrics and health
//! endpoints"), rendered at each scrape from the last [`Snapshot`] and the
//! process-wide [`Counters`].
//!
//! The counters are plain atomics bumped where things happen (the deciding
//! loop, the trigger workers, the pgpool worker): no lock is ever taken on
//! their side, and a scrape only loads them.

use super::Snapshot;
use crate::actions::trigger::TriggerOutcome;
use crate::cluster::EventKind;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The `Content-Type` of what [`render`] returns.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// How a trigger run ended, as `plusmoin_trigger_runs_total` counts it.
pub const TRIGGER_OUTCOMES: [&str; 3] = ["ok", "failed", "timed_out"];
/// A pcp action (attach, detach) of the pgpool sidecar.
pub const PCP_ACTIONS: [&str; 2] = ["attach", "detach"];
/// `ok`: pgpool shows it done; `not_taken`: pcp ran but pgpool did not
/// show it within the confirm window; `failed`: pcp failed.
pub const PCP_OUTCOMES: [&str; 3] = ["ok", "not_taken", "failed"];
/// Why the HTTP listener dropped a connection without answering it, as
/// `plusmoin_http_connections_dropped_total` counts it: `evicted` (it had
/// not sent a whole request when room was needed for a newer one), `idle`
/// (it sent nothing in time), `refused` (full of connections being
/// answered).
pub const HTTP_DROPS: [&str; 3] = ["evicted", "idle", "refused"];
/// Upper bounds of the beat duration histogram, in seconds (a beat lasts
/// from its tick to its decision: normally the slowest answer, at most
/// `connect_timeout` and a little more).
pub const BEAT_BUCKETS: [f64; 13] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

const KINDS: usize = EventKind::ALL.len();

/// Counters of what happened since the process started.
#[derive(Debug)]
pub struct Counters {
    events: [AtomicU64; KINDS],
    trigger_runs: [[AtomicU64; 3]; KINDS],
    pcp_actions: [[AtomicU64; 3]; 2],
    /// Per bucket of [`BEAT_BUCKETS`] (not cumulative), then +Inf.
    beat_buckets: [AtomicU64; BEAT_BUCKETS.len() + 1],
    beat_count: AtomicU64,
    beat_sum_micros: AtomicU64,
    primary_refusals: AtomicU64,
    http_drops: [AtomicU64; 3],
}

/// The counters of this process, which the listener serves.
pub static COUNTERS: Counters = Counters::new();

#[allow(clippy::declare_interior_mutable_const)]
const ZERO: AtomicU64 = AtomicU64::new(0);
#[allow(clippy::declare_interior_mutable_const)]
const ZERO3: [AtomicU64; 3] = [ZERO; 3];

fn kind_index(kind: EventKind) -> usize {
    EventKind::ALL
        .iter()
        .position(|k| *k == kind)
        .unwrap_or_default()
}

impl Counters {
    pub const fn new() -> Counters {
        Counters {
            events: [ZERO; KINDS],
            trigger_runs: [ZERO3; KINDS],
            pcp_actions: [ZERO3; 2],
            beat_buckets: [ZERO; BEAT_BUCKETS.len() + 1],
            beat_count: ZERO,
            beat_sum_micros: ZERO,
            primary_refusals: ZERO,
            http_drops: ZERO3,
        }
    }

    /// A master began to be refused `/primary` (or for another reason).
    pub fn primary_refused(&self) {
        self.primary_refusals.fetch_add(1, Ordering::Relaxed);
    }

    /// An event was decided (every kind, `plusmoin_heartbeat` included).
    pub fn event(&self, kind: EventKind) {
        self.events[kind_index(kind)].fetch_add(1, Ordering::Relaxed);
    }

    /// A trigger ran (or could not be started: `failed`).
    pub fn trigger_ran(&self, kind: EventKind, outcome: &TriggerOutcome) {
        let i = match outcome {
            TriggerOutcome::Succeeded { .. } => 0,
            TriggerOutcome::TimedOut { .. } => 2,
            _ => 1,
        };
        self.trigger_runs[kind_index(kind)][i].fetch_add(1, Ordering::Relaxed);
    }

    /// A pcp action ended: `attach` is false for a detach; `outcome`
    /// indexes [`PCP_OUTCOMES`].
    pub fn pcp_action(&self, attach: bool, outcome: PcpOutcome) {
        self.pcp_actions[usize::from(!attach)][outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// A beat was decided, `took` after its tick.
    pub fn beat_closed(&self, took: Duration) {
        let secs = took.as_secs_f64();
        let i = BEAT_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BEAT_BUCKETS.len());
        self.beat_buckets[i].fetch_add(1, Ordering::Relaxed);
        self.beat_sum_micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
        self.beat_count.fetch_add(1, Ordering::Relaxed);
    }

    /// The HTTP listener dropped a connection without answering it.
    pub fn http_dropped(&self, why: HttpDrop) {
        self.http_drops[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    fn load(&self) -> Loaded {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Loaded {
            events: self.events.each_ref().map(get),
            trigger_runs: self.trigger_runs.each_ref().map(|r| r.each_ref().map(get)),
            pcp_actions: self.pcp_actions.each_ref().map(|r| r.each_ref().map(get)),
            beat_buckets: self.beat_buckets.each_ref().map(get),
            beat_count: get(&self.beat_count),
            beat_sum: get(&self.beat_sum_micros) as f64 / 1e6,
            primary_refusals: get(&self.primary_refusals),
            http_drops: self.http_drops.each_ref().map(get),
        }
    }
}

impl Default for Counters {
    fn default() -> Self {
        Counters::new()
    }
}

/// Why a connection was dropped (see [`HTTP_DROPS`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpDrop {
    Evicted = 0,
    Idle = 1,
    Refused = 2,
}

/// How a pcp action ended (see [`PCP_OUTCOMES`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PcpOutcome {
    Ok = 0,
    NotTaken = 1,
    Failed = 2,
}

/// The counters' values at one scrape.
#[derive(Debug, Clone)]
struct Loaded {
    events: [u64; KINDS],
    trigger_runs: [[u64; 3]; KINDS],
    pcp_actions: [[u64; 3]; 2],
    beat_buckets: [u64; BEAT_BUCKETS.len() + 1],
    beat_count: u64,
    beat_sum: f64,
    primary_refusals: u64,
    http_drops: [u64; 3],
}

/// Everything one scrape shows.
#[derive(Debug)]
struct Scrape {
    snapshot: Option<Arc<Snapshot>>,
    counters: Loaded,
}

type Labels = Vec<(&'static str, String)>;

/// One metric family: its series are written one after the other.
fn family(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    kind: MetricType,
    series: impl IntoIterator<Item = (Labels, f64)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, unit, kind)?;
    for (labels, value) in series {
        let m = metric.encode_family(&labels)?;
        match kind {
            MetricType::Counter => ConstCounter::new(value as u64).encode(m)?,
            _ => ConstGauge::new(value).encode(m)?,
        }
    }
    Ok(())
}

fn flag(b: bool) -> f64 {
    if b {
        1.0
    } else {
        0.0
    }
}

impl Collector for Scrape {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let gauge = MetricType::Gauge;
        family(
            &mut enc,
            "build_info",
            "plusmoin's version (always 1)",
            None,
            gauge,
            [(
                vec![("version", env!("CARGO_PKG_VERSION").to_string())],
                1.0,
            )],
        )?;
        if let Some(s) = &self.snapshot {
            node_metrics(&mut enc, s)?;
        }
        let c = &self.counters;
        family(
            &mut enc,
            "events",
            "Events decided since plusmoin started, by kind",
            None,
            MetricType::Counter,
            EventKind::ALL
                .iter()
                .zip(c.events)
                .map(|(k, n)| (vec![("event", k.as_str().to_string())], n as f64)),
        )?;
        family(
            &mut enc,
            "trigger_runs",
            "Trigger runs since plusmoin started, by trigger and outcome (ok, failed: non-zero exit or not started, timed_out: killed)",
            None,
            MetricType::Counter,
            EventKind::ALL.iter().zip(c.trigger_runs).flat_map(|(k, runs)| {
                TRIGGER_OUTCOMES.iter().zip(runs).map(move |(o, n)| {
                    (
                        vec![
                            ("trigger", k.as_str().to_string()),
                            ("outcome", o.to_string()),
                        ],
                        n as f64,
                    )
                })
            }),
        )?;
        family(
            &mut enc,
            "pcp_actions",
            "pcp actions of the pgpool sidecar since plusmoin started, by action and outcome (ok, not_taken: pgpool did not show it, failed: pcp failed)",
            None,
            MetricType::Counter,
            PCP_ACTIONS.iter().zip(c.pcp_actions).flat_map(|(a, runs)| {
                PCP_OUTCOMES.iter().zip(runs).map(move |(o, n)| {
                    (
                        vec![("action", a.to_string()), ("outcome", o.to_string())],
                        n as f64,
                    )
                })
            }),
        )?;
        family(
            &mut enc,
            "primary_refusals",
            "Times a master began to be refused /primary because another master of its replication set was up",
            None,
            MetricType::Counter,
            [(vec![], c.primary_refusals as f64)],
        )?;
        family(
            &mut enc,
            "http_connections_dropped",
            "HTTP connections dropped without an answer, by reason (evicted: no whole request when room was needed, idle: nothing sent in time, refused: full of connections being answered)",
            None,
            MetricType::Counter,
            HTTP_DROPS
                .iter()
                .zip(c.http_drops)
                .map(|(r, n)| (vec![("reason", r.to_string())], n as f64)),
        )?;
        let buckets: Vec<(f64, u64)> = BEAT_BUCKETS
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(c.beat_buckets)
            .collect();
        let mut m = enc.encode_descriptor(
            "beat_duration",
            "Time from a beat's tick to its decision",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        m.encode_histogram::<NoLabelSet>(c.beat_sum, c.beat_count, &buckets, None)?;
        Ok(())
    }
}

/// The gauges read from the snapshot: per node, per cluster, the last beat.
fn node_metrics(enc: &mut DescriptorEncoder, s: &Snapshot) -> Result<(), std::fmt::Error> {
    let gauge = MetricType::Gauge;
    let st = &s.status;
    let nodes = s.nodes();
    let base = |n: &crate::payload::NodeEntry| -> Labels {
        vec![
            ("node", n.name.clone()),
            (
                "cluster",
                n.cluster_id.map(|c| c.to_string()).unwrap_or_default(),
            ),
        ]
    };
    let with = |n, key, value: &str| {
        let mut l = base(n);
        l.push((key, value.to_string()));
        l
    };
    family(
        enc,
        "last_beat_timestamp",
        "When the last beat or event was decided (Unix time)",
        Some(&Unit::Seconds),
        gauge,
        [(vec![], st.updated_at_unix)],
    )?;
    family(
        enc,
        "heartbeat",
        "Configured time between beats",
        Some(&Unit::Seconds),
        gauge,
        [(vec![], st.heartbeat)],
    )?;
    family(
        enc,
        "node_up",
        "1 if the node answered its last probe",
        None,
        gauge,
        nodes
            .iter()
            .map(|n| (base(n), flag(!s.down.contains(&n.name)))),
    )?;
    family(
        enc,
        "node_role",
        "The node's role when last seen (master: not in recovery, slave: in recovery), one series per role",
        None,
        gauge,
        nodes
            .iter()
            .filter(|n| n.last_seen.is_some())
            .flat_map(|n| {
                [("master", !n.is_slave), ("slave", n.is_slave)]
                    .map(|(role, is)| (with(n, "role", role), flag(is)))
            }),
    )?;
    family(
        enc,
        "primary_refused",
        "1 while a master is refused /primary because another master of its replication set is up (split brain), 0 for the other masters",
        None,
        gauge,
        nodes
            .iter()
            .filter(|n| n.state == "master")
            .map(|n| (base(n), flag(st.primary_refused.contains_key(&n.name)))),
    )?;
    family(
        enc,
        "node_place",
        "The node's place as plusmoin decided it (master, slave: in sync, lost, clusterless), one series per place",
        None,
        gauge,
        nodes.iter().flat_map(|n| {
            ["master", "slave", "lost", "clusterless"]
                .map(|place| (with(n, "place", place), flag(n.state == place)))
        }),
    )?;
    family(
        enc,
        "node_lag",
        "How far the slave is behind its master (only for slaves seen replaying)",
        Some(&Unit::Seconds),
        gauge,
        nodes.iter().filter_map(|n| Some((base(n), n.lag?))),
    )?;
    family(
        enc,
        "node_held",
        "1 if the node is held out of pgpool (plusmoin hold)",
        None,
        gauge,
        nodes
            .iter()
            .map(|n| (base(n), flag(st.held.contains(&n.name)))),
    )?;
    if let Some(p) = &st.pgpool {
        family(
            enc,
            "node_pgpool_status",
            "pgpool's status of the node as the sidecar last read it, one series per status",
            None,
            gauge,
            nodes.iter().flat_map(|n| {
                let seen = p.nodes.get(&n.name);
                crate::pgpool::pcp::NodeStatus::ALL
                    .iter()
                    .filter(move |_| seen.is_some())
                    .map(move |status| {
                        (
                            with(n, "status", status.as_str()),
                            flag(seen.map(String::as_str) == Some(status.as_str())),
                        )
                    })
            }),
        )?;
        family(
            enc,
            "pgpool_acting",
            "1 if this plusmoin sends pcp actions (its pgpool leads the watchdog, or has none)",
            None,
            gauge,
            [(vec![], flag(p.acting))],
        )?;
        family(
            enc,
            "pgpool_pcp_error",
            "1 if pgpool could not be asked through pcp at the last round",
            None,
            gauge,
            [(vec![], flag(p.error.is_some()))],
        )?;
    }
    family(
        enc,
        "cluster_has_master",
        "1 if the cluster has a master",
        None,
        gauge,
        st.clusters.iter().map(|c| {
            (
                vec![("cluster", c.cluster_id.to_string())],
                flag(c.has_master),
            )
        }),
    )?;
    Ok(())
}

/// The Prometheus text for `snapshot` (none before the first decision:
/// then only the counters and build info) and `counters`.
pub fn render(snapshot: Option<Arc<Snapshot>>, counters: &Counters) -> String {
    let mut registry = Registry::with_prefix("plusmoin");
    registry.register_collector(Box::new(Scrape {
        snapshot,
        counters: counters.load(),
    }));
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry);
    out
}
