//! Device simulators: fake projectors that speak PJLink and ESC/VP21
//! faithfully enough that a driver that works against them works against the
//! real thing, including warm-up, authentication, error replies and faults.

pub mod escvp21;
pub mod lg_display;
pub mod pjlink;
pub mod projector;

pub use projector::{Faults, ProjectorConfig, Sim, Stats};
