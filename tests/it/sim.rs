//! Contract tests of the simulator itself, with plain reqwest: each endpoint answers valid and
//! invalid requests the way the wire reference says the real services do.

use std::io::Read;
use std::time::Duration;

use falcon_vmray_connector::sim::scenario::{AlertSpec, FileSpec, HostSpec, QuarantineSpec};
use falcon_vmray_connector::sim::{
    Arrival, ArrivingAlert, Faults, FileRef, GenerateOptions, Scenario, Simulator,
};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::Digest;

const AID1: &str = "0123456789abcdef0123456789abcdef";
const AID2: &str = "fedcba9876543210fedcba9876543210";

/// Two hosts, two files (one malicious detonating in 150 ms, one not in the sample store).
fn small() -> Scenario {
    let mut s = Scenario {
        hosts: vec![
            HostSpec {
                device_id: AID1.into(),
                hostname: "WS-1".into(),
                platform: "Windows".into(),
                status: "normal".into(),
            },
            HostSpec {
                device_id: AID2.into(),
                hostname: "WS-2".into(),
                platform: "Windows".into(),
                status: "normal".into(),
            },
        ],
        ..Scenario::default()
    };
    let mut bad = FileSpec {
        name: "bad.exe".into(),
        size: 20_000,
        content_seed: 11,
        ran_on: vec![AID1.into(), AID2.into()],
        ..FileSpec::default()
    };
    bad.detonation.verdict = "malicious".into();
    bad.detonation.duration_ms = 150;
    bad.detonation
        .iocs
        .domains
        .push(falcon_vmray_connector::sim::scenario::IocDomain {
            domain: "evil.example".into(),
            verdict: "malicious".into(),
        });
    bad.detonation
        .iocs
        .domains
        .push(falcon_vmray_connector::sim::scenario::IocDomain {
            domain: "fine.example".into(),
            verdict: "clean".into(),
        });
    let absent = FileSpec {
        name: "gone.exe".into(),
        content_seed: 12,
        in_sample_store: false,
        ..FileSpec::default()
    };
    s.files = vec![bad, absent];
    for (i, (file, aid)) in [(0, AID1), (0, AID2), (1, AID1)].into_iter().enumerate() {
        s.alerts.push(AlertSpec {
            file,
            device_id: aid.into(),
            created_ago_secs: 600 - i as u64 * 60,
            updated_ago_secs: 500,
            quarantined: i == 0,
            ..AlertSpec::default()
        });
    }
    s.quarantines.push(QuarantineSpec {
        file: 0,
        device_id: AID1.into(),
        ..QuarantineSpec::default()
    });
    s.quarantines.push(QuarantineSpec {
        file: 1,
        device_id: AID1.into(),
        ..QuarantineSpec::default()
    });
    s
}

struct Ctx {
    sim: Simulator,
    http: reqwest::Client,
    token: String,
}

impl Ctx {
    async fn new(scenario: Scenario) -> Ctx {
        let sim = Simulator::start(scenario).await.unwrap();
        let http = reqwest::Client::new();
        let c = sim.credentials();
        let r = http
            .post(format!("{}/oauth2/token", sim.falcon_url()))
            .form(&[
                ("client_id", c.client_id.as_str()),
                ("client_secret", c.client_secret.as_str()),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        assert_eq!(r.headers()["x-cs-region"], "us-1");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["token_type"], "bearer");
        assert!(body["expires_in"].is_u64());
        let token = body["access_token"].as_str().unwrap().to_string();
        Ctx { sim, http, token }
    }
    fn f(&self, path: &str) -> String {
        format!("{}{path}", self.sim.falcon_url())
    }
    fn v(&self, path: &str) -> String {
        format!("{}{path}", self.sim.vmray_url())
    }
    async fn get(&self, path: &str, query: &[(&str, &str)]) -> (StatusCode, Value) {
        let r = self
            .http
            .get(self.f(path))
            .bearer_auth(&self.token)
            .query(query)
            .send()
            .await
            .unwrap();
        (r.status(), r.json().await.unwrap_or(Value::Null))
    }
    async fn send(&self, method: reqwest::Method, path: &str, body: Value) -> (StatusCode, Value) {
        let r = self
            .http
            .request(method, self.f(path))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .unwrap();
        (r.status(), r.json().await.unwrap_or(Value::Null))
    }
    async fn vget(&self, path: &str) -> (StatusCode, Value) {
        let key = format!("api_key {}", self.sim.credentials().api_key);
        let r = self
            .http
            .get(self.v(path))
            .header("Authorization", key)
            .send()
            .await
            .unwrap();
        (r.status(), r.json().await.unwrap_or(Value::Null))
    }
    async fn alerts(&self) -> Vec<Value> {
        let (_, body) = self
            .send(
                reqwest::Method::POST,
                "/alerts/combined/alerts/v1",
                json!({"filter": "product:'epp'", "limit": 1000}),
            )
            .await;
        body["resources"].as_array().unwrap().clone()
    }
}

fn message(body: &Value) -> String {
    body["errors"][0]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn token_endpoint_rejects_bad_credentials_and_calls_need_a_valid_token() {
    let ctx = Ctx::new(small()).await;
    let c = ctx.sim.credentials();
    let r = ctx
        .http
        .post(ctx.f("/oauth2/token"))
        .form(&[
            ("client_id", c.client_id.as_str()),
            ("client_secret", c.client_secret.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["expires_in"], 1799);
    let r = ctx
        .http
        .post(ctx.f("/oauth2/token"))
        .form(&[("client_id", "x"), ("client_secret", "y")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    for auth in [None, Some("Bearer nope")] {
        let mut req = ctx
            .http
            .get(ctx.f("/devices/queries/devices/v1"))
            .query(&[("limit", "1")]);
        if let Some(a) = auth {
            req = req.header("Authorization", a);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert!(r.headers().contains_key("x-cs-traceid"));
        let body: Value = r.json().await.unwrap();
        assert_eq!(message(&body), "access denied, invalid bearer token");
    }
    let (status, body) = ctx
        .get("/devices/queries/devices/v1", &[("limit", "1")])
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["resources"].as_array().unwrap().len(), 1);
    ctx.sim.expire_tokens();
    let (status, _) = ctx
        .get("/devices/queries/devices/v1", &[("limit", "1")])
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    ctx.sim.shutdown().await;
}

#[tokio::test]
async fn tokens_expire_after_their_lifetime() {
    let scenario = Scenario {
        token_lifetime_secs: 1,
        ..small()
    };
    let ctx = Ctx::new(scenario).await;
    assert_eq!(
        ctx.get("/ods/queries/scans/v1", &[("limit", "1")]).await.0,
        StatusCode::OK
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        ctx.get("/ods/queries/scans/v1", &[("limit", "1")]).await.0,
        StatusCode::UNAUTHORIZED
    );
    ctx.sim.shutdown().await;
}

#[tokio::test]
async fn alert_pagination_with_after_returns_every_alert_once() {
    let scenario = Scenario::generate(&GenerateOptions {
        hashes: 25,
        seed: 3,
        ..GenerateOptions::default()
    });
    let total = scenario.alerts.len();
    let ctx = Ctx::new(scenario).await;
    let since = "2000-01-01T00:00:00Z";
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut body = json!({"filter": format!("product:'epp'+updated_timestamp:>='{since}'"), "limit": 7, "sort": "created_timestamp|asc"});
        if let Some(a) = &after {
            body["after"] = json!(a);
        }
        let (status, page) = ctx
            .send(reqwest::Method::POST, "/alerts/combined/alerts/v1", body)
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(page["meta"]["pagination"]["total"], total);
        for a in page["resources"].as_array().unwrap() {
            seen.push(a["composite_id"].as_str().unwrap().to_string());
        }
        pages += 1;
        match page["meta"]["pagination"]["after"].as_str() {
            Some(a) if !a.is_empty() => after = Some(a.to_string()),
            _ => break,
        }
    }
    assert_eq!(pages, total.div_ceil(7));
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), total);
    assert_eq!(seen.len(), total);
    // A filter in the future matches nothing; a bad one is refused.
    let (_, none) = ctx
        .send(
            reqwest::Method::POST,
            "/alerts/combined/alerts/v1",
            json!({"filter": "updated_timestamp:>='2999-01-01T00:00:00Z'"}),
        )
        .await;
    assert_eq!(none["resources"].as_array().unwrap().len(), 0);
    for bad in [
        json!({"filter": "product:'epp' updated_timestamp:>='2000-01-01T00:00:00Z'"}),
        json!({"limit": 1001}),
        json!({"limit": 0}),
    ] {
        let (status, _) = ctx
            .send(reqwest::Method::POST, "/alerts/combined/alerts/v1", bad)
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }
    let r = ctx
        .http
        .post(ctx.f("/alerts/combined/alerts/v1"))
        .bearer_auth(&ctx.token)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    ctx.sim.shutdown().await;
}

#[tokio::test]
async fn alert_query_and_entities_enforce_their_limits() {
    let ctx = Ctx::new(small()).await;
    let (status, ids) = ctx
        .get(
            "/alerts/queries/alerts/v2",
            &[("filter", "product:'epp'+status:'new'"), ("limit", "2")],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ids["resources"].as_array().unwrap().len(), 2);
    assert_eq!(ids["meta"]["pagination"]["total"], 3);
    assert_eq!(
        ctx.get("/alerts/queries/alerts/v2", &[("limit", "10001")])
            .await
            .0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        ctx.get(
            "/alerts/queries/alerts/v2",
            &[("limit", "100"), ("offset", "9950")]
        )
        .await
        .0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        ctx.get("/alerts/queries/alerts/v2", &[("filter", "status:'new")])
            .await
            .0,
        StatusCode::BAD_REQUEST
    );
    let id = ids["resources"][0].as_str().unwrap();
    let (status, full) = ctx
        .send(
            reqwest::Method::POST,
            "/alerts/entities/alerts/v2",
            json!({"composite_ids": [id]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let alert = &full["resources"][0];
    assert_eq!(alert["composite_id"], id);
    assert_eq!(alert["product"], "epp");
    assert_eq!(alert["sha256"].as_str().unwrap().len(), 64);
    assert!(
        alert["device"]["device_id"].is_string() && alert["device"]["platform_name"] == "Windows"
    );
    let many: Vec<String> = (0..1001).map(|i| format!("x:{i}")).collect();
    let (status, _) = ctx
        .send(
            reqwest::Method::POST,
            "/alerts/entities/alerts/v2",
            json!({"composite_ids": many}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    ctx.sim.shutdown().await;
}

#[tokio::test]
async fn alert_patch_updates_status_comments_tags_and_timestamp() {
    let ctx = Ctx::new(small()).await;
    let alerts = ctx.alerts().await;
    let quarantined = alerts
        .iter()
        .find(|a| !a["quarantined_files"].as_array().unwrap().is_empty())
        .unwrap();
    assert_eq!(quarantined["quarantined_files"][0]["state"], "quarantined");
    let id = alerts[0]["composite_id"].as_str().unwrap().to_string();
    let before = alerts[0]["updated_timestamp"].as_str().unwrap().to_string();
    let long = "y".repeat(1023);
    let (status, body) = ctx.send(reqwest::Method::PATCH, "/alerts/entities/alerts/v3", json!({"composite_ids": [id], "action_parameters": [
        {"name": "append_comment", "value": "VMRay: malicious"}, {"name": "append_comment", "value": long},
        {"name": "update_status", "value": "in_progress"}, {"name": "add_tag", "value": "VMRAY"}]})).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.get("resources").is_none());
    let snap = ctx.sim.snapshot();
    let a = snap.alert(&id).unwrap();
    assert_eq!(a.status, "in_progress");
    assert_eq!(a.comments, vec!["VMRay: malicious".to_string(), long]);
    assert_eq!(a.tags, vec!["VMRAY".to_string()]);
    let after = ctx
        .alerts()
        .await
        .into_iter()
        .find(|x| x["composite_id"] == id.as_str())
        .unwrap();
    assert!(after["updated_timestamp"].as_str().unwrap() > before.as_str());
    // The connector's incremental filter now sees it again.
    let (_, seen) = ctx
        .send(
            reqwest::Method::POST,
            "/alerts/combined/alerts/v1",
            json!({"filter": format!("updated_timestamp:>'{before}'")}),
        )
        .await;
    assert_eq!(seen["resources"].as_array().unwrap().len(), 1);
    for bad in [
        json!({"composite_ids": [id], "action_parameters": [{"name": "show_in_ui", "value": true}]}),
        json!({"composite_ids": [id], "action_parameters": [{"name": "append_comment", "value": "z".repeat(1024)}]}),
        // 512 characters but 1024 bytes: refused too.
        json!({"composite_ids": [id], "action_parameters": [{"name": "append_comment", "value": "é".repeat(512)}]}),
        json!({"composite_ids": [id], "action_parameters": [{"name": "update_status", "value": "true_positive"}]}),
    ] {
        assert_eq!(
            ctx.send(reqwest::Method::PATCH, "/alerts/entities/alerts/v3", bad)
                .await
                .0,
            StatusCode::BAD_REQUEST
        );
    }
    let many: Vec<String> = (0..1001).map(|i| format!("x:{i}")).collect();
    let (status, _) = ctx.send(reqwest::Method::PATCH, "/alerts/entities/alerts/v3", json!({"composite_ids": many, "action_parameters": [{"name": "add_tag", "value": "t"}]})).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(ctx.sim.snapshot().render().contains("VMRay: malicious"));
    ctx.sim.shutdown().await;
}

#[tokio::test]
async fn legacy_detects_api_is_gone() {
    let ctx = Ctx::new(small()).await;
    assert_eq!(
        ctx.get("/detects/queries/detects/v1", &[]).await.0,
        StatusCode::NOT_FOUND
    );
    let (status, _) = ctx
        .send(
            reqwest::Method::PATCH,
            "/detects/entities/detects/v2",
            json!({"ids": ["ldt:x:1"], "status": "in_progress"}),
        )
        .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    ctx.sim.shutdown().await;
}

#[tokio::test]
async fn quarantine_paging_with_offset_and_actions_change_state() {
    let scenario = Scenario::generate(&GenerateOptions {
        hashes: 40,
        seed: 5,
        ..GenerateOptions::default()
    });
    let total = scenario.quarantines.len();
    assert!(total > 3);
    let ctx = Ctx::new(scenario).await;
    let mut ids = Vec::new();
    let mut offset = 0u64;
    loop {
        let (status, page) = ctx
            .get(
                "/quarantine/queries/quarantined-files/v1",
                &[
                    ("filter", "date_updated:>='2000-01-01T00:00:00Z'"),
                    ("limit", "3"),
                    ("offset", &offset.to_string()),
                    ("sort", "date_created|asc"),
                ],
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        for id in page["resources"].as_array().unwrap() {
            ids.push(id.as_str().unwrap().to_string());
        }
        offset = page["meta"]["pagination"]["offset"].as_u64().unwrap();
        if offset >= page["meta"]["pagination"]["total"].as_u64().unwrap() {
            break;
        }
    }
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!((ids.len(), unique.len()), (total, total));
    assert!(
        ids.iter()
            .all(|id| id.len() == 32 + 1 + 64 && id.as_bytes()[32] == b'_')
    );
    let (_, records) = ctx
        .send(
            reqwest::Method::POST,
            "/quarantine/entities/quarantined-files/GET/v1",
            json!({"ids": [ids[0]]}),
        )
        .await;
    let r = &records["resources"][0];
    assert_eq!(r["id"], ids[0].as_str());
    assert_eq!(r["state"], "quarantined");
    assert!(r["paths"][0]["filename"].is_string() && r["hostname"].is_string());
    let (status, _) = ctx
        .send(
            reqwest::Method::PATCH,
            "/quarantine/entities/quarantined-files/v1",
            json!({"ids": [ids[0]], "action": "release", "comment": "VMRay: clean"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let snap = ctx.sim.snapshot();
    let q = snap.quarantine(&ids[0]).unwrap();
    assert_eq!(q.state, "released");
    assert_eq!(
        (q.actions[0].action.as_str(), q.actions[0].comment.as_str()),
        ("release", "VMRay: clean")
    );
    ctx.send(
        reqwest::Method::PATCH,
        "/quarantine/entities/quarantined-files/v1",
        json!({"ids": [ids[0]], "action": "unrelease", "comment": "again"}),
    )
    .await;
    assert_eq!(
        ctx.sim.snapshot().quarantine(&ids[0]).unwrap().state,
        "quarantined"
    );
    assert_eq!(
        ctx.send(
            reqwest::Method::PATCH,
            "/quarantine/entities/quarantined-files/v1",
            json!({"ids": [ids[0]], "action": "explode"})
        )
        .await
        .0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        ctx.get(
            "/quarantine/queries/quarantined-files/v1",
            &[("limit", "5001")]
        )
        .await
        .0,
        StatusCode::BAD_REQUEST
    );
    ctx.sim.shutdown().await;
}

#[tokio::test]
async fn downloaded_zip_decrypts_with_infected_to_the_hash() {
    let ctx = Ctx::new(small()).await;
    let snap = ctx.sim.snapshot();
    let sha = snap.alerts[0].sha256.clone();
    let r = ctx
        .http
        .get(ctx.f("/samples/entities/samples/v3"))
        .bearer_auth(&ctx.token)
        .header("Accept", "application/octet-stream")
        .query(&[("ids", sha.as_str()), ("password_protected", "true")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "application/octet-stream");
    let zip_bytes = r.bytes().await.unwrap();
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(zip_bytes.to_vec())).unwrap();
    assert_eq!(archive.len(), 1);
    let mut entry = archive.by_index_decrypt(0, b"infected").unwrap();
    assert_eq!(entry.name().unwrap(), sha.as_str());
    let mut content = Vec::new();
    entry.read_to_end(&mut content).unwrap();
    assert_eq!(hex::encode(sha2::Sha256::digest(&content)), sha);
    // Not in the sample store, or unknown: 404 envelope.
    let absent = snap.alerts[2].sha256.clone();
    for h in [absent.as_str(), &"0".repeat(64)] {
        let (status, body) = ctx
            .get(
                "/samples/entities/samples/v3",
                &[("ids", h), ("password_protected", "true")],
            )
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body["errors"][0]["code"], 404);
    }
    ctx.sim.shutdown().await;
}

#[tokio::test]
async fn wrong_file_and_truncated_download_faults_are_detectable() {
    let ctx = Ctx::new(small()).await;
    let sha = ctx.sim.snapshot().alerts[0].sha256.clone();
    ctx.sim.set_faults(Faults {
        wrong_file_hashes: vec![sha.clone()],
        ..Faults::default()
    });
    let body = ctx
        .http
        .get(ctx.f("/samples/entities/samples/v3"))
        .bearer_auth(&ctx.token)
        .query(&[("ids", sha.as_str()), ("password_protected", "true")])
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(body.to_vec())).unwrap();
    let mut content = Vec::new();
    archive
        .by_index_decrypt(0, b"infected")
        .unwrap()
        .read_to_end(&mut content)
        .unwrap();
    assert_ne!(hex::encode(sha2::Sha256::digest(&content)), sha);
    ctx.sim.set_faults(Faults {
        truncated_download_rate: 1.0,
        ..Faults::default()
    });
    let sent = ctx
        .http
        .get(ctx.f("/samples/entities/samples/v3"))
        .bearer_auth(&ctx.token)
        .query(&[("ids", sha.as_str()), ("password_protected", "true")])
        .send()
        .await;
    // The connection breaks short of the announced length. A short body may leave the server
    // in one write with the headers, so the break shows either while reading the body or
    // already while reading the answer: both are a download that cannot be completed.
    let broke = match sent {
        Err(_) => true,
        Ok(r) => {
            assert_eq!(r.status(), StatusCode::OK);
            r.bytes().await.is_err()
        }
    };
    assert!(broke, "a truncated body must fail to read completely");
    let c = ctx.sim.snapshot().counters;
    assert_eq!((c.wrong_files, c.truncated_downloads), (1, 1));
    ctx.sim.shutdown().await;
}

#[tokio::test]
async fn iocs_are_created_checked_and_duplicates_reported() {
    let ctx = Ctx::new(small()).await;
    let ioc = |t: &str, v: &str, action: &str| json!({"type": t, "value": v, "action": action, "severity": "high", "platforms": ["windows", "mac", "linux"], "applied_globally": true, "tags": ["VMRAY"], "source": "VMRay", "description": "from VMRay"});
    let sha = "a".repeat(64);
    let (status, body) = ctx.send(reqwest::Method::POST, "/iocs/entities/indicators/v1", json!({"comment": "c", "indicators": [ioc("sha256", &sha, "prevent"), ioc("domain", "evil.example", "detect"), ioc("ipv6", "2001:db8::1", "detect")]})).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(body["resources"].as_array().unwrap().len(), 3);
    let (status, body) = ctx.send(reqwest::Method::POST, "/iocs/entities/indicators/v1", json!({"indicators": [ioc("domain", "evil.example", "detect"), ioc("ipv4", "203.0.113.9", "detect")]})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["resources"].as_array().unwrap().len(), 1);
    assert_eq!(
        message(&body),
        "Duplicate type: 'domain' and value: 'evil.example' combination."
    );
    let (status, found) = ctx
        .get(
            "/iocs/combined/indicator/v1",
            &[
                (
                    "filter",
                    &format!("value:['{sha}','evil.example','nothing.example']"),
                ),
                ("limit", "100"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(found["resources"].as_array().unwrap().len(), 2);
    let (_, ids) = ctx
        .get("/iocs/queries/indicators/v1", &[("filter", "type:'ipv4'")])
        .await;
    assert_eq!(ids["resources"].as_array().unwrap().len(), 1);
    assert_eq!(
        ctx.get("/iocs/combined/indicator/v1", &[("filter", "value:['a'")])
            .await
            .0,
        StatusCode::BAD_REQUEST
    );
    let (status, _) = ctx
        .send(
            reqwest::Method::POST,
            "/iocs/entities/indicators/v1",
            json!({"indicators": [ioc("ipv4", "999.1.1.1", "detect")]}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let snap = ctx.sim.snapshot();
    assert_eq!(snap.iocs.len(), 4);
    assert!(
        snap.iocs
            .iter()
            .all(|i| i.source.as_deref() == Some("VMRay") && i.tags == ["VMRAY"])
    );
    ctx.sim.shutdown().await;
}

#[tokio::test]
async fn hosts_devices_ran_on_cases_and_scans() {
    let ctx = Ctx::new(small()).await;
    let sha = ctx.sim.snapshot().alerts[0].sha256.clone();
    let (_, first) = ctx
        .get(
            "/iocs/queries/indicators/devices/v1",
            &[("type", "sha256"), ("value", &sha), ("limit", "1")],
        )
        .await;
    // Like the real endpoint: no total, an opaque string offset, at most 100 per page.
    assert!(first["meta"]["pagination"].get("total").is_none());
    let (status, _) = ctx
        .get(
            "/iocs/queries/indicators/devices/v1",
            &[("type", "sha256"), ("value", &sha), ("limit", "101")],
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let next = first["meta"]["pagination"]["offset"]
        .as_str()
        .unwrap()
        .to_string();
    let (_, second) = ctx
        .get(
            "/iocs/queries/indicators/devices/v1",
            &[
                ("type", "sha256"),
                ("value", &sha),
                ("limit", "1"),
                ("offset", &next),
            ],
        )
        .await;
    let mut aids = vec![
        first["resources"][0].clone(),
        second["resources"][0].clone(),
    ];
    aids.sort_by_key(|v| v.to_string());
    assert_eq!(aids, vec![json!(AID1), json!(AID2)]);
    let (status, body) = ctx
        .send(
            reqwest::Method::POST,
            "/devices/entities/devices-actions/v2?action_name=contain",
            json!({"ids": [AID2]}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(body["resources"][0]["id"], AID2);
    let (_, hosts) = ctx
        .send(
            reqwest::Method::POST,
            "/devices/entities/devices/v2",
            json!({"ids": [AID1, AID2]}),
        )
        .await;
    assert_eq!(hosts["resources"][1]["status"], "contained");
    assert_eq!(hosts["resources"][0]["hostname"], "WS-1");
    let (status, case) = ctx.send(reqwest::Method::PUT, "/cases/entities/cases/v2", json!({"name": "VMRay: it's bad", "description": "d", "severity": 80, "status": "new", "tags": ["VMRAY"], "evidence": {"alerts": [{"id": "a:ind:b:1"}]}})).await;
    assert_eq!(status, StatusCode::OK);
    assert!(case["resources"][0]["id"].is_string());
    let (_, ids) = ctx
        .get(
            "/cases/queries/cases/v1",
            &[("filter", r"name:'VMRay: it\'s bad'")],
        )
        .await;
    assert_eq!(ids["resources"].as_array().unwrap().len(), 1);
    assert_eq!(
        ctx.send(
            reqwest::Method::PUT,
            "/cases/entities/cases/v2",
            json!({"name": "x", "severity": "high"})
        )
        .await
        .0,
        StatusCode::BAD_REQUEST
    );
    let (status, scan) = ctx.send(reqwest::Method::POST, "/ods/entities/scans/v1", json!({"hosts": [AID1], "file_paths": ["C:\\x.exe"], "cpu_priority": 2, "quarantine": true})).await;
    assert_eq!(status, StatusCode::CREATED);
    assert!(scan["resources"][0]["id"].is_string());
    let snap = ctx.sim.snapshot();
    assert_eq!(snap.contained, vec![AID2.to_string()]);
    assert_eq!(snap.cases[0].alert_ids, vec!["a:ind:b:1".to_string()]);
    assert_eq!(snap.scans[0].file_paths, vec!["C:\\x.exe".to_string()]);
    let text = snap.render();
    assert!(
        text.contains("Hosts contained (1)") && text.contains("WS-2"),
        "{text}"
    );
    ctx.sim.shutdown().await;
}

fn vmray_form(ctx: &Ctx, content: Vec<u8>) -> reqwest::RequestBuilder {
    let form = reqwest::multipart::Form::new()
        .part(
            "sample_file",
            reqwest::multipart::Part::bytes(content).file_name("sample.bin"),
        )
        .text("comment", "Sample from the connector")
        .text("tags", "CrowdStrike,Falcon")
        .text("user_config", "{\"timeout\": 120}")
        .text("analyzer_mode", "reputation_static_dynamic")
        .text("reanalyze", "True");
    ctx.http
        .post(ctx.v("/rest/sample/submit"))
        .header(
            "Authorization",
            format!("api_key {}", ctx.sim.credentials().api_key),
        )
        .multipart(form)
}

#[tokio::test]
async fn submitted_sample_finishes_after_its_detonation_time_with_the_scenario_verdict() {
    let ctx = Ctx::new(small()).await;
    let sha = ctx.sim.snapshot().alerts[0].sha256.clone();
    let (status, empty) = ctx.vget(&format!("/rest/sample/sha256/{sha}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(empty, json!({"result": "ok", "data": []}));
    let content = falcon_vmray_connector::sim::files::content(11, 20_000);
    let r = vmray_form(&ctx, content).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    let sub = &body["data"]["submissions"][0];
    let (sid, sample_id) = (
        sub["submission_id"].as_u64().unwrap(),
        sub["submission_sample_id"].as_u64().unwrap(),
    );
    assert_eq!(sub["submission_finished"], false);
    assert!(sub.get("sample_id").is_none());
    assert_eq!(body["data"]["errors"], json!([]));
    let (_, running) = ctx.vget(&format!("/rest/submission/{sid}")).await;
    assert_eq!(running["data"]["submission_finished"], false);
    assert_eq!(running["data"]["submission_has_errors"], Value::Null);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_, done) = ctx.vget(&format!("/rest/submission/{sid}")).await;
    assert_eq!(done["data"]["submission_finished"], true);
    assert_eq!(done["data"]["submission_status"], "success");
    assert_eq!(done["data"]["submission_verdict"], "malicious");
    let (_, analyses) = ctx.vget(&format!("/rest/analysis/submission/{sid}")).await;
    assert_eq!(analyses["data"][0]["analysis_result_code"], 1);
    let (_, sample) = ctx.vget(&format!("/rest/sample/sha256/{sha}")).await;
    assert_eq!(sample["data"][0]["sample_verdict"], "malicious");
    assert_eq!(sample["data"][0]["sample_id"], sample_id);
    let (_, iocs) = ctx
        .vget(&format!("/rest/sample/{sample_id}/iocs/verdict/malicious"))
        .await;
    assert_eq!(iocs["data"]["status"], "finished");
    let domains: Vec<&str> = iocs["data"]["iocs"]["domains"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["domain"].as_str().unwrap())
        .collect();
    assert_eq!(domains, vec!["evil.example"]);
    assert!(
        iocs["data"]["iocs"]["files"].is_array() && iocs["data"]["iocs"]["registry"].is_array()
    );
    let (_, vtis) = ctx.vget(&format!("/rest/sample/{sample_id}/vtis")).await;
    assert_eq!(vtis["data"]["status"], "finished");
    let (_, subs) = ctx
        .vget(&format!("/rest/submission/sample/{sample_id}"))
        .await;
    assert_eq!(subs["data"][0]["submission_id"], sid);
    let (_, latest) = ctx
        .vget(&format!(
            "/rest/analysis/sample/{sample_id}?_order=desc&_limit=1"
        ))
        .await;
    assert_eq!(latest["data"].as_array().unwrap().len(), 1);
    assert!(latest["data"][0]["analysis_created"].is_string());
    let snap = ctx.sim.snapshot();
    let s = &snap.submissions[0];
    assert_eq!((s.sha256.as_str(), s.file_size), (sha.as_str(), 20_000));
    assert_eq!(s.comment.as_deref(), Some("Sample from the connector"));
    assert_eq!(s.tags.as_deref(), Some("CrowdStrike,Falcon"));
    assert_eq!(s.user_config.as_deref(), Some("{\"timeout\": 120}"));
    assert_eq!(
        (s.analyzer_mode.as_deref(), s.reanalyze.as_deref()),
        (Some("reputation_static_dynamic"), Some("True"))
    );
    assert_eq!(
        ctx.vget("/rest/submission/1").await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(ctx.vget("/rest/sample/1").await.0, StatusCode::NOT_FOUND);
    ctx.sim.shutdown().await;
}

#[tokio::test]
async fn vmray_rejects_wrong_keys_oversized_uploads_and_throttles_with_retry_after() {
    let scenario = Scenario {
        vmray_max_upload_bytes: 1000,
        ..small()
    };
    let ctx = Ctx::new(scenario).await;
    let r = ctx
        .http
        .get(ctx.v("/rest/system_info"))
        .header("Authorization", "api_key wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"result": "error", "error_msg": "Authentication failed"})
    );
    let (status, info) = ctx.vget("/rest/system_info").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(info["data"]["webif_max_upload_size"], 1000);
    let r = vmray_form(&ctx, vec![7u8; 1001]).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(r.json::<Value>().await.unwrap()["result"], "error");
    assert!(ctx.sim.snapshot().submissions.is_empty());
    ctx.sim.set_faults(Faults {
        vmray_requests_per_minute: Some(1),
        ..Faults::default()
    });
    assert_eq!(ctx.vget("/rest/analysis?_limit=1").await.0, StatusCode::OK);
    let key = format!("api_key {}", ctx.sim.credentials().api_key);
    let r = ctx
        .http
        .get(ctx.v("/rest/analysis?_limit=1"))
        .header("Authorization", key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let wait: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&wait));
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body["error_msg"],
        format!("Request was throttled. Expected available in {wait} seconds.")
    );
    ctx.sim.shutdown().await;
}

#[tokio::test]
async fn falcon_throttling_carries_retry_after_and_rate_limit_headers() {
    let ctx = Ctx::new(small()).await;
    ctx.sim.set_faults(Faults {
        falcon_requests_per_minute: Some(2),
        ..Faults::default()
    });
    let r = ctx
        .http
        .get(ctx.f("/devices/queries/devices/v1"))
        .bearer_auth(&ctx.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-ratelimit-limit"], "2");
    assert_eq!(r.headers()["x-ratelimit-remaining"], "1");
    ctx.http
        .get(ctx.f("/devices/queries/devices/v1"))
        .bearer_auth(&ctx.token)
        .send()
        .await
        .unwrap();
    let r = ctx
        .http
        .get(ctx.f("/devices/queries/devices/v1"))
        .bearer_auth(&ctx.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let at: i64 = r.headers()["x-ratelimit-retryafter"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    assert!(at > now && at <= now + 61, "{at} vs {now}");
    ctx.sim.shutdown().await;
}

#[tokio::test]
async fn seeded_faults_repeat_and_hanging_requests_end_at_shutdown() {
    async fn statuses(seed: u64) -> Vec<u16> {
        let ctx = Ctx::new(small()).await;
        ctx.sim.set_faults(Faults {
            seed,
            falcon_5xx_rate: 0.4,
            ..Faults::default()
        });
        let mut out = Vec::new();
        for _ in 0..20 {
            out.push(ctx.get("/devices/queries/devices/v1", &[]).await.0.as_u16());
        }
        ctx.sim.shutdown().await;
        out
    }
    let a = statuses(17).await;
    assert_eq!(a, statuses(17).await);
    assert!(a.contains(&500) && a.contains(&200));
    let ctx = Ctx::new(small()).await;
    ctx.sim.set_faults(Faults {
        hang_rate: 1.0,
        hang_path: Some("/rest/system_info".into()),
        malformed_json_rate: 0.0,
        ..Faults::default()
    });
    let key = format!("api_key {}", ctx.sim.credentials().api_key);
    let hung = ctx
        .http
        .get(ctx.v("/rest/system_info"))
        .header("Authorization", key)
        .timeout(Duration::from_millis(200))
        .send()
        .await;
    assert!(hung.unwrap_err().is_timeout());
    assert_eq!(ctx.vget("/rest/analysis").await.0, StatusCode::OK);
    ctx.sim.set_faults(Faults {
        malformed_json_rate: 1.0,
        ..Faults::default()
    });
    let r = ctx
        .http
        .get(ctx.f("/devices/queries/devices/v1"))
        .bearer_auth(&ctx.token)
        .send()
        .await
        .unwrap();
    assert!(r.json::<Value>().await.is_err());
    let snap = ctx.sim.snapshot();
    assert_eq!((snap.counters.hung, snap.counters.malformed), (1, 1));
    assert!(
        snap.requests
            .iter()
            .any(|r| r.path == "/rest/system_info" && r.status == 0)
    );
    tokio::time::timeout(Duration::from_secs(5), ctx.sim.shutdown())
        .await
        .unwrap();
}

#[tokio::test]
async fn vmray_lists_longer_than_a_page_continue_once() {
    let scenario = Scenario {
        vmray_page_size: 2,
        ..Scenario::generate(&GenerateOptions {
            hashes: 12,
            seed: 8,
            ..GenerateOptions::default()
        })
    };
    let known = scenario
        .files
        .iter()
        .filter(|f| f.vmray_known.is_some())
        .count();
    assert!(known > 2);
    let ctx = Ctx::new(scenario).await;
    let (_, first) = ctx.vget("/rest/analysis").await;
    let mut count = first["data"].as_array().unwrap().len();
    let mut next = first["continuation_id"].as_u64();
    let id = next.unwrap();
    while let Some(c) = next {
        let (status, page) = ctx.vget(&format!("/rest/continuation/{c}")).await;
        assert_eq!(status, StatusCode::OK);
        count += page["data"].as_array().unwrap().len();
        next = page["continuation_id"].as_u64();
    }
    assert_eq!(count, known);
    assert_eq!(
        ctx.vget(&format!("/rest/continuation/{id}")).await.0,
        StatusCode::NOT_FOUND
    );
    ctx.sim.shutdown().await;
}

#[tokio::test]
async fn edits_between_cycles_are_visible_and_recorded() {
    let ctx = Ctx::new(small()).await;
    let id = ctx.sim.edit(|w| w.add_alert(0, AID2));
    let first = ctx.sim.snapshot().alerts[0].composite_id.clone();
    assert!(ctx.sim.edit(|w| w.set_alert_status(&first, "closed")));
    let alerts = ctx.alerts().await;
    assert_eq!(alerts.len(), 4);
    assert!(alerts.iter().any(|a| a["composite_id"] == id.as_str()));
    assert_eq!(
        alerts
            .iter()
            .find(|a| a["composite_id"] == first.as_str())
            .unwrap()["status"],
        "closed"
    );
    let snap = ctx.sim.snapshot();
    assert!(snap.changes.iter().any(|c| c.contains("arrived")));
    assert!(snap.requests_to("/alerts/combined").len() == 1);
    ctx.sim.shutdown().await;
}

#[tokio::test]
async fn filters_on_fields_the_resource_does_not_have_are_refused() {
    let ctx = Ctx::new(small()).await;
    let (status, body) = ctx
        .send(
            reqwest::Method::POST,
            "/alerts/combined/alerts/v1",
            json!({"filter": "product:'epp'+date_created:>='2025-01-01T00:00:00Z'", "limit": 10}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.to_string().contains("date_created"), "{body}");
    let (status, _) = ctx
        .send(
            reqwest::Method::POST,
            "/alerts/combined/alerts/v1",
            json!({"filter": "product:'epp'+created_timestamp:>='2025-01-01T00:00:00Z'+device.device_id:'x'", "limit": 10}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = ctx
        .get(
            "/quarantine/queries/quarantined-files/v1",
            &[("filter", "created_timestamp:>='2025-01-01T00:00:00Z'")],
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, _) = ctx
        .get(
            "/quarantine/queries/quarantined-files/v1",
            &[("filter", "date_created:>='2025-01-01T00:00:00Z'")],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn alerts_say_whether_falcon_judged_the_file_or_a_behaviour() {
    let mut s = small();
    s.alerts[1].detection = "ioa".into();
    s.alerts[2].detection = "overwatch".into();
    let ctx = Ctx::new(s).await;
    let alerts = ctx.alerts().await;
    let by_kind = |tactic: &str| {
        alerts
            .iter()
            .find(|a| a["tactic"] == tactic)
            .unwrap_or_else(|| panic!("no {tactic} alert in {alerts:?}"))
            .clone()
    };
    let ml = by_kind("Machine Learning");
    assert_eq!(ml["scenario"], "NGAV");
    assert_eq!(ml["pattern_disposition_details"]["quarantine_file"], true);
    assert_eq!(by_kind("Execution")["scenario"], "suspicious_activity");
    assert_eq!(
        by_kind("Falcon Overwatch")["pattern_disposition_details"]["quarantine_file"],
        false
    );
}

#[tokio::test]
async fn scripted_arrivals_appear_at_their_times_with_their_ids() {
    let mut scenario = small();
    scenario.resolve().unwrap();
    let gone_sha = scenario.files[1].sha256.clone().unwrap();
    let first = format!("{}:ind:{AID2}:900001", scenario.cid);
    let second = format!("{}:ind:{AID1}:900002", scenario.cid);
    let never = format!("{}:ind:{AID1}:900003", scenario.cid);
    let arrival = |after_ms: u64, id: &str, file: FileRef, aid: &str, quarantined: bool| Arrival {
        after_ms,
        alert: ArrivingAlert {
            composite_id: id.to_string(),
            file,
            device_id: aid.into(),
            status: "new".into(),
            severity: 90,
            quarantined,
            detection: "ml".into(),
        },
    };
    // Out of order on purpose: they arrive by time, not by position.
    scenario.arrivals = vec![
        arrival(900, &second, FileRef::Sha256(gone_sha.clone()), AID1, true),
        arrival(3_600_000, &never, FileRef::Index(0), AID1, false),
        arrival(500, &first, FileRef::Index(0), AID2, false),
    ];
    let wall0 = time::OffsetDateTime::now_utc();
    let t0 = tokio::time::Instant::now();
    let ctx = Ctx::new(scenario).await;
    assert_eq!(ctx.sim.snapshot().alerts.len(), 3);
    assert_eq!(ctx.sim.arrivals_pending(), 3);
    let expected = [(first.as_str(), 500u64), (second.as_str(), 900)];
    let mut seen_at: Vec<Option<Duration>> = vec![None, None];
    let mut early_answers = 0;
    while seen_at.iter().any(Option::is_none) {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the arrivals never came"
        );
        let ids: Vec<String> = ctx
            .alerts()
            .await
            .iter()
            .map(|a| a["composite_id"].as_str().unwrap().to_string())
            .collect();
        // The answer was complete by now, so an alert in it arrived no later than this.
        let answered = t0.elapsed();
        for (k, (id, after_ms)) in expected.iter().enumerate() {
            if ids.iter().any(|x| x == id) {
                assert!(
                    answered >= Duration::from_millis(*after_ms),
                    "{id} was listed {answered:?} after the start, before its time"
                );
                seen_at[k].get_or_insert(answered);
            }
        }
        assert!(!ids.contains(&never));
        if answered < Duration::from_millis(500) {
            early_answers += 1;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        early_answers > 0,
        "no query was answered before the first arrival"
    );
    assert_eq!(ctx.sim.arrivals_pending(), 1);
    let alerts = ctx.alerts().await;
    let snap = ctx.sim.snapshot();
    for (k, (id, after_ms)) in expected.iter().enumerate() {
        let a = snap.alert(id).unwrap();
        let due = wall0 + Duration::from_millis(*after_ms);
        let late = a.created - due;
        assert!(
            late >= time::Duration::ZERO && late < time::Duration::milliseconds(200),
            "{id} was created {late} after it was due"
        );
        assert!(a.created <= wall0 + seen_at[k].unwrap());
        assert_eq!(a.updated, a.created);
        assert_eq!(a.severity, 90);
        let listed = alerts.iter().find(|x| x["composite_id"] == *id).unwrap();
        let created = time::OffsetDateTime::parse(
            listed["created_timestamp"].as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap();
        assert!((created - a.created).abs() < time::Duration::milliseconds(1));
        assert_eq!(listed["updated_timestamp"], listed["created_timestamp"]);
    }
    let by_hash = snap.alert(&second).unwrap();
    assert_eq!(by_hash.sha256, gone_sha);
    assert_eq!(
        by_hash.quarantined_files,
        vec![format!("{AID1}_{gone_sha}")]
    );
    assert!(
        snap.changes
            .iter()
            .any(|c| c.contains(&first) && c.contains("arrived"))
    );
    ctx.sim.shutdown().await;
}

#[tokio::test]
async fn commented_at_is_set_by_the_first_comment_only() {
    let ctx = Ctx::new(small()).await;
    let ids: Vec<String> = ctx
        .sim
        .snapshot()
        .alerts
        .iter()
        .map(|a| a.composite_id.clone())
        .collect();
    let patch = |id: &str, params: Value| {
        ctx.send(
            reqwest::Method::PATCH,
            "/alerts/entities/alerts/v3",
            json!({"composite_ids": [id], "action_parameters": params}),
        )
    };
    let commented = |id: &str| ctx.sim.snapshot().alert(id).unwrap().commented_at;
    assert!(ids.iter().all(|id| commented(id).is_none()));
    // Changes other than comments leave it unset.
    let (status, _) = patch(&ids[0], json!([{"name": "add_tag", "value": "VMRAY"}, {"name": "update_status", "value": "in_progress"}])).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(commented(&ids[0]), None);
    let before = time::OffsetDateTime::now_utc();
    let (status, _) = patch(
        &ids[0],
        json!([{"name": "append_comment", "value": "VMRay: malicious"}]),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let first = commented(&ids[0]).expect("the first comment sets commented_at");
    assert!(first >= before && first <= time::OffsetDateTime::now_utc());
    assert_eq!(ctx.sim.snapshot().alert(&ids[0]).unwrap().updated, first);
    tokio::time::sleep(Duration::from_millis(5)).await;
    let (status, _) = patch(
        &ids[0],
        json!([{"name": "append_comment", "value": "VMRay: part 2"}]),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let snap = ctx.sim.snapshot();
    let a = snap.alert(&ids[0]).unwrap();
    assert_eq!(a.comments.len(), 2);
    assert_eq!(a.commented_at, Some(first));
    assert!(a.updated > first);
    // A refused comment (too long, or an alert Falcon cannot change) does not count.
    let (status, _) = patch(
        &ids[1],
        json!([{"name": "append_comment", "value": "z".repeat(1024)}]),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    ctx.sim.edit(|w| w.refused_entities.insert(ids[2].clone()));
    let (status, body) = patch(
        &ids[2],
        json!([{"name": "append_comment", "value": "VMRay: clean"}]),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["errors"][0]["code"], 409);
    assert_eq!(commented(&ids[1]), None);
    assert_eq!(commented(&ids[2]), None);
    // The snapshot carries it for a benchmark's detection-to-comment latency.
    let json = serde_json::to_value(ctx.sim.snapshot()).unwrap();
    let alert = |id: &str| {
        json["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["composite_id"] == id)
            .unwrap()
            .clone()
    };
    assert!(alert(&ids[0])["commented_at"].is_string());
    assert!(alert(&ids[1])["commented_at"].is_null());
    ctx.sim.shutdown().await;
}
