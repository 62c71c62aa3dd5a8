//! Shared test helpers: a scratch folder with a config file, and the binary under test.

use std::path::{Path, PathBuf};

use assert_cmd::Command;

/// Distinctive secrets, so a test can search every output for them.
pub const CLIENT_SECRET: &str = "cs-secret-Zq8xW1";
pub const API_KEY: &str = "vmray-key-Pk4Rt7";

/// A temporary folder holding a config whose paths all point inside it.
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Self {
        Scratch {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a config with local paths, the given extra TOML appended to its sections.
    pub fn config(&self, general: &str, crowdstrike: &str, vmray: &str) -> PathBuf {
        let root = self.path().display();
        let text = format!(
            "[general]\nlog_file = \"{root}/log/connector.log\"\nstate_file = \"{root}/state/connector.db\"\n{general}\n\
             [crowdstrike]\nclient_id = \"test-client\"\nclient_secret = \"{CLIENT_SECRET}\"\ndownload_dir = \"{root}/downloads\"\n{crowdstrike}\n\
             [vmray]\napi_key = \"{API_KEY}\"\n{vmray}\n"
        );
        let path = self.path().join("connector.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Everything the connector wrote to its log folder.
    pub fn log_text(&self) -> String {
        let mut text = String::new();
        if let Ok(entries) = std::fs::read_dir(self.path().join("log")) {
            for entry in entries.flatten() {
                text.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
            }
        }
        text
    }
}

/// Variables of the developer's or CI's environment that would change what the binary does.
pub const INHERITED_SETTINGS: [&str; 7] = [
    "CROWDSTRIKE_CLIENT_ID",
    "CROWDSTRIKE_CLIENT_SECRET",
    "CROWDSTRIKE_BASE_URL",
    "VMRAY_API_KEY",
    "VMRAY_BASE_URL",
    "RUST_LOG",
    "CONNECTOR_CONFIG",
];

/// The connector binary with a clean environment: no inherited credentials or RUST_LOG.
pub fn connector() -> Command {
    let mut cmd = Command::cargo_bin("falcon-vmray-connector").unwrap();
    for name in INHERITED_SETTINGS {
        cmd.env_remove(name);
    }
    cmd
}

/// A simulated tenant and a connector configured against it, in a scratch folder.
pub struct Tenant {
    pub sim: falcon_vmray_connector::sim::Simulator,
    pub scratch: Scratch,
}

/// Every request the connector sent the simulated Falcon is checked against CrowdStrike's API
/// definition when the test is done with the tenant (unless the test failed already).
impl Drop for Tenant {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            crate::conformance::assert_conform(&self.sim.snapshot().requests);
        }
    }
}

impl Tenant {
    pub async fn start(scenario: falcon_vmray_connector::sim::Scenario) -> Self {
        let sim = falcon_vmray_connector::sim::Simulator::start(scenario)
            .await
            .unwrap();
        Tenant {
            sim,
            scratch: Scratch::new(),
        }
    }

    /// Writes a config pointing at the simulator (fast polls), with extra lines per section.
    pub fn config_file(&self, general: &str, crowdstrike: &str, vmray: &str) -> PathBuf {
        let creds = self.sim.credentials();
        let root = self.scratch.path().display();
        let text = format!(
            "[general]\nlog_file = \"{root}/log/connector.log\"\nstate_file = \"{root}/state/connector.db\"\n{general}\n\
             [crowdstrike]\nclient_id = \"{}\"\nclient_secret = \"{}\"\nbase_url = \"{}\"\ndownload_dir = \"{root}/downloads\"\n{crowdstrike}\n\
             [vmray]\napi_key = \"{}\"\nurl = \"{}\"\n{vmray}\n{}",
            creds.client_id,
            creds.client_secret,
            self.sim.falcon_url(),
            creds.api_key,
            self.sim.vmray_url(),
            fast_polls(vmray),
        );
        let path = self.scratch.path().join("connector.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    pub fn config(
        &self,
        general: &str,
        crowdstrike: &str,
        vmray: &str,
    ) -> falcon_vmray_connector::config::Config {
        let path = self.config_file(general, crowdstrike, vmray);
        falcon_vmray_connector::config::load(
            Some(&path),
            &falcon_vmray_connector::config::Env::default(),
        )
        .unwrap()
    }

    /// Runs one cycle with a fresh connector (as a new process would) on this config.
    pub async fn cycle(
        &self,
        config: &falcon_vmray_connector::config::Config,
    ) -> falcon_vmray_connector::pipeline::CycleReport {
        let connector = falcon_vmray_connector::pipeline::Connector::new(config.clone()).unwrap();
        connector
            .run_cycle(&tokio_util::sync::CancellationToken::new())
            .await
            .unwrap()
    }

    /// Files left in the download folder.
    pub fn downloads_left(&self) -> Vec<String> {
        std::fs::read_dir(self.scratch.path().join("downloads"))
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    // The folder's own marker and lock are the connector's, not samples left behind.
                    .filter(|n| {
                        n != ".gitkeep"
                            && n != falcon_vmray_connector::downloads::MARKER
                            && n != falcon_vmray_connector::instance::DOWNLOAD_DIR_LOCK
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// One-second polls and a minute's patience, unless the test sets them itself.
fn fast_polls(vmray: &str) -> String {
    let mut extra = String::new();
    for (key, value) in [("poll_interval", "1"), ("analysis_job_timeout", "60")] {
        if !vmray.contains(key) {
            extra.push_str(&format!("{key} = {value}\n"));
        }
    }
    extra
}

/// Hand-built scenarios for pipeline tests.
pub mod scenario {
    use falcon_vmray_connector::sim::Scenario;
    use falcon_vmray_connector::sim::scenario::{
        AlertSpec, DetonationSpec, FileSpec, HostSpec, IocDomain, IocFile, IocIp, IocReportSpec,
        KnownSpec, QuarantineSpec, VtiSpec,
    };

    pub fn device(n: usize) -> String {
        format!("{:032x}", 0xd00 + n)
    }

    pub fn hosts(count: usize) -> Vec<HostSpec> {
        (0..count)
            .map(|n| HostSpec {
                device_id: device(n),
                hostname: format!("host-{n}"),
                platform: "Windows".into(),
                status: "normal".into(),
            })
            .collect()
    }

    /// A file whose detonation (or VMRay's existing knowledge, when `known`) gives `verdict`,
    /// with a dropped file, an IP and a domain in its IOC report.
    pub fn file(seed: u64, verdict: &str, known: bool) -> FileSpec {
        FileSpec {
            name: format!("sample-{seed}.exe"),
            path: format!("C:\\Users\\user\\Downloads\\sample-{seed}.exe"),
            size: 4096,
            content_seed: seed,
            vmray_known: known.then(|| KnownSpec {
                sample_id: 5000 + seed,
                verdict: verdict.into(),
                analysed_ago_secs: 86_400,
            }),
            detonation: DetonationSpec {
                verdict: verdict.into(),
                duration_ms: 300,
                classifications: vec!["Downloader".into()],
                threat_names: vec!["Emotet".into()],
                iocs: IocReportSpec {
                    files: vec![IocFile {
                        sha256: format!("{:064x}", 0xfeed_0000u64 + seed),
                        filename: Some("dropped.dll".into()),
                        verdict: verdict.into(),
                        category: "Dropped File".into(),
                        classifications: vec![],
                        threat_names: vec![],
                    }],
                    ips: vec![IocIp {
                        ip: format!("185.220.101.{}", seed % 250),
                        verdict: verdict.into(),
                        domains: vec![],
                    }],
                    domains: vec![IocDomain {
                        domain: format!("c2-{seed}.example"),
                        verdict: verdict.into(),
                    }],
                    ..IocReportSpec::default()
                },
                vtis: vec![VtiSpec {
                    category: "Persistence".into(),
                    operation: "Installs itself at startup".into(),
                    score: 4,
                    classifications: vec![],
                }],
                ..DetonationSpec::default()
            },
            ..FileSpec::default()
        }
    }

    pub fn alert(file: usize, host: usize) -> AlertSpec {
        AlertSpec {
            file,
            device_id: device(host),
            ..AlertSpec::default()
        }
    }

    pub fn quarantine(file: usize, host: usize) -> QuarantineSpec {
        QuarantineSpec {
            file,
            device_id: device(host),
            ..QuarantineSpec::default()
        }
    }

    /// Ages every alert and quarantine record so that the window of a second cycle no longer
    /// shows them: later cycles know them only from the evidence the state store saved.
    pub fn out_of_window(scenario: &mut Scenario) {
        for alert in &mut scenario.alerts {
            (alert.created_ago_secs, alert.updated_ago_secs) = (900, 800);
        }
        for record in &mut scenario.quarantines {
            (record.created_ago_secs, record.updated_ago_secs) = (900, 900);
        }
    }

    /// One file on three hosts: two alerts (hosts 0 and 1) and a quarantine record (host 2).
    pub fn single(verdict: &str, known: bool) -> Scenario {
        Scenario {
            hosts: hosts(3),
            files: vec![file(1, verdict, known)],
            alerts: vec![alert(0, 0), alert(0, 1)],
            quarantines: vec![quarantine(0, 2)],
            ..Scenario::default()
        }
    }
}

/// A connector whose clients give up fast (one retry, short waits), for outage tests.
pub fn impatient_connector(
    config: &falcon_vmray_connector::config::Config,
) -> falcon_vmray_connector::pipeline::Connector {
    use std::time::Duration;
    connector_retrying(
        config,
        1,
        Duration::from_millis(100),
        Duration::from_secs(5),
    )
}

/// A connector whose clients retry `retries` times, waiting at most `wait`, and give a request
/// `timeout` (the defaults are 5 retries, 2 minutes and 60 s).
pub fn connector_retrying(
    config: &falcon_vmray_connector::config::Config,
    retries: usize,
    wait: std::time::Duration,
    timeout: std::time::Duration,
) -> falcon_vmray_connector::pipeline::Connector {
    use falcon_vmray_connector::falcon::{FalconClient, FalconSettings};
    use falcon_vmray_connector::vmray::{VmrayClient, VmraySettings};
    let mut falcon = FalconSettings::for_connector(config);
    falcon.max_retries = retries;
    falcon.max_retry_wait = wait;
    falcon.request_timeout = timeout;
    let mut vmray = VmraySettings::for_connector(config);
    vmray.max_retries = retries;
    vmray.max_retry_wait = wait;
    vmray.request_timeout = timeout;
    let store =
        falcon_vmray_connector::state::StateStore::open(&config.general.state_file).unwrap();
    falcon_vmray_connector::pipeline::Connector::from_parts(
        config.clone(),
        FalconClient::new(falcon).unwrap(),
        VmrayClient::new(vmray).unwrap(),
        store,
    )
}
