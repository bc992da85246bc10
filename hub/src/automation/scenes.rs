//! Scenes: named, ordered steps (settings on a device, group or room; wait
//! for a device to reach a state; a delay; steps in parallel), run on
//! request. A run's progress is a retained message, `hub/scene-runs/<id>`,
//! rewritten at every step, so anyone can follow it live or read it later.
//! Runs publish, command and wait through automation's client connection
//! (`bus.rs`), like any controller.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::bus::Bus;
use super::fanout;
use super::groups::{self, GroupSpec};
use crate::journal::Who;
use crate::server::{now_ms, Hub, Origin};

/// Where runs are published.
pub const RUNS_PREFIX: &str = "hub/scene-runs";

/// Runs kept as retained values; older ones are deleted.
const RUNS_KEPT: usize = 200;

/// What a failed step does to the rest of the scene.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// Stop: the remaining steps are skipped.
    #[default]
    Stop,
    /// Go on with the next step.
    Continue,
}

/// One step. Exactly one of `set`, `wait`, `delay_ms` or `parallel`; `set`
/// names one of `device`, `group` or `room`, `wait` a `device`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// The device a `set` or `wait` is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// The group a `set` is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// The room a `set` is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
    /// Settings to send, e.g. `{power = "on"}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub set: Option<Map<String, Value>>,
    /// State to wait for, e.g. `{power = "on"}` (every field must match).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub wait: Option<Map<String, Value>>,
    /// How long a `set` or `wait` may take, in milliseconds (default 120000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// A pause, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
    /// Steps run at the same time; the step fails if any of them does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(no_recursion)]
    pub parallel: Option<Vec<Step>>,
    /// What this step's failure does (default: the scene's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_error: Option<OnError>,
}

/// A scene.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Scene {
    /// A name for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// What a failed step does (default `stop`).
    #[serde(default)]
    pub on_error: OnError,
    /// May two runs overlap? (default no: a second gets 409)
    #[serde(default)]
    pub allow_concurrent: bool,
    /// The steps, in order.
    pub steps: Vec<Step>,
}

const DEFAULT_TIMEOUT_MS: u64 = 120_000;

/// Longest a step may wait or take, in milliseconds (an hour).
pub const MAX_TIMEOUT_MS: u64 = 3_600_000;

/// Most steps in a scene, those inside `parallel` included.
pub const MAX_STEPS: usize = 256;

/// Runs of all scenes under way at once; one more is refused.
pub const MAX_RUNS: usize = 64;

impl Step {
    /// What the step does, in words.
    pub fn describe(&self) -> String {
        let target = match (&self.device, &self.group, &self.room) {
            (Some(d), _, _) => d.clone(),
            (_, Some(g), _) => format!("group {g}"),
            (_, _, Some(r)) => format!("room {r}"),
            _ => String::new(),
        };
        let fields = |m: &Map<String, Value>| {
            m.iter()
                .map(|(k, v)| match v {
                    Value::String(s) => format!("{k}={s}"),
                    v => format!("{k}={v}"),
                })
                .collect::<Vec<_>>()
                .join(" ")
        };
        if let Some(s) = &self.set {
            format!("set {target} {}", fields(s))
        } else if let Some(w) = &self.wait {
            format!("wait until {target} {}", fields(w))
        } else if let Some(ms) = self.delay_ms {
            format!("wait {ms} ms")
        } else if let Some(p) = &self.parallel {
            format!(
                "at once: {}",
                p.iter().map(Step::describe).collect::<Vec<_>>().join("; ")
            )
        } else {
            String::new()
        }
    }

    /// Refuses a step that does not say one thing clearly; `groups` are the known groups.
    pub fn check(&self, groups: &dyn Fn(&str) -> bool) -> Result<(), String> {
        let actions = [
            self.set.is_some(),
            self.wait.is_some(),
            self.delay_ms.is_some(),
            self.parallel.is_some(),
        ];
        if actions.iter().filter(|a| **a).count() != 1 {
            return Err(
                "a step does exactly one of `set`, `wait`, `delay_ms` or `parallel`".into(),
            );
        }
        let targets = [&self.device, &self.group, &self.room]
            .iter()
            .filter(|t| t.is_some())
            .count();
        if let Some(s) = &self.set {
            if targets != 1 {
                return Err("a `set` step names one of `device`, `group` or `room`".into());
            }
            if s.is_empty() {
                return Err("`set` names no setting".into());
            }
        }
        if let Some(w) = &self.wait {
            if self.device.is_none() || targets != 1 {
                return Err("a `wait` step names a `device`".into());
            }
            if w.is_empty() {
                return Err("`wait` names no state field".into());
            }
        }
        if (self.delay_ms.is_some() || self.parallel.is_some()) && targets != 0 {
            return Err("a `delay_ms` or `parallel` step names no device, group or room".into());
        }
        if let Some(d) = &self.device {
            crate::tag::validate_tag(&format!("dev/{d}"))
                .map_err(|e| format!("`device`: `{d}` is not a device id: {e}"))?;
        }
        if let Some(g) = &self.group {
            if !groups(g) {
                return Err(format!("no group `{g}`"));
            }
        }
        if self
            .timeout_ms
            .is_some_and(|t| t == 0 || t > MAX_TIMEOUT_MS)
        {
            return Err(format!(
                "`timeout_ms` must be from 1 to {MAX_TIMEOUT_MS} (an hour)"
            ));
        }
        if let Some(p) = &self.parallel {
            if p.is_empty() {
                return Err("`parallel` lists no steps".into());
            }
            for (i, s) in p.iter().enumerate() {
                s.check(groups).map_err(|e| format!("parallel[{i}]: {e}"))?;
            }
        }
        Ok(())
    }
}

impl Scene {
    /// Refuses a scene with no steps or a step that is wrong, naming the step.
    pub fn check(&self, groups: &dyn Fn(&str) -> bool) -> Result<(), String> {
        if self.steps.is_empty() {
            return Err("a scene needs at least one step".into());
        }
        fn count(steps: &[Step]) -> usize {
            steps
                .iter()
                .map(|s| 1 + s.parallel.as_deref().map_or(0, count))
                .sum()
        }
        let n = count(&self.steps);
        if n > MAX_STEPS {
            return Err(format!(
                "a scene has at most {MAX_STEPS} steps, those inside `parallel` included; this one has {n}"
            ));
        }
        for (i, s) in self.steps.iter().enumerate() {
            s.check(groups)
                .map_err(|e| format!("step {} ({}): {e}", i + 1, s.describe()))?;
        }
        Ok(())
    }
}

/// Where scenes defined through the API are kept.
pub const SCENES_PREFIX: &str = "hub/scenes";

/// A scene by name, config first, then those defined through the API.
pub fn find(hub: &Hub, name: &str) -> Option<(groups::Origin, Scene)> {
    super::definitions::find(hub, &hub.config().scenes, SCENES_PREFIX, name)
}

/// Every scene: the config's, then the API's.
pub fn all(hub: &Hub) -> Vec<(String, groups::Origin, Scene)> {
    super::definitions::all(hub, &hub.config().scenes, SCENES_PREFIX)
}

/// Checks a scene defined through the API against what the hub knows now:
/// every group, room and device it names exists, and every device has the
/// settings and state fields it names, with valid values.
pub fn check_known(hub: &Hub, scene: &Scene) -> Result<(), String> {
    let devices = groups::all_devices(hub);
    let rooms: HashSet<&str> = devices.iter().map(|d| d.meta_str("location")).collect();
    let known_group = |g: &str| groups::find(hub, g).is_some();
    scene.check(&known_group)?;
    fn walk<'a>(steps: &'a [Step], out: &mut Vec<(String, &'a Step)>, prefix: &str) {
        for (i, s) in steps.iter().enumerate() {
            let label = format!("{prefix}{}", i + 1);
            match &s.parallel {
                Some(p) => walk(p, out, &format!("{label}.")),
                None => out.push((label, s)),
            }
        }
    }
    let mut steps = Vec::new();
    walk(&scene.steps, &mut steps, "");
    for (label, step) in steps {
        let at = |e: String| format!("step {label} ({}): {e}", step.describe());
        if let Some(r) = &step.room {
            if !rooms.contains(r.as_str()) {
                return Err(at(format!("no room `{r}`")));
            }
        }
        let Some(id) = &step.device else { continue };
        let Some(d) = devices.iter().find(|d| &d.id == id) else {
            return Err(at(format!("no device `{id}`")));
        };
        let settings: Vec<crate::schema::Setting> = d
            .meta
            .as_ref()
            .and_then(|m| m.get("settings"))
            .and_then(|s| serde_json::from_value(s.clone()).ok())
            .unwrap_or_default();
        if let Some(set) = &step.set {
            crate::schema::validate_settings(&settings, &Value::Object(set.clone()))
                .map_err(|e| at(format!("`{id}`: {e}")))?;
        }
        if let Some(wait) = &step.wait {
            for k in wait.keys() {
                if !settings.iter().any(|s| &s.name == k) {
                    return Err(at(format!("`{id}` reports no `{k}`")));
                }
            }
        }
    }
    Ok(())
}

/// One step of a run, as it is published.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StepProgress {
    /// The step, in words.
    pub what: String,
    /// `pending`, `running`, `done`, `failed` or `skipped`.
    pub status: String,
    /// When it started (Unix ms).
    pub started: Option<u64>,
    /// When it ended (Unix ms).
    pub finished: Option<u64>,
    /// What happened, in words (for a failure: why).
    pub detail: Option<String>,
}

/// A run of a scene, as it is published at `hub/scene-runs/<id>`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Run {
    /// The run's id.
    pub id: u64,
    /// The scene.
    pub scene: String,
    /// `running`, `done`, `failed` (a step failed; see the steps),
    /// `cancelled`, or `interrupted` (the hub stopped during the run).
    pub status: String,
    /// Who started it.
    pub who: Who,
    /// When it started (Unix ms).
    pub started: u64,
    /// When it ended (Unix ms).
    pub finished: Option<u64>,
    /// Each step.
    pub steps: Vec<StepProgress>,
}

/// Why a run did not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// No such scene.
    #[error("no scene `{0}`")]
    Unknown(String),
    /// It is already running and does not allow a second run.
    #[error("scene `{0}` is already running (run {1}); it does not allow two runs at once")]
    Running(String, u64),
    /// Too many runs are under way.
    #[error(
        "{0} scene runs are under way, the most the hub runs at once; try again when one ends"
    )]
    TooMany(usize),
    /// Automation cannot reach the hub.
    #[error("{0}")]
    Unavailable(String),
}

/// Starts runs and keeps track of the ones under way.
#[derive(Default)]
pub struct Runner {
    next: AtomicU64,
    running: Mutex<BTreeMap<String, HashSet<u64>>>,
    kept: Mutex<std::collections::VecDeque<u64>>,
    /// How to cancel each run under way: send who cancels it.
    cancels: Mutex<BTreeMap<u64, tokio::sync::watch::Sender<Option<String>>>>,
}

impl Runner {
    /// A runner whose run ids start after any a previous hub instance used.
    pub fn new() -> Self {
        Runner {
            next: AtomicU64::new(now_ms()),
            ..Runner::default()
        }
    }

    /// Starts scene `name` for `who`; returns the run's id once the run
    /// is published (so it can be read at once).
    pub async fn start(&self, hub: &Arc<Hub>, name: &str, who: Who) -> Result<u64, RunError> {
        let scene = find(hub, name)
            .map(|(_, s)| s)
            .ok_or_else(|| RunError::Unknown(name.to_owned()))?;
        let bus = hub
            .bus()
            .await
            .map_err(|e| RunError::Unavailable(e.message))?;
        let id = {
            let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
            let total: usize = running.values().map(HashSet::len).sum();
            if total >= MAX_RUNS {
                return Err(RunError::TooMany(total));
            }
            let runs = running.entry(name.to_owned()).or_default();
            if let (false, Some(other)) = (scene.allow_concurrent, runs.iter().next()) {
                return Err(RunError::Running(name.to_owned(), *other));
            }
            let id = self.next.fetch_add(1, Ordering::Relaxed);
            runs.insert(id);
            id
        };
        let run = Run {
            id,
            scene: name.to_owned(),
            status: "running".into(),
            who: who.clone(),
            started: now_ms(),
            finished: None,
            steps: scene
                .steps
                .iter()
                .map(|s| StepProgress {
                    what: s.describe(),
                    status: "pending".into(),
                    started: None,
                    finished: None,
                    detail: None,
                })
                .collect(),
        };
        publish(&bus, &run).await;
        hub.audit(
            "scene_run",
            who,
            format!("scene {name}"),
            format!("run {id} started"),
        );
        let hub = hub.clone();
        let name = name.to_owned();
        let (cancel_tx, cancel) = tokio::sync::watch::channel(None);
        self.cancels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, cancel_tx);
        tokio::spawn(async move {
            let run = execute(&hub, &bus, scene, run, cancel).await;
            let runner = hub.scenes();
            runner
                .cancels
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&run.id);
            runner
                .running
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(name.clone())
                .or_default()
                .remove(&run.id);
            publish(&bus, &run).await;
            runner.keep(&bus, run.id).await;
            tracing::info!(scene = %name, run = run.id, status = %run.status, "scene run ended");
        });
        Ok(id)
    }

    /// Cancels a run under way: the step running stops, the rest are
    /// skipped, and the run ends `cancelled`. False if it is not running.
    pub fn cancel(&self, hub: &Hub, id: u64, who: Who) -> bool {
        let cancels = self.cancels.lock().unwrap_or_else(|p| p.into_inner());
        let Some(tx) = cancels.get(&id) else {
            return false;
        };
        let name = who.token.clone().unwrap_or_else(|| who.client.clone());
        let _ = tx.send(Some(name));
        hub.audit("scene_run", who, format!("run {id}"), "cancelled".into());
        true
    }

    /// Keeps the newest runs retained and deletes the oldest.
    async fn keep(&self, bus: &Bus, id: u64) {
        let old: Vec<u64> = {
            let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
            kept.push_back(id);
            let extra = kept.len().saturating_sub(RUNS_KEPT);
            kept.drain(..extra).collect()
        };
        for old in old {
            if let Err(e) = bus
                .retain(&format!("{RUNS_PREFIX}/{old}"), &Value::Null)
                .await
            {
                tracing::warn!(run = old, "an old scene run could not be deleted: {e}");
            }
        }
    }
}

/// At start: the runs a previous hub instance left `running` are marked
/// `interrupted` (their unfinished steps skipped), and the runs kept from
/// before count toward the newest kept, so the oldest are deleted first.
pub async fn tidy_after_restart(hub: Arc<Hub>) {
    if hub.retained_children(RUNS_PREFIX).is_empty() {
        return;
    }
    let Ok(bus) = hub.bus().await else {
        return;
    };
    let pattern = format!("{RUNS_PREFIX}/+");
    let Ok(mut sub) = bus.watch(&[pattern.as_str()]).await else {
        return;
    };
    let runs = sub.snapshot().await.unwrap_or_default();
    drop(sub);
    let mut ids = Vec::new();
    for m in runs {
        let Ok(mut run) = m.json::<Run>() else {
            continue;
        };
        ids.push(run.id);
        if run.status != "running" {
            continue;
        }
        run.status = "interrupted".into();
        run.finished = Some(now_ms());
        for s in &mut run.steps {
            if s.status == "running" || s.status == "pending" {
                s.status = "skipped".into();
                s.detail = Some("the hub stopped during the run".into());
            }
        }
        tracing::warn!(run = run.id, scene = %run.scene, "a scene run was interrupted by the hub stopping");
        publish(&bus, &run).await;
    }
    ids.sort_unstable();
    let runner = hub.scenes();
    let mut kept = runner.kept.lock().unwrap_or_else(|p| p.into_inner());
    for id in ids.into_iter().rev() {
        if !kept.contains(&id) {
            kept.push_front(id);
        }
    }
}

async fn publish(bus: &Bus, run: &Run) {
    let body = serde_json::to_value(run).expect("a run serializes");
    if let Err(e) = bus
        .retain(&format!("{RUNS_PREFIX}/{}", run.id), &body)
        .await
    {
        tracing::warn!(
            run = run.id,
            "scene run progress could not be published: {e}"
        );
    }
}

/// Runs the steps in order, publishing progress; returns the final run.
async fn execute(
    hub: &Arc<Hub>,
    bus: &Bus,
    scene: Scene,
    mut run: Run,
    mut cancel: tokio::sync::watch::Receiver<Option<String>>,
) -> Run {
    let origin = Origin {
        who: run.who.clone(),
        received_ms: now_ms(),
        access: None,
    };
    let mut stopped = false;
    let mut failed = false;
    let mut cancelled: Option<String> = None;
    for (i, step) in scene.steps.iter().enumerate() {
        if let Some(by) = &cancelled {
            run.steps[i].status = "skipped".into();
            run.steps[i].detail = Some(format!("the run was cancelled by {by}"));
            continue;
        }
        if stopped {
            run.steps[i].status = "skipped".into();
            run.steps[i].detail = Some("an earlier step failed".into());
            continue;
        }
        run.steps[i].status = "running".into();
        run.steps[i].started = Some(now_ms());
        publish(bus, &run).await;
        let cid = format!("scene-{}-{}", run.id, i + 1);
        let result = tokio::select! {
            r = step_result(hub, bus, step, &cid, &origin) => r,
            by = cancel.wait_for(Option::is_some) => {
                let by = by.ok().and_then(|b| b.clone()).unwrap_or_else(|| "someone".into());
                cancelled = Some(by.clone());
                Err(format!("cancelled by {by}"))
            }
        };
        let p = &mut run.steps[i];
        p.finished = Some(now_ms());
        match result {
            Ok(detail) => {
                p.status = "done".into();
                p.detail = detail;
            }
            Err(why) => {
                p.status = "failed".into();
                p.detail = Some(why);
                failed = true;
                stopped = step.on_error.unwrap_or(scene.on_error) == OnError::Stop;
            }
        }
        publish(bus, &run).await;
    }
    // The run stays `running` until every step has its final status.
    run.status = match (&cancelled, failed) {
        (Some(_), _) => "cancelled",
        (None, true) => "failed",
        (None, false) => "done",
    }
    .into();
    run.finished = Some(now_ms());
    // Published by the caller once the run is no longer under way, so a
    // reader who sees it ended can run the scene again or not cancel it.
    run
}

/// Runs one step; `Ok` carries what happened, `Err` why it failed.
fn step_result<'a>(
    hub: &'a Arc<Hub>,
    bus: &'a Bus,
    step: &'a Step,
    cid: &'a str,
    origin: &'a Origin,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Option<String>, String>> + Send + 'a>>
{
    Box::pin(async move {
        let timeout = Duration::from_millis(step.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS));
        if let Some(ms) = step.delay_ms {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            return Ok(None);
        }
        if let Some(parallel) = &step.parallel {
            let runs = parallel.iter().enumerate().map(|(i, s)| async move {
                let cid = format!("{cid}.{}", i + 1);
                step_result(hub, bus, s, &cid, origin)
                    .await
                    .map_err(|e| format!("{}: {e}", s.describe()))
            });
            let results = futures_util::future::join_all(runs).await;
            let failures: Vec<String> = results.into_iter().filter_map(Result::err).collect();
            return if failures.is_empty() {
                Ok(None)
            } else {
                Err(failures.join("; "))
            };
        }
        if let Some(want) = &step.wait {
            let id = step.device.as_deref().unwrap_or_default();
            return wait_for(bus, id, want, timeout).await;
        }
        let settings = step.set.clone().unwrap_or_default();
        let spec = match (&step.device, &step.group, &step.room) {
            (Some(d), _, _) => GroupSpec {
                ids: vec![d.clone()],
                ..GroupSpec::default()
            },
            (_, Some(g), _) => groups::find(hub, g)
                .map(|(_, s)| s)
                .ok_or_else(|| format!("no group `{g}`"))?,
            (_, _, Some(r)) => GroupSpec {
                location: Some(r.clone()),
                ..GroupSpec::default()
            },
            _ => return Err("the step names no device, group or room".into()),
        };
        let members: Vec<_> = groups::all_devices(hub)
            .into_iter()
            .filter(|d| spec.matches(d))
            .collect();
        if members.is_empty() {
            return Err("no device matches".into());
        }
        let out = fanout::run(
            hub.clone(),
            members,
            settings,
            timeout,
            cid.to_owned(),
            Some(origin.clone()),
            hub.config().group_concurrency,
        )
        .await;
        let failed: Vec<String> = out
            .members
            .iter()
            .filter(|m| m.outcome == "failed")
            .map(|m| {
                let why = m
                    .error
                    .as_ref()
                    .and_then(|e| e.get("message"))
                    .and_then(Value::as_str);
                format!("{}: {}", m.id, why.unwrap_or("failed"))
            })
            .collect();
        if out.confirmed == 0 && failed.is_empty() {
            return Err("no device has these settings".into());
        }
        if failed.is_empty() {
            Ok(Some(format!("{} confirmed", out.confirmed)))
        } else {
            Err(failed.join("; "))
        }
    })
}

/// Waits until every field of `want` is in the device's state, following
/// the device's messages (a subscription with a snapshot).
async fn wait_for(
    bus: &Bus,
    id: &str,
    want: &Map<String, Value>,
    timeout: Duration,
) -> Result<Option<String>, String> {
    let deadline = tokio::time::Instant::now() + timeout;
    let tags = [
        format!("dev/{id}/meta"),
        format!("dev/{id}/state"),
        format!("dev/{id}/online"),
    ];
    let patterns: Vec<&str> = tags.iter().map(String::as_str).collect();
    let mut sub = bus
        .watch(&patterns)
        .await
        .map_err(|e| format!("cannot follow `{id}`: {e}"))?;
    /// What the wait has seen of the device.
    #[derive(Default)]
    struct Seen {
        meta: bool,
        state: Value,
        online: Value,
    }
    impl Seen {
        fn take(&mut self, m: &patchbay_client::Message) {
            let v: Value = m.json().unwrap_or(Value::Null);
            match m.tag().rsplit('/').next() {
                Some("meta") => self.meta = !v.is_null(),
                Some("state") => self.state = v,
                Some("online") => self.online = v,
                _ => {}
            }
        }
    }
    let mut seen = Seen::default();
    let snapshot = sub
        .snapshot()
        .await
        .map_err(|e| format!("cannot follow `{id}`: {e}"))?;
    snapshot.iter().for_each(|m| seen.take(m));
    if !seen.meta {
        return Err(format!("no device `{id}`"));
    }
    loop {
        let Seen { state, online, .. } = &seen;
        // Offline only when the device says so; unknown (`null`) keeps waiting.
        if online.get("online") == Some(&Value::Bool(false)) {
            let why = online
                .get("reason")
                .and_then(Value::as_str)
                .unwrap_or("no reason given");
            return Err(format!("device `{id}` is offline: {why}"));
        }
        if want.iter().all(|(k, v)| state.get(k) == Some(v)) {
            return Ok(None);
        }
        match tokio::time::timeout_at(deadline, sub.next()).await {
            Ok(Some(m)) => seen.take(&m),
            Ok(None) => return Err(format!("lost the hub while waiting for `{id}`")),
            Err(_) => {
                let now: Vec<String> = want
                    .keys()
                    .map(|k| {
                        format!(
                            "{k}={}",
                            state.get(k).map_or("unknown".into(), |v| v.to_string())
                        )
                    })
                    .collect();
                return Err(format!(
                    "`{id}` did not reach the state within {} ms (it is {})",
                    timeout.as_millis(),
                    now.join(" ")
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(toml_text: &str) -> Step {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn steps_say_one_thing() {
        let known = |g: &str| g == "projectors";
        assert!(step("device = 'p1'\nset = { power = 'on' }")
            .check(&known)
            .is_ok());
        assert!(step("group = 'projectors'\nset = { power = 'off' }")
            .check(&known)
            .is_ok());
        assert!(
            step("device = 'p1'\nwait = { power = 'on' }\ntimeout_ms = 60000")
                .check(&known)
                .is_ok()
        );
        assert!(step("delay_ms = 500").check(&known).is_ok());
        let err = |t: &str| step(t).check(&known).unwrap_err();
        assert!(err("group = 'nope'\nset = { power = 'off' }").contains("no group `nope`"));
        assert!(err("device = 'p1'\nset = { power = 'on' }\ndelay_ms = 5").contains("exactly one"));
        assert!(err("room = 'Hall'\nwait = { power = 'on' }").contains("names a `device`"));
        assert!(err("set = { power = 'on' }").contains("names one of"));
        assert!(
            err("parallel = [{ group = 'nope', set = { power = 'on' } }]")
                .contains("parallel[0]: no group")
        );
        let scene = Scene {
            steps: vec![
                step("delay_ms = 1"),
                step("group = 'x'\nset = { power = 'on' }"),
            ],
            ..Scene::default()
        };
        let big = Scene {
            steps: vec![step("delay_ms = 1"); MAX_STEPS + 1],
            ..Scene::default()
        };
        assert!(big.check(&known).unwrap_err().contains("at most 256 steps"));
        assert!(
            err("device = 'p1'\nwait = { power = 'on' }\ntimeout_ms = 100000000")
                .contains("an hour")
        );
        let e = scene.check(&known).unwrap_err();
        assert!(
            e.starts_with("step 2 (set group x power=on): no group `x`"),
            "{e}"
        );
    }
}
