//! Seeded, repeatable fault injection: the same seed and the same sequence of requests give the
//! same faults, so a failing test can be replayed.

use std::collections::VecDeque;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::files::Rng;

/// Which simulated service a request went to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Service {
    Falcon,
    Vmray,
}

impl std::fmt::Display for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Service::Falcon => "falcon",
            Service::Vmray => "vmray",
        })
    }
}

/// The faults to inject. Rates are probabilities per request (0.0-1.0).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Faults {
    pub seed: u64,
    /// Added to every request of both services.
    pub latency_ms: u64,
    pub falcon_5xx_rate: f64,
    pub vmray_5xx_rate: f64,
    /// Requests per minute before 429 (`None`: unlimited).
    pub falcon_requests_per_minute: Option<u32>,
    pub vmray_requests_per_minute: Option<u32>,
    /// Rate of JSON bodies cut in half (status unchanged).
    pub malformed_json_rate: f64,
    /// Rate of sample downloads that stop halfway.
    pub truncated_download_rate: f64,
    /// Hashes whose download holds a different file (the hash check must catch it).
    pub wrong_file_hashes: Vec<String>,
    /// Rate of requests that never answer (until shutdown).
    pub hang_rate: f64,
    /// Only requests whose path contains this hang (`None`: any path).
    pub hang_path: Option<String>,
    /// VMRay refuses the API key (401 "Authentication failed", as for a revoked or rotated
    /// key) on every request, until the faults are changed back: an outage that is nobody's
    /// sample's fault.
    pub vmray_key_refused: bool,
    /// Overrides the scenario's token lifetime for tokens minted from now on (token expiry).
    pub token_lifetime_secs: Option<u64>,
    /// Crafted answers served instead of the real ones (hostile-input tests).
    pub overrides: Vec<Override>,
}

/// A crafted answer: every request to `service` whose path and query contain `path_contains`
/// gets `status` with `body`, before auth, limits and the other faults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Override {
    pub service: Service,
    pub path_contains: String,
    pub status: u16,
    pub content_type: String,
    pub body: Vec<u8>,
    /// Answers only this many matching requests, then the real answers come back (`None`:
    /// every one). A 5xx that passes is how a retry is tested.
    #[serde(default)]
    pub times: Option<u32>,
}

impl Override {
    /// A JSON answer with status 200.
    pub fn json(service: Service, path_contains: &str, body: impl Into<Vec<u8>>) -> Self {
        Override {
            service,
            path_contains: path_contains.into(),
            status: 200,
            content_type: "application/json".into(),
            body: body.into(),
            times: None,
        }
    }

    /// A binary answer with status 200 (a crafted sample download).
    pub fn bytes(service: Service, path_contains: &str, body: Vec<u8>) -> Self {
        Override {
            service,
            path_contains: path_contains.into(),
            status: 200,
            content_type: "application/octet-stream".into(),
            body,
            times: None,
        }
    }
}

/// What the fault layer decided for one request.
#[derive(Debug, Default)]
pub struct Decision {
    pub latency: Duration,
    pub hang: bool,
    pub server_error: bool,
    /// Seconds to wait before retrying, when the per-minute budget is spent.
    pub throttled: Option<u64>,
    pub malformed: bool,
    pub truncate: bool,
    pub remaining: u32,
    pub limit: u32,
}

/// Mutable fault state: the seeded generator and the sliding windows of the rate limits.
#[derive(Debug)]
pub struct FaultState {
    pub faults: Faults,
    rng: Rng,
    falcon_window: VecDeque<Instant>,
    vmray_window: VecDeque<Instant>,
    falcon_default_limit: u32,
}

impl FaultState {
    pub fn new(faults: Faults, falcon_default_limit: u32) -> Self {
        FaultState {
            rng: Rng::new(faults.seed ^ 0xFA17),
            faults,
            falcon_window: VecDeque::new(),
            vmray_window: VecDeque::new(),
            falcon_default_limit,
        }
    }

    /// The crafted answer for this request, if one is set (counting down a limited one).
    pub fn override_for(&mut self, service: Service, path_and_query: &str) -> Option<Override> {
        let found = self.faults.overrides.iter_mut().find(|o| {
            o.service == service && path_and_query.contains(&o.path_contains) && o.times != Some(0)
        })?;
        if let Some(left) = found.times.as_mut() {
            *left -= 1;
        }
        Some(found.clone())
    }

    pub fn set(&mut self, faults: Faults) {
        self.rng = Rng::new(faults.seed ^ 0xFA17);
        self.falcon_window.clear();
        self.vmray_window.clear();
        self.faults = faults;
    }

    /// Decides the fate of one request. Draws from the generator in a fixed order so the
    /// sequence is repeatable.
    pub fn decide(&mut self, service: Service, path: &str, now: Instant) -> Decision {
        let f = &self.faults;
        let (rate_5xx, budget) = match service {
            Service::Falcon => (f.falcon_5xx_rate, f.falcon_requests_per_minute),
            Service::Vmray => (f.vmray_5xx_rate, f.vmray_requests_per_minute),
        };
        let hang_applies = f.hang_path.as_deref().is_none_or(|p| path.contains(p));
        let mut d = Decision {
            latency: Duration::from_millis(f.latency_ms),
            ..Decision::default()
        };
        let hang_rate = f.hang_rate;
        let malformed_rate = f.malformed_json_rate;
        let truncate_rate = f.truncated_download_rate;
        let default_limit = match service {
            Service::Falcon => self.falcon_default_limit,
            Service::Vmray => u32::MAX,
        };
        let window = match service {
            Service::Falcon => &mut self.falcon_window,
            Service::Vmray => &mut self.vmray_window,
        };
        while window
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(60))
        {
            window.pop_front();
        }
        let limit = budget.unwrap_or(default_limit);
        d.limit = limit;
        if window.len() as u64 >= limit as u64 {
            let oldest = *window.front().expect("a full window is not empty");
            let wait = Duration::from_secs(60).saturating_sub(now.duration_since(oldest));
            d.throttled = Some(wait.as_secs_f64().ceil().max(1.0) as u64);
            d.remaining = 0;
        } else {
            window.push_back(now);
            d.remaining = limit.saturating_sub(window.len() as u32);
        }
        d.hang = hang_applies && self.rng.chance(hang_rate);
        d.server_error = self.rng.chance(rate_5xx);
        d.malformed = self.rng.chance(malformed_rate);
        d.truncate = self.rng.chance(truncate_rate);
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_faults() {
        let faults = Faults {
            seed: 9,
            falcon_5xx_rate: 0.3,
            malformed_json_rate: 0.2,
            ..Faults::default()
        };
        let now = Instant::now();
        let run = || {
            let mut s = FaultState::new(faults.clone(), 6000);
            (0..50)
                .map(|_| {
                    let d = s.decide(Service::Falcon, "/x", now);
                    (d.server_error, d.malformed)
                })
                .collect::<Vec<_>>()
        };
        let a = run();
        assert_eq!(a, run());
        assert!(a.iter().any(|x| x.0) && a.iter().any(|x| !x.0));
    }

    #[test]
    fn budget_throttles_until_the_window_slides() {
        let mut s = FaultState::new(
            Faults {
                vmray_requests_per_minute: Some(2),
                ..Faults::default()
            },
            6000,
        );
        let t0 = Instant::now();
        assert!(s.decide(Service::Vmray, "/", t0).throttled.is_none());
        assert!(s.decide(Service::Vmray, "/", t0).throttled.is_none());
        let d = s.decide(Service::Vmray, "/", t0 + Duration::from_secs(20));
        assert_eq!(d.throttled, Some(40));
        assert!(s.decide(Service::Falcon, "/", t0).throttled.is_none());
        assert!(
            s.decide(Service::Vmray, "/", t0 + Duration::from_secs(61))
                .throttled
                .is_none()
        );
    }
}
