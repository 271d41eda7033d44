//! A daemon started as root lives as `daemon_user`: once root is dropped,
//! HOME, USER and LOGNAME are that user's (from its passwd entry) and PATH
//! is the system's plain one, for the daemon and the triggers it runs,
//! whatever the environment of the shell that started it.

use crate::monitor::{Plusmoin, Timings};
use crate::wait_until;
use plusmoin::demo::sandbox::Sandbox;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

#[test]
fn triggers_of_a_daemon_started_as_root_get_the_daemon_users_environment() {
    if !plusmoin_kit::is_root() {
        plusmoin_kit::skip("needs root (a privilege drop)");
        return;
    }
    let sb = Sandbox::start(1).expect("sandbox");
    let out = tempfile::tempdir().unwrap();
    std::fs::set_permissions(out.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let env_file = out.path().join("env");
    let t = Timings {
        daemon_user: Some("nobody"),
        triggers: vec![(
            "plusmoin_up",
            format!(
                "/bin/sh -c 'env > {}.tmp && mv {0}.tmp {0}'",
                env_file.display()
            ),
        )],
        ..Timings::default()
    };
    let p = Plusmoin::configure(&sb, &t, "");
    for d in [p.dir.path().to_path_buf(), p.dir.path().join("events")] {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    struct Stop<'a>(&'a Plusmoin);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            let _ = crate::daemon::plusmoin(self.0, &["stop"]);
        }
    }
    // Started from root's shell, with root's HOME and a PATH of its own.
    let path = std::env::var("PATH").unwrap_or_default();
    let o = Command::new(env!("CARGO_BIN_EXE_plusmoin"))
        .arg("-c")
        .arg(&p.config_path)
        .arg("start")
        .env("HOME", "/root")
        .env("USER", "root")
        .env("LOGNAME", "root")
        .env("PATH", format!("/opt/roots-own/bin:{path}"))
        .output()
        .expect("run plusmoin");
    let _stop = Stop(&p);
    assert!(
        o.status.success(),
        "start: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        wait_until(Duration::from_secs(30), || env_file.exists()),
        "plusmoin_up ran within 30 s"
    );
    let env = std::fs::read_to_string(&env_file).unwrap();
    let var = |name: &str| {
        env.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .map(str::to_string)
    };
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    assert_eq!(
        var("HOME").as_deref(),
        nobody.dir.to_str(),
        "the daemon user's home:\n{env}"
    );
    assert_eq!(var("USER").as_deref(), Some("nobody"), "{env}");
    assert_eq!(var("LOGNAME").as_deref(), Some("nobody"), "{env}");
    assert_eq!(
        var("PATH").as_deref(),
        Some("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
        "{env}"
    );
    assert_eq!(
        var("PLUSMOIN_TRIGGER").as_deref(),
        Some("plusmoin_up"),
        "{env}"
    );
}
