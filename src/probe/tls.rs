//! The TLS side of a probe: turns `sslmode` and `sslrootcert` into a
//! connector with libpq's meaning of each mode.

use super::ProbeError;
use crate::config::SslMode;
use postgres_native_tls::MakeTlsConnector;
use std::path::{Path, PathBuf};
use tokio_postgres::config::SslMode as PgSslMode;

/// How every connection of one [`super::Monitor`] negotiates TLS.
#[derive(Clone)]
pub(super) enum Tls {
    Off,
    Native(MakeTlsConnector),
}

/// What a connection will do, as data, so the libpq rules can be unit-tested
/// without building a connector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct TlsPolicy {
    pub(super) use_tls: bool,
    pub(super) pg_mode: PgSslMode,
    /// Check the certificate chain against the roots.
    pub(super) verify_chain: bool,
    /// Check that the certificate names the host.
    pub(super) verify_host: bool,
}

/// libpq's rules: `prefer`/`require` do not verify anything, unless a root
/// certificate is given, in which case they check the chain as `verify-ca`
/// does (libpq does the same when its root certificate file exists).
pub(super) fn policy(mode: SslMode, rootcert_given: bool) -> TlsPolicy {
    match mode {
        SslMode::Disable => TlsPolicy {
            use_tls: false,
            pg_mode: PgSslMode::Disable,
            verify_chain: false,
            verify_host: false,
        },
        SslMode::Prefer | SslMode::Require => TlsPolicy {
            use_tls: true,
            pg_mode: if mode == SslMode::Prefer {
                PgSslMode::Prefer
            } else {
                PgSslMode::Require
            },
            verify_chain: rootcert_given,
            verify_host: false,
        },
        SslMode::VerifyCa => TlsPolicy {
            use_tls: true,
            pg_mode: PgSslMode::Require,
            verify_chain: true,
            verify_host: false,
        },
        SslMode::VerifyFull => TlsPolicy {
            use_tls: true,
            pg_mode: PgSslMode::Require,
            verify_chain: true,
            verify_host: true,
        },
    }
}

/// Builds the connector once; a bad `sslrootcert` is reported here, at start
/// or reload, rather than as every node being down.
pub(super) fn build(
    mode: SslMode,
    rootcert: Option<&Path>,
) -> Result<(Tls, PgSslMode), ProbeError> {
    build_in(mode, rootcert, home_dir())
}

/// [`build`] for a user whose home directory is `home`.
fn build_in(
    mode: SslMode,
    rootcert: Option<&Path>,
    home: Option<PathBuf>,
) -> Result<(Tls, PgSslMode), ProbeError> {
    let p = policy(mode, rootcert.is_some());
    if !p.use_tls {
        return Ok((Tls::Off, p.pg_mode));
    }
    let default;
    let rootcert = match rootcert {
        Some(r) => Some(r),
        None if p.verify_chain => {
            default = default_root_file(mode, home)?;
            Some(default.as_path())
        }
        None => None,
    };
    let mut builder = native_tls::TlsConnector::builder();
    builder.danger_accept_invalid_certs(!p.verify_chain);
    builder.danger_accept_invalid_hostnames(!p.verify_host);
    if let Some(path) = rootcert {
        // As libpq: the given file replaces the system roots.
        let pem = std::fs::read(path).map_err(|source| ProbeError::ReadRootCert {
            path: path.to_path_buf(),
            source,
        })?;
        let certs = native_tls::Certificate::stack_from_pem(&pem).map_err(|source| {
            ProbeError::ParseRootCert {
                path: path.to_path_buf(),
                source,
            }
        })?;
        if certs.is_empty() {
            return Err(ProbeError::NoRootCert {
                path: path.to_path_buf(),
            });
        }
        builder.disable_built_in_roots(true);
        for cert in certs {
            builder.add_root_certificate(cert);
        }
    }
    let connector = builder.build().map_err(ProbeError::Tls)?;
    Ok((Tls::Native(MakeTlsConnector::new(connector)), p.pg_mode))
}

/// The home directory of the user plusmoin runs as (after dropping root),
/// as libpq finds it: the password database, not `$HOME`.
fn home_dir() -> Option<PathBuf> {
    nix::unistd::User::from_uid(nix::unistd::geteuid())
        .ok()
        .flatten()
        .map(|u| u.dir)
        .filter(|d| !d.as_os_str().is_empty())
}

/// `verify-ca` / `verify-full` without `sslrootcert`: libpq's default root
/// file, `~/.postgresql/root.crt`, which must exist. Never the system's
/// public roots: any public CA would then vouch for a server.
fn default_root_file(mode: SslMode, home: Option<PathBuf>) -> Result<PathBuf, ProbeError> {
    let name = match mode {
        SslMode::VerifyFull => "verify-full",
        _ => "verify-ca",
    };
    let path = home.map(|h| h.join(".postgresql").join("root.crt"));
    match path {
        Some(p) if p.is_file() => Ok(p),
        default => Err(ProbeError::NoDefaultRootCert {
            mode: name,
            default,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libpq_rules() {
        let d = policy(SslMode::Disable, true);
        assert!(!d.use_tls && d.pg_mode == PgSslMode::Disable);

        let p = policy(SslMode::Prefer, false);
        assert!(p.use_tls && !p.verify_chain && !p.verify_host);
        assert_eq!(p.pg_mode, PgSslMode::Prefer);

        let r = policy(SslMode::Require, false);
        assert!(!r.verify_chain && !r.verify_host);
        assert_eq!(r.pg_mode, PgSslMode::Require);
        assert!(policy(SslMode::Require, true).verify_chain);

        let ca = policy(SslMode::VerifyCa, false);
        assert!(ca.verify_chain && !ca.verify_host);
        assert_eq!(ca.pg_mode, PgSslMode::Require);

        let full = policy(SslMode::VerifyFull, true);
        assert!(full.verify_chain && full.verify_host);
        assert_eq!(full.pg_mode, PgSslMode::Require);
    }

    #[test]
    fn bad_rootcert_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.crt");
        let err = build(SslMode::VerifyCa, Some(&missing)).err().unwrap();
        assert!(matches!(err, ProbeError::ReadRootCert { .. }), "{err}");
        assert!(err.to_string().contains("missing.crt"), "{err}");

        let junk = dir.path().join("junk.crt");
        std::fs::write(&junk, "not a certificate\n").unwrap();
        let err = build(SslMode::VerifyFull, Some(&junk)).err().unwrap();
        assert!(
            matches!(
                err,
                ProbeError::ParseRootCert { .. } | ProbeError::NoRootCert { .. }
            ),
            "{err}"
        );
        // Disable never reads the file.
        assert!(build(SslMode::Disable, Some(&junk)).is_ok());
    }

    #[test]
    fn modes_without_rootcert_build() {
        let home = tempfile::tempdir().unwrap();
        for mode in [SslMode::Prefer, SslMode::Require] {
            let (tls, _) = build_in(mode, None, Some(home.path().into())).unwrap();
            assert!(matches!(tls, Tls::Native(_)));
        }
    }

    #[test]
    fn verify_without_rootcert_needs_libpq_default_root_file() {
        let home = tempfile::tempdir().unwrap();
        let root = home.path().join(".postgresql").join("root.crt");
        for mode in [SslMode::VerifyCa, SslMode::VerifyFull] {
            // No root.crt: an error naming it, never the public roots.
            let err = build_in(mode, None, Some(home.path().into()))
                .err()
                .expect("verify without any root certificate must fail");
            assert!(matches!(err, ProbeError::NoDefaultRootCert { .. }), "{err}");
            let msg = err.to_string();
            assert!(msg.contains("sslrootcert"), "{msg}");
            assert!(msg.contains(&root.display().to_string()), "{msg}");
            let err = build_in(mode, None, None).err().expect("no home: fails");
            assert!(err.to_string().contains("~/.postgresql/root.crt"), "{err}");
        }
        // With root.crt present it is read (a junk one is refused by name).
        std::fs::create_dir(home.path().join(".postgresql")).unwrap();
        std::fs::write(&root, "not a certificate\n").unwrap();
        let err = build_in(SslMode::VerifyCa, None, Some(home.path().into()))
            .err()
            .expect("junk root.crt");
        assert!(
            matches!(
                err,
                ProbeError::ParseRootCert { .. } | ProbeError::NoRootCert { .. }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("root.crt"), "{err}");
        // sslrootcert wins over the default file.
        let other = home.path().join("missing.crt");
        let err = build_in(SslMode::VerifyFull, Some(&other), Some(home.path().into()))
            .err()
            .unwrap();
        assert!(err.to_string().contains("missing.crt"), "{err}");
        // prefer/require do not need it.
        assert!(build_in(SslMode::Require, None, None).is_ok());
    }
}
