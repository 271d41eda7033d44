//! pgpool's view of the backends, through pcp: running the pcp tools and
//! reading their answers (attaching, detaching and `SHOW pool_nodes` are
//! the test kit's, `plusmoin_kit::sandbox`).

use std::process::Command;

use super::{NodeInfo, Output, PcpOutput, Pgpool, COMMAND_TIMEOUT, PCP_USER};
use crate::demo::sandbox::run::run_capture;
use crate::demo::sandbox::{SandboxError, HOST};

impl Pgpool {
    /// pgpool's view of backend `id` through `pcp_node_info -v`.
    ///
    /// pgpool 4.3's pcp_node_info also queries the backends (for
    /// `pg_status`/`pg_role`), so it fails now and then while a backend is
    /// going down ("FATAL: unable to read data from DB node N"): such
    /// failures are retried a few times before they are returned.
    pub fn node_info(&self, id: usize) -> Result<NodeInfo, SandboxError> {
        super::retry_transient(|| self.node_info_once(id))
    }

    /// The status pgpool reports for backend `id` ("up", "waiting", "down",
    /// "quarantine", "unused").
    pub fn node_status(&self, id: usize) -> Result<String, SandboxError> {
        Ok(self.node_info(id)?.status)
    }

    pub(super) fn node_info_once(&self, id: usize) -> Result<NodeInfo, SandboxError> {
        self.check_id(id)?;
        let id_arg = id.to_string();
        let out = self.pcp("pcp_node_info", &["-v", "-n", &id_arg])?;
        parse_node_info(&out.stdout).ok_or(SandboxError::Unexpected {
            command: out.command,
            output: out.stdout,
        })
    }

    /// Runs `pcp_<tool> -h -p -U -w args` with our pcppass file. pcp exits
    /// 0 even when pgpool refused, so an ERROR or FATAL on stderr is a
    /// failure too.
    pub fn pcp(&self, tool: &str, args: &[&str]) -> Result<Output, SandboxError> {
        let port = self.pcp_port.to_string();
        let mut cmd = Command::new(self.bin.join(tool));
        cmd.args(["-h", HOST, "-p", &port, "-U", PCP_USER, "-w"])
            .args(args)
            .env("PCPPASSFILE", &self.pcppass);
        self.run(cmd, None)
    }

    /// Runs `pcp_<tool> -h 127.0.0.1 -p <pcp port> -U pgpool -w args`
    /// with our pcppass file and returns what it printed and its exit code
    /// as they are, refusals included (for recording outputs, and for tests
    /// of how pcp behaves). `tool` is the program's name, e.g.
    /// `pcp_watchdog_info`.
    pub fn pcp_raw(&self, tool: &str, args: &[&str]) -> Result<PcpOutput, SandboxError> {
        let port = self.pcp_port.to_string();
        let mut cmd = Command::new(self.bin.join(tool));
        cmd.args(["-h", HOST, "-p", &port, "-U", PCP_USER, "-w"])
            .args(args)
            .env("PCPPASSFILE", &self.pcppass)
            .current_dir(self.dir());
        let c = run_capture(cmd, None, COMMAND_TIMEOUT)?;
        Ok(PcpOutput {
            command: c.command,
            stdout: c.stdout,
            stderr: c.stderr,
            exit_code: c.status.and_then(|s| s.code()),
        })
    }
}

/// pcp_node_info's answer, verbose (`Status Name : up`) or terse
/// (`host port status weight status_name pg_status role pg_role delay
/// repl_state sync_state date time`); None when it is neither.
fn parse_node_info(out: &str) -> Option<NodeInfo> {
    let verbose: Vec<(&str, &str)> = out
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim(), v.trim()))
        .collect();
    let field = |name: &str| {
        verbose
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.to_string())
    };
    if let Some(code) = field("Status") {
        let status = field("Status Name")
            .filter(|s| !s.is_empty())
            .or_else(|| status_from_code(&code))?;
        return Some(NodeInfo {
            status,
            pg_status: field("Backend Status Name").unwrap_or_default(),
            role: field("Role").unwrap_or_default(),
            replication_state: field("Replication State").unwrap_or_default(),
        });
    }
    let line = out.lines().find(|l| !l.trim().is_empty())?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let code = words.get(2)?;
    code.parse::<u32>().ok()?;
    let status = match words.get(4) {
        Some(name) if name.chars().all(|c| c.is_ascii_alphabetic()) => name.to_string(),
        _ => status_from_code(code)?,
    };
    let word = |i: usize| words.get(i).map_or_else(String::new, |w| w.to_string());
    Some(NodeInfo {
        status,
        pg_status: word(5),
        role: word(6),
        replication_state: word(9),
    })
}

/// pgpool's BACKEND_STATUS codes, for an answer without a status name.
fn status_from_code(code: &str) -> Option<String> {
    let name = match code.trim() {
        "0" => "unused",
        "1" => "waiting",
        "2" => "up",
        "3" => "down",
        _ => return None,
    };
    Some(name.to_owned())
}

/// pcp and psql print their refusals as `ERROR:`/`FATAL:` lines.
pub(super) fn reports_error(stderr: &str) -> bool {
    stderr.lines().any(|l| {
        let l = l.trim_start();
        l.starts_with("ERROR") || l.starts_with("FATAL") || l.contains("error:")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_terse_node_info() {
        let info = parse_node_info(
            "127.0.0.1 25431 1 0.500000 waiting up standby standby 0 streaming async 2026-11-25 18:40:07\n",
        );
        assert_eq!(
            info,
            Some(NodeInfo {
                status: "waiting".into(),
                pg_status: "up".into(),
                role: "standby".into(),
                replication_state: "streaming".into(),
            })
        );
        let down = parse_node_info(
            "127.0.0.1 25431 3 0.500000 down down standby unknown 0 none none 2026-11-25 18:40:31",
        );
        assert_eq!(down.map(|i| i.status), Some("down".to_owned()));
    }

    #[test]
    fn parses_recorded_node_info() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/pcp/");
        let read = |name: &str| {
            std::fs::read_to_string(format!("{dir}{name}.stdout.txt")).expect("recorded output")
        };
        for form in ["verbose", "terse"] {
            let primary = parse_node_info(&read(&format!("node_info_primary_up_{form}")));
            assert_eq!(
                primary.map(|i| i.role),
                Some("primary".to_owned()),
                "{form}"
            );
            let standby =
                parse_node_info(&read(&format!("node_info_standby_up_{form}"))).expect(form);
            assert_eq!(standby.status, "waiting");
            assert_eq!(standby.replication_state, "streaming");
            let down = parse_node_info(&read(&format!("node_info_standby_down_{form}")));
            assert_eq!(down.map(|i| i.status), Some("down".to_owned()), "{form}");
        }
    }

    #[test]
    fn terse_node_info_without_a_name_uses_the_code() {
        let info = parse_node_info("db1 5432 3 0.5");
        assert_eq!(info.map(|i| i.status), Some("down".to_owned()));
        let info = parse_node_info("db1 5432 2 0.5 0.3");
        assert_eq!(info.map(|i| i.status), Some("up".to_owned()));
    }

    #[test]
    fn parses_verbose_node_info() {
        let out = "Hostname               : 127.0.0.1\n\
                   Port                   : 25431\n\
                   Status                 : 1\n\
                   Weight                 : 0.500000\n\
                   Status Name            : waiting\n\
                   Backend Status Name    : up\n\
                   Role                   : standby\n\
                   Backend Role           : standby\n\
                   Replication Delay      : 0\n\
                   Replication State      : streaming\n\
                   Replication Sync State : async\n\
                   Last Status Change     : 2026-11-25 18:40:07\n";
        let info = parse_node_info(out);
        assert_eq!(
            info,
            Some(NodeInfo {
                status: "waiting".into(),
                pg_status: "up".into(),
                role: "standby".into(),
                replication_state: "streaming".into(),
            })
        );
        let coded = parse_node_info("Hostname : h\nStatus : 3\n");
        assert_eq!(coded.map(|i| i.status), Some("down".to_owned()));
    }

    #[test]
    fn rejects_what_is_not_node_info() {
        assert_eq!(parse_node_info(""), None);
        assert_eq!(parse_node_info("pcp_node_info -- Command Successful"), None);
        assert_eq!(parse_node_info("Status : 9\n"), None);
        assert_eq!(parse_node_info("127.0.0.1 5432 x 0.5 up"), None);
    }

    #[test]
    fn pcp_refusals_are_errors() {
        assert!(reports_error(
            "ERROR:  informing node info failed\nDETAIL:  invalid node ID : 5"
        ));
        assert!(reports_error(
            "FATAL:  authentication failed for user \"pgpool\""
        ));
        assert!(!reports_error(""));
        assert!(!reports_error("pcp_attach_node -- Command Successful"));
    }

    #[test]
    fn status_codes_map_to_names() {
        assert_eq!(status_from_code("1").as_deref(), Some("waiting"));
        assert_eq!(status_from_code("2").as_deref(), Some("up"));
        assert_eq!(status_from_code("3").as_deref(), Some("down"));
        assert_eq!(status_from_code("7"), None);
    }
}
