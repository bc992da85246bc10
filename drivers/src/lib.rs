//! Device drivers for patchbay agents: PJLink, Epson ESC/VP21, Panasonic
//! NTCONTROL, and devices
//! described by TOML profiles (with a built-in library of them), each generic over any byte stream, plus the
//! transports that open those streams (TCP, serial) and simulators of the
//! devices for tests and the demo.

pub mod driver;
mod error;
pub mod escvp21;
pub mod library;
pub mod line;
pub mod lineio;
pub mod panasonic;
pub mod pjlink;
pub mod sim;
pub mod transport;
pub mod visca_ip;

pub use driver::{AnyDriver, Driver, Progress};
pub use error::DriverError;
pub use patchbay_client::schema::{
    self, Description, DeviceEvent, Kind, Level, SchemaError, Setting, State,
};
pub use transport::{SerialSettings, Transport};
