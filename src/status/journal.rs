//! The event journal (README "Event history"): one JSON line per thing
//! plusmoin decided or did (a trigger event, a trigger run's outcome, a
//! pgpool action, a hold placed or lifted, a reload, start and stop, a node
//! answering again), each with an id, a time, the instance, the cluster,
//! the node and why.
//!
//! The file is `events.jsonl` beside the status file. Records are handed
//! to a thread of its own through a bounded channel: the deciding loop
//! never waits for the disk. When the channel is full (a slow or stuck
//! disk) or a write fails (a full disk), records are dropped and counted
//! ([`COUNTS`]), never waited for.
//!
//! Crash safety: the writer appends whole lines with `write(2)` (a batch of
//! the records waiting at once, at most [`BATCH_BYTES`]) and `fdatasync`s
//! at most once a second, so a crash loses at most the last second of
//! records. A crash in the middle of a write leaves a torn last line: the
//! reader skips any line that is not a whole record, and the writer,
//! opening a file whose last byte is no newline, starts on a fresh line.
//! Ids grow by one per record and carry on across restarts from the
//! highest one in the files.
//!
//! Size: at half of `journal_max_bytes` the file is renamed to
//! `events.jsonl.1` (the previous `.1`, the oldest records, is dropped)
//! and a new one begun, so both together stay within the setting.

mod read;
pub(crate) use read::events_command;
pub(crate) use read::{json_line, newest, read_records, table_row, Filter};

use crate::cluster::{ClusterId, Time};
use crate::logonce::LogOnce;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The journal's file name, in the status file's directory.
pub(crate) const FILE_NAME: &str = "events.jsonl";

/// Records waiting for the writer at most: beyond, they are dropped.
const QUEUE: usize = 16 * 1024;

/// Bytes written with one `write(2)` at most.
const BATCH_BYTES: usize = 256 * 1024;

/// How often written records are synced to the disk at most.
const SYNC_EVERY: Duration = Duration::from_secs(1);

/// The journal of the status file at `status_file`.
pub(crate) fn path_for(status_file: &Path) -> PathBuf {
    status_file.with_file_name(FILE_NAME)
}

/// The rotated file beside `path` (`events.jsonl.1`).
pub(crate) fn rotated(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".1");
    PathBuf::from(p)
}

/// One record of the journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Record {
    /// Grows by one per record, across restarts.
    pub(crate) id: u64,
    /// RFC 3339, UTC, milliseconds.
    pub(crate) time: String,
    /// The plusmoin instance that wrote it (`instance_name`).
    pub(crate) instance: String,
    /// What happened: a trigger event (`slave_down`…), `trigger_run`,
    /// `pgpool_attach`, `pgpool_detach`, `pgpool_refused`, `hold_placed`,
    /// `hold_lifted`, `reload`, `start`, `stop`, `node_answers_again`.
    pub(crate) kind: Cow<'static, str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) cluster: Option<ClusterId>,
    /// `host:port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) node: Option<String>,
    /// Why, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) why: Option<String>,
    /// What else this kind carries (a run's outcome and exit status,
    /// pgpool's statuses before and after, who placed a hold…).
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub(crate) detail: serde_json::Map<String, serde_json::Value>,
}

impl Record {
    /// The time as seconds since the epoch (`None` if unreadable).
    pub(crate) fn unix(&self) -> Option<f64> {
        humantime::parse_rfc3339_weak(&self.time)
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_secs_f64())
    }
}

/// What is to be recorded; [`Journal::record`] adds the id, time and
/// instance.
#[derive(Debug, Clone, Default)]
pub(crate) struct Entry {
    pub(crate) kind: Cow<'static, str>,
    pub(crate) cluster: Option<ClusterId>,
    pub(crate) node: Option<String>,
    pub(crate) why: Option<String>,
    pub(crate) detail: serde_json::Map<String, serde_json::Value>,
}

impl Entry {
    pub(crate) fn new(kind: impl Into<Cow<'static, str>>) -> Entry {
        Entry {
            kind: kind.into(),
            ..Entry::default()
        }
    }
    pub(crate) fn cluster(mut self, c: Option<ClusterId>) -> Entry {
        self.cluster = c;
        self
    }
    pub(crate) fn node(mut self, n: impl ToString) -> Entry {
        self.node = Some(n.to_string());
        self
    }
    pub(crate) fn why(mut self, w: impl Into<String>) -> Entry {
        self.why = Some(w.into());
        self
    }
    pub(crate) fn with(mut self, key: &str, value: impl Into<serde_json::Value>) -> Entry {
        self.detail.insert(key.to_string(), value.into());
        self
    }
}

/// A record's id and time, as the trigger payload carries them.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Stamp {
    pub(crate) id: u64,
    pub(crate) time: String,
}

/// Records written and dropped by the journals of this process, for
/// `/metrics` (`plusmoin_journal_records_total{outcome}`).
#[derive(Debug, Default)]
pub(crate) struct Counts {
    written: AtomicU64,
    dropped: AtomicU64,
}

impl Counts {
    /// (written, dropped).
    pub(crate) fn load(&self) -> (u64, u64) {
        (
            self.written.load(Ordering::Relaxed),
            self.dropped.load(Ordering::Relaxed),
        )
    }
}

pub(crate) static COUNTS: Counts = Counts {
    written: AtomicU64::new(0),
    dropped: AtomicU64::new(0),
};

enum Msg {
    Record(Record),
    /// Sync what was written, then answer.
    Flush(SyncSender<()>),
}

/// The handle parts of plusmoin record through; clones share one writer.
/// The default one records nothing (and gives no stamps).
#[derive(Clone, Default)]
pub(crate) struct Journal {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    tx: SyncSender<Msg>,
    next: AtomicU64,
    instance: String,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Journal {
    /// The journal at `path`, its files together at most `max_bytes`,
    /// written with mode `mode`. Ids carry on after the highest in the
    /// files. Never fails: a file that cannot be written is logged (once
    /// until that changes) and its records counted as dropped.
    pub(crate) fn open(path: PathBuf, max_bytes: u64, mode: u32, instance: &str) -> Journal {
        let next = last_id(&path).map_or(1, |id| id + 1);
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
        let writer = FileWriter {
            path,
            half: (max_bytes / 2).max(1),
            mode,
            file: None,
            size: 0,
            errors: LogOnce::default(),
        };
        let thread = std::thread::Builder::new()
            .name("plusmoin-journal".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| tracing::error!("cannot start the journal's writer: {e}"))
            .ok();
        Journal {
            inner: Some(Arc::new(Inner {
                tx,
                next: AtomicU64::new(next),
                instance: instance.to_string(),
                thread: Mutex::new(thread),
            })),
        }
    }

    /// Records `entry` now, without waiting; its id and time (also when
    /// the record had to be dropped, so a trigger still gets them).
    pub(crate) fn record(&self, entry: Entry) -> Option<Stamp> {
        let inner = self.inner.as_ref()?;
        let id = inner.next.fetch_add(1, Ordering::Relaxed);
        let time = crate::payload::rfc3339(Time::now());
        let record = Record {
            id,
            time: time.clone(),
            instance: inner.instance.clone(),
            kind: entry.kind,
            cluster: entry.cluster,
            node: entry.node,
            why: entry.why,
            detail: entry.detail,
        };
        if inner.tx.try_send(Msg::Record(record)).is_err() {
            COUNTS.dropped.fetch_add(1, Ordering::Relaxed);
        }
        Some(Stamp { id, time })
    }

    /// Waits (at most `limit`) until what was recorded so far is written
    /// and synced.
    pub(crate) fn flush(&self, limit: Duration) {
        let Some(inner) = &self.inner else { return };
        let (ack, done) = std::sync::mpsc::sync_channel(1);
        match inner.tx.try_send(Msg::Flush(ack)) {
            Ok(()) => {
                let _ = done.recv_timeout(limit);
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {}
        }
    }

    /// Flushes (at most `limit`), then ends the writer once every clone
    /// is gone. Used at stop.
    pub(crate) fn close(self, limit: Duration) {
        self.flush(limit);
        if let Some(inner) = self.inner {
            if let Ok(inner) = Arc::try_unwrap(inner) {
                let thread = inner.thread.lock().ok().and_then(|mut t| t.take());
                drop(inner.tx);
                if let Some(t) = thread {
                    let _ = t.join();
                }
            }
        }
    }
}

/// The highest id in the journal at `path` (or, if it holds none, in its
/// rotated file), from the last records of the file.
fn last_id(path: &Path) -> Option<u64> {
    [path.to_path_buf(), rotated(path)]
        .iter()
        .find_map(|p| last_id_in(p))
}

fn last_id_in(path: &Path) -> Option<u64> {
    use std::os::unix::fs::OpenOptionsExt;
    // Never waiting on a FIFO planted there, nor following a link.
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_NOFOLLOW)
        .open(path)
        .ok()?;
    let meta = f.metadata().ok()?;
    if !meta.is_file() {
        return None;
    }
    let len = meta.len();
    let from = len.saturating_sub(BATCH_BYTES as u64 * 2);
    f.seek(SeekFrom::Start(from)).ok()?;
    let mut tail = Vec::new();
    f.read_to_end(&mut tail).ok()?;
    tail.split(|&b| b == b'\n')
        .filter_map(|l| serde_json::from_slice::<Record>(l).ok())
        .map(|r| r.id)
        .max()
}

struct FileWriter {
    path: PathBuf,
    /// Each file's size at most (half the setting).
    half: u64,
    mode: u32,
    file: Option<File>,
    size: u64,
    errors: LogOnce,
}

impl FileWriter {
    fn run(mut self, rx: Receiver<Msg>) {
        let mut buf = Vec::with_capacity(BATCH_BYTES);
        let mut acks = Vec::new();
        let mut unsynced = false;
        let mut synced_at = Instant::now();
        loop {
            let first = match rx.recv_timeout(SYNC_EVERY) {
                Ok(m) => m,
                Err(RecvTimeoutError::Timeout) => {
                    if unsynced {
                        self.sync();
                        unsynced = false;
                        synced_at = Instant::now();
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let mut lines = 0u64;
            let mut next = Some(first);
            while let Some(m) = next.take() {
                match m {
                    Msg::Record(r) => {
                        if serde_json::to_writer(&mut buf, &r).is_ok() {
                            buf.push(b'\n');
                            lines += 1;
                        }
                    }
                    Msg::Flush(ack) => acks.push(ack),
                }
                if buf.len() < BATCH_BYTES {
                    next = rx.try_recv().ok();
                }
            }
            if lines > 0 {
                unsynced |= self.write(&buf, lines);
                buf.clear();
            }
            if unsynced && (!acks.is_empty() || synced_at.elapsed() >= SYNC_EVERY) {
                self.sync();
                unsynced = false;
                synced_at = Instant::now();
            }
            for ack in acks.drain(..) {
                let _ = ack.try_send(());
            }
        }
        if unsynced {
            self.sync();
        }
    }

    fn sync(&mut self) {
        if let Some(f) = &self.file {
            let _ = f.sync_data();
        }
    }

    /// Writes `buf` (`lines` whole lines); whether it was.
    fn write(&mut self, buf: &[u8], lines: u64) -> bool {
        match self.try_write(buf) {
            Ok(()) => {
                COUNTS.written.fetch_add(lines, Ordering::Relaxed);
                if self.errors.cleared() {
                    tracing::info!(file = %self.path.display(), "journal written again");
                }
                true
            }
            Err(e) => {
                COUNTS.dropped.fetch_add(lines, Ordering::Relaxed);
                // Opened again (and a torn line ended) next time.
                self.file = None;
                let msg = format!(
                    "cannot write the journal {}: {e}; its records are dropped (counted in plusmoin_journal_records_total)",
                    self.path.display()
                );
                if self.errors.changed(&msg) {
                    tracing::error!("{msg}");
                }
                false
            }
        }
    }

    fn try_write(&mut self, buf: &[u8]) -> std::io::Result<()> {
        if self.file.is_some() && self.size > 0 && self.size + buf.len() as u64 > self.half {
            self.sync();
            self.file = None;
            std::fs::rename(&self.path, rotated(&self.path))?;
        }
        if self.file.is_none() {
            self.open()?;
            if self.size > 0 && self.size + buf.len() as u64 > self.half {
                self.file = None;
                std::fs::rename(&self.path, rotated(&self.path))?;
                self.open()?;
            }
        }
        let Some(f) = self.file.as_mut() else {
            return Err(std::io::Error::other("no file"));
        };
        f.write_all(buf)?;
        self.size += buf.len() as u64;
        Ok(())
    }

    /// Opens the file to append, ending a torn last line first.
    fn open(&mut self) -> std::io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(self.mode)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&self.path)?;
        let mut size = f.metadata()?.len();
        if size > 0 {
            let mut last = [0u8; 1];
            f.seek(SeekFrom::Start(size - 1))?;
            f.read_exact(&mut last)?;
            if last[0] != b'\n' {
                f.write_all(b"\n")?;
                size += 1;
            }
        }
        self.size = size;
        self.file = Some(f);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
