//! The simulated Falcon API: the endpoints of `notes/endpoints.md`, with the envelopes, status
//! codes, limits and pagination of `shared/reference/falcon-api.md`.

// Handlers return a finished error response early; its size on that cold path is irrelevant.
#![allow(clippy::result_large_err)]

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Extension, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, patch, post};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::time::Instant;

use super::world::{
    Alert, Case, ContainmentRequest, Ioc, Quarantine, QuarantineAction, Scan, World,
};
use super::{Injected, Shared, files, fql, parse_pairs};

type Reply = Result<Response, Response>;

pub(super) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/oauth2/token", post(token))
        .route("/alerts/combined/alerts/v1", post(alerts_combined))
        .route("/alerts/queries/alerts/v2", get(alerts_query))
        .route("/alerts/entities/alerts/v2", post(alerts_entities))
        .route("/alerts/entities/alerts/v3", patch(alerts_update))
        .route(
            "/quarantine/queries/quarantined-files/v1",
            get(quarantine_query),
        )
        .route(
            "/quarantine/entities/quarantined-files/GET/v1",
            post(quarantine_entities),
        )
        .route(
            "/quarantine/entities/quarantined-files/v1",
            patch(quarantine_update),
        )
        .route("/samples/entities/samples/v3", get(sample_download))
        .route("/iocs/combined/indicator/v1", get(iocs_combined))
        .route("/iocs/queries/indicators/v1", get(iocs_query))
        .route("/iocs/entities/indicators/v1", post(iocs_create))
        .route("/iocs/queries/indicators/devices/v1", get(devices_ran_on))
        .route("/devices/entities/devices-actions/v2", post(device_action))
        .route("/devices/entities/devices/v2", post(devices_entities))
        .route("/devices/queries/devices/v1", get(devices_query))
        .route("/cases/queries/cases/v1", get(cases_query))
        .route(
            "/cases/entities/cases/v2",
            axum::routing::put(cases_create).post(cases_entities),
        )
        .route("/ods/entities/scans/v1", post(scan_create))
        .route("/ods/queries/scans/v1", get(scans_query))
        .route("/detects/{*rest}", any(detects))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "Not Found") })
        .with_state(shared)
}

// ---- envelopes -------------------------------------------------------------------------------

fn meta(pagination: Option<Value>) -> Value {
    let mut m = json!({"query_time": 0.004, "powered_by": "falcon-sim", "trace_id": "sim"});
    if let Some(p) = pagination {
        m["pagination"] = p;
    }
    m
}

fn ok(status: StatusCode, resources: Value, pagination: Option<Value>) -> Response {
    json_response(
        status,
        json!({"meta": meta(pagination), "resources": resources, "errors": []}),
    )
}

fn json_response(status: StatusCode, body: Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// The meta-only error envelope.
pub(super) fn error(status: StatusCode, message: &str) -> Response {
    json_response(
        status,
        json!({"meta": meta(None), "errors": [{"code": status.as_u16(), "message": message}]}),
    )
}

fn bad(message: impl AsRef<str>) -> Response {
    error(StatusCode::BAD_REQUEST, message.as_ref())
}

// ---- request helpers -------------------------------------------------------------------------

fn auth(s: &Shared, headers: &HeaderMap) -> Result<(), Response> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let mut w = s.world();
    let valid = token
        .and_then(|t| w.tokens.get(t))
        .is_some_and(|expiry| Instant::now() < *expiry);
    if valid {
        Ok(())
    } else {
        w.counters.unauthorized += 1;
        Err(error(
            StatusCode::UNAUTHORIZED,
            "access denied, invalid bearer token",
        ))
    }
}

struct Query(Vec<(String, String)>);

impl Query {
    fn new(raw: Option<String>) -> Self {
        Query(parse_pairs(raw.as_deref().unwrap_or("")))
    }
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
    fn filter(&self) -> Result<fql::Expr, Response> {
        parse_filter(self.get("filter").unwrap_or(""))
    }
    fn number(&self, key: &str, default: u64) -> Result<u64, Response> {
        match self.get(key) {
            None | Some("") => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| bad(format!("`{key}` must be a non-negative integer, got `{v}`"))),
        }
    }
}

fn parse_filter(text: &str) -> Result<fql::Expr, Response> {
    fql::parse(text).map_err(|e| bad(e.to_string()))
}

/// Fields an alert filter may name (the alert document's own, as Falcon's definition lists
/// them); Falcon refuses a filter on any other field with a 400.
const ALERT_FIELDS: &[&str] = &[
    "agent_id",
    "aggregate_id",
    "cid",
    "cmdline",
    "composite_id",
    "confidence",
    "created_timestamp",
    "description",
    "device",
    "display_name",
    "filename",
    "filepath",
    "id",
    "ioc_type",
    "ioc_value",
    "md5",
    "name",
    "objective",
    "parent_details",
    "pattern_disposition",
    "pattern_disposition_details",
    "pattern_id",
    "platform",
    "product",
    "quarantined_files",
    "scenario",
    "severity",
    "severity_name",
    "sha1",
    "sha256",
    "show_in_ui",
    "status",
    "tactic",
    "tactic_id",
    "tags",
    "technique",
    "technique_id",
    "timestamp",
    "type",
    "updated_timestamp",
    "assigned_to_uuid",
    "assigned_to_name",
];

/// Fields a quarantine filter may name.
const QUARANTINE_FIELDS: &[&str] = &[
    "id",
    "aid",
    "cid",
    "sha256",
    "hostname",
    "username",
    "state",
    "date_created",
    "date_updated",
    "paths",
    "detect_ids",
    "alert_ids",
    "device",
];

/// Parses a filter and refuses fields the resource does not have (a typo would otherwise match
/// nothing, or everything, without a word).
fn parse_filter_on(text: &str, fields: &[&str]) -> Result<fql::Expr, Response> {
    let expr = parse_filter(text)?;
    for field in expr.fields() {
        let root = field.split('.').next().unwrap_or(field);
        if !fields.contains(&root) {
            return Err(bad(format!(
                "invalid filter: `{field}` is not a field of this resource"
            )));
        }
    }
    Ok(expr)
}

fn json_body(body: &Bytes) -> Result<Value, Response> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| bad(format!("malformed JSON request body: {e}")))?;
    if v.is_object() {
        Ok(v)
    } else {
        Err(bad("the request body must be a JSON object"))
    }
}

fn string_list(v: &Value, key: &str) -> Result<Vec<String>, Response> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| {
                i.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| bad(format!("`{key}` must hold strings only")))
            })
            .collect(),
        Some(_) => Err(bad(format!("`{key}` must be a list of strings"))),
    }
}

/// A list of ids no longer than Falcon takes in one request (`status` past the limit).
fn bounded_list(
    v: &Value,
    key: &str,
    max: usize,
    status: StatusCode,
) -> Result<Vec<String>, Response> {
    let ids = string_list(v, key)?;
    if ids.len() > max {
        return Err(error(
            status,
            &format!("at most {max} {key} per request, got {}", ids.len()),
        ));
    }
    Ok(ids)
}

fn ts(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

fn ts_seconds(t: OffsetDateTime) -> String {
    ts(t.replace_nanosecond(0).unwrap_or(t))
}

fn limit_in(q: &Query, default: u64, max: u64) -> Result<u64, Response> {
    let limit = q.number("limit", default)?;
    if limit == 0 || limit > max {
        return Err(bad(format!(
            "`limit` must be between 1 and {max}, got {limit}"
        )));
    }
    Ok(limit)
}

// ---- OAuth2 ----------------------------------------------------------------------------------

async fn token(State(s): State<Arc<Shared>>, body: Bytes) -> Response {
    let form = parse_pairs(&String::from_utf8_lossy(&body));
    let field = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    if field("client_id") != Some(&s.creds.client_id)
        || field("client_secret") != Some(&s.creds.client_secret)
    {
        return error(StatusCode::FORBIDDEN, "access denied, invalid client");
    }
    let lifetime = s
        .faults
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .faults
        .token_lifetime_secs;
    let mut w = s.world();
    let lifetime = lifetime.unwrap_or(w.token_lifetime_secs);
    let n = w.fresh();
    let token = format!("sim-token-{n}-{}", files::Rng::new(n ^ 0x70CE).hex(24));
    w.tokens.insert(
        token.clone(),
        Instant::now() + std::time::Duration::from_secs(lifetime),
    );
    w.counters.tokens_issued += 1;
    let mut r = json_response(
        StatusCode::CREATED,
        json!({"access_token": token, "token_type": "bearer", "expires_in": lifetime}),
    );
    r.headers_mut()
        .insert("x-cs-region", HeaderValue::from_static("us-1"));
    r
}

// ---- Alerts ----------------------------------------------------------------------------------

fn alert_json(w: &World, a: &Alert) -> Value {
    let host = w.host(&a.device_id);
    let quarantined: Vec<Value> = a
        .quarantined_files
        .iter()
        .filter_map(|id| w.quarantines.iter().find(|q| &q.id == id))
        .map(|q| json!({"id": q.id, "sha256": q.sha256, "state": q.state, "filename": q.filename}))
        .collect();
    let aid_n = a.composite_id.rsplit(':').next().unwrap_or("0");
    let mut doc = json!({
        "composite_id": a.composite_id,
        "id": format!("ind:{}:{}", a.device_id, aid_n),
        "aggregate_id": format!("aggind:{}:{}", a.device_id, aid_n),
        "cid": w.cid,
        "agent_id": a.device_id,
        "product": "epp",
        "type": "ldt",
        "platform": host.map(|h| h.platform.as_str()).unwrap_or("Windows"),
        "status": a.status,
        "tags": a.tags,
        "show_in_ui": true,
        "sha256": a.sha256,
        "filename": a.filename,
        "filepath": a.filepath,
        "cmdline": format!("\"{}\"", a.filepath),
        "severity": a.severity,
        "severity_name": match a.severity { 0..=19 => "Informational", 20..=39 => "Low", 40..=59 => "Medium", 60..=79 => "High", _ => "Critical" },
        "created_timestamp": ts(a.created),
        "updated_timestamp": ts(a.updated),
        "timestamp": ts(a.created),
        "assigned_to_uuid": a.assigned_to,
        "device": {
            "device_id": a.device_id,
            "hostname": host.map(|h| h.hostname.as_str()).unwrap_or(""),
            "platform_name": host.map(|h| h.platform.as_str()).unwrap_or("Windows"),
            "os_version": match host.map(|h| h.platform.as_str()) { Some("Mac") => "macOS 14", Some("Linux") => "Ubuntu 22.04", _ => "Windows 11" },
        },
        "quarantined_files": quarantined,
    });
    add_detection(&mut doc, &a.detection);
    doc
}

/// The fields that say what Falcon detected, as real alerts of each kind carry them: a verdict
/// on the file (machine learning, known malware, an intelligence hash) or on what a process did
/// (an IOA, a custom IOA, OverWatch), where `sha256` is only the process's image.
fn add_detection(doc: &mut Value, detection: &str) {
    let (tactic, tactic_id, technique, technique_id, scenario, objective, quarantine) =
        match detection {
            "known_malware" => (
                "Malware",
                "CSTA0001",
                "Known Malware",
                "CST0001",
                "known_malware",
                "Falcon Detection Method",
                true,
            ),
            "intel" => (
                "Falcon Intel",
                "CSTA0003",
                "Intelligence Indicator - Hash",
                "CST0006",
                "intel_detection",
                "Falcon Detection Method",
                false,
            ),
            "ioa" => (
                "Execution",
                "TA0002",
                "User Execution",
                "T1204",
                "suspicious_activity",
                "Follow Through",
                false,
            ),
            "custom_ioa" => (
                "Custom Intelligence",
                "CSTA0005",
                "Indicator of Attack",
                "CST0004",
                "suspicious_activity",
                "Falcon Detection Method",
                false,
            ),
            "overwatch" => (
                "Falcon Overwatch",
                "CSTA0006",
                "Malicious Activity",
                "CST0002",
                "overwatch",
                "Falcon Detection Method",
                false,
            ),
            _ => (
                "Machine Learning",
                "CSTA0004",
                "Sensor-based ML",
                "CST0007",
                "NGAV",
                "Falcon Detection Method",
                true,
            ),
        };
    doc["tactic"] = json!(tactic);
    doc["tactic_id"] = json!(tactic_id);
    doc["technique"] = json!(technique);
    doc["technique_id"] = json!(technique_id);
    doc["scenario"] = json!(scenario);
    doc["objective"] = json!(objective);
    // 2048: the file was quarantined; 0: detection only.
    doc["pattern_disposition"] = json!(if quarantine { 2048 } else { 0 });
    doc["pattern_disposition_details"] = json!({
        "detect": !quarantine, "quarantine_file": quarantine, "kill_process": false,
        "process_blocked": false, "operation_blocked": false, "indicator": false,
    });
}

/// A sort key that orders timestamps by time and everything else as text.
fn sort_key(doc: &Value, field: &str) -> String {
    match doc.get(field) {
        Some(Value::String(s)) => match OffsetDateTime::parse(s, &Rfc3339) {
            Ok(t) => format!("{:040}", t.unix_timestamp_nanos() + (1i128 << 100)),
            Err(_) => s.clone(),
        },
        Some(Value::Number(n)) => format!("{:020}", n.as_f64().unwrap_or(0.0) as i64 + (1 << 62)),
        Some(other) => other.to_string(),
        None => String::new(),
    }
}

fn parse_sort(sort: Option<&str>, default: &str) -> (String, bool) {
    let sort = sort.filter(|s| !s.is_empty()).unwrap_or(default);
    let (field, dir) = sort
        .split_once('|')
        .or_else(|| sort.split_once('.'))
        .unwrap_or((sort, "asc"));
    (field.to_string(), !dir.eq_ignore_ascii_case("desc"))
}

/// Matching alerts as (sort key, id, document), sorted.
fn sorted_alerts(
    w: &World,
    filter: &fql::Expr,
    sort: Option<&str>,
) -> Vec<(String, String, Value)> {
    let (field, asc) = parse_sort(sort, "created_timestamp|desc");
    let mut docs: Vec<(String, String, Value)> = w
        .alerts
        .iter()
        .map(|a| alert_json(w, a))
        .filter(|d| filter.matches(d))
        .map(|d| {
            let id = d["composite_id"].as_str().unwrap_or_default().to_string();
            (sort_key(&d, &field), id, d)
        })
        .collect();
    docs.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    if !asc {
        docs.reverse();
    }
    docs
}

async fn alerts_combined(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Reply {
    auth(&s, &headers)?;
    let req = json_body(&body)?;
    let limit = match req.get("limit") {
        None | Some(Value::Null) => 100,
        Some(v) => v
            .as_u64()
            .ok_or_else(|| bad("`limit` must be an integer"))?,
    };
    if !(1..=1000).contains(&limit) {
        return Err(bad(format!(
            "`limit` must be between 1 and 1000, got {limit}"
        )));
    }
    let filter = parse_filter_on(
        req.get("filter").and_then(Value::as_str).unwrap_or(""),
        ALERT_FIELDS,
    )?;
    let sort = req.get("sort").and_then(Value::as_str);
    let (_, asc) = parse_sort(sort, "created_timestamp|desc");
    let after = match req
        .get("after")
        .and_then(Value::as_str)
        .filter(|a| !a.is_empty())
    {
        None => None,
        Some(token) => Some(decode_cursor(token).ok_or_else(|| bad("invalid `after` token"))?),
    };
    let w = s.world();
    let docs = sorted_alerts(&w, &filter, sort);
    let total = docs.len();
    let start = match &after {
        None => 0,
        Some((key, id)) => docs
            .iter()
            .position(|(k, i, _)| {
                let ord = (k, i).cmp(&(key, id));
                if asc { ord.is_gt() } else { ord.is_lt() }
            })
            .unwrap_or(total),
    };
    let page: Vec<&(String, String, Value)> =
        docs.iter().skip(start).take(limit as usize).collect();
    let mut pagination = json!({"limit": limit, "total": total});
    if start + page.len() < total
        && let Some(last) = page.last()
    {
        pagination["after"] = json!(encode_cursor(&last.0, &last.1));
    }
    let resources: Vec<Value> = page.iter().map(|d| d.2.clone()).collect();
    Ok(ok(StatusCode::OK, json!(resources), Some(pagination)))
}

fn encode_cursor(key: &str, id: &str) -> String {
    hex::encode(json!([key, id]).to_string())
}

fn decode_cursor(token: &str) -> Option<(String, String)> {
    let raw = hex::decode(token).ok()?;
    let v: Value = serde_json::from_slice(&raw).ok()?;
    Some((
        v.get(0)?.as_str()?.to_string(),
        v.get(1)?.as_str()?.to_string(),
    ))
}

async fn alerts_query(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Reply {
    auth(&s, &headers)?;
    let q = Query::new(raw);
    let limit = limit_in(&q, 100, 10_000)?;
    let offset = q.number("offset", 0)?;
    if offset + limit > 10_000 {
        return Err(bad(
            "offset + limit must not exceed 10000; use /alerts/combined/alerts/v1 with `after` for more",
        ));
    }
    let filter = parse_filter_on(q.get("filter").unwrap_or(""), ALERT_FIELDS)?;
    let w = s.world();
    let docs = sorted_alerts(&w, &filter, q.get("sort"));
    let ids: Vec<&str> = docs
        .iter()
        .skip(offset as usize)
        .take(limit as usize)
        .map(|d| d.1.as_str())
        .collect();
    Ok(ok(
        StatusCode::OK,
        json!(ids),
        Some(json!({"offset": offset, "limit": limit, "total": docs.len()})),
    ))
}

async fn alerts_entities(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Reply {
    auth(&s, &headers)?;
    let req = json_body(&body)?;
    let ids = bounded_list(&req, "composite_ids", 1000, StatusCode::BAD_REQUEST)?;
    let w = s.world();
    let found: Vec<Value> = ids
        .iter()
        .filter_map(|id| w.alerts.iter().find(|a| &a.composite_id == id))
        .map(|a| alert_json(&w, a))
        .collect();
    Ok(ok(StatusCode::OK, json!(found), None))
}

async fn alerts_update(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Reply {
    auth(&s, &headers)?;
    let req = json_body(&body)?;
    // Falcon answers 413, not 400, for too many ids on the alerts PATCH.
    let ids = bounded_list(&req, "composite_ids", 1000, StatusCode::PAYLOAD_TOO_LARGE)?;
    if ids.is_empty() {
        return Err(bad("`composite_ids` must name at least one alert"));
    }
    let params = match req.get("action_parameters") {
        Some(Value::Array(p)) if !p.is_empty() => p.clone(),
        _ => return Err(bad("`action_parameters` must be a non-empty list")),
    };
    let mut actions = Vec::new();
    for p in &params {
        let name = p.get("name").and_then(Value::as_str);
        let value = p.get("value");
        let (Some(name), Some(Value::String(value))) = (name, value) else {
            return Err(bad(
                "every action parameter needs a string `name` and a string `value`",
            ));
        };
        match name {
            "update_status"
                if !["new", "in_progress", "reopened", "closed"].contains(&value.as_str()) =>
            {
                return Err(bad(format!("invalid status `{value}`")));
            }
            // Falcon's own words; one refused value fails the whole PATCH. Counted in bytes,
            // which also bounds characters.
            _ if value.len() >= 1024 => {
                return Err(bad(
                    "invalid action value specified. must be less than 1024",
                ));
            }
            "update_status"
            | "append_comment"
            | "add_tag"
            | "remove_tag"
            | "remove_tags_by_prefix"
            | "assign_to_uuid"
            | "assign_to_user_id"
            | "assign_to_name"
            | "unassign"
            | "show_in_ui"
            | "new_behavior_processed" => {}
            other => return Err(bad(format!("unknown action parameter `{other}`"))),
        }
        actions.push((name.to_string(), value.clone()));
    }
    let mut w = s.world();
    let now = OffsetDateTime::now_utc();
    let mut errors = Vec::new();
    let mut changes = Vec::new();
    for id in &ids {
        if w.refused_entities.contains(id) {
            errors.push(json!({"code": 409, "id": id, "message": format!("alert `{id}` cannot be updated")}));
            continue;
        }
        let Some(alert) = w.alerts.iter_mut().find(|a| &a.composite_id == id) else {
            errors
                .push(json!({"code": 404, "id": id, "message": format!("alert `{id}` not found")}));
            continue;
        };
        // Tag removals apply before additions, as the reference says.
        let mut ordered: Vec<&(String, String)> = actions
            .iter()
            .filter(|(n, _)| n.starts_with("remove_"))
            .collect();
        ordered.extend(actions.iter().filter(|(n, _)| !n.starts_with("remove_")));
        for (name, value) in ordered {
            match name.as_str() {
                "update_status" => {
                    alert.status = value.clone();
                    changes.push(format!("alert {id}: status -> {value}"));
                }
                "append_comment" => {
                    alert.comments.push(value.clone());
                    alert.commented_at.get_or_insert(now);
                    changes.push(format!(
                        "alert {id}: comment appended ({} chars)",
                        value.len()
                    ));
                }
                "add_tag" => {
                    if !alert.tags.contains(value) {
                        alert.tags.push(value.clone());
                    }
                    changes.push(format!("alert {id}: tag {value} added"));
                }
                "remove_tag" => alert.tags.retain(|t| t != value),
                "remove_tags_by_prefix" => alert.tags.retain(|t| !t.starts_with(value.as_str())),
                "assign_to_uuid" | "assign_to_user_id" | "assign_to_name" => {
                    alert.assigned_to = Some(value.clone())
                }
                "unassign" => alert.assigned_to = None,
                _ => {}
            }
        }
        alert.updated = now;
    }
    for c in changes {
        w.record(c);
    }
    let mut m = meta(None);
    m["writes"] = json!({"resources_affected": ids.len() - errors.len()});
    Ok(json_response(
        StatusCode::OK,
        json!({"meta": m, "errors": errors}),
    ))
}

// ---- Quarantine ------------------------------------------------------------------------------

fn quarantine_json(w: &World, q: &Quarantine) -> Value {
    let alert_ids: Vec<&str> = w
        .alerts
        .iter()
        .filter(|a| a.quarantined_files.contains(&q.id))
        .map(|a| a.composite_id.as_str())
        .collect();
    json!({
        "id": q.id,
        "aid": q.aid,
        "cid": w.cid,
        "sha256": q.sha256,
        "hostname": q.hostname,
        "username": "user",
        "state": q.state,
        "date_created": ts_seconds(q.date_created),
        "date_updated": ts_seconds(q.date_updated),
        "paths": [{"path": q.path, "filename": q.filename, "state": q.state}],
        "detect_ids": [],
        "alert_ids": alert_ids,
        "device": {"device_id": q.aid, "hostname": q.hostname},
    })
}

async fn quarantine_query(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Reply {
    auth(&s, &headers)?;
    let q = Query::new(raw);
    let limit = limit_in(&q, 100, 5000)?;
    let offset = q.number("offset", 0)?;
    let filter = parse_filter_on(q.get("filter").unwrap_or(""), QUARANTINE_FIELDS)?;
    let (field, asc) = parse_sort(q.get("sort"), "date_created|asc");
    let w = s.world();
    let mut docs: Vec<(String, String)> = w
        .quarantines
        .iter()
        .map(|r| quarantine_json(&w, r))
        .filter(|d| filter.matches(d))
        .map(|d| {
            (
                sort_key(&d, &field),
                d["id"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    docs.sort();
    if !asc {
        docs.reverse();
    }
    let ids: Vec<&str> = docs
        .iter()
        .skip(offset as usize)
        .take(limit as usize)
        .map(|d| d.1.as_str())
        .collect();
    // `offset` in the answer is where the next page starts, so "page until offset >= total" ends.
    let next = offset as usize + ids.len();
    Ok(ok(
        StatusCode::OK,
        json!(ids),
        Some(json!({"offset": next, "limit": limit, "total": docs.len()})),
    ))
}

async fn quarantine_entities(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Reply {
    auth(&s, &headers)?;
    let req = json_body(&body)?;
    let ids = bounded_list(&req, "ids", 500, StatusCode::BAD_REQUEST)?;
    let w = s.world();
    let found: Vec<Value> = ids
        .iter()
        .filter_map(|id| w.quarantines.iter().find(|q| &q.id == id))
        .map(|q| quarantine_json(&w, q))
        .collect();
    Ok(ok(StatusCode::OK, json!(found), None))
}

async fn quarantine_update(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Reply {
    auth(&s, &headers)?;
    let req = json_body(&body)?;
    let ids = bounded_list(&req, "ids", 500, StatusCode::BAD_REQUEST)?;
    let action = req.get("action").and_then(Value::as_str).unwrap_or("");
    let new_state = match action {
        "release" => "released",
        "unrelease" => "quarantined",
        "delete" => "deleted",
        other => {
            return Err(bad(format!(
                "`action` must be release, unrelease or delete, got `{other}`"
            )));
        }
    };
    let comment = match req.get("comment") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(c)) => c.clone(),
        Some(_) => return Err(bad("`comment` must be a string")),
    };
    let mut w = s.world();
    let now = OffsetDateTime::now_utc();
    let mut errors = Vec::new();
    for id in &ids {
        if w.refused_entities.contains(id) {
            errors.push(json!({"code": 409, "id": id, "message": format!("quarantined file `{id}` cannot be updated")}));
            continue;
        }
        let Some(q) = w.quarantines.iter_mut().find(|q| &q.id == id) else {
            errors.push(
                json!({"code": 404, "id": id, "message": format!("quarantined file `{id}` not found")}),
            );
            continue;
        };
        q.state = new_state.to_string();
        q.date_updated = now;
        q.actions.push(QuarantineAction {
            action: action.to_string(),
            comment: comment.clone(),
        });
        w.record(format!("quarantine {id}: {action} -> {new_state}"));
    }
    Ok(json_response(
        StatusCode::OK,
        json!({"meta": meta(None), "errors": errors}),
    ))
}

// ---- Sample download -------------------------------------------------------------------------

async fn sample_download(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    injected: Option<Extension<Injected>>,
) -> Reply {
    auth(&s, &headers)?;
    let q = Query::new(raw);
    let sha = q.get("ids").unwrap_or("").to_ascii_lowercase();
    if sha.is_empty() {
        return Err(bad("`ids` must name one SHA-256"));
    }
    let protected = q
        .get("password_protected")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let wrong = s
        .faults
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .faults
        .wrong_file_hashes
        .iter()
        .any(|h| h.eq_ignore_ascii_case(&sha));
    let (seed, size) = {
        let mut w = s.world();
        let Some(f) = w.file(&sha).filter(|f| f.in_sample_store) else {
            return Err(error(
                StatusCode::NOT_FOUND,
                &format!("sample `{sha}` not found"),
            ));
        };
        let (seed, size) = (f.content_seed, f.size);
        w.counters.downloads += 1;
        if wrong {
            w.counters.wrong_files += 1;
        }
        (if wrong { seed ^ 0x0BAD_F11E } else { seed }, size)
    };
    let name = format!(
        "{sha}{}{}",
        if wrong { "-wrong" } else { "" },
        if protected { ".zip" } else { ".bin" }
    );
    let path = s.tmp.join(&name);
    if !path.exists() {
        let part = s.tmp.join(format!("{name}.{}.part", s.world().fresh()));
        let (p, sha2) = (part.clone(), sha.clone());
        tokio::task::spawn_blocking(move || {
            if protected {
                files::write_encrypted_zip(&p, &sha2, seed, size)
            } else {
                let mut out = std::io::BufWriter::new(std::fs::File::create(&p)?);
                files::for_each_chunk(seed, size, |c| std::io::Write::write_all(&mut out, c))?;
                std::io::Write::flush(&mut out)
            }
        })
        .await
        .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()))?
        .map_err(|e| {
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("building the sample failed: {e}"),
            )
        })?;
        std::fs::rename(&part, &path)
            .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()))?;
    }
    let len = std::fs::metadata(&path)
        .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()))?
        .len();
    let truncate = injected.is_some_and(|i| i.truncate);
    let served = if truncate {
        // Half the bytes behind a Content-Length announcing all of them: the connection breaks.
        s.world().counters.truncated_downloads += 1;
        let cut = s.tmp.join(format!("{name}.{}.cut", s.world().fresh()));
        let mut src = std::fs::File::open(&path)
            .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()))?;
        let mut dst = std::fs::File::create(&cut)
            .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()))?;
        std::io::copy(&mut std::io::Read::take(&mut src, len / 2), &mut dst)
            .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()))?;
        cut
    } else {
        path
    };
    let file = tokio::fs::File::open(&served)
        .await
        .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()))?;
    let body = Body::new(reqwest::Body::from(file));
    let mut response = Response::new(body);
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    Ok(response)
}

// ---- IOCs ------------------------------------------------------------------------------------

fn ioc_json(i: &Ioc) -> Value {
    let mut v = json!({
        "id": i.id,
        "type": i.ioc_type,
        "value": i.value,
        "action": i.action,
        "severity": i.severity,
        "platforms": i.platforms,
        "applied_globally": i.applied_globally,
        "host_groups": [],
        "tags": i.tags,
        "source": i.source,
        "description": i.description,
        "expiration": i.expiration,
        "expired": false,
        "deleted": false,
        "created_on": ts(i.created_on),
        "created_by": "sim-client-id",
        "modified_on": ts(i.created_on),
    });
    if let Some(f) = &i.filename {
        v["metadata"] = json!({"filename": f});
    }
    v
}

async fn iocs_combined(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Reply {
    auth(&s, &headers)?;
    let q = Query::new(raw);
    let limit = limit_in(&q, 100, 2000)?;
    let offset = q.number("offset", 0)?;
    let filter = q.filter()?;
    let w = s.world();
    let all: Vec<Value> = w
        .iocs
        .iter()
        .map(ioc_json)
        .filter(|d| filter.matches(d))
        .collect();
    let page: Vec<Value> = all
        .iter()
        .skip(offset as usize)
        .take(limit as usize)
        .cloned()
        .collect();
    Ok(ok(
        StatusCode::OK,
        json!(page),
        Some(json!({"offset": offset, "limit": limit, "total": all.len()})),
    ))
}

async fn iocs_query(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Reply {
    auth(&s, &headers)?;
    let q = Query::new(raw);
    let limit = limit_in(&q, 100, 2000)?;
    let offset = q.number("offset", 0)?;
    let filter = q.filter()?;
    let w = s.world();
    let ids: Vec<Value> = w
        .iocs
        .iter()
        .map(ioc_json)
        .filter(|d| filter.matches(d))
        .map(|d| d["id"].clone())
        .collect();
    let total = ids.len();
    let page: Vec<Value> = ids
        .into_iter()
        .skip(offset as usize)
        .take(limit as usize)
        .collect();
    Ok(ok(
        StatusCode::OK,
        json!(page),
        Some(json!({"offset": offset, "limit": limit, "total": total})),
    ))
}

fn validate_indicator(v: &Value) -> Result<Ioc, String> {
    let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    let ioc_type = text("type").ok_or("`type` is required")?;
    let value = text("value").ok_or("`value` is required")?;
    let valid_value = match ioc_type.as_str() {
        "sha256" => value.len() == 64 && value.bytes().all(|b| b.is_ascii_hexdigit()),
        "md5" => value.len() == 32 && value.bytes().all(|b| b.is_ascii_hexdigit()),
        "domain" => !value.is_empty() && value.len() <= 200 && !value.contains(['/', ' ', ':']),
        "ipv4" => value.parse::<std::net::Ipv4Addr>().is_ok(),
        "ipv6" => value.parse::<std::net::Ipv6Addr>().is_ok(),
        other => return Err(format!("unsupported indicator type `{other}`")),
    };
    if !valid_value {
        return Err(format!("`{value}` is not a valid {ioc_type} value"));
    }
    let action = text("action").ok_or("`action` is required")?;
    if !["no_action", "allow", "prevent_no_ui", "detect", "prevent"].contains(&action.as_str()) {
        return Err(format!("invalid action `{action}`"));
    }
    // Hashes take every action; IP addresses and domains only detect or no_action.
    if !matches!(ioc_type.as_str(), "sha256" | "md5")
        && !["detect", "no_action"].contains(&action.as_str())
    {
        return Err(format!(
            "action `{action}` is not valid for type `{ioc_type}`"
        ));
    }
    let severity = text("severity").unwrap_or_default();
    if !["informational", "low", "medium", "high", "critical"].contains(&severity.as_str()) {
        return Err(format!("invalid severity `{severity}`"));
    }
    let applied_globally = v
        .get("applied_globally")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let host_groups = v
        .get("host_groups")
        .and_then(Value::as_array)
        .is_some_and(|g| !g.is_empty());
    if !applied_globally && !host_groups {
        return Err("either `applied_globally: true` or `host_groups` is required".into());
    }
    let platforms: Vec<String> = v
        .get("platforms")
        .and_then(Value::as_array)
        .map(|p| {
            p.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    if platforms.is_empty() {
        return Err("`platforms` must name at least one platform".into());
    }
    if let Some(e) = text("expiration")
        && OffsetDateTime::parse(&e, &Rfc3339).is_err()
    {
        return Err(format!("`expiration` `{e}` is not an RFC 3339 timestamp"));
    }
    Ok(Ioc {
        id: String::new(),
        ioc_type,
        value,
        action,
        severity,
        platforms,
        applied_globally,
        tags: v
            .get("tags")
            .and_then(Value::as_array)
            .map(|t| {
                t.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default(),
        source: text("source"),
        description: text("description"),
        expiration: text("expiration"),
        filename: v
            .pointer("/metadata/filename")
            .and_then(Value::as_str)
            .map(str::to_string),
        comment: None,
        created_on: OffsetDateTime::now_utc(),
    })
}

async fn iocs_create(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Reply {
    auth(&s, &headers)?;
    let req = json_body(&body)?;
    let Some(Value::Array(items)) = req.get("indicators") else {
        return Err(bad("`indicators` must be a list"));
    };
    if items.is_empty() {
        return Err(bad("`indicators` must not be empty"));
    }
    let comment = req
        .get("comment")
        .and_then(Value::as_str)
        .map(str::to_string);
    // One invalid indicator fails the whole request: Falcon creates none of them.
    let mut valid = Vec::new();
    let mut invalid = Vec::new();
    for item in items {
        match validate_indicator(item) {
            Ok(ioc) => valid.push(ioc),
            Err(message) => invalid.push(json!({"code": 400, "message": message})),
        }
    }
    if !invalid.is_empty() {
        return Ok(json_response(
            StatusCode::BAD_REQUEST,
            json!({"meta": meta(None), "resources": null, "errors": invalid}),
        ));
    }
    let mut w = s.world();
    let mut created = Vec::new();
    let mut errors = Vec::new();
    for mut ioc in valid {
        if w.refused_entities.contains(&ioc.value) {
            errors.push(json!({"code": 409, "id": ioc.value, "message": format!(
                "indicator '{}' could not be saved", ioc.value)}));
            continue;
        }
        if w.iocs
            .iter()
            .any(|i| i.ioc_type == ioc.ioc_type && i.value.eq_ignore_ascii_case(&ioc.value))
        {
            errors.push(json!({"code": 400, "message": format!(
                "Duplicate type: '{}' and value: '{}' combination.", ioc.ioc_type, ioc.value)}));
            continue;
        }
        let n = w.fresh();
        ioc.id = files::Rng::new(n ^ 0x10C).hex(64);
        ioc.comment = comment.clone();
        w.record(format!(
            "IOC {} {} created ({})",
            ioc.ioc_type, ioc.value, ioc.action
        ));
        created.push(ioc_json(&ioc));
        w.iocs.push(ioc);
    }
    // Duplicates make it a 400; a value refused on its own leaves a 201 with errors.
    let status = if errors.iter().any(|e| {
        e["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("Duplicate"))
    }) {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::CREATED
    };
    Ok(json_response(
        status,
        json!({"meta": meta(None), "resources": created, "errors": errors}),
    ))
}

async fn devices_ran_on(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Reply {
    auth(&s, &headers)?;
    let q = Query::new(raw);
    let ioc_type = q.get("type").unwrap_or("");
    let value = q.get("value").unwrap_or("").to_ascii_lowercase();
    if ioc_type.is_empty() || value.is_empty() {
        return Err(bad("`type` and `value` are required"));
    }
    // The real endpoint: `limit` at most 100, `offset` an opaque string token, and its
    // pagination carries no `total` (`api.DetectsQueryPaging`: after, limit, offset).
    let limit = limit_in(&q, 100, 100)?;
    let offset = match q.get("offset") {
        None | Some("") => 0,
        Some(token) => decode_ran_on_offset(token)
            .ok_or_else(|| bad(format!("invalid offset token `{token}`")))?,
    };
    let w = s.world();
    let aids: Vec<String> = if ioc_type == "sha256" {
        w.file(&value).map(|f| f.ran_on.clone()).unwrap_or_default()
    } else {
        Vec::new()
    };
    let page: Vec<&String> = aids
        .iter()
        .skip(offset as usize)
        .take(limit as usize)
        .collect();
    let next = offset as usize + page.len();
    let mut pagination = json!({"limit": limit});
    if next < aids.len() {
        pagination["offset"] = json!(format!("ran-on:{next:x}"));
    }
    Ok(ok(StatusCode::OK, json!(page), Some(pagination)))
}

fn decode_ran_on_offset(token: &str) -> Option<u64> {
    u64::from_str_radix(token.strip_prefix("ran-on:")?, 16).ok()
}

// ---- Hosts -----------------------------------------------------------------------------------

async fn device_action(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Reply {
    auth(&s, &headers)?;
    let q = Query::new(raw);
    let action = q.get("action_name").unwrap_or("").to_string();
    let new_status = match action.as_str() {
        "contain" => "contained",
        "lift_containment" => "normal",
        other => return Err(bad(format!("unsupported action_name `{other}`"))),
    };
    let req = json_body(&body)?;
    let ids = string_list(&req, "ids")?;
    if ids.is_empty() || ids.len() > 500 {
        return Err(bad(format!(
            "`ids` must hold 1 to 500 device ids, got {}",
            ids.len()
        )));
    }
    let mut w = s.world();
    w.containments.push(ContainmentRequest {
        action: action.clone(),
        device_ids: ids.clone(),
        at: OffsetDateTime::now_utc(),
    });
    let mut done = Vec::new();
    let mut errors = Vec::new();
    for id in &ids {
        if w.refused_entities.contains(id) {
            errors.push(json!({"code": 409, "id": id, "message": format!("device `{id}` cannot be contained")}));
            continue;
        }
        match w.hosts.iter_mut().find(|h| &h.device_id == id) {
            Some(h) => {
                h.status = new_status.to_string();
                done.push(json!({"id": id, "path": ""}));
            }
            None => errors.push(
                json!({"code": 404, "id": id, "message": format!("device `{id}` not found")}),
            ),
        }
    }
    for d in &done {
        let id = d["id"].as_str().unwrap_or_default().to_string();
        w.record(format!("host {id}: {action}"));
    }
    let status = if done.is_empty() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::ACCEPTED
    };
    Ok(json_response(
        status,
        json!({"meta": meta(None), "resources": done, "errors": errors}),
    ))
}

async fn devices_entities(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Reply {
    auth(&s, &headers)?;
    let req = json_body(&body)?;
    let ids = bounded_list(&req, "ids", 5000, StatusCode::BAD_REQUEST)?;
    let w = s.world();
    let found: Vec<Value> = ids
        .iter()
        .filter_map(|id| w.host(id))
        .map(|h| {
            json!({"device_id": h.device_id, "hostname": h.hostname, "platform_name": h.platform,
                   "status": h.status, "cid": w.cid, "agent_version": "7.10.0"})
        })
        .collect();
    Ok(ok(StatusCode::OK, json!(found), None))
}

async fn devices_query(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Reply {
    auth(&s, &headers)?;
    let q = Query::new(raw);
    let limit = limit_in(&q, 100, 5000)?;
    let offset = q.number("offset", 0)?;
    let filter = q.filter()?;
    let w = s.world();
    let ids: Vec<&str> = w
        .hosts
        .iter()
        .filter(|h| {
            filter.matches(&json!({"device_id": h.device_id, "hostname": h.hostname,
                                   "platform_name": h.platform, "status": h.status}))
        })
        .map(|h| h.device_id.as_str())
        .collect();
    let page: Vec<&&str> = ids
        .iter()
        .skip(offset as usize)
        .take(limit as usize)
        .collect();
    Ok(ok(
        StatusCode::OK,
        json!(page),
        Some(json!({"offset": offset as usize + page.len(), "limit": limit, "total": ids.len()})),
    ))
}

// ---- Cases -----------------------------------------------------------------------------------

fn case_json(c: &Case) -> Value {
    json!({"id": c.id, "name": c.name, "description": c.description, "severity": c.severity,
           "status": c.status, "assigned_to_user_uuid": c.assigned_to, "tags": c.tags,
           "evidence": {"alerts": c.alert_ids.iter().map(|id| json!({"id": id})).collect::<Vec<_>>()}})
}

async fn cases_query(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Reply {
    auth(&s, &headers)?;
    let q = Query::new(raw);
    let limit = limit_in(&q, 100, 10_000)?;
    let filter = q.filter()?;
    let w = s.world();
    let ids: Vec<Value> = w
        .cases
        .iter()
        .map(case_json)
        .filter(|d| filter.matches(d))
        .map(|d| d["id"].clone())
        .collect();
    let total = ids.len();
    let page: Vec<Value> = ids.into_iter().take(limit as usize).collect();
    Ok(ok(
        StatusCode::OK,
        json!(page),
        Some(json!({"offset": 0, "limit": limit, "total": total})),
    ))
}

async fn cases_create(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Reply {
    auth(&s, &headers)?;
    let req = json_body(&body)?;
    let name = req
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if name.trim().is_empty() {
        return Err(bad("`name` is required"));
    }
    // Case Management's limits on a new case.
    if name.chars().count() > 256 {
        return Err(bad("`name` may hold at most 256 characters"));
    }
    let description_chars = req
        .get("description")
        .and_then(Value::as_str)
        .map_or(0, |d| d.chars().count());
    if description_chars > 2048 {
        return Err(bad("`description` may hold at most 2048 characters"));
    }
    let severity = req
        .get("severity")
        .and_then(Value::as_i64)
        .ok_or_else(|| bad("`severity` must be an integer"))?;
    let alert_ids: Vec<String> = match req.pointer("/evidence/alerts") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| {
                i.get("id")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .ok_or_else(|| bad("every `evidence.alerts` item needs a string `id`"))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(bad("`evidence.alerts` must be a list")),
    };
    if alert_ids.len() > 100 {
        return Err(bad("`evidence.alerts` may name at most 100 alerts"));
    }
    let mut w = s.world();
    let n = w.fresh();
    let case = Case {
        id: format!("case-{n:08}"),
        name,
        description: req
            .get("description")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
        severity,
        status: req
            .get("status")
            .and_then(Value::as_str)
            .unwrap_or("new")
            .to_string(),
        assigned_to: req
            .get("assigned_to_user_uuid")
            .and_then(Value::as_str)
            .map(str::to_string),
        tags: string_list(&req, "tags")?,
        alert_ids,
    };
    w.record(format!("case {} opened: {}", case.id, case.name));
    let out = case_json(&case);
    w.cases.push(case);
    Ok(ok(StatusCode::OK, json!([out]), None))
}

async fn cases_entities(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Reply {
    auth(&s, &headers)?;
    let req = json_body(&body)?;
    let ids = string_list(&req, "ids")?;
    let w = s.world();
    let found: Vec<Value> = w
        .cases
        .iter()
        .filter(|c| ids.contains(&c.id))
        .map(case_json)
        .collect();
    Ok(ok(StatusCode::OK, json!(found), None))
}

// ---- On-demand scans -------------------------------------------------------------------------

async fn scan_create(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Reply {
    auth(&s, &headers)?;
    let req = json_body(&body)?;
    let hosts = string_list(&req, "hosts")?;
    let groups = string_list(&req, "host_groups")?;
    if hosts.is_empty() && groups.is_empty() {
        return Err(bad(
            "`hosts` or `host_groups` must name at least one target",
        ));
    }
    let cpu = req.get("cpu_priority").and_then(Value::as_i64);
    if cpu.is_some_and(|c| !(1..=5).contains(&c)) {
        return Err(bad("`cpu_priority` must be between 1 and 5"));
    }
    let file_paths = string_list(&req, "file_paths")?;
    // On-demand scanning takes drive-letter paths and globs, not the NT device paths alerts
    // carry.
    if let Some(p) = file_paths
        .iter()
        .find(|p| p.to_ascii_lowercase().starts_with("\\device\\"))
    {
        return Err(bad(format!(
            "invalid file path `{p}`: use a drive letter or a wildcard"
        )));
    }
    let mut w = s.world();
    let n = w.fresh();
    let scan = Scan {
        id: files::Rng::new(n ^ 0x5CA).hex(32),
        hosts: hosts.clone(),
        file_paths: file_paths.clone(),
        cpu_priority: cpu,
        quarantine: req.get("quarantine").and_then(Value::as_bool),
        body: req.clone(),
    };
    w.record(format!(
        "on-demand scan {} started on {} host(s)",
        scan.id,
        hosts.len()
    ));
    let out = json!({"id": scan.id, "status": "pending", "hosts": hosts, "file_paths": file_paths,
                     "targeted_host_count": scan.hosts.len(), "created_on": ts(OffsetDateTime::now_utc())});
    w.scans.push(scan);
    Ok(ok(StatusCode::CREATED, json!([out]), None))
}

async fn scans_query(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Reply {
    auth(&s, &headers)?;
    let q = Query::new(raw);
    let limit = limit_in(&q, 100, 500)?;
    let w = s.world();
    let ids: Vec<&str> = w
        .scans
        .iter()
        .take(limit as usize)
        .map(|s| s.id.as_str())
        .collect();
    Ok(ok(
        StatusCode::OK,
        json!(ids),
        Some(json!({"offset": 0, "limit": limit, "total": w.scans.len()})),
    ))
}

// ---- Legacy Detects --------------------------------------------------------------------------

async fn detects(method: axum::http::Method) -> Response {
    if method == axum::http::Method::PATCH {
        error(
            StatusCode::METHOD_NOT_ALLOWED,
            "Method Not Allowed: the Detects API was decommissioned; use the Alerts API",
        )
    } else {
        error(
            StatusCode::NOT_FOUND,
            "Not Found: the Detects API was decommissioned; use the Alerts API",
        )
    }
}
