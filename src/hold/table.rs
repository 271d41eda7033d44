//! The hold table, `public.plusmoin_hold` on the master: its statements,
//! reading its rows safely (escaped, cut at their caps), placing and
//! lifting a hold for `plusmoin hold` and `plusmoin release`, and reading
//! every hold of the configured nodes for [`Holds`](super::Holds). Every
//! statement names its schema, and the table is touched only once the
//! probe's `owner` check says it is plusmoin's own.

use super::{legacy, resolve, HoldError, IGNORED_COUNT_CAP, MAX_HOLDS, PLACED_BY_CAP, REASON_CAP};
use crate::cluster::{NodeName, Time};
use crate::config::Config;
use crate::payload::{rfc3339, HoldEntry};
use crate::probe::connect::{describe_error, Connector, Session};
use crate::probe::owner::{self, Owner};
use crate::probe::ProbeSettings;
use std::collections::BTreeMap;
use std::sync::LazyLock;
use std::time::SystemTime;
use tokio_postgres::error::SqlState;
use tracing::info;

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
pub(super) static INSERT: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO public.plusmoin_hold (node, placed_by, reason) VALUES ($1, $2, $3) \
         ON CONFLICT (node) DO NOTHING RETURNING {}",
        *COLUMNS
    )
});
pub(super) static SELECT_ONE: LazyLock<String> = LazyLock::new(|| {
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
pub(super) static SELECT_ALL: LazyLock<String> = LazyLock::new(|| {
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
pub(super) static DELETE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "DELETE FROM public.plusmoin_hold WHERE node = $1 RETURNING pg_catalog.left(placed_by, {})",
        PLACED_BY_CAP + 1
    )
});

/// A row of [`COLUMNS`] (from column 0), made safe to show: control
/// characters escaped, `placed_by` and `reason` cut at their caps.
pub(super) fn from_row(row: &tokio_postgres::Row) -> Result<HoldEntry, String> {
    read_row(row).map(|(e, _)| e)
}

/// [`from_row`], and the names of the fields that were cut.
pub(super) fn read_row(
    row: &tokio_postgres::Row,
) -> Result<(HoldEntry, Vec<&'static str>), String> {
    let node: String = row.try_get(0).map_err(bad_shape)?;
    let placed_by: String = row.try_get(1).map_err(bad_shape)?;
    let placed_at: SystemTime = row.try_get(2).map_err(bad_shape)?;
    let reason: Option<String> = row.try_get(3).map_err(bad_shape)?;
    Ok(cleaned(&node, &placed_by, placed_at, reason.as_deref()))
}

/// A hold from the table's values: control characters escaped,
/// `placed_by` and `reason` cut at [`PLACED_BY_CAP`] and [`REASON_CAP`]
/// characters; with the names of the fields that were cut.
pub(super) fn cleaned(
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

fn bad_shape(e: tokio_postgres::Error) -> String {
    format!(
        "the hold table has an unexpected shape: {}",
        describe_error(&e)
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
pub(super) struct Roles<S = Session> {
    pub(super) masters: Vec<(NodeName, S)>,
    pub(super) slaves: Vec<NodeName>,
    pub(super) unreachable: Vec<(NodeName, String)>,
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
pub(super) fn the_master<S>(roles: Roles<S>) -> Result<(NodeName, S), HoldError> {
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
                            return Err(sql("cannot create the hold table", describe_error(&e)));
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
                    return from_row(row)
                        .map(Placed::New)
                        .map_err(|r| sql("cannot read the hold back", r));
                }
            }
            Err(e) => return Err(sql("cannot write the hold", describe_error(&e))),
        }
        // Held already: the original hold stays as it was.
        let rows = client
            .query(SELECT_ONE.as_str(), &[&name])
            .await
            .map_err(|e| sql("cannot read the hold", describe_error(&e)))?;
        match rows.first() {
            Some(row) => from_row(row)
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
    owner::check(client, TABLE)
        .await
        .map_err(|e| ("cannot ask who owns the hold table", describe_error(&e)))
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

/// Releases the node `given` names from the table on the master and from
/// the legacy `held.json`: both, or neither. Everything that can fail is
/// checked first (`held.json` readable and, when it holds the node, locked
/// and its directory writable; a master reachable, the table ours); then
/// the row is deleted in a transaction, `held.json` written, and the
/// transaction committed. A failed `held.json` write rolls the delete back;
/// a failed commit puts `held.json` back as it was. Either way the error
/// says what was left as it was.
pub async fn lift(config: &Config, given: &str) -> Result<Lifted, HoldError> {
    let node = resolve(config, given)?;
    let name = node.to_string();
    let legacy = legacy::Removal::prepare(
        &legacy::path_for(&config.status_file),
        &legacy::owners(config),
        &name,
    )?;
    let connector = connector(config)?;
    let (master, session) = the_master(roles(&connector, config).await)?;
    let limit = connector.timeout();
    let sql = |reason: String| HoldError::Sql {
        what: "cannot delete the hold",
        master: master.clone(),
        reason: connector.scrub(reason),
    };
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
        // Committed only once held.json is written too.
        client
            .batch_execute("BEGIN")
            .await
            .map_err(|e| sql(describe_error(&e)))?;
        match client.query(DELETE.as_str(), &[&name]).await {
            Ok(rows) => match rows.first() {
                Some(row) => Ok(Some(
                    capped(
                        &row.try_get::<_, String>(0)
                            .map_err(|e| sql(describe_error(&e)))?,
                        PLACED_BY_CAP,
                    )
                    .0,
                )),
                None => Ok(None),
            },
            Err(e) if e.code() == Some(&SqlState::UNDEFINED_TABLE) => Ok(None),
            Err(e) => Err(sql(describe_error(&e))),
        }
    };
    // An error or a timeout leaves the transaction open: the connection,
    // dropped with `session`, ends it, and the server rolls it back.
    let deleted = match tokio::time::timeout(limit * 2, run).await {
        Ok(r) => r?,
        Err(_) => {
            return Err(sql(format!(
                "no answer within {} s",
                (limit * 2).as_secs_f64()
            )))
        }
    };
    if let Some(removal) = &legacy {
        if let Err(e) = removal.apply() {
            let rolled_back = tokio::time::timeout(limit, client.batch_execute("ROLLBACK"))
                .await
                .is_ok_and(|r| r.is_ok());
            return Err(HoldError::NotReleased {
                reason: e.to_string(),
                left: format!(
                    "the hold stays in the table on {master} ({}) and in {}",
                    if rolled_back {
                        "its delete rolled back"
                    } else {
                        "its delete never committed"
                    },
                    removal.path().display()
                ),
            });
        }
    }
    let committed = match tokio::time::timeout(limit, client.batch_execute("COMMIT")).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(describe_error(&e)),
        Err(_) => Err(format!("no answer within {} s", limit.as_secs_f64())),
    };
    if let Err(reason) = committed {
        let reason = format!(
            "cannot delete the hold on the master {master}: {}",
            connector.scrub(reason)
        );
        let left = match &legacy {
            None => "the hold stays in the table".to_string(),
            Some(removal) => match removal.undo() {
                Ok(()) => format!(
                    "the hold stays in the table, and {} was put back as it was",
                    removal.path().display()
                ),
                Err(e) => format!(
                    "the hold stays in the table, but {} could not be put back ({e}): \
                     run release again",
                    removal.path().display()
                ),
            },
        };
        return Err(HoldError::NotReleased { reason, left });
    }
    Ok(Lifted {
        node,
        table: deleted,
        file: legacy.is_some(),
    })
}

/// The holds read from the table, and what was left out or cut on the way
/// (for a warning).
#[derive(Debug, Default)]
pub(super) struct TableRead {
    pub(super) holds: BTreeMap<String, HoldEntry>,
    pub(super) notes: Vec<String>,
}

/// The holds of the `configured` nodes on `session`'s node: none without
/// a table; an error for another role's table, which is never read.
pub(super) async fn select_all(
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
                describe_error(&e)
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
        let (entry, cut) = read_row(row)?;
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
