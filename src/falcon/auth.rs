//! The process's one OAuth2 token, and region discovery.
//!
//! Every call of every clone shares one token (the original logged in seven times a cycle). It is
//! renewed a minute before `expires_in` runs out and once more when Falcon answers 401. With
//! `base_url = "auto"` the first token call goes to US-1, follows at most one 308 to the home
//! cloud, and the base URL is pinned from the `X-Cs-Region` answer header.

use reqwest::StatusCode;
use reqwest::header::ACCEPT;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tokio::time::Instant;

use super::retry::{self, Attempt, Mode};
use super::{FalconClient, FalconError};
use crate::config::FalconBaseUrl;

/// Where `auto` asks first.
pub(crate) const US1: &str = "https://api.crowdstrike.com";

/// Renew this long before the token expires, so no call goes out with a token about to lapse.
const RENEW_MARGIN_SECS: u64 = 60;

/// The longest `expires_in` believed.
const MAX_TOKEN_LIFETIME_SECS: u64 = 86_400;

pub(crate) struct Token {
    value: SecretString,
    renew_at: Instant,
}

#[derive(Deserialize)]
struct TokenReply {
    access_token: SecretString,
    #[serde(default)]
    expires_in: Option<u64>,
}

/// The API base URL of a public cloud named by `X-Cs-Region` (every public region: US-1, US-2,
/// US-3, EU-1). GovCloud is not discovered: it needs an explicit `base_url`.
pub(crate) fn region_base_url(region: &str) -> Option<&'static str> {
    let key: String = region
        .chars()
        .filter(|c| *c != '-' && *c != '_')
        .collect::<String>()
        .to_ascii_lowercase();
    match key.as_str() {
        "us1" => Some(US1),
        "us2" => Some("https://api.us-2.crowdstrike.com"),
        "us3" => Some("https://api.us-3.crowdstrike.com"),
        "eu1" => Some("https://api.eu-1.crowdstrike.com"),
        _ => None,
    }
}

/// Where a 308 on the token call points: the `Location` header's origin, or, when Falcon
/// leaves `Location` out, the public cloud its `X-Cs-Region` header names.
fn redirect_origin(base: &str, location: Option<&str>, region: Option<&str>) -> Option<String> {
    location
        .and_then(|l| reqwest::Url::parse(base).ok()?.join(l).ok())
        .map(|url| url.origin().ascii_serialization())
        .or_else(|| region.and_then(region_base_url).map(str::to_string))
}

impl FalconClient {
    /// The current token, fetching a new one when there is none or it is about to expire.
    /// Holding the lock while fetching makes concurrent callers wait for one token request.
    pub(crate) async fn token(&self) -> Result<SecretString, FalconError> {
        let mut slot = self.inner.token.lock().await;
        if let Some(token) = slot.as_ref()
            && Instant::now() < token.renew_at
        {
            return Ok(token.value.clone());
        }
        let token = self
            .interruptible(self.retrying(Mode::Idempotent, || self.token_attempt()))
            .await?;
        let value = token.value.clone();
        *slot = Some(token);
        Ok(value)
    }

    /// Forgets `used` after a 401, unless another task has already replaced it.
    pub(crate) async fn invalidate_token(&self, used: &SecretString) {
        let mut slot = self.inner.token.lock().await;
        if slot
            .as_ref()
            .is_some_and(|t| t.value.expose_secret() == used.expose_secret())
        {
            *slot = None;
        }
    }

    async fn token_attempt(&self) -> Result<Token, Attempt> {
        let settings = self.settings();
        let mut base = self.base_url();
        let mut redirected = false;
        loop {
            self.wait_for_budget().await;
            let mut form = vec![
                ("client_id", settings.client_id.as_str()),
                ("client_secret", settings.client_secret.expose_secret()),
            ];
            if let Some(member_cid) = settings.member_cid.as_deref() {
                form.push(("member_cid", member_cid));
            }
            let response = self
                .inner
                .http
                .post(format!("{base}/oauth2/token"))
                .header(ACCEPT, "application/json")
                .form(&form)
                .timeout(settings.request_timeout)
                .send()
                .await
                .map_err(|e| {
                    crate::metrics::api_request("falcon", None);
                    tracing::warn!(
                        trace_id = "none",
                        "Falcon token request failed: {}",
                        retry::describe(&e)
                    );
                    Attempt::transport(&e)
                })?;
            let status = response.status();
            crate::metrics::api_request("falcon", Some(status.as_u16()));
            let headers = response.headers().clone();
            let trace_id = retry::trace_id(&headers);
            if status == StatusCode::PERMANENT_REDIRECT && !redirected {
                let location = headers
                    .get(reqwest::header::LOCATION)
                    .and_then(|v| v.to_str().ok());
                let region = headers.get("x-cs-region").and_then(|v| v.to_str().ok());
                if let Some(origin) = redirect_origin(&base, location, region) {
                    tracing::info!(from = %base, to = %origin, "Falcon redirected the token request to the API client's home cloud");
                    base = origin;
                    redirected = true;
                    continue;
                }
            }
            if !status.is_success() {
                let body = response.bytes().await.unwrap_or_default();
                let messages = super::envelope::Envelope::error_messages_of(&body);
                tracing::warn!(
                    status = status.as_u16(),
                    trace_id = trace_id.as_deref().unwrap_or("none"),
                    messages = %messages.join("; "),
                    "Falcon refused a token"
                );
                let error = match status.as_u16() {
                    400 | 401 => FalconError::Unauthorized,
                    403 => FalconError::TokenForbidden { messages },
                    429 => FalconError::RateLimited,
                    code => FalconError::Api {
                        status: code,
                        messages,
                        trace_id,
                    },
                };
                return Err(Attempt::status(error, status, retry::retry_after(&headers)));
            }
            let body = response.bytes().await.map_err(|e| Attempt::transport(&e))?;
            let reply: TokenReply = serde_json::from_slice(&body).map_err(|e| {
                Attempt::garbled(FalconError::Decode {
                    what: format!("token answer: {}", e.classify_name()),
                })
            })?;
            let region = headers.get("x-cs-region").and_then(|v| v.to_str().ok());
            self.pin_base_url(&base, redirected, region);
            // A lifetime beyond a day is a broken answer (Falcon gives 30 minutes); unbounded,
            // it would overflow the clock.
            let lifetime = reply
                .expires_in
                .unwrap_or(1799)
                .min(MAX_TOKEN_LIFETIME_SECS)
                .saturating_sub(RENEW_MARGIN_SECS);
            tracing::debug!(lifetime_secs = lifetime, "obtained a Falcon token");
            return Ok(Token {
                value: reply.access_token,
                renew_at: Instant::now() + std::time::Duration::from_secs(lifetime),
            });
        }
    }

    /// Decides where later calls go after a successful token call to `answered`.
    fn pin_base_url(&self, answered: &str, redirected: bool, region: Option<&str>) {
        let regional = region.and_then(region_base_url);
        let pinned = match (&self.settings().base_url, regional) {
            (FalconBaseUrl::Auto, Some(url)) => url.to_string(),
            (FalconBaseUrl::Auto, None) => {
                if let Some(region) = region {
                    tracing::warn!(
                        region,
                        base_url = answered,
                        "Falcon named a region the connector cannot map (GovCloud needs an explicit base_url); keeping the URL that answered"
                    );
                }
                answered.to_string()
            }
            (FalconBaseUrl::Fixed(configured), regional) => {
                // Only a CrowdStrike cloud URL can be in the wrong region; a proxy or a test
                // server in front of Falcon is the operator's deliberate choice.
                if let Some(url) = regional
                    && url != configured
                    && !redirected
                    && configured.contains(".crowdstrike.")
                {
                    tracing::warn!(configured = %configured, region = region.unwrap_or(""), "the API client's region differs from the configured base_url");
                }
                answered.to_string()
            }
        };
        let mut current = self
            .inner
            .base_url
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if *current != pinned {
            tracing::info!(base_url = %pinned, "Falcon base URL pinned");
            *current = pinned;
        }
    }
}

/// serde_json errors can quote input; name only their category so no token reaches a log.
trait Classify {
    fn classify_name(&self) -> &'static str;
}

impl Classify for serde_json::Error {
    fn classify_name(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "I/O error",
            serde_json::error::Category::Syntax => "not JSON",
            serde_json::error::Category::Data => "missing access_token",
            serde_json::error::Category::Eof => "cut short",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commercial_regions_map_and_govcloud_does_not() {
        assert_eq!(region_base_url("us-1"), Some(US1));
        assert_eq!(
            region_base_url("US2"),
            Some("https://api.us-2.crowdstrike.com")
        );
        assert_eq!(
            region_base_url("eu-1"),
            Some("https://api.eu-1.crowdstrike.com")
        );
        assert_eq!(
            region_base_url("US-3"),
            Some("https://api.us-3.crowdstrike.com")
        );
        assert_eq!(region_base_url("us-gov-1"), None);
    }

    #[test]
    fn a_308_without_location_follows_x_cs_region() {
        let base = "https://api.crowdstrike.com";
        assert_eq!(
            redirect_origin(base, None, Some("eu-1")).as_deref(),
            Some("https://api.eu-1.crowdstrike.com")
        );
        assert_eq!(
            redirect_origin(
                base,
                Some("https://api.us-2.crowdstrike.com/oauth2/token"),
                Some("eu-1")
            )
            .as_deref(),
            Some("https://api.us-2.crowdstrike.com")
        );
        assert_eq!(redirect_origin(base, None, Some("us-gov-1")), None);
        assert_eq!(redirect_origin(base, None, None), None);
    }
}

#[cfg(test)]
mod discovery_tests {
    use std::time::Duration;

    use secrecy::SecretString;
    use serde_json::json;
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    use crate::config::FalconBaseUrl;
    use crate::falcon::{FalconClient, FalconSettings};

    fn settings() -> FalconSettings {
        FalconSettings {
            base_url: FalconBaseUrl::Auto,
            client_id: "id".into(),
            client_secret: SecretString::from("secret"),
            member_cid: None,
            rate_limit_per_minute: 6000,
            max_sample_bytes: 1024,
            ca_bundles: Vec::new(),
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(2),
            max_retries: 1,
            max_retry_wait: Duration::from_secs(1),
            shutdown: Default::default(),
        }
    }

    #[tokio::test]
    async fn auto_follows_one_308_and_pins_the_home_cloud() {
        let discovery = MockServer::start().await;
        let home = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/oauth2/token"))
            .respond_with(
                ResponseTemplate::new(308)
                    .insert_header("Location", format!("{}/oauth2/token", home.uri()).as_str()),
            )
            .expect(1)
            .mount(&discovery)
            .await;
        Mock::given(method("POST"))
            .and(path("/oauth2/token"))
            .respond_with(
                ResponseTemplate::new(201)
                    .insert_header("X-Cs-Region", "lab-1")
                    .set_body_json(
                        json!({"access_token": "t", "token_type": "bearer", "expires_in": 1799}),
                    ),
            )
            .expect(1)
            .mount(&home)
            .await;
        Mock::given(path("/devices/entities/devices/v2"))
            .respond_with(
                ResponseTemplate::new(200)
                    .set_body_json(json!({"meta": {}, "resources": [{"device_id": "a"}]})),
            )
            .expect(1)
            .mount(&home)
            .await;
        let client = FalconClient::with_discovery_url(settings(), discovery.uri()).unwrap();
        assert_eq!(client.hosts(&["a".into()]).await.unwrap().len(), 1);
        assert_eq!(client.base_url(), home.uri());
    }

    #[tokio::test]
    async fn a_second_redirect_is_not_followed() {
        let discovery = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/oauth2/token"))
            .respond_with(ResponseTemplate::new(308).insert_header(
                "Location",
                format!("{}/oauth2/token", discovery.uri()).as_str(),
            ))
            .expect(2)
            .mount(&discovery)
            .await;
        let client = FalconClient::with_discovery_url(settings(), discovery.uri()).unwrap();
        let err = client.hosts(&["a".into()]).await.unwrap_err();
        assert!(
            matches!(err, crate::falcon::FalconError::Api { status: 308, .. }),
            "{err}"
        );
    }
}
