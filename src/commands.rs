//! What each subcommand does, between the command line and the pipeline. The binary only parses
//! the arguments, calls one of these and turns the result into an exit code.

use std::time::Duration;

use crate::cli::{Cli, Command};
use crate::config::{self, Config, ConfigError, Env, RuntimeMode};
use crate::demo::{self, DemoError, DemoOptions};
use crate::health::{self, SystemdNotify};
use crate::instance::{self, LockError};
use crate::metrics::{self, MetricsError};
use crate::pipeline::{Connector, LoopOutcome, StartError};
use crate::telemetry::{self, TelemetryError};
use crate::{check, downloads, shutdown};

/// Why a command could not do its job. `Config` is the one that means "fix your settings".
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Telemetry(#[from] TelemetryError),
    #[error(transparent)]
    Start(#[from] StartError),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error(transparent)]
    Demo(#[from] DemoError),
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("{0}")]
    Health(String),
    /// Another connector runs on the same state file or download folder.
    #[error(transparent)]
    Locked(#[from] LockError),
}

/// Whether the command did what it was asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// A cycle failed, a check found a problem, the daemon is unhealthy.
    Failure,
}

/// How long the end of a command waits for the runtime's threads. A thread blocked in the
/// system resolver (a DNS server that never answers) cannot be cancelled and may stay blocked
/// for the resolver's whole timeout times its attempts (20 s and more); waiting for it would
/// break both the 10 s between SIGTERM and SIGKILL and `check`'s budget. Whatever it was
/// resolving has already been given up, so the process exits without it.
pub const RUNTIME_GRACE: Duration = Duration::from_millis(500);

pub fn execute(cli: Cli) -> Result<Outcome, CommandError> {
    let runtime = tokio::runtime::Runtime::new().map_err(CommandError::Runtime)?;
    let result = execute_on(&runtime, cli);
    end_runtime(runtime);
    result
}

/// Ends the runtime without waiting past [`RUNTIME_GRACE`] for its blocking threads: dropping
/// it would wait for each of them, however long they stay blocked.
pub fn end_runtime(runtime: tokio::runtime::Runtime) {
    runtime.shutdown_timeout(RUNTIME_GRACE);
}

fn execute_on(runtime: &tokio::runtime::Runtime, cli: Cli) -> Result<Outcome, CommandError> {
    if let Command::Demo {
        dry_run,
        hashes,
        latency_ms,
        seed,
        scenario,
    } = cli.command
    {
        let options = DemoOptions {
            dry_run: dry_run.enabled,
            hashes,
            latency: Duration::from_millis(latency_ms),
            seed,
            scenario,
        };
        print!("{}", runtime.block_on(demo::run(options, cli.log_level))?);
        return Ok(Outcome::Success);
    }

    let mut config = config::load(cli.config_path().as_deref(), &Env::from_process())?;
    if let Command::Run { dry_run } | Command::Once { dry_run } = &cli.command {
        config.general.dry_run |= dry_run.enabled;
    }
    match cli.command {
        Command::Check { offline, timeout } => {
            // What can be proven without the network: the folders it writes are writable, and
            // the download folder is one the connector may clear.
            let mut problems = config::check_folders(&config);
            problems.extend(downloads::check_config(&config));
            ConfigError::from_all(problems)?;
            print!("{}", check::render_settings(&config));
            for warning in config::warnings(&config) {
                println!("warning: {warning}");
            }
            if offline {
                return Ok(Outcome::Success);
            }
            let mut stdout = std::io::stdout();
            let budget = Duration::from_secs(timeout);
            let healthy = runtime.block_on(check::live(&config, budget, &mut stdout));
            Ok(if healthy {
                Outcome::Success
            } else {
                Outcome::Failure
            })
        }
        Command::Health => runtime.block_on(probe_health(&config)),
        Command::Once { .. } => run(runtime, config, RuntimeMode::Once, cli.log_level),
        Command::Run { .. } => {
            let mode = config.general.runtime_mode;
            run(runtime, config, mode, cli.log_level)
        }
        Command::Demo { .. } => unreachable!("handled above"),
    }
}

fn run(
    runtime: &tokio::runtime::Runtime,
    config: Config,
    mode: RuntimeMode,
    log_level: Option<config::LogLevel>,
) -> Result<Outcome, CommandError> {
    // Before anything is created or deleted: a download folder that is not the connector's
    // own would have its files deleted at the first cycle. A folder this user cannot write (a
    // host folder mounted into the container, owned by someone else) is a configuration error
    // too (exit 2, which systemd does not restart), named with its key, not a failure later.
    let mut problems = config::check_folders(&config);
    problems.extend(downloads::check_config(&config));
    ConfigError::from_all(problems)?;
    let _log_guard = telemetry::init(&config.general, log_level)?;
    // Held until the process ends: a second process on this state file would submit every
    // unknown sample again and repeat write-backs. A daemon never waits (a second daemon is a
    // mistake); a one-off run waits for an overrunning one, up to lock_wait.
    let wait = match mode {
        RuntimeMode::Once => Duration::from_secs(config.general.lock_wait),
        RuntimeMode::Daemon => Duration::ZERO,
    };
    let _instance = instance::acquire(&config.general.state_file, wait, |holder| {
        tracing::warn!(
            "another connector (PID {holder}) is running on {}: waiting up to {} s for it to finish",
            config.general.state_file.display(),
            wait.as_secs()
        )
    })?;
    // Held until the process ends too: every start, cycle and exit deletes the samples in the
    // download folder, another connector's as well as this one's.
    let downloads = &config.crowdstrike.download_dir;
    let _download_dir = instance::acquire_download_dir(downloads, wait, |holder| {
        tracing::warn!(
            "another connector (PID {holder}) uses the download folder {}: waiting up to {} s for it to finish",
            downloads.display(),
            wait.as_secs()
        )
    })?;
    for warning in config::warnings(&config) {
        tracing::warn!("{warning}");
    }
    // However the run ends (done, failed, a panic unwinding), no sample stays on disk: each
    // has its own guard already, this catches what a guard could not.
    let _samples = downloads::CleanupOnExit::new(config.crowdstrike.download_dir.clone());
    let outcome = runtime.block_on(async {
        let listen = config.metrics.listen;
        let shutdown = shutdown::on_signals_cleaning(config.crowdstrike.download_dir.clone());
        let connector = Connector::stoppable(config, shutdown.clone())?;
        // A one-off cycle has nobody to scrape it.
        if mode == RuntimeMode::Daemon
            && let Some(listen) = listen
        {
            let handle = metrics::install()?;
            metrics::serve(listen, handle, connector.health(), shutdown.clone()).await?;
        }
        // A `Type=notify` unit waits for READY=1 whichever the mode (`run` with
        // runtime_mode = "once" under the shipped unit would otherwise time out at start), and
        // its watchdog must be fed during a long one-off cycle too.
        let systemd = SystemdNotify::from_env();
        if let Some(systemd) = &systemd {
            systemd.ready();
            tokio::spawn(health::systemd_watchdog(
                systemd.clone(),
                connector.health(),
                shutdown.clone(),
            ));
        }
        let outcome = connector.run(mode, shutdown).await;
        if let Some(systemd) = &systemd {
            systemd.stopping();
        }
        Ok::<_, CommandError>(outcome)
    })?;
    Ok(match outcome {
        LoopOutcome::Completed => Outcome::Success,
        LoopOutcome::Failed => Outcome::Failure,
    })
}

/// `health`: the daemon's own verdict, from `/healthz`.
async fn probe_health(config: &Config) -> Result<Outcome, CommandError> {
    let Some(listen) = config.metrics.listen else {
        return Err(CommandError::Health(
            "metrics.listen is not set, so the daemon serves no /healthz: set it (e.g. \"127.0.0.1:9464\")"
                .into(),
        ));
    };
    let host = if listen.ip().is_unspecified() {
        "127.0.0.1".to_string()
    } else {
        listen.ip().to_string()
    };
    let url = format!("http://{host}:{}/healthz", listen.port());
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .no_proxy()
        .build()
        .map_err(|e| CommandError::Health(e.to_string()))?;
    match client.get(&url).send().await {
        Ok(response) => {
            let healthy = response.status().is_success();
            print!("{}", response.text().await.unwrap_or_default());
            Ok(if healthy {
                Outcome::Success
            } else {
                Outcome::Failure
            })
        }
        Err(e) => Err(CommandError::Health(format!(
            "cannot reach {url}: {e}; is the daemon running with this config?"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_blocked_like_a_hung_resolver_does_not_delay_the_end_of_the_runtime() {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        // Stands in for getaddrinfo against a DNS server that never answers: a blocking
        // thread nothing can cancel.
        runtime.spawn_blocking(|| std::thread::sleep(Duration::from_secs(30)));
        let started = std::time::Instant::now();
        end_runtime(runtime);
        let took = started.elapsed();
        assert!(
            took < RUNTIME_GRACE + Duration::from_millis(700),
            "ending the runtime took {took:?}"
        );
    }
}
