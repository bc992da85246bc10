//! Scenes over HTTP: list them, run one, read a run's progress.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use super::auth::Caller;
use super::definitions::{self, Asker, Kind};
use super::error::{ApiError, ErrorResponse};
use super::AppState;
use crate::automation::definitions::Origin as Defined;
use crate::automation::scenes::{RunError, Scene, RUNS_PREFIX};
use crate::automation::schedules::{Schedule, SCHEDULES_PREFIX};

/// A scene as listed.
#[derive(Serialize, utoipa::ToSchema)]
pub struct SceneInfo {
    /// Its name.
    pub name: String,
    /// Where it was defined.
    pub origin: crate::automation::groups::Origin,
    /// Its definition.
    pub scene: Scene,
}

/// A run that started.
#[derive(Serialize, utoipa::ToSchema)]
pub struct RunStarted {
    /// The run's id: read it at `GET /api/scene-runs/{id}`.
    pub run: u64,
    /// The retained tag its progress is published on.
    pub tag: String,
}

/// Every scene, from the config and the API.
#[utoipa::path(get, path = "/api/scenes", tag = "venue",
    responses((status = 200, body = Vec<SceneInfo>), (status = 401, body = ErrorResponse)))]
pub async fn list(State(st): State<AppState>, _caller: Caller) -> Json<Vec<SceneInfo>> {
    Json(
        crate::automation::scenes::all(&st.hub)
            .into_iter()
            .map(|(name, origin, scene)| SceneInfo {
                name,
                origin,
                scene,
            })
            .collect(),
    )
}

/// Scenes, as definitions.
const SCENE: Kind = Kind {
    noun: "scene",
    prefix: crate::automation::scenes::SCENES_PREFIX,
    defined: "scene_defined",
    deleted: "scene_deleted",
};

/// Schedules, as definitions.
const SCHEDULE: Kind = Kind {
    noun: "schedule",
    prefix: SCHEDULES_PREFIX,
    defined: "schedule_defined",
    deleted: "schedule_deleted",
};

/// Defines (or redefines) a scene through the API (admin). It is checked
/// against what the hub knows now: every device, group, room, setting and
/// value it names must exist, or it is refused naming the step.
#[utoipa::path(put, path = "/api/scenes/{name}", tag = "venue",
    params(("name" = String, Path, description = "Scene name: 1 to 64 letters, digits, `-`, `_`, `.`")),
    request_body(content = Scene, description = "The scene"),
    responses((status = 200, body = SceneInfo), (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse),
        (status = 403, body = ErrorResponse), (status = 409, description = "Defined in the config file", body = ErrorResponse)))]
pub async fn put(
    State(st): State<AppState>,
    caller: Caller,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<SceneInfo>, ApiError> {
    let asker = Asker {
        caller: &caller,
        peer,
        headers: &headers,
    };
    let in_config = st.hub.config().scenes.contains_key(&name);
    let scene = definitions::define(&st, asker, &SCENE, &name, in_config, &body, |s| {
        crate::automation::scenes::check_known(&st.hub, s)
    })?;
    Ok(Json(SceneInfo {
        name,
        origin: Defined::Api,
        scene,
    }))
}

/// Deletes a scene defined through the API (admin).
#[utoipa::path(delete, path = "/api/scenes/{name}", tag = "venue",
    params(("name" = String, Path, description = "Scene name")),
    responses((status = 204, description = "Deleted"), (status = 401, body = ErrorResponse), (status = 403, body = ErrorResponse),
        (status = 404, body = ErrorResponse), (status = 409, description = "Defined in the config file", body = ErrorResponse)))]
pub async fn delete(
    State(st): State<AppState>,
    caller: Caller,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let asker = Asker {
        caller: &caller,
        peer,
        headers: &headers,
    };
    let found = crate::automation::scenes::find(&st.hub, &name).map(|(o, _)| o);
    definitions::undefine(&st, asker, &SCENE, &name, found, &[])
}

/// Starts a scene; answers at once with the run's id. Progress is at
/// `GET /api/scene-runs/{id}` and on the retained tag `hub/scene-runs/<id>`.
#[utoipa::path(post, path = "/api/scenes/{name}/run", tag = "venue",
    params(("name" = String, Path, description = "Scene name")),
    responses((status = 202, body = RunStarted), (status = 401, body = ErrorResponse), (status = 403, body = ErrorResponse),
        (status = 404, body = ErrorResponse), (status = 409, description = "Already running", body = ErrorResponse)))]
pub async fn run(
    State(st): State<AppState>,
    caller: Caller,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    caller.require_operator()?;
    match st
        .hub
        .scenes()
        .start(&st.hub, &name, caller.who(peer, &headers))
        .await
    {
        Ok(run) => Ok((
            StatusCode::ACCEPTED,
            Json(RunStarted {
                run,
                tag: format!("{RUNS_PREFIX}/{run}"),
            }),
        )
            .into_response()),
        Err(e @ RunError::Unknown(_)) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            e.to_string(),
        )),
        Err(e @ (RunError::Running(..) | RunError::TooMany(_))) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            e.to_string(),
        )),
        Err(e @ RunError::Unavailable(_)) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            e.to_string(),
        )),
    }
}

/// Cancels a run under way (operator): the running step stops, the rest
/// are skipped, and the run ends `cancelled`.
#[utoipa::path(post, path = "/api/scene-runs/{id}/cancel", tag = "venue",
    params(("id" = u64, Path, description = "Run id")),
    responses((status = 202, description = "Cancelling"), (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse),
        (status = 403, body = ErrorResponse), (status = 404, description = "No such run under way", body = ErrorResponse)))]
pub async fn cancel(
    State(st): State<AppState>,
    caller: Caller,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    caller.require_operator()?;
    let id: u64 = id
        .parse()
        .map_err(|_| ApiError::bad_request("the run id is a number"))?;
    if st
        .hub
        .scenes()
        .cancel(&st.hub, id, caller.who(peer, &headers))
    {
        Ok(StatusCode::ACCEPTED)
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no scene run {id} under way"),
        ))
    }
}

/// A run's progress: each step's status, with why a step failed.
#[utoipa::path(get, path = "/api/scene-runs/{id}", tag = "venue",
    params(("id" = u64, Path, description = "Run id")),
    responses((status = 200, body = crate::automation::scenes::Run), (status = 400, body = ErrorResponse),
        (status = 401, body = ErrorResponse), (status = 404, body = ErrorResponse)))]
pub async fn show(
    State(st): State<AppState>,
    _caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id: u64 = id
        .parse()
        .map_err(|_| ApiError::bad_request(format!("`{id}` is not a run id")))?;
    let r = st
        .hub
        .retained(&format!("{RUNS_PREFIX}/{id}"))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no scene run {id}"),
            )
        })?;
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        r.body().to_owned(),
    )
        .into_response())
}

/// A schedule with its next runs and what it did.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ScheduleInfo {
    /// Its name.
    pub name: String,
    /// Where it was defined.
    pub origin: Defined,
    /// Its definition.
    pub schedule: Schedule,
    /// What it does, in words.
    pub action: String,
    /// The next three run times (RFC 3339, UTC).
    pub next: Vec<String>,
    /// The same, in Unix ms.
    pub next_ms: Vec<u64>,
    /// Its last run and the runs it missed, when the scheduler has looked at it.
    pub state: Option<crate::automation::schedules::ScheduleState>,
}

fn schedule_info(st: &AppState, name: String, origin: Defined, s: Schedule) -> ScheduleInfo {
    use crate::automation::schedules::{parse_cron, parse_zone, state_of, upcoming};
    let next = match (parse_cron(&s.cron), parse_zone(&s.timezone)) {
        (Ok(c), Ok(z)) => upcoming(&c, z, chrono::Utc::now(), 3),
        _ => Vec::new(),
    };
    ScheduleInfo {
        state: state_of(&st.hub, &name),
        name,
        origin,
        action: s.action(),
        schedule: s,
        next: next.iter().map(|t| t.to_rfc3339()).collect(),
        next_ms: next
            .iter()
            .map(|t| t.timestamp_millis().max(0) as u64)
            .collect(),
    }
}

/// Every schedule, from the config and the API, with its next run times,
/// its last run and the runs it missed (after downtime they are reported,
/// never run late).
#[utoipa::path(get, path = "/api/schedules", tag = "venue",
    responses((status = 200, body = Vec<ScheduleInfo>), (status = 401, body = ErrorResponse)))]
pub async fn schedules(State(st): State<AppState>, _caller: Caller) -> Json<Vec<ScheduleInfo>> {
    Json(
        crate::automation::schedules::all(&st.hub)
            .into_iter()
            .map(|(name, origin, s)| schedule_info(&st, name, origin, s))
            .collect(),
    )
}

/// Defines (or redefines) a schedule through the API (admin). Its cron
/// times and time zone must parse, and the scene, group or room it names
/// must exist now; it takes effect at once.
#[utoipa::path(put, path = "/api/schedules/{name}", tag = "venue",
    params(("name" = String, Path, description = "Schedule name: 1 to 64 letters, digits, `-`, `_`, `.`")),
    request_body(content = Schedule, description = "The schedule"),
    responses((status = 200, body = ScheduleInfo), (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse),
        (status = 403, body = ErrorResponse), (status = 409, description = "Defined in the config file", body = ErrorResponse)))]
pub async fn put_schedule(
    State(st): State<AppState>,
    caller: Caller,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<ScheduleInfo>, ApiError> {
    let asker = Asker {
        caller: &caller,
        peer,
        headers: &headers,
    };
    let in_config = st.hub.config().schedules.contains_key(&name);
    let schedule = definitions::define(&st, asker, &SCHEDULE, &name, in_config, &body, |s| {
        crate::automation::schedules::check_known(&st.hub, s)
    })?;
    st.hub.automation_link().schedules_changed();
    Ok(Json(schedule_info(&st, name, Defined::Api, schedule)))
}

/// Deletes a schedule defined through the API (admin), with its state.
#[utoipa::path(delete, path = "/api/schedules/{name}", tag = "venue",
    params(("name" = String, Path, description = "Schedule name")),
    responses((status = 204, description = "Deleted"), (status = 401, body = ErrorResponse), (status = 403, body = ErrorResponse),
        (status = 404, body = ErrorResponse), (status = 409, description = "Defined in the config file", body = ErrorResponse)))]
pub async fn delete_schedule(
    State(st): State<AppState>,
    caller: Caller,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let asker = Asker {
        caller: &caller,
        peer,
        headers: &headers,
    };
    let found = crate::automation::schedules::find(&st.hub, &name).map(|(o, _)| o);
    let state = format!("{SCHEDULES_PREFIX}/{name}/state");
    let done = definitions::undefine(&st, asker, &SCHEDULE, &name, found, &[state])?;
    st.hub.automation_link().schedules_changed();
    Ok(done)
}
