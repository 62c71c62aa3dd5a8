//! The planner's rules, one behaviour per test.

use std::collections::HashSet;

use time::macros::datetime;

use super::*;
use crate::model::{AlertEvidence, QuarantineEvidence};

fn sha(c: char) -> Sha256 {
    c.to_string().repeat(64).parse().unwrap()
}

fn alert(id: &str, status: &str, device: &str, host: &str) -> AlertEvidence {
    AlertEvidence {
        composite_id: id.into(),
        sha256: sha('a'),
        filename: Some("invoice.exe".into()),
        filepath: Some("C:\\Users\\x\\invoice.exe".into()),
        device_id: Some(device.into()),
        hostname: Some(host.into()),
        platform: Some("Windows".into()),
        created: None,
        status: status.into(),
        tags: vec![],
        files_in_alert: 1,
        about_file: true,
        severity: 50,
    }
}

fn quarantine(id: &str, device: &str) -> QuarantineEvidence {
    QuarantineEvidence {
        id: id.into(),
        sha256: sha('a'),
        device_id: Some(device.into()),
        hostname: Some(format!("host-{device}")),
        filename: Some("invoice.exe".into()),
        path: None,
        state: "quarantined".into(),
        created: None,
        updated: None,
    }
}

fn evidence() -> Evidence {
    Evidence {
        sha256: sha('a'),
        alerts: vec![
            alert("cid:ind:d1:1", "new", "d1", "alpha"),
            alert("cid:ind:d2:2", "in_progress", "d2", "beta"),
        ],
        quarantines: vec![quarantine("d3_aaaa", "d3")],
    }
}

fn analysis(verdict: Verdict) -> Analysis {
    let mut iocs = IocSet::default();
    iocs.sha256s.insert(sha('b'));
    iocs.sha256s.insert(sha('a'));
    iocs.ipv4.insert("185.220.101.7".parse().unwrap());
    iocs.ipv6.insert("2a0b:f4c0::1".parse().unwrap());
    iocs.domains.insert("evil.example".into());
    Analysis {
        sample_id: 9,
        verdict,
        report_url: "https://vmray.example/samples/9".into(),
        classifications: vec!["Ransomware".into()],
        threat_names: vec!["Emotet".into()],
        iocs,
        vtis: vec![
            Vti {
                category: "Persistence".into(),
                operation: "Installs a startup script".into(),
                score: 3,
            },
            Vti {
                category: "Injection".into(),
                operation: "Writes into another process".into(),
                score: 5,
            },
        ],
    }
}

fn run(verdict: Verdict, config: &Config) -> Plan {
    run_with(verdict, config, &[], &HashSet::new())
}

fn run_with(verdict: Verdict, config: &Config, others: &[Host], done: &HashSet<String>) -> Plan {
    let evidence = evidence();
    let analysis = analysis(verdict);
    plan(
        &PlanInput {
            evidence: &evidence,
            analysis: &analysis,
            other_hosts: others,
            done,
            now: datetime!(2026-11-28 00:00 UTC),
        },
        config,
    )
}

fn alert_updates(plan: &Plan) -> Vec<(String, Option<String>, Option<String>)> {
    plan.actions
        .iter()
        .filter_map(|a| match &a.action {
            Action::UpdateAlert {
                composite_id,
                comment,
                status,
                ..
            } => Some((composite_id.clone(), comment.clone(), status.clone())),
            _ => None,
        })
        .collect()
}

fn kinds(plan: &Plan) -> Vec<&'static str> {
    plan.actions.iter().map(|a| a.action.kind()).collect()
}

#[test]
fn malicious_comments_every_alert_and_moves_only_new_ones_to_in_progress() {
    let plan = run(Verdict::Malicious, &Config::default());
    let updates = alert_updates(&plan);
    assert_eq!(updates.len(), 2);
    assert_eq!(updates[0].2.as_deref(), Some("in_progress"));
    assert_eq!(updates[1].2, None, "an analyst's in_progress is left alone");
    let comment = updates[0].1.as_deref().unwrap();
    assert!(
        comment.starts_with(
            "[VMRay] Verdict: Malicious | Analysis: https://vmray.example/samples/9\n"
        )
    );
    assert!(comment.contains("Threat names: Emotet"));
    assert!(comment.contains("Classifications: Ransomware"));
    let injection = comment.find("[5/5] Injection").unwrap();
    let persistence = comment.find("[3/5] Persistence").unwrap();
    assert!(injection < persistence, "strongest VTI first: {comment}");
}

#[test]
fn threat_names_and_classifications_follow_their_switches() {
    let mut config = Config::default();
    config.crowdstrike.add_threat_name = false;
    config.crowdstrike.add_threat_classification = false;
    let plan = run(Verdict::Suspicious, &config);
    let comment = alert_updates(&plan)[0].1.clone().unwrap();
    assert!(comment.starts_with("[VMRay] Verdict: Suspicious"));
    assert!(!comment.contains("Emotet") && !comment.contains("Classifications"));
}

#[test]
fn clean_closes_new_alerts_only_when_configured() {
    let plan = run(Verdict::Clean, &Config::default());
    let updates = alert_updates(&plan);
    assert_eq!(updates[0].2.as_deref(), Some("closed"));
    assert_eq!(updates[1].2, None);
    assert!(updates[0].1.as_deref().unwrap().contains("clean"));

    let mut config = Config::default();
    config.crowdstrike.close_clean_detection = false;
    let updates = alert_updates(&run(Verdict::Clean, &config));
    assert!(updates.iter().all(|u| u.2.is_none()));
}

#[test]
fn without_comments_only_status_changes_remain() {
    let mut config = Config::default();
    config.crowdstrike.comment_to_detection = false;
    let updates = alert_updates(&run(Verdict::Malicious, &config));
    assert_eq!(
        updates,
        vec![("cid:ind:d1:1".into(), None, Some("in_progress".into()))]
    );
}

#[test]
fn quarantine_is_kept_for_harmful_and_released_for_clean() {
    let quarantine_action = |plan: &Plan| {
        plan.actions.iter().find_map(|a| match &a.action {
            Action::UpdateQuarantine {
                action, comment, ..
            } => Some((action.clone(), comment.clone())),
            _ => None,
        })
    };
    let (action, comment) =
        quarantine_action(&run(Verdict::Malicious, &Config::default())).unwrap();
    assert_eq!(action, "unrelease");
    assert!(comment.unwrap().contains("https://vmray.example/samples/9"));
    let (action, _) = quarantine_action(&run(Verdict::Clean, &Config::default())).unwrap();
    assert_eq!(action, "release");

    let mut config = Config::default();
    config.crowdstrike.release_clean_quarantine = false;
    assert_eq!(quarantine_action(&run(Verdict::Clean, &config)), None);
    config.crowdstrike.comment_to_quarantine = false;
    let (_, comment) = quarantine_action(&run(Verdict::Malicious, &config)).unwrap();
    assert_eq!(comment, None);
}

#[test]
fn iocs_cover_sample_dropped_files_addresses_and_domains_for_configured_levels() {
    let mut config = Config::default();
    config.crowdstrike.ioc_expiration_days = 30;
    let plan = run(Verdict::Malicious, &config);
    let iocs = plan
        .actions
        .iter()
        .find_map(|a| match &a.action {
            Action::CreateIocs { iocs, .. } => Some(iocs.clone()),
            _ => None,
        })
        .unwrap();
    let values: Vec<(IocKind, &str, IocAction)> = iocs
        .iter()
        .map(|i| (i.kind, i.value.as_str(), i.action))
        .collect();
    let a = sha('a').to_string();
    let b = sha('b').to_string();
    assert_eq!(
        values,
        vec![
            (IocKind::Sha256, a.as_str(), IocAction::Prevent),
            (IocKind::Sha256, b.as_str(), IocAction::Prevent),
            (IocKind::Ipv4, "185.220.101.7", IocAction::Detect),
            (IocKind::Ipv6, "2a0b:f4c0::1", IocAction::Detect),
            (IocKind::Domain, "evil.example", IocAction::Detect),
        ]
    );
    assert_eq!(iocs[0].filename.as_deref(), Some("invoice.exe"));
    assert_eq!(iocs[0].expiration, Some(datetime!(2026-12-28 00:00 UTC)));
    assert!(iocs.iter().all(|i| i.description.contains("samples/9")));

    // Suspicious is not in the default ioc_levels.
    assert!(!kinds(&run(Verdict::Suspicious, &config)).contains(&"ioc_create"));
    config.crowdstrike.create_ioc = false;
    assert!(!kinds(&run(Verdict::Malicious, &config)).contains(&"ioc_create"));
}

#[test]
fn containment_is_off_by_default() {
    assert!(!kinds(&run(Verdict::Malicious, &Config::default())).contains(&"contain"));
}

#[test]
fn containment_covers_alert_and_quarantine_hosts_minus_exclusions() {
    let mut config = Config::default();
    config.crowdstrike.contain_host = true;
    config.crowdstrike.contain_exclude = vec!["ALPHA".into(), "d3".into()];
    let plan = run(Verdict::Suspicious, &config);
    let contained: Vec<_> = plan
        .actions
        .iter()
        .filter_map(|a| match &a.action {
            Action::Contain { device_id, .. } => Some(device_id.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(contained, vec!["d2"]);
    assert_eq!(plan.notes.len(), 2, "{:?}", plan.notes);
    assert!(plan.notes[0].contains("alpha"));
    // Clean is not a containment level.
    assert!(!kinds(&run(Verdict::Clean, &config)).contains(&"contain"));
}

#[test]
fn other_hosts_are_named_in_the_comment_and_contained_only_with_containment_on() {
    let others = [Host {
        device_id: "d9".into(),
        hostname: Some("gamma".into()),
        platform: Some("Windows".into()),
        status: Some("normal".into()),
    }];
    let config = Config::default();
    let plan = run_with(Verdict::Malicious, &config, &others, &HashSet::new());
    let comment = alert_updates(&plan)[0].1.clone().unwrap();
    assert!(comment.contains("Other hosts that ran this file: gamma"));
    assert!(!kinds(&plan).contains(&"contain"), "the original's bug 17");

    let mut config = Config::default();
    config.crowdstrike.contain_host = true;
    let plan = run_with(Verdict::Malicious, &config, &others, &HashSet::new());
    let contained = plan
        .actions
        .iter()
        .filter(|a| matches!(&a.action, Action::Contain { device_id, .. } if device_id == "d9"))
        .count();
    assert_eq!(contained, 1);
}

#[test]
fn a_case_is_opened_for_configured_levels_and_assigned() {
    let mut config = Config::default();
    config.crowdstrike.create_case = true;
    config.crowdstrike.case_users = vec!["user-2".into()];
    let plan = run(Verdict::Malicious, &config);
    let case = plan
        .actions
        .iter()
        .find_map(|a| match &a.action {
            Action::OpenCase {
                alert_ids,
                assignee,
                severity,
                description,
                ..
            } => Some((
                alert_ids.clone(),
                assignee.clone(),
                *severity,
                description.clone(),
            )),
            _ => None,
        })
        .unwrap();
    assert_eq!(case.0, vec!["cid:ind:d1:1", "cid:ind:d2:2"]);
    assert_eq!(case.1.as_deref(), Some("user-2"));
    assert_eq!(case.2, 90);
    assert!(case.3.contains("https://vmray.example/samples/9"));
    config.crowdstrike.user_uuid = Some("user-1".into());
    let plan = run(Verdict::Malicious, &config);
    assert!(
        plan.actions.iter().any(
            |a| matches!(&a.action, Action::OpenCase { assignee: Some(u), .. } if u == "user-1")
        )
    );
    assert!(!kinds(&run(Verdict::Clean, &config)).contains(&"case"));
}

#[test]
fn actions_already_done_are_not_planned_again() {
    let config = Config::default();
    let first = run(Verdict::Malicious, &config);
    let done: HashSet<String> = first.actions.iter().map(|a| a.key.clone()).collect();
    assert!(done.contains(&format!("alert:cid:ind:d1:1:{}:malicious", sha('a'))));
    let second = run_with(Verdict::Malicious, &config, &[], &done);
    assert!(second.actions.is_empty(), "{:?}", second.actions);
    // A different verdict is new information and is written.
    let changed = run_with(Verdict::Suspicious, &config, &[], &done);
    assert_eq!(alert_updates(&changed).len(), 2);
}

#[test]
fn no_usable_verdict_plans_nothing() {
    for verdict in [Verdict::NotAvailable, Verdict::Unknown] {
        let plan = run(verdict, &Config::default());
        assert!(plan.actions.is_empty());
        assert_eq!(plan.notes.len(), 1);
    }
}

#[test]
fn on_demand_scans_target_windows_hosts_when_enabled() {
    let mut config = Config::default();
    assert!(!kinds(&run(Verdict::Malicious, &config)).contains(&"scan"));
    config.crowdstrike.on_demand_scan = true;
    let plan = run(Verdict::Malicious, &config);
    let scan = plan.actions.iter().find_map(|a| match &a.action {
        Action::Scan {
            device_ids,
            file_paths,
        } => Some((device_ids.clone(), file_paths.clone())),
        _ => None,
    });
    assert_eq!(
        scan,
        Some((
            vec!["d1".to_string(), "d2".to_string()],
            vec!["C:\\Users\\x\\invoice.exe".to_string()]
        ))
    );
}

#[test]
fn a_failure_opens_one_case_only_when_configured() {
    let mut config = Config::default();
    let done = HashSet::new();
    assert!(
        plan_failure(&evidence(), "404", &done, &config)
            .actions
            .is_empty()
    );
    config.general.submit_or_download_error_open_case = true;
    let plan = plan_failure(&evidence(), "not in the sample store", &done, &config);
    assert_eq!(plan.actions.len(), 1);
    let done: HashSet<String> = plan.actions.iter().map(|a| a.key.clone()).collect();
    assert!(
        plan_failure(&evidence(), "again", &done, &config)
            .actions
            .is_empty()
    );
}

#[test]
fn actions_round_trip_through_the_journal_format() {
    let mut config = Config::default();
    config.crowdstrike.contain_host = true;
    config.crowdstrike.create_case = true;
    for action in run(Verdict::Malicious, &config).actions {
        let json = serde_json::to_string(&action).unwrap();
        let back: PlannedAction = serde_json::from_str(&json).unwrap();
        assert_eq!(back, action);
    }
}

#[test]
fn a_runaway_ioc_report_is_capped_with_a_note_and_the_sample_hash_kept() {
    let evidence = evidence();
    let mut analysis = analysis(Verdict::Malicious);
    for i in 0..100_000u32 {
        analysis
            .iocs
            .ipv4
            .insert(std::net::Ipv4Addr::from(0x2d00_0000 + i));
    }
    let plan = plan(
        &PlanInput {
            evidence: &evidence,
            analysis: &analysis,
            other_hosts: &[],
            done: &HashSet::new(),
            now: datetime!(2026-11-28 00:00 UTC),
        },
        &Config::default(),
    );
    let iocs = plan
        .actions
        .iter()
        .find_map(|a| match &a.action {
            Action::CreateIocs { iocs, .. } => Some(iocs.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(iocs.len(), MAX_IOCS_PER_SAMPLE);
    assert_eq!(iocs[0].value, sha('a').to_string());
    assert!(
        plan.notes
            .iter()
            .any(|n| n.contains("100005 IOCs") && n.contains("only the first 1000")),
        "{:?}",
        plan.notes
    );
}

#[test]
fn an_alert_update_journaled_before_landing_marks_still_reads() {
    let payload = format!(
        r#"{{"key":"alert:1:{a}:malicious","sha256":"{a}","action":{{"kind":"update_alert",
            "composite_id":"1","comment":"c","status":null,"tag":"VMRay_Malicious"}}}}"#,
        a = sha('a')
    );
    let action: PlannedAction = serde_json::from_str(&payload).unwrap();
    assert!(matches!(
        action.action,
        Action::UpdateAlert { ref mark, ref tag, .. } if mark.is_empty() && tag == "VMRay_Malicious"
    ));
}

#[test]
fn an_alert_that_carries_the_landing_mark_is_not_updated_again() {
    let config = Config::default();
    let mut input = evidence();
    input.alerts[0]
        .tags
        .push(landing_mark(&input.sha256, Verdict::Malicious));
    let plan = plan(
        &PlanInput {
            evidence: &input,
            analysis: &analysis(Verdict::Malicious),
            other_hosts: &[],
            done: &HashSet::new(),
            now: datetime!(2026-11-28 00:00 UTC),
        },
        &config,
    );
    let updated: Vec<_> = alert_updates(&plan)
        .into_iter()
        .map(|(id, _, _)| id)
        .collect();
    assert!(
        !updated.contains(&input.alerts[0].composite_id),
        "{updated:?}"
    );
    assert_eq!(updated.len(), input.alerts.len() - 1);
}

/// A typical malicious verdict with a long report: 30 VTIs and 50 other hosts.
fn busy_analysis() -> (Analysis, Vec<Host>) {
    let mut analysis = analysis(Verdict::Malicious);
    analysis.vtis = (0..30)
        .map(|n| Vti {
            category: format!("Category {n}"),
            operation: format!("Writes into process number {n}"),
            score: (n % 5 + 1) as u8,
        })
        .collect();
    let others = (0..50)
        .map(|n| Host {
            device_id: format!("other-{n}"),
            hostname: Some(format!("workstation-{n:03}")),
            platform: Some("Windows".into()),
            status: None,
        })
        .collect();
    (analysis, others)
}

#[test]
fn a_comment_lists_ten_vtis_strongest_first_and_ten_other_hosts_with_a_count() {
    let (analysis, others) = busy_analysis();
    let evidence = evidence();
    let plan = plan(
        &PlanInput {
            evidence: &evidence,
            analysis: &analysis,
            other_hosts: &others,
            done: &HashSet::new(),
            now: datetime!(2026-11-28 00:00 UTC),
        },
        &Config::default(),
    );
    let comment = alert_updates(&plan)[0].1.clone().unwrap();
    let vti_lines: Vec<&str> = comment.lines().filter(|l| l.starts_with("- [")).collect();
    assert_eq!(vti_lines.len(), COMMENT_MAX_VTIS);
    assert!(
        vti_lines
            .iter()
            .all(|l| l.starts_with("- [5/5]") || l.starts_with("- [4/5]"))
    );
    assert!(comment.contains("- and 20 more in the analysis"));
    assert!(
        comment.contains("workstation-009 and 40 more (50 in all)"),
        "{comment}"
    );
    assert!(!comment.contains("workstation-010"));
    // One comment value for Falcon: under 1024 bytes.
    assert!(comment.len() < 1024, "{} bytes", comment.len());
    println!(
        "comment for 30 VTIs and 50 other hosts: {} bytes, one piece",
        comment.len()
    );
}

#[test]
fn a_hash_on_120_hosts_gets_a_case_with_the_100_most_severe_alerts() {
    let mut config = Config::default();
    config.crowdstrike.create_case = true;
    let mut evidence = evidence();
    evidence.quarantines.clear();
    evidence.alerts = (0..120)
        .map(|n| {
            let mut a = alert(
                &format!("cid:ind:{n:03}"),
                "new",
                &format!("dev-{n:03}"),
                &format!("laptop-{n:03}"),
            );
            a.severity = if n % 6 == 0 { 30 } else { 70 };
            a
        })
        .collect();
    let (analysis, _) = busy_analysis();
    let plan = plan(
        &PlanInput {
            evidence: &evidence,
            analysis: &analysis,
            other_hosts: &[],
            done: &HashSet::new(),
            now: datetime!(2026-11-28 00:00 UTC),
        },
        &config,
    );
    let (name, description, alert_ids) = plan
        .actions
        .iter()
        .find_map(|a| match &a.action {
            Action::OpenCase {
                name,
                description,
                alert_ids,
                ..
            } => Some((name.clone(), description.clone(), alert_ids.clone())),
            _ => None,
        })
        .unwrap();
    assert_eq!(alert_ids.len(), CASE_EVIDENCE_MAX_ALERTS);
    // The 20 alerts of severity 30 are the ones left out.
    assert!(alert_ids.iter().all(|id| {
        let n: usize = id.rsplit(':').next().unwrap().parse().unwrap();
        !n.is_multiple_of(6)
    }));
    assert!(name.chars().count() <= CASE_NAME_MAX_CHARS);
    assert!(description.chars().count() <= CASE_DESCRIPTION_MAX_CHARS);
    assert!(description.contains("Alerts: 120 (the 100 most severe are attached as evidence)"));
    assert!(
        description.contains("Hosts: 120: laptop-000,"),
        "{description}"
    );
    assert!(description.contains("and 100 more (120 in all)"));
    println!(
        "case for a 120-host hash: {} evidence alerts, description {} characters, name {}",
        alert_ids.len(),
        description.chars().count(),
        name.chars().count()
    );
}

#[test]
fn fitting_text_never_cuts_a_word() {
    let text = "alpha beta gamma delta";
    assert_eq!(fit_words(text, 100), text);
    let fitted = fit_words(text, 14);
    assert!(fitted.len() <= 14, "{fitted}");
    assert_eq!(fitted, "alpha beta …");
    let long = "wörd ".repeat(1000);
    let fitted = fit_words(&long, CASE_DESCRIPTION_MAX_CHARS);
    assert!(fitted.len() <= CASE_DESCRIPTION_MAX_CHARS);
    assert!(fitted.trim_end_matches(" …").ends_with("wörd"));
}

#[test]
fn scans_get_drive_paths_not_nt_device_paths() {
    assert_eq!(
        ods_path(r"\Device\HarddiskVolume3\Users\x\invoice.exe").as_deref(),
        Some(r"*:\Users\x\invoice.exe")
    );
    assert_eq!(
        ods_path(r"C:\Users\x\invoice.exe").as_deref(),
        Some(r"C:\Users\x\invoice.exe")
    );
    assert_eq!(ods_path(r"\Device\Mup\server\share\a.exe"), None);
    assert_eq!(ods_path(r"\Device\HarddiskVolume\a.exe"), None);
    assert_eq!(ods_path(r"\Device\HarddiskVolume2"), None);

    let mut config = Config::default();
    config.crowdstrike.on_demand_scan = true;
    let mut evidence = evidence();
    evidence.alerts[0].filepath = Some(r"\Device\HarddiskVolume3\Users\x\invoice.exe".into());
    evidence.alerts[1].filepath = Some(r"\Device\Mup\server\invoice.exe".into());
    let analysis = analysis(Verdict::Malicious);
    let plan = plan(
        &PlanInput {
            evidence: &evidence,
            analysis: &analysis,
            other_hosts: &[],
            done: &HashSet::new(),
            now: datetime!(2026-11-28 00:00 UTC),
        },
        &config,
    );
    let scan = plan.actions.iter().find_map(|a| match &a.action {
        Action::Scan {
            device_ids,
            file_paths,
        } => Some((device_ids.clone(), file_paths.clone())),
        _ => None,
    });
    assert_eq!(
        scan,
        Some((
            vec!["d1".to_string()],
            vec![r"*:\Users\x\invoice.exe".to_string()]
        ))
    );
}

fn plan_for(evidence: &Evidence, verdict: Verdict, config: &Config) -> Plan {
    let analysis = analysis(verdict);
    plan(
        &PlanInput {
            evidence,
            analysis: &analysis,
            other_hosts: &[],
            done: &HashSet::new(),
            now: datetime!(2026-11-28 00:00 UTC),
        },
        config,
    )
}

#[test]
fn a_clean_verdict_closes_file_alerts_but_only_comments_behaviour_alerts() {
    let mut evidence = evidence();
    evidence.alerts[1].status = "new".into();
    evidence.alerts[1].about_file = false;
    let plan = plan_for(&evidence, Verdict::Clean, &Config::default());
    let updates = alert_updates(&plan);
    assert_eq!(updates[0].2.as_deref(), Some("closed"), "ML alert closed");
    assert_eq!(updates[1].2, None, "behaviour alert left open");
    assert!(
        updates[1].1.as_deref().unwrap().contains("clean"),
        "but commented"
    );
    assert!(
        plan.notes
            .iter()
            .any(|n| n.contains("cid:ind:d2:2") && n.contains("behaviour"))
    );
    // A harmful verdict still moves a behaviour alert to in_progress.
    let updates = alert_updates(&plan_for(&evidence, Verdict::Malicious, &Config::default()));
    assert_eq!(updates[1].2.as_deref(), Some("in_progress"));
}

#[test]
fn quarantine_records_are_changed_only_while_quarantined_and_untouched() {
    let kinds_of = |evidence: &Evidence, verdict| {
        let plan = plan_for(evidence, verdict, &Config::default());
        let actions: Vec<String> = plan
            .actions
            .iter()
            .filter_map(|a| match &a.action {
                Action::UpdateQuarantine { action, .. } => Some(action.clone()),
                _ => None,
            })
            .collect();
        (actions, plan.notes)
    };
    let created = datetime!(2026-11-27 23:00 UTC);
    let mut evidence = evidence();
    evidence.quarantines[0].created = Some(created);
    evidence.quarantines[0].updated = Some(created + time::Duration::seconds(2));
    assert_eq!(kinds_of(&evidence, Verdict::Malicious).0, ["unrelease"]);
    assert_eq!(kinds_of(&evidence, Verdict::Clean).0, ["release"]);

    // An analyst released it: a harmful verdict does not unrelease it, a clean one has
    // nothing to release.
    evidence.quarantines[0].state = "released".into();
    for verdict in [Verdict::Malicious, Verdict::Clean] {
        let (actions, notes) = kinds_of(&evidence, verdict);
        assert!(actions.is_empty(), "{verdict}: {actions:?}");
        assert!(notes.iter().any(|n| n.contains("`released`")), "{notes:?}");
    }

    // Updated after it was quarantined (this connector before its state was lost, or an
    // analyst): not written again.
    evidence.quarantines[0].state = "quarantined".into();
    evidence.quarantines[0].updated = Some(created + time::Duration::minutes(5));
    let (actions, notes) = kinds_of(&evidence, Verdict::Malicious);
    assert!(actions.is_empty());
    assert!(notes.iter().any(|n| n.contains("acted on")), "{notes:?}");
}

#[test]
fn network_iocs_expire_by_default_and_skip_private_and_excluded_values() {
    let mut evidence = evidence();
    evidence.sha256 = sha('a');
    let mut analysis = analysis(Verdict::Malicious);
    for private in [
        "10.0.0.5",
        "192.168.1.1",
        "127.0.0.1",
        "169.254.1.1",
        "224.0.0.251",
        "240.0.0.1",
    ] {
        analysis.iocs.ipv4.insert(private.parse().unwrap());
    }
    analysis.iocs.ipv4.insert("45.77.1.2".parse().unwrap());
    analysis.iocs.ipv6.insert("fe80::1".parse().unwrap());
    analysis.iocs.domains.insert("cdn.corp.example".into());
    let mut config = Config::default();
    config.crowdstrike.ioc_exclude = vec!["corp.example".into(), "45.77.0.0/16".into()];
    let plan = plan(
        &PlanInput {
            evidence: &evidence,
            analysis: &analysis,
            other_hosts: &[],
            done: &HashSet::new(),
            now: datetime!(2026-11-28 00:00 UTC),
        },
        &config,
    );
    let iocs = plan
        .actions
        .iter()
        .find_map(|a| match &a.action {
            Action::CreateIocs { iocs, .. } => Some(iocs.clone()),
            _ => None,
        })
        .unwrap();
    let network: Vec<&str> = iocs
        .iter()
        .filter(|i| i.kind != IocKind::Sha256)
        .map(|i| i.value.as_str())
        .collect();
    assert_eq!(network, ["185.220.101.7", "2a0b:f4c0::1", "evil.example"]);
    assert!(
        plan.notes.iter().any(|n| n.contains("9 network indicator")),
        "{:?}",
        plan.notes
    );
    for ioc in &iocs {
        let expected = match ioc.kind {
            IocKind::Sha256 => None,
            _ => Some(datetime!(2026-12-28 00:00 UTC)),
        };
        assert_eq!(ioc.expiration, expected, "{}", ioc.value);
    }
}
