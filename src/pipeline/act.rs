//! Step 5, act: perform planned actions in Falcon, each journaled as planned before its call and
//! as done (or failed, or deferred) after it.
//!
//! Alerts and quarantine records that get the same text are updated in one request. Nothing
//! that writes an audit trail is sent twice: after a crash or an ambiguous failure (a timeout, a
//! 5xx) the connector reads back what landed before sending again: an alert update left its
//! landing mark, a quarantine update moved the record's `date_updated`, a containment shows in
//! the host's status, IOCs and cases are looked up by value and name. An on-demand scan cannot
//! be read back, so it is started at most once.
//!
//! A failed action stays in the journal and is tried again by later cycles (read back first).
//! As for samples (see [`super::blame`]), a failure that is the service's (Falcon down, a 5xx,
//! rate limits, a refused token or scope, an unreadable answer) never counts against it,
//! however many cycles it lasts; an action is given up only when Falcon says its entity no
//! longer exists, or after failing for reasons of its own (Falcon refusing that entity) for
//! longer than `give_up_after`. Every give-up is logged (warn) with its reason, noted in the
//! cycle report and counted in `connector_actions_given_up_total{kind,reason}`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use tokio::sync::OwnedMutexGuard;

use time::OffsetDateTime;

use super::blame::{self, Blame};
use super::plan::{Action, IocKind, IocSpec, PlannedAction, quarantine_action};
use super::report::{ActionCounts, ActionTally};
use crate::falcon::{
    AlertStatus, AlertUpdate, EntityFailure, FalconClient, FalconError, IocType, NewCase, NewIoc,
    QuarantineAction,
};
use crate::state::{JournalEntry, JournalState, StateError, StateStore};

/// Why an action failed, and whose failure it is.
#[derive(Debug, Clone)]
struct Failure {
    reason: String,
    blame: Blame,
}

impl Failure {
    fn falcon(error: &FalconError) -> Self {
        Failure {
            reason: error.to_string(),
            blame: blame::falcon(error),
        }
    }

    fn context(error: &FalconError, context: &str) -> Self {
        Failure {
            reason: format!("{context}: {error}"),
            blame: blame::falcon(error),
        }
    }
}

/// Why an action was given up: the `reason` label of `connector_actions_given_up_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActionGiveUp {
    /// Falcon says the entity no longer exists.
    Permanent,
    /// Failing for reasons of its own for longer than `give_up_after`.
    GiveUpAfter,
    /// A scan that may have started: scans are started at most once.
    AtMostOnce,
    /// A journal entry this build cannot read.
    Unreadable,
}

impl ActionGiveUp {
    pub fn label(self) -> &'static str {
        match self {
            ActionGiveUp::Permanent => "permanent",
            ActionGiveUp::GiveUpAfter => "give_up_after",
            ActionGiveUp::AtMostOnce => "at_most_once",
            ActionGiveUp::Unreadable => "unreadable",
        }
    }
}

/// Hosts that may still be contained this cycle (`contain_max_per_cycle`). A host counts once
/// however many samples it ran; a place is given back when every containment of the host in
/// this cycle failed.
///
/// It also makes containment one request per host however many samples of the cycle ran on
/// it: a host's containments take turns (a lock per host), and once one landed the others are
/// done without a request.
#[derive(Debug)]
pub struct ContainBudget {
    state: Mutex<Budget>,
    /// Per host: whether it is contained (asked this cycle, or found contained).
    hosts: Mutex<HashMap<String, Arc<tokio::sync::Mutex<bool>>>>,
}

#[derive(Debug)]
struct Budget {
    left: usize,
    /// Granted hosts: how many containment calls still hold each, and whether one succeeded.
    granted: HashMap<String, (usize, bool)>,
}

impl ContainBudget {
    pub fn new(max_hosts: usize) -> Self {
        ContainBudget {
            state: Mutex::new(Budget {
                left: max_hosts,
                granted: HashMap::new(),
            }),
            hosts: Mutex::new(HashMap::new()),
        }
    }

    /// Takes the hosts' turns, in sorted order so that two callers never wait on each other.
    async fn turns(&self, device_ids: &[String]) -> BTreeMap<String, OwnedMutexGuard<bool>> {
        let mut ids = device_ids.to_vec();
        ids.sort();
        ids.dedup();
        let mut turns = BTreeMap::new();
        for id in ids {
            let lock = self
                .hosts
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(id.clone())
                .or_default()
                .clone();
            turns.insert(id, lock.lock_owned().await);
        }
        turns
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Budget> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn grant(&self, device_id: &str) -> bool {
        let mut budget = self.lock();
        if let Some((holders, _)) = budget.granted.get_mut(device_id) {
            *holders += 1;
            return true;
        }
        if budget.left == 0 {
            return false;
        }
        budget.left -= 1;
        budget.granted.insert(device_id.to_string(), (1, false));
        true
    }

    /// One containment call of the host ended; `contained` says whether it took effect.
    fn release(&self, device_id: &str, contained: bool) {
        let mut budget = self.lock();
        let Some((holders, succeeded)) = budget.granted.get_mut(device_id) else {
            return;
        };
        *holders = holders.saturating_sub(1);
        *succeeded |= contained;
        if *holders == 0 && !*succeeded {
            budget.granted.remove(device_id);
            budget.left += 1;
        }
    }
}

/// What acting needs: the client, the journal, and the cycle's containment budget.
pub struct Actor<'a> {
    pub falcon: &'a FalconClient,
    pub store: &'a StateStore,
    pub contain_budget: &'a ContainBudget,
    /// The alert statuses the plan was made from were read moments ago. When not (a sample
    /// that waited for its analysis, a replay), alerts are read again before their status is
    /// changed: an analyst may have taken them over meanwhile.
    pub statuses_fresh: bool,
    /// When this cycle started: an action planned before it (by a run that died) or tried
    /// before may have landed, and is read back before it is sent.
    pub cycle_started: OffsetDateTime,
    /// `general.give_up_after`: how long an action may fail for reasons of its own.
    pub give_up_after: u64,
}

/// The result of acting: counts per kind, and notes for the report.
#[derive(Debug, Default)]
pub struct Acted {
    pub tally: ActionTally,
    pub notes: Vec<String>,
    /// Some failure was an action's own (Falcon refused its entity), not a service's.
    pub failed_own: bool,
    /// The journal keys of the actions whose failure was their own: a batch shared by many
    /// samples counts only against the samples it refused, not those a service failed.
    pub failed_own_keys: std::collections::HashSet<String>,
}

impl Acted {
    pub fn any_failed(&self) -> bool {
        self.tally.values().any(|c| c.failed > 0)
    }
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

    /// Performs what earlier cycles journaled and did not finish: interrupted by a crash,
    /// deferred by the containment cap, or failed and not given up. A failed
    /// action of a sample in `retrying` is left to that sample: it is planned again from its
    /// current verdict, which may have changed.
    pub async fn resume(&self, retrying: &HashSet<String>) -> Result<Acted, StateError> {
        let mut acted = Acted::default();
        let mut actions = Vec::new();
        let mut interrupted_scans = Vec::new();
        for entry in self.store.unfinished_actions()? {
            if entry.state == JournalState::Failed && retrying.contains(&entry.sha256) {
                continue;
            }
            match serde_json::from_str::<PlannedAction>(&entry.payload) {
                Ok(action)
                    if entry.state == JournalState::Planned
                        && matches!(action.action, Action::Scan { .. }) =>
                {
                    interrupted_scans.push(action);
                }
                Ok(action) => actions.push(action),
                Err(e) => {
                    let reason = format!("journal entry cannot be read: {e}");
                    tracing::warn!(
                        key = %entry.key,
                        reason = ActionGiveUp::Unreadable.label(),
                        "giving the action up: {reason}"
                    );
                    self.store
                        .abandon(std::slice::from_ref(&entry.key), &reason)?;
                    acted
                        .notes
                        .push(format!("{}: given up (unreadable): {reason}", entry.key));
                    acted.tally.entry("unknown").or_default().given_up += 1;
                    crate::metrics::action_given_up("unknown", ActionGiveUp::Unreadable.label(), 1);
                }
            }
        }
        for action in &interrupted_scans {
            self.give_up(
                &mut acted,
                "scan",
                std::slice::from_ref(action),
                ActionGiveUp::AtMostOnce,
                "interrupted by a restart; it may have started, so it is not repeated (scans are started at most once)",
            )?;
        }
        if actions.is_empty() {
            return Ok(acted);
        }
        tracing::info!(
            "resuming {} action(s) earlier cycles planned and did not finish",
            actions.len()
        );
        let resumed = self.execute(actions).await?;
        acted.notes.extend(resumed.notes);
        acted.failed_own |= resumed.failed_own;
        acted.failed_own_keys.extend(resumed.failed_own_keys);
        super::report::add_tally(&mut acted.tally, &resumed.tally);
        Ok(acted)
    }

    /// Reads the alerts of these updates back: an update whose landing mark is on the alert is
    /// done; one whose alert left `new` meanwhile loses its status change (the comment stays).
    /// Returns the updates still to send. If the alerts cannot be read, the updates fail and
    /// are tried again later, read back first: a repeated comment is what this prevents.
    async fn read_back_alerts(
        &self,
        acted: &mut Acted,
        actions: Vec<PlannedAction>,
    ) -> Result<Vec<PlannedAction>, StateError> {
        let mut ids = targets(&actions);
        ids.sort();
        ids.dedup();
        if ids.is_empty() {
            return Ok(actions);
        }
        let current = match self.falcon.alerts_by_id(&ids).await {
            Ok(alerts) => alerts,
            Err(error) => {
                let failure =
                    Failure::context(&error, "cannot read the alerts back before updating them");
                self.settle(acted, "alert_update", &actions, Err(failure))?;
                return Ok(Vec::new());
            }
        };
        let mut keep = Vec::new();
        let mut landed = Vec::new();
        for mut action in actions {
            let Action::UpdateAlert {
                composite_id,
                status,
                tag,
                mark,
                ..
            } = &mut action.action
            else {
                keep.push(action);
                continue;
            };
            let now: Vec<_> = current
                .iter()
                .filter(|a| &a.composite_id == composite_id)
                .collect();
            // Journals of version 0.1 carry no mark: their verdict tag is the best evidence.
            let landing = if mark.is_empty() { &*tag } else { &*mark };
            if now.iter().any(|a| a.tags.iter().any(|t| t == landing)) {
                landed.push(action);
                continue;
            }
            if status.is_some() && now.iter().any(|a| a.status != "new") {
                tracing::info!(
                    alert = %composite_id,
                    "the alert left `new` since it was read: its status is left as it is"
                );
                *status = None;
            }
            keep.push(action);
        }
        if !landed.is_empty() {
            tracing::info!("{} alert update(s) had landed already", landed.len());
            self.settle(acted, "alert_update", &landed, Ok(()))?;
        }
        Ok(keep)
    }

    /// Whether any of these actions was planned by an earlier run or tried before.
    fn may_have_landed(&self, actions: &[PlannedAction]) -> Result<bool, StateError> {
        let keys = keys(actions);
        if !self.store.attempted(&keys)?.is_empty() {
            return Ok(true);
        }
        Ok(self
            .store
            .planned_at(&keys)?
            .values()
            .any(|at| *at < self.cycle_started))
    }

    /// Splits quarantine updates into (landed, not landed) by the records' `date_updated` and
    /// state; `Err` gives them all back, with why, when the records cannot be read.
    #[allow(clippy::type_complexity)]
    async fn quarantine_landed(
        &self,
        actions: Vec<PlannedAction>,
    ) -> Result<
        Result<(Vec<PlannedAction>, Vec<PlannedAction>), (Vec<PlannedAction>, Failure)>,
        StateError,
    > {
        let keys = keys(&actions);
        let planned_at = self.store.planned_at(&keys)?;
        let ids = targets(&actions);
        let records = match self.falcon.quarantined_files_by_id(&ids).await {
            Ok(records) => records,
            Err(e) => {
                tracing::warn!("cannot check whether quarantine updates landed: {e}");
                let failure = Failure::context(&e, "cannot read the quarantine records back");
                return Ok(Err((actions, failure)));
            }
        };
        Ok(Ok(actions.into_iter().partition(|a| {
            let Action::UpdateQuarantine { id, action, .. } = &a.action else {
                return false;
            };
            let Some(since) = planned_at.get(&a.key) else {
                return false;
            };
            // Falcon's `date_updated` has whole seconds.
            let since = since.replace_nanosecond(0).unwrap_or(*since);
            records.iter().any(|r| {
                &r.id == id
                    && r.updated.is_some_and(|u| u >= since)
                    && (action != "release" || r.state == "released")
            })
        })))
    }

    /// Reads the records of these updates back, as the plan may be old (a sample that waited
    /// for its analysis, a replay): an update the record's current state no longer allows (an
    /// analyst released the file, or acted on it) is dropped, journaled as done with a note,
    /// since there is nothing left to do. `None` when the records cannot be read: the updates
    /// failed and a later cycle tries again.
    async fn current_quarantines(
        &self,
        acted: &mut Acted,
        group: Vec<PlannedAction>,
    ) -> Result<Option<Vec<PlannedAction>>, StateError> {
        let records = match self.falcon.quarantined_files_by_id(&targets(&group)).await {
            Ok(records) => records,
            Err(error) => {
                let failure = Failure::context(&error, "cannot read the quarantine records back");
                self.settle(acted, "quarantine_update", &group, Err(failure))?;
                return Ok(None);
            }
        };
        let mut keep = Vec::new();
        let mut dropped = Vec::new();
        for planned in group {
            let Action::UpdateQuarantine { id, action, .. } = &planned.action else {
                continue;
            };
            let harmful = action != "release";
            let verdict = match records.iter().find(|r| &r.id == id) {
                Some(record) => quarantine_action(record, harmful, !harmful),
                None => Err(format!(
                    "quarantine {id} left as it is: Falcon no longer has it"
                )),
            };
            match verdict {
                Ok(Some(_)) => keep.push(planned),
                Ok(None) => dropped.push(planned),
                Err(note) => {
                    acted.notes.push(note);
                    dropped.push(planned);
                }
            }
        }
        if !dropped.is_empty() {
            self.store.mark(&keys(&dropped), JournalState::Done, None)?;
        }
        Ok(Some(keep))
    }

    /// Performs journaled actions, as few requests as the API allows: one alert update per text,
    /// one quarantine update per action and comment, one IOC creation for all the samples'
    /// IOCs, one containment call.
    pub async fn execute(&self, actions: Vec<PlannedAction>) -> Result<Acted, StateError> {
        let mut acted = Acted::default();
        let mut alert_updates = Vec::new();
        let mut quarantines: BTreeMap<(String, Option<String>), Vec<PlannedAction>> =
            BTreeMap::new();
        let mut contains = Vec::new();
        let mut iocs = Vec::new();
        let mut singles = Vec::new();
        for action in actions {
            match &action.action {
                Action::UpdateAlert { .. } => alert_updates.push(action),
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

        if !self.statuses_fresh && !alert_updates.is_empty() {
            alert_updates = self.read_back_alerts(&mut acted, alert_updates).await?;
        }
        self.update_alerts(&mut acted, alert_updates).await?;
        for group in quarantines.into_values() {
            self.update_quarantine(&mut acted, group).await?;
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
                    .map(|id| tracing::info!(sha256 = %action.sha256, case = %id, "case opened"))
                    .map_err(|e| Failure::falcon(&e)),
                Action::Scan {
                    device_ids,
                    file_paths,
                } => match self.falcon.start_scan(device_ids, file_paths).await {
                    Ok(id) => {
                        tracing::info!(sha256 = %action.sha256, scan = %id, "scan started");
                        Ok(())
                    }
                    // It may have started: at most once, so never again.
                    Err(error) if error.is_ambiguous() => {
                        acted.tally.entry("scan").or_default().failed += 1;
                        self.give_up(
                            &mut acted,
                            "scan",
                            std::slice::from_ref(&action),
                            ActionGiveUp::AtMostOnce,
                            &format!(
                                "the answer was lost ({error}); it may have started and is not repeated"
                            ),
                        )?;
                        continue;
                    }
                    Err(error) => Err(Failure::falcon(&error)),
                },
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

    /// Sends alert updates, one request per text. After an ambiguous failure (a timeout, a
    /// 5xx) the alerts are read back: what carries its landing mark is done, and what certainly
    /// did not land is sent once more; a second failure leaves it to a later cycle.
    async fn update_alerts(
        &self,
        acted: &mut Acted,
        mut pending: Vec<PlannedAction>,
    ) -> Result<(), StateError> {
        for last_try in [false, true] {
            let mut again = Vec::new();
            for ((comment, status, tag, mark), group) in group_alert_updates(pending) {
                let ids = targets(&group);
                let update = AlertUpdate {
                    comment,
                    status: status.as_deref().map(alert_status),
                    add_tags: [tag, mark].into_iter().filter(|t| !t.is_empty()).collect(),
                };
                match self.falcon.update_alerts(&ids, &update).await {
                    Ok(failed) => self.settle_partial(acted, "alert_update", group, &failed)?,
                    Err(error) if error.is_ambiguous() && !last_try => {
                        tracing::warn!("alert update answered {error}; reading the alerts back");
                        again.extend(self.read_back_alerts(acted, group).await?);
                    }
                    Err(error) => {
                        let rest = if error.is_ambiguous() {
                            self.read_back_alerts(acted, group).await?
                        } else {
                            group
                        };
                        self.settle(acted, "alert_update", &rest, Err(Failure::falcon(&error)))?;
                    }
                }
            }
            pending = again;
            if pending.is_empty() {
                break;
            }
        }
        Ok(())
    }

    /// Sends one quarantine update (one action and comment for many records). After an
    /// ambiguous failure the records are read back; what did not land is sent once more.
    async fn update_quarantine(
        &self,
        acted: &mut Acted,
        mut group: Vec<PlannedAction>,
    ) -> Result<(), StateError> {
        if self.may_have_landed(&group)? {
            match self.quarantine_landed(group).await? {
                Ok((landed, rest)) => {
                    if !landed.is_empty() {
                        tracing::info!("{} quarantine update(s) had landed already", landed.len());
                    }
                    self.settle(acted, "quarantine_update", &landed, Ok(()))?;
                    group = rest;
                }
                // Unknown: left for a later cycle rather than risk a second audit comment.
                Err((unknown, failure)) => {
                    return self.settle(acted, "quarantine_update", &unknown, Err(failure));
                }
            }
        }
        if !self.statuses_fresh && !group.is_empty() {
            group = match self.current_quarantines(acted, group).await? {
                Some(group) => group,
                None => return Ok(()),
            };
        }
        for last_try in [false, true] {
            let Some(Action::UpdateQuarantine {
                action, comment, ..
            }) = group.first().map(|a| a.action.clone())
            else {
                return Ok(());
            };
            let ids = targets(&group);
            let what = if action == "release" {
                QuarantineAction::Release
            } else {
                QuarantineAction::Unrelease
            };
            let error = match self
                .falcon
                .update_quarantined_files(&ids, what, comment.as_deref().unwrap_or(""))
                .await
            {
                Ok(failed) => {
                    return self.settle_partial(acted, "quarantine_update", group, &failed);
                }
                Err(error) => error,
            };
            if !error.is_ambiguous() {
                return self.settle(
                    acted,
                    "quarantine_update",
                    &group,
                    Err(Failure::falcon(&error)),
                );
            }
            tracing::warn!("quarantine update answered {error}; reading the records back");
            match self.quarantine_landed(group).await? {
                Ok((landed, rest)) => {
                    self.settle(acted, "quarantine_update", &landed, Ok(()))?;
                    if last_try {
                        return self.settle(
                            acted,
                            "quarantine_update",
                            &rest,
                            Err(Failure::falcon(&error)),
                        );
                    }
                    group = rest;
                }
                Err((unknown, _)) => {
                    return self.settle(
                        acted,
                        "quarantine_update",
                        &unknown,
                        Err(Failure::falcon(&error)),
                    );
                }
            }
        }
        Ok(())
    }

    /// Creates the IOCs of every sample in one batched call (the client checks existence and
    /// sends them in batches). A sample's IOC action fails only if one of its own IOCs did.
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
        let outcome = self.falcon.create_iocs(&specs, &comment).await;
        tracing::info!(
            samples = actions.len(),
            "IOCs: {} created, {} already in Falcon, {} not created",
            outcome.created.len(),
            outcome.already_existed.len(),
            outcome.failed.len()
        );
        let failed: HashMap<(IocType, String), (&str, Blame)> = outcome
            .failed
            .iter()
            .map(|f| {
                (
                    (f.kind, f.value.trim().to_ascii_lowercase()),
                    (f.error.as_str(), f.blame),
                )
            })
            .collect();
        for action in actions {
            let Action::CreateIocs { iocs, .. } = &action.action else {
                continue;
            };
            let first_failure = iocs.iter().find_map(|spec| {
                let ioc = new_ioc(spec);
                failed
                    .get(&(ioc.kind, ioc.value.trim().to_ascii_lowercase()))
                    .map(|(error, blame)| Failure {
                        reason: format!("IOC {} {}: {error}", ioc.kind.as_str(), ioc.value),
                        blame: *blame,
                    })
            });
            let result = first_failure.map_or(Ok(()), Err);
            self.settle(acted, "ioc_create", std::slice::from_ref(&action), result)?;
        }
        Ok(())
    }

    /// Contains as many hosts as the cycle's budget allows; the rest wait for the next cycle.
    /// A host contained already (by this cycle, or found `contained` or `containment_pending`)
    /// is not asked again: its containments are done without a request.
    async fn contain(
        &self,
        acted: &mut Acted,
        actions: Vec<PlannedAction>,
    ) -> Result<(), StateError> {
        let mut turns = self.contain_budget.turns(&targets(&actions)).await;
        let (already, actions): (Vec<_>, Vec<_>) = actions.into_iter().partition(|a| {
            a.action
                .target()
                .and_then(|d| turns.get(d))
                .is_some_and(|contained| **contained)
        });
        self.settle(acted, "contain", &already, Ok(()))?;
        if actions.is_empty() {
            return Ok(());
        }
        let mut ids = targets(&actions);
        ids.sort();
        ids.dedup();
        // Asked before this cycle (by an analyst, another tool, an earlier run): not again. If
        // the hosts cannot be read, containing matters more than a request saved.
        let contained_now: Vec<String> = match self.falcon.hosts(&ids).await {
            Ok(hosts) => hosts
                .into_iter()
                .filter(|h| is_contained(h.status.as_deref()))
                .map(|h| h.device_id)
                .collect(),
            Err(error) => {
                tracing::warn!(
                    "cannot read the hosts' containment status, containing anyway: {error}"
                );
                Vec::new()
            }
        };
        let (already, actions): (Vec<_>, Vec<_>) = actions.into_iter().partition(|a| {
            a.action
                .target()
                .is_some_and(|d| contained_now.iter().any(|c| c == d))
        });
        for action in &already {
            acted.notes.push(format!(
                "{}: contained already, not asked again",
                action.action.describe()
            ));
        }
        mark_contained(&mut turns, &already);
        self.settle(acted, "contain", &already, Ok(()))?;
        let mut now = Vec::new();
        let mut later = Vec::new();
        for action in actions {
            let Action::Contain { device_id, .. } = &action.action else {
                continue;
            };
            if self.contain_budget.grant(device_id) {
                now.push(action);
            } else {
                later.push(action);
            }
        }
        if !later.is_empty() {
            let keys = keys(&later);
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
        for last_try in [false, true] {
            let mut ids = targets(&now);
            ids.sort();
            ids.dedup();
            let error = match self.falcon.contain_hosts(&ids).await {
                Ok(failed) => {
                    let (refused, contained): (Vec<_>, Vec<_>) = now.into_iter().partition(|a| {
                        a.action
                            .target()
                            .is_some_and(|d| failed.iter().any(|f| f.id == d))
                    });
                    self.release_hosts(&contained, true);
                    self.release_hosts(&refused, false);
                    mark_contained(&mut turns, &contained);
                    self.settle(acted, "contain", &contained, Ok(()))?;
                    return self.settle_partial(acted, "contain", refused, &failed);
                }
                Err(error) => error,
            };
            // Containment is not re-sent blindly: see what took effect, send the rest once more.
            let contained: Option<Vec<String>> = match self.falcon.hosts(&ids).await {
                Ok(hosts) => Some(
                    hosts
                        .into_iter()
                        .filter(|h| is_contained(h.status.as_deref()))
                        .map(|h| h.device_id)
                        .collect(),
                ),
                Err(_) => None,
            };
            let known = contained.is_some();
            let contained = contained.unwrap_or_default();
            let (landed, rest): (Vec<_>, Vec<_>) = now.into_iter().partition(|a| {
                a.action
                    .target()
                    .is_some_and(|d| contained.iter().any(|c| c == d))
            });
            self.release_hosts(&landed, true);
            mark_contained(&mut turns, &landed);
            self.settle(acted, "contain", &landed, Ok(()))?;
            if rest.is_empty() {
                return Ok(());
            }
            if last_try || !known || !error.is_ambiguous() {
                self.release_hosts(&rest, false);
                return self.settle(acted, "contain", &rest, Err(Failure::falcon(&error)));
            }
            tracing::warn!(
                "containment answered {error}; sending it once more for the hosts it missed"
            );
            now = rest;
        }
        Ok(())
    }

    fn release_hosts(&self, actions: &[PlannedAction], contained: bool) {
        for device in actions.iter().filter_map(|a| a.action.target()) {
            self.contain_budget.release(device, contained);
        }
    }

    /// Journals the result of a call that succeeded as a whole: the actions whose target the
    /// answer names as failed stay failed (to be tried again), the rest are done.
    fn settle_partial(
        &self,
        acted: &mut Acted,
        kind: &'static str,
        group: Vec<PlannedAction>,
        failed: &[EntityFailure],
    ) -> Result<(), StateError> {
        let mut done = Vec::new();
        for action in group {
            match failed
                .iter()
                .find(|f| action.action.target() == Some(f.id.as_str()))
            {
                Some(failure) => {
                    let failure = Failure {
                        reason: format!("Falcon did not apply it: {}", failure.error),
                        blame: blame::entity(failure.code),
                    };
                    self.settle(acted, kind, std::slice::from_ref(&action), Err(failure))?;
                }
                None => done.push(action),
            }
        }
        self.settle(acted, kind, &done, Ok(()))
    }

    /// Journals the result of one call covering `group`. A failure is kept for later cycles,
    /// or given up: at once when permanent, after failing for reasons of its own for longer
    /// than `give_up_after`; never for a service's failure, however many cycles it lasts.
    fn settle(
        &self,
        acted: &mut Acted,
        kind: &'static str,
        group: &[PlannedAction],
        result: Result<(), Failure>,
    ) -> Result<(), StateError> {
        if group.is_empty() {
            return Ok(());
        }
        let keys = keys(group);
        if result.is_err() && self.falcon.stopping() {
            // Shutdown cut the call short, and it may or may not have landed: the actions stay
            // planned, so the next start reads them back and finishes them as after a crash.
            tracing::info!(
                kind,
                count = keys.len(),
                "interrupted by shutdown; resumed at the next start"
            );
            return Ok(());
        }
        let counts: &mut ActionCounts = acted.tally.entry(kind).or_default();
        match result {
            Ok(()) => {
                self.store.mark(&keys, JournalState::Done, None)?;
                counts.done += keys.len() as u64;
            }
            Err(Failure { reason, blame }) => {
                counts.failed += keys.len() as u64;
                if blame == Blame::Service {
                    counts.failed_service += keys.len() as u64;
                }
                acted.failed_own |= blame != Blame::Service;
                if blame != Blame::Service {
                    acted.failed_own_keys.extend(keys.iter().cloned());
                }
                if blame == Blame::Permanent {
                    self.store.fail(&keys, &reason, true)?;
                    return self.give_up(acted, kind, group, ActionGiveUp::Permanent, &reason);
                }
                let own = blame == Blame::Sample;
                tracing::error!(
                    kind,
                    count = keys.len(),
                    blame = ?blame,
                    "action failed, kept for a later cycle: {reason}"
                );
                let since = self.store.fail(&keys, &reason, own)?;
                if !own {
                    return Ok(());
                }
                let bound = super::blame::give_up_bound(self.give_up_after);
                let now = OffsetDateTime::now_utc();
                let (expired, _): (Vec<PlannedAction>, Vec<PlannedAction>) = group
                    .iter()
                    .cloned()
                    .partition(|a| since.get(&a.key).is_some_and(|since| now - *since >= bound));
                if let Some(first) = expired.first().and_then(|a| since.get(&a.key)) {
                    let reason = format!(
                        "{reason}; failing since {first} for reasons of its own, longer than \
                         give_up_after ({} s)",
                        self.give_up_after
                    );
                    self.give_up(acted, kind, &expired, ActionGiveUp::GiveUpAfter, &reason)?;
                }
            }
        }
        Ok(())
    }

    /// Gives these actions up: never tried or planned again. Logged (warn) with the reason,
    /// noted in the cycle report, counted in `connector_actions_given_up_total{kind,reason}`.
    /// It is counted as given up in the tally; the caller counts it as failed if it failed.
    fn give_up(
        &self,
        acted: &mut Acted,
        kind: &'static str,
        group: &[PlannedAction],
        why: ActionGiveUp,
        reason: &str,
    ) -> Result<(), StateError> {
        if group.is_empty() {
            return Ok(());
        }
        self.store.abandon(&keys(group), reason)?;
        let counts = acted.tally.entry(kind).or_default();
        counts.given_up += group.len() as u64;
        crate::metrics::action_given_up(kind, why.label(), group.len() as u64);
        for action in group {
            tracing::warn!(
                kind,
                sha256 = %action.sha256,
                reason = why.label(),
                "giving the action up: {}: {reason}",
                action.action.describe()
            );
            acted.notes.push(format!(
                "{} for {}: given up ({}): {reason}",
                action.action.describe(),
                action.sha256,
                why.label()
            ));
        }
        Ok(())
    }
}

/// What one alert update request carries: comment, status, verdict tag, landing mark.
type AlertText = (Option<String>, Option<String>, String, String);

/// Alert updates with the same text, to send as one request.
fn group_alert_updates(actions: Vec<PlannedAction>) -> BTreeMap<AlertText, Vec<PlannedAction>> {
    let mut groups: BTreeMap<AlertText, Vec<PlannedAction>> = BTreeMap::new();
    for action in actions {
        if let Action::UpdateAlert {
            comment,
            status,
            tag,
            mark,
            ..
        } = &action.action
        {
            groups
                .entry((comment.clone(), status.clone(), tag.clone(), mark.clone()))
                .or_default()
                .push(action);
        }
    }
    groups
}

/// A host status that means containment was asked for and holds or is on its way.
fn is_contained(status: Option<&str>) -> bool {
    matches!(status, Some("contained" | "containment_pending"))
}

/// Records in the hosts' turns that these containments took effect.
fn mark_contained(turns: &mut BTreeMap<String, OwnedMutexGuard<bool>>, actions: &[PlannedAction]) {
    for device in actions.iter().filter_map(|a| a.action.target()) {
        if let Some(contained) = turns.get_mut(device) {
            **contained = true;
        }
    }
}

/// The journal keys of these actions.
fn keys(actions: &[PlannedAction]) -> Vec<String> {
    actions.iter().map(|a| a.key.clone()).collect()
}

/// What these actions change (alert, quarantine record or host ids), in order.
fn targets(actions: &[PlannedAction]) -> Vec<String> {
    actions
        .iter()
        .filter_map(|a| a.action.target().map(str::to_string))
        .collect()
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
