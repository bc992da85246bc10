//! Posting alerts to a webhook: JSON over HTTP/1.1, with a timeout and
//! retries, never holding up the alert engine.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::Value;

/// Tries per delivery.
pub const ATTEMPTS: u32 = 4;

/// Deliveries under way at once; past it a delivery is dropped and logged.
const IN_FLIGHT: usize = 32;

/// Why one attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// The URL is not `http://host[:port]/path`.
    #[error("`{0}` is not an http:// URL (https is not supported yet)")]
    Url(String),
    /// The receiver could not be reached or did not answer in time.
    #[error("{0}")]
    Transport(String),
    /// The receiver answered with an error status.
    #[error("the receiver answered {0}")]
    Status(u16),
}

/// Where a URL points: host:port and the path.
pub fn parse_url(url: &str) -> Result<(String, String), WebhookError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| WebhookError::Url(url.to_owned()))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(WebhookError::Url(url.to_owned()));
    }
    let authority = if authority.contains(':') {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    Ok((authority, path.to_owned()))
}

/// One POST of `body` to `url`, within `timeout`.
pub async fn post(url: &str, body: &Value, timeout: Duration) -> Result<(), WebhookError> {
    let (authority, path) = parse_url(url)?;
    let attempt = async {
        let stream = tokio::net::TcpStream::connect(&authority)
            .await
            .map_err(|e| WebhookError::Transport(format!("cannot connect to {authority}: {e}")))?;
        let io = hyper_util::rt::TokioIo::new(stream);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| WebhookError::Transport(e.to_string()))?;
        tokio::spawn(conn);
        let req = hyper::Request::post(path)
            .header(hyper::header::HOST, authority.as_str())
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
    };
    tokio::time::timeout(timeout, attempt).await.map_err(|_| {
        WebhookError::Transport(format!("no answer within {} ms", timeout.as_millis()))
    })?
}

/// Delivers in the background: up to [`ATTEMPTS`] tries, 1, 2, 4 s apart.
#[derive(Clone)]
pub struct Webhooks {
    limit: Arc<tokio::sync::Semaphore>,
    timeout: Duration,
}

impl Webhooks {
    /// Deliveries with `timeout` per attempt.
    pub fn new(timeout: Duration) -> Self {
        Webhooks {
            limit: Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT)),
            timeout,
        }
    }

    /// Sends `body` to `url` without waiting.
    pub fn send(&self, url: String, body: Value) {
        let Ok(permit) = self.limit.clone().try_acquire_owned() else {
            tracing::warn!(%url, "{IN_FLIGHT} webhook deliveries are under way; this one is dropped");
            return;
        };
        let timeout = self.timeout;
        tokio::spawn(async move {
            let _permit = permit;
            let mut wait = Duration::from_secs(1);
            for attempt in 1..=ATTEMPTS {
                match post(&url, &body, timeout).await {
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
    fn urls_are_http_with_a_host() {
        assert_eq!(
            parse_url("http://10.0.0.5:9000/hooks/av").unwrap(),
            ("10.0.0.5:9000".into(), "/hooks/av".into())
        );
        assert_eq!(
            parse_url("http://alerts.example").unwrap(),
            ("alerts.example:80".into(), "/".into())
        );
        assert!(parse_url("https://x")
            .unwrap_err()
            .to_string()
            .contains("https is not supported"));
        assert!(parse_url("http:///x").is_err());
    }
}
