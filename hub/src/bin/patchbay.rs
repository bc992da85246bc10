//! `patchbay`: the command-line client.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use patchbay_client::device::{group, parse_assignments, DeviceView, DEVICE_PATTERNS};
use patchbay_client::{Body, Client, ClientBuilder, Message, PublishOptions, RequestOptions};
use serde_json::value::RawValue;
use serde_json::Value;

/// Prints a line of text from the hub, control characters written out.
macro_rules! say {
    ($($arg:tt)*) => {
        println!("{}", safe(&format!($($arg)*)))
    };
}

/// Talk to a patchbay hub: list and control devices, publish, subscribe, send requests.
#[derive(Parser)]
#[command(name = "patchbay", version)]
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
    /// Connect over TLS (implied by the other --tls options); the hub's
    /// certificate is checked against the system's CAs unless --tls-ca is given.
    #[arg(long, global = true, env = "PATCHBAY_TLS", value_parser = clap::builder::BoolishValueParser::new())]
    tls: bool,
    /// CA certificates (PEM) the hub's certificate must chain to.
    #[arg(long, global = true, env = "PATCHBAY_TLS_CA", value_name = "FILE")]
    tls_ca: Option<std::path::PathBuf>,
    /// Client certificate (PEM), for hubs that require one.
    #[arg(
        long,
        global = true,
        env = "PATCHBAY_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    tls_cert: Option<std::path::PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(
        long,
        global = true,
        env = "PATCHBAY_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    tls_key: Option<std::path::PathBuf>,
    /// The name the hub's certificate must hold [default: the host of --hub].
    #[arg(
        long,
        global = true,
        env = "PATCHBAY_TLS_SERVER_NAME",
        value_name = "NAME"
    )]
    tls_server_name: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
#[allow(clippy::enum_variant_names)] // `command <cid>` is the word users type.
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
    /// Change settings and print the state the device confirms, e.g. `set proj-1 power=on input=hdmi1`;
    /// with `--group NAME` or `--room NAME`, on every member, e.g. `set --room "Lecture Hall 2" power=on`.
    Set {
        /// Device id (none with --group or --room).
        id: Option<String>,
        /// Settings as key=value.
        settings: Vec<String>,
        /// Every member of this group.
        #[arg(long, conflicts_with = "room")]
        group: Option<String>,
        /// Every device in this room (their `location`).
        #[arg(long)]
        room: Option<String>,
        /// How long to wait for the device (warm-up can take a minute), in milliseconds.
        #[arg(long, default_value_t = 120_000, value_parser = clap::value_parser!(u64).range(1..=600_000))]
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
    /// Show a device's history from the hub's journal: state changes, reachability, events.
    History {
        /// Device id.
        id: String,
        /// Only since: Unix ms, or a span before now (`90s`, `15m`, `2h`, `7d`).
        #[arg(long)]
        since: Option<String>,
        /// Only `state`, `online` or `event`.
        #[arg(long)]
        kind: Option<String>,
        /// Most rows.
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=1000))]
        limit: u64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List commands from the hub's journal: who sent what, when, and how it ended.
    Commands {
        /// Only this device.
        #[arg(long)]
        device: Option<String>,
        /// Only since: Unix ms, or a span before now (`90s`, `15m`, `2h`, `7d`).
        #[arg(long)]
        since: Option<String>,
        /// Most rows.
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=1000))]
        limit: u64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show what became of one command, by correlation id (also after a timeout).
    Command {
        /// Correlation id.
        cid: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run a scene and show its progress live (`scene run presentation`), or
    /// cancel a run under way (`scene cancel 1764108000123`).
    Scene {
        /// `run` or `cancel`.
        #[arg(value_parser = ["run", "cancel"])]
        action: String,
        /// The scene's name (`run`) or the run's id (`cancel`).
        name: String,
        /// Print each progress update as JSON.
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
    client: &Client,
    id: Option<&str>,
) -> anyhow::Result<BTreeMap<String, DeviceView>> {
    let patterns: Vec<String> = match id {
        Some(id) => ["meta", "state", "online"]
            .iter()
            .map(|p| format!("dev/{id}/{p}"))
            .collect(),
        None => DEVICE_PATTERNS.iter().map(|p| p.to_string()).collect(),
    };
    let mut sub = client.subscribe_with_snapshot(&patterns).await?;
    let messages = sub.snapshot().await?;
    Ok(group(messages.into_iter().map(|m| {
        let body = m.json::<Value>().unwrap_or(Value::Null);
        (m.tag().to_owned(), body)
    })))
}

async fn load_device(client: &Client, id: &str) -> anyhow::Result<DeviceView> {
    let mut devices = load_devices(client, Some(id)).await?;
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

/// Prints each message of `sub` as `render` makes it, until `count`
/// messages, Ctrl-C, or the end of the connection.
async fn follow(
    mut sub: patchbay_client::Subscription,
    count: Option<u64>,
    render: impl Fn(&Message) -> String,
) -> anyhow::Result<()> {
    let mut seen = 0u64;
    while count.is_none_or(|c| seen < c) {
        let message = tokio::select! {
            m = sub.next() => m,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let m = message.context("the hub closed the connection")?;
        println!("{}", render(&m));
        seen += 1;
    }
    Ok(())
}

/// A message as one JSON object.
fn message_json(m: &Message) -> String {
    let body: &RawValue = serde_json::from_str(m.body_str()).unwrap_or(RawValue::NULL);
    serde_json::json!({"tag": m.tag(), "body": body, "from": m.from(), "seq": m.seq(),
        "retained": m.is_retained(), "cid": m.cid()})
    .to_string()
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

fn parse_body(s: &str) -> Body {
    let v: Value = serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.to_owned()));
    Body::from(v)
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            let line = patchbay_client::report::error_line(e.as_ref());
            eprintln!("patchbay: {line}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Refuses a hub address without a port before trying to connect.
fn check_hub_address(addrs: &str) -> anyhow::Result<()> {
    // Several hubs of one cluster: `a:7400,b:7400`, tried in turn.
    for addr in addrs.split(',').map(str::trim) {
        check_one_address(addr)?;
    }
    Ok(())
}

fn check_one_address(addr: &str) -> anyhow::Result<()> {
    match addr.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && !host.ends_with(':') => {
            port.parse::<u16>().map(drop).map_err(|_| {
                anyhow::anyhow!("--hub {addr}: `{port}` is not a port number (give host:port, e.g. {host}:7400)")
            })
        }
        _ => anyhow::bail!(
            "--hub {addr}: the port is missing (give host:port, e.g. {addr}:7400)"
        ),
    }
}

/// Shows what a device reports while a command runs: a spinner on a
/// terminal, a line per change otherwise. Both on stderr, so stdout keeps
/// only the result.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    last: String,
}

impl Progress {
    fn new(first: String) -> Self {
        let bar = std::io::IsTerminal::is_terminal(&std::io::stderr()).then(|| {
            let bar = indicatif::ProgressBar::new_spinner();
            if let Ok(style) =
                indicatif::ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
            {
                bar.set_style(style);
            }
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        let mut p = Progress {
            bar,
            last: String::new(),
        };
        p.show(first);
        p
    }

    fn show(&mut self, text: String) {
        if text == self.last {
            return;
        }
        match &self.bar {
            Some(bar) => bar.set_message(text.clone()),
            None => eprintln!("{text}"),
        }
        self.last = text;
    }

    fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}

/// `set`: sends the command, shows the device's reported values of the
/// settings it changes (warming... on) until the answer comes.
async fn set(
    client: &Client,
    device: DeviceView,
    settings: &[String],
    timeout: Duration,
    cid: &str,
    json: bool,
) -> anyhow::Result<()> {
    let id = device.id.clone();
    let meta = device.meta.clone().unwrap_or_default();
    let desired = parse_assignments(&meta, settings).map_err(|e| anyhow::anyhow!("{id}: {e}"))?;
    let keys: Vec<String> = desired.keys().cloned().collect();
    let mut states = client.subscribe([format!("dev/{id}/state")]).await?;
    let mut progress = Progress::new(format!("{id}: setting {} (cid {cid})", settings.join(" ")));
    let opts = RequestOptions {
        timeout: Some(timeout),
        cid: Some(cid),
        on_behalf: None,
    };
    let body = Body::from(Value::Object(desired));
    let tag = format!("dev/{id}/set");
    let request = client.request_with(&tag, &body, opts);
    tokio::pin!(request);
    let answer = loop {
        tokio::select! {
            r = &mut request => break r,
            Some(m) = states.next() => {
                if let Ok(Value::Object(state)) = m.json::<Value>() {
                    let now: Vec<String> = keys
                        .iter()
                        .filter_map(|k| {
                            let v = state.get(k).filter(|v| !v.is_null())?;
                            Some(format!("{k} {}", plain(v)))
                        })
                        .collect();
                    if !now.is_empty() {
                        progress.show(format!("{id}: {}", now.join(", ")));
                    }
                }
            }
        }
    };
    progress.finish();
    let state: Value = match answer {
        Ok(reply) => reply.json()?,
        Err(e) if is_timeout(&e) => anyhow::bail!(
            "{id}: no answer within {} s (cid {cid}); the outcome is unknown: the command may still be carried out. Look it up later with `patchbay command {cid}`, or follow the device with `patchbay watch 'dev/{id}/#'`",
            timeout.as_secs_f64()
        ),
        Err(patchbay_client::Error::Hub(e)) => {
            let detail = e.detail.as_deref().map(|d| format!("\n  detail: {d}")).unwrap_or_default();
            anyhow::bail!("{id}: {}: {} (cid {cid}){detail}", e.code, e.message)
        }
        Err(e) => return Err(anyhow::Error::new(e).context(format!("{id} (cid {cid})"))),
    };
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
    Ok(())
}

/// Sends settings to every member of a group or room and prints each outcome.
async fn set_many(
    client: &Client,
    group: Option<String>,
    room: Option<String>,
    words: &[String],
    timeout_ms: u64,
    cid: Option<String>,
    json: bool,
) -> anyhow::Result<()> {
    if words.is_empty() {
        anyhow::bail!("give at least one setting as key=value (e.g. power=off)");
    }
    let mut settings = serde_json::Map::new();
    for w in words {
        let (k, v) = w
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("`{w}` is not key=value (e.g. power=on)"))?;
        settings.insert(k.to_owned(), Value::String(v.to_owned()));
    }
    let what = match (&group, &room) {
        (Some(g), _) => format!("group {g}"),
        (_, Some(r)) => format!("room {r}"),
        _ => unreachable!("checked by the caller"),
    };
    let cid = cid.unwrap_or_else(|| {
        format!(
            "cli-{}-{}",
            std::process::id(),
            patchbay_hub::server::now_ms()
        )
    });
    eprintln!("{what}: setting {} (cid {cid})", words.join(" "));
    let body = serde_json::json!({"group": group, "room": room, "settings": settings, "timeout_ms": timeout_ms, "cid": cid});
    let mut body = body;
    if let Some(m) = body.as_object_mut() {
        m.retain(|_, v| !v.is_null());
    }
    let opts = RequestOptions {
        timeout: Some(Duration::from_millis(timeout_ms) + Duration::from_secs(5)),
        cid: Some(&cid),
        on_behalf: None,
    };
    let outcome: Value = match client
        .request_with("hub/venue/set", &Body::from(body), opts)
        .await
    {
        Ok(reply) => reply.json()?,
        Err(patchbay_client::Error::Hub(e)) => anyhow::bail!("{what}: {}", e.message),
        Err(e) => return Err(e.into()),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&outcome)?);
    } else {
        for m in outcome["members"].as_array().into_iter().flatten() {
            let id = m["id"].as_str().unwrap_or("");
            match m["outcome"].as_str() {
                Some("confirmed") => {
                    let state = m["state"].as_object().map(|s| {
                        s.iter()
                            .filter(|(k, _)| settings.contains_key(*k))
                            .map(|(k, v)| format!("{k}={}", plain(v)))
                            .collect::<Vec<_>>()
                            .join(" ")
                    });
                    say!("{id}: confirmed {}", state.unwrap_or_default());
                }
                Some("skipped") => say!(
                    "{id}: skipped (no setting {})",
                    m["skipped"]
                        .as_array()
                        .map(|s| s.iter().map(plain).collect::<Vec<_>>().join(", "))
                        .unwrap_or_default()
                ),
                _ => say!(
                    "{id}: failed: {}: {}",
                    m["error"]["code"].as_str().unwrap_or(""),
                    m["error"]["message"].as_str().unwrap_or("")
                ),
            }
        }
        say!(
            "{what}: {} ({} confirmed, {} failed, {} skipped; cid {cid})",
            outcome["status"].as_str().unwrap_or(""),
            outcome["confirmed"],
            outcome["failed"],
            outcome["skipped"]
        );
    }
    if outcome["failed"].as_u64().unwrap_or(0) > 0 {
        anyhow::bail!("{what}: {} of the members failed", outcome["failed"]);
    }
    Ok(())
}

/// Starts a scene and prints each step as it starts and ends, until the run ends.
async fn run_scene(client: &Client, name: &str, json: bool) -> anyhow::Result<()> {
    let opts = RequestOptions {
        timeout: Some(Duration::from_secs(10)),
        cid: None,
        on_behalf: None,
    };
    let started: Value = match client
        .request_with(
            "hub/scenes/run",
            &Body::from(serde_json::json!({"scene": name})),
            opts,
        )
        .await
    {
        Ok(reply) => reply.json()?,
        Err(patchbay_client::Error::Hub(e)) => anyhow::bail!("scene {name}: {}", e.message),
        Err(e) => return Err(e.into()),
    };
    let tag = started["tag"]
        .as_str()
        .context("no run tag in the answer")?
        .to_owned();
    eprintln!("scene {name}: run {}", started["run"]);
    let mut sub = client.subscribe_with_snapshot([tag]).await?;
    let mut shown: Vec<String> = Vec::new();
    loop {
        let m = tokio::select! {
            m = sub.next() => m.context("the hub closed the connection")?,
            _ = tokio::signal::ctrl_c() => {
                eprintln!("scene {name}: still running; stop it with `patchbay scene cancel {}`", started["run"]);
                return Ok(());
            }
        };
        let run: Value = serde_json::from_str(m.body_str())?;
        if json {
            println!("{}", run);
        }
        let steps = run["steps"].as_array().cloned().unwrap_or_default();
        shown.resize(steps.len(), String::new());
        for (i, s) in steps.iter().enumerate() {
            let status = s["status"].as_str().unwrap_or("").to_owned();
            if status == shown[i] || status == "pending" {
                continue;
            }
            if !json {
                let detail = s["detail"]
                    .as_str()
                    .map(|d| format!(": {d}"))
                    .unwrap_or_default();
                say!(
                    "step {}/{} {}: {status}{detail}",
                    i + 1,
                    steps.len(),
                    s["what"].as_str().unwrap_or("")
                );
            }
            shown[i] = status;
        }
        match run["status"].as_str() {
            Some("running") => {}
            Some("done") => {
                if !json {
                    say!("scene {name}: done");
                }
                return Ok(());
            }
            other => anyhow::bail!("scene {name}: {}", other.unwrap_or("ended")),
        }
    }
}

/// A hub on the LAN, found over mDNS (`--hub auto`).
async fn find_hub() -> anyhow::Result<patchbay_hub::mdns::Found> {
    let found =
        tokio::task::spawn_blocking(|| patchbay_hub::mdns::find(Duration::from_secs(3), true))
            .await??;
    eprintln!(
        "found a hub at {}{}{}",
        found.wire,
        if found.tls { " (TLS)" } else { "" },
        found
            .api
            .as_ref()
            .map(|a| format!(" (API {a})"))
            .unwrap_or_default()
    );
    Ok(found)
}

/// Asks the hub's journal (`hub/journal/<what>`), leaving out unset fields.
async fn ask_journal(client: &Client, what: &str, mut q: Value) -> anyhow::Result<Value> {
    if let Some(m) = q.as_object_mut() {
        m.retain(|_, v| !v.is_null());
    }
    let opts = RequestOptions {
        timeout: Some(Duration::from_secs(10)),
        cid: None,
        on_behalf: None,
    };
    match client
        .request_with(&format!("hub/journal/{what}"), &Body::from(q), opts)
        .await
    {
        Ok(reply) => Ok(reply.json()?),
        Err(patchbay_client::Error::Hub(e)) => anyhow::bail!("{}", e.message),
        Err(e) => Err(e.into()),
    }
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) of a Unix time in milliseconds.
fn when(ms: u64) -> String {
    format!(
        "{} {}",
        patchbay_hub::journal::utc_date(ms),
        &clock(ms)[..8]
    )
}

fn print_history(id: &str, page: &Value) {
    let items = page["items"].as_array().cloned().unwrap_or_default();
    if items.is_empty() {
        say!("{id}: no history");
    }
    for h in items.iter().rev() {
        let body = &h["body"];
        let what = match h["kind"].as_str() {
            Some("state") => body
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| format!("{k}={}", plain(v)))
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_default(),
            Some("online") => match (body["online"].as_bool(), body["reason"].as_str()) {
                (Some(true), _) => "online".into(),
                (_, Some(r)) => format!("offline: {r}"),
                _ => "offline".into(),
            },
            _ => format!(
                "{} {}",
                body["level"].as_str().unwrap_or("event"),
                body["message"]
                    .as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| body.to_string())
            ),
        };
        let cid = h["cid"]
            .as_str()
            .map(|c| format!("  (cid {c})"))
            .unwrap_or_default();
        say!(
            "{} UTC  {:<6} {what}{cid}",
            when(h["time"].as_u64().unwrap_or(0)),
            h["kind"].as_str().unwrap_or("")
        );
    }
}

fn who_text(c: &Value) -> String {
    let w = &c["who"];
    let mut out = w["token"]
        .as_str()
        .map(|t| format!("token {t}"))
        .unwrap_or_default();
    let client = w["client"].as_str().unwrap_or("");
    if !out.is_empty() {
        out.push_str(", ");
    }
    out.push_str(&format!(
        "{client} via {} from {}",
        w["transport"].as_str().unwrap_or(""),
        w["peer"].as_str().unwrap_or("")
    ));
    out
}

fn outcome_text(c: &Value) -> String {
    let status = c["status"].as_str().unwrap_or("");
    let mut text = match status {
        "failed" => format!(
            "failed: {}: {}",
            c["error"]["code"].as_str().unwrap_or(""),
            c["error"]["message"].as_str().unwrap_or("")
        ),
        "unknown" => "outcome unknown (timed out, no answer yet)".into(),
        other => other.to_owned(),
    };
    if let (true, Some(late), Some(ans)) = (
        c["timed_out"].as_bool() == Some(true),
        c["late"].as_u64(),
        c["answered"].as_u64(),
    ) {
        text.push_str(&format!(
            ", answered {:.1} s after the requester's timeout",
            late.saturating_sub(ans) as f64 / 1000.0
        ));
    }
    text
}

fn command_line(c: &Value) -> String {
    format!(
        "{} UTC  {} {}  {}  [{}]  cid {}",
        when(c["received"].as_u64().unwrap_or(0)),
        c["device"].as_str().unwrap_or(""),
        c["desired"],
        outcome_text(c),
        who_text(c),
        c["cid"].as_str().unwrap_or("")
    )
}

fn print_command(c: &Value) {
    say!("cid:      {}", c["cid"].as_str().unwrap_or(""));
    say!("device:   {}", c["device"].as_str().unwrap_or(""));
    say!("desired:  {}", c["desired"]);
    say!("from:     {}", who_text(c));
    say!(
        "received: {} UTC",
        when(c["received"].as_u64().unwrap_or(0))
    );
    say!("outcome:  {}", outcome_text(c));
    if let Some(state) = c["state"].as_object() {
        let fields: Vec<String> = state
            .iter()
            .map(|(k, v)| format!("{k}={}", plain(v)))
            .collect();
        say!("state:    {}", fields.join(" "));
    }
    if let Some(d) = c["error"]["detail"].as_str() {
        say!("detail:   {d}");
    }
}

/// Did the request end without an answer in time (the hub's or this client's deadline)?
fn is_timeout(e: &patchbay_client::Error) -> bool {
    matches!(e, patchbay_client::Error::Timeout(_)) || e.code() == Some("timeout")
}

/// A JSON value as people write it: strings without quotes.
fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => safe(s),
        other => other.to_string(),
    }
}

/// Text from the hub as it may be shown on a terminal: control characters
/// (escape sequences, line breaks) written out, so nobody can forge lines.
fn safe(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let shown: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            shown
        })
        .collect()
}

async fn run(mut cli: Cli) -> anyhow::Result<()> {
    if cli.hub == "auto" {
        let found = find_hub().await?;
        cli.hub = found.wire.to_string();
        cli.tls |= found.tls;
    }
    check_hub_address(&cli.hub)?;
    let mut builder = ClientBuilder::new(&cli.hub).name(&cli.name).no_reconnect();
    if let Some(t) = &cli.token {
        builder = builder.token(t);
    }
    if cli.tls || cli.tls_ca.is_some() || cli.tls_cert.is_some() || cli.tls_server_name.is_some() {
        let options = patchbay_client::tls::TlsOptions {
            ca: cli.tls_ca.clone(),
            cert: cli.tls_cert.clone(),
            key: cli.tls_key.clone(),
        };
        builder = builder.tls(options.client_config()?);
        if let Some(name) = &cli.tls_server_name {
            builder = builder.tls_server_name(name);
        }
    }
    let client = builder.connect().await?;
    match cli.command {
        Command::Devices { json } => {
            let devices = load_devices(&client, None).await?;
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
            let device = load_device(&client, &id).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&device)?);
            } else {
                print_device(&device);
            }
        }
        Command::Set {
            id,
            mut settings,
            group,
            room,
            timeout_ms,
            cid,
            json,
        } => {
            if group.is_some() || room.is_some() {
                // Without a device, the first word is a setting too.
                settings.splice(0..0, id);
                return set_many(&client, group, room, &settings, timeout_ms, cid, json).await;
            }
            let Some(id) = id else {
                anyhow::bail!("give a device id, or --group NAME or --room NAME");
            };
            if settings.is_empty() {
                anyhow::bail!("give at least one setting as key=value (e.g. power=on)");
            }
            let device = load_device(&client, &id).await?;
            let cid = cid.unwrap_or_else(|| {
                format!(
                    "cli-{}-{}",
                    std::process::id(),
                    patchbay_hub::server::now_ms()
                )
            });
            let timeout = Duration::from_millis(timeout_ms);
            set(&client, device, &settings, timeout, &cid, json).await?;
        }
        Command::Watch { pattern, json } => {
            let sub = client.subscribe([pattern]).await?;
            follow(sub, None, |m| {
                if json {
                    message_json(m)
                } else {
                    let cid = m.cid().map(|c| format!("  cid={c}")).unwrap_or_default();
                    format!(
                        "{} {} {}{cid}",
                        clock(patchbay_hub::server::now_ms()),
                        m.tag(),
                        m.body_str()
                    )
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
            let opts = PublishOptions {
                retain,
                cid: cid.as_deref(),
            };
            let seq = client.publish_acked(&tag, &parse_body(&body), opts).await?;
            println!("published {tag} (seq {seq})");
        }
        Command::Sub {
            patterns,
            snapshot,
            count,
            json,
        } => {
            let sub = if snapshot {
                client.subscribe_with_snapshot(&patterns).await?
            } else {
                client.subscribe(&patterns).await?
            };
            follow(sub, count, |m| {
                if json {
                    message_json(m)
                } else {
                    format!("{:>8} {} {}", m.seq(), m.tag(), m.body_str())
                }
            })
            .await?;
        }
        Command::History {
            id,
            since,
            kind,
            limit,
            json,
        } => {
            let q = serde_json::json!({"device": id, "since": since, "kind": kind, "limit": limit});
            let page = ask_journal(&client, "history", q).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&page)?);
            } else {
                print_history(&id, &page);
            }
        }
        Command::Commands {
            device,
            since,
            limit,
            json,
        } => {
            let q = serde_json::json!({"device": device, "since": since, "limit": limit});
            let page = ask_journal(&client, "commands", q).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&page)?);
            } else {
                let items = page["items"].as_array().cloned().unwrap_or_default();
                if items.is_empty() {
                    println!("no commands");
                }
                for c in items.iter().rev() {
                    say!("{}", command_line(c));
                }
            }
        }
        Command::Command { cid, json } => {
            let c = ask_journal(&client, "command", serde_json::json!({"cid": cid})).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&c)?);
            } else {
                print_command(&c);
            }
        }
        Command::Scene { action, name, json } if action == "cancel" => {
            let run: u64 = name
                .parse()
                .map_err(|_| anyhow::anyhow!("a run id is a number, not `{name}`"))?;
            match client
                .request_json::<_, Value>(
                    patchbay_hub::automation::SCENE_CANCEL,
                    &serde_json::json!({"run": run}),
                )
                .await
            {
                Ok(v) if json => println!("{v}"),
                Ok(_) => say!("run {run}: cancelled"),
                Err(patchbay_client::Error::Hub(e)) => anyhow::bail!("run {run}: {}", e.message),
                Err(e) => return Err(e.into()),
            }
        }
        Command::Scene { name, json, .. } => run_scene(&client, &name, json).await?,
        Command::Req {
            tag,
            body,
            timeout_ms,
            cid,
        } => {
            let opts = RequestOptions {
                timeout: Some(Duration::from_millis(timeout_ms)),
                cid: cid.as_deref(),
                on_behalf: None,
            };
            let reply: Value = client
                .request_with(&tag, &parse_body(&body), opts)
                .await?
                .json()?;
            println!("{}", serde_json::to_string_pretty(&reply)?);
        }
    }
    Ok(())
}
