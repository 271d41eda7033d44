//! `plusmoin demo`: a newcomer's first minute. Starts the [`sandbox`]
//! (a real primary and two standbys), runs a foreground plusmoin on it whose
//! triggers print every event, and plays a short story: a standby stops and
//! comes back, then the primary dies and a standby is promoted.
//!
//! [`sandbox`]: crate::sandbox

use crate::config::{self, LogLevel};
use crate::sandbox::Sandbox;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const PRINT_EVENT: &str = include_str!("../contrib/triggers/print-event.sh");

pub fn run(story: bool) -> ExitCode {
    match demo(story) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("plusmoin demo: {e}");
            ExitCode::from(1)
        }
    }
}

fn say(msg: &str) {
    println!("\n=== demo: {msg}");
}

fn demo(story: bool) -> Result<(), String> {
    say("starting a primary and two standbys on loopback (a few seconds)…");
    let sandbox = Arc::new(Sandbox::start(2).map_err(|e| e.to_string())?);
    let dir = sandbox.dir().to_path_buf();
    let script = dir.join("print-event.sh");
    std::fs::write(&script, PRINT_EVENT).map_err(|e| e.to_string())?;
    set_executable(&script).map_err(|e| e.to_string())?;
    let nodes: Vec<String> = (0..sandbox.len())
        .map(|i| {
            format!(
                r#"{{"host": "{}", "port": {}}}"#,
                sandbox.host(),
                sandbox.port(i)
            )
        })
        .collect();
    let trigger = script.display().to_string();
    let user = nix::unistd::User::from_uid(nix::unistd::geteuid())
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| "nobody".into());
    let cfg = format!(
        r#"// Written by `plusmoin demo`.
{{
  "dbname": "{db}", "user": "{user_db}", "password": "{pw}",
  "heartbeat": 1, "connect_timeout": 1, "max_sync_delay": 4, "recover_sync_delay": 2,
  "trigger_timeout": 10, "log_level": "info", "daemon_user": "{user}",
  "instance_name": "demo",
  "status_file": "{dir}/status.json", "pid_file": "{dir}/plusmoin.pid",
  "log_file": "{dir}/plusmoin.log",
  "nodes": [{nodes}],
  "triggers": {{
    "plusmoin_up": "{t}", "master_up": "{t}", "master_down": "{t}",
    "slave_up": "{t}", "slave_down": "{t}"
  }}
}}
"#,
        db = crate::sandbox::SANDBOX_DBNAME,
        user_db = crate::sandbox::SANDBOX_USER,
        pw = crate::sandbox::SANDBOX_PASSWORD,
        dir = dir.display(),
        nodes = nodes.join(", "),
        t = trigger,
    );
    let cfg_path = dir.join("plusmoin.json");
    std::fs::write(&cfg_path, cfg).map_err(|e| e.to_string())?;
    let config = config::load(&cfg_path).map_err(|e| e.to_string())?;
    crate::lifecycle::init_logging(LogLevel::Info, None, &crate::lifecycle::Owners::me())
        .map_err(|e| e.to_string())?;
    say(&format!(
        "plusmoin watches {} servers (config {}); `plusmoin -c {} status --table` shows its view",
        nodes.len(),
        cfg_path.display(),
        cfg_path.display()
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let story_thread = story.then(|| {
        let sandbox = Arc::clone(&sandbox);
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || play_story(&sandbox, &stop))
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let result = runtime.block_on(crate::daemon::run(config, cfg_path));
    stop.store(true, Ordering::SeqCst);
    if let Some(t) = story_thread {
        let _ = t.join();
    }
    say("stopping the sandbox servers");
    drop(sandbox);
    result.map_err(|e| e.to_string())
}

fn set_executable(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
}

/// Sleeps `secs`, returning false as soon as the demo is stopping.
fn pause(stop: &AtomicBool, secs: u64) -> bool {
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        if stop.load(Ordering::SeqCst) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    !stop.load(Ordering::SeqCst)
}

fn play_story(sb: &Sandbox, stop: &AtomicBool) {
    let step = |msg: &str, op: &dyn Fn() -> Result<(), crate::sandbox::SandboxError>| {
        say(msg);
        if let Err(e) = op() {
            println!("=== demo: that failed: {e}");
        }
    };
    let (p, s1, s2) = (sb.port(0), sb.port(1), sb.port(2));
    if !pause(stop, 5) {
        return;
    }
    step(
        &format!("stopping standby {s2}: expect slave_down"),
        &|| sb.stop(2),
    );
    if !pause(stop, 5) {
        return;
    }
    step(
        &format!("starting standby {s2} again: expect slave_up"),
        &|| sb.start_node(2),
    );
    if !pause(stop, 6) {
        return;
    }
    step(
        &format!("killing the primary {p} (kill -9) and promoting {s1}: expect master_up"),
        &|| {
            sb.kill9(0)?;
            sb.promote(1)
        },
    );
    if !pause(stop, 3) {
        return;
    }
    step(
        &format!("re-pointing standby {s2} to the new primary {s1}"),
        &|| sb.repoint(2, 1),
    );
    if !pause(stop, 8) {
        return;
    }
    say("story over: plusmoin keeps watching. Press Ctrl-C to stop it and the sandbox.");
}
