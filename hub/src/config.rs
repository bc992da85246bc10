//! Hub configuration: a typed struct read from TOML, every field defaulted.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;

/// Default HTTP port.
pub const DEFAULT_HTTP_PORT: u16 = 8080;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything an operator may, plus claiming the prefixes listed for its token.
    Agent,
    /// Subscribe, publish and send requests.
    Operator,
    /// Subscribe only.
    Viewer,
}

impl Role {
    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Agent => "agent",
            Role::Operator => "operator",
            Role::Viewer => "viewer",
        }
    }
}

/// One configured token.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// The secret a client presents in `hello`.
    pub token: String,
    /// The role it grants.
    pub role: Role,
    /// For agents: the tag prefixes the token may claim (a prefix allows its whole subtree).
    #[serde(default)]
    pub claims: Vec<String>,
}

/// The hub's settings. Every field has a default; see README.md for the table.
#[derive(Debug, Clone, Deserialize)]
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
    /// Most simultaneous connections; one more gets `err max_connections`.
    pub max_connections: usize,
    /// Longest accepted frame (one line), in bytes.
    pub max_frame_bytes: usize,
    /// Most subscription patterns one connection may hold.
    pub max_subscriptions: usize,
    /// Bad frames in a row after which the hub closes the connection.
    pub max_bad_frames: u32,
    /// Bytes of non-retained messages queued for one connection before it is dropped as a slow consumer.
    pub outbound_queue_bytes: usize,
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
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], crate::protocol::DEFAULT_PORT)),
            http_listen: SocketAddr::from(([127, 0, 0, 1], DEFAULT_HTTP_PORT)),
            cors_origins: Vec::new(),
            http_body_limit: 64 * 1024,
            max_connections: 10_000,
            max_frame_bytes: 1024 * 1024,
            max_subscriptions: 1024,
            max_bad_frames: 10,
            outbound_queue_bytes: 8 * 1024 * 1024,
            ping_interval_ms: 15_000,
            idle_timeout_ms: 45_000,
            request_timeout_ms: 10_000,
            max_request_timeout_ms: 120_000,
            tokens: Vec::new(),
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
    #[error("{path}: {source}")]
    Parse {
        /// The file.
        path: String,
        /// Why, with line and column.
        source: toml::de::Error,
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

impl HubConfig {
    /// Reads and checks a TOML file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: name.clone(),
            source,
        })?;
        Self::from_toml(&text, &name)
    }

    /// Parses and checks TOML text; `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let cfg: HubConfig = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: origin.to_owned(),
            source,
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
            ("max_frame_bytes", self.max_frame_bytes as u64),
            ("max_subscriptions", self.max_subscriptions as u64),
            ("max_bad_frames", u64::from(self.max_bad_frames)),
            ("outbound_queue_bytes", self.outbound_queue_bytes as u64),
            ("http_body_limit", self.http_body_limit as u64),
            ("ping_interval_ms", self.ping_interval_ms),
            ("request_timeout_ms", self.request_timeout_ms),
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
            }
        }
        Ok(())
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

#[cfg(test)]
mod tests {
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
    }
}
