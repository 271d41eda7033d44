//! `plusmoin reload` reports the outcome: it checks the file first (a
//! broken one is refused with file, line and column, and the daemon is not
//! signalled), then waits for the daemon to confirm in its status file and
//! fails with the daemon's reason when it could not apply the file. `stop`
//! and `status` still work while the configuration is broken.

use crate::daemon::{alive, pid_of, plusmoin, text, StopGuard};
use crate::monitor::{healthy, names, node, Plusmoin, Timings};
use crate::wait_until;
use plusmoin::demo::sandbox::Sandbox;
use serde_json::Value;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::Duration;

const LONG: Duration = Duration::from_secs(20);

/// The `reload` member of the status file (`Null` before the first).
fn reload_seen(p: &Plusmoin) -> Value {
    p.status()["reload"].clone()
}

/// Started as root, the daemon runs as `daemon_user` and reads its
/// configuration again as that user. A root-owned 0600 file is warned of at
/// start with the fix; `plusmoin reload` then fails with the daemon's own
/// "Permission denied"; once the file is 0640 root:daemon_user's group the
/// same reload succeeds and the change applies.
#[test]
fn reload_fails_with_the_daemons_permission_denied_then_applies_a_group_readable_file() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("needs root (the daemon drops to daemon_user): skipped");
        return;
    }
    let sb = Sandbox::start(1).expect("sandbox");
    let t = Timings {
        daemon_user: Some("nobody"),
        ..Timings::default()
    };
    let p = Plusmoin::configure(&sb, &t, "");
    let _kill = StopGuard(&p);
    // nobody must be able to write the status and run the recording trigger.
    for d in [p.dir.path().to_path_buf(), p.dir.path().join("events")] {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    let group = nix::unistd::Group::from_gid(nobody.gid)
        .unwrap()
        .map_or_else(|| nobody.gid.to_string(), |g| g.name);
    let (n0, n1) = (node(&sb, 0), node(&sb, 1));
    let config = p.config_path.display().to_string();
    // write_config replaces the file: owner and mode are set again each time.
    let own = |gid: nix::unistd::Gid, mode: u32| {
        nix::unistd::chown(&p.config_path, Some(nix::unistd::ROOT), Some(gid)).unwrap();
        std::fs::set_permissions(&p.config_path, std::fs::Permissions::from_mode(mode)).unwrap();
        let meta = std::fs::metadata(&p.config_path).unwrap();
        assert_eq!(
            (meta.uid(), meta.gid(), meta.mode() & 0o777),
            (0, gid.as_raw(), mode)
        );
    };
    p.write_config(&sb, &t, "", &[0]);
    own(nix::unistd::Gid::from_raw(0), 0o600);

    let o = plusmoin(&p, &["start"]);
    let err = text(&o.stderr);
    assert!(o.status.success(), "start: {err}");
    assert!(
        err.contains(&format!("{config} cannot be read by daemon_user nobody"))
            && err.contains(&format!("chgrp {group} {config}; chmod 640 {config}")),
        "a warning naming the fix: {err}"
    );
    assert!(
        !err.contains("chmod 600"),
        "no advice that breaks reloads: {err}"
    );
    let pid = pid_of(&p).expect("pid file");
    p.wait_status("the master watched", LONG, |st| {
        st["clusters"][0]["master"]["name"] == n0.as_str()
    });

    // The CLI (root) reads the file; the daemon (nobody) cannot.
    p.write_config(&sb, &t, "", &[0, 1]);
    own(nix::unistd::Gid::from_raw(0), 0o600);
    let o = plusmoin(&p, &["reload"]);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("plusmoin (pid {pid}) could not apply"))
            && err.contains(&format!("{config}: cannot read: Permission denied")),
        "the daemon's reason: {err}"
    );
    let r = reload_seen(&p);
    assert_eq!(
        (r["generation"].as_u64(), r["ok"].as_bool()),
        (Some(1), Some(false)),
        "{r}"
    );
    assert!(alive(pid));

    // Group-readable by nobody's group: the same reload goes through.
    own(nobody.gid, 0o640);
    let o = plusmoin(&p, &["reload"]);
    let err = text(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        text(&o.stdout).contains(&format!(
            "plusmoin (pid {pid}) reloaded {config} (reload #2)"
        )),
        "{}",
        text(&o.stdout)
    );
    assert!(!err.contains("warning"), "root:{group} 0640 is fine: {err}");
    p.wait_status("the standby added by the reload", LONG, |st| {
        names(&st["clusters"][0]["slaves"]) == [n1.as_str()]
    });
    let r = reload_seen(&p);
    assert_eq!(
        (r["generation"].as_u64(), r["ok"].as_bool()),
        (Some(2), Some(true)),
        "{r}"
    );

    let o = plusmoin(&p, &["stop"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(wait_until(Duration::from_secs(5), || !alive(pid)));
}

/// A stray comma: `reload` exits 2 with file, line and column and signals
/// nobody (the daemon's reload generation stays where it was); `status`
/// and `stop` still work on the broken file. A SIGHUP sent by hand with it
/// is refused by the daemon, which says so in its status.
#[test]
fn reload_refuses_a_broken_config_unsent_and_stop_and_status_still_work() {
    let sb = Sandbox::start(1).expect("sandbox");
    let t = Timings::default();
    let p = Plusmoin::start(&sb, &t, "");
    healthy(&p, &sb);
    let pid = pid_of(&p).expect("pid file");
    let n1 = node(&sb, 1);
    let config = p.config_path.display().to_string();
    assert_eq!(reload_seen(&p), Value::Null, "no reload yet");

    // A good reload is confirmed: the standby leaves.
    p.write_config(&sb, &t, "", &[0]);
    let o = plusmoin(&p, &["reload"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        text(&o.stdout).contains(&format!(
            "plusmoin (pid {pid}) reloaded {config} (reload #1)"
        )),
        "{}",
        text(&o.stdout)
    );
    assert_eq!(p.status()["reload"]["ok"], true, "confirmed in the status");
    p.wait_status("the standby gone", LONG, |st| {
        !st.to_string().contains(&format!("\"{n1}\""))
    });

    // A stray comma.
    let good = std::fs::read_to_string(&p.config_path).unwrap();
    let marker = "\"sslmode\": \"disable\",";
    let line = 1 + good[..good.find(marker).expect("sslmode line")]
        .matches('\n')
        .count();
    let broken = good.replacen(marker, &format!("{marker},"), 1);
    let tmp = p.dir.path().join("broken.tmp");
    std::fs::write(&tmp, broken).unwrap();
    std::fs::rename(&tmp, &p.config_path).unwrap();

    let o = plusmoin(&p, &["reload"]);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.starts_with(&format!("plusmoin: {config}:{line}:")) && err.contains("malformed JSON"),
        "file:line:col: {err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    // Nothing was sent: beats go on, the generation stays 1.
    let before = p.status()["updated_at_unix"].as_f64().unwrap_or(0.0);
    p.wait_status("two more beats", LONG, |st| {
        st["updated_at_unix"].as_f64().unwrap_or(0.0) > before + 1.0
    });
    assert_eq!(reload_seen(&p)["generation"], 1, "the daemon was signalled");
    assert_eq!(
        p.log().matches("configuration reloaded").count(),
        1,
        "{}",
        p.log()
    );
    assert!(!p.log().contains("not reloaded"), "{}", p.log());

    // status reads its paths out of the broken file.
    let o = plusmoin(&p, &["status"]);
    assert!(o.status.success(), "status: {}", text(&o.stderr));
    let st: Value = serde_json::from_slice(&o.stdout).expect("status prints JSON");
    assert_eq!(st["pid"], pid, "{st:#}");

    // A SIGHUP by hand: the daemon's own refusal shows in the status.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    let st = p.wait_status("the daemon's refusal", LONG, |st| {
        st["reload"]["generation"] == 2
    });
    assert_eq!(st["reload"]["ok"], false, "{st:#}");
    let why = st["reload"]["error"].as_str().unwrap_or("");
    assert!(why.starts_with(&format!("{config}:{line}:")), "{st:#}");
    let o = plusmoin(&p, &["status", "--table"]);
    assert!(o.status.success(), "status --table: {}", text(&o.stderr));
    assert!(
        text(&o.stdout).contains("failed, the configuration before it stays in force"),
        "{}",
        text(&o.stdout)
    );

    // stop too.
    let o = plusmoin(&p, &["stop"]);
    assert!(o.status.success(), "stop: {}", text(&o.stderr));
    assert!(
        text(&o.stdout).contains(&format!("plusmoin (pid {pid}) stopped")),
        "{}",
        text(&o.stdout)
    );
    assert!(wait_until(Duration::from_secs(5), || !alive(pid)));
}
