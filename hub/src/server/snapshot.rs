//! Snapshots streamed from the store as the reader drains.
//!
//! `sub` with `snapshot` adds the subscription and notes the hub's seq `S`
//! under the hub lock, then queues a [`SnapshotJob`] marker in the
//! connection's outbox; every live message routed later (seq > S) queues
//! behind the marker. When the writer reaches the marker it takes steps of
//! the job, each a short hold of the hub lock with a fixed work budget,
//! copying the matching retained values whose seq is at most `S`, after a
//! `snapshot` frame that tells the reader what follows. A value
//! replaced after `S` is skipped: its newer value is already queued behind
//! the marker. So the reader gets the snapshot, then the `ok` carrying `S`,
//! then exactly the messages with a larger seq: no gap, no duplicate, and no
//! lock hold that grows with the store.

use serde_json::value::RawValue;

use super::store::{Cursor, Query, Store};
use crate::protocol::{encode_ok, encode_snapshot};

/// Work units one step may spend: a visited node costs its live pattern
/// states, a copied value one unit per 128 bytes. A step holds the hub lock
/// for well under a millisecond.
pub const STEP_BUDGET: usize = 4096;

/// A snapshot waiting in (or being streamed from) a connection's outbox.
pub struct SnapshotJob {
    query: Query,
    cursor: Cursor,
    /// The hub's seq when the subscription was added.
    seq: u64,
    /// Only values newer than this are sent (a resumed event stream).
    after: u64,
    /// The `sub` frame's id, echoed on the closing `ok`.
    id: Option<Box<RawValue>>,
    /// Bytes charged to the outbox while the job waits.
    cost: usize,
    /// The opening `snapshot` frame has been sent.
    opened: bool,
    /// The subscriber's read rules: values it may not read are left out.
    access: Option<std::sync::Arc<crate::access::Access>>,
}

impl SnapshotJob {
    /// A snapshot of the values matching `patterns`, newer than `after`; its
    /// seq is set with [`SnapshotJob::set_seq`] when the subscription is added.
    pub fn new(patterns: &[String], after: u64, id: Option<&RawValue>) -> Box<Self> {
        let cost = 64 + patterns.iter().map(|p| p.len() + 16).sum::<usize>();
        Box::new(SnapshotJob {
            query: Query::new(patterns),
            cursor: Cursor::default(),
            seq: 0,
            after,
            id: id.map(ToOwned::to_owned),
            cost,
            opened: false,
            access: None,
        })
    }

    /// Leaves out what the subscriber's token may not read.
    pub fn set_access(&mut self, access: Option<std::sync::Arc<crate::access::Access>>) {
        self.access = access;
    }

    /// Fixes the snapshot at `seq`: values newer than it arrive live.
    pub fn set_seq(&mut self, seq: u64) {
        self.seq = seq;
    }

    /// What the job costs its outbox while queued.
    pub fn cost(&self) -> usize {
        self.cost
    }

    /// Copies the next values into `buf`; returns whether the snapshot is
    /// complete and how many messages were copied. Called under the hub lock.
    pub fn step(&mut self, store: &Store, buf: &mut Vec<u8>) -> (bool, u64) {
        if !std::mem::replace(&mut self.opened, true) {
            encode_snapshot(buf, self.id.as_deref());
        }
        let (seq, after) = (self.seq, self.after);
        let access = self.access.as_deref();
        let mut copied = 0;
        let done = store.walk(&self.query, &mut self.cursor, STEP_BUDGET, |r| {
            if r.seq > seq || r.seq <= after || access.is_some_and(|a| !a.may_read(&r.tag)) {
                return 0;
            }
            buf.extend_from_slice(&r.frame);
            copied += 1;
            1 + r.frame.len() / 128
        });
        (done, copied)
    }

    /// Appends the `ok` that ends the snapshot, carrying its seq.
    pub fn encode_end(&self, buf: &mut Vec<u8>) {
        encode_ok(buf, self.id.as_deref(), Some(self.seq));
    }
}
