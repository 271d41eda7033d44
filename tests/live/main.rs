//! Integration tests against real PostgreSQL servers (one binary, one
//! module per area).

mod daemon;
mod demo;
mod escape;
mod events;
mod faults;
mod holds;
mod holds_safety;
mod http;
mod journal;
mod logs;
mod monitor;
mod notify;
mod pgpool;
mod pgpool_fixture;
mod pgpool_safety;
mod privileges;
mod probe;
mod prometheus;
mod reload;
mod replication;
mod sandbox_ops;
mod split;

use std::time::{Duration, Instant};

/// Polls `check` every 50 ms until it returns true or `timeout` passes;
/// returns whether it became true.
#[allow(dead_code)]
pub fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
