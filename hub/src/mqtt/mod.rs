//! The MQTT bridge: every device on an MQTT broker, with Home Assistant
//! discovery, the way Zigbee2MQTT does it.
//!
//! The bridge is a client of the hub (its own connection, like automation's)
//! subscribed with a snapshot to every device, and a client of the broker
//! (`rumqttc`). It publishes retained `<base>/<id>/state` and
//! `<base>/<id>/online`, events on `<base>/<id>/event`, its own
//! `<base>/bridge/state` (also its last will), and discovery configs; it
//! takes commands on `<base>/<id>/set` (a JSON object) and
//! `<base>/<id>/set/<setting>` (a plain value), sends them as device
//! commands to the owning agent, and publishes failures on
//! `<base>/<id>/error` with the command's correlation id.

pub mod bridge;
pub mod discovery;

use serde::{Deserialize, Serialize};

/// `[mqtt]` in the hub config.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// The broker: `mqtt://host[:port]` (port 1883 by default).
    pub url: String,
    /// The first level of every topic the bridge publishes and reads.
    pub base_topic: String,
    /// Home Assistant's discovery prefix.
    pub discovery_prefix: String,
    /// Publish Home Assistant discovery configs.
    pub discovery: bool,
    /// Broker user name.
    pub username: Option<String>,
    /// Broker password.
    pub password: Option<String>,
    /// The MQTT client id (unique per broker).
    pub client_id: String,
    /// MQTT keep-alive, in seconds.
    pub keep_alive_s: u64,
    /// With `mqtts://`: CA certificates (PEM) the broker's certificate must chain to; none: the system's.
    pub ca: Option<std::path::PathBuf>,
    /// With `mqtts://`: a client certificate (PEM), for brokers that require one.
    pub client_cert: Option<std::path::PathBuf>,
    /// The client certificate's private key (PEM).
    pub client_key: Option<std::path::PathBuf>,
}

/// How the bridge is doing, for `/healthz`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct MqttStatus {
    /// The broker, `host:port`.
    pub broker: String,
    /// Connected to the broker now.
    pub connected: bool,
    /// Since when (Unix ms) it has been connected, or not.
    pub since_ms: u64,
    /// Why the last connection failed or was lost, while not connected.
    pub error: Option<String>,
}

/// Where the broker is and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broker {
    /// Host name or address.
    pub host: String,
    /// Port (1883, or 8883 with TLS, by default).
    pub port: u16,
    /// Over TLS (`mqtts://`).
    pub tls: bool,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            url: "mqtt://127.0.0.1:1883".into(),
            base_topic: "patchbay".into(),
            discovery_prefix: "homeassistant".into(),
            discovery: true,
            username: None,
            password: None,
            client_id: "patchbay-hub".into(),
            keep_alive_s: 30,
            ca: None,
            client_cert: None,
            client_key: None,
        }
    }
}

impl MqttConfig {
    /// The broker's address, or why the URL is not one.
    pub fn broker(&self) -> Result<Broker, String> {
        let (rest, tls) = if let Some(r) = self.url.strip_prefix("mqtt://") {
            (r, false)
        } else if let Some(r) = self.url.strip_prefix("mqtts://") {
            (r, true)
        } else {
            return Err(format!(
                "`{}` is not an `mqtt://host[:port]` or `mqtts://host[:port]` URL",
                self.url
            ));
        };
        let rest = rest.trim_end_matches('/');
        let default_port = if tls { 8883 } else { 1883 };
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
                h,
                p.parse::<u16>()
                    .map_err(|_| format!("`{}`: the port is not a number", self.url))?,
            ),
            _ => (rest, default_port),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("`{}` names no host", self.url));
        }
        Ok(Broker {
            host: host.to_owned(),
            port,
            tls,
        })
    }

    /// The TLS configuration for an `mqtts://` broker, its files read now.
    pub fn tls(&self) -> Result<std::sync::Arc<patchbay_client::tls::ClientConfig>, String> {
        if self.client_cert.is_some() != self.client_key.is_some() {
            return Err("`client_cert` and `client_key` go together".into());
        }
        patchbay_client::tls::TlsOptions {
            ca: self.ca.clone(),
            cert: self.client_cert.clone(),
            key: self.client_key.clone(),
        }
        .client_config()
        .map_err(|e| e.to_string())
    }

    /// Checks the section.
    pub fn check(&self) -> Result<(), String> {
        if self.broker()?.tls {
            self.tls()?;
        } else if self.ca.is_some() || self.client_cert.is_some() {
            return Err(format!(
                "`ca` and `client_cert` are for TLS: use an `mqtts://` URL, not `{}`",
                self.url
            ));
        }
        for (name, topic) in [
            ("base_topic", &self.base_topic),
            ("discovery_prefix", &self.discovery_prefix),
        ] {
            if topic.is_empty()
                || topic.contains(['+', '#', '\0'])
                || topic.starts_with('/')
                || topic.ends_with('/')
            {
                return Err(format!(
                    "`{name}` = {topic:?}: a topic prefix without `+`, `#` or a leading or trailing `/`"
                ));
            }
        }
        if self.client_id.is_empty() || self.client_id.len() > 64 {
            return Err("`client_id` is 1 to 64 characters".into());
        }
        if self.keep_alive_s < 5 {
            return Err("`keep_alive_s` is at least 5".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(u: &str) -> Result<(String, u16, bool), String> {
        MqttConfig {
            url: u.into(),
            ..MqttConfig::default()
        }
        .broker()
        .map(|b| (b.host, b.port, b.tls))
    }

    #[test]
    fn broker_urls_are_read_or_refused_with_the_reason() {
        assert_eq!(url("mqtt://broker"), Ok(("broker".into(), 1883, false)));
        assert_eq!(
            url("mqtt://10.0.0.2:1884/"),
            Ok(("10.0.0.2".into(), 1884, false))
        );
        assert_eq!(url("mqtt://[::1]:1885"), Ok(("::1".into(), 1885, false)));
        assert_eq!(url("mqtts://broker"), Ok(("broker".into(), 8883, true)));
        assert_eq!(url("mqtts://broker:443"), Ok(("broker".into(), 443, true)));
        assert!(url("http://broker").unwrap_err().contains("mqtt://"));
        assert!(url("mqtt://broker:x").unwrap_err().contains("port"));
        assert!(url("mqtt://").unwrap_err().contains("no host"));
    }
}
