//! "Log once until it changes": a failure that repeats every beat is worth
//! one line when it appears or changes, and one line when it clears, not a
//! line a beat.

use std::collections::HashMap;
use std::hash::Hash;

/// One condition (say, "the status file cannot be written") and the
/// message last logged for it.
#[derive(Debug, Default, Clone)]
pub(crate) struct LogOnce {
    current: Option<String>,
}

impl LogOnce {
    /// Records `msg` as the current failure; true when it differs from the
    /// one last recorded, i.e. when it is worth logging.
    pub(crate) fn changed(&mut self, msg: impl AsRef<str>) -> bool {
        let msg = msg.as_ref();
        if self.current.as_deref() == Some(msg) {
            return false;
        }
        self.current = Some(msg.to_owned());
        true
    }

    /// Records that the failure is over; true when there was one, i.e. when
    /// "works again" is worth logging.
    pub(crate) fn cleared(&mut self) -> bool {
        self.current.take().is_some()
    }

    /// The failure last recorded, if it has not cleared.
    #[cfg(test)]
    pub(crate) fn current(&self) -> Option<&str> {
        self.current.as_deref()
    }
}

/// A [`LogOnce`] per key (say, per node).
#[derive(Debug, Clone)]
pub(crate) struct LogOnceMap<K> {
    current: HashMap<K, String>,
}

impl<K> Default for LogOnceMap<K> {
    fn default() -> Self {
        LogOnceMap {
            current: HashMap::new(),
        }
    }
}

impl<K: Eq + Hash + Clone> LogOnceMap<K> {
    /// [`LogOnce::changed`] for `key`.
    pub(crate) fn changed(&mut self, key: &K, msg: impl AsRef<str>) -> bool {
        let msg = msg.as_ref();
        if self.current.get(key).map(String::as_str) == Some(msg) {
            return false;
        }
        self.current.insert(key.clone(), msg.to_owned());
        true
    }

    /// [`LogOnce::cleared`] for `key`.
    pub(crate) fn cleared(&mut self, key: &K) -> bool {
        self.current.remove(key).is_some()
    }

    /// The failure last recorded for `key`.
    pub(crate) fn current(&self, key: &K) -> Option<&str> {
        self.current.get(key).map(String::as_str)
    }

    /// Forgets the keys `keep` rejects (nodes no longer configured).
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&K) -> bool) {
        self.current.retain(|k, _| keep(k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_a_failure_once_until_it_changes_and_once_when_it_clears() {
        let mut l = LogOnce::default();
        assert!(!l.cleared(), "nothing to clear yet");
        assert!(l.changed("disk full"));
        assert!(!l.changed("disk full"), "the same again: quiet");
        assert_eq!(l.current(), Some("disk full"));
        assert!(l.changed("permission denied"), "another failure: logged");
        assert!(l.cleared());
        assert!(!l.cleared(), "cleared once only");
        assert_eq!(l.current(), None);
        assert!(
            l.changed("permission denied"),
            "back after clearing: logged"
        );
    }

    #[test]
    fn keys_have_their_own_history() {
        let mut m = LogOnceMap::default();
        assert!(m.changed(&"a", "refused"));
        assert!(m.changed(&"b", "refused"));
        assert!(!m.changed(&"a", "refused"));
        assert!(m.cleared(&"a"));
        assert!(!m.cleared(&"a"));
        assert_eq!(m.current(&"b"), Some("refused"));
        m.retain(|k| *k != "b");
        assert_eq!(m.current(&"b"), None);
        assert!(m.changed(&"b", "refused"), "forgotten: logged again");
    }
}
