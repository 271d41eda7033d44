//! The statements a probe runs on a node's connection ([`super::node`]):
//! the role statement (`is_slave_statement`), the heartbeat table's
//! (create, write, read), and [`COMBINED`], which asks a slave both things
//! at once; with the checks on what they answer, so that a reason names
//! the mistake.

use super::node::{breaks_connection, describe, ProbeFailure};
use super::owner::{self, Owner};
use crate::cluster::{ClusterId, Heartbeat, MasterRepl, NodeName, Time, Walsender};
use std::time::SystemTime;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, Statement};

/// The heartbeat table's name, in schema [`owner::SCHEMA`] (every statement
/// names the schema: see [`owner`]).
pub(super) const TABLE: &str = "plusmoin_heartbeat";

/// The heartbeat table: one row per plusmoin instance, so that instances
/// watching the same servers never overwrite each other's beat.
pub(super) const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS public.plusmoin_heartbeat (\
     instance_name text PRIMARY KEY, \
     cluster_id integer, \
     master_name text NOT NULL, \
     beat_at timestamptz NOT NULL)";

/// The heartbeat write, which answers in the same statement (no round
/// trip more) the master's WAL position just after it (bytes from `0/0`),
/// its `synchronous_standby_names`, its `synchronous_commit` as a session
/// gets it (`reset_val`: the probe's own session sets `local`), and its
/// `pg_stat_replication` rows as JSON (`[[application_name, state,
/// sync_state], …]`, NULL without a row): see [`master_repl`].
pub(super) const UPSERT: &str = "WITH up AS (\
     INSERT INTO public.plusmoin_heartbeat (instance_name, cluster_id, master_name, beat_at) \
     VALUES ($1, $2, $3, $4) \
     ON CONFLICT (instance_name) DO UPDATE SET \
     cluster_id = EXCLUDED.cluster_id, master_name = EXCLUDED.master_name, beat_at = EXCLUDED.beat_at \
     RETURNING 1) \
     SELECT pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), '0/0')::int8 AS wal, \
     pg_catalog.current_setting('synchronous_standby_names') AS standby_names, \
     (SELECT s.reset_val FROM pg_catalog.pg_settings AS s WHERE s.name = 'synchronous_commit') AS synchronous_commit, \
     (SELECT pg_catalog.json_agg(pg_catalog.json_build_array(r.application_name, r.state, r.sync_state))::text \
     FROM pg_catalog.pg_stat_replication AS r) AS walsenders \
     FROM up";

/// The WAL positions a slave has received and replayed, in bytes from
/// `0/0` (NULL on a master), as the heartbeat reads take them.
macro_rules! positions {
    () => {
        "pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_last_wal_receive_lsn(), '0/0')::int8 AS received, \
         pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_last_wal_replay_lsn(), '0/0')::int8 AS replayed"
    };
}

const SELECT: &str = concat!(
    "SELECT master_name, cluster_id, beat_at, ",
    positions!(),
    " FROM public.plusmoin_heartbeat WHERE instance_name = $1"
);

/// The default role statement and [`SELECT`] in one: exactly one row, the
/// role first, then the heartbeat columns (NULL without a row) and whether
/// this instance has a row (a row whose columns are NULL is not "no row":
/// the two-statement path would call it a bad shape), then the slave's
/// WAL positions.
pub(super) const COMBINED: &str = concat!(
    "SELECT pg_catalog.pg_is_in_recovery(), \
     h.master_name, h.cluster_id, h.beat_at, h.instance_name IS NOT NULL AS found, ",
    positions!(),
    " FROM (SELECT 1) AS one LEFT JOIN public.plusmoin_heartbeat AS h ON h.instance_name = $1"
);

/// Whether the heartbeat table exists and is plusmoin's, asked once and
/// remembered in `ours` (see [`owner`]): false when it is missing; another
/// role's table is the probe's failure, with the owner named and the fix.
pub(super) async fn heartbeat_table(
    client: &Client,
    ours: &mut bool,
) -> Result<bool, ProbeFailure> {
    if *ours {
        return Ok(true);
    }
    match Box::pin(owner::check(client, TABLE)).await {
        Ok(Owner::Ours) => {
            *ours = true;
            Ok(true)
        }
        Ok(Owner::Missing) => Ok(false),
        Ok(Owner::Foreign { owner, me }) => {
            Err(ProbeFailure::answer(owner::refusal(TABLE, &owner, &me)))
        }
        Err(e) => Err(ProbeFailure::sql(
            "cannot ask who owns the heartbeat table",
            &e,
        )),
    }
}

/// The heartbeat row's cluster id, master name and time.
pub(super) fn row_values(
    node: &NodeName,
    cluster_id: Option<ClusterId>,
    now: Time,
) -> Result<(Option<i32>, String, SystemTime), ProbeFailure> {
    let cluster = match cluster_id.map(i32::try_from).transpose() {
        Ok(c) => c,
        Err(_) => {
            return Err(ProbeFailure::answer(format!(
                "cluster id {} does not fit the heartbeat table",
                cluster_id.unwrap_or_default()
            )))
        }
    };
    Ok((cluster, node.to_string(), now.to_system_time()))
}

/// Runs `is_slave_statement`: true on a slave.
pub(super) async fn role(
    client: &Client,
    cache: &mut Option<(String, Statement)>,
    text: &str,
) -> Result<bool, ProbeFailure> {
    const WHAT: &str = "is_slave_statement";
    let stmt = match &*cache {
        Some((t, s)) if t == text => s.clone(),
        _ => {
            *cache = None;
            let s = Box::pin(client.prepare(text))
                .await
                .map_err(|e| ProbeFailure::sql(&format!("{WHAT} failed"), &e))?;
            check_role_columns(&s).map_err(ProbeFailure::answer)?;
            *cache = Some((text.to_owned(), s.clone()));
            s
        }
    };
    let rows = match client.query(&stmt, &[]).await {
        Ok(rows) => rows,
        Err(e) => {
            // A changed schema can invalidate the cached plan.
            *cache = None;
            return Err(ProbeFailure::sql(&format!("{WHAT} failed"), &e));
        }
    };
    match rows.as_slice() {
        [] => Err(ProbeFailure::answer(format!("{WHAT} returned no row"))),
        [row] => match row.try_get::<_, Option<bool>>(0) {
            Ok(Some(v)) => Ok(v),
            Ok(None) => Err(ProbeFailure::answer(format!("{WHAT} returned NULL"))),
            Err(e) => Err(ProbeFailure::answer(format!(
                "{WHAT} returned nonsense: {}",
                describe(&e)
            ))),
        },
        more => Err(ProbeFailure::answer(format!(
            "{WHAT} returned {} rows, expected one",
            more.len()
        ))),
    }
}

/// Prepares [`COMBINED`]; `None` when it cannot be used (yet): the table
/// is missing, its columns are not those the checks accept, or any other
/// SQL error. The two statements then answer this probe, with their own
/// reasons; it is tried again at the next. A broken connection, or a table
/// that is not plusmoin's ([`heartbeat_table`]), is the probe's failure.
pub(super) async fn prepare_combined(
    client: &Client,
    ours: &mut bool,
) -> Result<Option<Statement>, ProbeFailure> {
    if !heartbeat_table(client, ours).await? {
        return Ok(None);
    }
    let stmt = match client.prepare_typed(COMBINED, &[Type::TEXT]).await {
        Ok(stmt) => stmt,
        Err(e) if breaks_connection(&e) => {
            return Err(ProbeFailure::sql("is_slave_statement failed", &e))
        }
        Err(_) => return Ok(None),
    };
    let columns: Vec<(&str, &Type)> = stmt
        .columns()
        .iter()
        .map(|c| (c.name(), c.type_()))
        .collect();
    let [(_, role), heartbeat @ .., (_, found), (_, received), (_, replayed)] = columns.as_slice()
    else {
        return Ok(None);
    };
    let usable = heartbeat.len() == 3
        && role_columns_reason(&[role]).is_none()
        && heartbeat_columns_reason(heartbeat).is_none()
        && **found == Type::BOOL
        && **received == Type::INT8
        && **replayed == Type::INT8;
    Ok(usable.then_some(stmt))
}

/// What running [`COMBINED`] gave.
pub(super) enum Combined {
    /// Not in recovery.
    Master,
    /// In recovery, with this instance's row if it has one.
    Slave(Option<Heartbeat>),
    /// The connection broke: the probe's failure, as the role statement
    /// would have met it.
    Broken(ProbeFailure),
    /// It failed (the table dropped, a plan invalidated, any SQL error):
    /// prepare it again.
    Failed,
    /// It ran, but its row is not one plusmoin can take at face value (a
    /// NULL where none is allowed, an invalid cluster id): the two
    /// statements say exactly what is wrong.
    Unreadable,
}

/// Runs [`COMBINED`]: the role, and this instance's row on a slave.
pub(super) async fn combined(client: &Client, stmt: &Statement, instance: &str) -> Combined {
    match client.query(stmt, &[&instance]).await {
        // One row by construction; several only if the table lost its
        // primary key, and then the first, as the heartbeat read takes.
        Ok(rows) => rows
            .first()
            .and_then(combined_row)
            .unwrap_or(Combined::Unreadable),
        Err(e) if breaks_connection(&e) => {
            Combined::Broken(ProbeFailure::sql("is_slave_statement failed", &e))
        }
        Err(_) => Combined::Failed,
    }
}

/// The answer in [`COMBINED`]'s row; `None` for anything the two-statement
/// path would refuse, or explain otherwise. A master's row is not read, as
/// its heartbeat read is ignored.
fn combined_row(row: &tokio_postgres::Row) -> Option<Combined> {
    if !row.try_get::<_, bool>(0).ok()? {
        return Some(Combined::Master);
    }
    if !row.try_get::<_, bool>(4).ok()? {
        return Some(Combined::Slave(None));
    }
    heartbeat_row(row, 1, 5)
        .ok()
        .map(|hb| Combined::Slave(Some(hb)))
}

/// Reads this instance's row as replayed on a slave. Not there yet (no
/// table, no row) is `None`: the slave is simply not in sync. Run on every
/// node; a master ignores the answer.
pub(super) async fn read_heartbeat(
    client: &Client,
    cache: &mut Option<Statement>,
    ours: &mut bool,
    instance: &str,
) -> Result<Option<Heartbeat>, ProbeFailure> {
    const WHAT: &str = "cannot read the heartbeat";
    if cache.is_none() && !Box::pin(heartbeat_table(client, ours)).await? {
        return Ok(None);
    }
    let stmt = match &*cache {
        Some(s) => s.clone(),
        None => match Box::pin(client.prepare_typed(SELECT, &[Type::TEXT])).await {
            Ok(s) => {
                let columns: Vec<(&str, &Type)> =
                    s.columns().iter().map(|c| (c.name(), c.type_())).collect();
                if let Some(reason) = heartbeat_columns_reason(&columns) {
                    return Err(ProbeFailure::answer(reason));
                }
                *cache = Some(s.clone());
                s
            }
            Err(e) if e.code() == Some(&SqlState::UNDEFINED_TABLE) => {
                *ours = false;
                return Ok(None);
            }
            Err(e) => return Err(ProbeFailure::sql(WHAT, &e)),
        },
    };
    let rows = match client.query(&stmt, &[&instance]).await {
        Ok(rows) => rows,
        Err(e) => {
            *cache = None;
            *ours = false;
            if e.code() == Some(&SqlState::UNDEFINED_TABLE) {
                return Ok(None);
            }
            return Err(ProbeFailure::sql(WHAT, &e));
        }
    };
    let Some(row) = rows.first() else {
        return Ok(None);
    };
    heartbeat_row(row, 0, 3).map(Some)
}

/// The longest master name kept from a heartbeat row, in bytes.
const MAX_MASTER_NAME: usize = 512;

/// The heartbeat columns of `row` from column `first` on (master name,
/// cluster id, time), with the WAL positions from column `positions` on
/// (received, replayed: `None` when absent or NULL), or why plusmoin
/// cannot take them at face value.
fn heartbeat_row(
    row: &tokio_postgres::Row,
    first: usize,
    positions: usize,
) -> Result<Heartbeat, ProbeFailure> {
    let bad = |e: tokio_postgres::Error| {
        ProbeFailure::answer(format!(
            "the heartbeat table has an unexpected shape: {}",
            describe(&e)
        ))
    };
    let master_name: String = row.try_get(first).map_err(bad)?;
    let cluster_id: Option<i32> = row.try_get(first + 1).map_err(bad)?;
    let beat_at: SystemTime = row.try_get(first + 2).map_err(bad)?;
    let cluster_id = match cluster_id.map(ClusterId::try_from).transpose() {
        Ok(c) => c,
        Err(_) => {
            return Err(ProbeFailure::answer(format!(
                "the heartbeat row holds an invalid cluster id {}",
                cluster_id.unwrap_or_default()
            )))
        }
    };
    // Written by plusmoin, but read back from a server: shown in reasons,
    // payloads and logs, so kept one inert line of bounded length (a host
    // name and a port are far shorter).
    let mut master_name = crate::text::escape_controls_owned(master_name);
    if master_name.len() > MAX_MASTER_NAME {
        let cut = (0..=MAX_MASTER_NAME)
            .rev()
            .find(|i| master_name.is_char_boundary(*i))
            .unwrap_or(0);
        master_name.truncate(cut);
    }
    let position = |i: usize| {
        row.try_get::<_, Option<i64>>(i)
            .ok()
            .flatten()
            .and_then(|p| u64::try_from(p).ok())
    };
    Ok(Heartbeat {
        master_name,
        cluster_id,
        written_at: Time::from_system_time(beat_at),
        received: position(positions),
        replayed: position(positions + 1),
    })
}

/// The master's answer to [`UPSERT`]: `None` when it gave no row or
/// columns of other types (a server that could not say).
pub(super) fn master_repl(rows: &[tokio_postgres::Row]) -> Option<Box<MasterRepl>> {
    let row = rows.first()?;
    let wal: Option<i64> = row.try_get(0).ok()?;
    let standby_names: Option<String> = row.try_get(1).ok()?;
    let synchronous_commit: Option<String> = row.try_get(2).ok()?;
    let walsenders: Option<String> = row.try_get(3).ok()?;
    let walsenders = match walsenders {
        None => Some(Vec::new()),
        Some(json) => walsenders_of(&json),
    };
    Some(Box::new(MasterRepl {
        wal: wal.and_then(|w| u64::try_from(w).ok()),
        standby_names: standby_names.unwrap_or_default(),
        synchronous_commit: synchronous_commit.unwrap_or_default(),
        walsenders,
    }))
}

/// `[[application_name, state, sync_state], …]`; `None` when a row shows
/// NULLs (a user without `pg_read_all_stats` sees only the pids) or the
/// text is not that.
fn walsenders_of(json: &str) -> Option<Vec<Walsender>> {
    let rows: Vec<[Option<String>; 3]> = serde_json::from_str(json).ok()?;
    rows.into_iter()
        .map(|[name, state, sync]| {
            Some(Walsender {
                application_name: crate::text::escape_controls_owned(name?),
                state: state?,
                sync_state: sync?,
            })
        })
        .collect()
}

/// `is_slave_statement` must yield a single boolean column; checked once at
/// prepare time so the reason names the mistake.
fn check_role_columns(stmt: &Statement) -> Result<(), String> {
    if !stmt.params().is_empty() {
        return Err(format!(
            "is_slave_statement expects {} parameters, plusmoin gives none",
            stmt.params().len()
        ));
    }
    let types: Vec<&Type> = stmt.columns().iter().map(|c| c.type_()).collect();
    role_columns_reason(&types).map_or(Ok(()), Err)
}

pub(super) fn role_columns_reason(types: &[&Type]) -> Option<String> {
    match types {
        [t] if **t == Type::BOOL => None,
        [t] => Some(format!(
            "is_slave_statement returned a {} column, expected one boolean column",
            t.name()
        )),
        [] => Some("is_slave_statement returned no column, expected one boolean column".into()),
        more => Some(format!(
            "is_slave_statement returned {} columns, expected one boolean column",
            more.len()
        )),
    }
}

/// The heartbeat columns a slave reads must have the types plusmoin wrote,
/// or the lag computed from them would be nonsense.
pub(super) fn heartbeat_columns_reason(columns: &[(&str, &Type)]) -> Option<String> {
    const EXPECTED: [(&str, &Type, &str); 3] = [
        ("master_name", &Type::TEXT, "text"),
        ("cluster_id", &Type::INT4, "integer"),
        ("beat_at", &Type::TIMESTAMPTZ, "timestamptz"),
    ];
    for ((name, want, want_name), (_, got)) in EXPECTED.iter().zip(columns) {
        // varchar stores and gives back the very string written; char(n)
        // would give it back padded, a name matching no node.
        let text_like = **want == Type::TEXT && **got == Type::VARCHAR;
        if *want != *got && !text_like {
            return Some(format!(
                "the heartbeat table's {name} column is {}, expected {want_name}",
                got.name()
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walsenders_are_read_from_json_and_nulls_are_unknown() {
        let ws = walsenders_of(r#"[["db2:5432","streaming","sync"],["x\ny","catchup","async"]]"#)
            .expect("read");
        assert_eq!(ws.len(), 2);
        assert_eq!(
            (
                ws[0].application_name.as_str(),
                ws[0].state.as_str(),
                ws[0].sync_state.as_str()
            ),
            ("db2:5432", "streaming", "sync")
        );
        // What a server says is one inert line.
        assert!(!ws[1].application_name.contains('\n'), "{:?}", ws[1]);
        // Without pg_read_all_stats the columns are NULL: unknown.
        assert_eq!(walsenders_of(r#"[[null,null,null]]"#), None);
        assert_eq!(walsenders_of(r#"[["a","streaming",null]]"#), None);
        assert_eq!(walsenders_of("not json"), None);
        assert_eq!(walsenders_of("[]"), Some(Vec::new()));
    }

    #[test]
    fn role_columns() {
        assert_eq!(role_columns_reason(&[&Type::BOOL]), None);
        let text = role_columns_reason(&[&Type::TEXT]).unwrap();
        assert!(text.contains("a text column"), "{text}");
        let two = role_columns_reason(&[&Type::BOOL, &Type::BOOL]).unwrap();
        assert!(two.contains("2 columns"), "{two}");
        let none = role_columns_reason(&[]).unwrap();
        assert!(none.contains("no column"), "{none}");
    }

    #[test]
    fn heartbeat_columns() {
        let good = [
            ("master_name", &Type::TEXT),
            ("cluster_id", &Type::INT4),
            ("beat_at", &Type::TIMESTAMPTZ),
        ];
        assert_eq!(heartbeat_columns_reason(&good), None);
        let mut varchar = good;
        varchar[0].1 = &Type::VARCHAR;
        assert_eq!(heartbeat_columns_reason(&varchar), None);
        let mut padded = good;
        padded[0].1 = &Type::BPCHAR;
        let r = heartbeat_columns_reason(&padded).unwrap();
        assert!(r.contains("master_name column is bpchar"), "{r}");
        let mut text_id = good;
        text_id[1].1 = &Type::TEXT;
        assert_eq!(
            heartbeat_columns_reason(&text_id).as_deref(),
            Some("the heartbeat table's cluster_id column is text, expected integer")
        );
        let mut naive = good;
        naive[2].1 = &Type::TIMESTAMP;
        let r = heartbeat_columns_reason(&naive).unwrap();
        assert!(r.contains("beat_at column is timestamp,"), "{r}");
    }
}
