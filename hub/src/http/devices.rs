//! Device discovery, status and commands. The registry is a view over the
//! hub's retained store (`dev/<id>/meta|state|online`), never a second copy.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::auth::Caller;
use super::error::{ApiError, ErrorResponse};
use super::AppState;
use crate::devices::{DeviceView, DEVICE_PATTERNS};
use crate::schema::{validate_settings, Setting};
use crate::server::Hub;

/// The correlation id header, accepted on requests and returned on responses.
pub const CORRELATION_HEADER: &str = "x-correlation-id";

/// Shortest wait a command may ask for.
pub const MIN_TIMEOUT_MS: u64 = 10_000;

/// A device in the list. Built from the retained values without copying
/// them: strings and the state are borrowed from the store's frames.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeviceSummary<'a> {
    /// Device id.
    pub id: &'a str,
    /// Display name.
    pub name: Cow<'a, str>,
    /// Room or location.
    pub location: Cow<'a, str>,
    /// Driver name.
    pub driver: Cow<'a, str>,
    /// Manufacturer.
    pub manufacturer: Cow<'a, str>,
    /// Model.
    pub model: Cow<'a, str>,
    /// Reachable now?
    pub online: bool,
    /// Why not, when offline.
    pub reason: Option<Cow<'a, str>>,
    /// Current state.
    #[schema(value_type = Object)]
    pub state: Option<&'a RawValue>,
    /// Last change to any of its retained values, Unix milliseconds.
    pub updated_ms: u64,
}

/// The fields of `dev/<id>/meta` the list shows.
#[derive(Default, Deserialize)]
struct MetaHead<'a> {
    #[serde(borrow, default)]
    name: Cow<'a, str>,
    #[serde(borrow, default)]
    location: Cow<'a, str>,
    #[serde(borrow, default)]
    driver: Cow<'a, str>,
    #[serde(borrow, default)]
    manufacturer: Cow<'a, str>,
    #[serde(borrow, default)]
    model: Cow<'a, str>,
}

/// The fields of `dev/<id>/online` the list shows.
#[derive(Default, Deserialize)]
struct OnlineHead<'a> {
    #[serde(default)]
    online: bool,
    #[serde(borrow, default)]
    reason: Option<Cow<'a, str>>,
}

/// One device in full.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeviceDetail {
    /// Device id.
    pub id: String,
    /// Description and settings schema.
    #[schema(value_type = Object)]
    pub meta: Value,
    /// Current state.
    #[schema(value_type = Object)]
    pub state: Value,
    /// Reachability: `{"online", "reason", "since"}`.
    #[schema(value_type = Object)]
    pub online: Value,
    /// Last change to any of its retained values, Unix milliseconds.
    pub updated_ms: u64,
}

/// Filters for the device list.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only devices that are (or are not) reachable.
    pub online: Option<bool>,
    /// Only devices with this driver.
    pub driver: Option<String>,
    /// Only devices in this location (case-insensitive).
    pub location: Option<String>,
    /// Free text matched against id, name, location, manufacturer and model.
    pub q: Option<String>,
}

/// Options for a command.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PatchQuery {
    /// How long to wait for the device, in milliseconds: at least 10000, since
    /// commands on AV hardware routinely take seconds (default: the hub's `max_request_timeout_ms`).
    #[param(minimum = 10000)]
    pub timeout_ms: Option<u64>,
}

/// Devices sorted by id, each with the time of its latest retained change.
/// Only devices with a description (`meta`) are listed.
fn registry(hub: &Hub, id: Option<&str>) -> Vec<(DeviceView, u64)> {
    let retained: Vec<(std::sync::Arc<str>, crate::server::Retained)> = match id {
        // One device: three direct lookups, whatever the size of the store.
        Some(id) => ["meta", "state", "online"]
            .iter()
            .filter_map(|p| {
                let tag = format!("dev/{id}/{p}");
                hub.retained(&tag).map(|r| (std::sync::Arc::from(tag), r))
            })
            .collect(),
        None => {
            let patterns: Vec<String> = DEVICE_PATTERNS.iter().map(|p| p.to_string()).collect();
            hub.retained_matching(&patterns)
        }
    };
    // One pass, hashed by id (borrowed from the tags); one sort at the end.
    let mut by_id: std::collections::HashMap<&str, (DeviceView, u64)> =
        std::collections::HashMap::new();
    for (tag, r) in &retained {
        let Some((id, part)) = crate::devices::split_tag(tag) else {
            continue;
        };
        let (view, updated) = by_id.entry(id).or_insert_with(|| {
            let view = DeviceView {
                id: id.to_owned(),
                ..DeviceView::default()
            };
            (view, 0)
        });
        *updated = (*updated).max(r.time_ms);
        let body = serde_json::from_str(r.body()).unwrap_or(Value::Null);
        match part {
            "meta" => view.meta = Some(body),
            "state" => view.state = Some(body),
            "online" => view.online = Some(body),
            _ => {}
        }
    }
    let mut out: Vec<(DeviceView, u64)> = by_id
        .into_values()
        .filter(|(v, _)| v.meta.is_some())
        .collect();
    out.sort_unstable_by(|a, b| a.0.id.cmp(&b.0.id));
    out
}

fn matches(s: &DeviceSummary<'_>, q: &ListQuery) -> bool {
    let ci = |a: &str, b: &str| a.eq_ignore_ascii_case(b);
    q.online.is_none_or(|o| s.online == o)
        && q.driver.as_deref().is_none_or(|d| ci(&s.driver, d))
        && q.location.as_deref().is_none_or(|l| ci(&s.location, l))
        && q.q.as_deref().is_none_or(|text| {
            let text = text.to_lowercase();
            [s.id, &s.name, &s.location, &s.manufacturer, &s.model]
                .iter()
                .any(|f| f.to_lowercase().contains(&text))
        })
}

/// Is `id` usable as the middle segment of a device tag?
fn valid_id(id: &str) -> bool {
    !id.contains('/') && crate::tag::validate_tag(&format!("dev/{id}/state")).is_ok()
}

/// Lists devices, optionally filtered.
#[utoipa::path(get, path = "/api/devices", tag = "devices", params(ListQuery),
    responses((status = 200, body = [DeviceSummary]), (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse)))]
pub async fn list(
    State(st): State<AppState>,
    _caller: Caller,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let patterns: Vec<String> = DEVICE_PATTERNS.iter().map(|p| p.to_string()).collect();
    let retained = st.hub.retained_matching(&patterns);
    // (meta, state, online, last change) per id, all borrowed from `retained`.
    type Slot<'a> = (
        Option<MetaHead<'a>>,
        Option<&'a RawValue>,
        OnlineHead<'a>,
        u64,
    );
    let mut by_id: HashMap<&str, Slot<'_>> = HashMap::with_capacity(retained.len() / 3 + 1);
    for (tag, r) in &retained {
        let Some((id, part)) = crate::devices::split_tag(tag) else {
            continue;
        };
        let slot = by_id.entry(id).or_default();
        slot.3 = slot.3.max(r.time_ms);
        match part {
            "meta" => slot.0 = Some(serde_json::from_str(r.body()).unwrap_or_default()),
            "state" => slot.1 = serde_json::from_str(r.body()).ok(),
            "online" => slot.2 = serde_json::from_str(r.body()).unwrap_or_default(),
            _ => {}
        }
    }
    let mut out: Vec<DeviceSummary<'_>> = by_id
        .into_iter()
        .filter_map(|(id, (meta, state, online, updated_ms))| {
            let meta = meta?;
            Some(DeviceSummary {
                id,
                name: meta.name,
                location: meta.location,
                driver: meta.driver,
                manufacturer: meta.manufacturer,
                model: meta.model,
                online: online.online,
                reason: online.reason,
                state,
                updated_ms,
            })
        })
        .filter(|s| matches(s, &q))
        .collect();
    out.sort_unstable_by(|a, b| a.id.cmp(b.id));
    Ok(Json(out).into_response())
}

/// One device: description, state, reachability and last change.
#[utoipa::path(get, path = "/api/devices/{id}", tag = "devices", params(("id" = String, Path, description = "Device id", example = "proj-1")),
    responses((status = 200, body = DeviceDetail), (status = 404, body = ErrorResponse), (status = 401, body = ErrorResponse)))]
pub async fn show(
    State(st): State<AppState>,
    _caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<DeviceDetail>, ApiError> {
    if !valid_id(&id) {
        return Err(ApiError::unknown_device(&id));
    }
    let (v, t) = registry(&st.hub, Some(&id))
        .pop()
        .ok_or_else(|| ApiError::unknown_device(&id))?;
    Ok(Json(DeviceDetail {
        id: v.id,
        meta: v.meta.unwrap_or(Value::Null),
        state: v.state.unwrap_or(Value::Null),
        online: v.online.unwrap_or(Value::Null),
        updated_ms: t,
    }))
}

/// The request's correlation id if it is usable, else a new one.
fn correlation_id(headers: &HeaderMap) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    headers
        .get(CORRELATION_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(|| {
            format!(
                "http-{:x}-{}",
                crate::server::now_ms(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            )
        })
}

/// Changes settings: validated against the device's schema, then sent to
/// the agent that owns the device; answers with the state the device confirms.
#[utoipa::path(patch, path = "/api/devices/{id}", tag = "devices",
    params(("id" = String, Path, description = "Device id", example = "proj-1"), PatchQuery,
        ("x-correlation-id" = Option<String>, Header, description = "Correlation id; generated when absent, returned either way")),
    request_body(content = Object, description = "Desired settings, e.g. {\"power\":\"on\"}"),
    responses(
        (status = 200, description = "The confirmed state", body = Object),
        (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse), (status = 403, body = ErrorResponse),
        (status = 404, body = ErrorResponse), (status = 409, description = "Device busy", body = ErrorResponse),
        (status = 422, description = "Invalid setting or value", body = ErrorResponse),
        (status = 502, body = ErrorResponse), (status = 503, description = "Device or agent offline", body = ErrorResponse),
        (status = 504, description = "Device did not answer in time", body = ErrorResponse)))]
pub async fn patch(
    State(st): State<AppState>,
    caller: Result<Caller, ApiError>,
    Path(id): Path<String>,
    query: Result<Query<PatchQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let cid = correlation_id(&headers);
    let span = tracing::info_span!("command", device = %id, cid = %cid);
    let result = {
        let _enter = span.enter();
        command(&st, caller, &id, query, &body, &cid)
    };
    let result = match result {
        Ok(answer) => wait(answer, &id).await,
        Err(e) => Err(e),
    };
    let mut res = match result {
        Ok(state) => {
            tracing::info!(device = %id, cid = %cid, "command confirmed");
            let mut r = (StatusCode::OK, state.get().to_owned()).into_response();
            r.headers_mut().insert(
                axum::http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r
        }
        Err(e) => {
            tracing::info!(device = %id, cid = %cid, code = %e.detail.code, "command failed: {}", e.detail.message);
            e.into_response()
        }
    };
    if let Ok(v) = HeaderValue::from_str(&cid) {
        res.headers_mut()
            .insert(HeaderName::from_static(CORRELATION_HEADER), v);
    }
    res
}

/// Checks the command and sends it; returns where the answer will arrive.
fn command(
    st: &AppState,
    caller: Result<Caller, ApiError>,
    id: &str,
    query: Result<Query<PatchQuery>, QueryRejection>,
    body: &[u8],
    cid: &str,
) -> Result<(crate::server::Answer, Duration), ApiError> {
    caller?.require_operator()?;
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    if !valid_id(id) {
        return Err(ApiError::unknown_device(id));
    }
    let desired: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))?;
    let (view, _) = registry(&st.hub, Some(id))
        .pop()
        .ok_or_else(|| ApiError::unknown_device(id))?;
    let settings: Vec<Setting> = view
        .meta
        .as_ref()
        .and_then(|m| m.get("settings"))
        .and_then(|s| serde_json::from_value(s.clone()).ok())
        .unwrap_or_default();
    validate_settings(&settings, &desired)?;
    if !view.is_online() {
        let reason = view.reason().unwrap_or("no reason given");
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "offline",
            format!("device `{id}` is offline: {reason}"),
        ));
    }
    let max = st.hub.config().max_request_timeout_ms;
    if q.timeout_ms.is_some_and(|t| t < MIN_TIMEOUT_MS) {
        return Err(ApiError::bad_request(format!(
            "`timeout_ms` must be at least {MIN_TIMEOUT_MS}"
        )));
    }
    let timeout = Duration::from_millis(q.timeout_ms.unwrap_or(max).min(max));
    let raw = RawValue::from_string(desired.to_string())
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let answer = st
        .hub
        .request_internal(&format!("dev/{id}/set"), &raw, Some(timeout), Some(cid))
        .map_err(|e| match e.code {
            crate::protocol::ErrorCode::NoResponder => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "offline",
                format!("no agent serves device `{id}`"),
            ),
            _ => ApiError::from(e),
        })?;
    Ok((answer, timeout))
}

async fn wait(
    (answer, timeout): (crate::server::Answer, Duration),
    id: &str,
) -> Result<Box<RawValue>, ApiError> {
    // The hub fails the request itself at its deadline; the grace covers a hub that cannot.
    let grace = timeout + Duration::from_secs(5);
    match tokio::time::timeout(grace, answer).await {
        Ok(Ok(Ok(state))) => Ok(state),
        Ok(Ok(Err(e))) => Err(ApiError::from_command(&e.code, e.message)),
        Ok(Err(_)) | Err(_) => Err(ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            format!("no answer from device `{id}`"),
        )),
    }
}
