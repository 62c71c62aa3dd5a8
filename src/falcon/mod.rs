//! The connector's side of CrowdStrike Falcon: one typed client over the few endpoints it uses.
//!
//! CONTRACT STUB (issue 3): the signatures below are what the pipeline calls. The bodies are
//! filled in by the Falcon client work; nothing outside this module sees a status code or an
//! envelope.

use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::SecretString;
use time::OffsetDateTime;

use crate::config::{CrowdStrike, FalconBaseUrl, IocAction};
use crate::model::{AlertEvidence, Host, QuarantineEvidence, Sha256};

/// Everything the client needs, separate from [`CrowdStrike`] so tests can shorten timeouts.
#[derive(Debug, Clone)]
pub struct FalconSettings {
    pub base_url: FalconBaseUrl,
    pub client_id: String,
    pub client_secret: SecretString,
    pub member_cid: Option<String>,
    pub rate_limit_per_minute: u32,
    pub max_sample_bytes: u64,
    pub connect_timeout: Duration,
    /// For every JSON call; sample downloads get a longer one of their own.
    pub request_timeout: Duration,
    pub max_retries: usize,
    /// Cap on any single wait asked for by the server (`X-RateLimit-RetryAfter`).
    pub max_retry_wait: Duration,
}

impl FalconSettings {
    pub fn from_config(config: &CrowdStrike) -> Self {
        FalconSettings {
            base_url: config.base_url(),
            client_id: config.client_id.clone(),
            client_secret: config.client_secret.clone(),
            member_cid: config.member_cid.clone(),
            rate_limit_per_minute: config.rate_limit_per_minute,
            max_sample_bytes: config.max_sample_bytes,
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
            max_retries: 5,
            max_retry_wait: Duration::from_secs(120),
        }
    }
}

/// Why a Falcon call failed.
#[derive(Debug, thiserror::Error)]
pub enum FalconError {
    #[error(
        "Falcon rejected the API client's credentials or token (401): check client_id and client_secret"
    )]
    Unauthorized,
    #[error("Falcon refused {operation} (403): add the {scope} scope to the API client")]
    Forbidden { operation: String, scope: String },
    #[error("Falcon rate limit still exceeded after retries")]
    RateLimited,
    #[error("Falcon has no {what}")]
    NotFound { what: String },
    #[error("Falcon answered {status}: {} (trace id {})", messages.join("; "), trace_id.as_deref().unwrap_or("none"))]
    Api {
        status: u16,
        messages: Vec<String>,
        trace_id: Option<String>,
    },
    #[error("cannot reach Falcon: {0}")]
    Transport(String),
    #[error("Falcon sent a response the connector cannot read ({what})")]
    Decode { what: String },
    #[error("sample {sha256}: {reason}")]
    Sample { sha256: Sha256, reason: String },
}

/// What an alert update sets; everything in one PATCH.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AlertUpdate {
    /// Appended as a comment; split into several when longer than Falcon takes in one.
    pub comment: Option<String>,
    pub status: Option<AlertStatus>,
    pub add_tags: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertStatus {
    New,
    InProgress,
    Reopened,
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuarantineAction {
    Release,
    Unrelease,
    Delete,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum IocType {
    Sha256,
    Domain,
    Ipv4,
    Ipv6,
}

/// One custom IOC to create: applied globally to Windows, Mac and Linux, tagged `VMRAY`, with
/// source `VMRay`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewIoc {
    pub kind: IocType,
    pub value: String,
    pub action: IocAction,
    /// informational, low, medium, high, critical.
    pub severity: String,
    /// Carries the VMRay report link.
    pub description: String,
    pub expiration: Option<OffsetDateTime>,
    /// For hashes: the file name Falcon shows.
    pub filename: Option<String>,
}

/// How a batch of IOCs fared: those already in Falcon are not errors.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IocOutcome {
    pub created: Vec<String>,
    pub already_existed: Vec<String>,
}

/// A case in Falcon Case Management.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewCase {
    /// Unique per sample and verdict, so a retry can find a case the first attempt created.
    pub name: String,
    pub description: String,
    /// 1-100 style severity as Falcon takes it.
    pub severity: u8,
    pub alert_ids: Vec<String>,
    pub assigned_to_user_uuid: Option<String>,
    pub tags: Vec<String>,
}

/// A Falcon API scope the configuration needs, as `check` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Alerts,
    Quarantine,
    SampleUploads,
    IocManagement,
    Hosts,
    Cases,
    OnDemandScans,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScopeStatus {
    Ok,
    /// 403: the API client lacks the scope.
    Missing,
    Failing(String),
}

/// The Falcon client. Cheap to clone; clones share one token and one rate limiter.
#[derive(Clone, Debug)]
pub struct FalconClient {}

#[allow(unused_variables)]
impl FalconClient {
    pub fn new(settings: FalconSettings) -> Result<Self, FalconError> {
        todo!("issue 3")
    }

    /// Endpoint (`product:'epp'`) alerts created or updated at or after `since`, every page.
    pub async fn alerts_since(
        &self,
        since: OffsetDateTime,
    ) -> Result<Vec<AlertEvidence>, FalconError> {
        todo!("issue 3")
    }

    /// The current state of these alerts (to see whether an earlier update landed).
    pub async fn alerts_by_id(
        &self,
        composite_ids: &[String],
    ) -> Result<Vec<AlertEvidence>, FalconError> {
        todo!("issue 3")
    }

    /// Applies one update to many alerts, 1000 ids per request.
    pub async fn update_alerts(
        &self,
        composite_ids: &[String],
        update: &AlertUpdate,
    ) -> Result<(), FalconError> {
        todo!("issue 3")
    }

    /// Quarantine records created or updated at or after `since`, every page.
    pub async fn quarantined_files_since(
        &self,
        since: OffsetDateTime,
    ) -> Result<Vec<QuarantineEvidence>, FalconError> {
        todo!("issue 3")
    }

    pub async fn update_quarantined_files(
        &self,
        ids: &[String],
        action: QuarantineAction,
        comment: &str,
    ) -> Result<(), FalconError> {
        todo!("issue 3")
    }

    /// Downloads the sample, decrypts it and writes it to `dir/<sha256>` with its hash checked.
    /// `Ok(None)` when Falcon does not hold the file (404).
    pub async fn download_sample(
        &self,
        sha256: &Sha256,
        dir: &Path,
    ) -> Result<Option<PathBuf>, FalconError> {
        todo!("issue 3")
    }

    /// Creates the IOCs that do not exist yet.
    pub async fn create_iocs(
        &self,
        iocs: &[NewIoc],
        comment: &str,
    ) -> Result<IocOutcome, FalconError> {
        todo!("issue 3")
    }

    pub async fn contain_hosts(&self, device_ids: &[String]) -> Result<(), FalconError> {
        todo!("issue 3")
    }

    pub async fn hosts(&self, device_ids: &[String]) -> Result<Vec<Host>, FalconError> {
        todo!("issue 3")
    }

    /// Hosts that ran this hash, every page, with their details.
    pub async fn hosts_that_ran(&self, sha256: &Sha256) -> Result<Vec<Host>, FalconError> {
        todo!("issue 3")
    }

    /// Creates the case unless one with the same name exists; returns its id either way.
    pub async fn create_case(&self, case: &NewCase) -> Result<String, FalconError> {
        todo!("issue 3")
    }

    /// Starts an on-demand scan of `file_paths` on these Windows hosts; returns the scan id.
    pub async fn start_scan(
        &self,
        device_ids: &[String],
        file_paths: &[String],
    ) -> Result<String, FalconError> {
        todo!("issue 3")
    }

    /// A token, then one cheap read per scope.
    pub async fn check_scopes(&self, scopes: &[Scope]) -> Vec<(Scope, ScopeStatus)> {
        todo!("issue 3")
    }
}
