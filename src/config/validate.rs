//! Turns the positional JSON tree into a typed [`Config`], refusing anything
//! doubtful with a message that points at the key or value at fault.
//!
//! Keys are checked in the order they are written, so the error reported is
//! the first one a reader meets in the file. What the sidecar checks in the
//! `pgpool` section (template names and texts, `pgpool_conf`) comes after,
//! once the file is otherwise valid.

use super::json::{Document, Json, Spanned};
use super::secrets::{self, PasswordSource};
use super::{
    defaults, Config, ConfigError, LogFormat, LogLevel, NodeConfig, PgpoolConfig, PgpoolWritten,
    Secret, SslMode, TemplateText, TriggerCommand,
};
use crate::cluster::{EventKind, NodeName};
use serde_json::Number;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Every top-level key, in the order the documentation lists them.
pub const KEYS: [&str; 24] = [
    "dbname",
    "user",
    "password",
    "password_file",
    "instance_name",
    "heartbeat",
    "max_sync_delay",
    "recover_sync_delay",
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
    "http_listen",
    "pgpool",
];

const NODE_KEYS: [&str; 3] = ["host", "port", "pgpool_node_id"];

const PGPOOL_KEYS: [&str; 8] = [
    "pcp_host",
    "pcp_port",
    "pcp_user",
    "pcppass_file",
    "pgpool_conf",
    "bin_dir",
    "templates",
    "pcp_timeout",
];

/// Highest `pgpool_node_id` accepted: far above pgpool's backend limit (128),
/// low enough that a slip (a port written as an id) is caught.
const MAX_PGPOOL_NODE_ID: i128 = 4095;

/// Longest duration accepted anywhere: beyond it a number is surely a slip
/// (milliseconds written as seconds), and `Duration` arithmetic stays far
/// from overflow.
const MAX_DURATION_SECS: f64 = 365.0 * 24.0 * 3600.0;
/// Shortest: below it the value would round to nothing useful.
const MIN_DURATION_SECS: f64 = 0.001;

pub(super) struct Validator<'a> {
    pub doc: &'a Document<'a>,
    pub source: &'a Path,
    /// Stands in for `gethostname` so tests need not depend on the machine.
    pub hostname: &'a dyn Fn() -> Result<String, String>,
    /// libpq's password file to use when neither `password` nor
    /// `password_file` is set (`$PGPASSFILE`, else `~/.pgpass`).
    pub pgpass: &'a dyn Fn() -> Option<PathBuf>,
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
    http_listen: Option<Option<SocketAddr>>,
    pgpool: Option<RawPgpool>,
    /// Where each node's `pgpool_node_id` was written, by node index.
    node_id_at: Vec<Option<usize>>,
}

/// The `pgpool` section before the node ids written on nodes are gathered
/// (the nodes may come after it in the file).
struct RawPgpool {
    at: usize,
    pcp_host: Option<String>,
    pcp_port: Option<u16>,
    pcp_user: Option<String>,
    pcppass_file: Option<PathBuf>,
    pgpool_conf: Option<(PathBuf, usize)>,
    bin_dir: Option<PathBuf>,
    templates: Vec<TemplateText>,
    pcp_timeout: Option<Duration>,
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

    pub fn config(&self, root: &Spanned<Json>) -> Result<Config, ConfigError> {
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
                "password" => raw.password = Some(self.secret_string(value, k)?),
                "password_file" => raw.password_file = Some((self.path(value, k)?, value.at)),
                "instance_name" => raw.instance_name = Some(self.non_empty_string(value, k)?),
                "heartbeat" => raw.heartbeat = Some(self.duration(value, k)?),
                "max_sync_delay" => raw.max_sync_delay = Some((self.duration(value, k)?, value.at)),
                "recover_sync_delay" => {
                    raw.recover_sync_delay = Some((self.duration(value, k)?, value.at))
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
                "http_listen" => raw.http_listen = Some(self.listen_address(value, k)?),
                // check_key has refused every other key.
                _ => return Err(self.at(key.at, k, "unknown key")),
            }
        }
        self.finish(raw)
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
        let (password, password_source) =
            self.password(raw.password, raw.password_file, &dbname, &user, &mut nodes)?;
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
            nodes,
            triggers: raw.triggers.unwrap_or_default(),
            trigger_timeout: raw.trigger_timeout.unwrap_or(defaults::TRIGGER_TIMEOUT),
            log_file: raw.log_file.unwrap_or_else(|| defaults::LOG_FILE.into()),
            log_level: raw.log_level.unwrap_or_default(),
            log_format: raw.log_format.unwrap_or_default(),
            daemon_user: raw
                .daemon_user
                .unwrap_or_else(|| defaults::DAEMON_USER.into()),
            pid_file: raw.pid_file.unwrap_or_else(|| defaults::PID_FILE.into()),
            status_file: raw
                .status_file
                .unwrap_or_else(|| defaults::STATUS_FILE.into()),
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
                let path = (self.pgpass)().ok_or_else(missing)?;
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

    fn pgpool(&self, v: &Spanned<Json>) -> Result<RawPgpool, ConfigError> {
        let Json::Object(entries) = &v.value else {
            return Err(self.at(
                v.at,
                "pgpool",
                format!(
                    "expected an object {{\"pcp_user\": …, \"pcppass_file\": …}}, found {}",
                    v.value.describe()
                ),
            ));
        };
        let mut p = RawPgpool {
            at: v.at,
            pcp_host: None,
            pcp_port: None,
            pcp_user: None,
            pcppass_file: None,
            pgpool_conf: None,
            bin_dir: None,
            templates: Vec::new(),
            pcp_timeout: None,
        };
        let mut seen = HashMap::new();
        for (key, value) in entries {
            self.check_key(&mut seen, key, "pgpool", "key", &PGPOOL_KEYS)?;
            let k = format!("pgpool.{}", key.value);
            match key.value.as_str() {
                "pcp_host" => {
                    let h = self.non_empty_string(value, &k)?;
                    if h.trim() != h {
                        return Err(self.at(value.at, &k, format!("{h:?} has spaces around it")));
                    }
                    p.pcp_host = Some(h);
                }
                "pcp_port" => p.pcp_port = Some(self.port(value, &k)?),
                "pcp_user" => p.pcp_user = Some(self.non_empty_string(value, &k)?),
                "pcppass_file" => p.pcppass_file = Some(self.path(value, &k)?),
                "pgpool_conf" => {
                    if !matches!(value.value, Json::Null) {
                        p.pgpool_conf = Some((self.path(value, &k)?, value.at));
                    }
                }
                "bin_dir" => p.bin_dir = Some(self.path(value, &k)?),
                "pcp_timeout" => p.pcp_timeout = Some(self.duration(value, &k)?),
                _ => p.templates = self.templates(value)?,
            }
        }
        Ok(p)
    }

    /// `pgpool.templates` as written: an object of command name → text or
    /// `null`. Which names exist and what a text may say is the sidecar's
    /// to check.
    fn templates(&self, v: &Spanned<Json>) -> Result<Vec<TemplateText>, ConfigError> {
        let Json::Object(entries) = &v.value else {
            return Err(self.at(
                v.at,
                "pgpool.templates",
                format!(
                    "expected an object of command → template, found {}",
                    v.value.describe()
                ),
            ));
        };
        let mut t = Vec::with_capacity(entries.len());
        for (key, value) in entries {
            let k = format!("pgpool.templates.{}", key.value);
            let text = match &value.value {
                // null: the shipped one.
                Json::Null => None,
                _ => Some(self.non_empty_string(value, &k)?),
            };
            t.push(TemplateText {
                command: key.value.clone(),
                text,
                command_at: self.doc.position(key.at),
                text_at: self.doc.position(value.at),
            });
        }
        Ok(t)
    }

    /// Checks the `pgpool` section's required keys and gathers the ids
    /// written on nodes (`pgpool_node_id`), with where each was written.
    /// The sidecar's check adds what `pgpool_conf` says and refuses an id
    /// given twice.
    fn resolve_pgpool(
        &self,
        raw: Option<RawPgpool>,
        nodes: &[NodeConfig],
        node_id_at: &[Option<usize>],
    ) -> Result<Option<PgpoolConfig>, ConfigError> {
        let Some(raw) = raw else {
            if let Some((i, at)) = node_id_at
                .iter()
                .enumerate()
                .find_map(|(i, at)| at.map(|a| (i, a)))
            {
                return Err(self.at(
                    at,
                    &format!("nodes[{i}].pgpool_node_id"),
                    "set, but there is no \"pgpool\" section to use it",
                ));
            }
            return Ok(None);
        };
        let required =
            |key: &str| self.at(raw.at, "pgpool", format!("missing required key {key:?}"));
        let pcp_user = raw.pcp_user.ok_or_else(|| required("pcp_user"))?;
        let pcppass_file = raw.pcppass_file.ok_or_else(|| required("pcppass_file"))?;
        let mut node_ids = BTreeMap::new();
        let mut node_ids_at = BTreeMap::new();
        for (i, node) in nodes.iter().enumerate() {
            if let Some(id) = node.pgpool_node_id {
                node_ids.insert(node.name.clone(), id);
            }
            if let Some(at) = node_id_at.get(i).copied().flatten() {
                node_ids_at.insert(node.name.clone(), self.doc.position(at));
            }
        }
        Ok(Some(PgpoolConfig {
            pcp_host: raw.pcp_host.unwrap_or_else(|| defaults::PCP_HOST.into()),
            pcp_port: raw.pcp_port.unwrap_or(defaults::PCP_PORT),
            pcp_user,
            pcppass_file,
            pgpool_conf: raw.pgpool_conf.as_ref().map(|(p, _)| p.clone()),
            bin_dir: raw
                .bin_dir
                .unwrap_or_else(|| defaults::PGPOOL_BIN_DIR.into()),
            templates: raw.templates,
            pcp_timeout: raw.pcp_timeout.unwrap_or(defaults::PCP_TIMEOUT),
            node_ids,
            written: PgpoolWritten {
                section: self.doc.position(raw.at),
                pgpool_conf: raw.pgpool_conf.map(|(_, at)| self.doc.position(at)),
                node_ids: node_ids_at,
            },
        }))
    }

    /// Refuses a key written twice or not among `known`; `parent` prefixes
    /// the message (`nodes[0]`), empty at the top level.
    fn check_key(
        &self,
        seen: &mut HashMap<String, usize>,
        key: &Spanned<String>,
        parent: &str,
        what: &str,
        known: &[&str],
    ) -> Result<(), ConfigError> {
        let parent_key = (!parent.is_empty()).then_some(parent);
        if !known.contains(&key.value.as_str()) {
            return Err(self.error(
                Some(key.at),
                parent_key,
                format!(
                    "unknown {what} {:?}{}",
                    key.value,
                    did_you_mean(&key.value, known)
                ),
            ));
        }
        if let Some(first) = seen.insert(key.value.clone(), key.at) {
            return Err(self.error(
                Some(key.at),
                parent_key,
                format!(
                    "duplicate {what} {:?} (first at {})",
                    key.value,
                    self.doc.position(first)
                ),
            ));
        }
        Ok(())
    }

    fn string(&self, v: &Spanned<Json>, key: &str) -> Result<String, ConfigError> {
        match &v.value {
            Json::String(s) => Ok(s.clone()),
            other => Err(self.at(
                v.at,
                key,
                format!("expected a string, found {}", other.describe()),
            )),
        }
    }

    /// A string that must never appear in an error: a wrong type is named
    /// by its JSON type only, never by its value.
    fn secret_string(&self, v: &Spanned<Json>, key: &str) -> Result<String, ConfigError> {
        let kind = match &v.value {
            Json::String(s) => return Ok(s.clone()),
            Json::Null => "null",
            Json::Bool(_) => "a boolean",
            Json::Number(..) => "a number",
            Json::Array(_) => "an array",
            Json::Object(_) => "an object",
        };
        Err(self.at(
            v.at,
            key,
            format!("expected a string, found {kind} (value not shown)"),
        ))
    }

    fn non_empty_string(&self, v: &Spanned<Json>, key: &str) -> Result<String, ConfigError> {
        let s = self.string(v, key)?;
        if s.trim().is_empty() {
            return Err(self.at(v.at, key, "must not be empty"));
        }
        Ok(s)
    }

    fn path(&self, v: &Spanned<Json>, key: &str) -> Result<PathBuf, ConfigError> {
        let s = self.non_empty_string(v, key)?;
        if s.contains('\0') {
            return Err(self.at(v.at, key, "a path cannot contain a NUL character"));
        }
        Ok(PathBuf::from(s))
    }

    /// `"IP:PORT"` (`"[::1]:9187"` for IPv6), or `null` for none. A host
    /// name is refused: the listener binds one address, known at a glance.
    fn listen_address(
        &self,
        v: &Spanned<Json>,
        key: &str,
    ) -> Result<Option<SocketAddr>, ConfigError> {
        if matches!(v.value, Json::Null) {
            return Ok(None);
        }
        let s = self.string(v, key)?;
        let addr: SocketAddr = s.trim().parse().map_err(|_| {
            self.at(
                v.at,
                key,
                format!(
                    "{s:?} is not an IP address and port (e.g. \"127.0.0.1:9187\", \"[::1]:9187\")"
                ),
            )
        })?;
        if addr.port() == 0 {
            return Err(self.at(
                v.at,
                key,
                format!("{s:?}: port 0 would listen on a port chosen at random"),
            ));
        }
        Ok(Some(addr))
    }

    fn duration(&self, v: &Spanned<Json>, key: &str) -> Result<Duration, ConfigError> {
        let Json::Number(number, n) = &v.value else {
            return Err(self.at(
                v.at,
                key,
                format!("expected a number of seconds, found {}", v.value.describe()),
            ));
        };
        let secs = number.as_f64().unwrap_or(f64::NAN);
        if secs.is_nan() || secs <= 0.0 {
            return Err(self.at(v.at, key, format!("{n} s is not a positive duration")));
        }
        if secs < MIN_DURATION_SECS {
            return Err(self.at(v.at, key, format!("{n} s is shorter than 1 ms")));
        }
        if secs > MAX_DURATION_SECS {
            return Err(self.at(v.at, key, format!("{n} s is longer than one year")));
        }
        Duration::try_from_secs_f64(secs)
            .map_err(|e| self.at(v.at, key, format!("{n} s is not a valid duration: {e}")))
    }

    fn choice<T: Copy>(
        &self,
        v: &Spanned<Json>,
        key: &str,
        choices: &[(&str, T)],
    ) -> Result<T, ConfigError> {
        let s = self.string(v, key)?;
        if let Some((_, t)) = choices.iter().find(|(name, _)| *name == s) {
            return Ok(*t);
        }
        let names: Vec<&str> = choices.iter().map(|(n, _)| *n).collect();
        Err(self.at(
            v.at,
            key,
            format!(
                "{s:?} is not one of {}{}",
                names.join(", "),
                did_you_mean(&s, &names)
            ),
        ))
    }

    fn log_level(&self, v: &Spanned<Json>) -> Result<LogLevel, ConfigError> {
        let choices = LogLevel::ALL.map(|l| (l.as_str(), l));
        self.choice(v, "log_level", &choices)
    }

    fn log_format(&self, v: &Spanned<Json>) -> Result<LogFormat, ConfigError> {
        let choices = LogFormat::ALL.map(|f| (f.as_str(), f));
        self.choice(v, "log_format", &choices)
    }

    fn sslmode(&self, v: &Spanned<Json>) -> Result<SslMode, ConfigError> {
        let choices = SslMode::ALL.map(|m| (m.as_str(), m));
        self.choice(v, "sslmode", &choices)
    }

    #[allow(clippy::type_complexity)]
    fn nodes(
        &self,
        v: &Spanned<Json>,
    ) -> Result<(Vec<NodeConfig>, Vec<Option<usize>>), ConfigError> {
        let Json::Array(items) = &v.value else {
            return Err(self.at(
                v.at,
                "nodes",
                format!(
                    "expected an array of {{\"host\": …, \"port\": …}}, found {}",
                    v.value.describe()
                ),
            ));
        };
        let mut nodes: Vec<NodeConfig> = Vec::with_capacity(items.len());
        let mut id_at = Vec::with_capacity(items.len());
        // Host names are compared without case: `DB1` and `db1` are one server.
        let mut index: HashMap<(String, u16), usize> = HashMap::new();
        for (i, item) in items.iter().enumerate() {
            let (node, at) = self.node(item, i)?;
            id_at.push(at);
            let id = (node.name.host.to_ascii_lowercase(), node.name.port);
            if let Some(first) = index.get(&id) {
                return Err(self.at(
                    item.at,
                    &format!("nodes[{i}]"),
                    format!("duplicate node {} (also nodes[{first}])", node.name),
                ));
            }
            index.insert(id, i);
            nodes.push(node);
        }
        Ok((nodes, id_at))
    }

    fn node(
        &self,
        v: &Spanned<Json>,
        i: usize,
    ) -> Result<(NodeConfig, Option<usize>), ConfigError> {
        let me = format!("nodes[{i}]");
        let Json::Object(entries) = &v.value else {
            return Err(self.at(
                v.at,
                &me,
                format!(
                    "expected an object {{\"host\": …, \"port\": …}}, found {}",
                    v.value.describe()
                ),
            ));
        };
        let mut seen = HashMap::new();
        let mut host = None;
        let mut port = None;
        let mut pgpool_node_id = None;
        let mut id_at = None;
        for (key, value) in entries {
            self.check_key(&mut seen, key, &me, "key", &NODE_KEYS)?;
            let k = format!("{me}.{}", key.value);
            match key.value.as_str() {
                "host" => {
                    let h = self.non_empty_string(value, &k)?;
                    if h.trim() != h {
                        return Err(self.at(value.at, &k, format!("{h:?} has spaces around it")));
                    }
                    host = Some(h);
                }
                "pgpool_node_id" => {
                    pgpool_node_id = Some(self.pgpool_node_id(value, &k)?);
                    id_at = Some(value.at);
                }
                _ => port = Some(self.port(value, &k)?),
            }
        }
        let host = host.ok_or_else(|| self.at(v.at, &me, "missing required key \"host\""))?;
        Ok((
            NodeConfig {
                name: NodeName::new(host, port.unwrap_or(defaults::PORT)),
                password: None,
                pgpool_node_id,
            },
            id_at,
        ))
    }

    fn pgpool_node_id(&self, v: &Spanned<Json>, key: &str) -> Result<u32, ConfigError> {
        let Json::Number(number, n) = &v.value else {
            return Err(self.at(
                v.at,
                key,
                format!("expected an integer node id, found {}", v.value.describe()),
            ));
        };
        match integer(number) {
            Some(id) if (0..=MAX_PGPOOL_NODE_ID).contains(&id) => Ok(id as u32),
            Some(_) => Err(self.at(v.at, key, format!("{n} is outside 0-{MAX_PGPOOL_NODE_ID}"))),
            None => Err(self.at(v.at, key, format!("{n} is not an integer node id"))),
        }
    }

    fn port(&self, v: &Spanned<Json>, key: &str) -> Result<u16, ConfigError> {
        let Json::Number(number, n) = &v.value else {
            return Err(self.at(
                v.at,
                key,
                format!("expected an integer port, found {}", v.value.describe()),
            ));
        };
        match integer(number) {
            Some(p) => u16::try_from(p)
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| self.at(v.at, key, format!("{n} is outside 1-65535"))),
            None => Err(self.at(v.at, key, format!("{n} is not an integer port"))),
        }
    }

    fn triggers(
        &self,
        v: &Spanned<Json>,
    ) -> Result<BTreeMap<EventKind, TriggerCommand>, ConfigError> {
        let Json::Object(entries) = &v.value else {
            return Err(self.at(
                v.at,
                "triggers",
                format!(
                    "expected an object of trigger name → command, found {}",
                    v.value.describe()
                ),
            ));
        };
        let names = EventKind::ALL.map(EventKind::as_str);
        let mut seen = HashMap::new();
        let mut triggers = BTreeMap::new();
        for (key, value) in entries {
            self.check_key(&mut seen, key, "triggers", "trigger", &names)?;
            let Ok(kind) = key.value.parse::<EventKind>() else {
                return Err(self.at(
                    key.at,
                    "triggers",
                    format!("unknown trigger {:?}", key.value),
                ));
            };
            let k = format!("triggers.{kind}");
            let line = match &value.value {
                Json::Null => continue,
                Json::String(s) => s.clone(),
                other => {
                    return Err(self.at(
                        value.at,
                        &k,
                        format!(
                            "expected a command string or null, found {}",
                            other.describe()
                        ),
                    ))
                }
            };
            let argv = shell_words::split(&line).map_err(|e| {
                self.at(
                    value.at,
                    &k,
                    format!("cannot split the command into words: {e}"),
                )
            })?;
            if argv.is_empty() {
                return Err(self.at(value.at, &k, "empty command (write null to run nothing)"));
            }
            triggers.insert(kind, TriggerCommand { line, argv });
        }
        Ok(triggers)
    }
}

/// An integral number as i128, so that `-1` and `1e3` and `70000` can all
/// be judged against a range; `None` when it has a fractional part.
fn integer(n: &Number) -> Option<i128> {
    if let Some(i) = n.as_i64() {
        return Some(i.into());
    }
    if let Some(u) = n.as_u64() {
        return Some(u.into());
    }
    let f = n.as_f64()?;
    // Beyond ±1e30 the exact value does not matter: it is out of any range.
    (f.is_finite() && f.fract() == 0.0).then(|| f.clamp(-1e30, 1e30) as i128)
}

const ALIASES: [(&str, &str); 10] = [
    ("database", "dbname"),
    ("db", "dbname"),
    ("username", "user"),
    ("pass", "password"),
    ("hosts", "nodes"),
    ("servers", "nodes"),
    ("sslcert", "sslrootcert"),
    ("sslrootcrt", "sslrootcert"),
    ("interval", "heartbeat"),
    ("timeout", "connect_timeout"),
];

/// Seconds as a person writes them: `60 s`, `0.5 s`.
pub(super) fn secs(d: Duration) -> String {
    format!("{} s", d.as_secs_f64())
}

/// ` (did you mean "KNOWN"?)` when `word` is close enough to one of `known`
/// to be a typo of it, else nothing: the hint every "unknown" message ends
/// with.
pub fn did_you_mean(word: &str, known: &[&str]) -> String {
    match suggest(word, known) {
        Some(s) => format!(" (did you mean {s:?}?)"),
        None => String::new(),
    }
}

/// The known word closest to `word`, if it is close enough to be a typo
/// rather than a different idea.
fn suggest<'k>(word: &str, known: &[&'k str]) -> Option<&'k str> {
    let lower = word.to_lowercase();
    // Names other tools use for the same thing are too far apart to be
    // caught as typos.
    if let Some((_, k)) = ALIASES.iter().find(|(alias, _)| *alias == lower) {
        if let Some(k) = known.iter().find(|known| *known == k) {
            return Some(k);
        }
    }
    known
        .iter()
        .map(|k| (strsim::jaro_winkler(&lower, k), *k))
        .filter(|(score, _)| *score >= 0.85)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, k)| k)
}
