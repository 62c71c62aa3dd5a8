//! Prometheus metrics, and the HTTP endpoint that serves them with `/healthz`.
//!
//! Off unless `[metrics] listen` is set. The `metrics` facade records from wherever the work
//! happens (a cycle's report, each API call, each rate-limit wait); the Prometheus exporter
//! renders them. Without an installed recorder every call here is a no-op, so library users and
//! tests that never call [`install`] pay nothing.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

use crate::health::Health;
use crate::pipeline::CycleReport;

pub const CYCLES: &str = "connector_cycles_total";
pub const CYCLE_DURATION: &str = "connector_cycle_duration_seconds";
pub const LAST_SUCCESS: &str = "connector_last_cycle_success_timestamp_seconds";
pub const HASHES: &str = "connector_hashes_total";
pub const IN_FLIGHT: &str = "connector_submissions_in_flight";
pub const ACTIONS: &str = "connector_actions_total";
pub const API_REQUESTS: &str = "connector_api_requests_total";
pub const OLDEST_IN_FLIGHT: &str = "connector_oldest_submission_in_flight_age_seconds";
pub const DETECTION_TO_WRITEBACK: &str = "connector_detection_to_writeback_seconds";
/// Seconds, as Prometheus wants time in base units. The `metrics` facade counts only whole
/// numbers, so this one counter is kept here, in microseconds, and rendered by [`render`].
pub const RATE_LIMIT_WAIT: &str = "connector_rate_limit_wait_seconds_total";
const RATE_LIMIT_WAIT_HELP: &str =
    "Seconds spent waiting on rate limits (client limiter and server Retry-After), by service";

/// Microseconds waited on rate limits: Falcon, VMRay.
static RATE_LIMIT_WAIT_MICROS: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];
const RATE_LIMITED_SERVICES: [&str; 2] = ["falcon", "vmray"];
pub const GIVEN_UP: &str = "connector_samples_given_up_total";
/// Its own family, not a label of the samples' one: an action has a kind, not a step, and one
/// sample may have several actions given up.
pub const ACTIONS_GIVEN_UP: &str = "connector_actions_given_up_total";

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot install the metrics recorder: {0}")]
    Install(String),
    #[error("cannot listen on {listen} for metrics: {source}; check metrics.listen")]
    Bind {
        listen: SocketAddr,
        source: std::io::Error,
    },
}

/// Installs the process-wide recorder; call once, before any work.
pub fn install() -> Result<PrometheusHandle, MetricsError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(CYCLE_DURATION.into()),
            &[1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 1800.0, 3600.0],
        )
        .map_err(|e| MetricsError::Install(e.to_string()))?
        // Minutes to hours: an analysis takes minutes, a cycle runs every time_span, and an
        // alert can wait for a sensor's late upload or a long analysis.
        .set_buckets_for_metric(
            Matcher::Full(DETECTION_TO_WRITEBACK.into()),
            &[
                10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 10800.0, 86400.0,
            ],
        )
        .map_err(|e| MetricsError::Install(e.to_string()))?
        .install_recorder()
        .map_err(|e| MetricsError::Install(e.to_string()))?;
    describe_counter!(
        CYCLES,
        "Cycles run, by result (completed, failed, interrupted)"
    );
    describe_histogram!(CYCLE_DURATION, "Wall time of a cycle");
    describe_counter!(
        GIVEN_UP,
        "Samples given up, by step and reason (permanent: a failure of the sample's own that retrying cannot change; give_up_after: failing for reasons of its own for longer than general.give_up_after)"
    );
    describe_counter!(
        ACTIONS_GIVEN_UP,
        "Write-backs given up, by kind and reason (permanent: Falcon says the entity no longer exists; give_up_after: failing for reasons of its own for longer than general.give_up_after; at_most_once: a scan that may have started is not repeated; unreadable: a journal entry this build cannot read)"
    );
    describe_gauge!(
        LAST_SUCCESS,
        "Unix time at which the last cycle completed; 0 until one has"
    );
    describe_counter!(HASHES, "Hashes handled, by outcome");
    describe_gauge!(
        IN_FLIGHT,
        "VMRay submissions in flight: uploaded, their verdict not acted on yet"
    );
    describe_counter!(ACTIONS, "Actions in Falcon, by kind and result");
    describe_counter!(API_REQUESTS, "HTTP requests, by service and status");
    describe_gauge!(
        OLDEST_IN_FLIGHT,
        "Age of the oldest VMRay submission in flight (from its upload), updated every cycle; 0 when none is"
    );
    describe_histogram!(
        DETECTION_TO_WRITEBACK,
        "From an alert's creation in Falcon to the update that wrote the verdict comment on it"
    );
    // Present from the first scrape, not only once something changed them: an alert on
    // "no success for an hour" must fire for a daemon that never completed a cycle.
    gauge!(IN_FLIGHT).set(0.0);
    gauge!(OLDEST_IN_FLIGHT).set(0.0);
    gauge!(LAST_SUCCESS).set(0.0);
    Ok(handle)
}

/// Serves `/metrics` and `/healthz` on `listen` until shutdown. Binds before returning, so a
/// taken port is an error at start, not a silent gap.
pub async fn serve(
    listen: SocketAddr,
    handle: PrometheusHandle,
    health: Arc<Health>,
    shutdown: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, MetricsError> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| MetricsError::Bind { listen, source })?;
    let app = Router::new()
        .route("/metrics", get(render))
        .route("/healthz", get(healthz))
        .with_state((handle, health));
    tracing::info!("serving /metrics and /healthz on http://{listen}");
    Ok(tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        if let Err(e) = served {
            tracing::error!("the metrics endpoint stopped: {e}");
        }
    }))
}

type AppState = (PrometheusHandle, Arc<Health>);

async fn render(State((handle, _)): State<AppState>) -> impl IntoResponse {
    // Without the exporter's own HTTP listener nobody else runs upkeep (histogram rollover).
    handle.run_upkeep();
    let mut text = handle.render();
    text.push_str(&render_rate_limit_wait());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}

/// The rate-limit counter as a Prometheus family: HELP, TYPE and one sample per service, in
/// seconds with microsecond precision.
fn render_rate_limit_wait() -> String {
    let mut out = format!(
        "# HELP {RATE_LIMIT_WAIT} {RATE_LIMIT_WAIT_HELP}\n# TYPE {RATE_LIMIT_WAIT} counter\n"
    );
    for (service, micros) in RATE_LIMITED_SERVICES.iter().zip(&RATE_LIMIT_WAIT_MICROS) {
        let seconds = micros.load(Ordering::Relaxed) as f64 / 1e6;
        out.push_str(&format!(
            "{RATE_LIMIT_WAIT}{{service=\"{service}\"}} {seconds}\n"
        ));
    }
    out
}

async fn healthz(State((_, health)): State<AppState>) -> impl IntoResponse {
    match health.since_completed() {
        Some(age) if health.is_healthy() => (
            StatusCode::OK,
            format!("ok: last cycle completed {} s ago\n", age.as_secs()),
        ),
        Some(age) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("unhealthy: no cycle completed for {} s\n", age.as_secs()),
        ),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "unhealthy: no cycle completed since the start {} s ago\n",
                health.age().as_secs()
            ),
        ),
    }
}

/// Records a finished cycle from its report.
pub fn cycle_completed(report: &CycleReport, took: Duration) {
    counter!(CYCLES, "result" => "completed").increment(1);
    histogram!(CYCLE_DURATION).record(took.as_secs_f64());
    let now = time::OffsetDateTime::now_utc().unix_timestamp() as f64;
    gauge!(LAST_SUCCESS).set(now);
    record_report(report);
}

/// Records a cycle that ran to its end but got nothing through because a service failed
/// ([`CycleReport::stalled`]): a failed cycle, with its hashes counted.
pub fn cycle_stalled(report: &CycleReport, took: Duration) {
    cycle_ended_early("failed", took);
    record_report(report);
}

fn record_report(report: &CycleReport) {
    let outcomes = [
        ("already_done", report.already_done),
        ("known", report.known),
        ("submitted", report.submitted),
        ("no_verdict", report.no_verdict),
        ("still_analysing", report.still_analysing),
        ("interrupted", report.interrupted),
        ("failed", report.failed.len()),
    ];
    for (outcome, count) in outcomes {
        counter!(HASHES, "outcome" => outcome).increment(count as u64);
    }
    for (kind, counts) in &report.actions {
        let results = [
            ("done", counts.done),
            ("failed", counts.failed),
            ("deferred", counts.deferred),
        ];
        for (result, count) in results {
            counter!(ACTIONS, "kind" => *kind, "result" => result).increment(count);
        }
    }
}

/// Records a round of the daemon's waiting clock: the hashes it polled and what it did.
pub fn waiting_round(report: &CycleReport) {
    record_report(report);
}

/// Records a cycle that failed as a whole or was interrupted.
pub fn cycle_ended_early(result: &'static str, took: Duration) {
    counter!(CYCLES, "result" => result).increment(1);
    histogram!(CYCLE_DURATION).record(took.as_secs_f64());
}

/// A sample given up at `step` for `reason` (`permanent` or `give_up_after`).
pub fn sample_given_up(step: &'static str, reason: &'static str) {
    counter!(GIVEN_UP, "step" => step, "reason" => reason).increment(1);
}

/// A write-back of `kind` given up for `reason` (see [`ACTIONS_GIVEN_UP`]'s help).
pub fn action_given_up(kind: &'static str, reason: &'static str, count: u64) {
    counter!(ACTIONS_GIVEN_UP, "kind" => kind, "reason" => reason).increment(count);
}

/// One HTTP exchange with an API; `status` is `None` when no answer came.
pub fn api_request(service: &'static str, status: Option<u16>) {
    let status = status.map_or_else(|| "error".to_string(), |s| s.to_string());
    counter!(API_REQUESTS, "service" => service, "status" => status).increment(1);
}

/// Time spent waiting because of a rate limit.
pub fn rate_limit_wait(service: &'static str, waited: Duration) {
    if let Some(index) = RATE_LIMITED_SERVICES.iter().position(|s| *s == service) {
        let micros = u64::try_from(waited.as_micros()).unwrap_or(u64::MAX);
        RATE_LIMIT_WAIT_MICROS[index].fetch_add(micros, Ordering::Relaxed);
    }
}

/// A submission started or stopped being waited on.
/// The submissions in flight, as the state store has them: how many, and how old the oldest.
pub fn in_flight(rows: &[(crate::model::Sha256, Option<time::OffsetDateTime>)]) {
    gauge!(IN_FLIGHT).set(rows.len() as f64);
    let oldest = rows.iter().filter_map(|(_, at)| *at).min();
    let age = oldest.map_or(0.0, |at| {
        (time::OffsetDateTime::now_utc() - at)
            .as_seconds_f64()
            .max(0.0)
    });
    gauge!(OLDEST_IN_FLIGHT).set(age);
}

/// The verdict comment landed on an alert Falcon created at `created`.
pub fn written_back(created: time::OffsetDateTime) {
    let took = (time::OffsetDateTime::now_utc() - created).as_seconds_f64();
    // A sensor's clock ahead of the connector's is not a negative latency.
    histogram!(DETECTION_TO_WRITEBACK).record(took.max(0.0));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_waits_are_a_seconds_counter_with_help_and_type() {
        rate_limit_wait("vmray", Duration::from_millis(1500));
        rate_limit_wait("vmray", Duration::from_micros(250));
        let text = render_rate_limit_wait();
        assert!(
            text.contains(&format!("# HELP {RATE_LIMIT_WAIT} Seconds ")),
            "{text}"
        );
        assert!(
            text.contains(&format!("# TYPE {RATE_LIMIT_WAIT} counter")),
            "{text}"
        );
        let vmray = text
            .lines()
            .find(|l| l.starts_with("connector_rate_limit_wait_seconds_total{service=\"vmray\"} "))
            .expect(&text);
        let seconds: f64 = vmray.rsplit(' ').next().unwrap().parse().unwrap();
        // Other tests of this process may wait too: at least what this one added.
        assert!(seconds >= 1.50025, "{vmray}");
        assert!(text.contains("{service=\"falcon\"} "), "{text}");
    }
}
