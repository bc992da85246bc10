//! The agent's connection to the hub: claims each device's subtree,
//! publishes what device tasks report (and re-publishes everything after a
//! reconnect), and routes `dev/<id>/set` requests to the device's task.

use std::collections::HashMap;
use std::time::Duration;

use patchbay_hub::client::{connect, Client, ClientOptions, Event, Request};
use patchbay_hub::protocol::ErrorBody;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};

use crate::backoff::Backoff;
use crate::config::AgentConfig;
use crate::device::{Command, CommandError, Update};

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
    let opts = ClientOptions {
        name: cfg.name.clone(),
        token: cfg.token.clone(),
    };
    loop {
        let session = tokio::select! {
            _ = shutdown.changed() => return,
            s = open(&cfg, &opts, &latest) => s,
        };
        let (client, mut events) = match session {
            Ok(s) => s,
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
                continue;
            }
        };
        backoff.reset();
        tracing::info!(hub = %cfg.hub, devices = devices.len(), "connected to hub");
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                Some(u) = updates.recv() => {
                    if let Err(e) = publish(&client, &u).await {
                        tracing::warn!("publish failed: {e}");
                    }
                    remember(&mut latest, u);
                }
                ev = events.next() => match ev {
                    Some(Event::Request(r)) => dispatch(&client, &devices, r),
                    Some(Event::Error(e)) => tracing::warn!("hub error: {e}"),
                    Some(Event::Message(_)) => {}
                    None => {
                        tracing::warn!("lost the hub connection; reconnecting");
                        break;
                    }
                },
            }
        }
    }
}

/// Connects, claims every device and re-publishes what is known.
async fn open(
    cfg: &AgentConfig,
    opts: &ClientOptions,
    latest: &HashMap<String, Latest>,
) -> Result<(Client, patchbay_hub::client::Events), patchbay_hub::client::ClientError> {
    let (client, events) = connect(&cfg.hub, opts).await?;
    for d in &cfg.devices {
        client.claim(&format!("dev/{}", d.id)).await?;
    }
    for (id, l) in latest {
        for (what, body) in [("meta", &l.meta), ("online", &l.online)] {
            if let Some(body) = body {
                client
                    .publish_confirmed(&format!("dev/{id}/{what}"), body, true, None)
                    .await?;
            }
        }
        if let Some((state, cid)) = &l.state {
            client
                .publish_confirmed(&format!("dev/{id}/state"), state, true, cid.as_deref())
                .await?;
        }
    }
    Ok((client, events))
}

fn remember(latest: &mut HashMap<String, Latest>, u: Update) {
    match u {
        Update::Meta(id, v) => latest.entry(id).or_default().meta = Some(v),
        Update::State(id, v, cid) => latest.entry(id).or_default().state = Some((v, cid)),
        Update::Online(id, v) => latest.entry(id).or_default().online = Some(v),
        Update::Event(..) => {}
    }
}

async fn publish(client: &Client, u: &Update) -> Result<(), patchbay_hub::client::ClientError> {
    match u {
        Update::Meta(id, v) => client
            .publish_confirmed(&format!("dev/{id}/meta"), v, true, None)
            .await
            .map(drop),
        Update::State(id, v, cid) => client
            .publish_confirmed(&format!("dev/{id}/state"), v, true, cid.as_deref())
            .await
            .map(drop),
        Update::Online(id, v) => client
            .publish_confirmed(&format!("dev/{id}/online"), v, true, None)
            .await
            .map(drop),
        Update::Event(id, v) => client.publish(&format!("dev/{id}/event"), v, false).await,
    }
}

/// Hands a request to its device's task and replies when it is done, without blocking the link.
fn dispatch(client: &Client, devices: &HashMap<String, mpsc::Sender<Command>>, r: Request) {
    let client = client.clone();
    let target = r
        .tag
        .strip_prefix("dev/")
        .and_then(|rest| rest.strip_suffix("/set"))
        .and_then(|id| devices.get(id).map(|tx| (id.to_owned(), tx.clone())));
    tokio::spawn(async move {
        let result = match target {
            None => Err(CommandError {
                code: "unknown_request".into(),
                message: format!(
                    "this agent answers `dev/<id>/set` requests only, not `{}`",
                    r.tag
                ),
            }),
            Some((id, tx)) => {
                let (reply_tx, reply_rx) = oneshot::channel();
                let cmd = Command {
                    desired: r.body,
                    cid: r.cid.clone(),
                    reply: reply_tx,
                };
                match tx.try_send(cmd) {
                    Ok(()) => reply_rx.await.unwrap_or_else(|_| {
                        Err(CommandError {
                            code: "offline".into(),
                            message: format!("device `{id}` stopped"),
                        })
                    }),
                    Err(_) => Err(CommandError {
                        code: "busy".into(),
                        message: format!(
                            "device `{id}` has {} commands waiting; try again",
                            crate::device::COMMAND_QUEUE
                        ),
                    }),
                }
            }
        };
        let sent = match result {
            Ok(state) => client.reply(r.rid, Ok(&state)).await,
            Err(e) => {
                let body = ErrorBody {
                    code: e.code,
                    message: e.message,
                };
                client.reply(r.rid, Err(&body)).await
            }
        };
        if let Err(e) = sent {
            tracing::warn!(cid = r.cid.as_deref().unwrap_or(""), "could not reply: {e}");
        }
    });
}
