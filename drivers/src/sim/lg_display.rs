//! An LG commercial display speaking its RS-232 text protocol over TCP, for
//! the demo's line-protocol device (`profiles/lg-display.toml`).
//! Commands: `ka 01 <data>` power, `xb 01 <data>` input, `ke 01 <data>` audio
//! mute; `ff` asks. Replies `a 01 OK<data>x`, or `NG` when refused (input
//! changes in standby).

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use std::sync::{Arc, Mutex};

#[derive(Debug)]
struct Display {
    power: String,
    input: String,
    mute: String,
}

/// Accepts clients forever; all share one display.
pub async fn serve(listener: TcpListener) {
    let display = Arc::new(Mutex::new(Display {
        power: "00".into(),
        input: "90".into(),
        mute: "01".into(),
    }));
    while let Ok((stream, _)) = listener.accept().await {
        tokio::spawn(session(stream, display.clone()));
    }
}

async fn session(mut stream: TcpStream, display: Arc<Mutex<Display>>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 256];
    loop {
        let n = match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        while let Some(end) = buf.iter().position(|b| *b == b'\r') {
            let line: Vec<u8> = buf.drain(..=end).collect();
            let reply = answer(&display, String::from_utf8_lossy(&line).trim());
            if stream.write_all(reply.as_bytes()).await.is_err() {
                return;
            }
        }
        if buf.len() > 1024 {
            buf.clear();
        }
    }
}

fn answer(display: &Mutex<Display>, line: &str) -> String {
    let parts: Vec<&str> = line.split(' ').collect();
    let [cmd, _id, data] = parts.as_slice() else {
        return "? 01 NG00x".into();
    };
    let Some(short) = cmd.get(1..2) else {
        return "? 01 NG00x".into();
    };
    let mut d = display.lock().unwrap_or_else(|e| e.into_inner());
    let standby = d.power == "00";
    let slot = match *cmd {
        "ka" => &mut d.power,
        "xb" if *data != "ff" && standby => return format!("{short} 01 NG01x"),
        "xb" => &mut d.input,
        "ke" => &mut d.mute,
        _ => return format!("{short} 01 NG00x"),
    };
    if *data != "ff" {
        *slot = data.to_ascii_lowercase();
    }
    format!("{short} 01 OK{slot}x")
}
