//! The `plusmoin` binary's commands that need no database: check-config on
//! good and bad files, status without a daemon, --help and --version.

use std::path::Path;
use std::process::{Command, Output};

/// Runs plusmoin with `home` as its HOME and no PGPASSFILE, so that the
/// machine's own `~/.pgpass` never changes what it says.
fn plusmoin_in(home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_plusmoin"))
        .args(args)
        .env("HOME", home)
        .env_remove("PGPASSFILE")
        .output()
        .expect("run plusmoin")
}

fn plusmoin(args: &[&str]) -> Output {
    let home = tempfile::tempdir().expect("empty home");
    plusmoin_in(home.path(), args)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn contrib() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("contrib/plusmoin.json")
        .display()
        .to_string()
}

#[test]
fn check_config_accepts_the_example_and_prints_a_summary() {
    // As shipped, the placeholder password is refused: exit 2, one line
    // naming file, line and key.
    let o = plusmoin(&["-c", &contrib(), "check-config"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("contrib/plusmoin.json:24:")
            && err.contains("password: \"change-me\" is the shipped"),
        "{err}"
    );
    // With the password set, it passes.
    let dir = tempfile::tempdir().unwrap();
    let set = dir.path().join("plusmoin.json");
    let text = std::fs::read_to_string(contrib()).unwrap();
    std::fs::write(&set, text.replace("\"change-me\"", "\"s3cret\"")).unwrap();
    let o = plusmoin(&["-c", set.to_str().unwrap(), "check-config"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("127.0.0.1:5432"), "{out}");
    assert!(out.contains("configuration OK"), "{out}");
    assert!(!out.contains("s3cret"), "password shown: {out}");
    assert!(
        out.contains("http_listen          (off: no metrics or health endpoints)"),
        "{out}"
    );
}

/// Each bad configuration exits 2 with one line naming file, key, position.
#[test]
fn check_config_rejects_each_bad_file_with_one_precise_line() {
    let dir = tempfile::tempdir().unwrap();
    let base = r#""dbname": "p", "user": "u", "password": "secret-pw""#;
    let cases: &[(&str, String, &str)] = &[
        ("malformed", format!("{{{base}, \"heartbeat\": }}"), ":1:"),
        ("missing", r#"{"dbname": "p", "user": "u"}"#.into(), "missing required key \"password\""),
        ("unknown", format!("{{{base},\n \"hearbeat\": 5}}"), ":2:2: unknown key \"hearbeat\" (did you mean \"heartbeat\"?)"),
        ("type", format!("{{{base}, \"heartbeat\": \"fast\"}}"), "heartbeat"),
        ("dup", format!("{{{base}, \"nodes\": [{{\"host\": \"a\", \"port\": 1}}, {{\"host\": \"a\", \"port\": 1}}]}}"), "duplicate node a:1"),
        ("port", format!("{{{base}, \"nodes\": [{{\"host\": \"a\", \"port\": 70000}}]}}"), "nodes[0].port"),
        ("host", format!("{{{base}, \"nodes\": [{{\"host\": \"\", \"port\": 5432}}]}}"), "nodes[0].host"),
        ("recover", format!("{{{base}, \"max_sync_delay\": 10, \"recover_sync_delay\": 20}}"), "recover_sync_delay"),
        ("zero", format!("{{{base}, \"heartbeat\": 0}}"), "heartbeat"),
        ("negative", format!("{{{base}, \"connect_timeout\": -1}}"), "connect_timeout"),
        ("trigger", format!("{{{base}, \"triggers\": {{\"slave_dwn\": \"/bin/true\"}}}}"), "slave_down"),
        ("level", format!("{{{base}, \"log_level\": \"verbose\"}}"), "log_level"),
    ];
    for (name, text, expect) in cases {
        let path = dir.path().join(format!("{name}.json"));
        std::fs::write(&path, text).unwrap();
        let o = plusmoin(&["-c", path.to_str().unwrap(), "check-config"]);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{name}: {err}");
        assert_eq!(err.lines().count(), 1, "{name}: one line: {err}");
        assert!(
            err.contains(&path.display().to_string()),
            "{name}: names the file: {err}"
        );
        assert!(err.contains(expect), "{name}: expected {expect:?} in {err}");
        assert!(!err.contains("secret-pw"), "{name}: password leaked: {err}");
        assert!(!err.contains("panicked"), "{name}: {err}");
    }
    // The same file without a password is fine when the pgpass file of the
    // HOME plusmoin runs with has one: the "missing" case above holds only
    // because that HOME has none.
    let home = tempfile::tempdir().unwrap();
    let pgpass = home.path().join(".pgpass");
    std::fs::write(&pgpass, "*:*:*:*:from-pgpass\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&pgpass, std::fs::Permissions::from_mode(0o600)).unwrap();
    let missing = dir.path().join("missing.json");
    let o = plusmoin_in(
        home.path(),
        &["-c", missing.to_str().unwrap(), "check-config"],
    );
    assert!(
        o.status.success(),
        "password from ~/.pgpass: {}",
        stderr(&o)
    );
    let o = plusmoin(&["-c", "/nonexistent/plusmoin.json", "check-config"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("/nonexistent/plusmoin.json"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn status_without_a_daemon_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("p.json");
    let status = dir.path().join("status.json");
    std::fs::write(
        &cfg,
        format!(
            r#"{{"dbname": "p", "user": "u", "password": "x", "status_file": "{}"}}"#,
            status.display()
        ),
    )
    .unwrap();
    let o = plusmoin(&["-c", cfg.to_str().unwrap(), "status"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("no status file"), "{}", stderr(&o));
    // A status written long ago is refused as stale, in both formats.
    std::fs::write(
        &status,
        r#"{"clusters": [], "clusterless": [], "instance_name": "i", "updated_at": "2020-01-01T00:00:00.000Z",
            "updated_at_unix": 1577836800.0, "heartbeat": 1.0, "pid": 1, "held": []}"#,
    )
    .unwrap();
    for extra in [&[][..], &["--table"][..]] {
        let mut args = vec!["-c", cfg.to_str().unwrap(), "status"];
        args.extend_from_slice(extra);
        let o = plusmoin(&args);
        assert_eq!(o.status.code(), Some(1));
        assert!(
            stderr(&o).contains("older than three beats"),
            "{}",
            stderr(&o)
        );
    }
}

#[test]
fn stop_and_reload_without_a_daemon_do_not_panic() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("p.json");
    std::fs::write(
        &cfg,
        format!(
            r#"{{"dbname": "p", "user": "u", "password": "x", "pid_file": "{}/p.pid"}}"#,
            dir.path().display()
        ),
    )
    .unwrap();
    let o = plusmoin(&["-c", cfg.to_str().unwrap(), "stop"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("not running"), "{}", stderr(&o));
    let o = plusmoin(&["-c", cfg.to_str().unwrap(), "reload"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("not running"), "{}", stderr(&o));
}

/// `stop` and `status` need only the pid and status files: a configuration
/// broken elsewhere (a stray comma, a password file that is not there) still
/// gives them, and `--pid-file`/`--status-file` stand in for it. `reload`
/// refuses it as check-config does, with file, line and column, before
/// looking for a daemon.
#[test]
fn stop_and_status_read_their_paths_from_a_broken_config_and_reload_refuses_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let cfg = dir.path().join("p.json");
    std::fs::write(
        &cfg,
        format!(
            "{{\"dbname\": \"p\", \"user\": \"u\", \"password_file\": \"{d}/missing\",\n \
             \"pid_file\": \"{d}/p.pid\",,\n \"status_file\": \"{d}/s.json\"}}"
        ),
    )
    .unwrap();
    let c = cfg.to_str().unwrap();
    let o = plusmoin(&["-c", c, "check-config"]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "the file is broken: {}",
        stderr(&o)
    );

    let o = plusmoin(&["-c", c, "stop"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!("not running (no live daemon holds {d}/p.pid)")),
        "{}",
        stderr(&o)
    );
    let o = plusmoin(&["-c", c, "status"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains(&format!("no status file at {d}/s.json")),
        "{}",
        stderr(&o)
    );
    let o = plusmoin(&["-c", c, "stop", "--pid-file", &format!("{d}/other.pid")]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!("{d}/other.pid")),
        "{}",
        stderr(&o)
    );
    // An unreadable configuration: the options, and a warning, suffice.
    let gone = dir.path().join("gone.json");
    let g = gone.to_str().unwrap();
    let o = plusmoin(&[
        "-c",
        g,
        "status",
        "--status-file",
        &format!("{d}/s2.json"),
        "--pid-file",
        &format!("{d}/p.pid"),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains(&format!("no status file at {d}/s2.json")),
        "{}",
        stderr(&o)
    );
    assert!(
        !stderr(&o).contains("warning"),
        "both given: {}",
        stderr(&o)
    );
    let o = plusmoin(&["-c", g, "stop"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!("warning: {g}: cannot read"))
            && stderr(&o).contains("--pid-file"),
        "{}",
        stderr(&o)
    );

    let o = plusmoin(&["-c", c, "reload"]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.starts_with(&format!("plusmoin: {c}:2:")),
        "file:line:col: {err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(!err.contains("not running"), "no daemon looked for: {err}");
}

#[test]
fn help_and_version() {
    let o = plusmoin(&["--version"]);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("plusmoin "));
    for cmd in ["start", "stop", "reload", "status", "check-config", "demo"] {
        let o = plusmoin(&[cmd, "--help"]);
        assert!(o.status.success(), "{cmd} --help");
        assert!(!o.stdout.is_empty());
    }
    let o = plusmoin(&["frobnicate"]);
    assert_eq!(o.status.code(), Some(2));
}

/// README "Failure handling": a configuration, password file or pgpass file
/// that group or others can read is warned of by check-config (which still
/// accepts it), each naming its file; private ones are not.
#[test]
fn check_config_warns_of_secret_files_others_can_read() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let mode =
        |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    let pw = dir.path().join("password");
    std::fs::write(&pw, "secret-pw\n").unwrap();
    let with_file = dir.path().join("with-file.json");
    std::fs::write(
        &with_file,
        format!(
            r#"{{"dbname": "p", "user": "u", "password_file": "{}"}}"#,
            pw.display()
        ),
    )
    .unwrap();
    let home = tempfile::tempdir().unwrap();
    let pgpass = home.path().join(".pgpass");
    std::fs::write(&pgpass, "*:*:*:*:from-pgpass\n").unwrap();
    let with_pgpass = dir.path().join("with-pgpass.json");
    std::fs::write(
        &with_pgpass,
        r#"{"dbname": "p", "user": "u", "nodes": [{"host": "db1"}]}"#,
    )
    .unwrap();
    let warning = |p: &Path| format!("{} is readable by group or others", p.display());
    let check = |config: &Path| {
        let o = plusmoin_in(
            home.path(),
            &["-c", config.to_str().unwrap(), "check-config"],
        );
        (o.status.success(), stderr(&o))
    };

    for (config, secret) in [(&with_file, &pw), (&with_pgpass, &pgpass)] {
        mode(config, 0o600);
        mode(secret, 0o600);
        let (ok, err) = check(config);
        assert!(ok, "{err}");
        assert!(!err.contains("readable"), "private files: {err}");

        mode(config, 0o644);
        let (ok, err) = check(config);
        assert!(ok, "{err}");
        assert!(err.contains(&warning(config)), "{err}");
        mode(config, 0o600);

        mode(secret, 0o640);
        let (ok, err) = check(config);
        if secret == &pw {
            assert!(ok, "{err}");
            assert!(err.contains(&warning(secret)), "{err}");
        } else {
            // As libpq: a pgpass file others can read is ignored, said so.
            assert!(!ok, "{err}");
            assert!(
                err.contains(&format!(
                    "password file {} has group or world access",
                    secret.display()
                )),
                "{err}"
            );
        }
        assert!(
            !err.contains("secret-pw") && !err.contains("from-pgpass"),
            "{err}"
        );
    }
}

/// A link planted where the pid file or the log file goes (their
/// directories are often the daemon user's): `start` refuses, naming the
/// file and saying why, and the file the link points to is untouched.
#[test]
fn start_refuses_links_planted_as_the_pid_or_log_file() {
    use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
    let dir = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let target = elsewhere.path().join("precious");
    std::fs::write(&target, "precious\n").unwrap();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).unwrap();
    let d = dir.path();
    let cfg = d.join("plusmoin.json");
    std::fs::write(
        &cfg,
        format!(
            r#"{{"dbname": "d", "user": "u", "password": "p",
                "pid_file": "{d}/plusmoin.pid", "log_file": "{d}/plusmoin.log",
                "status_file": "{d}/status.json",
                "nodes": [{{"host": "127.0.0.1", "port": 1}}]}}"#,
            d = d.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o600)).unwrap();
    for planted in ["plusmoin.pid", "plusmoin.log"] {
        let link = d.join(planted);
        symlink(&target, &link).unwrap();
        let o = plusmoin(&["-c", cfg.to_str().unwrap(), "start"]);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{planted}: {err}");
        assert!(
            err.contains(&link.display().to_string()),
            "{planted}: names the file: {err}"
        );
        assert!(err.contains("symbolic link"), "{planted}: says why: {err}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious\n");
        assert_eq!(std::fs::metadata(&target).unwrap().mode() & 0o777, 0o600);
        std::fs::remove_file(&link).unwrap();
    }
}
