//! Reconnect delays: exponential with full jitter, capped.
//!
//! Full jitter (a uniform delay between zero and the exponential ceiling) spreads the
//! reconnects of many gateways after a cloud outage instead of synchronising them. The attempt
//! count is reset only after a connection has stayed up for a while, so a broker that accepts
//! and kicks us at once (a duplicate client id, a quota) still sees growing delays.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long a connection must last before the next failure starts from the first delay again.
pub(crate) const STABLE_AFTER: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
    rng: u64,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        Self {
            min,
            max,
            attempt: 0,
            rng: seed | 1,
        }
    }

    /// The delay before the next attempt.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let ceiling = self
            .min
            .saturating_mul(1u32.checked_shl(self.attempt.min(20)).unwrap_or(u32::MAX))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        ceiling.mul_f64(self.uniform())
    }

    /// The connection proved stable: start from the first delay again.
    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }

    /// A uniform number in [0, 1) (xorshift64*: jitter needs spread, not secrecy).
    fn uniform(&mut self) -> f64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let x = self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D);
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_within_the_ceiling_and_stay_capped() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        for attempt in 0..12u32 {
            let ceiling =
                Duration::from_millis(100 * (1u64 << attempt.min(20))).min(Duration::from_secs(2));
            let d = b.next_delay();
            assert!(d <= ceiling, "attempt {attempt}: {d:?} > {ceiling:?}");
        }
    }

    #[test]
    fn delays_are_jittered_and_reset_starts_over() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(60));
        for _ in 0..8 {
            b.next_delay();
        }
        let late: Vec<Duration> = (0..20).map(|_| b.next_delay()).collect();
        let distinct: std::collections::HashSet<_> = late.iter().collect();
        assert!(distinct.len() > 15, "jittered: {late:?}");
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
