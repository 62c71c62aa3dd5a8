//! The connector measured against its limits, on the built-in simulator with 20 ms of latency
//! per request. Prints tables; `BENCHMARKS.md` records them.
//!
//! Run: `cargo bench --bench cycle` (release build, every section). Not part of `cargo test`.
//! One argument picks one section:
//! - `mixed`: one cycle of known and unknown samples at `concurrency` 8 and 32;
//! - `known`: cycles of known hashes, finish-to-update latency, peak and idle RSS;
//! - `latency`: the daemon (`Connector::run`) with 200 alerts arriving while it runs, from each
//!   alert's creation to the comment with its verdict (`BENCH_TIME_SPAN` overrides the 60 s
//!   `time_span` for a quick run);
//! - `inflight`: the daemon binary with 1,000 analyses in flight: status requests per
//!   submission per `poll_interval`, and its RSS against the idle daemon's.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use falcon_vmray_connector::config::{self, Config, Env, RuntimeMode};
use falcon_vmray_connector::pipeline::Connector;
use falcon_vmray_connector::sim::scenario::{
    AlertSpec, DetonationSpec, FileSpec, HostSpec, IocDomain, IocIp, IocReportSpec, KnownSpec,
    QuarantineSpec,
};
use falcon_vmray_connector::sim::{Faults, Scenario, Service, Simulator, TenantSnapshot};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

const LATENCY_MS: u64 = 20;
const RATE_LIMIT_PER_MINUTE: f64 = 6000.0;
const POLL_INTERVAL_S: u64 = 1;
const MIB: u64 = 1024 * 1024;
/// How long VMRay takes to analyse an unknown sample in the mixed and latency sections.
const ANALYSIS_MS: u64 = 2000;
/// The `time_span` of the latency and inflight sections unless `BENCH_TIME_SPAN` says otherwise.
const TIME_SPAN_S: u64 = 60;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    // `cargo bench` passes `--bench` (and may pass other flags): the section is the first
    // argument that is not a flag.
    let section = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let wanted = |name: &str| section.as_deref().is_none_or(|s| s == name);
    if let Some(s) = section.as_deref()
        && !["mixed", "known", "latency", "inflight"].contains(&s)
    {
        eprintln!(
            "unknown section {s:?}: choose mixed, known, latency or inflight, or none for all"
        );
        std::process::exit(2);
    }
    if wanted("mixed") {
        let mixed: Vec<MixedRow> = [8, 16, 32]
            .into_iter()
            .map(|concurrency| runtime.block_on(mixed_cycle(200, concurrency)))
            .collect();
        print_mixed(&mixed);
    }
    if wanted("latency") {
        let latency = runtime.block_on(arrival_latency());
        print_arrival_latency(&latency);
    }
    if wanted("inflight") {
        let inflight = runtime.block_on(in_flight(1000));
        print_in_flight(&inflight);
    }
    if wanted("known") {
        known_section(&runtime);
    }
}

fn known_section(runtime: &tokio::runtime::Runtime) {
    let mut rows = Vec::new();
    for hashes in [50, 200, 1000] {
        rows.push(runtime.block_on(known_hashes_cycle(hashes)));
    }
    let latency = runtime.block_on(finish_to_update_latency());
    let peak = runtime.block_on(peak_rss_with_large_sample(300 * MIB));
    let idle = runtime.block_on(idle_daemon_rss(&[]));
    let idle_two_arenas = runtime.block_on(idle_daemon_rss(&[("MALLOC_ARENA_MAX", "2")]));

    println!(
        "\nfalcon-vmray-connector cycle benchmark (simulator, {LATENCY_MS} ms per request, rate limit {RATE_LIMIT_PER_MINUTE}/min)\n"
    );
    println!(
        "| known hashes | alerts | cycle s | Falcon req | Falcon req/hash | VMRay req/hash | critical path s | rate floor s | floor s | measured / floor |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {} | {:.2} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2}x |",
            r.hashes,
            r.alerts,
            r.wall.as_secs_f64(),
            r.falcon,
            r.falcon as f64 / r.hashes as f64,
            r.vmray as f64 / r.hashes as f64,
            r.critical_path,
            r.rate_floor,
            r.floor(),
            r.wall.as_secs_f64() / r.floor(),
        );
    }
    println!();
    println!(
        "| analysis finished -> alert updated | max {:.2} s, mean {:.2} s over {} samples (poll_interval {POLL_INTERVAL_S} s; target <= {} s) |",
        latency.max,
        latency.mean,
        latency.samples,
        POLL_INTERVAL_S + 1
    );
    println!(
        "| peak RSS, one {} MiB sample downloaded, decrypted, verified, submitted | {:.1} MiB (target <= 50 MB) |",
        peak.size / MIB,
        peak.kib as f64 / 1024.0
    );
    println!(
        "| RSS of the idle daemon between cycles | {:.1} MiB; with MALLOC_ARENA_MAX=2 {:.1} MiB (target <= 15 MB) |",
        idle as f64 / 1024.0,
        idle_two_arenas as f64 / 1024.0
    );
}

struct CycleRow {
    hashes: usize,
    alerts: usize,
    wall: Duration,
    falcon: usize,
    vmray: usize,
    critical_path: f64,
    rate_floor: f64,
}

impl CycleRow {
    fn floor(&self) -> f64 {
        self.critical_path.max(self.rate_floor)
    }
}

fn device(n: usize) -> String {
    format!("{:032x}", 0xbe00 + n)
}

/// `hashes` files VMRay already knows (40% malicious, 20% suspicious, 40% clean, as the
/// simulator's generator mixes them), two alerts each on two hosts, a quarantine record for
/// every fourth.
fn known_scenario(hashes: usize) -> Scenario {
    let hosts = 20;
    let mut scenario = Scenario {
        hosts: (0..hosts)
            .map(|n| HostSpec {
                device_id: device(n),
                hostname: format!("host-{n}"),
                platform: "Windows".into(),
                status: "normal".into(),
            })
            .collect(),
        ..Scenario::default()
    };
    for i in 0..hashes {
        let verdict = match i % 5 {
            0 | 1 => "malicious",
            2 => "suspicious",
            _ => "clean",
        };
        scenario.files.push(FileSpec {
            content_seed: 10_000 + i as u64,
            size: 1024,
            vmray_known: Some(KnownSpec {
                sample_id: 70_000 + i as u64,
                verdict: verdict.into(),
                analysed_ago_secs: 86_400,
            }),
            detonation: detonation(verdict, i, 0),
            ..FileSpec::default()
        });
        for k in 0..2 {
            scenario.alerts.push(AlertSpec {
                file: i,
                device_id: device((i + k) % hosts),
                ..AlertSpec::default()
            });
        }
        if i % 4 == 0 {
            scenario.quarantines.push(QuarantineSpec {
                file: i,
                device_id: device(i % hosts),
                ..QuarantineSpec::default()
            });
        }
    }
    scenario.faults = Faults {
        latency_ms: LATENCY_MS,
        ..Faults::default()
    };
    scenario
}

fn detonation(verdict: &str, i: usize, duration_ms: u64) -> DetonationSpec {
    DetonationSpec {
        verdict: verdict.into(),
        duration_ms,
        iocs: IocReportSpec {
            ips: vec![IocIp {
                ip: format!("198.51.{}.{}", i / 250 % 250, i % 250),
                verdict: verdict.into(),
                domains: vec![],
            }],
            domains: vec![IocDomain {
                domain: format!("c2-{i}.example"),
                verdict: verdict.into(),
            }],
            ..IocReportSpec::default()
        },
        ..DetonationSpec::default()
    }
}

/// A config file pointing at the simulator, in `dir`, polling every `POLL_INTERVAL_S`.
fn write_config(sim: &Simulator, dir: &Path, extra_general: &str) -> PathBuf {
    write_config_with(
        sim,
        dir,
        extra_general,
        &format!("poll_interval = {POLL_INTERVAL_S}"),
    )
}

/// A config file pointing at the simulator, in `dir`; `log_level` is `warn` unless
/// `extra_general` sets it, and `extra_vmray` goes into `[vmray]`.
fn write_config_with(
    sim: &Simulator,
    dir: &Path,
    extra_general: &str,
    extra_vmray: &str,
) -> PathBuf {
    let creds = sim.credentials();
    let root = dir.display();
    // A key given twice is a TOML error: the default level only when none is asked for.
    let level = if extra_general.contains("log_level") {
        ""
    } else {
        "log_level = \"warn\"\n"
    };
    let text = format!(
        "[general]\nlog_file = \"{root}/log/connector.log\"\n{level}state_file = \"{root}/state/connector.db\"\n{extra_general}\n\
         [crowdstrike]\nclient_id = \"{}\"\nclient_secret = \"{}\"\nbase_url = \"{}\"\ndownload_dir = \"{root}/downloads\"\n\
         [vmray]\napi_key = \"{}\"\nurl = \"{}\"\n{extra_vmray}\n",
        creds.client_id,
        creds.client_secret,
        sim.falcon_url(),
        creds.api_key,
        sim.vmray_url()
    );
    let path = dir.join("connector.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn load(path: &Path) -> Config {
    config::load(Some(path), &Env::default()).unwrap()
}

fn count(t: &TenantSnapshot, service: Service) -> usize {
    t.requests.iter().filter(|r| r.service == service).count()
}

async fn known_hashes_cycle(hashes: usize) -> CycleRow {
    let scenario = known_scenario(hashes);
    let alerts = scenario.alerts.len();
    let quarantines = scenario.quarantines.len();
    let sim = Simulator::start(scenario).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = load(&write_config(&sim, dir.path(), ""));
    let connector = Connector::new(config).unwrap();
    let started = Instant::now();
    let report = connector
        .run_cycle(&CancellationToken::new())
        .await
        .unwrap();
    let wall = started.elapsed();
    assert_eq!(report.known, hashes, "{}", report.summary());
    let t = sim.snapshot();
    let falcon = count(&t, Service::Falcon);
    let vmray = count(&t, Service::Vmray);
    sim.shutdown().await;
    // The longest chain of requests that must follow one another: the token, every page of
    // alerts (1000 a page, a cursor each), the quarantine query and its entities, then one hash:
    // lookup, IOCs, VTIs, then its alert update, IOC check, IOC create, quarantine update.
    let pages = alerts.div_ceil(1000) + 1 + quarantines.div_ceil(500);
    let chain = 1 + pages + 3 + 4;
    CycleRow {
        hashes,
        alerts,
        wall,
        falcon,
        vmray,
        critical_path: chain as f64 * LATENCY_MS as f64 / 1000.0,
        rate_floor: falcon as f64 / RATE_LIMIT_PER_MINUTE * 60.0,
    }
}

struct MixedRow {
    hashes: usize,
    uploads: usize,
    concurrency: usize,
    wall: Duration,
    first_known_acted: f64,
    last_upload: f64,
    falcon: usize,
    critical_path: f64,
    rate_floor: f64,
}

impl MixedRow {
    fn floor(&self) -> f64 {
        self.critical_path.max(self.rate_floor)
    }
}

fn print_mixed(rows: &[MixedRow]) {
    println!(
        "\nMixed cycle (simulator, {LATENCY_MS} ms per request, analysis {ANALYSIS_MS} ms, default poll_interval)\n"
    );
    println!(
        "| hashes | uploads | concurrency | cycle s | first known hash acted on after s | last upload after s | Falcon req | critical path s | rate floor s | floor s | measured / floor |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        println!(
            "| {} | {} | {} | {:.2} | {:.2} | {:.2} | {} | {:.2} | {:.2} | {:.2} | {:.2}x |",
            r.hashes,
            r.uploads,
            r.concurrency,
            r.wall.as_secs_f64(),
            r.first_known_acted,
            r.last_upload,
            r.falcon,
            r.critical_path,
            r.rate_floor,
            r.floor(),
            r.wall.as_secs_f64() / r.floor(),
        );
    }
}

/// `hashes` samples, two thirds unknown to VMRay (downloaded, uploaded, analysed in
/// `ANALYSIS_MS`), a third known: how long the cycle takes against its floor, and when the first
/// known hash's alert is updated.
async fn mixed_cycle(hashes: usize, concurrency: usize) -> MixedRow {
    let mut scenario = known_scenario(hashes);
    let mut uploads = 0;
    for (i, file) in scenario.files.iter_mut().enumerate() {
        if i % 3 != 0 {
            file.vmray_known = None;
            file.detonation.duration_ms = ANALYSIS_MS;
            uploads += 1;
        }
    }
    let alerts = scenario.alerts.len();
    let quarantines = scenario.quarantines.len();
    let sim = Simulator::start(scenario).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    // The default configuration (`poll_interval` 10 s) but for `concurrency`.
    let extra = format!("concurrency = {concurrency}");
    let config = load(&write_config_with(&sim, dir.path(), &extra, ""));
    let connector = Connector::new(config).unwrap();
    let started_at = OffsetDateTime::now_utc();
    let started = Instant::now();
    let report = connector
        .run_cycle(&CancellationToken::new())
        .await
        .unwrap();
    let wall = started.elapsed();
    assert_eq!(
        (report.known, report.submitted),
        (hashes - uploads, uploads),
        "{}",
        report.summary()
    );
    let t = sim.snapshot();
    sim.shutdown().await;
    let uploaded: HashSet<&str> = t.submissions.iter().map(|s| s.sha256.as_str()).collect();
    // The connector's PATCH is what moved a known hash's alert's updated_timestamp.
    let first_known_acted = t
        .alerts
        .iter()
        .filter(|a| !uploaded.contains(a.sha256.as_str()) && !a.comments.is_empty())
        .map(|a| a.updated)
        .min()
        .map_or(f64::NAN, |at| (at - started_at).as_seconds_f64());
    let last_upload = t
        .submissions
        .iter()
        .map(|s| s.created)
        .max()
        .map_or(f64::NAN, |at| (at - started_at).as_seconds_f64());
    let falcon = count(&t, Service::Falcon);
    // The longest chain that must follow one another: the token, every page of alerts and the
    // quarantine query and entities, then one unknown hash: lookup, download, upload, the poll
    // that finds the analysis finished (submission and its analyses), the sample's verdict,
    // IOCs, VTIs, the alert read-back and update, the IOC check and create, the quarantine
    // update; and the analysis itself in between.
    let pages = alerts.div_ceil(1000) + 1 + quarantines.div_ceil(500);
    let chain = 1 + pages + 13;
    MixedRow {
        hashes,
        uploads,
        concurrency,
        wall,
        first_known_acted,
        last_upload,
        falcon,
        critical_path: chain as f64 * LATENCY_MS as f64 / 1000.0 + ANALYSIS_MS as f64 / 1000.0,
        rate_floor: burst_aware_rate_floor(falcon),
    }
}

/// The shortest time the connector's Falcon rate limiter lets `requests` through in: it starts
/// with a burst of a tenth of `rate_limit_per_minute` and refills the rest less 1%
/// (`falcon::minute_quota`). A cycle of fewer requests than the burst has no rate floor.
fn burst_aware_rate_floor(requests: usize) -> f64 {
    let burst = RATE_LIMIT_PER_MINUTE / 10.0;
    let refill_per_minute = RATE_LIMIT_PER_MINUTE - burst - RATE_LIMIT_PER_MINUTE / 100.0;
    (requests as f64 - burst).max(0.0) / refill_per_minute * 60.0
}

struct Latency {
    max: f64,
    mean: f64,
    samples: usize,
}

/// Unknown samples with known detonation times: from the moment VMRay finishes each analysis
/// to the moment its first alert update reaches Falcon.
async fn finish_to_update_latency() -> Latency {
    let mut scenario = known_scenario(6);
    for (i, file) in scenario.files.iter_mut().enumerate() {
        file.vmray_known = None;
        file.detonation = detonation("malicious", i, 1500 + 700 * i as u64);
    }
    let sim = Simulator::start(scenario).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let connector = Connector::new(load(&write_config(&sim, dir.path(), ""))).unwrap();
    connector
        .run_cycle(&CancellationToken::new())
        .await
        .unwrap();
    let t = sim.snapshot();
    sim.shutdown().await;
    let mut delays = Vec::new();
    for submission in &t.submissions {
        let finished = submission.finish_time();
        // The connector's one PATCH is what moved each alert's updated_timestamp.
        let updated = t
            .alerts
            .iter()
            .filter(|a| a.sha256 == submission.sha256 && !a.comments.is_empty())
            .map(|a| a.updated)
            .min();
        if let Some(updated) = updated {
            delays.push((updated - finished).as_seconds_f64());
        }
    }
    let max = delays.iter().cloned().fold(0.0, f64::max);
    let mean = delays.iter().sum::<f64>() / delays.len().max(1) as f64;
    Latency {
        max,
        mean,
        samples: delays.len(),
    }
}

struct Peak {
    size: u64,
    kib: u64,
}

fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_falcon-vmray-connector")
}

fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn spawn(config: &Path, command: &str, env: &[(&str, &str)]) -> Child {
    Command::new(binary())
        .envs(env.iter().copied())
        .arg("--config")
        .arg(config)
        .arg(command)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// One sample of `size` bytes, unknown to VMRay, handled by the real binary (`once`).
async fn peak_rss_with_large_sample(size: u64) -> Peak {
    let mut scenario = known_scenario(1);
    scenario.quarantines.clear();
    scenario.vmray_max_upload_bytes = size + MIB;
    scenario.faults = Faults::default();
    scenario.files[0].size = size;
    scenario.files[0].vmray_known = None;
    scenario.files[0].detonation = detonation("clean", 0, 0);
    let sim = Simulator::start(scenario).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&sim, dir.path(), "");
    let mut child = spawn(&config, "once", &[]);
    let pid = child.id();
    let mut peak = 0;
    loop {
        if let Some(kib) = status_kib(pid, "VmHWM:") {
            peak = peak.max(kib);
        }
        if let Ok(Some(status)) = child.try_wait() {
            assert!(status.success(), "the large-sample cycle failed");
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let t = sim.snapshot();
    assert_eq!(t.submissions.len(), 1, "the sample reached VMRay");
    assert_eq!(t.submissions[0].file_size, size);
    sim.shutdown().await;
    Peak { size, kib: peak }
}

/// RSS of `run` after its first cycle, while it sleeps until the next.
async fn idle_daemon_rss(env: &[(&str, &str)]) -> u64 {
    let sim = Simulator::start(known_scenario(20)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&sim, dir.path(), "time_span = 3600\nlog_level = \"info\"");
    let mut child = spawn(&config, "run", env);
    // Done with the first cycle: every alert carries its verdict and the daemon has sent
    // nothing for two seconds (the end-of-cycle IOC batch comes after the last comment). Read
    // from the simulator, not the log, so that it holds whatever the daemon's loop logs.
    let alerts = sim.edit(|w| w.alerts.len());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (commented, last) = sim.edit(|w| {
            (
                w.alerts.iter().filter(|a| a.commented_at.is_some()).count(),
                w.requests.last().map(|r| r.at),
            )
        });
        let quiet =
            last.is_some_and(|at| OffsetDateTime::now_utc() - at > time::Duration::SECOND * 2);
        if commented == alerts && quiet {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the daemon did not comment all {alerts} alerts and fall quiet within 60 s ({commented} commented)"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Idle means asleep: the runtime's blocking threads (zip extraction) have exited after
    // their 10 s keep-alive, as they have hours before the next cycle.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let rss = status_kib(child.id(), "VmRSS:").unwrap_or(0);
    // Where it is: heap and stacks (anonymous) or the binary's and libraries' pages (file).
    let anon = status_kib(child.id(), "RssAnon:").unwrap_or(0);
    let file = status_kib(child.id(), "RssFile:").unwrap_or(0);
    eprintln!(
        "idle daemon {env:?}: VmRSS {rss} KiB = RssAnon {anon} KiB + RssFile {file} KiB (+ shmem)"
    );
    let _ = child.kill();
    let _ = child.wait();
    sim.shutdown().await;
    rss
}

/// `time_span` of the latency and inflight sections: `BENCH_TIME_SPAN` seconds, else 60.
fn bench_time_span() -> u64 {
    match std::env::var("BENCH_TIME_SPAN") {
        Ok(text) => match text.trim().parse::<u64>() {
            Ok(secs) if secs > 0 => secs,
            _ => panic!(
                "BENCH_TIME_SPAN={text:?} is not a whole number of seconds above 0; unset it for 60"
            ),
        },
        Err(_) => TIME_SPAN_S,
    }
}

/// One alert per hash on `hashes` files, no quarantine records; every hash not a multiple of
/// three is unknown to VMRay and takes `analysis_ms` to analyse.
fn one_alert_per_hash(hashes: usize, analysis_ms: u64) -> Scenario {
    let mut scenario = known_scenario(hashes);
    // known_scenario gives each hash two alerts, one after the other: keep the first.
    scenario.alerts = scenario.alerts.into_iter().step_by(2).collect();
    scenario.quarantines.clear();
    for (i, file) in scenario.files.iter_mut().enumerate() {
        if i % 3 != 0 {
            file.vmray_known = None;
            file.detonation.duration_ms = analysis_ms;
        }
    }
    scenario
}

struct Spread {
    /// Seconds from each alert's creation to the comment with its verdict; `None`: never
    /// commented before the daemon was stopped.
    delays: Vec<Option<f64>>,
    target: f64,
}

impl Spread {
    fn commented(&self) -> Vec<f64> {
        let mut d: Vec<f64> = self.delays.iter().flatten().copied().collect();
        d.sort_by(f64::total_cmp);
        d
    }
    fn met(&self) -> usize {
        self.delays
            .iter()
            .flatten()
            .filter(|d| **d <= self.target)
            .count()
    }
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

struct ArrivalLatency {
    time_span: u64,
    poll_interval: u64,
    spread_over: u64,
    ran: Duration,
    stopped_by_cap: bool,
    unknown: Spread,
    known: Spread,
}

/// The daemon as it runs in production (default configuration but `time_span`), while 200
/// alerts arrive over three `time_span`s: from each alert's creation to the comment carrying
/// its verdict. Two thirds are for hashes VMRay analyses in `ANALYSIS_MS`, a third for hashes it
/// knows.
async fn arrival_latency() -> ArrivalLatency {
    const ALERTS: usize = 200;
    let time_span = bench_time_span();
    let mut scenario = one_alert_per_hash(ALERTS, ANALYSIS_MS);
    let spread_over = 3 * time_span;
    scenario
        .spread_as_arrivals(ALERTS, Duration::from_secs(spread_over), 7)
        .unwrap();
    let sim = Simulator::start(scenario).await.unwrap();
    let known: HashSet<String> = sim.edit(|w| {
        w.samples
            .iter()
            .filter(|s| s.known_verdict.is_some())
            .map(|s| s.sha256.clone())
            .collect()
    });
    let dir = tempfile::tempdir().unwrap();
    let config = load(&write_config_with(
        &sim,
        dir.path(),
        &format!("time_span = {time_span}"),
        "",
    ));
    let poll_interval = config.vmray.poll_interval;
    let shutdown = CancellationToken::new();
    let connector = Connector::stoppable(config, shutdown.clone()).unwrap();
    let started = Instant::now();
    let daemon = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { connector.run(RuntimeMode::Daemon, shutdown).await }
    });
    // Enough for the last arrival to be collected by the next-but-one collection and analysed.
    let cap =
        Duration::from_secs(spread_over + 2 * time_span + 30) + Duration::from_millis(ANALYSIS_MS);
    let stopped_by_cap = loop {
        let commented = sim.edit(|w| w.alerts.iter().filter(|a| a.commented_at.is_some()).count());
        if sim.arrivals_pending() == 0 && commented >= ALERTS {
            break false;
        }
        if started.elapsed() > cap {
            break true;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let ran = started.elapsed();
    shutdown.cancel();
    if tokio::time::timeout(Duration::from_secs(60), daemon)
        .await
        .is_err()
    {
        eprintln!("the daemon did not stop within 60 s of the shutdown token");
    }
    let t = sim.snapshot();
    sim.shutdown().await;
    let a = ANALYSIS_MS as f64 / 1000.0;
    let mut unknown = Spread {
        delays: Vec::new(),
        target: a + time_span as f64 + 2.0,
    };
    let mut known_spread = Spread {
        delays: Vec::new(),
        target: time_span as f64 + 1.0,
    };
    for alert in &t.alerts {
        let delay = alert
            .commented_at
            .map(|at| (at - alert.created).as_seconds_f64());
        if known.contains(&alert.sha256) {
            known_spread.delays.push(delay);
        } else {
            unknown.delays.push(delay);
        }
    }
    ArrivalLatency {
        time_span,
        poll_interval,
        spread_over,
        ran,
        stopped_by_cap,
        unknown,
        known: known_spread,
    }
}

fn print_arrival_latency(l: &ArrivalLatency) {
    println!(
        "\nArriving alerts: the daemon (time_span {} s, poll_interval {} s, otherwise default), {LATENCY_MS} ms per request, \
         {} alerts arriving over {} s, analysis {ANALYSIS_MS} ms; ran {:.0} s{}\n",
        l.time_span,
        l.poll_interval,
        l.unknown.delays.len() + l.known.delays.len(),
        l.spread_over,
        l.ran.as_secs_f64(),
        if l.stopped_by_cap {
            ", stopped by the cap before every alert was commented"
        } else {
            ""
        }
    );
    println!(
        "| hashes | alerts | commented | creation -> comment p50 s | p95 s | max s | target s | met target |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for (name, spread, target) in [
        ("unknown (analysed)", &l.unknown, "A + time_span + 2"),
        ("known", &l.known, "time_span + 1"),
    ] {
        let sorted = spread.commented();
        println!(
            "| {name} | {} | {} | {:.1} | {:.1} | {:.1} | <= {:.0} ({target}) | {} of {} |",
            spread.delays.len(),
            sorted.len(),
            percentile(&sorted, 50.0),
            percentile(&sorted, 95.0),
            sorted.last().copied().unwrap_or(f64::NAN),
            spread.target,
            spread.met(),
            spread.delays.len(),
        );
    }
}

struct InFlight {
    submissions: usize,
    submitted_in: f64,
    poll_interval: u64,
    windows: Vec<Window>,
    rss_kib: u64,
    hwm_kib: u64,
    idle_kib: u64,
}

/// What VMRay and Falcon received over `polls` poll intervals while everything was in flight.
struct Window {
    /// Poll intervals from the last submission to the window's start.
    starts_after: u64,
    polls: u64,
    /// GET /rest/submission/{id} in the window, per submission polled.
    status_per_submission: HashMap<u64, usize>,
    vmray_requests: usize,
    falcon_requests: usize,
}

/// The submission id of a status request (`GET /rest/submission/{id}`, with or without a query).
fn status_request_id(method: &str, path: &str) -> Option<u64> {
    if method != "GET" {
        return None;
    }
    let rest = path.strip_prefix("/rest/submission/")?;
    rest.split('?').next()?.parse().ok()
}

/// The daemon binary (`run`, default configuration but `time_span`) with `n` submissions whose
/// analyses outlast the bench: VMRay requests per submission per `poll_interval` over a window
/// of several intervals, and the process's RSS against the idle daemon's.
async fn in_flight(n: usize) -> InFlight {
    const WINDOW_POLLS: u64 = 5;
    let time_span = bench_time_span();
    // Every hash unknown, and an hour to analyse: none finishes while the bench runs.
    let mut scenario = one_alert_per_hash(n, 3_600_000);
    for file in &mut scenario.files {
        file.vmray_known = None;
        file.detonation.duration_ms = 3_600_000;
    }
    let sim = Simulator::start(scenario).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = write_config_with(
        &sim,
        dir.path(),
        &format!("time_span = {time_span}\nlog_level = \"info\""),
        "",
    );
    let poll_interval = load(&path).vmray.poll_interval;
    let started = Instant::now();
    let mut child = spawn(&path, "run", &[]);
    let deadline = started + Duration::from_secs(300);
    loop {
        let submitted = sim.edit(|w| w.submissions.len());
        if submitted >= n {
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the daemon exited ({status}) after {submitted} of {n} submissions");
        }
        assert!(
            Instant::now() < deadline,
            "only {submitted} of {n} samples were submitted within 300 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let submitted_in = started.elapsed().as_secs_f64();
    let all_submitted = OffsetDateTime::now_utc();
    // Two windows: from one interval after the last submission (its first polls are over), and
    // from six, when every submission has run long enough for any ramp-up of a poll schedule to
    // have reached `poll_interval` (4 intervals under the quarter-of-its-running-time rule).
    let window_starts = [1, 1 + WINDOW_POLLS];
    let end = Instant::now() + Duration::from_secs((1 + 2 * WINDOW_POLLS) * poll_interval);
    let mut hwm_kib = 0;
    while Instant::now() < end {
        hwm_kib = hwm_kib.max(status_kib(child.id(), "VmRSS:").unwrap_or(0));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let rss_kib = status_kib(child.id(), "VmRSS:").unwrap_or(0);
    eprintln!(
        "daemon with {n} in flight: VmRSS {rss_kib} KiB = RssAnon {} KiB + RssFile {} KiB (+ shmem)",
        status_kib(child.id(), "RssAnon:").unwrap_or(0),
        status_kib(child.id(), "RssFile:").unwrap_or(0)
    );
    let _ = child.kill();
    let _ = child.wait();
    let interval = time::Duration::seconds(poll_interval as i64);
    let windows = window_starts
        .into_iter()
        .map(|starts_after| {
            let from = all_submitted + interval * starts_after as u32;
            let to = from + interval * WINDOW_POLLS as u32;
            sim.edit(|w| {
                let mut window = Window {
                    starts_after,
                    polls: WINDOW_POLLS,
                    status_per_submission: HashMap::new(),
                    vmray_requests: 0,
                    falcon_requests: 0,
                };
                for r in w.requests.iter().filter(|r| r.at >= from && r.at < to) {
                    match r.service {
                        Service::Vmray => window.vmray_requests += 1,
                        Service::Falcon => window.falcon_requests += 1,
                    }
                    if r.service == Service::Vmray
                        && let Some(id) = status_request_id(&r.method, &r.path)
                    {
                        *window.status_per_submission.entry(id).or_default() += 1;
                    }
                }
                window
            })
        })
        .collect();
    sim.shutdown().await;
    let idle_kib = idle_daemon_rss(&[]).await;
    InFlight {
        submissions: n,
        submitted_in,
        poll_interval,
        windows,
        rss_kib,
        hwm_kib,
        idle_kib,
    }
}

fn print_in_flight(f: &InFlight) {
    println!(
        "\nSubmissions in flight: the daemon binary (`run`, poll_interval {} s, otherwise default), {} analyses that do not finish, \
         all submitted {:.0} s after the start\n",
        f.poll_interval, f.submissions, f.submitted_in,
    );
    println!("| measure | result | target |");
    println!("|---|---|---|");
    for w in &f.windows {
        let intervals = w.polls as f64;
        let per = |requests: usize| requests as f64 / f.submissions as f64 / intervals;
        let status_total: usize = w.status_per_submission.values().sum();
        let min = w.status_per_submission.values().min().copied().unwrap_or(0);
        let max = w.status_per_submission.values().max().copied().unwrap_or(0);
        println!(
            "| status requests (GET /rest/submission/{{id}}) per submission per poll_interval, {} intervals from {} after the last submission | {:.2} (per submission: min {:.2}, max {:.2}; {} of {} polled); all VMRay requests {:.2}; Falcon requests {} | 1 |",
            w.polls,
            w.starts_after,
            per(status_total),
            min as f64 / intervals,
            max as f64 / intervals,
            w.status_per_submission.len(),
            f.submissions,
            per(w.vmray_requests),
            w.falcon_requests,
        );
    }
    println!(
        "| RSS with {} in flight (VmRSS at the end; highest sampled every 0.5 s) | {:.1} MiB; {:.1} MiB | <= idle + 20 MB = {:.1} MiB |",
        f.submissions,
        f.rss_kib as f64 / 1024.0,
        f.hwm_kib as f64 / 1024.0,
        (f.idle_kib as f64 * 1024.0 + 20e6) / MIB as f64
    );
    println!(
        "| RSS of the idle daemon (same binary, VmRSS 12 s after its first cycle) | {:.1} MiB | |",
        f.idle_kib as f64 / 1024.0
    );
}
