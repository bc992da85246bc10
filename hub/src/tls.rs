//! TLS on the hub's ports (`[tls]`): the server's certificate and key,
//! optional client certificates on the wire port, the handshake with its
//! limits, and a clear answer to a client that speaks plain text to a TLS
//! port.
//!
//! The files are read at start and again at every reload, so a renewed
//! certificate takes effect without a restart (for new connections).

use std::collections::VecDeque;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use patchbay_client::tls::{load_certs, load_key, load_roots, provider, TlsError};
use rustls::pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// The first byte of every TLS connection (a handshake record).
const HANDSHAKE_RECORD: u8 = 0x16;

/// `[tls]` in the hub config.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The hub's certificate chain (PEM, the leaf first).
    pub cert: PathBuf,
    /// The certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA certificates (PEM) that sign client certificates. When set, every
    /// wire-protocol client must present a certificate signed by one of them
    /// (besides its token). The HTTP port does not ask for one.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// Time a client has to complete the TLS handshake, in milliseconds.
    #[serde(default = "default_handshake_timeout_ms")]
    pub handshake_timeout_ms: u64,
}

fn default_handshake_timeout_ms() -> u64 {
    10_000
}

impl TlsConfig {
    /// Checks the fields that do not need the files.
    pub fn check(&self) -> Result<(), String> {
        if self.handshake_timeout_ms == 0 {
            return Err("`handshake_timeout_ms` must be greater than 0".into());
        }
        Ok(())
    }

    /// The handshake timeout as a duration.
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }
}

/// The loaded TLS settings, shared by both listeners.
pub struct ServerTls {
    /// For the wire port (asks for client certificates when `client_ca` is set).
    wire: tokio_rustls::TlsAcceptor,
    /// For the HTTP port (never asks for one).
    http: tokio_rustls::TlsAcceptor,
    /// Whether wire clients must present a certificate.
    client_certs: bool,
    /// The hub's own certificate, which its automation trusts on its loopback connection.
    own: CertificateDer<'static>,
    /// How long a handshake may take.
    handshake_timeout: Duration,
    /// The CA certificates client certificates must chain to.
    client_roots: Vec<CertificateDer<'static>>,
    /// When the hub's certificate stops being valid (Unix seconds), if it could be read.
    not_after: Option<i64>,
    /// Why the hub's certificate is not valid now (expired, not yet valid).
    invalid_now: Option<String>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("client_certs", &self.client_certs)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Reads the files named in `cfg`.
    pub fn load(cfg: &TlsConfig) -> Result<Self, TlsError> {
        let chain = load_certs(&cfg.cert)?;
        let key = load_key(&cfg.key)?;
        let own = chain[0].clone();
        let server = |verifier: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>| {
            let builder = rustls::ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .map_err(|e| TlsError::Config(e.to_string()))?;
            let builder = match verifier {
                Some(v) => builder.with_client_cert_verifier(v),
                None => builder.with_no_client_auth(),
            };
            let mut config = builder
                .with_single_cert(chain.clone(), key.clone_key())
                .map_err(|e| {
                    TlsError::Config(format!(
                        "{} and {} do not make a server identity: {e}",
                        cfg.cert.display(),
                        cfg.key.display()
                    ))
                })?;
            config.alpn_protocols = Vec::new();
            Ok::<_, TlsError>(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
        };
        let mut client_roots = Vec::new();
        let verifier = match &cfg.client_ca {
            Some(path) => {
                client_roots = load_certs(path)?;
                let roots = load_roots(path)?;
                // Certificates are checked by rustls when presented; one that is
                // missing is refused by the session, which lets the hub's own
                // automation in on its token (see `Session::hello`).
                let v = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider(),
                )
                .allow_unauthenticated()
                .build()
                .map_err(|e| TlsError::Config(format!("{}: {e}", path.display())))?;
                Some(v)
            }
            None => None,
        };
        let validity = validity(&own);
        let now = chrono::Utc::now().timestamp();
        let invalid_now = match validity {
            Some((_, after)) if after < now => Some(format!(
                "{}: the certificate expired at {}",
                cfg.cert.display(),
                utc(after)
            )),
            Some((before, _)) if before > now => Some(format!(
                "{}: the certificate is not valid before {}",
                cfg.cert.display(),
                utc(before)
            )),
            _ => None,
        };
        Ok(ServerTls {
            wire: server(verifier)?,
            http: server(None)?,
            client_certs: cfg.client_ca.is_some(),
            own,
            handshake_timeout: cfg.handshake_timeout(),
            client_roots,
            not_after: validity.map(|(_, after)| after),
            invalid_now,
        })
    }

    /// Whether `other` trusts and presents the same as this one (what a reload reports).
    pub fn same_as(&self, other: &ServerTls) -> bool {
        self.own == other.own
            && self.client_roots == other.client_roots
            && self.client_certs == other.client_certs
    }

    /// When the hub's certificate stops being valid (Unix seconds).
    pub fn not_after(&self) -> Option<i64> {
        self.not_after
    }

    /// Why the hub's certificate is not valid now, if it is not.
    pub fn invalid_now(&self) -> Option<&str> {
        self.invalid_now.as_deref()
    }

    /// Whether wire clients must present a certificate.
    pub fn requires_client_certs(&self) -> bool {
        self.client_certs
    }

    /// The hub's own (leaf) certificate.
    pub fn own_certificate(&self) -> &CertificateDer<'static> {
        &self.own
    }

    /// Runs the server side of the handshake on `stream` for `port`, within
    /// the handshake timeout. A client that sends plain text first gets
    /// `plain_answer` in plain text and the connection is closed.
    pub async fn accept(
        &self,
        mut stream: TcpStream,
        port: Port,
    ) -> Result<Accepted, HandshakeError> {
        let timeout = self.handshake_timeout;
        let acceptor = match port {
            Port::Wire => &self.wire,
            Port::Http => &self.http,
        };
        tokio::time::timeout(timeout, async {
            let mut first = [0u8; 1];
            let n = stream.peek(&mut first).await.map_err(HandshakeError::Io)?;
            if n == 0 {
                return Err(HandshakeError::Closed);
            }
            if first[0] != HANDSHAKE_RECORD {
                let answer = port.plain_answer();
                let _ = stream.write_all(&answer).await;
                let _ = stream.shutdown().await;
                return Err(HandshakeError::PlainText);
            }
            let tls = acceptor.accept(stream).await.map_err(HandshakeError::Io)?;
            let client_cert = tls
                .get_ref()
                .1
                .peer_certificates()
                .is_some_and(|c| !c.is_empty());
            Ok(Accepted {
                stream: Stream::Tls(Box::new(tls)),
                client_cert,
            })
        })
        .await
        .map_err(|_| HandshakeError::Timeout(timeout))?
    }
}

/// A date for people: `2026-12-05 04:00:00 UTC`.
fn utc(secs: i64) -> String {
    chrono::DateTime::from_timestamp(secs, 0)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| secs.to_string())
}

/// A certificate's validity (not before, not after) in Unix seconds, read
/// from its DER: TBSCertificate's fifth field (sixth with a version).
fn validity(cert: &CertificateDer<'_>) -> Option<(i64, i64)> {
    let (_, cert_body, _) = der_item(cert.as_ref())?;
    let (_, tbs, _) = der_item(cert_body)?;
    let mut rest = tbs;
    let mut fields = Vec::new();
    while !rest.is_empty() && fields.len() < 6 {
        let (tag, body, after) = der_item(rest)?;
        fields.push((tag, body));
        rest = after;
    }
    // An explicit version ([0]) comes first in v3 certificates.
    let skip = usize::from(fields.first()?.0 == 0xa0);
    let (tag, validity) = *fields.get(3 + skip)?;
    if tag != 0x30 {
        return None;
    }
    let (t1, b1, rest) = der_item(validity)?;
    let (t2, b2, _) = der_item(rest)?;
    Some((der_time(t1, b1)?, der_time(t2, b2)?))
}

/// One DER item: its tag, its contents and what follows it.
fn der_item(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |l, b| (l << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// A UTCTime (`YYMMDDHHMMSSZ`, tag 0x17) or GeneralizedTime (`YYYYMMDDHHMMSSZ`, tag 0x18).
fn der_time(tag: u8, body: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(body).ok()?;
    let full = match tag {
        0x17 => {
            let yy: i32 = text.get(..2)?.parse().ok()?;
            format!("{}{text}", if yy >= 50 { "19" } else { "20" })
        }
        0x18 => text.to_owned(),
        _ => return None,
    };
    chrono::NaiveDateTime::parse_from_str(full.trim_end_matches('Z'), "%Y%m%d%H%M%S")
        .ok()
        .map(|t| t.and_utc().timestamp())
}

/// TLS handshakes under way on the wire port, oldest first. Past the limit
/// (`max_unauthenticated`) the oldest is cancelled to make room, as
/// connections waiting to say `hello` are, so idle sockets cannot keep
/// clients (or the hub's own automation) out.
#[derive(Debug, Default)]
pub struct Handshakes {
    inner: Mutex<HandshakesInner>,
}

#[derive(Debug, Default)]
struct HandshakesInner {
    next: u64,
    waiting: VecDeque<(u64, tokio::sync::oneshot::Sender<()>)>,
}

/// One handshake's place; dropping it gives the place back.
pub struct HandshakeTicket {
    id: u64,
    owner: Arc<Handshakes>,
    /// Resolves when a newer handshake took this one's place.
    pub evicted: tokio::sync::oneshot::Receiver<()>,
}

impl Handshakes {
    /// A place for a new handshake, cancelling the oldest past `limit`;
    /// also says how many were cancelled.
    pub fn admit(self: &Arc<Self>, limit: usize) -> (HandshakeTicket, usize) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut evicted = 0;
        while inner.waiting.len() >= limit.max(1) {
            if let Some((_, oldest)) = inner.waiting.pop_front() {
                let _ = oldest.send(());
                evicted += 1;
            }
        }
        inner.next += 1;
        let id = inner.next;
        inner.waiting.push_back((id, tx));
        (
            HandshakeTicket {
                id,
                owner: self.clone(),
                evicted: rx,
            },
            evicted,
        )
    }

    /// Handshakes under way.
    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .waiting
            .len()
    }

    /// Whether none is under way.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for HandshakeTicket {
    fn drop(&mut self) {
        let mut inner = self.owner.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = inner.waiting.iter().position(|(id, _)| *id == self.id) {
            inner.waiting.remove(i);
        }
    }
}

/// Whether a failed handshake was about certificates (one the hub does not
/// trust, or none where one is needed): worth a warning, unlike scanners.
pub fn is_certificate_refusal(e: &HandshakeError) -> bool {
    let HandshakeError::Io(e) = e else {
        return false;
    };
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|r| {
            matches!(
                r,
                rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented
            )
        })
}

/// Which of the hub's ports a connection came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    /// The wire protocol.
    Wire,
    /// HTTP (API, events, WebSocket, console).
    Http,
}

impl Port {
    /// What a client speaking plain text to this TLS port is told.
    fn plain_answer(self) -> Vec<u8> {
        match self {
            Port::Wire => crate::protocol::ErrorCode::TlsRequired.frame(
                "this hub's wire port speaks TLS: connect with TLS (`--tls`, an agent's `tls = true`)",
            ),
            Port::Http => {
                let body = br#"{"error":{"code":"tls_required","message":"this port speaks HTTPS: use an https:// URL"}}"#;
                let mut out = format!(
                    "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                )
                .into_bytes();
                out.extend_from_slice(body);
                out
            }
        }
    }
}

/// A finished handshake.
pub struct Accepted {
    /// The encrypted stream.
    pub stream: Stream,
    /// Whether the client presented a certificate (it was verified if so).
    pub client_cert: bool,
}

/// Why a TLS handshake did not finish.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The client closed before saying anything.
    #[error("closed before the handshake")]
    Closed,
    /// The client spoke plain text; it was told to use TLS.
    #[error("spoke plain text to a TLS port")]
    PlainText,
    /// The handshake did not finish in time.
    #[error("no TLS handshake within {0:?}")]
    Timeout(Duration),
    /// The handshake failed (bad certificate, no common cipher, reset).
    #[error("TLS handshake failed: {0}")]
    Io(io::Error),
}

/// A client connection, with or without TLS.
pub enum Stream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl Stream {
    /// Disables Nagle's algorithm on the socket underneath.
    pub fn set_nodelay(&self) {
        let tcp = match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => s.get_ref().0,
        };
        let _ = tcp.set_nodelay(true);
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Trusts exactly one certificate: the hub's own, for its automation's
/// loopback connection (whatever names the certificate holds).
pub struct PinnedServer {
    pin: Box<dyn Fn() -> Option<CertificateDer<'static>> + Send + Sync>,
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl std::fmt::Debug for PinnedServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PinnedServer").finish_non_exhaustive()
    }
}

impl PinnedServer {
    /// A client configuration that trusts the certificate `pin` returns at
    /// each handshake (it follows reloads).
    pub fn client_config(
        pin: impl Fn() -> Option<CertificateDer<'static>> + Send + Sync + 'static,
    ) -> Arc<rustls::ClientConfig> {
        let provider = provider();
        let verifier = Arc::new(PinnedServer {
            pin: Box::new(pin),
            algorithms: provider.signature_verification_algorithms,
        });
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Arc::new(config)
    }
}

impl rustls::client::danger::ServerCertVerifier for PinnedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        match (self.pin)() {
            Some(own) if own.as_ref() == end_entity.as_ref() => {
                Ok(rustls::client::danger::ServerCertVerified::assertion())
            }
            _ => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn past_the_limit_the_oldest_handshake_makes_room() {
        let hs = Arc::new(Handshakes::default());
        let (mut a, _) = hs.admit(2);
        let (b, _) = hs.admit(2);
        assert_eq!(hs.len(), 2);
        let (_c, evicted) = hs.admit(2);
        assert_eq!(evicted, 1);
        assert!(a.evicted.try_recv().is_ok(), "the oldest was told");
        drop(b);
        assert_eq!(hs.len(), 1, "b gave its place back; a's was taken");
        // A lower limit after a reload applies to the next one.
        let (_d, evicted) = hs.admit(1);
        assert_eq!(evicted, 1);
        assert_eq!(hs.len(), 1);
    }

    #[test]
    fn certificate_validity_is_read_from_der() {
        // UTCTime and GeneralizedTime.
        assert_eq!(der_time(0x17, b"261205040000Z"), Some(1_796_443_200));
        assert_eq!(der_time(0x17, b"700101000000Z"), Some(0));
        assert_eq!(der_time(0x18, b"20261205040000Z"), Some(1_796_443_200));
        assert_eq!(der_time(0x18, b"garbage"), None);
        assert_eq!(
            validity(&CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01])),
            None
        );
    }
}
