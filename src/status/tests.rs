//! The status file: its writer and reader.

use super::*;
use crate::cluster::testing::step;
use crate::cluster::{NodeName, Observation, Policy, State, Time};

fn status_at(now: Time) -> Status {
    let policy = Policy {
        max_sync_delay: Duration::from_secs(10),
        recover_sync_delay: Duration::from_secs(5),
        max_lag_bytes: None,
        recover_lag_bytes: None,
    };
    let obs = vec![
        (
            NodeName::new("db1", 5432),
            Observation::Master {
                wrote_at: now,
                repl: None,
            },
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
    !line
        .chars()
        .any(|c| c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'))
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
        t.contains(
            "pgpool: primary a\\u{1b}]0;pwned\\u{7}b\\u{1b}[2Jc\\u{9b}2Jd\\u{7f}e\\u{202e}f\\ng;"
        ),
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
