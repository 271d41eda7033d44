//! The command line (README "Configuration"): `plusmoin [-c FILE] [-x] COMMAND`.

use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "plusmoin",
    version,
    about = "Watches PostgreSQL servers in streaming replication, groups them into clusters, \
             and runs triggers and pgpool-II handlers when something changes.",
    propagate_version = true
)]
pub struct Cli {
    /// Configuration file (JSON; // and /* */ comments allowed).
    #[arg(short = 'c', long = "config", global = true, value_name = "FILE", default_value = crate::config::DEFAULT_PATH)]
    pub config: PathBuf,

    /// Stay in the foreground and log to stdout (with `start`).
    #[arg(short = 'x', long = "foreground", global = true)]
    pub foreground: bool,

    #[command(subcommand)]
    pub command: CliCommand,
}

/// Where `stop`, `status` and `reload` find the daemon. By default the
/// configuration's `pid_file` and `status_file`: `stop` and `status` pick
/// them out of the file even when the rest of it is broken.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ControlFiles {
    /// The daemon's pid file, instead of the configuration's `pid_file`.
    #[arg(long, value_name = "FILE")]
    pub pid_file: Option<PathBuf>,
    /// The daemon's status file (`status`, `reload`), instead of the
    /// configuration's `status_file`.
    #[arg(long, value_name = "FILE")]
    pub status_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum CliCommand {
    /// Start the daemon: detach into the background (unless -x), write and
    /// lock the pid file, beat until stopped.
    Start,
    /// Stop the daemon named in the pid file (SIGTERM, then SIGKILL if it lingers).
    Stop {
        /// Seconds to wait after SIGTERM before SIGKILL (the daemon stops
        /// probing at once and gives running triggers at most 10 s, the
        /// pgpool side 2 s: the default covers both).
        #[arg(long, default_value_t = 30.0, value_name = "SECONDS")]
        timeout: f64,
        #[command(flatten)]
        files: ControlFiles,
    },
    /// Make the running daemon read its configuration again (SIGHUP) and
    /// wait for it to say how that went. The file is checked first: a
    /// broken one is reported (exit 2) and nothing is sent. Exit 1 when the
    /// daemon could not apply it (its reason is printed; the configuration
    /// before stays in force) or did not confirm in time.
    Reload {
        /// Seconds to wait for the daemon to confirm (0: send and do not wait).
        #[arg(long, default_value_t = 10.0, value_name = "SECONDS")]
        timeout: f64,
        #[command(flatten)]
        files: ControlFiles,
    },
    /// Print the status the daemon wrote (JSON), or fail if it is missing or
    /// older than three beats.
    Status {
        /// A table an operator reads at a glance instead of JSON.
        #[arg(long, short = 't')]
        table: bool,
        /// Redraw the table in place every SECONDS (1 by default), rows that
        /// changed marked, the newest events under it; Ctrl-C quits. Not on
        /// a terminal: one table per interval, no escape codes.
        #[arg(long, short = 'w', value_name = "SECONDS", num_args = 0..=1, default_missing_value = "1")]
        watch: Option<f64>,
        #[command(flatten)]
        files: ControlFiles,
    },
    /// The event history (README "Event history"), oldest first: trigger
    /// events, trigger runs, pgpool actions, holds, reloads, start and
    /// stop. Read from the journal beside the status file, so it works
    /// while the daemon is down.
    Events {
        /// Only records since then: a duration back from now (2h, 30min,
        /// 1day) or a time (2026-12-06T22:00:00Z; without a zone, UTC).
        #[arg(long, value_name = "WHEN")]
        since: Option<String>,
        /// Only records about this node.
        #[arg(long, value_name = "HOST:PORT")]
        node: Option<String>,
        /// Only records about this cluster.
        #[arg(long, value_name = "N")]
        cluster: Option<u32>,
        /// Only records of this kind (slave_down, trigger_run,
        /// pgpool_detach…); repeat it or separate kinds with commas.
        #[arg(long, value_name = "KIND")]
        kind: Vec<String>,
        /// JSON lines instead of a table.
        #[arg(long)]
        json: bool,
        /// Keep printing new records as they come (like tail -f), across
        /// the journal's rotations.
        #[arg(long, short = 'f')]
        follow: bool,
        #[command(flatten)]
        files: ControlFiles,
    },
    /// Validate the configuration and print a summary of it.
    CheckConfig,
    /// Hold a node out of pgpool for maintenance: plusmoin detaches it and
    /// never attaches it until `release`. The hold is a row of the table
    /// plusmoin_hold on the master, so every plusmoin instance sees it. The
    /// primary cannot be held.
    Hold {
        /// The node as configured: HOST:PORT (a bare HOST if unique).
        #[arg(value_name = "HOST:PORT")]
        node: String,
        /// Why, for whoever reads `plusmoin status`.
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
    },
    /// Release a held node (from the master's plusmoin_hold table and from
    /// this host's legacy held.json): plusmoin attaches it again once it is
    /// in sync.
    Release {
        #[arg(value_name = "HOST:PORT")]
        node: String,
    },
    /// Start a local sandbox cluster (a primary and two standbys) and a
    /// foreground plusmoin on it that prints every event, then play a short
    /// failover story. Needs PostgreSQL installed; Ctrl-C stops everything.
    Demo {
        /// Only start the sandbox and plusmoin; do not play the story.
        #[arg(long)]
        no_story: bool,
        /// --pgpool and --pgpool-bin.
        #[command(flatten)]
        pgpool: crate::demo::PgpoolDemo,
    },
}
