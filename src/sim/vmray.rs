//! The simulated VMRay REST API: lookups, streamed multipart submissions that detonate after the
//! scenario's wall time, submissions, analyses, IOCs, VTIs and continuations, in the shapes of
//! `shared/reference/vmray-fixtures/`.

// Handlers return a finished error response early; its size on that cold path is irrelevant.
#![allow(clippy::result_large_err)]

use std::pin::Pin;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, HttpBody};
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use time::macros::format_description;
use tokio::time::Instant;

use super::scenario::DetonationSpec;
use super::world::{Submission, VmSample, World};
use super::{Shared, parse_pairs};

type Reply = Result<Response, Response>;

pub(super) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/rest/system_info", get(system_info))
        .route("/rest/analysis", get(analysis_list))
        .route("/rest/sample/sha256/{hash}", get(sample_by_hash))
        .route("/rest/sample/submit", post(submit))
        .route("/rest/sample/{id}", get(sample_by_id))
        .route("/rest/sample/{id}/iocs", get(iocs_all))
        .route(
            "/rest/sample/{id}/iocs/verdict/{verdict}",
            get(iocs_by_verdict),
        )
        .route("/rest/sample/{id}/vtis", get(vtis))
        .route("/rest/submission/{id}", get(submission))
        .route("/rest/submission/sample/{id}", get(submissions_of_sample))
        .route(
            "/rest/analysis/submission/{id}",
            get(analyses_of_submission),
        )
        .route("/rest/analysis/sample/{id}", get(analyses_of_sample))
        .route("/rest/continuation/{id}", get(continuation))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "No such element") })
        .with_state(shared)
}

fn json_response(status: StatusCode, body: Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

pub(super) fn error(status: StatusCode, message: &str) -> Response {
    json_response(status, json!({"result": "error", "error_msg": message}))
}

fn ok(data: Value) -> Response {
    json_response(StatusCode::OK, json!({"result": "ok", "data": data}))
}

fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "No such element")
}

fn auth(s: &Shared, headers: &HeaderMap) -> Result<(), Response> {
    let expected = format!("api_key {}", s.creds.api_key);
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let refused = s
        .faults
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .faults
        .vmray_key_refused;
    if given == Some(expected.as_str()) && !refused {
        Ok(())
    } else {
        s.world().counters.unauthorized += 1;
        Err(error(StatusCode::UNAUTHORIZED, "Authentication failed"))
    }
}

fn naive(t: OffsetDateTime) -> String {
    t.format(format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second]"
    ))
    .unwrap_or_default()
}

fn parse_id(raw: &str) -> Result<u64, Response> {
    raw.parse().map_err(|_| not_found())
}

/// Applies `_order` / `_limit`, then splits at the page size with a single-use continuation.
fn list(w: &mut World, mut items: Vec<Value>, raw: Option<&str>) -> Response {
    let q = parse_pairs(raw.unwrap_or(""));
    let get = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    if get("_order") == Some("desc") {
        items.reverse();
    }
    if let Some(limit) = get("_limit").and_then(|l| l.parse::<usize>().ok()) {
        items.truncate(limit);
    }
    page(w, items)
}

fn page(w: &mut World, mut items: Vec<Value>) -> Response {
    let size = w.vmray_page_size;
    if items.len() <= size {
        return ok(json!(items));
    }
    let rest = items.split_off(size);
    let id = w.fresh();
    w.continuations.insert(id, rest);
    json_response(
        StatusCode::OK,
        json!({"result": "ok", "data": items, "continuation_id": id}),
    )
}

// ---- JSON shapes -----------------------------------------------------------------------------

fn hashes(sha256: &str) -> (String, String) {
    (sha256[..32].to_string(), sha256[..40].to_string())
}

fn detonation(w: &World, sha256: &str) -> DetonationSpec {
    w.file(sha256)
        .map(|f| f.detonation.clone())
        .unwrap_or_default()
}

fn has_report(w: &World, sample: &VmSample, now: Instant) -> bool {
    sample.known_verdict.is_some()
        || w.submissions
            .iter()
            .any(|s| s.sample_id == sample.sample_id && s.finished(now) && !s.fails)
}

fn sample_json(w: &World, sample: &VmSample, now: Instant) -> Value {
    let verdict = w.sample_verdict(sample, now);
    let d = detonation(w, &sample.sha256);
    let analysed = has_report(w, sample, now);
    let (md5, sha1) = hashes(&sample.sha256);
    json!({
        "sample_id": sample.sample_id,
        "sample_verdict": verdict,
        "sample_verdict_reason_code": null,
        "sample_verdict_reason_description": null,
        "sample_vti_score": if analysed { json!(d.vti_score) } else { Value::Null },
        "sample_highest_vti_score": if analysed { json!(d.vti_score) } else { Value::Null },
        "sample_severity": verdict,
        "sample_score": if analysed { json!(d.vti_score) } else { Value::Null },
        "sample_md5hash": md5,
        "sample_sha1hash": sha1,
        "sample_sha256hash": sample.sha256,
        "sample_ssdeephash": null,
        "sample_imphash": null,
        "sample_filename": sample.filename,
        "sample_filesize": sample.size,
        "sample_type": "Windows Exe (x86-32)",
        "sample_url": null,
        "sample_webif_url": format!("https://vmray.sim.example/samples/{}", sample.sample_id),
        "sample_classifications": if analysed { json!(d.classifications) } else { json!([]) },
        "sample_threat_names": if analysed { json!(d.threat_names) } else { json!([]) },
        "sample_child_sample_ids": [],
        "sample_parent_sample_ids": [],
        "sample_child_relations": [],
        "sample_parent_relations": [],
        "sample_is_multipart": false,
        "sample_password_protected": false,
        "sample_priority": 1,
        "sample_created": naive(sample.created),
    })
}

fn submission_json(w: &World, s: &Submission, now: Instant) -> Value {
    let finished = s.finished(now);
    let verdict = (finished && !s.fails).then(|| s.verdict.clone());
    let (md5, sha1) = hashes(&s.sha256);
    let tags: Vec<&str> = s
        .tags
        .as_deref()
        .map(|t| t.split(',').filter(|x| !x.is_empty()).collect())
        .unwrap_or_default();
    let _ = w;
    json!({
        "submission_id": s.submission_id,
        "submission_sample_id": s.sample_id,
        "submission_sample_sha256": s.sha256,
        "submission_sample_md5": md5,
        "submission_sample_sha1": sha1,
        "submission_filename": s.filename,
        "submission_original_filename": s.filename,
        "submission_comment": s.comment,
        "submission_tags": tags,
        "submission_created": naive(s.created),
        "submission_finished": finished,
        "submission_finish_time": if finished { json!(naive(s.finish_time())) } else { Value::Null },
        "submission_status": match (finished, s.has_errors()) { (false, _) => "queued", (true, false) => "success", (true, true) => "error" },
        "submission_has_errors": if finished { json!(s.has_errors()) } else { Value::Null },
        "submission_has_recursive_errors": if finished { json!(false) } else { Value::Null },
        "submission_verdict": verdict,
        "submission_sample_verdict": verdict,
        "submission_verdict_reason_code": null,
        "submission_verdict_reason_description": null,
        "submission_analyzer_mode_analyzer_mode": s.analyzer_mode.clone().unwrap_or_else(|| "reputation_static_dynamic".into()),
        "submission_billing_type": "analyzer",
        "submission_type": "api",
        "submission_webif_url": format!("https://vmray.sim.example/samples/{}", s.sample_id),
        "submission_number_created_jobs": 1,
        "submission_used_cache": false,
        "submission_user_email": "connector@corp.example",
    })
}

#[allow(clippy::too_many_arguments)]
fn analysis_json(
    id: u64,
    sample_id: u64,
    sha256: &str,
    submission_id: Option<u64>,
    created: OffsetDateTime,
    verdict: Option<&str>,
    fails: bool,
    vti: u32,
) -> Value {
    json!({
        "analysis_id": id,
        "analysis_job_id": id + 100_000,
        "analysis_sample_id": sample_id,
        "analysis_sample_sha256": sha256,
        "analysis_submission_id": submission_id,
        "analysis_submission_ids": submission_id.map(|s| vec![s]).unwrap_or_default(),
        "analysis_created": naive(created),
        "analysis_result_code": if fails { 5 } else { 1 },
        "analysis_result_str": if fails { "Analysis failed: the virtual machine did not respond (simulated)" } else { "Operation completed successfully." },
        "analysis_serialized_result": {"code": if fails { 5 } else { 1 }, "extra_args": {}, "fmt_args": []},
        "analysis_verdict": if fails { Some("not_available") } else { verdict },
        "analysis_severity": if fails { None } else { verdict },
        "analysis_vti_score": if fails { Value::Null } else { json!(vti) },
        "analysis_analyzer_name": "vmray",
        "analysis_vm_name": "win10_64_th2",
        "analysis_ioc_aggregation_state": if fails { "skipped_no_vmray_err_success" } else { "ok" },
        "analysis_vti_aggregation_state": if fails { "skipped_no_vmray_err_success" } else { "ok" },
        "analysis_webif_url": format!("https://vmray.sim.example/user/analysis/view?id={id}&sub=%2Freport%2Foverview.html"),
    })
}

/// Finished analyses of a sample, oldest first.
fn analyses_of(w: &World, sample: &VmSample, now: Instant) -> Vec<Value> {
    let d = detonation(w, &sample.sha256);
    let mut out = Vec::new();
    if let (Some(v), Some(at)) = (&sample.known_verdict, sample.known_analysed) {
        out.push(analysis_json(
            sample.sample_id + 5_000_000,
            sample.sample_id,
            &sample.sha256,
            None,
            at,
            Some(v),
            false,
            d.vti_score,
        ));
    }
    for s in w
        .submissions
        .iter()
        .filter(|s| s.sample_id == sample.sample_id && s.finished(now))
    {
        out.extend(submission_analyses(s, d.vti_score));
    }
    out
}

/// The analyses of a finished submission: one, or two when one VM of two failed (the second
/// ran on another VM and gave the verdict).
fn submission_analyses(s: &Submission, vti: u32) -> Vec<Value> {
    let analysis = |n: u64, fails: bool| {
        analysis_json(
            s.submission_id + 2_000_000 + n * 1_000_000,
            s.sample_id,
            &s.sha256,
            Some(s.submission_id),
            s.finish_time(),
            Some(&s.verdict),
            fails,
            vti,
        )
    };
    let mut analyses = vec![analysis(0, s.fails)];
    if s.partial_failure && !s.fails {
        analyses.insert(0, analysis(1, true));
    }
    analyses
}

fn base_ioc(ioc_type: &str, verdict: &str) -> Value {
    let (severity, numeric) = match verdict {
        "malicious" => ("malicious", 4),
        "suspicious" => ("suspicious", 3),
        _ => ("not_suspicious", 0),
    };
    json!({
        "analysis_ids": [], "classifications": [], "id": 0, "ioc": true, "ioc_type": ioc_type,
        "numeric_severity": numeric, "relations": [], "severity": severity, "threat_names": [],
        "type": format!("{ioc_type}_artifact"), "verdict": verdict, "verdict_reason_code": null,
        "verdict_reason_description": "", "version": 3, "vtis": [],
    })
}

fn merge(mut base: Value, extra: Value) -> Value {
    if let (Some(b), Value::Object(e)) = (base.as_object_mut(), extra) {
        b.extend(e);
    }
    base
}

/// The IOC report in the fixture shape, limited to one verdict when given.
fn iocs_json(d: &DetonationSpec, verdict: Option<&str>) -> Value {
    let keep = |v: &str| verdict.is_none_or(|want| want == v);
    let r = &d.iocs;
    let files: Vec<Value> = r
        .files
        .iter()
        .filter(|f| keep(&f.verdict))
        .map(|f| {
            merge(
                base_ioc("file", &f.verdict),
                json!({
                    "classifications": f.classifications, "threat_names": f.threat_names,
                    "categories": [f.category], "filename": f.filename,
                    "filenames": f.filename.as_ref().map(|n| vec![n.clone()]),
                    "norm_filename": f.filename.as_ref().map(|n| n.to_lowercase()),
                    "hashes": [{"imp_hash": null, "md5_hash": &f.sha256[..32], "sha1_hash": &f.sha256[..40],
                                "sha256_hash": f.sha256, "ssdeep_hash": null}],
                    "mime_type": "application/vnd.microsoft.portable-executable",
                    "operations": ["write", "create"], "parent_files": [], "parent_processes": [],
                    "parent_processes_ids": [], "parent_processes_names": [], "resource_url": [],
                }),
            )
        })
        .collect();
    let ips: Vec<Value> = r
        .ips
        .iter()
        .filter(|i| keep(&i.verdict))
        .map(|i| {
            merge(
                base_ioc("ip", &i.verdict),
                json!({"ip_address": i.ip, "domains": i.domains, "country": null, "country_code": null,
                       "protocols": ["TCP"], "sources": ["Pcap"], "parent_processes": [],
                       "parent_processes_ids": [], "parent_processes_names": []}),
            )
        })
        .collect();
    let domains: Vec<Value> = r
        .domains
        .iter()
        .filter(|x| keep(&x.verdict))
        .map(|x| {
            merge(
                base_ioc("domain", &x.verdict),
                json!({"domain": x.domain, "original_domains": [x.domain], "ip_addresses": [],
                       "countries": [], "country_codes": [], "protocols": ["DNS"], "sources": ["Pcap"],
                       "parent_processes": [], "parent_processes_ids": [], "parent_processes_names": []}),
            )
        })
        .collect();
    let urls: Vec<Value> = r
        .urls
        .iter()
        .filter(|u| keep(&u.verdict))
        .map(|u| {
            merge(
                base_ioc("url", &u.verdict),
                json!({"url": u.url, "original_urls": [u.url], "ip_addresses": u.ip_addresses,
                       "categories": ["Contacted"], "methods": ["GET"], "content_types": [],
                       "countries": [], "country_codes": [], "referrers": [], "user_agents": [],
                       "sources": ["Behavior"], "parent_files": [], "parent_processes": [],
                       "parent_processes_ids": [], "parent_processes_names": []}),
            )
        })
        .collect();
    let processes: Vec<Value> = r
        .processes
        .iter()
        .filter(|p| keep(&p.verdict))
        .map(|p| {
            merge(
                base_ioc("process", &p.verdict),
                json!({"cmd_line": p.cmd_line, "image_names": [p.image_name], "process_ids": [1],
                       "process_names": [p.image_name.rsplit('\\').next().unwrap_or("")],
                       "parent_processes": [], "parent_processes_ids": [], "parent_processes_names": []}),
            )
        })
        .collect();
    json!({"status": "finished", "iocs": {
        "domains": domains, "email_addresses": [], "emails": [], "filenames": [], "files": files,
        "ips": ips, "mutexes": [], "processes": processes, "registry": [], "urls": urls,
    }})
}

// ---- handlers --------------------------------------------------------------------------------

async fn system_info(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Reply {
    auth(&s, &headers)?;
    let w = s.world();
    if !w.vmray_admin_key {
        return Err(error(StatusCode::FORBIDDEN, "Permission denied"));
    }
    Ok(ok(json!({
        "api_items_per_request": w.vmray_page_size,
        "file_param_http_scheme_enabled": false,
        "max_api_items": 1000,
        "version": "2024.4.0",
        "version_major": 2024,
        "version_minor": 4,
        "version_revision": 0,
        "webif_alias": "Simulator",
        "webif_base_url": "https://vmray.sim.example",
        "webif_max_sample_size": w.vmray_max_upload_bytes,
        "webif_max_upload_size": w.vmray_max_upload_bytes,
    })))
}

async fn analysis_list(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Reply {
    auth(&s, &headers)?;
    let mut w = s.world();
    let now = Instant::now();
    let items: Vec<Value> = w
        .samples
        .iter()
        .flat_map(|sample| analyses_of(&w, sample, now))
        .collect();
    Ok(list(&mut w, items, raw.as_deref()))
}

async fn sample_by_hash(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(hash): Path<String>,
    RawQuery(raw): RawQuery,
) -> Reply {
    auth(&s, &headers)?;
    let hash = hash.to_ascii_lowercase();
    let mut w = s.world();
    let now = Instant::now();
    let items: Vec<Value> = w
        .samples
        .iter()
        .filter(|x| x.sha256 == hash)
        .map(|x| sample_json(&w, x, now))
        .collect();
    Ok(list(&mut w, items, raw.as_deref()))
}

async fn sample_by_id(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Reply {
    auth(&s, &headers)?;
    let id = parse_id(&id)?;
    let w = s.world();
    let sample = w
        .samples
        .iter()
        .find(|x| x.sample_id == id)
        .ok_or_else(not_found)?;
    Ok(ok(sample_json(&w, sample, Instant::now())))
}

/// A sample's report part (IOCs, VTIs): what its detonation yielded and whether it has been
/// analysed. A verdict key may not open reports: 403, as for any permission VMRay refuses (the
/// exact message a real instance sends here was not recorded).
fn report_detonation(w: &World, id: &str) -> Result<(DetonationSpec, bool), Response> {
    if w.vmray_verdict_key {
        return Err(error(
            StatusCode::FORBIDDEN,
            "Permission denied: the reports of this sample are locked for this API key",
        ));
    }
    let id = parse_id(id)?;
    let sample = w
        .samples
        .iter()
        .find(|x| x.sample_id == id)
        .ok_or_else(not_found)?;
    Ok((
        detonation(w, &sample.sha256),
        has_report(w, sample, Instant::now()),
    ))
}

async fn iocs_all(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Reply {
    auth(&s, &headers)?;
    let (d, analysed) = report_detonation(&s.world(), &id)?;
    let d = if analysed {
        d
    } else {
        DetonationSpec::default()
    };
    Ok(ok(iocs_json(&d, None)))
}

async fn iocs_by_verdict(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path((id, verdict)): Path<(String, String)>,
) -> Reply {
    auth(&s, &headers)?;
    if !["malicious", "suspicious", "clean", "null"].contains(&verdict.as_str()) {
        return Err(error(
            StatusCode::BAD_REQUEST,
            &format!("invalid verdict `{verdict}`"),
        ));
    }
    let (d, analysed) = report_detonation(&s.world(), &id)?;
    let d = if analysed {
        d
    } else {
        DetonationSpec::default()
    };
    Ok(ok(iocs_json(&d, Some(&verdict))))
}

async fn vtis(State(s): State<Arc<Shared>>, headers: HeaderMap, Path(id): Path<String>) -> Reply {
    auth(&s, &headers)?;
    let (d, analysed) = report_detonation(&s.world(), &id)?;
    let indicators: Vec<Value> = if analysed {
        d.vtis
            .iter()
            .enumerate()
            .map(|(i, v)| {
                json!({"analysis_ids": [], "category": v.category, "classifications": v.classifications,
                       "id": i + 1, "operation": v.operation, "score": v.score})
            })
            .collect()
    } else {
        Vec::new()
    };
    Ok(ok(
        json!({"status": "finished", "threat_indicators": indicators}),
    ))
}

async fn submission(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Reply {
    auth(&s, &headers)?;
    let id = parse_id(&id)?;
    let w = s.world();
    let sub = w
        .submissions
        .iter()
        .find(|x| x.submission_id == id)
        .ok_or_else(not_found)?;
    Ok(ok(submission_json(&w, sub, Instant::now())))
}

async fn submissions_of_sample(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Reply {
    auth(&s, &headers)?;
    let id = parse_id(&id)?;
    let mut w = s.world();
    if !w.samples.iter().any(|x| x.sample_id == id) {
        return Err(not_found());
    }
    let now = Instant::now();
    let items: Vec<Value> = w
        .submissions
        .iter()
        .filter(|x| x.sample_id == id)
        .map(|x| submission_json(&w, x, now))
        .collect();
    Ok(list(&mut w, items, raw.as_deref()))
}

async fn analyses_of_submission(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Reply {
    auth(&s, &headers)?;
    let id = parse_id(&id)?;
    let mut w = s.world();
    let now = Instant::now();
    let sub = w
        .submissions
        .iter()
        .find(|x| x.submission_id == id)
        .ok_or_else(not_found)?;
    let vti = detonation(&w, &sub.sha256).vti_score;
    let items = if sub.finished(now) {
        submission_analyses(sub, vti)
    } else {
        Vec::new()
    };
    Ok(list(&mut w, items, raw.as_deref()))
}

async fn analyses_of_sample(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Reply {
    auth(&s, &headers)?;
    let id = parse_id(&id)?;
    let mut w = s.world();
    let sample = w
        .samples
        .iter()
        .find(|x| x.sample_id == id)
        .ok_or_else(not_found)?;
    let items = analyses_of(&w, sample, Instant::now());
    Ok(list(&mut w, items, raw.as_deref()))
}

async fn continuation(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Reply {
    auth(&s, &headers)?;
    let id = parse_id(&id)?;
    let mut w = s.world();
    // Single use: fetching it removes it.
    let items = w.continuations.remove(&id).ok_or_else(not_found)?;
    Ok(page(&mut w, items))
}

// ---- submit ----------------------------------------------------------------------------------

/// What a multipart upload carried: text fields, and the file's size and hash (never its bytes).
#[derive(Debug, Default)]
struct Upload {
    fields: Vec<(String, String)>,
    file_name: Option<String>,
    file_size: u64,
    file_sha256: Option<String>,
}

async fn next_chunk(body: &mut Body) -> Option<Result<axum::body::Bytes, String>> {
    loop {
        let frame = std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await?;
        match frame {
            Err(e) => return Some(Err(e.to_string())),
            Ok(f) => {
                if let Ok(data) = f.into_data() {
                    return Some(Ok(data));
                }
            }
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Streams a multipart/form-data body, hashing the file part as it passes.
async fn read_multipart(mut body: Body, boundary: &str) -> Result<Upload, String> {
    let delimiter = format!("\r\n--{boundary}").into_bytes();
    // Prefix a CRLF so the first boundary looks like every other one.
    let mut buf: Vec<u8> = b"\r\n".to_vec();
    let mut upload = Upload::default();
    let mut eof = false;
    enum State {
        Preamble,
        Headers,
        Content {
            name: String,
            file: Option<Sha256>,
            text: Vec<u8>,
        },
        Done,
    }
    let mut state = State::Preamble;
    loop {
        let progressed = match &mut state {
            State::Preamble => match find(&buf, &delimiter) {
                Some(i) => {
                    buf.drain(..i + delimiter.len());
                    state = State::Headers;
                    true
                }
                None => false,
            },
            State::Headers => {
                if buf.starts_with(b"--") {
                    state = State::Done;
                    true
                } else if let Some(i) = find(&buf, b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&buf[..i]).to_string();
                    buf.drain(..i + 4);
                    let disposition = head
                        .lines()
                        .find(|l| l.to_ascii_lowercase().starts_with("content-disposition"))
                        .ok_or("a part has no Content-Disposition header")?
                        .to_string();
                    let param = |key: &str| {
                        disposition.split(';').find_map(|p| {
                            let p = p.trim();
                            p.strip_prefix(&format!("{key}=\""))
                                .and_then(|v| v.strip_suffix('"'))
                                .map(str::to_string)
                        })
                    };
                    let name = param("name").ok_or("a part has no name")?;
                    let file = param("filename").map(|f| {
                        upload.file_name = Some(f);
                        Sha256::new()
                    });
                    state = State::Content {
                        name,
                        file,
                        text: Vec::new(),
                    };
                    true
                } else {
                    false
                }
            }
            State::Content { name, file, text } => {
                let (take, end) = match find(&buf, &delimiter) {
                    Some(i) => (i, true),
                    None => (buf.len().saturating_sub(delimiter.len()), false),
                };
                match file {
                    Some(h) => {
                        h.update(&buf[..take]);
                        upload.file_size += take as u64;
                    }
                    None if text.len() < (1 << 20) => text.extend_from_slice(&buf[..take]),
                    None => return Err(format!("field `{name}` is too long")),
                }
                if end {
                    buf.drain(..take + delimiter.len());
                    match file.take() {
                        Some(h) => upload.file_sha256 = Some(hex::encode(h.finalize())),
                        None => upload
                            .fields
                            .push((name.clone(), String::from_utf8_lossy(text).into_owned())),
                    }
                    state = State::Headers;
                    true
                } else {
                    buf.drain(..take);
                    false
                }
            }
            State::Done => return Ok(upload),
        };
        if progressed {
            continue;
        }
        if eof {
            return Err("the multipart body ended before its closing boundary".into());
        }
        match next_chunk(&mut body).await {
            Some(Ok(chunk)) => buf.extend_from_slice(&chunk),
            Some(Err(e)) => return Err(format!("reading the upload failed: {e}")),
            None => eof = true,
        }
        // After the closing boundary only `--` and an epilogue remain.
        if matches!(state, State::Headers) && buf.starts_with(b"--") {
            return Ok(upload);
        }
    }
}

async fn submit(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Body) -> Reply {
    auth(&s, &headers)?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let boundary = content_type
        .split(';')
        .find_map(|p| p.trim().strip_prefix("boundary="))
        .map(|b| b.trim_matches('"').to_string())
        .filter(|_| content_type.starts_with("multipart/form-data"))
        .ok_or_else(|| {
            error(
                StatusCode::BAD_REQUEST,
                "the submission must be multipart/form-data",
            )
        })?;
    let upload = read_multipart(body, &boundary).await.map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            &format!("malformed multipart body: {e}"),
        )
    })?;
    let Some(sha256) = upload.file_sha256.clone() else {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "`sample_file` or `sample_url` is required",
        ));
    };
    let field = |k: &str| {
        upload
            .fields
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
    };
    let mut w = s.world();
    if upload.file_size > w.vmray_max_upload_bytes {
        return Err(error(
            StatusCode::BAD_REQUEST,
            &format!(
                "Sample file is too large ({} bytes; the maximum upload size is {} bytes)",
                upload.file_size, w.vmray_max_upload_bytes
            ),
        ));
    }
    if let Some(cfg) = field("user_config")
        && serde_json::from_str::<Value>(&cfg)
            .map(|v| !v.is_object())
            .unwrap_or(true)
    {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "`user_config` must be a JSON object",
        ));
    }
    let now = OffsetDateTime::now_utc();
    let d = detonation(&w, &sha256);
    let name = w
        .file(&sha256)
        .map(|f| f.name.clone())
        .or(upload.file_name.clone())
        .unwrap_or_else(|| sha256.clone());
    let sample_id = match w.samples.iter().find(|x| x.sha256 == sha256) {
        Some(x) => x.sample_id,
        None => {
            let id = 9_900_000 + w.fresh();
            w.samples.push(VmSample {
                sample_id: id,
                sha256: sha256.clone(),
                filename: name,
                size: upload.file_size,
                known_verdict: None,
                known_analysed: None,
                created: now,
            });
            id
        }
    };
    let submission_id = 11_000_000 + w.fresh();
    let sub = Submission {
        submission_id,
        sample_id,
        sha256: sha256.clone(),
        file_size: upload.file_size,
        filename: upload.file_name.clone(),
        filename_b64enc: field("sample_filename_b64enc"),
        comment: field("comment"),
        tags: field("tags"),
        user_config: field("user_config"),
        analyzer_mode: field("analyzer_mode"),
        reanalyze: field("reanalyze"),
        fields: upload.fields.clone(),
        created: now,
        finish_at: Instant::now() + std::time::Duration::from_millis(d.duration_ms),
        duration_ms: d.duration_ms,
        verdict: d.verdict.clone(),
        fails: d.fails,
        partial_failure: d.partial_failure,
    };
    w.counters.submissions += 1;
    w.record(format!(
        "VMRay submission {submission_id}: sample {sample_id} ({sha256}, {} bytes)",
        upload.file_size
    ));
    let now_i = Instant::now();
    let sub_json = submission_json(&w, &sub, now_i);
    w.submissions.push(sub);
    let sample = w
        .samples
        .iter()
        .find(|x| x.sample_id == sample_id)
        .map(|x| {
            let mut v = sample_json(&w, x, now_i);
            v["submission_filename"] = json!(upload.file_name);
            v
        })
        .unwrap_or(Value::Null);
    let job = json!({"job_id": submission_id + 1_000_000, "job_sample_id": sample_id,
                     "job_submission_id": submission_id, "job_status": "queued",
                     "job_type": "full_analysis", "job_tracking_state": "//waiting",
                     "job_vm_name": "win10_64_th2", "job_created": naive(now)});
    Ok(ok(json!({
        "errors": [], "jobs": [job], "md_jobs": [], "reputation_jobs": [], "samples": [sample],
        "static_jobs": [], "submissions": [sub_json], "vt_jobs": [], "whois_jobs": [],
    })))
}
