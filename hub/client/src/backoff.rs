//! Exponential backoff with full jitter, for reconnecting to hubs and devices.
//!
//! Each delay is drawn uniformly between zero and a bound that doubles from
//! `initial` up to `max`, so many clients that lost the same peer spread out
//! instead of retrying in step, at the cap as much as before it.

use std::time::Duration;

/// Delays for successive attempts.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    bound: Duration,
    state: u64,
}

impl Backoff {
    /// Bounds doubling from `initial` up to `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        Self::with_seed(initial, max, seed)
    }

    /// The same, with a fixed seed (for tests).
    pub fn with_seed(initial: Duration, max: Duration, seed: u64) -> Self {
        Backoff {
            initial,
            max: max.max(initial),
            bound: initial,
            // Mixed so that seeds close together (clocks) give unrelated sequences.
            state: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
        }
    }

    /// The next delay: uniform in `0..=bound`; the bound then doubles, up to `max`.
    pub fn next_delay(&mut self) -> Duration {
        // xorshift64: plenty for spreading retries apart.
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        let frac = (self.state >> 11) as f64 / (1u64 << 53) as f64;
        let delay = self.bound.mul_f64(frac);
        self.bound = (self.bound * 2).min(self.max);
        delay
    }

    /// Back to the first bound, after a success.
    pub fn reset(&mut self) {
        self.bound = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_cap_and_stay_jittered_there() {
        let mut b = Backoff::with_seed(Duration::from_millis(100), Duration::from_secs(1), 7);
        let first = b.next_delay();
        assert!(first <= Duration::from_millis(100), "{first:?}");
        for _ in 0..10 {
            b.next_delay();
        }
        // At the cap: spread over the whole range, not pinned to the cap.
        let at_cap: Vec<Duration> = (0..200).map(|_| b.next_delay()).collect();
        assert!(at_cap.iter().all(|d| *d <= Duration::from_secs(1)));
        let low = at_cap
            .iter()
            .filter(|d| **d < Duration::from_millis(500))
            .count();
        assert!((40..=160).contains(&low), "{low} of 200 below half the cap");
        let distinct: std::collections::BTreeSet<_> = at_cap.iter().collect();
        assert!(distinct.len() > 190);
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn two_clients_do_not_retry_in_step() {
        let mut a = Backoff::with_seed(Duration::from_millis(100), Duration::from_secs(5), 1);
        let mut b = Backoff::with_seed(Duration::from_millis(100), Duration::from_secs(5), 2);
        let same = (0..20).filter(|_| a.next_delay() == b.next_delay()).count();
        assert_eq!(same, 0);
    }
}
