//! Writing a connection's outbox to its socket, with a deadline.
//!
//! A reader that stops reading fills its socket's buffers; the write that
//! follows makes no progress. After `write_timeout_ms` without progress the
//! client is dropped as a slow consumer, whatever its queue says. When a
//! connection is dropped mid-write, the frame being written is completed
//! and the final `err` frame follows it, so the client reads whole frames up
//! to the reason it was dropped, never a truncated line.

use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::time::{Instant, Sleep};

use super::hub::Hub;
use super::metrics::Metrics;
use super::outbox::{Drain, Outbox};
use crate::protocol::ErrorCode;

/// How a batch of frames went out.
#[derive(Debug)]
pub enum Written {
    /// All of it.
    Done,
    /// The socket took no byte for the write timeout; `at` bytes were written.
    Stalled {
        /// Bytes of the batch the socket accepted.
        at: usize,
    },
    /// The outbox was killed while writing; `at` bytes were written.
    Abandoned {
        /// Bytes of the batch the socket accepted.
        at: usize,
    },
    /// The socket failed.
    Failed(std::io::Error),
}

/// The write deadline of one connection: fires when no write has made
/// progress for the timeout. Its timer is armed lazily and re-armed only when
/// it fires early, so a busy connection does not touch the timer wheel on
/// every blocked write (each registration of an earlier timer wakes the
/// runtime's driver).
pub struct Deadline {
    timeout: Duration,
    progress: Instant,
    sleep: Pin<Box<Sleep>>,
    armed: bool,
}

impl Deadline {
    /// A deadline of `timeout` without progress.
    pub fn new(timeout: Duration) -> Self {
        let now = Instant::now();
        Deadline {
            timeout,
            progress: now,
            sleep: Box::pin(tokio::time::sleep_until(now + timeout)),
            armed: true,
        }
    }

    /// Notes that a write made progress (or a batch starts).
    pub fn progressed(&mut self) {
        self.progress = Instant::now();
    }

    /// Resolves once no progress has been noted for the timeout.
    pub async fn expired(&mut self) {
        loop {
            let due = self.progress + self.timeout;
            if !self.armed {
                self.sleep.as_mut().reset(due);
                self.armed = true;
            }
            self.sleep.as_mut().await;
            self.armed = false;
            if Instant::now() >= self.progress + self.timeout {
                return;
            }
        }
    }
}

/// Writes `buf`, giving up when the socket makes no progress before
/// `deadline` expires or, with `abandon_on` given, when that outbox is killed.
pub async fn write_frames<W: AsyncWrite + Unpin>(
    wr: &mut W,
    buf: &[u8],
    deadline: &mut Deadline,
    abandon_on: Option<&Outbox>,
) -> Written {
    let mut at = 0;
    deadline.progressed();
    let abandoned = async {
        match abandon_on {
            Some(o) => o.abandoned().await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(abandoned);
    while at < buf.len() {
        // Most writes complete at once: try before waiting on anything.
        let r = match wr.write(&buf[at..]).now_or_never() {
            Some(r) => r,
            None => tokio::select! {
                biased;
                _ = &mut abandoned => return Written::Abandoned { at },
                r = wr.write(&buf[at..]) => r,
                _ = deadline.expired() => return Written::Stalled { at },
            },
        };
        match r {
            Ok(0) => return Written::Failed(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                at += n;
                if at < buf.len() {
                    deadline.progressed();
                }
            }
            Err(e) => return Written::Failed(e),
        }
    }
    Written::Done
}

/// Drains `outbox` into `wr` until the connection ends: one write per
/// drain, each under the write deadline, counting delivered messages.
pub async fn run<W: AsyncWrite + Unpin>(mut wr: W, outbox: &Outbox, hub: &Hub) {
    let timeout = hub.config().write_timeout();
    let mut deadline = Deadline::new(timeout);
    let mut buf = Vec::new();
    loop {
        let state = outbox.drain_into(&mut buf, hub);
        if !buf.is_empty() {
            // The batch with the final frame is written whole; any other is
            // abandoned when the outbox is killed meanwhile.
            let watch = (state != Drain::Finished).then_some(outbox);
            match write_frames(&mut wr, &buf, &mut deadline, watch).await {
                Written::Done => {
                    if let Drain::Data { msgs } = state {
                        Metrics::add(&hub.metrics().deliveries, msgs);
                    }
                }
                Written::Stalled { at } => {
                    Metrics::inc(&hub.metrics().slow_consumer_drops);
                    tracing::warn!("dropping slow consumer: no write progress for {timeout:?}");
                    outbox.kill(Bytes::from(ErrorCode::SlowConsumer.frame(&format!(
                        "the client read nothing for {} ms; reconnect and subscribe again",
                        timeout.as_millis()
                    ))));
                    finish(&mut wr, &buf, at, outbox, hub, timeout).await;
                    return;
                }
                Written::Abandoned { at } => {
                    finish(&mut wr, &buf, at, outbox, hub, timeout).await;
                    return;
                }
                Written::Failed(e) => {
                    tracing::debug!("write failed: {e}");
                    outbox.kill(Bytes::new());
                    return;
                }
            }
            buf.clear();
            if buf.capacity() > 1024 * 1024 {
                buf = Vec::new();
            }
        }
        match state {
            Drain::Data { .. } => {}
            Drain::Empty => outbox.wait().await,
            Drain::Later(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at) => {}
                    _ = outbox.wait() => {}
                }
            }
            Drain::Finished => {
                let _ = wr.shutdown().await;
                return;
            }
        }
    }
}

/// After a kill: completes the frame cut at `at`, writes the final frame
/// the outbox holds, and hangs up; all within `timeout`.
async fn finish<W: AsyncWrite + Unpin>(
    wr: &mut W,
    buf: &[u8],
    at: usize,
    outbox: &Outbox,
    hub: &Hub,
    timeout: Duration,
) {
    let mut tail = Vec::new();
    if at > 0 && buf[at - 1] != b'\n' {
        if let Some(end) = memchr::memchr(b'\n', &buf[at..]) {
            tail.extend_from_slice(&buf[at..=at + end]);
        }
    }
    while let Drain::Data { .. } = outbox.drain_into(&mut tail, hub) {}
    let _ = tokio::time::timeout(timeout, async {
        wr.write_all(&tail).await?;
        wr.shutdown().await
    })
    .await;
}
