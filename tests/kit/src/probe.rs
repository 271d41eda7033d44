//! One probe of each node through a [`Monitor`], the way the daemon asks
//! for them at a beat: for tests that want "probe these nodes now and tell
//! me what each one is".

use plusmoin::cluster::{NodeName, Observation, Time};
use plusmoin::probe::{Cause, Monitor, ProbeTarget};
use std::collections::HashMap;

/// Probes every target once through `monitor` and waits for the answers:
/// the monitor's nodes become exactly the targets (the tasks of others
/// stop, their connections close), each is asked for a probe at `now`
/// (writing its `cluster_id` into the heartbeat row if it is a master), and
/// the report of that probe awaited. One observation per target, in their
/// order. Reports the monitor sent on its own (a dropped connection, a
/// retry) are passed over.
///
/// Each probe ends within the settings' `connect_timeout`, so this does
/// too (and a few ms). Must run in a tokio runtime (the monitor spawns its
/// node tasks there).
pub async fn probe_once(
    monitor: &mut Monitor,
    targets: &[ProbeTarget],
    now: Time,
) -> Vec<(NodeName, Observation)> {
    monitor.set_nodes(targets.iter().map(|t| &t.name));
    let mut waiting: HashMap<&NodeName, Option<Observation>> = HashMap::new();
    for t in targets {
        if waiting.insert(&t.name, None).is_none() {
            monitor.probe(&t.name, t.cluster_id, now);
        }
    }
    let mut left = waiting.len();
    while left > 0 {
        let r = monitor.recv().await;
        if r.cause != Cause::Asked {
            continue;
        }
        if let Some(slot @ None) = waiting.get_mut(&r.node) {
            *slot = Some(r.obs);
            left -= 1;
        }
    }
    targets
        .iter()
        .map(|t| {
            let obs = waiting[&t.name].clone().expect("every target answered");
            (t.name.clone(), obs)
        })
        .collect()
}
