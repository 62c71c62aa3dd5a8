//! Alerts API v2: collecting endpoint alerts since a time, reading them by id, and writing the
//! verdict back (comment, status and tags in one PATCH).

use std::collections::BTreeSet;

use serde::Deserialize;
use serde_json::json;
use time::OffsetDateTime;

use super::fql;
use super::{AlertStatus, AlertUpdate, Call, EntityFailure, FalconClient, FalconError, Scope};
use crate::model::{AlertEvidence, Sha256};

/// The combined endpoint's page size and the entities/update endpoints' id cap.
const PAGE: usize = 1000;
/// Falcon refuses an action value that is not shorter than 1024 ("invalid action value
/// specified. must be less than 1024"), and one refused value fails the whole PATCH. Bytes are
/// never fewer than characters, so a piece of at most 1023 UTF-8 bytes is under both limits.
const COMMENT_PIECE_BYTES: usize = 1023;

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawAlert {
    composite_id: Option<String>,
    sha256: Option<String>,
    filename: Option<String>,
    filepath: Option<String>,
    device: Option<RawDevice>,
    created_timestamp: Option<String>,
    status: Option<String>,
    tags: Option<Vec<String>>,
    quarantined_files: Option<Vec<RawQuarantinedFile>>,
    severity: Option<u64>,
    tactic: Option<String>,
    technique: Option<String>,
    scenario: Option<String>,
    pattern_disposition_details: Option<RawDisposition>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawDisposition {
    quarantine_file: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawDevice {
    device_id: Option<String>,
    hostname: Option<String>,
    platform_name: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawQuarantinedFile {
    sha256: Option<String>,
    filename: Option<String>,
}

impl AlertStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertStatus::New => "new",
            AlertStatus::InProgress => "in_progress",
            AlertStatus::Reopened => "reopened",
            AlertStatus::Closed => "closed",
        }
    }
}

impl FalconClient {
    /// Endpoint (`product:'epp'`) alerts created at or after `since`, every page.
    ///
    /// By creation time, not update time: an analyst bulk-editing old alerts, or the
    /// connector's own write-backs, must not bring alerts back into a later cycle.
    pub async fn alerts_since(
        &self,
        since: OffsetDateTime,
    ) -> Result<Vec<AlertEvidence>, FalconError> {
        let filter = format!(
            "product:'epp'+created_timestamp:>={}",
            fql::quote(&fql::timestamp(since))
        );
        let mut evidence = Vec::new();
        let mut seen = BTreeSet::new();
        let mut after: Option<String> = None;
        loop {
            let mut body =
                json!({"filter": filter, "limit": PAGE, "sort": "created_timestamp|asc"});
            if let Some(cursor) = &after {
                body["after"] = json!(cursor);
            }
            let reply = self
                .send(
                    Call::post("/alerts/combined/alerts/v1", "query alerts", Scope::Alerts)
                        .json(body),
                )
                .await?;
            for alert in reply.envelope.resources::<RawAlert>("alert") {
                for item in to_evidence(alert) {
                    if seen.insert((item.composite_id.clone(), item.sha256.clone())) {
                        evidence.push(item);
                    }
                }
            }
            match reply.envelope.pagination().after.filter(|a| !a.is_empty()) {
                Some(next) if after.as_deref() == Some(next.as_str()) => {
                    return Err(FalconError::Decode {
                        what: "query alerts: the same page cursor twice".into(),
                    });
                }
                Some(next) if reply.envelope.resource_count() > 0 => after = Some(next),
                _ => break,
            }
        }
        Ok(evidence)
    }

    /// The current state of these alerts (to see whether an earlier update landed).
    pub async fn alerts_by_id(
        &self,
        composite_ids: &[String],
    ) -> Result<Vec<AlertEvidence>, FalconError> {
        let mut evidence = Vec::new();
        for chunk in composite_ids.chunks(PAGE) {
            let call = Call::post("/alerts/entities/alerts/v2", "get alerts", Scope::Alerts)
                .json(json!({ "composite_ids": chunk }));
            let reply = self.send(call).await?;
            evidence.extend(
                reply
                    .envelope
                    .resources::<RawAlert>("alert")
                    .into_iter()
                    .flat_map(to_evidence),
            );
        }
        Ok(evidence)
    }

    /// Applies one update to many alerts, 1000 ids per request; returns the alerts Falcon's
    /// answer names as not updated.
    ///
    /// An update with a comment is not re-sent after a timeout or 5xx (it would comment twice);
    /// the caller can read the alerts back with [`FalconClient::alerts_by_id`].
    pub async fn update_alerts(
        &self,
        composite_ids: &[String],
        update: &AlertUpdate,
    ) -> Result<Vec<EntityFailure>, FalconError> {
        let parameters = action_parameters(update);
        let mut failed = Vec::new();
        if parameters.is_empty() || composite_ids.is_empty() {
            return Ok(failed);
        }
        for chunk in composite_ids.chunks(PAGE) {
            let mut call =
                Call::patch("/alerts/entities/alerts/v3", "update alerts", Scope::Alerts)
                    .json(json!({ "composite_ids": chunk, "action_parameters": parameters }));
            if update.comment.is_some() {
                call = call.once();
            }
            failed.extend(self.send(call).await?.envelope.failed_entities(chunk));
        }
        Ok(failed)
    }
}

fn action_parameters(update: &AlertUpdate) -> Vec<serde_json::Value> {
    let mut parameters = Vec::new();
    if let Some(comment) = update.comment.as_deref().filter(|c| !c.is_empty()) {
        for part in split_comment(comment) {
            parameters.push(json!({"name": "append_comment", "value": part}));
        }
    }
    if let Some(status) = update.status {
        parameters.push(json!({"name": "update_status", "value": status.as_str()}));
    }
    for tag in update.add_tags.iter().filter(|t| !t.is_empty()) {
        parameters.push(json!({"name": "add_tag", "value": tag}));
    }
    parameters
}

/// Splits a comment into pieces of at most [`COMMENT_PIECE_BYTES`] bytes, at a line break
/// where one fits, else at a space, and only inside a word (at a character boundary) when one
/// word alone is longer than a piece.
fn split_comment(comment: &str) -> Vec<String> {
    let mut pieces = Vec::new();
    let mut rest = comment;
    while rest.len() > COMMENT_PIECE_BYTES {
        let mut limit = COMMENT_PIECE_BYTES;
        while !rest.is_char_boundary(limit) {
            limit -= 1;
        }
        let window = &rest[..limit];
        let (cut, skip) = match window.rfind('\n').or_else(|| window.rfind(' ')) {
            Some(at) if at > 0 => (at, 1),
            _ => (limit, 0),
        };
        pieces.push(rest[..cut].to_string());
        rest = &rest[cut + skip..];
    }
    if !rest.is_empty() {
        pieces.push(rest.to_string());
    }
    pieces
}

/// One evidence per distinct valid SHA-256 of the alert: its own file and every file it
/// quarantined. An alert without a usable hash yields nothing (it is not an error).
fn to_evidence(alert: RawAlert) -> Vec<AlertEvidence> {
    let Some(composite_id) = alert.composite_id.filter(|id| !id.is_empty()) else {
        tracing::debug!("skipping an alert without a composite_id");
        return Vec::new();
    };
    let own = alert
        .sha256
        .as_deref()
        .and_then(|s| s.parse::<Sha256>().ok());
    let own_missing = own.is_none();
    let mut files: Vec<(Sha256, Option<String>, Option<String>)> = Vec::new();
    if let Some(sha256) = own {
        files.push((sha256, alert.filename.clone(), alert.filepath.clone()));
    }
    for quarantined in alert.quarantined_files.into_iter().flatten() {
        if let Some(sha256) = quarantined
            .sha256
            .as_deref()
            .and_then(|s| s.parse::<Sha256>().ok())
            && !files.iter().any(|(known, _, _)| *known == sha256)
        {
            files.push((sha256, quarantined.filename, None));
        }
    }
    if files.is_empty() {
        tracing::debug!(composite_id, "skipping an alert without a valid SHA-256");
        return Vec::new();
    }
    let alert_kind = AlertKind {
        tactic: alert.tactic.unwrap_or_default(),
        technique: alert.technique.unwrap_or_default(),
        scenario: alert.scenario.unwrap_or_default(),
        quarantined: alert
            .pattern_disposition_details
            .and_then(|d| d.quarantine_file)
            .unwrap_or(false),
    };
    let device = alert.device.unwrap_or_default();
    let created = fql::parse_timestamp(alert.created_timestamp.as_deref());
    let tags = alert.tags.unwrap_or_default();
    let status = alert.status.unwrap_or_default();
    let files_in_alert = files.len();
    let severity = alert.severity;
    let judged_file = judged_the_file(&alert_kind);
    files
        .into_iter()
        .enumerate()
        .map(|(n, (sha256, filename, filepath))| AlertEvidence {
            composite_id: composite_id.clone(),
            sha256,
            filename,
            filepath,
            device_id: device.device_id.clone(),
            hostname: device.hostname.clone(),
            platform: device.platform_name.clone(),
            created,
            status: status.clone(),
            tags: tags.clone(),
            files_in_alert,
            severity: severity.unwrap_or(0).min(100) as u8,
            // A file the alert quarantined was judged by Falcon whatever the alert is about.
            about_file: judged_file || (n > 0 || own_missing),
        })
        .collect()
}

/// What an alert says Falcon detected, read from its own fields.
#[derive(Debug, Default)]
struct AlertKind {
    tactic: String,
    technique: String,
    scenario: String,
    quarantined: bool,
}

/// Whether Falcon judged the alert's file itself, so that VMRay's clean verdict on the file
/// answers the alert. A behaviour alert (an IOA, a custom IOA, OverWatch) judged what a process
/// did; its SHA-256 is the process's image and a clean image does not make the behaviour
/// benign. Alerts that say neither are treated as behaviour: closing is the one change an
/// analyst could not see coming.
fn judged_the_file(kind: &AlertKind) -> bool {
    let tactic = kind.tactic.to_ascii_lowercase();
    let technique = kind.technique.to_ascii_lowercase();
    let scenario = kind.scenario.to_ascii_lowercase();
    let behaviour = tactic.contains("overwatch")
        || scenario == "overwatch"
        || technique.contains("indicator of attack");
    if behaviour {
        return false;
    }
    let machine_learning = tactic == "machine learning" || scenario == "ngav";
    let known_malware = scenario == "known_malware" || technique.contains("known malware");
    // Intelligence and custom IOC detections on a hash (not on a domain or an address the
    // process contacted).
    let hash_indicator = technique.contains("hash")
        && (tactic.contains("intel")
            || scenario == "intel_detection"
            || technique.contains("indicator"));
    machine_learning || known_malware || hash_indicator || kind.quarantined
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(value: serde_json::Value) -> RawAlert {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn every_distinct_hash_of_an_alert_is_evidence() {
        let a = "a".repeat(64);
        let b = "B".repeat(64);
        let items = to_evidence(alert(json!({
            "composite_id": "cid:ind:1", "sha256": a, "filename": "x.exe", "filepath": "C:\\x.exe",
            "device": {"device_id": "d1", "hostname": "h1", "platform_name": "Windows"},
            "created_timestamp": "2025-01-01T00:00:00.123Z", "status": "new", "tags": null,
            "quarantined_files": [{"sha256": a}, {"sha256": b, "filename": "y.dll"}, {"sha256": ""}]
        })));
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].filename.as_deref(), Some("x.exe"));
        assert_eq!(items[1].sha256.as_str(), "b".repeat(64));
        assert_eq!(items[1].filename.as_deref(), Some("y.dll"));
        assert_eq!(items[1].hostname.as_deref(), Some("h1"));
        assert!(items.iter().all(|i| i.files_in_alert == 2));
        assert!(items[0].created.is_some());
    }

    #[test]
    fn alerts_without_a_valid_hash_are_skipped() {
        assert!(to_evidence(alert(json!({"composite_id": "c", "sha256": "nothex"}))).is_empty());
        assert!(to_evidence(alert(json!({"composite_id": "c"}))).is_empty());
        assert!(to_evidence(alert(json!({"sha256": "a".repeat(64)}))).is_empty());
    }

    #[test]
    fn long_comments_split_under_1024_characters_and_bytes_at_line_breaks() {
        let lines: Vec<String> = (0..40)
            .map(|n| format!("- [4/5] Ümlaut line {n}: {}", "é".repeat(20)))
            .collect();
        let comment = lines.join("\n");
        let update = AlertUpdate {
            comment: Some(comment.clone()),
            status: Some(AlertStatus::InProgress),
            add_tags: vec!["VMRAY".into()],
        };
        let params = action_parameters(&update);
        let pieces: Vec<&str> = params
            .iter()
            .filter(|p| p["name"] == "append_comment")
            .map(|p| p["value"].as_str().unwrap())
            .collect();
        assert!(pieces.len() > 1);
        for piece in &pieces {
            assert!(
                piece.len() < 1024 && piece.chars().count() < 1024,
                "{}",
                piece.len()
            );
            // Whole lines only: every piece starts a line of the original.
            assert!(piece.starts_with("- [4/5]"), "{piece}");
        }
        assert_eq!(pieces.join("\n"), comment);
        let names: Vec<_> = params.iter().map(|p| p["name"].as_str().unwrap()).collect();
        assert_eq!(names[names.len() - 2..], ["update_status", "add_tag"]);
    }

    #[test]
    fn a_line_longer_than_a_piece_splits_at_words_then_characters() {
        let words = vec!["wörd"; 400].join(" ");
        let pieces = split_comment(&words);
        assert!(
            pieces
                .iter()
                .all(|p| p.len() <= 1023 && !p.starts_with(' '))
        );
        assert!(pieces.iter().all(|p| p.ends_with("wörd")));
        assert_eq!(pieces.join(" "), words);
        let one_word = "é".repeat(1500);
        let pieces = split_comment(&one_word);
        assert!(pieces.iter().all(|p| p.len() <= 1023));
        assert_eq!(pieces.concat(), one_word);
        assert_eq!(split_comment("short"), vec!["short".to_string()]);
    }
}
