//! The TCP transport: bytes in, lines out to the session; the outbox's
//! contents out in one write per wake-up, under a deadline (`writer.rs`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::Instrument;

use super::hub::Hub;
use super::metrics::Metrics;
use super::outbox::Outbox;
use super::session::{Flow, Session};
use super::writer;
use crate::protocol::ErrorCode;
use crate::tls::Port;

/// Initial read buffer; it grows for long frames and busy clients and shrinks back when idle.
const READ_CHUNK: usize = 4096;
/// Largest read offered at once.
const MAX_READ_CHUNK: usize = 64 * 1024;
/// How long a refused connection may take to read why.
const REFUSAL_GRACE: Duration = Duration::from_secs(2);

/// Serves one TCP client until it leaves, misbehaves or the hub shuts down;
/// with `[tls]`, after the TLS handshake.
pub async fn serve_tcp(
    hub: Arc<Hub>,
    stream: TcpStream,
    peer: SocketAddr,
    shutdown: watch::Receiver<bool>,
) {
    let tls = hub.tls();
    let Some(tls) = tls else {
        let _ = stream.set_nodelay(true);
        let (rd, wr) = stream.into_split();
        return serve(hub, rd, wr, peer, false, shutdown).await;
    };
    // Handshakes in progress are bounded like clients waiting to say `hello`:
    // past the limit the oldest makes room.
    let mut ticket = hub.admit_handshake();
    let accepted = tokio::select! {
        a = tls.accept(stream, Port::Wire) => a,
        _ = &mut ticket.evicted => {
            Metrics::inc(&hub.metrics().tls_handshake_failures);
            tracing::debug!(%peer, "connection closed: its TLS handshake made room for a newer one (max_unauthenticated)");
            return;
        }
    };
    drop(ticket);
    let accepted = match accepted {
        Ok(a) => a,
        Err(e) => {
            Metrics::inc(&hub.metrics().tls_handshake_failures);
            if crate::tls::is_certificate_refusal(&e) {
                tracing::warn!(%peer, "connection refused: {e}");
            } else {
                tracing::debug!(%peer, "connection closed: {e}");
            }
            return;
        }
    };
    accepted.stream.set_nodelay();
    let missing_cert = tls.requires_client_certs() && !accepted.client_cert;
    let (rd, wr) = tokio::io::split(accepted.stream);
    serve(hub, rd, wr, peer, missing_cert, shutdown).await;
}

/// Runs the session over a connection's two halves.
async fn serve<R, W>(
    hub: Arc<Hub>,
    rd: R,
    mut wr: W,
    peer: SocketAddr,
    missing_cert: bool,
    shutdown: watch::Receiver<bool>,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let outbox = Outbox::new(hub.config().outbound_queue_bytes);
    let session = match Session::open(
        hub.clone(),
        peer,
        outbox.clone(),
        crate::server::Transport::Tcp,
    ) {
        Ok(s) => s.requiring_certificate(missing_cert),
        Err(e) => {
            tracing::warn!(%peer, code = %e.code, "refusing connection: {}", e.message);
            let _ =
                tokio::time::timeout(REFUSAL_GRACE, wr.write_all(&e.code.frame(&e.message))).await;
            return;
        }
    };
    let span = tracing::info_span!("conn", id = session.id(), %peer);
    async move {
        tracing::debug!("connected");
        let writer = {
            let (outbox, hub) = (outbox.clone(), hub.clone());
            tokio::spawn(async move { writer::run(wr, &outbox, &hub).await }.in_current_span())
        };
        read_loop(session, rd, &outbox, shutdown).await;
        outbox.close();
        // The writer enforces its own deadline; this bound only guards against a bug there.
        let mut writer = writer;
        let bound = hub.config().write_timeout() * 2 + REFUSAL_GRACE;
        if tokio::time::timeout(bound, &mut writer).await.is_err() {
            writer.abort();
        }
        tracing::debug!("disconnected");
    }
    .instrument(span)
    .await
}

async fn read_loop<R: AsyncRead + Unpin>(
    mut session: Session,
    mut rd: R,
    outbox: &Outbox,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut lines = LineBuffer::new(session.max_line());
    // One timer for the connection's life: when it fires, `tick` checks the
    // real deadlines and it is re-armed, so reads never touch the timer wheel.
    let check = tokio::time::sleep_until(session.next_check());
    tokio::pin!(check);
    loop {
        tokio::select! {
            biased;
            _ = outbox.killed() => return,
            _ = shutdown.changed() => {
                outbox.end_with(Bytes::from(ErrorCode::ShuttingDown.frame("the hub is shutting down")));
                return;
            }
            _ = &mut check => {
                if session.tick(Instant::now()) == Flow::Close {
                    return;
                }
                check.as_mut().reset(session.next_check());
            }
            read = rd.read_buf(lines.spare()) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    lines.read(n);
                    let flow = lines.feed(&mut session);
                    session.heard(Instant::now());
                    if flow == Flow::Close {
                        return;
                    }
                    lines.set_max_frame(session.max_line());
                    // Let the writers this chunk fed run before reading more, so a
                    // fast publisher cannot outrun its subscribers on a busy core.
                    tokio::task::yield_now().await;
                }
            }
        }
    }
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

    /// Changes the longest line accepted (smaller before authentication).
    pub fn set_max_frame(&mut self, max_frame: usize) {
        self.max_frame = max_frame;
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
