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
/// `owners` owns, is refused (see `lifecycle::safefile`).
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
struct ReloadSeen {
    /// The daemon that wrote the file.
    pid: u32,
    /// Its last reload; `None` before its first.
    #[serde(default)]
    reload: Option<ReloadReport>,
}

/// Reads who wrote the status file at `path` (the daemon's pid) and its
/// last reload (`None` before its first), however old the file is (a
/// daemon busy reloading is no stale one) and whatever else it holds.
/// Opened as [`read`] opens it.
pub fn read_reload(
    path: &Path,
    owners: &Owners,
) -> Result<(u32, Option<ReloadReport>), StatusError> {
    let text = read_bytes(path, owners)?;
    serde_json::from_slice::<ReloadSeen>(&text)
        .map(|seen| (seen.pid, seen.reload))
        .map_err(|source| StatusError::Invalid {
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

/// The status as `plusmoin status` prints it: a table an operator reads
/// at a glance, or JSON (characters a terminal acts on escaped).
pub fn render(status: &Status, table: bool) -> Result<String, serde_json::Error> {
    if table {
        Ok(self::table(status))
    } else {
        json(status).map(|mut s| {
            s.push('\n');
            s
        })
    }
}

/// What `plusmoin events` shows (README "Event history").
#[derive(Debug, Clone, Default)]
pub(crate) struct EventsOptions {
    /// `--since`: a duration back from now (`2h`) or a time.
    pub(crate) since: Option<String>,
    /// `--node HOST:PORT`.
    pub(crate) node: Option<String>,
    /// `--cluster N`.
    pub(crate) cluster: Option<u32>,
    /// `--kind`, any of them (each may be a comma-separated list).
    pub(crate) kinds: Vec<String>,
    /// JSON lines instead of a table.
    pub(crate) json: bool,
    /// Keep printing new records as they come, across rotations.
    pub(crate) follow: bool,
}

/// `plusmoin events`: the journal beside `status_file`, read from its
/// files (the daemon need not run): the records since `since` (a duration
/// back from now, `2h`, or a time), about `node` (`HOST:PORT`) and
/// `cluster`, of one of `kinds` (each may be a comma-separated list), as
/// a table or JSON lines (`json`); with `follow`, then new ones as they
/// come, across rotations.
pub fn events(
    status_file: &Path,
    since: Option<String>,
    node: Option<String>,
    cluster: Option<u32>,
    kinds: Vec<String>,
    json: bool,
    follow: bool,
) -> Result<(), String> {
    let opts = EventsOptions {
        since,
        node,
        cluster,
        kinds,
        json,
        follow,
    };
    journal::events_command(status_file, &opts)
}

/// For `benches/journal.rs`: a journal at `path` capped at `max_bytes`
/// given `per_beat` records (a flapping node's `slave_down` or `slave_up`)
/// every `beat` for `beats` beats, then closed. Returns how long each
/// beat's hand-over took, and the records written and dropped.
#[doc(hidden)]
pub fn journal_flood(
    path: &Path,
    max_bytes: u64,
    per_beat: usize,
    beats: usize,
    beat: Duration,
) -> (Vec<Duration>, u64, u64) {
    use journal::{Entry, Journal};
    let (written0, dropped0) = journal::COUNTS.load();
    let j = Journal::open(path.to_path_buf(), max_bytes, 0o640, "bench");
    let nodes: Vec<String> = (0..per_beat)
        .map(|i| format!("10.0.{}.{}:5432", i / 250, i % 250))
        .collect();
    let start = std::time::Instant::now();
    let mut took = Vec::with_capacity(beats);
    for b in 0..beats {
        let t = std::time::Instant::now();
        for (i, n) in nodes.iter().enumerate() {
            let (kind, why) = if b % 2 == 0 {
                ("slave_down", "connection refused")
            } else {
                ("slave_up", "")
            };
            let mut e = Entry::new(kind).cluster(Some((i / 10) as u32)).node(n);
            if !why.is_empty() {
                e = e.why(why);
            }
            j.record(e);
        }
        took.push(t.elapsed());
        let next = beat * (b as u32 + 1);
        if let Some(wait) = next.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
    }
    j.close(Duration::from_secs(10));
    let (written, dropped) = journal::COUNTS.load();
    (took, written - written0, dropped - dropped0)
}

/// `plusmoin status --watch`: the table redrawn every `every`, changes
/// marked and the newest events of the journal beside `status_file` under
/// it, until Ctrl-C; `read` reads the status as `plusmoin status` does.
pub fn watch(
    every: Duration,
    status_file: &Path,
    read: impl FnMut() -> Result<Status, String>,
) -> Result<(), String> {
    watch::run(every, &journal::path_for(status_file), read)
}

/// The status as a table an operator reads at a glance.
pub(crate) fn table(status: &Status) -> String {
    let rows = table_rows(status);
    let mut out = format_rows(&rows, None);
    out.push_str(&table_notes(status));
    out
}

/// The table's rows, its header first: cluster, node, role, lag,
/// lag in bytes, sync state, since, note.
pub(crate) fn table_rows(status: &Status) -> Vec<[String; 8]> {
    let mut rows: Vec<[String; 8]> = vec![[
        "CLUSTER".into(),
        "NODE".into(),
        "ROLE".into(),
        "LAG".into(),
        "LAG BYTES".into(),
        "SYNC".into(),
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
            n.lag_bytes
                .map(|b| b.to_string())
                .unwrap_or_else(|| "-".into()),
            n.sync_state
                .as_deref()
                .map(escape_controls)
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
    rows
}

/// `rows` aligned in columns, one line each. With `marked`, every line
/// begins with a mark column: `*` for the rows of those indexes.
pub(crate) fn format_rows(rows: &[[String; 8]], marked: Option<&[usize]>) -> String {
    let mut widths = [0usize; 8];
    for r in rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for (i, r) in rows.iter().enumerate() {
        let line: Vec<String> = r
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        if let Some(m) = marked {
            out.push_str(if m.contains(&i) { "* " } else { "  " });
        }
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// The lines under the table: refusals, pgpool, a failed reload, who
/// wrote it.
pub(crate) fn table_notes(status: &Status) -> String {
    let mut out = String::new();
    for c in &status.clusters {
        match &c.sync {
            Some(s) if s.waiting => out.push_str(&format!(
                "cluster {}: commits wait: {} of {} synchronous standbys connected \
                 (synchronous_standby_names {:?})\n",
                c.cluster_id,
                s.connected.unwrap_or_default(),
                s.required,
                escape_controls(&s.standby_names)
            )),
            Some(s) => {
                if let Some(p) = &s.problem {
                    out.push_str(&format!(
                        "cluster {}: synchronous standbys unknown: {}\n",
                        c.cluster_id,
                        escape_controls(p)
                    ));
                }
            }
            None => {}
        }
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
pub(crate) fn json(status: &Status) -> Result<String, serde_json::Error> {
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

pub(crate) mod journal;
mod watch;

#[cfg(test)]
mod tests;
