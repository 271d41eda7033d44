//! Configuration: JSON with comments (SPEC §7) loaded and validated into the
//! typed [`Config`]. (Loading and validation being written.)

use crate::cluster::{EventKind, NodeName};
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// A password: never printed by `Debug` or `Display`.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    /// The secret itself: call only where it is handed to a server.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// How to use TLS towards PostgreSQL, as libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    Disable,
    #[default]
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum LogLevel {
    #[default]
    Error,
    Info,
    Debug,
}

/// A trigger command, split into words as a shell would at load time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TriggerCommand {
    /// As written in the configuration.
    pub line: String,
    /// Never empty.
    pub argv: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    pub name: NodeName,
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file it was read from.
    pub source: PathBuf,
    pub dbname: String,
    pub user: String,
    pub password: Secret,
    pub heartbeat: Duration,
    pub max_sync_delay: Duration,
    pub recover_sync_delay: Duration,
    pub nodes: Vec<NodeConfig>,
    pub triggers: BTreeMap<EventKind, TriggerCommand>,
    pub trigger_timeout: Duration,
    pub log_file: PathBuf,
    pub log_level: LogLevel,
    pub daemon_user: String,
    pub pid_file: PathBuf,
    pub status_file: PathBuf,
    pub connect_timeout: Duration,
    pub is_slave_statement: String,
    pub instance_name: String,
    pub sslmode: SslMode,
    pub sslrootcert: Option<PathBuf>,
}
