//! Byte streams to devices: TCP (with a connect timeout), serial ports and
//! VISCA over IP.
//! Drivers only see a [`BoxStream`]; which transport carries it is configuration.

use std::time::Duration;

use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_serial::SerialPortBuilderExt;

use crate::DriverError;

/// Any bidirectional byte stream a driver can speak over.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// A boxed [`Stream`].
pub type BoxStream = Box<dyn Stream>;

/// Serial line settings (defaults: 9600 baud, 8N1, no flow control).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SerialSettings {
    /// Bits per second.
    pub baud: u32,
    /// 5, 6, 7 or 8.
    pub data_bits: u8,
    /// `none`, `odd` or `even`.
    pub parity: String,
    /// 1 or 2.
    pub stop_bits: u8,
}

impl Default for SerialSettings {
    fn default() -> Self {
        SerialSettings {
            baud: 9600,
            data_bits: 8,
            parity: "none".into(),
            stop_bits: 1,
        }
    }
}

impl SerialSettings {
    /// Checks every field, naming the one that is wrong.
    pub fn check(&self) -> Result<(), String> {
        if self.baud == 0 {
            return Err("`baud` must be greater than 0".into());
        }
        if !(5..=8).contains(&self.data_bits) {
            return Err(format!(
                "`data_bits` must be 5, 6, 7 or 8, not {}",
                self.data_bits
            ));
        }
        if !["none", "odd", "even"].contains(&self.parity.as_str()) {
            return Err(format!(
                "`parity` must be none, odd or even, not {:?}",
                self.parity
            ));
        }
        if !(1..=2).contains(&self.stop_bits) {
            return Err(format!(
                "`stop_bits` must be 1 or 2, not {}",
                self.stop_bits
            ));
        }
        Ok(())
    }
}

/// How to reach a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// TCP to `host:port`.
    Tcp {
        /// `host:port`.
        addr: String,
        /// How long connecting may take.
        connect_timeout: Duration,
    },
    /// VISCA over IP to a camera's `host:port` (UDP, port 52381), as a
    /// stream of VISCA packets (see [`crate::visca_ip`]).
    ViscaIp {
        /// `host:port`.
        addr: String,
    },
    /// A serial port by path (`/dev/ttyUSB0`, a `/dev/serial/by-id/...` link, a pty).
    Serial {
        /// Port path.
        path: String,
        /// Line settings.
        settings: SerialSettings,
    },
}

impl Transport {
    /// TCP with the default 5 s connect timeout.
    pub fn tcp(addr: impl Into<String>) -> Self {
        Transport::Tcp {
            addr: addr.into(),
            connect_timeout: Duration::from_secs(5),
        }
    }

    /// A serial port at 9600 8N1.
    pub fn serial(path: impl Into<String>) -> Self {
        Transport::Serial {
            path: path.into(),
            settings: SerialSettings::default(),
        }
    }

    /// Where this transport goes, for messages.
    pub fn target(&self) -> &str {
        match self {
            Transport::Tcp { addr, .. } | Transport::ViscaIp { addr } => addr,
            Transport::Serial { path, .. } => path,
        }
    }

    /// The serial port path, for serial transports.
    pub fn serial_path(&self) -> Option<&str> {
        match self {
            Transport::Serial { path, .. } => Some(path),
            Transport::Tcp { .. } | Transport::ViscaIp { .. } => None,
        }
    }

    /// Opens a fresh stream.
    pub async fn open(&self) -> Result<BoxStream, DriverError> {
        match self {
            Transport::Tcp {
                addr,
                connect_timeout,
            } => {
                let connect = tokio::net::TcpStream::connect(addr.as_str());
                let stream = tokio::time::timeout(*connect_timeout, connect)
                    .await
                    .map_err(|_| DriverError::Connect {
                        target: addr.clone(),
                        source: std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            format!("no answer within {} ms", connect_timeout.as_millis()),
                        ),
                    })?
                    .map_err(|source| DriverError::Connect {
                        target: addr.clone(),
                        source,
                    })?;
                // Connecting to a free port in the ephemeral range can connect the socket to itself.
                if stream.local_addr().ok() == stream.peer_addr().ok() {
                    return Err(DriverError::Connect {
                        target: addr.clone(),
                        source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
                    });
                }
                let _ = stream.set_nodelay(true);
                Ok(Box::new(stream))
            }
            Transport::ViscaIp { addr } => {
                let stream = crate::visca_ip::ViscaIpStream::connect(addr)
                    .await
                    .map_err(|source| DriverError::Connect {
                        target: addr.clone(),
                        source,
                    })?;
                Ok(Box::new(stream))
            }
            Transport::Serial { path, settings } => {
                let parity = match settings.parity.as_str() {
                    "odd" => tokio_serial::Parity::Odd,
                    "even" => tokio_serial::Parity::Even,
                    _ => tokio_serial::Parity::None,
                };
                let data_bits = match settings.data_bits {
                    5 => tokio_serial::DataBits::Five,
                    6 => tokio_serial::DataBits::Six,
                    7 => tokio_serial::DataBits::Seven,
                    _ => tokio_serial::DataBits::Eight,
                };
                let stop_bits = match settings.stop_bits {
                    2 => tokio_serial::StopBits::Two,
                    _ => tokio_serial::StopBits::One,
                };
                let port = tokio_serial::new(path.as_str(), settings.baud)
                    .data_bits(data_bits)
                    .parity(parity)
                    .stop_bits(stop_bits)
                    .flow_control(tokio_serial::FlowControl::None)
                    .open_native_async()
                    .map_err(|e| DriverError::SerialGone {
                        path: path.clone(),
                        reason: format!("cannot open: {e}"),
                    })?;
                Ok(Box::new(port))
            }
        }
    }
}
