//! Reconnect delays: exponential from [`FIRST`] to [`CEILING`], each drawn uniformly from the
//! upper half of the current step (so a fleet of brokers does not reconnect in lockstep), reset
//! once a stream delivered a message.

use std::time::Duration;

pub const FIRST: Duration = Duration::from_millis(250);
pub const CEILING: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct Backoff {
    step: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { step: FIRST }
    }
}

impl Backoff {
    /// The next delay, in `[step/2, step]`; the step then doubles up to the ceiling.
    pub fn next_delay(&mut self) -> Duration {
        use rand::Rng;
        let step = self.step;
        self.step = (step * 2).min(CEILING);
        let half = step / 2;
        half + half.mul_f64(rand::thread_rng().gen_range(0.0..=1.0))
    }

    pub fn reset(&mut self) {
        self.step = FIRST;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_ceiling_with_jitter_and_resets() {
        let mut b = Backoff::default();
        let first = b.next_delay();
        assert!(first >= FIRST / 2 && first <= FIRST, "{first:?}");
        let mut last = first;
        for _ in 0..20 {
            last = b.next_delay();
            assert!(last <= CEILING && last >= FIRST / 2);
        }
        assert!(last >= CEILING / 2, "{last:?}");
        b.reset();
        assert!(b.next_delay() <= FIRST);
    }
}
