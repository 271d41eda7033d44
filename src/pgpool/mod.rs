//! The pgpool-II sidecar (README "pgpool-II", pgpool/README.md): keeps pgpool's view of its backends in
//! step with plusmoin's, through pcp commands rendered from templates.
//!
//! - `section`: the `pgpool` section's checks the configuration loader
//!   leaves to the sidecar ([`check`]: templates, node ids from
//!   `pgpool.conf`), and its lines of `check-config`'s summary.
//! - `templates`: the shipped and overridden pcp command templates.
//! - `conf`: node ids from `pgpool.conf`'s `backend_hostnameN`/`backend_portN`.
//! - `pcp`: running a pcp command (no shell, `PCPPASSFILE`, deadline) and
//!   reading `pcp_node_info` (`pcp::parse`).
//! - `plan`: the pure rules: what pgpool should show, which action fixes it.
//! - [`sidecar`]: the background worker (`sidecar::round`: one round's
//!   reads, actions and report): event handlers and reconciliation, on the
//!   daemon's view of the nodes and of the holds (`Held`; the holds
//!   themselves are read by [`crate::hold`]).
//!
//! Nothing here blocks the beat loop, and nothing here replaces the user's
//! triggers: handlers run beside them, on their own worker.

mod conf;
pub(crate) mod pcp;
mod plan;
mod section;
pub mod sidecar;
mod templates;

pub use section::{check, summary};
pub(crate) use sidecar::{Held, Sidecar};

use crate::cluster::NodeName;
use crate::config::Config;
use std::path::Path;

/// What will keep pcp from working, found without running it: the pcppass
/// file (missing, unreadable, or a mode pcp silently ignores) and the pcp
/// programs. Reported by `check-config` as warnings and at start as errors.
pub fn problems(config: &Config) -> Vec<String> {
    let Some(p) = &config.pgpool else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if let Some(w) = pcppass_problem(&p.pcppass_file) {
        out.push(w);
    }
    let node = config
        .nodes
        .first()
        .map_or_else(|| NodeName::new("localhost", 5432), |n| n.name.clone());
    if let Ok(pcp) = pcp::Pcp::new(p, std::time::Duration::from_secs(1)) {
        for c in templates::Command::ALL {
            let Ok(argv) = pcp.argv(c, &node, 0) else {
                continue;
            };
            let program = Path::new(&argv[0]);
            if program.is_absolute() && !program.exists() {
                out.push(format!(
                    "the {c} command {} does not exist (set pgpool.bin_dir to where the pcp programs are)",
                    program.display()
                ));
            }
        }
    }
    out
}

/// What pgpool says of its watchdog, for `check-config`: `None` without a
/// `pgpool` section; otherwise a line saying whether this plusmoin would
/// act, or why pgpool could not be asked.
pub fn watchdog_line(config: &Config) -> Option<Result<String, String>> {
    let p = config.pgpool.as_ref()?;
    let node = config.nodes.first()?.name.clone();
    let pcp = match pcp::Pcp::new(p, p.pcp_timeout) {
        Ok(pcp) => pcp,
        Err(e) => return Some(Err(e.to_string())),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return Some(Err(format!("cannot start the async runtime: {e}"))),
    };
    Some(
        runtime
            .block_on(pcp.watchdog(&node))
            .map(|w| w.describe())
            .map_err(|e| e.to_string()),
    )
}

/// Configured nodes that have no pgpool node id.
fn unmapped(config: &Config) -> Vec<NodeName> {
    let Some(p) = &config.pgpool else {
        return Vec::new();
    };
    config
        .nodes
        .iter()
        .filter(|n| !p.node_ids.contains_key(&n.name))
        .map(|n| n.name.clone())
        .collect()
}

/// Why pcp would not use the pcppass file at `path`, if it would not. pcp
/// ignores a file group or others can access without failing loudly: the
/// request then fails with a bare authentication error.
fn pcppass_problem(path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let shown = path.display();
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) => {
            return Some(format!(
                "pcppass_file {shown}: {e}: pcp will have no password"
            ))
        }
    };
    if !meta.is_file() {
        return Some(format!("pcppass_file {shown} is not a regular file"));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Some(format!(
            "pcppass_file {shown} has mode {mode:04o}: pcp ignores a password file that group or others can access (chmod 600 it)"
        ));
    }
    if let Err(e) = std::fs::File::open(path) {
        let user = nix::unistd::User::from_uid(nix::unistd::geteuid())
            .ok()
            .flatten()
            .map_or_else(|| "this user".to_string(), |u| u.name);
        return Some(format!(
            "pcppass_file {shown} cannot be read by {user}: {e} (it must belong to the user plusmoin runs as)"
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn pcppass_mode_and_absence_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pcppass");
        assert!(pcppass_problem(&f).unwrap().contains("No such file"));
        std::fs::write(&f, "*:*:pgpool:secret\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        let w = pcppass_problem(&f).unwrap();
        assert!(w.contains("mode 0644") && w.contains("chmod 600"), "{w}");
        assert!(!w.contains("secret"));
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(pcppass_problem(&f), None);
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o400)).unwrap();
        assert_eq!(pcppass_problem(&f), None);
        assert!(pcppass_problem(dir.path())
            .unwrap()
            .contains("not a regular file"));
    }
}
