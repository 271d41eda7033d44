//! plusmoin watches PostgreSQL servers in streaming replication, groups them
//! into clusters, checks each slave's sync through a heartbeat table, and
//! runs trigger scripts and pgpool-II handlers when something changes.
//!
//! Which part owns what, and how data flows (it never climbs back up):
//! - [`probe`]: one task per server (connection, heartbeat SQL, retries)
//!   sends per-node news, `(node, observation)`, as it comes; [`hold`]'s
//!   background reader sends the held set once a beat.
//! - [`daemon`]: the one loop (shutdown, reload, beat ticks, news). Its beat
//!   plan says which node is probed when; each batch of news goes to
//!   [`cluster::decide`], the pure state machine: state and news in, the
//!   next state and events out (the `/primary` guard lives there too).
//! - Actions: [`actions`] runs trigger scripts per cluster, in order; the
//!   [`pgpool`] sidecar gets the loop's view (holds included) and talks pcp.
//! - Published: [`status`] writes the snapshot to the status file
//!   ([`payload`] holds its JSON shapes) and keeps the event journal the
//!   loop, the triggers and the sidecar record into; [`web`] serves both
//!   over HTTP; every part counts into [`metrics`].
//!
//! Around them: [`config`] (load, check, typed values), [`lifecycle`] (pid
//! file, detaching, privileges, signals to a running daemon, logging),
//! private helpers (text escaping, log-once, systemd notify, the
//! allocator), the entry ([`cli`], `main.rs`) and [`demo`] with its local
//! servers ([`demo::sandbox`]). `.ci/layers.json` names the parts and the
//! imports that must never exist (checked by `tests/layers.rs`); test kits
//! are a crate of their own, `tests/kit`.

pub mod actions;
mod alloc;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod hold;
pub mod lifecycle;
mod logonce;
pub mod metrics;
mod notify;
pub mod payload;
pub mod pgpool;
pub mod probe;
pub mod status;
mod text;
pub mod web;
