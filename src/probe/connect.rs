//! One-off connections to the nodes outside the beat, made exactly as the
//! probe makes its own (TLS, per-node passwords, `synchronous_commit=local`,
//! one deadline): for the few statements plusmoin runs besides probing (the
//! maintenance holds, `plusmoin hold`/`release`).

use super::node::{self, NodeConn};
use super::statements;
use super::{fmt_duration, ProbeError, ProbeSettings, Shared};
use crate::cluster::NodeName;
use std::sync::Arc;
use std::time::Duration;

/// Opens one-off connections to the nodes (see the module documentation).
#[derive(Clone)]
pub(crate) struct Connector {
    shared: Arc<Shared>,
}

/// An open connection from a [`Connector`]; closed when dropped.
pub(crate) struct Session {
    conn: NodeConn,
}

impl Connector {
    /// Builds the TLS connector (reads `sslrootcert`).
    pub(crate) fn new(settings: ProbeSettings) -> Result<Connector, ProbeError> {
        Ok(Connector {
            shared: Arc::new(Shared::new(settings)?),
        })
    }

    /// Connects to `node` within `connect_timeout`; the reason it could not,
    /// without any password in it.
    pub(crate) async fn connect(&self, node: &NodeName) -> Result<Session, String> {
        let limit = self.shared.settings.connect_timeout;
        match tokio::time::timeout(limit, NodeConn::connect(&self.shared, node)).await {
            Ok(Ok(conn)) => Ok(Session { conn }),
            Ok(Err(f)) => Err(self.shared.settings.scrub(f.reason)),
            Err(_) => Err(format!("no answer within {}", fmt_duration(limit))),
        }
    }

    /// Runs `is_slave_statement` on `session` within `connect_timeout`:
    /// whether the node is a slave (in recovery).
    pub(crate) async fn is_slave(&self, session: &Session) -> Result<bool, String> {
        let limit = self.shared.settings.connect_timeout;
        let mut cache = None;
        let run = statements::role(
            session.client(),
            &mut cache,
            &self.shared.settings.is_slave_statement,
        );
        match tokio::time::timeout(limit, run).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(f)) => Err(self.shared.settings.scrub(f.reason)),
            Err(_) => Err(format!("no answer within {}", fmt_duration(limit))),
        }
    }

    /// Removes every password from `text` (see [`ProbeSettings::scrub`]).
    pub(crate) fn scrub(&self, text: String) -> String {
        self.shared.settings.scrub(text)
    }

    /// The deadline of one statement or connection.
    pub(crate) fn timeout(&self) -> Duration {
        self.shared.settings.connect_timeout
    }
}

impl Session {
    pub(crate) fn client(&self) -> &tokio_postgres::Client {
        self.conn.client()
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.conn.is_closed()
    }
}

/// One line for a tokio-postgres error, with its causes (its own `Display`
/// stops at "db error").
pub(crate) fn describe_error(err: &tokio_postgres::Error) -> String {
    node::describe(err)
}
