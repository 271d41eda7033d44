//! plusmoin watches PostgreSQL servers in streaming replication, groups them
//! into clusters, checks each slave's sync through a heartbeat table, and
//! runs trigger scripts and pgpool-II handlers when something changes.
//!
//! How data flows (it never climbs back up):
//! - [`probe`]: one task per server (its connection, the heartbeat SQL,
//!   retries) sends news, `(node, observation)`, as it comes; [`hold`]'s
//!   reader sends the held set.
//! - [`daemon`]: the one loop (shutdown, reload, beat ticks, news, holds)
//!   hands news to [`cluster`], the pure state machine: state and news in,
//!   the next state and events out. `cluster::PrimaryGuard` decides which
//!   master may be routed writes.
//! - Actions: [`actions`] runs trigger scripts per cluster, in order;
//!   [`pgpool`], the sidecar, gets the loop's view (holds included) and
//!   fixes pgpool's view with pcp.
//! - Published: [`status`] writes the status file ([`payload`] holds the
//!   JSON shapes); [`web`] serves the same snapshot over HTTP; everybody
//!   counts into [`metrics`].
//!
//! Around them: [`config`] (load, check, typed values), [`lifecycle`]
//! (pid file, detaching, privileges, signals to a running daemon, logging
//! set-up), small helpers ([`text`], [`logonce`], [`notify`], `alloc`),
//! and the entry ([`cli`], `main.rs`) with [`demo`] on [`demo::sandbox`]. The
//! parts and the imports that must never exist are in `.ci/layers.json`,
//! checked by `tests/layers.rs`. Test kits (a simulated PostgreSQL server, a
//! pgpool-II watchdog cluster, …) are a crate of their own, `tests/kit`.

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
pub mod status;
pub mod text;
pub mod web;
