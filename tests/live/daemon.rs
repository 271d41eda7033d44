//! The daemon's lifecycle from the command line, against real servers:
//! background `start`, `status`, a refused second `start`, `reload` (nodes
//! added and removed, a broken file ignored), `stop`; and two instances on
//! the same servers.

use crate::monitor::{names, node, Plusmoin, Timings};
use crate::wait_until;
use plusmoin::demo::sandbox::Sandbox;
use plusmoin_kit::sandbox::SandboxExt;
use serde_json::Value;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::{Command, Output};
use std::time::Duration;

const LONG: Duration = Duration::from_secs(20);

/// `plusmoin -c CONFIG ARGS…` on `p`'s configuration.
pub(crate) fn plusmoin(p: &Plusmoin, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_plusmoin"))
        .arg("-c")
        .arg(&p.config_path)
        .args(args)
        .output()
        .expect("run plusmoin")
}

pub(crate) fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

pub(crate) fn pid_of(p: &Plusmoin) -> Option<i32> {
    std::fs::read_to_string(p.dir.path().join("plusmoin.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

pub(crate) fn alive(pid: i32) -> bool {
    // A zombie counts as gone.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false)
}

fn uid_of(pid: i32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// Stops a background daemon if a test fails half-way.
pub(crate) struct StopGuard<'a>(pub(crate) &'a Plusmoin);
impl Drop for StopGuard<'_> {
    fn drop(&mut self) {
        if let Some(pid) = pid_of(self.0) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

fn node_since(st: &Value, name: &str) -> Option<String> {
    let clusters = st["clusters"].as_array()?;
    clusters
        .iter()
        .flat_map(|c| {
            c["master"]
                .as_object()
                .map(|_| &c["master"])
                .into_iter()
                .chain(c["slaves"].as_array().into_iter().flatten())
                .chain(c["lost"].as_array().into_iter().flatten())
        })
        .find(|n| n["name"] == name)
        .and_then(|n| n["since"].as_str().map(String::from))
}

#[test]
fn background_daemon_status_reload_and_stop() {
    let sb = Sandbox::start(2).expect("sandbox");
    let root = nix::unistd::geteuid().is_root();
    let t = Timings {
        // As root the daemon drops to nobody: a real privilege change.
        daemon_user: root.then_some("nobody"),
        ..Timings::default()
    };
    let p = Plusmoin::configure(&sb, &t, "");
    let _guard = StopGuard(&p);
    // nobody must be able to write the status, run the trigger, record.
    for d in [p.dir.path().to_path_buf(), p.dir.path().join("events")] {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    let (n0, n1, n2) = (node(&sb, 0), node(&sb, 1), node(&sb, 2));
    p.write_config(&sb, &t, "", &[0, 1]);
    // A pid file left by a crash is taken over.
    std::fs::write(p.dir.path().join("plusmoin.pid"), "999999\n").unwrap();

    let o = plusmoin(&p, &["start"]);
    assert!(o.status.success(), "start: {}", text(&o.stderr));
    let pid = pid_of(&p).expect("pid file written");
    assert!(alive(pid));
    if root {
        let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
        assert_eq!(
            uid_of(pid),
            Some(nobody.uid.as_raw()),
            "runs as daemon_user"
        );
    }
    p.wait_status("two nodes watched", LONG, |st| {
        st["clusters"][0]["master"]["name"] == n0.as_str()
            && names(&st["clusters"][0]["slaves"]) == [n1.as_str()]
    });
    let log = std::fs::read_to_string(p.dir.path().join("plusmoin.log")).unwrap_or_default();
    assert!(log.contains("plusmoin starting"), "logs to log_file: {log}");

    let o = plusmoin(&p, &["status", "--table"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let table = text(&o.stdout);
    assert!(table.contains(&n0) && table.contains("master"), "{table}");
    assert!(table.contains(&n1) && table.contains("slave"), "{table}");
    let o = plusmoin(&p, &["status"]);
    assert!(o.status.success());
    let json: Value = serde_json::from_slice(&o.stdout).expect("status prints JSON");
    assert_eq!(json["clusters"][0]["cluster_id"], 0);

    let o = plusmoin(&p, &["start"]);
    assert_eq!(o.status.code(), Some(1), "second start refused");
    assert!(
        text(&o.stderr).contains(&format!("already running (pid {pid}")),
        "{}",
        text(&o.stderr)
    );

    // Reload: node 2 added, node 1 removed; node 0 keeps its state.
    let since0 = node_since(&p.status(), &n0).expect("since");
    p.write_config(&sb, &t, "", &[0, 2]);
    let o = plusmoin(&p, &["reload"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let st = p.wait_status("node 2 in, node 1 out", LONG, |st| {
        names(&st["clusters"][0]["slaves"]) == [n2.as_str()]
            && !st.to_string().contains(&format!("\"{n1}\""))
    });
    assert_eq!(
        node_since(&st, &n0),
        Some(since0),
        "unchanged node kept its state"
    );
    assert!(
        !p.changes()
            .iter()
            .any(|e| e.kind == "plusmoin_up" && e.payload["slaves"].to_string().contains(&n2)),
        "no restart: plusmoin_up is not run again"
    );

    // A broken configuration sent by SIGHUP: logged, the old one stays.
    std::fs::write(&p.config_path, "{ \"dbname\": ").unwrap();
    let o = plusmoin(&p, &["reload"]);
    assert_eq!(o.status.code(), Some(2), "reload checks the file first");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    assert!(
        wait_until(LONG, || {
            std::fs::read_to_string(p.dir.path().join("plusmoin.log"))
                .unwrap_or_default()
                .contains("configuration not reloaded, the old one stays in force")
        }),
        "broken reload logged"
    );
    let before = p.status()["updated_at_unix"].as_f64().unwrap_or(0.0);
    let st = p.wait_status("still beating after the broken reload", LONG, |st| {
        st["updated_at_unix"].as_f64().unwrap_or(0.0) > before + 1.0
    });
    assert_eq!(names(&st["clusters"][0]["slaves"]), [n2.as_str()]);
    assert!(alive(pid));

    p.write_config(&sb, &t, "", &[0, 2]);
    let o = plusmoin(&p, &["stop"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains(&format!("pid {pid}")));
    assert!(wait_until(Duration::from_secs(5), || !alive(pid)));
    let o = plusmoin(&p, &["status"]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "no status once the daemon is gone"
    );
}

#[test]
fn two_instances_on_the_same_servers_see_no_false_lag() {
    let sb = Sandbox::start(2).expect("sandbox");
    let ta = Timings {
        instance_name: "pgpool-a",
        ..Timings::default()
    };
    let tb = Timings {
        instance_name: "pgpool-b",
        heartbeat: 0.7,
        ..Timings::default()
    };
    let a = Plusmoin::start(&sb, &ta, "");
    let b = Plusmoin::start(&sb, &tb, "");
    let beats = |p: &Plusmoin| {
        p.events()
            .iter()
            .filter(|e| e.kind == "plusmoin_heartbeat")
            .count()
    };
    assert!(wait_until(LONG, || beats(&a) >= 12 && beats(&b) >= 12));
    for p in [&a, &b] {
        let changes: Vec<String> = p.changes().iter().map(|e| e.kind.clone()).collect();
        assert_eq!(changes, ["plusmoin_up"], "no flapping: {changes:?}");
        let st = p.status();
        let slaves = st["clusters"][0]["slaves"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert_eq!(slaves.len(), 2, "{st:#}");
        for s in slaves {
            let lag = s["lag"].as_f64().expect("lag");
            assert!(lag < 1.0, "false lag {lag} in {st:#}");
        }
    }
    let rows = sb
        .sql(0, "SELECT instance_name FROM plusmoin_heartbeat ORDER BY 1")
        .expect("rows");
    assert_eq!(rows.trim(), "pgpool-a\npgpool-b");
}

/// `daemon::run` takes its shutdown and reload as inputs: driven here
/// in-process with a oneshot and a channel, against the real sandbox. A
/// reload changing `heartbeat` shows in the status and in the pace of the
/// heartbeat triggers; shutdown returns Ok promptly.
#[test]
fn run_in_process_reloads_heartbeat_and_shuts_down_on_its_inputs() {
    let sb = Sandbox::start(1).expect("sandbox");
    let t = Timings::default();
    let p = Plusmoin::configure(&sb, &t, "");
    let config = plusmoin::config::load(&p.config_path).expect("config");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (reload_tx, reload_rx) = tokio::sync::mpsc::unbounded_channel();
    let path = p.config_path.clone();
    let inputs = plusmoin::daemon::Inputs {
        config_path: path,
        shutdown: async {
            let _ = stop_rx.await;
        },
        reload: reload_rx,
        http: None,
    };
    let daemon = rt.spawn(plusmoin::daemon::run(config, inputs, ()));
    p.wait_status("healthy at heartbeat 0.5", LONG, |st| {
        st["heartbeat"].as_f64() == Some(0.5)
            && names(&st["clusters"][0]["slaves"]) == [node(&sb, 1)]
    });

    // Reload with a 3 s heartbeat.
    let slow = Timings {
        heartbeat: 3.0,
        ..Timings::default()
    };
    p.write_config(&sb, &slow, "", &[0, 1]);
    reload_tx.send(()).expect("reload");
    p.wait_status("heartbeat 3 after the reload", LONG, |st| {
        st["heartbeat"].as_f64() == Some(3.0)
    });
    // The pace of the heartbeat triggers from now on: three of them span
    // two beats, 6 s at the new heartbeat (1 s at the old one). A trigger
    // delayed by a loaded machine can shorten the span by its delay only:
    // 4 s leaves 2 s of that.
    let seen = std::time::SystemTime::now();
    let after = |p: &Plusmoin| -> Vec<f64> {
        p.events()
            .iter()
            .filter(|e| e.kind == "plusmoin_heartbeat")
            .map(|e| e.secs_after(seen))
            .filter(|&s| s > 0.0)
            .collect()
    };
    if !wait_until(Duration::from_secs(40), || after(&p).len() >= 3) {
        p.fail("fewer than three heartbeat triggers in 40 s after the reload");
    }
    let at = after(&p);
    let span = at[2] - at[0];
    assert!(
        span >= 4.0,
        "three heartbeat triggers within {span:.2} s at a 3 s heartbeat: {at:?}"
    );

    let asked = std::time::Instant::now();
    stop_tx.send(()).expect("shutdown");
    let result = rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(10), daemon).await })
        .expect("run returned within 10 s")
        .expect("task");
    assert!(result.is_ok(), "{result:?}");
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "shutdown took {:?}",
        asked.elapsed()
    );
}

/// Alive, not a zombie, and still `sleep` (a hung pcp `exec`s into it).
fn sleeping(pid: i32) -> bool {
    alive(pid)
        && std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "sleep")
}

/// A reload takes new triggers and timeouts at once (the next probe's
/// deadline, the next trigger's command and limit), warns again about a
/// configuration others can read, and names the settings that wait for a
/// restart (here `log_level`: the log stays at debug).
#[test]
fn reload_applies_triggers_and_timeouts_and_warns_what_waits_for_a_restart() {
    let sb = Sandbox::start(1).expect("sandbox");
    let t = Timings::default();
    let p = Plusmoin::start(&sb, &t, "");
    let n1 = node(&sb, 1);
    p.wait_status("healthy", LONG, |st| {
        names(&st["clusters"][0]["slaves"]) == [n1.as_str()]
    });
    let readable = |p: &Plusmoin| {
        p.log()
            .lines()
            .filter(|l| l.contains("is readable by group or others"))
            .count()
    };
    std::fs::set_permissions(&p.config_path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let warned_at_start = readable(&p);
    assert!(warned_at_start >= 1, "a 0644 configuration is warned of");

    // The new slave_down trigger hangs: past the new trigger_timeout it is
    // killed, and logged with that timeout.
    let pid_file = p.dir.path().join("hang.pid");
    let hang = p.dir.path().join("hang.sh");
    std::fs::write(
        &hang,
        format!(
            "#!/bin/sh\necho $$ > {}\nexec sleep 300\n",
            pid_file.display()
        ),
    )
    .unwrap();
    crate::monitor::make_executable(&hang);
    let reloaded = Timings {
        connect_timeout: 1.5,
        trigger_timeout: 1.0,
        log_level: "error",
        triggers: vec![("slave_down", hang.display().to_string())],
        ..Timings::default()
    };
    p.write_config(&sb, &reloaded, "", &[0, 1]);
    std::fs::set_permissions(&p.config_path, std::fs::Permissions::from_mode(0o644)).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(p.pid() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    let warning = |p: &Plusmoin| {
        p.log()
            .lines()
            .find(|l| l.contains("take effect only when plusmoin is started again"))
            .map(String::from)
    };
    if !wait_until(LONG, || warning(&p).is_some()) {
        p.fail("no warning for log_level changed by a reload");
    }
    let line = warning(&p).unwrap_or_default();
    assert!(
        line.contains("WARN") && line.contains("keys=\"log_level\""),
        "{line}"
    );
    assert!(
        readable(&p) > warned_at_start,
        "the readable configuration is warned of again on reload"
    );

    // Frozen: down at the new connect_timeout (the old one would say 3s).
    sb.freeze(1).expect("freeze");
    let _thaw = Thaw(&sb, 1);
    let st = p.wait_status("the frozen standby lost", LONG, |st| {
        names(&st["clusters"][0]["lost"]) == [n1.as_str()]
    });
    let reason = st["clusters"][0]["lost"][0]["reason"]
        .as_str()
        .unwrap_or("");
    assert_eq!(reason, "no answer within 1.5s", "{st:#}");
    let timed_out = |p: &Plusmoin| {
        p.log()
            .lines()
            .find(|l| l.contains("trigger timed out") && l.contains("slave_down"))
            .map(String::from)
    };
    if !wait_until(LONG, || timed_out(&p).is_some()) {
        p.fail("the new slave_down trigger was not timed out");
    }
    let line = timed_out(&p).unwrap_or_default();
    assert!(
        line.contains("timeout_s=1.0") || line.contains("timeout_s=1 "),
        "{line}"
    );
    assert!(line.contains(&hang.display().to_string()), "{line}");
    assert!(
        !p.changes().iter().any(|e| e.kind == "slave_down"),
        "the old slave_down trigger ran: {:?}",
        p.changes().iter().map(|e| &e.kind).collect::<Vec<_>>()
    );
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .expect("the new trigger ran")
        .trim()
        .parse()
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || !sleeping(pid)),
        "the timed-out trigger was killed"
    );
    // log_level stayed at debug: debug lines still come after the reload.
    let after = p.log().len();
    if !wait_until(LONG, || p.log()[after..].contains("DEBUG")) {
        p.fail("no debug line after the reload");
    }
}

/// Thaws a frozen node, also when the test fails.
struct Thaw<'a>(&'a Sandbox, usize);
impl Drop for Thaw<'_> {
    fn drop(&mut self) {
        let _ = self.0.thaw(self.1);
    }
}

/// A pcp command that hangs (every template runs a script that sleeps,
/// pcp_timeout far longer than the test) holds up neither the beats, nor
/// the status file, nor the events: the sidecar's round waits for it on a
/// worker of its own.
#[test]
fn a_hanging_pcp_holds_up_neither_beats_nor_status_nor_events() {
    let sb = Sandbox::start(1).expect("sandbox");
    let t = Timings::default();
    let mut p = Plusmoin::configure(&sb, &t, "");
    let d = p.dir.path().to_path_buf();
    let hang = d.join("pcp-hang.sh");
    std::fs::write(
        &hang,
        "#!/bin/sh\necho $$ >> \"$(dirname \"$0\")/pcp.pids\"\nexec sleep 300\n",
    )
    .unwrap();
    crate::monitor::make_executable(&hang);
    std::fs::write(
        d.join("pgpool.conf"),
        format!(
            "backend_hostname0 = '{h}'\nbackend_port0 = {p0}\nbackend_hostname1 = '{h}'\nbackend_port1 = {p1}\n",
            h = sb.host(),
            p0 = sb.port(0),
            p1 = sb.port(1)
        ),
    )
    .unwrap();
    let cmd = format!("{} {{{{node_id}}}}", hang.display());
    let extra = format!(
        r#", "pgpool": {{"pcp_user": "pgpool", "pcppass_file": "{d}/pcppass",
            "pgpool_conf": "{d}/pgpool.conf", "pcp_timeout": 600,
            "templates": {{"attach": "{cmd}", "detach": "{cmd}", "node_info": "{cmd}",
                           "watchdog_info": "{cmd}"}}}}"#,
        d = d.display()
    );
    p.write_config(&sb, &t, &extra, &[0, 1]);
    p.spawn();
    let n1 = node(&sb, 1);
    let pcp_pids = || -> Vec<i32> {
        std::fs::read_to_string(d.join("pcp.pids"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    };
    // The positive sign: a round is under way and its pcp hangs.
    if !wait_until(LONG, || pcp_pids().iter().any(|&pid| sleeping(pid))) {
        p.fail("no pcp command started");
    }
    let hung = pcp_pids();
    let beats = |p: &Plusmoin| {
        p.events()
            .iter()
            .filter(|e| e.kind == "plusmoin_heartbeat")
            .count()
    };
    let (b0, at0) = (
        beats(&p),
        p.status()["updated_at_unix"].as_f64().unwrap_or(0.0),
    );
    // Four beats and two seconds of status while it hangs (the first hung
    // command has 600 s to go).
    if !wait_until(LONG, || {
        beats(&p) >= b0 + 4 && p.status()["updated_at_unix"].as_f64().unwrap_or(0.0) >= at0 + 2.0
    }) {
        p.fail("beats or the status file waited for the hung pcp");
    }
    sb.stop(1).expect("stop the standby");
    p.wait_event("slave_down while pcp hangs", LONG, |e| {
        e.kind == "slave_down" && e.about(&n1)
    });
    p.wait_status("the standby lost in the status", LONG, |st| {
        names(&st["clusters"][0]["lost"]) == [n1.as_str()]
    });
    assert!(
        hung.iter().any(|&pid| sleeping(pid)),
        "all this happened while the first pcp commands {hung:?} still hung"
    );
    assert!(p.terminate(), "clean exit with pcp hanging");
    assert!(
        wait_until(Duration::from_secs(5), || !pcp_pids()
            .iter()
            .any(|&pid| sleeping(pid))),
        "hung pcp commands killed at shutdown"
    );
}

fn plusmoin_log(p: &Plusmoin) -> String {
    std::fs::read_to_string(p.dir.path().join("plusmoin.log")).unwrap_or_default()
}

/// The Debian package's set-up: the configuration root's, readable by the
/// daemon user's group only (root:plusmoin 0640). After the switch to
/// `daemon_user` the daemon must still read it on reload; and a file its
/// group may write is warned about on reload.
#[test]
fn reload_after_the_privilege_drop_reads_a_root_group_0640_config() {
    if !nix::unistd::geteuid().is_root() {
        plusmoin_kit::skip("needs root (a privilege drop)");
        return;
    }
    let sb = Sandbox::start(1).expect("sandbox");
    let t = Timings {
        daemon_user: Some("nobody"),
        ..Timings::default()
    };
    let p = Plusmoin::configure(&sb, &t, "");
    let _guard = StopGuard(&p);
    for d in [p.dir.path().to_path_buf(), p.dir.path().join("events")] {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    let (n0, n1) = (node(&sb, 0), node(&sb, 1));
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    // write_config replaces the file: its owner and mode are set again.
    let restrict = |mode: u32| {
        nix::unistd::chown(&p.config_path, Some(nix::unistd::ROOT), Some(nobody.gid)).unwrap();
        std::fs::set_permissions(&p.config_path, std::fs::Permissions::from_mode(mode)).unwrap();
        let meta = std::fs::metadata(&p.config_path).unwrap();
        assert_eq!(
            (meta.uid(), meta.gid(), meta.mode() & 0o777),
            (0, nobody.gid.as_raw(), mode)
        );
    };
    p.write_config(&sb, &t, "", &[0]);
    restrict(0o640);

    let o = plusmoin(&p, &["start"]);
    assert!(o.status.success(), "start: {}", text(&o.stderr));
    assert!(
        !text(&o.stderr).contains("warning"),
        "root:nobody's group 0640 is fine: {}",
        text(&o.stderr)
    );
    let pid = pid_of(&p).expect("pid file written");
    assert_eq!(uid_of(pid), Some(nobody.uid.as_raw()), "runs as nobody");
    p.wait_status("one node watched", LONG, |st| {
        st["clusters"][0]["master"]["name"] == n0.as_str()
    });

    p.write_config(&sb, &t, "", &[0, 1]);
    restrict(0o640);
    let o = plusmoin(&p, &["reload"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    p.wait_status("the standby added by the reload", LONG, |st| {
        names(&st["clusters"][0]["slaves"]) == [n1.as_str()]
    });
    let log = plusmoin_log(&p);
    assert!(log.contains("configuration reloaded"), "{log}");
    assert!(!log.contains("not reloaded"), "{log}");

    // Group-writable: reloaded (the group may read it) but warned about.
    restrict(0o660);
    let o = plusmoin(&p, &["reload"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(wait_until(LONG, || plusmoin_log(&p)
        .contains("is writable by its group (mode 0660)")));
    let o = plusmoin(&p, &["stop"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
}

/// Every process in `/proc` with its parent and real uid.
fn processes() -> Vec<(i32, i32, u32)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            let field = |name: &str| {
                status
                    .lines()
                    .find(|l| l.starts_with(name))?
                    .split_whitespace()
                    .nth(1)?
                    .parse::<u32>()
                    .ok()
            };
            Some((pid, field("PPid:")? as i32, field("Uid:")?))
        })
        .collect()
}

/// `root` and every process below it.
fn descendants(root: i32) -> Vec<(i32, u32)> {
    let all = processes();
    let mut found: Vec<(i32, u32)> = Vec::new();
    let mut frontier = vec![root];
    while let Some(parent) = frontier.pop() {
        for &(pid, ppid, uid) in &all {
            if ppid == parent && !found.iter().any(|(p, _)| *p == pid) {
                found.push((pid, uid));
                frontier.push(pid);
            }
        }
    }
    found
}

/// The demo started by a test: interrupted (as Ctrl-C would) and reaped
/// however the test ends, so it stops its servers.
struct Demo(std::process::Child);

impl Drop for Demo {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
        if !wait_until(LONG, || matches!(self.0.try_wait(), Ok(Some(_)))) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// `plusmoin demo` run as root: the servers, plusmoin and its triggers all
/// run as `postgres`; only the demo's own first process is root. Triggers
/// are seen through a `jq` of ours first on the PATH (the example trigger
/// uses jq when there is one), which records who runs it.
#[test]
fn demo_as_root_runs_nothing_as_root_but_itself() {
    if !nix::unistd::geteuid().is_root() {
        plusmoin_kit::skip("needs root");
        return;
    }
    let tools = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tools.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let uids = tools.path().join("uids");
    let jq = tools.path().join("jq");
    std::fs::write(
        &jq,
        format!(
            "#!/bin/sh\nid -u >> '{}'\ncat >/dev/null\necho recorded-by-test-jq\n",
            uids.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&jq, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        tools.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut demo = Demo(
        Command::new(env!("CARGO_BIN_EXE_plusmoin"))
            .args(["demo", "--no-story"])
            .env("PATH", path)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("run plusmoin demo"),
    );
    let demo_pid = demo.0.id() as i32;
    let postgres = nix::unistd::User::from_name("postgres").unwrap().unwrap();
    // plusmoin_up at the start.
    let enough = wait_until(Duration::from_secs(120), || {
        assert!(
            matches!(demo.0.try_wait(), Ok(None)),
            "the demo ended early"
        );
        std::fs::read_to_string(&uids).is_ok_and(|s| s.lines().count() >= 1)
    });
    assert!(enough, "no triggers ran within 120 s");
    let recorded = std::fs::read_to_string(&uids).unwrap();
    for uid in recorded.lines() {
        assert_eq!(uid, postgres.uid.to_string(), "a trigger's uid: {recorded}");
    }
    let below = descendants(demo_pid);
    let plusmoin_child = below.iter().find(|(pid, _)| {
        std::fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|c| String::from_utf8_lossy(&c).contains("start"))
    });
    assert!(
        plusmoin_child.is_some_and(|(_, uid)| *uid == postgres.uid.as_raw()),
        "plusmoin runs as postgres: {below:?}"
    );
    let as_root: Vec<_> = below.iter().filter(|(_, uid)| *uid == 0).collect();
    assert!(as_root.is_empty(), "run as root by the demo: {as_root:?}");
    drop(demo);
}

/// A loopback port below 1024 that nothing listens on (root only).
fn free_privileged_port() -> Option<u16> {
    (900..1024).find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
}

/// The HTTP listener is bound as root, before the daemon drops to
/// `daemon_user`: a port below 1024 works (no other local user can take it
/// first), and the daemon serves on it as nobody.
#[test]
fn http_listen_below_1024_is_bound_before_the_privilege_drop() {
    if !nix::unistd::geteuid().is_root() {
        plusmoin_kit::skip("only root can show a port below 1024 bound before the drop");
        return;
    }
    let sb = Sandbox::start(1).expect("sandbox");
    let port = free_privileged_port().expect("a free port below 1024");
    let t = Timings {
        daemon_user: Some("nobody"),
        ..Timings::default()
    };
    let listen = format!(r#", "http_listen": "127.0.0.1:{port}""#);
    let p = Plusmoin::configure(&sb, &t, &listen);
    let _guard = StopGuard(&p);
    for d in [p.dir.path().to_path_buf(), p.dir.path().join("events")] {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    let o = plusmoin(&p, &["start"]);
    assert!(o.status.success(), "start: {}", text(&o.stderr));
    let pid = pid_of(&p).expect("pid file written");
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    assert_eq!(uid_of(pid), Some(nobody.uid.as_raw()), "runs as nobody");
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let ok = wait_until(LONG, || crate::http::get(addr, "/health").0 == 200);
    assert!(ok, "the daemon, now nobody, answers on port {port}");
}
