//! One node's persistent connection and the couple of statements a beat runs
//! on it: the role query, then the heartbeat write (master) or read (slave).
//!
//! With the default `is_slave_statement`, a node that was not a master at its
//! last probe is asked both things in ONE statement ([`COMBINED`]): its role
//! and this instance's heartbeat row, the row's columns NULL when it has none.
//! Most nodes are slaves, and at scale plusmoin's CPU per beat goes mostly to
//! what each query costs in tokio-postgres whatever it asks (encoding it,
//! handing it to the connection task, decoding and parsing the answer), not
//! to the round trips: one statement instead of two is the biggest saving
//! per slave (benches/scale.rs). The combined statement is only ever a faster
//! way to the same answer: whenever it cannot give one (the table missing or
//! dropped, a shape the checks refuse, a row they would refuse, any error),
//! the probe takes the two-statement path for that probe, whose answers and
//! reasons are the reference, and tries the combined one again at the next.
//! A custom `is_slave_statement` always takes the two-statement path.

use super::owner::{self, Owner};
use super::tls::Tls;
use super::Shared;
use crate::cluster::{ClusterId, Heartbeat, NodeName, Observation, Time};
use crate::config::defaults;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_postgres::error::{Severity, SqlState};
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, NoTls, Statement};
use tracing::debug;

/// The heartbeat table's name, in schema [`owner::SCHEMA`] (every statement
/// names the schema: see [`owner`]).
const TABLE: &str = "plusmoin_heartbeat";

/// The heartbeat table: one row per plusmoin instance, so that instances
/// watching the same servers never overwrite each other's beat.
pub const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS public.plusmoin_heartbeat (\
     instance_name text PRIMARY KEY, \
     cluster_id integer, \
     master_name text NOT NULL, \
     beat_at timestamptz NOT NULL)";

const UPSERT: &str = "INSERT INTO public.plusmoin_heartbeat (instance_name, cluster_id, master_name, beat_at) \
     VALUES ($1, $2, $3, $4) \
     ON CONFLICT (instance_name) DO UPDATE SET \
     cluster_id = EXCLUDED.cluster_id, master_name = EXCLUDED.master_name, beat_at = EXCLUDED.beat_at";

const SELECT: &str =
    "SELECT master_name, cluster_id, beat_at FROM public.plusmoin_heartbeat WHERE instance_name = $1";

/// The default role statement and [`SELECT`] in one: exactly one row, the
/// role first, then the heartbeat columns (NULL without a row) and whether
/// this instance has a row (a row whose columns are NULL is not "no row":
/// the two-statement path would call it a bad shape).
pub(crate) const COMBINED: &str = "SELECT pg_catalog.pg_is_in_recovery(), \
     h.master_name, h.cluster_id, h.beat_at, h.instance_name IS NOT NULL AS found \
     FROM (SELECT 1) AS one LEFT JOIN public.plusmoin_heartbeat AS h ON h.instance_name = $1";

/// Why a probe failed, and whether the connection can still be used.
#[derive(Debug)]
pub(super) struct Failure {
    pub reason: String,
    /// The connection is broken (closed, I/O, protocol): drop it and
    /// reconnect next time. SQL errors leave it usable.
    pub broken: bool,
}

impl Failure {
    fn sql(context: &str, err: &tokio_postgres::Error) -> Failure {
        Failure {
            reason: format!("{context}: {}", describe(err)),
            broken: breaks_connection(err),
        }
    }
    fn answer(reason: String) -> Failure {
        Failure {
            reason,
            broken: false,
        }
    }
}

/// Whether the session is over after `err`: closed, I/O or protocol
/// trouble, or a FATAL from the server (shutdown, terminated backend), whose
/// message arrives as the answer to the pending statement.
fn breaks_connection(err: &tokio_postgres::Error) -> bool {
    match err.as_db_error() {
        None => true,
        Some(db) => matches!(
            db.parsed_severity(),
            Some(Severity::Fatal | Severity::Panic)
        ),
    }
}

/// One line for a tokio-postgres error, with its causes: its own `Display`
/// stops at "db error" or "error connecting to server". What the server
/// said is escaped ([`crate::text::escape_controls`]): one inert line.
pub(super) fn describe(err: &tokio_postgres::Error) -> String {
    if let Some(db) = err.as_db_error() {
        return format!(
            "{}: {} (SQLSTATE {})",
            crate::text::escape_controls(db.severity()),
            crate::text::escape_controls(db.message()),
            db.code().code()
        );
    }
    let mut out = err.to_string();
    let mut cause = std::error::Error::source(err);
    while let Some(c) = cause {
        // Some causes (TLS) repeat their own cause in their message.
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    crate::text::escape_controls(&out)
}

/// A live connection to one node, kept across beats, with the statements
/// prepared on it.
pub(super) struct NodeConn {
    client: Client,
    /// The server's system identifier (shared by a primary and its
    /// standbys), when it could be read.
    system: Option<u64>,
    /// Drives the socket; aborted (after a short grace) once the client goes.
    task: Option<JoinHandle<()>>,
    /// The role statement and the text it was prepared from, so a reload
    /// that changes `is_slave_statement` re-prepares it.
    role: Option<(String, Statement)>,
    upsert: Option<Statement>,
    select: Option<Statement>,
    /// [`COMBINED`], prepared and its columns checked; only kept while
    /// `is_slave_statement` is the default it stands for.
    combined: Option<Statement>,
    /// The heartbeat table was found to be plusmoin's ([`owner::check`]):
    /// asked before the first statement on it is prepared, and again after
    /// any of them failed (the table may have been dropped).
    table_ours: bool,
    /// The node was a master at the last probe on this connection.
    was_master: bool,
    /// Signalled when the connection task ends: the server closed the
    /// connection (died, restarted, terminated us) or it broke.
    ended: Arc<Notify>,
}

/// The server's system identifier (`pg_control_system()`, the same on a
/// primary and every standby made from it), read once per connection: it
/// tells two masters of one replication set (a split brain) from masters
/// of different sets. `None` when it cannot be read (an old server, a
/// server that says no): such a master could be of any set.
async fn system_identifier(client: &Client) -> Option<u64> {
    let rows = client
        .simple_query("SELECT system_identifier FROM pg_catalog.pg_control_system()")
        .await
        .ok()?;
    rows.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r
            .get(0)
            .and_then(|v| v.parse::<i64>().ok())
            .map(|v| v as u64),
        _ => None,
    })
}

impl Drop for NodeConn {
    fn drop(&mut self) {
        // The client is dropped right after this, which makes the connection
        // task send Terminate and finish. A frozen server would keep it
        // waiting forever, so it gets a second, then it is aborted.
        if let Some(task) = self.task.take() {
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => {
                    rt.spawn(async move {
                        let abort = task.abort_handle();
                        if tokio::time::timeout(Duration::from_secs(1), task)
                            .await
                            .is_err()
                        {
                            abort.abort();
                        }
                    });
                }
                Err(_) => task.abort(),
            }
        }
    }
}

impl NodeConn {
    pub(super) async fn connect(shared: &Shared, node: &NodeName) -> Result<NodeConn, Failure> {
        let s = &shared.settings;
        let mut cfg = tokio_postgres::Config::new();
        cfg.host(&node.host)
            .port(node.port)
            .user(&s.user)
            .password(s.password_for(node).expose())
            .dbname(&s.dbname)
            .application_name("plusmoin")
            // The heartbeat must not wait for synchronous standbys: with
            // one of them down, every write would hang and a healthy master
            // would look down.
            .options("-c synchronous_commit=local")
            .ssl_mode(shared.pg_ssl_mode)
            .connect_timeout(s.connect_timeout);
        let fail = |e: tokio_postgres::Error| Failure {
            reason: if e.as_db_error().is_some() {
                format!("cannot log in: {}", describe(&e))
            } else {
                describe(&e)
            },
            broken: true,
        };
        let name = node.clone();
        let ended = Arc::new(Notify::new());
        let signal = Arc::clone(&ended);
        let (client, task) = match &shared.tls {
            Tls::Off => {
                let (client, connection) = cfg.connect(NoTls).await.map_err(fail)?;
                (client, tokio::spawn(drive(name, connection, signal)))
            }
            Tls::Native(tls) => {
                let (client, connection) = cfg.connect(tls.clone()).await.map_err(fail)?;
                (client, tokio::spawn(drive(name, connection, signal)))
            }
        };
        debug!(node = %node, "connected");
        let system = system_identifier(&client).await;
        Ok(NodeConn {
            system,
            client,
            task: Some(task),
            role: None,
            upsert: None,
            select: None,
            combined: None,
            table_ours: false,
            was_master: false,
            ended,
        })
    }

    /// The server's system identifier, read when the connection was made.
    pub(super) fn system(&self) -> Option<u64> {
        self.system
    }

    pub(super) fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    pub(super) fn client(&self) -> &Client {
        &self.client
    }

    /// Resolves once the connection has ended: news about the server that
    /// need not wait for the next beat.
    pub(super) async fn ended(&self) {
        if self.client.is_closed() {
            return;
        }
        self.ended.notified().await
    }

    /// The beat's statements on this node.
    pub(super) async fn observe(
        &mut self,
        shared: &Shared,
        node: &NodeName,
        cluster_id: Option<ClusterId>,
        now: Time,
    ) -> Result<Observation, Failure> {
        let s = &shared.settings;
        // One round trip a beat, as a rule (tokio-postgres pipelines
        // concurrent queries on a connection; each has its own Sync, so an
        // error in one leaves the other alone). On a node that was a slave
        // (or is new), the role statement and the heartbeat read go out
        // together: a slave, the common case, costs one round trip
        // (benches/scale.rs). On a node that was a master the read would be
        // wasted: the role goes out with the heartbeat write instead. Should
        // the node have become a slave meanwhile, that write fails (a
        // standby is read-only) and is ignored, and the read follows.
        //
        // With the default role statement, a slave costs even less: one
        // statement ([`COMBINED`], see the module doc). Whenever it cannot
        // answer, the two it stands for do, as just described.
        //
        // Each path's statements are boxed where they are awaited (and a
        // statement's preparation, which runs once), so that a probe in
        // flight holds the memory of the path it takes, not of the largest.
        if self.was_master {
            if let Some(upsert) = self.upsert.clone() {
                let (cluster, master_name, beat_at) = row_values(node, cluster_id, now)?;
                let params: [&(dyn ToSql + Sync); 4] =
                    [&s.instance_name, &cluster, &master_name, &beat_at];
                let (role, wrote) = Box::pin(async {
                    tokio::join!(
                        role(&self.client, &mut self.role, &s.is_slave_statement),
                        self.client.execute(&upsert, &params),
                    )
                })
                .await;
                if role? {
                    self.was_master = false;
                    let heartbeat = Box::pin(read_heartbeat(
                        &self.client,
                        &mut self.select,
                        &mut self.table_ours,
                        &s.instance_name,
                    ))
                    .await?;
                    return Ok(Observation::Slave { heartbeat });
                }
                if wrote.is_err() {
                    // The table was dropped, say: written again the long
                    // way, which checks whose table it is, creates it or
                    // says why it cannot.
                    self.upsert = None;
                    self.table_ours = false;
                    Box::pin(self.write_heartbeat(&s.instance_name, node, cluster_id, now)).await?;
                }
                return Ok(Observation::Master { wrote_at: now });
            }
        }
        // The default role statement: role and heartbeat in one statement.
        let default_role = s.is_slave_statement == defaults::IS_SLAVE_STATEMENT;
        if !default_role {
            // A reload gave a custom statement: the combined one stands for
            // another, and is prepared again if the default comes back.
            self.combined = None;
        }
        if !self.was_master && default_role {
            let stmt = match self.combined.clone() {
                Some(stmt) => Some(stmt),
                None => {
                    self.combined =
                        Box::pin(prepare_combined(&self.client, &mut self.table_ours)).await?;
                    self.combined.clone()
                }
            };
            if let Some(stmt) = stmt {
                match Box::pin(combined(&self.client, &stmt, &s.instance_name)).await {
                    Combined::Master => {
                        self.was_master = true;
                        Box::pin(self.write_heartbeat(&s.instance_name, node, cluster_id, now))
                            .await?;
                        return Ok(Observation::Master { wrote_at: now });
                    }
                    Combined::Slave(heartbeat) => {
                        // The two statements it stands for, if prepared
                        // (an error, a promotion), are closed: memory here
                        // and on the server.
                        self.role = None;
                        self.select = None;
                        return Ok(Observation::Slave { heartbeat });
                    }
                    Combined::Broken(f) => return Err(f),
                    Combined::Failed => {
                        // The table dropped, a changed plan, any error: the
                        // two statements answer this time, and it is
                        // prepared again at the next probe, after the
                        // table's owner is asked again.
                        self.combined = None;
                        self.table_ours = false;
                    }
                    Combined::Unreadable => {}
                }
            }
        }
        let (role, heartbeat) = if self.was_master {
            (
                Box::pin(role(&self.client, &mut self.role, &s.is_slave_statement)).await,
                None,
            )
        } else {
            let (r, h) = Box::pin(async {
                tokio::join!(
                    role(&self.client, &mut self.role, &s.is_slave_statement),
                    read_heartbeat(
                        &self.client,
                        &mut self.select,
                        &mut self.table_ours,
                        &s.instance_name
                    ),
                )
            })
            .await;
            (r, Some(h))
        };
        let is_slave = role?;
        self.was_master = !is_slave;
        if is_slave {
            // Only when a master was just demoted: the read it skipped.
            let heartbeat = match heartbeat {
                Some(h) => h?,
                None => {
                    Box::pin(read_heartbeat(
                        &self.client,
                        &mut self.select,
                        &mut self.table_ours,
                        &s.instance_name,
                    ))
                    .await?
                }
            };
            Ok(Observation::Slave { heartbeat })
        } else {
            Box::pin(self.write_heartbeat(&s.instance_name, node, cluster_id, now)).await?;
            Ok(Observation::Master { wrote_at: now })
        }
    }

    /// Upserts this instance's row. A missing table is created once;
    /// another role's table, or any other failure, means this is not a
    /// master plusmoin can use.
    async fn write_heartbeat(
        &mut self,
        instance: &str,
        node: &NodeName,
        cluster_id: Option<ClusterId>,
        now: Time,
    ) -> Result<(), Failure> {
        let (cluster, master_name, beat_at) = row_values(node, cluster_id, now)?;
        let mut created = false;
        loop {
            let result = self
                .try_upsert(instance, cluster, &master_name, beat_at)
                .await;
            let missing = match &result {
                Err(Upsert::Missing) => true,
                Err(Upsert::Sql(e)) => e.code() == Some(&SqlState::UNDEFINED_TABLE),
                _ => false,
            };
            match result {
                Ok(()) => return Ok(()),
                Err(_) if missing && !created => {
                    self.upsert = None;
                    self.select = None;
                    self.combined = None;
                    self.table_ours = false;
                    created = true;
                    if let Err(e) = self.client.batch_execute(CREATE_TABLE).await {
                        // Another instance may have created it at the same moment.
                        let raced = e.code() == Some(&SqlState::DUPLICATE_TABLE)
                            || e.code() == Some(&SqlState::UNIQUE_VIOLATION);
                        if !raced {
                            return Err(Failure::sql("cannot create the heartbeat table", &e));
                        }
                    }
                    debug!(node = %node, "heartbeat table created");
                }
                Err(Upsert::Missing) => {
                    return Err(Failure::answer(format!(
                        "cannot write the heartbeat: table {}.{TABLE} is missing",
                        owner::SCHEMA
                    )))
                }
                Err(Upsert::Refused(f)) => return Err(f),
                Err(Upsert::Sql(e)) => {
                    self.upsert = None;
                    self.table_ours = false;
                    return Err(Failure::sql("cannot write the heartbeat", &e));
                }
            }
        }
    }

    async fn try_upsert(
        &mut self,
        instance: &str,
        cluster: Option<i32>,
        master_name: &str,
        beat_at: SystemTime,
    ) -> Result<(), Upsert> {
        let stmt = match &self.upsert {
            Some(s) => s.clone(),
            None => {
                if !heartbeat_table(&self.client, &mut self.table_ours)
                    .await
                    .map_err(Upsert::Refused)?
                {
                    return Err(Upsert::Missing);
                }
                let s = self
                    .client
                    .prepare_typed(
                        UPSERT,
                        &[Type::TEXT, Type::INT4, Type::TEXT, Type::TIMESTAMPTZ],
                    )
                    .await
                    .map_err(Upsert::Sql)?;
                self.upsert = Some(s.clone());
                s
            }
        };
        self.client
            .execute(&stmt, &[&instance, &cluster, &master_name, &beat_at])
            .await
            .map_err(Upsert::Sql)?;
        Ok(())
    }
}

/// Why the heartbeat upsert did not run.
enum Upsert {
    /// There is no heartbeat table.
    Missing,
    /// The table is another role's, or its owner could not be asked.
    Refused(Failure),
    Sql(tokio_postgres::Error),
}

/// Whether the heartbeat table exists and is plusmoin's, asked once and
/// remembered in `ours` (see [`owner`]): false when it is missing; another
/// role's table is the probe's failure, with the owner named and the fix.
async fn heartbeat_table(client: &Client, ours: &mut bool) -> Result<bool, Failure> {
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
            Err(Failure::answer(owner::refusal(TABLE, &owner, &me)))
        }
        Err(e) => Err(Failure::sql("cannot ask who owns the heartbeat table", &e)),
    }
}

/// The heartbeat row's cluster id, master name and time.
fn row_values(
    node: &NodeName,
    cluster_id: Option<ClusterId>,
    now: Time,
) -> Result<(Option<i32>, String, SystemTime), Failure> {
    let cluster = match cluster_id.map(i32::try_from).transpose() {
        Ok(c) => c,
        Err(_) => {
            return Err(Failure::answer(format!(
                "cluster id {cluster_id:?} does not fit the heartbeat table"
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
) -> Result<bool, Failure> {
    const WHAT: &str = "is_slave_statement";
    let stmt = match &*cache {
        Some((t, s)) if t == text => s.clone(),
        _ => {
            *cache = None;
            let s = Box::pin(client.prepare(text))
                .await
                .map_err(|e| Failure::sql(&format!("{WHAT} failed"), &e))?;
            check_role_columns(&s).map_err(Failure::answer)?;
            *cache = Some((text.to_owned(), s.clone()));
            s
        }
    };
    let rows = match client.query(&stmt, &[]).await {
        Ok(rows) => rows,
        Err(e) => {
            // A changed schema can invalidate the cached plan.
            *cache = None;
            return Err(Failure::sql(&format!("{WHAT} failed"), &e));
        }
    };
    match rows.as_slice() {
        [] => Err(Failure::answer(format!("{WHAT} returned no row"))),
        [row] => match row.try_get::<_, Option<bool>>(0) {
            Ok(Some(v)) => Ok(v),
            Ok(None) => Err(Failure::answer(format!("{WHAT} returned NULL"))),
            Err(e) => Err(Failure::answer(format!(
                "{WHAT} returned nonsense: {}",
                describe(&e)
            ))),
        },
        more => Err(Failure::answer(format!(
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
async fn prepare_combined(client: &Client, ours: &mut bool) -> Result<Option<Statement>, Failure> {
    if !heartbeat_table(client, ours).await? {
        return Ok(None);
    }
    let stmt = match client.prepare_typed(COMBINED, &[Type::TEXT]).await {
        Ok(stmt) => stmt,
        Err(e) if breaks_connection(&e) => {
            return Err(Failure::sql("is_slave_statement failed", &e))
        }
        Err(_) => return Ok(None),
    };
    let columns: Vec<(&str, &Type)> = stmt
        .columns()
        .iter()
        .map(|c| (c.name(), c.type_()))
        .collect();
    let [(_, role), heartbeat @ .., (_, found)] = columns.as_slice() else {
        return Ok(None);
    };
    let usable = heartbeat.len() == 3
        && role_columns_reason(&[role]).is_none()
        && heartbeat_columns_reason(heartbeat).is_none()
        && **found == Type::BOOL;
    Ok(usable.then_some(stmt))
}

/// What running [`COMBINED`] gave.
enum Combined {
    /// Not in recovery.
    Master,
    /// In recovery, with this instance's row if it has one.
    Slave(Option<Heartbeat>),
    /// The connection broke: the probe's failure, as the role statement
    /// would have met it.
    Broken(Failure),
    /// It failed (the table dropped, a plan invalidated, any SQL error):
    /// prepare it again.
    Failed,
    /// It ran, but its row is not one plusmoin can take at face value (a
    /// NULL where none is allowed, an invalid cluster id): the two
    /// statements say exactly what is wrong.
    Unreadable,
}

/// Runs [`COMBINED`]: the role, and this instance's row on a slave.
async fn combined(client: &Client, stmt: &Statement, instance: &str) -> Combined {
    match client.query(stmt, &[&instance]).await {
        // One row by construction; several only if the table lost its
        // primary key, and then the first, as the heartbeat read takes.
        Ok(rows) => rows
            .first()
            .and_then(combined_row)
            .unwrap_or(Combined::Unreadable),
        Err(e) if breaks_connection(&e) => {
            Combined::Broken(Failure::sql("is_slave_statement failed", &e))
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
    heartbeat_row(row, 1)
        .ok()
        .map(|hb| Combined::Slave(Some(hb)))
}

/// Reads this instance's row as replayed on a slave. Not there yet (no
/// table, no row) is `None`: the slave is simply not in sync. Run on every
/// node; a master ignores the answer.
async fn read_heartbeat(
    client: &Client,
    cache: &mut Option<Statement>,
    ours: &mut bool,
    instance: &str,
) -> Result<Option<Heartbeat>, Failure> {
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
                    return Err(Failure::answer(reason));
                }
                *cache = Some(s.clone());
                s
            }
            Err(e) if e.code() == Some(&SqlState::UNDEFINED_TABLE) => {
                *ours = false;
                return Ok(None);
            }
            Err(e) => return Err(Failure::sql(WHAT, &e)),
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
            return Err(Failure::sql(WHAT, &e));
        }
    };
    let Some(row) = rows.first() else {
        return Ok(None);
    };
    heartbeat_row(row, 0).map(Some)
}

/// The heartbeat columns of `row` from column `first` on (master name,
/// cluster id, time), or why plusmoin cannot take them at face value.
/// The longest master name kept from a heartbeat row, in bytes.
const MAX_MASTER_NAME: usize = 512;

fn heartbeat_row(row: &tokio_postgres::Row, first: usize) -> Result<Heartbeat, Failure> {
    let bad = |e: tokio_postgres::Error| {
        Failure::answer(format!(
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
            return Err(Failure::answer(format!(
                "the heartbeat row holds an invalid cluster id {cluster_id:?}"
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
    Ok(Heartbeat {
        master_name,
        cluster_id,
        written_at: Time::from_system_time(beat_at),
    })
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

async fn drive<S, T>(
    node: NodeName,
    connection: tokio_postgres::Connection<S, T>,
    ended: Arc<Notify>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    if let Err(e) = connection.await {
        debug!(node = %node, error = %describe(&e), "connection ended");
    }
    // A stored permit: whoever waits later still learns of it.
    ended.notify_one();
}

#[cfg(test)]
mod tests {
    use super::*;

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
