//! What each request gets, decided from the last [`Snapshot`] alone (no
//! I/O here, so every answer is unit-tested).
//!
//! | request | answer |
//! |---|---|
//! | `GET /metrics` | 200, the Prometheus text format |
//! | `GET /status` | 200, the status JSON (the status file's); 503 before the first decision |
//! | `GET /health` | 200 while beats are recent (the `plusmoin status` rule: three heartbeats); 503 with the reason otherwise |
//! | `GET /primary/HOST:PORT` | 200 when that node is its cluster's master and not refused as a second master of its replication set (`primary_refused`, `cluster::PrimaryGuard`); 503 otherwise |
//! | `GET /replica/HOST:PORT[?lag=SECONDS\|SIZE]` | 200 when it is a slave in sync (and, with `lag`, at most that far behind); 503 otherwise; 400 for a bad or ambiguous `lag` |
//!
//! `lag` is seconds when it is a bare number or ends in `s` (`60`, `2.5`,
//! `60s`), and bytes when it ends in a size unit as PostgreSQL and Patroni
//! write them (`16MB`, `512kB`, `1GB`, `100B`; units of 1024): see
//! [`lag_limit`]. Anything else (`16M`, `16mb`, `5m`: megabytes or
//! minutes?) is refused with a 400 rather than guessed. `lag` may be given
//! twice, once in each form: both bounds hold.
//!
//! A node the status does not know is 404. While the view is stale (the
//! deciding loop not beating) `/primary` and `/replica` answer 503: a load
//! balancer must not route on an old view. `HEAD` gets the same status
//! without a body; any other method 405.

use super::metrics;
use super::Snapshot;
use crate::metrics::Counters;
use std::sync::Arc;
use std::time::Duration;

/// An answer: status, content type, body.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) content_type: &'static str,
    pub(crate) body: String,
}

const TEXT: &str = "text/plain; charset=utf-8";
const JSON: &str = "application/json";

fn text(status: u16, line: impl Into<String>) -> Reply {
    let mut body = line.into();
    body.push('\n');
    Reply {
        status,
        content_type: TEXT,
        body,
    }
}

/// The endpoints, for the 404 of an unknown path.
const ENDPOINTS: &str =
    "/metrics, /status, /health, /events, /primary/HOST:PORT, /replica/HOST:PORT";

/// The answer to `method path?query`, `now_unix` seconds since the epoch.
pub(crate) fn route(
    method: &str,
    path: &str,
    query: Option<&str>,
    snapshot: Option<&Arc<Snapshot>>,
    now_unix: f64,
    counters: &Counters,
) -> Reply {
    if method != "GET" && method != "HEAD" {
        return text(
            405,
            format!("method {method} not allowed: only GET and HEAD"),
        );
    }
    let Some(path) = crate::text::percent_decode(path) else {
        return text(
            400,
            "bad request: the path is not valid percent-encoded UTF-8",
        );
    };
    match path.as_str() {
        "/metrics" => Reply {
            status: 200,
            content_type: metrics::CONTENT_TYPE,
            body: metrics::render(snapshot.cloned(), counters),
        },
        "/status" => match snapshot {
            None => text(503, starting()),
            Some(s) => match crate::status::json(&s.status) {
                Ok(mut body) => {
                    body.push('\n');
                    Reply {
                        status: 200,
                        content_type: JSON,
                        body,
                    }
                }
                Err(e) => text(500, format!("cannot show the status: {e}")),
            },
        },
        "/health" => match snapshot {
            None => text(503, starting()),
            Some(s) => match stale(s, now_unix) {
                Some(why) => text(503, why),
                None => text(
                    200,
                    format!(
                        "ok: last decision {:.1} s ago",
                        (now_unix - s.status.updated_at_unix).max(0.0)
                    ),
                ),
            },
        },
        _ => {
            if let Some(node) = path.strip_prefix("/primary/") {
                primary(node, query, snapshot, now_unix)
            } else if let Some(node) = path.strip_prefix("/replica/") {
                replica(node, query, snapshot, now_unix)
            } else {
                text(404, format!("no such endpoint: try {ENDPOINTS}"))
            }
        }
    }
}

fn starting() -> String {
    "plusmoin is starting: no decision yet".to_string()
}

/// Why the snapshot is too old to act on, if it is: the rule of
/// `plusmoin status` ([`crate::status::stale_after`]).
fn stale(s: &Snapshot, now_unix: f64) -> Option<String> {
    let age = now_unix - s.status.updated_at_unix;
    let limit = Duration::try_from_secs_f64(s.status.heartbeat)
        .map(crate::status::stale_after)
        .unwrap_or_default()
        .as_secs_f64();
    (age > limit).then(|| {
        format!("stale: the last decision is {age:.1} s old, older than three beats ({limit:.1} s): plusmoin is not beating")
    })
}

/// The node named in the path, or the answer when there is none to judge.
fn lookup<'a>(
    node: &str,
    snapshot: Option<&'a Arc<Snapshot>>,
    now_unix: f64,
) -> Result<&'a crate::payload::NodeEntry, Reply> {
    let s = snapshot.ok_or_else(|| text(503, starting()))?;
    let n = s.node(node).ok_or_else(|| {
        text(
            404,
            format!("unknown node {node:?}: not one of the configured nodes (HOST:PORT as plusmoin status names them)"),
        )
    })?;
    if let Some(why) = stale(s, now_unix) {
        return Err(text(503, why));
    }
    Ok(n)
}

/// A `lag` limit of `/replica`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum LagLimit {
    Seconds(f64),
    Bytes(u64),
}

/// One `lag` value: seconds (`60`, `2.5`, `60s`) or bytes (`16MB`,
/// `512kB`, `100B`, as PostgreSQL and Patroni write sizes); the reason
/// otherwise, naming an ambiguous unit as such.
pub(crate) fn lag_limit(value: &str) -> Result<LagLimit, String> {
    let v = value.trim();
    let secs = v.strip_suffix('s').unwrap_or(v);
    if let Ok(s) = secs.parse::<f64>() {
        return if s.is_finite() && s >= 0.0 && !secs.starts_with('+') {
            Ok(LagLimit::Seconds(s))
        } else {
            Err(format!("bad lag {value:?}: 0 or more"))
        };
    }
    if let Some(b) = crate::cluster::parse_size(v, false) {
        return Ok(LagLimit::Bytes(b));
    }
    let unit = v.trim_start_matches(|c: char| c.is_ascii_digit() || c == '.');
    let forms =
        "a number of seconds (60, 60s) or a size in bytes (16MB, 512kB, 100B; B, kB, MB, GB, TB)";
    let size_unit = ["B", "kB", "MB", "GB", "TB"].contains(&unit);
    if unit.len() < v.len()
        && !unit.is_empty()
        && !size_unit
        && unit.chars().all(|c| c.is_ascii_alphabetic())
    {
        Err(format!("ambiguous lag {value:?}: write {forms}"))
    } else {
        Err(format!("bad lag {value:?}: write {forms}"))
    }
}

/// The limits of `/replica`'s `lag`: at most one of each form.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct LagBound {
    secs: Option<f64>,
    bytes: Option<u64>,
}

/// The query's parameters: only `lag` is known, and only `/replica` takes it.
fn lag_bound(query: Option<&str>, takes_lag: bool) -> Result<LagBound, Reply> {
    let mut bound = LagBound::default();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = crate::text::percent_decode(value).unwrap_or_default();
        match key {
            "lag" if takes_lag => match lag_limit(&value).map_err(|e| text(400, e))? {
                LagLimit::Seconds(s) => bound.secs = Some(s),
                LagLimit::Bytes(b) => bound.bytes = Some(b),
            },
            _ => return Err(text(400, format!("unknown parameter {key:?}"))),
        }
    }
    Ok(bound)
}

fn primary(node: &str, query: Option<&str>, snapshot: Option<&Arc<Snapshot>>, now: f64) -> Reply {
    if let Err(r) = lag_bound(query, false) {
        return r;
    }
    let n = match lookup(node, snapshot, now) {
        Ok(n) => n,
        Err(r) => return r,
    };
    let refused = snapshot.and_then(|s| s.status.primary_refused.get(&n.name));
    match (n.state.as_str(), n.cluster_id, refused) {
        ("master", Some(_), Some(why)) => text(
            503,
            format!("{} is a master but not routed to: {why}", n.name),
        ),
        ("master", Some(c), None) => text(200, format!("{} is the master of cluster {c}", n.name)),
        _ => text(503, format!("{} is not a master: {}", n.name, place(n))),
    }
}

fn replica(node: &str, query: Option<&str>, snapshot: Option<&Arc<Snapshot>>, now: f64) -> Reply {
    let bound = match lag_bound(query, true) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let n = match lookup(node, snapshot, now) {
        Ok(n) => n,
        Err(r) => return r,
    };
    if n.state != "slave" {
        return text(
            503,
            format!("{} is not a slave in sync: {}", n.name, place(n)),
        );
    }
    let c = n.cluster_id.unwrap_or_default();
    let mut within = Vec::new();
    match (bound.secs, n.lag) {
        (None, _) => {}
        (Some(max), Some(lag)) if lag <= max => {
            within.push(format!("{lag} s behind (at most {max} s)"))
        }
        (Some(max), Some(lag)) => {
            return text(
                503,
                format!("{} is {lag} s behind its master, more than {max} s", n.name),
            )
        }
        (Some(_), None) => return text(503, format!("{}'s lag is not known", n.name)),
    }
    match (bound.bytes, n.lag_bytes) {
        (None, _) => {}
        (Some(max), Some(lag)) if lag <= max => {
            within.push(format!("{lag} bytes behind (at most {max} bytes)"))
        }
        (Some(max), Some(lag)) => {
            return text(
                503,
                format!(
                    "{} is {lag} bytes behind its master, more than {max} bytes",
                    n.name
                ),
            )
        }
        (Some(_), None) => return text(503, format!("{}'s lag in bytes is not known", n.name)),
    }
    if within.is_empty() {
        text(200, format!("{} is a slave in sync in cluster {c}", n.name))
    } else {
        text(
            200,
            format!(
                "{} is a slave in sync in cluster {c}, {}",
                n.name,
                within.join(", ")
            ),
        )
    }
}

/// Where a node is, in words.
fn place(n: &crate::payload::NodeEntry) -> String {
    let mut s = match n.cluster_id {
        Some(c) => format!("{} in cluster {c}", n.state),
        None => n.state.clone(),
    };
    if let Some(r) = &n.reason {
        s.push_str(&format!(" ({})", crate::text::escape_controls(r)));
    }
    s
}
