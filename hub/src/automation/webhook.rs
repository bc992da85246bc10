//! Posting alerts to a webhook: JSON over HTTP/1.1 (or HTTPS, trusting the
//! system's CAs or `webhook_ca`), with a timeout and retries, never holding
//! up the alert engine.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use patchbay_client::tls::ClientConfig;
use serde_json::Value;

/// Tries per delivery.
pub const ATTEMPTS: u32 = 4;

/// Deliveries under way at once; past it a delivery is dropped and logged.
const IN_FLIGHT: usize = 32;

/// Why one attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// The URL is not `http(s)://host[:port]/path`.
    #[error("`{0}` is not an http:// or https:// URL with a host")]
    Url(String),
    /// The receiver could not be reached or did not answer in time.
    #[error("{0}")]
    Transport(String),
    /// The receiver answered with an error status.
    #[error("the receiver answered {0}")]
    Status(u16),
}

/// Where a webhook URL points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `host:port`, to connect to and for the `Host` header.
    pub authority: String,
    /// The host alone, which an HTTPS receiver's certificate must name.
    pub host: String,
    /// The path (with its query).
    pub path: String,
    /// Over TLS (`https://`).
    pub tls: bool,
}

/// Reads a webhook URL.
pub fn parse_url(url: &str) -> Result<Target, WebhookError> {
    let (rest, tls) = if let Some(r) = url.strip_prefix("http://") {
        (r, false)
    } else if let Some(r) = url.strip_prefix("https://") {
        (r, true)
    } else {
        return Err(WebhookError::Url(url.to_owned()));
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() || authority.contains('@') {
        return Err(WebhookError::Url(url.to_owned()));
    }
    let has_port = match authority.rsplit_once(':') {
        Some((h, p)) => !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && !h.is_empty(),
        None => false,
    } && !authority.ends_with(']');
    let (host, authority) = if has_port {
        let (h, _) = authority.rsplit_once(':').expect("checked");
        (h.to_owned(), authority.to_owned())
    } else {
        let port = if tls { 443 } else { 80 };
        (authority.to_owned(), format!("{authority}:{port}"))
    };
    Ok(Target {
        authority,
        host: host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned(),
        path: path.to_owned(),
        tls,
    })
}

/// One POST of `body` to `url`, within `timeout`; `tls` for `https://`.
pub async fn post(
    url: &str,
    body: &Value,
    timeout: Duration,
    tls: &Result<Arc<ClientConfig>, String>,
) -> Result<(), WebhookError> {
    let target = parse_url(url)?;
    let authority = target.authority.as_str();
    let attempt = async {
        let stream = tokio::net::TcpStream::connect(authority)
            .await
            .map_err(|e| WebhookError::Transport(format!("cannot connect to {authority}: {e}")))?;
        if target.tls {
            let config = tls
                .as_ref()
                .map_err(|e| WebhookError::Transport(e.clone()))?;
            let name =
                patchbay_client::tls::server_name(&target.host).map_err(WebhookError::Transport)?;
            let stream = tokio_rustls::TlsConnector::from(config.clone())
                .connect(name, stream)
                .await
                .map_err(|e| {
                    WebhookError::Transport(format!("TLS with {authority} failed: {e}"))
                })?;
            send(stream, authority, &target.path, body).await
        } else {
            send(stream, authority, &target.path, body).await
        }
    };
    tokio::time::timeout(timeout, attempt).await.map_err(|_| {
        WebhookError::Transport(format!("no answer within {} ms", timeout.as_millis()))
    })?
}

/// Sends the request over an open connection and reads the answer.
async fn send<S>(stream: S, authority: &str, path: &str, body: &Value) -> Result<(), WebhookError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let io = hyper_util::rt::TokioIo::new(stream);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| WebhookError::Transport(e.to_string()))?;
    tokio::spawn(conn);
    let req = hyper::Request::post(path)
        .header(hyper::header::HOST, authority)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(
            hyper::header::USER_AGENT,
            concat!("patchbay-hub/", env!("CARGO_PKG_VERSION")),
        )
        .body(Full::new(Bytes::from(body.to_string())))
        .map_err(|e| WebhookError::Transport(e.to_string()))?;
    let res = sender
        .send_request(req)
        .await
        .map_err(|e| WebhookError::Transport(e.to_string()))?;
    let status = res.status();
    let _ = res.into_body().collect().await;
    if status.is_success() {
        Ok(())
    } else {
        Err(WebhookError::Status(status.as_u16()))
    }
}

/// The TLS configuration for `https://` webhooks: `ca`, or the system's CAs.
pub fn tls_config(ca: Option<&std::path::Path>) -> Result<Arc<ClientConfig>, String> {
    patchbay_client::tls::TlsOptions {
        ca: ca.map(std::path::Path::to_path_buf),
        ..Default::default()
    }
    .client_config()
    .map_err(|e| format!("https webhooks: {e}"))
}

/// Delivers in the background: up to [`ATTEMPTS`] tries, 1, 2, 4 s apart.
#[derive(Clone)]
pub struct Webhooks {
    limit: Arc<tokio::sync::Semaphore>,
    timeout: Duration,
    tls: Arc<Result<Arc<ClientConfig>, String>>,
}

impl Webhooks {
    /// Deliveries as `config` says: `webhook_timeout_ms` per attempt, `webhook_ca` for https.
    pub fn new(config: &crate::config::HubConfig) -> Self {
        Webhooks {
            limit: Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT)),
            timeout: Duration::from_millis(config.webhook_timeout_ms),
            tls: Arc::new(tls_config(config.webhook_ca.as_deref())),
        }
    }

    /// Sends `body` to `url` without waiting.
    pub fn send(&self, url: String, body: Value) {
        let Ok(permit) = self.limit.clone().try_acquire_owned() else {
            tracing::warn!(%url, "{IN_FLIGHT} webhook deliveries are under way; this one is dropped");
            return;
        };
        let timeout = self.timeout;
        let tls = self.tls.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let mut wait = Duration::from_secs(1);
            for attempt in 1..=ATTEMPTS {
                match post(&url, &body, timeout, &tls).await {
                    Ok(()) => return,
                    Err(e) if attempt == ATTEMPTS => {
                        tracing::error!(%url, attempts = ATTEMPTS, "webhook delivery failed: {e}");
                    }
                    Err(e) => {
                        tracing::warn!(%url, attempt, "webhook delivery failed, retrying: {e}");
                        tokio::time::sleep(wait).await;
                        wait *= 2;
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_http_or_https_with_a_host() {
        let t = parse_url("http://10.0.0.5:9000/hooks/av").unwrap();
        assert_eq!(
            (
                t.authority.as_str(),
                t.host.as_str(),
                t.path.as_str(),
                t.tls
            ),
            ("10.0.0.5:9000", "10.0.0.5", "/hooks/av", false)
        );
        let t = parse_url("http://alerts.example").unwrap();
        assert_eq!(
            (t.authority.as_str(), t.path.as_str()),
            ("alerts.example:80", "/")
        );
        let t = parse_url("https://alerts.example/x?y=1").unwrap();
        assert_eq!(
            (
                t.authority.as_str(),
                t.host.as_str(),
                t.path.as_str(),
                t.tls
            ),
            ("alerts.example:443", "alerts.example", "/x?y=1", true)
        );
        let t = parse_url("https://[::1]:8443/h").unwrap();
        assert_eq!(
            (t.authority.as_str(), t.host.as_str()),
            ("[::1]:8443", "::1")
        );
        assert!(parse_url("ftp://x").is_err());
        assert!(parse_url("http:///x").is_err());
        assert!(parse_url("https://user@host/x").is_err());
    }
}
