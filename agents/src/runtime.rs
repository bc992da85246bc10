//! Starts an agent: one supervised task per device plus the hub link, all
//! stopped by one signal.
//!
//! A device task that panics (a driver bug meeting unexpected bytes) does
//! not take its device away silently: its supervisor logs the panic,
//! reports the device offline with the reason, answers its commands
//! `offline` meanwhile, and starts it again with a fresh driver after a
//! backoff. The device's command queue outlives the task, so the hub link
//! never sees it closed.

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use patchbay_client::backoff::Backoff;
use tokio::sync::{mpsc, watch, Mutex};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::config::AgentConfig;
use crate::device::{self, online, Commands, COMMAND_QUEUE};
use crate::link;
use crate::mailbox::{Mailbox, Mailboxes};

/// Runs the agent until `shutdown` turns true.
pub async fn run(cfg: AgentConfig, shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    let mailboxes = Mailboxes::new(cfg.devices.iter().map(|d| d.id.clone()));
    let mut senders = HashMap::new();
    let mut tasks = JoinSet::new();
    for d in &cfg.devices {
        // Checked once here, so that a restart cannot fail on configuration.
        d.driver()
            .map_err(|e| anyhow::anyhow!("device `{}`: {e}", d.id))?;
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        senders.insert(d.id.clone(), tx);
        let commands: Commands = Arc::new(Mutex::new(rx));
        let mailbox = mailboxes
            .mailbox(&d.id)
            .expect("a mailbox for every configured device");
        let (d, reconnect_max, stop) = (d.clone(), cfg.reconnect_max, shutdown.clone());
        let start = {
            let (commands, mailbox, stop) = (commands.clone(), mailbox.clone(), stop.clone());
            move || {
                let driver = d.driver().expect("checked at start");
                device::run(
                    d.clone(),
                    driver,
                    mailbox.clone(),
                    commands.clone(),
                    reconnect_max,
                    stop.clone(),
                )
            }
        };
        tasks.spawn(supervise(mailbox, commands, stop, start));
    }
    tasks.spawn(link::run(cfg, senders, mailboxes, shutdown));
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// The text of a panic's payload.
fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".into()
    }
}

/// Runs the device task `start` makes until it ends normally (shutdown);
/// restarts it with backoff each time it panics.
pub async fn supervise<F, Fut>(
    mailbox: Mailbox,
    commands: Commands,
    mut shutdown: watch::Receiver<bool>,
    mut start: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let id = mailbox.id().to_owned();
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
    loop {
        match AssertUnwindSafe(start()).catch_unwind().await {
            Ok(()) => return,
            Err(payload) => {
                let what = panic_text(payload.as_ref());
                tracing::error!(device = %id, "the device's task failed ({what}); restarting it");
                let reason = "the agent's task for this device failed; restarting it";
                mailbox.online(online(false, Some(reason), Some(&what)));
                let until = Instant::now() + backoff.next_delay();
                let mut queue = commands.lock().await;
                if device::wait_offline(&id, reason, until, &mut queue, &mut shutdown).await {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::Command;
    use serde_json::json;
    use tokio::sync::oneshot;

    #[tokio::test(start_paused = true)]
    async fn a_panicking_device_task_is_reported_and_restarted() {
        let all = Mailboxes::new(["p1".to_string()]);
        let mailbox = all.mailbox("p1").unwrap();
        let (tx, rx) = mpsc::channel(4);
        let commands: Commands = Arc::new(Mutex::new(rx));
        let (stop_tx, stop) = watch::channel(false);
        let starts = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let start = {
            let (starts, mailbox, stop) = (starts.clone(), mailbox.clone(), stop.clone());
            move || {
                let n = starts.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let (mailbox, mut stop) = (mailbox.clone(), stop.clone());
                async move {
                    if n == 0 {
                        panic!("byte index 1 is not a char boundary");
                    }
                    mailbox.online(online(true, None, None));
                    let _ = stop.wait_for(|s| *s).await;
                }
            }
        };
        let supervisor = tokio::spawn(supervise(mailbox, commands, stop, start));
        // The panic is reported as the device being offline, with the reason.
        tokio::task::yield_now().await;
        let (_, news) = all.take().expect("news after the panic");
        let o = news.online.unwrap();
        assert_eq!(o["online"], false);
        assert!(o["reason"].as_str().unwrap().contains("failed"), "{o}");
        assert!(
            o["detail"].as_str().unwrap().contains("char boundary"),
            "{o}"
        );
        // Meanwhile a command is answered `offline`, not left waiting, not `busy`.
        let (reply, answer) = oneshot::channel();
        tx.send(Command {
            desired: json!({"power":"on"}),
            cid: None,
            reply,
        })
        .await
        .unwrap();
        let e = answer.await.unwrap().unwrap_err();
        assert_eq!(e.code, "offline");
        // After the backoff it runs again.
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(starts.load(std::sync::atomic::Ordering::SeqCst), 2);
        assert_eq!(all.take().unwrap().1.online.unwrap()["online"], true);
        stop_tx.send(true).unwrap();
        supervisor.await.unwrap();
    }
}
