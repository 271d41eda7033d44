//! The daemon's process plumbing (README "Configuration"), kept apart from the beat loop in
//! [`crate::daemon`] so each piece can be tested with real processes: the
//! locked pid file, detaching into the background, dropping root, `stop`
//! and `reload` as seen from the command line, logging set-up, and the
//! warning about configuration files others can read.
//!
//! The pid file is guarded by an exclusive `flock` held on an open
//! descriptor for the whole life of the daemon. The kernel releases it
//! whatever way the process ends, so "is the lock held?" — not "does the
//! file exist?" or "is that pid alive?" — is what tells a running daemon
//! from a stale file left by a crash or a `kill -9`, and a recycled pid can
//! never be mistaken for plusmoin.
//!
//! The order `start` is meant to follow, each step needing the one before:
//! [`daemonize`] (single-threaded, so before the tokio runtime) →
//! [`PidFile::acquire`] and [`init_logging`] (as root: their directories are
//! usually root's; the open descriptors outlive the switch) →
//! [`drop_privileges`] → [`Detached::ready`] → build the runtime. Any error
//! on the way goes to [`Detached::fail`] so `start` prints it.

use std::fs::{File, OpenOptions};
use std::io::{self, IsTerminal, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg, OFlag};
use nix::sys::signal::{kill, Signal};
use nix::sys::stat::{umask, Mode};
use nix::unistd::{self, ForkResult, Pid, User};
use tracing::{debug, info, warn};

use crate::config::LogLevel;

#[derive(thiserror::Error, Debug)]
pub enum LifecycleError {
    #[error("plusmoin is already running ({}, {})", .pid.map_or_else(|| "pid unknown".to_string(), |p| format!("pid {p}")), .path.display())]
    AlreadyRunning { pid: Option<i32>, path: PathBuf },
    #[error("pid file directory {} does not exist: create it, writable by the daemon user", .dir.display())]
    PidDirMissing { dir: PathBuf },
    #[error("cannot open pid file {}: {source}", .path.display())]
    PidFileOpen { path: PathBuf, source: io::Error },
    #[error("cannot lock pid file {}: {source}", .path.display())]
    PidFileLock { path: PathBuf, source: Errno },
    #[error("cannot write pid file {}: {source}", .path.display())]
    PidFileWrite { path: PathBuf, source: io::Error },
    #[error("cannot read pid file {}: {source}", .path.display())]
    PidFileRead { path: PathBuf, source: io::Error },
    #[error("pid file {} is locked but holds no valid pid ({content:?})", .path.display())]
    PidFileInvalid { path: PathBuf, content: String },
    #[error("plusmoin is not running (no live daemon holds {})", .path.display())]
    NotRunning { path: PathBuf },
    #[error("cannot send {signal} to plusmoin (pid {pid}): {source}")]
    Signal {
        pid: i32,
        signal: Signal,
        source: Errno,
    },
    #[error("plusmoin (pid {pid}) still exists {waited:?} after SIGKILL")]
    DidNotExit { pid: i32, waited: Duration },
    #[error("cannot detach into the background: {step}: {source}")]
    Daemonize { step: &'static str, source: Errno },
    #[error("cannot look up user {user:?}: {source}")]
    UserLookup { user: String, source: Errno },
    #[error("unknown daemon_user {user:?}: no such user on this system")]
    UnknownUser { user: String },
    #[error("cannot switch to user {user:?}: {step}: {source}")]
    DropPrivileges {
        user: String,
        step: &'static str,
        source: Errno,
    },
    #[error("cannot open log file {}: {source}", .path.display())]
    LogFile { path: PathBuf, source: io::Error },
    #[error("cannot set up logging: {0}")]
    Logging(String),
    #[error("cannot raise the open files limit: {0}")]
    NoFileLimit(#[source] Errno),
}

/// Raises the soft limit on open files to the hard limit and returns the
/// limit now in force. plusmoin keeps one connection per node open across
/// beats, and the usual soft limit (1024) would cap it near a thousand
/// nodes, where the hard limit is usually far higher.
pub fn raise_nofile_limit() -> Result<u64, LifecycleError> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(LifecycleError::NoFileLimit)?;
    if soft >= hard {
        return Ok(soft);
    }
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).map_err(LifecycleError::NoFileLimit)?;
    Ok(hard)
}

/// How long a would-be daemon keeps trying a held lock before calling it
/// "already running": [`running_pid`] takes the lock for an instant to probe
/// it, and a `start` racing a `status` must not fail for that.
const LOCK_RETRY_FOR: Duration = Duration::from_millis(150);
const POLL_EVERY: Duration = Duration::from_millis(20);
/// After SIGKILL only the kernel is left to act; this bounds a wait for a
/// process stuck in uninterruptible sleep.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// The daemon's claim to be the one running plusmoin: the lock lives as long
/// as this value (and dies with the process however it ends); dropping it
/// removes the file so a clean exit leaves nothing behind.
#[derive(Debug)]
pub struct PidFile {
    path: PathBuf,
    file: Flock<File>,
}

impl PidFile {
    /// The directory is not created: it usually needs an owner and mode only
    /// the operator knows (writable by `daemon_user`), as the original
    /// plusmoin expected.
    pub fn acquire(path: &Path) -> Result<PidFile, LifecycleError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.is_dir() {
                return Err(LifecycleError::PidDirMissing {
                    dir: dir.to_path_buf(),
                });
            }
        }
        let deadline = Instant::now() + LOCK_RETRY_FOR;
        loop {
            let file = open_pid_file(path)?;
            let had_content = file.metadata().map(|m| m.len() > 0).unwrap_or(false);
            let locked = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(locked) => locked,
                Err((_, Errno::EWOULDBLOCK)) => {
                    if Instant::now() < deadline {
                        thread::sleep(POLL_EVERY);
                        continue;
                    }
                    let pid = read_pid(path);
                    return Err(LifecycleError::AlreadyRunning {
                        pid,
                        path: path.to_path_buf(),
                    });
                }
                Err((_, source)) => {
                    return Err(LifecycleError::PidFileLock {
                        path: path.to_path_buf(),
                        source,
                    })
                }
            };
            // A daemon exiting unlinks its file while still holding the
            // lock; whoever opened the old inode just before gets that lock
            // once released, on a file nobody can see. Retry on the new one.
            if !same_inode(path, &locked) {
                debug!(path = %path.display(), "pid file replaced while locking it; retrying");
                continue;
            }
            if had_content {
                info!(
                    path = %path.display(),
                    old_pid = ?read_content(&locked).ok().as_deref().and_then(parse_pid),
                    "taking over a stale pid file (the process that wrote it is gone)"
                );
            }
            let mut pid_file = PidFile {
                path: path.to_path_buf(),
                file: locked,
            };
            pid_file.write_pid()?;
            return Ok(pid_file);
        }
    }

    /// Needed after [`daemonize`] or any fork that keeps the descriptor: the
    /// lock survives, but the pid it should advertise changed.
    pub fn write_pid(&mut self) -> Result<(), LifecycleError> {
        let content = format!("{}\n", std::process::id());
        let wrap = |source| LifecycleError::PidFileWrite {
            path: self.path.clone(),
            source,
        };
        self.file.set_len(0).map_err(wrap)?;
        self.file
            .write_all_at(content.as_bytes(), 0)
            .map_err(wrap)?;
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        // Only our own inode: another daemon may have replaced the file.
        if same_inode(&self.path, &self.file) {
            if let Err(e) = std::fs::remove_file(&self.path) {
                // Common after dropping privileges when the directory
                // belongs to root; harmless, the lock goes with us.
                warn!(path = %self.path.display(), error = %e, "cannot remove pid file");
            }
        }
    }
}

fn open_pid_file(path: &Path) -> Result<File, LifecycleError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .open(path)
        .map_err(|source| LifecycleError::PidFileOpen {
            path: path.to_path_buf(),
            source,
        })
}

fn same_inode(path: &Path, file: &File) -> bool {
    match (std::fs::metadata(path), file.metadata()) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

fn read_pid(path: &Path) -> Option<i32> {
    let file = File::open(path).ok()?;
    parse_pid(&read_content(&file).ok()?)
}

/// From offset 0 whatever the cursor: a pid file is a few bytes.
fn read_content(file: &File) -> io::Result<String> {
    let mut buf = [0u8; 64];
    let n = file.read_at(&mut buf, 0)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

fn parse_pid(content: &str) -> Option<i32> {
    content.trim().parse::<i32>().ok().filter(|p| *p > 0)
}

/// Looks at the lock, not at the pid: a stale file may name a pid the
/// system has since given to an unrelated process.
pub fn running_pid(path: &Path) -> Result<Option<i32>, LifecycleError> {
    let deadline = Instant::now() + LOCK_RETRY_FOR;
    loop {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(LifecycleError::PidFileRead {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        match Flock::lock(file, FlockArg::LockSharedNonblock) {
            // We got it, so nobody holds it: stale (dropping releases it).
            Ok(_stale) => return Ok(None),
            Err((file, Errno::EWOULDBLOCK)) => {
                let content =
                    read_content(&file).map_err(|source| LifecycleError::PidFileRead {
                        path: path.to_path_buf(),
                        source,
                    })?;
                match parse_pid(&content) {
                    Some(pid) => return Ok(Some(pid)),
                    // A daemon between truncating and writing its pid.
                    None if Instant::now() < deadline => thread::sleep(POLL_EVERY),
                    None => {
                        return Err(LifecycleError::PidFileInvalid {
                            path: path.to_path_buf(),
                            content,
                        })
                    }
                }
            }
            Err((_, source)) => {
                return Err(LifecycleError::PidFileLock {
                    path: path.to_path_buf(),
                    source,
                })
            }
        }
    }
}

/// The detached daemon's line back to the `plusmoin start` that launched
/// it, so startup errors (already running, bad pid directory, unknown user)
/// reach the operator's terminal and exit status instead of only the log.
#[derive(Debug)]
pub struct Detached {
    pipe: Option<File>,
}

impl Detached {
    /// The waiting `start` exits 0.
    pub fn ready(mut self) {
        self.send(b"\0");
    }

    /// The waiting `start` prints `plusmoin: {message}` on stderr and exits 1.
    pub fn fail(mut self, message: &str) {
        let mut bytes = Vec::with_capacity(message.len() + 1);
        bytes.push(b'E');
        bytes.extend_from_slice(message.as_bytes());
        self.send(&bytes);
    }

    fn send(&mut self, bytes: &[u8]) {
        if let Some(mut pipe) = self.pipe.take() {
            // The launcher may already be gone (killed): nothing to tell.
            let _ = pipe.write_all(bytes);
        }
    }
}

/// Detaches from the terminal and session. Call it before the tokio runtime
/// (or any other thread) exists: only the calling thread survives a fork.
///
/// Returns only in the daemon (the grandchild). The original process waits
/// for [`Detached::ready`] or [`Detached::fail`] (or the daemon dying, seen
/// as the pipe closing without a word) and then exits 0 or 1 itself, so
/// `plusmoin start` reports startup failures with a non-zero status.
pub fn daemonize() -> Result<Detached, LifecycleError> {
    let step = |step: &'static str| move |source| LifecycleError::Daemonize { step, source };
    // Close-on-exec: trigger scripts must not inherit the write end, or the
    // launcher would wait for them too.
    let (read_end, write_end) = unistd::pipe2(OFlag::O_CLOEXEC).map_err(step("pipe"))?;
    // SAFETY: the caller guarantees no other thread exists (documented), so
    // the child cannot inherit a lock held by a thread that vanished.
    match unsafe { unistd::fork() }.map_err(step("fork"))? {
        ForkResult::Parent { child } => {
            drop(write_end);
            let outcome = wait_for_daemon(read_end);
            // Reap the intermediate child (it exits at once).
            let _ = nix::sys::wait::waitpid(child, None);
            match outcome {
                Ok(()) => std::process::exit(0),
                Err(message) => {
                    eprintln!("plusmoin: {message}");
                    std::process::exit(1)
                }
            }
        }
        ForkResult::Child => {}
    }
    drop(read_end);
    let mut detached = Detached {
        pipe: Some(File::from(write_end)),
    };
    // From here on, errors go up the pipe and the process ends with _exit:
    // the parent's stdio buffers and atexit handlers are not ours to run.
    if let Err(e) = unistd::setsid() {
        detached.fail(&format!("cannot detach into the background: setsid: {e}"));
        child_exit(1);
    }
    // The second fork leaves a process that is not a session leader, so it
    // can never acquire a controlling terminal again.
    // SAFETY: still a single thread, as above.
    match unsafe { unistd::fork() } {
        Err(e) => {
            detached.fail(&format!("cannot detach into the background: fork: {e}"));
            child_exit(1);
        }
        Ok(ForkResult::Parent { .. }) => {
            // Dropping our copy of the write end without a word.
            drop(detached.pipe.take());
            child_exit(0);
        }
        Ok(ForkResult::Child) => {}
    }
    if let Err(e) = finish_detaching() {
        detached.fail(&e.to_string());
        child_exit(1);
    }
    Ok(detached)
}

fn child_exit(code: i32) -> ! {
    // SAFETY: _exit only ends the process.
    unsafe { nix::libc::_exit(code) }
}

fn finish_detaching() -> Result<(), LifecycleError> {
    let step = |step: &'static str| move |source| LifecycleError::Daemonize { step, source };
    // Do not keep a mount point busy.
    unistd::chdir("/").map_err(step("chdir /"))?;
    umask(Mode::from_bits_truncate(0o027));
    let null = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|e| LifecycleError::Daemonize {
            step: "open /dev/null",
            source: Errno::from_raw(e.raw_os_error().unwrap_or(0)),
        })?;
    for fd in 0..=2 {
        unistd::dup2(null.as_raw_fd(), fd).map_err(step("redirect stdio to /dev/null"))?;
    }
    Ok(())
}

fn wait_for_daemon(read_end: OwnedFd) -> Result<(), String> {
    let mut pipe = File::from(read_end);
    let mut message = Vec::new();
    if let Err(e) = pipe.read_to_end(&mut message) {
        return Err(format!("lost contact with the starting daemon: {e}"));
    }
    match message.split_first() {
        Some((0, _)) => Ok(()),
        Some((b'E', text)) => Err(String::from_utf8_lossy(text).into_owned()),
        _ => Err("the daemon exited during startup (see its log file)".to_string()),
    }
}

/// Done after the pid file and log file are open (as root, in directories
/// root owns) so the daemon keeps those descriptors but nothing else of
/// root's.
pub fn drop_privileges(user: &str) -> Result<(), LifecycleError> {
    if !unistd::geteuid().is_root() {
        let current = User::from_uid(unistd::geteuid())
            .ok()
            .flatten()
            .map_or_else(|| unistd::geteuid().to_string(), |u| u.name);
        info!(
            daemon_user = user,
            current_user = %current,
            "not started as root: staying as the current user"
        );
        return Ok(());
    }
    let entry = User::from_name(user)
        .map_err(|source| LifecycleError::UserLookup {
            user: user.to_string(),
            source,
        })?
        .ok_or_else(|| LifecycleError::UnknownUser {
            user: user.to_string(),
        })?;
    let fail = |step: &'static str| {
        move |source| LifecycleError::DropPrivileges {
            user: user.to_string(),
            step,
            source,
        }
    };
    let name = std::ffi::CString::new(user).map_err(|_| LifecycleError::UnknownUser {
        user: user.to_string(),
    })?;
    // Groups first: once the uid is gone, we may no longer change them.
    unistd::initgroups(&name, entry.gid).map_err(fail("initgroups"))?;
    unistd::setgid(entry.gid).map_err(fail("setgid"))?;
    unistd::setuid(entry.uid).map_err(fail("setuid"))?;
    info!(daemon_user = user, uid = %entry.uid, gid = %entry.gid, "dropped root privileges");
    Ok(())
}

/// `plusmoin stop`: `Ok(None)` when nothing was running (the caller words
/// the message), `Ok(Some(pid))` once that process is gone.
pub fn stop(pid_file: &Path, grace: Duration) -> Result<Option<i32>, LifecycleError> {
    let Some(pid) = running_pid(pid_file)? else {
        return Ok(None);
    };
    if !send(pid, Signal::SIGTERM)? {
        return Ok(Some(pid));
    }
    if wait_gone(pid, grace) {
        return Ok(Some(pid));
    }
    warn!(
        pid,
        ?grace,
        "plusmoin did not exit after SIGTERM; sending SIGKILL"
    );
    if !send(pid, Signal::SIGKILL)? {
        return Ok(Some(pid));
    }
    if wait_gone(pid, KILL_WAIT) {
        Ok(Some(pid))
    } else {
        Err(LifecycleError::DidNotExit {
            pid,
            waited: KILL_WAIT,
        })
    }
}

/// `plusmoin reload`: the daemon reads its configuration again between beats.
pub fn reload(pid_file: &Path) -> Result<i32, LifecycleError> {
    let pid = running_pid(pid_file)?.ok_or_else(|| LifecycleError::NotRunning {
        path: pid_file.to_path_buf(),
    })?;
    if !send(pid, Signal::SIGHUP)? {
        return Err(LifecycleError::NotRunning {
            path: pid_file.to_path_buf(),
        });
    }
    Ok(pid)
}

/// `Ok(false)` when the process was already gone.
fn send(pid: i32, signal: Signal) -> Result<bool, LifecycleError> {
    match kill(Pid::from_raw(pid), signal) {
        Ok(()) => Ok(true),
        Err(Errno::ESRCH) => Ok(false),
        Err(source) => Err(LifecycleError::Signal {
            pid,
            signal,
            source,
        }),
    }
}

fn wait_gone(pid: i32, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if process_gone(pid) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(POLL_EVERY);
    }
}

/// A zombie counts as gone: it has run its course, and its parent (init,
/// or the caller in tests) may be slow to reap it.
fn process_gone(pid: i32) -> bool {
    if let Err(Errno::ESRCH) = kill(Pid::from_raw(pid), None) {
        return true;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => matches!(proc_state(&stat), Some('Z' | 'X')),
        Err(e) => e.kind() == io::ErrorKind::NotFound,
    }
}

/// The state letter of a `/proc/PID/stat` line; the command name before it
/// is in parentheses and may itself contain spaces and parentheses.
fn proc_state(stat: &str) -> Option<char> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().next()?.chars().next()
}

/// The level applies to plusmoin's own events; other crates (tokio-postgres
/// notices, …) log only warnings and errors, or only errors at `error`.
/// Timestamps are UTC, RFC 3339. Without a file, logs go to stdout (`-x`).
pub fn init_logging(level: LogLevel, file: Option<&Path>) -> Result<(), LifecycleError> {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::fmt::writer::BoxMakeWriter;
    use tracing_subscriber::prelude::*;

    let (ours, others) = match level {
        LogLevel::Error => (LevelFilter::ERROR, LevelFilter::ERROR),
        LogLevel::Info => (LevelFilter::INFO, LevelFilter::WARN),
        LogLevel::Debug => (LevelFilter::DEBUG, LevelFilter::WARN),
    };
    let filter = Targets::new()
        .with_default(others)
        .with_target(env!("CARGO_CRATE_NAME"), ours);
    let (writer, ansi) = match file {
        None => (BoxMakeWriter::new(io::stdout), io::stdout().is_terminal()),
        Some(path) => {
            let log = OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o640)
                .open(path)
                .map_err(|source| LifecycleError::LogFile {
                    path: path.to_path_buf(),
                    source,
                })?;
            (BoxMakeWriter::new(Mutex::new(log)), false)
        }
    };
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(ansi)
        .with_target(level == LogLevel::Debug);
    tracing_subscriber::registry()
        .with(layer.with_filter(filter))
        .try_init()
        .map_err(|e| LifecycleError::Logging(e.to_string()))
}

/// For the configuration and any password file: readable by group or others
/// means the database password is too. `None` when private or unreadable
/// (reading it will report that).
pub fn world_readable_warning(path: &Path) -> Option<String> {
    let mode = std::fs::metadata(path).ok()?.mode() & 0o777;
    (mode & 0o044 != 0).then(|| {
        format!(
            "{} is readable by group or others (mode {mode:04o}) and may hold a password: chmod 600 it",
            path.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_state_survives_odd_command_names() {
        assert_eq!(proc_state("12 (a) b) (c) S 1 12 12"), Some('S'));
        assert_eq!(proc_state("12 (sh) Z 1 12 12"), Some('Z'));
        assert_eq!(proc_state("garbage"), None);
    }

    #[test]
    fn parse_pid_rejects_junk() {
        assert_eq!(parse_pid("123\n"), Some(123));
        assert_eq!(parse_pid(""), None);
        assert_eq!(parse_pid("0"), None);
        assert_eq!(parse_pid("-5"), None);
        assert_eq!(parse_pid("12ab"), None);
    }

    #[test]
    fn already_running_message_names_pid_and_file() {
        let e = LifecycleError::AlreadyRunning {
            pid: Some(42),
            path: "/run/p.pid".into(),
        };
        assert_eq!(
            e.to_string(),
            "plusmoin is already running (pid 42, /run/p.pid)"
        );
    }

    #[test]
    fn open_files_limit_is_raised_to_the_hard_limit() {
        use nix::sys::resource::{getrlimit, setrlimit, Resource};
        let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        // Lower the soft limit first so there is something to raise.
        setrlimit(Resource::RLIMIT_NOFILE, hard.min(512), hard).unwrap();
        assert_eq!(raise_nofile_limit().unwrap(), hard);
        assert_eq!(getrlimit(Resource::RLIMIT_NOFILE).unwrap(), (hard, hard));
        // Already there: nothing to do, same answer.
        assert_eq!(raise_nofile_limit().unwrap(), hard);
    }
}
