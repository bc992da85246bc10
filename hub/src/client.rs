//! The async client: what agents, the CLI and tests use to talk to a hub.
//!
//! [`connect`] returns a cloneable [`Client`] for sending and an [`Events`]
//! stream of what the hub pushes (messages, requests to answer, connection
//! errors). A background task reads; another batches writes. Nothing here
//! reconnects by itself: callers that need that (agents) loop around
//! [`connect`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use thiserror::Error;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use crate::protocol::{ClientOut, ErrorBody, ServerFrame};

/// What can go wrong talking to a hub.
#[derive(Debug, Error)]
pub enum ClientError {
    /// Connecting or writing failed.
    #[error("cannot reach hub at {addr}: {source}")]
    Connect {
        /// The hub address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// The hub refused the operation (or the request failed); `code` says why.
    #[error("{0}")]
    Hub(ErrorBody),
    /// The connection closed before an answer arrived.
    #[error("connection to the hub closed")]
    Disconnected,
    /// No answer within the client's own deadline.
    #[error("no answer from the hub within {0:?}")]
    Timeout(Duration),
    /// The hub sent something this client does not understand.
    #[error("unexpected answer from the hub: {0}")]
    Protocol(String),
}

impl ClientError {
    /// The hub's error code, when the hub answered with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Hub(e) => Some(&e.code),
            _ => None,
        }
    }
}

/// How to introduce this client.
#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    /// Name shown as `from` on what this client publishes.
    pub name: String,
    /// Token, when the hub requires one.
    pub token: Option<String>,
}

/// A routed message.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// Concrete tag.
    pub tag: String,
    /// Body.
    pub body: Value,
    /// Publisher name.
    pub from: String,
    /// Hub-wide sequence number.
    pub seq: u64,
    /// True for retained tags.
    pub retained: bool,
    /// Correlation id.
    pub cid: Option<String>,
}

/// A request this client must answer with [`Client::reply`].
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// Concrete tag.
    pub tag: String,
    /// Body.
    pub body: Value,
    /// The hub's request id, to pass to [`Client::reply`].
    pub rid: u64,
    /// Requester name.
    pub from: String,
    /// Correlation id.
    pub cid: Option<String>,
}

/// Something the hub pushed.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A message on a subscribed tag.
    Message(Message),
    /// A request to answer.
    Request(Request),
    /// An error not tied to a frame id (for example a refused fire-and-forget publish, or why the hub is closing the connection).
    Error(ErrorBody),
}

/// What the hub said when the client introduced itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    /// Connection id.
    pub client: u64,
    /// Name.
    pub name: String,
    /// Role granted.
    pub role: String,
}

enum Answer {
    Ok(Option<u64>),
    Rep(Value),
    Err(ErrorBody),
}

/// Calls waiting for an answer; `closed` once the connection is gone, so a
/// call made after that fails at once instead of waiting for its timeout.
#[derive(Default)]
struct Pending {
    waiting: HashMap<u64, oneshot::Sender<Answer>>,
    closed: bool,
}

struct Shared {
    pending: Mutex<Pending>,
    next: AtomicU64,
}

impl Shared {
    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A handle for sending to the hub; clones share one connection.
#[derive(Clone)]
pub struct Client {
    out: mpsc::Sender<Vec<u8>>,
    shared: Arc<Shared>,
    welcome: Arc<Welcome>,
}

/// The stream of what the hub pushes; ends when the connection closes.
pub struct Events {
    rx: mpsc::Receiver<Event>,
    /// Events read ahead by [`Events::snapshot`] that belong to the live stream.
    ahead: std::collections::VecDeque<Event>,
}

impl Events {
    /// The next event, or `None` once the connection has closed.
    pub async fn next(&mut self) -> Option<Event> {
        match self.ahead.pop_front() {
            Some(e) => Some(e),
            None => self.rx.recv().await,
        }
    }

    /// Subscribes with a snapshot and returns the retained messages that
    /// matched, draining events meanwhile so a large snapshot cannot fill the
    /// queue. Later events stay in the stream.
    pub async fn snapshot(
        &mut self,
        client: &Client,
        patterns: &[String],
    ) -> Result<Vec<Message>, ClientError> {
        let sub = client.subscribe(patterns, true);
        tokio::pin!(sub);
        let mut seen = Vec::new();
        let end = loop {
            tokio::select! {
                r = &mut sub => break r?.unwrap_or(u64::MAX),
                ev = self.rx.recv() => match ev {
                    Some(e) => seen.push(e),
                    None => return Err(ClientError::Disconnected),
                },
            }
        };
        while let Ok(e) = self.rx.try_recv() {
            seen.push(e);
        }
        let mut snapshot = Vec::new();
        for e in seen {
            match e {
                Event::Message(m) if m.seq <= end => snapshot.push(m),
                other => self.ahead.push_back(other),
            }
        }
        Ok(snapshot)
    }
}

/// Queue depth between the reader task and [`Events`]; a full queue stops reading, so the hub sees a slow consumer rather than this process growing.
const EVENT_QUEUE: usize = 4096;
/// Frames queued for the writer task.
const OUT_QUEUE: usize = 4096;

/// Extra time the client waits past a request's own timeout before giving up on the hub.
const HUB_GRACE: Duration = Duration::from_secs(2);

/// Connects, says `hello`, and waits for `welcome`.
pub async fn connect(addr: &str, opts: &ClientOptions) -> Result<(Client, Events), ClientError> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|source| ClientError::Connect {
            addr: addr.to_owned(),
            source,
        })?;
    // Connecting to a free port in the ephemeral range can connect the socket to itself.
    if stream.local_addr().ok() == stream.peer_addr().ok() {
        return Err(ClientError::Connect {
            addr: addr.to_owned(),
            source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        });
    }
    let _ = stream.set_nodelay(true);
    let (rd, wr) = stream.into_split();
    let (out_tx, out_rx) = mpsc::channel(OUT_QUEUE);
    let (ev_tx, ev_rx) = mpsc::channel(EVENT_QUEUE);
    let shared = Arc::new(Shared {
        pending: Mutex::new(Pending::default()),
        next: AtomicU64::new(1),
    });
    tokio::spawn(write_loop(wr, out_rx));
    let (welcome_tx, welcome_rx) = oneshot::channel();
    // The reader holds only a weak sender: dropping every `Client` closes the connection.
    tokio::spawn(read_loop(
        rd,
        shared.clone(),
        out_tx.downgrade(),
        ev_tx,
        welcome_tx,
    ));
    let mut hello = Vec::new();
    ClientOut::Hello {
        id: 0,
        name: &opts.name,
        token: opts.token.as_deref(),
    }
    .encode(&mut hello);
    out_tx
        .send(hello)
        .await
        .map_err(|_| ClientError::Disconnected)?;
    let welcome = match tokio::time::timeout(Duration::from_secs(10), welcome_rx).await {
        Err(_) => return Err(ClientError::Timeout(Duration::from_secs(10))),
        Ok(Err(_)) => return Err(ClientError::Disconnected),
        Ok(Ok(Err(e))) => return Err(ClientError::Hub(e)),
        Ok(Ok(Ok(w))) => w,
    };
    Ok((
        Client {
            out: out_tx,
            shared,
            welcome: Arc::new(welcome),
        },
        Events {
            rx: ev_rx,
            ahead: Default::default(),
        },
    ))
}

async fn write_loop(mut wr: tokio::net::tcp::OwnedWriteHalf, mut rx: mpsc::Receiver<Vec<u8>>) {
    let mut batch = Vec::new();
    while let Some(first) = rx.recv().await {
        batch.extend_from_slice(&first);
        while batch.len() < 64 * 1024 {
            match rx.try_recv() {
                Ok(more) => batch.extend_from_slice(&more),
                Err(_) => break,
            }
        }
        if wr.write_all(&batch).await.is_err() {
            return;
        }
        batch.clear();
    }
    let _ = wr.shutdown().await;
}

async fn read_loop(
    rd: tokio::net::tcp::OwnedReadHalf,
    shared: Arc<Shared>,
    out: mpsc::WeakSender<Vec<u8>>,
    events: mpsc::Sender<Event>,
    welcome: oneshot::Sender<Result<Welcome, ErrorBody>>,
) {
    let mut welcome = Some(welcome);
    let mut lines = BufReader::with_capacity(64 * 1024, rd).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let frame: ServerFrame = match serde_json::from_str(&line) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!("unreadable frame from hub: {e}");
                continue;
            }
        };
        let event = match frame {
            ServerFrame::Welcome {
                client, name, role, ..
            } => {
                if let Some(w) = welcome.take() {
                    let _ = w.send(Ok(Welcome { client, name, role }));
                }
                continue;
            }
            ServerFrame::Msg {
                tag,
                body,
                from,
                seq,
                retained,
                cid,
            } => Event::Message(Message {
                tag,
                body,
                from,
                seq,
                retained,
                cid,
            }),
            ServerFrame::Req {
                tag,
                body,
                rid,
                from,
                cid,
            } => Event::Request(Request {
                tag,
                body,
                rid,
                from,
                cid,
            }),
            ServerFrame::Rep { rid, body } => {
                answer(&shared, &rid, Answer::Rep(body));
                continue;
            }
            ServerFrame::Ok { id, seq } => {
                answer(&shared, &id.unwrap_or_default(), Answer::Ok(seq));
                continue;
            }
            ServerFrame::Err {
                id,
                rid,
                code,
                message,
            } => {
                let body = ErrorBody { code, message };
                match (id.or(rid), welcome.take()) {
                    (_, Some(w)) => {
                        let _ = w.send(Err(body));
                        continue;
                    }
                    (Some(key), None) => {
                        if answer(&shared, &key, Answer::Err(body.clone())) {
                            continue;
                        }
                        Event::Error(body)
                    }
                    (None, None) => Event::Error(body),
                }
            }
            ServerFrame::Ping => {
                let mut buf = Vec::new();
                ClientOut::Pong.encode(&mut buf);
                if let Some(out) = out.upgrade() {
                    let _ = out.try_send(buf);
                }
                continue;
            }
            ServerFrame::Pong { id } => {
                answer(&shared, &id.unwrap_or_default(), Answer::Ok(None));
                continue;
            }
        };
        if events.send(event).await.is_err() {
            // Nobody listens for events; keep serving answers to pending calls.
            continue;
        }
    }
    let mut pending = shared.pending();
    pending.closed = true;
    pending.waiting.clear();
}

/// Completes the pending call keyed by `key`; false if none was waiting.
fn answer(shared: &Shared, key: &Value, a: Answer) -> bool {
    let Some(key) = key.as_u64() else {
        return false;
    };
    let waiter = shared.pending().waiting.remove(&key);
    match waiter {
        Some(tx) => {
            let _ = tx.send(a);
            true
        }
        None => false,
    }
}

impl Client {
    /// What the hub said in `welcome`.
    pub fn welcome(&self) -> &Welcome {
        &self.welcome
    }

    fn next_id(&self) -> u64 {
        self.shared.next.fetch_add(1, Ordering::Relaxed)
    }

    async fn send(&self, frame: Vec<u8>) -> Result<(), ClientError> {
        self.out
            .send(frame)
            .await
            .map_err(|_| ClientError::Disconnected)
    }

    async fn call(&self, id: u64, frame: Vec<u8>, wait: Duration) -> Result<Answer, ClientError> {
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = self.shared.pending();
            if pending.closed {
                return Err(ClientError::Disconnected);
            }
            pending.waiting.insert(id, tx);
        }
        if let Err(e) = self.send(frame).await {
            self.shared.pending().waiting.remove(&id);
            return Err(e);
        }
        let answer = tokio::time::timeout(wait, rx).await;
        match answer {
            Err(_) => {
                self.shared.pending().waiting.remove(&id);
                Err(ClientError::Timeout(wait))
            }
            Ok(Err(_)) => Err(ClientError::Disconnected),
            Ok(Ok(Answer::Err(e))) => Err(ClientError::Hub(e)),
            Ok(Ok(a)) => Ok(a),
        }
    }

    async fn acked<'a>(
        &self,
        build: impl FnOnce(u64) -> ClientOut<'a>,
    ) -> Result<Option<u64>, ClientError> {
        let id = self.next_id();
        let mut buf = Vec::new();
        build(id).encode(&mut buf);
        match self.call(id, buf, Duration::from_secs(30)).await? {
            Answer::Ok(seq) => Ok(seq),
            Answer::Rep(_) | Answer::Err(_) => Err(ClientError::Protocol("expected `ok`".into())),
        }
    }

    /// Publishes without waiting for the hub (errors arrive as [`Event::Error`]).
    pub async fn publish(&self, tag: &str, body: &Value, retain: bool) -> Result<(), ClientError> {
        let mut buf = Vec::with_capacity(64);
        ClientOut::Pub {
            id: None,
            tag,
            body,
            retain,
            cid: None,
        }
        .encode(&mut buf);
        self.send(buf).await
    }

    /// Publishes and waits for the hub to accept it; returns the message's seq.
    pub async fn publish_confirmed(
        &self,
        tag: &str,
        body: &Value,
        retain: bool,
        cid: Option<&str>,
    ) -> Result<u64, ClientError> {
        let seq = self
            .acked(|id| ClientOut::Pub {
                id: Some(id),
                tag,
                body,
                retain,
                cid,
            })
            .await?;
        seq.ok_or_else(|| ClientError::Protocol("`ok` for `pub` without `seq`".into()))
    }

    /// Subscribes; with `snapshot`, the retained values arrive first and the
    /// returned seq marks where the snapshot ends.
    pub async fn subscribe(
        &self,
        patterns: &[String],
        snapshot: bool,
    ) -> Result<Option<u64>, ClientError> {
        self.acked(|id| ClientOut::Sub {
            id,
            tags: patterns,
            snapshot,
        })
        .await
    }

    /// Drops subscriptions.
    pub async fn unsubscribe(&self, patterns: &[String]) -> Result<(), ClientError> {
        self.acked(|id| ClientOut::Unsub { id, tags: patterns })
            .await
            .map(drop)
    }

    /// Claims exclusive ownership of a tag subtree.
    pub async fn claim(&self, prefix: &str) -> Result<(), ClientError> {
        self.acked(|id| ClientOut::Claim { id, prefix })
            .await
            .map(drop)
    }

    /// Round-trips a `ping`.
    pub async fn ping(&self) -> Result<(), ClientError> {
        self.acked(|id| ClientOut::Ping { id }).await.map(drop)
    }

    /// Sends a request and waits for its reply body.
    pub async fn request(
        &self,
        tag: &str,
        body: &Value,
        timeout: Duration,
        cid: Option<&str>,
    ) -> Result<Value, ClientError> {
        let rid = self.next_id();
        let mut buf = Vec::with_capacity(96);
        ClientOut::Req {
            rid,
            tag,
            body,
            timeout_ms: timeout.as_millis() as u64,
            cid,
        }
        .encode(&mut buf);
        match self.call(rid, buf, timeout + HUB_GRACE).await? {
            Answer::Rep(v) => Ok(v),
            Answer::Ok(_) | Answer::Err(_) => Err(ClientError::Protocol("expected `rep`".into())),
        }
    }

    /// Answers a request received as [`Event::Request`].
    pub async fn reply(
        &self,
        rid: u64,
        result: Result<&Value, &ErrorBody>,
    ) -> Result<(), ClientError> {
        let mut buf = Vec::with_capacity(96);
        let (body, error) = match result {
            Ok(b) => (Some(b), None),
            Err(e) => (None, Some(e)),
        };
        ClientOut::Rep { rid, body, error }.encode(&mut buf);
        self.send(buf).await
    }
}
