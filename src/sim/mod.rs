//! The built-in simulated Falcon tenant and VMRay instance (issue 5): two real HTTP servers on
//! 127.0.0.1 that speak the wire format of `shared/reference/`, keep state across calls, inject
//! seeded faults, and record every request and change so tests assert on the tenant afterwards.
//!
//! - [`scenario`]: what the world starts with (JSON files and a seeded generator) and the
//!   alerts that arrive while it runs.
//! - [`world`]: the state and its recorded changes.
//! - [`falcon`] and [`vmray`]: the two routers.
//! - [`fql`]: the filter language parser. [`faults`]: fault injection. [`files`]: sample bytes.

mod falcon;
pub mod faults;
pub mod files;
pub mod fql;
pub mod scenario;
mod vmray;
pub mod world;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use time::OffsetDateTime;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use faults::{Faults, Override, Service};
pub use scenario::{Arrival, ArrivingAlert, FileRef, GenerateOptions, Scenario, ScenarioError};
pub use world::{
    Alert, Case, ContainmentRequest, Counters, Host, Ioc, Quarantine, RequestRecord, Scan,
    Submission, World,
};

/// The credentials the simulator accepts.
#[derive(Debug, Clone)]
pub struct SimCredentials {
    pub client_id: String,
    pub client_secret: String,
    pub api_key: String,
}

impl Default for SimCredentials {
    fn default() -> Self {
        SimCredentials {
            client_id: "sim-client-id".into(),
            client_secret: "sim-client-secret".into(),
            api_key: "sim-vmray-api-key".into(),
        }
    }
}

/// How long a "hanging" response waits: far past any client timeout, cut short by shutdown.
const HANG: Duration = Duration::from_secs(3600);

pub(crate) struct Shared {
    world: Mutex<World>,
    faults: Mutex<faults::FaultState>,
    cancel: CancellationToken,
    /// Where sample archives are built; removed on shutdown.
    tmp: PathBuf,
    creds: SimCredentials,
    trace: AtomicU64,
    /// Scripted arrivals that have not happened yet.
    arrivals_pending: AtomicUsize,
}

impl Shared {
    fn world(&self) -> MutexGuard<'_, World> {
        self.world.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn trace_id(&self) -> String {
        let n = self.trace.fetch_add(1, Ordering::Relaxed);
        format!("5e1d0000-0000-4000-8000-{n:012x}")
    }
}

/// What the fault layer decided for a request, for handlers that act on it (downloads).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Injected {
    pub truncate: bool,
}

/// A running simulator. Dropping it without [`Simulator::shutdown`] leaves the servers running
/// until the runtime ends.
pub struct Simulator {
    shared: Arc<Shared>,
    falcon_addr: std::net::SocketAddr,
    vmray_addr: std::net::SocketAddr,
    tasks: Vec<JoinHandle<()>>,
    /// Adds the scripted arrivals; aborted at shutdown, so later ones never happen.
    arrivals: JoinHandle<()>,
}

impl Simulator {
    /// Starts both servers on `127.0.0.1` with OS-chosen ports.
    pub async fn start(mut scenario: Scenario) -> std::io::Result<Simulator> {
        scenario
            .resolve()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        static INSTANCE: AtomicU64 = AtomicU64::new(0);
        let tmp = std::env::temp_dir().join(format!(
            "fvc-sim-{}-{}",
            std::process::id(),
            INSTANCE.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&tmp)?;
        let shared = Arc::new(Shared {
            world: Mutex::new(World::from_scenario(&scenario)),
            faults: Mutex::new(faults::FaultState::new(
                scenario.faults.clone(),
                scenario.falcon_rate_limit,
            )),
            cancel: CancellationToken::new(),
            tmp,
            creds: SimCredentials::default(),
            trace: AtomicU64::new(1),
            arrivals_pending: AtomicUsize::new(scenario.arrivals.len()),
        });
        let falcon = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let vmray = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let falcon_addr = falcon.local_addr()?;
        let vmray_addr = vmray.local_addr()?;
        let mut tasks = Vec::new();
        for (listener, service) in [(falcon, Service::Falcon), (vmray, Service::Vmray)] {
            let router = match service {
                Service::Falcon => falcon::router(shared.clone()),
                Service::Vmray => vmray::router(shared.clone()),
            }
            .layer(axum::middleware::from_fn_with_state(
                (shared.clone(), service),
                fault_layer,
            ));
            let cancel = shared.cancel.clone();
            tasks.push(tokio::spawn(async move {
                let _ = axum::serve(listener, router)
                    .with_graceful_shutdown(cancel.cancelled_owned())
                    .await;
            }));
        }
        let arrivals = tokio::spawn(arrive(shared.clone(), scenario.arrivals, Instant::now()));
        Ok(Simulator {
            shared,
            arrivals,
            falcon_addr,
            vmray_addr,
            tasks,
        })
    }

    pub fn falcon_url(&self) -> String {
        format!("http://{}", self.falcon_addr)
    }

    pub fn vmray_url(&self) -> String {
        format!("http://{}", self.vmray_addr)
    }

    pub fn credentials(&self) -> SimCredentials {
        self.shared.creds.clone()
    }

    /// A copy of everything that exists and everything that happened so far.
    pub fn snapshot(&self) -> TenantSnapshot {
        TenantSnapshot::of(&self.shared.world())
    }

    /// Changes the world directly, as an analyst or new detections would between cycles.
    pub fn edit<R>(&self, f: impl FnOnce(&mut World) -> R) -> R {
        f(&mut self.shared.world())
    }

    /// Replaces the active faults (and restarts their seeded sequence).
    pub fn set_faults(&self, faults: Faults) {
        self.shared
            .faults
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .set(faults);
    }

    /// Scripted arrivals (`Scenario::arrivals`) whose time has not come yet.
    pub fn arrivals_pending(&self) -> usize {
        self.shared.arrivals_pending.load(Ordering::SeqCst)
    }

    /// Expires every bearer token issued so far: the next call with one gets 401.
    pub fn expire_tokens(&self) {
        let mut world = self.shared.world();
        let now = Instant::now();
        for expiry in world.tokens.values_mut() {
            *expiry = now;
        }
        world.record("all bearer tokens expired");
    }

    /// Stops both servers (hanging responses end too) and the arrivals still to come, and
    /// removes the temporary files.
    pub async fn shutdown(self) {
        self.arrivals.abort();
        self.shared.cancel.cancel();
        for task in self.tasks {
            let abort = task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(2), task)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
        let _ = std::fs::remove_dir_all(&self.shared.tmp);
    }
}

/// Adds each scripted alert to the world when its time after `start` has come, in order of time.
async fn arrive(shared: Arc<Shared>, mut arrivals: Vec<Arrival>, start: Instant) {
    arrivals.sort_by_key(|a| a.after_ms);
    for arrival in arrivals {
        tokio::time::sleep_until(start + Duration::from_millis(arrival.after_ms)).await;
        let mut world = shared.world();
        world.arrive(&arrival.alert);
        // Counted down under the world's lock, so whoever sees 0 pending also sees every alert.
        shared.arrivals_pending.fetch_sub(1, Ordering::SeqCst);
        drop(world);
    }
}

/// The fault layer in front of every route: logs the request, then applies latency, hangs,
/// throttling, 5xx and malformed JSON, and adds the headers every response carries.
async fn fault_layer(
    State((shared, service)): State<(Arc<Shared>, Service)>,
    req: Request,
    next: Next,
) -> Response {
    let (req, body) = keep_body(service, req).await;
    let mut req = req;
    let method = req.method().to_string();
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let crafted = shared
        .faults
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .override_for(service, &path);
    if let Some(o) = crafted {
        let status = StatusCode::from_u16(o.status).unwrap_or(StatusCode::OK);
        shared.world().requests.push(RequestRecord {
            service,
            method,
            path,
            status: status.as_u16(),
            at: OffsetDateTime::now_utc(),
            body,
        });
        let mut response = (status, o.body).into_response();
        if let Ok(v) = HeaderValue::from_str(&o.content_type) {
            response.headers_mut().insert(header::CONTENT_TYPE, v);
        }
        return response;
    }
    let decision = shared
        .faults
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .decide(service, req.uri().path(), Instant::now());
    {
        let mut w = shared.world();
        match service {
            Service::Falcon => w.counters.falcon_requests += 1,
            Service::Vmray => w.counters.vmray_requests += 1,
        }
    }
    if !decision.latency.is_zero() {
        tokio::time::sleep(decision.latency).await;
    }
    let log = |status: u16| {
        shared.world().requests.push(RequestRecord {
            service,
            method: method.clone(),
            path: path.clone(),
            status,
            at: OffsetDateTime::now_utc(),
            body: body.clone(),
        });
    };
    if decision.hang {
        shared.world().counters.hung += 1;
        log(0);
        tokio::select! {
            _ = tokio::time::sleep(HANG) => {}
            _ = shared.cancel.cancelled() => {}
        }
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let mut response = if let Some(wait) = decision.throttled {
        shared.world().counters.throttled += 1;
        throttled(service, wait)
    } else if decision.server_error {
        shared.world().counters.injected_5xx += 1;
        server_error(service)
    } else {
        req.extensions_mut().insert(Injected {
            truncate: decision.truncate,
        });
        next.run(req).await
    };
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if decision.malformed && is_json {
        shared.world().counters.malformed += 1;
        let (parts, body) = response.into_parts();
        let bytes = axum::body::to_bytes(body, 64 << 20)
            .await
            .unwrap_or_default();
        let cut = bytes.slice(..bytes.len() / 2);
        let mut parts = parts;
        parts.headers.remove(header::CONTENT_LENGTH);
        response = Response::from_parts(parts, axum::body::Body::from(cut));
    }
    if service == Service::Falcon {
        let h = response.headers_mut();
        h.insert("x-ratelimit-limit", HeaderValue::from(decision.limit));
        h.insert(
            "x-ratelimit-remaining",
            HeaderValue::from(decision.remaining),
        );
        if let Ok(v) = HeaderValue::from_str(&shared.trace_id()) {
            h.insert("x-cs-traceid", v);
        }
    }
    log(response.status().as_u16());
    response
}

/// A Falcon request's JSON or form body, kept for the request log (with the form's
/// `client_secret` masked, so the log never holds the secret); the request is rebuilt around
/// it. VMRay bodies (sample uploads) stream through untouched.
async fn keep_body(service: Service, req: Request) -> (Request, Option<String>) {
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.as_bytes().to_vec())
        .unwrap_or_default();
    let is_form = content_type.starts_with(b"application/x-www-form-urlencoded");
    if service != Service::Falcon || !(is_form || content_type.starts_with(b"application/json")) {
        return (req, None);
    }
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, 64 << 20)
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes);
    let text = if is_form {
        text.split('&')
            .map(|pair| match pair.split_once('=') {
                Some(("client_secret", _)) => "client_secret=********",
                _ => pair,
            })
            .collect::<Vec<_>>()
            .join("&")
    } else {
        text.into_owned()
    };
    (
        Request::from_parts(parts, axum::body::Body::from(bytes)),
        Some(text),
    )
}

fn throttled(service: Service, wait: u64) -> Response {
    match service {
        Service::Falcon => {
            let at = OffsetDateTime::now_utc().unix_timestamp() as u64 + wait;
            let mut r = falcon::error(StatusCode::TOO_MANY_REQUESTS, "API rate limit exceeded.");
            r.headers_mut()
                .insert("x-ratelimit-retryafter", HeaderValue::from(at));
            r
        }
        Service::Vmray => {
            let mut r = vmray::error(
                StatusCode::TOO_MANY_REQUESTS,
                &format!("Request was throttled. Expected available in {wait} seconds."),
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(wait));
            r
        }
    }
}

fn server_error(service: Service) -> Response {
    match service {
        Service::Falcon => falcon::error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Internal Server Error (simulated)",
        ),
        // A proxy page, not JSON: clients must cope with non-JSON error bodies.
        Service::Vmray => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CONTENT_TYPE, "text/html")],
            "<html><body><h1>503 Service Temporarily Unavailable</h1></body></html>",
        )
            .into_response(),
    }
}

/// Everything a test or `demo` wants to know about the simulated tenant, as plain values.
#[derive(Debug, Clone, Serialize)]
pub struct TenantSnapshot {
    pub alerts: Vec<Alert>,
    pub quarantines: Vec<Quarantine>,
    pub iocs: Vec<Ioc>,
    pub hosts: Vec<Host>,
    /// Devices whose status is `contained`.
    pub contained: Vec<String>,
    pub containment_requests: Vec<ContainmentRequest>,
    pub cases: Vec<Case>,
    pub scans: Vec<Scan>,
    pub submissions: Vec<Submission>,
    pub requests: Vec<RequestRecord>,
    pub changes: Vec<String>,
    pub counters: Counters,
}

impl TenantSnapshot {
    fn of(w: &World) -> Self {
        TenantSnapshot {
            alerts: w.alerts.clone(),
            quarantines: w.quarantines.clone(),
            iocs: w.iocs.clone(),
            hosts: w.hosts.clone(),
            contained: w
                .hosts
                .iter()
                .filter(|h| h.status == "contained")
                .map(|h| h.device_id.clone())
                .collect(),
            containment_requests: w.containments.clone(),
            cases: w.cases.clone(),
            scans: w.scans.clone(),
            submissions: w.submissions.clone(),
            requests: w.requests.clone(),
            changes: w.changes.clone(),
            counters: w.counters.clone(),
        }
    }

    pub fn alert(&self, composite_id: &str) -> Option<&Alert> {
        self.alerts.iter().find(|a| a.composite_id == composite_id)
    }

    pub fn quarantine(&self, id: &str) -> Option<&Quarantine> {
        self.quarantines.iter().find(|q| q.id == id)
    }

    /// Requests whose path starts with `prefix`.
    pub fn requests_to(&self, prefix: &str) -> Vec<&RequestRecord> {
        self.requests
            .iter()
            .filter(|r| r.path.starts_with(prefix))
            .collect()
    }

    /// What changed in the tenant, for people: per alert its comments and status, per
    /// quarantine record its actions, IOCs, contained hosts, cases, scans and submissions.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let touched: Vec<&Alert> = self
            .alerts
            .iter()
            .filter(|a| !a.comments.is_empty() || a.status != "new" || !a.tags.is_empty())
            .collect();
        let _ = writeln!(
            out,
            "Alerts ({} of {} changed)",
            touched.len(),
            self.alerts.len()
        );
        for a in &touched {
            let host = self.hostname(&a.device_id);
            let _ = writeln!(
                out,
                "  {}  [{}]  {}  on {}",
                a.composite_id,
                a.status,
                short(&a.sha256),
                host
            );
            if !a.tags.is_empty() {
                let _ = writeln!(out, "    tags: {}", a.tags.join(", "));
            }
            for c in &a.comments {
                for (i, line) in c.lines().enumerate() {
                    let lead = if i == 0 { "comment:" } else { "        " };
                    let _ = writeln!(out, "    {lead} {line}");
                }
            }
        }
        let acted: Vec<&Quarantine> = self
            .quarantines
            .iter()
            .filter(|q| !q.actions.is_empty())
            .collect();
        let _ = writeln!(
            out,
            "Quarantined files ({} of {} acted on)",
            acted.len(),
            self.quarantines.len()
        );
        for q in acted {
            let _ = writeln!(
                out,
                "  {}  on {}  now {}",
                short(&q.sha256),
                q.hostname,
                q.state
            );
            for a in &q.actions {
                let _ = writeln!(out, "    {}: {}", a.action, a.comment);
            }
        }
        let _ = writeln!(out, "IOCs created ({})", self.iocs.len());
        for i in &self.iocs {
            let _ = writeln!(
                out,
                "  {} {}  action={} severity={}{}{}",
                i.ioc_type,
                i.value,
                i.action,
                i.severity,
                i.expiration
                    .as_deref()
                    .map(|e| format!(" expires={e}"))
                    .unwrap_or_default(),
                i.description
                    .as_deref()
                    .map(|d| format!("  \"{d}\""))
                    .unwrap_or_default()
            );
        }
        let _ = writeln!(out, "Hosts contained ({})", self.contained.len());
        for id in &self.contained {
            let _ = writeln!(out, "  {}  {}", self.hostname(id), id);
        }
        let _ = writeln!(out, "Cases ({})", self.cases.len());
        for c in &self.cases {
            let _ = writeln!(
                out,
                "  {}  severity {}  {} alert(s){}",
                c.name,
                c.severity,
                c.alert_ids.len(),
                c.assigned_to
                    .as_deref()
                    .map(|u| format!("  assigned to {u}"))
                    .unwrap_or_default()
            );
        }
        let _ = writeln!(out, "On-demand scans ({})", self.scans.len());
        for s in &self.scans {
            let _ = writeln!(
                out,
                "  {} on {} host(s): {}",
                s.id,
                s.hosts.len(),
                s.file_paths.join(", ")
            );
        }
        let _ = writeln!(out, "VMRay submissions ({})", self.submissions.len());
        for s in &self.submissions {
            let _ = writeln!(
                out,
                "  submission {}  sample {}  {}  {} bytes  -> {}{}",
                s.submission_id,
                s.sample_id,
                short(&s.sha256),
                s.file_size,
                s.verdict,
                if s.fails {
                    " (analysis failed)"
                } else if s.partial_failure {
                    " (one analysis failed)"
                } else {
                    ""
                }
            );
        }
        let c = &self.counters;
        let _ = writeln!(
            out,
            "Requests: {} to Falcon, {} to VMRay ({} throttled, {} server errors injected)",
            c.falcon_requests, c.vmray_requests, c.throttled, c.injected_5xx
        );
        out
    }

    fn hostname(&self, device_id: &str) -> String {
        self.hosts
            .iter()
            .find(|h| h.device_id == device_id)
            .map(|h| h.hostname.clone())
            .unwrap_or_else(|| device_id.to_string())
    }
}

fn short(sha256: &str) -> &str {
    &sha256[..sha256.len().min(16)]
}

/// Splits `a=b&c=d` (query strings and form bodies) into decoded pairs, keeping repeats.
pub(crate) fn parse_pairs(text: &str) -> Vec<(String, String)> {
    text.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
