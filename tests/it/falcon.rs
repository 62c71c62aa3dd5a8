//! The Falcon client against fake Falcon servers on 127.0.0.1 that answer in the wire format of
//! `shared/reference/falcon-api.md`: one token, pagination, chunking, retries, IOC and case
//! creation that never duplicates, and the sample download's ZIP handling.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use falcon_vmray_connector::config::{FalconBaseUrl, IocAction};
use falcon_vmray_connector::falcon::{
    AlertStatus, AlertUpdate, FalconClient, FalconError, FalconSettings, IocType, NewCase, NewIoc,
    Scope, ScopeStatus,
};
use falcon_vmray_connector::model::Sha256;
use secrecy::SecretString;
use serde_json::{Value, json};
use sha2::Digest;
use time::macros::datetime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

use crate::conformance::FakeFalcon;
use crate::support::CLIENT_SECRET;

const TOKEN: &str = "tok-Hv93LmQ2";

fn settings(base: &str) -> FalconSettings {
    FalconSettings {
        base_url: FalconBaseUrl::Fixed(base.to_string()),
        client_id: "test-client".into(),
        client_secret: SecretString::from(CLIENT_SECRET),
        member_cid: None,
        rate_limit_per_minute: 60_000,
        max_sample_bytes: 1 << 20,
        ca_bundles: Vec::new(),
        connect_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(2),
        max_retries: 3,
        max_retry_wait: Duration::from_secs(2),
        shutdown: Default::default(),
    }
}

fn client(server: &MockServer) -> FalconClient {
    FalconClient::new(settings(&server.uri())).unwrap()
}

/// A Falcon envelope with the headers every Falcon answer carries.
fn envelope(status: u16, resources: Value, pagination: Option<Value>) -> ResponseTemplate {
    let mut meta = json!({"query_time": 0.01, "trace_id": "trace-1", "powered_by": "fake"});
    if let Some(p) = pagination {
        meta["pagination"] = p;
    }
    ResponseTemplate::new(status)
        .insert_header("X-CS-TRACEID", "trace-1")
        .insert_header("X-RateLimit-Limit", "6000")
        .insert_header("X-RateLimit-Remaining", "5999")
        .set_body_json(json!({"meta": meta, "resources": resources, "errors": []}))
}

fn error(status: u16, message: &str) -> ResponseTemplate {
    ResponseTemplate::new(status)
        .insert_header("X-CS-TRACEID", "trace-err")
        .set_body_json(json!({"meta": {"trace_id": "trace-err"}, "errors": [{"code": status, "message": message}]}))
}

/// Token endpoint handing out `TOKEN-<n>` with the given lifetime; returns the request count.
async fn mount_token(server: &MockServer, expires_in: u64) -> Arc<AtomicUsize> {
    let count = Arc::new(AtomicUsize::new(0));
    let counter = count.clone();
    Mock::given(method("POST"))
        .and(path("/oauth2/token"))
        .respond_with(move |_: &Request| {
            let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
            ResponseTemplate::new(201)
                .insert_header("X-Cs-Region", "us-1")
                .insert_header("X-CS-TRACEID", "trace-token")
                .set_body_json(json!({"access_token": format!("{TOKEN}-{n}"), "token_type": "bearer", "expires_in": expires_in}))
        })
        .mount(server)
        .await;
    count
}

fn bearer(req: &Request) -> String {
    req.headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

fn alert(i: usize) -> Value {
    json!({
        "composite_id": format!("cid:ind:{i}"), "product": "epp", "sha256": format!("{i:064x}"),
        "filename": "x.exe", "filepath": "C:\\x.exe", "status": "new", "tags": [],
        "device": {"device_id": format!("aid{i}"), "hostname": "h", "platform_name": "Windows"},
        "created_timestamp": "2025-01-01T00:00:00.5Z", "updated_timestamp": "2025-01-01T00:00:01Z",
        "quarantined_files": null
    })
}

fn sha(data: &[u8]) -> Sha256 {
    Sha256::from_digest(&sha2::Sha256::digest(data))
}

#[tokio::test]
async fn a_whole_cycle_of_concurrent_calls_uses_one_token() {
    let server = FakeFalcon::start().await;
    let tokens = mount_token(&server, 1799).await;
    Mock::given(path("/alerts/combined/alerts/v1"))
        .respond_with(envelope(
            200,
            json!([alert(1)]),
            Some(json!({"limit": 1000, "total": 1})),
        ))
        .mount(&server)
        .await;
    Mock::given(path("/alerts/entities/alerts/v3"))
        .respond_with(envelope(200, Value::Null, None))
        .mount(&server)
        .await;
    Mock::given(path("/quarantine/queries/quarantined-files/v1"))
        .respond_with(envelope(
            200,
            json!([]),
            Some(json!({"offset": 0, "limit": 5000, "total": 0})),
        ))
        .mount(&server)
        .await;
    Mock::given(path("/devices/entities/devices/v2"))
        .respond_with(envelope(200, json!([{"device_id": "aid1", "hostname": "h", "platform_name": "Windows", "status": "normal"}]), None))
        .mount(&server)
        .await;
    let mut settings = settings(&server.uri());
    settings.member_cid = Some("child-cid".into());
    let client = FalconClient::new(settings).unwrap();

    let mut tasks = Vec::new();
    for i in 0..8 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let since = datetime!(2025-01-01 00:00 UTC);
            client.alerts_since(since).await.unwrap();
            client.quarantined_files_since(since).await.unwrap();
            client.hosts(&[format!("aid{i}")]).await.unwrap();
            let update = AlertUpdate {
                comment: Some("VMRay: malicious".into()),
                status: Some(AlertStatus::InProgress),
                add_tags: vec![],
            };
            client
                .update_alerts(&["cid:ind:1".into()], &update)
                .await
                .unwrap();
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(tokens.load(Ordering::SeqCst), 1);
    let requests = server.received_requests().await.unwrap();
    let token_form = String::from_utf8(
        requests
            .iter()
            .find(|r| r.url.path() == "/oauth2/token")
            .unwrap()
            .body
            .clone(),
    )
    .unwrap();
    assert!(token_form.contains("member_cid=child-cid"), "{token_form}");
    assert!(token_form.contains("client_id=test-client"));
    for r in requests.iter().filter(|r| r.url.path() != "/oauth2/token") {
        assert_eq!(bearer(r), format!("Bearer {TOKEN}-1"));
    }
}

#[tokio::test]
async fn a_token_about_to_expire_is_renewed() {
    let server = FakeFalcon::start().await;
    // 60 s left is inside the renewal margin: every call needs a fresh token.
    let tokens = mount_token(&server, 60).await;
    Mock::given(path("/devices/entities/devices/v2"))
        .respond_with(envelope(200, json!([]), None))
        .mount(&server)
        .await;
    let client = client(&server);
    client.hosts(&["a".into()]).await.unwrap();
    client.hosts(&["b".into()]).await.unwrap();
    assert_eq!(tokens.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_401_gets_exactly_one_refresh() {
    let server = FakeFalcon::start().await;
    let tokens = mount_token(&server, 1799).await;
    // The first token is revoked server-side; the second works.
    Mock::given(path("/devices/entities/devices/v2"))
        .respond_with(|req: &Request| {
            if bearer(req).ends_with("-1") {
                error(401, "access denied, invalid bearer token")
            } else {
                envelope(200, json!([{"device_id": "aid1"}]), None)
            }
        })
        .mount(&server)
        .await;
    Mock::given(path("/ods/entities/scans/v1"))
        .respond_with(error(401, "access denied, invalid bearer token"))
        .mount(&server)
        .await;
    let client = client(&server);
    assert_eq!(client.hosts(&["aid1".into()]).await.unwrap().len(), 1);
    assert_eq!(tokens.load(Ordering::SeqCst), 2);

    // A token Falcon never accepts: one refresh, then Unauthorized (no loop).
    let err = client
        .start_scan(&["aid1".into()], &["C:\\x.exe".into()])
        .await
        .unwrap_err();
    assert!(matches!(err, FalconError::Unauthorized), "{err}");
    assert_eq!(tokens.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn alerts_page_through_2500_with_the_after_cursor() {
    let server = FakeFalcon::start().await;
    mount_token(&server, 1799).await;
    let all: Vec<Value> = (0..2500).map(alert).collect();
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let seen = bodies.clone();
    Mock::given(method("POST"))
        .and(path("/alerts/combined/alerts/v1"))
        .respond_with(move |req: &Request| {
            let body: Value = req.body_json().unwrap();
            seen.lock().unwrap().push(body.clone());
            let limit = body["limit"].as_u64().unwrap() as usize;
            if !(1..=1000).contains(&limit) {
                return error(400, "limit out of range");
            }
            let start: usize = body["after"]
                .as_str()
                .map_or(0, |a| a.trim_start_matches("cur-").parse().unwrap());
            let end = (start + limit).min(all.len());
            let mut pagination = json!({"limit": limit, "total": all.len()});
            if end < all.len() {
                pagination["after"] = json!(format!("cur-{end}"));
            }
            envelope(200, json!(all[start..end]), Some(pagination))
        })
        .mount(&server)
        .await;
    let evidence = client(&server)
        .alerts_since(datetime!(2025-01-01 02:00 +02:00))
        .await
        .unwrap();
    assert_eq!(evidence.len(), 2500);
    assert_eq!(evidence[2499].composite_id, "cid:ind:2499");
    let bodies = bodies.lock().unwrap();
    assert_eq!(bodies.len(), 3);
    assert_eq!(
        bodies[0]["filter"],
        "product:'epp'+created_timestamp:>='2025-01-01T00:00:00Z'"
    );
    assert_eq!(bodies[0]["sort"], "created_timestamp|asc");
    assert!(bodies[0].get("after").is_none());
    assert_eq!(bodies[2]["after"], "cur-2000");
}

#[tokio::test]
async fn alert_ids_are_fetched_and_updated_in_chunks_of_1000() {
    let server = FakeFalcon::start().await;
    mount_token(&server, 1799).await;
    Mock::given(method("POST"))
        .and(path("/alerts/entities/alerts/v2"))
        .respond_with(|req: &Request| {
            let body: Value = req.body_json().unwrap();
            let ids = body["composite_ids"].as_array().unwrap();
            if ids.len() > 1000 {
                return error(400, "too many ids");
            }
            let alerts: Vec<Value> = ids
                .iter()
                .map(|id| {
                    let i: usize = id
                        .as_str()
                        .unwrap()
                        .rsplit(':')
                        .next()
                        .unwrap()
                        .parse()
                        .unwrap();
                    alert(i)
                })
                .collect();
            envelope(200, json!(alerts), None)
        })
        .mount(&server)
        .await;
    Mock::given(method("PATCH"))
        .and(path("/alerts/entities/alerts/v3"))
        .respond_with(|req: &Request| {
            let body: Value = req.body_json().unwrap();
            if body["composite_ids"].as_array().unwrap().len() > 1000 {
                error(413, "too many ids")
            } else {
                envelope(200, Value::Null, None)
            }
        })
        .mount(&server)
        .await;
    let ids: Vec<String> = (0..1500).map(|i| format!("cid:ind:{i}")).collect();
    let client = client(&server);
    assert_eq!(client.alerts_by_id(&ids).await.unwrap().len(), 1500);
    let update = AlertUpdate {
        comment: Some("x".repeat(1500)),
        status: Some(AlertStatus::Closed),
        add_tags: vec!["true_positive".into()],
    };
    client.update_alerts(&ids, &update).await.unwrap();

    let requests = server.received_requests().await.unwrap();
    let sizes = |p: &str| -> Vec<usize> {
        requests
            .iter()
            .filter(|r| r.url.path() == p)
            .map(|r| {
                r.body_json::<Value>().unwrap()["composite_ids"]
                    .as_array()
                    .unwrap()
                    .len()
            })
            .collect()
    };
    assert_eq!(sizes("/alerts/entities/alerts/v2"), vec![1000, 500]);
    assert_eq!(sizes("/alerts/entities/alerts/v3"), vec![1000, 500]);
    let patch: Value = requests
        .iter()
        .find(|r| r.url.path() == "/alerts/entities/alerts/v3")
        .unwrap()
        .body_json()
        .unwrap();
    assert_eq!(
        patch["action_parameters"],
        json!([
            {"name": "append_comment", "value": "x".repeat(1023)},
            {"name": "append_comment", "value": "x".repeat(477)},
            {"name": "update_status", "value": "closed"},
            {"name": "add_tag", "value": "true_positive"}
        ])
    );
}

#[tokio::test]
async fn a_12000_result_quarantine_query_reaches_the_end() {
    let server = FakeFalcon::start().await;
    mount_token(&server, 1799).await;
    let total = 12_000usize;
    let id = |i: usize| format!("{:032x}_{:064x}", i % 7, i);
    Mock::given(method("GET"))
        .and(path("/quarantine/queries/quarantined-files/v1"))
        .respond_with(move |req: &Request| {
            let q: HashMap<String, String> = req.url.query_pairs().into_owned().collect();
            let offset: usize = q["offset"].parse().unwrap();
            let limit: usize = q["limit"].parse().unwrap();
            assert!(
                q["filter"].starts_with("date_created:>='"),
                "{}",
                q["filter"]
            );
            let end = (offset + limit).min(total);
            let ids: Vec<String> = (offset..end).map(id).collect();
            envelope(
                200,
                json!(ids),
                Some(json!({"offset": offset, "limit": limit, "total": total})),
            )
        })
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/quarantine/entities/quarantined-files/GET/v1"))
        .respond_with(|req: &Request| {
            let body: Value = req.body_json().unwrap();
            let ids = body["ids"].as_array().unwrap();
            if ids.len() > 500 {
                return error(400, "too many ids");
            }
            let records: Vec<Value> = ids
                .iter()
                .map(|id| {
                    let id = id.as_str().unwrap();
                    let (aid, sha) = id.split_once('_').unwrap();
                    json!({"id": id, "aid": aid, "sha256": sha, "hostname": "h", "state": "quarantined",
                           "date_created": "2025-01-01T00:00:00Z", "date_updated": "2025-01-01T00:00:00.25Z",
                           "paths": [{"path": "C:\\q.exe", "filename": "q.exe", "state": "quarantined"}]})
                })
                .collect();
            envelope(200, json!(records), None)
        })
        .mount(&server)
        .await;
    let records = client(&server)
        .quarantined_files_since(datetime!(2025-01-01 00:00 UTC))
        .await
        .unwrap();
    assert_eq!(records.len(), total);
    let queries = server
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.url.path() == "/quarantine/queries/quarantined-files/v1")
        .count();
    assert_eq!(queries, 3);
}

#[tokio::test]
async fn a_429_waits_as_long_as_retry_after_says() {
    let server = FakeFalcon::start().await;
    mount_token(&server, 1799).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    Mock::given(path("/devices/entities/devices/v2"))
        .respond_with(move |_: &Request| {
            if counter.fetch_add(1, Ordering::SeqCst) == 0 {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap()
                    .as_secs_f64();
                let at = (now + 1.0).ceil() as u64;
                error(429, "API rate limit exceeded")
                    .insert_header("X-RateLimit-RetryAfter", at.to_string().as_str())
            } else {
                envelope(200, json!([{"device_id": "aid1"}]), None)
            }
        })
        .mount(&server)
        .await;
    let client = client(&server);
    let started = Instant::now();
    assert_eq!(client.hosts(&["aid1".into()]).await.unwrap().len(), 1);
    let waited = started.elapsed();
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert!(
        waited >= Duration::from_millis(950),
        "waited only {waited:?}"
    );
    assert!(waited < Duration::from_millis(2500), "waited {waited:?}");
}

#[tokio::test]
async fn a_503_is_retried_and_a_400_is_not() {
    let server = FakeFalcon::start().await;
    mount_token(&server, 1799).await;
    Mock::given(path("/devices/entities/devices/v2"))
        .respond_with(error(503, "unavailable"))
        .up_to_n_times(2)
        .mount(&server)
        .await;
    Mock::given(path("/devices/entities/devices/v2"))
        .respond_with(envelope(200, json!([{"device_id": "aid1"}]), None))
        .mount(&server)
        .await;
    Mock::given(path("/cases/queries/cases/v1"))
        .respond_with(error(400, "invalid filter"))
        .mount(&server)
        .await;
    let client = client(&server);
    assert_eq!(client.hosts(&["aid1".into()]).await.unwrap().len(), 1);
    let case = NewCase {
        name: "n".into(),
        description: "d".into(),
        severity: 90,
        alert_ids: vec![],
        assigned_to_user_uuid: None,
        tags: vec![],
    };
    let err = client.create_case(&case).await.unwrap_err();
    assert!(
        matches!(&err, FalconError::Api { status: 400, .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("invalid filter") && err.to_string().contains("trace-err"),
        "{err}"
    );
    let requests = server.received_requests().await.unwrap();
    let count = |p: &str| requests.iter().filter(|r| r.url.path() == p).count();
    assert_eq!(count("/devices/entities/devices/v2"), 3);
    assert_eq!(count("/cases/queries/cases/v1"), 1);
}

#[tokio::test]
async fn a_garbled_token_answer_is_retried() {
    let server = FakeFalcon::start().await;
    Mock::given(path("/oauth2/token"))
        .respond_with(ResponseTemplate::new(201).set_body_string(r#"{"access_token": "tok"#))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    let tokens = mount_token(&server, 1799).await;
    Mock::given(path("/devices/entities/devices/v2"))
        .respond_with(envelope(200, json!([{"device_id": "aid1"}]), None))
        .mount(&server)
        .await;
    let hosts = client(&server).hosts(&["aid1".into()]).await.unwrap();
    assert_eq!(hosts.len(), 1);
    assert_eq!(tokens.load(Ordering::SeqCst), 1, "the second token try");
}

#[tokio::test]
async fn a_failing_ioc_batch_fails_only_its_own_iocs() {
    let server = FakeFalcon::start().await;
    mount_token(&server, 1799).await;
    let store = mount_ioc_store(&server, Duration::ZERO, &[]).await;
    // The first batch's create is refused outright; the second goes through.
    Mock::given(method("POST"))
        .and(path("/iocs/entities/indicators/v1"))
        .respond_with(error(403, "access denied"))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    let iocs: Vec<NewIoc> = (0..150)
        .map(|i| new_ioc(IocType::Domain, &format!("c2-{i}.example")))
        .collect();
    let outcome = client(&server).create_iocs(&iocs, "c").await;
    assert_eq!(outcome.failed.len(), 100, "the first batch");
    assert_eq!(outcome.created.len(), 50, "the second batch");
    assert!(
        outcome.failed[0].error.contains("403"),
        "{:?}",
        outcome.failed[0]
    );
    assert_eq!(store.lock().unwrap().len(), 50);
}

fn new_ioc(kind: IocType, value: &str) -> NewIoc {
    NewIoc {
        kind,
        value: value.into(),
        action: IocAction::Detect,
        severity: "high".into(),
        description: "https://vmray.example/report/1".into(),
        expiration: None,
        filename: None,
    }
}

/// A fake IOC store: the combined search sees what the create endpoint stored.
async fn mount_ioc_store(
    server: &MockServer,
    create_delay: Duration,
    existing: &[(&str, &str)],
) -> Arc<Mutex<Vec<(String, String)>>> {
    let store: Arc<Mutex<Vec<(String, String)>>> = Arc::new(Mutex::new(
        existing
            .iter()
            .map(|(t, v)| (t.to_string(), v.to_string()))
            .collect(),
    ));
    let search = store.clone();
    Mock::given(method("GET"))
        .and(path("/iocs/combined/indicator/v1"))
        .respond_with(move |_: &Request| {
            let found: Vec<Value> = search
                .lock()
                .unwrap()
                .iter()
                .map(|(t, v)| json!({"id": "x", "type": t, "value": v}))
                .collect();
            envelope(
                200,
                json!(found),
                Some(json!({"offset": 0, "limit": 100, "total": found.len()})),
            )
        })
        .mount(server)
        .await;
    let create = store.clone();
    Mock::given(method("POST"))
        .and(path("/iocs/entities/indicators/v1"))
        .respond_with(move |req: &Request| {
            let body: Value = req.body_json().unwrap();
            let mut store = create.lock().unwrap();
            let (mut created, mut errors) = (Vec::new(), Vec::new());
            for i in body["indicators"].as_array().unwrap() {
                let key = (i["type"].as_str().unwrap().to_string(), i["value"].as_str().unwrap().to_string());
                if store.contains(&key) {
                    errors.push(json!({"code": 400, "message": format!("Duplicate type: '{}' and value: '{}' combination.", key.0, key.1)}));
                } else {
                    store.push(key);
                    created.push(i.clone());
                }
            }
            let status = if errors.is_empty() { 201 } else { 400 };
            ResponseTemplate::new(status)
                .set_body_json(json!({"meta": {}, "resources": created, "errors": errors}))
                .set_delay(create_delay)
        })
        .mount(server)
        .await;
    store
}

#[tokio::test]
async fn an_ioc_create_that_timed_out_is_not_created_twice() {
    let server = FakeFalcon::start().await;
    mount_token(&server, 1799).await;
    // Falcon stores the IOCs, but answers after the client has given up.
    let store = mount_ioc_store(&server, Duration::from_millis(800), &[]).await;
    let mut settings = settings(&server.uri());
    settings.request_timeout = Duration::from_millis(300);
    let client = FalconClient::new(settings).unwrap();
    let iocs = [
        new_ioc(IocType::Domain, "evil.example"),
        new_ioc(IocType::Ipv4, "192.0.2.1"),
    ];
    let outcome = client.create_iocs(&iocs, "VMRay verdict").await;
    assert_eq!(
        outcome.created,
        vec!["evil.example".to_string(), "192.0.2.1".to_string()]
    );
    let requests = server.received_requests().await.unwrap();
    let count = |p: &str| requests.iter().filter(|r| r.url.path() == p).count();
    assert_eq!(count("/iocs/entities/indicators/v1"), 1);
    // Checked before the create, and again after it timed out.
    assert_eq!(count("/iocs/combined/indicator/v1"), 2);
    assert_eq!(store.lock().unwrap().len(), 2);
}

/// A fake IOC store that, like Falcon, refuses a whole create request for one invalid value
/// (one with a space), or every request for `common` (a reason that is no value's); a request
/// for exactly the values `slow` lands but answers after the client gave up. Returns the store
/// and the values of every create request.
#[allow(clippy::type_complexity)]
async fn mount_refusing_ioc_store(
    server: &MockServer,
    slow: &'static [&'static str],
    common: Option<&'static str>,
) -> (Arc<Mutex<Vec<String>>>, Arc<Mutex<Vec<Vec<String>>>>) {
    let store: Arc<Mutex<Vec<String>>> = Arc::default();
    let posts: Arc<Mutex<Vec<Vec<String>>>> = Arc::default();
    let search = store.clone();
    Mock::given(method("GET"))
        .and(path("/iocs/combined/indicator/v1"))
        .respond_with(move |_: &Request| {
            let found: Vec<Value> = search
                .lock()
                .unwrap()
                .iter()
                .map(|v| json!({"id": "x", "type": "domain", "value": v}))
                .collect();
            envelope(200, json!(found), None)
        })
        .mount(server)
        .await;
    let (create, seen) = (store.clone(), posts.clone());
    Mock::given(method("POST"))
        .and(path("/iocs/entities/indicators/v1"))
        .respond_with(move |req: &Request| {
            let body: Value = req.body_json().unwrap();
            let values: Vec<String> = body["indicators"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["value"].as_str().unwrap().to_string())
                .collect();
            seen.lock().unwrap().push(values.clone());
            let mut errors: Vec<Value> = values
                .iter()
                .filter(|v| v.contains(' '))
                .map(|v| json!({"code": 400, "message": format!("`{v}` is not a valid domain value")}))
                .collect();
            if let Some(reason) = common {
                errors = vec![json!({"code": 400, "message": reason})];
            }
            if !errors.is_empty() {
                return ResponseTemplate::new(400)
                    .set_body_json(json!({"meta": {}, "resources": null, "errors": errors}));
            }
            create.lock().unwrap().extend(values.iter().cloned());
            let created: Vec<Value> = values
                .iter()
                .map(|v| json!({"type": "domain", "value": v}))
                .collect();
            let delay = if values == slow {
                Duration::from_millis(800)
            } else {
                Duration::ZERO
            };
            ResponseTemplate::new(201)
                .set_body_json(json!({"meta": {}, "resources": created, "errors": []}))
                .set_delay(delay)
        })
        .mount(server)
        .await;
    (store, posts)
}

#[tokio::test]
async fn a_timeout_while_splitting_a_refused_create_counts_each_value_once() {
    let server = FakeFalcon::start().await;
    mount_token(&server, 1799).await;
    // The first half holds a refused value; splitting it, the quarter [c, d] lands but answers
    // after the refused value failed and after the client gave up waiting.
    let (store, posts) = mount_refusing_ioc_store(&server, &["c.example", "d.example"], None).await;
    let mut settings = settings(&server.uri());
    settings.request_timeout = Duration::from_millis(300);
    let client = FalconClient::new(settings).unwrap();
    let iocs: Vec<NewIoc> = [
        "a.example",
        "not valid",
        "c.example",
        "d.example",
        "e.example",
        "f.example",
        "g.example",
        "h.example",
    ]
    .iter()
    .map(|v| new_ioc(IocType::Domain, v))
    .collect();
    let outcome = client.create_iocs(&iocs, "c").await;
    let mut created = outcome.created.clone();
    created.sort();
    assert_eq!(
        created,
        [
            "a.example",
            "c.example",
            "d.example",
            "e.example",
            "f.example",
            "g.example",
            "h.example"
        ],
        "{outcome:?}"
    );
    assert_eq!(outcome.failed.len(), 1, "{outcome:?}");
    assert_eq!(outcome.failed[0].value, "not valid");
    assert!(outcome.already_existed.is_empty(), "{outcome:?}");
    let posts = posts.lock().unwrap().clone();
    let with_refused = posts
        .iter()
        .filter(|p| p.iter().any(|v| v == "not valid"))
        .count();
    // The whole, its half, its quarter and the value alone: never again after it failed.
    assert_eq!(with_refused, 4, "{posts:?}");
    // The slow quarter is checked, not sent again.
    assert_eq!(
        posts
            .iter()
            .filter(|p| p.iter().any(|v| v == "c.example"))
            .count(),
        3,
        "{posts:?}"
    );
    assert_eq!(store.lock().unwrap().len(), 7);
}

#[tokio::test]
async fn a_refusal_common_to_every_value_fails_the_batch_after_three_requests() {
    let server = FakeFalcon::start().await;
    mount_token(&server, 1799).await;
    let reason = "comment must be at most 4096 characters";
    let (store, posts) = mount_refusing_ioc_store(&server, &[], Some(reason)).await;
    let iocs: Vec<NewIoc> = (0..100)
        .map(|i| new_ioc(IocType::Domain, &format!("c2-{i}.example")))
        .collect();
    let outcome = client(&server).create_iocs(&iocs, "c").await;
    assert!(outcome.created.is_empty(), "{outcome:?}");
    assert_eq!(outcome.failed.len(), 100);
    let mut failed: Vec<&str> = outcome.failed.iter().map(|f| f.value.as_str()).collect();
    failed.sort();
    failed.dedup();
    assert_eq!(failed.len(), 100, "each value fails once");
    assert!(
        outcome.failed[0].error.contains(reason)
            && outcome.failed[0]
                .error
                .contains("no single value is to blame"),
        "{}",
        outcome.failed[0].error
    );
    // The whole and its two halves, not up to 199 requests.
    assert_eq!(posts.lock().unwrap().len(), 3);
    assert!(store.lock().unwrap().is_empty());
}

#[tokio::test]
async fn refused_values_in_both_halves_are_still_isolated() {
    let server = FakeFalcon::start().await;
    mount_token(&server, 1799).await;
    let (store, _) = mount_refusing_ioc_store(&server, &[], None).await;
    let mut iocs: Vec<NewIoc> = (0..6)
        .map(|i| new_ioc(IocType::Domain, &format!("c2-{i}.example")))
        .collect();
    iocs.insert(1, new_ioc(IocType::Domain, "bad one"));
    iocs.insert(6, new_ioc(IocType::Domain, "bad two"));
    let outcome = client(&server).create_iocs(&iocs, "c").await;
    assert_eq!(outcome.created.len(), 6, "{outcome:?}");
    let mut failed: Vec<&str> = outcome.failed.iter().map(|f| f.value.as_str()).collect();
    failed.sort();
    assert_eq!(failed, ["bad one", "bad two"]);
    assert!(
        outcome.failed[0]
            .error
            .contains("is not a valid domain value")
    );
    assert_eq!(store.lock().unwrap().len(), 6);
}

#[tokio::test]
async fn existing_and_duplicate_iocs_are_reported_not_errors() {
    let server = FakeFalcon::start().await;
    mount_token(&server, 1799).await;
    let hash = "a".repeat(64);
    mount_ioc_store(&server, Duration::ZERO, &[("sha256", hash.as_str())]).await;
    let client = client(&server);
    let mut with_file = new_ioc(IocType::Sha256, &hash);
    with_file.filename = Some("x.exe".into());
    let iocs = [
        with_file,
        new_ioc(IocType::Domain, "evil.example"),
        new_ioc(IocType::Domain, "evil.example"),
    ];
    let outcome = client.create_iocs(&iocs, "c").await;
    assert_eq!(outcome.already_existed, vec![hash.clone()]);
    assert_eq!(outcome.created, vec!["evil.example".to_string()]);

    // Created by someone else between the check and the create: a duplicate, not an error.
    let requests = server.received_requests().await.unwrap();
    let create: Value = requests
        .iter()
        .find(|r| r.url.path() == "/iocs/entities/indicators/v1")
        .unwrap()
        .body_json()
        .unwrap();
    assert_eq!(create["comment"], "c");
    assert_eq!(create["indicators"].as_array().unwrap().len(), 1);
    assert_eq!(create["indicators"][0]["source"], "VMRay");
    assert_eq!(create["indicators"][0]["action"], "detect");
}

#[tokio::test]
async fn a_duplicate_answer_counts_as_already_existing() {
    let server = FakeFalcon::start().await;
    mount_token(&server, 1799).await;
    Mock::given(method("GET"))
        .and(path("/iocs/combined/indicator/v1"))
        .respond_with(envelope(200, Value::Null, None))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/iocs/entities/indicators/v1"))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({
            "meta": {}, "resources": [{"type": "ipv4", "value": "192.0.2.7"}],
            "errors": [{"code": 400, "message": "Duplicate type: 'domain' and value: 'evil.example' combination."}]
        })))
        .mount(&server)
        .await;
    let iocs = [
        new_ioc(IocType::Domain, "evil.example"),
        new_ioc(IocType::Ipv4, "192.0.2.7"),
    ];
    let outcome = client(&server).create_iocs(&iocs, "c").await;
    assert_eq!(outcome.already_existed, vec!["evil.example".to_string()]);
    assert_eq!(outcome.created, vec!["192.0.2.7".to_string()]);
}

#[tokio::test]
async fn ioc_search_escapes_quotes_and_backslashes() {
    let server = FakeFalcon::start().await;
    mount_token(&server, 1799).await;
    mount_ioc_store(&server, Duration::ZERO, &[(r"domain", r"it's\here")]).await;
    let outcome = client(&server)
        .create_iocs(&[new_ioc(IocType::Domain, r"it's\here")], "c")
        .await;
    assert_eq!(outcome.already_existed.len(), 1);
    let requests = server.received_requests().await.unwrap();
    let search = requests
        .iter()
        .find(|r| r.url.path() == "/iocs/combined/indicator/v1")
        .unwrap();
    let filter = search
        .url
        .query_pairs()
        .find(|(k, _)| k == "filter")
        .unwrap()
        .1
        .into_owned();
    assert_eq!(filter, r"value:['it\'s\\here']");
}

#[tokio::test]
async fn a_case_is_found_by_name_before_it_is_created() {
    let server = FakeFalcon::start().await;
    mount_token(&server, 1799).await;
    let created = Arc::new(AtomicUsize::new(0));
    let seen = created.clone();
    Mock::given(method("GET"))
        .and(path("/cases/queries/cases/v1"))
        .respond_with(move |_: &Request| {
            let ids = if seen.load(Ordering::SeqCst) > 0 {
                json!(["case-1"])
            } else {
                json!([])
            };
            envelope(
                200,
                ids,
                Some(json!({"offset": 0, "limit": 100, "total": 0})),
            )
        })
        .mount(&server)
        .await;
    let counter = created.clone();
    Mock::given(method("PUT"))
        .and(path("/cases/entities/cases/v2"))
        .respond_with(move |_: &Request| {
            counter.fetch_add(1, Ordering::SeqCst);
            // Stored, but the answer is a gateway error.
            error(502, "bad gateway")
        })
        .mount(&server)
        .await;
    let case = NewCase {
        name: "VMRay malicious 'x' \\ y".into(),
        description: "d".into(),
        severity: 90,
        alert_ids: vec!["cid:ind:1".into()],
        assigned_to_user_uuid: Some("user-1".into()),
        tags: vec!["VMRAY".into()],
    };
    let client = client(&server);
    assert_eq!(client.create_case(&case).await.unwrap(), "case-1");
    assert_eq!(created.load(Ordering::SeqCst), 1);
    let requests = server.received_requests().await.unwrap();
    let put: Value = requests
        .iter()
        .find(|r| r.method.as_str() == "PUT")
        .unwrap()
        .body_json()
        .unwrap();
    assert_eq!(put["evidence"], json!({"alerts": [{"id": "cid:ind:1"}]}));
    assert_eq!(put["assigned_to_user_uuid"], "user-1");
    assert_eq!(put["status"], "new");
    let query = requests
        .iter()
        .find(|r| r.url.path() == "/cases/queries/cases/v1")
        .unwrap();
    let filter = query
        .url
        .query_pairs()
        .find(|(k, _)| k == "filter")
        .unwrap()
        .1
        .into_owned();
    assert_eq!(filter, r"name:'VMRay malicious \'x\' \\ y'");
}

#[tokio::test]
async fn hosts_that_ran_a_hash_page_with_string_offsets() {
    let server = FakeFalcon::start().await;
    mount_token(&server, 1799).await;
    Mock::given(path("/iocs/queries/indicators/devices/v1"))
        .respond_with(|req: &Request| {
            let q: HashMap<String, String> = req.url.query_pairs().into_owned().collect();
            assert_eq!(q["type"], "sha256");
            let start: usize = q
                .get("offset")
                .map_or(0, |o| o.trim_start_matches("page-").parse().unwrap());
            let limit: usize = q["limit"].parse().unwrap();
            assert!(limit <= 100, "the endpoint takes at most 100, got {limit}");
            let end = (start + limit).min(1200);
            let aids: Vec<String> = (start..end).map(|i| format!("aid{i}")).collect();
            // As the real endpoint answers: a string offset token, no total; the last page
            // has no offset.
            let pagination = if end < 1200 {
                json!({"offset": format!("page-{end}"), "limit": limit})
            } else {
                json!({"limit": limit})
            };
            envelope(200, json!(aids), Some(pagination))
        })
        .mount(&server)
        .await;
    Mock::given(path("/devices/entities/devices/v2"))
        .respond_with(|req: &Request| {
            let body: Value = req.body_json().unwrap();
            let hosts: Vec<Value> = body["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|id| json!({"device_id": id, "platform_name": "Windows", "status": "normal"}))
                .collect();
            envelope(200, json!(hosts), None)
        })
        .mount(&server)
        .await;
    let hosts = client(&server).hosts_that_ran(&sha(b"x")).await.unwrap();
    assert_eq!(hosts.len(), 1200);
}

#[tokio::test]
async fn containment_is_sent_in_chunks_of_500() {
    let server = FakeFalcon::start().await;
    mount_token(&server, 1799).await;
    Mock::given(path("/devices/entities/devices-actions/v2"))
        .respond_with(|req: &Request| {
            let body: Value = req.body_json().unwrap();
            let ids = body["ids"].as_array().unwrap();
            if ids.len() > 500 {
                return error(400, "too many ids");
            }
            let res: Vec<Value> = ids.iter().map(|id| json!({"id": id, "path": ""})).collect();
            envelope(202, json!(res), None)
        })
        .mount(&server)
        .await;
    let ids: Vec<String> = (0..1200).map(|i| format!("aid{i}")).collect();
    client(&server).contain_hosts(&ids).await.unwrap();
    let requests = server.received_requests().await.unwrap();
    let actions: Vec<_> = requests
        .iter()
        .filter(|r| r.url.path() == "/devices/entities/devices-actions/v2")
        .collect();
    assert_eq!(actions.len(), 3);
    assert!(
        actions
            .iter()
            .all(|r| r.url.query() == Some("action_name=contain"))
    );
}

#[tokio::test]
async fn a_403_names_the_scope_to_add() {
    let server = FakeFalcon::start().await;
    mount_token(&server, 1799).await;
    Mock::given(path("/alerts/combined/alerts/v1"))
        .respond_with(error(403, "access denied, authorization failed"))
        .mount(&server)
        .await;
    Mock::given(path("/alerts/queries/alerts/v2"))
        .respond_with(error(403, "access denied, authorization failed"))
        .mount(&server)
        .await;
    Mock::given(path("/samples/entities/samples/v3"))
        .respond_with(error(404, "file not found"))
        .mount(&server)
        .await;
    Mock::given(path("/devices/queries/devices/v1"))
        .respond_with(envelope(
            200,
            json!([]),
            Some(json!({"offset": 0, "limit": 1, "total": 0})),
        ))
        .mount(&server)
        .await;
    Mock::given(path("/cases/queries/cases/v1"))
        .respond_with(error(500, "internal error"))
        .mount(&server)
        .await;
    let client = client(&server);
    let err = client
        .alerts_since(datetime!(2025-01-01 00:00 UTC))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("add the Alerts: Read and Write scope"),
        "{err}"
    );

    let report = client
        .check_scopes(&[
            Scope::Alerts,
            Scope::SampleUploads,
            Scope::Hosts,
            Scope::Cases,
        ])
        .await;
    assert_eq!(report[0], (Scope::Alerts, ScopeStatus::Missing));
    assert_eq!(report[1], (Scope::SampleUploads, ScopeStatus::Ok));
    assert_eq!(report[2], (Scope::Hosts, ScopeStatus::Ok));
    assert!(
        matches!(&report[3].1, ScopeStatus::Failing(m) if m.contains("500")),
        "{:?}",
        report[3]
    );
    let sample_probe = server
        .received_requests()
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.url.path() == "/samples/entities/samples/v3")
        .unwrap();
    assert!(sample_probe.url.query().unwrap().contains(&"0".repeat(64)));
}

#[tokio::test]
async fn a_403_on_the_token_names_403_and_the_disabled_client_not_401() {
    let server = FakeFalcon::start().await;
    Mock::given(path("/oauth2/token"))
        .respond_with(error(403, "access denied, authorization failed"))
        .mount(&server)
        .await;
    let err = client(&server).hosts(&["aid".into()]).await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains("(403"), "{text}");
    assert!(!text.contains("401"), "{text}");
    assert!(
        text.contains("access denied, authorization failed"),
        "{text}"
    );
    assert!(
        text.contains("disabled") && text.contains("allow-list"),
        "{text}"
    );
}

#[tokio::test]
async fn wrong_credentials_and_tokens_never_show_in_errors_or_debug() {
    let server = FakeFalcon::start().await;
    Mock::given(path("/oauth2/token"))
        .respond_with(error(403, "access denied, invalid client credentials"))
        .mount(&server)
        .await;
    let client = client(&server);
    let err = client.hosts(&["aid".into()]).await.unwrap_err();
    assert!(matches!(err, FalconError::TokenForbidden { .. }), "{err}");
    let report = client.check_scopes(&[Scope::Hosts]).await;
    assert!(matches!(&report[0].1, ScopeStatus::Failing(m) if m.contains("client_secret")));
    for text in [
        format!("{err}"),
        format!("{err:?}"),
        format!("{client:?}"),
        format!("{:?}", settings(&server.uri())),
        format!("{report:?}"),
    ] {
        assert!(!text.contains(CLIENT_SECRET), "{text}");
    }

    // A client holding a live token does not show it either.
    let ok = FakeFalcon::start().await;
    mount_token(&ok, 1799).await;
    Mock::given(path("/devices/entities/devices/v2"))
        .respond_with(error(409, "conflict"))
        .mount(&ok)
        .await;
    let holder = self::client(&ok);
    let err = holder.hosts(&["aid".into()]).await.unwrap_err();
    for text in [format!("{err}"), format!("{err:?}"), format!("{holder:?}")] {
        assert!(
            !text.contains(TOKEN) && !text.contains(CLIENT_SECRET),
            "{text}"
        );
    }
}

// ---- Sample download -------------------------------------------------------------------------

enum Crypto {
    ZipCrypto,
    Aes,
}

fn zip_archive(entry_name: &str, data: &[u8], crypto: Crypto) -> Vec<u8> {
    use zip::unstable::write::FileOptionsExt;
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default();
    let options = match crypto {
        Crypto::ZipCrypto => options.with_deprecated_encryption(b"infected").unwrap(),
        Crypto::Aes => options.with_aes_encryption(zip::AesMode::Aes256, "infected"),
    };
    writer.start_file(entry_name, options).unwrap();
    writer.write_all(data).unwrap();
    writer.finish().unwrap().into_inner()
}

async fn sample_server(body: Vec<u8>) -> FakeFalcon {
    let server = FakeFalcon::start().await;
    mount_token(&server, 1799).await;
    Mock::given(method("GET"))
        .and(path("/samples/entities/samples/v3"))
        .respond_with(move |req: &Request| {
            let q: HashMap<String, String> = req.url.query_pairs().into_owned().collect();
            assert_eq!(q["password_protected"], "true");
            assert_eq!(
                req.headers.get("accept").unwrap(),
                "application/octet-stream"
            );
            ResponseTemplate::new(200).set_body_raw(body.clone(), "application/octet-stream")
        })
        .mount(&server)
        .await;
    server
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[tokio::test]
async fn zipcrypto_and_aes_samples_decrypt_to_their_hash_name() {
    for crypto in [Crypto::ZipCrypto, Crypto::Aes] {
        let data = b"MZ sample bytes ".repeat(5000);
        let hash = sha(&data);
        let server = sample_server(zip_archive(hash.as_str(), &data, crypto)).await;
        let scratch = tempfile::tempdir().unwrap();
        let dir = scratch.path().join("downloads");
        let out = client(&server)
            .download_sample(&hash, &dir)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(out, dir.join(hash.as_str()));
        assert_eq!(std::fs::read(&out).unwrap(), data);
        assert_eq!(files_in(&dir), vec![hash.to_string()]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&out).unwrap().permissions().mode() & 0o777,
                0o600
            );
            assert_eq!(
                std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
                0o700
            );
        }
    }
}

#[tokio::test]
async fn a_sample_with_the_wrong_hash_is_rejected_and_deleted() {
    let data = b"not what was asked for".to_vec();
    let asked = sha(b"something else");
    let server = sample_server(zip_archive(asked.as_str(), &data, Crypto::ZipCrypto)).await;
    let dir = tempfile::tempdir().unwrap();
    let err = client(&server)
        .download_sample(&asked, dir.path())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, FalconError::Sample { reason, .. } if reason.contains("SHA-256")),
        "{err}"
    );
    assert!(
        files_in(dir.path()).is_empty(),
        "{:?}",
        files_in(dir.path())
    );
}

#[tokio::test]
async fn an_entry_named_dot_dot_writes_nothing_outside_the_folder() {
    let data = b"zip slip".to_vec();
    let hash = sha(&data);
    let server = sample_server(zip_archive("../../x", &data, Crypto::Aes)).await;
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join("a").join("b");
    let out = client(&server)
        .download_sample(&hash, &dir)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out, dir.join(hash.as_str()));
    assert_eq!(files_in(scratch.path()), vec!["a".to_string()]);
    assert_eq!(files_in(&scratch.path().join("a")), vec!["b".to_string()]);
    assert!(!scratch.path().join("x").exists());
}

#[tokio::test]
async fn a_sample_that_inflates_past_the_cap_is_stopped_and_deleted() {
    // 4 MiB of zeros compress to a few KiB: a small zip bomb against a 1 MiB cap.
    let data = vec![0u8; 4 << 20];
    let hash = sha(&data);
    let server = sample_server(zip_archive(hash.as_str(), &data, Crypto::ZipCrypto)).await;
    let dir = tempfile::tempdir().unwrap();
    let err = client(&server)
        .download_sample(&hash, dir.path())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, FalconError::Sample { reason, .. } if reason.contains("max_sample_bytes")),
        "{err}"
    );
    assert!(files_in(dir.path()).is_empty());
}

#[tokio::test]
async fn a_missing_sample_is_none_not_an_error() {
    let server = FakeFalcon::start().await;
    mount_token(&server, 1799).await;
    Mock::given(path("/samples/entities/samples/v3"))
        .respond_with(error(404, "file not found"))
        .mount(&server)
        .await;
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(
        client(&server)
            .download_sample(&sha(b"x"), dir.path())
            .await
            .unwrap(),
        None
    );
    assert!(files_in(dir.path()).is_empty());
}

/// A server that issues tokens, then cuts every sample download off after a few bytes.
async fn truncating_server(zip: Vec<u8>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let zip = zip.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = socket.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    request.extend_from_slice(&buf[..n]);
                }
                let text = String::from_utf8_lossy(&request);
                if text.starts_with("POST /oauth2/token") {
                    // Drain the small form body before answering.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    let body = format!(
                        r#"{{"access_token":"{TOKEN}-raw","token_type":"bearer","expires_in":1799}}"#
                    );
                    let answer = format!(
                        "HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = socket.write_all(answer.as_bytes()).await;
                } else {
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        zip.len()
                    );
                    let _ = socket.write_all(head.as_bytes()).await;
                    let _ = socket.write_all(&zip[..zip.len() / 2]).await;
                }
                let _ = socket.shutdown().await;
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn a_truncated_download_is_an_error_and_leaves_nothing() {
    let data = b"truncated sample".repeat(1000);
    let hash = sha(&data);
    let base = truncating_server(zip_archive(hash.as_str(), &data, Crypto::Aes)).await;
    let dir = tempfile::tempdir().unwrap();
    let client = FalconClient::new(settings(&base)).unwrap();
    let err = client.download_sample(&hash, dir.path()).await.unwrap_err();
    assert!(
        matches!(&err, FalconError::Sample { reason, .. } if reason.contains("broke off")),
        "{err}"
    );
    assert!(
        files_in(dir.path()).is_empty(),
        "{:?}",
        files_in(dir.path())
    );
}

/// A client of the built-in simulator, for rules only the simulator models.
async fn simulated() -> (falcon_vmray_connector::sim::Simulator, FalconClient) {
    let sim = falcon_vmray_connector::sim::Simulator::start(crate::support::scenario::single(
        "malicious",
        true,
    ))
    .await
    .unwrap();
    let creds = sim.credentials();
    let mut settings = settings(&sim.falcon_url());
    settings.client_id = creds.client_id;
    settings.client_secret = SecretString::from(creds.client_secret);
    let client = FalconClient::new(settings).unwrap();
    (sim, client)
}

/// Checks the client's requests to the simulator against Falcon's API definition, then stops it.
async fn finish(sim: falcon_vmray_connector::sim::Simulator) {
    crate::conformance::assert_conform(&sim.snapshot().requests);
    sim.shutdown().await;
}

#[tokio::test]
async fn one_refused_ioc_fails_alone_though_falcon_refuses_the_whole_request() {
    let (sim, client) = simulated().await;
    let mut iocs: Vec<NewIoc> = (1..=6)
        .map(|n| new_ioc(IocType::Ipv4, &format!("192.0.2.{n}")))
        .collect();
    // Not a domain Falcon takes: the simulator, like Falcon, refuses any request holding it.
    iocs.insert(3, new_ioc(IocType::Domain, "not a domain"));
    let outcome = client.create_iocs(&iocs, "c").await;
    assert_eq!(outcome.created.len(), 6, "{outcome:?}");
    assert_eq!(outcome.failed.len(), 1);
    assert_eq!(outcome.failed[0].value, "not a domain");
    assert!(
        outcome.failed[0].error.contains("not a valid domain"),
        "{}",
        outcome.failed[0].error
    );
    let t = sim.snapshot();
    assert_eq!(t.iocs.len(), 6);
    // The first request, then halves until the refused value stood alone.
    let creates = t.requests_to("/iocs/entities/indicators/v1").len();
    assert!((3..=7).contains(&creates), "{creates} create requests");
    finish(sim).await;
}

#[test]
fn general_ca_bundle_is_loaded_into_both_clients_and_vmray_adds_its_own() {
    use falcon_vmray_connector::config::{CaBundle, Config};
    use falcon_vmray_connector::vmray::{VmrayClient, VmraySettings};
    let good = std::path::PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/test-ca.pem"
    ));
    let mut config = Config::default();
    config.vmray.api_key = SecretString::from("key");
    config.general.ca_bundle = Some(good.clone());
    config.vmray.ca_bundle = Some(good.clone());
    let falcon = FalconSettings::for_connector(&config);
    let vmray = VmraySettings::for_connector(&config);
    assert_eq!(
        falcon.ca_bundles,
        vec![CaBundle::new("general.ca_bundle", &good)]
    );
    assert_eq!(
        vmray.ca_bundles,
        vec![
            CaBundle::new("general.ca_bundle", &good),
            CaBundle::new("vmray.ca_bundle", &good)
        ]
    );
    assert!(FalconClient::new(falcon).is_ok());
    assert!(VmrayClient::new(vmray).is_ok());

    // Each client really reads the shared bundle: a broken one stops both, naming the key.
    let broken = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(broken.path(), "not a certificate").unwrap();
    config.general.ca_bundle = Some(broken.path().to_path_buf());
    let falcon_err = FalconClient::new(FalconSettings::for_connector(&config)).unwrap_err();
    let vmray_err = VmrayClient::new(VmraySettings::for_connector(&config)).unwrap_err();
    for err in [falcon_err.to_string(), vmray_err.to_string()] {
        assert!(err.contains("general.ca_bundle"), "{err}");
    }
}
