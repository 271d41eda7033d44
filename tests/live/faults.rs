//! Hostile conditions (issue 5): servers that refuse, lie or are tampered
//! with are contained to themselves, with one clear log line each, and no
//! password ever shows.

use crate::monitor::{assert_no_secret, names, node, Plusmoin, Timings};
use crate::wait_until;
use plusmoin::demo::sandbox::{Sandbox, SANDBOX_PASSWORD};
use serde_json::Value;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(20);

fn clusterless_reason(st: &Value, name: &str) -> Option<String> {
    st["clusterless"]
        .as_array()?
        .iter()
        .find(|n| n["name"] == name)
        .and_then(|n| n["reason"].as_str().map(String::from))
}

fn log_lines_with(p: &Plusmoin, needles: &[&str]) -> usize {
    p.log()
        .lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .count()
}

fn beats(p: &Plusmoin) -> usize {
    p.events()
        .iter()
        .filter(|e| e.kind == "plusmoin_heartbeat")
        .count()
}

#[test]
fn refused_logins_are_contained_and_logged_once_without_the_password() {
    let sb = Sandbox::start(1).expect("sandbox");
    // Three lone servers, each wrong in its own way for plusmoin.
    let wrong_pw = Sandbox::start(0).expect("sandbox");
    wrong_pw
        .sql(0, "ALTER USER plusmoin PASSWORD 'another-secret-pw'")
        .expect("alter user");
    let no_db = Sandbox::start(0).expect("sandbox");
    no_db
        .sql_in(0, "postgres", "DROP DATABASE plusmoin")
        .expect("drop db");
    let no_rights = Sandbox::start(0).expect("sandbox");
    no_rights
        .sql(
            0,
            "CREATE TABLE plusmoin_heartbeat (instance_name text PRIMARY KEY, cluster_id integer, \
             master_name text NOT NULL, beat_at timestamptz NOT NULL); \
             ALTER TABLE plusmoin_heartbeat OWNER TO postgres; \
             REVOKE ALL ON plusmoin_heartbeat FROM PUBLIC",
        )
        .expect("table without rights");
    let bad = [&wrong_pw, &no_db, &no_rights].map(|s| node(s, 0));
    let t = Timings {
        log_level: "info",
        extra_nodes: [&wrong_pw, &no_db, &no_rights]
            .iter()
            .map(|s| format!(r#"{{"host": "{}", "port": {}}}"#, s.host(), s.port(0)))
            .collect(),
        ..Timings::default()
    };
    let p = Plusmoin::start(&sb, &t, "");
    let st = p.wait_status("the three refused nodes clusterless", LONG, |st| {
        bad.iter().all(|n| clusterless_reason(st, n).is_some())
            && names(&st["clusters"][0]["slaves"]) == [node(&sb, 1)]
    });
    let reason = |n: &str| clusterless_reason(&st, n).unwrap_or_default();
    assert!(
        reason(&bad[0]).contains("password authentication failed"),
        "{}",
        reason(&bad[0])
    );
    assert!(
        reason(&bad[1]).contains("does not exist"),
        "{}",
        reason(&bad[1])
    );
    assert!(
        reason(&bad[2]).contains("permission denied"),
        "{}",
        reason(&bad[2])
    );
    assert_eq!(
        st["clusters"].as_array().map(|c| c.len()),
        Some(1),
        "{st:#}"
    );
    // Ten more beats: each refusal was logged once, not once a beat.
    let b = beats(&p);
    assert!(wait_until(LONG, || beats(&p) >= b + 10));
    for n in &bad {
        assert_eq!(
            log_lines_with(&p, &["node down", n.as_str()]),
            1,
            "one log line for {n}:\n{}",
            p.log()
        );
    }
    let kinds: Vec<String> = p.changes().iter().map(|e| e.kind.clone()).collect();
    assert_eq!(
        kinds,
        ["plusmoin_up"],
        "the healthy cluster was not disturbed"
    );
    assert_no_secret(&p, SANDBOX_PASSWORD);
    assert_no_secret(&p, "another-secret-pw");
}

fn count(p: &Plusmoin, pred: impl Fn(&crate::monitor::Ev) -> bool) -> usize {
    p.events().iter().filter(|e| pred(e)).count()
}

#[test]
fn heartbeat_table_tampering_downs_only_that_master_with_a_reason() {
    let sb = Sandbox::start(1).expect("sandbox");
    // Another cluster watched by the same plusmoin: never disturbed.
    let other = Sandbox::start(0).expect("other sandbox");
    let n_other = node(&other, 0);
    let p = Plusmoin::start(
        &sb,
        &Timings {
            log_level: "info",
            extra_nodes: vec![format!(
                r#"{{"host": "{}", "port": {}}}"#,
                other.host(),
                other.port(0)
            )],
            ..Timings::default()
        },
        "",
    );
    let (n0, n1) = (node(&sb, 0), node(&sb, 1));
    let healthy = |st: &Value| {
        st["clusters"][0]["master"]["name"] == n0.as_str()
            && names(&st["clusters"][0]["slaves"]) == [n1.as_str()]
    };
    let other_healthy = |st: &Value| {
        st["clusters"][1]["master"]["name"] == n_other.as_str()
            && st["clusters"][1]["lost"]
                .as_array()
                .is_none_or(|l| l.is_empty())
    };
    p.wait_status("healthy", LONG, |st| healthy(st) && other_healthy(st));
    let master_ups = |n: &str| count(&p, |e| e.kind == "master_up" && e.about(n));

    // Extra rows of other instances change nothing.
    sb.sql(
        0,
        "INSERT INTO plusmoin_heartbeat VALUES ('someone-else', 7, 'x:1', now() - interval '1 day')",
    )
    .expect("insert");
    let b = beats(&p);
    assert!(wait_until(LONG, || beats(&p) >= b + 6));
    assert!(healthy(&p.status()));
    assert_eq!(p.changes().len(), 2, "only plusmoin_up (twice) so far");

    // Dropped: plusmoin creates it again; the master never goes down.
    sb.sql(0, "DROP TABLE plusmoin_heartbeat").expect("drop");
    let b = beats(&p);
    assert!(wait_until(LONG, || beats(&p) >= b + 6));
    p.wait_status("healthy after the drop", LONG, healthy);
    assert!(!p.changes().iter().any(|e| e.kind == "master_down"));

    // A column missing: the master cannot be written, so it is not a usable
    // master: down, with the table in its reason; its slave, whose
    // replicated table is as broken, is lost.
    sb.sql(0, "ALTER TABLE plusmoin_heartbeat DROP COLUMN cluster_id")
        .expect("alter");
    let down = p.wait_event("master_down after the column went", LONG, |e| {
        e.kind == "master_down"
    });
    assert!(down.about(&n0));
    let st = p.wait_status("master and slave lost, with reasons", LONG, |st| {
        names(&st["clusters"][0]["lost"]) == [n0.as_str(), n1.as_str()]
    });
    assert!(names(&st["clusters"][0]["slaves"]).is_empty(), "{st:#}");
    for i in 0..2 {
        let reason = st["clusters"][0]["lost"][i]["reason"]
            .as_str()
            .unwrap_or("");
        assert!(
            reason.contains("heartbeat") || reason.contains("cluster_id"),
            "{st:#}"
        );
    }
    assert!(
        log_lines_with(&p, &["node down", &n0, "heartbeat"]) == 1,
        "{}",
        p.log()
    );

    // Repaired (dropped, so plusmoin recreates it): master_up again.
    sb.sql(0, "DROP TABLE plusmoin_heartbeat").expect("drop");
    p.wait_event("master_up after repair", LONG, |e| {
        e.kind == "master_up" && e.about(&n0)
    });
    p.wait_status("healthy after the repair", LONG, healthy);
    assert!(
        log_lines_with(&p, &["node answers again", &n0]) >= 1,
        "the recovery is logged: {}",
        p.log()
    );

    // Not writable by plusmoin any more.
    let ups = master_ups(&n0);
    sb.sql(
        0,
        "ALTER TABLE plusmoin_heartbeat OWNER TO postgres; REVOKE ALL ON plusmoin_heartbeat FROM plusmoin",
    )
    .expect("revoke");
    p.wait_status("master lost: permission denied", LONG, |st| {
        st["clusters"][0]["lost"][0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("permission denied"))
    });
    // Writable again, master_name now varchar: that stores and gives back
    // exactly what plusmoin wrote, so the master is usable again (a new
    // master_up) and its slave back in sync.
    sb.sql(0, "GRANT ALL ON plusmoin_heartbeat TO plusmoin; ALTER TABLE plusmoin_heartbeat ALTER COLUMN master_name TYPE varchar(300)")
        .expect("retype");
    assert!(
        wait_until(LONG, || master_ups(&n0) > ups),
        "a new master_up once writable with a varchar master_name: {}",
        p.log()
    );
    p.wait_status("healthy with a varchar master_name", LONG, healthy);

    // master_name as char(300): the master's write still goes in, so it
    // stays the master (no failover for a retyped column), but a slave
    // would read the name back padded, matching no node: it cannot show it
    // is in sync and is lost, its reason naming the column.
    let downs = count(&p, |e| e.kind == "master_down" && e.about(&n0));
    sb.sql(
        0,
        "ALTER TABLE plusmoin_heartbeat ALTER COLUMN master_name TYPE char(300)",
    )
    .expect("retype");
    let st = p.wait_status("the slave lost, naming the column", LONG, |st| {
        names(&st["clusters"][0]["lost"]) == [n1.as_str()]
            && st["clusters"][0]["lost"][0]["reason"]
                .as_str()
                .is_some_and(|r| r.contains("master_name column is bpchar"))
    });
    assert_eq!(st["clusters"][0]["master"]["name"], n0.as_str(), "{st:#}");
    assert_eq!(
        count(&p, |e| e.kind == "master_down" && e.about(&n0)),
        downs,
        "the master stays usable"
    );

    // The other cluster saw nothing of all this.
    assert!(other_healthy(&p.status()), "{:#}", p.status());
    let about_other: Vec<String> = p
        .changes()
        .iter()
        .filter(|e| e.cluster() == 1 && e.kind != "plusmoin_up")
        .map(|e| e.kind.clone())
        .collect();
    assert!(
        about_other.is_empty(),
        "other cluster disturbed: {about_other:?}"
    );
    assert_no_secret(&p, SANDBOX_PASSWORD);
}

#[test]
fn misbehaving_is_slave_statement_makes_the_node_unknown() {
    let sb = Sandbox::start(0).expect("sandbox");
    let n0 = node(&sb, 0);
    let cases = [
        ("SELECT NULL::boolean", "NULL"),
        ("SELECT 'yes'::text", "text"),
        ("SELECT true, false", "2 columns"),
        ("SELECT (1/0) = 1", "division by zero"),
    ];
    let runs: Vec<(Plusmoin, &str)> = cases
        .iter()
        .enumerate()
        .map(|(i, (stmt, want))| {
            let name: &'static str = ["i0", "i1", "i2", "i3"][i];
            let t = Timings {
                instance_name: name,
                ..Timings::default()
            };
            let extra = format!(r#", "is_slave_statement": "{stmt}""#);
            (Plusmoin::start(&sb, &t, &extra), *want)
        })
        .collect();
    for (p, want) in &runs {
        let st = p.wait_status("the node clusterless", LONG, |st| {
            clusterless_reason(st, &n0).is_some()
        });
        let reason = clusterless_reason(&st, &n0).unwrap_or_default();
        assert!(reason.contains(want), "expected {want:?} in {reason:?}");
        assert_eq!(st["clusters"].as_array().map(|c| c.len()), Some(0));
    }
}

#[test]
fn restart_in_the_middle_of_beats_settles_back_to_healthy() {
    let sb = Sandbox::start(2).expect("sandbox");
    let p = Plusmoin::start(&sb, &Timings::default(), "");
    let (n0, n1, n2) = (node(&sb, 0), node(&sb, 1), node(&sb, 2));
    let healthy = |st: &Value| {
        st["clusters"][0]["master"]["name"] == n0.as_str()
            && names(&st["clusters"][0]["slaves"]) == [n1.as_str(), n2.as_str()]
    };
    p.wait_status("healthy", LONG, healthy);
    for _ in 0..3 {
        sb.stop(1).expect("stop");
        sb.start_node(1).expect("start");
        sb.kill9(2).expect("kill");
        sb.start_node(2).expect("start");
    }
    p.wait_status("healthy again", LONG, healthy);
    // Whatever was seen, every slave_down of a node is followed by its
    // slave_up (its trigger may still be running when the status shows the
    // node back: wait for it to record the event).
    let settled = |changes: &[crate::monitor::Ev]| {
        [&n1, &n2].iter().all(|n| {
            let last = changes
                .iter()
                .filter(|e| e.about(n))
                .map(|e| e.kind.as_str())
                .next_back();
            matches!(last, None | Some("slave_up"))
        })
    };
    wait_until(LONG, || settled(&p.changes()));
    let changes = p.changes();
    assert!(settled(&changes), "{changes:?}");
    assert!(
        !changes.iter().any(|e| e.kind == "master_down"),
        "{changes:?}"
    );
}

/// Unmounts the test's tmpfs, also when the test fails.
struct Mount(std::path::PathBuf);
impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn unwritable_or_full_status_directory_keeps_the_previous_file_and_monitoring_goes_on() {
    use std::os::unix::fs::PermissionsExt;
    let root = nix::unistd::geteuid().is_root();
    let sb = Sandbox::start(1).expect("sandbox");
    let n1 = node(&sb, 1);
    let st_dir = tempfile::tempdir().expect("dir");
    let mount = root.then(|| {
        // A small file system of our own, to fill up.
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=512k", "tmpfs"])
            .arg(st_dir.path())
            .status()
            .expect("mount")
            .success();
        assert!(ok, "mount tmpfs");
        Mount(st_dir.path().to_path_buf())
    });
    let t = Timings {
        daemon_user: root.then_some("nobody"),
        log_level: "info",
        status_file: Some(st_dir.path().join("status.json")),
        ..Timings::default()
    };
    let mut p = Plusmoin::configure(&sb, &t, "");
    for d in [p.dir.path().to_path_buf(), p.dir.path().join("events")] {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    std::fs::set_permissions(st_dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    p.spawn();
    p.wait_status("healthy", LONG, |st| {
        names(&st["clusters"][0]["slaves"]) == [n1.as_str()]
    });
    let status_file = st_dir.path().join("status.json");
    let errors = |p: &Plusmoin| log_lines_with(p, &["cannot write status file"]);
    let again = |p: &Plusmoin| log_lines_with(p, &["status file written again"]);

    // Unwritable directory (as the unprivileged daemon user).
    std::fs::set_permissions(st_dir.path(), std::fs::Permissions::from_mode(0o555)).unwrap();
    assert!(wait_until(LONG, || errors(&p) == 1), "{}", p.log());
    let frozen = std::fs::read(&status_file).expect("previous status");
    serde_json::from_slice::<Value>(&frozen).expect("previous status is whole JSON");
    sb.stop(1).expect("stop standby");
    p.wait_event("slave_down while the status cannot be written", LONG, |e| {
        e.kind == "slave_down" && e.about(&n1)
    });
    assert_eq!(
        std::fs::read(&status_file).unwrap(),
        frozen,
        "previous file intact"
    );
    assert_eq!(errors(&p), 1, "logged once, not every beat: {}", p.log());
    std::fs::set_permissions(st_dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    assert!(wait_until(LONG, || again(&p) == 1), "{}", p.log());
    p.wait_status("the lost standby shown", LONG, |st| {
        names(&st["clusters"][0]["lost"]) == [n1.as_str()]
    });

    if mount.is_some() {
        // Disk full: fill the file system, then free it.
        let filler = st_dir.path().join("filler");
        let chunk = vec![0u8; 64 * 1024];
        let mut f = std::fs::File::create(&filler).expect("filler");
        while std::io::Write::write_all(&mut f, &chunk).is_ok() {}
        drop(f);
        assert!(wait_until(LONG, || errors(&p) == 2), "{}", p.log());
        assert!(p.log().contains("No space left on device"), "{}", p.log());
        let frozen = std::fs::read(&status_file).expect("previous status");
        serde_json::from_slice::<Value>(&frozen).expect("previous status is whole JSON");
        sb.start_node(1).expect("start standby");
        p.wait_event("slave_up while the disk is full", LONG, |e| {
            e.kind == "slave_up" && e.about(&n1)
        });
        assert_eq!(
            std::fs::read(&status_file).unwrap(),
            frozen,
            "previous file intact"
        );
        std::fs::remove_file(&filler).unwrap();
        assert!(wait_until(LONG, || again(&p) == 2), "{}", p.log());
        p.wait_status("the standby back", LONG, |st| {
            names(&st["clusters"][0]["slaves"]) == [n1.as_str()]
        });
    } else {
        eprintln!("not root: the disk-full half needs a tmpfs mount and was not run");
    }
    p.terminate();
    drop(mount);
}

#[test]
fn password_from_password_file_or_pgpassfile_never_shows() {
    use std::os::unix::fs::PermissionsExt;
    let sb = Sandbox::start(1).expect("sandbox");
    let (n0, n1) = (node(&sb, 0), node(&sb, 1));
    let secrets = tempfile::tempdir().expect("dir");
    let pw_file = secrets.path().join("password");
    std::fs::write(&pw_file, format!("{SANDBOX_PASSWORD}\n")).unwrap();
    // Readable by others: warned about.
    std::fs::set_permissions(&pw_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let pgpass = secrets.path().join("pgpass");
    std::fs::write(
        &pgpass,
        format!("127.0.0.1:*:plusmoin:plusmoin:{SANDBOX_PASSWORD}\n"),
    )
    .unwrap();
    std::fs::set_permissions(&pgpass, std::fs::Permissions::from_mode(0o600)).unwrap();

    let with_file = Timings {
        instance_name: "from-file",
        password_json: Some(format!(r#""password_file": "{}""#, pw_file.display())),
        ..Timings::default()
    };
    let a = Plusmoin::start(&sb, &with_file, "");
    let with_pgpass = Timings {
        instance_name: "from-pgpass",
        password_json: Some(String::new()),
        ..Timings::default()
    };
    let mut b = Plusmoin::configure(&sb, &with_pgpass, "");
    b.env
        .push(("PGPASSFILE".into(), pgpass.display().to_string()));
    b.spawn();
    for p in [&a, &b] {
        p.wait_status("healthy", LONG, |st| {
            st["clusters"][0]["master"]["name"] == n0.as_str()
                && names(&st["clusters"][0]["slaves"]) == [n1.as_str()]
        });
    }
    let warned = format!("{} is readable by group or others", pw_file.display());
    assert!(a.log().contains(&warned), "{}", a.log());
    let not_warned = format!("{} is readable", pgpass.display());
    assert!(
        !b.log().contains(&not_warned),
        "pgpass is 0600: {}",
        b.log()
    );
    sb.stop(1).expect("stop");
    for p in [&a, &b] {
        p.wait_event("slave_down", LONG, |e| {
            e.kind == "slave_down" && e.about(&n1)
        });
        assert_no_secret(p, SANDBOX_PASSWORD);
    }
}
