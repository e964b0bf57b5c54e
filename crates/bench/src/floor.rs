//! What one signed token costs before any other work: the daemon's own ES256 signer, timed in
//! this process on one core. Every MintTaskToken and every FetchJWTSVID for a new audience
//! pays it, so it is a floor under their daemon CPU per call, and the report sets it beside
//! the CPU a throughput target leaves the daemon.

use std::time::{Duration, Instant, SystemTime};

use svid_broker::svid::jwt;
use svid_broker::svid::keys::EcKey;

/// Signatures timed (after as many untimed ones to warm up).
pub const SIGNATURES: u32 = 2_000;

/// Mean µs per JWT signature over a task-token-sized claim set, or why it could not run.
///
/// # Errors
/// The key could not be made or a signature failed.
pub fn es256_sign_us(signatures: u32) -> Result<f64, String> {
    let key = EcKey::generate().map_err(|e| format!("key: {e}"))?;
    let sub = svid_broker::spiffe_id::parse("spiffe://bench.test/agent")
        .map_err(|e| format!("SPIFFE ID: {e}"))?;
    let mut claims = jwt::svid_claims(
        &sub,
        &["https://tool.bench.test".to_string()],
        SystemTime::now(),
        Duration::from_secs(300),
        "0123456789abcdef0123456789abcdef",
    );
    claims.insert("scope".into(), "tool:call".into());
    claims.insert(
        "task_id".into(),
        "task_0123456789abcdef0123456789abcdef".into(),
    );
    let sign = || jwt::sign_es256(&key, "bench-kid", &claims).map_err(|e| e.to_string());
    for _ in 0..signatures {
        sign()?;
    }
    let started = Instant::now();
    for _ in 0..signatures {
        sign()?;
    }
    Ok(started.elapsed().as_secs_f64() * 1e6 / f64::from(signatures.max(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_real_signatures() {
        let us = es256_sign_us(20).unwrap();
        assert!(us > 0.0 && us < 100_000.0, "{us}");
    }
}
