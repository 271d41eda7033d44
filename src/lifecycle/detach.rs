//! Detaching into the background, with a line back to `plusmoin start`.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::{umask, Mode};
use nix::unistd::{self, ForkResult};

use super::LifecycleError;

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
