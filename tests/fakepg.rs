//! The simulated PostgreSQL server (`plusmoin_kit::fakepg`) seen through
//! plusmoin's real probes (a `Monitor`, as the daemon runs them): what the
//! scale benchmark relies on.

use plusmoin::cluster::{Observation, Time};
use plusmoin::config::{Secret, SslMode};
use plusmoin::probe::{Monitor, ProbeSettings, ProbeTarget};
use plusmoin_kit::fakepg::{FakeNode, FakePg, Fault};
use plusmoin_kit::probe::probe_once;
use std::time::{Duration, Instant};

/// The default role statement, for which a slave is probed with a single
/// statement giving its role and heartbeat together.
const DEFAULT_ROLE: &str = "SELECT pg_is_in_recovery()";
/// A custom one asking the same: the role and the heartbeat read apart.
const CUSTOM_ROLE: &str = "SELECT pg_is_in_recovery() AS in_recovery";

fn prober(connect_timeout: Duration) -> Monitor {
    prober_with(connect_timeout, DEFAULT_ROLE)
}

fn settings(connect_timeout: Duration, is_slave_statement: &str) -> ProbeSettings {
    ProbeSettings {
        dbname: "plusmoin".into(),
        user: "plusmoin".into(),
        password: Secret::new("unused"),
        node_passwords: Default::default(),
        instance_name: "fake-test".into(),
        is_slave_statement: is_slave_statement.into(),
        sslmode: SslMode::Disable,
        sslrootcert: None,
        connect_timeout,
        retry_interval: Duration::from_millis(250),
    }
}

fn prober_with(connect_timeout: Duration, is_slave_statement: &str) -> Monitor {
    Monitor::new(settings(connect_timeout, is_slave_statement)).expect("monitor")
}

fn targets(pg: &FakePg, which: &[usize]) -> Vec<ProbeTarget> {
    which
        .iter()
        .map(|&i| ProbeTarget {
            name: pg.name(i),
            cluster_id: Some(7),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_and_slaves_replay_its_heartbeat_with_their_lag() {
    master_and_slaves(DEFAULT_ROLE).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_with_a_custom_role_statement() {
    master_and_slaves(CUSTOM_ROLE).await
}

async fn master_and_slaves(is_slave_statement: &str) {
    let lag = Duration::from_millis(400);
    let pg = FakePg::start(vec![
        FakeNode::master(),
        FakeNode::slave(0, Duration::ZERO),
        FakeNode::slave(0, lag),
    ])
    .await
    .expect("fake server");
    let mut p = prober_with(Duration::from_secs(2), is_slave_statement);
    let master = pg.name(0);

    // Before any write, the slaves have no row to replay.
    let out = probe_once(&mut p, &targets(&pg, &[1, 2]), Time(1)).await;
    assert_eq!(out[0].1, Observation::Slave { heartbeat: None });
    assert_eq!(out[1].1, Observation::Slave { heartbeat: None });

    let wrote = Time::from_secs_f64(1_700_000_000.25);
    let out = probe_once(&mut p, &targets(&pg, &[0]), wrote).await;
    assert_eq!(out[0].0, master);
    assert_eq!(written_at(&out[0].1), Some(wrote));
    // The write answered the master's WAL position and replication: two
    // slaves streaming, neither waited on.
    let Observation::Master {
        repl: Some(repl), ..
    } = &out[0].1
    else {
        panic!("no replication answered: {:?}", out[0].1);
    };
    let written_wal = repl.wal.expect("a WAL position");
    assert!(written_wal > 0);
    assert_eq!(repl.standby_names, "ANY 1 (*)");
    let names: Vec<&str> = repl
        .walsenders
        .as_ref()
        .expect("its standbys")
        .iter()
        .map(|w| w.application_name.as_str())
        .collect();
    assert_eq!(names, [pg.name(1).to_string(), pg.name(2).to_string()]);
    let written = Instant::now();

    // The slave without lag replays the write at once, with its master's
    // name and the cluster id plusmoin wrote; the lagging one not yet.
    let out = probe_once(&mut p, &targets(&pg, &[1, 2]), Time(2)).await;
    let Observation::Slave {
        heartbeat: Some(hb),
    } = &out[0].1
    else {
        panic!("slave without lag: {:?}", out[0].1);
    };
    assert_eq!(hb.master_name, master.to_string());
    assert_eq!(hb.cluster_id, Some(7));
    assert_eq!(hb.written_at, wrote);
    // With the row, the WAL position of the write it came with.
    assert_eq!(hb.replayed, Some(written_wal));
    assert_eq!(hb.received, Some(written_wal));
    if written.elapsed() < lag {
        assert_eq!(out[1].1, Observation::Slave { heartbeat: None });
    }

    // The lagging slave shows it once `lag` has passed, and not before.
    let mut seen_at = None;
    // Shown at `lag`; the deadline only bounds a broken build.
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let out = probe_once(&mut p, &targets(&pg, &[2]), Time(3)).await;
        if let Observation::Slave {
            heartbeat: Some(hb),
        } = &out[0].1
        {
            if hb.written_at == wrote {
                seen_at = Some(written.elapsed());
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let shown = seen_at.is_some();
    assert!(shown, "the lagging slave never replayed the write");
    assert!(seen_at.unwrap_or_default() >= lag, "{seen_at:?}");

    // A later write supersedes the first on the slave without lag.
    let later = Time::from_secs_f64(1_700_000_001.5);
    probe_once(&mut p, &targets(&pg, &[0]), later).await;
    let out = probe_once(&mut p, &targets(&pg, &[1]), Time(4)).await;
    match &out[0].1 {
        Observation::Slave {
            heartbeat: Some(hb),
        } => assert_eq!(hb.written_at, later),
        o => panic!("{o:?}"),
    }
    // Connections to nodes not probed are closed; one kept per node probed.
    assert_eq!(p.connections_held(), 1);
    probe_once(&mut p, &targets(&pg, &[0, 1, 2]), Time(5)).await;
    assert_eq!(p.connections_held(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_is_down_at_the_deadline_and_refusing_quickly() {
    let pg = FakePg::start(vec![
        FakeNode::master().with(Fault::Frozen),
        FakeNode::master().with(Fault::Refusing),
        FakeNode::master(),
    ])
    .await
    .expect("fake server");
    // Refused: down long before a generous deadline.
    let mut patient = prober(Duration::from_secs(5));
    let t0 = Instant::now();
    let out = probe_once(&mut patient, &targets(&pg, &[1]), Time(1)).await;
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    match &out[0].1 {
        Observation::Down { reason } => assert!(reason.contains("refused"), "{reason}"),
        o => panic!("refusing node: {o:?}"),
    }

    // All three at once: the healthy one answers, the frozen one is down
    // at the deadline, not before and not long after.
    let deadline = Duration::from_millis(500);
    let mut p = prober(deadline);
    let t0 = Instant::now();
    let out = probe_once(&mut p, &targets(&pg, &[0, 1, 2]), Time(2)).await;
    let took = t0.elapsed();
    assert!(took >= deadline, "{took:?}");
    assert!(took < deadline + Duration::from_secs(1), "{took:?}");
    assert_eq!(
        out[0].1,
        Observation::Down {
            reason: "no answer within 0.5s".into()
        }
    );
    assert!(matches!(out[1].1, Observation::Down { .. }));
    assert_eq!(written_at(&out[2].1), Some(Time(2)));
    assert_eq!(p.connections_held(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_change_at_run_time_and_slow_answers_past_the_deadline_are_down() {
    let pg = FakePg::start(vec![FakeNode::master(), FakeNode::slave(0, Duration::ZERO)])
        .await
        .expect("fake server");
    let mut p = prober(Duration::from_millis(400));
    let all = targets(&pg, &[0, 1]);
    let out = probe_once(&mut p, &all, Time(1)).await;
    assert_eq!(written_at(&out[0].1), Some(Time(1)));
    assert!(matches!(out[1].1, Observation::Slave { .. }));

    // Slow within the deadline: still answers.
    pg.set_fault(1, Fault::Slow { ms: 50 });
    let out = probe_once(&mut p, &all, Time(2)).await;
    assert!(
        matches!(out[1].1, Observation::Slave { .. }),
        "{:?}",
        out[1].1
    );
    // Slow past it (each answer 500 ms late; a slave's probe is a single
    // statement, so one such answer): down at the deadline.
    pg.set_fault(1, Fault::Slow { ms: 500 });
    let out = probe_once(&mut p, &all, Time(3)).await;
    assert_eq!(
        out[1].1,
        Observation::Down {
            reason: "no answer within 0.4s".into()
        }
    );
    // A kept connection that freezes: down at the deadline, and dropped.
    pg.set_fault(1, Fault::None);
    probe_once(&mut p, &all, Time(4)).await;
    assert_eq!(p.connections_held(), 2);
    pg.set_fault(0, Fault::Frozen);
    let t0 = Instant::now();
    let out = probe_once(&mut p, &all, Time(5)).await;
    assert!(t0.elapsed() >= Duration::from_millis(400));
    assert!(
        matches!(out[0].1, Observation::Down { .. }),
        "{:?}",
        out[0].1
    );
    assert!(matches!(out[1].1, Observation::Slave { .. }));
    assert_eq!(p.connections_held(), 1);
    // Thawed: answers again on a new connection.
    pg.set_fault(0, Fault::None);
    let out = probe_once(&mut p, &all, Time(6)).await;
    assert_eq!(written_at(&out[0].1), Some(Time(6)));
}

/// The holds are read from the first node that answers, as from a server
/// with an empty `plusmoin_hold`: the scale benchmark's daemon does not go
/// from node to node every beat looking for a readable table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_read_as_an_empty_table() {
    use plusmoin::hold::Holds;
    let pg = FakePg::start(vec![FakeNode::master()])
        .await
        .expect("fake server");
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path().display();
    let name = pg.name(0);
    let text = format!(
        r#"{{"dbname": "plusmoin", "user": "plusmoin", "password": "unused",
  "heartbeat": 1, "connect_timeout": 2, "sslmode": "disable",
  "status_file": "{d}/status.json", "pid_file": "{d}/plusmoin.pid",
  "nodes": [{{"host": "{}", "port": {}}}]}}"#,
        name.host, name.port
    );
    let config = plusmoin::config::parse(&text, &dir.path().join("plusmoin.json")).expect("config");
    let mut holds = Holds::new(&config);
    holds.refresh(vec![name]);
    holds.settle().await;
    assert!(holds.known(), "the hold table was read");
    assert!(holds.current().is_empty());
}

/// Statements each node executed during one beat, and the observations.
async fn counted_beat(pg: &FakePg, p: &mut Monitor, t: Time) -> (Vec<u64>, Vec<Observation>) {
    let before: Vec<u64> = (0..pg.len()).map(|i| pg.executed(i)).collect();
    let all: Vec<usize> = (0..pg.len()).collect();
    let out = probe_once(p, &targets(pg, &all), t).await;
    let spent = (0..pg.len()).map(|i| pg.executed(i) - before[i]).collect();
    (spent, out.into_iter().map(|(_, o)| o).collect())
}

/// With the default role statement a slave costs one statement a beat
/// (role and heartbeat together), with a custom one two; a reload switches
/// between them, and the answers are the same either way. A master costs
/// two (role and heartbeat write) either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slave_costs_one_statement_with_the_default_role_statement() {
    let pg = FakePg::start(vec![
        FakeNode::master(),
        FakeNode::slave(0, Duration::ZERO),
        FakeNode::slave(0, Duration::from_secs(3600)),
    ])
    .await
    .expect("fake server");
    let timeout = Duration::from_secs(2);
    let mut p = prober(timeout);
    let master = pg.name(0).to_string();
    // What each beat must show at time `t`, the master having written at `t - 1`.
    // What each beat at time `t` must show: the slave without lag replays
    // the master's write of the last beat, or of this one if it came
    // first (the nodes are probed at once); the other has no row yet.
    let check = |t: i64, obs: &[Observation]| {
        assert_eq!(written_at(&obs[0]), Some(Time(t)));
        match &obs[1] {
            Observation::Slave {
                heartbeat: Some(hb),
            } => {
                assert_eq!(hb.master_name, master);
                assert_eq!(hb.cluster_id, Some(7));
                assert!([t - 1, t].contains(&hb.written_at.0), "{hb:?} at {t}");
            }
            o => panic!("slave without lag at {t}: {o:?}"),
        }
        assert_eq!(obs[2], Observation::Slave { heartbeat: None });
    };
    // Two beats: the statements are prepared, the slaves get in sync.
    counted_beat(&pg, &mut p, Time(1)).await;
    counted_beat(&pg, &mut p, Time(2)).await;
    let mut t = 2;
    // Default, then a reload to a custom statement (the role and the read
    // apart), then back (the combined statement is prepared again, and
    // answers).
    let phases = [
        (None, [2, 1, 1], "default role statement"),
        (Some(CUSTOM_ROLE), [2, 2, 2], "custom role statement"),
        (Some(DEFAULT_ROLE), [2, 1, 1], "back to the default"),
    ];
    for (reload, expected, what) in phases {
        if let Some(role) = reload {
            p.update_settings(settings(timeout, role)).expect("reload");
        }
        for _ in 0..3 {
            t += 1;
            let (spent, obs) = counted_beat(&pg, &mut p, Time(t)).await;
            check(t, &obs);
            assert_eq!(spent, expected, "{what}");
        }
    }
}

/// The heartbeat time of a master's observation; `None` for any other.
fn written_at(o: &Observation) -> Option<Time> {
    match o {
        Observation::Master { wrote_at, .. } => Some(*wrote_at),
        _ => None,
    }
}
