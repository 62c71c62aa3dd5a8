//! What VMRay already knows about a sample: lookup by SHA-256, by id, and the time of its latest
//! analysis (for `resubmit_after_days`).

use time::OffsetDateTime;

use super::wire::{self, parse_timestamp};
use super::{SampleInfo, VmrayClient, VmrayError};
use crate::model::{Sha256, Verdict};

impl VmrayClient {
    /// The sample with this hash, or `None` when VMRay has never seen it (an empty list, not a
    /// 404). Every failure is an error, never "not found": treating a 429 as "unknown" would
    /// re-submit samples and burn quota.
    pub async fn lookup(&self, sha256: &Sha256) -> Result<Option<SampleInfo>, VmrayError> {
        let samples: Vec<wire::Sample> = match self
            .get_list(
                &format!("/rest/sample/sha256/{sha256}"),
                &[],
                &format!("sample {sha256}"),
            )
            .await
        {
            Ok(samples) => samples,
            // VMRay answers an unknown hash with an empty list, so a 404 here says the path is
            // not VMRay's, whatever the body: the service's failure, never the sample's.
            Err(VmrayError::NotFound { what }) => {
                return Err(VmrayError::Decode {
                    what: format!(
                        "{what}: the hash lookup answered 404, but VMRay answers an unknown hash \
                         with an empty list, so vmray.url probably points at something that is \
                         not VMRay's REST API: check vmray.url"
                    ),
                });
            }
            Err(e) => return Err(e),
        };
        let chosen = samples
            .iter()
            .find(|s| {
                s.sample_sha256hash
                    .as_deref()
                    .is_some_and(|h| h.eq_ignore_ascii_case(sha256.as_str()))
            })
            .or(samples.first());
        let Some(sample) = chosen else {
            return Ok(None);
        };
        // `last_analysis` stays unknown: it costs a request, and only resubmission by age needs
        // it (see `analysis_age`).
        Ok(Some(sample_info(sample, Some(sha256))?))
    }

    /// The sample with this id; `VmrayError::NotFound` when VMRay has none.
    pub async fn sample(&self, sample_id: u64) -> Result<SampleInfo, VmrayError> {
        let sample: wire::Sample = self
            .get_data(
                &format!("/rest/sample/{sample_id}"),
                &[],
                &format!("sample {sample_id}"),
            )
            .await?;
        sample_info(&sample, None)
    }

    /// The latest analysis time, for `resubmit_after_days`. A key that may read samples but not
    /// analyses (403) leaves it unknown instead of failing; other errors fail, so an outage is
    /// never mistaken for "never analysed".
    pub async fn analysis_age(&self, sample_id: u64) -> Result<Option<OffsetDateTime>, VmrayError> {
        match self.last_analysis(sample_id).await {
            Err(VmrayError::Unauthorized | VmrayError::Forbidden { .. }) => {
                tracing::warn!(
                    sample_id,
                    "the VMRay key may not list analyses; the time of the last analysis is unknown"
                );
                Ok(None)
            }
            other => other,
        }
    }

    /// When the newest analysis of the sample was created, `None` when it has none.
    pub async fn last_analysis(
        &self,
        sample_id: u64,
    ) -> Result<Option<OffsetDateTime>, VmrayError> {
        let analyses: Result<Vec<wire::Analysis>, _> = self
            .get_list(
                &format!("/rest/analysis/sample/{sample_id}"),
                &[("_order", "desc"), ("_limit", "1")],
                &format!("analyses of sample {sample_id}"),
            )
            .await;
        match analyses {
            Ok(analyses) => Ok(analyses
                .iter()
                .filter_map(|a| a.analysis_created.as_deref().and_then(parse_timestamp))
                .max()),
            Err(VmrayError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// The connector's view of a sample. `asked` is the hash looked up, used when VMRay's own copy is
/// missing or malformed.
pub(super) fn sample_info(
    sample: &wire::Sample,
    asked: Option<&Sha256>,
) -> Result<SampleInfo, VmrayError> {
    let sample_id = sample.sample_id.ok_or_else(|| VmrayError::Decode {
        what: "a sample without sample_id".into(),
    })?;
    let sha256 = match (sample.sample_sha256hash.as_deref().map(str::parse), asked) {
        (Some(Ok(hash)), _) => hash,
        (_, Some(asked)) => asked.clone(),
        (_, None) => {
            return Err(VmrayError::Decode {
                what: format!("sample {sample_id} has no valid sample_sha256hash"),
            });
        }
    };
    Ok(SampleInfo {
        sample_id,
        sha256,
        verdict: Verdict::from_vmray(sample.sample_verdict.as_deref()),
        vti_score: sample.sample_vti_score.and_then(|s| u32::try_from(s).ok()),
        severity: sample.sample_severity.clone(),
        webif_url: sample.sample_webif_url.clone().unwrap_or_default(),
        classifications: sample.sample_classifications.clone(),
        threat_names: sample.sample_threat_names.clone(),
        last_analysis: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(json: &str) -> wire::Sample {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn every_verdict_string_maps_to_a_verdict() {
        for (raw, expected) in [
            (r#""malicious""#, Verdict::Malicious),
            (r#""suspicious""#, Verdict::Suspicious),
            (r#""clean""#, Verdict::Clean),
            (r#""not_available""#, Verdict::NotAvailable),
            ("null", Verdict::NotAvailable),
            (r#""n/a""#, Verdict::Unknown),
            (r#""quantum""#, Verdict::Unknown),
        ] {
            let s = sample(&format!(r#"{{"sample_id": 1, "sample_verdict": {raw}}}"#));
            let asked = "a".repeat(64).parse().unwrap();
            let info = sample_info(&s, Some(&asked)).unwrap();
            assert_eq!(info.verdict, expected, "{raw}");
        }
    }

    #[test]
    fn a_sample_without_id_or_hash_is_a_decode_error() {
        assert!(matches!(
            sample_info(&sample("{}"), None),
            Err(VmrayError::Decode { .. })
        ));
        assert!(matches!(
            sample_info(&sample(r#"{"sample_id": 3}"#), None),
            Err(VmrayError::Decode { .. })
        ));
    }
}
