//! Custom IOCs: created in batches after one existence check per batch, never created twice.
//!
//! A duplicate is not an error (it is reported as already existing). A create that timed out or
//! got a 5xx may have landed, so the values of that request are checked again and only what is
//! still missing is sent once more.

use std::collections::HashSet;

use serde::Deserialize;
use serde_json::json;

use super::fql;
use super::{Call, FalconClient, FalconError, IocFailure, IocOutcome, IocType, NewIoc, Scope};

/// Values per existence check (the combined endpoint's filter) and per create request.
const BATCH: usize = 100;

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawIndicator {
    #[serde(rename = "type")]
    kind: Option<String>,
    value: Option<String>,
}

impl IocType {
    pub fn as_str(self) -> &'static str {
        match self {
            IocType::Sha256 => "sha256",
            IocType::Domain => "domain",
            IocType::Ipv4 => "ipv4",
            IocType::Ipv6 => "ipv6",
        }
    }
}

/// Type and value as Falcon compares them (it stores hashes and domains lowercase).
fn key(kind: &str, value: &str) -> (String, String) {
    (kind.to_ascii_lowercase(), value.trim().to_ascii_lowercase())
}

impl FalconClient {
    /// Creates the IOCs that do not exist yet.
    pub async fn create_iocs(&self, iocs: &[NewIoc], comment: &str) -> IocOutcome {
        let mut unique: Vec<&NewIoc> = Vec::new();
        let mut seen = HashSet::new();
        for ioc in iocs {
            if seen.insert(key(ioc.kind.as_str(), &ioc.value)) {
                unique.push(ioc);
            }
        }
        let mut outcome = IocOutcome::default();
        for batch in unique.chunks(BATCH) {
            let before = (
                outcome.created.len(),
                outcome.already_existed.len(),
                outcome.failed.len(),
            );
            if let Err(e) = self.create_batch(batch, comment, &mut outcome).await {
                tracing::warn!(error = %e, count = batch.len(), "an IOC batch failed");
                // What the batch settled before it failed stands; the rest failed with it.
                let settled: HashSet<String> = outcome.created[before.0..]
                    .iter()
                    .chain(&outcome.already_existed[before.1..])
                    .chain(outcome.failed[before.2..].iter().map(|f| &f.value))
                    .map(|v| v.trim().to_ascii_lowercase())
                    .collect();
                let error = e.to_string();
                let blame = crate::pipeline::blame::falcon(&e);
                let failed: Vec<IocFailure> = batch
                    .iter()
                    .filter(|ioc| !settled.contains(&ioc.value.trim().to_ascii_lowercase()))
                    .map(|ioc| IocFailure {
                        kind: ioc.kind,
                        value: ioc.value.clone(),
                        error: error.clone(),
                        blame,
                    })
                    .collect();
                outcome.failed.extend(failed);
            }
        }
        outcome
    }

    /// One batch: existence check, then create what is missing. Values Falcon rejects one by
    /// one go to `outcome.failed`; each value is settled once (created, already existing or
    /// failed) and a refused value is not sent again.
    async fn create_batch(
        &self,
        batch: &[&NewIoc],
        comment: &str,
        outcome: &mut IocOutcome,
    ) -> Result<(), FalconError> {
        let existing = self.existing_iocs(batch).await?;
        let (present, missing): (Vec<&NewIoc>, Vec<&NewIoc>) = batch
            .iter()
            .partition(|ioc| existing.contains(&key(ioc.kind.as_str(), &ioc.value)));
        outcome
            .already_existed
            .extend(present.iter().map(|ioc| ioc.value.clone()));
        if missing.is_empty() {
            return Ok(());
        }
        self.post_isolating(&missing, comment, outcome).await
    }

    /// Type and value of those of `iocs` that Falcon already has (one request).
    async fn existing_iocs(
        &self,
        iocs: &[&NewIoc],
    ) -> Result<HashSet<(String, String)>, FalconError> {
        let values: Vec<String> = iocs.iter().map(|ioc| fql::quote(&ioc.value)).collect();
        let filter = format!("value:[{}]", values.join(","));
        let call = Call::get(
            "/iocs/combined/indicator/v1",
            "search IOCs",
            Scope::IocManagement,
        )
        .query("filter", filter)
        .query("limit", (iocs.len() * 2).clamp(1, 2000));
        let reply = self.send(call).await?;
        Ok(reply
            .envelope
            .resources::<RawIndicator>("indicator")
            .into_iter()
            .filter_map(|i| Some(key(i.kind.as_deref()?, i.value.as_deref()?)))
            .collect())
    }

    /// Creates `iocs`, isolating what Falcon refuses: Falcon refuses a whole create request
    /// for one invalid value, so a refused request is split in halves and each sent again,
    /// until every refused value stands alone and fails only its own sample. When both halves
    /// are refused as wholes for the very reasons the whole was (a comment or a field common to
    /// all values, not one value), splitting on would only repeat the refusal up to 2n-1 times:
    /// the values fail together with that reason after three requests.
    async fn post_isolating<'a>(
        &self,
        iocs: &[&'a NewIoc],
        comment: &str,
        outcome: &mut IocOutcome,
    ) -> Result<(), FalconError> {
        let Some(whole) = self.post_once(iocs, comment, outcome).await? else {
            return Ok(());
        };
        tracing::debug!(
            count = whole.iocs.len(),
            "Falcon refused an IOC request as a whole; sending it again in halves"
        );
        let (first, second) = whole.iocs.split_at(whole.iocs.len() / 2);
        let first = self.post_once(first, comment, outcome).await?;
        let second = self.post_once(second, comment, outcome).await?;
        if let (Some(a), Some(b)) = (&first, &second)
            && a.messages == whole.messages
            && b.messages == whole.messages
        {
            let error = format!(
                "Falcon refused every part of the IOC request for the same reason, so no single value is to blame: {}",
                whole.error
            );
            outcome
                .failed
                .extend(a.iocs.iter().chain(&b.iocs).map(|ioc| IocFailure {
                    kind: ioc.kind,
                    value: ioc.value.clone(),
                    error: error.clone(),
                    // A refusal of these IOCs' request (a 4xx), not an outage: retried until
                    // give_up_after.
                    blame: crate::pipeline::blame::Blame::Sample,
                }));
            return Ok(());
        }
        let mut queue: Vec<Vec<&'a NewIoc>> = Vec::new();
        let halve = |queue: &mut Vec<Vec<&'a NewIoc>>, refused: Refusal<'a>| {
            let (first, second) = refused.iocs.split_at(refused.iocs.len() / 2);
            queue.push(second.to_vec());
            queue.push(first.to_vec());
        };
        for refused in [second, first].into_iter().flatten() {
            halve(&mut queue, refused);
        }
        while let Some(part) = queue.pop() {
            if let Some(refused) = self.post_once(&part, comment, outcome).await? {
                halve(&mut queue, refused);
            }
        }
        Ok(())
    }

    /// One create request for `iocs`; after an ambiguous failure (a timeout, a 5xx) it checks
    /// which of these values landed and sends only the rest once more, so nothing settled
    /// elsewhere in the batch is counted or sent twice.
    async fn post_once<'a>(
        &self,
        iocs: &[&'a NewIoc],
        comment: &str,
        outcome: &mut IocOutcome,
    ) -> Result<Option<Refusal<'a>>, FalconError> {
        match self.post_iocs(iocs, comment, outcome).await {
            Err(e) if e.is_ambiguous() => {
                tracing::warn!(error = %e, "IOC create may or may not have landed; checking before sending again");
                let landed = self.existing_iocs(iocs).await?;
                let (created, still_missing): (Vec<&NewIoc>, Vec<&NewIoc>) = iocs
                    .iter()
                    .partition(|ioc| landed.contains(&key(ioc.kind.as_str(), &ioc.value)));
                outcome
                    .created
                    .extend(created.iter().map(|ioc| ioc.value.clone()));
                if still_missing.is_empty() {
                    return Ok(None);
                }
                self.post_iocs(&still_missing, comment, outcome).await
            }
            other => other,
        }
    }

    /// One create request; sorts what came back into created, already existing and failed.
    /// When Falcon refused the request as a whole (nothing created, several values without an
    /// explanation of their own), those values are handed back to be sent again in smaller
    /// parts instead of failing together.
    async fn post_iocs<'a>(
        &self,
        iocs: &[&'a NewIoc],
        comment: &str,
        outcome: &mut IocOutcome,
    ) -> Result<Option<Refusal<'a>>, FalconError> {
        let indicators: Vec<serde_json::Value> = iocs.iter().map(|ioc| indicator(ioc)).collect();
        let call = Call::post(
            "/iocs/entities/indicators/v1",
            "create IOCs",
            Scope::IocManagement,
        )
        .json(json!({ "comment": comment, "indicators": indicators }))
        .once()
        // A 400 may be a partial success: duplicates are listed in errors, the rest created.
        .accept(&[400]);
        let reply = self.send(call).await?;
        let created: HashSet<(String, String)> = reply
            .envelope
            .resources::<RawIndicator>("indicator")
            .into_iter()
            .filter_map(|i| Some(key(i.kind.as_deref()?, i.value.as_deref()?)))
            .collect();
        let messages = reply.envelope.error_messages();
        // A 2xx without errors created everything; one with errors is a partial success,
        // sorted value by value below like a 400.
        if reply.status.is_success() && messages.is_empty() {
            outcome
                .created
                .extend(iocs.iter().map(|ioc| ioc.value.clone()));
            return Ok(None);
        }
        tracing::debug!(
            trace_id = reply.trace_id.as_deref().unwrap_or("none"),
            "IOC create answered {} with errors: {}",
            reply.status.as_u16(),
            messages.join("; ")
        );
        let mut unexplained = Vec::new();
        for ioc in iocs {
            if created.contains(&key(ioc.kind.as_str(), &ioc.value)) {
                outcome.created.push(ioc.value.clone());
            } else if messages.iter().any(|m| is_duplicate_of(m, ioc)) {
                outcome.already_existed.push(ioc.value.clone());
            } else {
                unexplained.push(*ioc);
            }
        }
        if unexplained.is_empty() {
            return Ok(None);
        }
        let mut other: Vec<String> = messages
            .into_iter()
            .filter(|m| !m.contains("Duplicate type"))
            .collect();
        other.sort();
        let error = FalconError::Api {
            status: reply.status.as_u16(),
            messages: if other.is_empty() {
                vec!["IOC not created".into()]
            } else {
                other.clone()
            },
            trace_id: reply.trace_id,
        }
        .to_string();
        if created.is_empty() && unexplained.len() > 1 {
            return Ok(Some(Refusal {
                iocs: unexplained,
                messages: other,
                error,
            }));
        }
        // Rejected by Falcon (an invalid value, a policy): these values fail, the rest of the
        // batch stands.
        outcome
            .failed
            .extend(unexplained.into_iter().map(|ioc| IocFailure {
                kind: ioc.kind,
                value: ioc.value.clone(),
                error: error.clone(),
                // Rejected by Falcon value by value: the value's own, and it may pass (a
                // conflict), so it is retried until give_up_after.
                blame: crate::pipeline::blame::Blame::Sample,
            }));
        Ok(None)
    }
}

/// A create request Falcon refused as a whole: the values it did not settle, and why.
struct Refusal<'a> {
    iocs: Vec<&'a NewIoc>,
    /// Falcon's error messages, sorted (duplicates left out).
    messages: Vec<String>,
    /// The refusal as an error a user reads.
    error: String,
}

/// `Duplicate type: 'sha256' and value: '<v>' combination.`
fn is_duplicate_of(message: &str, ioc: &NewIoc) -> bool {
    let lower = message.to_ascii_lowercase();
    lower.contains("duplicate")
        && lower.contains(&format!("'{}'", ioc.kind.as_str()))
        && lower.contains(&format!("'{}'", ioc.value.trim().to_ascii_lowercase()))
}

fn indicator(ioc: &NewIoc) -> serde_json::Value {
    let mut body = json!({
        "type": ioc.kind.as_str(),
        "value": ioc.value,
        "action": ioc.action.as_str(),
        "severity": ioc.severity,
        "platforms": ["windows", "mac", "linux"],
        "applied_globally": true,
        "tags": ["VMRAY"],
        "source": "VMRay",
        "description": ioc.description,
    });
    if let Some(expiration) = ioc.expiration {
        body["expiration"] = json!(fql::timestamp(expiration));
    }
    if let (IocType::Sha256, Some(filename)) = (ioc.kind, ioc.filename.as_deref()) {
        body["metadata"] = json!({ "filename": filename });
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::IocAction;
    use time::macros::datetime;

    fn ioc(kind: IocType, value: &str) -> NewIoc {
        NewIoc {
            kind,
            value: value.into(),
            action: IocAction::Prevent,
            severity: "high".into(),
            description: "VMRay report https://vmray/report/1".into(),
            expiration: None,
            filename: Some("x.exe".into()),
        }
    }

    #[test]
    fn the_indicator_body_has_every_contract_field() {
        let mut hash = ioc(IocType::Sha256, &"a".repeat(64));
        hash.expiration = Some(datetime!(2026-01-02 03:04:05.5 UTC));
        let body = indicator(&hash);
        assert_eq!(body["type"], "sha256");
        assert_eq!(body["action"], "prevent");
        assert_eq!(body["applied_globally"], true);
        assert_eq!(body["tags"], json!(["VMRAY"]));
        assert_eq!(body["source"], "VMRay");
        assert_eq!(body["platforms"], json!(["windows", "mac", "linux"]));
        assert_eq!(body["expiration"], "2026-01-02T03:04:05Z");
        assert_eq!(body["metadata"]["filename"], "x.exe");
        let domain = indicator(&ioc(IocType::Domain, "evil.example"));
        assert!(domain.get("metadata").is_none() && domain.get("expiration").is_none());
    }

    #[test]
    fn duplicate_messages_are_matched_to_their_ioc() {
        let message = "Duplicate type: 'domain' and value: 'evil.example' combination.";
        assert!(is_duplicate_of(
            message,
            &ioc(IocType::Domain, "Evil.Example")
        ));
        assert!(!is_duplicate_of(
            message,
            &ioc(IocType::Domain, "other.example")
        ));
        assert!(!is_duplicate_of(
            message,
            &ioc(IocType::Ipv4, "evil.example")
        ));
    }
}
