//! The handles that receive: one [`Subscription`] per `subscribe`, and
//! [`Requests`] for the requests the hub routes to this client.

use std::sync::Arc;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::message::{encode_rep, Message, Text};
use super::queue::{Item, Queue};
use super::{lock, Body, Error, Handle};
use crate::device::DeviceErrorCode;
use crate::protocol::{ClientOut, ErrorBody};

/// The messages of one subscription, in its own bounded queue.
pub struct Subscription {
    id: u64,
    pub(crate) patterns: Vec<Box<str>>,
    queue: Arc<Queue>,
    handle: Arc<Handle>,
    /// `Some(seq)` once the snapshot is complete; `None` before, or without one.
    snapshot_end: Option<u64>,
    with_snapshot: bool,
    done: bool,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("patterns", &self.patterns)
            .field("snapshot_end", &self.snapshot_end)
            .finish()
    }
}

impl Subscription {
    pub(crate) fn new(
        id: u64,
        patterns: Vec<Box<str>>,
        queue: Arc<Queue>,
        handle: Arc<Handle>,
        with_snapshot: bool,
    ) -> Self {
        Subscription {
            id,
            patterns,
            queue,
            handle,
            snapshot_end: None,
            with_snapshot,
            done: false,
        }
    }

    /// The patterns subscribed to.
    pub fn patterns(&self) -> &[Box<str>] {
        &self.patterns
    }

    /// The next message: snapshot values first (if asked for), then live
    /// ones. `None` when the subscription has ended (the connection closed
    /// for good, or the hub refused the subscription: see [`Subscription::error`]).
    pub async fn next(&mut self) -> Option<Message> {
        loop {
            if self.done {
                return None;
            }
            match self.queue.pop().await {
                Some(Item::Msg(m)) => return Some(m),
                Some(Item::SnapshotEnd(seq)) => self.snapshot_end = Some(seq),
                Some(Item::Failed(e)) => {
                    tracing::warn!(patterns = ?self.patterns, "subscription ended: {e}");
                    self.done = true;
                }
                None => self.done = true,
            }
        }
    }

    /// Collects the snapshot: every retained value that matched when the
    /// subscription was made. Live messages that follow stay for [`Subscription::next`].
    pub async fn snapshot(&mut self) -> Result<Vec<Message>, Error> {
        if !self.with_snapshot {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        while self.snapshot_end.is_none() {
            match self.queue.pop().await {
                Some(Item::Msg(m)) => out.push(m),
                Some(Item::SnapshotEnd(seq)) => self.snapshot_end = Some(seq),
                Some(Item::Failed(e)) => {
                    self.done = true;
                    return Err(Error::Hub(e));
                }
                None => {
                    self.done = true;
                    return Err(Error::Disconnected);
                }
            }
        }
        Ok(out)
    }

    /// The seq the snapshot was taken at, once it is complete: every live
    /// message after it has a larger seq.
    pub fn snapshot_seq(&self) -> Option<u64> {
        self.snapshot_end
    }

    /// Messages dropped because this subscription's reader fell behind.
    pub fn dropped(&self) -> u64 {
        self.queue.dropped()
    }

    /// Ends the subscription and waits for the hub to confirm.
    pub async fn unsubscribe(mut self) -> Result<(), Error> {
        self.done = true;
        let patterns = self.forget();
        self.patterns.clear();
        let s = &self.handle.0;
        if patterns.is_empty() {
            return Ok(());
        }
        let id = s.next_id();
        s.call(id, s.opts.request_timeout, |buf| {
            ClientOut::Unsub {
                id: Some(id),
                tags: &patterns,
            }
            .encode(buf)
        })
        .await
        .map(drop)
    }

    /// Removes this subscription from the connection's routing; returns the
    /// patterns no other subscription of this client holds (the hub keeps one
    /// subscription per pattern and connection).
    fn forget(&self) -> Vec<Box<str>> {
        let s = &self.handle.0;
        let mut subs = lock(&s.subs);
        subs.by_id.remove(&self.id);
        for p in &self.patterns {
            subs.trie.remove(p, self.id);
        }
        let still: std::collections::HashSet<&str> = subs
            .by_id
            .values()
            .flat_map(|e| e.patterns.iter().map(|p| &**p))
            .collect();
        self.patterns
            .iter()
            .filter(|p| !still.contains(&***p))
            .cloned()
            .collect()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if self.patterns.is_empty() {
            return;
        }
        let gone = self.forget();
        if !gone.is_empty() {
            let mut frame = Vec::new();
            ClientOut::Unsub {
                id: None,
                tags: &gone,
            }
            .encode(&mut frame);
            self.handle.0.send_now(&frame);
        }
    }
}

/// A request the hub routed to this client, to answer with one of the
/// `respond` methods (dropping it unanswered leaves the requester to time out).
pub struct Request {
    pub(crate) tag: Text,
    pub(crate) body: Bytes,
    pub(crate) rid: u64,
    pub(crate) from: Text,
    pub(crate) cid: Option<Text>,
    pub(crate) handle: Arc<Handle>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("tag", &self.tag)
            .field("body", &String::from_utf8_lossy(&self.body))
            .field("rid", &self.rid)
            .field("from", &self.from)
            .field("cid", &self.cid)
            .finish()
    }
}

impl Request {
    /// The tag it was sent to.
    pub fn tag(&self) -> &str {
        self.tag.as_str()
    }

    /// The body as raw JSON bytes.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// The body, deserialized.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }

    /// Who sent it.
    pub fn from(&self) -> &str {
        self.from.as_str()
    }

    /// The correlation id it carries.
    pub fn cid(&self) -> Option<&str> {
        self.cid.as_ref().map(Text::as_str)
    }

    /// The hub's id for it.
    pub fn rid(&self) -> u64 {
        self.rid
    }

    /// Answers with `body`.
    pub async fn respond(self, body: &Body) -> Result<(), Error> {
        self.respond_result(Ok(body)).await
    }

    /// Answers with `value`, serialized.
    pub async fn respond_json<T: Serialize + ?Sized>(self, value: &T) -> Result<(), Error> {
        let body = Body::json(value)?;
        self.respond(&body).await
    }

    /// Answers with an error: a device error code and a message for people.
    pub async fn respond_error(
        self,
        code: DeviceErrorCode,
        message: impl Into<String>,
    ) -> Result<(), Error> {
        let e = ErrorBody::new(code.as_str(), message);
        self.respond_result(Err(&e)).await
    }

    /// Answers with a body or any error (`code` may be the responder's own).
    pub async fn respond_result(self, result: Result<&Body, &ErrorBody>) -> Result<(), Error> {
        let rid = self.rid;
        self.handle.0.send(|buf| encode_rep(buf, rid, result)).await
    }
}

/// The requests routed to this client; every handle of a connection takes
/// from the same queue. When the queue is full the client answers further
/// requests itself with `busy`, so a requester never waits on a slow responder's backlog.
#[derive(Clone)]
pub struct Requests {
    handle: Arc<Handle>,
}

impl std::fmt::Debug for Requests {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Requests")
    }
}

impl Requests {
    pub(crate) fn new(handle: Arc<Handle>) -> Self {
        Requests { handle }
    }

    /// The next request; `None` once the connection has closed for good.
    pub async fn next(&self) -> Option<Request> {
        let rx = self.handle.0.requests_rx.clone();
        let mut rx = rx.lock().await;
        let mut status = self.handle.0.status.subscribe();
        tokio::select! {
            r = rx.recv() => r,
            _ = status.wait_for(|s| *s == super::Status::Closed) => None,
        }
    }
}
