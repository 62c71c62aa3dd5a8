//! The binary's edge: parse the command line, load the settings, start logging, dispatch.
//! Exit codes: 0 done, 1 a cycle or check failed, 2 the configuration is invalid.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use falcon_vmray_connector::cli::{Cli, Command};
use falcon_vmray_connector::config::{self, ConfigError, Env, RuntimeMode};
use falcon_vmray_connector::pipeline::{Connector, LoopOutcome};
use falcon_vmray_connector::{check, demo, shutdown, telemetry};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            if error.downcast_ref::<ConfigError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if let Command::Demo {
        hashes,
        latency_ms,
        seed,
        scenario,
    } = cli.command
    {
        let options = demo::DemoOptions {
            hashes,
            latency: Duration::from_millis(latency_ms),
            seed,
            scenario,
        };
        let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
        print!("{}", runtime.block_on(demo::run(options, cli.log_level))?);
        return Ok(ExitCode::SUCCESS);
    }

    let mut config = config::load(cli.config.as_deref(), &Env::from_process())?;
    config.general.dry_run |= cli.dry_run;

    if let Command::Check { offline } = cli.command {
        print!("{}", check::render_settings(&config));
        if offline {
            return Ok(ExitCode::SUCCESS);
        }
        let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
        let (text, healthy) = runtime.block_on(check::live(&config));
        print!("{text}");
        return Ok(if healthy {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }

    let _log_guard = telemetry::init(&config.general, cli.log_level)?;
    let mode = match cli.command {
        Command::Once => RuntimeMode::Once,
        _ => config.general.runtime_mode,
    };
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let outcome = runtime.block_on(async {
        let connector = Connector::new(config)?;
        let shutdown = shutdown::on_signals();
        anyhow::Ok(connector.run(mode, shutdown).await)
    })?;
    Ok(match outcome {
        LoopOutcome::Completed => ExitCode::SUCCESS,
        LoopOutcome::Failed => ExitCode::FAILURE,
    })
}
