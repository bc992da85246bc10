//! The connection task: introduces the client, reads and routes what the
//! hub sends, writes what the handles queue, and reconnects.
//!
//! One task per connection runs the reader and the writer side by side. The
//! reader never waits on a handle: answers complete their calls at once,
//! messages go to their subscriptions' queues (which never block, see
//! `queue.rs`) in one batch per read, and requests go to a bounded queue
//! whose overflow is answered `busy`.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, Weak};

use bytes::{Bytes, BytesMut};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{broadcast, mpsc, watch, Notify};

use super::message::{parse_msg_fast, parse_msg_general, raw_slice, Message, Text};
use super::queue::Item;
use super::subscription::Request;
use super::{
    lock, Answer, Client, ClientBuilder, ClientEvent, Error, Handle, Outgoing, Shared, Status,
    Subs, Welcome,
};
use crate::backoff::Backoff;
use crate::protocol::{ClientOut, ErrorBody};
use crate::tls::Stream;

/// Read-buffer growth per read.
const READ_CHUNK: usize = 64 * 1024;

/// Connects and starts the connection task.
pub(crate) async fn start(opts: ClientBuilder) -> Result<Client, Error> {
    let (stream, buf, welcome) = open(&opts).await?;
    let (requests_tx, requests_rx) = mpsc::channel(opts.request_capacity.max(1));
    let shared = Arc::new(Shared {
        out: Mutex::new(Outgoing {
            buf: Vec::new(),
            open: true,
        }),
        wake: Notify::new(),
        drained: Notify::new(),
        calls: Mutex::default(),
        subs: Mutex::new(Subs::default()),
        requests_tx,
        requests_rx: Arc::new(tokio::sync::Mutex::new(requests_rx)),
        events: broadcast::channel(256).0,
        status: watch::Sender::new(Status::Connected),
        welcome: Mutex::new(welcome),
        next_id: AtomicU64::new(1),
        closing: watch::Sender::new(false),
        opts,
    });
    let handle = Arc::new(Handle(shared.clone()));
    tokio::spawn(drive(shared, stream, buf, Arc::downgrade(&handle)));
    Ok(Client { handle })
}

/// Connects to the first hub of `opts.addr` (a comma-separated list) that
/// takes the connection, starting after the one used last, so a client
/// whose hub dies moves to the next; returns the last error when none does.
async fn open(opts: &ClientBuilder) -> Result<(Stream, BytesMut, Welcome), Error> {
    let addrs: Vec<&str> = opts
        .addr
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .collect();
    if addrs.len() <= 1 {
        return open_one(opts, opts.addr.trim()).await;
    }
    let start = opts.next_addr.load(std::sync::atomic::Ordering::Relaxed);
    let mut last = None;
    for i in 0..addrs.len() {
        let at = (start + i) % addrs.len();
        match open_one(opts, addrs[at]).await {
            Ok(open) => {
                // Next time (after a loss) start with this one again.
                opts.next_addr
                    .store(at, std::sync::atomic::Ordering::Relaxed);
                return Ok(open);
            }
            // Refused for who this client is: every hub of the cluster would say the same.
            Err(e @ Error::Hub(_))
                if e.code()
                    .is_some_and(|c| c == "unauthorized" || c == "forbidden") =>
            {
                return Err(e)
            }
            Err(e) => {
                tracing::debug!(hub = %addrs[at], "cannot connect, trying the next hub: {e}");
                last = Some(e);
                // The one after it goes first next time.
                opts.next_addr
                    .store((at + 1) % addrs.len(), std::sync::atomic::Ordering::Relaxed);
            }
        }
    }
    Err(last.expect("at least one address"))
}

/// Connects to one hub, sends `hello` and reads up to `welcome`; returns what was read beyond it.
async fn open_one(opts: &ClientBuilder, addr: &str) -> Result<(Stream, BytesMut, Welcome), Error> {
    let addr = addr.to_owned();
    let connect_err = |source: std::io::Error| {
        match crate::tls::refusal_alert(&source) {
        Some(alert) => Error::Tls(format!(
            "the hub at {addr} refused this connection's TLS ({alert}): does it trust this client's certificate, and is the certificate still valid?"
        )),
        None => Error::Connect {
            addr: addr.clone(),
            source,
        },
    }
    };
    let deadline = tokio::time::Instant::now() + opts.connect_timeout;
    let stream = tokio::time::timeout_at(deadline, TcpStream::connect(&addr))
        .await
        .map_err(|_| connect_err(std::io::ErrorKind::TimedOut.into()))?
        .map_err(connect_err)?;
    // Connecting to a free port in the ephemeral range can connect the socket to itself.
    if stream.local_addr().ok() == stream.peer_addr().ok() {
        return Err(connect_err(std::io::ErrorKind::ConnectionRefused.into()));
    }
    let _ = stream.set_nodelay(true);
    let mut stream = match &opts.tls {
        None => Stream::Plain(stream),
        Some(config) => {
            let name = match &opts.tls_server_name {
                Some(n) => crate::tls::server_name(n),
                None => crate::tls::server_name(&addr),
            }
            .map_err(|e| Error::Tls(format!("{addr}: {e}")))?;
            let connector = tokio_rustls::TlsConnector::from(config.clone());
            let tls = tokio::time::timeout_at(deadline, connector.connect(name, stream))
                .await
                .map_err(|_| Error::Timeout(opts.connect_timeout))?
                .map_err(|e| {
                    let hint = if crate::tls::is_not_tls(&e) {
                        " (the hub did not answer in TLS: is its wire port plain TCP?)"
                    } else {
                        ""
                    };
                    Error::Tls(format!("handshake with {addr} failed: {e}{hint}"))
                })?;
            Stream::Tls(Box::new(tls))
        }
    };
    let mut hello = Vec::new();
    ClientOut::Hello {
        id: 0,
        name: &opts.name,
        token: opts.token.as_deref(),
    }
    .encode(&mut hello);
    stream.write_all(&hello).await.map_err(connect_err)?;
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    loop {
        while let Some(nl) = memchr::memchr(b'\n', &buf) {
            let line = buf.split_to(nl + 1);
            let frame: Control<'_> = match serde_json::from_slice(&line) {
                Ok(f) => f,
                Err(_) => continue,
            };
            match frame.op {
                "welcome" => {
                    let welcome = Welcome {
                        client: frame.client.unwrap_or(0),
                        name: frame.name.unwrap_or_default().into(),
                        role: frame.role.unwrap_or_default().into(),
                        instance: frame.instance.unwrap_or_default().into(),
                    };
                    return Ok((stream, buf, welcome));
                }
                "err" => return Err(Error::Hub(frame.error_body())),
                _ => {}
            }
        }
        let read = tokio::time::timeout_at(deadline, stream.read_buf(&mut buf))
            .await
            .map_err(|_| Error::Timeout(opts.connect_timeout))?
            .map_err(connect_err)?;
        if read == 0 {
            return Err(Error::Disconnected);
        }
    }
}

/// Every field of a hub frame other than `msg` and `req`.
#[derive(Deserialize)]
struct Control<'a> {
    #[serde(borrow)]
    op: &'a str,
    #[serde(default)]
    id: Option<u64>,
    #[serde(default, borrow)]
    rid: Option<&'a RawValue>,
    #[serde(default)]
    seq: Option<u64>,
    #[serde(default, borrow)]
    body: Option<&'a RawValue>,
    #[serde(default)]
    code: Option<&'a str>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    detail: Option<String>,
    #[serde(default)]
    outcome: Option<serde_json::Value>,
    #[serde(default)]
    client: Option<u64>,
    #[serde(default)]
    name: Option<&'a str>,
    #[serde(default)]
    role: Option<&'a str>,
    #[serde(default)]
    instance: Option<&'a str>,
}

impl Control<'_> {
    fn error_body(&self) -> ErrorBody {
        ErrorBody {
            code: self.code.unwrap_or("error").to_owned(),
            message: self.message.clone().unwrap_or_default(),
            detail: self.detail.clone(),
            outcome: self.outcome.clone(),
        }
    }
}

/// A `req` frame.
#[derive(Deserialize)]
struct Req<'a> {
    tag: String,
    #[serde(borrow)]
    body: &'a RawValue,
    rid: u64,
    #[serde(default)]
    from: String,
    #[serde(default)]
    cid: Option<String>,
}

/// Why a connection ended.
enum End {
    /// Every handle is gone.
    Closing,
    /// The socket failed or the hub hung up.
    Lost(String),
}

/// Runs connections until every handle is gone, reconnecting as configured.
async fn drive(shared: Arc<Shared>, stream: Stream, buf: BytesMut, handle: Weak<Handle>) {
    let mut next = Some((stream, buf));
    let policy = shared.opts.reconnect;
    let mut backoff = policy.map(|p| Backoff::new(p.min, p.max));
    while let Some((stream, buf)) = next.take() {
        let end = run(&shared, stream, buf, &handle).await;
        {
            let mut out = lock(&shared.out);
            out.open = false;
            out.buf.clear();
        }
        shared.drained.notify_waiters();
        // Calls in flight will not be answered: dropping their senders fails them.
        lock(&shared.calls).clear();
        let reason = match end {
            End::Closing => break,
            End::Lost(r) => r,
        };
        tracing::warn!(hub = %shared.opts.addr, "connection lost: {reason}");
        shared.event(ClientEvent::Disconnected(reason));
        let Some(backoff) = backoff.as_mut() else {
            break;
        };
        shared.status.send_replace(Status::Reconnecting);
        let mut closing = shared.closing.subscribe();
        loop {
            if handle.strong_count() == 0 {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff.next_delay()) => {}
                _ = closing.wait_for(|c| *c) => break,
            }
            match open(&shared.opts).await {
                Ok((stream, buf, welcome)) => {
                    backoff.reset();
                    *lock(&shared.welcome) = welcome.clone();
                    resubscribe(&shared);
                    shared.status.send_replace(Status::Connected);
                    tracing::info!(hub = %shared.opts.addr, "reconnected");
                    shared.event(ClientEvent::Reconnected(welcome));
                    next = Some((stream, buf));
                    break;
                }
                Err(e) => tracing::debug!(hub = %shared.opts.addr, "reconnect failed: {e}"),
            }
        }
    }
    shared.status.send_replace(Status::Closed);
    for entry in lock(&shared.subs).by_id.values() {
        entry.queue.close();
    }
}

/// Queues the `sub` frames of every live subscription on a new connection.
fn resubscribe(shared: &Shared) {
    let subs = lock(&shared.subs);
    let mut out = lock(&shared.out);
    out.open = true;
    for (id, entry) in &subs.by_id {
        ClientOut::Sub {
            id: *id,
            tags: &entry.patterns,
            snapshot: entry.snapshot,
        }
        .encode(&mut out.buf);
    }
    drop(out);
    shared.wake.notify_one();
}

/// Runs one connection until it ends.
async fn run(shared: &Shared, stream: Stream, buf: BytesMut, handle: &Weak<Handle>) -> End {
    lock(&shared.out).open = true;
    let mut closing = shared.closing.subscribe();
    match stream {
        Stream::Plain(tcp) => {
            let (rd, wr) = tcp.into_split();
            tokio::select! {
                r = read_loop(shared, rd, buf, handle) => End::Lost(r),
                r = write_loop(shared, wr, &mut closing) => r,
            }
        }
        Stream::Tls(tls) => {
            let (rd, wr) = tokio::io::split(*tls);
            tokio::select! {
                r = read_loop(shared, rd, buf, handle) => End::Lost(r),
                r = write_loop(shared, wr, &mut closing) => r,
            }
        }
    }
}

/// Writes what the handles queue, one batch per wake-up; on closing,
/// writes what is left and hangs up.
async fn write_loop<W: AsyncWrite + Unpin>(
    shared: &Shared,
    mut wr: W,
    closing: &mut watch::Receiver<bool>,
) -> End {
    let mut local = Vec::new();
    loop {
        let wake = shared.wake.notified();
        {
            let mut out = lock(&shared.out);
            std::mem::swap(&mut out.buf, &mut local);
        }
        if local.is_empty() {
            if *closing.borrow() {
                let _ = wr.shutdown().await;
                return End::Closing;
            }
            tokio::select! {
                _ = wake => {}
                _ = closing.changed() => {}
            }
            continue;
        }
        shared.drained.notify_waiters();
        if let Err(e) = wr.write_all(&local).await {
            return End::Lost(format!("write failed: {e}"));
        }
        local.clear();
        if local.capacity() > 4 * 1024 * 1024 {
            local = Vec::new();
        }
    }
}

/// What one read produced for the subscriptions, delivered in one push each.
#[derive(Default)]
struct Batches {
    by_sub: Vec<(u64, Vec<Item>)>,
    matched: Vec<u64>,
}

impl Batches {
    fn push(&mut self, sub: u64, item: Item) {
        match self.by_sub.iter_mut().find(|(id, _)| *id == sub) {
            Some((_, items)) => items.push(item),
            None => self.by_sub.push((sub, vec![item])),
        }
    }
}

/// Reads lines, routes them, and returns why the connection ended.
async fn read_loop<R: AsyncRead + Unpin>(
    shared: &Shared,
    mut rd: R,
    mut buf: BytesMut,
    handle: &Weak<Handle>,
) -> String {
    let max = shared.opts.max_frame_bytes;
    let mut discarding = false;
    let mut snapshot_for: Option<u64> = None;
    let mut batches = Batches::default();
    loop {
        if !buf.is_empty() || discarding {
            let mut subs = lock(&shared.subs);
            while let Some(nl) = memchr::memchr(b'\n', &buf) {
                let line = buf.split_to(nl + 1).freeze();
                if std::mem::take(&mut discarding) {
                    continue;
                }
                if line.len() > max {
                    shared.event(ClientEvent::BadFrame(format!(
                        "a frame from the hub is longer than {max} bytes; it was skipped"
                    )));
                    continue;
                }
                let end = if line.len() >= 2 && line[line.len() - 2] == b'\r' {
                    line.len() - 2
                } else {
                    line.len() - 1
                };
                if end > 0 {
                    handle_line(
                        shared,
                        handle,
                        &mut subs,
                        line.slice(..end),
                        &mut snapshot_for,
                        &mut batches,
                    );
                }
            }
            if buf.len() > max {
                discarding = true;
                buf.clear();
                shared.event(ClientEvent::BadFrame(format!(
                    "a frame from the hub is longer than {max} bytes; it was skipped"
                )));
            }
            deliver(shared, &subs, &mut batches);
        }
        if buf.capacity() - buf.len() < READ_CHUNK / 4 {
            buf.reserve(READ_CHUNK);
        }
        match rd.read_buf(&mut buf).await {
            Ok(0) => return "the hub closed the connection".into(),
            Ok(_) => {}
            // A TLS peer that went away without saying goodbye (a killed hub).
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return "the hub closed the connection".into()
            }
            Err(e) => return format!("read failed: {e}"),
        }
        if discarding {
            if let Some(nl) = memchr::memchr(b'\n', &buf) {
                let _ = buf.split_to(nl + 1);
                discarding = false;
            } else {
                buf.clear();
            }
        }
    }
}

/// Pushes each subscription's batch into its queue.
fn deliver(shared: &Shared, subs: &Subs, batches: &mut Batches) {
    for (id, items) in batches.by_sub.drain(..) {
        let Some(entry) = subs.by_id.get(&id) else {
            continue;
        };
        let pushed = entry.queue.push_all(items);
        if pushed.dropped > 0 {
            let dropped = entry.queue.take_unreported();
            tracing::warn!(patterns = ?entry.patterns, dropped, "slow subscription: messages dropped");
            shared.event(ClientEvent::SlowConsumer {
                patterns: entry.patterns.clone(),
                dropped,
            });
        }
    }
}

fn handle_line(
    shared: &Shared,
    handle: &Weak<Handle>,
    subs: &mut Subs,
    line: Bytes,
    snapshot_for: &mut Option<u64>,
    batches: &mut Batches,
) {
    if line.starts_with(br#"{"op":"msg""#) {
        let msg = match parse_msg_fast(&line) {
            Some(m) => Ok(m),
            None => parse_msg_general(&line),
        };
        match msg {
            Ok(m) => route(subs, m, *snapshot_for, batches),
            Err(e) => bad_frame(shared, &line, &e.to_string()),
        }
        return;
    }
    if line.starts_with(br#"{"op":"req""#) {
        match serde_json::from_slice::<Req<'_>>(&line) {
            Ok(r) => take_request(shared, handle, &line, r),
            Err(e) => bad_frame(shared, &line, &e.to_string()),
        }
        return;
    }
    let c: Control<'_> = match serde_json::from_slice(&line) {
        Ok(c) => c,
        Err(e) => return bad_frame(shared, &line, &e.to_string()),
    };
    match c.op {
        "ok" => {
            let id = c.id.unwrap_or(0);
            if *snapshot_for == Some(id) && c.seq.is_some() {
                *snapshot_for = None;
                batches.push(id, Item::SnapshotEnd(c.seq.unwrap_or(0)));
                return;
            }
            accept_sub(subs, id);
            shared.answer(id, Answer::Ok(c.seq));
        }
        "snapshot" => {
            let id = c.id.unwrap_or(0);
            accept_sub(subs, id);
            *snapshot_for = Some(id);
            shared.answer(id, Answer::Ok(None));
        }
        "rep" => {
            let rid = c.rid.and_then(|r| r.get().parse::<u64>().ok()).unwrap_or(0);
            let body = c
                .body
                .map(|b| raw_slice(&line, b))
                .unwrap_or_else(|| Bytes::from_static(b"null"));
            shared.answer(rid, Answer::Rep(body));
        }
        "err" => {
            let body = c.error_body();
            let key =
                c.id.or_else(|| c.rid.and_then(|r| r.get().parse::<u64>().ok()));
            match key {
                Some(k) if shared.answer(k, Answer::Err(body.clone())) => {}
                // A subscription renewed after a reconnect, now refused.
                Some(k) if subs.by_id.contains_key(&k) => batches.push(k, Item::Failed(body)),
                _ => {
                    tracing::warn!("hub error: {body}");
                    shared.event(ClientEvent::HubError(body));
                }
            }
        }
        "pong" => {
            shared.answer(c.id.unwrap_or(0), Answer::Ok(None));
        }
        "ping" => {
            let mut pong = Vec::with_capacity(16);
            ClientOut::Pong.encode(&mut pong);
            shared.send_now(&pong);
        }
        "welcome" => {}
        other => bad_frame(shared, &line, &format!("unknown op `{other}`")),
    }
}

/// The hub accepted subscription `id`: from here on, messages route to it.
fn accept_sub(subs: &mut Subs, id: u64) {
    let Subs { trie, by_id } = subs;
    if let Some(entry) = by_id.get(&id) {
        for p in &entry.patterns {
            trie.insert(p, id);
        }
    }
}

fn route(subs: &Subs, mut m: Message, snapshot_for: Option<u64>, batches: &mut Batches) {
    if let Some(id) = snapshot_for {
        m.snapshot = true;
        batches.push(id, Item::Msg(m));
        return;
    }
    let mut matched = std::mem::take(&mut batches.matched);
    matched.clear();
    subs.trie.matches(m.tag(), &mut matched);
    if matched.len() > 1 {
        matched.sort_unstable();
        matched.dedup();
    }
    if let Some((&last, rest)) = matched.split_last() {
        for &id in rest {
            batches.push(id, Item::Msg(m.clone()));
        }
        batches.push(last, Item::Msg(m));
    }
    batches.matched = matched;
}

fn take_request(shared: &Shared, handle: &Weak<Handle>, line: &Bytes, r: Req<'_>) {
    // Every handle is gone: nobody would answer, the connection is closing.
    let Some(handle) = handle.upgrade() else {
        return;
    };
    let request = Request {
        tag: Text::owned(r.tag),
        body: raw_slice(line, r.body),
        rid: r.rid,
        from: Text::owned(r.from),
        cid: r.cid.map(Text::owned),
        handle,
    };
    if let Err(mpsc::error::TrySendError::Full(request)) = shared.requests_tx.try_send(request) {
        let busy = ErrorBody::new(
            crate::device::DeviceErrorCode::Busy.as_str(),
            format!(
                "`{}` has {} requests waiting; try again",
                shared.opts.name, shared.opts.request_capacity
            ),
        );
        let mut frame = Vec::with_capacity(128);
        super::message::encode_rep(&mut frame, request.rid, Err(&busy));
        shared.send_now(&frame);
    }
}

fn bad_frame(shared: &Shared, line: &[u8], why: &str) {
    let head = String::from_utf8_lossy(&line[..line.len().min(120)]).into_owned();
    tracing::warn!("unreadable frame from the hub ({why}): {head}");
    shared.event(ClientEvent::BadFrame(format!("{why}: {head}")));
}
