//! Step 2, look up: what VMRay already knows about a hash, whether it is due for resubmission,
//! and, for a sample with a verdict, the IOCs and VTIs the planner needs.

use time::OffsetDateTime;

use super::plan::Analysis;
use crate::config::{ApiKeyType, Config};
use crate::model::{IocSet, Verdict};
use crate::vmray::{SampleInfo, VmrayClient};

/// What to do with a hash after the lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LookupDecision {
    /// Known and not due: use its verdict.
    UseKnown(SampleInfo),
    /// Unknown, or due for resubmission (`reanalyze` set then).
    Submit { reanalyze: bool },
}

/// Applies `resubmit`, `resubmission_verdicts` and `resubmit_after_days` to a lookup result.
pub fn decide(found: Option<SampleInfo>, config: &Config, now: OffsetDateTime) -> LookupDecision {
    let vm = &config.vmray;
    let Some(info) = found else {
        return LookupDecision::Submit { reanalyze: false };
    };
    let due = vm.resubmit
        && vm.resubmission_verdicts.contains(&info.verdict)
        && match info.last_analysis {
            Some(at) => now - at >= super::plan::days(vm.resubmit_after_days),
            // Age unknown: only a zero-day threshold is certainly met.
            None => vm.resubmit_after_days == 0,
        };
    if due {
        LookupDecision::Submit { reanalyze: true }
    } else {
        LookupDecision::UseKnown(info)
    }
}

/// Whether the resubmission rules need the time of the sample's last analysis (a request).
pub fn needs_age(info: &SampleInfo, config: &Config) -> bool {
    let vm = &config.vmray;
    vm.resubmit && vm.resubmit_after_days > 0 && vm.resubmission_verdicts.contains(&info.verdict)
}

/// Fetches what the planner needs beyond the sample itself, and only what the configuration
/// will use: IOCs when they become Falcon IOCs, VTIs when they go into a comment, and neither
/// with a verdict key (`vmray.api_key_type = "verdict"`), which may not read them.
///
/// Never fails: the verdict is what matters. A report part VMRay refuses or cannot give (a 403
/// for a key that may not open reports, an outage that outlasted the retries) is left out, the
/// verdict is written back without it, and the returned notes tell the cycle report (and the
/// log) what is missing.
pub async fn analysis(
    vmray: &VmrayClient,
    info: SampleInfo,
    config: &Config,
) -> (Analysis, Vec<String>) {
    let cs = &config.crowdstrike;
    let sha = &info.sha256;
    let mut notes = Vec::new();
    let harmful = matches!(info.verdict, Verdict::Malicious | Verdict::Suspicious);
    // A verdict key cannot open reports (VMRay answers 403 until they are unlocked, which costs
    // quota): asking would fail for every sample.
    let reports = config.vmray.api_key_type == ApiKeyType::Report;
    let iocs = if reports && cs.create_ioc && cs.ioc_levels.contains(&info.verdict) {
        match vmray
            .iocs(info.sample_id, &config.general.selected_verdicts)
            .await
        {
            Ok(iocs) => iocs,
            Err(e) => {
                tracing::warn!(sha256 = %sha, "VMRay's IOC report cannot be read; the verdict is written back without it: {e}");
                notes.push(format!(
                    "{sha}: VMRay's IOC report could not be read, so no IOC from it (dropped \
                     files, addresses, domains) is created; the verdict is written back: {e}"
                ));
                IocSet::default()
            }
        }
    } else {
        IocSet::default()
    };
    let vtis = if reports && harmful && cs.comment_to_detection {
        match vmray.vtis(info.sample_id).await {
            Ok(vtis) => vtis,
            Err(e) => {
                tracing::warn!(sha256 = %sha, "VMRay's threat indicators cannot be read; the comments go without them: {e}");
                notes.push(format!(
                    "{sha}: VMRay's threat indicators (VTIs) could not be read, so the comments \
                     carry the verdict without them: {e}"
                ));
                Vec::new()
            }
        }
    } else {
        Vec::new()
    };
    let analysis = Analysis {
        sample_id: info.sample_id,
        verdict: info.verdict,
        report_url: info.webif_url,
        classifications: info.classifications,
        threat_names: info.threat_names,
        iocs,
        vtis,
    };
    (analysis, notes)
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    fn info(verdict: Verdict, last: Option<OffsetDateTime>) -> SampleInfo {
        SampleInfo {
            sample_id: 1,
            sha256: "a".repeat(64).parse().unwrap(),
            verdict,
            vti_score: None,
            severity: None,
            webif_url: "https://vmray.example/samples/1".into(),
            classifications: vec![],
            threat_names: vec![],
            last_analysis: last,
        }
    }

    const NOW: OffsetDateTime = datetime!(2026-11-28 00:00 UTC);

    #[test]
    fn unknown_hashes_are_submitted() {
        assert_eq!(
            decide(None, &Config::default(), NOW),
            LookupDecision::Submit { reanalyze: false }
        );
    }

    #[test]
    fn known_hashes_are_used_unless_resubmission_is_due() {
        let mut config = Config::default();
        let known = info(Verdict::Malicious, Some(datetime!(2026-11-20 00:00 UTC)));
        assert!(matches!(
            decide(Some(known.clone()), &config, NOW),
            LookupDecision::UseKnown(_)
        ));
        config.vmray.resubmit = true;
        assert_eq!(
            decide(Some(known.clone()), &config, NOW),
            LookupDecision::Submit { reanalyze: true }
        );
        config.vmray.resubmit_after_days = 30;
        assert!(matches!(
            decide(Some(known), &config, NOW),
            LookupDecision::UseKnown(_)
        ));
        config.vmray.resubmit_after_days = 0;
        let clean = info(Verdict::Clean, None);
        assert!(matches!(
            decide(Some(clean), &config, NOW),
            LookupDecision::UseKnown(_)
        ));
    }
}
