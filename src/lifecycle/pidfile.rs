//! The locked pid file: who is running, and taking over a stale one.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use tracing::{debug, info, warn};

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
}
