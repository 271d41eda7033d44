//! The journal: writing, crash safety, rotation, reading back, filters.

use super::read::*;
use super::*;
use std::time::Duration;

fn open(dir: &Path, max: u64) -> (Journal, PathBuf) {
    let path = dir.join(FILE_NAME);
    (Journal::open(path.clone(), max, 0o640, "i1"), path)
}

fn slave_down(port: u16) -> Entry {
    Entry::new("slave_down")
        .cluster(Some(0))
        .node(format!("db:{port}"))
        .why("connection refused")
}

#[test]
fn records_are_written_as_json_lines_with_growing_ids_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let (j, path) = open(dir.path(), 1 << 20);
    let a = j.record(slave_down(5433)).unwrap();
    let b = j
        .record(Entry::new("trigger_run").with("outcome", "ok"))
        .unwrap();
    assert_eq!(b.id, a.id + 1);
    j.close(Duration::from_secs(5));
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text.lines().count(), 2, "{text}");
    let back = read_records(&path).unwrap();
    assert_eq!(back[0].id, a.id);
    assert_eq!(back[0].time, a.time);
    assert_eq!(back[0].instance, "i1");
    assert_eq!(back[0].node.as_deref(), Some("db:5433"));
    assert_eq!(back[0].why.as_deref(), Some("connection refused"));
    assert_eq!(back[1].detail["outcome"], "ok");
}

/// A torn last line (a crash in the middle of a write) is skipped by the
/// reader; the next daemon starts on a fresh line and carries on the ids.
#[test]
fn a_torn_last_line_is_skipped_and_ids_carry_on_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (j, path) = open(dir.path(), 1 << 20);
    for p in 0..3 {
        j.record(slave_down(5433 + p));
    }
    j.close(Duration::from_secs(5));
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    f.write_all(br#"{"id":4,"time":"2026-12-07T00:00:00.000Z","ins"#)
        .unwrap();
    drop(f);
    assert_eq!(read_records(&path).unwrap().len(), 3);
    let (j, _) = open(dir.path(), 1 << 20);
    let s = j.record(slave_down(5440)).unwrap();
    assert_eq!(s.id, 4, "ids carry on after the highest whole record");
    j.close(Duration::from_secs(5));
    let back = read_records(&path).unwrap();
    assert_eq!(
        back.iter().map(|r| r.id).collect::<Vec<_>>(),
        [1, 2, 3, 4],
        "the torn line is skipped, the record after it is whole"
    );
}

/// At half the size setting the file is rotated; both files together stay
/// within the setting, the oldest records are dropped, ids carry on from
/// the rotated file when the current one is empty.
#[test]
fn rotation_keeps_the_size_cap_and_drops_the_oldest() {
    let dir = tempfile::tempdir().unwrap();
    let max = 64 * 1024;
    let (j, path) = open(dir.path(), max);
    for i in 0..3000 {
        j.record(slave_down(5433).with("i", i));
        if i % 100 == 0 {
            j.flush(Duration::from_secs(5));
        }
    }
    j.close(Duration::from_secs(5));
    let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
    let total = size(&path) + size(&rotated(&path));
    assert!(total <= max, "{total} bytes kept, more than {max}");
    assert!(size(&rotated(&path)) > 0, "rotated");
    let back = read_records(&path).unwrap();
    let ids: Vec<u64> = back.iter().map(|r| r.id).collect();
    assert_eq!(*ids.last().unwrap(), 3000, "the newest kept");
    assert!(ids[0] > 1, "the oldest dropped");
    assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "in order, no gap");
    let (j, _) = open(dir.path(), max);
    assert_eq!(j.record(slave_down(1)).unwrap().id, 3001);
    j.close(Duration::from_secs(5));
    // With only the rotated file left, ids carry on from its highest.
    let highest = std::fs::read_to_string(rotated(&path))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<Record>(l).ok())
        .map(|r| r.id)
        .max()
        .unwrap();
    std::fs::remove_file(&path).unwrap();
    let (j, _) = open(dir.path(), max);
    assert_eq!(j.record(slave_down(1)).unwrap().id, highest + 1);
}

#[test]
fn a_default_journal_records_nothing() {
    assert!(Journal::default().record(slave_down(1)).is_none());
}

#[test]
fn since_takes_a_duration_or_a_time() {
    let now = 1_800_000_000.0;
    assert_eq!(parse_since("2h", now).unwrap(), now - 7200.0);
    assert_eq!(parse_since("90s", now).unwrap(), now - 90.0);
    assert_eq!(
        parse_since("2027-01-15T08:00:00Z", now).unwrap(),
        1_800_000_000.0
    );
    assert_eq!(
        parse_since("2027-01-15 08:00:00", now).unwrap(),
        parse_since("2027-01-15T08:00:00Z", now).unwrap()
    );
    assert!(parse_since("yesterday-ish", now).is_err());
}

fn rec(
    id: u64,
    time: &str,
    kind: &'static str,
    cluster: Option<u32>,
    node: Option<&str>,
) -> Record {
    Record {
        id,
        time: time.into(),
        instance: "i1".into(),
        kind: kind.into(),
        cluster,
        node: node.map(str::to_string),
        why: None,
        detail: Default::default(),
    }
}

#[test]
fn filters_select_by_time_node_cluster_and_kind() {
    let rs = [
        rec(
            1,
            "2027-01-15T07:59:59.999Z",
            "slave_down",
            Some(0),
            Some("db:5433"),
        ),
        rec(
            2,
            "2027-01-15T08:00:00.000Z",
            "slave_down",
            Some(0),
            Some("db:5433"),
        ),
        rec(
            3,
            "2027-01-15T08:00:01.000Z",
            "slave_down",
            Some(1),
            Some("db:5434"),
        ),
        rec(4, "2027-01-15T08:00:02.000Z", "reload", None, None),
        rec(
            5,
            "2027-01-15T08:00:03.000Z",
            "slave_up",
            Some(0),
            Some("db:5433"),
        ),
    ];
    let ids =
        |f: &Filter| -> Vec<u64> { rs.iter().filter(|r| f.matches(r)).map(|r| r.id).collect() };
    let now = 1_800_000_000.0;
    let since = parse_since("2027-01-15T08:00:00Z", now).unwrap();
    assert_eq!(
        ids(&Filter {
            since: Some(since),
            ..Filter::default()
        }),
        [2, 3, 4, 5]
    );
    let node = Filter {
        node: Some("db:5433".into()),
        ..Filter::default()
    };
    assert_eq!(ids(&node), [1, 2, 5]);
    assert_eq!(
        ids(&Filter {
            cluster: Some(1),
            ..Filter::default()
        }),
        [3]
    );
    let kinds = Filter {
        kinds: vec!["reload".into(), "slave_up".into()],
        ..Filter::default()
    };
    assert_eq!(ids(&kinds), [4, 5]);
    let both = Filter {
        since: Some(since),
        node: Some("db:5433".into()),
        ..Filter::default()
    };
    assert_eq!(ids(&both), [2, 5]);
    let q = Filter::from_query(Some("since=2027-01-15T08%3A00%3A00Z&node=db%3A5433"), now).unwrap();
    assert_eq!(q, both);
    assert!(Filter::from_query(Some("cluster=x"), now).is_err());
    assert!(Filter::from_query(Some("colour=red"), now).is_err());
}

#[test]
fn table_rows_escape_what_a_terminal_would_act_on() {
    let mut r = rec(
        7,
        "2027-01-15T08:00:00.000Z",
        "slave_down",
        Some(0),
        Some("db:5433"),
    );
    r.why = Some("refused\x1b[2J".into());
    r.detail.insert("status".into(), 2.into());
    let row = table_row(&r);
    assert!(!row.contains('\x1b'), "{row}");
    assert!(row.contains("status=2"), "{row}");
    assert!(!json_line(&r).contains('\x1b'));
}

/// `--follow` reads a rotated file to its end, then the new one.
#[test]
fn the_follower_keeps_going_across_a_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(FILE_NAME);
    std::fs::write(&path, "").unwrap();
    let mut follower = Follower::at_end(&path);
    let line = |id| {
        format!(
            "{}\n",
            json_line(&rec(id, "2027-01-15T08:00:00.000Z", "reload", None, None))
        )
    };
    let append = |p: &Path, s: &str| {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(p)
            .unwrap();
        f.write_all(s.as_bytes()).unwrap();
    };
    append(&path, &line(1));
    let half = line(2);
    append(&path, &half[..10]);
    assert_eq!(
        follower.poll().iter().map(|r| r.id).collect::<Vec<_>>(),
        [1]
    );
    append(&path, &half[10..]);
    std::fs::rename(&path, rotated(&path)).unwrap();
    append(&path, &line(3));
    assert_eq!(
        follower.poll().iter().map(|r| r.id).collect::<Vec<_>>(),
        [2, 3]
    );
    append(&path, &line(4));
    assert_eq!(
        follower.poll().iter().map(|r| r.id).collect::<Vec<_>>(),
        [4]
    );
}

/// A disk that takes no more (here a FIFO nobody reads: the writer's
/// `write` blocks): records are dropped and counted, and recording never
/// waits.
#[test]
fn a_stuck_disk_drops_and_counts_records_and_never_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(FILE_NAME);
    nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let (_, dropped0) = COUNTS.load();
    let j = Journal::open(path.clone(), 1 << 30, 0o600, "i1");
    let n = 3 * QUEUE;
    let started = std::time::Instant::now();
    for i in 0..n {
        j.record(slave_down(5433).with("i", i));
    }
    let took = started.elapsed();
    assert!(took < Duration::from_secs(2), "recording waited: {took:?}");
    let (_, dropped) = COUNTS.load();
    assert!(
        dropped - dropped0 >= (n - QUEUE - 4096) as u64,
        "{} dropped of {n}",
        dropped - dropped0
    );
    // Unstick it: the writer ends once what it holds is read.
    let reader = std::thread::spawn(move || {
        let mut f = File::open(&path).unwrap();
        let mut sink = Vec::new();
        let _ = f.read_to_end(&mut sink);
    });
    j.close(Duration::from_secs(10));
    reader.join().unwrap();
}

#[test]
fn the_table_header_lines_up_with_the_rows() {
    let r = rec(
        12,
        "2027-01-15T08:00:00.000Z",
        "slave_down",
        Some(0),
        Some("db:5433"),
    );
    let (header, row) = (table_header(), table_row(&r));
    for col in ["TIME", "KIND", "CLUSTER", "NODE"] {
        let at = header.find(col).unwrap();
        assert_ne!(row.as_bytes()[at], b' ', "{col}:\n{header}\n{row}");
        assert_eq!(row.as_bytes()[at - 1], b' ', "{col}:\n{header}\n{row}");
    }
}

/// `status --watch` shows the newest records, read from the files' ends,
/// the rotated file's too when the current one holds fewer.
#[test]
fn newest_reads_the_last_records_across_the_rotated_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(FILE_NAME);
    let lines = |ids: std::ops::Range<u64>| -> String {
        ids.map(|id| json_line(&rec(id, "2027-01-15T08:00:00.000Z", "reload", None, None)) + "\n")
            .collect()
    };
    std::fs::write(rotated(&path), lines(1..6)).unwrap();
    std::fs::write(&path, lines(6..8)).unwrap();
    let ids = |rs: Vec<Record>| rs.iter().map(|r| r.id).collect::<Vec<_>>();
    assert_eq!(ids(newest(&path, 4)), [4, 5, 6, 7]);
    assert_eq!(ids(newest(&path, 2)), [6, 7]);
    assert_eq!(ids(newest(&path, 50)), [1, 2, 3, 4, 5, 6, 7]);
    assert!(newest(&dir.path().join("none"), 3).is_empty());
}
