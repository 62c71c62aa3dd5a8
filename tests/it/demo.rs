//! `demo`: the README's first command, end to end.

use crate::support::connector;

#[test]
fn demo_runs_a_real_cycle_and_shows_comments_and_iocs() {
    let dir = tempfile::tempdir().unwrap();
    let output = connector()
        .args(["demo", "--hashes", "8", "--seed", "3"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("== Cycle report"), "{stdout}");
    assert!(stdout.contains("comment: [VMRay] Verdict: "), "{stdout}");
    let iocs_line = stdout
        .lines()
        .find(|l| l.starts_with("IOCs created ("))
        .unwrap();
    assert_ne!(iocs_line, "IOCs created (0)", "{stdout}");
    assert!(stdout.contains("  sha256 "), "{stdout}");
    // The demo leaves nothing behind in the folder it ran from.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn demo_loads_a_scenario_file() {
    let scenario = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/scenarios/one-malicious.json"
    );
    let output = connector()
        .args(["demo", "--scenario", scenario])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("on finance-laptop"), "{stdout}");
    assert!(
        stdout.contains("Other hosts that ran this file: build-server"),
        "{stdout}"
    );
    assert!(stdout.contains("domain exfil.example"), "{stdout}");
}

#[test]
fn demo_refuses_a_broken_scenario_file_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.json");
    std::fs::write(&path, "{\"files\": 3}").unwrap();
    let output = connector()
        .args(["demo", "--scenario"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("broken.json"), "{stderr}");
}

#[test]
fn demo_with_dry_run_shows_the_plan_and_changes_nothing() {
    let output = connector()
        .args(["demo", "--dry-run", "--hashes", "4", "--seed", "2"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("== Planned actions (dry run"), "{stdout}");
    assert!(stdout.contains("alert_update"), "{stdout}");
    assert!(stdout.contains("Alerts (0 of "), "{stdout}");
    assert!(stdout.contains("IOCs created (0)"), "{stdout}");
}
