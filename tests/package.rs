//! The Debian package (README "Running it"): built with cargo-deb,
//! installed with dpkg, its shipped configuration checked, then purged,
//! leaving nothing behind.
//!
//! The .deb is made from the binary `cargo test` has just built
//! (`cargo deb --no-build --profile dev`, stripped by cargo-deb, `--fast`
//! compression): a release build would take minutes more on a small CI
//! machine and this test checks the packaging (files, modes, owners,
//! maintainer scripts, unit), not the optimiser. README's command builds
//! the release package. cargo-deb 3.8 warns that the dev profile is
//! unusual; .ci/run pins that version.
//!
//! Needs root (dpkg -i) and cargo-deb: without either it fails, saying why.

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

/// Purges the package even when an assertion fails half-way.
struct Purge;
impl Drop for Purge {
    fn drop(&mut self) {
        let _ = Command::new("dpkg").args(["--purge", "plusmoin"]).output();
    }
}

fn build_deb() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let has_deb = run(Command::new(&cargo).args(["deb", "--version"]))
        .status
        .success();
    assert!(
        has_deb,
        "cargo-deb is not installed: install it with `cargo install cargo-deb --version 3.8.0 --locked` \
         (.ci/run does), then run the tests again"
    );
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
    let deb = build_deb();
    let contents = ok(Command::new("dpkg-deb").arg("-c").arg(&deb));
    for f in [
        "./usr/bin/plusmoin",
        "./etc/plusmoin/plusmoin.json",
        "./usr/lib/systemd/system/plusmoin.service",
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
        nix::unistd::Uid::effective().is_root(),
        "installing the .deb (dpkg -i) needs root: run this test as root (CI does)"
    );
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
        "LogsDirectory=plusmoin",
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

    // The shipped configuration passes check-config, run as the daemon's
    // user as the unit's ExecStartPre does, without warnings (its group may
    // read it: that group is the daemon's).
    let o = run(Command::new("setpriv")
        .args([
            &format!("--reuid={}", user.uid),
            &format!("--regid={}", group.gid),
            "--clear-groups",
            "/usr/bin/plusmoin",
            "-c",
            "/etc/plusmoin/plusmoin.json",
            "check-config",
        ])
        .env("HOME", "/var/lib/plusmoin"));
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(
        o.status.success() && out.contains("configuration OK"),
        "{out}{err}"
    );
    assert!(!err.contains("warning"), "check-config warns: {err}");

    // Upgrade in place (same version again): configure runs again, the
    // conffile keeps its group.
    ok(Command::new("dpkg").arg("-i").arg(&deb));
    let m = std::fs::metadata(conf).unwrap();
    assert_eq!((m.mode() & 0o7777, m.gid()), (0o640, group.gid.as_raw()));

    // A file the daemon would leave in its state directory.
    std::fs::create_dir_all("/var/lib/plusmoin").unwrap();
    std::fs::write("/var/lib/plusmoin/status.json", "{}").unwrap();

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
    ] {
        assert!(!Path::new(p).exists(), "{p} left after purge");
    }
    assert!(!user_exists("plusmoin"), "plusmoin user left after purge");
    assert!(!group_exists("plusmoin"), "plusmoin group left after purge");
}
