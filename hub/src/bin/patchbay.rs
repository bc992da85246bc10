//! `patchbay`: the command-line client.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use patchbay_hub::client::{connect, ClientOptions, Event, Message};
use patchbay_hub::devices::{group, parse_assignments, DeviceView, DEVICE_PATTERNS};
use serde_json::Value;

/// Talk to a patchbay hub: list and control devices, publish, subscribe, send requests.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// Hub address (host:port).
    #[arg(
        long,
        global = true,
        env = "PATCHBAY_HUB",
        default_value = "127.0.0.1:7400"
    )]
    hub: String,
    /// Token, when the hub requires one.
    #[arg(long, global = true, env = "PATCHBAY_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Name this client gives the hub.
    #[arg(long, global = true, default_value = "patchbay-cli")]
    name: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List devices with their location, driver, reachability, power and input.
    Devices {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one device: description, reachability and every state field.
    Get {
        /// Device id.
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Change settings and print the state the device confirms, e.g. `set proj-1 power=on input=hdmi1`.
    Set {
        /// Device id.
        id: String,
        /// Settings as key=value.
        #[arg(required = true)]
        settings: Vec<String>,
        /// How long to wait for the device (warm-up can take a minute), in milliseconds.
        #[arg(long, default_value_t = 120_000)]
        timeout_ms: u64,
        /// Correlation id [default: generated].
        #[arg(long)]
        cid: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print live messages on PATTERN [default: dev/#] until Ctrl-C.
    Watch {
        /// Tag pattern.
        #[arg(default_value = "dev/#")]
        pattern: String,
        /// Print each message as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Publish BODY on TAG (BODY is JSON; anything else is sent as a string).
    Pub {
        /// Concrete tag, e.g. `dev/proj-1/note`.
        tag: String,
        /// Message body.
        body: String,
        /// Keep it as the tag's latest value for late joiners (`null` deletes).
        #[arg(long)]
        retain: bool,
        /// Correlation id to attach.
        #[arg(long)]
        cid: Option<String>,
    },
    /// Print messages on PATTERNs (`+` one segment, `#` the rest) until Ctrl-C.
    Sub {
        /// Tag patterns.
        #[arg(required = true)]
        patterns: Vec<String>,
        /// First print the retained values that match.
        #[arg(long)]
        snapshot: bool,
        /// Exit after this many messages.
        #[arg(long)]
        count: Option<u64>,
        /// Print each message as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Send a request to the owner of TAG and print the reply.
    Req {
        /// Concrete tag, e.g. `dev/proj-1/set`.
        tag: String,
        /// Request body (JSON; anything else is sent as a string).
        #[arg(default_value = "null")]
        body: String,
        /// How long to wait for the reply, in milliseconds.
        #[arg(long, default_value_t = 10_000)]
        timeout_ms: u64,
        /// Correlation id to attach.
        #[arg(long)]
        cid: Option<String>,
    },
}

async fn load_devices(
    client: &patchbay_hub::client::Client,
    events: &mut patchbay_hub::client::Events,
    id: Option<&str>,
) -> anyhow::Result<BTreeMap<String, DeviceView>> {
    let patterns: Vec<String> = match id {
        Some(id) => ["meta", "state", "online"]
            .iter()
            .map(|p| format!("dev/{id}/{p}"))
            .collect(),
        None => DEVICE_PATTERNS.iter().map(|p| p.to_string()).collect(),
    };
    let messages = events.snapshot(client, &patterns).await?;
    Ok(group(messages.into_iter().map(|m| (m.tag, m.body))))
}

async fn load_device(
    client: &patchbay_hub::client::Client,
    events: &mut patchbay_hub::client::Events,
    id: &str,
) -> anyhow::Result<DeviceView> {
    let mut devices = load_devices(client, events, Some(id)).await?;
    match devices.remove(id) {
        Some(d) if d.meta.is_some() => Ok(d),
        _ => anyhow::bail!(
            "unknown device `{id}`: no agent has published dev/{id}/meta (try `patchbay devices`)"
        ),
    }
}

fn print_devices(devices: &BTreeMap<String, DeviceView>) {
    let rows: Vec<[String; 7]> = devices
        .values()
        .map(|d| {
            [
                d.id.clone(),
                d.meta_str("name").to_owned(),
                d.meta_str("location").to_owned(),
                d.meta_str("driver").to_owned(),
                if d.is_online() {
                    "yes".into()
                } else {
                    "no".into()
                },
                d.state_text("power"),
                d.state_text("input"),
            ]
        })
        .collect();
    let header = [
        "ID", "NAME", "LOCATION", "DRIVER", "ONLINE", "POWER", "INPUT",
    ]
    .map(String::from);
    let mut widths = header.clone().map(|h| h.len());
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    for r in std::iter::once(&header).chain(&rows) {
        let line: Vec<String> = r
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
    if rows.is_empty() {
        println!("(no devices: is an agent connected to this hub?)");
    }
}

fn print_device(d: &DeviceView) {
    println!(
        "{}  {} ({} {}, {})",
        d.id,
        d.meta_str("name"),
        d.meta_str("manufacturer"),
        d.meta_str("model"),
        d.meta_str("driver")
    );
    println!("  {:<14} {}", "location", d.meta_str("location"));
    let reason = d.reason();
    let online = match (d.is_online(), reason) {
        (true, _) => "yes".to_owned(),
        (false, Some(r)) => format!("no: {r}"),
        (false, None) => "no".to_owned(),
    };
    println!("  {:<14} {}", "online", online);
    print_state(d);
}

fn print_state(d: &DeviceView) {
    if let Some(Value::Object(state)) = &d.state {
        for key in state.keys() {
            println!("  {:<14} {}", key, d.state_text(key));
        }
    }
}

/// Prints each message as `render` makes it, until `count` messages, Ctrl-C,
/// or an error from the hub.
async fn follow(
    events: &mut patchbay_hub::client::Events,
    count: Option<u64>,
    render: impl Fn(Message) -> String,
) -> anyhow::Result<()> {
    let mut seen = 0u64;
    while count.is_none_or(|c| seen < c) {
        let event = tokio::select! {
            e = events.next() => e,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        match event.context("the hub closed the connection")? {
            Event::Message(m) => println!("{}", render(m)),
            Event::Error(e) => anyhow::bail!("{e}"),
            Event::Request(_) => continue,
        }
        seen += 1;
    }
    Ok(())
}

/// `HH:MM:SS.mmm` (UTC) of a Unix time in milliseconds.
fn clock(ms: u64) -> String {
    let s = ms / 1000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        (s / 3600) % 24,
        (s / 60) % 60,
        s % 60,
        ms % 1000
    )
}

fn parse_body(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.to_owned()))
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("patchbay: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let opts = ClientOptions {
        name: cli.name.clone(),
        token: cli.token.clone(),
    };
    let (client, mut events) = connect(&cli.hub, &opts).await?;
    match cli.command {
        Command::Devices { json } => {
            let devices = load_devices(&client, &mut events, None).await?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&devices.values().collect::<Vec<_>>())?
                );
            } else {
                print_devices(&devices);
            }
        }
        Command::Get { id, json } => {
            let device = load_device(&client, &mut events, &id).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&device)?);
            } else {
                print_device(&device);
            }
        }
        Command::Set {
            id,
            settings,
            timeout_ms,
            cid,
            json,
        } => {
            let device = load_device(&client, &mut events, &id).await?;
            let meta = device.meta.clone().unwrap_or_default();
            let desired =
                parse_assignments(&meta, &settings).map_err(|e| anyhow::anyhow!("{id}: {e}"))?;
            let cid = cid.unwrap_or_else(|| {
                format!(
                    "cli-{}-{}",
                    std::process::id(),
                    patchbay_hub::server::now_ms()
                )
            });
            let state = client
                .request(
                    &format!("dev/{id}/set"),
                    &Value::Object(desired),
                    Duration::from_millis(timeout_ms),
                    Some(&cid),
                )
                .await
                .with_context(|| format!("{id} (cid {cid})"))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&state)?);
            } else {
                let confirmed = DeviceView {
                    state: Some(state),
                    ..device
                };
                println!("{id}: confirmed (cid {cid})");
                print_state(&confirmed);
            }
        }
        Command::Watch { pattern, json } => {
            client.subscribe(&[pattern], false).await?;
            follow(&mut events, None, |m| {
                if json {
                    serde_json::json!({"tag": m.tag, "body": m.body, "from": m.from, "seq": m.seq, "cid": m.cid})
                        .to_string()
                } else {
                    let cid = m.cid.map(|c| format!("  cid={c}")).unwrap_or_default();
                    format!("{} {} {}{cid}", clock(patchbay_hub::server::now_ms()), m.tag, m.body)
                }
            })
            .await?;
        }
        Command::Pub {
            tag,
            body,
            retain,
            cid,
        } => {
            let seq = client
                .publish_confirmed(&tag, &parse_body(&body), retain, cid.as_deref())
                .await?;
            println!("published {tag} (seq {seq})");
        }
        Command::Sub {
            patterns,
            snapshot,
            count,
            json,
        } => {
            client.subscribe(&patterns, snapshot).await?;
            follow(&mut events, count, |m| {
                if json {
                    serde_json::json!({"tag": m.tag, "body": m.body, "from": m.from, "seq": m.seq, "retained": m.retained, "cid": m.cid})
                        .to_string()
                } else {
                    format!("{:>8} {} {}", m.seq, m.tag, m.body)
                }
            })
            .await?;
        }
        Command::Req {
            tag,
            body,
            timeout_ms,
            cid,
        } => {
            let reply = client
                .request(
                    &tag,
                    &parse_body(&body),
                    Duration::from_millis(timeout_ms),
                    cid.as_deref(),
                )
                .await?;
            println!("{}", serde_json::to_string_pretty(&reply)?);
        }
    }
    Ok(())
}
