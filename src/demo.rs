//! `demo`: one real cycle against the built-in simulator, then what it changed in the tenant.
//!
//! Nothing is faked on the connector's side: the config goes through the real loader, the real
//! clients talk HTTP to the simulated Falcon and VMRay on 127.0.0.1, and the real state store
//! lives in a temporary folder. It needs no credentials and no network.

use std::path::PathBuf;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::{self, Env, LogLevel};
use crate::pipeline::{Connector, CycleError, StartError};
use crate::sim::{GenerateOptions, Scenario, Simulator};
use crate::telemetry::{self, TelemetryError};

/// The demo's knobs, from the command line.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Plan and show, change nothing in the simulated tenant.
    pub dry_run: bool,
    pub hashes: usize,
    pub latency: Duration,
    pub seed: u64,
    /// A scenario file instead of a generated tenant.
    pub scenario: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("cannot prepare the demo's temporary folder: {0}")]
    Io(#[from] std::io::Error),
    #[error("cannot use the scenario file {path}: {message}")]
    Scenario { path: PathBuf, message: String },
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Telemetry(#[from] TelemetryError),
    #[error(transparent)]
    Start(#[from] StartError),
    #[error("the demo cycle failed: {0}")]
    Cycle(#[from] CycleError),
}

/// Runs the demo and returns what to print.
pub async fn run(options: DemoOptions, log_level: Option<LogLevel>) -> Result<String, DemoError> {
    let scenario = match &options.scenario {
        Some(path) => {
            let fail = |message: String| DemoError::Scenario {
                path: path.clone(),
                message,
            };
            let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
            Scenario::from_json(&text).map_err(|e| fail(e.to_string()))?
        }
        None => Scenario::generate(&GenerateOptions {
            hashes: options.hashes,
            seed: options.seed,
            latency: options.latency,
            ..GenerateOptions::default()
        }),
    };
    let sim = Simulator::start(scenario).await?;
    let folder = tempfile::tempdir()?;
    let root = folder.path();
    let credentials = sim.credentials();
    let config_path = root.join("connector.toml");
    // Every action switched on, so the demo shows all the connector can do.
    let text = format!(
        r#"
[general]
log_file = "{root}/log/demo.log"
log_level = "warn"
state_file = "{root}/state/connector.db"
runtime_mode = "once"
dry_run = {dry_run}

[crowdstrike]
client_id = "{client_id}"
client_secret = "{client_secret}"
base_url = "{falcon}"
download_dir = "{root}/downloads"
contain_host = true
find_another_host = true
create_case = true

[vmray]
api_key = "{api_key}"
url = "{vmray}"
poll_interval = 1
analysis_job_timeout = 120
"#,
        root = root.display(),
        dry_run = options.dry_run,
        client_id = credentials.client_id,
        client_secret = credentials.client_secret,
        api_key = credentials.api_key,
        falcon = sim.falcon_url(),
        vmray = sim.vmray_url(),
    );
    std::fs::write(&config_path, text)?;
    let config = config::load(Some(&config_path), &Env::default())?;
    let _log_guard = telemetry::init(&config.general, log_level)?;

    let connector = Connector::new(config)?;
    let report = connector.run_cycle(&CancellationToken::new()).await?;
    let tenant = sim.snapshot();
    sim.shutdown().await;

    let mut out = String::new();
    let source = match &options.scenario {
        Some(path) => format!("scenario {}", path.display()),
        None => format!("{} hashes, seed {}", options.hashes, options.seed),
    };
    out.push_str(&format!(
        "falcon-vmray-connector demo: {source}, simulated Falcon and VMRay on 127.0.0.1\n\n"
    ));
    out.push_str("== Cycle report\n");
    out.push_str(&report.summary());
    out.push('\n');
    for failure in &report.failed {
        out.push_str(&format!(
            "  not completed: {} at {:?}: {}\n",
            failure.sha256, failure.step, failure.reason
        ));
    }
    for note in &report.notes {
        out.push_str(&format!("  note: {note}\n"));
    }
    if report.dry_run {
        out.push_str("\n== Planned actions (dry run: nothing was performed)\n");
        out.push_str(&report.planned_table());
    }
    out.push_str("\n== What changed in the simulated tenant\n");
    out.push_str(&tenant.render());
    Ok(out)
}
