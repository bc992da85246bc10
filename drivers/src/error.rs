//! Driver errors: typed, with messages a person can act on, and a stable
//! code that agents put on the wire.

use thiserror::Error;

/// Everything that can go wrong between a driver and its device.
#[derive(Debug, Error)]
pub enum DriverError {
    /// Could not open a connection to the device.
    #[error("cannot connect to {target}: {source}")]
    Connect {
        /// Address or port path.
        target: String,
        /// Why.
        source: std::io::Error,
    },
    /// The serial port disappeared (unplugged adapter, closed pty).
    #[error("serial port {path} gone: {reason}")]
    SerialGone {
        /// The port's path.
        path: String,
        /// What the OS said.
        reason: String,
    },
    /// The device closed the connection.
    #[error("the device closed the connection")]
    Closed,
    /// No reply within the command's timeout.
    #[error("no reply to `{command}` within {timeout_ms} ms")]
    Timeout {
        /// The command sent.
        command: String,
        /// The timeout.
        timeout_ms: u64,
    },
    /// Reading or writing failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The device requires a password and the configured one is wrong.
    #[error("wrong password: the device refused authentication (PJLINK ERRA)")]
    WrongPassword,
    /// The device requires a password and none is configured.
    #[error("the device requires a password; set `password` in the device's driver options")]
    PasswordRequired,
    /// The device does not know the command (PJLink `ERR1`, ESC/VP21 `ERR`).
    #[error("the device does not support `{0}`")]
    Unsupported(String),
    /// The device refused a parameter (PJLink `ERR2`).
    #[error("the device refused `{0}`: parameter out of range")]
    OutOfRange(String),
    /// The device cannot do it right now, e.g. while warming up (PJLink `ERR3`).
    #[error("{0}")]
    Busy(String),
    /// The device reports a failure (PJLink `ERR4`).
    #[error("device failure while executing `{0}`")]
    DeviceFailure(String),
    /// The device sent something the driver does not understand.
    #[error("unexpected reply from the device: {0}")]
    Protocol(String),
    /// Desired settings the schema does not allow.
    #[error(transparent)]
    Schema(#[from] patchbay_client::schema::SchemaError),
    /// The driver's configuration is unusable.
    #[error("configuration: {0}")]
    Config(String),
}

impl DriverError {
    /// The code agents send on the wire: `invalid_value`, `busy`, `offline`,
    /// `device_timeout`, `unsupported` or `device_error`.
    pub fn code(&self) -> &'static str {
        match self {
            DriverError::Schema(_) | DriverError::OutOfRange(_) => "invalid_value",
            DriverError::Busy(_) => "busy",
            DriverError::Connect { .. }
            | DriverError::SerialGone { .. }
            | DriverError::Closed
            | DriverError::Io(_)
            | DriverError::WrongPassword
            | DriverError::PasswordRequired => "offline",
            DriverError::Timeout { .. } => "device_timeout",
            DriverError::Unsupported(_) => "unsupported",
            DriverError::DeviceFailure(_) | DriverError::Protocol(_) | DriverError::Config(_) => {
                "device_error"
            }
        }
    }

    /// Does this error mean the connection is unusable and must be reopened?
    pub fn is_connection_lost(&self) -> bool {
        matches!(
            self,
            DriverError::Closed
                | DriverError::Io(_)
                | DriverError::SerialGone { .. }
                | DriverError::Timeout { .. }
                | DriverError::Protocol(_)
        )
    }
}
