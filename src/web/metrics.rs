//! `GET /metrics`: the Prometheus text format (contrib/README.md, "Metrics
//! and health endpoints"), rendered at each scrape from the last [`Snapshot`] and the
//! process-wide [`Counters`] (kept in [`crate::metrics`], where each part
//! counts what it does): this module only renders.

use super::Snapshot;
use crate::cluster::EventKind;
use crate::metrics::{
    Counters, Loaded, BEAT_BUCKETS, HTTP_DROPS, PCP_ACTIONS, PCP_OUTCOMES, TRIGGER_OUTCOMES,
};
use crate::payload::PGPOOL_NODE_STATUSES;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use std::sync::Arc;

/// The `Content-Type` of what [`render`] returns.
pub(crate) const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

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
        let (written, dropped) = crate::status::journal::COUNTS.load();
        family(
            &mut enc,
            "journal_records",
            "Event journal records since plusmoin started, by outcome (written, dropped: the disk was too slow or full; never waited for)",
            None,
            MetricType::Counter,
            [("written", written), ("dropped", dropped)]
                .map(|(o, n)| (vec![("outcome", o.to_string())], n as f64)),
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
        "node_lag",
        "How many bytes of WAL the slave has still to replay: its master's position at the beat minus its replay position (only for slaves seen replaying)",
        Some(&Unit::Bytes),
        gauge,
        nodes
            .iter()
            .filter_map(|n| Some((base(n), n.lag_bytes? as f64))),
    )?;
    family(
        enc,
        "node_sync_state",
        "The slave's sync_state in its master's pg_stat_replication (sync, quorum, potential, async), matched by application_name = host:port, one series per state",
        None,
        gauge,
        nodes.iter().flat_map(|n| {
            ["sync", "quorum", "potential", "async"]
                .iter()
                .filter(move |_| n.sync_state.is_some())
                .map(move |state| {
                    (
                        with(n, "state", state),
                        flag(n.sync_state.as_deref() == Some(*state)),
                    )
                })
        }),
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
                PGPOOL_NODE_STATUSES
                    .iter()
                    .filter(move |_| seen.is_some())
                    .map(move |status| {
                        (
                            with(n, "status", status),
                            flag(seen.map(String::as_str) == Some(*status)),
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
    let synced = || {
        st.clusters.iter().filter_map(|c| {
            Some((
                vec![("cluster", c.cluster_id.to_string())],
                c.sync.as_ref()?,
            ))
        })
    };
    family(
        enc,
        "cluster_sync_waiting",
        "1 while commits on the cluster's master wait because fewer synchronous standbys are connected than synchronous_standby_names requires",
        None,
        gauge,
        synced().map(|(l, s)| (l, flag(s.waiting))),
    )?;
    family(
        enc,
        "cluster_sync_standbys_required",
        "How many synchronous standbys the cluster's master requires (synchronous_standby_names; 0 without)",
        None,
        gauge,
        synced().map(|(l, s)| (l, f64::from(s.required))),
    )?;
    family(
        enc,
        "cluster_sync_standbys_connected",
        "How many of the standbys synchronous_standby_names names are connected and streaming to the cluster's master",
        None,
        gauge,
        synced().filter_map(|(l, s)| Some((l, f64::from(s.connected?)))),
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
