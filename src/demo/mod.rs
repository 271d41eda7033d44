//! `plusmoin demo`: a newcomer's first minute. Starts the [`sandbox`]
//! (a real primary and two standbys), runs a foreground plusmoin on it whose
//! triggers print every event, and plays a short story: a standby stops and
//! comes back, then the primary dies and a standby is promoted.
//!
//! Run as root, the servers run as `postgres` (PostgreSQL refuses root), and
//! so do plusmoin and its triggers: a child `plusmoin -x start` as that user,
//! in the sandbox directory it owns. Only this first process stays root, to
//! drive the servers for the story and clean up.
//!
//! `--pgpool` puts a real pgpool-II in front of the sandbox (health checks,
//! a `failover_command`, `auto_failback` off: the shape of a production
//! pgpool), gives plusmoin a `pgpool` section, and tells the sidecar's
//! story instead: a standby stops and pgpool detaches it; it starts again,
//! and plusmoin attaches it back once it is in sync, which pgpool alone
//! would not do. `pcp_node_info` is shown before and after.
//!
//! [`sandbox`]: crate::demo::sandbox

pub mod sandbox;

use crate::config;
use crate::demo::sandbox::pgpool::{
    pgpool_bin_dir, pgpool_version, Pgpool, PgpoolOptions, PCP_USER,
};
use crate::demo::sandbox::Sandbox;
use crate::lifecycle::{LogFormat, LogLevel};
use nix::unistd::{Gid, Pid, Uid};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const PRINT_EVENT: &str = include_str!("../../contrib/triggers/print-event.sh");

/// What `demo --pgpool` says when pgpool-II is missing.
const NO_PGPOOL: &str =
    "pgpool-II is not installed: install it (Debian, Ubuntu: `apt-get install pgpool2`; \
     elsewhere see https://www.pgpool.net), then run `plusmoin demo --pgpool` again; \
     `plusmoin demo` runs without it";

/// `demo`'s pgpool options (flattened into the `demo` subcommand).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct PgpoolDemo {
    /// Also start a real pgpool-II in front of the sandbox (health
    /// checks, failover_command, auto_failback off) and play the
    /// sidecar's story: a standby stops and pgpool detaches it; it
    /// comes back and plusmoin attaches it again in pgpool.
    #[arg(long = "pgpool")]
    pub enabled: bool,
    /// With --pgpool: the directory of the pgpool-II build to run (its
    /// `pgpool`, `pcp_*` and `pg_md5`), e.g. a source build's PREFIX/bin.
    /// Default: the system's (/usr/sbin, …, then PATH).
    #[arg(long = "pgpool-bin", value_name = "DIR", requires = "enabled")]
    pub bin: Option<PathBuf>,
}

pub fn run(story: bool, pgpool: PgpoolDemo) -> ExitCode {
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

fn demo(story: bool, pgpool_args: PgpoolDemo) -> Result<(), String> {
    let with_pgpool = pgpool_args.enabled;
    let pgpool_bin = match (with_pgpool, &pgpool_args.bin) {
        (false, _) => None,
        (true, Some(dir)) => Some(pgpool_bin_dir(Some(dir)).map_err(|e| e.to_string())?),
        (true, None) => Some(pgpool_bin_dir(None).map_err(|_| NO_PGPOOL.to_owned())?),
    };
    say("starting a primary and two standbys on loopback (a few seconds)…");
    let sandbox = Arc::new(Sandbox::start(2).map_err(|e| e.to_string())?);
    let dir = sandbox.dir().to_path_buf();
    let owner = sandbox.owner();
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
                bin_dir: pgpool_bin.clone(),
                ..PgpoolOptions::default()
            };
            let pg = Pgpool::start(&sandbox, opts).map_err(|e| e.to_string())?;
            say(&format!(
                "pgpool listens on {}:{} (pcp on port {}); {} from {}",
                pg.host(),
                pg.port(),
                pg.pcp_port(),
                pgpool_version(pg.bin_dir()),
                pg.bin_dir().display()
            ));
            Some(Arc::new(pg))
        }
    };
    let pgpool_section = match &pgpool {
        None => String::new(),
        Some(pg) => {
            // plusmoin's own copy of the pcp password file, readable by the
            // user it runs as (pgpool's is ours alone).
            let pcppass = dir.join("pcppass");
            let text = std::fs::read_to_string(pg.pcppass_file())
                .map_err(|e| format!("cannot read {}: {e}", pg.pcppass_file().display()))?;
            write_new(&pcppass, &text, 0o600, owner)?;
            format!(
                r#",
  "pgpool": {{
    "pcp_host": "{}", "pcp_port": {}, "pcp_user": "{PCP_USER}",
    "pcppass_file": "{}", "pgpool_conf": "{}", "bin_dir": "{}"
  }}"#,
                pg.host(),
                pg.pcp_port(),
                pcppass.display(),
                pg.conf_file().display(),
                pg.bin_dir().display()
            )
        }
    };
    let script = dir.join("print-event.sh");
    write_new(&script, PRINT_EVENT, 0o755, owner)?;
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
    let runs_as = owner.map_or_else(nix::unistd::geteuid, |(uid, _)| uid);
    let user = nix::unistd::User::from_uid(runs_as)
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
        db = crate::demo::sandbox::SANDBOX_DBNAME,
        user_db = crate::demo::sandbox::SANDBOX_USER,
        pw = crate::demo::sandbox::SANDBOX_PASSWORD,
        dir = dir.display(),
        nodes = nodes.join(", "),
        t = trigger,
    );
    let cfg_path = dir.join("plusmoin.json");
    write_new(&cfg_path, &cfg, 0o600, owner)?;
    let config = crate::daemon::load_config(&cfg_path).map_err(|e| e.to_string())?;
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
    let result = match owner {
        Some((uid, gid)) => run_as(uid, gid, &user, &dir, &cfg_path),
        None => run_here(config, cfg_path),
    };
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
    result
}

/// plusmoin in this process, as ourselves (we are not root).
fn run_here(config: config::Config, cfg_path: PathBuf) -> Result<(), String> {
    crate::lifecycle::init_logging(
        LogLevel::Info,
        match config.log_format {
            config::LogFormat::Text => LogFormat::Text,
            config::LogFormat::Json => LogFormat::Json,
        },
        None,
        &crate::lifecycle::Owners::me(),
    )
    .map_err(|e| e.to_string())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let signals = crate::daemon::Signals::install().map_err(|e| e.to_string())?;
        let inputs = signals.inputs(cfg_path, None);
        crate::daemon::run(config, inputs, ())
            .await
            .map_err(|e| e.to_string())
    })
}

static STOP_ASKED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_: nix::libc::c_int) {
    STOP_ASKED.store(true, Ordering::SeqCst);
}

/// plusmoin as `uid`/`gid` (the servers' user), in the foreground in a child
/// process, until it exits; Ctrl-C or SIGTERM here is passed on to it (the
/// terminal's Ctrl-C reaches it anyway, being in our process group).
fn run_as(uid: Uid, gid: Gid, user: &str, dir: &Path, cfg_path: &Path) -> Result<(), String> {
    use nix::sys::signal::{kill, sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().map_err(|e| format!("cannot find plusmoin itself: {e}"))?;
    let action = SigAction::new(
        SigHandler::Handler(on_stop_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { sigaction(sig, &action) }.map_err(|e| format!("cannot handle {sig}: {e}"))?;
    }
    // std clears the supplementary groups when it changes the uid as root.
    let mut child = std::process::Command::new(exe)
        .arg("-c")
        .arg(cfg_path)
        .args(["-x", "start"])
        .current_dir(dir)
        .env("HOME", dir)
        .env("USER", user)
        .env("LOGNAME", user)
        .uid(uid.as_raw())
        .gid(gid.as_raw())
        .spawn()
        .map_err(|e| format!("cannot start plusmoin as {user}: {e}"))?;
    let mut passed_on = false;
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            // Killed by the Ctrl-C we also got: that is how the demo ends.
            Ok(Some(_)) if STOP_ASKED.load(Ordering::SeqCst) => return Ok(()),
            Ok(Some(status)) => return Err(format!("plusmoin (as {user}) ended: {status}")),
            Ok(None) => {}
            Err(e) => return Err(format!("cannot wait for plusmoin: {e}")),
        }
        if STOP_ASKED.load(Ordering::SeqCst) && !passed_on {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
            passed_on = true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Creates `path` (never through a link, never an existing file) with
/// `contents` and `mode`, owned by `owner` when given: the sandbox directory
/// belongs to the servers' user.
fn write_new(
    path: &Path,
    contents: &str,
    mode: u32,
    owner: Option<(Uid, Gid)>,
) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let err = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
        .map_err(err)?;
    file.write_all(contents.as_bytes()).map_err(err)?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::fchown(&file, Some(uid.as_raw()), Some(gid.as_raw())).map_err(err)?;
    }
    file.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(err)
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
    let step = |msg: &str, op: &dyn Fn() -> Result<(), crate::demo::sandbox::SandboxError>| {
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
