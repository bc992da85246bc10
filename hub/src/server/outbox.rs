//! A connection's bounded outbound queue.
//!
//! Routing pushes already-encoded frames here (a fanned-out message is one
//! shared `Bytes`); the connection's writer drains everything queued into one
//! buffer per wake-up and writes it with one syscall.
//!
//! The bound is in bytes of queued live traffic. Past it, what happens
//! depends on the frame:
//! - a retained-tag message replaces the one still queued for the same tag
//!   (conflation: a lagging client gets the latest state, not a backlog); a
//!   retained tag with nothing queued is still accepted, so at most one entry
//!   per retained tag is pending and its bytes are shared with the store;
//! - the answer to a request is always accepted (their number is bounded by
//!   `max_pending_requests`, so "exactly one answer per request" holds);
//! - anything else overflows: the caller drops the client as a slow consumer.
//!
//! A replaced entry leaves a hole; holes are compacted away once they are
//! half the queue, so the queue is bounded in entries as well as in bytes.
//!
//! A snapshot is a marker in the queue, not its frames: the writer, reaching
//! it, streams the matching retained values from the store in short steps
//! (see `snapshot.rs`) as the socket drains, then the `ok` that ends it, then
//! the live traffic queued behind the marker. A snapshot of any size
//! therefore reaches a reader that keeps reading, and costs the queue only
//! its patterns.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use super::hub::Hub;
use super::snapshot::SnapshotJob;

/// What became of a pushed frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    /// Queued.
    Queued,
    /// Replaced an older queued message for the same retained tag.
    Conflated,
    /// Over the bound: the connection must be dropped as a slow consumer.
    Overflow,
    /// The connection is closing; the frame was dropped.
    Closed,
}

/// What the writer got from [`Outbox::drain_into`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drain {
    /// Bytes were appended (`msgs` of them messages); call again after writing them.
    Data {
        /// Message frames appended, for the delivery counter.
        msgs: u64,
    },
    /// Nothing queued; wait for [`Outbox::wait`].
    Empty,
    /// A snapshot waits for its connection's snapshot rate; call again at this instant.
    Later(Instant),
    /// Closed and fully drained: write what was appended, then hang up.
    Finished,
}

/// How far the connection is from closing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    Open,
    /// The reader stops; the writer flushes everything, then the last frame.
    Graceful,
    /// The reader stops; the writer abandons the backlog and sends only the last frame.
    Killed,
}

/// One queued item, kept to the size of a `Bytes` (the queue is read by
/// the writer on another core: every byte of an entry crosses between caches).
enum Entry {
    /// An encoded frame.
    Frame(Bytes),
    /// A conflated entry's old place.
    Hole,
    /// A snapshot to stream here; `None` while the writer is streaming it.
    Snapshot(Option<Box<SnapshotJob>>),
}

struct Inner {
    queue: VecDeque<Entry>,
    bytes: usize,
    holes: usize,
    /// Entries popped so far: the absolute index of `queue[0]`.
    popped: u64,
    /// For each retained tag with an entry queued, that entry's absolute
    /// index. Indices below `popped` are stale and ignored.
    pending: HashMap<Arc<str>, u64>,
    closed: bool,
    /// Snapshot markers queued (most of the time none: draining takes everything).
    markers: usize,
    /// Snapshot bytes this connection may still send now (a token bucket;
    /// negative after a step that overdrew it).
    snapshot_tokens: f64,
    /// When the bucket was last refilled.
    refilled: Instant,
}

/// Snapshot bytes a connection may send at once before the rate applies.
pub const SNAPSHOT_BURST: f64 = 4.0 * 1024.0 * 1024.0;

/// How every `msg` frame starts: what the delivery counter counts.
const MSG_HEAD: &[u8] = b"{\"op\":\"msg\"";

/// Holes tolerated before compaction is considered.
const MIN_HOLES_TO_COMPACT: usize = 256;

/// The bounded outbound queue of one connection.
pub struct Outbox {
    inner: Mutex<Inner>,
    /// The writer's half of a double buffer: drained entries go here and the
    /// queue gets its capacity back, so a busy queue never reallocates.
    spare: Mutex<VecDeque<Entry>>,
    limit: usize,
    wake: Notify,
    ending: watch::Sender<Ending>,
}

impl Outbox {
    /// An empty queue holding at most `limit` bytes of non-conflatable frames.
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Outbox {
            spare: Mutex::new(VecDeque::new()),
            inner: Mutex::new(Inner {
                queue: VecDeque::new(),
                bytes: 0,
                holes: 0,
                popped: 0,
                pending: HashMap::new(),
                closed: false,
                markers: 0,
                snapshot_tokens: SNAPSHOT_BURST,
                refilled: Instant::now(),
            }),
            limit,
            wake: Notify::new(),
            ending: watch::Sender::new(Ending::Open),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock leaves the queue consistent (every
        // mutation is a single push or pop), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn enqueue(&self, inner: &mut Inner, entry: Entry, bytes: usize) {
        let was_empty = inner.queue.is_empty();
        inner.bytes += bytes;
        inner.queue.push_back(entry);
        if was_empty {
            self.wake.notify_one();
        }
    }

    fn push_bounded(&self, frame: Bytes) -> Push {
        let mut inner = self.lock();
        if inner.closed {
            return Push::Closed;
        }
        if inner.bytes + frame.len() > self.limit {
            return Push::Overflow;
        }
        let n = frame.len();
        self.enqueue(&mut inner, Entry::Frame(frame), n);
        Push::Queued
    }

    /// Queues a message on a tag that is not retained; it must not be lost.
    pub fn push(&self, frame: Bytes) -> Push {
        self.push_bounded(frame)
    }

    /// Queues a control frame (`ok`, `err`, `pong`, a forwarded `req`...).
    pub fn push_control(&self, frame: Bytes) -> Push {
        self.push_bounded(frame)
    }

    /// Queues the answer to one of this client's requests: accepted past the
    /// bound, since pending requests per connection are limited in number.
    pub fn push_answer(&self, frame: Bytes) -> Push {
        let mut inner = self.lock();
        if inner.closed {
            return Push::Closed;
        }
        let n = frame.len();
        self.enqueue(&mut inner, Entry::Frame(frame), n);
        Push::Queued
    }

    /// Queues a retained-tag message, conflating with a queued one for the same tag when over the bound.
    pub fn push_retained(&self, tag: &Arc<str>, frame: Bytes) -> Push {
        let mut inner = self.lock();
        if inner.closed {
            return Push::Closed;
        }
        let mut result = Push::Queued;
        if inner.bytes + frame.len() > self.limit {
            let popped = inner.popped;
            if let Some(&abs) = inner.pending.get(tag).filter(|&&a| a >= popped) {
                let idx = (abs - popped) as usize;
                if let Entry::Frame(old) = std::mem::replace(&mut inner.queue[idx], Entry::Hole) {
                    inner.bytes -= old.len();
                }
                inner.holes += 1;
                result = Push::Conflated;
            }
        }
        let abs = inner.popped + inner.queue.len() as u64;
        inner.pending.insert(tag.clone(), abs);
        let n = frame.len();
        self.enqueue(&mut inner, Entry::Frame(frame), n);
        if inner.holes >= MIN_HOLES_TO_COMPACT && inner.holes * 2 > inner.queue.len() {
            compact(&mut inner);
        }
        result
    }

    /// Queues a snapshot marker; its patterns count against the bound.
    pub fn push_snapshot(&self, job: Box<SnapshotJob>) -> Push {
        let mut inner = self.lock();
        if inner.closed {
            return Push::Closed;
        }
        let cost = job.cost();
        if inner.bytes + cost > self.limit {
            return Push::Overflow;
        }
        self.enqueue(&mut inner, Entry::Snapshot(Some(job)), cost);
        inner.markers += 1;
        Push::Queued
    }

    /// Moves what is queued into `buf`: frames up to the next snapshot
    /// marker, or, at a marker, the next step of that snapshot (taken from
    /// `hub`), as far as the connection's snapshot rate allows. The lock is
    /// held only to take entries; copying happens outside it, so routing into
    /// this outbox never waits for a copy.
    pub fn drain_into(&self, buf: &mut Vec<u8>, hub: &Hub) -> Drain {
        let start = buf.len();
        let mut msgs = 0;
        let rate = hub.config().snapshot_rate_bytes as f64;
        // Only the connection's one writer drains, so this lock is never contended.
        let mut taken = self.spare.lock().unwrap_or_else(|p| p.into_inner());
        let (job, closed, later) = {
            let mut inner = self.lock();
            let marker = if inner.markers == 0 {
                None
            } else {
                inner
                    .queue
                    .iter()
                    .position(|e| matches!(e, Entry::Snapshot(_)))
            };
            match marker {
                None => {
                    inner.pending.clear();
                    inner.bytes = 0;
                    inner.holes = 0;
                    std::mem::swap(&mut inner.queue, &mut *taken);
                }
                Some(n) => {
                    taken.extend(inner.queue.drain(..n));
                    for e in taken.iter() {
                        match e {
                            Entry::Frame(frame) => inner.bytes -= frame.len(),
                            Entry::Hole => inner.holes -= 1,
                            Entry::Snapshot(_) => {}
                        }
                    }
                }
            }
            inner.popped += taken.len() as u64;
            let mut job = None;
            let mut later = None;
            if marker == Some(0) {
                let now = Instant::now();
                let dt = now.saturating_duration_since(inner.refilled).as_secs_f64();
                inner.refilled = now;
                inner.snapshot_tokens = (inner.snapshot_tokens + dt * rate).min(SNAPSHOT_BURST);
                // Within a byte of zero counts as paid off (floating-point refill).
                if inner.snapshot_tokens > -1.0 {
                    if let Some(Entry::Snapshot(j)) = inner.queue.front_mut() {
                        job = j.take();
                    }
                } else {
                    let wait = -inner.snapshot_tokens / rate;
                    later = Some(now + std::time::Duration::from_secs_f64(wait));
                }
            }
            (job, inner.closed && inner.queue.is_empty(), later)
        };
        for entry in taken.drain(..) {
            if let Entry::Frame(frame) = entry {
                buf.extend_from_slice(&frame);
                msgs += u64::from(frame.starts_with(MSG_HEAD));
            }
        }
        if taken.capacity() > 4096 {
            taken.shrink_to(1024);
        }
        drop(taken);
        let stepped = job.is_some();
        if let Some(mut job) = job {
            let before = buf.len();
            let (done, n) = hub.snapshot_step(&mut job, buf);
            msgs += n;
            let mut inner = self.lock();
            inner.snapshot_tokens -= (buf.len() - before) as f64;
            // A kill may have emptied the queue meanwhile; then the job just ends.
            if let Some(Entry::Snapshot(slot @ None)) = inner.queue.front_mut() {
                if done {
                    inner.queue.pop_front();
                    inner.popped += 1;
                    inner.markers -= 1;
                    inner.bytes -= job.cost();
                    job.encode_end(buf);
                } else {
                    *slot = Some(job);
                }
            }
        }
        match (buf.len() > start || stepped, closed, later) {
            (_, true, _) => Drain::Finished,
            (true, false, _) => Drain::Data { msgs },
            (false, false, Some(at)) => Drain::Later(at),
            (false, false, None) => Drain::Empty,
        }
    }

    /// Waits until something is queued (or the queue closes).
    pub async fn wait(&self) {
        self.wake.notified().await;
    }

    /// Stops accepting frames; the writer drains what is queued, then hangs up.
    pub fn close(&self) {
        self.lock().closed = true;
        self.wake.notify_one();
    }

    fn finish(&self, last: Bytes, ending: Ending) {
        {
            let mut inner = self.lock();
            if inner.closed {
                return;
            }
            if ending == Ending::Killed {
                inner.queue.clear();
                inner.pending.clear();
                inner.bytes = 0;
                inner.holes = 0;
                inner.markers = 0;
            }
            let n = last.len();
            self.enqueue(&mut inner, Entry::Frame(last), n);
            inner.closed = true;
        }
        self.ending.send_replace(ending);
        self.wake.notify_one();
    }

    /// Drops everything queued, queues `last` as the final frame, closes, and
    /// tells the connection's reader to stop and its writer to abandon what it
    /// is writing after the current frame. Used for slow consumers, where the
    /// backlog is what went wrong.
    pub fn kill(&self, last: Bytes) {
        self.finish(last, Ending::Killed);
    }

    /// Queues `last` after everything already queued, closes, and tells the
    /// connection's reader to stop. Used where the client should still see
    /// the frames before the final one (protocol violations, timeouts, shutdown).
    pub fn end_with(&self, last: Bytes) {
        self.finish(last, Ending::Graceful);
    }

    /// Resolves once [`Outbox::kill`] or [`Outbox::end_with`] has been called.
    pub async fn killed(&self) {
        let mut rx = self.ending.subscribe();
        let _ = rx.wait_for(|e| *e != Ending::Open).await;
    }

    /// Resolves once [`Outbox::kill`] has been called: the writer should stop
    /// what it is writing.
    pub async fn abandoned(&self) {
        let mut rx = self.ending.subscribe();
        let _ = rx.wait_for(|e| *e == Ending::Killed).await;
    }

    /// Has [`Outbox::kill`] been called?
    pub fn is_killed(&self) -> bool {
        *self.ending.borrow() == Ending::Killed
    }

    /// Bytes currently queued.
    pub fn queued_bytes(&self) -> usize {
        self.lock().bytes
    }

    /// Entries currently queued, holes included.
    pub fn queued_entries(&self) -> usize {
        self.lock().queue.len()
    }
}

/// Removes holes and moves the pending retained tags' indices with their entries.
fn compact(inner: &mut Inner) {
    let mut holes_before = Vec::with_capacity(inner.queue.len());
    let mut holes = 0;
    for e in &inner.queue {
        holes_before.push(holes);
        holes += usize::from(matches!(e, Entry::Hole));
    }
    inner.queue.retain(|e| !matches!(e, Entry::Hole));
    inner.holes = 0;
    let popped = inner.popped;
    for abs in inner.pending.values_mut() {
        // Indices below `popped` are stale and stay so.
        if let Some(&shift) = abs
            .checked_sub(popped)
            .and_then(|rel| holes_before.get(rel as usize))
        {
            *abs -= shift as u64;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HubConfig;

    fn drain_all(o: &Outbox) -> String {
        let hub = Hub::new(HubConfig::default());
        let mut buf = Vec::new();
        while let Drain::Data { .. } = o.drain_into(&mut buf, &hub) {}
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn overflow_of_plain_frames() {
        let o = Outbox::new(10);
        assert_eq!(o.push(Bytes::from_static(b"12345\n")), Push::Queued);
        assert_eq!(o.push(Bytes::from_static(b"12345\n")), Push::Overflow);
        assert_eq!(drain_all(&o), "12345\n");
    }

    #[test]
    fn answers_pass_the_bound() {
        let o = Outbox::new(10);
        assert_eq!(o.push(Bytes::from_static(b"12345678\n")), Push::Queued);
        assert_eq!(o.push_answer(Bytes::from_static(b"rep\n")), Push::Queued);
        assert_eq!(drain_all(&o), "12345678\nrep\n");
    }

    #[test]
    fn retained_conflates_in_order_when_over_bound() {
        let o = Outbox::new(8);
        let a: Arc<str> = Arc::from("a");
        let b: Arc<str> = Arc::from("b");
        assert_eq!(
            o.push_retained(&a, Bytes::from_static(b"a1\n")),
            Push::Queued
        );
        assert_eq!(
            o.push_retained(&b, Bytes::from_static(b"b1\n")),
            Push::Queued
        );
        assert_eq!(
            o.push_retained(&a, Bytes::from_static(b"a2\n")),
            Push::Conflated
        );
        assert_eq!(
            o.push_retained(&b, Bytes::from_static(b"b2\n")),
            Push::Conflated
        );
        // Still in seq order: older entries vanish, newer ones go to the back.
        assert_eq!(drain_all(&o), "a2\nb2\n");
        assert_eq!(o.queued_bytes(), 0);
    }

    #[test]
    fn conflation_keeps_entries_bounded_for_a_stalled_reader() {
        let o = Outbox::new(64);
        let tags: Vec<Arc<str>> = (0..10).map(|i| Arc::from(format!("t{i}"))).collect();
        for round in 0..100_000u32 {
            let t = &tags[round as usize % tags.len()];
            o.push_retained(t, Bytes::from(format!("{t}={round}\n")));
        }
        assert!(
            o.queued_entries() <= 2 * MIN_HOLES_TO_COMPACT + tags.len(),
            "{} entries queued for 10 tags",
            o.queued_entries()
        );
        let out = drain_all(&o);
        let lines: Vec<&str> = out.lines().collect();
        // What was queued under the byte bound, then the latest value of each tag.
        assert!(lines.len() <= 64 / 5 + tags.len(), "{out}");
        assert_eq!(
            &lines[lines.len() - 10..],
            &[
                "t0=99990", "t1=99991", "t2=99992", "t3=99993", "t4=99994", "t5=99995", "t6=99996",
                "t7=99997", "t8=99998", "t9=99999"
            ]
        );
    }

    #[test]
    fn under_bound_keeps_every_retained_update() {
        let o = Outbox::new(1000);
        let a: Arc<str> = Arc::from("a");
        o.push_retained(&a, Bytes::from_static(b"a1\n"));
        o.push_retained(&a, Bytes::from_static(b"a2\n"));
        assert_eq!(drain_all(&o), "a1\na2\n");
    }

    #[tokio::test(start_paused = true)]
    async fn snapshots_keep_to_the_connection_snapshot_rate() {
        let rate = 1024 * 1024;
        let hub = Hub::new(HubConfig {
            snapshot_rate_bytes: rate,
            ..HubConfig::default()
        });
        let body = serde_json::value::RawValue::from_string(format!("\"{}\"", "x".repeat(100_000)))
            .unwrap();
        for i in 0..80 {
            hub.publish_as_hub(&format!("big/{i:02}"), &body, true);
        }
        let o = Outbox::new(1 << 20);
        let ident = crate::server::Identity {
            name: Arc::from("viewer"),
            role: Some(crate::config::Role::Viewer),
            may_claim: None,
            principal: Arc::from("viewer"),
            system: false,
            token: None,
            access: None,
        };
        let conn = hub
            .connect_as("127.0.0.1:1".parse().unwrap(), o.clone(), ident)
            .unwrap();
        hub.subscribe(conn, &["big/#".to_string()], Some(0), None)
            .unwrap();
        let mut buf = Vec::new();
        let at = loop {
            match o.drain_into(&mut buf, &hub) {
                Drain::Data { .. } => {}
                Drain::Later(at) => break at,
                other => panic!("{other:?}"),
            }
        };
        // The burst went out at once, then the rate applies.
        assert!(buf.len() as f64 >= SNAPSHOT_BURST, "{}", buf.len());
        assert!(buf.len() < 8 * 1024 * 1024, "{}", buf.len());
        let wait = at - Instant::now();
        let deficit = buf.len() as f64 - SNAPSHOT_BURST;
        assert!(
            (wait.as_secs_f64() - deficit / rate as f64).abs() < 0.01,
            "{wait:?}"
        );
        tokio::time::advance(wait).await;
        let before = buf.len();
        assert!(matches!(o.drain_into(&mut buf, &hub), Drain::Data { .. }));
        assert!(buf.len() > before);
    }

    #[test]
    fn kill_replaces_backlog_with_final_frame() {
        let o = Outbox::new(100);
        o.push(Bytes::from_static(b"x\n"));
        o.kill(Bytes::from_static(b"bye\n"));
        assert!(o.is_killed());
        assert_eq!(o.push(Bytes::from_static(b"y\n")), Push::Closed);
        let hub = Hub::new(HubConfig::default());
        let mut buf = Vec::new();
        assert_eq!(o.drain_into(&mut buf, &hub), Drain::Finished);
        assert_eq!(buf, b"bye\n");
    }
}
