//! The connector's side of VMRay: lookup, streamed submission, waiting, IOCs and VTIs.
//!
//! CONTRACT STUB (issue 4): the signatures below are what the pipeline calls. The bodies are
//! filled in by the VMRay client work; nothing outside this module sees a status code or an
//! envelope.

use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::SecretString;
use time::OffsetDateTime;

use crate::config::{AnalyzerMode, Vmray};
use crate::model::{IocSet, Sha256, Verdict, Vti};

/// Everything the client needs, separate from [`Vmray`] so tests can shorten timeouts.
#[derive(Debug, Clone)]
pub struct VmraySettings {
    pub base_url: String,
    pub api_key: SecretString,
    pub connector_name: String,
    pub ssl_verify: bool,
    pub ca_bundle: Option<PathBuf>,
    pub submission_comment: String,
    pub submission_tags: Vec<String>,
    pub analysis_timeout: u64,
    pub analyzer_mode: AnalyzerMode,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    /// Uploads get their own, longer timeout.
    pub upload_timeout: Duration,
    pub max_retries: usize,
    pub max_retry_wait: Duration,
}

impl VmraySettings {
    pub fn from_config(config: &Vmray) -> Self {
        VmraySettings {
            base_url: config.base_url().to_string(),
            api_key: config.api_key.clone(),
            connector_name: config.connector_name.clone(),
            ssl_verify: config.ssl_verify,
            ca_bundle: config.ca_bundle.clone(),
            submission_comment: config.submission_comment.clone(),
            submission_tags: config.submission_tags.clone(),
            analysis_timeout: config.analysis_timeout,
            analyzer_mode: config.default_analyzer_mode,
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
            upload_timeout: Duration::from_secs(900),
            max_retries: 5,
            max_retry_wait: Duration::from_secs(120),
        }
    }
}

/// Why a VMRay call failed.
#[derive(Debug, thiserror::Error)]
pub enum VmrayError {
    #[error("VMRay rejected the API key (401/403): check vmray.api_key")]
    Unauthorized,
    #[error("VMRay has no {what}")]
    NotFound { what: String },
    #[error("VMRay rate limit still exceeded after retries")]
    RateLimited,
    #[error("VMRay answered {status}: {message}")]
    Api { status: u16, message: String },
    #[error("cannot reach VMRay: {0}")]
    Transport(String),
    #[error("VMRay sent a response the connector cannot read ({what})")]
    Decode { what: String },
    /// The upload failed in a way that leaves open whether VMRay received it, and a lookup
    /// did not find it either. The sample is retried next cycle, never re-sent blindly.
    #[error("the submission of {sha256} may or may not have reached VMRay: {reason}")]
    SubmitUnconfirmed { sha256: Sha256, reason: String },
}

/// A sample VMRay knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SampleInfo {
    pub sample_id: u64,
    pub sha256: Sha256,
    pub verdict: Verdict,
    pub vti_score: Option<u32>,
    pub severity: Option<String>,
    /// The console page of the sample (never built by hand).
    pub webif_url: String,
    pub classifications: Vec<String>,
    pub threat_names: Vec<String>,
    pub last_analysis: Option<OffsetDateTime>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubmitOptions {
    /// Force new analyses of a sample VMRay already knows.
    pub reanalyze: bool,
    /// The file's original name, for VMRay's report.
    pub original_filename: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Submitted {
    pub submission_id: u64,
    pub sample_id: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubmissionState {
    Running,
    Finished,
    /// Finished with errors, or an analysis failed; the reason is VMRay's.
    Failed {
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    pub version: Option<String>,
    pub max_upload_bytes: Option<u64>,
    /// True when the key may not call system_info and a cheap read stood in for it.
    pub limited_key: bool,
}

/// The VMRay client. Cheap to clone.
#[derive(Clone, Debug)]
pub struct VmrayClient {}

#[allow(unused_variables)]
impl VmrayClient {
    pub fn new(settings: VmraySettings) -> Result<Self, VmrayError> {
        todo!("issue 4")
    }

    pub async fn health(&self) -> Result<Health, VmrayError> {
        todo!("issue 4")
    }

    pub async fn lookup(&self, sha256: &Sha256) -> Result<Option<SampleInfo>, VmrayError> {
        todo!("issue 4")
    }

    pub async fn sample(&self, sample_id: u64) -> Result<SampleInfo, VmrayError> {
        todo!("issue 4")
    }

    /// Streams the file to VMRay. Never re-sent after an ambiguous failure.
    pub async fn submit(
        &self,
        file: &Path,
        sha256: &Sha256,
        options: &SubmitOptions,
    ) -> Result<Submitted, VmrayError> {
        todo!("issue 4")
    }

    pub async fn submission_state(
        &self,
        submission_id: u64,
    ) -> Result<SubmissionState, VmrayError> {
        todo!("issue 4")
    }

    /// IOCs for these verdicts.
    pub async fn iocs(&self, sample_id: u64, verdicts: &[Verdict]) -> Result<IocSet, VmrayError> {
        todo!("issue 4")
    }

    pub async fn vtis(&self, sample_id: u64) -> Result<Vec<Vti>, VmrayError> {
        todo!("issue 4")
    }
}
