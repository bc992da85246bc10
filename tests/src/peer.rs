//! Scripted device peers: TCP servers that behave the way real projectors
//! and displays do (slow replies, a close after every reply, refusals while
//! warming, odd line endings), written from the protocol documents rather
//! than from the drivers, and recording every line they hear.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

/// One line a peer received, and when.
#[derive(Debug, Clone)]
pub struct Heard {
    /// When it arrived.
    pub at: Instant,
    /// The line, without its terminator.
    pub line: String,
}

/// How a scripted peer behaves.
#[derive(Debug, Clone)]
pub struct PeerOptions {
    /// Sent on every new connection before anything else (PJLink's `PJLINK 0\r`).
    pub greeting: Option<String>,
    /// Ends each incoming line.
    pub terminator: u8,
    /// Waited before each reply.
    pub delay: Duration,
    /// Closes the connection after each reply, as some projectors do.
    pub close_after_reply: bool,
    /// Expects the ESC/VP.net handshake first; `Some(password)` when one is required.
    pub escvp_net: Option<Option<String>>,
}

impl PeerOptions {
    /// A PJLink projector without a password: greets, lines end in CR.
    pub fn pjlink() -> Self {
        PeerOptions {
            greeting: Some("PJLINK 0\r".into()),
            terminator: b'\r',
            delay: Duration::ZERO,
            close_after_reply: false,
            escvp_net: None,
        }
    }

    /// An Epson projector over ESC/VP.net (lines end in CR), with or without a password.
    pub fn escvp_net(password: Option<&str>) -> Self {
        PeerOptions {
            greeting: None,
            terminator: b'\r',
            delay: Duration::ZERO,
            close_after_reply: false,
            escvp_net: Some(password.map(str::to_owned)),
        }
    }
}

/// A scripted answer: its bytes, sent after a pause of its own.
#[derive(Debug, Clone)]
pub struct Reply {
    /// What to send.
    pub text: String,
    /// How long to wait first (on top of [`PeerOptions::delay`]).
    pub after: Duration,
}

impl From<String> for Reply {
    fn from(text: String) -> Self {
        Reply {
            text,
            after: Duration::ZERO,
        }
    }
}

/// What the script returns for a line: the answer (none for silence).
pub type Script = dyn FnMut(&str) -> Option<Reply> + Send;

/// A running scripted peer.
pub struct ScriptedPeer {
    addr: String,
    heard: Arc<Mutex<Vec<Heard>>>,
    connections: Arc<Mutex<u32>>,
    task: tokio::task::JoinHandle<()>,
}

impl ScriptedPeer {
    /// Listens on a free local port and answers every line with `script`.
    pub async fn start(
        opts: PeerOptions,
        mut script: impl FnMut(&str) -> Option<String> + Send + 'static,
    ) -> ScriptedPeer {
        Self::start_timed(opts, move |l| script(l).map(Reply::from)).await
    }

    /// [`ScriptedPeer::start`] with answers that choose their own pause.
    pub async fn start_timed(
        opts: PeerOptions,
        script: impl FnMut(&str) -> Option<Reply> + Send + 'static,
    ) -> ScriptedPeer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let heard = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(Mutex::new(0));
        let script: Arc<tokio::sync::Mutex<Box<Script>>> =
            Arc::new(tokio::sync::Mutex::new(Box::new(script)));
        let task = {
            let (heard, connections) = (heard.clone(), connections.clone());
            tokio::spawn(async move {
                while let Ok((s, _)) = listener.accept().await {
                    *connections.lock().unwrap() += 1;
                    let (opts, heard, script) = (opts.clone(), heard.clone(), script.clone());
                    tokio::spawn(serve(s, opts, heard, script));
                }
            })
        };
        ScriptedPeer {
            addr,
            heard,
            connections,
            task,
        }
    }

    /// `host:port` to connect to.
    pub fn addr(&self) -> String {
        self.addr.clone()
    }

    /// Every line heard so far.
    pub fn heard(&self) -> Vec<Heard> {
        self.heard.lock().unwrap().clone()
    }

    /// Just the text of every line heard so far.
    pub fn lines(&self) -> Vec<String> {
        self.heard().into_iter().map(|h| h.line).collect()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u32 {
        *self.connections.lock().unwrap()
    }

    /// Waits (up to `limit`) until a heard line satisfies `f`; returns it.
    pub async fn until_heard(&self, limit: Duration, f: impl Fn(&str) -> bool) -> Heard {
        let end = Instant::now() + limit;
        loop {
            if let Some(h) = self.heard().into_iter().find(|h| f(&h.line)) {
                return h;
            }
            assert!(
                Instant::now() < end,
                "the peer never heard the expected line; it heard {:?}",
                self.lines()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for ScriptedPeer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    mut s: TcpStream,
    opts: PeerOptions,
    heard: Arc<Mutex<Vec<Heard>>>,
    script: Arc<tokio::sync::Mutex<Box<Script>>>,
) {
    if let Some(password) = &opts.escvp_net {
        if !escvp_net_handshake(&mut s, password.as_deref()).await {
            return;
        }
    }
    if let Some(g) = &opts.greeting {
        if s.write_all(g.as_bytes()).await.is_err() {
            return;
        }
    }
    let mut buf = Vec::new();
    let mut chunk = [0u8; 512];
    loop {
        let n = match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        while let Some(end) = buf.iter().position(|b| *b == opts.terminator) {
            let raw: Vec<u8> = buf.drain(..=end).collect();
            let line = String::from_utf8_lossy(&raw[..raw.len() - 1])
                .trim_matches('\n')
                .to_owned();
            heard.lock().unwrap().push(Heard {
                at: Instant::now(),
                line: line.clone(),
            });
            let reply = (script.lock().await)(&line);
            let pause = opts.delay + reply.as_ref().map_or(Duration::ZERO, |r| r.after);
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
            if let Some(r) = reply {
                if s.write_all(r.text.as_bytes()).await.is_err() {
                    return;
                }
                if opts.close_after_reply {
                    return;
                }
            }
        }
    }
}

/// The projector's side of the ESC/VP.net handshake, from Epson's
/// description: a 16-byte header (`ESC/VP.net`, version 0x10, type 3
/// CONNECT, two reserved bytes, status, count of 18-byte headers), a
/// password travelling in an 18-byte header (id 1, attribute, 16 bytes
/// padded with zeros). True when the connection may go on.
async fn escvp_net_handshake(s: &mut TcpStream, password: Option<&str>) -> bool {
    let mut head = [0u8; 16];
    if s.read_exact(&mut head).await.is_err() || &head[..10] != b"ESC/VP.net" || head[11] != 3 {
        return false;
    }
    let mut extras = vec![0u8; 18 * usize::from(head[15])];
    if s.read_exact(&mut extras).await.is_err() {
        return false;
    }
    let given = extras.chunks(18).find(|x| x[0] == 1).map(|x| {
        let info = &x[2..];
        let end = info.iter().position(|b| *b == 0).unwrap_or(16);
        String::from_utf8_lossy(&info[..end]).into_owned()
    });
    let status = match (password, given.as_deref()) {
        (None, _) => 0x20,
        (Some(_), None) => 0x41,
        (Some(want), Some(got)) if want == got => 0x20,
        (Some(_), Some(_)) => 0x43,
    };
    let mut answer = *b"ESC/VP.net\x10\x03\0\0\0\0";
    answer[14] = status;
    s.write_all(&answer).await.is_ok() && status == 0x20
}

/// An Epson projector speaking ESC/VP21, written from Epson's description:
/// every answer ends with the `:` prompt; `PWR ON` answers only once the
/// lamp is lit.
#[derive(Debug, Clone)]
pub struct Escvp21Projector {
    /// The `PWR?` code: `00`, `01`, `02`, `03`, `04`, `05` or `09`.
    pub power: String,
    /// `PWR?` queries a warm-up or cool-down lasts.
    pub transition_polls: u32,
    /// Left of the current transition.
    pub transition_left: u32,
    /// The `SOURCE?` code.
    pub source: String,
    /// A/V mute.
    pub mute: bool,
    /// The `ERR?` code.
    pub error: String,
    /// Extra pause before the prompt that ends `PWR ON` (a lamp taking long to strike).
    pub power_on_pause: Duration,
}

impl Default for Escvp21Projector {
    fn default() -> Self {
        Escvp21Projector {
            power: "01".into(),
            transition_polls: 2,
            transition_left: 0,
            source: "30".into(),
            mute: false,
            error: "00".into(),
            power_on_pause: Duration::ZERO,
        }
    }
}

impl Escvp21Projector {
    /// Answers one ESC/VP21 line.
    pub fn answer(&mut self, line: &str) -> Option<Reply> {
        let on = self.power == "01";
        let value = |k: &str, v: &str| Some(Reply::from(format!("{k}={v}\r:")));
        let prompt = || Some(Reply::from(":".to_owned()));
        let err = || Some(Reply::from("ERR\r:".to_owned()));
        match line.trim() {
            "" => prompt(),
            "PWR?" => {
                if self.transition_left > 0 {
                    self.transition_left -= 1;
                    if self.transition_left == 0 {
                        self.power = if self.power == "02" { "01" } else { "04" }.into();
                    }
                }
                value("PWR", &self.power.clone())
            }
            "PWR ON" => match self.power.as_str() {
                "01" => prompt(),
                "00" | "04" | "09" | "05" => {
                    self.power = "02".into();
                    self.transition_left = self.transition_polls;
                    Some(Reply {
                        text: ":".into(),
                        after: self.power_on_pause,
                    })
                }
                _ => err(),
            },
            "PWR OFF" => match self.power.as_str() {
                "01" => {
                    self.power = "03".into();
                    self.transition_left = self.transition_polls;
                    prompt()
                }
                "02" | "03" => err(),
                _ => prompt(),
            },
            "SOURCE?" if on => value("SOURCE", &self.source.clone()),
            "MUTE?" if on => value("MUTE", if self.mute { "ON" } else { "OFF" }),
            "MUTE ON" if on => {
                self.mute = true;
                prompt()
            }
            "MUTE OFF" if on => {
                self.mute = false;
                prompt()
            }
            "LAMP?" => value("LAMP", "1234"),
            "ERR?" => value("ERR", &self.error.clone()),
            other => match other.strip_prefix("SOURCE ") {
                Some(code) if on && code.len() == 2 => {
                    self.source = code.to_owned();
                    prompt()
                }
                _ => err(),
            },
        }
    }
}

/// A class 2 PJLink projector written from the specification: power with
/// warm-up and cool-down, inputs, mutes, lamps, and what real ones do in
/// standby. Fields are public so each test can shape the projector.
#[derive(Debug, Clone)]
pub struct PjlinkProjector {
    /// `0` standby, `1` on, `2` cooling, `3` warming.
    pub power: u8,
    /// `POWR ?` queries a warm-up or cool-down lasts.
    pub transition_polls: u32,
    /// Left of the current transition.
    pub transition_left: u32,
    /// The `CLSS ?` reply (`2`, or a non-standard `Class 2`).
    pub class_reply: String,
    /// `INST ?` reply: input codes.
    pub inputs: String,
    /// The selected input.
    pub input: String,
    /// `AVMT` value (`30`, `31`, `11`, `21`, ...).
    pub mute: String,
    /// `LAMP ?` reply.
    pub lamps: String,
    /// Answers `ERR3` to identity, class and input queries while not on.
    pub err3_unless_on: bool,
    /// Ends replies with CR LF instead of CR.
    pub crlf: bool,
    /// Answers `ERR3` to any `INPT` set (a projector refusing while busy).
    pub refuse_input: Option<&'static str>,
    /// Answers nothing at all in standby (its network half asleep), as
    /// projectors without network standby do.
    pub silent_in_standby: bool,
}

impl Default for PjlinkProjector {
    fn default() -> Self {
        PjlinkProjector {
            power: 0,
            transition_polls: 2,
            transition_left: 0,
            class_reply: "2".into(),
            inputs: "11 31 32".into(),
            input: "31".into(),
            mute: "30".into(),
            lamps: "1200 0".into(),
            err3_unless_on: false,
            crlf: false,
            refuse_input: None,
            silent_in_standby: false,
        }
    }
}

impl PjlinkProjector {
    /// Answers one PJLink line (`%1POWR ?` and the like).
    pub fn answer(&mut self, line: &str) -> Option<String> {
        let end = if self.crlf { "\r\n" } else { "\r" };
        // A digest may precede the command; this projector has no password.
        let at = line.find('%')?;
        let line = &line[at..];
        if line.len() < 7 {
            return Some(format!("%1ERR1{end}"));
        }
        let (head, param) = (&line[..6], line[7..].trim());
        let class = &head[1..2];
        let cmd = head[2..6].to_ascii_uppercase();
        let ok = |v: &str| Some(format!("%{class}{cmd}={v}{end}"));
        let on = self.power == 1;
        let query = param == "?";
        if self.silent_in_standby && self.power == 0 {
            return None;
        }
        // A class 1 projector knows no class 2 command.
        if class == "2" && !self.class_reply.contains('2') {
            return ok("ERR1");
        }
        match cmd.as_str() {
            "POWR" if query => {
                if self.transition_left > 0 {
                    self.transition_left -= 1;
                    if self.transition_left == 0 {
                        self.power = if self.power == 3 { 1 } else { 0 };
                        return ok(&self.power.to_string());
                    }
                }
                ok(&self.power.to_string())
            }
            "POWR" => {
                if matches!(self.power, 2 | 3) {
                    return ok("ERR3");
                }
                let want = param == "1";
                if want && self.power == 0 {
                    self.power = 3;
                    self.transition_left = self.transition_polls;
                } else if !want && self.power == 1 {
                    self.power = 2;
                    self.transition_left = self.transition_polls;
                }
                ok("OK")
            }
            "CLSS" | "INF1" | "INF2" | "NAME" | "INFO" | "INST" | "INNM"
                if self.err3_unless_on && !on =>
            {
                ok("ERR3")
            }
            "CLSS" => ok(&self.class_reply.clone()),
            "INF1" => ok("SCRIPTED"),
            "INF2" => ok("P-2000"),
            "NAME" => ok("Room projector"),
            "INFO" => ok(""),
            "SNUM" | "SVER" | "RLMP" | "RFIL" => ok("X1"),
            "INST" => ok(&self.inputs.clone()),
            "INNM" => ok(&format!("Input {}", param.trim_start_matches('?'))),
            "INPT" if !on => ok("ERR3"),
            "INPT" if query => ok(&self.input.clone()),
            "INPT" => {
                if let Some(e) = self.refuse_input {
                    return ok(e);
                }
                let known = self.inputs.split_whitespace().any(|c| c == param);
                // A letter or type-6 input exists only in class 2.
                let needs_class2 = param.starts_with('6')
                    || param.bytes().skip(1).any(|b| b.is_ascii_alphabetic());
                if !known || (needs_class2 && class != "2") {
                    return ok("ERR2");
                }
                self.input = param.to_owned();
                ok("OK")
            }
            "AVMT" if !on => ok("ERR3"),
            "AVMT" if query => ok(&self.mute.clone()),
            "AVMT" => {
                let (kind, set) = param.split_at(1);
                let (mut v, mut a) = match self.mute.as_str() {
                    "31" => (true, true),
                    "11" => (true, false),
                    "21" => (false, true),
                    _ => (false, false),
                };
                match kind {
                    "1" => v = set == "1",
                    "2" => a = set == "1",
                    _ => (v, a) = (set == "1", set == "1"),
                }
                self.mute = match (v, a) {
                    (true, true) => "31",
                    (true, false) => "11",
                    (false, true) => "21",
                    _ => "30",
                }
                .into();
                ok("OK")
            }
            "FREZ" if !on => ok("ERR3"),
            "FREZ" => ok("0"),
            "LAMP" => ok(&self.lamps.clone()),
            "FILT" => ok("40"),
            "ERST" => ok("000000"),
            _ => ok("ERR1"),
        }
    }
}
