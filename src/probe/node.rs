//! One node's persistent connection and the couple of statements a beat runs
//! on it: the role query, then the heartbeat write (master) or read (slave).
//!
//! With the default `is_slave_statement`, a node that was not a master at its
//! last probe is asked both things in ONE statement
//! ([`COMBINED`](super::statements::COMBINED)): its role and this instance's
//! heartbeat row, the row's columns NULL when it has none.
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

use super::owner;
use super::statements::{
    combined, heartbeat_table, master_repl, prepare_combined, read_heartbeat, role, row_values,
    Combined, CREATE_TABLE, TABLE, UPSERT,
};
use super::tls::Tls;
use super::Shared;
use crate::cluster::{ClusterId, MasterRepl, NodeName, Observation, Time};
use crate::config::defaults;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_postgres::error::{Severity, SqlState};
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, NoTls, Statement};
use tracing::debug;

/// Why a probe failed, and whether the connection can still be used.
#[derive(Debug)]
pub(super) struct ProbeFailure {
    pub(super) reason: String,
    /// The connection is broken (closed, I/O, protocol): drop it and
    /// reconnect next time. SQL errors leave it usable.
    pub(super) broken: bool,
}

impl ProbeFailure {
    pub(super) fn sql(context: &str, err: &tokio_postgres::Error) -> ProbeFailure {
        ProbeFailure {
            reason: format!("{context}: {}", describe(err)),
            broken: breaks_connection(err),
        }
    }
    pub(super) fn answer(reason: String) -> ProbeFailure {
        ProbeFailure {
            reason,
            broken: false,
        }
    }
}

/// Whether the session is over after `err`: closed, I/O or protocol
/// trouble, or a FATAL from the server (shutdown, terminated backend), whose
/// message arrives as the answer to the pending statement.
pub(super) fn breaks_connection(err: &tokio_postgres::Error) -> bool {
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
    /// [`COMBINED`](super::statements::COMBINED), prepared and its columns
    /// checked; only kept while `is_slave_statement` is the default it
    /// stands for.
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
    pub(super) async fn connect(
        shared: &Shared,
        node: &NodeName,
    ) -> Result<NodeConn, ProbeFailure> {
        let s = &shared.settings;
        let mut cfg = tokio_postgres::Config::new();
        cfg.host(&node.host)
            .port(node.port)
            .user(&s.user)
            .password(s.password_for(node).expose())
            .dbname(&s.dbname)
            .application_name("plusmoin")
            .ssl_mode(shared.pg_ssl_mode)
            .connect_timeout(s.connect_timeout);
        let fail = |e: tokio_postgres::Error| ProbeFailure {
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
        // The heartbeat must not wait for synchronous standbys: with one
        // of them down, every write would hang and a healthy master would
        // look down. Set in the session, not as a startup option, so that
        // the server's own value stays what `RESET` would give (`UPSERT`
        // reads it).
        client
            .batch_execute("SET synchronous_commit TO local")
            .await
            .map_err(|e| ProbeFailure {
                reason: format!("cannot set synchronous_commit: {}", describe(&e)),
                broken: true,
            })?;
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
    ) -> Result<Observation, ProbeFailure> {
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
                        self.client.query(&upsert, &params),
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
                let repl = match wrote {
                    Ok(rows) => master_repl(&rows),
                    Err(_) => {
                        // The table was dropped, say: written again the
                        // long way, which checks whose table it is, creates
                        // it or says why it cannot.
                        self.upsert = None;
                        self.table_ours = false;
                        Box::pin(self.write_heartbeat(&s.instance_name, node, cluster_id, now))
                            .await?
                    }
                };
                return Ok(Observation::Master {
                    wrote_at: now,
                    repl,
                });
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
                        let repl =
                            Box::pin(self.write_heartbeat(&s.instance_name, node, cluster_id, now))
                                .await?;
                        return Ok(Observation::Master {
                            wrote_at: now,
                            repl,
                        });
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
            let repl =
                Box::pin(self.write_heartbeat(&s.instance_name, node, cluster_id, now)).await?;
            Ok(Observation::Master {
                wrote_at: now,
                repl,
            })
        }
    }

    /// Upserts this instance's row, with what the write reads along
    /// ([`master_repl`]). A missing table is created once; another role's
    /// table, or any other failure, means this is not a master plusmoin
    /// can use.
    async fn write_heartbeat(
        &mut self,
        instance: &str,
        node: &NodeName,
        cluster_id: Option<ClusterId>,
        now: Time,
    ) -> Result<Option<Box<MasterRepl>>, ProbeFailure> {
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
                Ok(repl) => return Ok(repl),
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
                            return Err(ProbeFailure::sql("cannot create the heartbeat table", &e));
                        }
                    }
                    debug!(node = %node, "heartbeat table created");
                }
                Err(Upsert::Missing) => {
                    return Err(ProbeFailure::answer(format!(
                        "cannot write the heartbeat: table {}.{TABLE} is missing",
                        owner::SCHEMA
                    )))
                }
                Err(Upsert::Refused(f)) => return Err(f),
                Err(Upsert::Sql(e)) => {
                    self.upsert = None;
                    self.table_ours = false;
                    return Err(ProbeFailure::sql("cannot write the heartbeat", &e));
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
    ) -> Result<Option<Box<MasterRepl>>, Upsert> {
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
        let rows = self
            .client
            .query(&stmt, &[&instance, &cluster, &master_name, &beat_at])
            .await
            .map_err(Upsert::Sql)?;
        Ok(master_repl(&rows))
    }
}

/// Why the heartbeat upsert did not run.
enum Upsert {
    /// There is no heartbeat table.
    Missing,
    /// The table is another role's, or its owner could not be asked.
    Refused(ProbeFailure),
    Sql(tokio_postgres::Error),
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
