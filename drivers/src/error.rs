//! Driver errors: typed, with messages a person can act on, and a stable
//! code that agents put on the wire.

use patchbay_client::device::DeviceErrorCode;
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
    #[error("wrong password: the device refused authentication (ERRA)")]
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
    #[error("{}", busy_text(why, sent))]
    Busy {
        /// Why, for people.
        why: String,
        /// What was sent, for the record.
        sent: Option<String>,
    },
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

fn busy_text(why: &str, sent: &Option<String>) -> String {
    match sent {
        Some(s) => format!("{why} (`{s}`)"),
        None => why.to_owned(),
    }
}

impl DriverError {
    /// Busy for a reason people understand, with what was sent for the record.
    pub fn busy(why: impl Into<String>, sent: Option<String>) -> Self {
        DriverError::Busy {
            why: why.into(),
            sent,
        }
    }

    /// The code agents send on the wire.
    pub fn code(&self) -> DeviceErrorCode {
        match self {
            DriverError::Schema(_) | DriverError::OutOfRange(_) => DeviceErrorCode::InvalidValue,
            DriverError::Busy { .. } => DeviceErrorCode::Busy,
            DriverError::Connect { .. }
            | DriverError::SerialGone { .. }
            | DriverError::Closed
            | DriverError::Io(_)
            | DriverError::WrongPassword
            | DriverError::PasswordRequired => DeviceErrorCode::Offline,
            DriverError::Timeout { .. } => DeviceErrorCode::DeviceTimeout,
            DriverError::Unsupported(_) => DeviceErrorCode::Unsupported,
            DriverError::DeviceFailure(_) | DriverError::Protocol(_) | DriverError::Config(_) => {
                DeviceErrorCode::DeviceError
            }
        }
    }

    /// What went wrong in words for the people operating the device, without
    /// protocol detail (that is in the `Display` text).
    pub fn summary(&self) -> String {
        match self {
            DriverError::Connect { .. } => "the device cannot be reached".into(),
            DriverError::SerialGone { .. } => {
                "the serial port is gone (is the adapter unplugged?)".into()
            }
            DriverError::Closed | DriverError::Io(_) => {
                "the connection to the device failed".into()
            }
            DriverError::Timeout { .. } => "the device did not answer in time".into(),
            DriverError::WrongPassword => "the device refused the configured password".into(),
            DriverError::PasswordRequired => {
                "the device needs a password and none is configured".into()
            }
            DriverError::Unsupported(_) => "the device does not support this".into(),
            DriverError::OutOfRange(_) => "the device refused this value".into(),
            DriverError::Busy { why, .. } => why.clone(),
            DriverError::DeviceFailure(_) => "the device reports a failure".into(),
            DriverError::Protocol(_) => "the device answered something unexpected".into(),
            DriverError::Schema(e) => e.to_string(),
            DriverError::Config(e) => format!("the device is misconfigured: {e}"),
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
