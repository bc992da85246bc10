//! The agent's connection to the hub: claims each device's subtree,
//! publishes what device tasks leave in their mailboxes (and everything
//! again after a reconnect), and routes `dev/<id>/set` requests to the
//! device's task.
//!
//! Publishes are pipelined: the link never waits for the hub between them,
//! so one chatty device or a slow link cannot hold back requests. A command
//! whose settings the device's schema refuses is answered at once, not after
//! waiting in the device's queue. A device whose claim is refused is
//! reported (in the log and on `agent/<name>/status`) and left out, and its
//! claim is tried again later; the others are served as usual.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use patchbay_client::backoff::Backoff;
use patchbay_client::device::DeviceErrorCode;
use patchbay_client::protocol::ErrorBody;
use patchbay_client::schema::{validate_settings, Setting};
use patchbay_client::{Body, Client, ClientBuilder, ClientEvent, PublishOptions, Request};
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::config::AgentConfig;
use crate::device::{now_ms, Command};
use crate::mailbox::{Mailboxes, Pending};

/// How often claims the hub refused are tried again.
const RECLAIM_EVERY: Duration = Duration::from_secs(3);

/// Runs until `shutdown` turns true.
pub async fn run(
    cfg: AgentConfig,
    devices: HashMap<String, mpsc::Sender<Command>>,
    mailboxes: Arc<Mailboxes>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = Backoff::new(Duration::from_millis(200), cfg.reconnect_max);
    let mut cfg = cfg;
    if cfg.hub == "auto" {
        // Found on the LAN over mDNS, looked for until one answers.
        cfg.hub = loop {
            let found = tokio::task::spawn_blocking(|| {
                patchbay_hub::mdns::find(Duration::from_secs(3), true)
            });
            tokio::select! {
                _ = shutdown.changed() => return,
                f = found => match f {
                    Ok(Ok(f)) => {
                        tracing::info!(hub = %f.wire, tls = f.tls, "found the hub on the LAN");
                        if f.tls && cfg.tls.is_none() {
                            // It says it speaks TLS: trust the system's CAs, as a browser would.
                            match patchbay_client::tls::TlsOptions::default().client_config() {
                                Ok(c) => cfg.tls = Some(c),
                                Err(e) => tracing::warn!("the hub speaks TLS, but {e}; set tls_ca"),
                            }
                        }
                        break f.wire.to_string();
                    }
                    Ok(Err(e)) => tracing::warn!("{e}; looking again"),
                    Err(e) => tracing::warn!("mDNS lookup failed: {e}; looking again"),
                },
            }
        };
    }
    let mut builder = ClientBuilder::new(&cfg.hub)
        .name(&cfg.name)
        .reconnect(Duration::from_millis(200), cfg.reconnect_max);
    if let Some(t) = &cfg.token {
        builder = builder.token(t);
    }
    if let Some(tls) = &cfg.tls {
        builder = builder.tls(tls.clone());
    }
    if let Some(name) = &cfg.tls_server_name {
        builder = builder.tls_server_name(name);
    }
    // The first connection: retried here; later ones, by the client. Device
    // tasks never wait for it: their news stays in their mailboxes.
    let client = loop {
        let attempt = tokio::select! {
            _ = shutdown.changed() => return,
            c = builder.clone().connect() => c,
        };
        match attempt {
            Ok(c) => break c,
            Err(e) => {
                tracing::warn!(hub = %cfg.hub, "hub unavailable: {e}");
                tokio::select! {
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                    _ = shutdown.changed() => return,
                }
            }
        }
    };
    tracing::info!(hub = %cfg.hub, devices = devices.len(), "connected to hub");
    let requests = client.requests();
    let mut events = client.events();
    let mut owned = HashSet::new();
    let mut refused = BTreeMap::new();
    claim_all(&client, &cfg, &mut owned, &mut refused).await;
    republish(&client, &mailboxes, &owned).await;
    let mut reclaim = tokio::time::interval(RECLAIM_EVERY);
    reclaim.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.changed() => {
                let _ = client.flush().await;
                return;
            }
            Some(r) = requests.next() => dispatch(&devices, &mailboxes, r),
            _ = mailboxes.changed() => {
                while let Some((id, news)) = mailboxes.take() {
                    if owned.contains(id) {
                        // While disconnected this fails; everything is published again on reconnect.
                        let _ = publish(&client, id, news).await;
                    }
                }
            }
            _ = reclaim.tick(), if !refused.is_empty() => {
                let before = owned.len();
                claim_all(&client, &cfg, &mut owned, &mut refused).await;
                if owned.len() > before {
                    republish(&client, &mailboxes, &owned).await;
                }
            }
            e = events.recv() => match e {
                Ok(ClientEvent::Reconnected(_)) => {
                    tracing::info!(hub = %cfg.hub, "reconnected to hub; claiming and publishing again");
                    owned.clear();
                    claim_all(&client, &cfg, &mut owned, &mut refused).await;
                    republish(&client, &mailboxes, &owned).await;
                }
                Ok(ClientEvent::HubError(e)) => tracing::warn!("hub error: {e}"),
                Ok(ClientEvent::Disconnected(why)) => tracing::warn!("lost the hub ({why}); reconnecting"),
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            },
        }
    }
}

/// Claims every device not yet owned; a refused claim is reported and
/// skipped. Publishes the agent's status: devices served and refused.
async fn claim_all(
    client: &Client,
    cfg: &AgentConfig,
    owned: &mut HashSet<String>,
    refused: &mut BTreeMap<String, String>,
) {
    for d in &cfg.devices {
        if owned.contains(&d.id) {
            continue;
        }
        match client.claim(&format!("dev/{}", d.id)).await {
            Ok(()) => {
                owned.insert(d.id.clone());
                refused.remove(&d.id);
            }
            Err(e) => {
                if refused.get(&d.id) != Some(&e.to_string()) {
                    tracing::error!(
                        device = %d.id,
                        "the hub refused device `{}` to this agent: {e}; it is left out and claimed again every {} s",
                        d.id,
                        RECLAIM_EVERY.as_secs()
                    );
                }
                refused.insert(d.id.clone(), e.to_string());
            }
        }
    }
    let mut serving: Vec<&String> = owned.iter().collect();
    serving.sort();
    let status =
        json!({"name": cfg.name, "devices": serving, "refused": refused, "since": now_ms()});
    let opts = PublishOptions {
        retain: true,
        cid: None,
    };
    let tag = format!("agent/{}/status", cfg.name);
    if let Err(e) = client.publish_with(&tag, &Body::from(status), opts).await {
        tracing::debug!("agent status not published: {e}");
    }
}

/// Publishes the latest known values of every owned device. What was
/// waiting in the mailboxes is part of those values: it is taken here (its
/// events go out with them), so it is not sent a second time.
async fn republish(client: &Client, mailboxes: &Mailboxes, owned: &HashSet<String>) {
    let mut waiting = std::collections::HashMap::new();
    while let Some((id, news)) = mailboxes.take() {
        waiting.insert(id, news);
    }
    for (id, mut latest) in mailboxes.latest() {
        let news = waiting.remove(id);
        if !owned.contains(id) {
            continue;
        }
        if let Some(news) = news {
            latest.events = news.events;
            latest.events_dropped = news.events_dropped;
        }
        let _ = publish(client, id, latest).await;
    }
}

async fn retained(
    client: &Client,
    tag: &str,
    body: &Value,
    cid: Option<&str>,
) -> Result<(), patchbay_client::Error> {
    let opts = PublishOptions { retain: true, cid };
    client.publish_with(tag, &Body::from(body), opts).await
}

/// Publishes one device's news: description first, then state, reachability and events.
async fn publish(client: &Client, id: &str, news: Pending) -> Result<(), patchbay_client::Error> {
    if let Some(meta) = &news.meta {
        retained(client, &format!("dev/{id}/meta"), meta, None).await?;
    }
    if let Some((state, cid)) = &news.state {
        retained(client, &format!("dev/{id}/state"), state, cid.as_deref()).await?;
    }
    if let Some(online) = &news.online {
        retained(client, &format!("dev/{id}/online"), online, None).await?;
    }
    if news.events_dropped > 0 {
        tracing::warn!(device = %id, dropped = news.events_dropped, "events dropped: the hub link fell behind");
    }
    for e in &news.events {
        client
            .publish(&format!("dev/{id}/event"), &Body::from(e))
            .await?;
    }
    Ok(())
}

/// Hands a request to its device's task and replies when it is done,
/// without blocking the link. Settings the device's schema refuses are
/// answered at once.
fn dispatch(devices: &HashMap<String, mpsc::Sender<Command>>, mailboxes: &Mailboxes, r: Request) {
    let id = r
        .tag()
        .strip_prefix("dev/")
        .and_then(|rest| rest.strip_suffix("/set"))
        .filter(|id| devices.contains_key(*id))
        .map(str::to_owned);
    let desired = r.json::<Value>().unwrap_or(Value::Null);
    let early = match &id {
        None => Some(ErrorBody::new(
            "unknown_request",
            format!(
                "this agent answers `dev/<id>/set` requests only, not `{}`",
                r.tag()
            ),
        )),
        Some(id) => {
            let settings: Vec<Setting> = mailboxes
                .meta(id)
                .and_then(|m| serde_json::from_value(m.get("settings")?.clone()).ok())
                .unwrap_or_default();
            // A device not described yet is checked by its task, which knows why.
            (!settings.is_empty())
                .then(|| validate_settings(&settings, &desired).err())
                .flatten()
                .map(|e| ErrorBody::new(DeviceErrorCode::InvalidValue.as_str(), e.to_string()))
        }
    };
    let tx = id.as_ref().and_then(|id| devices.get(id)).cloned();
    tokio::spawn(async move {
        let cid = r.cid().map(str::to_owned);
        let result = match (early, id, tx) {
            (Some(e), _, _) => Err(e),
            (None, Some(id), Some(tx)) => {
                let (reply_tx, reply_rx) = oneshot::channel();
                let cmd = Command {
                    desired,
                    cid: cid.clone(),
                    reply: reply_tx,
                };
                match tx.try_send(cmd) {
                    Ok(()) => reply_rx.await.unwrap_or_else(|_| {
                        Err(ErrorBody::new(
                            DeviceErrorCode::Offline.as_str(),
                            format!("device `{id}` stopped"),
                        ))
                    }),
                    Err(mpsc::error::TrySendError::Closed(_)) => Err(ErrorBody::new(
                        DeviceErrorCode::Offline.as_str(),
                        format!("device `{id}` is not running"),
                    )),
                    Err(mpsc::error::TrySendError::Full(_)) => Err(ErrorBody::new(
                        DeviceErrorCode::Busy.as_str(),
                        format!(
                            "device `{id}` has {} commands waiting; try again",
                            crate::device::COMMAND_QUEUE
                        ),
                    )),
                }
            }
            _ => Err(ErrorBody::new("unknown_request", "no such device")),
        };
        let sent = match result {
            Ok(state) => r.respond(&Body::from(&state)).await,
            Err(e) => r.respond_result(Err(&e)).await,
        };
        if let Err(e) = sent {
            tracing::warn!(cid = cid.as_deref().unwrap_or(""), "could not reply: {e}");
        }
    });
}
