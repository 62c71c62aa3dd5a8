//! The main loop and the cycle: collect, look up, download, submit, wait, plan, act, report.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::{Config, RuntimeMode};

/// What one cycle did, for the summary line and the exit code of `once`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CycleReport {
    pub hashes: usize,
}

/// Why a cycle as a whole failed. A failure of one sample is in the report, not here.
#[derive(Debug, thiserror::Error)]
pub enum CycleError {
    #[error("the cycle was interrupted by shutdown")]
    Cancelled,
}

/// How the loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoopOutcome {
    /// The last cycle completed (always the case for a daemon stopped by a signal).
    Completed,
    /// `once`: the cycle failed.
    Failed,
}

/// Runs cycles as `mode` says until shutdown. A failed cycle is logged and the next one still
/// waits `time_span`: a broken API must not turn the daemon into a tight loop.
pub async fn run(config: &Config, mode: RuntimeMode, shutdown: CancellationToken) -> LoopOutcome {
    let time_span = Duration::from_secs(config.general.time_span);
    loop {
        let outcome = match run_cycle(config, &shutdown).await {
            Ok(report) => {
                tracing::info!(hashes = report.hashes, "cycle completed");
                LoopOutcome::Completed
            }
            Err(error) => {
                tracing::error!("cycle failed: {error}");
                LoopOutcome::Failed
            }
        };
        if mode == RuntimeMode::Once {
            return outcome;
        }
        tracing::info!("next cycle in {} s", time_span.as_secs());
        tokio::select! {
            _ = tokio::time::sleep(time_span) => {}
            _ = shutdown.cancelled() => {
                tracing::info!("shut down between cycles");
                return LoopOutcome::Completed;
            }
        }
    }
}

/// One cycle. Until the pipeline issue lands this is an explicit no-op: it pretends nothing.
pub async fn run_cycle(
    _config: &Config,
    shutdown: &CancellationToken,
) -> Result<CycleReport, CycleError> {
    if shutdown.is_cancelled() {
        return Err(CycleError::Cancelled);
    }
    tracing::warn!("the pipeline is not built yet: this cycle collects and changes nothing");
    Ok(CycleReport::default())
}
