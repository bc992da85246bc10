//! The venue scenario: one load generator plays a campus against a hub
//! process. Agents own the devices (realistic descriptions, states, online
//! values) and answer commands after a 1 ms "device" delay; room controllers
//! watch their rooms with snapshots; consoles take the full event stream;
//! an operator sends commands over HTTP; a hostile viewer loops huge
//! snapshots and one reader never reads. It reports connect and snapshot
//! times, delivery latency in steady state and in an "all projectors off"
//! burst (with and without the hostile viewer), command round trips, the
//! hub's memory, CPU and longest lock hold, and checks the targets.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::servers::Server;
use crate::wire::System;

/// The campus's size and pace.
#[derive(Debug, Clone, Copy)]
pub struct VenueParams {
    /// Devices in all.
    pub devices: usize,
    /// Agent connections owning them.
    pub agents: usize,
    /// Room controllers, each watching one room.
    pub controllers: usize,
    /// Consoles on the full event stream.
    pub consoles: usize,
    /// Over how long the consoles connect.
    pub console_ramp: Duration,
    /// State changes per second in steady state.
    pub rate: u32,
    /// Length of each steady phase.
    pub steady: Duration,
    /// Projectors switched off in the burst (each: cooling, then off).
    pub burst: usize,
    /// How long the burst takes.
    pub burst_span: Duration,
}

impl VenueParams {
    /// The campus of the issue: 20,000 devices, 10,000 controllers, 50 consoles.
    pub fn campus() -> Self {
        VenueParams {
            devices: 20_000,
            agents: 200,
            controllers: 10_000,
            consoles: 50,
            console_ramp: Duration::from_secs(10),
            rate: 200,
            steady: Duration::from_secs(15),
            burst: 5_000,
            burst_span: Duration::from_secs(10),
        }
    }

    /// A small campus for a smoke run.
    pub fn small() -> Self {
        VenueParams {
            devices: 300,
            agents: 6,
            controllers: 150,
            consoles: 2,
            console_ramp: Duration::from_millis(500),
            rate: 100,
            steady: Duration::from_secs(2),
            burst: 100,
            burst_span: Duration::from_secs(1),
        }
    }
}

/// Microseconds since the scenario began: the clock every timestamp uses.
fn now_us(epoch: Instant) -> u64 {
    epoch.elapsed().as_micros() as u64
}

/// Latency samples per phase, in microseconds.
#[derive(Default)]
struct Samples {
    by_phase: Mutex<HashMap<&'static str, Vec<u64>>>,
}

impl Samples {
    fn add(&self, phase: &'static str, us: u64) {
        let mut m = self.by_phase.lock().unwrap();
        m.entry(phase).or_default().push(us);
    }

    fn take(&self, phase: &str) -> Vec<u64> {
        let mut v = self
            .by_phase
            .lock()
            .unwrap()
            .remove(phase)
            .unwrap_or_default();
        v.sort_unstable();
        v
    }
}

fn pct(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i] as f64
}

/// Which phase latency samples belong to.
struct Phase(AtomicUsize);

const PHASES: [&str; 5] = ["setup", "steady", "steady_hostile", "burst", "done"];

impl Phase {
    fn get(&self) -> &'static str {
        PHASES[self.0.load(Ordering::Relaxed)]
    }
    fn set(&self, i: usize) {
        self.0.store(i, Ordering::Relaxed);
    }
}

/// What every task shares.
struct Shared {
    epoch: Instant,
    phase: Phase,
    latency: Samples,
    /// Per device: its agent's command channel.
    agents: Vec<mpsc::UnboundedSender<AgentCmd>>,
    hostile: AtomicBool,
    stop: AtomicBool,
}

impl Shared {
    /// Prints why a task ended, unless the scenario is over.
    fn report<T>(&self, who: &str, r: anyhow::Result<T>) {
        if let Err(e) = r {
            if !self.stop.load(Ordering::Relaxed) {
                eprintln!("venue: {who}: {e:#}");
            }
        }
    }
}

enum AgentCmd {
    /// Publish a new state for this device.
    State { device: usize, power: &'static str },
    /// Answer a forwarded request.
    Reply {
        rid: u64,
        device: usize,
        power: String,
    },
}

fn device_id(i: usize) -> String {
    format!("p{i:05}")
}

/// Rooms of 2, 3 or 4 devices, in order.
fn rooms(devices: usize) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut at = 0;
    let mut size = 2;
    while at < devices {
        let end = (at + size).min(devices);
        out.push(at..end);
        at = end;
        size = if size == 4 { 2 } else { size + 1 };
    }
    out
}

/// A description of about 2 KB, as a projector's agent publishes it.
fn meta(i: usize, room: usize) -> Value {
    let inputs: Vec<String> = (1..=8).map(|n| format!("hdmi{n}")).collect();
    json!({
        "id": device_id(i), "name": format!("Projector {i} (Lecture Hall {room})"),
        "location": format!("Room {room}"), "driver": "pjlink", "manufacturer": "Epson",
        "model": "EB-PU2010B", "info": "Laser projector, 10,000 lm, WUXGA, lens shift, edge blending",
        "transport": "tcp 10.20.30.40:4352", "poll_ms": 2000,
        "settings": [
            {"name":"power","label":"Power","type":"enum","values":["on","off"],"transitional":["warming","cooling"],"writable":true},
            {"name":"input","label":"Input","type":"enum","values":inputs,"writable":true},
            {"name":"mute","label":"Picture mute","type":"bool","writable":true},
            {"name":"freeze","label":"Freeze","type":"bool","writable":true},
            {"name":"volume","label":"Volume","type":"int","min":0,"max":100,"writable":true},
            {"name":"lamp_hours","label":"Light source hours","type":"int","min":0,"max":100000,"unit":"h","writable":false},
            {"name":"filter_hours","label":"Filter hours","type":"int","min":0,"max":100000,"unit":"h","writable":false},
            {"name":"errors","label":"Errors","type":"object","writable":false},
            {"name":"serial","label":"Serial number","type":"text","writable":false},
            {"name":"firmware","label":"Firmware","type":"text","writable":false},
            {"name":"resolution","label":"Input resolution","type":"text","writable":false},
            {"name":"temperature","label":"Temperature","type":"int","min":-40,"max":120,"unit":"°C","writable":false}
        ]
    })
}

/// A state of about 300 B, stamped with the time it was published.
fn state(power: &str, ts: u64) -> Value {
    json!({"power": power, "input": "hdmi1", "mute": false, "freeze": false, "volume": 40,
        "lamp_hours": 1234, "filter_hours": 567, "errors": {"fan":"ok","lamp":"ok","temperature":"ok","cover":"ok","filter":"ok","other":"ok"},
        "serial": "X4JK0123456", "firmware": "1.04", "resolution": "1920x1200@60", "temperature": 31, "ts": ts})
}

fn line(v: &Value) -> Vec<u8> {
    let mut out = serde_json::to_vec(v).unwrap_or_default();
    out.push(b'\n');
    out
}

/// Reads the `ts` a state body carries, without parsing the rest.
fn ts_of(line: &[u8]) -> Option<u64> {
    let at = memchr::memmem::find(line, b"\"ts\":")? + 5;
    let rest = &line[at..];
    let end = rest.iter().position(|b| !b.is_ascii_digit())?;
    std::str::from_utf8(&rest[..end]).ok()?.parse().ok()
}

/// One agent connection: publishes its devices, then state changes on
/// command and answers requests after a 1 ms device delay.
async fn agent(
    hub: String,
    index: usize,
    devices: Vec<(usize, usize)>,
    shared: Arc<Shared>,
    mut rx: mpsc::UnboundedReceiver<AgentCmd>,
    self_tx: mpsc::UnboundedSender<AgentCmd>,
    ready: tokio::sync::oneshot::Sender<()>,
) -> anyhow::Result<()> {
    let s = TcpStream::connect(&hub).await?;
    s.set_nodelay(true)?;
    let (rd, mut wr) = s.into_split();
    let mut lines = BufReader::new(rd).lines();
    let mut out = line(&json!({"op":"hello","name":format!("agent-{index}")}));
    for (i, room) in &devices {
        let id = device_id(*i);
        out.extend(line(&json!({"op":"claim","prefix":format!("dev/{id}")})));
        out.extend(line(
            &json!({"op":"pub","tag":format!("dev/{id}/meta"),"body":meta(*i, *room),"retain":true}),
        ));
        out.extend(line(&json!({"op":"pub","tag":format!("dev/{id}/state"),"body":state("on", 0),"retain":true})));
        out.extend(line(&json!({"op":"pub","tag":format!("dev/{id}/online"),"body":{"online":true,"reason":null,"since":0},"retain":true})));
    }
    out.extend(line(&json!({"op":"ping","id":"ready"})));
    wr.write_all(&out).await?;
    let mut ready = Some(ready);
    loop {
        tokio::select! {
            l = lines.next_line() => {
                let Some(l) = l? else { return Ok(()) };
                if l.contains("\"op\":\"pong\"") {
                    if let Some(r) = ready.take() { let _ = r.send(()); }
                    continue;
                }
                if !l.starts_with("{\"op\":\"req\"") { continue; }
                let v: Value = serde_json::from_str(&l)?;
                let rid = v["rid"].as_u64().unwrap_or(0);
                let tag = v["tag"].as_str().unwrap_or("");
                let device = tag.split('/').nth(1).and_then(|id| id.strip_prefix('p')).and_then(|n| n.parse().ok()).unwrap_or(0);
                let power = v["body"]["power"].as_str().unwrap_or("on").to_owned();
                let tx = self_tx.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    let _ = tx.send(AgentCmd::Reply { rid, device, power });
                });
            }
            cmd = rx.recv() => {
                let Some(cmd) = cmd else { return Ok(()) };
                let mut out = Vec::with_capacity(512);
                let mut push = |cmd: AgentCmd| match cmd {
                    AgentCmd::State { device, power } => {
                        let body = state(power, now_us(shared.epoch));
                        out.extend(line(&json!({"op":"pub","tag":format!("dev/{}/state", device_id(device)),"body":body,"retain":true})));
                    }
                    AgentCmd::Reply { rid, device, power } => {
                        let body = state(&power, now_us(shared.epoch));
                        out.extend(line(&json!({"op":"pub","tag":format!("dev/{}/state", device_id(device)),"body":body,"retain":true})));
                        out.extend(line(&json!({"op":"rep","rid":rid,"body":body})));
                    }
                };
                push(cmd);
                while let Ok(more) = rx.try_recv() { push(more); }
                wr.write_all(&out).await?;
            }
        }
    }
}

/// One room controller: subscribes with a snapshot to its room's state and
/// online tags, reports the time to its snapshot, then records latencies.
async fn controller(
    hub: String,
    room: std::ops::Range<usize>,
    shared: Arc<Shared>,
    done: mpsc::UnboundedSender<Duration>,
) -> anyhow::Result<()> {
    let t = Instant::now();
    let s = TcpStream::connect(&hub).await?;
    let (rd, mut wr) = s.into_split();
    let tags: Vec<String> = room
        .clone()
        .flat_map(|i| {
            let id = device_id(i);
            [format!("dev/{id}/state"), format!("dev/{id}/online")]
        })
        .collect();
    let mut out = line(&json!({"op":"hello","name":"room-panel"}));
    out.extend(line(
        &json!({"op":"sub","tags":tags,"snapshot":true,"id":1}),
    ));
    wr.write_all(&out).await?;
    let mut rd = BufReader::with_capacity(4096, rd);
    let mut buf = Vec::with_capacity(1024);
    let mut snapped = false;
    loop {
        buf.clear();
        if rd.read_until(b'\n', &mut buf).await? == 0 {
            anyhow::bail!("controller disconnected");
        }
        if !snapped {
            if buf.starts_with(b"{\"op\":\"ok\"") {
                snapped = true;
                let _ = done.send(t.elapsed());
            } else if buf.starts_with(b"{\"op\":\"err\"") {
                anyhow::bail!("controller refused: {}", String::from_utf8_lossy(&buf));
            }
            continue;
        }
        if let Some(ts) = ts_of(&buf).filter(|&ts| ts > 0) {
            shared
                .latency
                .add(shared.phase.get(), now_us(shared.epoch).saturating_sub(ts));
        }
        if buf.starts_with(b"{\"op\":\"ping\"") {
            wr.write_all(b"{\"op\":\"pong\"}\n").await?;
        }
    }
}

/// One console on the hub's event stream: the full snapshot, then live
/// latencies. Reports the snapshot time.
async fn console(
    http: String,
    shared: Arc<Shared>,
    done: mpsc::UnboundedSender<Duration>,
) -> anyhow::Result<()> {
    let t = Instant::now();
    let mut s = TcpStream::connect(&http).await?;
    s.write_all(b"GET /api/events?tags=dev/%2B/meta,dev/%2B/state,dev/%2B/online,dev/%2B/event HTTP/1.1\r\nhost: venue\r\n\r\n").await?;
    let mut rd = BufReader::with_capacity(64 * 1024, s);
    let mut buf = Vec::with_capacity(4096);
    let mut snapped = false;
    loop {
        buf.clear();
        if rd.read_until(b'\n', &mut buf).await? == 0 {
            anyhow::bail!("console stream ended");
        }
        if !snapped {
            if buf.starts_with(b"event: snapshot") {
                snapped = true;
                let _ = done.send(t.elapsed());
            } else if buf.starts_with(b"event: error") {
                anyhow::bail!("console dropped");
            }
            continue;
        }
        if buf.starts_with(b"data:") {
            if let Some(ts) = ts_of(&buf).filter(|&ts| ts > 0) {
                shared
                    .latency
                    .add(shared.phase.get(), now_us(shared.epoch).saturating_sub(ts));
            }
        }
    }
}

/// Sends one HTTP request on a kept-alive connection and reads the answer; returns the status.
pub(crate) async fn http_request(s: &mut BufReader<TcpStream>, req: &[u8]) -> anyhow::Result<u16> {
    s.get_mut().write_all(req).await?;
    let mut head = String::new();
    let mut status = 0;
    let mut len = 0usize;
    loop {
        head.clear();
        if s.read_line(&mut head).await? == 0 {
            anyhow::bail!("connection closed");
        }
        let h = head.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some(code) = h.strip_prefix("HTTP/1.1 ") {
            status = code.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
        } else if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await?;
    Ok(status)
}

/// The operator: PATCHes random devices through HTTP while not stopped.
async fn operator(
    http: String,
    devices: usize,
    shared: Arc<Shared>,
    rtt: Arc<Samples>,
) -> anyhow::Result<()> {
    let mut s = BufReader::new(TcpStream::connect(&http).await?);
    let mut n: usize = 0;
    while !shared.stop.load(Ordering::Relaxed) {
        n += 1;
        let device = (n.wrapping_mul(7919)) % devices;
        let body = if n.is_multiple_of(2) {
            r#"{"power":"on"}"#
        } else {
            r#"{"power":"off"}"#
        };
        let req = format!(
            "PATCH /api/devices/{} HTTP/1.1\r\nhost: venue\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            device_id(device),
            body.len()
        );
        let t = Instant::now();
        let status = http_request(&mut s, req.as_bytes()).await?;
        if status == 200 {
            let us = t.elapsed().as_micros() as u64;
            rtt.add(shared.phase.get(), us.saturating_sub(1000));
        } else {
            rtt.add("failed", status as u64);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// The hostile viewer: loops subscribing with snapshots to 1,024 patterns
/// (four frames of 256) and unsubscribing, reading everything.
async fn hostile(
    hub: String,
    devices: usize,
    shared: Arc<Shared>,
    loops: Arc<AtomicU64>,
) -> anyhow::Result<()> {
    let s = TcpStream::connect(&hub).await?;
    let (rd, mut wr) = s.into_split();
    let mut rd = BufReader::with_capacity(256 * 1024, rd);
    let mut frames = Vec::new();
    for f in 0..4 {
        let mut patterns: Vec<String> = vec![
            "dev/+/state".into(),
            "dev/+/online".into(),
            "+/+/meta".into(),
        ];
        patterns
            .extend((0..253).map(|i| format!("dev/{}/+", device_id((f * 253 + i) * 7 % devices))));
        frames.push(patterns);
    }
    let mut buf = Vec::new();
    while !shared.stop.load(Ordering::Relaxed) {
        if !shared.hostile.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        for (i, patterns) in frames.iter().enumerate() {
            wr.write_all(&line(
                &json!({"op":"sub","tags":patterns,"snapshot":true,"id":i}),
            ))
            .await?;
            loop {
                buf.clear();
                if rd.read_until(b'\n', &mut buf).await? == 0 {
                    anyhow::bail!("hostile viewer dropped");
                }
                if buf.starts_with(b"{\"op\":\"ok\"") {
                    break;
                }
            }
        }
        let all: Vec<&String> = frames.iter().flatten().collect();
        wr.write_all(&line(&json!({"op":"unsub","tags":all})))
            .await?;
        loops.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

/// The reader that never reads: subscribes to everything and stalls.
async fn never_reader(hub: String) -> anyhow::Result<TcpStream> {
    let sock = tokio::net::TcpSocket::new_v4()?;
    sock.set_recv_buffer_size(4096)?;
    let mut s = sock.connect(hub.parse()?).await?;
    s.write_all(&line(&json!({"op":"sub","tags":["dev/#"]})))
        .await?;
    Ok(s)
}

/// Drives state changes: `rate` per second over random devices, until stopped.
async fn steady(shared: Arc<Shared>, rate: u32, until: Instant) {
    let devices = shared.agents.len();
    let period = Duration::from_secs(1) / rate.max(1);
    let mut tick = tokio::time::interval(period);
    let mut n: usize = 0;
    while Instant::now() < until {
        tick.tick().await;
        n += 1;
        let device = n.wrapping_mul(104_729) % devices;
        let power = if n.is_multiple_of(2) { "on" } else { "off" };
        let _ = shared.agents[device].send(AgentCmd::State { device, power });
    }
}

/// "All projectors off": `count` devices to cooling, then to off, over `span`.
async fn burst(shared: Arc<Shared>, count: usize, span: Duration) {
    let half = span / 2;
    for (power, _) in [("cooling", 0), ("off", 1)] {
        let start = Instant::now();
        for d in 0..count {
            let at = start + half.mul_f64(d as f64 / count as f64);
            tokio::time::sleep_until(at.into()).await;
            let _ = shared.agents[d].send(AgentCmd::State { device: d, power });
        }
    }
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(f64::NAN)
}

async fn http_get(http: &str, path: &str) -> anyhow::Result<String> {
    let mut s = TcpStream::connect(http).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nhost: venue\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    Ok(out)
}

/// Runs the venue scenario against a fresh hub process.
pub async fn run(p: VenueParams) -> anyhow::Result<Value> {
    let server = Server::start(System::Patchbay).await?;
    let hub = server.addr.clone();
    let http = server.http.clone().unwrap_or_default();
    let rooms = rooms(p.devices);
    let room_of: Vec<usize> = rooms
        .iter()
        .enumerate()
        .flat_map(|(r, range)| range.clone().map(move |_| r))
        .collect();
    let cpu0 = server.cpu_seconds();
    let mut rss = Vec::new();

    // Agents: every device described, stated and online.
    let mut senders = Vec::with_capacity(p.devices);
    let mut receivers = Vec::with_capacity(p.agents);
    for _ in 0..p.agents {
        let (tx, rx) = mpsc::unbounded_channel();
        receivers.push((tx, rx));
    }
    for d in 0..p.devices {
        senders.push(receivers[d % p.agents].0.clone());
    }
    let shared = Arc::new(Shared {
        epoch: Instant::now(),
        phase: Phase(AtomicUsize::new(0)),
        latency: Samples::default(),
        agents: senders,
        hostile: AtomicBool::new(false),
        stop: AtomicBool::new(false),
    });
    let t0 = Instant::now();
    let mut ready = Vec::new();
    for (a, (tx, rx)) in receivers.into_iter().enumerate() {
        let devices: Vec<(usize, usize)> = (a..p.devices)
            .step_by(p.agents)
            .map(|d| (d, room_of[d]))
            .collect();
        let (rtx, rrx) = tokio::sync::oneshot::channel();
        ready.push(rrx);
        let (hub, shared) = (hub.clone(), shared.clone());
        tokio::spawn(async move {
            let r = agent(hub, a, devices, shared.clone(), rx, tx, rtx).await;
            shared.report(&format!("agent {a}"), r);
        });
    }
    for r in ready {
        r.await?;
    }
    let publish_s = t0.elapsed().as_secs_f64();
    eprintln!(
        "venue: {} devices published by {} agents in {publish_s:.1} s",
        p.devices, p.agents
    );

    // The storm: every controller at once, consoles over the ramp.
    let (ctl_tx, mut ctl_rx) = mpsc::unbounded_channel();
    let (con_tx, mut con_rx) = mpsc::unbounded_channel();
    let t1 = Instant::now();
    for c in 0..p.controllers {
        let room = rooms[c % rooms.len()].clone();
        let (hub, shared, tx) = (hub.clone(), shared.clone(), ctl_tx.clone());
        tokio::spawn(async move {
            let r = controller(hub, room, shared.clone(), tx).await;
            shared.report(&format!("controller {c}"), r);
        });
    }
    for k in 0..p.consoles {
        let (http, shared, tx) = (http.clone(), shared.clone(), con_tx.clone());
        let delay = p.console_ramp.mul_f64(k as f64 / p.consoles.max(1) as f64);
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let r = console(http, shared.clone(), tx).await;
            shared.report(&format!("console {k}"), r);
        });
    }
    drop((ctl_tx, con_tx));
    let mut ctl_times = Vec::with_capacity(p.controllers);
    let mut con_times = Vec::with_capacity(p.consoles);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    while ctl_times.len() < p.controllers || con_times.len() < p.consoles {
        tokio::select! {
            Some(d) = ctl_rx.recv() => ctl_times.push(d.as_micros() as u64),
            Some(d) = con_rx.recv() => con_times.push(d.as_micros() as u64),
            _ = tokio::time::sleep_until(deadline) => break,
            else => break,
        }
    }
    let storm_s = t1.elapsed().as_secs_f64();
    ctl_times.sort_unstable();
    con_times.sort_unstable();
    rss.push(server.rss_bytes());
    eprintln!(
        "venue: {}/{} controllers and {}/{} consoles served in {storm_s:.1} s",
        ctl_times.len(),
        p.controllers,
        con_times.len(),
        p.consoles
    );

    // Steady state, then with the hostile viewer and the reader that never reads, then the burst.
    let rtt = Arc::new(Samples::default());
    let op = {
        let (http, shared, rtt) = (http.clone(), shared.clone(), rtt.clone());
        tokio::spawn(async move { operator(http, p.devices, shared, rtt).await })
    };
    let loops = Arc::new(AtomicU64::new(0));
    let hostile_task = {
        let (hub, shared, loops) = (hub.clone(), shared.clone(), loops.clone());
        tokio::spawn(async move { hostile(hub, p.devices, shared, loops).await })
    };
    let sampler = {
        let pid = server.pid();
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut out = Vec::new();
            while !shared.stop.load(Ordering::Relaxed) {
                let status =
                    std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
                let kb: u64 = status
                    .lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.split_whitespace().next()?.parse().ok())
                    .unwrap_or(0);
                out.push(kb * 1024);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            out
        })
    };
    shared.phase.set(1);
    steady(shared.clone(), p.rate, Instant::now() + p.steady).await;
    shared.phase.set(2);
    shared.hostile.store(true, Ordering::Relaxed);
    let _stalled = never_reader(hub.clone()).await?;
    steady(shared.clone(), p.rate, Instant::now() + p.steady).await;
    shared.phase.set(3);
    let burst_start = Instant::now();
    tokio::join!(
        burst(shared.clone(), p.burst.min(p.devices), p.burst_span),
        steady(shared.clone(), p.rate, burst_start + p.burst_span)
    );
    // Let the last deliveries land before the phase closes.
    tokio::time::sleep(Duration::from_secs(2)).await;
    shared.phase.set(4);
    shared.stop.store(true, Ordering::Relaxed);
    let _ = op.await;
    hostile_task.abort();
    let rss_series = sampler.await.unwrap_or_default();
    rss.extend(rss_series);
    let cpu = server.cpu_seconds() - cpu0;
    let elapsed = t0.elapsed().as_secs_f64();
    let metrics = http_get(&http, "/metrics").await.unwrap_or_default();
    server.stop().await;

    let lat = |phase: &str| {
        let v = shared.latency.take(phase);
        json!({"samples": v.len(), "p50_ms": pct(&v, 0.5) / 1e3, "p99_ms": pct(&v, 0.99) / 1e3, "max_ms": v.last().map(|m| *m as f64 / 1e3)})
    };
    let rtts = |phase: &str| {
        let v = rtt.take(phase);
        json!({"samples": v.len(), "p50_ms": pct(&v, 0.5) / 1e3, "p99_ms": pct(&v, 0.99) / 1e3})
    };
    let failed = rtt.take("failed");
    let rss_max = rss.iter().copied().max().unwrap_or(0);
    Ok(json!({
        "params": {"devices": p.devices, "agents": p.agents, "controllers": p.controllers, "consoles": p.consoles,
                   "rate_per_s": p.rate, "steady_s": p.steady.as_secs_f64(), "burst_devices": p.burst, "burst_s": p.burst_span.as_secs_f64()},
        "publish_s": publish_s,
        "storm_s": storm_s,
        "controllers_served": ctl_times.len(),
        "controller_snapshot_p50_ms": pct(&ctl_times, 0.5) / 1e3,
        "controller_snapshot_p99_ms": pct(&ctl_times, 0.99) / 1e3,
        "controller_snapshot_max_ms": ctl_times.last().map(|m| *m as f64 / 1e3),
        "consoles_served": con_times.len(),
        "console_snapshot_p50_ms": pct(&con_times, 0.5) / 1e3,
        "console_snapshot_p99_ms": pct(&con_times, 0.99) / 1e3,
        "latency_steady": lat("steady"),
        "latency_steady_hostile": lat("steady_hostile"),
        "latency_burst": lat("burst"),
        "patch_overhead_steady": rtts("steady"),
        "patch_overhead_hostile": rtts("steady_hostile"),
        "patch_overhead_burst": rtts("burst"),
        "patch_failed": failed.len(),
        "hostile_loops": loops.load(Ordering::Relaxed),
        "hub_rss_max_mib": rss_max as f64 / (1 << 20) as f64,
        "hub_rss_series_mib": rss.iter().map(|b| (*b as f64 / (1 << 20) as f64).round()).collect::<Vec<_>>(),
        "hub_cpu_s": cpu,
        "hub_cpu_share": cpu / elapsed,
        "lock_hold_max_ms": metric(&metrics, "patchbay_lock_hold_max_seconds") * 1e3,
        "lock_running_max_ms": metric(&metrics, "patchbay_lock_hold_running_max_seconds") * 1e3,
        "lock_holds_over_5ms": metric(&metrics, "patchbay_lock_hold_seconds_count") - metric(&metrics, "patchbay_lock_hold_seconds_bucket{le=\"0.005\"}"),
        "slow_consumer_drops": metric(&metrics, "patchbay_slow_consumer_drops_total"),
    }))
}

/// Checks the issue's targets; returns (label, passed) rows.
pub fn targets(r: &Value, p: &VenueParams) -> Vec<(String, bool)> {
    let f = |k: &str| r[k].as_f64().unwrap_or(f64::NAN);
    let g = |a: &str, b: &str| r[a][b].as_f64().unwrap_or(f64::NAN);
    vec![
        (
            format!(
                "every controller served ({} of {})",
                f("controllers_served"),
                p.controllers
            ),
            f("controllers_served") as usize == p.controllers,
        ),
        (
            format!(
                "every console served ({} of {})",
                f("consoles_served"),
                p.consoles
            ),
            f("consoles_served") as usize == p.consoles,
        ),
        (
            format!(
                "controller snapshots within 10 s of connecting (max {:.0} ms)",
                f("controller_snapshot_max_ms")
            ),
            f("controller_snapshot_max_ms") < 10_000.0,
        ),
        (
            format!(
                "console snapshot p99 < 2 s ({:.0} ms)",
                f("console_snapshot_p99_ms")
            ),
            f("console_snapshot_p99_ms") < 2_000.0,
        ),
        (
            format!(
                "steady latency p99 < 50 ms ({:.1} ms)",
                g("latency_steady", "p99_ms")
            ),
            g("latency_steady", "p99_ms") < 50.0,
        ),
        (
            format!(
                "burst latency p99 < 500 ms ({:.1} ms)",
                g("latency_burst", "p99_ms")
            ),
            g("latency_burst", "p99_ms") < 500.0,
        ),
        (
            format!(
                "PATCH overhead p99 < 20 ms ({:.1} ms)",
                g("patch_overhead_steady", "p99_ms")
            ),
            g("patch_overhead_steady", "p99_ms") < 20.0,
        ),
        (
            format!(
                "no lock hold > 5 ms (longest {:.2} ms)",
                f("lock_hold_max_ms")
            ),
            f("lock_hold_max_ms") <= 5.0,
        ),
        (
            format!("hub RSS < 2 GiB ({:.0} MiB)", f("hub_rss_max_mib")),
            f("hub_rss_max_mib") < 2048.0,
        ),
        (
            format!(
                "hostile viewer changes p99 by < 2x ({:.1} -> {:.1} ms)",
                g("latency_steady", "p99_ms"),
                g("latency_steady_hostile", "p99_ms")
            ),
            g("latency_steady_hostile", "p99_ms") < 2.0 * g("latency_steady", "p99_ms").max(1.0),
        ),
    ]
}
