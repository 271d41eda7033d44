//! The counters of what happened since the process started (contrib/README.md,
//! "Metrics and health endpoints"): events decided, trigger runs, pcp
//! actions, beat durations, `/primary` refusals, HTTP connections dropped.
//!
//! They are plain atomics bumped where things happen (the deciding loop,
//! the trigger workers, the pgpool worker, the HTTP listener): no lock is
//! ever taken on their side, and a scrape only loads them
//! (`Counters::load`). This is the ground floor: every part may count
//! here, and it knows none of them (only the core's [`EventKind`]); the
//! HTTP listener renders the loaded values (`GET /metrics`).

use crate::cluster::EventKind;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How a trigger run ended, as `plusmoin_trigger_runs_total` counts it
/// (indexed by [`TriggerRun`]).
pub(crate) const TRIGGER_OUTCOMES: [&str; 3] = ["ok", "failed", "timed_out"];
/// A pcp action (attach, detach) of the pgpool sidecar.
pub(crate) const PCP_ACTIONS: [&str; 2] = ["attach", "detach"];
/// `ok`: pgpool shows it done; `not_taken`: pcp ran but pgpool did not
/// show it within the confirm window; `failed`: pcp failed.
pub(crate) const PCP_OUTCOMES: [&str; 3] = ["ok", "not_taken", "failed"];
/// Why the HTTP listener dropped a connection without answering it, as
/// `plusmoin_http_connections_dropped_total` counts it: `evicted` (it had
/// not sent a whole request when room was needed for a newer one), `idle`
/// (it sent nothing in time), `refused` (full of connections being
/// answered).
pub(crate) const HTTP_DROPS: [&str; 3] = ["evicted", "idle", "refused"];
/// Upper bounds of the beat duration histogram, in seconds (a beat lasts
/// from its tick to its decision: normally the slowest answer, at most
/// `connect_timeout` and a little more).
pub(crate) const BEAT_BUCKETS: [f64; 13] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// How many event kinds there are (one counter each).
pub(crate) const KINDS: usize = EventKind::ALL.len();

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

/// The counters of this process, which the HTTP listener serves.
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
    pub(crate) const fn new() -> Counters {
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
    pub(crate) fn primary_refused(&self) {
        self.primary_refusals.fetch_add(1, Ordering::Relaxed);
    }

    /// An event was decided (every kind, `plusmoin_heartbeat` included).
    pub(crate) fn event(&self, kind: EventKind) {
        self.events[kind_index(kind)].fetch_add(1, Ordering::Relaxed);
    }

    /// A trigger ran (or could not be started: [`TriggerRun::Failed`]).
    pub(crate) fn trigger_ran(&self, kind: EventKind, outcome: TriggerRun) {
        self.trigger_runs[kind_index(kind)][outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// A pcp action ended: `attach` is false for a detach; `outcome`
    /// indexes [`PCP_OUTCOMES`].
    pub(crate) fn pcp_action(&self, attach: bool, outcome: PcpOutcome) {
        self.pcp_actions[usize::from(!attach)][outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// A beat was decided, `took` after its tick.
    pub(crate) fn beat_closed(&self, took: Duration) {
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
    pub(crate) fn http_dropped(&self, why: HttpDrop) {
        self.http_drops[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// The counters' values now, for one scrape.
    pub(crate) fn load(&self) -> Loaded {
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

/// How a trigger run ended, as counted (see [`TRIGGER_OUTCOMES`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TriggerRun {
    /// Exited 0.
    Ok = 0,
    /// Exited non-zero, could not be started, or could not be waited for.
    Failed = 1,
    /// Killed at its timeout.
    TimedOut = 2,
}

/// Why a connection was dropped (see [`HTTP_DROPS`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HttpDrop {
    Evicted = 0,
    Idle = 1,
    Refused = 2,
}

/// How a pcp action ended (see [`PCP_OUTCOMES`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PcpOutcome {
    Ok = 0,
    NotTaken = 1,
    Failed = 2,
}

/// The counters' values at one scrape ([`Counters::load`]).
#[derive(Debug, Clone)]
pub(crate) struct Loaded {
    /// Per kind of [`EventKind::ALL`].
    pub(crate) events: [u64; KINDS],
    /// Per kind of [`EventKind::ALL`], per outcome of [`TRIGGER_OUTCOMES`].
    pub(crate) trigger_runs: [[u64; 3]; KINDS],
    /// Per action of [`PCP_ACTIONS`], per outcome of [`PCP_OUTCOMES`].
    pub(crate) pcp_actions: [[u64; 3]; 2],
    /// Per bucket of [`BEAT_BUCKETS`] (not cumulative), then +Inf.
    pub(crate) beat_buckets: [u64; BEAT_BUCKETS.len() + 1],
    /// Beats decided.
    pub(crate) beat_count: u64,
    /// Their total duration, in seconds.
    pub(crate) beat_sum: f64,
    /// Times a master began to be refused `/primary`.
    pub(crate) primary_refusals: u64,
    /// Per reason of [`HTTP_DROPS`].
    pub(crate) http_drops: [u64; 3],
}
