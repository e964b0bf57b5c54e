//! SVID minting and checking, and bundle encodings: the format rules of the SPIFFE standards,
//! independent of who holds the keys.

pub mod bundle;
pub mod der;
pub mod jwt;
pub mod keys;
pub mod pem;
pub mod task_audience;
pub mod x509;

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch (0 for clocks before it).
pub fn unix_seconds(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A random identifier of `bytes` random bytes, hex encoded.
///
/// Drawn from the thread's CSPRNG (ChaCha12, reseeded from the OS every 64 KiB of output), not
/// from a `getrandom` system call per id: task ids and token ids are minted on every
/// TaskBroker call, and the call into the kernel cost more than the hex encoding around it.
pub fn random_hex(bytes: usize) -> String {
    use rand::RngCore;
    let mut buf = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut buf);
    hex::encode(buf)
}
