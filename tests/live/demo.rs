//! `plusmoin demo --pgpool`, run as a newcomer would: it starts the sandbox,
//! a real pgpool-II and plusmoin, plays the sidecar's story to its end,
//! and stops everything on Ctrl-C.

use plusmoin::demo::sandbox::pgpool::pgpool_installed;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The whole story: sandbox and pgpool start (a few seconds each), a
/// standby stops and is detached (pgpool's health check: 1 s, 2 retries),
/// comes back and is attached again; generous for a loaded machine.
const STORY: Duration = Duration::from_secs(240);

/// The value of pcp_node_info -v's `Status Name` in the block printed after
/// the line containing `heading`.
fn status_after(out: &[String], heading: &str) -> Option<String> {
    let at = out.iter().position(|l| l.contains(heading))?;
    out[at..]
        .iter()
        .find(|l| l.trim_start().starts_with("Status Name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|v| v.trim().to_string())
}

#[test]
fn demo_with_pgpool_plays_the_sidecar_story_to_the_end() {
    assert!(
        pgpool_installed(),
        "pgpool-II is not installed (apt-get install pgpool2)"
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_plusmoin"))
        .args(["demo", "--pgpool"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn plusmoin demo");
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let (tx, rx) = mpsc::channel::<String>();
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let tx2 = tx.clone();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    std::thread::spawn(move || {
        for l in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx2.send(format!("stderr: {l}"));
        }
    });
    let mut out = Vec::new();
    let end = Instant::now() + STORY;
    let finished = loop {
        match rx.recv_timeout(end.saturating_duration_since(Instant::now())) {
            Ok(l) => {
                let done = l.contains("story over");
                out.push(l);
                if done {
                    break true;
                }
            }
            Err(_) => break false,
        }
    };
    // Ctrl-C: plusmoin stops, then the demo stops pgpool and the servers.
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
    let exit_by = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break Some(st);
        }
        if Instant::now() > exit_by {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // What it printed last is still in the pipes: the readers end at their
    // EOF (the channel then disconnects); the bound is for a pipe some
    // leftover process holds open.
    while let Ok(l) = rx.recv_timeout(Duration::from_secs(10)) {
        out.push(l);
    }
    let text = out.join("\n");
    assert!(finished, "the story did not reach its end:\n{text}");
    assert!(
        status.is_some_and(|s| s.success()),
        "exit after Ctrl-C: {status:?}\n{text}"
    );
    assert!(
        text.contains("slave_down"),
        "the trigger printed slave_down:\n{text}"
    );
    assert!(
        text.contains("slave_up"),
        "the trigger printed slave_up:\n{text}"
    );
    assert_eq!(
        status_after(&out, "pgpool has detached backend 2").as_deref(),
        Some("down"),
        "{text}"
    );
    let after = status_after(&out, "plusmoin has attached backend 2 again");
    assert!(
        matches!(after.as_deref(), Some("up" | "waiting")),
        "pcp_node_info after: {after:?}\n{text}"
    );
    assert!(text.contains("stopping pgpool-II"), "{text}");
    assert!(!text.contains("that failed"), "{text}");
}
