//! Chaos: every front-door attack at once, for a bounded time, against a daemon with default
//! limits and an audit log, while a legitimate caller (another uid) keeps fetching JWT-SVIDs.
//! Afterwards: no legitimate call failed, their p99 and the daemon's peak RSS stayed under
//! their bounds, and the audit chain verifies.
//!
//! `SVID_BROKER_CHAOS_SECONDS` sets the duration (default [`DEFAULT_SECONDS`]);
//! `scripts/chaos.sh` runs it longer and prints the summary for docs/security.md.

#[path = "support/daemon.rs"]
mod daemon;
#[path = "support/hostile.rs"]
mod hostile;

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hostile::*;

const DEFAULT_SECONDS: u64 = 10;
/// Bounds the run must stay under.
const MAX_RSS_KIB: u64 = 256 * 1024;
/// p99 of one legitimate call, a process start of the CLI included, on a 2-core machine that
/// also runs the attackers.
const MAX_LEGIT_P99: Duration = Duration::from_secs(5);

fn seconds() -> u64 {
    std::env::var("SVID_BROKER_CHAOS_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_SECONDS)
        .clamp(1, 3600)
}

/// Runs `attack` in a loop on its own thread until `stop`, counting rounds.
fn spawn_attack(
    name: &'static str,
    stop: Arc<AtomicBool>,
    rounds: Arc<AtomicU64>,
    attack: impl Fn() + Send + 'static,
) -> std::thread::JoinHandle<&'static str> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            attack();
            rounds.fetch_add(1, Ordering::Relaxed);
        }
        name
    })
}

#[test]
fn every_attack_at_once_with_legitimate_callers() {
    require_root();
    let dir = open_dir();
    let socket = dir.path().join("api.sock");
    let audit = dir.path().join("audit").join("audit.log");
    let config = daemon::DaemonConfig::new()
        .entry(daemon::Entry::new(
            LEGIT_ID,
            &[&format!("unix:uid:{LEGIT_UID}")],
        ))
        .extra_toml(&format!(
            "[audit]\npath = {:?}",
            audit.display().to_string()
        ));
    let mut d = daemon::Daemon::start_in(dir, socket.clone(), &config);
    let pid = d.pid();
    let stop = Arc::new(AtomicBool::new(false));
    let mut attacks = Vec::new();
    let mut counters = Vec::new();
    let path = socket.clone();
    let connect = move || UnixStream::connect(&path);

    // 1. The 43-byte stall, a new connection each round, kept for a while.
    let c = connect.clone();
    let n = Arc::new(AtomicU64::new(0));
    counters.push(("43-byte zero-length HEADERS", n.clone()));
    attacks.push(spawn_attack("stall", stop.clone(), n, move || {
        if let Ok(mut s) = c() {
            let mut b = PREFACE.to_vec();
            b.extend(frame(0x4, 0, 0, &[]));
            b.extend(frame(0x1, 0x4, 1, &[]));
            b.push(0);
            let _ = s.write_all(&b);
            std::thread::sleep(Duration::from_millis(100));
        }
    }));
    // 2. Unfinished 4 MiB and 130 KB messages on many streams of one connection.
    let c = connect.clone();
    let n = Arc::new(AtomicU64::new(0));
    counters.push(("unfinished request messages", n.clone()));
    attacks.push(spawn_attack("unfinished", stop.clone(), n, move || {
        if let Ok(mut s) = c() {
            let mut b = PREFACE.to_vec();
            b.extend(frame(0x4, 0, 0, &[]));
            for i in 0..64u32 {
                let stream = 2 * i + 1;
                // :method POST, :scheme http, :path /SpiffeWorkloadAPI/FetchJWTSVID (literal).
                let mut block = vec![0x83, 0x86, 0x04, 31];
                block.extend_from_slice(b"/SpiffeWorkloadAPI/FetchJWTSVID");
                b.extend(frame(0x1, 0x4, stream, &block));
                let announce: u32 = if i % 2 == 0 { 4 << 20 } else { 130_000 };
                let mut data = vec![0u8];
                data.extend_from_slice(&announce.to_be_bytes());
                data.resize(16_000, b'a');
                b.extend(frame(0x0, 0, stream, &data));
            }
            let _ = s.write_all(&b);
            std::thread::sleep(Duration::from_millis(500));
        }
    }));
    // 3. Silent connections, as many as the uid may hold, renewed as they are closed.
    let c = connect.clone();
    let n = Arc::new(AtomicU64::new(0));
    counters.push(("silent connections held", n.clone()));
    attacks.push(spawn_attack("silent", stop.clone(), n, move || {
        let held: Vec<_> = (0..64).filter_map(|_| c().ok()).collect();
        std::thread::sleep(Duration::from_millis(500));
        drop(held);
    }));
    // 4. A connection flood: connect and close.
    let c = connect.clone();
    let n = Arc::new(AtomicU64::new(0));
    counters.push(("connect-and-close flood", n.clone()));
    attacks.push(spawn_attack("flood", stop.clone(), n, move || {
        drop(c());
    }));
    // 5. Calls with no identity (each is attested and refused), and undecodable requests.
    let n = Arc::new(AtomicU64::new(0));
    counters.push(("calls with no identity", n.clone()));
    let endpoint = d.endpoint();
    attacks.push(spawn_attack("no-identity", stop.clone(), n, move || {
        let _ = daemon::cli_with_endpoint(&endpoint, &["api", "fetch", "jwt", "--audience", "x"]);
    }));

    // The legitimate caller, and the daemon's memory, for the whole run.
    let run_for = Duration::from_secs(seconds());
    let start = Instant::now();
    let mut latencies = Vec::new();
    let mut failures = Vec::new();
    let mut peak_rss = 0;
    let rss_start = rss_kib(pid);
    let cpu_start = cpu(pid);
    while start.elapsed() < run_for {
        match legit_fetch(&d) {
            Ok(t) => latencies.push(t),
            Err(e) => failures.push(e),
        }
        peak_rss = peak_rss.max(rss_kib(pid));
    }
    let daemon_cpu = cpu(pid) - cpu_start;
    stop.store(true, Ordering::Relaxed);
    for a in attacks {
        let _ = a.join();
    }
    d.stop();
    let verify = std::process::Command::new(daemon::bin())
        .args(["audit", "verify"])
        .arg(&audit)
        .output()
        .expect("run audit verify");
    let audit_bytes = std::fs::metadata(&audit).map(|m| m.len()).unwrap_or(0);

    latencies.sort();
    let p = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    let (p50, p99) = (p(0.5), p(0.99));
    let attack_rounds: Vec<String> = counters
        .iter()
        .map(|(name, n)| format!("{name}: {}", n.load(Ordering::Relaxed)))
        .collect();
    let summary = format!(
        "| duration | {} s |\n| attack rounds | {} |\n| legitimate calls | {} ok, {} failed |\n\
         | legitimate latency (CLI start included) | p50 {} ms, p99 {} ms (bound {} ms) |\n\
         | daemon RSS | {} MiB at start, peak {} MiB (bound {} MiB) |\n| daemon CPU | {:.1} s |\n\
         | audit log | {} KiB; `audit verify`: {} |\n",
        run_for.as_secs(),
        attack_rounds.join(", "),
        latencies.len(),
        failures.len(),
        p50.as_millis(),
        p99.as_millis(),
        MAX_LEGIT_P99.as_millis(),
        rss_start / 1024,
        peak_rss / 1024,
        MAX_RSS_KIB / 1024,
        daemon_cpu.as_secs_f64(),
        audit_bytes / 1024,
        if verify.status.success() {
            "ok"
        } else {
            "FAILED"
        },
    );
    println!("{summary}");
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("security-report");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("chaos.md"), &summary).unwrap();

    assert!(failures.is_empty(), "{summary}\nfailures: {failures:?}");
    assert!(!latencies.is_empty(), "{summary}");
    assert!(p99 < MAX_LEGIT_P99, "{summary}");
    assert!(peak_rss < MAX_RSS_KIB, "{summary}");
    assert!(
        verify.status.success(),
        "{summary}\n{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
}
