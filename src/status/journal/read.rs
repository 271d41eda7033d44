//! Reading the journal back: `plusmoin events`, `/events` and the newest
//! events under `status --watch`. Only the files are read, so all of this
//! works while the daemon is down.

use super::{rotated, Record};
use crate::status::EventsOptions;
use crate::text::escape_controls;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Every whole record of the journal at `path`, oldest first (the rotated
/// file, then the current one). Lines that are no whole record (the torn
/// last line of a crash) are skipped. Missing files hold no records.
pub(crate) fn read_records(path: &Path) -> std::io::Result<Vec<Record>> {
    let mut out = Vec::new();
    for p in [rotated(path), path.to_path_buf()] {
        match open_plain(&p) {
            Ok(mut f) => {
                let mut bytes = Vec::new();
                f.read_to_end(&mut bytes)?;
                out.extend(parse_lines(&bytes));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// Opens the journal's file at `path` to read, as a plain file only: its
/// directory is the daemon user's, and a link or a FIFO planted there is
/// refused (not followed, not waited on).
fn open_plain(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_NOFOLLOW)
        .open(path)?;
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::other(format!(
            "{} is not a plain file",
            path.display()
        )));
    }
    Ok(f)
}

/// The newest `n` records of the journal at `path` (at most), oldest
/// first, read from the files' ends only.
pub(crate) fn newest(path: &Path, n: usize) -> Vec<Record> {
    const TAIL: u64 = 64 * 1024;
    let mut out: Vec<Record> = Vec::new();
    for p in [path.to_path_buf(), rotated(path)] {
        let Ok(mut f) = open_plain(&p) else { continue };
        let len = f.metadata().map_or(0, |m| m.len());
        let from = len.saturating_sub(TAIL);
        let mut bytes = Vec::new();
        if f.seek(SeekFrom::Start(from)).is_err() || f.read_to_end(&mut bytes).is_err() {
            continue;
        }
        // A first line cut by the seek is no whole record: it is skipped.
        let mut older: Vec<Record> = parse_lines(&bytes).collect();
        older.append(&mut out);
        out = older;
        if out.len() >= n {
            break;
        }
    }
    let from = out.len().saturating_sub(n);
    out.split_off(from)
}

/// The whole records in `bytes`, skipping any other line.
fn parse_lines(bytes: &[u8]) -> impl Iterator<Item = Record> + '_ {
    bytes
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .filter_map(|l| serde_json::from_slice(l).ok())
}

/// `--since`: a duration back from `now_unix` (`2h`, `90s`, `1day 2h`) or
/// a time (`2026-12-06T22:00:00Z`, `2026-12-06 22:00:00`, taken as UTC),
/// as seconds since the epoch.
pub(crate) fn parse_since(text: &str, now_unix: f64) -> Result<f64, String> {
    let text = text.trim();
    if let Ok(d) = humantime::parse_duration(text) {
        return Ok(now_unix - d.as_secs_f64());
    }
    humantime::parse_rfc3339_weak(text)
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs_f64())
        .ok_or_else(|| {
            format!(
                "--since {text:?} is neither a duration (2h, 30min, 1day) nor a time \
                 (2026-12-06T22:00:00Z, or 2026-12-06 22:00:00 in UTC)"
            )
        })
}

/// Which records to show.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Filter {
    /// At or after this time (seconds since the epoch).
    pub(crate) since: Option<f64>,
    /// `host:port`.
    pub(crate) node: Option<String>,
    pub(crate) cluster: Option<u32>,
    /// Any of these kinds.
    pub(crate) kinds: Vec<String>,
}

impl Filter {
    pub(crate) fn matches(&self, r: &Record) -> bool {
        if let Some(node) = &self.node {
            if r.node.as_deref() != Some(node.as_str()) {
                return false;
            }
        }
        if let Some(c) = self.cluster {
            if r.cluster != Some(c) {
                return false;
            }
        }
        if !self.kinds.is_empty() && !self.kinds.iter().any(|k| *k == r.kind) {
            return false;
        }
        match self.since {
            Some(since) => r.unix().is_some_and(|t| t >= since),
            None => true,
        }
    }

    /// A filter from a URL query (`since=2h&node=db:5432&cluster=0&kind=slave_down`).
    pub(crate) fn from_query(query: Option<&str>, now_unix: f64) -> Result<Filter, String> {
        let mut f = Filter::default();
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v =
                percent_decode(v).ok_or_else(|| format!("{k}: not valid percent-encoded UTF-8"))?;
            match k {
                "since" => f.since = Some(parse_since(&v, now_unix)?),
                "node" => f.node = Some(v),
                "cluster" => {
                    f.cluster = Some(
                        v.parse()
                            .map_err(|_| format!("cluster {v:?} is not a cluster number"))?,
                    )
                }
                "kind" => f.kinds.extend(v.split(',').map(str::to_string)),
                _ => {
                    return Err(format!(
                        "unknown parameter {k:?}: since, node, cluster, kind"
                    ))
                }
            }
        }
        Ok(f)
    }
}

/// A query value: `+` is a space, then `%XX` decoded.
fn percent_decode(s: &str) -> Option<String> {
    crate::text::percent_decode(&s.replace('+', " "))
}

/// The header of [`table_row`]'s table, aligned with its columns.
pub(crate) fn table_header() -> String {
    format!(
        "{:<6}  {:<24}  {:<18}  {:<7}  {:<21}  WHY",
        "ID", "TIME", "KIND", "CLUSTER", "NODE"
    )
}

/// One record as a table line: id, time, kind, cluster, node, then why and
/// the details, every character a terminal would act on escaped.
pub(crate) fn table_row(r: &Record) -> String {
    let mut why = r.why.clone().unwrap_or_default();
    for (k, v) in &r.detail {
        if !why.is_empty() {
            why.push_str("; ");
        }
        match v {
            serde_json::Value::String(s) => why.push_str(&format!("{k}={s}")),
            v => why.push_str(&format!("{k}={v}")),
        }
    }
    let line = format!(
        "{:<6}  {:<24}  {:<18}  {:<7}  {:<21}  {}",
        r.id,
        r.time,
        r.kind,
        r.cluster.map_or("-".to_string(), |c| c.to_string()),
        r.node.as_deref().unwrap_or("-"),
        why
    );
    escape_controls(line.trim_end())
}

/// One record as a JSON line, escaped as `plusmoin status` escapes.
pub(crate) fn json_line(r: &Record) -> String {
    let line = serde_json::to_string(r).unwrap_or_default();
    line.chars()
        .map(|c| {
            if c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}') {
                format!("\\u{:04x}", c as u32)
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Follows the journal's current file as `tail -f` does, across
/// rotations: the renamed file is read to its end before the new one.
pub(crate) struct Follower {
    path: PathBuf,
    file: Option<File>,
    ino: u64,
    pos: u64,
    partial: Vec<u8>,
}

impl Follower {
    /// Follows from the current end of the file.
    pub(crate) fn at_end(path: &Path) -> Follower {
        let mut f = Follower {
            path: path.to_path_buf(),
            file: None,
            ino: 0,
            pos: 0,
            partial: Vec::new(),
        };
        if let Ok(file) = open_plain(path) {
            if let Ok(m) = file.metadata() {
                use std::os::unix::fs::MetadataExt;
                f.ino = m.ino();
                f.pos = m.len();
                f.file = Some(file);
            }
        }
        f
    }

    /// The records written since the last call.
    pub(crate) fn poll(&mut self) -> Vec<Record> {
        use std::os::unix::fs::MetadataExt;
        let mut out = Vec::new();
        let now = std::fs::metadata(&self.path).ok();
        let rotated = match (&now, self.file.is_some()) {
            (Some(m), true) => m.ino() != self.ino || m.len() < self.pos,
            (Some(_), false) => true,
            (None, _) => false,
        };
        // What is left of the file being read (renamed, or still ours).
        self.read_more(&mut out);
        if rotated {
            self.partial.clear();
            self.file = open_plain(&self.path).ok();
            self.ino = self
                .file
                .as_ref()
                .and_then(|f| f.metadata().ok())
                .map_or(0, |m| m.ino());
            self.pos = 0;
            self.read_more(&mut out);
        }
        out
    }

    fn read_more(&mut self, out: &mut Vec<Record>) {
        let Some(f) = self.file.as_mut() else { return };
        if f.seek(SeekFrom::Start(self.pos)).is_err() {
            return;
        }
        let mut buf = Vec::new();
        if let Ok(n) = f.read_to_end(&mut buf) {
            self.pos += n as u64;
        }
        self.partial.extend_from_slice(&buf);
        if let Some(end) = self.partial.iter().rposition(|&b| b == b'\n') {
            let whole: Vec<u8> = self.partial.drain(..=end).collect();
            out.extend(parse_lines(&whole));
        }
    }
}

/// `plusmoin events` on the journal beside `status_file`: the records
/// `opts` selects, oldest first, then (with `follow`) new ones as they are
/// written, every 0.1 s, until killed.
pub(crate) fn events_command(status_file: &Path, opts: &EventsOptions) -> Result<(), String> {
    use std::io::Write;
    let path = super::path_for(status_file);
    let now = crate::cluster::Time::now().as_secs_f64();
    let filter = Filter {
        since: opts
            .since
            .as_deref()
            .map(|s| parse_since(s, now))
            .transpose()?,
        node: opts.node.clone(),
        cluster: opts.cluster,
        kinds: opts
            .kinds
            .iter()
            .flat_map(|k| k.split(','))
            .map(str::to_string)
            .collect(),
    };
    // The follower starts before the history is read: nothing written in
    // between is missed (a record may show twice; ids tell).
    let mut follower = opts.follow.then(|| Follower::at_end(&path));
    let records = read_records(&path)
        .map_err(|e| format!("cannot read the journal {}: {e}", path.display()))?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let show = |out: &mut std::io::StdoutLock, r: &Record| -> std::io::Result<()> {
        if opts.json {
            writeln!(out, "{}", json_line(r))
        } else {
            writeln!(out, "{}", table_row(r))
        }
    };
    let write_err = |e: std::io::Error| e.to_string();
    if !opts.json {
        writeln!(out, "{}", table_header()).map_err(write_err)?;
    }
    if records.is_empty() && !path.exists() && !rotated(&path).exists() {
        eprintln!(
            "plusmoin: no journal at {} yet (plusmoin writes it beside its status_file)",
            path.display()
        );
    }
    let mut last = 0;
    for r in records.iter().filter(|r| filter.matches(r)) {
        show(&mut out, r).map_err(write_err)?;
        last = last.max(r.id);
    }
    out.flush().map_err(write_err)?;
    let Some(follower) = follower.as_mut() else {
        return Ok(());
    };
    loop {
        std::thread::sleep(std::time::Duration::from_millis(100));
        for r in follower.poll() {
            if r.id > last && filter.matches(&r) {
                last = r.id;
                show(&mut out, &r).map_err(write_err)?;
            }
        }
        out.flush().map_err(write_err)?;
    }
}
