//! Counters the hub keeps about itself, read by `/metrics` and tests.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the lock-hold histogram's buckets, in microseconds.
pub const LOCK_BUCKETS_US: [u64; 10] = [10, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 50_000];

/// A histogram of durations with fixed buckets, updated with relaxed atomics.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Count per bucket of [`LOCK_BUCKETS_US`], plus one for everything longer.
    buckets: [AtomicU64; LOCK_BUCKETS_US.len() + 1],
    sum_ns: AtomicU64,
    max_ns: AtomicU64,
}

impl Histogram {
    /// Records one duration.
    pub fn record(&self, d: Duration) {
        let us = d.as_micros() as u64;
        let i = LOCK_BUCKETS_US
            .iter()
            .position(|&b| us <= b)
            .unwrap_or(LOCK_BUCKETS_US.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        let ns = d.as_nanos() as u64;
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
        self.max_ns.fetch_max(ns, Ordering::Relaxed);
    }

    /// Cumulative counts per bucket bound (`None` is `+Inf`), as Prometheus wants them.
    pub fn cumulative(&self) -> Vec<(Option<u64>, u64)> {
        let mut total = 0;
        let mut out = Vec::with_capacity(self.buckets.len());
        for (i, b) in self.buckets.iter().enumerate() {
            total += b.load(Ordering::Relaxed);
            out.push((LOCK_BUCKETS_US.get(i).copied(), total));
        }
        out
    }

    /// Sum of all recorded durations.
    pub fn sum(&self) -> Duration {
        Duration::from_nanos(self.sum_ns.load(Ordering::Relaxed))
    }

    /// The longest recorded duration.
    pub fn max(&self) -> Duration {
        Duration::from_nanos(self.max_ns.load(Ordering::Relaxed))
    }
}

/// Monotonic counters; every field is updated with relaxed atomics.
#[derive(Default, Debug)]
pub struct Metrics {
    /// Connections accepted since start.
    pub connections_total: AtomicU64,
    /// Connections refused at the `max_connections` limit.
    pub connections_refused: AtomicU64,
    /// Unauthenticated connections closed to make room for new ones, or for not saying `hello` in time.
    pub unauthenticated_dropped: AtomicU64,
    /// Messages routed (each `pub`, counted once).
    pub messages_routed: AtomicU64,
    /// Message copies written to subscribers' sockets (snapshots included).
    pub deliveries: AtomicU64,
    /// Retained messages that replaced a queued one for a lagging client.
    pub conflated: AtomicU64,
    /// Clients dropped as slow consumers.
    pub slow_consumer_drops: AtomicU64,
    /// Snapshot steps taken (each one short hold of the hub lock).
    pub snapshot_steps: AtomicU64,
    /// Requests answered by a reply.
    pub requests_ok: AtomicU64,
    /// Requests answered by the responder's error.
    pub requests_error: AtomicU64,
    /// Requests that found no responder.
    pub requests_no_responder: AtomicU64,
    /// Requests that timed out.
    pub requests_timeout: AtomicU64,
    /// Requests whose responder went away.
    pub requests_unavailable: AtomicU64,
    /// Frames refused as malformed.
    pub bad_frames: AtomicU64,
    /// Publishes refused at the `max_retained` limit.
    pub retained_refused: AtomicU64,
    /// HTTP connections refused at `max_http_connections`.
    pub http_refused: AtomicU64,
    /// How long the hub lock was held.
    pub lock_hold: Histogram,
    /// The most CPU time a thread spent holding the hub lock at once (timed
    /// holds outside the publish path), in nanoseconds: the work under the
    /// lock, without the time the thread was preempted while holding it.
    pub lock_running_max_ns: AtomicU64,
}

impl Metrics {
    /// Adds one to a counter.
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::default();
        h.record(Duration::from_micros(5));
        h.record(Duration::from_micros(700));
        h.record(Duration::from_secs(1));
        let c = h.cumulative();
        assert_eq!(c[0], (Some(10), 1));
        assert_eq!(c[5], (Some(1_000), 2));
        assert_eq!(*c.last().unwrap(), (None, 3));
        assert_eq!(h.max(), Duration::from_secs(1));
    }
}
