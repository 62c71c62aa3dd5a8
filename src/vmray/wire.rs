//! VMRay's JSON shapes, decoded leniently: only the fields the connector reads, every list may be
//! `null` or absent, every enum-like value stays a string, and unknown fields are ignored, because
//! old appliances and new cloud releases disagree on all of these (reference §10).

use serde::{Deserialize, Deserializer};
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{OffsetDateTime, PrimitiveDateTime};

/// `{result, data, error_msg, continuation_id}` around every answer.
#[derive(Debug, Deserialize)]
pub(crate) struct Envelope {
    #[serde(default)]
    pub result: Option<String>,
    #[serde(default)]
    pub data: Option<serde_json::Value>,
    #[serde(default)]
    pub error_msg: Option<String>,
    #[serde(default, deserialize_with = "lenient_u64")]
    pub continuation_id: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(crate) struct SystemInfo {
    pub version: Option<String>,
    #[serde(deserialize_with = "lenient_u64")]
    pub webif_max_upload_size: Option<u64>,
    #[serde(deserialize_with = "lenient_u64")]
    pub webif_max_sample_size: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(crate) struct Sample {
    #[serde(deserialize_with = "lenient_u64")]
    pub sample_id: Option<u64>,
    pub sample_sha256hash: Option<String>,
    pub sample_verdict: Option<String>,
    #[serde(deserialize_with = "lenient_u64")]
    pub sample_vti_score: Option<u64>,
    pub sample_severity: Option<String>,
    pub sample_webif_url: Option<String>,
    #[serde(deserialize_with = "null_as_empty")]
    pub sample_classifications: Vec<String>,
    #[serde(deserialize_with = "null_as_empty")]
    pub sample_threat_names: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(crate) struct SubmitResult {
    #[serde(deserialize_with = "null_as_empty")]
    pub errors: Vec<SubmitError>,
    #[serde(deserialize_with = "null_as_empty")]
    pub samples: Vec<Sample>,
    #[serde(deserialize_with = "null_as_empty")]
    pub submissions: Vec<Submission>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(crate) struct SubmitError {
    pub error_msg: Option<String>,
    pub submission_filename: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(crate) struct Submission {
    #[serde(deserialize_with = "lenient_u64")]
    pub submission_id: Option<u64>,
    #[serde(deserialize_with = "lenient_u64")]
    pub submission_sample_id: Option<u64>,
    pub submission_finished: Option<bool>,
    pub submission_status: Option<String>,
    pub submission_has_errors: Option<bool>,
    pub submission_verdict: Option<String>,
    pub submission_created: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(crate) struct Analysis {
    #[serde(deserialize_with = "lenient_u64")]
    pub analysis_id: Option<u64>,
    #[serde(deserialize_with = "lenient_i64")]
    pub analysis_result_code: Option<i64>,
    pub analysis_result_str: Option<String>,
    pub analysis_severity: Option<String>,
    pub analysis_verdict: Option<String>,
    pub analysis_created: Option<String>,
}

/// `data` of `/rest/sample/<id>/iocs/verdict/<v>`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(crate) struct IocReport {
    pub status: Option<String>,
    #[serde(deserialize_with = "null_as_default")]
    pub iocs: Iocs,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(crate) struct Iocs {
    #[serde(deserialize_with = "null_as_empty")]
    pub domains: Vec<DomainIoc>,
    #[serde(deserialize_with = "null_as_empty")]
    pub filenames: Vec<FilenameIoc>,
    #[serde(deserialize_with = "null_as_empty")]
    pub files: Vec<FileIoc>,
    #[serde(deserialize_with = "null_as_empty")]
    pub ips: Vec<IpIoc>,
    #[serde(deserialize_with = "null_as_empty")]
    pub processes: Vec<ProcessIoc>,
    #[serde(deserialize_with = "null_as_empty")]
    pub registry: Vec<RegistryIoc>,
    #[serde(deserialize_with = "null_as_empty")]
    pub urls: Vec<UrlIoc>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(crate) struct DomainIoc {
    pub verdict: Option<String>,
    pub domain: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(crate) struct FilenameIoc {
    pub verdict: Option<String>,
    pub filename: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(crate) struct FileIoc {
    pub verdict: Option<String>,
    #[serde(deserialize_with = "null_as_empty")]
    pub categories: Vec<String>,
    #[serde(deserialize_with = "null_as_empty")]
    pub classifications: Vec<String>,
    #[serde(deserialize_with = "null_as_empty")]
    pub threat_names: Vec<String>,
    #[serde(deserialize_with = "null_as_empty")]
    pub filenames: Vec<String>,
    #[serde(deserialize_with = "null_as_empty")]
    pub hashes: Vec<FileHashes>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(crate) struct FileHashes {
    pub sha256_hash: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(crate) struct IpIoc {
    pub verdict: Option<String>,
    pub ip_address: Option<String>,
    #[serde(deserialize_with = "null_as_empty")]
    pub domains: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(crate) struct ProcessIoc {
    pub verdict: Option<String>,
    pub cmd_line: Option<String>,
    #[serde(deserialize_with = "null_as_empty")]
    pub image_names: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(crate) struct RegistryIoc {
    pub verdict: Option<String>,
    pub reg_key_name: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(crate) struct UrlIoc {
    pub verdict: Option<String>,
    pub url: Option<String>,
    #[serde(deserialize_with = "null_as_empty")]
    pub original_urls: Vec<String>,
    #[serde(deserialize_with = "null_as_empty")]
    pub ip_addresses: Vec<String>,
}

/// `data` of `/rest/sample/<id>/vtis`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(crate) struct VtiReport {
    pub status: Option<String>,
    #[serde(deserialize_with = "null_as_empty")]
    pub threat_indicators: Vec<ThreatIndicator>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(crate) struct ThreatIndicator {
    pub category: Option<String>,
    pub operation: Option<String>,
    #[serde(deserialize_with = "lenient_i64")]
    pub score: Option<i64>,
}

/// A list that VMRay may send as `null`: read as empty. Items that do not fit the model are an
/// error of the whole document, which is what a Decode error reports.
fn null_as_empty<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// An integer that may arrive as a number, a numeric string, or anything else (read as absent):
/// one recorded `sample_vti_score` was the string `"malicious"`.
fn lenient_i64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::Number(n) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.is_finite()).map(|f| f as i64)),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    })
}

fn lenient_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    Ok(lenient_i64(d)?.and_then(|n| u64::try_from(n).ok()))
}

/// VMRay writes timestamps without a zone (`2024-04-23T08:14:52`); they are read as UTC. A value
/// with an offset is honoured, anything unreadable is `None`.
pub(crate) fn parse_timestamp(raw: &str) -> Option<OffsetDateTime> {
    let raw = raw.trim();
    if let Ok(t) = OffsetDateTime::parse(raw, &Rfc3339) {
        return Some(t);
    }
    let naive = format_description!(
        "[year]-[month]-[day][first [T][ ]][hour]:[minute]:[second][optional [.[subsecond]]]"
    );
    PrimitiveDateTime::parse(raw, naive)
        .ok()
        .map(PrimitiveDateTime::assume_utc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn naive_timestamps_are_read_as_utc_and_offsets_are_honoured() {
        let t = parse_timestamp("2024-04-23T08:14:52").unwrap();
        assert_eq!(t.unix_timestamp(), 1_713_860_092);
        assert_eq!(
            parse_timestamp("2024-04-23 08:14:52.250")
                .unwrap()
                .unix_timestamp(),
            1_713_860_092
        );
        let offset = parse_timestamp("2024-04-23T10:14:52+02:00").unwrap();
        assert_eq!(offset.unix_timestamp(), 1_713_860_092);
        assert_eq!(parse_timestamp("yesterday"), None);
    }

    #[test]
    fn scores_accept_numbers_numeric_strings_and_junk() {
        let s: Sample = serde_json::from_str(r#"{"sample_vti_score": "87"}"#).unwrap();
        assert_eq!(s.sample_vti_score, Some(87));
        let s: Sample = serde_json::from_str(r#"{"sample_vti_score": "malicious"}"#).unwrap();
        assert_eq!(s.sample_vti_score, None);
        let s: Sample = serde_json::from_str(r#"{"sample_vti_score": null}"#).unwrap();
        assert_eq!(s.sample_vti_score, None);
        let s: Sample = serde_json::from_str(r#"{"sample_vti_score": -3}"#).unwrap();
        assert_eq!(s.sample_vti_score, None);
    }

    #[test]
    fn null_lists_read_as_empty() {
        let s: Sample = serde_json::from_str(
            r#"{"sample_classifications": null, "sample_threat_names": null, "sample_id": 1}"#,
        )
        .unwrap();
        assert!(s.sample_classifications.is_empty() && s.sample_threat_names.is_empty());
        let f: FileIoc = serde_json::from_str(r#"{"filenames": null, "hashes": null}"#).unwrap();
        assert!(f.filenames.is_empty() && f.hashes.is_empty());
    }
}
