//! `/metrics` and `/healthz` of a running daemon, scraped after a cycle on the simulator.

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::support::{Tenant, connector, scenario};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `run` on the tenant with metrics on a free port; returns the child and the base URL.
fn start_daemon(tenant: &Tenant, general: &str, env: &[(&str, &str)]) -> (Child, String) {
    start_daemon_with(tenant, general, "", env)
}

fn start_daemon_with(
    tenant: &Tenant,
    general: &str,
    vmray: &str,
    env: &[(&str, &str)],
) -> (Child, String) {
    let port = free_port();
    let path = tenant.config_file(general, "", vmray);
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str(&format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n"));
    std::fs::write(&path, text).unwrap();
    let mut cmd =
        std::process::Command::new(assert_cmd::cargo::cargo_bin("falcon-vmray-connector"));
    cmd.arg("--config")
        .arg(&path)
        .arg("run")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for name in crate::support::INHERITED_SETTINGS {
        cmd.env_remove(name);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    (cmd.spawn().unwrap(), format!("http://127.0.0.1:{port}"))
}

async fn get(url: &str) -> Option<(u16, String)> {
    let response = reqwest::get(url).await.ok()?;
    let status = response.status().as_u16();
    Some((status, response.text().await.ok()?))
}

/// Polls `url` until `accept` likes the answer, for at most 20 s.
async fn wait_for(url: &str, accept: impl Fn(u16, &str) -> bool) -> (u16, String) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some((status, body)) = get(url).await
            && accept(status, &body)
        {
            return (status, body);
        }
        assert!(
            Instant::now() < deadline,
            "{url} never answered as expected"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn value(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no series {series} in:\n{metrics}"))
}

fn stop(mut child: Child) {
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            assert!(status.success(), "the daemon exits cleanly on SIGTERM");
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    panic!("the daemon did not exit within 10 s of SIGTERM");
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_and_health_reflect_what_the_cycle_did() {
    let tenant = Tenant::start(scenario::single("malicious", true)).await;
    let (child, base) = start_daemon(&tenant, "time_span = 3600", &[]);
    let metrics_url = format!("{base}/metrics");
    let (_, metrics) = wait_for(&metrics_url, |status, body| {
        status == 200 && body.contains("connector_cycles_total{result=\"completed\"}")
    })
    .await;
    assert_eq!(
        value(&metrics, "connector_cycles_total{result=\"completed\"}"),
        1.0
    );
    assert_eq!(
        value(&metrics, "connector_hashes_total{outcome=\"known\"}"),
        1.0
    );
    assert_eq!(
        value(&metrics, "connector_hashes_total{outcome=\"failed\"}"),
        0.0
    );
    let alert_updates = "connector_actions_total{kind=\"alert_update\",result=\"done\"}";
    assert_eq!(value(&metrics, alert_updates), 2.0);
    let quarantine = "connector_actions_total{kind=\"quarantine_update\",result=\"done\"}";
    assert_eq!(value(&metrics, quarantine), 1.0);
    assert_eq!(value(&metrics, "connector_submissions_in_flight"), 0.0);
    assert!(value(&metrics, "connector_cycle_duration_seconds_count") >= 1.0);
    let oldest = "connector_oldest_submission_in_flight_age_seconds";
    assert!(
        metrics.contains(&format!("# TYPE {oldest} gauge")),
        "{metrics}"
    );
    assert_eq!(value(&metrics, oldest), 0.0, "nothing is in flight");

    // Both alerts were created 300 s before the run and commented within seconds of it.
    let writeback = "connector_detection_to_writeback_seconds";
    assert!(
        metrics.contains(&format!("# TYPE {writeback} histogram")),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!("# HELP {writeback} ")),
        "{metrics}"
    );
    assert_eq!(value(&metrics, &format!("{writeback}_count")), 2.0);
    let sum = value(&metrics, &format!("{writeback}_sum"));
    assert!((600.0..660.0).contains(&sum), "{sum}");
    assert_eq!(
        value(&metrics, &format!("{writeback}_bucket{{le=\"120\"}}")),
        0.0
    );
    assert_eq!(
        value(&metrics, &format!("{writeback}_bucket{{le=\"600\"}}")),
        2.0
    );
    assert_eq!(
        value(&metrics, &format!("{writeback}_bucket{{le=\"86400\"}}")),
        2.0
    );

    // Every request the simulator answered was counted, by service and status.
    let snapshot = tenant.sim.snapshot();
    let falcon_seen = snapshot
        .requests
        .iter()
        .filter(|r| r.service == falcon_vmray_connector::sim::Service::Falcon)
        .count() as f64;
    let counted: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("connector_api_requests_total{service=\"falcon\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(counted, falcon_seen, "{metrics}");
    assert!(
        value(
            &metrics,
            "connector_api_requests_total{service=\"vmray\",status=\"200\"}"
        ) >= 1.0
    );

    let (status, body) = get(&format!("{base}/healthz")).await.unwrap();
    assert_eq!(status, 200, "{body}");
    follows_prometheus_conventions(&metrics);
    stop(child);
}

/// What `promtool check metrics` checks of names and metadata: every family has HELP and TYPE,
/// counters end in `_total`, time is in seconds, not milliseconds.
fn follows_prometheus_conventions(metrics: &str) {
    let mut helped = std::collections::HashSet::new();
    let mut typed = std::collections::HashMap::new();
    for line in metrics.lines() {
        let mut words = line.split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some("#"), Some("HELP"), Some(name)) => {
                helped.insert(name.to_string());
            }
            (Some("#"), Some("TYPE"), Some(name)) => {
                typed.insert(name.to_string(), words.next().unwrap_or("").to_string());
            }
            _ => {}
        }
    }
    assert!(!typed.is_empty(), "{metrics}");
    for (name, kind) in &typed {
        assert!(helped.contains(name), "{name} has no HELP line");
        assert_eq!(
            kind == "counter",
            name.ends_with("_total"),
            "{name} is a {kind}: counters, and only counters, end in _total"
        );
        assert!(!name.contains("millisecond"), "{name}: use seconds");
    }
    assert_eq!(
        typed
            .get("connector_rate_limit_wait_seconds_total")
            .map(String::as_str),
        Some("counter"),
        "{metrics}"
    );
    value(
        metrics,
        "connector_rate_limit_wait_seconds_total{service=\"falcon\"}",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn health_is_503_and_the_last_success_0_until_the_first_cycle_completes() {
    let tenant = Tenant::start(scenario::single("malicious", false)).await;
    // Every request takes seconds: the first collection is started, not completed, when the
    // probe asks.
    tenant.sim.set_faults(falcon_vmray_connector::sim::Faults {
        latency_ms: 3_000,
        ..Default::default()
    });
    let (child, base) = start_daemon(&tenant, "time_span = 3600", &[]);
    let (status, body) = wait_for(&format!("{base}/healthz"), |_, _| true).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("no cycle completed since the start"),
        "{body}"
    );
    let (_, metrics) = get(&format!("{base}/metrics")).await.unwrap();
    let last_success = "connector_last_cycle_success_timestamp_seconds";
    assert_eq!(value(&metrics, last_success), 0.0, "{metrics}");

    tenant.sim.set_faults(Default::default());
    let (_, body) = wait_for(&format!("{base}/healthz"), |status, _| status == 200).await;
    assert!(body.contains("last cycle completed"), "{body}");
    let (_, metrics) = get(&format!("{base}/metrics")).await.unwrap();
    assert!(value(&metrics, last_success) > 1.7e9, "{metrics}");
    stop(child);
}

#[tokio::test(flavor = "multi_thread")]
async fn health_turns_503_when_cycles_stop_completing() {
    let tenant = Tenant::start(scenario::single("malicious", true)).await;
    // Wrong credentials: every cycle fails, so none ever completes and health stays 503 (how
    // long a completed cycle counts, at least 600 s, is health.rs's unit tests' to prove).
    let (child, base) = start_daemon(
        &tenant,
        "time_span = 1",
        &[("CROWDSTRIKE_CLIENT_SECRET", "wrong")],
    );
    let (status, body) = wait_for(&format!("{base}/healthz"), |status, _| status == 503).await;
    assert_eq!(status, 503);
    assert!(body.contains("no cycle completed"), "{body}");
    let (_, metrics) = wait_for(&format!("{base}/metrics"), |_, body| {
        body.contains("connector_cycles_total{result=\"failed\"}")
    })
    .await;
    let failed = value(&metrics, "connector_cycles_total{result=\"failed\"}");
    // One cycle per second at most: failing cycles never turn into a tight loop.
    assert!((1.0..=6.0).contains(&failed), "{failed} failed cycles");

    // `health` says the same, with exit code 1.
    let config = tenant.scratch.path().join("connector.toml");
    let output = tokio::task::spawn_blocking(move || {
        connector()
            .arg("--config")
            .arg(config)
            .arg("health")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stdout).contains("unhealthy"));
    stop(child);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_oldest_submission_in_flight_shows_its_age_after_a_cycle_leaves_it_running() {
    // The analysis takes a minute: the collection submits it and leaves it in flight for the
    // waiting clock.
    let mut scenario = scenario::single("malicious", false);
    scenario.files[0].detonation.duration_ms = 60_000;
    let tenant = Tenant::start(scenario).await;
    let (child, base) =
        start_daemon_with(&tenant, "time_span = 3600", "analysis_job_timeout = 1", &[]);
    let started = Instant::now();
    let (_, metrics) = wait_for(&format!("{base}/metrics"), |status, body| {
        status == 200 && body.contains("connector_cycles_total{result=\"completed\"}")
    })
    .await;
    let age = value(
        &metrics,
        "connector_oldest_submission_in_flight_age_seconds",
    );
    assert_eq!(tenant.sim.snapshot().submissions.len(), 1);
    // Older than nothing, younger than the daemon.
    assert!(
        age > 0.0 && age <= started.elapsed().as_secs_f64(),
        "{age}\n{metrics}"
    );
    // No verdict yet, so nothing was written back.
    let written = metrics
        .lines()
        .find(|l| l.starts_with("connector_detection_to_writeback_seconds_count"));
    assert!(written.is_none_or(|l| l.ends_with(" 0")), "{metrics}");
    stop(child);
}
