//! Step 3, wait: poll one submission until VMRay finishes it, fails it, or its time runs out.
//! The daemon's waiting clock gives it a deadline of now: one poll.
//!
//! Each submission waits in its own task, so a sample that finishes early is acted on without
//! waiting for the slowest one. The deadline is wall-clock time from submission, so it survives
//! a restart; the first poll is immediate and the wait never outlives the deadline or shutdown.
//! A wait in which no poll was answered at all (VMRay down, the key refused) says nothing about
//! the analysis: it is reported as such, so the cycle counts as an outage and the submission
//! stays in flight without moving towards being given up.

use std::time::Duration;

use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::vmray::{SubmissionState, VmrayClient};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaitResult {
    Finished,
    Failed(String),
    TimedOut,
    /// The deadline passed without one poll answered: VMRay is down or refuses the key. Says
    /// nothing about the analysis; the last error, for the report.
    Unanswered(String),
    Cancelled,
}

pub async fn until_done(
    vmray: &VmrayClient,
    submission_id: u64,
    deadline: OffsetDateTime,
    poll_interval: Duration,
    shutdown: &CancellationToken,
) -> WaitResult {
    let (mut answered, mut last_error) = (false, None);
    loop {
        match vmray.submission_state(submission_id).await {
            Ok(SubmissionState::Finished) => return WaitResult::Finished,
            Ok(SubmissionState::Failed { reason }) => return WaitResult::Failed(reason),
            Ok(SubmissionState::Running) => answered = true,
            // The client already retried; a passing fault must not give up on the analysis.
            Err(error) => {
                tracing::warn!(submission_id, "cannot poll the submission: {error}");
                last_error = Some(error.to_string());
            }
        }
        let left = deadline - OffsetDateTime::now_utc();
        if left <= time::Duration::ZERO {
            return match (answered, last_error) {
                (false, Some(error)) => WaitResult::Unanswered(error),
                _ => WaitResult::TimedOut,
            };
        }
        let pause = poll_interval.min(left.unsigned_abs());
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = shutdown.cancelled() => return WaitResult::Cancelled,
        }
    }
}
