//! Safe in an operator's hands: the binary never deletes what it did not write, never runs
//! twice on one state file, never prints a secret from a broken config, leaves no malware
//! behind on any signal, and keeps its files private.

use std::path::{Path, PathBuf};

use crate::support::{Tenant, connector, scenario};

fn output_text(output: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Runs the binary with `args` on `config` (optionally in `cwd`) off the runtime, so the
/// simulator in this process keeps answering.
async fn run_binary(config: &Path, args: &[&str], cwd: Option<&Path>) -> std::process::Output {
    let config = config.to_path_buf();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let cwd = cwd.map(Path::to_path_buf);
    tokio::task::spawn_blocking(move || {
        let mut cmd = connector();
        if let Some(cwd) = cwd {
            cmd.current_dir(cwd);
        }
        cmd.arg("--config")
            .arg(&config)
            .args(&args)
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Ten files of an operator's placed in the connector's download folder (beside a sample and a
/// partial download a crash left behind) survive the next cycle; the leftovers do not.
/// Prints the figure RELIABILITY.md quotes.
#[tokio::test(flavor = "multi_thread")]
async fn operator_files_in_a_shared_download_dir_survive_a_cycle_and_leftover_samples_do_not() {
    let tenant = Tenant::start(scenario::single("malicious", true)).await;
    let config = tenant.config_file("", "", "");
    let first = run_binary(&config, &["once"], None).await;
    assert_eq!(first.status.code(), Some(0), "{}", output_text(&first));

    let downloads = tenant.scratch.path().join("downloads");
    let operator_files: Vec<PathBuf> = (0..10)
        .map(|n| downloads.join(format!("operator-notes-{n}.txt")))
        .collect();
    for file in &operator_files {
        std::fs::write(file, b"keep me").unwrap();
    }
    let sha = "ab".repeat(32);
    let leftovers = [
        downloads.join(&sha),
        downloads.join(format!(".{sha}.4242.0.part")),
        downloads.join(format!(".{sha}.4242.1.zip")),
    ];
    for file in &leftovers {
        std::fs::write(file, b"MZ").unwrap();
    }

    let second = run_binary(&config, &["once"], None).await;
    let deleted = operator_files.iter().filter(|f| !f.exists()).count();
    println!(
        "files left in a shared download_dir: {deleted} of {} operator files deleted",
        operator_files.len()
    );
    assert_eq!(second.status.code(), Some(0), "{}", output_text(&second));
    assert_eq!(deleted, 0, "left: {:?}", names_in(&downloads));
    for file in &leftovers {
        assert!(!file.exists(), "{} was left", file.display());
    }
}

/// The tenant's config with `download_dir` replaced.
fn with_download_dir(tenant: &Tenant, dir: &str) -> PathBuf {
    let config = tenant.config_file("", "", "");
    let root = tenant.scratch.path().display().to_string();
    let text = std::fs::read_to_string(&config).unwrap().replace(
        &format!("download_dir = \"{root}/downloads\""),
        &format!("download_dir = \"{dir}\""),
    );
    assert!(text.contains(&format!("download_dir = \"{dir}\"")));
    std::fs::write(&config, text).unwrap();
    config
}

/// A download folder that is not the connector's own is refused before anything is touched:
/// exit 2 naming the key, from `once` and from `check --offline`, and every file stays.
#[tokio::test(flavor = "multi_thread")]
async fn a_download_dir_that_is_not_the_connectors_own_is_refused_with_exit_2() {
    let tenant = Tenant::start(scenario::single("malicious", true)).await;
    let root = tenant.scratch.path().to_path_buf();
    // An operator's folder with their files in it.
    let home = root.join("home");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::write(home.join("report.docx"), b"mine").unwrap();
    std::fs::write(root.join("operator.txt"), b"mine").unwrap();

    let cases: [(&str, String, &str); 4] = [
        ("the working directory", ".".into(), "working directory"),
        (
            "the folder holding state_file and log_file",
            root.display().to_string(),
            "general.state_file",
        ),
        (
            "a folder holding an operator's files",
            home.display().to_string(),
            "report.docx",
        ),
        // Only `check`: on a build without the guard, `once` would empty the whole machine.
        ("/", "/".into(), "/"),
    ];
    for (what, dir, named) in cases {
        let config = with_download_dir(&tenant, &dir);
        let commands: &[&[&str]] = if dir == "/" {
            &[&["check", "--offline"]]
        } else {
            &[&["check", "--offline"], &["once"]]
        };
        for args in commands {
            // `.` is the scratch folder; the others run where the test runs.
            let cwd = (dir == ".").then_some(root.as_path());
            let output = run_binary(&config, args, cwd).await;
            let text = output_text(&output);
            assert_eq!(output.status.code(), Some(2), "{what}, {args:?}: {text}");
            assert!(
                text.contains("crowdstrike.download_dir") && text.contains(named),
                "{what}, {args:?}: {text}"
            );
        }
        assert!(home.join("report.docx").exists(), "{what}");
        assert!(root.join("operator.txt").exists(), "{what}");
        assert!(config.exists(), "{what}");
    }
    assert!(
        tenant
            .sim
            .snapshot()
            .alerts
            .iter()
            .all(|a| a.comments.is_empty()),
        "a refused start acted"
    );
}
