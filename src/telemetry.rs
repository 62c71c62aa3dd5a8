//! Logging: `tracing` to stdout and to a daily-rolling file (0600, in a folder created 0700),
//! as text or JSON.
//!
//! The level comes from `--log-level`, else `RUST_LOG`, else `general.log_level`. Secrets never
//! reach this layer: they are `SecretString`s and the HTTP clients mark their auth headers
//! sensitive.

use std::io::Write;
use std::path::{Path, PathBuf};

use time::{Date, OffsetDateTime};

use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_appender::rolling::{Builder, RollingFileAppender, Rotation};
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
    crate::private::create_dir(directory).map_err(|e| error(e.to_string()))?;
    let mut private = PrivateDaily {
        directory: directory.to_path_buf(),
        prefix: file_name.to_string_lossy().into_owned(),
        day: None,
    };
    private.tighten_existing();
    // Today's file is opened by the builder: it must exist, 0600, before.
    private.prepare(OffsetDateTime::now_utc().date());
    let appender = Builder::new()
        .rotation(Rotation::DAILY)
        .filename_prefix(&private.prefix)
        .max_log_files(KEPT_LOG_FILES)
        .build(directory)
        .map_err(|e| error(e.to_string()))?;
    let appender = PrivateLog {
        inner: appender,
        files: private,
    };
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

/// The daily log files, private (0600): they name hosts, files and verdicts. The appender
/// creates each day's file with the umask's mode, so each is created 0600 just before the
/// appender first writes to it (the appender names files `<prefix>.<YYYY-MM-DD>`, in UTC), and
/// tightened once more right after, should the day have turned in between.
struct PrivateDaily {
    directory: PathBuf,
    prefix: String,
    day: Option<Date>,
}

impl PrivateDaily {
    fn file_of(&self, day: Date) -> PathBuf {
        self.directory.join(format!(
            "{}.{:04}-{:02}-{:02}",
            self.prefix,
            day.year(),
            u8::from(day.month()),
            day.day()
        ))
    }

    fn prepare(&mut self, day: Date) {
        let path = self.file_of(day);
        // A log the connector cannot make private is still better than none.
        let _ = crate::private::open_file(&path);
        let _ = crate::private::tighten(&path);
        self.day = Some(day);
    }

    /// Files of earlier days an older version left readable by all.
    fn tighten_existing(&self) {
        let Ok(entries) = std::fs::read_dir(&self.directory) else {
            return;
        };
        for entry in entries.flatten() {
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with(&self.prefix)
            {
                let _ = crate::private::tighten(&entry.path());
            }
        }
    }
}

/// The rolling appender behind [`PrivateDaily`]'s guard.
struct PrivateLog {
    inner: RollingFileAppender,
    files: PrivateDaily,
}

impl Write for PrivateLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let today = OffsetDateTime::now_utc().date();
        let new_day = self.files.day != Some(today);
        if new_day {
            self.files.prepare(today);
        }
        let written = self.inner.write(buf)?;
        if new_day {
            let _ = crate::private::tighten(&self.files.file_of(today));
        }
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn each_days_log_file_is_created_private_with_the_appenders_name() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = PrivateDaily {
            directory: dir.path().to_path_buf(),
            prefix: "connector.log".into(),
            day: None,
        };
        let appender = Builder::new()
            .rotation(Rotation::DAILY)
            .filename_prefix("connector.log")
            .build(dir.path())
            .unwrap();
        files.prepare(OffsetDateTime::now_utc().date());
        let mut log = PrivateLog {
            inner: appender,
            files,
        };
        log.write_all(b"a line\n").unwrap();
        // The day turns: the next write goes to a new file, private too.
        log.files.day = Some(Date::MIN);
        log.write_all(b"another\n").unwrap();
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
        assert_eq!(
            names.len(),
            1,
            "the appender and the guard disagree on the name"
        );
        let file = names[0].path();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "a line\nanother\n");
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
