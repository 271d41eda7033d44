//! The process a pid file names, checked before `stop` or `reload` signals
//! it and pinned so that the signal reaches that very process.
//!
//! A pid number says little: `/proc/locks` names the process that *took* a
//! lock, which may have handed it to a child and exited or become another
//! program, and its pid may since have gone to anyone. So the process must
//! be the daemon by what it is now: it still holds the pid file open, and it
//! runs the plusmoin executable. It is held by a pidfd from before these
//! checks until the signal, so that no other process can take its pid in
//! between.

use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::libc;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Why the process a pid file names is not the daemon that wrote it: the
/// caller then signals nobody.
#[derive(Debug)]
pub enum NotDaemon {
    /// No such process (any more).
    Gone,
    /// `/proc/locks` does not name it among the lock's holders (these).
    NotLockHolder(Vec<i32>),
    /// It does not have the pid file open: whatever took the lock under
    /// that pid has become another program or exited.
    FileNotOpen,
    /// It runs this executable, not plusmoin's (this one).
    OtherProgram { theirs: String, ours: String },
    /// What would tell could not be read (another user's process, seen by
    /// someone other than root).
    Unverifiable { what: String, source: io::Error },
}

impl fmt::Display for NotDaemon {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotDaemon::Gone => f.write_str("no such process"),
            NotDaemon::NotLockHolder(holders) => match holders.as_slice() {
                [] => f.write_str("no process this user can see holds its lock"),
                _ => write!(
                    f,
                    "its lock is held by pid {}",
                    holders
                        .iter()
                        .map(|p| p.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            },
            NotDaemon::FileNotOpen => {
                f.write_str("that process does not have it open (it is not the daemon)")
            }
            NotDaemon::OtherProgram { theirs, ours } => {
                write!(f, "that process runs {theirs}, not plusmoin ({ours})")
            }
            NotDaemon::Unverifiable { what, source } => write!(
                f,
                "whether that process is plusmoin cannot be checked ({what}: {source}; run this as root or as the daemon's user)"
            ),
        }
    }
}

/// A process held by a pidfd: a signal sent through it reaches that
/// process or, once it has exited, nobody; never a process given its pid
/// later. Without pidfds (Linux before 5.3) it falls back to the pid.
#[derive(Debug)]
pub(super) struct Pinned {
    pid: i32,
    fd: Option<OwnedFd>,
}

impl Pinned {
    /// `Ok(None)` when no process has that pid.
    pub(crate) fn open(pid: i32) -> Result<Option<Pinned>, Errno> {
        // SAFETY: pidfd_open takes a pid and flags (none) and returns a new
        // descriptor, or -1 with errno set.
        let rc = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        match Errno::result(rc) {
            // SAFETY: a descriptor just returned to us, owned by no one else.
            Ok(fd) => Ok(Some(Pinned {
                pid,
                fd: Some(unsafe { OwnedFd::from_raw_fd(fd as i32) }),
            })),
            Err(Errno::ESRCH) => Ok(None),
            Err(Errno::ENOSYS) => match kill(Pid::from_raw(pid), None) {
                Err(Errno::ESRCH) => Ok(None),
                _ => Ok(Some(Pinned { pid, fd: None })),
            },
            Err(e) => Err(e),
        }
    }

    pub(crate) fn pid(&self) -> i32 {
        self.pid
    }

    /// `Ok(false)` when the process has exited.
    pub(crate) fn signal(&self, signal: Signal) -> Result<bool, Errno> {
        self.send(signal as libc::c_int)
    }

    /// Whether the process has not exited yet (a zombie still counts: its
    /// pid is not free). Once false, never true again.
    pub(crate) fn exists(&self) -> bool {
        !matches!(self.send(0), Ok(false))
    }

    fn send(&self, signal: libc::c_int) -> Result<bool, Errno> {
        let rc = match &self.fd {
            // SAFETY: a pidfd we own, a signal number, no siginfo, no flags.
            Some(fd) => unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    fd.as_raw_fd(),
                    signal,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                )
            },
            // SAFETY: kill takes a pid and a signal number.
            None => unsafe { libc::kill(self.pid, signal) }.into(),
        };
        match Errno::result(rc) {
            Ok(_) => Ok(true),
            Err(Errno::ESRCH) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// Whether `process` is the plusmoin daemon holding `file`, the pid file
/// it names (opened by the caller), locked by someone: `/proc/locks` names
/// it as the lock's taker, it has the file open, and it runs the
/// executable running now. Checked after pinning it, and found still there
/// after: what `/proc/PID` said was about that process.
pub(super) fn check_daemon(process: &Pinned, file: &File) -> Result<(), NotDaemon> {
    let pid = process.pid();
    let holders = super::pidfile::lock_holders(file);
    if !holders.contains(&pid) {
        return Err(NotDaemon::NotLockHolder(holders));
    }
    has_open(pid, file)?;
    same_program(pid, Path::new("/proc/self/exe"))?;
    if !process.exists() {
        return Err(NotDaemon::Gone);
    }
    Ok(())
}

/// Whether process `pid` has a descriptor on `file`'s inode.
fn has_open(pid: i32, file: &File) -> Result<(), NotDaemon> {
    let dir = format!("/proc/{pid}/fd");
    let unverifiable = |source: io::Error| NotDaemon::Unverifiable {
        what: dir.clone(),
        source,
    };
    let meta = file.metadata().map_err(unverifiable)?;
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(NotDaemon::Gone),
        Err(e) => return Err(unverifiable(e)),
    };
    let mut denied = None;
    for entry in entries.flatten() {
        // stat follows the link to the open file, wherever it lives now.
        match std::fs::metadata(entry.path()) {
            Ok(m) if m.dev() == meta.dev() && m.ino() == meta.ino() => return Ok(()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => denied = Some(e),
            // Closed meanwhile.
            Err(_) => {}
        }
    }
    match denied {
        Some(e) => Err(unverifiable(e)),
        None => Err(NotDaemon::FileNotOpen),
    }
}

/// Whether process `pid` runs the executable `ours` links to: the same
/// file, or (the daemon's binary replaced by an upgrade since it started)
/// one that was at the same path.
fn same_program(pid: i32, ours: &Path) -> Result<(), NotDaemon> {
    let link = PathBuf::from(format!("/proc/{pid}/exe"));
    let unverifiable = |what: &Path, source: io::Error| NotDaemon::Unverifiable {
        what: what.display().to_string(),
        source,
    };
    let our_meta = std::fs::metadata(ours).map_err(|e| unverifiable(ours, e))?;
    match std::fs::metadata(&link) {
        Ok(m) if m.dev() == our_meta.dev() && m.ino() == our_meta.ino() => return Ok(()),
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(NotDaemon::Gone),
        Err(e) => return Err(unverifiable(&link, e)),
    }
    let theirs = std::fs::read_link(&link).map_err(|e| unverifiable(&link, e))?;
    let our_path = std::fs::read_link(ours).map_err(|e| unverifiable(ours, e))?;
    // Where a process's executable was unlinked, the kernel says so.
    let path = |p: &Path| {
        let s = p.to_string_lossy();
        s.strip_suffix(" (deleted)").unwrap_or(&s).to_string()
    };
    if path(&theirs) == path(&our_path) {
        return Ok(());
    }
    // Any process's name, chosen by whoever started it: shown inert.
    Err(NotDaemon::OtherProgram {
        theirs: crate::text::escape_controls(&theirs.to_string_lossy()),
        ours: crate::text::escape_controls(&our_path.to_string_lossy()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    struct Child(std::process::Child);
    impl Drop for Child {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn sleep() -> Child {
        Child(
            Command::new("sleep")
                .arg("600")
                .stdin(Stdio::null())
                .spawn()
                .unwrap(),
        )
    }

    #[test]
    fn a_pinned_process_that_exited_gets_no_signal() {
        let mut child = sleep();
        let pid = child.0.id() as i32;
        let pinned = Pinned::open(pid).unwrap().expect("running");
        assert!(pinned.exists());
        child.0.kill().unwrap();
        child.0.wait().unwrap();
        assert!(!pinned.exists());
        assert_eq!(pinned.signal(Signal::SIGTERM), Ok(false));
        assert!(Pinned::open(pid).unwrap().is_none());
    }

    #[test]
    fn a_pinned_process_is_signalled() {
        let mut child = sleep();
        let pinned = Pinned::open(child.0.id() as i32).unwrap().unwrap();
        assert_eq!(pinned.signal(Signal::SIGTERM), Ok(true));
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            child.0.wait().unwrap().signal(),
            Some(Signal::SIGTERM as i32)
        );
    }

    #[test]
    fn the_file_must_be_open_in_that_process() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, "").unwrap();
        let file = File::open(&path).unwrap();
        let me = std::process::id() as i32;
        assert!(has_open(me, &file).is_ok());
        let child = sleep();
        assert!(matches!(
            has_open(child.0.id() as i32, &file),
            Err(NotDaemon::FileNotOpen)
        ));
    }

    /// The pinned process exits and its pid goes to another process (through
    /// `/proc/sys/kernel/ns_last_pid`, root only): a signal through the pin
    /// reaches nobody.
    #[test]
    fn a_pid_given_to_another_process_is_not_signalled_through_the_pin() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("needs root to choose a pid (ns_last_pid): skipped");
            return;
        }
        let mut first = sleep();
        let pid = first.0.id() as i32;
        let pinned = Pinned::open(pid).unwrap().unwrap();
        first.0.kill().unwrap();
        first.0.wait().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut second = loop {
            assert!(std::time::Instant::now() < deadline, "pid {pid} not reused");
            if std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string()).is_err() {
                eprintln!("cannot write /proc/sys/kernel/ns_last_pid: skipped");
                return;
            }
            let c = sleep();
            if c.0.id() as i32 == pid {
                break c;
            }
        };
        assert_eq!(pinned.signal(Signal::SIGTERM), Ok(false));
        assert!(!pinned.exists());
        assert!(
            second.0.try_wait().unwrap().is_none(),
            "the new process was signalled"
        );
    }

    /// `exe 600`, retried while another test's fork briefly holds the
    /// copy open for writing (ETXTBSY).
    fn run_copy(exe: &Path) -> Child {
        for _ in 0..50 {
            match Command::new(exe).arg("600").stdin(Stdio::null()).spawn() {
                Ok(c) => return Child(c),
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => {
                    std::thread::sleep(std::time::Duration::from_millis(20))
                }
                Err(e) => panic!("{}: {e}", exe.display()),
            }
        }
        panic!("{} stayed busy", exe.display());
    }

    #[test]
    fn another_program_is_not_plusmoin_even_by_name() {
        let me = std::process::id() as i32;
        let ours = Path::new("/proc/self/exe");
        assert!(same_program(me, ours).is_ok());
        let child = sleep();
        let e = same_program(child.0.id() as i32, ours).unwrap_err();
        assert!(e.to_string().contains("sleep, not plusmoin"), "{e}");
    }

    #[test]
    fn a_daemon_whose_binary_was_upgraded_is_still_plusmoin() {
        let dir = tempfile::tempdir().unwrap();
        let installed = dir.path().join("plusmoin");
        std::fs::copy("/bin/sleep", &installed).unwrap();
        let old = run_copy(&installed);
        let pid = old.0.id() as i32;
        // "ours": what /proc/self/exe would be for the new binary.
        let ours = dir.path().join("self-exe");
        std::os::unix::fs::symlink(&installed, &ours).unwrap();
        assert!(same_program(pid, &ours).is_ok(), "the same file");
        // Upgraded: a new file renamed over the old one.
        let new = dir.path().join("plusmoin.new");
        std::fs::copy("/bin/sleep", &new).unwrap();
        std::fs::rename(&new, &installed).unwrap();
        let theirs = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
        assert!(
            theirs.to_string_lossy().ends_with(" (deleted)"),
            "{theirs:?}"
        );
        assert!(same_program(pid, &ours).is_ok(), "the same path");
        // Elsewhere: another program.
        let other = dir.path().join("other");
        std::os::unix::fs::symlink("/bin/true", &other).unwrap();
        assert!(matches!(
            same_program(pid, &other),
            Err(NotDaemon::OtherProgram { .. })
        ));
    }

    #[test]
    fn an_executable_named_with_escapes_is_shown_inert() {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("x\u{1b}]0;pwned\u{7}");
        std::fs::copy("/bin/sleep", &exe).unwrap();
        let child = run_copy(&exe);
        let e = same_program(child.0.id() as i32, Path::new("/proc/self/exe"))
            .unwrap_err()
            .to_string();
        assert!(!e.chars().any(char::is_control), "{e:?}");
        assert!(e.contains("x\\u{1b}]0;pwned\\u{7}"), "{e}");
    }
}
