//! Processes of one server, seen through `/proc`: finding a postmaster's
//! children, signalling them, and waiting for them to be gone.
//!
//! A process is identified by its pid *and* its start time, so a pid that was
//! reused by an unrelated process after ours died is never signalled. The
//! same pair, kept in an owner file, tells the fixture directories of a dead
//! test process (orphans to reap) from those of a live one.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::SandboxError;

/// One process, pinned to its start time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Proc {
    pub(crate) pid: i32,
    start: u64,
}

/// What `/proc/<pid>/stat` says about a process that we need.
struct Stat {
    state: char,
    ppid: i32,
    start: u64,
}

fn stat(pid: i32) -> Option<Stat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name sits in parentheses and may itself contain spaces or
    // parentheses: the fields we need come after the last ')'.
    let rest = text.get(text.rfind(')')? + 1..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(Stat {
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        start: fields.get(19)?.parse().ok()?,
    })
}

/// The process running now under `pid`, if any (zombies count as gone: in a
/// container nobody may ever reap them).
pub(crate) fn identify(pid: i32) -> Option<Proc> {
    let s = stat(pid)?;
    if matches!(s.state, 'Z' | 'X') {
        return None;
    }
    Some(Proc {
        pid,
        start: s.start,
    })
}

/// The command line of `pid`, arguments joined by spaces.
pub(crate) fn cmdline(pid: i32) -> Option<String> {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        String::from_utf8_lossy(&raw)
            .split('\0')
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join(" "),
    )
}

impl Proc {
    /// When the process started (clock ticks since boot): with the pid,
    /// what tells it from a later process reusing that pid.
    pub(crate) fn start_time(&self) -> u64 {
        self.start
    }

    /// Still the same process, and not a zombie.
    pub(crate) fn is_alive(&self) -> bool {
        matches!(stat(self.pid), Some(s) if s.start == self.start && !matches!(s.state, 'Z' | 'X'))
    }

    /// Stopped by a signal (state `T`).
    pub(crate) fn is_stopped(&self) -> bool {
        matches!(stat(self.pid), Some(s) if s.start == self.start && s.state == 'T')
    }

    /// Sends `signal`; a process that is already gone is not an error.
    pub(crate) fn signal(&self, signal: Signal) -> Result<(), SandboxError> {
        if !self.is_alive() {
            return Ok(());
        }
        match kill(Pid::from_raw(self.pid), signal) {
            Ok(()) | Err(Errno::ESRCH) => Ok(()),
            Err(source) => Err(SandboxError::Signal {
                signal,
                pid: self.pid,
                source,
            }),
        }
    }
}

/// Every live descendant of `root` (postgres forks all its processes
/// directly, but the walk is transitive anyway).
pub(crate) fn descendants(root: &Proc) -> Vec<Proc> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let all: Vec<(i32, Stat)> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| Some((pid, stat(pid)?)))
        .filter(|(_, s)| !matches!(s.state, 'Z' | 'X'))
        .collect();
    let mut parents = BTreeSet::from([root.pid]);
    let mut found = BTreeSet::new();
    loop {
        let before = found.len();
        for (pid, s) in &all {
            if parents.contains(&s.ppid) && *pid != root.pid {
                found.insert(Proc {
                    pid: *pid,
                    start: s.start,
                });
            }
        }
        if found.len() == before {
            break;
        }
        parents.extend(found.iter().map(|p| p.pid));
    }
    found.into_iter().collect()
}

/// The PostgreSQL dynamic shared memory files `pid` has mapped (a
/// killed server cannot remove them itself).
pub(crate) fn shm_files(pid: i32) -> Vec<PathBuf> {
    let Ok(maps) = fs::read_to_string(format!("/proc/{pid}/maps")) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = maps
        .lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .filter(|path| path.starts_with("/dev/shm/PostgreSQL."))
        .map(PathBuf::from)
        .collect();
    files.sort();
    files.dedup();
    files
}

/// Whether System V shared memory segment `shmid` still exists, was
/// created by `creator` and has nobody attached: only then is it the
/// abandoned segment of that dead postmaster.
pub(crate) fn sysv_segment_abandoned(shmid: i32, creator: i32) -> bool {
    let Ok(table) = fs::read_to_string("/proc/sysvipc/shm") else {
        return false;
    };
    table.lines().skip(1).any(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        f.get(1).and_then(|v| v.parse::<i32>().ok()) == Some(shmid)
            && f.get(4).and_then(|v| v.parse::<i32>().ok()) == Some(creator)
            && f.get(6).and_then(|v| v.parse::<u64>().ok()) == Some(0)
    })
}

/// The file naming the process that owns a fixture directory.
pub(crate) const OWNER_FILE: &str = "owner";

/// "pid start-time" of this process, for [`OWNER_FILE`].
pub(crate) fn owner_stamp() -> Option<String> {
    let me = identify(std::process::id() as i32)?;
    Some(format!("{} {}", me.pid, me.start_time()))
}

/// The directories in `base` named `prefix...` whose owner died without
/// removing them (a killed test run, a demo stopped with kill -9), each with
/// the dead owner's pid. Directories of live owners, and those without a
/// readable owner file yet, are not listed.
pub(crate) fn orphaned_dirs(base: &Path, prefix: &str) -> Vec<(PathBuf, u64)> {
    let Ok(entries) = fs::read_dir(base) else {
        return Vec::new();
    };
    let mut orphans = Vec::new();
    for entry in entries.flatten() {
        let ours = entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(prefix));
        let dir = entry.path();
        if !ours || !dir.is_dir() {
            continue;
        }
        let Ok(stamp) = fs::read_to_string(dir.join(OWNER_FILE)) else {
            continue;
        };
        let mut words = stamp.split_whitespace().map(|w| w.parse::<u64>().ok());
        let (Some(Some(pid)), Some(Some(start))) = (words.next(), words.next()) else {
            continue;
        };
        let owner_alive = i32::try_from(pid)
            .ok()
            .and_then(identify)
            .is_some_and(|p| p.start_time() == start);
        if !owner_alive {
            orphans.push((dir, pid));
        }
    }
    orphans
}

/// Waits until none of `procs` is alive; true when they all went in time.
pub(crate) fn wait_gone(procs: &[Proc], timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if procs.iter().all(|p| !p.is_alive()) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_itself_and_its_children() {
        let me = identify(std::process::id() as i32);
        let Some(me) = me else {
            panic!("own process not found in /proc")
        };
        assert!(me.is_alive());
        assert!(!me.is_stopped());
        let mut child = match std::process::Command::new("sleep").arg("30").spawn() {
            Ok(c) => c,
            Err(e) => panic!("spawn sleep: {e}"),
        };
        let found = descendants(&me);
        let kid = found.iter().find(|p| p.pid == child.id() as i32).copied();
        let _ = child.kill();
        let _ = child.wait();
        let Some(kid) = kid else {
            panic!("child {} not among descendants {found:?}", child.id())
        };
        assert!(!kid.is_alive(), "reaped child still seen alive");
        assert!(wait_gone(&[kid], Duration::from_millis(10)));
    }

    #[test]
    fn orphans_are_dirs_of_dead_owners_only() {
        let base = match tempfile::tempdir() {
            Ok(d) => d,
            Err(e) => panic!("tempdir: {e}"),
        };
        let Some(me) = identify(std::process::id() as i32) else {
            panic!("own process not found in /proc")
        };
        let stamps = [
            ("fx-live", Some(format!("{} {}", me.pid, me.start_time()))),
            // Our pid, but another start time: a reused pid, owner dead.
            (
                "fx-dead",
                Some(format!("{} {}", me.pid, me.start_time() + 1)),
            ),
            ("fx-fresh", None),
            ("fx-garbled", Some("not a stamp".to_owned())),
            (
                "other-dead",
                Some(format!("{} {}", me.pid, me.start_time() + 1)),
            ),
        ];
        for (name, stamp) in &stamps {
            let dir = base.path().join(name);
            if let Err(e) = fs::create_dir(&dir) {
                panic!("mkdir {}: {e}", dir.display());
            }
            if let Some(stamp) = stamp {
                if let Err(e) = fs::write(dir.join(OWNER_FILE), stamp) {
                    panic!("write owner of {name}: {e}");
                }
            }
        }
        // A plain file with the prefix is no fixture directory.
        let _ = fs::write(base.path().join("fx-file"), "1 1");
        let found = orphaned_dirs(base.path(), "fx-");
        assert_eq!(found, vec![(base.path().join("fx-dead"), me.pid as u64)]);
    }
}
