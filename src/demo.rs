//! `plusmoin demo`: a newcomer's first minute. Starts the [`sandbox`]
//! (a real primary and two standbys), runs a foreground plusmoin on it whose
//! triggers print every event, and plays a short story: a standby stops and
//! comes back, then the primary dies and a standby is promoted.
//!
//! `--pgpool` puts a real pgpool-II in front of the sandbox (health checks,
//! a `failover_command`, `auto_failback` off: the shape of a production
//! pgpool), gives plusmoin a `pgpool` section, and tells the sidecar's
//! story instead: a standby stops and pgpool detaches it; it starts again,
//! and plusmoin attaches it back once it is in sync, which pgpool alone
//! would not do. `pcp_node_info` is shown before and after.
//!
//! [`sandbox`]: crate::sandbox

use crate::config::{self, LogLevel};
use crate::sandbox::pgpool::{pgpool_installed, Pgpool, PgpoolOptions, PCP_USER};
use crate::sandbox::Sandbox;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const PRINT_EVENT: &str = include_str!("../contrib/triggers/print-event.sh");

/// What `demo --pgpool` says when pgpool-II is missing.
const NO_PGPOOL: &str =
    "pgpool-II is not installed: install it (Debian, Ubuntu: `apt-get install pgpool2`; \
     elsewhere see https://www.pgpool.net), then run `plusmoin demo --pgpool` again; \
     `plusmoin demo` runs without it";

pub fn run(story: bool, pgpool: bool) -> ExitCode {
    match demo(story, pgpool) {
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

fn demo(story: bool, with_pgpool: bool) -> Result<(), String> {
    if with_pgpool && !pgpool_installed() {
        return Err(NO_PGPOOL.into());
    }
    say("starting a primary and two standbys on loopback (a few seconds)…");
    let sandbox = Arc::new(Sandbox::start(2).map_err(|e| e.to_string())?);
    let pgpool = match with_pgpool {
        false => None,
        true => {
            say(
                "starting pgpool-II in front of them: health check every second, 2 retries, \
                 failover_command, auto_failback off",
            );
            let opts = PgpoolOptions {
                health_check_period: Some(1),
                health_check_max_retries: 2,
                failover: true,
                ..PgpoolOptions::default()
            };
            let pg = Pgpool::start(&sandbox, opts).map_err(|e| e.to_string())?;
            say(&format!(
                "pgpool listens on {}:{} (pcp on port {})",
                pg.host(),
                pg.port(),
                pg.pcp_port()
            ));
            Some(Arc::new(pg))
        }
    };
    let pgpool_section = pgpool.as_ref().map_or_else(String::new, |pg| {
        format!(
            r#",
  "pgpool": {{
    "pcp_host": "{}", "pcp_port": {}, "pcp_user": "{PCP_USER}",
    "pcppass_file": "{}", "pgpool_conf": "{}", "bin_dir": "{}"
  }}"#,
            pg.host(),
            pg.pcp_port(),
            pg.pcppass_file().display(),
            pg.conf_file().display(),
            pg.bin_dir().display()
        )
    });
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
  }}{pgpool_section}
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
    crate::lifecycle::init_logging(LogLevel::Info, config.log_format, None)
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
        let pgpool = pgpool.clone();
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || match pgpool {
            Some(pg) => play_pgpool_story(&sandbox, &pg, &stop),
            None => play_story(&sandbox, &stop),
        })
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
    if let Some(pg) = pgpool {
        say("stopping pgpool-II");
        drop(pg);
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

/// Polls `check` every 200 ms for up to `within`; false when it never held
/// or the demo is stopping.
fn wait_for(stop: &AtomicBool, within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + within;
    while Instant::now() < end {
        if stop.load(Ordering::SeqCst) {
            return false;
        }
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

/// `pcp_node_info -v` for backend `id`, printed as pgpool says it.
fn show_node_info(pg: &Pgpool, id: usize) {
    match pg.pcp_raw("pcp_node_info", &["-v", "-n", &id.to_string()]) {
        Ok(out) => {
            println!("$ {}", out.command);
            for line in out.stdout.lines().chain(out.stderr.lines()) {
                println!("    {line}");
            }
        }
        Err(e) => println!("=== demo: pcp_node_info failed: {e}"),
    }
}

fn node_up(pg: &Pgpool, id: usize) -> bool {
    pg.node_status(id)
        .is_ok_and(|s| s == "up" || s == "waiting")
}

fn play_pgpool_story(sb: &Sandbox, pg: &Pgpool, stop: &AtomicBool) {
    let s2 = sb.port(2);
    let up = |id| node_up(pg, id);
    say("waiting until pgpool has every backend up");
    if !wait_for(stop, Duration::from_secs(30), || (0..pg.len()).all(up)) {
        say("pgpool did not show every backend up within 30 s");
        return;
    }
    if !pause(stop, 3) {
        return;
    }
    say(&format!(
        "stopping standby {s2} (pgpool backend 2): expect slave_down; pgpool's health \
         check (or plusmoin, which saw the connection close) detaches it"
    ));
    if let Err(e) = sb.stop(2) {
        println!("=== demo: that failed: {e}");
        return;
    }
    let down = || pg.node_status(2).is_ok_and(|s| s == "down");
    if !wait_for(stop, Duration::from_secs(30), down) {
        say("pgpool did not detach backend 2 within 30 s");
        return;
    }
    say("pgpool has detached backend 2:");
    show_node_info(pg, 2);
    if !pause(stop, 2) {
        return;
    }
    say(&format!(
        "starting standby {s2} again: with auto_failback off pgpool alone would leave it \
         detached; expect slave_up once it streams, then plusmoin's pcp_attach_node"
    ));
    if let Err(e) = sb.start_node(2) {
        println!("=== demo: that failed: {e}");
        return;
    }
    if !wait_for(stop, Duration::from_secs(60), || up(2)) {
        say("backend 2 was not attached again within 60 s");
        return;
    }
    say("plusmoin has attached backend 2 again:");
    show_node_info(pg, 2);
    say("story over: plusmoin keeps watching. Press Ctrl-C to stop it, pgpool and the sandbox.");
}
