//! What device tasks tell the hub link, without ever waiting on it.
//!
//! Each device has a [`Mailbox`] holding its latest description, state and
//! reachability (retained values: a newer one replaces one not yet sent)
//! and a short queue of events. A device task writes and goes on; the link
//! takes whatever is pending, device by device in the order they changed,
//! so one chatty device or a slow hub link never holds up another device.
//! The mailboxes also keep every device's latest values, which the link
//! publishes again after reconnecting to the hub.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::Value;
use tokio::sync::Notify;

/// Events a device may have waiting; older ones are dropped past it.
pub const EVENT_QUEUE: usize = 64;

/// One device's pending and latest values.
#[derive(Default)]
struct Slot {
    meta: Option<Value>,
    state: Option<(Value, Option<String>)>,
    online: Option<Value>,
    /// What has changed since the link last took it.
    dirty_meta: bool,
    dirty_state: bool,
    dirty_online: bool,
    events: VecDeque<Value>,
    events_dropped: u64,
    queued: bool,
}

/// What the link takes from one device.
#[derive(Debug, Default, PartialEq)]
pub struct Pending {
    /// A new description.
    pub meta: Option<Value>,
    /// A new state, with the correlation id of the command that caused it.
    pub state: Option<(Value, Option<String>)>,
    /// A new reachability.
    pub online: Option<Value>,
    /// Events, oldest first.
    pub events: Vec<Value>,
    /// Events dropped because the link fell behind.
    pub events_dropped: u64,
}

/// Every device's mailbox, and the order in which they have news.
pub struct Mailboxes {
    slots: Vec<Mutex<Slot>>,
    ids: Vec<String>,
    index: HashMap<String, usize>,
    ready: Mutex<VecDeque<usize>>,
    notify: Notify,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Mailboxes {
    /// Mailboxes for these device ids.
    pub fn new(ids: impl IntoIterator<Item = String>) -> Arc<Self> {
        let ids: Vec<String> = ids.into_iter().collect();
        let index = ids
            .iter()
            .enumerate()
            .map(|(i, id)| (id.clone(), i))
            .collect();
        Arc::new(Mailboxes {
            slots: ids.iter().map(|_| Mutex::default()).collect(),
            ids,
            index,
            ready: Mutex::default(),
            notify: Notify::new(),
        })
    }

    /// The mailbox of device `id`.
    pub fn mailbox(self: &Arc<Self>, id: &str) -> Option<Mailbox> {
        let i = *self.index.get(id)?;
        Some(Mailbox {
            all: self.clone(),
            i,
        })
    }

    fn touch(&self, i: usize, slot: &mut Slot) {
        if !slot.queued {
            slot.queued = true;
            lock(&self.ready).push_back(i);
            self.notify.notify_one();
        }
    }

    /// Waits until some device has news.
    pub async fn changed(&self) {
        if lock(&self.ready).is_empty() {
            self.notify.notified().await;
        }
    }

    /// Takes the news of the device that has waited longest: (id, news).
    pub fn take(&self) -> Option<(&str, Pending)> {
        let i = lock(&self.ready).pop_front()?;
        let mut slot = lock(&self.slots[i]);
        slot.queued = false;
        let slot = &mut *slot;
        let pending = Pending {
            meta: std::mem::take(&mut slot.dirty_meta)
                .then(|| slot.meta.clone())
                .flatten(),
            state: std::mem::take(&mut slot.dirty_state)
                .then(|| slot.state.clone())
                .flatten(),
            online: std::mem::take(&mut slot.dirty_online)
                .then(|| slot.online.clone())
                .flatten(),
            events: slot.events.drain(..).collect(),
            events_dropped: std::mem::take(&mut slot.events_dropped),
        };
        Some((&self.ids[i], pending))
    }

    /// Every device's latest description, state and reachability, to publish again.
    pub fn latest(&self) -> Vec<(&str, Pending)> {
        self.ids
            .iter()
            .zip(&self.slots)
            .map(|(id, slot)| {
                let slot = lock(slot);
                let pending = Pending {
                    meta: slot.meta.clone(),
                    state: slot.state.clone(),
                    online: slot.online.clone(),
                    ..Pending::default()
                };
                (id.as_str(), pending)
            })
            .collect()
    }

    /// The latest description of device `id`.
    pub fn meta(&self, id: &str) -> Option<Value> {
        let i = *self.index.get(id)?;
        lock(&self.slots[i]).meta.clone()
    }
}

/// One device's end: where its task reports.
#[derive(Clone)]
pub struct Mailbox {
    all: Arc<Mailboxes>,
    i: usize,
}

impl Mailbox {
    /// The device's id.
    pub fn id(&self) -> &str {
        &self.all.ids[self.i]
    }

    fn with(&self, f: impl FnOnce(&mut Slot) -> bool) {
        let mut slot = lock(&self.all.slots[self.i]);
        if f(&mut slot) {
            self.all.touch(self.i, &mut slot);
        }
    }

    /// A description; ignored when it is the one already known.
    pub fn meta(&self, v: Value) {
        self.with(|s| {
            if s.meta.as_ref() == Some(&v) {
                return false;
            }
            s.meta = Some(v);
            s.dirty_meta = true;
            true
        });
    }

    /// A state (always sent: it carries the correlation id of its command).
    pub fn state(&self, v: Value, cid: Option<String>) {
        self.with(|s| {
            s.state = Some((v, cid));
            s.dirty_state = true;
            true
        });
    }

    /// Reachability; ignored when reachability and reason are unchanged.
    pub fn online(&self, v: Value) {
        self.with(|s| {
            let same = s.online.as_ref().is_some_and(|o| {
                o.get("online") == v.get("online") && o.get("reason") == v.get("reason")
            });
            if same {
                return false;
            }
            s.online = Some(v);
            s.dirty_online = true;
            true
        });
    }

    /// An event; the oldest is dropped when the link has fallen behind.
    pub fn event(&self, v: Value) {
        self.with(|s| {
            if s.events.len() >= EVENT_QUEUE {
                s.events.pop_front();
                s.events_dropped += 1;
            }
            s.events.push_back(v);
            true
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_chatty_device_does_not_hold_up_another() {
        let all = Mailboxes::new(["chatty".to_string(), "quiet".to_string()]);
        let chatty = all.mailbox("chatty").unwrap();
        let quiet = all.mailbox("quiet").unwrap();
        for i in 0..10_000 {
            chatty.state(json!({ "n": i }), None);
        }
        quiet.online(json!({"online": true, "reason": null}));
        // The chatty device's 10,000 states are one pending state; the quiet one is next.
        let (id, p) = all.take().unwrap();
        assert_eq!(id, "chatty");
        assert_eq!(p.state.unwrap().0, json!({"n": 9999}));
        let (id, p) = all.take().unwrap();
        assert_eq!(id, "quiet");
        assert_eq!(p.online.unwrap()["online"], true);
        assert!(all.take().is_none());
    }

    #[test]
    fn unchanged_meta_and_online_are_not_sent_again() {
        let all = Mailboxes::new(["d".to_string()]);
        let d = all.mailbox("d").unwrap();
        d.meta(json!({"id": "d"}));
        d.online(json!({"online": false, "reason": "refused", "since": 1}));
        assert!(all.take().is_some());
        d.meta(json!({"id": "d"}));
        d.online(json!({"online": false, "reason": "refused", "since": 2}));
        assert!(all.take().is_none(), "nothing changed");
        d.online(json!({"online": false, "reason": "timed out", "since": 3}));
        assert_eq!(all.take().unwrap().1.online.unwrap()["reason"], "timed out");
        assert_eq!(all.latest()[0].1.meta, Some(json!({"id": "d"})));
    }

    #[test]
    fn events_are_bounded() {
        let all = Mailboxes::new(["d".to_string()]);
        let d = all.mailbox("d").unwrap();
        for i in 0..100 {
            d.event(json!(i));
        }
        let (_, p) = all.take().unwrap();
        assert_eq!(p.events.len(), EVENT_QUEUE);
        assert_eq!(p.events_dropped, 100 - EVENT_QUEUE as u64);
        assert_eq!(p.events[0], json!(100 - EVENT_QUEUE));
    }
}
