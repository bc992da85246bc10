//! The same throughput and request/reply cases, driven through each
//! system's own client library as an integrator would use it: the patchbay
//! client (`patchbay-client`) against the hub, async-nats against
//! nats-server. The raw cases (`cases.rs`) measure the servers; these
//! measure what a program built on the library gets.

use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::StreamExt;

use crate::cases::{Params, Throughput};
use crate::servers::Server;
use crate::wire::{payload, System};

/// How long any single run may take before what has not arrived counts as lost.
const RUN_LIMIT: Duration = Duration::from_secs(60);

/// Room for every message of a run in each subscription's buffer, in both
/// libraries: the cases measure throughput, not the buffers' drop policies.
const SUBSCRIPTION_CAPACITY: usize = 1 << 21;

async fn patchbay(server: &Server, name: &str) -> anyhow::Result<patchbay_client::Client> {
    Ok(patchbay_client::ClientBuilder::new(&server.addr)
        .name(name)
        .subscription_capacity(SUBSCRIPTION_CAPACITY)
        .no_reconnect()
        .connect()
        .await?)
}

async fn nats(server: &Server) -> anyhow::Result<async_nats::Client> {
    Ok(async_nats::ConnectOptions::new()
        .subscription_capacity(SUBSCRIPTION_CAPACITY)
        .connect(format!("nats://{}", server.addr))
        .await?)
}

/// Messages per library throughput run: a fifth of the raw cases' (200,000 in
/// a full run, as the client library's issue measured them).
pub fn messages(p: Params) -> u64 {
    (p.messages / 5).max(1)
}

/// One publisher, `subs` subscribers, [`messages`] messages of 100 bytes, through the library.
pub async fn throughput(server: &Server, subs: usize, p: Params) -> anyhow::Result<Throughput> {
    let n = messages(p);
    let deadline = tokio::time::Instant::now() + RUN_LIMIT;
    let cpu_before;
    let start;
    let mut tasks = Vec::new();
    match server.sys {
        System::Patchbay => {
            for i in 0..subs {
                let c = patchbay(server, &format!("sub{i}")).await?;
                let mut sub = c.subscribe(["bench"]).await?;
                tasks.push(tokio::spawn(async move {
                    let _keep = c;
                    let mut got = 0u64;
                    while got < n {
                        match tokio::time::timeout_at(deadline, sub.next()).await {
                            Ok(Some(_)) => got += 1,
                            _ => break,
                        }
                    }
                    (got, Instant::now())
                }));
            }
            let publisher = patchbay(server, "pub").await?;
            let body = patchbay_client::Body::json(&payload())?;
            cpu_before = server.cpu_seconds();
            start = Instant::now();
            for _ in 0..n {
                publisher.publish("bench", &body).await?;
            }
            publisher.flush().await?;
        }
        System::Nats => {
            for _ in 0..subs {
                let c = nats(server).await?;
                let mut sub = c.subscribe("bench").await?;
                c.flush().await?;
                tasks.push(tokio::spawn(async move {
                    let _keep = c;
                    let mut got = 0u64;
                    while got < n {
                        match tokio::time::timeout_at(deadline, sub.next()).await {
                            Ok(Some(_)) => got += 1,
                            _ => break,
                        }
                    }
                    (got, Instant::now())
                }));
            }
            let publisher = nats(server).await?;
            let body = bytes::Bytes::from(payload());
            cpu_before = server.cpu_seconds();
            start = Instant::now();
            for _ in 0..n {
                publisher.publish("bench", body.clone()).await?;
            }
            publisher.flush().await?;
        }
        System::Mqtt => anyhow::bail!("no client library case for mosquitto"),
    }
    let mut received = 0u64;
    let mut last = start;
    for t in tasks {
        let (got, at) = t.await?;
        received += got;
        last = last.max(at);
    }
    let secs = (last - start).as_secs_f64().max(1e-9);
    let cpu = server.cpu_seconds() - cpu_before;
    Ok(Throughput {
        msgs_per_s: received as f64 / subs as f64 / secs,
        deliveries_per_s: received as f64 / secs,
        lost: n * subs as u64 - received,
        cpu_ns_per_delivery: if received > 0 {
            cpu * 1e9 / received as f64
        } else {
            0.0
        },
    })
}

/// Sequential request/reply round trips through the library; sorted latencies in microseconds.
pub async fn latency(server: &Server, p: Params) -> anyhow::Result<Vec<f64>> {
    let warmup = (p.requests / 10).max(10);
    let mut samples = Vec::with_capacity(p.requests as usize);
    match server.sys {
        System::Patchbay => {
            let responder = patchbay(server, "responder").await?;
            responder.claim("svc").await?;
            let requests = responder.requests();
            let reply = patchbay_client::Body::json(&payload())?;
            let serving = tokio::spawn(async move {
                while let Some(r) = requests.next().await {
                    let _ = r.respond(&reply).await;
                }
            });
            let requester = patchbay(server, "requester").await?;
            let body = patchbay_client::Body::json(&payload())?;
            for i in 0..warmup + p.requests {
                let t = Instant::now();
                requester.request("svc", &body).await.context("request")?;
                if i >= warmup {
                    samples.push(t.elapsed().as_secs_f64() * 1e6);
                }
            }
            serving.abort();
        }
        System::Nats => {
            let responder = nats(server).await?;
            let mut sub = responder.subscribe("svc").await?;
            responder.flush().await?;
            let reply = bytes::Bytes::from(payload());
            let serving = tokio::spawn(async move {
                while let Some(m) = sub.next().await {
                    if let Some(to) = m.reply {
                        let _ = responder.publish(to, reply.clone()).await;
                    }
                }
            });
            let requester = nats(server).await?;
            let body = bytes::Bytes::from(payload());
            for i in 0..warmup + p.requests {
                let t = Instant::now();
                requester
                    .request("svc", body.clone())
                    .await
                    .context("request")?;
                if i >= warmup {
                    samples.push(t.elapsed().as_secs_f64() * 1e6);
                }
            }
            serving.abort();
        }
        System::Mqtt => anyhow::bail!("no client library case for mosquitto"),
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    Ok(samples)
}
