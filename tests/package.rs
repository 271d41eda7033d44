//! The Debian package (contrib/README.md, "Debian package and systemd"): built with
//! cargo-deb, installed with dpkg, its shipped configuration checked, its
//! directories made with and without systemd-tmpfiles, started by hand (no
//! systemd here), then purged, keeping the system user as Debian packages
//! do (the test removes it itself, leaving nothing behind). The unit's
//! sandbox is scored with `systemd-analyze security --offline=true`.
//!
//! The .deb is made from the binary `cargo test` has just built
//! (`cargo deb --no-build --profile dev`, stripped by cargo-deb, `--fast`
//! compression): a release build would take minutes more on a small CI
//! machine and this test checks the packaging (files, modes, owners,
//! maintainer scripts, unit), not the optimiser. README's command builds
//! the release package. cargo-deb 3.8 warns that the dev profile is
//! unusual; .ci/run pins that version.
//!
//! Needs root (dpkg -i), cargo-deb and systemd-analyze (systemd >= 252,
//! no running systemd needed): without one, the test needing it prints
//! `skipped: …` (why, and how to get it) and passes, unless
//! `PLUSMOIN_REQUIRE_ALL` is set (`.ci/run` sets it): then it fails.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn run(cmd: &mut Command) -> Output {
    let o = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    o
}

fn ok(cmd: &mut Command) -> String {
    let o = run(cmd);
    assert!(
        o.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn installed() -> bool {
    run(Command::new("dpkg-query").args(["-W", "-f=${Status}", "plusmoin"]))
        .stdout
        .starts_with(b"install ok")
}

fn user_exists(name: &str) -> bool {
    run(Command::new("getent").args(["passwd", name]))
        .status
        .success()
}

fn group_exists(name: &str) -> bool {
    run(Command::new("getent").args(["group", name]))
        .status
        .success()
}

/// Stops a daemon started by hand, purges the package and removes the user
/// purge keeps, even when an assertion fails half-way. Made only once the
/// test knows it created that user.
struct Purge;
impl Drop for Purge {
    fn drop(&mut self) {
        if Path::new("/usr/bin/plusmoin").exists() {
            let _ = Command::new("/usr/bin/plusmoin")
                .args(["-c", "/etc/plusmoin/plusmoin.json", "stop"])
                .output();
        }
        let _ = Command::new("dpkg").args(["--purge", "plusmoin"]).output();
        remove_user();
    }
}

/// The user and group purge leaves (userdel may take the group with it).
fn remove_user() {
    if user_exists("plusmoin") {
        let _ = Command::new("userdel").arg("plusmoin").output();
    }
    if group_exists("plusmoin") {
        let _ = Command::new("groupdel").arg("plusmoin").output();
    }
}

/// The package's directories: path, mode, all owned by plusmoin:plusmoin.
const DIRS: [(&str, u32); 3] = [
    ("/run/plusmoin", 0o755),
    ("/var/lib/plusmoin", 0o750),
    ("/var/log/plusmoin", 0o750),
];

fn assert_dirs(when: &str, uid: u32, gid: u32) {
    for (dir, mode) in DIRS {
        let m = std::fs::symlink_metadata(dir).unwrap_or_else(|e| panic!("{dir} {when}: {e}"));
        assert!(m.is_dir(), "{dir} {when}: a directory");
        assert_eq!(
            (m.mode() & 0o7777, m.uid(), m.gid()),
            (mode, uid, gid),
            "{dir} {when}: mode {mode:o}, owned by plusmoin:plusmoin"
        );
    }
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// Why the package test cannot run here (it needs root, dpkg and
/// cargo-deb), if it cannot.
fn deb_test_cannot_run() -> Option<&'static str> {
    if !plusmoin_kit::is_root() {
        return Some("needs root (dpkg -i installs the package): run as root (.ci/run does)");
    }
    if !plusmoin_kit::on_path("dpkg") {
        return Some("dpkg is not installed (a Debian or Ubuntu system)");
    }
    let has_deb = Command::new(cargo())
        .args(["deb", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_deb {
        return Some(
            "cargo-deb is not installed: cargo install cargo-deb --version 3.8.0 --locked \
             (.ci/run does)",
        );
    }
    None
}

fn build_deb() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cargo = cargo();
    // The binary cargo-deb packages is the one this test run built.
    let bin = Path::new(env!("CARGO_BIN_EXE_plusmoin"));
    let profile_dir = bin.parent().expect("bin dir");
    assert_eq!(
        profile_dir.file_name().and_then(|n| n.to_str()),
        Some("debug"),
        "run under the test profile (target/debug), got {}",
        bin.display()
    );
    let out = profile_dir
        .parent()
        .expect("target dir")
        .join("package-test");
    let _ = std::fs::remove_dir_all(&out);
    ok(Command::new(&cargo)
        .current_dir(root)
        .args([
            "deb",
            "--no-build",
            "--profile",
            "dev",
            "--fast",
            "--output",
        ])
        .arg(&out));
    let debs: Vec<PathBuf> = std::fs::read_dir(&out)
        .expect("output dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "deb"))
        .collect();
    assert_eq!(debs.len(), 1, "one .deb in {}: {debs:?}", out.display());
    debs[0].clone()
}

#[test]
fn deb_installs_checks_its_config_and_purges_clean() {
    if let Some(why) = deb_test_cannot_run() {
        plusmoin_kit::skip(why);
        return;
    }
    let deb = build_deb();
    let contents = ok(Command::new("dpkg-deb").arg("-c").arg(&deb));
    for f in [
        "./usr/bin/plusmoin",
        "./etc/plusmoin/plusmoin.json",
        "./usr/lib/systemd/system/plusmoin.service",
        "./usr/lib/tmpfiles.d/plusmoin.conf",
        "./usr/share/plusmoin/pgpool/attach.hbs",
        "./usr/share/plusmoin/pgpool/README.md",
        "./usr/share/plusmoin/triggers/syslog-event.sh",
        "./usr/share/doc/plusmoin/examples/plusmoin.json",
    ] {
        assert!(
            contents.lines().any(|l| l.ends_with(f)),
            "{f} in the package:\n{contents}"
        );
    }
    let conffiles = ok(Command::new("dpkg-deb")
        .args(["--info"])
        .arg(&deb)
        .arg("conffiles"));
    assert_eq!(conffiles.trim(), "/etc/plusmoin/plusmoin.json");

    assert!(
        !installed() && !user_exists("plusmoin"),
        "a plusmoin package or user is already on this machine; this test \
         installs and purges its own: remove them first (dpkg --purge plusmoin; userdel plusmoin)"
    );
    let _purge = Purge;
    ok(Command::new("dpkg").arg("-i").arg(&deb));
    assert!(installed());

    // The unit, as systemd would read it.
    let unit = std::fs::read_to_string("/usr/lib/systemd/system/plusmoin.service").unwrap();
    for line in [
        "Type=notify",
        "NotifyAccess=main",
        "RuntimeDirectory=plusmoin",
        "StateDirectoryMode=0750",
        "LogsDirectory=plusmoin",
        "LogsDirectoryMode=0750",
        "User=plusmoin",
    ] {
        assert!(unit.lines().any(|l| l == line), "{line} in the unit");
    }
    assert!(unit.lines().any(|l| l.starts_with("WatchdogSec=")));

    // The user, and the configuration only it (and root) can read.
    assert!(user_exists("plusmoin"), "plusmoin user created");
    let user = nix::unistd::User::from_name("plusmoin").unwrap().unwrap();
    assert!(user.uid.as_raw() < 1000, "a system user: {}", user.uid);
    let group = nix::unistd::Group::from_name("plusmoin").unwrap().unwrap();
    let conf = Path::new("/etc/plusmoin/plusmoin.json");
    let m = std::fs::metadata(conf).unwrap();
    assert_eq!(m.permissions().mode() & 0o7777, 0o640, "config mode");
    assert_eq!((m.uid(), m.gid()), (0, group.gid.as_raw()), "root:plusmoin");
    let b = std::fs::metadata("/usr/bin/plusmoin").unwrap();
    assert_eq!(b.permissions().mode() & 0o7777, 0o755);
    assert_eq!((b.uid(), b.gid()), (0, 0));

    // The shipped configuration, run as the daemon's user as the unit's
    // ExecStartPre does: its placeholder password is refused, naming file,
    // line and key; once set, it passes without warnings (its group may
    // read it: that group is the daemon's).
    let check_config = || {
        run(Command::new("setpriv")
            .args([
                &format!("--reuid={}", user.uid),
                &format!("--regid={}", group.gid),
                "--clear-groups",
                "/usr/bin/plusmoin",
                "-c",
                "/etc/plusmoin/plusmoin.json",
                "check-config",
            ])
            .env("HOME", "/var/lib/plusmoin"))
    };
    let o = check_config();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        o.status.code(),
        Some(2),
        "the placeholder is refused: {err}"
    );
    assert!(
        err.contains("/etc/plusmoin/plusmoin.json:22:") && err.contains("password: \"change-me\""),
        "{err}"
    );
    let shipped = std::fs::read_to_string(conf).unwrap();
    // Written in place: the conffile keeps its owner and mode.
    std::fs::write(conf, shipped.replace("\"change-me\"", "\"s3cret-pw\"")).unwrap();
    let o = check_config();
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(
        o.status.success() && out.contains("configuration OK"),
        "{out}{err}"
    );
    assert!(!err.contains("warning"), "check-config warns: {err}");

    // Its directories, made at install and not only by systemd (not
    // running here): the tmpfiles.d file, applied by the postinst.
    let tmpfiles = Path::new("/usr/lib/tmpfiles.d/plusmoin.conf");
    let m = std::fs::metadata(tmpfiles).expect("tmpfiles.d/plusmoin.conf installed");
    assert_eq!((m.mode() & 0o7777, m.uid()), (0o644, 0));
    let (uid, gid) = (user.uid.as_raw(), group.gid.as_raw());
    assert_dirs("after install", uid, gid);

    // Upgrade in place (same version again): configure runs again, the
    // conffile keeps its group, and a state directory as an older package
    // left it (made 0755 by systemd) is closed to other users.
    std::fs::set_permissions("/var/lib/plusmoin", std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::chown("/var/lib/plusmoin", Some(0), Some(0)).unwrap();
    ok(Command::new("dpkg").arg("-i").arg(&deb));
    let m = std::fs::metadata(conf).unwrap();
    assert_eq!((m.mode() & 0o7777, m.gid()), (0o640, group.gid.as_raw()));
    assert_dirs("after upgrade", uid, gid);

    // Without systemd-tmpfiles (a system without systemd), the postinst
    // makes them itself from the same file.
    std::fs::remove_dir_all("/run/plusmoin").unwrap();
    std::fs::remove_dir_all("/var/log/plusmoin").unwrap();
    std::fs::set_permissions("/var/lib/plusmoin", std::fs::Permissions::from_mode(0o755)).unwrap();
    let farm = std::env::temp_dir().join(format!("plusmoin-package-path-{}", std::process::id()));
    let path = plusmoin_kit::path_without(&farm, &["systemd-tmpfiles"]);
    let o = run(Command::new("/var/lib/dpkg/info/plusmoin.postinst")
        .arg("configure")
        .env("PATH", &path));
    let _ = std::fs::remove_dir_all(&farm);
    assert!(
        o.status.success(),
        "postinst without systemd-tmpfiles: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert_dirs("made without systemd-tmpfiles", uid, gid);

    // So plusmoin starts by hand, as root, without systemd: pid file in
    // /run/plusmoin, log in /var/log/plusmoin, status in /var/lib/plusmoin
    // (no server answers: it writes that it sees none).
    let plusmoin = |args: &[&str]| {
        let mut c = Command::new("/usr/bin/plusmoin");
        c.args(["-c", "/etc/plusmoin/plusmoin.json"]).args(args);
        run(&mut c)
    };
    let o = plusmoin(&["start"]);
    assert!(
        o.status.success(),
        "plusmoin start by hand: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let status = Path::new("/var/lib/plusmoin/status.json");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !status.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(status.exists(), "status file written within 30 s");
    assert!(Path::new("/run/plusmoin/plusmoin.pid").exists(), "pid file");
    assert!(
        Path::new("/var/log/plusmoin/plusmoin.log").exists(),
        "log file"
    );
    // The status: the plusmoin group reads it, other users do not.
    let cat_as = |uid: u32, gid: u32| {
        run(Command::new("setpriv").args([
            &format!("--reuid={uid}"),
            &format!("--regid={gid}"),
            "--clear-groups",
            "cat",
            "/var/lib/plusmoin/status.json",
        ]))
    };
    assert!(
        cat_as(uid, gid).status.success(),
        "plusmoin reads the status"
    );
    // 0640 (status_file_mode's default): the group's members (operators
    // added to it) read it too.
    let m = std::fs::metadata(status).unwrap();
    assert_eq!(
        (m.mode() & 0o7777, m.gid()),
        (0o640, gid),
        "status file mode"
    );
    let operator = nobody_in_group(gid);
    assert!(
        operator.status.success(),
        "a member of the plusmoin group reads the status: {}",
        String::from_utf8_lossy(&operator.stderr)
    );
    let nobody = nix::unistd::User::from_name("nobody")
        .unwrap()
        .expect("user nobody");
    let o = cat_as(nobody.uid.as_raw(), nobody.gid.as_raw());
    assert!(
        !o.status.success(),
        "another user reads the status file: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    let o = plusmoin(&["stop"]);
    assert!(
        o.status.success(),
        "plusmoin stop: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );

    ok(Command::new("dpkg").args(["--purge", "plusmoin"]));
    assert!(!installed(), "purged");
    for p in [
        "/usr/bin/plusmoin",
        "/etc/plusmoin",
        "/var/lib/plusmoin",
        "/var/log/plusmoin",
        "/usr/share/plusmoin",
        "/usr/share/doc/plusmoin",
        "/usr/lib/systemd/system/plusmoin.service",
        "/usr/lib/tmpfiles.d/plusmoin.conf",
        "/run/plusmoin",
    ] {
        assert!(!Path::new(p).exists(), "{p} left after purge");
    }
    // The user stays (its uid is not given to someone else who would then
    // own what it left); this test removes it, as an administrator would.
    assert!(user_exists("plusmoin"), "plusmoin user kept after purge");
    assert!(group_exists("plusmoin"), "plusmoin group kept after purge");
    remove_user();
    assert!(!user_exists("plusmoin") && !group_exists("plusmoin"));
}

/// `cat` of the status file as nobody, with the plusmoin group (`gid`) as
/// a supplementary group: an operator added to that group.
fn nobody_in_group(gid: u32) -> Output {
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    run(Command::new("setpriv").args([
        &format!("--reuid={}", nobody.uid),
        &format!("--regid={}", nobody.gid),
        &format!("--groups={gid}"),
        "cat",
        "/var/lib/plusmoin/status.json",
    ]))
}

/// Without the optional tools (cargo-deb, systemd-analyze: a PATH and a
/// CARGO_HOME without them), the tests needing them print why they are
/// skipped and pass; with PLUSMOIN_REQUIRE_ALL=1 (as .ci/run sets it) they
/// fail, saying why. Runs this test binary again, on those two tests only.
#[test]
fn tests_without_their_tools_skip_saying_why_unless_all_are_required() {
    let dir = tempfile::tempdir().unwrap();
    let path =
        plusmoin_kit::path_without(&dir.path().join("bin"), &["systemd-analyze", "cargo-deb"]);
    let empty_home = dir.path().join("cargo-home");
    std::fs::create_dir(&empty_home).unwrap();
    let exe = std::env::current_exe().unwrap();
    for (test, reason) in [
        (
            "unit_is_sandboxed",
            "skipped: systemd-analyze is not installed",
        ),
        (
            "deb_installs_checks_its_config_and_purges_clean",
            if plusmoin_kit::is_root() {
                "skipped: cargo-deb is not installed"
            } else {
                "skipped: needs root"
            },
        ),
    ] {
        let child = |require: Option<&str>| {
            let mut c = Command::new(&exe);
            c.args([test, "--exact", "--nocapture", "--test-threads=1"])
                .env("PATH", &path)
                .env("CARGO_HOME", &empty_home)
                .env_remove(plusmoin_kit::REQUIRE_ALL);
            if let Some(v) = require {
                c.env(plusmoin_kit::REQUIRE_ALL, v);
            }
            run(&mut c)
        };
        let o = child(None);
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(o.status.success(), "{test} without its tool: {all}");
        assert!(all.contains(reason), "{test}: {all}");
        assert!(all.contains("1 passed"), "{test} ran: {all}");
        let o = child(Some("1"));
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(
            !o.status.success(),
            "{test} with PLUSMOIN_REQUIRE_ALL=1 must fail: {all}"
        );
        assert!(
            all.contains("PLUSMOIN_REQUIRE_ALL is set, and this test cannot run"),
            "{test}: {all}"
        );
    }
}

/// The unit's sandbox, scored as `systemd-analyze security` does, offline
/// (no running systemd needed): "OK" (at most 4.0) or better, and no
/// option systemd would ignore as unknown.
#[test]
fn unit_is_sandboxed() {
    if !plusmoin_kit::on_path("systemd-analyze") {
        plusmoin_kit::skip("systemd-analyze is not installed (apt-get install systemd)");
        return;
    }
    let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/plusmoin.service");
    let o = run(Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&unit));
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(
        o.status.success(),
        "systemd-analyze security --offline=true (systemd >= 252) failed: {out}{err}"
    );
    assert!(
        !err.contains("plusmoin.service:"),
        "systemd warns about the unit: {err}"
    );
    let line = out
        .lines()
        .find(|l| l.contains("Overall exposure level for plusmoin.service:"))
        .unwrap_or_else(|| panic!("no overall exposure level in: {out}"));
    let score: f64 = line
        .rsplit(": ")
        .next()
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no score in {line:?}"));
    assert!(score <= 4.0, "{line}:\n{out}");
}
