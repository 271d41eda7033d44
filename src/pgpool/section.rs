//! The sidecar's check of the `pgpool` section: what the configuration
//! loader leaves to the part that knows pgpool. Template names and texts
//! (every template is rendered once with sample values), and the node ids
//! `pgpool_conf` gives, with no id given to two nodes.
//!
//! Refusals are [`ConfigError`]s pointing at the key at fault, exactly as
//! the loader's own; [`check`] runs after [`crate::config::load`] wherever a
//! configuration is loaded for use.

use super::{conf, templates};
use crate::cluster::NodeName;
use crate::config::{did_you_mean, Config, ConfigError, PgpoolConfig, Position, TemplateText};
use std::collections::HashMap;

/// Checks `config`'s `pgpool` section, if any, and completes its node ids
/// from `pgpool_conf`: the configuration as the sidecar will use it.
///
/// The templates are left in one form, the overrides in force in command
/// order (no `null`, no shipped text written out), so that two sections
/// with the same commands compare equal: a reload that changes only how
/// they are written keeps the sidecar's worker.
pub fn check(mut config: Config) -> Result<Config, ConfigError> {
    let Some(mut p) = config.pgpool.take() else {
        return Ok(config);
    };
    let refuse = |at: Position, key: &str, problem: String| ConfigError::Invalid {
        path: config.source.clone(),
        position: Some(at),
        key: Some(key.to_string()),
        problem,
    };
    check_templates(&p, &refuse)?;
    p.templates = in_force(&p.templates);
    map_pgpool_conf(&mut p, &config.nodes, &refuse)?;
    // Two nodes with one id would make plusmoin fight itself.
    let mut by_id: HashMap<u32, &NodeName> = HashMap::new();
    for (i, node) in config.nodes.iter().enumerate() {
        let Some(id) = p.node_ids.get(&node.name) else {
            continue;
        };
        if let Some(other) = by_id.insert(*id, &node.name) {
            let (at, key) = match p.written.node_ids.get(&node.name) {
                Some(at) => (*at, format!("nodes[{i}].pgpool_node_id")),
                None => (
                    p.written.pgpool_conf.unwrap_or(p.written.section),
                    "pgpool.pgpool_conf".to_string(),
                ),
            };
            return Err(refuse(
                at,
                &key,
                format!(
                    "pgpool node id {id} is given to both {other} and {}",
                    node.name
                ),
            ));
        }
    }
    config.pgpool = Some(p);
    Ok(config)
}

/// Each template, in the order written: a known command, named once, whose
/// text compiles and renders.
fn check_templates(
    p: &PgpoolConfig,
    refuse: &dyn Fn(Position, &str, String) -> ConfigError,
) -> Result<(), ConfigError> {
    let names = templates::Command::ALL.map(templates::Command::as_str);
    let mut seen: HashMap<&str, Position> = HashMap::new();
    for t in &p.templates {
        let parent = "pgpool.templates";
        let Some(c) = templates::Command::ALL
            .into_iter()
            .find(|c| c.as_str() == t.command)
        else {
            return Err(refuse(
                t.command_at,
                parent,
                format!(
                    "unknown template {:?}{}",
                    t.command,
                    did_you_mean(&t.command, &names)
                ),
            ));
        };
        if let Some(first) = seen.insert(c.as_str(), t.command_at) {
            return Err(refuse(
                t.command_at,
                parent,
                format!("duplicate template {:?} (first at {first})", t.command),
            ));
        }
        let Some(text) = &t.text else {
            continue;
        };
        templates::check(c, text).map_err(|e| {
            refuse(
                t.text_at,
                &format!("{parent}.{c}"),
                format!("{e} (variables: {})", templates::VARIABLES.join(", ")),
            )
        })?;
    }
    Ok(())
}

/// The overrides of `written` that differ from the shipped templates, one
/// per command, in [`templates::Command::ALL`] order.
fn in_force(written: &[TemplateText]) -> Vec<TemplateText> {
    let t = templates::PcpTemplates::from_config(written);
    templates::Command::ALL
        .into_iter()
        .filter(|c| !t.is_shipped(*c))
        .filter_map(|c| {
            // The last entry for c: the one from_config kept.
            let w = written.iter().rev().find(|w| w.command == c.as_str())?;
            Some(TemplateText {
                text: Some(t.get(c).to_string()),
                ..w.clone()
            })
        })
        .collect()
}

/// Gives each node without a `pgpool_node_id` the id of its backend in
/// `pgpool_conf`, if set (host without case, and port, alike).
fn map_pgpool_conf(
    p: &mut PgpoolConfig,
    nodes: &[crate::config::NodeConfig],
    refuse: &dyn Fn(Position, &str, String) -> ConfigError,
) -> Result<(), ConfigError> {
    let Some(conf) = &p.pgpool_conf else {
        return Ok(());
    };
    let at = p.written.pgpool_conf.unwrap_or(p.written.section);
    let key = "pgpool.pgpool_conf";
    let text = std::fs::read_to_string(conf)
        .map_err(|e| refuse(at, key, format!("cannot read {}: {e}", conf.display())))?;
    let backends =
        conf::backends(&text).map_err(|e| refuse(at, key, format!("{}: {e}", conf.display())))?;
    for node in nodes {
        if p.node_ids.contains_key(&node.name) {
            continue;
        }
        let found = backends.iter().find(|(_, b)| {
            b.host.eq_ignore_ascii_case(&node.name.host) && b.port == node.name.port
        });
        if let Some((id, _)) = found {
            p.node_ids.insert(node.name.clone(), *id);
        }
    }
    Ok(())
}

/// The lines `plusmoin check-config` prints after [`Config::summary`]:
/// which templates are in force, shipped or overridden (nothing without a
/// `pgpool` section).
pub fn summary(config: &Config) -> String {
    let Some(p) = &config.pgpool else {
        return String::new();
    };
    let t = templates::PcpTemplates::from_config(&p.templates);
    let mut out = String::new();
    for c in templates::Command::ALL {
        let how = if t.is_shipped(c) {
            "shipped"
        } else {
            "overridden"
        };
        out.push_str(&format!("  {:<20} {how}\n", format!("templates.{c}")));
    }
    out
}

#[cfg(test)]
mod tests {
    //! The checks moved here from the configuration loader, with the same
    //! messages at the same places.
    use super::*;
    use crate::pgpool::templates::PcpTemplates;
    use std::path::{Path, PathBuf};

    fn with_pgpool(pgpool: &str, nodes: &str) -> String {
        format!(
            "{{\"dbname\": \"d\", \"user\": \"u\", \"password\": \"p\",\n\"nodes\": [{nodes}],\n\"pgpool\": {pgpool}\n}}"
        )
    }

    /// What every loader does: the loader's checks, then the sidecar's.
    fn load(text: &str) -> Result<Config, ConfigError> {
        crate::config::parse(text, Path::new("x.json")).and_then(check)
    }

    fn parse_ok(text: &str) -> Config {
        match load(text) {
            Ok(c) => c,
            Err(e) => panic!("expected a valid configuration, got: {e}"),
        }
    }

    /// The message for `text`, which must be refused.
    fn refused(text: &str) -> String {
        match load(text) {
            Ok(c) => panic!("expected an error, got {c:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn an_id_given_to_two_nodes_is_refused_at_the_second() {
        let pg = r#"{"pcp_user": "pgpool", "pcppass_file": "/x"}"#;
        let text = with_pgpool(
            pg,
            r#"{"host": "a", "pgpool_node_id": 1}, {"host": "b", "pgpool_node_id": 1}"#,
        );
        assert_eq!(
            refused(&text),
            "x.json:2:79: nodes[1].pgpool_node_id: pgpool node id 1 is given to both a:5432 and b:5432"
        );
    }

    /// The sidecar keeps its worker when the pgpool section is unchanged:
    /// templates written differently but alike must compare equal.
    #[test]
    fn templates_alike_compare_equal_however_written() {
        let a = parse_ok(&with_pgpool(
            r#"{"pcp_user": "pgpool", "pcppass_file": "/x",
  "templates": {"detach": "echo {{node_id}}", "attach": null, "node_info": null}}"#,
            r#"{"host": "db1"}"#,
        ));
        let b = parse_ok(&with_pgpool(
            &format!(
                r#"{{"pcp_user": "pgpool", "pcppass_file": "/x", "templates": {{"attach": {:?},
    "detach": "echo {{{{node_id}}}}"}}}}"#,
                templates::ATTACH
            ),
            r#"{"host": "db1"}"#,
        ));
        let c = parse_ok(&with_pgpool(
            r#"{"pcp_user": "pgpool", "pcppass_file": "/x", "templates": {"detach": "echo {{node_id}} x"}}"#,
            r#"{"host": "db1"}"#,
        ));
        assert_eq!(a.pgpool, b.pgpool);
        assert_ne!(a.pgpool, c.pgpool);
        let t = &a.pgpool.unwrap().templates;
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].command, "detach");
        assert_eq!(
            summary(&b),
            summary(&parse_ok(&with_pgpool(
                r#"{"pcp_user": "pgpool", "pcppass_file": "/x", "templates": {"detach": "echo"}}"#,
                r#"{"host": "db1"}"#,
            )))
        );
    }

    #[test]
    fn without_a_pgpool_section_nothing_is_checked() {
        let text = r#"{"dbname": "d", "user": "u", "password": "p"}"#;
        assert_eq!(
            parse_ok(text),
            crate::config::parse(text, Path::new("x.json")).unwrap()
        );
        assert_eq!(summary(&parse_ok(text)), "");
    }

    #[test]
    fn pgpool_conf_maps_node_ids_and_explicit_ids_win() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("pgpool.conf");
        std::fs::write(
            &conf,
            "backend_hostname0 = 'db1'\nbackend_port0 = 5432\n\
             backend_hostname1 = 'DB2'\nbackend_port1 = 5433\n\
             backend_hostname2 = 'db3'\n",
        )
        .unwrap();
        let c = parse_ok(&with_pgpool(
            &format!(
                r#"{{"pcp_user": "pgpool", "pcppass_file": "/x", "pgpool_conf": "{}",
                 "pcp_host": "pgpool.local", "pcp_port": 9999, "bin_dir": "/opt/pgpool/bin"}}"#,
                conf.display()
            ),
            r#"{"host": "db1"}, {"host": "db2", "port": 5433}, {"host": "db3", "pgpool_node_id": 7},
           {"host": "db4"}"#,
        ));
        let p = c.pgpool.unwrap();
        let ids: Vec<(String, u32)> = p
            .node_ids
            .iter()
            .map(|(n, i)| (n.to_string(), *i))
            .collect();
        assert_eq!(
            ids,
            [
                ("db1:5432".to_string(), 0),
                ("db2:5433".to_string(), 1),
                ("db3:5432".to_string(), 7)
            ]
        );
        assert_eq!(p.pcp_host, "pgpool.local");
        assert_eq!(p.pcp_port, 9999);
        assert_eq!(p.bin_dir, PathBuf::from("/opt/pgpool/bin"));
        let c = parse_ok(&with_pgpool(
            &format!(
                r#"{{"pcp_user": "pgpool", "pcppass_file": "/x", "pgpool_conf": "{}"}}"#,
                conf.display()
            ),
            r#"{"host": "db1"}, {"host": "db4"}"#,
        ));
        let summary = c.summary() + &summary(&c);
        assert!(summary.contains("pgpool node 0"), "{summary}");
        assert!(
            summary.contains("db4:5432") && summary.contains("no pgpool node id"),
            "{summary}"
        );
        assert!(summary.contains("templates.attach"), "{summary}");
    }

    #[test]
    fn pgpool_conf_problems_are_reported_at_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.conf");
        let text = with_pgpool(
            &format!(
                r#"{{"pcp_user": "pgpool", "pcppass_file": "/x", "pgpool_conf": "{}"}}"#,
                missing.display()
            ),
            "",
        );
        let e = refused(&text);
        assert!(
            e.starts_with("x.json:3:71: pgpool.pgpool_conf: cannot read "),
            "{e}"
        );
        let bad = dir.path().join("bad.conf");
        std::fs::write(&bad, "backend_hostname0 = 'a'\nbackend_port0 = 'x'\n").unwrap();
        let text = with_pgpool(
            &format!(
                r#"{{"pcp_user": "pgpool", "pcppass_file": "/x", "pgpool_conf": "{}"}}"#,
                bad.display()
            ),
            "",
        );
        let e = refused(&text);
        assert!(
            e.contains("pgpool.pgpool_conf: ") && e.contains("line 2:"),
            "{e}"
        );
    }

    #[test]
    fn pgpool_templates_are_checked_at_load_time() {
        let text = with_pgpool(
            r#"{"pcp_user": "pgpool", "pcppass_file": "/x",
  "templates": {"attach": "pcp_attach_node -n {{nodeid}}", "detach": null}}"#,
            "",
        );
        let e = refused(&text);
        assert!(
            e.starts_with("x.json:4:27: pgpool.templates.attach: "),
            "{e}"
        );
        assert!(
            e.contains("nodeid") && e.contains("variables: node_id, host"),
            "{e}"
        );
        let text = with_pgpool(
            r#"{"pcp_user": "pgpool", "pcppass_file": "/x", "templates": {"atach": "x"}}"#,
            "",
        );
        assert_eq!(
            refused(&text),
            "x.json:3:70: pgpool.templates: unknown template \"atach\" (did you mean \"attach\"?)"
        );
        let c = parse_ok(&with_pgpool(
            r#"{"pcp_user": "pgpool", "pcppass_file": "/x",
  "templates": {"node_info": "/opt/bin/pcp_node_info -v -n {{node_id}} -h {{pcp_host}}"}}"#,
            "",
        ));
        let t = PcpTemplates::from_config(&c.pgpool.unwrap().templates);
        assert!(t.node_info.starts_with("/opt/bin/pcp_node_info -v"));
        assert_eq!(t.attach, templates::ATTACH);
    }
}
