//! A subscription's buffer between the connection's reader and the code
//! reading the subscription.
//!
//! The reader never waits on it: a subscription nobody reads must not stall
//! replies or other subscriptions. The policy when it is full (`capacity`
//! items queued):
//! - a message on a retained tag is conflated: it goes to an overflow list
//!   that keeps only the latest value per tag, so a state mirror that falls
//!   behind still ends up with every tag's latest value;
//! - any other message is dropped and counted; the subscription reports the
//!   count ([`Subscription::dropped`](super::Subscription::dropped)) and the
//!   client raises [`ClientEvent::SlowConsumer`](super::ClientEvent).
//!
//! Order is kept per tag, and snapshot values always come before the live
//! messages that follow them; across tags, an overloaded subscription may
//! deliver conflated values after newer messages on other tags.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};

use tokio::sync::Notify;

use super::message::{Message, Text};

/// One entry of the queue.
#[derive(Debug)]
pub(crate) enum Item {
    /// A message.
    Msg(Message),
    /// The snapshot that opened the subscription is complete, as of this seq.
    SnapshotEnd(u64),
    /// The hub refused the subscription (or the connection ended it).
    Failed(crate::protocol::ErrorBody),
}

#[derive(Default)]
struct Inner {
    queue: VecDeque<Item>,
    /// Items that arrived while the queue was full, in order.
    overflow: VecDeque<Item>,
    /// Where each retained tag's latest message sits in `overflow` (since the
    /// last control item, so conflation never moves a value across one).
    latest: HashMap<Text, usize>,
    dropped: u64,
    /// Drops not yet reported to the client's events.
    unreported: u64,
    closed: bool,
}

/// The queue itself.
pub(crate) struct Queue {
    inner: Mutex<Inner>,
    capacity: usize,
    ready: Notify,
}

/// What pushing a batch did.
pub(crate) struct Pushed {
    /// Messages dropped by this push (non-retained, queue full).
    pub dropped: u64,
}

impl Queue {
    pub(crate) fn new(capacity: usize) -> Self {
        Queue {
            inner: Mutex::new(Inner::default()),
            capacity: capacity.max(1),
            ready: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds items in order, never waiting; wakes the reader once.
    pub(crate) fn push_all(&self, items: impl IntoIterator<Item = Item>) -> Pushed {
        let mut dropped = 0;
        {
            let mut inner = self.lock();
            if inner.closed {
                return Pushed { dropped: 0 };
            }
            for item in items {
                if inner.overflow.is_empty() && inner.queue.len() < self.capacity {
                    inner.queue.push_back(item);
                    continue;
                }
                match item {
                    Item::Msg(m) if m.retained => {
                        if let Some(&i) = inner.latest.get(&m.tag) {
                            inner.overflow[i] = Item::Msg(m);
                        } else {
                            let i = inner.overflow.len();
                            inner.latest.insert(m.tag.clone(), i);
                            inner.overflow.push_back(Item::Msg(m));
                        }
                    }
                    Item::Msg(_) => {
                        // Room in the queue again, but older conflated values still wait:
                        // keep per-tag order by queueing behind them.
                        if inner.queue.len() < self.capacity && inner.overflow.len() < self.capacity
                        {
                            inner.overflow.push_back(item);
                        } else {
                            dropped += 1;
                        }
                    }
                    control => {
                        inner.latest.clear();
                        inner.overflow.push_back(control);
                    }
                }
            }
            inner.dropped += dropped;
            inner.unreported += dropped;
        }
        self.ready.notify_one();
        Pushed { dropped }
    }

    /// Takes the drops not yet reported.
    pub(crate) fn take_unreported(&self) -> u64 {
        std::mem::take(&mut self.lock().unreported)
    }

    /// Messages dropped so far.
    pub(crate) fn dropped(&self) -> u64 {
        self.lock().dropped
    }

    /// Ends the queue: readers get what is queued, then `None`.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_one();
    }

    /// The next item, waiting for one; `None` once closed and empty.
    pub(crate) async fn pop(&self) -> Option<Item> {
        loop {
            let notified = self.ready.notified();
            {
                let mut inner = self.lock();
                if let Some(item) = inner.queue.pop_front() {
                    return Some(item);
                }
                if !inner.overflow.is_empty() {
                    // Everything queued has been read: the overflow becomes the queue.
                    let inner = &mut *inner;
                    std::mem::swap(&mut inner.queue, &mut inner.overflow);
                    inner.latest.clear();
                    continue;
                }
                if inner.closed {
                    return None;
                }
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn msg(tag: &str, n: u64, retained: bool) -> Item {
        Item::Msg(Message {
            tag: Text::owned(tag.to_owned()),
            body: Bytes::from(n.to_string()),
            from: Text::owned("p".into()),
            cid: None,
            seq: n,
            retained,
            snapshot: false,
        })
    }

    fn body(item: Item) -> String {
        match item {
            Item::Msg(m) => format!("{}={}", m.tag(), m.body_str()),
            Item::SnapshotEnd(s) => format!("end@{s}"),
            Item::Failed(e) => format!("failed {e}"),
        }
    }

    #[tokio::test]
    async fn a_full_queue_conflates_retained_and_drops_the_rest() {
        let q = Queue::new(2);
        let pushed = q.push_all([
            msg("a", 1, true),
            msg("b", 2, true),
            msg("a", 3, true),
            msg("x", 4, false),
            msg("a", 5, true),
            msg("b", 6, true),
        ]);
        assert_eq!(pushed.dropped, 1);
        assert_eq!(q.dropped(), 1);
        let mut got = Vec::new();
        for _ in 0..4 {
            got.push(body(q.pop().await.unwrap()));
        }
        // The queue, then each retained tag's latest value, in first-overflow order.
        assert_eq!(got, ["a=1", "b=2", "a=5", "b=6"]);
        q.close();
        assert!(q.pop().await.is_none());
    }

    #[tokio::test]
    async fn conflation_never_crosses_the_end_of_a_snapshot() {
        let q = Queue::new(1);
        q.push_all([
            msg("a", 1, true),
            msg("a", 2, true),
            Item::SnapshotEnd(2),
            msg("a", 3, true),
        ]);
        let got: Vec<String> = [
            q.pop().await.unwrap(),
            q.pop().await.unwrap(),
            q.pop().await.unwrap(),
            q.pop().await.unwrap(),
        ]
        .into_iter()
        .map(body)
        .collect();
        assert_eq!(got, ["a=1", "a=2", "end@2", "a=3"]);
    }
}
