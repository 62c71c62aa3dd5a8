//! Step 5, act: perform planned actions in Falcon, each journaled as planned before its call and
//! as done (or failed, or deferred) after it.
//!
//! Alerts and quarantine records that get the same text are updated in one request. After a
//! crash, [`resume`] replays what was planned and not done, first checking whether an alert
//! update already landed (its verdict tag is on the alert); the other calls are idempotent by
//! construction (the client checks IOCs and cases for existence, containing a contained host
//! changes nothing).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::plan::{Action, IocKind, IocSpec, PlannedAction};
use super::report::{ActionCounts, ActionTally};
use crate::falcon::{
    AlertStatus, AlertUpdate, FalconClient, FalconError, IocType, NewCase, NewIoc, QuarantineAction,
};
use crate::state::{JournalEntry, JournalState, StateError, StateStore};

/// What acting needs: the client, the journal, and the cycle's containment budget.
pub struct Actor<'a> {
    pub falcon: &'a FalconClient,
    pub store: &'a StateStore,
    /// Hosts that may still be contained this cycle (`contain_max_per_cycle`).
    pub contain_budget: &'a AtomicUsize,
}

/// The result of acting: counts per kind, and notes for the report.
#[derive(Debug, Default)]
pub struct Acted {
    pub tally: ActionTally,
    pub notes: Vec<String>,
}

impl Actor<'_> {
    /// Journals the actions as planned, then performs them.
    pub async fn perform(&self, actions: Vec<PlannedAction>) -> Result<Acted, StateError> {
        self.journal(&actions)?;
        self.execute(actions).await
    }

    /// Journals actions as planned, for [`Self::execute`] now or later (or a restart).
    pub fn journal(&self, actions: &[PlannedAction]) -> Result<(), StateError> {
        let entries: Vec<JournalEntry> = actions
            .iter()
            .map(|a| JournalEntry {
                key: a.key.clone(),
                sha256: a.sha256.to_string(),
                state: JournalState::Planned,
                payload: serde_json::to_string(a).expect("actions serialise"),
            })
            .collect();
        self.store.journal(&entries)
    }

    /// Performs what an earlier run journaled and did not finish.
    pub async fn resume(&self) -> Result<Acted, StateError> {
        let mut actions = Vec::new();
        for entry in self.store.unfinished_actions()? {
            match serde_json::from_str::<PlannedAction>(&entry.payload) {
                Ok(action) => actions.push(action),
                Err(e) => {
                    tracing::error!(key = %entry.key, "journal entry cannot be read, dropped: {e}");
                    self.store.mark(
                        &[entry.key],
                        JournalState::Failed,
                        Some("unreadable payload"),
                    )?;
                }
            }
        }
        if actions.is_empty() {
            return Ok(Acted::default());
        }
        tracing::info!(
            "resuming {} action(s) an earlier run planned and did not finish",
            actions.len()
        );
        let actions = self.drop_landed_alert_updates(actions).await?;
        self.execute(actions).await
    }

    /// Alert updates whose verdict tag is already on the alert landed before the crash.
    async fn drop_landed_alert_updates(
        &self,
        actions: Vec<PlannedAction>,
    ) -> Result<Vec<PlannedAction>, StateError> {
        let ids: Vec<String> = actions
            .iter()
            .filter_map(|a| match &a.action {
                Action::UpdateAlert { composite_id, .. } => Some(composite_id.clone()),
                _ => None,
            })
            .collect();
        if ids.is_empty() {
            return Ok(actions);
        }
        let current = match self.falcon.alerts_by_id(&ids).await {
            Ok(alerts) => alerts,
            // Unknown: perform them again; a repeated comment beats a lost one.
            Err(e) => {
                tracing::warn!("cannot check whether earlier alert updates landed: {e}");
                return Ok(actions);
            }
        };
        let mut keep = Vec::new();
        let mut landed = Vec::new();
        for action in actions {
            let done = match &action.action {
                Action::UpdateAlert {
                    composite_id, tag, ..
                } => current
                    .iter()
                    .any(|a| &a.composite_id == composite_id && a.tags.contains(tag)),
                _ => false,
            };
            if done {
                landed.push(action.key);
            } else {
                keep.push(action);
            }
        }
        if !landed.is_empty() {
            tracing::info!(
                "{} alert update(s) had landed before the restart",
                landed.len()
            );
            self.store.mark(&landed, JournalState::Done, None)?;
        }
        Ok(keep)
    }

    /// Performs journaled actions, as few requests as the API allows: one alert update per text,
    /// one quarantine update per action and comment, one IOC creation for all the samples'
    /// IOCs, one containment call.
    pub async fn execute(&self, actions: Vec<PlannedAction>) -> Result<Acted, StateError> {
        let mut acted = Acted::default();
        let mut alerts: BTreeMap<(Option<String>, Option<String>, String), Vec<PlannedAction>> =
            BTreeMap::new();
        let mut quarantines: BTreeMap<(String, Option<String>), Vec<PlannedAction>> =
            BTreeMap::new();
        let mut contains = Vec::new();
        let mut iocs = Vec::new();
        let mut singles = Vec::new();
        for action in actions {
            match &action.action {
                Action::UpdateAlert {
                    comment,
                    status,
                    tag,
                    ..
                } => alerts
                    .entry((comment.clone(), status.clone(), tag.clone()))
                    .or_default()
                    .push(action),
                Action::UpdateQuarantine {
                    action: what,
                    comment,
                    ..
                } => quarantines
                    .entry((what.clone(), comment.clone()))
                    .or_default()
                    .push(action),
                Action::Contain { .. } => contains.push(action),
                Action::CreateIocs { .. } => iocs.push(action),
                _ => singles.push(action),
            }
        }

        for ((comment, status, tag), group) in alerts {
            let ids: Vec<String> = group
                .iter()
                .filter_map(|a| match &a.action {
                    Action::UpdateAlert { composite_id, .. } => Some(composite_id.clone()),
                    _ => None,
                })
                .collect();
            let update = AlertUpdate {
                comment,
                status: status.as_deref().map(alert_status),
                add_tags: vec![tag],
            };
            let result = self.falcon.update_alerts(&ids, &update).await;
            // The client never re-sends a comment after an ambiguous failure; whatever landed
            // carries the verdict tag, and only the rest is a failure.
            let (group, result) = match result {
                Ok(()) => (group, Ok(())),
                Err(error) => {
                    let rest = self.drop_landed_alert_updates(group).await?;
                    (rest, Err(error))
                }
            };
            self.settle(&mut acted, "alert_update", &group, result)?;
        }

        for ((what, comment), group) in quarantines {
            let ids: Vec<String> = group
                .iter()
                .filter_map(|a| match &a.action {
                    Action::UpdateQuarantine { id, .. } => Some(id.clone()),
                    _ => None,
                })
                .collect();
            let action = if what == "release" {
                QuarantineAction::Release
            } else {
                QuarantineAction::Unrelease
            };
            let result = self
                .falcon
                .update_quarantined_files(&ids, action, comment.as_deref().unwrap_or(""))
                .await;
            self.settle(&mut acted, "quarantine_update", &group, result)?;
        }

        self.contain(&mut acted, contains).await?;
        self.create_iocs(&mut acted, iocs).await?;

        for action in singles {
            let result = match &action.action {
                Action::OpenCase {
                    name,
                    description,
                    severity,
                    alert_ids,
                    assignee,
                    tags,
                } => self
                    .falcon
                    .create_case(&NewCase {
                        name: name.clone(),
                        description: description.clone(),
                        severity: *severity,
                        alert_ids: alert_ids.clone(),
                        assigned_to_user_uuid: assignee.clone(),
                        tags: tags.clone(),
                    })
                    .await
                    .map(|id| tracing::info!(sha256 = %action.sha256, case = %id, "case opened")),
                Action::Scan {
                    device_ids,
                    file_paths,
                } => {
                    self.falcon.start_scan(device_ids, file_paths).await.map(
                        |id| tracing::info!(sha256 = %action.sha256, scan = %id, "scan started"),
                    )
                }
                Action::UpdateAlert { .. }
                | Action::UpdateQuarantine { .. }
                | Action::Contain { .. }
                | Action::CreateIocs { .. } => unreachable!("grouped above"),
            };
            let kind = action.action.kind();
            self.settle(&mut acted, kind, std::slice::from_ref(&action), result)?;
        }
        Ok(acted)
    }

    /// Creates the IOCs of every sample in one batched call (the client checks existence and
    /// sends them in batches); a sample's IOCs are done or failed together with the batch.
    async fn create_iocs(
        &self,
        acted: &mut Acted,
        actions: Vec<PlannedAction>,
    ) -> Result<(), StateError> {
        if actions.is_empty() {
            return Ok(());
        }
        let specs: Vec<NewIoc> = actions
            .iter()
            .flat_map(|a| match &a.action {
                Action::CreateIocs { iocs, .. } => iocs.iter().map(new_ioc).collect(),
                _ => Vec::new(),
            })
            .collect();
        let comment = match actions.as_slice() {
            [single] => match &single.action {
                Action::CreateIocs { comment, .. } => comment.clone(),
                _ => unreachable!("only IOC actions"),
            },
            many => format!(
                "Created by the VMRay connector for {} samples (each IOC's description names its sample and report)",
                many.len()
            ),
        };
        let result = self
            .falcon
            .create_iocs(&specs, &comment)
            .await
            .map(|outcome| {
                tracing::info!(
                    samples = actions.len(),
                    "IOCs: {} created, {} already in Falcon",
                    outcome.created.len(),
                    outcome.already_existed.len()
                );
            });
        self.settle(acted, "ioc_create", &actions, result)
    }

    /// Contains as many hosts as the cycle's budget allows; the rest wait for the next cycle.
    async fn contain(
        &self,
        acted: &mut Acted,
        actions: Vec<PlannedAction>,
    ) -> Result<(), StateError> {
        let mut now = Vec::new();
        let mut later = Vec::new();
        for action in actions {
            let granted = self
                .contain_budget
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                    left.checked_sub(1)
                })
                .is_ok();
            if granted {
                now.push(action);
            } else {
                later.push(action);
            }
        }
        if !later.is_empty() {
            let keys: Vec<String> = later.iter().map(|a| a.key.clone()).collect();
            self.store.mark(&keys, JournalState::Deferred, None)?;
            for action in &later {
                acted.notes.push(format!(
                    "{} deferred to the next cycle: contain_max_per_cycle reached",
                    action.action.describe()
                ));
            }
            acted.tally.entry("contain").or_default().deferred += later.len() as u64;
        }
        if now.is_empty() {
            return Ok(());
        }
        let ids: Vec<String> = now
            .iter()
            .filter_map(|a| match &a.action {
                Action::Contain { device_id, .. } => Some(device_id.clone()),
                _ => None,
            })
            .collect();
        let result = self.falcon.contain_hosts(&ids).await;
        let (now, result) = match result {
            Ok(()) => (now, Ok(())),
            // Containment is not re-sent after an ambiguous failure: see what took effect.
            Err(error) => {
                let contained: Vec<String> = match self.falcon.hosts(&ids).await {
                    Ok(hosts) => hosts
                        .into_iter()
                        .filter(|h| {
                            matches!(
                                h.status.as_deref(),
                                Some("contained" | "containment_pending")
                            )
                        })
                        .map(|h| h.device_id)
                        .collect(),
                    Err(_) => Vec::new(),
                };
                let (landed, rest): (Vec<_>, Vec<_>) = now.into_iter().partition(|a| {
                    matches!(&a.action, Action::Contain { device_id, .. } if contained.contains(device_id))
                });
                self.settle(acted, "contain", &landed, Ok(()))?;
                (rest, Err(error))
            }
        };
        if now.is_empty() {
            return Ok(());
        }
        self.settle(acted, "contain", &now, result)
    }

    /// Journals the result of one call covering `group`.
    fn settle(
        &self,
        acted: &mut Acted,
        kind: &'static str,
        group: &[PlannedAction],
        result: Result<(), FalconError>,
    ) -> Result<(), StateError> {
        if group.is_empty() {
            return Ok(());
        }
        let keys: Vec<String> = group.iter().map(|a| a.key.clone()).collect();
        let counts: &mut ActionCounts = acted.tally.entry(kind).or_default();
        match result {
            Ok(()) => {
                self.store.mark(&keys, JournalState::Done, None)?;
                counts.done += keys.len() as u64;
            }
            Err(error) => {
                tracing::error!(kind, count = keys.len(), "action failed: {error}");
                self.store
                    .mark(&keys, JournalState::Failed, Some(&error.to_string()))?;
                counts.failed += keys.len() as u64;
            }
        }
        Ok(())
    }
}

fn alert_status(raw: &str) -> AlertStatus {
    match raw {
        "closed" => AlertStatus::Closed,
        "new" => AlertStatus::New,
        "reopened" => AlertStatus::Reopened,
        _ => AlertStatus::InProgress,
    }
}

fn new_ioc(spec: &IocSpec) -> NewIoc {
    NewIoc {
        kind: match spec.kind {
            IocKind::Sha256 => IocType::Sha256,
            IocKind::Domain => IocType::Domain,
            IocKind::Ipv4 => IocType::Ipv4,
            IocKind::Ipv6 => IocType::Ipv6,
        },
        value: spec.value.clone(),
        action: spec.action,
        severity: spec.severity.clone(),
        description: spec.description.clone(),
        expiration: spec.expiration,
        filename: spec.filename.clone(),
    }
}
