//! The three systems' wire formats, as far as the benchmark needs them:
//! connect, subscribe, publish, request/reply, and counting messages in a
//! byte stream. One client harness drives all three the same way.

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Which server is under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum System {
    /// The patchbay hub (NDJSON).
    Patchbay,
    /// nats-server (NATS text protocol).
    Nats,
    /// mosquitto (MQTT 3.1.1, QoS 0).
    Mqtt,
}

impl System {
    /// Short name for tables.
    pub fn name(self) -> &'static str {
        match self {
            System::Patchbay => "patchbay",
            System::Nats => "nats",
            System::Mqtt => "mosquitto",
        }
    }
}

/// A connected client with a read buffer.
pub struct Conn {
    /// The system it speaks to.
    pub sys: System,
    /// The socket.
    pub stream: TcpStream,
    /// Bytes read but not yet consumed.
    pub buf: Vec<u8>,
}

fn mqtt_len(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            break;
        }
    }
}

fn mqtt_str(s: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

impl Conn {
    /// Connects and completes the handshake.
    pub async fn open(sys: System, addr: &str, name: &str) -> anyhow::Result<Conn> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connect {addr}"))?;
        stream.set_nodelay(true)?;
        let mut c = Conn {
            sys,
            stream,
            buf: Vec::with_capacity(1 << 16),
        };
        match sys {
            System::Patchbay => {
                c.send(format!("{{\"op\":\"hello\",\"name\":\"{name}\",\"id\":0}}\n").as_bytes())
                    .await?;
                c.expect_line(b"{\"op\":\"welcome\"").await?;
            }
            System::Nats => {
                c.expect_line(b"INFO").await?;
                c.send(b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\nPING\r\n")
                    .await?;
                c.expect_line(b"PONG").await?;
            }
            System::Mqtt => {
                let mut body = Vec::new();
                mqtt_str("MQTT", &mut body);
                body.extend_from_slice(&[4, 0x02, 0, 60]);
                mqtt_str(name, &mut body);
                let mut pkt = vec![0x10];
                mqtt_len(body.len(), &mut pkt);
                pkt.extend_from_slice(&body);
                c.send(&pkt).await?;
                let p = c.read_mqtt_packet().await?;
                if p.0 != 0x20 {
                    bail!("expected CONNACK, got {:#x}", p.0);
                }
            }
        }
        Ok(c)
    }

    /// Writes all bytes.
    pub async fn send(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.stream.write_all(bytes).await?;
        Ok(())
    }

    /// Reads more bytes into the buffer.
    pub async fn read_more(&mut self) -> anyhow::Result<()> {
        self.fill().await
    }

    async fn fill(&mut self) -> anyhow::Result<()> {
        if self.buf.capacity() - self.buf.len() < 4096 {
            self.buf.reserve(1 << 16);
        }
        let n = self.stream.read_buf(&mut self.buf).await?;
        if n == 0 {
            bail!("{} closed the connection", self.sys.name());
        }
        Ok(())
    }

    /// Reads lines until one starts with `prefix`; returns it.
    pub async fn expect_line(&mut self, prefix: &[u8]) -> anyhow::Result<Vec<u8>> {
        loop {
            while let Some(nl) = memchr::memchr(b'\n', &self.buf) {
                let line: Vec<u8> = self.buf.drain(..=nl).collect();
                if line.starts_with(prefix) {
                    return Ok(line);
                }
            }
            self.fill().await?;
        }
    }

    async fn read_mqtt_packet(&mut self) -> anyhow::Result<(u8, Vec<u8>)> {
        loop {
            if let Some((kind, start, len)) = mqtt_header(&self.buf) {
                if self.buf.len() >= start + len {
                    let body = self.buf[start..start + len].to_vec();
                    self.buf.drain(..start + len);
                    return Ok((kind, body));
                }
            }
            self.fill().await?;
        }
    }

    /// Subscribes to `topic` (for MQTT, `#` and `+` wildcards; for NATS, `>`/`*`) and waits until the server confirms.
    pub async fn subscribe(&mut self, topic: &str, snapshot: bool) -> anyhow::Result<()> {
        match self.sys {
            System::Patchbay => {
                let frame = format!(
                    "{{\"op\":\"sub\",\"tags\":[\"{topic}\"],\"snapshot\":{snapshot},\"id\":1}}\n"
                );
                self.send(frame.as_bytes()).await?;
                if !snapshot {
                    self.expect_line(b"{\"op\":\"ok\"").await?;
                }
            }
            System::Nats => {
                self.send(format!("SUB {topic} 1\r\nPING\r\n").as_bytes())
                    .await?;
                self.expect_line(b"PONG").await?;
            }
            System::Mqtt => {
                let mut body = vec![0, 1];
                mqtt_str(topic, &mut body);
                body.push(0);
                let mut pkt = vec![0x82];
                mqtt_len(body.len(), &mut pkt);
                pkt.extend_from_slice(&body);
                self.send(&pkt).await?;
                if !snapshot {
                    let p = self.read_mqtt_packet().await?;
                    if p.0 != 0x90 {
                        bail!("expected SUBACK, got {:#x}", p.0);
                    }
                }
            }
        }
        Ok(())
    }

    /// Reads until `n` messages have arrived (other frames are skipped).
    pub async fn count(&mut self, n: u64) -> anyhow::Result<()> {
        let mut seen = 0;
        while seen < n {
            seen += self.consume_messages();
            if seen < n {
                self.fill().await?;
            }
        }
        Ok(())
    }

    /// Counts and removes the complete messages in the buffer.
    pub fn take_messages(&mut self) -> u64 {
        self.consume_messages()
    }

    fn consume_messages(&mut self) -> u64 {
        let mut count = 0;
        let mut pos = 0;
        match self.sys {
            System::Patchbay => {
                while let Some(nl) = memchr::memchr(b'\n', &self.buf[pos..]) {
                    if self.buf[pos..].starts_with(b"{\"op\":\"msg\"") {
                        count += 1;
                    }
                    pos += nl + 1;
                }
            }
            System::Nats => loop {
                let rest = &self.buf[pos..];
                let Some(nl) = memchr::memchr(b'\n', rest) else {
                    break;
                };
                if rest.starts_with(b"MSG ") {
                    let header = &rest[..nl];
                    let size: usize = std::str::from_utf8(header)
                        .ok()
                        .and_then(|h| h.trim_end().rsplit(' ').next()?.parse().ok())
                        .unwrap_or(0);
                    if rest.len() < nl + 1 + size + 2 {
                        break;
                    }
                    count += 1;
                    pos += nl + 1 + size + 2;
                } else {
                    pos += nl + 1;
                }
            },
            System::Mqtt => {
                while let Some((kind, start, len)) = mqtt_header(&self.buf[pos..]) {
                    if self.buf.len() - pos < start + len {
                        break;
                    }
                    if kind & 0xf0 == 0x30 {
                        count += 1;
                    }
                    pos += start + len;
                }
            }
        }
        self.buf.drain(..pos);
        count
    }
}

/// (packet type byte, header length, remaining length) of the MQTT packet at the start of `b`.
fn mqtt_header(b: &[u8]) -> Option<(u8, usize, usize)> {
    let kind = *b.first()?;
    let mut len = 0usize;
    let mut mult = 1usize;
    for (i, byte) in b.iter().enumerate().skip(1).take(4) {
        len += (*byte as usize & 0x7f) * mult;
        if byte & 0x80 == 0 {
            return Some((kind, i + 1, len));
        }
        mult *= 128;
    }
    None
}

/// Appends one publish of `payload` on `topic`.
pub fn encode_pub(sys: System, topic: &str, payload: &str, retain: bool, out: &mut Vec<u8>) {
    match sys {
        System::Patchbay => {
            out.extend_from_slice(b"{\"op\":\"pub\",\"tag\":\"");
            out.extend_from_slice(topic.as_bytes());
            out.extend_from_slice(b"\",\"body\":\"");
            out.extend_from_slice(payload.as_bytes());
            out.extend_from_slice(if retain {
                b"\",\"retain\":true}\n"
            } else {
                b"\"}\n"
            });
        }
        System::Nats => {
            out.extend_from_slice(format!("PUB {topic} {}\r\n", payload.len()).as_bytes());
            out.extend_from_slice(payload.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        System::Mqtt => {
            out.push(if retain { 0x31 } else { 0x30 });
            mqtt_len(2 + topic.len() + payload.len(), out);
            mqtt_str(topic, out);
            out.extend_from_slice(payload.as_bytes());
        }
    }
}

/// A 100-byte payload (JSON-safe text).
pub fn payload() -> String {
    "x".repeat(100)
}

/// Request/reply: the responder side. Answers every request on `svc` until the connection closes.
pub async fn serve_requests(mut c: Conn) -> anyhow::Result<()> {
    let reply = payload();
    match c.sys {
        System::Patchbay => {
            c.send(b"{\"op\":\"claim\",\"prefix\":\"svc\",\"id\":2}\n")
                .await?;
            c.expect_line(b"{\"op\":\"ok\"").await?;
        }
        System::Nats => c.subscribe("svc", false).await?,
        System::Mqtt => c.subscribe("svc/req", false).await?,
    }
    let mut out = Vec::with_capacity(256);
    loop {
        out.clear();
        match c.sys {
            System::Patchbay => {
                let line = c.expect_line(b"{\"op\":\"req\"").await?;
                let text = std::str::from_utf8(&line)?;
                let rid = text
                    .split("\"rid\":")
                    .nth(1)
                    .and_then(|r| r.split(|ch: char| !ch.is_ascii_digit()).next())
                    .context("req without rid")?;
                out.extend_from_slice(
                    format!("{{\"op\":\"rep\",\"rid\":{rid},\"body\":\"{reply}\"}}\n").as_bytes(),
                );
            }
            System::Nats => {
                let header = c.expect_line(b"MSG ").await?;
                let h = std::str::from_utf8(&header)?.trim_end().to_owned();
                let parts: Vec<&str> = h.split(' ').collect();
                let size: usize = parts.last().context("MSG size")?.parse()?;
                while c.buf.len() < size + 2 {
                    c.fill().await?;
                }
                c.buf.drain(..size + 2);
                let inbox = parts.get(3).context("request without reply subject")?;
                encode_pub(System::Nats, inbox, &reply, false, &mut out);
            }
            System::Mqtt => {
                let (kind, _) = c.read_mqtt_packet().await?;
                if kind & 0xf0 != 0x30 {
                    continue;
                }
                encode_pub(System::Mqtt, "svc/rep", &reply, false, &mut out);
            }
        }
        c.send(&out).await?;
    }
}

/// Request/reply: the requester side; one round trip.
pub struct Requester {
    conn: Conn,
    frame: Vec<u8>,
}

impl Requester {
    /// Prepares a requester (subscribing to its reply topic where needed).
    pub async fn new(mut conn: Conn) -> anyhow::Result<Self> {
        let p = payload();
        let mut frame = Vec::new();
        match conn.sys {
            System::Patchbay => frame.extend_from_slice(
                format!("{{\"op\":\"req\",\"tag\":\"svc\",\"rid\":1,\"body\":\"{p}\"}}\n")
                    .as_bytes(),
            ),
            System::Nats => {
                conn.subscribe("_INBOX.bench", false).await?;
                frame.extend_from_slice(
                    format!("PUB svc _INBOX.bench {}\r\n{p}\r\n", p.len()).as_bytes(),
                );
            }
            System::Mqtt => {
                conn.subscribe("svc/rep", false).await?;
                encode_pub(System::Mqtt, "svc/req", &p, false, &mut frame);
            }
        }
        Ok(Requester { conn, frame })
    }

    /// Sends one request and waits for its reply.
    pub async fn round_trip(&mut self) -> anyhow::Result<()> {
        self.conn.stream.write_all(&self.frame).await?;
        match self.conn.sys {
            System::Patchbay => {
                self.conn.expect_line(b"{\"op\":\"rep\"").await?;
            }
            System::Nats | System::Mqtt => self.conn.count(1).await?,
        }
        Ok(())
    }
}
