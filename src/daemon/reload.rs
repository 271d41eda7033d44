//! Reading the configuration as plusmoin runs it, and applying a reload
//! (SIGHUP) to the running loop. Each reload handled is numbered and its
//! outcome shown in the status file at once (`reload` in the status), so
//! that `plusmoin reload` can say whether the daemon took it.

use super::Daemon;
use crate::cluster::Time;
use crate::config::{self, Config};
use crate::payload::ReloadReport;
use std::path::Path;
use tracing::{error, info, warn};

/// Loads the configuration at `path` as plusmoin runs it: [`config::load`],
/// then the sidecar's check of the `pgpool` section ([`crate::pgpool::check`]:
/// templates, node ids from `pgpool_conf`). What the commands and a reload
/// use; either refusal is a [`config::ConfigError`] naming the key at fault.
pub fn load_config(path: &Path) -> Result<Config, config::ConfigError> {
    config::load(path).and_then(crate::pgpool::check)
}

/// Handles one SIGHUP: reads `path` again and applies it, then records the
/// outcome under the next reload generation and writes the status at once
/// (once there is a status to write: before the first decision the first
/// status carries it).
pub(super) fn reload(daemon: &mut Daemon, path: &Path) {
    let outcome = reload_config(daemon, path);
    let now = Time::now();
    let generation = daemon.reload.as_ref().map_or(0, |r| r.generation) + 1;
    let (ok, error, restart_needed) = match outcome {
        Ok(keys) => (true, None, keys.into_iter().map(String::from).collect()),
        Err(e) => (false, Some(e), Vec::new()),
    };
    let mut entry = crate::status::journal::Entry::new("reload")
        .with("generation", generation)
        .with("ok", ok);
    if let Some(e) = &error {
        entry = entry.why(format!("not applied, the configuration before stays: {e}"));
    }
    if !restart_needed.is_empty() {
        entry = entry.with("restart_needed", restart_needed.clone());
    }
    daemon.journal.record(entry);
    daemon.reload = Some(ReloadReport {
        generation,
        at: crate::payload::rfc3339(now),
        ok,
        error,
        restart_needed,
    });
    if daemon.decisions > 0 {
        daemon.write_status(now);
    }
}

/// Reads `path` and applies it. `Ok`: the settings that changed but wait
/// for the next start; `Err`: why nothing was applied (the old
/// configuration stays in force), as logged.
fn reload_config(daemon: &mut Daemon, path: &Path) -> Result<Vec<&'static str>, String> {
    let result = match load_config(path) {
        Ok(new) => {
            let nodes = new.nodes.len();
            let at_start = start_only_changes(daemon.config(), &new);
            let listen_changed = daemon.config().http_listen != new.http_listen;
            match daemon.reconfigure(new) {
                Ok(()) => {
                    info!(config = %path.display(), nodes, "configuration reloaded");
                    if !at_start.is_empty() {
                        warn!(
                            keys = at_start.join(", "),
                            "these settings changed but take effect only when plusmoin is started again"
                        );
                    }
                    let mut keys = at_start;
                    if listen_changed {
                        keys.push("http_listen");
                    }
                    Ok(keys)
                }
                Err(e) => Err(e.to_string()),
            }
        }
        Err(e) => Err(e.to_string()),
    };
    if let Err(e) = &result {
        error!("configuration not reloaded, the old one stays in force: {e}");
    }
    for w in daemon.config().secret_warnings() {
        warn!("{w}");
    }
    result
}

/// The keys a reload cannot apply: the pid file and the log are opened,
/// and root dropped for `daemon_user`, once at start.
fn start_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    [
        ("pid_file", old.pid_file != new.pid_file),
        ("log_file", old.log_file != new.log_file),
        ("log_level", old.log_level != new.log_level),
        ("log_format", old.log_format != new.log_format),
        ("daemon_user", old.daemon_user != new.daemon_user),
        (
            "journal_max_bytes",
            old.journal_max_bytes != new.journal_max_bytes,
        ),
    ]
    .into_iter()
    .filter_map(|(key, changed)| changed.then_some(key))
    .collect()
}
