//! The hub's shared state and the operations on it.
//!
//! One mutex guards the routing state (connections, subscriptions, retained
//! store, claims, pending requests). Every operation takes it once, briefly:
//! stamping the seq, updating the store and queueing the encoded frame on
//! each subscriber's outbox happen under it, so every subscriber sees
//! messages in seq order and a snapshot followed by live updates has no gap
//! and no duplicate. Nothing under the lock awaits or does I/O; writers drain
//! the outboxes on their own tasks.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde_json::value::RawValue;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::metrics::Metrics;
use super::outbox::{Outbox, Push};
use super::router::Router;
use super::store::{Retained, Store};
use super::ConnId;
use crate::config::{HubConfig, Role};
use crate::protocol::{
    encode_err, encode_msg, encode_ok, encode_rep, encode_req, ErrorBody, ErrorCode,
};
use crate::tag::is_under;

/// An operation refused, with the code and message sent back in `err`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpError {
    /// Machine-readable code.
    pub code: ErrorCode,
    /// Human-readable reason.
    pub message: String,
}

impl OpError {
    /// An error with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        OpError {
            code,
            message: message.into(),
        }
    }
}

/// Who a connection is, as far as the hub is concerned.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Name shown as `from`.
    pub name: Arc<str>,
    /// Role; `None` until a required `hello` with a valid token arrives.
    pub role: Option<Role>,
    /// For agents with a token: the prefixes they may claim. `None` means any.
    pub may_claim: Option<Vec<String>>,
}

struct Conn {
    id: ConnId,
    outbox: Arc<Outbox>,
    ident: Identity,
    patterns: Vec<String>,
    claims: Vec<String>,
    peer: SocketAddr,
    since_ms: u64,
}

/// Who is waiting for a request's answer.
enum Requester {
    /// A connection, with its own request id.
    Conn(ConnId, Box<RawValue>),
    /// The hub's HTTP side, waiting on a channel.
    Internal(tokio::sync::oneshot::Sender<Result<Box<RawValue>, ErrorBody>>),
}

struct Pending {
    requester: Requester,
    responder: ConnId,
    deadline: Instant,
}

/// The answer to a request made with [`Hub::request_internal`].
pub type Answer = tokio::sync::oneshot::Receiver<Result<Box<RawValue>, ErrorBody>>;

/// A connected client as `GET /api/agents` and tests see it.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// Connection id.
    pub id: ConnId,
    /// Name.
    pub name: String,
    /// Role, if authenticated.
    pub role: Option<Role>,
    /// Remote address.
    pub peer: SocketAddr,
    /// Connected since, in Unix milliseconds.
    pub since_ms: u64,
    /// Claimed prefixes.
    pub claims: Vec<String>,
}

#[derive(Default)]
struct State {
    seq: u64,
    /// Slots indexed by the low 32 bits of a ConnId; the high bits are a generation.
    conns: Vec<Option<Conn>>,
    free: Vec<u32>,
    generation: u32,
    live: usize,
    router: Router,
    store: Store,
    claims: BTreeMap<String, ConnId>,
    pending: HashMap<u64, Pending>,
    deadlines: BTreeSet<(Instant, u64)>,
    next_rid: u64,
    scratch: Vec<ConnId>,
    /// Reused buffer for encoding frames.
    encode_buf: Vec<u8>,
    /// Shared backing memory for non-retained frames.
    arena: bytes::BytesMut,
}

/// Size of each arena block that non-retained frames are carved from.
const ARENA_BYTES: usize = 64 * 1024;

fn slot(id: ConnId) -> usize {
    (id & 0xffff_ffff) as usize
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl State {
    fn conn(&self, id: ConnId) -> Option<&Conn> {
        self.conns.get(slot(id))?.as_ref().filter(|c| c.id == id)
    }

    fn conn_mut(&mut self, id: ConnId) -> Option<&mut Conn> {
        self.conns
            .get_mut(slot(id))?
            .as_mut()
            .filter(|c| c.id == id)
    }

    /// The connection that owns `tag` through a claim, if any.
    fn owner_of(&self, tag: &str) -> Option<ConnId> {
        if self.claims.is_empty() {
            return None;
        }
        let mut end = tag.len();
        loop {
            if let Some(owner) = self.claims.get(&tag[..end]) {
                return Some(*owner);
            }
            end = tag[..end].rfind('/')?;
        }
    }

    /// Queues `frame` on `to`'s outbox; a client past its bound is killed.
    fn deliver(&self, metrics: &Metrics, to: ConnId, frame: &Bytes, retained: Option<&Arc<str>>) {
        let Some(conn) = self.conn(to) else { return };
        let pushed = match retained {
            Some(tag) => conn.outbox.push_retained(tag, frame.clone()),
            None => conn.outbox.push(frame.clone()),
        };
        match pushed {
            Push::Queued => Metrics::inc(&metrics.deliveries),
            Push::Conflated => {
                Metrics::inc(&metrics.deliveries);
                Metrics::inc(&metrics.conflated);
            }
            Push::Overflow => {
                Metrics::inc(&metrics.slow_consumer_drops);
                tracing::warn!(conn = to, name = %conn.ident.name, "dropping slow consumer");
                conn.outbox.kill(Bytes::from(ErrorCode::SlowConsumer.frame(
                    "outbound queue full: the client is not reading fast enough; reconnect and subscribe again",
                )));
            }
            Push::Closed => {}
        }
    }

    /// Stamps, retains and fans out one message.
    #[allow(clippy::too_many_arguments)]
    fn route(
        &mut self,
        metrics: &Metrics,
        from_conn: Option<ConnId>,
        from: &str,
        tag: &str,
        body: &RawValue,
        retain: bool,
        cid: Option<&str>,
    ) -> u64 {
        self.seq += 1;
        let seq = self.seq;
        let mut scratch = std::mem::take(&mut self.encode_buf);
        scratch.clear();
        let body_start = encode_msg(&mut scratch, tag, body, from, seq, retain, cid);
        // Retained frames live on in the store: each gets its own allocation.
        // Others are carved from a shared arena, so routing allocates nothing per message.
        let frame = if retain {
            Bytes::copy_from_slice(&scratch)
        } else {
            if self.arena.capacity() - self.arena.len() < scratch.len() {
                self.arena = bytes::BytesMut::with_capacity(ARENA_BYTES.max(scratch.len()));
            }
            self.arena.extend_from_slice(&scratch);
            self.arena.split().freeze()
        };
        self.encode_buf = scratch;
        let key = if retain {
            let key = self.store.key(tag);
            if body.get() == "null" {
                self.store.remove(tag);
            } else {
                let value = Retained {
                    seq,
                    frame: frame.clone(),
                    time_ms: now_ms(),
                    body: body_start..body_start + body.get().len(),
                };
                self.store.set(key.clone(), value);
            }
            Some(key)
        } else {
            None
        };
        let mut targets = std::mem::take(&mut self.scratch);
        targets.clear();
        self.router.matches(tag, &mut targets);
        if targets.len() > 1 {
            targets.sort_unstable();
            targets.dedup();
        }
        for &to in &targets {
            if Some(to) != from_conn {
                self.deliver(metrics, to, &frame, key.as_ref());
            }
        }
        self.scratch = targets;
        Metrics::inc(&metrics.messages_routed);
        seq
    }

    fn fail_request(&self, metrics: &Metrics, p: Pending, code: ErrorCode, message: &str) {
        let counter = match code {
            ErrorCode::Timeout => &metrics.requests_timeout,
            ErrorCode::Unavailable => &metrics.requests_unavailable,
            _ => &metrics.requests_error,
        };
        Metrics::inc(counter);
        let error = ErrorBody {
            code: code.as_str().into(),
            message: message.into(),
        };
        self.answer(metrics, p.requester, Err(error));
    }

    /// Sends a request's outcome to whoever waits for it.
    fn answer(&self, metrics: &Metrics, to: Requester, result: Result<&RawValue, ErrorBody>) {
        match to {
            Requester::Internal(tx) => {
                let _ = tx.send(result.map(ToOwned::to_owned));
            }
            Requester::Conn(conn, rid) => {
                let mut buf = Vec::with_capacity(128);
                match result {
                    Ok(body) => encode_rep(&mut buf, &rid, body),
                    Err(e) => encode_err(&mut buf, None, Some(&rid), &e.code, &e.message),
                }
                self.deliver(metrics, conn, &Bytes::from(buf), None);
            }
        }
    }
}

/// The hub: routing state plus configuration and counters.
pub struct Hub {
    state: Mutex<State>,
    config: Arc<HubConfig>,
    timers: Notify,
    metrics: Metrics,
}

impl Hub {
    /// A hub with no connections.
    pub fn new(config: HubConfig) -> Arc<Self> {
        Arc::new(Hub {
            state: Mutex::new(State::default()),
            config: Arc::new(config),
            timers: Notify::new(),
            metrics: Metrics::default(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Operations keep the state consistent at every step they could panic in.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The configuration.
    pub fn config(&self) -> &HubConfig {
        &self.config
    }

    /// The counters.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Registers a new connection, or refuses it at the connection limit.
    pub fn connect(&self, peer: SocketAddr, outbox: Arc<Outbox>) -> Result<ConnId, OpError> {
        let mut st = self.lock();
        if st.live >= self.config.max_connections {
            Metrics::inc(&self.metrics.connections_refused);
            return Err(OpError::new(
                ErrorCode::MaxConnections,
                format!(
                    "the hub is at its limit of {} connections",
                    self.config.max_connections
                ),
            ));
        }
        st.generation = st.generation.wrapping_add(1);
        let index = match st.free.pop() {
            Some(i) => i,
            None => {
                st.conns.push(None);
                (st.conns.len() - 1) as u32
            }
        };
        let id = (u64::from(st.generation) << 32) | u64::from(index);
        let role = (!self.config.auth_required()).then_some(Role::Agent);
        st.conns[index as usize] = Some(Conn {
            id,
            outbox,
            ident: Identity {
                name: Arc::from(format!("conn-{index}-{}", st.generation)),
                role,
                may_claim: None,
            },
            patterns: Vec::new(),
            claims: Vec::new(),
            peer,
            since_ms: now_ms(),
        });
        st.live += 1;
        Metrics::inc(&self.metrics.connections_total);
        Ok(id)
    }

    /// Sets a connection's identity after `hello`.
    pub fn identify(&self, conn: ConnId, ident: Identity) {
        if let Some(c) = self.lock().conn_mut(conn) {
            c.ident = ident;
        }
    }

    /// The identity of a connection.
    pub fn identity(&self, conn: ConnId) -> Option<Identity> {
        self.lock().conn(conn).map(|c| c.ident.clone())
    }

    /// Adds subscriptions; with `snapshot`, queues the matching retained values
    /// and then an `ok` carrying the current seq, atomically.
    pub fn subscribe(
        &self,
        conn: ConnId,
        patterns: &[String],
        snapshot: bool,
        id: Option<&RawValue>,
    ) -> Result<(), OpError> {
        let mut st = self.lock();
        let Some(c) = st.conn(conn) else {
            return Ok(());
        };
        let fresh = patterns.iter().filter(|p| !c.patterns.contains(p)).count();
        if c.patterns.len() + fresh > self.config.max_subscriptions {
            return Err(OpError::new(
                ErrorCode::TooManySubscriptions,
                format!(
                    "this connection holds {} patterns; {} more would pass the limit of {}",
                    c.patterns.len(),
                    fresh,
                    self.config.max_subscriptions
                ),
            ));
        }
        for p in patterns {
            if st.router.insert(p, conn) {
                if let Some(c) = st.conn_mut(conn) {
                    c.patterns.push(p.clone());
                }
            }
        }
        if snapshot {
            for (tag, value) in st.store.matching(patterns) {
                st.deliver(&self.metrics, conn, &value.frame, Some(tag));
            }
        }
        if snapshot || id.is_some() {
            let mut buf = Vec::with_capacity(48);
            encode_ok(&mut buf, id, snapshot.then_some(st.seq));
            st.deliver(&self.metrics, conn, &Bytes::from(buf), None);
        }
        Ok(())
    }

    /// Removes subscriptions; patterns the connection does not hold are ignored.
    pub fn unsubscribe(&self, conn: ConnId, patterns: &[String]) {
        let mut st = self.lock();
        for p in patterns {
            if st.router.remove(p, conn) {
                if let Some(c) = st.conn_mut(conn) {
                    c.patterns.retain(|q| q != p);
                }
            }
        }
    }

    /// Publishes a message from a connection; returns its seq.
    pub fn publish(
        &self,
        conn: ConnId,
        tag: &str,
        body: &RawValue,
        retain: bool,
        cid: Option<&str>,
    ) -> Result<u64, OpError> {
        let mut st = self.lock();
        let Some(c) = st.conn(conn) else {
            return Err(OpError::new(
                ErrorCode::Unavailable,
                "connection is closing",
            ));
        };
        let from = c.ident.name.clone();
        if let Some(owner) = st.owner_of(tag).filter(|o| *o != conn) {
            let by = st
                .conn(owner)
                .map(|o| o.ident.name.to_string())
                .unwrap_or_default();
            return Err(OpError::new(
                ErrorCode::Forbidden,
                format!("tag `{tag}` is claimed by `{by}`; only the owner may publish under it"),
            ));
        }
        Ok(st.route(&self.metrics, Some(conn), &from, tag, body, retain, cid))
    }

    /// Publishes a message from the hub itself (for example a last will).
    pub fn publish_as_hub(&self, tag: &str, body: &RawValue, retain: bool) -> u64 {
        self.lock()
            .route(&self.metrics, None, "hub", tag, body, retain, None)
    }

    /// Claims exclusive ownership of `prefix` and its subtree.
    pub fn claim(&self, conn: ConnId, prefix: &str) -> Result<(), OpError> {
        let mut st = self.lock();
        let Some(c) = st.conn(conn) else {
            return Ok(());
        };
        if let Some(allowed) = &c.ident.may_claim {
            if !allowed.iter().any(|a| is_under(prefix, a)) {
                return Err(OpError::new(
                    ErrorCode::Forbidden,
                    format!(
                        "this token may not claim `{prefix}`; it may claim: {}",
                        allowed.join(", ")
                    ),
                ));
            }
        }
        let ancestor = st.owner_of(prefix);
        let descendant = st
            .claims
            .range::<str, _>((
                std::ops::Bound::Excluded(prefix),
                std::ops::Bound::Unbounded,
            ))
            .take_while(|(k, _)| k.starts_with(prefix))
            .find(|(k, _)| is_under(k, prefix))
            .map(|(_, v)| *v);
        for other in [ancestor, descendant].into_iter().flatten() {
            if other != conn {
                let by = st
                    .conn(other)
                    .map(|o| o.ident.name.to_string())
                    .unwrap_or_default();
                return Err(OpError::new(
                    ErrorCode::Owned,
                    format!("`{prefix}` overlaps a claim held by `{by}`"),
                ));
            }
        }
        if !st.claims.contains_key(prefix) {
            st.claims.insert(prefix.to_owned(), conn);
            if let Some(c) = st.conn_mut(conn) {
                c.claims.push(prefix.to_owned());
            }
        }
        Ok(())
    }

    /// Sends a request to the owner of `tag`, else to one subscriber of it.
    pub fn request(
        &self,
        conn: ConnId,
        tag: &str,
        body: &RawValue,
        rid: &RawValue,
        timeout: Option<Duration>,
        cid: Option<&str>,
    ) -> Result<(), OpError> {
        let requester = Requester::Conn(conn, rid.to_owned());
        self.send_request(Some(conn), requester, tag, body, timeout, cid)
    }

    /// Sends a request on the hub's own behalf (the HTTP side); the answer arrives on the returned channel.
    pub fn request_internal(
        &self,
        tag: &str,
        body: &RawValue,
        timeout: Option<Duration>,
        cid: Option<&str>,
    ) -> Result<Answer, OpError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.send_request(None, Requester::Internal(tx), tag, body, timeout, cid)?;
        Ok(rx)
    }

    fn send_request(
        &self,
        conn: Option<ConnId>,
        requester: Requester,
        tag: &str,
        body: &RawValue,
        timeout: Option<Duration>,
        cid: Option<&str>,
    ) -> Result<(), OpError> {
        let mut st = self.lock();
        let from: Arc<str> = match conn {
            Some(c) => match st.conn(c) {
                Some(c) => c.ident.name.clone(),
                None => return Ok(()),
            },
            None => Arc::from("http"),
        };
        let responder = match st.owner_of(tag) {
            Some(owner) => Some(owner).filter(|o| Some(*o) != conn),
            None => {
                let mut candidates = std::mem::take(&mut st.scratch);
                candidates.clear();
                st.router.matches(tag, &mut candidates);
                candidates.sort_unstable();
                candidates.dedup();
                candidates.retain(|&k| {
                    Some(k) != conn
                        && st
                            .conn(k)
                            .is_some_and(|c| c.ident.role.is_some_and(|r| r != Role::Viewer))
                });
                let pick = (!candidates.is_empty())
                    .then(|| candidates[(st.next_rid % candidates.len() as u64) as usize]);
                st.scratch = candidates;
                pick
            }
        };
        let Some(responder) = responder else {
            Metrics::inc(&self.metrics.requests_no_responder);
            return Err(OpError::new(
                ErrorCode::NoResponder,
                format!("nobody owns or subscribes to `{tag}`"),
            ));
        };
        st.next_rid += 1;
        let hub_rid = st.next_rid;
        let timeout = timeout
            .unwrap_or(Duration::from_millis(self.config.request_timeout_ms))
            .min(Duration::from_millis(self.config.max_request_timeout_ms));
        let deadline = Instant::now() + timeout;
        let earliest = st.deadlines.first().is_none_or(|(d, _)| deadline < *d);
        st.pending.insert(
            hub_rid,
            Pending {
                requester,
                responder,
                deadline,
            },
        );
        st.deadlines.insert((deadline, hub_rid));
        let mut buf = Vec::with_capacity(tag.len() + body.get().len() + 96);
        encode_req(&mut buf, tag, body, hub_rid, &from, cid);
        st.deliver(&self.metrics, responder, &Bytes::from(buf), None);
        drop(st);
        if earliest {
            self.timers.notify_one();
        }
        Ok(())
    }

    /// Delivers a responder's reply (or error) to the requester.
    pub fn reply(
        &self,
        conn: ConnId,
        hub_rid: u64,
        result: Result<&RawValue, ErrorBody>,
    ) -> Result<(), OpError> {
        let mut st = self.lock();
        match st.pending.get(&hub_rid) {
            Some(p) if p.responder == conn => {}
            _ => {
                return Err(OpError::new(
                    ErrorCode::UnknownRequest,
                    format!("no request {hub_rid} is waiting for a reply from this connection (it may have timed out)"),
                ))
            }
        }
        let Some(p) = st.pending.remove(&hub_rid) else {
            return Ok(());
        };
        st.deadlines.remove(&(p.deadline, hub_rid));
        Metrics::inc(match &result {
            Ok(_) => &self.metrics.requests_ok,
            Err(_) => &self.metrics.requests_error,
        });
        st.answer(&self.metrics, p.requester, result);
        Ok(())
    }

    /// Fails requests past their deadline; returns the next deadline.
    pub fn expire_requests(&self, now: Instant) -> Option<Instant> {
        let mut st = self.lock();
        while let Some(&(deadline, rid)) = st.deadlines.first() {
            if deadline > now {
                return Some(deadline);
            }
            st.deadlines.pop_first();
            if let Some(p) = st.pending.remove(&rid) {
                let who = st
                    .conn(p.responder)
                    .map(|c| c.ident.name.to_string())
                    .unwrap_or_default();
                let why = format!("`{who}` did not reply in time");
                st.fail_request(&self.metrics, p, ErrorCode::Timeout, &why);
            }
        }
        None
    }

    /// Runs forever, failing requests as their deadlines pass.
    pub async fn run_request_timer(self: Arc<Self>) {
        loop {
            match self.expire_requests(Instant::now()) {
                Some(next) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(next) => {}
                        _ = self.timers.notified() => {}
                    }
                }
                None => self.timers.notified().await,
            }
        }
    }

    /// Removes a connection: its subscriptions, its claims (publishing each
    /// claim's last will), and the requests it was serving.
    pub fn disconnect(&self, conn: ConnId) {
        let mut st = self.lock();
        let Some(c) = st
            .conns
            .get_mut(slot(conn))
            .and_then(|s| s.take_if(|c| c.id == conn))
        else {
            return;
        };
        st.free.push(slot(conn) as u32);
        st.live -= 1;
        for p in &c.patterns {
            st.router.remove(p, conn);
        }
        let failed: Vec<u64> = st
            .pending
            .iter()
            .filter(|(_, p)| p.responder == conn)
            .map(|(rid, _)| *rid)
            .collect();
        for rid in failed {
            if let Some(p) = st.pending.remove(&rid) {
                st.deadlines.remove(&(p.deadline, rid));
                let why = format!("`{}` disconnected before replying", c.ident.name);
                st.fail_request(&self.metrics, p, ErrorCode::Unavailable, &why);
            }
        }
        let since = now_ms();
        for prefix in &c.claims {
            st.claims.remove(prefix);
            let will = serde_json::json!({
                "online": false,
                "reason": format!("agent `{}` disconnected", c.ident.name),
                "since": since,
            });
            let body = RawValue::from_string(will.to_string()).expect("json! is valid JSON");
            st.route(
                &self.metrics,
                None,
                "hub",
                &format!("{prefix}/online"),
                &body,
                true,
                None,
            );
        }
    }

    /// Number of live connections.
    pub fn connection_count(&self) -> usize {
        self.lock().live
    }

    /// Number of retained tags.
    pub fn retained_count(&self) -> usize {
        self.lock().store.count()
    }

    /// The retained `msg` frame of `tag`, if any.
    pub fn retained(&self, tag: &str) -> Option<Retained> {
        self.lock().store.get(tag).cloned()
    }

    /// Every retained value whose tag matches one of `patterns`, in no particular order.
    pub fn retained_matching(&self, patterns: &[String]) -> Vec<(Arc<str>, Retained)> {
        let st = self.lock();
        st.store
            .matching_unordered(patterns)
            .into_iter()
            .map(|(t, r)| (t.clone(), r.clone()))
            .collect()
    }

    /// The live connections.
    pub fn connections(&self) -> Vec<ConnInfo> {
        self.lock()
            .conns
            .iter()
            .flatten()
            .map(|c| ConnInfo {
                id: c.id,
                name: c.ident.name.to_string(),
                role: c.ident.role,
                peer: c.peer,
                since_ms: c.since_ms,
                claims: c.claims.clone(),
            })
            .collect()
    }
}
