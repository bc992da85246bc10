//! A PJLink projector on a TCP port: greeting and MD5 authentication, class 1
//! and class 2 commands, `ERR1`-`ERR4` where a real projector answers them,
//! `ERR3` during transitions, idle connections closed after `idle_close`.

use std::time::{SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use super::projector::{Refusal, Sim};
use crate::pjlink::codec;

/// Commands that exist only in class 2.
const CLASS2_ONLY: &[&str] = &[
    "SNUM", "SVER", "INNM", "IRES", "RRES", "FILT", "RLMP", "RFIL", "FREZ", "SVOL", "MVOL",
];

/// Answers PJLink class 2 searches (`%2SRCH`) on `socket` forever, with
/// `%2ACKN=<mac>` sent back to the asker; a class 1 projector, or one made
/// silent, does not answer.
pub async fn serve_search(socket: tokio::net::UdpSocket, sim: Sim, mac: String) {
    let mut buf = [0u8; 512];
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf).await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let asked = buf[..n].trim_ascii_end().eq_ignore_ascii_case(b"%2SRCH");
        let answers = {
            let p = sim.lock();
            p.cfg.class >= 2 && !p.faults.silent
        };
        if asked && answers {
            let reply = crate::pjlink::search::ackn(&mac);
            if let Err(e) = socket.send_to(reply.as_bytes(), from).await {
                tracing::warn!(%from, "pjlink sim cannot answer a search: {e}");
            }
        }
    }
}

/// A made-up, locally administered MAC address for a simulator on `port`.
pub fn sim_mac(port: u16) -> String {
    format!("02:00:00:00:{:02x}:{:02x}", port >> 8, port & 0xff)
}

/// Accepts PJLink clients forever.
pub async fn serve(listener: TcpListener, sim: Sim) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(session(stream, sim.clone()));
            }
            Err(e) => {
                tracing::warn!("pjlink sim accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

fn random_hex() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0x9e37_79b9_7f4a_7c15);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut x = nanos ^ COUNTER.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed);
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    format!("{:08x}", x as u32)
}

async fn session(stream: TcpStream, sim: Sim) {
    let _counted = sim.connection();
    let mut drops = sim.drop_signal();
    drops.mark_unchanged();
    let (rd, mut wr) = stream.into_split();
    let mut lines = BufReader::new(rd);
    let (password, idle) = {
        let p = sim.lock();
        (p.cfg.password.clone(), p.cfg.idle_close)
    };
    let expected = match &password {
        Some(pw) => {
            let random = random_hex();
            if wr
                .write_all(format!("PJLINK 1 {random}\r").as_bytes())
                .await
                .is_err()
            {
                return;
            }
            Some(codec::digest(&random, pw))
        }
        None => {
            if wr.write_all(b"PJLINK 0\r").await.is_err() {
                return;
            }
            None
        }
    };
    let mut authenticated = expected.is_none();
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let read = tokio::select! {
            _ = drops.changed() => return,
            r = tokio::time::timeout(idle, lines.read_until(b'\r', &mut buf)) => r,
        };
        match read {
            Err(_) | Ok(Ok(0)) | Ok(Err(_)) => return, // idle close, EOF or error
            Ok(Ok(_)) => {}
        }
        let line = String::from_utf8_lossy(&buf);
        let mut line = line.trim_end_matches('\r').trim_start_matches('\n');
        if sim.lock().faults.silent {
            continue;
        }
        if !authenticated {
            match (line.get(..32), &expected) {
                (Some(d), Some(want)) if d == want => {
                    authenticated = true;
                    line = &line[32..];
                }
                _ => {
                    let _ = wr.write_all(b"PJLINK ERRA\r").await;
                    return;
                }
            }
        }
        let mut reply = answer(&sim, line);
        if sim.lock().cfg.quirks.crlf {
            reply.push('\n');
        }
        if wr.write_all(reply.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// The reply line to one command line (without CR). A malformed line is
/// answered as the standard says: the command echoed (as far as there is
/// one) with `ERR1` for an undefined command or `ERR2` for a bad parameter.
pub fn answer(sim: &Sim, line: &str) -> String {
    let chars: Vec<char> = line.chars().collect();
    let class = match chars.get(1) {
        Some('2') => 2,
        _ => 1,
    };
    let cmd: String = chars
        .iter()
        .skip(2)
        .take(4)
        .collect::<String>()
        .to_ascii_uppercase();
    if chars.first() != Some(&'%') || !matches!(chars.get(1), Some('1' | '2')) || cmd.len() < 4 {
        // Not a PJLink command at all: an undefined command.
        let echo = if cmd.is_empty() {
            "????".to_owned()
        } else {
            format!("{cmd:?<4}")
        };
        return format!("%{class}{echo}=ERR1\r");
    }
    let param: String = match chars.get(6) {
        Some(' ') => chars[7..].iter().collect(),
        _ => return format!("%{class}{cmd}=ERR2\r"),
    };
    let result = execute(sim, class, &cmd, &param);
    format!("%{class}{cmd}={result}\r")
}

fn refusal(r: Refusal) -> String {
    match r {
        Refusal::Unavailable => "ERR3",
        Refusal::OutOfRange => "ERR2",
        Refusal::Failure => "ERR4",
    }
    .into()
}

fn execute(sim: &Sim, class: u8, cmd: &str, param: &str) -> String {
    let mut p = sim.lock();
    if class > p.cfg.class || (class == 1 && CLASS2_ONLY.contains(&cmd)) {
        return "ERR1".into();
    }
    let on = p.is_on();
    if p.cfg.quirks.unavailable_unless_on && !on && cmd != "POWR" {
        return "ERR3".into();
    }
    let ok = |r: Result<(), Refusal>| r.map(|()| "OK".to_owned()).unwrap_or_else(refusal);
    match (cmd, param) {
        ("POWR", "?") => match p.power {
            super::projector::Power::Off => "0",
            super::projector::Power::On => "1",
            super::projector::Power::Cooling(_) => "2",
            super::projector::Power::Warming(_) => "3",
        }
        .into(),
        ("POWR", "1") => ok(p.set_power(true)),
        ("POWR", "0") => ok(p.set_power(false)),
        ("INPT", "?") if on => p.input.clone(),
        ("INPT", "?") => "ERR3".into(),
        ("INPT", code) => {
            // Class 1 input codes are two digits of types 1-5; type 6 and letters need class 2.
            if class == 1 && (!code.bytes().all(|b| b.is_ascii_digit()) || code.starts_with('6')) {
                return "ERR2".into();
            }
            ok(p.set_input(code))
        }
        ("INST", "?") => p
            .cfg
            .inputs
            .iter()
            .map(|(c, _)| c.as_str())
            .filter(|c| {
                class == 2 || (c.bytes().all(|b| b.is_ascii_digit()) && !c.starts_with('6'))
            })
            .collect::<Vec<_>>()
            .join(" "),
        ("AVMT", "?") if on => match (p.video_mute, p.audio_mute) {
            (true, true) => "31",
            (true, false) => "11",
            (false, true) => "21",
            (false, false) => "30",
        }
        .into(),
        ("AVMT", "?") => "ERR3".into(),
        ("AVMT", v) => {
            let (video, audio) = match v {
                "11" => (Some(true), None),
                "10" => (Some(false), None),
                "21" => (None, Some(true)),
                "20" => (None, Some(false)),
                "31" => (Some(true), Some(true)),
                "30" => (Some(false), Some(false)),
                _ => return "ERR2".into(),
            };
            if p.faults.failure {
                return "ERR4".into();
            }
            if !on {
                return "ERR3".into();
            }
            if let Some(v) = video {
                p.video_mute = v;
            }
            if let Some(a) = audio {
                p.audio_mute = a;
            }
            "OK".into()
        }
        ("ERST", "?") => p.erst(),
        ("LAMP", "?") => format!("{} {}", p.lamp_hours, u8::from(on)),
        ("NAME", "?") => p.cfg.name.clone(),
        ("INF1", "?") => p.cfg.manufacturer.clone(),
        ("INF2", "?") => p.cfg.model.clone(),
        ("INFO", "?") => "patchbay simulator".into(),
        ("CLSS", "?") => p
            .cfg
            .quirks
            .class_reply
            .clone()
            .unwrap_or_else(|| p.cfg.class.to_string()),
        ("SNUM", "?") => "SIM0001234".into(),
        ("SVER", "?") => "1.0.0".into(),
        ("FILT", "?") => p.filter_hours.to_string(),
        ("RLMP", "?") => "ELPLP96".into(),
        ("RFIL", "?") => "ELPAF60".into(),
        ("IRES", "?") if on => "1920x1080".into(),
        ("IRES", "?") => "ERR3".into(),
        ("RRES", "?") => "1920x1200".into(),
        ("SVOL" | "MVOL", "0" | "1") if on => "OK".into(),
        ("SVOL" | "MVOL", "0" | "1") => "ERR3".into(),
        ("INNM", q) => match q.strip_prefix('?') {
            Some(code) => p
                .cfg
                .inputs
                .iter()
                .find(|(c, _)| c.eq_ignore_ascii_case(code))
                .map(|(_, n)| n.clone())
                .unwrap_or_else(|| "ERR2".into()),
            None => "ERR2".into(),
        },
        ("FREZ", "?") if on => if p.freeze { "1" } else { "0" }.into(),
        ("FREZ", "?") => "ERR3".into(),
        ("FREZ", v @ ("0" | "1")) => {
            if p.faults.failure {
                "ERR4".into()
            } else if !on {
                "ERR3".into()
            } else {
                p.freeze = v == "1";
                "OK".into()
            }
        }
        (
            "POWR" | "ERST" | "LAMP" | "NAME" | "INF1" | "INF2" | "INFO" | "CLSS" | "INST" | "SNUM"
            | "SVER" | "FILT" | "FREZ" | "RLMP" | "RFIL" | "IRES" | "RRES" | "SVOL" | "MVOL",
            _,
        ) => "ERR2".into(),
        _ => "ERR1".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::{projector::Power, ProjectorConfig};

    fn on(inputs: &[(&str, &str)]) -> Sim {
        let sim = Sim::new(ProjectorConfig {
            inputs: inputs
                .iter()
                .map(|(c, n)| ((*c).into(), (*n).into()))
                .collect(),
            ..ProjectorConfig::default()
        });
        sim.lock().power = Power::On;
        sim
    }

    #[test]
    fn malformed_lines_are_echoed_with_the_standard_errors() {
        let s = on(&[("31", "HDMI 1")]);
        assert_eq!(answer(&s, "hello"), "%1LLO?=ERR1\r");
        assert_eq!(answer(&s, "%1POWR"), "%1POWR=ERR2\r");
        assert_eq!(answer(&s, "%1XXXX ?"), "%1XXXX=ERR1\r");
        // A bad parameter is ERR2, not ERR1.
        assert_eq!(answer(&s, "%2FREZ 7"), "%2FREZ=ERR2\r");
        assert_eq!(answer(&s, "%1AVMT 99"), "%1AVMT=ERR2\r");
    }

    #[test]
    fn class_2_queries_are_answered() {
        let s = on(&[("31", "HDMI 1")]);
        for cmd in ["RLMP", "RFIL", "IRES", "RRES", "SNUM", "SVER", "FILT"] {
            let reply = answer(&s, &format!("%2{cmd} ?"));
            assert!(!reply.contains("ERR"), "{cmd}: {reply}");
        }
        assert_eq!(answer(&s, "%2SVOL 1"), "%2SVOL=OK\r");
        assert_eq!(answer(&s, "%2MVOL 0"), "%2MVOL=OK\r");
        // Class 2 only: refused with the class 1 prefix.
        assert_eq!(answer(&s, "%1FREZ ?"), "%1FREZ=ERR1\r");
    }

    #[test]
    fn letter_and_type_6_inputs_need_class_2() {
        let s = on(&[("31", "HDMI 1"), ("3A", "HDMI 10"), ("61", "Internal")]);
        assert_eq!(answer(&s, "%2INST ?"), "%2INST=31 3A 61\r");
        assert_eq!(answer(&s, "%1INST ?"), "%1INST=31\r");
        assert_eq!(answer(&s, "%1INPT 3A"), "%1INPT=ERR2\r");
        assert_eq!(answer(&s, "%1INPT 61"), "%1INPT=ERR2\r");
        assert_eq!(answer(&s, "%2INPT 3A"), "%2INPT=OK\r");
        assert_eq!(answer(&s, "%2INPT ?"), "%2INPT=3A\r");
        assert_eq!(answer(&s, "%2INPT 61"), "%2INPT=OK\r");
    }
}
