//! A beat of the real deciding loop (`plusmoin::daemon::Daemon`) over
//! simulated servers (`plusmoin_kit::fakepg`): the order of its probes.

use plusmoin::cluster::{NodeName, Place};
use plusmoin::daemon::Daemon;
use plusmoin_kit::fakepg::{config_text, FakeNode, FakePg, Fault};
use std::collections::HashMap;
use std::time::Duration;

fn config(pg: &FakePg, dir: &std::path::Path) -> plusmoin::config::Config {
    let text = config_text(
        pg.len(),
        pg.port(),
        dir,
        Duration::from_secs(1),
        Duration::from_secs(2),
        "beat-test",
    );
    plusmoin::config::parse(&text, &dir.join("plusmoin.json")).expect("test configuration")
}

/// Each cluster's slaves are read once their own master's heartbeat write
/// is back, not once every master's is: a master slow to answer holds back
/// its own cluster's reads (their lag is measured against its write), and
/// no other cluster's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_master_holds_back_only_its_own_clusters_reads() {
    let pg = FakePg::start(vec![
        FakeNode::master(),
        FakeNode::slave(0, Duration::ZERO),
        FakeNode::master(),
        FakeNode::slave(2, Duration::ZERO),
    ])
    .await
    .expect("fake servers");
    let dir = tempfile::tempdir().expect("temp dir");
    let mut daemon = Daemon::new(config(&pg, dir.path())).expect("daemon");
    daemon.beat_once().await;
    daemon.beat_once().await;
    let place = |d: &Daemon, i: usize| d.state().node(&pg.name(i)).map(|n| n.place);
    for (i, p) in [Place::Master, Place::Slave, Place::Master, Place::Slave]
        .into_iter()
        .enumerate()
    {
        assert_eq!(place(&daemon, i), Some(p), "{:#?}", daemon.state());
    }

    // Within the beat's bound on waiting for masters (300 ms): the write
    // goes out with the role statement, so the master answers after two
    // slow answers.
    let slow = Duration::from_millis(100);
    pg.set_fault(
        0,
        Fault::Slow {
            ms: slow.as_millis() as u64,
        },
    );
    let decided: HashMap<NodeName, Duration> = daemon.beat_once_timed().await.into_iter().collect();
    let at = |i: usize| decided.get(&pg.name(i)).copied();
    let (slow_master, its_slave, other_slave) = (at(0), at(1), at(3));
    let (Some(slow_master), Some(its_slave), Some(other_slave)) =
        (slow_master, its_slave, other_slave)
    else {
        panic!("every node decided within the beat: {decided:?}");
    };
    assert!(slow_master >= slow, "{decided:?}");
    assert!(
        other_slave < slow_master,
        "the other cluster's slave waited for the slow master: {decided:?}"
    );
    assert!(
        its_slave > slow_master,
        "the slow master's slave was read before its write was back: {decided:?}"
    );
    // Both slaves are still in sync: each was compared with its own
    // master's write of this beat, and showed it.
    assert_eq!(
        place(&daemon, 1),
        Some(Place::Slave),
        "{:#?}",
        daemon.state()
    );
    assert_eq!(
        place(&daemon, 3),
        Some(Place::Slave),
        "{:#?}",
        daemon.state()
    );
    let lag = |i: usize| daemon.state().node(&pg.name(i)).and_then(|n| n.lag);
    assert!(
        lag(1).is_some_and(|l| l < Duration::from_millis(100)),
        "{:?}",
        lag(1)
    );
}
