//! Which failed Falcon calls are worth another try, and how long to wait before it.
//!
//! Reads and idempotent updates retry on 429, 5xx, timeouts and connection errors. Calls that
//! create something ([`Mode::Once`]) retry only when Falcon cannot have acted on them: a 429 or
//! a connection that never opened. Everything else is the caller's to sort out (check whether
//! the first attempt landed before sending again).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use backon::ExponentialBuilder;
use reqwest::StatusCode;
use reqwest::header::HeaderMap;

use super::{FalconError, FalconSettings};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Safe to send again whatever happened.
    Idempotent,
    /// Sent again only when it cannot have reached Falcon.
    Once,
}

/// One failed try, classified.
#[derive(Debug)]
pub(crate) struct Attempt {
    pub error: FalconError,
    /// What the server asked for (`X-RateLimit-RetryAfter`), already relative to now.
    pub retry_after: Option<Duration>,
    transient: bool,
    /// Falcon certainly did not act on the request (429, connection refused).
    unsent: bool,
}

impl Attempt {
    pub fn fatal(error: FalconError) -> Self {
        Attempt {
            error,
            retry_after: None,
            transient: false,
            unsent: false,
        }
    }

    /// An answer that arrived cut short or garbled (a proxy, a load balancer): worth another
    /// try for a read, not for a create that may have landed.
    pub fn garbled(error: FalconError) -> Self {
        Attempt {
            error,
            retry_after: None,
            transient: true,
            unsent: false,
        }
    }

    pub fn transport(e: &reqwest::Error) -> Self {
        Attempt {
            error: FalconError::Transport(describe(e)),
            retry_after: None,
            transient: true,
            unsent: e.is_connect(),
        }
    }

    pub fn status(error: FalconError, status: StatusCode, retry_after: Option<Duration>) -> Self {
        let throttled = status == StatusCode::TOO_MANY_REQUESTS;
        Attempt {
            error,
            retry_after,
            transient: throttled || status.is_server_error(),
            unsent: throttled,
        }
    }

    pub fn retryable(&self, mode: Mode) -> bool {
        match mode {
            Mode::Idempotent => self.transient,
            Mode::Once => self.transient && self.unsent,
        }
    }

    pub fn into_error(self) -> FalconError {
        self.error
    }
}

impl FalconError {
    /// The request may or may not have been carried out (a timeout, a 5xx): check before
    /// sending a create again.
    pub(crate) fn is_ambiguous(&self) -> bool {
        match self {
            // A garbled answer to a create arrived after Falcon acted on it, or did not.
            FalconError::Transport(_) | FalconError::Decode { .. } => true,
            // Shutdown may have cut the request after Falcon received it.
            FalconError::Interrupted => true,
            FalconError::Api { status, .. } => *status >= 500,
            _ => false,
        }
    }
}

/// Exponential backoff with jitter. The first delay scales with `max_retry_wait` (1% of it,
/// between 10 ms and 1 s), so production waits about a second while tests stay fast.
pub(crate) fn backoff(settings: &FalconSettings) -> ExponentialBuilder {
    let first =
        (settings.max_retry_wait / 100).clamp(Duration::from_millis(10), Duration::from_secs(1));
    ExponentialBuilder::default()
        .with_min_delay(first)
        .with_max_delay(settings.max_retry_wait.max(first))
        .with_max_times(settings.max_retries)
        .with_jitter()
}

/// The wait Falcon asks for: `X-RateLimit-RetryAfter` is an epoch instant (seconds, or
/// milliseconds when the number is too large to be seconds); `Retry-After` is a number of
/// seconds. At least one second, so a clock slightly ahead of Falcon's cannot cause a burst.
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    retry_after_at(headers, now)
}

fn retry_after_at(headers: &HeaderMap, now_epoch_secs: f64) -> Option<Duration> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|v| v.is_finite() && *v >= 0.0)
    };
    let wait = if let Some(instant) = header("x-ratelimit-retryafter") {
        let instant = if instant > 1e11 {
            instant / 1000.0
        } else {
            instant
        };
        instant - now_epoch_secs
    } else {
        header("retry-after")?
    };
    Some(Duration::from_secs_f64(wait.clamp(1.0, 86_400.0)))
}

pub(crate) fn trace_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get("x-cs-traceid")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// A transport error as one line, without the URL's query (it may hold a filter, never a
/// secret, but keeps lines short) and with the underlying cause.
pub(crate) fn describe(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_body() || e.is_decode() {
        "the answer broke off"
    } else {
        "request failed"
    };
    let mut text = kind.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn headers(name: &'static str, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn retry_after_reads_epoch_seconds_and_milliseconds() {
        let now = 1_700_000_000.0;
        let secs = headers("x-ratelimit-retryafter", "1700000005");
        assert_eq!(retry_after_at(&secs, now), Some(Duration::from_secs(5)));
        let millis = headers("x-ratelimit-retryafter", "1700000007000");
        assert_eq!(retry_after_at(&millis, now), Some(Duration::from_secs(7)));
    }

    #[test]
    fn retry_after_in_the_past_or_garbage_is_harmless() {
        let now = 1_700_000_000.0;
        let past = headers("x-ratelimit-retryafter", "1600000000");
        assert_eq!(retry_after_at(&past, now), Some(Duration::from_secs(1)));
        assert_eq!(
            retry_after_at(&headers("x-ratelimit-retryafter", "soon"), now),
            None
        );
        assert_eq!(
            retry_after_at(&headers("retry-after", "3"), now),
            Some(Duration::from_secs(3))
        );
        assert_eq!(retry_after_at(&HeaderMap::new(), now), None);
    }

    #[test]
    fn creates_retry_only_what_cannot_have_landed() {
        let throttled = Attempt::status(
            FalconError::RateLimited,
            StatusCode::TOO_MANY_REQUESTS,
            None,
        );
        let unavailable = Attempt::status(
            FalconError::Api {
                status: 503,
                messages: vec![],
                trace_id: None,
            },
            StatusCode::SERVICE_UNAVAILABLE,
            None,
        );
        let bad = Attempt::status(
            FalconError::Api {
                status: 400,
                messages: vec![],
                trace_id: None,
            },
            StatusCode::BAD_REQUEST,
            None,
        );
        assert!(throttled.retryable(Mode::Once) && throttled.retryable(Mode::Idempotent));
        assert!(!unavailable.retryable(Mode::Once) && unavailable.retryable(Mode::Idempotent));
        assert!(!bad.retryable(Mode::Idempotent));
        assert!(unavailable.error.is_ambiguous() && !bad.error.is_ambiguous());
    }
}
