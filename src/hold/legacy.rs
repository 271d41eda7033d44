//! The legacy hold list, `held.json` beside the status file: the holds of
//! this host only, from before holds were cluster-wide. Still read (its
//! entries count as holds, placed by [`LEGACY_PLACED_BY`]), so an upgrade
//! never attaches a node held on purpose. `plusmoin release` removes a node
//! from it as well as from the table; `plusmoin hold` writes only the table.

use super::{resolve, HoldError};
use crate::cluster::NodeName;
use crate::config::Config;
use crate::lifecycle::safefile::{self, Access, Owners};
use crate::payload::HoldEntry;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The legacy file's name, in the status file's directory.
const FILE_NAME: &str = "held.json";

/// The most bytes of `held.json` read: thousands of node names.
const FILE_CAP: u64 = 1 << 20;

/// Who placed the holds read from the legacy `held.json`.
pub const LEGACY_PLACED_BY: &str = "held.json (this host only)";

/// A hold read from `held.json`: no time, no reason.
pub(super) fn entry(node: &str) -> HoldEntry {
    HoldEntry {
        node: node.to_string(),
        placed_by: LEGACY_PLACED_BY.to_string(),
        placed_at: String::new(),
        reason: None,
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct HeldFile {
    /// Node names (`host:port` as plusmoin prints them).
    held: BTreeSet<String>,
}

/// Where the legacy holds of the daemon writing `status_file` are kept.
pub fn path_for(status_file: &Path) -> PathBuf {
    match status_file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.join(FILE_NAME),
        _ => PathBuf::from(FILE_NAME),
    }
}

/// The nodes held in the legacy file; none when it does not exist. It lives
/// in a directory the daemon user writes: a link or FIFO there, or a file
/// none of `owners` owns, is an error (see [`safefile`]).
///
/// [`safefile`]: crate::lifecycle::safefile
pub fn read(path: &Path, owners: &Owners) -> Result<BTreeSet<String>, HoldError> {
    let bytes = match safefile::open(path, Access::Read, owners).and_then(|f| {
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut std::io::Read::take(f, FILE_CAP + 1), &mut b)?;
        if b.len() as u64 > FILE_CAP {
            return Err(std::io::Error::other(format!(
                "larger than {FILE_CAP} bytes: not a hold list"
            )));
        }
        Ok(b)
    }) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeSet::new()),
        Err(source) => {
            return Err(HoldError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let file: HeldFile = serde_json::from_slice(&bytes).map_err(|source| HoldError::Invalid {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(file.held)
}

fn write(path: &Path, held: BTreeSet<String>) -> Result<(), HoldError> {
    let err = |source| HoldError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut json = serde_json::to_vec_pretty(&HeldFile { held }).map_err(|e| err(e.into()))?;
    json.push(b'\n');
    // 0644: written by whoever runs `plusmoin release`, read by the daemon
    // user, who need not share that user's group.
    crate::status::write_atomic(path, &json, 0o644).map_err(err)
}

/// Legacy: holds the node `given` names in `held.json` (this host only);
/// whether it was not held before. `plusmoin hold` uses [`place`].
///
/// [`place`]: super::place
pub fn hold(config: &Config, given: &str) -> Result<(NodeName, bool), HoldError> {
    let node = resolve(config, given)?;
    let added = change(&path_for(&config.status_file), &owners(config), |held| {
        held.insert(node.to_string())
    })?;
    Ok((node, added))
}

/// Releases the node `given` names from `held.json`; whether it was held
/// there. (`plusmoin release` uses [`lift`], which does this too.)
///
/// [`lift`]: super::lift
#[cfg(test)]
pub(crate) fn release(config: &Config, given: &str) -> Result<(NodeName, bool), HoldError> {
    let node = resolve(config, given)?;
    let removed = change(&path_for(&config.status_file), &owners(config), |held| {
        held.remove(&node.to_string())
    })?;
    Ok((node, removed))
}

/// Who may own the legacy file and its lock: root, whoever runs plusmoin,
/// the daemon user.
pub(super) fn owners(config: &Config) -> Owners {
    Owners::me_and(&config.daemon_user)
}

/// An exclusive lock on `held.json.lock`, so two operators running
/// `hold`/`release` at the same moment both count. The lock file is opened
/// as [`safefile`] does: never through a link.
///
/// [`safefile`]: crate::lifecycle::safefile
fn lock(path: &Path, owners: &Owners) -> Result<nix::fcntl::Flock<std::fs::File>, HoldError> {
    let mut lock_path = path.as_os_str().to_owned();
    lock_path.push(".lock");
    let lock_path = PathBuf::from(lock_path);
    let err = |source| HoldError::Write {
        path: lock_path.clone(),
        source,
    };
    let file =
        safefile::open_or_create(&lock_path, Access::ReadWrite, 0o644, owners).map_err(err)?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, errno)| err(std::io::Error::from(errno)))
}

/// Read, change, write, under the [`lock`]. The file is written only when
/// `f` says it changed something.
pub(super) fn change(
    path: &Path,
    owners: &Owners,
    f: impl FnOnce(&mut BTreeSet<String>) -> bool,
) -> Result<bool, HoldError> {
    let _lock = lock(path, owners)?;
    let mut held = read(path, owners)?;
    let changed = f(&mut held);
    if changed {
        write(path, held)?;
    }
    Ok(changed)
}

/// A node's removal from `held.json`, made ready before anything changes:
/// the lock taken, the file read, its directory checked writable (the
/// file is replaced by a rename there). `plusmoin release` prepares it
/// before it touches the table, so that a file it cannot change stops it
/// with nothing done.
pub(super) struct Removal {
    path: PathBuf,
    node: String,
    /// The holds as read under the lock, the node among them.
    before: BTreeSet<String>,
    _lock: nix::fcntl::Flock<std::fs::File>,
}

impl Removal {
    /// `None` when the file does not hold `node` (or does not exist): then
    /// there is nothing to change, and no lock file is made (the
    /// directory need not be writable by whoever releases).
    pub(super) fn prepare(
        path: &Path,
        owners: &Owners,
        node: &str,
    ) -> Result<Option<Removal>, HoldError> {
        if !read(path, owners)?.contains(node) {
            return Ok(None);
        }
        let lock = lock(path, owners)?;
        let before = read(path, owners)?;
        if !before.contains(node) {
            return Ok(None);
        }
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        use nix::unistd::{access, AccessFlags};
        access(dir, AccessFlags::W_OK | AccessFlags::X_OK).map_err(|errno| HoldError::Write {
            path: path.to_path_buf(),
            source: std::io::Error::from(errno),
        })?;
        Ok(Some(Removal {
            path: path.to_path_buf(),
            node: node.to_string(),
            before,
            _lock: lock,
        }))
    }

    /// Writes the file without the node.
    pub(super) fn apply(&self) -> Result<(), HoldError> {
        let mut after = self.before.clone();
        after.remove(&self.node);
        write(&self.path, after)
    }

    /// Writes the file back as it was.
    pub(super) fn undo(&self) -> Result<(), HoldError> {
        write(&self.path, self.before.clone())
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }
}
