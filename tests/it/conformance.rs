//! Every Falcon request the integration tests send, checked against CrowdStrike's API definition.
//!
//! `tests/fixtures/falcon-api-subset.json` holds the operations the connector uses, extracted
//! unchanged (responses left out) from the definition rebuilt from FalconPy 1.6.6 and gofalcon
//! (July 2026). A request fails the check when its operation is unknown or deprecated, it
//! carries a query parameter or body field the operation does not declare, misses a required
//! one, has a value of the wrong type or outside an enum, or exceeds a maximum: the
//! definition's own, and the maxima CrowdStrike documents only in prose (see [`documented`]).
//!
//! Every [`crate::support::Tenant`] runs this over its simulator's request log when it is
//! dropped, so every integration test that drives the connector against the simulator is a
//! conformance test too; so does every [`FakeFalcon`] (the wiremock servers of `falcon.rs`) and
//! the bare simulator `falcon.rs` drives the client against. Token calls are checked too: the
//! form fields, with the secret masked in the simulator's log. Not checked: the wiremock servers
//! of the unit tests in `src/falcon/auth.rs` (this checker and its fixture live with the
//! integration tests, out of the library's reach), and `sim.rs`, whose tests send the simulator
//! wrong requests on purpose.

use std::collections::HashMap;
use std::sync::OnceLock;

use falcon_vmray_connector::sim::Service;
use falcon_vmray_connector::sim::world::RequestRecord;
use serde_json::{Value, json};

/// Required fields the definition lists that the live API is known not to need, per definition.
/// Cases: the live `PUT /cases/entities/cases/v2` creates a case without a severity level
/// object, without event or lead evidence and without an assignee (FalconPy's `create_case`
/// sends none of them unless asked), so the connector leaves them out.
const STRICTER_THAN_LIVE: &[(&str, &[&str])] = &[
    (
        "operations.CreateCaseRequest",
        &["severity_info", "assigned_to_user_uuid"],
    ),
    ("operations.CreateCaseRequestEvidence", &["events", "leads"]),
];

pub fn spec() -> &'static Value {
    static SPEC: OnceLock<Value> = OnceLock::new();
    SPEC.get_or_init(|| {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/falcon-api-subset.json"
        );
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    })
}

/// What is wrong with the Falcon requests in `records`, one line per problem.
pub fn violations(records: &[RequestRecord]) -> Vec<String> {
    records
        .iter()
        .filter(|r| r.service == Service::Falcon)
        .flat_map(|r| check(spec(), &r.method, &r.path, r.body.as_deref()))
        .collect()
}

/// Checks one request (`path` with its query string) against `spec`.
pub fn check(spec: &Value, method: &str, path: &str, body: Option<&str>) -> Vec<String> {
    let (route, query) = path.split_once('?').unwrap_or((path, ""));
    let at = format!("{method} {route}");
    let Some(op) = spec["paths"]
        .get(route)
        .and_then(|p| p.get(method.to_ascii_lowercase()))
    else {
        return vec![format!("{at}: no such operation in the definition")];
    };
    let mut problems = Vec::new();
    if op["deprecated"] == json!(true) {
        problems.push(format!("{at}: the operation is deprecated"));
    }
    let parameters = op["parameters"].as_array().cloned().unwrap_or_default();
    let query: Vec<(String, String)> = reqwest::Url::parse(&format!("http://falcon/?{query}"))
        .map(|u| u.query_pairs().into_owned().collect())
        .unwrap_or_default();
    let mut query_map: HashMap<&str, Vec<&str>> = HashMap::new();
    for (k, v) in &query {
        query_map.entry(k).or_default().push(v);
    }
    for (name, values) in &query_map {
        match parameters
            .iter()
            .find(|p| p["in"] == "query" && p["name"] == *name)
        {
            None => problems.push(format!("{at}: unknown query parameter `{name}`")),
            Some(p) => {
                for value in values {
                    problems.extend(
                        check_query_value(p, value).map(|e| format!("{at}: query `{name}`: {e}")),
                    );
                }
            }
        }
    }
    for p in parameters
        .iter()
        .filter(|p| p["in"] == "query" && p["required"] == json!(true))
    {
        let name = p["name"].as_str().unwrap_or_default();
        if !query_map.contains_key(name) {
            problems.push(format!("{at}: required query parameter `{name}` missing"));
        }
    }
    let form: Vec<&Value> = parameters
        .iter()
        .filter(|p| p["in"] == "formData")
        .collect();
    if !form.is_empty() {
        check_form(&form, body.unwrap_or(""), &at, &mut problems);
        return problems;
    }
    let body: Option<Value> = body.and_then(|b| serde_json::from_str(b).ok());
    match (parameters.iter().find(|p| p["in"] == "body"), body.as_ref()) {
        (Some(p), Some(body)) => {
            check_schema(spec, &p["schema"], body, &at, "body", &mut problems);
        }
        (Some(p), None) if p["required"] == json!(true) => {
            problems.push(format!("{at}: the required JSON body is missing"));
        }
        (None, Some(_)) => problems.push(format!("{at}: a JSON body the operation does not take")),
        _ => {}
    }
    problems.extend(
        documented(route, &query_map, body.as_ref().unwrap_or(&Value::Null))
            .into_iter()
            .map(|e| format!("{at}: {e}")),
    );
    problems
}

/// A form-encoded body (the token call) against the operation's `formData` parameters.
fn check_form(parameters: &[&Value], body: &str, at: &str, problems: &mut Vec<String>) {
    let fields: Vec<(String, String)> = reqwest::Url::parse(&format!("http://falcon/?{body}"))
        .map(|u| u.query_pairs().into_owned().collect())
        .unwrap_or_default();
    for (name, value) in &fields {
        match parameters.iter().find(|p| p["name"] == name.as_str()) {
            None => problems.push(format!("{at}: unknown form field `{name}`")),
            Some(p) => problems.extend(
                check_query_value(p, value).map(|e| format!("{at}: form field `{name}`: {e}")),
            ),
        }
    }
    for p in parameters.iter().filter(|p| p["required"] == json!(true)) {
        let name = p["name"].as_str().unwrap_or_default();
        if !fields.iter().any(|(n, _)| n == name) {
            problems.push(format!("{at}: required form field `{name}` missing"));
        }
    }
}

fn check_query_value(p: &Value, value: &str) -> Option<String> {
    let number = match p["type"].as_str() {
        Some("integer") => match value.parse::<i64>() {
            Ok(n) => Some(n as f64),
            Err(_) => return Some(format!("`{value}` is not an integer")),
        },
        Some("boolean") if !matches!(value, "true" | "false") => {
            return Some(format!("`{value}` is not true or false"));
        }
        _ => None,
    };
    if let Some(values) = p["enum"].as_array()
        && !values.iter().any(|v| v == value)
    {
        return Some(format!("`{value}` is not one of the enum values"));
    }
    bounds(p, number, value.chars().count(), None)
}

/// The definition's `maximum`/`minimum`, `maxLength` and `maxItems`.
fn bounds(
    schema: &Value,
    number: Option<f64>,
    chars: usize,
    items: Option<usize>,
) -> Option<String> {
    if let (Some(n), Some(max)) = (number, schema["maximum"].as_f64())
        && n > max
    {
        return Some(format!("{n} is above the maximum {max}"));
    }
    if let (Some(n), Some(min)) = (number, schema["minimum"].as_f64())
        && n < min
    {
        return Some(format!("{n} is below the minimum {min}"));
    }
    if let Some(max) = schema["maxLength"].as_u64()
        && chars as u64 > max
    {
        return Some(format!("{chars} characters, more than {max}"));
    }
    if let (Some(n), Some(max)) = (items, schema["maxItems"].as_u64())
        && n as u64 > max
    {
        return Some(format!("{n} items, more than {max}"));
    }
    None
}

fn check_schema(
    spec: &Value,
    schema: &Value,
    value: &Value,
    at: &str,
    field: &str,
    problems: &mut Vec<String>,
) {
    if let Some(reference) = schema["$ref"].as_str() {
        let name = reference.rsplit('/').next().unwrap_or_default();
        let definition = &spec["definitions"][name];
        return check_object(spec, name, definition, value, at, field, problems);
    }
    let ok = match schema["type"].as_str() {
        Some("string") => value.is_string(),
        Some("integer") => value.is_i64() || value.is_u64(),
        Some("number") => value.is_number(),
        Some("boolean") => value.is_boolean(),
        Some("array") => value.is_array(),
        Some("object") | None => true,
        Some(_) => true,
    };
    if !ok {
        problems.push(format!(
            "{at}: `{field}` should be {}, is {value}",
            schema["type"]
        ));
        return;
    }
    if let Some(values) = schema["enum"].as_array()
        && !values.contains(value)
    {
        problems.push(format!(
            "{at}: `{field}` = {value} is not one of the enum values"
        ));
    }
    let chars = value.as_str().map_or(0, |s| s.chars().count());
    let items = value.as_array().map(Vec::len);
    if let Some(e) = bounds(schema, value.as_f64(), chars, items) {
        problems.push(format!("{at}: `{field}`: {e}"));
    }
    if let Some(items) = value.as_array() {
        for (i, item) in items.iter().enumerate() {
            check_schema(
                spec,
                &schema["items"],
                item,
                at,
                &format!("{field}[{i}]"),
                problems,
            );
        }
    }
}

fn check_object(
    spec: &Value,
    name: &str,
    definition: &Value,
    value: &Value,
    at: &str,
    field: &str,
    problems: &mut Vec<String>,
) {
    let Some(object) = value.as_object() else {
        problems.push(format!("{at}: `{field}` should be an object ({name})"));
        return;
    };
    let exempt: &[&str] = STRICTER_THAN_LIVE
        .iter()
        .find(|(n, _)| *n == name)
        .map_or(&[], |(_, fields)| fields);
    for required in definition["required"].as_array().into_iter().flatten() {
        let required = required.as_str().unwrap_or_default();
        if !object.contains_key(required) && !exempt.contains(&required) {
            problems.push(format!("{at}: `{field}.{required}` is required by {name}"));
        }
    }
    let properties = &definition["properties"];
    for (key, inner) in object {
        match properties.get(key) {
            None => problems.push(format!("{at}: `{field}.{key}` is not a field of {name}")),
            Some(schema) => {
                check_schema(spec, schema, inner, at, &format!("{field}.{key}"), problems)
            }
        }
    }
}

/// Limits and values CrowdStrike documents in prose or enforces without the definition saying
/// so (the wire reference lists the sources): each one a request can break.
fn documented(route: &str, query: &HashMap<&str, Vec<&str>>, body: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let count = |pointer: &str| {
        body.pointer(pointer)
            .and_then(Value::as_array)
            .map_or(0, Vec::len)
    };
    let text = |pointer: &str| body.pointer(pointer).and_then(Value::as_str).unwrap_or("");
    let limit = |name: &str| -> Option<u64> { query.get(name)?.first()?.parse().ok() };
    match route {
        "/alerts/combined/alerts/v1" => problems.extend(at_most(
            "limit",
            body["limit"].as_u64().unwrap_or(0) as usize,
            1000,
        )),
        "/alerts/entities/alerts/v2" => {
            problems.extend(at_most("composite_ids", count("/composite_ids"), 1000))
        }
        "/alerts/entities/alerts/v3" => {
            problems.extend(at_most("composite_ids", count("/composite_ids"), 1000));
            for p in body["action_parameters"].as_array().into_iter().flatten() {
                let name = p["name"].as_str().unwrap_or("");
                let value = p["value"].as_str().unwrap_or("");
                // "invalid action value specified. must be less than 1024"
                problems.extend(at_most("action value bytes", value.len(), 1023));
                let known = [
                    "update_status",
                    "append_comment",
                    "add_tag",
                    "remove_tag",
                    "remove_tags_by_prefix",
                    "assign_to_uuid",
                    "assign_to_user_id",
                    "assign_to_name",
                    "unassign",
                    "show_in_ui",
                    "new_behavior_processed",
                ];
                if !known.contains(&name) {
                    problems.push(format!("unknown alert action `{name}`"));
                }
                if name == "update_status"
                    && !["new", "in_progress", "reopened", "closed"].contains(&value)
                {
                    problems.push(format!("unknown alert status `{value}`"));
                }
            }
        }
        "/quarantine/entities/quarantined-files/v1"
            if !["release", "unrelease", "delete"].contains(&text("/action")) =>
        {
            problems.push(format!("unknown quarantine action `{}`", text("/action")));
        }
        "/iocs/queries/indicators/devices/v1" => {
            problems.extend(at_most("limit", limit("limit").unwrap_or(0) as usize, 100))
        }
        "/iocs/entities/indicators/v1" => {
            for i in body["indicators"].as_array().into_iter().flatten() {
                let kind = i["type"].as_str().unwrap_or("");
                let action = i["action"].as_str().unwrap_or("");
                let actions: &[&str] = match kind {
                    "sha256" | "md5" => {
                        &["prevent", "prevent_no_ui", "detect", "allow", "no_action"]
                    }
                    "domain" | "ipv4" | "ipv6" => &["detect", "no_action"],
                    other => {
                        problems.push(format!("unknown IOC type `{other}`"));
                        &[]
                    }
                };
                if !actions.contains(&action) {
                    problems.push(format!(
                        "IOC action `{action}` is not valid for type `{kind}`"
                    ));
                }
                let severity = i["severity"].as_str().unwrap_or("");
                if !["informational", "low", "medium", "high", "critical"].contains(&severity) {
                    problems.push(format!("unknown IOC severity `{severity}`"));
                }
            }
        }
        "/devices/entities/devices/v2" => problems.extend(at_most("ids", count("/ids"), 5000)),
        "/devices/queries/devices/v1" => {
            problems.extend(at_most("limit", limit("limit").unwrap_or(1) as usize, 5000))
        }
        "/devices/entities/devices-actions/v2" => {
            problems.extend(at_most("ids", count("/ids"), 500));
            let action = query
                .get("action_name")
                .and_then(|v| v.first())
                .copied()
                .unwrap_or("");
            if ![
                "contain",
                "lift_containment",
                "hide_host",
                "unhide_host",
                "detection_suppress",
                "detection_unsuppress",
            ]
            .contains(&action)
            {
                problems.push(format!("unknown host action `{action}`"));
            }
        }
        "/cases/entities/cases/v2" => {
            problems.extend(at_most(
                "name characters",
                text("/name").chars().count(),
                256,
            ));
            problems.extend(at_most(
                "description characters",
                text("/description").chars().count(),
                2048,
            ));
            problems.extend(at_most("evidence alerts", count("/evidence/alerts"), 100));
        }
        _ => {}
    }
    problems
}

fn at_most(what: &str, n: usize, max: usize) -> Option<String> {
    (n > max).then(|| format!("{what}: {n}, more than the documented {max}"))
}

/// A wiremock Falcon whose received requests are checked against the definition when the test
/// is done with it (unless the test failed already), as [`crate::support::Tenant`] does for the
/// simulator.
pub struct FakeFalcon(wiremock::MockServer);

impl FakeFalcon {
    pub async fn start() -> Self {
        FakeFalcon(wiremock::MockServer::start().await)
    }
}

impl std::ops::Deref for FakeFalcon {
    type Target = wiremock::MockServer;
    fn deref(&self) -> &wiremock::MockServer {
        &self.0
    }
}

impl Drop for FakeFalcon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        // Drop cannot await, and the test's runtime may be single-threaded: read the log on a
        // thread of its own (the mock server runs on its own runtime, so it answers).
        let requests = std::thread::scope(|s| {
            s.spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .build()
                    .unwrap()
                    .block_on(self.0.received_requests())
            })
            .join()
            .unwrap()
        })
        .expect("the fake Falcon records requests");
        let problems: Vec<String> = requests
            .iter()
            .flat_map(|r| {
                let path = match r.url.query() {
                    Some(q) => format!("{}?{q}", r.url.path()),
                    None => r.url.path().to_string(),
                };
                let body = (!r.body.is_empty()).then(|| String::from_utf8_lossy(&r.body));
                check(spec(), r.method.as_str(), &path, body.as_deref())
            })
            .collect();
        assert!(
            problems.is_empty(),
            "Falcon requests that break CrowdStrike's API definition:\n{}",
            problems.join("\n")
        );
    }
}

/// Asserts the simulator saw only requests the definition allows.
pub fn assert_conform(records: &[RequestRecord]) {
    let problems = violations(records);
    assert!(
        problems.is_empty(),
        "Falcon requests that break CrowdStrike's API definition:\n{}",
        problems.join("\n")
    );
}

#[tokio::test]
async fn every_action_the_connector_takes_conforms_to_the_definition() {
    use crate::support::Tenant;
    use crate::support::scenario;
    let mut scenario = scenario::single("malicious", true);
    scenario.files[0].path = r"\Device\HarddiskVolume3\Users\user\sample-1.exe".into();
    let tenant = Tenant::start(scenario).await;
    let config = tenant.config(
        "",
        "contain_host = true\ncreate_ioc = true\ncreate_case = true\non_demand_scan = true\nfind_another_host = true\nuser_uuid = \"user-1\"",
        "",
    );
    tenant.cycle(&config).await;
    let t = tenant.sim.snapshot();
    let mut operations: Vec<String> = t
        .requests
        .iter()
        .filter(|r| r.service == Service::Falcon)
        .map(|r| format!("{} {}", r.method, r.path.split('?').next().unwrap_or("")))
        .collect();
    operations.sort();
    operations.dedup();
    for expected in [
        "PATCH /alerts/entities/alerts/v3",
        "PATCH /quarantine/entities/quarantined-files/v1",
        "POST /iocs/entities/indicators/v1",
        "POST /devices/entities/devices-actions/v2",
        "PUT /cases/entities/cases/v2",
        "POST /ods/entities/scans/v1",
        "GET /iocs/queries/indicators/devices/v1",
    ] {
        assert!(
            operations.iter().any(|o| o == expected),
            "{expected} not sent: {operations:?}"
        );
    }
    // The token call's form is checked too, with the secret masked in the log.
    let token = t
        .requests
        .iter()
        .find(|r| r.path == "/oauth2/token")
        .and_then(|r| r.body.as_deref())
        .expect("the token call's form is logged");
    assert!(token.contains("client_secret=********"), "{token}");
    assert!(!token.contains(&tenant.sim.credentials().client_secret));
    assert_conform(&t.requests);
}

#[test]
fn requests_that_break_a_rule_are_caught() {
    let spec = spec();
    let ok = check(
        spec,
        "GET",
        "/iocs/queries/indicators/devices/v1?type=sha256&value=ab&limit=100&offset=x",
        None,
    );
    assert!(ok.is_empty(), "{ok:?}");
    let cases: &[(&str, &str, Option<Value>, &str)] = &[
        (
            "GET",
            "/alerts/queries/alerts/v1",
            None,
            "no such operation",
        ),
        (
            "GET",
            "/devices/queries/devices/v1?limit=1&page=2",
            None,
            "unknown query parameter `page`",
        ),
        (
            "GET",
            "/iocs/queries/indicators/devices/v1?value=ab",
            None,
            "required query parameter `type`",
        ),
        (
            "GET",
            "/iocs/queries/indicators/devices/v1?type=sha256&value=ab&limit=500",
            None,
            "limit: 500",
        ),
        (
            "GET",
            "/alerts/queries/alerts/v2?limit=20000",
            None,
            "above the maximum",
        ),
        ("GET", "/ods/queries/scans/v1?sort=nonsense", None, "enum"),
        (
            "POST",
            "/ods/entities/scans/v1",
            Some(json!({"hosts": ["a"], "file_paths": ["C:\\x"]})),
            "`body.cpu_priority` is required",
        ),
        (
            "PUT",
            "/cases/entities/cases/v2",
            Some(
                json!({"name": "n", "description": "d", "severity": 90, "status": "new", "evidence": {"alerts": []}, "colour": "red"}),
            ),
            "`body.colour` is not a field",
        ),
        (
            "PUT",
            "/cases/entities/cases/v2",
            Some(
                json!({"name": "n".repeat(257), "description": "d", "severity": 90, "status": "new", "evidence": {"alerts": []}}),
            ),
            "name characters",
        ),
        (
            "PUT",
            "/cases/entities/cases/v2",
            Some(
                json!({"name": "n", "description": "d", "severity": "high", "status": "new", "evidence": {"alerts": []}}),
            ),
            "`body.severity` should be",
        ),
        (
            "PATCH",
            "/alerts/entities/alerts/v3",
            Some(
                json!({"composite_ids": ["a"], "action_parameters": [{"name": "append_comment", "value": "x".repeat(1024)}]}),
            ),
            "action value bytes",
        ),
        (
            "PATCH",
            "/alerts/entities/alerts/v3",
            Some(
                json!({"composite_ids": ["a"], "action_parameters": [{"name": "update_status", "value": "true_positive"}]}),
            ),
            "unknown alert status",
        ),
        (
            "POST",
            "/iocs/entities/indicators/v1",
            Some(
                json!({"indicators": [{"type": "domain", "value": "e.example", "action": "prevent", "severity": "high", "applied_globally": true}]}),
            ),
            "not valid for type `domain`",
        ),
    ];
    for (method, path, body, expected) in cases {
        let body = body.as_ref().map(Value::to_string);
        let problems = check(spec, method, path, body.as_deref());
        assert!(
            problems.iter().any(|p| p.contains(expected)),
            "{method} {path}: expected `{expected}` in {problems:?}"
        );
    }
    // The token call's form fields: required, declared, and checked only as a form.
    let token = |form: &str| check(spec, "POST", "/oauth2/token", Some(form));
    assert!(
        token("client_id=a&client_secret=********&member_cid=m").is_empty(),
        "{:?}",
        token("client_id=a&client_secret=********&member_cid=m")
    );
    for (form, expected) in [
        ("client_id=a", "required form field `client_secret` missing"),
        ("client_secret=s", "required form field `client_id` missing"),
        ("", "required form field `client_id` missing"),
        (
            "client_id=a&client_secret=s&grant_type=client_credentials",
            "unknown form field `grant_type`",
        ),
    ] {
        let problems = token(form);
        assert!(
            problems.iter().any(|p| p.contains(expected)),
            "{form}: expected `{expected}` in {problems:?}"
        );
    }
    // Cases: the definition's extra required fields are known to be optional live.
    let case = json!({"name": "n", "description": "d", "severity": 90, "status": "new", "evidence": {"alerts": [{"id": "a"}]}});
    assert!(
        check(
            spec,
            "PUT",
            "/cases/entities/cases/v2",
            Some(&case.to_string())
        )
        .is_empty()
    );
    // A deprecated operation is refused.
    let mut deprecated = spec.clone();
    deprecated["paths"]["/devices/queries/devices/v1"]["get"]["deprecated"] = json!(true);
    let problems = check(
        &deprecated,
        "GET",
        "/devices/queries/devices/v1?limit=1",
        None,
    );
    assert!(
        problems.iter().any(|p| p.contains("deprecated")),
        "{problems:?}"
    );
}

/// The wiremock check is wired: a request the definition does not allow fails the test.
#[tokio::test]
#[should_panic(expected = "break CrowdStrike's API definition")]
async fn a_fake_falcon_fails_the_test_that_sent_it_a_request_the_definition_refuses() {
    let server = FakeFalcon::start().await;
    let _ = reqwest::Client::new()
        .post(format!("{}/oauth2/token", server.uri()))
        .form(&[("client_id", "a")])
        .send()
        .await
        .unwrap();
}
