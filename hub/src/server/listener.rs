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
use super::reload::supervise;
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
    if let Ok(addr) = listener.local_addr() {
        hub.automation_link().set_listener(addr);
    }
    if hub.tls().is_some() {
        // Automation trusts the hub's own certificate, renewed or not, whatever names it holds.
        let weak = Arc::downgrade(&hub);
        hub.automation_link()
            .set_tls(crate::tls::PinnedServer::client_config(move || {
                Some(weak.upgrade()?.tls()?.own_certificate().clone())
            }));
    }
    let timer = tokio::spawn(hub.clone().run_request_timer());
    tokio::spawn(crate::automation::scenes::tidy_after_restart(hub.clone()));
    // Each engine starts again when a reload changes its part of the configuration.
    let alerts = tokio::spawn(supervise(
        hub.clone(),
        stop_rx.clone(),
        |c| c.alerts.clone(),
        crate::automation::alerts::run,
    ));
    let schedules = tokio::spawn(supervise(
        hub.clone(),
        stop_rx.clone(),
        |c| c.schedules.clone(),
        |hub, stop| crate::automation::schedules::run(hub, stop, chrono::Utc::now),
    ));
    let mqtt = tokio::spawn(supervise(
        hub.clone(),
        stop_rx.clone(),
        |c| c.mqtt.clone(),
        |hub, stop| async move {
            if let Some(m) = hub.config().mqtt.clone() {
                crate::mqtt::bridge::run(hub, m, stop).await;
            }
        },
    ));
    // Cluster mode: set before any client connects, so claims meet the leases.
    let cluster = hub.config().cluster.clone().map(|c| {
        let shared = Arc::new(crate::cluster::Shared::new(
            hub.instance().to_owned(),
            c.lease(),
        ));
        hub.set_cluster(shared.clone());
        tokio::spawn(crate::cluster::run(hub.clone(), c, shared, stop_rx.clone()))
    });
    // Kept until shutdown; dropping it withdraws the records.
    let _advert = match (
        hub.config().mdns,
        listener.local_addr(),
        http.as_ref().map(TcpListener::local_addr),
    ) {
        (true, Ok(wire), Some(Ok(web))) => crate::mdns::advertise(wire, web, hub.tls().is_some())
            .map_err(|e| tracing::warn!("not advertised on the LAN: {e}"))
            .ok(),
        _ => None,
    };
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
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, alerts).await;
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, schedules).await;
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, mqtt).await;
    if let Some(cluster) = cluster {
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, cluster).await;
    }
    hub.automation_link().close().await;
    if let Some(j) = hub.journal() {
        hub.audit_hub("hub_stopped", "shut down".into());
        j.close();
    }
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

/// Binds a listening socket with room for `backlog` connections waiting to
/// be accepted, so a connection storm does not overflow into SYN retries.
pub fn bind(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// Raises the soft limit on open files to the hard limit, and warns when
/// it is still below what the configured limits need.
pub fn check_descriptors(config: &HubConfig) {
    let need = config.descriptors_needed();
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim = raised;
            }
        }
    }
    let open = lim.rlim_cur;
    if open < need {
        tracing::warn!(
            open_files = open,
            needed = need,
            "the open-file limit is below what max_connections + max_unauthenticated + max_http_connections need; raise it (ulimit -n, LimitNOFILE=) or lower those limits"
        );
    }
}

/// Why an embedded hub could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener could not be bound.
    #[error(transparent)]
    Bind(#[from] std::io::Error),
    /// The journal could not be opened.
    #[error(transparent)]
    Journal(#[from] crate::journal::JournalError),
    /// The TLS files could not be used.
    #[error("tls: {0}")]
    Tls(#[from] patchbay_client::tls::TlsError),
}

/// The hub for `config`: with its TLS files read when `[tls]` is set, and
/// its journal (and the retained values it kept) when `data_dir` is set.
pub fn open_hub(config: HubConfig) -> Result<Arc<Hub>, StartError> {
    let tls = match &config.tls {
        Some(t) => {
            let tls = crate::tls::ServerTls::load(t)?;
            if let Some(why) = tls.invalid_now() {
                // Started anyway: the hub's own automation still runs, and a
                // renewed certificate is taken at the next reload.
                tracing::error!(
                    "{why}: clients will refuse to connect until it is renewed (then reload)"
                );
            }
            Some(Arc::new(tls))
        }
        None => None,
    };
    let hub = match config.journal() {
        Some(jc) => {
            let (journal, restored) = crate::journal::Journal::open(&jc)?;
            Hub::with_journal(config, journal, restored)
        }
        None => Hub::new(config),
    };
    hub.set_tls(tls);
    Ok(hub)
}

/// Binds `config.listen` and `config.http_listen` and serves in a background task.
pub async fn start(config: HubConfig) -> Result<RunningHub, StartError> {
    check_descriptors(&config);
    let listener = bind(config.listen, config.listen_backlog)?;
    let addr = listener.local_addr()?;
    let http = bind(config.http_listen, config.listen_backlog)?;
    let http_addr = http.local_addr()?;
    let hub = open_hub(config)?;
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
