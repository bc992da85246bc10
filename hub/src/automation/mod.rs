//! Venue operations: rooms (every device with the same `location`), groups
//! (named selectors), and one command for all their members at once.
//!
//! Automation is a client of the hub: group and room commands, scene runs,
//! schedules and alerts talk through one client-library connection to the
//! hub's own wire port (`bus.rs`), as any controller would. Each member of
//! a group command is its own device command, sent `for` the operator who
//! asked, so the journal records every one with that operator.

pub mod alerts;
pub mod bus;
pub mod definitions;
pub mod fanout;
pub mod groups;
pub mod scenes;
pub mod schedules;
pub mod webhook;

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::protocol::ErrorCode;
use crate::server::{now_ms, ConnId, Hub, OpError, Origin};

/// The tag a wire client sends `{"scene": NAME}` to, to run a scene.
pub const SCENE_RUN: &str = "hub/scenes/run";

/// The tag a wire client sends `{"run": ID}` to, to cancel a scene run.
pub const SCENE_CANCEL: &str = "hub/scenes/cancel";

/// The tag a wire client sends a group or room command to.
pub const VENUE_SET: &str = "hub/venue/set";

/// The body of a `req` to [`VENUE_SET`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VenueCommand {
    /// A group's name (or `room`).
    #[serde(default)]
    pub group: Option<String>,
    /// A room's name (or `group`).
    #[serde(default)]
    pub room: Option<String>,
    /// The desired settings.
    pub settings: Map<String, Value>,
    /// How long each member may take, in milliseconds.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// The correlation id (each member's command gets `<cid>/<id>`).
    #[serde(default)]
    pub cid: Option<String>,
}

/// Checks a wire group or room command; returns the selector and what it
/// names, or `bad_frame` for a command of the wrong shape and
/// `no_responder` for an unknown group or room.
pub fn check_command(hub: &Hub, c: &VenueCommand) -> Result<(groups::GroupSpec, String), OpError> {
    let shape = |m: &str| OpError::new(ErrorCode::BadFrame, format!("`{VENUE_SET}`: {m}"));
    if c.settings.is_empty() {
        return Err(shape("`settings` must name at least one setting"));
    }
    if c.group.is_some() == c.room.is_some() {
        return Err(shape("give either `group` or `room`"));
    }
    let unknown = |m: String| OpError::new(ErrorCode::NoResponder, m);
    match (&c.group, &c.room) {
        (Some(g), _) => groups::find(hub, g)
            .map(|(_, s)| (s, format!("group {g}")))
            .ok_or_else(|| unknown(format!("no group `{g}`"))),
        (None, Some(r)) if groups::rooms(hub).iter().any(|x| &x.name == r) => Ok((
            groups::GroupSpec {
                location: Some(r.clone()),
                ..groups::GroupSpec::default()
            },
            format!("room {r}"),
        )),
        (_, r) => Err(unknown(format!(
            "no room `{}`",
            r.as_deref().unwrap_or_default()
        ))),
    }
}

/// Runs a checked wire command for `conn`.
pub async fn run_command(
    hub: Arc<Hub>,
    conn: ConnId,
    c: VenueCommand,
    spec: groups::GroupSpec,
    subject: String,
) -> fanout::GroupOutcome {
    let who = hub.who(conn).unwrap_or_default();
    let cid = c
        .cid
        .clone()
        .unwrap_or_else(|| format!("venue-{:x}-{conn:x}", now_ms()));
    let members = groups::all_devices(&hub)
        .into_iter()
        .filter(|d| spec.matches(d))
        .collect();
    let max = hub.config().max_request_timeout_ms;
    let timeout = Duration::from_millis(c.timeout_ms.unwrap_or(max).clamp(1, max));
    let origin = Origin {
        who: who.clone(),
        received_ms: now_ms(),
        access: hub.identity(conn).and_then(|i| i.access),
    };
    let concurrency = hub.config().group_concurrency;
    let outcome = fanout::run(
        hub.clone(),
        members,
        c.settings.clone(),
        timeout,
        cid.clone(),
        Some(origin),
        concurrency,
    )
    .await;
    hub.audit(
        "group_run",
        who,
        subject,
        format!(
            "{} (cid {cid}): {}; {} confirmed, {} failed, {} skipped",
            Value::Object(c.settings),
            outcome.status,
            outcome.confirmed,
            outcome.failed,
            outcome.skipped
        ),
    );
    outcome
}
