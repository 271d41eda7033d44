//! The `plusmoin` binary: parse the command line, then hand over to the
//! library. Every command returns `Result<(), Failure>`; [`main`] is the
//! one place an error is printed (on one line) and turned into an exit
//! status.

use clap::Parser;
use plusmoin::cli::{Cli, CliCommand, ControlFiles};
use plusmoin::{config, daemon, demo, lifecycle, status};
use std::process::ExitCode;
use std::time::Duration;

/// Exit status for a configuration error.
const EXIT_CONFIG: u8 = 2;

/// Why a command failed: the exit status, and the line to print (none when
/// it was already said elsewhere, e.g. handed to the waiting `start`).
#[derive(Debug)]
struct Failure {
    code: u8,
    msg: Option<String>,
}

impl Failure {
    fn new(code: u8, msg: impl std::fmt::Display) -> Failure {
        Failure {
            code,
            msg: Some(msg.to_string()),
        }
    }
    /// Exit `code` with nothing more to print.
    fn silent(code: u8) -> Failure {
        Failure { code, msg: None }
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            if let Some(msg) = f.msg {
                eprintln!("plusmoin: {msg}");
            }
            ExitCode::from(f.code)
        }
    }
}

fn run(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        CliCommand::CheckConfig => check_config(&cli),
        CliCommand::Start => start(&cli),
        CliCommand::Stop { timeout, ref files } => stop(&cli, timeout, files),
        CliCommand::Reload { timeout, ref files } => reload(&cli, timeout, files),
        CliCommand::Status {
            table,
            watch,
            ref files,
        } => match watch {
            Some(secs) => watch_status(&cli, secs, files),
            None => show_status(&cli, table, files),
        },
        CliCommand::Events {
            ref since,
            ref node,
            cluster,
            ref kind,
            json,
            follow,
            ref files,
        } => {
            let paths = control_paths(&cli, files, true);
            status::events(
                &paths.status_file,
                since.clone(),
                node.clone(),
                cluster,
                kind.clone(),
                json,
                follow,
            )
            .map_err(fail)
        }
        CliCommand::Demo { no_story, pgpool } => {
            let code = demo::run(!no_story, pgpool);
            if code == ExitCode::SUCCESS {
                Ok(())
            } else {
                // The demo printed its reason.
                Err(Failure::silent(1))
            }
        }
        CliCommand::Hold {
            ref node,
            ref reason,
        } => hold(&cli, node, Some(reason.as_deref())),
        CliCommand::Release { ref node } => hold(&cli, node, None),
    }
}

/// A general failure: exit status 1.
fn fail(msg: impl std::fmt::Display) -> Failure {
    Failure::new(1, msg)
}

fn load(cli: &Cli) -> Result<config::Config, Failure> {
    daemon::load_config(&cli.config).map_err(|e| Failure::new(EXIT_CONFIG, e))
}

fn check_config(cli: &Cli) -> Result<(), Failure> {
    let c = load(cli)?;
    for w in secret_warnings(&c) {
        eprintln!("plusmoin: warning: {w}");
    }
    for w in plusmoin::pgpool::problems(&c) {
        eprintln!("plusmoin: warning: pgpool: {w}");
    }
    print!("{}{}", c.summary(), plusmoin::pgpool::summary(&c));
    match plusmoin::pgpool::watchdog_line(&c) {
        Some(Ok(line)) => println!("pgpool says: {line}"),
        Some(Err(e)) => {
            eprintln!("plusmoin: warning: pgpool: cannot ask pgpool about its watchdog: {e}")
        }
        None => {}
    }
    println!("configuration OK");
    Ok(())
}

/// Files holding a password that group or others can read or write.
fn secret_warnings(config: &config::Config) -> Vec<String> {
    config.secret_warnings()
}

fn start(cli: &Cli) -> Result<(), Failure> {
    let config = load(cli)?;
    let warnings = secret_warnings(&config);
    if !cli.foreground {
        // For the terminal of the `start` that detaches; they are logged
        // too, once the log is open. In the foreground, stdout and stderr
        // are the log stream (systemd's journal, say): they are only
        // logged, in the log's format.
        for w in &warnings {
            eprintln!("plusmoin: warning: {w}");
        }
    }
    // Absolute, so SIGHUP still finds it after the daemon's chdir("/").
    let config_path = std::path::absolute(&cli.config).unwrap_or_else(|_| cli.config.clone());
    let detached = if cli.foreground {
        None
    } else {
        Some(lifecycle::daemonize().map_err(fail)?)
    };
    // Once detached, a startup error goes back to the waiting `start`,
    // which prints it and exits 1. In the foreground it is logged (the
    // log is set up first), in the log's format, and not printed again.
    let abort = |detached: Option<lifecycle::Detached>, msg: String| {
        tracing::error!("{msg}");
        match detached {
            Some(d) => d.fail(&msg),
            None if !logging_up() => return fail(msg),
            None => {}
        }
        Failure::silent(1)
    };
    // Pid file and log file first, while still root: their directories
    // are usually root's, and the open descriptors outlive the switch.
    // Their directories may be the daemon user's: no link is followed,
    // and a file there must be root's, ours or that user's.
    let owners = lifecycle::Owners::me_and(&config.daemon_user);
    // From the log on, everything the daemon says is a log line in the
    // log's format, the warnings above included.
    let open_log = || -> Result<(), String> {
        let log_file = (!cli.foreground).then_some(config.log_file.as_path());
        lifecycle::init_logging(
            log_level(config.log_level),
            log_format(config.log_format),
            log_file,
            &owners,
        )
        .map_err(|e| e.to_string())?;
        for w in &warnings {
            tracing::warn!("{w}");
        }
        Ok(())
    };
    // In the foreground the log (stdout) comes first, so that a start
    // error is a log line too; detached, the pid file comes first, so
    // that a refused start does not create the log file.
    if cli.foreground {
        if let Err(msg) = open_log() {
            return Err(abort(detached, msg));
        }
    }
    type Setup = (lifecycle::PidFile, Option<std::net::TcpListener>);
    let setup = || -> Result<Setup, String> {
        let pid =
            lifecycle::PidFile::acquire(&config.pid_file, &owners).map_err(|e| e.to_string())?;
        if !cli.foreground {
            open_log()?;
        }
        // The HTTP listener too, before root is given up: a port below 1024
        // then works, and no other local user can have taken it first (a
        // taken port is a start error, never a listener of someone else's).
        let http = match config.http_listen {
            None => None,
            Some(addr) => Some(
                plusmoin::web::bind(addr)
                    .map_err(|e| format!("cannot listen on http_listen {addr}: {e}"))?,
            ),
        };
        lifecycle::drop_privileges(&config.daemon_user).map_err(|e| e.to_string())?;
        Ok((pid, http))
    };
    let (pid_file, http) = match setup() {
        Ok(p) => p,
        Err(msg) => return Err(abort(detached, msg)),
    };
    // One connection per node: a thousand nodes would hit the usual 1024.
    match lifecycle::raise_nofile_limit() {
        Ok(limit) => tracing::debug!(limit, "open files limit"),
        Err(e) => tracing::warn!("{e}"),
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            return Err(abort(
                detached,
                format!("cannot start the async runtime: {e}"),
            ))
        }
    };
    // Signal handlers before anyone hears the daemon is ready: an early
    // SIGHUP must reload, not kill it.
    let signals = match runtime.block_on(async { daemon::Signals::install() }) {
        Ok(s) => s,
        Err(e) => return Err(abort(detached, e.to_string())),
    };
    if let Some(d) = detached {
        d.ready();
    }
    let result = runtime.block_on(async move {
        // On the runtime's workers rather than this thread: the probes'
        // answers then wake the deciding loop on the thread they come in
        // on, not across threads (benches/scale.rs: less CPU a beat, and
        // decisions sooner).
        let run = daemon::run(config, signals.inputs(config_path, http), ());
        match tokio::spawn(run).await {
            Ok(result) => result.map(drop),
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    });
    drop(pid_file);
    result.map_err(|e| {
        // Said once, in the log's format.
        tracing::error!("{e}");
        Failure::silent(1)
    })
}

/// Whether a log subscriber is installed (the daemon's log is set up).
fn logging_up() -> bool {
    tracing::dispatcher::has_been_set()
}

/// What `stop` and `status` use: the pid file, the status file (when
/// `status_used`) and `daemon_user` (whose files those may be), from
/// `files` when given, else picked out of the configuration even when it is
/// broken (a stray comma, a password file that cannot be found); defaults,
/// said with a warning, when it cannot be read at all.
fn control_paths(cli: &Cli, files: &ControlFiles, status_used: bool) -> config::ControlPaths {
    let mut paths = match config::read_control_paths(&cli.config) {
        Ok(p) => p,
        Err(e) => {
            let mut missing = Vec::new();
            if files.pid_file.is_none() {
                missing.push(("pid_file", "--pid-file"));
            }
            if status_used && files.status_file.is_none() {
                missing.push(("status_file", "--status-file"));
            }
            if !missing.is_empty() {
                let (keys, options): (Vec<&str>, Vec<&str>) = missing.into_iter().unzip();
                eprintln!(
                    "plusmoin: warning: {e}: using the default {} (or give {})",
                    keys.join(" and "),
                    options.join(", ")
                );
            }
            config::ControlPaths::default()
        }
    };
    if let Some(p) = &files.pid_file {
        paths.pid_file = p.clone();
    }
    if let Some(p) = &files.status_file {
        paths.status_file = p.clone();
    }
    paths
}

fn stop(cli: &Cli, timeout: f64, files: &ControlFiles) -> Result<(), Failure> {
    let paths = control_paths(cli, files, false);
    let grace = Duration::try_from_secs_f64(timeout).unwrap_or(Duration::from_secs(30));
    let owners = lifecycle::Owners::me_and(&paths.daemon_user);
    match lifecycle::stop(&paths.pid_file, grace, &owners) {
        Ok(Some(pid)) => {
            println!("plusmoin (pid {pid}) stopped");
            Ok(())
        }
        Ok(None) => {
            eprintln!(
                "plusmoin: not running (no live daemon holds {})",
                paths.pid_file.display()
            );
            Ok(())
        }
        Err(e) => Err(fail(e)),
    }
}

/// Checks the configuration as `check-config` does (nothing is sent when it
/// is refused), sends SIGHUP, then waits until the daemon's status file
/// shows a reload generation above the one before the signal, and says
/// how it went.
fn reload(cli: &Cli, timeout: f64, files: &ControlFiles) -> Result<(), Failure> {
    let config = load(cli)?;
    for w in secret_warnings(&config) {
        eprintln!("plusmoin: warning: {w}");
    }
    let pid_file = files.pid_file.as_ref().unwrap_or(&config.pid_file);
    let status_file = files.status_file.as_ref().unwrap_or(&config.status_file);
    let owners = lifecycle::Owners::me_and(&config.daemon_user);
    let wait = Duration::try_from_secs_f64(timeout).unwrap_or(Duration::from_secs(10));
    let before = status::read_reload(status_file, &owners).ok();
    let pid = lifecycle::reload(pid_file, &owners).map_err(fail)?;
    let file = cli.config.display();
    if wait.is_zero() {
        println!("asked plusmoin (pid {pid}) to reload {file} (not waiting for it)");
        return Ok(());
    }
    // Generations count from 1 in each daemon: one written by another
    // process (an earlier daemon) is no floor.
    let daemon = u32::try_from(pid).unwrap_or(0);
    let floor = before
        .filter(|(pid, _)| *pid == daemon)
        .and_then(|(_, reload)| reload)
        .map_or(0, |r| r.generation);
    let deadline = std::time::Instant::now() + wait;
    let mut last_problem = None;
    let report = loop {
        match status::read_reload(status_file, &owners) {
            Ok((pid, reload)) if pid == daemon => {
                if let Some(r) = reload.filter(|r| r.generation > floor) {
                    break r;
                }
            }
            Ok(_) => {}
            Err(e) => last_problem = Some(e.to_string()),
        }
        if std::time::Instant::now() >= deadline {
            let mut msg = format!(
                "plusmoin (pid {pid}) was sent SIGHUP but did not confirm the reload within \
                 {timeout} s (no reload after #{floor} in {}): see its log",
                status_file.display()
            );
            if let Some(p) = last_problem {
                msg.push_str(&format!(" (last reading the status: {p})"));
            }
            return Err(fail(msg));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    if !report.ok {
        let why = report.error.as_deref().unwrap_or("no reason given");
        return Err(fail(format!(
            "plusmoin (pid {pid}) could not apply {file} (reload #{}): {}; the configuration before stays in force",
            report.generation,
            one_line(why)
        )));
    }
    println!(
        "plusmoin (pid {pid}) reloaded {file} (reload #{})",
        report.generation
    );
    if !report.restart_needed.is_empty() {
        eprintln!(
            "plusmoin: warning: these settings changed but take effect only when plusmoin is started again: {}",
            one_line(&report.restart_needed.join(", "))
        );
    }
    Ok(())
}

/// What the daemon wrote, on one inert line (its status file's directory is
/// the daemon user's).
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// The status as `plusmoin status` reads it: fresh, from a running daemon.
fn read_status(
    paths: &config::ControlPaths,
) -> Result<plusmoin::payload::Status, status::StatusError> {
    let now = plusmoin::cluster::Time::now().as_secs_f64();
    let owners = lifecycle::Owners::me_and(&paths.daemon_user);
    status::read(&paths.status_file, now, &owners).and_then(|st| {
        // A fresh file from a daemon that just died is no status either.
        match lifecycle::running_pid(&paths.pid_file, &owners) {
            Ok(None) => Err(status::StatusError::NotRunning {
                pid_file: paths.pid_file.clone(),
                updated_at: st.updated_at,
            }),
            _ => Ok(st),
        }
    })
}

fn show_status(cli: &Cli, table: bool, files: &ControlFiles) -> Result<(), Failure> {
    let paths = control_paths(cli, files, true);
    let st = read_status(&paths).map_err(fail)?;
    let text = status::render(&st, table).map_err(fail)?;
    print!("{text}");
    Ok(())
}

/// `status --watch SECONDS`.
fn watch_status(cli: &Cli, secs: f64, files: &ControlFiles) -> Result<(), Failure> {
    let paths = control_paths(cli, files, true);
    let every = Duration::try_from_secs_f64(secs)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| {
            Failure::new(
                EXIT_CONFIG,
                format!("--watch {secs}: not a number of seconds above 0"),
            )
        })?;
    status::watch(every, &paths.status_file, || {
        read_status(&paths).map_err(|e| e.to_string())
    })
    .map_err(fail)
}

/// `hold` (`reason` given, maybe `None` inside) or `release` (`None`).
fn hold(cli: &Cli, node: &str, hold_reason: Option<Option<&str>>) -> Result<(), Failure> {
    use plusmoin::hold::{self, Placed};
    let config = load(cli)?;
    if !config.has_pgpool() {
        eprintln!("plusmoin: warning: no \"pgpool\" section: a hold is only shown in the status");
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return Err(fail(format!("cannot start the async runtime: {e}"))),
    };
    match hold_reason {
        Some(reason) => {
            let by = hold::placed_by(&config.instance_name);
            match runtime.block_on(hold::place(&config, node, reason, &by)) {
                Ok(Placed::New(e)) => {
                    println!(
                        "{} held (by {}, at {}): plusmoin detaches it from pgpool and does not attach it until `plusmoin release {}`",
                        e.node, e.placed_by, e.placed_at, e.node
                    );
                    Ok(())
                }
                Ok(Placed::Already(e)) => {
                    println!(
                        "{} was already held (by {}, at {}{})",
                        e.node,
                        e.placed_by,
                        e.placed_at,
                        e.reason.map(|r| format!(": {r}")).unwrap_or_default()
                    );
                    Ok(())
                }
                Err(e) => Err(fail(e)),
            }
        }
        None => match runtime.block_on(hold::lift(&config, node)) {
            Ok(l) if l.table.is_none() && !l.file => {
                println!("{} was not held", l.node);
                Ok(())
            }
            Ok(l) => {
                let mut from = Vec::new();
                if let Some(by) = &l.table {
                    from.push(format!("the hold placed by {by}"));
                }
                if l.file {
                    from.push(format!(
                        "the legacy hold in {}",
                        hold::path_for(&config.status_file).display()
                    ));
                }
                println!(
                    "{} released ({} removed): plusmoin attaches it to pgpool once it is in sync",
                    l.node,
                    from.join(" and ")
                );
                Ok(())
            }
            Err(e) => Err(fail(e)),
        },
    }
}

/// `log_level` as the logging set-up takes it.
fn log_level(level: config::LogLevel) -> lifecycle::LogLevel {
    match level {
        config::LogLevel::Error => lifecycle::LogLevel::Error,
        config::LogLevel::Info => lifecycle::LogLevel::Info,
        config::LogLevel::Debug => lifecycle::LogLevel::Debug,
    }
}

/// `log_format` as the logging set-up takes it.
fn log_format(format: config::LogFormat) -> lifecycle::LogFormat {
    match format {
        config::LogFormat::Text => lifecycle::LogFormat::Text,
        config::LogFormat::Json => lifecycle::LogFormat::Json,
    }
}
