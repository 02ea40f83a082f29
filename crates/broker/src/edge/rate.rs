//! The per-client message rate limit: a token bucket of `per_second` messages, bursts of one
//! second's worth. The session asks it how long to stop reading; it never sleeps itself, so
//! a pause holds back only the client's publishes, not what goes out to it, its keep-alive or
//! shutdown.

use std::time::{Duration, Instant};

/// A token bucket per client.
pub(crate) struct RateLimit {
    per_second: f64,
    tokens: f64,
    at: Instant,
}

impl RateLimit {
    pub(crate) fn new(per_second: u32) -> Self {
        Self {
            per_second: f64::from(per_second),
            tokens: f64::from(per_second),
            at: Instant::now(),
        }
    }

    /// `n` messages were accepted from the client.
    pub(crate) fn count(&mut self, n: u32) {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * self.per_second)
            .min(self.per_second);
        self.at = now;
        self.tokens -= f64::from(n);
    }

    /// How long to stop reading so that the client keeps to its rate.
    pub(crate) fn pause(&self) -> Option<Duration> {
        (self.tokens < 0.0).then(|| Duration::from_secs_f64(-self.tokens / self.per_second))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_limit_pauses_only_past_the_rate() {
        let mut rate = RateLimit::new(100);
        rate.count(100);
        assert!(rate.pause().is_none());
        rate.count(50);
        let pause = rate.pause().expect("over the rate");
        assert!(pause > Duration::from_millis(400) && pause <= Duration::from_millis(500));
    }
}
