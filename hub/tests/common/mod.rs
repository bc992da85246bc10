//! Helpers shared by the hub's integration tests: an in-process hub on a
//! real loopback port and a raw line client that sees frames exactly.

#![allow(dead_code)]

use std::time::Duration;

use patchbay_hub::config::HubConfig;
use patchbay_hub::server::{start, RunningHub};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpSocket, TcpStream};

/// How long any single expected frame may take before a test fails.
pub const WAIT: Duration = Duration::from_secs(10);

/// A hub on 127.0.0.1 with an OS-chosen port.
pub async fn hub_with(mut config: HubConfig) -> RunningHub {
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.http_listen = "127.0.0.1:0".parse().unwrap();
    start(config).await.expect("hub starts")
}

/// A hub listening on `addr` (its HTTP side on a free port).
pub async fn hub_at(addr: std::net::SocketAddr, mut config: HubConfig) -> RunningHub {
    config.listen = addr;
    config.http_listen = "127.0.0.1:0".parse().unwrap();
    start(config).await.expect("hub starts")
}

/// Serves `hub`'s wire protocol on a free loopback port, without the
/// automation engines `start` runs (a test runs those itself, on its own
/// clock); automation connects there.
pub async fn wire_only(hub: &std::sync::Arc<patchbay_hub::server::Hub>) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    hub.automation_link().set_listener(addr);
    let (_keep, stop) = tokio::sync::watch::channel(false);
    let hub = hub.clone();
    tokio::spawn(async move {
        let _keep = _keep;
        while let Ok((stream, peer)) = listener.accept().await {
            tokio::spawn(patchbay_hub::server::serve_tcp(
                hub.clone(),
                stream,
                peer,
                stop.clone(),
            ));
        }
    });
    addr
}

/// A hub with default settings.
pub async fn hub() -> RunningHub {
    hub_with(HubConfig::default()).await
}

/// A client that writes and reads raw NDJSON lines.
pub struct Raw {
    rd: tokio::io::Lines<BufReader<OwnedReadHalf>>,
    wr: OwnedWriteHalf,
}

impl Raw {
    /// Connects without saying hello.
    pub async fn connect(hub: &RunningHub) -> Raw {
        Self::from_stream(TcpStream::connect(hub.addr).await.unwrap())
    }

    /// Connects to a wire listener by address.
    pub async fn connect_to(addr: std::net::SocketAddr) -> Raw {
        Self::from_stream(TcpStream::connect(addr).await.unwrap())
    }

    /// Connects with a small receive buffer, so that not reading backs up quickly.
    pub async fn connect_small_buffer(hub: &RunningHub) -> Raw {
        let sock = TcpSocket::new_v4().unwrap();
        sock.set_recv_buffer_size(4096).unwrap();
        Self::from_stream(sock.connect(hub.addr).await.unwrap())
    }

    fn from_stream(s: TcpStream) -> Raw {
        let (rd, wr) = s.into_split();
        Raw {
            rd: BufReader::new(rd).lines(),
            wr,
        }
    }

    /// Connects and says hello with `name` (and `token`).
    pub async fn hello(hub: &RunningHub, name: &str, token: Option<&str>) -> Raw {
        let mut c = Self::connect(hub).await;
        c.send(json!({"op":"hello","name":name,"token":token}))
            .await;
        let w = c.recv().await;
        assert_eq!(w["op"], "welcome", "{w}");
        c
    }

    /// Sends one frame.
    pub async fn send(&mut self, v: Value) {
        self.send_raw(format!("{v}\n").as_bytes()).await;
    }

    /// Sends raw bytes.
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.wr.write_all(bytes).await.unwrap();
    }

    /// The next frame; panics after [`WAIT`] or at EOF.
    pub async fn recv(&mut self) -> Value {
        self.try_recv()
            .await
            .expect("connection closed while a frame was expected")
    }

    /// The next frame, or `None` at EOF; panics after [`WAIT`].
    pub async fn try_recv(&mut self) -> Option<Value> {
        let line = tokio::time::timeout(WAIT, self.rd.next_line())
            .await
            .expect("timed out waiting for a frame")
            .ok()??;
        Some(
            serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("hub sent invalid JSON {line:?}: {e}")),
        )
    }

    /// Sends a frame with an id and returns the hub's answer to it.
    pub async fn call(&mut self, mut v: Value, id: u64) -> Value {
        v["id"] = json!(id);
        self.send(v).await;
        loop {
            let f = self.recv().await;
            if f["id"] == json!(id) {
                return f;
            }
        }
    }

    /// Subscribes and waits for `ok`.
    pub async fn sub(&mut self, tags: &[&str]) {
        let ok = self.call(json!({"op":"sub","tags":tags}), 900_001).await;
        assert_eq!(ok["op"], "ok", "{ok}");
    }

    /// Expects the connection to close after at most the given frames; returns them.
    pub async fn until_closed(&mut self) -> Vec<Value> {
        let mut frames = Vec::new();
        while let Some(f) = self.try_recv().await {
            frames.push(f);
        }
        frames
    }
}

/// Asserts `f` is an `err` frame with `code`.
pub fn assert_err(f: &Value, code: &str) {
    assert_eq!(f["op"], "err", "expected err {code}, got {f}");
    assert_eq!(f["code"], code, "{f}");
    assert!(
        f["message"].as_str().is_some_and(|m| !m.is_empty()),
        "err without message: {f}"
    );
}

/// Polls `f` until it holds, failing after [`WAIT`].
pub async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Sends raw bytes to the HTTP port and reads the answer until the server
/// closes: (status, head, body).
pub async fn http_raw(hub: &RunningHub, request: &[u8]) -> (u16, String, String) {
    let mut s = TcpStream::connect(hub.http_addr).await.unwrap();
    // The server may answer and close before reading everything.
    let _ = s.write_all(request).await;
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, tokio::io::AsyncReadExt::read_to_end(&mut s, &mut out))
        .await
        .expect("the server did not close the connection")
        .ok();
    split_response(&out)
}

/// Splits an HTTP/1.1 response into (status, head, body).
pub fn split_response(raw: &[u8]) -> (u16, String, String) {
    let text = String::from_utf8_lossy(raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_owned(), body.to_owned())
}

/// Reads a metric's value from `/metrics` text.
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no metric {name} in\n{text}"))
}
