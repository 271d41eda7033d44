//! The sidecar's rules, one scenario each, on plain data.

use super::*;
use crate::pgpool::pcp::Role;

const HB: Duration = Duration::from_secs(1);

fn name(i: u32) -> NodeName {
    NodeName::new(format!("db{i}"), 5432)
}

/// Node `i` with plusmoin's place (slaves replay `db0`) and pgpool's
/// status and role.
fn node(i: u32, place: Place, status: NodeStatus, role: Role) -> Seen {
    Seen {
        name: name(i),
        id: i,
        ours: Ours {
            place: Some(place),
            master_name: match place {
                Place::Slave => Some("db0:5432".into()),
                Place::Master => Some(format!("db{i}:5432")),
                _ => None,
            },
            held: false,
        },
        pgpool: NodeInfo {
            status,
            role: Some(role),
            delay: None,
        },
    }
}

use NodeStatus::{Down, Up, Waiting};
use Place::{Clusterless, Lost, Master, Slave};
use Role::{Primary, Standby};

fn healthy() -> Vec<Seen> {
    vec![
        node(0, Master, Up, Primary),
        node(1, Slave, Up, Standby),
        node(2, Slave, Up, Standby),
    ]
}

struct Run {
    memory: Memory,
    settings: Settings,
    t0: Instant,
}

impl Run {
    fn new() -> Run {
        Run {
            memory: Memory::default(),
            settings: Settings::new(HB),
            t0: Instant::now(),
        }
    }
    fn at(&mut self, secs: f64, nodes: &[Seen]) -> RoundPlan {
        let now = self.t0 + Duration::from_secs_f64(secs);
        decide(nodes, true, &self.settings, now, &mut self.memory)
    }
    /// Decides and takes every step (pgpool confirms it).
    fn act(&mut self, secs: f64, nodes: &mut [Seen]) -> RoundPlan {
        let d = self.at(secs, nodes);
        let now = self.t0 + Duration::from_secs_f64(secs);
        for s in &d.steps {
            self.memory.record(&s.node, s.action, now);
            let n = nodes.iter_mut().find(|n| n.name == s.node).unwrap();
            n.pgpool.status = match s.action {
                Action::Attach => Waiting,
                Action::Detach => Down,
            };
        }
        d
    }
}

fn steps(d: &RoundPlan) -> Vec<(u32, Action)> {
    d.steps.iter().map(|s| (s.id, s.action)).collect()
}

#[test]
fn in_step_views_need_no_action() {
    let d = Run::new().at(0.0, &healthy());
    assert_eq!(steps(&d), []);
    assert_eq!(d.primary, Some(name(0)));
    assert_eq!(d.paused, None);
}

#[test]
fn lost_standby_is_detached_and_in_sync_standby_attached() {
    let mut nodes = healthy();
    nodes[1].ours.place = Some(Lost);
    nodes[2].pgpool.status = Down;
    let d = Run::new().at(0.0, &nodes);
    assert_eq!(steps(&d), [(1, Action::Detach), (2, Action::Attach)]);
}

#[test]
fn pgpools_primary_is_never_detached_whatever_plusmoin_sees() {
    for place in [Lost, Slave, Clusterless] {
        let mut nodes = healthy();
        nodes[0].ours.place = Some(place);
        nodes[0].ours.held = true;
        let d = Run::new().at(0.0, &nodes);
        assert!(
            !d.steps.iter().any(|s| s.id == 0),
            "{place:?}: {:?}",
            d.steps
        );
        let r = &d.remarks[&name(0)];
        assert!(r.warn && r.text.contains("disagrees with pgpool"), "{r:?}");
    }
    let mut nodes = healthy();
    nodes[0].ours.held = true;
    let d = Run::new().at(0.0, &nodes);
    assert_eq!(steps(&d), []);
    assert!(d.remarks[&name(0)].text.contains("switch over first"));
}

#[test]
fn a_frozen_primary_makes_plusmoin_detach_nothing() {
    // plusmoin lost the primary and, with it, sees its slaves lost too:
    // it cannot tell its own trouble from theirs.
    let mut nodes = healthy();
    for n in &mut nodes {
        n.ours.place = Some(Lost);
    }
    let d = Run::new().at(0.0, &nodes);
    assert_eq!(steps(&d), []);
    assert!(d.remarks[&name(1)].text.contains("in doubt"));
}

#[test]
fn cut_off_from_the_primary_only_detaches_nothing_but_held_nodes() {
    let mut nodes = healthy();
    nodes[0].ours.place = Some(Lost);
    nodes[1].ours.place = Some(Lost);
    nodes[2].ours.held = true;
    let d = Run::new().at(0.0, &nodes);
    assert_eq!(steps(&d), [(2, Action::Detach)]);
}

#[test]
fn an_old_primary_back_as_a_primary_is_never_attached() {
    // pgpool failed over to db1; db0 came back, still a primary.
    let nodes = vec![
        node(0, Master, Down, Standby),
        node(1, Master, Up, Primary),
        Seen {
            ours: Ours {
                master_name: Some("db1:5432".into()),
                ..node(2, Slave, Up, Standby).ours
            },
            ..node(2, Slave, Up, Standby)
        },
    ];
    let mut run = Run::new();
    for t in 0..10 {
        let d = run.at(t as f64, &nodes);
        assert_eq!(steps(&d), [], "at {t} s");
        let r = &d.remarks[&name(0)];
        assert!(r.warn && r.text.contains("second primary"), "{r:?}");
    }
}

#[test]
fn a_standby_is_attached_only_when_it_replays_pgpools_primary() {
    // pgpool's primary is db1; db2 is in sync with db0 in plusmoin's view.
    let mut nodes = vec![
        node(0, Master, Down, Standby),
        node(1, Master, Up, Primary),
        node(2, Slave, Down, Standby),
    ];
    let d = Run::new().at(0.0, &nodes);
    assert_eq!(steps(&d), []);
    assert!(d.remarks[&name(2)].text.contains("replays db0:5432"));
    // Re-pointed: it replays db1's row now.
    nodes[2].ours.master_name = Some("db1:5432".into());
    let d = Run::new().at(0.0, &nodes);
    assert_eq!(steps(&d), [(2, Action::Attach)]);
    // Attached but replaying another master: taken out.
    nodes[2].ours.master_name = Some("db0:5432".into());
    nodes[2].pgpool.status = Up;
    let d = Run::new().at(0.0, &nodes);
    assert_eq!(steps(&d), [(2, Action::Detach)]);
}

#[test]
fn nothing_is_done_while_pgpool_fails_over() {
    let mut run = Run::new();
    let mut nodes = healthy();
    assert_eq!(steps(&run.at(0.0, &nodes)), []);
    // pgpool detached its primary: no primary.
    nodes[0].pgpool = NodeInfo {
        status: Down,
        role: Some(Standby),
        delay: None,
    };
    nodes[0].ours.place = Some(Lost);
    nodes[1].ours.place = Some(Lost);
    nodes[2].pgpool.status = Down;
    let d = run.at(1.0, &nodes);
    assert_eq!(steps(&d), []);
    assert!(d.paused.unwrap().text.contains("no primary"));
    // db1 promoted and now pgpool's primary; db2 re-pointed and in sync.
    nodes[1].ours = Ours {
        place: Some(Master),
        master_name: Some("db1:5432".into()),
        held: false,
    };
    nodes[1].pgpool.role = Some(Primary);
    nodes[2].ours.master_name = Some("db1:5432".into());
    let d = run.at(3.0, &nodes);
    assert_eq!(steps(&d), [], "primary just changed");
    assert!(d.paused.unwrap().text.contains("settle"));
    let d = run.at(3.0 + run.settings.settle.as_secs_f64(), &nodes);
    assert_eq!(steps(&d), [(2, Action::Attach)]);
}

#[test]
fn the_one_master_is_attached_only_after_pgpool_had_no_primary_for_a_while() {
    let mut run = Run::new();
    let mut nodes = healthy();
    run.at(0.0, &nodes);
    nodes[0].pgpool = NodeInfo {
        status: Down,
        role: Some(Standby),
        delay: None,
    };
    let wait = run.settings.no_primary_wait.as_secs_f64();
    assert_eq!(steps(&run.at(1.0, &nodes)), []);
    assert_eq!(steps(&run.at(wait, &nodes)), []);
    let d = run.at(1.0 + wait, &nodes);
    assert_eq!(steps(&d), [(0, Action::Attach)]);
    // Two masters: which would pgpool take? Neither.
    nodes[1].ours.place = Some(Master);
    let d = run.at(2.0 + wait, &nodes);
    assert_eq!(steps(&d), []);
    assert!(d.paused.unwrap().text.contains("2 masters"));
}

#[test]
fn a_standby_pgpool_keeps_detaching_is_backed_off_doubling() {
    let mut run = Run::new();
    let mut nodes = healthy();
    nodes[1].pgpool.status = Down;
    assert_eq!(steps(&run.act(0.0, &mut nodes)), [(1, Action::Attach)]);
    let mut attaches = 1;
    let mut last_attach = 0.0;
    let mut gaps = Vec::new();
    // pgpool detaches it again every time, plusmoin still sees it in sync.
    let mut t = 0.0;
    while t < 900.0 {
        t += 0.5;
        nodes[1].pgpool.status = Down;
        let d = run.act(t, &mut nodes);
        if !d.steps.is_empty() {
            attaches += 1;
            gaps.push(t - last_attach);
            last_attach = t;
        } else {
            let r = &d.remarks[&name(1)];
            assert!(r.warn && r.text.contains("stops attaching it"), "{r:?}");
        }
    }
    // 1, 2, 4 … 256, then 300 s: a dozen attaches in 15 minutes, not 1800.
    assert!(attaches <= 14, "{attaches} attaches: {gaps:?}");
    assert!(gaps.windows(2).all(|w| w[1] >= w[0]), "{gaps:?}");
    assert!(gaps.last().unwrap() >= &300.0, "{gaps:?}");
    assert!(run
        .memory
        .backing_off(run.t0 + Duration::from_secs_f64(t + 0.1))
        .contains_key(&name(1)));
}

#[test]
fn back_off_is_forgotten_after_staying_attached_or_really_going_away() {
    let (mut run, mut nodes) = backing_off_after_one_detach();
    assert_eq!(steps(&run.act(1.5, &mut nodes)), [(1, Action::Attach)]);
    // Stays attached for the longest back-off: forgiven.
    run.act(400.0, &mut nodes);
    nodes[1].pgpool.status = Down;
    assert_eq!(steps(&run.act(401.0, &mut nodes)), [(1, Action::Attach)]);
    // Detached again: back-off; then plusmoin sees it go away and return.
    nodes[1].pgpool.status = Down;
    assert_eq!(steps(&run.act(401.5, &mut nodes)), []);
    nodes[1].ours.place = Some(Lost);
    run.act(401.6, &mut nodes);
    nodes[1].ours.place = Some(Slave);
    assert_eq!(steps(&run.act(401.7, &mut nodes)), [(1, Action::Attach)]);
}

#[test]
fn a_stopped_and_restarted_standby_is_not_taken_for_a_fight() {
    let mut run = Run::new();
    let mut nodes = healthy();
    for round in 0..5 {
        let t = round as f64 * 10.0;
        // Stopped: pgpool detaches it, plusmoin sees it lost.
        nodes[1].pgpool.status = Down;
        nodes[1].ours.place = Some(Lost);
        run.act(t, &mut nodes);
        // Back in sync: attached at once.
        nodes[1].ours.place = Some(Slave);
        assert_eq!(
            steps(&run.act(t + 2.0, &mut nodes)),
            [(1, Action::Attach)],
            "round {round}"
        );
    }
}

#[test]
fn only_the_acting_plusmoin_acts() {
    let mut nodes = healthy();
    nodes[1].ours.place = Some(Lost);
    nodes[2].pgpool.status = Down;
    nodes[2].ours.held = false;
    let mut m = Memory::default();
    let d = decide(&nodes, false, &Settings::new(HB), Instant::now(), &mut m);
    assert_eq!(steps(&d), []);
    assert!(d.paused.unwrap().text.contains("watchdog leader"));
}

#[test]
fn held_nodes_are_detached_and_never_attached() {
    let mut nodes = healthy();
    nodes[1].ours.held = true;
    nodes[2].ours.held = true;
    nodes[2].pgpool.status = Down;
    let d = Run::new().at(0.0, &nodes);
    assert_eq!(steps(&d), [(1, Action::Detach)]);
}

#[test]
fn clusterless_and_unknown_nodes_and_quarantine_are_left_alone() {
    let mut nodes = healthy();
    nodes[1].ours.place = Some(Clusterless);
    nodes[1].pgpool.status = Down;
    nodes[2].ours.place = None;
    let d = Run::new().at(0.0, &nodes);
    assert_eq!(steps(&d), []);
    let mut nodes = healthy();
    nodes[1].ours.place = Some(Lost);
    nodes[1].pgpool.status = NodeStatus::Quarantine;
    nodes[2].pgpool.status = NodeStatus::Quarantine;
    assert_eq!(steps(&Run::new().at(0.0, &nodes)), []);
}

#[test]
fn a_pgpool_without_roles_gets_no_attach_of_standbys() {
    // A node_info template that prints no role: no primary is known.
    let mut nodes = healthy();
    for n in &mut nodes {
        n.pgpool.role = None;
    }
    nodes[1].pgpool.status = Down;
    let d = Run::new().at(0.0, &nodes);
    assert_eq!(steps(&d), []);
    assert!(d.paused.unwrap().text.contains("no primary"));
}

#[test]
fn several_primaries_in_pgpool_stop_everything() {
    let mut nodes = healthy();
    nodes[1].pgpool.role = Some(Primary);
    nodes[2].ours.place = Some(Lost);
    let d = Run::new().at(0.0, &nodes);
    assert_eq!(steps(&d), []);
    assert!(d.paused.unwrap().text.contains("several primaries"));
}

// ---- Rules a mutation run showed untested ----

/// The back-off is forgiven only once the node stayed attached for the
/// longest back-off, not after one round attached: a standby pgpool
/// detaches again a round later is still fought over no faster.
#[test]
fn one_round_attached_does_not_forgive_the_back_off() {
    let mut run = Run::new();
    let mut nodes = healthy();
    nodes[1].pgpool.status = Down;
    assert_eq!(steps(&run.act(0.0, &mut nodes)), [(1, Action::Attach)]);
    // A round with it attached (pgpool shows it waiting/up)…
    assert_eq!(steps(&run.act(0.5, &mut nodes)), []);
    // …then pgpool detaches it again: backed off, not attached at once.
    nodes[1].pgpool.status = Down;
    let d = run.act(0.6, &mut nodes);
    assert_eq!(steps(&d), [], "attached again at once: {d:?}");
    assert!(d.remarks[&name(1)]
        .text
        .contains("stops attaching it for 1 s"));
}

/// With no primary in pgpool for a while, the one master plusmoin sees is
/// attached only when it is free to be: not when it is held for
/// maintenance, and not when pgpool shows it attached already.
#[test]
fn the_sole_master_is_not_attached_when_held_or_already_attached() {
    for (held, status) in [(true, Down), (false, Up), (false, Waiting)] {
        let mut run = Run::new();
        let mut nodes = healthy();
        run.at(0.0, &nodes);
        nodes[0].pgpool = NodeInfo {
            status,
            role: Some(Standby),
            delay: None,
        };
        nodes[0].ours.held = held;
        let wait = run.settings.no_primary_wait.as_secs_f64();
        run.at(1.0, &nodes);
        let d = run.at(2.0 + wait, &nodes);
        assert_eq!(steps(&d), [], "held {held}, {status:?}");
        assert!(d.paused.is_some());
    }
}

/// An action counts as done only when pgpool's status shows it: an attach
/// when the node is up or waiting, a detach when it is down. What is
/// recorded as done is what starts the back-off.
#[test]
fn an_action_is_done_only_when_pgpools_status_shows_it() {
    assert!(Action::Attach.done(Up));
    assert!(Action::Attach.done(Waiting));
    assert!(!Action::Attach.done(Down));
    assert!(Action::Detach.done(Down));
    assert!(!Action::Detach.done(Up));
    assert!(!Action::Detach.done(Waiting));
    assert!(!Action::Detach.done(NodeStatus::Quarantine));
    assert!(!Action::Attach.done(NodeStatus::Quarantine));
}

/// The words an operator reads in the log for each action.
#[test]
fn actions_are_named_in_words() {
    assert_eq!(Action::Attach.as_str(), "attach");
    assert_eq!(Action::Detach.as_str(), "detach");
    assert_eq!(Action::Attach.past(), "attached");
    assert_eq!(Action::Detach.past(), "detached");
    assert_eq!(secs(Duration::from_millis(2500)), "2.5");
}

/// A node taken out of pgpool's mapping (pgpool.conf changed) is
/// forgotten: mapped again later, it starts with no back-off.
#[test]
fn a_node_removed_from_the_mapping_is_forgotten() {
    let (mut run, mut nodes) = backing_off_after_one_detach();
    // A round without it in the mapping.
    let without: Vec<Seen> = nodes.iter().filter(|n| n.id != 1).cloned().collect();
    run.at(0.6, &without);
    let now = run.t0 + Duration::from_secs_f64(0.6);
    assert!(run.memory.backing_off(now).is_empty());
    assert_eq!(steps(&run.act(0.7, &mut nodes)), [(1, Action::Attach)]);
}

/// The back-off the status shows ends exactly when attaching is allowed
/// again, with the time left before that.
#[test]
fn the_back_off_shown_ends_when_attaching_is_allowed_again() {
    let (mut run, mut nodes) = backing_off_after_one_detach();
    let at = |run: &Run, s: f64| run.memory.backing_off(run.t0 + Duration::from_secs_f64(s));
    assert_eq!(
        at(&run, 1.0).get(&name(1)),
        Some(&Duration::from_millis(500))
    );
    assert!(at(&run, 1.5).is_empty(), "{:?}", at(&run, 1.5));
    assert_eq!(steps(&run.act(1.5, &mut nodes)), [(1, Action::Attach)]);
}

/// Standby 1 attached by plusmoin at 0 s and detached again by pgpool at
/// 0.5 s: backing off (for 1 s) from then on.
fn backing_off_after_one_detach() -> (Run, Vec<Seen>) {
    let mut run = Run::new();
    let mut nodes = healthy();
    nodes[1].pgpool.status = Down;
    run.act(0.0, &mut nodes);
    nodes[1].pgpool.status = Down;
    assert_eq!(steps(&run.act(0.5, &mut nodes)), [], "backing off");
    (run, nodes)
}
