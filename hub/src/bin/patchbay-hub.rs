//! `patchbay-hub`: runs the hub until Ctrl-C.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use patchbay_hub::config::HubConfig;
use patchbay_hub::server::{bind, check_descriptors, open_hub, serve};

/// The patchbay hub: routes tagged messages between agents, controllers and
/// operators, keeps the latest state of every device, and brokers commands.
#[derive(Parser, Clone)]
#[command(name = "patchbay-hub", version)]
struct Args {
    /// TOML configuration file (every field is optional; see README.md).
    #[arg(long, short, env = "PATCHBAY_HUB_CONFIG")]
    config: Option<PathBuf>,
    /// Wire-protocol address, overriding the config's `listen` [default: 127.0.0.1:7400].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// HTTP address (API, events, console), overriding the config's `http_listen` [default: 127.0.0.1:8080].
    #[arg(long)]
    http_listen: Option<SocketAddr>,
    /// Allow listening on a non-loopback address with no tokens configured.
    #[arg(long)]
    insecure: bool,
    /// Folder of the journal, overriding the config's `data_dir` [default: patchbay-data beside the config file, or in the working directory].
    #[arg(long, conflicts_with = "memory_only")]
    data_dir: Option<PathBuf>,
    /// Keep nothing on disk: no journal, and retained values are lost at exit.
    #[arg(long)]
    memory_only: bool,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    patchbay_hub::init_logging();
    let args = Args::parse();
    match run(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            let line = patchbay_client::report::error_line(e.as_ref());
            eprintln!("patchbay-hub: {line}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The configuration file with the command line's overrides: at start and
/// at every reload.
fn load(args: &Args) -> anyhow::Result<HubConfig> {
    let mut config = match &args.config {
        Some(path) => HubConfig::load(path)?,
        None => HubConfig::default(),
    };
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(http) = args.http_listen {
        config.http_listen = http;
    }
    config
        .check_exposure(args.insecure)
        .map_err(anyhow::Error::msg)?;
    if args.memory_only {
        config.data_dir = None;
    } else if let Some(dir) = &args.data_dir {
        config.data_dir = Some(dir.clone());
    } else if config.data_dir.is_none() {
        let beside = args
            .config
            .as_deref()
            .and_then(|c| c.parent())
            .filter(|p| !p.as_os_str().is_empty());
        config.data_dir = Some(match beside {
            Some(dir) => dir.join("patchbay-data"),
            None => PathBuf::from("patchbay-data"),
        });
    }
    Ok(config)
}

async fn run(args: Args) -> anyhow::Result<()> {
    let config = load(&args)?;
    // A journal that cannot be used stops the hub before it listens.
    let hub = open_hub(config.clone())?;
    if args.config.is_some() {
        let again = args.clone();
        hub.set_config_source(Box::new(move || {
            load(&again).map_err(|e| patchbay_client::report::error_line(e.as_ref()))
        }));
    }
    #[cfg(unix)]
    tokio::spawn(reload_on_sighup(hub.clone()));
    if let Some(j) = hub.journal() {
        tracing::info!(file = %j.path().display(), "journal open");
    }
    check_descriptors(&config);
    let listener = bind(config.listen, config.listen_backlog)
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let http = bind(config.http_listen, config.listen_backlog)
        .with_context(|| format!("cannot listen on {} (http)", config.http_listen))?;
    let addr = listener.local_addr()?;
    let http_addr = http.local_addr()?;
    // One write, and no panic if whoever started us has stopped reading stdout.
    let (tls, scheme) = match config.tls {
        Some(_) => (" with TLS", "https"),
        None => ("", "http"),
    };
    // The address stays the first line's last word, for scripts.
    let banner = format!(
        "patchbay-hub listening{tls} on {addr}\npatchbay-hub console and API on {scheme}://{http_addr}/\n"
    );
    let _ = std::io::Write::write_all(&mut std::io::stdout(), banner.as_bytes());
    tracing::info!(%addr, %http_addr, auth = config.auth_required(), "hub started");
    patchbay_hub::service::ready(&format!(
        "listening{tls} on {addr}, console on {scheme}://{http_addr}/"
    ));
    // The watchdog pings only while the hub's state can be taken: a hub
    // stuck holding it is restarted.
    let alive = hub.clone();
    patchbay_hub::service::spawn_watchdog(move || {
        let _ = alive.connection_count();
        true
    });
    let stop = async {
        shutdown_signal().await;
        patchbay_hub::service::stopping();
    };
    serve(hub, listener, Some(http), stop).await;
    tracing::info!("hub stopped");
    Ok(())
}

/// Reloads the configuration at every SIGHUP.
#[cfg(unix)]
async fn reload_on_sighup(hub: std::sync::Arc<patchbay_hub::server::Hub>) {
    let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        tracing::warn!("cannot handle SIGHUP; reload through POST /api/admin/reload");
        return;
    };
    while hup.recv().await.is_some() {
        let who = patchbay_hub::journal::Who {
            client: "SIGHUP".into(),
            transport: "signal".into(),
            ..Default::default()
        };
        // The outcome is logged and audited by the reload itself.
        let _ = patchbay_hub::server::reload::reload(&hub, who);
    }
}

/// Resolves on Ctrl-C or, on Unix, SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler installs");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
