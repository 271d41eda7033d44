//! Logging set-up: level, format (text or JSON lines), stdout or a file.

use std::io::{self, IsTerminal};
use std::path::Path;
use std::sync::Mutex;

use super::safefile::{self, Access, Owners};
use super::LifecycleError;

/// How much plusmoin logs (its caller maps the configuration's `log_level`
/// onto it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    /// plusmoin's errors; other crates' errors.
    Error,
    /// plusmoin's info and above; other crates' warnings and errors.
    Info,
    /// plusmoin's debug and above (in text, each line with its target);
    /// other crates' warnings and errors.
    Debug,
}

/// How each log line is written (its caller maps the configuration's
/// `log_format` onto it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Plain lines for people.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// The level applies to plusmoin's own events; other crates (tokio-postgres
/// notices, …) log only warnings and errors, or only errors at `error`.
/// Timestamps are UTC, RFC 3339. Without a file, logs go to stdout (`-x`).
///
/// `json`: one object per line, the event's fields at the top level beside
/// `timestamp`, `level`, `target` and `message` (no spans: plusmoin logs
/// none that matter), so a shipper needs no parsing rules.
///
/// The file is opened as root, often in a directory `daemon_user` can write:
/// never through a link, and only a regular file one of `owners` owns.
pub fn init_logging(
    level: LogLevel,
    format: LogFormat,
    file: Option<&Path>,
    owners: &Owners,
) -> Result<(), LifecycleError> {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::fmt::writer::BoxMakeWriter;
    use tracing_subscriber::prelude::*;
    use tracing_subscriber::Layer;

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
    let layer = tracing_subscriber::fmt::layer().with_writer(writer);
    let layer: Box<dyn Layer<_> + Send + Sync> = match format {
        LogFormat::Text => layer
            .with_ansi(ansi)
            .with_target(level == LogLevel::Debug)
            .boxed(),
        LogFormat::Json => layer
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .boxed(),
    };
    tracing_subscriber::registry()
        .with(layer.with_filter(filter))
        .try_init()
        .map_err(|e| LifecycleError::Logging(e.to_string()))
}
