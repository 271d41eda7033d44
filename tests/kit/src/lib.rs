//! plusmoin's test kits: what its tests and benches run against, in a
//! crate of their own so that nothing of them is in plusmoin itself
//! (`cargo build --release`, the Debian package). Tests and benches get
//! it as the dev-dependency `plusmoin-kit`.
//!
//! - [`fakepg`]: a simulated PostgreSQL server, thousands of nodes in one
//!   process.
//! - [`probe`]: one probe of each node through a [`plusmoin::probe::Monitor`],
//!   as a beat of the daemon asks for them.
//! - [`watchdog`]: a pgpool-II watchdog cluster in front of a
//!   [`plusmoin::demo::sandbox::Sandbox`].
//! - [`sandbox`]: what only the tests do to the demo's sandbox and its
//!   pgpool (freeze/thaw, pg_hba.conf lines, pcp attach/detach/wait, the
//!   failover scripts' logs), as extension traits.
//! - [`exposition`]: a strict reader of the Prometheus text format.
//! - [`flood`]: a flood of idle and slow connections against a listener.

pub mod exposition;
pub mod fakepg;
pub mod flood;
pub mod probe;
pub mod sandbox;
pub mod watchdog;
