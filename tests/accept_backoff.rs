//! Out of file descriptors, the accept loop pauses instead of spinning, and resumes when
//! descriptors come back. One test alone in its binary: it lowers this process's own fd limit.

#[path = "support/daemon.rs"]
mod daemon;
#[path = "support/hostile.rs"]
mod hostile;

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use futures::StreamExt;
use svid_broker::server::conn::ConnTimeouts;
use svid_broker::server::gate::Gate;
use svid_broker::server::limits::ConnectionLimits;
use svid_broker::server::listener;

/// Connections the client process opens and holds.
const CLIENTS: usize = 300;
/// Descriptors this process may hold beyond what it has open when the test starts.
const HEADROOM: u64 = 60;

fn own_cpu() -> Duration {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage fills the struct passed.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let t = |tv: libc::timeval| {
        Duration::from_secs(tv.tv_sec as u64) + Duration::from_micros(tv.tv_usec as u64)
    };
    t(ru.ru_utime) + t(ru.ru_stime)
}

fn open_fds() -> u64 {
    std::fs::read_dir("/proc/self/fd").unwrap().count() as u64
}

#[test]
fn accept_pauses_on_emfile_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let l = rt
        .block_on(async { tokio::net::UnixListener::bind(&path) })
        .unwrap();

    // The client: many connections from another process, with its own (normal) fd limit.
    let python = ["/usr/bin/python3", "python3"]
        .into_iter()
        .find(|p| Command::new(p).arg("-V").output().is_ok())
        .expect("python3 is needed for this test (apt-get install python3)");
    let script = format!(
        "import socket,time\nc=[]\nfor _ in range({CLIENTS}):\n s=socket.socket(socket.AF_UNIX)\n s.connect({:?})\n c.append(s)\nprint('ok',flush=True)\ntime.sleep(30)\n",
        path.display().to_string()
    );

    // From here on this process can hold only HEADROOM more descriptors.
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the struct passed.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    let hard = lim.rlim_max;
    lim.rlim_cur = open_fds() + HEADROOM;
    // SAFETY: setrlimit reads the struct passed.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0);
    let limits = ConnectionLimits {
        max_connections: 100_000,
        max_connections_per_uid: 100_000,
        new_connections_per_uid_per_second: 1_000_000,
        new_connections_per_uid_burst: 1_000_000,
        ..ConnectionLimits::default()
    };
    let gate = Gate::new(&limits, 100_000);
    let timeouts = ConnTimeouts {
        handshake: Duration::from_secs(600),
        idle: Duration::from_secs(600),
    };
    let mut incoming = rt.block_on(async { listener::incoming(l, gate.clone(), timeouts) });

    let mut client = unsafe {
        Command::new(python)
            .args(["-c", &script])
            .stdout(Stdio::piped())
            .pre_exec(move || {
                let high = libc::rlimit {
                    rlim_cur: hard.min(4096),
                    rlim_max: hard,
                };
                libc::setrlimit(libc::RLIMIT_NOFILE, &high);
                Ok(())
            })
            .spawn()
            .expect("spawn the client")
    };

    // Take connections until the process runs out of descriptors.
    let held = rt.block_on(async {
        let mut held = Vec::new();
        while let Ok(Some(Ok(c))) =
            tokio::time::timeout(Duration::from_secs(2), incoming.next()).await
        {
            held.push(c);
        }
        held
    });
    assert!(
        !held.is_empty() && held.len() < CLIENTS,
        "expected the fd limit to stop accepting part way: accepted {}",
        held.len()
    );

    // Out of descriptors with connections waiting: measure what the accept loop costs.
    let before = own_cpu();
    std::thread::sleep(Duration::from_secs(1));
    let spent = own_cpu() - before;

    // Give descriptors back: accepting resumes.
    let accepted_at_limit = held.len();
    drop(held);
    let resumed = rt.block_on(async {
        let mut n = 0;
        while let Ok(Some(Ok(c))) =
            tokio::time::timeout(Duration::from_secs(2), incoming.next()).await
        {
            n += 1;
            drop(c);
            if n >= 10 {
                break;
            }
        }
        n
    });
    let _ = client.kill();
    let _ = client.wait();
    drop(incoming);
    // Descriptors back, so the report can be written.
    lim.rlim_cur = hard;
    // SAFETY: setrlimit reads the struct passed.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    let observed = format!(
        "accepted {accepted_at_limit} before EMFILE; accept loop CPU at the limit {} ms per s; \
         {resumed} accepted after descriptors were released",
        spent.as_millis()
    );
    println!("{observed}");
    hostile::report(
        "the process runs out of file descriptors with connections waiting",
        "accept pauses (no spin) and resumes when descriptors come back",
        &observed,
    );
    assert!(
        spent < Duration::from_millis(250),
        "the accept loop spun: {} ms CPU in 1 s at the fd limit",
        spent.as_millis()
    );
    assert!(resumed >= 10, "accepting did not resume: {resumed}");
}
