//! `check`: the effective settings, secrets masked, then a live test of both APIs, so an
//! operator sees what the daemon will do and what the API client still lacks.

use std::io::Write;
use std::time::Duration;

use tokio::time::Instant;

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

/// How long the whole live check may take unless `check --timeout` says otherwise: an
/// operator waiting on a terminal (or a deployment script) gets an answer in this time even
/// when the network is down or an endpoint never answers.
pub const DEFAULT_BUDGET: Duration = Duration::from_secs(20);

/// The part of the budget Falcon's probes (token and scopes) may use; VMRay gets the rest, so
/// a hanging Falcon never leaves VMRay unchecked.
const FALCON_SHARE: f64 = 0.6;
/// The longest any one probe may take, within what is left of its service's share.
const TOKEN_DEADLINE: Duration = Duration::from_secs(8);
const SCOPE_DEADLINE: Duration = Duration::from_secs(5);
const VMRAY_DEADLINE: Duration = Duration::from_secs(8);

/// Talks to both APIs and writes one line per probe to `out` as it goes: the probe's name when
/// it starts (flushed, so a slow probe shows what is being waited on), its outcome when it
/// ends. Each probe has its own deadline and the whole check ends within `budget`. Returns
/// false when anything the configuration needs is missing or failing.
pub async fn live(config: &Config, budget: Duration, out: &mut dyn Write) -> bool {
    let started = Instant::now();
    let falcon_until = started + budget.mul_f64(FALCON_SHARE);
    let all_until = started + budget;
    let mut healthy = true;
    let _ = writeln!(out, "Live checks (at most {} s)", budget.as_secs());

    let mut falcon_settings = FalconSettings::for_connector(config);
    let mut vmray_settings = VmraySettings::for_connector(config);
    quick(
        &mut falcon_settings.connect_timeout,
        &mut falcon_settings.request_timeout,
        &mut falcon_settings.max_retries,
        &mut falcon_settings.max_retry_wait,
    );
    quick(
        &mut vmray_settings.connect_timeout,
        &mut vmray_settings.request_timeout,
        &mut vmray_settings.max_retries,
        &mut vmray_settings.max_retry_wait,
    );

    match FalconClient::new(falcon_settings) {
        Ok(falcon) => {
            start(out, "Falcon token");
            let token = probe(falcon.check_token(), TOKEN_DEADLINE, falcon_until).await;
            let token_ok = match token {
                Probe::Done(Ok(())) => {
                    end(out, format!("OK (API at {})", falcon.base_url()));
                    true
                }
                Probe::Done(Err(e)) => {
                    end(out, format!("FAILING: {e}"));
                    false
                }
                Probe::TimedOut(after) => {
                    end(out, timed_out(after, "crowdstrike.base_url"));
                    false
                }
            };
            healthy &= token_ok;
            for scope in needed_scopes(config) {
                start(out, &format!("Falcon {scope:?}"));
                if !token_ok {
                    end(out, "NOT CHECKED: no token".into());
                    continue;
                }
                let line =
                    match probe(falcon.check_scope(scope), SCOPE_DEADLINE, falcon_until).await {
                        Probe::Done(ScopeStatus::Ok) => "OK".to_string(),
                        Probe::Done(ScopeStatus::Missing) => {
                            healthy = false;
                            format!(
                                "MISSING: add \"{}\" to the API client",
                                scope.console_name()
                            )
                        }
                        Probe::Done(ScopeStatus::Failing(reason)) => {
                            healthy = false;
                            format!("FAILING: {reason}")
                        }
                        Probe::TimedOut(after) => {
                            healthy = false;
                            timed_out(after, "crowdstrike.base_url")
                        }
                    };
                end(out, line);
            }
        }
        Err(e) => {
            healthy = false;
            let _ = writeln!(out, "  Falcon: {e}");
        }
    }

    match VmrayClient::new(vmray_settings) {
        Ok(vmray) => {
            start(out, "VMRay");
            let line = match probe(vmray.health(), VMRAY_DEADLINE, all_until).await {
                Probe::Done(Ok(health)) => format!(
                    "OK (version {}, max upload {}){}",
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
                ),
                Probe::Done(Err(e)) => {
                    healthy = false;
                    format!("FAILING: {e}")
                }
                Probe::TimedOut(after) => {
                    healthy = false;
                    timed_out(after, "vmray.url")
                }
            };
            end(out, line);
        }
        Err(e) => {
            healthy = false;
            let _ = writeln!(out, "  VMRay: {e}");
        }
    }
    healthy
}

/// A check asks once more at most and never waits long: it reports, the daemon retries.
fn quick(
    connect: &mut Duration,
    request: &mut Duration,
    retries: &mut usize,
    retry_wait: &mut Duration,
) {
    *connect = Duration::from_secs(5);
    *request = SCOPE_DEADLINE;
    *retries = 1;
    *retry_wait = Duration::from_secs(1);
}

enum Probe<T> {
    Done(T),
    TimedOut(Duration),
}

/// Runs one probe until its own deadline or the end of its share, whichever comes first.
async fn probe<T>(call: impl Future<Output = T>, own: Duration, until: Instant) -> Probe<T> {
    let allowed = own.min(until.saturating_duration_since(Instant::now()));
    match tokio::time::timeout(allowed, call).await {
        Ok(done) => Probe::Done(done),
        Err(_) => Probe::TimedOut(allowed),
    }
}

fn timed_out(after: Duration, key: &str) -> String {
    format!(
        "TIMED OUT: no answer within {:.0} s; check {key}, DNS, the network and any HTTPS_PROXY",
        after.as_secs_f64()
    )
}

/// The probe's name, flushed at once, so a probe being waited on is visible.
fn start(out: &mut dyn Write, name: &str) {
    let _ = write!(out, "  {name:<35} ");
    let _ = out.flush();
}

fn end(out: &mut dyn Write, outcome: String) {
    let _ = writeln!(out, "{outcome}");
    let _ = out.flush();
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
        assert!(text.contains("[vmray]") && text.contains("time_span = 60"));
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
