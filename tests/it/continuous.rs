//! The daemon's two clocks: collections every `time_span`, and the waiting clock, which acts on
//! each analysis as it ends. Nothing waits for the slowest analysis, a submission in flight
//! from before a restart is acted on without a new collection, and an alert that appears
//! while the daemon runs is acted on by the next collection.

use std::time::{Duration, Instant};

use falcon_vmray_connector::config::{Config, RuntimeMode};
use falcon_vmray_connector::pipeline::Connector;
use falcon_vmray_connector::sim::{Scenario, TenantSnapshot};
use falcon_vmray_connector::state::StateStore;
use tokio_util::sync::CancellationToken;

use crate::support::Tenant;
use crate::support::scenario::{self, alert, file, hosts};

/// Runs the daemon until `done` holds for the tenant (or `limit` passes), then stops it.
/// Returns how long `done` took, `None` if it never held, and how long the stop took.
async fn daemon_until(
    tenant: &Tenant,
    config: &Config,
    limit: Duration,
    done: impl Fn(&TenantSnapshot) -> bool,
) -> (Option<Duration>, Duration) {
    let connector = Connector::new(config.clone()).unwrap();
    let shutdown = CancellationToken::new();
    let daemon = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { connector.run(RuntimeMode::Daemon, shutdown).await }
    });
    let started = Instant::now();
    let mut took = None;
    while started.elapsed() < limit {
        if done(&tenant.sim.snapshot()) {
            took = Some(started.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stopping = Instant::now();
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), daemon)
        .await
        .expect("the daemon stops at shutdown")
        .unwrap();
    (took, stopping.elapsed())
}

/// `count` unknown files (seeds from `seed`) whose analyses run for an hour, an alert each, on
/// up to 5 hosts.
fn hour_long_analyses(count: usize, seed: u64) -> Scenario {
    let mut scenario = Scenario {
        hosts: hosts(5),
        ..Scenario::default()
    };
    for n in 0..count {
        let mut f = file(seed + n as u64, "malicious", false);
        f.detonation.duration_ms = 3_600_000;
        scenario.files.push(f);
        scenario.alerts.push(alert(n, n % 5));
    }
    scenario
}

fn commented(t: &TenantSnapshot, sha256: &str) -> bool {
    t.alerts
        .iter()
        .any(|a| a.sha256 == sha256 && !a.comments.is_empty())
}

/// Searches of the alerts API: one per collection (nothing here pages).
fn collections(t: &TenantSnapshot) -> usize {
    t.requests
        .iter()
        .filter(|r| r.method == "POST" && r.path.starts_with("/alerts/combined/alerts/v1"))
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fast_analysis_is_acted_on_as_it_ends_while_a_slow_one_runs_on() {
    let mut scenario = scenario::single("malicious", false);
    scenario.hosts = hosts(2);
    scenario.quarantines.clear();
    scenario.files[0].detonation.duration_ms = 1_500;
    let mut slow = file(2, "malicious", false);
    slow.detonation.duration_ms = 600_000;
    scenario.files.push(slow);
    scenario.alerts = vec![alert(0, 0), alert(1, 1)];
    let tenant = Tenant::start(scenario).await;
    let fast = tenant.sim.snapshot().alerts[0].sha256.clone();
    let slow = tenant.sim.snapshot().alerts[1].sha256.clone();
    assert_ne!(fast, slow);
    // A collection an hour apart, polls at most every 10 s: only the waiting clock can act on
    // the fast analysis within seconds.
    let config = tenant.config(
        "time_span = 3600",
        "",
        "poll_interval = 10\nanalysis_job_timeout = 600",
    );
    let (took, stop) = daemon_until(&tenant, &config, Duration::from_secs(30), |t| {
        commented(t, &fast)
    })
    .await;
    let took = took.expect("the fast analysis was never acted on");
    let t = tenant.sim.snapshot();
    assert_eq!(collections(&t), 1, "one collection only");
    // 1.5 s of analysis, polled a second apart at first (not 10 s apart), plus the requests.
    assert!(took < Duration::from_secs(8), "acted on after {took:?}");
    assert!(!commented(&t, &slow), "the slow analysis is still running");
    assert_eq!(t.submissions.len(), 2);
    assert!(stop < Duration::from_secs(3), "stopped in {stop:?}");
    let store = StateStore::open(&config.general.state_file).unwrap();
    let in_flight = store.in_flight().unwrap();
    assert_eq!(in_flight.len(), 1, "the slow one stays in flight");
    assert_eq!(in_flight[0].sha256.as_str(), slow);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_submission_left_in_flight_by_an_earlier_process_is_acted_on_without_a_collection() {
    let mut scenario = scenario::single("malicious", false);
    scenario.files[0].detonation.duration_ms = 2_000;
    scenario::out_of_window(&mut scenario);
    let tenant = Tenant::start(scenario).await;
    let config = tenant.config("time_span = 3600", "", "analysis_job_timeout = 1");
    // A one-off run leaves it in flight.
    let report = tenant.cycle(&config).await;
    assert_eq!(report.still_analysing, 1, "{}", report.summary());
    let sha = tenant.sim.snapshot().alerts[0].sha256.clone();
    let before = collections(&tenant.sim.snapshot());

    let (took, _) = daemon_until(&tenant, &config, Duration::from_secs(30), |t| {
        t.alerts.iter().all(|a| !a.comments.is_empty())
            && t.quarantines.iter().all(|q| !q.actions.is_empty())
    })
    .await;
    assert!(took.is_some(), "the earlier submission was never acted on");
    let t = tenant.sim.snapshot();
    assert_eq!(
        collections(&t),
        before + 1,
        "the daemon's first collection does not know the evidence (out of its window): \
         the waiting clock acted on the saved evidence"
    );
    assert!(commented(&t, &sha));
    assert!(t.alerts.iter().all(|a| a.comments.len() == 1), "once each");
    assert_eq!(t.submissions.len(), 1, "never resubmitted");
    let store = StateStore::open(&config.general.state_file).unwrap();
    assert!(store.in_flight().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_alert_that_appears_while_the_daemon_runs_is_acted_on_by_the_next_collection() {
    let mut scenario = scenario::single("malicious", true);
    scenario.quarantines.clear();
    scenario.alerts.truncate(1);
    scenario
        .spread_as_arrivals(1, Duration::from_millis(1_500), 7)
        .unwrap();
    // After the first collection.
    scenario.arrivals[0].after_ms = 1_500;
    let tenant = Tenant::start(scenario).await;
    assert!(
        tenant.sim.snapshot().alerts.is_empty(),
        "it has not arrived yet"
    );
    let config = tenant.config("time_span = 1", "", "");
    let (took, _) = daemon_until(&tenant, &config, Duration::from_secs(30), |t| {
        t.alerts.iter().any(|a| !a.comments.is_empty())
    })
    .await;
    let took = took.expect("the arriving alert was never acted on");
    // It arrived after 1.5 s; collections come every second.
    assert!(took < Duration::from_secs(6), "acted on after {took:?}");
    let t = tenant.sim.snapshot();
    assert!(collections(&t) >= 2, "more than one collection");
    assert!(t.submissions.is_empty(), "VMRay knew it: nothing submitted");
    assert_eq!(t.alerts[0].comments.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn submissions_in_flight_are_polled_at_most_once_a_second_and_at_least_every_poll_interval() {
    // 20 analyses that run for an hour, left in flight by a one-off run.
    let tenant = Tenant::start(hour_long_analyses(20, 100)).await;
    let once = tenant.config("", "", "analysis_job_timeout = 1");
    let report = tenant.cycle(&once).await;
    assert_eq!(report.still_analysing, 20, "{}", report.summary());
    let config = tenant.config("time_span = 3600", "", "poll_interval = 2");
    let polls = |t: &TenantSnapshot| {
        t.requests
            .iter()
            .filter(|r| r.method == "GET" && r.path.starts_with("/rest/submission/"))
            .count()
    };
    let before = polls(&tenant.sim.snapshot());
    let window = Duration::from_secs(6);
    let (never, _) = daemon_until(&tenant, &config, window, |_| false).await;
    assert!(never.is_none());
    let per_submission = (polls(&tenant.sim.snapshot()) - before) as f64 / 20.0;
    // Between every 2 s (poll_interval) and every second (the fastest pause), over 6 s.
    assert!(
        (2.0..=7.0).contains(&per_submission),
        "{per_submission} polls per submission in {window:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_outage_of_vmray_is_one_warning_a_minute_not_one_per_poll() {
    let tenant = Tenant::start(hour_long_analyses(5, 300)).await;
    let once = tenant.config("", "", "analysis_job_timeout = 1");
    assert_eq!(tenant.cycle(&once).await.still_analysing, 5);
    // VMRay now refuses the key: every poll of every round fails.
    tenant.sim.set_faults(falcon_vmray_connector::sim::Faults {
        vmray_key_refused: true,
        ..Default::default()
    });
    let path = tenant.config_file("time_span = 3600", "", "poll_interval = 1");
    let mut cmd =
        std::process::Command::new(assert_cmd::cargo::cargo_bin("falcon-vmray-connector"));
    cmd.arg("--config").arg(&path).arg("run");
    for name in crate::support::INHERITED_SETTINGS {
        cmd.env_remove(name);
    }
    let mut child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Polls every second: several rounds, all failing.
    let started = Instant::now();
    let polls = |t: &TenantSnapshot| {
        t.requests
            .iter()
            .filter(|r| r.path.starts_with("/rest/submission/") && r.status == 401)
            .count()
    };
    while polls(&tenant.sim.snapshot()) < 15 {
        assert!(started.elapsed() < Duration::from_secs(30), "never polled");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
    let log = tenant.scratch.log_text();
    let said = log.matches("could not be polled").count();
    assert_eq!(said, 1, "{log}");
    // Nor a line per poll.
    assert_eq!(
        log.matches("cannot poll the submission:").count(),
        0,
        "{log}"
    );
    let store = StateStore::open(&once.general.state_file).unwrap();
    assert_eq!(store.in_flight().unwrap().len(), 5, "they stay in flight");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_alert_for_a_hash_in_flight_is_added_to_it_and_acted_on_with_it() {
    let mut scenario = scenario::single("malicious", false);
    scenario.quarantines.clear();
    scenario.files[0].detonation.duration_ms = 4_000;
    scenario
        .spread_as_arrivals(1, Duration::from_millis(1_500), 3)
        .unwrap();
    // The second alert arrives while the first one's sample is being analysed.
    scenario.arrivals[0].after_ms = 1_500;
    let tenant = Tenant::start(scenario).await;
    assert_eq!(tenant.sim.snapshot().alerts.len(), 1);
    let config = tenant.config("time_span = 1", "", "");
    let (took, _) = daemon_until(&tenant, &config, Duration::from_secs(30), |t| {
        t.alerts.len() == 2 && t.alerts.iter().all(|a| !a.comments.is_empty())
    })
    .await;
    assert!(took.is_some(), "the later alert was never acted on");
    let t = tenant.sim.snapshot();
    assert_eq!(t.submissions.len(), 1, "one submission for both");
    assert!(t.alerts.iter().all(|a| a.comments.len() == 1), "once each");
    // Collections went on every second meanwhile without polling the submission: the polls
    // are the waiting clock's, about one a second while the analysis ran.
    let polls = t
        .requests
        .iter()
        .filter(|r| r.method == "GET" && r.path.starts_with("/rest/submission/"))
        .count();
    assert!(collections(&t) >= 4, "{} collections", collections(&t));
    assert!(polls <= 6, "{polls} polls of one 4-second analysis");
}
