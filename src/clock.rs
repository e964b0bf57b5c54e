//! Wall-clock time as a seam. Whatever time decides (a task's or token's expiry, `iat` and
//! `exp` in what we sign, an OIDC token's validity) asks a [`Clock`], so tests set the time
//! instead of sleeping until it passes.
//!
//! Monotonic deadlines (SVID renewal, key rotation, timeouts) use `tokio::time::Instant`,
//! whose clock tests pause and advance with `#[tokio::test(start_paused = true)]`.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// Now, as the outcome of a decision should see it.
pub trait Clock: Send + Sync + fmt::Debug {
    fn now(&self) -> SystemTime;

    /// Seconds since the Unix epoch, as JWT claims and the task table count.
    fn unix_seconds(&self) -> i64 {
        crate::svid::unix_seconds(self.now())
    }
}

/// The system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// The clock the daemon runs on.
pub fn system() -> Arc<dyn Clock> {
    Arc::new(SystemClock)
}

/// A clock that moves only when told to.
#[derive(Debug, Clone)]
pub struct FakeClock(Arc<Mutex<SystemTime>>);

impl FakeClock {
    /// Starts at `start`.
    pub fn at(start: SystemTime) -> Self {
        Self(Arc::new(Mutex::new(start)))
    }

    /// Starts at the real time now, truncated to whole seconds so claims compare exactly.
    pub fn now_truncated() -> Self {
        let secs = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        Self::at(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
    }

    pub fn advance(&self, by: Duration) {
        let mut t = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *t += by;
    }
}

impl Clock for FakeClock {
    fn now(&self) -> SystemTime {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fake_clock_moves_only_when_advanced() {
        let c = FakeClock::now_truncated();
        let t0 = c.now();
        assert_eq!(c.now(), t0);
        c.advance(Duration::from_secs(90));
        assert_eq!(c.unix_seconds(), crate::svid::unix_seconds(t0) + 90);
    }
}
