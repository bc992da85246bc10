//! The profile driver: a device described entirely in TOML (docs/profiles.md).
//!
//! A profile is text (commands and replies are lines, replies matched by
//! regex) or binary (`binary = true`: commands and replies are byte
//! templates with a length byte and a checksum, replies cut from the stream
//! by an end byte, a length byte or a fixed size). Around that: variables
//! per device (`{id}`), a login, error replies with their codes, unsolicited
//! notifications mapped to state or events, multi-line replies, per-command
//! timeouts, a delay between commands, and a power-on delay during which
//! only some settings are sent.

pub mod checksum;
pub mod frame;
pub mod sim;
pub mod template;

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use regex::bytes::Regex;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio::time::Instant;
use toml::Spanned;

use crate::lineio::LineIo;
use crate::transport::Transport;
use crate::DriverError;
use checksum::Checksum;
use frame::{Cut, Framing};
use patchbay_client::schema::{Description, DeviceEvent, Kind, Level, SchemaError, Setting, State};
use template::{Format, Matched, Mismatch, Rules, Template};

/// One setting in a profile file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettingProfile {
    /// Key in the state.
    pub name: String,
    /// Label for people (defaults to the name).
    pub label: Option<String>,
    /// `enum`, `bool`, `int` or `text`.
    #[serde(rename = "type")]
    pub kind: String,
    /// For `enum`: the allowed values, when they go on the wire as they are.
    #[serde(default)]
    pub values: Vec<String>,
    /// For `enum`/`bool`: value → wire string (hex bytes in binary profiles;
    /// numbers may be written `0x11`).
    #[serde(default)]
    pub map: BTreeMap<String, String>,
    /// The map for `set` and its reply, when it differs from the one for `query`.
    #[serde(default)]
    pub set_map: BTreeMap<String, String>,
    /// For `enum`: values of `map` that are only ever read (`warming`, `cooling`).
    #[serde(default)]
    pub transitional: Vec<String>,
    /// For `int`: lowest value.
    pub min: Option<i64>,
    /// For `int`: highest value.
    pub max: Option<i64>,
    /// For `int`: the unit shown (`h`, `dB`).
    pub unit: Option<String>,
    /// Command that asks for the current value.
    pub query: Option<Spanned<String>>,
    /// Command that sets it (`{value}` is replaced).
    pub set: Option<Spanned<String>>,
    /// The reply to `query` (and to `set`, without `set_reply`): a regex whose
    /// first group is the value (text), or a template with `{value}` (binary).
    pub reply: Spanned<String>,
    /// The reply to `set`, when it differs from the reply to `query`.
    pub set_reply: Option<Spanned<String>>,
    /// This setting's reply timeout, in milliseconds (default: the profile's).
    pub timeout_ms: Option<u64>,
    /// Lines the reply spans (text), matched joined by `\n` (default 1).
    pub reply_lines: Option<usize>,
    /// For the simulator of a text profile: the answer it sends to a query
    /// or a set (`{value}` and variables replaced).
    pub sim_reply: Option<String>,
}

/// A reply the device sends by itself.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyProfile {
    /// What it looks like (as `reply` in a setting).
    pub reply: Spanned<String>,
    /// The setting it reports (its value decoded as that setting's).
    pub setting: Option<String>,
    /// Its own value → wire map, when it differs from the setting's.
    #[serde(default)]
    pub map: BTreeMap<String, String>,
    /// Or: the event code it raises.
    pub event: Option<String>,
    /// The event's level: `info`, `warning` or `error` (default `warning`).
    pub level: Option<String>,
    /// The event's message (default: the notification as received).
    pub message: Option<String>,
}

/// One step of the login after connecting.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginStep {
    /// Wait until what arrived matches this regex.
    pub expect: Option<Spanned<String>>,
    /// Then send this (a command template with variables, e.g. `{password}`).
    pub send: Option<Spanned<String>>,
}

/// A power-on delay: after `setting` is set to `value`, for `delay_ms` only
/// the settings in `allowed` are sent; the others wait.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PowerOnDelay {
    /// The power setting (default `power`).
    #[serde(default = "default_power")]
    pub setting: String,
    /// Its value that starts the delay (default `on`).
    #[serde(default = "default_on")]
    pub value: String,
    /// How long, in milliseconds.
    pub delay_ms: u64,
    /// Settings that may be sent meanwhile (the power setting always may).
    #[serde(default)]
    pub allowed: Vec<String>,
}

fn default_power() -> String {
    "power".into()
}
fn default_on() -> String {
    "on".into()
}

/// A device profile: the whole TOML file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LineProfile {
    /// Manufacturer.
    pub manufacturer: String,
    /// Model (or family).
    pub model: String,
    /// The models it was written for.
    #[serde(default)]
    pub models: Vec<String>,
    /// The protocol's name, for listings.
    pub protocol: Option<String>,
    /// Where the protocol facts come from (a vendor document: title, version, section).
    pub source: Option<String>,
    /// What kind of device: `display`, `projector`, `switcher`, `camera`, `audio`.
    pub category: Option<String>,
    /// Binary frames (byte templates) instead of text lines.
    #[serde(default)]
    pub binary: bool,
    /// The device speaks Telnet: option requests are refused (DO → WONT,
    /// WILL → DONT) and taken out of what is read.
    #[serde(default)]
    pub telnet: bool,
    /// Text: appended to every command (default CR).
    #[serde(default = "default_terminator")]
    pub terminator: String,
    /// Text: ends every reply line (default CR LF).
    #[serde(default = "default_reply_terminator")]
    pub reply_terminator: String,
    /// Text: what the device sends when ready for the next command, if it has a prompt.
    pub prompt: Option<String>,
    /// Binary: reply frames end with these bytes (hex).
    pub frame_end: Option<String>,
    /// Binary: reply frames begin with these bytes (hex).
    pub frame_start: Option<String>,
    /// Binary: where the length byte is in a reply frame.
    pub frame_length_at: Option<usize>,
    /// Binary: added to the length byte to give the whole frame's size.
    pub frame_length_add: Option<usize>,
    /// Binary: `hex2` when the length is two ASCII hex digits (default: one byte).
    pub frame_length_format: Option<String>,
    /// Binary: every reply frame's size.
    pub frame_size: Option<usize>,
    /// The checksum `{sum}` stands for.
    #[serde(default)]
    pub checksum: Checksum,
    /// The first byte the checksum covers (it ends just before `{sum}`).
    #[serde(default)]
    pub checksum_from: usize,
    /// Added to what `{len}` counts (the bytes after it up to `{sum}`).
    #[serde(default)]
    pub length_adjust: i64,
    /// A reply that means the device refused the command; its first group
    /// (text) or `{value}` (binary) is an error code.
    pub error_reply: Option<Spanned<String>>,
    /// More replies that mean a refusal (as `error_reply`).
    #[serde(default)]
    pub error_replies: Vec<Spanned<String>>,
    /// Error codes → what they mean.
    #[serde(default)]
    pub error_codes: BTreeMap<String, String>,
    /// Reply timeout in milliseconds (default 1000).
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Least time between the end of one exchange and the next command, in milliseconds.
    #[serde(default)]
    pub delay_ms: u64,
    /// Variables for templates (`{id}`), with their defaults; a device's
    /// `vars` (and `password`) override them.
    #[serde(default)]
    pub vars: BTreeMap<String, String>,
    /// Steps after connecting (a greeting, a password prompt).
    #[serde(default)]
    pub login: Vec<LoginStep>,
    /// A power-on delay.
    pub power_on: Option<PowerOnDelay>,
    /// Replies the device sends by itself.
    #[serde(default)]
    pub notify: Vec<NotifyProfile>,
    /// The settings.
    #[serde(rename = "setting")]
    pub settings: Vec<SettingProfile>,
}

fn default_terminator() -> String {
    "\r".into()
}
fn default_reply_terminator() -> String {
    "\r\n".into()
}
fn default_timeout_ms() -> u64 {
    1000
}

/// A profile that cannot be used, with where in the file.
#[derive(Debug, Clone)]
pub struct ProfileError {
    /// What and why, naming the setting and key.
    pub message: String,
    /// The bytes of the file it is about, when known.
    pub span: Option<Range<usize>>,
}

impl ProfileError {
    fn at(span: Option<Range<usize>>, message: String) -> Self {
        ProfileError { message, span }
    }

    /// `file:line: message`: the line of the span, or else of the first key
    /// or setting the message names (`` `frame_end` ``, ``setting `power` ``).
    pub fn locate(&self, file: &str, text: &str) -> String {
        let line = match &self.span {
            Some(s) => Some(text[..s.start.min(text.len())].matches('\n').count() + 1),
            None => self.named_line(text),
        };
        match line {
            Some(line) => format!("{file}:{line}: {}", self.message),
            None => format!("{file}: {}", self.message),
        }
    }

    /// The line of the first name in backticks that the file defines: a key
    /// (`name = ...` at the start of a line) or a setting (`name = "x"`).
    fn named_line(&self, text: &str) -> Option<usize> {
        let names = self.message.split('`').skip(1).step_by(2);
        for name in names {
            let setting = format!("name = \"{name}\"");
            let found = text.lines().position(|l| {
                let l = l.trim_start();
                l.starts_with(&setting)
                    || l.strip_prefix(name)
                        .is_some_and(|rest| rest.trim_start().starts_with('='))
            });
            if let Some(i) = found {
                return Some(i + 1);
            }
        }
        None
    }
}

/// How a reply is recognised.
#[derive(Debug, Clone)]
enum Matcher {
    Regex(Regex),
    Frame(Template),
}

/// What a reply frame is, for one matcher.
enum Outcome {
    Yes(Option<String>),
    No,
    Corrupt(String),
}

/// How a command is written.
#[derive(Debug, Clone)]
enum Command {
    Text(String),
    Frame(Template),
}

#[derive(Debug, Clone)]
struct CompiledSetting {
    profile: SettingProfile,
    query: Option<Command>,
    set: Option<Command>,
    reply: Matcher,
    set_reply: Option<Matcher>,
    /// The byte width of hex `{value}`s (the map's wire strings).
    value_width: Option<usize>,
}

#[derive(Debug, Clone)]
struct CompiledNotify {
    reply: Matcher,
    map: BTreeMap<String, String>,
    setting: Option<usize>,
    event: Option<(String, Level, Option<String>)>,
}

/// A profile checked and ready to drive a device.
#[derive(Debug)]
struct Compiled {
    profile: LineProfile,
    settings: Vec<CompiledSetting>,
    errors: Vec<Matcher>,
    notify: Vec<CompiledNotify>,
    login: Vec<(Option<Regex>, Option<Command>)>,
    framing: Option<Framing>,
    rules: Rules,
}

impl LineProfile {
    /// Reads a profile file and checks it; errors name the file, line and key.
    pub fn load(path: &std::path::Path) -> Result<LineProfile, DriverError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            DriverError::Config(format!("cannot read profile {}: {e}", path.display()))
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Whether a login step or command names the variable `{name}`.
    pub fn uses_var(&self, name: &str) -> bool {
        let needle = format!("{{{name}");
        let commands = self
            .settings
            .iter()
            .flat_map(|s| [&s.query, &s.set])
            .flatten();
        let login = self.login.iter().filter_map(|l| l.send.as_ref());
        commands.chain(login).any(|t| t.get_ref().contains(&needle))
    }

    /// Parses and checks profile text; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<LineProfile, DriverError> {
        let profile: LineProfile = toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            DriverError::Config(match line {
                Some(l) => format!("{file}:{l}: {}", e.message()),
                None => format!("{file}: {}", e.message()),
            })
        })?;
        compile(&profile, &profile.vars).map_err(|e| DriverError::Config(e.locate(file, text)))?;
        Ok(profile)
    }
}

/// A reply pattern with the device's variables put in (`{id}` → its value, escaped).
fn put_vars(pattern: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = pattern.to_owned();
    for (name, value) in vars {
        out = out.replace(&format!("{{{name}}}"), &regex::escape(value));
    }
    out
}

fn regex(
    s: &Spanned<String>,
    what: &str,
    vars: &BTreeMap<String, String>,
) -> Result<Regex, ProfileError> {
    Regex::new(&put_vars(s.get_ref(), vars)).map_err(|e| {
        ProfileError::at(
            Some(s.span()),
            format!(
                "{what} is not a valid regex: {}",
                e.to_string().replace('\n', " ")
            ),
        )
    })
}

fn template(s: &Spanned<String>, what: &str) -> Result<Template, ProfileError> {
    Template::parse(s.get_ref())
        .map_err(|e| ProfileError::at(Some(s.span()), format!("{what}: {e}")))
}

fn matcher(
    binary: bool,
    s: &Spanned<String>,
    what: &str,
    vars: &BTreeMap<String, String>,
) -> Result<Matcher, ProfileError> {
    Ok(if binary {
        Matcher::Frame(template(s, what)?)
    } else {
        Matcher::Regex(regex(s, what, vars)?)
    })
}

fn command(binary: bool, s: &Spanned<String>, what: &str) -> Result<Command, ProfileError> {
    Ok(if binary {
        Command::Frame(template(s, what)?)
    } else {
        check_text_template(s.get_ref())
            .map_err(|e| ProfileError::at(Some(s.span()), format!("{what}: {e}")))?;
        Command::Text(s.get_ref().clone())
    })
}

fn hex_field(v: &Option<String>, key: &str) -> Result<Option<Vec<u8>>, ProfileError> {
    v.as_deref()
        .map(|h| {
            template::parse_hex(h).map_err(|e| ProfileError::at(None, format!("`{key}`: {e}")))
        })
        .transpose()
}

fn compile(p: &LineProfile, vars: &BTreeMap<String, String>) -> Result<Compiled, ProfileError> {
    let plain = |m: String| ProfileError::at(None, m);
    let framing = if p.binary {
        let start = hex_field(&p.frame_start, "frame_start")?.unwrap_or_default();
        Some(
            match (
                hex_field(&p.frame_end, "frame_end")?,
                p.frame_length_at,
                p.frame_size,
            ) {
                (Some(end), None, None) if !end.is_empty() => Framing::End(end),
                                (None, Some(at), None) => Framing::Length {
                    start,
                    at,
                    add: p.frame_length_add.unwrap_or(0),
                    hex2: match p.frame_length_format.as_deref() {
                        None | Some("u8") => false,
                        Some("hex2") => true,
                        Some(other) => {
                            return Err(plain(format!(
                                "`frame_length_format` is u8 or hex2, not {other:?}"
                            )))
                        }
                    },
                },
                (None, None, Some(len)) if len > 0 => Framing::Fixed { start, len },
                _ => {
                    return Err(plain(
                        "a binary profile says where a reply ends with exactly one of `frame_end`, `frame_length_at` (with `frame_length_add`) or `frame_size`".into(),
                    ))
                }
            },
        )
    } else {
        for key in ["frame_end", "frame_start", "frame_length_at", "frame_size"] {
            let set = match key {
                "frame_end" => p.frame_end.is_some(),
                "frame_start" => p.frame_start.is_some(),
                "frame_length_at" => p.frame_length_at.is_some(),
                _ => p.frame_size.is_some(),
            };
            if set {
                return Err(plain(format!(
                    "`{key}` is for binary profiles: add `binary = true`"
                )));
            }
        }
        if p.reply_terminator.is_empty() {
            return Err(plain("`reply_terminator` may not be empty".into()));
        }
        None
    };
    let mut settings: Vec<CompiledSetting> = Vec::new();
    for s in &p.settings {
        let bad = |span: Option<Range<usize>>, why: String| {
            ProfileError::at(span, format!("setting `{}`: {why}", s.name))
        };
        if settings.iter().any(|o| o.profile.name == s.name) {
            return Err(bad(None, "the name is used twice".into()));
        }
        match s.kind.as_str() {
            "enum" if s.values.is_empty() && s.map.is_empty() => {
                return Err(bad(None, "an enum needs `values` or `map`".into()))
            }
            "int" if s.min.is_none() || s.max.is_none() => {
                return Err(bad(None, "an int needs `min` and `max`".into()))
            }
            "enum" | "bool" | "int" | "text" => {}
            other => {
                return Err(bad(
                    None,
                    format!("`type` must be enum, bool, int or text, not {other:?}"),
                ))
            }
        }
        if let Some(v) = s
            .set_map
            .keys()
            .find(|v| !s.map.contains_key(*v) && !s.values.contains(v))
        {
            return Err(bad(
                None,
                format!("`set_map` names `{v}`, which `map` does not"),
            ));
        }
        if let Some(t) = s.transitional.iter().find(|t| !s.map.contains_key(*t)) {
            return Err(bad(
                None,
                format!("`transitional` names `{t}`, which `map` does not"),
            ));
        }
        if s.query.is_none() && s.set.is_none() {
            return Err(bad(None, "needs `query`, `set` or both".into()));
        }
        let reply =
            matcher(p.binary, &s.reply, "`reply`", vars).map_err(|e| bad(e.span, e.message))?;
        if let (Matcher::Regex(r), Some(_)) = (&reply, &s.query) {
            if r.captures_len() < 2 {
                return Err(bad(
                    Some(s.reply.span()),
                    "`reply` needs a capture group for the value".into(),
                ));
            }
        }
        let set_reply = s
            .set_reply
            .as_ref()
            .map(|r| matcher(p.binary, r, "`set_reply`", vars))
            .transpose()
            .map_err(|e| bad(e.span, e.message))?;
        let query = s
            .query
            .as_ref()
            .map(|q| command(p.binary, q, "`query`"))
            .transpose()
            .map_err(|e| bad(e.span, e.message))?;
        let set = s
            .set
            .as_ref()
            .map(|q| command(p.binary, q, "`set`"))
            .transpose()
            .map_err(|e| bad(e.span, e.message))?;
        let mut value_width = None;
        // Map values are hex bytes where `{value}` is written in the default (hex) format.
        let hex_value = [
            Some(&s.reply),
            s.query.as_ref(),
            s.set.as_ref(),
            s.set_reply.as_ref(),
        ]
        .into_iter()
        .flatten()
        .any(|t| t.get_ref().contains("{value}") || t.get_ref().contains("{value:hex}"));
        if p.binary && hex_value {
            for (value, wire) in s.map.iter().chain(&s.set_map) {
                let bytes = template::parse_hex(wire)
                    .map_err(|e| bad(None, format!("`map.{value}`: {e}")))?;
                if value_width.is_some_and(|w| w != bytes.len()) {
                    return Err(bad(
                        None,
                        "every `map` value must have the same number of bytes".into(),
                    ));
                }
                value_width = Some(bytes.len());
            }
        }
        for (span, t) in [
            (s.query.as_ref().map(Spanned::span), query.as_ref()),
            (s.set.as_ref().map(Spanned::span), set.as_ref()),
        ] {
            let names: Vec<String> = match t {
                Some(Command::Frame(t)) => t.vars().map(str::to_owned).collect(),
                Some(Command::Text(t)) => text_vars(t),
                None => Vec::new(),
            };
            if let Some(v) = names
                .iter()
                .find(|v| !p.vars.contains_key(*v) && *v != "password")
            {
                return Err(bad(span, format!("`{v}` is not in `[vars]`")));
            }
        }
        if let Some(q) = &s.query {
            if q.get_ref().contains("{value") {
                return Err(bad(
                    Some(q.span()),
                    "`query` cannot send `{value}`: it asks for it".into(),
                ));
            }
        }
        if let (Some(min), Some(max)) = (s.min, s.max) {
            if min > max {
                return Err(bad(None, format!("`min` ({min}) is above `max` ({max})")));
            }
        }
        if s.timeout_ms == Some(0) {
            return Err(bad(None, "`timeout_ms` must be greater than 0".into()));
        }
        settings.push(CompiledSetting {
            profile: s.clone(),
            query,
            set,
            reply,
            set_reply,
            value_width,
        });
    }
    if settings.is_empty() {
        return Err(plain("a profile needs at least one [[setting]]".into()));
    }
    if p.timeout_ms == 0 {
        return Err(plain("`timeout_ms` must be greater than 0".into()));
    }
    let mut errors = Vec::new();
    for (i, e) in p.error_reply.iter().chain(&p.error_replies).enumerate() {
        let what = if p.error_reply.is_some() && i == 0 {
            "`error_reply`".to_owned()
        } else {
            format!(
                "`error_replies[{}]`",
                i - usize::from(p.error_reply.is_some())
            )
        };
        errors.push(matcher(p.binary, e, &what, vars)?);
    }
    let mut notify = Vec::new();
    for (i, n) in p.notify.iter().enumerate() {
        let what = format!("notify[{i}]");
        let reply = matcher(p.binary, &n.reply, &format!("{what} `reply`"), vars)?;
        let setting = match &n.setting {
            Some(name) => Some(
                settings
                    .iter()
                    .position(|s| &s.profile.name == name)
                    .ok_or_else(|| {
                        ProfileError::at(
                            Some(n.reply.span()),
                            format!("{what}: no setting `{name}`"),
                        )
                    })?,
            ),
            None => None,
        };
        let level = match n.level.as_deref() {
            None | Some("warning") => Level::Warning,
            Some("info") => Level::Info,
            Some("error") => Level::Error,
            Some(other) => {
                return Err(ProfileError::at(
                    Some(n.reply.span()),
                    format!("{what}: `level` is info, warning or error, not {other:?}"),
                ))
            }
        };
        let event = n.event.clone().map(|code| (code, level, n.message.clone()));
        if setting.is_none() == event.is_none() {
            return Err(ProfileError::at(
                Some(n.reply.span()),
                format!("{what}: give exactly one of `setting` or `event`"),
            ));
        }
        notify.push(CompiledNotify {
            reply,
            map: n.map.clone(),
            setting,
            event,
        });
    }
    let mut login = Vec::new();
    for (i, step) in p.login.iter().enumerate() {
        let expect = step
            .expect
            .as_ref()
            .map(|e| regex(e, &format!("login[{i}] `expect`"), vars))
            .transpose()?;
        let send = step
            .send
            .as_ref()
            .map(|s| command(p.binary, s, &format!("login[{i}] `send`")))
            .transpose()?;
        login.push((expect, send));
    }
    if let Some(po) = &p.power_on {
        for name in std::iter::once(&po.setting).chain(&po.allowed) {
            if !settings.iter().any(|s| &s.profile.name == name) {
                return Err(plain(format!(
                    "`power_on` names `{name}`, which is not a setting"
                )));
            }
        }
    }
    if p.checksum == Checksum::None
        && settings.iter().any(|s| {
            [&s.query, &s.set]
                .into_iter()
                .flatten()
                .any(|c| matches!(c, Command::Frame(t) if t.source().contains("{sum")))
        })
    {
        return Err(plain(
            "a template uses `{sum}` but the profile names no `checksum`".into(),
        ));
    }
    Ok(Compiled {
        profile: p.clone(),
        settings,
        errors,
        notify,
        login,
        framing,
        rules: Rules {
            length_adjust: p.length_adjust,
            checksum: p.checksum,
            checksum_from: p.checksum_from,
        },
    })
}

/// The variables a text template names (every `{name}` but `{value}`).
fn text_vars(t: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = t;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}') else {
            break;
        };
        let inner = &rest[open + 1..open + close];
        let name = inner.split(':').next().unwrap_or_default().trim();
        if name != "value" {
            out.push(name.to_owned());
        }
        rest = &rest[open + close + 1..];
    }
    out
}

/// Checks the `{...}` placeholders of a text template.
fn check_text_template(t: &str) -> Result<(), String> {
    render_text(t, Some("0"), &BTreeMap::new(), true).map(|_| ())
}

/// Writes a text template: `{value[:fmt]}` and `{var[:fmt]}` replaced.
fn render_text(
    t: &str,
    value: Option<&str>,
    vars: &BTreeMap<String, String>,
    checking: bool,
) -> Result<String, String> {
    let mut out = String::with_capacity(t.len() + 8);
    let mut rest = t;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let close = rest[open..]
            .find('}')
            .ok_or_else(|| format!("a `{{` in `{t}` is not closed"))?
            + open;
        let inner = &rest[open + 1..close];
        let (name, fmt) = match inner.split_once(':') {
            Some((n, f)) => (n, Some(f)),
            None => (inner, None),
        };
        let format = match fmt {
            Some(f) => Format::parse_text(f)?,
            None => Format::Ascii,
        };
        let raw = match name {
            "value" => value
                .map(str::to_owned)
                .ok_or("this command needs a value")?,
            var if checking => {
                if var.is_empty() || !var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(format!("`{{{inner}}}` is not a placeholder"));
                }
                "0".into()
            }
            var => vars
                .get(var)
                .cloned()
                .ok_or_else(|| format!("the variable `{var}` has no value"))?,
        };
        let bytes = format.encode(&raw)?;
        out.push_str(&String::from_utf8_lossy(&bytes));
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

impl Format {
    /// A format for text templates (no raw bytes).
    fn parse_text(s: &str) -> Result<Format, String> {
        match template::format_named(s)? {
            Format::Hex | Format::U8 | Format::U16Be | Format::U16Le => Err(format!(
                "`{s}` writes raw bytes; text templates take ascii, hexN or decN"
            )),
            f => Ok(f),
        }
    }
}

impl Matcher {
    fn check(
        &self,
        frame: &[u8],
        vars: &BTreeMap<String, String>,
        rules: &Rules,
        width: Option<usize>,
    ) -> Outcome {
        match self {
            Matcher::Regex(r) => match r.captures(frame) {
                // An empty or absent group: an acknowledgement without the value.
                Some(c) => Outcome::Yes(
                    c.get(1)
                        .map(|m| String::from_utf8_lossy(m.as_bytes()).trim().to_owned())
                        .filter(|v| !v.is_empty()),
                ),
                None => Outcome::No,
            },
            Matcher::Frame(t) => match t.matches(frame, vars, rules, width) {
                Ok(Matched { value }) => Outcome::Yes(value),
                Err(Mismatch::Other) => Outcome::No,
                Err(Mismatch::Corrupt(why)) => Outcome::Corrupt(why),
            },
        }
    }
}

/// A number written `17` or `0x11`.
fn number(s: &str) -> Option<i64> {
    let s = s.trim();
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => i64::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

impl CompiledSetting {
    /// The map for `set` (and its reply) or for `query`.
    fn map(&self, setting: bool) -> &BTreeMap<String, String> {
        if setting && !self.profile.set_map.is_empty() {
            &self.profile.set_map
        } else {
            &self.profile.map
        }
    }

    /// The wire string for a value (`0x` numbers written in decimal, as formats take them).
    fn encode(&self, value: &Value, setting: bool) -> String {
        let key = match value {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        match self.map(setting).get(&key) {
            Some(w) if w.starts_with("0x") || w.starts_with("0X") => {
                number(w).map_or_else(|| w.clone(), |n| n.to_string())
            }
            Some(w) => w.clone(),
            None => key,
        }
    }

    /// The value for a wire string.
    fn decode(&self, wire: &str, binary: bool, map: &BTreeMap<String, String>) -> Value {
        let same = |w: &str| {
            if !binary || w.starts_with("0x") {
                if let (Some(a), Some(b)) = (number(w), number(wire)) {
                    return a == b;
                }
            }
            if binary {
                w.split_whitespace()
                    .collect::<String>()
                    .eq_ignore_ascii_case(wire)
            } else {
                w == wire
            }
        };
        let mapped = map.iter().find(|(_, w)| same(w)).map(|(v, _)| v.as_str());
        let text = mapped.unwrap_or(wire);
        match self.profile.kind.as_str() {
            "bool" => json!(text == "true"),
            "int" => text
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|f| f.is_finite())
                .map(|f| json!(f.round() as i64))
                .unwrap_or(Value::Null),
            _ => json!(text),
        }
    }
}

/// A device driven by a [`LineProfile`].
pub struct LineDriver {
    transport: Transport,
    c: Arc<Compiled>,
    vars: BTreeMap<String, String>,
    io: Option<LineIo>,
    /// When the last exchange ended, for `delay_ms`.
    last: Option<Instant>,
    /// Until when only the power-on delay's `allowed` settings are sent.
    warming_until: Option<Instant>,
    /// The last state read, kept for settings skipped while warming.
    last_state: State,
    /// Settings reported by notifications since the last poll.
    notified: State,
    events: Vec<DeviceEvent>,
}

/// Replies looked at for one command before giving up.
const MAX_UNEXPECTED: usize = 8;

impl LineDriver {
    /// Reads a profile file and checks it (see [`LineProfile::load`]).
    pub fn load_profile(path: &std::path::Path) -> Result<LineProfile, DriverError> {
        LineProfile::load(path)
    }

    /// A driver for `profile` at `transport`; fails on an unusable profile, naming the setting.
    pub fn new(transport: Transport, profile: LineProfile) -> Result<Self, DriverError> {
        let c = compile(&profile, &profile.vars).map_err(|e| DriverError::Config(e.message))?;
        Ok(LineDriver {
            transport,
            vars: profile.vars.clone(),
            c: Arc::new(c),
            io: None,
            last: None,
            warming_until: None,
            last_state: State::new(),
            notified: State::new(),
            events: Vec::new(),
        })
    }

    /// Sets template variables for this device (over the profile's defaults).
    pub fn with_vars(mut self, vars: &BTreeMap<String, String>) -> Self {
        self.vars
            .extend(vars.iter().map(|(k, v)| (k.clone(), v.clone())));
        // Reply patterns name variables too (`^a {id} OK...`): put this device's in.
        if let Ok(c) = compile(&self.c.profile, &self.vars) {
            self.c = Arc::new(c);
        }
        self
    }

    /// Closes the connection.
    pub fn disconnect(&mut self) {
        self.io = None;
    }

    /// The settings schema from the profile.
    pub async fn describe(&mut self) -> Result<Description, DriverError> {
        let settings = self
            .c
            .settings
            .iter()
            .map(|c| {
                let s = &c.profile;
                let kind = match s.kind.as_str() {
                    "bool" => Kind::Bool,
                    "int" => Kind::Int {
                        min: s.min.unwrap_or(0),
                        max: s.max.unwrap_or(0),
                        unit: s.unit.clone(),
                    },
                    "text" => Kind::Text,
                    _ => Kind::Enum {
                        values: if s.values.is_empty() {
                            s.map
                                .keys()
                                .filter(|k| !s.transitional.contains(k))
                                .cloned()
                                .collect()
                        } else {
                            s.values.clone()
                        },
                        transitional: s.transitional.clone(),
                    },
                };
                Setting::new(
                    &s.name,
                    s.label.as_deref().unwrap_or(&s.name),
                    kind,
                    s.set.is_some(),
                )
            })
            .collect();
        let mut info = Map::new();
        if let Some(p) = &self.c.profile.protocol {
            info.insert("protocol".into(), json!(p));
        }
        if let Some(k) = &self.c.profile.category {
            info.insert("category".into(), json!(k));
        }
        Ok(Description {
            driver: "line".into(),
            manufacturer: self.c.profile.manufacturer.clone(),
            model: self.c.profile.model.clone(),
            info,
            settings,
        })
    }

    /// The bytes of `cmd`, and how errors name it.
    fn render(&self, cmd: &Command, value: Option<&str>) -> Result<(Vec<u8>, String), DriverError> {
        match cmd {
            Command::Text(t) => {
                let line = render_text(t, value, &self.vars, false).map_err(DriverError::Config)?;
                let bytes = format!("{line}{}", self.c.profile.terminator).into_bytes();
                Ok((bytes, line))
            }
            Command::Frame(t) => {
                let bytes = t
                    .encode(value, &self.vars, &self.c.rules)
                    .map_err(|e| DriverError::OutOfRange(format!("{}: {e}", t.source())))?;
                let shown = template::hex(&bytes);
                Ok((bytes, shown))
            }
        }
    }

    async fn connect(&mut self) -> Result<(), DriverError> {
        if self.io.is_some() {
            return Ok(());
        }
        let stream = self.transport.open().await?;
        let mut io = LineIo::new(stream, self.transport.serial_path().map(str::to_owned));
        if self.c.profile.telnet {
            io.refuse_telnet_options();
        }
        let timeout = Duration::from_millis(self.c.profile.timeout_ms);
        let c = self.c.clone();
        for (expect, send) in &c.login {
            if let Some(re) = expect {
                let what = format!("login: waiting for `{}`", re.as_str());
                io.read_frame(
                    |buf| {
                        let end = re.find(buf)?.end();
                        Some(buf.drain(..end).collect())
                    },
                    timeout,
                    &what,
                )
                .await?;
            }
            if let Some(cmd) = send {
                let (bytes, _) = self.render(cmd, None)?;
                io.send(&bytes).await?;
            }
        }
        self.io = Some(io);
        Ok(())
    }

    /// Reads one reply frame (a line, several lines, or a binary frame).
    async fn read_reply(
        &mut self,
        lines: usize,
        timeout: Duration,
        shown: &str,
    ) -> Result<Vec<u8>, DriverError> {
        let c = self.c.clone();
        let io = self.io.as_mut().ok_or(DriverError::Closed)?;
        if let Some(framing) = &c.framing {
            return io
                .read_frame(
                    |buf| match framing.cut(buf) {
                        Cut::Frame(f) => Some(f),
                        Cut::More => None,
                    },
                    timeout,
                    shown,
                )
                .await;
        }
        let mut out = Vec::new();
        for i in 0..lines.max(1) {
            let line = io
                .read_until(c.profile.reply_terminator.as_bytes(), timeout, shown)
                .await?;
            if i > 0 {
                out.push(b'\n');
            }
            out.extend_from_slice(line.trim_ascii());
            if let Some(prompt) = &c.profile.prompt {
                if i + 1 == lines.max(1) {
                    io.read_until(prompt.as_bytes(), timeout, shown).await?;
                }
            }
        }
        Ok(out)
    }

    /// Waits out the delay between commands and, for settings not allowed
    /// while warming, the power-on delay.
    async fn pace(&mut self, setting: &str) {
        if let Some(last) = self.last {
            tokio::time::sleep_until(last + Duration::from_millis(self.c.profile.delay_ms)).await;
        }
        if let (Some(until), Some(po)) = (self.warming_until, &self.c.profile.power_on) {
            if setting != po.setting && !po.allowed.iter().any(|a| a == setting) {
                tokio::time::sleep_until(until).await;
            }
        }
    }

    /// Sends a command for setting `idx` and returns the value its reply carries.
    async fn exchange(
        &mut self,
        idx: usize,
        cmd: &Command,
        value: Option<&str>,
        setting_reply: bool,
    ) -> Result<Option<String>, DriverError> {
        let (bytes, shown) = self.render(cmd, value)?;
        let name = self.c.settings[idx].profile.name.clone();
        self.pace(&name).await;
        let reused = self.io.is_some();
        self.connect().await?;
        let mut result = self
            .exchange_connected(idx, &bytes, &shown, setting_reply)
            .await;
        // A device that closes its connection after each reply (or after
        // being idle): once more on a fresh connection.
        if reused && matches!(result, Err(DriverError::Closed)) {
            self.io = None;
            self.connect().await?;
            result = self
                .exchange_connected(idx, &bytes, &shown, setting_reply)
                .await;
        }
        self.last = Some(Instant::now());
        if result
            .as_ref()
            .err()
            .is_some_and(DriverError::is_connection_lost)
        {
            self.io = None;
        }
        result
    }

    async fn exchange_connected(
        &mut self,
        idx: usize,
        bytes: &[u8],
        shown: &str,
        setting_reply: bool,
    ) -> Result<Option<String>, DriverError> {
        let c = self.c.clone();
        let s = &c.settings[idx];
        let timeout = Duration::from_millis(s.profile.timeout_ms.unwrap_or(c.profile.timeout_ms));
        self.io
            .as_mut()
            .ok_or(DriverError::Closed)?
            .send(bytes)
            .await?;
        let expected = match (&s.set_reply, setting_reply) {
            (Some(r), true) => r,
            _ => &s.reply,
        };
        let lines = s.profile.reply_lines.unwrap_or(1);
        let mut unexpected = Vec::new();
        // One deadline for the whole exchange, however much else the device says meanwhile.
        let deadline = Instant::now() + timeout;
        while unexpected.len() < MAX_UNEXPECTED {
            let left = deadline.saturating_duration_since(Instant::now());
            let frame = match self.read_reply(lines, left, shown).await {
                Ok(f) => f,
                Err(DriverError::Timeout { .. }) if !unexpected.is_empty() => {
                    return Err(DriverError::Protocol(format!(
                        "no reply to `{shown}` matched the profile within {} ms; the device sent: {}",
                        timeout.as_millis(),
                        unexpected.join(" | ")
                    )))
                }
                Err(e) => return Err(e),
            };
            for err in &c.errors {
                if let Outcome::Yes(code) = err.check(&frame, &self.vars, &c.rules, None) {
                    let meaning = code.as_deref().and_then(|k| {
                        c.profile
                            .error_codes
                            .get(k)
                            .or_else(|| c.profile.error_codes.get(&k.to_ascii_uppercase()))
                    });
                    let detail = format!("{shown} answered {}", self.show(&frame));
                    let why = match (code, meaning) {
                        (Some(k), Some(m)) => {
                            format!("the device refused the command: {m} (code {k})")
                        }
                        (Some(k), None) => format!("the device refused the command (code {k})"),
                        _ => "the device refused the command".to_owned(),
                    };
                    return Err(DriverError::busy(why, Some(detail)));
                }
            }
            match expected.check(&frame, &self.vars, &c.rules, s.value_width) {
                Outcome::Yes(v) => return Ok(v),
                Outcome::Corrupt(why) => {
                    return Err(DriverError::Protocol(format!(
                        "the reply to `{shown}` is damaged ({why}): {}",
                        self.show(&frame)
                    )))
                }
                Outcome::No => {}
            }
            if !self.take_notification(&frame) {
                unexpected.push(self.show(&frame));
            }
        }
        Err(DriverError::Protocol(format!(
            "no reply to `{shown}` matched the profile; the device sent: {}",
            unexpected.join(" | ")
        )))
    }

    /// Applies a notification; false when `frame` is none.
    fn take_notification(&mut self, frame: &[u8]) -> bool {
        let c = self.c.clone();
        for n in &c.notify {
            let width = n.setting.and_then(|i| c.settings[i].value_width);
            if let Outcome::Yes(v) = n.reply.check(frame, &self.vars, &c.rules, width) {
                if let (Some(i), Some(v)) = (n.setting, v.as_deref()) {
                    let s = &c.settings[i];
                    let map = if n.map.is_empty() {
                        &s.profile.map
                    } else {
                        &n.map
                    };
                    self.notified
                        .insert(s.profile.name.clone(), s.decode(v, c.profile.binary, map));
                }
                if let Some((code, level, message)) = &n.event {
                    self.events.push(DeviceEvent {
                        level: *level,
                        code: code.clone(),
                        message: message.clone().unwrap_or_else(|| self.show(frame)),
                    });
                }
                return true;
            }
        }
        false
    }

    /// A frame for messages: text as text, binary as hex, cut short.
    fn show(&self, frame: &[u8]) -> String {
        let mut s = if self.c.profile.binary {
            template::hex(frame)
        } else {
            String::from_utf8_lossy(frame).into_owned()
        };
        if s.len() > 200 {
            let mut cut = 200;
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            s.truncate(cut);
            s.push('…');
        }
        s
    }

    fn warming(&mut self) -> bool {
        match self.warming_until {
            Some(t) if Instant::now() < t => true,
            Some(_) => {
                self.warming_until = None;
                false
            }
            None => false,
        }
    }

    /// Queries every setting that has a query (while warming, only the allowed ones).
    pub async fn poll(&mut self) -> Result<State, DriverError> {
        let c = self.c.clone();
        let mut state = State::new();
        let warming = self.warming();
        for (idx, s) in c.settings.iter().enumerate() {
            let Some(q) = &s.query else {
                // A setting that cannot be read keeps the value last set.
                if let Some(v) = self.last_state.get(&s.profile.name) {
                    state.insert(s.profile.name.clone(), v.clone());
                }
                continue;
            };
            let name = &s.profile.name;
            let allowed = c
                .profile
                .power_on
                .as_ref()
                .is_none_or(|po| &po.setting == name || po.allowed.contains(name));
            if warming && !allowed {
                if let Some(v) = self.last_state.get(name) {
                    state.insert(name.clone(), v.clone());
                }
                continue;
            }
            // A setting the device will not report now (in standby, say)
            // has no value this time; the others are still read.
            let wire = match self.exchange(idx, q, None, false).await {
                Ok(w) => w,
                Err(DriverError::Busy { why, sent }) => {
                    tracing::debug!(setting = %name, "not read: {why} {sent:?}");
                    continue;
                }
                Err(e) => return Err(e),
            };
            let v = wire
                .map(|w| s.decode(&w, c.profile.binary, s.map(false)))
                .unwrap_or(Value::Null);
            state.insert(name.clone(), v);
        }
        for (k, v) in std::mem::take(&mut self.notified) {
            state.entry(k).or_insert(v);
        }
        self.last_state = state.clone();
        Ok(state)
    }

    /// Sets each desired setting in the order the profile lists them (so a
    /// profile puts `power` first), then polls.
    pub async fn apply(&mut self, desired: &State) -> Result<State, DriverError> {
        let c = self.c.clone();
        if let Some(name) = desired
            .keys()
            .find(|k| !c.settings.iter().any(|s| &s.profile.name == *k))
        {
            return Err(DriverError::Schema(SchemaError::UnknownSetting {
                setting: name.clone(),
                known: c
                    .settings
                    .iter()
                    .map(|s| s.profile.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            }));
        }
        for (idx, s) in c.settings.iter().enumerate() {
            let name = &s.profile.name;
            let Some(value) = desired.get(name) else {
                continue;
            };
            let cmd = s
                .set
                .as_ref()
                .ok_or_else(|| DriverError::Schema(SchemaError::ReadOnly(name.clone())))?;
            let wire = s.encode(value, true);
            let confirmed = match self.exchange(idx, cmd, Some(&wire), true).await? {
                Some(w) => s.decode(&w, c.profile.binary, s.map(true)),
                // An acknowledgement without the value: the device took it.
                None => value.clone(),
            };
            if &confirmed != value && !s.profile.transitional.iter().any(|t| confirmed == json!(t))
            {
                return Err(DriverError::DeviceFailure(format!(
                    "set {name} to {value} (device reports {confirmed})"
                )));
            }
            if s.query.is_none() {
                self.last_state.insert(name.clone(), confirmed.clone());
            }
            if let Some(po) = &c.profile.power_on {
                if &po.setting == name && value == &json!(po.value) {
                    self.warming_until = Some(Instant::now() + Duration::from_millis(po.delay_ms));
                }
            }
        }
        self.poll().await
    }

    /// Profile commands are quick: nothing to report while they run.
    pub fn set_progress(&mut self, _progress: Option<crate::driver::Progress>) {}

    /// Events from notifications since the last call.
    pub fn take_events(&mut self) -> Vec<DeviceEvent> {
        std::mem::take(&mut self.events)
    }
}
