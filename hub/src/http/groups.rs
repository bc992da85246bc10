//! Rooms and groups over HTTP: list them, define groups, and send one
//! command to every member.

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::Value;

use super::auth::Caller;
use super::definitions::{self, Asker, Kind};
use super::devices::{correlation_id, PatchQuery};
use super::error::{ApiError, ErrorResponse};
use super::AppState;
use crate::automation::fanout::{self, GroupOutcome};
use crate::automation::groups::{self, GroupInfo, GroupSpec, RoomInfo};
use crate::server::{now_ms, Origin};

/// Groups, as definitions.
const GROUP: Kind = Kind {
    noun: "group",
    prefix: groups::GROUPS_PREFIX,
    defined: "group_defined",
    deleted: "group_deleted",
};

fn unknown_group(name: &str) -> ApiError {
    definitions::unknown(&GROUP, name)
}

/// Every room (devices sharing a `location`), with its devices.
#[utoipa::path(get, path = "/api/rooms", tag = "venue",
    responses((status = 200, body = Vec<RoomInfo>), (status = 401, body = ErrorResponse)))]
pub async fn rooms(State(st): State<AppState>, caller: Caller) -> Json<Vec<RoomInfo>> {
    Json(groups::rooms_seen(&st.hub, |id| caller.sees_device(id)))
}

/// Every group, from the config and the API, with its members now.
#[utoipa::path(get, path = "/api/groups", tag = "venue",
    responses((status = 200, body = Vec<GroupInfo>), (status = 401, body = ErrorResponse)))]
pub async fn list(State(st): State<AppState>, caller: Caller) -> Json<Vec<GroupInfo>> {
    Json(groups::list_seen(&st.hub, |id| caller.sees_device(id)))
}

/// One group with its members now.
#[utoipa::path(get, path = "/api/groups/{name}", tag = "venue",
    params(("name" = String, Path, description = "Group name")),
    responses((status = 200, body = GroupInfo), (status = 401, body = ErrorResponse), (status = 404, body = ErrorResponse)))]
pub async fn show(
    State(st): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<GroupInfo>, ApiError> {
    groups::list_seen(&st.hub, |id| caller.sees_device(id))
        .into_iter()
        .find(|g| g.name == name)
        .map(Json)
        .ok_or_else(|| unknown_group(&name))
}

/// Defines (or redefines) a group made through the API. Needs the `admin` role.
#[utoipa::path(put, path = "/api/groups/{name}", tag = "venue",
    params(("name" = String, Path, description = "Group name: 1 to 64 letters, digits, `-`, `_`, `.`")),
    request_body(content = GroupSpec, description = "The selector; a device belongs when it matches every criterion given"),
    responses((status = 200, body = GroupInfo), (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse),
        (status = 403, body = ErrorResponse), (status = 409, description = "Defined in the config file", body = ErrorResponse)))]
pub async fn put(
    State(st): State<AppState>,
    caller: Caller,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<GroupInfo>, ApiError> {
    let asker = Asker {
        caller: &caller,
        peer,
        headers: &headers,
    };
    let in_config = st.hub.config().groups.contains_key(&name);
    definitions::define(
        &st,
        asker,
        &GROUP,
        &name,
        in_config,
        &body,
        GroupSpec::check,
    )?;
    show(State(st), caller, Path(name)).await
}

/// Deletes a group made through the API. Needs the `admin` role.
#[utoipa::path(delete, path = "/api/groups/{name}", tag = "venue",
    params(("name" = String, Path, description = "Group name")),
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
    let found = groups::find(&st.hub, &name).map(|(o, _)| o);
    definitions::undefine(&st, asker, &GROUP, &name, found, &[])
}

/// Sends the settings to every member of a group or room.
#[allow(clippy::too_many_arguments)]
async fn command_all(
    st: AppState,
    caller: Result<Caller, ApiError>,
    peer: SocketAddr,
    what: &str,
    name: &str,
    spec: Option<GroupSpec>,
    query: Result<Query<PatchQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let caller = match caller.and_then(|c| c.require_operator().map(|()| c)) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let Some(spec) = spec else {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no {what} `{}`", groups::shown(name)),
        )
        .into_response();
    };
    let q = match query {
        Ok(Query(q)) => q,
        Err(e) => return ApiError::bad_request(e.body_text()).into_response(),
    };
    let max = st.hub.config().max_request_timeout_ms;
    if q.timeout_ms.is_some_and(|t| !(1..=max).contains(&t)) {
        return ApiError::bad_request(format!("`timeout_ms` must be from 1 to {max}"))
            .into_response();
    }
    let desired = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(m)) if !m.is_empty() => m,
        Ok(_) => {
            return ApiError::bad_request(
                "desired settings must be a non-empty JSON object such as {\"power\":\"on\"}",
            )
            .into_response()
        }
        Err(e) => {
            return ApiError::bad_request(format!("the body is not valid JSON: {e}"))
                .into_response()
        }
    };
    let cid = correlation_id(&headers);
    let members: Vec<_> = groups::all_devices(&st.hub)
        .into_iter()
        .filter(|d| spec.matches(d))
        .collect();
    let who = caller.who(peer, &headers);
    let origin = Origin {
        who: who.clone(),
        received_ms: now_ms(),
        access: caller.access.clone(),
    };
    tracing::info!(%cid, members = members.len(), "{what} `{name}` command");
    let outcome: GroupOutcome = fanout::run(
        st.hub.clone(),
        members,
        desired.clone(),
        Duration::from_millis(q.timeout_ms.unwrap_or(max)),
        cid.clone(),
        Some(origin),
        st.hub.config().group_concurrency,
    )
    .await;
    st.hub.audit(
        "group_run",
        who,
        format!("{what} {name}"),
        format!(
            "{} (cid {cid}): {}; {} confirmed, {} failed, {} skipped",
            Value::Object(desired),
            outcome.status,
            outcome.confirmed,
            outcome.failed,
            outcome.skipped
        ),
    );
    Json(outcome).into_response()
}

/// Sends the settings to every member of a group, concurrently, and answers
/// with each member's outcome and whether all, some or none succeeded.
#[utoipa::path(patch, path = "/api/groups/{name}", tag = "venue",
    params(("name" = String, Path, description = "Group name"), PatchQuery,
        ("x-correlation-id" = Option<String>, Header, description = "Correlation id; each member's command gets `<cid>/<id>`")),
    request_body(content = Object, description = "Desired settings, e.g. {\"power\":\"off\"}"),
    responses((status = 200, body = GroupOutcome), (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse),
        (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse)))]
#[allow(clippy::too_many_arguments)]
pub async fn patch(
    State(st): State<AppState>,
    caller: Result<Caller, ApiError>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(name): Path<String>,
    query: Result<Query<PatchQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let spec = groups::find(&st.hub, &name).map(|(_, s)| s);
    command_all(st, caller, peer, "group", &name, spec, query, headers, body).await
}

/// Sends the settings to every device in a room (its `location`).
#[utoipa::path(patch, path = "/api/rooms/{name}", tag = "venue",
    params(("name" = String, Path, description = "Room name (the devices' `location`)"), PatchQuery,
        ("x-correlation-id" = Option<String>, Header, description = "Correlation id; each member's command gets `<cid>/<id>`")),
    request_body(content = Object, description = "Desired settings, e.g. {\"power\":\"on\"}"),
    responses((status = 200, body = GroupOutcome), (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse),
        (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse)))]
#[allow(clippy::too_many_arguments)]
pub async fn patch_room(
    State(st): State<AppState>,
    caller: Result<Caller, ApiError>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(name): Path<String>,
    query: Result<Query<PatchQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let exists = groups::rooms(&st.hub).iter().any(|r| r.name == name);
    let spec = exists.then(|| GroupSpec {
        location: Some(name.clone()),
        ..GroupSpec::default()
    });
    command_all(st, caller, peer, "room", &name, spec, query, headers, body).await
}
