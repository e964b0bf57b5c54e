//! Tools for hostile tests: a caller with no identity that sends raw HTTP/2, a legitimate
//! caller running as another uid, the daemon's CPU and memory from /proc, and the report rows
//! that docs/security.md is made from.
//!
//! The attacker is this test process (root in CI, matching no entry: no identity). The
//! legitimate caller is the `svid-broker` CLI run as uid [`LEGIT_UID`] (nobody), so the
//! daemon's per-uid bounds on the attacker never touch it. Tests that need root fail saying
//! so, unless `SVID_BROKER_TESTS_NOT_ROOT=1` is set, which makes them fail anyway: there is no
//! silent skip.

#![allow(dead_code)]

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::daemon::{self, Daemon, DaemonConfig, Entry};

/// The uid of the legitimate caller.
pub const LEGIT_UID: u32 = 65534;
/// Its SPIFFE ID.
pub const LEGIT_ID: &str = "spiffe://example.org/legit";
/// The HTTP/2 client preface.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Panics unless this process is root (it must start callers as another uid).
pub fn require_root() {
    if daemon::euid() != 0 {
        panic!(
            "hostile tests run the legitimate caller as uid {LEGIT_UID} and need root; run the \
             test suite as root (CI does)"
        );
    }
}

/// A world-searchable temp dir (the legitimate caller, as nobody, must reach the socket).
pub fn open_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("svid-broker-hostile.")
        .tempdir()
        .expect("temp dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// A daemon whose only identity is for [`LEGIT_UID`], with `limits` as its `[limits]` table.
pub fn daemon_with_limits(limits: &str) -> Daemon {
    require_root();
    let dir = open_dir();
    let socket = dir.path().join("api.sock");
    let config = DaemonConfig::new()
        .entry(Entry::new(LEGIT_ID, &[&format!("unix:uid:{LEGIT_UID}")]))
        .extra_toml(&format!("[limits]\n{limits}"));
    Daemon::start_in(dir, socket, &config)
}

/// The directory of [`legit_binary`]'s copy, removed when the test process exits.
static BIN_DIR: OnceLock<PathBuf> = OnceLock::new();

extern "C" fn remove_bin_dir() {
    if let Some(dir) = BIN_DIR.get() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// A copy of the CLI that uid nobody may run, whatever the permissions of the build tree.
/// A `static` is never dropped, so the copy (as large as the binary) is removed at exit
/// instead; otherwise every run of these tests would leave one in the temp dir.
fn legit_binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let dir = open_dir().keep();
        BIN_DIR.set(dir.clone()).expect("set once");
        // SAFETY: registers a handler with no preconditions; it only removes a directory.
        unsafe { libc::atexit(remove_bin_dir) };
        let path = dir.join("svid-broker");
        std::fs::copy(daemon::bin(), &path).expect("copy the CLI");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    })
}

/// One FetchJWTSVID by the legitimate caller; its latency, or the CLI's stderr.
pub fn legit_fetch(d: &Daemon) -> Result<Duration, String> {
    let start = Instant::now();
    let out = Command::new(legit_binary())
        .args(["api", "fetch", "jwt", "--audience", "legit-aud"])
        .env("SPIFFE_ENDPOINT_SOCKET", d.endpoint())
        .env("HOME", "/")
        .uid(LEGIT_UID)
        .gid(LEGIT_UID)
        .stdin(Stdio::null())
        .output()
        .expect("run the CLI as nobody");
    let took = start.elapsed();
    if out.status.success() && String::from_utf8_lossy(&out.stdout).contains(LEGIT_ID) {
        Ok(took)
    } else {
        Err(format!(
            "{}: {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Legitimate calls while an attack runs: how many, how many failed, the slowest.
#[derive(Debug, Default)]
pub struct LegitCalls {
    pub ok: usize,
    pub failed: Vec<String>,
    pub latencies: Vec<Duration>,
}

impl LegitCalls {
    pub fn run(d: &Daemon, n: usize) -> Self {
        let mut out = Self::default();
        for _ in 0..n {
            match legit_fetch(d) {
                Ok(t) => {
                    out.ok += 1;
                    out.latencies.push(t);
                }
                Err(e) => out.failed.push(e),
            }
        }
        out
    }

    pub fn max(&self) -> Duration {
        self.latencies.iter().copied().max().unwrap_or_default()
    }
}

/// The daemon's CPU time (user + system) so far.
pub fn cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_millis(ticks * 1000 / hz)
}

/// The daemon's resident memory, KiB.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Open file descriptors of the daemon.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// An HTTP/2 frame.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Whether the daemon closed `s` within `within` (EOF or reset), reading whatever it sends.
pub fn closed_within(s: &mut std::os::unix::net::UnixStream, within: Duration) -> bool {
    use std::io::Read;
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
}

/// One row of docs/security.md: the attack, what must happen, what this run saw.
pub fn report(attack: &str, expected: &str, observed: &str) {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("security-report");
    std::fs::create_dir_all(&dir).unwrap();
    let row = serde_json::json!({"attack": attack, "expected": expected, "observed": observed});
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("rows.jsonl"))
        .unwrap();
    writeln!(f, "{row}").unwrap();
}
