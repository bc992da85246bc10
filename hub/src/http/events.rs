//! Server-Sent Events: the retained values matching the requested patterns
//! first, then live messages, each with `id:` = its seq. A browser that
//! reconnects with `Last-Event-ID` gets only what changed since: every
//! retained value newer than that seq, then live messages.
//!
//! The stream is a hub connection like any other (a viewer with its own
//! bounded outbox), so snapshot streaming, slow-consumer conflation and
//! limits apply unchanged; the HTTP connection's write deadline drops a
//! client that stops reading, and comment lines keep an idle stream alive
//! through proxies (every `ping_interval_ms`).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use serde::Deserialize;
use utoipa::IntoParams;

use super::auth::Caller;
use super::error::{ApiError, ErrorResponse};
use super::AppState;
use crate::config::Role;
use crate::server::{ConnId, Drain, Hub, Identity, Metrics, Outbox};

/// Which tags to stream.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Comma-separated tag patterns (default `dev/#`), e.g. `dev/+/state,dev/+/online`.
    pub tags: Option<String>,
    /// Resume after this seq (what `Last-Event-ID` carries; the header wins).
    pub last_event_id: Option<u64>,
}

/// Removes the stream's hub connection when the client goes away.
struct Subscription {
    hub: Arc<Hub>,
    conn: ConnId,
    outbox: Arc<Outbox>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.disconnect(self.conn);
    }
}

/// Streams messages on tag patterns as Server-Sent Events.
#[utoipa::path(get, path = "/api/events", tag = "events", params(EventsQuery,
        ("last-event-id" = Option<u64>, Header, description = "Seq of the last event received")),
    responses((status = 200, description = "text/event-stream of `msg` events with id = seq; `snapshot` marks the end of the initial values", content_type = "text/event-stream", body = String),
        (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse)))]
pub async fn stream(
    State(st): State<AppState>,
    caller: Caller,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let patterns: Vec<String> = q
        .tags
        .as_deref()
        .unwrap_or("dev/#")
        .split(',')
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty())
        .collect();
    if patterns.is_empty() {
        return Err(ApiError::bad_request("`tags` lists no patterns"));
    }
    for p in &patterns {
        crate::tag::validate_pattern(p).map_err(|e| ApiError::bad_request(e.to_string()))?;
    }
    let header_id = headers.get("last-event-id").and_then(|v| v.to_str().ok());
    let after = match header_id {
        Some(h) => Some(
            h.trim()
                .parse::<u64>()
                .map_err(|_| ApiError::bad_request("`Last-Event-ID` must be a seq number"))?,
        ),
        None => q.last_event_id,
    }
    .unwrap_or(0);

    let hub = st.hub.clone();
    let outbox = Outbox::new(hub.config().outbound_queue_bytes);
    let ident = Identity {
        name: Arc::from(format!("sse-{peer}")),
        role: Some(Role::Viewer),
        may_claim: None,
        principal: Arc::from(format!("sse-{peer}")),
        system: false,
        token: caller.secret.clone(),
        access: caller.access.clone(),
    };
    let conn = hub.connect_as(peer, outbox.clone(), ident)?;
    let sub = Subscription {
        hub: hub.clone(),
        conn,
        outbox,
    };
    hub.subscribe(conn, &patterns, Some(after), None)?;
    let shutdown = st.shutdown.clone();
    let state = (sub, Vec::new(), VecDeque::new(), shutdown, false);
    let events = futures_util::stream::unfold(
        state,
        |(sub, mut buf, mut ready, mut shutdown, mut done)| async move {
            loop {
                if let Some(ev) = ready.pop_front() {
                    return Some((Ok(ev), (sub, buf, ready, shutdown, done)));
                }
                if done || *shutdown.borrow() {
                    return None;
                }
                buf.clear();
                match sub.outbox.drain_into(&mut buf, &sub.hub) {
                    Drain::Data { msgs } => {
                        Metrics::add(&sub.hub.metrics().deliveries, msgs);
                    }
                    Drain::Finished => done = true,
                    Drain::Empty => {
                        tokio::select! {
                            _ = sub.outbox.wait() => {}
                            _ = shutdown.changed() => {}
                        }
                        continue;
                    }
                    Drain::Later(at) => {
                        tokio::select! {
                            _ = tokio::time::sleep_until(at) => {}
                            _ = shutdown.changed() => {}
                        }
                        continue;
                    }
                }
                let now = crate::server::now_ms();
                for line in buf.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                    if let Some(ev) = to_event(line, sub.hub.instance(), now) {
                        ready.push_back(ev);
                    }
                }
            }
        },
    );
    let keepalive = KeepAlive::new().interval(hub.config().ping_interval());
    Ok(Sse::new(events).keep_alive(keepalive))
}

/// The fields of a hub frame an event needs.
#[derive(Deserialize)]
struct Head<'a> {
    op: &'a str,
    seq: Option<u64>,
}

/// One outbox line as an event: `msg` (id = seq, with the hub's `time` in
/// Unix milliseconds), `snapshot` (the end of the initial values, with the
/// hub's `instance` id) or `error` (the hub is closing the stream).
fn to_event(line: &[u8], instance: &str, now_ms: u64) -> Option<Event> {
    let text = std::str::from_utf8(line).ok()?;
    let head: Head<'_> = serde_json::from_str(text).ok()?;
    match head.op {
        "msg" => {
            let seq = head.seq?;
            let data = format!("{{\"time\":{now_ms},{}", text.strip_prefix('{')?);
            Some(Event::default().id(seq.to_string()).event("msg").data(data))
        }
        "ok" => {
            let data = serde_json::json!({"op": "ok", "seq": head.seq, "instance": instance});
            Some(Event::default().event("snapshot").data(data.to_string()))
        }
        "err" => Some(Event::default().event("error").data(text)),
        _ => None,
    }
}
