//! The pure decisions of the sidecar: what pgpool should show for a node
//! given plusmoin's view, and which pcp action closes the gap.
//!
//! Handlers and reconciliation share these rules, so an event and the next
//! reconciliation can never disagree about a node.

use super::pcp::NodeStatus;
use crate::cluster::Place;

/// What pgpool should show for a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// A master, or a slave in sync: pgpool should send it queries.
    Attached,
    /// Lost (down or out of sync), or held out by the operator.
    Detached,
    /// plusmoin does not know (clusterless, or before the first beat):
    /// pgpool is left as it is.
    Leave,
}

impl Want {
    pub fn of(place: Option<Place>, held: bool) -> Want {
        if held {
            return Want::Detached;
        }
        match place {
            Some(Place::Master | Place::Slave) => Want::Attached,
            Some(Place::Lost) => Want::Detached,
            Some(Place::Clusterless) | None => Want::Leave,
        }
    }
}

/// Whether plusmoin sees no server up at all. Then the likelier story is
/// that plusmoin itself is cut off (its network, its DNS), not that every
/// server died; detaching everything from pgpool on that evidence would turn
/// plusmoin's problem into an outage. pgpool's own health check still
/// detaches servers that are really gone.
pub fn blind(started: bool, places: impl IntoIterator<Item = Place>) -> bool {
    let mut any = false;
    for p in places {
        any = true;
        if matches!(p, Place::Master | Place::Slave) {
            return false;
        }
    }
    started && any
}

/// `want`, except that a blind plusmoin detaches only held nodes.
pub fn unless_blind(want: Want, blind: bool, held: bool) -> Want {
    if blind && want == Want::Detached && !held {
        Want::Leave
    } else {
        want
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Attach,
    Detach,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Attach => "attach",
            Action::Detach => "detach",
        }
    }
    /// Whether pgpool's status shows the action took effect.
    pub fn done(self, status: NodeStatus) -> bool {
        match self {
            Action::Attach => status.is_attached(),
            Action::Detach => status == NodeStatus::Down,
        }
    }
}

/// The action that makes pgpool show `want`, if any. A node in quarantine
/// or unused is pgpool's own business (the watchdog decides about it).
pub fn action(want: Want, status: NodeStatus) -> Option<Action> {
    match (want, status) {
        (Want::Attached, NodeStatus::Down) => Some(Action::Attach),
        (Want::Detached, NodeStatus::Up | NodeStatus::Waiting) => Some(Action::Detach),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn want_follows_place_and_hold_wins() {
        assert_eq!(Want::of(Some(Place::Master), false), Want::Attached);
        assert_eq!(Want::of(Some(Place::Slave), false), Want::Attached);
        assert_eq!(Want::of(Some(Place::Lost), false), Want::Detached);
        assert_eq!(Want::of(Some(Place::Clusterless), false), Want::Leave);
        assert_eq!(Want::of(None, false), Want::Leave);
        for p in [Place::Master, Place::Slave, Place::Lost, Place::Clusterless] {
            assert_eq!(Want::of(Some(p), true), Want::Detached, "{p:?}");
        }
    }

    #[test]
    fn seeing_no_server_at_all_detaches_only_held_nodes() {
        use Place::*;
        assert!(blind(true, [Lost, Lost, Clusterless]));
        assert!(!blind(true, [Lost, Slave]));
        assert!(!blind(true, [Master]));
        assert!(!blind(false, [Lost]), "before the first beat");
        assert!(!blind(true, []), "no nodes");
        assert_eq!(unless_blind(Want::Detached, true, false), Want::Leave);
        assert_eq!(unless_blind(Want::Detached, true, true), Want::Detached);
        assert_eq!(unless_blind(Want::Detached, false, false), Want::Detached);
        assert_eq!(unless_blind(Want::Attached, true, false), Want::Attached);
    }

    #[test]
    fn acts_only_when_pgpool_differs() {
        use NodeStatus::*;
        let cases = [
            (Want::Attached, Down, Some(Action::Attach)),
            (Want::Attached, Up, None),
            (Want::Attached, Waiting, None),
            (Want::Attached, Quarantine, None),
            (Want::Detached, Up, Some(Action::Detach)),
            (Want::Detached, Waiting, Some(Action::Detach)),
            (Want::Detached, Down, None),
            (Want::Detached, Quarantine, None),
            (Want::Leave, Up, None),
            (Want::Leave, Down, None),
        ];
        for (want, status, expected) in cases {
            assert_eq!(action(want, status), expected, "{want:?} {status:?}");
        }
        assert!(Action::Attach.done(Waiting) && Action::Attach.done(Up));
        assert!(!Action::Attach.done(Down));
        assert!(Action::Detach.done(Down) && !Action::Detach.done(Up));
    }
}
