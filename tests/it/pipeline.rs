//! The cycle end to end on the simulator: what the tenant looks like afterwards.

use falcon_vmray_connector::pipeline::Connector;
use falcon_vmray_connector::sim::{GenerateOptions, Scenario};
use tokio_util::sync::CancellationToken;

use crate::support::Tenant;
use crate::support::scenario::{self, device};

const ALL_ON: &str =
    "contain_host = true\nfind_another_host = true\ncreate_case = true\nuser_uuid = \"analyst-1\"";

#[tokio::test]
async fn malicious_sample_is_submitted_and_written_back_everywhere() {
    let tenant = Tenant::start(scenario::single("malicious", false)).await;
    let config = tenant.config("", ALL_ON, "");
    let report = tenant.cycle(&config).await;
    assert_eq!(
        (report.hashes, report.submitted, report.finished),
        (1, 1, 1)
    );
    assert!(report.failed.is_empty(), "{:?}", report.failed);

    let t = tenant.sim.snapshot();
    assert_eq!(t.submissions.len(), 1);
    for alert in &t.alerts {
        assert_eq!(alert.status, "in_progress");
        assert_eq!(alert.comments.len(), 1, "{:?}", alert.comments);
        let comment = &alert.comments[0];
        assert!(
            comment.starts_with("[VMRay] Verdict: Malicious | Analysis: "),
            "{comment}"
        );
        assert!(comment.contains("Threat names: Emotet"), "{comment}");
        assert!(comment.contains("Classifications: Downloader"), "{comment}");
        assert!(comment.contains("Persistence"), "{comment}");
        assert!(alert.tags.contains(&"VMRay_Malicious".to_string()));
    }
    let q = &t.quarantines[0];
    assert_eq!(q.actions.len(), 1);
    assert_eq!(q.actions[0].action, "unrelease");
    assert!(q.actions[0].comment.contains("Verdict: Malicious"));

    let mut iocs: Vec<(String, String)> = t
        .iocs
        .iter()
        .map(|i| (i.ioc_type.clone(), i.action.clone()))
        .collect();
    iocs.sort();
    assert_eq!(
        iocs,
        vec![
            ("domain".into(), "detect".into()),
            ("ipv4".into(), "detect".into()),
            ("sha256".into(), "prevent".into()),
            ("sha256".into(), "prevent".into()),
        ]
    );
    assert!(t.iocs.iter().all(|i| i.source.as_deref() == Some("VMRay")));
    let mut contained = t.contained.clone();
    contained.sort();
    assert_eq!(contained, vec![device(0), device(1), device(2)]);
    assert_eq!(t.cases.len(), 1);
    assert_eq!(t.cases[0].assigned_to.as_deref(), Some("analyst-1"));
    assert_eq!(t.cases[0].alert_ids.len(), 2);
    assert!(tenant.downloads_left().is_empty());
}

#[tokio::test]
async fn suspicious_known_sample_is_not_submitted_and_creates_no_iocs_by_default() {
    let tenant = Tenant::start(scenario::single("suspicious", true)).await;
    let config = tenant.config("", ALL_ON, "");
    let report = tenant.cycle(&config).await;
    assert_eq!((report.known, report.submitted), (1, 0));
    let t = tenant.sim.snapshot();
    assert!(t.submissions.is_empty());
    assert!(t.alerts.iter().all(|a| a.status == "in_progress"));
    assert!(t.alerts[0].comments[0].starts_with("[VMRay] Verdict: Suspicious"));
    assert!(t.iocs.is_empty(), "ioc_levels defaults to malicious only");
    assert_eq!(t.quarantines[0].actions[0].action, "unrelease");
    assert_eq!(t.contained.len(), 3);
    assert_eq!(t.cases.len(), 1);
}

#[tokio::test]
async fn clean_sample_closes_alerts_releases_files_and_contains_nothing() {
    let tenant = Tenant::start(scenario::single("clean", true)).await;
    let config = tenant.config("", ALL_ON, "");
    tenant.cycle(&config).await;
    let t = tenant.sim.snapshot();
    assert!(t.alerts.iter().all(|a| a.status == "closed"));
    assert!(t.alerts[0].comments[0].contains("clean"));
    assert_eq!(t.quarantines[0].state, "released");
    assert!(t.iocs.is_empty() && t.contained.is_empty() && t.cases.is_empty());
}

#[tokio::test]
async fn with_defaults_nothing_is_contained_and_no_case_is_opened() {
    let tenant = Tenant::start(scenario::single("malicious", true)).await;
    let config = tenant.config("", "", "");
    tenant.cycle(&config).await;
    let t = tenant.sim.snapshot();
    assert!(t.contained.is_empty() && t.containment_requests.is_empty());
    assert!(t.cases.is_empty());
    assert_eq!(t.iocs.len(), 4);
}

#[tokio::test]
async fn a_second_cycle_changes_nothing_and_submits_nothing() {
    let scenario = Scenario::generate(&GenerateOptions {
        hashes: 50,
        seed: 7,
        detonation_max: std::time::Duration::from_millis(300),
        ..GenerateOptions::default()
    });
    let tenant = Tenant::start(scenario).await;
    // No containment cap: deferred containments would rightly be performed by the second cycle.
    let config = tenant.config(
        "concurrency = 8",
        &format!("{ALL_ON}\ncontain_max_per_cycle = 1000"),
        "",
    );
    let first = tenant.cycle(&config).await;
    assert!(first.hashes >= 50, "{}", first.summary());
    let after_first = tenant.sim.snapshot();
    assert!(!after_first.submissions.is_empty());
    // Every sample's IOCs go out together: a handful of creates, not one per sample.
    let creates = after_first
        .requests
        .iter()
        .filter(|r| r.method == "POST" && r.path.starts_with("/iocs/entities/indicators/v1"))
        .count();
    assert!(!after_first.iocs.is_empty());
    assert!(creates <= 3, "{creates} IOC create requests");

    let second = tenant.cycle(&config).await;
    let after_second = tenant.sim.snapshot();
    assert_eq!(
        after_second.submissions.len(),
        after_first.submissions.len()
    );
    assert_eq!(after_second.iocs.len(), after_first.iocs.len());
    assert_eq!(after_second.cases.len(), after_first.cases.len());
    assert_eq!(
        after_second.containment_requests.len(),
        after_first.containment_requests.len()
    );
    for (a, b) in after_first.alerts.iter().zip(&after_second.alerts) {
        assert_eq!(
            a.comments, b.comments,
            "alert {} commented twice",
            a.composite_id
        );
        assert_eq!(a.status, b.status);
    }
    for (a, b) in after_first
        .quarantines
        .iter()
        .zip(&after_second.quarantines)
    {
        assert_eq!(a.actions.len(), b.actions.len());
    }
    assert_eq!(second.submitted, 0, "{}", second.summary());
    assert!(tenant.downloads_left().is_empty());
}

#[tokio::test]
async fn an_alert_an_analyst_closed_between_cycles_is_left_alone() {
    let tenant = Tenant::start(scenario::single("malicious", true)).await;
    let config = tenant.config("", "", "");
    tenant.cycle(&config).await;
    let closed_id = tenant.sim.snapshot().alerts[0].composite_id.clone();
    tenant.sim.edit(|world| {
        let alert = world
            .alerts
            .iter_mut()
            .find(|a| a.composite_id == closed_id)
            .unwrap();
        alert.status = "closed".into();
        alert.updated = time::OffsetDateTime::now_utc();
    });
    tenant.cycle(&config).await;
    let alert = tenant.sim.snapshot().alert(&closed_id).unwrap().clone();
    assert_eq!(alert.status, "closed");
    assert_eq!(alert.comments.len(), 1);
}

#[tokio::test]
async fn resubmission_sends_a_known_sample_again_with_reanalyze() {
    let tenant = Tenant::start(scenario::single("malicious", true)).await;
    let config = tenant.config("", "", "resubmit = true");
    let report = tenant.cycle(&config).await;
    assert_eq!(report.submitted, 1, "{}", report.summary());
    let t = tenant.sim.snapshot();
    assert_eq!(t.submissions.len(), 1);
    assert_eq!(t.submissions[0].reanalyze.as_deref(), Some("True"));
    // The next cycle sees the alerts again (the connector updated them) but nothing new.
    tenant.cycle(&config).await;
    assert_eq!(
        tenant.sim.snapshot().submissions.len(),
        1,
        "not resubmitted every cycle"
    );

    // Not yet old enough: used as known.
    let tenant = Tenant::start(scenario::single("malicious", true)).await;
    let config = tenant.config("", "", "resubmit = true\nresubmit_after_days = 30");
    let report = tenant.cycle(&config).await;
    assert_eq!((report.known, report.submitted), (1, 0));
}

#[tokio::test]
async fn dry_run_changes_nothing_in_the_tenant() {
    let tenant = Tenant::start(scenario::single("malicious", true)).await;
    let config = tenant.config("dry_run = true", ALL_ON, "");
    let report = tenant.cycle(&config).await;
    assert!(report.dry_run);
    assert!(
        report.actions["alert_update"].planned >= 2,
        "{}",
        report.summary()
    );
    let table = report.planned_table();
    assert!(
        table.contains("alert_update") && table.contains("contain host host-0"),
        "{table}"
    );
    let t = tenant.sim.snapshot();
    assert!(
        t.alerts
            .iter()
            .all(|a| a.comments.is_empty() && a.status == "new")
    );
    assert!(t.quarantines[0].actions.is_empty());
    assert!(t.iocs.is_empty() && t.contained.is_empty() && t.cases.is_empty());
    assert!(t.submissions.is_empty());
    let writes: Vec<_> = t
        .requests
        .iter()
        .filter(|r| r.method == "PATCH" || r.method == "PUT")
        .collect();
    assert!(writes.is_empty(), "{writes:?}");
}

#[tokio::test]
async fn containment_respects_exclusions_and_the_per_cycle_cap() {
    let tenant = Tenant::start(scenario::single("malicious", true)).await;
    let excluded = device(0);
    let config = tenant.config(
        "",
        &format!(
            "contain_host = true\ncontain_exclude = [\"{excluded}\"]\ncontain_max_per_cycle = 1"
        ),
        "",
    );
    let report = tenant.cycle(&config).await;
    assert_eq!(tenant.sim.snapshot().contained.len(), 1);
    assert_eq!(
        report.actions["contain"].deferred,
        1,
        "{}",
        report.summary()
    );
    assert!(report.notes.iter().any(|n| n.contains("contain_exclude")));
    assert!(
        report
            .notes
            .iter()
            .any(|n| n.contains("contain_max_per_cycle"))
    );

    tenant.cycle(&config).await;
    let contained = tenant.sim.snapshot().contained;
    assert_eq!(contained.len(), 2);
    assert!(!contained.contains(&excluded));
}

#[tokio::test]
async fn a_sample_that_cannot_be_downloaded_does_not_stop_the_others() {
    let mut scenario = scenario::single("malicious", false);
    let mut missing = scenario::file(2, "malicious", false);
    missing.in_sample_store = false;
    scenario.files.push(missing);
    scenario.alerts.push(scenario::alert(1, 1));
    let tenant = Tenant::start(scenario).await;
    let config = tenant.config("submit_or_download_error_open_case = true", "", "");
    let report = tenant.cycle(&config).await;
    assert_eq!(report.failed.len(), 1, "{}", report.summary());
    assert!(report.failed[0].reason.contains("sample store"));
    assert_eq!(report.finished, 1);
    let t = tenant.sim.snapshot();
    assert_eq!(t.submissions.len(), 1);
    assert!(
        t.cases.is_empty(),
        "no error case while the connector still tries"
    );

    // The sensor uploads the file late: a later cycle finds it, though its alert is no longer
    // in the window, and acts on it.
    let missing_alert = t.alerts[2].composite_id.clone();
    tenant.sim.edit(|w| w.files[1].in_sample_store = true);
    let report = tenant.cycle(&config).await;
    assert_eq!(
        (report.failed.len(), report.submitted),
        (0, 1),
        "{}",
        report.summary()
    );
    let t = tenant.sim.snapshot();
    assert_eq!(t.submissions.len(), 2);
    assert_eq!(t.alert(&missing_alert).unwrap().comments.len(), 1);
    assert!(t.cases.is_empty());
}

#[tokio::test]
async fn a_restart_polls_submissions_in_flight_instead_of_resubmitting() {
    let mut scenario = scenario::single("malicious", false);
    scenario.files[0].detonation.duration_ms = 2_500;
    let tenant = Tenant::start(scenario).await;
    let config = tenant.config("", "", "");

    // The first process stops (shutdown) while the analysis is running.
    let connector = Connector::new(config.clone()).unwrap();
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    let watcher = async {
        while tenant.sim.snapshot().submissions.is_empty() {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        stop.cancel();
    };
    let (result, ()) = tokio::join!(connector.run_cycle(&shutdown), watcher);
    assert!(result.is_err(), "the cycle was interrupted");
    drop(connector);
    assert!(
        tenant
            .sim
            .snapshot()
            .alerts
            .iter()
            .all(|a| a.comments.is_empty())
    );

    // The next process resumes waiting and acts.
    let report = tenant.cycle(&config).await;
    assert_eq!(report.finished, 1, "{}", report.summary());
    let t = tenant.sim.snapshot();
    assert_eq!(t.submissions.len(), 1, "not resubmitted");
    assert!(t.alerts.iter().all(|a| a.comments.len() == 1));
    assert!(tenant.downloads_left().is_empty());
}

#[tokio::test]
async fn a_failed_analysis_is_reported_a_slow_one_kept_in_flight_and_the_others_complete() {
    let mut scenario = scenario::single("malicious", false);
    let mut broken = scenario::file(2, "malicious", false);
    broken.detonation.fails = true;
    let mut slow = scenario::file(3, "malicious", false);
    slow.detonation.duration_ms = 60_000;
    scenario.files.push(broken);
    scenario.files.push(slow);
    scenario.alerts.push(scenario::alert(1, 1));
    scenario.alerts.push(scenario::alert(2, 2));
    let tenant = Tenant::start(scenario).await;
    let config = tenant.config("", "", "analysis_job_timeout = 2");
    let started = std::time::Instant::now();
    let report = tenant.cycle(&config).await;
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "the wait never hangs"
    );
    let mut steps: Vec<_> = report.failed.iter().map(|f| f.step).collect();
    steps.sort();
    use falcon_vmray_connector::pipeline::report::Step;
    assert_eq!(steps, vec![Step::Analysis], "{}", report.summary());
    assert_eq!(report.finished, 1);
    assert_eq!(report.still_analysing, 1, "the slow one is no failure");
    let t = tenant.sim.snapshot();
    let commented = t.alerts.iter().filter(|a| !a.comments.is_empty()).count();
    assert_eq!(commented, 2, "only the analysed sample's two alerts");
    assert!(tenant.downloads_left().is_empty());
}

#[tokio::test]
async fn other_hosts_that_ran_the_hash_are_named_and_contained_with_containment_on() {
    let mut scenario = scenario::single("malicious", true);
    scenario
        .hosts
        .extend(scenario::hosts(5).into_iter().skip(3));
    scenario.files[0].ran_on = vec![device(0), device(3), device(4)];
    let tenant = Tenant::start(scenario).await;
    let config = tenant.config("", "find_another_host = true", "");
    tenant.cycle(&config).await;
    let t = tenant.sim.snapshot();
    let comment = &t.alerts[0].comments[0];
    assert!(
        comment.contains("Other hosts that ran this file: host-3, host-4"),
        "{comment}"
    );
    assert!(
        t.contained.is_empty(),
        "containment is off (the original's bug 17)"
    );

    let mut scenario = scenario::single("malicious", true);
    scenario
        .hosts
        .extend(scenario::hosts(5).into_iter().skip(3));
    scenario.files[0].ran_on = vec![device(3)];
    let tenant = Tenant::start(scenario).await;
    let config = tenant.config("", "find_another_host = true\ncontain_host = true", "");
    tenant.cycle(&config).await;
    assert!(tenant.sim.snapshot().contained.contains(&device(3)));
}

#[tokio::test]
async fn hosts_that_ran_a_hash_are_paged_past_100_without_a_total_and_a_failure_is_reported() {
    let mut scenario = scenario::single("malicious", true);
    scenario.hosts = scenario::hosts(150);
    scenario.files[0].ran_on = (0..150).map(device).collect();
    let tenant = Tenant::start(scenario).await;
    let config = tenant.config("", "find_another_host = true", "");
    let report = tenant.cycle(&config).await;
    let t = tenant.sim.snapshot();
    let comment = &t.alerts[0].comments[0];
    // 150 hosts ran it, three of them are in the evidence: 147 others, over two pages of 100.
    assert!(comment.contains("and 137 more (147 in all)"), "{comment}");
    assert_eq!(
        t.requests_to("/iocs/queries/indicators/devices/v1").len(),
        2
    );
    assert!(report.notes.is_empty(), "{:?}", report.notes);

    let scenario = scenario::single("malicious", true);
    let tenant = Tenant::start(scenario).await;
    let mut refused = falcon_vmray_connector::sim::faults::Override::json(
        falcon_vmray_connector::sim::Service::Falcon,
        "/iocs/queries/indicators/devices/v1",
        r#"{"meta":{},"errors":[{"code":403,"message":"access denied, authorization failed"}]}"#,
    );
    refused.status = 403;
    tenant.sim.set_faults(falcon_vmray_connector::sim::Faults {
        overrides: vec![refused],
        ..Default::default()
    });
    let config = tenant.config("", "find_another_host = true", "");
    let report = tenant.cycle(&config).await;
    assert!(
        report
            .notes
            .iter()
            .any(|n| n.contains("other hosts that ran it are not named")),
        "{:?}",
        report.notes
    );
    // The verdict still landed.
    assert_eq!(tenant.sim.snapshot().alerts[0].comments.len(), 1);
}

#[tokio::test]
async fn a_scan_gets_a_drive_path_for_an_nt_device_path_and_every_required_field() {
    let mut scenario = scenario::single("malicious", true);
    scenario.files[0].path = r"\Device\HarddiskVolume3\Users\user\Downloads\sample-1.exe".into();
    let tenant = Tenant::start(scenario).await;
    let config = tenant.config("", "on_demand_scan = true", "");
    let report = tenant.cycle(&config).await;
    let t = tenant.sim.snapshot();
    assert_eq!(t.scans.len(), 1, "{:?}", report.notes);
    assert_eq!(
        t.scans[0].file_paths,
        vec![r"*:\Users\user\Downloads\sample-1.exe".to_string()]
    );
    let body = &t.scans[0].body;
    for field in [
        "host_groups",
        "scan_inclusions",
        "scan_exclusions",
        "max_duration",
        "pause_duration",
        "endpoint_notification",
        "cloud_pup_adware_level_prevention",
        "mac_sensor_ml_level_detection",
    ] {
        assert!(body.get(field).is_some(), "{field} missing from {body}");
    }
}

#[tokio::test]
async fn entities_a_successful_answer_names_as_failed_stay_failed_and_are_retried() {
    let tenant = Tenant::start(scenario::single("malicious", true)).await;
    let t = tenant.sim.snapshot();
    let (good_alert, refused_alert) = (
        t.alerts[0].composite_id.clone(),
        t.alerts[1].composite_id.clone(),
    );
    let quarantine = t.quarantines[0].id.clone();
    let sha = t.alerts[0].sha256.clone();
    tenant.sim.edit(|w| {
        w.refused_entities.extend([
            refused_alert.clone(),
            quarantine.clone(),
            device(1),
            sha.clone(),
        ]);
    });
    let config = tenant.config("", "contain_host = true\ncreate_ioc = true", "");
    let report = tenant.cycle(&config).await;
    for kind in ["alert_update", "quarantine_update", "contain", "ioc_create"] {
        let counts = &report.actions[kind];
        assert_eq!(counts.failed, 1, "{kind}: {:?}", report.actions);
    }
    assert_eq!(report.actions["alert_update"].done, 1);
    let t = tenant.sim.snapshot();
    assert_eq!(t.alert(&good_alert).unwrap().comments.len(), 1);
    assert!(t.alert(&refused_alert).unwrap().comments.is_empty());
    assert!(t.quarantine(&quarantine).unwrap().actions.is_empty());
    assert!(!t.contained.contains(&device(1)) && t.contained.contains(&device(0)));

    // Falcon takes them now: the next cycle does what failed, and nothing twice.
    tenant.sim.edit(|w| w.refused_entities.clear());
    let report = tenant.cycle(&config).await;
    let t = tenant.sim.snapshot();
    assert_eq!(t.alert(&good_alert).unwrap().comments.len(), 1);
    assert_eq!(
        t.alert(&refused_alert).unwrap().comments.len(),
        1,
        "{report:?}"
    );
    assert_eq!(t.quarantine(&quarantine).unwrap().actions.len(), 1);
    assert!(t.contained.contains(&device(1)));
    assert!(t.iocs.iter().any(|i| i.value == sha));
}

#[tokio::test]
async fn an_outage_loses_nothing_the_next_cycle_acts_on_evidence_it_cannot_see_again() {
    let mut scenario = scenario::single("malicious", true);
    // Old enough that the second cycle's window no longer shows them.
    scenario::out_of_window(&mut scenario);
    let tenant = Tenant::start(scenario).await;
    let config = tenant.config("", "", "");
    let connector = crate::support::impatient_connector(&config);
    tenant.sim.set_faults(falcon_vmray_connector::sim::Faults {
        vmray_5xx_rate: 1.0,
        ..Default::default()
    });
    let report = connector
        .run_cycle(&CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(report.failed.len(), 1, "{}", report.summary());
    assert!(
        tenant
            .sim
            .snapshot()
            .alerts
            .iter()
            .all(|a| a.comments.is_empty())
    );

    tenant
        .sim
        .set_faults(falcon_vmray_connector::sim::Faults::default());
    let report = connector
        .run_cycle(&CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(
        (report.alerts, report.known),
        (0, 1),
        "{}",
        report.summary()
    );
    let t = tenant.sim.snapshot();
    assert!(t.alerts.iter().all(|a| a.comments.len() == 1));
    assert_eq!(t.quarantines[0].actions.len(), 1);

    let report = connector
        .run_cycle(&CancellationToken::new())
        .await
        .unwrap();
    // Only our own updates bring the alerts back; nothing is looked up or done again.
    assert_eq!(
        (report.already_done, report.known, report.failed.len()),
        (report.hashes, 0, 0),
        "{}",
        report.summary()
    );
}

#[tokio::test]
async fn an_upload_cut_short_by_a_crash_is_never_sent_twice() {
    use falcon_vmray_connector::falcon::{FalconClient, FalconSettings};
    use falcon_vmray_connector::state::StateStore;
    use falcon_vmray_connector::vmray::{SubmitOptions, VmrayClient, VmraySettings};

    for reached_vmray in [true, false] {
        let tenant = Tenant::start(scenario::single("malicious", false)).await;
        let config = tenant.config("", "", "");
        let sha: falcon_vmray_connector::model::Sha256 =
            tenant.sim.snapshot().alerts[0].sha256.parse().unwrap();
        if reached_vmray {
            // The upload went through just before the process died.
            let falcon =
                FalconClient::new(FalconSettings::from_config(&config.crowdstrike)).unwrap();
            let vmray = VmrayClient::new(VmraySettings::from_config(&config.vmray)).unwrap();
            let dir = tempfile::tempdir().unwrap();
            let file = falcon
                .download_sample(&sha, dir.path())
                .await
                .unwrap()
                .unwrap();
            vmray
                .submit(&file, &sha, &SubmitOptions::default())
                .await
                .unwrap();
        }
        // What the dead process left: the write-ahead record of an upload, nothing after it.
        let store = StateStore::open(&config.general.state_file).unwrap();
        store
            .record_submitting(&sha, "{}", None, time::OffsetDateTime::now_utc())
            .unwrap();
        drop(store);

        let report = tenant.cycle(&config).await;
        let t = tenant.sim.snapshot();
        assert_eq!(t.submissions.len(), 1, "reached_vmray={reached_vmray}");
        assert!(
            t.alerts.iter().all(|a| a.comments.len() == 1),
            "reached_vmray={reached_vmray}: {}",
            report.summary()
        );
    }
}

#[tokio::test]
async fn a_known_hash_is_acted_on_before_the_uploads_concurrency_queues_finish() {
    // `concurrency = 1` and 100 ms a request: five uploads one after the other take over a
    // second. A known hash needs none of them and is written back right after its lookup.
    let mut scenario = Scenario {
        hosts: scenario::hosts(1),
        ..Scenario::default()
    };
    for seed in 1..=5 {
        scenario.files.push(scenario::file(seed, "clean", false));
    }
    scenario.files.push(scenario::file(9, "malicious", true));
    scenario.alerts = (0..scenario.files.len())
        .map(|file| scenario::alert(file, 0))
        .collect();
    scenario.faults.latency_ms = 100;
    let tenant = Tenant::start(scenario).await;
    let config = tenant.config("concurrency = 1", "", "");
    let report = tenant.cycle(&config).await;
    assert_eq!(
        (report.known, report.submitted, report.failed.len()),
        (1, 5, 0),
        "{}",
        report.summary()
    );
    let t = tenant.sim.snapshot();
    let uploaded: Vec<&str> = t.submissions.iter().map(|s| s.sha256.as_str()).collect();
    let known = t
        .alerts
        .iter()
        .find(|a| !uploaded.contains(&a.sha256.as_str()))
        .unwrap();
    assert_eq!(known.comments.len(), 1, "{:?}", known.comments);
    let last_upload = t.submissions.iter().map(|s| s.created).max().unwrap();
    assert!(
        known.updated < last_upload,
        "the known hash's alert was updated at {}, after the last upload at {last_upload}",
        known.updated
    );
}

// What a collection costs when nothing is new: the figure behind the default `time_span` of a
// minute and behind the loader's minimum for a small Falcon budget (`config::budget`).

/// Falcon and VMRay requests the simulator saw so far.
fn requests_seen(tenant: &Tenant) -> (usize, usize) {
    use falcon_vmray_connector::sim::Service;
    let t = tenant.sim.snapshot();
    let to = |service| t.requests.iter().filter(|r| r.service == service).count();
    (to(Service::Falcon), to(Service::Vmray))
}

/// Runs a first cycle that does the work, then a second on the same connector (as the daemon
/// does, token kept) with nothing new; returns the second cycle's Falcon and VMRay requests.
async fn idle_cycle(
    tenant: &Tenant,
    config: &falcon_vmray_connector::config::Config,
) -> (usize, usize) {
    let connector = Connector::new(config.clone()).unwrap();
    let cancel = CancellationToken::new();
    let first = connector.run_cycle(&cancel).await.unwrap();
    assert!(first.failed.is_empty(), "{}", first.summary());
    let before = requests_seen(tenant);
    let second = connector.run_cycle(&cancel).await.unwrap();
    assert_eq!(second.hashes, 0, "{}", second.summary());
    let after = requests_seen(tenant);
    (after.0 - before.0, after.1 - before.1)
}

#[tokio::test]
async fn an_idle_collection_costs_one_falcon_query_per_source_and_nothing_at_vmray() {
    // A known malicious file, written back in the first cycle; its two alerts and quarantine
    // record were created before the second cycle's window, so that cycle finds nothing new.
    let mut busy = scenario::single("malicious", true);
    scenario::out_of_window(&mut busy);
    for (what, scenario, sources, expected) in [
        ("after a busy cycle, both sources", busy, "", 2),
        ("empty tenant, both sources", Scenario::default(), "", 2),
        (
            "empty tenant, alerts only",
            Scenario::default(),
            "selected_data_sources = [\"detect\"]",
            1,
        ),
    ] {
        let tenant = Tenant::start(scenario).await;
        let config = tenant.config("", sources, "");
        let (falcon, vmray) = idle_cycle(&tenant, &config).await;
        println!("idle collection ({what}): {falcon} Falcon request(s), {vmray} VMRay request(s)");
        assert_eq!(
            falcon,
            expected,
            "{what}: {}",
            tenant.sim.snapshot().render()
        );
        // The figure the loader's minimum time_span and the README use.
        assert_eq!(
            falcon as u64,
            falcon_vmray_connector::config::idle_collection_requests(&config),
            "{what}"
        );
        assert_eq!(vmray, 0, "{what}");
    }
}
