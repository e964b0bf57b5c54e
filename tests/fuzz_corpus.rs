//! The fuzz seed corpus (`fuzz/corpus/<target>/`) as a regression suite: every file goes
//! through its target's checks, as AFL runs them, with no AFL needed.
//!
//! Each target replays in a child process (this test binary again), so a seed that hangs
//! fails the test after [`TIMEOUT`] and names the file, instead of stalling the suite.
//!
//! `cargo test --test fuzz_corpus -- --ignored write_generated_seeds` rewrites the seeds that
//! need the fixture keys (signed tokens, certificates).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use svid_broker::fuzzing;

const TIMEOUT: Duration = Duration::from_secs(20);
const CHILD_ENV: &str = "SVID_BROKER_FUZZ_REPLAY";

fn corpus(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

fn files(target: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(corpus(target))
        .unwrap_or_else(|e| panic!("{}: {e}", corpus(target).display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// In the child: replays one target's files, printing each name before it runs.
#[test]
fn replay_child() {
    let Ok(target) = std::env::var(CHILD_ENV) else {
        return;
    };
    let check = fuzzing::target(&target).expect("known target");
    for file in files(&target) {
        eprintln!("replaying {}", file.display());
        check(&std::fs::read(&file).unwrap());
    }
    eprintln!("replayed all");
}

#[test]
fn every_seed_passes_its_target() {
    let exe = std::env::current_exe().unwrap();
    let mut failed = Vec::new();
    for (target, _) in fuzzing::TARGETS {
        assert!(!files(target).is_empty(), "no seeds for {target}");
        let mut child = Command::new(&exe)
            .args(["--exact", "replay_child", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, target)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The child's stderr goes to a thread, so a full pipe never blocks it.
        let mut stderr = child.stderr.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if started.elapsed() > TIMEOUT {
                child.kill().unwrap();
                child.wait().unwrap();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let log = reader.join().unwrap();
        let last = log
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix("replaying "))
            .unwrap_or("(none)");
        match status {
            Some(s) if s.success() && log.contains("replayed all") => {}
            Some(_) => failed.push(format!("{target}: {last} failed:\n{log}")),
            None => failed.push(format!("{target}: {last} hangs (over {TIMEOUT:?})")),
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

#[test]
#[ignore = "writes files: run on purpose to regenerate the signed seeds"]
fn write_generated_seeds() {
    for (target, name, bytes) in fuzzing::seeds::generated() {
        std::fs::write(corpus(target).join(name), bytes).unwrap();
    }
}
