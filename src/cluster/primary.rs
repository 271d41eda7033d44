//! Which master may be routed writes to (`/primary/HOST:PORT`): never two
//! of the same replication set at once, whatever plusmoin sees.
//!
//! Two masters of one replication set (a standby promoted while its old
//! primary is still up: an operator's mistake, or a failover while the old
//! primary was only cut off) is the split brain load balancers must not
//! amplify. Masters are of one replication set when they share PostgreSQL's
//! system identifier (a standby keeps its primary's); a master whose
//! identifier is not known could be of any set, so it is a rival of every
//! other master. Among rivals, at most one is allowed:
//!
//! 1. pgpool's primary, where the pgpool sidecar runs and pgpool has one of
//!    them as its primary;
//! 2. otherwise the incumbent: the master that was allowed at the previous
//!    decision and has been a master at every decision since. A newcomer
//!    is refused until the incumbent is gone;
//! 3. otherwise none: after a restart that finds two masters, or when two
//!    allowed masters become rivals (an identifier no longer known),
//!    plusmoin cannot tell, and refuses them all.
//!
//! A master with no rival is allowed. Pure: the state, the identifiers and
//! pgpool's primary come in; the refusals go out, and the guard remembers
//! which masters it allowed.

use super::{NodeName, Place, State, Time};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

/// Why a master is refused `/primary`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// pgpool has another of the rivals as its primary.
    NotPgpoolsPrimary { primary: NodeName },
    /// Another master has been allowed without interruption.
    Incumbent { incumbent: NodeName },
    /// It appeared beside the incumbent, which is no master any more, but
    /// only for `away` of the `hold` it must be away first.
    AfterSplit {
        incumbent: NodeName,
        away: Duration,
        hold: Duration,
    },
    /// No rival can be told apart (a restart that found them together, or
    /// rivals that were both allowed): `masters` of them, this one
    /// included; `some` names a few of the others.
    Undecided { masters: usize, some: Vec<NodeName> },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::NotPgpoolsPrimary { primary } => write!(
                f,
                "another master of the same replication set is up, and pgpool's primary is {primary}"
            ),
            Refusal::Incumbent { incumbent } => write!(
                f,
                "another master of the same replication set, {incumbent}, has been the primary without interruption: this one is a second primary (split brain?)"
            ),
            Refusal::AfterSplit {
                incumbent,
                away,
                hold,
            } => write!(
                f,
                "it became a master beside {incumbent}, which is no master since {:.1} s: it takes over once {incumbent} has been away for {:.1} s",
                away.as_secs_f64(),
                hold.as_secs_f64()
            ),
            Refusal::Undecided { masters, some } => {
                let mut names: Vec<String> = some.iter().map(ToString::to_string).collect();
                if masters - 1 > some.len() {
                    names.push(format!("{} more", masters - 1 - some.len()));
                }
                write!(
                    f,
                    "{masters} masters of the same replication set (with {}), and plusmoin cannot tell which is the primary: none is routed to until only one is left",
                    names.join(", ")
                )
            }
        }
    }
}

/// The memory of which masters were allowed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct PrimaryGuard {
    allowed: BTreeSet<NodeName>,
    /// Masters refused beside an incumbent: which one, and when it was
    /// last seen a master.
    newcomers: BTreeMap<NodeName, (NodeName, Time)>,
    /// Allowed masters that are no masters any more, and since when: back
    /// within the hold (a probe that failed once), they are incumbents
    /// still, unless a rival was allowed meanwhile.
    away: BTreeMap<NodeName, Time>,
}

impl PrimaryGuard {
    pub(crate) fn new() -> PrimaryGuard {
        PrimaryGuard::default()
    }

    /// The masters allowed at the last decision.
    pub(crate) fn allowed(&self) -> &BTreeSet<NodeName> {
        &self.allowed
    }

    /// Decides, for every master of `state`, whether it may answer
    /// `/primary`: the refused ones, with why. `systems`: the system
    /// identifier of each node whose identifier is known;
    /// `pgpool_primary`: pgpool's primary, where the sidecar runs; `hold`:
    /// how long an incumbent must be away before the master refused beside
    /// it takes over.
    ///
    /// Linear in the masters (a thousand nodes are decided every beat):
    /// rivals are counted by replication set, not compared pairwise.
    pub(crate) fn decide(
        &mut self,
        state: &State,
        systems: &HashMap<NodeName, u64>,
        pgpool_primary: Option<&NodeName>,
        now: Time,
        hold: Duration,
    ) -> BTreeMap<NodeName, Refusal> {
        // An allowed master away since `t` is still an incumbent: one rule
        // for whether it counts and for how long it is remembered.
        let still_incumbent = |t: &Time| now.since(*t) < hold;
        let was_allowed = |m: &NodeName| {
            self.allowed.contains(m) || self.away.get(m).is_some_and(still_incumbent)
        };
        let masters: Vec<(&NodeName, Option<u64>)> = state
            .nodes
            .iter()
            .filter(|n| n.place == Place::Master && n.cluster_id.is_some())
            .map(|n| (&n.name, systems.get(&n.name).copied()))
            .collect();
        // Per replication set (`None`: not known): how many masters, how
        // many were allowed, and a few names for the reasons.
        #[derive(Default)]
        struct Set<'a> {
            masters: usize,
            allowed: usize,
            some: Vec<&'a NodeName>,
            incumbent: Option<&'a NodeName>,
        }
        let mut sets: HashMap<Option<u64>, Set> = HashMap::new();
        let mut all = Set::default();
        for &(m, key) in &masters {
            let was = was_allowed(m);
            for set in [sets.entry(key).or_default(), &mut all] {
                set.masters += 1;
                set.allowed += usize::from(was);
                // Four: three names besides the refused master itself (a
                // fifth would never be shown, so `<= 4` is the same).
                if set.some.len() < 4 {
                    set.some.push(m);
                }
                if was && set.incumbent.is_none() {
                    set.incumbent = Some(m);
                }
            }
        }
        let pg = pgpool_primary.and_then(|p| masters.iter().find(|(m, _)| *m == p).copied());
        let none = Set::default();
        let unknown = sets.get(&None).unwrap_or(&none);
        let mut refused = BTreeMap::new();
        let mut allowed = BTreeSet::new();
        for &(m, key) in &masters {
            let was = was_allowed(m);
            // The rivals: its own set and the unknown ones, or, for an
            // unknown one, every other master.
            let (own, rest) = match key {
                Some(_) => (&sets[&key], unknown),
                None => (&all, &none),
            };
            let rivals = own.masters + rest.masters - 1;
            let rivals_allowed = own.allowed + rest.allowed - usize::from(was);
            let pg_rival =
                pg.filter(|&(p, pk)| p != m && (key.is_none() || pk.is_none() || pk == key));
            let is_pg = pg.is_some_and(|(p, _)| p == m);
            let alone = rivals == 0 || (pg_rival.is_none() && was && rivals_allowed == 0);
            if is_pg {
                allowed.insert(m.clone());
                continue;
            }
            if alone {
                match self.newcomers.get(m) {
                    Some((incumbent, seen)) if now.since(*seen) < hold => {
                        refused.insert(
                            m.clone(),
                            Refusal::AfterSplit {
                                incumbent: incumbent.clone(),
                                away: now.since(*seen),
                                hold,
                            },
                        );
                    }
                    _ => {
                        allowed.insert(m.clone());
                    }
                }
                continue;
            }
            let why = if let Some((p, _)) = pg_rival {
                Refusal::NotPgpoolsPrimary { primary: p.clone() }
            } else if let Some(i) = (!was).then(|| own.incumbent.or(rest.incumbent)).flatten() {
                Refusal::Incumbent {
                    incumbent: i.clone(),
                }
            } else {
                let mut some: Vec<NodeName> = own
                    .some
                    .iter()
                    .chain(&rest.some)
                    .filter(|r| **r != m)
                    .take(3)
                    .map(|r| (*r).clone())
                    .collect();
                some.sort();
                Refusal::Undecided {
                    masters: rivals + 1,
                    some,
                }
            };
            refused.insert(m.clone(), why);
        }
        // A newcomer is remembered while it stays a master and is not
        // allowed; each decision that refuses it for its incumbent says
        // when that one was last seen.
        self.newcomers
            .retain(|m, _| refused.contains_key(m) && !allowed.contains(m));
        for (m, why) in &refused {
            if let Refusal::Incumbent { incumbent } = why {
                self.newcomers.insert(m.clone(), (incumbent.clone(), now));
            }
        }
        // Who went away now, who is still away; gone from memory once the
        // hold has passed, once back, or once a rival was allowed.
        let is_master: BTreeSet<&NodeName> = masters.iter().map(|(m, _)| *m).collect();
        let rival_allowed = |a: &NodeName| {
            allowed.iter().any(|b| {
                a != b
                    && match (systems.get(a), systems.get(b)) {
                        (Some(x), Some(y)) => x == y,
                        _ => true,
                    }
            })
        };
        let mut away: BTreeMap<NodeName, Time> = std::mem::take(&mut self.away);
        for m in &self.allowed {
            if !is_master.contains(m) {
                away.insert(m.clone(), now);
            }
        }
        away.retain(|m, t| !is_master.contains(m) && still_incumbent(t) && !rival_allowed(m));
        self.away = away;
        self.allowed = allowed;
        refused
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::NodeState;

    fn n(port: u16) -> NodeName {
        NodeName::new("db", port)
    }

    /// A state whose masters are `masters` (each in a cluster of its own)
    /// and whose other nodes are `others` (slaves of cluster 0).
    fn state(masters: &[u16], others: &[u16]) -> State {
        let mut s = State::default();
        for (i, p) in masters.iter().enumerate() {
            let mut node = NodeState::new(n(*p), crate::cluster::Time(0));
            node.place = Place::Master;
            node.cluster_id = Some(i as u32);
            s.nodes.push(node);
        }
        for p in others {
            let mut node = NodeState::new(n(*p), crate::cluster::Time(0));
            node.place = Place::Slave;
            node.cluster_id = Some(0);
            s.nodes.push(node);
        }
        s
    }

    fn one_set(ports: &[u16]) -> HashMap<NodeName, u64> {
        ports.iter().map(|p| (n(*p), 7)).collect()
    }

    impl PrimaryGuard {
        /// A decision with no hold after a split (its own tests have one).
        fn decide_at(
            &mut self,
            state: &State,
            systems: &HashMap<NodeName, u64>,
            pg: Option<&NodeName>,
        ) -> BTreeMap<NodeName, Refusal> {
            self.decide(state, systems, pg, Time(0), Duration::ZERO)
        }
    }

    fn allowed(g: &PrimaryGuard) -> Vec<u16> {
        g.allowed().iter().map(|n| n.port).collect()
    }

    #[test]
    fn a_lone_master_is_allowed() {
        let mut g = PrimaryGuard::new();
        let refused = g.decide_at(&state(&[1], &[2, 3]), &one_set(&[1, 2, 3]), None);
        assert!(refused.is_empty());
        assert_eq!(allowed(&g), [1]);
    }

    #[test]
    fn a_lone_master_of_unknown_set_is_allowed() {
        let mut g = PrimaryGuard::new();
        let refused = g.decide_at(&state(&[1], &[2]), &HashMap::new(), None);
        assert!(refused.is_empty());
        assert_eq!(allowed(&g), [1]);
    }

    #[test]
    fn the_incumbent_keeps_it_and_the_newcomer_is_refused() {
        let mut g = PrimaryGuard::new();
        let sys = one_set(&[1, 2]);
        g.decide_at(&state(&[1], &[2]), &sys, None);
        let refused = g.decide_at(&state(&[1, 2], &[]), &sys, None);
        assert_eq!(allowed(&g), [1]);
        assert_eq!(
            refused.get(&n(2)),
            Some(&Refusal::Incumbent { incumbent: n(1) })
        );
        assert!(!refused.contains_key(&n(1)));
        // Still so at the next decision: the newcomer never becomes the
        // incumbent while the incumbent stays.
        let refused = g.decide_at(&state(&[1, 2], &[]), &sys, None);
        assert_eq!(allowed(&g), [1]);
        assert!(refused.contains_key(&n(2)));
    }

    #[test]
    fn the_newcomer_takes_over_once_the_incumbent_is_gone() {
        let mut g = PrimaryGuard::new();
        let sys = one_set(&[1, 2]);
        g.decide_at(&state(&[1], &[2]), &sys, None);
        g.decide_at(&state(&[1, 2], &[]), &sys, None);
        // The old primary is down (no longer a master).
        let refused = g.decide_at(&state(&[2], &[]), &sys, None);
        assert!(refused.is_empty());
        assert_eq!(allowed(&g), [2]);
        // It comes back as a master: now it is the newcomer.
        let refused = g.decide_at(&state(&[1, 2], &[]), &sys, None);
        assert_eq!(allowed(&g), [2]);
        assert_eq!(
            refused.get(&n(1)),
            Some(&Refusal::Incumbent { incumbent: n(2) })
        );
    }

    #[test]
    fn a_start_that_finds_two_masters_allows_neither() {
        let mut g = PrimaryGuard::new();
        let refused = g.decide_at(&state(&[1, 2], &[3]), &one_set(&[1, 2, 3]), None);
        assert!(allowed(&g).is_empty());
        assert_eq!(refused.len(), 2);
        assert_eq!(
            refused.get(&n(1)),
            Some(&Refusal::Undecided {
                masters: 2,
                some: vec![n(2)]
            })
        );
        // Nor later, while both stay.
        g.decide_at(&state(&[1, 2], &[3]), &one_set(&[1, 2, 3]), None);
        assert!(allowed(&g).is_empty());
    }

    #[test]
    fn masters_of_different_sets_are_no_rivals() {
        let mut g = PrimaryGuard::new();
        let sys: HashMap<NodeName, u64> = [(n(1), 7), (n(2), 8)].into();
        let refused = g.decide_at(&state(&[1, 2], &[]), &sys, None);
        assert!(refused.is_empty());
        assert_eq!(allowed(&g), [1, 2]);
    }

    #[test]
    fn a_master_of_unknown_set_is_everyones_rival() {
        let mut g = PrimaryGuard::new();
        // 1 and 3 are of different sets; 2's is not known.
        let sys: HashMap<NodeName, u64> = [(n(1), 7), (n(3), 8)].into();
        g.decide_at(&state(&[1, 3], &[]), &sys, None);
        assert_eq!(allowed(&g), [1, 3]);
        let refused = g.decide_at(&state(&[1, 2, 3], &[]), &sys, None);
        assert_eq!(allowed(&g), [1, 3]);
        assert!(matches!(
            refused.get(&n(2)),
            Some(Refusal::Incumbent { .. })
        ));
        // Two allowed masters whose set is no longer known: neither.
        let sys: HashMap<NodeName, u64> = [(n(1), 7)].into();
        let refused = g.decide_at(&state(&[1, 3], &[]), &sys, None);
        assert!(allowed(&g).is_empty());
        assert_eq!(refused.len(), 2);
    }

    #[test]
    fn pgpools_primary_wins_over_the_incumbent() {
        let mut g = PrimaryGuard::new();
        let sys = one_set(&[1, 2]);
        g.decide_at(&state(&[1], &[2]), &sys, None);
        let refused = g.decide_at(&state(&[1, 2], &[]), &sys, Some(&n(2)));
        assert_eq!(allowed(&g), [2]);
        assert_eq!(
            refused.get(&n(1)),
            Some(&Refusal::NotPgpoolsPrimary { primary: n(2) })
        );
        // And decides at a start that finds two masters.
        let mut g = PrimaryGuard::new();
        let refused = g.decide_at(&state(&[1, 2], &[]), &sys, Some(&n(1)));
        assert_eq!(allowed(&g), [1]);
        assert!(refused.contains_key(&n(2)));
    }

    #[test]
    fn pgpools_primary_that_is_no_master_here_changes_nothing() {
        let mut g = PrimaryGuard::new();
        let sys = one_set(&[1, 2, 3]);
        g.decide_at(&state(&[1], &[2]), &sys, Some(&n(3)));
        let refused = g.decide_at(&state(&[1, 2], &[]), &sys, Some(&n(3)));
        assert_eq!(allowed(&g), [1]);
        assert!(matches!(
            refused.get(&n(2)),
            Some(Refusal::Incumbent { .. })
        ));
    }

    #[test]
    fn a_master_lost_for_one_decision_loses_its_place() {
        let mut g = PrimaryGuard::new();
        let sys = one_set(&[1, 2]);
        g.decide_at(&state(&[1], &[]), &sys, None);
        // Lost (not a master) at one decision, while 2 is not yet up.
        let mut s = state(&[], &[]);
        let mut lost = NodeState::new(n(1), crate::cluster::Time(0));
        lost.place = Place::Lost;
        lost.cluster_id = Some(0);
        s.nodes.push(lost);
        g.decide_at(&s, &sys, None);
        // Both masters now: no incumbent left.
        let refused = g.decide_at(&state(&[1, 2], &[]), &sys, None);
        assert!(allowed(&g).is_empty());
        assert_eq!(refused.len(), 2);
    }

    #[test]
    fn a_newcomer_takes_over_only_once_the_incumbent_has_been_away_for_the_hold() {
        let mut g = PrimaryGuard::new();
        let sys = one_set(&[1, 2]);
        let hold = Duration::from_secs(3);
        let t = |s: i64| Time(s * 1_000_000);
        g.decide(&state(&[1], &[2]), &sys, None, t(0), hold);
        g.decide(&state(&[1, 2], &[]), &sys, None, t(1), hold);
        // The incumbent misses one probe: the newcomer still waits.
        let refused = g.decide(&state(&[2], &[]), &sys, None, t(2), hold);
        assert!(allowed(&g).is_empty());
        assert_eq!(
            refused.get(&n(2)),
            Some(&Refusal::AfterSplit {
                incumbent: n(1),
                away: Duration::from_secs(1),
                hold
            })
        );
        // It is back in time: it keeps the role.
        let refused = g.decide(&state(&[1, 2], &[]), &sys, None, t(3), hold);
        assert_eq!(allowed(&g), [1]);
        assert!(matches!(
            refused.get(&n(2)),
            Some(Refusal::Incumbent { .. })
        ));
        // Gone for good: after the hold, the newcomer takes over.
        g.decide(&state(&[2], &[]), &sys, None, t(4), hold);
        assert!(allowed(&g).is_empty());
        // (Last seen a master at 3 s.)
        let refused = g.decide(&state(&[2], &[]), &sys, None, t(5), hold);
        assert!(refused.contains_key(&n(2)), "2 s of the 3");
        let refused = g.decide(&state(&[2], &[]), &sys, None, t(6), hold);
        assert!(refused.is_empty());
        assert_eq!(allowed(&g), [2]);
        // pgpool's primary needs no hold.
        let mut g = PrimaryGuard::new();
        g.decide(&state(&[1], &[2]), &sys, None, t(0), hold);
        g.decide(&state(&[1, 2], &[]), &sys, None, t(1), hold);
        g.decide(&state(&[2], &[]), &sys, Some(&n(2)), t(2), hold);
        assert_eq!(allowed(&g), [2]);
    }

    #[test]
    fn a_master_that_failed_over_alone_needs_no_hold() {
        // The primary goes down before the standby is promoted: no split.
        let mut g = PrimaryGuard::new();
        let sys = one_set(&[1, 2]);
        let hold = Duration::from_secs(3);
        g.decide(&state(&[1], &[2]), &sys, None, Time(0), hold);
        g.decide(&state(&[], &[2]), &sys, None, Time(1), hold);
        let refused = g.decide(&state(&[2], &[]), &sys, None, Time(2), hold);
        assert!(refused.is_empty());
        assert_eq!(allowed(&g), [2]);
        // The old primary comes back a master at once (not rewound): the
        // new one keeps the role; the old one is the newcomer now.
        let refused = g.decide(&state(&[1, 2], &[]), &sys, None, Time(3), hold);
        assert_eq!(allowed(&g), [2]);
        assert_eq!(
            refused.get(&n(1)),
            Some(&Refusal::Incumbent { incumbent: n(2) })
        );
    }

    /// Whatever the sequence of states, identifiers and pgpool primaries,
    /// no two rivals are ever allowed together.
    #[test]
    fn never_two_rivals_allowed() {
        let mut g = PrimaryGuard::new();
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for i in 0..5000 {
            let masters: Vec<u16> = (1..=4).filter(|_| next() % 2 == 0).collect();
            let sys: HashMap<NodeName, u64> = (1..=4)
                .filter_map(|p| match next() % 4 {
                    0 => None,
                    k => Some((n(p), k % 2)),
                })
                .collect();
            let pg = match next() % 6 {
                k @ 1..=4 => Some(n(k as u16)),
                _ => None,
            };
            let refused = g.decide(
                &state(&masters, &[]),
                &sys,
                pg.as_ref(),
                Time(i),
                Duration::from_micros(3),
            );
            let ok: Vec<&NodeName> = g.allowed().iter().collect();
            for a in &ok {
                assert!(!refused.contains_key(a));
                for b in &ok {
                    let same = match (sys.get(a), sys.get(b)) {
                        (Some(x), Some(y)) => x == y,
                        _ => true,
                    };
                    assert!(a == b || !same, "{a} and {b} both allowed: {sys:?}");
                }
            }
            assert_eq!(ok.len() + refused.len(), masters.len());
        }
    }

    /// pgpool's primary of another replication set is no rival: the
    /// incumbent of this set keeps the role, its newcomer is refused for it.
    #[test]
    fn pgpools_primary_of_another_set_is_no_rival() {
        let mut g = PrimaryGuard::new();
        let sys: HashMap<NodeName, u64> = [(n(1), 7), (n(2), 7), (n(3), 8)].into();
        g.decide_at(&state(&[1, 3], &[2]), &sys, Some(&n(3)));
        assert_eq!(allowed(&g), [1, 3]);
        let refused = g.decide_at(&state(&[1, 2, 3], &[]), &sys, Some(&n(3)));
        assert_eq!(allowed(&g), [1, 3]);
        assert_eq!(
            refused.get(&n(2)),
            Some(&Refusal::Incumbent { incumbent: n(1) })
        );
        assert_eq!(refused.len(), 1);
    }

    /// An allowed master away for exactly the hold is an incumbent no
    /// more: back beside a rival then, neither is allowed. Back a moment
    /// earlier, it keeps the role.
    #[test]
    fn an_incumbent_away_for_the_whole_hold_is_one_no_more() {
        let sys = one_set(&[1, 2]);
        let hold = Duration::from_secs(3);
        let t = |s: i64| Time(s * 1_000_000);
        let away_then_back = |back: Time| {
            let mut g = PrimaryGuard::new();
            g.decide(&state(&[1], &[2]), &sys, None, t(0), hold);
            g.decide(&state(&[], &[1, 2]), &sys, None, t(1), hold);
            let refused = g.decide(&state(&[1, 2], &[]), &sys, None, back, hold);
            (allowed(&g), refused.len())
        };
        assert_eq!(away_then_back(Time(t(4).0 - 1)), (vec![1], 1));
        assert_eq!(away_then_back(t(4)), (vec![], 2));
    }

    /// What `status`, the logs and `/primary` say of a refused master.
    #[test]
    fn refusals_say_why_in_words() {
        let text = |r: Refusal| r.to_string();
        assert_eq!(
            text(Refusal::NotPgpoolsPrimary { primary: n(2) }),
            "another master of the same replication set is up, and pgpool's primary is db:2"
        );
        assert_eq!(
            text(Refusal::Incumbent { incumbent: n(1) }),
            "another master of the same replication set, db:1, has been the primary without interruption: this one is a second primary (split brain?)"
        );
        assert_eq!(
            text(Refusal::AfterSplit {
                incumbent: n(1),
                away: Duration::from_millis(1500),
                hold: Duration::from_secs(3)
            }),
            "it became a master beside db:1, which is no master since 1.5 s: it takes over once db:1 has been away for 3.0 s"
        );
        // The others are named up to a few, the rest counted.
        assert_eq!(
            text(Refusal::Undecided {
                masters: 2,
                some: vec![n(2)]
            }),
            "2 masters of the same replication set (with db:2), and plusmoin cannot tell which is the primary: none is routed to until only one is left"
        );
        assert!(text(Refusal::Undecided {
            masters: 6,
            some: vec![n(2), n(3), n(4)]
        })
        .starts_with("6 masters of the same replication set (with db:2, db:3, db:4, 2 more), "));
    }

    /// A refused newcomer that stops being a master is forgotten: promoted
    /// again later, once the incumbent is gone, it takes the role at once
    /// (a failover), not after the hold of a split.
    #[test]
    fn a_newcomer_that_stops_being_a_master_is_forgotten() {
        let mut g = PrimaryGuard::new();
        let sys = one_set(&[1, 2]);
        let hold = Duration::from_secs(30);
        let t = |s: i64| Time(s * 1_000_000);
        g.decide(&state(&[1], &[2]), &sys, None, t(0), hold);
        let refused = g.decide(&state(&[1, 2], &[]), &sys, None, t(1), hold);
        assert!(refused.contains_key(&n(2)));
        // Rewound to a standby; then the incumbent fails and it is promoted.
        g.decide(&state(&[1], &[2]), &sys, None, t(2), hold);
        g.decide(&state(&[], &[1, 2]), &sys, None, t(3), hold);
        let refused = g.decide(&state(&[2], &[1]), &sys, None, t(4), hold);
        assert!(refused.is_empty(), "{refused:?}");
        assert_eq!(allowed(&g), [2]);
    }

    /// An allowed master away for a moment stays the incumbent when the
    /// master allowed meanwhile is of another replication set: only a
    /// rival of its own set takes its place.
    #[test]
    fn an_away_incumbent_keeps_its_place_beside_other_sets_masters() {
        let mut g = PrimaryGuard::new();
        let sys: HashMap<NodeName, u64> = [(n(1), 7), (n(2), 7), (n(3), 8)].into();
        let hold = Duration::from_secs(30);
        let t = |s: i64| Time(s * 1_000_000);
        g.decide(&state(&[1, 3], &[2]), &sys, None, t(0), hold);
        assert_eq!(allowed(&g), [1, 3]);
        g.decide(&state(&[3], &[1, 2]), &sys, None, t(1), hold);
        let refused = g.decide(&state(&[1, 2, 3], &[]), &sys, None, t(2), hold);
        assert_eq!(allowed(&g), [1, 3]);
        assert_eq!(
            refused.get(&n(2)),
            Some(&Refusal::Incumbent { incumbent: n(1) })
        );
    }
}
