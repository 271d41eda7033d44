//! The event journal on real servers (issue 24): `plusmoin events` holds
//! what the triggers were told, with the same ids and times; it survives
//! a restart and a `kill -9`; its filters select exactly; `--follow` keeps
//! up, across rotations; `/events` serves it; `status --watch` redraws in
//! a real terminal.

use crate::http::free_port;
use crate::monitor::{healthy, make_executable, node, Plusmoin, Timings};
use crate::wait_until;
use plusmoin::demo::sandbox::Sandbox;
use serde_json::Value;
use std::io::BufRead;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

const LONG: Duration = Duration::from_secs(30);

/// `plusmoin -c CONFIG events --json ARGS`: the records, parsed.
fn events(p: &Plusmoin, args: &[&str]) -> Vec<Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_plusmoin"))
        .arg("-c")
        .arg(&p.config_path)
        .args(["events", "--json"])
        .args(args)
        .output()
        .expect("run plusmoin events");
    assert!(
        out.status.success(),
        "plusmoin events {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn ids(records: &[Value]) -> Vec<u64> {
    records.iter().map(|r| r["id"].as_u64().unwrap()).collect()
}

fn journal_path(p: &Plusmoin) -> std::path::PathBuf {
    p.dir.path().join("events.jsonl")
}

/// Waits until the journal holds a record matching `pred`.
fn wait_record(p: &Plusmoin, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let mut found = None;
    wait_until(LONG, || {
        found = events(p, &[]).into_iter().find(&pred);
        found.is_some()
    });
    found.unwrap_or_else(|| p.fail(&format!("no journal record {what} within {LONG:?}")))
}

/// A slave_down trigger that records its payload, then fails with 3.
fn failing_slave_down(p: &Plusmoin) -> String {
    let script = p.dir.path().join("fail.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n\"{}\"\nexit 3\n",
            p.dir.path().join("record.sh").display()
        ),
    )
    .expect("write fail.sh");
    make_executable(&script);
    script.display().to_string()
}

/// A standby stopped and started, and a trigger that fails: the journal
/// has each event with the id and time its trigger's payload carried, and
/// the failed run with its exit status; `--node` and `--since` select
/// exactly the records they name.
#[test]
fn events_match_the_payloads_and_filters_select_exactly() {
    let sb = Sandbox::start(2).expect("sandbox");
    let mut p = Plusmoin::configure(&sb, &Timings::default(), "");
    let fail = failing_slave_down(&p);
    let t = Timings {
        triggers: vec![("slave_down", fail)],
        ..Timings::default()
    };
    p.write_config(&sb, &t, "", &[0, 1, 2]);
    p.spawn();
    healthy(&p, &sb);
    let n1 = node(&sb, 1);
    sb.stop(1).expect("stop standby 1");
    let down = p.wait_event("slave_down", LONG, |e| {
        e.kind == "slave_down" && e.about(&n1)
    });
    sb.start_node(1).expect("start standby 1");
    let up = p.wait_event("slave_up", LONG, |e| e.kind == "slave_up" && e.about(&n1));

    for ev in [&down, &up] {
        let id = ev.payload["event_id"]
            .as_u64()
            .unwrap_or_else(|| panic!("no event_id in the payload: {}", ev.payload));
        let r = wait_record(&p, &format!("id {id}"), |r| r["id"] == id);
        assert_eq!(r["kind"], ev.kind.as_str(), "{r}");
        assert_eq!(r["time"], ev.payload["event_time"], "{r} vs {}", ev.payload);
        assert_eq!(r["node"], n1.as_str(), "{r}");
        assert_eq!(r["cluster"], ev.payload["cluster_id"], "{r}");
        assert_eq!(r["instance"], "test", "{r}");
        if ev.kind == "slave_down" {
            // Why, as the trigger's node entry says it.
            assert_eq!(r["why"], ev.payload["trigger"]["reason"], "{r}");
            assert!(r["why"].as_str().is_some_and(|w| !w.is_empty()), "{r}");
        }
    }
    let down_id = down.payload["event_id"].as_u64().unwrap();
    let run = wait_record(&p, "of the failed slave_down run", |r| {
        r["kind"] == "trigger_run" && r["detail"]["event_id"] == down_id
    });
    assert_eq!(run["detail"]["outcome"], "failed", "{run}");
    assert_eq!(run["detail"]["exit_status"], 3, "{run}");
    let up_id = up.payload["event_id"].as_u64().unwrap();
    let run = wait_record(&p, "of the slave_up run", |r| {
        r["kind"] == "trigger_run" && r["detail"]["event_id"] == up_id
    });
    assert_eq!(run["detail"]["outcome"], "ok", "{run}");
    // The node answered again after its error.
    let again = wait_record(&p, "node_answers_again", |r| {
        r["kind"] == "node_answers_again" && r["node"] == n1.as_str()
    });
    assert_eq!(again["cluster"], 0, "{again}");

    let all = events(&p, &[]);
    let about_n1: Vec<u64> = ids(&all
        .iter()
        .filter(|r| r["node"] == n1.as_str())
        .cloned()
        .collect::<Vec<_>>());
    let got = ids(&events(&p, &["--node", &n1]));
    // Records written after `all` was read may come too: compare its part.
    assert_eq!(&got[..about_n1.len()], &about_n1[..], "--node {n1}");
    assert!(about_n1.contains(&down_id) && about_n1.contains(&up_id));
    // --since the slave_down's time: exactly the records from it on.
    let since = down.payload["event_time"].as_str().unwrap();
    let from: Vec<u64> = all
        .iter()
        .filter(|r| r["time"].as_str().unwrap() >= since)
        .map(|r| r["id"].as_u64().unwrap())
        .collect();
    let got = ids(&events(&p, &["--since", since]));
    assert_eq!(&got[..from.len()], &from[..], "--since {since}");
    assert_eq!(got[0], down_id, "the first record since is the slave_down");
    // --since as a duration: everything of the last hour, nothing older.
    let hour = ids(&events(&p, &["--since", "1h"]));
    assert_eq!(&hour[..all.len()], &ids(&all)[..]);
    assert!(events(&p, &["--since", "2099-01-01T00:00:00Z"]).is_empty());
    // Both filters together, and the kind filter.
    // The default is a table: a header, then one line a record.
    let out = Command::new(env!("CARGO_BIN_EXE_plusmoin"))
        .arg("-c")
        .arg(&p.config_path)
        .args(["events", "--node", &n1, "--kind", "slave_down"])
        .output()
        .expect("plusmoin events");
    let table = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("ID") && lines[0].contains("KIND"),
        "{table}"
    );
    assert!(
        lines[1].starts_with(&down_id.to_string())
            && lines[1].contains("slave_down")
            && lines[1].contains(&n1),
        "{table}"
    );
    let both = ids(&events(
        &p,
        &["--since", since, "--node", &n1, "--kind", "slave_up"],
    ));
    assert_eq!(both, [up_id]);
}

/// Records written before a clean restart and before a `kill -9` stay;
/// a torn last line (a write cut short by the kill) is skipped; ids keep
/// growing across both restarts.
#[test]
fn the_history_survives_a_restart_and_a_kill_9() {
    let sb = Sandbox::start(1).expect("sandbox");
    let mut p = Plusmoin::start(&sb, &Timings::default(), "");
    healthy(&p, &sb);
    wait_record(&p, "plusmoin_up", |r| r["kind"] == "plusmoin_up");
    assert!(p.terminate(), "clean stop");
    let first = events(&p, &[]);
    assert_eq!(first[0]["kind"], "start", "{:?}", first[0]);
    assert_eq!(first.last().unwrap()["kind"], "stop", "{:?}", first.last());

    p.spawn();
    healthy(&p, &sb);
    let second_start = wait_record(&p, "the second start", |r| {
        r["kind"] == "start" && r["id"].as_u64() > first.last().unwrap()["id"].as_u64()
    });
    // Flood the journal with reloads, then kill -9 while it writes.
    let pid = nix::unistd::Pid::from_raw(p.pid() as i32);
    for _ in 0..50 {
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP);
        std::thread::sleep(Duration::from_millis(2));
    }
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    p.terminate();
    // Whatever the kill left, a write cut short is a torn last line.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(journal_path(&p))
        .expect("journal");
    std::io::Write::write_all(&mut f, br#"{"id":999999,"time":"2026-12-07T0"#).unwrap();
    drop(f);
    let before_kill = events(&p, &[]);
    assert!(
        before_kill.iter().all(|r| r["id"] != 999_999),
        "the torn line is skipped"
    );
    assert_eq!(
        &ids(&before_kill)[..first.len()],
        &ids(&first)[..],
        "the records before the restart are kept"
    );
    assert!(ids(&before_kill).contains(&second_start["id"].as_u64().unwrap()));

    p.spawn();
    healthy(&p, &sb);
    let last_before = *ids(&before_kill).last().unwrap();
    wait_record(&p, "the start after kill -9", |r| {
        r["kind"] == "start" && r["id"].as_u64() > Some(last_before)
    });
    let all = ids(&events(&p, &[]));
    assert_eq!(&all[..before_kill.len()], &ids(&before_kill)[..]);
    assert!(
        all.windows(2).all(|w| w[0] < w[1]),
        "ids unique and growing across restarts: {all:?}"
    );
}

/// A child process killed and reaped on drop (a failing test leaves no
/// `--follow` running).
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `--follow` prints a new record within 0.5 s of its writing, and keeps
/// going across rotations, missing none; the size cap holds meanwhile.
/// `/events` serves the same records, filtered.
#[test]
fn follow_keeps_up_across_rotations_and_http_serves_the_records() {
    let sb = Sandbox::start(1).expect("sandbox");
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let extra = format!(r#", "journal_max_bytes": 65536, "http_listen": "{addr}""#);
    let p = Plusmoin::start(&sb, &Timings::default(), &extra);
    healthy(&p, &sb);
    let mut follow = Killed(
        Command::new(env!("CARGO_BIN_EXE_plusmoin"))
            .arg("-c")
            .arg(&p.config_path)
            .args(["events", "--json", "--follow", "--since", "1s"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("plusmoin events --follow"),
    );
    // Each line with when it came.
    let seen: Arc<Mutex<Vec<(Value, SystemTime)>>> = Arc::default();
    let out = follow.0.stdout.take().unwrap();
    let sink = Arc::clone(&seen);
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines() {
            let Ok(line) = line else { return };
            if let Ok(v) = serde_json::from_str(&line) {
                sink.lock().unwrap().push((v, SystemTime::now()));
            }
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    let n1 = node(&sb, 1);
    sb.stop(1).expect("stop standby");
    let arrived = |kind: &str, node: &str| {
        let mut got = None;
        wait_until(LONG, || {
            got = seen
                .lock()
                .unwrap()
                .iter()
                .find(|(r, _)| r["kind"] == kind && r["node"] == node)
                .cloned();
            got.is_some()
        });
        got.unwrap_or_else(|| p.fail(&format!("--follow never showed {kind} of {node}")))
    };
    let lateness = |(r, at): &(Value, SystemTime)| {
        let written = humantime::parse_rfc3339(r["time"].as_str().unwrap()).unwrap();
        at.duration_since(written).unwrap_or_default()
    };
    let down = arrived("slave_down", &n1);
    assert!(
        lateness(&down) < Duration::from_millis(500),
        "{:?}",
        lateness(&down)
    );

    // Reloads until the journal has rotated twice.
    let pid = nix::unistd::Pid::from_raw(p.pid() as i32);
    let rotated = journal_path(&p).with_extension("jsonl.1");
    let first_rotated_id = |path: &std::path::Path| -> Option<u64> {
        let text = std::fs::read_to_string(path).ok()?;
        let first: Value = serde_json::from_str(text.lines().next()?).ok()?;
        first["id"].as_u64()
    };
    let mut rotations = 0;
    let mut last_first = None;
    let ok = wait_until(Duration::from_secs(60), || {
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP);
        let now = first_rotated_id(&rotated);
        if now.is_some() && now != last_first {
            rotations += 1;
            last_first = now;
        }
        rotations >= 2
    });
    assert!(ok, "the journal never rotated twice");
    let size = |p: &std::path::Path| std::fs::metadata(p).map_or(0, |m| m.len());
    assert!(
        size(&journal_path(&p)) + size(&rotated) <= 65536,
        "size cap"
    );
    sb.start_node(1).expect("start standby");
    let up = arrived("slave_up", &n1);
    assert!(
        lateness(&up) < Duration::from_millis(500),
        "{:?}",
        lateness(&up)
    );
    drop(follow);
    let got: Vec<u64> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|(r, _)| r["id"].as_u64().unwrap())
        .collect();
    let from = got
        .iter()
        .position(|&id| id == down.0["id"].as_u64().unwrap())
        .unwrap();
    assert!(
        got[from..].windows(2).all(|w| w[1] == w[0] + 1),
        "--follow missed or repeated records across the rotations: {:?}",
        &got[from..]
    );

    // /events: the same records, with the same filters.
    let (code, body) =
        crate::http::get(addr, &format!("/events?node={n1}&kind=slave_down,slave_up"));
    assert_eq!(code, 200, "{body}");
    let served: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    // The rotations dropped the oldest records (the slave_down among
    // them): the listener serves what the files hold, as the command does.
    let cli = events(&p, &["--node", &n1, "--kind", "slave_down,slave_up"]);
    assert_eq!(served.as_array().unwrap(), &cli, "{body}");
    assert_eq!(cli.last().unwrap()["id"], up.0["id"]);
    let (code, body) = crate::http::get(addr, "/events?since=yesterday");
    assert_eq!(code, 400, "{body}");
    let (_, metrics) = crate::http::get(addr, "/metrics");
    assert!(
        metrics.contains("plusmoin_journal_records_total{outcome=\"written\"}"),
        "{metrics}"
    );
}

/// tmux on a socket of its own, killed on drop.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn run(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .expect("run tmux");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
    /// The pane's screen as text.
    fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", "w"])
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        self.run(&["kill-server"]);
    }
}

/// `status --watch` in a real terminal: the table changes within 2 s of a
/// standby stop, the changed row marked; Ctrl-C leaves the alternate
/// screen and shows the cursor again, back at the shell's prompt. Not on
/// a terminal it prints plain tables, no escape code.
#[test]
fn status_watch_redraws_in_a_terminal_and_ctrl_c_leaves_it_clean() {
    if !plusmoin_kit::on_path("tmux") {
        return plusmoin_kit::skip("tmux is not installed (apt-get install tmux)");
    }
    let sb = Sandbox::start(2).expect("sandbox");
    let p = Plusmoin::start(&sb, &Timings::default(), "");
    healthy(&p, &sb);
    let n1 = node(&sb, 1);
    let tmux = Tmux {
        socket: format!("plusmoin-watch-{}", std::process::id()),
    };
    tmux.run(&[
        "new-session",
        "-d",
        "-s",
        "w",
        "-x",
        "200",
        "-y",
        "50",
        "env",
        "PS1=prompt$ ",
        "sh",
    ]);
    let command = format!(
        "{} -c {} status --watch",
        env!("CARGO_BIN_EXE_plusmoin"),
        p.config_path.display()
    );
    tmux.run(&["send-keys", "-t", "w", &command, "Enter"]);
    let row = |screen: &str| -> Option<String> {
        screen.lines().find(|l| l.contains(&n1)).map(str::to_string)
    };
    let ok = wait_until(LONG, || {
        let s = tmux.screen();
        s.contains("plusmoin status, every 1 s") && row(&s).is_some_and(|r| r.contains("slave"))
    });
    assert!(ok, "the table never showed: {}", tmux.screen());
    assert_eq!(
        tmux.run(&["display", "-p", "-t", "w", "#{alternate_on}"])
            .trim(),
        "1"
    );

    sb.stop(1).expect("stop standby 1");
    let stopped = std::time::Instant::now();
    let mut marked = false;
    let ok = wait_until(Duration::from_secs(2), || {
        let r = row(&tmux.screen()).unwrap_or_default();
        marked |= r.starts_with("* ");
        r.contains("lost")
    });
    assert!(ok, "no change within 2 s of the stop: {}", tmux.screen());
    // The mark shows for the redraw after the change (1 s later at most).
    wait_until(Duration::from_millis(1500), || {
        marked |= row(&tmux.screen()).is_some_and(|r| r.starts_with("* "));
        marked
    });
    assert!(
        marked,
        "the changed row was never marked ({:?})",
        stopped.elapsed()
    );

    tmux.run(&["send-keys", "-t", "w", "C-c"]);
    let ok = wait_until(Duration::from_secs(5), || {
        tmux.screen()
            .lines()
            .any(|l| l.starts_with("prompt$") && !l.contains("status --watch"))
    });
    assert!(ok, "no prompt after Ctrl-C: {}", tmux.screen());
    let screen = tmux.screen();
    assert!(
        !screen.contains(&n1),
        "the table is left on the screen: {screen}"
    );
    assert_eq!(
        tmux.run(&["display", "-p", "-t", "w", "#{alternate_on}"])
            .trim(),
        "0"
    );
    assert_eq!(
        tmux.run(&["display", "-p", "-t", "w", "#{cursor_flag}"])
            .trim(),
        "1"
    );

    // Not on a terminal: one plain table per interval.
    let child = Command::new(env!("CARGO_BIN_EXE_plusmoin"))
        .arg("-c")
        .arg(&p.config_path)
        .args(["status", "--watch", "0.2"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("status --watch");
    std::thread::sleep(Duration::from_millis(1100));
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    );
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success(), "{:?}", out.status);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains('\x1b'), "escape codes in a pipe: {text:?}");
    assert!(
        text.matches("plusmoin status, every").count() >= 3,
        "{text}"
    );
}

/// With pgpool: a hold placed and lifted is recorded with who placed it,
/// and the detach and attach that follow carry pgpool's statuses before
/// and after.
#[test]
fn pgpool_actions_and_holds_are_recorded_with_before_and_after() {
    use crate::pgpool::{plusmoin_cmd, section, setup, wait_pgpool, UP};
    let (sb, pg) = setup(1);
    let p = Plusmoin::start(&sb, &Timings::default(), &section(&pg, pg.pcppass_file()));
    healthy(&p, &sb);
    let n1 = node(&sb, 1);
    wait_pgpool(&p, &pg, 1, UP, "node 1 up at start");

    let out = plusmoin_cmd(&p, &["hold", &n1, "--reason", "kernel upgrade"]);
    assert!(out.status.success(), "{out:?}");
    let placed = wait_record(&p, "hold_placed", |r| {
        r["kind"] == "hold_placed" && r["node"] == n1.as_str()
    });
    assert_eq!(placed["why"], "kernel upgrade", "{placed}");
    assert!(
        placed["detail"]["placed_by"]
            .as_str()
            .is_some_and(|b| b.contains('@')),
        "{placed}"
    );
    let detach = wait_record(&p, "pgpool_detach", |r| {
        r["kind"] == "pgpool_detach" && r["node"] == n1.as_str()
    });
    assert_eq!(detach["detail"]["outcome"], "ok", "{detach}");
    assert!(
        UP.contains(&detach["detail"]["before"].as_str().unwrap_or("")),
        "{detach}"
    );
    assert_eq!(detach["detail"]["after"], "down", "{detach}");
    assert_eq!(detach["detail"]["pgpool_id"], 1, "{detach}");

    let out = plusmoin_cmd(&p, &["release", &n1]);
    assert!(out.status.success(), "{out:?}");
    wait_record(&p, "hold_lifted", |r| {
        r["kind"] == "hold_lifted" && r["node"] == n1.as_str()
    });
    let attach = wait_record(&p, "pgpool_attach", |r| {
        r["kind"] == "pgpool_attach" && r["node"] == n1.as_str()
    });
    assert_eq!(attach["detail"]["outcome"], "ok", "{attach}");
    assert_eq!(attach["detail"]["before"], "down", "{attach}");
    assert!(
        UP.contains(&attach["detail"]["after"].as_str().unwrap_or("")),
        "{attach}"
    );
    assert!(attach["id"].as_u64() > detach["id"].as_u64());
}
