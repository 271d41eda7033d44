//! Configuration: JSON with comments (README "Configuration") loaded and validated into the
//! typed [`Config`].
//!
//! Loading goes text → comments stripped → syntax checked by serde_json →
//! a tree that remembers positions (`json`) → typed values (`validate`).
//! Every refusal is a [`ConfigError`] whose message is one line naming the
//! file, the line and column, and the key. Nothing else in plusmoin reads the
//! file or sees untyped values.
//!
//! Config knows no part that uses it. The `pgpool` section is read and typed
//! here like any other, but what only the sidecar knows is left to it: which
//! pcp command templates exist and what they may say (`TemplateText` keeps
//! them as written), and the node ids `pgpool_conf` gives. The sidecar checks
//! those after loading (`pgpool::check`), pointing at the key with the
//! positions kept in `PgpoolWritten`, through the same [`ConfigError`];
//! whatever loads a configuration for use runs both.

mod error;
mod json;
mod lenient;
mod secrets;
#[cfg(test)]
mod tests;
mod validate;

pub use lenient::{read_control_paths, ControlPaths};
pub use secrets::permission_warnings;
pub(crate) use secrets::PasswordSource;

pub use error::ConfigError;
pub(crate) use json::Position;
pub(crate) use validate::did_you_mean;

use crate::cluster::{EventKind, NodeName};
use std::collections::BTreeMap;
use std::fmt;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where plusmoin looks when `-c` is not given.
pub(crate) const DEFAULT_PATH: &str = "/etc/plusmoin/plusmoin.json";

/// The defaults (README "Configuration"), in one place for the loader and the docs.
pub(crate) mod defaults {
    use std::time::Duration;
    pub(crate) const HEARTBEAT: Duration = Duration::from_secs(60);
    pub(crate) const MAX_SYNC_DELAY: Duration = Duration::from_secs(120);
    pub(crate) const RECOVER_SYNC_DELAY: Duration = Duration::from_secs(60);
    pub(crate) const TRIGGER_TIMEOUT: Duration = Duration::from_secs(60);
    pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);
    /// How often a lost node is tried again between beats, at first.
    pub(crate) const RETRY_INTERVAL: Duration = Duration::from_millis(250);
    pub(crate) const LOG_FILE: &str = "/var/log/plusmoin/plusmoin.log";
    pub(crate) const DAEMON_USER: &str = "nobody";
    pub(crate) const PID_FILE: &str = "/var/run/plusmoin/plusmoin.pid";
    pub(crate) const STATUS_FILE: &str = "/var/run/plusmoin/status.json";
    /// The daemon and its group read the status file; others do not.
    pub(crate) const STATUS_FILE_MODE: u32 = 0o640;
    /// The event journal's files together (`journal_max_bytes`): 16 MiB.
    pub(crate) const JOURNAL_MAX_BYTES: u64 = 16 * 1024 * 1024;
    /// The smallest `journal_max_bytes` taken: 64 KiB.
    pub(crate) const JOURNAL_MIN_BYTES: u64 = 64 * 1024;
    pub(crate) const IS_SLAVE_STATEMENT: &str = "SELECT pg_is_in_recovery()";
    /// A node's port when it does not say.
    pub(crate) const PORT: u16 = 5432;
    pub(crate) const PCP_HOST: &str = "127.0.0.1";
    pub(crate) const PCP_PORT: u16 = 9898;
    pub(crate) const PGPOOL_BIN_DIR: &str = "/usr/sbin";
    /// Longer than a watchdog election can make a pcp call wait (about 10 s).
    pub(crate) const PCP_TIMEOUT: Duration = Duration::from_secs(20);
}

/// Reads and validates the configuration file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let bytes = std::fs::read(path).map_err(|reason| ConfigError::Read {
        path: path.to_path_buf(),
        reason,
    })?;
    match String::from_utf8(bytes) {
        Ok(text) => parse(&text, path),
        Err(e) => {
            let valid = e.utf8_error().valid_up_to();
            let prefix = String::from_utf8_lossy(e.as_bytes().get(..valid).unwrap_or_default());
            Err(ConfigError::Syntax {
                path: path.to_path_buf(),
                position: json::Document::new(&prefix).position(valid),
                message: "not valid UTF-8".to_string(),
            })
        }
    }
}

/// Validates configuration text; `source` names it in errors and in
/// `Config::source`.
pub fn parse(text: &str, source: &Path) -> Result<Config, ConfigError> {
    parse_with(text, source, &system_hostname, &secrets::default_pgpass)
}

fn system_hostname() -> Result<String, String> {
    nix::unistd::gethostname()
        .map_err(|e| e.to_string())?
        .into_string()
        .map_err(|_| "it is not valid UTF-8".to_string())
}

/// [`parse`] with the host name (the default `instance_name`) and the
/// place of libpq's password file (given `daemon_user`) supplied.
fn parse_with(
    text: &str,
    source: &Path,
    hostname: &dyn Fn() -> Result<String, String>,
    pgpass: &dyn Fn(&str) -> Option<PathBuf>,
) -> Result<Config, ConfigError> {
    let doc = json::Document::new(text);
    let root = doc.parse().map_err(|e| ConfigError::Syntax {
        path: source.to_path_buf(),
        position: e.position,
        message: e.message,
    })?;
    validate::Validator {
        doc: &doc,
        source,
        hostname,
        pgpass,
    }
    .config(&root)
}

/// A password: never printed by `Debug` or `Display`.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    /// The secret itself: call only where it is handed to a server or
    /// scrubbed from a message.
    pub(crate) fn expose(&self) -> &str {
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

impl SslMode {
    pub(crate) const ALL: [SslMode; 5] = [
        SslMode::Disable,
        SslMode::Prefer,
        SslMode::Require,
        SslMode::VerifyCa,
        SslMode::VerifyFull,
    ];
    /// The name used in the configuration (and by libpq).
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum LogLevel {
    #[default]
    Error,
    Info,
    Debug,
}

impl LogLevel {
    pub(crate) const ALL: [LogLevel; 3] = [LogLevel::Error, LogLevel::Info, LogLevel::Debug];
    /// The name used in the configuration.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
        }
    }
}

/// `log_format`: plain lines for people, or one JSON object per line for
/// log shippers (the same fields: timestamp, level, message, and each event's
/// own fields such as `event`, `cluster`, `node`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl LogFormat {
    pub(crate) const ALL: [LogFormat; 2] = [LogFormat::Text, LogFormat::Json];
    /// The name used in the configuration.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
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
pub(crate) struct NodeConfig {
    pub(crate) name: NodeName,
    /// The password for this node from libpq's password file, when neither
    /// `password` nor `password_file` is set.
    pub(crate) password: Option<Secret>,
    /// pgpool-II's number for this backend, when written on the node; it
    /// wins over what `pgpool.pgpool_conf` says.
    pub(crate) pgpool_node_id: Option<u32>,
}

/// The optional `pgpool` section (README "pgpool-II", pgpool/README.md): how to reach pcp, and which
/// pgpool node id each configured node has.
///
/// Typed here, checked whole by the sidecar (`pgpool::check`): until then
/// `PgpoolConfig::templates` may name commands that do not exist and
/// `PgpoolConfig::node_ids` holds only the ids written on the nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PgpoolConfig {
    pub(crate) pcp_host: String,
    pub(crate) pcp_port: u16,
    pub(crate) pcp_user: String,
    /// Given to pcp as `PCPPASSFILE`; never read by plusmoin except to
    /// check its mode.
    pub(crate) pcppass_file: PathBuf,
    pub(crate) pgpool_conf: Option<PathBuf>,
    /// Where the `pcp_*` programs are.
    pub(crate) bin_dir: PathBuf,
    /// `templates` as written, in file order: the sidecar knows which
    /// commands exist, and renders them. Its check leaves only the
    /// overrides in force, one per command, so that sections alike compare
    /// equal however they are written.
    pub(crate) templates: Vec<TemplateText>,
    /// The deadline of one pcp command (default 20 s): a watchdog election
    /// makes pcp wait up to about 10 s, which must not count as a failure.
    pub(crate) pcp_timeout: Duration,
    /// Every node that has an id, from `pgpool_node_id` or `pgpool_conf`;
    /// nodes missing here are left alone by the pgpool handlers. The loader
    /// puts the `pgpool_node_id`s here; the sidecar's check adds what
    /// `pgpool_conf` says and refuses an id given twice.
    pub(crate) node_ids: BTreeMap<NodeName, u32>,
    /// Where the section's parts were written, for the sidecar's check.
    pub(crate) written: PgpoolWritten,
}

/// One entry of `pgpool.templates` as written: the command it names, and
/// its text (`None` for `null`: the shipped one).
///
/// `==` compares the name and text only, not where they were written.
#[derive(Debug, Clone, Eq)]
pub(crate) struct TemplateText {
    pub(crate) command: String,
    pub(crate) text: Option<String>,
    /// Where the command name was written.
    pub(crate) command_at: Position,
    /// Where the text (or `null`) was written.
    pub(crate) text_at: Position,
}

impl PartialEq for TemplateText {
    fn eq(&self, other: &Self) -> bool {
        self.command == other.command && self.text == other.text
    }
}

/// Where parts of the `pgpool` section were written, so that the sidecar's
/// check points at the key at fault as the loader does.
///
/// Never part of a comparison (`==` is always true): a reload that only
/// moves lines changes nothing.
#[derive(Debug, Clone, Eq)]
pub(crate) struct PgpoolWritten {
    /// The section's `{`.
    pub(crate) section: Position,
    /// The `pgpool_conf` value, when set.
    pub(crate) pgpool_conf: Option<Position>,
    /// Each node's `pgpool_node_id` value, for the nodes that have one.
    pub(crate) node_ids: BTreeMap<NodeName, Position>,
}

impl PartialEq for PgpoolWritten {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file it was read from.
    pub(crate) source: PathBuf,
    pub(crate) dbname: String,
    pub(crate) user: String,
    /// The password for every node (empty when it comes from libpq's
    /// password file: then each node has its own in [`NodeConfig::password`]).
    pub(crate) password: Secret,
    pub(crate) password_source: PasswordSource,
    pub(crate) heartbeat: Duration,
    pub(crate) max_sync_delay: Duration,
    pub(crate) recover_sync_delay: Duration,
    /// The byte rule of the slaves (off by default).
    pub(crate) max_lag_bytes: Option<u64>,
    pub(crate) recover_lag_bytes: Option<u64>,
    pub(crate) nodes: Vec<NodeConfig>,
    pub(crate) triggers: BTreeMap<EventKind, TriggerCommand>,
    pub(crate) trigger_timeout: Duration,
    pub log_file: PathBuf,
    pub log_level: LogLevel,
    pub log_format: LogFormat,
    pub daemon_user: String,
    pub pid_file: PathBuf,
    pub status_file: PathBuf,
    /// The status file's mode (`status_file_mode`, default 0640: the
    /// daemon's group reads it, others do not).
    pub(crate) status_file_mode: u32,
    /// The event journal's size, both files together (`journal_max_bytes`,
    /// README "Event history"); the journal is `events.jsonl` beside the
    /// status file.
    pub(crate) journal_max_bytes: u64,
    pub(crate) connect_timeout: Duration,
    /// How often a lost node (down, or out of sync) is tried again between
    /// beats, at first (default 0.25 s); slower for nodes away for long.
    pub(crate) retry_interval: Duration,
    pub(crate) is_slave_statement: String,
    pub instance_name: String,
    pub(crate) sslmode: SslMode,
    pub(crate) sslrootcert: Option<PathBuf>,
    /// Where the HTTP listener (metrics, health endpoints) listens; `None`:
    /// no listener.
    pub http_listen: Option<std::net::SocketAddr>,
    /// `None`: no pgpool handling at all.
    pub(crate) pgpool: Option<PgpoolConfig>,
}

impl Config {
    /// The files that may hold a password: the configuration itself, and
    /// `password_file` or libpq's password file when the password is there.
    pub(crate) fn secret_files(&self) -> Vec<&Path> {
        std::iter::once(self.source.as_path())
            .chain(self.password_source.file())
            .collect()
    }

    /// Whether the configuration has a `pgpool` section (the sidecar runs).
    pub fn has_pgpool(&self) -> bool {
        self.pgpool.is_some()
    }

    /// What is wrong with who may read or write `Config::secret_files`
    /// (see [`secrets::permission_warnings`]): printed at start, on reload
    /// and by `check-config`.
    pub fn secret_warnings(&self) -> Vec<String> {
        self.secret_files()
            .into_iter()
            .flat_map(|p| secrets::permission_warnings(p, &self.daemon_user))
            .collect()
    }

    /// What `plusmoin check-config` prints: every setting as it will be used,
    /// defaults filled in, the password never shown. Ends with the `pgpool`
    /// section's settings, for the sidecar to add which templates are in
    /// force.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let d = validate::secs;
        let mut row = |key: &str, value: &dyn fmt::Display| {
            let _ = writeln!(out, "  {key:<20} {value}");
        };
        row("file", &self.source.display());
        row("instance_name", &self.instance_name);
        row("dbname", &self.dbname);
        row("user", &self.user);
        let password = match &self.password_source {
            PasswordSource::Inline if self.password.expose().is_empty() => "(empty)".to_string(),
            PasswordSource::Inline => "(set, not shown)".to_string(),
            PasswordSource::File(p) => format!("(from password_file {}, not shown)", p.display()),
            PasswordSource::PgPass(p) => format!("(from {} for each node, not shown)", p.display()),
        };
        row("password", &password);
        row("sslmode", &self.sslmode);
        row(
            "sslrootcert",
            &self
                .sslrootcert
                .as_ref()
                .map_or_else(|| "(none)".to_string(), |p| p.display().to_string()),
        );
        row("heartbeat", &d(self.heartbeat));
        row("max_sync_delay", &d(self.max_sync_delay));
        row("recover_sync_delay", &d(self.recover_sync_delay));
        let bytes =
            |b: Option<u64>| b.map_or_else(|| "(off)".to_string(), |b| format!("{b} bytes"));
        row("max_lag_bytes", &bytes(self.max_lag_bytes));
        row("recover_lag_bytes", &bytes(self.recover_lag_bytes));
        row("connect_timeout", &d(self.connect_timeout));
        row("retry_interval", &d(self.retry_interval));
        row("trigger_timeout", &d(self.trigger_timeout));
        row("is_slave_statement", &self.is_slave_statement);
        row("log_file", &self.log_file.display());
        row("log_level", &self.log_level);
        row("log_format", &self.log_format);
        row("daemon_user", &self.daemon_user);
        row("pid_file", &self.pid_file.display());
        row("status_file", &self.status_file.display());
        row(
            "status_file_mode",
            &format!("{:04o}", self.status_file_mode),
        );
        row("journal_max_bytes", &self.journal_max_bytes);
        row(
            "http_listen",
            &self.http_listen.map_or_else(
                || "(off: no metrics or health endpoints)".to_string(),
                |a| {
                    format!(
                        "{a} (GET /metrics /status /health /primary/HOST:PORT /replica/HOST:PORT)"
                    )
                },
            ),
        );
        let mut text = format!("configuration\n{out}");
        let _ = writeln!(text, "nodes ({}):", self.nodes.len());
        if self.nodes.is_empty() {
            text.push_str("  (none)\n");
        }
        for node in &self.nodes {
            match self.pgpool.as_ref().map(|p| p.node_ids.get(&node.name)) {
                Some(Some(id)) => {
                    let _ = writeln!(text, "  {:<30} pgpool node {id}", node.name.to_string());
                }
                Some(None) => {
                    let _ = writeln!(
                        text,
                        "  {:<30} (no pgpool node id: not handled by pgpool actions)",
                        node.name.to_string()
                    );
                }
                None => {
                    let _ = writeln!(text, "  {}", node.name);
                }
            }
        }
        let _ = writeln!(
            text,
            "triggers ({} of {} set):",
            self.triggers.len(),
            EventKind::ALL.len()
        );
        for kind in EventKind::ALL {
            let command = self
                .triggers
                .get(&kind)
                .map_or("(nothing runs)", |t| t.line.as_str());
            let _ = writeln!(text, "  {:<20} {command}", kind.as_str());
        }
        match &self.pgpool {
            None => text.push_str("pgpool: (no pgpool section: no pgpool handling)\n"),
            Some(p) => {
                text.push_str("pgpool:\n");
                let mut row = |key: &str, value: &dyn fmt::Display| {
                    let _ = writeln!(text, "  {key:<20} {value}");
                };
                row("pcp_host", &p.pcp_host);
                row("pcp_port", &p.pcp_port);
                row("pcp_user", &p.pcp_user);
                row("pcppass_file", &p.pcppass_file.display());
                row(
                    "pgpool_conf",
                    &p.pgpool_conf
                        .as_ref()
                        .map_or_else(|| "(none)".to_string(), |c| c.display().to_string()),
                );
                row("bin_dir", &p.bin_dir.display());
                row("pcp_timeout", &validate::secs(p.pcp_timeout));
            }
        }
        text
    }
}
