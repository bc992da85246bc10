//! `--journal`: what the hub's journal costs and sustains.
//!
//! - the 1->1 and 1->10 cases with the journal off and on, interleaved in one run;
//! - retained state changes at a paced rate (20,000/s), then how long the
//!   journal takes to commit the last one, and whether anything was dropped;
//! - device commands at a paced rate (2,000/s) through a fake agent, then
//!   every one counted in the file;
//! - `GET /api/commands?device=X&limit=100` on a file with 10 million commands.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use patchbay_client::{Body, ClientBuilder, PublishOptions, RequestOptions};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::cases::{throughput, Params};
use crate::servers::Server;

/// Sizes of one run.
#[derive(Debug, Clone, Copy)]
pub struct JournalParams {
    /// State changes per second offered.
    pub state_rate: u64,
    /// Commands per second offered.
    pub command_rate: u64,
    /// Seconds each paced case runs.
    pub seconds: u64,
    /// Commands in the file for the query case.
    pub rows: u64,
    /// Messages per throughput run.
    pub messages: u64,
}

impl JournalParams {
    /// The figures the issue asks for.
    pub fn full() -> Self {
        JournalParams {
            state_rate: 20_000,
            command_rate: 2_000,
            seconds: 10,
            rows: 10_000_000,
            messages: 1_000_000,
        }
    }

    /// A smoke run.
    pub fn quick() -> Self {
        JournalParams {
            state_rate: 2_000,
            command_rate: 200,
            seconds: 1,
            rows: 20_000,
            messages: 20_000,
        }
    }
}

/// One HTTP GET over a fresh connection; returns the status and body.
pub(crate) async fn get(http: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(http).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {http}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no HTTP status")?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

async fn metric(http: &str, name: &str) -> anyhow::Result<u64> {
    let (_, text) = get(http, "/metrics").await?;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .with_context(|| format!("no {name}"))?
        .trim()
        .parse()
        .context(name.to_owned())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// 1->1 and 1->10 with the journal off and on, interleaved.
async fn overhead(p: &JournalParams, repeat: usize) -> anyhow::Result<Value> {
    let params = Params {
        messages: p.messages,
        fanout: 10,
        requests: 0,
        retained: 0,
        batch: 64,
    };
    let (mut off1, mut on1, mut off10, mut on10) = (vec![], vec![], vec![], vec![]);
    for _ in 0..repeat {
        for journal in [false, true] {
            let server = Server::start_hub(None, journal).await?;
            let one = throughput(&server, 1, params).await?;
            let ten = throughput(&server, 10, params).await?;
            server.stop().await;
            let (a, b) = if journal {
                (&mut on1, &mut on10)
            } else {
                (&mut off1, &mut off10)
            };
            a.push(one.msgs_per_s);
            b.push(ten.deliveries_per_s);
        }
    }
    let (off1, on1, off10, on10) = (median(off1), median(on1), median(off10), median(on10));
    Ok(json!({
        "one_to_one_off": off1, "one_to_one_on": on1, "one_to_one_ratio": on1 / off1,
        "fanout_off": off10, "fanout_on": on10, "fanout_ratio": on10 / off10,
    }))
}

/// Waits until the journal has committed `seq`; returns how long that took.
async fn caught_up(http: &str, seq: u64) -> anyhow::Result<Duration> {
    let start = Instant::now();
    while metric(http, "patchbay_journal_committed_seq").await? < seq {
        if start.elapsed() > Duration::from_secs(60) {
            bail!("the journal did not commit seq {seq} within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(start.elapsed())
}

/// A fresh journal folder for one case.
fn fresh_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("patchbay-bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// Retained state changes at `state_rate` for `seconds`.
async fn state_changes(p: &JournalParams) -> anyhow::Result<Value> {
    let data = fresh_dir("states");
    let server = Server::start_hub_on(&data).await?;
    let http = server.http.clone().context("hub http")?;
    let c = ClientBuilder::new(&server.addr)
        .name("bench-agent")
        .connect()
        .await?;
    let devices = 1000;
    let total = p.state_rate * p.seconds;
    let tick = Duration::from_millis(10);
    let per_tick = (p.state_rate / 100).max(1);
    let retain = PublishOptions {
        retain: true,
        cid: None,
    };
    let mut max_queued = 0;
    let start = Instant::now();
    let mut sent = 0u64;
    let mut next = tokio::time::Instant::now();
    while sent < total {
        for _ in 0..per_tick.min(total - sent) {
            let body = Body::from(
                json!({"power": if sent.is_multiple_of(2) { "on" } else { "off" }, "n": sent}),
            );
            c.publish_with(
                &format!("dev/d{:04}/state", sent % devices),
                &body,
                retain.clone(),
            )
            .await?;
            sent += 1;
        }
        if sent.is_multiple_of(per_tick * 20) {
            max_queued = max_queued.max(metric(&http, "patchbay_journal_queued").await?);
        }
        next += tick;
        tokio::time::sleep_until(next).await;
    }
    let last = c
        .publish_acked(
            "dev/d0000/state",
            &Body::from(json!({"power": "off", "n": "end"})),
            retain,
        )
        .await?;
    let offered = sent as f64 / start.elapsed().as_secs_f64();
    let lag = caught_up(&http, last).await?;
    let dropped = metric(&http, "patchbay_journal_dropped_total{kind=\"history\"}").await?;
    server.stop().await;
    let rows: i64 = rusqlite::Connection::open(data.join("patchbay.db"))?.query_row(
        "SELECT COUNT(*) FROM history WHERE kind = 'state'",
        [],
        |r| r.get(0),
    )?;
    let _ = std::fs::remove_dir_all(&data);
    Ok(json!({
        "offered_per_s": offered, "sent": sent + 1, "history_rows": rows, "dropped": dropped,
        "lost": (sent + 1).saturating_sub(rows as u64), "commit_lag_ms": lag.as_secs_f64() * 1e3, "max_queued": max_queued,
    }))
}

/// Device commands at `command_rate` for `seconds`, answered by a fake agent.
async fn commands(p: &JournalParams) -> anyhow::Result<Value> {
    let data = fresh_dir("commands");
    let server = Server::start_hub_on(&data).await?;
    let agent = ClientBuilder::new(&server.addr)
        .name("bench-agent")
        .connect()
        .await?;
    for i in 0..100 {
        agent.claim(&format!("dev/c{i:03}")).await?;
    }
    let requests = agent.requests();
    let answering = tokio::spawn(async move {
        let state = Body::from(json!({"power": "on"}));
        while let Some(r) = requests.next().await {
            let _ = r.respond(&state).await;
        }
    });
    let ctl = Arc::new(
        ClientBuilder::new(&server.addr)
            .name("bench-panel")
            .connect()
            .await?,
    );
    let total = p.command_rate * p.seconds;
    let per_tick = (p.command_rate / 100).max(1);
    let limit = Arc::new(tokio::sync::Semaphore::new(512));
    let mut tasks = tokio::task::JoinSet::new();
    let start = Instant::now();
    let mut next = tokio::time::Instant::now();
    let mut sent = 0u64;
    while sent < total {
        for _ in 0..per_tick.min(total - sent) {
            let permit = limit.clone().acquire_owned().await?;
            let ctl = ctl.clone();
            let n = sent;
            tasks.spawn(async move {
                let cid = format!("bench-{n}");
                let opts = RequestOptions {
                    timeout: Some(Duration::from_secs(30)),
                    cid: Some(&cid),
                    on_behalf: None,
                };
                let r = ctl
                    .request_with(
                        &format!("dev/c{:03}/set", n % 100),
                        &Body::from(json!({"power": "on"})),
                        opts,
                    )
                    .await;
                drop(permit);
                r.is_ok()
            });
            sent += 1;
        }
        next += tokio::time::Duration::from_millis(10);
        tokio::time::sleep_until(next).await;
    }
    let mut ok = 0u64;
    while let Some(r) = tasks.join_next().await {
        ok += u64::from(r.unwrap_or(false));
    }
    let rate = sent as f64 / start.elapsed().as_secs_f64();
    let http = server.http.clone().context("hub http")?;
    // A read waits for the writer: after it, every command is in the file.
    let (status, _) = get(&http, "/api/commands?limit=1").await?;
    if status != 200 {
        bail!("GET /api/commands answered {status}");
    }
    let dropped = metric(&http, "patchbay_journal_dropped_total{kind=\"command\"}").await?;
    answering.abort();
    server.stop().await;
    let (rows, confirmed): (i64, i64) = rusqlite::Connection::open(data.join("patchbay.db"))?
        .query_row(
            "SELECT COUNT(*), SUM(status = 'confirmed') FROM commands",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
    let _ = std::fs::remove_dir_all(&data);
    Ok(json!({
        "offered_per_s": rate, "sent": sent, "answered_ok": ok, "rows": rows, "confirmed_rows": confirmed,
        "lost": sent.saturating_sub(rows as u64), "dropped": dropped,
    }))
}

/// Fills `data`'s journal with `rows` commands over 1,000 devices.
fn fill(data: &Path, rows: u64) -> anyhow::Result<()> {
    let mut conn = rusqlite::Connection::open(data.join("patchbay.db"))?;
    conn.pragma_update(None, "synchronous", "OFF")?;
    let tx = conn.transaction()?;
    {
        let mut stmt = tx.prepare(
            "INSERT INTO commands (cid, device, desired, token, role, client, peer, transport, received, forwarded, agent, answered, status, state)
             VALUES (?1, ?2, '{\"power\":\"on\"}', 'ops', 'operator', 'panel', '10.0.0.7:50000', 'tcp', ?3, ?3, 'rack', ?3, 'confirmed', '{\"power\":\"on\"}')",
        )?;
        // Within `history_days`, or the hub would prune them at start.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis() as i64;
        let base = now - 86_400_000;
        for i in 0..rows {
            stmt.execute(rusqlite::params![
                format!("fill-{i}"),
                format!("d{:04}", i % 1000),
                base + i as i64
            ])?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// `GET /api/commands?device=X&limit=100` on a file with `rows` commands.
async fn query(p: &JournalParams) -> anyhow::Result<Value> {
    let data = fresh_dir("rows");
    // The hub creates the file and its tables; then the rows go in directly.
    let server = Server::start_hub_on(&data).await?;
    server.stop().await;
    let started = Instant::now();
    let rows = p.rows;
    let d = data.clone();
    tokio::task::spawn_blocking(move || fill(&d, rows)).await??;
    let fill_s = started.elapsed().as_secs_f64();
    let server = Server::start_hub_on(&data).await?;
    let http = server.http.clone().context("hub http")?;
    let mut times = Vec::new();
    for i in 0..50 {
        let t = Instant::now();
        let (status, body) = get(
            &http,
            &format!("/api/commands?device=d{:04}&limit=100", (i * 37) % 1000),
        )
        .await?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
        if status != 200 || !body.contains("\"items\":[{") {
            bail!(
                "GET /api/commands answered {status}: {}",
                &body[..body.len().min(200)]
            );
        }
    }
    server.stop().await;
    let bytes = std::fs::metadata(data.join("patchbay.db"))
        .map(|m| m.len())
        .unwrap_or(0);
    let _ = std::fs::remove_dir_all(&data);
    times.sort_by(f64::total_cmp);
    Ok(json!({
        "rows": rows, "fill_s": fill_s, "file_mib": bytes as f64 / 1048576.0,
        "p50_ms": times[times.len() / 2], "max_ms": times[times.len() - 1],
    }))
}

/// Runs every journal case.
pub async fn run(p: JournalParams, repeat: usize) -> anyhow::Result<Value> {
    let overhead = overhead(&p, repeat).await?;
    eprintln!("overhead: {overhead}");
    let states = state_changes(&p).await?;
    eprintln!("state changes: {states}");
    let commands = commands(&p).await?;
    eprintln!("commands: {commands}");
    let query = query(&p).await?;
    eprintln!("query: {query}");
    Ok(json!({"overhead": overhead, "state_changes": states, "commands": commands, "query": query}))
}

/// The targets, each with whether it was met.
pub fn targets(r: &Value, p: &JournalParams) -> Vec<(String, bool)> {
    let f = |a: &str, b: &str| r[a][b].as_f64().unwrap_or(f64::NAN);
    vec![
        (
            format!("{} state changes/s offered, none lost", p.state_rate),
            f("state_changes", "offered_per_s") >= p.state_rate as f64 * 0.95
                && f("state_changes", "lost") == 0.0,
        ),
        (
            format!(
                "{} commands/s offered, every one in the file",
                p.command_rate
            ),
            f("commands", "offered_per_s") >= p.command_rate as f64 * 0.95
                && f("commands", "lost") == 0.0,
        ),
        (
            "1->1 and 1->10 with the journal within 5% of without".into(),
            f("overhead", "one_to_one_ratio") >= 0.95 && f("overhead", "fanout_ratio") >= 0.95,
        ),
        (
            format!(
                "GET /api/commands?device=X&limit=100 under 10 ms with {} rows",
                p.rows
            ),
            f("query", "p50_ms") < 10.0,
        ),
    ]
}
