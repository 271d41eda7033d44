//! Runs pcp commands: render the template, run the argv without a shell
//! with `PCPPASSFILE` set and a deadline (killed past it), and read
//! `pcp_node_info`'s answer (the reading itself is [`parse`]'s).
//!
//! pcp exits 0 even when pgpool refused a request (README "pgpool-II", pgpool/README.md), so the exit
//! status only tells whether pcp could talk to pgpool; whether an attach or
//! detach took effect is for the caller to confirm with [`Pcp::node_info`].

use super::templates::{Command, PcpTemplates, Renderer, TemplateError, Vars};
use crate::cluster::NodeName;
use crate::config::PgpoolConfig;
use crate::text::escape_controls;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

mod parse;

use parse::bounded;
#[cfg(test)]
use parse::Delay;
pub(crate) use parse::{
    parse_node_info, parse_watchdog_info, NodeInfo, NodeStatus, Role, Watchdog,
};

/// The most bytes read from each of a pcp command's stdout and stderr:
/// pcp answers in a few lines (a watchdog of many members in a few KiB).
/// A command printing more counts as failed and is killed, and what it
/// printed is dropped.
const OUTPUT_CAP: usize = 1 << 20;

/// Why a pcp command gave no usable answer. Messages name the command (never
/// a password: pcp reads it from the file) and give a hint when pcp's output
/// says what is wrong.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PcpError {
    #[error("cannot render the {command} template: {source}")]
    Template {
        command: Command,
        #[source]
        source: TemplateError,
    },
    #[error("cannot start {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} did not answer within {} s; killed it", timeout.as_secs_f64())]
    Timeout { program: String, timeout: Duration },
    #[error("{program} printed more than {cap} bytes on {stream}; killed it (pcp answers in a few lines: does the template run the right program?)")]
    TooLong {
        program: String,
        stream: &'static str,
        cap: usize,
    },
    /// `output` is pcp's, as it printed it (matched against known
    /// messages); shown escaped.
    /// `pcppass` is what is wrong with the pcppass file, when something
    /// is (pcp then has no password: it fails, or from pgpool-II 4.7 asks
    /// for one, which plusmoin never lets it do).
    #[error(
        "{program} failed ({status}): {}{}",
        escape_controls(output),
        pcppass.as_ref().map_or_else(|| hint(output).to_owned(), |p| format!(" ({p})"))
    )]
    Failed {
        program: String,
        status: String,
        output: String,
        pcppass: Option<String>,
    },
    #[error("cannot understand {program}'s answer: {reason}")]
    Unreadable { program: String, reason: String },
}

/// What pcp's messages mean for an operator.
fn hint(output: &str) -> &'static str {
    let o = output.to_ascii_lowercase();
    if o.contains("authentication failed")
        || o.contains("password")
        || o.contains("authorization failed")
    {
        " (pgpool refused the pcp user or password: check pcp_user, the pcppass_file line \
         host:port:user:password, its mode 0600, and pcp.conf)"
    } else if o.contains("connection refused")
        || o.contains("no such file")
        || o.contains("could not connect")
        || o.contains("connection to host")
        || o.contains("connection to socket")
        || o.contains("timed out")
        || o.contains("unable to read data from socket")
    {
        " (pgpool's pcp port is unreachable: is pgpool running, and are pcp_host/pcp_port right?)"
    } else {
        ""
    }
}

/// Whether pcp's stderr reports a refusal (`ERROR:`/`FATAL:` lines, as
/// libpq prints them).
fn reports_error(stderr: &str) -> bool {
    stderr.lines().any(|l| {
        let l = l.trim_start();
        l.starts_with("ERROR") || l.starts_with("FATAL")
    })
}

/// Why a command's output could not be read whole.
enum Capture {
    /// More than [`OUTPUT_CAP`] bytes on this stream.
    TooLong(&'static str),
    Io(std::io::Error),
}

/// All of `stream` (`name`: stdout or stderr), if it ends within
/// [`OUTPUT_CAP`] bytes; never more than one byte past it is read.
async fn read_capped<R: tokio::io::AsyncRead + Unpin>(
    stream: Option<R>,
    name: &'static str,
) -> Result<Vec<u8>, Capture> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    if let Some(r) = stream {
        r.take(OUTPUT_CAP as u64 + 1)
            .read_to_end(&mut buf)
            .await
            .map_err(Capture::Io)?;
    }
    if buf.len() > OUTPUT_CAP {
        return Err(Capture::TooLong(name));
    }
    Ok(buf)
}

/// Runs the pcp commands of one `pgpool` section.
#[derive(Debug)]
pub(crate) struct Pcp {
    renderer: Renderer,
    pcp_host: String,
    pcp_port: u16,
    pcp_user: String,
    bin_dir: String,
    pcppass_file: PathBuf,
    timeout: Duration,
}

impl Pcp {
    pub(crate) fn new(c: &PgpoolConfig, timeout: Duration) -> Result<Pcp, PcpError> {
        Self::with_templates(c, &PcpTemplates::from_config(&c.templates), timeout)
    }

    fn with_templates(
        c: &PgpoolConfig,
        t: &PcpTemplates,
        timeout: Duration,
    ) -> Result<Pcp, PcpError> {
        let renderer =
            Renderer::new(t).map_err(|(command, source)| PcpError::Template { command, source })?;
        Ok(Pcp {
            renderer,
            pcp_host: c.pcp_host.clone(),
            pcp_port: c.pcp_port,
            pcp_user: c.pcp_user.clone(),
            bin_dir: c.bin_dir.display().to_string(),
            pcppass_file: c.pcppass_file.clone(),
            timeout,
        })
    }

    fn vars(&self, node: &NodeName, id: u32) -> Vars {
        Vars {
            node_id: id,
            host: node.host.clone(),
            port: node.port,
            pcp_host: self.pcp_host.clone(),
            pcp_port: self.pcp_port,
            pcp_user: self.pcp_user.clone(),
            bin_dir: self.bin_dir.clone(),
        }
    }

    pub(crate) fn argv(
        &self,
        c: Command,
        node: &NodeName,
        id: u32,
    ) -> Result<Vec<String>, PcpError> {
        self.renderer
            .render(c, &self.vars(node, id))
            .map_err(|source| PcpError::Template { command: c, source })
    }

    /// Runs command `c` for `node`; its stdout when it exits 0.
    pub(crate) async fn run(
        &self,
        c: Command,
        node: &NodeName,
        id: u32,
    ) -> Result<String, PcpError> {
        let argv = self.argv(c, node, id)?;
        let Some((program, args)) = argv.split_first() else {
            return Err(PcpError::Template {
                command: c,
                source: TemplateError::Empty,
            });
        };
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args)
            .env("PCPPASSFILE", &self.pcppass_file)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        // pcp asks for a password on /dev/tty when it finds none (-W, and
        // from pgpool-II 4.7 whenever the pcppass file gives none). In a
        // session of its own it has no terminal: it reads stdin
        // (/dev/null) instead, gets no password and fails at once rather
        // than wait for a user at the pcp_timeout.
        // SAFETY: setsid is async-signal-safe; nothing else runs between
        // fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                nix::unistd::setsid()
                    .map(drop)
                    .map_err(std::io::Error::from)
            });
        }
        let mut child = cmd.spawn().map_err(|source| PcpError::Spawn {
            program: program.clone(),
            source,
        })?;
        // Both streams at once (a child blocked writing one would never
        // close the other), each up to OUTPUT_CAP; the first over it ends
        // the reading.
        let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
        let run = async {
            let (out, err) =
                tokio::try_join!(read_capped(stdout, "stdout"), read_capped(stderr, "stderr"))?;
            let status = child.wait().await.map_err(Capture::Io)?;
            Ok::<_, Capture>((status, out, err))
        };
        let outcome = tokio::time::timeout(self.timeout, run).await;
        let (status, out, err) = match outcome {
            Ok(Ok(done)) => done,
            failed => {
                // Killed and reaped, whatever it was doing.
                let _ = child.kill().await;
                let program = program.clone();
                return Err(match failed {
                    Ok(Err(Capture::TooLong(stream))) => PcpError::TooLong {
                        program,
                        stream,
                        cap: OUTPUT_CAP,
                    },
                    Ok(Err(Capture::Io(source))) => PcpError::Spawn { program, source },
                    _ => PcpError::Timeout {
                        program,
                        timeout: self.timeout,
                    },
                });
            }
        };
        let stdout = String::from_utf8_lossy(&out).into_owned();
        let stderr = String::from_utf8_lossy(&err);
        // pcp exits 0 after some refusals (a bad password, say): its
        // ERROR/FATAL line on stderr is the only sign.
        if !status.success() || reports_error(&stderr) {
            let both = format!("{} {}", stderr.trim(), stdout.trim());
            let output = bounded(&both.split_whitespace().collect::<Vec<_>>().join(" "));
            return Err(PcpError::Failed {
                program: program.clone(),
                status: status.to_string(),
                output,
                pcppass: super::pcppass_problem(&self.pcppass_file),
            });
        }
        Ok(stdout)
    }

    /// pgpool's view of `node`.
    pub(crate) async fn node_info(&self, node: &NodeName, id: u32) -> Result<NodeInfo, PcpError> {
        let out = self.run(Command::NodeInfo, node, id).await?;
        let info = parse_node_info(&out).map_err(|reason| PcpError::Unreadable {
            program: "pcp_node_info".into(),
            reason,
        })?;
        tracing::trace!(
            %node,
            pgpool_id = id,
            status = %info.status,
            role = info.role.map_or("?", Role::as_str),
            delay = %info.delay.map_or_else(|| "?".to_owned(), |d| d.to_string()),
            "pgpool: pcp_node_info"
        );
        Ok(info)
    }

    /// Whether this pgpool runs a watchdog, and its place in it. `node` only
    /// fills the template's node variables.
    pub(crate) async fn watchdog(&self, node: &NodeName) -> Result<Watchdog, PcpError> {
        match self.run(Command::WatchdogInfo, node, 0).await {
            Ok(out) => parse_watchdog_info(&out).map_err(|reason| PcpError::Unreadable {
                program: "pcp_watchdog_info".into(),
                reason,
            }),
            // pgpool refuses with "watchdog is not enabled" (on stderr, exit
            // 0 or 1 depending on the release).
            Err(PcpError::Failed { output, .. }) if output.contains("watchdog is not enabled") => {
                Ok(Watchdog::Off)
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests;
