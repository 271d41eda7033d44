//! Running PostgreSQL's command-line tools for the sandbox: as the `postgres`
//! OS user when we are root (PostgreSQL refuses to run as root), with a
//! clean environment, a deadline, and errors that carry the command line and
//! its stderr.

use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::unistd::{Gid, Uid};

use super::SandboxError;

/// Libpq variables from our own environment that would silently redirect a
/// tool to another server, user or database.
const PG_ENV: &[&str] = &[
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGDATABASE",
    "PGUSER",
    "PGPASSWORD",
    "PGPASSFILE",
    "PGSERVICE",
    "PGSERVICEFILE",
    "PGOPTIONS",
    "PGSSLMODE",
    "PGDATA",
    "PGAPPNAME",
    "PGTARGETSESSIONATTRS",
];

/// Runs tools in `cwd` as `owner` (None: as ourselves).
#[derive(Debug)]
pub(crate) struct Runner {
    pub(crate) owner: Option<(Uid, Gid)>,
    pub(crate) cwd: PathBuf,
}

/// What a finished command printed, and its command line (secret masked)
/// for errors about what it printed.
#[derive(Debug)]
pub struct Output {
    pub command: String,
    pub stdout: String,
}

impl Runner {
    /// Runs `program args` and waits at most `timeout` for it. `secret`, when
    /// given, is masked in the command line kept for errors.
    pub(crate) fn run<I, S>(
        &self,
        program: &Path,
        args: I,
        secret: Option<&str>,
        timeout: Duration,
    ) -> Result<Output, SandboxError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new(program);
        cmd.args(args).current_dir(&self.cwd);
        if let Some((uid, gid)) = self.owner {
            // std drops supplementary groups when it changes the uid.
            cmd.uid(uid.as_raw()).gid(gid.as_raw());
            cmd.env("HOME", &self.cwd)
                .env("USER", "postgres")
                .env("LOGNAME", "postgres");
        }
        run_command(cmd, secret, timeout, |_| false)
    }

    /// Gives `path` to the server's OS user so the servers (and pg_rewind)
    /// may rewrite what we wrote as root.
    pub(crate) fn chown(&self, path: &Path) -> Result<(), SandboxError> {
        if let Some((uid, gid)) = self.owner {
            nix::unistd::chown(path, Some(uid), Some(gid)).map_err(|e| SandboxError::Io {
                what: format!("chown {} to postgres", path.display()),
                source: e.into(),
            })?;
        }
        Ok(())
    }

    /// Writes a whole file, owned by the server's OS user.
    pub(crate) fn write_file(&self, path: &Path, contents: &str) -> Result<(), SandboxError> {
        std::fs::write(path, contents).map_err(|source| SandboxError::Io {
            what: format!("write {}", path.display()),
            source,
        })?;
        self.chown(path)
    }
}

/// Runs `cmd` (program, arguments, directory, user and any variables of
/// its own already set) to the end, within `timeout`: stdin closed, output
/// captured, the C locale, and none of our libpq variables except those
/// `cmd` sets on purpose. It fails on a non-zero exit, and also when
/// `stderr_fails` says its stderr reports a failure (tools that exit 0 on
/// a refusal). `secret`, when given, is masked in the command line kept
/// for logs and errors.
pub(crate) fn run_command(
    cmd: Command,
    secret: Option<&str>,
    timeout: Duration,
    stderr_fails: fn(&str) -> bool,
) -> Result<Output, SandboxError> {
    let raw = run_capture(cmd, secret, timeout)?;
    let stderr = raw.stderr.trim().to_owned();
    match raw.status {
        None => Err(SandboxError::CommandTimeout {
            command: raw.command,
            timeout,
            stderr,
        }),
        Some(status) if status.success() && !stderr_fails(&stderr) => Ok(Output {
            command: raw.command,
            stdout: raw.stdout,
        }),
        Some(status) => Err(SandboxError::Failed {
            command: raw.command,
            status: status.to_string(),
            stderr,
        }),
    }
}

/// What a command printed, verbatim, and how it ended.
pub(crate) struct Captured {
    pub(crate) command: String,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
    /// None: killed at the deadline.
    pub(crate) status: Option<std::process::ExitStatus>,
}

/// [`run_command`]'s environment and deadline, but whatever the command
/// printed and however it ended is returned as is.
pub(crate) fn run_capture(
    mut cmd: Command,
    secret: Option<&str>,
    timeout: Duration,
) -> Result<Captured, SandboxError> {
    let mut command_line = command_line(&cmd);
    if let Some(secret) = secret.filter(|s| !s.is_empty()) {
        command_line = command_line.replace(secret, "***");
    }
    let own: Vec<std::ffi::OsString> = cmd.get_envs().map(|(k, _)| k.to_owned()).collect();
    for var in PG_ENV {
        if !own.iter().any(|k| k == var) {
            cmd.env_remove(var);
        }
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("LC_ALL", "C")
        // Bounds a connection attempt to a frozen server.
        .env("PGCONNECT_TIMEOUT", "10");
    tracing::debug!(command = %command_line, "sandbox: running");
    let mut child = cmd.spawn().map_err(|source| SandboxError::Spawn {
        command: command_line.clone(),
        source,
    })?;
    // Read both pipes while waiting so a chatty tool never blocks on a
    // full pipe. (Servers are always started with their output going to a
    // log file, so no long-lived process keeps these pipes open.)
    let stdout = child.stdout.take().map(drain);
    let stderr = child.stderr.take().map(drain);
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(10));
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Err(source) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(SandboxError::Spawn {
                    command: command_line,
                    source,
                });
            }
        }
    };
    Ok(Captured {
        command: command_line,
        stdout: stdout.map(join).unwrap_or_default(),
        stderr: stderr.map(join).unwrap_or_default(),
        status,
    })
}

/// A command as one shell-quoted line, for logs and errors.
pub(crate) fn command_line(cmd: &Command) -> String {
    let mut words = vec![cmd.get_program().to_string_lossy().into_owned()];
    words.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    shell_words::join(&words)
}

fn drain<R: Read + Send + 'static>(mut pipe: R) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

fn join(handle: thread::JoinHandle<String>) -> String {
    handle.join().unwrap_or_default()
}
