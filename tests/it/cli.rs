//! The binary's contract: exit codes, and settings printed without secrets.

use crate::support::{API_KEY, CLIENT_SECRET, Scratch, connector};

fn output_text(output: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn once_exits_0_on_a_valid_config() {
    let scratch = Scratch::new();
    let config = scratch.config("", "", "");
    let output = connector()
        .args(["--config"])
        .arg(&config)
        .arg("once")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", output_text(&output));
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
        .arg("check")
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
fn secrets_from_the_environment_never_reach_stdout_or_the_log() {
    let scratch = Scratch::new();
    let config = scratch.config("log_level = \"trace\"", "", "");
    let output = connector()
        .arg("--config")
        .arg(&config)
        .arg("once")
        .env("VMRAY_API_KEY", "env-key-Yy3Jm9")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0));
    let everything = output_text(&output) + &scratch.log_text();
    assert!(!scratch.log_text().is_empty(), "the log file was written");
    for secret in [CLIENT_SECRET, API_KEY, "env-key-Yy3Jm9"] {
        assert!(!everything.contains(secret), "{secret} leaked");
    }
}
