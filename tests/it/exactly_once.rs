//! Write-backs happen once and never over an analyst: the cases a review of the cycle found,
//! each on the simulator. (A status read before a long analysis, an alert carrying two files,
//! actions that failed outside their sample's run, a rejected IOC, a verdict not there yet, a
//! replay after a crash, a retry with resubmission on, a host behind several samples.)

use falcon_vmray_connector::sim::{Override, Service};
use falcon_vmray_connector::state::{JournalState, StateStore};

use crate::support::Tenant;
use crate::support::scenario::{self, device};

/// A Falcon answer of `status` with an error envelope, for every request whose path contains
/// `path`.
fn falcon_fails(path: &str, status: u16) -> Override {
    Override {
        status,
        ..Override::json(
            Service::Falcon,
            path,
            r#"{"meta":{},"resources":[],"errors":[{"code":500,"message":"internal error"}]}"#,
        )
    }
}

fn faults(overrides: Vec<Override>) -> falcon_vmray_connector::sim::Faults {
    falcon_vmray_connector::sim::Faults {
        overrides,
        ..Default::default()
    }
}

#[tokio::test]
async fn an_alert_an_analyst_takes_over_during_the_analysis_keeps_its_status() {
    let mut scenario = scenario::single("malicious", false);
    scenario.files[0].detonation.duration_ms = 2_000;
    let tenant = Tenant::start(scenario).await;
    let config = tenant.config("", "", "");
    let taken = tenant.sim.snapshot().alerts[0].composite_id.clone();
    let analyst = async {
        while tenant.sim.snapshot().submissions.is_empty() {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        tenant.sim.edit(|w| {
            let alert = w
                .alerts
                .iter_mut()
                .find(|a| a.composite_id == taken)
                .unwrap();
            alert.status = "closed".into();
        });
    };
    let (report, ()) = tokio::join!(tenant.cycle(&config), analyst);
    assert_eq!(report.finished, 1, "{}", report.summary());
    let t = tenant.sim.snapshot();
    let alert = t.alert(&taken).unwrap();
    assert_eq!(alert.status, "closed", "the analyst's status stands");
    assert_eq!(
        alert.comments.len(),
        1,
        "the verdict comment is still added"
    );
    let other = t.alerts.iter().find(|a| a.composite_id != taken).unwrap();
    assert_eq!(other.status, "in_progress");
}

#[tokio::test]
async fn an_alert_with_a_clean_and_a_malicious_file_is_never_closed() {
    let scenario = falcon_vmray_connector::sim::Scenario {
        hosts: scenario::hosts(1),
        files: vec![
            scenario::file(1, "clean", true),
            scenario::file(2, "malicious", true),
        ],
        alerts: vec![scenario::alert(0, 0)],
        quarantines: vec![scenario::quarantine(1, 0)],
        ..Default::default()
    };
    let tenant = Tenant::start(scenario).await;
    // The alert's own file is clean; the file it quarantined is malicious.
    tenant.sim.edit(|w| {
        let record = w.quarantines[0].id.clone();
        w.alerts[0].quarantined_files.push(record);
    });
    let config = tenant.config("", "close_clean_detection = true", "");
    let report = tenant.cycle(&config).await;
    assert_eq!(report.hashes, 2, "{}", report.summary());
    let t = tenant.sim.snapshot();
    let alert = &t.alerts[0];
    assert_eq!(alert.status, "in_progress", "{:?}", t.changes);
    assert_eq!(alert.comments.len(), 2, "one comment per file");
    assert!(
        !t.changes.iter().any(|c| c.contains("closed")),
        "{:?}",
        t.changes
    );
    assert!(report.notes.iter().any(|n| n.contains("left open")));
}

#[tokio::test]
async fn an_error_case_that_failed_is_opened_by_a_later_cycle() {
    let mut scenario = scenario::single("malicious", false);
    // Larger than VMRay accepts: a failure trying again would not change, so the connector
    // gives up on the sample at once and opens the error case.
    scenario.vmray_max_upload_bytes = 1024;
    let tenant = Tenant::start(scenario).await;
    let config = tenant.config("submit_or_download_error_open_case = true", "", "");
    let connector = crate::support::impatient_connector(&config);
    tenant
        .sim
        .set_faults(faults(vec![falcon_fails("/cases/entities/cases", 500)]));
    let cancel = tokio_util::sync::CancellationToken::new();
    let report = connector.run_cycle(&cancel).await.unwrap();
    assert_eq!(report.actions["case"].failed, 1, "{}", report.summary());
    assert!(tenant.sim.snapshot().cases.is_empty());

    tenant.sim.set_faults(faults(Vec::new()));
    let report = connector.run_cycle(&cancel).await.unwrap();
    assert_eq!(report.actions["case"].done, 1, "{}", report.summary());
    let t = tenant.sim.snapshot();
    assert_eq!(t.cases.len(), 1);
    assert!(
        t.submissions.is_empty(),
        "a refused sample is never uploaded"
    );
}

#[tokio::test]
async fn a_rejected_ioc_fails_only_its_own_sample() {
    let mut scenario = scenario::single("malicious", true);
    let mut other = scenario::file(2, "malicious", true);
    // Falcon refuses a domain with a space in it.
    other.detonation.iocs.domains[0].domain = "bad domain.example".into();
    scenario.files.push(other);
    scenario.alerts.push(scenario::alert(1, 1));
    let tenant = Tenant::start(scenario).await;
    let config = tenant.config("", "create_ioc = true\nioc_levels = [\"malicious\"]", "");
    let report = tenant.cycle(&config).await;
    let iocs = &report.actions["ioc_create"];
    assert_eq!((iocs.done, iocs.failed), (1, 1), "{}", report.summary());
    let t = tenant.sim.snapshot();
    let sha0 = t.alerts[0].sha256.clone();
    let sha1 = t.alerts[2].sha256.clone();
    assert!(t.iocs.iter().any(|i| i.value == sha0));
    assert!(
        t.iocs.iter().any(|i| i.value == sha1),
        "the rest of the failing sample's batch stands"
    );
    assert!(!t.iocs.iter().any(|i| i.value.contains(' ')));
}

#[tokio::test]
async fn a_known_hash_without_a_verdict_yet_is_acted_on_when_it_gets_one() {
    let mut scenario = scenario::single("malicious", true);
    scenario.files[0].vmray_known.as_mut().unwrap().verdict = "not_available".into();
    scenario::out_of_window(&mut scenario);
    let tenant = Tenant::start(scenario).await;
    let config = tenant.config("", "", "");
    let report = tenant.cycle(&config).await;
    assert_eq!(report.no_verdict, 1, "{}", report.summary());

    // VMRay has a verdict now; the alerts are out of the window, the saved evidence is not.
    tenant
        .sim
        .edit(|w| w.samples[0].known_verdict = Some("malicious".into()));
    let report = tenant.cycle(&config).await;
    assert_eq!(report.known, 1, "{}", report.summary());
    let t = tenant.sim.snapshot();
    assert!(t.alerts.iter().all(|a| a.comments.len() == 1));
}

#[tokio::test]
async fn a_lost_state_store_does_not_repeat_alert_comments() {
    let tenant = Tenant::start(scenario::single("malicious", true)).await;
    let config = tenant.config("", "", "");
    tenant.cycle(&config).await;
    std::fs::remove_file(&config.general.state_file).unwrap();
    let report = tenant.cycle(&config).await;
    let t = tenant.sim.snapshot();
    assert!(
        t.alerts.iter().all(|a| a.comments.len() == 1),
        "the landing mark on the alert is enough: {}",
        report.summary()
    );
    assert!(t.alerts.iter().all(|a| {
        a.tags.contains(&"VMRay_Malicious".to_string())
            && a.tags
                .contains(&format!("VMRay_Malicious_{}", &a.sha256[..12]))
    }));
}

#[tokio::test]
async fn a_retry_after_a_failed_write_back_does_not_resubmit() {
    let mut scenario = scenario::single("malicious", true);
    scenario::out_of_window(&mut scenario);
    let tenant = Tenant::start(scenario).await;
    // Due for resubmission on every look-up.
    let config = tenant.config("", "", "resubmit = true\nresubmit_after_days = 0");
    let connector = crate::support::impatient_connector(&config);
    tenant.sim.set_faults(faults(vec![falcon_fails(
        "/alerts/entities/alerts/v3",
        500,
    )]));
    let cancel = tokio_util::sync::CancellationToken::new();
    let report = connector.run_cycle(&cancel).await.unwrap();
    assert_eq!(report.submitted, 1, "{}", report.summary());
    assert!(report.actions["alert_update"].failed > 0);

    tenant.sim.set_faults(faults(Vec::new()));
    let report = connector.run_cycle(&cancel).await.unwrap();
    let t = tenant.sim.snapshot();
    assert_eq!(t.submissions.len(), 1, "{}", report.summary());
    assert!(t.alerts.iter().all(|a| a.comments.len() == 1));
}

#[tokio::test]
async fn a_crash_during_a_resubmission_does_not_take_the_old_analysis_for_the_new() {
    let tenant = Tenant::start(scenario::single("malicious", false)).await;
    let config = tenant.config("", "", "resubmit = true\nresubmit_after_days = 0");
    tenant.cycle(&config).await;
    let t = tenant.sim.snapshot();
    assert_eq!(t.submissions.len(), 1);
    let old = t.submissions[0].submission_id;
    let sha: falcon_vmray_connector::model::Sha256 = t.alerts[0].sha256.parse().unwrap();

    // A later process died while uploading the resubmission: VMRay never got it.
    let store = StateStore::open(&config.general.state_file).unwrap();
    store
        .record_submitting(&sha, "{}", Some(old), time::OffsetDateTime::now_utc())
        .unwrap();
    drop(store);
    let report = tenant.cycle(&config).await;
    let t = tenant.sim.snapshot();
    assert_eq!(t.submissions.len(), 2, "{}", report.summary());
    assert!(t.submissions[1].submission_id > old);
}

#[tokio::test]
async fn a_restart_does_not_repeat_a_quarantine_update_or_a_scan_that_landed() {
    let tenant = Tenant::start(scenario::single("malicious", true)).await;
    let config = tenant.config("", "on_demand_scan = true", "");
    tenant.cycle(&config).await;
    let t = tenant.sim.snapshot();
    assert_eq!(t.quarantines[0].actions.len(), 1);
    assert_eq!(t.scans.len(), 1);

    // The process died after the calls and before the journal said done.
    let store = StateStore::open(&config.general.state_file).unwrap();
    let sha = &t.quarantines[0].sha256;
    let keys = vec![
        format!("quarantine:{}:{sha}:malicious", t.quarantines[0].id),
        format!("scan:{sha}"),
    ];
    assert_eq!(
        store
            .done_keys(keys.iter().map(String::as_str))
            .unwrap()
            .len(),
        2
    );
    store.mark(&keys, JournalState::Planned, None).unwrap();
    drop(store);

    let report = tenant.cycle(&config).await;
    let t = tenant.sim.snapshot();
    assert_eq!(t.quarantines[0].actions.len(), 1, "{}", report.summary());
    assert_eq!(t.scans.len(), 1);
    assert!(report.notes.iter().any(|n| n.contains("not repeated")));
}

#[tokio::test]
async fn a_host_behind_several_samples_counts_once_against_the_containment_cap() {
    let scenario = falcon_vmray_connector::sim::Scenario {
        hosts: scenario::hosts(2),
        files: vec![
            scenario::file(1, "malicious", true),
            scenario::file(2, "malicious", true),
            scenario::file(3, "malicious", true),
        ],
        alerts: vec![
            scenario::alert(0, 0),
            scenario::alert(1, 0),
            scenario::alert(2, 1),
        ],
        ..Default::default()
    };
    let tenant = Tenant::start(scenario).await;
    let config = tenant.config("", "contain_host = true\ncontain_max_per_cycle = 2", "");
    let report = tenant.cycle(&config).await;
    let mut contained = tenant.sim.snapshot().contained;
    contained.sort();
    assert_eq!(
        contained,
        vec![device(0), device(1)],
        "{}",
        report.summary()
    );
    assert_eq!(report.actions["contain"].deferred, 0);
}

#[tokio::test]
async fn a_write_that_failed_without_landing_is_read_back_and_sent_once_more() {
    let tenant = Tenant::start(scenario::single("malicious", true)).await;
    let config = tenant.config("", "contain_host = true", "");
    let once = |path: &str| Override {
        times: Some(1),
        ..falcon_fails(path, 503)
    };
    tenant.sim.set_faults(faults(vec![
        once("/alerts/entities/alerts/v3"),
        once("/quarantine/entities/quarantined-files/v1"),
        once("/devices/entities/devices-actions/v2"),
    ]));
    let report = tenant.cycle(&config).await;
    for kind in ["alert_update", "quarantine_update", "contain"] {
        assert_eq!(
            report.actions[kind].failed,
            0,
            "{kind}: {}",
            report.summary()
        );
    }
    let t = tenant.sim.snapshot();
    let answered_503 = t.requests.iter().filter(|r| r.status == 503).count();
    assert_eq!(answered_503, 3, "each write failed once");
    assert!(t.alerts.iter().all(|a| a.comments.len() == 1));
    assert_eq!(t.quarantines[0].actions.len(), 1);
    assert_eq!(t.contained.len(), 3);
}

#[tokio::test]
async fn a_scan_whose_answer_was_lost_is_not_started_again_by_the_samples_retry() {
    let mut scenario = scenario::single("malicious", true);
    scenario::out_of_window(&mut scenario);
    let tenant = Tenant::start(scenario).await;
    let config = tenant.config("", "on_demand_scan = true", "");
    tenant.sim.set_faults(faults(vec![Override {
        times: Some(1),
        ..falcon_fails("/ods/entities/scans/v1", 503)
    }]));
    let report = tenant.cycle(&config).await;
    assert_eq!(report.actions["scan"].failed, 1, "{}", report.summary());
    tenant.cycle(&config).await;
    tenant.cycle(&config).await;
    let t = tenant.sim.snapshot();
    let scan_calls = t
        .requests
        .iter()
        .filter(|r| r.method == "POST" && r.path.starts_with("/ods/entities/scans/v1"))
        .count();
    assert_eq!(scan_calls, 1, "it may have started: never sent again");
    assert!(t.alerts.iter().all(|a| a.comments.len() == 1));
}

#[tokio::test]
async fn a_failed_update_for_an_earlier_verdict_never_lands_after_a_new_one() {
    let mut scenario = scenario::single("clean", true);
    scenario::out_of_window(&mut scenario);
    let tenant = Tenant::start(scenario).await;
    let config = tenant.config("", "close_clean_detection = true", "");
    let connector = crate::support::impatient_connector(&config);
    tenant.sim.set_faults(faults(vec![falcon_fails(
        "/alerts/entities/alerts/v3",
        500,
    )]));
    let cancel = tokio_util::sync::CancellationToken::new();
    let report = connector.run_cycle(&cancel).await.unwrap();
    assert!(
        report.actions["alert_update"].failed > 0,
        "{}",
        report.summary()
    );

    // VMRay now says malicious; the failed "clean, close it" must not be replayed.
    tenant
        .sim
        .edit(|w| w.samples[0].known_verdict = Some("malicious".into()));
    tenant.sim.set_faults(faults(Vec::new()));
    let report = connector.run_cycle(&cancel).await.unwrap();
    let t = tenant.sim.snapshot();
    for alert in &t.alerts {
        assert_ne!(alert.status, "closed", "{}", report.summary());
        assert_eq!(alert.comments.len(), 1, "{:?}", alert.comments);
        assert!(
            alert.comments[0].contains("Malicious"),
            "{:?}",
            alert.comments
        );
    }
    assert!(t.alerts.iter().any(|a| a.status == "in_progress"));
}
