//! Creating the sandbox's servers: initdb for the primary, pg_basebackup
//! for each standby, the configuration files we write for both, and their
//! first start.

use std::fs;
use std::sync::Mutex;

use super::{
    free_port, sql_quote, Node, Sandbox, SandboxError, HOST, SANDBOX_DBNAME, SANDBOX_PASSWORD,
    SANDBOX_USER, SUPERUSER,
};

/// How many fresh ports a first start tries when its port got taken.
const PORT_ATTEMPTS: usize = 5;

impl Sandbox {
    pub(super) fn init_primary(&mut self) -> Result<(), SandboxError> {
        let node = self.new_node(0)?;
        let data = node.data.clone();
        self.nodes.push(node);
        self.upstreams().push(None);
        self.run_tool(
            "initdb",
            [
                "-D".as_ref(),
                data.as_os_str(),
                "-U".as_ref(),
                SUPERUSER.as_ref(),
                "-A".as_ref(),
                "trust".as_ref(),
                "-E".as_ref(),
                "UTF8".as_ref(),
                "--no-locale".as_ref(),
                "--no-sync".as_ref(),
                "--no-instructions".as_ref(),
            ],
        )?;
        self.write_file(
            &data.join("pg_hba.conf"),
            &format!(
                "# written by plusmoin's sandbox\n\
                 local all all trust\n\
                 host all {SANDBOX_USER} {HOST}/32 scram-sha-256\n\
                 host replication all {HOST}/32 trust\n\
                 host all all {HOST}/32 scram-sha-256\n"
            ),
        )?;
        self.first_start(0)?;
        self.psql(
            0,
            "postgres",
            &format!(
                "CREATE ROLE {SANDBOX_USER} LOGIN PASSWORD {}",
                sql_quote(SANDBOX_PASSWORD)
            ),
        )?;
        self.psql(
            0,
            "postgres",
            &format!("CREATE DATABASE {SANDBOX_DBNAME} OWNER {SANDBOX_USER}"),
        )?;
        self.psql(
            0,
            "postgres",
            &format!("GRANT pg_monitor TO {SANDBOX_USER}"),
        )?;
        Ok(())
    }

    pub(super) fn add_standby(&mut self, i: usize) -> Result<(), SandboxError> {
        let node = self.new_node(i)?;
        let data = node.data.clone();
        self.nodes.push(node);
        self.upstreams().push(Some(0));
        let primary_port = self.port(0).to_string();
        self.run_tool(
            "pg_basebackup",
            [
                "-h".as_ref(),
                HOST.as_ref(),
                "-p".as_ref(),
                primary_port.as_ref(),
                "-U".as_ref(),
                SUPERUSER.as_ref(),
                "-D".as_ref(),
                data.as_os_str(),
                "-X".as_ref(),
                "stream".as_ref(),
                "-c".as_ref(),
                "fast".as_ref(),
                "-R".as_ref(),
                "--no-sync".as_ref(),
            ],
        )?;
        // -R made standby.signal; the copied configuration is the primary's.
        self.write_standby_conf(i, 0)?;
        self.first_start(i)
    }

    fn new_node(&self, i: usize) -> Result<Node, SandboxError> {
        Ok(Node {
            data: self.dir().join(format!("node{i}")),
            log: self.dir().join(format!("node{i}.log")),
            port: free_port()?,
            crashed: Mutex::new(None),
        })
    }

    /// The first start of a node: when its port was taken between
    /// [`free_port`] and the bind, pick another and try again.
    fn first_start(&mut self, i: usize) -> Result<(), SandboxError> {
        let mut attempt = 1;
        loop {
            self.write_conf(i)?;
            let log_len = fs::metadata(&self.nodes[i].log).map_or(0, |m| m.len());
            let result = self.pg_ctl_start(i);
            let Err(err) = result else {
                return Ok(());
            };
            let log = fs::read(&self.nodes[i].log).unwrap_or_default();
            let new_log = String::from_utf8_lossy(log.get(log_len as usize..).unwrap_or_default());
            if attempt >= PORT_ATTEMPTS || !new_log.contains("Address already in use") {
                return Err(err);
            }
            tracing::warn!(
                node = i,
                port = self.nodes[i].port,
                "sandbox: port taken, retrying"
            );
            self.nodes[i].port = free_port()?;
            attempt += 1;
        }
    }

    /// The whole postgresql.conf of node `i`: written by us, and again after
    /// pg_basebackup or pg_rewind copied another node's.
    pub(super) fn write_conf(&self, i: usize) -> Result<(), SandboxError> {
        let node = self.node(i)?;
        let socket_dir = self.dir().to_string_lossy().replace('\'', "''");
        // The directory's unique name in cluster_name puts it in every
        // server process's title, so leftovers can be found by name.
        let dir_name = self
            .dir()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let conf = format!(
            "# written by plusmoin's sandbox\n\
             listen_addresses = '{HOST}'\n\
             port = {port}\n\
             unix_socket_directories = '{socket_dir}'\n\
             cluster_name = '{dir_name}-node{i}'\n\
             max_connections = 50\n\
             shared_buffers = 16MB\n\
             password_encryption = 'scram-sha-256'\n\
             wal_level = replica\n\
             max_wal_senders = 10\n\
             max_replication_slots = 10\n\
             wal_keep_size = 64MB\n\
             hot_standby = on\n\
             wal_log_hints = on\n\
             full_page_writes = on\n\
             fsync = off\n\
             recovery_target_timeline = 'latest'\n\
             wal_receiver_status_interval = 1s\n\
             wal_retrieve_retry_interval = 500ms\n\
             wal_sender_timeout = 5s\n\
             wal_receiver_timeout = 5s\n\
             logging_collector = off\n\
             log_line_prefix = '%m [%p] %q%u@%d '\n",
            port = node.port,
        );
        self.write_file(&node.data.join("postgresql.conf"), &conf)
    }

    /// Makes node `i` a standby of `upstream` on its next start:
    /// standby.signal and a postgresql.auto.conf holding only
    /// primary_conninfo.
    pub(super) fn write_standby_conf(&self, i: usize, upstream: usize) -> Result<(), SandboxError> {
        let data = self.node(i)?.data.clone();
        self.write_conf(i)?;
        let conninfo = self.primary_conninfo(i, upstream);
        self.write_file(
            &data.join("postgresql.auto.conf"),
            &format!(
                "# Do not edit this file manually!\n\
                 # It will be overwritten by the ALTER SYSTEM command.\n\
                 primary_conninfo = {}\n",
                sql_quote(&conninfo)
            ),
        )?;
        self.write_file(&data.join("standby.signal"), "")
    }

    /// Replication over TCP as the trusted superuser; the application name
    /// makes the standby recognisable in pg_stat_replication.
    pub(super) fn primary_conninfo(&self, i: usize, upstream: usize) -> String {
        format!(
            "host={HOST} port={} user={SUPERUSER} application_name=node{i}",
            self.nodes.get(upstream).map_or(0, |n| n.port)
        )
    }
}
