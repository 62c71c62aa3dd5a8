//! Step 4, plan: a pure function from what VMRay said and what Falcon holds to the list of
//! actions to take. It decides; [`super::act`] performs. `--dry-run` prints its output.
//!
//! Every action carries a journal key naming what it changes and for which verdict; actions
//! whose key the state store already holds as done are not planned again, which is what keeps
//! the connector from commenting an alert twice for the same verdict.

use std::collections::HashSet;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::collect::Evidence;
use crate::config::{Config, IocAction};
use crate::falcon::{CASE_DESCRIPTION_MAX_CHARS, CASE_EVIDENCE_MAX_ALERTS, CASE_NAME_MAX_CHARS};
use crate::ioc_filter::{IocExclusions, is_public};
use crate::model::{Host, IocSet, QuarantineEvidence, Sha256, Verdict, Vti};

/// VMRay's result for one sample, as the planner needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Analysis {
    pub sample_id: u64,
    pub verdict: Verdict,
    pub report_url: String,
    pub classifications: Vec<String>,
    pub threat_names: Vec<String>,
    pub iocs: IocSet,
    pub vtis: Vec<Vti>,
}

/// One change to make in Falcon. Serialisable so the journal can replay it after a crash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Action {
    UpdateAlert {
        composite_id: String,
        comment: Option<String>,
        /// `in_progress` or `closed`; changed only while the alert is still `new`.
        status: Option<String>,
        /// `VMRay_<Verdict>`, for analysts to filter by.
        tag: String,
        /// `VMRay_<Verdict>_<sha256 prefix>`: the update for this hash and verdict landed. A
        /// restart reads it back, and the planner skips alerts that carry it.
        #[serde(default)]
        mark: String,
    },
    UpdateQuarantine {
        id: String,
        /// `release` or `unrelease` (keep quarantined).
        action: String,
        comment: Option<String>,
    },
    CreateIocs {
        iocs: Vec<IocSpec>,
        comment: String,
    },
    Contain {
        device_id: String,
        hostname: Option<String>,
    },
    OpenCase {
        name: String,
        description: String,
        severity: u8,
        alert_ids: Vec<String>,
        assignee: Option<String>,
        tags: Vec<String>,
    },
    Scan {
        device_ids: Vec<String>,
        file_paths: Vec<String>,
    },
}

impl Action {
    /// The short name reports group actions by.
    pub fn kind(&self) -> &'static str {
        match self {
            Action::UpdateAlert { .. } => "alert_update",
            Action::UpdateQuarantine { .. } => "quarantine_update",
            Action::CreateIocs { .. } => "ioc_create",
            Action::Contain { .. } => "contain",
            Action::OpenCase { .. } => "case",
            Action::Scan { .. } => "scan",
        }
    }

    /// What the action changes, for the calls that take a list of them: the alert's composite
    /// id, the quarantine record's id, the host's device id.
    pub fn target(&self) -> Option<&str> {
        match self {
            Action::UpdateAlert { composite_id, .. } => Some(composite_id),
            Action::UpdateQuarantine { id, .. } => Some(id),
            Action::Contain { device_id, .. } => Some(device_id),
            Action::CreateIocs { .. } | Action::OpenCase { .. } | Action::Scan { .. } => None,
        }
    }

    /// One line for the dry-run table and the logs.
    pub fn describe(&self) -> String {
        match self {
            Action::UpdateAlert {
                composite_id,
                status,
                comment,
                ..
            } => format!(
                "alert {composite_id}: {}{}",
                status
                    .as_deref()
                    .map(|s| format!("status -> {s}, "))
                    .unwrap_or_default(),
                comment
                    .as_deref()
                    .map(|c| format!("comment \"{}\"", first_line(c)))
                    .unwrap_or_else(|| "tag only".into())
            ),
            Action::UpdateQuarantine { id, action, .. } => format!("quarantine {id}: {action}"),
            Action::CreateIocs { iocs, .. } => format!(
                "create {} IOC(s): {}",
                iocs.len(),
                iocs.iter()
                    .take(5)
                    .map(|i| format!("{}:{}", i.kind.as_str(), i.value))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Action::Contain {
                device_id,
                hostname,
            } => format!(
                "contain host {} ({device_id})",
                hostname.as_deref().unwrap_or("unknown name")
            ),
            Action::OpenCase { name, .. } => format!("open case \"{name}\""),
            Action::Scan { device_ids, .. } => {
                format!("on-demand scan on {} host(s)", device_ids.len())
            }
        }
    }
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or("")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IocKind {
    Sha256,
    Domain,
    Ipv4,
    Ipv6,
}

impl IocKind {
    pub fn as_str(self) -> &'static str {
        match self {
            IocKind::Sha256 => "sha256",
            IocKind::Domain => "domain",
            IocKind::Ipv4 => "ipv4",
            IocKind::Ipv6 => "ipv6",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IocSpec {
    pub kind: IocKind,
    pub value: String,
    pub action: IocAction,
    pub severity: String,
    pub description: String,
    #[serde(with = "time::serde::rfc3339::option")]
    pub expiration: Option<OffsetDateTime>,
    pub filename: Option<String>,
}

/// An action with the journal key that makes it happen once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedAction {
    pub key: String,
    pub sha256: Sha256,
    pub action: Action,
}

/// The planner's answer: what to do, and what it chose not to do and why (for the report).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub actions: Vec<PlannedAction>,
    pub notes: Vec<String>,
}

/// Everything the planner looks at for one hash.
#[derive(Debug, Clone, Copy)]
pub struct PlanInput<'a> {
    pub evidence: &'a Evidence,
    pub analysis: &'a Analysis,
    /// Hosts beyond the evidence that ran the hash (find_another_host), already looked up.
    pub other_hosts: &'a [Host],
    /// Journal keys of this hash already done.
    pub done: &'a HashSet<String>,
    pub now: OffsetDateTime,
}

/// The tag that marks an alert handled for a verdict.
pub fn verdict_tag(verdict: Verdict) -> String {
    format!("VMRay_{}", verdict.title().replace(' ', "_"))
}

/// The tag that says this hash's update for this verdict is on the alert. Per hash, because an
/// alert can carry several files, and each gets its own comment.
pub fn landing_mark(sha256: &Sha256, verdict: Verdict) -> String {
    format!("{}_{}", verdict_tag(verdict), &sha256.as_str()[..12])
}

/// Plans every action for a sample with a verdict.
pub fn plan(input: &PlanInput<'_>, config: &Config) -> Plan {
    let verdict = input.analysis.verdict;
    let mut plan = Plan::default();
    if !matches!(
        verdict,
        Verdict::Malicious | Verdict::Suspicious | Verdict::Clean
    ) {
        plan.notes.push(format!(
            "VMRay has no usable verdict ({verdict}); nothing to do"
        ));
        return plan;
    }
    let cs = &config.crowdstrike;
    let sha = &input.evidence.sha256;
    let harmful = verdict != Verdict::Clean;
    let mut notes = Vec::new();
    let mut actions = Vec::new();
    let mut push = |key: String, action: Action| {
        if !input.done.contains(&key) {
            actions.push(PlannedAction {
                key,
                sha256: sha.clone(),
                action,
            });
        }
    };

    let containment = plan_containment(input, config);

    // Alerts.
    let comment = alert_comment(input, config, &containment.names);
    let mark = landing_mark(sha, verdict);
    for alert in &input.evidence.alerts {
        // Landed already, though the journal does not say so (a state store lost or pruned).
        if alert.tags.contains(&mark) {
            continue;
        }
        let still_new = alert.status == "new";
        let other_files = alert.files_in_alert > 1;
        let status = match verdict {
            _ if !still_new => None,
            Verdict::Clean if cs.close_clean_detection && other_files => {
                notes.push(format!(
                    "alert {} left open: it carries {} files and this clean verdict is for one of them",
                    alert.composite_id, alert.files_in_alert
                ));
                None
            }
            Verdict::Clean if cs.close_clean_detection && !alert.about_file => {
                notes.push(format!(
                    "alert {} left open: it is about behaviour (or does not say), and a clean \
                     file does not make the behaviour benign",
                    alert.composite_id
                ));
                None
            }
            Verdict::Clean if cs.close_clean_detection => Some("closed".to_string()),
            Verdict::Clean => None,
            _ => Some("in_progress".to_string()),
        };
        let comment = cs.comment_to_detection.then(|| comment.clone());
        if comment.is_none() && status.is_none() {
            continue;
        }
        push(
            // The hash is part of the key: one alert can carry several files, each with its own verdict.
            format!("alert:{}:{sha}:{verdict}", alert.composite_id),
            Action::UpdateAlert {
                composite_id: alert.composite_id.clone(),
                comment,
                status,
                tag: verdict_tag(verdict),
                mark: mark.clone(),
            },
        );
    }

    // Quarantine records.
    for record in &input.evidence.quarantines {
        let action = match quarantine_action(record, harmful, cs.release_clean_quarantine) {
            Ok(Some(action)) => action,
            Ok(None) => continue,
            Err(note) => {
                notes.push(note);
                continue;
            }
        };
        let comment = cs.comment_to_quarantine.then(|| {
            let what = if harmful {
                "kept in quarantine"
            } else {
                "released: VMRay found the file clean"
            };
            format!(
                "[VMRay] Verdict: {} | Analysis: {} | {what}",
                verdict.title(),
                input.analysis.report_url
            )
        });
        push(
            format!("quarantine:{}:{sha}:{verdict}", record.id),
            Action::UpdateQuarantine {
                id: record.id.clone(),
                action: action.into(),
                comment,
            },
        );
    }

    // IOCs.
    if cs.create_ioc && cs.ioc_levels.contains(&verdict) {
        let (mut iocs, left_out) = ioc_specs(input, config);
        if left_out > 0 {
            notes.push(format!(
                "{sha}: {left_out} network indicator(s) not made IOCs: not public addresses, \
                 or listed in ioc_exclude"
            ));
        }
        if iocs.len() > MAX_IOCS_PER_SAMPLE {
            notes.push(format!(
                "{sha}: VMRay reported {} IOCs; only the first {MAX_IOCS_PER_SAMPLE} \
                 (the sample's own hash first) are written to Falcon, the rest are in the analysis",
                iocs.len()
            ));
            iocs.truncate(MAX_IOCS_PER_SAMPLE);
        }
        if !iocs.is_empty() {
            push(
                format!("iocs:{sha}:{verdict}"),
                Action::CreateIocs {
                    iocs,
                    comment: format!(
                        "Created by the VMRay connector: {} verdict for {sha}",
                        verdict.title()
                    ),
                },
            );
        }
    }

    // Containment.
    notes.extend(containment.notes);
    for (device_id, hostname) in containment.targets {
        push(
            format!("contain:{device_id}:{sha}"),
            Action::Contain {
                device_id,
                hostname,
            },
        );
    }

    // Case.
    if cs.create_case && cs.create_case_levels.contains(&verdict) {
        push(
            format!("case:{sha}:{verdict}"),
            Action::OpenCase {
                name: fit_words(
                    &format!("VMRay: {} sample {sha}", verdict.title()),
                    CASE_NAME_MAX_CHARS,
                ),
                description: case_description(input),
                severity: case_severity(verdict),
                alert_ids: case_alert_ids(input.evidence),
                assignee: case_assignee(config),
                tags: vec!["VMRay".into(), verdict_tag(verdict)],
            },
        );
    }

    // On-demand scan of the file's path on the Windows hosts that had it.
    if cs.on_demand_scan && harmful {
        let windows: Vec<_> = input
            .evidence
            .alerts
            .iter()
            .filter(|a| a.platform.as_deref() == Some("Windows"))
            .filter_map(|a| Some((a.device_id.clone()?, ods_path(a.filepath.as_deref()?)?)))
            .collect();
        if !windows.is_empty() {
            let mut device_ids: Vec<String> = windows.iter().map(|(d, _)| d.clone()).collect();
            let mut file_paths: Vec<String> = windows.into_iter().map(|(_, p)| p).collect();
            device_ids.sort();
            device_ids.dedup();
            file_paths.sort();
            file_paths.dedup();
            push(
                format!("scan:{sha}"),
                Action::Scan {
                    device_ids,
                    file_paths,
                },
            );
        }
    }
    plan.actions = actions;
    plan.notes = notes;
    plan
}

/// The path form an on-demand scan takes, from the path an alert carries.
///
/// Alerts name files by NT device path (`\Device\HarddiskVolume3\Users\x\a.exe`), which on-demand
/// scanning does not accept: it takes drive-letter paths and globs. The volume number does not
/// say which letter the volume has (HarddiskVolume3 is C: on one machine, D: on another), so
/// the drive becomes the wildcard `*` (`*:\Users\x\a.exe`): it matches the file on whichever
/// drive the volume is, and a same-named file on another drive is worth scanning too. A path
/// with a drive letter is kept; a path on any other device (a network share, a shadow copy)
/// is not scanned, since the scan covers the host's own disks.
pub fn ods_path(raw: &str) -> Option<String> {
    let raw = raw.trim();
    let bytes = raw.as_bytes();
    if bytes.len() > 3 && bytes[0].is_ascii_alphabetic() && bytes[1] == b':' && bytes[2] == b'\\' {
        return Some(raw.to_string());
    }
    let lower = raw.to_ascii_lowercase();
    let rest = lower.strip_prefix("\\device\\harddiskvolume")?;
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let path = &raw[raw.len() - rest.len() + digits..];
    (digits > 0 && path.len() > 1 && path.starts_with('\\')).then(|| format!("*:{path}"))
}

/// How long after a record was quarantined a `date_updated` still counts as the quarantine
/// itself (the sensor may report the file's paths a moment later), not as someone acting on it.
const QUARANTINE_SETTLING: time::Duration = time::Duration::seconds(10);

/// What a quarantine record gets for this verdict, decided from the record's own state:
/// `unrelease` (keep it quarantined, with the comment) for a harmful verdict, `release` for a
/// clean one when configured. A record that is no longer quarantined (an analyst released it,
/// or it was deleted) is never changed: a harmful verdict does not unrelease what someone
/// released, a clean one does not release what is not quarantined. A record someone updated
/// after it was quarantined has been acted on (by this connector before its state store was
/// lost, or by an analyst) and is not written again: Falcon keeps no readable comment on the
/// record, and its `date_updated` is what shows it. `Err` carries the note for the report.
pub fn quarantine_action(
    record: &QuarantineEvidence,
    harmful: bool,
    release_clean: bool,
) -> Result<Option<&'static str>, String> {
    if !harmful && !release_clean {
        return Ok(None);
    }
    if record.state != "quarantined" {
        return Err(format!(
            "quarantine {} left as it is: it is `{}`, no longer quarantined (an analyst released it)",
            record.id, record.state
        ));
    }
    if let (Some(created), Some(updated)) = (record.created, record.updated)
        && updated > created + QUARANTINE_SETTLING
    {
        return Err(format!(
            "quarantine {} not updated: it was acted on after it was quarantined (by this \
             connector or an analyst)",
            record.id
        ));
    }
    Ok(Some(if harmful { "unrelease" } else { "release" }))
}

/// Plans what a sample that could not be analysed gets: a case, when configured.
pub fn plan_failure(
    evidence: &Evidence,
    reason: &str,
    done: &HashSet<String>,
    config: &Config,
) -> Plan {
    let mut plan = Plan::default();
    let key = format!("case-error:{}", evidence.sha256);
    if config.general.submit_or_download_error_open_case && !done.contains(&key) {
        plan.actions.push(PlannedAction {
            key,
            sha256: evidence.sha256.clone(),
            action: Action::OpenCase {
                name: fit_words(
                    &format!("VMRay: could not analyse sample {}", evidence.sha256),
                    CASE_NAME_MAX_CHARS,
                ),
                description: fit_words(
                    &format!(
                        "The VMRay connector could not analyse {}: {reason}.\n{}",
                        evidence.sha256,
                        case_summary(evidence)
                    ),
                    CASE_DESCRIPTION_MAX_CHARS,
                ),
                severity: 30,
                alert_ids: case_alert_ids(evidence),
                assignee: case_assignee(config),
                tags: vec!["VMRay".into(), "VMRay_Error".into()],
            },
        });
    }
    plan
}

struct Containment {
    targets: Vec<(String, Option<String>)>,
    /// Hostnames (or ids) of every host that ran the hash, for the comment.
    names: Vec<String>,
    notes: Vec<String>,
}

fn plan_containment(input: &PlanInput<'_>, config: &Config) -> Containment {
    let cs = &config.crowdstrike;
    let verdict = input.analysis.verdict;
    let mut hosts = input.evidence.hosts();
    let mut other_names = Vec::new();
    for host in input.other_hosts {
        if !hosts.iter().any(|(id, _)| id == &host.device_id) {
            hosts.push((host.device_id.clone(), host.hostname.clone()));
            other_names.push(
                host.hostname
                    .clone()
                    .unwrap_or_else(|| host.device_id.clone()),
            );
        }
    }
    let mut result = Containment {
        targets: Vec::new(),
        names: other_names,
        notes: Vec::new(),
    };
    if !(cs.contain_host && cs.contain_host_levels.contains(&verdict)) {
        return result;
    }
    for (device_id, hostname) in hosts {
        let excluded = cs.contain_exclude.iter().any(|x| {
            x.eq_ignore_ascii_case(&device_id)
                || hostname
                    .as_deref()
                    .is_some_and(|h| x.eq_ignore_ascii_case(h))
        });
        if excluded {
            result.notes.push(format!(
                "host {} ({device_id}) not contained: listed in contain_exclude",
                hostname.as_deref().unwrap_or("unknown name")
            ));
        } else {
            result.targets.push((device_id, hostname));
        }
    }
    result
}

/// `[VMRay] Verdict: Malicious | Analysis: <url>`, then what an analyst wants next to it.
fn alert_comment(input: &PlanInput<'_>, config: &Config, other_hosts: &[String]) -> String {
    let cs = &config.crowdstrike;
    let analysis = input.analysis;
    let mut lines = vec![format!(
        "[VMRay] Verdict: {} | Analysis: {}",
        analysis.verdict.title(),
        analysis.report_url
    )];
    if analysis.verdict == Verdict::Clean {
        lines.push("VMRay found the sample clean.".into());
        return lines.join("\n");
    }
    if cs.add_threat_name && !analysis.threat_names.is_empty() {
        lines.push(format!(
            "Threat names: {}",
            analysis.threat_names.join(", ")
        ));
    }
    if cs.add_threat_classification && !analysis.classifications.is_empty() {
        lines.push(format!(
            "Classifications: {}",
            analysis.classifications.join(", ")
        ));
    }
    if !analysis.vtis.is_empty() {
        let mut vtis = analysis.vtis.clone();
        vtis.sort_by(|a, b| b.score.cmp(&a.score).then(a.category.cmp(&b.category)));
        lines.push("VMRay Threat Indicators:".into());
        for vti in vtis.iter().take(COMMENT_MAX_VTIS) {
            lines.push(format!(
                "- [{}/5] {}: {}",
                vti.score, vti.category, vti.operation
            ));
        }
        if vtis.len() > COMMENT_MAX_VTIS {
            lines.push(format!(
                "- and {} more in the analysis",
                vtis.len() - COMMENT_MAX_VTIS
            ));
        }
    }
    if !other_hosts.is_empty() {
        lines.push(format!(
            "Other hosts that ran this file: {}",
            first_names(other_hosts, COMMENT_MAX_HOSTS)
        ));
    }
    lines.join("\n")
}

/// What one alert comment lists at most: enough for an analyst, and short enough that most
/// verdicts fit Falcon's one comment value (under 1024 bytes); the analysis has the rest.
pub const COMMENT_MAX_VTIS: usize = 10;
pub const COMMENT_MAX_HOSTS: usize = 10;

/// `a, b, c` or, past `max`, `a, b, c and 7 more (10 in all)`.
fn first_names(names: &[String], max: usize) -> String {
    if names.len() <= max {
        return names.join(", ");
    }
    format!(
        "{} and {} more ({} in all)",
        names[..max].join(", "),
        names.len() - max,
        names.len()
    )
}

/// `text` if it has at most `max` bytes (so also at most `max` characters), else its longest
/// start that ends at a word boundary and fits with an ellipsis: never cut inside a word.
fn fit_words(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    const MORE: &str = " …";
    let mut limit = max.saturating_sub(MORE.len());
    while !text.is_char_boundary(limit) {
        limit -= 1;
    }
    let head = &text[..limit];
    // A cut just before whitespace keeps the whole last word.
    let cut = if text[limit..].starts_with(char::is_whitespace) {
        limit
    } else {
        head.rfind(char::is_whitespace).unwrap_or(0)
    };
    format!("{}{MORE}", head[..cut].trim_end())
}

/// Evidence for a case: the most severe alerts, as many as Falcon takes.
fn case_alert_ids(evidence: &Evidence) -> Vec<String> {
    let mut alerts: Vec<_> = evidence.alerts.iter().collect();
    alerts.sort_by(|a, b| {
        b.severity
            .cmp(&a.severity)
            .then(a.composite_id.cmp(&b.composite_id))
    });
    let mut ids: Vec<String> = Vec::new();
    for alert in alerts {
        if !ids.contains(&alert.composite_id) {
            ids.push(alert.composite_id.clone());
        }
        if ids.len() == CASE_EVIDENCE_MAX_ALERTS {
            break;
        }
    }
    ids
}

/// `Alerts: ...` and `Hosts: ...` lines of a case: counts, then the first few by name.
fn case_summary(evidence: &Evidence) -> String {
    let alerts = alert_ids(evidence);
    let hosts = host_names(&evidence.hosts());
    let attached = if alerts.len() > CASE_EVIDENCE_MAX_ALERTS {
        format!(" (the {CASE_EVIDENCE_MAX_ALERTS} most severe are attached as evidence)")
    } else {
        String::new()
    };
    format!(
        "Alerts: {}{attached}\nHosts: {}{}",
        alerts.len(),
        hosts.len(),
        if hosts.is_empty() {
            String::new()
        } else {
            format!(": {}", first_names(&hosts, CASE_MAX_HOSTS))
        }
    )
}

/// Hosts a case description names; the evidence alerts name the rest.
const CASE_MAX_HOSTS: usize = 20;

/// A sample's IOCs written to Falcon at most. A hostile or runaway report (100,000 addresses)
/// would otherwise take thousands of requests, hold up the cycle for hours and flood the
/// tenant's IOC store; no analyst reads past the first few hundred.
pub const MAX_IOCS_PER_SAMPLE: usize = 1000;

/// The sample's IOCs, and how many network indicators were left out (not public, or excluded).
fn ioc_specs(input: &PlanInput<'_>, config: &Config) -> (Vec<IocSpec>, usize) {
    let cs = &config.crowdstrike;
    let analysis = input.analysis;
    let sha = &input.evidence.sha256;
    let severity = match analysis.verdict {
        Verdict::Malicious => "high",
        Verdict::Suspicious => "medium",
        _ => "low",
    };
    let expires = |n: u64| (n > 0).then(|| input.now.saturating_add(days(n)));
    let hash_expiration = expires(cs.ioc_expiration_days);
    let network_expiration = expires(cs.ioc_network_expiration_days);
    let spec = |kind, value: String, action, description: String, filename| IocSpec {
        expiration: if kind == IocKind::Sha256 {
            hash_expiration
        } else {
            network_expiration
        },
        kind,
        value,
        action,
        severity: severity.into(),
        description,
        filename,
    };
    // Parsed and checked at config load; an entry that no longer parses excludes nothing.
    let excluded = IocExclusions::parse(&cs.ioc_exclude).unwrap_or_default();
    let keep_ip = |ip: IpAddr| is_public(ip) && !excluded.excludes_ip(ip);
    let mut left_out = 0;
    let about = format!(
        "VMRay {} verdict | Analysis: {}",
        analysis.verdict.title(),
        analysis.report_url
    );
    let mut specs = vec![spec(
        IocKind::Sha256,
        sha.to_string(),
        cs.ioc_hash_action,
        format!("Sample: {about}"),
        input.evidence.filename(),
    )];
    for dropped in analysis.iocs.sha256s.iter().filter(|d| *d != sha) {
        specs.push(spec(
            IocKind::Sha256,
            dropped.to_string(),
            cs.ioc_hash_action,
            format!("File dropped by {sha}: {about}"),
            None,
        ));
    }
    let network = format!("Contacted by {sha}: {about}");
    for ip in &analysis.iocs.ipv4 {
        if !keep_ip(IpAddr::V4(*ip)) {
            left_out += 1;
            continue;
        }
        specs.push(spec(
            IocKind::Ipv4,
            ip.to_string(),
            cs.ioc_network_action,
            network.clone(),
            None,
        ));
    }
    for ip in &analysis.iocs.ipv6 {
        if !keep_ip(IpAddr::V6(*ip)) {
            left_out += 1;
            continue;
        }
        specs.push(spec(
            IocKind::Ipv6,
            ip.to_string(),
            cs.ioc_network_action,
            network.clone(),
            None,
        ));
    }
    for domain in &analysis.iocs.domains {
        if excluded.excludes_domain(domain) {
            left_out += 1;
            continue;
        }
        specs.push(spec(
            IocKind::Domain,
            domain.clone(),
            cs.ioc_network_action,
            network.clone(),
            None,
        ));
    }
    (specs, left_out)
}

fn case_description(input: &PlanInput<'_>) -> String {
    let analysis = input.analysis;
    let mut text = format!(
        "VMRay verdict: {} for {}\nAnalysis: {}\n{}",
        analysis.verdict.title(),
        input.evidence.sha256,
        analysis.report_url,
        case_summary(input.evidence),
    );
    if !analysis.threat_names.is_empty() {
        text.push_str(&format!(
            "\nThreat names: {}",
            analysis.threat_names.join(", ")
        ));
    }
    if !analysis.classifications.is_empty() {
        text.push_str(&format!(
            "\nClassifications: {}",
            analysis.classifications.join(", ")
        ));
    }
    fit_words(&text, CASE_DESCRIPTION_MAX_CHARS)
}

fn case_severity(verdict: Verdict) -> u8 {
    match verdict {
        Verdict::Malicious => 90,
        Verdict::Suspicious => 60,
        _ => 20,
    }
}

/// `user_uuid`, else the first of the seed's `case_users`.
fn case_assignee(config: &Config) -> Option<String> {
    let cs = &config.crowdstrike;
    cs.user_uuid
        .clone()
        .or_else(|| cs.case_users.first().cloned())
        .filter(|u| !u.trim().is_empty())
}

fn alert_ids(evidence: &Evidence) -> Vec<String> {
    evidence
        .alerts
        .iter()
        .map(|a| a.composite_id.clone())
        .collect()
}

fn host_names(hosts: &[(String, Option<String>)]) -> Vec<String> {
    hosts
        .iter()
        .map(|(id, name)| name.clone().unwrap_or_else(|| id.clone()))
        .collect()
}

/// `n` days as a duration, saturating instead of overflowing (config bounds keep it small).
pub(crate) fn days(n: u64) -> time::Duration {
    time::Duration::seconds(i64::try_from(n.saturating_mul(86_400)).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests;
