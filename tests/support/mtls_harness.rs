//! The real daemon (started by `svid_broker_test_support::daemon`) plus two pipeline-stage
//! processes with different identities, for `tests/mtls_pipeline.rs`. Everything lives in a
//! temp dir; processes get SIGTERM on drop.
//!
//! As root, stage A runs as uid 65534 and stage B as uid 65533 (matched by `unix:uid`);
//! otherwise the stage binary is copied to two paths (matched by `unix:path`).

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use svid_broker_test_support::daemon::{Daemon, DaemonConfig, Entry, Ready};

pub const ID_A: &str = "spiffe://example.org/stage/a";
pub const ID_B: &str = "spiffe://example.org/stage/b";
pub const ID_C: &str = "spiffe://example.org/stage/c";

const DAEMON: &str = env!("CARGO_BIN_EXE_svid-broker");
const STAGE: &str = env!("CARGO_BIN_EXE_svid-broker-stage");
const START_TIMEOUT: Duration = Duration::from_secs(15);
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Different uids (needs root).
    Uids,
    /// Different executables.
    Paths,
}

impl Mode {
    pub fn detect() -> Self {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } == 0 {
            Mode::Uids
        } else {
            Mode::Paths
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub enum Stage {
    A,
    B,
}

/// How to launch one stage: its executable and, in uid mode, its uid and gid.
struct Launcher {
    program: PathBuf,
    uid: Option<u32>,
}

impl Launcher {
    fn command(&self, socket: &Path) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.arg("--socket")
            .arg(socket)
            .env_remove("SPIFFE_ENDPOINT_SOCKET");
        if let Some(uid) = self.uid {
            cmd.uid(uid).gid(uid);
        }
        cmd
    }
}

/// The daemon with two registered stages.
pub struct Pipeline {
    daemon: Daemon,
    a: Launcher,
    b: Launcher,
}

impl Pipeline {
    pub fn start(mode: Mode) -> Self {
        let tmp = tempfile::tempdir().expect("temp dir");
        // Reachable by the unprivileged stage uids.
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod temp dir");
        let dir = tmp.path().to_path_buf();
        let (a, b, selector_a, selector_b) = match mode {
            Mode::Uids => {
                let program = copy_stage(&dir, "stage");
                let a = Launcher {
                    program: program.clone(),
                    uid: Some(65534),
                };
                let b = Launcher {
                    program,
                    uid: Some(65533),
                };
                (
                    a,
                    b,
                    "unix:uid:65534".to_owned(),
                    "unix:uid:65533".to_owned(),
                )
            }
            Mode::Paths => {
                let pa = copy_stage(&dir, "stage-a");
                let pb = copy_stage(&dir, "stage-b");
                let sa = format!("unix:path:{}", pa.display());
                let sb = format!("unix:path:{}", pb.display());
                (
                    Launcher {
                        program: pa,
                        uid: None,
                    },
                    Launcher {
                        program: pb,
                        uid: None,
                    },
                    sa,
                    sb,
                )
            }
        };
        let config = DaemonConfig::new()
            .binary(DAEMON)
            .entry(Entry::new(ID_A, &[&selector_a]).x509_ttl("10s"))
            .entry(Entry::new(ID_B, &[&selector_b]).x509_ttl("10s"))
            .rust_log("info")
            .no_color(false)
            .append_log(true)
            .ready(Ready::default())
            .start_timeout(START_TIMEOUT)
            .stop_timeout(STOP_TIMEOUT);
        let daemon = Daemon::start_in(tmp, dir.join("api.sock"), &config);
        Self { daemon, a, b }
    }

    /// Stops the daemon with SIGTERM and starts it again on the same socket (with a new CA:
    /// the authority is memory-only).
    pub fn restart_daemon(&mut self) {
        self.daemon.restart();
    }

    pub fn daemon_log(&self) -> String {
        self.daemon.log_raw()
    }

    fn launcher(&self, stage: Stage) -> &Launcher {
        match stage {
            Stage::A => &self.a,
            Stage::B => &self.b,
        }
    }

    /// `serve` as `stage`, authorizing only `peer_id`; returns once it listens.
    pub fn serve(&self, stage: Stage, peer_id: &str) -> Server {
        let child = self
            .launcher(stage)
            .command(self.daemon.socket_path())
            .args(["serve", "--listen", "127.0.0.1:0", "--peer-id", peer_id])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn stage server");
        Server::wait_listening(child, || self.daemon_log())
    }

    /// `call` as `stage` to `addr`, expecting the server to be `peer_id`.
    pub fn call(&self, stage: Stage, addr: SocketAddr, peer_id: &str) -> Output {
        self.launcher(stage)
            .command(self.daemon.socket_path())
            .args(["call", "--connect", &addr.to_string(), "--peer-id", peer_id])
            .args(["--message", "hello"])
            .output()
            .expect("run stage call")
    }
}

/// A running `serve`, its stdout lines as they come and its stderr so far.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    lines: Receiver<String>,
    stderr: Arc<Mutex<String>>,
}

impl Server {
    fn wait_listening(mut child: Child, daemon_log: impl Fn() -> String) -> Self {
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stderr.take().expect("piped stderr");
        let sink = stderr.clone();
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                if let Ok(mut s) = sink.lock() {
                    s.push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            }
        });
        let mut server = Self {
            child,
            addr: "0.0.0.0:0".parse().expect("addr"),
            lines,
            stderr,
        };
        let first = server.next_line(START_TIMEOUT).unwrap_or_else(|| {
            panic!(
                "stage server did not start; stderr:\n{}\ndaemon:\n{}",
                server.stderr(),
                daemon_log()
            )
        });
        let addr = first
            .strip_prefix("listening on ")
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line {first:?}"));
        server.addr = addr;
        server
    }

    pub fn next_line(&self, timeout: Duration) -> Option<String> {
        self.lines.recv_timeout(timeout).ok()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Waits until stderr contains `needle`.
    pub fn wait_stderr(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.stderr().contains(needle) {
                return true;
            }
            thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        terminate(&mut self.child);
    }
}

/// Copies the stage binary into `dir`, executable by everyone.
fn copy_stage(dir: &Path, name: &str) -> PathBuf {
    let to = dir.join(name);
    std::fs::copy(STAGE, &to).expect("copy stage binary");
    std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755)).expect("chmod stage");
    to
}

/// SIGTERM, then SIGKILL if the process has not exited within five seconds.
fn terminate(child: &mut Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: kill(2) on our own child's pid; it has not been reaped yet.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}
