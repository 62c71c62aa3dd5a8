//! `check`: the effective settings, secrets masked, so an operator sees what the daemon will do.

use crate::config::Config;

/// One `section.key = value` line per setting, in the order of the example config's sections.
pub fn render_settings(config: &Config) -> String {
    let value = serde_json::to_value(config).expect("settings serialise");
    let mut out = String::new();
    for section in ["general", "crowdstrike", "vmray"] {
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
}
