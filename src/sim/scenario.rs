//! What a simulated tenant and VMRay instance start with: hand-written JSON scenarios and a
//! seeded generator of realistic ones (`--hashes N`), and the alerts that arrive while the
//! simulator runs ([`Arrival`]; [`Scenario::spread_as_arrivals`] makes them from a generated one).

use std::collections::HashSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::faults::Faults;
use super::files::{self, Rng};

/// A whole simulated world before it starts. Times are relative ("seconds ago"), so a scenario
/// file means the same thing whenever it is loaded.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Scenario {
    /// Customer id: the first part of every composite alert id.
    pub cid: String,
    pub hosts: Vec<HostSpec>,
    pub files: Vec<FileSpec>,
    pub alerts: Vec<AlertSpec>,
    pub quarantines: Vec<QuarantineSpec>,
    /// Alerts that appear while the simulator runs, each at its own time after the start.
    pub arrivals: Vec<Arrival>,
    /// Lifetime of a Falcon bearer token (`expires_in`).
    pub token_lifetime_secs: u64,
    /// VMRay refuses uploads larger than this (`webif_max_upload_size`).
    pub vmray_max_upload_bytes: u64,
    /// Items per VMRay list response before a `continuation_id` is handed out.
    pub vmray_page_size: usize,
    /// Whether the VMRay key may read `/rest/system_info` (non-admin keys get 403).
    pub vmray_admin_key: bool,
    /// The VMRay key is a verdict key: it sees verdicts but cannot open a sample's reports, so
    /// the IOC and VTI endpoints answer 403.
    pub vmray_verdict_key: bool,
    /// Falcon's per-minute budget announced in `X-RateLimit-Limit` when no fault lowers it.
    pub falcon_rate_limit: u32,
    pub faults: Faults,
}

impl Default for Scenario {
    fn default() -> Self {
        Scenario {
            cid: "a1b2c3d4e5f60718293a4b5c6d7e8f90".into(),
            hosts: Vec::new(),
            files: Vec::new(),
            alerts: Vec::new(),
            quarantines: Vec::new(),
            arrivals: Vec::new(),
            token_lifetime_secs: 1799,
            vmray_max_upload_bytes: 209_715_200,
            vmray_page_size: 100,
            vmray_admin_key: true,
            vmray_verdict_key: false,
            falcon_rate_limit: 6000,
            faults: Faults::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostSpec {
    /// 32 lowercase hex characters (the AID).
    pub device_id: String,
    pub hostname: String,
    /// `Windows`, `Mac` or `Linux`.
    pub platform: String,
    #[serde(default = "normal")]
    pub status: String,
}

fn normal() -> String {
    "normal".into()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct FileSpec {
    pub name: String,
    pub path: String,
    pub size: u64,
    /// Seed of the generated content.
    pub content_seed: u64,
    /// Filled in from the content when absent.
    pub sha256: Option<String>,
    /// False: Falcon's sample store never got it, so downloads answer 404.
    pub in_sample_store: bool,
    /// What VMRay already knows about the hash before anything is submitted.
    pub vmray_known: Option<KnownSpec>,
    /// What a detonation yields.
    pub detonation: DetonationSpec,
    /// Device ids (AIDs) that ran the file (IOC "devices ran on").
    pub ran_on: Vec<String>,
}

impl Default for FileSpec {
    fn default() -> Self {
        FileSpec {
            name: "sample.exe".into(),
            path: "C:\\Users\\user\\Downloads\\sample.exe".into(),
            size: 4096,
            content_seed: 1,
            sha256: None,
            in_sample_store: true,
            vmray_known: None,
            detonation: DetonationSpec::default(),
            ran_on: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KnownSpec {
    pub sample_id: u64,
    pub verdict: String,
    /// When VMRay last analysed it.
    #[serde(default = "day")]
    pub analysed_ago_secs: u64,
}

fn day() -> u64 {
    86_400
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct DetonationSpec {
    /// `malicious`, `suspicious`, `clean` or `not_available`.
    pub verdict: String,
    /// Wall time from submission until the submission is finished.
    pub duration_ms: u64,
    /// The analysis fails and the sample gets no verdict (`submission_has_errors`,
    /// `analysis_result_code` 5, `sample_verdict` null).
    pub fails: bool,
    /// One of two analyses fails (one VM of several) and VMRay still gives the sample the
    /// verdict: the submission finishes with `submission_has_errors` true and status `error`.
    pub partial_failure: bool,
    pub vti_score: u32,
    pub classifications: Vec<String>,
    pub threat_names: Vec<String>,
    pub iocs: IocReportSpec,
    pub vtis: Vec<VtiSpec>,
}

impl Default for DetonationSpec {
    fn default() -> Self {
        DetonationSpec {
            verdict: "clean".into(),
            duration_ms: 0,
            fails: false,
            partial_failure: false,
            vti_score: 0,
            classifications: Vec::new(),
            threat_names: Vec::new(),
            iocs: IocReportSpec::default(),
            vtis: Vec::new(),
        }
    }
}

/// The artefacts of a detonation, each with its own verdict, rendered in the fixture shape.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct IocReportSpec {
    pub files: Vec<IocFile>,
    pub ips: Vec<IocIp>,
    pub domains: Vec<IocDomain>,
    pub urls: Vec<IocUrl>,
    pub processes: Vec<IocProcess>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IocFile {
    pub sha256: String,
    pub filename: Option<String>,
    pub verdict: String,
    /// `Sample File`, `Dropped File`, `Memory Dump`.
    pub category: String,
    #[serde(default)]
    pub classifications: Vec<String>,
    #[serde(default)]
    pub threat_names: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IocIp {
    pub ip: String,
    pub verdict: String,
    #[serde(default)]
    pub domains: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IocDomain {
    pub domain: String,
    pub verdict: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IocUrl {
    pub url: String,
    pub verdict: String,
    #[serde(default)]
    pub ip_addresses: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IocProcess {
    pub cmd_line: Option<String>,
    pub image_name: String,
    pub verdict: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VtiSpec {
    pub category: String,
    pub operation: String,
    pub score: u32,
    #[serde(default)]
    pub classifications: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct AlertSpec {
    /// Generated as `<cid>:ind:<device_id>:<n>` when absent.
    pub composite_id: Option<String>,
    /// Index into `files`.
    pub file: usize,
    pub device_id: String,
    pub status: String,
    pub severity: u32,
    pub created_ago_secs: u64,
    pub updated_ago_secs: u64,
    /// Lists the quarantine record of the same file and device in `quarantined_files`.
    pub quarantined: bool,
    /// What Falcon detected: `ml` (machine learning, the default), `known_malware`, `intel`
    /// (an intelligence hash indicator), `ioa`, `custom_ioa` or `overwatch`. The last three are
    /// behaviour alerts: their SHA-256 is only the image of the process that behaved.
    pub detection: String,
}

impl Default for AlertSpec {
    fn default() -> Self {
        AlertSpec {
            composite_id: None,
            file: 0,
            device_id: String::new(),
            status: "new".into(),
            severity: 70,
            created_ago_secs: 300,
            updated_ago_secs: 240,
            quarantined: false,
            detection: "ml".into(),
        }
    }
}

/// An alert Falcon raises while the simulator runs: it is absent from every answer until
/// `after_ms` milliseconds after [`Simulator::start`](super::Simulator::start), and from then on
/// it was created (and last updated) at the moment it arrived.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Arrival {
    pub after_ms: u64,
    pub alert: ArrivingAlert,
}

/// The alert of an [`Arrival`]. Its composite id is given, not drawn from a counter, so two runs
/// of the same scenario (a clean one and one killed halfway) see the same ids.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArrivingAlert {
    pub composite_id: String,
    /// One of the scenario's files.
    pub file: FileRef,
    pub device_id: String,
    #[serde(default = "new_status")]
    pub status: String,
    #[serde(default = "default_severity")]
    pub severity: u32,
    /// Lists the quarantine record of the same file and device in `quarantined_files`.
    #[serde(default)]
    pub quarantined: bool,
    /// As [`AlertSpec::detection`].
    #[serde(default = "ml")]
    pub detection: String,
}

fn new_status() -> String {
    "new".into()
}

fn default_severity() -> u32 {
    70
}

fn ml() -> String {
    "ml".into()
}

/// A scenario file named by its index in `files` (a JSON number) or by its SHA-256 (a string).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum FileRef {
    Index(usize),
    Sha256(String),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct QuarantineSpec {
    pub file: usize,
    pub device_id: String,
    /// `quarantined`, or `released` for a file an analyst released.
    pub state: String,
    pub created_ago_secs: u64,
    /// Equal to `created_ago_secs` for a record nobody acted on since it was quarantined; an
    /// analyst's release (or comment) leaves it later.
    pub updated_ago_secs: u64,
}

impl Default for QuarantineSpec {
    fn default() -> Self {
        QuarantineSpec {
            file: 0,
            device_id: String::new(),
            state: "quarantined".into(),
            created_ago_secs: 300,
            updated_ago_secs: 300,
        }
    }
}

/// Why a scenario file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error(
        "the scenario is not valid JSON for a scenario: {0}; compare it with Scenario::generate output"
    )]
    Json(#[from] serde_json::Error),
    #[error("{what} refers to file #{index}, but the scenario has only {count} files")]
    NoSuchFile {
        what: String,
        index: usize,
        count: usize,
    },
    #[error("{what} refers to device `{device_id}`, which is not among the scenario's hosts")]
    NoSuchHost { what: String, device_id: String },
    #[error("file #{index} has sha256 `{sha256}`, which is not 64 lowercase hex characters")]
    BadSha256 { index: usize, sha256: String },
    #[error(
        "{what} refers to file sha256 `{sha256}`, which none of the scenario's files has; name a file by its index or its exact sha256"
    )]
    NoSuchSha256 { what: String, sha256: String },
    #[error("{what} has an empty composite_id; give every arriving alert its own id")]
    EmptyAlertId { what: String },
    #[error(
        "{what} has composite_id `{composite_id}`, which another alert already has; alert ids must be unique"
    )]
    DuplicateAlertId { what: String, composite_id: String },
    #[error(
        "cannot make {wanted} arrivals: the scenario has only {available} alerts; generate it with more hashes"
    )]
    TooFewAlerts { wanted: usize, available: usize },
}

/// Knobs of the generator.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    /// Distinct file hashes behind the alerts.
    pub hashes: usize,
    pub seed: u64,
    /// Latency added to every request.
    pub latency: Duration,
    /// Detonation wall time is drawn from this range (inclusive).
    pub detonation_min: Duration,
    pub detonation_max: Duration,
    /// Generated file sizes are drawn from this range (inclusive).
    pub file_size_min: u64,
    pub file_size_max: u64,
    /// Number of hosts; 0 = derived from `hashes`.
    pub hosts: usize,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            hashes: 10,
            seed: 1,
            latency: Duration::ZERO,
            detonation_min: Duration::ZERO,
            detonation_max: Duration::from_secs(2),
            file_size_min: 2 * 1024,
            file_size_max: 48 * 1024,
            hosts: 0,
        }
    }
}

const WORDS: &[&str] = &[
    "invoice", "update", "setup", "report", "scan", "driver", "helper", "agent", "patch", "loader",
    "viewer", "sync",
];
const FAMILIES: &[&str] = &[
    "AgentTesla",
    "Emotet",
    "QakBot",
    "Formbook",
    "Remcos",
    "LockBit",
];
const CLASSES: &[&str] = &[
    "Spyware",
    "Downloader",
    "Ransomware",
    "Backdoor",
    "Keylogger",
];

impl Scenario {
    /// Parses a scenario file and fills in what it may leave out (hashes from the content).
    pub fn from_json(text: &str) -> Result<Scenario, ScenarioError> {
        let mut scenario: Scenario = serde_json::from_str(text)?;
        scenario.resolve()?;
        Ok(scenario)
    }

    /// Computes missing hashes and checks every reference; `Simulator::start` calls it too.
    pub fn resolve(&mut self) -> Result<(), ScenarioError> {
        for (index, file) in self.files.iter_mut().enumerate() {
            match &file.sha256 {
                Some(s)
                    if s.len() != 64
                        || !s
                            .bytes()
                            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) =>
                {
                    return Err(ScenarioError::BadSha256 {
                        index,
                        sha256: s.clone(),
                    });
                }
                Some(_) => {}
                None => file.sha256 = Some(files::sha256_of(file.content_seed, file.size)),
            }
        }
        let count = self.files.len();
        let hosts: Vec<&str> = self.hosts.iter().map(|h| h.device_id.as_str()).collect();
        let check = |what: String, index: usize, device: &str| {
            if index >= count {
                return Err(ScenarioError::NoSuchFile { what, index, count });
            }
            if !hosts.contains(&device) {
                return Err(ScenarioError::NoSuchHost {
                    what,
                    device_id: device.to_string(),
                });
            }
            Ok(())
        };
        for (i, a) in self.alerts.iter().enumerate() {
            check(format!("alert #{i}"), a.file, &a.device_id)?;
        }
        for (i, q) in self.quarantines.iter().enumerate() {
            check(format!("quarantine record #{i}"), q.file, &q.device_id)?;
        }
        let mut ids: HashSet<&str> = self
            .alerts
            .iter()
            .filter_map(|a| a.composite_id.as_deref())
            .collect();
        for (i, arrival) in self.arrivals.iter().enumerate() {
            let what = format!("arrival #{i}");
            let a = &arrival.alert;
            let index = match &a.file {
                FileRef::Index(index) => *index,
                FileRef::Sha256(sha256) => self
                    .files
                    .iter()
                    .position(|f| f.sha256.as_deref() == Some(sha256.as_str()))
                    .ok_or_else(|| ScenarioError::NoSuchSha256 {
                        what: what.clone(),
                        sha256: sha256.clone(),
                    })?,
            };
            check(what.clone(), index, &a.device_id)?;
            if a.composite_id.is_empty() {
                return Err(ScenarioError::EmptyAlertId { what });
            }
            if !ids.insert(&a.composite_id) {
                return Err(ScenarioError::DuplicateAlertId {
                    what,
                    composite_id: a.composite_id.clone(),
                });
            }
        }
        Ok(())
    }

    /// Turns `count` of the scenario's alerts, chosen by `seed`, into arrivals at times drawn
    /// uniformly (also by `seed`) from `0..=over`, in order of arrival; the other alerts stay
    /// as they are. The same scenario, count, duration and seed always give the same arrivals,
    /// and each keeps its alert's composite id (alerts without one get the id the simulator
    /// would have given them), so runs can be compared alert by alert.
    pub fn spread_as_arrivals(
        &mut self,
        count: usize,
        over: Duration,
        seed: u64,
    ) -> Result<(), ScenarioError> {
        if count > self.alerts.len() {
            return Err(ScenarioError::TooFewAlerts {
                wanted: count,
                available: self.alerts.len(),
            });
        }
        let mut rng = Rng::new(seed ^ 0xA771_7A15);
        // A partial Fisher-Yates shuffle of the indices picks `count` distinct alerts.
        let mut order: Vec<usize> = (0..self.alerts.len()).collect();
        for i in 0..count {
            let j = i + rng.below((order.len() - i) as u64) as usize;
            order.swap(i, j);
        }
        let chosen: HashSet<usize> = order[..count].iter().copied().collect();
        let span = over.as_millis() as u64;
        let mut arrivals: Vec<Arrival> = order[..count]
            .iter()
            .map(|&n| {
                let a = &self.alerts[n];
                Arrival {
                    after_ms: rng.range(0, span),
                    alert: ArrivingAlert {
                        composite_id: a
                            .composite_id
                            .clone()
                            .unwrap_or_else(|| default_alert_id(&self.cid, &a.device_id, n)),
                        file: FileRef::Index(a.file),
                        device_id: a.device_id.clone(),
                        status: a.status.clone(),
                        severity: a.severity,
                        quarantined: a.quarantined,
                        detection: a.detection.clone(),
                    },
                }
            })
            .collect();
        // Stable by id among equal times, so the order never depends on the shuffle's leftovers.
        arrivals.sort_by(|x, y| {
            (x.after_ms, &x.alert.composite_id).cmp(&(y.after_ms, &y.alert.composite_id))
        });
        // Alerts that stay keep the ids they had, including generated ones (which depend on
        // their position), so those are fixed before the list shrinks.
        let cid = self.cid.clone();
        let mut n = 0;
        self.alerts.retain_mut(|a| {
            let keep = !chosen.contains(&n);
            if keep && a.composite_id.is_none() {
                a.composite_id = Some(default_alert_id(&cid, &a.device_id, n));
            }
            n += 1;
            keep
        });
        self.arrivals.extend(arrivals);
        Ok(())
    }

    /// A realistic tenant fully determined by the seed: about 40 % malicious, 20 % suspicious and
    /// 40 % clean files, half of them already known to VMRay, 1-3 alerts per hash across hosts,
    /// quarantine records for some, a few hashes on several hosts, a few not in the sample store.
    pub fn generate(options: &GenerateOptions) -> Scenario {
        let mut rng = Rng::new(options.seed ^ 0x5EED_5EED);
        let host_count = if options.hosts > 0 {
            options.hosts
        } else {
            (options.hashes / 2).clamp(3, 500)
        };
        let platforms = ["Windows", "Windows", "Windows", "Mac", "Linux"];
        let hosts: Vec<HostSpec> = (0..host_count)
            .map(|i| {
                let platform = rng.pick(&platforms).to_string();
                let prefix = match platform.as_str() {
                    "Windows" => "WS",
                    "Mac" => "MAC",
                    _ => "LNX",
                };
                HostSpec {
                    device_id: rng.hex(32),
                    hostname: format!("{prefix}-{:04}", i + 1),
                    platform,
                    status: "normal".into(),
                }
            })
            .collect();
        let mut scenario = Scenario {
            hosts,
            ..Scenario::default()
        };
        scenario.faults.latency_ms = options.latency.as_millis() as u64;
        scenario.faults.seed = options.seed;
        let det_min = options.detonation_min.as_millis() as u64;
        let det_max = (options.detonation_max.as_millis() as u64).max(det_min);
        let mut next_sample_id = 9_400_000 + rng.below(1000) * 100;
        let mut alert_no = 0u64;
        for i in 0..options.hashes {
            let roll = rng.below(100);
            let verdict = match roll {
                0..40 => "malicious",
                40..60 => "suspicious",
                _ => "clean",
            };
            let word = rng.pick(WORDS);
            let name = format!("{word}_{}.exe", rng.range(100, 9999));
            let size = rng.range(
                options.file_size_min,
                options.file_size_max.max(options.file_size_min),
            );
            let content_seed = rng.next_u64();
            let sha256 = files::sha256_of(content_seed, size);
            let family = rng.pick(FAMILIES).to_string();
            let class = rng.pick(CLASSES).to_string();
            let detonation = detonation_for(
                &mut rng, verdict, &family, &class, &name, &sha256, det_min, det_max,
            );
            let vmray_known = rng.chance(0.5).then(|| {
                next_sample_id += 1 + rng.below(50);
                KnownSpec {
                    sample_id: next_sample_id,
                    verdict: verdict.into(),
                    analysed_ago_secs: rng.range(3_600, 90 * 86_400),
                }
            });
            // Every tenth-ish hash is missing from the sample store (only matters when unknown).
            let in_sample_store = !(options.hashes >= 5 && rng.chance(0.1));
            let alert_count = rng.range(1, 3) as usize;
            // A few hashes spread across several hosts; the rest stay on one.
            let spread = rng.chance(0.15);
            let first_host = rng.below(scenario.hosts.len() as u64) as usize;
            let mut devices = Vec::new();
            for k in 0..alert_count {
                let host = if spread {
                    (first_host + k * 7 + 1) % scenario.hosts.len()
                } else {
                    first_host
                };
                devices.push(scenario.hosts[host].device_id.clone());
            }
            let mut ran_on = devices.clone();
            ran_on.sort();
            ran_on.dedup();
            if verdict == "malicious" && rng.chance(0.3) {
                let extra = rng.below(scenario.hosts.len() as u64) as usize;
                let id = scenario.hosts[extra].device_id.clone();
                if !ran_on.contains(&id) {
                    ran_on.push(id);
                }
            }
            let dir = rng
                .pick(&["Downloads", "Desktop", "AppData\\Local\\Temp"])
                .to_string();
            let host_name = scenario
                .hosts
                .iter()
                .find(|h| h.device_id == devices[0])
                .map(|h| h.hostname.clone())
                .unwrap_or_default();
            scenario.files.push(FileSpec {
                path: format!("\\Device\\HarddiskVolume3\\Users\\{host_name}\\{dir}\\{name}"),
                name,
                size,
                content_seed,
                sha256: Some(sha256),
                in_sample_store,
                vmray_known,
                detonation,
                ran_on,
            });
            let quarantined = verdict != "clean" && rng.chance(0.5) || rng.chance(0.1);
            let mut seen = Vec::new();
            for device in devices {
                alert_no += 1;
                let created = rng.range(120, 900);
                let quarantine_here = quarantined && !seen.contains(&device);
                if quarantine_here {
                    scenario.quarantines.push(QuarantineSpec {
                        file: i,
                        device_id: device.clone(),
                        state: "quarantined".into(),
                        created_ago_secs: created.saturating_sub(5),
                        updated_ago_secs: created.saturating_sub(5),
                    });
                }
                seen.push(device.clone());
                scenario.alerts.push(AlertSpec {
                    composite_id: Some(format!(
                        "{}:ind:{}:{}",
                        scenario.cid,
                        device,
                        1_000_000 + alert_no * 37
                    )),
                    file: i,
                    device_id: device,
                    status: "new".into(),
                    severity: match verdict {
                        "malicious" => 90,
                        "suspicious" => 60,
                        _ => 30,
                    },
                    created_ago_secs: created,
                    updated_ago_secs: created.saturating_sub(rng.range(0, 60)),
                    quarantined: quarantine_here,
                    ..AlertSpec::default()
                });
            }
        }
        scenario
    }
}

/// The composite id of the `n`th scenario alert that names none.
pub(super) fn default_alert_id(cid: &str, device_id: &str, n: usize) -> String {
    format!("{cid}:ind:{device_id}:{}", 4_000_000 + n as u64 * 13)
}

#[allow(clippy::too_many_arguments)]
fn detonation_for(
    rng: &mut Rng,
    verdict: &str,
    family: &str,
    class: &str,
    name: &str,
    sha256: &str,
    det_min: u64,
    det_max: u64,
) -> DetonationSpec {
    let duration_ms = rng.range(det_min, det_max);
    let mut d = DetonationSpec {
        verdict: verdict.into(),
        duration_ms,
        ..DetonationSpec::default()
    };
    d.iocs.files.push(IocFile {
        sha256: sha256.into(),
        filename: Some(format!("C:\\Users\\analyst\\Desktop\\{name}")),
        verdict: verdict.into(),
        category: "Sample File".into(),
        classifications: Vec::new(),
        threat_names: Vec::new(),
    });
    if verdict == "clean" {
        d.vti_score = rng.range(0, 20) as u32;
        d.vtis.push(VtiSpec {
            category: "Mutex".into(),
            operation: "Creates mutex".into(),
            score: 1,
            classifications: Vec::new(),
        });
        return d;
    }
    let malicious = verdict == "malicious";
    d.vti_score = if malicious {
        rng.range(75, 100)
    } else {
        rng.range(25, 74)
    } as u32;
    if malicious {
        d.classifications = vec![class.into()];
        d.threat_names = vec![
            family.into(),
            format!("Trojan.GenericKD.{}", rng.range(1_000_000, 9_999_999)),
        ];
        d.iocs.files[0].classifications = d.classifications.clone();
        d.iocs.files[0].threat_names = vec![family.into()];
    }
    let dropped = rng.range(1, 2);
    for k in 0..dropped {
        d.iocs.files.push(IocFile {
            sha256: rng.hex(64),
            filename: Some(format!(
                "C:\\Users\\analyst\\AppData\\Roaming\\{}{k}.exe",
                &family.to_lowercase()
            )),
            verdict: verdict.into(),
            category: "Dropped File".into(),
            classifications: d.classifications.clone(),
            threat_names: d.threat_names.iter().take(1).cloned().collect(),
        });
    }
    let domain = format!("{}-{}.example", rng.pick(WORDS), rng.hex(6));
    let ip4 = format!("185.220.101.{}", rng.range(1, 254));
    let ip6 = format!("2a0b:f4c0::{:x}", rng.range(1, 0xffff));
    d.iocs.domains.push(IocDomain {
        domain: domain.clone(),
        verdict: verdict.into(),
    });
    d.iocs.ips.push(IocIp {
        ip: ip4.clone(),
        verdict: verdict.into(),
        domains: vec![domain.clone()],
    });
    if rng.chance(0.5) {
        d.iocs.ips.push(IocIp {
            ip: ip6,
            verdict: "suspicious".into(),
            domains: Vec::new(),
        });
    }
    d.iocs.urls.push(IocUrl {
        url: format!("http://{domain}/gate.php"),
        verdict: verdict.into(),
        ip_addresses: vec![ip4],
    });
    d.iocs.processes.push(IocProcess {
        cmd_line: Some(format!("\"C:\\Users\\analyst\\Desktop\\{name}\" ")),
        image_name: format!("c:\\users\\analyst\\desktop\\{}", name.to_lowercase()),
        verdict: verdict.into(),
    });
    // A clean artefact too, so verdict filtering matters.
    d.iocs.domains.push(IocDomain {
        domain: "time.windows.example".into(),
        verdict: "clean".into(),
    });
    d.vtis.push(VtiSpec {
        category: "Reputation".into(),
        operation: "Malicious file detected via reputation".into(),
        score: if malicious { 5 } else { 3 },
        classifications: Vec::new(),
    });
    d.vtis.push(VtiSpec {
        category: "Persistence".into(),
        operation: "Installs system startup script or application".into(),
        score: if malicious { 4 } else { 2 },
        classifications: d.classifications.clone(),
    });
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generator_is_deterministic_and_mixes_verdicts() {
        let options = GenerateOptions {
            hashes: 60,
            seed: 42,
            ..GenerateOptions::default()
        };
        let a = serde_json::to_string(&Scenario::generate(&options)).unwrap();
        let b = serde_json::to_string(&Scenario::generate(&options)).unwrap();
        assert_eq!(a, b);
        let s = Scenario::generate(&options);
        assert_eq!(s.files.len(), 60);
        let count = |v: &str| s.files.iter().filter(|f| f.detonation.verdict == v).count();
        assert!(
            count("malicious") >= 12 && count("malicious") <= 36,
            "{}",
            count("malicious")
        );
        assert!(count("suspicious") >= 4, "{}", count("suspicious"));
        assert!(count("clean") >= 12, "{}", count("clean"));
        let known = s.files.iter().filter(|f| f.vmray_known.is_some()).count();
        assert!((15..=45).contains(&known), "{known}");
        assert!(s.alerts.len() >= 60 && s.alerts.len() <= 180);
        assert!(!s.quarantines.is_empty());
        assert!(s.files.iter().any(|f| !f.in_sample_store));
        let spread = s.files.iter().filter(|f| f.ran_on.len() > 1).count();
        assert!(spread > 0);
        for f in &s.files {
            assert_eq!(
                f.sha256.as_deref().unwrap(),
                files::sha256_of(f.content_seed, f.size)
            );
        }
        let other = Scenario::generate(&GenerateOptions {
            seed: 43,
            ..options
        });
        assert_ne!(a, serde_json::to_string(&other).unwrap());
    }

    #[test]
    fn json_scenarios_round_trip_and_get_their_hashes() {
        let text = r#"{
            "hosts": [{"device_id": "0123456789abcdef0123456789abcdef", "hostname": "H1", "platform": "Windows"}],
            "files": [{"name": "a.exe", "size": 100, "content_seed": 5}],
            "alerts": [{"file": 0, "device_id": "0123456789abcdef0123456789abcdef"}]
        }"#;
        let s = Scenario::from_json(text).unwrap();
        assert_eq!(
            s.files[0].sha256.as_deref().unwrap(),
            files::sha256_of(5, 100)
        );
        assert_eq!(s.token_lifetime_secs, 1799);
        let again = Scenario::from_json(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(again.files[0].sha256, s.files[0].sha256);
    }

    const AID: &str = "0123456789abcdef0123456789abcdef";

    fn with_arrival(alert: &str) -> String {
        format!(
            r#"{{
            "hosts": [{{"device_id": "{AID}", "hostname": "H1", "platform": "Windows"}}],
            "files": [{{"name": "a.exe", "size": 100, "content_seed": 5}}],
            "alerts": [{{"file": 0, "device_id": "{AID}", "composite_id": "c:ind:{AID}:1"}}],
            "arrivals": [{{"after_ms": 250, "alert": {alert}}}]
        }}"#
        )
    }

    #[test]
    fn arrivals_name_their_file_by_index_or_hash_and_are_checked() {
        let sha = files::sha256_of(5, 100);
        for file in ["0".to_string(), format!("\"{sha}\"")] {
            let text = with_arrival(&format!(
                r#"{{"file": {file}, "device_id": "{AID}", "composite_id": "c:ind:{AID}:2"}}"#
            ));
            let s = Scenario::from_json(&text).unwrap();
            assert_eq!(s.arrivals.len(), 1);
            assert_eq!(s.arrivals[0].after_ms, 250);
            assert_eq!(s.arrivals[0].alert.status, "new");
            assert_eq!(s.arrivals[0].alert.detection, "ml");
            let again = Scenario::from_json(&serde_json::to_string(&s).unwrap()).unwrap();
            assert_eq!(again.arrivals, s.arrivals);
        }
        for (alert, expected) in [
            (
                format!(r#"{{"file": 3, "device_id": "{AID}", "composite_id": "x"}}"#),
                "arrival #0 refers to file #3",
            ),
            (
                format!(
                    r#"{{"file": "{}", "device_id": "{AID}", "composite_id": "x"}}"#,
                    "ab".repeat(32)
                ),
                "which none of the scenario's files has",
            ),
            (
                r#"{"file": 0, "device_id": "nobody", "composite_id": "x"}"#.to_string(),
                "device `nobody`",
            ),
            (
                format!(r#"{{"file": 0, "device_id": "{AID}", "composite_id": ""}}"#),
                "empty composite_id",
            ),
            (
                format!(r#"{{"file": 0, "device_id": "{AID}", "composite_id": "c:ind:{AID}:1"}}"#),
                "another alert already has",
            ),
            (
                format!(r#"{{"file": 0, "device_id": "{AID}"}}"#),
                "composite_id",
            ),
        ] {
            let err = Scenario::from_json(&with_arrival(&alert))
                .unwrap_err()
                .to_string();
            assert!(err.contains(expected), "{err}");
        }
        // Scenario files written before arrivals existed still load, with none.
        let old = Scenario::from_json(r#"{"hosts": [], "files": []}"#).unwrap();
        assert!(old.arrivals.is_empty());
    }

    #[test]
    fn spreading_alerts_as_arrivals_is_deterministic_and_keeps_their_ids() {
        let options = GenerateOptions {
            hashes: 40,
            seed: 9,
            ..GenerateOptions::default()
        };
        let original = Scenario::generate(&options);
        let spread = |seed: u64| {
            let mut s = original.clone();
            s.spread_as_arrivals(30, Duration::from_secs(60), seed)
                .unwrap();
            s
        };
        let (a, b) = (spread(5), spread(5));
        assert_eq!(a.arrivals, b.arrivals);
        assert_ne!(a.arrivals, spread(6).arrivals);
        assert_eq!(a.arrivals.len(), 30);
        assert_eq!(a.alerts.len(), original.alerts.len() - 30);
        assert!(
            a.arrivals
                .windows(2)
                .all(|w| w[0].after_ms <= w[1].after_ms)
        );
        assert!(a.arrivals.iter().all(|x| x.after_ms <= 60_000));
        assert!(a.arrivals.last().unwrap().after_ms > 30_000);
        // Every original alert is either still there or arrives, under its own id.
        let mut ids: Vec<String> = a
            .alerts
            .iter()
            .map(|x| x.composite_id.clone().unwrap())
            .chain(a.arrivals.iter().map(|x| x.alert.composite_id.clone()))
            .collect();
        let mut before: Vec<String> = original
            .alerts
            .iter()
            .map(|x| x.composite_id.clone().unwrap())
            .collect();
        ids.sort();
        before.sort();
        assert_eq!(ids, before);
        let mut checked = a.clone();
        checked.resolve().unwrap();
        let err = original
            .clone()
            .spread_as_arrivals(original.alerts.len() + 1, Duration::from_secs(1), 1)
            .unwrap_err();
        assert!(err.to_string().contains("more hashes"), "{err}");
    }

    #[test]
    fn dangling_references_are_reported() {
        let text = r#"{"hosts": [], "files": [], "alerts": [{"file": 2, "device_id": "x"}]}"#;
        let err = Scenario::from_json(text).unwrap_err().to_string();
        assert!(err.contains("alert #0") && err.contains("file #2"), "{err}");
    }
}
