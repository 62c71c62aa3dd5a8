//! Quarantined files: every record created since a time (one per file per host, all of them
//! count), and release / unrelease / delete with an audit comment.

use serde::Deserialize;
use serde_json::json;
use time::OffsetDateTime;

use super::fql;
use super::{Call, EntityFailure, FalconClient, FalconError, QuarantineAction, Scope};
use crate::model::{QuarantineEvidence, Sha256};

const QUERY_LIMIT: usize = 5000;
/// The entities and update endpoints' id cap.
const CHUNK: usize = 500;

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawRecord {
    id: Option<String>,
    aid: Option<String>,
    sha256: Option<String>,
    hostname: Option<String>,
    state: Option<String>,
    date_created: Option<String>,
    date_updated: Option<String>,
    paths: Option<Vec<RawPath>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawPath {
    path: Option<String>,
    filename: Option<String>,
}

impl QuarantineAction {
    pub fn as_str(self) -> &'static str {
        match self {
            QuarantineAction::Release => "release",
            QuarantineAction::Unrelease => "unrelease",
            QuarantineAction::Delete => "delete",
        }
    }
}

impl FalconClient {
    /// Quarantine records created at or after `since`, every page (by creation time, as for
    /// alerts: the connector's own updates move `date_updated`).
    pub async fn quarantined_files_since(
        &self,
        since: OffsetDateTime,
    ) -> Result<Vec<QuarantineEvidence>, FalconError> {
        let filter = format!("date_created:>={}", fql::quote(&fql::timestamp(since)));
        let mut ids: Vec<String> = Vec::new();
        let mut offset = 0usize;
        loop {
            let call = Call::get(
                "/quarantine/queries/quarantined-files/v1",
                "query quarantined files",
                Scope::Quarantine,
            )
            .query("filter", &filter)
            .query("limit", QUERY_LIMIT)
            .query("offset", offset)
            .query("sort", "date_created|asc");
            let reply = self.send(call).await?;
            let page = reply.envelope.ids();
            let total = reply.envelope.pagination().total.unwrap_or(0) as usize;
            if page.is_empty() {
                break;
            }
            offset += page.len();
            ids.extend(page);
            if offset >= total {
                break;
            }
        }
        ids.sort();
        ids.dedup();
        self.quarantined_files_by_id(&ids).await
    }

    /// The records with these ids (unknown ids are left out).
    pub async fn quarantined_files_by_id(
        &self,
        ids: &[String],
    ) -> Result<Vec<QuarantineEvidence>, FalconError> {
        let mut records = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(CHUNK) {
            let call = Call::post(
                "/quarantine/entities/quarantined-files/GET/v1",
                "get quarantined files",
                Scope::Quarantine,
            )
            .json(json!({ "ids": chunk }));
            let reply = self.send(call).await?;
            records.extend(
                reply
                    .envelope
                    .resources::<RawRecord>("quarantined file")
                    .into_iter()
                    .filter_map(to_evidence),
            );
        }
        Ok(records)
    }

    pub async fn update_quarantined_files(
        &self,
        ids: &[String],
        action: QuarantineAction,
        comment: &str,
    ) -> Result<Vec<EntityFailure>, FalconError> {
        let mut failed = Vec::new();
        for chunk in ids.chunks(CHUNK) {
            let call = Call::patch(
                "/quarantine/entities/quarantined-files/v1",
                "update quarantined files",
                Scope::Quarantine,
            )
            .json(json!({ "ids": chunk, "action": action.as_str(), "comment": comment }))
            // The comment is an audit entry: after a 5xx or a timeout the caller reads the
            // records back (their `date_updated`) instead of writing it twice.
            .once();
            failed.extend(self.send(call).await?.envelope.failed_entities(chunk));
        }
        Ok(failed)
    }
}

/// A record without a readable hash (its own field, or the id's `<aid>_<sha256>` suffix) is
/// skipped; missing paths or odd timestamps are not a reason to drop it.
fn to_evidence(record: RawRecord) -> Option<QuarantineEvidence> {
    let id = record.id.filter(|id| !id.is_empty())?;
    let sha256 = record
        .sha256
        .as_deref()
        .and_then(|s| s.parse::<Sha256>().ok())
        .or_else(|| id.rsplit('_').next()?.parse().ok());
    let Some(sha256) = sha256 else {
        tracing::debug!(id, "skipping a quarantine record without a valid SHA-256");
        return None;
    };
    let first_path = record
        .paths
        .into_iter()
        .flatten()
        .next()
        .unwrap_or_default();
    Some(QuarantineEvidence {
        device_id: record.aid.filter(|a| !a.is_empty()).or_else(|| {
            id.split('_')
                .next()
                .filter(|a| !a.is_empty())
                .map(str::to_string)
        }),
        id,
        sha256,
        hostname: record.hostname,
        filename: first_path.filename,
        path: first_path.path,
        state: record.state.unwrap_or_default(),
        created: fql::parse_timestamp(record.date_created.as_deref()),
        updated: fql::parse_timestamp(record.date_updated.as_deref()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_without_paths_or_own_hash_still_map() {
        let sha = "c".repeat(64);
        let record: RawRecord = serde_json::from_value(json!({
            "id": format!("aid1_{sha}"), "state": "quarantined", "paths": [],
            "date_created": "2025-01-01T00:00:00Z", "date_updated": "odd"
        }))
        .unwrap();
        let evidence = to_evidence(record).unwrap();
        assert_eq!(evidence.sha256.as_str(), sha);
        assert_eq!(evidence.device_id.as_deref(), Some("aid1"));
        assert_eq!(evidence.path, None);
        assert!(evidence.created.is_some() && evidence.updated.is_none());
    }
}
