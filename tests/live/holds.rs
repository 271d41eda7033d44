//! Cluster-wide maintenance holds against a real sandbox: `plusmoin hold`
//! writes a row of `plusmoin_hold` on the master, every standby replays it,
//! and [`Holds`] reads it from whichever node answers, for any plusmoin
//! instance watching the same servers.

use crate::monitor::node;
use crate::wait_until;
use plusmoin::cluster::NodeName;
use plusmoin::demo::sandbox::{Sandbox, SANDBOX_DBNAME, SANDBOX_PASSWORD, SANDBOX_USER};
use plusmoin::hold::{self, Holds, LEGACY_PLACED_BY};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(20);

/// A configuration for `sb` as instance `instance`, in `dir`; `extra` is
/// appended to the top-level object; `ids` gives nodes a pgpool id.
pub(crate) fn write_config(
    sb: &Sandbox,
    dir: &Path,
    instance: &str,
    extra: &str,
    ids: bool,
) -> PathBuf {
    let nodes: Vec<String> = (0..sb.len())
        .map(|i| {
            let id = if ids {
                format!(r#", "pgpool_node_id": {i}"#)
            } else {
                String::new()
            };
            format!(r#"{{"host": "{}", "port": {}{id}}}"#, sb.host(), sb.port(i))
        })
        .collect();
    let d = dir.join(instance);
    std::fs::create_dir_all(&d).expect("config dir");
    let text = format!(
        r#"{{"dbname": "{SANDBOX_DBNAME}", "user": "{SANDBOX_USER}", "password": "{SANDBOX_PASSWORD}",
  "heartbeat": 0.5, "connect_timeout": 5, "instance_name": "{instance}", "sslmode": "disable",
  "status_file": "{d}/status.json", "pid_file": "{d}/plusmoin.pid", "log_file": "{d}/plusmoin.log",
  "nodes": [{nodes}]{extra}}}"#,
        d = d.display(),
        nodes = nodes.join(", "),
    );
    let path = d.join("plusmoin.json");
    std::fs::write(&path, text).expect("write config");
    path
}

pub(crate) fn plusmoin(config: &Path, args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_plusmoin"))
        .arg("-c")
        .arg(config)
        .args(args)
        .output()
        .expect("run plusmoin")
}

pub(crate) fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub(crate) fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub(crate) fn ok(o: Output) -> String {
    assert!(o.status.success(), "{o:?}");
    stdout(&o)
}

/// `node|placed_by|reason` rows of the hold table on node `i`, or the error.
pub(crate) fn rows(sb: &Sandbox, i: usize) -> String {
    sb.sql(
        i,
        "SELECT node, placed_by, coalesce(reason, '-') FROM plusmoin_hold ORDER BY node",
    )
    .unwrap_or_else(|e| format!("error: {e}"))
}

/// One read of the holds as a daemon of `config` does it, from
/// `candidates` (sandbox node indices, in order).
pub(crate) fn read_holds(config: &Path, sb: &Sandbox, candidates: &[usize]) -> Holds {
    let config = plusmoin::config::load(config).expect("config");
    let names: Vec<NodeName> = candidates
        .iter()
        .map(|&i| NodeName::new(sb.host(), sb.port(i)))
        .collect();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let mut h = Holds::new(&config);
        h.refresh(names);
        h.settle().await;
        h
    })
}

fn replicated(sb: &Sandbox, standby: usize, pred: impl Fn(&str) -> bool) -> bool {
    wait_until(LONG, || pred(&rows(sb, standby)))
}

#[test]
fn hold_is_written_on_the_master_and_replayed_by_the_standbys() {
    let sb = Sandbox::start(2).expect("sandbox");
    let dir = tempfile::tempdir().expect("dir");
    let c = write_config(&sb, dir.path(), "pgpool1", "", false);
    let n1 = node(&sb, 1);

    let out = ok(plusmoin(&c, &["hold", &n1, "--reason", "disk swap"]));
    assert!(out.contains(&format!("{n1} held (by ")), "{out}");
    assert!(out.contains("(plusmoin pgpool1)"), "{out}");
    let on_master = rows(&sb, 0);
    assert!(on_master.starts_with(&format!("{n1}|")), "{on_master}");
    assert!(
        on_master.contains("(plusmoin pgpool1)|disk swap"),
        "{on_master}"
    );
    for standby in [1, 2] {
        assert!(
            replicated(&sb, standby, |r| r == on_master),
            "standby {standby} never replayed the hold: {}",
            rows(&sb, standby)
        );
    }

    // Held again, by someone else: the original hold is kept and shown.
    let other = write_config(&sb, dir.path(), "pgpool2", "", false);
    let again = ok(plusmoin(&other, &["hold", &n1, "--reason", "other"]));
    assert!(
        again.contains(&format!("{n1} was already held (by ")),
        "{again}"
    );
    assert!(
        again.contains("(plusmoin pgpool1)") && again.contains(": disk swap"),
        "{again}"
    );
    assert_eq!(rows(&sb, 0), on_master);
    // Not a configured node: refused, nothing written.
    let bad = plusmoin(&c, &["hold", "127.0.0.1:1"]);
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("not a configured node"), "{bad:?}");
}

#[test]
fn holds_are_read_from_a_standby_with_the_master_down_and_release_needs_the_master() {
    let sb = Sandbox::start(1).expect("sandbox");
    let dir = tempfile::tempdir().expect("dir");
    let c = write_config(&sb, dir.path(), "pgpool1", "", false);
    let n1 = node(&sb, 1);
    ok(plusmoin(&c, &["hold", &n1]));
    assert!(
        replicated(&sb, 1, |r| r.starts_with(&n1)),
        "{}",
        rows(&sb, 1)
    );

    sb.stop(0).expect("stop the master");
    // Masters first: the stopped master does not answer, the standby does.
    let h = read_holds(&c, &sb, &[0, 1]);
    assert!(h.known(), "the table was read");
    assert_eq!(h.names(), [n1.as_str()]);
    let e = &h.current()[&n1];
    assert!(e.placed_by.ends_with("(plusmoin pgpool1)"), "{e:?}");
    assert!(e.placed_at.ends_with('Z'), "RFC 3339: {e:?}");
    assert_eq!(e.reason, None);

    // No master: release changes nothing and says why.
    let out = plusmoin(&c, &["release", &n1]);
    assert!(!out.status.success(), "{out:?}");
    let err = stderr(&out);
    assert!(
        err.contains("no master reachable: a hold is stored on the master"),
        "{err}"
    );
    let hold_too = plusmoin(&c, &["hold", &n1]);
    assert!(
        stderr(&hold_too).contains("no master reachable"),
        "{hold_too:?}"
    );
    assert!(rows(&sb, 1).starts_with(&n1));
}

#[test]
fn the_master_cannot_be_held() {
    let sb = Sandbox::start(1).expect("sandbox");
    let dir = tempfile::tempdir().expect("dir");
    let c = write_config(&sb, dir.path(), "pgpool1", "", false);
    let n0 = node(&sb, 0);
    let out = plusmoin(&c, &["hold", &n0]);
    assert!(!out.status.success(), "{out:?}");
    let err = stderr(&out);
    assert!(
        err.contains(&format!("{n0} is the primary: switch over first")),
        "{err}"
    );
    // Nothing written: not even the table.
    assert!(rows(&sb, 0).starts_with("error:"), "{}", rows(&sb, 0));
}

#[test]
fn release_removes_the_hold_everywhere_and_held_json_still_counts() {
    let sb = Sandbox::start(2).expect("sandbox");
    let dir = tempfile::tempdir().expect("dir");
    let c = write_config(&sb, dir.path(), "pgpool1", "", false);
    let config = plusmoin::config::load(&c).expect("config");
    let (n1, n2) = (node(&sb, 1), node(&sb, 2));

    // An older plusmoin's hold, in held.json only.
    hold::hold(&config, &n2).expect("legacy hold");
    let h = read_holds(&c, &sb, &[0, 1, 2]);
    assert!(h.known(), "no table yet is no holds, not a failure");
    assert_eq!(h.names(), [n2.as_str()]);
    assert_eq!(h.current()[&n2].placed_by, LEGACY_PLACED_BY);

    ok(plusmoin(&c, &["hold", &n1]));
    assert!(
        replicated(&sb, 2, |r| r.starts_with(&n1)),
        "{}",
        rows(&sb, 2)
    );
    let h = read_holds(&c, &sb, &[2]);
    let mut both = [n1.clone(), n2.clone()];
    both.sort();
    assert_eq!(h.names(), both);
    assert_eq!(h.current()[&n2].placed_by, LEGACY_PLACED_BY);
    assert_ne!(h.current()[&n1].placed_by, LEGACY_PLACED_BY);

    let out = ok(plusmoin(&c, &["release", &n1]));
    assert!(
        out.contains(&format!("{n1} released (the hold placed by ")),
        "{out}"
    );
    assert_eq!(rows(&sb, 0), "");
    let out = ok(plusmoin(&c, &["release", &n2]));
    assert!(out.contains("the legacy hold in"), "{out}");
    assert!(
        hold::read(
            &hold::path_for(&config.status_file),
            &plusmoin::lifecycle::Owners::me(),
        )
        .expect("held.json")
        .is_empty(),
        "released from held.json"
    );
    let out = ok(plusmoin(&c, &["release", &n2]));
    assert!(out.contains(&format!("{n2} was not held")), "{out}");
    assert!(replicated(&sb, 2, |r| r.is_empty()), "{}", rows(&sb, 2));
    let h = read_holds(&c, &sb, &[2]);
    assert!(h.current().is_empty(), "{:?}", h.current());
}

#[test]
fn two_plusmoin_instances_share_the_holds() {
    let sb = Sandbox::start(1).expect("sandbox");
    let dir = tempfile::tempdir().expect("dir");
    // One beside each pgpool of a watchdog pair: own names, own status dirs.
    let a = write_config(&sb, dir.path(), "pgpool-a", "", false);
    let b = write_config(&sb, dir.path(), "pgpool-b", "", false);
    let n1 = node(&sb, 1);

    ok(plusmoin(&a, &["hold", &n1, "--reason", "upgrade"]));
    let seen_by_b = read_holds(&b, &sb, &[0, 1]);
    assert_eq!(seen_by_b.names(), [n1.as_str()]);
    let e = &seen_by_b.current()[&n1];
    assert!(e.placed_by.ends_with("(plusmoin pgpool-a)"), "{e:?}");
    assert_eq!(e.reason.as_deref(), Some("upgrade"));

    // Released through the other instance: gone for both.
    ok(plusmoin(&b, &["release", &n1]));
    assert!(read_holds(&a, &sb, &[0, 1]).current().is_empty());
}

/// A stand-in for `pcp_node_info`: prints `role-<id>` from its directory,
/// or fails when there is none (pgpool unreachable).
const FAKE_NODE_INFO: &str = r#"#!/bin/sh
f="$(dirname "$0")/role-$1"
[ -f "$f" ] || { echo "ERROR: connection to host failed: Connection refused" >&2; exit 1; }
cat "$f"
"#;

#[test]
fn a_node_pgpool_shows_as_its_primary_is_refused_and_so_is_any_hold_pgpool_cannot_vet() {
    use std::os::unix::fs::PermissionsExt;
    let sb = Sandbox::start(2).expect("sandbox");
    let dir = tempfile::tempdir().expect("dir");
    let script = dir.path().join("node_info.sh");
    std::fs::write(&script, FAKE_NODE_INFO).expect("script");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let pcppass = dir.path().join("pcppass");
    std::fs::write(&pcppass, "*:*:pgpool:pw\n").expect("pcppass");
    std::fs::set_permissions(&pcppass, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let section = format!(
        r#", "pgpool": {{"pcp_host": "127.0.0.1", "pcp_port": 9898, "pcp_user": "pgpool",
             "pcppass_file": "{}", "pcp_timeout": 5,
             "templates": {{"node_info": "{} {{{{node_id}}}}"}}}}"#,
        pcppass.display(),
        script.display()
    );
    let c = write_config(&sb, dir.path(), "pgpool1", &section, true);
    let role = |id: usize, line: &str| {
        std::fs::write(dir.path().join(format!("role-{id}")), line).expect("role")
    };
    let (n1, n2) = (node(&sb, 1), node(&sb, 2));

    // pgpool still shows standby 1 as its attached primary (a stale view
    // after a failover it has not seen): refused.
    role(
        1,
        &format!("{} {} 2 0.333 up primary\n", sb.host(), sb.port(1)),
    );
    let out = plusmoin(&c, &["hold", &n1]);
    assert!(!out.status.success(), "{out:?}");
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "{n1} is pgpool's primary (pgpool node 1): switch over first"
        )),
        "{err}"
    );
    // pgpool cannot be asked about node 2: refused, and why.
    let out = plusmoin(&c, &["hold", &n2]);
    assert!(!out.status.success(), "{out:?}");
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "cannot ask pgpool whether {n2} is its primary, so the hold is not placed"
        )),
        "{err}"
    );
    assert!(rows(&sb, 0).starts_with("error:"), "nothing written");
    // A standby in pgpool's eyes: held.
    role(
        2,
        &format!("{} {} 2 0.333 up standby\n", sb.host(), sb.port(2)),
    );
    ok(plusmoin(&c, &["hold", &n2]));
    assert!(
        rows(&sb, 0).starts_with(&format!("{n2}|")),
        "{}",
        rows(&sb, 0)
    );
}

/// `release` changes both places or neither: with the node held in the
/// table and in a `held.json` it cannot change (its directory not
/// writable by whoever releases: as root, the release runs as nobody, since
/// root ignores modes), it fails before touching the table, saying why,
/// and the hold stays in both. Once the file can be changed, it releases
/// both.
#[test]
fn release_that_cannot_change_held_json_changes_nothing() {
    use std::os::unix::fs::PermissionsExt;
    let sb = Sandbox::start(1).expect("sandbox");
    let dir = tempfile::tempdir().expect("dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let c = write_config(&sb, dir.path(), "pgpool1", "", false);
    let config = plusmoin::config::load(&c).expect("config");
    let n1 = node(&sb, 1);
    let held_json = hold::path_for(&config.status_file);
    let held_dir = held_json.parent().unwrap().to_path_buf();
    let in_file = || {
        hold::read(&held_json, &plusmoin::lifecycle::Owners::me())
            .expect("held.json")
            .contains(&n1)
    };

    hold::hold(&config, &n1).expect("legacy hold");
    ok(plusmoin(&c, &["hold", &n1]));
    assert!(rows(&sb, 0).starts_with(&n1), "{}", rows(&sb, 0));
    assert!(in_file());

    std::fs::set_permissions(&held_dir, std::fs::Permissions::from_mode(0o555)).unwrap();
    let o = if plusmoin_kit::is_root() {
        let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
        std::process::Command::new("setpriv")
            .args([
                &format!("--reuid={}", nobody.uid),
                &format!("--regid={}", nobody.gid),
                "--clear-groups",
                env!("CARGO_BIN_EXE_plusmoin"),
                "-c",
            ])
            .arg(&c)
            .args(["release", &n1])
            .output()
            .expect("run plusmoin as nobody")
    } else {
        plusmoin(&c, &["release", &n1])
    };
    std::fs::set_permissions(&held_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert!(!o.status.success(), "{o:?}");
    let err = stderr(&o);
    assert!(
        err.contains("held.json") && err.contains("Permission denied"),
        "{err}"
    );
    assert!(
        rows(&sb, 0).starts_with(&n1),
        "the table's hold was deleted by a release that failed: {}",
        rows(&sb, 0)
    );
    assert!(in_file(), "held.json changed by a release that failed");

    let out = ok(plusmoin(&c, &["release", &n1]));
    assert!(
        out.contains("the hold placed by") && out.contains("the legacy hold in"),
        "{out}"
    );
    assert_eq!(rows(&sb, 0), "");
    assert!(!in_file());
}
