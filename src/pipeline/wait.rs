//! Step 3, wait: poll one submission until VMRay finishes it, fails it, or its time runs out.
//! The daemon's waiting clock gives it a deadline of now: one poll.
//!
//! Each submission waits in its own task, so a sample that finishes early is acted on without
//! waiting for the slowest one. The deadline is wall-clock time from submission, so it survives
//! a restart; the first poll is immediate, the next ones follow [`pause`], and the wait never
//! outlives the deadline or shutdown.
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

/// The shortest pause between two polls of one submission.
const FIRST_POLL: Duration = Duration::from_secs(1);

/// The pause before the next poll of a submission whose analysis has run for `running`: a
/// quarter of that, at least [`FIRST_POLL`], at most `poll_interval`. A long analysis costs a
/// handful of extra polls in its first minute, then one per `poll_interval`; a short one is
/// acted on no later than a quarter of its own duration (or a second) after VMRay has it.
pub fn pause(running: Duration, poll_interval: Duration) -> Duration {
    (running / 4).clamp(FIRST_POLL, poll_interval.max(FIRST_POLL))
}

pub async fn until_done(
    vmray: &VmrayClient,
    submission_id: u64,
    submitted_at: OffsetDateTime,
    deadline: OffsetDateTime,
    poll_interval: Duration,
    shutdown: &CancellationToken,
) -> WaitResult {
    let (mut answered, mut last_error) = (false, None);
    loop {
        let failed = match vmray.submission_state(submission_id).await {
            Ok(SubmissionState::Finished) => return WaitResult::Finished,
            Ok(SubmissionState::Failed { reason }) => return WaitResult::Failed(reason),
            Ok(SubmissionState::Running) => {
                answered = true;
                false
            }
            // The client already retried; a passing fault must not give up on the analysis.
            Err(error) => {
                last_error = Some(error.to_string());
                true
            }
        };
        let now = OffsetDateTime::now_utc();
        let left = deadline - now;
        if left <= time::Duration::ZERO {
            // The caller reports how it ended: the waiting clock's one poll of a thousand
            // submissions during an outage is one line in its report, not a thousand.
            return match (answered, last_error) {
                (false, Some(error)) => WaitResult::Unanswered(error),
                _ => WaitResult::TimedOut,
            };
        }
        if let (true, Some(error)) = (failed, &last_error) {
            tracing::warn!(submission_id, "cannot poll the submission: {error}");
        }
        let running = (now - submitted_at)
            .max(time::Duration::ZERO)
            .unsigned_abs();
        let pause = pause(running, poll_interval).min(left.unsigned_abs());
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = shutdown.cancelled() => return WaitResult::Cancelled,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polls_start_a_second_apart_and_slow_down_to_poll_interval() {
        let every = |secs| pause(Duration::from_secs(secs), Duration::from_secs(10));
        assert_eq!(every(0), Duration::from_secs(1));
        assert_eq!(every(2), Duration::from_secs(1));
        assert_eq!(every(20), Duration::from_secs(5));
        assert_eq!(every(40), Duration::from_secs(10));
        assert_eq!(every(3600), Duration::from_secs(10));
    }

    /// `clamp` panics on a minimum above its maximum.
    #[test]
    fn a_poll_interval_under_a_second_still_polls_every_second() {
        let every = pause(Duration::from_secs(60), Duration::from_millis(200));
        assert_eq!(every, Duration::from_secs(1));
    }
}
