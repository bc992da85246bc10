//! `patchbay-agent`: runs the devices in a configuration file, or the demo.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use patchbay_agents::config::AgentConfig;
use patchbay_agents::demo::{self, DemoOptions};
use tokio::sync::watch;

/// The patchbay agent: drives devices over serial or TCP and keeps their
/// state on the hub.
#[derive(Parser)]
#[command(name = "patchbay-agent", version)]
struct Cli {
    /// Agent configuration (TOML; see README.md).
    #[arg(long, short, env = "PATCHBAY_AGENT_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Start a hub, simulated devices and an agent in this process.
    Demo {
        /// Hub wire-protocol address.
        #[arg(long, default_value = "127.0.0.1:7400")]
        hub_listen: SocketAddr,
        /// Hub HTTP address (API and console).
        #[arg(long, default_value = "127.0.0.1:8080")]
        http_listen: SocketAddr,
        /// Allow listening beyond loopback although the demo hub has no tokens.
        #[arg(long)]
        insecure: bool,
        /// Bridge the demo's devices to an MQTT broker, with Home Assistant
        /// discovery: `--mqtt mqtt://127.0.0.1:1883`.
        #[arg(long)]
        mqtt: Option<String>,
    },
    /// Check the configuration file and exit.
    Check,
    /// Find PJLink class 2 projectors on the network (`%2SRCH` over UDP) and
    /// list each with its address, MAC, name, class and model.
    Discover {
        /// Where to send the search: the broadcast address (or one projector), port 4352.
        #[arg(long, default_value = "255.255.255.255:4352")]
        to: SocketAddr,
        /// Where to listen for answers; projectors answer to port 4352.
        #[arg(long, default_value = "0.0.0.0:4352")]
        bind: SocketAddr,
        /// How long to wait for answers, in milliseconds.
        #[arg(long, default_value_t = 5_000)]
        wait_ms: u64,
        /// PJLink password, to read names from projectors that require one.
        #[arg(long, env = "PATCHBAY_PJLINK_PASSWORD")]
        password: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// List the device profiles built in (`profile = "<name>"` in a device).
    Profiles {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    patchbay_hub::init_logging();
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            let line = patchbay_client::report::error_line(e.as_ref());
            eprintln!("patchbay-agent: {line}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn load(path: Option<PathBuf>) -> anyhow::Result<AgentConfig> {
    let path =
        path.ok_or_else(|| anyhow::anyhow!("give --config FILE (or run `patchbay-agent demo`)"))?;
    Ok(AgentConfig::load(&path)?)
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        patchbay_hub::service::stopping();
        let _ = stop_tx.send(true);
    });
    match cli.command {
        Some(Command::Demo {
            hub_listen,
            http_listen,
            insecure,
            mqtt,
        }) => {
            demo::run(
                DemoOptions {
                    hub_listen,
                    http_listen,
                    insecure,
                    mqtt,
                },
                stop_rx,
            )
            .await
        }
        Some(Command::Profiles { json }) => profiles(json),
        Some(Command::Discover {
            to,
            bind,
            wait_ms,
            password,
            json,
        }) => discover(to, bind, wait_ms, password, json).await,
        Some(Command::Check) => {
            let cfg = load(cli.config)?;
            println!(
                "configuration ok: {} devices, hub {}",
                cfg.devices.len(),
                cfg.hub
            );
            Ok(())
        }
        None => {
            let cfg = load(cli.config)?;
            tracing::info!(hub = %cfg.hub, devices = cfg.devices.len(), "agent starting");
            patchbay_hub::service::ready(&format!(
                "{} devices, hub {}",
                cfg.devices.len(),
                cfg.hub
            ));
            patchbay_hub::service::spawn_watchdog(|| true);
            patchbay_agents::runtime::run(cfg, stop_rx).await
        }
    }
}

/// Searches for PJLink projectors and prints what answered.
async fn discover(
    to: SocketAddr,
    bind: SocketAddr,
    wait_ms: u64,
    password: Option<String>,
    json: bool,
) -> anyhow::Result<()> {
    use patchbay_drivers::pjlink::{search, PjlinkOptions};
    let opts = PjlinkOptions {
        password,
        command_timeout: std::time::Duration::from_secs(3),
        ..PjlinkOptions::default()
    };
    let wait = std::time::Duration::from_millis(wait_ms);
    let found = search::discover(to, bind, wait, opts).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&found)?);
        return Ok(());
    }
    if found.is_empty() {
        println!(
            "no PJLink class 2 projector answered within {wait_ms} ms (class 1 projectors do not answer searches)"
        );
        return Ok(());
    }
    println!(
        "{:<22}  {:<17}  CLASS  {:<24}  MODEL",
        "ADDRESS", "MAC", "NAME"
    );
    for f in &found {
        let class = f.class.map(|c| c.to_string()).unwrap_or_else(|| "?".into());
        println!(
            "{:<22}  {:<17}  {:<5}  {:<24}  {}{}",
            f.address,
            f.mac,
            class,
            f.name.as_deref().unwrap_or("?"),
            f.model.as_deref().unwrap_or("?"),
            f.note
                .as_ref()
                .map(|n| format!("  ({n})"))
                .unwrap_or_default()
        );
    }
    Ok(())
}

/// Prints the built-in profile library.
fn profiles(json: bool) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    for (name, profile) in patchbay_drivers::library::all() {
        let p = profile?;
        rows.push(serde_json::json!({
            "name": name,
            "manufacturer": p.manufacturer,
            "model": p.model,
            "models": p.models,
            "protocol": p.protocol,
            "category": p.category,
            "source": p.source,
        }));
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    let cell = |v: &serde_json::Value, k: &str| v[k].as_str().unwrap_or("").to_owned();
    let widths = ["name", "manufacturer", "category", "protocol"].map(|k| {
        rows.iter()
            .map(|r| cell(r, k).len())
            .max()
            .unwrap_or(0)
            .max(k.len())
    });
    println!(
        "{:w0$}  {:w1$}  {:w2$}  {:w3$}  MODELS",
        "NAME",
        "MANUFACTURER",
        "KIND",
        "PROTOCOL",
        w0 = widths[0],
        w1 = widths[1],
        w2 = widths[2],
        w3 = widths[3]
    );
    for r in &rows {
        let models: Vec<&str> = r["models"]
            .as_array()
            .map(|a| a.iter().filter_map(|m| m.as_str()).collect())
            .unwrap_or_default();
        println!(
            "{:w0$}  {:w1$}  {:w2$}  {:w3$}  {}",
            cell(r, "name"),
            cell(r, "manufacturer"),
            cell(r, "category"),
            cell(r, "protocol"),
            models.join(", "),
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2],
            w3 = widths[3]
        );
    }
    Ok(())
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler installs");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
