//! The TCP transport: bytes in, lines out to the session; the outbox's
//! contents out in one write per wake-up.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::Instrument;

use super::hub::Hub;
use super::outbox::{Drain, Outbox};
use super::session::{Flow, Session};
use crate::protocol::ErrorCode;

/// Write buffers larger than this are released after use rather than kept.
const WRITE_BATCH: usize = 256 * 1024;
/// Initial read buffer; it grows for long frames and busy clients and shrinks back when idle.
const READ_CHUNK: usize = 4096;
/// Largest read offered at once.
const MAX_READ_CHUNK: usize = 64 * 1024;
/// How long a closing connection may take to flush its last frames.
const FLUSH_GRACE: Duration = Duration::from_secs(2);

/// Serves one TCP client until it leaves, misbehaves or the hub shuts down.
pub async fn serve_tcp(
    hub: Arc<Hub>,
    stream: TcpStream,
    peer: SocketAddr,
    shutdown: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let (rd, mut wr) = stream.into_split();
    let outbox = Outbox::new(hub.config().outbound_queue_bytes);
    let session = match Session::open(hub.clone(), peer, outbox.clone()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(%peer, code = %e.code, "refusing connection: {}", e.message);
            let _ =
                tokio::time::timeout(FLUSH_GRACE, wr.write_all(&e.code.frame(&e.message))).await;
            return;
        }
    };
    let span = tracing::info_span!("conn", id = session.id(), %peer);
    async move {
        tracing::debug!("connected");
        let writer = tokio::spawn(write_loop(wr, outbox.clone()).in_current_span());
        read_loop(session, rd, &outbox, shutdown).await;
        outbox.close();
        let mut writer = writer;
        if tokio::time::timeout(FLUSH_GRACE, &mut writer)
            .await
            .is_err()
        {
            writer.abort();
        }
        tracing::debug!("disconnected");
    }
    .instrument(span)
    .await
}

async fn read_loop(
    mut session: Session,
    mut rd: tokio::net::tcp::OwnedReadHalf,
    outbox: &Outbox,
    mut shutdown: watch::Receiver<bool>,
) {
    let max_frame = session_max_frame(&session);
    let mut lines = LineBuffer::new(max_frame);
    let period = session_ping_period(&session);
    let mut tick = tokio::time::interval_at(Instant::now() + period, period);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = outbox.killed() => return,
            _ = shutdown.changed() => {
                outbox.end_with(Bytes::from(ErrorCode::ShuttingDown.frame("the hub is shutting down")));
                return;
            }
            _ = tick.tick() => {
                if session.tick(Instant::now()) == Flow::Close {
                    return;
                }
            }
            read = rd.read_buf(lines.spare()) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    lines.read(n);
                    session.heard(Instant::now());
                    if lines.feed(&mut session) == Flow::Close {
                        return;
                    }
                    // Let the writers this chunk fed run before reading more, so a
                    // fast publisher cannot outrun its subscribers on a busy core.
                    tokio::task::yield_now().await;
                }
            }
        }
    }
}

fn session_max_frame(s: &Session) -> usize {
    s.hub().config().max_frame_bytes
}

fn session_ping_period(s: &Session) -> Duration {
    (s.hub().config().ping_interval() / 2).max(Duration::from_millis(10))
}

/// Splits a byte stream into lines, discarding lines over the frame limit.
pub struct LineBuffer {
    buf: Vec<u8>,
    /// Room to offer the next read: grows while reads fill it (a busy
    /// publisher gets few, large reads), stays small for quiet clients.
    chunk: usize,
    max_frame: usize,
    /// Inside an over-long line: drop bytes up to the next newline.
    discarding: bool,
}

impl LineBuffer {
    /// An empty buffer for lines of at most `max_frame` bytes.
    pub fn new(max_frame: usize) -> Self {
        LineBuffer {
            buf: Vec::with_capacity(READ_CHUNK),
            chunk: READ_CHUNK,
            max_frame,
            discarding: false,
        }
    }

    /// The buffer to read into, with room for at least one more chunk.
    pub fn spare(&mut self) -> &mut Vec<u8> {
        if self.buf.capacity() - self.buf.len() < self.chunk {
            self.buf.reserve(self.chunk);
        }
        &mut self.buf
    }

    /// Notes how much the last read brought, to size the next one.
    pub fn read(&mut self, n: usize) {
        if n >= self.chunk && self.chunk < MAX_READ_CHUNK {
            self.chunk *= 2;
        }
    }

    /// Hands every complete line to the session.
    pub fn feed(&mut self, session: &mut Session) -> Flow {
        let mut start = 0;
        let mut flow = Flow::Continue;
        while let Some(nl) = memchr::memchr(b'\n', &self.buf[start..]) {
            let line = &self.buf[start..start + nl];
            start += nl + 1;
            if self.discarding {
                self.discarding = false;
                continue;
            }
            if line.len() > self.max_frame {
                flow = session.frame_too_large();
            } else {
                flow = session.handle_line(line);
            }
            if flow == Flow::Close {
                break;
            }
        }
        self.buf.drain(..start);
        if flow == Flow::Continue && !self.discarding && self.buf.len() > self.max_frame {
            self.discarding = true;
            self.buf.clear();
            flow = session.frame_too_large();
        } else if self.discarding {
            self.buf.clear();
        }
        if self.buf.is_empty() && self.buf.capacity() > 2 * MAX_READ_CHUNK {
            self.buf = Vec::with_capacity(self.chunk);
        }
        flow
    }
}

async fn write_loop(mut wr: OwnedWriteHalf, outbox: Arc<Outbox>) {
    let mut buf = Vec::new();
    loop {
        let state = outbox.drain_into(&mut buf);
        if !buf.is_empty() {
            if let Err(e) = wr.write_all(&buf).await {
                tracing::debug!("write failed: {e}");
                outbox.kill(Bytes::new());
                return;
            }
            buf.clear();
            if buf.capacity() > 4 * WRITE_BATCH {
                buf = Vec::new();
            }
        }
        match state {
            Drain::Data => {}
            Drain::Empty => outbox.wait().await,
            Drain::Finished => {
                let _ = wr.shutdown().await;
                return;
            }
        }
    }
}
