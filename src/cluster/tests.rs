//! Scenario tests of the state machine: one test per situation of README's
//! "How it works", step 3.
//!
//! A [`Sim`] drives `step` one beat (1 s) at a time. Nodes are `db:PORT`;
//! masters write the beat's time, and a slave replays the heartbeat a master
//! wrote `behind` beats ago. Policy: max_sync_delay 10 s, recover 5 s.

use super::testing::{dropped_clusters, step, step_news};
use super::*;

const BEAT: i64 = 1_000_000;

fn name(port: u16) -> NodeName {
    NodeName::new("db", port)
}

#[derive(Clone, Copy, Debug)]
enum O {
    M,
    /// Replays `master`'s heartbeat written `behind` beats ago.
    S(u16, i64),
    /// In recovery, but no heartbeat row replayed yet.
    SNone,
    D,
}
use O::*;

struct Sim {
    state: State,
    now: Time,
    policy: Policy,
}

impl Sim {
    fn new() -> Sim {
        Sim {
            state: State::default(),
            now: Time(1_000 * BEAT),
            policy: Policy {
                max_sync_delay: Duration::from_secs(10),
                recover_sync_delay: Duration::from_secs(5),
                max_lag_bytes: None,
                recover_lag_bytes: None,
            },
        }
    }

    /// One beat; returns its events other than `plusmoin_heartbeat`, as
    /// `kind(cluster, port)` strings.
    fn beat(&mut self, nodes: &[(u16, O)]) -> Vec<String> {
        self.now = Time(self.now.0 + BEAT);
        let obs: Vec<(NodeName, Observation)> = nodes
            .iter()
            .map(|&(port, o)| (name(port), observe(o, self.now)))
            .collect();
        let (next, events) = step(&self.state, &obs, self.now, &self.policy);
        check_invariants(&next);
        let heartbeats: Vec<ClusterId> = events
            .iter()
            .filter(|e| e.kind == EventKind::PlusmoinHeartbeat)
            .map(|e| e.cluster_id)
            .collect();
        assert_eq!(
            heartbeats,
            next.clusters.keys().copied().collect::<Vec<_>>(),
            "one plusmoin_heartbeat per cluster"
        );
        assert!(
            events
                .iter()
                .skip_while(|e| e.kind != EventKind::PlusmoinHeartbeat)
                .all(|e| e.kind == EventKind::PlusmoinHeartbeat),
            "plusmoin_heartbeat comes after every other event"
        );
        self.state = next;
        events
            .into_iter()
            .filter(|e| e.kind != EventKind::PlusmoinHeartbeat)
            .map(show)
            .collect()
    }

    /// One [`step_news`] at the current time (which does not move) over
    /// the configuration `config`; returns every event, heartbeats
    /// included, as `kind(cluster, port)` strings.
    fn news(
        &mut self,
        config: &[u16],
        news: Vec<(NodeName, Observation)>,
        tick: bool,
    ) -> Vec<String> {
        let nodes: Vec<NodeName> = config.iter().map(|&p| name(p)).collect();
        let (next, events) = step_news(&self.state, &nodes, &news, self.now, &self.policy, tick);
        check_invariants(&next);
        self.state = next;
        events.into_iter().map(show).collect()
    }

    /// Moves the clock by `micros` without deciding anything.
    fn wait(&mut self, micros: i64) {
        self.now = Time(self.now.0 + micros);
    }

    fn node(&self, port: u16) -> NodeState {
        self.state.node(&name(port)).expect("node known").clone()
    }

    /// Repeats the same observations `n` times, returning all events.
    fn beats(&mut self, n: usize, nodes: &[(u16, O)]) -> Vec<String> {
        (0..n).flat_map(|_| self.beat(nodes)).collect()
    }

    fn at(&self, port: u16) -> (Place, Option<ClusterId>) {
        let n = self.state.node(&name(port)).expect("node known");
        (n.place, n.cluster_id)
    }

    fn master_of(&self, id: ClusterId) -> Option<u16> {
        self.state.clusters[&id].master.as_ref().map(|m| m.port)
    }

    fn cluster_ids(&self) -> Vec<ClusterId> {
        self.state.clusters.keys().copied().collect()
    }
}

/// `o` as probed at `now`: a master writes `now`.
fn observe(o: O, now: Time) -> Observation {
    match o {
        M => Observation::Master {
            wrote_at: now,
            repl: None,
        },
        S(master, behind) => slave_row(master, Time(now.0 - behind * BEAT)),
        SNone => Observation::Slave { heartbeat: None },
        D => Observation::Down {
            reason: "connection refused".into(),
        },
    }
}

/// A slave showing the row `master` wrote at `written_at`.
fn slave_row(master: u16, written_at: Time) -> Observation {
    Observation::Slave {
        heartbeat: Some(Heartbeat {
            master_name: name(master).to_string(),
            cluster_id: None,
            written_at,
            received: None,
            replayed: None,
        }),
    }
}

/// An event as `kind(cluster, port)`, or `kind(cluster)`.
fn show(e: Event) -> String {
    match e.node {
        Some(n) => format!("{}({}, {})", e.kind, e.cluster_id, n.port),
        None => format!("{}({})", e.kind, e.cluster_id),
    }
}

/// What must hold after every step.
pub(crate) fn check_invariants(s: &State) {
    for n in &s.nodes {
        assert_eq!(
            n.place == Place::Clusterless,
            n.cluster_id.is_none(),
            "{}: clusterless exactly when it has no cluster",
            n.name
        );
        if let Some(id) = n.cluster_id {
            assert!(
                s.clusters.contains_key(&id),
                "{} in unknown cluster",
                n.name
            );
        }
        if n.place == Place::Master {
            let id = n.cluster_id.expect("master has a cluster");
            assert_eq!(s.clusters[&id].master.as_ref(), Some(&n.name));
        }
    }
    for c in s.clusters.values() {
        let masters = s.members(c.id, Place::Master).count();
        assert!(masters <= 1, "cluster {} has {masters} masters", c.id);
        assert_eq!(masters == 1, c.master.is_some(), "cluster {} master", c.id);
        assert!(c.id < s.next_cluster_id);
    }
    let mut names: Vec<_> = s.nodes.iter().map(|n| &n.name).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), s.nodes.len(), "each node in exactly one place");
}

fn healthy() -> Vec<(u16, O)> {
    vec![(5432, M), (5433, S(5432, 0)), (5434, S(5432, 1))]
}

#[test]
fn startup_groups_two_masters_with_their_slaves() {
    let mut sim = Sim::new();
    let ev = sim.beat(&[
        (5432, M),
        (5433, S(5432, 0)),
        (6432, M),
        (6433, S(6432, 1)),
        (5434, S(5432, 1)),
    ]);
    assert_eq!(ev, ["plusmoin_up(0)", "plusmoin_up(1)"]);
    assert_eq!(sim.at(5432), (Place::Master, Some(0)));
    assert_eq!(sim.at(5433), (Place::Slave, Some(0)));
    assert_eq!(sim.at(5434), (Place::Slave, Some(0)));
    assert_eq!(sim.at(6432), (Place::Master, Some(1)));
    assert_eq!(sim.at(6433), (Place::Slave, Some(1)));
}

#[test]
fn startup_emits_plusmoin_up_and_heartbeat_only() {
    let mut sim = Sim::new();
    assert_eq!(sim.beat(&healthy()), ["plusmoin_up(0)"]);
    assert_eq!(sim.beats(5, &healthy()), Vec::<String>::new());
}

#[test]
fn startup_slave_of_unknown_master_is_clusterless() {
    let mut sim = Sim::new();
    sim.beat(&[(5432, M), (5433, S(9999, 0)), (5434, S(5432, 0))]);
    assert_eq!(sim.at(5433), (Place::Clusterless, None));
    assert_eq!(sim.at(5434), (Place::Slave, Some(0)));
}

#[test]
fn startup_unreachable_node_is_clusterless() {
    let mut sim = Sim::new();
    let ev = sim.beat(&[(5432, M), (5433, D), (5434, S(5432, 0))]);
    assert_eq!(ev, ["plusmoin_up(0)"]);
    assert_eq!(sim.at(5433), (Place::Clusterless, None));
    assert_eq!(
        sim.state.node(&name(5433)).unwrap().reason.as_deref(),
        Some("connection refused")
    );
}

#[test]
fn startup_slave_already_lagging_is_lost_in_its_cluster() {
    let mut sim = Sim::new();
    sim.beat(&[(5432, M)]);
    let mut sim2 = Sim::new();
    sim2.now = sim.now;
    sim2.beat(&[(5432, M), (5433, S(5432, 30))]);
    assert_eq!(sim2.at(5433), (Place::Lost, Some(0)));
}

#[test]
fn slave_down_when_slave_stops_and_up_when_back() {
    let mut sim = Sim::new();
    sim.beat(&healthy());
    let ev = sim.beat(&[(5432, M), (5433, S(5432, 0)), (5434, D)]);
    assert_eq!(ev, ["slave_down(0, 5434)"]);
    assert_eq!(sim.at(5434), (Place::Lost, Some(0)));
    assert_eq!(
        sim.beats(3, &[(5432, M), (5433, S(5432, 0)), (5434, D)])
            .len(),
        0
    );
    let ev = sim.beat(&healthy());
    assert_eq!(ev, ["slave_up(0, 5434)"]);
    assert_eq!(sim.at(5434), (Place::Slave, Some(0)));
}

#[test]
fn slave_without_heartbeat_row_is_not_in_sync() {
    let mut sim = Sim::new();
    sim.beat(&[(5432, M), (5433, SNone)]);
    assert_eq!(sim.at(5433), (Place::Clusterless, None));
    sim.beat(&healthy());
    let ev = sim.beat(&[(5432, M), (5433, SNone), (5434, S(5432, 0))]);
    assert_eq!(ev, ["slave_down(0, 5433)"]);
    assert_eq!(sim.at(5433), (Place::Lost, Some(0)));
}

#[test]
fn slave_down_when_lag_exceeds_max_sync_delay() {
    let mut sim = Sim::new();
    sim.beat(&healthy());
    // Lag is measured against the previous beat's write: `behind` 11 beats
    // is 10 s of lag, at the limit and still in sync.
    assert!(sim.beat(&[(5432, M), (5433, S(5432, 11))]).is_empty());
    assert_eq!(sim.at(5433), (Place::Slave, Some(0)));
    let lag = sim.state.node(&name(5433)).unwrap().lag;
    assert_eq!(lag, Some(Duration::from_secs(10)));
    let ev = sim.beat(&[(5432, M), (5433, S(5432, 12))]);
    assert_eq!(ev, ["slave_down(0, 5433)"]);
    assert_eq!(sim.at(5433), (Place::Lost, Some(0)));
}

#[test]
fn lost_slave_comes_back_only_under_recover_sync_delay() {
    let mut sim = Sim::new();
    sim.beat(&healthy());
    sim.beat(&[(5432, M), (5433, S(5432, 20))]);
    assert_eq!(sim.at(5433), (Place::Lost, Some(0)));
    // Between the limits (lag 6..=9 s): stays lost, no event.
    for behind in [10, 8, 7] {
        assert!(sim.beat(&[(5432, M), (5433, S(5432, behind))]).is_empty());
        assert_eq!(sim.at(5433), (Place::Lost, Some(0)));
    }
    let ev = sim.beat(&[(5432, M), (5433, S(5432, 6))]);
    assert_eq!(ev, ["slave_up(0, 5433)"], "lag 5 s = recover_sync_delay");
    assert_eq!(sim.at(5433), (Place::Slave, Some(0)));
}

#[test]
fn slave_between_limits_does_not_flap() {
    let mut sim = Sim::new();
    sim.beat(&healthy());
    // Lag oscillating between 6 and 10 s: in sync it stays in sync.
    for behind in [7, 11, 9, 11, 7, 10] {
        assert!(sim.beat(&[(5432, M), (5433, S(5432, behind))]).is_empty());
    }
    assert_eq!(sim.at(5433), (Place::Slave, Some(0)));
    sim.beat(&[(5432, M), (5433, S(5432, 13))]);
    // And lost it stays lost over the same oscillation.
    for behind in [7, 11, 9, 11, 7, 10] {
        assert!(sim.beat(&[(5432, M), (5433, S(5432, behind))]).is_empty());
    }
    assert_eq!(sim.at(5433), (Place::Lost, Some(0)));
}

#[test]
fn master_down_when_master_stops_cluster_kept_and_slaves_stay() {
    let mut sim = Sim::new();
    sim.beat(&healthy());
    // The master is gone: slaves keep replaying its last heartbeat, whose age
    // is measured against the last write plusmoin made there.
    let ev = sim.beat(&[(5432, D), (5433, S(5432, 1)), (5434, S(5432, 1))]);
    assert_eq!(ev, ["master_down(0, 5432)"]);
    assert_eq!(sim.cluster_ids(), [0]);
    assert_eq!(sim.master_of(0), None);
    assert_eq!(sim.at(5432), (Place::Lost, Some(0)));
    let ev = sim.beats(20, &[(5432, D), (5433, S(5432, 1)), (5434, S(5432, 1))]);
    assert!(ev.is_empty(), "{ev:?}");
    assert_eq!(sim.at(5433), (Place::Slave, Some(0)));
}

#[test]
fn master_down_then_master_up_when_it_returns() {
    let mut sim = Sim::new();
    sim.beat(&healthy());
    sim.beat(&[(5432, D), (5433, S(5432, 1)), (5434, S(5432, 1))]);
    let ev = sim.beat(&healthy());
    assert_eq!(ev, ["master_up(0, 5432)"]);
    assert_eq!(sim.master_of(0), Some(5432));
}

#[test]
fn master_down_when_master_demoted() {
    let mut sim = Sim::new();
    sim.beat(&healthy());
    // Demoted without a new master: it replays its own last heartbeat.
    let ev = sim.beat(&[(5432, S(5432, 1)), (5433, S(5432, 1)), (5434, S(5432, 1))]);
    assert_eq!(ev, ["master_down(0, 5432)"]);
    assert_eq!(sim.at(5432), (Place::Lost, Some(0)));
    assert_eq!(sim.master_of(0), None);
    assert!(sim.state.node(&name(5432)).unwrap().is_slave);
}

#[test]
fn slave_promoted_in_masterless_cluster_gives_master_up_only() {
    let mut sim = Sim::new();
    sim.beat(&healthy());
    sim.beat(&[(5432, D), (5433, S(5432, 1)), (5434, S(5432, 1))]);
    let ev = sim.beat(&[(5432, D), (5433, M), (5434, S(5432, 2))]);
    assert_eq!(ev, ["master_up(0, 5433)"]);
    assert_eq!(sim.master_of(0), Some(5433));
    assert_eq!(sim.at(5433), (Place::Master, Some(0)));
    assert_eq!(sim.cluster_ids(), [0]);
}

#[test]
fn master_dies_and_slave_promoted_within_one_beat() {
    let mut sim = Sim::new();
    sim.beat(&healthy());
    let ev = sim.beat(&[(5432, D), (5433, M), (5434, S(5432, 1))]);
    assert_eq!(ev, ["master_up(0, 5433)"], "no master_down");
    assert_eq!(sim.at(5432), (Place::Lost, Some(0)));
    assert_eq!(sim.master_of(0), Some(5433));
    // 5434 still replays the old master: it ages out of sync against the new one.
    let mut ev = Vec::new();
    for behind in 2..20 {
        ev.extend(sim.beat(&[(5432, D), (5433, M), (5434, S(5432, behind))]));
    }
    assert_eq!(ev, ["slave_down(0, 5434)"]);
    // Re-pointed to the new master, it catches up and comes back.
    let ev = sim.beat(&[(5432, D), (5433, M), (5434, S(5433, 0))]);
    assert_eq!(ev, ["slave_up(0, 5434)"]);
    assert_eq!(sim.at(5434), (Place::Slave, Some(0)));
}

#[test]
fn slave_following_replaced_master_ages_out_against_new_master() {
    let mut sim = Sim::new();
    sim.beat(&healthy());
    sim.beat(&[(5432, D), (5433, M), (5434, S(5432, 1))]);
    // The old master's last write was 2 beats ago; the replica shows it.
    // Its lag grows one second per beat although it never changes.
    let lag = |sim: &Sim| sim.state.node(&name(5434)).unwrap().lag.unwrap();
    sim.beat(&[(5432, D), (5433, M), (5434, S(5432, 2))]);
    let l1 = lag(&sim);
    sim.beat(&[(5432, D), (5433, M), (5434, S(5432, 3))]);
    assert_eq!(lag(&sim), l1 + Duration::from_secs(1));
    assert_eq!(sim.at(5434), (Place::Slave, Some(0)));
}

#[test]
fn old_master_returns_beside_promoted_one_and_splits() {
    let mut sim = Sim::new();
    sim.beat(&healthy());
    sim.beat(&[(5432, D), (5433, M), (5434, S(5433, 0))]);
    let ev = sim.beat(&[(5432, M), (5433, M), (5434, S(5433, 0))]);
    assert_eq!(ev, ["master_up(1, 5432)"]);
    assert_eq!(sim.master_of(0), Some(5433));
    assert_eq!(sim.master_of(1), Some(5432));
    assert_eq!(sim.at(5434), (Place::Slave, Some(0)));
    assert_eq!(sim.cluster_ids(), [0, 1]);
}

#[test]
fn two_masters_split_and_slave_following_neither_stays() {
    let mut sim = Sim::new();
    let nodes = |o3: O, o4: O, o5: O| vec![(5432, M), (5433, o3), (5434, o4), (5435, o5)];
    sim.beat(&nodes(S(5432, 0), S(5432, 0), S(5432, 0)));
    // 5433 is promoted while 5432 still runs; 5434 follows it, 5435 follows
    // a master plusmoin does not know.
    let ev = sim.beat(&nodes(M, S(5433, 0), S(9999, 0)));
    assert_eq!(
        ev,
        [
            "slave_down(0, 5433)",
            "master_up(1, 5433)",
            "slave_down(0, 5434)",
            "slave_up(1, 5434)",
            "slave_down(0, 5435)"
        ]
    );
    assert_eq!(sim.at(5433), (Place::Master, Some(1)));
    assert_eq!(sim.at(5434), (Place::Slave, Some(1)));
    assert_eq!(sim.at(5435), (Place::Lost, Some(0)));
    assert_eq!(sim.master_of(0), Some(5432));
}

#[test]
fn slave_switching_to_another_clusters_master_moves() {
    let mut sim = Sim::new();
    let nodes = |o: O| vec![(5432, M), (5433, o), (6432, M)];
    sim.beat(&nodes(S(5432, 0)));
    let ev = sim.beat(&nodes(S(6432, 0)));
    assert_eq!(ev, ["slave_down(0, 5433)", "slave_up(1, 5433)"]);
    assert_eq!(sim.at(5433), (Place::Slave, Some(1)));
    // Moving while out of sync: it joins the new cluster as lost.
    let ev = sim.beat(&nodes(S(5432, 30)));
    assert_eq!(ev, ["slave_down(1, 5433)"]);
    assert_eq!(sim.at(5433), (Place::Lost, Some(0)));
}

#[test]
fn clusterless_master_founds_new_cluster_later() {
    let mut sim = Sim::new();
    sim.beat(&[(5432, M), (5433, S(5432, 0)), (6432, D)]);
    assert_eq!(sim.at(6432), (Place::Clusterless, None));
    let ev = sim.beat(&[(5432, M), (5433, S(5432, 0)), (6432, M)]);
    assert_eq!(ev, ["master_up(1, 6432)"]);
    assert_eq!(sim.at(6432), (Place::Master, Some(1)));
    assert_eq!(sim.master_of(0), Some(5432), "cluster 0 untouched");
}

#[test]
fn clusterless_slave_joins_cluster_its_heartbeat_names() {
    let mut sim = Sim::new();
    sim.beat(&[(5432, M), (6432, M), (6433, SNone)]);
    assert_eq!(sim.at(6433), (Place::Clusterless, None));
    let ev = sim.beat(&[(5432, M), (6432, M), (6433, S(6432, 0))]);
    assert_eq!(ev, ["slave_up(1, 6433)"]);
    assert_eq!(sim.at(6433), (Place::Slave, Some(1)));
}

#[test]
fn clusterless_slave_out_of_sync_joins_as_lost_without_event() {
    let mut sim = Sim::new();
    sim.beat(&[(5432, M), (5433, SNone)]);
    let ev = sim.beat(&[(5432, M), (5433, S(5432, 7))]);
    assert!(ev.is_empty(), "{ev:?}");
    assert_eq!(sim.at(5433), (Place::Lost, Some(0)));
}

#[test]
fn node_unreachable_at_start_then_reachable() {
    let mut sim = Sim::new();
    sim.beat(&[(5432, M), (5433, D), (5434, S(5432, 0))]);
    let ev = sim.beat(&healthy());
    assert_eq!(ev, ["slave_up(0, 5433)"]);
    assert_eq!(sim.at(5433), (Place::Slave, Some(0)));
}

#[test]
fn healthy_slave_shows_no_lag() {
    let mut sim = Sim::new();
    sim.beats(3, &healthy());
    let n = sim.state.node(&name(5434)).unwrap();
    assert_eq!(
        n.lag,
        Some(Duration::ZERO),
        "replays the previous beat's write"
    );
}

#[test]
fn demoted_master_that_follows_the_new_master_comes_back_as_slave() {
    let mut sim = Sim::new();
    sim.beat(&healthy());
    sim.beat(&[(5432, D), (5433, M), (5434, S(5433, 0))]);
    let ev = sim.beat(&[(5432, S(5433, 0)), (5433, M), (5434, S(5433, 0))]);
    assert_eq!(ev, ["slave_up(0, 5432)"]);
    assert_eq!(sim.at(5432), (Place::Slave, Some(0)));
}

#[test]
fn nodes_added_and_removed_by_reload() {
    let mut sim = Sim::new();
    sim.beat(&healthy());
    let since = sim.state.node(&name(5433)).unwrap().since;
    // 5434 removed, 5435 added: the others keep their state.
    let ev = sim.beat(&[(5432, M), (5433, S(5432, 0)), (5435, S(5432, 0))]);
    assert_eq!(ev, ["slave_up(0, 5435)"]);
    assert!(sim.state.node(&name(5434)).is_none());
    assert_eq!(sim.state.node(&name(5433)).unwrap().since, since);
    // Removing a cluster's master leaves the cluster masterless; removing
    // every member of a cluster drops it.
    sim.beat(&[(5433, S(5432, 1)), (5435, S(5432, 1))]);
    assert_eq!(sim.master_of(0), None);
    sim.beat(&[(6432, M)]);
    assert_eq!(sim.cluster_ids(), [1]);
}

#[test]
fn cluster_ids_never_change_across_a_long_story() {
    let mut sim = Sim::new();
    sim.beat(&[(5432, M), (5433, S(5432, 0)), (6432, M), (6433, S(6432, 0))]);
    sim.beat(&[(5432, D), (5433, M), (6432, M), (6433, S(6432, 0))]);
    sim.beat(&[(5432, M), (5433, M), (6432, D), (6433, S(6432, 1))]);
    assert_eq!(sim.at(5433), (Place::Master, Some(0)));
    assert_eq!(sim.at(5432), (Place::Master, Some(2)));
    assert_eq!(sim.at(6432), (Place::Lost, Some(1)));
    assert_eq!(sim.at(6433), (Place::Slave, Some(1)));
    assert_eq!(sim.cluster_ids(), [0, 1, 2]);
}

#[test]
fn slave_promoted_while_master_up_leaves_with_slave_down_then_master_up() {
    let mut sim = Sim::new();
    sim.beat(&healthy());
    let ev = sim.beat(&[(5432, M), (5433, M), (5434, S(5432, 1))]);
    assert_eq!(ev, ["slave_down(0, 5433)", "master_up(1, 5433)"]);
    assert_eq!(sim.at(5433), (Place::Master, Some(1)));
    assert_eq!(sim.master_of(0), Some(5432));
    // Demoted again, it follows 5432 back into cluster 0 (cluster 1 empties).
    let ev = sim.beat(&[(5432, M), (5433, S(5432, 0)), (5434, S(5432, 30))]);
    assert_eq!(
        ev,
        [
            "master_down(1, 5433)",
            "slave_up(0, 5433)",
            "slave_down(0, 5434)"
        ]
    );
    assert_eq!(sim.at(5434), (Place::Lost, Some(0)));
    // A lost member promoted beside the master was no slave: master_up only.
    let ev = sim.beat(&[(5432, M), (5433, S(5432, 0)), (5434, M)]);
    assert_eq!(ev, ["master_up(2, 5434)"]);
}

#[test]
fn several_masters_in_a_masterless_cluster_lowest_name_keeps_it() {
    // Whatever the configuration order, db:5433 keeps cluster 0 and db:5434
    // leaves it to found cluster 1.
    for config in [[5432, 5433, 5434], [5434, 5433, 5432]] {
        let mut sim = Sim::new();
        let at = |o: [O; 3]| {
            config
                .iter()
                .map(|&p| (p, o[(p - 5432) as usize]))
                .collect::<Vec<_>>()
        };
        sim.beat(&at([M, S(5432, 0), S(5432, 0)]));
        let ev = sim.beat(&at([D, M, M]));
        assert_eq!(
            ev,
            [
                "master_up(0, 5433)",
                "slave_down(0, 5434)",
                "master_up(1, 5434)"
            ],
            "{config:?}"
        );
        assert_eq!(sim.master_of(0), Some(5433), "{config:?}");
        assert_eq!(sim.master_of(1), Some(5434), "{config:?}");
        assert_eq!(sim.at(5432), (Place::Lost, Some(0)), "{config:?}");
    }
}

#[test]
fn slave_replaying_a_node_that_moves_goes_where_that_node_was() {
    // 6432 (master of cluster 1) is demoted and follows 5432; 6433 still
    // replays 6432's last row. Wherever 6433 sits in the configuration, it
    // goes to 6432's cluster as it was once masters were decided (1), not
    // to where 6432 moves in the same decision.
    for config in [[5432, 6432, 6433], [5432, 6433, 6432]] {
        let mut sim = Sim::new();
        let obs = |o6: O, o7: O| {
            config
                .iter()
                .map(|&p| match p {
                    5432 => (p, M),
                    6432 => (p, o6),
                    _ => (p, o7),
                })
                .collect::<Vec<_>>()
        };
        sim.beat(&obs(M, S(6432, 0)));
        sim.beat(&obs(S(5432, 0), S(6432, 1)));
        assert_eq!(sim.at(6432), (Place::Slave, Some(0)), "{config:?}");
        assert_eq!(sim.at(6433), (Place::Slave, Some(1)), "{config:?}");
        // Next decision: 6432 now sits in cluster 0, and 6433 follows it there.
        sim.beat(&obs(S(5432, 0), S(6432, 2)));
        assert_eq!(sim.at(6433).1, Some(0), "{config:?}");
    }
}

/// A cluster whose nodes all move elsewhere in one decision is dropped. It
/// gets the events of its nodes leaving (`master_down` for its master
/// demoted with no replacement, `slave_down` for a slave in sync) and none
/// of its own: no `plusmoin_heartbeat` either, and [`dropped_clusters`]
/// names it so that its trigger queue can be freed.
#[test]
fn cluster_emptied_by_moves_is_dropped_after_its_nodes_departure_events() {
    let mut sim = Sim::new();
    let nodes = |o6: O, o7: O| vec![(5432, M), (5433, S(5432, 0)), (6432, o6), (6433, o7)];
    sim.beat(&nodes(M, S(6432, 0)));
    sim.beat(&nodes(M, S(6432, 0)));
    assert_eq!(sim.cluster_ids(), [0, 1]);
    let before = sim.state.clone();
    // 6432 is demoted and follows 5432; 6433 is re-pointed at 5432 too.
    let ev = sim.beat(&nodes(S(5432, 0), S(5432, 0)));
    assert_eq!(
        ev,
        [
            "master_down(1, 6432)",
            "slave_up(0, 6432)",
            "slave_down(1, 6433)",
            "slave_up(0, 6433)"
        ]
    );
    assert_eq!(
        sim.cluster_ids(),
        [0],
        "heartbeats checked by beat(): 0 only"
    );
    assert_eq!(dropped_clusters(&before, &sim.state), [1]);
    assert_eq!(
        dropped_clusters(&sim.state, &sim.state),
        Vec::<ClusterId>::new()
    );
    // Ids are never reused: the next cluster founded is 2.
    let ev = sim.beat(&nodes(S(5432, 0), M));
    assert_eq!(ev, ["slave_down(0, 6433)", "master_up(2, 6433)"]);
}

#[test]
fn cluster_of_lost_nodes_emptied_by_moves_is_dropped_without_event() {
    let mut sim = Sim::new();
    sim.beat(&[(5432, M), (6432, M), (6433, S(6432, 0))]);
    // Its master goes down, then its last node (lost) leaves.
    sim.beat(&[(5432, M), (6432, D), (6433, D)]);
    let before = sim.state.clone();
    let ev = sim.beat(&[(5432, M), (6432, S(5432, 30)), (6433, S(5432, 30))]);
    assert!(ev.is_empty(), "{ev:?}");
    assert_eq!(sim.at(6432), (Place::Lost, Some(0)));
    assert_eq!(dropped_clusters(&before, &sim.state), [1]);
}

#[test]
fn news_master_write_stepped_first_then_slave_read_lag_is_write_minus_row() {
    let mut sim = Sim::new();
    sim.beat(&healthy());
    // Next beat: the master's write is decided first, alone.
    sim.wait(BEAT);
    let t2 = sim.now;
    let ev = sim.news(
        &[5432, 5433, 5434],
        vec![(
            name(5432),
            Observation::Master {
                wrote_at: t2,
                repl: None,
            },
        )],
        false,
    );
    assert!(ev.is_empty(), "{ev:?}");
    assert_eq!(sim.state.last_written[&name(5432).to_string()], t2);
    // Then the slaves are read: 5433 already shows t2, 5434 a row 3 s older.
    sim.wait(20_000);
    let ev = sim.news(
        &[5432, 5433, 5434],
        vec![(name(5433), slave_row(5432, t2))],
        false,
    );
    assert!(ev.is_empty(), "{ev:?}");
    assert_eq!(sim.node(5433).lag, Some(Duration::ZERO));
    let ev = sim.news(
        &[5432, 5433, 5434],
        vec![(name(5434), slave_row(5432, Time(t2.0 - 3 * BEAT)))],
        true,
    );
    assert_eq!(ev, ["plusmoin_heartbeat(0)"]);
    assert_eq!(sim.node(5434).lag, Some(Duration::from_secs(3)));
}

#[test]
fn news_slave_read_with_its_masters_newer_write_is_compared_with_the_previous_write() {
    let mut sim = Sim::new();
    sim.beat(&healthy());
    let t1 = sim.now;
    sim.wait(BEAT);
    let t2 = sim.now;
    // Read before t2 could replicate: it shows t1, and shows no lag.
    sim.news(
        &[5432, 5433, 5434],
        vec![
            (
                name(5432),
                Observation::Master {
                    wrote_at: t2,
                    repl: None,
                },
            ),
            (name(5433), slave_row(5432, t1)),
        ],
        true,
    );
    assert_eq!(sim.node(5433).lag, Some(Duration::ZERO));
    assert_eq!(sim.at(5433), (Place::Slave, Some(0)));
    // The next read of 5433 alone is compared with t2.
    sim.wait(BEAT / 4);
    sim.news(
        &[5432, 5433, 5434],
        vec![(name(5433), slave_row(5432, t1))],
        false,
    );
    assert_eq!(sim.node(5433).lag, Some(Duration::from_secs(1)));
}

#[test]
fn news_node_without_news_keeps_everything() {
    let mut sim = Sim::new();
    sim.beat(&healthy());
    sim.beat(&[(5432, M), (5433, S(5432, 1)), (5434, D)]);
    let lost = sim.node(5434);
    let slave = sim.node(5433);
    assert_eq!(lost.reason.as_deref(), Some("connection refused"));
    for k in 0..5 {
        sim.wait(BEAT / 4);
        let news = vec![(
            name(5432),
            Observation::Master {
                wrote_at: sim.now,
                repl: None,
            },
        )];
        sim.news(&[5432, 5433, 5434], news, k % 2 == 0);
        assert_eq!(
            sim.node(5434),
            lost,
            "a lost node keeps place, reason, since, last_seen"
        );
        assert_eq!(
            sim.node(5433),
            slave,
            "a slave keeps place, lag, since, last_seen"
        );
    }
}

#[test]
fn news_master_without_news_keeps_its_cluster() {
    let mut sim = Sim::new();
    sim.beat(&healthy());
    let master = sim.node(5432);
    sim.wait(BEAT);
    let ev = sim.news(
        &[5432, 5433, 5434],
        vec![(
            name(5433),
            Observation::Down {
                reason: "timeout".into(),
            },
        )],
        false,
    );
    assert_eq!(ev, ["slave_down(0, 5433)"]);
    assert_eq!(sim.master_of(0), Some(5432));
    assert_eq!(sim.node(5432), master, "untouched, last_seen included");
    // A node answering as master beside it splits off, as beside a master
    // that answered.
    let ev = sim.news(
        &[5432, 5433, 5434],
        vec![(
            name(5434),
            Observation::Master {
                wrote_at: sim.now,
                repl: None,
            },
        )],
        false,
    );
    assert_eq!(ev, ["slave_down(0, 5434)", "master_up(1, 5434)"]);
    assert_eq!(sim.master_of(0), Some(5432));
    assert_eq!(sim.node(5432), master);
}

#[test]
fn news_between_beats_emit_no_heartbeat() {
    let mut sim = Sim::new();
    sim.beat(&healthy());
    sim.wait(BEAT / 4);
    assert!(sim.news(&[5432, 5433, 5434], vec![], false).is_empty());
    let ev = sim.news(
        &[5432, 5433, 5434],
        vec![(
            name(5434),
            Observation::Down {
                reason: "reset".into(),
            },
        )],
        false,
    );
    assert_eq!(ev, ["slave_down(0, 5434)"]);
    // The beat's decision, even without news, gives the heartbeats.
    assert_eq!(
        sim.news(&[5432, 5433, 5434], vec![], true),
        ["plusmoin_heartbeat(0)"]
    );
}

#[test]
fn news_first_decision_places_nodes_silently_like_step() {
    let obs: Vec<(NodeName, Observation)> = healthy()
        .into_iter()
        .map(|(p, o)| (name(p), observe(o, Time(5 * BEAT))))
        .collect();
    let nodes: Vec<NodeName> = obs.iter().map(|(n, _)| n.clone()).collect();
    let policy = Sim::new().policy;
    let a = step(&State::default(), &obs, Time(5 * BEAT), &policy);
    let b = step_news(
        &State::default(),
        &nodes,
        &obs,
        Time(5 * BEAT),
        &policy,
        true,
    );
    assert_eq!(a, b);
    assert_eq!(
        b.1.iter().cloned().map(show).collect::<Vec<_>>(),
        ["plusmoin_up(0)", "plusmoin_heartbeat(0)"]
    );
}

mod properties {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn observation() -> impl Strategy<Value = O> {
        prop_oneof![
            Just(M),
            (0u16..7, 0i64..20).prop_map(|(m, behind)| S(5432 + m, behind)),
            Just(SNone),
            Just(D),
        ]
    }

    /// One decision of a story: news or none for each of six nodes, and
    /// whether it is a beat's decision.
    fn decision() -> impl Strategy<Value = (Vec<Option<O>>, bool)> {
        (
            prop::collection::vec(prop::option::weighted(0.7, observation()), 6),
            any::<bool>(),
        )
    }

    /// The news of a decision at `now`, in configuration order.
    fn news_of(news: &[Option<O>], now: Time) -> Vec<(NodeName, Observation)> {
        news.iter()
            .enumerate()
            .filter_map(|(i, o)| o.map(|o| (name(5432 + i as u16), observe(o, now))))
            .collect()
    }

    /// Plays `story` over db:5432..5437 in that order, half a beat apart;
    /// the first decision has news for every node and is a beat's, as the
    /// daemon makes it.
    fn play(story: &[(Vec<Option<O>>, bool)]) -> Sim {
        let mut sim = Sim::new();
        let config: Vec<u16> = (5432..5438).collect();
        for (k, (news, tick)) in story.iter().enumerate() {
            sim.wait(BEAT / 2);
            let news: Vec<Option<O>> = if k == 0 {
                news.iter().map(|o| Some(o.unwrap_or(D))).collect()
            } else {
                news.clone()
            };
            sim.news(&config, news_of(&news, sim.now), *tick || k == 0);
        }
        sim
    }

    /// A cluster as order cannot change it: an id that existed before the
    /// decision, or, for a cluster founded by it, its founder (its master).
    fn key(prev: &State, next: &State, id: ClusterId) -> String {
        if id < prev.next_cluster_id {
            format!("#{id}")
        } else {
            let master = next.clusters[&id]
                .master
                .as_ref()
                .expect("founded with a master");
            format!("founded by {master}")
        }
    }

    type Nodes = BTreeMap<NodeName, (Option<String>, NodeState)>;
    type Clusters = BTreeMap<String, Option<NodeName>>;
    type Events = BTreeMap<String, Vec<(Option<NodeName>, EventKind)>>;

    /// The outcome of a decision up to a renaming of founded clusters: each
    /// node's state (its cluster as a [`key`]), each cluster's master, and
    /// each cluster's events in their order, except that events about
    /// different nodes are put in name order (a stable sort, so the order of
    /// one node's events is kept).
    fn outcome(prev: &State, next: &State, events: &[Event]) -> (Nodes, Clusters, Events) {
        let nodes = next
            .nodes
            .iter()
            .map(|n| {
                let mut state = n.clone();
                let cluster = state.cluster_id.take().map(|id| key(prev, next, id));
                (n.name.clone(), (cluster, state))
            })
            .collect();
        let clusters = next
            .clusters
            .values()
            .map(|c| (key(prev, next, c.id), c.master.clone()))
            .collect();
        let mut by_cluster: Events = BTreeMap::new();
        for e in events {
            by_cluster
                .entry(key(prev, next, e.cluster_id))
                .or_default()
                .push((e.node.clone(), e.kind));
        }
        for list in by_cluster.values_mut() {
            list.sort_by(|a, b| a.0.cmp(&b.0));
        }
        (nodes, clusters, by_cluster)
    }

    /// Within each cluster: master changes, then slave changes, then
    /// `plusmoin_up`, then `plusmoin_heartbeat`.
    fn phases_in_order(events: &[Event]) -> bool {
        let rank = |k: EventKind| match k {
            EventKind::MasterDown | EventKind::MasterUp => 0,
            EventKind::SlaveDown | EventKind::SlaveUp => 1,
            EventKind::SyncLost | EventKind::SyncOk => 2,
            EventKind::PlusmoinUp => 3,
            EventKind::PlusmoinHeartbeat => 4,
        };
        let mut last: BTreeMap<ClusterId, u8> = BTreeMap::new();
        events.iter().all(|e| {
            let r = rank(e.kind);
            let seen = last.entry(e.cluster_id).or_insert(r);
            let ok = *seen <= r;
            *seen = r;
            ok
        })
    }

    proptest! {
        /// Decisions do not depend on the order of the configuration, nor
        /// on the order the news come in, nor on the order of the nodes in
        /// the previous state. After a random story (news for some nodes,
        /// beats or not), one more decision is made twice: in configuration
        /// order, and with the configuration, the news and the previous
        /// state's nodes shuffled (some nodes possibly removed). Compared:
        /// every node's state (place, cluster, master it follows, lag,
        /// reason, since, last_seen), every cluster's master, the clusters
        /// written to, and the events of each cluster in their order.
        ///
        /// Two things legitimately follow the configuration order and are
        /// compared up to it: the ids given to clusters founded in the same
        /// decision (compared up to a renaming: such a cluster is known by
        /// its founder; ids that existed before must match exactly), and
        /// the relative order of events about different nodes of one
        /// cluster (slave changes come in configuration order; the order of
        /// one node's events, and master changes before slave changes
        /// before `plusmoin_up` before `plusmoin_heartbeat`, are checked).
        #[test]
        fn decisions_do_not_depend_on_configuration_order(
            story in prop::collection::vec(decision(), 1..12),
            last in decision(),
            present in prop::collection::vec(prop::bool::weighted(0.85), 6),
            config_order in Just((0..6).collect::<Vec<usize>>()).prop_shuffle(),
            news_order in Just((0..6).collect::<Vec<usize>>()).prop_shuffle(),
            prev_order in Just((0..6).collect::<Vec<usize>>()).prop_shuffle(),
        ) {
            let sim = play(&story);
            let now = Time(sim.now.0 + BEAT / 2);
            let (news, tick) = last;
            let config: Vec<NodeName> = (0..6)
                .filter(|&i| present[i])
                .map(|i| name(5432 + i as u16))
                .collect();
            let news = news_of(&news, now);
            let (next, events) = step_news(&sim.state, &config, &news, now, &sim.policy, tick);

            let shuffled = |order: &[usize], names: &[NodeName]| -> Vec<NodeName> {
                order.iter().map(|&i| name(5432 + i as u16)).filter(|n| names.contains(n)).collect()
            };
            let config2 = shuffled(&config_order, &config);
            let news_names: Vec<NodeName> = news.iter().map(|(n, _)| n.clone()).collect();
            let news2: Vec<(NodeName, Observation)> = shuffled(&news_order, &news_names)
                .into_iter()
                .map(|n| news.iter().find(|(m, _)| *m == n).cloned().unwrap())
                .collect();
            let mut prev2 = sim.state.clone();
            prev2.nodes = prev_order
                .iter()
                .filter_map(|&i| sim.state.node(&name(5432 + i as u16)).cloned())
                .collect();
            let (next2, events2) = step_news(&prev2, &config2, &news2, now, &sim.policy, tick);

            check_invariants(&next);
            check_invariants(&next2);
            prop_assert!(phases_in_order(&events), "{:?}", events);
            prop_assert!(phases_in_order(&events2), "{:?}", events2);
            prop_assert_eq!(
                outcome(&sim.state, &next, &events),
                outcome(&sim.state, &next2, &events2)
            );
            prop_assert_eq!(next.next_cluster_id, next2.next_cluster_id);
            prop_assert_eq!(&next.last_written, &next2.last_written);
            prop_assert_eq!(
                config,
                next.nodes.iter().map(|n| n.name.clone()).collect::<Vec<_>>(),
                "nodes in configuration order"
            );
        }

        /// A node without news keeps its state, and `step` is `step_news`
        /// with news for every node and `tick`.
        #[test]
        fn nodes_without_news_unchanged_and_step_is_step_news_with_all_news(
            story in prop::collection::vec(decision(), 1..12),
            last in decision(),
        ) {
            let sim = play(&story);
            let now = Time(sim.now.0 + BEAT / 2);
            let config: Vec<NodeName> = (5432..5438).map(name).collect();
            let (news, tick) = last;
            let (next, events) =
                step_news(&sim.state, &config, &news_of(&news, now), now, &sim.policy, tick);
            for (i, o) in news.iter().enumerate() {
                if o.is_none() {
                    let n = name(5432 + i as u16);
                    prop_assert_eq!(sim.state.node(&n), next.node(&n));
                }
            }
            prop_assert_eq!(
                events.iter().any(|e| e.kind == EventKind::PlusmoinHeartbeat),
                tick && !next.clusters.is_empty()
            );
            let all: Vec<(NodeName, Observation)> = news
                .iter()
                .enumerate()
                .map(|(i, o)| (name(5432 + i as u16), observe(o.unwrap_or(D), now)))
                .collect();
            prop_assert_eq!(
                step(&sim.state, &all, now, &sim.policy),
                step_news(&sim.state, &config, &all, now, &sim.policy, true)
            );
        }

        /// What a decision says of itself matches the states: `dropped` is
        /// what [`dropped_clusters`] finds, and whenever a node changed
        /// place or the master it follows, or nodes came or went,
        /// `changed` says so (the daemon tells the pgpool sidecar only
        /// then).
        #[test]
        fn a_decision_says_what_it_dropped_and_whether_anything_moved(
            story in prop::collection::vec(decision(), 1..12),
            last in decision(),
            present in prop::collection::vec(prop::bool::weighted(0.85), 6),
        ) {
            let sim = play(&story);
            let now = Time(sim.now.0 + BEAT / 2);
            let config: Vec<NodeName> = (0..6)
                .filter(|&i| present[i])
                .map(|i| name(5432 + i as u16))
                .collect();
            let (news, tick) = last;
            let news = news_of(&news, now);
            let d = decide(sim.state.clone(), &config, &news, now, &sim.policy, tick);
            prop_assert_eq!(&d.dropped, &dropped_clusters(&sim.state, &d.state));
            let moved = !d.events.is_empty()
                || sim.state.nodes.len() != d.state.nodes.len()
                || sim.state.nodes.iter().zip(&d.state.nodes).any(|(a, b)| {
                    a.name != b.name || a.place != b.place || a.master_name != b.master_name
                });
            prop_assert!(d.changed || !moved);
            prop_assert_eq!(
                (d.state, d.events),
                step_news(&sim.state, &config, &news, now, &sim.policy, tick)
            );
        }

        /// A heartbeat row names its master as `host:port` ([`NodeName`]'s
        /// text); [`name_parts`] reads exactly that text back, and no
        /// other text names a node.
        #[test]
        fn node_names_are_read_back_from_their_text(
            host in "[a-z0-9:\\[\\].-]{0,12}",
            port in any::<u16>(),
            text in "[a-z0-9:\\[\\]+-]{0,14}",
        ) {
            let text_of_n = NodeName::new(host.clone(), port).to_string();
            prop_assert_eq!(name_parts(&text_of_n), Some((host.as_str(), port)));
            if let Some((h, p)) = name_parts(&text) {
                prop_assert_eq!(NodeName::new(h, p).to_string(), text);
            }
        }

        /// Random stories over six nodes (and a master name nobody has)
        /// never panic, keep the invariants, and never renumber a cluster.
        #[test]
        fn random_observations_keep_invariants(
            beats in prop::collection::vec(prop::collection::vec(observation(), 6), 1..40),
            present in prop::collection::vec(prop::collection::vec(any::<bool>(), 6), 40),
        ) {
            let mut sim = Sim::new();
            for (k, beat) in beats.iter().enumerate() {
                let nodes: Vec<(u16, O)> = beat
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| k % 7 != 6 || present[k][*i])
                    .map(|(i, &o)| (5432 + i as u16, o))
                    .collect();
                let before: Vec<(ClusterId, Option<NodeName>)> = sim
                    .state
                    .clusters
                    .values()
                    .map(|c| (c.id, c.master.clone()))
                    .collect();
                sim.beat(&nodes);
                for (id, master) in before {
                    if let Some(c) = sim.state.clusters.get(&id) {
                        prop_assert_eq!(c.id, id);
                        // A master that answered as master keeps its cluster.
                        if let Some(m) = master {
                            let answered_master = nodes
                                .iter()
                                .any(|&(p, o)| name(p) == m && matches!(o, M));
                            if answered_master {
                                prop_assert_eq!(c.master.as_ref(), Some(&m));
                            }
                        }
                    }
                }
            }
        }
    }
}

// ---- Rules a mutation run showed untested ----

/// Between beats, news that moves nothing must not say `changed`: the
/// daemon tells the pgpool sidecar only of decisions that changed
/// something, and a steady stream of "still in sync" answers would
/// otherwise wake it for each one.
#[test]
fn news_that_moves_nothing_is_not_a_change_but_a_move_is() {
    let mut sim = Sim::new();
    sim.beat(&[(1, M), (2, S(1, 0))]);
    let names = [name(1), name(2)];
    let steady = vec![(name(2), observe(S(1, 0), sim.now))];
    let d = decide(
        sim.state.clone(),
        &names,
        &steady,
        sim.now,
        &sim.policy,
        false,
    );
    assert!(d.events.is_empty(), "{:?}", d.events);
    assert!(!d.changed, "nothing moved, yet the decision says changed");
    // The slave goes down: a move.
    let down = vec![(name(2), observe(D, sim.now))];
    let d = decide(
        sim.state.clone(),
        &names,
        &down,
        sim.now,
        &sim.policy,
        false,
    );
    assert!(d.changed);
}

/// `since` says when a node entered its place: operators read it in the
/// status ("lost since …"). It moves when only the place changes (in sync
/// to lost), and when only the cluster changes (a slave following another
/// master, in sync in both), and not otherwise.
#[test]
fn since_moves_when_the_place_or_only_the_cluster_changes() {
    let mut sim = Sim::new();
    sim.beat(&[(1, M), (2, S(1, 0)), (3, M)]);
    let entered = sim.node(2).since;
    sim.beat(&[(1, M), (2, S(1, 0)), (3, M)]);
    assert_eq!(
        sim.node(2).since,
        entered,
        "a slave staying in sync keeps its since"
    );
    // Only its place: in sync → lost (over the lag limit), same cluster.
    sim.beat(&[(1, M), (2, S(1, 12)), (3, M)]);
    let (place, cluster) = sim.at(2);
    assert_eq!(place, Place::Lost);
    assert_eq!(sim.node(2).since, sim.now, "since moved when it got lost");
    // Back in sync, then only its cluster: it follows master 3, in sync.
    sim.beat(&[(1, M), (2, S(1, 0)), (3, M)]);
    let before = sim.at(2);
    assert_eq!(before.0, Place::Slave);
    sim.beat(&[(1, M), (2, S(3, 0)), (3, M)]);
    let after = sim.at(2);
    assert_eq!(after.0, Place::Slave, "in sync with its new master");
    assert_ne!(after.1, cluster, "moved to master 3's cluster");
    assert_eq!(sim.node(2).since, sim.now, "since moved with the cluster");
}

/// Node names: exactly what `NodeName`'s `Display` writes is read back (a
/// heartbeat row's master is found by that text). Anything else names no
/// node, so a row a server made up cannot be taken for one.
#[test]
fn node_names_are_read_strictly() {
    for (text, parts) in [
        ("db:5432", Some(("db", 5432))),
        ("10.0.0.1:6432", Some(("10.0.0.1", 6432))),
        ("[::1]:5432", Some(("::1", 5432))),
        ("[fe80::1%eth0]:5432", Some(("fe80::1%eth0", 5432))),
        ("db:0", Some(("db", 0))),
        ("db:05432", None),
        ("db:+5432", None),
        ("db:-1", None),
        ("db:65536", None),
        ("db:", None),
        ("db", None),
        ("::1:5432", None),
        ("[::1]", None),
        ("[::1]:", None),
        ("db: 5432", None),
    ] {
        assert_eq!(name_parts(text), parts, "{text:?}");
    }
    for name in [NodeName::new("::1", 5432), NodeName::new("db", 7)] {
        let text = name.to_string();
        assert_eq!(name_parts(&text), Some((name.host.as_str(), name.port)));
    }
}

/// Why a slave is not in sync, as operators read it in `status` and the
/// logs: each case says its own reason, and a slave in sync has none.
#[test]
fn each_slave_reason_is_said() {
    let mut sim = Sim::new();
    sim.beat(&[(1, M), (2, S(1, 0)), (3, SNone), (4, S(9, 0)), (5, S(5, 0))]);
    let reason = |sim: &Sim, port| sim.node(port).reason.unwrap_or_default();
    assert_eq!(sim.node(2).reason, None, "in sync: no reason");
    assert_eq!(reason(&sim, 3), "no heartbeat row replayed yet");
    assert_eq!(reason(&sim, 4), "follows unknown master db:9");
    assert_eq!(
        reason(&sim, 5),
        "replays its own heartbeat: follows no master"
    );
    // Over the limit: 11 s behind (a read decided with its master's write
    // is compared with the previous write) a 10 s max_sync_delay, then
    // back under 10 s but not yet under recover_sync_delay (5 s).
    sim.beat(&[(1, M), (2, S(1, 12))]);
    assert_eq!(reason(&sim, 2), "lag 11.0 s is over max_sync_delay 10.0 s");
    sim.beat(&[(1, M), (2, S(1, 7))]);
    assert_eq!(
        reason(&sim, 2),
        "lag 6.0 s is over recover_sync_delay 5.0 s"
    );
    sim.beat(&[(1, M), (2, S(1, 0))]);
    assert_eq!(sim.node(2).reason, None);
}

/// Should a node have several pieces of news in one decision, the last
/// one counts (answers are decided in arrival order).
#[test]
fn of_several_news_for_one_node_the_last_counts() {
    let mut sim = Sim::new();
    sim.beat(&[(1, M), (2, S(1, 0))]);
    let events = sim.news(
        &[1, 2],
        vec![
            (name(2), observe(D, sim.now)),
            (name(2), observe(S(1, 0), sim.now)),
        ],
        false,
    );
    assert_eq!(events, Vec::<String>::new());
    assert_eq!(sim.at(2).0, Place::Slave);
    let events = sim.news(
        &[1, 2],
        vec![
            (name(2), observe(S(1, 0), sim.now)),
            (name(2), observe(D, sim.now)),
        ],
        false,
    );
    assert_eq!(events, ["slave_down(0, 2)"]);
}

/// A name written twice in the configuration (the loader refuses it, the
/// machine must not depend on that): news about it reaches every entry of
/// that name, the last news counting.
#[test]
fn news_reaches_every_entry_of_a_repeated_name() {
    let sim = Sim::new();
    let config = [name(1), name(2), name(2)];
    let first: Vec<(NodeName, Observation)> = vec![
        (name(1), observe(M, sim.now)),
        (name(2), observe(S(1, 0), sim.now)),
    ];
    let state = decide(
        State::default(),
        &config,
        &first,
        sim.now,
        &sim.policy,
        true,
    )
    .state;
    let places = |s: &State| s.nodes.iter().map(|n| n.place).collect::<Vec<_>>();
    assert_eq!(places(&state), [Place::Master, Place::Slave, Place::Slave]);
    let news = vec![
        (name(2), observe(S(1, 0), sim.now)),
        (name(2), observe(D, sim.now)),
    ];
    let next = decide(state, &config, &news, sim.now, &sim.policy, false).state;
    assert_eq!(places(&next), [Place::Master, Place::Lost, Place::Lost]);
}

/// Times go to seconds, to the system clock and back without loss, on
/// either side of the epoch: the lag and every time in the status file
/// and the payloads are read from them.
#[test]
fn times_convert_to_seconds_and_the_system_clock_and_back() {
    use std::time::UNIX_EPOCH;
    assert_eq!(Time::from_secs_f64(1.5), Time(1_500_000));
    assert_eq!(Time::from_secs_f64(-0.25), Time(-250_000));
    assert_eq!(Time(2_250_000).as_secs_f64(), 2.25);
    for micros in [0, 1_234_567, -1_234_567] {
        let clock = Time(micros).to_system_time();
        assert_eq!(Time::from_system_time(clock), Time(micros), "{micros}");
    }
    assert_eq!(
        Time(1_000_000).to_system_time(),
        UNIX_EPOCH + Duration::from_secs(1)
    );
    assert_eq!(
        Time(-1_000_000).to_system_time(),
        UNIX_EPOCH - Duration::from_secs(1)
    );
    assert_eq!(Time(5) + Duration::from_micros(7), Time(12));
    assert_eq!(Time(12).since(Time(5)), Duration::from_micros(7));
    assert_eq!(Time(5).since(Time(12)), Duration::ZERO, "never negative");
    // The clock is the system's: after 2023 (1.7e9 s since the epoch).
    assert!(Time::now() > Time::from_secs_f64(1.7e9));
}

/// Event names are what trigger configuration keys, payloads and logs
/// say: each reads back to its kind, and nothing else reads as one.
#[test]
fn event_kinds_read_back_from_their_names() {
    for k in EventKind::ALL {
        assert_eq!(k.as_str().parse::<EventKind>(), Ok(k));
        assert_eq!(k.to_string(), k.as_str());
    }
    assert_eq!(EventKind::SlaveDown.as_str(), "slave_down");
    assert_eq!(
        EventKind::PlusmoinHeartbeat.to_string(),
        "plusmoin_heartbeat"
    );
    assert!("slave-down".parse::<EventKind>().is_err());
    assert!("".parse::<EventKind>().is_err());
}

/// A node prints as the operator wrote it: `host:port`, an IPv6 address
/// in brackets so the port stays readable.
#[test]
fn node_names_print_ipv6_in_brackets() {
    assert_eq!(NodeName::new("::1", 5432).to_string(), "[::1]:5432");
    assert_eq!(NodeName::new("db1", 5433).to_string(), "db1:5433");
}

/// Places are named as the status file, the table and the logs say them.
#[test]
fn places_are_named_as_the_status_file_says_them() {
    let names = [Place::Master, Place::Slave, Place::Lost, Place::Clusterless].map(Place::as_str);
    assert_eq!(names, ["master", "slave", "lost", "clusterless"]);
}

/// The status file's `clusterless` list: exactly the nodes in no cluster.
#[test]
fn clusterless_lists_exactly_the_nodes_in_no_cluster() {
    let mut sim = Sim::new();
    sim.beat(&[(5432, M), (5433, D), (5434, S(5432, 0))]);
    let ports: Vec<u16> = sim.state.clusterless().map(|n| n.name.port).collect();
    assert_eq!(ports, [5433]);
}

/// A promoted slave names itself as its master from then on (what the
/// status file shows as the master it follows), not the master it used to
/// replay; a slave that follows it names it.
#[test]
fn a_promoted_slave_names_itself_as_its_master() {
    let mut sim = Sim::new();
    sim.beat(&healthy());
    let before = sim.state.node(&name(5433)).unwrap().master_name.clone();
    assert_eq!(before, Some(name(5432).to_string()));
    sim.beat(&[(5432, D), (5433, M), (5434, S(5433, 1))]);
    let own = name(5433).to_string();
    assert_eq!(
        sim.state.node(&name(5433)).unwrap().master_name.as_deref(),
        Some(own.as_str())
    );
    // And the slave that now replays the promoted one says so.
    assert_eq!(
        sim.state.node(&name(5434)).unwrap().master_name.as_deref(),
        Some(own.as_str())
    );
}

/// A slave exactly at the lag limit is in sync, and nothing says
/// otherwise: no reason is shown beside it.
#[test]
fn a_slave_exactly_at_the_lag_limit_shows_no_reason() {
    let mut sim = Sim::new();
    sim.beat(&healthy());
    sim.beat(&[(5432, M), (5433, S(5432, 11))]);
    let n = sim.state.node(&name(5433)).unwrap();
    assert_eq!(n.lag, Some(Duration::from_secs(10)), "at max_sync_delay");
    assert_eq!((n.place, n.reason.as_deref()), (Place::Slave, None));
}
