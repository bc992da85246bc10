//! The async client: what agents, the CLI and integrators use to talk to a hub.
//!
//! [`ClientBuilder::connect`] returns a cloneable [`Client`]. Publishing
//! encodes straight into the connection's write buffer, which one writer task
//! sends in batches; [`Client::flush`] waits until everything before it has
//! reached the hub. Each [`Subscription`] has its own bounded queue (see
//! `queue.rs` for what happens when its reader falls behind), requests routed
//! to this client arrive on [`Requests`], and replies to this client's own
//! calls never wait behind either. The connection stays open while any
//! `Client`, `Subscription` or `Requests` handle lives, and, unless disabled,
//! is re-established with backoff after it drops, re-subscribing everything.
//!
//! ```no_run
//! # async fn run() -> Result<(), patchbay_client::Error> {
//! use patchbay_client::ClientBuilder;
//!
//! let client = ClientBuilder::new("127.0.0.1:7400").name("example").connect().await?;
//! let mut states = client.subscribe_with_snapshot(["dev/+/state"]).await?;
//! client.publish_json("room/1/scene", &"presentation").await?;
//! while let Some(m) = states.next().await {
//!     let state: serde_json::Value = m.json()?;
//!     println!("{} {state}", m.tag());
//! }
//! # Ok(()) }
//! ```

mod conn;
mod message;
mod queue;
mod subscription;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use serde_json::value::RawValue;
use thiserror::Error;
use tokio::sync::{broadcast, mpsc, oneshot, watch, Notify};

pub use message::{Message, Reply};
pub use subscription::{Request, Requests, Subscription};

use crate::protocol::{ClientOut, ErrorBody};
use crate::trie::PatternTrie;
use queue::Queue;

/// What can go wrong talking to a hub.
#[derive(Debug, Error)]
pub enum Error {
    /// Connecting failed.
    #[error("cannot reach hub at {addr}: {source}")]
    Connect {
        /// The hub address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// TLS could not be set up: a handshake that failed (an untrusted
    /// certificate, a name it does not hold, a hub that does not speak TLS).
    #[error("TLS: {0}")]
    Tls(String),
    /// The hub refused the operation (or the request failed); `code` says why.
    #[error("{0}")]
    Hub(ErrorBody),
    /// The connection is closed (or was lost before an answer arrived).
    #[error("the connection to the hub is closed")]
    Disconnected,
    /// No answer within the client's own deadline.
    #[error("no answer from the hub within {0:?}")]
    Timeout(Duration),
    /// A body that is not valid JSON.
    #[error("invalid JSON body: {0}")]
    InvalidBody(#[from] serde_json::Error),
    /// The hub sent something this client does not understand.
    #[error("unexpected answer from the hub: {0}")]
    Protocol(String),
}

impl Error {
    /// The hub's (or the responder's) error code, when there is one.
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Hub(e) => Some(&e.code),
            _ => None,
        }
    }
}

/// A JSON body, encoded once and shared by every send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Body(Bytes);

impl Body {
    /// Serializes `value`.
    pub fn json<T: Serialize + ?Sized>(value: &T) -> Result<Self, Error> {
        Ok(Body(Bytes::from(serde_json::to_vec(value)?)))
    }

    /// Checks that `bytes` are one JSON value, and keeps them as they are.
    pub fn from_json_bytes(bytes: impl Into<Bytes>) -> Result<Self, Error> {
        let bytes = bytes.into();
        serde_json::from_slice::<&RawValue>(&bytes)?;
        Ok(Body(bytes))
    }

    /// The encoded JSON.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl From<&RawValue> for Body {
    fn from(raw: &RawValue) -> Self {
        Body(Bytes::copy_from_slice(raw.get().as_bytes()))
    }
}

impl From<Box<RawValue>> for Body {
    fn from(raw: Box<RawValue>) -> Self {
        Body(Bytes::from(String::from(raw.get())))
    }
}

impl From<&serde_json::Value> for Body {
    fn from(v: &serde_json::Value) -> Self {
        Body(Bytes::from(v.to_string()))
    }
}

impl From<serde_json::Value> for Body {
    fn from(v: serde_json::Value) -> Self {
        Body::from(&v)
    }
}

/// Options of one publish.
#[derive(Debug, Clone, Default)]
pub struct PublishOptions<'a> {
    /// Keep it as the tag's latest value for late joiners.
    pub retain: bool,
    /// A correlation id carried along unchanged.
    pub cid: Option<&'a str>,
}

/// Options of one request.
#[derive(Debug, Clone, Default)]
pub struct RequestOptions<'a> {
    /// How long to wait for the answer (default: the builder's `request_timeout`).
    pub timeout: Option<Duration>,
    /// A correlation id carried along unchanged.
    pub cid: Option<&'a str>,
    /// Whom the request is sent for (`for`: a JSON object with `token`,
    /// `role`, `client`, `peer`, `transport`), recorded in the hub's journal
    /// instead of this connection. Only the hub's own automation may use it;
    /// anyone else gets `forbidden`.
    pub on_behalf: Option<&'a RawValue>,
}

/// What the hub said when the client introduced itself.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Welcome {
    /// The hub's id for this connection.
    pub client: u64,
    /// The name the hub shows as `from`.
    pub name: String,
    /// The role granted.
    pub role: String,
    /// The hub process's id, new at every start: a change means the hub restarted.
    pub instance: String,
}

/// Where the connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Connected and introduced.
    Connected,
    /// Lost; reconnecting with backoff.
    Reconnecting,
    /// Closed for good.
    Closed,
}

/// Things worth knowing that belong to no call.
#[derive(Debug, Clone)]
pub enum ClientEvent {
    /// An error the hub sent without an id: a refused fire-and-forget
    /// publish, or why it is closing the connection.
    HubError(ErrorBody),
    /// A subscription's reader fell behind and messages were dropped.
    SlowConsumer {
        /// The subscription's patterns.
        patterns: Vec<Box<str>>,
        /// Messages dropped this time.
        dropped: u64,
    },
    /// A frame this client could not read (skipped).
    BadFrame(String),
    /// The connection dropped.
    Disconnected(String),
    /// The connection is back; subscriptions were renewed. Claims must be made again.
    Reconnected(Welcome),
}

/// Reconnection with exponential backoff and full jitter.
#[derive(Debug, Clone, Copy)]
pub struct Reconnect {
    /// First wait.
    pub min: Duration,
    /// Longest wait.
    pub max: Duration,
}

/// How to connect; every option has a default.
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    pub(crate) addr: String,
    pub(crate) name: String,
    pub(crate) token: Option<String>,
    pub(crate) subscription_capacity: usize,
    pub(crate) request_capacity: usize,
    pub(crate) write_buffer: usize,
    pub(crate) request_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) max_frame_bytes: usize,
    pub(crate) reconnect: Option<Reconnect>,
    pub(crate) tls: Option<std::sync::Arc<crate::tls::ClientConfig>>,
    pub(crate) tls_server_name: Option<String>,
    /// Which of several addresses to try first.
    pub(crate) next_addr: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl ClientBuilder {
    /// A client for the hub at `addr` (`host:port`), or for the first of
    /// several (`a:7400,b:7400`, hubs of one cluster) that answers; when its
    /// hub is lost it reconnects to the next that does.
    pub fn new(addr: impl Into<String>) -> Self {
        ClientBuilder {
            addr: addr.into(),
            name: String::new(),
            token: None,
            subscription_capacity: 65_536,
            request_capacity: 1024,
            write_buffer: 8 * 1024 * 1024,
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            max_frame_bytes: 16 * 1024 * 1024,
            reconnect: Some(Reconnect {
                min: Duration::from_millis(100),
                max: Duration::from_secs(10),
            }),
            tls: None,
            tls_server_name: None,
            next_addr: Default::default(),
        }
    }

    /// The name shown as `from` on what this client publishes.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The token, when the hub requires one.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Messages each subscription buffers before its overflow policy applies (default 65,536).
    pub fn subscription_capacity(mut self, n: usize) -> Self {
        self.subscription_capacity = n;
        self
    }

    /// Incoming requests buffered before more are refused with `busy` (default 1,024).
    pub fn request_capacity(mut self, n: usize) -> Self {
        self.request_capacity = n;
        self
    }

    /// Bytes of unsent frames before publishing waits for the socket (default 8 MiB).
    pub fn write_buffer_bytes(mut self, n: usize) -> Self {
        self.write_buffer = n;
        self
    }

    /// How long calls wait for the hub by default (default 10 s).
    pub fn request_timeout(mut self, d: Duration) -> Self {
        self.request_timeout = d;
        self
    }

    /// How long connecting and introducing may take (default 10 s).
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// Longest line accepted from the hub (default 16 MiB).
    pub fn max_frame_bytes(mut self, n: usize) -> Self {
        self.max_frame_bytes = n;
        self
    }

    /// Reconnect after the connection drops, waiting between `min` and
    /// `max` (default 100 ms to 10 s).
    pub fn reconnect(mut self, min: Duration, max: Duration) -> Self {
        self.reconnect = Some(Reconnect { min, max });
        self
    }

    /// Do not reconnect: once the connection drops, calls fail with
    /// [`Error::Disconnected`] and subscriptions end.
    pub fn no_reconnect(mut self) -> Self {
        self.reconnect = None;
        self
    }

    /// Connects over TLS with `config` (see [`crate::tls::TlsOptions`]);
    /// the hub's certificate is checked against the host of the address.
    pub fn tls(mut self, config: std::sync::Arc<crate::tls::ClientConfig>) -> Self {
        self.tls = Some(config);
        self
    }

    /// The name the hub's certificate must hold, when it differs from the
    /// host of the address (connecting by IP address to a hub whose
    /// certificate names its DNS name).
    pub fn tls_server_name(mut self, name: impl Into<String>) -> Self {
        self.tls_server_name = Some(name.into());
        self
    }

    /// Connects, says `hello` and waits for `welcome`. A first connection
    /// that fails is an error, not retried.
    pub async fn connect(self) -> Result<Client, Error> {
        conn::start(self).await
    }
}

/// Connects to the hub at `addr` with default options.
pub async fn connect(addr: &str) -> Result<Client, Error> {
    ClientBuilder::new(addr).connect().await
}

/// How a call is answered.
pub(crate) enum Answer {
    Ok(Option<u64>),
    Rep(Bytes),
    Err(ErrorBody),
}

/// A subscription as the connection sees it.
pub(crate) struct SubEntry {
    pub patterns: Vec<Box<str>>,
    pub snapshot: bool,
    pub queue: Arc<Queue>,
}

/// Subscriptions by id, and which patterns lead where.
#[derive(Default)]
pub(crate) struct Subs {
    pub trie: PatternTrie<u64>,
    pub by_id: HashMap<u64, SubEntry>,
}

/// The write buffer the writer task drains.
pub(crate) struct Outgoing {
    pub buf: Vec<u8>,
    /// False while disconnected: sends fail at once.
    pub open: bool,
}

/// Everything the handles and the connection task share.
pub(crate) struct Shared {
    pub opts: ClientBuilder,
    pub out: Mutex<Outgoing>,
    /// Something was written to `out`.
    pub wake: Notify,
    /// The writer took `out`'s contents (room again for publishers).
    pub drained: Notify,
    pub calls: Mutex<HashMap<u64, oneshot::Sender<Answer>>>,
    pub subs: Mutex<Subs>,
    /// Requests routed to this client; when full, the reader answers `busy`.
    pub requests_tx: mpsc::Sender<Request>,
    pub requests_rx: Arc<tokio::sync::Mutex<mpsc::Receiver<Request>>>,
    pub events: broadcast::Sender<ClientEvent>,
    pub status: watch::Sender<Status>,
    pub welcome: Mutex<Welcome>,
    pub next_id: AtomicU64,
    /// Turns true when the last handle is dropped.
    pub closing: watch::Sender<bool>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Appends a frame to the write buffer, waiting while it is over its bound.
    pub(crate) async fn send(&self, encode: impl Fn(&mut Vec<u8>)) -> Result<(), Error> {
        loop {
            let drained = self.drained.notified();
            {
                let mut out = lock(&self.out);
                if !out.open {
                    return Err(Error::Disconnected);
                }
                if out.buf.len() < self.opts.write_buffer {
                    let was_empty = out.buf.is_empty();
                    encode(&mut out.buf);
                    drop(out);
                    if was_empty {
                        self.wake.notify_one();
                    }
                    return Ok(());
                }
            }
            drained.await;
        }
    }

    /// Appends a frame without waiting (answers to the hub's pings).
    pub(crate) fn send_now(&self, frame: &[u8]) {
        let mut out = lock(&self.out);
        if out.open {
            let was_empty = out.buf.is_empty();
            out.buf.extend_from_slice(frame);
            drop(out);
            if was_empty {
                self.wake.notify_one();
            }
        }
    }

    /// Sends a frame with id `id` and waits for its answer.
    pub(crate) async fn call(
        &self,
        id: u64,
        wait: Duration,
        encode: impl Fn(&mut Vec<u8>),
    ) -> Result<Answer, Error> {
        let (tx, rx) = oneshot::channel();
        lock(&self.calls).insert(id, tx);
        if let Err(e) = self.send(encode).await {
            lock(&self.calls).remove(&id);
            return Err(e);
        }
        match tokio::time::timeout(wait, rx).await {
            Err(_) => {
                lock(&self.calls).remove(&id);
                Err(Error::Timeout(wait))
            }
            Ok(Err(_)) => Err(Error::Disconnected),
            Ok(Ok(Answer::Err(e))) => Err(Error::Hub(e)),
            Ok(Ok(a)) => Ok(a),
        }
    }

    /// Completes the call `id`; false if none waits.
    pub(crate) fn answer(&self, id: u64, a: Answer) -> bool {
        match lock(&self.calls).remove(&id) {
            Some(tx) => {
                let _ = tx.send(a);
                true
            }
            None => false,
        }
    }

    pub(crate) fn event(&self, e: ClientEvent) {
        let _ = self.events.send(e);
    }
}

/// Keeps the connection open while it lives; the last one closes it.
pub(crate) struct Handle(pub Arc<Shared>);

impl Drop for Handle {
    fn drop(&mut self) {
        let _ = self.0.closing.send(true);
    }
}

/// A connection to a hub; clones share it.
#[derive(Clone)]
pub struct Client {
    handle: Arc<Handle>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("hub", &self.shared().opts.addr)
            .field("status", &self.status())
            .finish()
    }
}

impl Client {
    fn shared(&self) -> &Shared {
        &self.handle.0
    }

    /// What the hub said in `welcome` (the latest, after a reconnect).
    pub fn welcome(&self) -> Welcome {
        lock(&self.shared().welcome).clone()
    }

    /// Where the connection stands.
    pub fn status(&self) -> Status {
        *self.shared().status.borrow()
    }

    /// Follows the connection's status.
    pub fn status_changes(&self) -> watch::Receiver<Status> {
        self.shared().status.subscribe()
    }

    /// Events that belong to no call (errors for fire-and-forget publishes,
    /// slow subscriptions, reconnects).
    pub fn events(&self) -> broadcast::Receiver<ClientEvent> {
        self.shared().events.subscribe()
    }

    /// Publishes without waiting for the hub: returns once the frame is in
    /// the write buffer. A refusal arrives as [`ClientEvent::HubError`]; use
    /// [`Client::publish_acked`] to get it from the call.
    pub async fn publish(&self, tag: &str, body: &Body) -> Result<(), Error> {
        self.publish_with(tag, body, PublishOptions::default())
            .await
    }

    /// [`Client::publish`] with options.
    pub async fn publish_with(
        &self,
        tag: &str,
        body: &Body,
        opts: PublishOptions<'_>,
    ) -> Result<(), Error> {
        self.shared()
            .send(|buf| message::encode_pub(buf, None, tag, body, opts.retain, opts.cid))
            .await
    }

    /// Serializes `value` and publishes it.
    pub async fn publish_json<T: Serialize + ?Sized>(
        &self,
        tag: &str,
        value: &T,
    ) -> Result<(), Error> {
        self.publish(tag, &Body::json(value)?).await
    }

    /// Publishes and waits for the hub to accept it; returns its seq, or the
    /// hub's error for this publish.
    pub async fn publish_acked(
        &self,
        tag: &str,
        body: &Body,
        opts: PublishOptions<'_>,
    ) -> Result<u64, Error> {
        let s = self.shared();
        let id = s.next_id();
        let answer = s
            .call(id, s.opts.request_timeout, |buf| {
                message::encode_pub(buf, Some(id), tag, body, opts.retain, opts.cid)
            })
            .await?;
        match answer {
            Answer::Ok(Some(seq)) => Ok(seq),
            _ => Err(Error::Protocol("`ok` for `pub` without `seq`".into())),
        }
    }

    /// Waits until everything sent before has reached the hub and been
    /// handled (a `ping` round trip behind it).
    pub async fn flush(&self) -> Result<(), Error> {
        self.ping().await.map(drop)
    }

    /// Round-trips a `ping`; returns how long it took.
    pub async fn ping(&self) -> Result<Duration, Error> {
        let s = self.shared();
        let id = s.next_id();
        let t = tokio::time::Instant::now();
        s.call(id, s.opts.request_timeout, |buf| {
            ClientOut::Ping { id }.encode(buf)
        })
        .await?;
        Ok(t.elapsed())
    }

    /// Subscribes to `patterns`: live messages only.
    pub async fn subscribe<P: AsRef<str>>(
        &self,
        patterns: impl IntoIterator<Item = P>,
    ) -> Result<Subscription, Error> {
        self.subscribe_inner(patterns, false).await
    }

    /// Subscribes to `patterns`, first receiving the retained values that
    /// match (each [`Message::is_snapshot`]); [`Subscription::snapshot`]
    /// collects them.
    pub async fn subscribe_with_snapshot<P: AsRef<str>>(
        &self,
        patterns: impl IntoIterator<Item = P>,
    ) -> Result<Subscription, Error> {
        self.subscribe_inner(patterns, true).await
    }

    async fn subscribe_inner<P: AsRef<str>>(
        &self,
        patterns: impl IntoIterator<Item = P>,
        snapshot: bool,
    ) -> Result<Subscription, Error> {
        let patterns: Vec<Box<str>> = patterns.into_iter().map(|p| p.as_ref().into()).collect();
        for p in &patterns {
            crate::tag::validate_pattern(p)
                .map_err(|e| Error::Hub(ErrorBody::new("bad_tag", e.to_string())))?;
        }
        let s = self.shared();
        let id = s.next_id();
        let queue = Arc::new(Queue::new(s.opts.subscription_capacity));
        {
            let mut subs = lock(&s.subs);
            for p in &patterns {
                subs.trie.insert(p, id);
            }
            subs.by_id.insert(
                id,
                SubEntry {
                    patterns: patterns.clone(),
                    snapshot,
                    queue: queue.clone(),
                },
            );
        }
        let sub = Subscription::new(id, patterns, queue, self.handle.clone(), snapshot);
        let answer = s
            .call(id, s.opts.request_timeout, |buf| {
                ClientOut::Sub {
                    id,
                    tags: &sub.patterns,
                    snapshot,
                }
                .encode(buf)
            })
            .await;
        match answer {
            // Without snapshot: `ok`. With: the hub's `snapshot` frame, which opens it.
            Ok(_) => Ok(sub),
            Err(e) => Err(e),
        }
    }

    /// Claims exclusive ownership of a tag subtree (agents).
    pub async fn claim(&self, prefix: &str) -> Result<(), Error> {
        let s = self.shared();
        let id = s.next_id();
        s.call(id, s.opts.request_timeout, |buf| {
            ClientOut::Claim { id, prefix }.encode(buf)
        })
        .await
        .map(drop)
    }

    /// Sends a request to whoever answers for `tag` and waits for the reply.
    pub async fn request(&self, tag: &str, body: &Body) -> Result<Reply, Error> {
        self.request_with(tag, body, RequestOptions::default())
            .await
    }

    /// Serializes `value`, sends it as a request and deserializes the reply.
    pub async fn request_json<T: Serialize + ?Sized, R: serde::de::DeserializeOwned>(
        &self,
        tag: &str,
        value: &T,
    ) -> Result<R, Error> {
        Ok(self.request(tag, &Body::json(value)?).await?.json()?)
    }

    /// [`Client::request`] with a timeout and correlation id.
    pub async fn request_with(
        &self,
        tag: &str,
        body: &Body,
        opts: RequestOptions<'_>,
    ) -> Result<Reply, Error> {
        let s = self.shared();
        let rid = s.next_id();
        let timeout = opts.timeout.unwrap_or(s.opts.request_timeout);
        // The hub answers at the timeout itself; the grace covers a hub that cannot.
        let answer = s
            .call(rid, timeout + Duration::from_secs(2), |buf| {
                message::encode_req(buf, rid, tag, body, timeout, opts.cid, opts.on_behalf)
            })
            .await?;
        match answer {
            Answer::Rep(body) => Ok(Reply { body }),
            _ => Err(Error::Protocol("expected `rep`".into())),
        }
    }

    /// The requests the hub routes to this client (as owner of a claim, or as
    /// a subscriber of the tag). Every `Requests` handle of a connection
    /// takes from the same queue.
    pub fn requests(&self) -> Requests {
        Requests::new(self.handle.clone())
    }
}
