//! A pgpool-II watchdog cluster on loopback: 2 or 3 pgpool members in front
//! of the same sandbox, each with everything of its own (pgpool, pcp,
//! watchdog and heartbeat ports, `pgpool_node_id` file, pid file, log and
//! socket directories), `delegate_ip = ''` (no virtual IP), heartbeat
//! lifecheck.
//!
//! Facts it is built around (pgpool-II 4.3 on a 2-core machine): electing a
//! leader takes about 8–12 s; after the leader stops or dies a new one is
//! there within 1–10 s, full agreement up to ~12 s; a restarted member
//! rejoins as standby in ~1.5 s. pcp detach/attach sent to a non-leader
//! exits 0 and is forwarded to the leader; only the leader runs
//! failover_command/follow_primary_command. With two members and one down,
//! a primary's failure needs consensus: the node goes to `quarantine` and
//! no script runs, unless `enable_consensus_with_half_votes = on`.

use std::fs;
use std::time::{Duration, Instant};

use crate::sandbox::PgpoolExt;
use plusmoin::demo::sandbox::pgpool::{Pgpool, PgpoolOptions};
use plusmoin::demo::sandbox::{free_port, Sandbox, SandboxError};

/// The address the sandbox and its pgpools listen on ([`Sandbox::host`]).
const HOST: &str = "127.0.0.1";

/// How long a cluster start waits for every member to agree on a leader.
const ELECTION_TIMEOUT: Duration = Duration::from_secs(60);
/// How many fresh sets of ports a start tries when a port got taken.
const PORT_ATTEMPTS: usize = 3;

/// The watchdog of one member, as `pcp_watchdog_info -v` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchdogInfo {
    /// "Total Nodes" (this member and the remote ones).
    pub total_nodes: u32,
    /// "Quorum state": "QUORUM EXIST", "QUORUM IS ON THE EDGE", "QUORUM
    /// ABSENT", "NO LEADER NODE" or "UNKNOWN".
    pub quorum_state: String,
    /// "Local node escalation": whether this member holds the leader's
    /// duties (it is the leader).
    pub escalated: bool,
    /// "Leader Node Name" (`host:pgpool_port os host`), "Not Set" while
    /// there is no leader (during an election).
    pub leader_name: String,
    /// Every member this one knows, itself first.
    pub nodes: Vec<WatchdogNode>,
}

/// One member in a [`WatchdogInfo`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchdogNode {
    /// "Node Name", e.g. `127.0.0.1:9999 Linux myhost`.
    pub name: String,
    /// "Host Name".
    pub host: String,
    /// "Pgpool port".
    pub pgpool_port: u16,
    /// "Watchdog port".
    pub wd_port: u16,
    /// "Status Name": "LEADER", "STANDBY", "JOINING", "INITIALIZING",
    /// "STANDING FOR LEADER", "LOST", "SHUTDOWN", "DEAD", ... (spaces
    /// included).
    pub state: String,
    /// "Membership Status" ("MEMBER", ...).
    pub membership: String,
}

impl WatchdogInfo {
    /// The state of the member that answered (listed first).
    pub fn local_state(&self) -> &str {
        self.nodes.first().map_or("", |n| n.state.as_str())
    }

    /// The pgpool port of the leader this member knows of (None during an
    /// election).
    pub fn leader_port(&self) -> Option<u16> {
        self.nodes
            .iter()
            .find(|n| n.name == self.leader_name)
            .map(|n| n.pgpool_port)
    }
}

/// `pcp_watchdog_info -v` output; None when it is not that.
fn parse_watchdog_info(out: &str) -> Option<WatchdogInfo> {
    let mut lines = out.lines().map(|l| l.split_once(':'));
    let mut header: Vec<(String, String)> = Vec::new();
    let mut nodes: Vec<Vec<(String, String)>> = Vec::new();
    for (k, v) in lines.by_ref().flatten() {
        let (k, v) = (k.trim().to_owned(), v.trim().to_owned());
        if k == "Node Name" {
            nodes.push(vec![(k, v)]);
        } else if let Some(node) = nodes.last_mut() {
            node.push((k, v));
        } else {
            header.push((k, v));
        }
    }
    let get = |fields: &[(String, String)], name: &str| {
        fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let nodes = nodes
        .iter()
        .map(|f| {
            Some(WatchdogNode {
                name: get(f, "Node Name")?,
                host: get(f, "Host Name").unwrap_or_default(),
                pgpool_port: get(f, "Pgpool port")?.parse().ok()?,
                wd_port: get(f, "Watchdog port")?.parse().ok()?,
                state: get(f, "Status Name")?,
                membership: get(f, "Membership Status").unwrap_or_default(),
            })
        })
        .collect::<Option<Vec<_>>>()?;
    Some(WatchdogInfo {
        total_nodes: get(&header, "Total Nodes")?.parse().ok()?,
        quorum_state: get(&header, "Quorum state").unwrap_or_default(),
        escalated: get(&header, "Local node escalation").as_deref() == Some("YES"),
        leader_name: get(&header, "Leader Node Name")?,
        nodes,
    })
}

/// A sandbox pgpool's watchdog, through pcp.
pub trait WatchdogView {
    /// This member's watchdog view (`pcp_watchdog_info -v`). Fails (pcp's
    /// `ERROR: ... watchdog is not enabled`) on a pgpool without watchdog.
    fn watchdog_info(&self) -> Result<WatchdogInfo, SandboxError>;
}

impl WatchdogView for Pgpool {
    fn watchdog_info(&self) -> Result<WatchdogInfo, SandboxError> {
        let out = self.pcp("pcp_watchdog_info", &["-v"])?;
        parse_watchdog_info(&out.stdout).ok_or(SandboxError::Unexpected {
            command: out.command,
            output: out.stdout,
        })
    }
}

/// 2 or more pgpool members with `use_watchdog = on` in front of the same
/// sandbox; dropping it stops every member and removes their directories.
#[derive(Debug)]
pub struct PgpoolCluster {
    members: Vec<Pgpool>,
}

impl PgpoolCluster {
    /// Starts `members` (2 or 3 sensible) watchdog members in front of every
    /// node of `sb`, all with `opts`, and returns once every member agrees
    /// on one leader (about 10 s). Member i has `pgpool_node_id` i.
    pub fn start(
        sb: &Sandbox,
        opts: PgpoolOptions,
        members: usize,
    ) -> Result<PgpoolCluster, SandboxError> {
        PgpoolCluster::start_with_conf(sb, opts, members, &[])
    }

    /// [`PgpoolCluster::start`] with `extra_conf` lines appended to every
    /// member's pgpool.conf (e.g. `enable_consensus_with_half_votes = on`).
    pub fn start_with_conf(
        sb: &Sandbox,
        opts: PgpoolOptions,
        members: usize,
        extra_conf: &[&str],
    ) -> Result<PgpoolCluster, SandboxError> {
        let began = Instant::now();
        let mut cluster = PgpoolCluster {
            members: (0..members)
                .map(|_| Pgpool::create(sb, &opts))
                .collect::<Result<_, _>>()?,
        };
        let mut attempt = 1;
        loop {
            let ports = cluster.fresh_ports()?;
            let shared = watchdog_conf(&ports);
            for (i, m) in cluster.members.iter().enumerate() {
                let mut extra = shared.clone();
                extra.extend(extra_conf.iter().map(|l| l.to_string()));
                m.write_conf(sb, &opts, &extra)?;
                m.write_file("pgpool_node_id", &format!("{i}\n"))?;
            }
            let log_lens: Vec<u64> = cluster.members.iter().map(Pgpool::log_len).collect();
            // All at once: a member may wait for the others before it answers.
            let results: Vec<Result<(), SandboxError>> = std::thread::scope(|s| {
                let handles: Vec<_> = cluster
                    .members
                    .iter()
                    .map(|m| s.spawn(move || m.start_again()))
                    .collect();
                handles
                    .into_iter()
                    .map(|h| {
                        h.join().unwrap_or_else(|_| {
                            Err(SandboxError::Io {
                                what: "pgpool member start panicked".to_owned(),
                                source: std::io::Error::other("panic"),
                            })
                        })
                    })
                    .collect()
            });
            // A member may also lose a port race after it answered (its
            // watchdog or heartbeat port taken meanwhile): it exits, and no
            // leader is agreed while it is gone. That is retried too.
            let err = match results.into_iter().find_map(Result::err) {
                Some(err) => err,
                None => match cluster.wait_leader_or_bind_failure(&log_lens) {
                    Ok(()) => break,
                    Err(err) => err,
                },
            };
            cluster.stop_all();
            let bind = cluster
                .members
                .iter()
                .zip(&log_lens)
                .any(|(m, len)| m.bind_failed_since(*len));
            if !bind || attempt >= PORT_ATTEMPTS {
                return Err(err);
            }
            tracing::warn!(attempt, "pgpool cluster: a port was taken, retrying");
            attempt += 1;
        }
        let leader = cluster.wait_leader(ELECTION_TIMEOUT)?;
        // The leader is agreed a little before every member counts the
        // others in: a member may still say "QUORUM IS ON THE EDGE".
        cluster.wait_quorum(ELECTION_TIMEOUT)?;
        tracing::info!(
            members,
            leader,
            elapsed_ms = began.elapsed().as_millis() as u64,
            "pgpool cluster: started, leader elected"
        );
        Ok(cluster)
    }

    /// The members, in `pgpool_node_id` order.
    pub fn members(&self) -> &[Pgpool] {
        &self.members
    }

    /// Member `i` (panics when there is no such member, like indexing).
    pub fn member(&self, i: usize) -> &Pgpool {
        &self.members[i]
    }

    /// How many members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Always false: a cluster has members.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The member every running member names as leader — and which says
    /// itself it is the LEADER, every other running member saying STANDBY
    /// — from one round of `pcp_watchdog_info` (no waiting); None during an
    /// election, while they disagree, while a member has not settled (it
    /// may name the leader while still "PARTICIPATING IN ELECTION"), or
    /// when a running member does not answer. Stopped members are not
    /// asked.
    pub fn leader(&self) -> Option<usize> {
        let running: Vec<usize> = (0..self.members.len())
            .filter(|i| !self.members[*i].pids().is_empty())
            .collect();
        let mut agreed = None;
        for i in &running {
            let info = self.members[*i].watchdog_info().ok()?;
            let port = info.leader_port()?;
            let leader = self.members.iter().position(|m| m.port() == port)?;
            if agreed.is_some_and(|a| a != leader) {
                return None;
            }
            agreed = Some(leader);
            let settled = if leader == *i { "LEADER" } else { "STANDBY" };
            if info.local_state() != settled {
                return None;
            }
        }
        let leader = agreed?;
        running.contains(&leader).then_some(leader)
    }

    /// Polls `pcp_watchdog_info` until every member says "QUORUM EXIST".
    fn wait_quorum(&self, timeout: Duration) -> Result<(), SandboxError> {
        let deadline = Instant::now() + timeout;
        loop {
            let states: Vec<String> = self
                .members
                .iter()
                .map(|m| {
                    m.watchdog_info()
                        .map_or_else(|e| e.to_string(), |w| w.quorum_state)
                })
                .collect();
            if states.iter().all(|s| s == "QUORUM EXIST") {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(SandboxError::Io {
                    what: format!(
                        "pgpool cluster: no quorum everywhere within {timeout:?}: {states:?}"
                    ),
                    source: std::io::Error::from(std::io::ErrorKind::TimedOut),
                });
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits for an agreed leader, as [`PgpoolCluster::wait_leader`], but
    /// returns at once when a member has exited with a taken port since
    /// `log_lens` (the lengths of the members' logs at their start).
    fn wait_leader_or_bind_failure(&self, log_lens: &[u64]) -> Result<(), SandboxError> {
        let deadline = Instant::now() + ELECTION_TIMEOUT;
        loop {
            let bind_failed = self
                .members
                .iter()
                .zip(log_lens)
                .any(|(m, len)| m.pids().is_empty() && m.bind_failed_since(*len));
            if bind_failed {
                return Err(SandboxError::Io {
                    what: "a pgpool watchdog member exited: a port was taken".to_owned(),
                    source: std::io::Error::from(std::io::ErrorKind::AddrInUse),
                });
            }
            if self.leader().is_some() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return self.wait_leader(Duration::ZERO).map(|_| ());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Polls [`PgpoolCluster::leader`] until the running members agree on
    /// one; returns it.
    pub fn wait_leader(&self, timeout: Duration) -> Result<usize, SandboxError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(leader) = self.leader() {
                return Ok(leader);
            }
            if Instant::now() >= deadline {
                let last = self
                    .members
                    .iter()
                    .enumerate()
                    .map(|(i, m)| match m.watchdog_info() {
                        Ok(w) => format!(
                            "member {i}: {} leader={:?} quorum={:?}",
                            w.local_state(),
                            w.leader_name,
                            w.quorum_state
                        ),
                        Err(e) if m.pids().is_empty() => {
                            let log = fs::read_to_string(m.log_file()).unwrap_or_default();
                            let tail: Vec<&str> = log.lines().rev().take(5).collect();
                            format!(
                                "member {i}: not running ({e}); its log ends: {:?}",
                                tail.into_iter().rev().collect::<Vec<_>>()
                            )
                        }
                        Err(e) => format!("member {i}: {e}"),
                    })
                    .collect::<Vec<_>>()
                    .join("; ");
                return Err(SandboxError::Timeout {
                    what: "the pgpool watchdog members to agree on a leader".to_owned(),
                    timeout,
                    last,
                });
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Stops every running member at once (each a fast shutdown).
    pub fn stop_all(&self) {
        std::thread::scope(|s| {
            for m in &self.members {
                s.spawn(move || {
                    if let Err(e) = m.stop() {
                        tracing::warn!(error = %e, "pgpool cluster: could not stop a member");
                    }
                });
            }
        });
    }

    /// New pgpool, pcp, watchdog and heartbeat ports for every member,
    /// all distinct.
    fn fresh_ports(&mut self) -> Result<Vec<MemberPorts>, SandboxError> {
        let mut taken = Vec::new();
        let mut pick = || -> Result<u16, SandboxError> {
            loop {
                let p = free_port()?;
                if !taken.contains(&p) {
                    taken.push(p);
                    return Ok(p);
                }
            }
        };
        let mut ports = Vec::new();
        for m in &mut self.members {
            let port = pick()?;
            m.set_ports(port, pick()?);
            ports.push(MemberPorts {
                pgpool: port,
                wd: pick()?,
                heartbeat: pick()?,
            });
        }
        Ok(ports)
    }
}

impl Drop for PgpoolCluster {
    fn drop(&mut self) {
        // In parallel: one by one, each stop would start a new election.
        self.stop_all();
    }
}

/// The ports of one member that every member's configuration lists.
struct MemberPorts {
    pgpool: u16,
    wd: u16,
    heartbeat: u16,
}

/// The watchdog lines every member gets (they override `use_watchdog =
/// off`: pgpool takes a parameter's last value).
fn watchdog_conf(ports: &[MemberPorts]) -> Vec<String> {
    let mut lines: Vec<String> = [
        "use_watchdog = on",
        "delegate_ip = ''",
        "trusted_servers = ''",
        "wd_priority = 1",
        "wd_authkey = ''",
        "wd_escalation_command = ''",
        "wd_de_escalation_command = ''",
        "wd_lifecheck_method = 'heartbeat'",
        "wd_interval = 1",
        "wd_heartbeat_keepalive = 1",
        "wd_heartbeat_deadtime = 5",
        "failover_when_quorum_exists = on",
        "failover_require_consensus = on",
        "allow_multiple_failover_requests_from_node = off",
        "enable_consensus_with_half_votes = off",
        "wd_remove_shutdown_nodes = off",
    ]
    .iter()
    .map(|l| l.to_string())
    .collect();
    for (k, p) in ports.iter().enumerate() {
        lines.extend([
            format!("hostname{k} = '{HOST}'"),
            format!("wd_port{k} = {}", p.wd),
            format!("pgpool_port{k} = {}", p.pgpool),
            format!("heartbeat_hostname{k} = '{HOST}'"),
            format!("heartbeat_port{k} = {}", p.heartbeat),
            format!("heartbeat_device{k} = ''"),
        ]);
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_verbose_watchdog_info() {
        let out = "Watchdog Cluster Information \n\
            Total Nodes              : 3\n\
            Remote Nodes             : 2\n\
            Member Remote Nodes      : 2\n\
            Alive Remote Nodes       : 2\n\
            Nodes required for quorum: 2\n\
            Quorum state             : QUORUM EXIST\n\
            Local node escalation    : NO\n\
            Leader Node Name         : 127.0.0.1:4001 Linux h\n\
            Leader Host Name         : 127.0.0.1\n\
            \n\
            Watchdog Node Information \n\
            Node Name         : 127.0.0.1:4000 Linux h\n\
            Host Name         : 127.0.0.1\n\
            Delegate IP       : Not Set\n\
            Pgpool port       : 4000\n\
            Watchdog port     : 5000\n\
            Node priority     : 1\n\
            Status            : 7\n\
            Status Name       : STANDBY\n\
            Membership Status : MEMBER\n\
            \n\
            Node Name         : 127.0.0.1:4001 Linux h\n\
            Host Name         : 127.0.0.1\n\
            Delegate IP       : Not Set\n\
            Pgpool port       : 4001\n\
            Watchdog port     : 5001\n\
            Node priority     : 1\n\
            Status            : 4\n\
            Status Name       : LEADER\n\
            Membership Status : MEMBER\n";
        let info = parse_watchdog_info(out).expect("parses");
        assert_eq!(info.total_nodes, 3);
        assert_eq!(info.quorum_state, "QUORUM EXIST");
        assert!(!info.escalated);
        assert_eq!(info.local_state(), "STANDBY");
        assert_eq!(info.leader_port(), Some(4001));
        assert_eq!(info.nodes[1].wd_port, 5001);
        assert_eq!(parse_watchdog_info(""), None);
    }

    #[test]
    fn parses_recorded_watchdog_info() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/pcp/");
        let read = |name: &str| {
            std::fs::read_to_string(format!("{dir}{name}.stdout.txt")).expect("recorded output")
        };
        let standby = parse_watchdog_info(&read("watchdog_info_standby_verbose")).expect("parses");
        assert_eq!(standby.local_state(), "STANDBY");
        assert_eq!(standby.nodes.len(), 3);
        let leader_port = standby.leader_port().expect("a leader");
        let leader = parse_watchdog_info(&read("watchdog_info_leader_verbose")).expect("parses");
        assert_eq!(leader.local_state(), "LEADER");
        assert!(leader.escalated);
        assert_eq!(leader.nodes[0].pgpool_port, leader_port);
        let election =
            parse_watchdog_info(&read("watchdog_info_election_00_verbose")).expect("parses");
        assert_eq!(election.leader_name, "Not Set");
        assert_eq!(election.leader_port(), None);
        assert_eq!(election.quorum_state, "NO LEADER NODE");
        assert_eq!(
            parse_watchdog_info(&read("watchdog_info_leader_terse")),
            None
        );
    }

    /// The outputs recorded from other pgpool versions (a folder each).
    #[test]
    fn parses_every_recorded_versions_watchdog_info() {
        let top = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/pcp");
        for dir in std::fs::read_dir(top).expect("tests/data/pcp").flatten() {
            let dir = dir.path();
            if !dir.is_dir() {
                continue;
            }
            let read = |name: &str| {
                std::fs::read_to_string(dir.join(format!("{name}.stdout.txt")))
                    .expect("recorded output")
            };
            let v = dir.display();
            let standby = parse_watchdog_info(&read("watchdog_info_standby_verbose"))
                .unwrap_or_else(|| panic!("{v}"));
            assert_eq!(standby.local_state(), "STANDBY", "{v}");
            assert_eq!(standby.nodes.len(), 3, "{v}");
            let leader_port = standby.leader_port().expect("a leader");
            let leader = parse_watchdog_info(&read("watchdog_info_leader_verbose"))
                .unwrap_or_else(|| panic!("{v}"));
            assert_eq!(leader.local_state(), "LEADER", "{v}");
            assert_eq!(leader.nodes[0].pgpool_port, leader_port, "{v}");
        }
    }

    #[test]
    fn watchdog_conf_lists_every_member() {
        let conf = watchdog_conf(&[
            MemberPorts {
                pgpool: 1,
                wd: 2,
                heartbeat: 3,
            },
            MemberPorts {
                pgpool: 4,
                wd: 5,
                heartbeat: 6,
            },
        ]);
        for want in [
            "use_watchdog = on",
            "pgpool_port1 = 4",
            "wd_port0 = 2",
            "heartbeat_port1 = 6",
        ] {
            assert!(conf.iter().any(|l| l == want), "{want}");
        }
    }
}
