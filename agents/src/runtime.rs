//! Starts an agent: one task per device plus the hub link, all stopped by one signal.

use std::collections::HashMap;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::config::AgentConfig;
use crate::device::{self, COMMAND_QUEUE};
use crate::link;

/// Device updates waiting for the hub link; device tasks wait when it is full.
const UPDATE_QUEUE: usize = 1024;

/// Runs the agent until `shutdown` turns true.
pub async fn run(cfg: AgentConfig, shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    let (updates_tx, updates_rx) = mpsc::channel(UPDATE_QUEUE);
    let mut devices = HashMap::new();
    let mut tasks = JoinSet::new();
    for d in &cfg.devices {
        let driver = d
            .driver()
            .map_err(|e| anyhow::anyhow!("device `{}`: {e}", d.id))?;
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        devices.insert(d.id.clone(), tx);
        tasks.spawn(device::run(
            d.clone(),
            driver,
            updates_tx.clone(),
            rx,
            cfg.reconnect_max,
            shutdown.clone(),
        ));
    }
    drop(updates_tx);
    tasks.spawn(link::run(cfg, devices, updates_rx, shutdown));
    while tasks.join_next().await.is_some() {}
    Ok(())
}
