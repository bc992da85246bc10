//! Device simulators: fake projectors that speak PJLink, ESC/VP21 and NTCONTROL
//! faithfully enough that a driver that works against them works against the
//! real thing, including warm-up, authentication, error replies and faults.

pub mod escvp21;
pub mod lg_display;
pub mod panasonic;
pub mod pjlink;
pub mod projector;

pub use projector::{Faults, ProjectorConfig, Sim, Stats};
