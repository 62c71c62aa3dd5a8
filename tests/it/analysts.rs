//! What the connector changes in Falcon, and what it leaves to analysts: clean verdicts on
//! behaviour alerts, quarantine records someone released, old alerts edited in bulk, hosts
//! already contained, and IOCs that would only make noise.

use std::collections::BTreeMap;
use std::time::Duration;

use falcon_vmray_connector::sim::scenario::{IocDomain, IocFile, IocIp};
use falcon_vmray_connector::sim::{Scenario, TenantSnapshot};
use tokio_util::sync::CancellationToken;

use crate::support::Tenant;
use crate::support::scenario::{self, alert, device, file, hosts, quarantine};

/// Containment requests per device.
fn contain_requests(t: &TenantSnapshot) -> BTreeMap<String, usize> {
    let mut per_host = BTreeMap::new();
    for request in t
        .containment_requests
        .iter()
        .filter(|r| r.action == "contain")
    {
        for device in &request.device_ids {
            *per_host.entry(device.clone()).or_default() += 1;
        }
    }
    per_host
}

#[tokio::test]
async fn a_clean_verdict_closes_file_alerts_and_only_comments_behaviour_alerts() {
    let kinds = [
        "ml",
        "known_malware",
        "intel",
        "ioa",
        "custom_ioa",
        "overwatch",
    ];
    let mut scenario = Scenario {
        hosts: hosts(kinds.len()),
        files: vec![file(1, "clean", true)],
        ..Scenario::default()
    };
    for (n, kind) in kinds.iter().enumerate() {
        let mut a = alert(0, n);
        a.detection = kind.to_string();
        scenario.alerts.push(a);
    }
    let tenant = Tenant::start(scenario).await;
    let config = tenant.config("", "", "");
    let report = tenant.cycle(&config).await;
    assert!(report.failed.is_empty(), "{}", report.summary());

    let t = tenant.sim.snapshot();
    let status: BTreeMap<&str, &str> = t
        .alerts
        .iter()
        .map(|a| (a.detection.as_str(), a.status.as_str()))
        .collect();
    let expected: BTreeMap<&str, &str> = [
        ("ml", "closed"),
        ("known_malware", "closed"),
        ("intel", "closed"),
        ("ioa", "new"),
        ("custom_ioa", "new"),
        ("overwatch", "new"),
    ]
    .into_iter()
    .collect();
    assert_eq!(status, expected);
    for a in &t.alerts {
        assert_eq!(
            a.comments.len(),
            1,
            "{}: every alert gets the verdict",
            a.detection
        );
        assert!(a.comments[0].starts_with("[VMRay] Verdict: Clean"));
    }
    assert!(
        report
            .notes
            .iter()
            .filter(|n| n.contains("behaviour"))
            .count()
            == 3,
        "{:?}",
        report.notes
    );
}

#[tokio::test]
async fn released_records_are_never_unreleased_and_no_longer_quarantined_ones_never_released() {
    let mut scenario = Scenario {
        hosts: hosts(4),
        files: vec![file(1, "malicious", true), file(2, "clean", true)],
        ..Scenario::default()
    };
    // Host 0: still quarantined. Host 1: an analyst released it after it was quarantined.
    for file in [0, 1] {
        scenario.quarantines.push(quarantine(file, 0));
        let mut released = quarantine(file, 1);
        released.state = "released".into();
        released.updated_ago_secs = 100;
        scenario.quarantines.push(released);
    }
    let tenant = Tenant::start(scenario).await;
    let config = tenant.config("", "", "");
    let report = tenant.cycle(&config).await;
    assert!(report.failed.is_empty(), "{}", report.summary());

    let t = tenant.sim.snapshot();
    let actions: BTreeMap<(String, String), Vec<String>> = t
        .quarantines
        .iter()
        .map(|q| {
            (
                (q.sha256[..4].to_string(), q.aid.clone()),
                q.actions.iter().map(|a| a.action.clone()).collect(),
            )
        })
        .collect();
    let malicious = &t.quarantines[0].sha256[..4];
    let clean = &t.quarantines[2].sha256[..4];
    let expected: BTreeMap<(String, String), Vec<String>> = [
        ((malicious, device(0)), vec!["unrelease"]),
        ((malicious, device(1)), vec![]),
        ((clean, device(0)), vec!["release"]),
        ((clean, device(1)), vec![]),
    ]
    .into_iter()
    .map(|((sha, aid), list)| {
        (
            (sha.to_string(), aid),
            list.into_iter().map(String::from).collect(),
        )
    })
    .collect();
    assert_eq!(actions, expected);
    assert!(
        t.quarantines
            .iter()
            .all(|q| q.aid != device(1) || q.state == "released")
    );
}

/// The record was read when the sample was collected; an analyst released it while VMRay
/// analysed the sample. The connector reads it back and leaves it released.
#[tokio::test]
async fn a_record_released_during_the_analysis_is_read_back_and_left_released() {
    let mut scenario = Scenario {
        hosts: hosts(1),
        files: vec![file(1, "malicious", false)],
        quarantines: vec![quarantine(0, 0)],
        ..Scenario::default()
    };
    scenario.files[0].detonation.duration_ms = 1500;
    let tenant = Tenant::start(scenario).await;
    let config = tenant.config("", "", "");
    let connector = falcon_vmray_connector::pipeline::Connector::new(config).unwrap();
    let cycle = tokio::spawn(async move { connector.run_cycle(&CancellationToken::new()).await });
    let started = std::time::Instant::now();
    while tenant.sim.snapshot().submissions.is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "never submitted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tenant.sim.edit(|w| {
        let q = &mut w.quarantines[0];
        q.state = "released".into();
        q.date_updated = time::OffsetDateTime::now_utc();
    });
    let report = cycle.await.unwrap().unwrap();
    assert!(report.failed.is_empty(), "{}", report.summary());
    let t = tenant.sim.snapshot();
    assert_eq!(t.quarantines[0].state, "released");
    assert!(
        t.quarantines[0].actions.is_empty(),
        "{:?}",
        t.quarantines[0].actions
    );
    assert!(
        report.notes.iter().any(|n| n.contains("`released`")),
        "{:?}",
        report.notes
    );
    assert_eq!(t.alerts.len(), 0);
}

#[tokio::test]
async fn bulk_edited_old_alerts_and_the_connectors_own_write_backs_do_not_come_back() {
    let mut scenario = Scenario {
        hosts: hosts(2),
        files: vec![file(1, "malicious", false), file(2, "malicious", false)],
        ..Scenario::default()
    };
    // File 0: an alert and a record from two days ago that an analyst edited just now.
    let mut old = alert(0, 0);
    (old.created_ago_secs, old.updated_ago_secs) = (172_800, 10);
    scenario.alerts.push(old);
    let mut old = quarantine(0, 1);
    (old.created_ago_secs, old.updated_ago_secs) = (172_800, 10);
    scenario.quarantines.push(old);
    // File 1: new enough for the first cycle, older than the overlap of the second.
    let mut recent = alert(1, 0);
    (recent.created_ago_secs, recent.updated_ago_secs) = (900, 900);
    scenario.alerts.push(recent);
    let mut recent = quarantine(1, 1);
    (recent.created_ago_secs, recent.updated_ago_secs) = (900, 900);
    scenario.quarantines.push(recent);
    let tenant = Tenant::start(scenario).await;
    let config = tenant.config("", "", "");

    let report = tenant.cycle(&config).await;
    assert_eq!(
        (report.alerts, report.quarantine_records, report.submitted),
        (1, 1, 1),
        "the old file is not submitted again: {}",
        report.summary()
    );
    let t = tenant.sim.snapshot();
    assert_eq!(t.submissions.len(), 1);
    let recent = tenant.sim.edit(|w| w.files[1].sha256.clone());
    assert_eq!(t.submissions[0].sha256, recent);
    // The write-backs just moved the alert's and the record's update times.
    assert_eq!(t.alerts[1].comments.len(), 1);

    let report = tenant.cycle(&config).await;
    assert_eq!(
        (report.alerts, report.quarantine_records, report.hashes),
        (0, 0, 0),
        "{}",
        report.summary()
    );
    let t = tenant.sim.snapshot();
    let queries: Vec<&str> = t
        .requests
        .iter()
        .filter(|r| r.path.starts_with("/quarantine/queries"))
        .map(|r| r.path.as_str())
        .collect();
    assert!(
        queries
            .iter()
            .all(|q| q.contains("date_created") && !q.contains("date_updated")),
        "{queries:?}"
    );
}

#[tokio::test]
async fn each_host_is_asked_to_contain_once_and_a_contained_host_never() {
    // Four harmful samples on hosts 0 and 1; host 2, already contained, ran the first.
    let mut scenario = Scenario {
        hosts: hosts(3),
        files: (1..=4).map(|n| file(n, "malicious", true)).collect(),
        ..Scenario::default()
    };
    scenario.hosts[2].status = "contained".into();
    for n in 0..4 {
        scenario.alerts.push(alert(n, 0));
        scenario.quarantines.push(quarantine(n, 1));
    }
    scenario.alerts.push(alert(0, 2));
    let tenant = Tenant::start(scenario).await;
    let config = tenant.config("", "contain_host = true", "");
    let report = tenant.cycle(&config).await;
    assert!(report.failed.is_empty(), "{}", report.summary());

    let t = tenant.sim.snapshot();
    let per_host = contain_requests(&t);
    println!("contain requests per host: {per_host:?}");
    let expected: BTreeMap<String, usize> = [(device(0), 1), (device(1), 1)].into_iter().collect();
    assert_eq!(
        per_host, expected,
        "one per host, none for the contained one"
    );
    assert_eq!(t.contained.len(), 3);
    assert_eq!(report.actions["contain"].failed, 0);

    // The next cycle (a restart on the same tenant) asks nobody again.
    let report = tenant.cycle(&config).await;
    assert_eq!(
        contain_requests(&tenant.sim.snapshot()),
        expected,
        "{}",
        report.summary()
    );
}

#[tokio::test]
async fn a_lost_state_file_repeats_no_quarantine_comment() {
    let tenant = Tenant::start(scenario::single("malicious", true)).await;
    let config = tenant.config("", "contain_host = true\ncreate_case = true", "");
    tenant.cycle(&config).await;
    let before = tenant.sim.snapshot();
    assert_eq!(before.quarantines[0].actions.len(), 1);

    for suffix in ["", "-wal", "-shm"] {
        let path = format!("{}{suffix}", config.general.state_file.display());
        let _ = std::fs::remove_file(path);
    }
    let report = tenant.cycle(&config).await;
    let t = tenant.sim.snapshot();
    assert!(
        report.notes.iter().any(|n| n.contains("acted on")),
        "{:?}",
        report.notes
    );
    assert_eq!(
        t.quarantines[0].actions.len(),
        1,
        "{:?}",
        t.quarantines[0].actions
    );
    assert!(t.alerts.iter().all(|a| a.comments.len() == 1));
    assert_eq!(t.iocs.len(), before.iocs.len());
    assert_eq!(t.cases.len(), 1);
    assert_eq!(contain_requests(&t), contain_requests(&before));
}

#[tokio::test]
async fn network_iocs_expire_and_private_excluded_and_memory_dump_values_are_not_created() {
    let mut scenario = scenario::single("malicious", true);
    let iocs = &mut scenario.files[0].detonation.iocs;
    for ip in [
        "10.0.0.5",
        "192.168.1.20",
        "169.254.169.254",
        "224.0.0.251",
        "45.77.1.1",
    ] {
        iocs.ips.push(IocIp {
            ip: ip.into(),
            verdict: "malicious".into(),
            domains: vec![],
        });
    }
    iocs.domains.push(IocDomain {
        domain: "update.corp.example".into(),
        verdict: "malicious".into(),
    });
    iocs.files.push(IocFile {
        sha256: format!("{:064x}", 0xd0d0u64),
        filename: None,
        verdict: "malicious".into(),
        category: "Memory Dump".into(),
        classifications: vec![],
        threat_names: vec![],
    });
    let tenant = Tenant::start(scenario).await;
    let config = tenant.config(
        "",
        "ioc_exclude = [\"corp.example\", \"45.77.0.0/16\"]\nioc_expiration_days = 0",
        "",
    );
    let report = tenant.cycle(&config).await;
    assert!(report.failed.is_empty(), "{}", report.summary());

    let t = tenant.sim.snapshot();
    let mut created: Vec<(&str, &str, bool)> = t
        .iocs
        .iter()
        .map(|i| {
            (
                i.ioc_type.as_str(),
                i.value.as_str(),
                i.expiration.is_some(),
            )
        })
        .collect();
    created.sort();
    let sample = tenant.sim.edit(|w| w.files[0].sha256.clone());
    let sample = sample.as_str();
    let dropped = format!("{:064x}", 0xfeed_0000u64 + 1);
    let mut expected = vec![
        ("domain", "c2-1.example", true),
        ("ipv4", "185.220.101.1", true),
        ("sha256", sample, false),
        ("sha256", dropped.as_str(), false),
    ];
    expected.sort();
    assert_eq!(created, expected);
    let expiry = t
        .iocs
        .iter()
        .find(|i| i.ioc_type == "ipv4")
        .and_then(|i| i.expiration.clone())
        .unwrap();
    let expiry =
        time::OffsetDateTime::parse(&expiry, &time::format_description::well_known::Rfc3339)
            .unwrap();
    let days = (expiry - time::OffsetDateTime::now_utc()).whole_hours() as f64 / 24.0;
    assert!(
        (29.9..=30.1).contains(&days),
        "network IOCs expire in 30 days, not {days}"
    );
}

#[tokio::test]
async fn a_long_verdict_comment_lands_in_pieces_on_every_alert() {
    use falcon_vmray_connector::sim::scenario::VtiSpec;
    // Alerts on 40 hosts, 30 VTIs and long threat names: a comment well over the 1023 bytes
    // the simulator, like Falcon, takes in one action value.
    let mut scenario = Scenario {
        hosts: hosts(40),
        files: vec![file(1, "malicious", true)],
        ..Scenario::default()
    };
    let detonation = &mut scenario.files[0].detonation;
    detonation.threat_names = (0..12)
        .map(|n| {
            format!(
                "Trojan.GenericKD.Downloader.Emotet.Variant-{n:02}-{}",
                "x".repeat(40)
            )
        })
        .collect();
    detonation.vtis = (0..30)
        .map(|n| VtiSpec {
            category: format!("Category {n}"),
            operation: format!("Performs a long suspicious operation number {n} on the system"),
            score: 5 - (n % 3),
            classifications: vec![],
        })
        .collect();
    scenario.alerts = (0..40).map(|h| alert(0, h)).collect();
    let tenant = Tenant::start(scenario).await;
    let config = tenant.config("", "", "");
    let report = tenant.cycle(&config).await;
    assert!(report.failed.is_empty(), "{}", report.summary());
    let t = tenant.sim.snapshot();
    assert_eq!(t.alerts.len(), 40);
    for alert in &t.alerts {
        assert!(alert.comments.len() > 1, "{:?}", alert.comments);
        assert!(alert.comments.iter().all(|c| c.len() < 1024));
        let whole = alert.comments.join("\n");
        assert!(whole.starts_with("[VMRay] Verdict: Malicious"), "{whole}");
        assert!(whole.contains("Variant-11-"), "{whole}");
        assert!(whole.contains("- and 20 more in the analysis"), "{whole}");
        assert!(whole.contains("Category 9: Performs"), "{whole}");
    }
    println!(
        "long verdict comment: {} pieces on each of 40 alerts",
        t.alerts[0].comments.len()
    );
}

#[tokio::test]
async fn a_hash_on_120_hosts_gets_its_case_with_100_evidence_alerts() {
    let mut scenario = Scenario {
        hosts: hosts(120),
        files: vec![file(1, "malicious", true)],
        ..Scenario::default()
    };
    scenario.alerts = (0..120).map(|h| alert(0, h)).collect();
    let tenant = Tenant::start(scenario).await;
    let config = tenant.config("", "create_case = true", "");
    let report = tenant.cycle(&config).await;
    assert!(report.failed.is_empty(), "{}", report.summary());
    let t = tenant.sim.snapshot();
    assert_eq!(t.cases.len(), 1, "{}", report.summary());
    let case = &t.cases[0];
    assert_eq!(case.alert_ids.len(), 100);
    assert!(case.name.chars().count() <= 256, "{}", case.name);
    assert!(case.description.chars().count() <= 2048);
    assert!(case.description.contains("120"), "{}", case.description);
    println!(
        "case for a hash on 120 hosts: {} evidence alerts, name {} chars, description {} chars",
        case.alert_ids.len(),
        case.name.chars().count(),
        case.description.chars().count()
    );
}
