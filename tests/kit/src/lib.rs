//! plusmoin's test kits: what its tests and benches run against, in a
//! crate of their own so that nothing of them is in plusmoin itself
//! (`cargo build --release`, the Debian package). Tests and benches get
//! it as the dev-dependency `plusmoin-kit`.
//!
//! - [`fakepg`]: a simulated PostgreSQL server, thousands of nodes in one
//!   process.
//! - [`probe`]: one probe of each node through a [`plusmoin::probe::Monitor`],
//!   as a beat of the daemon asks for them.
//! - [`watchdog`]: a pgpool-II watchdog cluster in front of a
//!   [`plusmoin::demo::sandbox::Sandbox`].
//! - [`sandbox`]: what only the tests do to the demo's sandbox and its
//!   pgpool (freeze/thaw, pg_hba.conf lines, pcp attach/detach/wait, the
//!   failover scripts' logs), as extension traits.
//! - [`exposition`]: a strict reader of the Prometheus text format.
//! - [`flood`]: a flood of idle and slow connections against a listener.

pub mod exposition;
pub mod fakepg;
pub mod flood;
pub mod probe;
pub mod sandbox;
pub mod watchdog;

/// Set (to anything but `0` or empty) by `.ci/run`: every test that would
/// skip for want of root or of an optional tool fails instead, so CI runs
/// them all or says why not.
pub const REQUIRE_ALL: &str = "PLUSMOIN_REQUIRE_ALL";

/// Whether [`REQUIRE_ALL`] is set.
pub fn all_required() -> bool {
    std::env::var_os(REQUIRE_ALL).is_some_and(|v| !v.is_empty() && v != "0")
}

/// A test that cannot run here (`reason`: what it needs, and how to get
/// it): prints `skipped: {reason}` and returns, for the caller to return
/// too; under [`REQUIRE_ALL`] it panics instead, so the test fails.
pub fn skip(reason: &str) {
    if all_required() {
        panic!("{REQUIRE_ALL} is set, and this test cannot run: {reason}");
    }
    eprintln!("skipped: {reason}");
}

/// Whether `program` is an executable file in one of the `PATH`
/// directories, as a shell would find it.
pub fn on_path(program: &str) -> bool {
    find_program(program, &[]).is_some()
}

/// The first executable file named `program` in the `PATH` directories,
/// then in `also` (e.g. the sbin directories a normal user's PATH lacks).
pub fn find_program(program: &str, also: &[&str]) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(also.iter().map(std::path::PathBuf::from))
        .map(|d| d.join(program))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A PATH (one directory, `farm`, made afresh) where every program of the
/// system's directories is found but those `left_out`: for tests of what
/// happens without an optional tool, or of a script without one.
pub fn path_without(farm: &std::path::Path, left_out: &[&str]) -> String {
    let _ = std::fs::remove_dir_all(farm);
    std::fs::create_dir_all(farm).expect("farm directory");
    for dir in [
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
    ] {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            if left_out.iter().any(|l| name == *l) {
                continue;
            }
            // The first directory wins, as in a PATH.
            let _ = std::os::unix::fs::symlink(e.path(), farm.join(&name));
        }
    }
    farm.display().to_string()
}
