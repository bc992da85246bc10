//! The accept loop and graceful shutdown.
//!
//! Shutdown is a `watch` signal every connection listens to: on it each
//! connection sends `err shutting_down`, flushes, and closes; the server
//! waits for them (bounded) before returning.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::connection::serve_tcp;
use super::hub::Hub;
use crate::config::HubConfig;

/// How long shutdown waits for connections to flush and close.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Accepts wire-protocol clients on `listener` (and HTTP on `http`) until
/// `shutdown` resolves, then closes every connection.
pub async fn serve(
    hub: Arc<Hub>,
    listener: TcpListener,
    http: Option<TcpListener>,
    shutdown: impl Future<Output = ()>,
) {
    let (stop_tx, stop_rx) = watch::channel(false);
    let timer = tokio::spawn(hub.clone().run_request_timer());
    let http = http.map(|l| tokio::spawn(crate::http::serve(hub.clone(), l, stop_rx.clone())));
    let mut conns = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    conns.spawn(serve_tcp(hub.clone(), stream, peer, stop_rx.clone()));
                }
                Err(e) => {
                    // Usually out of file descriptors: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    tracing::info!(connections = conns.len(), "shutting down");
    drop(listener);
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        conns.abort_all();
    }
    if let Some(mut http) = http {
        if tokio::time::timeout(SHUTDOWN_GRACE, &mut http)
            .await
            .is_err()
        {
            http.abort();
        }
    }
    timer.abort();
}

/// A hub serving in the background, for embedding (the demo, tests).
pub struct RunningHub {
    /// The shared state, for inspection.
    pub hub: Arc<Hub>,
    /// The bound wire-protocol address.
    pub addr: SocketAddr,
    /// The bound HTTP address.
    pub http_addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl RunningHub {
    /// Shuts the hub down and waits until every connection is closed.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

/// Binds `config.listen` and `config.http_listen` and serves in a background task.
pub async fn start(config: HubConfig) -> std::io::Result<RunningHub> {
    let listener = TcpListener::bind(config.listen).await?;
    let addr = listener.local_addr()?;
    let http = TcpListener::bind(config.http_listen).await?;
    let http_addr = http.local_addr()?;
    let hub = Hub::new(config);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(serve(hub.clone(), listener, Some(http), async {
        let _ = stopped.await;
    }));
    Ok(RunningHub {
        hub,
        addr,
        http_addr,
        stop: Some(stop),
        task,
    })
}
