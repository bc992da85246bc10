//! The wire protocol over WebSocket: each text message carries one frame
//! (several newline-separated frames are accepted too), so a browser is a
//! full client. Auth is the protocol's own `hello` with a token.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use tokio::time::Instant;

use super::AppState;
use crate::server::{Drain, Flow, Hub, Metrics, Outbox, Session};

/// Upgrades to a WebSocket speaking the wire protocol.
#[utoipa::path(get, path = "/ws", tag = "events",
    responses((status = 101, description = "Switching to a WebSocket; each text message is one wire-protocol frame")))]
pub async fn upgrade(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ws: WebSocketUpgrade,
) -> Response {
    let max = st.hub.config().max_frame_bytes;
    let shutdown = st.shutdown.clone();
    ws.max_message_size(max)
        .on_failed_upgrade(|e| tracing::debug!("websocket upgrade failed: {e}"))
        .on_upgrade(move |socket| serve(st.hub.clone(), socket, peer, shutdown))
}

async fn serve(
    hub: Arc<Hub>,
    socket: WebSocket,
    peer: SocketAddr,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let (mut sink, mut stream) = socket.split();
    let outbox = Outbox::new(hub.config().outbound_queue_bytes);
    let mut session = match Session::open(
        hub.clone(),
        peer,
        outbox.clone(),
        crate::server::Transport::WebSocket,
    ) {
        Ok(s) => s,
        Err(e) => {
            let frame = String::from_utf8_lossy(&e.code.frame(&e.message))
                .trim_end()
                .to_owned();
            let _ = sink.send(Message::Text(frame.into())).await;
            return;
        }
    };
    let writer_outbox = outbox.clone();
    let writer_hub = hub.clone();
    // The HTTP connection's write deadline (`serve.rs`) bounds each send.
    let writer = tokio::spawn(async move {
        let mut buf = Vec::new();
        loop {
            buf.clear();
            let state = writer_outbox.drain_into(&mut buf, &writer_hub);
            for line in buf.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                let text = Utf8Bytes::from(String::from_utf8_lossy(line).into_owned());
                if sink.feed(Message::Text(text)).await.is_err() {
                    writer_outbox.kill(bytes::Bytes::new());
                    return;
                }
            }
            if sink.flush().await.is_err() {
                writer_outbox.kill(bytes::Bytes::new());
                return;
            }
            match state {
                Drain::Data { msgs } => {
                    Metrics::add(&writer_hub.metrics().deliveries, msgs);
                }
                Drain::Empty => writer_outbox.wait().await,
                Drain::Later(at) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => {}
                        _ = writer_outbox.wait() => {}
                    }
                }
                Drain::Finished => {
                    let _ = sink.close().await;
                    return;
                }
            }
        }
    });
    let check = tokio::time::sleep_until(session.next_check());
    tokio::pin!(check);
    loop {
        tokio::select! {
            _ = outbox.killed() => break,
            _ = shutdown.changed() => {
                outbox.end_with(bytes::Bytes::from(crate::protocol::ErrorCode::ShuttingDown.frame("the hub is shutting down")));
                break;
            }
            _ = &mut check => {
                if session.tick(Instant::now()) == Flow::Close {
                    break;
                }
                check.as_mut().reset(session.next_check());
            }
            msg = stream.next() => {
                let data = match msg {
                    Some(Ok(Message::Text(t))) => t.as_bytes().to_vec(),
                    Some(Ok(Message::Binary(b))) => b.to_vec(),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => { session.alive(Instant::now()); continue }
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                };
                let mut flow = Flow::Continue;
                for line in data.split(|b| *b == b'\n') {
                    flow = session.handle_line(line);
                    if flow == Flow::Close {
                        break;
                    }
                }
                session.heard(Instant::now());
                if flow == Flow::Close {
                    break;
                }
            }
        }
    }
    drop(session);
    outbox.close();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), writer).await;
}
