//! `plusmoin status --watch [SECONDS]`: the status table redrawn in place,
//! rows that changed since the last redraw marked, the newest events of
//! the journal under it.
//!
//! On a terminal the table is drawn on the alternate screen with the cursor
//! hidden; Ctrl-C (or SIGTERM) leaves it and shows the cursor again, so the
//! terminal is as it was. Elsewhere (a pipe, a file) one plain table is
//! printed per interval, without an escape code.

use super::journal::{self, Record};
use crate::payload::Status;
use crate::text::escape_controls;
use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Events shown under the table.
const EVENTS_SHOWN: usize = 8;

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop(_: nix::libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Alternate screen on, cursor hidden.
const ENTER: &str = "\x1b[?1049h\x1b[?25l";
/// Cursor shown, alternate screen off.
const LEAVE: &str = "\x1b[?25h\x1b[?1049l";

pub(super) fn run(
    every: Duration,
    journal_path: &Path,
    mut read: impl FnMut() -> Result<Status, String>,
) -> Result<(), String> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let every = every.max(Duration::from_millis(100));
    let action = SigAction::new(
        SigHandler::Handler(on_stop),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { sigaction(sig, &action) }.map_err(|e| format!("cannot handle {sig}: {e}"))?;
    }
    let tty = std::io::stdout().is_terminal();
    let mut out = std::io::stdout().lock();
    let io = |e: std::io::Error| e.to_string();
    if tty {
        out.write_all(ENTER.as_bytes()).map_err(io)?;
    }
    let mut marks = Marks::default();
    let mut result = Ok(());
    while !STOP.load(Ordering::SeqCst) {
        let started = Instant::now();
        let status = read();
        let events = journal::newest(journal_path, EVENTS_SHOWN);
        let frame = marks.frame(&status, &events, every);
        let written = if tty {
            // Home, each line cleared to its end, the rest of the screen
            // cleared: no flicker, nothing left of a longer frame.
            let body = frame.replace('\n', "\x1b[K\n");
            write!(out, "\x1b[H{body}\x1b[J")
        } else {
            writeln!(out, "{frame}")
        };
        if let Err(e) = written.and_then(|()| out.flush()) {
            // A closed pipe ends the watch.
            result = Err(io(e));
            break;
        }
        while !STOP.load(Ordering::SeqCst) && started.elapsed() < every {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    if tty {
        let _ = out.write_all(LEAVE.as_bytes());
        let _ = out.flush();
    }
    if STOP.load(Ordering::SeqCst) {
        return Ok(());
    }
    result
}

/// What the last frame showed, to mark what changed.
#[derive(Default)]
struct Marks {
    /// Each row's role, since and note, by cluster and node.
    rows: Option<HashMap<(String, String), [String; 3]>>,
    /// The newest event shown.
    last_event: Option<u64>,
}

impl Marks {
    /// The frame for `status` and `events`, rows changed since the last
    /// one marked `*` (role, since or note: not the lag, which moves every
    /// beat). The first frame marks nothing.
    fn frame(
        &mut self,
        status: &Result<Status, String>,
        events: &[Record],
        every: Duration,
    ) -> String {
        let mut out = format!(
            "plusmoin status, every {} s (Ctrl-C quits); * changed since the last redraw\n\n",
            every.as_secs_f64()
        );
        match status {
            Ok(st) => {
                let rows = super::table_rows(st);
                let now: HashMap<(String, String), [String; 3]> = rows
                    .iter()
                    .skip(1)
                    .map(|r| {
                        (
                            (r[0].clone(), r[1].clone()),
                            [r[2].clone(), r[4].clone(), r[5].clone()],
                        )
                    })
                    .collect();
                let marked: Vec<usize> = match &self.rows {
                    None => Vec::new(),
                    Some(before) => rows
                        .iter()
                        .enumerate()
                        .skip(1)
                        .filter(|(_, r)| {
                            let key = (r[0].clone(), r[1].clone());
                            before.get(&key) != now.get(&key)
                        })
                        .map(|(i, _)| i)
                        .collect(),
                };
                out.push_str(&super::format_rows(&rows, Some(&marked)));
                out.push_str(&super::table_notes(st));
                self.rows = Some(now);
            }
            Err(e) => {
                out.push_str(&format!("cannot show the status: {}\n", escape_controls(e)));
            }
        }
        out.push_str("\nnewest events (plusmoin events):\n");
        if events.is_empty() {
            out.push_str("  (none yet)\n");
        }
        let before = self.last_event;
        for r in events {
            let new = before.is_some_and(|b| r.id > b);
            out.push_str(if new { "* " } else { "  " });
            out.push_str(&journal::table_row(r));
            out.push('\n');
        }
        self.last_event = events.last().map(|r| r.id).or(before);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::testing::step;
    use crate::cluster::{NodeName, Observation, Policy, State, Time};

    fn status(slave: Observation) -> Status {
        let policy = Policy {
            max_sync_delay: Duration::from_secs(10),
            recover_sync_delay: Duration::from_secs(5),
            max_lag_bytes: None,
            recover_lag_bytes: None,
        };
        let t = Time(1_700_000_000_000_000);
        let obs = vec![
            (
                NodeName::new("db", 5432),
                Observation::Master {
                    wrote_at: t,
                    repl: None,
                },
            ),
            (NodeName::new("db", 5433), slave),
        ];
        let (s, _) = step(&State::default(), &obs, t, &policy);
        Status::new(&s, "i1", t, Duration::from_secs(1))
    }

    /// A row that changed is marked in the next frame, and only then; the
    /// first frame marks nothing; no escape code is in a frame.
    #[test]
    fn changed_rows_are_marked_once() {
        let up = status(Observation::Master {
            wrote_at: Time(1_700_000_000_000_000),
            repl: None,
        });
        let down = status(Observation::Down {
            reason: "connection refused".into(),
        });
        let mut m = Marks::default();
        let every = Duration::from_secs(1);
        let first = m.frame(&Ok(up.clone()), &[], every);
        assert!(!first.lines().any(|l| l.starts_with("* ")), "{first}");
        let second = m.frame(&Ok(down.clone()), &[], every);
        let marked: Vec<&str> = second.lines().filter(|l| l.starts_with("* ")).collect();
        assert_eq!(marked.len(), 1, "{second}");
        assert!(marked[0].contains("db:5433"), "{second}");
        let third = m.frame(&Ok(down), &[], every);
        assert!(!third.lines().any(|l| l.starts_with("* ")), "{third}");
        assert!(!third.contains('\x1b'));
    }
}
