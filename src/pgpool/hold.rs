//! Maintenance holds: nodes an operator keeps out of pgpool on purpose
//! (`plusmoin hold HOST:PORT` / `plusmoin release HOST:PORT`).
//!
//! Holds are cluster-wide: they are rows of the table `plusmoin_hold` on
//! the PostgreSQL master, beside the heartbeat table, so they replicate to
//! every standby and every plusmoin instance (one beside each pgpool of a
//! watchdog pair) reads the same list, even with the master down. A held
//! node is detached from pgpool and never attached by plusmoin until
//! released.
//!
//! Before holds were cluster-wide they were kept in `held.json` beside the
//! status file, for this host only. That file is still read: its entries
//! count as holds (placed by "held.json (this host only)"), so an upgrade
//! never attaches a node held on purpose; `release` removes a node from
//! both places, `hold` writes only the table.
//!
//! The table is plusmoin's own: every statement names its schema, and a
//! `plusmoin_hold` of another role's is never written, read or deleted from
//! (see the probe's `owner` check); `hold` and `release` refuse it, naming its
//! owner. What is read from it is bounded: only the rows of configured
//! nodes (the others are counted, up to [`IGNORED_COUNT_CAP`], and a
//! warning says how many), at most [`MAX_HOLDS`] of them, `placed_by` and
//! `reason` cut at [`PLACED_BY_CAP`] and [`REASON_CAP`] characters (with a
//! warning naming the cap), and every text field has its control
//! characters escaped ([`crate::text::escape_controls`]) as it is read, so
//! no log line, status or terminal gets a raw one.

use crate::cluster::{NodeName, Time};
use crate::config::Config;
use crate::lifecycle::safefile::{self, Access, Owners};
use crate::logonce::LogOnce;
use crate::payload::rfc3339;
use crate::probe::owner::{self, Owner};
use crate::probe::{Connector, ProbeSettings, Session};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::LazyLock;
use std::time::SystemTime;
use tokio_postgres::error::SqlState;
use tracing::{error, info, warn};

/// The legacy file's name, in the status file's directory.
pub const FILE_NAME: &str = "held.json";

/// The hold table's name, in schema [`owner::SCHEMA`].
const TABLE: &str = "plusmoin_hold";

/// The hold table, for operators who create it beforehand (plusmoin creates
/// it on the master at the first `plusmoin hold`; created by another role,
/// it must be given to plusmoin's role). One row per
/// held node.
pub const HOLD_TABLE_DDL: &str = "CREATE TABLE IF NOT EXISTS public.plusmoin_hold (\
     node text PRIMARY KEY, \
     placed_by text NOT NULL, \
     placed_at timestamptz NOT NULL DEFAULT pg_catalog.now(), \
     reason text)";

/// The most characters of a hold's `placed_by` read (plusmoin writes
/// `user@host (plusmoin instance)`); longer is cut, with a warning.
pub const PLACED_BY_CAP: usize = 256;
/// The most characters of a hold's `reason` read; longer is cut, with a
/// warning.
pub const REASON_CAP: usize = 1024;
/// The most holds read. Only configured nodes' rows are read, one per node,
/// so only a configuration of more nodes than this can reach it; the holds
/// past it (in node name order) are left out, with a warning.
pub const MAX_HOLDS: usize = 10_000;
/// Rows naming no configured node are counted up to this many.
pub const IGNORED_COUNT_CAP: i64 = 1_000;

/// A hold's columns as plusmoin reads them: text fields cut in SQL one
/// character past their cap, so that a cut can be told (and warned about)
/// without ever reading more.
static COLUMNS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "node, pg_catalog.left(placed_by, {}) AS placed_by, placed_at, \
         pg_catalog.left(reason, {}) AS reason",
        PLACED_BY_CAP + 1,
        REASON_CAP + 1
    )
});
static INSERT: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO public.plusmoin_hold (node, placed_by, reason) VALUES ($1, $2, $3) \
         ON CONFLICT (node) DO NOTHING RETURNING {}",
        *COLUMNS
    )
});
static SELECT_ONE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {} FROM public.plusmoin_hold WHERE node = $1",
        *COLUMNS
    )
});
/// Every hold of a configured node (`$1`, their names), at most one per
/// node (the oldest, should the table have lost its primary key) and
/// [`MAX_HOLDS`] + 1 in all, beside the number of rows naming no configured
/// node (up to [`IGNORED_COUNT_CAP`]): always one row at least, whose hold
/// columns are NULL when there is no hold. Both scans stop at their limit
/// (the holds' goes through the primary key), so a table flooded with rows
/// costs the server little and plusmoin nothing.
static SELECT_ALL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT h.node, pg_catalog.left(h.placed_by, {pb}) AS placed_by, h.placed_at, \
           pg_catalog.left(h.reason, {r}) AS reason, f.ignored \
         FROM (SELECT pg_catalog.count(*) AS ignored FROM \
             (SELECT 1 FROM public.plusmoin_hold AS x \
              WHERE NOT x.node = ANY ($1::pg_catalog.text[]) LIMIT {ic}) AS s) AS f \
         LEFT JOIN (SELECT DISTINCT ON (y.node) y.node, y.placed_by, y.placed_at, y.reason \
             FROM public.plusmoin_hold AS y WHERE y.node = ANY ($1::pg_catalog.text[]) \
             ORDER BY y.node, y.placed_at LIMIT {mh}) AS h ON true \
         ORDER BY h.node",
        pb = PLACED_BY_CAP + 1,
        r = REASON_CAP + 1,
        ic = IGNORED_COUNT_CAP,
        mh = MAX_HOLDS + 1,
    )
});
static DELETE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "DELETE FROM public.plusmoin_hold WHERE node = $1 RETURNING pg_catalog.left(placed_by, {})",
        PLACED_BY_CAP + 1
    )
});

/// The most bytes of `held.json` read: thousands of node names.
const FILE_CAP: u64 = 1 << 20;

/// Who placed the holds read from the legacy `held.json`.
pub const LEGACY_PLACED_BY: &str = "held.json (this host only)";

#[derive(Debug, thiserror::Error)]
pub enum HoldError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid hold list: {source}")]
    Invalid {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{given:?} is not a configured node (configured: {known})")]
    UnknownNode { given: String, known: String },
    #[error(
        "no master reachable: a hold is stored on the master, in table plusmoin_hold ({tried})"
    )]
    NoMaster { tried: String },
    #[error("more than one master ({masters}): plusmoin does not know which one holds the cluster's holds; fix the replication first")]
    SeveralMasters { masters: String },
    #[error("{node} is the primary: switch over first (a hold keeps a node out of pgpool, and the primary cannot be)")]
    IsMaster { node: NodeName },
    #[error("{node} is pgpool's primary (pgpool node {id}): switch over first (a hold keeps a node out of pgpool, and the primary cannot be)")]
    IsPgpoolPrimary { node: NodeName, id: u32 },
    #[error(
        "cannot ask pgpool whether {node} is its primary, so the hold is not placed: {reason}"
    )]
    PgpoolUnknown { node: NodeName, reason: String },
    #[error("{what} on the master {master}: {reason}")]
    Sql {
        what: &'static str,
        master: NodeName,
        reason: String,
    },
    #[error("cannot set up the connection to the nodes: {0}")]
    Connect(String),
    /// The master's `plusmoin_hold` belongs to a role plusmoin does not
    /// trust: never written, read or deleted from.
    #[error("on the master {master}: {reason}")]
    NotOurs { master: NodeName, reason: String },
}

/// One hold, as the status shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldEntry {
    /// `host:port` as plusmoin prints it.
    pub node: String,
    /// Who placed it: `user@host` and the plusmoin instance that ran the
    /// command, or [`LEGACY_PLACED_BY`].
    pub placed_by: String,
    /// When (RFC 3339, UTC); empty for a legacy hold.
    pub placed_at: String,
    pub reason: Option<String>,
}

impl HoldEntry {
    fn legacy(node: &str) -> HoldEntry {
        HoldEntry {
            node: node.to_string(),
            placed_by: LEGACY_PLACED_BY.to_string(),
            placed_at: String::new(),
            reason: None,
        }
    }

    /// A row of [`COLUMNS`] (from column 0), made safe to show: control
    /// characters escaped, `placed_by` and `reason` cut at their caps.
    fn from_row(row: &tokio_postgres::Row) -> Result<HoldEntry, String> {
        Self::read_row(row).map(|(e, _)| e)
    }

    /// [`HoldEntry::from_row`], and the names of the fields that were cut.
    fn read_row(row: &tokio_postgres::Row) -> Result<(HoldEntry, Vec<&'static str>), String> {
        let node: String = row.try_get(0).map_err(bad_shape)?;
        let placed_by: String = row.try_get(1).map_err(bad_shape)?;
        let placed_at: SystemTime = row.try_get(2).map_err(bad_shape)?;
        let reason: Option<String> = row.try_get(3).map_err(bad_shape)?;
        Ok(HoldEntry::cleaned(
            &node,
            &placed_by,
            placed_at,
            reason.as_deref(),
        ))
    }

    /// A hold from the table's values: control characters escaped,
    /// `placed_by` and `reason` cut at [`PLACED_BY_CAP`] and [`REASON_CAP`]
    /// characters; with the names of the fields that were cut.
    fn cleaned(
        node: &str,
        placed_by: &str,
        placed_at: SystemTime,
        reason: Option<&str>,
    ) -> (HoldEntry, Vec<&'static str>) {
        let mut cut = Vec::new();
        let mut field = |name: &'static str, text: &str, cap: usize| {
            let (text, was_cut) = capped(text, cap);
            if was_cut {
                cut.push(name);
            }
            text
        };
        let entry = HoldEntry {
            // A configured node's name as plusmoin wrote it; escaped all
            // the same, as everything read from the table.
            node: crate::text::escape_controls(node),
            placed_by: field("placed_by", placed_by, PLACED_BY_CAP),
            placed_at: rfc3339(Time::from_system_time(placed_at)),
            reason: reason.map(|r| field("reason", r, REASON_CAP)),
        };
        (entry, cut)
    }
}

fn bad_shape(e: tokio_postgres::Error) -> String {
    format!(
        "the hold table has an unexpected shape: {}",
        crate::probe::describe_error(&e)
    )
}

/// `text` with its control characters escaped, cut at `cap` characters
/// (then ending with `…`); whether it was cut.
fn capped(text: &str, cap: usize) -> (String, bool) {
    let escaped = crate::text::escape_controls(text);
    if escaped.chars().count() <= cap {
        return (escaped, false);
    }
    let mut out: String = escaped.chars().take(cap).collect();
    out.push('…');
    (out, true)
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct HeldFile {
    /// Node names (`host:port` as plusmoin prints them).
    held: BTreeSet<String>,
}

/// Where the legacy holds of the daemon writing `status_file` are kept.
pub fn path_for(status_file: &Path) -> PathBuf {
    match status_file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.join(FILE_NAME),
        _ => PathBuf::from(FILE_NAME),
    }
}

/// The nodes held in the legacy file; none when it does not exist. It lives
/// in a directory the daemon user writes: a link or FIFO there, or a file
/// none of `owners` owns, is an error (see [`safefile`]).
///
/// [`safefile`]: crate::lifecycle::safefile
pub fn read(path: &Path, owners: &Owners) -> Result<BTreeSet<String>, HoldError> {
    let bytes = match safefile::open(path, Access::Read, owners).and_then(|f| {
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut std::io::Read::take(f, FILE_CAP + 1), &mut b)?;
        if b.len() as u64 > FILE_CAP {
            return Err(std::io::Error::other(format!(
                "larger than {FILE_CAP} bytes: not a hold list"
            )));
        }
        Ok(b)
    }) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeSet::new()),
        Err(source) => {
            return Err(HoldError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let file: HeldFile = serde_json::from_slice(&bytes).map_err(|source| HoldError::Invalid {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(file.held)
}

fn write(path: &Path, held: BTreeSet<String>) -> Result<(), HoldError> {
    let err = |source| HoldError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut json = serde_json::to_vec_pretty(&HeldFile { held }).map_err(|e| err(e.into()))?;
    json.push(b'\n');
    crate::status::write_atomic(path, &json).map_err(err)
}

/// The configured node `given` names: `host:port` (host without case, an
/// IPv6 host in brackets), or a bare host when only one node has it.
pub fn resolve(config: &Config, given: &str) -> Result<NodeName, HoldError> {
    let g = given.trim();
    let by_name = config
        .nodes
        .iter()
        .find(|n| n.name.to_string().eq_ignore_ascii_case(g));
    if let Some(n) = by_name {
        return Ok(n.name.clone());
    }
    let bare = g.trim_start_matches('[').trim_end_matches(']');
    let by_host: Vec<_> = config
        .nodes
        .iter()
        .filter(|n| n.name.host.eq_ignore_ascii_case(bare))
        .collect();
    if let [only] = by_host.as_slice() {
        return Ok(only.name.clone());
    }
    let known: Vec<String> = config.nodes.iter().map(|n| n.name.to_string()).collect();
    Err(HoldError::UnknownNode {
        given: given.to_string(),
        known: if known.is_empty() {
            "none".into()
        } else {
            known.join(", ")
        },
    })
}

/// Legacy: holds the node `given` names in `held.json` (this host only);
/// whether it was not held before. `plusmoin hold` uses [`place`].
pub fn hold(config: &Config, given: &str) -> Result<(NodeName, bool), HoldError> {
    let node = resolve(config, given)?;
    let added = change(&path_for(&config.status_file), &owners(config), |held| {
        held.insert(node.to_string())
    })?;
    Ok((node, added))
}

/// Releases the node `given` names from `held.json`; whether it was held
/// there.
pub fn release(config: &Config, given: &str) -> Result<(NodeName, bool), HoldError> {
    let node = resolve(config, given)?;
    let removed = change(&path_for(&config.status_file), &owners(config), |held| {
        held.remove(&node.to_string())
    })?;
    Ok((node, removed))
}

/// Who may own the legacy file and its lock: root, whoever runs plusmoin,
/// the daemon user.
fn owners(config: &Config) -> Owners {
    Owners::me_and(&config.daemon_user)
}

/// Read, change, write, under an exclusive lock on `held.json.lock`, so two
/// operators running `hold`/`release` at the same moment both count. The
/// file is written only when `f` says it changed something. The lock file
/// is opened as [`safefile`] does: never through a link.
///
/// [`safefile`]: crate::lifecycle::safefile
fn change(
    path: &Path,
    owners: &Owners,
    f: impl FnOnce(&mut BTreeSet<String>) -> bool,
) -> Result<bool, HoldError> {
    let mut lock_path = path.as_os_str().to_owned();
    lock_path.push(".lock");
    let lock_path = PathBuf::from(lock_path);
    let err = |source| HoldError::Write {
        path: lock_path.clone(),
        source,
    };
    let file =
        safefile::open_or_create(&lock_path, Access::ReadWrite, 0o644, owners).map_err(err)?;
    let _lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, errno)| err(std::io::Error::from(errno)))?;
    let mut held = read(path, owners)?;
    let changed = f(&mut held);
    if changed {
        write(path, held)?;
    }
    Ok(changed)
}

/// `user@host` of whoever runs the command (the user behind `sudo` when
/// there is one) and the plusmoin instance, for the `placed_by` column.
pub fn placed_by(instance_name: &str) -> String {
    let user = std::env::var("SUDO_USER")
        .ok()
        .filter(|u| !u.is_empty())
        .or_else(|| {
            nix::unistd::User::from_uid(nix::unistd::getuid())
                .ok()
                .flatten()
                .map(|u| u.name)
        })
        .unwrap_or_else(|| format!("uid {}", nix::unistd::getuid()));
    let host = nix::unistd::gethostname()
        .ok()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|| "unknown-host".into());
    format!("{user}@{host} (plusmoin {instance_name})")
}

/// What each configured node answered to the role question.
struct Roles<S = Session> {
    masters: Vec<(NodeName, S)>,
    slaves: Vec<NodeName>,
    unreachable: Vec<(NodeName, String)>,
}

/// Asks every node, at the same time, whether it is in recovery (each
/// within `connect_timeout`).
async fn roles(connector: &Connector, config: &Config) -> Roles {
    let asks = config.nodes.iter().map(|n| {
        let name = n.name.clone();
        async move {
            let answer = async {
                let session = connector.connect(&name).await?;
                let slave = connector.is_slave(&session).await?;
                Ok::<_, String>((session, slave))
            }
            .await;
            (name, answer)
        }
    });
    let mut roles = Roles {
        masters: Vec::new(),
        slaves: Vec::new(),
        unreachable: Vec::new(),
    };
    for (name, answer) in futures_join_all(asks).await {
        match answer {
            Ok((session, false)) => roles.masters.push((name, session)),
            Ok((_, true)) => roles.slaves.push(name),
            Err(reason) => roles.unreachable.push((name, reason)),
        }
    }
    roles
}

/// Runs the futures concurrently on this task; results in order.
async fn futures_join_all<F: std::future::Future>(
    futures: impl Iterator<Item = F>,
) -> Vec<F::Output> {
    let mut pinned: Vec<_> = futures.map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = pinned.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, o) in pinned.iter_mut().zip(out.iter_mut()) {
            if o.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *o = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().flatten().collect()
}

/// The one master among `roles`, or why there is none to write to.
fn the_master<S>(roles: Roles<S>) -> Result<(NodeName, S), HoldError> {
    let Roles {
        mut masters,
        slaves,
        unreachable,
    } = roles;
    match masters.len() {
        1 => Ok(masters.remove(0)),
        0 => {
            let mut tried: Vec<String> =
                slaves.iter().map(|n| format!("{n}: in recovery")).collect();
            tried.extend(unreachable.iter().map(|(n, r)| format!("{n}: {r}")));
            Err(HoldError::NoMaster {
                tried: if tried.is_empty() {
                    "no node configured".into()
                } else {
                    tried.join("; ")
                },
            })
        }
        _ => Err(HoldError::SeveralMasters {
            masters: masters
                .iter()
                .map(|(n, _)| n.to_string())
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

fn connector(config: &Config) -> Result<Connector, HoldError> {
    Connector::new(ProbeSettings::from_config(config))
        .map_err(|e| HoldError::Connect(e.to_string()))
}

/// What [`place`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placed {
    /// The hold is new.
    New(HoldEntry),
    /// The node was already held: the original hold is kept.
    Already(HoldEntry),
}

/// Holds the node `given` names, cluster-wide: a row of `plusmoin_hold` on
/// the master (the table is created if needed). Refused for the master
/// itself and, with a `pgpool` section, for pgpool's primary (or when
/// pgpool cannot say).
pub async fn place(
    config: &Config,
    given: &str,
    reason: Option<&str>,
    placed_by: &str,
) -> Result<Placed, HoldError> {
    let node = resolve(config, given)?;
    let connector = connector(config)?;
    let (master, session) = the_master(roles(&connector, config).await)?;
    if master == node {
        return Err(HoldError::IsMaster { node });
    }
    if let Some(p) = &config.pgpool {
        if let Some(&id) = p.node_ids.get(&node) {
            let unknown = |reason: String| HoldError::PgpoolUnknown {
                node: node.clone(),
                reason,
            };
            let pcp = crate::pgpool::pcp::Pcp::new(p, p.pcp_timeout)
                .map_err(|e| unknown(e.to_string()))?;
            let info = pcp
                .node_info(&node, id)
                .await
                .map_err(|e| unknown(e.to_string()))?;
            if info.is_attached_primary() {
                return Err(HoldError::IsPgpoolPrimary { node, id });
            }
        }
    }
    let limit = connector.timeout();
    let sql = |what: &'static str, reason: String| HoldError::Sql {
        what,
        master: master.clone(),
        reason: connector.scrub(reason),
    };
    let client = session.client();
    let name = node.to_string();
    let run = async {
        // Whose table it is, before anything touches it; created when
        // missing, and asked again (someone may have been quicker).
        let mut created = false;
        loop {
            match table_owner(client).await.map_err(|r| sql(r.0, r.1))? {
                Owner::Ours => break,
                Owner::Missing if !created => {
                    created = true;
                    if let Err(e) = client.batch_execute(HOLD_TABLE_DDL).await {
                        let raced = e.code() == Some(&SqlState::DUPLICATE_TABLE)
                            || e.code() == Some(&SqlState::UNIQUE_VIOLATION);
                        if !raced {
                            return Err(sql(
                                "cannot create the hold table",
                                crate::probe::describe_error(&e),
                            ));
                        }
                    }
                    info!(master = %master, "hold table public.plusmoin_hold created");
                }
                Owner::Missing => {
                    return Err(sql(
                        "cannot create the hold table",
                        "it is still missing after CREATE TABLE".into(),
                    ))
                }
                Owner::Foreign { owner, me } => {
                    return Err(HoldError::NotOurs {
                        master: master.clone(),
                        reason: owner::refusal(TABLE, &owner, &me),
                    })
                }
            }
        }
        match client
            .query(INSERT.as_str(), &[&name, &placed_by, &reason])
            .await
        {
            Ok(rows) => {
                if let Some(row) = rows.first() {
                    return HoldEntry::from_row(row)
                        .map(Placed::New)
                        .map_err(|r| sql("cannot read the hold back", r));
                }
            }
            Err(e) => {
                return Err(sql(
                    "cannot write the hold",
                    crate::probe::describe_error(&e),
                ))
            }
        }
        // Held already: the original hold stays as it was.
        let rows = client
            .query(SELECT_ONE.as_str(), &[&name])
            .await
            .map_err(|e| sql("cannot read the hold", crate::probe::describe_error(&e)))?;
        match rows.first() {
            Some(row) => HoldEntry::from_row(row)
                .map(Placed::Already)
                .map_err(|r| sql("cannot read the hold", r)),
            None => Err(sql(
                "cannot write the hold",
                "it was released while being placed; try again".into(),
            )),
        }
    };
    match tokio::time::timeout(limit * 2, run).await {
        Ok(r) => r,
        Err(_) => Err(sql(
            "cannot write the hold",
            format!("no answer within {} s", (limit * 2).as_secs_f64()),
        )),
    }
}

/// Who owns the hold table on `client`'s server; what could not be done
/// and why when it cannot be asked.
async fn table_owner(client: &tokio_postgres::Client) -> Result<Owner, (&'static str, String)> {
    owner::check(client, TABLE).await.map_err(|e| {
        (
            "cannot ask who owns the hold table",
            crate::probe::describe_error(&e),
        )
    })
}

/// What [`lift`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lifted {
    pub node: NodeName,
    /// Who had placed the hold in the table, if there was one.
    pub table: Option<String>,
    /// Whether the legacy `held.json` held it.
    pub file: bool,
}

/// Releases the node `given` names: deletes its row on the master, then
/// removes it from the legacy `held.json`. Nothing is changed when no master
/// is reachable.
pub async fn lift(config: &Config, given: &str) -> Result<Lifted, HoldError> {
    let node = resolve(config, given)?;
    let connector = connector(config)?;
    let (master, session) = the_master(roles(&connector, config).await)?;
    let limit = connector.timeout();
    let sql = |reason: String| HoldError::Sql {
        what: "cannot delete the hold",
        master: master.clone(),
        reason: connector.scrub(reason),
    };
    let name = node.to_string();
    let client = session.client();
    let run = async {
        match table_owner(client).await {
            Ok(Owner::Ours) => {}
            Ok(Owner::Missing) => return Ok(None),
            Ok(Owner::Foreign { owner, me }) => {
                return Err(HoldError::NotOurs {
                    master: master.clone(),
                    reason: owner::refusal(TABLE, &owner, &me),
                })
            }
            Err((what, reason)) => {
                return Err(HoldError::Sql {
                    what,
                    master: master.clone(),
                    reason: connector.scrub(reason),
                })
            }
        }
        match client.query(DELETE.as_str(), &[&name]).await {
            Ok(rows) => match rows.first() {
                Some(row) => Ok(Some(
                    capped(
                        &row.try_get::<_, String>(0)
                            .map_err(|e| sql(crate::probe::describe_error(&e)))?,
                        PLACED_BY_CAP,
                    )
                    .0,
                )),
                None => Ok(None),
            },
            Err(e) if e.code() == Some(&SqlState::UNDEFINED_TABLE) => Ok(None),
            Err(e) => Err(sql(crate::probe::describe_error(&e))),
        }
    };
    let deleted = match tokio::time::timeout(limit * 2, run).await {
        Ok(r) => r?,
        Err(_) => {
            return Err(sql(format!(
                "no answer within {} s",
                (limit * 2).as_secs_f64()
            )))
        }
    };
    let file = change(&path_for(&config.status_file), &owners(config), |held| {
        held.remove(&name)
    })?;
    Ok(Lifted {
        node,
        table: deleted,
        file,
    })
}

/// The order to read the holds in, for [`Holds::refresh`]: the configured
/// nodes, masters first (they have the latest holds), then slaves, then
/// the rest (lost, clusterless, not seen yet), each group in configuration
/// order.
pub fn read_order(config: &Config, state: &crate::cluster::State) -> Vec<NodeName> {
    use crate::cluster::Place;
    // One map, not a search per comparison: this runs every beat.
    let places: std::collections::HashMap<&NodeName, Place> = state
        .nodes
        .iter()
        .rev()
        .map(|s| (&s.name, s.place))
        .collect();
    let rank = |n: &NodeName| match places.get(n) {
        Some(Place::Master) => 0,
        Some(Place::Slave) => 1,
        _ => 2,
    };
    let mut nodes: Vec<NodeName> = config.nodes.iter().map(|n| n.name.clone()).collect();
    nodes.sort_by_key(|n| rank(n));
    nodes
}

/// The holds a daemon reads every beat, without ever waiting for a node:
/// [`Holds::refresh`] starts a read in the background and takes the result
/// of the previous one; [`Holds::current`] is the list as of the last
/// successful read. A failed read leaves the previous list in force
/// (releasing everything because no node answers would attach nodes held on
/// purpose), and is logged once until its reason changes.
pub struct Holds {
    settings: ProbeSettings,
    /// The configured nodes' names: only their holds are read.
    configured: Vec<String>,
    held_path: PathBuf,
    /// Who may own `held_path`.
    owners: Owners,
    /// Built at the first read (it reads `sslrootcert`).
    connector: Option<Connector>,
    /// The connection of the last read, reused when its node is tried again.
    cached: Option<(NodeName, Session)>,
    /// The read running in the background, and where its result arrives.
    in_flight: Option<(
        tokio::task::JoinHandle<()>,
        tokio::sync::oneshot::Receiver<ReadOutcome>,
    )>,
    table: BTreeMap<String, HoldEntry>,
    file: BTreeSet<String>,
    current: BTreeMap<String, HoldEntry>,
    /// Whether the table has been read at least once.
    table_known: bool,
    table_error: LogOnce,
    file_error: LogOnce,
    /// What the last table read left out or cut.
    table_notes: LogOnce,
}

/// What one background read brings back.
struct ReadOutcome {
    connector: Option<Connector>,
    cached: Option<(NodeName, Session)>,
    table: Result<(NodeName, TableRead), String>,
    file: Result<BTreeSet<String>, String>,
}

/// The holds read from the table, and what was left out or cut on the way
/// (for a warning).
#[derive(Debug, Default)]
struct TableRead {
    holds: BTreeMap<String, HoldEntry>,
    notes: Vec<String>,
}

fn configured(config: &Config) -> Vec<String> {
    config.nodes.iter().map(|n| n.name.to_string()).collect()
}

impl Holds {
    /// No I/O: the first read happens at the first [`Holds::refresh`].
    pub fn new(config: &Config) -> Holds {
        Holds {
            settings: ProbeSettings::from_config(config),
            configured: configured(config),
            held_path: path_for(&config.status_file),
            owners: owners(config),
            connector: None,
            cached: None,
            in_flight: None,
            table: BTreeMap::new(),
            file: BTreeSet::new(),
            current: BTreeMap::new(),
            table_known: false,
            table_error: LogOnce::default(),
            file_error: LogOnce::default(),
            table_notes: LogOnce::default(),
        }
    }

    /// Takes a reloaded configuration; the holds read so far stay in force.
    /// A read in flight finishes with the old settings.
    pub fn reconfigure(&mut self, config: &Config) {
        let settings = ProbeSettings::from_config(config);
        if settings != self.settings {
            self.connector = None;
            self.cached = None;
        }
        self.settings = settings;
        self.configured = configured(config);
        self.held_path = path_for(&config.status_file);
        self.owners = owners(config);
    }

    /// Takes the result of a finished background read, then starts a new
    /// one if none is in flight; never waits. `candidates` are the nodes to
    /// read from, in order (masters first, then slaves, then the rest): the
    /// first that answers wins; a missing table there means no holds. Must
    /// be called within a tokio runtime.
    pub fn refresh(&mut self, candidates: Vec<NodeName>) {
        if let Some((_, rx)) = &mut self.in_flight {
            match rx.try_recv() {
                Ok(outcome) => {
                    self.in_flight = None;
                    self.apply(Some(outcome));
                }
                Err(tokio::sync::oneshot::error::TryRecvError::Empty) => return,
                Err(tokio::sync::oneshot::error::TryRecvError::Closed) => {
                    self.in_flight = None;
                    self.apply(None);
                }
            }
        }
        let connector = self.connector.take();
        let cached = self.cached.take();
        let settings = self.settings.clone();
        let held_path = self.held_path.clone();
        let owners = self.owners.clone();
        let configured = self.configured.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let outcome = read_all(
                settings, connector, cached, candidates, configured, held_path, owners,
            )
            .await;
            let _ = tx.send(outcome);
        });
        self.in_flight = Some((task, rx));
    }

    /// Waits for the read in flight, if any, and takes its result (for
    /// tests, and for a caller that wants the holds before acting).
    pub async fn settle(&mut self) {
        if let Some((_task, rx)) = self.in_flight.take() {
            self.apply(rx.await.ok());
        }
    }

    /// The holds as of the last successful read, by node name.
    pub fn current(&self) -> &BTreeMap<String, HoldEntry> {
        &self.current
    }

    /// The held node names.
    pub fn names(&self) -> Vec<String> {
        self.current.keys().cloned().collect()
    }

    /// For tests of callers that have no database: the table counts as
    /// read (and empty); `held.json` is still read.
    #[cfg(test)]
    pub(crate) fn assume_table_read(&mut self) {
        self.table_known = true;
    }

    /// Whether `node` is held.
    pub fn is_held(&self, node: &NodeName) -> bool {
        self.current.contains_key(&node.to_string())
    }

    /// Whether the hold table has been read at least once: until then only
    /// `held.json`'s holds are known, and a caller should not attach nodes.
    pub fn known(&self) -> bool {
        self.table_known
    }

    /// Takes a read's outcome (`None`: the read task died).
    fn apply(&mut self, outcome: Option<ReadOutcome>) {
        let outcome = outcome.unwrap_or_else(|| ReadOutcome {
            connector: None,
            cached: None,
            table: Err("the hold read ended without an answer".into()),
            file: Err("the hold read ended without an answer".into()),
        });
        if outcome.connector.is_some() {
            self.connector = outcome.connector;
        }
        self.cached = outcome.cached;
        match outcome.table {
            Ok((from, read)) => {
                if self.table_error.cleared() {
                    info!(node = %from, "holds readable again");
                }
                if read.notes.is_empty() {
                    self.table_notes.cleared();
                } else if self.table_notes.changed(read.notes.join("\n")) {
                    for note in &read.notes {
                        warn!(node = %from, "{note}");
                    }
                }
                self.table = read.holds;
                self.table_known = true;
            }
            Err(msg) => {
                if self.table_error.changed(&msg) {
                    error!("cannot read the holds: {msg} (the previous hold list stays in force)");
                }
            }
        }
        match outcome.file {
            Ok(file) => {
                if self.file_error.cleared() {
                    info!(file = %self.held_path.display(), "hold list readable again");
                }
                self.file = file;
            }
            Err(msg) => {
                if self.file_error.changed(&msg) {
                    error!("{msg} (the previous hold list stays in force)");
                }
            }
        }
        let next = merge(&self.table, &self.file);
        log_changes(&self.current, &next);
        self.current = next;
    }
}

impl Drop for Holds {
    fn drop(&mut self) {
        if let Some((task, _)) = self.in_flight.take() {
            task.abort();
        }
    }
}

/// The table's holds, and `held.json`'s for the nodes the table does not
/// hold.
fn merge(
    table: &BTreeMap<String, HoldEntry>,
    file: &BTreeSet<String>,
) -> BTreeMap<String, HoldEntry> {
    let mut all = table.clone();
    for n in file {
        all.entry(n.clone()).or_insert_with(|| HoldEntry::legacy(n));
    }
    all
}

fn log_changes(before: &BTreeMap<String, HoldEntry>, after: &BTreeMap<String, HoldEntry>) {
    for (n, e) in after {
        if !before.contains_key(n) {
            info!(
                node = %n,
                placed_by = %e.placed_by,
                placed_at = %e.placed_at,
                reason = e.reason.as_deref().unwrap_or(""),
                "node held: plusmoin keeps it out of pgpool until released"
            );
        }
    }
    for n in before.keys() {
        if !after.contains_key(n) {
            info!(node = %n, "node released: plusmoin attaches it again when it is in sync");
        }
    }
}

/// One background read: the table from the first candidate that answers,
/// and the legacy file.
async fn read_all(
    settings: ProbeSettings,
    connector: Option<Connector>,
    cached: Option<(NodeName, Session)>,
    candidates: Vec<NodeName>,
    configured: Vec<String>,
    held_path: PathBuf,
    owners: Owners,
) -> ReadOutcome {
    let file = read(&held_path, &owners).map_err(|e| e.to_string());
    let connector = match connector {
        Some(c) => c,
        None => match Connector::new(settings) {
            Ok(c) => c,
            Err(e) => {
                return ReadOutcome {
                    connector: None,
                    cached: None,
                    table: Err(e.to_string()),
                    file,
                }
            }
        },
    };
    let (cached, table) = read_table(&connector, cached, &candidates, &configured).await;
    ReadOutcome {
        connector: Some(connector),
        cached,
        table,
        file,
    }
}

#[allow(clippy::type_complexity)]
async fn read_table(
    connector: &Connector,
    mut cached: Option<(NodeName, Session)>,
    candidates: &[NodeName],
    configured: &[String],
) -> (
    Option<(NodeName, Session)>,
    Result<(NodeName, TableRead), String>,
) {
    let mut tried = Vec::new();
    for node in candidates {
        let session = match cached.take() {
            Some((n, s)) if &n == node && !s.is_closed() => s,
            other => {
                cached = other;
                match connector.connect(node).await {
                    Ok(s) => s,
                    Err(reason) => {
                        tried.push(format!("{node}: {reason}"));
                        continue;
                    }
                }
            }
        };
        match select_all(connector, &session, configured).await {
            Ok(holds) => return (Some((node.clone(), session)), Ok((node.clone(), holds))),
            Err(reason) => tried.push(format!("{node}: {reason}")),
        }
    }
    let why = if tried.is_empty() {
        "no node to read them from".to_string()
    } else {
        format!("no node answered ({})", tried.join("; "))
    };
    (None, Err(why))
}

/// The holds of the `configured` nodes on `session`'s node: none without
/// a table; an error for another role's table, which is never read.
async fn select_all(
    connector: &Connector,
    session: &Session,
    configured: &[String],
) -> Result<TableRead, String> {
    let limit = connector.timeout();
    let client = session.client();
    let run = async {
        match table_owner(client).await {
            Ok(Owner::Ours) => {}
            Ok(Owner::Missing) => return Ok(None),
            Ok(Owner::Foreign { owner, me }) => return Err(owner::refusal(TABLE, &owner, &me)),
            Err((what, reason)) => return Err(format!("{what}: {reason}")),
        }
        match client.query(SELECT_ALL.as_str(), &[&configured]).await {
            Ok(rows) => Ok(Some(rows)),
            Err(e) if e.code() == Some(&SqlState::UNDEFINED_TABLE) => Ok(None),
            Err(e) => Err(format!(
                "cannot read public.plusmoin_hold: {}",
                crate::probe::describe_error(&e)
            )),
        }
    };
    let rows = match tokio::time::timeout(limit, run).await {
        Ok(Ok(Some(rows))) => rows,
        Ok(Ok(None)) => return Ok(TableRead::default()),
        Ok(Err(reason)) => return Err(connector.scrub(reason)),
        Err(_) => return Err(format!("no answer within {} s", limit.as_secs_f64())),
    };
    let mut read = TableRead::default();
    let mut ignored = 0;
    let mut more = false;
    for row in &rows {
        ignored = row.try_get::<_, i64>(4).map_err(bad_shape)?;
        if row
            .try_get::<_, Option<String>>(0)
            .map_err(bad_shape)?
            .is_none()
        {
            continue;
        }
        if read.holds.len() == MAX_HOLDS {
            more = true;
            break;
        }
        let (entry, cut) = HoldEntry::read_row(row)?;
        for field in cut {
            let cap = if field == "reason" {
                REASON_CAP
            } else {
                PLACED_BY_CAP
            };
            read.notes.push(format!(
                "the hold of {}: its {field} is longer than {cap} characters; cut there",
                entry.node
            ));
        }
        read.holds.insert(entry.node.clone(), entry);
    }
    if more {
        read.notes.push(format!(
            "more than {MAX_HOLDS} holds: only the first {MAX_HOLDS} (by node name) are read"
        ));
    }
    if ignored > 0 {
        let count = if ignored >= IGNORED_COUNT_CAP {
            format!("{IGNORED_COUNT_CAP} or more rows")
        } else if ignored == 1 {
            "1 row".to_string()
        } else {
            format!("{ignored} rows")
        };
        read.notes.push(format!(
            "{count} of public.plusmoin_hold naming no configured node: ignored (a hold \
             names a configured node as `plusmoin status` shows it, host:port)"
        ));
    }
    Ok(read)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path) -> Config {
        let text = format!(
            r#"{{"dbname": "d", "user": "u", "password": "p", "instance_name": "i",
                "status_file": "{}/status.json",
                "nodes": [{{"host": "DB1"}}, {{"host": "db2", "port": 5433}},
                          {{"host": "db2", "port": 5434}}, {{"host": "::1", "port": 6000}}]}}"#,
            dir.display()
        );
        crate::config::parse(&text, Path::new("x.json")).unwrap()
    }

    #[test]
    fn hold_and_release_round_trip_through_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(dir.path());
        let path = path_for(&c.status_file);
        assert_eq!(path, dir.path().join("held.json"));
        assert!(
            read(&path, &Owners::me()).unwrap().is_empty(),
            "no file: nothing held"
        );
        assert_eq!(
            hold(&c, "db1:5432").unwrap(),
            (NodeName::new("DB1", 5432), true)
        );
        assert!(!hold(&c, "DB1").unwrap().1, "already held");
        assert_eq!(
            hold(&c, "[::1]:6000").unwrap().0,
            NodeName::new("::1", 6000)
        );
        let held: Vec<String> = read(&path, &Owners::me()).unwrap().into_iter().collect();
        assert_eq!(held, ["DB1:5432", "[::1]:6000"]);
        assert!(release(&c, "DB1:5432").unwrap().1);
        assert!(!release(&c, "DB1:5432").unwrap().1);
        let held: Vec<String> = read(&path, &Owners::me()).unwrap().into_iter().collect();
        assert_eq!(held, ["[::1]:6000"]);
    }

    #[test]
    fn unknown_or_ambiguous_nodes_are_refused_with_the_list() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(dir.path());
        let e = hold(&c, "db9:5432").unwrap_err().to_string();
        assert!(e.contains("\"db9:5432\" is not a configured node"), "{e}");
        assert!(e.contains("db2:5433, db2:5434"), "{e}");
        assert!(hold(&c, "db2").is_err(), "two nodes on db2");
        assert!(!path_for(&c.status_file).exists());
    }

    #[test]
    fn a_broken_file_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("held.json");
        std::fs::write(&path, "{not json").unwrap();
        assert!(matches!(
            read(&path, &Owners::me()),
            Err(HoldError::Invalid { .. })
        ));
    }

    #[test]
    fn concurrent_holds_are_all_kept() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(dir.path());
        std::thread::scope(|scope| {
            for node in ["db1:5432", "db2:5433", "db2:5434", "[::1]:6000"] {
                let c = &c;
                scope.spawn(move || {
                    for _ in 0..20 {
                        hold(c, node).unwrap();
                        release(c, node).unwrap();
                    }
                    hold(c, node).unwrap();
                });
            }
        });
        let held = read(&path_for(&c.status_file), &Owners::me()).unwrap();
        assert_eq!(held.len(), 4, "{held:?}");
    }

    #[test]
    fn the_master_is_the_only_node_out_of_recovery() {
        let n = |p| NodeName::new("db", p);
        let roles = |masters: &[u16], slaves: &[u16], down: &[u16]| Roles {
            masters: masters.iter().map(|&p| (n(p), ())).collect(),
            slaves: slaves.iter().map(|&p| n(p)).collect(),
            unreachable: down.iter().map(|&p| (n(p), "refused".into())).collect(),
        };
        assert_eq!(the_master(roles(&[1], &[2], &[3])).unwrap().0, n(1));
        let none = the_master(roles(&[], &[2], &[3])).unwrap_err().to_string();
        assert!(
            none.starts_with("no master reachable: a hold is stored on the master"),
            "{none}"
        );
        assert!(none.contains("db:2: in recovery; db:3: refused"), "{none}");
        let two = the_master(roles(&[1, 3], &[2], &[]))
            .unwrap_err()
            .to_string();
        assert!(two.contains("more than one master (db:1, db:3)"), "{two}");
    }

    #[test]
    fn the_table_wins_over_the_legacy_file() {
        let table: BTreeMap<String, HoldEntry> = [HoldEntry {
            node: "a:1".into(),
            placed_by: "bob@h (plusmoin i)".into(),
            placed_at: "2024-01-01T00:00:00.000Z".into(),
            reason: None,
        }]
        .into_iter()
        .map(|e| (e.node.clone(), e))
        .collect();
        let file: BTreeSet<String> = ["a:1".to_string(), "b:2".to_string()].into();
        let all = merge(&table, &file);
        assert_eq!(all["a:1"].placed_by, "bob@h (plusmoin i)");
        assert_eq!(all["b:2"].placed_by, LEGACY_PLACED_BY);
        assert_eq!(all.len(), 2);
    }

    #[test]
    fn fields_read_are_escaped_and_cut_at_their_caps() {
        let long = "p".repeat(PLACED_BY_CAP + 1);
        let (e, cut) = HoldEntry::cleaned(
            "a:1\n",
            &long,
            SystemTime::UNIX_EPOCH,
            Some("r\u{1b}[2J\u{7}"),
        );
        assert_eq!(e.node, "a:1\\n");
        assert_eq!(e.placed_by, format!("{}…", &long[..PLACED_BY_CAP]));
        assert_eq!(e.reason.as_deref(), Some("r\\u{1b}[2J\\u{7}"));
        assert_eq!(cut, ["placed_by"]);
        // The cap counts what is shown: escapes lengthen the text.
        let (e, cut) = HoldEntry::cleaned(
            "a:1",
            "x",
            SystemTime::UNIX_EPOCH,
            Some(&"\u{1b}".repeat(REASON_CAP)),
        );
        assert_eq!(e.reason.map(|r| r.chars().count()), Some(REASON_CAP + 1));
        assert_eq!(cut, ["reason"]);
    }

    #[test]
    fn every_statement_names_the_schema_and_reads_at_most_one_past_the_caps() {
        for sql in [HOLD_TABLE_DDL, &INSERT, &SELECT_ONE, &SELECT_ALL, &DELETE] {
            let bare = sql.replace("public.plusmoin_hold", "");
            assert!(!bare.contains("plusmoin_hold"), "{sql}");
            assert!(
                !bare.contains(" now()") && !bare.contains(" left("),
                "{sql}"
            );
        }
        assert!(SELECT_ALL.contains("pg_catalog.left(h.placed_by, 257)"));
        assert!(SELECT_ALL.contains("pg_catalog.left(h.reason, 1025)"));
        assert!(SELECT_ALL.contains("LIMIT 10001"));
        assert!(SELECT_ALL.contains("LIMIT 1000)"));
    }

    #[test]
    fn placed_by_names_user_host_and_instance() {
        let by = placed_by("pgpool1");
        assert!(by.contains('@'), "{by}");
        assert!(by.ends_with(" (plusmoin pgpool1)"), "{by}");
    }

    fn refused_port() -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }

    #[tokio::test]
    async fn no_node_answering_keeps_the_previous_list_and_the_legacy_file_counts() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(dir.path());
        hold(&c, "db1:5432").unwrap();
        let mut h = Holds::new(&c);
        assert!(h.current().is_empty(), "no I/O before the first refresh");
        let nowhere = vec![NodeName::new("127.0.0.1", refused_port())];
        h.refresh(nowhere.clone());
        h.settle().await;
        assert!(!h.known(), "the table was never read");
        assert_eq!(h.names(), ["DB1:5432"]);
        assert_eq!(h.current()["DB1:5432"].placed_by, LEGACY_PLACED_BY);
        assert!(h.is_held(&NodeName::new("DB1", 5432)));
        // A table read that once succeeded stays in force when none answers.
        h.table
            .insert("db2:5433".into(), HoldEntry::legacy("db2:5433"));
        h.table_known = true;
        h.refresh(nowhere);
        h.settle().await;
        assert_eq!(h.names(), ["DB1:5432", "db2:5433"]);
        assert!(h
            .table_error
            .current()
            .unwrap()
            .contains("no node answered"));
        // An unreadable file keeps its previous entries too.
        std::fs::write(path_for(&c.status_file), "{broken").unwrap();
        h.refresh(vec![]);
        h.settle().await;
        assert_eq!(h.names(), ["DB1:5432", "db2:5433"]);
        assert!(h.file_error.current().is_some());
        // Released from the file: gone.
        std::fs::write(path_for(&c.status_file), r#"{"held": []}"#).unwrap();
        h.refresh(vec![]);
        h.settle().await;
        assert_eq!(h.names(), ["db2:5433"]);
    }

    #[tokio::test]
    async fn refresh_never_waits_for_a_silent_server() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let keep = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(dir.path());
        c.connect_timeout = std::time::Duration::from_secs(2);
        let mut h = Holds::new(&c);
        let t0 = std::time::Instant::now();
        for _ in 0..5 {
            h.refresh(vec![NodeName::new("127.0.0.1", port)]);
        }
        assert!(t0.elapsed() < std::time::Duration::from_millis(100));
        assert!(h.in_flight.is_some(), "one read in flight");
        h.settle().await;
        let waited = t0.elapsed();
        assert!(waited >= std::time::Duration::from_secs(2), "{waited:?}");
        assert!(
            waited < std::time::Duration::from_secs(3),
            "one read, not five: {waited:?}"
        );
        assert!(h
            .table_error
            .current()
            .unwrap()
            .contains("no answer within 2s"));
        keep.abort();
    }

    #[test]
    fn holds_are_read_from_masters_first_then_slaves_then_the_rest() {
        use crate::cluster::{step, Observation, Policy, State, Time};
        let dir = tempfile::tempdir().unwrap();
        let c = config(dir.path());
        let names: Vec<NodeName> = c.nodes.iter().map(|n| n.name.clone()).collect();
        let policy = Policy {
            max_sync_delay: std::time::Duration::from_secs(10),
            recover_sync_delay: std::time::Duration::from_secs(5),
        };
        let t = Time(1_000_000_000);
        // DB1 down, db2:5433 a slave with no heartbeat yet (clusterless),
        // db2:5434 master, [::1]:6000 its slave in sync.
        let heartbeat = crate::cluster::Heartbeat {
            master_name: "db2:5434".into(),
            cluster_id: Some(0),
            written_at: t,
        };
        let obs = vec![
            (names[0].clone(), Observation::Down { reason: "x".into() }),
            (names[1].clone(), Observation::Slave { heartbeat: None }),
            (names[2].clone(), Observation::Master { wrote_at: t }),
            (
                names[3].clone(),
                Observation::Slave {
                    heartbeat: Some(heartbeat),
                },
            ),
        ];
        let (state, _) = step(&State::default(), &obs, t, &policy);
        let order = read_order(&c, &state);
        let want = [&names[2], &names[3], &names[0], &names[1]].map(Clone::clone);
        assert_eq!(order, want);
        assert_eq!(
            read_order(&c, &State::default()),
            names,
            "configuration order"
        );
    }

    #[derive(Clone, Default)]
    struct SharedLog(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for SharedLog {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl SharedLog {
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
        }
    }

    #[tokio::test]
    async fn changes_are_logged_and_a_lasting_failure_once() {
        let log = SharedLog::default();
        let writer = log.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let _default = tracing::subscriber::set_default(subscriber);
        let dir = tempfile::tempdir().unwrap();
        let c = config(dir.path());
        hold(&c, "db2:5433").unwrap();
        let mut h = Holds::new(&c);
        let nowhere = vec![NodeName::new("127.0.0.1", refused_port())];
        for _ in 0..3 {
            h.refresh(nowhere.clone());
            h.settle().await;
        }
        release(&c, "db2:5433").unwrap();
        h.refresh(nowhere);
        h.settle().await;
        let text = log.text();
        let held: Vec<&str> = text.lines().filter(|l| l.contains("node held")).collect();
        assert_eq!(held.len(), 1, "{text}");
        assert!(held[0].contains("node=db2:5433"), "{text}");
        assert!(held[0].contains("held.json (this host only)"), "{text}");
        let released = text.lines().filter(|l| l.contains("node released"));
        assert_eq!(released.count(), 1, "{text}");
        let failures = text.lines().filter(|l| l.contains("cannot read the holds"));
        assert_eq!(failures.count(), 1, "logged once while it lasts: {text}");
    }
}
