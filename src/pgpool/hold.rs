//! Maintenance holds: nodes an operator keeps out of pgpool on purpose
//! (`plusmoin hold HOST:PORT` / `plusmoin release HOST:PORT`).
//!
//! The list lives in `held.json` beside the status file, written atomically
//! by the command line and read by the daemon every beat, so a hold works
//! whether or not the daemon runs and survives its restarts. A held node is
//! detached from pgpool and never attached by plusmoin until released.

use crate::cluster::NodeName;
use crate::config::Config;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The file's name, in the status file's directory.
pub const FILE_NAME: &str = "held.json";

#[derive(Debug, thiserror::Error)]
pub enum HoldError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid hold list: {source}")]
    Invalid {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{given:?} is not a configured node (configured: {known})")]
    UnknownNode { given: String, known: String },
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct HeldFile {
    /// Node names (`host:port` as plusmoin prints them).
    held: BTreeSet<String>,
}

/// Where the holds of the daemon writing `status_file` are kept.
pub fn path_for(status_file: &Path) -> PathBuf {
    match status_file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.join(FILE_NAME),
        _ => PathBuf::from(FILE_NAME),
    }
}

/// The held nodes; none when the file does not exist.
pub fn read(path: &Path) -> Result<BTreeSet<String>, HoldError> {
    let bytes = match std::fs::read(path) {
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
    crate::status::write_atomic(path, &json).map_err(err)
}

/// The configured node `given` names: `host:port` (host without case, an
/// IPv6 host in brackets), or a bare host when only one node has it.
pub fn resolve(config: &Config, given: &str) -> Result<NodeName, HoldError> {
    let g = given.trim();
    let by_name = config
        .nodes
        .iter()
        .find(|n| n.name.to_string().eq_ignore_ascii_case(g));
    if let Some(n) = by_name {
        return Ok(n.name.clone());
    }
    let bare = g.trim_start_matches('[').trim_end_matches(']');
    let by_host: Vec<_> = config
        .nodes
        .iter()
        .filter(|n| n.name.host.eq_ignore_ascii_case(bare))
        .collect();
    if let [only] = by_host.as_slice() {
        return Ok(only.name.clone());
    }
    let known: Vec<String> = config.nodes.iter().map(|n| n.name.to_string()).collect();
    Err(HoldError::UnknownNode {
        given: given.to_string(),
        known: if known.is_empty() {
            "none".into()
        } else {
            known.join(", ")
        },
    })
}

/// Holds the node `given` names; whether it was not held before.
pub fn hold(config: &Config, given: &str) -> Result<(NodeName, bool), HoldError> {
    let node = resolve(config, given)?;
    let added = change(&path_for(&config.status_file), |held| {
        held.insert(node.to_string())
    })?;
    Ok((node, added))
}

/// Releases the node `given` names; whether it was held.
pub fn release(config: &Config, given: &str) -> Result<(NodeName, bool), HoldError> {
    let node = resolve(config, given)?;
    let removed = change(&path_for(&config.status_file), |held| {
        held.remove(&node.to_string())
    })?;
    Ok((node, removed))
}

/// Read, change, write, under an exclusive lock on `held.json.lock`, so two
/// operators running `hold`/`release` at the same moment both count. The
/// file is written only when `f` says it changed something.
fn change(path: &Path, f: impl FnOnce(&mut BTreeSet<String>) -> bool) -> Result<bool, HoldError> {
    let mut lock_path = path.as_os_str().to_owned();
    lock_path.push(".lock");
    let lock_path = PathBuf::from(lock_path);
    let err = |source| HoldError::Write {
        path: lock_path.clone(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(err)?;
    let _lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, errno)| err(std::io::Error::from(errno)))?;
    let mut held = read(path)?;
    let changed = f(&mut held);
    if changed {
        write(path, held)?;
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path) -> Config {
        let text = format!(
            r#"{{"dbname": "d", "user": "u", "password": "p", "instance_name": "i",
                "status_file": "{}/status.json",
                "nodes": [{{"host": "DB1"}}, {{"host": "db2", "port": 5433}},
                          {{"host": "db2", "port": 5434}}, {{"host": "::1", "port": 6000}}]}}"#,
            dir.display()
        );
        crate::config::parse(&text, Path::new("x.json")).unwrap()
    }

    #[test]
    fn hold_and_release_round_trip_through_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(dir.path());
        let path = path_for(&c.status_file);
        assert_eq!(path, dir.path().join("held.json"));
        assert!(read(&path).unwrap().is_empty(), "no file: nothing held");
        assert_eq!(
            hold(&c, "db1:5432").unwrap(),
            (NodeName::new("DB1", 5432), true)
        );
        assert!(!hold(&c, "DB1").unwrap().1, "already held");
        assert_eq!(
            hold(&c, "[::1]:6000").unwrap().0,
            NodeName::new("::1", 6000)
        );
        let held: Vec<String> = read(&path).unwrap().into_iter().collect();
        assert_eq!(held, ["DB1:5432", "[::1]:6000"]);
        assert!(release(&c, "DB1:5432").unwrap().1);
        assert!(!release(&c, "DB1:5432").unwrap().1);
        let held: Vec<String> = read(&path).unwrap().into_iter().collect();
        assert_eq!(held, ["[::1]:6000"]);
    }

    #[test]
    fn unknown_or_ambiguous_nodes_are_refused_with_the_list() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(dir.path());
        let e = hold(&c, "db9:5432").unwrap_err().to_string();
        assert!(e.contains("\"db9:5432\" is not a configured node"), "{e}");
        assert!(e.contains("db2:5433, db2:5434"), "{e}");
        assert!(hold(&c, "db2").is_err(), "two nodes on db2");
        assert!(!path_for(&c.status_file).exists());
    }

    #[test]
    fn a_broken_file_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("held.json");
        std::fs::write(&path, "{not json").unwrap();
        assert!(matches!(read(&path), Err(HoldError::Invalid { .. })));
    }

    #[test]
    fn concurrent_holds_are_all_kept() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(dir.path());
        std::thread::scope(|scope| {
            for node in ["db1:5432", "db2:5433", "db2:5434", "[::1]:6000"] {
                let c = &c;
                scope.spawn(move || {
                    for _ in 0..20 {
                        hold(c, node).unwrap();
                        release(c, node).unwrap();
                    }
                    hold(c, node).unwrap();
                });
            }
        });
        let held = read(&path_for(&c.status_file)).unwrap();
        assert_eq!(held.len(), 4, "{held:?}");
    }
}
