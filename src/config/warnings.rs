//! Settings that are valid but risky, or that the loader had to change (a `time_span` the Falcon
//! budget cannot afford): the connector starts, and says at every start what the risk or the
//! change is and how to remove it. `run`, `once` and `check` show these; nothing else decides on
//! them.

use super::{Config, FalconBaseUrl};

/// One sentence per risky setting, each naming its key and what to do instead.
pub fn warnings(config: &Config) -> Vec<String> {
    let mut out = Vec::new();
    out.extend(super::budget::raised_warning(config));
    if let FalconBaseUrl::Fixed(url) = config.crowdstrike.base_url() {
        out.extend(plain_http(
            "crowdstrike.base_url",
            &url,
            "client secret and bearer tokens",
        ));
    }
    out.extend(plain_http("vmray.url", &config.vmray.url, "API key"));
    if !config.vmray.ssl_verify {
        out.push(ssl_verify_off(config));
    }
    out
}

/// A plain `http://` URL sends the credentials readable by anyone on the path, unless the
/// server is this machine (a local proxy or a test double). The URL is shown without any
/// user and password written into it, since the warning goes to the log.
fn plain_http(key: &str, url: &str, what: &str) -> Option<String> {
    let mut parsed = reqwest::Url::parse(url).ok()?;
    if parsed.scheme() != "http" || parsed.host_str().is_some_and(is_loopback) {
        return None;
    }
    let shown = if parsed.username().is_empty() && parsed.password().is_none() {
        url.to_owned()
    } else {
        // An http URL with a host always accepts these; the fallback never shows the original.
        if parsed.set_username("").is_err() || parsed.set_password(None).is_err() {
            return Some(format!(
                "{key} is a plain HTTP URL: the {what} cross the network unencrypted; use https://"
            ));
        }
        parsed.to_string()
    };
    Some(format!(
        "{key} is `{shown}`, plain HTTP: the {what} cross the network unencrypted; use https://"
    ))
}

/// 127.0.0.0/8, ::1 or `localhost` (an IPv6 host comes in brackets).
fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => bare.trim_end_matches('.').eq_ignore_ascii_case("localhost"),
    }
}

/// With verification off a CA bundle is moot, so the advice depends on whether one is set.
fn ssl_verify_off(config: &Config) -> String {
    let risk = "vmray.ssl_verify is false: the VMRay server's TLS certificate is NOT checked, so \
                anyone on the network path can read the API key and forge verdicts";
    let bundles = config.vmray_ca_bundles();
    if bundles.is_empty() {
        format!(
            "{risk}; if VMRay's certificate is signed by your own CA or a TLS-inspecting proxy, \
             set general.ca_bundle (or vmray.ca_bundle) to that CA's PEM file and \
             vmray.ssl_verify = true"
        )
    } else {
        let keys: Vec<&str> = bundles.iter().map(|b| b.key).collect();
        format!(
            "{risk}; {} is set but unused while verification is off: set vmray.ssl_verify = true",
            keys.join(" and ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_urls(falcon: &str, vmray: &str) -> Config {
        let mut config = Config::default();
        config.crowdstrike.base_url = falcon.into();
        config.vmray.url = vmray.into();
        config
    }

    #[test]
    fn plain_http_is_warned_about_unless_the_host_is_loopback() {
        let warned = warnings(&with_urls(
            "http://falcon-proxy.corp.example:8080",
            "http://10.0.0.5",
        ));
        assert_eq!(warned.len(), 2, "{warned:?}");
        assert!(warned[0].contains("crowdstrike.base_url") && warned[0].contains("https://"));
        assert!(warned[1].contains("vmray.url") && warned[1].contains("API key"));

        for (falcon, vmray) in [
            ("http://127.0.0.1:8080", "http://localhost:9000"),
            ("http://127.8.9.10", "http://[::1]:9000"),
            ("https://api.crowdstrike.com", "https://eu.cloud.vmray.com"),
            ("auto", "http://LOCALHOST"),
        ] {
            let quiet = warnings(&with_urls(falcon, vmray));
            assert!(quiet.is_empty(), "{falcon} {vmray}: {quiet:?}");
        }
    }

    #[test]
    fn the_plain_http_warning_never_shows_a_user_or_password_written_into_the_url() {
        let warned = warnings(&with_urls(
            "http://cs-user:s3cret-falcon@falcon-proxy.corp.example:8080",
            "http://vm-user:s3cret-vmray@10.0.0.5/",
        ));
        assert_eq!(warned.len(), 2, "{warned:?}");
        let text = warned.join("\n");
        for secret in ["s3cret", "cs-user", "vm-user", "@"] {
            assert!(!text.contains(secret), "{secret} leaked: {text}");
        }
        assert!(
            warned[0].contains("`http://falcon-proxy.corp.example:8080/`")
                && warned[1].contains("`http://10.0.0.5/`"),
            "{text}"
        );
    }

    #[test]
    fn the_ssl_verify_warning_recommends_a_ca_bundle_only_when_none_is_set() {
        let mut config = Config::default();
        config.vmray.ssl_verify = false;
        let without = warnings(&config).join("\n");
        assert!(without.contains("set general.ca_bundle"), "{without}");

        config.general.ca_bundle = Some("/etc/ssl/proxy-ca.pem".into());
        let with = warnings(&config).join("\n");
        assert!(!with.contains("set general.ca_bundle"), "{with}");
        assert!(
            with.contains("general.ca_bundle is set but unused")
                && with.contains("set vmray.ssl_verify = true"),
            "{with}"
        );
    }
}
