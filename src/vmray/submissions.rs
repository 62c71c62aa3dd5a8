//! Submitting a file and following the submission until it is done.
//!
//! A submission costs the customer quota and starts a detonation, so it is never sent twice
//! blindly: it is retried only when VMRay certainly refused it (429, or no connection at all).
//! After an ambiguous failure (timeout, 5xx, reset, unreadable answer) the connector asks VMRay
//! by hash whether the sample arrived instead of uploading again. Only after a 5xx answer, when
//! the lookup shows the upload did not arrive, is it sent once more: an answer came back, so the
//! upload is over. After a timeout or a broken connection VMRay may still be taking the file in,
//! and the sample is left to the next cycle's lookup.

use std::path::Path;

use backon::Retryable;
use reqwest::multipart::{Form, Part};

use super::wire::{self, SubmitResult};
use super::{Failure, SubmissionState, SubmitOptions, Submitted, VmrayClient, VmrayError, chain};
use crate::model::Sha256;

impl VmrayClient {
    /// Streams the file to VMRay. After an ambiguous failure it looks the hash up; see the
    /// module documentation for the one case it sends the file again.
    pub async fn submit(
        &self,
        file: &Path,
        sha256: &Sha256,
        options: &SubmitOptions,
    ) -> Result<Submitted, VmrayError> {
        let size = tokio::fs::metadata(file)
            .await
            .map_err(|e| VmrayError::SampleFile {
                path: file.to_path_buf(),
                reason: e.to_string(),
            })?
            .len();
        if let Some(limit) = self.upload_limit().await
            && size > limit
        {
            return Err(VmrayError::FileTooLarge { size, limit });
        }

        let url = self.url("/rest/sample/submit");
        let timeout = upload_timeout(self.settings(), size);
        for last_try in [false, true] {
            let attempt = || async {
                let form = self.submit_form(file, sha256, options).await?;
                let request = self.inner.http.post(&url).multipart(form).timeout(timeout);
                self.send(request).await
            };
            let outcome = attempt
                .retry(self.backoff())
                .sleep(self.pause())
                .when(Failure::certainly_rejected_transiently)
                .adjust(|failure, delay| self.retry_delay(failure, delay))
                .notify(|failure, delay| {
                    super::note_throttle(failure, delay);
                    tracing::warn!(%sha256, error = %failure, delay_ms = delay.as_millis() as u64,
                        "VMRay refused the submission, sending it again");
                })
                .await;

            let failure = match outcome {
                Ok(envelope) => {
                    let result: SubmitResult =
                        super::decode_data(envelope.data, "the submission result")?;
                    return submitted(&result, sha256);
                }
                Err(Failure::Local(reason)) => {
                    return Err(VmrayError::SampleFile {
                        path: file.to_path_buf(),
                        reason,
                    });
                }
                Err(Failure::Interrupted) => return Err(VmrayError::Interrupted),
                Err(failure) if failure.is_ambiguous() => failure,
                Err(failure) => return Err(failure.into_error("submission endpoint")),
            };
            tracing::warn!(%sha256, error = %failure,
                "the submission may have reached VMRay; looking the hash up instead of sending it again");
            let reason = failure.to_string();
            let answered_5xx = matches!(failure, Failure::Status { status, .. } if status >= 500);
            match self
                .confirm_submission(sha256, options.previous_submission, &reason)
                .await?
            {
                Some(found) => return Ok(found),
                // Not there, and VMRay answered, so the upload is over: one more is safe.
                None if answered_5xx && !last_try => {
                    tracing::warn!(%sha256, "the submission did not reach VMRay; sending it once more");
                }
                None => {
                    return Err(VmrayError::SubmitUnconfirmed {
                        sha256: sha256.clone(),
                        reason: format!("{reason}; VMRay does not have it"),
                    });
                }
            }
        }
        unreachable!("the last try returns")
    }

    /// The multipart body, built afresh for every attempt (a streamed body cannot be replayed).
    async fn submit_form(
        &self,
        file: &Path,
        sha256: &Sha256,
        options: &SubmitOptions,
    ) -> Result<Form, Failure> {
        let settings = self.settings();
        let part = Part::file(file)
            .await
            .map_err(|e| Failure::Local(e.to_string()))?
            .file_name(sha256.to_string())
            .mime_str("application/octet-stream")
            .map_err(|e| Failure::Local(chain(&e)))?;
        let mut form = Form::new().part("sample_file", part);
        if !settings.submission_comment.is_empty() {
            form = form.text("comment", settings.submission_comment.clone());
        }
        if !settings.submission_tags.is_empty() {
            form = form.text("tags", settings.submission_tags.join(","));
        }
        form = form
            .text(
                "user_config",
                serde_json::json!({ "timeout": settings.analysis_timeout }).to_string(),
            )
            .text("analyzer_mode", settings.analyzer_mode.as_str())
            .text(
                "reanalyze",
                if options.reanalyze { "True" } else { "False" },
            );
        if let Some(name) = options
            .original_filename
            .as_deref()
            .filter(|n| !n.is_empty())
        {
            form = form.text("sample_filename_b64enc", base64(name.as_bytes()));
        }
        Ok(form)
    }

    /// After an ambiguous failure: the sample's newest submission (newer than `previous`) if
    /// VMRay has one, `None` when it certainly has not, `SubmitUnconfirmed` when it cannot tell.
    async fn confirm_submission(
        &self,
        sha256: &Sha256,
        previous: Option<u64>,
        reason: &str,
    ) -> Result<Option<Submitted>, VmrayError> {
        let unconfirmed = |detail: String| VmrayError::SubmitUnconfirmed {
            sha256: sha256.clone(),
            reason: format!("{reason}; {detail}"),
        };
        let samples: Vec<wire::Sample> = self
            .get_list(
                &format!("/rest/sample/sha256/{sha256}"),
                &[],
                &format!("sample {sha256}"),
            )
            .await
            .map_err(|e| unconfirmed(format!("the lookup by hash failed too: {e}")))?;
        let Some(sample_id) = samples.iter().find_map(|s| s.sample_id) else {
            return Ok(None);
        };
        let submissions: Vec<wire::Submission> = self
            .get_list(
                &format!("/rest/submission/sample/{sample_id}"),
                &[],
                &format!("submissions of sample {sample_id}"),
            )
            .await
            .map_err(|e| {
                unconfirmed(format!(
                    "VMRay knows the sample ({sample_id}) but its submissions cannot be read: {e}"
                ))
            })?;
        let newest = submissions
            .iter()
            .filter_map(|s| s.submission_id)
            .filter(|id| previous.is_none_or(|old| *id > old))
            .max();
        Ok(newest.map(|submission_id| {
            tracing::info!(%sha256, submission_id, sample_id, "the submission did reach VMRay");
            Submitted {
                submission_id,
                sample_id,
            }
        }))
    }

    /// The id of the sample's newest submission, `None` when it lists none.
    pub async fn latest_submission(&self, sample_id: u64) -> Result<Option<u64>, VmrayError> {
        let submissions: Vec<wire::Submission> = self
            .get_list(
                &format!("/rest/submission/sample/{sample_id}"),
                &[],
                &format!("submissions of sample {sample_id}"),
            )
            .await?;
        Ok(submissions.iter().filter_map(|s| s.submission_id).max())
    }

    /// Whether the submission is done, and whether it failed (reference §5.4).
    pub async fn submission_state(
        &self,
        submission_id: u64,
    ) -> Result<SubmissionState, VmrayError> {
        let submission: wire::Submission = self
            .get_data(
                &format!("/rest/submission/{submission_id}"),
                &[],
                &format!("submission {submission_id}"),
            )
            .await?;
        if let Some(state) = early_state(&submission) {
            return Ok(state);
        }
        let analyses: Vec<wire::Analysis> = match self
            .get_list(
                &format!("/rest/analysis/submission/{submission_id}"),
                &[],
                &format!("analyses of submission {submission_id}"),
            )
            .await
        {
            Ok(list) => list,
            Err(VmrayError::NotFound { .. }) => Vec::new(),
            Err(e) => return Err(e),
        };
        Ok(finished_state(&analyses))
    }
}

/// The state the submission object alone decides: done with errors (whether or not it says it
/// is finished), or still running. `None` means finished, and the analyses decide.
pub(super) fn early_state(submission: &wire::Submission) -> Option<SubmissionState> {
    let status = submission.submission_status.as_deref().unwrap_or("");
    if status.eq_ignore_ascii_case("error") || submission.submission_has_errors == Some(true) {
        return Some(SubmissionState::Failed {
            reason: format!(
                "VMRay reports errors in the submission (status `{}`, has_errors {})",
                if status.is_empty() { "none" } else { status },
                submission
                    .submission_has_errors
                    .map_or("null".to_string(), |b| b.to_string())
            ),
        });
    }
    if submission.submission_finished == Some(true) {
        None
    } else {
        Some(SubmissionState::Running)
    }
}

/// A finished submission failed when any of its analyses did (`analysis_result_code` other than
/// 1, or the legacy `analysis_severity == "error"`). No analyses at all is not a failure.
pub(super) fn finished_state(analyses: &[wire::Analysis]) -> SubmissionState {
    let failures: Vec<String> = analyses
        .iter()
        .filter(|a| {
            a.analysis_result_code.is_some_and(|code| code != 1)
                || a.analysis_severity
                    .as_deref()
                    .is_some_and(|s| s.eq_ignore_ascii_case("error"))
        })
        .map(|a| {
            format!(
                "analysis {} failed (code {}): {}",
                a.analysis_id.map_or("?".to_string(), |id| id.to_string()),
                a.analysis_result_code
                    .map_or("?".to_string(), |c| c.to_string()),
                a.analysis_result_str
                    .as_deref()
                    .unwrap_or("no reason given")
            )
        })
        .collect();
    if failures.is_empty() {
        SubmissionState::Finished
    } else {
        SubmissionState::Failed {
            reason: failures.join("; "),
        }
    }
}

/// The ids from a 200 answer. A 200 with `errors[]` and no submission is a failure carrying
/// VMRay's message; errors beside a submission are logged.
pub(super) fn submitted(result: &SubmitResult, sha256: &Sha256) -> Result<Submitted, VmrayError> {
    let messages: Vec<&str> = result
        .errors
        .iter()
        .filter_map(|e| e.error_msg.as_deref())
        .collect();
    let Some(submission) = result
        .submissions
        .iter()
        .find(|s| s.submission_id.is_some())
    else {
        return Err(if messages.is_empty() {
            VmrayError::Decode {
                what: "the submission result lists neither a submission nor an error".into(),
            }
        } else {
            VmrayError::Api {
                status: 200,
                message: format!("VMRay did not accept {sha256}: {}", messages.join("; ")),
            }
        });
    };
    if !messages.is_empty() {
        tracing::warn!(%sha256, errors = %messages.join("; "), "VMRay accepted the submission with errors");
    }
    let submission_id = submission.submission_id.unwrap_or_default();
    let sample_id = submission
        .submission_sample_id
        .or_else(|| result.samples.iter().find_map(|s| s.sample_id))
        .ok_or_else(|| VmrayError::Decode {
            what: format!("submission {submission_id} names no submission_sample_id"),
        })?;
    Ok(Submitted {
        submission_id,
        sample_id,
    })
}

/// Standard base64 with padding, for `sample_filename_b64enc` (too small to need a crate).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The request timeout plus the file's size at 512 KiB/s, at most `upload_timeout`.
fn upload_timeout(settings: &super::VmraySettings, size: u64) -> std::time::Duration {
    const SLOWEST_BYTES_PER_SEC: u64 = 512 * 1024;
    let transfer = std::time::Duration::from_secs(size.div_ceil(SLOWEST_BYTES_PER_SEC));
    (settings.request_timeout + transfer).min(settings.upload_timeout)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn submission(json: &str) -> wire::Submission {
        serde_json::from_str(json).unwrap()
    }

    fn analysis(code: Option<i64>, severity: Option<&str>) -> wire::Analysis {
        wire::Analysis {
            analysis_id: Some(1),
            analysis_result_code: code,
            analysis_result_str: Some("boom".into()),
            analysis_severity: severity.map(str::to_string),
            ..Default::default()
        }
    }

    #[test]
    fn base64_matches_the_rfc_vectors() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
        assert_eq!(base64("Rechnung_ü.exe".as_bytes()), "UmVjaG51bmdfw7wuZXhl");
    }

    #[test]
    fn a_submission_not_finished_is_running_and_an_error_status_fails_at_once() {
        assert_eq!(
            early_state(&submission(
                r#"{"submission_finished": false, "submission_status": "in_progress", "submission_has_errors": null}"#
            )),
            Some(SubmissionState::Running)
        );
        assert_eq!(
            early_state(&submission("{}")),
            Some(SubmissionState::Running)
        );
        assert!(matches!(
            early_state(&submission(
                r#"{"submission_finished": false, "submission_status": "error"}"#
            )),
            Some(SubmissionState::Failed { .. })
        ));
        assert!(matches!(
            early_state(&submission(
                r#"{"submission_finished": true, "submission_has_errors": true}"#
            )),
            Some(SubmissionState::Failed { .. })
        ));
        assert_eq!(
            early_state(&submission(
                r#"{"submission_finished": true, "submission_status": "success", "submission_has_errors": false}"#
            )),
            None
        );
    }

    #[test]
    fn a_finished_submission_fails_on_any_failed_analysis_and_not_on_none() {
        assert_eq!(finished_state(&[]), SubmissionState::Finished);
        assert_eq!(
            finished_state(&[analysis(Some(1), Some("malicious")), analysis(None, None)]),
            SubmissionState::Finished
        );
        assert!(matches!(
            finished_state(&[analysis(Some(1), None), analysis(Some(5), None)]),
            SubmissionState::Failed { reason } if reason.contains("code 5") && reason.contains("boom")
        ));
        assert!(matches!(
            finished_state(&[analysis(Some(1), Some("error"))]),
            SubmissionState::Failed { .. }
        ));
    }

    #[test]
    fn an_upload_may_take_as_long_as_its_size_needs_and_no_longer() {
        let mut settings = crate::vmray::VmraySettings::from_config(&Default::default());
        settings.request_timeout = std::time::Duration::from_secs(60);
        settings.upload_timeout = std::time::Duration::from_secs(900);
        assert_eq!(upload_timeout(&settings, 4096).as_secs(), 61);
        assert_eq!(upload_timeout(&settings, 100 << 20).as_secs(), 260);
        assert_eq!(upload_timeout(&settings, 1 << 30).as_secs(), 900);
    }
}
