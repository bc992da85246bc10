//! A Panasonic projector on the NTCONTROL port: a greeting per connection
//! (protect mode when it has a password), one command per connection,
//! `ERR1`-`ERR4` and `ERRA` where a projector answers them, and the
//! connection closed after the reply.

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use super::projector::{Power, Refusal, Sim};

/// How long the projector waits for the command after its greeting.
const COMMAND_WAIT: Duration = Duration::from_secs(10);

/// Inputs of the simulated projector: (code, name).
pub fn inputs() -> Vec<(String, String)> {
    [
        ("HD1", "HDMI 1"),
        ("HD2", "HDMI 2"),
        ("RG1", "Computer 1"),
        ("DL1", "DIGITAL LINK"),
    ]
    .map(|(c, n)| (c.into(), n.into()))
    .to_vec()
}

/// Accepts NTCONTROL clients forever; `user` and the sim's password protect it.
pub async fn serve(listener: TcpListener, sim: Sim, user: String) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(session(stream, sim.clone(), user.clone()));
            }
            Err(e) => {
                tracing::warn!("panasonic sim accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn session(stream: TcpStream, sim: Sim, user: String) {
    let _counted = sim.connection();
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    let password = sim.lock().cfg.password.clone();
    let random = format!("{:08x}", rand_u32());
    let expected = password
        .as_deref()
        .map(|pw| crate::panasonic::codec::digest(&user, pw, &random));
    let greeting = match &expected {
        Some(_) => format!("NTCONTROL 1 {random}\r"),
        None => "NTCONTROL 0\r".to_owned(),
    };
    if wr.write_all(greeting.as_bytes()).await.is_err() {
        return;
    }
    let mut buf = Vec::new();
    match tokio::time::timeout(COMMAND_WAIT, rd.read_until(b'\r', &mut buf)).await {
        Ok(Ok(n)) if n > 0 => {}
        _ => return,
    }
    if sim.lock().faults.silent {
        return;
    }
    let line = String::from_utf8_lossy(&buf);
    let line = line.trim_end_matches('\r');
    let command = match &expected {
        Some(digest) => match line.strip_prefix(digest.as_str()) {
            Some(rest) => rest,
            None => {
                let _ = wr.write_all(b"ERRA\r").await;
                return;
            }
        },
        None => line,
    };
    let reply = match command.strip_prefix("00") {
        Some(cmd) => answer(&sim, cmd),
        None => "ERR1".to_owned(),
    };
    let _ = wr.write_all(format!("{reply}\r").as_bytes()).await;
    let _ = wr.shutdown().await;
}

fn rand_u32() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() ^ (d.as_secs() as u32).rotate_left(13))
        .unwrap_or(0);
    nanos.wrapping_mul(0x9e37_79b9)
}

/// The reply to one command (without `00` and CR).
pub fn answer(sim: &Sim, cmd: &str) -> String {
    let mut p = sim.lock();
    p.tick();
    let refused = |r: Refusal| match r {
        Refusal::Unavailable => "ERR3".to_owned(),
        Refusal::OutOfRange => "ERR2".to_owned(),
        Refusal::Failure => "ERR4".to_owned(),
    };
    let flag = |b: bool| format!("00{}", u8::from(b));
    let (name, param) = match cmd.split_once(':') {
        Some((n, v)) => (n, Some(v)),
        None => (cmd, None),
    };
    match (name, param) {
        ("PON", None) => p.set_power(true).map_or_else(refused, |()| "00PON".into()),
        ("POF", None) => p.set_power(false).map_or_else(refused, |()| "00POF".into()),
        ("QPW", None) => match p.power {
            Power::On | Power::Warming(_) => "00001".into(),
            Power::Off | Power::Cooling(_) => "00000".into(),
        },
        ("Q$S", None) => match p.power {
            Power::Off => "000".into(),
            Power::Warming(_) => "001".into(),
            Power::On => "002".into(),
            Power::Cooling(_) => "003".into(),
        },
        ("QID", None) => format!("00{}", p.cfg.model),
        ("QIN", None) => format!("00{}", p.input),
        ("IIS", Some(code)) => p
            .set_input(code)
            .map_or_else(refused, |()| format!("00IIS:{code}")),
        ("QSH", None) if p.is_on() => flag(p.video_mute),
        ("QFZ", None) if p.is_on() => flag(p.freeze),
        ("OSH" | "OFZ", Some(v)) if matches!(v, "0" | "1") => {
            if !p.is_on() {
                return "ERR3".into();
            }
            if name == "OSH" {
                p.video_mute = v == "1";
            } else {
                p.freeze = v == "1";
            }
            format!("00{name}:{v}")
        }
        ("OSH" | "OFZ", Some(_)) => "ERR2".into(),
        ("QSH" | "QFZ", None) => "ERR3".into(),
        ("Q$L", Some("1")) => format!("00{:04}", p.lamp_hours),
        _ => "ERR1".into(),
    }
}
