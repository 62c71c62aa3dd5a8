//! VMRay Threat Indicators: the behaviours behind a verdict, for the detection comment.

use super::wire::{ThreatIndicator, VtiReport};
use super::{VmrayClient, VmrayError};
use crate::model::Vti;

impl VmrayClient {
    /// The sample's VTIs, in VMRay's order.
    pub async fn vtis(&self, sample_id: u64) -> Result<Vec<Vti>, VmrayError> {
        let report: VtiReport = self
            .get_data(
                &format!("/rest/sample/{sample_id}/vtis"),
                &[],
                &format!("VTIs of sample {sample_id}"),
            )
            .await?;
        if report.status.as_deref().is_some_and(|s| s != "finished") {
            tracing::warn!(sample_id, status = ?report.status,
                "VMRay has not finished aggregating the VTIs; the list may be incomplete");
        }
        Ok(report.threat_indicators.iter().map(vti).collect())
    }
}

/// One indicator; the score is clamped to VMRay's documented 1..=5 (a missing one reads as 1).
pub(super) fn vti(indicator: &ThreatIndicator) -> Vti {
    Vti {
        category: indicator.category.clone().unwrap_or_default(),
        operation: indicator.operation.clone().unwrap_or_default(),
        score: indicator.score.unwrap_or(1).clamp(1, 5) as u8,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_are_clamped_to_one_to_five() {
        for (raw, expected) in [
            ("0", 1),
            ("3", 3),
            ("9", 5),
            ("-2", 1),
            ("null", 1),
            (r#""4""#, 4),
        ] {
            let indicator: ThreatIndicator = serde_json::from_str(&format!(
                r#"{{"category": "Antivirus", "operation": "x", "score": {raw}}}"#
            ))
            .unwrap();
            assert_eq!(vti(&indicator).score, expected, "{raw}");
        }
        let bare: ThreatIndicator = serde_json::from_str("{}").unwrap();
        assert_eq!(
            vti(&bare),
            Vti {
                category: String::new(),
                operation: String::new(),
                score: 1
            }
        );
    }
}
