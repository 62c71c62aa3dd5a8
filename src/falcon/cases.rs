//! Falcon Case Management: a case per sample and verdict, found by its unique name before it
//! is created, so neither a retry nor a second run opens it twice.

use serde::Deserialize;
use serde_json::json;

use super::fql;
use super::{Call, FalconClient, FalconError, NewCase, Scope};

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawCase {
    id: Option<String>,
}

impl FalconClient {
    /// Creates the case unless one with the same name exists; returns its id either way.
    pub async fn create_case(&self, case: &NewCase) -> Result<String, FalconError> {
        if let Some(id) = self.case_named(&case.name).await? {
            tracing::debug!(case = %case.name, "the case already exists");
            return Ok(id);
        }
        match self.put_case(case).await {
            Err(e) if e.is_ambiguous() => {
                tracing::warn!(error = %e, "case creation may or may not have landed; checking before sending again");
                match self.case_named(&case.name).await? {
                    Some(id) => Ok(id),
                    None => self.put_case(case).await,
                }
            }
            other => other,
        }
    }

    async fn case_named(&self, name: &str) -> Result<Option<String>, FalconError> {
        let call = Call::get("/cases/queries/cases/v1", "query cases", Scope::Cases)
            .query("filter", format!("name:{}", fql::quote(name)));
        Ok(self.send(call).await?.envelope.ids().into_iter().next())
    }

    async fn put_case(&self, case: &NewCase) -> Result<String, FalconError> {
        let alerts: Vec<_> = case
            .alert_ids
            .iter()
            .map(|id| json!({ "id": id }))
            .collect();
        let mut body = json!({
            "name": case.name,
            "description": case.description,
            "severity": case.severity,
            "status": "new",
            "tags": case.tags,
            "evidence": { "alerts": alerts },
        });
        if let Some(user) = case
            .assigned_to_user_uuid
            .as_deref()
            .filter(|u| !u.is_empty())
        {
            body["assigned_to_user_uuid"] = json!(user);
        }
        let call = Call::put("/cases/entities/cases/v2", "create case", Scope::Cases)
            .json(body)
            .once();
        let reply = self.send(call).await?;
        reply
            .envelope
            .resources::<RawCase>("case")
            .into_iter()
            .find_map(|c| c.id)
            .ok_or_else(|| FalconError::Decode {
                what: "create case: no case id in the answer".into(),
            })
    }
}
