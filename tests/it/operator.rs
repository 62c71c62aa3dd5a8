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

// ---- One process per state file ----------------------------------------------------------------

/// Starts the binary with `args` on `config`, its output in `out.out` and `out.err`.
fn spawn(config: &Path, args: &[&str], out: &Path) -> std::process::Child {
    let bin = assert_cmd::cargo::cargo_bin("falcon-vmray-connector");
    let mut cmd = std::process::Command::new(bin);
    for name in crate::support::INHERITED_SETTINGS {
        cmd.env_remove(name);
    }
    cmd.arg("--config")
        .arg(config)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(out.with_extension("out")).unwrap())
        .stderr(std::fs::File::create(out.with_extension("err")).unwrap())
        .spawn()
        .unwrap()
}

/// Waits for the child without blocking the runtime (the simulator lives in this process).
async fn wait_child(
    child: &mut std::process::Child,
    limit: std::time::Duration,
) -> Option<std::process::ExitStatus> {
    let start = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if start.elapsed() > limit {
            return None;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

fn signal(child: &std::process::Child, name: &str) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{name}"))
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -{name} failed");
}

/// Waits for `ready`, failing after 30 s.
async fn until(what: &str, ready: impl Fn() -> bool) {
    let started = std::time::Instant::now();
    while !ready() {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "never: {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A daemon runs; a second daemon on its state file exits 3 at once, a `once` beside it exits 3
/// after `lock_wait`, both naming the daemon's PID, and VMRay gets the sample once.
#[tokio::test(flavor = "multi_thread")]
async fn a_second_connector_on_the_same_state_file_exits_3_naming_the_first_ones_pid() {
    use std::time::{Duration, Instant};
    let tenant = Tenant::start(scenario::single("malicious", false)).await;
    let config = tenant.config_file("", "", "");
    let out = tenant.scratch.path().join("daemon");
    let mut daemon = spawn(&config, &["run"], &out);
    let pid = daemon.id().to_string();
    until("the daemon's first cycle acted", || {
        tenant
            .sim
            .snapshot()
            .alerts
            .iter()
            .all(|a| !a.comments.is_empty())
    })
    .await;

    let mut second = spawn(&config, &["run"], &tenant.scratch.path().join("second"));
    let status = wait_child(&mut second, Duration::from_secs(10)).await;
    if status.is_none() {
        second.kill().unwrap();
    }
    let text = std::fs::read_to_string(tenant.scratch.path().join("second.err")).unwrap();
    assert_eq!(status.and_then(|s| s.code()), Some(3), "{text}");
    assert!(text.contains(&format!("PID {pid}")), "{text}");

    let waiting = tenant.config_file("lock_wait = 1", "", "");
    let started = Instant::now();
    let once = run_binary(&waiting, &["once"], None).await;
    let took = started.elapsed();
    let text = output_text(&once);
    assert_eq!(once.status.code(), Some(3), "{text}");
    assert!(
        text.contains(&format!("PID {pid}")) && text.contains("waited 1 s"),
        "{text}"
    );
    assert!(took >= Duration::from_secs(1), "{took:?}");

    assert!(daemon.try_wait().unwrap().is_none(), "the daemon stopped");
    signal(&daemon, "TERM");
    let status = wait_child(&mut daemon, Duration::from_secs(10)).await;
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    let tenant_now = tenant.sim.snapshot();
    assert_eq!(tenant_now.submissions.len(), 1, "submitted twice");
    assert!(tenant_now.alerts.iter().all(|a| a.comments.len() == 1));
}

/// A second connector with its own state file but the first one's download folder exits 3
/// naming the first one's PID and the folder, before it deletes anything: a file named like a
/// sample (the first one's, mid-upload) is still there.
#[tokio::test(flavor = "multi_thread")]
async fn a_second_connector_on_the_same_download_dir_exits_3_and_deletes_none_of_its_samples() {
    use std::time::Duration;
    let tenant = Tenant::start(scenario::single("malicious", false)).await;
    let config = tenant.config_file("", "", "");
    let mut daemon = spawn(&config, &["run"], &tenant.scratch.path().join("daemon"));
    let pid = daemon.id().to_string();
    until("the daemon's first cycle acted", || {
        tenant
            .sim
            .snapshot()
            .alerts
            .iter()
            .all(|a| !a.comments.is_empty())
    })
    .await;
    let downloads = tenant.scratch.path().join("downloads");
    let in_flight = downloads.join("ab".repeat(32));
    std::fs::write(&in_flight, b"the first connector's sample").unwrap();

    let root = tenant.scratch.path().display().to_string();
    let other = tenant.scratch.path().join("other.toml");
    let text = std::fs::read_to_string(&config).unwrap().replace(
        &format!("{root}/state/connector.db"),
        &format!("{root}/other-state/connector.db"),
    );
    assert!(text.contains("other-state"));
    assert!(text.starts_with("[general]\n"));
    let text = text.replacen("[general]\n", "[general]\nlock_wait = 1\n", 1);
    std::fs::write(&other, text).unwrap();
    for args in [["run"], ["once"]] {
        let second = run_binary(&other, &args, None).await;
        let text = output_text(&second);
        assert_eq!(second.status.code(), Some(3), "{args:?}: {text}");
        assert!(
            text.contains(&format!("PID {pid}")) && text.contains("download folder"),
            "{args:?}: {text}"
        );
    }
    assert!(
        in_flight.exists(),
        "the second connector deleted the first one's sample"
    );

    signal(&daemon, "TERM");
    let status = wait_child(&mut daemon, Duration::from_secs(10)).await;
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
}

/// `once` started while another connector holds the state file waits, touching nothing, and
/// runs its cycle as soon as the other one is done.
#[tokio::test(flavor = "multi_thread")]
async fn once_waits_for_a_running_connector_and_then_runs_its_cycle() {
    use std::time::Duration;
    let tenant = Tenant::start(scenario::single("malicious", true)).await;
    let config = tenant.config_file("", "", "");
    let state = tenant.scratch.path().join("state/connector.db");
    // This test process plays the running connector.
    let held = falcon_vmray_connector::instance::acquire(&state, Duration::ZERO, |_| {}).unwrap();
    let mut once = spawn(&config, &["once"], &tenant.scratch.path().join("once"));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(once.try_wait().unwrap().is_none(), "`once` did not wait");
    assert!(
        tenant.sim.snapshot().requests.is_empty(),
        "`once` called an API while waiting"
    );
    let log = std::fs::read_to_string(tenant.scratch.path().join("once.out")).unwrap();
    assert!(
        log.contains(&format!("PID {}", std::process::id())),
        "{log}"
    );
    drop(held);
    let status = wait_child(&mut once, Duration::from_secs(30)).await;
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    assert!(
        tenant
            .sim
            .snapshot()
            .alerts
            .iter()
            .all(|a| a.comments.len() == 1)
    );
}

// ---- Secrets in config errors ------------------------------------------------------------------

/// A config whose secret lines are broken (a missing quote, an unquoted key) or whose secret
/// landed in the wrong key: exit 2, naming where, and neither secret on the screen.
#[test]
fn a_broken_config_never_prints_a_secret() {
    use crate::support::{API_KEY, CLIENT_SECRET, Scratch};
    let scratch = Scratch::new();
    let path = scratch.path().join("connector.toml");
    let cases = [
        format!(
            "[crowdstrike]\nclient_id = \"id\"\nclient_secret = \"{CLIENT_SECRET}\n[vmray]\napi_key = \"{API_KEY}\"\n"
        ),
        format!(
            "[crowdstrike]\nclient_id = \"id\"\nclient_secret = \"{CLIENT_SECRET}\"\n[vmray]\napi_key = {API_KEY}\n"
        ),
        format!(
            "[crowdstrike]\nclient_id = \"id\"\nclient_secret = \"{CLIENT_SECRET}\"\nbase_url = \"{CLIENT_SECRET}\"\n[vmray]\napi_key = \"{API_KEY}\"\napi_key_type = \"{API_KEY}\"\n"
        ),
    ];
    for text in cases {
        std::fs::write(&path, &text).unwrap();
        for args in [&["once"][..], &["check", "--offline"][..]] {
            let output = connector()
                .arg("--config")
                .arg(&path)
                .args(args)
                .output()
                .unwrap();
            let shown = output_text(&output);
            assert_eq!(output.status.code(), Some(2), "{shown}");
            assert!(
                shown.contains("line") || shown.contains("crowdstrike.base_url"),
                "{shown}"
            );
            assert!(
                !shown.contains(CLIENT_SECRET) && !shown.contains(API_KEY),
                "{shown}"
            );
        }
    }
}

// ---- SIGHUP and samples on disk ----------------------------------------------------------------

/// The daemon with a decrypted sample on disk (its upload hangs) gets `signals`; returns the
/// exit status and what the download folder still holds.
async fn signal_with_a_sample_on_disk(
    signals: &[&str],
) -> (
    Tenant,
    Option<std::process::ExitStatus>,
    std::time::Duration,
    Vec<String>,
) {
    use falcon_vmray_connector::sim::Faults;
    use std::time::{Duration, Instant};
    let tenant = Tenant::start(scenario::single("malicious", false)).await;
    tenant.sim.set_faults(Faults {
        hang_rate: 1.0,
        hang_path: Some("/rest/sample/submit".into()),
        ..Faults::default()
    });
    let config = tenant.config_file("", "", "");
    let downloads = tenant.scratch.path().join("downloads");
    let mut daemon = spawn(&config, &["run"], &tenant.scratch.path().join("daemon"));
    until("a sample on disk, its upload hanging", || {
        names_in(&downloads).iter().any(|n| n.len() == 64)
            && tenant
                .sim
                .snapshot()
                .requests
                .iter()
                .any(|r| r.path.contains("/rest/sample/submit"))
    })
    .await;
    assert!(daemon.try_wait().unwrap().is_none(), "stopped on its own");
    for name in signals {
        signal(&daemon, name);
    }
    let asked = Instant::now();
    let status = wait_child(&mut daemon, Duration::from_secs(10)).await;
    let took = asked.elapsed();
    if status.is_none() {
        daemon.kill().unwrap();
    }
    let left = names_in(&downloads)
        .into_iter()
        .filter(|n| falcon_vmray_connector::downloads::is_own_file(n))
        .collect();
    (tenant, status, took, left)
}

/// SIGHUP ends the daemon as SIGTERM does: at the next safe point, exit 0, the sample's row
/// saved for the next start, and no sample left in the download folder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_stops_the_daemon_like_sigterm_and_leaves_no_sample_on_disk() {
    let (tenant, status, took, left) = signal_with_a_sample_on_disk(&["HUP"]).await;
    println!("SIGHUP to exit: {took:?}, {status:?}");
    assert!(status.is_some_and(|s| s.code() == Some(0)), "{status:?}");
    assert!(left.is_empty(), "samples left: {left:?}");
    let log = tenant.scratch.log_text();
    assert!(log.contains("shutdown requested (SIGHUP)"), "{log}");
    let store = falcon_vmray_connector::state::StateStore::open(
        &tenant.scratch.path().join("state/connector.db"),
    )
    .unwrap();
    let saved = store.in_flight().unwrap();
    assert_eq!(saved.len(), 1, "{saved:?}");
}

/// A second signal exits at once (130) and still deletes the sample first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once_and_leaves_no_sample_on_disk() {
    let (_tenant, status, _took, left) = signal_with_a_sample_on_disk(&["HUP", "TERM"]).await;
    let code = status.and_then(|s| s.code());
    assert!(matches!(code, Some(0 | 130)), "{status:?}");
    assert!(left.is_empty(), "samples left: {left:?}");
}

// ---- Private files -----------------------------------------------------------------------------

/// Outside systemd (the umask of a shell, 022 here): the state store with its -wal and -shm,
/// the lock file and the log are 0600, the folders the connector creates 0700.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_store_log_and_their_folders_are_created_private() {
    use std::os::unix::fs::PermissionsExt;
    use std::time::Duration;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let tenant = Tenant::start(scenario::single("malicious", false)).await;
    let root = tenant.scratch.path().to_path_buf();
    let text = std::fs::read_to_string(tenant.config_file("", "", ""))
        .unwrap()
        .replace("/state/connector.db", "/var/state/connector.db")
        .replace("/log/connector.log", "/var/log/connector.log");
    let config = root.join("nested.toml");
    std::fs::write(&config, text).unwrap();
    let mut daemon = spawn(&config, &["run"], &root.join("daemon"));
    until("the first cycle acted", || {
        tenant
            .sim
            .snapshot()
            .alerts
            .iter()
            .all(|a| !a.comments.is_empty())
    })
    .await;
    // While it runs: SQLite's companions exist only while the store is open.
    let state = root.join("var/state");
    let mut files = vec![
        state.join("connector.db"),
        state.join("connector.db-wal"),
        state.join("connector.db-shm"),
        state.join("connector.db.lock"),
    ];
    let logs: Vec<PathBuf> = names_in(&root.join("var/log"))
        .into_iter()
        .map(|n| root.join("var/log").join(n))
        .collect();
    assert!(!logs.is_empty(), "no log file");
    files.extend(logs);
    let modes: Vec<(String, String)> = files
        .iter()
        .map(|f| (f.display().to_string(), format!("{:o}", mode(f))))
        .collect();
    signal(&daemon, "TERM");
    let status = wait_child(&mut daemon, Duration::from_secs(10)).await;
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    assert!(modes.iter().all(|(_, m)| m == "600"), "{modes:?}");
    for folder in [
        root.join("var"),
        state.clone(),
        root.join("var/log"),
        root.join("downloads"),
    ] {
        assert_eq!(mode(&folder), 0o700, "{}", folder.display());
    }
}

// ---- A full disk is the connector's failure, not the samples' ---------------------------------

/// Every sample fails to be stored in the download folder (a folder stands where each sample
/// goes, so the rename fails even for root, as it would on a full disk): `once` exits 1, no
/// sample starts counting towards `give_up_after` (1 s here) and none gets a case; with the
/// folder fixed, the next `once` submits them all.
#[tokio::test(flavor = "multi_thread")]
async fn once_exits_1_when_no_sample_can_be_stored_and_gives_nothing_up() {
    use falcon_vmray_connector::model::Sha256;
    use falcon_vmray_connector::state::StateStore;
    use scenario::{alert, file, hosts};
    let scenario = falcon_vmray_connector::sim::Scenario {
        hosts: hosts(3),
        files: (1..=3).map(|n| file(n, "malicious", false)).collect(),
        alerts: (0..3).map(|n| alert(n, n)).collect(),
        ..Default::default()
    };
    let shas: Vec<String> = (1..=3)
        .map(|n| falcon_vmray_connector::sim::files::sha256_of(n, 4096))
        .collect();
    let tenant = Tenant::start(scenario).await;
    let config = tenant.config_file(
        "submit_or_download_error_open_case = true\ngive_up_after = 1",
        "",
        "",
    );
    let downloads = tenant.scratch.path().join("downloads");
    for sha in &shas {
        std::fs::create_dir_all(downloads.join(sha).join("in-the-way")).unwrap();
    }

    let once = run_binary(&config, &["once"], None).await;
    let text = output_text(&once);
    assert_eq!(once.status.code(), Some(1), "{text}");
    assert!(text.contains("cannot store the sample"), "{text}");
    let store = StateStore::open(&tenant.scratch.path().join("state/connector.db")).unwrap();
    for sha in &shas {
        let record = store
            .sample(&sha.parse::<Sha256>().unwrap())
            .unwrap()
            .expect("the sample is kept for the next cycle");
        assert_eq!(
            record.failing_since, None,
            "counted as the sample's own: {record:?}"
        );
        assert!(record.evidence_json.is_some(), "given up: {record:?}");
    }
    drop(store);
    let t = tenant.sim.snapshot();
    assert_eq!((t.cases.len(), t.submissions.len()), (0, 0));

    for sha in &shas {
        std::fs::remove_dir_all(downloads.join(sha)).unwrap();
    }
    let once = run_binary(&config, &["once"], None).await;
    assert!(once.status.success(), "{}", output_text(&once));
    let t = tenant.sim.snapshot();
    assert_eq!((t.cases.len(), t.submissions.len()), (0, 3));
}
