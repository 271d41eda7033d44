//! The beat plan, clock-free: a fixed start and offsets from it.

use super::*;
use crate::cluster::{decide, Heartbeat, Observation, Policy};

const TIMEOUT: Duration = Duration::from_secs(2);

fn name(i: u16) -> NodeName {
    NodeName::new("127.0.0.1", 5000 + i)
}

fn ms(t0: Instant, n: u64) -> Instant {
    t0 + Duration::from_millis(n)
}

fn names(reads: &[Probe]) -> Vec<NodeName> {
    let mut v: Vec<NodeName> = reads.iter().map(|(n, _)| n.clone()).collect();
    v.sort();
    v
}

/// A started state over `n` nodes where `masters` lead clusters and every
/// other node `i` follows `follows[i]` (a master's index), in sync; `None`:
/// clusterless (a slave whose row names no master known).
fn state(n: u16, follows: &[Option<u16>]) -> (Vec<NodeName>, State) {
    let all: Vec<NodeName> = (0..n).map(name).collect();
    let t = Time(1_000_000);
    let policy = Policy {
        max_sync_delay: Duration::from_secs(10),
        recover_sync_delay: Duration::from_secs(5),
        max_lag_bytes: None,
        recover_lag_bytes: None,
    };
    // Masters first: their writes are known before the slaves are read.
    let masters: Vec<(NodeName, Observation)> = (0..n)
        .filter(|i| follows[*i as usize].is_none() && is_master(follows, *i))
        .map(|i| {
            (
                name(i),
                Observation::Master {
                    wrote_at: t,
                    repl: None,
                },
            )
        })
        .collect();
    let mut obs = masters.clone();
    for i in 0..n {
        if is_master(follows, i) {
            continue;
        }
        let heartbeat = follows[i as usize].map(|m| Heartbeat {
            master_name: name(m).to_string(),
            cluster_id: None,
            written_at: t,
            received: None,
            replayed: None,
        });
        obs.push((name(i), Observation::Slave { heartbeat }));
    }
    let d = decide(State::default(), &all, &obs, t, &policy, true);
    (all, d.state)
}

fn is_master(follows: &[Option<u16>], i: u16) -> bool {
    follows.contains(&Some(i))
}

/// Cluster `a`: 0 leads 1 and 2; cluster `b`: 3 leads 4; 5 is clusterless.
fn two_clusters() -> (Vec<NodeName>, State) {
    let (all, st) = state(6, &[None, Some(0), Some(0), None, Some(3), None]);
    let place = |i: u16| st.node(&name(i)).map(|n| n.place);
    assert_eq!(place(0), Some(cluster::Place::Master), "{st:#?}");
    assert_eq!(place(3), Some(cluster::Place::Master), "{st:#?}");
    assert_eq!(place(1), Some(cluster::Place::Slave), "{st:#?}");
    assert_eq!(place(5), Some(cluster::Place::Clusterless), "{st:#?}");
    (all, st)
}

#[test]
fn a_beat_probes_the_masters_first_each_with_its_cluster_id() {
    let (all, st) = two_clusters();
    let t0 = Instant::now();
    let (mut plan, probes) = BeatPlan::beat(&all, &st, Time(2_000_000), t0, TIMEOUT);
    assert_eq!(names(&probes), [name(0), name(3)]);
    let ids: Vec<Option<ClusterId>> = probes.iter().map(|(_, c)| *c).collect();
    assert!(ids.iter().all(Option::is_some), "{probes:?}");
    assert_ne!(ids[0], ids[1]);
    // Nothing is read before a master's write is back.
    assert_eq!(plan.due_reads(ms(t0, 1)), None);
    assert!(!plan.reads_sent());
    assert!(!plan.complete());
}

#[test]
fn a_masters_cluster_is_read_once_its_write_is_back_and_replicated() {
    let (all, st) = two_clusters();
    let t0 = Instant::now();
    let (mut plan, _) = BeatPlan::beat(&all, &st, Time(2_000_000), t0, TIMEOUT);
    plan.answered(&name(0), false, ms(t0, 7));
    // 7 ms + the grace, rounded up to the 2 ms grid: 28 ms.
    let due = ms(t0, 28);
    assert_eq!(plan.deadline(), due);
    assert_eq!(plan.due_reads(ms(t0, 27)), None, "read before the grace");
    let reads = plan.due_reads(due).expect("its slaves");
    assert_eq!(names(&reads), [name(1), name(2)]);
    // Each read carries its cluster's id, should it answer as a master.
    assert!(reads.iter().all(|(_, c)| c.is_some()));
    // The other cluster's master is still out: the clusterless node waits.
    assert!(!plan.reads_sent());
}

#[test]
fn a_slow_master_holds_back_only_its_own_cluster() {
    let (all, st) = two_clusters();
    let t0 = Instant::now();
    let (mut plan, _) = BeatPlan::beat(&all, &st, Time(2_000_000), t0, TIMEOUT);
    plan.answered(&name(3), false, ms(t0, 1));
    let reads = plan.due_reads(ms(t0, 22)).expect("cluster b's slave");
    assert_eq!(names(&reads), [name(4)]);
    // Master 0 hangs: its cluster and the clusterless node go out at the
    // bound on waiting for masters, not later.
    assert_eq!(plan.deadline(), t0 + MASTERS_BOUND);
    assert_eq!(plan.due_reads(ms(t0, 299)), None);
    let reads = plan.due_reads(t0 + MASTERS_BOUND).expect("the rest");
    assert_eq!(names(&reads), [name(1), name(2), name(5)]);
    assert!(plan.reads_sent());
    // Decided at the latest connect_timeout after the last reads.
    assert_eq!(plan.deadline(), t0 + MASTERS_BOUND + TIMEOUT + BEAT_SLACK);
}

#[test]
fn nodes_without_a_master_are_read_once_every_masters_write_is_back() {
    let (all, st) = two_clusters();
    let t0 = Instant::now();
    let (mut plan, _) = BeatPlan::beat(&all, &st, Time(2_000_000), t0, TIMEOUT);
    plan.answered(&name(0), false, ms(t0, 3));
    plan.answered(&name(3), false, ms(t0, 5));
    // Both writes back: the rest goes with the last master's cluster.
    let reads = plan.due_reads(ms(t0, 26)).expect("reads");
    assert_eq!(names(&reads), [name(1), name(2), name(4), name(5)]);
    assert!(plan.reads_sent());
    for i in [1, 2, 4] {
        plan.answered(&name(i), true, ms(t0, 30));
        assert!(!plan.complete(), "node 5 has not answered");
    }
    plan.answered(&name(5), true, ms(t0, 31));
    assert!(plan.complete());
}

#[test]
fn answers_close_together_are_read_in_one_group() {
    let (all, st) = state(6, &[None, Some(0), None, Some(2), None, Some(4)]);
    let t0 = Instant::now();
    let (mut plan, probes) = BeatPlan::beat(&all, &st, Time(2_000_000), t0, TIMEOUT);
    assert_eq!(probes.len(), 3);
    // Three writes back within one 2 ms step of the grid.
    plan.answered(&name(0), false, ms(t0, 4) + Duration::from_micros(100));
    plan.answered(&name(2), false, ms(t0, 5));
    plan.answered(&name(4), false, ms(t0, 6));
    let reads = plan.due_reads(ms(t0, 26)).expect("one group");
    assert_eq!(names(&reads), [name(1), name(3), name(5)]);
}

#[test]
fn a_beat_without_masters_reads_everyone_at_once() {
    let (all, st) = state(2, &[None, None]);
    let t0 = Instant::now();
    let (mut plan, probes) = BeatPlan::beat(&all, &st, Time(2_000_000), t0, TIMEOUT);
    assert!(probes.is_empty());
    assert_eq!(plan.deadline(), t0);
    let reads = plan.due_reads(t0).expect("everyone");
    assert_eq!(names(&reads), [name(0), name(1)]);
    assert!(reads.iter().all(|(_, c)| c.is_none()));
}

#[test]
fn priming_probes_everyone_then_reads_again_those_that_answered_as_slaves() {
    let all: Vec<NodeName> = (0..4).map(name).collect();
    let t0 = Instant::now();
    let (mut plan, probes) = BeatPlan::priming(&all, Time(1), t0, TIMEOUT);
    assert!(plan.is_priming());
    assert_eq!(names(&probes), all);
    plan.answered(&name(0), false, ms(t0, 2));
    plan.answered(&name(1), true, ms(t0, 3));
    plan.answered(&name(2), true, ms(t0, 3));
    // Node 3 hangs: the slaves are read again once every node answered or
    // connect_timeout (+ slack) has passed, not at the masters' bound.
    assert_eq!(plan.due_reads(t0 + MASTERS_BOUND), None);
    let bound = t0 + TIMEOUT + BEAT_SLACK;
    assert_eq!(plan.deadline(), bound);
    let reads = plan.due_reads(bound).expect("the slaves");
    assert_eq!(names(&reads), [name(1), name(2)]);
}

#[test]
fn priming_gives_a_new_row_longer_to_replicate() {
    let all: Vec<NodeName> = (0..2).map(name).collect();
    let t0 = Instant::now();
    let (mut plan, _) = BeatPlan::priming(&all, Time(1), t0, TIMEOUT);
    plan.answered(&name(1), true, ms(t0, 1));
    plan.answered(&name(0), false, ms(t0, 2));
    let due = ms(t0, 2) + PRIMING_GRACE;
    assert_eq!(plan.deadline(), due);
    assert_eq!(plan.due_reads(due - Duration::from_millis(1)), None);
    assert_eq!(names(&plan.due_reads(due).expect("slave")), [name(1)]);
    // A node that answered as a slave first and as a master later is not
    // read again as a slave.
    let (mut plan, _) = BeatPlan::priming(&all, Time(1), t0, TIMEOUT);
    plan.answered(&name(1), true, ms(t0, 1));
    plan.answered(&name(1), false, ms(t0, 1));
    plan.answered(&name(0), false, ms(t0, 2));
    assert_eq!(plan.due_reads(due), Some(vec![]));
}

/// A node added by a reload, among the others or after them all (then the
/// configuration no longer matches the state in place), is read with the
/// rest once the masters' writes are back.
#[test]
fn a_node_added_by_a_reload_is_read_with_the_rest() {
    for at in [1, 6] {
        let (mut all, st) = two_clusters();
        all.insert(at, name(9));
        let t0 = Instant::now();
        let (mut plan, probes) = BeatPlan::beat(&all, &st, Time(2_000_000), t0, TIMEOUT);
        assert_eq!(names(&probes), [name(0), name(3)], "added at {at}");
        plan.answered(&name(0), false, ms(t0, 1));
        plan.answered(&name(3), false, ms(t0, 1));
        let reads = plan.due_reads(ms(t0, 22)).expect("reads");
        assert_eq!(
            names(&reads),
            [name(1), name(2), name(4), name(5), name(9)],
            "added at {at}"
        );
    }
}

/// Nodes that replaced every configured node by a reload, in the same
/// places, are new: none is taken for the node it replaced (a master would
/// not be read at all), so all are read at once, as nodes of no cluster
/// yet, and the removed masters are not probed.
#[test]
fn nodes_replacing_every_node_in_place_are_new() {
    let (_, st) = two_clusters();
    let all: Vec<NodeName> = (10..16).map(name).collect();
    let t0 = Instant::now();
    let (mut plan, probes) = BeatPlan::beat(&all, &st, Time(2_000_000), t0, TIMEOUT);
    assert_eq!(probes, []);
    let reads = plan.due_reads(t0).expect("reads");
    assert_eq!(names(&reads), all);
    assert!(reads.iter().all(|(_, c)| c.is_none()), "{reads:?}");
}

/// A master removed by a reload is still in the state until the next
/// decision: it is not probed, its slaves (still configured) do not wait
/// for its write, and the beat ends once the nodes it has answer.
#[test]
fn a_master_removed_by_a_reload_is_not_probed_nor_waited_for() {
    let (mut all, st) = two_clusters();
    all.retain(|n| *n != name(0));
    let t0 = Instant::now();
    let (mut plan, probes) = BeatPlan::beat(&all, &st, Time(2_000_000), t0, TIMEOUT);
    assert_eq!(names(&probes), [name(3)]);
    plan.answered(&name(3), false, ms(t0, 1));
    let reads = plan.due_reads(ms(t0, 22)).expect("every read once 3 wrote");
    assert_eq!(names(&reads), [name(1), name(2), name(4), name(5)]);
    assert!(plan.reads_sent());
    for n in [1, 2, 4, 5] {
        plan.answered(&name(n), true, ms(t0, 25));
    }
    assert!(plan.complete(), "nothing waits for the removed master");
}
