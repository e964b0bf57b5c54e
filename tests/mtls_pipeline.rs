//! mTLS between two pipeline-stage processes with identities from the real daemon: each
//! authorizes the other's SPIFFE ID, a wrong expected ID fails the handshake, and a
//! connection made after a rotation presents the new SVID.

#[path = "support/mtls_harness.rs"]
mod harness;

use std::process::Output;
use std::time::{Duration, Instant};

use harness::{Mode, Pipeline, Server, Stage, ID_A, ID_B, ID_C};

/// The reply and the server's certificate serial that `call` printed.
fn reply_and_serial(out: &Output) -> (String, String) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "call failed ({}):\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let field = |prefix: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} line in {stdout:?}"))
            .to_owned()
    };
    (field("reply: "), field("server serial: "))
}

/// The server's log line for the connection it just accepted: (peer, serial).
fn accepted(server: &Server) -> (String, String) {
    let line = server
        .next_line(Duration::from_secs(5))
        .unwrap_or_else(|| panic!("no connection line; stderr: {}", server.stderr()));
    let peer = line.split("peer=").nth(1).and_then(|r| r.split(' ').next());
    let serial = line.split("serial=").nth(1);
    match (peer, serial) {
        (Some(p), Some(s)) => (p.to_owned(), s.to_owned()),
        _ => panic!("unexpected connection line {line:?}"),
    }
}

fn mutual_tls(mode: Mode) {
    let pipeline = Pipeline::start(mode);
    let server = pipeline.serve(Stage::A, ID_B);
    let out = pipeline.call(Stage::B, server.addr, ID_A);
    let (reply, serial) = reply_and_serial(&out);
    assert_eq!(reply, format!("hello from {ID_A} to {ID_B}"));
    assert_eq!(accepted(&server), (ID_B.to_owned(), serial));
}

#[test]
fn stages_with_different_identities_authorize_each_other() {
    mutual_tls(Mode::detect());
}

#[test]
fn stages_matched_by_executable_path_work_as_root_too() {
    if Mode::detect() == Mode::Paths {
        eprintln!("not root: the other test already ran with unix:path selectors");
        return;
    }
    mutual_tls(Mode::Paths);
}

#[test]
fn a_wrong_expected_peer_id_fails_the_handshake() {
    let pipeline = Pipeline::start(Mode::detect());

    // The client expects C but the server is A.
    let server = pipeline.serve(Stage::A, ID_B);
    let out = pipeline.call(Stage::B, server.addr, ID_C);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "call succeeded: {stderr}");
    assert!(
        stderr.contains(&format!(
            "peer SPIFFE ID {ID_A} is not authorized (expected {ID_C})"
        )),
        "{stderr}"
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("reply:"));

    // The server expects C but the client is B.
    let server = pipeline.serve(Stage::A, ID_C);
    let out = pipeline.call(Stage::B, server.addr, ID_A);
    assert!(
        !out.status.success(),
        "call succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let refusal = format!("peer SPIFFE ID {ID_B} is not authorized (expected {ID_C})");
    assert!(
        server.wait_stderr(&refusal, Duration::from_secs(5)),
        "server stderr: {}",
        server.stderr()
    );
}

#[test]
fn a_connection_after_rotation_uses_the_new_svid() {
    let pipeline = Pipeline::start(Mode::detect());
    let server = pipeline.serve(Stage::A, ID_B);
    let (_, first) = reply_and_serial(&pipeline.call(Stage::B, server.addr, ID_A));
    assert_eq!(accepted(&server).1, first);

    // x509_ttl is 10s and SVIDs renew at half-life (±10%): a new one within ~6s.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        assert!(
            Instant::now() < deadline,
            "server serial still {first} after 15s"
        );
        std::thread::sleep(Duration::from_millis(500));
        let (reply, serial) = reply_and_serial(&pipeline.call(Stage::B, server.addr, ID_A));
        assert_eq!(reply, format!("hello from {ID_A} to {ID_B}"));
        assert_eq!(accepted(&server).1, serial);
        if serial != first {
            break;
        }
    }

    // Later connections keep using the new SVID (until the next rotation) and still succeed.
    let (_, later) = reply_and_serial(&pipeline.call(Stage::B, server.addr, ID_A));
    assert_ne!(later, first);
    assert_eq!(accepted(&server).1, later);
}

#[test]
fn a_server_keeps_serving_across_a_daemon_restart() {
    let mut pipeline = Pipeline::start(Mode::detect());
    let server = pipeline.serve(Stage::A, ID_B);
    let (_, first) = reply_and_serial(&pipeline.call(Stage::B, server.addr, ID_A));
    assert_eq!(accepted(&server).1, first);

    // The restarted daemon has a new CA: the server's watcher reconnects and takes an SVID
    // under it; until then a client with the new bundle cannot verify the server.
    pipeline.restart_daemon();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let out = pipeline.call(Stage::B, server.addr, ID_A);
        if out.status.success() {
            let (_, serial) = reply_and_serial(&out);
            assert_ne!(serial, first);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no successful call 15s after the restart: {}\nserver: {}",
            String::from_utf8_lossy(&out.stderr),
            server.stderr()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}
