//! The hub's shared state and the operations on it.
//!
//! One mutex guards the routing state (connections, subscriptions, retained
//! store, claims, pending requests). Every operation takes it once, briefly:
//! stamping the seq, updating the store and queueing the encoded frame on
//! each subscriber's outbox happen under it, so every subscriber sees
//! messages in seq order and a snapshot followed by live updates has no gap
//! and no duplicate. Nothing under the lock awaits or does I/O, and nothing
//! under it costs more than what its caller gets back: snapshots and the
//! device list are taken in bounded steps (`snapshot.rs`, [`Hub::devices_page`]).
//! Writers drain the outboxes on their own tasks. How long the lock is held
//! is measured into a histogram that `/metrics` shows.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde_json::value::RawValue;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::claims::{token_principal, Claims, Conflict, Owner};
use super::metrics::Metrics;
use super::outbox::{Outbox, Push};
use super::snapshot::SnapshotJob;
use super::store::{Retained, Store};
use super::ConnId;
use crate::config::{HubConfig, Role};
use crate::journal::{AuditRecord, CommandStart, Journal, Outcome, Record, Sink, StoredValue, Who};
use crate::protocol::{
    encode_msg, encode_ok, encode_rep, encode_req, encode_request_err, ErrorBody, ErrorCode,
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
    /// Whom claims and reservations belong to: the token, or without tokens the name.
    pub principal: Arc<str>,
    /// The hub's own automation (see `automation/bus.rs`): may publish under
    /// the hub's tags and send requests `for` someone else.
    pub system: bool,
    /// The token it presented, to close it when a reload removes or changes that token.
    pub token: Option<Arc<str>>,
    /// Its token's read and write rules, if it has any.
    pub access: Option<Arc<crate::access::Access>>,
}

/// How a client reaches the hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// The wire protocol over TCP.
    Tcp,
    /// The wire protocol over WebSocket.
    WebSocket,
    /// The HTTP API (and its event streams).
    Http,
}

impl Transport {
    /// The lowercase name the journal records.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::WebSocket => "websocket",
            Transport::Http => "http",
        }
    }
}

/// Who sent a request from the HTTP side, and when it arrived, for the journal.
#[derive(Debug, Clone)]
pub struct Origin {
    /// Who.
    pub who: Who,
    /// When the HTTP request arrived (Unix ms).
    pub received_ms: u64,
    /// The sender's token's read and write rules, if it has any: group
    /// members it may not write to are refused.
    pub access: Option<Arc<crate::access::Access>>,
}

struct Conn {
    id: ConnId,
    transport: Transport,
    outbox: Arc<Outbox>,
    ident: Identity,
    patterns: HashSet<Box<str>>,
    claims: Vec<String>,
    peer: SocketAddr,
    since_ms: u64,
    /// Place in the queue of connections waiting to authenticate.
    unauth: Option<u64>,
    /// Requests this connection sent that wait for an answer.
    pending_requests: usize,
    /// Of those, the ones the hub answers itself (journal questions, group commands).
    own_pending: usize,
    /// Counted toward `max_connections`.
    counted: bool,
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
    /// The request's correlation id, for the answer to a timeout.
    cid: Option<Box<str>>,
    /// How long it was given.
    timeout: Duration,
    /// The journal's id for it, when it is a device command.
    command: Option<u64>,
}

/// How long an answer to a timed-out command is still taken into the journal.
const LATE_WINDOW: Duration = Duration::from_secs(600);

/// Tag prefixes only the hub publishes under: definitions, scene runs,
/// schedule state and alerts, which nobody may forge.
pub const HUB_PREFIXES: [&str; 2] = ["hub", "alert"];

/// Most requests one connection may have waiting for the hub's own answer.
const MAX_OWN_PENDING: usize = 4;

/// Longest audit subject or detail kept, in bytes.
const MAX_AUDIT_DETAIL: usize = 512;

/// Failed authentications audited per second; more are counted into one row.
const AUTH_AUDIT_PER_SECOND: u32 = 20;

/// Most timed-out commands waiting for a late answer at once.
const MAX_LATE: usize = 10_000;

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

/// One device's retained values, as the device list reads them.
#[derive(Clone)]
pub struct DeviceRecord {
    /// Device id.
    pub id: String,
    /// `dev/<id>/meta`.
    pub meta: Option<Retained>,
    /// `dev/<id>/state`.
    pub state: Option<Retained>,
    /// `dev/<id>/online`.
    pub online: Option<Retained>,
}

impl DeviceRecord {
    /// The values parsed (a body that is not JSON reads as `null`).
    pub fn view(&self) -> crate::devices::DeviceView {
        let parse = |r: &Option<Retained>| {
            r.as_ref()
                .map(|r| serde_json::from_str(r.body()).unwrap_or(serde_json::Value::Null))
        };
        crate::devices::DeviceView {
            id: self.id.clone(),
            meta: parse(&self.meta),
            state: parse(&self.state),
            online: parse(&self.online),
        }
    }
}

/// Counts kept as devices' retained values change, so gauges need no scan.
#[derive(Debug, Default, Clone, Copy)]
pub struct DeviceCounts {
    /// Devices with a description (`dev/<id>/meta`).
    pub described: usize,
    /// Devices whose `dev/<id>/online` says `"online": true`.
    pub online: usize,
}

#[derive(Default)]
struct State {
    seq: u64,
    /// Slots indexed by the low 32 bits of a ConnId; the high bits are a generation.
    conns: Vec<Option<Conn>>,
    free: Vec<u32>,
    generation: u32,
    /// Authenticated connections (they count toward `max_connections`).
    live: usize,
    /// Connections waiting to authenticate, oldest first.
    unauth: BTreeMap<u64, ConnId>,
    next_unauth: u64,
    router: crate::trie::PatternTrie<ConnId>,
    store: Store,
    devices: DeviceCounts,
    claims: Claims,
    pending: HashMap<u64, Pending>,
    deadlines: BTreeSet<(Instant, u64)>,
    next_rid: u64,
    scratch: Vec<ConnId>,
    /// Reused buffer for encoding frames.
    encode_buf: Vec<u8>,
    /// Shared backing memory for non-retained frames.
    arena: bytes::BytesMut,
    /// Lock acquisitions, to time one in [`TIMING_SAMPLE`] on the hot path.
    acquisitions: u64,
    /// Where records for the journal go, when the hub keeps one.
    journal: Option<Sink>,
    /// Timed-out commands whose late answer is still recorded: hub rid to (journal id, responder).
    late: HashMap<u64, (u64, ConnId)>,
    /// The same, oldest first, with when each stops waiting.
    late_order: std::collections::VecDeque<(Instant, u64)>,
    /// Failed authentications audited: (the second, rows written in it, rows left out).
    auth_audit: (u64, u32, u64),
    /// The cluster bridge's connection: requests nobody here answers go to it.
    cluster_conn: Option<ConnId>,
}

/// Size of each arena block that non-retained frames are carved from.
const ARENA_BYTES: usize = 64 * 1024;

/// One in this many lock holds on the publish path is timed; every other operation is timed always.
const TIMING_SAMPLE: u64 = 64;

/// Device pages read per lock hold by [`Hub::devices_page`].
pub const DEVICE_PAGE: usize = 256;

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

/// Reads `"online"` from a `dev/<id>/online` body.
fn says_online(body: &str) -> bool {
    #[derive(serde::Deserialize)]
    struct Online {
        #[serde(default)]
        online: bool,
    }
    serde_json::from_str::<Online>(body).is_ok_and(|o| o.online)
}

/// The hub lock, held: times how long it is held when `started` is set.
struct Held<'a> {
    guard: MutexGuard<'a, State>,
    metrics: &'a Metrics,
    started: Option<std::time::Instant>,
    /// The thread's CPU time when the lock was taken (timed holds only), to
    /// tell work under the lock from the thread being preempted while holding it.
    cpu: Option<Duration>,
    /// The operation holding it, for the log of long holds.
    op: &'static str,
}

/// CPU time this thread has used.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the struct passed.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Holds longer than this are logged with the operation that held the lock.
const LONG_HOLD: std::time::Duration = std::time::Duration::from_millis(5);

impl Deref for Held<'_> {
    type Target = State;
    fn deref(&self) -> &State {
        &self.guard
    }
}

impl DerefMut for Held<'_> {
    fn deref_mut(&mut self) -> &mut State {
        &mut self.guard
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        if let Some(t) = self.started {
            let held = t.elapsed();
            self.metrics.lock_hold.record(held);
            let running = self.cpu.map(|c| thread_cpu().saturating_sub(c));
            if let Some(r) = running {
                self.metrics
                    .lock_running_max_ns
                    .fetch_max(r.as_nanos() as u64, std::sync::atomic::Ordering::Relaxed);
            }
            if held > LONG_HOLD {
                // Far less running than held: the thread was preempted while holding the lock.
                tracing::warn!(
                    op = self.op,
                    held_us = held.as_micros() as u64,
                    running_us = running.map(|r| r.as_micros() as u64),
                    "hub lock held long"
                );
            }
        }
    }
}

impl Conn {
    /// Who this connection is, for the journal.
    fn who(&self) -> Who {
        Who {
            token: token_name(&self.ident.principal),
            role: self.ident.role.map(|r| r.as_str().to_owned()),
            client: self.ident.name.to_string(),
            peer: self.peer.to_string(),
            transport: self.transport.as_str().to_owned(),
        }
    }
}

/// The token's name in a principal (`token `ops`` or `token tokens[2]`).
fn token_name(principal: &str) -> Option<String> {
    let name = principal.strip_prefix("token ")?;
    Some(name.trim_matches('`').to_owned())
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

    fn name_of(&self, id: ConnId) -> String {
        self.conn(id)
            .map(|c| c.ident.name.to_string())
            .unwrap_or_default()
    }

    /// Queues `frame` on `to`'s outbox; a client past its bound is killed.
    fn deliver(&self, metrics: &Metrics, to: ConnId, frame: &Bytes, retained: Option<&Arc<str>>) {
        let Some(conn) = self.conn(to) else { return };
        let pushed = match retained {
            Some(tag) => conn.outbox.push_retained(tag, frame.clone()),
            None => conn.outbox.push(frame.clone()),
        };
        self.after_push(metrics, conn, pushed);
    }

    /// Queues a control frame (`ok`, a forwarded `req`) on `to`'s outbox.
    fn deliver_control(&self, metrics: &Metrics, to: ConnId, frame: Bytes) {
        let Some(conn) = self.conn(to) else { return };
        let pushed = conn.outbox.push_control(frame);
        self.after_push(metrics, conn, pushed);
    }

    fn after_push(&self, metrics: &Metrics, conn: &Conn, pushed: Push) {
        match pushed {
            Push::Queued | Push::Closed => {}
            Push::Conflated => Metrics::inc(&metrics.conflated),
            Push::Overflow => {
                Metrics::inc(&metrics.slow_consumer_drops);
                tracing::warn!(conn = conn.id, name = %conn.ident.name, "dropping slow consumer");
                conn.outbox.kill(Bytes::from(ErrorCode::SlowConsumer.frame(
                    "outbound queue full: the client is not reading fast enough; reconnect and subscribe again",
                )));
            }
        }
    }

    /// Keeps the device counts in step with a change to a retained value.
    fn count_device_change(&mut self, tag: &str, old: Option<&Retained>, new: Option<&Retained>) {
        let Some((_, part)) = crate::devices::split_tag(tag) else {
            return;
        };
        match part {
            "meta" => match (old.is_some(), new.is_some()) {
                (false, true) => self.devices.described += 1,
                (true, false) => self.devices.described -= 1,
                _ => {}
            },
            "online" => {
                let was = old.is_some_and(|r| says_online(r.body()));
                let is = new.is_some_and(|r| says_online(r.body()));
                match (was, is) {
                    (false, true) => self.devices.online += 1,
                    (true, false) => self.devices.online -= 1,
                    _ => {}
                }
            }
            _ => {}
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
                let old = self.store.remove(tag);
                self.count_device_change(tag, old.as_ref(), None);
                if let (Some(j), Some(old)) = (&self.journal, old) {
                    j.record(Record::Retained {
                        tag: key.clone(),
                        new: None,
                        old: Some(old),
                        seq,
                    });
                }
            } else {
                let value = Retained {
                    tag: key.clone(),
                    seq,
                    frame: frame.clone(),
                    time_ms: now_ms(),
                    body: body_start..body_start + body.get().len(),
                };
                let old = self.store.set(value.clone());
                if tag.starts_with("dev/") {
                    self.count_device_change(tag, old.as_ref(), Some(&value));
                }
                if let Some(j) = &self.journal {
                    j.record(Record::Retained {
                        tag: key.clone(),
                        new: Some(value),
                        old,
                        seq,
                    });
                }
            }
            Some(key)
        } else {
            if let Some(j) = &self.journal {
                if tag.starts_with("dev/") && tag.ends_with("/event") {
                    j.record(Record::Event(Retained {
                        tag: Arc::from(tag),
                        seq,
                        frame: frame.clone(),
                        time_ms: now_ms(),
                        body: body_start..body_start + body.get().len(),
                    }));
                }
            }
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
            if Some(to) == from_conn {
                continue;
            }
            // A token's read rules decide what reaches it.
            let readable = self
                .conn(to)
                .and_then(|c| c.ident.access.as_ref())
                .is_none_or(|a| a.may_read(tag));
            if readable {
                self.deliver(metrics, to, &frame, key.as_ref());
            }
        }
        self.scratch = targets;
        Metrics::inc(&metrics.messages_routed);
        seq
    }

    fn fail_request(
        &mut self,
        metrics: &Metrics,
        hub_rid: u64,
        p: Pending,
        code: ErrorCode,
        message: &str,
    ) {
        let counter = match code {
            ErrorCode::Timeout => &metrics.requests_timeout,
            ErrorCode::Unavailable => &metrics.requests_unavailable,
            _ => &metrics.requests_error,
        };
        Metrics::inc(counter);
        let error = ErrorBody::new(code.as_str(), message);
        if let (Some(j), Some(id)) = (&self.journal, p.command) {
            // A responder that left may have carried it out: unknown, like a timeout.
            let outcome = match code {
                ErrorCode::Timeout => Outcome::TimedOut,
                ErrorCode::Unavailable => Outcome::Unknown(error.clone()),
                _ => Outcome::Failed(error.clone()),
            };
            j.record(Record::CommandEnd {
                id,
                time_ms: now_ms(),
                outcome,
            });
            if code == ErrorCode::Timeout {
                self.await_late(hub_rid, id, p.responder);
            }
        }
        self.answer(p.requester, Err(error));
    }

    /// Keeps a timed-out command's rid, so its late answer reaches the journal.
    fn await_late(&mut self, hub_rid: u64, id: u64, responder: ConnId) {
        let now = Instant::now();
        while let Some(&(until, rid)) = self.late_order.front() {
            if until > now && self.late.len() < MAX_LATE {
                break;
            }
            self.late_order.pop_front();
            self.late.remove(&rid);
        }
        self.late.insert(hub_rid, (id, responder));
        self.late_order.push_back((now + LATE_WINDOW, hub_rid));
    }

    /// Records an audit row, when the hub keeps a journal.
    fn audit(&self, kind: &'static str, who: Who, subject: String, detail: String) {
        self.audit_at(now_ms(), kind, who, subject, detail);
    }

    /// An audit row with the time it happened.
    fn audit_at(
        &self,
        time_ms: u64,
        kind: &'static str,
        who: Who,
        mut subject: String,
        mut detail: String,
    ) {
        if let Some(j) = &self.journal {
            for text in [&mut subject, &mut detail] {
                if text.len() > MAX_AUDIT_DETAIL {
                    let mut cut = MAX_AUDIT_DETAIL;
                    while !text.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    text.truncate(cut);
                    text.push('…');
                }
            }
            j.record(Record::Audit(Box::new(AuditRecord {
                time_ms,
                kind,
                who,
                subject,
                detail,
            })));
        }
    }

    /// Sends a request's outcome to whoever waits for it.
    fn answer(&mut self, to: Requester, result: Result<&RawValue, ErrorBody>) {
        match to {
            Requester::Internal(tx) => {
                let _ = tx.send(result.map(ToOwned::to_owned));
            }
            Requester::Conn(conn, rid) => {
                let Some(c) = self.conn_mut(conn) else { return };
                c.pending_requests -= 1;
                let mut buf = Vec::with_capacity(128);
                match result {
                    Ok(body) => encode_rep(&mut buf, &rid, body),
                    Err(e) => encode_request_err(&mut buf, &rid, &e),
                }
                // Answers pass the queue's bound: there are at most `max_pending_requests` of them.
                c.outbox.push_answer(Bytes::from(buf));
            }
        }
    }

    /// Counts `conn` toward `max_connections`.
    fn count(&mut self, conn: ConnId) {
        if let Some(c) = self.conn_mut(conn) {
            c.counted = true;
        } else {
            return;
        }
        self.live += 1;
    }

    /// Takes `conn` out of the queue of connections waiting to authenticate.
    fn authenticated(&mut self, conn: ConnId) {
        if let Some(key) = self.conn_mut(conn).and_then(|c| c.unauth.take()) {
            self.unauth.remove(&key);
        }
    }
}

/// The hub: routing state plus configuration and counters.
pub struct Hub {
    state: Mutex<State>,
    /// The configuration in force; replaced whole by [`Hub::reload`].
    config: std::sync::RwLock<Arc<HubConfig>>,
    /// Bumped at every reload, for what restarts with the configuration.
    config_generation: tokio::sync::watch::Sender<u64>,
    /// Where a reload reads the configuration from.
    config_source: std::sync::OnceLock<super::reload::Source>,
    timers: Notify,
    metrics: Metrics,
    /// This hub process's id, new at every start.
    instance: String,
    /// The journal on disk, when the hub keeps one.
    journal: Option<Arc<Journal>>,
    /// Scene runs under way.
    scenes: crate::automation::scenes::Runner,
    /// Member commands of all automation under way at once (`group_concurrency`).
    automation_limit: Arc<tokio::sync::Semaphore>,
    /// Automation's own wire connection to this hub.
    link: crate::automation::bus::Link,
    /// TLS on the hub's ports (`[tls]`), loaded by [`crate::server::open_hub`] and at each reload.
    tls: std::sync::RwLock<Option<Arc<crate::tls::ServerTls>>>,
    /// TLS handshakes under way on the wire port (at most `max_unauthenticated`).
    handshakes: Arc<crate::tls::Handshakes>,
    /// The MQTT bridge's link to its broker, while the bridge runs.
    mqtt_status: std::sync::Mutex<Option<crate::mqtt::MqttStatus>>,
    /// What the hub shares with its cluster bridge, in cluster mode.
    cluster: std::sync::OnceLock<Arc<crate::cluster::Shared>>,
}

impl Hub {
    /// A hub with no connections.
    pub fn new(config: HubConfig) -> Arc<Self> {
        let state = State {
            claims: Claims::from_config(&config),
            next_rid: first_rid(),
            ..State::default()
        };
        let group_concurrency = config.group_concurrency.max(1);
        Arc::new(Hub {
            state: Mutex::new(state),
            config: std::sync::RwLock::new(Arc::new(config)),
            config_generation: tokio::sync::watch::channel(0).0,
            config_source: std::sync::OnceLock::new(),
            timers: Notify::new(),
            metrics: Metrics::default(),
            instance: new_instance_id(),
            journal: None,
            scenes: crate::automation::scenes::Runner::new(),
            automation_limit: Arc::new(tokio::sync::Semaphore::new(group_concurrency)),
            link: crate::automation::bus::Link::new(),
            tls: std::sync::RwLock::new(None),
            handshakes: Arc::default(),
            mqtt_status: std::sync::Mutex::new(None),
            cluster: std::sync::OnceLock::new(),
        })
    }

    /// A hub that keeps `journal`, starting from the retained values it
    /// read back. Those are routed again with new seqs; each device's
    /// `online` becomes unknown (`"online": null`, with the reason and the
    /// last value kept as `last`) until its agent reconnects and says.
    pub fn with_journal(
        config: HubConfig,
        journal: Arc<Journal>,
        restored: Vec<StoredValue>,
    ) -> Arc<Self> {
        let mut state = State {
            claims: Claims::from_config(&config),
            next_rid: first_rid(),
            ..State::default()
        };
        let metrics = Metrics::default();
        let since = now_ms();
        for v in &restored {
            let unknown;
            let body = match crate::devices::split_tag(&v.tag) {
                Some((_, "online")) => {
                    let last: serde_json::Value = serde_json::from_str(&v.body).unwrap_or_default();
                    unknown = serde_json::json!({
                        "online": null,
                        "reason": "the hub restarted; this is the last known state, not yet confirmed by the device's agent",
                        "since": since,
                        "last": last,
                    })
                    .to_string();
                    &unknown
                }
                _ => &v.body,
            };
            let Ok(raw) = RawValue::from_string(body.clone()) else {
                tracing::warn!(tag = %v.tag, "the journal holds a value that is not JSON; left out");
                continue;
            };
            state.route(&metrics, None, &v.from, &v.tag, &raw, true, None);
            if let Some(r) = state.store.get(&v.tag).cloned() {
                // Keep the publish time it had, not the restart's.
                let mut r = r;
                r.time_ms = v.time_ms;
                state.store.set(r);
            }
        }
        if !restored.is_empty() {
            tracing::info!(values = restored.len(), file = %journal.path().display(), "retained values restored from the journal");
        }
        state.journal = Some(journal.sink().clone());
        let group_concurrency = config.group_concurrency.max(1);
        let hub = Arc::new(Hub {
            state: Mutex::new(state),
            config: std::sync::RwLock::new(Arc::new(config)),
            config_generation: tokio::sync::watch::channel(0).0,
            config_source: std::sync::OnceLock::new(),
            timers: Notify::new(),
            metrics,
            instance: journal.instance().to_owned(),
            journal: Some(journal),
            scenes: crate::automation::scenes::Runner::new(),
            automation_limit: Arc::new(tokio::sync::Semaphore::new(group_concurrency)),
            link: crate::automation::bus::Link::new(),
            tls: std::sync::RwLock::new(None),
            handshakes: Arc::default(),
            mqtt_status: std::sync::Mutex::new(None),
            cluster: std::sync::OnceLock::new(),
        });
        hub.audit_hub("hub_started", format!("instance {}", hub.instance));
        hub
    }

    /// The limit on automation's member commands under way at once.
    pub fn automation_limit(&self) -> &Arc<tokio::sync::Semaphore> {
        &self.automation_limit
    }

    /// Scene runs.
    pub fn scenes(&self) -> &crate::automation::scenes::Runner {
        &self.scenes
    }

    /// Where automation connects to this hub, and its token.
    pub fn automation_link(&self) -> &crate::automation::bus::Link {
        &self.link
    }

    /// Automation's connection to this hub (made on first use).
    pub async fn bus(&self) -> Result<Arc<crate::automation::bus::Bus>, OpError> {
        self.link.bus().await
    }

    /// The journal, when the hub keeps one.
    pub fn journal(&self) -> Option<&Arc<Journal>> {
        self.journal.as_ref()
    }

    /// Records the hub's own start or stop in the audit trail.
    pub fn audit_hub(&self, kind: &'static str, detail: String) {
        let who = Who {
            client: "hub".into(),
            transport: "internal".into(),
            ..Who::default()
        };
        self.lock("audit").audit(kind, who, String::new(), detail);
    }

    /// Records an audit row (a definition changed, a group command ran).
    pub fn audit(&self, kind: &'static str, who: Who, subject: String, detail: String) {
        self.lock("audit").audit(kind, who, subject, detail);
    }

    /// Records a failed authentication (a bad or missing token). Past
    /// [`AUTH_AUDIT_PER_SECOND`] a second, failures are counted and recorded
    /// as one row when a later one arrives in a new second, so a flood of
    /// bad tokens cannot fill the disk.
    pub fn audit_auth_failure(&self, who: Who, detail: &str) {
        let mut st = self.lock("audit");
        // One clock reading, so a row is in the second it was counted in.
        let now = now_ms();
        let second = now / 1000;
        if st.auth_audit.0 != second {
            let suppressed = st.auth_audit.2;
            st.auth_audit = (second, 0, 0);
            if suppressed > 0 {
                let hub = Who {
                    client: "hub".into(),
                    transport: "internal".into(),
                    ..Who::default()
                };
                st.audit_at(
                    now,
                    "auth_failed",
                    hub,
                    String::new(),
                    format!("{suppressed} more failed authentications in an earlier second, not recorded one by one"),
                );
            }
        }
        if st.auth_audit.1 < AUTH_AUDIT_PER_SECOND {
            st.auth_audit.1 += 1;
            st.audit_at(now, "auth_failed", who, String::new(), detail.to_owned());
        } else {
            st.auth_audit.2 += 1;
        }
    }

    /// This hub process's id (16 hex digits, new at every start): clients
    /// that see it change know the hub restarted and its seqs began again.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    fn lock_untimed(&self) -> MutexGuard<'_, State> {
        // Operations keep the state consistent at every step they could panic in.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The lock, with the hold timed.
    fn lock(&self, op: &'static str) -> Held<'_> {
        let guard = self.lock_untimed();
        Held {
            guard,
            metrics: &self.metrics,
            started: Some(std::time::Instant::now()),
            cpu: Some(thread_cpu()),
            op,
        }
    }

    /// The lock on the publish path: one hold in [`TIMING_SAMPLE`] is timed,
    /// so the clock stays off the hot path.
    fn lock_sampled(&self, op: &'static str) -> Held<'_> {
        let mut guard = self.lock_untimed();
        guard.acquisitions += 1;
        let timed = guard.acquisitions.is_multiple_of(TIMING_SAMPLE);
        Held {
            guard,
            metrics: &self.metrics,
            started: timed.then(std::time::Instant::now),
            cpu: None,
            op,
        }
    }

    /// The configuration.
    pub fn config(&self) -> Arc<HubConfig> {
        self.config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// TLS on the hub's ports, when configured.
    pub fn tls(&self) -> Option<Arc<crate::tls::ServerTls>> {
        self.tls.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Puts (renewed) TLS files in force for new connections.
    pub fn set_tls(&self, tls: Option<Arc<crate::tls::ServerTls>>) {
        *self.tls.write().unwrap_or_else(|p| p.into_inner()) = tls;
    }

    /// The MQTT bridge's link to its broker, while the bridge runs.
    pub fn mqtt_status(&self) -> Option<crate::mqtt::MqttStatus> {
        self.mqtt_status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Records the MQTT bridge's link (`None`: the bridge stopped).
    pub fn set_mqtt_status(&self, status: Option<crate::mqtt::MqttStatus>) {
        *self.mqtt_status.lock().unwrap_or_else(|p| p.into_inner()) = status;
    }

    /// The cluster's shared state, in cluster mode.
    pub fn cluster(&self) -> Option<&Arc<crate::cluster::Shared>> {
        self.cluster.get()
    }

    /// Puts the hub in cluster mode (once, at start).
    pub fn set_cluster(&self, shared: Arc<crate::cluster::Shared>) {
        let _ = self.cluster.set(shared);
    }

    /// Whether a live connection here has claimed `tag` (its news is this hub's own).
    pub fn claimed_here(&self, tag: &str) -> bool {
        matches!(
            self.lock("claimed_here").claims.owner(tag, Instant::now()),
            Owner::Conn(_)
        )
    }

    /// Ends a claim the cluster gave to another hub's agent: the claimer's
    /// connection is closed with `owned` and `why` (it claims again later and
    /// is refused while the other lease lives).
    pub fn lose_claim(&self, prefix: &str, why: &str) {
        let st = self.lock("lose_claim");
        let Some((_, conn)) = st.claims.live().find(|(p, _)| *p == prefix) else {
            return;
        };
        if let Some(c) = st.conn(conn) {
            tracing::warn!(%prefix, agent = %c.ident.name, "claim lost to the cluster: {why}");
            c.outbox.end_with(Bytes::from(ErrorCode::Owned.frame(why)));
        }
    }

    /// The live claims: prefix, the claimer's principal and its name.
    pub fn live_claims(&self) -> Vec<(String, Arc<str>, Arc<str>)> {
        let st = self.lock("live_claims");
        st.claims
            .live()
            .filter_map(|(prefix, conn)| {
                let c = st.conn(conn)?;
                Some((
                    prefix.to_owned(),
                    c.ident.principal.clone(),
                    c.ident.name.clone(),
                ))
            })
            .collect()
    }

    /// A place for one TLS handshake on the wire port; past
    /// `max_unauthenticated` the oldest under way is cancelled.
    pub fn admit_handshake(&self) -> crate::tls::HandshakeTicket {
        let (ticket, evicted) = self.handshakes.admit(self.config().max_unauthenticated);
        if evicted > 0 {
            Metrics::add(&self.metrics.unauthenticated_dropped, evicted as u64);
        }
        ticket
    }

    /// Puts `new` in force: token reservations follow it, and connections
    /// whose token it removed or changed (role, claims), or that have no
    /// token where it requires one, are closed with `unauthorized`. Returns
    /// how many were closed. See `reload.rs` for what is kept from before.
    pub fn apply_config(&self, new: HubConfig) -> usize {
        let new = Arc::new(new);
        let mut st = self.lock("apply_config");
        st.claims.reload_reservations(&new);
        let mut closed = 0;
        for c in st.conns.iter().flatten() {
            if c.ident.system || c.unauth.is_some() || c.ident.role.is_none() {
                continue;
            }
            let still = match &c.ident.token {
                None => !new.auth_required(),
                Some(secret) => {
                    let old = self.config().find_token(secret).map(|(_, t)| t.clone());
                    match (old, new.find_token(secret)) {
                        (Some(o), Some((_, n))) => {
                            o.role == n.role
                                && o.claims == n.claims
                                && (&o.read, &o.write, &o.deny) == (&n.read, &n.write, &n.deny)
                        }
                        _ => false,
                    }
                }
            };
            if !still {
                closed += 1;
                c.outbox.end_with(Bytes::from(ErrorCode::Unauthorized.frame(
                    "the hub's configuration was reloaded and this connection's token was removed or changed; connect again",
                )));
            }
        }
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = new;
        drop(st);
        self.config_generation.send_modify(|g| *g += 1);
        closed
    }

    /// Sets where a reload reads the configuration from (once).
    pub fn set_config_source(&self, source: super::reload::Source) {
        let _ = self.config_source.set(source);
    }

    /// Where a reload reads the configuration from, if anywhere.
    pub fn config_source(&self) -> Option<&super::reload::Source> {
        self.config_source.get()
    }

    /// Changes whenever the configuration is reloaded.
    pub fn config_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.config_generation.subscribe()
    }

    /// The counters.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The principal of the token at `index` in the configuration.
    pub fn token_principal(&self, index: usize) -> Arc<str> {
        token_principal(&self.config(), index)
    }

    /// Registers a new connection, or refuses it at a limit. Where tokens
    /// are required it waits to authenticate, counted apart from
    /// `max_connections`; past `max_unauthenticated` the oldest waiting
    /// connection is closed to make room, so idle sockets cannot keep
    /// real clients out.
    pub fn connect(
        &self,
        peer: SocketAddr,
        outbox: Arc<Outbox>,
        transport: Transport,
    ) -> Result<ConnId, OpError> {
        let mut st = self.lock("connect");
        let auth = self.config().auth_required();
        if !auth && st.live >= self.config().max_connections {
            return Err(self.refuse_at_limit());
        }
        if auth && st.unauth.len() >= self.config().max_unauthenticated {
            if let Some((_, oldest)) = st.unauth.pop_first() {
                Metrics::inc(&self.metrics.unauthenticated_dropped);
                if let Some(c) = st.conn_mut(oldest) {
                    c.unauth = None;
                    c.outbox.end_with(Bytes::from(ErrorCode::Unauthorized.frame(
                        "too many connections are waiting to authenticate; this one waited longest",
                    )));
                }
            }
        }
        let id = Self::add_conn(&mut st, peer, outbox, transport);
        if auth {
            let key = st.next_unauth;
            st.next_unauth += 1;
            st.unauth.insert(key, id);
            if let Some(c) = st.conn_mut(id) {
                c.unauth = Some(key);
                c.ident.role = None;
            }
        } else {
            st.count(id);
        }
        Metrics::inc(&self.metrics.connections_total);
        Ok(id)
    }

    /// Registers a connection the HTTP side has already authenticated (an event stream).
    pub fn connect_as(
        &self,
        peer: SocketAddr,
        outbox: Arc<Outbox>,
        ident: Identity,
    ) -> Result<ConnId, OpError> {
        let mut st = self.lock("connect_as");
        if st.live >= self.config().max_connections {
            return Err(self.refuse_at_limit());
        }
        let id = Self::add_conn(&mut st, peer, outbox, Transport::Http);
        if let Some(c) = st.conn_mut(id) {
            c.ident = ident;
        }
        st.count(id);
        Metrics::inc(&self.metrics.connections_total);
        Ok(id)
    }

    fn refuse_at_limit(&self) -> OpError {
        Metrics::inc(&self.metrics.connections_refused);
        OpError::new(
            ErrorCode::MaxConnections,
            format!(
                "the hub is at its limit of {} connections",
                self.config().max_connections
            ),
        )
    }

    fn add_conn(
        st: &mut State,
        peer: SocketAddr,
        outbox: Arc<Outbox>,
        transport: Transport,
    ) -> ConnId {
        st.generation = st.generation.wrapping_add(1);
        let index = match st.free.pop() {
            Some(i) => i,
            None => {
                st.conns.push(None);
                (st.conns.len() - 1) as u32
            }
        };
        let id = (u64::from(st.generation) << 32) | u64::from(index);
        let name: Arc<str> = Arc::from(format!("conn-{index}-{}", st.generation));
        st.conns[index as usize] = Some(Conn {
            id,
            transport,
            outbox,
            ident: Identity {
                name: name.clone(),
                role: Some(Role::Agent),
                may_claim: None,
                principal: name,
                system: false,
                token: None,
                access: None,
            },
            patterns: HashSet::new(),
            claims: Vec::new(),
            peer,
            since_ms: now_ms(),
            unauth: None,
            pending_requests: 0,
            own_pending: 0,
            counted: false,
        });
        id
    }

    /// Sets a connection's identity after `hello`; an authenticating
    /// connection now counts toward `max_connections`, and is refused past it.
    pub fn identify(&self, conn: ConnId, ident: Identity) -> Result<(), OpError> {
        let mut st = self.lock("identify");
        let counted = st.conn(conn).is_none_or(|c| c.counted);
        if !counted {
            if st.live >= self.config().max_connections {
                return Err(self.refuse_at_limit());
            }
            st.authenticated(conn);
            st.count(conn);
        }
        if ident.system
            && &*ident.name == crate::cluster::BRIDGE_NAME
            && self.cluster.get().is_some()
        {
            st.cluster_conn = Some(conn);
        }
        if let Some(c) = st.conn_mut(conn) {
            c.ident = ident;
        }
        Ok(())
    }

    /// Who a connection is, as the journal records it.
    pub fn who(&self, conn: ConnId) -> Option<Who> {
        self.lock("who").conn(conn).map(Conn::who)
    }

    /// The identity of a connection.
    pub fn identity(&self, conn: ConnId) -> Option<Identity> {
        self.lock("identity").conn(conn).map(|c| c.ident.clone())
    }

    /// Adds subscriptions. With `snapshot` (`Some(after)`), the matching
    /// retained values newer than `after` follow in the outbox, then an `ok`
    /// carrying the current seq; the values are streamed in steps as the
    /// reader drains (see `snapshot.rs`).
    pub fn subscribe(
        &self,
        conn: ConnId,
        patterns: &[String],
        snapshot: Option<u64>,
        id: Option<&RawValue>,
    ) -> Result<(), OpError> {
        if patterns.len() > self.config().max_patterns_per_sub {
            return Err(OpError::new(
                ErrorCode::TooManySubscriptions,
                format!(
                    "one `sub` may list at most {} patterns; this one lists {}",
                    self.config().max_patterns_per_sub,
                    patterns.len()
                ),
            ));
        }
        // Compiling the patterns needs no lock: only the seq is taken under it.
        let mut job = snapshot.map(|after| SnapshotJob::new(patterns, after, id));
        let mut st = self.lock("subscribe");
        let Some(c) = st.conn(conn) else {
            return Ok(());
        };
        if let Some(j) = job.as_mut() {
            j.set_access(c.ident.access.clone());
        }
        let fresh = patterns
            .iter()
            .filter(|p| !c.patterns.contains(p.as_str()))
            .collect::<HashSet<_>>()
            .len();
        if c.patterns.len() + fresh > self.config().max_subscriptions {
            return Err(OpError::new(
                ErrorCode::TooManySubscriptions,
                format!(
                    "this connection holds {} patterns; {} more would pass the limit of {}",
                    c.patterns.len(),
                    fresh,
                    self.config().max_subscriptions
                ),
            ));
        }
        for p in patterns {
            if st.router.insert(p, conn) {
                if let Some(c) = st.conn_mut(conn) {
                    c.patterns.insert(p.as_str().into());
                }
            }
        }
        match job.take() {
            Some(mut job) => {
                job.set_seq(st.seq);
                if let Some(c) = st.conn(conn) {
                    let pushed = c.outbox.push_snapshot(job);
                    st.after_push(&self.metrics, c, pushed);
                }
            }
            None if id.is_some() => {
                let mut buf = Vec::with_capacity(48);
                encode_ok(&mut buf, id, None);
                st.deliver_control(&self.metrics, conn, Bytes::from(buf));
            }
            None => {}
        }
        Ok(())
    }

    /// Takes the next step of a snapshot (see `snapshot.rs`): a short hold of
    /// the lock with a fixed budget. Returns whether it is complete and the
    /// number of messages copied into `buf`.
    pub fn snapshot_step(&self, job: &mut SnapshotJob, buf: &mut Vec<u8>) -> (bool, u64) {
        Metrics::inc(&self.metrics.snapshot_steps);
        let st = self.lock("snapshot_step");
        job.step(&st.store, buf)
    }

    /// Removes subscriptions; patterns the connection does not hold are ignored.
    pub fn unsubscribe(&self, conn: ConnId, patterns: &[String]) {
        let mut st = self.lock("unsubscribe");
        for p in patterns {
            if st.router.remove(p, conn) {
                if let Some(c) = st.conn_mut(conn) {
                    c.patterns.remove(p.as_str());
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
        let mut st = self.lock_sampled("publish");
        let Some(c) = st.conn(conn) else {
            return Err(OpError::new(
                ErrorCode::Unavailable,
                "connection is closing",
            ));
        };
        let from = c.ident.name.clone();
        if c.ident.access.as_ref().is_some_and(|a| !a.may_write(tag)) {
            return Err(OpError::new(
                ErrorCode::Forbidden,
                format!("this token may not write to `{tag}` (its `write`/`deny` rules)"),
            ));
        }
        let own = HUB_PREFIXES.iter().find(|p| is_under(tag, p));
        if let (Some(own), false) = (own, c.ident.system) {
            return Err(OpError::new(
                ErrorCode::Forbidden,
                format!("tags under `{own}` are the hub's own (definitions, runs, alerts); clients may not publish there"),
            ));
        }
        if !st.claims.is_empty() {
            let principal = &c.ident.principal;
            let bridge = st.cluster_conn == Some(conn);
            if let Err(owner) = st
                .claims
                .may_publish(tag, conn, principal, Instant::now())
                .or_else(|o| match o {
                    // A device whose agent moved to another hub: its news comes from there.
                    Owner::Reserved(_) if bridge => Ok(()),
                    o => Err(o),
                })
            {
                let by = match owner {
                    Owner::Conn(o) => format!("claimed by `{}`", st.name_of(o)),
                    Owner::Reserved(p) => format!("reserved for {p}, which is not connected"),
                    Owner::Nobody => String::new(),
                };
                return Err(OpError::new(
                    ErrorCode::Forbidden,
                    format!("tag `{tag}` is {by}; only its owner may publish under it"),
                ));
            }
        }
        if retain
            && st.store.count() >= self.config().max_retained
            && body.get() != "null"
            && st.store.get(tag).is_none()
        {
            Metrics::inc(&self.metrics.retained_refused);
            return Err(OpError::new(
                ErrorCode::RetainedLimit,
                format!(
                    "the hub retains its limit of {} values; `{tag}` was not published (delete retained values or raise `max_retained`)",
                    self.config().max_retained
                ),
            ));
        }
        Ok(st.route(&self.metrics, Some(conn), &from, tag, body, retain, cid))
    }

    /// Publishes a message from the hub itself (for example a last will).
    pub fn publish_as_hub(&self, tag: &str, body: &RawValue, retain: bool) -> u64 {
        self.lock("publish_as_hub")
            .route(&self.metrics, None, "hub", tag, body, retain, None)
    }

    /// Claims exclusive ownership of `prefix` and its subtree.
    pub fn claim(&self, conn: ConnId, prefix: &str) -> Result<(), OpError> {
        let mut st = self.lock("claim");
        let Some(c) = st.conn(conn) else {
            return Ok(());
        };
        if c.ident
            .access
            .as_ref()
            .is_some_and(|a| !a.may_claim(prefix))
        {
            return Err(OpError::new(
                ErrorCode::Forbidden,
                format!("this token may not claim `{prefix}`: its `write`/`deny` rules do not give it the whole subtree"),
            ));
        }
        if let Some(own) = HUB_PREFIXES
            .iter()
            .find(|p| is_under(prefix, p) || is_under(p, prefix))
        {
            return Err(OpError::new(
                ErrorCode::Forbidden,
                format!("`{prefix}` overlaps `{own}`, the hub's own tags; nobody may claim them"),
            ));
        }
        if let Some(allowed) = &c.ident.may_claim {
            if !allowed.iter().any(|a| is_under(prefix, a)) {
                let e = OpError::new(
                    ErrorCode::Forbidden,
                    format!(
                        "this token may not claim `{prefix}`; it may claim: {}",
                        allowed.join(", ")
                    ),
                );
                st.audit(
                    "claim_refused",
                    c.who(),
                    prefix.to_owned(),
                    e.message.clone(),
                );
                return Err(e);
            }
        }
        let principal = c.ident.principal.clone();
        let who = c.who();
        if let Some(why) = self
            .cluster
            .get()
            .and_then(|cl| cl.leases.conflict(prefix, Instant::now()))
        {
            st.audit("claim_refused", who, prefix.to_owned(), why.clone());
            return Err(OpError::new(ErrorCode::Owned, why));
        }
        let result = match st.claims.claim(prefix, conn, &principal, Instant::now()) {
            Ok(true) => {
                if let Some(c) = st.conn_mut(conn) {
                    c.claims.push(prefix.to_owned());
                }
                st.audit("claim", who, prefix.to_owned(), "claimed".into());
                drop(st);
                if let Some(cl) = self.cluster.get() {
                    cl.claims_changed();
                }
                return Ok(());
            }
            Ok(false) => return Ok(()),
            Err(Conflict::Claimed(other)) => OpError::new(
                ErrorCode::Owned,
                format!(
                    "`{prefix}` overlaps a claim held by `{}`",
                    st.name_of(other)
                ),
            ),
            Err(Conflict::Reserved(p)) => OpError::new(
                ErrorCode::Owned,
                format!("`{prefix}` overlaps a prefix reserved for {p}"),
            ),
        };
        st.audit(
            "claim_refused",
            who,
            prefix.to_owned(),
            result.message.clone(),
        );
        Err(result)
    }

    /// Sends a request to the owner of `tag`, else to one subscriber of it;
    /// a device command is journaled as sent by `origin` when given, else by `conn`.
    #[allow(clippy::too_many_arguments)]
    pub fn request(
        &self,
        conn: ConnId,
        tag: &str,
        body: &RawValue,
        rid: &RawValue,
        timeout: Option<Duration>,
        cid: Option<&str>,
        origin: Option<Origin>,
    ) -> Result<(), OpError> {
        let requester = Requester::Conn(conn, rid.to_owned());
        self.send_request(Some(conn), requester, tag, body, timeout, cid, origin)
    }

    /// Sends a request on the hub's own behalf (the HTTP side, for `origin`);
    /// the answer arrives on the returned channel.
    pub fn request_internal(
        &self,
        tag: &str,
        body: &RawValue,
        timeout: Option<Duration>,
        cid: Option<&str>,
        origin: Option<Origin>,
    ) -> Result<Answer, OpError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.send_request(
            None,
            Requester::Internal(tx),
            tag,
            body,
            timeout,
            cid,
            origin,
        )?;
        Ok(rx)
    }

    /// Records a device command the HTTP side refused before sending it
    /// (unknown device, invalid value, offline), so the journal has every attempt.
    pub fn journal_refused_command(
        &self,
        device: &str,
        desired: &str,
        cid: &str,
        origin: Origin,
        error: ErrorBody,
    ) {
        let Some(j) = &self.journal else { return };
        let sink = j.sink();
        sink.record(Record::CommandStart(Box::new(CommandStart {
            id: sink.next_command_id(),
            cid: cid.to_owned(),
            device: device.to_owned(),
            desired: desired.to_owned(),
            who: origin.who,
            received_ms: origin.received_ms,
            forwarded_ms: None,
            agent: None,
            refused: Some(error),
        })));
    }

    #[allow(clippy::too_many_arguments)]
    fn send_request(
        &self,
        conn: Option<ConnId>,
        requester: Requester,
        tag: &str,
        body: &RawValue,
        timeout: Option<Duration>,
        cid: Option<&str>,
        origin: Option<Origin>,
    ) -> Result<(), OpError> {
        let mut st = self.lock_sampled("send_request");
        // A device command goes into the journal, with who sent it.
        let mut command = match (&st.journal, crate::devices::split_tag(tag)) {
            (Some(j), Some((device, "set"))) => {
                let id = j.next_command_id();
                let (who, received_ms) = match (conn.and_then(|c| st.conn(c)), origin) {
                    (_, Some(o)) => (o.who, o.received_ms),
                    (Some(c), None) => (c.who(), now_ms()),
                    (None, None) => (
                        Who {
                            client: "http".into(),
                            transport: "http".into(),
                            ..Who::default()
                        },
                        now_ms(),
                    ),
                };
                Some(CommandStart {
                    id,
                    cid: cid.map_or_else(|| format!("cmd-{id}"), str::to_owned),
                    device: device.to_owned(),
                    desired: body.get().to_owned(),
                    who,
                    received_ms,
                    forwarded_ms: None,
                    agent: None,
                    refused: None,
                })
            }
            _ => None,
        };
        let refuse = |st: &mut State, command: Option<CommandStart>, e: OpError| {
            if let (Some(j), Some(mut c)) = (&st.journal, command) {
                c.refused = Some(ErrorBody::new(e.code.as_str(), e.message.clone()));
                j.record(Record::CommandStart(Box::new(c)));
            }
            Err(e)
        };
        let from: Arc<str> = match conn {
            Some(c) => match st.conn(c) {
                Some(c) if c.pending_requests >= self.config().max_pending_requests => {
                    let e = OpError::new(
                        ErrorCode::TooManyRequests,
                        format!(
                            "this connection already waits for {} answers, its limit (`max_pending_requests`)",
                            c.pending_requests
                        ),
                    );
                    return refuse(&mut st, command, e);
                }
                Some(c) if c.ident.access.as_ref().is_some_and(|a| !a.may_write(tag)) => {
                    let e = OpError::new(
                        ErrorCode::Forbidden,
                        format!("this token may not send requests to `{tag}` (its `write`/`deny` rules)"),
                    );
                    return refuse(&mut st, command, e);
                }
                Some(c) => c.ident.name.clone(),
                None => return Ok(()),
            },
            None => Arc::from("http"),
        };
        let remote = st.cluster_conn.filter(|b| {
            Some(*b) != conn
                && self
                    .cluster
                    .get()
                    .is_some_and(|cl| cl.leases.remote_owner(tag, Instant::now()))
        });
        let owner = match (st.claims.owner(tag, Instant::now()), remote) {
            // Reserved here, but its agent is live on another hub.
            (Owner::Reserved(_) | Owner::Nobody, Some(bridge)) => Owner::Conn(bridge),
            (o, _) => o,
        };
        let responder = match owner {
            Owner::Conn(owner) => Some(owner).filter(|o| Some(*o) != conn),
            Owner::Reserved(p) => {
                Metrics::inc(&self.metrics.requests_no_responder);
                let e = OpError::new(
                    ErrorCode::NoResponder,
                    format!("`{tag}` belongs to {p}, which is not connected"),
                );
                return refuse(&mut st, command, e);
            }
            Owner::Nobody => {
                let mut candidates = std::mem::take(&mut st.scratch);
                candidates.clear();
                st.router.matches(tag, &mut candidates);
                candidates.sort_unstable();
                candidates.dedup();
                // Viewers and the hub's own connections (automation, the MQTT
                // bridge) subscribe but never answer requests.
                candidates.retain(|&k| {
                    Some(k) != conn
                        && st.conn(k).is_some_and(|c| {
                            !c.ident.system
                                && c.ident.role.is_some_and(|r| r != Role::Viewer)
                                && c.ident
                                    .access
                                    .as_ref()
                                    .is_none_or(|a| a.may_read(tag) && a.may_write(tag))
                        })
                });
                let pick = (!candidates.is_empty())
                    .then(|| candidates[(st.next_rid % candidates.len() as u64) as usize]);
                st.scratch = candidates;
                // Nobody here: another hub of the cluster may have the owner.
                pick.or(st.cluster_conn.filter(|b| Some(*b) != conn))
            }
        };
        let Some(responder) = responder else {
            Metrics::inc(&self.metrics.requests_no_responder);
            let e = OpError::new(
                ErrorCode::NoResponder,
                format!("nobody owns or subscribes to `{tag}`"),
            );
            return refuse(&mut st, command, e);
        };
        if let Some(c) = conn.and_then(|c| st.conn_mut(c)) {
            c.pending_requests += 1;
        }
        st.next_rid += 1;
        let hub_rid = st.next_rid;
        let timeout = timeout
            .unwrap_or(Duration::from_millis(self.config().request_timeout_ms))
            .min(Duration::from_millis(self.config().max_request_timeout_ms));
        let deadline = Instant::now() + timeout;
        let earliest = st.deadlines.first().is_none_or(|(d, _)| deadline < *d);
        let cid: Option<Box<str>> = match &command {
            Some(c) => Some(c.cid.as_str().into()),
            None => cid.map(Box::from),
        };
        let command_id = command.as_ref().map(|c| c.id);
        if let Some(mut c) = command.take() {
            c.forwarded_ms = Some(now_ms());
            c.agent = Some(st.name_of(responder));
            if let Some(j) = &st.journal {
                j.record(Record::CommandStart(Box::new(c)));
            }
        }
        let mut buf = Vec::with_capacity(tag.len() + body.get().len() + 96);
        encode_req(&mut buf, tag, body, hub_rid, &from, cid.as_deref());
        st.pending.insert(
            hub_rid,
            Pending {
                requester,
                responder,
                deadline,
                cid,
                timeout,
                command: command_id,
            },
        );
        st.deadlines.insert((deadline, hub_rid));
        st.deliver_control(&self.metrics, responder, Bytes::from(buf));
        drop(st);
        if earliest {
            self.timers.notify_one();
        }
        Ok(())
    }

    /// Takes a request the hub answers itself (a journal question): counts
    /// it toward the connection's pending requests, like any other.
    pub fn begin_own_answer(&self, conn: ConnId) -> Result<(), OpError> {
        let mut st = self.lock("begin_own_answer");
        let Some(c) = st.conn_mut(conn) else {
            return Err(OpError::new(
                ErrorCode::Unavailable,
                "connection is closing",
            ));
        };
        if c.pending_requests >= self.config().max_pending_requests {
            return Err(OpError::new(
                ErrorCode::TooManyRequests,
                format!(
                    "this connection already waits for {} answers, its limit (`max_pending_requests`)",
                    c.pending_requests
                ),
            ));
        }
        if c.own_pending >= MAX_OWN_PENDING {
            return Err(OpError::new(
                ErrorCode::TooManyRequests,
                format!("this connection already waits for {MAX_OWN_PENDING} answers from the hub itself (journal questions, group commands); wait for them first"),
            ));
        }
        c.pending_requests += 1;
        c.own_pending += 1;
        Ok(())
    }

    /// Sends the answer to a request taken with [`Hub::begin_own_answer`].
    /// It is encoded before the lock is taken and counts against the
    /// connection's outbound bound, like any frame the hub sends.
    pub fn own_answer(
        &self,
        conn: ConnId,
        rid: Box<RawValue>,
        result: Result<Box<RawValue>, ErrorBody>,
    ) {
        let mut buf = Vec::with_capacity(64 + result.as_ref().map_or(0, |b| b.get().len()));
        match &result {
            Ok(body) => encode_rep(&mut buf, &rid, body),
            Err(e) => encode_request_err(&mut buf, &rid, e),
        }
        let frame = Bytes::from(buf);
        let mut st = self.lock("own_answer");
        let Some(c) = st.conn_mut(conn) else { return };
        c.pending_requests -= 1;
        c.own_pending -= 1;
        let st = &*st;
        if let Some(c) = st.conn(conn) {
            let pushed = c.outbox.push_control(frame);
            st.after_push(&self.metrics, c, pushed);
        }
    }

    /// Delivers a responder's reply (or error) to the requester.
    pub fn reply(
        &self,
        conn: ConnId,
        hub_rid: u64,
        result: Result<&RawValue, ErrorBody>,
    ) -> Result<(), OpError> {
        let mut st = self.lock_sampled("reply");
        match st.pending.get(&hub_rid) {
            Some(p) if p.responder == conn => {}
            _ if st.late.get(&hub_rid).is_some_and(|l| l.1 == conn) => {
                // Too late for the requester, not for the journal.
                if let (Some((id, _)), Some(j)) = (st.late.remove(&hub_rid), &st.journal) {
                    let outcome = match &result {
                        Ok(body) => Outcome::Confirmed(body.get().to_owned()),
                        Err(e) => Outcome::Failed(e.clone()),
                    };
                    j.record(Record::CommandLate {
                        id,
                        time_ms: now_ms(),
                        outcome,
                    });
                }
                return Ok(());
            }
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
        self.metrics
            .request_duration
            .record(Instant::now().saturating_duration_since(p.deadline - p.timeout));
        Metrics::inc(match &result {
            Ok(_) => &self.metrics.requests_ok,
            Err(_) => &self.metrics.requests_error,
        });
        if let (Some(j), Some(id)) = (&st.journal, p.command) {
            let outcome = match &result {
                Ok(body) => Outcome::Confirmed(body.get().to_owned()),
                Err(e) => Outcome::Failed(e.clone()),
            };
            j.record(Record::CommandEnd {
                id,
                time_ms: now_ms(),
                outcome,
            });
        }
        st.answer(p.requester, result);
        Ok(())
    }

    /// Fails requests past their deadline; returns the next deadline.
    pub fn expire_requests(&self, now: Instant) -> Option<Instant> {
        let mut st = self.lock("expire_requests");
        while let Some(&(deadline, rid)) = st.deadlines.first() {
            if deadline > now {
                return Some(deadline);
            }
            st.deadlines.pop_first();
            if let Some(p) = st.pending.remove(&rid) {
                let cid = match &p.cid {
                    Some(c) => format!("; its correlation id is `{c}`"),
                    None => String::new(),
                };
                let why = format!(
                    "`{}` did not answer within {} ms; the outcome is unknown: the request may still be carried out{cid}",
                    st.name_of(p.responder),
                    p.timeout.as_millis()
                );
                st.fail_request(&self.metrics, rid, p, ErrorCode::Timeout, &why);
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
    /// claim's last will and keeping the prefix reserved for `claim_grace_ms`),
    /// and the requests it was serving (their requesters get `unavailable`).
    pub fn disconnect(&self, conn: ConnId) {
        let mut st = self.lock("disconnect");
        st.authenticated(conn);
        let Some(c) = st
            .conns
            .get_mut(slot(conn))
            .and_then(|s| s.take_if(|c| c.id == conn))
        else {
            return;
        };
        st.free.push(slot(conn) as u32);
        if c.counted {
            st.live -= 1;
        }
        if st.cluster_conn == Some(conn) {
            st.cluster_conn = None;
        }
        if !c.claims.is_empty() {
            if let Some(cl) = self.cluster.get() {
                cl.claims_changed();
            }
        }
        for p in &c.patterns {
            st.router.remove(p, conn);
        }
        let served: Vec<u64> = st
            .pending
            .iter()
            .filter(|(_, p)| p.responder == conn)
            .map(|(rid, _)| *rid)
            .collect();
        for rid in served {
            if let Some(p) = st.pending.remove(&rid) {
                st.deadlines.remove(&(p.deadline, rid));
                let why = format!("`{}` disconnected before replying", c.ident.name);
                st.fail_request(&self.metrics, rid, p, ErrorCode::Unavailable, &why);
            }
        }
        let now = Instant::now();
        let grace = Duration::from_millis(self.config().claim_grace_ms);
        let since = now_ms();
        let who = (!c.claims.is_empty() && st.journal.is_some()).then(|| c.who());
        for prefix in &c.claims {
            st.claims
                .release(prefix, conn, &c.ident.principal, now, grace);
            if let Some(who) = &who {
                st.audit(
                    "release",
                    who.clone(),
                    prefix.clone(),
                    "the connection closed".into(),
                );
            }
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

    /// Number of authenticated connections.
    pub fn connection_count(&self) -> usize {
        self.lock("connection_count").live
    }

    /// Number of connections waiting to authenticate.
    pub fn unauthenticated_count(&self) -> usize {
        self.lock("unauthenticated_count").unauth.len()
    }

    /// Number of retained tags.
    pub fn retained_count(&self) -> usize {
        self.lock("retained_count").store.count()
    }

    /// Device counts, kept as values change.
    pub fn device_counts(&self) -> DeviceCounts {
        self.lock("device_counts").devices
    }

    /// The retained value of `tag`, if any.
    pub fn retained(&self, tag: &str) -> Option<Retained> {
        self.lock("retained").store.get(tag).cloned()
    }

    /// The segments directly below `prefix`, each with its children's retained values.
    pub fn retained_children(&self, prefix: &str) -> Vec<(String, Vec<(String, Retained)>)> {
        let st = self.lock("retained_children");
        st.store
            .children_after(prefix, None, usize::MAX)
            .into_iter()
            .map(|(k, parts)| {
                let parts = parts
                    .into_iter()
                    .map(|(p, r)| (p.to_owned(), r.clone()))
                    .collect();
                (k.to_owned(), parts)
            })
            .collect()
    }

    /// One device's retained values, by three direct lookups.
    pub fn device(&self, id: &str) -> DeviceRecord {
        let st = self.lock("device");
        let get = |part: &str| st.store.get(&format!("dev/{id}/{part}")).cloned();
        DeviceRecord {
            id: id.to_owned(),
            meta: get("meta"),
            state: get("state"),
            online: get("online"),
        }
    }

    /// Up to [`DEVICE_PAGE`] devices in id order after `after`, read from the
    /// `dev/<id>` branch of the store in one short lock hold. The last id of a
    /// page is where the next begins; a page shorter than [`DEVICE_PAGE`] is the last.
    pub fn devices_page(&self, after: Option<&str>) -> Vec<DeviceRecord> {
        let st = self.lock("devices_page");
        st.store
            .children_after("dev", after, DEVICE_PAGE)
            .into_iter()
            .map(|(id, parts)| {
                let mut rec = DeviceRecord {
                    id: id.to_owned(),
                    meta: None,
                    state: None,
                    online: None,
                };
                for (part, r) in parts {
                    match part {
                        "meta" => rec.meta = Some(r.clone()),
                        "state" => rec.state = Some(r.clone()),
                        "online" => rec.online = Some(r.clone()),
                        _ => {}
                    }
                }
                rec
            })
            .collect()
    }

    /// The live connections.
    pub fn connections(&self) -> Vec<ConnInfo> {
        self.lock("connections")
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

    /// Entries and bytes queued for `conn`, for tests and diagnostics.
    pub fn outbox_usage(&self, conn: ConnId) -> Option<(usize, usize)> {
        let st = self.lock("outbox_usage");
        let c = st.conn(conn)?;
        Some((c.outbox.queued_entries(), c.outbox.queued_bytes()))
    }
}

/// The first request number of this hub instance: a thousand per
/// millisecond since the epoch, so an agent's answer to a request from a
/// previous instance (it answers after reconnecting) cannot match a new
/// request by number; it stays below 2^53, exact in every JSON reader.
fn first_rid() -> u64 {
    now_ms().saturating_mul(1000)
}

/// 64 random bits as hex, from the standard library's per-process hash keys
/// mixed with the time and the process id.
pub fn new_instance_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    format!("{:016x}", h.finish())
}
