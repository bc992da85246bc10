//! An Epson projector speaking ESC/VP21: over a pseudo-terminal (as a serial
//! port) or TCP (ESC/VP.net, after its binary handshake).
//!
//! Every answer ends with the `:` prompt. While it powers up or down the
//! projector stays silent for a while after `PWR ON`/`PWR OFF`, as real ones do.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use serialport::SerialPort;

use super::projector::{Power, Refusal, Sim};
use crate::escvp21::codec::{self, NetStatus};

/// (ESC/VP21 source code, PJLink-style input code) pairs the simulator knows.
pub const SOURCES: &[(&str, &str)] = &[("30", "31"), ("A0", "32"), ("10", "11"), ("41", "21")];

fn source_to_input(source: &str) -> Option<&'static str> {
    SOURCES
        .iter()
        .find(|(s, _)| s.eq_ignore_ascii_case(source))
        .map(|(_, i)| *i)
}

fn input_to_source(input: &str) -> &'static str {
    SOURCES
        .iter()
        .find(|(_, i)| *i == input)
        .map(|(s, _)| *s)
        .unwrap_or("30")
}

/// Speaks ESC/VP21 on `stream` until it closes or the sim drops connections.
/// Over TCP it first answers the ESC/VP.net handshake, refusing a wrong or
/// missing password (status 0x41) when the projector has one.
pub async fn session<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, sim: Sim, net: bool) {
    let _counted = sim.connection();
    let mut drops = sim.drop_signal();
    drops.mark_unchanged();
    if net {
        let mut hello = [0u8; codec::HEADER_LEN];
        if stream.read_exact(&mut hello).await.is_err() {
            return;
        }
        let Ok((_, extras)) = codec::parse_header(&hello) else {
            return;
        };
        let mut extra = vec![0u8; usize::from(extras) * codec::EXTRA_LEN];
        if stream.read_exact(&mut extra).await.is_err() {
            return;
        }
        let wanted = sim.lock().cfg.password.clone();
        // No password given: 0x41; a wrong one: 0x43.
        let status = match (wanted, codec::request_password(&extra)) {
            (Some(_), None) => NetStatus::Unauthorized,
            (Some(w), Some(given)) if given != w => NetStatus::Forbidden,
            _ => NetStatus::Ok,
        };
        if stream
            .write_all(&codec::header(status.byte(), 0))
            .await
            .is_err()
            || status != NetStatus::Ok
        {
            return;
        }
    }
    let mut line = Vec::new();
    let mut byte = [0u8; 256];
    loop {
        let n = tokio::select! {
            _ = drops.changed() => return,
            r = stream.read(&mut byte) => match r {
                Ok(0) => return,
                Ok(n) => n,
                // A pty master reads EIO while no one has the port open: wait for the next opener.
                Err(_) if !net => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
                Err(_) => return,
            },
        };
        for &b in &byte[..n] {
            if b != b'\r' {
                if b != b'\n' && line.len() < 256 {
                    line.push(b);
                }
                continue;
            }
            let command = String::from_utf8_lossy(&line).trim().to_ascii_uppercase();
            line.clear();
            if sim.lock().faults.silent {
                continue;
            }
            let (reply, silence) = answer(&sim, &command);
            if let Some(wait) = silence {
                tokio::time::sleep(wait).await;
            }
            if stream.write_all(reply.as_bytes()).await.is_err() {
                return;
            }
        }
    }
}

/// The reply (with its prompt) to one command, and how long to stay silent first.
fn answer(sim: &Sim, command: &str) -> (String, Option<Duration>) {
    let mut p = sim.lock();
    let on = p.is_on();
    let err = || ("ERR\r:".to_owned(), None);
    let done = |r: Result<(), Refusal>| match r {
        Ok(()) => (":".to_owned(), None),
        Err(_) => ("ERR\r:".to_owned(), None),
    };
    match command.split_once(' ').unwrap_or((command, "")) {
        ("", _) => (":".into(), None),
        ("PWR?", _) => {
            let standby = if p.faults.abnormal {
                "05".to_owned()
            } else {
                p.cfg
                    .quirks
                    .standby_code
                    .clone()
                    .unwrap_or_else(|| "00".into())
            };
            let code = match p.power {
                Power::Off => standby.as_str(),
                Power::On => "01",
                Power::Warming(_) => "02",
                Power::Cooling(_) => "03",
            };
            (format!("PWR={code}\r:"), None)
        }
        ("PWR", arg @ ("ON" | "OFF")) => {
            let turning_on = arg == "ON";
            let changes = matches!(
                (p.power, turning_on),
                (Power::Off, true) | (Power::On, false)
            );
            // `PWR ON` answers its prompt once the lamp is lit, at the end of the warm-up.
            let silence = if turning_on {
                p.cfg.warmup
            } else {
                p.cfg.cooldown / 3
            };
            match p.set_power(turning_on) {
                Ok(()) => (":".into(), changes.then_some(silence)),
                Err(_) => err(),
            }
        }
        ("SOURCE?", _) if on => {
            let mut code = input_to_source(&p.input);
            if code == "10" && p.cfg.quirks.sub_source {
                code = "1F";
            }
            (format!("SOURCE={code}\r:"), None)
        }
        ("SOURCE", code) => match source_to_input(code) {
            Some(input) => done(p.set_input(input)),
            None => err(),
        },
        ("MUTE?", _) if on => (
            format!("MUTE={}\r:", if p.video_mute { "ON" } else { "OFF" }),
            None,
        ),
        ("MUTE", arg @ ("ON" | "OFF")) if on && !p.faults.failure => {
            p.video_mute = arg == "ON";
            p.audio_mute = p.video_mute;
            (":".into(), None)
        }
        ("LAMP?", _) => (format!("LAMP={}\r:", p.lamp_hours), None),
        ("ERR?", _) => (
            format!("ERR={}\r:", if p.faults.lamp_error { "06" } else { "00" }),
            None,
        ),
        _ => err(),
    }
}

/// Accepts ESC/VP.net clients forever.
pub async fn serve_net(listener: TcpListener, sim: Sim) {
    loop {
        if let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(session(stream, sim.clone(), true));
        }
    }
}

/// The simulator behind a pseudo-terminal, reachable at a stable path (a
/// symlink to the pty, like a `/dev/serial/by-id/` name) that survives
/// unplugging and replugging.
pub struct PtyDevice {
    sim: Sim,
    link: PathBuf,
    task: Option<JoinHandle<()>>,
}

impl PtyDevice {
    /// Creates the pty, links `link` to it and starts answering.
    pub fn start(sim: Sim, link: &Path) -> std::io::Result<Self> {
        let mut dev = PtyDevice {
            sim,
            link: link.to_owned(),
            task: None,
        };
        dev.plug()?;
        Ok(dev)
    }

    /// The path a driver should open.
    pub fn path(&self) -> &Path {
        &self.link
    }

    /// Plugs the cable back in: a new pty behind the same path.
    pub fn plug(&mut self) -> std::io::Result<()> {
        self.unplug();
        let (master, slave) = serialport::TTYPort::pair().map_err(std::io::Error::other)?;
        let pty = slave
            .name()
            .ok_or_else(|| std::io::Error::other("pseudo-terminal without a name"))?;
        let _ = std::fs::remove_file(&self.link);
        std::os::unix::fs::symlink(&pty, &self.link)?;
        let master = tokio_serial::SerialStream::try_from(master).map_err(std::io::Error::other)?;
        let sim = self.sim.clone();
        self.task = Some(tokio::spawn(async move {
            // Holding the slave open keeps the master from reading EIO between openers.
            let _slave = slave;
            session(master, sim, false).await;
        }));
        Ok(())
    }

    /// Pulls the cable: the pty disappears, so an open port reads EOF/EIO.
    pub fn unplug(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        let _ = std::fs::remove_file(&self.link);
    }
}

impl Drop for PtyDevice {
    fn drop(&mut self) {
        self.unplug();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::projector::Quirks;
    use crate::sim::ProjectorConfig;

    fn sim(quirks: Quirks) -> Sim {
        Sim::new(ProjectorConfig {
            warmup: Duration::from_secs(30),
            quirks,
            ..ProjectorConfig::default()
        })
    }

    #[tokio::test(start_paused = true)]
    async fn power_on_answers_its_prompt_only_when_the_lamp_is_lit() {
        let s = sim(Quirks::default());
        assert_eq!(
            answer(&s, "PWR ON"),
            (":".into(), Some(Duration::from_secs(30)))
        );
        assert_eq!(answer(&s, "PWR?").0, "PWR=02\r:");
        tokio::time::advance(Duration::from_secs(30)).await;
        s.lock().tick();
        assert_eq!(answer(&s, "PWR?").0, "PWR=01\r:");
    }

    #[tokio::test(start_paused = true)]
    async fn standby_codes_abnormal_standby_and_sub_sources() {
        let s = sim(Quirks {
            standby_code: Some("09".into()),
            sub_source: true,
            ..Quirks::default()
        });
        assert_eq!(answer(&s, "PWR?").0, "PWR=09\r:");
        s.set_faults(|f| f.abnormal = true);
        assert_eq!(answer(&s, "PWR?").0, "PWR=05\r:");
        s.set_faults(|f| f.abnormal = false);
        s.lock().power = Power::On;
        assert_eq!(answer(&s, "SOURCE 10").0, ":");
        assert_eq!(answer(&s, "SOURCE?").0, "SOURCE=1F\r:");
        assert_eq!(answer(&s, "SOURCE 99").0, "ERR\r:");
    }
}
