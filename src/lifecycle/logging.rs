//! Logging set-up: level, format, stdout or a file.

use std::io::{self, IsTerminal};
use std::path::Path;
use std::sync::Mutex;

use super::safefile::{self, Access, Owners};
use super::LifecycleError;
use crate::config::LogLevel;

/// The level applies to plusmoin's own events; other crates (tokio-postgres
/// notices, …) log only warnings and errors, or only errors at `error`.
/// Timestamps are UTC, RFC 3339. Without a file, logs go to stdout (`-x`).
/// The file is opened as root, often in a directory `daemon_user` can write:
/// never through a link, and only a regular file one of `owners` owns.
pub fn init_logging(
    level: LogLevel,
    file: Option<&Path>,
    owners: &Owners,
) -> Result<(), LifecycleError> {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::fmt::writer::BoxMakeWriter;
    use tracing_subscriber::prelude::*;

    let (ours, others) = match level {
        LogLevel::Error => (LevelFilter::ERROR, LevelFilter::ERROR),
        LogLevel::Info => (LevelFilter::INFO, LevelFilter::WARN),
        LogLevel::Debug => (LevelFilter::DEBUG, LevelFilter::WARN),
    };
    let filter = Targets::new()
        .with_default(others)
        .with_target(env!("CARGO_CRATE_NAME"), ours);
    let (writer, ansi) = match file {
        None => (BoxMakeWriter::new(io::stdout), io::stdout().is_terminal()),
        Some(path) => {
            let log = safefile::open_or_create(path, Access::Append, 0o640, owners).map_err(
                |source| LifecycleError::LogFile {
                    path: path.to_path_buf(),
                    source,
                },
            )?;
            (BoxMakeWriter::new(Mutex::new(log)), false)
        }
    };
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(ansi)
        .with_target(level == LogLevel::Debug);
    tracing_subscriber::registry()
        .with(layer.with_filter(filter))
        .try_init()
        .map_err(|e| LifecycleError::Logging(e.to_string()))
}
