//! The connector measured against its limits, on the built-in simulator with 20 ms of latency
//! per request. Prints one table; `BENCHMARKS.md` records it.
//!
//! Run: `cargo bench --bench cycle` (release build). Not part of `cargo test`.
//! `cargo bench --bench cycle -- mixed` runs only the mixed cycle (known and unknown samples).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use falcon_vmray_connector::config::{self, Config, Env};
use falcon_vmray_connector::pipeline::Connector;
use falcon_vmray_connector::sim::scenario::{
    AlertSpec, DetonationSpec, FileSpec, HostSpec, IocDomain, IocIp, IocReportSpec, KnownSpec,
    QuarantineSpec,
};
use falcon_vmray_connector::sim::{Faults, Scenario, Service, Simulator, TenantSnapshot};
use tokio_util::sync::CancellationToken;

const LATENCY_MS: u64 = 20;
const RATE_LIMIT_PER_MINUTE: f64 = 6000.0;
const POLL_INTERVAL_S: u64 = 1;
const MIB: u64 = 1024 * 1024;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mixed: Vec<MixedRow> = [8, 32]
        .into_iter()
        .map(|concurrency| runtime.block_on(mixed_cycle(200, concurrency)))
        .collect();
    print_mixed(&mixed);
    if std::env::args().any(|a| a == "mixed") {
        return;
    }
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

/// A config file pointing at the simulator, in `dir`.
fn write_config(sim: &Simulator, dir: &Path, extra_general: &str) -> PathBuf {
    let creds = sim.credentials();
    let root = dir.display();
    let text = format!(
        "[general]\nlog_file = \"{root}/log/connector.log\"\nlog_level = \"warn\"\nstate_file = \"{root}/state/connector.db\"\n{extra_general}\n\
         [crowdstrike]\nclient_id = \"{}\"\nclient_secret = \"{}\"\nbase_url = \"{}\"\ndownload_dir = \"{root}/downloads\"\n\
         [vmray]\napi_key = \"{}\"\nurl = \"{}\"\npoll_interval = {POLL_INTERVAL_S}\n",
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
}

fn print_mixed(rows: &[MixedRow]) {
    println!(
        "\n| hashes | uploads | concurrency | cycle s | first known hash acted on after s | last upload after s |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        println!(
            "| {} | {} | {} | {:.2} | {:.2} | {:.2} |",
            r.hashes,
            r.uploads,
            r.concurrency,
            r.wall.as_secs_f64(),
            r.first_known_acted,
            r.last_upload
        );
    }
}

/// `hashes` samples, two thirds unknown to VMRay (downloaded, uploaded, analysed at once), a
/// third known: how long the cycle takes and when the first known hash's alert is updated.
async fn mixed_cycle(hashes: usize, concurrency: usize) -> MixedRow {
    let mut scenario = known_scenario(hashes);
    let mut uploads = 0;
    for (i, file) in scenario.files.iter_mut().enumerate() {
        if i % 3 != 0 {
            file.vmray_known = None;
            uploads += 1;
        }
    }
    let sim = Simulator::start(scenario).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let extra = format!("concurrency = {concurrency}");
    let config = load(&write_config(&sim, dir.path(), &extra));
    let connector = Connector::new(config).unwrap();
    let started_at = time::OffsetDateTime::now_utc();
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
    let uploaded: std::collections::HashSet<&str> =
        t.submissions.iter().map(|s| s.sha256.as_str()).collect();
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
    MixedRow {
        hashes,
        uploads,
        concurrency,
        wall,
        first_known_acted,
        last_upload,
    }
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
    // log_level appears twice otherwise: keep the later one.
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replacen("log_level = \"warn\"\n", "", 1);
    std::fs::write(&config, text).unwrap();
    let mut child = spawn(&config, "run", env);
    let log_dir = dir.path().join("log");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let logged = std::fs::read_dir(&log_dir)
            .map(|entries| {
                entries.flatten().any(|e| {
                    std::fs::read_to_string(e.path())
                        .unwrap_or_default()
                        .contains("next cycle in")
                })
            })
            .unwrap_or(false);
        if logged {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the daemon never finished its first cycle"
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
