//! `check`: the effective settings, secrets masked, then a live test of both APIs, so an
//! operator sees what the daemon will do and what the API client still lacks.

use crate::config::{Config, DataSource};
use crate::falcon::{FalconClient, FalconSettings, Scope, ScopeStatus};
use crate::vmray::{VmrayClient, VmraySettings};

/// One `section.key = value` line per setting, in the order of the example config's sections.
pub fn render_settings(config: &Config) -> String {
    let value = serde_json::to_value(config).expect("settings serialise");
    let mut out = String::new();
    for section in ["general", "crowdstrike", "vmray", "metrics"] {
        let Some(serde_json::Value::Object(keys)) = value.get(section) else {
            continue;
        };
        out.push_str(&format!("[{section}]\n"));
        for (key, value) in keys {
            let shown = match value {
                serde_json::Value::Null => "(unset)".to_string(),
                other => other.to_string(),
            };
            out.push_str(&format!("{key} = {shown}\n"));
        }
        out.push('\n');
    }
    out
}

/// The Falcon scopes this configuration uses.
pub fn needed_scopes(config: &Config) -> Vec<Scope> {
    let cs = &config.crowdstrike;
    let mut scopes = Vec::new();
    if cs.selected_data_sources.contains(&DataSource::Detect) {
        scopes.push(Scope::Alerts);
    }
    if cs.selected_data_sources.contains(&DataSource::Quarantine) {
        scopes.push(Scope::Quarantine);
    }
    scopes.push(Scope::SampleUploads);
    if cs.create_ioc || cs.find_another_host {
        scopes.push(Scope::IocManagement);
    }
    if cs.contain_host || cs.find_another_host {
        scopes.push(Scope::Hosts);
    }
    if cs.create_case || config.general.submit_or_download_error_open_case {
        scopes.push(Scope::Cases);
    }
    if cs.on_demand_scan {
        scopes.push(Scope::OnDemandScans);
    }
    scopes
}

/// Talks to both APIs and reports, line by line, what works. The second value is false when
/// anything the configuration needs is missing or failing.
pub async fn live(config: &Config) -> (String, bool) {
    let mut out = String::from("Live checks\n");
    let mut healthy = true;
    match FalconClient::new(FalconSettings::from_config(&config.crowdstrike)) {
        Ok(falcon) => {
            for (scope, status) in falcon.check_scopes(&needed_scopes(config)).await {
                let line = match status {
                    ScopeStatus::Ok => "OK".to_string(),
                    ScopeStatus::Missing => {
                        healthy = false;
                        format!(
                            "MISSING: add \"{}\" to the API client",
                            scope.console_name()
                        )
                    }
                    ScopeStatus::Failing(reason) => {
                        healthy = false;
                        format!("FAILING: {reason}")
                    }
                };
                out.push_str(&format!("  Falcon {:<28} {line}\n", format!("{scope:?}")));
            }
        }
        Err(e) => {
            healthy = false;
            out.push_str(&format!("  Falcon: {e}\n"));
        }
    }
    match VmrayClient::new(VmraySettings::from_config(&config.vmray)) {
        Ok(vmray) => match vmray.health().await {
            Ok(health) => {
                out.push_str(&format!(
                    "  VMRay                               OK (version {}, max upload {}){}\n",
                    health.version.as_deref().unwrap_or("unknown"),
                    health
                        .max_upload_bytes
                        .map(|b| format!("{} MiB", b / (1024 * 1024)))
                        .unwrap_or_else(|| "unknown".into()),
                    if health.limited_key {
                        " - the key may not read system_info; checked with a cheap read"
                    } else {
                        ""
                    }
                ));
            }
            Err(e) => {
                healthy = false;
                out.push_str(&format!(
                    "  VMRay                               FAILING: {e}\n"
                ));
            }
        },
        Err(e) => {
            healthy = false;
            out.push_str(&format!("  VMRay: {e}\n"));
        }
    }
    (out, healthy)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendered_settings_mask_secrets_and_show_every_section() {
        let mut config = Config::default();
        config.crowdstrike.client_secret = "cs-secret-4711".into();
        config.vmray.api_key = "vmray-key-0815".into();
        let text = render_settings(&config);
        assert!(!text.contains("cs-secret-4711") && !text.contains("vmray-key-0815"));
        assert!(text.contains("client_secret = \"********\""), "{text}");
        assert!(text.contains("[vmray]") && text.contains("time_span = 10800"));
        assert!(text.contains("member_cid = (unset)"));
    }

    #[test]
    fn scopes_follow_the_configuration() {
        let mut config = Config::default();
        assert_eq!(
            needed_scopes(&config),
            vec![
                Scope::Alerts,
                Scope::Quarantine,
                Scope::SampleUploads,
                Scope::IocManagement
            ]
        );
        config.crowdstrike.contain_host = true;
        config.crowdstrike.create_case = true;
        config.crowdstrike.create_ioc = false;
        config.crowdstrike.selected_data_sources = vec![DataSource::Quarantine];
        assert_eq!(
            needed_scopes(&config),
            vec![
                Scope::Quarantine,
                Scope::SampleUploads,
                Scope::Hosts,
                Scope::Cases
            ]
        );
    }
}
