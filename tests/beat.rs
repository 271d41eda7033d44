//! A beat of the real deciding loop (`plusmoin::daemon::run`, as `plusmoin
//! start` runs it) over simulated servers (`plusmoin_kit::fakepg`): the
//! order of its probes, seen through an observer of the loop.

use plusmoin::cluster::{NodeName, Place, State};
use plusmoin::daemon::{Inputs, Observer};
use plusmoin_kit::fakepg::{config_text, FakeNode, FakePg, Fault};
use std::collections::HashMap;
use std::ops::ControlFlow;
use std::time::Duration;
use tokio::time::Instant;

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

/// Runs the loop over `pg` until `beats` beats are decided; before beat
/// `fault_at` (counted from 1), `fault` is set on node 0. Returns the state
/// after each beat, and for the last beat how long after it began each
/// answer was decided.
struct Watch<'a> {
    pg: &'a FakePg,
    beats: usize,
    fault_at: usize,
    fault: Fault,
    states: Vec<State>,
    began: Option<Instant>,
    decided: HashMap<NodeName, Duration>,
}

impl Observer for Watch<'_> {
    fn beat_began(&mut self, now: Instant) -> ControlFlow<()> {
        if self.states.len() + 1 == self.beats {
            self.began = Some(now);
            self.decided.clear();
        }
        ControlFlow::Continue(())
    }
    fn wants_answers(&self) -> bool {
        true
    }
    fn decided(&mut self, nodes: &[NodeName], now: Instant) {
        if let Some(t0) = self.began {
            for n in nodes {
                self.decided.insert(n.clone(), now - t0);
            }
        }
    }
    fn beat_decided(&mut self, state: &State, _connections: usize) -> ControlFlow<()> {
        self.states.push(state.clone());
        if self.states.len() + 1 == self.fault_at {
            self.pg.set_fault(0, self.fault);
        }
        if self.states.len() == self.beats {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    }
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
    // Within the beat's bound on waiting for masters (300 ms): the write
    // goes out with the role statement, so the master answers after two
    // slow answers.
    let slow = Duration::from_millis(100);
    let watch = Watch {
        pg: &pg,
        beats: 3,
        fault_at: 3,
        fault: Fault::Slow {
            ms: slow.as_millis() as u64,
        },
        states: Vec::new(),
        began: None,
        decided: HashMap::new(),
    };
    let (_reload_tx, reload) = tokio::sync::mpsc::unbounded_channel();
    let inputs = Inputs {
        config_path: dir.path().join("plusmoin.json"),
        shutdown: std::future::pending::<()>(),
        reload,
        http: None,
    };
    let run = plusmoin::daemon::run(config(&pg, dir.path()), inputs, watch);
    let watch = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("three beats within 30 s")
        .expect("the loop ran");
    let place = |st: &State, i: usize| st.node(&pg.name(i)).map(|n| n.place);
    let before = &watch.states[1];
    for (i, p) in [Place::Master, Place::Slave, Place::Master, Place::Slave]
        .into_iter()
        .enumerate()
    {
        assert_eq!(place(before, i), Some(p), "{before:#?}");
    }

    let decided = &watch.decided;
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
    let after = &watch.states[2];
    assert_eq!(place(after, 1), Some(Place::Slave), "{after:#?}");
    assert_eq!(place(after, 3), Some(Place::Slave), "{after:#?}");
    let lag = after.node(&pg.name(1)).and_then(|n| n.lag);
    assert!(
        lag.is_some_and(|l| l < Duration::from_millis(100)),
        "{lag:?}"
    );
}
