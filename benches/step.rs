//! The state machine alone: one `cluster::decide` over a large steady
//! configuration (clusters of 1 master + 9 slaves, every slave in sync),
//! median over many iterations. `--quick` runs fewer iterations.

use plusmoin::cluster::{self, Heartbeat, NodeName, Observation, Policy, State, Time};
use std::time::{Duration, Instant};

/// The observations of beat `k` (at `k` seconds): masters wrote now, slaves
/// replay the previous beat's write.
fn observations(names: &[NodeName], per_cluster: usize, k: i64) -> Vec<(NodeName, Observation)> {
    let now = Time(k * 1_000_000);
    names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let leader = i - i % per_cluster;
            let obs = if i == leader {
                Observation::Master {
                    wrote_at: now,
                    repl: None,
                }
            } else {
                Observation::Slave {
                    heartbeat: Some(Heartbeat {
                        master_name: names[leader].to_string(),
                        cluster_id: Some((i / per_cluster) as u32),
                        written_at: Time((k - 1) * 1_000_000),
                        received: None,
                        replayed: None,
                    }),
                }
            };
            (name.clone(), obs)
        })
        .collect()
}

struct Row {
    nodes: usize,
    clusters: usize,
    iterations: usize,
    median: Duration,
    min: Duration,
    max: Duration,
}

fn measure(clusters: usize, per_cluster: usize, budget: Duration, max_iter: usize) -> Row {
    let n = clusters * per_cluster;
    let names: Vec<NodeName> = (0..n)
        .map(|i| {
            NodeName::new(
                format!("10.{}.{}.{}", i / 65536, i / 256 % 256, i % 256),
                5432,
            )
        })
        .collect();
    let policy = Policy {
        max_sync_delay: Duration::from_secs(120),
        recover_sync_delay: Duration::from_secs(60),
        max_lag_bytes: None,
        recover_lag_bytes: None,
    };
    let mut state = State::default();
    // Two beats to reach the steady state (founded clusters, slaves in sync).
    for k in 1..=2 {
        let obs = observations(&names, per_cluster, k);
        state = cluster::decide(state, &names, &obs, Time(k * 1_000_000), &policy, true).state;
    }
    let in_sync = state
        .nodes
        .iter()
        .filter(|s| s.place == cluster::Place::Slave)
        .count();
    assert_eq!(
        in_sync,
        n - clusters,
        "every slave in sync in the steady state"
    );
    let mut times = Vec::new();
    let began = Instant::now();
    let mut k = 3;
    while times.len() < 5 || (began.elapsed() < budget && times.len() < max_iter) {
        let obs = observations(&names, per_cluster, k);
        let t0 = Instant::now();
        // On a copy of the state, as the figures have always been taken
        // (the daemon hands its state over instead).
        let d = cluster::decide(
            state.clone(),
            &names,
            &obs,
            Time(k * 1_000_000),
            &policy,
            true,
        );
        times.push(t0.elapsed());
        let (next, events) = (d.state, d.events);
        // Only the heartbeats: nothing changes in a steady state.
        assert_eq!(events.len(), clusters);
        state = next;
        k += 1;
    }
    times.sort();
    Row {
        nodes: n,
        clusters,
        iterations: times.len(),
        median: times[times.len() / 2],
        min: times[0],
        max: times[times.len() - 1],
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        // Built and run as a test (`cargo test --all-targets`): measuring
        // here would only slow the tests down.
        eprintln!("step: run it with `cargo bench --bench step`; nothing measured");
        return;
    }
    let quick = std::env::args().any(|a| a == "--quick");
    let budget = Duration::from_secs(if quick { 2 } else { 10 });
    let max_iter = if quick { 20 } else { 200 };
    println!("\ncluster::decide alone (clusters of 1 master + 9 slaves, steady state)\n");
    println!(
        "{:>8} {:>9} {:>6} {:>12} {:>12} {:>12}",
        "nodes", "clusters", "runs", "median", "min", "max"
    );
    for clusters in [100, 1_000] {
        let r = measure(clusters, 10, budget, max_iter);
        println!(
            "{:>8} {:>9} {:>6} {:>12} {:>12} {:>12}",
            r.nodes,
            r.clusters,
            r.iterations,
            ms(r.median),
            ms(r.min),
            ms(r.max)
        );
    }
}
