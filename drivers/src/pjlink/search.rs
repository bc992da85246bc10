//! PJLink class 2 search: `%2SRCH` sent over UDP (to the broadcast address,
//! port 4352), each class 2 projector answering `%2ACKN=<MAC>`; then each
//! one that answered is asked its name and class over TCP. Class 1
//! projectors do not take part in the search.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;
use tokio::net::UdpSocket;

use super::{Pjlink, PjlinkOptions};
use crate::Transport;

/// The search request, as the standard writes it.
pub const SEARCH: &[u8] = b"%2SRCH\r";

/// The MAC address in a `%2ACKN=xx:xx:xx:xx:xx:xx` answer (a trailing CR
/// or CR LF allowed, hex in either case), written in lower case.
pub fn parse_ackn(datagram: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(datagram).ok()?;
    let text = text.trim_end_matches(['\r', '\n']);
    let head = text.get(..7)?;
    if !head.eq_ignore_ascii_case("%2ACKN=") {
        return None;
    }
    let mac = &text[7..];
    let parts: Vec<&str> = mac.split(':').collect();
    let valid = parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()));
    valid.then(|| mac.to_ascii_lowercase())
}

/// The `%2ACKN` answer for `mac`.
pub fn ackn(mac: &str) -> String {
    format!("%2ACKN={}\r", mac.to_ascii_uppercase())
}

/// Errors of a search.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    /// The UDP socket could not be bound.
    #[error("cannot bind {addr} for the search: {source} (the standard answers to port 4352, which another program may hold; try --bind 0.0.0.0:0)")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The search request could not be sent.
    #[error("cannot send the search to {to}: {source}")]
    Send {
        /// Where to.
        to: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// Sends `%2SRCH` to `to` from `bind` and collects the answers for `wait`:
/// each answering address with its MAC. A search sent to one projector
/// (not a broadcast address) ends at its answer.
pub async fn search(
    to: SocketAddr,
    bind: SocketAddr,
    wait: Duration,
) -> Result<BTreeMap<SocketAddr, String>, SearchError> {
    let socket = UdpSocket::bind(bind)
        .await
        .map_err(|source| SearchError::Bind { addr: bind, source })?;
    socket
        .set_broadcast(true)
        .map_err(|source| SearchError::Bind { addr: bind, source })?;
    socket
        .send_to(SEARCH, to)
        .await
        .map_err(|source| SearchError::Send { to, source })?;
    let unicast = !is_broadcast(to);
    let mut found = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + wait;
    let mut buf = [0u8; 512];
    loop {
        let received = tokio::time::timeout_at(deadline, socket.recv_from(&mut buf)).await;
        let Ok(Ok((n, from))) = received else {
            break; // the wait is over (or the socket failed: what was found stands)
        };
        match parse_ackn(&buf[..n]) {
            Some(mac) => {
                found.insert(from, mac);
                if unicast && from.ip() == to.ip() {
                    break;
                }
            }
            None => {
                tracing::debug!(%from, "not a PJLink search answer: {:?}", String::from_utf8_lossy(&buf[..n]))
            }
        }
    }
    Ok(found)
}

fn is_broadcast(to: SocketAddr) -> bool {
    match to.ip() {
        std::net::IpAddr::V4(v4) => v4.is_broadcast() || v4.octets()[3] == 255,
        std::net::IpAddr::V6(v6) => v6.is_multicast(),
    }
}

/// A projector the search found.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Found {
    /// Its PJLink TCP address (the answering IP, the searched port).
    pub address: String,
    /// Its MAC address, from the answer.
    pub mac: String,
    /// Its name (`NAME ?`), when it could be read.
    pub name: Option<String>,
    /// Its class (`CLSS ?`), when it could be read.
    pub class: Option<u8>,
    /// Its manufacturer and model (`INF1 ?`, `INF2 ?`), when they could be read.
    pub model: Option<String>,
    /// Why something could not be read (a password, standby, no answer).
    pub note: Option<String>,
}

/// Asks the projector at `address` its name, class and model over TCP.
pub async fn identify(address: &str, mac: String, opts: PjlinkOptions) -> Found {
    let mut found = Found {
        address: address.to_owned(),
        mac,
        name: None,
        class: None,
        model: None,
        note: None,
    };
    let mut d = Pjlink::new(Transport::tcp(address), opts);
    let mut notes = Vec::new();
    // A projector that cannot be reached or wants a password says so at the first question.
    match d.command(1, "CLSS", "?").await {
        Ok(c) => found.class = Some(super::codec::parse_class(&c)),
        Err(e) => {
            found.note = Some(e.to_string());
            return found;
        }
    }
    found.name = ask(&mut d, &mut notes, "NAME").await;
    let maker = ask(&mut d, &mut notes, "INF1").await;
    let model = ask(&mut d, &mut notes, "INF2").await;
    found.model = match (maker, model) {
        (Some(a), Some(b)) => Some(format!("{a} {b}").trim().to_owned()),
        (a, b) => a.or(b),
    };
    d.disconnect();
    if !notes.is_empty() {
        found.note = Some(notes.join("; "));
    }
    found
}

async fn ask(d: &mut Pjlink, notes: &mut Vec<String>, cmd: &str) -> Option<String> {
    match d.command(1, cmd, "?").await {
        Ok(v) => Some(v),
        Err(e) => {
            notes.push(format!("{cmd}: {e}"));
            None
        }
    }
}

/// Searches and identifies every projector that answers; the TCP port is
/// the port the search was sent to (4352 by the standard).
pub async fn discover(
    to: SocketAddr,
    bind: SocketAddr,
    wait: Duration,
    opts: PjlinkOptions,
) -> Result<Vec<Found>, SearchError> {
    let answers = search(to, bind, wait).await?;
    let mut out = Vec::new();
    for (from, mac) in answers {
        let address = SocketAddr::new(from.ip(), to.port()).to_string();
        out.push(identify(&address, mac, opts.clone()).await);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_as_the_standard_writes_them_and_as_projectors_send_them() {
        assert_eq!(
            parse_ackn(b"%2ACKN=00:1A:2B:3C:4D:5E\r").as_deref(),
            Some("00:1a:2b:3c:4d:5e")
        );
        assert_eq!(
            parse_ackn(b"%2ackn=00:1a:2b:3c:4d:5e\r\n").as_deref(),
            Some("00:1a:2b:3c:4d:5e")
        );
        for bad in [
            &b"%2ACKN=00:1A:2B:3C:4D\r"[..],
            b"%2ACKN=00:1A:2B:3C:4D:5G\r",
            b"%1ACKN=00:1A:2B:3C:4D:5E\r",
            b"%2SRCH\r",
            b"",
            &[0xff, 0xfe],
        ] {
            assert_eq!(parse_ackn(bad), None, "{bad:?}");
        }
        assert_eq!(ackn("02:00:00:00:12:34"), "%2ACKN=02:00:00:00:12:34\r");
    }
}
