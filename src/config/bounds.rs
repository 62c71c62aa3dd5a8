//! The checks the loader makes beyond "does it parse": every number within its range, every
//! number and switch written as one in the file, and (for `check --offline`) what can be proven
//! on this machine without the network.
//!
//! To add a numeric key, add its line to [`RANGES`]: the loader then checks its type and its
//! range, and a unit test fails for any number in [`Config`] that has no line here. The ranges
//! are wide enough for any real deployment and narrow enough that no arithmetic on a value can
//! overflow (a year of look-back, ten years of IOC expiry).

use std::path::{Path, PathBuf};

use config::{Value, ValueKind};

use super::Config;
use super::load::ConfigError;

/// One numeric key and the values it accepts (both ends included).
pub(crate) struct Range {
    pub key: &'static str,
    pub min: u64,
    pub max: u64,
    /// What the number counts, for the error message ("seconds").
    pub unit: &'static str,
}

const fn range(key: &'static str, min: u64, max: u64, unit: &'static str) -> Range {
    Range {
        key,
        min,
        max,
        unit,
    }
}

const DAY: u64 = 86_400;
const GIB: u64 = 1024 * 1024 * 1024;

/// Every numeric key, with its range. Shown in the README's key table (its range column, which a
/// test compares with this list).
pub(crate) const RANGES: &[Range] = &[
    range("general.time_span", 1, 7 * DAY, "seconds"),
    range("general.concurrency", 1, 256, "samples"),
    range("general.lock_wait", 0, DAY, "seconds"),
    range("general.give_up_after", 1, 365 * DAY, "seconds"),
    range("crowdstrike.lookback", 0, 365 * DAY, "seconds"),
    range("crowdstrike.contain_max_per_cycle", 0, 10_000, "hosts"),
    range("crowdstrike.ioc_expiration_days", 0, 3650, "days"),
    range("crowdstrike.ioc_network_expiration_days", 0, 3650, "days"),
    range(
        "crowdstrike.rate_limit_per_minute",
        1,
        100_000,
        "requests per minute",
    ),
    range("crowdstrike.max_sample_bytes", 1, 8 * GIB, "bytes"),
    range("vmray.analysis_timeout", 1, DAY, "seconds"),
    range("vmray.analysis_job_timeout", 1, 7 * DAY, "seconds"),
    range("vmray.poll_interval", 1, 3600, "seconds"),
    range("vmray.resubmit_after_days", 0, 3650, "days"),
];

/// What kind of value a key holds, read from its default.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Number,
    Switch,
    Other,
}

fn kind_of(section: &str, key: &str, defaults: &serde_json::Value) -> Kind {
    match defaults.get(section).and_then(|s| s.get(key)) {
        Some(serde_json::Value::Number(_)) => Kind::Number,
        Some(serde_json::Value::Bool(_)) => Kind::Switch,
        _ => Kind::Other,
    }
}

/// Where a value came from: an environment variable carries only text, a TOML file has types.
fn from_environment(value: &Value) -> bool {
    value.origin() == Some("the environment")
}

/// Checks the raw values before they are converted: the `config` crate would round a float,
/// read `"60"` or `true` as a number and `"yes"` as a switch without a word. In the file a
/// number must be a TOML integer and a switch a TOML boolean; from the environment a number must
/// be digits only (and a switch `true` or `false`, which the switch's own parser checks). Each
/// key with a wrong value is removed from `tables`, so it is reported once.
pub(super) fn check_types(tables: &mut config::Map<String, Value>, errors: &mut Vec<ConfigError>) {
    let defaults = serde_json::to_value(Config::default()).expect("defaults serialise");
    for (section, table) in tables.iter_mut() {
        let ValueKind::Table(keys) = &mut table.kind else {
            continue;
        };
        let mut wrong = Vec::new();
        for (key, value) in keys.iter() {
            let name = format!("{section}.{key}");
            let problem = match (kind_of(section, key, &defaults), &value.kind) {
                (Kind::Number, ValueKind::I64(_) | ValueKind::U64(_)) => None,
                (Kind::Number, ValueKind::String(text)) if from_environment(value) => {
                    (!text.trim().bytes().all(|b| b.is_ascii_digit()) || text.trim().is_empty())
                        .then(|| format!("`{text}` is not a whole number (digits only)"))
                }
                (Kind::Number, ValueKind::Float(f)) => Some(format!(
                    "{f} is not a whole number: write it without a decimal point"
                )),
                (Kind::Number, ValueKind::String(text)) => Some(format!(
                    "\"{text}\" is text: write the number without quotes"
                )),
                (Kind::Number, ValueKind::Boolean(b)) => {
                    Some(format!("{b} is not a number: write a whole number"))
                }
                (Kind::Switch, ValueKind::String(text)) if !from_environment(value) => {
                    Some(format!(
                        "\"{text}\" is text, not one of: true, false (write it without quotes)"
                    ))
                }
                _ => None,
            };
            if let Some(message) = problem {
                errors.push(ConfigError::Invalid { key: name, message });
                wrong.push(key.clone());
            }
        }
        for key in wrong {
            keys.remove(&key);
        }
    }
}

/// Every number within its range.
pub(super) fn check_ranges(config: &Config, errors: &mut Vec<ConfigError>) {
    let values = serde_json::to_value(config).expect("settings serialise");
    for r in RANGES {
        let (section, key) = r.key.split_once('.').expect("section.key");
        let Some(value) = values
            .get(section)
            .and_then(|s| s.get(key))
            .and_then(serde_json::Value::as_u64)
        else {
            continue;
        };
        if value < r.min || value > r.max {
            errors.push(ConfigError::Invalid {
                key: r.key.into(),
                message: format!(
                    "{value} is out of range: use {} to {} {}",
                    r.min, r.max, r.unit
                ),
            });
        }
    }
}

/// Reads a PEM file of CA certificates; the error says what is wrong with it.
pub fn read_ca_bundle(path: &Path) -> Result<Vec<reqwest::Certificate>, String> {
    let pem = std::fs::read(path).map_err(|e| {
        format!(
            "{} cannot be read ({e}): point it at a PEM file of CA certificates",
            path.display()
        )
    })?;
    reqwest::Certificate::from_pem_bundle(&pem)
        .ok()
        .filter(|certs| !certs.is_empty())
        .ok_or_else(|| {
            format!(
                "{} holds no PEM certificate: point it at a PEM file of CA certificates (-----BEGIN CERTIFICATE-----)",
                path.display()
            )
        })
}

/// What `check --offline` (and every start) can prove without the network: the folders the
/// connector writes exist, or can be created, and this user may write in them. Returns every
/// problem, each naming its key.
pub fn check_folders(config: &Config) -> Vec<ConfigError> {
    let parent = |file: &Path| -> PathBuf {
        match file.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        }
    };
    let folders = [
        (
            "crowdstrike.download_dir",
            config.crowdstrike.download_dir.clone(),
        ),
        ("general.state_file", parent(&config.general.state_file)),
        ("general.log_file", parent(&config.general.log_file)),
    ];
    folders
        .into_iter()
        .filter_map(|(key, folder)| {
            writable(&folder).err().map(|message| ConfigError::Invalid {
                key: key.into(),
                message,
            })
        })
        .collect()
}

/// Whether this user can write in `folder`, or create it: a probe file in the folder (or in
/// its nearest existing ancestor), deleted at once.
fn writable(folder: &Path) -> Result<(), String> {
    let mut existing = folder;
    while !existing.exists() {
        match existing.parent() {
            Some(p) if !p.as_os_str().is_empty() => existing = p,
            _ => {
                existing = Path::new(".");
                break;
            }
        }
    }
    if !existing.is_dir() {
        return Err(format!(
            "{} is not a folder: point the key at a folder (or a file in one)",
            existing.display()
        ));
    }
    let what = if existing == folder {
        format!("the folder {}", folder.display())
    } else {
        format!(
            "{} does not exist and cannot be created: its parent {}",
            folder.display(),
            existing.display()
        )
    };
    tempfile::Builder::new()
        .prefix(".connector-write-probe-")
        .tempfile_in(existing)
        .map(drop)
        .map_err(|e| {
            format!(
                "{what} is not writable by this user ({e}): fix its owner or permissions, or choose another folder (the Docker image runs as UID:GID 10001:10001: chown the mounted folder to it, or run with --user and a folder you own)"
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_readme_key_table_shows_every_range_as_enforced() {
        let readme = include_str!("../../README.md");
        let header = readme
            .lines()
            .find(|l| l.starts_with("| key |"))
            .expect("the README has a key table");
        let columns: Vec<&str> = header.split('|').map(str::trim).collect();
        let range_column = columns
            .iter()
            .position(|c| *c == "range")
            .expect("the key table has a range column");
        for r in RANGES {
            let row = readme
                .lines()
                .find(|l| l.starts_with(&format!("| `{}` |", r.key)))
                .unwrap_or_else(|| panic!("{} has no row in the README's key table", r.key));
            let shown = row
                .split('|')
                .map(str::trim)
                .nth(range_column)
                .unwrap_or("");
            assert_eq!(
                shown,
                format!("{} to {} {}", r.min, r.max, r.unit),
                "README range of {}",
                r.key
            );
        }
        // And no range is shown for a key the loader does not bound.
        for row in readme.lines().filter(|l| l.starts_with("| `")) {
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            if !cells[range_column].is_empty() {
                let key = cells[1].trim_matches('`');
                assert!(
                    RANGES.iter().any(|r| r.key == key),
                    "{key} shows a range the loader does not check"
                );
            }
        }
    }

    #[test]
    fn every_number_in_the_config_has_a_range_and_its_default_is_inside() {
        let defaults = serde_json::to_value(Config::default()).unwrap();
        for (section, keys) in defaults.as_object().unwrap() {
            for (key, value) in keys.as_object().unwrap() {
                let name = format!("{section}.{key}");
                if let Some(n) = value.as_u64() {
                    let r = RANGES.iter().find(|r| r.key == name);
                    let r = r.unwrap_or_else(|| panic!("{name} has no line in RANGES"));
                    assert!(
                        r.min <= n && n <= r.max,
                        "{name}'s default {n} is out of range"
                    );
                }
            }
        }
        for r in RANGES {
            let (section, key) = r.key.split_once('.').unwrap();
            assert!(
                defaults.get(section).and_then(|s| s.get(key)).is_some(),
                "{} in RANGES is not a config key",
                r.key
            );
        }
    }

    #[test]
    fn a_folder_this_user_cannot_write_is_named_with_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain-file");
        std::fs::write(&file, "x").unwrap();
        let mut config = Config::default();
        config.crowdstrike.download_dir = dir.path().join("downloads");
        config.general.state_file = dir.path().join("state/connector.db");
        // A file where a folder should be: not writable as a folder whoever runs the test.
        config.general.log_file = file.join("connector.log");
        let errors = check_folders(&config);
        assert_eq!(errors.len(), 1, "{errors:?}");
        let message = errors[0].to_string();
        assert!(message.contains("general.log_file"), "{message}");
        assert!(message.contains("plain-file"), "{message}");
        assert!(
            !dir.path().join("downloads").exists(),
            "the check created a folder"
        );
    }

    #[test]
    fn a_bad_pem_file_is_refused_and_a_good_one_read() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.pem");
        std::fs::write(&bad, "not a certificate").unwrap();
        let message = read_ca_bundle(&bad).unwrap_err();
        assert!(message.contains("no PEM certificate"), "{message}");
        assert!(read_ca_bundle(&dir.path().join("missing.pem")).is_err());
    }
}
