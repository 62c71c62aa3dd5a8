//! Step 1, collect: the alerts and quarantine records Falcon has for the window, grouped into one
//! [`Evidence`] per SHA-256.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::config::DataSource;
use crate::falcon::{FalconClient, FalconError};
use crate::model::{AlertEvidence, QuarantineEvidence, Sha256};

/// Everything Falcon holds about one hash: every alert, every quarantine record, every host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evidence {
    pub sha256: Sha256,
    pub alerts: Vec<AlertEvidence>,
    pub quarantines: Vec<QuarantineEvidence>,
}

impl Evidence {
    pub fn new(sha256: Sha256) -> Self {
        Evidence {
            sha256,
            alerts: Vec::new(),
            quarantines: Vec::new(),
        }
    }

    /// Adds what `other` knows that this does not (by alert and record id).
    pub fn merge(&mut self, other: Evidence) {
        for alert in other.alerts {
            if !self
                .alerts
                .iter()
                .any(|a| a.composite_id == alert.composite_id)
            {
                self.alerts.push(alert);
            }
        }
        for record in other.quarantines {
            if !self.quarantines.iter().any(|q| q.id == record.id) {
                self.quarantines.push(record);
            }
        }
    }

    /// Every host of the hash, as (device id, hostname), without duplicates.
    pub fn hosts(&self) -> Vec<(String, Option<String>)> {
        let mut seen = BTreeSet::new();
        let alert_hosts = self
            .alerts
            .iter()
            .map(|a| (a.device_id.clone(), a.hostname.clone()));
        let quarantine_hosts = self
            .quarantines
            .iter()
            .map(|q| (q.device_id.clone(), q.hostname.clone()));
        alert_hosts
            .chain(quarantine_hosts)
            .filter_map(|(id, name)| Some((id.filter(|i| !i.trim().is_empty())?, name)))
            .filter(|(id, _)| seen.insert(id.clone()))
            .collect()
    }

    /// A file name Falcon knows for the hash, for VMRay's report and the IOC.
    pub fn filename(&self) -> Option<String> {
        self.alerts
            .iter()
            .filter_map(|a| a.filename.clone())
            .chain(self.quarantines.iter().filter_map(|q| q.filename.clone()))
            .find(|name| !name.trim().is_empty())
    }
}

/// What collection found.
#[derive(Debug, Default)]
pub struct Collected {
    pub by_hash: BTreeMap<Sha256, Evidence>,
    pub alerts: usize,
    pub quarantines: usize,
}

impl Collected {
    /// Merges, not pushes: a page boundary moving under live data can repeat a record.
    fn add(&mut self, evidence: Evidence) {
        let sha256 = evidence.sha256.clone();
        self.by_hash
            .entry(sha256.clone())
            .or_insert_with(|| Evidence::new(sha256))
            .merge(evidence);
    }
}

/// Reads every selected source since `since`. A failure of Falcon here fails the cycle: acting on
/// half a window would move the checkpoint past evidence never seen.
pub async fn collect(
    falcon: &FalconClient,
    sources: &[DataSource],
    since: OffsetDateTime,
) -> Result<Collected, FalconError> {
    let mut collected = Collected::default();
    if sources.contains(&DataSource::Detect) {
        let alerts = falcon.alerts_since(since).await?;
        collected.alerts = alerts.len();
        for alert in alerts {
            let mut single = Evidence::new(alert.sha256.clone());
            single.alerts.push(alert);
            collected.add(single);
        }
    }
    if sources.contains(&DataSource::Quarantine) {
        let records = falcon.quarantined_files_since(since).await?;
        collected.quarantines = records.len();
        for record in records {
            let mut single = Evidence::new(record.sha256.clone());
            single.quarantines.push(record);
            collected.add(single);
        }
    }
    Ok(collected)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(id: &str, device: Option<&str>, file: Option<&str>) -> AlertEvidence {
        AlertEvidence {
            composite_id: id.into(),
            sha256: "a".repeat(64).parse().unwrap(),
            filename: file.map(Into::into),
            filepath: None,
            device_id: device.map(Into::into),
            hostname: device.map(|d| format!("host-{d}")),
            platform: None,
            created: None,
            status: "new".into(),
            tags: vec![],
            files_in_alert: 1,
            severity: 50,
            about_file: true,
        }
    }

    #[test]
    fn repeated_records_merge_once_and_hosts_are_unique_and_never_empty() {
        let mut collected = Collected::default();
        for a in [
            alert("1", Some("d1"), None),
            alert("1", Some("d1"), None),
            alert("2", Some("d1"), Some(" ")),
            alert("3", Some(""), Some("x.exe")),
            alert("4", None, None),
        ] {
            let mut single = Evidence::new(a.sha256.clone());
            single.alerts.push(a);
            collected.add(single);
        }
        let evidence = collected.by_hash.values().next().unwrap();
        assert_eq!(evidence.alerts.len(), 4);
        assert_eq!(
            evidence.hosts(),
            vec![("d1".to_string(), Some("host-d1".to_string()))]
        );
        assert_eq!(evidence.filename().as_deref(), Some("x.exe"));
    }
}
