//! The command line: what to run and the few settings that may override the config file.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::LogLevel;

#[derive(Debug, Parser)]
#[command(name = "falcon-vmray-connector", version, about, long_about = None)]
pub struct Cli {
    /// Config file [env: CONNECTOR_CONFIG] [default: config/connector.toml]; not for `demo`
    // Not clap's `env`: `demo` refuses a `--config` typed on its command line, and must not
    // refuse one a container's environment sets for the other commands.
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Override general.log_level (and RUST_LOG)
    #[arg(long, global = true, value_name = "LEVEL", value_parser = parse_level)]
    pub log_level: Option<LogLevel>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run as general.runtime_mode says: a cycle every time_span seconds, or one cycle
    Run {
        #[command(flatten)]
        dry_run: DryRun,
    },
    /// Run one cycle and exit: 0 when it completed, 1 when it failed (for cron)
    Once {
        #[command(flatten)]
        dry_run: DryRun,
    },
    /// Validate the config, print the effective settings (secrets masked), then check both APIs
    Check {
        /// Only validate and print the settings; contact neither API
        #[arg(long)]
        offline: bool,
        /// Longest the live checks may take in all, in seconds (each probe also has its own
        /// deadline)
        #[arg(long, value_name = "SECS", default_value_t = crate::check::DEFAULT_BUDGET.as_secs(), value_parser = clap::value_parser!(u64).range(1..=600))]
        timeout: u64,
    },
    /// Ask the running daemon's /healthz (metrics.listen) whether cycles keep completing
    Health,
    /// Run one real cycle against the built-in simulated Falcon and VMRay, and show what changed
    Demo {
        #[command(flatten)]
        dry_run: DryRun,
        /// Distinct file hashes in the simulated tenant
        #[arg(long, default_value_t = 12)]
        hashes: usize,
        /// Latency the simulator adds to every request, in milliseconds
        #[arg(long, default_value_t = 0)]
        latency_ms: u64,
        /// Seed of the generated scenario (the same seed, the same tenant)
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Load the simulated tenant from a scenario file (JSON) instead of generating it
        #[arg(long, value_name = "PATH")]
        scenario: Option<PathBuf>,
    },
}

/// `--dry-run`, offered only by the commands that run a cycle: `check` and `health` change
/// nothing anyway, so accepting it there would only suggest otherwise.
#[derive(Debug, Clone, Copy, Default, clap::Args)]
pub struct DryRun {
    /// Plan every action and print it; download, submit and change nothing
    #[arg(long = "dry-run")]
    pub enabled: bool,
}

impl Cli {
    /// The checks between arguments clap cannot express: `demo` builds its own configuration,
    /// so a `--config` given to it would be silently ignored; it is refused instead (exit 2).
    pub fn validate(&self) -> Result<(), clap::Error> {
        if matches!(self.command, Command::Demo { .. }) && self.config.is_some() {
            return Err(clap::Error::raw(
                clap::error::ErrorKind::ArgumentConflict,
                "`demo` runs against its own simulated tenant and builds its own configuration, \
                 so it takes no --config: leave --config out, or use `check` or `once` to try a \
                 config file\n",
            )
            .with_cmd(&<Cli as clap::CommandFactory>::command()));
        }
        Ok(())
    }

    /// The config file named on the command line, else by `CONNECTOR_CONFIG`.
    pub fn config_path(&self) -> Option<PathBuf> {
        self.config.clone().or_else(|| {
            std::env::var_os("CONNECTOR_CONFIG")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        })
    }
}

fn parse_level(raw: &str) -> Result<LogLevel, String> {
    raw.parse()
}
