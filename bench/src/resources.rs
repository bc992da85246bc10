//! The hub's resource figures: memory with many idle connections and with
//! many retained device states, and the device list's time at that size.

use std::time::Instant;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::servers::Server;
use crate::wire::{Conn, System};

async fn http_get(addr: &str, path: &str) -> anyhow::Result<(usize, f64)> {
    let t = Instant::now();
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut body = Vec::new();
    s.read_to_end(&mut body).await?;
    Ok((body.len(), t.elapsed().as_secs_f64() * 1e3))
}

/// Measures on fresh hubs; `quick` uses small counts.
pub async fn measure(quick: bool) -> anyhow::Result<Value> {
    let (idle, devices) = if quick {
        (200, 2_000)
    } else {
        (10_000, 100_000)
    };

    // Room for the idle connections plus the probe.
    let server = Server::start_with(System::Patchbay, Some("max_connections = 20000\n")).await?;
    let base = server.rss_bytes();
    let mut conns = Vec::with_capacity(idle);
    for _ in 0..idle {
        conns.push(TcpStream::connect(&server.addr).await?);
    }
    // A round trip on a fresh connection: every earlier connection has been accepted.
    let _probe = Conn::open(System::Patchbay, &server.addr, "probe").await?;
    let with_idle = server.rss_bytes();
    drop(conns);
    server.stop().await;

    let server = Server::start(System::Patchbay).await?;
    let base2 = server.rss_bytes();
    let mut c = Conn::open(System::Patchbay, &server.addr, "agent").await?;
    let mut out = Vec::with_capacity(1 << 20);
    for i in 0..devices {
        out.extend_from_slice(
            format!(
                "{{\"op\":\"pub\",\"tag\":\"dev/d{i}/state\",\"retain\":true,\"body\":{{\"power\":\"on\",\"input\":\"hdmi1\",\"mute\":false,\"lamp_hours\":{i},\"errors\":{{\"lamp\":\"ok\"}}}}}}\n"
            )
            .as_bytes(),
        );
        if out.len() > (1 << 20) {
            c.send(&out).await?;
            out.clear();
        }
    }
    c.send(&out).await?;
    c.send(b"{\"op\":\"ping\",\"id\":1}\n").await?;
    c.expect_line(b"{\"op\":\"pong\"").await?;
    let with_states = server.rss_bytes();
    out.clear();
    for i in 0..devices {
        out.extend_from_slice(format!(
            "{{\"op\":\"pub\",\"tag\":\"dev/d{i}/meta\",\"retain\":true,\"body\":{{\"id\":\"d{i}\",\"name\":\"Device {i}\",\"location\":\"Room {}\",\"driver\":\"pjlink\",\"settings\":[]}}}}\n{{\"op\":\"pub\",\"tag\":\"dev/d{i}/online\",\"retain\":true,\"body\":{{\"online\":true,\"reason\":null}}}}\n",
            i % 100
        ).as_bytes());
        if out.len() > (1 << 20) {
            c.send(&out).await?;
            out.clear();
        }
    }
    c.send(&out).await?;
    c.send(b"{\"op\":\"ping\",\"id\":2}\n").await?;
    c.expect_line(b"{\"op\":\"pong\"").await?;
    let http = server.http.clone().unwrap_or_default();
    let mut times = Vec::new();
    let mut size = 0;
    for _ in 0..3 {
        let (bytes, ms) = http_get(&http, "/api/devices").await?;
        size = bytes;
        times.push(ms);
    }
    times.sort_by(|a, b| a.total_cmp(b));
    let with_devices = server.rss_bytes();
    server.stop().await;
    let mib = |b: u64| (b as f64 / (1024.0 * 1024.0) * 10.0).round() / 10.0;
    Ok(json!({
        "rss_empty_mib": mib(base),
        format!("rss_{idle}_idle_connections_mib"): mib(with_idle),
        "rss_per_idle_connection_kib": ((with_idle.saturating_sub(base)) as f64 / idle as f64 / 1024.0 * 10.0).round() / 10.0,
        format!("rss_{devices}_retained_states_mib"): mib(with_states),
        "rss_empty_second_hub_mib": mib(base2),
        format!("rss_{devices}_devices_meta_state_online_mib"): mib(with_devices),
        format!("get_api_devices_{devices}_ms"): (times[1] * 10.0).round() / 10.0,
        "get_api_devices_response_bytes": size,
    }))
}
