//! Writing a sandbox pgpool's files: pgpool.conf, pcp.conf, pool_passwd,
//! pool_hba.conf, the pcppass file, and the failover and follow_primary
//! scripts ([`PgpoolOptions::failover`]).

use std::fs::{self, OpenOptions};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{Pgpool, PgpoolOptions, FAILOVER_LOG, FOLLOW_LOG, PCP_PASSWORD, PCP_USER};
use crate::demo::sandbox::{
    sql_quote, Sandbox, SandboxError, HOST, SANDBOX_DBNAME, SANDBOX_PASSWORD, SANDBOX_USER,
};

/// The failover_command script in pgpool's directory (`failover: true`).
const FAILOVER_SCRIPT: &str = "failover.sh";

/// The follow_primary_command script in pgpool's directory.
const FOLLOW_SCRIPT: &str = "follow_primary.sh";

/// What both scripts do first: close every descriptor inherited from
/// pgpool beyond stdin/stdout/stderr (its listening sockets among them), so
/// nothing they start can keep pgpool's ports.
const CLOSE_INHERITED_FDS: &str = "for fd in $(ls /proc/$$/fd); do\n  \
     [ \"$fd\" -gt 2 ] && eval \"exec $fd>&-\"\n\
     done 2>/dev/null\n";

impl Pgpool {
    /// Writes pgpool.conf for the current ports, with `extra` lines last,
    /// and the pcppass file for the current pcp port.
    pub fn write_conf(
        &self,
        sb: &Sandbox,
        opts: &PgpoolOptions,
        extra: &[String],
    ) -> Result<(), SandboxError> {
        let backends: Vec<Backend> = (0..sb.len())
            .map(|i| Backend {
                port: sb.port(i),
                application_name: application_name(sb, i),
                data: sb.data_dir(i).to_path_buf(),
            })
            .collect();
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let conf = render_conf(&ConfInput {
            dir: self.dir(),
            port: self.port,
            pcp_port: self.pcp_port,
            backends: &backends,
            opts,
            extra_conf: &extra,
        });
        self.runner.write_file(&self.conf, &conf)?;
        self.write_pcppass()
    }

    /// pcp.conf (user:md5 of the password, as pg_md5 computes it), the
    /// pool_passwd pgpool authenticates clients and backends with, and a
    /// pool_hba.conf of our own so nothing is read from /etc.
    pub(super) fn write_fixed_files(&self) -> Result<(), SandboxError> {
        let mut cmd = Command::new(self.bin.join("pg_md5"));
        cmd.arg(PCP_PASSWORD);
        let out = self.run(cmd, Some(PCP_PASSWORD))?;
        let hash = out.stdout.trim();
        if hash.len() != 32 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(SandboxError::Unexpected {
                command: out.command,
                output: out.stdout,
            });
        }
        self.runner
            .write_file(&self.pcp_conf, &format!("{PCP_USER}:{hash}\n"))?;
        // A "TEXT" entry gives pgpool the clear password: what it needs to
        // answer the backends' scram-sha-256 for a client and itself.
        let pool_passwd = self.dir().join("pool_passwd");
        self.runner.write_file(
            &pool_passwd,
            &format!("{SANDBOX_USER}:TEXT{SANDBOX_PASSWORD}\n"),
        )?;
        set_mode(&pool_passwd, 0o600)?;
        self.runner.write_file(
            &self.hba,
            &format!("# unused (enable_pool_hba = off)\nhost all all {HOST}/32 scram-sha-256\n"),
        )
    }

    /// The failover and follow_primary scripts (see
    /// [`PgpoolOptions::failover`]): the sandbox's binaries, socket
    /// directory and conninfo shape are baked in; pgpool passes node ids,
    /// ports and data directories through its %-escapes.
    pub(super) fn write_scripts(&self, sb: &Sandbox) -> Result<(), SandboxError> {
        let dir = self.dir();
        let pg_ctl = sb.bin.join("pg_ctl");
        let failover = format!(
            "#!/bin/bash\n\
             # written by plusmoin's sandbox: pgpool's failover_command\n\
             # args: %d (failed node) %m (new main) %P (old primary) %R (new main's data)\n\
             {CLOSE_INHERITED_FDS}\
             FAILED=\"$1\"; NEW_MAIN=\"$2\"; OLD_PRIMARY=\"$3\"; NEW_MAIN_DATA=\"$4\"\n\
             if [ \"$NEW_MAIN\" -lt 0 ]; then\n  action=no-new-main\n\
             elif [ \"$OLD_PRIMARY\" != -1 ] && [ \"$FAILED\" != \"$OLD_PRIMARY\" ]; then\n  action=none\n\
             elif {pg_ctl} promote -w -t 60 -D \"$NEW_MAIN_DATA\"; then\n  action=promoted\n\
             else\n  action=promote-failed\nfi\n\
             echo \"failover failed=$FAILED old_primary=$OLD_PRIMARY new_main=$NEW_MAIN action=$action\" >> {log}\n\
             exit 0\n",
            pg_ctl = shell_quote(&pg_ctl.to_string_lossy()),
            log = shell_quote(&dir.join(FAILOVER_LOG).to_string_lossy()),
        );
        let mut pairs = String::new();
        for node in 0..sb.len() {
            for primary in (0..sb.len()).filter(|p| *p != node) {
                let sql = format!(
                    "ALTER SYSTEM SET primary_conninfo = {}",
                    sql_quote(&sb.primary_conninfo(node, primary))
                );
                pairs.push_str(&format!(
                    "  {node}:{primary}) SQL={} ;;\n",
                    shell_quote(&sql)
                ));
            }
        }
        let follow = format!(
            "#!/bin/bash\n\
             # written by plusmoin's sandbox: pgpool's follow_primary_command\n\
             # args: %d (node to re-point) %p (its port) %m (new primary) %P (old primary)\n\
             # It re-points the standby; it does not attach it in pgpool again.\n\
             {CLOSE_INHERITED_FDS}\
             NODE=\"$1\"; NODE_PORT=\"$2\"; NEW_PRIMARY=\"$3\"; OLD_PRIMARY=\"$4\"\n\
             export PGCONNECT_TIMEOUT=5\n\
             psql_node() {{ {psql} -X -A -t -q -h {sock} -p \"$NODE_PORT\" -U postgres -d postgres -c \"$1\"; }}\n\
             SQL=\n\
             case \"$NODE:$NEW_PRIMARY\" in\n{pairs}esac\n\
             if [ -z \"$SQL\" ]; then\n  result=unknown-pair\n\
             elif [ \"$(psql_node 'SELECT pg_is_in_recovery()' 2>/dev/null)\" != t ]; then\n  result=skipped\n\
             elif psql_node \"$SQL\" && psql_node 'SELECT pg_reload_conf()' >/dev/null; then\n  result=repointed\n\
             else\n  result=failed\nfi\n\
             echo \"follow node=$NODE new_primary=$NEW_PRIMARY old_primary=$OLD_PRIMARY result=$result\" >> {log}\n\
             exit 0\n",
            psql = shell_quote(&sb.bin.join("psql").to_string_lossy()),
            sock = shell_quote(&sb.dir().to_string_lossy()),
            log = shell_quote(&dir.join(FOLLOW_LOG).to_string_lossy()),
        );
        for (name, text) in [(FAILOVER_SCRIPT, failover), (FOLLOW_SCRIPT, follow)] {
            let path = dir.join(name);
            self.runner.write_file(&path, &text)?;
            set_mode(&path, 0o755)?;
        }
        Ok(())
    }

    /// The pcppass file, owned by us (we run the pcp commands) and created
    /// 0600 from the start, since pcp ignores it otherwise.
    fn write_pcppass(&self) -> Result<(), SandboxError> {
        let io = |source| SandboxError::Io {
            what: format!("write {}", self.pcppass.display()),
            source,
        };
        let _ = fs::remove_file(&self.pcppass);
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&self.pcppass)
            .map_err(io)?;
        std::io::Write::write_all(
            &mut file,
            format!("{HOST}:{}:{PCP_USER}:{PCP_PASSWORD}\n", self.pcp_port).as_bytes(),
        )
        .map_err(io)?;
        set_mode(&self.pcppass, 0o600)
    }
}

/// One backend line of pgpool.conf.
struct Backend {
    port: u16,
    application_name: String,
    data: PathBuf,
}

/// Everything pgpool.conf depends on.
struct ConfInput<'a> {
    dir: &'a Path,
    port: u16,
    pcp_port: u16,
    backends: &'a [Backend],
    opts: &'a PgpoolOptions,
    extra_conf: &'a [&'a str],
}

/// The whole pgpool.conf (pgpool-II 4.2+ parameter names).
fn render_conf(c: &ConfInput) -> String {
    let dir = c.dir.to_string_lossy();
    let q = |s: &str| sql_quote(s);
    let path = |name: &str| q(&c.dir.join(name).to_string_lossy());
    // Both checks log in to the backends as the sandbox's own role.
    let database = c
        .opts
        .health_check_database
        .as_deref()
        .unwrap_or(SANDBOX_DBNAME);
    let login = |check: &str| {
        format!(
            "{check}_user = {}\n{check}_password = {}\n{check}_database = {}\n",
            q(SANDBOX_USER),
            q(SANDBOX_PASSWORD),
            q(database),
        )
    };
    let (failover_command, follow_command) = if c.opts.failover {
        (
            q(&format!(
                "{} %d %m %P %R",
                c.dir.join(FAILOVER_SCRIPT).display()
            )),
            q(&format!(
                "{} %d %p %m %P",
                c.dir.join(FOLLOW_SCRIPT).display()
            )),
        )
    } else {
        (q(""), q(""))
    };
    let mut conf = format!(
        "# written by plusmoin's sandbox (pgpool fixture)\n\
         backend_clustering_mode = 'streaming_replication'\n\
         listen_addresses = {host}\n\
         port = {port}\n\
         socket_dir = {dir}\n\
         pcp_listen_addresses = {host}\n\
         pcp_port = {pcp_port}\n\
         pcp_socket_dir = {dir}\n\
         wd_ipc_socket_dir = {dir}\n\
         pid_file_name = {pid_file}\n\
         logdir = {dir}\n\
         use_watchdog = off\n\
         num_init_children = 4\n\
         max_pool = 1\n\
         reserved_connections = 0\n\
         enable_pool_hba = off\n\
         pool_passwd = {pool_passwd}\n\
         allow_clear_text_frontend_auth = off\n\
         load_balance_mode = on\n\
         memory_cache_enabled = off\n\
         memqcache_total_size = 1MB\n\
         memqcache_max_num_cache = 100\n\
         memqcache_oiddir = {oiddir}\n\
         sr_check_period = 1\n\
         {sr_check_login}\
         delay_threshold = 0\n\
         health_check_period = {hc_period}\n\
         health_check_timeout = {hc_timeout}\n\
         {health_check_login}\
         health_check_max_retries = {hc_retries}\n\
         health_check_retry_delay = {hc_retry_delay}\n\
         connect_timeout = 5000\n\
         failover_command = {failover_command}\n\
         failback_command = ''\n\
         follow_primary_command = {follow_command}\n\
         failover_on_backend_error = off\n\
         failover_on_backend_shutdown = off\n\
         detach_false_primary = off\n\
         search_primary_node_timeout = 10\n\
         auto_failback = {auto_failback}\n\
         auto_failback_interval = {af_interval}\n\
         log_destination = 'stderr'\n\
         logging_collector = off\n\
         log_min_messages = warning\n",
        host = q(HOST),
        port = c.port,
        pcp_port = c.pcp_port,
        dir = q(&dir),
        pid_file = path("pgpool.pid"),
        pool_passwd = path("pool_passwd"),
        oiddir = path("oiddir"),
        sr_check_login = login("sr_check"),
        health_check_login = login("health_check"),
        hc_period = c.opts.health_check_period.unwrap_or(1),
        hc_retries = c.opts.health_check_max_retries,
        hc_retry_delay = c.opts.health_check_retry_delay,
        hc_timeout = c.opts.health_check_timeout,
        auto_failback = if c.opts.auto_failback.is_some() {
            "on"
        } else {
            "off"
        },
        af_interval = c.opts.auto_failback.map_or(60, |d| d.as_secs()),
    );
    for (i, b) in c.backends.iter().enumerate() {
        conf.push_str(&format!(
            "backend_hostname{i} = {host}\n\
             backend_port{i} = {port}\n\
             backend_weight{i} = 1\n\
             backend_flag{i} = 'ALLOW_TO_FAILOVER'\n\
             backend_application_name{i} = {app}\n\
             backend_data_directory{i} = {data}\n",
            host = q(HOST),
            port = b.port,
            app = q(&b.application_name),
            data = q(&b.data.to_string_lossy()),
        ));
    }
    for line in c.extra_conf {
        conf.push_str(line);
        conf.push('\n');
    }
    conf
}

/// The application_name standby `i` streams with (from the sandbox's own
/// primary_conninfo, so the two cannot drift apart).
fn application_name(sb: &Sandbox, i: usize) -> String {
    sb.primary_conninfo(i, 0)
        .split_whitespace()
        .find_map(|w| w.strip_prefix("application_name="))
        .map_or_else(|| format!("node{i}"), str::to_owned)
}

/// A word for bash, single-quoted.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn set_mode(path: &Path, mode: u32) -> Result<(), SandboxError> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(|source| SandboxError::Io {
        what: format!("chmod {mode:o} {}", path.display()),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// pgpool's expansion of a command's %-escapes: from 4.4, `%d`, `%p`
    /// and `%m` come with a leading space (`d=%d` gives `d= 0`), 4.3 and
    /// older have none; every other escape has none in any version.
    fn expand(command: &str, from_4_4: bool) -> String {
        let values = [
            ('d', "1"),
            ('p', "5433"),
            ('m', "2"),
            ('P', "0"),
            ('R', "/d/n2"),
        ];
        let mut out = String::new();
        let mut chars = command.chars();
        while let Some(c) = chars.next() {
            if c != '%' {
                out.push(c);
                continue;
            }
            let e = chars.next().expect("escape");
            let value = values.iter().find(|(k, _)| *k == e).expect("known").1;
            if from_4_4 && matches!(e, 'd' | 'p' | 'm') {
                out.push(' ');
            }
            out.push_str(value);
        }
        out
    }

    #[test]
    fn the_scripts_get_the_same_arguments_from_pgpool_4_3_and_4_4() {
        let opts = PgpoolOptions {
            failover: true,
            ..PgpoolOptions::default()
        };
        let conf = render_conf(&ConfInput {
            dir: Path::new("/d"),
            port: 1,
            pcp_port: 2,
            backends: &[],
            opts: &opts,
            extra_conf: &[],
        });
        for key in ["failover_command = ", "follow_primary_command = "] {
            let line = conf.lines().find_map(|l| l.strip_prefix(key)).expect(key);
            let command = line.trim_matches('\'');
            // /bin/sh splits the words: each escape is an argument of its
            // own, so 4.4's leading space is never part of a value.
            let words = |v44| {
                expand(command, v44)
                    .split_whitespace()
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            };
            assert_eq!(words(false), words(true), "{key}");
            assert!(
                words(true).iter().skip(1).all(|w| !w.contains('=')),
                "{line}"
            );
        }
        assert_eq!(expand("x d=%d", true), "x d= 1");
    }

    #[test]
    fn conf_has_every_backend_and_the_options() {
        let backends = [
            Backend {
                port: 5432,
                application_name: "node0".into(),
                data: PathBuf::from("/d/node0"),
            },
            Backend {
                port: 5433,
                application_name: "node1".into(),
                data: PathBuf::from("/d/node1"),
            },
        ];
        let opts = PgpoolOptions {
            auto_failback: Some(Duration::from_secs(3)),
            health_check_period: Some(2),
            health_check_max_retries: 5,
            failover: true,
            health_check_database: Some("postgres".into()),
            ..PgpoolOptions::default()
        };
        let conf = render_conf(&ConfInput {
            dir: Path::new("/dev/shm/x'y"),
            port: 9999,
            pcp_port: 9898,
            backends: &backends,
            opts: &opts,
            extra_conf: &["search_primary_node_timeout = 30"],
        });
        for want in [
            "backend_clustering_mode = 'streaming_replication'",
            "port = 9999\n",
            "pcp_port = 9898\n",
            "socket_dir = '/dev/shm/x''y'\n",
            "pid_file_name = '/dev/shm/x''y/pgpool.pid'\n",
            "backend_port1 = 5433\n",
            "backend_application_name1 = 'node1'\n",
            "health_check_period = 2\n",
            "health_check_max_retries = 5\n",
            "health_check_retry_delay = 1\n",
            "health_check_database = 'postgres'\n",
            "sr_check_database = 'postgres'\n",
            "backend_data_directory1 = '/d/node1'\n",
            "failover_command = '/dev/shm/x''y/failover.sh %d %m %P %R'\n",
            "follow_primary_command = '/dev/shm/x''y/follow_primary.sh %d %p %m %P'\n",
            "auto_failback = on\n",
            "auto_failback_interval = 3\n",
            "failover_on_backend_error = off\n",
        ] {
            assert!(conf.contains(want), "missing {want:?} in:\n{conf}");
        }
        assert!(conf.ends_with("search_primary_node_timeout = 30\n"));
        assert!(!conf.contains("backend_port2"));
        let off = render_conf(&ConfInput {
            dir: Path::new("/d"),
            port: 1,
            pcp_port: 2,
            backends: &backends,
            opts: &PgpoolOptions::default(),
            extra_conf: &[],
        });
        assert!(off.contains("auto_failback = off\n"));
        assert!(off.contains("health_check_period = 1\n"));
        assert!(off.contains("health_check_max_retries = 0\n"));
        assert!(off.contains("failover_command = ''\n"));
        assert!(off.contains("follow_primary_command = ''\n"));
        assert!(off.contains("health_check_database = 'plusmoin'\n"));
    }
}
