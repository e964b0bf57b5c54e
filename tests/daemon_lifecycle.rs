//! The daemon's lifecycle: SIGTERM with a stream open, a live socket never stolen, a stale
//! socket replaced.

#[path = "support/daemon.rs"]
mod daemon;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use daemon::{Daemon, DaemonConfig};
use futures::StreamExt;
use svid_broker::proto::workload as pb;

const ID: &str = "spiffe://example.org/test/lifecycle";

fn me() -> DaemonConfig {
    DaemonConfig::new().entry_for_me(ID)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_an_open_stream_exits_within_the_grace_and_removes_the_socket() {
    let grace = Duration::from_secs(3);
    let mut d = Daemon::start(me().shutdown_grace("3s"));
    let channel = svid_broker::client::connect(d.socket_path().to_path_buf())
        .await
        .unwrap();
    let mut client = svid_broker::client::workload_client(channel);
    let mut stream = client
        .fetch_x509svid(pb::X509svidRequest {})
        .await
        .expect("FetchX509SVID")
        .into_inner();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(first.svids[0].spiffe_id, ID);

    let started = Instant::now();
    d.signal(libc::SIGTERM);
    // The open stream ends (cleanly or with an error), it does not hang.
    let end = tokio::time::timeout(grace + Duration::from_secs(5), stream.next())
        .await
        .expect("the open stream must end on shutdown");
    assert!(
        !matches!(end, Some(Ok(_))),
        "no new SVID after SIGTERM: {end:?}"
    );
    let status = tokio::task::block_in_place(|| d.wait_exit(grace + Duration::from_secs(5)))
        .unwrap_or_else(|| panic!("still running {grace:?} after SIGTERM\n{}", d.log()));
    let took = started.elapsed();
    assert!(status.success(), "exit status {status}\n{}", d.log());
    assert!(took < grace + Duration::from_secs(2), "took {took:?}");
    assert!(
        !d.socket_path().exists(),
        "the socket must be removed on exit"
    );
    assert!(d.log().contains("shutting down"), "{}", d.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_also_shuts_down() {
    let mut d = Daemon::start(me());
    d.signal(libc::SIGINT);
    let status = tokio::task::block_in_place(|| d.wait_exit(Duration::from_secs(10)))
        .expect("exits on SIGINT");
    assert!(status.success());
    assert!(!d.socket_path().exists());
}

#[test]
fn a_live_socket_is_not_stolen() {
    let d = Daemon::start(me());
    let before = d.fetch_jwt("spiffe://example.org/a");
    assert!(before.starts_with("eyJ"));

    // A second daemon with the same config (same socket) must refuse, clearly.
    let log = d.dir().join("second.log");
    let mut second = Command::new(daemon::bin())
        .args(["run", "--config"])
        .arg(d.config_path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = second.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = second.kill();
            let _ = second.wait();
            panic!("a second daemon on a live socket kept running");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert!(!status.success(), "second daemon must exit non-zero");
    assert!(
        stderr.contains("already listening")
            && stderr.contains(&d.socket_path().display().to_string()),
        "a clear message naming the socket: {stderr}"
    );
    // The first one still owns its socket and serves.
    assert!(d.socket_path().exists());
    assert!(d.fetch_jwt("spiffe://example.org/a").starts_with("eyJ"));
}

#[test]
fn a_stale_socket_is_replaced() {
    let dir = tempfile::Builder::new()
        .prefix("svid-broker-test.")
        .tempdir()
        .unwrap();
    let socket = dir.path().join("api.sock");
    // A socket file nobody listens on, as a crashed daemon leaves behind.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    assert!(socket.exists());
    assert!(std::os::unix::net::UnixStream::connect(&socket).is_err());

    let d = Daemon::start_in(dir, socket, &me());
    assert!(d.fetch_jwt("spiffe://example.org/a").starts_with("eyJ"));
    assert!(d.log().contains("stale"), "{}", d.log());
}

#[test]
fn a_path_that_is_not_a_socket_is_left_alone() {
    let dir = tempfile::Builder::new()
        .prefix("svid-broker-test.")
        .tempdir()
        .unwrap();
    let socket = dir.path().join("api.sock");
    std::fs::write(&socket, b"precious").unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, me().render(dir.path(), &socket)).unwrap();
    let out = Command::new(daemon::bin())
        .args(["run", "--config"])
        .arg(&config)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a socket"));
    assert_eq!(std::fs::read(&socket).unwrap(), b"precious");
}

/// With `data_dir`, a restart keeps the CA and JWT keys: tokens minted before still verify.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_in_data_dir_survive_a_restart() {
    let mut d = Daemon::start(me().data_dir(true));
    let before = d.fetch_jwt("spiffe://example.org/a");
    tokio::task::block_in_place(|| d.restart());
    let after = d.fetch_jwt("spiffe://example.org/a");
    let header = |t: &str| t.split('.').next().unwrap().to_string();
    assert_eq!(
        header(&before),
        header(&after),
        "same signing key (kid) after restart"
    );
    let out = d.cli_ok(&[
        "api",
        "validate",
        "--audience",
        "spiffe://example.org/a",
        "--token",
        &before,
    ]);
    assert!(out.contains(ID), "{out}");
    // Keys are private: 0700 directory, 0600 files.
    use std::os::unix::fs::PermissionsExt;
    let data = d.dir().join("data");
    assert_eq!(
        std::fs::metadata(&data).unwrap().permissions().mode() & 0o777,
        0o700
    );
    for f in std::fs::read_dir(&data).unwrap() {
        let f = f.unwrap();
        if f.file_type().unwrap().is_file() {
            let mode = f.metadata().unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", f.path().display());
        }
    }
}
