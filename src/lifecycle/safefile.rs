//! Opening a file that lives in a directory another user may write (the
//! pid, log and status directories are often given to `daemon_user`), when
//! we may be root: a link, a FIFO or a device planted there must not make
//! root write, truncate, chmod or hang on something else.
//!
//! Every open here is `O_NOFOLLOW` (a symbolic link as the last component is
//! refused, never followed), `O_NONBLOCK` (a FIFO cannot hang the open; the
//! flag is cleared again on the regular file) and `O_NOCTTY`; then `fstat`
//! on the open descriptor, not on the path, checks what was really opened:
//! a regular file, with one link (a hard link to a file elsewhere is
//! refused), owned by someone we trust. A mode is set with `fchmod` on that
//! descriptor, and only on a file this open created.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::unistd::{Uid, User};

/// Who may own a file we open: root, ourselves, and the daemon user when
/// there is one. A file anyone else owns was put there by someone else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owners {
    uids: Vec<u32>,
}

impl Owners {
    /// Root and the effective user.
    pub fn me() -> Owners {
        let mut uids = vec![0];
        let me = nix::unistd::geteuid().as_raw();
        if me != 0 {
            uids.push(me);
        }
        Owners { uids }
    }

    /// Root, the effective user, and `daemon_user` (when it exists): the
    /// daemon writes its files after dropping root.
    pub fn me_and(daemon_user: &str) -> Owners {
        let mut owners = Owners::me();
        if let Ok(Some(u)) = User::from_name(daemon_user) {
            if !owners.uids.contains(&u.uid.as_raw()) {
                owners.uids.push(u.uid.as_raw());
            }
        }
        owners
    }

    pub(crate) fn allows(&self, uid: u32) -> bool {
        self.uids.contains(&uid)
    }

    fn describe(&self) -> String {
        let names: Vec<String> = self.uids.iter().map(|u| user_name(*u)).collect();
        names.join(" or ")
    }
}

fn user_name(uid: u32) -> String {
    match User::from_uid(Uid::from_raw(uid)) {
        Ok(Some(u)) => format!("{} (uid {uid})", u.name),
        _ => format!("uid {uid}"),
    }
}

/// How the file is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    Read,
    ReadWrite,
    Append,
}

/// Opens an existing file at `path` for `access`, refusing anything but a
/// regular file with one link owned by one of `owners`.
pub(crate) fn open(path: &Path, access: Access, owners: &Owners) -> io::Result<File> {
    let file = options(access).open(path).map_err(|e| refusal(path, e))?;
    check(file, owners)
}

/// Like [`open`], creating the file (with `mode`, set on the descriptor)
/// when it does not exist. An existing file keeps its mode. `access` must
/// write ([`Access::ReadWrite`] or [`Access::Append`]).
pub(crate) fn open_or_create(
    path: &Path,
    access: Access,
    mode: u32,
    owners: &Owners,
) -> io::Result<File> {
    let mut o = options(access);
    // O_CREAT|O_EXCL never follows a link either; 0600 until the fchmod.
    o.create_new(true).mode(0o600);
    match o.open(path) {
        Ok(file) => {
            let file = check(file, owners)?;
            file.set_permissions(std::fs::Permissions::from_mode(mode))?;
            Ok(file)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => open(path, access, owners),
        Err(e) => Err(refusal(path, e)),
    }
}

fn options(access: Access) -> OpenOptions {
    let mut o = OpenOptions::new();
    match access {
        Access::Read => o.read(true),
        Access::ReadWrite => o.read(true).write(true),
        Access::Append => o.append(true),
    };
    o.custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK | nix::libc::O_NOCTTY);
    o
}

/// The checks on the open descriptor, then blocking mode again.
fn check(file: File, owners: &Owners) -> io::Result<File> {
    let meta = file.metadata()?;
    let ft = meta.file_type();
    if !ft.is_file() {
        return Err(refused(format!("it is {}, not a regular file", kind(&ft))));
    }
    if !owners.allows(meta.uid()) {
        return Err(refused(format!(
            "it is owned by {}, expected {}",
            user_name(meta.uid()),
            owners.describe()
        )));
    }
    if meta.nlink() != 1 {
        return Err(refused(format!(
            "it has {} hard links (a link to a file elsewhere?)",
            meta.nlink()
        )));
    }
    let fd = file.as_raw_fd();
    let flags = fcntl(fd, FcntlArg::F_GETFL).map_err(io::Error::from)?;
    let flags = OFlag::from_bits_truncate(flags) - OFlag::O_NONBLOCK;
    fcntl(fd, FcntlArg::F_SETFL(flags)).map_err(io::Error::from)?;
    Ok(file)
}

fn kind(ft: &std::fs::FileType) -> &'static str {
    if ft.is_dir() {
        "a directory"
    } else if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_block_device() || ft.is_char_device() {
        "a device"
    } else if ft.is_symlink() {
        "a symbolic link"
    } else {
        "something else"
    }
}

/// What an open that failed ran into: `ELOOP` is a symbolic link (with
/// `O_NOFOLLOW`), `ENXIO` a FIFO or socket nobody reads.
fn refusal(path: &Path, e: io::Error) -> io::Error {
    match e.raw_os_error().map(Errno::from_raw) {
        Some(Errno::ELOOP) | Some(Errno::ENXIO) | Some(Errno::EISDIR) => {
            match std::fs::symlink_metadata(path) {
                Ok(m) if !m.file_type().is_file() => refused(format!(
                    "it is {}, not a regular file{}",
                    kind(&m.file_type()),
                    if m.file_type().is_symlink() {
                        " (not followed)"
                    } else {
                        ""
                    }
                )),
                _ => e,
            }
        }
        _ => e,
    }
}

fn refused(why: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, format!("refused: {why}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_fifos_and_directories_are_refused_with_what_they_are() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, "precious\n").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let me = Owners::me();
        for access in [Access::Read, Access::ReadWrite, Access::Append] {
            let e = match access {
                Access::Read => open(&link, access, &me),
                _ => open_or_create(&link, access, 0o644, &me),
            }
            .unwrap_err();
            assert!(e.to_string().contains("symbolic link"), "{e}");
            let e = open(&fifo, access, &me).unwrap_err();
            assert!(e.to_string().contains("FIFO"), "{access:?}: {e}");
            let e = open(dir.path(), access, &me).unwrap_err();
            assert!(e.to_string().contains("directory"), "{access:?}: {e}");
        }
        // A dangling link is not created through either.
        let dangling = dir.path().join("dangling");
        std::os::unix::fs::symlink(dir.path().join("nowhere"), &dangling).unwrap();
        assert!(open_or_create(&dangling, Access::Append, 0o644, &me).is_err());
        assert!(!dir.path().join("nowhere").exists());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious\n");
    }

    #[test]
    fn hard_links_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        std::fs::write(&a, "x").unwrap();
        std::fs::hard_link(&a, dir.path().join("b")).unwrap();
        let e = open(&a, Access::Read, &Owners::me()).unwrap_err();
        assert!(e.to_string().contains("2 hard links"), "{e}");
    }

    #[test]
    fn a_created_file_gets_its_mode_an_existing_one_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        let file = open_or_create(&f, Access::ReadWrite, 0o640, &Owners::me()).unwrap();
        assert_eq!(file.metadata().unwrap().mode() & 0o777, 0o640);
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        let file = open_or_create(&f, Access::Append, 0o644, &Owners::me()).unwrap();
        assert_eq!(file.metadata().unwrap().mode() & 0o777, 0o600);
        // Blocking again once checked.
        let flags = fcntl(file.as_raw_fd(), FcntlArg::F_GETFL).unwrap();
        assert!(!OFlag::from_bits_truncate(flags).contains(OFlag::O_NONBLOCK));
    }

    #[test]
    fn a_file_of_someone_else_is_refused_naming_the_owner() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("needs root to chown: skipped");
            return;
        }
        let nobody = User::from_name("nobody").unwrap().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, "x").unwrap();
        nix::unistd::chown(&f, Some(nobody.uid), None).unwrap();
        let e = open(&f, Access::Read, &Owners::me()).unwrap_err();
        assert!(e.to_string().contains("owned by nobody"), "{e}");
        open(&f, Access::Read, &Owners::me_and("nobody")).expect("the daemon user's file");
    }
}
