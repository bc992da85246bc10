//! Counters the hub keeps about itself, read by `/metrics` and tests.

use std::sync::atomic::{AtomicU64, Ordering};

/// Monotonic counters; every field is updated with relaxed atomics.
#[derive(Default, Debug)]
pub struct Metrics {
    /// Connections accepted since start.
    pub connections_total: AtomicU64,
    /// Connections refused at the `max_connections` limit.
    pub connections_refused: AtomicU64,
    /// Messages routed (each `pub`, counted once).
    pub messages_routed: AtomicU64,
    /// Copies delivered to subscribers.
    pub deliveries: AtomicU64,
    /// Retained messages that replaced a queued one for a lagging client.
    pub conflated: AtomicU64,
    /// Clients dropped as slow consumers.
    pub slow_consumer_drops: AtomicU64,
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
