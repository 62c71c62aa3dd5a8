//! The daemon's waiting clock: polls every submission in flight and acts on each as soon as
//! its analysis is done, whatever the collection clock is doing.
//!
//! It works from the state store, not from memory: what a collection submitted, what an
//! earlier process left in flight before a restart, and an upload a crash cut short are all
//! rows in flight, and each is polled on its own schedule. A submission is polled soon after
//! its upload and then less often as its analysis runs longer, never less often than every
//! `poll_interval`: a two-second analysis is acted on a second after it ends, and a thousand
//! long analyses cost one status request each per `poll_interval`. A round polls what is
//! due, each hash in its own task (the same life as in a collection, with one poll), then
//! creates the round's IOCs together.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use time::OffsetDateTime;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::blame::Blame;
use super::report::CycleReport;
use super::sample::{self, CycleContext, Outcome, Wait};
use super::{Connector, tally};
use crate::metrics;
use crate::model::Sha256;

/// How often the waiting clock repeats that it cannot poll (an outage of VMRay).
const OUTAGE_REPEAT: Duration = Duration::from_secs(60);

/// When the waiting clock polls, and how a collection wakes it for a new submission.
#[derive(Debug)]
pub(super) struct Waiting {
    poll_interval: Duration,
    wake: Notify,
}

impl Waiting {
    pub(super) fn new(poll_interval: Duration) -> Self {
        Waiting {
            poll_interval,
            wake: Notify::new(),
        }
    }

    /// A submission is in flight that the waiting clock has not seen yet.
    pub(super) fn wake(&self) {
        self.wake.notify_one();
    }

    /// The pause before the next poll of a submission whose analysis has run for `running`
    /// ([`super::wait::pause`]: the same schedule as a `once` run's).
    pub(super) fn pause(&self, running: Duration) -> Duration {
        super::wait::pause(running, self.poll_interval)
    }
}

/// How long an analysis submitted at `since` has run at `now` (nothing for a submission time
/// ahead of the clock, or unknown).
fn running(since: Option<OffsetDateTime>, now: OffsetDateTime) -> Duration {
    since.map_or(Duration::ZERO, |at| {
        (now - at).max(time::Duration::ZERO).unsigned_abs()
    })
}

impl Connector {
    /// Runs until shutdown: wakes when a submission is due for a poll (or a collection has
    /// just submitted one), polls what is due in one round, sleeps again.
    pub(super) async fn waiting_clock(&self, shutdown: &CancellationToken) {
        let waiting = self.waiting.clone();
        // Not before the first collection's clearing and resumption (see `started_up`).
        let mut started_up = self.started_up.subscribe();
        tokio::select! {
            _ = started_up.wait_for(|done| *done) => {}
            _ = shutdown.cancelled() => return,
        }
        // Per hash in flight: when it is due for its next poll. Rows it has not seen yet are
        // due one pause after their submission (at once, after a restart).
        let mut next: HashMap<Sha256, Instant> = HashMap::new();
        let mut outage_said: Option<Instant> = None;
        loop {
            let rows = match self.store.in_flight_since() {
                Ok(rows) => rows,
                Err(e) => {
                    tracing::error!("cannot read the submissions in flight: {e}");
                    Vec::new()
                }
            };
            metrics::in_flight(&rows);
            let now = Instant::now();
            let wall = OffsetDateTime::now_utc();
            let mut seen = HashMap::with_capacity(rows.len());
            let mut due = Vec::new();
            for (sha256, since) in rows {
                let at = next.remove(&sha256).unwrap_or_else(|| {
                    let ran = running(since, wall);
                    now + waiting.pause(ran).saturating_sub(ran)
                });
                if at <= now {
                    due.push((sha256.clone(), since));
                }
                seen.insert(sha256, at);
            }
            // What left flight (acted on, failed, given up) is forgotten.
            next = seen;
            if !due.is_empty() {
                let hashes = due.iter().map(|(sha, _)| sha.clone()).collect();
                let report = self.poll_round(hashes, shutdown).await;
                if shutdown.is_cancelled() {
                    tracing::info!(
                        "waiting clock stopped; submissions in flight are polled after the next start"
                    );
                    return;
                }
                // An outage fails every round alike: said once a minute, not every second.
                let outage_only = report.finished + report.no_verdict == 0
                    && report.actions.is_empty()
                    && report.failed.iter().all(|f| f.blame == Blame::Service);
                if !outage_only || outage_said.is_none_or(|at| at.elapsed() >= OUTAGE_REPEAT) {
                    report.log_waiting();
                    if outage_only && !report.failed.is_empty() {
                        outage_said = Some(Instant::now());
                    }
                }
                let now = Instant::now();
                let wall = OffsetDateTime::now_utc();
                for (sha256, since) in due {
                    next.insert(sha256, now + waiting.pause(running(since, wall)));
                }
            }
            let wake_at = next
                .values()
                .min()
                .copied()
                .unwrap_or_else(|| Instant::now() + waiting.poll_interval)
                .max(Instant::now());
            tokio::select! {
                _ = tokio::time::sleep_until(wake_at.into()) => {}
                _ = waiting.wake.notified() => {}
                _ = shutdown.cancelled() => {
                    tracing::info!("waiting clock stopped; submissions in flight are polled after the next start");
                    return;
                }
            }
        }
    }

    /// One poll of each submission in `due` (each in its own task, like a collection's), then
    /// the round's IOCs. A hash the collection is working on is skipped: that collection
    /// polls it itself, and it is due again next time.
    async fn poll_round(&self, due: Vec<Sha256>, shutdown: &CancellationToken) -> CycleReport {
        // Never beside a resumption of the journal (see `Connector::acting`).
        let _acting = self.acting.lock().await;
        let started = OffsetDateTime::now_utc();
        let ctx = Arc::new(CycleContext::new(
            self,
            shutdown,
            self.daemon_contain_budget(),
            Wait::OnePoll,
            started,
            Instant::now(),
        ));
        let mut report = CycleReport::default();
        let mut tasks = tokio::task::JoinSet::new();
        let mut record = |joined: Result<Option<Outcome>, tokio::task::JoinError>| match joined {
            Ok(Some(outcome)) => {
                report.hashes += 1;
                tally(&mut report, outcome);
            }
            Ok(None) => {}
            // Its row is as it was: the next round polls it again.
            Err(e) => tracing::error!("a submission's task crashed: {e}"),
        };
        for sha256 in due {
            // A task reads its row and evidence: a thousand due at once would hold a thousand
            // rows in memory while the light permits let 64 of them poll.
            while tasks.len() >= sample::LIGHT_AT_ONCE {
                if let Some(joined) = tasks.join_next().await {
                    record(joined);
                }
            }
            let ctx = ctx.clone();
            tasks.spawn(async move {
                let _claim = ctx.connector.claims.try_claim(&sha256)?;
                match ctx.connector.resumable(&sha256, None, true) {
                    Ok(Some((evidence, record))) => {
                        Some(sample::process(ctx.clone(), evidence, record).await)
                    }
                    Ok(None) => None,
                    Err(e) => {
                        tracing::error!(%sha256, "cannot read the submission's row: {e}");
                        None
                    }
                }
            });
        }
        while let Some(joined) = tasks.join_next().await {
            record(joined);
        }
        if shutdown.is_cancelled() {
            return report;
        }
        let queued = ctx.take_iocs();
        if let Err(e) = self
            .create_queued_iocs(&ctx.contain_budget, started, queued, &mut report)
            .await
        {
            tracing::error!("cannot record the IOCs of finished analyses: {e}");
        }
        metrics::waiting_round(&report);
        report
    }
}
