//! Hub configuration: a typed struct read from TOML, every field defaulted.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;

/// Default HTTP port.
pub const DEFAULT_HTTP_PORT: u16 = 8080;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything an operator may, plus claiming the prefixes listed for its token.
    Agent,
    /// Subscribe, publish and send requests.
    Operator,
    /// Subscribe only.
    Viewer,
    /// Everything an operator may, plus changing definitions (groups).
    Admin,
}

impl Role {
    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Agent => "agent",
            Role::Operator => "operator",
            Role::Viewer => "viewer",
            Role::Admin => "admin",
        }
    }
}

/// One configured token.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// A name for logs, audit and reservations (default: its place in the list, `tokens[i]`).
    #[serde(default)]
    pub name: Option<String>,
    /// The secret a client presents in `hello`.
    pub token: String,
    /// The role it grants.
    pub role: Role,
    /// For agents: the tag prefixes the token may claim (a prefix allows its whole subtree).
    #[serde(default)]
    pub claims: Vec<String>,
    /// Rules for what it may read (none: everything its role may); see `access.rs`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub read: Vec<String>,
    /// Rules for what it may write: publish, request, claim, command.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub write: Vec<String>,
    /// Rules for what it may neither read nor write, whatever `read` and `write` say.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
}

/// The hub's settings. Every field has a default; see README.md for the table.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HubConfig {
    /// Address of the wire-protocol listener.
    pub listen: SocketAddr,
    /// Address of the HTTP listener (API, events, console).
    pub http_listen: SocketAddr,
    /// Origins allowed to call the HTTP API from a browser (`*` for any); none sends no CORS headers.
    pub cors_origins: Vec<String>,
    /// Largest HTTP request body, in bytes.
    pub http_body_limit: usize,
    /// Most simultaneous authenticated connections (wire, WebSocket and event streams); one more gets `err max_connections`.
    pub max_connections: usize,
    /// Most connections waiting to authenticate (tokens configured, no `hello` yet); past it the oldest is closed.
    pub max_unauthenticated: usize,
    /// Time a connection has to authenticate with `hello` when tokens are configured, in milliseconds.
    pub hello_timeout_ms: u64,
    /// Backlog of the wire and HTTP listen sockets (the kernel caps it at `net.core.somaxconn`).
    pub listen_backlog: u32,
    /// Most simultaneous HTTP connections; one more gets `503` and is closed.
    pub max_http_connections: usize,
    /// Time an HTTP client has to send a request's headers, in milliseconds.
    pub http_header_timeout_ms: u64,
    /// Longest accepted frame (one line), in bytes.
    pub max_frame_bytes: usize,
    /// Most subscription patterns one connection may hold.
    pub max_subscriptions: usize,
    /// Most patterns one `sub` frame may list.
    pub max_patterns_per_sub: usize,
    /// Most retained tags; a new one past it gets `err retained_limit`.
    pub max_retained: usize,
    /// Most requests one connection may have waiting for answers; one more gets `err too_many_requests`.
    pub max_pending_requests: usize,
    /// How long a prefix stays reserved for its owner after its claim ends, in milliseconds (0: not at all).
    pub claim_grace_ms: u64,
    /// Bad frames in a row after which the hub closes the connection.
    pub max_bad_frames: u32,
    /// Bytes of non-retained messages queued for one connection before it is dropped as a slow consumer.
    pub outbound_queue_bytes: usize,
    /// Time a write to a client may make no progress before it is dropped as a slow consumer, in milliseconds.
    pub write_timeout_ms: u64,
    /// Snapshot bytes per second one connection may be sent (after a 4 MiB burst), so
    /// a client looping huge snapshots cannot take the hub's CPU from everyone else.
    pub snapshot_rate_bytes: u64,
    /// Silence after which the hub pings a client, in milliseconds.
    pub ping_interval_ms: u64,
    /// Silence after which the hub drops a client, in milliseconds.
    pub idle_timeout_ms: u64,
    /// Request timeout when a `req` gives none, in milliseconds.
    pub request_timeout_ms: u64,
    /// Longest timeout a `req` may ask for, in milliseconds.
    pub max_request_timeout_ms: u64,
    /// Accepted tokens. With none, anyone may do anything, so the hub listens on loopback only unless started with `--insecure`.
    pub tokens: Vec<TokenConfig>,
    /// Folder of the journal (`patchbay.db`): commands, history, audit and retained values.
    /// `patchbay-hub` defaults it to `patchbay-data` beside the config file, or in the
    /// working directory without one; an embedded hub keeps no journal unless it is set.
    pub data_dir: Option<std::path::PathBuf>,
    /// Days of history, commands and audit the journal keeps.
    pub history_days: u32,
    /// The longest a journal record waits before it is committed, in milliseconds:
    /// what a `kill -9` of the hub may lose.
    pub journal_flush_ms: u64,
    /// History and retained records that may wait for the journal's writer before
    /// new ones are dropped (and the hub reports itself degraded).
    pub journal_queue: usize,
    /// Largest the journal file may grow, in bytes (0: no limit); past it writes fail as on a full disk.
    pub journal_max_bytes: u64,
    /// Groups of devices by name (`[groups.<name>]`), read-only through the API.
    pub groups: std::collections::BTreeMap<String, crate::automation::groups::GroupSpec>,
    /// Most members a group or room command talks to at once.
    pub group_concurrency: usize,
    /// Scenes by name (`[scenes.<name>]` with `[[scenes.<name>.steps]]`).
    pub scenes: std::collections::BTreeMap<String, crate::automation::scenes::Scene>,
    /// Alert rules by name (`[alerts.<name>]`).
    pub alerts: std::collections::BTreeMap<String, crate::automation::alerts::Rule>,
    /// How long one webhook delivery attempt may take, in milliseconds.
    pub webhook_timeout_ms: u64,
    /// CA certificates (PEM) an `https://` webhook's certificate must chain to; none: the system's.
    pub webhook_ca: Option<std::path::PathBuf>,
    /// Schedules by name (`[schedules.<name>]`).
    pub schedules: std::collections::BTreeMap<String, crate::automation::schedules::Schedule>,
    /// The MQTT bridge (`[mqtt]`); none without the section.
    pub mqtt: Option<crate::mqtt::MqttConfig>,
    /// Cluster mode over NATS (`[cluster]`); a single hub without the section.
    pub cluster: Option<crate::cluster::ClusterConfig>,
    /// Advertise the hub on the LAN over mDNS (`_patchbay._tcp`, `_http._tcp`).
    pub mdns: bool,
    /// TLS on the wire and HTTP ports (`[tls]`); none: plain TCP.
    pub tls: Option<crate::tls::TlsConfig>,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], crate::protocol::DEFAULT_PORT)),
            http_listen: SocketAddr::from(([127, 0, 0, 1], DEFAULT_HTTP_PORT)),
            cors_origins: Vec::new(),
            http_body_limit: 64 * 1024,
            max_connections: 50_000,
            max_unauthenticated: 1024,
            hello_timeout_ms: 5_000,
            listen_backlog: 4096,
            max_http_connections: 4096,
            http_header_timeout_ms: 10_000,
            max_frame_bytes: 1024 * 1024,
            max_subscriptions: 1024,
            max_patterns_per_sub: 256,
            max_retained: 500_000,
            max_pending_requests: 1024,
            claim_grace_ms: 30_000,
            max_bad_frames: 10,
            outbound_queue_bytes: 64 * 1024 * 1024,
            write_timeout_ms: 10_000,
            snapshot_rate_bytes: 64 * 1024 * 1024,
            ping_interval_ms: 15_000,
            idle_timeout_ms: 45_000,
            request_timeout_ms: 10_000,
            max_request_timeout_ms: 120_000,
            tokens: Vec::new(),
            data_dir: None,
            history_days: 90,
            journal_flush_ms: 200,
            journal_queue: 262_144,
            journal_max_bytes: 0,
            groups: Default::default(),
            group_concurrency: 32,
            scenes: Default::default(),
            alerts: Default::default(),
            schedules: Default::default(),
            mqtt: None,
            cluster: None,
            mdns: false,
            tls: None,
            webhook_timeout_ms: 5_000,
            webhook_ca: None,
        }
    }
}

/// A configuration that cannot be used.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this struct.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// Why, with line and column, on one line.
        message: String,
    },
    /// A value is out of range.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// Which field and why.
        message: String,
    },
}

/// Largest configuration file read: a configuration is text, and a path
/// pointing at something endless (`/dev/zero`) must not eat the memory.
pub const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// Reads a configuration file, refusing one over [`MAX_CONFIG_BYTES`].
pub fn read_config_file(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(MAX_CONFIG_BYTES + 1)
        .read_to_string(&mut text)?;
    if text.len() as u64 > MAX_CONFIG_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "larger than {} KiB; a configuration file is short text",
                MAX_CONFIG_BYTES / 1024
            ),
        ));
    }
    Ok(text)
}

impl HubConfig {
    /// Reads and checks a TOML file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let name = path.display().to_string();
        let text = read_config_file(path).map_err(|source| ConfigError::Read {
            path: name.clone(),
            source,
        })?;
        Self::from_toml(&text, &name)
    }

    /// Parses and checks TOML text; `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let cfg: HubConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_owned(),
            message: toml_error_line(text, &e),
        })?;
        cfg.check().map_err(|message| ConfigError::Invalid {
            path: origin.to_owned(),
            message,
        })?;
        Ok(cfg)
    }

    /// Checks ranges and relations between fields.
    pub fn check(&self) -> Result<(), String> {
        let positive = [
            ("max_connections", self.max_connections as u64),
            ("max_unauthenticated", self.max_unauthenticated as u64),
            ("hello_timeout_ms", self.hello_timeout_ms),
            ("listen_backlog", u64::from(self.listen_backlog)),
            ("max_http_connections", self.max_http_connections as u64),
            ("http_header_timeout_ms", self.http_header_timeout_ms),
            ("max_patterns_per_sub", self.max_patterns_per_sub as u64),
            ("max_retained", self.max_retained as u64),
            ("max_pending_requests", self.max_pending_requests as u64),
            ("write_timeout_ms", self.write_timeout_ms),
            ("snapshot_rate_bytes", self.snapshot_rate_bytes),
            ("max_frame_bytes", self.max_frame_bytes as u64),
            ("max_subscriptions", self.max_subscriptions as u64),
            ("max_bad_frames", u64::from(self.max_bad_frames)),
            ("outbound_queue_bytes", self.outbound_queue_bytes as u64),
            ("http_body_limit", self.http_body_limit as u64),
            ("ping_interval_ms", self.ping_interval_ms),
            ("request_timeout_ms", self.request_timeout_ms),
            ("history_days", u64::from(self.history_days)),
            ("journal_flush_ms", self.journal_flush_ms),
            ("journal_queue", self.journal_queue as u64),
            ("group_concurrency", self.group_concurrency as u64),
            ("webhook_timeout_ms", self.webhook_timeout_ms),
        ];
        if let Some((field, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(format!("`{field}` must be greater than 0"));
        }
        if self.idle_timeout_ms <= self.ping_interval_ms {
            return Err(format!(
                "`idle_timeout_ms` ({}) must be greater than `ping_interval_ms` ({})",
                self.idle_timeout_ms, self.ping_interval_ms
            ));
        }
        for (name, spec) in &self.groups {
            if !crate::automation::groups::valid_name(name) {
                return Err(format!(
                    "groups.{name}: a group name is 1 to 64 letters, digits, `-`, `_` or `.`"
                ));
            }
            spec.check().map_err(|e| format!("groups.{name}: {e}"))?;
        }
        let known_group = |g: &str| self.groups.contains_key(g);
        for (name, scene) in &self.scenes {
            if !crate::automation::groups::valid_name(name) {
                return Err(format!(
                    "scenes.{name}: a scene name is 1 to 64 letters, digits, `-`, `_` or `.`"
                ));
            }
            scene
                .check(&known_group)
                .map_err(|e| format!("scenes.{name}: {e}"))?;
        }
        let known_scene = |s: &str| self.scenes.contains_key(s);
        for (name, schedule) in &self.schedules {
            if !crate::automation::groups::valid_name(name) {
                return Err(format!(
                    "schedules.{name}: a schedule name is 1 to 64 letters, digits, `-`, `_` or `.`"
                ));
            }
            schedule
                .check(&known_scene, &known_group)
                .map_err(|e| format!("schedules.{name}: {e}"))?;
        }
        if let Some(m) = &self.mqtt {
            m.check().map_err(|e| format!("mqtt: {e}"))?;
        }
        if let Some(c) = &self.cluster {
            c.check().map_err(|e| format!("cluster: {e}"))?;
        }
        if let Some(t) = &self.tls {
            t.check().map_err(|e| format!("tls: {e}"))?;
        }
        if let Some(ca) = &self.webhook_ca {
            patchbay_client::tls::load_roots(ca).map_err(|e| format!("webhook_ca: {e}"))?;
        }
        for (name, rule) in &self.alerts {
            if !crate::automation::groups::valid_name(name) {
                return Err(format!(
                    "alerts.{name}: a rule name is 1 to 64 letters, digits, `-`, `_` or `.`"
                ));
            }
            rule.check(&known_group)
                .map_err(|e| format!("alerts.{name}: {e}"))?;
        }
        for (i, t) in self.tokens.iter().enumerate() {
            if t.token.len() < 8 {
                return Err(format!(
                    "tokens[{i}]: `token` must be at least 8 characters"
                ));
            }
            if t.role != Role::Agent && !t.claims.is_empty() {
                return Err(format!(
                    "tokens[{i}]: only `agent` tokens may list `claims`"
                ));
            }
            for c in &t.claims {
                crate::tag::validate_tag(c).map_err(|e| format!("tokens[{i}].claims: {e}"))?;
                if let Some(own) = crate::server::HUB_PREFIXES
                    .iter()
                    .find(|p| crate::tag::is_under(c, p) || crate::tag::is_under(p, c))
                {
                    return Err(format!(
                        "tokens[{i}].claims: `{c}` overlaps `{own}`, the hub's own tags"
                    ));
                }
            }
            for (list, rules) in [("read", &t.read), ("write", &t.write), ("deny", &t.deny)] {
                for r in rules {
                    crate::access::check_rule(r).map_err(|e| format!("tokens[{i}].{list}: {e}"))?;
                }
            }
            if let Some(j) = self.tokens[..i].iter().position(|o| o.token == t.token) {
                return Err(format!("tokens[{i}] repeats the secret of tokens[{j}]"));
            }
            if let Some(n) = &t.name {
                if self.tokens[..i].iter().any(|o| o.name.as_ref() == Some(n)) {
                    return Err(format!("tokens[{i}]: the name `{n}` is used twice"));
                }
            }
            // A prefix reserved for two tokens would have no single owner.
            for (j, o) in self.tokens[..i].iter().enumerate() {
                for c in &t.claims {
                    if let Some(x) = o
                        .claims
                        .iter()
                        .find(|x| crate::tag::is_under(c, x) || crate::tag::is_under(x, c))
                    {
                        return Err(format!(
                            "tokens[{i}].claims: `{c}` overlaps `{x}` in tokens[{j}].claims; each prefix may belong to one token"
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// The token matching `presented`, with its index. Every configured
    /// token is compared in full, in constant time, so timing does not tell
    /// how much of a guess was right.
    pub fn find_token(&self, presented: &str) -> Option<(usize, &TokenConfig)> {
        let mut found = None;
        for (i, t) in self.tokens.iter().enumerate() {
            if constant_time_eq(t.token.as_bytes(), presented.as_bytes()) {
                found = Some((i, t));
            }
        }
        found
    }

    /// Refuses to listen beyond loopback with no tokens configured (anyone
    /// who can reach the hub could control every device) unless `insecure`.
    pub fn check_exposure(&self, insecure: bool) -> Result<(), String> {
        for addr in [self.listen, self.http_listen] {
            if !self.auth_required() && !addr.ip().is_loopback() && !insecure {
                return Err(format!(
                    "refusing to listen on {addr} with no tokens configured: anyone who can reach it could control every device. \
                     Add [[tokens]] to the config, listen on a loopback address, or pass --insecure"
                ));
            }
        }
        Ok(())
    }

    /// The journal's settings, when `data_dir` is set.
    pub fn journal(&self) -> Option<crate::journal::JournalConfig> {
        Some(crate::journal::JournalConfig {
            dir: self.data_dir.clone()?,
            history_days: self.history_days,
            flush: Duration::from_millis(self.journal_flush_ms),
            queue: self.journal_queue,
            max_bytes: self.journal_max_bytes,
        })
    }

    /// Write timeout as a duration.
    pub fn write_timeout(&self) -> Duration {
        Duration::from_millis(self.write_timeout_ms)
    }

    /// Hello timeout as a duration.
    pub fn hello_timeout(&self) -> Duration {
        Duration::from_millis(self.hello_timeout_ms)
    }

    /// How many file descriptors these limits may need at once.
    pub fn descriptors_needed(&self) -> u64 {
        // With TLS, handshakes under way are bounded apart from sessions waiting for `hello`.
        let handshakes = if self.tls.is_some() {
            self.max_unauthenticated
        } else {
            0
        };
        (self.max_connections + self.max_unauthenticated + handshakes + self.max_http_connections)
            as u64
            + 64
    }

    /// Ping interval as a duration.
    pub fn ping_interval(&self) -> Duration {
        Duration::from_millis(self.ping_interval_ms)
    }

    /// Idle timeout as a duration.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }

    /// Does this configuration need a token from every client?
    pub fn auth_required(&self) -> bool {
        !self.tokens.is_empty()
    }
}

/// Compares two byte strings in time that depends only on their lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u8::from(a.len() != b.len());
    for (i, x) in a.iter().enumerate() {
        diff |= x ^ b.get(i).copied().unwrap_or(!x);
    }
    diff == 0
}

/// A TOML error on one line, with where: `invalid type: string "big",
/// expected usize (line 1, column 19: `max_frame_bytes = "big"`)`.
pub fn toml_error_line(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim().replace('\n', " ");
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            let source = text.lines().nth(line - 1).unwrap_or_default().trim();
            format!("{message} (line {line}, column {column}: `{source}`)")
        }
        None => message,
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_config_file_past_the_size_limit_is_refused_without_reading_it_all() {
        let dir = std::env::temp_dir().join(format!("patchbay-config-size-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let big = dir.join("big.toml");
        std::fs::write(&big, "#".repeat(MAX_CONFIG_BYTES as usize + 1)).unwrap();
        let e = read_config_file(&big).unwrap_err();
        assert!(e.to_string().contains("larger than 1024 KiB"), "{e}");
        // Something endless is cut off at the limit, not read to the end.
        let e = read_config_file(Path::new("/dev/zero")).unwrap_err();
        assert!(e.to_string().contains("larger than"), "{e}");
        let ok = dir.join("ok.toml");
        std::fs::write(&ok, "max_connections = 10\n").unwrap();
        assert_eq!(read_config_file(&ok).unwrap(), "max_connections = 10\n");
        let _ = std::fs::remove_dir_all(&dir);
    }
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        let c = HubConfig::from_toml("", "t.toml").unwrap();
        assert_eq!(c.listen.port(), 7400);
        assert!(c.listen.ip().is_loopback());
        assert!(!c.auth_required());
    }

    #[test]
    fn errors_name_file_and_field() {
        let e = HubConfig::from_toml("max_conections = 3", "hub.toml")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("hub.toml:") && e.contains("unknown field `max_conections`"),
            "{e}"
        );
        let e = HubConfig::from_toml("max_frame_bytes = 0", "hub.toml")
            .unwrap_err()
            .to_string();
        assert_eq!(e, "hub.toml: `max_frame_bytes` must be greater than 0");
        let e = HubConfig::from_toml(
            "[[tokens]]\ntoken = \"viewer-secret\"\nrole = \"viewer\"\nclaims = [\"dev\"]\n",
            "hub.toml",
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            "hub.toml: tokens[0]: only `agent` tokens may list `claims`"
        );
        let e = HubConfig::from_toml(
            "[[tokens]]\ntoken = \"agent-one-secret\"\nrole = \"agent\"\nclaims = [\"dev/p1\"]\n\
             [[tokens]]\ntoken = \"agent-two-secret\"\nrole = \"agent\"\nclaims = [\"dev\"]\n",
            "hub.toml",
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            "hub.toml: tokens[1].claims: `dev` overlaps `dev/p1` in tokens[0].claims; each prefix may belong to one token"
        );
    }

    #[test]
    fn tokens_compare_in_full() {
        assert!(constant_time_eq(b"secret-1", b"secret-1"));
        assert!(!constant_time_eq(b"secret-1", b"secret-2"));
        assert!(!constant_time_eq(b"secret-1", b"secret-12"));
        assert!(!constant_time_eq(b"secret-12", b"secret-1"));
        assert!(!constant_time_eq(b"", b"x"));
        let c = HubConfig::from_toml(
            "[[tokens]]\ntoken = \"viewer-secret\"\nrole = \"viewer\"\n[[tokens]]\ntoken = \"operator-secret\"\nrole = \"operator\"\n",
            "t.toml",
        )
        .unwrap();
        assert_eq!(c.find_token("operator-secret").map(|(i, _)| i), Some(1));
        assert!(c.find_token("operator-secre").is_none());
    }
}
