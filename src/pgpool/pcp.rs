//! Runs pcp commands: render the template, run the argv without a shell
//! with `PCPPASSFILE` set and a deadline (killed past it), and read
//! `pcp_node_info`'s answer.
//!
//! pcp exits 0 even when pgpool refused a request (README "pgpool-II", pgpool/README.md), so the exit
//! status only tells whether pcp could talk to pgpool; whether an attach or
//! detach took effect is for the caller to confirm with [`Pcp::node_info`].

use super::templates::{Command, PcpTemplates, Renderer, TemplateError, Vars};
use crate::cluster::NodeName;
use crate::config::PgpoolConfig;
use crate::text::escape_controls;
use std::fmt;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

/// How much of a failed command's output goes into its error message.
const OUTPUT_IN_ERROR: usize = 400;

/// The most bytes read from each of a pcp command's stdout and stderr:
/// pcp answers in a few lines (a watchdog of many members in a few KiB).
/// A command printing more counts as failed and is killed, and what it
/// printed is dropped.
pub const OUTPUT_CAP: usize = 1 << 20;

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
    pub const ALL: [NodeStatus; 5] = [
        NodeStatus::Up,
        NodeStatus::Waiting,
        NodeStatus::Down,
        NodeStatus::Quarantine,
        NodeStatus::Unused,
    ];
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

/// The role pgpool gives a backend (`pcp_node_info`'s `Role`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Primary,
    Standby,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Standby => "standby",
        }
    }
    fn from_name(s: &str) -> Option<Role> {
        match s.to_ascii_lowercase().as_str() {
            // "main"/"replica" are the names of other clustering modes.
            "primary" | "main" => Some(Role::Primary),
            "standby" | "replica" => Some(Role::Standby),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// pgpool's view of one backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeInfo {
    pub status: NodeStatus,
    /// `None` when the answer does not say (a custom template printing
    /// only the status): such a pgpool is taken to have no known primary.
    pub role: Option<Role>,
}

impl NodeInfo {
    /// pgpool's primary, attached.
    pub fn is_attached_primary(&self) -> bool {
        self.role == Some(Role::Primary) && self.status.is_attached()
    }
}

/// Reads status and role out of `pcp_node_info`'s output: the `Status
/// Name` and `Role` lines of `-v` (labels matched exactly: 4.3 also has
/// `Backend Status Name` and `Backend Role`, which are what the backend
/// itself says), or else the terse line `host port status weight
/// status_name …`, where the status name is the fifth field in every
/// version and the role the sixth (before 4.3) or seventh (4.3+, after the
/// backend status name).
pub fn parse_node_info(out: &str) -> Result<NodeInfo, String> {
    let mut status = None;
    let mut role = None;
    for line in out.lines() {
        if let Some((key, value)) = line.split_once(':') {
            let key = key.trim();
            if key.eq_ignore_ascii_case("status name") {
                status = Some(
                    NodeStatus::from_name(value.trim())
                        .ok_or_else(|| format!("unknown status {:?}", value.trim()))?,
                );
            } else if key.eq_ignore_ascii_case("role") {
                role = Role::from_name(value.trim());
            }
        }
    }
    if let Some(status) = status {
        return Ok(NodeInfo { status, role });
    }
    let Some(line) = out.lines().find(|l| !l.trim().is_empty()) else {
        return Err("no output".to_string());
    };
    let fields: Vec<&str> = line.split_whitespace().collect();
    match fields.get(4) {
        Some(s) => {
            let status = NodeStatus::from_name(s).ok_or_else(|| {
                format!(
                    "the fifth field {s:?} of {:?} is not a status",
                    bounded(line)
                )
            })?;
            let role = fields
                .iter()
                .skip(5)
                .take(2)
                .find_map(|f| Role::from_name(f));
            Ok(NodeInfo { status, role })
        }
        None => Err(format!(
            "{:?} has fewer than five fields",
            bounded(line.trim())
        )),
    }
}

/// What `pcp_watchdog_info -v` says about the pgpool plusmoin talks to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Watchdog {
    /// `use_watchdog = off`: this pgpool is alone, its sidecar acts.
    Off,
    On {
        /// The local member's state: `LEADER` (`MASTER` before 4.2),
        /// `STANDBY`, `JOINING`, `STANDING FOR LEADER`…
        local_state: String,
        /// The leader's node name, `None` while there is none ("Not Set").
        leader: Option<String>,
        /// Whether the cluster has its quorum ("QUORUM EXIST" or "QUORUM
        /// IS ON THE EDGE"); without it pgpool itself holds failovers.
        quorum: bool,
    },
}

impl Watchdog {
    /// Whether the plusmoin beside this pgpool is the one that acts: no
    /// watchdog, or this pgpool leads a cluster that has its quorum.
    pub fn acting(&self) -> bool {
        match self {
            Watchdog::Off => true,
            Watchdog::On {
                local_state,
                quorum,
                ..
            } => *quorum && is_leader_state(local_state),
        }
    }

    /// One line for logs, `status` and `check-config`.
    pub fn describe(&self) -> String {
        match self {
            Watchdog::Off => "no watchdog: this pgpool is alone, plusmoin acts".into(),
            Watchdog::On {
                local_state,
                leader,
                quorum,
            } => {
                let leader = leader.as_deref().unwrap_or("none (election)");
                let quorum = if *quorum { "quorum" } else { "NO quorum" };
                let what = if self.acting() {
                    "this pgpool leads: plusmoin acts"
                } else {
                    "plusmoin watches only (the leader's plusmoin acts)"
                };
                format!("watchdog: this pgpool is {local_state}, leader {leader}, {quorum}: {what}")
            }
        }
    }
}

fn is_leader_state(s: &str) -> bool {
    s.eq_ignore_ascii_case("LEADER") || s.eq_ignore_ascii_case("MASTER")
}

/// Reads `pcp_watchdog_info -v`. The node list starts with the local
/// member, so the first `Status Name` after `Watchdog Node Information` is
/// this pgpool's own state. Names come from pgpool's peers' configuration:
/// their control characters are escaped here, as they are read, so no log
/// line, table or JSON output shows them raw.
pub fn parse_watchdog_info(out: &str) -> Result<Watchdog, String> {
    let mut leader = None;
    let mut quorum = None;
    let mut in_nodes = false;
    let mut local_state = None;
    for line in out.lines() {
        if line.trim_start().starts_with("Watchdog Node Information") {
            in_nodes = true;
            continue;
        }
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let (key, value) = (key.trim(), value.trim());
        if key.eq_ignore_ascii_case("Leader Node Name")
            || key.eq_ignore_ascii_case("Master Node Name")
        {
            leader = (!value.eq_ignore_ascii_case("Not Set") && !value.is_empty())
                .then(|| escape_controls(value));
        } else if key.eq_ignore_ascii_case("Quorum state") {
            let v = value.to_ascii_uppercase();
            quorum = Some(v == "QUORUM EXIST" || v == "QUORUM IS ON THE EDGE");
        } else if in_nodes && local_state.is_none() && key.eq_ignore_ascii_case("Status Name") {
            local_state = Some(escape_controls(value));
        }
    }
    match (local_state, quorum) {
        (Some(local_state), Some(quorum)) => Ok(Watchdog::On {
            local_state,
            leader,
            quorum,
        }),
        _ => Err(format!(
            "no quorum state and local member's status in {:?} (the watchdog_info template must use -v)",
            bounded(&out.split_whitespace().collect::<Vec<_>>().join(" "))
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
    #[error("{program} printed more than {cap} bytes on {stream}; killed it (pcp answers in a few lines: does the template run the right program?)")]
    TooLong {
        program: String,
        stream: &'static str,
        cap: usize,
    },
    /// `output` is pcp's, as it printed it (matched against known
    /// messages); shown escaped.
    #[error(
        "{program} failed ({status}): {}{}",
        escape_controls(output),
        hint(output)
    )]
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
        let mut child = tokio::process::Command::new(program)
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
            });
        }
        Ok(stdout)
    }

    /// pgpool's view of `node`.
    pub async fn node_info(&self, node: &NodeName, id: u32) -> Result<NodeInfo, PcpError> {
        let out = self.run(Command::NodeInfo, node, id).await?;
        parse_node_info(&out).map_err(|reason| PcpError::Unreadable {
            program: "pcp_node_info".into(),
            reason,
        })
    }

    /// Whether this pgpool runs a watchdog, and its place in it. `node` only
    /// fills the template's node variables.
    pub async fn watchdog(&self, node: &NodeName) -> Result<Watchdog, PcpError> {
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
mod tests {
    use super::*;

    #[test]
    fn the_status_shape_names_every_node_status() {
        // `/metrics` lists one series per name of the status shape.
        assert_eq!(
            NodeStatus::ALL.map(NodeStatus::as_str),
            crate::payload::PGPOOL_NODE_STATUSES
        );
    }

    #[test]
    fn terse_and_verbose_node_info_are_read() {
        // pgpool 4.3, terse.
        let terse = "127.0.0.1 5433 1 0.333333 waiting up standby standby 0 none none 2026-11-25 18:00:00\n";
        let info = |status, role| NodeInfo { status, role };
        assert_eq!(
            parse_node_info(terse),
            Ok(info(NodeStatus::Waiting, Some(Role::Standby)))
        );
        let primary =
            "127.0.0.1 5432 2 0.5 up up primary primary 0 none none 2026-11-25 18:00:00\n";
        assert_eq!(
            parse_node_info(primary),
            Ok(info(NodeStatus::Up, Some(Role::Primary)))
        );
        // pgpool 4.1, terse.
        let old = "db1 5432 3 0.500000 down standby 0 streaming async 2020-01-01 00:00:00\n";
        assert_eq!(
            parse_node_info(old),
            Ok(info(NodeStatus::Down, Some(Role::Standby)))
        );
        // Verbose: "Role", not "Backend Role" (what the server says of itself).
        let verbose = "Hostname               : 127.0.0.1\nPort                   : 5433\n\
                       Status                 : 2\nWeight                 : 0.5\n\
                       Status Name            : up\nBackend Status Name    : up\n\
                       Role                   : standby\nBackend Role           : primary\n";
        assert_eq!(
            parse_node_info(verbose),
            Ok(info(NodeStatus::Up, Some(Role::Standby)))
        );
        // A custom template printing only a status: no role known.
        assert_eq!(
            parse_node_info("h 5432 2 0.5 up\n"),
            Ok(info(NodeStatus::Up, None))
        );
        assert!(parse_node_info("").is_err());
        assert!(parse_node_info("a b c").is_err());
        assert!(parse_node_info("a b c d e f")
            .unwrap_err()
            .contains("\"e\""));
    }

    /// What pgpool 4.3 prints with use_watchdog = off (stderr, exit 0).
    const WATCHDOG_OFF: &str =
        "/bin/sh -c 'echo \"ERROR: PCP: informing watchdog info failed\" >&2; \
         echo \"DETAIL: watchdog is not enabled\" >&2'";

    fn watchdog_verbose(local: &str, leader: &str, quorum: &str) -> String {
        format!(
            "Watchdog Cluster Information \n\
             Total Nodes              : 3\n\
             Remote Nodes             : 2\n\
             Member Remote Nodes      : 2\n\
             Alive Remote Nodes       : 2\n\
             Nodes required for quorum: 2\n\
             Quorum state             : {quorum}\n\
             Local node escalation    : NO\n\
             Leader Node Name         : {leader}\n\
             Leader Host Name         : 127.0.0.1\n\n\
             Watchdog Node Information \n\
             Node Name         : 127.0.0.1:9001 Linux host\n\
             Host Name         : 127.0.0.1\n\
             Status            : 7\n\
             Status Name       : {local}\n\
             Membership Status : MEMBER\n\n\
             Node Name         : 127.0.0.1:9002 Linux host\n\
             Status Name       : LEADER\n"
        )
    }

    #[test]
    fn watchdog_info_names_the_local_state_leader_and_quorum() {
        let w = parse_watchdog_info(&watchdog_verbose(
            "STANDBY",
            "127.0.0.1:9002 Linux host",
            "QUORUM EXIST",
        ))
        .unwrap();
        assert_eq!(
            w,
            Watchdog::On {
                local_state: "STANDBY".into(),
                leader: Some("127.0.0.1:9002 Linux host".into()),
                quorum: true
            }
        );
        assert!(!w.acting(), "a standby member's plusmoin only watches");
        let w = parse_watchdog_info(&watchdog_verbose("LEADER", "me", "QUORUM EXIST")).unwrap();
        assert!(w.acting());
        let w = parse_watchdog_info(&watchdog_verbose("LEADER", "me", "QUORUM ABSENT")).unwrap();
        assert!(!w.acting(), "a leader without quorum does not act");
        let w = parse_watchdog_info(&watchdog_verbose(
            "STANDING FOR LEADER",
            "Not Set",
            "NO LEADER NODE",
        ))
        .unwrap();
        assert!(!w.acting());
        assert!(matches!(w, Watchdog::On { leader: None, .. }));
        assert!(w.describe().contains("election"), "{}", w.describe());
        assert!(Watchdog::Off.acting());
        // Terse output is not enough to tell the local member.
        assert!(
            parse_watchdog_info("3 3 YES me host\n\nme host 9999 9000 4 LEADER 0 MEMBER\n")
                .is_err()
        );
    }

    /// What a hostile pcp (or a hostile pgpool peer naming itself) could
    /// print: a window title, a screen clear, a C1 CSI, DEL, a bidi override.
    const HOSTILE: &str = "a\u{1b}]0;pwned\u{7}b\u{1b}[2Jc\u{9b}2Jd\u{7f}e\u{202e}f\rg";

    /// Whether `s` holds anything a terminal would act on.
    fn inert(s: &str) -> bool {
        !s.chars().any(|c| {
            c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
        })
    }

    #[test]
    fn control_characters_from_watchdog_info_are_escaped_when_read() {
        let w = parse_watchdog_info(&watchdog_verbose(
            &format!("STANDBY{HOSTILE}"),
            &format!("{HOSTILE}:9002 Linux host"),
            "QUORUM EXIST",
        ))
        .unwrap();
        let Watchdog::On {
            local_state,
            leader,
            ..
        } = &w
        else {
            panic!("{w:?}");
        };
        let leader = leader.as_deref().unwrap();
        assert!(inert(local_state), "{local_state:?}");
        assert!(inert(leader), "{leader:?}");
        assert!(inert(&w.describe()), "{:?}", w.describe());
        assert_eq!(
            leader,
            "a\\u{1b}]0;pwned\\u{7}b\\u{1b}[2Jc\\u{9b}2Jd\\u{7f}e\\u{202e}f\\rg:9002 Linux host"
        );
        assert!(!w.acting(), "{w:?}");
        // Unreadable: the error quotes the output, inert too.
        let e = parse_watchdog_info(&format!("Quorum state : {HOSTILE}\n")).unwrap_err();
        assert!(inert(&e), "{e:?}");
    }

    #[test]
    fn control_characters_from_node_info_never_reach_an_error_raw() {
        for out in [
            format!("Status Name : up{HOSTILE}\n"),
            format!("h 5432 2 0.5 up{HOSTILE} primary\n"),
            format!("h {HOSTILE}\n"),
        ] {
            let e = parse_node_info(&out).unwrap_err();
            assert!(inert(&e), "{e:?}");
        }
    }

    #[tokio::test]
    async fn control_characters_pcp_prints_on_failure_are_escaped_in_the_error() {
        let t = PcpTemplates {
            detach: format!("/bin/sh -c 'printf \"ERROR: {HOSTILE}\\n\" >&2; exit 1'"),
            ..PcpTemplates::default()
        };
        let pcp = Pcp::with_templates(&config("/usr/sbin"), &t, Duration::from_secs(5)).unwrap();
        let e = pcp
            .run(Command::Detach, &NodeName::new("db1", 5432), 1)
            .await
            .unwrap_err()
            .to_string();
        assert!(inert(&e), "{e:?}");
        assert!(e.contains("ERROR: a\\u{1b}]0;pwned"), "{e}");
    }

    #[tokio::test]
    async fn watchdog_not_enabled_means_off() {
        let pcp = Pcp::new(&config("/usr/sbin"), Duration::from_secs(5)).unwrap();
        let t = PcpTemplates {
            watchdog_info: WATCHDOG_OFF.into(),
            ..PcpTemplates::default()
        };
        let pcp = Pcp::with_templates(&config("/usr/sbin"), &t, pcp.timeout).unwrap();
        let node = NodeName::new("db1", 5432);
        assert_eq!(pcp.watchdog(&node).await.unwrap(), Watchdog::Off);
        let t = PcpTemplates {
            watchdog_info: "/bin/sh -c 'echo \"ERROR: connection refused\" >&2; exit 1'".into(),
            ..PcpTemplates::default()
        };
        let pcp = Pcp::with_templates(&config("/usr/sbin"), &t, pcp.timeout).unwrap();
        assert!(
            pcp.watchdog(&node).await.is_err(),
            "unreachable is not \"off\""
        );
    }

    /// Real outputs of pgpool 4.3.5, recorded by the fixture.
    fn recorded(case: &str) -> String {
        let path = format!(
            "{}/tests/data/pcp/{case}.stdout.txt",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    #[test]
    fn recorded_node_info_gives_status_and_pgpools_role() {
        use NodeStatus::*;
        let cases = [
            ("node_info_primary_up_terse", Waiting, Role::Primary),
            ("node_info_primary_up_verbose", Waiting, Role::Primary),
            ("node_info_standby_up_terse", Waiting, Role::Standby),
            ("node_info_standby_up_verbose", Waiting, Role::Standby),
            ("node_info_standby_down_terse", Down, Role::Standby),
            ("node_info_standby_down_verbose", Down, Role::Standby),
        ];
        for (case, status, role) in cases {
            let got = parse_node_info(&recorded(case)).unwrap();
            // "waiting" and "up" both mean attached; the recording caught
            // whichever pgpool showed.
            assert_eq!(
                got.status.is_attached(),
                status.is_attached(),
                "{case}: {got:?}"
            );
            assert_eq!(got.role, Some(role), "{case}");
        }
    }

    #[test]
    fn recorded_watchdog_info_says_who_acts() {
        let leader = parse_watchdog_info(&recorded("watchdog_info_leader_verbose")).unwrap();
        assert!(leader.acting(), "{leader:?}");
        let standby = parse_watchdog_info(&recorded("watchdog_info_standby_verbose")).unwrap();
        assert!(!standby.acting(), "{standby:?}");
        assert!(
            matches!(&standby, Watchdog::On { local_state, leader: Some(_), quorum: true } if local_state == "STANDBY")
        );
        for case in [
            "watchdog_info_election_00_verbose",
            "watchdog_info_election_01_verbose",
        ] {
            let w = parse_watchdog_info(&recorded(case)).unwrap();
            assert!(!w.acting(), "{case}: {w:?}");
        }
        // Terse output cannot tell the local member: refused, not guessed.
        assert!(parse_watchdog_info(&recorded("watchdog_info_leader_terse")).is_err());
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

    pub(super) fn config(bin_dir: &str) -> PgpoolConfig {
        PgpoolConfig {
            pcp_host: "127.0.0.1".into(),
            pcp_port: 9898,
            pcp_user: "pgpool".into(),
            pcppass_file: "/nonexistent/pcppass".into(),
            pgpool_conf: None,
            bin_dir: bin_dir.into(),
            templates: Vec::new(),
            pcp_timeout: Duration::from_secs(20),
            node_ids: Default::default(),
            written: crate::config::PgpoolWritten {
                section: crate::config::Position { line: 1, column: 1 },
                pgpool_conf: None,
                node_ids: Default::default(),
            },
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
            watchdog_info: WATCHDOG_OFF.into(),
        };
        let pcp =
            Pcp::with_templates(&config("/usr/sbin"), &t, Duration::from_millis(300)).unwrap();
        assert_eq!(
            pcp.node_info(&node, 1).await.unwrap().status,
            NodeStatus::Up
        );
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

#[cfg(test)]
mod output_cap_tests {
    use super::*;

    fn config() -> PgpoolConfig {
        super::tests::config("/usr/sbin")
    }

    /// A `pcp_watchdog_info` printing far more than any pgpool would (20
    /// times the cap, then exiting 0) is a failure, not an answer.
    #[tokio::test]
    async fn a_command_printing_past_the_cap_fails() {
        let t = PcpTemplates {
            watchdog_info: format!("/bin/sh -c 'head -c {} /dev/zero'", 20 * OUTPUT_CAP),
            ..PcpTemplates::default()
        };
        let pcp = Pcp::with_templates(&config(), &t, Duration::from_secs(20)).unwrap();
        let node = NodeName::new("db1", 5432);
        let e = pcp.watchdog(&node).await.unwrap_err();
        assert!(
            matches!(
                e,
                PcpError::TooLong {
                    stream: "stdout",
                    cap: OUTPUT_CAP,
                    ..
                }
            ),
            "{e}"
        );
        let text = e.to_string();
        assert!(
            text.starts_with("/bin/sh printed more than 1048576 bytes on stdout; killed it"),
            "{text}"
        );
        // Up to the cap is an answer (here one pcp cannot parse).
        let t = PcpTemplates {
            watchdog_info: format!("/bin/sh -c 'head -c {OUTPUT_CAP} /dev/zero'"),
            ..PcpTemplates::default()
        };
        let pcp = Pcp::with_templates(&config(), &t, Duration::from_secs(20)).unwrap();
        let e = pcp.watchdog(&node).await.unwrap_err();
        assert!(matches!(e, PcpError::Unreadable { .. }), "{e}");
    }

    /// Past the cap the command is killed and reaped at once, not waited
    /// for: here it would go on for 30 s after printing.
    #[tokio::test]
    async fn a_command_printing_past_the_cap_is_killed_and_reaped() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        let t = PcpTemplates {
            node_info: format!(
                "/bin/sh -c 'echo $$ > {}; head -c {} /dev/zero >&2; exec sleep 30'",
                pid_file.display(),
                2 * OUTPUT_CAP
            ),
            ..PcpTemplates::default()
        };
        let pcp = Pcp::with_templates(&config(), &t, Duration::from_secs(10)).unwrap();
        let started = std::time::Instant::now();
        let e = pcp
            .node_info(&NodeName::new("db1", 5432), 1)
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                PcpError::TooLong {
                    stream: "stderr",
                    ..
                }
            ),
            "{e}"
        );
        assert!(started.elapsed() < Duration::from_secs(5), "waited for it");
        let pid = std::fs::read_to_string(&pid_file).unwrap();
        let proc = std::path::Path::new("/proc").join(pid.trim());
        assert!(!proc.exists(), "pid {} not reaped", pid.trim());
    }
}
