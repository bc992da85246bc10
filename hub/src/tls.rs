//! TLS on the hub's ports (`[tls]`): the server's certificate and key,
//! optional client certificates on the wire port, the handshake with its
//! limits, and a clear answer to a client that speaks plain text to a TLS
//! port.
//!
//! The files are read at start and again at every reload, so a renewed
//! certificate takes effect without a restart (for new connections).

use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
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
        let verifier = match &cfg.client_ca {
            Some(path) => {
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
        Ok(ServerTls {
            wire: server(verifier)?,
            http: server(None)?,
            client_certs: cfg.client_ca.is_some(),
            own,
            handshake_timeout: cfg.handshake_timeout(),
        })
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
