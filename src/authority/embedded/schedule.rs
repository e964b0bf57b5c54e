//! When keys and SVIDs rotate, as small pure functions.
//!
//! A signing key (CA or JWT key) lives `ttl`. At half its life a successor is prepared and
//! published in the bundle; at three quarters the successor becomes the signer. The old key
//! stays in the bundle until it expires, so everything it signed still verifies, and every
//! relying party has had a quarter of the lifetime to learn the successor before anything is
//! signed with it.

use std::time::Duration;

/// Where a signing key stands, by age.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyPhase {
    /// Young: sign with it.
    Fresh,
    /// Past half-life: a successor should be in the bundle.
    PrepareSuccessor,
    /// Past three quarters: the successor should sign.
    ActivateSuccessor,
    /// Past its lifetime: drop it from the bundle.
    Expired,
}

pub fn key_phase(age: Duration, ttl: Duration) -> KeyPhase {
    if age >= ttl {
        KeyPhase::Expired
    } else if age >= ttl * 3 / 4 {
        KeyPhase::ActivateSuccessor
    } else if age >= ttl / 2 {
        KeyPhase::PrepareSuccessor
    } else {
        KeyPhase::Fresh
    }
}

/// Time from issue until the key's next phase change, `None` once expired.
pub fn next_key_event(age: Duration, ttl: Duration) -> Option<Duration> {
    [ttl / 2, ttl * 3 / 4, ttl]
        .into_iter()
        .find(|&t| t > age)
        .map(|t| t - age)
}

/// When an SVID of lifetime `ttl` is renewed: at half-life, moved by `jitter` in [-1, 1]
/// times a tenth of the half-life, so many SVIDs minted together do not renew together.
pub fn svid_refresh_in(ttl: Duration, jitter: f64) -> Duration {
    let half = ttl.as_secs_f64() / 2.0;
    let j = jitter.clamp(-1.0, 1.0) * half / 10.0;
    Duration::from_secs_f64((half + j).max(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: Duration = Duration::from_secs(3600);

    #[test]
    fn phases_at_their_edges() {
        let cases = [
            (0, KeyPhase::Fresh),
            (1799, KeyPhase::Fresh),
            (1800, KeyPhase::PrepareSuccessor),
            (2699, KeyPhase::PrepareSuccessor),
            (2700, KeyPhase::ActivateSuccessor),
            (3599, KeyPhase::ActivateSuccessor),
            (3600, KeyPhase::Expired),
        ];
        for (secs, want) in cases {
            assert_eq!(key_phase(Duration::from_secs(secs), H), want, "age {secs}");
        }
    }

    #[test]
    fn next_event_walks_the_phases() {
        assert_eq!(next_key_event(Duration::ZERO, H), Some(H / 2));
        assert_eq!(next_key_event(H / 2, H), Some(H / 4));
        assert_eq!(next_key_event(H * 3 / 4, H), Some(H / 4));
        assert_eq!(next_key_event(H, H), None);
    }

    #[test]
    fn refresh_is_half_life_within_ten_percent() {
        assert_eq!(svid_refresh_in(H, 0.0), H / 2);
        assert_eq!(svid_refresh_in(H, 1.0), Duration::from_secs(1980));
        assert_eq!(svid_refresh_in(H, -1.0), Duration::from_secs(1620));
        assert_eq!(svid_refresh_in(H, 7.0), Duration::from_secs(1980));
        assert!(svid_refresh_in(H, 1.0) < H);
    }
}
