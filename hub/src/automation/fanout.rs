//! One command to many devices: each member gets the settings it has,
//! concurrently up to a limit, and the answer says what became of each.
//! Member commands go through automation's client connection (`bus.rs`),
//! each a device command the journal records for the operator who asked.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::{Map, Value};

use super::bus::Bus;
use crate::devices::DeviceView;
use crate::journal::Who;
use crate::schema::{validate_settings, Setting};
use crate::server::{Hub, OpError, Origin};

/// What became of one member.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct MemberOutcome {
    /// Device id.
    pub id: String,
    /// `confirmed`, `failed`, or `skipped` (it has none of the settings).
    pub outcome: String,
    /// The state the device confirmed.
    #[schema(value_type = Option<Object>)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<Value>,
    /// Why it failed: `code`, `message`, and `detail`/`outcome` when known.
    #[schema(value_type = Option<Object>)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<Value>,
    /// Settings this member does not have, left out of its command.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<String>,
    /// The member's correlation id (`<cid>/<id>`), to look it up in the journal.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cid: Option<String>,
}

/// The answer to a command for a group or room.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct GroupOutcome {
    /// `all` (every member that has the settings confirmed), `some`, or `none`.
    pub status: String,
    /// Members that confirmed.
    pub confirmed: usize,
    /// Members that failed.
    pub failed: usize,
    /// Members skipped (none of the settings).
    pub skipped: usize,
    /// Each member, by id.
    pub members: Vec<MemberOutcome>,
    /// The command's correlation id.
    pub cid: String,
}

fn failed(id: &str, code: &str, message: String, cid: Option<String>) -> MemberOutcome {
    MemberOutcome {
        id: id.to_owned(),
        outcome: "failed".into(),
        state: None,
        error: Some(serde_json::json!({"code": code, "message": message})),
        skipped: Vec::new(),
        cid,
    }
}

/// A value as typed words give it (`on`, `42`), made the type this member's
/// setting takes; anything else is left for validation to judge.
fn coerce(settings: &[Setting], name: &str, v: Value) -> Value {
    let Some(text) = v.as_str() else { return v };
    let kind = settings
        .iter()
        .find(|s| s.name == name)
        .and_then(|s| serde_json::to_value(s).ok())
        .and_then(|s| s.get("type").and_then(Value::as_str).map(str::to_owned));
    match (kind.as_deref(), text) {
        (Some("bool"), "true" | "on" | "yes" | "1") => Value::Bool(true),
        (Some("bool"), "false" | "off" | "no" | "0") => Value::Bool(false),
        (Some("int"), t) => t.parse::<i64>().map(Value::from).unwrap_or(v),
        _ => v,
    }
}

/// Sends `desired` to one member through automation's connection, for
/// `who`, and waits for its answer.
async fn one(
    bus: Result<Arc<Bus>, OpError>,
    d: DeviceView,
    desired: Map<String, Value>,
    timeout: Duration,
    cid: String,
    who: Who,
) -> MemberOutcome {
    let settings: Vec<Setting> = d
        .meta
        .as_ref()
        .and_then(|m| m.get("settings"))
        .and_then(|s| serde_json::from_value(s.clone()).ok())
        .unwrap_or_default();
    let has = |k: &str| settings.iter().any(|s| s.name == k && s.writable);
    let (mine, skipped): (Map<String, Value>, Vec<String>) = {
        let mut mine = Map::new();
        let mut skipped = Vec::new();
        for (k, v) in desired {
            if has(&k) {
                let v = coerce(&settings, &k, v);
                mine.insert(k, v);
            } else {
                skipped.push(k);
            }
        }
        (mine, skipped)
    };
    if mine.is_empty() {
        return MemberOutcome {
            id: d.id,
            outcome: "skipped".into(),
            state: None,
            error: None,
            skipped,
            cid: None,
        };
    }
    let mine = Value::Object(mine);
    let cid = format!("{cid}/{}", d.id);
    let mut out = if !d.is_online() {
        failed(
            &d.id,
            "offline",
            format!(
                "device `{}` is offline: {}",
                d.id,
                d.reason().unwrap_or("no reason given")
            ),
            None,
        )
    } else if let Err(e) = validate_settings(&settings, &mine) {
        failed(&d.id, "invalid_value", e.to_string(), None)
    } else {
        match bus {
            Err(e) => failed(&d.id, e.code.as_str(), e.message, Some(cid)),
            Ok(bus) => match bus.command(&d.id, &mine, timeout, &cid, &who).await {
                Ok(state) => MemberOutcome {
                    id: d.id.clone(),
                    outcome: "confirmed".into(),
                    state: Some(state),
                    error: None,
                    skipped: Vec::new(),
                    cid: Some(cid),
                },
                Err(e) => MemberOutcome {
                    error: Some(e),
                    ..failed(&d.id, "", String::new(), Some(cid))
                },
            },
        }
    };
    out.skipped = skipped;
    out
}

/// Sends `desired` to every member, at most `concurrency` at once.
pub async fn run(
    hub: Arc<Hub>,
    members: Vec<DeviceView>,
    desired: Map<String, Value>,
    timeout: Duration,
    cid: String,
    origin: Option<Origin>,
    concurrency: usize,
) -> GroupOutcome {
    use futures_util::StreamExt;
    // At most `concurrency` members of this command at once, and at most
    // `group_concurrency` member commands across all of the hub's automation
    // (group and room commands, scenes, schedules): nothing waits in memory
    // beyond that, however many steps run in parallel.
    let shared = hub.automation_limit().clone();
    let bus = hub.bus().await;
    let access = origin.as_ref().and_then(|o| o.access.clone());
    let who = origin.map(|o| o.who).unwrap_or_default();
    // Devices the sender may not read do not exist for it: left out, unnamed.
    let mut members = members;
    if let Some(a) = &access {
        members.retain(|d| a.may_read(&format!("dev/{}", d.id)));
    }
    let mut members: Vec<MemberOutcome> = futures_util::stream::iter(members)
        .map(|d| {
            let (bus, desired, cid, who, shared) = (
                bus.clone(),
                desired.clone(),
                cid.clone(),
                who.clone(),
                shared.clone(),
            );
            let forbidden = access
                .as_ref()
                .is_some_and(|a| !a.may_write(&format!("dev/{}/set", d.id)));
            async move {
                if forbidden {
                    let why = format!(
                        "this token may not command `{}` (its `write`/`deny` rules)",
                        d.id
                    );
                    return failed(&d.id, "forbidden", why, None);
                }
                let _permit = shared.acquire_owned().await;
                one(bus, d, desired, timeout, cid, who).await
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    members.sort_by(|a, b| a.id.cmp(&b.id));
    let count = |o: &str| members.iter().filter(|m| m.outcome == o).count();
    let (confirmed, failed, skipped) = (count("confirmed"), count("failed"), count("skipped"));
    let status = match (confirmed, failed) {
        (c, 0) if c > 0 => "all",
        (c, _) if c > 0 => "some",
        _ => "none",
    };
    GroupOutcome {
        status: status.into(),
        confirmed,
        failed,
        skipped,
        members,
        cid,
    }
}
