//! `patchbay-sim`: simulated projectors for trying patchbay without hardware.
//!
//! Reads control commands on stdin, one per line: `state`, `drop`,
//! `silent on|off`, `failure on|off`, `lamp-error on|off`, and for a pty
//! `unplug` / `plug`. Runs until Ctrl-C.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use patchbay_drivers::sim::escvp21::{self, PtyDevice};
use patchbay_drivers::sim::{panasonic, pjlink, ProjectorConfig, Sim};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;

/// Simulated projectors speaking PJLink or Epson ESC/VP21.
#[derive(Parser)]
#[command(name = "patchbay-sim", version)]
struct Cli {
    #[command(subcommand)]
    protocol: Protocol,
}

#[derive(Subcommand)]
enum Protocol {
    /// A PJLink projector on a TCP port.
    Pjlink {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:4352")]
        listen: SocketAddr,
        /// Require PJLink authentication with this password.
        #[arg(long)]
        password: Option<String>,
        /// PJLink class (1 or 2).
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=2))]
        class: u8,
        /// Close connections idle this long, in milliseconds.
        #[arg(long, default_value_t = 30_000)]
        idle_close_ms: u64,
        #[command(flatten)]
        common: Common,
    },
    /// An Epson projector on a pseudo-terminal (serial) or TCP (ESC/VP.net).
    Escvp21 {
        /// Serve on a new pseudo-terminal; prints the path a driver should open.
        #[arg(long, conflicts_with = "listen", required_unless_present = "listen")]
        pty: bool,
        /// With --pty: the stable path to link to the pty [default: a file in the temp dir].
        #[arg(long, requires = "pty")]
        link: Option<PathBuf>,
        /// Serve ESC/VP.net on this TCP address instead.
        #[arg(long)]
        listen: Option<SocketAddr>,
        #[command(flatten)]
        common: Common,
    },
    /// A Panasonic projector on its NTCONTROL port (one command per connection).
    Panasonic {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:1024")]
        listen: SocketAddr,
        /// Protect mode: commands carry an MD5 digest of the user, this password and the greeting.
        #[arg(long)]
        password: Option<String>,
        /// The user name for protect mode.
        #[arg(long, default_value = "admin1")]
        user: String,
        #[command(flatten)]
        common: Common,
    },
    /// A device simulated from a profile: a library name (`samsung-mdc`) or a file.
    Profile {
        /// The profile.
        profile: String,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// A profile variable, `name=value` (repeatable), e.g. `--var id=02`.
        #[arg(long = "var", value_parser = parse_var)]
        vars: Vec<(String, String)>,
        /// Serve VISCA over IP (UDP) on the address instead of TCP.
        #[arg(long)]
        visca_ip: bool,
    },
}

fn parse_var(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("`{s}`: give name=value"))
}

#[derive(Args)]
struct Common {
    /// Projector name.
    #[arg(long, default_value = "Simulated Projector")]
    name: String,
    /// Model name.
    #[arg(long, default_value = "SIM-1000")]
    model: String,
    /// Warm-up time in milliseconds.
    #[arg(long, default_value_t = 3000)]
    warmup_ms: u64,
    /// Cool-down time in milliseconds.
    #[arg(long, default_value_t = 2000)]
    cooldown_ms: u64,
}

impl Common {
    fn config(&self) -> ProjectorConfig {
        ProjectorConfig {
            name: self.name.clone(),
            model: self.model.clone(),
            warmup: Duration::from_millis(self.warmup_ms),
            cooldown: Duration::from_millis(self.cooldown_ms),
            ..ProjectorConfig::default()
        }
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            let line = patchbay_client::report::error_line(e.as_ref());
            eprintln!("patchbay-sim: {line}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    // Logs on stderr, level from RUST_LOG (default info), colours only on a terminal.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let cli = Cli::parse();
    let mut pty = None;
    if let Protocol::Profile {
        profile,
        listen,
        vars,
        visca_ip,
    } = &cli.protocol
    {
        return run_profile(profile, *listen, vars, *visca_ip).await;
    }
    let sim = match cli.protocol {
        Protocol::Pjlink {
            listen,
            password,
            class,
            idle_close_ms,
            common,
        } => {
            let sim = Sim::new(ProjectorConfig {
                password,
                class,
                idle_close: Duration::from_millis(idle_close_ms),
                ..common.config()
            });
            let listener = TcpListener::bind(listen)
                .await
                .with_context(|| format!("cannot listen on {listen}"))?;
            let at = listener.local_addr()?;
            println!("pjlink simulator listening on {at}");
            // Class 2 search on UDP, on the same address (4352 by default).
            let udp = tokio::net::UdpSocket::bind(at)
                .await
                .with_context(|| format!("cannot listen for searches on udp {at}"))?;
            tokio::spawn(pjlink::serve_search(
                udp,
                sim.clone(),
                pjlink::sim_mac(at.port()),
            ));
            tokio::spawn(pjlink::serve(listener, sim.clone()));
            sim
        }
        Protocol::Escvp21 {
            pty: use_pty,
            link,
            listen,
            common,
        } => {
            let sim = Sim::new(common.config());
            if use_pty {
                let link = link.unwrap_or_else(|| {
                    std::env::temp_dir()
                        .join(format!("patchbay-sim-escvp21-{}", std::process::id()))
                });
                let dev = PtyDevice::start(sim.clone(), &link)
                    .context("cannot create a pseudo-terminal")?;
                println!("escvp21 simulator on serial port {}", dev.path().display());
                pty = Some(dev);
            } else if let Some(listen) = listen {
                let listener = TcpListener::bind(listen)
                    .await
                    .with_context(|| format!("cannot listen on {listen}"))?;
                println!(
                    "escvp21 simulator (ESC/VP.net) listening on {}",
                    listener.local_addr()?
                );
                tokio::spawn(escvp21::serve_net(listener, sim.clone()));
            } else {
                bail!("give --pty or --listen");
            }
            sim
        }
        Protocol::Panasonic {
            listen,
            password,
            user,
            common,
        } => {
            let sim = Sim::new(ProjectorConfig {
                password,
                inputs: panasonic::inputs(),
                ..common.config()
            });
            let listener = TcpListener::bind(listen)
                .await
                .with_context(|| format!("cannot listen on {listen}"))?;
            println!(
                "panasonic simulator (NTCONTROL) listening on {}",
                listener.local_addr()?
            );
            tokio::spawn(panasonic::serve(listener, sim.clone(), user));
            sim
        }
        Protocol::Profile { .. } => unreachable!("handled above"),
    };
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let mut stdin_open = true;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            line = stdin.next_line(), if stdin_open => match line {
                Ok(Some(line)) => {
                    let answer = match (line.trim(), pty.as_mut()) {
                        ("unplug", Some(dev)) => { dev.unplug(); "ok".to_owned() }
                        ("plug", Some(dev)) => dev.plug().map(|()| "ok".to_owned()).unwrap_or_else(|e| format!("error: {e}")),
                        (other, _) => sim.control(other),
                    };
                    println!("{answer}");
                }
                _ => stdin_open = false,
            },
        }
    }
    Ok(())
}

/// Serves a device simulated from a profile until Ctrl-C; `state` on stdin prints its values.
async fn run_profile(
    name: &str,
    listen: SocketAddr,
    vars: &[(String, String)],
    visca_ip: bool,
) -> anyhow::Result<()> {
    use patchbay_drivers::line::{sim, LineProfile};
    let path = std::path::Path::new(name);
    let profile = if path.extension().is_some() || path.components().count() > 1 {
        LineProfile::load(path)?
    } else {
        patchbay_drivers::library::get(name).ok_or_else(|| {
            anyhow::anyhow!(
                "no profile `{name}` in the library (patchbay-agent profiles lists them)"
            )
        })??
    };
    let vars = vars.iter().cloned().collect();
    let sim = std::sync::Arc::new(sim::Simulator::new(&profile, &vars)?);
    if visca_ip {
        let socket = tokio::net::UdpSocket::bind(listen)
            .await
            .with_context(|| format!("cannot listen on udp {listen}"))?;
        println!(
            "{name} simulator (VISCA over IP) listening on {}",
            socket.local_addr()?
        );
        tokio::spawn(sim::serve_visca_ip(socket, sim.clone()));
    } else {
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        println!("{name} simulator listening on {}", listener.local_addr()?);
        tokio::spawn(sim::serve(listener, sim.clone()));
    }
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let mut stdin_open = true;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            line = stdin.next_line(), if stdin_open => match line {
                Ok(Some(line)) => match line.trim() {
                    "state" => println!("{}", serde_json::to_string(&sim.state())?),
                    other => println!("error: unknown command `{other}` (state)"),
                },
                _ => stdin_open = false,
            },
        }
    }
}
