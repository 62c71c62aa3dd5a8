//! A verdict is never lost: a submission with errors that still judged the sample, a report part
//! VMRay refuses, and a verdict-only API key all end with the verdict written back to Falcon.

use falcon_vmray_connector::pipeline::report::Step;
use falcon_vmray_connector::sim::{Faults, Override, Service};

use crate::support::Tenant;
use crate::support::scenario::{self, device};

/// `data` of a GET to the simulated VMRay with the tenant's key.
async fn vmray_get(tenant: &Tenant, path: &str) -> (u16, serde_json::Value) {
    let response = reqwest::Client::new()
        .get(format!("{}{path}", tenant.sim.vmray_url()))
        .header(
            "Authorization",
            format!("api_key {}", tenant.sim.credentials().api_key),
        )
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body: serde_json::Value = response.json().await.unwrap();
    (status, body["data"].clone())
}

/// What the simulated VMRay says about the tenant's only submission: the submission and the
/// result codes of its analyses.
async fn only_submission(tenant: &Tenant) -> (serde_json::Value, Vec<u64>) {
    let id = tenant.sim.snapshot().submissions[0].submission_id;
    let (_, submission) = vmray_get(tenant, &format!("/rest/submission/{id}")).await;
    let (_, analyses) = vmray_get(tenant, &format!("/rest/analysis/submission/{id}")).await;
    let mut codes: Vec<u64> = analyses
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["analysis_result_code"].as_u64().unwrap())
        .collect();
    codes.sort();
    (submission, codes)
}

/// Every alert of the tenant carries the verdict's comment and a status changed from `new`,
/// and the quarantined file is kept: the write-back of a harmful verdict.
fn assert_written_back(tenant: &Tenant, verdict_title: &str) {
    let t = tenant.sim.snapshot();
    for alert in &t.alerts {
        assert_eq!(alert.status, "in_progress", "{}", alert.composite_id);
        assert_eq!(alert.comments.len(), 1, "{:?}", alert.comments);
        assert!(
            alert.comments[0].starts_with(&format!("[VMRay] Verdict: {verdict_title} |")),
            "{}",
            alert.comments[0]
        );
    }
    let q = &t.quarantines[0];
    assert_eq!(q.actions.len(), 1, "{:?}", q.actions);
    assert_eq!(q.actions[0].action, "unrelease");
}

#[tokio::test]
async fn a_submission_with_errors_whose_sample_has_a_verdict_is_written_back_like_a_clean_run() {
    let mut scenario = scenario::single("malicious", false);
    scenario.files[0].detonation.partial_failure = true;
    let tenant = Tenant::start(scenario).await;
    let config = tenant.config("", "", "");
    let report = tenant.cycle(&config).await;
    // The simulator finished it as VMRay does when one VM of two fails.
    let (submission, codes) = only_submission(&tenant).await;
    assert_eq!(submission["submission_has_errors"], true);
    assert_eq!(submission["submission_status"], "error");
    assert_eq!(submission["submission_verdict"], "malicious");
    assert_eq!(codes, vec![1, 5]);

    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert_eq!(report.finished, 1, "{}", report.summary());
    assert_written_back(&tenant, "Malicious");
    let t = tenant.sim.snapshot();
    assert!(
        t.iocs.iter().any(|i| i.ioc_type == "domain"),
        "the report's IOCs are created too: {:?}",
        t.iocs
    );
    assert!(
        report
            .notes
            .iter()
            .any(|n| n.contains("had errors") && n.contains("malicious")),
        "{:?}",
        report.notes
    );
    // Nothing is left for a retry: the sample is finished.
    let store =
        falcon_vmray_connector::state::StateStore::open(&config.general.state_file).unwrap();
    let sha = t.alerts[0].sha256.parse().unwrap();
    let record = store.sample(&sha).unwrap().unwrap();
    assert_eq!(record.verdict.as_deref(), Some("malicious"));
    assert!(record.evidence_json.is_none(), "{record:?}");
}

#[tokio::test]
async fn a_submission_that_ends_without_a_verdict_keeps_its_evidence_and_is_retried() {
    let mut scenario = scenario::single("malicious", false);
    scenario.files[0].detonation.fails = true;
    // The second cycle no longer sees the alerts: only the saved evidence brings them back.
    scenario::out_of_window(&mut scenario);
    let tenant = Tenant::start(scenario).await;
    let config = tenant.config("", "", "");
    let report = tenant.cycle(&config).await;
    let (submission, codes) = only_submission(&tenant).await;
    assert_eq!(submission["submission_has_errors"], true);
    assert_eq!(submission["submission_verdict"], serde_json::Value::Null);
    assert_eq!(codes, vec![5]);
    let steps: Vec<Step> = report.failed.iter().map(|f| f.step).collect();
    assert_eq!(steps, vec![Step::Analysis], "{}", report.summary());
    assert!(
        report.failed[0].reason.contains("without a verdict"),
        "{}",
        report.failed[0].reason
    );
    let t = tenant.sim.snapshot();
    assert!(t.alerts.iter().all(|a| a.comments.is_empty()));

    // VMRay judges the sample later (an analyst had it analysed again).
    let sha = t.alerts[0].sha256.clone();
    tenant.sim.edit(|w| {
        let sample = w.samples.iter_mut().find(|s| s.sha256 == sha).unwrap();
        sample.known_verdict = Some("malicious".into());
        sample.known_analysed = Some(time::OffsetDateTime::now_utc());
    });
    let report = tenant.cycle(&config).await;
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert_written_back(&tenant, "Malicious");
    assert_eq!(
        tenant.sim.snapshot().submissions.len(),
        1,
        "a retry looks the sample up again and never resubmits it"
    );
}

/// VMRay's error answer of `status` for every request whose path contains `path`.
fn vmray_refuses(path: &str, status: u16) -> Override {
    Override {
        status,
        ..Override::json(
            Service::Vmray,
            path,
            r#"{"result": "error", "error_msg": "Permission denied"}"#,
        )
    }
}

#[tokio::test]
async fn a_refused_ioc_or_vti_report_costs_only_that_part_and_every_write_back_happens() {
    // Two known malicious samples (VMRay ids 5001 and 5002), on hosts 0 to 2.
    let mut scenario = scenario::single("malicious", true);
    scenario.files.push(scenario::file(2, "malicious", true));
    scenario.alerts.push(scenario::alert(1, 1));
    scenario.quarantines.push(scenario::quarantine(1, 0));
    let tenant = Tenant::start(scenario).await;
    tenant.sim.set_faults(Faults {
        overrides: vec![
            vmray_refuses("/rest/sample/5001/iocs", 403),
            vmray_refuses("/rest/sample/5002/vtis", 500),
        ],
        ..Faults::default()
    });
    let config = tenant.config("", "contain_host = true", "");
    let connector = crate::support::impatient_connector(&config);
    let report = connector
        .run_cycle(&tokio_util::sync::CancellationToken::new())
        .await
        .unwrap();
    assert!(report.failed.is_empty(), "{:?}", report.failed);

    let t = tenant.sim.snapshot();
    // Alerts 0 and 1 are about the first file, alert 2 about the second.
    let (first, second) = (t.alerts[0].sha256.clone(), t.alerts[2].sha256.clone());
    assert_ne!(first, second);
    for alert in &t.alerts {
        assert_eq!(alert.status, "in_progress", "{}", alert.composite_id);
        assert_eq!(alert.comments.len(), 1, "{:?}", alert.comments);
        let comment = &alert.comments[0];
        assert!(
            comment.starts_with("[VMRay] Verdict: Malicious |"),
            "{comment}"
        );
        // The sample whose VTIs failed is commented without them, the other with them.
        assert_eq!(
            comment.contains("Persistence"),
            alert.sha256 == first,
            "{comment}"
        );
    }
    assert_eq!(t.quarantines.len(), 2);
    assert!(
        t.quarantines
            .iter()
            .all(|q| q.actions.len() == 1 && q.actions[0].action == "unrelease"),
        "{:?}",
        t.quarantines
    );
    let mut contained = t.contained.clone();
    contained.sort();
    assert_eq!(contained, vec![device(0), device(1), device(2)]);
    // Without its IOC report the first sample gets only its own hash as an IOC.
    let values: Vec<&str> = t.iocs.iter().map(|i| i.value.as_str()).collect();
    assert!(values.contains(&first.as_str()), "{values:?}");
    assert!(!values.contains(&"c2-1.example"), "{values:?}");
    assert!(
        values.contains(&second.as_str()) && values.contains(&"c2-2.example"),
        "{values:?}"
    );

    let noted = |sha: &str, part: &str| {
        report
            .notes
            .iter()
            .any(|n| n.starts_with(sha) && n.contains(part))
    };
    assert!(
        noted(&first, "IOC report could not be read"),
        "{:?}",
        report.notes
    );
    assert!(noted(&first, "403"), "{:?}", report.notes);
    assert!(
        noted(&second, "(VTIs) could not be read"),
        "{:?}",
        report.notes
    );
}

#[tokio::test]
async fn a_verdict_key_asks_for_no_report_and_still_writes_every_verdict_back() {
    // A known sample (VMRay id 5001) and one the run submits, both malicious.
    let mut scenario = scenario::single("malicious", true);
    scenario.files.push(scenario::file(2, "malicious", false));
    scenario.alerts.push(scenario::alert(1, 1));
    scenario.quarantines.push(scenario::quarantine(1, 0));
    scenario.vmray_verdict_key = true;
    let tenant = Tenant::start(scenario).await;
    // The simulated verdict key may read the sample, not its reports.
    assert_eq!(vmray_get(&tenant, "/rest/sample/5001").await.0, 200);
    for report in [
        "/rest/sample/5001/iocs/verdict/malicious",
        "/rest/sample/5001/vtis",
    ] {
        assert_eq!(vmray_get(&tenant, report).await.0, 403, "{report}");
    }
    let asked_before = tenant.sim.snapshot().requests.len();

    let config = tenant.config("", "contain_host = true", "api_key_type = \"verdict\"");
    let report = tenant.cycle(&config).await;
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert_eq!(
        (report.known, report.submitted),
        (1, 1),
        "{}",
        report.summary()
    );
    assert!(
        report
            .notes
            .iter()
            .all(|n| !n.contains("could not be read")),
        "{:?}",
        report.notes
    );

    let t = tenant.sim.snapshot();
    let reports: Vec<&str> = t.requests[asked_before..]
        .iter()
        .filter(|r| r.service == Service::Vmray)
        .map(|r| r.path.as_str())
        .filter(|p| p.contains("/iocs") || p.contains("/vtis"))
        .collect();
    assert!(reports.is_empty(), "a verdict key asked for {reports:?}");
    for alert in &t.alerts {
        assert_eq!(alert.status, "in_progress", "{}", alert.composite_id);
        assert_eq!(alert.comments.len(), 1, "{:?}", alert.comments);
        let comment = &alert.comments[0];
        assert!(
            comment.starts_with("[VMRay] Verdict: Malicious |"),
            "{comment}"
        );
        assert!(!comment.contains("Threat Indicators"), "{comment}");
    }
    assert!(
        t.quarantines
            .iter()
            .all(|q| q.actions.len() == 1 && q.actions[0].action == "unrelease"),
        "{:?}",
        t.quarantines
    );
    let mut contained = t.contained.clone();
    contained.sort();
    assert_eq!(contained, vec![device(0), device(1), device(2)]);
    // Each sample's own hash is still an IOC; nothing from a report is.
    let mut iocs: Vec<(&str, &str)> = t
        .iocs
        .iter()
        .map(|i| (i.ioc_type.as_str(), i.value.as_str()))
        .collect();
    iocs.sort();
    let mut own: Vec<(&str, &str)> = vec![
        ("sha256", t.alerts[0].sha256.as_str()),
        ("sha256", t.alerts[2].sha256.as_str()),
    ];
    own.sort();
    assert_eq!(iocs, own);
}
