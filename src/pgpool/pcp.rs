//! Runs pcp commands: render the template, run the argv without a shell
//! with `PCPPASSFILE` set and a deadline (killed past it), and read
//! `pcp_node_info`'s answer.
//!
//! pcp exits 0 even when pgpool refused a request (SPEC §5), so the exit
//! status only tells whether pcp could talk to pgpool; whether an attach or
//! detach took effect is for the caller to confirm with [`Pcp::node_info`].

use super::templates::{Command, PcpTemplates, Renderer, TemplateError, Vars};
use crate::cluster::NodeName;
use crate::config::PgpoolConfig;
use std::fmt;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

/// How much of a failed command's output goes into its error message.
const OUTPUT_IN_ERROR: usize = 400;

/// pgpool's status of one backend, as `pcp_node_info` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeStatus {
    /// Attached, connections open.
    Up,
    /// Attached, no connection made yet.
    Waiting,
    Down,
    /// Detached by the watchdog's consensus logic: pgpool's business.
    Quarantine,
    /// Not configured, or not initialised yet.
    Unused,
}

impl NodeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeStatus::Up => "up",
            NodeStatus::Waiting => "waiting",
            NodeStatus::Down => "down",
            NodeStatus::Quarantine => "quarantine",
            NodeStatus::Unused => "unused",
        }
    }
    fn from_name(s: &str) -> Option<NodeStatus> {
        Some(match s.to_ascii_lowercase().as_str() {
            "up" => NodeStatus::Up,
            "waiting" => NodeStatus::Waiting,
            "down" => NodeStatus::Down,
            "quarantine" => NodeStatus::Quarantine,
            "unused" => NodeStatus::Unused,
            _ => return None,
        })
    }
    /// Attached in pgpool's sense: it sends queries there.
    pub fn is_attached(self) -> bool {
        matches!(self, NodeStatus::Up | NodeStatus::Waiting)
    }
}

impl fmt::Display for NodeStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Reads the status out of `pcp_node_info`'s output: the `Status Name`
/// line of `-v`, or else the fifth field of the terse line (`host port
/// status weight status_name …`, the same in pgpool 4.1–4.5).
pub fn parse_node_info(out: &str) -> Result<NodeStatus, String> {
    for line in out.lines() {
        if let Some((key, value)) = line.split_once(':') {
            if key.trim().eq_ignore_ascii_case("status name") {
                return NodeStatus::from_name(value.trim())
                    .ok_or_else(|| format!("unknown status {:?}", value.trim()));
            }
        }
    }
    let Some(line) = out.lines().find(|l| !l.trim().is_empty()) else {
        return Err("no output".to_string());
    };
    let fields: Vec<&str> = line.split_whitespace().collect();
    match fields.get(4) {
        Some(s) => NodeStatus::from_name(s).ok_or_else(|| {
            format!(
                "the fifth field {s:?} of {:?} is not a status",
                bounded(line)
            )
        }),
        None => Err(format!(
            "{:?} has fewer than five fields",
            bounded(line.trim())
        )),
    }
}

fn bounded(s: &str) -> String {
    let mut out: String = s.chars().take(OUTPUT_IN_ERROR).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

/// Why a pcp command gave no usable answer. Messages name the command (never
/// a password: pcp reads it from the file) and give a hint when pcp's output
/// says what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum PcpError {
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
    #[error("{program} failed ({status}): {output}{}", hint(output))]
    Failed {
        program: String,
        status: String,
        output: String,
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

/// Runs the pcp commands of one `pgpool` section.
#[derive(Debug)]
pub struct Pcp {
    renderer: Renderer,
    pcp_host: String,
    pcp_port: u16,
    pcp_user: String,
    bin_dir: String,
    pcppass_file: PathBuf,
    timeout: Duration,
}

impl Pcp {
    pub fn new(c: &PgpoolConfig, timeout: Duration) -> Result<Pcp, PcpError> {
        Self::with_templates(c, &c.templates, timeout)
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

    pub fn vars(&self, node: &NodeName, id: u32) -> Vars {
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

    pub fn argv(&self, c: Command, node: &NodeName, id: u32) -> Result<Vec<String>, PcpError> {
        self.renderer
            .render(c, &self.vars(node, id))
            .map_err(|source| PcpError::Template { command: c, source })
    }

    /// Runs command `c` for `node`; its stdout when it exits 0.
    pub async fn run(&self, c: Command, node: &NodeName, id: u32) -> Result<String, PcpError> {
        let argv = self.argv(c, node, id)?;
        let Some((program, args)) = argv.split_first() else {
            return Err(PcpError::Template {
                command: c,
                source: TemplateError::Empty,
            });
        };
        let child = tokio::process::Command::new(program)
            .args(args)
            .env("PCPPASSFILE", &self.pcppass_file)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| PcpError::Spawn {
                program: program.clone(),
                source,
            })?;
        // On timeout the future, and with it the child, is dropped: killed.
        let out = match tokio::time::timeout(self.timeout, child.wait_with_output()).await {
            Ok(Ok(out)) => out,
            Ok(Err(source)) => {
                return Err(PcpError::Spawn {
                    program: program.clone(),
                    source,
                })
            }
            Err(_) => {
                return Err(PcpError::Timeout {
                    program: program.clone(),
                    timeout: self.timeout,
                })
            }
        };
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr);
        // pcp exits 0 after some refusals (a bad password, say): its
        // ERROR/FATAL line on stderr is the only sign.
        if !out.status.success() || reports_error(&stderr) {
            let both = format!("{} {}", stderr.trim(), stdout.trim());
            let output = bounded(&both.split_whitespace().collect::<Vec<_>>().join(" "));
            return Err(PcpError::Failed {
                program: program.clone(),
                status: out.status.to_string(),
                output,
            });
        }
        Ok(stdout)
    }

    /// pgpool's view of `node`.
    pub async fn node_info(&self, node: &NodeName, id: u32) -> Result<NodeStatus, PcpError> {
        let out = self.run(Command::NodeInfo, node, id).await?;
        parse_node_info(&out).map_err(|reason| PcpError::Unreadable {
            program: "pcp_node_info".into(),
            reason,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terse_and_verbose_node_info_are_read() {
        // pgpool 4.3, terse.
        let terse = "127.0.0.1 5433 1 0.333333 waiting up standby standby 0 none none 2026-11-25 18:00:00\n";
        assert_eq!(parse_node_info(terse), Ok(NodeStatus::Waiting));
        // pgpool 4.1, terse.
        let old = "db1 5432 3 0.500000 down standby 0 streaming async 2020-01-01 00:00:00\n";
        assert_eq!(parse_node_info(old), Ok(NodeStatus::Down));
        let verbose = "Hostname               : 127.0.0.1\nPort                   : 5433\n\
                       Status                 : 2\nWeight                 : 0.5\n\
                       Status Name            : up\nBackend Status Name    : up\n";
        assert_eq!(parse_node_info(verbose), Ok(NodeStatus::Up));
        assert!(parse_node_info("").is_err());
        assert!(parse_node_info("a b c").is_err());
        assert!(parse_node_info("a b c d e f")
            .unwrap_err()
            .contains("\"e\""));
    }

    #[test]
    fn failures_carry_a_hint() {
        let e = PcpError::Failed {
            program: "pcp_node_info".into(),
            status: "exit status: 1".into(),
            output: "FATAL: authentication failed for user \"pgpool\"".into(),
        };
        assert!(e.to_string().contains("pcppass_file"), "{e}");
        let e = PcpError::Failed {
            program: "pcp_node_info".into(),
            status: "exit status: 1".into(),
            output:
                "ERROR: connection to host \"127.0.0.1\" failed with error \"Connection refused\""
                    .into(),
        };
        assert!(e.to_string().contains("unreachable"), "{e}");
    }

    fn config(bin_dir: &str) -> PgpoolConfig {
        PgpoolConfig {
            pcp_host: "127.0.0.1".into(),
            pcp_port: 9898,
            pcp_user: "pgpool".into(),
            pcppass_file: "/nonexistent/pcppass".into(),
            pgpool_conf: None,
            bin_dir: bin_dir.into(),
            templates: PcpTemplates::default(),
            node_ids: Default::default(),
        }
    }

    #[tokio::test]
    async fn commands_run_without_shell_with_pcppassfile_and_are_killed_on_timeout() {
        let node = NodeName::new("db1", 5432);
        let t = PcpTemplates {
            // Prints what pcp_node_info would, with PCPPASSFILE as the host.
            node_info: "/usr/bin/env sh -c 'echo \"$PCPPASSFILE\" 5432 2 0.5 up' x {{host}}".into(),
            attach: "/bin/sleep 5".into(),
            detach: "/bin/sh -c 'echo nope >&2; exit 3'".into(),
        };
        let pcp =
            Pcp::with_templates(&config("/usr/sbin"), &t, Duration::from_millis(300)).unwrap();
        assert_eq!(pcp.node_info(&node, 1).await.unwrap(), NodeStatus::Up);
        let out = pcp.run(Command::NodeInfo, &node, 1).await.unwrap();
        assert!(out.starts_with("/nonexistent/pcppass "), "{out}");
        let started = std::time::Instant::now();
        let e = pcp.run(Command::Attach, &node, 1).await.unwrap_err();
        assert!(matches!(e, PcpError::Timeout { .. }), "{e}");
        assert!(started.elapsed() < Duration::from_secs(3));
        let e = pcp.run(Command::Detach, &node, 1).await.unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");
        // Exit 0 with a FATAL line is a failure too.
        let t = PcpTemplates {
            attach: "/bin/sh -c 'echo \"FATAL:  authentication failed\" >&2'".into(),
            ..PcpTemplates::default()
        };
        let pcp = Pcp::with_templates(&config("/usr/sbin"), &t, Duration::from_secs(5)).unwrap();
        let e = pcp.run(Command::Attach, &node, 1).await.unwrap_err();
        assert!(e.to_string().contains("pcppass_file"), "{e}");
        let e = Pcp::new(&config("/nonexistent/bin"), Duration::from_secs(1))
            .unwrap()
            .run(Command::Attach, &node, 1)
            .await
            .unwrap_err();
        assert!(matches!(e, PcpError::Spawn { .. }), "{e}");
    }
}
