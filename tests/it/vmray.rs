//! The VMRay client against a fake VMRay on 127.0.0.1 that answers with the recorded-shape
//! fixtures of `tests/fixtures/vmray/`.

use std::collections::BTreeSet;
use std::time::Duration;

use falcon_vmray_connector::config::{AnalyzerMode, Vmray};
use falcon_vmray_connector::model::{IocSet, Sha256, Verdict, Vti};
use falcon_vmray_connector::vmray::{
    SubmissionState, SubmitOptions, Submitted, VmrayClient, VmrayError, VmraySettings,
};
use secrecy::SecretString;
use wiremock::matchers::{method, path, query_param};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

use crate::support::API_KEY;

const SAMPLE_SHA: &str = "0228f4d370de650dce0e27343234a8db97443cced1bccf66ca10c6e3724415a8";
const SAMPLE_ID: u64 = 9412876;
const SUBMISSION_ID: u64 = 11234567;

fn fixture(name: &str) -> serde_json::Value {
    let text = match name {
        "analyses_error" => include_str!("../fixtures/vmray/analyses_error.json"),
        "analyses_ok" => include_str!("../fixtures/vmray/analyses_ok.json"),
        "error_response" => include_str!("../fixtures/vmray/error_response.json"),
        "error_response_429" => include_str!("../fixtures/vmray/error_response_429.json"),
        "iocs_malicious" => include_str!("../fixtures/vmray/iocs_malicious.json"),
        "jobs_inwork" => include_str!("../fixtures/vmray/jobs_inwork.json"),
        "sample_lookup_empty" => include_str!("../fixtures/vmray/sample_lookup_empty.json"),
        "sample_lookup_malicious" => include_str!("../fixtures/vmray/sample_lookup_malicious.json"),
        "submission_finished" => include_str!("../fixtures/vmray/submission_finished.json"),
        "submission_running" => include_str!("../fixtures/vmray/submission_running.json"),
        "submit_response" => include_str!("../fixtures/vmray/submit_response.json"),
        "submit_response_errors" => include_str!("../fixtures/vmray/submit_response_errors.json"),
        "system_info" => include_str!("../fixtures/vmray/system_info.json"),
        "vtis" => include_str!("../fixtures/vmray/vtis.json"),
        other => panic!("no fixture {other}"),
    };
    serde_json::from_str(text).unwrap()
}

fn ok(name: &str) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(fixture(name))
}

fn sha(s: &str) -> Sha256 {
    s.parse().unwrap()
}

fn settings(server: &MockServer) -> VmraySettings {
    let config = Vmray {
        api_key: SecretString::from(API_KEY),
        connector_name: "TestConnector".into(),
        submission_comment: "Sample from the test".into(),
        submission_tags: vec!["CrowdStrike".into(), "Falcon".into()],
        analysis_timeout: 240,
        default_analyzer_mode: AnalyzerMode::StaticDynamic,
        ..Vmray::default()
    };
    let mut settings = VmraySettings::from_config(&config);
    settings.base_url = format!("{}/", server.uri());
    settings.connect_timeout = Duration::from_millis(500);
    settings.request_timeout = Duration::from_secs(2);
    settings.upload_timeout = Duration::from_secs(2);
    settings.max_retries = 2;
    settings.max_retry_wait = Duration::from_millis(20);
    settings
}

fn client(server: &MockServer) -> VmrayClient {
    VmrayClient::new(settings(server)).unwrap()
}

async fn mount(server: &MockServer, verb: &str, route: &str, response: ResponseTemplate) {
    Mock::given(method(verb))
        .and(path(route))
        .respond_with(response)
        .mount(server)
        .await;
}

async fn requests_to(server: &MockServer, verb: &str, route: &str) -> Vec<Request> {
    server
        .received_requests()
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.method.as_str() == verb && r.url.path() == route)
        .collect()
}

/// A sample file on disk, small: the content does not matter to the fake.
fn sample_file() -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), b"MZ\x90\x00 not really a PE").unwrap();
    file
}

fn set<T: Ord + Clone>(items: &[T]) -> BTreeSet<T> {
    items.iter().cloned().collect()
}

fn strings(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn lookup_reads_the_sample_fixture_and_the_analysis_time_on_demand() {
    let server = MockServer::start().await;
    mount(
        &server,
        "GET",
        &format!("/rest/sample/sha256/{SAMPLE_SHA}"),
        ok("sample_lookup_malicious"),
    )
    .await;
    Mock::given(method("GET"))
        .and(path(format!("/rest/analysis/sample/{SAMPLE_ID}")))
        .and(query_param("_order", "desc"))
        .and(query_param("_limit", "1"))
        .respond_with(ok("analyses_ok"))
        .mount(&server)
        .await;

    let info = client(&server)
        .lookup(&sha(SAMPLE_SHA))
        .await
        .unwrap()
        .unwrap();

    assert_eq!(info.sample_id, SAMPLE_ID);
    assert_eq!(info.sha256, sha(SAMPLE_SHA));
    assert_eq!(info.verdict, Verdict::Malicious);
    assert_eq!(info.vti_score, Some(100));
    assert_eq!(info.severity.as_deref(), Some("malicious"));
    assert_eq!(info.webif_url, "https://eu.cloud.vmray.com/samples/9412876");
    assert_eq!(info.classifications, ["Downloader", "Spyware"]);
    assert_eq!(
        info.threat_names,
        ["AgentTesla", "Trojan.GenericKD.71234567"]
    );
    // A lookup costs one request; the analysis time is asked for only when needed.
    assert_eq!(info.last_analysis, None);
    assert_eq!(server.received_requests().await.unwrap().len(), 1);
    let last = client(&server).analysis_age(SAMPLE_ID).await.unwrap();
    // Newest of the listed analyses, a naive timestamp read as UTC: 2024-04-23T08:21:35.
    assert_eq!(last.unwrap().unix_timestamp(), 1_713_860_495);

    let sent = &server.received_requests().await.unwrap()[0];
    assert_eq!(
        sent.headers["authorization"],
        format!("api_key {API_KEY}").as_str()
    );
    assert_eq!(
        sent.headers["user-agent"],
        format!(
            "falcon-vmray-connector/{} (TestConnector)",
            env!("CARGO_PKG_VERSION")
        )
        .as_str()
    );
    assert_eq!(
        sent.url.path(),
        format!("/rest/sample/sha256/{SAMPLE_SHA}"),
        "no `//rest`"
    );
}

#[tokio::test]
async fn lookup_of_an_unknown_hash_is_none() {
    let server = MockServer::start().await;
    mount(
        &server,
        "GET",
        &format!("/rest/sample/sha256/{SAMPLE_SHA}"),
        ok("sample_lookup_empty"),
    )
    .await;
    assert_eq!(
        client(&server).lookup(&sha(SAMPLE_SHA)).await.unwrap(),
        None
    );
}

#[tokio::test]
async fn null_and_unknown_verdicts_lenient_scores_and_null_lists_never_fail_a_lookup() {
    for (verdict, expected) in [
        (serde_json::Value::Null, Verdict::NotAvailable),
        ("not_available".into(), Verdict::NotAvailable),
        ("suspicious".into(), Verdict::Suspicious),
        ("clean".into(), Verdict::Clean),
        ("something_new".into(), Verdict::Unknown),
    ] {
        let server = MockServer::start().await;
        let mut body = fixture("sample_lookup_malicious");
        let sample = &mut body["data"][0];
        sample["sample_verdict"] = verdict.clone();
        sample["sample_vti_score"] = "malicious".into();
        sample["sample_classifications"] = serde_json::Value::Null;
        sample["sample_threat_names"] = serde_json::Value::Null;
        mount(
            &server,
            "GET",
            &format!("/rest/sample/sha256/{SAMPLE_SHA}"),
            ResponseTemplate::new(200).set_body_json(body),
        )
        .await;
        mount(
            &server,
            "GET",
            &format!("/rest/analysis/sample/{SAMPLE_ID}"),
            ok("sample_lookup_empty"),
        )
        .await;

        let info = client(&server)
            .lookup(&sha(SAMPLE_SHA))
            .await
            .unwrap()
            .unwrap();

        assert_eq!(info.verdict, expected, "{verdict}");
        assert_eq!(info.vti_score, None);
        assert!(info.classifications.is_empty() && info.threat_names.is_empty());
        assert_eq!(info.last_analysis, None);
    }
}

#[tokio::test]
async fn an_error_envelope_becomes_a_typed_error() {
    let server = MockServer::start().await;
    mount(
        &server,
        "GET",
        "/rest/sample/42",
        ResponseTemplate::new(404).set_body_json(fixture("error_response")),
    )
    .await;
    mount(
        &server,
        "GET",
        "/rest/submission/7",
        ResponseTemplate::new(401).set_body_json(
            serde_json::json!({"result": "error", "error_msg": "Authentication failed"}),
        ),
    )
    .await;
    mount(
        &server,
        "GET",
        "/rest/submission/8",
        ResponseTemplate::new(400).set_body_json(
            serde_json::json!({"result": "error", "error_msg": "Invalid parameter"}),
        ),
    )
    .await;
    mount(
        &server,
        "GET",
        "/rest/submission/9",
        ResponseTemplate::new(200)
            .set_body_json(serde_json::json!({"result": "error", "error_msg": "odd but possible"})),
    )
    .await;
    let vmray = client(&server);

    assert!(
        matches!(vmray.sample(42).await, Err(VmrayError::NotFound { what }) if what == "sample 42")
    );
    assert!(matches!(
        vmray.submission_state(7).await,
        Err(VmrayError::Unauthorized)
    ));
    assert!(matches!(vmray.submission_state(8).await,
        Err(VmrayError::Api { status: 400, message }) if message == "Invalid parameter"));
    assert!(matches!(vmray.submission_state(9).await,
        Err(VmrayError::Api { status: 200, message }) if message == "odd but possible"));
    // None of these is worth a retry.
    assert_eq!(server.received_requests().await.unwrap().len(), 4);
}

#[tokio::test]
async fn a_non_json_answer_is_an_error_quoting_the_body() {
    let server = MockServer::start().await;
    let html = "<html><body><h1>502 Bad Gateway</h1></body></html>";
    mount(
        &server,
        "GET",
        "/rest/submission/1",
        ResponseTemplate::new(502).set_body_string(html),
    )
    .await;
    mount(
        &server,
        "GET",
        "/rest/submission/2",
        ResponseTemplate::new(200).set_body_string("<html>login</html>"),
    )
    .await;
    let vmray = client(&server);

    let err = vmray.submission_state(1).await.unwrap_err();
    assert!(
        matches!(&err, VmrayError::Api { status: 502, message } if message.contains("502 Bad Gateway")),
        "{err}"
    );
    // 5xx is retried: 1 + max_retries (2) attempts.
    assert_eq!(
        requests_to(&server, "GET", "/rest/submission/1")
            .await
            .len(),
        3
    );

    let err = vmray.submission_state(2).await.unwrap_err();
    assert!(
        matches!(&err, VmrayError::Decode { what } if what.contains("<html>login</html>")),
        "{err}"
    );
}

/// A wrong vmray.url (a web server, a proxy, a wrong path) answers 404 or 405 with a page or with
/// JSON that is not VMRay's envelope: that says nothing about the sample or submission asked for,
/// so it is the service's failure with a message naming vmray.url, while VMRay's own JSON 404 for
/// one submission stays that submission's. A 404 for a hash lookup is never VMRay's (an unknown
/// hash is an empty list).
#[tokio::test]
async fn a_404_or_405_that_is_not_vmrays_envelope_is_the_services_and_names_vmray_url() {
    use falcon_vmray_connector::pipeline::blame::{self, Blame};
    let server = MockServer::start().await;
    let page = "<html><body><h1>Not Found</h1>The requested URL was not found.</body></html>";
    mount(
        &server,
        "GET",
        "/rest/submission/3",
        ResponseTemplate::new(404).set_body_string(page),
    )
    .await;
    mount(
        &server,
        "GET",
        "/rest/submission/4",
        ResponseTemplate::new(405).set_body_string("<html>Method Not Allowed</html>"),
    )
    .await;
    mount(
        &server,
        "GET",
        "/rest/submission/5",
        ResponseTemplate::new(404).set_body_json(serde_json::json!({"detail": "Not Found"})),
    )
    .await;
    mount(
        &server,
        "GET",
        "/rest/submission/6",
        ResponseTemplate::new(404).set_body_json(fixture("error_response")),
    )
    .await;
    mount(
        &server,
        "GET",
        &format!("/rest/sample/sha256/{SAMPLE_SHA}"),
        ResponseTemplate::new(404).set_body_json(fixture("error_response")),
    )
    .await;
    let vmray = client(&server);

    for id in [3, 4, 5] {
        let err = vmray.submission_state(id).await.unwrap_err();
        assert!(matches!(err, VmrayError::Decode { .. }), "{id}: {err}");
        assert!(err.to_string().contains("check vmray.url"), "{id}: {err}");
        assert_eq!(blame::vmray(&err), Blame::Service, "{id}: {err}");
    }
    let err = vmray.lookup(&sha(SAMPLE_SHA)).await.unwrap_err();
    assert!(err.to_string().contains("check vmray.url"), "{err}");
    assert_eq!(blame::vmray(&err), Blame::Service, "{err}");

    let err = vmray.submission_state(6).await.unwrap_err();
    assert!(matches!(err, VmrayError::NotFound { .. }), "{err}");
    assert_eq!(blame::vmray(&err), Blame::Sample, "{err}");
    // None of these is worth a retry.
    assert_eq!(server.received_requests().await.unwrap().len(), 5);
}

#[tokio::test]
async fn a_429_is_retried_after_retry_after_and_then_succeeds() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(format!("/rest/submission/{SUBMISSION_ID}")))
        .respond_with(
            ResponseTemplate::new(429)
                .insert_header("Retry-After", "1")
                .set_body_json(fixture("error_response_429")),
        )
        .up_to_n_times(1)
        .mount(&server)
        .await;
    mount(
        &server,
        "GET",
        &format!("/rest/submission/{SUBMISSION_ID}"),
        ok("submission_running"),
    )
    .await;

    let started = std::time::Instant::now();
    let state = client(&server)
        .submission_state(SUBMISSION_ID)
        .await
        .unwrap();

    assert_eq!(state, SubmissionState::Running);
    assert_eq!(
        requests_to(&server, "GET", &format!("/rest/submission/{SUBMISSION_ID}"))
            .await
            .len(),
        2
    );
    // Retry-After (1 s) is honoured up to the cap, here max_retry_wait = 20 ms.
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(20) && waited < Duration::from_millis(900),
        "{waited:?}"
    );
}

#[tokio::test]
async fn a_429_that_persists_is_rate_limited_after_the_retries() {
    let server = MockServer::start().await;
    mount(
        &server,
        "GET",
        "/rest/sample/1/vtis",
        ResponseTemplate::new(429)
            .insert_header("Retry-After", "1")
            .set_body_json(fixture("error_response_429")),
    )
    .await;

    assert!(matches!(
        client(&server).vtis(1).await,
        Err(VmrayError::RateLimited)
    ));
    assert_eq!(server.received_requests().await.unwrap().len(), 3);
}

#[tokio::test]
async fn health_reports_version_and_upload_limit() {
    let server = MockServer::start().await;
    mount(&server, "GET", "/rest/system_info", ok("system_info")).await;

    let health = client(&server).health().await.unwrap();

    assert_eq!(health.version.as_deref(), Some("2024.4.0"));
    assert_eq!(health.max_upload_bytes, Some(209_715_200));
    assert!(!health.limited_key);
}

#[tokio::test]
async fn health_falls_back_to_an_analysis_read_when_system_info_is_forbidden() {
    let server = MockServer::start().await;
    mount(
        &server,
        "GET",
        "/rest/system_info",
        ResponseTemplate::new(403).set_body_json(
            serde_json::json!({"result": "error", "error_msg": "Permission denied"}),
        ),
    )
    .await;
    Mock::given(method("GET"))
        .and(path("/rest/analysis"))
        .and(query_param("_limit", "1"))
        .respond_with(ok("analyses_ok"))
        .mount(&server)
        .await;

    let health = client(&server).health().await.unwrap();

    assert!(health.limited_key);
    assert_eq!((health.version, health.max_upload_bytes), (None, None));
}

#[tokio::test]
async fn health_with_a_wrong_key_is_unauthorized() {
    let server = MockServer::start().await;
    mount(
        &server,
        "GET",
        "/rest/system_info",
        ResponseTemplate::new(401).set_body_json(
            serde_json::json!({"result": "error", "error_msg": "Authentication failed"}),
        ),
    )
    .await;
    assert!(matches!(
        client(&server).health().await,
        Err(VmrayError::Unauthorized)
    ));
}

/// The text value of one multipart field, or None.
fn form_field(body: &str, name: &str) -> Option<String> {
    let marker = format!("name=\"{name}\"\r\n\r\n");
    let start = body.find(&marker)? + marker.len();
    let end = body[start..].find("\r\n--")? + start;
    Some(body[start..end].to_string())
}

#[tokio::test]
async fn submit_streams_the_file_with_every_configured_field() {
    let server = MockServer::start().await;
    mount(&server, "GET", "/rest/system_info", ok("system_info")).await;
    mount(
        &server,
        "POST",
        "/rest/sample/submit",
        ok("submit_response"),
    )
    .await;
    let file = sample_file();
    let options = SubmitOptions {
        reanalyze: true,
        original_filename: Some("Rechnung_ü.exe".into()),
        previous_submission: None,
    };

    let submitted = client(&server)
        .submit(file.path(), &sha(SAMPLE_SHA), &options)
        .await
        .unwrap();

    assert_eq!(
        submitted,
        Submitted {
            submission_id: SUBMISSION_ID,
            sample_id: SAMPLE_ID
        }
    );
    let posts = requests_to(&server, "POST", "/rest/sample/submit").await;
    assert_eq!(posts.len(), 1);
    let post = &posts[0];
    assert!(
        post.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("multipart/form-data")
    );
    assert!(
        post.headers.get("content-length").is_some(),
        "streamed with a known length, not chunked"
    );
    assert_eq!(
        post.headers["authorization"],
        format!("api_key {API_KEY}").as_str()
    );
    let body = String::from_utf8_lossy(&post.body);
    assert!(
        body.contains(&format!("name=\"sample_file\"; filename=\"{SAMPLE_SHA}\"")),
        "{body}"
    );
    assert!(body.contains("MZ"), "the file's bytes are in the body");
    assert_eq!(
        form_field(&body, "comment").as_deref(),
        Some("Sample from the test")
    );
    assert_eq!(
        form_field(&body, "tags").as_deref(),
        Some("CrowdStrike,Falcon")
    );
    assert_eq!(
        form_field(&body, "user_config").as_deref(),
        Some(r#"{"timeout":240}"#)
    );
    assert_eq!(
        form_field(&body, "analyzer_mode").as_deref(),
        Some("static_dynamic")
    );
    assert_eq!(form_field(&body, "reanalyze").as_deref(), Some("True"));
    assert_eq!(
        form_field(&body, "sample_filename_b64enc").as_deref(),
        Some("UmVjaG51bmdfw7wuZXhl")
    );
}

#[tokio::test]
async fn submit_without_reanalyze_sends_false_and_no_filename() {
    let server = MockServer::start().await;
    mount(
        &server,
        "POST",
        "/rest/sample/submit",
        ok("submit_response"),
    )
    .await;
    let file = sample_file();

    client(&server)
        .submit(file.path(), &sha(SAMPLE_SHA), &SubmitOptions::default())
        .await
        .unwrap();

    let post = &requests_to(&server, "POST", "/rest/sample/submit").await[0];
    let body = String::from_utf8_lossy(&post.body);
    assert_eq!(form_field(&body, "reanalyze").as_deref(), Some("False"));
    assert_eq!(form_field(&body, "sample_filename_b64enc"), None);
}

#[tokio::test]
async fn a_200_with_errors_and_no_submission_is_a_failure_with_vmrays_message() {
    let server = MockServer::start().await;
    mount(
        &server,
        "POST",
        "/rest/sample/submit",
        ok("submit_response_errors"),
    )
    .await;
    let file = sample_file();

    let err = client(&server)
        .submit(file.path(), &sha(SAMPLE_SHA), &SubmitOptions::default())
        .await
        .unwrap_err();

    assert!(
        matches!(&err, VmrayError::Api { status: 200, message }
        if message.contains("Submission not stored because no jobs were created")),
        "{err}"
    );
    assert_eq!(
        requests_to(&server, "POST", "/rest/sample/submit")
            .await
            .len(),
        1
    );
}

#[tokio::test]
async fn a_submit_that_times_out_is_not_resent_and_the_hash_is_looked_up() {
    let server = MockServer::start().await;
    mount(
        &server,
        "POST",
        "/rest/sample/submit",
        ok("submit_response").set_delay(Duration::from_secs(5)),
    )
    .await;
    mount(
        &server,
        "GET",
        &format!("/rest/sample/sha256/{SAMPLE_SHA}"),
        ok("sample_lookup_malicious"),
    )
    .await;
    let older = serde_json::json!({"submission_id": 11230000, "submission_sample_id": SAMPLE_ID});
    let mut newest = fixture("submission_running")["data"].clone();
    newest["submission_id"] = 11234999.into();
    mount(
        &server,
        "GET",
        &format!("/rest/submission/sample/{SAMPLE_ID}"),
        ResponseTemplate::new(200)
            .set_body_json(serde_json::json!({"result": "ok", "data": [older, newest]})),
    )
    .await;
    let mut settings = settings(&server);
    settings.upload_timeout = Duration::from_millis(300);
    let vmray = VmrayClient::new(settings).unwrap();
    vmray.set_max_upload_bytes(Some(1 << 20));
    let file = sample_file();

    let submitted = vmray
        .submit(file.path(), &sha(SAMPLE_SHA), &SubmitOptions::default())
        .await
        .unwrap();

    assert_eq!(
        submitted,
        Submitted {
            submission_id: 11234999,
            sample_id: SAMPLE_ID
        }
    );
    assert_eq!(
        requests_to(&server, "POST", "/rest/sample/submit")
            .await
            .len(),
        1,
        "never re-sent"
    );
    assert_eq!(
        requests_to(&server, "GET", &format!("/rest/sample/sha256/{SAMPLE_SHA}"))
            .await
            .len(),
        1
    );
}

#[tokio::test]
async fn a_timed_out_resubmission_is_not_mistaken_for_the_submissions_before_it() {
    let server = MockServer::start().await;
    mount(
        &server,
        "POST",
        "/rest/sample/submit",
        ok("submit_response").set_delay(Duration::from_secs(5)),
    )
    .await;
    mount(
        &server,
        "GET",
        &format!("/rest/sample/sha256/{SAMPLE_SHA}"),
        ok("sample_lookup_malicious"),
    )
    .await;
    let older = serde_json::json!({"submission_id": 11230000, "submission_sample_id": SAMPLE_ID});
    mount(
        &server,
        "GET",
        &format!("/rest/submission/sample/{SAMPLE_ID}"),
        ResponseTemplate::new(200)
            .set_body_json(serde_json::json!({"result": "ok", "data": [older]})),
    )
    .await;
    let mut settings = settings(&server);
    settings.upload_timeout = Duration::from_millis(300);
    let vmray = VmrayClient::new(settings).unwrap();
    vmray.set_max_upload_bytes(Some(1 << 20));
    let options = SubmitOptions {
        reanalyze: true,
        previous_submission: Some(11230000),
        ..SubmitOptions::default()
    };
    let err = vmray
        .submit(sample_file().path(), &sha(SAMPLE_SHA), &options)
        .await
        .unwrap_err();
    assert!(matches!(err, VmrayError::SubmitUnconfirmed { .. }), "{err}");
    assert_eq!(
        requests_to(&server, "POST", "/rest/sample/submit")
            .await
            .len(),
        1,
        "a timed-out upload may still be arriving: not sent again"
    );
}

#[tokio::test]
async fn an_ambiguous_submit_whose_sample_is_unknown_is_sent_once_more_then_unconfirmed() {
    let server = MockServer::start().await;
    mount(
        &server,
        "POST",
        "/rest/sample/submit",
        ResponseTemplate::new(503).set_body_string("Service Unavailable"),
    )
    .await;
    mount(
        &server,
        "GET",
        &format!("/rest/sample/sha256/{SAMPLE_SHA}"),
        ok("sample_lookup_empty"),
    )
    .await;
    let file = sample_file();

    let err = client(&server)
        .submit(file.path(), &sha(SAMPLE_SHA), &SubmitOptions::default())
        .await
        .unwrap_err();

    assert!(
        matches!(&err, VmrayError::SubmitUnconfirmed { sha256, reason }
        if *sha256 == sha(SAMPLE_SHA) && reason.contains("503")),
        "{err}"
    );
    assert_eq!(
        requests_to(&server, "POST", "/rest/sample/submit")
            .await
            .len(),
        2,
        "re-sent once, after the lookup showed it had not arrived"
    );
    assert_eq!(
        requests_to(&server, "GET", &format!("/rest/sample/sha256/{SAMPLE_SHA}"))
            .await
            .len(),
        2
    );
}

#[tokio::test]
async fn a_submit_refused_with_429_is_sent_again() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/rest/sample/submit"))
        .respond_with(
            ResponseTemplate::new(429)
                .insert_header("Retry-After", "1")
                .set_body_json(fixture("error_response_429")),
        )
        .up_to_n_times(1)
        .mount(&server)
        .await;
    mount(
        &server,
        "POST",
        "/rest/sample/submit",
        ok("submit_response"),
    )
    .await;
    let file = sample_file();

    let submitted = client(&server)
        .submit(file.path(), &sha(SAMPLE_SHA), &SubmitOptions::default())
        .await
        .unwrap();

    assert_eq!(submitted.submission_id, SUBMISSION_ID);
    let posts = requests_to(&server, "POST", "/rest/sample/submit").await;
    assert_eq!(posts.len(), 2);
    assert!(
        String::from_utf8_lossy(&posts[1].body).contains("MZ"),
        "the form is rebuilt with the file"
    );
}

#[tokio::test]
async fn a_file_above_the_instance_limit_is_refused_before_upload() {
    let server = MockServer::start().await;
    let mut info = fixture("system_info");
    info["data"]["webif_max_upload_size"] = 10.into();
    mount(
        &server,
        "GET",
        "/rest/system_info",
        ResponseTemplate::new(200).set_body_json(info),
    )
    .await;
    mount(
        &server,
        "POST",
        "/rest/sample/submit",
        ok("submit_response"),
    )
    .await;
    let vmray = client(&server);
    vmray.health().await.unwrap();
    let file = sample_file();

    let err = vmray
        .submit(file.path(), &sha(SAMPLE_SHA), &SubmitOptions::default())
        .await
        .unwrap_err();

    assert!(
        matches!(err, VmrayError::FileTooLarge { limit: 10, .. }),
        "{err}"
    );
    assert!(
        requests_to(&server, "POST", "/rest/sample/submit")
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn a_missing_sample_file_sends_nothing() {
    let server = MockServer::start().await;
    let vmray = client(&server);
    vmray.set_max_upload_bytes(Some(1 << 20));
    let err = vmray
        .submit(
            std::path::Path::new("/nonexistent/sample"),
            &sha(SAMPLE_SHA),
            &SubmitOptions::default(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, VmrayError::SampleFile { .. }), "{err}");
    assert!(server.received_requests().await.unwrap().is_empty());
}

#[tokio::test]
async fn submission_state_follows_the_reference_algorithm() {
    let server = MockServer::start().await;
    mount(
        &server,
        "GET",
        "/rest/submission/1",
        ok("submission_running"),
    )
    .await;
    mount(
        &server,
        "GET",
        "/rest/submission/2",
        ok("submission_finished"),
    )
    .await;
    mount(
        &server,
        "GET",
        "/rest/analysis/submission/2",
        ok("analyses_ok"),
    )
    .await;
    mount(
        &server,
        "GET",
        "/rest/submission/3",
        ok("submission_finished"),
    )
    .await;
    mount(
        &server,
        "GET",
        "/rest/analysis/submission/3",
        ok("analyses_error"),
    )
    .await;
    mount(
        &server,
        "GET",
        "/rest/submission/4",
        ok("submission_finished"),
    )
    .await;
    mount(
        &server,
        "GET",
        "/rest/analysis/submission/4",
        ok("sample_lookup_empty"),
    )
    .await;
    let mut errored = fixture("submission_finished");
    errored["data"]["submission_status"] = "error".into();
    mount(
        &server,
        "GET",
        "/rest/submission/5",
        ResponseTemplate::new(200).set_body_json(errored),
    )
    .await;
    let vmray = client(&server);

    assert_eq!(
        vmray.submission_state(1).await.unwrap(),
        SubmissionState::Running
    );
    assert_eq!(
        vmray.submission_state(2).await.unwrap(),
        SubmissionState::Finished
    );
    let SubmissionState::Failed { reason } = vmray.submission_state(3).await.unwrap() else {
        panic!("analyses_error must fail");
    };
    assert!(
        reason.contains("13456002") && reason.contains("13456003") && !reason.contains("13456001"),
        "{reason}"
    );
    assert_eq!(
        vmray.submission_state(4).await.unwrap(),
        SubmissionState::Finished,
        "no analyses is not a failure"
    );
    assert!(matches!(
        vmray.submission_state(5).await.unwrap(),
        SubmissionState::Failed { .. }
    ));
    assert!(
        requests_to(&server, "GET", "/rest/analysis/submission/1")
            .await
            .is_empty(),
        "running: no analysis call"
    );
}

#[tokio::test]
async fn continuation_ids_are_followed() {
    let server = MockServer::start().await;
    mount(
        &server,
        "GET",
        &format!("/rest/sample/sha256/{SAMPLE_SHA}"),
        ok("sample_lookup_malicious"),
    )
    .await;
    mount(
        &server,
        "POST",
        "/rest/sample/submit",
        ResponseTemplate::new(500).set_body_string("oops"),
    )
    .await;
    mount(
        &server,
        "GET",
        &format!("/rest/submission/sample/{SAMPLE_ID}"),
        ResponseTemplate::new(200)
            .set_body_json(serde_json::json!({"result": "ok", "continuation_id": 77,
            "data": [{"submission_id": 100, "submission_sample_id": SAMPLE_ID}]})),
    )
    .await;
    mount(&server, "GET", "/rest/continuation/77",
        ResponseTemplate::new(200).set_body_json(serde_json::json!({"result": "ok",
            "data": [{"submission_id": 300, "submission_sample_id": SAMPLE_ID}, {"submission_id": 200}]}))).await;
    let vmray = client(&server);
    vmray.set_max_upload_bytes(Some(1 << 20));
    let file = sample_file();

    let submitted = vmray
        .submit(file.path(), &sha(SAMPLE_SHA), &SubmitOptions::default())
        .await
        .unwrap();

    assert_eq!(
        submitted.submission_id, 300,
        "the newest is on the continued page"
    );
    assert_eq!(
        requests_to(&server, "GET", "/rest/continuation/77")
            .await
            .len(),
        1
    );
}

fn expected_malicious() -> IocSet {
    IocSet {
        // The sample's own file (category `Sample File`) and the Ransomware file are left out.
        sha256s: BTreeSet::new(),
        // The sample file's names are kept; the Ransomware file's are not.
        filenames: strings(&[
            "C:\\Users\\Q7kLm2\\Desktop\\Invoice_2024-0423.exe",
            "Invoice_2024-0423.exe",
        ]),
        // From the IP item and the URL's ip_addresses.
        ipv4: set(&["203.0.113.45".parse().unwrap()]),
        ipv6: BTreeSet::new(),
        // Domain item, the IP item's domains and the URL host, deduplicated.
        domains: strings(&["update-check.example"]),
        command_lines: strings(&[
            "\"C:\\Users\\Q7kLm2\\Desktop\\Invoice_2024-0423.exe\"",
            "\"C:\\Users\\Q7kLm2\\AppData\\Roaming\\svcupd\\svcupd.exe\" /silent",
        ]),
        image_names: strings(&[
            "c:\\users\\q7klm2\\desktop\\invoice_2024-0423.exe",
            "c:\\users\\q7klm2\\appdata\\roaming\\svcupd\\svcupd.exe",
        ]),
        registry_keys: strings(&[
            "HKEY_CURRENT_USER\\SOFTWARE\\Microsoft\\Windows\\CurrentVersion\\Run\\svcupd",
        ]),
        // From files, the Ransomware file's included (as the original did).
        classifications: strings(&["Ransomware", "Spyware"]),
        threat_names: strings(&["AgentTesla", "Filecoder.Generic"]),
    }
}

#[tokio::test]
async fn malicious_iocs_equal_the_hand_written_set() {
    let server = MockServer::start().await;
    // The fixture is unfiltered: items of other verdicts in it must be skipped.
    mount(
        &server,
        "GET",
        &format!("/rest/sample/{SAMPLE_ID}/iocs/verdict/malicious"),
        ok("iocs_malicious"),
    )
    .await;

    let iocs = client(&server)
        .iocs(SAMPLE_ID, &[Verdict::Malicious])
        .await
        .unwrap();
    let expected = expected_malicious();

    assert_eq!(iocs.sha256s, expected.sha256s, "sha256s");
    assert_eq!(iocs.filenames, expected.filenames, "filenames");
    assert_eq!(iocs.ipv4, expected.ipv4, "ipv4");
    assert_eq!(iocs.ipv6, expected.ipv6, "ipv6");
    assert_eq!(iocs.domains, expected.domains, "domains");
    assert_eq!(iocs.command_lines, expected.command_lines, "command_lines");
    assert_eq!(iocs.image_names, expected.image_names, "image_names");
    assert_eq!(iocs.registry_keys, expected.registry_keys, "registry_keys");
    assert_eq!(
        iocs.classifications, expected.classifications,
        "classifications"
    );
    assert_eq!(iocs.threat_names, expected.threat_names, "threat_names");
    assert_eq!(iocs, expected);
}

#[tokio::test]
async fn suspicious_iocs_add_ipv6_url_ip_literals_and_filename_items_but_no_memory_dump_hash() {
    let server = MockServer::start().await;
    for verdict in ["malicious", "suspicious"] {
        mount(
            &server,
            "GET",
            &format!("/rest/sample/{SAMPLE_ID}/iocs/verdict/{verdict}"),
            ok("iocs_malicious"),
        )
        .await;
    }

    let iocs = client(&server)
        .iocs(
            SAMPLE_ID,
            &[
                Verdict::Suspicious,
                Verdict::Malicious,
                Verdict::NotAvailable,
            ],
        )
        .await
        .unwrap();

    let mut expected = expected_malicious();
    // The memory dump (99b0340f...) is no hash IOC: that file never exists on disk.
    assert!(expected.sha256s.is_empty());
    expected
        .filenames
        .insert("C:\\Users\\Q7kLm2\\AppData\\Roaming\\svcupd\\config.dat".into());
    // 198.51.100.23 from the IP item and from `http://198.51.100.23:8080/...`, never a domain.
    expected.ipv4.insert("198.51.100.23".parse().unwrap());
    expected.ipv6 = set(&["2001:db8:85a3::8a2e:370:7334".parse().unwrap()]);
    expected.domains.insert("mail.smtp-relay.example".into());
    expected.command_lines.insert(
        "C:\\Windows\\system32\\cmd.exe /c ping 127.0.0.1 -n 3 > nul & del \"C:\\Users\\Q7kLm2\\Desktop\\Invoice_2024-0423.exe\"".into(),
    );
    expected
        .image_names
        .insert("c:\\windows\\syswow64\\cmd.exe".into());
    expected
        .registry_keys
        .insert("HKEY_CURRENT_USER\\SOFTWARE\\Mozilla\\Firefox\\Profiles".into());
    assert_eq!(iocs, expected);
    assert!(
        !iocs
            .domains
            .iter()
            .any(|d| d.contains("198.51") || d.contains(':'))
    );
    // One call per real verdict, none for not_available.
    assert_eq!(server.received_requests().await.unwrap().len(), 2);
}

#[tokio::test]
async fn vtis_read_category_operation_and_score() {
    let server = MockServer::start().await;
    mount(
        &server,
        "GET",
        &format!("/rest/sample/{SAMPLE_ID}/vtis"),
        ok("vtis"),
    )
    .await;

    let vtis = client(&server).vtis(SAMPLE_ID).await.unwrap();

    assert_eq!(vtis.len(), 6);
    assert_eq!(
        vtis[0],
        Vti {
            category: "Antivirus".into(),
            operation: "Malicious content was detected by heuristic scan".into(),
            score: 4,
        }
    );
    assert_eq!(
        vtis.iter().map(|v| v.score).collect::<Vec<_>>(),
        [4, 4, 4, 2, 2, 1]
    );
}

#[tokio::test]
async fn jobs_fixture_is_never_needed_to_decide_the_state() {
    // An empty or in-work job list must not change anything: the state comes from the
    // submission and its analyses only, so a fake serving jobs is never asked.
    let server = MockServer::start().await;
    mount(
        &server,
        "GET",
        &format!("/rest/job/submission/{SUBMISSION_ID}"),
        ok("jobs_inwork"),
    )
    .await;
    mount(
        &server,
        "GET",
        &format!("/rest/submission/{SUBMISSION_ID}"),
        ok("submission_finished"),
    )
    .await;
    mount(
        &server,
        "GET",
        &format!("/rest/analysis/submission/{SUBMISSION_ID}"),
        ok("analyses_ok"),
    )
    .await;

    assert_eq!(
        client(&server)
            .submission_state(SUBMISSION_ID)
            .await
            .unwrap(),
        SubmissionState::Finished
    );
    assert!(
        requests_to(
            &server,
            "GET",
            &format!("/rest/job/submission/{SUBMISSION_ID}")
        )
        .await
        .is_empty()
    );
}

#[tokio::test]
async fn ssl_verify_off_builds_and_a_bad_ca_bundle_is_a_clear_error() {
    let server = MockServer::start().await;
    let mut lax = settings(&server);
    lax.ssl_verify = false;
    assert!(VmrayClient::new(lax).is_ok());

    let not_pem = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(not_pem.path(), "not a certificate").unwrap();
    for bundle in [not_pem.path().to_path_buf(), "/nonexistent/ca.pem".into()] {
        let mut bad = settings(&server);
        bad.ca_bundles = vec![falcon_vmray_connector::config::CaBundle::new(
            "vmray.ca_bundle",
            bundle,
        )];
        let err = VmrayClient::new(bad).unwrap_err();
        assert!(err.to_string().contains("vmray.ca_bundle"), "{err}");
    }
}

/// Peak resident memory of this process (VmHWM), in KiB.
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A fake VMRay that answers `system_info` and discards every uploaded byte, so the only memory
/// an upload can cost is the client's. Returns its base URL and the count of bytes it discarded.
async fn discarding_vmray() -> (String, std::sync::Arc<std::sync::atomic::AtomicU64>) {
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let discarded = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = discarded.clone();
    tokio::spawn(async move {
        loop {
            let (socket, _) = listener.accept().await.unwrap();
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut reader = BufReader::new(socket);
                loop {
                    let mut head = Vec::new();
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                        head.push(line);
                    }
                    let length: u64 = head
                        .iter()
                        .find_map(|l| {
                            let (name, value) = l.split_once(':')?;
                            name.eq_ignore_ascii_case("content-length")
                                .then(|| value.trim().parse().ok())?
                        })
                        .unwrap_or(0);
                    let copied =
                        tokio::io::copy(&mut (&mut reader).take(length), &mut tokio::io::sink())
                            .await
                            .unwrap();
                    counter.fetch_add(copied, Ordering::SeqCst);
                    let body = if head[0].starts_with("GET /rest/system_info") {
                        fixture("system_info")
                    } else {
                        fixture("submit_response")
                    }
                    .to_string();
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    reader.get_mut().write_all(answer.as_bytes()).await.unwrap();
                }
            });
        }
    });
    (url, discarded)
}

/// Run alone, it measures what a 100 MB upload costs in memory:
/// `cargo test --test it -- --ignored --exact vmray::a_100_mb_submission_keeps_memory_flat --nocapture`
#[tokio::test]
#[ignore = "uploads 100 MB; run alone so the peak RSS is this test's"]
async fn a_100_mb_submission_keeps_memory_flat() {
    const SIZE: u64 = 100 * 1024 * 1024;
    let (url, discarded) = discarding_vmray().await;
    let server = MockServer::start().await;
    let mut settings = settings(&server);
    settings.base_url = url;
    settings.upload_timeout = Duration::from_secs(120);
    let vmray = VmrayClient::new(settings).unwrap();
    vmray.health().await.unwrap();
    let file = tempfile::NamedTempFile::new().unwrap();
    file.as_file().set_len(SIZE).unwrap(); // sparse: reads as zeros, costs no disk
    let before = peak_rss_kib();

    let submitted = vmray
        .submit(file.path(), &sha(SAMPLE_SHA), &SubmitOptions::default())
        .await
        .unwrap();

    let after = peak_rss_kib();
    let sent = discarded.load(std::sync::atomic::Ordering::SeqCst);
    println!(
        "uploaded {sent} bytes; peak RSS before {before} KiB, after {after} KiB, growth {} KiB",
        after - before
    );
    assert_eq!(submitted.submission_id, SUBMISSION_ID);
    assert!(sent > SIZE, "the whole file went out ({sent} bytes)");
    assert!(
        after - before < 20 * 1024,
        "peak RSS grew by {} KiB",
        after - before
    );
}

#[tokio::test]
async fn a_key_that_may_not_list_analyses_still_gets_the_lookup() {
    let server = MockServer::start().await;
    mount(
        &server,
        "GET",
        &format!("/rest/sample/sha256/{SAMPLE_SHA}"),
        ok("sample_lookup_malicious"),
    )
    .await;
    mount(
        &server,
        "GET",
        &format!("/rest/analysis/sample/{SAMPLE_ID}"),
        ResponseTemplate::new(403).set_body_json(
            serde_json::json!({"result": "error", "error_msg": "Permission denied"}),
        ),
    )
    .await;

    let client = client(&server);
    let info = client.lookup(&sha(SAMPLE_SHA)).await.unwrap().unwrap();
    let age = client.analysis_age(info.sample_id).await.unwrap();
    assert_eq!((info.verdict, age), (Verdict::Malicious, None));
}
