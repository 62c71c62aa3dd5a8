//! Alerts API v2: collecting endpoint alerts since a time, reading them by id, and writing the
//! verdict back (comment, status and tags in one PATCH).

use std::collections::BTreeSet;

use serde::Deserialize;
use serde_json::json;
use time::OffsetDateTime;

use super::fql;
use super::{AlertStatus, AlertUpdate, Call, FalconClient, FalconError, Scope};
use crate::model::{AlertEvidence, Sha256};

/// The combined endpoint's page size and the entities/update endpoints' id cap.
const PAGE: usize = 1000;
/// Falcon's comment size (the 2026 VMRay rewrite's constant); longer ones become several.
const COMMENT_CHARS: usize = 1024;

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
    /// Endpoint (`product:'epp'`) alerts created or updated at or after `since`, every page.
    pub async fn alerts_since(
        &self,
        since: OffsetDateTime,
    ) -> Result<Vec<AlertEvidence>, FalconError> {
        let filter = format!(
            "product:'epp'+updated_timestamp:>={}",
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

    /// Applies one update to many alerts, 1000 ids per request.
    ///
    /// An update with a comment is not re-sent after a timeout or 5xx (it would comment twice);
    /// the caller can read the alerts back with [`FalconClient::alerts_by_id`].
    pub async fn update_alerts(
        &self,
        composite_ids: &[String],
        update: &AlertUpdate,
    ) -> Result<(), FalconError> {
        let parameters = action_parameters(update);
        if parameters.is_empty() || composite_ids.is_empty() {
            return Ok(());
        }
        for chunk in composite_ids.chunks(PAGE) {
            let mut call =
                Call::patch("/alerts/entities/alerts/v3", "update alerts", Scope::Alerts)
                    .json(json!({ "composite_ids": chunk, "action_parameters": parameters }));
            if update.comment.is_some() {
                call = call.once();
            }
            self.send(call).await?;
        }
        Ok(())
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

/// Splits at 1024 characters (not bytes, so no character is cut in half).
fn split_comment(comment: &str) -> Vec<String> {
    let chars: Vec<char> = comment.chars().collect();
    chars
        .chunks(COMMENT_CHARS)
        .map(|part| part.iter().collect())
        .collect()
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
    let device = alert.device.unwrap_or_default();
    let created = fql::parse_timestamp(alert.created_timestamp.as_deref());
    let tags = alert.tags.unwrap_or_default();
    let status = alert.status.unwrap_or_default();
    let files_in_alert = files.len();
    files
        .into_iter()
        .map(|(sha256, filename, filepath)| AlertEvidence {
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
        })
        .collect()
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
    fn long_comments_split_at_1024_characters_in_order() {
        let comment = format!("{}{}{}", "é".repeat(1024), "b".repeat(1024), "c");
        let update = AlertUpdate {
            comment: Some(comment),
            status: Some(AlertStatus::InProgress),
            add_tags: vec!["VMRAY".into()],
        };
        let params = action_parameters(&update);
        let names: Vec<_> = params.iter().map(|p| p["name"].as_str().unwrap()).collect();
        assert_eq!(
            names,
            [
                "append_comment",
                "append_comment",
                "append_comment",
                "update_status",
                "add_tag"
            ]
        );
        assert_eq!(params[0]["value"].as_str().unwrap(), "é".repeat(1024));
        assert_eq!(params[2]["value"], "c");
        assert_eq!(params[3]["value"], "in_progress");
    }
}
