//! Bounds that hold before a caller is known. The public socket is world-connectable, so
//! every byte a local user can send costs a bounded amount of CPU, memory, file descriptors
//! and time before attestation says who they are.
//!
//! Fixed bounds are constants (they follow from the wire format or the API's own field
//! limits); bounds an operator may need to move are keys of the `[limits]` config section,
//! each with a default, a floor and a ceiling checked at load.

use std::time::Duration;

use serde::Deserialize;

/// Largest header list (decoded size) a client may send; advertised as
/// `SETTINGS_MAX_HEADER_LIST_SIZE`. gRPC request headers are a few hundred bytes.
pub const MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;

/// Most audiences in one Workload API FetchJWTSVID request.
pub const MAX_AUDIENCES: usize = 64;
/// Longest single audience, in bytes.
pub const MAX_AUDIENCE_BYTES: usize = 2048;
/// Longest SPIFFE ID accepted in a request (the SPIFFE ID spec's URI limit).
pub const MAX_SPIFFE_ID_BYTES: usize = 2048;

/// Largest Workload API request message. The largest legal request is a FetchJWTSVID with
/// [`MAX_AUDIENCES`](MAX_AUDIENCES) audiences of
/// [`MAX_AUDIENCE_BYTES`](MAX_AUDIENCE_BYTES) and a SPIFFE ID: each
/// field costs its bytes plus at most 4 bytes of tag and length, so 133,380 bytes.
pub const MAX_WORKLOAD_REQUEST_BYTES: usize =
    MAX_AUDIENCES * (MAX_AUDIENCE_BYTES + 4) + MAX_SPIFFE_ID_BYTES + 4;

/// Largest request message of the Workload API RPCs whose request has no fields
/// (FetchX509SVID, FetchX509Bundles, FetchJWTBundles, FetchWITBundles). A client sends an
/// empty message; the room is for fields a newer client may add, which are skipped. Counting
/// these calls at this size instead of [`MAX_WORKLOAD_REQUEST_BYTES`] lets a client open
/// thousands of streams at once within the default
/// `max_pending_request_bytes_per_uid` (about 250 before).
pub const MAX_EMPTY_REQUEST_BYTES: usize = 1024;

/// Workload API RPCs whose request message has no fields.
const EMPTY_REQUEST_RPCS: [&str; 4] = [
    "/SpiffeWorkloadAPI/FetchX509SVID",
    "/SpiffeWorkloadAPI/FetchX509Bundles",
    "/SpiffeWorkloadAPI/FetchJWTBundles",
    "/SpiffeWorkloadAPI/FetchWITBundles",
];

/// Bytes before each gRPC message on the wire: a compression flag and a 4-byte length.
pub const GRPC_MESSAGE_PREFIX_BYTES: usize = 5;

/// Largest TaskBroker or Admin request message. OpenTask is the largest: purpose (1 KiB),
/// 16 audiences of 2 KiB, 32 scopes of 128 bytes, a parent and a subject token of 8 KiB each,
/// with field overhead ≈ 54 KiB.
pub const MAX_BROKER_REQUEST_BYTES: usize = 64 * 1024;

/// Largest health or reflection request message (a service name, a file name).
pub const MAX_SMALL_REQUEST_BYTES: usize = 16 * 1024;

/// How long to pause accepting after the process or system runs out of file descriptors
/// (EMFILE, ENFILE) or memory for sockets (ENOBUFS, ENOMEM): retrying at once would spin.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// File descriptors kept free for everything that is not a caller (keys, the audit log,
/// the kubelet client, the metrics listener, the SPIRE agent).
pub const RESERVED_FDS: u64 = 64;

/// File descriptors one caller costs: its socket, its pidfd and its `/proc/<pid>` descriptor.
pub const FDS_PER_CONNECTION: u64 = 3;

/// Log at most one "connection refused" warning per uid in this interval (the metric counts
/// every one).
pub const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

const DEFAULT_MAX_CONNECTIONS: usize = 8192;
const DEFAULT_MAX_CONNECTIONS_PER_UID: usize = 512;
const DEFAULT_MAX_STREAMS_PER_CONNECTION: u32 = 128;
const DEFAULT_MAX_PENDING_REQUEST_BYTES_PER_UID: usize = 32 * 1024 * 1024;
const DEFAULT_NEW_CONNECTIONS_PER_UID_PER_SECOND: u32 = 200;
const DEFAULT_NEW_CONNECTIONS_PER_UID_BURST: u32 = 400;
const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
const DEFAULT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(60);
const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// Floors and ceilings of the `[limits]` keys: below the floors a legitimate client cannot
/// work; above the ceilings the bound no longer protects anything.
const MAX_CONNECTIONS_RANGE: (usize, usize) = (16, 1_000_000);
const MAX_STREAMS_RANGE: (u32, u32) = (4, 10_000);
const CONNECTION_RATE_RANGE: (u32, u32) = (1, 1_000_000);
const PENDING_BYTES_RANGE: (usize, usize) = (1024 * 1024, 1024 * 1024 * 1024);
const TIMEOUT_RANGE: (Duration, Duration) =
    (Duration::from_millis(100), Duration::from_secs(24 * 3600));

/// `[limits]`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectionLimits {
    /// Most open connections on all sockets together; also capped by the file-descriptor
    /// limit at start (each caller costs [`FDS_PER_CONNECTION`]). Over it: the connection is
    /// closed at once.
    pub max_connections: usize,
    /// Most open connections from one uid (known from `SO_PEERCRED` at accept, before any
    /// byte is read).
    pub max_connections_per_uid: usize,
    /// New connections one uid may open per second, on average; over it they are closed at
    /// once, which keeps a connect-and-close flood from filling the listen backlog.
    pub new_connections_per_uid_per_second: u32,
    /// How many new connections one uid may open at once above that rate.
    pub new_connections_per_uid_burst: u32,
    /// `SETTINGS_MAX_CONCURRENT_STREAMS`: streams one connection may have open.
    pub max_streams_per_connection: u32,
    /// Request bodies of one uid not yet received in full, counted at the largest message
    /// their RPC accepts. Over it, a new call gets `ResourceExhausted` before its body is
    /// read.
    pub max_pending_request_bytes_per_uid: usize,
    /// A connection must complete the HTTP/2 preface within this.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// A request message must arrive in full within this of the call starting.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// A connection with no open call and nothing received for this long is closed.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// HTTP/2 PING to a connection with open streams after this much silence...
    #[serde(with = "humantime_serde")]
    pub keepalive_interval: Duration,
    /// ...and closed if the PING is not answered within this.
    #[serde(with = "humantime_serde")]
    pub keepalive_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_uid: DEFAULT_MAX_CONNECTIONS_PER_UID,
            new_connections_per_uid_per_second: DEFAULT_NEW_CONNECTIONS_PER_UID_PER_SECOND,
            new_connections_per_uid_burst: DEFAULT_NEW_CONNECTIONS_PER_UID_BURST,
            max_streams_per_connection: DEFAULT_MAX_STREAMS_PER_CONNECTION,
            max_pending_request_bytes_per_uid: DEFAULT_MAX_PENDING_REQUEST_BYTES_PER_UID,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            keepalive_interval: DEFAULT_KEEPALIVE_INTERVAL,
            keepalive_timeout: DEFAULT_KEEPALIVE_TIMEOUT,
        }
    }
}

impl ConnectionLimits {
    /// # Errors
    /// A key outside its range, named with the range.
    pub fn validate(&self) -> Result<(), String> {
        in_range(
            "limits.max_connections",
            self.max_connections,
            MAX_CONNECTIONS_RANGE,
        )?;
        in_range(
            "limits.max_connections_per_uid",
            self.max_connections_per_uid,
            (1, self.max_connections),
        )?;
        in_range(
            "limits.new_connections_per_uid_per_second",
            self.new_connections_per_uid_per_second,
            CONNECTION_RATE_RANGE,
        )?;
        in_range(
            "limits.new_connections_per_uid_burst",
            self.new_connections_per_uid_burst,
            CONNECTION_RATE_RANGE,
        )?;
        in_range(
            "limits.max_streams_per_connection",
            self.max_streams_per_connection,
            MAX_STREAMS_RANGE,
        )?;
        in_range(
            "limits.max_pending_request_bytes_per_uid",
            self.max_pending_request_bytes_per_uid,
            PENDING_BYTES_RANGE,
        )?;
        for (name, d) in [
            ("limits.handshake_timeout", self.handshake_timeout),
            ("limits.request_timeout", self.request_timeout),
            ("limits.idle_timeout", self.idle_timeout),
            ("limits.keepalive_interval", self.keepalive_interval),
            ("limits.keepalive_timeout", self.keepalive_timeout),
        ] {
            if d < TIMEOUT_RANGE.0 || d > TIMEOUT_RANGE.1 {
                return Err(format!(
                    "{name} = {:?} is outside {:?}..={:?}",
                    d, TIMEOUT_RANGE.0, TIMEOUT_RANGE.1
                ));
            }
        }
        Ok(())
    }

    /// The most request body bytes (messages with their prefixes) a call to `path` may send,
    /// when tonic's per-service message limit is larger than the RPC's own: every Workload
    /// API RPC takes exactly one request message, so its body is that message and its
    /// prefix. `None`: the service's limit is the RPC's (streaming requests, such as
    /// reflection's, send many messages).
    pub fn max_request_body_bytes(path: &str) -> Option<usize> {
        EMPTY_REQUEST_RPCS
            .contains(&path)
            .then_some(MAX_EMPTY_REQUEST_BYTES + GRPC_MESSAGE_PREFIX_BYTES)
    }

    /// The largest request message of the RPC at `path` (`/package.Service/Method`).
    pub fn max_request_bytes(path: &str) -> usize {
        if EMPTY_REQUEST_RPCS.contains(&path) {
            MAX_EMPTY_REQUEST_BYTES
        } else if path.starts_with("/SpiffeWorkloadAPI/") {
            MAX_WORKLOAD_REQUEST_BYTES
        } else if path.starts_with("/svidbroker.") {
            MAX_BROKER_REQUEST_BYTES
        } else {
            MAX_SMALL_REQUEST_BYTES
        }
    }
}

fn in_range<T: PartialOrd + std::fmt::Display>(
    name: &str,
    v: T,
    (lo, hi): (T, T),
) -> Result<(), String> {
    if v < lo || v > hi {
        Err(format!("{name} = {v} is outside {lo}..={hi}"))
    } else {
        Ok(())
    }
}

/// Raises the soft file-descriptor limit to the hard one and returns the soft limit now in
/// force, so the connection cap can be set to what the process can really hold.
pub fn raise_fd_limit() -> std::io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write/read only the struct passed.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        }
    }
    Ok(lim.rlim_cur)
}

/// Connections the process can hold with `fd_limit` descriptors.
pub fn connections_for_fds(fd_limit: u64) -> usize {
    (fd_limit.saturating_sub(RESERVED_FDS) / FDS_PER_CONNECTION) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_edges_are_checked() {
        let d = ConnectionLimits::default();
        d.validate().unwrap();
        let at = |f: &dyn Fn(&mut ConnectionLimits)| {
            let mut l = ConnectionLimits::default();
            f(&mut l);
            l.validate()
        };
        let lowest = MAX_CONNECTIONS_RANGE.0;
        assert!(at(&|l| {
            l.max_connections = lowest;
            l.max_connections_per_uid = lowest;
        })
        .is_ok());
        assert!(at(&|l| {
            l.max_connections = lowest - 1;
            l.max_connections_per_uid = 1;
        })
        .is_err());
        assert!(at(&|l| l.max_connections = MAX_CONNECTIONS_RANGE.1 + 1).is_err());
        assert!(at(&|l| l.max_connections_per_uid = 0).is_err());
        let e = at(&|l| l.max_connections_per_uid = l.max_connections + 1).unwrap_err();
        assert!(e.contains("limits.max_connections_per_uid"), "{e}");
        assert!(at(&|l| l.max_streams_per_connection = MAX_STREAMS_RANGE.0).is_ok());
        assert!(at(&|l| l.max_streams_per_connection = MAX_STREAMS_RANGE.0 - 1).is_err());
        assert!(at(&|l| l.max_pending_request_bytes_per_uid = PENDING_BYTES_RANGE.0).is_ok());
        assert!(at(&|l| l.max_pending_request_bytes_per_uid = PENDING_BYTES_RANGE.0 - 1).is_err());
        assert!(at(&|l| l.new_connections_per_uid_per_second = 0).is_err());
        assert!(at(&|l| l.new_connections_per_uid_burst = CONNECTION_RATE_RANGE.1 + 1).is_err());
        assert!(at(&|l| l.new_connections_per_uid_burst = CONNECTION_RATE_RANGE.0).is_ok());
        assert!(at(&|l| l.idle_timeout = TIMEOUT_RANGE.0).is_ok());
        assert!(at(&|l| l.idle_timeout = Duration::from_millis(99)).is_err());
        assert!(at(&|l| l.handshake_timeout = TIMEOUT_RANGE.1 + Duration::from_secs(1)).is_err());
    }

    #[test]
    fn the_workload_api_bound_fits_its_largest_legal_request() {
        use crate::proto::workload::JwtsvidRequest;
        use prost::Message;
        let largest = JwtsvidRequest {
            audience: vec!["a".repeat(MAX_AUDIENCE_BYTES); MAX_AUDIENCES],
            spiffe_id: "s".repeat(MAX_SPIFFE_ID_BYTES),
        };
        assert!(largest.encoded_len() <= MAX_WORKLOAD_REQUEST_BYTES);
        assert!(largest.encoded_len() + 1024 > MAX_WORKLOAD_REQUEST_BYTES);
    }

    #[test]
    fn requests_are_bounded_by_their_service() {
        assert_eq!(
            ConnectionLimits::max_request_bytes("/SpiffeWorkloadAPI/FetchJWTSVID"),
            MAX_WORKLOAD_REQUEST_BYTES
        );
        assert_eq!(
            ConnectionLimits::max_request_bytes("/svidbroker.v1.TaskBroker/OpenTask"),
            MAX_BROKER_REQUEST_BYTES
        );
        assert_eq!(
            ConnectionLimits::max_request_bytes("/grpc.health.v1.Health/Check"),
            MAX_SMALL_REQUEST_BYTES
        );
        for rpc in EMPTY_REQUEST_RPCS {
            assert_eq!(
                ConnectionLimits::max_request_bytes(rpc),
                MAX_EMPTY_REQUEST_BYTES
            );
            assert_eq!(
                ConnectionLimits::max_request_body_bytes(rpc),
                Some(MAX_EMPTY_REQUEST_BYTES + GRPC_MESSAGE_PREFIX_BYTES)
            );
        }
        assert_eq!(
            ConnectionLimits::max_request_body_bytes("/SpiffeWorkloadAPI/FetchJWTSVID"),
            None
        );
    }

    #[test]
    fn the_empty_requests_have_no_fields() {
        use crate::proto::workload::{
            JwtBundlesRequest, WitBundlesRequest, X509BundlesRequest, X509svidRequest,
        };
        use prost::Message;
        // Adding a field to one of these would make its bound too small: this fails first.
        assert_eq!(X509svidRequest {}.encoded_len(), 0);
        assert_eq!(X509BundlesRequest {}.encoded_len(), 0);
        assert_eq!(JwtBundlesRequest {}.encoded_len(), 0);
        assert_eq!(WitBundlesRequest {}.encoded_len(), 0);
    }

    #[test]
    fn fd_limit_gives_the_connection_cap() {
        assert_eq!(connections_for_fds(1024), (1024 - 64) / 3);
        assert_eq!(connections_for_fds(10), 0);
        assert!(raise_fd_limit().unwrap() >= 1024);
    }
}
