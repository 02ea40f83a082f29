//! Login throttling, per source address and overall, so that guessing passwords costs an
//! attacker time and costs the gateway little: an attempt that is throttled is answered at once,
//! before any password is hashed.
//!
//! Per address, the first [`FREE_FAILURES`] failures cost nothing; each further one doubles the
//! wait before the next attempt (1 s, 2 s, 4 s, … up to [`MAX_DELAY`]); a success clears the
//! address. Overall, at most [`GLOBAL_FAILURES_PER_MINUTE`] failures a minute from all addresses
//! together, so that many addresses (an IPv6 prefix, a botnet) do not multiply the rate. The
//! table of addresses is bounded ([`MAX_ADDRESSES`]); when it is full, the entry seen least
//! recently goes.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Failures from one address before it has to wait.
pub const FREE_FAILURES: u32 = 3;
/// The longest wait imposed on one address.
pub const MAX_DELAY: Duration = Duration::from_secs(300);
/// Failed logins a minute from everywhere before every login waits.
pub const GLOBAL_FAILURES_PER_MINUTE: u32 = 30;
/// Addresses remembered.
const MAX_ADDRESSES: usize = 4096;

#[derive(Debug, Clone, Copy)]
struct Record {
    failures: u32,
    next_allowed: Instant,
    seen: Instant,
}

#[derive(Debug, Default)]
struct State {
    by_address: HashMap<IpAddr, Record>,
    /// Failures in the current minute, and when it started.
    window: Option<(Instant, u32)>,
}

/// The throttle.
#[derive(Debug, Default)]
pub struct Throttle {
    state: Mutex<State>,
}

impl Throttle {
    /// `Err(wait)` when `address` must wait before trying again.
    pub fn check(&self, address: IpAddr) -> Result<(), Duration> {
        let now = Instant::now();
        let state = self.lock();
        if let Some((start, failures)) = state.window
            && failures >= GLOBAL_FAILURES_PER_MINUTE
            && now.duration_since(start) < Duration::from_secs(60)
        {
            return Err(Duration::from_secs(60) - now.duration_since(start));
        }
        match state.by_address.get(&key(address)) {
            Some(record) if record.next_allowed > now => Err(record.next_allowed - now),
            _ => Ok(()),
        }
    }

    /// A failed attempt from `address`.
    pub fn failed(&self, address: IpAddr) {
        let now = Instant::now();
        let mut state = self.lock();
        state.window = match state.window {
            Some((start, n)) if now.duration_since(start) < Duration::from_secs(60) => {
                Some((start, n + 1))
            }
            _ => Some((now, 1)),
        };
        if state.by_address.len() >= MAX_ADDRESSES && !state.by_address.contains_key(&key(address))
        {
            let stalest = state
                .by_address
                .iter()
                .min_by_key(|(_, r)| r.seen)
                .map(|(a, _)| *a);
            if let Some(stalest) = stalest {
                state.by_address.remove(&stalest);
            }
        }
        let record = state.by_address.entry(key(address)).or_insert(Record {
            failures: 0,
            next_allowed: now,
            seen: now,
        });
        record.failures += 1;
        record.seen = now;
        record.next_allowed = now + delay_after(record.failures);
    }

    /// A successful login from `address`: it starts afresh.
    pub fn succeeded(&self, address: IpAddr) {
        self.lock().by_address.remove(&key(address));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The wait after the `failures`th failure.
pub fn delay_after(failures: u32) -> Duration {
    match failures.checked_sub(FREE_FAILURES) {
        None | Some(0) => Duration::ZERO,
        Some(n) => Duration::from_secs(1u64 << (n - 1).min(16)).min(MAX_DELAY),
    }
}

/// IPv6 addresses are throttled by their /64 (one subscriber's prefix), IPv4 ones alone.
fn key(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(_) => address,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut segments = v6.segments();
                segments[4..].fill(0);
                IpAddr::V6(segments.into())
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_grows_after_the_free_failures_and_is_capped() {
        assert_eq!(delay_after(1), Duration::ZERO);
        assert_eq!(delay_after(FREE_FAILURES), Duration::ZERO);
        assert_eq!(delay_after(FREE_FAILURES + 1), Duration::from_secs(1));
        assert_eq!(delay_after(FREE_FAILURES + 2), Duration::from_secs(2));
        assert_eq!(delay_after(FREE_FAILURES + 5), Duration::from_secs(16));
        assert_eq!(delay_after(1000), MAX_DELAY);
    }

    #[test]
    fn one_address_waits_another_does_not_and_success_clears() {
        let throttle = Throttle::default();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..=FREE_FAILURES {
            assert!(throttle.check(a).is_ok());
            throttle.failed(a);
        }
        assert!(throttle.check(a).is_err());
        assert!(throttle.check(b).is_ok());
        throttle.succeeded(a);
        assert!(throttle.check(a).is_ok());
    }

    #[test]
    fn an_ipv6_prefix_counts_as_one_and_many_addresses_hit_the_overall_limit() {
        let throttle = Throttle::default();
        for i in 0..=FREE_FAILURES {
            let address: IpAddr = format!("2001:db8::{i}").parse().unwrap();
            throttle.failed(address);
        }
        assert!(throttle.check("2001:db8::ffff".parse().unwrap()).is_err());

        let throttle = Throttle::default();
        for i in 0..GLOBAL_FAILURES_PER_MINUTE {
            throttle.failed(IpAddr::from([10, 0, (i / 256) as u8, i as u8]));
        }
        let wait = throttle.check("198.51.100.7".parse().unwrap()).unwrap_err();
        assert!(wait <= Duration::from_secs(60));
    }
}
