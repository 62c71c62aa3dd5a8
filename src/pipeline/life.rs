//! The life of a sample: its states and the transitions between them.
//!
//! A hash is [`Life::Seen`] in evidence, then [`Life::Submitting`] (written ahead of the
//! upload, after the download), [`Life::Submitted`] (VMRay accepted it), and ends a cycle
//! [`Life::Finished`] (acted on), [`Life::Failed`] (kept with its evidence for later cycles) or
//! [`Life::GivenUp`]. Each transition below is the one place that writes that change to the
//! sample's row in the state store; the SQL stays in `state.rs`, the orchestration (what to call
//! when) in `sample.rs`. The order of these writes is what makes a crash anywhere resume
//! exactly once, so `sample.rs` calls them in the order the life goes, never ahead of the work
//! they record.

use time::OffsetDateTime;

use super::blame::Blame;
use super::collect::Evidence;
use super::report::Step;
use crate::model::{Sha256, Verdict};
use crate::state::{SampleRecord, SampleState, StateError, StateStore};

/// Where a sample stands, as its row in the state store says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Life {
    /// In evidence, with no row yet (or none this build can resume from).
    Seen,
    /// About to be uploaded: if the process died here, VMRay may or may not have the file.
    Submitting {
        /// For a resubmission, the newest submission VMRay had before the upload.
        baseline: Option<u64>,
        /// The analysis deadline counts from here.
        since: Option<OffsetDateTime>,
    },
    /// VMRay accepted it: its analysis is waited for, never resubmitted.
    Submitted {
        submission_id: u64,
        sample_id: u64,
        submitted_at: OffsetDateTime,
    },
    /// Analysed and acted on.
    Finished { verdict: String },
    /// Failed this time, kept with its evidence for later cycles.
    Failed {
        reason: Option<String>,
        /// VMRay's, when the failure came after it: a retry acts on it instead of resubmitting.
        verdict: Option<String>,
        submission_id: Option<u64>,
        /// Since when it has been failing for reasons of its own; `give_up_after` counts from here.
        failing_since: Option<OffsetDateTime>,
    },
    /// Failed and not tried again (new evidence about the hash starts over).
    GivenUp { reason: Option<String> },
}

impl Life {
    /// The life a row records. A `submitted` row without its ids (never written by this build)
    /// reads as [`Life::Seen`]: [`broken`] tells the orchestrator to refuse it.
    pub(super) fn of(record: Option<&SampleRecord>) -> Life {
        let Some(record) = record else {
            return Life::Seen;
        };
        match record.state {
            SampleState::Submitting => Life::Submitting {
                baseline: record.baseline_submission,
                since: record.submitted_at,
            },
            SampleState::Submitted => {
                match (record.submission_id, record.sample_id, record.submitted_at) {
                    (Some(submission_id), Some(sample_id), Some(submitted_at)) => Life::Submitted {
                        submission_id,
                        sample_id,
                        submitted_at,
                    },
                    _ => Life::Seen,
                }
            }
            SampleState::Finished => match &record.verdict {
                Some(verdict) => Life::Finished {
                    verdict: verdict.clone(),
                },
                None => Life::Seen,
            },
            // Giving up drops the evidence: a failed row without it is never retried.
            SampleState::Failed if record.evidence_json.is_none() => Life::GivenUp {
                reason: record.last_error.clone(),
            },
            SampleState::Failed => Life::Failed {
                reason: record.last_error.clone(),
                verdict: record.verdict.clone(),
                submission_id: record.submission_id,
                failing_since: record.failing_since,
            },
        }
    }
}

/// A `submitted` row the connector cannot wait on: it lacks the submission it would poll.
pub(super) fn broken(record: &SampleRecord) -> bool {
    record.state == SampleState::Submitted
        && (record.submission_id.is_none()
            || record.sample_id.is_none()
            || record.submitted_at.is_none())
}

/// Why a sample is given up: a permanent failure of its own, or failing for reasons of its own
/// for longer than `give_up_after`. Never a count of cycles, never an outage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum GiveUp {
    Permanent,
    GiveUpAfter,
}

impl GiveUp {
    /// The `reason` label of `connector_samples_given_up_total`.
    pub fn label(self) -> &'static str {
        match self {
            GiveUp::Permanent => "permanent",
            GiveUp::GiveUpAfter => "give_up_after",
        }
    }
}

/// One hash in a cycle: the evidence about it and where it stands.
#[derive(Debug)]
pub(super) struct Sample {
    pub evidence: Evidence,
    pub life: Life,
    /// The evidence as its row holds it: a poll that learnt nothing new writes nothing.
    saved: Option<String>,
}

impl Sample {
    /// A sample as the cycle found it: fresh evidence, or a row an earlier cycle left.
    pub(super) fn new(evidence: Evidence, record: Option<&SampleRecord>) -> Sample {
        Sample {
            life: Life::of(record),
            evidence,
            saved: record.and_then(|r| r.evidence_json.clone()),
        }
    }

    pub(super) fn sha256(&self) -> &Sha256 {
        &self.evidence.sha256
    }

    fn evidence_json(&self) -> String {
        serde_json::to_string(&self.evidence).expect("evidence serialises")
    }

    /// Reads the sample's row (writes nothing) and says whether it is finished with every
    /// alert and quarantine record of this evidence already acted on for its verdict.
    pub(super) fn observe(&mut self, store: &StateStore) -> Result<bool, StateError> {
        let record = store.sample(self.sha256())?;
        self.life = Life::of(record.as_ref());
        let Life::Finished { verdict } = &self.life else {
            return Ok(false);
        };
        store.all_handled(self.sha256(), verdict, &evidence_ids(&self.evidence))
    }

    /// Write-ahead of the upload, strictly after the download: a crash from here on is
    /// recovered by looking for a submission newer than `baseline`, never by uploading twice.
    pub(super) fn submitting(
        &mut self,
        store: &StateStore,
        baseline: Option<u64>,
        at: OffsetDateTime,
    ) -> Result<(), StateError> {
        let json = self.evidence_json();
        store.record_submitting(self.sha256(), &json, baseline, at)?;
        self.saved = Some(json);
        self.life = Life::Submitting {
            baseline,
            since: Some(at),
        };
        Ok(())
    }

    /// VMRay has the file: from here on its analysis is waited for, never resubmitted.
    pub(super) fn submitted(
        &mut self,
        store: &StateStore,
        submission_id: u64,
        sample_id: u64,
        submitted_at: OffsetDateTime,
    ) -> Result<(), StateError> {
        store.record_submitted(self.sha256(), submission_id, sample_id, submitted_at)?;
        self.life = Life::Submitted {
            submission_id,
            sample_id,
            submitted_at,
        };
        Ok(())
    }

    /// The analysis outlasted this cycle: it stays submitted, with the evidence gathered so
    /// far (this cycle may have added alerts the next ones no longer see). The daemon's
    /// waiting clock polls a thousand submissions every `poll_interval`: a row whose evidence
    /// did not change is not written again.
    pub(super) fn still_running(&mut self, store: &StateStore) -> Result<(), StateError> {
        let json = self.evidence_json();
        if self.saved.as_deref() == Some(json.as_str()) {
            return Ok(());
        }
        store.keep_waiting(self.sha256(), &json)?;
        self.saved = Some(json);
        Ok(())
    }

    /// Acted on `verdict`: the row is finished, then every alert and quarantine record of the
    /// evidence is marked handled for it (so the next cycles skip them).
    pub(super) fn finished(
        &mut self,
        store: &StateStore,
        verdict: Verdict,
    ) -> Result<(), StateError> {
        store.record_finished(self.sha256(), verdict.as_str())?;
        self.life = Life::Finished {
            verdict: verdict.as_str().to_string(),
        };
        store.record_handled(
            self.sha256(),
            verdict.as_str(),
            &evidence_ids(&self.evidence),
        )
    }

    /// Failed at `step`: kept, with its evidence, for later cycles, or given up. At once for a
    /// permanent failure of its own; after failing for reasons of its own for longer than
    /// `give_up_after`; never for an outage, however many cycles it lasts. A give-up is logged
    /// with its reason and counted in `connector_samples_given_up_total{step,reason}`.
    /// Returns the reason to report (saying when it was given up) and whether it was.
    pub(super) fn failed(
        &mut self,
        store: &StateStore,
        step: Step,
        reason: String,
        blame: Blame,
        verdict: Option<Verdict>,
        give_up_after: u64,
    ) -> (String, Option<GiveUp>) {
        let sha = self.sha256().clone();
        let evidence_json = blame.retry().then(|| self.evidence_json());
        let recorded = store.record_failed(
            &sha,
            &reason,
            evidence_json.as_deref(),
            verdict.map(Verdict::as_str),
            blame != Blame::Service,
        );
        let failing_since = match recorded {
            Ok(since) => since,
            Err(e) => {
                tracing::error!(sha256 = %sha, "cannot record the failure: {e}");
                None
            }
        };
        let bound = super::blame::give_up_bound(give_up_after);
        let (reason, given_up) = match (blame, failing_since) {
            // Only an analysis still running `give_up_after` after its submission times out.
            (Blame::Permanent, _) if step == Step::Timeout => (reason, Some(GiveUp::GiveUpAfter)),
            (Blame::Permanent, _) => (reason, Some(GiveUp::Permanent)),
            (Blame::Sample, Some(since)) if OffsetDateTime::now_utc() - since >= bound => {
                let reason = format!(
                    "{reason}; failing since {since} for reasons of its own, longer than \
                     give_up_after ({give_up_after} s)"
                );
                // Counted and logged as given up only once the store says so: a sample whose
                // give-up was not written is still failing, and the next cycle decides again.
                match store.give_up(&sha, &reason) {
                    Ok(()) => (reason, Some(GiveUp::GiveUpAfter)),
                    Err(e) => {
                        tracing::error!(sha256 = %sha, "cannot record giving the sample up, it is kept for a retry: {e}");
                        (reason, None)
                    }
                }
            }
            _ => (reason, None),
        };
        self.life = match (given_up, evidence_json) {
            (None, Some(_)) => self.failing(&reason, verdict, failing_since),
            _ => Life::GivenUp {
                reason: Some(reason.clone()),
            },
        };
        if let Some(why) = given_up {
            tracing::warn!(
                sha256 = %sha,
                step = step.label(),
                reason = why.label(),
                "giving the sample up, its alerts and quarantined files are left without a verdict: {reason}"
            );
            crate::metrics::sample_given_up(step.label(), why.label());
        }
        (reason, given_up)
    }

    /// Its IOCs, created with every other sample's at the end of the cycle, failed: kept with
    /// its evidence for a retry like any sample whose write-back failed. Whether to give it up
    /// is decided when the next cycle retries it. Falcon failing them all (down, rate limits,
    /// a refused token) does not count against the sample (`own` false).
    pub(super) fn failed_in_batch(
        &mut self,
        store: &StateStore,
        reason: &str,
        own: bool,
    ) -> Result<(), StateError> {
        let failing_since = store.record_failed(
            self.sha256(),
            reason,
            Some(&self.evidence_json()),
            None,
            own,
        )?;
        self.life = self.failing(reason, None, failing_since);
        Ok(())
    }

    /// The life after a failure kept for later cycles: the row keeps its submission and
    /// verdict unless the failure brought a verdict of its own.
    fn failing(
        &self,
        reason: &str,
        verdict: Option<Verdict>,
        failing_since: Option<OffsetDateTime>,
    ) -> Life {
        let (earlier_verdict, submission_id) = match &self.life {
            Life::Submitted { submission_id, .. } => (None, Some(*submission_id)),
            Life::Finished { verdict } => (Some(verdict.clone()), None),
            Life::Failed {
                verdict,
                submission_id,
                ..
            } => (verdict.clone(), *submission_id),
            _ => (None, None),
        };
        Life::Failed {
            reason: Some(reason.to_string()),
            verdict: verdict.map(|v| v.as_str().to_string()).or(earlier_verdict),
            submission_id,
            failing_since,
        }
    }
}

/// The ids of the alerts and quarantine records in the evidence.
fn evidence_ids(evidence: &Evidence) -> Vec<String> {
    evidence
        .alerts
        .iter()
        .map(|a| a.composite_id.clone())
        .chain(evidence.quarantines.iter().map(|q| q.id.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(c: char) -> Sha256 {
        c.to_string().repeat(64).parse().unwrap()
    }

    fn store() -> (tempfile::TempDir, StateStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(&dir.path().join("state.db")).unwrap();
        (dir, store)
    }

    fn row(store: &StateStore, sample: &Sample) -> SampleRecord {
        store.sample(sample.sha256()).unwrap().expect("a row")
    }

    /// Evidence of one quarantined copy of the file, `id` naming the record.
    fn evidence(sha256: Sha256, id: &str) -> Evidence {
        let mut evidence = Evidence::new(sha256.clone());
        evidence.quarantines.push(crate::model::QuarantineEvidence {
            id: id.into(),
            sha256,
            device_id: None,
            hostname: None,
            filename: None,
            path: None,
            state: "quarantined".into(),
            created: None,
            updated: None,
        });
        evidence
    }

    fn at(unix: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(unix).unwrap()
    }

    #[test]
    fn observing_writes_nothing_and_reads_the_row() {
        let (_dir, store) = store();
        let mut sample = Sample::new(Evidence::new(sha('a')), None);
        assert!(!sample.observe(&store).unwrap());
        assert_eq!(sample.life, Life::Seen);
        assert_eq!(store.sample(sample.sha256()).unwrap(), None);
    }

    #[test]
    fn submitting_then_submitted_write_only_their_row() {
        let (_dir, store) = store();
        let mut sample = Sample::new(Evidence::new(sha('a')), None);
        let other = Sample::new(Evidence::new(sha('b')), None);
        sample.submitting(&store, Some(7), at(1_000)).unwrap();
        let written = row(&store, &sample);
        assert_eq!(written.state, SampleState::Submitting);
        assert_eq!(written.baseline_submission, Some(7));
        assert!(written.evidence_json.is_some());
        assert_eq!(Life::of(Some(&written)), sample.life);

        sample.submitted(&store, 8, 9, at(1_001)).unwrap();
        let written = row(&store, &sample);
        assert_eq!(written.state, SampleState::Submitted);
        assert_eq!(
            (written.submission_id, written.sample_id),
            (Some(8), Some(9))
        );
        assert_eq!(Life::of(Some(&written)), sample.life);
        assert_eq!(store.sample(other.sha256()).unwrap(), None);
    }

    #[test]
    fn still_running_keeps_a_submission_in_flight_with_the_new_evidence() {
        let (_dir, store) = store();
        let mut sample = Sample::new(Evidence::new(sha('a')), None);
        sample.submitting(&store, None, at(1_000)).unwrap();
        sample.submitted(&store, 8, 9, at(1_001)).unwrap();
        // This cycle saw one more record of the file than the cycle that submitted it.
        sample.evidence = evidence(sha('a'), "q1");
        sample.still_running(&store).unwrap();
        let after = row(&store, &sample);
        assert_eq!(after.state, SampleState::Submitted);
        assert_eq!(after.submission_id, Some(8));
        assert!(after.evidence_json.unwrap().contains("q1"));
        assert_eq!(store.in_flight().unwrap().len(), 1);
    }

    #[test]
    fn finished_writes_the_verdict_and_marks_the_evidence_handled() {
        let (_dir, store) = store();
        let mut sample = Sample::new(evidence(sha('a'), "q1"), None);
        sample.submitting(&store, None, at(1_000)).unwrap();
        sample.finished(&store, Verdict::Malicious).unwrap();
        let written = row(&store, &sample);
        assert_eq!(written.state, SampleState::Finished);
        assert_eq!(written.verdict.as_deref(), Some("malicious"));
        assert_eq!(written.evidence_json, None);
        assert_eq!(Life::of(Some(&written)), sample.life);
        // Finished with every record of this evidence handled: the next cycle skips it, but
        // not a record it has not acted on.
        let mut again = Sample::new(evidence(sha('a'), "q1"), None);
        assert!(again.observe(&store).unwrap());
        assert_eq!(again.life, sample.life);
        let mut more = Sample::new(evidence(sha('a'), "q2"), None);
        assert!(!more.observe(&store).unwrap());
    }

    #[test]
    fn failing_for_an_outage_keeps_the_sample_and_starts_no_clock() {
        let (_dir, store) = store();
        let mut sample = Sample::new(Evidence::new(sha('a')), None);
        let (reason, given_up) = sample.failed(
            &store,
            Step::Lookup,
            "VMRay is down".into(),
            Blame::Service,
            None,
            60,
        );
        assert_eq!((reason.as_str(), given_up), ("VMRay is down", None));
        let written = row(&store, &sample);
        assert_eq!(written.state, SampleState::Failed);
        assert_eq!(written.failing_since, None);
        assert!(written.evidence_json.is_some());
        assert_eq!(Life::of(Some(&written)), sample.life);
        assert_eq!(store.retry_pending().unwrap().len(), 1);
    }

    #[test]
    fn failing_for_its_own_reasons_past_give_up_after_gives_it_up() {
        let (_dir, store) = store();
        let mut sample = Sample::new(Evidence::new(sha('a')), None);
        let (_, given_up) = sample.failed(
            &store,
            Step::Download,
            "gone".into(),
            Blame::Sample,
            None,
            0,
        );
        assert_eq!(given_up, Some(GiveUp::GiveUpAfter));
        let written = row(&store, &sample);
        assert_eq!(written.state, SampleState::Failed);
        assert_eq!(written.evidence_json, None, "given up: never retried");
        assert!(matches!(sample.life, Life::GivenUp { .. }));
        assert_eq!(Life::of(Some(&written)), sample.life);
        assert!(store.retry_pending().unwrap().is_empty());
    }

    #[test]
    fn a_permanent_failure_is_given_up_at_once() {
        let (_dir, store) = store();
        let mut sample = Sample::new(Evidence::new(sha('a')), None);
        let (_, given_up) = sample.failed(
            &store,
            Step::Submit,
            "refused".into(),
            Blame::Permanent,
            None,
            3_600,
        );
        assert_eq!(given_up, Some(GiveUp::Permanent));
        assert!(store.retry_pending().unwrap().is_empty());
    }

    #[test]
    fn a_failed_ioc_batch_keeps_the_sample_for_a_retry() {
        let (_dir, store) = store();
        let mut sample = Sample::new(Evidence::new(sha('a')), None);
        sample
            .failed_in_batch(&store, "IOC creation failed", true)
            .unwrap();
        let written = row(&store, &sample);
        assert_eq!(written.state, SampleState::Failed);
        assert!(written.failing_since.is_some());
        assert_eq!(Life::of(Some(&written)), sample.life);
        assert_eq!(store.retry_pending().unwrap().len(), 1);
    }

    /// The sample's row is written only by the transitions above: every other file of the
    /// pipeline goes through them, so the life of a sample can be read in one place.
    #[test]
    fn only_life_writes_sample_rows() {
        let sources = [
            ("act.rs", include_str!("act.rs")),
            ("blame.rs", include_str!("blame.rs")),
            ("collect.rs", include_str!("collect.rs")),
            ("lookup.rs", include_str!("lookup.rs")),
            ("mod.rs", include_str!("mod.rs")),
            ("plan.rs", include_str!("plan.rs")),
            ("report.rs", include_str!("report.rs")),
            ("sample.rs", include_str!("sample.rs")),
            ("wait.rs", include_str!("wait.rs")),
            ("waiting.rs", include_str!("waiting.rs")),
            ("claims.rs", include_str!("claims.rs")),
        ];
        let writers = [
            "record_submitting(",
            "record_submitted(",
            "keep_waiting(",
            "record_finished(",
            "record_handled(",
            "record_failed(",
        ];
        for (file, source) in sources {
            // Calls may be split over lines (`store\n    .record_failed(`): join them.
            let joined: String = source.split_whitespace().collect();
            for writer in writers {
                assert!(
                    !joined.contains(&format!(".{writer}")),
                    "{file} calls the store's {writer}..): only pipeline::life may"
                );
            }
            // `Actor::give_up` (act.rs) gives up journal actions, not samples: only a call on
            // the store counts.
            assert!(
                !joined.contains("store.give_up("),
                "{file} calls the store's give_up(..): only pipeline::life may"
            );
        }
        // The list above names every file of the pipeline: a new one must be added.
        let files = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/src/pipeline"))
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|name| name.ends_with(".rs") && name != "life.rs")
            .count();
        assert_eq!(
            files,
            sources.len(),
            "add the new pipeline file to this test"
        );
        // And the check sees a call where there is one.
        let life: String = include_str!("life.rs").split_whitespace().collect();
        assert!(life.contains("store.give_up(") && life.contains(".record_failed("));
    }
}
