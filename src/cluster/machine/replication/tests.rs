//! Lag in bytes (and the `max_lag_bytes` rule's hysteresis), synchronous
//! standbys counted per method, `sync_lost` / `sync_ok`, and each slave's
//! `sync_state`, through [`decide`].

use super::super::testing::{step, step_news};
use super::*;
use std::time::Duration;

const BEAT: i64 = 1_000_000;

fn name(port: u16) -> NodeName {
    NodeName::new("db", port)
}

fn policy(max_bytes: Option<u64>, recover_bytes: Option<u64>) -> Policy {
    Policy {
        max_sync_delay: Duration::from_secs(10),
        recover_sync_delay: Duration::from_secs(5),
        max_lag_bytes: max_bytes,
        recover_lag_bytes: recover_bytes,
    }
}

fn master(now: Time, wal: u64, standby_names: &str, walsenders: &[(&str, &str)]) -> Observation {
    Observation::Master {
        wrote_at: now,
        repl: Some(Box::new(MasterRepl {
            wal: Some(wal),
            standby_names: standby_names.into(),
            synchronous_commit: "on".into(),
            walsenders: Some(
                walsenders
                    .iter()
                    .map(|(n, s)| Walsender {
                        application_name: n.to_string(),
                        state: "streaming".into(),
                        sync_state: s.to_string(),
                    })
                    .collect(),
            ),
        })),
    }
}

fn slave(written_at: Time, replayed: u64) -> Observation {
    Observation::Slave {
        heartbeat: Some(Heartbeat {
            master_name: name(5432).to_string(),
            cluster_id: Some(0),
            written_at,
            received: Some(replayed),
            replayed: Some(replayed),
        }),
    }
}

struct Run {
    state: State,
    now: Time,
    policy: Policy,
}

impl Run {
    fn new(policy: Policy) -> Run {
        Run {
            state: State::default(),
            now: Time(1_000 * BEAT),
            policy,
        }
    }

    /// One beat as the daemon decides it: the master's write at `wal`
    /// with `sync` first, then each slave (5433, 5434, …) replayed up to
    /// the given position, its row current (the first beat: all at once).
    /// Returns the events but `plusmoin_up` and `plusmoin_heartbeat`.
    fn beat(&mut self, wal: u64, sync: (&str, &[(&str, &str)]), slaves: &[u64]) -> Vec<String> {
        self.now = Time(self.now.0 + BEAT);
        let m = (name(5432), master(self.now, wal, sync.0, sync.1));
        let reads: Vec<(NodeName, Observation)> = slaves
            .iter()
            .enumerate()
            .map(|(i, r)| (name(5433 + i as u16), slave(self.now, *r)))
            .collect();
        let names: Vec<NodeName> = std::iter::once(m.0.clone())
            .chain(reads.iter().map(|(n, _)| n.clone()))
            .collect();
        let mut events = Vec::new();
        if self.state.started {
            let (next, e) = step_news(&self.state, &names, &[m], self.now, &self.policy, false);
            events.extend(e);
            let (next, e) = step_news(&next, &names, &reads, self.now, &self.policy, true);
            events.extend(e);
            self.state = next;
        } else {
            let all: Vec<_> = std::iter::once(m).chain(reads).collect();
            let (next, e) = step(&self.state, &all, self.now, &self.policy);
            events.extend(e);
            self.state = next;
        }
        events
            .into_iter()
            .filter(|e| !matches!(e.kind, EventKind::PlusmoinHeartbeat | EventKind::PlusmoinUp))
            .map(|e| format!("{}({})", e.kind, e.node.map(|n| n.port).unwrap_or(0)))
            .collect()
    }

    fn node(&self, port: u16) -> &NodeState {
        self.state.node(&name(port)).unwrap()
    }

    fn sync(&self) -> &crate::cluster::sync::SyncView {
        self.state.clusters[&0].sync.as_ref().expect("a sync view")
    }
}

const NONE: (&str, &[(&str, &str)]) = ("", &[]);

#[test]
fn lag_in_bytes_is_the_masters_position_at_the_beat_minus_the_replay_position() {
    let mut r = Run::new(policy(None, None));
    r.beat(1_000, NONE, &[1_000]);
    // The master is at 5,000 by this beat (its write known before the
    // slaves are read): the slave replayed up to 1,200.
    r.beat(5_000, NONE, &[1_200]);
    assert_eq!(r.node(5433).lag_bytes, Some(3_800));
    assert_eq!(r.node(5433).place, Place::Slave, "no byte rule by default");
    // Ahead of the reference (replayed past it meanwhile): zero, not a wrap.
    r.beat(6_000, NONE, &[7_000]);
    assert_eq!(r.node(5433).lag_bytes, Some(0));
    // A master that gives no position at this beat: unknown, not the
    // position of an older beat.
    r.now = Time(r.now.0 + BEAT);
    let names = [name(5432), name(5433)];
    let m = Observation::Master {
        wrote_at: r.now,
        repl: None,
    };
    let (next, _) = step_news(
        &r.state,
        &names,
        &[(name(5432), m)],
        r.now,
        &r.policy,
        false,
    );
    let reads = [(name(5433), slave(r.now, 7_000))];
    let (next, _) = step_news(&next, &names, &reads, r.now, &r.policy, true);
    r.state = next;
    assert_eq!(r.node(5433).lag_bytes, None);
    assert_eq!(r.node(5433).place, Place::Slave);
}

#[test]
fn max_lag_bytes_has_the_hysteresis_of_the_delays() {
    let mut r = Run::new(policy(Some(1_000), Some(400)));
    assert!(r.beat(10_000, NONE, &[10_000]).is_empty());
    // At the limit: still in sync.
    assert!(r.beat(11_000, NONE, &[10_000]).is_empty());
    assert_eq!(r.node(5433).place, Place::Slave);
    // Over it: lost, with the limit named.
    assert_eq!(r.beat(12_001, NONE, &[11_000]), ["slave_down(5433)"]);
    assert_eq!(r.node(5433).place, Place::Lost);
    let why = r.node(5433).reason.clone().unwrap();
    assert_eq!(why, "lag 1001 bytes is over max_lag_bytes 1000 bytes");
    // Between the limits: stays lost (no flapping).
    assert!(r.beat(13_000, NONE, &[12_500]).is_empty());
    assert_eq!(r.node(5433).place, Place::Lost);
    let why = r.node(5433).reason.clone().unwrap();
    assert!(why.contains("over recover_lag_bytes 400"), "{why}");
    // Within the recovery limit: back.
    assert_eq!(r.beat(14_000, NONE, &[13_600]), ["slave_up(5433)"]);
    // Between the limits once back: stays in sync.
    assert!(r.beat(15_000, NONE, &[14_100]).is_empty());
    assert_eq!(r.node(5433).place, Place::Slave);
}

#[test]
fn sync_lost_and_ok_with_a_plain_list() {
    let mut r = Run::new(policy(None, None));
    let names = "\"db:5433\"";
    // Waiting already on the first beat: said at once.
    assert_eq!(r.beat(1, (names, &[]), &[1]), ["sync_lost(5432)"]);
    assert!(r.sync().waiting);
    assert_eq!(r.sync().connected, Some(0));
    assert_eq!(r.sync().required, 1);
    assert_eq!(
        r.beat(2, (names, &[("db:5433", "sync")]), &[2]),
        ["sync_ok(5432)"]
    );
    assert!(!r.sync().waiting);
    assert_eq!(r.node(5433).sync_state, Some("sync"));
    // Unchanged: no event.
    assert!(r.beat(3, (names, &[("db:5433", "sync")]), &[3]).is_empty());
    // Another standby does not stand in for the one named.
    assert_eq!(
        r.beat(4, (names, &[("db:5434", "async")]), &[4]),
        ["sync_lost(5432)"]
    );
    assert_eq!(r.node(5433).sync_state, None, "its row is gone");
    assert!(r.beat(5, (names, &[]), &[5]).is_empty());
}

#[test]
fn first_n_counts_every_one_it_needs() {
    let mut r = Run::new(policy(None, None));
    let names = "FIRST 2 (\"db:5433\", \"db:5434\", \"db:5435\")";
    let all: &[(&str, &str)] = &[
        ("db:5433", "sync"),
        ("db:5434", "sync"),
        ("db:5435", "potential"),
    ];
    assert!(r.beat(1, (names, all), &[1, 1, 1]).is_empty());
    assert_eq!(r.node(5435).sync_state, Some("potential"));
    // One of three gone: two remain, enough.
    assert!(r
        .beat(
            2,
            (names, &[("db:5433", "sync"), ("db:5435", "sync")]),
            &[2, 2, 2]
        )
        .is_empty());
    // Two of three gone: commits wait.
    assert_eq!(
        r.beat(3, (names, &[("db:5435", "sync")]), &[3, 3, 3]),
        ["sync_lost(5432)"]
    );
    assert_eq!(r.sync().connected, Some(1));
    assert_eq!(r.sync().method, Some("first"));
}

#[test]
fn any_n_is_a_quorum() {
    let mut r = Run::new(policy(None, None));
    let names = "ANY 1 (\"db:5433\", \"db:5434\")";
    let both: &[(&str, &str)] = &[("db:5433", "quorum"), ("db:5434", "quorum")];
    assert!(r.beat(1, (names, both), &[1, 1]).is_empty());
    assert_eq!(r.node(5434).sync_state, Some("quorum"));
    // Losing one of the two gives nothing.
    assert!(r
        .beat(2, (names, &[("db:5434", "quorum")]), &[2, 2])
        .is_empty());
    assert!(!r.sync().waiting);
    // Losing both: commits wait.
    assert_eq!(r.beat(3, (names, &[]), &[3, 3]), ["sync_lost(5432)"]);
    assert_eq!(r.sync().method, Some("any"));
    assert_eq!(r.beat(4, (names, both), &[4, 4]), ["sync_ok(5432)"]);
}

#[test]
fn no_synchronous_standbys_never_wait_and_local_commits_do_not_either() {
    let mut r = Run::new(policy(None, None));
    assert!(r.beat(1, NONE, &[1]).is_empty());
    assert_eq!(r.sync().required, 0);
    assert!(!r.sync().waiting);
    // synchronous_commit = local: commits do not wait for standbys.
    r.now = Time(r.now.0 + BEAT);
    let mut m = master(r.now, 2, "\"db:5433\"", &[]);
    if let Observation::Master {
        repl: Some(repl), ..
    } = &mut m
    {
        repl.synchronous_commit = "local".into();
    }
    let (next, events) = step(
        &r.state,
        &[(name(5432), m), (name(5433), slave(r.now, 2))],
        r.now,
        &r.policy,
    );
    assert!(events
        .iter()
        .all(|e| e.kind == EventKind::PlusmoinHeartbeat));
    assert!(!next.clusters[&0].sync.as_ref().unwrap().waiting);
}

#[test]
fn a_standby_matched_by_no_single_row_has_no_sync_state() {
    let mut r = Run::new(policy(None, None));
    // Its name on two rows: ambiguous. Matched case-insensitively.
    r.beat(
        1,
        (
            "*",
            &[
                ("db:5433", "sync"),
                ("DB:5433", "potential"),
                ("DB:5434", "potential"),
            ],
        ),
        &[1, 1],
    );
    assert_eq!(r.node(5433).sync_state, None);
    assert_eq!(r.node(5434).sync_state, Some("potential"));
    assert_eq!(r.node(5432).sync_state, None, "a master has none");
    assert_eq!(
        r.sync().connected,
        Some(3),
        "every row counts for the master"
    );
}

#[test]
fn a_cluster_without_a_master_has_no_view_and_no_event() {
    let mut r = Run::new(policy(None, None));
    assert_eq!(r.beat(1, ("x", &[]), &[1]), ["sync_lost(5432)"]);
    r.now = Time(r.now.0 + BEAT);
    let obs = [
        (
            name(5432),
            Observation::Down {
                reason: "gone".into(),
            },
        ),
        (name(5433), slave(r.now, 1)),
    ];
    let (next, events) = step(&r.state, &obs, r.now, &r.policy);
    let kinds: Vec<EventKind> = events.iter().map(|e| e.kind).collect();
    assert!(!kinds.contains(&EventKind::SyncOk), "{kinds:?}");
    assert!(next.clusters[&0].sync.is_none());
}

/// A node plusmoin does not see as a slave gets no sync state, even when a
/// row of its master names it: here the old primary, down, while the
/// promoted one already shows a walsender under its name (rewound and
/// streaming before plusmoin's next look at it).
#[test]
fn a_node_not_seen_as_a_slave_has_no_sync_state() {
    let p = policy(None, None);
    let t1 = Time(1_000 * BEAT);
    let (s, _) = step(
        &State::default(),
        &[
            (name(5432), master(t1, 1, "", &[])),
            (name(5433), slave(t1, 1)),
        ],
        t1,
        &p,
    );
    let t2 = Time(t1.0 + BEAT);
    let (s, _) = step(
        &s,
        &[
            (
                name(5432),
                Observation::Down {
                    reason: "connection refused".into(),
                },
            ),
            (name(5433), master(t2, 2, "*", &[("db:5432", "async")])),
        ],
        t2,
        &p,
    );
    let old = s.node(&name(5432)).unwrap();
    assert_eq!(old.cluster_id, s.node(&name(5433)).unwrap().cluster_id);
    assert!(!old.is_slave && old.place != Place::Master, "{old:?}");
    assert_eq!(old.sync_state, None);
}
