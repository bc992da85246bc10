//! A connection's bounded outbound queue.
//!
//! Routing pushes already-encoded frames here (a fanned-out message is one
//! shared `Bytes`); the connection's writer drains everything queued into one
//! buffer per wake-up and writes it with one syscall.
//!
//! The bound is in bytes of queued frames. Past it, what happens depends on
//! the frame:
//! - a retained-tag message replaces the one still queued for the same tag
//!   (conflation: a lagging client gets the latest state, not a backlog); a
//!   retained tag with nothing queued is still accepted, so at most one entry
//!   per retained tag is pending and its bytes are shared with the store;
//! - anything else overflows: the caller drops the client as a slow consumer.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::Notify;

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
    /// Bytes were appended; call again after writing them.
    Data,
    /// Nothing queued; wait for [`Outbox::wait`].
    Empty,
    /// Closed and fully drained: write what was appended, then hang up.
    Finished,
}

#[derive(Default)]
struct Entry {
    frame: Bytes,
}

struct Inner {
    queue: VecDeque<Entry>,
    bytes: usize,
    /// Entries popped so far: the absolute index of `queue[0]`.
    popped: u64,
    /// For each retained tag with an entry queued, that entry's absolute index.
    pending: HashMap<Arc<str>, u64>,
    closed: bool,
}

/// The bounded outbound queue of one connection.
pub struct Outbox {
    inner: Mutex<Inner>,
    limit: usize,
    wake: Notify,
    killed: Notify,
}

impl Outbox {
    /// An empty queue holding at most `limit` bytes of non-conflatable frames.
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Outbox {
            inner: Mutex::new(Inner {
                queue: VecDeque::new(),
                bytes: 0,
                popped: 0,
                pending: HashMap::new(),
                closed: false,
            }),
            limit,
            wake: Notify::new(),
            killed: Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock leaves the queue consistent (every
        // mutation is a single push or pop), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn enqueue(&self, inner: &mut Inner, entry: Entry) {
        let was_empty = inner.queue.is_empty();
        inner.bytes += entry.frame.len();
        inner.queue.push_back(entry);
        if was_empty {
            self.wake.notify_one();
        }
    }

    /// Queues a frame that must not be lost (a non-retained message, a reply, a control frame).
    pub fn push(&self, frame: Bytes) -> Push {
        let mut inner = self.lock();
        if inner.closed {
            return Push::Closed;
        }
        if inner.bytes + frame.len() > self.limit {
            return Push::Overflow;
        }
        self.enqueue(&mut inner, Entry { frame });
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
            if let Some(&abs) = inner.pending.get(tag) {
                let idx = (abs - inner.popped) as usize;
                let old = std::mem::take(&mut inner.queue[idx]);
                inner.bytes -= old.frame.len();
                result = Push::Conflated;
            }
        }
        let abs = inner.popped + inner.queue.len() as u64;
        inner.pending.insert(tag.clone(), abs);
        self.enqueue(&mut inner, Entry { frame });
        result
    }

    /// Moves everything queued into `buf`. The lock is held only to take the
    /// queue; copying happens outside it, so routing into this outbox never
    /// waits for a copy. `buf` grows to at most the queue's bound.
    pub fn drain_into(&self, buf: &mut Vec<u8>) -> Drain {
        let (taken, closed) = {
            let mut inner = self.lock();
            let taken = std::mem::take(&mut inner.queue);
            inner.popped += taken.len() as u64;
            inner.pending.clear();
            inner.bytes = 0;
            (taken, inner.closed)
        };
        let any = !taken.is_empty();
        for entry in taken {
            buf.extend_from_slice(&entry.frame);
        }
        match (any, closed) {
            (_, true) => Drain::Finished,
            (true, false) => Drain::Data,
            (false, false) => Drain::Empty,
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

    /// Drops everything queued, queues `last` as the final frame, closes, and
    /// tells the connection's reader to stop. Used for slow consumers, where
    /// the backlog is what went wrong.
    pub fn kill(&self, last: Bytes) {
        {
            let mut inner = self.lock();
            if inner.closed {
                return;
            }
            inner.queue.clear();
            inner.pending.clear();
            inner.bytes = 0;
            self.enqueue(&mut inner, Entry { frame: last });
            inner.closed = true;
        }
        self.wake.notify_one();
        self.killed.notify_one();
    }

    /// Queues `last` after everything already queued, closes, and tells the
    /// connection's reader to stop. Used where the client should still see
    /// the frames before the final one (protocol violations, timeouts, shutdown).
    pub fn end_with(&self, last: Bytes) {
        {
            let mut inner = self.lock();
            if inner.closed {
                return;
            }
            self.enqueue(&mut inner, Entry { frame: last });
            inner.closed = true;
        }
        self.wake.notify_one();
        self.killed.notify_one();
    }

    /// Resolves once [`Outbox::kill`] or [`Outbox::end_with`] has been called.
    pub async fn killed(&self) {
        self.killed.notified().await;
    }

    /// Bytes currently queued.
    pub fn queued_bytes(&self) -> usize {
        self.lock().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain_all(o: &Outbox) -> String {
        let mut buf = Vec::new();
        o.drain_into(&mut buf);
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
    fn under_bound_keeps_every_retained_update() {
        let o = Outbox::new(1000);
        let a: Arc<str> = Arc::from("a");
        o.push_retained(&a, Bytes::from_static(b"a1\n"));
        o.push_retained(&a, Bytes::from_static(b"a2\n"));
        assert_eq!(drain_all(&o), "a1\na2\n");
    }

    #[test]
    fn kill_replaces_backlog_with_final_frame() {
        let o = Outbox::new(100);
        o.push(Bytes::from_static(b"x\n"));
        o.kill(Bytes::from_static(b"bye\n"));
        assert_eq!(o.push(Bytes::from_static(b"y\n")), Push::Closed);
        let mut buf = Vec::new();
        assert_eq!(o.drain_into(&mut buf), Drain::Finished);
        assert_eq!(buf, b"bye\n");
    }
}
