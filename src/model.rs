//! The connector's vocabulary: the types every step of the pipeline shares.
//!
//! Values are parsed once at the edge (an API response, a config file) into these types, so the
//! rest of the program never handles a hash that is not a hash or a verdict it does not know.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use time::OffsetDateTime;

use serde::{Deserialize, Serialize};

/// A SHA-256 digest as 64 lowercase hex characters. Parsing accepts uppercase and lowercases it,
/// so two spellings of one hash are always equal.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Sha256(String);

/// A string that is not a SHA-256 digest.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("`{0}` is not a SHA-256 hash (64 hex characters)")]
pub struct InvalidSha256(pub String);

impl Sha256 {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Builds the hash from the raw 32-byte digest a hasher returns.
    pub fn from_digest(digest: &[u8]) -> Self {
        Sha256(hex::encode(digest))
    }
}

impl FromStr for Sha256 {
    type Err = InvalidSha256;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let trimmed = s.trim();
        if trimmed.len() == 64 && trimmed.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(Sha256(trimmed.to_ascii_lowercase()))
        } else {
            Err(InvalidSha256(s.to_string()))
        }
    }
}

impl<'de> Deserialize<'de> for Sha256 {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        raw.parse().map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256({})", self.0)
    }
}

/// VMRay's judgement of a sample.
///
/// In the config only the first three are meaningful levels; `NotAvailable` and `Unknown` arise
/// only from VMRay answers (a `null` verdict, an analysis without one, a string this version of
/// the connector has never seen) and are never acted on as if they were a real verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Verdict {
    Malicious,
    Suspicious,
    Clean,
    NotAvailable,
    Unknown,
}

impl Serialize for Verdict {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// Deserialising is for config levels: only the three real verdicts, in any case.
impl<'de> Deserialize<'de> for Verdict {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        match Verdict::from_vmray(Some(&raw)) {
            v @ (Verdict::Malicious | Verdict::Suspicious | Verdict::Clean) => Ok(v),
            _ => Err(serde::de::Error::custom(format!(
                "`{raw}` is not one of: malicious, suspicious, clean"
            ))),
        }
    }
}

impl Verdict {
    /// Maps a verdict string as VMRay sends it. `None` (JSON `null`) and `not_available` mean no
    /// verdict; anything unrecognised is `Unknown`, never an error, so a new VMRay release cannot
    /// crash the connector.
    pub fn from_vmray(raw: Option<&str>) -> Self {
        match raw.map(|s| s.trim().to_ascii_lowercase()).as_deref() {
            Some("malicious") => Verdict::Malicious,
            Some("suspicious") => Verdict::Suspicious,
            Some("clean") => Verdict::Clean,
            None | Some("not_available") | Some("") => Verdict::NotAvailable,
            Some(_) => Verdict::Unknown,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Malicious => "malicious",
            Verdict::Suspicious => "suspicious",
            Verdict::Clean => "clean",
            Verdict::NotAvailable => "not_available",
            Verdict::Unknown => "unknown",
        }
    }

    /// Whether VMRay judged the sample (malicious, suspicious or clean): what the connector acts
    /// on, whatever went wrong in the analyses behind it.
    pub fn is_judgement(self) -> bool {
        matches!(
            self,
            Verdict::Malicious | Verdict::Suspicious | Verdict::Clean
        )
    }

    /// The capitalised form used in comments written to Falcon.
    pub fn title(self) -> &'static str {
        match self {
            Verdict::Malicious => "Malicious",
            Verdict::Suspicious => "Suspicious",
            Verdict::Clean => "Clean",
            Verdict::NotAvailable => "Not available",
            Verdict::Unknown => "Unknown",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One file of one Falcon alert: the alert's own file or a file it quarantined. An alert with
/// several hashes yields one evidence per hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertEvidence {
    /// The composite id the Alerts API updates by.
    pub composite_id: String,
    pub sha256: Sha256,
    pub filename: Option<String>,
    pub filepath: Option<String>,
    pub device_id: Option<String>,
    pub hostname: Option<String>,
    /// `Windows`, `Mac` or `Linux` as Falcon names them.
    pub platform: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub created: Option<OffsetDateTime>,
    /// `new`, `in_progress`, `reopened`, `closed` (kept as text: Falcon may add values).
    pub status: String,
    pub tags: Vec<String>,
    /// How many distinct files the alert carries (its own and the ones it quarantined). An
    /// alert with several is evidence for several hashes, and one clean verdict must not
    /// close it.
    #[serde(default = "one")]
    pub files_in_alert: usize,
    /// Falcon's 0-100 severity: a case takes the most severe alerts when there are too many.
    #[serde(default)]
    pub severity: u8,
    /// Falcon judged this file itself (machine learning, known malware, an intelligence hash,
    /// or it quarantined the file), so a clean verdict answers the alert. False for behaviour
    /// alerts (IOA, custom IOA, OverWatch), whose hash is only the image of the process that
    /// behaved, and for alerts that do not say (evidence saved by an older version).
    #[serde(default)]
    pub about_file: bool,
}

fn one() -> usize {
    1
}

/// One quarantine record: one file quarantined on one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuarantineEvidence {
    /// `<aid>_<sha256>`.
    pub id: String,
    pub sha256: Sha256,
    pub device_id: Option<String>,
    pub hostname: Option<String>,
    pub filename: Option<String>,
    pub path: Option<String>,
    /// `quarantined`, `released`, ... (kept as text).
    pub state: String,
    #[serde(with = "time::serde::rfc3339::option")]
    pub created: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub updated: Option<OffsetDateTime>,
}

/// A Falcon host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    pub device_id: String,
    pub hostname: Option<String>,
    pub platform: Option<String>,
    /// `normal`, `containment_pending`, `contained`, `lift_containment_pending`.
    pub status: Option<String>,
}

/// Everything VMRay reported about a sample's indicators, for the verdicts asked for, sorted and
/// without duplicates.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IocSet {
    /// Files the sample dropped or touched (files classified Ransomware left out, as the
    /// original did).
    pub sha256s: BTreeSet<Sha256>,
    pub filenames: BTreeSet<String>,
    pub ipv4: BTreeSet<Ipv4Addr>,
    pub ipv6: BTreeSet<Ipv6Addr>,
    pub domains: BTreeSet<String>,
    pub command_lines: BTreeSet<String>,
    pub image_names: BTreeSet<String>,
    pub registry_keys: BTreeSet<String>,
    pub classifications: BTreeSet<String>,
    pub threat_names: BTreeSet<String>,
}

/// A VMRay Threat Indicator: one behaviour that contributed to the verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vti {
    pub category: String,
    pub operation: String,
    /// 1 (weak) to 5 (strong).
    pub score: u8,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_parses_lowercases_and_rejects_non_hashes() {
        let upper = "A".repeat(64);
        assert_eq!(upper.parse::<Sha256>().unwrap().as_str(), "a".repeat(64));
        assert!("abc".parse::<Sha256>().is_err());
        assert!("g".repeat(64).parse::<Sha256>().is_err());
        assert!(format!("../{}", "a".repeat(61)).parse::<Sha256>().is_err());
    }

    #[test]
    fn every_vmray_verdict_string_maps_without_failing() {
        assert_eq!(Verdict::from_vmray(Some("malicious")), Verdict::Malicious);
        assert_eq!(Verdict::from_vmray(Some("suspicious")), Verdict::Suspicious);
        assert_eq!(Verdict::from_vmray(Some("clean")), Verdict::Clean);
        assert_eq!(
            Verdict::from_vmray(Some("not_available")),
            Verdict::NotAvailable
        );
        assert_eq!(Verdict::from_vmray(None), Verdict::NotAvailable);
        assert_eq!(Verdict::from_vmray(Some("n/a")), Verdict::Unknown);
        assert_eq!(Verdict::from_vmray(Some("Malicious")), Verdict::Malicious);
    }
}
