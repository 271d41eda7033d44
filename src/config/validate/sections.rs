//! The sections of the file: `nodes` (each node's address and pgpool id,
//! no node twice), `triggers` (one command per event, split into words) and
//! `pgpool` (how to reach pcp, the templates as written, the node ids
//! gathered once the nodes are known).

use super::values::integer;
use super::Validator;
use crate::cluster::{EventKind, NodeName};
use crate::config::json::{Json, Spanned};
use crate::config::{
    defaults, ConfigError, NodeConfig, PgpoolConfig, PgpoolWritten, TemplateText, TriggerCommand,
};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Duration;

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

/// The `pgpool` section before the node ids written on nodes are gathered
/// (the nodes may come after it in the file).
pub(super) struct RawPgpool {
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
    pub(super) fn pgpool(&self, v: &Spanned<Json>) -> Result<RawPgpool, ConfigError> {
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
    pub(super) fn resolve_pgpool(
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

    #[allow(clippy::type_complexity)]
    pub(super) fn nodes(
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

    pub(super) fn triggers(
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
