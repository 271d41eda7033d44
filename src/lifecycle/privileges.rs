//! Dropping root for `daemon_user`.

use nix::unistd::{self, User};
use tracing::info;

use super::LifecycleError;

/// Done after the pid file and log file are open (as root, in directories
/// root owns) so the daemon keeps those descriptors but nothing else of
/// root's.
pub fn drop_privileges(user: &str) -> Result<(), LifecycleError> {
    if !unistd::geteuid().is_root() {
        let current = User::from_uid(unistd::geteuid())
            .ok()
            .flatten()
            .map_or_else(|| unistd::geteuid().to_string(), |u| u.name);
        info!(
            daemon_user = user,
            current_user = %current,
            "not started as root: staying as the current user"
        );
        return Ok(());
    }
    let entry = User::from_name(user)
        .map_err(|source| LifecycleError::UserLookup {
            user: user.to_string(),
            source,
        })?
        .ok_or_else(|| LifecycleError::UnknownUser {
            user: user.to_string(),
        })?;
    let fail = |step: &'static str| {
        move |source| LifecycleError::DropPrivileges {
            user: user.to_string(),
            step,
            source,
        }
    };
    let name = std::ffi::CString::new(user).map_err(|_| LifecycleError::UnknownUser {
        user: user.to_string(),
    })?;
    // Groups first: once the uid is gone, we may no longer change them.
    unistd::initgroups(&name, entry.gid).map_err(fail("initgroups"))?;
    unistd::setgid(entry.gid).map_err(fail("setgid"))?;
    unistd::setuid(entry.uid).map_err(fail("setuid"))?;
    info!(daemon_user = user, uid = %entry.uid, gid = %entry.gid, "dropped root privileges");
    Ok(())
}
