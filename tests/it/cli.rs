//! The binary's contract: exit codes, and settings printed without secrets.

use crate::support::{API_KEY, CLIENT_SECRET, Scratch, Tenant, connector, scenario};

fn output_text(output: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Runs the binary on a config pointing at a simulated tenant.
async fn run_against_simulator(
    general: &str,
    env: &[(&str, &str)],
) -> (std::process::Output, Tenant) {
    let tenant = Tenant::start(scenario::single("malicious", true)).await;
    let config = tenant.config_file(general, "", "");
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let output = tokio::task::spawn_blocking(move || {
        connector()
            .arg("--config")
            .arg(&config)
            .arg("once")
            .envs(env)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    (output, tenant)
}

#[tokio::test(flavor = "multi_thread")]
async fn once_exits_0_on_a_valid_config_and_completes_a_cycle() {
    let (output, tenant) = run_against_simulator("", &[]).await;
    assert_eq!(output.status.code(), Some(0), "{}", output_text(&output));
    assert!(output_text(&output).contains("cycle report"));
    assert!(
        tenant
            .sim
            .snapshot()
            .alerts
            .iter()
            .all(|a| a.comments.len() == 1)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn once_exits_1_when_the_cycle_fails() {
    let (output, tenant) =
        run_against_simulator("", &[("CROWDSTRIKE_CLIENT_SECRET", "not-the-secret")]).await;
    assert_eq!(output.status.code(), Some(1), "{}", output_text(&output));
    let text = output_text(&output);
    assert!(text.contains("cycle failed"), "{text}");
    assert!(!text.contains("not-the-secret"), "{text}");
    assert!(
        tenant
            .sim
            .snapshot()
            .alerts
            .iter()
            .all(|a| a.comments.is_empty())
    );
}

#[test]
fn once_exits_2_naming_the_key_on_an_invalid_config() {
    let scratch = Scratch::new();
    let config = scratch.config("", "contain_hots = true", "");
    let output = connector()
        .arg("--config")
        .arg(&config)
        .arg("once")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let text = output_text(&output);
    assert!(text.contains("crowdstrike.contain_hots"), "{text}");
    assert!(text.contains("crowdstrike.contain_host"), "{text}");
}

#[test]
fn a_missing_config_file_exits_2_and_says_what_to_do() {
    let output = connector()
        .args(["--config", "/nonexistent/connector.toml", "once"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(output_text(&output).contains("connector.example.toml"));
}

#[test]
fn check_prints_settings_with_secrets_masked() {
    let scratch = Scratch::new();
    let config = scratch.config("", "", "");
    let output = connector()
        .arg("--config")
        .arg(&config)
        .args(["check", "--offline"])
        .env("CONNECTOR__GENERAL__TIME_SPAN", "42")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0));
    let text = output_text(&output);
    assert!(text.contains("time_span = 42"), "{text}");
    assert!(text.contains("client_secret = \"********\""), "{text}");
    assert!(
        !text.contains(CLIENT_SECRET) && !text.contains(API_KEY),
        "{text}"
    );
}

#[test]
fn check_shows_a_time_span_raised_to_the_falcon_budget_and_why() {
    let scratch = Scratch::new();
    let config = scratch.config("time_span = 5", "rate_limit_per_minute = 60", "");
    let output = connector()
        .arg("--config")
        .arg(&config)
        .args(["check", "--offline"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", output_text(&output));
    let text = output_text(&output);
    // Two queries an idle collection, at most 10 % of 60 a minute: one every 20 s.
    assert!(text.contains("\ntime_span = 20\n"), "{text}");
    let warning = text
        .lines()
        .find(|l| l.starts_with("warning: general.time_span = 5 "))
        .unwrap_or_else(|| panic!("no warning for the raised time_span: {text}"));
    assert!(
        warning.contains("minimum of 20 s")
            && warning.contains("crowdstrike.rate_limit_per_minute = 60"),
        "{warning}"
    );

    // Within the budget: the value stands and nothing is said.
    let config = scratch.config("time_span = 20", "rate_limit_per_minute = 60", "");
    let output = connector()
        .arg("--config")
        .arg(&config)
        .args(["check", "--offline"])
        .output()
        .unwrap();
    let text = output_text(&output);
    assert!(text.contains("\ntime_span = 20\n"), "{text}");
    assert!(!text.contains("general.time_span"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_never_reach_stdout_or_the_log_even_at_trace_level() {
    let (output, tenant) = run_against_simulator("log_level = \"trace\"", &[]).await;
    assert_eq!(output.status.code(), Some(0), "{}", output_text(&output));
    let log = tenant.scratch.log_text();
    assert!(log.contains("cycle report"), "the log file was written");
    let creds = tenant.sim.credentials();
    let everything = output_text(&output) + &log;
    // The simulator's tokens look like `sim-token-...`.
    for secret in [
        creds.client_secret.as_str(),
        creds.api_key.as_str(),
        "sim-token-",
    ] {
        assert!(!everything.contains(secret), "{secret} leaked");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn check_reports_every_needed_scope_and_vmray_live() {
    let tenant = Tenant::start(scenario::single("malicious", true)).await;
    let config = tenant.config_file("", "contain_host = true", "");
    let output = tokio::task::spawn_blocking(move || {
        connector()
            .arg("--config")
            .arg(&config)
            .arg("check")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = output_text(&output);
    assert_eq!(output.status.code(), Some(0), "{text}");
    for scope in [
        "Alerts",
        "Quarantine",
        "SampleUploads",
        "IocManagement",
        "Hosts",
    ] {
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("Falcon {scope} ")))
            .unwrap_or_else(|| panic!("no line for {scope}: {text}"));
        assert!(line.ends_with("OK"), "{line}");
    }
    assert!(
        text.contains("VMRay") && text.contains("max upload 200 MiB"),
        "{text}"
    );
    let creds = tenant.sim.credentials();
    assert!(!text.contains(&creds.client_secret) && !text.contains(&creds.api_key));
}

/// VMRay gives the verdict, and Falcon refuses every write-back (an API client without the write
/// scopes): the cycle read a verdict but did none of its work, so it did not complete.
#[tokio::test(flavor = "multi_thread")]
async fn once_exits_1_when_falcon_refuses_every_write_back() {
    use falcon_vmray_connector::sim::{Faults, Override, Service};
    let tenant = Tenant::start(scenario::single("malicious", true)).await;
    let refused = |path: &str| {
        Override {
        service: Service::Falcon,
        path_contains: path.into(),
        status: 403,
        content_type: "application/json".into(),
        body: br#"{"meta":{},"resources":[],"errors":[{"code":403,"message":"access denied, authorization failed"}]}"#
            .to_vec(),
        times: None,
    }
    };
    tenant.sim.set_faults(Faults {
        overrides: vec![
            refused("/alerts/entities/alerts/v3"),
            refused("/quarantine/entities/quarantined-files/v1"),
            refused("/iocs/entities/indicators/v1"),
        ],
        ..Faults::default()
    });
    let config = tenant.config_file("", "", "");
    let output = tokio::task::spawn_blocking(move || {
        connector()
            .arg("--config")
            .arg(&config)
            .arg("once")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = output_text(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(
        text.contains("write-backs failed because Falcon did not take them"),
        "{text}"
    );
    let t = tenant.sim.snapshot();
    assert!(
        t.alerts.iter().all(|a| a.comments.is_empty()),
        "nothing landed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn once_exits_1_when_vmray_refuses_the_key_and_nothing_could_be_looked_up() {
    let (output, tenant) = run_against_simulator("", &[("VMRAY_API_KEY", "revoked-key")]).await;
    let text = output_text(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(
        text.contains("nothing could be looked up or acted on"),
        "{text}"
    );
    assert!(text.contains("vmray.api_key"), "names what to fix: {text}");
    assert!(!text.contains("revoked-key"), "{text}");
    assert!(
        tenant
            .sim
            .snapshot()
            .alerts
            .iter()
            .all(|a| a.comments.is_empty())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn once_exits_1_when_sigterm_cuts_its_cycle_short() {
    use std::time::{Duration, Instant};
    let mut scenario = scenario::single("malicious", false);
    scenario.files[0].detonation.duration_ms = 30_000;
    let tenant = Tenant::start(scenario).await;
    let config = tenant.config_file("", "", "");
    let mut cmd =
        std::process::Command::new(assert_cmd::cargo::cargo_bin("falcon-vmray-connector"));
    cmd.arg("--config")
        .arg(&config)
        .arg("once")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    for name in crate::support::INHERITED_SETTINGS {
        cmd.env_remove(name);
    }
    let child = cmd.spawn().unwrap();
    let started = Instant::now();
    while tenant.sim.snapshot().submissions.is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "never submitted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Into the wait for the analysis.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pid = child.id().to_string();
    let asked = Instant::now();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    let text = output_text(&output);
    // Well before the 8 s backstop, whose exit code is also 1.
    assert!(asked.elapsed() < Duration::from_secs(5), "{text}");
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.contains("interrupted by shutdown"), "{text}");
}

#[test]
fn demo_refuses_a_config_file_it_would_ignore() {
    for args in [
        ["--config", "connector.toml", "demo"],
        ["demo", "--config", "connector.toml"],
    ] {
        let output = connector().args(args).output().unwrap();
        let text = output_text(&output);
        assert_eq!(output.status.code(), Some(2), "{text}");
        assert!(text.contains("--config") && text.contains("demo"), "{text}");
    }
    // The environment variable is for the other commands: demo still runs beside it.
    let output = connector()
        .args(["demo", "--hashes", "1"])
        .env("CONNECTOR_CONFIG", "/nonexistent/connector.toml")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", output_text(&output));
}

#[test]
fn dry_run_is_offered_only_by_the_commands_that_run_a_cycle() {
    let scratch = Scratch::new();
    let config = scratch.config("", "", "");
    for args in [
        vec!["check", "--offline", "--dry-run"],
        vec!["--dry-run", "check", "--offline"],
        vec!["health", "--dry-run"],
    ] {
        let output = connector()
            .arg("--config")
            .arg(&config)
            .args(&args)
            .output()
            .unwrap();
        let text = output_text(&output);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {text}");
        assert!(text.contains("--dry-run"), "{text}");
    }
    for command in ["run", "once", "demo"] {
        let help = connector().args([command, "--help"]).output().unwrap();
        assert!(output_text(&help).contains("--dry-run"), "{command}");
    }
    for command in ["check", "health"] {
        let help = connector().args([command, "--help"]).output().unwrap();
        assert!(!output_text(&help).contains("--dry-run"), "{command}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_since_timestamp_in_the_log_is_rfc_3339() {
    let (output, _tenant) = run_against_simulator("", &[]).await;
    let text = output_text(&output);
    assert_eq!(output.status.code(), Some(0), "{text}");
    let marker = "collecting evidence since ";
    let line = text.lines().find(|l| l.contains(marker)).expect(&text);
    let stamp = line[line.find(marker).unwrap() + marker.len()..]
        .split_whitespace()
        .next()
        .unwrap();
    time::OffsetDateTime::parse(stamp, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("`{stamp}` is not RFC 3339 ({e}): {line}"));
}

#[test]
fn plain_http_urls_are_warned_about_unless_they_are_loopback() {
    let scratch = Scratch::new();
    let check = |crowdstrike: &str, vmray: &str| {
        let config = scratch.config("", crowdstrike, vmray);
        let output = connector()
            .arg("--config")
            .arg(&config)
            .args(["check", "--offline"])
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(0), "{}", output_text(&output));
        output_text(&output)
    };
    let remote = check(
        "base_url = \"http://falcon-proxy.corp.example:8080\"",
        "url = \"http://vmray.corp.example\"",
    );
    for key in ["crowdstrike.base_url", "vmray.url"] {
        assert!(
            remote
                .lines()
                .any(|l| l.starts_with("warning: ") && l.contains(key) && l.contains("plain HTTP")),
            "{key}: {remote}"
        );
    }
    let local = check(
        "base_url = \"http://127.0.0.1:8080\"",
        "url = \"http://localhost:9000\"",
    );
    assert!(!local.contains("plain HTTP"), "{local}");
}

#[test]
fn a_general_ca_bundle_that_is_not_pem_exits_2_naming_the_key() {
    let scratch = Scratch::new();
    let bundle = scratch.path().join("proxy-ca.pem");
    std::fs::write(&bundle, "not a certificate").unwrap();
    let config = scratch.config(&format!("ca_bundle = \"{}\"", bundle.display()), "", "");
    let output = connector()
        .arg("--config")
        .arg(&config)
        .args(["check", "--offline"])
        .output()
        .unwrap();
    let text = output_text(&output);
    assert_eq!(output.status.code(), Some(2), "{text}");
    assert!(text.contains("general.ca_bundle"), "{text}");
}

/// A TCP port that takes connections (the kernel's backlog) and never answers.
fn hanging_endpoint() -> (std::net::TcpListener, String) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    (listener, url)
}

#[test]
fn check_against_a_silent_endpoint_ends_within_its_budget_and_shows_each_probe() {
    let (_listener, url) = hanging_endpoint();
    let scratch = Scratch::new();
    let config = scratch.config(
        "",
        &format!("base_url = \"{url}\""),
        &format!("url = \"{url}\""),
    );
    let started = std::time::Instant::now();
    let output = connector()
        .arg("--config")
        .arg(&config)
        .args(["check", "--timeout", "3"])
        .output()
        .unwrap();
    let took = started.elapsed();
    let text = output_text(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(took < std::time::Duration::from_secs(6), "{took:?}: {text}");
    let line = |probe: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(probe))
            .unwrap_or_else(|| panic!("no line for {probe}: {text}"))
            .to_string()
    };
    assert!(line("Falcon token ").contains("TIMED OUT"), "{text}");
    assert!(line("Falcon Alerts ").contains("NOT CHECKED"), "{text}");
    assert!(line("VMRay ").contains("TIMED OUT"), "{text}");
    assert!(line("VMRay ").contains("vmray.url"), "{text}");
}

#[test]
fn check_against_a_closed_port_fails_fast_with_one_line_per_probe() {
    let (listener, url) = hanging_endpoint();
    drop(listener);
    let scratch = Scratch::new();
    let config = scratch.config(
        "",
        &format!("base_url = \"{url}\""),
        &format!("url = \"{url}\""),
    );
    let started = std::time::Instant::now();
    let output = connector()
        .arg("--config")
        .arg(&config)
        .arg("check")
        .output()
        .unwrap();
    let text = output_text(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "{text}"
    );
    let probes: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("  Falcon ") || l.starts_with("  VMRay "))
        .collect();
    assert_eq!(probes.len(), 1 + 4 + 1, "token, four scopes, VMRay: {text}");
    assert!(probes[0].contains("FAILING"), "{text}");
    assert!(probes[5].contains("FAILING"), "{text}");
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread")]
async fn run_in_once_mode_tells_systemd_ready_then_stopping() {
    let tenant = Tenant::start(scenario::single("malicious", true)).await;
    let config = tenant.config_file("runtime_mode = \"once\"", "", "");
    let socket_path = tenant.scratch.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    let output = tokio::task::spawn_blocking(move || {
        connector()
            .arg("--config")
            .arg(&config)
            .arg("run")
            .env("NOTIFY_SOCKET", &socket_path)
            .env("WATCHDOG_USEC", "60000000")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", output_text(&output));
    socket.set_nonblocking(true).unwrap();
    let mut messages = Vec::new();
    let mut buf = [0u8; 256];
    while let Ok(n) = socket.recv(&mut buf) {
        messages.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert_eq!(
        messages.first().map(String::as_str),
        Some("READY=1"),
        "{messages:?}"
    );
    assert_eq!(
        messages.last().map(String::as_str),
        Some("STOPPING=1"),
        "{messages:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_json_cycle_report_carries_its_counters_as_numeric_fields() {
    let (output, _tenant) = run_against_simulator("log_format = \"json\"", &[]).await;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert_eq!(output.status.code(), Some(0), "{}", output_text(&output));
    let events: Vec<serde_json::Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let report = events
        .iter()
        .find(|e| e["message"] == "cycle report")
        .unwrap_or_else(|| panic!("no cycle report event: {stdout}"));
    // The simulated tenant: two alerts and a quarantine record of one known malicious file.
    assert_eq!(report["alerts"].as_u64(), Some(2), "{report}");
    assert_eq!(report["quarantine_records"].as_u64(), Some(1), "{report}");
    assert_eq!(report["hashes"].as_u64(), Some(1), "{report}");
    assert_eq!(report["known"].as_u64(), Some(1), "{report}");
    assert_eq!(report["failed"].as_u64(), Some(0), "{report}");
    assert!(report["actions_done"].as_u64().unwrap() >= 3, "{report}");
    let alert_updates = events
        .iter()
        .find(|e| e["message"] == "cycle report: actions" && e["kind"] == "alert_update")
        .unwrap_or_else(|| panic!("no alert_update actions event: {stdout}"));
    assert_eq!(alert_updates["done"].as_u64(), Some(2), "{alert_updates}");
    assert_eq!(alert_updates["failed"].as_u64(), Some(0), "{alert_updates}");
}

#[test]
fn a_folder_the_connector_cannot_write_stops_run_with_exit_2_naming_its_key() {
    let scratch = Scratch::new();
    // A file where the state folder should be: unwritable as a folder whoever runs the test
    // (a host folder mounted into the container with another owner fails the same way).
    let blocker = scratch.path().join("not-a-folder");
    std::fs::write(&blocker, "x").unwrap();
    let config = scratch.config(
        &format!("state_file = \"{}/connector.db\"", blocker.display()),
        "",
        "",
    );
    // The scratch config already sets state_file: the later key is refused as a duplicate, so
    // rewrite the file with the blocked path instead.
    let text = std::fs::read_to_string(&config).unwrap();
    let text = text
        .lines()
        .filter(|l| !l.starts_with("state_file") || l.contains("not-a-folder"))
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&config, text).unwrap();
    for command in ["once", "run"] {
        let output = connector()
            .arg("--config")
            .arg(&config)
            .arg(command)
            .output()
            .unwrap();
        let text = output_text(&output);
        assert_eq!(output.status.code(), Some(2), "{command}: {text}");
        assert!(text.contains("general.state_file"), "{text}");
        assert!(text.contains("not-a-folder"), "{text}");
    }
}
