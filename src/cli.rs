//! The command line: what to run and the few settings that may override the config file.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::LogLevel;

#[derive(Debug, Parser)]
#[command(name = "falcon-vmray-connector", version, about, long_about = None)]
pub struct Cli {
    /// Config file [default: config/connector.toml when it exists]
    #[arg(long, global = true, env = "CONNECTOR_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Plan every action and print it; download, submit and change nothing
    #[arg(long, global = true)]
    pub dry_run: bool,

    /// Override general.log_level (and RUST_LOG)
    #[arg(long, global = true, value_name = "LEVEL", value_parser = parse_level)]
    pub log_level: Option<LogLevel>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run as general.runtime_mode says: a cycle every time_span seconds, or one cycle
    Run,
    /// Run one cycle and exit: 0 when it completed, 1 when it failed (for cron)
    Once,
    /// Validate the config, print the effective settings (secrets masked), then check both APIs
    Check {
        /// Only validate and print the settings; contact neither API
        #[arg(long)]
        offline: bool,
    },
    /// Ask the running daemon's /healthz (metrics.listen) whether cycles keep completing
    Health,
    /// Run one real cycle against the built-in simulated Falcon and VMRay, and show what changed
    Demo {
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

fn parse_level(raw: &str) -> Result<LogLevel, String> {
    raw.parse()
}
