//! `patchbay`: the command-line client.

use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use patchbay_hub::client::{connect, ClientOptions, Event};
use serde_json::Value;

/// Talk to a patchbay hub: publish, subscribe, send requests.
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
            let mut seen = 0u64;
            while count.is_none_or(|c| seen < c) {
                let event = tokio::select! {
                    e = events.next() => e,
                    _ = tokio::signal::ctrl_c() => return Ok(()),
                };
                match event.context("the hub closed the connection")? {
                    Event::Message(m) if json => println!(
                        "{}",
                        serde_json::json!({"tag": m.tag, "body": m.body, "from": m.from, "seq": m.seq, "retained": m.retained, "cid": m.cid})
                    ),
                    Event::Message(m) => println!("{:>8} {} {}", m.seq, m.tag, m.body),
                    Event::Error(e) => anyhow::bail!("{e}"),
                    Event::Request(_) => continue,
                }
                seen += 1;
            }
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
