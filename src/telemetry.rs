//! Logging: `tracing` to stdout and to a daily-rolling file, as text or JSON.
//!
//! The level comes from `--log-level`, else `RUST_LOG`, else `general.log_level`. Secrets never
//! reach this layer: they are `SecretString`s and the HTTP clients mark their auth headers
//! sensitive.

use std::path::Path;

use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_appender::rolling::{Builder, Rotation};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::writer::MakeWriterExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{General, LogFormat, LogLevel};

/// Rotated files kept before the oldest is deleted: a month of daily logs.
const KEPT_LOG_FILES: usize = 31;
/// Log lines queued for the file writer before a logging task waits for it.
const LOG_QUEUE_LINES: usize = 4096;

#[derive(Debug, thiserror::Error)]
#[error("cannot write the log file {path}: {message}; set general.log_file to a writable path")]
pub struct TelemetryError {
    path: String,
    message: String,
}

/// Installs the global subscriber. Keep the returned guard alive until the process exits, or
/// the last lines never reach the file.
pub fn init(general: &General, cli_level: Option<LogLevel>) -> Result<WorkerGuard, TelemetryError> {
    let filter = match (cli_level, std::env::var("RUST_LOG")) {
        (Some(level), _) => EnvFilter::new(level.as_str()),
        (None, Ok(spec)) if !spec.trim().is_empty() => EnvFilter::new(spec),
        _ => EnvFilter::new(general.log_level.as_str()),
    };

    let path = &general.log_file;
    let error = |message: String| TelemetryError {
        path: path.display().to_string(),
        message,
    };
    let directory = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .ok_or_else(|| error("it names no file".into()))?;
    std::fs::create_dir_all(directory).map_err(|e| error(e.to_string()))?;
    let appender = Builder::new()
        .rotation(Rotation::DAILY)
        .filename_prefix(file_name.to_string_lossy())
        .max_log_files(KEPT_LOG_FILES)
        .build(directory)
        .map_err(|e| error(e.to_string()))?;
    // Lossless: an audit trail of what was done to a tenant must not drop lines under load.
    // The queue is allocated and touched in full at start (32 bytes a line): the default of
    // 128,000 lines kept 4 MB resident for the daemon's whole life. A cycle logs a few lines per
    // hash and the writer drains them to the file in microseconds, so a full queue only makes a
    // logging task wait that long.
    let (file_writer, guard) = NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(LOG_QUEUE_LINES)
        .finish(appender);

    let registry = tracing_subscriber::registry().with(filter);
    let result = match general.log_format {
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(false)
                    .with_writer(std::io::stdout.and(file_writer)),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_writer(std::io::stdout.and(file_writer)),
            )
            .try_init(),
    };
    result.map_err(|e| error(e.to_string()))?;
    Ok(guard)
}
