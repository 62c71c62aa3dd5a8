//! Step 6, report: what a cycle did, as numeric fields of one log event (plus one per kind of
//! action), and as one readable summary line for `demo` and test messages.

use std::collections::BTreeMap;

use serde::Serialize;

use super::blame::Blame;

/// How the actions of one kind fared.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ActionCounts {
    pub done: u64,
    pub failed: u64,
    /// Of `failed`, those that failed for a reason that is the service's (Falcon down,
    /// throttling, a refused token): they say nothing about their entity.
    pub failed_service: u64,
    pub deferred: u64,
    /// Given up this cycle (each also counted in `failed`): never tried again.
    pub given_up: u64,
    /// Dry run: planned, not performed.
    pub planned: u64,
}

/// Actions by kind (`alert_update`, `ioc_create`, ...).
pub type ActionTally = BTreeMap<&'static str, ActionCounts>;

/// Adds `tally`'s counts to `total`'s, kind by kind.
pub fn add_tally(total: &mut ActionTally, tally: &ActionTally) {
    for (kind, counts) in tally {
        let sum = total.entry(kind).or_default();
        sum.done += counts.done;
        sum.failed += counts.failed;
        sum.failed_service += counts.failed_service;
        sum.deferred += counts.deferred;
        sum.given_up += counts.given_up;
        sum.planned += counts.planned;
    }
}

/// The step at which a sample stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    Lookup,
    Download,
    Submit,
    Analysis,
    Timeout,
    Results,
    Act,
}

impl Step {
    /// The step's name in reports, logs and metric labels.
    pub fn label(self) -> &'static str {
        match self {
            Step::Lookup => "lookup",
            Step::Download => "download",
            Step::Submit => "submit",
            Step::Analysis => "analysis",
            Step::Timeout => "timeout",
            Step::Results => "results",
            Step::Act => "act",
        }
    }
}

/// A sample that did not make it through the cycle, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SampleFailure {
    pub sha256: String,
    pub step: Step,
    pub reason: String,
    /// Whose failure it was: a service's failures neither count against the sample nor let
    /// the cycle count as completed when nothing else got through.
    pub blame: Blame,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct CycleReport {
    pub alerts: usize,
    pub quarantine_records: usize,
    pub hashes: usize,
    /// Every alert and record of the hash was already acted on for its verdict.
    pub already_done: usize,
    /// VMRay knew the sample; no submission needed.
    pub known: usize,
    pub submitted: usize,
    /// Submissions (this cycle's or an earlier run's) whose analysis finished.
    pub finished: usize,
    /// VMRay has no usable verdict yet.
    pub no_verdict: usize,
    /// Submissions whose analysis outlasted the cycle's wait: kept in flight, polled again by
    /// later cycles until `give_up_after`.
    pub still_analysing: usize,
    /// Shutdown came first: left in the state store for the next start.
    pub interrupted: usize,
    /// Samples given up this cycle (each also in `failed`, its reason saying why).
    pub given_up: usize,
    pub failed: Vec<SampleFailure>,
    pub actions: ActionTally,
    /// Decisions the planner or the actor made not to act (exclusions, caps).
    pub notes: Vec<String>,
    pub dry_run: bool,
    /// Dry run: unknown samples that would have been downloaded and submitted.
    pub would_submit: usize,
    /// Dry run: every action that would have been performed.
    pub planned: Vec<PlannedRow>,
}

/// One planned action as the dry run shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedRow {
    pub sha256: String,
    pub kind: &'static str,
    pub description: String,
}

impl CycleReport {
    pub fn add_actions(&mut self, tally: &ActionTally) {
        add_tally(&mut self.actions, tally);
    }

    /// A cycle that had work and got none of it anywhere (no verdict read, nothing acted on,
    /// nothing found done already) because a service failed: VMRay or Falcon down, a refused
    /// key, rate limits, unreadable answers, the connector's own disk. So is one that had
    /// write-backs to make and landed none, every one failing for a reason that is the
    /// service's: verdicts read while no write-back can land are not the connector's work done.
    /// It is not a completed cycle: `once` exits 1 and health does not count it.
    pub fn stalled(&self) -> bool {
        let progressed = self.already_done + self.known + self.finished + self.no_verdict;
        let acted = self.actions.values().any(|c| c.done > 0);
        let nothing_through =
            progressed == 0 && self.failed.iter().any(|f| f.blame == Blame::Service);
        let write_backs_refused = self.actions.values().any(|c| c.failed > 0)
            && self.actions.values().all(|c| c.failed == c.failed_service);
        !acted && (nothing_through || write_backs_refused)
    }

    pub fn failed_at(&self, step: Step) -> usize {
        self.failed.iter().filter(|f| f.step == step).count()
    }

    /// One line an operator can read at a glance.
    pub fn summary(&self) -> String {
        let steps = [
            Step::Lookup,
            Step::Download,
            Step::Submit,
            Step::Analysis,
            Step::Timeout,
            Step::Results,
            Step::Act,
        ];
        let failures: Vec<String> = steps
            .iter()
            .filter_map(|step| {
                let n = self.failed_at(*step);
                (n > 0).then(|| {
                    format!(
                        "{}={n}",
                        serde_json::to_value(step).unwrap().as_str().unwrap_or("?")
                    )
                })
            })
            .collect();
        let actions: Vec<String> = self
            .actions
            .iter()
            .map(|(kind, c)| {
                if self.dry_run {
                    format!("{kind}={} planned", c.planned)
                } else {
                    let mut text = format!("{kind}={}", c.done);
                    if c.failed > 0 {
                        text.push_str(&format!(" ({} failed)", c.failed));
                    }
                    if c.deferred > 0 {
                        text.push_str(&format!(" ({} deferred)", c.deferred));
                    }
                    if c.given_up > 0 {
                        text.push_str(&format!(" ({} given up)", c.given_up));
                    }
                    text
                }
            })
            .collect();
        format!(
            "{}alerts={} quarantine_records={} hashes={} already_done={} known={} submitted={} finished={} still_analysing={} no_verdict={} interrupted={} failed={}{} given_up={} | actions: {}",
            if self.dry_run {
                format!("[dry run] would_submit={} ", self.would_submit)
            } else {
                String::new()
            },
            self.alerts,
            self.quarantine_records,
            self.hashes,
            self.already_done,
            self.known,
            self.submitted,
            self.finished,
            self.still_analysing,
            self.no_verdict,
            self.interrupted,
            self.failed.len(),
            if failures.is_empty() {
                String::new()
            } else {
                format!(" ({})", failures.join(", "))
            },
            self.given_up,
            if actions.is_empty() {
                "none".to_string()
            } else {
                actions.join(", ")
            }
        )
    }

    /// Logs the cycle's report. Every counter is a numeric field of the `cycle report` event
    /// (in JSON logs, of that one object; in text logs, `key=value` after the message), failures
    /// by step only when not zero; then one `cycle report: actions` event per kind of action
    /// with its counts, so a log pipeline sums them without parsing a message.
    /// A round of the daemon's waiting clock, when it did something: analyses finished and
    /// acted on, failed, or given up. A round that only found analyses still running is quiet
    /// (it comes every second or so).
    pub fn log_waiting(&self) {
        if self.finished + self.no_verdict + self.failed.len() == 0 && self.actions.is_empty() {
            return;
        }
        let total =
            |count: fn(&ActionCounts) -> u64| -> u64 { self.actions.values().map(count).sum() };
        tracing::info!(
            polled = self.hashes,
            finished = self.finished,
            still_analysing = self.still_analysing,
            no_verdict = self.no_verdict,
            failed = self.failed.len(),
            actions_done = total(|c| c.done),
            actions_failed = total(|c| c.failed),
            actions_deferred = total(|c| c.deferred),
            actions_given_up = total(|c| c.given_up),
            given_up = self.given_up,
            "waiting report"
        );
        // An outage fails every poll of a round alike: one line for all of them.
        let (outage, own): (Vec<_>, Vec<_>) = self
            .failed
            .iter()
            .partition(|f| f.step == Step::Analysis && f.blame == Blame::Service);
        if let Some(first) = outage.first() {
            tracing::warn!(
                count = outage.len(),
                "{} submission(s) in flight could not be polled, e.g. {}: {}",
                outage.len(),
                first.sha256,
                first.reason
            );
        }
        let rest = CycleReport {
            failed: own.into_iter().cloned().collect(),
            notes: self.notes.clone(),
            actions: self.actions.clone(),
            ..CycleReport::default()
        };
        rest.log_details();
    }

    /// Per kind of action, per failed sample and per note: one event each.
    fn log_details(&self) {
        for (kind, counts) in &self.actions {
            tracing::info!(
                kind = *kind,
                done = counts.done,
                failed = counts.failed,
                deferred = counts.deferred,
                given_up = counts.given_up,
                planned = counts.planned,
                "cycle report: actions"
            );
        }
        for failure in &self.failed {
            tracing::warn!(
                sha256 = %failure.sha256,
                step = ?failure.step,
                "sample not completed: {}",
                failure.reason
            );
        }
        for note in &self.notes {
            tracing::info!("{note}");
        }
    }

    pub fn log(&self) {
        let failed_at = |step: Step| Some(self.failed_at(step) as u64).filter(|n| *n > 0);
        let total =
            |count: fn(&ActionCounts) -> u64| -> u64 { self.actions.values().map(count).sum() };
        tracing::info!(
            alerts = self.alerts,
            quarantine_records = self.quarantine_records,
            hashes = self.hashes,
            already_done = self.already_done,
            known = self.known,
            submitted = self.submitted,
            finished = self.finished,
            still_analysing = self.still_analysing,
            no_verdict = self.no_verdict,
            interrupted = self.interrupted,
            failed = self.failed.len(),
            failed_lookup = failed_at(Step::Lookup),
            failed_download = failed_at(Step::Download),
            failed_submit = failed_at(Step::Submit),
            failed_analysis = failed_at(Step::Analysis),
            failed_timeout = failed_at(Step::Timeout),
            failed_results = failed_at(Step::Results),
            failed_act = failed_at(Step::Act),
            actions_done = total(|c| c.done),
            actions_failed = total(|c| c.failed),
            actions_deferred = total(|c| c.deferred),
            actions_given_up = total(|c| c.given_up),
            actions_planned = total(|c| c.planned),
            given_up = self.given_up,
            dry_run = self.dry_run,
            would_submit = self.dry_run.then_some(self.would_submit),
            "cycle report"
        );
        self.log_details();
        if self.dry_run {
            // One event per action: a table row in text logs, one object in JSON logs.
            for row in &self.planned {
                tracing::info!(
                    sha256 = %row.sha256,
                    kind = row.kind,
                    "[dry run] would {}",
                    row.description
                );
            }
        }
    }

    /// The dry run's plan as a table, for people.
    pub fn planned_table(&self) -> String {
        let mut out = format!(
            "{:<16}  {:<17}  {}\n",
            "SHA256", "ACTION", "WHAT IT WOULD DO"
        );
        for row in &self.planned {
            out.push_str(&format!(
                "{:<16}  {:<17}  {}\n",
                &row.sha256[..row.sha256.len().min(16)],
                row.kind,
                row.description
            ));
        }
        if self.would_submit > 0 {
            out.push_str(&format!(
                "{} unknown sample(s) would be downloaded from Falcon and submitted to VMRay\n",
                self.would_submit
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_names_failures_by_step_and_actions_by_kind() {
        let mut report = CycleReport {
            alerts: 3,
            hashes: 2,
            ..CycleReport::default()
        };
        report.failed.push(SampleFailure {
            sha256: "a".into(),
            step: Step::Download,
            reason: "404".into(),
            blame: Blame::Sample,
        });
        let mut tally = ActionTally::new();
        tally.insert(
            "alert_update",
            ActionCounts {
                done: 2,
                failed: 1,
                ..ActionCounts::default()
            },
        );
        report.add_actions(&tally);
        let line = report.summary();
        assert!(
            line.contains("alerts=3") && line.contains("hashes=2"),
            "{line}"
        );
        assert!(line.contains("failed=1 (download=1)"), "{line}");
        assert!(line.contains("alert_update=2 (1 failed)"), "{line}");
    }

    #[test]
    fn a_cycle_is_stalled_only_when_a_service_stopped_everything() {
        let outage = |blame| SampleFailure {
            sha256: "a".into(),
            step: Step::Lookup,
            reason: "VMRay rejected the API key".into(),
            blame,
        };
        let mut report = CycleReport {
            hashes: 1,
            failed: vec![outage(Blame::Service)],
            ..CycleReport::default()
        };
        assert!(report.stalled());
        report.known = 1;
        assert!(!report.stalled(), "one sample got through");
        let own = CycleReport {
            hashes: 1,
            failed: vec![outage(Blame::Sample)],
            ..CycleReport::default()
        };
        assert!(
            !own.stalled(),
            "a sample's own failure is the cycle's work done"
        );
        assert!(!CycleReport::default().stalled(), "nothing to do is done");
    }

    #[test]
    fn a_cycle_whose_write_backs_all_failed_for_the_service_is_stalled() {
        let tally = |done, failed, failed_service| {
            let mut report = CycleReport {
                hashes: 2,
                known: 2,
                ..CycleReport::default()
            };
            let mut tally = ActionTally::new();
            tally.insert(
                "alert_update",
                ActionCounts {
                    done,
                    failed,
                    failed_service,
                    ..ActionCounts::default()
                },
            );
            tally.insert(
                "quarantine_update",
                ActionCounts {
                    failed: 1,
                    failed_service: 1,
                    ..ActionCounts::default()
                },
            );
            report.add_actions(&tally);
            report
        };
        assert!(tally(0, 3, 3).stalled(), "Falcon refused every write-back");
        assert!(!tally(1, 3, 3).stalled(), "one write-back landed");
        assert!(
            !tally(0, 3, 2).stalled(),
            "an entity's own refusal is the cycle's work done"
        );
        let mut verdicts_only = tally(0, 0, 0);
        verdicts_only.actions.clear();
        assert!(!verdicts_only.stalled(), "nothing to write back");
    }
}
