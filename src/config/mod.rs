//! The connector's settings: one typed, validated [`Config`] read once at start.
//!
//! Every setting of the Python original has a key here with the same meaning (the seed's name
//! is in each field's doc). [`load`] reads TOML plus environment overrides and rejects anything
//! it does not understand, because a typo in a connector that can contain hosts must never
//! silently fall back to a default.

mod bounds;
mod budget;
mod load;
mod warnings;

use std::path::PathBuf;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize, Serializer};

use crate::model::Verdict;

pub use bounds::{check_folders, read_ca_bundle};
pub use budget::{
    IDLE_REQUESTS_PER_SOURCE, IDLE_SHARE_PERCENT, idle_collection_requests, min_time_span_for,
};
pub use load::{ConfigError, Env, load, load_from_str};
pub use warnings::warnings;

/// The file read when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "config/connector.toml";

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub general: General,
    pub crowdstrike: CrowdStrike,
    pub vmray: Vmray,
    pub metrics: Metrics,
}

/// The optional endpoint for Prometheus and health probes.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Metrics {
    /// Address serving `/metrics` and `/healthz` (e.g. "127.0.0.1:9464"); unset means off.
    pub listen: Option<std::net::SocketAddr>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct General {
    /// LOG_FILE_PATH. Rotated daily; the date is appended to the name.
    pub log_file: PathBuf,
    /// LOG LEVEL.
    pub log_level: LogLevel,
    pub log_format: LogFormat,
    /// SELECTED_VERDICTS: which IOC verdicts are read from VMRay and reported back to Falcon.
    #[serde(deserialize_with = "load::list")]
    pub selected_verdicts: Vec<Verdict>,
    /// TIME_SPAN: seconds between the starts of two cycles. The original's 3 hours became a
    /// minute: a collection that finds nothing new costs a query per data source, and the
    /// loader raises a value the Falcon budget cannot afford (see `budget`).
    pub time_span: u64,
    /// RUNTIME_MODE.
    pub runtime_mode: RuntimeMode,
    /// SUBMIT_OR_DOWNLOAD_ERROR_OPEN_CASE.
    #[serde(deserialize_with = "load::strict_bool")]
    pub submit_or_download_error_open_case: bool,
    #[serde(deserialize_with = "load::strict_bool")]
    pub dry_run: bool,
    pub state_file: PathBuf,
    /// Seconds `once` waits for another connector on the same state file to finish before it
    /// exits 3 (the daemon never waits).
    pub lock_wait: u64,
    /// Samples downloaded and uploaded at once (the steps heavy on disk and network).
    pub concurrency: usize,
    /// PEM file of extra CAs both clients trust: a TLS-inspecting proxy sits in front of
    /// Falcon and VMRay alike.
    pub ca_bundle: Option<PathBuf>,
    /// Seconds after which a sample the connector cannot finish is given up: an analysis still
    /// running that long after its submission, or a sample failing for reasons of its own
    /// (never an outage) for that long. Only then is the error case opened.
    pub give_up_after: u64,
    /// The `time_span` the settings gave when the loader raised it to the Falcon budget's
    /// minimum, for the warning; `None` when it stood. Not a key.
    #[serde(skip)]
    pub time_span_raised_from: Option<u64>,
}

impl Default for General {
    fn default() -> Self {
        General {
            log_file: "log/cs-connector.log".into(),
            log_level: LogLevel::Info,
            log_format: LogFormat::Text,
            selected_verdicts: vec![Verdict::Malicious],
            time_span: 60,
            runtime_mode: RuntimeMode::Daemon,
            submit_or_download_error_open_case: false,
            dry_run: false,
            state_file: "state/connector.db".into(),
            lock_wait: 60,
            concurrency: 32,
            ca_bundle: None,
            give_up_after: 86_400,
            time_span_raised_from: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CrowdStrike {
    /// CLIENT_ID.
    pub client_id: String,
    /// CLIENT_SECRET.
    #[serde(serialize_with = "masked")]
    pub client_secret: SecretString,
    /// BASE_URL, or "auto" to discover the region from the token call.
    pub base_url: String,
    /// MSSP child tenant (CID) the token acts for.
    pub member_cid: Option<String>,
    /// DOWNLOAD_DIR.
    pub download_dir: PathBuf,
    /// SELECTED_DATA_SOURCES.
    #[serde(deserialize_with = "load::list")]
    pub selected_data_sources: Vec<DataSource>,
    /// Seconds the first cycle looks back.
    pub lookback: u64,
    /// USER_UUID: the user a created case is assigned to.
    pub user_uuid: Option<String>,
    /// COMMMENT_TO_DETECTION (sic, the seed's spelling).
    #[serde(deserialize_with = "load::strict_bool")]
    pub comment_to_detection: bool,
    /// COMMENT_TO_QUARANTINE.
    #[serde(deserialize_with = "load::strict_bool")]
    pub comment_to_quarantine: bool,
    #[serde(deserialize_with = "load::strict_bool")]
    pub close_clean_detection: bool,
    #[serde(deserialize_with = "load::strict_bool")]
    pub release_clean_quarantine: bool,
    /// CONTAIN_HOST.
    #[serde(deserialize_with = "load::strict_bool")]
    pub contain_host: bool,
    /// CONTAIN_HOST_LEVELS.
    #[serde(deserialize_with = "load::list")]
    pub contain_host_levels: Vec<Verdict>,
    /// Most hosts contained per `once` run, or per 3 hours of the daemon.
    pub contain_max_per_cycle: usize,
    /// Hostnames or device ids never contained.
    #[serde(deserialize_with = "load::list")]
    pub contain_exclude: Vec<String>,
    /// CREATE_CASE.
    #[serde(deserialize_with = "load::strict_bool")]
    pub create_case: bool,
    /// CREATE_CASE_LEVELS.
    #[serde(deserialize_with = "load::list")]
    pub create_case_levels: Vec<Verdict>,
    /// CASE_USERS.
    #[serde(deserialize_with = "load::list")]
    pub case_users: Vec<String>,
    /// FIND_ANOTHER_HOST.
    #[serde(deserialize_with = "load::strict_bool")]
    pub find_another_host: bool,
    /// FIND_ANOTHER_HOST_LEVELS.
    #[serde(deserialize_with = "load::list")]
    pub find_another_host_levels: Vec<Verdict>,
    /// ADD_THREAT_CLASSIFICATION.
    #[serde(deserialize_with = "load::strict_bool")]
    pub add_threat_classification: bool,
    /// ADD_THREAT_NAME.
    #[serde(deserialize_with = "load::strict_bool")]
    pub add_threat_name: bool,
    #[serde(deserialize_with = "load::strict_bool")]
    pub create_ioc: bool,
    #[serde(deserialize_with = "load::list")]
    pub ioc_levels: Vec<Verdict>,
    /// Days until a hash IOC expires; 0 means never.
    pub ioc_expiration_days: u64,
    /// Days until an IP or domain IOC expires; 0 means never. Addresses change hands, so these
    /// expire by default.
    pub ioc_network_expiration_days: u64,
    /// Domains (with every name under them), IP addresses and CIDR ranges never made IOCs.
    #[serde(deserialize_with = "load::list")]
    pub ioc_exclude: Vec<String>,
    /// Falcon action for SHA-256 IOCs.
    pub ioc_hash_action: IocAction,
    /// Falcon action for IP address and domain IOCs.
    pub ioc_network_action: IocAction,
    /// The tenant's API budget, shared by every request of the process.
    pub rate_limit_per_minute: u32,
    /// Largest sample, once decompressed, the connector writes to disk (zip bombs).
    pub max_sample_bytes: u64,
    /// Start an on-demand scan of the file's path on affected Windows hosts.
    #[serde(deserialize_with = "load::strict_bool")]
    pub on_demand_scan: bool,
}

impl Default for CrowdStrike {
    fn default() -> Self {
        let both = vec![Verdict::Suspicious, Verdict::Malicious];
        CrowdStrike {
            client_id: String::new(),
            client_secret: SecretString::from(""),
            base_url: "https://api.us-2.crowdstrike.com".into(),
            member_cid: None,
            download_dir: "downloads".into(),
            selected_data_sources: vec![DataSource::Detect, DataSource::Quarantine],
            lookback: 11400,
            user_uuid: None,
            comment_to_detection: true,
            comment_to_quarantine: true,
            close_clean_detection: true,
            release_clean_quarantine: true,
            contain_host: false,
            contain_host_levels: both.clone(),
            contain_max_per_cycle: 10,
            contain_exclude: Vec::new(),
            create_case: false,
            create_case_levels: both.clone(),
            case_users: Vec::new(),
            find_another_host: false,
            find_another_host_levels: both,
            add_threat_classification: true,
            add_threat_name: true,
            create_ioc: true,
            ioc_levels: vec![Verdict::Malicious],
            ioc_expiration_days: 0,
            ioc_network_expiration_days: 30,
            ioc_exclude: Vec::new(),
            ioc_hash_action: IocAction::Prevent,
            ioc_network_action: IocAction::Detect,
            rate_limit_per_minute: 6000,
            max_sample_bytes: 512 * 1024 * 1024,
            on_demand_scan: false,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Vmray {
    /// API_KEY_TYPE.
    pub api_key_type: ApiKeyType,
    /// API_KEY.
    #[serde(serialize_with = "masked")]
    pub api_key: SecretString,
    /// URL.
    pub url: String,
    /// ConnectorName: sent in the User-Agent.
    pub connector_name: String,
    /// SSL_VERIFY.
    #[serde(deserialize_with = "load::strict_bool")]
    pub ssl_verify: bool,
    /// PEM file of extra CAs only VMRay is checked against (an on-premises appliance's own
    /// CA), trusted on top of `general.ca_bundle`.
    pub ca_bundle: Option<PathBuf>,
    /// SUBMISSION_COMMENT.
    pub submission_comment: String,
    /// SUBMISSION_TAGS.
    #[serde(deserialize_with = "load::list")]
    pub submission_tags: Vec<String>,
    /// ANALYSIS_TIMEOUT: seconds VMRay runs a sample.
    pub analysis_timeout: u64,
    /// ANALYSIS_JOB_TIMEOUT: longest wait, in seconds, of a `once` run for the submissions in
    /// flight (the daemon's waiting clock polls them as long as they run).
    pub analysis_job_timeout: u64,
    /// Longest pause, in seconds, between two status polls of one submission.
    pub poll_interval: u64,
    /// DEFAULT_ANALYZER_MODE.
    pub default_analyzer_mode: AnalyzerMode,
    /// RESUBMIT.
    #[serde(deserialize_with = "load::strict_bool")]
    pub resubmit: bool,
    /// RESUBMISSION_VERDICTS.
    #[serde(deserialize_with = "load::list")]
    pub resubmission_verdicts: Vec<Verdict>,
    /// Only resubmit samples whose last analysis is at least this many days old.
    pub resubmit_after_days: u64,
}

impl Default for Vmray {
    fn default() -> Self {
        Vmray {
            api_key_type: ApiKeyType::Report,
            api_key: SecretString::from(""),
            url: "https://eu.cloud.vmray.com".into(),
            connector_name: "CrowdStrikeCloudConnector".into(),
            ssl_verify: true,
            ca_bundle: None,
            submission_comment: "Sample from VMRay CrowdStrike Connector".into(),
            submission_tags: vec!["CrowdStrike".into()],
            analysis_timeout: 120,
            analysis_job_timeout: 600,
            poll_interval: 10,
            default_analyzer_mode: AnalyzerMode::ReputationStaticDynamic,
            resubmit: false,
            resubmission_verdicts: vec![Verdict::Malicious, Verdict::Suspicious],
            resubmit_after_days: 0,
        }
    }
}

/// Declares a config enum that deserialises from a case-insensitive string (plus the seed's
/// spellings as aliases) and, for anything else, names the value and every allowed choice.
macro_rules! choice_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident = $text:literal $(| $alias:literal)*),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const CHOICES: &'static [&'static str] = &[$($text),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;

            fn from_str(raw: &str) -> Result<Self, String> {
                let lower = raw.trim().to_ascii_lowercase();
                $(if lower == $text $(|| lower == $alias)* { return Ok($name::$variant); })+
                Err(format!("`{raw}` is not one of: {}", Self::CHOICES.join(", ")))
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }
    };
}

choice_enum!(LogLevel {
    Error = "error",
    Warn = "warn" | "warning",
    Info = "info",
    Debug = "debug",
    Trace = "trace",
});

choice_enum!(LogFormat { Text = "text", Json = "json" });

choice_enum!(
    /// Whether `run` loops or runs one cycle. The seed's DOCKER and CLI are accepted as aliases.
    RuntimeMode { Daemon = "daemon" | "docker", Once = "once" | "cli" }
);

choice_enum!(
    /// Where the connector looks for samples. `detect` reads Falcon alerts: the Detects API the
    /// seed used was shut down on 2025-09-30.
    DataSource { Detect = "detect" | "alerts", Quarantine = "quarantine" }
);

choice_enum!(ApiKeyType { Report = "report", Verdict = "verdict" });

choice_enum!(AnalyzerMode {
    Reputation = "reputation",
    ReputationStatic = "reputation_static",
    ReputationStaticDynamic = "reputation_static_dynamic",
    StaticDynamic = "static_dynamic",
    Static = "static",
});

choice_enum!(
    /// What Falcon does when an IOC matches.
    IocAction {
        NoAction = "no_action",
        Allow = "allow",
        PreventNoUi = "prevent_no_ui",
        Detect = "detect",
        Prevent = "prevent",
    }
);

/// Falcon's base URL, or region discovery at the first token call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FalconBaseUrl {
    Auto,
    Fixed(String),
}

impl CrowdStrike {
    pub fn base_url(&self) -> FalconBaseUrl {
        if self.base_url.eq_ignore_ascii_case("auto") {
            FalconBaseUrl::Auto
        } else {
            FalconBaseUrl::Fixed(self.base_url.trim_end_matches('/').to_string())
        }
    }
}

impl Vmray {
    /// The instance URL without a trailing slash (VMRay's own client turns one into `//rest`).
    pub fn base_url(&self) -> &str {
        self.url.trim_end_matches('/')
    }
}

/// A PEM file of extra trusted CAs and the key that named it, so an error can name the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaBundle {
    pub key: &'static str,
    pub path: PathBuf,
}

impl CaBundle {
    pub fn new(key: &'static str, path: impl Into<PathBuf>) -> Self {
        CaBundle {
            key,
            path: path.into(),
        }
    }

    /// The certificates, or an error naming the key and the file.
    pub fn read(&self) -> Result<Vec<reqwest::Certificate>, String> {
        read_ca_bundle(&self.path).map_err(|message| format!("{}: {message}", self.key))
    }
}

impl Config {
    /// The extra CAs the Falcon client trusts: `general.ca_bundle`.
    pub fn falcon_ca_bundles(&self) -> Vec<CaBundle> {
        self.general
            .ca_bundle
            .iter()
            .map(|path| CaBundle::new("general.ca_bundle", path))
            .collect()
    }

    /// The extra CAs the VMRay client trusts: `general.ca_bundle` and `vmray.ca_bundle`.
    pub fn vmray_ca_bundles(&self) -> Vec<CaBundle> {
        let mut bundles = self.falcon_ca_bundles();
        bundles.extend(
            self.vmray
                .ca_bundle
                .iter()
                .map(|path| CaBundle::new("vmray.ca_bundle", path)),
        );
        bundles
    }
}

/// Shown wherever settings are printed: a set secret as stars, an unset one as empty.
fn masked<S: Serializer>(secret: &SecretString, serializer: S) -> Result<S::Ok, S::Error> {
    if secret.expose_secret().is_empty() {
        serializer.serialize_str("")
    } else {
        serializer.serialize_str("********")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_never_shows_a_secret() {
        let mut config = Config::default();
        config.crowdstrike.client_secret = SecretString::from("cs-secret-4711");
        config.vmray.api_key = SecretString::from("vmray-key-0815");
        let debug = format!("{config:?}");
        assert!(!debug.contains("cs-secret-4711"), "{debug}");
        assert!(!debug.contains("vmray-key-0815"), "{debug}");
        let json = serde_json::to_string(&config).unwrap();
        assert!(!json.contains("cs-secret-4711") && !json.contains("vmray-key-0815"));
        assert!(json.contains("********"));
    }
}
