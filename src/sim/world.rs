//! The stateful simulated Falcon tenant and VMRay instance: what exists, what changed, and every
//! request received. The HTTP layers (`falcon.rs`, `vmray.rs`) read and change it; tests reach it
//! through `Simulator::edit` and `Simulator::snapshot`.

use std::collections::{HashMap, HashSet};

use serde::Serialize;
use time::{Duration as TimeDuration, OffsetDateTime};
use tokio::time::Instant;

use super::faults::Service;
use super::scenario::{ArrivingAlert, DetonationSpec, FileRef, Scenario, default_alert_id};

#[derive(Debug, Clone, Serialize)]
pub struct Host {
    pub device_id: String,
    pub hostname: String,
    pub platform: String,
    /// `normal`, `contained`, ...
    pub status: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct SimFile {
    pub sha256: String,
    pub name: String,
    pub path: String,
    pub size: u64,
    pub content_seed: u64,
    pub in_sample_store: bool,
    pub detonation: DetonationSpec,
    pub ran_on: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Alert {
    pub composite_id: String,
    pub sha256: String,
    pub filename: String,
    pub filepath: String,
    pub device_id: String,
    pub status: String,
    pub severity: u32,
    pub comments: Vec<String>,
    pub tags: Vec<String>,
    pub assigned_to: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated: OffsetDateTime,
    /// When the first comment reached it through the alerts API (the connector's write-back;
    /// analysts' edits go through [`World`] directly): detection-to-comment latency is
    /// `commented_at - created`.
    #[serde(with = "time::serde::rfc3339::option")]
    pub commented_at: Option<OffsetDateTime>,
    /// Ids of the quarantine records listed in `quarantined_files`.
    pub quarantined_files: Vec<String>,
    /// What Falcon detected (`AlertSpec::detection`).
    pub detection: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct QuarantineAction {
    pub action: String,
    pub comment: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Quarantine {
    pub id: String,
    pub aid: String,
    pub sha256: String,
    pub hostname: String,
    pub state: String,
    pub filename: String,
    pub path: String,
    #[serde(with = "time::serde::rfc3339")]
    pub date_created: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub date_updated: OffsetDateTime,
    pub actions: Vec<QuarantineAction>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Ioc {
    pub id: String,
    pub ioc_type: String,
    pub value: String,
    pub action: String,
    pub severity: String,
    pub platforms: Vec<String>,
    pub applied_globally: bool,
    pub tags: Vec<String>,
    pub source: Option<String>,
    pub description: Option<String>,
    pub expiration: Option<String>,
    pub filename: Option<String>,
    /// The audit comment of the create request.
    pub comment: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_on: OffsetDateTime,
}

#[derive(Debug, Clone, Serialize)]
pub struct ContainmentRequest {
    pub action: String,
    pub device_ids: Vec<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

#[derive(Debug, Clone, Serialize)]
pub struct Case {
    pub id: String,
    pub name: String,
    pub description: String,
    pub severity: i64,
    pub status: String,
    pub assigned_to: Option<String>,
    pub tags: Vec<String>,
    pub alert_ids: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Scan {
    pub id: String,
    pub hosts: Vec<String>,
    pub file_paths: Vec<String>,
    pub cpu_priority: Option<i64>,
    pub quarantine: Option<bool>,
    /// The whole request body as received.
    pub body: serde_json::Value,
}

/// A sample VMRay knows (before the scenario started, or since a submission).
#[derive(Debug, Clone, Serialize)]
pub struct VmSample {
    pub sample_id: u64,
    pub sha256: String,
    pub filename: String,
    pub size: u64,
    /// Verdict known before the simulation started.
    pub known_verdict: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub known_analysed: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339")]
    pub created: OffsetDateTime,
}

#[derive(Debug, Clone, Serialize)]
pub struct Submission {
    pub submission_id: u64,
    pub sample_id: u64,
    /// The hash of the bytes received (what VMRay computes), not what the client claimed.
    pub sha256: String,
    pub file_size: u64,
    pub filename: Option<String>,
    pub filename_b64enc: Option<String>,
    pub comment: Option<String>,
    pub tags: Option<String>,
    pub user_config: Option<String>,
    pub analyzer_mode: Option<String>,
    pub reanalyze: Option<String>,
    /// Every text field received, in order.
    pub fields: Vec<(String, String)>,
    #[serde(with = "time::serde::rfc3339")]
    pub created: OffsetDateTime,
    #[serde(skip)]
    pub finish_at: Instant,
    /// Wall time the detonation takes.
    pub duration_ms: u64,
    pub verdict: String,
    /// No verdict: every analysis failed.
    pub fails: bool,
    /// One analysis failed, another gave the verdict.
    pub partial_failure: bool,
}

impl Submission {
    pub fn finished(&self, now: Instant) -> bool {
        now >= self.finish_at
    }
    /// Whether VMRay reports errors for it once finished.
    pub fn has_errors(&self) -> bool {
        self.fails || self.partial_failure
    }
    pub fn finish_time(&self) -> OffsetDateTime {
        self.created + TimeDuration::milliseconds(self.duration_ms as i64)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RequestRecord {
    pub service: Service,
    pub method: String,
    /// Path and query as received.
    pub path: String,
    /// 0 for a request that was left hanging.
    pub status: u16,
    /// A Falcon request's JSON or form body, as received (for checking requests against Falcon's
    /// API definition), except that the token call's `client_secret` is masked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// How often things happened.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Counters {
    pub falcon_requests: u64,
    pub vmray_requests: u64,
    pub tokens_issued: u64,
    pub unauthorized: u64,
    pub injected_5xx: u64,
    pub throttled: u64,
    pub malformed: u64,
    pub truncated_downloads: u64,
    pub wrong_files: u64,
    pub hung: u64,
    pub downloads: u64,
    pub submissions: u64,
}

/// The whole simulated state.
#[derive(Debug)]
pub struct World {
    pub cid: String,
    pub hosts: Vec<Host>,
    pub files: Vec<SimFile>,
    pub alerts: Vec<Alert>,
    pub quarantines: Vec<Quarantine>,
    pub iocs: Vec<Ioc>,
    pub containments: Vec<ContainmentRequest>,
    pub cases: Vec<Case>,
    pub scans: Vec<Scan>,
    pub samples: Vec<VmSample>,
    pub submissions: Vec<Submission>,
    pub requests: Vec<RequestRecord>,
    /// Every change the simulator made, in words, in order.
    pub changes: Vec<String>,
    pub counters: Counters,
    /// Bearer token -> expiry.
    pub tokens: HashMap<String, Instant>,
    pub token_lifetime_secs: u64,
    pub vmray_max_upload_bytes: u64,
    pub vmray_page_size: usize,
    pub vmray_admin_key: bool,
    /// A verdict key: the report endpoints (IOCs, VTIs) answer 403.
    pub vmray_verdict_key: bool,
    /// Pending VMRay continuations: id -> remaining items.
    pub continuations: HashMap<u64, Vec<serde_json::Value>>,
    pub next_id: u64,
    /// Alert, quarantine record and host ids, and IOC values, that a write refuses one by one
    /// inside an otherwise successful (2xx) answer, as Falcon does for an entity it cannot
    /// change (an alert deleted meanwhile, a host that left the tenant).
    pub refused_entities: HashSet<String>,
}

impl World {
    pub fn from_scenario(s: &Scenario) -> World {
        let now = OffsetDateTime::now_utc();
        let ago = |secs: u64| now - TimeDuration::seconds(secs as i64);
        let hosts: Vec<Host> = s
            .hosts
            .iter()
            .map(|h| Host {
                device_id: h.device_id.clone(),
                hostname: h.hostname.clone(),
                platform: h.platform.clone(),
                status: h.status.clone(),
            })
            .collect();
        let files: Vec<SimFile> = s
            .files
            .iter()
            .map(|f| SimFile {
                sha256: f
                    .sha256
                    .clone()
                    .expect("resolved scenarios carry every hash"),
                name: f.name.clone(),
                path: f.path.clone(),
                size: f.size,
                content_seed: f.content_seed,
                in_sample_store: f.in_sample_store,
                detonation: f.detonation.clone(),
                ran_on: f.ran_on.clone(),
            })
            .collect();
        let hostname = |id: &str| {
            hosts
                .iter()
                .find(|h| h.device_id == id)
                .map(|h| h.hostname.clone())
                .unwrap_or_default()
        };
        let quarantines: Vec<Quarantine> = s
            .quarantines
            .iter()
            .map(|q| {
                let f = &files[q.file];
                Quarantine {
                    id: format!("{}_{}", q.device_id, f.sha256),
                    aid: q.device_id.clone(),
                    sha256: f.sha256.clone(),
                    hostname: hostname(&q.device_id),
                    state: q.state.clone(),
                    filename: f.name.clone(),
                    path: f.path.clone(),
                    date_created: ago(q.created_ago_secs),
                    date_updated: ago(q.updated_ago_secs),
                    actions: Vec::new(),
                }
            })
            .collect();
        let alerts = s
            .alerts
            .iter()
            .enumerate()
            .map(|(n, a)| {
                let f = &files[a.file];
                let composite_id = a
                    .composite_id
                    .clone()
                    .unwrap_or_else(|| default_alert_id(&s.cid, &a.device_id, n));
                let qid = format!("{}_{}", a.device_id, f.sha256);
                let quarantined_files = if a.quarantined && quarantines.iter().any(|q| q.id == qid)
                {
                    vec![qid]
                } else {
                    Vec::new()
                };
                Alert {
                    composite_id,
                    sha256: f.sha256.clone(),
                    filename: f.name.clone(),
                    filepath: f.path.clone(),
                    device_id: a.device_id.clone(),
                    status: a.status.clone(),
                    severity: a.severity,
                    comments: Vec::new(),
                    tags: Vec::new(),
                    assigned_to: None,
                    created: ago(a.created_ago_secs),
                    updated: ago(a.updated_ago_secs.min(a.created_ago_secs)),
                    commented_at: None,
                    quarantined_files,
                    detection: a.detection.clone(),
                }
            })
            .collect();
        let samples = s
            .files
            .iter()
            .filter_map(|f| {
                let k = f.vmray_known.as_ref()?;
                Some(VmSample {
                    sample_id: k.sample_id,
                    sha256: f.sha256.clone().unwrap_or_default(),
                    filename: f.name.clone(),
                    size: f.size,
                    known_verdict: Some(k.verdict.clone()),
                    known_analysed: Some(ago(k.analysed_ago_secs)),
                    created: ago(k.analysed_ago_secs),
                })
            })
            .collect();
        World {
            cid: s.cid.clone(),
            hosts,
            files,
            alerts,
            quarantines,
            iocs: Vec::new(),
            containments: Vec::new(),
            cases: Vec::new(),
            scans: Vec::new(),
            samples,
            submissions: Vec::new(),
            requests: Vec::new(),
            changes: Vec::new(),
            counters: Counters::default(),
            tokens: HashMap::new(),
            token_lifetime_secs: s.token_lifetime_secs,
            vmray_max_upload_bytes: s.vmray_max_upload_bytes,
            vmray_page_size: s.vmray_page_size.max(1),
            vmray_admin_key: s.vmray_admin_key,
            vmray_verdict_key: s.vmray_verdict_key,
            continuations: HashMap::new(),
            next_id: 1,
            refused_entities: HashSet::new(),
        }
    }

    /// A fresh number for ids (tokens, IOCs, cases, scans, continuations).
    pub fn fresh(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    pub fn record(&mut self, change: impl Into<String>) {
        self.changes.push(change.into());
    }

    pub fn file(&self, sha256: &str) -> Option<&SimFile> {
        self.files.iter().find(|f| f.sha256 == sha256)
    }

    pub fn host(&self, device_id: &str) -> Option<&Host> {
        self.hosts.iter().find(|h| h.device_id == device_id)
    }

    /// An analyst (or the scenario) adds an alert between cycles. Returns its composite id.
    pub fn add_alert(&mut self, file_index: usize, device_id: &str) -> String {
        let now = OffsetDateTime::now_utc();
        let n = self.fresh();
        let f = &self.files[file_index];
        let alert = Alert {
            composite_id: format!("{}:ind:{}:{}", self.cid, device_id, 7_000_000 + n),
            sha256: f.sha256.clone(),
            filename: f.name.clone(),
            filepath: f.path.clone(),
            device_id: device_id.to_string(),
            status: "new".into(),
            severity: 70,
            comments: Vec::new(),
            tags: Vec::new(),
            assigned_to: None,
            created: now,
            updated: now,
            commented_at: None,
            quarantined_files: Vec::new(),
            detection: "ml".into(),
        };
        let id = alert.composite_id.clone();
        self.record(format!("alert {id} arrived"));
        self.alerts.push(alert);
        id
    }

    /// A scripted arrival happens now: the alert is created and updated at this moment. An id
    /// that already exists (an edit added it meanwhile) is left alone; returns whether it was
    /// added.
    pub fn arrive(&mut self, spec: &ArrivingAlert) -> bool {
        if self
            .alerts
            .iter()
            .any(|a| a.composite_id == spec.composite_id)
        {
            self.record(format!(
                "alert {} did not arrive: the id exists already",
                spec.composite_id
            ));
            return false;
        }
        let file = match &spec.file {
            FileRef::Index(i) => self.files.get(*i),
            FileRef::Sha256(sha256) => self.file(sha256),
        };
        // `Scenario::resolve` checked the reference before the simulator started.
        let Some(f) = file else {
            return false;
        };
        let qid = format!("{}_{}", spec.device_id, f.sha256);
        let quarantined_files = if spec.quarantined && self.quarantines.iter().any(|q| q.id == qid)
        {
            vec![qid]
        } else {
            Vec::new()
        };
        let now = OffsetDateTime::now_utc();
        let alert = Alert {
            composite_id: spec.composite_id.clone(),
            sha256: f.sha256.clone(),
            filename: f.name.clone(),
            filepath: f.path.clone(),
            device_id: spec.device_id.clone(),
            status: spec.status.clone(),
            severity: spec.severity,
            comments: Vec::new(),
            tags: Vec::new(),
            assigned_to: None,
            created: now,
            updated: now,
            commented_at: None,
            quarantined_files,
            detection: spec.detection.clone(),
        };
        self.record(format!("alert {} arrived", spec.composite_id));
        self.alerts.push(alert);
        true
    }

    /// An analyst changes an alert's status in the console (bumps `updated_timestamp`).
    pub fn set_alert_status(&mut self, composite_id: &str, status: &str) -> bool {
        let Some(a) = self
            .alerts
            .iter_mut()
            .find(|a| a.composite_id == composite_id)
        else {
            return false;
        };
        a.status = status.to_string();
        a.updated = OffsetDateTime::now_utc();
        self.record(format!(
            "alert {composite_id}: status set to {status} by an analyst"
        ));
        true
    }

    /// The latest sample verdict VMRay reports for a sample: the newest successful submission's,
    /// else what was known before.
    pub fn sample_verdict(&self, sample: &VmSample, now: Instant) -> Option<String> {
        self.submissions
            .iter()
            .rev()
            .find(|s| s.sample_id == sample.sample_id && s.finished(now) && !s.fails)
            .map(|s| s.verdict.clone())
            .or_else(|| sample.known_verdict.clone())
    }
}
