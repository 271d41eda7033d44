//! Reading pcp's answers: `pcp_node_info`'s status and role of a backend,
//! `pcp_watchdog_info -v`'s place of this pgpool in its watchdog cluster.

use crate::text::escape_controls;
use std::fmt;

/// How much of a failed command's output goes into its error message.
const OUTPUT_IN_ERROR: usize = 400;

/// pgpool's status of one backend, as `pcp_node_info` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NodeStatus {
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
    /// Every status, in the order of the status shape (a test holds them equal).
    #[cfg(test)]
    pub(crate) const ALL: [NodeStatus; 5] = [
        NodeStatus::Up,
        NodeStatus::Waiting,
        NodeStatus::Down,
        NodeStatus::Quarantine,
        NodeStatus::Unused,
    ];
    pub(crate) fn as_str(self) -> &'static str {
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
    pub(crate) fn is_attached(self) -> bool {
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
pub(crate) enum Role {
    Primary,
    Standby,
}

impl Role {
    pub(crate) fn as_str(self) -> &'static str {
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

/// How far behind its primary pgpool's streaming-replication check last
/// found a standby (`pcp_node_info`'s replication delay).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Delay {
    /// In bytes of WAL: every version, and 4.4+ with
    /// `delay_threshold_by_time = 0`, its default (an integer: `0`, `3072`).
    Bytes(u64),
    /// In microseconds: 4.4+ with `delay_threshold_by_time` above 0, printed
    /// as seconds with six decimals, and a unit with `-v` (`0.000000
    /// second`, `2.500000 seconds`; terse: `0.000000`).
    Micros(u64),
}

impl Delay {
    /// One value as pcp_node_info prints it, unit or not; None when it is
    /// not a delay.
    fn parse(s: &str) -> Option<Delay> {
        let mut words = s.split_whitespace();
        let number = words.next()?;
        let unit = words.next();
        if words.next().is_some() {
            return None;
        }
        let time = match unit.map(str::to_ascii_lowercase).as_deref() {
            None => number.contains('.'),
            Some("second" | "seconds") => true,
            Some(_) => return None,
        };
        if !time {
            return number.parse().ok().map(Delay::Bytes);
        }
        let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
        if frac.len() > 6 || !frac.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let micros = format!("{frac:0<6}").parse::<u64>().ok()?;
        whole
            .parse::<u64>()
            .ok()?
            .checked_mul(1_000_000)?
            .checked_add(micros)
            .map(Delay::Micros)
    }
}

impl fmt::Display for Delay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Delay::Bytes(b) => write!(f, "{b} bytes"),
            Delay::Micros(us) => write!(f, "{}.{:06} s", us / 1_000_000, us % 1_000_000),
        }
    }
}

/// pgpool's view of one backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NodeInfo {
    pub(crate) status: NodeStatus,
    /// `None` when the answer does not say (a custom template printing
    /// only the status): such a pgpool is taken to have no known primary.
    pub(crate) role: Option<Role>,
    /// The standby's replication delay; `None` when the answer does not
    /// give it (a primary's is 0; pgpool 4.2 and older terse output is
    /// read for it too).
    pub(crate) delay: Option<Delay>,
}

impl NodeInfo {
    /// pgpool's primary, attached.
    pub(crate) fn is_attached_primary(&self) -> bool {
        self.role == Some(Role::Primary) && self.status.is_attached()
    }
}

/// Reads status and role out of `pcp_node_info`'s output: the `Status
/// Name` and `Role` lines of `-v` (labels matched exactly: 4.3 also has
/// `Backend Status Name` and `Backend Role`, which are what the backend
/// itself says), or else the terse line `host port status weight
/// status_name …`, where the status name is the fifth field in every
/// version and the role the sixth (before 4.3) or seventh (4.3+, after the
/// backend status name). The replication delay follows the backend's own
/// role (4.3+) or pgpool's (before): bytes, or from 4.4 with
/// `delay_threshold_by_time` seconds (see [`Delay`]); a delay that is
/// there but unreadable fails the whole answer (the columns are not what
/// this parser knows).
pub(crate) fn parse_node_info(out: &str) -> Result<NodeInfo, String> {
    let mut status = None;
    let mut role = None;
    let mut delay = None;
    for line in out.lines() {
        if let Some((key, value)) = line.split_once(':') {
            let (key, value) = (key.trim(), value.trim());
            if key.eq_ignore_ascii_case("status name") {
                status = Some(
                    NodeStatus::from_name(value)
                        .ok_or_else(|| format!("unknown status {value:?}"))?,
                );
            } else if key.eq_ignore_ascii_case("role") {
                role = Role::from_name(value);
            } else if key.eq_ignore_ascii_case("replication delay") {
                delay = Some(
                    Delay::parse(value)
                        .ok_or_else(|| format!("unknown replication delay {value:?}"))?,
                );
            }
        }
    }
    if let Some(status) = status {
        return Ok(NodeInfo {
            status,
            role,
            delay,
        });
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
            // 4.3+: pg_status, role, pg_role, delay; before: role, delay.
            let delay_at = if fields.get(5).and_then(|f| Role::from_name(f)).is_some() {
                6
            } else {
                8
            };
            let delay = match fields.get(delay_at) {
                None => None,
                Some(d) => Some(Delay::parse(d).ok_or_else(|| {
                    format!(
                        "the replication delay {d:?} of {:?} is not a delay",
                        bounded(line)
                    )
                })?),
            };
            Ok(NodeInfo {
                status,
                role,
                delay,
            })
        }
        None => Err(format!(
            "{:?} has fewer than five fields",
            bounded(line.trim())
        )),
    }
}

/// What `pcp_watchdog_info -v` says about the pgpool plusmoin talks to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Watchdog {
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
    pub(crate) fn acting(&self) -> bool {
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
    pub(crate) fn describe(&self) -> String {
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
pub(crate) fn parse_watchdog_info(out: &str) -> Result<Watchdog, String> {
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

pub(super) fn bounded(s: &str) -> String {
    let mut out: String = s.chars().take(OUTPUT_IN_ERROR).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}
