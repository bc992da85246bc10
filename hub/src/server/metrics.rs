//! Counters the hub keeps about itself, read by `/metrics` and tests.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the lock-hold histogram's buckets, in microseconds.
pub const LOCK_BUCKETS_US: [u64; 10] = [10, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 50_000];

/// Upper bounds of the request-duration histogram's buckets, in microseconds.
pub const REQUEST_BUCKETS_US: [u64; 12] = [
    5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000, 5_000_000,
    10_000_000, 30_000_000,
];

/// The bucket bounds of one kind of histogram.
pub trait Bounds: Default {
    /// Upper bounds in microseconds, ascending, at most 15.
    const US: &'static [u64];
}

/// The lock-hold histogram's buckets.
#[derive(Debug, Default)]
pub struct LockBounds;
impl Bounds for LockBounds {
    const US: &'static [u64] = &LOCK_BUCKETS_US;
}

/// The request-duration histogram's buckets.
#[derive(Debug, Default)]
pub struct RequestBounds;
impl Bounds for RequestBounds {
    const US: &'static [u64] = &REQUEST_BUCKETS_US;
}

/// A histogram of durations with fixed buckets, updated with relaxed atomics.
#[derive(Debug, Default)]
pub struct Histogram<B: Bounds = LockBounds> {
    /// Count per bucket of `B::US`, then one for everything longer.
    buckets: [AtomicU64; 16],
    sum_ns: AtomicU64,
    max_ns: AtomicU64,
    bounds: std::marker::PhantomData<B>,
}

impl<B: Bounds> Histogram<B> {
    /// Records one duration.
    pub fn record(&self, d: Duration) {
        let us = d.as_micros() as u64;
        let i = B::US.iter().position(|&b| us <= b).unwrap_or(B::US.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        let ns = d.as_nanos() as u64;
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
        self.max_ns.fetch_max(ns, Ordering::Relaxed);
    }

    /// Cumulative counts per bucket bound (`None` is `+Inf`), as Prometheus wants them.
    pub fn cumulative(&self) -> Vec<(Option<u64>, u64)> {
        let mut total = 0;
        let mut out = Vec::with_capacity(B::US.len() + 1);
        for (i, b) in self.buckets.iter().take(B::US.len() + 1).enumerate() {
            total += b.load(Ordering::Relaxed);
            out.push((B::US.get(i).copied(), total));
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
    /// TLS handshakes that failed, timed out, met plain text, or were cancelled to make room for newer ones.
    pub tls_handshake_failures: AtomicU64,
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
    /// How long requests answered by their responder took, from routing to answer.
    pub request_duration: Histogram<RequestBounds>,
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
        let h: Histogram = Histogram::default();
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
