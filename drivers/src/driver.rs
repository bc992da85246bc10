//! The driver abstraction the agent runs devices through.

use std::future::Future;

use crate::escvp21::Escvp21;
use crate::line::LineDriver;
use crate::panasonic::Panasonic;
use crate::pjlink::Pjlink;
use crate::DriverError;
use patchbay_client::schema::{Description, DeviceEvent, SchemaError, State};

/// What every device driver does.
pub trait Driver: Send {
    /// Identifies the device and returns its settings schema.
    fn describe(&mut self) -> impl Future<Output = Result<Description, DriverError>> + Send;
    /// Reads the whole current state.
    fn poll(&mut self) -> impl Future<Output = Result<State, DriverError>> + Send;
    /// Applies desired settings and returns the state the device confirms.
    fn apply(&mut self, desired: &State)
        -> impl Future<Output = Result<State, DriverError>> + Send;
    /// Errors, warnings and notices seen since the last call.
    fn take_events(&mut self) -> Vec<DeviceEvent>;
    /// Closes the connection; the next call opens a new one.
    fn disconnect(&mut self);
    /// Where to report state changes seen while `apply` runs (a projector
    /// warming up); `None` to stop.
    fn set_progress(&mut self, progress: Option<Progress>);
    /// Was the last description incomplete (the device could not say what it
    /// is, e.g. in standby) and can it now be completed? The agent then
    /// describes the device again and publishes the new description.
    fn needs_redescribe(&self) -> bool {
        false
    }
}

/// The wire code of input `id` in a driver's table of (id, code) pairs, or
/// the schema error naming the ids it has.
pub(crate) fn input_code<'a>(
    table: impl Iterator<Item = (&'a str, &'a str)> + Clone,
    id: &str,
) -> Result<String, DriverError> {
    table
        .clone()
        .find(|(i, _)| *i == id)
        .map(|(_, code)| code.to_owned())
        .ok_or_else(|| {
            DriverError::Schema(SchemaError::InvalidValue {
                setting: "input".into(),
                value: format!("{id:?}"),
                allowed: table.map(|(i, _)| i).collect::<Vec<_>>().join(", "),
            })
        })
}

/// Follows a projector's power through a warm-up or cool-down: reports each
/// new state to the progress receiver and says when the state has settled.
pub(crate) struct Transition {
    deadline: tokio::time::Instant,
    timeout: std::time::Duration,
    reported: String,
}

impl Transition {
    /// Starts following; gives up after `timeout`.
    pub(crate) fn new(timeout: std::time::Duration) -> Self {
        Transition {
            deadline: tokio::time::Instant::now() + timeout,
            timeout,
            reported: String::new(),
        }
    }

    /// Takes one power reading: `Some` with the settled state (or the error
    /// for a transition that takes too long), `None` to read again later.
    pub(crate) fn observe(
        &mut self,
        power: String,
        progress: Option<&Progress>,
    ) -> Option<Result<String, DriverError>> {
        if power != self.reported {
            if let Some(p) = progress {
                let _ = p.try_send(("power".into(), serde_json::Value::String(power.clone())));
            }
            self.reported.clone_from(&power);
        }
        if power != "warming" && power != "cooling" {
            return Some(Ok(power));
        }
        if tokio::time::Instant::now() >= self.deadline {
            return Some(Err(DriverError::busy(
                format!(
                    "the projector is still {power} after {} s",
                    self.timeout.as_secs()
                ),
                None,
            )));
        }
        None
    }
}

/// Receives `(setting, value)` changes observed during a long `apply`. Reports
/// are dropped, never queued without bound, when the receiver lags.
pub type Progress = tokio::sync::mpsc::Sender<(String, serde_json::Value)>;

macro_rules! forward {
    ($ty:ty) => {
        impl Driver for $ty {
            async fn describe(&mut self) -> Result<Description, DriverError> {
                <$ty>::describe(self).await
            }
            async fn poll(&mut self) -> Result<State, DriverError> {
                <$ty>::poll(self).await
            }
            async fn apply(&mut self, desired: &State) -> Result<State, DriverError> {
                <$ty>::apply(self, desired).await
            }
            fn take_events(&mut self) -> Vec<DeviceEvent> {
                <$ty>::take_events(self)
            }
            fn disconnect(&mut self) {
                <$ty>::disconnect(self)
            }
            fn set_progress(&mut self, progress: Option<Progress>) {
                <$ty>::set_progress(self, progress)
            }
        }
    };
}

forward!(Pjlink);
forward!(Escvp21);
forward!(LineDriver);
forward!(Panasonic);

/// One of the built-in drivers, chosen by configuration.
pub enum AnyDriver {
    /// PJLink.
    Pjlink(Pjlink),
    /// Epson ESC/VP21.
    Escvp21(Escvp21),
    /// Line protocol from a TOML profile.
    Line(LineDriver),
    /// Panasonic NTCONTROL.
    Panasonic(Panasonic),
}

impl Driver for AnyDriver {
    async fn describe(&mut self) -> Result<Description, DriverError> {
        match self {
            AnyDriver::Pjlink(d) => d.describe().await,
            AnyDriver::Escvp21(d) => d.describe().await,
            AnyDriver::Line(d) => d.describe().await,
            AnyDriver::Panasonic(d) => d.describe().await,
        }
    }

    async fn poll(&mut self) -> Result<State, DriverError> {
        match self {
            AnyDriver::Pjlink(d) => d.poll().await,
            AnyDriver::Escvp21(d) => d.poll().await,
            AnyDriver::Line(d) => d.poll().await,
            AnyDriver::Panasonic(d) => d.poll().await,
        }
    }

    async fn apply(&mut self, desired: &State) -> Result<State, DriverError> {
        match self {
            AnyDriver::Pjlink(d) => d.apply(desired).await,
            AnyDriver::Escvp21(d) => d.apply(desired).await,
            AnyDriver::Line(d) => d.apply(desired).await,
            AnyDriver::Panasonic(d) => d.apply(desired).await,
        }
    }

    fn take_events(&mut self) -> Vec<DeviceEvent> {
        match self {
            AnyDriver::Pjlink(d) => d.take_events(),
            AnyDriver::Escvp21(d) => d.take_events(),
            AnyDriver::Line(d) => d.take_events(),
            AnyDriver::Panasonic(d) => d.take_events(),
        }
    }

    fn disconnect(&mut self) {
        match self {
            AnyDriver::Pjlink(d) => d.disconnect(),
            AnyDriver::Escvp21(d) => d.disconnect(),
            AnyDriver::Line(d) => d.disconnect(),
            AnyDriver::Panasonic(d) => d.disconnect(),
        }
    }

    fn set_progress(&mut self, progress: Option<Progress>) {
        match self {
            AnyDriver::Pjlink(d) => d.set_progress(progress),
            AnyDriver::Escvp21(d) => d.set_progress(progress),
            AnyDriver::Line(d) => d.set_progress(progress),
            AnyDriver::Panasonic(d) => d.set_progress(progress),
        }
    }

    fn needs_redescribe(&self) -> bool {
        match self {
            AnyDriver::Pjlink(d) => d.needs_redescribe(),
            AnyDriver::Escvp21(d) => d.needs_redescribe(),
            AnyDriver::Line(d) => d.needs_redescribe(),
            AnyDriver::Panasonic(d) => d.needs_redescribe(),
        }
    }
}
