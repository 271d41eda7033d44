//! plusmoin watches PostgreSQL servers in streaming replication, groups them
//! into clusters, checks each slave's sync through a heartbeat table, and
//! runs trigger scripts and pgpool-II handlers when something changes.
//!
//! Data flows one way, once per beat:
//! [`probe`] (one deadline per node) → [`cluster::step`] (pure) →
//! [`actions`] (trigger scripts, never blocking the probes) → [`status`].
//!
//! - [`config`]: load and validate the JSON configuration into typed values.
//! - [`cluster`]: the pure state machine (README "How it works").
//! - [`payload`]: the JSON shapes of trigger payloads and the status file.
//! - [`probe`]: tokio-postgres probes, the heartbeat table, TLS.
//! - [`actions`]: trigger scripts, run in order per cluster.
//! - [`status`]: the status file, written atomically.
//! - [`hold`]: maintenance holds (`plusmoin hold`/`release`): the hold table,
//!   the legacy `held.json`, and the background reader the daemon runs.
//! - [`pgpool`]: the pgpool-II sidecar: pcp handlers and reconciliation, on
//!   the daemon's view (holds included).
//! - [`metrics`]: the counters of what happened, bumped by every part.
//! - [`web`]: the HTTP listener: `/metrics`, `/status`, health endpoints.
//! - [`daemon`]: the beat loop, signals, reload.
//! - [`notify`]: systemd readiness, reload and watchdog notifications.
//! - [`lifecycle`]: process plumbing, one file each: locked pid file, detaching, dropping
//!   root, `stop`/`reload`, logging set-up.
//! - [`logonce`]: "log once until it changes", for failures that repeat.
//! - [`sandbox`]: a local primary + standbys for tests and the demo.
//! - [`demo`]: `plusmoin demo`, the sandbox with a live plusmoin on it.
//! - [`cli`]: the command line.
//! - `alloc`: the memory allocator (jemalloc, one arena).
//!
//! The test kits (a simulated PostgreSQL server, a pgpool-II watchdog
//! cluster, …) are a crate of their own, `tests/kit`, that only tests and
//! benches build.

pub mod actions;
mod alloc;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod hold;
pub mod lifecycle;
pub mod logonce;
pub mod metrics;
pub mod notify;
pub mod payload;
pub mod pgpool;
pub mod probe;
pub mod sandbox;
pub mod status;
pub mod text;
pub mod web;
