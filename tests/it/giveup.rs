//! When the connector keeps trying and when it gives up: a slow analysis stays in flight past
//! `analysis_job_timeout`, and only `give_up_after` (never a count of cycles) gives a sample up;
//! a write-back is given up only when its entity is gone or Falcon refused it for that long,
//! never for an outage.

use std::time::{Duration, Instant};

use falcon_vmray_connector::config::Config;
use falcon_vmray_connector::pipeline::report::Step;
use falcon_vmray_connector::sim::{Scenario, TenantSnapshot};
use falcon_vmray_connector::state::{SampleState, StateStore};

use crate::support::Tenant;
use crate::support::scenario::{self, alert, file, hosts, quarantine};

/// Write-backs the tenant shows (an alert commented, a quarantine record acted on) and how many
/// its evidence calls for.
fn write_backs(t: &TenantSnapshot) -> (usize, usize) {
    let done = t.alerts.iter().filter(|a| !a.comments.is_empty()).count()
        + t.quarantines
            .iter()
            .filter(|q| !q.actions.is_empty())
            .count();
    (done, t.alerts.len() + t.quarantines.len())
}

fn store(config: &Config) -> StateStore {
    StateStore::open(&config.general.state_file).unwrap()
}

/// Moves a time column of every sample row back a year, as if that much time had passed: the
/// give-up bound is tested without waiting for it, and without depending on how fast cycles run.
fn age(config: &Config, column: &str) {
    let conn = rusqlite::Connection::open(&config.general.state_file).unwrap();
    let changed = conn
        .execute(
            &format!(
                "UPDATE samples SET {column} = '2025-12-01T00:00:00Z' WHERE {column} IS NOT NULL"
            ),
            [],
        )
        .unwrap();
    assert!(changed > 0, "no {column} to age");
}

/// `hashes` unknown files, each behind 3 alerts and a quarantine record, analysed for
/// `analysis_ms` plus up to half as much again; out of the collection window after the first
/// cycle, so later cycles know them only from the evidence the state store kept.
fn slow_scenario(hashes: usize, analysis_ms: u64) -> Scenario {
    let mut scenario = Scenario {
        hosts: hosts(10),
        ..Scenario::default()
    };
    for n in 0..hashes {
        let mut f = file(200 + n as u64, ["malicious", "clean"][n % 2], false);
        f.detonation.duration_ms = analysis_ms + (n as u64 * 397) % (analysis_ms / 2 + 1);
        scenario.files.push(f);
        for a in 0..3 {
            scenario.alerts.push(alert(n, (n + a) % 10));
        }
        scenario.quarantines.push(quarantine(n, (n + 3) % 10));
    }
    scenario::out_of_window(&mut scenario);
    scenario
}

#[tokio::test]
async fn an_analysis_that_outlasts_analysis_job_timeout_stays_in_flight_and_is_acted_on_later() {
    let mut scenario = scenario::single("malicious", false);
    scenario.files[0].detonation.duration_ms = 2_500;
    scenario::out_of_window(&mut scenario);
    let tenant = Tenant::start(scenario).await;
    let config = tenant.config(
        "submit_or_download_error_open_case = true",
        "",
        "analysis_job_timeout = 1",
    );
    let report = tenant.cycle(&config).await;
    assert_eq!(
        (
            report.still_analysing,
            report.submitted,
            report.failed.len()
        ),
        (1, 1, 0),
        "{}",
        report.summary()
    );
    let t = tenant.sim.snapshot();
    assert!(t.cases.is_empty(), "no error case for a slow analysis");
    assert_eq!(write_backs(&t).0, 0);
    let waiting = store(&config).in_flight().unwrap();
    assert_eq!(waiting.len(), 1);
    assert_eq!(waiting[0].state, SampleState::Submitted);
    assert!(waiting[0].evidence_json.is_some(), "its evidence is kept");

    // Later cycles (each a fresh process, as after a restart) poll it until VMRay is done.
    let started = Instant::now();
    let mut cycles = 1;
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let report = tenant.cycle(&config).await;
        cycles += 1;
        assert!(report.failed.is_empty(), "{}", report.summary());
        if report.finished == 1 {
            break;
        }
        assert_eq!(report.still_analysing, 1, "{}", report.summary());
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "never acted on"
        );
    }
    assert!(cycles > 2, "polled by more than one later cycle");
    let t = tenant.sim.snapshot();
    assert_eq!(
        write_backs(&t),
        (3, 3),
        "every alert and record written back"
    );
    assert!(t.alerts.iter().all(|a| a.comments.len() == 1));
    assert_eq!(t.submissions.len(), 1, "never resubmitted");
    assert!(t.cases.is_empty());
    assert!(store(&config).in_flight().unwrap().is_empty());
}

#[tokio::test]
async fn an_analysis_still_running_after_give_up_after_is_given_up_and_only_then_gets_its_case() {
    let mut scenario = scenario::single("malicious", false);
    scenario.files[0].detonation.duration_ms = 600_000;
    scenario::out_of_window(&mut scenario);
    let tenant = Tenant::start(scenario).await;
    let config = tenant.config(
        "submit_or_download_error_open_case = true\ngive_up_after = 3600",
        "",
        "analysis_job_timeout = 1",
    );
    let report = tenant.cycle(&config).await;
    assert_eq!(report.still_analysing, 1, "{}", report.summary());
    assert!(tenant.sim.snapshot().cases.is_empty());

    // Submitted a year ago, as far as the connector knows: past the bound.
    age(&config, "submitted_at");
    let report = tenant.cycle(&config).await;
    assert_eq!(report.failed.len(), 1, "{}", report.summary());
    assert_eq!(report.failed[0].step, Step::Timeout);
    assert!(
        report.failed[0].reason.contains("give_up_after = 3600 s"),
        "{}",
        report.failed[0].reason
    );
    let t = tenant.sim.snapshot();
    assert_eq!(t.cases.len(), 1, "the error case, once given up");
    assert!(t.cases[0].name.contains("could not analyse"));

    let report = tenant.cycle(&config).await;
    assert_eq!(report.hashes, 0, "given up: {}", report.summary());
    let t = tenant.sim.snapshot();
    assert_eq!((t.cases.len(), t.submissions.len()), (1, 1));
}

/// The figure in RELIABILITY.md: 10 samples analysed for 8-12 s with `analysis_job_timeout` =
/// 3; cycles run every second until every write-back landed (or 40 s passed).
#[tokio::test]
async fn analyses_slower_than_analysis_job_timeout_lose_no_write_back() {
    let tenant = Tenant::start(slow_scenario(10, 8_000)).await;
    let config = tenant.config("", "", "analysis_job_timeout = 3");
    let started = Instant::now();
    let mut cycles = 0;
    let (done, expected) = loop {
        let report = tenant.cycle(&config).await;
        cycles += 1;
        let (done, expected) = write_backs(&tenant.sim.snapshot());
        if done == expected || started.elapsed() > Duration::from_secs(40) {
            println!("slow analyses: last cycle {}", report.summary());
            break (done, expected);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let t = tenant.sim.snapshot();
    println!(
        "slow analyses: {done} of {expected} write-backs after {cycles} cycles in {:.1} s, {} submissions",
        started.elapsed().as_secs_f64(),
        t.submissions.len()
    );
    assert_eq!(done, expected);
    assert_eq!(t.submissions.len(), 10, "never resubmitted");
    assert!(t.alerts.iter().all(|a| a.comments.len() == 1));
}

/// Known and unknown samples, 3 alerts and a quarantine record each, out of the collection
/// window after the first cycle.
fn outage_scenario() -> Scenario {
    let mut scenario = slow_scenario(4, 200);
    for n in 0..3 {
        let index = scenario.files.len();
        scenario.files.push(file(
            300 + n,
            ["malicious", "suspicious", "clean"][n as usize],
            true,
        ));
        for a in 0..3 {
            scenario.alerts.push(alert(index, (index + a) % 10));
        }
        scenario
            .quarantines
            .push(quarantine(index, (index + 3) % 10));
    }
    scenario::out_of_window(&mut scenario);
    scenario
}

/// The figure in RELIABILITY.md: VMRay refuses the API key for 15 cycles (more than the 10
/// failures after which samples used to be dropped), then takes it again.
#[tokio::test]
async fn an_outage_of_fifteen_cycles_loses_no_write_back_and_gives_nothing_up() {
    use falcon_vmray_connector::pipeline::blame::Blame;
    use falcon_vmray_connector::sim::Faults;
    let tenant = Tenant::start(outage_scenario()).await;
    let config = tenant.config("submit_or_download_error_open_case = true", "", "");
    let connector = crate::support::impatient_connector(&config);
    let cycle = || async {
        connector
            .run_cycle(&tokio_util::sync::CancellationToken::new())
            .await
            .unwrap()
    };
    tenant.sim.set_faults(Faults {
        vmray_key_refused: true,
        ..Faults::default()
    });
    for n in 1..=15 {
        let report = cycle().await;
        assert_eq!(report.hashes, 7, "cycle {n}: {}", report.summary());
        assert!(
            report.failed.iter().all(|f| f.blame == Blame::Service),
            "cycle {n}: {:?}",
            report.failed
        );
        assert!(report.stalled(), "cycle {n} did not complete");
        assert_eq!(report.given_up, 0, "cycle {n}: {}", report.summary());
    }
    let refused = tenant.sim.snapshot().counters.unauthorized;
    assert!(
        refused >= 15 * 7,
        "the simulator refused the key: {refused}"
    );
    tenant.sim.set_faults(Faults::default());
    let report = cycle().await;
    let t = tenant.sim.snapshot();
    let (done, expected) = write_backs(&t);
    println!(
        "outage: {done} of {expected} write-backs after 15 cycles of VMRay refusing the key \
         ({refused} requests refused) and one after; {}",
        report.summary()
    );
    assert_eq!(done, expected, "{}", report.summary());
    assert!(t.alerts.iter().all(|a| a.comments.len() == 1));
    assert_eq!(t.submissions.len(), 4, "each unknown sample submitted once");
    assert!(t.cases.is_empty(), "nothing was given up");
}

/// The figure in RELIABILITY.md: for 15 cycles every VMRay path answers 404 with an HTML page
/// (vmray.url pointing at a web server, not VMRay's REST API), with `give_up_after` = 1 s, far
/// shorter than the outage; then VMRay answers again. A 404 page says nothing about any sample:
/// no outage cycle completes, nothing is given up, and every write-back lands after.
#[tokio::test]
async fn vmray_answering_404_pages_for_fifteen_cycles_gives_nothing_up_and_loses_no_write_back() {
    use falcon_vmray_connector::pipeline::blame::Blame;
    use falcon_vmray_connector::sim::{Faults, Override, Service};
    let tenant = Tenant::start(outage_scenario()).await;
    let config = tenant.config(
        "submit_or_download_error_open_case = true\ngive_up_after = 1",
        "",
        "",
    );
    let connector = crate::support::impatient_connector(&config);
    let cycle = || async {
        connector
            .run_cycle(&tokio_util::sync::CancellationToken::new())
            .await
            .unwrap()
    };
    tenant.sim.set_faults(Faults {
        overrides: vec![Override {
            service: Service::Vmray,
            path_contains: "/".into(),
            status: 404,
            content_type: "text/html".into(),
            body: b"<html><head><title>404 Not Found</title></head><body><h1>Not Found</h1>\
                    </body></html>"
                .to_vec(),
            times: None,
        }],
        ..Faults::default()
    });
    let started = Instant::now();
    let (mut completed, mut given_up, mut own, mut hashes) = (0, 0, Vec::new(), Vec::new());
    for n in 1..=15 {
        let report = cycle().await;
        hashes.push(report.hashes);
        completed += usize::from(!report.stalled());
        given_up += report.given_up;
        own.extend(
            report
                .failed
                .into_iter()
                .filter(|f| f.blame != Blame::Service),
        );
        if n == 1 && started.elapsed() < Duration::from_millis(1_100) {
            // Past give_up_after for every failure that would count.
            tokio::time::sleep(Duration::from_millis(1_100)).await;
        }
    }
    tenant.sim.set_faults(Faults::default());
    let report = cycle().await;
    let t = tenant.sim.snapshot();
    let (done, expected) = write_backs(&t);
    println!(
        "404 pages: {done} of {expected} write-backs after 15 cycles of every VMRay path \
         answering 404 with an HTML page (give_up_after = 1 s; {completed} outage cycles \
         completed, {given_up} samples given up) and one after; {}",
        report.summary()
    );
    assert!(
        hashes.iter().all(|&h| h == 7),
        "samples per cycle: {hashes:?}"
    );
    assert!(own.is_empty(), "blamed on the sample: {own:?}");
    assert_eq!((completed, given_up), (0, 0));
    assert_eq!(done, expected, "{}", report.summary());
    assert!(t.alerts.iter().all(|a| a.comments.len() == 1));
    assert_eq!(t.submissions.len(), 4, "each unknown sample submitted once");
    assert!(t.cases.is_empty(), "nothing was given up");
}

#[tokio::test]
async fn a_sample_failing_on_its_own_is_given_up_after_give_up_after_with_its_case() {
    let mut scenario = scenario::single("malicious", false);
    scenario.files[0].in_sample_store = false;
    scenario::out_of_window(&mut scenario);
    let tenant = Tenant::start(scenario).await;
    let config = tenant.config(
        "submit_or_download_error_open_case = true\ngive_up_after = 3600",
        "",
        "",
    );
    // Many more cycles than the old count of 10, within the bound: kept.
    for n in 1..=12 {
        let report = tenant.cycle(&config).await;
        assert_eq!(
            (report.failed.len(), report.given_up),
            (1, 0),
            "cycle {n}: {}",
            report.summary()
        );
    }
    assert!(tenant.sim.snapshot().cases.is_empty());
    // Failing since a year ago: past the bound.
    age(&config, "failing_since");
    let report = tenant.cycle(&config).await;
    assert_eq!(report.given_up, 1, "{}", report.summary());
    assert_eq!(report.failed[0].step, Step::Download);
    assert!(
        report.failed[0].reason.contains("give_up_after (3600 s)"),
        "{}",
        report.failed[0].reason
    );
    assert!(
        report
            .notes
            .iter()
            .any(|n| n.contains("given up at download (give_up_after)")),
        "{:?}",
        report.notes
    );
    let t = tenant.sim.snapshot();
    assert_eq!(t.cases.len(), 1);
    assert!(t.cases[0].name.contains("could not analyse"));
    let report = tenant.cycle(&config).await;
    assert_eq!(report.hashes, 0, "given up: {}", report.summary());
}

#[tokio::test]
async fn a_cycle_that_cannot_poll_its_submissions_in_flight_is_not_completed_and_keeps_them() {
    use falcon_vmray_connector::pipeline::blame::Blame;
    use falcon_vmray_connector::sim::Faults;
    let mut scenario = scenario::single("malicious", false);
    scenario.files[0].detonation.duration_ms = 2_000;
    scenario::out_of_window(&mut scenario);
    let tenant = Tenant::start(scenario).await;
    let config = tenant.config(
        "submit_or_download_error_open_case = true\ngive_up_after = 3600",
        "",
        "analysis_job_timeout = 1",
    );
    let connector = crate::support::impatient_connector(&config);
    let cycle = || async {
        connector
            .run_cycle(&tokio_util::sync::CancellationToken::new())
            .await
            .unwrap()
    };
    assert_eq!(cycle().await.still_analysing, 1);

    // VMRay refuses the key past give_up_after: the submission is neither polled nor given up.
    tenant.sim.set_faults(Faults {
        vmray_key_refused: true,
        ..Faults::default()
    });
    age(&config, "submitted_at");
    let report = cycle().await;
    assert!(report.stalled(), "{}", report.summary());
    assert_eq!(report.failed.len(), 1, "{}", report.summary());
    assert_eq!(report.failed[0].blame, Blame::Service);
    assert_eq!(report.given_up, 0);
    let waiting = store(&config).in_flight().unwrap();
    assert_eq!(waiting.len(), 1, "still in flight");
    assert_eq!(waiting[0].state, SampleState::Submitted);

    // VMRay finished meanwhile: its verdict is acted on, though past the bound.
    tenant.sim.set_faults(Faults::default());
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    let report = cycle().await;
    assert_eq!(report.finished, 1, "{}", report.summary());
    let t = tenant.sim.snapshot();
    assert_eq!(write_backs(&t), (3, 3));
    assert_eq!((t.submissions.len(), t.cases.len()), (1, 0));
}

/// The end-of-cycle IOC creation is shared by every sample, but counts only against a sample
/// whose own IOC Falcon refused: a sample whose IOCs' request only met a 5xx starts no clock.
#[tokio::test]
async fn an_ioc_batch_counts_only_against_the_sample_whose_own_ioc_was_refused() {
    use falcon_vmray_connector::sim::{Faults, Override, Service};
    // 100 IOCs a sample (Falcon's batch size): each sample's IOCs are a request of their own.
    let mut files = vec![file(1, "malicious", true), file(2, "malicious", true)];
    for (seed, f) in (1..).zip(&mut files) {
        f.detonation.iocs.domains.extend((0..96).map(|n| {
            falcon_vmray_connector::sim::scenario::IocDomain {
                domain: format!("extra-{n}-of-{seed}.example"),
                verdict: "malicious".into(),
            }
        }));
    }
    let tenant = Tenant::start(Scenario {
        hosts: hosts(2),
        files,
        alerts: vec![alert(0, 0), alert(1, 1)],
        ..Scenario::default()
    })
    .await;
    let t = tenant.sim.snapshot();
    let sha_of = |file: usize| {
        t.alerts
            .iter()
            .find(|a| a.device_id == scenario::device(file))
            .unwrap()
            .sha256
            .clone()
    };
    // Batches go in the order of the samples' hashes.
    let (first, second) = if sha_of(0) < sha_of(1) {
        (0, 1)
    } else {
        (1, 0)
    };
    let (refused, failed) = (sha_of(first), sha_of(second));
    tenant.sim.edit(|w| {
        w.refused_entities.insert(refused.clone());
    });
    tenant.sim.set_faults(Faults {
        overrides: vec![Override {
            service: Service::Falcon,
            path_contains: format!("c2-{}.example", second + 1),
            status: 503,
            content_type: "application/json".into(),
            body: br#"{"meta":{},"resources":[],"errors":[{"code":503,"message":"Service Unavailable"}]}"#
                .to_vec(),
            times: None,
        }],
        ..Faults::default()
    });
    let config = tenant.config("give_up_after = 3600", "", "");
    let connector = crate::support::impatient_connector(&config);
    let report = connector
        .run_cycle(&tokio_util::sync::CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(
        report.actions["ioc_create"].failed,
        2,
        "{}",
        report.summary()
    );
    let since = |sha: &str| {
        let record = store(&config)
            .sample(&sha.parse().unwrap())
            .unwrap()
            .unwrap();
        (record.state, record.failing_since.is_some())
    };
    assert_eq!(
        since(&refused),
        (SampleState::Failed, true),
        "its own IOC refused"
    );
    assert_eq!(
        since(&failed),
        (SampleState::Failed, false),
        "only a 5xx: no clock"
    );
}

/// A sample uploaded by this cycle whose submission then cannot be polled at all still counts
/// as submitted by this cycle: the upload happened.
#[tokio::test]
async fn a_fresh_upload_whose_polls_go_unanswered_is_reported_as_submitted() {
    use falcon_vmray_connector::pipeline::blame::Blame;
    use falcon_vmray_connector::sim::{Faults, Override, Service};
    let mut scenario = scenario::single("malicious", false);
    scenario::out_of_window(&mut scenario);
    let tenant = Tenant::start(scenario).await;
    let config = tenant.config("give_up_after = 3600", "", "analysis_job_timeout = 1");
    tenant.sim.set_faults(Faults {
        overrides: vec![Override {
            service: Service::Vmray,
            path_contains: "/rest/submission/".into(),
            status: 503,
            content_type: "application/json".into(),
            body: br#"{"result":"error","error_msg":"Service Unavailable"}"#.to_vec(),
            times: None,
        }],
        ..Faults::default()
    });
    let connector = crate::support::impatient_connector(&config);
    let report = connector
        .run_cycle(&tokio_util::sync::CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(tenant.sim.snapshot().submissions.len(), 1, "uploaded");
    assert_eq!(report.submitted, 1, "{}", report.summary());
    assert_eq!(report.failed.len(), 1, "{}", report.summary());
    assert_eq!(report.failed[0].blame, Blame::Service);
    assert!(
        report.failed[0]
            .reason
            .contains("no poll of the submission was answered"),
        "{}",
        report.summary()
    );
}

/// The figure in RELIABILITY.md: after VMRay gave its verdicts, Falcon answers 503 to every
/// alert and quarantine update for 15 cycles (more than the 10 failed attempts after which a
/// write-back used to be dropped), with `give_up_after` = 2 s, far shorter than the outage; then
/// it takes them again. An outage never counts against a write-back, by cycles or by time.
#[tokio::test]
async fn falcon_refusing_write_backs_for_fifteen_cycles_gives_no_write_back_up() {
    use falcon_vmray_connector::sim::{Faults, Override, Service};
    let tenant = Tenant::start(outage_scenario()).await;
    let config = tenant.config("give_up_after = 2", "", "");
    let connector = crate::support::impatient_connector(&config);
    let cycle = || async {
        connector
            .run_cycle(&tokio_util::sync::CancellationToken::new())
            .await
            .unwrap()
    };
    let unavailable = |path: &str| Override {
        service: Service::Falcon,
        path_contains: path.into(),
        status: 503,
        content_type: "application/json".into(),
        body:
            br#"{"meta":{},"resources":[],"errors":[{"code":503,"message":"Service Unavailable"}]}"#
                .to_vec(),
        times: None,
    };
    tenant.sim.set_faults(Faults {
        overrides: vec![
            unavailable("/alerts/entities/alerts/v3"),
            unavailable("/quarantine/entities/quarantined-files/v1"),
        ],
        ..Faults::default()
    });
    let started = Instant::now();
    let mut failed = 0;
    for n in 1..=15 {
        let report = cycle().await;
        let updates = &report.actions["alert_update"];
        assert!(updates.failed > 0, "cycle {n}: {}", report.summary());
        assert_eq!(updates.done, 0, "cycle {n}: {}", report.summary());
        // The first cycle created the IOCs (their endpoint answers); in the later ones verdicts
        // were read and no write-back landed: not completed cycles.
        assert_eq!(
            report.stalled(),
            n > 1,
            "cycle {n}: {} stalled: {}",
            report.summary(),
            report.stalled()
        );
        failed += updates.failed + report.actions["quarantine_update"].failed;
        let given_up: u64 = report.actions.values().map(|c| c.given_up).sum();
        assert_eq!(
            (given_up, report.given_up),
            (0, 0),
            "cycle {n}: {} {:?}",
            report.summary(),
            report.notes
        );
        if n == 1 {
            assert_eq!(report.submitted, 4, "{}", report.summary());
        }
    }
    let outage = started.elapsed();
    assert!(outage > Duration::from_secs(2), "longer than give_up_after");
    assert_eq!(
        store(&config).retry_pending().unwrap().len(),
        7,
        "every sample kept, none given up"
    );
    let t = tenant.sim.snapshot();
    assert_eq!(write_backs(&t).0, 0, "nothing landed during the outage");

    tenant.sim.set_faults(Faults::default());
    let report = cycle().await;
    assert!(!report.stalled(), "{}", report.summary());
    let t = tenant.sim.snapshot();
    let (done, expected) = write_backs(&t);
    println!(
        "write-back outage: {done} of {expected} write-backs after 15 cycles ({:.1} s) of Falcon \
         answering 503 to alert and quarantine updates ({failed} failed write-backs, none given \
         up) and one after; {}",
        outage.as_secs_f64(),
        report.summary()
    );
    assert_eq!(done, expected, "{}", report.summary());
    assert!(t.alerts.iter().all(|a| a.comments.len() == 1));
    assert!(t.quarantines.iter().all(|q| q.actions.len() == 1));
    assert_eq!(t.submissions.len(), 4, "each unknown sample submitted once");
    let counts = store(&config).journal_counts().unwrap();
    assert!(
        counts.iter().all(|(state, _)| state == "done"),
        "every journaled write-back done: {counts:?}"
    );
    assert!(store(&config).retry_pending().unwrap().is_empty());
}

/// Moves the `failing_since` of every journal entry that has one back a year.
fn age_journal(config: &Config) {
    let conn = rusqlite::Connection::open(&config.general.state_file).unwrap();
    let changed = conn
        .execute(
            "UPDATE journal SET failing_since = '2025-12-01T00:00:00Z'
             WHERE failing_since IS NOT NULL",
            [],
        )
        .unwrap();
    assert!(changed > 0, "no failing_since to age");
}

#[tokio::test]
async fn a_write_back_falcon_refuses_is_given_up_after_give_up_after_and_one_for_a_deleted_alert_at_once()
 {
    let tenant = Tenant::start(scenario::single("malicious", true)).await;
    let t = tenant.sim.snapshot();
    let (refused, deleted) = (
        t.alerts[0].composite_id.clone(),
        t.alerts[1].composite_id.clone(),
    );
    tenant.sim.edit(|w| {
        w.refused_entities
            .extend([refused.clone(), deleted.clone()]);
    });
    let config = tenant.config("give_up_after = 3600", "", "");
    // Refused (409) for more cycles than the old count of 10, within the bound: kept.
    for n in 1..=12 {
        let report = tenant.cycle(&config).await;
        let updates = &report.actions["alert_update"];
        assert_eq!(
            (updates.failed, updates.given_up),
            (2, 0),
            "cycle {n}: {}",
            report.summary()
        );
    }
    // One alert is deleted meanwhile: Falcon answers 404 for it, and it is given up at once.
    // The other has been refused for a year, as far as the journal knows: past the bound.
    tenant.sim.edit(|w| {
        w.refused_entities.remove(&deleted);
        w.alerts.retain(|a| a.composite_id != deleted);
    });
    age_journal(&config);
    // The sample too, whose write-backs have failed for reasons of their own since then.
    age(&config, "failing_since");
    let report = tenant.cycle(&config).await;
    assert_eq!(report.given_up, 1, "{}", report.summary());
    let updates = &report.actions["alert_update"];
    assert_eq!(
        (updates.failed, updates.given_up),
        (2, 2),
        "{} {:?}",
        report.summary(),
        report.notes
    );
    let note = |why: &str| report.notes.iter().any(|n| n.contains(why));
    assert!(note("given up (give_up_after)"), "{:?}", report.notes);
    assert!(note("give_up_after (3600 s)"), "{:?}", report.notes);
    assert!(note("given up (permanent)"), "{:?}", report.notes);
    assert!(
        note("given up at act (give_up_after)"),
        "{:?}",
        report.notes
    );
    // Given up: never tried again, even once Falcon would take it.
    tenant.sim.edit(|w| w.refused_entities.clear());
    let report = tenant.cycle(&config).await;
    assert!(
        report
            .actions
            .get("alert_update")
            .is_none_or(|c| c.done + c.failed == 0),
        "{}",
        report.summary()
    );
    assert!(
        tenant
            .sim
            .snapshot()
            .alert(&refused)
            .unwrap()
            .comments
            .is_empty()
    );
}
