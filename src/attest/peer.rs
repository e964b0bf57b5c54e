//! Pins the calling process at accept time so a PID reused by another process never inherits
//! the caller's identity.
//!
//! `SO_PEERPIDFD` (Linux 6.5+) gives a pidfd for the very process that connected. Older kernels
//! fall back to `pidfd_open(pid)` plus the process start time: that leaves a window between
//! `connect` and `pidfd_open`, narrowed by comparing the start time (which a reused PID does
//! not share) before and after reading `/proc`.

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

/// How the caller's process was pinned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PinMethod {
    /// `SO_PEERPIDFD`: the kernel's own pidfd for the connecting process.
    PeerPidfd,
    /// `pidfd_open` after `SO_PEERCRED`, checked against the process start time.
    PidfdOpen,
}

impl PinMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            PinMethod::PeerPidfd => "SO_PEERPIDFD",
            PinMethod::PidfdOpen => "pidfd_open+start_time",
        }
    }
}

/// Cheap facts about a process that change when it execs another binary or changes owner;
/// compared on every call to decide whether the connection's attestation still holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessFingerprint {
    exe_dev: u64,
    exe_ino: u64,
    proc_uid: u32,
    proc_gid: u32,
}

/// The process on the other end of a Unix socket, held by a pidfd.
#[derive(Debug)]
pub struct PinnedProcess {
    pid: i32,
    uid: u32,
    gid: u32,
    pidfd: OwnedFd,
    method: PinMethod,
    start_time: Option<u64>,
    proc_root: PathBuf,
}

// Not yet in every libc release.
const SO_PEERPIDFD: libc::c_int = 77;

impl PinnedProcess {
    /// Pins the peer of a connected Unix stream socket.
    ///
    /// # Errors
    /// The peer credentials cannot be read, the peer is in another PID namespace (pid 0), or
    /// the process is already gone.
    pub fn from_socket(fd: RawFd) -> io::Result<Self> {
        let cred = peer_cred(fd)?;
        if cred.pid <= 0 {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "caller is in another PID namespace (peer pid 0); run the broker in the caller's PID namespace (hostPID)",
            ));
        }
        let proc_root = PathBuf::from("/proc");
        match peer_pidfd(fd) {
            Ok(pidfd) => Ok(Self {
                pid: cred.pid,
                uid: cred.uid,
                gid: cred.gid,
                pidfd,
                method: PinMethod::PeerPidfd,
                start_time: None,
                proc_root,
            }),
            Err(_) => {
                let start_time = read_start_time(&proc_root, cred.pid)?;
                let pidfd = pidfd_open(cred.pid)?;
                Ok(Self {
                    pid: cred.pid,
                    uid: cred.uid,
                    gid: cred.gid,
                    pidfd,
                    method: PinMethod::PidfdOpen,
                    start_time: Some(start_time),
                    proc_root,
                })
            }
        }
    }

    /// Pins a process by PID (for `debug selectors`, which has no socket).
    ///
    /// # Errors
    /// No such process, or pidfds are unsupported.
    pub fn from_pid(pid: i32) -> io::Result<Self> {
        let proc_root = PathBuf::from("/proc");
        let start_time = read_start_time(&proc_root, pid)?;
        let pidfd = pidfd_open(pid)?;
        let meta = fs::metadata(proc_root.join(pid.to_string()))?;
        Ok(Self {
            pid,
            uid: meta.uid(),
            gid: meta.gid(),
            pidfd,
            method: PinMethod::PidfdOpen,
            start_time: Some(start_time),
            proc_root,
        })
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The uid the kernel recorded at `connect` (SO_PEERCRED).
    pub fn uid(&self) -> u32 {
        self.uid
    }

    pub fn gid(&self) -> u32 {
        self.gid
    }

    pub fn method(&self) -> PinMethod {
        self.method
    }

    /// `/proc/<pid>` of the pinned process.
    pub fn proc_dir(&self) -> PathBuf {
        self.proc_root.join(self.pid.to_string())
    }

    /// True while the pinned process has not exited. A pidfd becomes readable when its process
    /// exits, so a zero-timeout poll answers without touching `/proc`. After reading `/proc`,
    /// a live answer proves the PID was never recycled in between.
    pub fn is_alive(&self) -> bool {
        let mut pfd = libc::pollfd {
            fd: self.pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, zero timeout.
        let n = unsafe { libc::poll(&mut pfd, 1, 0) };
        if n != 0 {
            return false;
        }
        match self.start_time {
            // The fallback pin: the pidfd may name a process that took the PID before we
            // opened it; the start time recorded first tells them apart.
            Some(expected) => read_start_time(&self.proc_root, self.pid).ok() == Some(expected),
            None => true,
        }
    }

    /// The facts compared on each call on a known connection (three syscalls).
    ///
    /// # Errors
    /// The process is gone or `/proc` cannot be read.
    pub fn fingerprint(&self) -> io::Result<ProcessFingerprint> {
        let dir = self.proc_dir();
        let exe = fs::metadata(dir.join("exe"))?;
        let owner = fs::metadata(&dir)?;
        Ok(ProcessFingerprint {
            exe_dev: exe.dev(),
            exe_ino: exe.ino(),
            proc_uid: owner.uid(),
            proc_gid: owner.gid(),
        })
    }
}

struct Cred {
    pid: i32,
    uid: u32,
    gid: u32,
}

/// The PID the kernel recorded for the peer of a connected Unix socket (`SO_PEERCRED`).
///
/// # Errors
/// The descriptor is not a connected Unix socket.
pub fn peer_pid(fd: RawFd) -> io::Result<i32> {
    peer_cred(fd).map(|c| c.pid)
}

fn peer_cred(fd: RawFd) -> io::Result<Cred> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` is a properly sized ucred and `len` holds its size.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Cred {
        pid: cred.pid,
        uid: cred.uid,
        gid: cred.gid,
    })
}

fn peer_pidfd(fd: RawFd) -> io::Result<OwnedFd> {
    let mut pidfd: libc::c_int = -1;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `pidfd` is a c_int and `len` its size.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_PEERPIDFD,
            (&mut pidfd as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc != 0 || pidfd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel handed us a new descriptor we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(pidfd) })
}

fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Field 22 of `/proc/<pid>/stat`: start time in clock ticks since boot.
fn read_start_time(proc_root: &std::path::Path, pid: i32) -> io::Result<u64> {
    let stat = fs::read_to_string(proc_root.join(pid.to_string()).join("stat"))?;
    parse_start_time(&stat).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unreadable /proc/{pid}/stat"),
        )
    })
}

pub(crate) fn parse_start_time(stat: &str) -> Option<u64> {
    // The command name (field 2) is in parentheses and may contain spaces and ')'.
    let after = &stat[stat.rfind(')')? + 1..];
    // After the name: field 3 (state) is index 0, so field 22 is index 19.
    after.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[test]
    fn start_time_survives_odd_command_names() {
        let stat = "42 (a) b) c) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 98765 1000 10";
        assert_eq!(parse_start_time(stat), Some(98765));
        assert_eq!(parse_start_time("garbage"), None);
    }

    #[test]
    fn pins_our_own_end_of_a_socket_pair() {
        let (a, _b) = UnixStream::pair().unwrap();
        let pinned = PinnedProcess::from_socket(a.as_raw_fd()).unwrap();
        assert_eq!(pinned.pid(), std::process::id() as i32);
        assert_eq!(pinned.uid(), unsafe { libc::geteuid() });
        assert!(pinned.is_alive());
        assert!(pinned.fingerprint().is_ok());
    }

    #[test]
    fn a_dead_process_is_not_alive() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pinned = PinnedProcess::from_pid(child.id() as i32).unwrap();
        child.wait().unwrap();
        assert!(!pinned.is_alive());
    }
}
