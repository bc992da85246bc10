//! Finding a hub on the LAN: the hub advertises `_patchbay._tcp` (its wire
//! port, with TXT `version`, `api`, `console` and, with TLS, `tls=1`) and
//! `_http._tcp` (`_https._tcp` with TLS: its console) over mDNS/DNS-SD; `patchbay --hub auto` and an agent's
//! `hub = "auto"` browse for the first.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use mdns_sd::{IfKind, ServiceDaemon, ServiceEvent, ServiceInfo};

/// The wire protocol's service type.
pub const SERVICE: &str = "_patchbay._tcp.local.";

/// The console's service type.
pub const HTTP_SERVICE: &str = "_http._tcp.local.";

/// The console's service type when the hub speaks TLS.
pub const HTTPS_SERVICE: &str = "_https._tcp.local.";

/// Why advertising or finding failed.
#[derive(Debug, thiserror::Error)]
pub enum MdnsError {
    /// The mDNS daemon could not start or take the request.
    #[error("mDNS: {0}")]
    Daemon(#[from] mdns_sd::Error),
    /// Nothing answered in time.
    #[error("no patchbay hub answered on the LAN (mDNS `_patchbay._tcp`) within {0:?}")]
    NotFound(Duration),
}

/// The instance name: `patchbay on <host>`, cut to DNS-SD's 63 bytes.
fn instance_name(host: &str) -> String {
    let mut name = format!("patchbay on {host}");
    while name.len() > 63 {
        name.pop();
    }
    name
}

/// The records a hub advertises for its wire listener `wire` and HTTP
/// listener `http`, on host `host`; `tls` when both speak TLS.
pub fn records(
    host: &str,
    wire: SocketAddr,
    http: SocketAddr,
    tls: bool,
) -> Result<Vec<ServiceInfo>, MdnsError> {
    let instance = instance_name(host);
    let hostname = format!("{host}.local.");
    let addrs: Vec<IpAddr> = [wire.ip(), http.ip()]
        .into_iter()
        .filter(|ip| !ip.is_unspecified())
        .collect();
    let api_host = if http.ip().is_unspecified() {
        hostname.trim_end_matches('.').to_owned()
    } else {
        http.ip().to_string()
    };
    let mut txt = HashMap::new();
    txt.insert("version".to_owned(), env!("CARGO_PKG_VERSION").to_owned());
    let scheme = if tls { "https" } else { "http" };
    txt.insert(
        "api".to_owned(),
        format!("{scheme}://{api_host}:{}/api", http.port()),
    );
    txt.insert("console".to_owned(), "/".to_owned());
    if tls {
        txt.insert("tls".to_owned(), "1".to_owned());
    }
    let mut out = Vec::new();
    for (ty, port, props) in [
        (SERVICE, wire.port(), txt.clone()),
        (
            if tls { HTTPS_SERVICE } else { HTTP_SERVICE },
            http.port(),
            HashMap::from([("path".to_owned(), "/".to_owned())]),
        ),
    ] {
        let info = ServiceInfo::new(ty, &instance, &hostname, &addrs[..], port, props)?;
        // With no fixed address (listening on all), every interface's.
        out.push(if addrs.is_empty() {
            info.enable_addr_auto()
        } else {
            info
        });
    }
    Ok(out)
}

/// A running advertisement; dropping it withdraws it.
pub struct Advert {
    daemon: ServiceDaemon,
    names: Vec<String>,
}

impl Drop for Advert {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = self.daemon.unregister(n);
        }
        let _ = self.daemon.shutdown();
    }
}

/// Starts a daemon, on loopback too when `loopback` (a hub listening there).
fn daemon(loopback: bool) -> Result<ServiceDaemon, MdnsError> {
    let d = ServiceDaemon::new()?;
    if loopback {
        d.enable_interface(vec![IfKind::LoopbackV4])?;
    }
    Ok(d)
}

/// Advertises the hub listening on `wire` and `http`.
pub fn advertise(wire: SocketAddr, http: SocketAddr, tls: bool) -> Result<Advert, MdnsError> {
    let d = daemon(wire.ip().is_loopback())?;
    let host = hostname();
    let mut names = Vec::new();
    for info in records(&host, wire, http, tls)? {
        names.push(info.get_fullname().to_owned());
        d.register(info)?;
    }
    tracing::info!(service = SERVICE, host = %host, "advertised on the LAN (mDNS)");
    Ok(Advert { daemon: d, names })
}

/// A hub found on the LAN.
#[derive(Debug, Clone)]
pub struct Found {
    /// Its wire-protocol address.
    pub wire: SocketAddr,
    /// Its HTTP API's URL, from the TXT record.
    pub api: Option<String>,
    /// Its version, from the TXT record.
    pub version: Option<String>,
    /// Whether it speaks TLS, from the TXT record.
    pub tls: bool,
}

/// Browses for a hub for up to `wait`; `loopback` also looks on 127.0.0.1.
pub fn find(wait: Duration, loopback: bool) -> Result<Found, MdnsError> {
    let d = daemon(loopback)?;
    let rx = d.browse(SERVICE)?;
    let deadline = std::time::Instant::now() + wait;
    let found = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(ServiceEvent::ServiceResolved(info)) => {
                let ip = info
                    .get_addresses()
                    .iter()
                    .find(|ip| ip.is_ipv4())
                    .or_else(|| info.get_addresses().iter().next())
                    .copied();
                if let Some(ip) = ip {
                    break Some(Found {
                        wire: SocketAddr::new(ip, info.get_port()),
                        api: info.get_property_val_str("api").map(str::to_owned),
                        version: info.get_property_val_str("version").map(str::to_owned),
                        tls: info.get_property_val_str("tls") == Some("1"),
                    });
                }
            }
            Ok(_) => {}
            Err(_) => break None,
        }
    };
    let _ = d.shutdown();
    found.ok_or(MdnsError::NotFound(wait))
}

/// This machine's host name (for the records), or `patchbay`.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
        .unwrap_or_else(|| "patchbay".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_records_name_the_ports_version_and_api() {
        let wire: SocketAddr = "192.168.1.5:7400".parse().unwrap();
        let http: SocketAddr = "192.168.1.5:8080".parse().unwrap();
        let r = records("av-hub", wire, http, false).unwrap();
        let hub = &r[0];
        assert_eq!(hub.get_type(), SERVICE);
        assert_eq!(
            hub.get_fullname(),
            "patchbay on av-hub._patchbay._tcp.local."
        );
        assert_eq!(hub.get_hostname(), "av-hub.local.");
        assert_eq!(hub.get_port(), 7400);
        assert_eq!(
            hub.get_property_val_str("version"),
            Some(env!("CARGO_PKG_VERSION"))
        );
        assert_eq!(
            hub.get_property_val_str("api"),
            Some("http://192.168.1.5:8080/api")
        );
        assert_eq!(hub.get_property_val_str("console"), Some("/"));
        assert!(hub
            .get_addresses()
            .contains(&"192.168.1.5".parse::<IpAddr>().unwrap()));
        let web = &r[1];
        assert_eq!(web.get_type(), HTTP_SERVICE);
        assert_eq!(web.get_port(), 8080);
        // Listening on every interface: the host's addresses, found at run time.
        let any = records(
            "av-hub",
            "0.0.0.0:7400".parse().unwrap(),
            "0.0.0.0:8080".parse().unwrap(),
            false,
        )
        .unwrap();
        assert!(any[0].is_addr_auto());
        assert_eq!(
            any[0].get_property_val_str("api"),
            Some("http://av-hub.local:8080/api")
        );
        assert_eq!(hub.get_property_val_str("tls"), None);
        assert_eq!(instance_name(&"h".repeat(100)).len(), 63);
        // With TLS: https, `tls=1`, and the console as `_https._tcp`.
        let tls = records("av-hub", wire, http, true).unwrap();
        assert_eq!(
            tls[0].get_property_val_str("api"),
            Some("https://192.168.1.5:8080/api")
        );
        assert_eq!(tls[0].get_property_val_str("tls"), Some("1"));
        assert_eq!(tls[1].get_type(), HTTPS_SERVICE);
    }
}
