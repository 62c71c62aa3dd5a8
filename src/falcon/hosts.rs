//! Hosts: containment (500 per request), details (5000 per request), and the hosts that ran a
//! hash (every page of the IOC devices-ran-on query, then their details).

use std::collections::BTreeSet;

use serde::Deserialize;
use serde_json::json;

use super::{Call, EntityFailure, FalconClient, FalconError, Scope};
use crate::model::{Host, Sha256};

const ACTION_CHUNK: usize = 500;
const DETAILS_CHUNK: usize = 5000;
/// The devices-ran-on query's largest page.
const RAN_ON_PAGE: usize = 100;

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawDevice {
    device_id: Option<String>,
    hostname: Option<String>,
    platform_name: Option<String>,
    status: Option<String>,
}

/// Non-empty ids, each once, in their first order (the original sent None/empty AIDs).
fn clean(ids: &[String]) -> Vec<String> {
    let mut seen = BTreeSet::new();
    ids.iter()
        .map(|id| id.trim())
        .filter(|id| !id.is_empty() && seen.insert(id.to_string()))
        .map(str::to_string)
        .collect()
}

impl FalconClient {
    /// Contains the hosts; returns those Falcon's answer names as not contained.
    pub async fn contain_hosts(
        &self,
        device_ids: &[String],
    ) -> Result<Vec<EntityFailure>, FalconError> {
        self.host_action(device_ids, "contain", "contain hosts")
            .await
    }

    /// Lifts containment (the reverse of [`FalconClient::contain_hosts`]).
    pub async fn lift_containment(
        &self,
        device_ids: &[String],
    ) -> Result<Vec<EntityFailure>, FalconError> {
        self.host_action(device_ids, "lift_containment", "lift host containment")
            .await
    }

    async fn host_action(
        &self,
        device_ids: &[String],
        action: &'static str,
        operation: &'static str,
    ) -> Result<Vec<EntityFailure>, FalconError> {
        let mut failed = Vec::new();
        for chunk in clean(device_ids).chunks(ACTION_CHUNK) {
            // Host actions are not blindly re-sent (reference §9); the caller reads the host
            // status back instead.
            let call = Call::post(
                "/devices/entities/devices-actions/v2",
                operation,
                Scope::Hosts,
            )
            .query("action_name", action)
            .json(json!({ "ids": chunk }))
            .once();
            failed.extend(self.send(call).await?.envelope.failed_entities(chunk));
        }
        Ok(failed)
    }

    pub async fn hosts(&self, device_ids: &[String]) -> Result<Vec<Host>, FalconError> {
        let mut hosts = Vec::new();
        for chunk in clean(device_ids).chunks(DETAILS_CHUNK) {
            let call = Call::post("/devices/entities/devices/v2", "get hosts", Scope::Hosts)
                .json(json!({ "ids": chunk }));
            let reply = self.send(call).await?;
            hosts.extend(
                reply
                    .envelope
                    .resources::<RawDevice>("device")
                    .into_iter()
                    .filter_map(|d| {
                        Some(Host {
                            device_id: d.device_id.filter(|id| !id.is_empty())?,
                            hostname: d.hostname,
                            platform: d.platform_name,
                            status: d.status,
                        })
                    }),
            );
        }
        Ok(hosts)
    }

    /// Hosts that ran this hash, every page, with their details.
    pub async fn hosts_that_ran(&self, sha256: &Sha256) -> Result<Vec<Host>, FalconError> {
        let mut aids: Vec<String> = Vec::new();
        let mut offset: Option<String> = None;
        loop {
            let mut call = Call::get(
                "/iocs/queries/indicators/devices/v1",
                "query hosts that ran a hash",
                Scope::IocManagement,
            )
            .query("type", "sha256")
            .query("value", sha256)
            .query("limit", RAN_ON_PAGE);
            if let Some(offset) = &offset {
                call = call.query("offset", offset);
            }
            let reply = match self.send(call).await {
                Ok(reply) => reply,
                // Falcon answers 404 when no host ran it.
                Err(FalconError::NotFound { .. }) => break,
                Err(e) => return Err(e),
            };
            let page = reply.envelope.ids();
            let pagination = reply.envelope.pagination();
            if page.is_empty() {
                break;
            }
            aids.extend(page);
            // This endpoint pages by an opaque string `offset` and usually sends no `total`:
            // only a missing (or repeated) offset ends the paging, or a total already reached.
            if pagination
                .total
                .is_some_and(|total| aids.len() as u64 >= total)
            {
                break;
            }
            let next = pagination
                .offset
                .map(|o| o.as_text())
                .filter(|o| !o.is_empty());
            match next {
                Some(next) if offset.as_deref() != Some(next.as_str()) => offset = Some(next),
                _ => break,
            }
        }
        if aids.is_empty() {
            return Ok(Vec::new());
        }
        self.hosts(&aids).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_and_repeated_ids_are_dropped() {
        let ids = vec!["a".into(), "".into(), " ".into(), "b".into(), "a".into()];
        assert_eq!(clean(&ids), vec!["a".to_string(), "b".to_string()]);
    }
}
