//! A device simulated from its profile, for the demo and end-to-end tests
//! (`patchbay-sim profile NAME`). It answers queries with the profile's
//! reply and keeps what is set; text profiles give the answer to send in
//! `sim_reply`, since a regex says what a reply looks like, not what it is.
//! A profile's correctness is proven by its transcripts, never by this.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use regex::bytes::Regex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::frame::Cut;
use super::{compile, render_text, Command, Compiled, LineProfile};
use crate::DriverError;

/// How the simulator recognises one setting's commands.
enum Recognise {
    Frame,
    Text {
        query: Option<Regex>,
        set: Option<Regex>,
    },
}

/// A simulated device: the profile and its current wire values.
pub struct Simulator {
    c: Compiled,
    vars: BTreeMap<String, String>,
    recognise: Vec<Recognise>,
    state: Mutex<BTreeMap<String, String>>,
}

/// A text command template as an anchored regex (`{value}` captured).
fn command_regex(template: &str, vars: &BTreeMap<String, String>) -> Result<Regex, String> {
    let mut re = String::from("^");
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        re.push_str(&regex::escape(&rest[..open]));
        let close = rest[open..].find('}').ok_or("unclosed `{`")? + open;
        let inner = &rest[open + 1..close];
        let name = inner.split(':').next().unwrap_or_default();
        if name == "value" {
            re.push_str("(.+?)");
        } else {
            let v = vars
                .get(name)
                .ok_or_else(|| format!("no variable `{name}`"))?;
            re.push_str(&regex::escape(
                &render_text(&format!("{{{inner}}}"), None, vars, false)
                    .unwrap_or_else(|_| v.clone()),
            ));
        }
        rest = &rest[close + 1..];
    }
    re.push_str(&regex::escape(rest));
    re.push('$');
    Regex::new(&re).map_err(|e| e.to_string())
}

impl Simulator {
    /// A simulator for `profile` with the device's `vars` (over the profile's).
    pub fn new(
        profile: &LineProfile,
        vars: &BTreeMap<String, String>,
    ) -> Result<Self, DriverError> {
        let mut all = profile.vars.clone();
        all.extend(vars.iter().map(|(k, v)| (k.clone(), v.clone())));
        let c = compile(profile, &all).map_err(|e| DriverError::Config(e.message))?;
        if !c.login.is_empty() {
            return Err(DriverError::Config(
                "profiles with a login cannot be simulated".into(),
            ));
        }
        if !profile.binary && profile.terminator.is_empty() {
            return Err(DriverError::Config(
                "a text profile without a command terminator cannot be simulated".into(),
            ));
        }
        let mut recognise = Vec::new();
        let mut state = BTreeMap::new();
        for s in &c.settings {
            let p = &s.profile;
            let first = p
                .values
                .first()
                .cloned()
                .or_else(|| {
                    p.map
                        .iter()
                        .find(|(k, _)| !p.transitional.contains(k))
                        .map(|(_, w)| w.clone())
                })
                .unwrap_or_else(|| p.min.unwrap_or(0).to_string());
            state.insert(p.name.clone(), first);
            recognise.push(if profile.binary {
                Recognise::Frame
            } else {
                if p.sim_reply.is_none() {
                    return Err(DriverError::Config(format!(
                        "setting `{}`: a text profile needs `sim_reply` to be simulated",
                        p.name
                    )));
                }
                let re = |cmd: &Option<Command>| match cmd {
                    Some(Command::Text(t)) => command_regex(t, &all).map(Some),
                    _ => Ok(None),
                };
                Recognise::Text {
                    query: re(&s.query).map_err(DriverError::Config)?,
                    set: re(&s.set).map_err(DriverError::Config)?,
                }
            });
        }
        Ok(Simulator {
            c,
            vars: all,
            recognise,
            state: Mutex::new(state),
        })
    }

    /// Takes one whole command from `buf`.
    pub fn cut(&self, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
        match &self.c.framing {
            Some(f) => match f.cut(buf) {
                Cut::Frame(frame) => Some(frame),
                Cut::More => None,
            },
            None => {
                let t = self.c.profile.terminator.as_bytes();
                let at = buf.windows(t.len()).position(|w| w == t)?;
                let line: Vec<u8> = buf.drain(..at + t.len()).collect();
                Some(line[..at].to_vec())
            }
        }
    }

    /// The answer to one command (nothing for one it does not know).
    pub fn answer(&self, cmd: &[u8]) -> Vec<u8> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        for (s, rec) in self.c.settings.iter().zip(&self.recognise) {
            let name = &s.profile.name;
            match rec {
                Recognise::Frame => {
                    let as_template = |c: &Option<Command>| match c {
                        Some(Command::Frame(t)) => Some(t.clone()),
                        _ => None,
                    };
                    if let Some(t) = as_template(&s.set) {
                        if let Ok(m) = t.matches(cmd, &self.vars, &self.c.rules, s.value_width) {
                            if let Some(v) = m.value {
                                state.insert(name.clone(), v);
                            }
                            let reply = match &s.set_reply {
                                Some(super::Matcher::Frame(r)) => r,
                                _ => match &s.reply {
                                    super::Matcher::Frame(r) => r,
                                    _ => return Vec::new(),
                                },
                            };
                            return reply
                                .encode(
                                    state.get(name).map(String::as_str),
                                    &self.vars,
                                    &self.c.rules,
                                )
                                .unwrap_or_default();
                        }
                    }
                    if let Some(t) = as_template(&s.query) {
                        if t.matches(cmd, &self.vars, &self.c.rules, s.value_width)
                            .is_ok()
                        {
                            if let super::Matcher::Frame(r) = &s.reply {
                                return r
                                    .encode(
                                        state.get(name).map(String::as_str),
                                        &self.vars,
                                        &self.c.rules,
                                    )
                                    .unwrap_or_default();
                            }
                        }
                    }
                }
                Recognise::Text { query, set } => {
                    let hit = set
                        .as_ref()
                        .and_then(|re| re.captures(cmd))
                        .map(|c| {
                            c.get(1)
                                .map(|m| String::from_utf8_lossy(m.as_bytes()).into_owned())
                        })
                        .map(|v| (true, v))
                        .or_else(|| {
                            query
                                .as_ref()
                                .filter(|re| re.is_match(cmd))
                                .map(|_| (false, None))
                        });
                    if let Some((_, value)) = hit {
                        if let Some(v) = value {
                            state.insert(name.clone(), v);
                        }
                        let template = s.profile.sim_reply.as_deref().unwrap_or_default();
                        let text = render_text(
                            template,
                            state.get(name).map(String::as_str),
                            &self.vars,
                            false,
                        )
                        .unwrap_or_default();
                        return format!("{text}{}", self.c.profile.reply_terminator).into_bytes();
                    }
                }
            }
        }
        Vec::new()
    }

    /// The current wire values, for `state` on the control channel.
    pub fn state(&self) -> BTreeMap<String, String> {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Serves clients on `listener` forever; they share one device.
pub async fn serve(listener: TcpListener, sim: Arc<Simulator>) {
    while let Ok((stream, _)) = listener.accept().await {
        tokio::spawn(session(stream, sim.clone()));
    }
}

async fn session(mut stream: TcpStream, sim: Arc<Simulator>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let n = match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        while let Some(cmd) = sim.cut(&mut buf) {
            let reply = sim.answer(&cmd);
            if !reply.is_empty() && stream.write_all(&reply).await.is_err() {
                return;
            }
        }
        if buf.len() > 64 * 1024 {
            buf.clear();
        }
    }
}

/// Serves VISCA over IP on `socket` forever: each datagram's payload is a
/// command to the device, and each packet of the answer (ending `FF`) goes
/// back as a reply datagram with the request's sequence number; RESET is
/// acknowledged.
pub async fn serve_visca_ip(socket: tokio::net::UdpSocket, sim: Arc<Simulator>) {
    use crate::visca_ip::{unwrap, wrap, CONTROL, CONTROL_REPLY, REPLY};
    let mut buf = [0u8; 512];
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        let Some((kind, seq, payload)) = unwrap(&buf[..n]) else {
            continue;
        };
        let answer = if kind == CONTROL {
            vec![wrap(CONTROL_REPLY, seq, &[0x01])]
        } else {
            let mut cmd = payload.to_vec();
            let Some(cmd) = sim.cut(&mut cmd) else {
                continue;
            };
            sim.answer(&cmd)
                .split_inclusive(|&b| b == 0xFF)
                .map(|p| wrap(REPLY, seq, p))
                .collect()
        };
        for d in answer {
            let _ = socket.send_to(&d, from).await;
        }
    }
}
