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
pub fn random_hex(bytes: usize) -> String {
    use rand::RngCore;
    let mut buf = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut buf);
    hex::encode(buf)
}
