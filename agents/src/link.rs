//! The agent's connection to the hub: claims each device's subtree,
//! publishes what device tasks report (and re-publishes everything after a
//! reconnect), and routes `dev/<id>/set` requests to the device's task.
//!
//! Publishes are pipelined: the link never waits for the hub between them,
//! so one chatty device or a slow link cannot hold back requests. A device
//! whose claim is refused is reported and left out, and its claim is tried
//! again later; the others are served as usual.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use patchbay_client::device::DeviceErrorCode;
use patchbay_client::protocol::ErrorBody;
use patchbay_client::{Body, Client, ClientBuilder, ClientEvent, PublishOptions, Request};
use serde_json::Value;
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::backoff::Backoff;
use crate::config::AgentConfig;
use crate::device::{Command, CommandError, Update};

/// How often claims the hub refused are tried again.
const RECLAIM_EVERY: Duration = Duration::from_secs(10);

/// The latest retained values of one device, kept to re-publish after a reconnect.
#[derive(Default)]
struct Latest {
    meta: Option<Value>,
    state: Option<(Value, Option<String>)>,
    online: Option<Value>,
}

/// Runs until `shutdown` turns true.
pub async fn run(
    cfg: AgentConfig,
    devices: HashMap<String, mpsc::Sender<Command>>,
    mut updates: mpsc::Receiver<Update>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut latest: HashMap<String, Latest> = HashMap::new();
    let mut backoff = Backoff::new(Duration::from_millis(200), cfg.reconnect_max);
    let mut builder = ClientBuilder::new(&cfg.hub)
        .name(&cfg.name)
        .reconnect(Duration::from_millis(200), cfg.reconnect_max);
    if let Some(t) = &cfg.token {
        builder = builder.token(t);
    }
    // The first connection: retried here; later ones, by the client.
    let client = loop {
        let attempt = tokio::select! {
            _ = shutdown.changed() => return,
            c = builder.clone().connect() => c,
        };
        match attempt {
            Ok(c) => break c,
            Err(e) => {
                tracing::warn!(hub = %cfg.hub, "hub unavailable: {e}");
                // Keep absorbing device updates while waiting, so nothing blocks on us.
                let until = tokio::time::Instant::now() + backoff.next_delay();
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep_until(until) => break,
                        _ = shutdown.changed() => return,
                        Some(u) = updates.recv() => remember(&mut latest, u),
                    }
                }
            }
        }
    };
    tracing::info!(hub = %cfg.hub, devices = devices.len(), "connected to hub");
    let requests = client.requests();
    let mut events = client.events();
    let mut owned = HashSet::new();
    claim_all(&client, &cfg, &mut owned).await;
    republish(&client, &latest, &owned).await;
    let mut reclaim = tokio::time::interval(RECLAIM_EVERY);
    reclaim.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.changed() => {
                let _ = client.flush().await;
                return;
            }
            Some(u) = updates.recv() => {
                if owned.contains(update_id(&u)) {
                    // While disconnected this fails; everything is re-published on reconnect.
                    let _ = publish(&client, &u).await;
                }
                remember(&mut latest, u);
            }
            Some(r) = requests.next() => dispatch(&devices, r),
            _ = reclaim.tick(), if owned.len() < cfg.devices.len() => {
                let before = owned.len();
                claim_all(&client, &cfg, &mut owned).await;
                if owned.len() > before {
                    republish(&client, &latest, &owned).await;
                }
            }
            e = events.recv() => match e {
                Ok(ClientEvent::Reconnected(_)) => {
                    tracing::info!(hub = %cfg.hub, "reconnected to hub; claiming and publishing again");
                    owned.clear();
                    claim_all(&client, &cfg, &mut owned).await;
                    republish(&client, &latest, &owned).await;
                }
                Ok(ClientEvent::HubError(e)) => tracing::warn!("hub error: {e}"),
                Ok(ClientEvent::Disconnected(why)) => tracing::warn!("lost the hub ({why}); reconnecting"),
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            },
        }
    }
}

fn update_id(u: &Update) -> &str {
    match u {
        Update::Meta(id, _)
        | Update::State(id, _, _)
        | Update::Online(id, _)
        | Update::Event(id, _) => id,
    }
}

/// Claims every device not yet owned; a refused claim is reported and skipped.
async fn claim_all(client: &Client, cfg: &AgentConfig, owned: &mut HashSet<String>) {
    for d in &cfg.devices {
        if owned.contains(&d.id) {
            continue;
        }
        match client.claim(&format!("dev/{}", d.id)).await {
            Ok(()) => {
                owned.insert(d.id.clone());
            }
            Err(e) => tracing::error!(
                device = %d.id,
                "the hub refused this agent device `{}`: {e}; it is left out and claimed again every {}s",
                d.id,
                RECLAIM_EVERY.as_secs()
            ),
        }
    }
}

/// Publishes the latest known values of every owned device.
async fn republish(client: &Client, latest: &HashMap<String, Latest>, owned: &HashSet<String>) {
    for (id, l) in latest.iter().filter(|(id, _)| owned.contains(*id)) {
        for (what, body) in [("meta", &l.meta), ("online", &l.online)] {
            if let Some(body) = body {
                let _ = retained(client, &format!("dev/{id}/{what}"), body, None).await;
            }
        }
        if let Some((state, cid)) = &l.state {
            let _ = retained(client, &format!("dev/{id}/state"), state, cid.as_deref()).await;
        }
    }
}

fn remember(latest: &mut HashMap<String, Latest>, u: Update) {
    match u {
        Update::Meta(id, v) => latest.entry(id).or_default().meta = Some(v),
        Update::State(id, v, cid) => latest.entry(id).or_default().state = Some((v, cid)),
        Update::Online(id, v) => latest.entry(id).or_default().online = Some(v),
        Update::Event(..) => {}
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

async fn publish(client: &Client, u: &Update) -> Result<(), patchbay_client::Error> {
    match u {
        Update::Meta(id, v) => retained(client, &format!("dev/{id}/meta"), v, None).await,
        Update::State(id, v, cid) => {
            retained(client, &format!("dev/{id}/state"), v, cid.as_deref()).await
        }
        Update::Online(id, v) => retained(client, &format!("dev/{id}/online"), v, None).await,
        Update::Event(id, v) => {
            client
                .publish(&format!("dev/{id}/event"), &Body::from(v))
                .await
        }
    }
}

/// Hands a request to its device's task and replies when it is done, without blocking the link.
fn dispatch(devices: &HashMap<String, mpsc::Sender<Command>>, r: Request) {
    let target = r
        .tag()
        .strip_prefix("dev/")
        .and_then(|rest| rest.strip_suffix("/set"))
        .and_then(|id| devices.get(id).map(|tx| (id.to_owned(), tx.clone())));
    tokio::spawn(async move {
        let cid = r.cid().map(str::to_owned);
        let result = match target {
            None => Err(CommandError {
                code: "unknown_request".into(),
                message: format!(
                    "this agent answers `dev/<id>/set` requests only, not `{}`",
                    r.tag()
                ),
            }),
            Some((id, tx)) => {
                let (reply_tx, reply_rx) = oneshot::channel();
                let desired = r.json::<Value>().unwrap_or(Value::Null);
                let cmd = Command {
                    desired,
                    cid: cid.clone(),
                    reply: reply_tx,
                };
                match tx.try_send(cmd) {
                    Ok(()) => reply_rx.await.unwrap_or_else(|_| {
                        Err(CommandError {
                            code: DeviceErrorCode::Offline.as_str().into(),
                            message: format!("device `{id}` stopped"),
                        })
                    }),
                    Err(mpsc::error::TrySendError::Closed(_)) => Err(CommandError {
                        code: DeviceErrorCode::Offline.as_str().into(),
                        message: format!("device `{id}` is not running"),
                    }),
                    Err(mpsc::error::TrySendError::Full(_)) => Err(CommandError {
                        code: DeviceErrorCode::Busy.as_str().into(),
                        message: format!(
                            "device `{id}` has {} commands waiting; try again",
                            crate::device::COMMAND_QUEUE
                        ),
                    }),
                }
            }
        };
        let sent = match result {
            Ok(state) => r.respond(&Body::from(&state)).await,
            Err(e) => {
                let body = ErrorBody {
                    code: e.code,
                    message: e.message,
                };
                r.respond_result(Err(&body)).await
            }
        };
        if let Err(e) = sent {
            tracing::warn!(cid = cid.as_deref().unwrap_or(""), "could not reply: {e}");
        }
    });
}
