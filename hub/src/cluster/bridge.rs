//! The bridge between one hub and the cluster. It is a client of its own
//! hub (named `cluster`, with automation's system identity) and of NATS:
//!
//! * every message published on this hub (the bridge never gets its own
//!   back) goes to the cluster: retained values into the `<prefix>_retained`
//!   bucket, the rest to the subject of its tag;
//! * what other hubs write comes back the same ways and is published here,
//!   so this hub's subscribers, snapshots and store see it like local news;
//! * requests this hub has no responder for come to the bridge and go out
//!   as NATS requests to the hub whose agent claimed the tag, which answers
//!   them through its own bridge;
//! * this hub's claims are kept as leases; expired leases of dead hubs are
//!   removed, and the devices under them get their last will.
//!
//! While NATS is away, retained changes wait (the latest per tag) and are
//! written when it returns; other messages for the cluster are dropped
//! past a bound and counted.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use async_nats::HeaderMap;
use bytes::Bytes;
use futures_util::StreamExt;
use patchbay_client::protocol::ErrorBody;
use patchbay_client::{Body, Client, PublishOptions, RequestOptions};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::sync::atomic::Ordering::Relaxed;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::leases::LeaseValue;
use super::subject::{key, subject, tag, tag_of_key};
use super::{ClusterConfig, Shared, BRIDGE_NAME};
use crate::server::Hub;

/// Retained writes to the bucket in flight at once.
const PUTS_IN_FLIGHT: usize = 64;
/// How often a quiet watch is compared with its bucket.
const STALL_CHECK: Duration = Duration::from_secs(3);
/// How long a request waits for the owner's hub to come back to NATS.
const OWNER_RECONNECT: Duration = Duration::from_secs(5);
/// Requests forwarded to other hubs at once.
const REQUESTS_IN_FLIGHT: usize = 4096;
/// How long a plain message may wait for room in NATS' queue before it is
/// dropped (meanwhile the hub's messages wait in the bridge's bounded
/// subscription, which is what holds a burst).
const PUBLISH_WAIT: Duration = Duration::from_secs(1);
/// Commands queued for the NATS connection, and messages per NATS subscription.
const NATS_QUEUE: usize = 65_536;
/// The hub's messages waiting for the cluster in the bridge (a burst beyond
/// it is dropped and counted).
const LOCAL_QUEUE: usize = 262_144;
/// How often failed writes are tried again.
const RETRY: Duration = Duration::from_secs(1);
/// Tags that stay with their hub: its automation's definitions, runs and alerts.
const LOCAL_ONLY: &[&str] = &["hub", "alert"];

/// Headers on plain messages and requests.
const H_FROM: &str = "Pb-From";
const H_CID: &str = "Pb-Cid";
const H_HUB: &str = "Pb-Hub";
const H_ERROR: &str = "Pb-Error";

/// A retained value as the bucket holds it.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    body: &'a RawValue,
}

fn envelope(hub: &str, from: &str, body: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(body.len() + hub.len() + from.len() + 32);
    out.extend_from_slice(b"{\"hub\":");
    out.extend_from_slice(serde_json::to_string(hub).unwrap_or_default().as_bytes());
    out.extend_from_slice(b",\"from\":");
    out.extend_from_slice(serde_json::to_string(from).unwrap_or_default().as_bytes());
    out.extend_from_slice(b",\"body\":");
    out.extend_from_slice(body);
    out.push(b'}');
    Bytes::from(out)
}

fn local_only(t: &str) -> bool {
    let first = t.split('/').next().unwrap_or_default();
    LOCAL_ONLY.contains(&first)
}

/// Runs the bridge until `shutdown` turns true; a bridge whose task failed
/// starts again.
pub async fn run(
    hub: Arc<Hub>,
    cfg: ClusterConfig,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        run_once(hub.clone(), cfg.clone(), shared.clone(), shutdown.clone()).await;
        if *shutdown.borrow() {
            return;
        }
        shared.ready.store(false, Relaxed);
        tokio::select! {
            _ = tokio::time::sleep(RETRY) => {}
            _ = shutdown.changed() => return,
        }
        tracing::warn!("the cluster bridge starts again");
    }
}

async fn run_once(
    hub: Arc<Hub>,
    cfg: ClusterConfig,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let local = loop {
        match hub
            .automation_link()
            .client_with(BRIDGE_NAME, |b| b.subscription_capacity(LOCAL_QUEUE))
            .await
        {
            Ok(c) => break c,
            Err(e) => tracing::warn!(
                "the cluster bridge cannot reach its hub, retrying: {}",
                e.message
            ),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.changed() => return,
        }
    };
    // Follow the hub from now on: what is published while the cluster is
    // not ready yet waits in this subscription's queue.
    let mut outbound_sub = None;
    while outbound_sub.is_none() {
        match local.subscribe(&["#"]).await {
            Ok(s) => outbound_sub = Some(s),
            Err(e) => {
                tracing::warn!("the cluster bridge cannot follow its hub, retrying: {e}");
                tokio::select! {
                    _ = tokio::time::sleep(RETRY) => {}
                    _ = shutdown.changed() => return,
                }
            }
        }
    }
    let nats = match connect(&cfg, &shared).await {
        Ok(n) => n,
        Err(e) => {
            tracing::error!("the cluster bridge cannot start: {e}");
            shared.set_status(|s| s.error = Some(e));
            return;
        }
    };
    // Requests sent before the first connection would only time out.
    while nats.connection_state() != async_nats::connection::State::Connected {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            _ = shutdown.changed() => return,
        }
    }
    // API answers come in milliseconds; a short timeout retries sooner
    // while a new cluster elects its JetStream leader.
    let js = jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(3))
        .build(nats.clone());
    let (retained, leases) = loop {
        match buckets(&js, &cfg).await {
            Ok(b) => break b,
            Err(e) => {
                tracing::warn!("the cluster's key-value buckets are not ready, retrying: {e}");
                shared.set_status(|s| s.error = Some(e));
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(RETRY) => {}
            _ = shutdown.changed() => return,
        }
    };
    shared.ready.store(true, Relaxed);
    shared.set_status(|s| s.error = None);
    tracing::info!(servers = ?cfg.nats, "the hub joined the cluster");
    let ctx = Arc::new(Ctx {
        hub,
        cfg,
        shared,
        local,
        nats,
        js,
        retained,
        leases,
        own: std::sync::Mutex::new(HashMap::new()),
    });
    let mut tasks = JoinSet::new();
    tasks.spawn(outbound(ctx.clone(), outbound_sub.expect("subscribed")));
    tasks.spawn(inbound_plain(ctx.clone()));
    tasks.spawn(inbound_retained(ctx.clone()));
    tasks.spawn(follow_leases(ctx.clone()));
    tasks.spawn(keep_leases(ctx.clone()));
    tasks.spawn(forward_requests(ctx.clone()));
    tasks.spawn(answer_requests(ctx.clone()));
    tokio::select! {
        _ = shutdown.changed() => {}
        Some(r) = tasks.join_next() => {
            tracing::error!("a cluster bridge task ended: {r:?}");
            tasks.abort_all();
            return;
        }
    }
    tasks.abort_all();
    // Leave: what this hub's agents covered is offline now (their
    // connections close with the hub), and their leases go at once.
    for (prefix, lease) in ctx.shared.leases.all() {
        if lease.value.hub != ctx.shared.me {
            continue;
        }
        let will = will(&format!(
            "agent `{}` disconnected: its hub shut down",
            lease.value.agent
        ));
        let _ = ctx
            .retained
            .put(
                key(&format!("{prefix}/online")),
                envelope(&ctx.shared.me, "hub", will.get().as_bytes()),
            )
            .await;
        let _ = ctx
            .leases
            .delete_expect_revision(key(&prefix), Some(lease.revision))
            .await;
    }
    let _ = ctx.nats.flush().await;
}

/// A last will's body.
fn will(reason: &str) -> Box<RawValue> {
    let will = serde_json::json!({
        "online": false,
        "reason": reason,
        "since": crate::server::now_ms(),
    });
    RawValue::from_string(will.to_string()).expect("json! is valid JSON")
}

async fn connect(cfg: &ClusterConfig, shared: &Arc<Shared>) -> Result<async_nats::Client, String> {
    let events = shared.clone();
    let mut opts = async_nats::ConnectOptions::new()
        .name(format!("patchbay-hub {}", shared.me))
        .no_echo()
        .client_capacity(NATS_QUEUE)
        .subscription_capacity(NATS_QUEUE)
        .retry_on_initial_connect()
        .event_callback(move |event| {
            let shared = events.clone();
            async move {
                match event {
                    async_nats::Event::Connected => {
                        tracing::info!("connected to NATS");
                        shared.nats.store(true, Relaxed);
                        shared.leases.touch_all();
                        shared.epoch.send_modify(|e| *e += 1);
                        shared.set_status(|s| s.error = None);
                    }
                    async_nats::Event::Disconnected => {
                        tracing::warn!(
                            "lost NATS; serving this hub's clients alone until it returns"
                        );
                        shared.nats.store(false, Relaxed);
                        shared.set_status(|s| s.error = Some("disconnected from NATS".into()));
                    }
                    other => tracing::info!("NATS: {other}"),
                }
            }
        });
    if let (Some(u), Some(p)) = (&cfg.user, &cfg.password) {
        opts = opts.user_and_password(u.clone(), p.clone());
    }
    if let Some(t) = &cfg.token {
        opts = opts.token(t.clone());
    }
    if let Some(ca) = &cfg.ca {
        opts = opts.add_root_certificates(ca.clone()).require_tls(true);
    }
    let servers = cfg
        .nats
        .iter()
        .map(|u| {
            u.parse::<async_nats::ServerAddr>()
                .map_err(|e| format!("`{u}` is not a NATS server address: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    opts.connect(servers)
        .await
        .map_err(|e| format!("NATS at {}: {e}", cfg.nats.join(", ")))
}

async fn buckets(
    js: &jetstream::Context,
    cfg: &ClusterConfig,
) -> Result<(kv::Store, kv::Store), String> {
    let mut out = Vec::new();
    for (name, what) in [
        ("retained", "retained values"),
        ("leases", "claims as leases"),
    ] {
        let bucket = format!("{}_{name}", cfg.prefix);
        // The bucket's stream made directly, as a key-value bucket is
        // defined (the client's own creation asks for account fields that
        // nats-server 2.9 does not send).
        let stream = jetstream::stream::Config {
            name: format!("KV_{bucket}"),
            description: Some(format!("patchbay: {what}")),
            subjects: vec![format!("$KV.{bucket}.>")],
            max_messages_per_subject: 1,
            max_bytes: -1,
            max_message_size: -1,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            num_replicas: cfg.replicas,
            discard: jetstream::stream::DiscardPolicy::New,
            ..Default::default()
        };
        js.get_or_create_stream(stream)
            .await
            .map_err(|e| format!("bucket {bucket}: {e}"))?;
        let store = js
            .get_key_value(&bucket)
            .await
            .map_err(|e| format!("bucket {bucket}: {e}"))?;
        out.push(store);
    }
    let leases = out.pop().expect("two buckets");
    let retained = out.pop().expect("two buckets");
    Ok((retained, leases))
}

/// The bucket revision of this hub's latest write per tag, until its echo
/// comes back through the watch: then, if another hub's older value was
/// applied here meanwhile, ours is applied again, so every hub ends with the
/// bucket's last value.
type OwnWrites = HashMap<String, u64>;

struct Ctx {
    hub: Arc<Hub>,
    cfg: ClusterConfig,
    shared: Arc<Shared>,
    local: Client,
    nats: async_nats::Client,
    js: jetstream::Context,
    retained: kv::Store,
    leases: kv::Store,
    own: std::sync::Mutex<OwnWrites>,
}

impl Ctx {
    fn own(&self) -> std::sync::MutexGuard<'_, OwnWrites> {
        self.own.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// This hub's messages to the cluster.
async fn outbound(ctx: Arc<Ctx>, mut sub: patchbay_client::Subscription) {
    // Retained changes not yet in the bucket: the latest per tag (`None` deletes).
    let mut unsynced: HashMap<String, Option<Bytes>> = HashMap::new();
    let mut queue: VecDeque<String> = VecDeque::new();
    let mut in_flight: HashSet<String> = HashSet::new();
    let mut puts: JoinSet<(String, Option<Bytes>, bool)> = JoinSet::new();
    let mut retry = tokio::time::interval(RETRY);
    let mut failed: Vec<String> = Vec::new();
    loop {
        while in_flight.len() < PUTS_IN_FLIGHT {
            let Some(t) = queue.pop_front() else { break };
            let Some(value) = unsynced.remove(&t) else {
                continue;
            };
            in_flight.insert(t.clone());
            let store = ctx.retained.clone();
            let own = ctx.clone();
            puts.spawn(async move {
                let k = key(&t);
                let ok = match &value {
                    Some(v) => match store.put(&k, v.clone()).await {
                        Ok(revision) => {
                            own.own().insert(t.clone(), revision);
                            true
                        }
                        Err(_) => false,
                    },
                    None => store.delete(&k).await.is_ok(),
                };
                (t, value, ok)
            });
        }
        ctx.shared
            .set_status(|s| s.unsynced = unsynced.len() + in_flight.len());
        tokio::select! {
            m = sub.next() => {
                let Some(m) = m else { return };
                let t = m.tag();
                if local_only(t) {
                    continue;
                }
                if m.is_retained() {
                    let value = (!m.is_delete()).then(|| envelope(&ctx.shared.me, m.from(), m.body()));
                    if unsynced.insert(t.to_owned(), value).is_none() && !in_flight.contains(t) {
                        queue.push_back(t.to_owned());
                    }
                } else {
                    let mut headers = HeaderMap::new();
                    headers.insert(H_FROM, m.from());
                    headers.insert(H_HUB, ctx.shared.me.as_str());
                    if let Some(cid) = m.cid() {
                        headers.insert(H_CID, cid);
                    }
                    let send = ctx.nats.publish_with_headers(
                        subject(&ctx.cfg.prefix, t),
                        headers,
                        Bytes::copy_from_slice(m.body()),
                    );
                    if !matches!(tokio::time::timeout(PUBLISH_WAIT, send).await, Ok(Ok(()))) {
                        ctx.shared.set_status(|s| s.dropped += 1);
                    }
                }
            }
            Some(done) = puts.join_next() => {
                let Ok((t, value, ok)) = done else { continue };
                in_flight.remove(&t);
                if ctx.shared.writes_ok.swap(ok, Relaxed) != ok {
                    if ok {
                        ctx.shared.leases.touch_all();
                        tracing::info!("the cluster takes writes again");
                        ctx.shared.set_status(|s| s.error = None);
                    } else {
                        tracing::warn!("the cluster does not take writes (no JetStream quorum?); local changes wait");
                        ctx.shared.set_status(|s| s.error = None);
                    }
                }
                if !ok {
                    // Keep it unless a newer value came meanwhile; try again later.
                    unsynced.entry(t.clone()).or_insert(value);
                    failed.push(t);
                } else if unsynced.contains_key(&t) {
                    queue.push_back(t);
                }
            }
            _ = retry.tick() => {
                queue.extend(failed.drain(..));
            }
        }
    }
}

/// Other hubs' plain messages, published here.
async fn inbound_plain(ctx: Arc<Ctx>) {
    let mut sub = match ctx.nats.subscribe(format!("{}.>", ctx.cfg.prefix)).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("the cluster bridge cannot subscribe: {e}");
            return;
        }
    };
    while let Some(m) = sub.next().await {
        let Some(t) = tag(&ctx.cfg.prefix, &m.subject) else {
            continue;
        };
        let Ok(body) = Body::from_json_bytes(m.payload.clone()) else {
            continue;
        };
        let cid = m
            .headers
            .as_ref()
            .and_then(|h| h.get(H_CID))
            .map(|v| v.as_str().to_owned());
        let opts = PublishOptions {
            retain: false,
            cid: cid.as_deref(),
        };
        if let Err(e) = ctx.local.publish_with(&t, &body, opts).await {
            tracing::debug!(tag = %t, "a message from the cluster was not published here: {e}");
        }
    }
}

/// Watches every key of `store` from its current values on, made again
/// after every reconnection to NATS (a consumer on a lost server is gone);
/// `apply` takes each entry.
async fn watch_bucket(ctx: &Ctx, store: &kv::Store, what: &str, mut apply: impl FnMut(kv::Entry)) {
    let mut epoch = ctx.shared.epoch.subscribe();
    let stream = format!("KV_{}_{what}", ctx.cfg.prefix);
    loop {
        epoch.mark_unchanged();
        let mut watch = match store.watch_with_history(">").await {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!("cannot watch the {what} bucket, retrying: {e}");
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        let mut last_revision = 0;
        let mut last_entry = tokio::time::Instant::now();
        let mut check = tokio::time::interval(STALL_CHECK);
        check.tick().await;
        loop {
            tokio::select! {
                entry = watch.next() => match entry {
                    Some(Ok(entry)) => {
                        last_revision = last_revision.max(entry.revision);
                        last_entry = tokio::time::Instant::now();
                        apply(entry);
                    }
                    Some(Err(e)) => {
                        tracing::info!("the {what} watch failed, watching again: {e}");
                        break;
                    }
                    None => break,
                },
                _ = epoch.changed() => break,
                // A watch whose consumer was on a server that died (while this
                // hub's own connection did not drop) goes quiet for good: when
                // the bucket has moved on and nothing came, watch again.
                _ = check.tick() => {
                    if last_entry.elapsed() < STALL_CHECK {
                        continue;
                    }
                    let newer = match ctx.js.get_stream(&stream).await {
                        Ok(mut s) => s.info().await.map(|i| i.state.last_sequence > last_revision).unwrap_or(false),
                        Err(_) => false,
                    };
                    if newer {
                        tracing::info!("the {what} watch fell behind the bucket, watching again");
                        break;
                    }
                }
            }
        }
    }
}

/// Other hubs' retained values, published here (the bucket's current
/// values first, at start and after every reconnection; a value this hub
/// already holds is not published again).
async fn inbound_retained(ctx: Arc<Ctx>) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(String, Bytes)>(8192);
    let publisher = {
        let ctx = ctx.clone();
        async move {
            while let Some((t, body)) = rx.recv().await {
                // A device claimed here: its agent's values are the truth.
                if ctx.hub.claimed_here(&t) {
                    continue;
                }
                let same = match ctx.hub.retained(&t) {
                    Some(r) => r.body().as_bytes() == &body[..],
                    None => &body[..] == b"null",
                };
                if same {
                    continue;
                }
                let Ok(body) = Body::from_json_bytes(body) else {
                    continue;
                };
                let retain = PublishOptions {
                    retain: true,
                    cid: None,
                };
                if let Err(e) = ctx.local.publish_with(&t, &body, retain).await {
                    tracing::debug!(tag = %t, "a retained value from the cluster was not published here: {e}");
                }
            }
        }
    };
    let watcher = watch_bucket(&ctx, &ctx.retained, "retained", |entry| {
        let Some(t) = tag_of_key(&entry.key) else {
            return;
        };
        let body = match entry.operation {
            kv::Operation::Put => {
                let Ok(env) = serde_json::from_slice::<Envelope>(&entry.value) else {
                    tracing::warn!(key = %entry.key, "not a patchbay value in the retained bucket");
                    return;
                };
                // Older than this hub's latest write of the tag: the bucket
                // holds ours after it, so it is not applied. Anything newer
                // (our latest write's echo included) is applied when it
                // differs from what the hub has.
                let mut own = ctx.own();
                match own.get(&t) {
                    Some(&rev) if entry.revision < rev => return,
                    Some(_) => {
                        own.remove(&t);
                    }
                    None => {}
                }
                drop(own);
                Bytes::copy_from_slice(env.body.get().as_bytes())
            }
            kv::Operation::Delete | kv::Operation::Purge => Bytes::from_static(b"null"),
        };
        if tx.try_send((t, body)).is_err() {
            // Behind: read the bucket again from its current values (those
            // already here are skipped), rather than queue without bound.
            tracing::warn!("retained values from the cluster arrive faster than this hub takes them; reading the bucket again");
            ctx.shared.epoch.send_modify(|e| *e += 1);
        }
    });
    tokio::join!(publisher, watcher);
}

/// The leases bucket into the mirror the hub checks claims against.
async fn follow_leases(ctx: Arc<Ctx>) {
    watch_bucket(&ctx, &ctx.leases, "leases", |entry| {
        let Some(prefix) = tag_of_key(&entry.key) else {
            return;
        };
        let value = match entry.operation {
            kv::Operation::Put => serde_json::from_slice::<LeaseValue>(&entry.value).ok(),
            _ => None,
        };
        let ours_before = ctx.shared.leases.held_here(&prefix);
        let ours = value.as_ref().is_some_and(|v| v.hub == ctx.shared.me);
        ctx.shared.leases.update(&prefix, value, entry.revision);
        if ours != ours_before {
            ctx.shared.leases_changed.send_modify(|n| *n += 1);
        }
    })
    .await;
}

/// This hub's claims as leases: taken, refreshed, given back; a claim the
/// cluster gave to another hub's agent is lost here; dead hubs' leases are
/// removed with their devices' last will.
async fn keep_leases(ctx: Arc<Ctx>) {
    let period = ctx.cfg.lease() / 3;
    let grace = Duration::from_millis(ctx.hub.config().claim_grace_ms);
    let mut changes = ctx.shared.claims_changed.subscribe();
    // Our leases whose claim ended, and since when.
    let mut ended: HashMap<String, tokio::time::Instant> = HashMap::new();
    loop {
        changes.mark_unchanged();
        let now = tokio::time::Instant::now();
        let claims = ctx.hub.live_claims();
        let me = ctx.shared.me.clone();
        for (prefix, principal, agent) in &claims {
            ended.remove(prefix);
            let value = LeaseValue {
                hub: me.clone(),
                principal: principal.to_string(),
                agent: agent.to_string(),
            };
            let bytes = Bytes::from(serde_json::to_vec(&value).expect("a lease serializes"));
            let k = key(prefix);
            let (result, taken) = match ctx.shared.leases.get(prefix) {
                None => (
                    ctx.leases
                        .create(&k, bytes)
                        .await
                        .map_err(|e| e.to_string()),
                    true,
                ),
                Some(l) if l.value.hub == me => (
                    ctx.leases
                        .update(&k, bytes, l.revision)
                        .await
                        .map_err(|e| e.to_string()),
                    false,
                ),
                Some(l) if !ctx.shared.leases.alive(&l, now) => (
                    ctx.leases
                        .update(&k, bytes, l.revision)
                        .await
                        .map_err(|e| e.to_string()),
                    true,
                ),
                Some(l) => {
                    // Claimed here before this hub knew of that lease (at
                    // start, or in the same instant as the other hub).
                    ctx.hub.lose_claim(
                        prefix,
                        &format!(
                            "`{prefix}` is claimed by `{}` on another hub of the cluster",
                            l.value.agent
                        ),
                    );
                    continue;
                }
            };
            // The mirror learns our own revision at once (the watch follows).
            let result = result.map(|revision| {
                ctx.shared
                    .leases
                    .update(prefix, Some(value.clone()), revision)
            });
            match result {
                Ok(()) if taken => {
                    ctx.shared.leases_changed.send_modify(|n| *n += 1);
                    resync(&ctx, prefix).await;
                }
                Ok(()) => {}
                Err(e) => {
                    // Someone else's write came first: who holds it now?
                    let holder = ctx
                        .leases
                        .entry(k.clone())
                        .await
                        .ok()
                        .flatten()
                        .filter(|e| e.operation == kv::Operation::Put)
                        .and_then(|e| serde_json::from_slice::<LeaseValue>(&e.value).ok());
                    match holder {
                        Some(h) if h.hub != me => ctx.hub.lose_claim(
                            prefix,
                            &format!(
                                "`{prefix}` is claimed by `{}` on another hub of the cluster",
                                h.agent
                            ),
                        ),
                        _ => {
                            tracing::warn!(%prefix, "the lease for this hub's claim could not be written: {e}")
                        }
                    }
                }
            }
        }
        // Cut off ourselves, we cannot tell a dead hub from our own loss.
        let connected = ctx.shared.status().connected;
        for (prefix, lease) in ctx.shared.leases.all() {
            if lease.value.hub == me && !claims.iter().any(|(p, _, _)| *p == prefix) {
                // Given back after the claim's grace (its agent may return).
                let since = *ended.entry(prefix.clone()).or_insert(now);
                if now.duration_since(since) >= grace {
                    let _ = ctx
                        .leases
                        .delete_expect_revision(key(&prefix), Some(lease.revision))
                        .await;
                    ended.remove(&prefix);
                }
            } else if lease.value.hub != me
                && !ctx.shared.leases.alive(&lease, now)
                && !claims.iter().any(|(p, _, _)| *p == prefix)
                && connected
            {
                expire(&ctx, &prefix, &lease).await;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = changes.changed() => {}
        }
    }
}

/// Writes this hub's retained values of a device it (re)gained to the
/// bucket: while its lease was elsewhere or gone, other hubs may have
/// recorded a last will over them.
async fn resync(ctx: &Ctx, prefix: &str) {
    for part in ["meta", "state", "online"] {
        let t = format!("{prefix}/{part}");
        if let Some(r) = ctx.hub.retained(&t) {
            let value = envelope(&ctx.shared.me, "hub", r.body().as_bytes());
            if let Ok(revision) = ctx.retained.put(key(&t), value).await {
                ctx.own().insert(t, revision);
            }
        }
    }
}

/// Removes a dead hub's lease (one hub wins the compare-and-set) and
/// publishes the last will of what it covered.
async fn expire(ctx: &Ctx, prefix: &str, lease: &super::leases::Lease) {
    let tombstone = LeaseValue {
        hub: ctx.shared.me.clone(),
        principal: String::new(),
        agent: format!("expired: {}", lease.value.agent),
    };
    let bytes = Bytes::from(serde_json::to_vec(&tombstone).expect("a lease serializes"));
    // Only the hub whose compare-and-set wins publishes the will.
    let Ok(revision) = ctx.leases.update(key(prefix), bytes, lease.revision).await else {
        // Changed meanwhile, or gone: a mirror entry for a key that is gone goes too.
        if matches!(ctx.leases.entry(key(prefix)).await, Ok(None)) {
            ctx.shared.leases.update(prefix, None, 0);
        }
        return;
    };
    tracing::warn!(%prefix, agent = %lease.value.agent, "a lease expired: its hub is gone");
    let body = will(&format!(
        "agent `{}` is gone: its hub stopped answering the cluster",
        lease.value.agent
    ));
    ctx.hub
        .publish_as_hub(&format!("{prefix}/online"), &body, true);
    let _ = ctx
        .leases
        .delete_expect_revision(key(prefix), Some(revision))
        .await;
}

/// Requests this hub has no responder for, sent to the hub that has one.
async fn forward_requests(ctx: Arc<Ctx>) {
    let requests = ctx.local.requests();
    let limit = Arc::new(tokio::sync::Semaphore::new(REQUESTS_IN_FLIGHT));
    while let Some(r) = requests.next().await {
        let Ok(permit) = limit.clone().acquire_owned().await else {
            return;
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let t = r.tag().to_owned();
            let mut headers = HeaderMap::new();
            headers.insert(H_FROM, r.from());
            headers.insert(H_HUB, ctx.shared.me.as_str());
            if let Some(cid) = r.cid() {
                headers.insert(H_CID, cid);
            }
            let timeout = Duration::from_millis(ctx.hub.config().max_request_timeout_ms);
            let to = subject(&format!("{}q", ctx.cfg.prefix), &t);
            let payload = Bytes::copy_from_slice(r.body());
            // "No responders" while a live lease says another hub owns the
            // tag: that hub is reconnecting to NATS (its node died); ask
            // again for a little while before saying nobody answers.
            let patience = tokio::time::Instant::now() + OWNER_RECONNECT;
            let sent = loop {
                let request = async_nats::Request::new()
                    .payload(payload.clone())
                    .headers(headers.clone())
                    .timeout(Some(timeout));
                let sent = ctx.nats.send_request(to.clone(), request).await;
                match &sent {
                    Err(e)
                        if e.kind() == async_nats::RequestErrorKind::NoResponders
                            && tokio::time::Instant::now() < patience
                            && ctx
                                .shared
                                .leases
                                .remote_owner(&t, tokio::time::Instant::now()) =>
                    {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    _ => break sent,
                }
            };
            let result = match sent {
                Ok(reply) => match reply.headers.as_ref().and_then(|h| h.get(H_ERROR)) {
                    Some(_) => match serde_json::from_slice::<ErrorBody>(&reply.payload) {
                        Ok(e) => Err(e),
                        Err(_) => Err(ErrorBody::new(
                            "unavailable",
                            "an unreadable error from another hub",
                        )),
                    },
                    None => Body::from_json_bytes(reply.payload).map_err(|_| {
                        ErrorBody::new("unavailable", "an unreadable answer from another hub")
                    }),
                },
                Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
                    Err(ErrorBody::new(
                        "no_responder",
                        format!("nobody owns or subscribes to `{t}` on any hub of the cluster"),
                    ))
                }
                Err(e) if e.kind() == async_nats::RequestErrorKind::TimedOut => Err(
                    ErrorBody::new("timeout", format!("no answer from the hub that owns `{t}`")),
                ),
                Err(e) => Err(ErrorBody::new(
                    "unavailable",
                    format!("the cluster is unreachable: {e}"),
                )),
            };
            let _ = r.respond_result(result.as_ref()).await;
        });
    }
}

/// Requests from other hubs for tags claimed here (whose lease this hub
/// holds), asked of the local owner.
async fn answer_requests(ctx: Arc<Ctx>) {
    let mut changes = ctx.shared.claims_changed.subscribe();
    let mut leases = ctx.shared.leases_changed.subscribe();
    let mut tasks = JoinSet::new();
    let mut serving: HashMap<String, tokio::task::AbortHandle> = HashMap::new();
    let limit = Arc::new(tokio::sync::Semaphore::new(REQUESTS_IN_FLIGHT));
    loop {
        changes.mark_unchanged();
        leases.mark_unchanged();
        let claims: HashSet<String> = ctx
            .hub
            .live_claims()
            .into_iter()
            .map(|(p, _, _)| p)
            .filter(|p| ctx.shared.leases.held_here(p))
            .collect();
        serving.retain(|p, task| {
            let keep = claims.contains(p) && !task.is_finished();
            if !keep {
                task.abort();
            }
            keep
        });
        for prefix in claims {
            if let std::collections::hash_map::Entry::Vacant(slot) = serving.entry(prefix) {
                let prefix = slot.key().clone();
                slot.insert(tasks.spawn(serve_prefix(ctx.clone(), prefix, limit.clone())));
            }
        }
        // Leases change without a claim changing: look again now and then.
        tokio::select! {
            _ = changes.changed() => {}
            _ = leases.changed() => {}
            _ = tokio::time::sleep(RETRY) => {}
            Some(_) = tasks.join_next() => {}
        }
    }
}

async fn serve_prefix(ctx: Arc<Ctx>, prefix: String, limit: Arc<tokio::sync::Semaphore>) {
    let base = subject(&format!("{}q", ctx.cfg.prefix), &prefix);
    let (mut exact, mut below) = loop {
        match (
            ctx.nats.subscribe(base.clone()).await,
            ctx.nats.subscribe(format!("{base}.>")).await,
        ) {
            (Ok(a), Ok(b)) => break (a, b),
            _ => {
                tracing::warn!(%prefix, "cannot take requests from the cluster for this claim yet, retrying");
                tokio::time::sleep(RETRY).await;
            }
        }
    };
    let qprefix = format!("{}q", ctx.cfg.prefix);
    loop {
        let m = tokio::select! {
            Some(m) = exact.next() => m,
            Some(m) = below.next() => m,
            else => return,
        };
        let (Some(reply_to), Some(t)) = (m.reply.clone(), tag(&qprefix, &m.subject)) else {
            continue;
        };
        let Ok(permit) = limit.clone().acquire_owned().await else {
            return;
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let cid = m
                .headers
                .as_ref()
                .and_then(|h| h.get(H_CID))
                .map(|v| v.as_str().to_owned());
            let timeout = Duration::from_millis(ctx.hub.config().max_request_timeout_ms);
            let result = match Body::from_json_bytes(m.payload.clone()) {
                Ok(body) => {
                    let opts = RequestOptions {
                        timeout: Some(timeout),
                        cid: cid.as_deref(),
                        on_behalf: None,
                    };
                    ctx.local.request_with(&t, &body, opts).await
                }
                Err(e) => Err(e),
            };
            let (headers, payload) = match result {
                Ok(reply) => (HeaderMap::new(), Bytes::copy_from_slice(reply.body())),
                Err(e) => {
                    let body = match e {
                        patchbay_client::Error::Hub(b) => b,
                        other => ErrorBody::new("unavailable", other.to_string()),
                    };
                    let mut h = HeaderMap::new();
                    h.insert(H_ERROR, body.code.as_str());
                    (
                        h,
                        Bytes::from(serde_json::to_vec(&body).unwrap_or_default()),
                    )
                }
            };
            let _ = ctx
                .nats
                .publish_with_headers(reply_to, headers, payload)
                .await;
        });
    }
}
