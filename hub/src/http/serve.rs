//! The HTTP accept loop, with the limits a public port needs.
//!
//! - At most `max_http_connections` at once: one more is answered `503`
//!   with a JSON body and closed, so idle or hostile HTTP clients cannot
//!   use up the process's file descriptors and keep agents off the wire port.
//! - With `[tls]`, the TLS handshake must finish within the TLS
//!   `handshake_timeout_ms`, holding one of those connection slots.
//! - Request headers must arrive within `http_header_timeout_ms` (hyper's
//!   header-read timeout, which also ends idle keep-alive connections).
//! - Every write, of a response, an event stream or a WebSocket, must make
//!   progress within `write_timeout_ms` ([`ConnIo`]), so a reader that
//!   stops reading is dropped instead of holding its stream forever.
//! - hyper's own answers to unparsable requests (400, 414, 431) get the
//!   same JSON error body as everything else.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::time::Sleep;
use tower::ServiceExt;

use super::error::ErrorResponse;
use crate::server::{Hub, Metrics};
use crate::tls::{Port, Stream};

/// How long a refused connection gets to read its `503`.
const REFUSAL_GRACE: Duration = Duration::from_secs(1);
/// How long shutdown waits for HTTP connections to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Serves `app` on `listener` until `shutdown` turns true.
pub async fn serve(
    hub: Arc<Hub>,
    listener: TcpListener,
    app: Router,
    shutdown: watch::Receiver<bool>,
) {
    let cfg = hub.config().clone();
    let slots = Arc::new(Semaphore::new(cfg.max_http_connections));
    let mut stop = shutdown.clone();
    loop {
        let (stream, peer) = tokio::select! {
            _ = async { let _ = stop.wait_for(|s| *s).await; } => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("http accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let tls = hub.tls();
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            Metrics::inc(&hub.metrics().http_refused);
            tracing::warn!(%peer, "refusing HTTP connection: at max_http_connections");
            // Over TLS a plain answer would be noise to the client: it is just closed.
            if tls.is_none() {
                tokio::spawn(refuse(stream, cfg.max_http_connections));
            }
            continue;
        };
        let app = app.clone();
        let header_timeout = Duration::from_millis(cfg.http_header_timeout_ms);
        let mut stop = shutdown.clone();
        let hub = hub.clone();
        let write_timeout = cfg.write_timeout();
        tokio::spawn(async move {
            let stream = match tls {
                None => Stream::Plain(stream),
                Some(tls) => match tls.accept(stream, Port::Http).await {
                    Ok(a) => a.stream,
                    Err(e) => {
                        Metrics::inc(&hub.metrics().tls_handshake_failures);
                        tracing::debug!(%peer, "http connection closed: {e}");
                        return;
                    }
                },
            };
            let io = ConnIo::new(stream, write_timeout, hub);
            let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                app.clone().oneshot(req)
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .keep_alive(true);
            let conn = builder
                .serve_connection(TokioIo::new(io), service)
                .with_upgrades();
            tokio::pin!(conn);
            let mut stopping = false;
            loop {
                tokio::select! {
                    r = conn.as_mut() => {
                        if let Err(e) = r {
                            tracing::debug!(%peer, "http connection ended: {e}");
                        }
                        break;
                    }
                    _ = async { let _ = stop.wait_for(|s| *s).await; }, if !stopping => {
                        stopping = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
            drop(permit);
        });
    }
    // Every permit back means every connection has finished.
    let all = u32::try_from(cfg.max_http_connections).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, slots.acquire_many(all)).await;
}

/// The JSON error response for `status`, closing the connection.
fn error_response(status: u16, reason: &str, code: &str, message: &str) -> Vec<u8> {
    let body = serde_json::to_vec(&ErrorResponse {
        error: super::error::ErrorDetail {
            code: code.into(),
            message: message.into(),
            setting: None,
            allowed: None,
            detail: None,
            outcome: None,
            cid: None,
        },
    })
    .unwrap_or_default();
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    out
}

/// Answers a connection over the limit with `503`, then closes it.
async fn refuse(mut stream: TcpStream, limit: usize) {
    let res = error_response(
        503,
        "Service Unavailable",
        "max_http_connections",
        &format!("the hub is at its limit of {limit} HTTP connections; try again shortly"),
    );
    let _ = tokio::time::timeout(REFUSAL_GRACE, async {
        stream.write_all(&res).await?;
        stream.shutdown().await?;
        // Read what the client sent, so closing does not reset the connection under its answer.
        let mut sink = [0u8; 1024];
        while stream.read(&mut sink).await? > 0 {}
        io::Result::Ok(())
    })
    .await;
}

/// Recognises hyper's own answer to an unparsable request (a bare head with
/// `content-length: 0`; every other error carries a JSON body) and returns
/// the JSON response to send instead.
fn rewrite_bare_error(buf: &[u8]) -> Option<Vec<u8>> {
    let head = std::str::from_utf8(buf).ok()?;
    let rest = head.strip_prefix("HTTP/1.1 ")?;
    if !head.ends_with("\r\n\r\n") || head.matches("\r\n\r\n").count() != 1 {
        return None;
    }
    if !head
        .to_ascii_lowercase()
        .contains("\r\ncontent-length: 0\r\n")
    {
        return None;
    }
    let (status, message) = match rest.get(..3)? {
        "400" => (400, "the request could not be parsed as HTTP/1.1"),
        "414" => (414, "the request's URI is too long"),
        "431" => (431, "the request's headers are too large"),
        _ => return None,
    };
    let reason = rest.get(4..)?.split("\r\n").next()?;
    let code = match status {
        400 => "bad_request",
        414 => "uri_too_long",
        _ => "headers_too_large",
    };
    Some(error_response(status, reason, code, message))
}

/// A client connection (TLS or not) with a write deadline: a write that makes no progress for
/// the timeout fails with `TimedOut`. It also gives hyper's bare error
/// answers a JSON body.
pub struct ConnIo {
    inner: Stream,
    timeout: Duration,
    /// The deadline timer, armed lazily (see `server::writer::Deadline`).
    stalled: Pin<Box<Sleep>>,
    armed: bool,
    /// The last write progress, or the start of a blocked episode.
    progress: Option<tokio::time::Instant>,
    /// A replacement response still to be written.
    replaced: Vec<u8>,
    hub: Arc<Hub>,
}

impl ConnIo {
    fn new(inner: Stream, timeout: Duration, hub: Arc<Hub>) -> Self {
        inner.set_nodelay();
        ConnIo {
            inner,
            timeout,
            stalled: Box::pin(tokio::time::sleep(timeout)),
            armed: true,
            progress: None,
            replaced: Vec::new(),
            hub,
        }
    }

    /// Maps a pending write to an error once the deadline passes.
    fn on_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let timeout = self.timeout;
        let progress = *self.progress.get_or_insert_with(tokio::time::Instant::now);
        loop {
            if !self.armed {
                self.stalled.as_mut().reset(progress + timeout);
                self.armed = true;
            }
            if self.stalled.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.armed = false;
            if tokio::time::Instant::now() >= progress + timeout {
                self.progress = None;
                Metrics::inc(&self.hub.metrics().slow_consumer_drops);
                tracing::warn!("dropping HTTP client: no write progress for {timeout:?}");
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the client read nothing within the write timeout",
                )));
            }
        }
    }

    fn write_inner(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Pending => self.on_pending(cx),
            ready => {
                // Progress ends a blocked episode; the next starts its clock afresh.
                self.progress = None;
                ready
            }
        }
    }

    /// Writes out a replacement response, if one is waiting.
    fn flush_replaced(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.replaced.is_empty() {
            let pending = std::mem::take(&mut self.replaced);
            let r = self.write_inner(cx, &pending);
            self.replaced = pending;
            let n = ready!(r)?;
            self.replaced.drain(..n);
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for ConnIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for ConnIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(self.flush_replaced(cx))?;
        if let Some(json) = rewrite_bare_error(buf) {
            self.replaced = json;
            return Poll::Ready(Ok(buf.len()));
        }
        self.write_inner(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.flush_replaced(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.flush_replaced(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_error_heads_get_json_bodies() {
        let bare = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: Wed, 25 Nov 2026 10:00:00 GMT\r\n\r\n";
        let out = String::from_utf8(rewrite_bare_error(bare).unwrap()).unwrap();
        assert!(
            out.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
            "{out}"
        );
        let body = out.split("\r\n\r\n").nth(1).unwrap();
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["code"], "headers_too_large");
        // A response with a body, or a success, is left alone.
        assert!(rewrite_bare_error(
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 20\r\n\r\n{\"error\":{}}12345678"
        )
        .is_none());
        assert!(rewrite_bare_error(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").is_none());
    }
}
