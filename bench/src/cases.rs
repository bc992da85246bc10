//! The benchmark cases, each run the same way against every system.

use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::io::AsyncWriteExt;

use crate::servers::Server;
use crate::wire::{encode_pub, payload, serve_requests, Conn, Requester, System};

/// Sizes of one run.
#[derive(Debug, Clone, Copy)]
pub struct Params {
    /// Messages published in the throughput cases.
    pub messages: u64,
    /// Subscribers in the fan-out case.
    pub fanout: usize,
    /// Sequential requests in the latency case.
    pub requests: u64,
    /// Retained tags in the late-joiner case.
    pub retained: u64,
    /// Messages per write on the publisher side.
    pub batch: usize,
}

/// Result of a throughput run.
#[derive(Debug, Clone, Copy, Default)]
pub struct Throughput {
    /// Messages published per second (first publish to last delivery).
    pub msgs_per_s: f64,
    /// Copies delivered per second.
    pub deliveries_per_s: f64,
    /// Copies that never arrived.
    pub lost: u64,
    /// Server CPU time per delivered copy, in nanoseconds.
    pub cpu_ns_per_delivery: f64,
}

/// How long any single run may take before what has not arrived counts as lost.
const RUN_LIMIT: Duration = Duration::from_secs(60);

fn topic(sys: System) -> &'static str {
    match sys {
        System::Mqtt | System::Nats | System::Patchbay => "bench",
    }
}

/// One publisher, `subs` subscribers, `p.messages` messages of 100 bytes.
pub async fn throughput(server: &Server, subs: usize, p: Params) -> anyhow::Result<Throughput> {
    let sys = server.sys;
    let mut receivers = Vec::new();
    for i in 0..subs {
        let mut c = Conn::open(sys, &server.addr, &format!("sub{i}")).await?;
        c.subscribe(topic(sys), false).await?;
        receivers.push(c);
    }
    let mut publisher = Conn::open(sys, &server.addr, "pub").await?;
    let cpu_before = server.cpu_seconds();
    let start = Instant::now();
    let deadline = tokio::time::Instant::now() + RUN_LIMIT;
    let n = p.messages;
    let tasks: Vec<_> = receivers
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                let got = c.count_until(n, deadline).await;
                (got, Instant::now())
            })
        })
        .collect();
    let mut batch = Vec::with_capacity(p.batch * 160);
    let body = payload();
    for _ in 0..p.batch {
        encode_pub(sys, topic(sys), &body, false, &mut batch);
    }
    let mut sent = 0u64;
    while sent < n {
        let k = (n - sent).min(p.batch as u64) as usize;
        let bytes = if k == p.batch {
            &batch[..]
        } else {
            &batch[..batch.len() / p.batch * k]
        };
        publisher.stream.write_all(bytes).await.context("publish")?;
        sent += k as u64;
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
    drop(publisher);
    Ok(Throughput {
        // Only what arrived counts: a run that drops a subscriber must not look fast.
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

/// Sequential request/reply round trips; returns sorted latencies in microseconds.
pub async fn latency(server: &Server, p: Params) -> anyhow::Result<Vec<f64>> {
    let sys = server.sys;
    let responder = Conn::open(sys, &server.addr, "responder").await?;
    let serving = tokio::spawn(serve_requests(responder));
    let mut req = Requester::new(Conn::open(sys, &server.addr, "requester").await?).await?;
    // Make sure the responder is in place before timing.
    let ready = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let attempt = tokio::time::timeout(Duration::from_millis(500), req.round_trip()).await;
            if matches!(attempt, Ok(Ok(()))) {
                return;
            }
        }
    })
    .await;
    ready.context("the responder never answered")?;
    for _ in 0..(p.requests / 10).max(10) {
        req.round_trip().await?;
    }
    let mut samples = Vec::with_capacity(p.requests as usize);
    for _ in 0..p.requests {
        let t = Instant::now();
        req.round_trip().await?;
        samples.push(t.elapsed().as_secs_f64() * 1e6);
    }
    serving.abort();
    samples.sort_by(|a, b| a.total_cmp(b));
    Ok(samples)
}

/// Publishes `p.retained` retained values, then times a late joiner's snapshot of them (milliseconds).
pub async fn snapshot(server: &Server, p: Params) -> anyhow::Result<Option<f64>> {
    let sys = server.sys;
    if sys == System::Nats {
        // Core NATS keeps no retained values (that needs JetStream).
        return Ok(None);
    }
    let mut publisher = Conn::open(sys, &server.addr, "retainer").await?;
    let body = payload();
    let mut out = Vec::new();
    for i in 0..p.retained {
        encode_pub(sys, &format!("r/{i}"), &body, true, &mut out);
    }
    publisher.send(&out).await?;
    // A round trip after the publishes: the server has stored them all.
    match sys {
        System::Patchbay => {
            publisher.send(b"{\"op\":\"ping\",\"id\":9}\n").await?;
            publisher.expect_line(b"{\"op\":\"pong\"").await?;
        }
        _ => {
            publisher.subscribe("sync/x", false).await?;
        }
    }
    let mut joiner = Conn::open(sys, &server.addr, "joiner").await?;
    let t = Instant::now();
    joiner.subscribe("r/#", true).await?;
    joiner.count(p.retained).await?;
    Ok(Some(t.elapsed().as_secs_f64() * 1e3))
}

/// The value at quantile `q` of sorted samples.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

impl Conn {
    /// Like `count`, but stops at `deadline` and returns how many arrived.
    pub async fn count_until(&mut self, n: u64, deadline: tokio::time::Instant) -> u64 {
        let mut seen = 0;
        loop {
            seen += self.take_messages();
            if seen >= n {
                return seen;
            }
            match tokio::time::timeout_at(deadline, self.read_more()).await {
                Ok(Ok(())) => {}
                _ => return seen,
            }
        }
    }
}
