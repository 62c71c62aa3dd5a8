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

/// The connector binary with a clean environment: no inherited credentials or RUST_LOG.
pub fn connector() -> Command {
    let mut cmd = Command::cargo_bin("falcon-vmray-connector").unwrap();
    for name in [
        "CROWDSTRIKE_CLIENT_ID",
        "CROWDSTRIKE_CLIENT_SECRET",
        "CROWDSTRIKE_BASE_URL",
        "VMRAY_API_KEY",
        "VMRAY_BASE_URL",
        "RUST_LOG",
        "CONNECTOR_CONFIG",
    ] {
        cmd.env_remove(name);
    }
    cmd
}
