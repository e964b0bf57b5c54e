//! What `/proc` tells about the daemon: CPU time and resident memory; plus the open-files limit
//! the stream test needs.

use std::time::Duration;

/// User plus system CPU time of `pid` so far (`/proc/<pid>/stat` utime + stime).
pub fn cpu_time(pid: i32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let ticks = parse_cpu_ticks(&stat)?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as u64 } else { 100 };
    Some(Duration::from_nanos(
        ticks.saturating_mul(1_000_000_000) / hz,
    ))
}

/// The summed CPU time of several processes; `None` when any is unreadable.
pub fn cpu_time_all(pids: &[i32]) -> Option<Duration> {
    pids.iter().map(|&p| cpu_time(p)).sum()
}

/// utime + stime in clock ticks: fields 14 and 15, counted after the parenthesized name.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    let mut fields = after.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Resident set size of `pid` in KiB (`VmRSS` in `/proc/<pid>/status`).
pub fn rss_kib(pid: i32) -> Option<u64> {
    rss(pid).map(|r| r.total_kib)
}

/// A resident set and its two parts, KiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rss {
    pub total_kib: u64,
    /// Pages mapped from files: the binary's code and read-only data, shared libraries.
    pub file_kib: u64,
    /// Heap, stacks and copied-on-write data.
    pub anon_kib: u64,
}

/// `pid`'s resident set from one reading of `/proc/<pid>/status`.
pub fn rss(pid: i32) -> Option<Rss> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_rss(&status)
}

fn parse_rss(status: &str) -> Option<Rss> {
    let kib = |key: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    Some(Rss {
        total_kib: kib("VmRSS:")?,
        file_kib: kib("RssFile:")?,
        anon_kib: kib("RssAnon:")?,
    })
}

/// Raises the open-files limit (children inherit it): the soft limit to the hard one, and
/// both to `want` when the hard limit is lower and the process may raise it
/// (`CAP_SYS_RESOURCE`, up to `/proc/sys/fs/nr_open`). Returns the soft limit in effect.
pub fn raise_nofile_limit(want: u64) -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid rlimit out-pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return None;
    }
    if lim.rlim_max < want {
        let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(want);
        let raised = libc::rlimit {
            rlim_cur: want.min(nr_open),
            rlim_max: want.min(nr_open),
        };
        // SAFETY: a valid rlimit with cur <= max; refused (EPERM) without the capability.
        if raised.rlim_max > lim.rlim_max
            && unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0
        {
            return Some(raised.rlim_cur);
        }
    }
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: a valid rlimit with cur <= max.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return None;
        }
    }
    Some(lim.rlim_cur)
}

/// The PID of the process serving a Unix socket (`SO_PEERCRED` of a fresh connection).
pub fn socket_server_pid(path: &std::path::Path) -> std::io::Result<i32> {
    use std::os::fd::AsRawFd;
    let stream = std::os::unix::net::UnixStream::connect(path)?;
    svid_broker::attest::peer::peer_pid(stream.as_raw_fd())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_after_an_odd_name() {
        let stat = "42 (a) b) S 1 42 42 0 -1 4194560 100 0 0 0 17 5 0 0 20 0 1 0 98765";
        assert_eq!(parse_cpu_ticks(stat), Some(22));
        assert_eq!(parse_cpu_ticks("garbage"), None);
    }

    #[test]
    fn rss_and_its_parts_in_kib() {
        let status = "Name:\tx\nVmPeak:\t 100 kB\nVmRSS:\t    8123 kB\nRssAnon:\t    2100 kB\n\
                      RssFile:\t    6000 kB\nRssShmem:\t      23 kB\nThreads: 2\n";
        let rss = parse_rss(status).unwrap();
        assert_eq!(
            (rss.total_kib, rss.file_kib, rss.anon_kib),
            (8123, 6000, 2100)
        );
        assert_eq!(parse_rss("Name: x\nVmRSS:\t 8123 kB\n"), None);
    }

    #[test]
    fn reads_our_own_process() {
        let me = std::process::id() as i32;
        let rss = rss(me).unwrap();
        assert!(rss.total_kib > 0 && rss.total_kib >= rss.file_kib + rss.anon_kib);
        assert!(cpu_time(me).is_some());
    }
}
