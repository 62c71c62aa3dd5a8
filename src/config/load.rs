//! Reading the settings: TOML file, then `CONNECTOR__SECTION__KEY` variables, then the vendor's
//! own variable names (and their `_FILE` forms), then checks that every key is known and every
//! value makes sense. Each error names the key and says what to do.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use config::{Environment, File, FileFormat, Value, ValueKind};
use secrecy::ExposeSecret;
use serde::Deserialize;

use super::{Config, FalconBaseUrl};

/// The variables the vendor's current Python connector reads from its `.env`, so users keep
/// theirs. Each also works as `NAME_FILE` (Docker and Kubernetes secrets).
const VENDOR_VARIABLES: [(&str, &str); 5] = [
    ("CROWDSTRIKE_CLIENT_ID", "crowdstrike.client_id"),
    ("CROWDSTRIKE_CLIENT_SECRET", "crowdstrike.client_secret"),
    ("CROWDSTRIKE_BASE_URL", "crowdstrike.base_url"),
    ("VMRAY_API_KEY", "vmray.api_key"),
    ("VMRAY_BASE_URL", "vmray.url"),
];

/// What went wrong reading the settings. The binary exits with code 2 for every one of them.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "config file {path} does not exist: copy config/connector.example.toml there, or pass --config PATH"
    )]
    NotFound { path: PathBuf },
    #[error("config file {path} could not be read or parsed: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("unknown config key `{key}`{}: check its spelling against config/connector.example.toml", suggestion_text(.suggestion))]
    UnknownKey {
        key: String,
        suggestion: Option<String>,
    },
    #[error("invalid value for `{key}`: {message}")]
    Invalid { key: String, message: String },
    #[error(
        "`{key}` is not set: set it in the config file or in the environment variable {variable}"
    )]
    Missing { key: String, variable: String },
    #[error("{variable} names the file {path}, which could not be read: {source}")]
    SecretFile {
        variable: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("both {variable} and {variable}_FILE are set: set only one of them")]
    Conflict { variable: String },
    /// More than one of the above, all reported at once so one edit can fix them all.
    #[error("{} problems in the configuration:{}", .0.len(), several_text(.0))]
    Several(Vec<ConfigError>),
}

fn several_text(errors: &[ConfigError]) -> String {
    errors.iter().map(|e| format!("\n  - {e}")).collect()
}

impl ConfigError {
    /// One error as itself, several as [`ConfigError::Several`], none as `Ok`.
    pub fn from_all(mut errors: Vec<ConfigError>) -> Result<(), ConfigError> {
        match errors.len() {
            0 => Ok(()),
            1 => Err(errors.remove(0)),
            _ => Err(ConfigError::Several(errors)),
        }
    }

    /// Every single error inside, for callers that look for one key.
    pub fn all(&self) -> Vec<&ConfigError> {
        match self {
            ConfigError::Several(errors) => errors.iter().collect(),
            one => vec![one],
        }
    }
}

fn suggestion_text(suggestion: &Option<String>) -> String {
    match suggestion {
        Some(s) => format!(" (did you mean `{s}`?)"),
        None => String::new(),
    }
}

/// A snapshot of the environment variables, so loading is a pure function of its inputs and
/// tests never mutate the process environment.
#[derive(Clone, Default)]
pub struct Env(HashMap<String, String>);

impl Env {
    pub fn from_process() -> Self {
        Env(std::env::vars().collect())
    }

    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        Env(pairs
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect())
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }
}

// Values may be secrets: list the names only.
impl fmt::Debug for Env {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

/// Loads the settings from `path` (or, when `None`, from [`super::DEFAULT_CONFIG_PATH`] if it
/// exists) and the environment.
pub fn load(path: Option<&Path>, env: &Env) -> Result<Config, ConfigError> {
    let (path, required) = match path {
        Some(p) => (p.to_path_buf(), true),
        None => (PathBuf::from(super::DEFAULT_CONFIG_PATH), false),
    };
    if required && !path.exists() {
        return Err(ConfigError::NotFound { path });
    }
    let text = if path.exists() {
        std::fs::read_to_string(&path).map_err(|e| ConfigError::Parse {
            path: path.clone(),
            message: e.to_string(),
        })?
    } else {
        String::new()
    };
    load_with_origin(&text, &path, env)
}

/// Loads the settings from TOML text and the environment.
pub fn load_from_str(toml: &str, env: &Env) -> Result<Config, ConfigError> {
    load_with_origin(toml, Path::new("<inline>"), env)
}

/// Every error leaves with the secrets' values masked: a parse error quotes the offending line,
/// and a secret typed into the wrong key is quoted by that key's check.
fn load_with_origin(toml: &str, origin: &Path, env: &Env) -> Result<Config, ConfigError> {
    load_unredacted(toml, origin, env).map_err(|error| redact(error, &secret_values(toml, env)))
}

fn load_unredacted(toml: &str, origin: &Path, env: &Env) -> Result<Config, ConfigError> {
    let mut builder = config::Config::builder()
        .add_source(File::from_str(toml, FileFormat::Toml))
        // No try_parsing: it would turn an API key of digits into a number and drop its leading
        // zeros. config converts strings to numbers and booleans when it deserialises anyway.
        .add_source(
            Environment::with_prefix("CONNECTOR")
                .prefix_separator("__")
                .separator("__")
                .ignore_empty(true)
                .source(Some(env.0.clone().into_iter().collect())),
        );
    for (variable, key) in VENDOR_VARIABLES {
        if let Some(value) = vendor_value(env, variable)? {
            builder = builder
                .set_override(key, value)
                .expect("a constant key is a valid path");
        }
    }
    let merged = builder.build().map_err(|e| ConfigError::Parse {
        path: origin.to_path_buf(),
        message: e.to_string(),
    })?;

    let mut errors = check_known_keys(&merged);
    let mut tables = config::Source::collect(&merged).map_err(|e| ConfigError::Parse {
        path: origin.to_path_buf(),
        message: e.to_string(),
    })?;
    super::bounds::check_types(&mut tables, &mut errors);
    let mut config = deserialize_reporting_all(tables, &mut errors);
    validate(&config, &mut errors);
    super::bounds::check_ranges(&config, &mut errors);
    ConfigError::from_all(errors)?;
    super::budget::raise_time_span(&mut config);
    Ok(config)
}

/// Deserialises what is left, reporting every key that does not convert: each bad key is
/// reported, removed (its default stands in) and the rest tried again, so one run names them
/// all. Unknown keys were reported already and are ignored here.
fn deserialize_reporting_all(
    mut tables: config::Map<String, Value>,
    errors: &mut Vec<ConfigError>,
) -> Config {
    let known = known_keys();
    tables.retain(|section, _| known.contains_key(section));
    for table in tables.values_mut() {
        if let ValueKind::Table(keys) = &mut table.kind {
            keys.retain(|key, _| known.values().any(|k| k.contains(key)));
        }
    }
    loop {
        let root = Value::new(None, ValueKind::Table(tables.clone()));
        match root.try_deserialize::<Config>() {
            Ok(config) => return config,
            Err(e) => {
                let error = invalid_from(e);
                let removed = match &error {
                    ConfigError::Invalid { key, .. } => remove_key(&mut tables, key),
                    _ => false,
                };
                errors.push(error);
                if !removed {
                    return Config::default();
                }
            }
        }
    }
}

/// Removes `section.key` (or a whole section); false when it is not there.
fn remove_key(tables: &mut config::Map<String, Value>, path: &str) -> bool {
    let (section, key) = match path.split_once('.') {
        Some((section, key)) => (section, Some(key.split(['.', '[']).next().unwrap_or(key))),
        None => (path, None),
    };
    match key {
        None => tables.remove(section).is_some(),
        Some(key) => match tables.get_mut(section).map(|t| &mut t.kind) {
            Some(ValueKind::Table(keys)) => keys.remove(key).is_some(),
            _ => false,
        },
    }
}

/// `NAME` or the trimmed contents of the file named by `NAME_FILE`.
fn vendor_value(env: &Env, variable: &str) -> Result<Option<String>, ConfigError> {
    let file_variable = format!("{variable}_FILE");
    match (env.get(variable), env.get(&file_variable)) {
        (Some(_), Some(_)) => Err(ConfigError::Conflict {
            variable: variable.to_string(),
        }),
        (Some(value), None) => Ok(Some(value.to_string())),
        (None, Some(file)) => std::fs::read_to_string(file)
            .map(|s| Some(s.trim_end_matches(['\r', '\n']).to_string()))
            .map_err(|source| ConfigError::SecretFile {
                variable: file_variable,
                path: file.into(),
                source,
            }),
        (None, None) => Ok(None),
    }
}

/// The keys whose values are secrets (as written in TOML, in any section).
const SECRET_KEYS: [&str; 2] = ["client_secret", "api_key"];

/// A secret shorter than this is masked only where its key is written: masking every
/// occurrence of two letters would garble the message and hide nothing.
const MIN_MASKED_LEN: usize = 4;

const MASK: &str = "********";

/// The values of the secret keys as the TOML text and the environment give them, including a
/// value the parser choked on (an unterminated string), longest first.
fn secret_values(toml: &str, env: &Env) -> Vec<String> {
    let mut values: Vec<String> = toml
        .lines()
        .filter_map(|line| secret_assignment(line).map(|at| written_value(&line[at..])))
        .collect();
    for (name, value) in &env.0 {
        let upper = name.to_ascii_uppercase();
        let base = upper.strip_suffix("_FILE").unwrap_or(&upper);
        if !(base.ends_with("CLIENT_SECRET") || base.ends_with("API_KEY")) {
            continue;
        }
        if base.len() < upper.len() {
            // A secret file: its contents are the value.
            if let Ok(text) = std::fs::read_to_string(value) {
                values.push(text.trim_end_matches(['\r', '\n']).to_string());
            }
        } else {
            values.push(value.clone());
        }
    }
    values.retain(|v| v.chars().count() >= MIN_MASKED_LEN);
    values.sort_by_key(|v| std::cmp::Reverse(v.len()));
    values.dedup();
    values
}

/// Where the value starts (just after `=`) when `line` assigns a secret key, as TOML writes
/// it: `client_secret = `, `"api_key"=`, `vmray.api_key =`, or inside an inline table.
fn secret_assignment(line: &str) -> Option<usize> {
    for key in SECRET_KEYS {
        for (at, _) in line.match_indices(key) {
            let before = line[..at].chars().next_back();
            if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
                continue;
            }
            let after = line[at + key.len()..]
                .trim_start_matches(['"', '\''])
                .trim_start();
            if let Some(rest) = after.strip_prefix('=') {
                return Some(line.len() - rest.len());
            }
        }
    }
    None
}

/// The value as written after `=`: quotes taken off, up to its closing quote (or the line's
/// end when it has none).
fn written_value(raw: &str) -> String {
    let raw = raw.trim();
    for quote in ["\"\"\"", "'''", "\"", "'"] {
        if let Some(inner) = raw.strip_prefix(quote) {
            return inner.split(quote).next().unwrap_or(inner).to_string();
        }
    }
    raw.split('#').next().unwrap_or(raw).trim().to_string()
}

/// Masks every secret in one text: the value of every line that assigns a secret key (a parse
/// error's quoted line), then every known secret value wherever it appears.
fn redact_text(text: &str, secrets: &[String]) -> String {
    let mut out: String = text
        .split_inclusive('\n')
        .map(|line| match secret_assignment(line) {
            Some(at) => {
                let end = if line.ends_with('\n') { "\n" } else { "" };
                format!("{} \"{MASK}\"{end}", &line[..at])
            }
            None => line.to_string(),
        })
        .collect();
    for secret in secrets {
        out = out.replace(secret.as_str(), MASK);
    }
    out
}

fn redact(error: ConfigError, secrets: &[String]) -> ConfigError {
    match error {
        ConfigError::Parse { path, message } => ConfigError::Parse {
            path,
            message: redact_text(&message, secrets),
        },
        ConfigError::Invalid { key, message } => ConfigError::Invalid {
            key,
            message: redact_text(&message, secrets),
        },
        ConfigError::Several(errors) => {
            ConfigError::Several(errors.into_iter().map(|e| redact(e, secrets)).collect())
        }
        // The rest name keys, variables and paths, never values.
        other => other,
    }
}

/// Every section and key the connector knows, taken from the defaults so the list cannot drift
/// from the structs.
pub(crate) fn known_keys() -> BTreeMap<String, Vec<String>> {
    let defaults = serde_json::to_value(Config::default()).expect("defaults serialise");
    let serde_json::Value::Object(sections) = defaults else {
        unreachable!("Config serialises to a table")
    };
    sections
        .into_iter()
        .map(|(section, keys)| {
            let keys = match keys {
                serde_json::Value::Object(map) => map.keys().cloned().collect(),
                _ => Vec::new(),
            };
            (section, keys)
        })
        .collect()
}

fn check_known_keys(merged: &config::Config) -> Vec<ConfigError> {
    let known = known_keys();
    let tables: HashMap<String, Value> = merged.clone().try_deserialize().unwrap_or_default();
    let mut sections: Vec<_> = tables.into_iter().collect();
    sections.sort_by(|a, b| a.0.cmp(&b.0));
    let mut errors = Vec::new();
    for (section, value) in sections {
        let Some(section_keys) = known.get(&section) else {
            let names: Vec<&str> = known.keys().map(String::as_str).collect();
            errors.push(ConfigError::UnknownKey {
                suggestion: closest(&section, names.iter().copied()).map(|s| format!("[{s}]")),
                key: section,
            });
            continue;
        };
        let ValueKind::Table(keys) = value.kind else {
            errors.push(ConfigError::Invalid {
                key: section,
                message: "expected a [section] of keys".into(),
            });
            continue;
        };
        let mut keys: Vec<_> = keys.into_keys().collect();
        keys.sort();
        for key in keys {
            if !section_keys.contains(&key) {
                errors.push(ConfigError::UnknownKey {
                    suggestion: closest(&key, section_keys.iter().map(String::as_str))
                        .map(|s| format!("{section}.{s}")),
                    key: format!("{section}.{key}"),
                });
            }
        }
    }
    errors
}

/// The candidate nearest to `wrong`, if it is near enough to be a likely typo.
fn closest<'a>(wrong: &str, candidates: impl Iterator<Item = &'a str>) -> Option<String> {
    candidates
        .map(|c| (strsim::damerau_levenshtein(wrong, c), c))
        .filter(|(distance, c)| *distance <= (c.len() / 3).max(2))
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, c)| c.to_string())
}

/// Turns a deserialisation error (which config reports with the key's path) into ours.
fn invalid_from(error: config::ConfigError) -> ConfigError {
    let message = error.to_string();
    let key = match &error {
        config::ConfigError::Type { key: Some(key), .. } => key.clone(),
        config::ConfigError::At { key: Some(key), .. } => key.clone(),
        _ => message
            .split("for key `")
            .nth(1)
            .and_then(|rest| rest.split('`').next())
            .unwrap_or("config")
            .to_string(),
    };
    ConfigError::Invalid { key, message }
}

/// A switch: `true` or `false` (also as the strings an environment variable carries), nothing
/// else. The `config` crate would turn `3` or `"no"` into a boolean on its own; for a switch like
/// `contain_host` that silent guess is exactly what the loader must refuse.
pub(super) fn strict_bool<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<bool, D::Error> {
    struct Switch;
    impl serde::de::Visitor<'_> for Switch {
        type Value = bool;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("true or false")
        }
        fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<bool, E> {
            Ok(v)
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<bool, E> {
            match v.trim().to_ascii_lowercase().as_str() {
                "true" => Ok(true),
                "false" => Ok(false),
                _ => Err(E::custom(format!("`{v}` is not one of: true, false"))),
            }
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<bool, E> {
            Err(E::custom(format!("`{v}` is not one of: true, false")))
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<bool, E> {
            Err(E::custom(format!("`{v}` is not one of: true, false")))
        }
        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<bool, E> {
            Err(E::custom(format!("`{v}` is not one of: true, false")))
        }
    }
    deserializer.deserialize_any(Switch)
}

/// Accepts a list either as a TOML array or as one comma-separated string, which is what an
/// environment variable can carry (`CONNECTOR__GENERAL__SELECTED_VERDICTS=malicious,suspicious`).
pub(super) fn list<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        Many(Vec<serde_json::Value>),
        Joined(String),
    }
    let items = match OneOrMany::deserialize(deserializer)? {
        OneOrMany::Many(items) => items,
        OneOrMany::Joined(joined) => joined
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| serde_json::Value::String(s.to_string()))
            .collect(),
    };
    items
        .into_iter()
        .map(|item| T::deserialize(item).map_err(serde::de::Error::custom))
        .collect()
}

/// The checks across keys and of values' meaning; numbers' ranges are in [`super::bounds`].
fn validate(config: &Config, errors: &mut Vec<ConfigError>) {
    let cs = &config.crowdstrike;
    let vm = &config.vmray;
    if cs.client_id.trim().is_empty() {
        errors.push(missing("crowdstrike.client_id", "CROWDSTRIKE_CLIENT_ID"));
    }
    if cs.client_secret.expose_secret().is_empty() {
        errors.push(missing(
            "crowdstrike.client_secret",
            "CROWDSTRIKE_CLIENT_SECRET (or CROWDSTRIKE_CLIENT_SECRET_FILE)",
        ));
    }
    if vm.api_key.expose_secret().is_empty() {
        errors.push(missing(
            "vmray.api_key",
            "VMRAY_API_KEY (or VMRAY_API_KEY_FILE)",
        ));
    }
    if let FalconBaseUrl::Fixed(url) = cs.base_url() {
        errors.extend(check_url("crowdstrike.base_url", &url, " or \"auto\"").err());
    }
    errors.extend(check_url("vmray.url", &vm.url, "").err());

    if cs.selected_data_sources.is_empty() {
        errors.push(invalid(
            "crowdstrike.selected_data_sources",
            "must name at least one of \"detect\", \"quarantine\"",
        ));
    }
    if vm.poll_interval > vm.analysis_job_timeout {
        errors.push(invalid(
            "vmray.poll_interval",
            "must not be longer than vmray.analysis_job_timeout",
        ));
    }
    for tag in &vm.submission_tags {
        if tag.is_empty() || tag.len() > 255 || tag.contains([' ', ',']) {
            errors.push(invalid(
                "vmray.submission_tags",
                &format!("tag `{tag}` must be 1 to 255 characters without spaces or commas"),
            ));
        }
    }
    errors.extend(check_ioc_actions(cs).err());
    if let Err(message) = crate::ioc_filter::IocExclusions::parse(&cs.ioc_exclude) {
        errors.push(invalid("crowdstrike.ioc_exclude", &message));
    }
    for (key, bundle) in [
        ("general.ca_bundle", &config.general.ca_bundle),
        ("vmray.ca_bundle", &vm.ca_bundle),
    ] {
        if let Some(path) = bundle
            && let Err(message) = super::bounds::read_ca_bundle(path)
        {
            errors.push(invalid(key, &message));
        }
    }
}

/// Falcon takes every action for hash IOCs, but only `detect` or `no_action` for IP addresses
/// and domains: a network IOC asked to `prevent` is refused at creation, every time.
fn check_ioc_actions(cs: &crate::config::CrowdStrike) -> Result<(), ConfigError> {
    use crate::config::IocAction;
    if matches!(
        cs.ioc_network_action,
        IocAction::Detect | IocAction::NoAction
    ) {
        return Ok(());
    }
    Err(invalid(
        "crowdstrike.ioc_network_action",
        &format!(
            "Falcon takes only \"detect\" or \"no_action\" for IP and domain IOCs, not \"{}\"",
            cs.ioc_network_action.as_str()
        ),
    ))
}

fn check_url(key: &str, url: &str, alternative: &str) -> Result<(), ConfigError> {
    match reqwest::Url::parse(url) {
        Ok(parsed) if matches!(parsed.scheme(), "http" | "https") && parsed.host().is_some() => {
            Ok(())
        }
        _ => Err(invalid(
            key,
            &format!("`{url}` is not an http(s) URL such as https://host{alternative}"),
        )),
    }
}

fn missing(key: &str, variable: &str) -> ConfigError {
    ConfigError::Missing {
        key: key.into(),
        variable: variable.into(),
    }
}

fn invalid(key: &str, message: &str) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{LogLevel, RuntimeMode};
    use crate::model::Verdict;

    const EXAMPLE: &str = include_str!("../../config/connector.example.toml");

    fn credentials() -> Vec<(&'static str, &'static str)> {
        vec![
            ("CROWDSTRIKE_CLIENT_ID", "id-1"),
            ("CROWDSTRIKE_CLIENT_SECRET", "cs-secret"),
            ("VMRAY_API_KEY", "vm-key"),
        ]
    }

    fn load_env(toml: &str, extra: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let mut pairs = credentials();
        pairs.extend_from_slice(extra);
        load_from_str(toml, &Env::from_pairs(pairs))
    }

    fn err(toml: &str, extra: &[(&str, &str)]) -> String {
        load_env(toml, extra).unwrap_err().to_string()
    }

    #[test]
    fn example_config_parses_to_exactly_the_defaults() {
        let loaded = load_env(EXAMPLE, &[]).unwrap();
        let mut expected = Config::default();
        expected.crowdstrike.client_id = "id-1".into();
        expected.crowdstrike.client_secret = "cs-secret".into();
        expected.vmray.api_key = "vm-key".into();
        assert_eq!(
            serde_json::to_value(&loaded).unwrap(),
            serde_json::to_value(&expected).unwrap()
        );
        assert_eq!(
            loaded.crowdstrike.client_secret.expose_secret(),
            "cs-secret"
        );
        assert_eq!(loaded.vmray.api_key.expose_secret(), "vm-key");
    }

    #[test]
    fn example_config_lists_every_key() {
        for (section, keys) in known_keys() {
            for key in keys {
                let set = format!("\n{key} = ");
                let commented = format!("\n# {key} = ");
                assert!(
                    EXAMPLE.contains(&set) || EXAMPLE.contains(&commented),
                    "{section}.{key} is missing from the example config"
                );
            }
        }
    }

    #[test]
    fn defaults_match_the_seed() {
        let c = Config::default();
        // The seed's 3 hours became a minute: an idle collection costs next to nothing.
        assert_eq!(c.general.time_span, 60);
        assert_eq!(c.general.selected_verdicts, vec![Verdict::Malicious]);
        assert_eq!(c.crowdstrike.base_url, "https://api.us-2.crowdstrike.com");
        assert!(!c.crowdstrike.contain_host);
        assert_eq!(c.vmray.url, "https://eu.cloud.vmray.com");
        assert_eq!(c.vmray.analysis_timeout, 120);
        assert_eq!(c.vmray.analysis_job_timeout, 600);
        assert_eq!(c.general.log_level, LogLevel::Info);
    }

    #[test]
    fn each_vendor_variable_overrides_the_file() {
        let toml = r#"
            [crowdstrike]
            client_id = "file-id"
            client_secret = "file-secret"
            base_url = "https://file.example"
            [vmray]
            api_key = "file-key"
            url = "https://file-vmray.example"
        "#;
        let env = Env::from_pairs([
            ("CROWDSTRIKE_CLIENT_ID", "env-id"),
            ("CROWDSTRIKE_CLIENT_SECRET", "env-secret"),
            ("CROWDSTRIKE_BASE_URL", "https://api.eu-1.crowdstrike.com"),
            ("VMRAY_API_KEY", "env-key"),
            ("VMRAY_BASE_URL", "https://us.cloud.vmray.com"),
        ]);
        let c = load_from_str(toml, &env).unwrap();
        assert_eq!(c.crowdstrike.client_id, "env-id");
        assert_eq!(c.crowdstrike.client_secret.expose_secret(), "env-secret");
        assert_eq!(c.crowdstrike.base_url, "https://api.eu-1.crowdstrike.com");
        assert_eq!(c.vmray.api_key.expose_secret(), "env-key");
        assert_eq!(c.vmray.url, "https://us.cloud.vmray.com");
    }

    #[test]
    fn each_file_variable_overrides_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut pairs = Vec::new();
        for (variable, _) in VENDOR_VARIABLES {
            let path = dir.path().join(variable);
            let value = if variable.ends_with("URL") {
                format!(
                    "https://{}.example",
                    variable.to_lowercase().replace('_', "-")
                )
            } else {
                format!("from-file-{variable}")
            };
            std::fs::write(&path, format!("{value}\n")).unwrap();
            pairs.push((format!("{variable}_FILE"), path.display().to_string()));
        }
        let c = load_from_str("[crowdstrike]\nclient_id = \"x\"", &Env::from_pairs(pairs)).unwrap();
        assert_eq!(c.crowdstrike.client_id, "from-file-CROWDSTRIKE_CLIENT_ID");
        assert_eq!(
            c.crowdstrike.client_secret.expose_secret(),
            "from-file-CROWDSTRIKE_CLIENT_SECRET"
        );
        assert_eq!(
            c.crowdstrike.base_url,
            "https://crowdstrike-base-url.example"
        );
        assert_eq!(c.vmray.api_key.expose_secret(), "from-file-VMRAY_API_KEY");
        assert_eq!(c.vmray.url, "https://vmray-base-url.example");
    }

    #[test]
    fn a_variable_and_its_file_form_together_are_refused() {
        let message = err("", &[("VMRAY_API_KEY_FILE", "/nonexistent")]);
        assert!(message.contains("VMRAY_API_KEY_FILE"), "{message}");
    }

    #[test]
    fn an_unreadable_secret_file_names_the_variable_and_path() {
        let env = Env::from_pairs([
            ("CROWDSTRIKE_CLIENT_ID", "id"),
            ("CROWDSTRIKE_CLIENT_SECRET_FILE", "/nonexistent/secret"),
            ("VMRAY_API_KEY", "k"),
        ]);
        let message = load_from_str("", &env).unwrap_err().to_string();
        assert!(
            message.contains("CROWDSTRIKE_CLIENT_SECRET_FILE"),
            "{message}"
        );
        assert!(message.contains("/nonexistent/secret"), "{message}");
    }

    #[test]
    fn connector_variables_override_any_key_including_lists() {
        let c = load_env(
            "",
            &[
                ("CONNECTOR__GENERAL__TIME_SPAN", "60"),
                ("CONNECTOR__CROWDSTRIKE__CONTAIN_HOST", "true"),
                (
                    "CONNECTOR__GENERAL__SELECTED_VERDICTS",
                    "malicious, suspicious",
                ),
                ("CONNECTOR__GENERAL__RUNTIME_MODE", "CLI"),
                ("CONNECTOR__VMRAY__API_KEY", "00123"),
                ("CONNECTOR__METRICS__LISTEN", "0.0.0.0:9464"),
            ],
        )
        .unwrap();
        assert_eq!(c.general.time_span, 60);
        assert_eq!(c.metrics.listen, Some("0.0.0.0:9464".parse().unwrap()));
        assert!(c.crowdstrike.contain_host);
        assert_eq!(
            c.general.selected_verdicts,
            vec![Verdict::Malicious, Verdict::Suspicious]
        );
        assert_eq!(c.general.runtime_mode, RuntimeMode::Once);
        // The vendor variable is more specific and wins; leading zeros survive either way.
        assert_eq!(c.vmray.api_key.expose_secret(), "vm-key");
        let only_connector = load_from_str(
            "",
            &Env::from_pairs([
                ("CROWDSTRIKE_CLIENT_ID", "id"),
                ("CROWDSTRIKE_CLIENT_SECRET", "s"),
                ("CONNECTOR__VMRAY__API_KEY", "00123"),
            ]),
        )
        .unwrap();
        assert_eq!(only_connector.vmray.api_key.expose_secret(), "00123");
    }

    #[test]
    fn an_unknown_key_names_it_and_the_closest_valid_one() {
        let message = err("[crowdstrike]\ncontain_hots = true\n", &[]);
        assert!(message.contains("crowdstrike.contain_hots"), "{message}");
        assert!(message.contains("crowdstrike.contain_host"), "{message}");
        let message = err("[vmary]\nurl = \"https://x\"\n", &[]);
        assert!(
            message.contains("vmary") && message.contains("[vmray]"),
            "{message}"
        );
        let message = err("", &[("CONNECTOR__GENERAL__TIME_SPANN", "5")]);
        assert!(message.contains("general.time_spann"), "{message}");
    }

    #[test]
    fn a_bad_enum_value_names_the_key_the_value_and_the_choices() {
        let message = err("[general]\nruntime_mode = \"forever\"\n", &[]);
        assert!(message.contains("general.runtime_mode"), "{message}");
        assert!(message.contains("forever"), "{message}");
        assert!(
            message.contains("daemon") && message.contains("once"),
            "{message}"
        );
        let message = err("[crowdstrike]\ncontain_host_levels = [\"evil\"]\n", &[]);
        assert!(message.contains("contain_host_levels"), "{message}");
        assert!(
            message.contains("evil") && message.contains("malicious"),
            "{message}"
        );
    }

    #[test]
    fn a_wrong_type_names_the_key() {
        let message = err("[general]\ntime_span = \"soon\"\n", &[]);
        assert!(message.contains("general.time_span"), "{message}");
        let message = err("[general]\ntime_span = 0\n", &[]);
        assert!(message.contains("general.time_span"), "{message}");
    }

    #[test]
    fn a_missing_secret_names_the_key_and_the_variable() {
        let env = Env::from_pairs([("CROWDSTRIKE_CLIENT_ID", "id"), ("VMRAY_API_KEY", "k")]);
        let message = load_from_str("", &env).unwrap_err().to_string();
        assert!(message.contains("crowdstrike.client_secret"), "{message}");
        assert!(message.contains("CROWDSTRIKE_CLIENT_SECRET"), "{message}");
        let env = Env::from_pairs([
            ("CROWDSTRIKE_CLIENT_ID", "id"),
            ("CROWDSTRIKE_CLIENT_SECRET", "s"),
        ]);
        let message = load_from_str("", &env).unwrap_err().to_string();
        assert!(message.contains("vmray.api_key") && message.contains("VMRAY_API_KEY"));
    }

    #[test]
    fn a_switch_takes_only_true_or_false() {
        for bad in ["dry_run = 3", "dry_run = \"no\"", "dry_run = 1"] {
            let message = err(&format!("[general]\n{bad}\n"), &[]);
            assert!(message.contains("general.dry_run"), "{message}");
            assert!(message.contains("true, false"), "{message}");
        }
        let c = load_env("", &[("CONNECTOR__GENERAL__DRY_RUN", "TRUE")]).unwrap();
        assert!(c.general.dry_run);
    }

    #[test]
    fn values_that_would_overflow_are_refused_with_the_range() {
        for (line, key) in [
            (
                "[crowdstrike]\nlookback = 999999999999",
                "crowdstrike.lookback",
            ),
            (
                "[crowdstrike]\nioc_expiration_days = 100000000",
                "crowdstrike.ioc_expiration_days",
            ),
            ("[general]\ntime_span = 99999999999", "general.time_span"),
            (
                "[vmray]\nresubmit_after_days = 99999999",
                "vmray.resubmit_after_days",
            ),
            (
                "[vmray]\nanalysis_job_timeout = 9999999999\npoll_interval = 1",
                "vmray.analysis_job_timeout",
            ),
            (
                "[crowdstrike]\nmax_sample_bytes = 9999999999999",
                "crowdstrike.max_sample_bytes",
            ),
            ("[general]\nconcurrency = 257", "general.concurrency"),
        ] {
            let message = err(line, &[]);
            assert!(message.contains(key), "{line}: {message}");
            assert!(message.contains("out of range: use"), "{line}: {message}");
        }
        // The ends of each range are accepted.
        load_env(
            "[crowdstrike]\nlookback = 31536000\nioc_expiration_days = 3650\n",
            &[],
        )
        .unwrap();
    }

    #[test]
    fn floats_and_quoted_numbers_or_switches_in_the_file_are_refused() {
        for (line, key, says) in [
            (
                "[general]\ntime_span = 1.5",
                "general.time_span",
                "decimal point",
            ),
            (
                "[general]\ntime_span = 60.0",
                "general.time_span",
                "decimal point",
            ),
            (
                "[general]\ntime_span = \"60\"",
                "general.time_span",
                "without quotes",
            ),
            (
                "[general]\nconcurrency = true",
                "general.concurrency",
                "not a number",
            ),
            (
                "[crowdstrike]\ncontain_host = \"true\"",
                "crowdstrike.contain_host",
                "without quotes",
            ),
        ] {
            let message = err(line, &[]);
            assert!(message.contains(key), "{line}: {message}");
            assert!(message.contains(says), "{line}: {message}");
        }
    }

    #[test]
    fn environment_numbers_are_digits_only() {
        for bad in ["1.5", "yes", "true", "60s", "-1", ""] {
            if bad.is_empty() {
                continue; // an empty variable is ignored, as if unset
            }
            let message = err("", &[("CONNECTOR__GENERAL__TIME_SPAN", bad)]);
            assert!(message.contains("general.time_span"), "{bad}: {message}");
        }
        let c = load_env("", &[("CONNECTOR__GENERAL__TIME_SPAN", "120")]).unwrap();
        assert_eq!(c.general.time_span, 120);
    }

    #[test]
    fn every_problem_is_reported_in_one_run() {
        let toml = "[general]\ntime_span = 1.5\nconcurrency = 0\nlog_level = \"loud\"\nbogus = 1\n\
                    [crowdstrike]\nlookback = 999999999999\nrate_limit_per_minute = \"fast\"\n\
                    [vmray]\nurl = \"ftp://x\"\ndefault_analyzer_mode = \"fast\"\n";
        let env = Env::from_pairs([("CROWDSTRIKE_CLIENT_ID", "id")]);
        let error = load_from_str(toml, &env).unwrap_err();
        let message = error.to_string();
        for key in [
            "general.time_span",
            "general.concurrency",
            "general.log_level",
            "general.bogus",
            "crowdstrike.lookback",
            "crowdstrike.rate_limit_per_minute",
            "crowdstrike.client_secret",
            "vmray.url",
            "vmray.default_analyzer_mode",
            "vmray.api_key",
        ] {
            assert!(message.contains(key), "{key} missing from: {message}");
        }
        assert!(
            matches!(error, ConfigError::Several(ref all) if all.len() == 10),
            "{message}"
        );
    }

    #[test]
    fn a_general_ca_bundle_that_is_not_pem_names_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let bundle = dir.path().join("proxy-ca.pem");
        std::fs::write(&bundle, "not a certificate").unwrap();
        let message = err(
            &format!("[general]\nca_bundle = \"{}\"\n", bundle.display()),
            &[],
        );
        assert!(message.contains("general.ca_bundle"), "{message}");
        assert!(message.contains("no PEM certificate"), "{message}");
        let good = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/test-ca.pem");
        let config = load_env(&format!("[general]\nca_bundle = \"{good}\"\n"), &[]).unwrap();
        assert_eq!(config.general.ca_bundle.as_deref(), Some(Path::new(good)));
    }

    #[test]
    fn a_ca_bundle_that_is_not_pem_names_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let bundle = dir.path().join("ca.pem");
        std::fs::write(&bundle, "not a certificate").unwrap();
        let message = err(
            &format!("[vmray]\nca_bundle = \"{}\"\n", bundle.display()),
            &[],
        );
        assert!(message.contains("vmray.ca_bundle"), "{message}");
        assert!(message.contains("no PEM certificate"), "{message}");
    }

    #[test]
    fn network_iocs_take_only_detect_or_no_action() {
        for action in ["prevent", "prevent_no_ui", "allow"] {
            let e = err(
                &format!("[crowdstrike]\nioc_network_action = \"{action}\""),
                &[],
            );
            assert!(e.contains("crowdstrike.ioc_network_action"), "{e}");
            assert!(e.contains(action) && e.contains("detect"), "{e}");
        }
        for action in ["detect", "no_action"] {
            load_env(
                &format!("[crowdstrike]\nioc_network_action = \"{action}\""),
                &[],
            )
            .unwrap();
        }
        for action in ["prevent", "prevent_no_ui", "detect", "allow", "no_action"] {
            load_env(
                &format!("[crowdstrike]\nioc_hash_action = \"{action}\""),
                &[],
            )
            .unwrap();
        }
    }

    #[test]
    fn a_bad_metrics_address_names_the_key() {
        let message = err("[metrics]\nlisten = \"localhost\"\n", &[]);
        assert!(message.contains("metrics.listen"), "{message}");
    }

    #[test]
    fn ioc_exclude_takes_domains_addresses_and_ranges_and_names_a_bad_entry() {
        let config = load_env(
            "[crowdstrike]\nioc_exclude = [\"corp.example\", \"10.0.0.0/8\", \"fd00::1\"]\n",
            &[],
        )
        .unwrap();
        assert_eq!(config.crowdstrike.ioc_exclude.len(), 3);
        assert_eq!(config.crowdstrike.ioc_network_expiration_days, 30);
        let message = err("[crowdstrike]\nioc_exclude = [\"10.0.0.0/40\"]\n", &[]);
        assert!(message.contains("crowdstrike.ioc_exclude"), "{message}");
        assert!(message.contains("10.0.0.0/40"), "{message}");
        let message = err("[crowdstrike]\nioc_exclude = [\"not a domain\"]\n", &[]);
        assert!(message.contains("crowdstrike.ioc_exclude"), "{message}");
        let message = err(
            "[crowdstrike]\nioc_network_expiration_days = 100000000\n",
            &[],
        );
        assert!(
            message.contains("crowdstrike.ioc_network_expiration_days"),
            "{message}"
        );
    }

    #[test]
    fn base_url_auto_and_bad_urls() {
        let c = load_env("[crowdstrike]\nbase_url = \"auto\"\n", &[]).unwrap();
        assert_eq!(c.crowdstrike.base_url(), crate::config::FalconBaseUrl::Auto);
        let message = err("[vmray]\nurl = \"eu.cloud.vmray.com\"\n", &[]);
        assert!(message.contains("vmray.url"), "{message}");
    }

    #[test]
    fn parse_errors_never_show_a_secret_value() {
        let cases = [
            // A missing closing quote: the parser quotes the line.
            "[crowdstrike]\nclient_secret = \"cs-Secret-9F2k\n",
            "[crowdstrike]\nclient_secret = 'cs-Secret-9F2k\n",
            "[vmray]\napi_key = vm-Key-7Hq3\n",
            "[vmray]\n\"api_key\" = \"vm-Key-7Hq3\" trailing\n",
            "vmray.api_key = \"vm-Key-7Hq3\nvmray.url = \"https://x\"\n",
            "[crowdstrike]\nclient_secret = \"cs-Secret-9F2k\"\nclient_secret = \"cs-Secret-9F2k\"\n",
        ];
        for toml in cases {
            let error = load_from_str(toml, &Env::default()).unwrap_err();
            for text in [error.to_string(), format!("{error:?}")] {
                assert!(text.contains("parse error at line"), "{text}");
                assert!(
                    !text.contains("cs-Secret-9F2k") && !text.contains("vm-Key-7Hq3"),
                    "{text}"
                );
                assert!(text.contains("********"), "{text}");
            }
        }
    }

    #[test]
    fn validation_errors_never_show_a_secret_value() {
        // The key pasted into the line above it, the secret into the URL, and a secret from
        // the environment (plain and as a file) typed into another key.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("key");
        std::fs::write(&file, "vm-File-Key-31\n").unwrap();
        let toml = "[crowdstrike]\nclient_secret = \"cs-Secret-9F2k\"\nbase_url = \"cs-Secret-9F2k\"\nclient_id = \"id\"\nuser_uuid = 7\n\
                    [vmray]\napi_key_type = \"vm-Env-Key-88\"\nurl = \"vm-File-Key-31\"\nconnector_name = [\"cs-Secret-9F2k\"]\n";
        let env = Env::from_pairs([
            ("CONNECTOR__VMRAY__API_KEY", "vm-Env-Key-88"),
            ("VMRAY_API_KEY_FILE", file.to_str().unwrap()),
        ]);
        let error = load_from_str(toml, &env);
        let error = error.unwrap_err();
        let text = error.to_string();
        for key in ["crowdstrike.base_url", "vmray.api_key_type", "vmray.url"] {
            assert!(text.contains(key), "{key}: {text}");
        }
        for secret in ["cs-Secret-9F2k", "vm-Env-Key-88", "vm-File-Key-31"] {
            assert!(!text.contains(secret), "{secret}: {text}");
            assert!(!format!("{error:?}").contains(secret), "{secret}");
        }
    }

    #[test]
    fn redaction_masks_only_secrets() {
        let secrets = vec!["s3cr3t-value".to_string()];
        assert_eq!(
            redact_text("2 | api_key = \"s3cr3t-va\n  |   ^\n", &secrets),
            "2 | api_key = \"********\"\n  |   ^\n"
        );
        assert_eq!(
            redact_text("url `s3cr3t-value` is bad; my_api_key_type = 1", &secrets),
            "url `********` is bad; my_api_key_type = 1"
        );
        assert_eq!(written_value(" 'abc' # note"), "abc");
        assert_eq!(written_value(" \"\"\"abc"), "abc");
        assert_eq!(written_value(" abc # note"), "abc");
        assert_eq!(secret_assignment("client_secret_file = 1"), None);
        assert_eq!(secret_assignment("x = { api_key = 1 }"), Some(15));
    }
}
