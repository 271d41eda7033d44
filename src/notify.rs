//! systemd readiness and watchdog notifications (sd_notify(3)), for
//! `Type=notify` / `Type=notify-reload` units (contrib/plusmoin.service).
//!
//! The daemon calls these at fixed points of its loop: `Notifier::decided`
//! after each beat's decision (`READY=1` after the first, `WATCHDOG=1` after
//! each when the unit sets `WatchdogSec=`), `Notifier::reloading` and
//! `Notifier::reloaded` around a SIGHUP reload, `Notifier::stopping` at
//! shutdown. Without `NOTIFY_SOCKET` in the environment every call is a
//! no-op. `NOTIFY_SOCKET` is left in the environment (it is needed again at
//! each reload); the unit's `NotifyAccess=main` makes systemd ignore what
//! trigger scripts might send on it.

use sd_notify::NotifyState;
use tracing::{debug, warn};

/// What systemd has been told so far.
#[derive(Debug, Default)]
pub(crate) struct Notifier {
    ready: bool,
    watchdog: bool,
}

impl Notifier {
    /// Reads `WATCHDOG_USEC` (and `WATCHDOG_PID`, when set, must be this
    /// process) once.
    pub(crate) fn from_env() -> Notifier {
        let watchdog = watchdog_from(
            std::env::var("WATCHDOG_USEC").ok().as_deref(),
            std::env::var("WATCHDOG_PID").ok().as_deref(),
            std::process::id(),
        );
        if let Some(usec) = watchdog {
            debug!(watchdog_usec = usec, "systemd watchdog enabled");
        }
        Notifier {
            ready: false,
            watchdog: watchdog.is_some(),
        }
    }

    /// A beat was decided: the first one makes the daemon ready; each one
    /// feeds the watchdog.
    pub(crate) fn decided(&mut self) {
        if !self.ready {
            self.ready = true;
            send(&[NotifyState::Ready]);
        }
        if self.watchdog {
            send(&[NotifyState::Watchdog]);
        }
    }

    /// SIGHUP received: the configuration is being read again.
    pub(crate) fn reloading(&self) {
        match NotifyState::monotonic_usec_now() {
            Ok(now) => send(&[NotifyState::Reloading, now]),
            Err(e) => {
                warn!("cannot read the monotonic clock for systemd: {e}");
                send(&[NotifyState::Reloading]);
            }
        }
    }

    /// The reload is over (taken or refused: either way a configuration is
    /// in force).
    pub(crate) fn reloaded(&self) {
        send(&[NotifyState::Ready]);
    }

    /// Shutdown started.
    pub(crate) fn stopping(&self) {
        send(&[NotifyState::Stopping]);
    }
}

/// The watchdog period when `WATCHDOG_USEC` asks for one for process `pid`.
fn watchdog_from(usec: Option<&str>, for_pid: Option<&str>, pid: u32) -> Option<u64> {
    let usec: u64 = usec?.trim().parse().ok().filter(|&u| u > 0)?;
    match for_pid {
        Some(p) if p.trim().parse::<u32>().ok() != Some(pid) => None,
        _ => Some(usec),
    }
}

fn send(state: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(false, state) {
        warn!("cannot notify systemd: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::watchdog_from;

    #[test]
    fn watchdog_needs_a_positive_period_for_this_process() {
        assert_eq!(watchdog_from(Some("5000000"), None, 7), Some(5_000_000));
        assert_eq!(
            watchdog_from(Some("5000000"), Some("7"), 7),
            Some(5_000_000)
        );
        assert_eq!(watchdog_from(Some("5000000"), Some("8"), 7), None);
        assert_eq!(watchdog_from(Some("0"), None, 7), None);
        assert_eq!(watchdog_from(Some("x"), None, 7), None);
        assert_eq!(watchdog_from(None, Some("7"), 7), None);
    }
}
