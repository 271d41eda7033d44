//! The pcp command templates (README "pgpool-II", pgpool/README.md): the shipped ones from `pgpool/`,
//! overrides from the configuration, and their rendering into an argv.
//!
//! Templates are handlebars in strict mode, so a misspelt variable fails
//! when the configuration is loaded (the sidecar's check, [`super::check`],
//! renders every template once with sample values then) rather than as a broken command at 3 a.m. Every
//! value is shell-quoted as it is put in (handlebars' escape function), and
//! the result is split into words as a shell would, then run without one:
//! a host name such as `db1; rm -rf /` stays one harmless argument.

use crate::config::TemplateText;
use handlebars::Handlebars;
use serde::Serialize;

/// The shipped templates, embedded so the binary needs no data files.
pub(crate) const ATTACH: &str = include_str!("../../pgpool/attach.hbs");
const DETACH: &str = include_str!("../../pgpool/detach.hbs");
const NODE_INFO: &str = include_str!("../../pgpool/node_info.hbs");
const WATCHDOG_INFO: &str = include_str!("../../pgpool/watchdog_info.hbs");

/// The variables a template may use, for messages and docs.
pub(crate) const VARIABLES: [&str; 7] = [
    "node_id", "host", "port", "pcp_host", "pcp_port", "pcp_user", "bin_dir",
];

/// Which of the four commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Command {
    Attach,
    Detach,
    NodeInfo,
    /// Which pgpool of a watchdog cluster leads (not about one node: the
    /// node variables are those of the first configured node).
    WatchdogInfo,
}

impl Command {
    pub(crate) const ALL: [Command; 4] = [
        Command::Attach,
        Command::Detach,
        Command::NodeInfo,
        Command::WatchdogInfo,
    ];
    /// The key under `pgpool.templates`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Command::Attach => "attach",
            Command::Detach => "detach",
            Command::NodeInfo => "node_info",
            Command::WatchdogInfo => "watchdog_info",
        }
    }
    pub(crate) fn shipped(self) -> &'static str {
        match self {
            Command::Attach => ATTACH,
            Command::Detach => DETACH,
            Command::NodeInfo => NODE_INFO,
            Command::WatchdogInfo => WATCHDOG_INFO,
        }
    }
}

impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The template texts in force (shipped or overridden); validated when the
/// configuration is loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PcpTemplates {
    pub(crate) attach: String,
    pub(crate) detach: String,
    pub(crate) node_info: String,
    pub(crate) watchdog_info: String,
}

impl Default for PcpTemplates {
    fn default() -> Self {
        PcpTemplates {
            attach: ATTACH.to_string(),
            detach: DETACH.to_string(),
            node_info: NODE_INFO.to_string(),
            watchdog_info: WATCHDOG_INFO.to_string(),
        }
    }
}

impl PcpTemplates {
    /// The shipped templates with the configuration's overrides (`null`
    /// keeps the shipped one). A command name that does not exist is
    /// skipped: [`super::check`] refuses it at load time.
    pub(crate) fn from_config(written: &[TemplateText]) -> PcpTemplates {
        let mut t = PcpTemplates::default();
        for w in written {
            let command = Command::ALL.into_iter().find(|c| c.as_str() == w.command);
            if let (Some(c), Some(text)) = (command, &w.text) {
                t.set(c, text.clone());
            }
        }
        t
    }
    pub(crate) fn get(&self, c: Command) -> &str {
        match c {
            Command::Attach => &self.attach,
            Command::Detach => &self.detach,
            Command::NodeInfo => &self.node_info,
            Command::WatchdogInfo => &self.watchdog_info,
        }
    }
    pub(crate) fn set(&mut self, c: Command, text: String) {
        match c {
            Command::Attach => self.attach = text,
            Command::Detach => self.detach = text,
            Command::NodeInfo => self.node_info = text,
            Command::WatchdogInfo => self.watchdog_info = text,
        }
    }
    /// Whether `c` is the shipped template.
    pub(crate) fn is_shipped(&self, c: Command) -> bool {
        self.get(c) == c.shipped()
    }
}

/// The values a template sees.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Vars {
    pub(crate) node_id: u32,
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) pcp_host: String,
    pub(crate) pcp_port: u16,
    pub(crate) pcp_user: String,
    pub(crate) bin_dir: String,
}

impl Vars {
    /// Values that exercise quoting, for the load-time check.
    pub(crate) fn sample() -> Vars {
        Vars {
            node_id: 0,
            host: "db 1".into(),
            port: 5432,
            pcp_host: "127.0.0.1".into(),
            pcp_port: 9898,
            pcp_user: "pgpool".into(),
            bin_dir: "/usr/sbin".into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum TemplateError {
    #[error("{0}")]
    Syntax(String),
    #[error("{0}")]
    Render(String),
    #[error("the rendered command cannot be split into words: {0}")]
    Split(String),
    #[error("the rendered command is empty")]
    Empty,
}

/// The compiled templates.
#[derive(Debug)]
pub(crate) struct Renderer {
    hb: Handlebars<'static>,
}

fn registry() -> Handlebars<'static> {
    let mut hb = Handlebars::new();
    hb.set_strict_mode(true);
    hb.register_escape_fn(|s| shell_words::quote(s).into_owned());
    hb
}

/// Handlebars messages can span lines; a config error must stay one line.
fn one_line(s: impl ToString) -> String {
    s.to_string()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

impl Renderer {
    pub(crate) fn new(t: &PcpTemplates) -> Result<Renderer, (Command, TemplateError)> {
        let mut hb = registry();
        for c in Command::ALL {
            hb.register_template_string(c.as_str(), t.get(c))
                .map_err(|e| (c, TemplateError::Syntax(one_line(e))))?;
        }
        Ok(Renderer { hb })
    }

    /// The argv of command `c` for `vars`.
    pub(crate) fn render(&self, c: Command, vars: &Vars) -> Result<Vec<String>, TemplateError> {
        let text = self
            .hb
            .render(c.as_str(), vars)
            .map_err(|e| TemplateError::Render(one_line(e)))?;
        let argv = shell_words::split(&text).map_err(|e| TemplateError::Split(e.to_string()))?;
        if argv.is_empty() {
            return Err(TemplateError::Empty);
        }
        Ok(argv)
    }
}

/// Compiles `text` and renders it once with sample values: what the
/// configuration loader calls, so `check-config` catches every mistake.
pub(crate) fn check(c: Command, text: &str) -> Result<(), TemplateError> {
    let mut hb = registry();
    hb.register_template_string(c.as_str(), text)
        .map_err(|e| TemplateError::Syntax(one_line(e)))?;
    let r = Renderer { hb };
    r.render(c, &Vars::sample()).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> Vars {
        Vars {
            node_id: 2,
            host: "db2".into(),
            port: 5433,
            pcp_host: "127.0.0.1".into(),
            pcp_port: 9898,
            pcp_user: "pgpool".into(),
            bin_dir: "/usr/sbin".into(),
        }
    }

    #[test]
    fn shipped_templates_render_the_pcp_commands() {
        let r = Renderer::new(&PcpTemplates::default()).unwrap();
        let argv = r.render(Command::Attach, &vars()).unwrap();
        assert_eq!(
            argv,
            [
                "/usr/sbin/pcp_attach_node",
                "-h",
                "127.0.0.1",
                "-p",
                "9898",
                "-U",
                "pgpool",
                "-n",
                "2",
                "-w"
            ]
        );
        assert_eq!(
            r.render(Command::Detach, &vars()).unwrap()[0],
            "/usr/sbin/pcp_detach_node"
        );
        assert_eq!(
            r.render(Command::NodeInfo, &vars()).unwrap()[0],
            "/usr/sbin/pcp_node_info"
        );
        let argv = r.render(Command::WatchdogInfo, &vars()).unwrap();
        assert_eq!(argv[0], "/usr/sbin/pcp_watchdog_info");
        assert_eq!(argv.last().map(String::as_str), Some("-v"));
        for c in Command::ALL {
            check(c, c.shipped()).unwrap();
        }
    }

    #[test]
    fn values_are_quoted_so_they_stay_one_word() {
        let t = PcpTemplates {
            attach: "echo {{host}} {{bin_dir}}/x".into(),
            ..Default::default()
        };
        let r = Renderer::new(&t).unwrap();
        let mut v = vars();
        v.host = "db; rm -rf / $(reboot) 'x' \"y\"".into();
        v.bin_dir = "/opt/my dir".into();
        let argv = r.render(Command::Attach, &v).unwrap();
        assert_eq!(argv, ["echo", v.host.as_str(), "/opt/my dir/x"]);
    }

    #[test]
    fn unknown_variable_is_an_error_at_check_time() {
        let e = check(Command::Attach, "pcp_attach_node -n {{node}}").unwrap_err();
        assert!(matches!(e, TemplateError::Render(_)), "{e:?}");
        assert!(e.to_string().contains("node"), "{e}");
        assert!(!e.to_string().contains('\n'));
    }

    #[test]
    fn broken_syntax_and_empty_commands_are_refused() {
        assert!(matches!(
            check(Command::Detach, "pcp {{#if}}"),
            Err(TemplateError::Syntax(_))
        ));
        assert!(matches!(
            check(Command::Detach, "{{!-- nothing --}}"),
            Err(TemplateError::Empty)
        ));
        assert!(matches!(
            check(Command::Detach, "echo 'unterminated"),
            Err(TemplateError::Split(_))
        ));
    }
}
