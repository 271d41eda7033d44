//! The sandbox's operations against real servers: replication, stop/start,
//! kill -9, freeze/thaw, failover (promote, re-point, pg_rewind) and the
//! cleanup on drop.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use plusmoin::demo::sandbox::{
    pg_bin_dir, Sandbox, SANDBOX_DBNAME, SANDBOX_PASSWORD, SANDBOX_USER,
};
use plusmoin_kit::sandbox::SandboxExt;

use crate::wait_until;

const REPLICATION: Duration = Duration::from_secs(30);

fn start(standbys: usize) -> Sandbox {
    let began = Instant::now();
    match Sandbox::start(standbys) {
        Ok(sb) => {
            eprintln!(
                "sandbox with {} nodes in {} started in {:?}",
                sb.len(),
                sb.dir().display(),
                began.elapsed()
            );
            sb
        }
        Err(e) => panic!("sandbox start: {e}"),
    }
}

fn ok<T, E: std::fmt::Display>(what: &str, r: Result<T, E>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{what}: {e}"),
    }
}

/// Runs `sql` on node `i` as plusmoin over TCP with its password, as the
/// daemon will; returns the first column of each row, one per line.
fn as_plusmoin(sb: &Sandbox, i: usize, password: &str, sql: &str) -> Result<String, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let (client, conn) = tokio_postgres::Config::new()
            .host(sb.host())
            .port(sb.port(i))
            .user(SANDBOX_USER)
            .password(password)
            .dbname(SANDBOX_DBNAME)
            .connect_timeout(Duration::from_secs(5))
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(|e| e.to_string())?;
        let conn = tokio::spawn(conn);
        let messages = client.simple_query(sql).await.map_err(|e| e.to_string())?;
        drop(client);
        let _ = conn.await;
        let rows: Vec<String> = messages
            .iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => {
                    Some(r.get(0).unwrap_or("NULL").to_owned())
                }
                _ => None,
            })
            .collect();
        Ok(rows.join("\n"))
    })
}

/// The value node `i` answers for `sql`, or "" while it cannot answer.
fn answer(sb: &Sandbox, i: usize, sql: &str) -> String {
    sb.sql(i, sql).unwrap_or_default()
}

/// Waits until node `i` answers `want` to `sql`; panics with the last answer.
fn wait_answer(sb: &Sandbox, i: usize, sql: &str, want: &str) {
    let mut last = String::new();
    let ok = wait_until(REPLICATION, || {
        last = match sb.sql(i, sql) {
            Ok(s) => s,
            Err(e) => e.to_string(),
        };
        last == want
    });
    assert!(ok, "node {i}: {sql} never gave {want:?}; last: {last:?}");
}

/// Live processes whose command line mentions `needle` (the sandbox's
/// directory name is in every server process's title via cluster_name).
fn processes_mentioning(needle: &str) -> Vec<(i32, String, char)> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for pid in entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
    {
        let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&raw).replace('\0', " ");
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rsplit_once(')')?.1.trim_start().chars().next())
            .unwrap_or('?');
        if cmd.contains(needle) && !matches!(state, 'Z' | 'X') && pid != std::process::id() as i32 {
            found.push((pid, cmd, state));
        }
    }
    found
}

/// The pid on the first line of node `i`'s postmaster.pid.
fn postmaster_pid(sb: &Sandbox, i: usize) -> i32 {
    let path = sb.dir().join(format!("node{i}/postmaster.pid"));
    let text = ok("read postmaster.pid", std::fs::read_to_string(&path));
    match text.lines().next().and_then(|l| l.trim().parse().ok()) {
        Some(pid) => pid,
        None => panic!("no pid in {}: {text:?}", path.display()),
    }
}

fn dir_name(sb: &Sandbox) -> String {
    match sb.dir().file_name() {
        Some(n) => n.to_string_lossy().into_owned(),
        None => panic!("sandbox dir {} has no name", sb.dir().display()),
    }
}

/// Sends an SSLRequest and reads the one-byte answer ('N' or 'S'), giving
/// up after `timeout`: tells a hung server from an answering one.
fn ssl_probe(port: u16, timeout: Duration) -> std::io::Result<u8> {
    let mut stream = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])?;
    let mut byte = [0u8; 1];
    stream.read_exact(&mut byte)?;
    Ok(byte[0])
}

#[test]
fn bin_dir_has_the_tools() {
    let bin = ok("pg_bin_dir", pg_bin_dir());
    for tool in ["pg_ctl", "initdb", "pg_basebackup", "pg_rewind", "psql"] {
        assert!(bin.join(tool).is_file(), "{} lacks {tool}", bin.display());
    }
}

#[test]
fn primary_and_standbys_replicate() {
    let sb = start(2);
    assert_eq!(sb.len(), 3);
    assert_eq!(sb.host(), "127.0.0.1");
    let ports: std::collections::BTreeSet<u16> = (0..3).map(|i| sb.port(i)).collect();
    assert_eq!(ports.len(), 3, "ports not distinct: {ports:?}");
    if std::path::Path::new("/dev/shm").is_dir() {
        assert!(sb.dir().starts_with("/dev/shm"), "{}", sb.dir().display());
    }

    assert!(!ok("recovery 0", sb.is_in_recovery(0)));
    for i in 1..3 {
        assert!(
            ok("recovery", sb.is_in_recovery(i)),
            "node {i} not a standby"
        );
        ok("streaming", sb.wait_until_streaming(i, REPLICATION));
    }
    assert_eq!(
        ok(
            "senders",
            sb.sql(0, "SELECT count(*) FROM pg_stat_replication")
        ),
        "2"
    );
    assert_eq!(
        ok(
            "monitor",
            sb.sql(0, "SELECT pg_has_role('plusmoin', 'pg_monitor', 'MEMBER')")
        ),
        "t"
    );

    ok(
        "insert as plusmoin",
        as_plusmoin(
            &sb,
            0,
            SANDBOX_PASSWORD,
            "CREATE TABLE carrots (n int); INSERT INTO carrots VALUES (42)",
        ),
    );
    for i in 1..3 {
        wait_answer(&sb, i, "SELECT coalesce(sum(n), 0) FROM carrots", "42");
    }
    // plusmoin reads standbys over TCP too, and a wrong password is refused.
    assert_eq!(
        as_plusmoin(&sb, 2, SANDBOX_PASSWORD, "SELECT n FROM carrots"),
        Ok("42".to_owned())
    );
    let wrong = as_plusmoin(&sb, 0, "not-the-password", "SELECT 1");
    assert!(wrong.is_err(), "wrong password accepted: {wrong:?}");
}

#[test]
fn stop_then_start_node() {
    let sb = start(1);
    ok("stop", sb.stop(1));
    assert!(sb.sql(1, "SELECT 1").is_err(), "stopped node answers");
    wait_answer(&sb, 0, "SELECT count(*) FROM pg_stat_replication", "0");
    ok("start_node", sb.start_node(1));
    ok("streaming", sb.wait_until_streaming(1, REPLICATION));
    assert!(ok("recovery", sb.is_in_recovery(1)));

    let err = sb.stop(7).map(|_| ()).map_err(|e| e.to_string());
    assert_eq!(err, Err("no node 7: the sandbox has 2".to_owned()));
}

#[test]
fn kill9_then_start_node() {
    let sb = start(1);
    let name = dir_name(&sb);
    let before = processes_mentioning(&name);
    let primary_pid = postmaster_pid(&sb, 0);
    assert!(before.iter().any(|(pid, _, _)| *pid == primary_pid));

    ok("kill9", sb.kill9(0));
    let left: Vec<_> = processes_mentioning(&name)
        .into_iter()
        .filter(|(_, cmd, _)| cmd.contains("node0"))
        .collect();
    assert!(
        left.is_empty(),
        "node 0 processes survived kill -9: {left:?}"
    );
    assert!(sb.sql(0, "SELECT 1").is_err(), "killed node answers");
    // The pid file is still there: start_node must cope with it.
    assert!(sb.dir().join("node0/postmaster.pid").exists());

    ok("start_node", sb.start_node(0));
    assert!(!ok("recovery", sb.is_in_recovery(0)));
    ok("streaming again", sb.wait_until_streaming(1, REPLICATION));
}

#[test]
fn freeze_then_thaw() {
    let sb = start(1);
    let name = dir_name(&sb);
    let port = sb.port(0);
    assert_eq!(ok("probe", ssl_probe(port, Duration::from_secs(5))), b'N');

    ok("freeze", sb.freeze(0));
    let frozen: Vec<_> = processes_mentioning(&name)
        .into_iter()
        .filter(|(_, cmd, _)| cmd.contains("node0"))
        .collect();
    assert!(!frozen.is_empty());
    assert!(
        frozen.iter().all(|(_, _, state)| *state == 'T'),
        "not all stopped: {frozen:?}"
    );
    let began = Instant::now();
    let probe = ssl_probe(port, Duration::from_millis(700));
    assert!(probe.is_err(), "frozen server answered: {probe:?}");
    assert!(
        began.elapsed() >= Duration::from_millis(600),
        "failed fast, not hung: {probe:?}"
    );
    // The standby is unaffected.
    assert_eq!(ok("standby", sb.sql(1, "SELECT 1")), "1");

    ok("thaw", sb.thaw(0));
    assert_eq!(ok("probe", ssl_probe(port, Duration::from_secs(5))), b'N');
    assert_eq!(ok("primary", sb.sql(0, "SELECT 1")), "1");
    ok("streaming", sb.wait_until_streaming(1, REPLICATION));
}

#[test]
fn failover_repoint_and_rewind() {
    let sb = start(2);
    let sum = "SELECT coalesce(sum(n), 0) FROM carrots";
    ok(
        "create",
        sb.sql(
            0,
            "CREATE TABLE carrots (n int); INSERT INTO carrots VALUES (1)",
        ),
    );
    for i in 1..3 {
        wait_answer(&sb, i, sum, "1");
    }

    // The primary goes away; standby 1 takes over and standby 2 follows it.
    ok("stop 0", sb.stop(0));
    ok("promote 1", sb.promote(1));
    assert!(!ok("recovery 1", sb.is_in_recovery(1)));
    ok("repoint 2", sb.repoint(2, 1));
    ok("streaming 2", sb.wait_until_streaming(2, REPLICATION));
    ok("insert on 1", sb.sql(1, "INSERT INTO carrots VALUES (10)"));
    wait_answer(&sb, 2, sum, "11");

    // The old primary comes back as a primary and diverges (split brain)...
    ok("start 0", sb.start_node(0));
    assert!(!ok("recovery 0", sb.is_in_recovery(0)));
    ok("diverge", sb.sql(0, "INSERT INTO carrots VALUES (1000)"));
    assert_eq!(answer(&sb, 0, sum), "1001");
    ok("kill 0", sb.kill9(0));

    // ...and pg_rewind makes it a standby of the new primary again.
    ok("rewind 0", sb.rewind_as_standby(0, 1));
    ok("streaming 0", sb.wait_until_streaming(0, REPLICATION));
    assert!(ok("recovery 0", sb.is_in_recovery(0)));
    ok("insert on 1", sb.sql(1, "INSERT INTO carrots VALUES (100)"));
    wait_answer(&sb, 0, sum, "111");
    wait_answer(&sb, 2, sum, "111");
    assert_eq!(
        ok("senders", sb.sql(1, "SELECT string_agg(application_name, ',' ORDER BY application_name) FROM pg_stat_replication")),
        "node0,node2"
    );
}

#[test]
fn drop_leaves_no_process_nor_directory() {
    let sb = start(1);
    let name = dir_name(&sb);
    let dir = sb.dir().to_path_buf();
    let running = processes_mentioning(&name);
    assert!(
        running
            .iter()
            .filter(|(_, cmd, _)| cmd.contains(" -D "))
            .count()
            == 2,
        "expected two postmasters: {running:?}"
    );
    // A frozen server must not stop the cleanup.
    ok("freeze", sb.freeze(1));
    drop(sb);
    let left = processes_mentioning(&name);
    assert!(left.is_empty(), "left behind: {left:?}");
    assert!(!dir.exists(), "{} still exists", dir.display());
}

#[test]
fn drop_frees_the_shared_memory_of_a_killed_node() {
    let sb = start(0);
    let name = dir_name(&sb);
    let pid_file = ok(
        "read postmaster.pid",
        std::fs::read_to_string(sb.dir().join("node0/postmaster.pid")),
    );
    let shmid: Option<String> = pid_file
        .lines()
        .nth(6)
        .and_then(|l| l.split_whitespace().nth(1))
        .map(str::to_owned);
    let Some(shmid) = shmid else {
        panic!("no shmid in postmaster.pid: {pid_file:?}")
    };
    let mut files: Vec<String> = processes_mentioning(&name)
        .iter()
        .filter_map(|(pid, _, _)| std::fs::read_to_string(format!("/proc/{pid}/maps")).ok())
        .flat_map(|maps| {
            maps.lines()
                .filter_map(|l| l.split_whitespace().nth(5))
                .filter(|p| p.starts_with("/dev/shm/PostgreSQL."))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect();
    files.sort();
    files.dedup();
    assert!(!files.is_empty(), "no dynamic shared memory mapped");
    let segment_exists = || {
        std::fs::read_to_string("/proc/sysvipc/shm")
            .unwrap_or_default()
            .lines()
            .any(|l| l.split_whitespace().nth(1) == Some(shmid.as_str()))
    };
    assert!(segment_exists(), "segment {shmid} not found");

    ok("kill9", sb.kill9(0));
    // The kill left them behind, as a crash does...
    assert!(files.iter().all(|f| std::path::Path::new(f).exists()));
    assert!(segment_exists());
    // ...and the sandbox's drop takes them away.
    drop(sb);
    let left: Vec<_> = files
        .iter()
        .filter(|f| std::path::Path::new(f).exists())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    assert!(!segment_exists(), "segment {shmid} left behind");
}

#[test]
fn a_new_sandbox_reaps_the_orphan_of_a_dead_process() {
    let orphan = start(0);
    let name = dir_name(&orphan);
    // Pretend its owner died without dropping it (a pid above any pid_max).
    ok(
        "fake owner",
        std::fs::write(orphan.dir().join("owner"), "4194999999 1\n"),
    );
    assert!(!processes_mentioning(&name).is_empty());

    let fresh = start(0);
    assert!(!orphan.dir().exists(), "orphan directory kept");
    let left = processes_mentioning(&name);
    assert!(left.is_empty(), "orphan servers left: {left:?}");
    // The fresh one belongs to a live process: untouched by later starts.
    let other = start(0);
    assert!(fresh.dir().exists());
    assert_eq!(ok("fresh answers", fresh.sql(0, "SELECT 1")), "1");
    drop(other);
    drop(fresh);
    drop(orphan); // its servers and directory are already gone: no panic
}
