//! The connector's side of VMRay: lookup, streamed submission, waiting, IOCs and VTIs.
//!
//! This file holds the public types, the [`VmrayClient`] with its one private `send` (auth,
//! User-Agent, envelope decoding) and the retry policy. The endpoint groups live beside it:
//! [`samples`] (lookup, latest analysis), [`submissions`] (submit, state), [`iocs`], [`vtis`],
//! and [`wire`] holds the lenient serde shapes. Nothing outside this module sees a status code
//! or an envelope.

mod iocs;
mod samples;
mod submissions;
mod vtis;
mod wire;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue, RETRY_AFTER};
use reqwest::{RequestBuilder, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::config::{AnalyzerMode, CaBundle, Config, Vmray};
use crate::model::{Sha256, Verdict};

/// Everything the client needs, separate from [`Vmray`] so tests can shorten timeouts.
#[derive(Debug, Clone)]
pub struct VmraySettings {
    pub base_url: String,
    pub api_key: SecretString,
    pub connector_name: String,
    pub ssl_verify: bool,
    /// Extra trusted CAs: `general.ca_bundle` and `vmray.ca_bundle`.
    pub ca_bundles: Vec<CaBundle>,
    pub submission_comment: String,
    pub submission_tags: Vec<String>,
    pub analysis_timeout: u64,
    pub analyzer_mode: AnalyzerMode,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    /// The longest an upload may take. Each upload gets the request timeout plus the time the
    /// file takes at 512 KiB/s, up to this: a hung answer to a small upload is not waited on
    /// for a quarter of an hour.
    pub upload_timeout: Duration,
    pub max_retries: usize,
    pub max_retry_wait: Duration,
    /// Shutdown: once cancelled, every call ends at once with [`VmrayError::Interrupted`],
    /// whatever it was waiting for (an answer, an upload, a retry).
    pub shutdown: CancellationToken,
}

impl VmraySettings {
    /// The settings of the connector's VMRay client, trusting every CA bundle it configures.
    pub fn for_connector(config: &Config) -> Self {
        VmraySettings {
            ca_bundles: config.vmray_ca_bundles(),
            ..Self::from_config(&config.vmray)
        }
    }

    /// The `[vmray]` section's settings; `general.ca_bundle` is added by [`Self::for_connector`].
    pub fn from_config(config: &Vmray) -> Self {
        VmraySettings {
            base_url: config.base_url().to_string(),
            api_key: config.api_key.clone(),
            connector_name: config.connector_name.clone(),
            ssl_verify: config.ssl_verify,
            ca_bundles: config
                .ca_bundle
                .iter()
                .map(|path| CaBundle::new("vmray.ca_bundle", path))
                .collect(),
            submission_comment: config.submission_comment.clone(),
            submission_tags: config.submission_tags.clone(),
            analysis_timeout: config.analysis_timeout,
            analyzer_mode: config.default_analyzer_mode,
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
            upload_timeout: Duration::from_secs(900),
            max_retries: 5,
            max_retry_wait: Duration::from_secs(120),
            shutdown: CancellationToken::new(),
        }
    }
}

/// Why a VMRay call failed.
#[derive(Debug, thiserror::Error)]
pub enum VmrayError {
    #[error("VMRay rejected the API key (401): check vmray.api_key")]
    Unauthorized,
    /// The key is valid but may not read this (a verdict key and a sample's reports, a
    /// non-admin key and system information).
    #[error(
        "VMRay does not let this API key read {what} (403: {message}); a verdict key cannot \
         open reports: set vmray.api_key_type = \"verdict\" or use a report key"
    )]
    Forbidden { what: String, message: String },
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
    /// did not find it either. The sample is retried by the next cycle, after a lookup.
    #[error("the submission of {sha256} may or may not have reached VMRay: {reason}")]
    SubmitUnconfirmed { sha256: Sha256, reason: String },
    /// Refused before upload: VMRay would reject it anyway, and the upload would waste minutes.
    #[error(
        "the sample is {size} bytes, more than the {limit} bytes this VMRay instance accepts; it is not submitted"
    )]
    FileTooLarge { size: u64, limit: u64 },
    /// The file to submit cannot be opened (deleted, permissions): nothing was sent.
    #[error("cannot read the sample file {path}: {reason}")]
    SampleFile { path: PathBuf, reason: String },
    /// Shutdown ended the call; whether VMRay received it is unknown.
    #[error("the VMRay call was interrupted by shutdown")]
    Interrupted,
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
    /// For a resubmission: the newest submission VMRay had before it. After an ambiguous
    /// failure only a newer one counts as this upload.
    pub previous_submission: Option<u64>,
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
    /// Done, with errors (`submission_has_errors`, an `error` status, or an analysis that
    /// failed); the reason is VMRay's. The sample may still have a verdict: one VM of several
    /// failing does not stop VMRay from judging it, so the sample's verdict decides.
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

/// The VMRay client. Cheap to clone: clones share one connection pool and one cached upload
/// limit.
#[derive(Clone)]
pub struct VmrayClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    base_url: String,
    settings: VmraySettings,
    /// The instance's `webif_max_upload_size`: unknown until `health()` (or the first submit)
    /// asks, then `Some(limit)` (`None` inside when the instance did not say).
    instance_upload_limit: Mutex<Option<Option<u64>>>,
    /// A cap set by the operator, applied on top of the instance's.
    upload_cap: Mutex<Option<u64>>,
}

impl std::fmt::Debug for VmrayClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmrayClient")
            .field("base_url", &self.inner.base_url)
            .finish_non_exhaustive()
    }
}

/// Longest chain of `continuation_id`s followed for one list, so a server that keeps answering
/// with one cannot loop the connector forever.
const MAX_CONTINUATIONS: usize = 100;

/// How much of an unreadable body an error quotes.
const EXCERPT_CHARS: usize = 200;

impl VmrayClient {
    /// Builds the HTTP client. Makes no request. Logs a warning when TLS verification is off.
    pub fn new(settings: VmraySettings) -> Result<Self, VmrayError> {
        let key = format!("api_key {}", settings.api_key.expose_secret());
        let mut auth = HeaderValue::from_str(&key).map_err(|_| {
            VmrayError::Transport(
                "vmray.api_key contains characters that cannot be sent in an HTTP header: check the key"
                    .into(),
            )
        })?;
        auth.set_sensitive(true);
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, auth);
        headers.insert(
            reqwest::header::ACCEPT,
            HeaderValue::from_static("application/json"),
        );

        let user_agent = format!(
            "falcon-vmray-connector/{} ({})",
            env!("CARGO_PKG_VERSION"),
            settings.connector_name
        );
        let mut builder = reqwest::Client::builder()
            .default_headers(headers)
            .user_agent(user_agent)
            .connect_timeout(settings.connect_timeout);
        // The warning is config::warnings's, shown once at start by the command.
        if !settings.ssl_verify {
            builder = builder.tls_danger_accept_invalid_certs(true);
        }
        for bundle in &settings.ca_bundles {
            let certs = bundle.read().map_err(VmrayError::Transport)?;
            builder = builder.tls_certs_merge(certs);
        }
        let http = builder.build().map_err(|e| {
            VmrayError::Transport(format!("cannot set up the HTTP client: {}", chain(&e)))
        })?;
        Ok(VmrayClient {
            inner: Arc::new(Inner {
                base_url: settings.base_url.trim_end_matches('/').to_string(),
                http,
                settings,
                instance_upload_limit: Mutex::new(None),
                upload_cap: Mutex::new(None),
            }),
        })
    }

    /// Caps the size of a submission below the instance's own limit (e.g. for a slow uplink).
    pub fn set_max_upload_bytes(&self, bytes: Option<u64>) {
        *lock(&self.inner.upload_cap) = bytes;
    }

    /// Whether VMRay answers with this key: `system_info`, or, for a key that may not read it
    /// (403), a one-item analysis list. Caches the instance's upload limit for `submit`.
    pub async fn health(&self) -> Result<Health, VmrayError> {
        match self.get_envelope("/rest/system_info", &[]).await {
            Ok(envelope) => {
                let info: wire::SystemInfo = decode_data(envelope.data, "system information")?;
                let limit = info.webif_max_upload_size.or(info.webif_max_sample_size);
                *lock(&self.inner.instance_upload_limit) = Some(limit);
                Ok(Health {
                    version: info.version,
                    max_upload_bytes: limit,
                    limited_key: false,
                })
            }
            Err(Failure::Status { status: 403, .. }) => {
                tracing::info!(
                    "the VMRay key may not read /rest/system_info (403); checking it with /rest/analysis instead"
                );
                self.get_envelope("/rest/analysis", &[("_limit", "1")])
                    .await
                    .map_err(|f| f.into_error("analysis list"))?;
                *lock(&self.inner.instance_upload_limit) = Some(None);
                Ok(Health {
                    version: None,
                    max_upload_bytes: None,
                    limited_key: true,
                })
            }
            Err(f) => Err(f.into_error("system information")),
        }
    }

    /// The effective upload limit; asks the instance once if `health()` has not yet.
    async fn upload_limit(&self) -> Option<u64> {
        let known = *lock(&self.inner.instance_upload_limit);
        let instance = match known {
            Some(limit) => limit,
            None => match self.health().await {
                Ok(health) => health.max_upload_bytes,
                Err(e) => {
                    tracing::debug!(error = %e, "VMRay's upload limit is unknown");
                    *lock(&self.inner.instance_upload_limit) = Some(None);
                    None
                }
            },
        };
        let cap = *lock(&self.inner.upload_cap);
        match (instance, cap) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.inner.base_url, path)
    }

    fn settings(&self) -> &VmraySettings {
        &self.inner.settings
    }

    /// The one place a request goes out: executes it, and turns the answer into the envelope or
    /// a [`Failure`] that says whether it may be retried. Auth and User-Agent are the client's
    /// default headers.
    /// Shutdown ends it at once with [`Failure::Interrupted`].
    async fn send(&self, request: RequestBuilder) -> Result<wire::Envelope, Failure> {
        let shutdown = &self.settings().shutdown;
        if shutdown.is_cancelled() {
            return Err(Failure::Interrupted);
        }
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => Err(Failure::Interrupted),
            result = self.exchange(request) => result,
        }
    }

    /// The sleep between retries, cut short by shutdown (the next attempt then ends as
    /// interrupted).
    fn pause(&self) -> impl Fn(Duration) -> Pause + use<> {
        let shutdown = self.settings().shutdown.clone();
        move |wait| Box::pin(pause(shutdown.clone(), wait))
    }

    async fn exchange(&self, request: RequestBuilder) -> Result<wire::Envelope, Failure> {
        let response = request.send().await.map_err(|e| {
            crate::metrics::api_request("vmray", None);
            Failure::from_reqwest(e)
        })?;
        let status = response.status();
        crate::metrics::api_request("vmray", Some(status.as_u16()));
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, OffsetDateTime::now_utc()));
        let body = response.bytes().await.map_err(Failure::from_reqwest)?;
        // VMRay's envelope always says `"result": "ok"` or `"error"`; JSON without it is some
        // other service's.
        let parsed: Option<wire::Envelope> = serde_json::from_slice::<wire::Envelope>(&body)
            .ok()
            .filter(|e| matches!(e.result.as_deref(), Some("ok" | "error")));
        match parsed {
            Some(envelope) if status.is_success() && envelope.result.as_deref() == Some("ok") => {
                Ok(envelope)
            }
            Some(envelope) => Err(Failure::Status {
                status: status.as_u16(),
                message: envelope.error_msg.unwrap_or_else(|| excerpt(&body)),
                retry_after,
            }),
            // These mean the same from a proxy or gateway in front of VMRay: a refused key, a
            // rate limit, an outage.
            None if status_means_the_same_without_envelope(status.as_u16()) => {
                Err(Failure::Status {
                    status: status.as_u16(),
                    message: excerpt(&body),
                    retry_after,
                })
            }
            // A 404 or 405 page (or a 200 one) is not VMRay saying one sample or submission is
            // unknown: something that is not VMRay's REST API answered, for every sample alike.
            None => Err(Failure::Decode(not_the_api(status.as_u16(), &body))),
        }
    }

    /// A GET with retries on 429 (after `Retry-After`), 5xx, timeouts and connection failures.
    async fn get_envelope(
        &self,
        path: &str,
        query: &[(&str, &str)],
    ) -> Result<wire::Envelope, Failure> {
        let url = self.url(path);
        let timeout = self.settings().request_timeout;
        let attempt = || self.send(self.inner.http.get(&url).query(query).timeout(timeout));
        attempt
            .retry(self.backoff())
            .sleep(self.pause())
            .when(Failure::is_transient)
            .adjust(|failure, delay| self.retry_delay(failure, delay))
            .notify(|failure, delay| {
                note_throttle(failure, delay);
                tracing::warn!(path, error = %failure, delay_ms = delay.as_millis() as u64, "VMRay call failed, retrying");
            })
            .await
    }

    /// `data` of a GET, decoded into `T`.
    async fn get_data<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, &str)],
        what: &str,
    ) -> Result<T, VmrayError> {
        let envelope = self
            .get_envelope(path, query)
            .await
            .map_err(|f| f.into_error(what))?;
        decode_data(envelope.data, what)
    }

    /// A list, with every `continuation_id` followed. A continuation id is single-use, so a
    /// continuation request is never retried.
    async fn get_list<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, &str)],
        what: &str,
    ) -> Result<Vec<T>, VmrayError> {
        let mut envelope = self
            .get_envelope(path, query)
            .await
            .map_err(|f| f.into_error(what))?;
        let mut items = Vec::new();
        for _ in 0..MAX_CONTINUATIONS {
            items.extend(decode_list::<T>(envelope.data.take(), what)?);
            let Some(id) = envelope.continuation_id else {
                return Ok(items);
            };
            let request = self
                .inner
                .http
                .get(self.url(&format!("/rest/continuation/{id}")))
                .timeout(self.settings().request_timeout);
            envelope = self.send(request).await.map_err(|f| f.into_error(what))?;
        }
        tracing::warn!(
            path,
            "VMRay kept sending continuation ids; the list is cut after {MAX_CONTINUATIONS} parts"
        );
        Ok(items)
    }

    fn backoff(&self) -> ExponentialBuilder {
        let cap = self.settings().max_retry_wait;
        ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(500).min(cap))
            .with_max_delay(cap)
            .with_max_times(self.settings().max_retries)
            .with_jitter()
    }

    /// The wait before the next attempt: the server's `Retry-After` when it sent one (capped,
    /// with a little jitter so parallel workers do not return at once), else the backoff's.
    /// `None` (no more attempts) stays `None`.
    fn retry_delay(&self, failure: &Failure, backoff: Option<Duration>) -> Option<Duration> {
        let backoff = backoff?;
        let cap = self.settings().max_retry_wait;
        Some(match failure.retry_after() {
            Some(after) => (after + jitter(after / 10)).min(cap),
            None => backoff,
        })
    }
}

type Pause = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

async fn pause(shutdown: CancellationToken, wait: Duration) {
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = tokio::time::sleep(wait) => {}
    }
}

/// Counts a wait caused by throttling (429) as rate-limit time.
pub(crate) fn note_throttle(failure: &Failure, delay: Duration) {
    if let Failure::Status { status: 429, .. } = failure {
        crate::metrics::rate_limit_wait("vmray", delay);
    }
}

/// Why one attempt failed, in enough detail to decide whether to try again.
#[derive(Debug)]
pub(crate) enum Failure {
    /// VMRay (or a proxy in front of it) answered with an error.
    Status {
        status: u16,
        message: String,
        retry_after: Option<Duration>,
    },
    /// No connection was made, so nothing was sent.
    Connect(String),
    /// Sent, at least partly, and no answer in time.
    Timeout(String),
    /// The connection broke some other way (reset, protocol error).
    Transport(String),
    /// A 2xx answer that is not a VMRay envelope.
    Decode(String),
    /// The local file could not be opened (submission only).
    Local(String),
    /// Shutdown ended the attempt.
    Interrupted,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Status {
                status, message, ..
            } => write!(f, "HTTP {status}: {message}"),
            Failure::Connect(m) => write!(f, "cannot connect: {m}"),
            Failure::Timeout(m) => write!(f, "timed out: {m}"),
            Failure::Transport(m) => write!(f, "connection failed: {m}"),
            Failure::Decode(m) => write!(f, "{m}"),
            Failure::Local(m) => write!(f, "{m}"),
            Failure::Interrupted => f.write_str("interrupted by shutdown"),
        }
    }
}

impl Failure {
    fn from_reqwest(e: reqwest::Error) -> Self {
        let text = chain(&e);
        if e.is_timeout() {
            Failure::Timeout(text)
        } else if e.is_connect() {
            Failure::Connect(text)
        } else {
            Failure::Transport(text)
        }
    }

    /// Worth another try for a request that may safely be repeated.
    fn is_transient(&self) -> bool {
        match self {
            Failure::Status { status, .. } => *status == 429 || *status >= 500,
            Failure::Connect(_) | Failure::Timeout(_) | Failure::Transport(_) => true,
            Failure::Decode(_) | Failure::Local(_) | Failure::Interrupted => false,
        }
    }

    /// VMRay certainly did not accept the request, so even a submission may be sent again.
    fn certainly_rejected_transiently(&self) -> bool {
        matches!(
            self,
            Failure::Status { status: 429, .. } | Failure::Connect(_)
        )
    }

    /// Whether VMRay may have accepted the request although the connector did not see it do so.
    fn is_ambiguous(&self) -> bool {
        match self {
            Failure::Status { status, .. } => *status >= 500,
            Failure::Timeout(_) | Failure::Transport(_) | Failure::Decode(_) => true,
            // Not retried and not looked up: shutdown stops every call; the next start looks
            // the hash up before it submits anything.
            Failure::Connect(_) | Failure::Local(_) | Failure::Interrupted => false,
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            Failure::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The typed error for a caller; `what` names the thing asked for (for "VMRay has no ...").
    fn into_error(self, what: &str) -> VmrayError {
        match self {
            Failure::Status {
                status, message, ..
            } => match StatusCode::from_u16(status) {
                Ok(StatusCode::UNAUTHORIZED) => VmrayError::Unauthorized,
                Ok(StatusCode::FORBIDDEN) => VmrayError::Forbidden {
                    what: what.to_string(),
                    message,
                },
                Ok(StatusCode::NOT_FOUND) => VmrayError::NotFound {
                    what: what.to_string(),
                },
                Ok(StatusCode::TOO_MANY_REQUESTS) => VmrayError::RateLimited,
                _ => VmrayError::Api { status, message },
            },
            Failure::Connect(m) | Failure::Timeout(m) | Failure::Transport(m) => {
                VmrayError::Transport(m)
            }
            Failure::Decode(m) => VmrayError::Decode {
                what: format!("{what}: {m}"),
            },
            Failure::Local(m) => VmrayError::Transport(m),
            Failure::Interrupted => VmrayError::Interrupted,
        }
    }
}

/// An error status whose meaning does not depend on who answered it: a refused key or scope, a
/// rate limit, a timeout or an outage.
fn status_means_the_same_without_envelope(status: u16) -> bool {
    matches!(status, 401 | 403 | 408 | 429) || status >= 500
}

/// The message for an answer that is not VMRay's JSON envelope.
fn not_the_api(status: u16, body: &[u8]) -> String {
    format!(
        "a {status} answer that is not VMRay's JSON envelope, so vmray.url probably points at \
         something that is not VMRay's REST API (a web page, a proxy, a wrong path): check \
         vmray.url; the answer began: {}",
        excerpt(body)
    )
}

/// `data` as one object; `null` or absent is a decode error.
fn decode_data<T: DeserializeOwned>(
    data: Option<serde_json::Value>,
    what: &str,
) -> Result<T, VmrayError> {
    match data {
        None | Some(serde_json::Value::Null) => Err(VmrayError::Decode {
            what: format!("{what}: the answer has no data"),
        }),
        Some(value) => serde_json::from_value(value).map_err(|e| VmrayError::Decode {
            what: format!("{what}: {e}"),
        }),
    }
}

/// `data` as a list; `null` or absent is an empty list.
fn decode_list<T: DeserializeOwned>(
    data: Option<serde_json::Value>,
    what: &str,
) -> Result<Vec<T>, VmrayError> {
    match data {
        None | Some(serde_json::Value::Null) => Ok(Vec::new()),
        Some(value) => serde_json::from_value(value).map_err(|e| VmrayError::Decode {
            what: format!("{what} (a list): {e}"),
        }),
    }
}

/// The longest `Retry-After` believed (a day); waits are capped at `max_retry_wait` anyway.
const MAX_RETRY_AFTER_SECS: u64 = 86_400;

/// `Retry-After` as seconds or as an HTTP date.
fn parse_retry_after(value: &str, now: OffsetDateTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        // Capped so adding jitter cannot overflow; the retry caps it further.
        return Some(Duration::from_secs(seconds.min(MAX_RETRY_AFTER_SECS)));
    }
    let date = OffsetDateTime::parse(value, &time::format_description::well_known::Rfc2822).ok()?;
    let wait = date - now;
    Some(if wait.is_positive() {
        wait.unsigned_abs()
            .min(Duration::from_secs(MAX_RETRY_AFTER_SECS))
    } else {
        Duration::ZERO
    })
}

/// Up to `max` of pseudo-random extra wait; the clock's nanoseconds are random enough to keep
/// parallel workers apart, and spare a dependency.
fn jitter(max: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    max.mul_f64(f64::from(nanos % 1000) / 1000.0)
}

/// A short, printable quote of a body that is not JSON (a proxy's HTML page, a wrong URL).
fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(EXCERPT_CHARS)
        .collect();
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if text.is_empty() {
        "(empty body)".into()
    } else {
        text
    }
}

/// An error with its causes, since reqwest's own message hides the interesting part.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The verdicts worth asking VMRay about, each once.
fn real_verdicts(verdicts: &[Verdict]) -> Vec<Verdict> {
    let mut wanted: Vec<Verdict> = verdicts
        .iter()
        .copied()
        .filter(|v| matches!(v, Verdict::Malicious | Verdict::Suspicious | Verdict::Clean))
        .collect();
    wanted.sort();
    wanted.dedup();
    wanted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let now = OffsetDateTime::from_unix_timestamp(784_111_767).unwrap(); // 06 Nov 1994 08:49:27
        assert_eq!(parse_retry_after("1", now), Some(Duration::from_secs(1)));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:17 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(
            parse_retry_after(&u64::MAX.to_string(), now),
            Some(Duration::from_secs(MAX_RETRY_AFTER_SECS))
        );
    }

    #[test]
    fn only_429_and_refused_connections_let_a_submission_be_resent() {
        let status = |status| Failure::Status {
            status,
            message: String::new(),
            retry_after: None,
        };
        assert!(status(429).certainly_rejected_transiently());
        assert!(Failure::Connect("refused".into()).certainly_rejected_transiently());
        for ambiguous in [
            status(500),
            status(503),
            Failure::Timeout("t".into()),
            Failure::Transport("reset".into()),
            Failure::Decode("html".into()),
        ] {
            assert!(!ambiguous.certainly_rejected_transiently(), "{ambiguous}");
            assert!(ambiguous.is_ambiguous(), "{ambiguous}");
        }
        assert!(!status(400).is_ambiguous() && !status(400).is_transient());
    }

    #[test]
    fn statuses_map_to_typed_errors() {
        let err = |status: u16| {
            Failure::Status {
                status,
                message: "No such element".into(),
                retry_after: None,
            }
            .into_error("sample 7")
        };
        assert!(matches!(err(401), VmrayError::Unauthorized));
        assert!(
            matches!(err(403), VmrayError::Forbidden { what, message } if what == "sample 7" && message == "No such element")
        );
        assert!(matches!(err(404), VmrayError::NotFound { what } if what == "sample 7"));
        assert!(matches!(err(429), VmrayError::RateLimited));
        assert!(
            matches!(err(400), VmrayError::Api { status: 400, message } if message == "No such element")
        );
    }

    #[test]
    fn excerpts_are_short_and_single_line() {
        let html = format!("<html>\n<body>{}</body></html>", "x".repeat(1000));
        let quoted = excerpt(html.as_bytes());
        assert!(quoted.chars().count() <= EXCERPT_CHARS && !quoted.contains('\n'));
        assert_eq!(excerpt(b""), "(empty body)");
    }

    #[test]
    fn debug_output_never_shows_the_api_key() {
        let mut settings = VmraySettings::from_config(&Vmray::default());
        settings.api_key = SecretString::from("vmray-key-0815");
        let client = VmrayClient::new(settings.clone()).unwrap();
        let debug = format!("{client:?} {settings:?}");
        assert!(!debug.contains("vmray-key-0815"), "{debug}");
    }
}
