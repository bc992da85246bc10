//! The cluster scenario: two hubs over a 3-node NATS cluster beside one
//! single hub, in the same run, through the client library and HTTP as
//! users use them: retained state published on one hub and seen on the
//! other (latency), a PATCH through one hub to an agent on the other
//! (round trip), and 1->1 messages through two hubs (throughput, losses).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};
use tokio::io::BufReader;
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use crate::cases::quantile;
use crate::servers::Server;

/// How much of each case.
#[derive(Debug, Clone, Copy)]
pub struct ClusterParams {
    /// State changes timed one at a time.
    pub samples: usize,
    /// PATCHes timed one at a time.
    pub patches: usize,
    /// Messages in the 1->1 run.
    pub messages: u64,
}

impl ClusterParams {
    /// A smoke run.
    pub fn quick() -> Self {
        ClusterParams {
            samples: 100,
            patches: 50,
            messages: 5_000,
        }
    }

    /// The full run.
    pub fn full() -> Self {
        ClusterParams {
            samples: 2_000,
            patches: 1_000,
            messages: 100_000,
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Three nats-server processes routed to each other, with JetStream.
struct Nats {
    _children: Vec<Child>,
    urls: Vec<String>,
    dir: PathBuf,
}

impl Nats {
    async fn start() -> anyhow::Result<Nats> {
        let dir = std::env::temp_dir().join(format!("patchbay-bench-nats-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let ports = (0..3)
            .map(|_| Ok((free_port()?, free_port()?)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let routes = ports
            .iter()
            .map(|(_, c)| format!("nats-route://127.0.0.1:{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        let mut children = Vec::new();
        for (i, (port, cport)) in ports.iter().enumerate() {
            let conf = dir.join(format!("n{i}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "server_name: n{i}\nlisten: 127.0.0.1:{port}\njetstream {{ store_dir: \"{}\" }}\ncluster {{ name: bench, listen: 127.0.0.1:{cport}, routes: [{routes}] }}\n",
                    dir.join(format!("n{i}")).display()
                ),
            )?;
            children.push(
                Command::new("nats-server")
                    .arg("-c")
                    .arg(&conf)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .kill_on_drop(true)
                    .spawn()
                    .context("cannot start nats-server (run bench/install first)")?,
            );
        }
        Ok(Nats {
            _children: children,
            urls: ports
                .iter()
                .map(|(p, _)| format!("\"nats://127.0.0.1:{p}\""))
                .collect(),
            dir,
        })
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Waits until the hub's `/healthz` says it is in the cluster.
async fn joined(server: &Server) -> anyhow::Result<()> {
    let http = server.http.as_deref().context("hub without HTTP")?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok((200, body)) = crate::journal::get(http, "/healthz").await {
            let v: Value = serde_json::from_str(&body).unwrap_or_default();
            if v["cluster"]["connected"] == true {
                return Ok(());
            }
        }
        if tokio::time::Instant::now() > deadline {
            bail!("hub at {http} never joined the cluster");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn client(server: &Server, name: &str) -> anyhow::Result<patchbay_client::Client> {
    Ok(patchbay_client::ClientBuilder::new(&server.addr)
        .name(name)
        .subscription_capacity(1 << 20)
        .no_reconnect()
        .connect()
        .await?)
}

fn retain() -> patchbay_client::PublishOptions<'static> {
    patchbay_client::PublishOptions {
        retain: true,
        cid: None,
    }
}

/// Retained state published on `from`, timed until a subscriber on `to` has it.
async fn state_latency(from: &Server, to: &Server, n: usize) -> anyhow::Result<Vec<f64>> {
    let publisher = client(from, "publisher").await?;
    let reader = client(to, "reader").await?;
    let mut sub = reader.subscribe(["dev/bench-lat/state"]).await?;
    let mut out = Vec::with_capacity(n);
    let warmup = 20;
    for i in 0..n + warmup {
        let body = patchbay_client::Body::json(&json!({"seq": i}))?;
        let start = Instant::now();
        publisher
            .publish_with("dev/bench-lat/state", &body, retain())
            .await?;
        let want = format!("{{\"seq\":{i}}}");
        loop {
            let m = tokio::time::timeout(Duration::from_secs(10), sub.next())
                .await
                .context("a state change never arrived")?
                .context("subscription ended")?;
            if m.body_str() == want {
                break;
            }
        }
        if i >= warmup {
            out.push(start.elapsed().as_secs_f64() * 1e6);
        }
    }
    out.sort_by(f64::total_cmp);
    Ok(out)
}

/// PATCHes through `via`'s HTTP to an agent connected to `agent_on`, each timed.
async fn patch_rtt(agent_on: &Server, via: &Server, n: usize) -> anyhow::Result<Vec<f64>> {
    let id = "bench-patch";
    let agent = client(agent_on, "bench-agent").await?;
    agent.claim(&format!("dev/{id}")).await?;
    let settings = json!([{"name": "power", "label": "Power", "type": "enum", "values": ["on", "off"], "writable": true}]);
    for (part, body) in [
        (
            "meta",
            json!({"id": id, "name": "Bench", "settings": settings}),
        ),
        ("state", json!({"power": "off"})),
        ("online", json!({"online": true})),
    ] {
        agent
            .publish_acked(
                &format!("dev/{id}/{part}"),
                &patchbay_client::Body::json(&body)?,
                retain(),
            )
            .await?;
    }
    let requests = agent.requests();
    let serving = tokio::spawn(async move {
        while let Some(r) = requests.next().await {
            let body =
                patchbay_client::Body::from_json_bytes(bytes::Bytes::copy_from_slice(r.body()));
            if let Ok(b) = body {
                let _ = r.respond(&b).await;
            }
        }
    });
    let http = via.http.clone().context("hub without HTTP")?;
    // The device must be known (and online) where the PATCH goes.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok((200, body)) = crate::journal::get(&http, &format!("/api/devices/{id}")).await {
            if body.contains("\"online\":true") {
                break;
            }
        }
        if tokio::time::Instant::now() > deadline {
            bail!("the device never appeared on {http}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut s = BufReader::new(TcpStream::connect(&http).await?);
    let mut out = Vec::with_capacity(n);
    for i in 0..n + 10 {
        let body = if i % 2 == 0 {
            r#"{"power":"on"}"#
        } else {
            r#"{"power":"off"}"#
        };
        let req = format!(
            "PATCH /api/devices/{id} HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        let start = Instant::now();
        let status = crate::venue::http_request(&mut s, req.as_bytes()).await?;
        if status != 200 {
            bail!("PATCH answered {status}");
        }
        if i >= 10 {
            out.push(start.elapsed().as_secs_f64() * 1e6);
        }
    }
    serving.abort();
    out.sort_by(f64::total_cmp);
    Ok(out)
}

/// `n` messages of 100 bytes published on `from` as fast as the library
/// takes them, counted by a subscriber on `to`: (msgs/s, lost).
async fn one_to_one(from: &Server, to: &Server, n: u64) -> anyhow::Result<(f64, u64)> {
    let reader = client(to, "sink").await?;
    let mut sub = reader.subscribe(["bench/one"]).await?;
    let publisher = client(from, "source").await?;
    let body = patchbay_client::Body::json(&crate::wire::payload())?;
    // Wait until the path is open end to end (cluster subscriptions propagate).
    let probe = patchbay_client::Body::json(&json!("probe"))?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        publisher.publish("bench/one", &probe).await?;
        if let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(200), sub.next()).await {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            bail!("nothing crossed from one hub to the other");
        }
    }
    let counting = tokio::spawn(async move {
        let mut got = 0u64;
        let mut last = Instant::now();
        while got < n {
            match tokio::time::timeout(Duration::from_secs(5), sub.next()).await {
                Ok(Some(m)) if m.body_str() != "\"probe\"" => {
                    got += 1;
                    last = Instant::now();
                }
                Ok(Some(_)) => {}
                _ => break,
            }
        }
        (got, last)
    });
    let start = Instant::now();
    for _ in 0..n {
        publisher.publish("bench/one", &body).await?;
    }
    publisher.flush().await?;
    let (got, last) = counting.await?;
    let secs = last.duration_since(start).as_secs_f64().max(1e-9);
    Ok((got as f64 / secs, n - got))
}

fn summary(lat: &[f64], rtt: &[f64], tput: (f64, u64)) -> Value {
    json!({
        "state_latency_p50_us": quantile(lat, 0.5),
        "state_latency_p99_us": quantile(lat, 0.99),
        "patch_rtt_p50_us": quantile(rtt, 0.5),
        "patch_rtt_p99_us": quantile(rtt, 0.99),
        "one_to_one_msgs_per_s": tput.0,
        "one_to_one_lost": tput.1,
    })
}

/// Runs the scenario: single hub first, then the two hubs of a cluster.
pub async fn run(p: ClusterParams) -> anyhow::Result<Value> {
    let single = Server::start_hub(None, false).await?;
    let lat = state_latency(&single, &single, p.samples).await?;
    let rtt = patch_rtt(&single, &single, p.patches).await?;
    let tput = one_to_one(&single, &single, p.messages).await?;
    single.stop().await;
    let single = summary(&lat, &rtt, tput);

    let nats = Nats::start().await?;
    let cfg = format!(
        "[cluster]\nnats = [{}]\nreplicas = 3\n",
        nats.urls.join(", ")
    );
    let a = Server::start_hub(Some(&cfg), false).await?;
    let b = Server::start_hub(Some(&cfg), false).await?;
    joined(&a).await?;
    joined(&b).await?;
    let lat = state_latency(&a, &b, p.samples).await?;
    let rtt = patch_rtt(&a, &b, p.patches).await?;
    let tput = one_to_one(&a, &b, p.messages).await?;
    a.stop().await;
    b.stop().await;
    drop(nats);
    Ok(json!({
        "single_hub": single,
        "two_hubs_over_nats": summary(&lat, &rtt, tput),
    }))
}
