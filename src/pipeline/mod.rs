//! The main loop and the cycle: collect, look up, download, submit, wait, plan, act, report.
//!
//! [`Connector::run`] runs the daemon's two clocks: collections every `time_span` (this file)
//! and the waiting clock ([`waiting`]), which acts on each analysis as it ends; [`claims`]
//! keeps them off each other's hashes. A collection reads like the mission; each step lives in
//! its own file: [`collect`], [`lookup`], [`sample`] (one hash's way through download, submit
//! and wait), [`wait`], [`plan`], [`act`], [`report`]. A sample's states and the transitions
//! between them (the only writes of its row in the state store) are in [`life`].

pub mod act;
pub mod blame;
mod claims;
pub mod collect;
mod life;
pub mod lookup;
pub mod plan;
pub mod report;
mod sample;
pub mod wait;
mod waiting;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use time::OffsetDateTime;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, RuntimeMode};
use crate::downloads::{self, DownloadDirError};
use crate::falcon::{FalconClient, FalconError, FalconSettings};
use crate::health::Health;
use crate::metrics;
use crate::model::Sha256;
use crate::state::{SampleRecord, SampleState, StateError, StateStore};
use crate::vmray::{VmrayClient, VmrayError, VmraySettings};
use act::{Actor, ContainBudget};
use claims::Claims;
use collect::Evidence;
pub use report::CycleReport;
use report::Step;
use sample::{CycleContext, Outcome, Wait};
use waiting::Waiting;

/// How far each checkpoint reaches back before the previous cycle's start: alerts can become
/// searchable a little after their timestamps. Re-reading is harmless; the journal dedups.
const CHECKPOINT_OVERLAP: time::Duration = time::Duration::minutes(5);

/// How long the state store keeps what is finished (done actions, handled evidence, finished
/// samples). Past it an alert that comes back is still recognised by the connector's tag on
/// it; only a hash VMRay knows is looked up once more.
const RETENTION: time::Duration = time::Duration::days(90);

/// How often the daemon retries what failed for a passing reason (samples and write-backs)
/// and resumes its journal. Every collection did so when collections were three hours apart;
/// at one a minute, an outage would be hammered by every failed sample 180 times as often.
const RETRY_EVERY: Duration = Duration::from_secs(600);

/// How often the daemon deletes what is past [`RETENTION`].
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// The daemon's containment window: `contain_max_per_cycle` hosts per window, whichever clock
/// contains them. The original's cycle was three hours, and a budget per collection would let
/// a one-minute `time_span` contain 180 times as many hosts.
const CONTAIN_WINDOW: Duration = Duration::from_secs(3 * 3600);

/// Why the connector could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Falcon(#[from] FalconError),
    #[error(transparent)]
    Vmray(#[from] VmrayError),
    #[error(transparent)]
    State(#[from] StateError),
}

/// Why a cycle as a whole failed. A failure of one sample is in the report, not here.
#[derive(Debug, thiserror::Error)]
pub enum CycleError {
    #[error("collecting from Falcon failed: {0}")]
    Collect(#[from] FalconError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Downloads(#[from] DownloadDirError),
    #[error(
        "the cycle was interrupted by shutdown; its work in flight is saved for the next start"
    )]
    Cancelled,
}

/// How the loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoopOutcome {
    /// The last cycle completed (always the case for a daemon stopped by a signal).
    Completed,
    /// `once`: the cycle failed, stalled on a service, or was interrupted.
    Failed,
}

/// The connector: settings, the two clients and the state store. Cheap to clone.
#[derive(Clone)]
pub struct Connector {
    config: Arc<Config>,
    falcon: FalconClient,
    vmray: VmrayClient,
    store: StateStore,
    health: Arc<Health>,
    /// Which hashes a task works on now: the two clocks never work on one hash at once.
    claims: Arc<Claims>,
    /// The waiting clock's schedule and its wake-up call.
    waiting: Arc<Waiting>,
    /// A resumption of the journal performs every unfinished action in it, also those a
    /// waiting round is performing: the two never run at once.
    acting: Arc<tokio::sync::Mutex<()>>,
    /// Whether a collection has checked the download folder, cleared it of an earlier run's
    /// leftovers and resumed the journal. Until then the waiting clock does nothing: a round
    /// could download into the folder being cleared (an upload a crash cut short is done
    /// again), or act on a hash before the resumption settled its unfinished actions (a scan
    /// an earlier process may have started must be given up, not planned again).
    started_up: Arc<tokio::sync::watch::Sender<bool>>,
    /// `concurrency`: downloads and uploads in progress, whichever clock makes them.
    permits: Arc<Semaphore>,
    /// [`sample::LIGHT_AT_ONCE`]: hashes in a lookup or a write-back, whichever clock.
    light: Arc<Semaphore>,
    /// The daemon's containment budget and when its window started.
    contain_window: Arc<std::sync::Mutex<Option<ContainWindow>>>,
}

/// A containment budget of the daemon and when its window began.
type ContainWindow = (Instant, Arc<ContainBudget>);

/// What a collection does besides collecting, and how its tasks wait.
struct Collection {
    wait: Wait,
    contain_budget: Arc<ContainBudget>,
    /// Check the download folder and delete leftovers in it: only when nothing else can be
    /// downloading.
    clear_downloads: bool,
    /// Resume the journal and retry the samples that failed for a passing reason.
    retry: bool,
    /// Delete what is past [`RETENTION`].
    prune: bool,
}

impl Collection {
    /// A one-off run's: tasks wait for their analyses, every chore is done, and the
    /// containment budget is this run's.
    fn once(config: &Config) -> Self {
        Collection {
            wait: Wait::UpToTimeout,
            contain_budget: Arc::new(ContainBudget::new(config.crowdstrike.contain_max_per_cycle)),
            clear_downloads: true,
            retry: true,
            prune: true,
        }
    }
}

impl Connector {
    pub fn new(config: Config) -> Result<Self, StartError> {
        Self::stoppable(config, CancellationToken::new())
    }

    /// A connector whose clients end every wait as soon as `shutdown` is cancelled; pass the
    /// same token to [`Connector::run`].
    pub fn stoppable(config: Config, shutdown: CancellationToken) -> Result<Self, StartError> {
        let mut falcon = FalconSettings::for_connector(&config);
        falcon.shutdown = shutdown.clone();
        let mut vmray = VmraySettings::for_connector(&config);
        vmray.shutdown = shutdown;
        let falcon = FalconClient::new(falcon)?;
        let vmray = VmrayClient::new(vmray)?;
        let store = StateStore::open(&config.general.state_file)?;
        Ok(Self::from_parts(config, falcon, vmray, store))
    }

    /// For callers that build the clients themselves (tests with short timeouts).
    pub fn from_parts(
        config: Config,
        falcon: FalconClient,
        vmray: VmrayClient,
        store: StateStore,
    ) -> Self {
        if config.vmray.api_key_type == crate::config::ApiKeyType::Verdict {
            tracing::info!(
                "vmray.api_key_type is \"verdict\": VMRay's reports are not read, so verdicts are \
                 written back without VTIs in the comments and without IOCs from the report (only \
                 each sample's own hash becomes an IOC)"
            );
        }
        let health = Arc::new(Health::new(Duration::from_secs(config.general.time_span)));
        let waiting = Arc::new(Waiting::new(Duration::from_secs(
            config.vmray.poll_interval,
        )));
        let permits = Arc::new(Semaphore::new(config.general.concurrency));
        Connector {
            config: Arc::new(config),
            falcon,
            vmray,
            store,
            health,
            claims: Arc::default(),
            waiting,
            acting: Arc::default(),
            started_up: Arc::new(tokio::sync::watch::Sender::new(false)),
            permits,
            light: Arc::new(Semaphore::new(sample::LIGHT_AT_ONCE)),
            contain_window: Arc::default(),
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn store(&self) -> &StateStore {
        &self.store
    }

    /// Whether cycles keep completing, for `/healthz` and the systemd watchdog.
    pub fn health(&self) -> Arc<Health> {
        self.health.clone()
    }

    /// Runs as `mode` says until shutdown. `once`: one collection that waits up to
    /// `analysis_job_timeout` for what is in flight. The daemon runs two clocks side by side: a
    /// collection every `time_span`, and the waiting clock, which polls every submission in
    /// flight and acts on each as soon as its analysis is done. Neither waits for the other;
    /// both stop at the shutdown token.
    pub async fn run(&self, mode: RuntimeMode, shutdown: CancellationToken) -> LoopOutcome {
        match mode {
            RuntimeMode::Once => self.collections(mode, &shutdown).await,
            RuntimeMode::Daemon => {
                let (outcome, ()) = tokio::join!(
                    self.collections(mode, &shutdown),
                    self.waiting_clock(&shutdown)
                );
                outcome
            }
        }
    }

    /// The collection clock: one collection every `time_span` (once, for `once`). A failed
    /// collection is logged and the next one still waits for its turn: a broken API must not
    /// turn the daemon into a tight loop.
    async fn collections(&self, mode: RuntimeMode, shutdown: &CancellationToken) -> LoopOutcome {
        let time_span = Duration::from_secs(self.config.general.time_span);
        let mut last_retry: Option<Instant> = None;
        let mut last_prune: Option<Instant> = None;
        loop {
            let started = std::time::Instant::now();
            let due = |last: Option<Instant>, every: Duration| {
                last.is_none_or(|at| at.elapsed() >= every)
            };
            let started_up = *self.started_up.borrow();
            let collection = match mode {
                RuntimeMode::Once => Collection::once(&self.config),
                RuntimeMode::Daemon => Collection {
                    wait: Wait::OnePoll,
                    contain_budget: self.daemon_contain_budget(),
                    // Until it worked: a folder that is not the connector's own stays refused.
                    clear_downloads: !started_up,
                    // Until the journal was resumed once: the waiting clock waits for it.
                    retry: !started_up || due(last_retry, RETRY_EVERY),
                    prune: due(last_prune, PRUNE_EVERY),
                },
            };
            let (retried, pruned) = (collection.retry, collection.prune);
            self.record_in_flight();
            let result = self.collect(shutdown, collection).await;
            // Whatever came of it: during an outage, a retry every minute would only hammer it.
            if retried {
                last_retry = Some(started);
            }
            if pruned && result.is_ok() {
                last_prune = Some(started);
            }
            // Before the cycle's own metrics: a scrape that sees the cycle counted sees this too.
            self.record_in_flight();
            let outcome = match result {
                Ok(report) if report.stalled() => {
                    report.log();
                    metrics::cycle_stalled(&report, started.elapsed());
                    let why = match report
                        .failed
                        .iter()
                        .find(|f| f.blame == blame::Blame::Service)
                    {
                        Some(first) => format!(
                            "{} of {} hashes failed because a service did not work, e.g. \"{}\"",
                            report.failed.len(),
                            report.hashes,
                            first.reason
                        ),
                        None => format!(
                            "all {} write-backs failed because Falcon did not take them (down, \
                             throttling or refusing the API client)",
                            report.actions.values().map(|c| c.failed).sum::<u64>()
                        ),
                    };
                    tracing::error!(
                        "cycle failed: nothing could be looked up or acted on ({why}); the \
                         samples are kept and tried again by the next cycle"
                    );
                    LoopOutcome::Failed
                }
                Ok(report) => {
                    report.log();
                    metrics::cycle_completed(&report, started.elapsed());
                    self.health.cycle_completed();
                    LoopOutcome::Completed
                }
                // A call that shutdown cut short fails the cycle on its way out: that is the
                // interruption, not an outage. The daemon stops as asked (exit 0); a one-off
                // cycle did not complete, and says so (exit 1).
                Err(CycleError::Cancelled) | Err(_) if shutdown.is_cancelled() => {
                    metrics::cycle_ended_early("interrupted", started.elapsed());
                    tracing::info!("{}", CycleError::Cancelled);
                    return match mode {
                        RuntimeMode::Once => LoopOutcome::Failed,
                        RuntimeMode::Daemon => LoopOutcome::Completed,
                    };
                }
                Err(error) => {
                    metrics::cycle_ended_early("failed", started.elapsed());
                    tracing::error!("cycle failed: {error}");
                    LoopOutcome::Failed
                }
            };
            if mode == RuntimeMode::Once {
                return outcome;
            }
            // Cycles start every time_span; one that overran it is followed at once.
            let pause = time_span.saturating_sub(started.elapsed());
            tracing::info!("next cycle in {} s", pause.as_secs());
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = shutdown.cancelled() => {
                    tracing::info!("shut down between cycles");
                    return LoopOutcome::Completed;
                }
            }
        }
    }

    /// Sets the in-flight gauges from the state store: before a collection they show what
    /// earlier ones (or a process before a restart) left waiting, after it what this one left.
    fn record_in_flight(&self) {
        match self.store.in_flight_since() {
            Ok(rows) => metrics::in_flight(&rows),
            Err(e) => tracing::warn!("cannot read the submissions in flight for the metrics: {e}"),
        }
    }

    /// The daemon's containment budget: the same for both clocks until its window is over.
    fn daemon_contain_budget(&self) -> Arc<ContainBudget> {
        let mut window = self
            .contain_window
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match &*window {
            Some((started, budget)) if started.elapsed() < CONTAIN_WINDOW => budget.clone(),
            _ => {
                let budget = Arc::new(ContainBudget::new(
                    self.config.crowdstrike.contain_max_per_cycle,
                ));
                *window = Some((Instant::now(), budget.clone()));
                budget
            }
        }
    }

    /// One cycle as `once` runs it: collect, and wait up to `analysis_job_timeout` for every
    /// submission (this cycle's and those in flight from earlier ones).
    pub async fn run_cycle(&self, shutdown: &CancellationToken) -> Result<CycleReport, CycleError> {
        self.collect(shutdown, Collection::once(&self.config)).await
    }

    /// One collection: resume and retry (when due), collect since the checkpoint, then one
    /// task per hash, which waits for analyses as `collection.wait` says.
    async fn collect(
        &self,
        shutdown: &CancellationToken,
        collection: Collection,
    ) -> Result<CycleReport, CycleError> {
        let started = OffsetDateTime::now_utc();
        let general = &self.config.general;
        let dry_run = general.dry_run;
        let mut report = CycleReport {
            dry_run,
            ..CycleReport::default()
        };
        if !dry_run && collection.clear_downloads {
            let deleted = downloads::prepare(&self.config.crowdstrike.download_dir)?;
            if deleted > 0 {
                tracing::warn!("deleted {deleted} leftover file(s) from the download folder");
            }
        }
        let contain_budget = collection.contain_budget;
        if !dry_run && collection.retry {
            let _acting = self.acting.lock().await;
            self.resume_actions(&contain_budget, started, &mut report)
                .await?;
        }
        self.started_up.send_replace(true);

        let since = self.since(started)?;
        // RFC 3339, as Falcon's filters and the state store write it; the `time` crate's
        // Display form (`2026-01-02 3:04:05.0 +00:00:00`) is neither sortable nor parseable.
        let since_text = since
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|_| since.to_string());
        tracing::info!(since = %since_text, "collecting evidence since {since_text}");
        let sources = &self.config.crowdstrike.selected_data_sources;
        let collected = collect::collect(&self.falcon, sources, since).await?;
        report.alerts = collected.alerts;
        report.quarantine_records = collected.quarantines;
        let collected_at = Instant::now();
        let work = self.work(
            collected.by_hash,
            collection.wait,
            collection.retry,
            dry_run,
        )?;
        report.hashes = work.len();

        let ctx = Arc::new(CycleContext::new(
            self,
            shutdown,
            contain_budget,
            collection.wait,
            started,
            collected_at,
        ));
        let mut tasks = tokio::task::JoinSet::new();
        let mut hash_of = std::collections::HashMap::new();
        // A task that panicked recorded nothing: the checkpoint stays where it is, so the next
        // cycle reads its evidence again.
        let mut crashed = false;
        let mut settle =
            |joined: Result<Outcome, tokio::task::JoinError>,
             hash_of: &std::collections::HashMap<tokio::task::Id, Sha256>| {
                match joined {
                    Ok(outcome) => tally(&mut report, outcome),
                    Err(e) => {
                        crashed = true;
                        let sha256 = hash_of
                            .get(&e.id())
                            .map_or_else(|| "unknown".into(), |s| s.to_string());
                        tracing::error!(%sha256, "a sample's task crashed: {e}");
                        report.failed.push(report::SampleFailure {
                            sha256,
                            step: Step::Act,
                            reason: format!("the sample's task crashed: {e}"),
                            blame: blame::Blame::Sample,
                        });
                    }
                }
            };
        // In the daemon a task ends at its upload, so a few of them alive at once keep every
        // permit busy; a first collection of thousands of hashes then holds a hundred tasks in
        // memory, not thousands. A `once` task waits for its analysis: all run at once.
        let alive = match collection.wait {
            Wait::OnePoll => general.concurrency + sample::LIGHT_AT_ONCE,
            Wait::UpToTimeout => usize::MAX,
        };
        for (sha256, evidence) in work {
            while tasks.len() >= alive {
                if let Some(joined) = tasks.join_next().await {
                    settle(joined, &hash_of);
                }
            }
            let task = tasks.spawn(Self::claimed(ctx.clone(), sha256.clone(), evidence));
            hash_of.insert(task.id(), sha256);
        }
        while let Some(joined) = tasks.join_next().await {
            settle(joined, &hash_of);
        }

        // Journaled already: after a shutdown the next start performs them.
        if shutdown.is_cancelled() {
            return Err(CycleError::Cancelled);
        }
        let queued = ctx.take_iocs();
        self.create_queued_iocs(&ctx.contain_budget, started, queued, &mut report)
            .await?;
        if !dry_run && !crashed {
            let next = started - CHECKPOINT_OVERLAP;
            for source in sources {
                self.store.set_checkpoint(source.as_str(), next)?;
            }
        }
        if !dry_run && collection.prune {
            let pruned = self.store.prune(started - RETENTION)?;
            if pruned > 0 {
                tracing::info!("state store: {pruned} row(s) older than 90 days deleted");
            }
        }
        Ok(report)
    }

    /// The earliest checkpoint of the selected sources, or `lookback` before now.
    fn since(&self, now: OffsetDateTime) -> Result<OffsetDateTime, StateError> {
        let cs = &self.config.crowdstrike;
        // Bounded by the config; saturating anyway, so no value can panic a cycle.
        let first_run = i64::try_from(cs.lookback)
            .ok()
            .and_then(|secs| now.checked_sub(time::Duration::seconds(secs)))
            .unwrap_or(OffsetDateTime::UNIX_EPOCH);
        let mut since: Option<OffsetDateTime> = None;
        for source in &cs.selected_data_sources {
            let at = self.store.checkpoint(source.as_str())?.unwrap_or(first_run);
            since = Some(since.map_or(at, |s| s.min(at)));
        }
        Ok(since.unwrap_or(first_run))
    }

    /// The hashes of this collection: those in new evidence, with the samples that failed for
    /// a passing reason when retries are due and, when tasks wait for analyses themselves
    /// (`once`), the submissions earlier runs left in flight. In the daemon those are the
    /// waiting clock's, unless new evidence names them.
    fn work(
        &self,
        by_hash: BTreeMap<Sha256, Evidence>,
        wait: Wait,
        retry: bool,
        dry_run: bool,
    ) -> Result<BTreeMap<Sha256, Option<Evidence>>, StateError> {
        let mut work: BTreeMap<Sha256, Option<Evidence>> = BTreeMap::new();
        if !dry_run {
            if wait == Wait::UpToTimeout {
                for (sha256, _) in self.store.in_flight_since()? {
                    work.insert(sha256, None);
                }
            }
            if retry {
                for record in self.store.retry_pending()? {
                    work.insert(record.sha256, None);
                }
            }
        }
        for (sha256, evidence) in by_hash {
            work.insert(sha256, Some(evidence));
        }
        Ok(work)
    }

    /// One hash's task: it waits for the hash to be free of the other clock, then reads its row
    /// (after the claim: the other clock may just have moved it on) and runs its life.
    async fn claimed(ctx: Arc<CycleContext>, sha256: Sha256, fresh: Option<Evidence>) -> Outcome {
        let connector = &ctx.connector;
        let _claim = connector.claims.claim(&sha256).await;
        if ctx.wait == Wait::OnePoll
            && let Some(fresh) = &fresh
        {
            match connector.add_to_submitted(&sha256, fresh) {
                Ok(true) => return Outcome::StillRunning { submitted: false },
                Ok(false) => {}
                Err(e) => tracing::error!(%sha256, "cannot read the sample's row: {e}"),
            }
        }
        match connector.resumable(&sha256, fresh, false) {
            Ok(Some((evidence, record))) => sample::process(ctx.clone(), evidence, record).await,
            // Nothing new about it, and nothing left to do: the other clock finished it.
            Ok(None) => Outcome::AlreadyDone,
            Err(e) => {
                tracing::error!(%sha256, "cannot read the sample's row: {e}");
                Outcome::Failed {
                    failure: report::SampleFailure {
                        sha256: sha256.to_string(),
                        step: Step::Lookup,
                        reason: e.to_string(),
                        blame: blame::Blame::Service,
                    },
                    acted: act::Acted::default(),
                    submitted: false,
                    given_up: None,
                }
            }
        }
    }

    /// In the daemon a submission in flight is the waiting clock's: a collection that sees it
    /// again (its alerts stay in the collection window for a few minutes, or new ones came)
    /// only adds to its row what the row does not hold yet, without polling it. Whether
    /// `sha256` was such a submission.
    fn add_to_submitted(&self, sha256: &Sha256, fresh: &Evidence) -> Result<bool, StateError> {
        if self.config.general.dry_run {
            return Ok(false);
        }
        let Some(record) = self
            .store
            .sample(sha256)?
            .filter(|r| r.state == SampleState::Submitted)
        else {
            return Ok(false);
        };
        let mut evidence = record
            .evidence_json
            .as_deref()
            .and_then(|json| serde_json::from_str::<Evidence>(json).ok())
            .unwrap_or_else(|| Evidence::new(sha256.clone()));
        let held = evidence.alerts.len() + evidence.quarantines.len();
        evidence.merge(fresh.clone());
        if evidence.alerts.len() + evidence.quarantines.len() > held {
            life::Sample::new(evidence, Some(&record)).still_running(&self.store)?;
        }
        Ok(true)
    }

    /// What a task works on for `sha256`: the evidence (new, merged with what its row saved)
    /// and the row when there is something to resume (a submission in flight, a failure kept
    /// for a retry). `None` when there is neither new evidence nor such a row, or, with
    /// `in_flight_only`, when the row is no longer in flight.
    fn resumable(
        &self,
        sha256: &Sha256,
        fresh: Option<Evidence>,
        in_flight_only: bool,
    ) -> Result<Option<(Evidence, Option<SampleRecord>)>, StateError> {
        let record = if self.config.general.dry_run {
            None
        } else {
            self.store.sample(sha256)?
        };
        let record = record.filter(|r| match r.state {
            SampleState::Submitting | SampleState::Submitted => true,
            SampleState::Failed => !in_flight_only && r.evidence_json.is_some(),
            SampleState::Finished => false,
        });
        let Some(record) = record else {
            return Ok(if in_flight_only {
                None
            } else {
                fresh.map(|evidence| (evidence, None))
            });
        };
        let saved = record
            .evidence_json
            .as_deref()
            .and_then(|json| serde_json::from_str::<Evidence>(json).ok())
            .unwrap_or_else(|| Evidence::new(sha256.clone()));
        let mut evidence = fresh.unwrap_or_else(|| Evidence::new(sha256.clone()));
        evidence.merge(saved);
        Ok(Some((evidence, Some(record))))
    }

    /// Creates every sample's IOCs together. A sample whose IOCs failed is kept for a retry
    /// like any sample whose write-back failed (its journal entry is retried too).
    async fn create_queued_iocs(
        &self,
        contain_budget: &ContainBudget,
        cycle_started: OffsetDateTime,
        mut queued: Vec<(plan::PlannedAction, Evidence)>,
        report: &mut CycleReport,
    ) -> Result<(), StateError> {
        if queued.is_empty() {
            return Ok(());
        }
        // The samples finished in any order; batches in the order of their hashes are the
        // same from one run to the next.
        queued.sort_by(|a, b| a.1.sha256.as_str().cmp(b.1.sha256.as_str()));
        let actor = self.actor(contain_budget, cycle_started, false);
        let (actions, evidence): (Vec<_>, Vec<_>) = queued.into_iter().unzip();
        let keys: Vec<String> = actions.iter().map(|a| a.key.clone()).collect();
        let acted = actor.execute(actions).await?;
        report.add_actions(&acted.tally);
        if !acted.any_failed() || self.falcon.stopping() {
            return Ok(());
        }
        let done = self.store.done_keys(keys.iter().map(String::as_str))?;
        for (key, evidence) in keys.iter().zip(evidence) {
            if done.contains(key) {
                continue;
            }
            // Only a refusal of the sample's own IOCs counts against it: Falcon failing the
            // request its IOCs were in (down, rate limits, a refused token) does not, whatever
            // happened to the other samples' IOCs in the batch.
            let record = self.store.sample(&evidence.sha256)?;
            life::Sample::new(evidence, record.as_ref()).failed_in_batch(
                &self.store,
                "IOC creation failed in Falcon",
                acted.failed_own_keys.contains(key),
            )?;
        }
        Ok(())
    }

    /// Acts with this connector's client and journal, within the cycle's containment budget.
    fn actor<'a>(
        &'a self,
        contain_budget: &'a ContainBudget,
        cycle_started: OffsetDateTime,
        statuses_fresh: bool,
    ) -> Actor<'a> {
        Actor {
            falcon: &self.falcon,
            store: &self.store,
            contain_budget,
            statuses_fresh,
            cycle_started,
            give_up_after: self.config.general.give_up_after,
        }
    }

    async fn resume_actions(
        &self,
        contain_budget: &ContainBudget,
        cycle_started: OffsetDateTime,
        report: &mut CycleReport,
    ) -> Result<(), StateError> {
        let actor = self.actor(contain_budget, cycle_started, false);
        // Their failed actions are planned again with them, from their current verdict.
        let retrying: std::collections::HashSet<String> = self
            .store
            .retry_pending()?
            .into_iter()
            .map(|record| record.sha256.to_string())
            .collect();
        let acted = actor.resume(&retrying).await?;
        report.add_actions(&acted.tally);
        report.notes.extend(acted.notes);
        Ok(())
    }
}

fn tally(report: &mut CycleReport, outcome: Outcome) {
    match outcome {
        Outcome::AlreadyDone => report.already_done += 1,
        Outcome::Acted {
            known,
            acted,
            notes,
            given_up,
        } => {
            if given_up {
                report.given_up += 1;
            }
            if known {
                report.known += 1;
            } else {
                report.submitted += 1;
                report.finished += 1;
            }
            report.add_actions(&acted.tally);
            report.notes.extend(notes);
            report.notes.extend(acted.notes);
        }
        Outcome::NoVerdict { submitted } => {
            report.no_verdict += 1;
            if submitted {
                report.submitted += 1;
                report.finished += 1;
            }
        }
        Outcome::StillRunning { submitted } => {
            report.still_analysing += 1;
            if submitted {
                report.submitted += 1;
            }
        }
        Outcome::DryRun {
            known,
            would_submit,
            planned,
            notes,
        } => {
            if known {
                report.known += 1;
            }
            if would_submit {
                report.would_submit += 1;
            }
            for action in &planned {
                report
                    .actions
                    .entry(action.action.kind())
                    .or_default()
                    .planned += 1;
                report.planned.push(report::PlannedRow {
                    sha256: action.sha256.to_string(),
                    kind: action.action.kind(),
                    description: action.action.describe(),
                });
            }
            report.notes.extend(notes);
        }
        Outcome::Failed {
            failure,
            acted,
            submitted,
            given_up,
        } => {
            if submitted {
                report.submitted += 1;
            }
            if let Some(why) = given_up {
                report.given_up += 1;
                report.notes.push(format!(
                    "{}: given up at {} ({}): {}",
                    failure.sha256,
                    failure.step.label(),
                    why.label(),
                    failure.reason
                ));
            }
            report.add_actions(&acted.tally);
            report.failed.push(failure);
        }
        Outcome::Interrupted => report.interrupted += 1,
    }
}
