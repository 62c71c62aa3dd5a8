//! A sample's indicators, read once per selected verdict and parsed into one [`IocSet`].
//!
//! The rules, item by item (each item is kept only when its own `verdict` is one asked for; an
//! item without a verdict never is):
//! - files: every `hashes[].sha256_hash` and every name in `filenames`, except files classified
//!   `Ransomware` (the original connector's rule: their hashes and names are left out, their
//!   classifications and threat names are kept) and except the hash of the sample itself
//!   (category `Sample File`): Falcon already has that one, and except memory dumps (category
//!   `Memory Dump` alone): they never exist on disk. Classifications and threat names
//!   come from files, as in the original.
//! - filename items: their `filename`.
//! - IP items: `ip_address` into IPv4 or IPv6, their `domains[]` into the domains.
//! - domain items: `domain`.
//! - URL items: `ip_addresses[]`, and the host of `url` and of every `original_urls[]`: an IP
//!   literal goes to the addresses, a name to the domains, a port is dropped, an empty host too.
//! - processes: `cmd_line` and `image_names[]`.
//! - registry items: `reg_key_name`.
//!
//! Domains are lower-cased and lose a trailing dot; empty strings are never kept.

use std::net::IpAddr;

use super::wire::{self, IocReport};
use super::{VmrayClient, VmrayError, real_verdicts};
use crate::model::{IocSet, Sha256, Verdict};

/// The category VMRay gives the submitted file itself.
const SAMPLE_FILE: &str = "Sample File";
/// The category of a file VMRay cut out of a process's memory.
const MEMORY_DUMP: &str = "Memory Dump";

impl VmrayClient {
    /// IOCs for these verdicts (one call per verdict; `not_available`/`unknown` are never asked).
    pub async fn iocs(&self, sample_id: u64, verdicts: &[Verdict]) -> Result<IocSet, VmrayError> {
        let wanted = real_verdicts(verdicts);
        let mut reports = Vec::with_capacity(wanted.len());
        for verdict in &wanted {
            let what = format!("{verdict} IOCs of sample {sample_id}");
            let report: IocReport = self
                .get_data(
                    &format!("/rest/sample/{sample_id}/iocs/verdict/{verdict}"),
                    &[],
                    &what,
                )
                .await?;
            if report.status.as_deref().is_some_and(|s| s != "finished") {
                tracing::warn!(sample_id, %verdict, status = ?report.status,
                    "VMRay has not finished aggregating the IOCs; the list may be incomplete");
            }
            reports.push(report);
        }
        Ok(parse_iocs(&reports, &wanted))
    }
}

/// Parses IOC reports (the `data` of `/iocs/verdict/<v>` answers, or of an unfiltered `/iocs`)
/// into one set, keeping only items whose verdict is in `verdicts`.
pub(crate) fn parse_iocs(reports: &[IocReport], verdicts: &[Verdict]) -> IocSet {
    let wanted = |raw: &Option<String>| {
        raw.is_some() && verdicts.contains(&Verdict::from_vmray(raw.as_deref()))
    };
    let mut set = IocSet::default();
    for report in reports {
        let iocs = &report.iocs;
        for file in iocs.files.iter().filter(|f| wanted(&f.verdict)) {
            add_file(&mut set, file);
        }
        for item in iocs.filenames.iter().filter(|f| wanted(&f.verdict)) {
            add_text(&mut set.filenames, item.filename.as_deref());
        }
        for ip in iocs.ips.iter().filter(|i| wanted(&i.verdict)) {
            if let Some(address) = ip.ip_address.as_deref() {
                add_host(&mut set, address);
            }
            for domain in &ip.domains {
                add_host(&mut set, domain);
            }
        }
        for domain in iocs.domains.iter().filter(|d| wanted(&d.verdict)) {
            if let Some(name) = domain.domain.as_deref() {
                add_host(&mut set, name);
            }
        }
        for url in iocs.urls.iter().filter(|u| wanted(&u.verdict)) {
            for address in &url.ip_addresses {
                add_address(&mut set, address);
            }
            for raw in url.url.iter().chain(&url.original_urls) {
                if let Some(host) = url_host(raw) {
                    add_host(&mut set, &host);
                }
            }
        }
        for process in iocs.processes.iter().filter(|p| wanted(&p.verdict)) {
            add_text(&mut set.command_lines, process.cmd_line.as_deref());
            for image in &process.image_names {
                add_text(&mut set.image_names, Some(image));
            }
        }
        for key in iocs.registry.iter().filter(|r| wanted(&r.verdict)) {
            add_text(&mut set.registry_keys, key.reg_key_name.as_deref());
        }
    }
    set
}

fn add_file(set: &mut IocSet, file: &wire::FileIoc) {
    for name in &file.classifications {
        add_text(&mut set.classifications, Some(name));
    }
    for name in &file.threat_names {
        add_text(&mut set.threat_names, Some(name));
    }
    if file
        .classifications
        .iter()
        .any(|c| c.eq_ignore_ascii_case("ransomware"))
    {
        return;
    }
    for name in &file.filenames {
        add_text(&mut set.filenames, Some(name));
    }
    if file.categories.iter().any(|c| c == SAMPLE_FILE) {
        return;
    }
    // A memory dump is a region of a process's memory VMRay saved: that file never exists on
    // any disk, so a hash IOC on it would never match. A dump of a file also dropped is kept.
    if !file.categories.is_empty() && file.categories.iter().all(|c| c == MEMORY_DUMP) {
        return;
    }
    for hashes in &file.hashes {
        if let Some(hash) = hashes
            .sha256_hash
            .as_deref()
            .and_then(|h| h.parse::<Sha256>().ok())
        {
            set.sha256s.insert(hash);
        }
    }
}

fn add_text(target: &mut std::collections::BTreeSet<String>, value: Option<&str>) {
    if let Some(value) = value.map(str::trim).filter(|v| !v.is_empty()) {
        target.insert(value.to_string());
    }
}

/// An address, or a name: whichever the text is.
fn add_host(set: &mut IocSet, host: &str) {
    let host = host.trim().trim_end_matches('.');
    if host.is_empty() {
        return;
    }
    if !add_address(set, host) {
        set.domains.insert(host.to_ascii_lowercase());
    }
}

/// Adds an IP address (IPv6 may come in brackets); false when the text is not one.
fn add_address(set: &mut IocSet, text: &str) -> bool {
    let bare = text.trim().trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<IpAddr>() {
        Ok(IpAddr::V4(v4)) => set.ipv4.insert(v4),
        Ok(IpAddr::V6(v6)) => set.ipv6.insert(v6),
        Err(_) => return false,
    };
    true
}

/// The host of a URL without port or credentials; a URL without scheme is read as `http://`.
fn url_host(raw: &str) -> Option<String> {
    let raw = raw.trim();
    if raw.is_empty() {
        return None;
    }
    let parsed = if raw.contains("://") {
        reqwest::Url::parse(raw).ok()?
    } else {
        reqwest::Url::parse(&format!("http://{raw}")).ok()?
    };
    // IPv6 literals keep their brackets here; `add_host` removes them.
    let host = parsed.host_str()?;
    (!host.is_empty()).then(|| host.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_hosts_lose_ports_and_keep_ip_literals_apart() {
        assert_eq!(
            url_host("http://198.51.100.23:8080/gate.php").as_deref(),
            Some("198.51.100.23")
        );
        assert_eq!(
            url_host("https://Update-Check.example:443/x").as_deref(),
            Some("update-check.example")
        );
        assert_eq!(
            url_host("http://[2001:db8::1]:8443/").as_deref(),
            Some("[2001:db8::1]")
        );
        assert_eq!(
            url_host("evil.example/path").as_deref(),
            Some("evil.example")
        );
        assert_eq!(url_host(""), None);
        assert_eq!(url_host("http://"), None);
        assert_eq!(url_host("file:///etc/passwd"), None);
    }

    #[test]
    fn null_lists_and_fields_are_empty_not_errors() {
        let report: IocReport = serde_json::from_str(
            r#"{"status": "finished", "iocs": {"files": [{"verdict": "malicious", "filenames": null,
                "hashes": null, "classifications": null}], "ips": null, "urls": [{"verdict": "malicious",
                "url": null, "original_urls": null, "ip_addresses": null}],
                "processes": [{"verdict": "malicious", "cmd_line": null, "image_names": null}],
                "registry": [{"verdict": "malicious", "reg_key_name": null}]}}"#,
        )
        .unwrap();
        assert_eq!(
            parse_iocs(&[report], &[Verdict::Malicious]),
            IocSet::default()
        );
        let empty: IocReport =
            serde_json::from_str(r#"{"status": "finished", "iocs": null}"#).unwrap();
        assert_eq!(
            parse_iocs(&[empty], &[Verdict::Malicious]),
            IocSet::default()
        );
    }

    #[test]
    fn items_of_other_verdicts_and_without_verdict_are_skipped() {
        let report: IocReport = serde_json::from_str(
            r#"{"iocs": {"domains": [{"verdict": "clean", "domain": "a.example"},
                {"verdict": null, "domain": "b.example"}, {"domain": "c.example"},
                {"verdict": "Malicious", "domain": "D.example."}]}}"#,
        )
        .unwrap();
        let set = parse_iocs(&[report], &[Verdict::Malicious]);
        assert_eq!(set.domains.into_iter().collect::<Vec<_>>(), ["d.example"]);
    }
}
