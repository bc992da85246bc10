//! TLS to the hub (rustls with the `ring` provider): trust roots, an
//! optional client certificate, and PEM files read with errors that name
//! the file.
//!
//! ```no_run
//! use patchbay_client::{tls::TlsOptions, ClientBuilder};
//!
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! let tls = TlsOptions { ca: Some("ca.crt".into()), ..TlsOptions::default() }.client_config()?;
//! let client = ClientBuilder::new("hub.example:7400").tls(tls).connect().await?;
//! # Ok(()) }
//! ```

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

pub use rustls::ClientConfig;

/// What can be wrong with TLS settings or files.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A file holds no usable PEM item of the kind needed.
    #[error("{path}: {message}")]
    Pem {
        /// The file.
        path: String,
        /// What is missing or malformed.
        message: String,
    },
    /// The pieces do not fit together (a key that is not the certificate's, a CA that is not one).
    #[error("{0}")]
    Config(String),
}

/// The cryptography every TLS connection of patchbay uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn pem_error(path: &Path, e: rustls::pki_types::pem::Error) -> TlsError {
    match e {
        rustls::pki_types::pem::Error::Io(source) => TlsError::Read {
            path: path.display().to_string(),
            source,
        },
        other => TlsError::Pem {
            path: path.display().to_string(),
            message: format!("not valid PEM: {other}"),
        },
    }
}

/// Reads every certificate in a PEM file (a chain: the leaf first).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, e))?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.display().to_string(),
            message: "no `BEGIN CERTIFICATE` block found".into(),
        });
    }
    Ok(certs)
}

/// Reads the private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            let encrypted = std::fs::read(path).is_ok_and(|b| {
                b.windows(29)
                    .any(|w| w == b"BEGIN ENCRYPTED PRIVATE KEY--")
            });
            TlsError::Pem {
                path: path.display().to_string(),
                message: if encrypted {
                    "the key is encrypted, which is not supported: decrypt it (`openssl pkey -in KEY -out PLAIN`) and keep the file readable only by the service".into()
                } else {
                    "no `BEGIN PRIVATE KEY` (or RSA / EC PRIVATE KEY) block found".into()
                },
            }
        }
        other => pem_error(path, other),
    })
}

/// Trust roots from a PEM file of CA certificates.
pub fn load_roots(path: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert).map_err(|e| TlsError::Pem {
            path: path.display().to_string(),
            message: format!("not a usable CA certificate: {e}"),
        })?;
    }
    Ok(roots)
}

/// How a client checks the hub and, if the hub asks, proves who it is.
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    /// CA certificates (PEM) the hub's certificate must chain to; none: the system's roots.
    pub ca: Option<PathBuf>,
    /// This client's certificate chain (PEM), for hubs that require client certificates.
    pub cert: Option<PathBuf>,
    /// The private key of `cert` (PEM).
    pub key: Option<PathBuf>,
}

impl TlsOptions {
    /// Reads the files and builds the rustls configuration.
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, TlsError> {
        let roots = match &self.ca {
            Some(path) => load_roots(path)?,
            None => {
                let found = rustls_native_certs::load_native_certs();
                let mut roots = rustls::RootCertStore::empty();
                let (added, _) = roots.add_parsable_certificates(found.certs);
                if added == 0 {
                    return Err(TlsError::Config(
                        "no CA certificate given and none found in the system's store; set a CA file"
                            .into(),
                    ));
                }
                roots
            }
        };
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_root_certificates(roots);
        let config = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                let chain = load_certs(cert)?;
                let key_der = load_key(key)?;
                builder.with_client_auth_cert(chain, key_der).map_err(|e| {
                    TlsError::Config(format!(
                        "{} and {} do not make a client identity: {e}",
                        cert.display(),
                        key.display()
                    ))
                })?
            }
            (None, None) => builder.with_no_client_auth(),
            _ => {
                return Err(TlsError::Config(
                    "a client certificate needs both its certificate and its key file".into(),
                ))
            }
        };
        Ok(Arc::new(config))
    }
}

/// The name a hub's certificate is checked against: the host part of `addr`.
pub fn server_name(addr: &str) -> Result<ServerName<'static>, String> {
    let host = match addr.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h,
        _ => addr,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_owned())
        .map_err(|_| format!("`{host}` is not a host name or address a certificate can name"))
}

/// Whether a failed handshake means the peer does not speak TLS at all.
pub fn is_not_tls(e: &std::io::Error) -> bool {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|r| {
            matches!(
                r,
                rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. }
            )
        })
}

/// The alert a peer sent when it refused this connection's TLS (a client
/// certificate it does not trust, or an expired one).
pub fn refusal_alert(e: &std::io::Error) -> Option<String> {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())?
    {
        rustls::Error::AlertReceived(alert) => Some(format!("{alert:?}")),
        _ => None,
    }
}

/// A connection to the hub, with or without TLS.
pub(crate) enum Stream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
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
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_come_from_the_host_part() {
        assert_eq!(
            server_name("hub.example:7400").unwrap(),
            ServerName::try_from("hub.example").unwrap()
        );
        assert_eq!(
            server_name("127.0.0.1:7400").unwrap(),
            ServerName::try_from("127.0.0.1").unwrap()
        );
        assert_eq!(
            server_name("[::1]:7400").unwrap(),
            ServerName::try_from("::1").unwrap()
        );
        assert!(server_name("bad host:7400").is_err());
    }

    #[test]
    fn missing_and_empty_files_are_named() {
        let e = load_certs(Path::new("/nonexistent/ca.crt")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/ca.crt"), "{e}");
        let dir = std::env::temp_dir().join(format!("pb-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "nothing here\n").unwrap();
        let e = load_certs(&empty).unwrap_err();
        assert!(e.to_string().contains("no `BEGIN CERTIFICATE`"), "{e}");
        let e = load_key(&empty).unwrap_err();
        assert!(e.to_string().contains("PRIVATE KEY"), "{e}");
        let encrypted = dir.join("encrypted.pem");
        std::fs::write(
            &encrypted,
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIBvTBXBgkqhkiG9w0BBQ0wSjApBgkqhkiG9w0BBQwwHAQI\n-----END ENCRYPTED PRIVATE KEY-----\n",
        )
        .unwrap();
        let e = load_key(&encrypted).unwrap_err();
        assert!(e.to_string().contains("encrypted"), "{e}");
        let e = TlsOptions {
            ca: Some(empty.clone()),
            ..TlsOptions::default()
        }
        .client_config()
        .unwrap_err();
        assert!(e.to_string().contains("empty.pem"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
