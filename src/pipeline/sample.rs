//! One hash's way through a cycle: look up, (download, submit, wait), plan, act.
//!
//! It reads as the life of a sample ([`super::life`]): process, look up, (submitting,
//! submitted, wait), then finished or failed. Every change to the sample's row is one of that
//! module's transitions; this file decides when, and does the work between them.
//!
//! Every hash runs in its own task. The `concurrency` permits bound only what is heavy on disk
//! and network: a sample's download from Falcon and its upload to VMRay. Lookups, report fetches
//! and write-backs take no such permit, so a known hash is acted on right after its lookup
//! instead of queuing behind uploads; the clients' rate limiters pace them. They are capped at
//! [`LIGHT_AT_ONCE`] only to bound open connections. Waiting for an analysis holds no permit
//! either, so slow analyses never starve the rest, and a sample is acted on as soon as its own
//! analysis is done.

use std::sync::Arc;
use std::time::{Duration, Instant};

use time::OffsetDateTime;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::Connector;
use super::act::{Acted, ContainBudget};
use super::blame::{self, Blame};
use super::collect::Evidence;
use super::life::{self, GiveUp, Life, Sample};
use super::lookup::{self, LookupDecision};
use super::plan::{self, Action, PlanInput, PlannedAction};
use super::report::{SampleFailure, Step};
use super::wait::{self, WaitResult};
use crate::downloads::SampleFile;
use crate::falcon::FalconError;
use crate::model::{Host, Verdict};
use crate::state::{SampleRecord, StateError};
use crate::vmray::{SampleInfo, SubmitOptions, VmrayError};

const NOT_IN_SAMPLE_STORE: &str =
    "Falcon's sample store does not hold this file (yet: sensors upload some files late)";

/// How long alert statuses read at collection are trusted before a status change: past it,
/// the alerts are read again (an analyst may have taken one over).
const FRESH_STATUSES: Duration = Duration::from_secs(30);

/// How many hashes may be in their light steps (lookup, report fetch, write-back) at once. Not
/// a throughput bound: 64 at 20 ms a request is far beyond any tenant's rate limit, which is
/// what paces them. It keeps a first cycle of thousands of hashes from opening a connection
/// per hash (VMRay's client has no limiter of its own) past the usual limit of 1,024 open files.
pub(super) const LIGHT_AT_ONCE: usize = 64;

/// What every task of one cycle shares.
pub(super) struct CycleContext {
    pub connector: Connector,
    /// IOC creations of every sample, journaled, performed together at the end of the cycle:
    /// one existence check and one create per batch instead of two requests per sample.
    pub ioc_queue: std::sync::Mutex<Vec<(PlannedAction, Evidence)>>,
    pub shutdown: CancellationToken,
    /// `concurrency`: downloads and uploads in progress.
    pub permits: Arc<Semaphore>,
    /// [`LIGHT_AT_ONCE`]: hashes in a lookup or a write-back.
    pub light: Arc<Semaphore>,
    pub contain_budget: Arc<ContainBudget>,
    /// How long a task waits for an analysis.
    pub wait: Wait,
    pub now: OffsetDateTime,
    /// When collection ended: the alert statuses in fresh evidence are from then.
    pub collected: Instant,
}

impl CycleContext {
    /// A context for one collection or waiting round of `connector`, sharing its download and
    /// light permits (both clocks together stay within them).
    pub(super) fn new(
        connector: &Connector,
        shutdown: &CancellationToken,
        contain_budget: Arc<ContainBudget>,
        wait: Wait,
        now: OffsetDateTime,
        collected: Instant,
    ) -> Self {
        CycleContext {
            connector: connector.clone(),
            ioc_queue: std::sync::Mutex::new(Vec::new()),
            shutdown: shutdown.clone(),
            permits: connector.permits.clone(),
            light: connector.light.clone(),
            contain_budget,
            wait,
            now,
            collected,
        }
    }

    /// The IOC creations the tasks queued, for the batch at the end of the round.
    pub(super) fn take_iocs(&self) -> Vec<(PlannedAction, Evidence)> {
        std::mem::take(
            &mut *self
                .ioc_queue
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
    }
}

/// How long a task waits for an analysis, its own or one in flight from earlier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Wait {
    /// Up to `analysis_job_timeout` from the submission: a one-off run, where nothing polls
    /// after the cycle.
    UpToTimeout,
    /// One poll at most, and none of a sample just uploaded: the daemon's waiting clock polls
    /// every submission in flight and acts on each as its analysis ends, so nothing else waits.
    OnePoll,
}

/// How one hash ended the cycle.
#[derive(Debug)]
pub(super) enum Outcome {
    AlreadyDone,
    Acted {
        known: bool,
        acted: Acted,
        notes: Vec<String>,
        /// Its write-backs failed for reasons of their own for longer than `give_up_after`:
        /// the sample is given up (its notes say why).
        given_up: bool,
    },
    NoVerdict {
        submitted: bool,
    },
    /// The analysis outlasted this cycle's wait (`analysis_job_timeout`): the submission stays
    /// in flight with its evidence and later cycles poll it again.
    StillRunning {
        submitted: bool,
    },
    DryRun {
        known: bool,
        would_submit: bool,
        planned: Vec<PlannedAction>,
        notes: Vec<String>,
    },
    Failed {
        failure: SampleFailure,
        acted: Acted,
        submitted: bool,
        /// Given up, and why (`permanent`, `give_up_after`); otherwise kept for later cycles.
        given_up: Option<GiveUp>,
    },
    Interrupted,
}

/// Why a hash stopped before acting.
enum Stop {
    Failed {
        step: Step,
        reason: String,
        submitted: bool,
        /// Whose failure it is: whether later cycles try again, and whether it counts.
        blame: Blame,
    },
    AlreadyDone,
    /// VMRay is still analysing it; `submitted`: by this cycle.
    StillRunning {
        submitted: bool,
    },
    /// No poll of the submission was answered (VMRay down, the key refused): it stays in
    /// flight, and the cycle reports the outage; `submitted`: by this cycle.
    Unanswered {
        reason: String,
        submitted: bool,
    },
    /// Dry run: an unknown sample would have been submitted.
    WouldSubmit,
    Interrupted,
}

impl From<StateError> for Stop {
    fn from(error: StateError) -> Self {
        // The connector's own store (a full disk, a lock): not the sample's failure.
        failed(Step::Act, Blame::Service, error)
    }
}

fn failed(step: Step, blame: Blame, error: impl std::fmt::Display) -> Stop {
    Stop::Failed {
        step,
        reason: error.to_string(),
        submitted: false,
        blame,
    }
}

fn vmray_failed(step: Step, error: VmrayError) -> Stop {
    failed(step, blame::vmray(&error), error)
}

fn falcon_failed(step: Step, error: FalconError) -> Stop {
    failed(step, blame::falcon(&error), error)
}

/// A verdict ready to act on, whether this run submitted the sample for it, and what the
/// cycle report should say about how it came (an analysis that had errors).
struct Found {
    info: SampleInfo,
    submitted: bool,
    notes: Vec<String>,
}

pub(super) async fn process(
    ctx: Arc<CycleContext>,
    evidence: Evidence,
    in_flight: Option<SampleRecord>,
) -> Outcome {
    // Evidence saved by an earlier cycle holds alert statuses that may have changed since.
    let fresh = in_flight.is_none();
    let mut sample = Sample::new(evidence, in_flight.as_ref());
    let found = if in_flight.as_ref().is_some_and(life::broken) {
        Err(failed(
            Step::Analysis,
            Blame::Permanent,
            "in-flight record without a submission id",
        ))
    } else {
        match sample.life.clone() {
            Life::Submitted {
                submission_id,
                sample_id,
                submitted_at,
            } => resume_waiting(&ctx, &sample, submission_id, sample_id, submitted_at).await,
            Life::Submitting { baseline, since } => {
                recover_upload(&ctx, &mut sample, baseline, since).await
            }
            // A retry after VMRay already gave a verdict (the write-back failed) acts on that
            // verdict: resubmitting now would spend a detonation on a bookkeeping problem.
            Life::Failed {
                verdict,
                submission_id,
                ..
            } if verdict.is_some() || submission_id.is_some() => {
                look_up(&ctx, &mut sample, false).await
            }
            Life::Finished { .. } => look_up(&ctx, &mut sample, false).await,
            _ => look_up(&ctx, &mut sample, true).await,
        }
    };
    match found {
        Ok(found) => act_on(&ctx, &mut sample, found, fresh).await,
        Err(Stop::AlreadyDone) => Outcome::AlreadyDone,
        Err(Stop::Interrupted) => Outcome::Interrupted,
        Err(Stop::Unanswered { reason, submitted }) => {
            if let Err(e) = sample.still_running(&ctx.connector.store) {
                tracing::error!(sha256 = %sample.sha256(), "cannot save the evidence of a running analysis: {e}");
            }
            let failure = SampleFailure {
                sha256: sample.sha256().to_string(),
                step: Step::Analysis,
                reason: format!(
                    "no poll of the submission was answered; it stays in flight: {reason}"
                ),
                blame: Blame::Service,
            };
            Outcome::Failed {
                failure,
                acted: Acted::default(),
                submitted,
                given_up: None,
            }
        }
        Err(Stop::StillRunning { submitted }) => {
            if let Err(e) = sample.still_running(&ctx.connector.store) {
                tracing::error!(sha256 = %sample.sha256(), "cannot save the evidence of a running analysis: {e}");
            }
            // The waiting clock polls every submission every few seconds: one line each time
            // would drown the log.
            if ctx.wait == Wait::OnePoll {
                tracing::debug!(sha256 = %sample.sha256(), "VMRay is still analysing it");
            } else {
                tracing::info!(sha256 = %sample.sha256(), "VMRay is still analysing it; later cycles poll it again");
            }
            Outcome::StillRunning { submitted }
        }
        Err(Stop::WouldSubmit) => Outcome::DryRun {
            known: false,
            would_submit: true,
            planned: Vec::new(),
            notes: Vec::new(),
        },
        Err(Stop::Failed {
            step,
            reason,
            submitted,
            blame,
        }) => fail(&ctx, &mut sample, step, reason, submitted, blame, None).await,
    }
}

/// Looks the hash up and, when VMRay does not know it (or `may_resubmit` and it is due),
/// downloads, submits and waits for it.
async fn look_up(
    ctx: &CycleContext,
    sample: &mut Sample,
    may_resubmit: bool,
) -> Result<Found, Stop> {
    let c = &ctx.connector;
    let config = &c.config;
    let sha = &sample.sha256().clone();
    let light = ctx.light.acquire().await.map_err(|_| Stop::Interrupted)?;
    if ctx.shutdown.is_cancelled() {
        return Err(Stop::Interrupted);
    }
    // Also with `resubmit` on: resubmission is for a hash that shows up in new evidence, not
    // for one that comes back only because the connector's own write-back updated its alerts.
    if sample.observe(&c.store)? {
        return Err(Stop::AlreadyDone);
    }
    let mut found = c
        .vmray
        .lookup(sha)
        .await
        .map_err(|e| vmray_failed(Step::Lookup, e))?;
    if let Some(info) = found.as_mut().filter(|i| lookup::needs_age(i, config)) {
        info.last_analysis = c
            .vmray
            .analysis_age(info.sample_id)
            .await
            .map_err(|e| vmray_failed(Step::Lookup, e))?;
    }
    let known_sample = found.as_ref().map(|info| info.sample_id);
    let decision = match found {
        Some(info) if !may_resubmit => LookupDecision::UseKnown(info),
        found => lookup::decide(found, config, ctx.now),
    };
    let reanalyze = match decision {
        LookupDecision::UseKnown(info) => {
            return Ok(Found {
                info,
                submitted: false,
                notes: Vec::new(),
            });
        }
        LookupDecision::Submit { reanalyze } => reanalyze,
    };
    if config.general.dry_run {
        return Err(Stop::WouldSubmit);
    }
    // A resubmission's crash recovery must tell the new submission from the old ones.
    let baseline = match known_sample {
        Some(sample_id) if reanalyze => c
            .vmray
            .latest_submission(sample_id)
            .await
            .map_err(|e| vmray_failed(Step::Lookup, e))?,
        _ => None,
    };
    drop(light);

    let permit = ctx.permits.acquire().await.map_err(|_| Stop::Interrupted)?;
    if ctx.shutdown.is_cancelled() {
        return Err(Stop::Interrupted);
    }
    let file = match c
        .falcon
        .download_sample(sha, &config.crowdstrike.download_dir)
        .await
    {
        Ok(Some(path)) => SampleFile::new(path),
        // Tried again by later cycles: a sensor may still upload it.
        Ok(None) => {
            return Err(failed(Step::Download, Blame::Sample, NOT_IN_SAMPLE_STORE));
        }
        Err(e) => return Err(falcon_failed(Step::Download, e)),
    };
    sample.submitting(&c.store, baseline, OffsetDateTime::now_utc())?;
    let options = SubmitOptions {
        reanalyze,
        original_filename: sample.evidence.filename(),
        previous_submission: baseline,
    };
    let submitted = c.vmray.submit(file.path(), sha, &options).await;
    // The malware leaves the disk as soon as VMRay has it (or the upload failed), and the
    // next download may start: what follows is bookkeeping, not disk or network.
    drop(file);
    drop(permit);
    let submitted = submitted.map_err(|e| vmray_failed(Step::Submit, e))?;
    let submitted_at = OffsetDateTime::now_utc();
    sample.submitted(
        &c.store,
        submitted.submission_id,
        submitted.sample_id,
        submitted_at,
    )?;
    tracing::info!(
        sha256 = %sha,
        submission_id = submitted.submission_id,
        "submitted to VMRay"
    );
    if ctx.wait == Wait::OnePoll {
        // VMRay has only just received it; the waiting clock takes it from here.
        c.waiting.wake();
        return Err(Stop::StillRunning { submitted: true });
    }
    wait_and_fetch(
        ctx,
        submitted.submission_id,
        submitted.sample_id,
        submitted_at,
    )
    .await
    .map_err(|stop| match stop {
        // Uploaded by this cycle, whatever the poll then said.
        Stop::StillRunning { .. } => Stop::StillRunning { submitted: true },
        Stop::Unanswered { reason, .. } => Stop::Unanswered {
            reason,
            submitted: true,
        },
        stop => stop,
    })
}

/// An earlier run died during an upload. If the file reached VMRay (a submission newer than
/// the ones it had before), wait on that submission; if not, start over. Never upload it a
/// second time when it arrived.
async fn recover_upload(
    ctx: &CycleContext,
    sample: &mut Sample,
    baseline: Option<u64>,
    since: Option<OffsetDateTime>,
) -> Result<Found, Stop> {
    let c = &ctx.connector;
    let sha = &sample.sha256().clone();
    let arrived = {
        let _light = ctx.light.acquire().await.map_err(|_| Stop::Interrupted)?;
        match c
            .vmray
            .lookup(sha)
            .await
            .map_err(|e| vmray_failed(Step::Lookup, e))?
        {
            Some(info) => c
                .vmray
                .latest_submission(info.sample_id)
                .await
                .map_err(|e| vmray_failed(Step::Lookup, e))?
                .filter(|newest| baseline.is_none_or(|old| *newest > old))
                .map(|submission_id| (submission_id, info.sample_id)),
            None => None,
        }
    };
    let Some((submission_id, sample_id)) = arrived else {
        tracing::info!(sha256 = %sha, "an interrupted upload never reached VMRay: submitting again");
        return look_up(ctx, sample, true).await;
    };
    tracing::info!(
        sha256 = %sha,
        submission_id,
        "an interrupted upload had reached VMRay: waiting for its analysis"
    );
    // The analysis deadline counts from the upload, not from the restart.
    let submitted_at = since.unwrap_or_else(OffsetDateTime::now_utc);
    sample.submitted(&c.store, submission_id, sample_id, submitted_at)?;
    wait_and_fetch(ctx, submission_id, sample_id, submitted_at).await
}

/// A submission an earlier run left in flight: poll it, never resubmit.
async fn resume_waiting(
    ctx: &CycleContext,
    sample: &Sample,
    submission_id: u64,
    sample_id: u64,
    submitted_at: OffsetDateTime,
) -> Result<Found, Stop> {
    if ctx.wait == Wait::UpToTimeout {
        tracing::info!(
            sha256 = %sample.sha256(),
            submission_id,
            "resuming the wait for an earlier submission"
        );
    }
    wait_and_fetch(ctx, submission_id, sample_id, submitted_at).await
}

async fn wait_and_fetch(
    ctx: &CycleContext,
    submission_id: u64,
    sample_id: u64,
    submitted_at: OffsetDateTime,
) -> Result<Found, Stop> {
    let c = &ctx.connector;
    let vm = &c.config.vmray;
    let deadline = match ctx.wait {
        Wait::UpToTimeout => submitted_at + Duration::from_secs(vm.analysis_job_timeout),
        Wait::OnePoll => OffsetDateTime::now_utc(),
    };
    let poll = Duration::from_secs(vm.poll_interval);
    let submitted_failure = |step, blame, reason: String| Stop::Failed {
        step,
        reason,
        submitted: true,
        blame,
    };
    let waited = {
        // The waiting clock's poll is one light request (a thousand submissions in flight must
        // not open a thousand connections at once); a `once` wait holds no permit while it
        // sleeps between polls.
        let _light = match ctx.wait {
            Wait::OnePoll => Some(ctx.light.acquire().await.map_err(|_| Stop::Interrupted)?),
            Wait::UpToTimeout => None,
        };
        wait::until_done(
            &c.vmray,
            submission_id,
            submitted_at,
            deadline,
            poll,
            &ctx.shutdown,
        )
        .await
    };
    // Errors in the submission (one VM of several failed, `submission_has_errors`) do not
    // decide by themselves: the sample's verdict does.
    let errors = match waited {
        WaitResult::Finished => None,
        WaitResult::Cancelled => return Err(Stop::Interrupted),
        // An outage, not the analysis: never a reason to give the sample up.
        WaitResult::Unanswered(reason) => {
            return Err(Stop::Unanswered {
                reason,
                submitted: false,
            });
        }
        WaitResult::Failed(reason) => Some(reason),
        // Not a failure: VMRay is busy, the sample is slow, or this was the waiting clock's one
        // poll. Only an analysis still running `give_up_after` after its submission is given
        // up (and its error case opened).
        WaitResult::TimedOut => {
            let give_up_after = c.config.general.give_up_after;
            let running = OffsetDateTime::now_utc() - submitted_at;
            if running < super::blame::give_up_bound(give_up_after) {
                return Err(Stop::StillRunning { submitted: false });
            }
            return Err(submitted_failure(
                Step::Timeout,
                Blame::Permanent,
                format!(
                    "VMRay's analysis has not finished {} s after the submission \
                     (give_up_after = {give_up_after} s)",
                    running.whole_seconds()
                ),
            ));
        }
    };
    let info = c
        .vmray
        .sample(sample_id)
        .await
        .map_err(|e| submitted_failure(Step::Results, blame::vmray(&e), e.to_string()))?;
    let mut notes = Vec::new();
    if let Some(reason) = errors {
        // The sample's own, and not final: later cycles look it up again (never resubmitting
        // it) and act as soon as VMRay has a verdict.
        if !info.verdict.is_judgement() {
            return Err(submitted_failure(
                Step::Analysis,
                Blame::Sample,
                format!("VMRay's analysis ended without a verdict: {reason}"),
            ));
        }
        tracing::warn!(sha256 = %info.sha256, submission_id, verdict = %info.verdict,
            "VMRay finished the submission with errors but gave the sample a verdict; acting on it: {reason}");
        notes.push(format!(
            "{}: VMRay's submission {submission_id} had errors ({reason}), but the sample has a {} \
             verdict: acted on it",
            info.sha256, info.verdict
        ));
    }
    Ok(Found {
        info,
        submitted: true,
        notes,
    })
}

async fn act_on(ctx: &CycleContext, sample: &mut Sample, found: Found, fresh: bool) -> Outcome {
    let c = &ctx.connector;
    let config = &c.config;
    let sha = &sample.sha256().clone();
    let Found {
        info,
        submitted,
        notes: found_notes,
    } = found;
    let Ok(_light) = ctx.light.acquire().await else {
        return Outcome::Interrupted;
    };
    let verdict = info.verdict;
    if !verdict.is_judgement() {
        tracing::info!(sha256 = %sha, %verdict, "VMRay has no usable verdict yet");
        if !config.general.dry_run {
            // Kept with its evidence: the next cycles look again, until `give_up_after`.
            let reason = format!("VMRay has no usable verdict ({verdict}) yet");
            let (reason, given_up) =
                record_failure(ctx, sample, Step::Results, reason, Blame::Sample, None);
            if given_up.is_some() {
                let failure = SampleFailure {
                    sha256: sha.to_string(),
                    step: Step::Results,
                    reason,
                    blame: Blame::Sample,
                };
                return Outcome::Failed {
                    failure,
                    acted: Acted::default(),
                    submitted,
                    given_up,
                };
            }
        }
        return Outcome::NoVerdict { submitted };
    }
    // A report part VMRay would not give costs only that part: the verdict is written back.
    let (analysis, missing) = lookup::analysis(&c.vmray, info, config).await;
    let (other_hosts, other_hosts_failure) = other_hosts(ctx, &sample.evidence, verdict).await;
    // The connector's own store failed: not the sample's failure.
    macro_rules! act_failed {
        ($e:expr) => {
            fail(
                ctx,
                sample,
                Step::Act,
                $e.to_string(),
                submitted,
                Blame::Service,
                Some(verdict),
            )
        };
    }
    let done = match c.store.done_keys_for(sha) {
        Ok(done) => done,
        Err(e) => return act_failed!(e).await,
    };
    let mut plan = plan::plan(
        &PlanInput {
            evidence: &sample.evidence,
            analysis: &analysis,
            other_hosts: &other_hosts,
            done: &done,
            now: ctx.now,
        },
        config,
    );
    plan.notes.extend(found_notes);
    plan.notes.extend(missing);
    plan.notes.extend(other_hosts_failure);
    if config.general.dry_run {
        return Outcome::DryRun {
            known: true,
            would_submit: false,
            planned: plan.actions,
            notes: plan.notes,
        };
    }
    let statuses_fresh = fresh && !submitted && ctx.collected.elapsed() < FRESH_STATUSES;
    let actor = c.actor(&ctx.contain_budget, ctx.now, statuses_fresh);
    // Unfinished actions for an earlier verdict of this hash describe an analysis VMRay has
    // since replaced: they must not land after (or instead of) this verdict's.
    if let Err(e) = c.store.abandon_superseded(sha, verdict.as_str()) {
        return act_failed!(e).await;
    }
    let (iocs, now): (Vec<_>, Vec<_>) = plan
        .actions
        .into_iter()
        .partition(|a| matches!(a.action, Action::CreateIocs { .. }));
    if let Err(e) = actor.journal(&iocs) {
        return act_failed!(e).await;
    }
    ctx.ioc_queue
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .extend(iocs.into_iter().map(|a| (a, sample.evidence.clone())));
    let commented = commented_alerts(&now);
    let acted = match actor.perform(now).await {
        Ok(acted) => acted,
        Err(e) => return act_failed!(e).await,
    };
    observe_writeback(c, &sample.evidence, &commented);
    let mut given_up = false;
    let recorded = if acted.any_failed() {
        // Failed actions are planned again by the next cycle (done ones never are). Falcon
        // failing them all (down, rate limits, a refused token) is no failure of the sample's.
        let reason = "some actions failed in Falcon".to_string();
        let blame = if acted.failed_own {
            Blame::Sample
        } else {
            Blame::Service
        };
        let (reason, why) = record_failure(ctx, sample, Step::Act, reason, blame, Some(verdict));
        if let Some(why) = why {
            given_up = true;
            plan.notes.push(format!(
                "{sha}: given up at {} ({}): {reason}",
                Step::Act.label(),
                why.label()
            ));
        }
        Ok(())
    } else {
        sample.finished(&c.store, verdict)
    };
    if let Err(e) = recorded {
        tracing::error!(sha256 = %sha, "cannot record the result: {e}");
    }
    tracing::info!(sha256 = %sha, %verdict, known = !submitted, "acted on VMRay's verdict");
    Outcome::Acted {
        known: !submitted,
        acted,
        notes: plan.notes,
        given_up,
    }
}

async fn fail(
    ctx: &CycleContext,
    sample: &mut Sample,
    step: Step,
    reason: String,
    submitted: bool,
    blame: Blame,
    verdict: Option<Verdict>,
) -> Outcome {
    let c = &ctx.connector;
    let sha = &sample.sha256().clone();
    let failure = |reason: String| SampleFailure {
        sha256: sha.to_string(),
        step,
        reason,
        blame,
    };
    if c.config.general.dry_run {
        return Outcome::Failed {
            failure: failure(reason),
            acted: Acted::default(),
            submitted,
            given_up: None,
        };
    }
    // Shutdown cut a call short: not the sample's failure. Its row stays as it is, as after a
    // crash, and the next start picks it up from there without counting a failure.
    if ctx.shutdown.is_cancelled() {
        tracing::info!(sha256 = %sha, "interrupted by shutdown ({reason}); resumed at the next start");
        return Outcome::Interrupted;
    }
    let (reason, given_up) = record_failure(ctx, sample, step, reason, blame, verdict);
    // Only a sample that could not be analysed warrants an error case, and only once the
    // connector gives it up; an outage is retried by the next cycles, however long it lasts.
    let analysable = matches!(
        step,
        Step::Download | Step::Submit | Step::Analysis | Step::Timeout
    );
    let mut acted = Acted::default();
    if analysable && given_up.is_some() {
        let done = c.store.done_keys_for(sha).unwrap_or_default();
        let plan = plan::plan_failure(&sample.evidence, &reason, &done, &c.config);
        if !plan.actions.is_empty() {
            let actor = c.actor(&ctx.contain_budget, ctx.now, false);
            match actor.perform(plan.actions).await {
                Ok(result) => acted = result,
                Err(e) => tracing::error!(sha256 = %sha, "cannot open the error case: {e}"),
            }
        }
    }
    Outcome::Failed {
        failure: failure(reason),
        acted,
        submitted,
        given_up,
    }
}

/// Records a failure through the sample's life ([`Sample::failed`]): kept for later cycles or
/// given up. Returns the reason to report (saying when it was given up) and whether it was.
fn record_failure(
    ctx: &CycleContext,
    sample: &mut Sample,
    step: Step,
    reason: String,
    blame: Blame,
    verdict: Option<Verdict>,
) -> (String, Option<GiveUp>) {
    let c = &ctx.connector;
    sample.failed(
        &c.store,
        step,
        reason,
        blame,
        verdict,
        c.config.general.give_up_after,
    )
}

/// find_another_host: hosts beyond the evidence that ran the hash. A failure here costs only
/// the names in the comment (and their containment), not the verdict; it is returned as a note
/// for the cycle report, so an operator sees it without reading the logs.
async fn other_hosts(
    ctx: &CycleContext,
    evidence: &Evidence,
    verdict: Verdict,
) -> (Vec<Host>, Option<String>) {
    let c = &ctx.connector;
    let cs = &c.config.crowdstrike;
    if !(cs.find_another_host && cs.find_another_host_levels.contains(&verdict)) {
        return (Vec::new(), None);
    }
    match c.falcon.hosts_that_ran(&evidence.sha256).await {
        Ok(hosts) => (hosts, None),
        Err(e) => {
            tracing::warn!(sha256 = %evidence.sha256, "cannot list other hosts that ran it: {e}");
            let note = format!(
                "{}: other hosts that ran it are not named or contained: {e}",
                evidence.sha256
            );
            (Vec::new(), Some(note))
        }
    }
}

/// The alert updates that carry the verdict comment, as (journal key, alert id).
fn commented_alerts(actions: &[PlannedAction]) -> Vec<(String, String)> {
    actions
        .iter()
        .filter_map(|a| match &a.action {
            Action::UpdateAlert {
                composite_id,
                comment: Some(_),
                ..
            } => Some((a.key.clone(), composite_id.clone())),
            _ => None,
        })
        .collect()
}

/// Detection to write-back, for every alert whose comment is now done in the journal.
fn observe_writeback(c: &Connector, evidence: &Evidence, commented: &[(String, String)]) {
    if commented.is_empty() {
        return;
    }
    let done = match c
        .store
        .done_keys(commented.iter().map(|(key, _)| key.as_str()))
    {
        Ok(done) => done,
        Err(e) => {
            tracing::warn!(sha256 = %evidence.sha256, "cannot read the journal for the metrics: {e}");
            return;
        }
    };
    for (key, id) in commented {
        let created = evidence
            .alerts
            .iter()
            .find(|a| &a.composite_id == id)
            .and_then(|a| a.created);
        if let (true, Some(created)) = (done.contains(key), created) {
            crate::metrics::written_back(created);
        }
    }
}
