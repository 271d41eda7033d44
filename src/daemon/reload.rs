//! Reading the configuration as plusmoin runs it, and applying a reload
//! (SIGHUP) to the running loop.

use super::Daemon;
use crate::config::{self, Config};
use std::path::Path;
use tracing::{error, info, warn};

/// Loads the configuration at `path` as plusmoin runs it: [`config::load`],
/// then the sidecar's check of the `pgpool` section ([`crate::pgpool::check`]:
/// templates, node ids from `pgpool_conf`). What the commands and a reload
/// use; either refusal is a [`config::ConfigError`] naming the key at fault.
pub fn load_config(path: &Path) -> Result<Config, config::ConfigError> {
    config::load(path).and_then(crate::pgpool::check)
}

pub(super) fn reload_config(daemon: &mut Daemon, path: &Path) {
    match load_config(path) {
        Ok(new) => {
            let nodes = new.nodes.len();
            let at_start = start_only_changes(daemon.config(), &new);
            match daemon.reconfigure(new) {
                Ok(()) => {
                    info!(config = %path.display(), nodes, "configuration reloaded");
                    if !at_start.is_empty() {
                        warn!(
                            keys = at_start.join(", "),
                            "these settings changed but take effect only when plusmoin is started again"
                        );
                    }
                }
                Err(e) => error!("configuration not reloaded, the old one stays in force: {e}"),
            }
        }
        Err(e) => error!("configuration not reloaded, the old one stays in force: {e}"),
    }
    for w in daemon.config().secret_warnings() {
        warn!("{w}");
    }
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
    ]
    .into_iter()
    .filter_map(|(key, changed)| changed.then_some(key))
    .collect()
}
