//! The patchbay agent: runs next to the hardware, drives each configured
//! device through its driver, keeps the device's description, state and
//! reachability on the hub, and carries out the commands the hub routes to it.

pub mod config;
pub mod demo;
pub mod device;
pub mod link;
pub mod mailbox;
pub mod runtime;
