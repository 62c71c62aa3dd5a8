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
