//! The locked pid file: who is running, and taking over a stale one.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use tracing::{debug, info, warn};

use super::process::{check_daemon, NotDaemon, Pinned};
use super::safefile::{self, Access, Owners};
use super::LifecycleError;

/// How long a would-be daemon keeps trying a held lock before calling it
/// "already running": [`running_pid`] takes the lock for an instant to probe
/// it, and a `start` racing a `status` must not fail for that.
const LOCK_RETRY_FOR: Duration = Duration::from_millis(150);
pub(super) const POLL_EVERY: Duration = Duration::from_millis(20);

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
    /// plusmoin expected. Since that user may plant anything there, the file
    /// is opened without following links and must be a regular file owned
    /// by one of `owners` (see [`safefile`]).
    pub fn acquire(path: &Path, owners: &Owners) -> Result<PidFile, LifecycleError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.is_dir() {
                return Err(LifecycleError::PidDirMissing {
                    dir: dir.to_path_buf(),
                });
            }
        }
        let deadline = Instant::now() + LOCK_RETRY_FOR;
        loop {
            let file = open_pid_file(path, owners)?;
            let had_content = file.metadata().map(|m| m.len() > 0).unwrap_or(false);
            let locked = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(locked) => locked,
                Err((_, Errno::EWOULDBLOCK)) => {
                    if Instant::now() < deadline {
                        thread::sleep(POLL_EVERY);
                        continue;
                    }
                    let pid = read_pid(path, owners);
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
                    old_pid = read_content(&locked).ok().as_deref().and_then(parse_pid),
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

    /// Needed after [`daemonize`](super::detach::daemonize) or any fork that keeps the descriptor: the
    /// lock survives, but the pid it should advertise changed.
    pub(crate) fn write_pid(&mut self) -> Result<(), LifecycleError> {
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

fn open_pid_file(path: &Path, owners: &Owners) -> Result<File, LifecycleError> {
    safefile::open_or_create(path, Access::ReadWrite, 0o644, owners).map_err(|source| {
        LifecycleError::PidFileOpen {
            path: path.to_path_buf(),
            source,
        }
    })
}

/// The path itself, never what a link there points to.
fn same_inode(path: &Path, file: &File) -> bool {
    match (std::fs::symlink_metadata(path), file.metadata()) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

fn read_pid(path: &Path, owners: &Owners) -> Option<i32> {
    let file = safefile::open(path, Access::Read, owners).ok()?;
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
/// system has since given to an unrelated process. The file is opened as
/// [`safefile`] does (a link or a FIFO there is an error, not followed or
/// waited on), and a locked file must name the daemon holding it (see
/// `check_daemon`): anyone able to write the directory could lock a file
/// of their own naming any pid, or take the lock, hand it to a child and
/// leave their pid to whoever gets it next.
pub fn running_pid(path: &Path, owners: &Owners) -> Result<Option<i32>, LifecycleError> {
    Ok(holder(path, owners)?.map(|h| h.process.pid()))
}

/// The daemon found holding the pid file, pinned (a signal reaches it or
/// nobody), and that file, open: its lock is released when the daemon
/// ends, whatever way.
pub(super) struct Holder {
    pub(crate) process: Pinned,
    pub(crate) file: File,
}

pub(super) fn holder(path: &Path, owners: &Owners) -> Result<Option<Holder>, LifecycleError> {
    let deadline = Instant::now() + LOCK_RETRY_FOR;
    loop {
        let file = match safefile::open(path, Access::Read, owners) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(LifecycleError::PidFileRead {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        if lock_is_free(&file).map_err(|source| LifecycleError::PidFileLock {
            path: path.to_path_buf(),
            source,
        })? {
            return Ok(None);
        }
        let content = read_content(&file).map_err(|source| LifecycleError::PidFileRead {
            path: path.to_path_buf(),
            source,
        })?;
        match parse_pid(&content) {
            Some(pid) => {
                let process =
                    Pinned::open(pid).map_err(|source| LifecycleError::Pidfd { pid, source })?;
                let checked = match process {
                    None => Err(NotDaemon::Gone),
                    Some(process) => check_daemon(&process, &file).map(|()| process),
                };
                let why = match checked {
                    Ok(process) => return Ok(Some(Holder { process, file })),
                    Err(why) => why,
                };
                // A daemon that just exited released its lock meanwhile.
                if lock_is_free(&file).unwrap_or(false) {
                    return Ok(None);
                }
                return Err(LifecycleError::NotTheDaemon {
                    path: path.to_path_buf(),
                    pid,
                    why,
                });
            }
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
}

/// Whether nobody holds an exclusive lock on `file`: a shared lock is taken
/// for an instant to find out.
pub(super) fn lock_is_free(file: &File) -> Result<bool, Errno> {
    let probe = file
        .try_clone()
        .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(0)))?;
    match Flock::lock(probe, FlockArg::LockSharedNonblock) {
        Ok(_released_on_drop) => Ok(true),
        Err((_, Errno::EWOULDBLOCK)) => Ok(false),
        Err((_, e)) => Err(e),
    }
}

/// The processes holding a `flock` on `file`, from `/proc/locks` (readable
/// by anyone, unlike another user's `/proc/PID/fd`). Asked because the lock
/// was found taken: a read that shows no holder (seen once on a loaded
/// machine) is tried again a few times over 100 ms before answering none.
pub(super) fn lock_holders(file: &File) -> Vec<i32> {
    let Ok(meta) = file.metadata() else {
        return Vec::new();
    };
    for attempt in 0..5 {
        if attempt > 0 {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let Some(locks) = read_proc_locks() else {
            return Vec::new();
        };
        let holders = flock_holders(&locks, meta.dev(), meta.ino());
        if !holders.is_empty() {
            return holders;
        }
    }
    Vec::new()
}

/// `/proc/locks` in one `read()` where it fits: read in small pieces (as
/// `read_to_string` starts), the kernel walks the lock list again for each
/// piece, and a lock released meanwhile elsewhere can make another's line
/// be skipped.
fn read_proc_locks() -> Option<String> {
    use std::io::Read;
    let mut file = File::open("/proc/locks").ok()?;
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0;
    loop {
        let n = file.read(&mut buf[len..]).ok()?;
        if n == 0 {
            break;
        }
        len += n;
        if len == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
    }
    buf.truncate(len);
    String::from_utf8(buf).ok()
}

/// Lines like `1: FLOCK  ADVISORY  WRITE 4242 fe:00:6307844 0 EOF`: the
/// holder's pid, then the device (major:minor in hex) and inode; waiters
/// (`1: -> FLOCK …`) are not holders.
fn flock_holders(locks: &str, dev: u64, ino: u64) -> Vec<i32> {
    let (major, minor) = (nix::libc::major(dev) as u64, nix::libc::minor(dev) as u64);
    locks
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.get(1) != Some(&"FLOCK") {
                return None;
            }
            let pid = f.get(4)?.parse::<i32>().ok()?;
            let mut id = f.get(5)?.split(':');
            let maj = u64::from_str_radix(id.next()?, 16).ok()?;
            let min = u64::from_str_radix(id.next()?, 16).ok()?;
            let i = id.next()?.parse::<u64>().ok()?;
            (maj == major && min == minor && i == ino).then_some(pid)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_pid_rejects_junk() {
        assert_eq!(parse_pid("123\n"), Some(123));
        assert_eq!(parse_pid(""), None);
        assert_eq!(parse_pid("0"), None);
        assert_eq!(parse_pid("-5"), None);
        assert_eq!(parse_pid("12ab"), None);
    }

    #[test]
    fn flock_holders_of_one_inode_waiters_and_other_locks_left_out() {
        let dev = nix::libc::makedev(0xfe, 0x01);
        let locks = "1: FLOCK  ADVISORY  WRITE 4242 fe:01:77 0 EOF\n\
                     1: -> FLOCK  ADVISORY  WRITE 4343 fe:01:77 0 EOF\n\
                     2: POSIX  ADVISORY  WRITE 4444 fe:01:77 0 EOF\n\
                     3: FLOCK  ADVISORY  READ 4545 fe:01:78 0 EOF\n\
                     4: FLOCK  ADVISORY  READ 4646 fe:02:77 0 EOF\n";
        assert_eq!(flock_holders(locks, dev, 77), vec![4242]);
    }

    #[test]
    fn lock_holders_finds_this_process() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, "").unwrap();
        let file = File::open(&f).unwrap();
        assert!(lock_is_free(&file).unwrap());
        let locked = Flock::lock(File::open(&f).unwrap(), FlockArg::LockExclusiveNonblock).unwrap();
        assert!(!lock_is_free(&file).unwrap());
        assert_eq!(lock_holders(&file), vec![std::process::id() as i32]);
        drop(locked);
        assert!(lock_is_free(&file).unwrap());
    }
}
