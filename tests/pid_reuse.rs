//! PID reuse: a caller connects, exits and is reaped; another process takes its PID. Calls over
//! the dead caller's connection must never get an identity.
//!
//! The caller is a forked child that connects a socket the test created before the fork, so the
//! test holds the very connection the child made (the kernel records the child as the peer).
//! As root, the test makes a new process take the child's PID by writing `pid - 1` to
//! `/proc/sys/kernel/ns_last_pid` before spawning it; without root it checks the exited caller
//! only and says that PID takeover needs root.

#[path = "support/daemon.rs"]
mod daemon;

use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use daemon::{Daemon, DaemonConfig};
use svid_broker::proto::workload as pb;
use svid_broker::proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request};

const ID: &str = "spiffe://example.org/test/pid-reuse";
const AUDIENCE: &str = "spiffe://example.org/relying-party";

/// A connection made by a forked child, which waits for a byte on `release` before exiting.
struct ChildConnection {
    socket: OwnedFd,
    pid: libc::pid_t,
    release: OwnedFd,
}

fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: fds is a valid array of two ints.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2: {}", std::io::Error::last_os_error());
    // SAFETY: pipe2 just returned these two fds, owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

fn sockaddr(path: &std::path::Path) -> libc::sockaddr_un {
    use std::os::unix::ffi::OsStrExt;
    // SAFETY: sockaddr_un is plain old data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    assert!(bytes.len() < addr.sun_path.len(), "socket path too long");
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    addr
}

/// Forks a child that connects to `path` on a socket this process also holds.
fn child_connects(path: &std::path::Path) -> ChildConnection {
    // Everything the child needs is prepared before the fork: after it, the child only makes
    // async-signal-safe calls (connect, write, read, _exit).
    let addr = sockaddr(path);
    // SAFETY: plain socket(2).
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    // SAFETY: socket just returned fd.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let (ready_r, ready_w) = pipe();
    let (release_r, release_w) = pipe();
    use std::os::fd::AsRawFd;
    let (sfd, rw, rr) = (
        socket.as_raw_fd(),
        ready_w.as_raw_fd(),
        release_r.as_raw_fd(),
    );
    let (ready_r_fd, release_w_fd) = (ready_r.as_raw_fd(), release_w.as_raw_fd());

    // SAFETY: fork in a multi-threaded process; the child below only calls async-signal-safe
    // functions on memory prepared before the fork, and ends with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        unsafe {
            // The parent's ends: the child must not hold the write end it waits on.
            libc::close(ready_r_fd);
            libc::close(release_w_fd);
            let rc = libc::connect(
                sfd,
                &addr as *const libc::sockaddr_un as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
            );
            let status: u8 = if rc == 0 { 1 } else { 2 };
            libc::write(rw, &status as *const u8 as *const libc::c_void, 1);
            let mut b = 0u8;
            libc::read(rr, &mut b as *mut u8 as *mut libc::c_void, 1);
            libc::_exit(0);
        }
    }
    drop(ready_w);
    drop(release_r);
    let mut status = 0u8;
    // SAFETY: reading one byte into a valid buffer.
    let n = unsafe {
        libc::read(
            ready_r.as_raw_fd(),
            &mut status as *mut u8 as *mut libc::c_void,
            1,
        )
    };
    assert!(n == 1 && status == 1, "the child could not connect");
    ChildConnection {
        socket,
        pid,
        release: release_w,
    }
}

impl ChildConnection {
    /// Lets the child exit and reaps it: its PID is free from here on.
    fn exit_and_reap(self) -> (OwnedFd, libc::pid_t) {
        let ChildConnection {
            socket,
            pid,
            release,
        } = self;
        drop(release);
        let mut status = 0;
        // SAFETY: pid is our own child.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(r, pid, "waitpid: {}", std::io::Error::last_os_error());
        (socket, pid)
    }
}

/// A gRPC channel over exactly this already-connected socket.
async fn channel_over(fd: OwnedFd) -> Channel {
    let std_stream = std::os::unix::net::UnixStream::from(fd);
    std_stream.set_nonblocking(true).unwrap();
    let slot = std::sync::Arc::new(std::sync::Mutex::new(Some(std_stream)));
    Endpoint::try_from("http://pid-reuse.invalid")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let slot = slot.clone();
            async move {
                let s = slot.lock().unwrap().take().ok_or_else(|| {
                    std::io::Error::other("the inherited connection can be used once")
                })?;
                let s = tokio::net::UnixStream::from_std(s)?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
            }
        }))
        .await
        .expect("h2 over the inherited connection")
}

fn jwt_request() -> Request<pb::JwtsvidRequest> {
    let mut r = Request::new(pb::JwtsvidRequest {
        audience: vec![AUDIENCE.into()],
        spiffe_id: String::new(),
    });
    r.metadata_mut()
        .insert("workload.spiffe.io", "true".parse().unwrap());
    r
}

fn x509_request() -> Request<pb::X509svidRequest> {
    let mut r = Request::new(pb::X509svidRequest {});
    r.metadata_mut()
        .insert("workload.spiffe.io", "true".parse().unwrap());
    r
}

/// Spawns `sleep` so that it gets `pid`, by setting the kernel's last PID to `pid - 1` first.
/// Retries a few times, since any process on the machine may take the PID in between.
fn take_pid(pid: libc::pid_t) -> Option<Child> {
    for _ in 0..20 {
        if std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string()).is_err() {
            return None;
        }
        let child = Command::new("sleep")
            .arg("30")
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn sleep");
        if child.id() as libc::pid_t == pid {
            return Some(child);
        }
        let mut child = child;
        let _ = child.kill();
        let _ = child.wait();
    }
    None
}

fn is_root() -> bool {
    daemon::euid() == 0
}

#[test]
fn a_reused_pid_never_inherits_the_callers_identity() {
    // The entry matches this uid, so the child, and any process of ours that takes its PID
    // (as root: `sleep`, also uid 0), would match it.
    let d = Daemon::start(DaemonConfig::new().entry_for_me(ID));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    // Control: over a connection whose caller is alive, the call succeeds as that caller.
    let alive = child_connects(d.socket_path());
    let child_pid = alive.pid;
    let ChildConnection {
        socket,
        pid: _,
        release,
    } = alive;
    let mut client =
        rt.block_on(async { SpiffeWorkloadApiClient::new(channel_over(socket).await) });
    let ok = rt
        .block_on(client.fetch_jwtsvid(jwt_request()))
        .expect("a live caller gets its JWT-SVID")
        .into_inner();
    assert_eq!(ok.svids[0].spiffe_id, ID);
    assert!(
        d.log().contains(&format!("pid={child_pid}")),
        "attested as the child (pid {child_pid}), not as the test:\n{}",
        d.log()
    );
    drop(release);
    let mut status = 0;
    // SAFETY: our own child.
    assert_eq!(
        unsafe { libc::waitpid(child_pid, &mut status, 0) },
        child_pid
    );

    // The caller has exited and is reaped: the same connection gets Unavailable.
    let r = rt.block_on(client.fetch_jwtsvid(jwt_request()));
    match r {
        Ok(resp) => panic!("an exited caller got an identity: {:?}", resp.into_inner()),
        Err(s) => {
            assert_eq!(s.code(), Code::Unavailable, "{s:?}");
            assert!(s.message().contains("caller process has exited"), "{s:?}");
        }
    }

    // Now a fresh connection whose caller exits before its first call, with its PID taken.
    let conn = child_connects(d.socket_path());
    // Give the daemon time to accept (and pin) the connection while the child is alive.
    std::thread::sleep(Duration::from_millis(200));
    let (socket, pid) = conn.exit_and_reap();
    let mut taker = None;
    if is_root() {
        taker = take_pid(pid);
        match &taker {
            Some(c) => eprintln!("pid_reuse: sleep (pid {}) took the caller's PID", c.id()),
            None => eprintln!("pid_reuse: could not make another process take PID {pid}; checked the exited caller only"),
        }
    } else {
        eprintln!("pid_reuse: not root: PID takeover (writing /proc/sys/kernel/ns_last_pid) needs root; checked the exited caller only");
    }
    if let Some(c) = &taker {
        assert!(std::path::Path::new(&format!("/proc/{}", c.id())).exists());
    }
    let mut client =
        rt.block_on(async { SpiffeWorkloadApiClient::new(channel_over(socket).await) });
    for attempt in 0..3 {
        let r = rt.block_on(client.fetch_jwtsvid(jwt_request()));
        match r {
            Ok(resp) => panic!(
                "attempt {attempt}: the PID's new owner got an identity: {:?}",
                resp.into_inner()
            ),
            Err(s) => {
                assert_eq!(s.code(), Code::Unavailable, "{s:?}");
                assert!(
                    s.message().contains("caller process has exited"),
                    "{s:?}\n{}",
                    d.log()
                );
            }
        }
        let r = rt.block_on(client.fetch_x509svid(x509_request()));
        assert!(
            matches!(&r, Err(s) if s.code() == Code::Unavailable),
            "FetchX509SVID over the dead caller's connection: {:?}",
            r.map(|_| "a stream")
        );
    }
    if let Some(mut c) = taker {
        let _ = c.kill();
        let _ = c.wait();
    }
    drop(client);
    drop(rt);
    // The daemon is unharmed.
    assert!(d.fetch_jwt(AUDIENCE).starts_with("eyJ"));
}
