//! Pins the calling process at accept time so a PID reused by another process never inherits
//! the caller's identity.
//!
//! `SO_PEERPIDFD` (Linux 6.5+) gives a pidfd for the very process that connected. Older kernels
//! fall back to `pidfd_open(pid)` plus the process start time: that leaves a window between
//! `connect` and `pidfd_open`, narrowed by comparing the start time (which a reused PID does
//! not share) before and after opening the pidfd.
//!
//! Next to the pidfd the pin holds an `O_PATH` descriptor of `/proc/<pid>`, opened by PID and
//! then confirmed against the pidfd. A `/proc/<pid>` descriptor stays bound to the process it
//! was opened for: once that process is gone, lookups under it fail, even after another
//! process takes the PID. The per-call fingerprint is read relative to it, so it walks no
//! path from `/`, builds no string and can never describe a process that reused the PID.

use std::ffi::{CStr, CString};
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

/// The most of `/proc/<pid>/status` read for its groups: the file holds at most 65,536
/// groups (the kernel's `NGROUPS_MAX`), about 720 KB written out.
pub const MAX_STATUS_BYTES: u64 = 1024 * 1024;
/// The buffer a status read starts with: one read fills it for a process in a few groups.
const STATUS_READ_BYTES: usize = 4096;

/// A process's effective gid and supplementary groups (as the kernel lists them, sorted).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessGroups {
    pub gid: u32,
    pub groups: Vec<u32>,
}

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
    /// Device and inode of the file `/proc/<pid>/exe` leads to: the executable the process
    /// runs now (exec, and `PR_SET_MM_EXE_FILE`, change it).
    exe_dev: u64,
    exe_ino: u64,
    /// Its inode change time: a rename (which changes the `unix:path` selector), a chmod or
    /// chown of the executable moves it, at no extra cost (the same `stat`).
    exe_ctime: (i64, i64),
    /// Owner of `/proc/<pid>`: the effective uid and gid of the process now.
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
    /// `/proc/<pid>` (`O_PATH`), confirmed to name the pidfd's process; `None` when the
    /// process was already gone when pinned (or, pinned by PID, the PID already named another
    /// process): it is then never alive.
    proc_dir: Option<OwnedFd>,
    method: PinMethod,
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
        let (pidfd, method, start_time) = match peer_pidfd(fd) {
            Ok(pidfd) => (pidfd, PinMethod::PeerPidfd, None),
            Err(_) => {
                let start_time = read_start_time(cred.pid)?;
                (
                    pidfd_open(cred.pid)?,
                    PinMethod::PidfdOpen,
                    Some(start_time),
                )
            }
        };
        let proc_dir = open_proc_dir(cred.pid, &pidfd, start_time)?;
        Ok(Self {
            pid: cred.pid,
            uid: cred.uid,
            gid: cred.gid,
            pidfd,
            proc_dir,
            method,
        })
    }

    /// Pins a process by PID (for `debug selectors`, which has no socket).
    ///
    /// # Errors
    /// No such process, or pidfds are unsupported.
    pub fn from_pid(pid: i32) -> io::Result<Self> {
        let start_time = read_start_time(pid)?;
        let pidfd = pidfd_open(pid)?;
        let proc_dir =
            open_proc_dir(pid, &pidfd, Some(start_time))?.ok_or_else(|| gone_error(pid))?;
        let owner = fstat(proc_dir.as_fd())?;
        Ok(Self {
            pid,
            uid: owner.st_uid,
            gid: owner.st_gid,
            pidfd,
            proc_dir: Some(proc_dir),
            method: PinMethod::PidfdOpen,
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
        PathBuf::from(format!("/proc/{}", self.pid))
    }

    /// True while the pinned process has not exited. A pidfd becomes readable when its process
    /// exits (a zombie counts as exited), so a zero-timeout poll answers without touching
    /// `/proc`. After reading `/proc` by PID, a live answer proves the PID was never recycled
    /// in between: a PID is free again only once its process is reaped.
    pub fn is_alive(&self) -> bool {
        // The pidfd was confirmed at pin time (see `open_proc_dir`), for both pin methods.
        self.proc_dir.is_some() && !has_exited(self.pidfd.as_fd())
    }

    /// The process's effective gid and supplementary groups now, from `/proc/<pid>/status`
    /// read through the pinned descriptor. The fingerprint cannot see `setgroups` (it changes
    /// no owner and no executable), and reading them costs more than the fingerprint (the
    /// kernel formats the whole file), so the caller layer reads them only for callers whose
    /// groups go beyond their gid.
    ///
    /// # Errors
    /// The process has exited, or its status cannot be read or parsed.
    pub fn groups(&self) -> io::Result<ProcessGroups> {
        let dir = self.proc_dir.as_ref().ok_or_else(|| gone_error(self.pid))?;
        let file = open_in(dir.as_fd(), c"status")?;
        // Room for a usual status (about 1.4 KB) up front: the read then takes two system
        // calls, not the doubling series an empty buffer starts with.
        let mut status = Vec::with_capacity(STATUS_READ_BYTES);
        file.take(MAX_STATUS_BYTES).read_to_end(&mut status)?;
        // The lines read are ASCII; the process name before them need not be UTF-8.
        let status = String::from_utf8_lossy(&status);
        let ids = super::unix::parse_status(&status).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("cannot parse /proc/{}/status", self.pid),
            )
        })?;
        Ok(ProcessGroups {
            gid: ids.gid,
            groups: ids.groups,
        })
    }

    /// The facts compared on each call on a known connection: two `stat`s relative to the
    /// `/proc/<pid>` descriptor, no path walk from `/` and no allocation.
    ///
    /// A fingerprint returned is one of the pinned process while it had not exited, so it
    /// needs no liveness check after it: the descriptor never names another process, and the
    /// executable is looked up last, which succeeds only while the process still has its
    /// memory (an exiting process drops it before it becomes a zombie, i.e. before its pidfd
    /// reads as exited). The owner, read first, was therefore read from the live process too
    /// (a reaped one would read as root).
    ///
    /// # Errors
    /// The process has exited (or its main thread has), or `/proc` cannot be read.
    pub fn fingerprint(&self) -> io::Result<ProcessFingerprint> {
        let dir = self.proc_dir.as_ref().ok_or_else(|| gone_error(self.pid))?;
        let owner = fstat(dir.as_fd())?;
        // Follows the magic link to the running executable, as stat("/proc/<pid>/exe") does.
        let exe = fstatat(dir.as_fd(), c"exe")?;
        Ok(ProcessFingerprint {
            exe_dev: exe.st_dev,
            exe_ino: exe.st_ino,
            exe_ctime: (exe.st_ctime, exe.st_ctime_nsec),
            proc_uid: owner.st_uid,
            proc_gid: owner.st_gid,
        })
    }
}

/// Opens `/proc/<pid>` and confirms that it names the process `pidfd` holds: a process alive
/// after the open held the PID throughout (a PID is reused only after its process is reaped).
/// With `start_time` (the fallback pin, where `pidfd_open` went by PID too) the process must
/// also have started when the one recorded before the pidfd was opened did, or the pidfd
/// names a process that took the caller's PID.
///
/// `Ok(None)`: the pinned process is already gone.
fn open_proc_dir(
    pid: i32,
    pidfd: &OwnedFd,
    start_time: Option<u64>,
) -> io::Result<Option<OwnedFd>> {
    let path = CString::new(format!("/proc/{pid}")).expect("no NUL in a number");
    // SAFETY: a NUL-terminated path; returns a new descriptor or -1.
    let fd = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        let e = io::Error::last_os_error();
        return if has_exited(pidfd.as_fd()) {
            Ok(None)
        } else {
            Err(e)
        };
    }
    // SAFETY: a fresh descriptor we own.
    let dir = unsafe { OwnedFd::from_raw_fd(fd) };
    if let Some(expected) = start_time {
        match read_start_time_at(dir.as_fd(), pid) {
            Ok(t) if t == expected => {}
            Ok(_) => return Ok(None),
            Err(e) => {
                return if has_exited(pidfd.as_fd()) {
                    Ok(None)
                } else {
                    Err(e)
                };
            }
        }
    }
    if has_exited(pidfd.as_fd()) {
        return Ok(None);
    }
    Ok(Some(dir))
}

/// A zero-timeout poll: a pidfd is readable once its process has exited.
fn has_exited(pidfd: BorrowedFd<'_>) -> bool {
    let mut pfd = libc::pollfd {
        fd: pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    n != 0
}

fn gone_error(pid: i32) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("process {pid} has exited"))
}

/// `stat` of `name` under `dir`, following a final symlink.
fn fstatat(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<libc::stat> {
    // SAFETY: all-zero is a valid `stat`, which the kernel fills in.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a valid directory descriptor, a NUL-terminated name and a `stat` to fill.
    let rc = unsafe { libc::fstatat(dir.as_raw_fd(), name.as_ptr(), &mut st, 0) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

/// `stat` of the file `fd` refers to (an `O_PATH` descriptor will do).
fn fstat(fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
    // SAFETY: as in `fstatat`.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a valid descriptor and a `stat` to fill.
    let rc = unsafe { libc::fstat(fd.as_raw_fd(), &mut st) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
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
fn read_start_time(pid: i32) -> io::Result<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    start_time_of(&stat, pid)
}

/// As [`read_start_time`], through a `/proc/<pid>` descriptor.
fn read_start_time_at(dir: BorrowedFd<'_>, pid: i32) -> io::Result<u64> {
    let mut file = open_in(dir, c"stat")?;
    let mut stat = String::new();
    file.read_to_string(&mut stat)?;
    start_time_of(&stat, pid)
}

/// Opens `name` under the `/proc/<pid>` descriptor `dir` for reading: no path walk from `/`.
fn open_in(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<File> {
    // SAFETY: a valid directory descriptor and a NUL-terminated name; returns a new
    // descriptor or -1.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor we own.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

fn start_time_of(stat: &str, pid: i32) -> io::Result<u64> {
    parse_start_time(stat).ok_or_else(|| {
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
    fn the_fingerprint_is_what_stat_by_path_says() {
        use std::os::unix::fs::MetadataExt;
        let pinned = PinnedProcess::from_pid(std::process::id() as i32).unwrap();
        let exe = fs::metadata(format!("/proc/{}/exe", pinned.pid())).unwrap();
        let owner = fs::metadata(pinned.proc_dir()).unwrap();
        assert_eq!(
            pinned.fingerprint().unwrap(),
            ProcessFingerprint {
                exe_dev: exe.dev(),
                exe_ino: exe.ino(),
                exe_ctime: (exe.ctime(), exe.ctime_nsec()),
                proc_uid: owner.uid(),
                proc_gid: owner.gid(),
            }
        );
        assert_eq!((pinned.uid(), pinned.gid()), (owner.uid(), owner.gid()));
    }

    #[test]
    fn a_dead_process_is_not_alive() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let pinned = PinnedProcess::from_pid(pid).unwrap();
        assert!(pinned.is_alive());
        assert!(pinned.fingerprint().is_ok());
        child.kill().unwrap();
        // A zombie (exited, not reaped) has no fingerprint: the exe lookup fails.
        wait_for_zombie(pid);
        assert!(!pinned.is_alive());
        assert!(pinned.fingerprint().is_err());
        child.wait().unwrap();
        assert!(!pinned.is_alive());
        assert!(pinned.fingerprint().is_err());
    }

    fn wait_for_zombie(pid: i32) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap()
            .contains(") Z ")
        {
            assert!(std::time::Instant::now() < deadline, "{pid} did not exit");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    #[test]
    fn a_process_that_exited_cannot_be_pinned_by_pid() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        // Exited, not reaped: its PID and /proc entry are still there.
        wait_for_zombie(pid);
        assert!(PinnedProcess::from_pid(pid).is_err());
        child.wait().unwrap();
    }

    /// Makes a new `sleep` take `pid` by setting the kernel's last PID to `pid - 1` first (root
    /// only). Retries, since any process on the machine may take the PID in between.
    fn take_pid(pid: i32) -> Option<std::process::Child> {
        for _ in 0..20 {
            fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string()).ok()?;
            let mut child = std::process::Command::new("sleep").arg("30").spawn().ok()?;
            if child.id() as i32 == pid {
                return Some(child);
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        None
    }

    #[test]
    fn the_pin_never_describes_a_process_that_took_the_pid() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let pinned = PinnedProcess::from_pid(pid).unwrap();
        let known = pinned.fingerprint().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        let Some(mut taker) = take_pid(pid) else {
            eprintln!("could not make another process take PID {pid} (needs root); checked the exited process only");
            assert!(!pinned.is_alive() && pinned.fingerprint().is_err());
            return;
        };
        // Same program, same user, same PID: only the pin tells them apart.
        assert!(fs::metadata(format!("/proc/{pid}/exe")).is_ok());
        assert!(!pinned.is_alive());
        let now = pinned.fingerprint();
        let _ = taker.kill();
        let _ = taker.wait();
        assert!(now.is_err(), "{now:?} (was {known:?})");
    }
}
