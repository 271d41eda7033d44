//! The status file (README "Status"): written atomically every beat, read back by
//! `plusmoin status`. This is the file's writer and reader; what it holds,
//! the [`Status`] document and its entries, is shaped in [`crate::payload`].
//!
//! Other programs may read the file at any moment, so it is written to a
//! temporary file in the same directory, synced, then renamed over the old
//! one: a reader sees the old status or the new one, never half of one. When
//! writing fails (directory unwritable, disk full) the previous file stays
//! intact.

use crate::lifecycle::safefile::{self, Access, Owners};
use crate::logonce::LogOnce;
use crate::payload::{NodeEntry, ReloadReport, Status};
use crate::text::escape_controls;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;
use tracing::{error, info};

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("cannot write status file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no status file at {path} ({source}): is plusmoin running?")]
    Missing {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read status file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("status file {path} is not valid: {source}")]
    Invalid {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error(
        "plusmoin is not running (no live daemon holds {pid_file}); its last status was written at {updated_at}"
    )]
    NotRunning {
        pid_file: PathBuf,
        updated_at: String,
    },
    #[error(
        "status file {path} is {age:.0} s old, older than three beats ({limit:.0} s): \
         the daemon (pid {pid}) is not running or not beating"
    )]
    Stale {
        path: PathBuf,
        age: f64,
        limit: f64,
        pid: u32,
    },
}

/// Writes status files on a thread of its own, so that the deciding loop
/// never waits for a write and its fsyncs (milliseconds, for a thousand
/// nodes). The newest status wins: one not yet written when a newer one
/// comes is skipped (each write is whole: temporary file, fsync, rename).
/// A write that fails is logged, once until the failure changes, and the
/// previous file stays. Dropping the writer writes the last status given,
/// then ends the thread.
pub(crate) struct Writer {
    shared: Arc<WriterShared>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Used when no thread could be started: writes are made in place.
    inline: Mutex<LogOnce>,
}

#[derive(Default)]
struct WriterShared {
    slot: Mutex<Slot>,
    wake: Condvar,
}

#[derive(Default)]
struct Slot {
    next: Option<(PathBuf, u32, Arc<Status>)>,
    /// Statuses given, and statuses written or skipped.
    given: u64,
    done: u64,
    closed: bool,
}

impl Default for Writer {
    fn default() -> Self {
        Writer::new()
    }
}

impl Writer {
    pub(crate) fn new() -> Writer {
        let shared = Arc::new(WriterShared::default());
        let worker = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("plusmoin-status".into())
            .spawn(move || worker.run())
            .ok();
        Writer {
            shared,
            thread,
            inline: Mutex::new(LogOnce::default()),
        }
    }

    /// Writes `status` to `path`, mode `mode` (`status_file_mode`), soon
    /// (at once, should no thread run).
    pub(crate) fn write(&self, path: &Path, mode: u32, status: Arc<Status>) {
        if self.thread.is_none() {
            let mut errors = self.inline.lock().unwrap_or_else(|e| e.into_inner());
            write_logged(path, mode, &status, &mut errors);
            return;
        }
        let mut slot = self.shared.lock();
        if slot.next.is_some() {
            // Skipped for the newer one.
            slot.done += 1;
        }
        slot.next = Some((path.to_path_buf(), mode, status));
        slot.given += 1;
        self.shared.wake.notify_all();
    }

    /// Waits until every status given so far is written (or skipped for a
    /// newer one).
    pub(crate) fn flush(&self) {
        let mut slot = self.shared.lock();
        while slot.done < slot.given && self.thread.is_some() {
            slot = self
                .shared
                .wake
                .wait(slot)
                .unwrap_or_else(|e| e.into_inner());
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl WriterShared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn run(&self) {
        let mut errors = LogOnce::default();
        let mut slot = self.lock();
        loop {
            if let Some((path, mode, status)) = slot.next.take() {
                drop(slot);
                write_logged(&path, mode, &status, &mut errors);
                slot = self.lock();
                slot.done += 1;
                self.wake.notify_all();
            } else if slot.closed {
                return;
            } else {
                slot = self.wake.wait(slot).unwrap_or_else(|e| e.into_inner());
            }
        }
    }
}

/// [`write`], its failure logged once until it changes.
fn write_logged(path: &Path, mode: u32, status: &Status, errors: &mut LogOnce) {
    match write(path, mode, status) {
        Ok(()) => {
            if errors.cleared() {
                info!(file = %path.display(), "status file written again");
            }
        }
        Err(e) => {
            let msg = e.to_string();
            if errors.changed(&msg) {
                error!("{msg} (the previous status file is left as it was)");
            }
        }
    }
}

/// Writes `status` to `path` atomically, mode `mode`.
pub(crate) fn write(path: &Path, mode: u32, status: &Status) -> Result<(), StatusError> {
    let err = |source| StatusError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut json = serde_json::to_vec_pretty(status).map_err(|e| err(e.into()))?;
    json.push(b'\n');
    write_atomic(path, &json, mode).map_err(err)
}

/// Writes `bytes` to a temporary file beside `path`, mode `mode` (the
/// status file: `status_file_mode`, 0640 by default, so the daemon's group
/// reads it and others do not), syncs it, and renames it over `path`, then
/// syncs the directory so the rename survives a crash.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    // tempfile names its random path in errors; drop that so the same
    // failure reads the same every beat (and is logged once).
    let plain = |e: std::io::Error| {
        let msg = e.to_string();
        match msg.split_once(" at path \"") {
            Some((head, _)) => std::io::Error::new(e.kind(), head.to_string()),
            None => e,
        }
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".plusmoin-status-")
        .tempfile_in(dir)
        .map_err(plain)?;
    tmp.write_all(bytes).map_err(plain)?;
    tmp.as_file().sync_all().map_err(plain)?;
    // The mode asked, whatever the umask. On the open file, not by path:
    // whoever can write the directory could swap the temporary name for a
    // link between our write and a chmod by path.
    set_mode(tmp.as_file(), mode).map_err(plain)?;
    tmp.persist(path).map_err(|e| plain(e.error))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

fn set_mode(file: &std::fs::File, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    file.set_permissions(std::fs::Permissions::from_mode(mode))
}

/// Reads the status file, refusing one older than three beats. The daemon
/// user writes its directory: a link or a FIFO there, or a file none of
/// `owners` owns, is refused (see [`safefile`]).
///
/// [`safefile`]: crate::lifecycle::safefile
pub fn read(path: &Path, now_unix: f64, owners: &Owners) -> Result<Status, StatusError> {
    let text = read_bytes(path, owners)?;
    let status: Status = serde_json::from_slice(&text).map_err(|source| StatusError::Invalid {
        path: path.to_path_buf(),
        source,
    })?;
    let age = now_unix - status.updated_at_unix;
    let limit = 3.0 * status.heartbeat;
    if age > limit {
        return Err(StatusError::Stale {
            path: path.to_path_buf(),
            age,
            limit,
            pid: status.pid,
        });
    }
    Ok(status)
}

/// Who wrote the status file and its last reload: what `plusmoin reload`
/// compares before and after its signal.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct ReloadSeen {
    /// The daemon that wrote the file.
    pub pid: u32,
    /// Its last reload; `None` before its first.
    #[serde(default)]
    pub reload: Option<ReloadReport>,
}

/// Reads who wrote the status file at `path` and its last reload, however
/// old the file is (a daemon busy reloading is no stale one) and whatever
/// else it holds. Opened as [`read`] opens it.
pub fn read_reload(path: &Path, owners: &Owners) -> Result<ReloadSeen, StatusError> {
    let text = read_bytes(path, owners)?;
    serde_json::from_slice(&text).map_err(|source| StatusError::Invalid {
        path: path.to_path_buf(),
        source,
    })
}

fn read_bytes(path: &Path, owners: &Owners) -> Result<Vec<u8>, StatusError> {
    safefile::open(path, Access::Read, owners)
        .and_then(|mut f| {
            let mut b = Vec::new();
            f.read_to_end(&mut b).map(|_| b)
        })
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => StatusError::Missing {
                path: path.to_path_buf(),
                source,
            },
            _ => StatusError::Read {
                path: path.to_path_buf(),
                source,
            },
        })
}

/// The status as a table an operator reads at a glance.
pub fn table(status: &Status) -> String {
    let mut rows: Vec<[String; 6]> = vec![[
        "CLUSTER".into(),
        "NODE".into(),
        "ROLE".into(),
        "LAG".into(),
        "SINCE".into(),
        "NOTE".into(),
    ]];
    let held = |n: &NodeEntry| status.held.contains(&n.name);
    let row = |cluster: String, n: &NodeEntry| {
        let mut note = n.reason.clone().unwrap_or_default();
        if held(n) {
            let hold = match status.holds.iter().find(|h| h.node == n.name) {
                Some(h) => hold_note(h),
                None => "held".into(),
            };
            note = if note.is_empty() {
                hold
            } else {
                format!("{hold}; {note}")
            };
        }
        // What servers and holders said, as one inert line.
        [
            cluster,
            escape_controls(&n.name),
            escape_controls(&n.state),
            n.lag
                .map(|l| format!("{l:.1}s"))
                .unwrap_or_else(|| "-".into()),
            escape_controls(&n.since),
            escape_controls(&note),
        ]
    };
    for c in &status.clusters {
        let id = c.cluster_id.to_string();
        if c.master.is_none() {
            rows.push([
                id.clone(),
                "-".into(),
                "master".into(),
                "-".into(),
                "-".into(),
                "no master".into(),
            ]);
        }
        for n in c.master.iter().chain(&c.slaves).chain(&c.lost) {
            rows.push(row(id.clone(), n));
        }
    }
    for n in &status.clusterless {
        rows.push(row("-".into(), n));
    }
    let mut widths = [0usize; 6];
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    for (node, why) in &status.primary_refused {
        out.push_str(&format!(
            "not routed to (/primary 503): {}: {}\n",
            escape_controls(node),
            escape_controls(why)
        ));
    }
    if let Some(p) = &status.pgpool {
        out.push_str(&pgpool_lines(p));
    }
    if let Some(r) = status.reload.as_ref().filter(|r| !r.ok) {
        out.push_str(&format!(
            "last reload (at {}) failed, the configuration before it stays in force: {}\n",
            escape_controls(&r.at),
            escape_controls(r.error.as_deref().unwrap_or("no reason given"))
        ));
    }
    out.push_str(&format!(
        "instance {} (pid {}), updated {}\n",
        escape_controls(&status.instance_name),
        status.pid,
        escape_controls(&status.updated_at)
    ));
    out
}

/// The pgpool sidecar's part of the table. What pgpool and pcp said was
/// escaped when read; escaped again here since the status file may come
/// from an older daemon or from whoever can write its directory.
fn pgpool_lines(p: &crate::payload::PgpoolReport) -> String {
    let e = escape_controls;
    let mut out = format!(
        "pgpool: primary {}; {}\n",
        e(p.primary.as_deref().unwrap_or("none")),
        e(&p.watchdog)
    );
    if let Some(error) = &p.error {
        out.push_str(&format!("pgpool: cannot be asked: {}\n", e(error)));
    }
    if let Some(why) = &p.paused {
        out.push_str(&format!("pgpool: {}\n", e(why)));
    }
    for (node, why) in &p.remarks {
        out.push_str(&format!("pgpool: {}: {}\n", e(node), e(why)));
    }
    for (node, left) in &p.backing_off {
        out.push_str(&format!(
            "pgpool: {}: not attached for {left} s more\n",
            e(node)
        ));
    }
    out
}

/// The status as `plusmoin status` prints it: pretty JSON in which the
/// characters `serde_json` leaves raw (DEL, C1 controls, bidirectional
/// overrides) are `\uXXXX` escapes too: the same JSON value, nothing a
/// terminal acts on.
pub fn json(status: &Status) -> Result<String, serde_json::Error> {
    let text = serde_json::to_string_pretty(status)?;
    let raw = |c: char| {
        c.is_control() && c != '\n'
            || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if !text.chars().any(raw) {
        return Ok(text);
    }
    // Outside strings JSON is printable ASCII, spaces and newlines: every
    // such character is inside a string, where `\uXXXX` means it.
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if raw(c) {
            out.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            out.push(c);
        }
    }
    Ok(out)
}

/// `held by WHO since WHEN (REASON)`.
fn hold_note(h: &crate::payload::HoldEntry) -> String {
    let mut note = format!("held by {}", h.placed_by);
    if !h.placed_at.is_empty() {
        note.push_str(&format!(" since {}", h.placed_at));
    }
    if let Some(r) = h.reason.as_deref().filter(|r| !r.is_empty()) {
        note.push_str(&format!(" ({r})"));
    }
    note
}

/// How old a status may be before `plusmoin status` calls the daemon dead.
pub(crate) fn stale_after(heartbeat: Duration) -> Duration {
    heartbeat * 3
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::testing::step;
    use crate::cluster::{NodeName, Observation, Policy, State, Time};

    fn status_at(now: Time) -> Status {
        let policy = Policy {
            max_sync_delay: Duration::from_secs(10),
            recover_sync_delay: Duration::from_secs(5),
        };
        let obs = vec![
            (
                NodeName::new("db1", 5432),
                Observation::Master { wrote_at: now },
            ),
            (
                NodeName::new("db2", 5432),
                Observation::Down {
                    reason: "connection refused".into(),
                },
            ),
        ];
        let (s, _) = step(&State::default(), &obs, now, &policy);
        Status::new(&s, "i1", now, Duration::from_secs(1))
    }

    /// The writer thread writes the newest status given; flush waits for
    /// it; one given just before the writer is dropped is written too.
    #[test]
    fn the_writer_writes_the_newest_status_and_the_last_one_at_drop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status.json");
        let read = || -> Status { serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap() };
        let writer = Writer::new();
        for k in 1..=50 {
            writer.write(&path, 0o640, Arc::new(status_at(Time(k * 1_000_000))));
        }
        writer.flush();
        assert_eq!(read(), status_at(Time(50_000_000)));
        writer.write(&path, 0o640, Arc::new(status_at(Time(51_000_000))));
        drop(writer);
        assert_eq!(read(), status_at(Time(51_000_000)));
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "{left:?}");
    }

    #[test]
    fn written_status_reads_back_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status.json");
        let st = status_at(Time(1_000_000_000));
        write(&path, 0o640, &st).unwrap();
        write(&path, 0o640, &st).unwrap();
        let back = read(&path, 1_000.5, &Owners::me()).unwrap();
        assert_eq!(back, st);
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "only status.json remains");
    }

    /// The status file gets the mode asked (`status_file_mode`), whatever
    /// the umask and whatever mode the file had before.
    #[test]
    fn status_file_gets_the_mode_asked() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status.json");
        let mode = || std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
        let st = status_at(Time(1_000_000_000));
        write(&path, 0o640, &st).unwrap();
        assert_eq!(mode(), 0o640, "the default: the daemon's group reads it");
        write(&path, 0o644, &st).unwrap();
        assert_eq!(mode(), 0o644);
        write(&path, 0o600, &st).unwrap();
        assert_eq!(mode(), 0o600);
    }

    #[test]
    fn stale_status_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status.json");
        write(&path, 0o640, &status_at(Time(1_000_000_000))).unwrap();
        let err = read(&path, 1_003.5, &Owners::me()).unwrap_err().to_string();
        assert!(err.contains("older than three beats"), "{err}");
        assert!(read(&path, 1_002.9, &Owners::me()).is_ok());
    }

    #[test]
    fn missing_status_is_a_clear_error() {
        let err = read(Path::new("/nonexistent/status.json"), 0.0, &Owners::me())
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("no status file at /nonexistent/status.json"),
            "{err}"
        );
    }

    #[test]
    fn failed_write_keeps_previous_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status.json");
        let st = status_at(Time(1_000_000_000));
        write(&path, 0o640, &st).unwrap();
        let before = std::fs::read(&path).unwrap();
        // Make replacing `path` impossible while the file itself stays
        // writable in place, so only a write that never touches the old
        // file passes: a read-only directory for a normal user; for root
        // (who ignores modes) the file bind-mounted onto itself, since a
        // mount point cannot be renamed over.
        let _guard = match ReplaceBlocked::new(dir.path(), &path) {
            Some(g) => g,
            None => {
                eprintln!("cannot block the rename here (root without mount): skipped");
                return;
            }
        };
        let newer = status_at(Time(2_000_000_000));
        assert!(write(&path, 0o640, &newer).is_err(), "the write must fail");
        assert_eq!(
            std::fs::read(&path).unwrap(),
            before,
            "the previous file stays whole"
        );
        let leftovers = std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with(".plusmoin-status-")
            })
            .count();
        assert_eq!(leftovers, 0, "temporary file cleaned up");
    }

    /// Undoes what `new` did to block replacing the file.
    enum ReplaceBlocked {
        ReadOnlyDir(std::path::PathBuf),
        BindMount(std::path::PathBuf),
    }

    impl ReplaceBlocked {
        fn new(dir: &Path, file: &Path) -> Option<ReplaceBlocked> {
            use std::os::unix::fs::PermissionsExt;
            if !nix::unistd::geteuid().is_root() {
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o555)).ok()?;
                return Some(ReplaceBlocked::ReadOnlyDir(dir.to_path_buf()));
            }
            let ok = std::process::Command::new("mount")
                .arg("--bind")
                .arg(file)
                .arg(file)
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            ok.then(|| ReplaceBlocked::BindMount(file.to_path_buf()))
        }
    }

    impl Drop for ReplaceBlocked {
        fn drop(&mut self) {
            use std::os::unix::fs::PermissionsExt;
            match self {
                ReplaceBlocked::ReadOnlyDir(d) => {
                    let _ = std::fs::set_permissions(&*d, std::fs::Permissions::from_mode(0o755));
                }
                ReplaceBlocked::BindMount(f) => {
                    let _ = std::process::Command::new("umount").arg(&*f).status();
                }
            }
        }
    }

    #[test]
    fn table_escapes_what_servers_said() {
        let mut st = status_at(Time(1_000_000_000));
        let forged = "FATAL: no\n1        db9:5432  master\u{1b}[2J";
        st.clusterless[0].reason = Some(forged.into());
        let t = table(&st);
        assert_eq!(
            t.lines().count(),
            4,
            "header, one line per node, footer: {t}"
        );
        assert!(!t.contains('\u{1b}'), "{t}");
        assert!(
            t.contains("FATAL: no\\n1        db9:5432  master\\u{1b}[2J"),
            "{t}"
        );
    }

    /// Outside text a status file may hold (a hostile pgpool peer's name,
    /// pcp's output, a file written by `daemon_user`).
    const HOSTILE: &str = "a\u{1b}]0;pwned\u{7}b\u{1b}[2Jc\u{9b}2Jd\u{7f}e\u{202e}f\ng";

    fn hostile_status() -> Status {
        let mut st = status_at(Time(1_000_000_000));
        st.instance_name = format!("i{HOSTILE}");
        st.clusterless[0].reason = Some(HOSTILE.into());
        st.clusterless[0].since = HOSTILE.into();
        st.pgpool = Some(crate::payload::PgpoolReport {
            watchdog: format!("watchdog: leader {HOSTILE}"),
            acting: false,
            primary: Some(HOSTILE.into()),
            paused: Some(HOSTILE.into()),
            remarks: [(HOSTILE.to_string(), HOSTILE.to_string())].into(),
            backing_off: [(HOSTILE.to_string(), 4.5)].into(),
            error: Some(HOSTILE.into()),
            nodes: Default::default(),
        });
        st
    }

    fn inert(line: &str) -> bool {
        !line.chars().any(|c| {
            c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
        })
    }

    #[test]
    fn table_shows_no_outside_text_raw() {
        let t = table(&hostile_status());
        for line in t.lines() {
            assert!(inert(line), "{line:?}");
        }
        // Header, two nodes, five pgpool lines, footer: nothing split.
        assert_eq!(t.lines().count(), 9, "{t}");
        assert!(
            t.contains("pgpool: primary a\\u{1b}]0;pwned\\u{7}b\\u{1b}[2Jc\\u{9b}2Jd\\u{7f}e\\u{202e}f\\ng;"),
            "{t}"
        );
    }

    #[test]
    fn json_shows_no_outside_text_raw_and_means_the_same() {
        let st = hostile_status();
        let plain = serde_json::to_string_pretty(&st).unwrap();
        assert!(
            !inert(&plain.replace('\n', "")),
            "serde_json leaves some raw"
        );
        let shown = json(&st).unwrap();
        assert!(inert(&shown.replace('\n', "")), "{shown}");
        assert!(shown.contains(r"\u009b2J"), "{shown}");
        let back: serde_json::Value = serde_json::from_str(&shown).unwrap();
        assert_eq!(back, serde_json::to_value(&st).unwrap());
    }

    #[test]
    fn table_lists_every_node_with_role() {
        let t = table(&status_at(Time(1_000_000_000)));
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("CLUSTER  NODE"), "{t}");
        assert!(lines[1].starts_with("0        db1:5432  master"), "{t}");
        assert!(
            lines[2].starts_with("-        db2:5432  clusterless"),
            "{t}"
        );
        assert!(lines[2].ends_with("connection refused"), "{t}");
        assert!(!t.contains("pgpool"), "no pgpool section: {t}");
    }

    #[test]
    fn table_says_which_master_is_not_routed_to_and_why() {
        let mut st = status_at(Time(1_000_000_000));
        st.primary_refused
            .insert("db1:5432".into(), "a second primary\n".into());
        let t = table(&st);
        assert!(
            t.contains("not routed to (/primary 503): db1:5432: a second primary\\n\n"),
            "{t}"
        );
        assert!(!table(&status_at(Time(1_000_000_000))).contains("not routed"));
    }

    #[test]
    fn table_shows_the_pgpool_sidecars_view() {
        let mut st = status_at(Time(1_000_000_000));
        st.pgpool = Some(crate::payload::PgpoolReport {
            watchdog: "watchdog: this pgpool is STANDBY".into(),
            acting: false,
            primary: Some("db1:5432".into()),
            paused: Some("not the watchdog leader".into()),
            remarks: [("db0:5432".to_string(), "a second primary".to_string())].into(),
            backing_off: [("db3:5432".to_string(), 4.5)].into(),
            error: None,
            nodes: Default::default(),
        });
        let t = table(&st);
        for line in [
            "pgpool: primary db1:5432; watchdog: this pgpool is STANDBY",
            "pgpool: not the watchdog leader",
            "pgpool: db0:5432: a second primary",
            "pgpool: db3:5432: not attached for 4.5 s more",
        ] {
            assert!(t.contains(line), "{line:?} missing from:\n{t}");
        }
    }

    #[test]
    fn table_says_who_held_a_node_and_when() {
        let mut st = status_at(Time(1_000_000_000));
        let holds = [crate::payload::HoldEntry {
            node: "db2:5432".into(),
            placed_by: "alice@admin1 (plusmoin i2)".into(),
            placed_at: "2023-11-14T22:10:00.000Z".into(),
            reason: Some("disk swap".into()),
        }]
        .into_iter()
        .map(|e| (e.node.clone(), e))
        .collect();
        st.set_holds(&holds);
        let t = table(&st);
        let line = t.lines().find(|l| l.contains("db2:5432")).unwrap();
        assert!(
            line.ends_with(
                "held by alice@admin1 (plusmoin i2) since 2023-11-14T22:10:00.000Z (disk swap); connection refused"
            ),
            "{t}"
        );
        // Only the names (a status from an older daemon): still "held".
        st.holds.clear();
        let t = table(&st);
        let line = t.lines().find(|l| l.contains("db2:5432")).unwrap();
        assert!(line.ends_with("held; connection refused"), "{t}");
    }
}
