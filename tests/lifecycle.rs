//! The daemon's process plumbing tested with real processes: other processes
//! holding the pid file, a real detach, real signals. No database.
//!
//! Helper processes are this test binary re-executed with
//! `PLUSMOIN_LIFECYCLE_HELPER` set, running only [`helper_process`], so they
//! use the library exactly as the daemon will.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use plusmoin::lifecycle::{self, LifecycleError, LogFormat, LogLevel, Owners, PidFile};

const HELPER_ENV: &str = "PLUSMOIN_LIFECYCLE_HELPER";
const WAIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------- helpers --

static HUP: AtomicBool = AtomicBool::new(false);
static TERM: AtomicBool = AtomicBool::new(false);

extern "C" fn on_hup(_: nix::libc::c_int) {
    HUP.store(true, Ordering::SeqCst);
}

extern "C" fn on_term(_: nix::libc::c_int) {
    TERM.store(true, Ordering::SeqCst);
}

fn me() -> Owners {
    Owners::me()
}

fn env_path(name: &str) -> PathBuf {
    std::env::var_os(name)
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("helper needs {name}"))
}

/// Entry point of the helper processes; an immediate pass in a normal run.
#[test]
fn helper_process() {
    let Ok(mode) = std::env::var(HELPER_ENV) else {
        return;
    };
    let code = match mode.as_str() {
        "hold" => helper_hold(),
        "daemon" => helper_daemon(),
        "log" => helper_log(),
        "drop" => helper_drop(),
        "lock" => helper_lock(),
        "lockfork" => helper_lockfork(),
        "idle" => helper_idle(),
        "stopas" => helper_stop_as(),
        other => {
            eprintln!("unknown helper mode {other}");
            90
        }
    };
    std::process::exit(code);
}

/// Holds the pid file like a running daemon until killed.
fn helper_hold() -> i32 {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet};
    if std::env::var_os("HELPER_IGNORE_TERM").is_some() {
        // SAFETY: installing SIG_IGN runs no code.
        unsafe { nix::sys::signal::signal(Signal::SIGTERM, SigHandler::SigIgn) }
            .expect("ignore SIGTERM");
    }
    let hup_file = std::env::var_os("HELPER_HUP_FILE").map(PathBuf::from);
    if hup_file.is_some() {
        let action = SigAction::new(
            SigHandler::Handler(on_hup),
            SaFlags::SA_RESTART,
            SigSet::empty(),
        );
        // SAFETY: the handler only stores to an atomic.
        unsafe { sigaction(Signal::SIGHUP, &action) }.expect("install SIGHUP handler");
    }
    if std::env::var_os("HELPER_RELEASE_ON_TERM").is_some() {
        let action = SigAction::new(
            SigHandler::Handler(on_term),
            SaFlags::SA_RESTART,
            SigSet::empty(),
        );
        // SAFETY: the handler only stores to an atomic.
        unsafe { sigaction(Signal::SIGTERM, &action) }.expect("install SIGTERM handler");
    }
    let mut pid_file = match PidFile::acquire(&env_path("HELPER_PID_FILE"), &me()) {
        Ok(p) => Some(p),
        Err(e) => {
            println!("error {e}");
            return 2;
        }
    };
    println!("ready {}", std::process::id());
    loop {
        if TERM.swap(false, Ordering::SeqCst) {
            // Done with the pid file (its lock goes), but still running.
            drop(pid_file.take());
            println!("released");
        }
        if HUP.swap(false, Ordering::SeqCst) {
            if let Some(f) = &hup_file {
                std::fs::write(f, "hup\n").expect("write hup file");
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Someone else's process holding a lock on a file of its own (which the
/// test then fills with another process's pid): a forged pid file.
fn helper_lock() -> i32 {
    let file = std::fs::File::open(env_path("HELPER_LOCK_FILE")).expect("open lock file");
    let _lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .expect("lock");
    println!("ready {}", std::process::id());
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The lock-then-fork trick: take the pid file's lock, write a pid into
/// the file, maybe start a `sleep` keeping the locked descriptor (and with
/// it the lock), then leave the way `HELPER_THEN` says: `exit`, `exec-idle`
/// (become an idle helper, the descriptor closed on exec) or `exec-holding`
/// (become a shell then `sleep`, keeping the descriptor). `HELPER_NAMES`:
/// `self` or `keeper`, the pid written.
fn helper_lockfork() -> i32 {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileExt;
    use std::os::unix::process::CommandExt;
    let path = env_path("HELPER_LOCK_FILE");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .expect("open lock file");
    let locked = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .expect("lock");
    let fd = locked.as_raw_fd();
    let inherit = move || fcntl(fd, FcntlArg::F_SETFD(FdFlag::empty())).map(drop);
    let keeper = std::env::var_os("HELPER_KEEPER").map(|_| {
        let mut cmd = Command::new("sleep");
        cmd.arg("600")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: one fcntl on a descriptor, async-signal-safe.
        unsafe { cmd.pre_exec(move || inherit().map_err(std::io::Error::from)) };
        cmd.spawn().expect("spawn keeper").id()
    });
    let named = match std::env::var("HELPER_NAMES").as_deref() {
        Ok("keeper") => keeper.expect("HELPER_KEEPER"),
        _ => std::process::id(),
    };
    locked.set_len(0).expect("truncate");
    locked
        .write_all_at(format!("{named}\n").as_bytes(), 0)
        .expect("write pid");
    if let Some(k) = keeper {
        println!("keeper {k}");
    }
    println!("ready {}", std::process::id());
    match std::env::var("HELPER_THEN").as_deref() {
        // Not through `Flock`'s drop, which would unlock the keeper's lock too.
        Ok("exit") => std::process::exit(0),
        Ok("exec-idle") => {
            let err = Command::new(std::env::current_exe().expect("current_exe"))
                .args([
                    "helper_process",
                    "--exact",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(HELPER_ENV, "idle")
                .exec();
            panic!("exec: {err}");
        }
        Ok("exec-holding") => {
            inherit().expect("keep the descriptor");
            let err = Command::new("sh")
                .args(["-c", "echo execd $$; exec sleep 600"])
                .exec();
            panic!("exec: {err}");
        }
        other => panic!("HELPER_THEN {other:?}"),
    }
}

/// A process doing nothing, killed by any signal: a victim.
fn helper_idle() -> i32 {
    println!("idle {}", std::process::id());
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// `stop` then `reload` of `HELPER_PID_FILE` as `HELPER_USER`, printing
/// what each says.
fn helper_stop_as() -> i32 {
    let user = std::env::var("HELPER_USER").expect("HELPER_USER");
    let entry = nix::unistd::User::from_name(&user).unwrap().unwrap();
    nix::unistd::setgid(entry.gid).unwrap();
    nix::unistd::setuid(entry.uid).unwrap();
    let path = env_path("HELPER_PID_FILE");
    let stopped = lifecycle::stop(&path, Duration::from_millis(300), &me());
    match stopped {
        Err(e) => println!("stop says {e}"),
        Ok(pid) => println!("stop says {pid:?}"),
    }
    match lifecycle::reload(&path, &me()) {
        Err(e) => println!("reload says {e}"),
        Ok(pid) => println!("reload says {pid}"),
    }
    0
}

/// `plusmoin start` in miniature: detach, take the pid file, report.
fn helper_daemon() -> i32 {
    let detached = match lifecycle::daemonize() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("daemonize: {e}");
            return 3;
        }
    };
    if std::env::var_os("HELPER_DIE_SILENTLY").is_some() {
        // A crash before reporting: the kernel closes the pipe.
        std::process::exit(7);
    }
    match PidFile::acquire(&env_path("HELPER_PID_FILE"), &me()) {
        Err(e) => {
            detached.fail(&e.to_string());
            1
        }
        Ok(_pid_file) => {
            detached.ready();
            loop {
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

fn log_format() -> LogFormat {
    match std::env::var("HELPER_LOG_FORMAT").as_deref() {
        Ok("json") => LogFormat::Json,
        _ => LogFormat::Text,
    }
}

fn helper_log() -> i32 {
    let file = std::env::var_os("HELPER_LOG_FILE").map(PathBuf::from);
    if let Err(e) = lifecycle::init_logging(LogLevel::Info, log_format(), file.as_deref(), &me()) {
        eprintln!("init_logging: {e}");
        return 4;
    }
    // The level applies to plusmoin's own targets; others log warnings up.
    tracing::info!(target: "plusmoin::daemon", node = "db1:5432", "info-marker");
    tracing::debug!(target: "plusmoin::daemon", "debug-marker");
    tracing::error!(target: "plusmoin::daemon", "error-marker");
    tracing::info!(target: "tokio_postgres::connection", "other-info-marker");
    tracing::warn!(target: "tokio_postgres::connection", "other-warn-marker");
    0
}

fn helper_drop() -> i32 {
    let user = std::env::var("HELPER_USER").expect("HELPER_USER");
    if let Ok(first) = std::env::var("HELPER_BECOME_FIRST") {
        // Started by root, but already someone else when plusmoin runs.
        let entry = nix::unistd::User::from_name(&first).unwrap().unwrap();
        nix::unistd::setgid(entry.gid).unwrap();
        nix::unistd::setuid(entry.uid).unwrap();
    }
    if let Err(e) = lifecycle::drop_privileges(&user) {
        println!("error {e}");
        return 5;
    }
    let groups = nix::unistd::getgroups().expect("getgroups");
    println!(
        "ids {} {} {} {}",
        nix::unistd::getuid(),
        nix::unistd::geteuid(),
        nix::unistd::getgid(),
        groups
            .iter()
            .map(|g| g.to_string())
            .collect::<Vec<_>>()
            .join(",")
    );
    0
}

/// A helper child, killed and reaped however the test ends.
struct Helper {
    child: Child,
    lines: mpsc::Receiver<String>,
}

fn spawn_helper(mode: &str, envs: &[(&str, &Path)]) -> Helper {
    let exe = std::env::current_exe().expect("current_exe");
    let mut cmd = Command::new(exe);
    cmd.args([
        "helper_process",
        "--exact",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(HELPER_ENV, mode)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn helper");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    Helper { child, lines }
}

impl Helper {
    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The text from `prefix` on in the first line containing it (libtest
    /// may print on the same line).
    fn line(&mut self, prefix: &str) -> String {
        let line = self.line_containing(prefix);
        line[line.find(prefix).unwrap_or(0)..].to_string()
    }

    /// Panics naming what came instead.
    fn line_containing(&mut self, prefix: &str) -> String {
        let deadline = Instant::now() + WAIT;
        let mut seen = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(prefix) => return line,
                Ok(line) => seen.push(line),
                Err(_) => break,
            }
        }
        let mut stderr = String::new();
        if let Ok(Some(_)) = self.child.try_wait() {
            if let Some(mut e) = self.child.stderr.take() {
                let _ = e.read_to_string(&mut stderr);
            }
        }
        panic!("helper never printed {prefix:?}; stdout {seen:?}, stderr {stderr:?}");
    }

    fn wait_ready(&mut self) {
        let line = self.line("ready ");
        assert_eq!(line, format!("ready {}", self.pid()));
    }

    fn wait_exit(&mut self) -> ExitStatus {
        wait_until("helper exits", || self.child.try_wait().ok().flatten())
    }

    fn stderr(&mut self) -> String {
        let mut s = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            e.read_to_string(&mut s).expect("read stderr");
        }
        s
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A process we did not spawn directly (the daemon): SIGKILL on the way out.
/// The lock-then-fork helper: takes the lock on `path`, writes its own
/// pid, hands the lock to a child (the keeper, killed on drop), then does
/// `then` (`exec-idle`, `exit`, …).
fn locker_with_keeper(path: &Path, then: &str) -> (Helper, KillOnDrop) {
    let mut locker = spawn_helper(
        "lockfork",
        &[
            ("HELPER_LOCK_FILE", path),
            ("HELPER_KEEPER", Path::new("1")),
            ("HELPER_NAMES", Path::new("self")),
            ("HELPER_THEN", Path::new(then)),
        ],
    );
    let keeper: i32 = locker.line("keeper ")["keeper ".len()..].parse().unwrap();
    (locker, KillOnDrop(keeper))
}

struct KillOnDrop(i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.0), Signal::SIGKILL);
    }
}

fn wait_until<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn pid_path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("plusmoin.pid")
}

fn file_pid(path: &Path) -> i32 {
    std::fs::read_to_string(path)
        .expect("read pid file")
        .trim()
        .parse()
        .expect("pid file holds a pid")
}

/// Fields after the `(comm)` of /proc/PID/stat: state, ppid, pgrp, session…
fn proc_stat_fields(pid: i32) -> Vec<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read stat");
    let after = &stat[stat.rfind(')').expect("comm") + 1..];
    after.split_whitespace().map(str::to_string).collect()
}

// ------------------------------------------------------------------ tests --

#[test]
fn second_acquire_from_another_process_fails_naming_the_holder() {
    let dir = tempfile::tempdir().unwrap();
    let path = pid_path(&dir);
    let mut holder = spawn_helper("hold", &[("HELPER_PID_FILE", &path)]);
    holder.wait_ready();
    assert_eq!(file_pid(&path), holder.pid());

    let err = PidFile::acquire(&path, &me()).expect_err("the lock is held by the helper");
    assert!(
        matches!(err, LifecycleError::AlreadyRunning { pid: Some(p), .. } if p == holder.pid())
    );
    let msg = err.to_string();
    assert!(msg.contains("already running"), "{msg}");
    assert!(msg.contains(&format!("pid {}", holder.pid())), "{msg}");
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    // The failed attempt must not have clobbered the holder's pid.
    assert_eq!(file_pid(&path), holder.pid());
    assert_eq!(
        lifecycle::running_pid(&path, &me()).unwrap(),
        Some(holder.pid())
    );
}

#[test]
fn second_acquire_in_the_same_process_fails_too() {
    let dir = tempfile::tempdir().unwrap();
    let path = pid_path(&dir);
    let _first = PidFile::acquire(&path, &me()).unwrap();
    let msg = PidFile::acquire(&path, &me()).unwrap_err().to_string();
    assert!(
        msg.contains(&format!("already running (pid {}", std::process::id())),
        "{msg}"
    );
}

#[test]
fn pid_file_left_by_a_killed_daemon_is_taken_over() {
    let dir = tempfile::tempdir().unwrap();
    let path = pid_path(&dir);
    let mut holder = spawn_helper("hold", &[("HELPER_PID_FILE", &path)]);
    holder.wait_ready();
    let old = holder.pid();
    holder.child.kill().unwrap(); // SIGKILL: no Drop, the file stays
    holder.wait_exit();
    assert_eq!(file_pid(&path), old, "kill -9 leaves the file behind");
    assert_eq!(lifecycle::running_pid(&path, &me()).unwrap(), None);

    let ours = PidFile::acquire(&path, &me()).expect("stale file is taken over");
    assert_eq!(file_pid(&path), std::process::id() as i32);
    assert_eq!(
        lifecycle::running_pid(&path, &me()).unwrap(),
        Some(std::process::id() as i32)
    );
    drop(ours);
}

#[test]
fn stale_pid_naming_a_dead_process_is_overwritten_not_appended() {
    let dir = tempfile::tempdir().unwrap();
    let path = pid_path(&dir);
    // A long pid of a dead process: a shorter new pid must not leave digits.
    std::fs::write(&path, "4194303123\n").unwrap();
    assert_eq!(lifecycle::running_pid(&path, &me()).unwrap(), None);
    let _ours = PidFile::acquire(&path, &me()).unwrap();
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        format!("{}\n", std::process::id())
    );
}

#[test]
fn dropping_the_pid_file_removes_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = pid_path(&dir);
    let pid_file = PidFile::acquire(&path, &me()).unwrap();
    assert!(path.exists());
    drop(pid_file);
    assert!(!path.exists(), "the file should be gone after drop");
    assert_eq!(lifecycle::running_pid(&path, &me()).unwrap(), None);
}

#[test]
fn acquire_fails_naming_a_missing_directory() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("not-created");
    let msg = PidFile::acquire(&missing.join("plusmoin.pid"), &me())
        .unwrap_err()
        .to_string();
    assert!(msg.contains(&missing.display().to_string()), "{msg}");
    assert!(msg.contains("does not exist"), "{msg}");
    assert!(
        !missing.exists(),
        "the directory is the operator's to create"
    );
}

#[test]
fn running_pid_is_none_without_a_file() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(
        lifecycle::running_pid(&pid_path(&dir), &me()).unwrap(),
        None
    );
    assert_eq!(
        lifecycle::running_pid(&dir.path().join("no/such/dir.pid"), &me()).unwrap(),
        None
    );
}

#[test]
fn stop_ends_a_daemon_that_honours_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let path = pid_path(&dir);
    let mut holder = spawn_helper("hold", &[("HELPER_PID_FILE", &path)]);
    holder.wait_ready();

    let started = Instant::now();
    let stopped = lifecycle::stop(&path, Duration::from_secs(20), &me()).unwrap();
    assert_eq!(stopped, Some(holder.pid()));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "SIGTERM should do it well before the grace: {:?}",
        started.elapsed()
    );
    let status = holder.wait_exit();
    assert_eq!(status.signal(), Some(Signal::SIGTERM as i32), "{status:?}");
    assert_eq!(lifecycle::running_pid(&path, &me()).unwrap(), None);
}

#[test]
fn stop_kills_a_daemon_that_ignores_sigterm_after_the_grace() {
    let dir = tempfile::tempdir().unwrap();
    let path = pid_path(&dir);
    let mut holder = spawn_helper(
        "hold",
        &[
            ("HELPER_PID_FILE", &path),
            ("HELPER_IGNORE_TERM", Path::new("1")),
        ],
    );
    holder.wait_ready();

    let grace = Duration::from_millis(300);
    let started = Instant::now();
    assert_eq!(
        lifecycle::stop(&path, grace, &me()).unwrap(),
        Some(holder.pid())
    );
    assert!(started.elapsed() >= grace, "SIGKILL came before the grace");
    let status = holder.wait_exit();
    assert_eq!(status.signal(), Some(Signal::SIGKILL as i32), "{status:?}");
}

#[test]
fn stop_with_nothing_running_returns_none() {
    let dir = tempfile::tempdir().unwrap();
    let path = pid_path(&dir);
    assert_eq!(
        lifecycle::stop(&path, Duration::from_secs(1), &me()).unwrap(),
        None
    );
    // A stale file naming our own (live) pid must not get us signalled.
    std::fs::write(&path, format!("{}\n", std::process::id())).unwrap();
    assert_eq!(
        lifecycle::stop(&path, Duration::from_secs(1), &me()).unwrap(),
        None
    );
}

#[test]
fn reload_sends_sighup_to_the_running_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let path = pid_path(&dir);
    let hup = dir.path().join("hup");
    let mut holder = spawn_helper(
        "hold",
        &[("HELPER_PID_FILE", &path), ("HELPER_HUP_FILE", &hup)],
    );
    holder.wait_ready();

    assert_eq!(lifecycle::reload(&path, &me()).unwrap(), holder.pid());
    wait_until("the helper records SIGHUP", || {
        std::fs::read_to_string(&hup).ok().filter(|s| s == "hup\n")
    });
    assert!(
        holder.child.try_wait().unwrap().is_none(),
        "SIGHUP must not end it"
    );
}

#[test]
fn reload_fails_naming_the_pid_file_when_not_running() {
    let dir = tempfile::tempdir().unwrap();
    let path = pid_path(&dir);
    let msg = lifecycle::reload(&path, &me()).unwrap_err().to_string();
    assert!(msg.contains("not running"), "{msg}");
    assert!(msg.contains(&path.display().to_string()), "{msg}");
}

#[test]
fn secret_file_warnings_for_group_or_other_access() {
    use plusmoin::config::permission_warnings;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plusmoin.json");
    std::fs::write(&file, "{}").unwrap();
    let me = nix::unistd::User::from_uid(nix::unistd::geteuid())
        .unwrap()
        .unwrap();
    // Files we create get our group: `me` as daemon user shares it, a user
    // of another group does not.
    let file_gid = std::fs::metadata(&file).unwrap().gid();
    let stranger = ["nobody", "daemon", "bin"]
        .into_iter()
        .find(|n| {
            nix::unistd::User::from_name(n)
                .ok()
                .flatten()
                .is_some_and(|u| u.gid.as_raw() != file_gid)
        })
        .expect("a user of another group");
    // Started as root, the daemon reads the file again as the daemon user
    // at every reload: one that user cannot read is warned of too.
    let root = nix::unistd::geteuid().is_root();
    // (mode, daemon user, warns it is writable, warns it is readable, warns
    // the daemon user cannot read it when started as root)
    for (mode, user, writable, readable, unreadable) in [
        (0o600, me.name.as_str(), false, false, false),
        (0o400, stranger, false, false, true),
        (0o640, me.name.as_str(), false, false, false),
        (0o640, stranger, false, true, true),
        (0o644, me.name.as_str(), false, true, false),
        (0o604, me.name.as_str(), false, true, false),
        (0o620, me.name.as_str(), true, false, false),
        (0o602, me.name.as_str(), true, false, false),
        (0o660, me.name.as_str(), true, false, false),
        (0o666, stranger, true, true, false),
    ] {
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
        let w = permission_warnings(&file, user);
        let what = format!("mode {mode:04o}, daemon user {user}: {w:?}");
        assert_eq!(w.iter().any(|w| w.contains("writable")), writable, "{what}");
        assert_eq!(w.iter().any(|w| w.contains("readable")), readable, "{what}");
        assert_eq!(
            w.iter()
                .any(|w| w.contains("cannot be read by daemon_user")),
            unreadable && root,
            "{what}"
        );
        for w in &w {
            assert!(w.contains(&file.display().to_string()), "{w}");
            assert!(w.contains(&format!("{mode:04o}")), "{w}");
            // Whoever the daemon runs as, the fix keeps it able to read
            // the file: chmod 600 only for the owner's own daemon.
            if w.contains("chmod 600") {
                assert!(user == me.name || !root, "{what}");
            }
            if root && user == stranger && !w.contains("writable") {
                assert!(w.contains("; chmod 640 "), "{what}");
            }
        }
    }
    assert!(permission_warnings(&dir.path().join("absent"), &me.name).is_empty());
}

#[test]
fn drop_privileges_to_an_unknown_user() {
    let result = lifecycle::drop_privileges("no-such-user-xyz");
    if nix::unistd::geteuid().is_root() {
        let msg = result.unwrap_err().to_string();
        assert!(msg.contains("no-such-user-xyz"), "{msg}");
        assert!(msg.contains("unknown"), "{msg}");
    } else {
        // Not root: nothing to drop, whatever the name.
        result.expect("a no-op when not root");
    }
}

#[test]
fn drop_privileges_switches_user_and_groups_when_root() {
    let me = nix::unistd::geteuid();
    let mut helper = spawn_helper("drop", &[("HELPER_USER", Path::new("nobody"))]);
    let line = helper.line("ids ");
    let status = helper.wait_exit();
    assert!(status.success(), "{status:?}");
    let fields: Vec<&str> = line.split(' ').collect();
    if me.is_root() {
        let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
        assert_eq!(fields[1], nobody.uid.to_string(), "uid: {line}");
        assert_eq!(fields[2], nobody.uid.to_string(), "euid: {line}");
        assert_eq!(fields[3], nobody.gid.to_string(), "gid: {line}");
        assert!(
            !fields[4].split(',').any(|g| g == "0"),
            "root's group kept: {line}"
        );
    } else {
        assert_eq!(fields[1], me.to_string(), "stays the current user: {line}");
    }
}

#[test]
fn drop_privileges_is_a_no_op_when_not_root() {
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    let me = nix::unistd::geteuid();
    let (become_first, expected) = if me.is_root() {
        (Some(Path::new("nobody")), nobody.uid)
    } else {
        (None, me)
    };
    let mut envs = vec![("HELPER_USER", Path::new("root"))];
    envs.extend(become_first.map(|u| ("HELPER_BECOME_FIRST", u)));
    let mut helper = spawn_helper("drop", &envs);
    let line = helper.line("ids ");
    assert!(helper.wait_exit().success());
    let fields: Vec<&str> = line.split(' ').collect();
    assert_eq!(fields[1], expected.to_string(), "uid: {line}");
    assert_eq!(fields[2], expected.to_string(), "euid: {line}");
}

#[test]
fn daemonize_detaches_and_the_daemon_holds_the_pid_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = pid_path(&dir);
    let mut launcher = spawn_helper("daemon", &[("HELPER_PID_FILE", &path)]);
    let status = launcher.wait_exit();
    // The launcher exits only once the daemon reported; reading the pid now
    // needs no waiting.
    let daemon = lifecycle::running_pid(&path, &me()).unwrap();
    let daemon_guard = daemon.map(KillOnDrop);
    assert!(status.success(), "{status:?}: {}", launcher.stderr());
    let daemon = daemon.expect("the daemon holds the pid file");
    assert_ne!(daemon, launcher.pid());

    let stat = proc_stat_fields(daemon);
    let (pgrp, session) = (&stat[2], &stat[3]);
    let our_session = proc_stat_fields(std::process::id() as i32)[3].clone();
    assert_ne!(*session, our_session, "still in the launcher's session");
    assert_ne!(
        *session,
        daemon.to_string(),
        "a session leader can regain a tty"
    );
    assert_eq!(pgrp, session, "in the new session's process group");
    assert_eq!(stat[4], "0", "has a controlling terminal: {stat:?}");

    let cwd = std::fs::read_link(format!("/proc/{daemon}/cwd")).unwrap();
    assert_eq!(cwd, Path::new("/"));
    let status_text = std::fs::read_to_string(format!("/proc/{daemon}/status")).unwrap();
    assert!(
        status_text.lines().any(|l| l == "Umask:\t0027"),
        "{status_text}"
    );
    for fd in 0..=2 {
        let target = std::fs::read_link(format!("/proc/{daemon}/fd/{fd}")).unwrap();
        assert_eq!(target, Path::new("/dev/null"), "fd {fd}");
    }

    assert_eq!(
        lifecycle::stop(&path, Duration::from_secs(5), &me()).unwrap(),
        Some(daemon)
    );
    assert_eq!(lifecycle::running_pid(&path, &me()).unwrap(), None);
    drop(daemon_guard);
}

#[test]
fn daemonize_reports_a_startup_failure_to_the_launcher() {
    let dir = tempfile::tempdir().unwrap();
    let path = pid_path(&dir);
    let mut holder = spawn_helper("hold", &[("HELPER_PID_FILE", &path)]);
    holder.wait_ready();

    let mut launcher = spawn_helper("daemon", &[("HELPER_PID_FILE", &path)]);
    let status = launcher.wait_exit();
    let stderr = launcher.stderr();
    assert_eq!(status.code(), Some(1), "{status:?}: {stderr}");
    assert!(
        stderr.contains(&format!(
            "plusmoin: plusmoin is already running (pid {}, {})",
            holder.pid(),
            path.display()
        )),
        "{stderr}"
    );
    assert_eq!(
        lifecycle::running_pid(&path, &me()).unwrap(),
        Some(holder.pid())
    );
}

#[test]
fn daemonize_launcher_fails_when_the_daemon_dies_without_a_word() {
    let dir = tempfile::tempdir().unwrap();
    let path = pid_path(&dir);
    let mut launcher = spawn_helper(
        "daemon",
        &[
            ("HELPER_PID_FILE", &path),
            ("HELPER_DIE_SILENTLY", Path::new("1")),
        ],
    );
    let status = launcher.wait_exit();
    let stderr = launcher.stderr();
    assert_eq!(status.code(), Some(1), "{status:?}: {stderr}");
    assert!(stderr.contains("exited during startup"), "{stderr}");
    assert!(!path.exists());
}

#[test]
fn log_file_gets_utc_rfc3339_lines_at_the_configured_level_appended() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("plusmoin.log");
    for _ in 0..2 {
        let mut helper = spawn_helper("log", &[("HELPER_LOG_FILE", &log)]);
        let status = helper.wait_exit();
        assert!(status.success(), "{status:?}: {}", helper.stderr());
    }
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(text.matches("info-marker").count(), 2, "appended:\n{text}");
    assert_eq!(text.matches("error-marker").count(), 2, "{text}");
    assert!(!text.contains("debug-marker"), "level info:\n{text}");
    assert!(!text.contains("other-info-marker"), "{text}");
    assert_eq!(text.matches("other-warn-marker").count(), 2, "{text}");
    assert!(!text.contains('\x1b'), "no colours in a file:\n{text}");
    assert!(text.contains("db1:5432"), "structured fields kept:\n{text}");
    for line in text.lines() {
        let stamp = line.split(' ').next().unwrap();
        assert!(is_utc_rfc3339(stamp), "timestamp {stamp:?} in {line:?}");
    }
}

#[test]
fn json_log_file_has_one_object_a_line_with_the_fields_at_the_top() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("plusmoin.log");
    let mut helper = spawn_helper(
        "log",
        &[
            ("HELPER_LOG_FILE", &log),
            ("HELPER_LOG_FORMAT", Path::new("json")),
        ],
    );
    let status = helper.wait_exit();
    assert!(status.success(), "{status:?}: {}", helper.stderr());
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect();
    // Same filtering as text: info, error and the other crate's warning.
    assert_eq!(lines.len(), 3, "{text}");
    let info = &lines[0];
    assert_eq!(info["message"], "info-marker", "{info}");
    assert_eq!(info["node"], "db1:5432", "fields at the top level: {info}");
    assert_eq!(info["level"], "INFO", "{info}");
    assert!(
        is_utc_rfc3339(info["timestamp"].as_str().unwrap()),
        "{info}"
    );
}

#[test]
fn logs_go_to_stdout_without_a_file() {
    let mut helper = spawn_helper("log", &[]);
    let line = helper.line_containing("info-marker");
    // libtest's "test helper_process ... " may precede it on the line.
    let line = line.rsplit("... ").next().unwrap_or(&line);
    assert!(is_utc_rfc3339(line.split(' ').next().unwrap()), "{line}");
    assert!(helper.wait_exit().success());
}

#[test]
fn init_logging_names_a_log_file_it_cannot_open() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("missing-dir/plusmoin.log");
    let msg = lifecycle::init_logging(LogLevel::Info, LogFormat::Text, Some(&log), &me())
        .unwrap_err()
        .to_string();
    assert!(msg.contains(&log.display().to_string()), "{msg}");
}

/// `2026-11-25T18:19:52.123456Z`: date, `T`, time, optional fraction, `Z`.
fn is_utc_rfc3339(s: &str) -> bool {
    let b = s.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| r.clone().all(|i| b.get(i).is_some_and(u8::is_ascii_digit));
    b.len() >= 20
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19)
        && b.last() == Some(&b'Z')
        && (b.len() == 20 || (b[19] == b'.' && digits(20..b.len() - 1)))
}

// ------------------------------------------- files others can plant things --

/// A file outside the test directory that a planted link points to, and what
/// it held: nothing done through the link may change it.
struct Target {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Target {
    const TEXT: &'static str = "precious: not plusmoin's\n";

    fn new() -> Target {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("precious");
        std::fs::write(&path, Self::TEXT).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        Target { _dir: dir, path }
    }

    fn assert_untouched(&self) {
        assert_eq!(std::fs::read_to_string(&self.path).unwrap(), Self::TEXT);
        let mode = std::fs::metadata(&self.path).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600, "target's mode changed");
    }
}

#[test]
fn a_link_planted_as_the_pid_file_is_refused_and_its_target_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = pid_path(&dir);
    let target = Target::new();
    std::os::unix::fs::symlink(&target.path, &path).unwrap();
    let msg = PidFile::acquire(&path, &me()).unwrap_err().to_string();
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(msg.contains("symbolic link"), "{msg}");
    target.assert_untouched();
    // stop, reload and status do not read through it either.
    let msg = lifecycle::stop(&path, Duration::from_secs(1), &me())
        .unwrap_err()
        .to_string();
    assert!(msg.contains("symbolic link"), "{msg}");
    assert!(lifecycle::reload(&path, &me()).is_err());
    // A dangling link does not get its target created.
    let dangling = dir.path().join("dangling.pid");
    let nowhere = dir.path().join("nowhere");
    std::os::unix::fs::symlink(&nowhere, &dangling).unwrap();
    assert!(PidFile::acquire(&dangling, &me()).is_err());
    assert!(!nowhere.exists(), "created through a dangling link");
}

#[test]
fn a_hard_link_planted_as_the_pid_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = pid_path(&dir);
    // Same file system: a hard link to a file of ours elsewhere in it.
    let other = tempfile::tempdir_in(dir.path()).unwrap();
    let victim = other.path().join("victim");
    std::fs::write(&victim, Target::TEXT).unwrap();
    std::fs::hard_link(&victim, &path).unwrap();
    let msg = PidFile::acquire(&path, &me()).unwrap_err().to_string();
    assert!(msg.contains("hard links"), "{msg}");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), Target::TEXT);
}

#[test]
fn a_link_planted_as_the_log_file_is_refused_and_its_target_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("plusmoin.log");
    let target = Target::new();
    std::os::unix::fs::symlink(&target.path, &log).unwrap();
    let msg = lifecycle::init_logging(LogLevel::Info, LogFormat::Text, Some(&log), &me())
        .unwrap_err()
        .to_string();
    assert!(msg.contains(&log.display().to_string()), "{msg}");
    assert!(msg.contains("symbolic link"), "{msg}");
    target.assert_untouched();
}

#[test]
fn a_link_planted_as_the_status_file_is_not_read_nor_written_through() {
    use plusmoin::status;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("status.json");
    let target = Target::new();
    std::os::unix::fs::symlink(&target.path, &path).unwrap();
    let msg = status::read(&path, 0.0, &me()).unwrap_err().to_string();
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(msg.contains("symbolic link"), "{msg}");
    // Written by rename: the link is replaced, not followed.
    status::write_atomic(&path, b"{}\n", 0o644).unwrap();
    target.assert_untouched();
    let meta = std::fs::symlink_metadata(&path).unwrap();
    assert!(meta.file_type().is_file(), "{meta:?}");
    assert_eq!(meta.mode() & 0o777, 0o644);
}

#[test]
fn a_link_planted_as_the_hold_lock_is_refused_and_its_target_untouched() {
    use plusmoin::hold;
    let dir = tempfile::tempdir().unwrap();
    let status_file = dir.path().join("status.json");
    let target = Target::new();
    let held = hold::path_for(&status_file);
    let mut lock = held.clone().into_os_string();
    lock.push(".lock");
    std::os::unix::fs::symlink(&target.path, &lock).unwrap();
    let text = format!(
        r#"{{"dbname": "d", "user": "u", "password": "p", "status_file": "{}",
            "nodes": [{{"host": "127.0.0.1", "port": 1}}]}}"#,
        status_file.display()
    );
    let cfg = dir.path().join("plusmoin.json");
    std::fs::write(&cfg, text).unwrap();
    let config = plusmoin::config::load(&cfg).unwrap();
    let msg = hold::hold(&config, "127.0.0.1:1").unwrap_err().to_string();
    assert!(msg.contains("symbolic link"), "{msg}");
    target.assert_untouched();
    // held.json itself is not read through a link either.
    std::fs::remove_file(&lock).unwrap();
    std::os::unix::fs::symlink(&target.path, &held).unwrap();
    let msg = hold::read(&held, &me()).unwrap_err().to_string();
    assert!(msg.contains("symbolic link"), "{msg}");
}

/// `f` on another thread, its answer within [`WAIT`] or a failure saying it
/// hung.
fn within_wait<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(WAIT)
        .unwrap_or_else(|_| panic!("{what} hung for {WAIT:?}"))
}

#[test]
fn a_fifo_as_the_pid_file_does_not_hang_stop_reload_or_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = pid_path(&dir);
    nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let p = path.clone();
    let stopped = within_wait("stop", move || {
        lifecycle::stop(&p, Duration::from_secs(1), &me()).map_err(|e| e.to_string())
    });
    let msg = stopped.unwrap_err();
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(msg.contains("FIFO"), "{msg}");
    let p = path.clone();
    let reloaded = within_wait("reload", move || {
        lifecycle::reload(&p, &me()).map_err(|e| e.to_string())
    });
    assert!(reloaded.unwrap_err().contains("FIFO"));
    let p = path.clone();
    let acquired = within_wait("acquire", move || {
        PidFile::acquire(&p, &me()).map_err(|e| e.to_string())
    });
    assert!(acquired.unwrap_err().contains("FIFO"));
}

/// A process to be signalled by mistake: it must outlive the test's `stop`.
struct Victim(Child);

impl Victim {
    fn start() -> Victim {
        Victim(
            Command::new("sleep")
                .arg("600")
                .stdin(Stdio::null())
                .spawn()
                .expect("spawn sleep"),
        )
    }

    fn pid(&self) -> i32 {
        self.0.id() as i32
    }

    fn assert_alive(&mut self) {
        assert!(
            self.0.try_wait().unwrap().is_none(),
            "the victim was signalled"
        );
    }
}

impl Drop for Victim {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_forged_pid_file_signals_nobody() {
    let dir = tempfile::tempdir().unwrap();
    let path = pid_path(&dir);
    let mut victim = Victim::start();
    // Nobody holds its lock: not running.
    std::fs::write(&path, format!("{}\n", victim.pid())).unwrap();
    assert_eq!(
        lifecycle::stop(&path, Duration::from_secs(1), &me()).unwrap(),
        None
    );
    assert!(lifecycle::reload(&path, &me()).is_err());
    victim.assert_alive();
    // Locked by a process of its own, naming the victim: whoever can write
    // the directory can do that.
    let mut locker = spawn_helper("lock", &[("HELPER_LOCK_FILE", &path)]);
    locker.wait_ready();
    let msg = lifecycle::stop(&path, Duration::from_millis(300), &me())
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains(&format!("names pid {}", victim.pid())),
        "{msg}"
    );
    assert!(
        msg.contains(&format!("held by pid {}", locker.pid())),
        "{msg}"
    );
    assert!(msg.contains("not signalling anyone"), "{msg}");
    let msg = lifecycle::reload(&path, &me()).unwrap_err().to_string();
    assert!(msg.contains("not signalling anyone"), "{msg}");
    victim.assert_alive();
    assert!(
        locker.child.try_wait().unwrap().is_none(),
        "locker signalled"
    );
}

#[test]
fn a_pid_file_owned_by_someone_else_is_refused() {
    if !nix::unistd::geteuid().is_root() {
        plusmoin_kit::skip("needs root to chown");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = pid_path(&dir);
    let mut victim = Victim::start();
    std::fs::write(&path, format!("{}\n", victim.pid())).unwrap();
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    nix::unistd::chown(&path, Some(nobody.uid), None).unwrap();
    let mut locker = spawn_helper("lock", &[("HELPER_LOCK_FILE", &path)]);
    locker.wait_ready();
    let msg = lifecycle::stop(&path, Duration::from_millis(300), &me())
        .unwrap_err()
        .to_string();
    assert!(msg.contains("owned by nobody"), "{msg}");
    assert!(PidFile::acquire(&path, &me()).is_err());
    victim.assert_alive();
    // nobody as the daemon user: its file is trusted (and still forged).
    let msg = lifecycle::stop(&path, Duration::from_millis(300), &Owners::me_and("nobody"))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("not signalling anyone"), "{msg}");
    victim.assert_alive();
}

#[test]
fn stop_waits_on_the_lock_not_on_the_pid() {
    let dir = tempfile::tempdir().unwrap();
    let path = pid_path(&dir);
    // Releases its pid file on SIGTERM but keeps running: done as plusmoin.
    let mut holder = spawn_helper(
        "hold",
        &[
            ("HELPER_PID_FILE", &path),
            ("HELPER_RELEASE_ON_TERM", Path::new("1")),
        ],
    );
    holder.wait_ready();
    let grace = Duration::from_secs(30);
    let started = Instant::now();
    assert_eq!(
        lifecycle::stop(&path, grace, &me()).unwrap(),
        Some(holder.pid())
    );
    assert!(started.elapsed() < grace, "waited out the grace");
    holder.line("released");
    assert!(
        holder.child.try_wait().unwrap().is_none(),
        "killed although its lock was gone"
    );
}

/// Whether `pid` exists and is not a zombie.
fn running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let after = &stat[stat.rfind(')').map_or(0, |i| i + 1)..];
        !matches!(after.split_whitespace().next(), Some("Z" | "X"))
    })
}

/// `stop` and `reload` of `path` both refuse with "not signalling anyone"
/// (and whatever `more` each message must say).
fn assert_signals_nobody(path: &Path, more: &[&str]) {
    let stopped = lifecycle::stop(path, Duration::from_millis(300), &me());
    let reloaded = lifecycle::reload(path, &me());
    for (what, msg) in [
        ("stop", stopped.map(|_| ())),
        ("reload", reloaded.map(|_| ())),
    ] {
        let msg = msg.expect_err(what).to_string();
        assert!(msg.contains("not signalling anyone"), "{what}: {msg}");
        for m in more {
            assert!(msg.contains(m), "{what}: {m:?} missing from {msg}");
        }
    }
}

/// The pid file names the process that took the lock, but that process
/// handed the lock to a child and became another program, without the
/// file: /proc/locks still names it as the holder.
#[test]
fn stop_and_reload_spare_the_locker_once_a_child_holds_its_lock() {
    let dir = tempfile::tempdir().unwrap();
    let path = pid_path(&dir);
    let (mut locker, keeper) = locker_with_keeper(&path, "exec-idle");
    locker.wait_ready();
    assert_eq!(locker.line("idle "), format!("idle {}", locker.pid()));
    assert_eq!(file_pid(&path), locker.pid());

    assert_signals_nobody(
        &path,
        &[
            &format!("names pid {}", locker.pid()),
            "does not have it open",
        ],
    );
    assert!(
        locker.child.try_wait().unwrap().is_none(),
        "the locker, now another program, was signalled"
    );
    assert!(running(keeper.0), "the keeper was signalled");
}

/// A process holding the lock and the file, but that is not plusmoin: it
/// took the lock, then became another program keeping the descriptor.
#[test]
fn stop_and_reload_spare_a_lock_holder_that_is_not_plusmoin() {
    let dir = tempfile::tempdir().unwrap();
    let path = pid_path(&dir);
    let mut holder = spawn_helper(
        "lockfork",
        &[
            ("HELPER_LOCK_FILE", &path),
            ("HELPER_NAMES", Path::new("self")),
            ("HELPER_THEN", Path::new("exec-holding")),
        ],
    );
    holder.wait_ready();
    assert_eq!(holder.line("execd "), format!("execd {}", holder.pid()));

    assert_signals_nobody(
        &path,
        &[&format!("names pid {}", holder.pid()), "not plusmoin"],
    );
    assert!(
        holder.child.try_wait().unwrap().is_none(),
        "the holder, not plusmoin, was signalled"
    );
}

/// Someone's process for pid `pid` (a `sleep`), through
/// `/proc/sys/kernel/ns_last_pid`; `None` when this system does not let
/// us (not root).
fn victim_at(pid: i32) -> Option<Victim> {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string()).ok()?;
        let victim = Victim::start();
        if victim.pid() == pid {
            return Some(victim);
        }
        // Someone else forked in between, or the pid is still taken.
        drop(victim);
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("could not get pid {pid} for a victim within {WAIT:?}");
}

/// The tester's report: a process takes the lock and writes its own pid,
/// forks a child that keeps the lock, and exits. /proc/locks still names
/// the pid that took the lock, which the system later gives to another
/// process: `stop` must not kill that one. Nor is the child, named in the
/// file instead, signalled: it holds the lock but is not plusmoin.
#[test]
fn stop_and_reload_spare_whoever_gets_the_pid_of_a_locker_that_forked_and_exited() {
    if !nix::unistd::geteuid().is_root() {
        plusmoin_kit::skip("needs root to choose a pid (ns_last_pid)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = pid_path(&dir);
    let (mut locker, keeper) = locker_with_keeper(&path, "exit");
    locker.wait_ready();
    let locker_pid = locker.pid();
    assert!(locker.wait_exit().success());
    let Some(mut victim) = victim_at(locker_pid) else {
        plusmoin_kit::skip("cannot write /proc/sys/kernel/ns_last_pid");
        return;
    };
    assert_eq!(file_pid(&path), victim.pid());

    assert_signals_nobody(&path, &[&format!("names pid {}", victim.pid())]);
    victim.assert_alive();
    assert!(running(keeper.0), "the keeper was signalled");

    // The child, which holds the lock, named instead.
    std::fs::write(&path, format!("{}\n", keeper.0)).unwrap();
    assert_signals_nobody(&path, &[&format!("names pid {}", keeper.0)]);
    victim.assert_alive();
    assert!(running(keeper.0), "the keeper was signalled");
}

// ------------------------------------------------- the plusmoin binary --

/// A configuration in `dir` for the `plusmoin` binary, watching a port
/// nobody listens on, as the current user.
fn binary_config(dir: &Path) -> PathBuf {
    let user = nix::unistd::User::from_uid(nix::unistd::geteuid())
        .unwrap()
        .unwrap()
        .name;
    let d = dir.display();
    let cfg = dir.join("plusmoin.json");
    std::fs::write(
        &cfg,
        format!(
            r#"{{"dbname": "d", "user": "u", "password": "p", "daemon_user": "{user}",
                "heartbeat": 0.5, "connect_timeout": 1, "log_level": "info",
                "pid_file": "{d}/plusmoin.pid", "log_file": "{d}/plusmoin.log",
                "status_file": "{d}/status.json",
                "nodes": [{{"host": "127.0.0.1", "port": 1}}]}}"#
        ),
    )
    .unwrap();
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o600)).unwrap();
    cfg
}

fn plusmoin_bin(cfg: &Path, command: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_plusmoin"))
        .arg("-c")
        .arg(cfg)
        .arg(command)
        .stdin(Stdio::null())
        .output()
        .expect("run plusmoin")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A real `plusmoin start` daemon is still reloaded and stopped by
/// `plusmoin reload` and `plusmoin stop`: it holds its pid file and runs
/// the same executable.
#[test]
fn the_plusmoin_binary_reloads_and_stops_its_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = binary_config(dir.path());
    let o = plusmoin_bin(&cfg, "start");
    assert!(o.status.success(), "start: {}", text(&o.stderr));
    let path = dir.path().join("plusmoin.pid");
    let pid = file_pid(&path);
    let _daemon = KillOnDrop(pid);
    assert!(running(pid));

    // `reload` waits for the daemon to confirm, in its status file.
    let o = plusmoin_bin(&cfg, "reload");
    assert!(o.status.success(), "reload: {}", text(&o.stderr));
    assert!(
        text(&o.stdout).contains(&format!(
            "plusmoin (pid {pid}) reloaded {} (reload #1)",
            cfg.display()
        )),
        "{}",
        text(&o.stdout)
    );
    let status: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("status.json")).unwrap()).unwrap();
    assert_eq!(status["reload"]["generation"], 1, "{status:#}");
    assert_eq!(status["reload"]["ok"], true, "{status:#}");
    let log = dir.path().join("plusmoin.log");
    wait_until("the daemon logs the reload", || {
        std::fs::read_to_string(&log)
            .ok()
            .filter(|l| l.contains("configuration reloaded"))
    });

    let o = plusmoin_bin(&cfg, "stop");
    assert!(o.status.success(), "stop: {}", text(&o.stderr));
    assert!(
        text(&o.stdout).contains(&format!("plusmoin (pid {pid}) stopped")),
        "{}",
        text(&o.stdout)
    );
    // stop returns once the pid file's lock is released, which the daemon
    // does a moment before its process ends: wait for that end.
    wait_until("the daemon exits after stop", || {
        (!running(pid)).then_some(())
    });
    assert!(
        std::fs::read_to_string(&log)
            .unwrap()
            .contains("plusmoin stopped"),
        "a clean exit, by SIGTERM"
    );
}

/// `plusmoin stop` and `plusmoin reload` on a pid file a locker left to a
/// child, naming its own pid now run by another program: a clear error,
/// no signal.
#[test]
fn the_plusmoin_binary_signals_nobody_for_a_locker_that_forked() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = binary_config(dir.path());
    let path = dir.path().join("plusmoin.pid");
    let (mut locker, keeper) = locker_with_keeper(&path, "exec-idle");
    locker.wait_ready();
    locker.line("idle ");
    for command in ["stop", "reload"] {
        let o = plusmoin_bin(&cfg, command);
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{command}: {err}");
        assert!(err.contains("not signalling anyone"), "{command}: {err}");
        assert!(
            err.contains(&format!("names pid {}", locker.pid())),
            "{command}: {err}"
        );
    }
    assert!(
        locker.child.try_wait().unwrap().is_none(),
        "the locker, now another program, was signalled"
    );
    assert!(running(keeper.0), "the keeper was signalled");
}

/// Someone who cannot look into the daemon (another user, not root) is
/// told so, and signals nothing, rather than trusting the pid.
#[test]
fn a_user_who_cannot_check_the_process_signals_nobody_and_says_so() {
    if !nix::unistd::geteuid().is_root() {
        plusmoin_kit::skip("needs root to run as another user");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = pid_path(&dir);
    let mut holder = spawn_helper("hold", &[("HELPER_PID_FILE", &path)]);
    holder.wait_ready();
    let mut other = spawn_helper(
        "stopas",
        &[
            ("HELPER_PID_FILE", &path),
            ("HELPER_USER", Path::new("nobody")),
        ],
    );
    for what in ["stop says ", "reload says "] {
        let msg = other.line(what);
        assert!(msg.contains("not signalling anyone"), "{msg}");
        assert!(msg.contains("cannot be checked"), "{msg}");
        assert!(msg.contains("run this as root"), "{msg}");
    }
    assert!(other.wait_exit().success());
    assert!(
        holder.child.try_wait().unwrap().is_none(),
        "the daemon was signalled"
    );
    assert_eq!(
        lifecycle::stop(&path, Duration::from_secs(20), &me()).unwrap(),
        Some(holder.pid()),
        "root can"
    );
}
