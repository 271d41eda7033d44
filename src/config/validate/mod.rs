//! Turns the positional JSON tree into a typed [`Config`], refusing anything
//! doubtful with a message that points at the key or value at fault.
//!
//! Keys are checked in the order they are written, so the error reported is
//! the first one a reader meets in the file. What the sidecar checks in the
//! `pgpool` section (template names and texts, `pgpool_conf`) comes after,
//! once the file is otherwise valid.
//!
//! Here: the top level, its required keys and the password. The sections
//! (`nodes`, `triggers`, `pgpool`) are read in `sections`, single values
//! (strings, paths, durations, ports, choices) and the key checks in
//! `values`.

mod sections;
mod values;

pub(crate) use values::did_you_mean;
pub(super) use values::secs;

use super::json::{Document, Json, Spanned};
use super::secrets::{self, PasswordSource};
use super::{
    defaults, Config, ConfigError, LogFormat, LogLevel, NodeConfig, Secret, SslMode, TriggerCommand,
};
use crate::cluster::EventKind;
use sections::RawPgpool;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Every top-level key, in the order the documentation lists them.
const KEYS: [&str; 28] = [
    "dbname",
    "user",
    "password",
    "password_file",
    "instance_name",
    "heartbeat",
    "max_sync_delay",
    "recover_sync_delay",
    "max_lag_bytes",
    "recover_lag_bytes",
    "connect_timeout",
    "retry_interval",
    "is_slave_statement",
    "sslmode",
    "sslrootcert",
    "nodes",
    "triggers",
    "trigger_timeout",
    "log_file",
    "log_level",
    "log_format",
    "daemon_user",
    "pid_file",
    "status_file",
    "status_file_mode",
    "journal_max_bytes",
    "http_listen",
    "pgpool",
];

/// The password the shipped configurations carry until an operator sets
/// the real one: refused, so a forgotten edit is an error at
/// `check-config`, not a daemon failing to log in everywhere.
const PLACEHOLDER_PASSWORD: &str = "change-me";

fn placeholder_problem() -> String {
    format!(
        "{PLACEHOLDER_PASSWORD:?} is the shipped configuration's placeholder, not a password: \
         set the real one (or remove the key and use password_file or ~/.pgpass)"
    )
}

pub(super) struct Validator<'a> {
    pub(super) doc: &'a Document<'a>,
    pub(super) source: &'a Path,
    /// Stands in for `gethostname` so tests need not depend on the machine.
    pub(super) hostname: &'a dyn Fn() -> Result<String, String>,
    /// libpq's password file to use when neither `password` nor
    /// `password_file` is set (`$PGPASSFILE`, else `~/.pgpass`).
    pub(super) pgpass: &'a dyn Fn(&str) -> Option<PathBuf>,
}

/// Values read so far, each with where it was written.
#[derive(Default)]
struct Raw {
    dbname: Option<String>,
    user: Option<String>,
    password: Option<String>,
    password_file: Option<(PathBuf, usize)>,
    instance_name: Option<String>,
    heartbeat: Option<Duration>,
    max_sync_delay: Option<(Duration, usize)>,
    recover_sync_delay: Option<(Duration, usize)>,
    max_lag_bytes: Option<(u64, usize)>,
    recover_lag_bytes: Option<(u64, usize)>,
    connect_timeout: Option<Duration>,
    retry_interval: Option<Duration>,
    is_slave_statement: Option<String>,
    sslmode: Option<SslMode>,
    sslrootcert: Option<Option<PathBuf>>,
    nodes: Option<Vec<NodeConfig>>,
    triggers: Option<BTreeMap<EventKind, TriggerCommand>>,
    trigger_timeout: Option<Duration>,
    log_file: Option<PathBuf>,
    log_level: Option<LogLevel>,
    log_format: Option<LogFormat>,
    daemon_user: Option<String>,
    pid_file: Option<PathBuf>,
    status_file: Option<PathBuf>,
    status_file_mode: Option<u32>,
    journal_max_bytes: Option<u64>,
    http_listen: Option<Option<SocketAddr>>,
    pgpool: Option<RawPgpool>,
    /// Where each node's `pgpool_node_id` was written, by node index.
    node_id_at: Vec<Option<usize>>,
}

impl Validator<'_> {
    fn error(
        &self,
        at: Option<usize>,
        key: Option<&str>,
        problem: impl Into<String>,
    ) -> ConfigError {
        ConfigError::Invalid {
            path: self.source.to_path_buf(),
            position: at.map(|a| self.doc.position(a)),
            key: key.map(str::to_string),
            problem: problem.into(),
        }
    }

    fn at(&self, at: usize, key: &str, problem: impl Into<String>) -> ConfigError {
        self.error(Some(at), Some(key), problem)
    }

    pub(super) fn config(&self, root: &Spanned<Json>) -> Result<Config, ConfigError> {
        let Json::Object(entries) = &root.value else {
            return Err(self.error(
                Some(root.at),
                None,
                format!(
                    "expected a JSON object at the top level, found {}",
                    root.value.describe()
                ),
            ));
        };
        let mut raw = Raw::default();
        let mut seen = HashMap::new();
        for (key, value) in entries {
            self.check_key(&mut seen, key, "", "key", &KEYS)?;
            let k = key.value.as_str();
            match k {
                "dbname" => raw.dbname = Some(self.non_empty_string(value, k)?),
                "user" => raw.user = Some(self.non_empty_string(value, k)?),
                "password" => {
                    let p = self.secret_string(value, k)?;
                    if p == PLACEHOLDER_PASSWORD {
                        return Err(self.at(value.at, k, placeholder_problem()));
                    }
                    raw.password = Some(p)
                }
                "password_file" => raw.password_file = Some((self.path(value, k)?, value.at)),
                "instance_name" => raw.instance_name = Some(self.non_empty_string(value, k)?),
                "heartbeat" => raw.heartbeat = Some(self.duration(value, k)?),
                "max_sync_delay" => raw.max_sync_delay = Some((self.duration(value, k)?, value.at)),
                "recover_sync_delay" => {
                    raw.recover_sync_delay = Some((self.duration(value, k)?, value.at))
                }
                "max_lag_bytes" => raw.max_lag_bytes = self.size(value, k)?.map(|b| (b, value.at)),
                "recover_lag_bytes" => {
                    raw.recover_lag_bytes = self.size(value, k)?.map(|b| (b, value.at))
                }
                "connect_timeout" => raw.connect_timeout = Some(self.duration(value, k)?),
                "retry_interval" => raw.retry_interval = Some(self.duration(value, k)?),
                "is_slave_statement" => {
                    raw.is_slave_statement = Some(self.non_empty_string(value, k)?)
                }
                "sslmode" => raw.sslmode = Some(self.sslmode(value)?),
                "sslrootcert" => {
                    raw.sslrootcert = Some(match value.value {
                        Json::Null => None,
                        _ => Some(self.path(value, k)?),
                    })
                }
                "nodes" => {
                    let (nodes, at) = self.nodes(value)?;
                    raw.nodes = Some(nodes);
                    raw.node_id_at = at;
                }
                "pgpool" => raw.pgpool = Some(self.pgpool(value)?),
                "triggers" => raw.triggers = Some(self.triggers(value)?),
                "trigger_timeout" => raw.trigger_timeout = Some(self.duration(value, k)?),
                "log_file" => raw.log_file = Some(self.path(value, k)?),
                "log_level" => raw.log_level = Some(self.log_level(value)?),
                "log_format" => raw.log_format = Some(self.log_format(value)?),
                "daemon_user" => raw.daemon_user = Some(self.non_empty_string(value, k)?),
                "pid_file" => raw.pid_file = Some(self.path(value, k)?),
                "status_file" => raw.status_file = Some(self.path(value, k)?),
                "status_file_mode" => raw.status_file_mode = Some(self.file_mode(value, k)?),
                "journal_max_bytes" => raw.journal_max_bytes = Some(self.journal_bytes(value, k)?),
                "http_listen" => raw.http_listen = Some(self.listen_address(value, k)?),
                // check_key has refused every other key.
                _ => return Err(self.at(key.at, k, "unknown key")),
            }
        }
        self.finish(raw)
    }

    /// `max_lag_bytes` and `recover_lag_bytes`: both off by default;
    /// `recover_lag_bytes` needs `max_lag_bytes`, is at most it, and is
    /// half of it when not set.
    fn lag_bytes(
        &self,
        max: Option<(u64, usize)>,
        recover: Option<(u64, usize)>,
    ) -> Result<(Option<u64>, Option<u64>), ConfigError> {
        match (max, recover) {
            (None, None) => Ok((None, None)),
            (None, Some((_, at))) => Err(self.at(
                at,
                "recover_lag_bytes",
                "set without max_lag_bytes, which it is the recovery limit of",
            )),
            (Some((max, _)), None) => Ok((Some(max), Some(max / 2))),
            (Some((max, _)), Some((recover, at))) if recover > max => Err(self.at(
                at,
                "recover_lag_bytes",
                format!("{recover} bytes is greater than max_lag_bytes ({max} bytes)"),
            )),
            (Some((max, _)), Some((recover, _))) => Ok((Some(max), Some(recover))),
        }
    }

    fn finish(&self, raw: Raw) -> Result<Config, ConfigError> {
        let missing = |key: &str| self.error(None, None, format!("missing required key {key:?}"));
        let dbname = raw.dbname.ok_or_else(|| missing("dbname"))?;
        let user = raw.user.ok_or_else(|| missing("user"))?;

        let max = raw
            .max_sync_delay
            .map(|(d, _)| d)
            .unwrap_or(defaults::MAX_SYNC_DELAY);
        let recover = raw
            .recover_sync_delay
            .map(|(d, _)| d)
            .unwrap_or(defaults::RECOVER_SYNC_DELAY);
        if recover > max {
            // Point at whichever of the two the file actually sets.
            return Err(match (raw.recover_sync_delay, raw.max_sync_delay) {
                (Some((_, at)), _) => self.at(
                    at,
                    "recover_sync_delay",
                    format!(
                        "{} is greater than max_sync_delay ({}{})",
                        secs(recover),
                        secs(max),
                        if raw.max_sync_delay.is_none() {
                            ", the default"
                        } else {
                            ""
                        }
                    ),
                ),
                (None, Some((_, at))) => self.at(
                    at,
                    "max_sync_delay",
                    format!(
                        "{} is less than recover_sync_delay ({}, the default)",
                        secs(max),
                        secs(recover)
                    ),
                ),
                // Both defaults: the defaults satisfy the rule.
                (None, None) => self.error(
                    None,
                    Some("recover_sync_delay"),
                    "greater than max_sync_delay",
                ),
            });
        }

        let (max_lag_bytes, recover_lag_bytes) =
            self.lag_bytes(raw.max_lag_bytes, raw.recover_lag_bytes)?;

        let instance_name = match raw.instance_name {
            Some(name) => name,
            None => match (self.hostname)() {
                Ok(h) if !h.trim().is_empty() => h,
                Ok(_) => {
                    return Err(self.error(
                        None,
                        Some("instance_name"),
                        "not set, and the host name is empty: set instance_name",
                    ))
                }
                Err(e) => {
                    return Err(self.error(
                        None,
                        Some("instance_name"),
                        format!(
                            "not set, and the host name cannot be read ({e}): set instance_name"
                        ),
                    ))
                }
            },
        };

        let mut nodes = raw.nodes.unwrap_or_default();
        let daemon_user = raw
            .daemon_user
            .clone()
            .unwrap_or_else(|| defaults::DAEMON_USER.into());
        let (password, password_source) = self.password(
            raw.password,
            raw.password_file,
            &dbname,
            &user,
            &daemon_user,
            &mut nodes,
        )?;
        let pgpool = self.resolve_pgpool(raw.pgpool, &nodes, &raw.node_id_at)?;

        Ok(Config {
            source: self.source.to_path_buf(),
            dbname,
            user,
            password: Secret::new(password),
            password_source,
            heartbeat: raw.heartbeat.unwrap_or(defaults::HEARTBEAT),
            max_sync_delay: max,
            recover_sync_delay: recover,
            max_lag_bytes,
            recover_lag_bytes,
            nodes,
            triggers: raw.triggers.unwrap_or_default(),
            trigger_timeout: raw.trigger_timeout.unwrap_or(defaults::TRIGGER_TIMEOUT),
            log_file: raw.log_file.unwrap_or_else(|| defaults::LOG_FILE.into()),
            log_level: raw.log_level.unwrap_or_default(),
            log_format: raw.log_format.unwrap_or_default(),
            daemon_user,
            pid_file: raw.pid_file.unwrap_or_else(|| defaults::PID_FILE.into()),
            status_file: raw
                .status_file
                .unwrap_or_else(|| defaults::STATUS_FILE.into()),
            status_file_mode: raw.status_file_mode.unwrap_or(defaults::STATUS_FILE_MODE),
            journal_max_bytes: raw.journal_max_bytes.unwrap_or(defaults::JOURNAL_MAX_BYTES),
            connect_timeout: raw.connect_timeout.unwrap_or(defaults::CONNECT_TIMEOUT),
            retry_interval: raw.retry_interval.unwrap_or(defaults::RETRY_INTERVAL),
            is_slave_statement: raw
                .is_slave_statement
                .unwrap_or_else(|| defaults::IS_SLAVE_STATEMENT.into()),
            instance_name,
            sslmode: raw.sslmode.unwrap_or_default(),
            sslrootcert: raw.sslrootcert.unwrap_or_default(),
            http_listen: raw.http_listen.unwrap_or_default(),
            pgpool,
        })
    }

    /// The password, from `password`, `password_file`, or else libpq's
    /// password file (one entry per node, each node's kept on the node).
    fn password(
        &self,
        inline: Option<String>,
        file: Option<(PathBuf, usize)>,
        dbname: &str,
        user: &str,
        daemon_user: &str,
        nodes: &mut [NodeConfig],
    ) -> Result<(String, PasswordSource), ConfigError> {
        match (inline, file) {
            (Some(_), Some((_, at))) => Err(self.at(
                at,
                "password_file",
                "set either password or password_file, not both",
            )),
            (Some(p), None) => Ok((p, PasswordSource::Inline)),
            (None, Some((path, at))) => {
                let p = secrets::read_password_file(&path)
                    .map_err(|e| self.at(at, "password_file", e))?;
                if p == PLACEHOLDER_PASSWORD {
                    return Err(self.at(
                        at,
                        "password_file",
                        format!("{} holds {}", path.display(), placeholder_problem()),
                    ));
                }
                Ok((p, PasswordSource::File(path)))
            }
            (None, None) => {
                let missing = || {
                    self.error(
                        None,
                        None,
                        "missing required key \"password\" (or \"password_file\", or an entry \
                         for every node in PGPASSFILE or ~/.pgpass)",
                    )
                };
                let path = (self.pgpass)(daemon_user).ok_or_else(missing)?;
                let text = match std::fs::read_to_string(&path) {
                    Ok(t) => t,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(missing()),
                    Err(e) => {
                        return Err(self.error(
                            None,
                            Some("password"),
                            format!("not set, and {} cannot be read: {e}", path.display()),
                        ))
                    }
                };
                if let Some(why) = secrets::pgpass_ignored(&path) {
                    tracing::warn!("{why}");
                    return Err(self.error(None, Some("password"), format!("not set, and {why}")));
                }
                let pgpass = secrets::PgPass::parse(&text);
                for (i, node) in nodes.iter_mut().enumerate() {
                    let found = pgpass
                        .lookup(&node.name.host, node.name.port, dbname, user)
                        .ok_or_else(|| {
                            self.error(
                                None,
                                Some(&format!("nodes[{i}]")),
                                format!(
                                    "no password: neither password nor password_file is set, and {} \
                                     has no entry for {} (database {dbname}, user {user})",
                                    path.display(),
                                    node.name
                                ),
                            )
                        })?;
                    node.password = Some(Secret::new(found));
                }
                Ok((String::new(), PasswordSource::PgPass(path)))
            }
        }
    }
}
